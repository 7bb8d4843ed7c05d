"""Reading what a coding CLI printed into one :class:`CodingResult`, whatever the CLI.

Each parser takes the CLI's whole stdout, its exit code and the tail of its stderr, and
returns a result (a success or a classified failure), or raises :class:`UnknownOutput`
when the output is not the documented protocol: never a silent success. Pure functions,
so every protocol is tested without a process (tests/unit/test_coding_parse.py).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

DEFAULT_RETRY_AFTER_S = 60.0

#: A rate limit or a spent usage allowance, in any CLI's words.
RATE_LIMIT = re.compile(
    r"\b429\b|rate[ _-]?limit|usage limit|limit reached|quota|resource_exhausted|too many requests",
    re.IGNORECASE,
)
#: The CLI could not find the session it was asked to resume.
RESUME_FAILED = re.compile(
    r"no (?:conversation|rollout|session)s? found|session\b.{0,60}\bnot found", re.IGNORECASE
)


class UnknownOutput(Exception):
    """The CLI printed something that is not its documented protocol (the message says what)."""


@dataclass(frozen=True)
class CodingResult:
    """One attempt of a coding CLI, the same for every CLI.

    ``error_class`` is None on success, else one of ``api_error``, ``rate_limited``,
    ``crashed``, ``unknown_output``, ``max_turns``, ``budget``, ``resume_failed`` or
    ``cancelled``. Tokens: ``input_tokens`` counts every prompt token (cached ones too),
    ``cached_input_tokens`` those read from a cache.
    """

    cli: str
    ok: bool
    text: str = ""
    session_id: str | None = None
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    turns: int | None = None
    error_class: str | None = None
    error: str = ""
    retry_after_s: float | None = None
    version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return "success" if self.ok else "error"

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def failed(self, error_class: str, error: str, **changes: Any) -> CodingResult:
        return replace(self, ok=False, error_class=error_class, error=error, **changes)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status, "tokens": self.tokens}

    def task_result(self) -> dict[str, Any]:
        """What the task's result holds (``usage`` also draws usage-drawn rate limits)."""
        usage = {
            "input_tokens": self.input_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "output_tokens": self.output_tokens,
            "tokens": self.tokens,
            "cost_usd": self.cost_usd or 0.0,
        }
        return {
            "text": self.text,
            "cli": self.cli,
            "session_id": self.session_id,
            "cost_usd": self.cost_usd,
            "turns": self.turns,
            "usage": usage,
        }


# -- claude -p --output-format stream-json --verbose -----------------------------------------


def parse_claude(stdout: bytes, code: int, stderr: str = "") -> CodingResult:
    """NDJSON events; the last, ``type: result``, says how the run ended."""
    base = CodingResult("claude", ok=False)
    limited: float | None = None
    final: dict[str, Any] | None = None
    for event in _events(stdout, code):
        kind, subtype = event.get("type"), event.get("subtype")
        if kind == "system" and subtype == "init":
            base = replace(
                base,
                session_id=_str(event.get("session_id")) or base.session_id,
                version=_str(event.get("claude_code_version")) or base.version,
            )
        elif kind == "system" and subtype == "api_retry" and _is_rate_limit(event):
            delay = _number(event.get("retry_delay_ms"))
            limited = delay / 1000 if delay is not None else DEFAULT_RETRY_AFTER_S
        elif kind == "result":
            final = event
    if final is None:
        return _no_result(base, code, stderr, limited, "no result event")
    return _claude_result(base, final, limited)


