"""An approval on a milestone gate waits durably: the run is killed (or cancelled) while it
waits, resumed, approved from another process, and finishes without redoing work."""

from __future__ import annotations

import json
import time
from pathlib import Path

from run_helpers import (
    Background,
    Workspace,
    agent_spec,
    cli,
    pid_alive,
    plan,
    resume_in_process,
    status_json,
    task,
    wait_for,
)

from counterpoint.store.sqlite import SqliteStore


def milestone_gated(ws: Workspace) -> Path:
    """m1 (a, b) with an exit gate waiting for lead; m2 after m1 (c)."""
    gate = {"conditions": [{"kind": "approval", "approvers": ["lead", "cto"], "name": "ok"}]}
    return ws.write_plan(
        plan(
            [
                {
                    "id": "p1",
                    "milestones": [
                        {"id": "m1", "exit_gate": gate, "tasks": [task("a"), task("b")]},
                        {"id": "m2", "after": ["m1"], "tasks": [task("c")]},
                    ],
                }
            ],
            agents={"dev": agent_spec(ws, capacity=2)},
        )
    )


def evaluations(ws: Workspace, gate: str) -> list[str]:
    """The statuses of ``gate``'s journaled evaluations, oldest first."""
    if not (ws.state / "state.db").exists():
        return []
    store = SqliteStore(ws.state, create=False)
    try:
        record = store.latest_run()
        events = store.events_of_kind(record.id, "gate_evaluated") if record else []
    finally:
        store.close()
    return [e["status"] for e in events if e["gate"] == gate]


def test_an_approval_survives_a_killed_run_and_a_resume(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    milestone_gated(ws)
    first = Background(ws.dir, "run", ws.plan, "--state", ws.state, "--quiet")
    try:
        wait_for(lambda: evaluations(ws, "m1.exit") == ["waiting"], what="m1.exit to wait")
        first.proc.kill()  # kill -9 while the gate waits
        first.proc.wait()
        assert not pid_alive(first.pid)
    finally:
        first.stop()
    assert status_json(ws.state)["status"] == "interrupted"
    assert set(ws.finished()) == {"a", "b"}
    stopped = cli("gates", "--json", "--state", ws.state)
    assert stopped.code == 0, str(stopped)
    report = json.loads(stopped.stdout)
    assert report["status"] == "interrupted"
    assert [(g["gate"], g["status"]) for g in report["gates"]] == [("m1.exit", "waiting")]

    second = Background(ws.dir, "resume", "--state", ws.state, "--quiet")
    try:
        wait_for(lambda: len(evaluations(ws, "m1.exit")) == 2, what="the resumed run to wait")
        assert evaluations(ws, "m1.exit") == ["waiting", "waiting"]
        assert second.running() and ws.runs_of("c") == []
        approved_at = time.time()
        approve = cli("approve", "m1.exit", "--as", "lead", "--state", ws.state)
        assert approve.code == 0, str(approve)
        result = second.wait(timeout=20)
        assert result.code == 0, str(result)
    finally:
        second.stop()
    assert [len(ws.runs_of(t)) for t in ("a", "b", "c")] == [1, 1, 1]  # nothing redone
    assert ws.finished()["c"].start >= approved_at
    assert evaluations(ws, "m1.exit") == ["waiting", "waiting", "completed"]
    report = status_json(ws.state)
    assert report["status"] == "completed" and report["counts"] == {"completed": 3}


def test_an_approval_given_while_the_run_is_stopped_counts_when_it_resumes(
    tmp_path: Path,
) -> None:
    ws = Workspace.create(tmp_path)
    milestone_gated(ws)
    bg = Background(ws.dir, "run", ws.plan, "--state", ws.state, "--quiet")
    try:
        wait_for(lambda: evaluations(ws, "m1.exit") == ["waiting"], what="m1.exit to wait")
        assert cli("cancel", "--state", ws.state).code == 0
        assert bg.wait(timeout=20).code == 3
    finally:
        bg.stop()
    approve = cli("approve", "m1.exit", "--as", "cto", "--comment", "ship it", "--state", ws.state)
    assert approve.code == 0 and "m1.exit: approved by cto" in approve.stdout, str(approve)
    code, seen = resume_in_process(ws)
    assert code == 0
    (gate,) = seen.kinds("gate_evaluated")
    assert gate.data["status"] == "completed" and gate.data["milestone"] == "m1"
    assert gate.data["results"][0]["message"] == "approved by cto"
    assert [len(ws.runs_of(t)) for t in ("a", "b", "c")] == [1, 1, 1]
