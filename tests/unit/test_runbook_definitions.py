"""Runbook definitions: the plan section and runbook files, validated with precise positions."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from counterpoint.errors import PlanError
from counterpoint.plan.load import check_text
from counterpoint.plan.model import RunbookApprovalStep
from counterpoint.rollback.errors import UnknownSubject
from counterpoint.rollback.runbook_source import from_file
from counterpoint.rollback.runbook_steps import approval_state, decided_by
from counterpoint.runtime.gates import Approval

PLAN = """\
version: 1
name: ops
phases: [{id: p}]
runbooks:
  failover:
    steps:
"""


def errors(steps: str) -> list[str]:
    report = check_text(PLAN + steps, "plan.yaml")
    return [p.render() for p in report.errors]


def test_a_plan_with_valid_runbooks_checks_clean() -> None:
    report = check_text(
        PLAN
        + """\
      - {id: stop, kind: command, run: "./stop.sh --now", timeout: 2m, retries: 2}
      - {id: lag, kind: check, check: {kind: file, path: lag.txt, pattern: "^0"}, retries: 5}
      - {id: py, kind: check, check: {kind: python, call: "checks:ok", timeout: 5s}}
      - {id: sign, kind: approval, approvers: [dba, lead], count: 2, timeout: 1h}
      - {id: dns, kind: manual, instructions: Point the name at the replica., approvers: [ops]}
""",
        "plan.yaml",
    )
    assert report.ok, [p.render() for p in report.problems]
    assert report.plan is not None
    steps = report.plan.runbooks["failover"].steps
    assert [s.kind for s in steps] == ["command", "check", "check", "approval", "manual"]
    assert steps[0].timeout == 120.0


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        (
            "      - {id: a, kind: check, check: {kind: metric, metric: run.failed, value: 0}}\n",
            "plan.yaml:7:37: error: runbooks.failover.steps[0].check: unknown kind 'metric'; "
            "expected one of command, file, python",
        ),
        (
            "      - {id: a, kind: approval, approvers: [x, x], count: 2}\n",
            "plan.yaml:7:9: error: runbooks.failover.steps[0]: count 2 is more than the 1 "
            "different approvers",
        ),
        (
            "      - {id: a, kind: manual, approvers: [x], instructions: go, retries: 1}\n",
            "plan.yaml:7:65: error: runbooks.failover.steps[0].retries: unknown key 'retries'",
        ),
        (
            "      - {id: a, kind: comand, run: ls}\n",
            "plan.yaml:7:9: error: runbooks.failover.steps[0]: unknown kind 'comand'; expected "
            "one of command, check, approval, manual (did you mean 'command'?)",
        ),
        (
            '      - {id: a, kind: command, run: "echo \'x"}\n',
            "plan.yaml:7:37: error: runbooks.failover.steps[0].run: cannot split the command: "
            "No closing quotation",
        ),
        (
            "      - {id: a, kind: check, check: {kind: command, run: ls, timeout: 1s}, "
            "timeout: 2s}\n",
            "plan.yaml:7:9: error: runbooks.failover.steps[0]: give the timeout on the step or "
            "in its check, not both",
        ),
        (
            "      - {id: a, kind: command, run: ls}\n      - {id: a, kind: command, run: ls}\n",
            "plan.yaml:7:7: error: runbooks.failover.steps: duplicate step id 'a' (steps[0] and "
            "steps[1]): step ids must be unique in a runbook",
        ),
    ],
)
def test_runbook_mistakes_are_reported_where_they_are(steps: str, expected: str) -> None:
    assert errors(steps) == [expected]


def test_a_runbook_file_is_validated_like_a_plan_with_its_own_keys(tmp_path: Path) -> None:
    path = tmp_path / "runbooks.yaml"
    path.write_text(
        "version: 2\n"
        "runbook:\n"
        "  x: {}\n"
        "runbooks:\n"
        "  x:\n"
        "    steps:\n"
        "      - {id: a, kind: approval, approvers: []}\n"
        "escalation: {levels: [{name: l1, contacts: [a]}], exhausted: later}\n"
    )
    with pytest.raises(PlanError) as caught:
        from_file(path)
    rendered = [p.render().replace(str(path), "F") for p in caught.value.problems]
    assert rendered == [
        "F:1:10: error: version: unsupported runbook file version; this counterpoint reads "
        "version 1",
        "F:2:1: error: runbook: unknown key 'runbook' (did you mean 'runbooks'?)",
        "F:7:44: error: runbooks.x.steps[0].approvers: needs at least 1 item(s)",
        "F:8:62: error: escalation.exhausted: bad value string 'later'; expected one of fail, "
        "block",
    ]


def test_a_runbook_file_with_a_duplicate_key_or_bad_yaml_says_where(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("version: 1\nversion: 1\nrunbooks: {x: {steps: [{id: a, kind: manual}]}}\n")
    with pytest.raises(PlanError) as caught:
        from_file(path)
    assert caught.value.problems[0].render() == f"{path}:2:1: error: duplicate key 'version'"
    path.write_text("version: 1\nrunbooks: [\n")
    with pytest.raises(PlanError) as caught:
        from_file(path)
    assert caught.value.problems[0].render().startswith(f"{path}:3:1: error: invalid YAML")


def test_an_unknown_runbook_suggests_the_closest_name(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(
        "version: 1\nrunbooks: {db-failover: {steps: [{id: a, kind: command, run: ls}]}}\n"
    )
    source = from_file(path)
    with pytest.raises(UnknownSubject, match=r"did you mean 'db-failover'\?"):
        source.get("db-failovr")
    assert source.folder == tmp_path.resolve()


def test_the_approvers_own_decisions_are_credited_before_an_override() -> None:
    step = RunbookApprovalStep(kind="approval", id="s", approvers=["a", "b"], count=1)

    def state(
        decisions: list[Approval], override: str | None
    ) -> tuple[bool | None, tuple[str, ...]]:
        found = asyncio.run(approval_state(step, decisions, override))
        return found.passed, decided_by(found)

    assert state([], None) == (None, ())
    assert state([], "ops") == (True, ("--approve-as ops",))
    assert state([Approval("a", True)], "ops") == (True, ("a",))
    assert state([Approval("a", False, "no")], "ops") == (False, ())  # a rejection wins
    assert state([Approval("a", False), Approval("a", True)], None) == (True, ("a",))
