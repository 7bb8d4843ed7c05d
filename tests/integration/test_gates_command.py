"""``counterpoint gates``: every gate of the latest run's plan with its latest report, while
the run waits and after it ended, as a table or as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from run_helpers import Background, Workspace, agent_spec, cli, plan, task, wait_for


def gated(ws: Workspace) -> Path:
    """p1: m1 (entry: a file; exit: an approval), m2 without gates; p2 with an entry gate."""
    (ws.dir / "ready.txt").write_text("ready: yes\n", encoding="utf-8")
    return ws.write_plan(
        plan(
            [
                {
                    "id": "p1",
                    "milestones": [
                        {
                            "id": "m1",
                            "entry_gate": {
                                "conditions": [
                                    {"kind": "file", "path": "ready.txt", "pattern": "ready: yes"}
                                ]
                            },
                            "exit_gate": {
                                "conditions": [
                                    {
                                        "kind": "approval",
                                        "approvers": ["lead"],
                                        "name": "sign-off",
                                    }
                                ]
                            },
                            "tasks": [task("a")],
                        },
                        {"id": "m2", "tasks": [task("b")]},
                    ],
                },
                {
                    "id": "p2",
                    "entry_gate": {
                        "conditions": [
                            {"kind": "metric", "metric": "run.failed", "op": "==", "value": 0}
                        ]
                    },
                    "milestones": [{"id": "m3", "tasks": [task("c")]}],
                },
            ],
            agents={"dev": agent_spec(ws, capacity=2)},
        )
    )


def gates_json(ws: Workspace) -> dict[str, Any]:
    result = cli("gates", "--json", "--state", ws.state)
    assert result.code == 0, str(result)
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def waiting_at(ws: Workspace, gate: str) -> dict[str, Any] | None:
    """The ``gates --json`` report once ``gate`` waits (None before: the run may not exist)."""
    result = cli("gates", "--json", "--state", ws.state)
    if result.code != 0:
        return None
    report: dict[str, Any] = json.loads(result.stdout)
    return report if by_id(report)[gate]["status"] == "waiting" else None


def by_id(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {g["gate"]: g for g in report["gates"]}


def test_gates_lists_every_gate_while_the_run_waits_and_after(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    gated(ws)
    bg = Background(ws.dir, "run", ws.plan, "--state", ws.state, "--quiet")
    try:
        waiting = wait_for(lambda: waiting_at(ws, "m1.exit"), what="m1.exit to wait")
        assert waiting["status"] == "running" and waiting["plan"] == str(ws.plan)
        assert [g["gate"] for g in waiting["gates"]] == ["m1.entry", "m1.exit", "p2.entry"]
        gates = by_id(waiting)
        assert gates["m1.entry"] == {
            "gate": "m1.entry",
            "kind": "milestone",
            "side": "entry",
            "phase": "p1",
            "milestone": "m1",
            "status": "allowed",
            "evaluations": 1,
            "conditions": [
                {
                    "kind": "file",
                    "name": "#1",
                    "passed": True,
                    "message": "ready.txt matches 'ready: yes' (line 1)",
                    "data": {"path": str(ws.dir / "ready.txt"), "match": "ready: yes", "line": 1},
                }
            ],
        }
        assert gates["m1.exit"]["conditions"] == [
            {
                "kind": "approval",
                "name": "sign-off",
                "passed": None,
                "message": "waiting for 1 more approval(s) from [lead]",
                "data": {"approved_by": [], "needed": 1},
            }
        ]
        assert gates["p2.entry"] == {
            "gate": "p2.entry",
            "kind": "phase",
            "side": "entry",
            "phase": "p2",
            "milestone": None,
            "status": "not_evaluated",
            "evaluations": 0,
            "conditions": [
                {
                    "kind": "metric",
                    "name": "#1",
                    "passed": None,
                    "message": "not evaluated yet",
                    "data": {},
                }
            ],
        }
        assert cli("approve", "m1.exit", "--as", "lead", "--state", ws.state).code == 0
        assert bg.wait(timeout=20).code == 0
    finally:
        bg.stop()
    after = gates_json(ws)
    assert after["status"] == "completed"
    statuses = {g: (r["status"], r["evaluations"]) for g, r in by_id(after).items()}
    assert statuses == {
        "m1.entry": ("allowed", 1),
        "m1.exit": ("completed", 2),
        "p2.entry": ("allowed", 1),
    }
    (approved,) = by_id(after)["m1.exit"]["conditions"]
    assert approved["passed"] is True and approved["message"] == "approved by lead"


def test_gates_prints_a_table_of_gates_and_conditions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = Workspace.create(tmp_path)
    gated(ws)
    assert cli("run", ws.plan, "--state", ws.state, "--quiet", "--approve-as", "ci").code == 0
    monkeypatch.setenv("COLUMNS", "200")
    result = cli("gates", "--state", ws.state)
    assert result.code == 0, str(result)
    lines = result.stdout.splitlines()
    assert lines[0] == f"run 1 of {ws.plan}: completed"
    rows = [line for line in lines if "│" in line]
    cells = [[c.strip() for c in row.strip("│").split("│")] for row in rows]
    assert cells == [
        [
            "m1.entry",
            "milestone",
            "allowed",
            "✓ file #1",
            "ready.txt matches 'ready: yes' (line 1)",
        ],
        ["m1.exit", "milestone", "completed", "✓ approval sign-off", "approved by --approve-as ci"],
        ["p2.entry", "phase", "allowed", "✓ metric #1", "run.failed == 0 (yes: 0)"],
    ]


def test_gates_shows_a_failed_gate_and_the_gates_never_reached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = Workspace.create(tmp_path)
    gated(ws)
    (ws.dir / "ready.txt").write_text("ready: no\n", encoding="utf-8")
    assert cli("run", ws.plan, "--state", ws.state, "--quiet").code == 1
    gates = by_id(gates_json(ws))
    assert gates["m1.entry"]["status"] == "blocked"
    assert gates["m1.entry"]["conditions"][0]["message"] == (
        "ready.txt has no match for 'ready: yes'"
    )
    assert gates["m1.exit"]["status"] == gates["p2.entry"]["status"] == "not_evaluated"
    monkeypatch.setenv("COLUMNS", "200")
    table = cli("gates", "--state", ws.state).stdout
    assert "✗ file #1" in table and "not evaluated yet" in table and "blocked" in table


def test_gates_of_a_plan_without_gates(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    ws.write_plan(
        plan(
            [{"id": "p1", "milestones": [{"id": "m1", "tasks": [task("a")]}]}],
            agents={"dev": agent_spec(ws)},
        )
    )
    assert cli("run", ws.plan, "--state", ws.state, "--quiet").code == 0
    assert gates_json(ws)["gates"] == []
    assert "the plan has no gates" in cli("gates", "--state", ws.state).stdout


def test_gates_without_a_run_is_an_error_with_exit_2(tmp_path: Path) -> None:
    result = cli("gates", "--state", tmp_path / "nothing")
    assert result.code == 2
    assert (
        result.stderr.strip()
        == f"error: no run journal in {tmp_path / 'nothing'} (nothing was run there)"
    )
    assert result.stdout == ""
    as_json = cli("gates", "--json", "--state", tmp_path / "nothing")
    assert as_json.code == 2 and "no run journal" in as_json.stderr


def test_approving_a_milestone_gate_that_does_not_exist_names_the_gate_forms(
    tmp_path: Path,
) -> None:
    ws = Workspace.create(tmp_path)
    gated(ws)
    assert cli("run", ws.plan, "--state", ws.state, "--quiet", "--approve-as", "ci").code == 0
    unknown = cli("approve", "m9.exit", "--as", "lead", "--state", ws.state)
    assert unknown.code == 2
    assert "unknown gate 'm9.exit'; gates are PHASE.entry, PHASE.exit, MILESTONE.entry or" in (
        unknown.stderr.replace("\n", " ")
    )
    no_approval = cli("approve", "m1.entry", "--as", "lead", "--state", ws.state)
    assert no_approval.code == 2 and "gate m1.entry has no approval condition" in no_approval.stderr
    stranger = cli("approve", "m1.exit", "--as", "intern", "--state", ws.state)
    assert stranger.code == 2
    assert "'intern' is not an approver of m1.exit (approvers: lead)" in stranger.stderr
