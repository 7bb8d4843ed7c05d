"""Steering a run while it runs: agent maintenance, usage-drawn budgets, JSON events, force."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from run_helpers import (
    Background,
    Workspace,
    agent_spec,
    cli,
    one_phase,
    pid_alive,
    run_in_process,
    status_json,
    task,
    wait_for,
)


def test_an_agent_put_in_maintenance_takes_no_new_work_while_the_run_goes_on(
    tmp_path: Path,
) -> None:
    ws = Workspace.create(tmp_path)
    tasks = [task(f"t{i}", sleep=0.25) for i in range(8)]
    ws.write_plan(one_phase(tasks, agents={"a": agent_spec(ws), "b": agent_spec(ws)}))
    bg = Background(tmp_path, "run", ws.plan, "--state", ws.state, "--quiet")
    wait_for(lambda: ws.executions(), what="the first task to start")
    assert cli("agent-state", "a", "maintenance", "--state", ws.state).code == 0
    switched = time.time()
    result = bg.wait(timeout=30)
    assert result.code == 0, str(result)
    late_on_a = [e for e in ws.executions() if e.agent == "a" and e.start > switched + 0.5]
    assert late_on_a == []
    assert len(ws.finished()) == 8
    assert status_json(ws.state)["agents"] == {"a": "maintenance"}


def test_a_rate_limit_drawn_by_reported_usage_holds_the_next_task_back(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    tasks = [
        task(f"t{i}", sleep=0.01, resources={"tokens": 1}, inputs={"usage": {"tokens": 30}})
        for i in range(2)
    ]
    ws.write_plan(
        one_phase(
            tasks,
            agents={"a": agent_spec(ws)},
            resources={"tokens": {"rate": 10, "per": "1s", "usage": "tokens"}},
        )
    )
    code, _ = run_in_process(ws)
    assert code == 0
    first, second = sorted(ws.finished().values(), key=lambda e: e.start)
    assert first.end is not None
    # 30 tokens reported against a 10-token bucket refilled at 10/s: about 2 s of debt
    assert second.start - first.end >= 1.5


def test_json_mode_prints_every_event_as_one_json_object_per_line(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    ws.write_plan(one_phase([task("a"), task("b", needs=["a"])], agents={"w": agent_spec(ws)}))
    result = cli("run", ws.plan, "--state", ws.state, "--json")
    assert result.code == 0, str(result)
    events = [json.loads(line) for line in result.stdout.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    started = [e["task"] for e in events if e["event"] == "task_started"]
    assert started == ["a", "b"]
    assert events[-1]["exit_code"] == 0 and all("ts" in e for e in events)


def test_a_second_interrupt_kills_tasks_that_ignore_sigterm_at_once(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    plan = {
        "version": 1,
        "name": "stubborn",
        "defaults": {"timeout": "10m", "retries": 0},
        "agents": {
            "sh": {
                "runner": {
                    "shell": ["sh", "-c", "trap '' TERM; sleep 300 & echo $! > {inputs.pid}; wait"]
                }
            }
        },
        "phases": [
            {
                "id": "p",
                "milestones": [
                    {"id": "m", "tasks": [{"id": "t", "inputs": {"pid": str(pidfile)}}]}
                ],
            }
        ],
    }
    ws = Workspace.create(tmp_path)
    ws.write_plan(plan)
    bg = Background(tmp_path, "run", ws.plan, "--state", ws.state, "--quiet")
    child = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), what="pid"))
    bg.proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    assert bg.running(), "the first interrupt waits for the grace period"
    sent = time.monotonic()
    bg.proc.send_signal(signal.SIGINT)
    result = bg.wait(timeout=10)
    assert result.code == 3, str(result)
    assert time.monotonic() - sent < 3.0
    wait_for(lambda: not pid_alive(child), timeout=5, what="the grandchild to die")
