"""Gates on the escalation ladder: a gate waiting for approval goes up the levels, and a
gate nobody decides in time blocks its work when ``escalation.exhausted`` is ``fail``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from run_helpers import (
    Background,
    Workspace,
    agent_spec,
    cli,
    journal,
    plan,
    run_in_process,
    task,
    wait_for,
)


def gated(ws: Workspace, exhausted: str, timeout: float = 0.15) -> None:
    ws.write_plan(
        plan(
            [
                {"id": "build", "milestones": [{"id": "m1", "tasks": [task("compile")]}]},
                {
                    "id": "ship",
                    "entry_gate": {
                        "conditions": [{"kind": "approval", "approvers": ["lead"], "name": "go"}]
                    },
                    "milestones": [{"id": "m2", "tasks": [task("deploy")]}],
                },
            ],
            agents={"dev": agent_spec(ws)},
            escalation={
                "timeout": timeout,
                "levels": [
                    {"name": "first", "contacts": ["lead"]},
                    {"name": "second", "contacts": ["cto"]},
                ],
                "exhausted": exhausted,
            },
        )
    )


def subjects(events: Any, kind: str) -> list[str]:
    return [e.data["subject"] for e in events.kinds(kind)]


def test_an_undecided_approval_climbs_the_ladder_then_blocks_the_phase(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    gated(ws, "fail")
    code, events = run_in_process(ws)
    assert code == 1
    assert subjects(events, "escalation_opened") == ["gate:ship.entry"]
    assert [e.data["level_name"] for e in events.kinds("escalated")] == ["second"]
    assert subjects(events, "escalation_exhausted") == ["gate:ship.entry"]
    (abandoned,) = events.kinds("gate_abandoned")
    assert abandoned.data["gate"] == "ship.entry"
    assert "no more escalation levels" in abandoned.data["reason"]
    assert [e.task for e in events.kinds("task_blocked")] == ["deploy"]
    assert [x.task for x in ws.executions()] == ["compile"]


def test_an_approval_while_it_waits_closes_its_case(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    gated(ws, "fail", timeout=60.0)
    run = Background(ws.dir, "run", ws.plan, "--state", ws.state, "--quiet")
    try:
        wait_for(lambda: journal(ws, "escalation_opened"), what="the gate's case to open")
        approved = cli("approve", "ship.entry", "--as", "lead", "--state", ws.state)
        assert approved.code == 0, str(approved)
        result = run.wait(timeout=30)
    finally:
        run.stop()
    assert result.code == 0, str(result)
    assert [e["subject"] for e in journal(ws, "escalation_opened")] == ["gate:ship.entry"]
    (closed,) = journal(ws, "escalation_resolved")
    assert closed["subject"] == "gate:ship.entry"
    assert not journal(ws, "escalation_exhausted")
    assert sorted(x.task for x in ws.executions()) == ["compile", "deploy"]
