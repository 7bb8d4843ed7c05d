"""Milestone gates in real runs: a milestone's tasks wait for its entry gate, the milestones
after it wait for its exit gate, other work goes on; milestone metrics; the escalation hooks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from run_helpers import (
    Background,
    Collect,
    Workspace,
    agent_spec,
    cli,
    plan,
    quick_options,
    run_in_process,
    status_json,
    task,
    wait_for,
)

from counterpoint.runtime.gates import GateReport
from counterpoint.runtime.orchestrator import Orchestrator
from counterpoint.runtime.session import decide_gate, request_cancel, start_run
from counterpoint.store.sqlite import SqliteStore


def milestone_plan(
    ws: Workspace, m1: dict[str, Any], m3: dict[str, Any] | None = None, d_sleep: float = 0.05
) -> Path:
    """Phase p1: m1 (a, then b) with ``m1``'s gates, m2 after m1 (c), m3 on its own (d);
    then phase p2 (e)."""
    return ws.write_plan(
        plan(
            [
                {
                    "id": "p1",
                    "milestones": [
                        {"id": "m1", **m1, "tasks": [task("a"), task("b", needs=["a"])]},
                        {"id": "m2", "after": ["m1"], "tasks": [task("c")]},
                        {"id": "m3", **(m3 or {}), "tasks": [task("d", sleep=d_sleep)]},
                    ],
                },
                {"id": "p2", "milestones": [{"id": "m4", "tasks": [task("e")]}]},
            ],
            agents={"dev": agent_spec(ws, capacity=2)},
        )
    )


def approval(*approvers: str, count: int = 1) -> dict[str, Any]:
    return {"conditions": [{"kind": "approval", "approvers": list(approvers), "count": count}]}


def holds_for(probe: Callable[[], bool], seconds: float, what: str) -> None:
    """Assert ``probe`` stays true for ``seconds`` (checking that something does NOT happen)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert probe(), what
        time.sleep(0.05)


def latest_status(ws: Workspace, gate: str) -> str | None:
    """The status of ``gate``'s latest journaled evaluation (read as another process would)."""
    if not (ws.state / "state.db").exists():
        return None
    store = SqliteStore(ws.state, create=False)
    try:
        record = store.latest_run()
        if record is None:
            return None
        found = [e for e in store.events_of_kind(record.id, "gate_evaluated") if e["gate"] == gate]
    finally:
        store.close()
    return str(found[-1]["status"]) if found else None


