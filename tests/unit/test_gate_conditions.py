"""Gate conditions evaluated on their own: file and python conditions, the report's status,
the gates a stored plan declares, and what ``check`` says about gates.

Conditions run through :class:`GateChecker` exactly as a run calls it; python conditions call
modules written next to a plan in a temporary folder (each under its own module name, since
callables are imported once per process and name).
"""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from counterpoint.errors import Problem
from counterpoint.plan import CheckReport, check_text
from counterpoint.plan.model import Gate, Plan
from counterpoint.runtime.gates import (
    ConditionResult,
    GateChecker,
    GateReport,
    declared_gates,
)
from counterpoint.runtime.session import RunRefused, _gate_approvers

METRICS = {"phase.completed": 2.0, "milestone.completed": 1.0, "run.completed": 3.0}

CHECKS = """
import asyncio
import time

def yes(ctx):
    return True

def no(ctx):
    return False

def pair(ctx):
    return False, "coverage 71% < 80%"

def triple(ctx):
    return True, "coverage 91%", {"coverage": 0.91}

def as_dict(ctx):
    return {"passed": True, "message": "all green", "data": {"tests": 12}}

def dict_without_message(ctx):
    return {"passed": False}

def dict_without_passed(ctx):
    return {"message": "forgot"}

def a_string(ctx):
    return "yes"

def truthy_int(ctx):
    return 1, "one"

def odd_data(ctx):
    return True, "odd", {"tags": {"b"}}

def scalar_data(ctx):
    return True, "a number", 42

def boom(ctx):
    raise ValueError("boom")

def exits(ctx):
    raise SystemExit(3)

def own_timeout(ctx):
    raise TimeoutError("the database did not answer")

def slow(ctx):
    time.sleep(5)
    return True

async def slow_async(ctx):
    await asyncio.sleep(5)
    return True

async def async_pair(ctx):
    await asyncio.sleep(0)
    return True, "async ok"

def echo(ctx):
    return True, "seen", {
        "gate": ctx.gate, "phase": ctx.phase, "milestone": ctx.milestone, "side": ctx.side,
        "metrics": ctx.metrics, "run_id": ctx.run_id, "state_dir": str(ctx.state_dir),
        "plan_dir": str(ctx.plan_dir),
    }

not_callable = 3
"""


@pytest.fixture
def plan_dir(tmp_path: Path) -> Path:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "release.md").write_text("# Release\nstatus: approved\nowner: ana\n")
    return tmp_path


@pytest.fixture
def checks(plan_dir: Path) -> str:
    """The name of a module of python conditions next to the plan."""
    module = f"gate_checks_{uuid.uuid4().hex[:12]}"
    (plan_dir / f"{module}.py").write_text(CHECKS, encoding="utf-8")
    return module


def evaluate(
    plan_dir: Path,
    *conditions: dict[str, Any],
    gate_id: str = "m1.exit",
    milestone: str | None = "m1",
) -> GateReport:
    gate = Gate.model_validate({"conditions": list(conditions)})
    checker = GateChecker(plan_dir)
    return asyncio.run(
        checker.evaluate(
            gate_id,
            "p1",
            gate,
            METRICS,
            [],
            milestone=milestone,
            run_id="7",
            state_dir=plan_dir / "state",
        )
    )


def one(plan_dir: Path, condition: dict[str, Any]) -> ConditionResult:
    (result,) = evaluate(plan_dir, condition).results
    return result


# -- file ----------------------------------------------------------------------------------


def test_a_file_condition_passes_when_the_file_exists(plan_dir: Path) -> None:
    result = one(plan_dir, {"kind": "file", "path": "notes/release.md"})
    assert result.passed is True
    assert result.message == "notes/release.md exists"
    assert result.data == {"path": str(plan_dir / "notes" / "release.md")}


def test_a_file_condition_fails_when_the_file_is_missing(plan_dir: Path) -> None:
    report = evaluate(plan_dir, {"kind": "file", "path": "notes/missing.md", "name": "notes"})
    (result,) = report.results
    assert (result.kind, result.name, result.passed) == ("file", "notes", False)
    assert result.message == "notes/missing.md does not exist"
    assert report.status == "incomplete"
    assert report.reason() == "file notes: notes/missing.md does not exist"


