"""Loading a plan: text -> data -> validated :class:`Plan` -> compiled :class:`Graph`.

Every problem in a file is collected and reported together, each with its
``file:line:column``. :func:`check_file` never raises for a bad plan (it
returns a report); :func:`load_plan` raises one :class:`PlanError` carrying
the whole list.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
from counterpoint.plan.writes import parallel_writes


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
    del raw  # the text is all that is needed from here on
    report = check_text(text, name)
    if report.plan is not None:
        report.plan._source = Path(name).resolve()
    return report


def check_text(text: str, name: str = "<string>") -> CheckReport:
    """Validate and compile plan ``text``; ``name`` is used in positions and picks the format."""
    report = CheckReport(name)
    with _collector_paused():
        try:
            plan, problems, artifact = _model(*parse_document(text, name))
        except SourceError as exc:
            report.problems = exc.problems
            return report
        if plan is not None:
            problems += _analyse(plan, not problems, artifact, report)
    report.problems = _place(problems, text, name)
    if not report.ok:
        report.plan = report.graph = None
    return report


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while millions of objects are built.

    Nothing built here forms reference cycles worth collecting, and each collection
    would walk every object built so far: on a million-task plan that is a third
    of the load time.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        # What was built lives as long as the plan: keep later collections from walking it.
        gc.freeze()
        if was_enabled:
            gc.enable()


Artifact = Callable[[Problem], bool]


def _model(data: Any, early: list[Problem]) -> tuple[Plan | None, list[Problem], Artifact]:
    """The validated model (or a repaired one, to check the rest) and the schema problems.

    The raw data is not kept beyond this call, so it can be freed before compiling.
    """
    problems = list(early)
    if not isinstance(data, dict):
        what = "an empty document" if data is None else f"a {type(data).__name__}"
        message = f"a plan must be a mapping with version, name and phases, got {what}"
        return None, [*problems, Problem(message)], is_artifact
    try:
        return Plan.model_validate(data), problems, is_artifact
    except ValidationError as exc:
        schema = problems_from_validation(exc)
    repair = Repair(data, schema)
    return repair.plan, problems + schema, repair.is_artifact


def _analyse(plan: Plan, valid: bool, artifact: Artifact, report: CheckReport) -> list[Problem]:
    """Whole-plan checks and compilation; fills ``report`` when the plan is runnable."""
    problems = [p for p in check_plan(plan) if not artifact(p)]
    try:
        graph = plan.compile(check=False)
    except PlanError as exc:
        return problems + [p for p in exc.problems if not artifact(p)]
    problems += [p for p in parallel_writes(plan, graph) if not artifact(p)]
    if valid and not any(p.severity is Severity.ERROR for p in problems):
        report.plan, report.graph = plan, graph
    return problems


#: Past this size a plan whose only problems are warnings gets no positions: finding
#: them means parsing the file a second time, which would cost more than the check.
PRECISE_WARNINGS_MAX_CHARS = 4_000_000


def _place(problems: list[Problem], text: str, name: str) -> list[Problem]:
    """Fill in ``file:line:column`` for every problem, and order them as they appear."""
    only_warnings = all(p.severity is Severity.WARNING for p in problems)
    if problems and only_warnings and len(text) > PRECISE_WARNINGS_MAX_CHARS:
        return [replace(p, file=name) for p in problems]
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
