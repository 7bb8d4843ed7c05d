"""Fake coding CLIs (``claude``, ``codex``, ``gemini``, ``aider``) for the tests.

Each fake speaks its CLI's documented JSON protocol and really edits files in its
working directory. What it does is chosen by lines of the prompt that start with
``fake:`` (so a plan's task instructions choose it):

    fake: write PATH TEXT        write TEXT (and a newline) to PATH; ``\n`` in TEXT is a newline
    fake: append PATH TEXT       add TEXT (and a newline) at the end of PATH
    fake: commit MESSAGE         commit everything (as aider does by itself)
    fake: cost USD               report this cost (default 0.01)
    fake: rate-limit-once        the first call of the task is rate limited, later ones succeed
    fake: usage-limit-once       the first call says "usage limit reached|EPOCH" (1 s ahead)
    fake: fail-once              the first call fails with an API error, later ones succeed
    fake: is-error               a result with subtype success and is_error true
    fake: crash                  some events, a line cut short, stderr, exit 1
    fake: unknown-output         a JSON object that is not the protocol, exit 0
    fake: sleep SECONDS          sleep first

``fake[CLI]: ...`` applies to that CLI only (``fake[codex]: write a.txt x``), so the
candidates of a best-of-N task can differ. A prompt asking to resolve a merge conflict
(counterpoint's resolver task) is answered by resolving it: every conflicted file keeps
both sides' lines (the markers removed) and is staged; its ``fake:`` lines are ignored.

Every call is appended to ``$FAKE_CLI_STATE/calls.jsonl`` (argv, cwd, the task), and
counters per task live in that folder, so tests can see what the CLI was asked. Without
``FAKE_CLI_STATE`` nothing is recorded and every call counts as the first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

VERSIONS = {
    "claude": "2.0.14 (Claude Code)",
    "codex": "codex-cli 0.46.0",
    "gemini": "0.9.0",
    "aider": "aider 0.86.1",
}


def main(cli: str) -> int:
    argv = sys.argv[1:]
    if argv == ["--version"]:
        print(VERSIONS[cli])
        return 0
    prompt = _prompt(cli, argv)
    task = os.environ.get("COUNTERPOINT_TASK_ID", "task")
    calls = 1
    if os.environ.get("FAKE_CLI_STATE"):
        state = Path(os.environ["FAKE_CLI_STATE"])
        calls = _count(state, f"{cli}-{task}")
        _record(state, cli, argv, task, calls)
    if prompt.startswith(RESOLVE):
        _resolve_conflicts()
        return EMITTERS[cli](None, f"{cli}-{task}-{calls}", 0.01)
    directives = _directives(prompt, cli)
    if "sleep" in directives:
        time.sleep(float(directives["sleep"][0]))
    mode = _mode(directives, calls)
    if mode in (None, "ok"):
        _edit(directives)
    session = _resumed(cli, argv) or f"{cli}-{task}-{calls}"
    cost = float(directives.get("cost", ["0.01"])[0])
    return EMITTERS[cli](mode, session, cost)


def _prompt(cli: str, argv: list[str]) -> str:
    if cli in ("claude", "codex"):
        return argv[argv.index("--") + 1]
    prefix = "--prompt=" if cli == "gemini" else "--message="
    return next(a.removeprefix(prefix) for a in argv if a.startswith(prefix))


def _resumed(cli: str, argv: list[str]) -> str | None:
    if cli == "claude" and "--resume" in argv:
        return argv[argv.index("--resume") + 1]
    if cli == "codex" and "resume" in argv:
        return argv[argv.index("resume") + 1]
    return None


def _directives(prompt: str, cli: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in prompt.splitlines():
        for prefix in ("fake: ", f"fake[{cli}]: "):
            if line.startswith(prefix):
                word, _, rest = line.removeprefix(prefix).partition(" ")
                found.setdefault(word, []).append(rest)
    return found


RESOLVE = "Resolve a git merge conflict."
MARKERS = ("<<<<<<< ", "=======", ">>>>>>> ")


def _resolve_conflicts() -> None:
    """Keep both sides of every conflicted file (ours first), then stage it."""
    listed = subprocess.run(
        ["git", "diff", "--name-only", "--diff-filter=U"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    for name in listed:
        kept, in_base = [], False
        for line in Path(name).read_text(encoding="utf-8").splitlines(keepends=True):
            if line.startswith("||||||| "):
                in_base = True  # diff3: the base's lines are dropped
            elif line.startswith(MARKERS):
                if line.startswith("=======") and name.endswith(".py"):
                    kept += ["\n", "\n"]  # two definitions: PEP 8's two blank lines
                in_base = False
            elif not in_base:
                kept.append(line)
        Path(name).write_text("".join(kept), encoding="utf-8")
        subprocess.run(["git", "add", "--", name], check=True)


def _mode(directives: dict[str, list[str]], calls: int) -> str | None:
    for once in ("rate-limit-once", "usage-limit-once", "fail-once"):
        if once in directives:
            return once.removesuffix("-once") if calls == 1 else "ok"
    for always in ("is-error", "crash", "unknown-output"):
        if always in directives:
            return always
    return None


def _edit(directives: dict[str, list[str]]) -> None:
    for spec in directives.get("write", []):
        path, _, text = spec.partition(" ")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text.replace("\\n", "\n") + "\n", encoding="utf-8")
    for spec in directives.get("append", []):
        path, _, text = spec.partition(" ")
        with Path(path).open("a", encoding="utf-8") as f:
            f.write(text.replace("\\n", "\n") + "\n")
    for message in directives.get("commit", []):
        subprocess.run(["git", "add", "--all"], check=True)
        subprocess.run(
            ["git", "-c", "user.name=fake", "-c", "user.email=f@f", "commit", "-qm", message],
            check=True,
        )


def _count(state: Path, key: str) -> int:
    state.mkdir(parents=True, exist_ok=True)
    path = state / f"{key}.count"
    n = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(n))
    return n


def _record(state: Path, cli: str, argv: list[str], task: str, call: int) -> None:
    entry = {
        "cli": cli,
        "argv": argv,
        "cwd": os.getcwd(),
        "task": task,
        "call": call,
        "pid": os.getpid(),
    }
    with (state / "calls.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


def _emit(event: dict[str, Any]) -> None:
    print(json.dumps(event), flush=True)


# -- claude ---------------------------------------------------------------------------------------


def _claude(mode: str | None, session: str, cost: float) -> int:
    if mode == "unknown-output":
        _emit({"hello": "this is not stream-json"})
        return 0
    _emit(
        {
            "type": "system",
            "subtype": "init",
            "session_id": session,
            "cwd": os.getcwd(),
            "model": "fake",
            "tools": ["Edit"],
            "claude_code_version": "2.0.14",
        }
    )
    _emit(
        {
            "type": "assistant",
            "session_id": session,
            "message": {"role": "assistant", "content": [{"type": "text", "text": "working"}]},
        }
    )
    if mode == "crash":
        sys.stdout.write('{"type": "assistant", "sess')
        sys.stdout.flush()
        print("fatal: the fake claude crashed mid-stream", file=sys.stderr)
        return 1
    if mode == "rate-limit":
        _emit(
            {
                "type": "system",
                "subtype": "api_retry",
                "attempt": 1,
                "max_retries": 1,
                "retry_delay_ms": 300,
                "error_status": 429,
                "error": "rate_limit",
                "session_id": session,
            }
        )
    texts = {
        "rate-limit": "API Error: 429 rate_limit_error",
        "usage-limit": f"Claude AI usage limit reached|{int(time.time()) + 1}",
        "fail": "API Error: 500 internal server error",
        "is-error": "API Error: 529 overloaded_error",
    }
    failed = mode in texts
    _emit(
        {
            "type": "result",
            "subtype": "success",
            "is_error": failed,
            "result": texts.get(mode or "", "done: the fake claude changed the files"),
            "session_id": session,
            "total_cost_usd": cost,
            "num_turns": 3,
            "duration_ms": 12,
            "usage": {
                "input_tokens": 100,
                "cache_creation_input_tokens": 10,
                "cache_read_input_tokens": 50,
                "output_tokens": 20,
            },
        }
    )
    return 1 if failed else 0


# -- codex ----------------------------------------------------------------------------------------


def _codex(mode: str | None, session: str, cost: float) -> int:
    if mode == "unknown-output":
        _emit({"msg": {"type": "task_started"}})
        return 0
    _emit({"type": "thread.started", "thread_id": session})
    _emit({"type": "turn.started"})
    if mode == "crash":
        sys.stdout.write('{"type": "item.comp')
        sys.stdout.flush()
        print("thread 'main' panicked: the fake codex crashed", file=sys.stderr)
        return 101
    if mode in ("rate-limit", "usage-limit", "fail", "is-error"):
        message = (
            "You've hit your usage limit. Try again in 1 second."
            if mode in ("rate-limit", "usage-limit")
            else "unexpected status 500 Internal Server Error"
        )
        _emit({"type": "error", "message": message})
        _emit({"type": "turn.failed", "error": {"message": message}})
        return 1
    _emit(
        {
            "type": "item.completed",
            "item": {"id": "item_1", "type": "agent_message", "text": "done: the fake codex"},
        }
    )
    _emit(
        {
            "type": "turn.completed",
            "usage": {"input_tokens": 200, "cached_input_tokens": 80, "output_tokens": 30},
        }
    )
    return 0


# -- gemini ---------------------------------------------------------------------------------------


def _gemini(mode: str | None, session: str, cost: float) -> int:
    if mode == "unknown-output":
        print(json.dumps({"answer": "not the documented shape"}, indent=2))
        return 0
    if mode == "crash":
        print("Error: the fake gemini crashed", file=sys.stderr)
        return 1
    if mode in ("rate-limit", "usage-limit", "fail", "is-error"):
        limited = mode in ("rate-limit", "usage-limit")
        error = {
            "type": "ApiError",
            "message": "Quota exceeded; retry in 1s" if limited else "internal error",
            "code": 429 if limited else 500,
        }
        print(json.dumps({"session_id": session, "error": error}, indent=2))
        return 1
    stats = {
        "models": {
            "gemini-fake": {
                "api": {"totalRequests": 2},
                "tokens": {"prompt": 300, "candidates": 40, "total": 340, "cached": 100},
            }
        }
    }
    print(
        json.dumps(
            {"session_id": session, "response": "done: the fake gemini", "stats": stats}, indent=2
        )
    )
    return 0


# -- aider ----------------------------------------------------------------------------------------


def _aider(mode: str | None, session: str, cost: float) -> int:
    print("Aider v0.86.1")
    if mode == "crash":
        print(
            "Traceback (most recent call last):\nRuntimeError: the fake aider crashed",
            file=sys.stderr,
        )
        return 1
    if mode in ("rate-limit", "usage-limit"):
        print("litellm.RateLimitError: 429 rate limit exceeded", file=sys.stderr)
        return 1
    Path(".aider.tags.cache.v4").mkdir(exist_ok=True)  # a cache the real aider leaves
    print(f"Tokens: 1.5k sent, 250 received. Cost: ${cost:.2f} message, ${cost:.2f} session.")
    return 0


EMITTERS = {"claude": _claude, "codex": _codex, "gemini": _gemini, "aider": _aider}
