"""Where runbooks come from: a plan's ``runbooks:`` section, or a runbook file of their own.

A runbook file holds ``version: 1``, ``runbooks:`` (as in a plan) and, optionally,
the ``escalation:`` ladder its failures go up (without one: the default ladder).
Both are validated with the plan's models and reported like ``counterpoint check``
reports plans: every problem at once, each with ``file:line:column``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from counterpoint.errors import PlanError, Problem
from counterpoint.plan.load import check_file
from counterpoint.plan.model import Escalation, Id, Runbook, Strict
from counterpoint.plan.schema_errors import did_you_mean, problems_from_validation
from counterpoint.plan.source import Locator, SourceError, parse_document
from counterpoint.rollback.errors import UnknownSubject

PLAN, FILE = "plan", "file"


class RunbookFile(Strict):
    """A runbook file: its runbooks and the escalation ladder their failures go up."""

    version: Literal[1]
    escalation: Escalation = Field(default_factory=Escalation)
    runbooks: dict[Id, Runbook] = Field(min_length=1)


@dataclass(frozen=True)
class RunbookSource:
    """Runbooks as read from ``path`` (a plan or a runbook file), with their ladder."""

    path: Path
    kind: str  # plan | file
    runbooks: dict[str, Runbook]
    escalation: Escalation

    @property
    def folder(self) -> Path:
        """Where commands run and relative paths (file checks, python imports) start."""
        return self.path.parent

    def get(self, name: str) -> Runbook:
        found = self.runbooks.get(name)
        if found is None and not self.runbooks:
            raise UnknownSubject(f"{self.path} has no runbooks (no runbooks: section)")
        if found is None:
            raise UnknownSubject.of("runbook", name, sorted(self.runbooks))
        return found


def from_plan(path: str | os.PathLike[str]) -> RunbookSource:
    """The runbooks of a plan; raises :class:`PlanError` when the plan is not valid."""
    report = check_file(path)
    if report.plan is None:
        raise PlanError(report.problems)
    plan = report.plan
    return RunbookSource(Path(path).resolve(), PLAN, dict(plan.runbooks), plan.escalation)


def from_file(path: str | os.PathLike[str]) -> RunbookSource:
    """The runbooks of a runbook file; raises :class:`PlanError` listing every problem."""
    name = os.fspath(path)
    try:
        text = Path(name).read_text(encoding="utf-8")
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise PlanError([_problem(name, f"cannot read the runbook file: {reason}")]) from None
    except UnicodeDecodeError:
        raise PlanError([_problem(name, "the runbook file is not UTF-8 text")]) from None
    parsed = _validate(text, name)
    return RunbookSource(Path(name).resolve(), FILE, dict(parsed.runbooks), parsed.escalation)


def _validate(text: str, name: str) -> RunbookFile:
    try:
        data, problems = parse_document(text, name)
    except SourceError as exc:
        raise PlanError(exc.problems) from None
    if not isinstance(data, dict):
        what = "an empty document" if data is None else f"a {type(data).__name__}"
        raise PlanError([_problem(name, f"a runbook file must be a mapping, got {what}")])
    try:
        parsed = RunbookFile.model_validate(data)
    except ValidationError as exc:
        problems += [_at_root(p) for p in problems_from_validation(exc)]
        parsed = None
    if problems or parsed is None:
        raise PlanError(_place(problems, text, name))
    return parsed


def _at_root(problem: Problem) -> Problem:
    """Problems of the file's own keys: its keys are not a plan's."""
    if problem.path == ("version",):
        return replace(
            problem,
            message="unsupported runbook file version; this counterpoint reads version 1",
            hint="",
        )
    if len(problem.path) == 1 and problem.message.startswith("unknown key"):
        keys = list(RunbookFile.model_fields)
        return replace(problem, hint=did_you_mean(str(problem.path[0]), keys))
    return problem


def _place(problems: list[Problem], text: str, name: str) -> list[Problem]:
    locator = Locator(text)
    placed = []
    for p in problems:
        if not p.line:
            pos = locator.find(p.path, at_key=p.at_key)
            p = replace(p, file=name, line=pos.line, column=pos.column)
        placed.append(p)
    return sorted(placed, key=lambda p: (p.line, p.column))


def _problem(name: str, message: str) -> Problem:
    return Problem(message, file=name)


def summary(runbook: Runbook) -> dict[str, Any]:
    """A runbook as ``runbook list --json`` shows it."""
    return {
        "description": runbook.description,
        "steps": [{"id": s.id, "name": s.title, "kind": s.kind} for s in runbook.steps],
    }


__all__ = ["FILE", "PLAN", "RunbookFile", "RunbookSource", "from_file", "from_plan", "summary"]
