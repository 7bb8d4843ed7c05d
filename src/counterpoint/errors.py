"""The exception hierarchy: one root, one base per area.

Errors reuse standard bases where the meaning fits, so callers can catch them
the usual way (a bad plan is a ``ValueError``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

PathPart = str | int
Path = tuple[PathPart, ...]


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or worth a warning) in a plan, with where it is."""

    message: str
    path: Path = ()
    severity: Severity = Severity.ERROR
    hint: str = ""
    file: str = ""
    line: int = 0
    column: int = 0
    #: Another place the problem involves (the first definition of a duplicate id).
    related: Path = field(default=(), compare=False)
    #: True when the problem is about a mapping key itself (unknown or duplicate key),
    #: so its position is the key's rather than the value's.
    at_key: bool = field(default=False, compare=False)

    @property
    def where(self) -> str:
        """``file:line:column`` (or as much of it as is known)."""
        if self.line:
            return f"{self.file}:{self.line}:{self.column}"
        return self.file or "<plan>"

    @property
    def dotted_path(self) -> str:
        return format_path(self.path)

    def render(self) -> str:
        """The one-line form printed by ``counterpoint check``."""
        subject = f"{self.dotted_path}: " if self.path else ""
        text = f"{self.where}: {self.severity.value}: {subject}{self.message}"
        return f"{text} ({self.hint})" if self.hint else text


def format_path(path: Path) -> str:
    """``("phases", 0, "milestones", 1, "id")`` -> ``phases[0].milestones[1].id``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


class CounterpointError(Exception):
    """Root of every error counterpoint raises on purpose."""


class PlanError(CounterpointError, ValueError):
    """A plan file could not be loaded: carries every problem found, not only the first."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        errors = [p for p in self.problems if p.severity is Severity.ERROR]
        head = errors[0].render() if errors else "invalid plan"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(head + more)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity is Severity.ERROR]


class ScheduleError(CounterpointError, ValueError):
    """A plan cannot be scheduled (for example a task no agent or resource can ever serve)."""
