"""Gates with ``recheck``: a gate that does not pass holds its work (nothing is blocked),
goes up the escalation ladder, is checked again on its schedule or on `counterpoint
recheck`, lets the work go on once it passes, and blocks it when the ladder runs out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from run_helpers import Background, Workspace, agent_spec, cli, plan, run_in_process, task, wait_for


def held_plan(
    ws: Workspace, recheck: str | None, timeout: float = 3600.0, exhausted: str = "fail"
) -> None:
    """Phase p1 (a) whose exit gate needs the file go.txt, then phase p2 (c)."""
    ws.write_plan(
        plan(
            [
                {
                    "id": "p1",
                    "exit_gate": {
                        "conditions": [{"kind": "file", "path": "go.txt", "name": "go"}],
                        **({"recheck": recheck} if recheck is not None else {}),
                    },
                    "milestones": [{"id": "m1", "tasks": [task("a")]}],
                },
                {"id": "p2", "milestones": [{"id": "m2", "tasks": [task("c")]}]},
            ],
            agents={"dev": agent_spec(ws)},
            escalation={
                "timeout": timeout,
                "levels": [{"name": "leads", "contacts": ["lead"]}],
                "exhausted": exhausted,
            },
        )
    )


def events(ws: Workspace, bg: Background) -> list[dict[str, Any]]:
    found = []
    for line in bg.out_path.read_text().splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:  # a line being written
            continue
    return found


def of(found: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in found if e["event"] == kind]


def test_a_held_gate_is_checked_again_and_the_run_goes_on_once_it_passes(
    tmp_path: Path,
) -> None:
    ws = Workspace.create(tmp_path)
    held_plan(ws, recheck="0.2s")
    bg = Background(ws.dir, "run", ws.plan, "--state", ws.state, "--json")
    try:
        wait_for(
            lambda: len(of(events(ws, bg), "gate_evaluated")) >= 2,
            what="the gate to be checked twice",
        )
        found = events(ws, bg)
        assert {e["status"] for e in of(found, "gate_evaluated")} == {"incomplete"}
        assert of(found, "task_blocked") == [] and ws.runs_of("c") == []  # held, not blocked
        (case,) = of(found, "escalation_opened")
        assert case["subject"] == "gate:p1.exit"
        (alert,) = of(found, "alert_fired")
        assert (alert["name"], alert["subject"]) == ("gate_blocked", "p1.exit")
        (ws.dir / "go.txt").write_text("go\n", encoding="utf-8")
        assert bg.wait(timeout=20).code == 0
    finally:
        bg.stop()
    found = events(ws, bg)
    assert of(found, "gate_evaluated")[-1]["status"] == "completed"
    assert ws.finished()["c"].start >= (ws.dir / "go.txt").stat().st_mtime
    assert [e["subject"] for e in of(found, "escalation_resolved")] == ["gate:p1.exit"]
    assert [e["name"] for e in of(found, "alert_resolved")] == ["gate_blocked"]


def test_recheck_checks_a_held_gate_at_once(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    held_plan(ws, recheck="1h")
    bg = Background(ws.dir, "run", ws.plan, "--state", ws.state, "--json")
    try:
        wait_for(lambda: of(events(ws, bg), "gate_evaluated"), what="the gate's first check")
        (ws.dir / "go.txt").write_text("go\n", encoding="utf-8")
        asked = cli("recheck", "p1.exit", "--state", ws.state)
        assert asked.code == 0 and "p1.exit: recheck requested in run 1" in asked.stdout, asked
        assert bg.wait(timeout=20).code == 0  # long before the hour
    finally:
        bg.stop()
    statuses = [e["status"] for e in of(events(ws, bg), "gate_evaluated")]
    assert statuses == ["incomplete", "completed"]


def test_a_held_gate_blocks_its_work_when_the_ladder_runs_out(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    held_plan(ws, recheck="0.1s", timeout=0.5)
    code, seen = run_in_process(ws)
    assert code == 1
    assert ws.runs_of("c") == []
    (blocked,) = seen.kinds("task_blocked")
    assert blocked.task == "c"
    assert "no more escalation levels available" in blocked.data["reason"]
    assert len(seen.kinds("gate_evaluated")) >= 2  # checked again while it was held
    assert [e.data["subject"] for e in seen.kinds("escalation_exhausted")] == ["gate:p1.exit"]


def test_without_recheck_a_gate_that_does_not_pass_blocks_at_once(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    held_plan(ws, recheck=None)
    code, seen = run_in_process(ws)
    assert code == 1
    assert len(seen.kinds("gate_evaluated")) == 1
    (blocked,) = seen.kinds("task_blocked")
    assert "gate p1.exit incomplete" in blocked.data["reason"]


def test_recheck_explains_bad_input(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    held_plan(ws, recheck="0")
    bad = cli("check", ws.plan)
    assert bad.code == 2 and "recheck" in bad.stderr, str(bad)
    none = cli("recheck", "p1.exit", "--state", ws.state)
    assert none.code == 2 and "no run journal" in none.stderr
    held_plan(ws, recheck="1s")
    (ws.dir / "go.txt").write_text("go\n", encoding="utf-8")
    assert run_in_process(ws)[0] == 0
    unknown = cli("recheck", "p9.exit", "--state", ws.state)
    assert unknown.code == 2 and "unknown gate 'p9.exit'" in unknown.stderr
    assert "p1.exit" in unknown.stderr
    stopped = cli("recheck", "p1.exit", "--state", ws.state)
    assert stopped.code == 2 and "is not running" in stopped.stderr
    for result in (bad, none, unknown, stopped):
        assert "Traceback" not in result.output
