"""Loading a plan: text -> data -> validated :class:`Plan` -> compiled :class:`Graph`.

Every problem in a file is collected and reported together, each with its
``file:line:column``. :func:`check_file` never raises for a bad plan (it
returns a report); :func:`load_plan` raises one :class:`PlanError` carrying
the whole list.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from counterpoint.errors import PlanError, Problem, Severity
from counterpoint.plan.checks import check_plan
from counterpoint.plan.graph import Graph
from counterpoint.plan.model import Plan
from counterpoint.plan.repair import Repair, is_artifact
from counterpoint.plan.schema_errors import problems_from_validation
from counterpoint.plan.source import Locator, SourceError, parse_document


@dataclass
class CheckReport:
    """What ``counterpoint check`` found: the plan and its graph when valid, and all problems."""

    source: str
    plan: Plan | None = None
    graph: Graph | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity is Severity.WARNING]

    @property
    def ok(self) -> bool:
        return not self.errors


def check_file(path: str | os.PathLike[str]) -> CheckReport:
    """Read, validate and compile the plan at ``path``; never raises for a bad plan."""
    name = os.fspath(path)
    try:
        raw = Path(name).read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return CheckReport(name, problems=[Problem(f"cannot read the plan: {reason}", file=name)])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        problem = Problem("the plan is not UTF-8 text", file=name, line=line, column=column)
        return CheckReport(name, problems=[problem])
    report = check_text(text, name)
    if report.plan is not None:
        report.plan._source = Path(name).resolve()
    return report


def check_text(text: str, name: str = "<string>") -> CheckReport:
    """Validate and compile plan ``text``; ``name`` is used in positions and picks the format."""
    report = CheckReport(name)
    try:
        data, early = parse_document(text, name)
    except SourceError as exc:
        report.problems = exc.problems
        return report
    problems = list(early) + _validate(data, report)
    report.problems = _place(problems, text, name)
    if not report.ok:
        report.plan = report.graph = None
    return report


def _validate(data: Any, report: CheckReport) -> list[Problem]:
    if not isinstance(data, dict):
        what = "an empty document" if data is None else f"a {type(data).__name__}"
        return [Problem(f"a plan must be a mapping with version, name and phases, got {what}")]
    problems: list[Problem] = []
    artifact = is_artifact
    try:
        plan: Plan | None = Plan.model_validate(data)
    except ValidationError as exc:
        problems = problems_from_validation(exc)
        repair = Repair(data, problems)
        plan, artifact = repair.plan, repair.is_artifact
    if plan is None:
        return problems
    valid = not problems
    problems += [p for p in check_plan(plan) if not artifact(p)]
    try:
        graph = plan.compile(check=False)
    except PlanError as exc:
        return problems + [p for p in exc.problems if not artifact(p)]
    if valid and not any(p.severity is Severity.ERROR for p in problems):
        report.plan, report.graph = plan, graph
    return problems


def _place(problems: list[Problem], text: str, name: str) -> list[Problem]:
    """Fill in ``file:line:column`` for every problem, and order them as they appear."""
    locator = Locator(text)
    placed = []
    for problem in problems:
        if problem.line:
            placed.append(problem)
            continue
        pos = locator.find(problem.path, at_key=problem.at_key)
        hint = problem.hint
        if problem.related:
            first = locator.find(problem.related)
            hint = f"first defined at {name}:{first.line}:{first.column}"
        placed.append(replace(problem, file=name, line=pos.line, column=pos.column, hint=hint))
    placed.sort(key=lambda p: (p.line, p.column))
    return placed


def load_plan(path: str | os.PathLike[str]) -> Plan:
    """Load and fully validate a plan file; raises :class:`PlanError` with every problem."""
    report = check_file(path)
    if report.plan is None:
        raise PlanError(report.problems)
    return report.plan


def parse_plan(text: str, name: str = "<string>") -> Plan:
    """Like :func:`load_plan` for text already in memory (``name`` ending in .json means JSON)."""
    report = check_text(text, name)
    if report.plan is None:
        raise PlanError(report.problems)
    return report.plan