def _claude_result(
    base: CodingResult, event: dict[str, Any], limited: float | None
) -> CodingResult:
    subtype = _required(event, "subtype", str, "claude result")
    is_error = _required(event, "is_error", bool, "claude result")
    usage: dict[str, Any] = event["usage"] if isinstance(event.get("usage"), dict) else {}
    cached = _int(usage.get("cache_read_input_tokens"))
    result = replace(
        base,
        ok=True,
        text=_str(event.get("result")) or "",
        session_id=_str(event.get("session_id")) or base.session_id,
        input_tokens=_int(usage.get("input_tokens"))
        + _int(usage.get("cache_creation_input_tokens"))
        + cached,
        cached_input_tokens=cached,
        output_tokens=_int(usage.get("output_tokens")),
        cost_usd=_number(event.get("total_cost_usd")),
        turns=_int(event.get("num_turns")) if "num_turns" in event else None,
    )
    if subtype == "success" and not is_error:
        return result
    # An API failure can arrive as subtype "success" with is_error true.
    why = result.text or _str(event.get("error")) or subtype
    if subtype == "error_max_turns":
        return result.failed("max_turns", f"stopped at the turn limit ({why})")
    return _classified(result, why, limited)


# -- codex exec --json -------------------------------------------------------------------------


def parse_codex(stdout: bytes, code: int, stderr: str = "") -> CodingResult:
    """JSONL thread events: ``thread.started``, ``turn.completed`` (usage), ``item.completed``."""
    result = CodingResult("codex", ok=False, turns=0)
    failure = ""
    completed = False
    for event in _events(stdout, code):
        kind = event.get("type")
        if kind == "thread.started":
            result = replace(result, session_id=_str(event.get("thread_id")))
        elif kind == "turn.completed":
            completed = True
            result = _codex_usage(result, event)
        elif kind == "turn.failed":
            error = event.get("error")
            said = _str(error.get("message")) if isinstance(error, dict) else None
            failure = said or "the turn failed"
        elif kind == "error":
            failure = _str(event.get("message")) or failure or "error"
        elif kind == "item.completed":
            result = _codex_item(result, event)
    if completed and not failure and code == 0:
        return replace(result, ok=True)
    if failure and (completed or result.session_id is not None or code != 0):
        return _classified(result, failure, None)
    return _no_result(result, code, stderr, None, "no turn.completed event")


def _codex_usage(result: CodingResult, event: dict[str, Any]) -> CodingResult:
    usage = event.get("usage")
    if not isinstance(usage, dict):
        raise UnknownOutput("a codex turn.completed event has no usage object")
    return replace(
        result,
        input_tokens=result.input_tokens + _int(usage.get("input_tokens")),
        cached_input_tokens=result.cached_input_tokens + _int(usage.get("cached_input_tokens")),
        output_tokens=result.output_tokens + _int(usage.get("output_tokens")),
        turns=(result.turns or 0) + 1,
    )


def _codex_item(result: CodingResult, event: dict[str, Any]) -> CodingResult:
    item = event.get("item")
    if not isinstance(item, dict):
        raise UnknownOutput("a codex item.completed event has no item object")
    if (item.get("type") or item.get("item_type")) in ("agent_message", "assistant_message"):
        return replace(result, text=_str(item.get("text")) or result.text)
    return result


# -- gemini -p --output-format json --------------------------------------------------------------

GEMINI_TURN_LIMIT_EXIT = 53


def parse_gemini(stdout: bytes, code: int, stderr: str = "") -> CodingResult:
    """One JSON object: ``response``, ``stats`` (tokens per model), ``error`` if it failed."""
    base = CodingResult("gemini", ok=False)
    value = _gemini_object(stdout)
    if value is None:
        if code == GEMINI_TURN_LIMIT_EXIT:
            return base.failed("max_turns", f"stopped at the turn limit: {stderr}".rstrip(": "))
        return _no_result(base, code, stderr, None, "no JSON object")
    result = _gemini_stats(replace(base, session_id=_str(value.get("session_id"))), value)
    error = value.get("error")
    if error is not None:
        if not isinstance(error, dict):
            raise UnknownOutput(f"gemini's error is {type(error).__name__}, not an object")
        why = _str(error.get("message")) or _str(error.get("type")) or "error"
        if _number(error.get("code")) == 429:
            why = f"429 {why}"
        return _classified(result, why, None)
    text = _required(value, "response", str, "gemini output")
    if code == GEMINI_TURN_LIMIT_EXIT:
        return result.failed("max_turns", "stopped at the turn limit", text=text)
    if code != 0:
        return result.failed("crashed", _exit_message(code, stderr), text=text)
    return replace(result, ok=True, text=text)


