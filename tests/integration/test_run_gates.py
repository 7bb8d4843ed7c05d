"""Phase gates: metric, command, file and python conditions, approvals given, refused or
automatic. Milestone gates, the ``gates`` command and approvals across a resume are in
test_gates_*.py."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from run_helpers import (
    Background,
    Workspace,
    agent_spec,
    cli,
    plan,
    run_in_process,
    status_json,
    task,
    wait_for,
)


def gated_plan(ws: Workspace, conditions: list[dict[str, Any]]) -> Path:
    """Phase p1 (tasks a, b) with an exit gate, then phase p2 (task c)."""
    return ws.write_plan(
        plan(
            [
                {
                    "id": "p1",
                    "exit_gate": {"conditions": conditions},
                    "milestones": [{"id": "m1", "tasks": [task("a"), task("b", needs=["a"])]}],
                },
                {"id": "p2", "milestones": [{"id": "m2", "tasks": [task("c")]}]},
            ],
            agents={"dev": agent_spec(ws, capacity=2)},
        )
    )


APPROVAL = {"kind": "approval", "approvers": ["team_lead", "cto"], "count": 1}


def holds_for(probe: Callable[[], bool], seconds: float, what: str) -> None:
    """Assert ``probe`` stays true for ``seconds`` (checking that something does NOT happen)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert probe(), what
        time.sleep(0.05)


#: Python conditions for the gates of these tests, written next to the plan as CHECKS.py.
CHECKS = """
import asyncio

def ready(ctx):
    return ctx.metrics["phase.completed"] == 2, "two tasks done", {"seen": ctx.metrics}

async def not_ready(ctx):
    return {"passed": False, "message": "the database is not migrated"}

def broken(ctx):
    raise RuntimeError("cannot reach the database")

async def hangs(ctx):
    await asyncio.sleep(60)
"""


def with_checks(ws: Workspace, condition: dict[str, Any]) -> dict[str, Any]:
    """``condition`` with CHECKS naming a python module of the workspace (and notes.txt)."""
    module = f"{ws.module}_checks"
    (ws.dir / f"{module}.py").write_text(CHECKS, encoding="utf-8")
    (ws.dir / "notes.txt").write_text("release: approved\n", encoding="utf-8")
    return {
        k: v.replace("CHECKS", module) if isinstance(v, str) else v for k, v in condition.items()
    }


@pytest.mark.parametrize(
    ("condition", "passes"),
    [
        ({"kind": "metric", "metric": "phase.failed", "op": "==", "value": 0}, True),
        ({"kind": "metric", "metric": "phase.completed", "op": ">=", "value": 3}, False),
        ({"kind": "command", "run": "true"}, True),
        ({"kind": "command", "run": ["sh", "-c", "exit 4"]}, False),
        ({"kind": "file", "path": "notes.txt"}, True),
        ({"kind": "file", "path": "missing.txt"}, False),
        ({"kind": "file", "path": "notes.txt", "pattern": "release: appr"}, True),
        ({"kind": "file", "path": "notes.txt", "pattern": "release: rejected"}, False),
        ({"kind": "python", "call": "CHECKS:ready"}, True),
        ({"kind": "python", "call": "CHECKS:not_ready"}, False),
        ({"kind": "python", "call": "CHECKS:broken"}, False),
        ({"kind": "python", "call": "CHECKS:hangs", "timeout": "0.2s"}, False),
    ],
    ids=[
        "metric-met",
        "metric-unmet",
        "command-ok",
        "command-fails",
        "file-exists",
        "file-missing",
        "file-matches",
        "file-does-not-match",
        "python-passes",
        "python-fails",
        "python-raises",
        "python-times-out",
    ],
)
def test_an_exit_gate_lets_the_next_phase_start_only_when_its_condition_holds(
    tmp_path: Path, condition: dict[str, Any], passes: bool
) -> None:
    ws = Workspace.create(tmp_path)
    gated_plan(ws, [with_checks(ws, condition)])
    code, seen = run_in_process(ws)
    done = ws.finished()
    assert {"a", "b"} <= set(done)
    (gate,) = seen.kinds("gate_evaluated")
    assert gate.data["gate"] == "p1.exit"
    if passes:
        assert code == 0
        assert done["c"].start >= done["b"].end  # type: ignore[operator]
        assert gate.data["status"] == "completed"
    else:
        assert code == 1
        assert "c" not in done and ws.runs_of("c") == []
        assert gate.data["status"] == "incomplete"
        (blocked,) = seen.kinds("task_blocked")
        assert blocked.task == "c" and "p1.exit" in blocked.data["reason"]
        assert f"{condition['kind']} #1" in blocked.data["reason"]
    (result,) = gate.data["results"]
    assert result["kind"] == condition["kind"] and result["passed"] is passes
    assert result["message"]


