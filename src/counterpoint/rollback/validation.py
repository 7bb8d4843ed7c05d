"""How a new configuration version is validated: a command or a function, asked until it
answers or the rollback timeout passes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from counterpoint.rollback import hooks
from counterpoint.rollback.errors import Refused
from counterpoint.rollback.hooks import Hook

DEFAULT_TIMEOUT_S = 300.0  # the seed's rollback timeout: 5 minutes
DEFAULT_INTERVAL_S = 5.0
NO_ANSWER_EXIT = 75  # EX_TEMPFAIL, as for shell agents: "not ready, ask again later"
#: What a validation command's arguments may name.
PLACEHOLDERS = ("scope", "version", "checksum", "author", "data")

Check = Callable[[dict[str, Any]], object]


@dataclass(frozen=True)
class Validation:
    """How a new version is validated: a stored ``hook``, or (library only) a ``check``.

    Both are asked with the version's JSON object (``scope``, ``version``,
    ``checksum``, ``author``, ``data``). A command answers by its exit code (0 valid,
    75 no answer yet, anything else invalid); a function by what it returns (a true
    value: valid; ``False``: invalid; ``None``: no answer yet) or raises (invalid).
    Without an answer it is asked again every ``interval_s`` until ``timeout_s``.
    """

    hook: Hook | None = None
    check: Check | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    interval_s: float = DEFAULT_INTERVAL_S

    def __post_init__(self) -> None:
        if (self.hook is None) == (self.check is None):
            raise Refused("a validation needs exactly one of a hook or a check")
        if not (self.timeout_s > 0 and self.interval_s > 0):
            raise Refused("a validation's timeout and interval must be more than 0 s")

    def describe(self) -> str:
        if self.hook is not None:
            return self.hook.describe()
        return getattr(self.check, "__name__", repr(self.check))

    def to_json(self) -> dict[str, Any]:
        if self.hook is None:
            raise Refused("only a command or a module:function validation can be stored")
        return {**self.hook.to_json(), "timeout_s": self.timeout_s, "interval_s": self.interval_s}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Validation:
        return cls(Hook.from_json(data), None, data["timeout_s"], data["interval_s"])


def ask(check: Validation, payload: dict[str, Any], limit_s: float) -> tuple[bool | None, str]:
    """One ask of the validator: (True, ""), (False, why), or (None, "") for no answer yet."""
    if check.check is not None:
        answer, why = _verdict(hooks.call(check.check, payload, limit_s))
    else:
        assert check.hook is not None
        env = {
            "COUNTERPOINT_CONFIG_SCOPE": str(payload["scope"]),
            "COUNTERPOINT_CONFIG_VERSION": str(payload["version"]),
        }
        outcome = hooks.run(check.hook, payload, timeout_s=limit_s, env=env)
        answer, why = _verdict(outcome) if check.hook.python else _exit_verdict(outcome)
    return answer, f"{check.describe()}: {why}" if answer is False else ""


def _exit_verdict(outcome: hooks.Outcome) -> tuple[bool | None, str]:
    """A command's answer: exit 0, 75 (no answer yet), or anything else."""
    if outcome.ok:
        return True, ""
    if outcome.timed_out or outcome.code == NO_ANSWER_EXIT:
        return None, ""
    return False, outcome.detail


def _verdict(outcome: hooks.Outcome) -> tuple[bool | None, str]:
    """A function's answer: a true value, False, None (no answer yet), or an exception."""
    if outcome.timed_out:
        return None, ""
    if not outcome.ok and outcome.value is not False:
        return False, outcome.detail
    if outcome.value is None:
        return None, ""
    return (True, "") if outcome.value else (False, f"returned {outcome.value!r}")


__all__ = ["DEFAULT_INTERVAL_S", "DEFAULT_TIMEOUT_S", "PLACEHOLDERS", "Validation", "ask"]
