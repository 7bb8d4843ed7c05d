"""Resource contention is recorded; work that can never start is reported with the chain
that blocks it and goes up the escalation ladder instead of waiting silently."""

from __future__ import annotations

from pathlib import Path

from run_helpers import (
    Background,
    Workspace,
    agent_spec,
    cli,
    journal,
    one_phase,
    run_in_process,
    task,
    wait_for,
)


def test_waiting_for_a_resource_is_recorded_with_how_long(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    ws.write_plan(
        one_phase(
            [task("first", sleep=0.4, resources={"db": 1}), task("second", resources={"db": 1})],
            agents={"dev": agent_spec(ws, capacity=2)},
            resources={"db": {"capacity": 1}},
        )
    )
    code, events = run_in_process(ws)
    assert code == 0
    (waits,) = events.kinds("resource_contention")
    (waited,) = events.kinds("resource_waited")
    assert waits.data["resources"] == ["db"] and waited.task == waits.task
    assert waited.data["resources"] == ["db"]
    assert 0.2 < waited.data["waited_s"] < 5, waited
    # the second one started when the first released the database
    first, second = sorted(ws.executions(), key=lambda x: x.start)
    assert second.start >= first.end


def test_a_failure_blocks_the_chain_behind_it_and_is_escalated(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    ws.write_plan(
        one_phase(
            [
                task("a", inputs={"fail": True}),
                task("b", needs=["a"]),
                task("c", needs=["b"]),
            ],
            agents={"dev": agent_spec(ws)},
        )
    )
    code, events = run_in_process(ws)
    assert code == 1
    chains = {e.task: e.data["chain"] for e in events.kinds("task_blocked")}
    assert chains == {"b": ["a", "b"], "c": ["a", "b", "c"]}
    (opened,) = events.kinds("escalation_opened")
    assert opened.data["subject"] == "dependency:a"
    assert opened.data["details"]["blocked"] == ["b", "c"]


def two_agents(ws: Workspace, timeout: float) -> None:
    ws.write_plan(
        one_phase(
            [
                task("prep", sleep=3.0, requires=["y"]),  # outlasts a CLI start under load
                task("build", needs=["prep"], requires=["x"]),
            ],
            agents={
                "ay": agent_spec(ws, capabilities=["y"]),
                "ax": agent_spec(ws, capabilities=["x"]),
            },
            escalation={"timeout": timeout, "levels": [{"name": "l1", "contacts": ["lead"]}]},
        )
    )


def test_work_no_agent_can_take_fails_when_nobody_acts(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    two_agents(ws, timeout=0.3)
    run = Background(ws.dir, "run", ws.plan, "--state", ws.state, "--quiet")
    try:
        wait_for(lambda: journal(ws, "task_started"), what="prep to start")
        assert cli("agent-state", "ax", "maintenance", "--state", ws.state).code == 0
        result = run.wait(timeout=30)
    finally:
        run.stop()
    assert result.code == 1, str(result)
    (stuck,) = journal(ws, "task_unrunnable")
    assert stuck["agents"] == ["ax"] and "ax maintenance" in stuck["reason"], stuck
    assert [e["subject"] for e in journal(ws, "escalation_exhausted")] == ["task:build"]
    failed = journal(ws, "task_failed")
    assert len(failed) == 1 and "no more escalation levels" in failed[0]["error"], failed
    assert [x.task for x in ws.executions()] == ["prep"]


def test_work_no_agent_can_take_runs_when_an_agent_comes_back(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    two_agents(ws, timeout=60.0)
    run = Background(ws.dir, "run", ws.plan, "--state", ws.state, "--quiet")
    try:
        wait_for(lambda: journal(ws, "task_started"), what="prep to start")
        assert cli("agent-state", "ax", "maintenance", "--state", ws.state).code == 0
        wait_for(lambda: journal(ws, "task_unrunnable"), what="build to be reported")
        assert cli("agent-state", "ax", "available", "--state", ws.state).code == 0
        result = run.wait(timeout=30)
    finally:
        run.stop()
    assert result.code == 0, str(result)
    assert [e["subject"] for e in journal(ws, "escalation_resolved")] == ["task:build"]
    assert [x.task for x in ws.executions()] == ["prep", "build"]