def test_the_report_of_a_python_condition_keeps_its_message_and_data(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    gated_plan(ws, [with_checks(ws, {"kind": "python", "call": "CHECKS:ready", "name": "db"})])
    code, seen = run_in_process(ws)
    assert code == 0
    (gate,) = seen.kinds("gate_evaluated")
    (result,) = gate.data["results"]
    assert (result["name"], result["message"]) == ("db", "two tasks done")
    assert result["data"]["seen"]["phase.completed"] == 2
    assert result["data"]["seen"]["run.total"] == 3
    assert "milestone.completed" not in result["data"]["seen"]  # a phase gate


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ("CHECKS:broken", "RuntimeError: cannot reach the database"),
        ("CHECKS:hangs", "timed out after 0.2s"),
        ("CHECKS:nothing", "has no callable 'nothing'"),
    ],
)
def test_a_broken_python_condition_fails_its_gate_not_the_run(
    tmp_path: Path, call: str, message: str
) -> None:
    ws = Workspace.create(tmp_path)
    condition = with_checks(ws, {"kind": "python", "call": call, "timeout": "0.2s"})
    gated_plan(ws, [condition])
    code, seen = run_in_process(ws)
    assert code == 1
    (gate,) = seen.kinds("gate_evaluated")
    assert gate.data["status"] == "incomplete"
    assert message in gate.data["results"][0]["message"]
    (blocked,) = seen.kinds("task_blocked")
    assert message in blocked.data["reason"]
    assert seen.kinds("run_finished")[0].data["status"] == "failed"


@contextmanager
def waiting_at_the_gate(ws: Workspace) -> Iterator[Background]:
    """A background run of the gated plan, once phase p1's work is done."""
    gated_plan(ws, [APPROVAL])
    bg = Background(ws.dir, "run", ws.plan, "--state", ws.state, "--quiet")
    try:
        wait_for(lambda: {"a", "b"} <= set(ws.finished()), what="phase p1's tasks")
        yield bg
    finally:
        bg.stop()


def not_past_the_gate(ws: Workspace, bg: Background) -> Callable[[], bool]:
    return lambda: bg.running() and ws.runs_of("c") == []


def test_an_approval_gate_waits_until_an_approver_approves(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    with waiting_at_the_gate(ws) as bg:
        holds_for(not_past_the_gate(ws, bg), 0.6, "the run went past an unapproved gate")
        report = status_json(ws.state)
        assert report["status"] == "running" and report["exit_code"] is None
        assert report["counts"].get("completed") == 2
        assert "c" not in {r["task"] for r in report["running"]}

        # Someone who is not one of the gate's approvers is refused and does not open it.
        intern = cli("approve", "p1.exit", "--as", "intern", "--state", ws.state)
        assert intern.code == 2 and "not an approver" in intern.stderr
        holds_for(not_past_the_gate(ws, bg), 0.6, "a non-approver opened the gate")

        approved_at = time.time()
        approve = cli("approve", "p1.exit", "--as", "team_lead", "--state", ws.state)
        assert approve.code == 0, str(approve)
        assert "approved by team_lead" in approve.stdout
        result = bg.wait(timeout=20)
        assert result.code == 0, str(result)
    assert ws.finished()["c"].start >= approved_at
    report = status_json(ws.state)
    assert report["status"] == "completed" and report["counts"] == {"completed": 3}


def test_a_rejected_gate_blocks_the_next_phase_and_the_run_exits_1(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    with waiting_at_the_gate(ws) as bg:
        reject = cli(
            "reject", "p1.exit", "--as", "team_lead", "--comment", "not ready", "--state", ws.state
        )
        assert reject.code == 0, str(reject)
        result = bg.wait(timeout=20)
        assert result.code == 1, str(result)
    assert ws.runs_of("c") == []
    report = status_json(ws.state)
    assert report["status"] == "failed" and report["exit_code"] == 1
    (blocked,) = report["blocked"]
    assert blocked["task"] == "c"
    assert "p1.exit" in blocked["reason"] and "team_lead" in blocked["reason"]
    assert "not ready" in blocked["reason"]


def test_approve_as_passes_approval_gates_unattended(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    gated_plan(ws, [APPROVAL])
    result = cli("run", ws.plan, "--state", ws.state, "--approve-as", "demo", "--quiet")
    assert result.code == 0, str(result)
    assert set(ws.finished()) == {"a", "b", "c"}
    assert status_json(ws.state)["status"] == "completed"


def test_approving_an_unknown_gate_is_refused_with_exit_2(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    gated_plan(ws, [APPROVAL])
    assert cli("run", ws.plan, "--state", ws.state, "--approve-as", "demo", "--quiet").code == 0
    result = cli("approve", "p9.exit", "--as", "team_lead", "--state", ws.state)
    assert result.code == 2
    assert "unknown gate 'p9.exit'" in result.stderr and "PHASE.exit" in result.stderr
    assert "Traceback" not in result.stderr
