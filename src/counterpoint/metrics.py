"""Prometheus metrics of a running plan, served at ``/metrics`` by a served run.

Two sources: counters fed by the run's events (a :class:`RunObserver`), and gauges read
from the engine at scrape time (tasks per state, the ready queue, agents per state,
open conflicts and escalations), so a scrape always sees the present. Every name starts
with ``counterpoint_``; ``docs/metrics.md`` lists them.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from counterpoint.plan.graph import Graph
from counterpoint.runtime.events import RunEvent, RunObserver

_DURATION_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86400)

#: What a scrape reads from the engine: ``{"tasks": {state: n}, "agents": {name: state},
#: "queue": n, "waiting": n, "running": n, "conflicts_open": n, "escalations_open": n}``.
Sampler = Callable[[], dict[str, Any]]


class _Live(Collector):
    def __init__(self, sample: Sampler) -> None:
        self.sample = sample

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        now = self.sample()
        tasks = GaugeMetricFamily(
            "counterpoint_tasks", "Tasks of the run per state", labels=["state"]
        )
        for state, n in sorted(now.get("tasks", {}).items()):
            tasks.add_metric([state], n)
        yield tasks
        agents = GaugeMetricFamily(
            "counterpoint_agent_state",
            "1 for each agent's current state (available, busy, maintenance, lost, offline)",
            labels=["agent", "state"],
        )
        for agent, state in sorted(now.get("agents", {}).items()):
            agents.add_metric([agent, state], 1)
        yield agents
        alerts = GaugeMetricFamily(
            "counterpoint_alerts_firing", "Alerts firing now, by severity", labels=["severity"]
        )
        severities = Tally(str(a.get("severity", "")) for a in now.get("alerts", []))
        for severity in ("critical", "warning", "info"):
            alerts.add_metric([severity], severities.get(severity, 0))
        yield alerts
        messages = CounterMetricFamily(
            "counterpoint_messages", "Messages sent on the run's bus, by type", labels=["type"]
        )
        for kind, n in sorted(now.get("messages", {}).items()):
            messages.add_metric([kind], n)
        yield messages
        held = GaugeMetricFamily(
            "counterpoint_resource_in_use",
            "Units of each counted resource held now",
            labels=["resource"],
        )
        for name, units in sorted(now.get("resources", {}).items()):
            held.add_metric([name], units)
        yield held
        for name, key, text in (
            (
                "counterpoint_queue_oldest_wait_seconds",
                "queue_oldest_wait_s",
                "How long the oldest ready task has waited",
            ),
            (
                "counterpoint_rollback_success_ratio",
                "rollback_success_rate",
                "Rollbacks that did their job over those that ended (as of the last sample)",
            ),
            ("counterpoint_queue_depth", "queue", "Ready tasks waiting for an agent or resources"),
            ("counterpoint_tasks_waiting", "waiting", "Ready tasks held back by the shared state"),
            ("counterpoint_tasks_running", "running", "Attempts running now"),
            ("counterpoint_conflicts_open", "conflicts_open", "Data conflicts not decided yet"),
            ("counterpoint_escalations_open", "escalations_open", "Escalation cases open"),
        ):
            yield GaugeMetricFamily(name, text, value=now.get(key, 0))


class RunMetrics(RunObserver):
    """The metrics of one run, in their own registry."""

    def __init__(self, sample: Sampler) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_Live(sample))
        self.phase_of: dict[str, str] = {}
        self.started: dict[str, float] = {}
        self.agent_of: dict[str, str] = {}
        r = self.registry
        self.attempts = Counter(
            "counterpoint_task_attempts",
            "Attempts that ended, by outcome",
            ["outcome"],
            registry=r,
        )
        self.duration = Histogram(
            "counterpoint_task_duration_seconds",
            "Duration of completed attempts, by phase and agent",
            ["phase", "agent"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.conflicts = Counter(
            "counterpoint_conflicts", "Data conflicts detected, by kind", ["kind"], registry=r
        )
        self.escalations = Counter(
            "counterpoint_escalations", "Escalation cases opened, by kind", ["kind"], registry=r
        )
        self.gates = Counter(
            "counterpoint_gate_evaluations", "Gate evaluations, by status", ["status"], registry=r
        )
        self.agent_events = Counter(
            "counterpoint_agent_events",
            "Remote agents connecting, disconnecting and lost",
            ["event"],
            registry=r,
        )
        self.resource_wait = Histogram(
            "counterpoint_resource_wait_seconds",
            "How long ready tasks waited for resources",
            buckets=_DURATION_BUCKETS,
            registry=r,
        )

    def attach(self, graph: Graph) -> None:
        phases = [p.id for p in graph.plan.phases]
        self.phase_of = {
            graph.task_ids[t]: phases[graph.phase_of_task[t]] for t in range(graph.n_tasks)
        }

    def on_event(self, event: RunEvent) -> None:
        kind, task, data = event.kind, event.task or "", event.data
        if kind == "task_spawned":
            self.phase_of[task] = str(data.get("phase", ""))
        elif kind == "task_started":
            self.started[task] = event.ts
            self.agent_of[task] = str(data.get("agent") or "")
        elif kind == "task_completed":
            self.attempts.labels("completed").inc()
            if task in self.started:
                self.duration.labels(
                    self.phase_of.get(task, ""), self.agent_of.get(task, "")
                ).observe(event.ts - self.started.pop(task))
        elif kind in _OUTCOMES:
            self.attempts.labels(_OUTCOMES[kind]).inc()
            self.started.pop(task, None)
        elif kind == "conflict_detected":
            self.conflicts.labels(str(data.get("conflict_kind", "data"))).inc()
        elif kind == "escalation_opened":
            self.escalations.labels(str(data.get("case_kind", ""))).inc()
        elif kind == "gate_evaluated":
            self.gates.labels(str(data.get("status", ""))).inc()
        elif kind in ("agent_connected", "agent_disconnected", "agent_lost"):
            self.agent_events.labels(kind.removeprefix("agent_")).inc()
        elif kind == "resource_waited":
            self.resource_wait.observe(float(data.get("waited_s", 0.0)))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


_OUTCOMES = {
    "task_retrying": "failed",
    "task_failed": "failed",
    "task_rate_limited": "rate_limited",
    "task_cancelled": "cancelled",
    "task_requeued": "lost",
}