def _gemini_object(stdout: bytes) -> dict[str, Any] | None:
    text = stdout.decode("utf-8", errors="replace").strip()
    if not text:
        return None
    start = text.find("{")  # a warning line may come first
    try:
        value = json.loads(text[start:] if start > 0 else text)
    except ValueError:
        raise UnknownOutput("gemini's output is not one JSON object") from None
    if not isinstance(value, dict):
        raise UnknownOutput(f"gemini's output is a JSON {type(value).__name__}, not an object")
    return value


def _gemini_stats(result: CodingResult, value: dict[str, Any]) -> CodingResult:
    stats = value.get("stats")
    models = stats.get("models") if isinstance(stats, dict) else None
    if not isinstance(models, dict):
        return result
    prompt = cached = output = 0
    for model in models.values():
        tokens = model.get("tokens") if isinstance(model, dict) else None
        if isinstance(tokens, dict):
            prompt += _int(tokens.get("prompt"))
            cached += _int(tokens.get("cached"))
            output += _int(tokens.get("candidates"))
    return replace(result, input_tokens=prompt, cached_input_tokens=cached, output_tokens=output)


# -- aider --message ----------------------------------------------------------------------------

_AIDER_TOKENS = re.compile(
    r"Tokens: ([\d.]+)([kKmM]?) sent(?:, ([\d.]+)([kKmM]?) cache[^,]*)*?, "
    r"([\d.]+)([kKmM]?) received"
)
_AIDER_COST = re.compile(r"Cost: \$([\d.]+) message, \$([\d.]+) session")


def parse_aider(stdout: bytes, code: int, stderr: str = "") -> CodingResult:
    """Success is exit code 0 (the work is the diff); tokens and cost from its report lines."""
    text = stdout.decode("utf-8", errors="replace")
    sent = received = 0
    for match in _AIDER_TOKENS.finditer(text):
        sent += _scaled(match.group(1), match.group(2))
        received += _scaled(match.group(5), match.group(6))
    costs = _AIDER_COST.findall(text)
    result = CodingResult(
        "aider",
        ok=code == 0,
        text=text.strip()[-2000:],
        input_tokens=sent,
        output_tokens=received,
        cost_usd=float(costs[-1][1]) if costs else None,
    )
    if code == 0:
        return result
    return _classified(result, _exit_message(code, stderr or text.strip()[-500:]), None, "crashed")


# -- shared -------------------------------------------------------------------------------------

PARSERS: dict[str, Callable[[bytes, int, str], CodingResult]] = {
    "claude": parse_claude,
    "codex": parse_codex,
    "gemini": parse_gemini,
    "aider": parse_aider,
}