def test_a_file_condition_with_a_pattern_passes_when_the_content_matches(plan_dir: Path) -> None:
    result = one(
        plan_dir, {"kind": "file", "path": "notes/release.md", "pattern": r"status: (\w+)"}
    )
    assert result.passed is True
    assert result.message == r"notes/release.md matches 'status: (\w+)' (line 2)"
    assert result.data["match"] == "status: approved" and result.data["line"] == 2


def test_a_file_condition_with_a_pattern_fails_when_nothing_matches(plan_dir: Path) -> None:
    result = one(plan_dir, {"kind": "file", "path": "notes/release.md", "pattern": "rejected"})
    assert result.passed is False
    assert result.message == "notes/release.md has no match for 'rejected'"


def test_a_file_condition_with_a_pattern_fails_on_a_missing_file(plan_dir: Path) -> None:
    result = one(plan_dir, {"kind": "file", "path": "nope.md", "pattern": "x"})
    assert result.passed is False and result.message == "nope.md does not exist"


def test_a_folder_exists_but_cannot_match_a_pattern(plan_dir: Path) -> None:
    assert one(plan_dir, {"kind": "file", "path": "notes"}).passed is True
    result = one(plan_dir, {"kind": "file", "path": "notes", "pattern": "x"})
    assert result.passed is False
    assert result.message == "notes is not a file, so it cannot match a pattern"


# -- python --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("func", "passed", "message", "data"),
    [
        ("yes", True, "returned True", {}),
        ("no", False, "returned False", {}),
        ("pair", False, "coverage 71% < 80%", {}),
        ("triple", True, "coverage 91%", {"coverage": 0.91}),
        ("as_dict", True, "all green", {"tests": 12}),
        ("dict_without_message", False, "returned False", {}),
        ("async_pair", True, "async ok", {}),
        ("odd_data", True, "odd", {"tags": "{'b'}"}),
        ("scalar_data", True, "a number", {"value": 42}),
    ],
)
def test_a_python_condition_takes_each_return_shape(
    plan_dir: Path, checks: str, func: str, passed: bool, message: str, data: dict[str, Any]
) -> None:
    result = one(plan_dir, {"kind": "python", "call": f"{checks}:{func}"})
    assert (result.kind, result.passed, result.message, result.data) == (
        "python",
        passed,
        message,
        data,
    )


@pytest.mark.parametrize(
    ("func", "message"),
    [
        (
            "dict_without_passed",
            "returned a dict without 'passed'; return a bool, (passed, message), "
            "(passed, message, data) or a dict with passed",
        ),
        (
            "a_string",
            "returned a str; return a bool, (passed, message), (passed, message, data) "
            "or a dict with passed",
        ),
        ("truthy_int", "passed must be True or False, got an int"),
    ],
)
def test_a_python_condition_returning_something_else_fails_with_what_to_return(
    plan_dir: Path, checks: str, func: str, message: str
) -> None:
    result = one(plan_dir, {"kind": "python", "call": f"{checks}:{func}"})
    assert result.passed is False
    assert result.message == f"{checks}:{func}: {message}"


@pytest.mark.parametrize(
    ("func", "message"),
    [
        ("boom", "ValueError: boom"),
        ("exits", "SystemExit: 3"),
        ("own_timeout", "TimeoutError: the database did not answer"),
    ],
)
def test_a_python_condition_that_raises_fails_with_the_error(
    plan_dir: Path, checks: str, func: str, message: str
) -> None:
    report = evaluate(plan_dir, {"kind": "python", "call": f"{checks}:{func}", "name": "db"})
    (result,) = report.results
    assert (result.passed, result.message) == (False, message)
    assert report.status == "incomplete"


@pytest.mark.parametrize("func", ["slow", "slow_async"])
def test_a_python_condition_that_takes_too_long_fails_at_its_timeout(
    plan_dir: Path, checks: str, func: str
) -> None:
    started = time.monotonic()
    result = one(plan_dir, {"kind": "python", "call": f"{checks}:{func}", "timeout": "0.3s"})
    assert time.monotonic() - started < 3
    assert (result.passed, result.message) == (False, "timed out after 0.3s")


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        ("no_such_module_here:check", "cannot import 'no_such_module_here'"),
        ("CHECKS:missing", "has no callable 'missing'"),
        ("CHECKS:not_callable", "has no callable 'not_callable'"),
    ],
)
def test_a_python_condition_that_cannot_be_loaded_fails_with_why(
    plan_dir: Path, checks: str, call: str, fragment: str
) -> None:
    result = one(plan_dir, {"kind": "python", "call": call.replace("CHECKS", checks)})
    assert result.passed is False
    assert fragment in result.message