def test_a_milestone_waits_for_its_entry_gate_while_other_milestones_run(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    milestone_plan(ws, {"entry_gate": approval("lead")})
    bg = Background(ws.dir, "run", ws.plan, "--state", ws.state, "--quiet")
    try:
        wait_for(lambda: latest_status(ws, "m1.entry") == "waiting", what="m1.entry to wait")
        wait_for(lambda: "d" in ws.finished(), what="m3's task, which has no gate")
        holds_for(
            lambda: bg.running() and ws.executions() == ws.runs_of("d"),
            0.6,
            "a task of m1 (or after it) started before m1's entry gate passed",
        )
        approved_at = time.time()
        result = cli("approve", "m1.entry", "--as", "lead", "--state", ws.state)
        assert result.code == 0 and "m1.entry: approved by lead" in result.stdout, str(result)
        assert bg.wait(timeout=20).code == 0
    finally:
        bg.stop()
    done = ws.finished()
    assert set(done) == {"a", "b", "c", "d", "e"}
    assert done["a"].start >= approved_at
    assert done["b"].start >= done["a"].end  # type: ignore[operator]
    assert latest_status(ws, "m1.entry") == "allowed"


def test_the_next_milestone_waits_for_the_exit_gate_of_the_one_before(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    milestone_plan(ws, {"exit_gate": approval("qa", "lead")})
    bg = Background(ws.dir, "run", ws.plan, "--state", ws.state, "--quiet")
    try:
        wait_for(lambda: latest_status(ws, "m1.exit") == "waiting", what="m1.exit to wait")
        assert {"a", "b"} <= set(ws.finished())
        holds_for(
            lambda: bg.running() and ws.runs_of("c") == [] and ws.runs_of("e") == [],
            0.6,
            "m2 (after m1) or phase p2 started before m1's exit gate passed",
        )
        report = status_json(ws.state)
        assert report["status"] == "running"
        (gate,) = [g for g in report["gates"] if g["gate"] == "m1.exit"]
        assert gate["status"] == "waiting"
        approved_at = time.time()
        assert cli("approve", "m1.exit", "--as", "qa", "--state", ws.state).code == 0
        assert bg.wait(timeout=20).code == 0
    finally:
        bg.stop()
    done = ws.finished()
    assert set(done) == {"a", "b", "c", "d", "e"}
    assert done["c"].start >= approved_at and done["e"].start >= approved_at
    assert done["c"].start >= done["b"].end  # type: ignore[operator]


def test_a_failed_entry_gate_blocks_its_milestone_and_what_comes_after(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    gate = {"conditions": [{"kind": "file", "path": "go.txt", "name": "go"}]}
    milestone_plan(ws, {"entry_gate": gate})
    code, seen = run_in_process(ws)
    assert code == 1
    assert set(ws.finished()) == {"d"}  # m3 does not wait on m1
    blocked = {e.task: e.data["reason"] for e in seen.kinds("task_blocked")}
    assert set(blocked) == {"a", "b", "c", "e"}
    assert blocked["a"] == "gate m1.entry blocked: file go: go.txt does not exist"
    (evaluation,) = seen.kinds("gate_evaluated")
    assert evaluation.data["gate"] == "m1.entry" and evaluation.data["milestone"] == "m1"
    assert evaluation.data["phase"] == "p1" and evaluation.data["status"] == "blocked"


def test_a_failed_exit_gate_blocks_only_what_waits_for_its_milestone(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    gate = {"conditions": [{"kind": "command", "run": ["sh", "-c", "echo not yet; exit 3"]}]}
    milestone_plan(ws, {"exit_gate": gate})
    code, seen = run_in_process(ws)
    assert code == 1
    assert set(ws.finished()) == {"a", "b", "d"}
    (evaluation,) = seen.kinds("gate_evaluated")
    assert evaluation.data["status"] == "incomplete"
    assert evaluation.data["results"][0]["data"] == {"output": "not yet\n"}
    assert {e.task for e in seen.kinds("task_blocked")} == {"c", "e"}


CHECKS = """
def milestone_done(ctx):
    m = ctx.metrics
    return m["milestone.completed"] == m["milestone.total"], "m1 done", {
        "milestone": ctx.milestone, "phase": ctx.phase, "gate": ctx.gate, "side": ctx.side,
        "metrics": m,
    }
"""


def test_a_milestone_gate_sees_its_milestone_its_phase_and_the_run(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    module = f"{ws.module}_checks"
    (ws.dir / f"{module}.py").write_text(CHECKS, encoding="utf-8")
    gate = {
        "conditions": [
            {"kind": "metric", "metric": "milestone.completed", "op": "==", "value": 2},
            {"kind": "metric", "metric": "milestone.completed_ratio", "op": "==", "value": 1},
            {"kind": "metric", "metric": "phase.total", "op": "==", "value": 4},
            {"kind": "python", "call": f"{module}:milestone_done", "name": "py"},
        ]
    }
    milestone_plan(ws, {"exit_gate": gate}, d_sleep=1.0)
    code, seen = run_in_process(ws)
    assert code == 0, [e.to_json() for e in seen.kinds("gate_evaluated")]
    (evaluation,) = seen.kinds("gate_evaluated")
    results = evaluation.data["results"]
    assert [r["passed"] for r in results] == [True, True, True, True]
    data = results[3]["data"]
    assert (data["milestone"], data["phase"], data["gate"], data["side"]) == (
        "m1",
        "p1",
        "m1.exit",
        "exit",
    )
    metrics = data["metrics"]
    assert metrics["milestone.total"] == 2 and metrics["milestone.completed"] == 2
    assert metrics["phase.total"] == 4 and metrics["phase.completed"] == 2  # d still runs
    assert metrics["run.total"] == 5


def test_the_escalation_hooks_hear_blocked_waiting_and_passed_gates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, str, str]] = []

    def blocked(self: Orchestrator, gate_id: str, report: GateReport) -> None:
        calls.append(("blocked", gate_id, report.status))

    def passed(self: Orchestrator, gate_id: str, report: GateReport) -> None:
        calls.append(("passed", gate_id, report.status))

    monkeypatch.setattr(Orchestrator, "_gate_blocked", blocked)
    monkeypatch.setattr(Orchestrator, "_gate_passed", passed)
    ws = Workspace.create(tmp_path)
    missing = {"conditions": [{"kind": "file", "path": "missing.txt"}]}
    milestone_plan(ws, {"exit_gate": approval("qa", "lead", count=2)}, m3={"entry_gate": missing})
    seen = Collect()
    codes: list[int] = []

    def evaluations() -> list[str]:
        return [
            e.data["status"] for e in seen.kinds("gate_evaluated") if e.data["gate"] == "m1.exit"
        ]

    runner = threading.Thread(
        target=lambda: codes.append(
            start_run(ws.plan, ws.state, quick_options(), [seen], sync="normal")
        ),
        daemon=True,
    )
    runner.start()
    try:
        wait_for(lambda: ("blocked", "m1.exit", "waiting") in calls, what="m1.exit to wait")
        decide_gate(ws.state, "m1.exit", "qa", True)
        wait_for(lambda: len(evaluations()) == 2, what="m1.exit to be checked again")
        assert evaluations() == ["waiting", "waiting"]  # one of two approvals
        decide_gate(ws.state, "m1.exit", "lead", True)
        runner.join(timeout=20)
    finally:
        if runner.is_alive():
            request_cancel(ws.state)
            runner.join(timeout=20)
    assert codes == [1]  # m3 is blocked by its entry gate
    assert calls == [
        ("blocked", "m3.entry", "blocked"),
        ("blocked", "m1.exit", "waiting"),
        ("passed", "m1.exit", "completed"),
    ]