def _events(stdout: bytes, code: int) -> Iterator[dict[str, Any]]:
    """The JSON objects of an NDJSON stream. A line that is not one is unknown output,
    unless the program failed, in which case the stream was cut short (a crash)."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    for n, line in enumerate(lines, 1):
        try:
            value = json.loads(line)
        except ValueError:
            if code != 0 and n == len(lines):
                return  # the last line, cut short by the crash
            raise UnknownOutput(f"line {n} is not JSON: {_clip(line)}") from None
        if not isinstance(value, dict):
            raise UnknownOutput(f"line {n} is a JSON {type(value).__name__}, not an object")
        yield value


def _no_result(
    result: CodingResult, code: int, stderr: str, limited: float | None, missing: str
) -> CodingResult:
    """The stream ended without its final event: a crash if the program failed."""
    if code == 0:
        raise UnknownOutput(f"{missing} in the output, though the program exited with 0")
    if limited is not None or RATE_LIMIT.search(stderr):
        return _classified(result, _exit_message(code, stderr), limited)
    if RESUME_FAILED.search(stderr):
        return result.failed("resume_failed", _exit_message(code, stderr))
    return result.failed(
        "crashed", f"crashed mid-stream ({missing}): {_exit_message(code, stderr)}"
    )


def _classified(
    result: CodingResult, why: str, limited: float | None, default: str = "api_error"
) -> CodingResult:
    """A failure: a rate limit (with the time to wait), a lost session, or ``default``."""
    if limited is not None or RATE_LIMIT.search(why):
        wait = retry_after(why) if limited is None else max(limited, retry_after(why, None) or 0)
        return result.failed("rate_limited", why, retry_after_s=wait)
    if RESUME_FAILED.search(why):
        return result.failed("resume_failed", why)
    return result.failed(default, why)


def _is_rate_limit(event: dict[str, Any]) -> bool:
    return event.get("error_status") == 429 or bool(RATE_LIMIT.search(str(event.get("error", ""))))


def _exit_message(code: int, stderr: str) -> str:
    how = f"exit code {code}" if code >= 0 else f"killed by signal {-code}"
    return f"{how}: {stderr}" if stderr else how


# -- "resets at ..." ------------------------------------------------------------------------------

_EPOCH = re.compile(r"\|\s*(\d{10})\b")
_IN = re.compile(
    r"(?:try again|retry|resets?)\s+(?:in|after)\s+((?:[\d.]+\s*[a-z]+[\s,and]*)+)", re.I
)
_UNIT = re.compile(
    r"([\d.]+)\s*(d|days?|h|hours?|hrs?|m|min|mins|minutes?|s|sec|secs|seconds?)\b", re.I
)
_AT = re.compile(r"resets?\s+(?:at\s+)?(\d{1,2})(?::(\d{2}))?\s*(am|pm)?\b", re.I)


def retry_after(
    text: str, default: float | None = DEFAULT_RETRY_AFTER_S, now: float | None = None
) -> float | None:
    """Seconds until the reset a rate-limit message names (``|EPOCH``, ``try again in 2h 5m``,
    ``resets at 3pm``), else ``default``."""
    now = time.time() if now is None else now
    epoch = _EPOCH.search(text)
    if epoch:
        return max(0.0, int(epoch.group(1)) - now)
    within = _IN.search(text)
    if within:
        seconds = sum(_unit_seconds(v, u) for v, u in _UNIT.findall(within.group(1)))
        if seconds > 0:
            return seconds
    at = _AT.search(text)
    if at:
        return _until_clock(int(at.group(1)), int(at.group(2) or 0), at.group(3), now)
    return default


def _unit_seconds(value: str, unit: str) -> float:
    scale = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}[unit[0].lower()]
    try:
        return float(value) * scale
    except ValueError:
        return 0.0


def _until_clock(hour: int, minute: int, meridiem: str | None, now: float) -> float | None:
    if meridiem:
        hour = hour % 12 + (12 if meridiem.lower() == "pm" else 0)
    if hour > 23 or minute > 59:
        return None
    current = datetime.fromtimestamp(now)
    target = current.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if target <= current:
        target += timedelta(days=1)
    return (target - current).total_seconds()


# -- fields ---------------------------------------------------------------------------------------


def _required(event: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in event:
        raise UnknownOutput(f"the {where} has no {key!r} field")
    value = event[key]
    if not isinstance(value, kind):
        raise UnknownOutput(f"the {where}'s {key!r} is {type(value).__name__}, not {kind.__name__}")
    return value


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _int(value: Any) -> int:
    number = _number(value)
    return int(number) if number is not None else 0


def _scaled(value: str, suffix: str) -> int:
    scale = {"": 1, "k": 1_000, "m": 1_000_000}[suffix.lower()]
    return int(float(value) * scale)


def _clip(line: bytes, limit: int = 120) -> str:
    text = line.decode("utf-8", errors="replace")
    return text if len(text) <= limit else text[: limit - 1] + "…"