def test_a_python_condition_receives_the_gate_context(plan_dir: Path, checks: str) -> None:
    result = one(plan_dir, {"kind": "python", "call": f"{checks}:echo"})
    assert result.data == {
        "gate": "m1.exit",
        "phase": "p1",
        "milestone": "m1",
        "side": "exit",
        "metrics": METRICS,
        "run_id": "7",
        "state_dir": str(plan_dir / "state"),
        "plan_dir": str(plan_dir),
    }


# -- the report ------------------------------------------------------------------------------


def test_an_entry_gate_is_allowed_or_blocked_and_an_exit_gate_completed_or_incomplete(
    plan_dir: Path,
) -> None:
    exists = {"kind": "file", "path": "notes/release.md"}
    missing = {"kind": "file", "path": "missing"}
    assert evaluate(plan_dir, exists, gate_id="m1.entry").status == "allowed"
    assert evaluate(plan_dir, exists, missing, gate_id="m1.entry").status == "blocked"
    assert evaluate(plan_dir, exists, gate_id="m1.exit").status == "completed"
    assert evaluate(plan_dir, missing, exists, gate_id="m1.exit").status == "incomplete"


def test_a_gate_waits_for_an_approval_unless_another_condition_failed(plan_dir: Path) -> None:
    approval = {"kind": "approval", "approvers": ["lead"]}
    waiting = evaluate(plan_dir, {"kind": "file", "path": "notes"}, approval)
    assert waiting.status == "waiting" and waiting.waiting and not waiting.failed
    failed = evaluate(plan_dir, {"kind": "file", "path": "missing"}, approval)
    assert failed.status == "incomplete" and not failed.waiting


def test_a_milestone_gate_report_names_its_milestone_and_phase(plan_dir: Path) -> None:
    report = evaluate(plan_dir, {"kind": "metric", "metric": "milestone.completed", "value": 1})
    assert report.to_json() == {
        "gate": "m1.exit",
        "phase": "p1",
        "milestone": "m1",
        "status": "completed",
        "results": [
            {
                "kind": "metric",
                "name": "#1",
                "passed": True,
                "message": "milestone.completed == 1 (yes: 1)",
                "data": {"value": 1.0},
            }
        ],
    }
    phase_gate = evaluate(
        plan_dir, {"kind": "file", "path": "notes"}, gate_id="p1.exit", milestone=None
    )
    assert "milestone" not in phase_gate.to_json()


# -- the gates of a stored plan ----------------------------------------------------------------


def stored(text: str) -> dict[str, Any]:
    report = check_text(textwrap.dedent(text), "plan.yaml")
    assert report.ok, [p.render() for p in report.problems]
    assert isinstance(report.plan, Plan)
    return json.loads(report.plan.model_dump_json(by_alias=True))  # type: ignore[no-any-return]


GATED = """\
    version: 1
    name: gated
    phases:
      - id: p1
        exit_gate: {conditions: [{kind: approval, approvers: [lead]}]}
        milestones:
          - id: m1
            entry_gate: {conditions: [{kind: file, path: README.md}]}
            exit_gate: {conditions: [{kind: approval, approvers: [qa, lead], count: 2}]}
          - id: m2
      - id: p2
        entry_gate: {conditions: [{kind: python, call: "checks:ready"}]}
        milestones: [{id: m3}]
    """


def test_the_gates_of_a_plan_are_listed_in_the_order_a_run_meets_them() -> None:
    gates = declared_gates(stored(GATED))
    assert [(g.id, g.kind, g.phase, g.milestone) for g in gates] == [
        ("m1.entry", "milestone entry", "p1", "m1"),
        ("m1.exit", "milestone exit", "p1", "m1"),
        ("p1.exit", "phase exit", "p1", None),
        ("p2.entry", "phase entry", "p2", None),
    ]
    every = [g.id for g in declared_gates(stored(GATED), absent=True)]
    assert every[:6] == ["p1.entry", "m1.entry", "m1.exit", "m2.entry", "m2.exit", "p1.exit"]


