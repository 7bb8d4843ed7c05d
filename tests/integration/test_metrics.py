"""Prometheus metrics of a served run, scraped over HTTP while it runs."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from run_helpers import Workspace, agent_spec, one_phase, served, task, wait_for


def scrape(base: str, token: str | None) -> tuple[int, str]:
    request = urllib.request.Request(
        base + "/metrics",
        headers={"Authorization": f"Bearer {token}"} if token else {},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.headers["Content-Type"].startswith("text/plain")
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def value(text: str, sample: str) -> float | None:
    """The value of ``sample`` (``name{label="v",...}``), read with prometheus_client's own
    parser of the exposition format (which also proves the output parses)."""
    name, _, labels = sample.partition("{")
    wanted = dict(re.findall(r'(\w+)="([^"]*)"', labels))
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == wanted:
                return float(s.value)
    return None


def test_a_served_run_exposes_its_metrics_to_operators_only(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    ws.write_plan(
        one_phase(
            [
                task("quick", sleep=0.05),
                task("broken", inputs={"fail": True}),
                {**task("slow", sleep=3.0, needs=["quick"]), "resources": {"db": 1}},
            ],
            agents={"dev": agent_spec(ws, capacity=2)},
            resources={"db": {"capacity": 2}},
        )
    )
    run, base, token = served(ws)
    try:
        code, _ = scrape(base, None)
        assert code == 401

        def settled() -> str:
            text = scrape(base, token)[1]
            done = value(text, 'counterpoint_tasks{state="completed"}') == 1.0
            return text if done and value(text, "counterpoint_tasks_running") == 1.0 else ""

        text = wait_for(settled, what="quick done and slow running in the metrics")
        assert value(text, 'counterpoint_tasks{state="completed"}') == 1.0
        assert value(text, 'counterpoint_tasks{state="failed"}') == 1.0
        assert value(text, 'counterpoint_task_attempts_total{outcome="completed"}') == 1.0
        assert value(text, 'counterpoint_task_attempts_total{outcome="failed"}') == 1.0
        assert value(text, 'counterpoint_agent_state{agent="dev",state="available"}') == 1.0
        assert value(text, "counterpoint_tasks_running") == 1.0
        assert value(text, 'counterpoint_alerts_firing{severity="critical"}') == 0.0
        assert value(text, 'counterpoint_resource_in_use{resource="db"}') == 1.0  # slow holds it
        assert value(text, 'counterpoint_messages_total{type="status_update"}') is None
        count = value(text, 'counterpoint_task_duration_seconds_count{agent="dev",phase="p1"}')
        assert count == 1.0, text
        result = run.wait(timeout=30)
    finally:
        run.stop()
    assert result.code == 1, str(result)
