"""Metrics journaled as time series and alerts in real runs: the values of a known run,
an alert seen firing while the run goes on and resolved after, the `alerts` and
`metrics` commands, and plan errors in alert rules."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from run_helpers import (
    Background,
    Workspace,
    agent_spec,
    cli,
    one_phase,
    run_in_process,
    task,
    wait_for,
)


def samples(ws: Workspace) -> list[dict[str, float]]:
    result = cli("metrics", "--state", ws.state, "--json")
    assert result.code == 0, str(result)
    return [s["values"] for s in json.loads(result.stdout)["samples"]]


def test_the_sampled_metrics_of_a_known_run(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    ws.write_plan(
        one_phase(
            [
                {**task("a", sleep=0.5), "resources": {"db": 1}},
                task("b", needs=["a"]),
                {**task("c", inputs={"fail": True}), "retries": 1},
            ],
            agents={"w": agent_spec(ws, capacity=2)},
            resources={"db": {"capacity": 1}},
            settings={"metrics_every": "0.05s", "retry_backoff": 0},
        )
    )
    code, _ = run_in_process(ws)
    assert code == 1
    series = samples(ws)
    assert len(series) >= 5
    last = series[-1]
    expected = {
        "tasks.total": 3,
        "tasks.completed": 2,
        "tasks.failed": 1,
        "tasks.running": 0,
        "tasks.retried": 1,  # c: two attempts, the first retried
        "tasks.completed_ratio": 2 / 3,
        "agent.w.completed": 2,
        "agent.w.running": 0,
        "resources.db.in_use": 0,
        "phase.p1.failed": 1,
        "queue.depth": 0,
        "agents.total": 1,
        "gates.evaluations": 0,
    }
    assert {k: last[k] for k in expected} == expected
    # while a ran (0.5 s, sampled every 0.05 s) it held db and a slot of w
    busy = [s for s in series if s["resources.db.in_use"] == 1]
    assert busy and all(s["agent.w.running"] >= 1 for s in busy)
    assert max(s["resources.db.utilization"] for s in series) == 1
    assert 0 < last["tasks.duration_mean_s"] < 5
    with sqlite3.connect(ws.state / "state.db") as db:
        (messages,) = db.execute("SELECT count(*) FROM messages").fetchone()
        times = [r[0] for r in db.execute("SELECT ts FROM metric_samples ORDER BY ts")]
    assert last["messages.total"] == messages
    assert times == sorted(times) and len(times) == len(series)

    table = cli("metrics", "tasks.completed", "queue.depth", "--state", ws.state)
    assert table.code == 0, str(table)
    assert "tasks.completed" in table.stdout and "queue.depth" in table.stdout
    assert "agents.total" not in table.stdout  # only what was asked for
    picked = cli("metrics", "tasks.failed", "--json", "--state", ws.state)
    assert json.loads(picked.stdout)["samples"][-1]["values"] == {"tasks.failed": 1}


def test_a_stalled_task_alert_fires_while_it_runs_and_resolves_when_it_ends(
    tmp_path: Path,
) -> None:
    ws = Workspace.create(tmp_path)
    ws.write_plan(
        one_phase(
            [task("quiet", sleep=5.0), task("other", sleep=0.05)],  # outlasts the CLI calls
            agents={"w": agent_spec(ws, capacity=2)},
            settings={"status_every": "0.3s", "metrics_every": "0.1s"},
            alerts=[{"name": "busy", "metric": "tasks.running", "op": ">=", "threshold": 1}],
        )
    )
    bg = Background(ws.dir, "run", ws.plan, "--state", ws.state, "--quiet")
    try:

        def firing() -> dict[str, Any] | None:
            result = cli("alerts", "--state", ws.state, "--json")
            if result.code != 0:
                return None
            body = json.loads(result.stdout)
            names = {a["name"] for a in body["alerts"]}
            return body if {"task_stalled", "busy"} <= names else None

        body = wait_for(firing, what="the stall and the rule alert to fire")
        stalled = next(a for a in body["alerts"] if a["name"] == "task_stalled")
        assert (stalled["subject"], stalled["kind"], stalled["status"]) == (
            "quiet",
            "builtin",
            "firing",
        )
        text = cli("alerts", "--state", ws.state)
        assert "task_stalled" in text.stdout and "firing" in text.stdout
        assert bg.wait(timeout=30).code == 0
    finally:
        bg.stop()
    after = json.loads(cli("alerts", "--state", ws.state, "--json").stdout)
    assert after["firing"] == 0 and after["alerts"] == []
    every = json.loads(cli("alerts", "--all", "--state", ws.state, "--json").stdout)["alerts"]
    quiet = [a for a in every if a["name"] == "task_stalled" and a["subject"] == "quiet"]
    assert quiet and all(a["status"] == "resolved" for a in quiet)
    assert quiet[-1]["resolution"] == "completed"
    (busy,) = [a for a in every if a["name"] == "busy"]
    assert busy["resolution"] == "tasks.running is 0 now"
    assert busy["resolved"] > busy["fired"]


def test_alert_rules_are_checked_with_the_plan(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    ws.write_plan(
        one_phase(
            [task("a")],
            agents={"w": agent_spec(ws)},
            alerts=[
                {"name": "typo", "metric": "task.failed", "threshold": 0},
                {"name": "per-agent", "metric": "agent.w.utilization", "threshold": 0.9},
                {"name": "who", "metric": "tasks.failed", "threshold": 0, "notify": ["tem_lead"]},
            ],
        )
    )
    result = cli("check", ws.plan)
    assert result.code == 2, str(result)
    assert "unknown metric 'task.failed'" in result.stderr
    assert "did you mean 'tasks.failed'" in result.stderr
    assert "unknown contact 'tem_lead'" in result.stderr
    assert "did you mean 'team_lead'" in result.stderr
    assert "agent.w.utilization" not in result.stderr  # per-agent names are known
    assert "Traceback" not in result.output


def test_the_commands_explain_bad_input(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    ws.write_plan(one_phase([task("a")], agents={"w": agent_spec(ws)}))
    assert run_in_process(ws)[0] == 0
    none = cli("alerts", "--state", ws.state)
    assert none.code == 0 and "no alerts" in none.stderr
    typo = cli("metrics", "queue.dept", "--state", ws.state)
    assert typo.code == 2
    assert "unknown metric 'queue.dept'" in typo.stderr and "queue.depth" in typo.stderr
    missing = cli("alerts", "--state", tmp_path / "nowhere")
    assert missing.code == 2 and "no run journal" in missing.stderr
    when = cli("metrics", "--since", "soon", "--state", ws.state)
    assert when.code == 2 and "--since" in when.stderr
    for result in (typo, missing, when):
        assert "Traceback" not in result.output