def test_a_milestone_gate_can_be_approved_by_its_approvers_only() -> None:
    plan = stored(GATED)
    assert _gate_approvers(plan, "m1.exit") == {"qa", "lead"}
    assert _gate_approvers(plan, "p1.exit") == {"lead"}
    with pytest.raises(RunRefused, match=r"gate m1\.entry has no approval condition"):
        _gate_approvers(plan, "m1.entry")
    with pytest.raises(RunRefused, match=r"gate m2\.exit has no approval condition"):
        _gate_approvers(plan, "m2.exit")
    with pytest.raises(RunRefused, match=r"unknown gate 'm9.exit'; gates are PHASE.entry, "):
        _gate_approvers(plan, "m9.exit")


# -- check ---------------------------------------------------------------------------------------


def check(text: str) -> CheckReport:
    return check_text(textwrap.dedent(text), "plan.yaml")


def the_error(report: CheckReport, fragment: str) -> Problem:
    found = [p for p in report.errors if fragment in p.message]
    assert len(found) == 1, [p.render() for p in report.problems]
    return found[0]


def test_check_reports_an_unknown_metric_in_a_milestone_gate_with_a_suggestion() -> None:
    report = check(
        """\
        version: 1
        name: t
        phases:
          - id: p1
            milestones:
              - id: m1
                exit_gate:
                  conditions:
                    - {kind: metric, metric: milestone.faild, value: 0}
        """
    )
    problem = the_error(report, "unknown gate metric 'milestone.faild'")
    assert (problem.line, problem.column) == (9, 38)
    assert problem.dotted_path == "phases[0].milestones[0].exit_gate.conditions[0].metric"
    assert problem.hint == "did you mean 'milestone.failed'?"
    assert "milestone.completed_ratio" in problem.message


def test_check_accepts_phase_and_run_metrics_in_a_milestone_gate() -> None:
    report = check(
        """\
        version: 1
        name: t
        phases:
          - id: p1
            milestones:
              - id: m1
                entry_gate:
                  conditions:
                    - {kind: metric, metric: phase.failed, value: 0}
                    - {kind: metric, metric: run.failed_ratio, op: "<", value: 0.1}
                    - {kind: metric, metric: milestone.total, op: ">", value: 0}
        """
    )
    assert report.ok, [p.render() for p in report.problems]


def test_check_refuses_milestone_metrics_in_a_phase_gate() -> None:
    report = check(
        """\
        version: 1
        name: t
        phases:
          - id: p1
            entry_gate:
              conditions:
                - {kind: metric, metric: milestone.failed, value: 0}
            milestones: [{id: m1}]
        """
    )
    problem = the_error(report, "'milestone.failed' is only known in a milestone's gate")
    assert (problem.line, problem.column) == (7, 34)
    assert problem.hint == "did you mean 'phase.failed'?"


def test_check_refuses_two_gates_with_the_same_id() -> None:
    report = check(
        """\
        version: 1
        name: t
        phases:
          - id: build
            exit_gate: {conditions: [{kind: metric, metric: phase.failed, value: 0}]}
            milestones:
              - id: build
                entry_gate: {conditions: [{kind: file, path: a.txt}]}
                exit_gate: {conditions: [{kind: file, path: b.txt}]}
        """
    )
    problem = the_error(report, "duplicate gate id 'build.exit'")
    assert (problem.line, problem.column) == (9, 9)
    assert "rename one of them" in problem.message
    assert problem.hint == "first defined at plan.yaml:5:16"
    assert len(report.errors) == 1  # build.entry is only the milestone's


def test_check_refuses_an_approval_count_above_the_different_approvers() -> None:
    report = check(
        """\
        version: 1
        name: t
        phases:
          - id: p1
            milestones:
              - id: m1
                entry_gate:
                  conditions:
                    - {kind: approval, approvers: [ana, ana], count: 2}
        """
    )
    problem = the_error(report, "count 2 is more than the 1 different approvers named")
    assert problem.dotted_path == "phases[0].milestones[0].entry_gate.conditions[0].count"


def test_check_reports_a_bad_file_pattern_and_a_bad_python_call_in_a_milestone_gate() -> None:
    report = check(
        """\
        version: 1
        name: t
        phases:
          - id: p1
            milestones:
              - id: m1
                exit_gate:
                  conditions:
                    - {kind: file, path: a.txt, pattern: "("}
                    - {kind: python, call: "not a call"}
        """
    )
    pattern = the_error(report, "pattern is not a valid regular expression")
    assert pattern.dotted_path == "phases[0].milestones[0].exit_gate.conditions[0].pattern"
    assert pattern.line == 9
    call = [p for p in report.errors if p.dotted_path.endswith("conditions[1].call")]
    assert call and call[0].line == 10, [p.render() for p in report.problems]
