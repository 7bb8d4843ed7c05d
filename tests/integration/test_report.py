"""``counterpoint report`` on real runs: KPIs from the journal, and the md/html/json files."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from run_helpers import AGENTS_DIR, PY, Workspace, agent_spec, cli, one_phase, run_in_process, task

STATE_AGENT = str(AGENTS_DIR / "state_agent.py")


def report_json(ws: Workspace, *extra: str) -> dict[str, Any]:
    result = cli("report", "--state", ws.state, "--format", "json", *extra)
    assert result.code == 0, str(result)
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def failing_run(tmp_path: Path) -> Workspace:
    """Four tasks on two agents: one fails (so one is blocked), one reports usage, one is late."""
    ws = Workspace.create(tmp_path)
    spec = one_phase(
        [
            task("a", sleep=0.05, estimate="10s", inputs={"usage": {"tokens": 30, "cost": 0.5}}),
            task("b", sleep=0.05, estimate="10s", inputs={"usage": {"tokens": 12}}),
            task("late", sleep=0.4, estimate="1s"),
            task("bad", estimate="10s", inputs={"fail": True}),
            task("after", needs=["bad"]),
        ],
        agents={"w": agent_spec(ws, capacity=2)},
        resources={"db": {"capacity": 2}},
    )
    spec["alerts"] = [
        {"name": "failures", "metric": "tasks.failed", "op": ">", "threshold": 0},
        {"name": "crowded", "metric": "tasks.total", "op": ">", "threshold": 100},
    ]
    ws.write_plan(spec)
    plan = ws.plan.read_text().replace("id: late\n", "id: late\n      resources:\n        db: 1\n")
    ws.plan.write_text(plan)
    code, _ = run_in_process(ws, time_scale=0.1)
    assert code == 1
    return ws


def test_json_kpis_of_a_run_with_a_failure_and_usage(tmp_path: Path) -> None:
    ws = failing_run(tmp_path)
    data = report_json(ws)
    k = data["kpis"]
    assert set(k) >= {
        "task_completion_rate",
        "on_time_rate",
        "resource_utilization",
        "conflict_resolution_time_s",
        "rollback_success_rate",
    }
    assert k["task_completion_rate"] == 3 / 5  # a, b, late completed; bad failed; after blocked
    # estimates x time scale 0.1: a and b (1s allowed, 0.05s taken) are on time, late
    # (0.1s allowed, 0.4s taken) is not
    assert k["on_time_rate"] == round(2 / 3, 6)
    assert 0 < k["resource_utilization"] <= 1
    assert k["conflict_resolution_time_s"] is None
    assert k["rollback_success_rate"] is None
    assert data["rollbacks"] == [] and data["other_rollbacks"] == []  # see test_rollback_run
    assert data["usage"]["by_agent"] == {"w": {"tokens": 42, "cost": 0.5}}
    assert data["usage"]["by_phase"] == {"p1": {"tokens": 42, "cost": 0.5}}
    assert data["utilization"]["agents"]["w"]["capacity"] == 2
    db = data["utilization"]["resources"]["db"]
    assert 0 < db["utilization"] <= 0.5  # one of two units, held part of the run
    assert db["held_s"] >= 0.4
    assert data["makespan"]["actual_s"] >= 0.4
    assert data["makespan"]["planned_s"] > 0
    assert data["makespan"]["planned_scaled_s"] == round(data["makespan"]["planned_s"] * 0.1, 6)
    (phase,) = data["phases"]
    assert phase["states"] == {"blocked": 1, "completed": 3, "failed": 1}
    assert data["conflicts"] == []
    (alert,) = data["alerts"]  # the failure fired its rule; "crowded" never held
    assert (alert["name"], alert["kind"], alert["status"], alert["value"]) == (
        "failures",
        "rule",
        "firing",
        1,
    )
    assert data["metrics"]["samples"] >= 1
    assert data["metrics"]["summary"]["alerts.firing"]["last"] == 1
    (case,) = data["escalations"]  # the failure of bad blocks after: escalated
    assert (case["subject"], case["kind"]) == ("dependency:bad", "dependency")


def test_markdown_html_and_output_files(tmp_path: Path) -> None:
    ws = failing_run(tmp_path)
    md = cli("report", "--state", ws.state)
    assert md.code == 0, str(md)
    assert "## Phases" in md.stdout
    assert re.search(r"^\| p1 \| 5 \| blocked 1, completed 3, failed 1 \|", md.stdout, re.M)
    assert "## Rollbacks\n\n_no rollbacks_" in md.stdout
    assert re.search(
        r"^\| 1 \| warning \| failures \| run \| tasks.failed > 0 \(now 1\)", md.stdout, re.M
    )

    page = tmp_path / "report.html"
    result = cli("report", "--state", ws.state, "-o", page)
    assert result.code == 0, str(result)
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>")
    assert text.count("<svg") == 2  # planned and actual Gantt charts, inline
    assert not re.search(r"""\bsrc\s*=|href\s*=\s*["']?https?:""", text, re.I)

    out = tmp_path / "r.json"
    assert cli("report", "--state", ws.state, "-o", out).code == 0
    assert json.loads(out.read_text())["kpis"]["task_completion_rate"] == 0.6
    forced = tmp_path / "r.txt"
    assert cli("report", "--state", ws.state, "--format", "md", "-o", forced).code == 0
    assert forced.read_text().startswith("# Run report")


def test_time_window_and_bad_input(tmp_path: Path) -> None:
    ws = failing_run(tmp_path)
    empty = report_json(ws, "--until", "2000-01-01T00:00:00")
    assert empty["kpis"]["task_completion_rate"] == 0
    assert empty["makespan"]["actual_s"] is None
    everything = report_json(ws, "--since", "2000-01-01", "--until", "2999-01-01T00:00:00+00:00")
    assert everything["kpis"]["task_completion_rate"] == 0.6

    bad = cli("report", "--state", ws.state, "--since", "yesterday")
    assert bad.code == 2
    assert "--since" in bad.stderr and "ISO 8601" in bad.stderr
    assert "Traceback" not in bad.output

    missing = cli("report", "--state", tmp_path / "nowhere")
    assert missing.code == 2
    assert "no run journal" in missing.stderr and "Traceback" not in missing.output


def test_a_resolved_conflict_has_a_resolution_time(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    agents = {
        "st": {"capabilities": ["state"], "capacity": 4, "runner": {"shell": [PY, STATE_AGENT]}}
    }

    def writer(tid: str, value: str, sleep: float) -> dict[str, Any]:
        return {
            "id": tid,
            "requires": ["state"],
            "inputs": {"writes": {"net.cidr": value}, "sleep": sleep},
            "writes": ["net.cidr"],
        }

    ws.write_plan(
        one_phase(
            [writer("a", "10.1.0.0/16", 0.05), writer("b", "10.2.0.0/16", 0.6)],
            agents=agents,
            shared_state={"policies": [{"key": "net.*", "policy": "last-writer"}]},
        )
    )
    code, _ = run_in_process(ws)
    assert code == 0
    data = report_json(ws)
    (conflict,) = data["conflicts"]
    assert conflict["status"] == "resolved"
    seconds = data["kpis"]["conflict_resolution_time_s"]
    assert isinstance(seconds, float | int) and seconds >= 0
    assert seconds == conflict["resolution_time_s"]
    assert data["kpis"]["conflict_resolution_time_p95_s"] == seconds
    md = cli("report", "--state", ws.state)
    assert "net.cidr" in md.stdout
