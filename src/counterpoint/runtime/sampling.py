"""The run's metrics as time series: sampled every ``settings.metrics_every`` into the journal.

A sample is a flat mapping from the names of :mod:`counterpoint.plan.alert_metrics` to
numbers, journaled as one row (``metric_samples``: run, time, JSON) in the same commit
as the rest of the run's writes. Alert rules are checked against each sample; the report,
the dashboard and ``counterpoint metrics`` read the series back.

Gauges (tasks per state, queue depth, agents per state, resources held) are read from
the engine at sampling time; counters (retries, messages, conflicts, gate evaluations)
and durations are fed by the run's events, and carried over a resume from the last
sample and the journal's attempts.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from counterpoint.plan.alert_metrics import TASK_STATES_ALL
from counterpoint.runtime.events import RunEvent, RunObserver
from counterpoint.store.sqlite import SqliteStore

if TYPE_CHECKING:
    from counterpoint.plan.graph import Graph
    from counterpoint.runtime.orchestrator import Orchestrator

_DDL = """
CREATE TABLE IF NOT EXISTS metric_samples (
    run_id INTEGER NOT NULL,
    ts REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS metric_samples_run_ts ON metric_samples (run_id, ts);
"""
_INSERT = "INSERT INTO metric_samples (run_id, ts, data) VALUES (?, ?, ?)"

#: Counters that go on growing across a resume (restored from the last sample).
_CUMULATIVE = (
    "tasks.retried",
    "tasks.requeued",
    "messages.total",
    "messages.status_update",
    "messages.request",
    "messages.response",
    "messages.notification",
    "conflicts.total",
    "escalations.total",
    "gates.evaluations",
)
_HELD = ("blocked", "incomplete", "waiting")


@dataclass
class _Mean:
    total: float = 0.0
    count: int = 0

    def add(self, value: float) -> None:
        self.total += value
        self.count += 1

    @property
    def value(self) -> float:
        return self.total / self.count if self.count else 0.0


@dataclass
class _Interval:
    """What happened since the last sample (reset by each sample)."""

    waits: _Mean = field(default_factory=_Mean)
    latencies: _Mean = field(default_factory=_Mean)


class MetricSampler(RunObserver):
    """Samples one run's metrics; feed it the run's events (it is a :class:`RunObserver`)."""

    def __init__(self, store: SqliteStore, run_id: int, every_s: float) -> None:
        self.store = store
        self.run_id = run_id
        self.every_s = every_s
        self.counts: Counter[str] = Counter()
        self.gate_status: dict[str, str] = {}
        self.started: dict[str, tuple[float, str]] = {}  # task -> (wall start, agent)
        self.by_agent: dict[str, _Mean] = {}
        self.by_phase: dict[str, _Mean] = {}
        self.overall = _Mean()
        self.phase_of: dict[str, str] = {}
        self.interval = _Interval()
        self.began = time.time()
        self.next_due = 0.0  # monotonic time of the next sample
        self.last: dict[str, float] = {}
        store.ensure_schema(_DDL)

    # -- feeding -------------------------------------------------------------------

    def attach(self, graph: Graph) -> None:
        phases = [p.id for p in graph.plan.phases]
        self.phase_of = {
            graph.task_ids[t]: phases[graph.phase_of_task[t]] for t in range(graph.n_tasks)
        }

    def restore(self) -> None:
        """Carry counters and durations over a resume (the last sample, the journal)."""
        rows = self.store.query(
            "SELECT data FROM metric_samples WHERE run_id = ? ORDER BY ts DESC LIMIT 1",
            (self.run_id,),
        )
        if rows:
            last = json.loads(rows[0][0])
            for name in _CUMULATIVE:
                self.counts[name] = int(last.get(name, 0))
        done = self.store.query(
            "SELECT task, agent, started, finished FROM attempts "
            "WHERE run_id = ? AND status = 'completed' AND finished IS NOT NULL",
            (self.run_id,),
        )
        for task, agent, started, finished in done:
            self._completed(task, agent or "", finished - started)

    def on_event(self, event: RunEvent) -> None:
        kind, task, data = event.kind, event.task or "", event.data
        if kind == "task_spawned":
            self.phase_of[task] = str(data.get("phase", ""))
        elif kind == "task_started":
            self.started[task] = (event.ts, str(data.get("agent") or ""))
        elif kind == "task_completed":
            began = self.started.pop(task, None)
            if began is not None:
                self._completed(task, began[1], event.ts - began[0])
        elif kind in ("task_failed", "task_retrying", "task_cancelled", "task_rate_limited"):
            self.started.pop(task, None)
            if kind == "task_retrying":
                self.counts["tasks.retried"] += 1
        elif kind == "task_requeued":
            self.started.pop(task, None)
            self.counts["tasks.requeued"] += 1
        elif kind == "conflict_detected":
            self.counts["conflicts.total"] += 1
        elif kind == "escalation_opened":
            self.counts["escalations.total"] += 1
        elif kind == "gate_evaluated":
            self.counts["gates.evaluations"] += 1
            status = str(data.get("status", ""))
            if status != "cancelled":
                self.gate_status[str(data.get("gate", ""))] = status

    def _completed(self, task: str, agent: str, seconds: float) -> None:
        self.overall.add(seconds)
        self.by_agent.setdefault(agent, _Mean()).add(seconds)
        phase = self.phase_of.get(task)
        if phase is not None:
            self.by_phase.setdefault(phase, _Mean()).add(seconds)

    def message(self, kind: str) -> None:
        """A message went over the run's bus (``kind``: its type)."""
        self.counts["messages.total"] += 1
        self.counts[f"messages.{kind}"] += 1

    def dispatched(self, waited_s: float, first_chance: bool) -> None:
        """A ready task started after ``waited_s``; ``first_chance``: nothing held it back."""
        self.interval.waits.add(waited_s)
        if first_chance:
            self.interval.latencies.add(waited_s)

    # -- sampling ------------------------------------------------------------------

    def due(self, now: float) -> bool:
        return now >= self.next_due

    def sample(self, orch: Orchestrator, now: float) -> dict[str, float]:
        """Read the engine: the next sample (journal it with :meth:`record`)."""
        self.next_due = now + self.every_s
        values = self._read(orch, now)
        self.interval = _Interval()
        return values

    def record(self, values: dict[str, float]) -> None:
        """Journal a sample (buffered: committed with the run's next writes)."""
        ts = time.time()
        self.store.write(_INSERT, (self.run_id, ts, json.dumps(values, separators=(",", ":"))))
        self.last = values

    def _read(self, orch: Orchestrator, now: float) -> dict[str, float]:
        g = orch.g
        out: dict[str, float] = {}
        states = Counter(s.value for s in orch.state)
        total = g.n_tasks
        out["tasks.total"] = float(total)
        for s in TASK_STATES_ALL:
            out[f"tasks.{s}"] = float(states.get(s, 0))
        out["tasks.waiting"] = float(len(orch.parked))
        out["tasks.completed_ratio"] = states.get("completed", 0) / total if total else 1.0
        out["tasks.failed_ratio"] = states.get("failed", 0) / total if total else 0.0
        out["tasks.duration_mean_s"] = round(self.overall.value, 6)
        for name in _CUMULATIVE:
            out[name] = float(self.counts.get(name, 0))
        out["queue.depth"] = float(len(orch.queue))
        out["queue.oldest_wait_s"] = round(orch.queue.oldest_wait(now), 6)
        out["queue.wait_s"] = round(self.interval.waits.value, 6)
        out["dispatch.latency_ms"] = round(self.interval.latencies.value * 1000, 3)
        self._agents(orch, out)
        self._resources(orch, out, now)
        out["conflicts.open"] = float(len(orch.shared.open_conflicts()))
        cases = orch.escalator.cases()
        out["escalations.open"] = float(sum(1 for c in cases if c.status == "open"))
        out["gates.waiting"] = float(len(orch.gates_waiting))
        out["gates.held"] = float(sum(1 for s in self.gate_status.values() if s in _HELD))
        out["run.elapsed_s"] = round(time.time() - self.began, 3)
        rollbacks = list(orch.rollbacks.values())
        out["rollbacks.total"] = float(len(rollbacks))
        out["rollbacks.running"] = float(sum(1 for rb in rollbacks if rb.open))
        statuses = Counter(c.status for rb in rollbacks for c in rb.comps.values())
        out["compensations.done"] = float(statuses.get("done", 0))
        out["compensations.failed"] = float(statuses.get("failed", 0))
        out["rollbacks.success_rate"] = self._rollback_rate(statuses)
        self._phases(orch, out)
        out["alerts.firing"] = 0.0  # set once the alert rules saw the sample
        return out

    def _rollback_rate(self, statuses: Counter[str]) -> float:
        """Successful rollbacks over ended ones: the run's compensations and the state
        directory's configuration, deployment and runbook rollbacks (1 when none ended)."""
        from counterpoint.rollback import rollback_outcomes

        others = rollback_outcomes(self.store)
        ok = statuses.get("done", 0) + sum(1 for o in others if o["ok"])
        ended = statuses.get("done", 0) + statuses.get("failed", 0) + len(others)
        return round(ok / ended, 6) if ended else 1.0

    def _agents(self, orch: Orchestrator, out: dict[str, float]) -> None:
        pool = orch.agents
        states = Counter(pool.state(a).value for a in range(len(pool.names)))
        out["agents.total"] = float(len(pool.names))
        for s in ("available", "busy", "maintenance", "lost", "offline"):
            out[f"agents.{s}"] = float(states.get(s, 0))
        slots = used = 0
        for a, name in enumerate(pool.names):
            running, capacity = pool.running[a], pool.capacity[a]
            if pool.usable(a):
                slots += capacity
                used += running
            mean = self.by_agent.get(name, _Mean())
            out[f"agent.{name}.running"] = float(running)
            out[f"agent.{name}.utilization"] = round(running / capacity, 6) if capacity else 0.0
            out[f"agent.{name}.completed"] = float(mean.count)
            out[f"agent.{name}.duration_mean_s"] = round(mean.value, 6)
        out["agents.utilization"] = round(used / slots, 6) if slots else 0.0

    def _resources(self, orch: Orchestrator, out: dict[str, float], now: float) -> None:
        res = orch.resources
        waiting: Counter[str] = Counter(n for _, names in orch.contended.values() for n in names)
        out["resources.waiting"] = float(len(orch.contended))
        for r, name in enumerate(res.names):
            bucket = res.buckets.get(r)
            if bucket is not None:  # a rate limit: tokens spent in the current window
                used = max(0.0, bucket.size - bucket.available(now))
                size = bucket.size
            else:
                used, size = float(res.capacity[r] - res.free[r]), float(res.capacity[r])
            out[f"resources.{name}.in_use"] = round(used, 6)
            out[f"resources.{name}.utilization"] = round(used / size, 6) if size else 0.0
            out[f"resources.{name}.waiting"] = float(waiting.get(name, 0))

    def _phases(self, orch: Orchestrator, out: dict[str, float]) -> None:
        g = orch.g
        n = len(g.plan.phases)
        totals, completed, failed = [0] * n, [0] * n, [0] * n
        for t, state in enumerate(orch.state):
            k = g.phase_of_task[t]
            totals[k] += 1
            if state.value == "completed":
                completed[k] += 1
            elif state.value == "failed":
                failed[k] += 1
        for k, phase in enumerate(g.plan.phases):
            ratio = completed[k] / totals[k] if totals[k] else 1.0
            out[f"phase.{phase.id}.completed_ratio"] = round(ratio, 6)
            out[f"phase.{phase.id}.failed"] = float(failed[k])
            out[f"phase.{phase.id}.duration_mean_s"] = round(
                self.by_phase.get(phase.id, _Mean()).value, 6
            )


# -- reading the series back ------------------------------------------------------------


def read_samples(
    store: SqliteStore,
    run_id: int,
    since: float | None = None,
    until: float | None = None,
) -> list[tuple[float, dict[str, float]]]:
    """The run's samples, oldest first, as ``(wall time, values)``."""
    rows = store.query(
        "SELECT ts, data FROM metric_samples WHERE run_id = ? AND ts >= ? AND ts <= ? ORDER BY ts",
        (run_id, -math.inf if since is None else since, math.inf if until is None else until),
    )
    return [(ts, json.loads(data)) for ts, data in rows]


def series(
    samples: Iterable[tuple[float, dict[str, float]]], name: str
) -> list[tuple[float, float]]:
    """One metric's ``(time, value)`` points."""
    return [(ts, values[name]) for ts, values in samples if name in values]


def summary(samples: list[tuple[float, dict[str, float]]], names: Iterable[str]) -> dict[str, Any]:
    """For each name: last, min, max and mean over the samples (None when never sampled)."""
    out: dict[str, Any] = {}
    for name in names:
        points = [v for _, v in series(samples, name)]
        out[name] = (
            None
            if not points
            else {
                "last": points[-1],
                "min": min(points),
                "max": max(points),
                "mean": round(sum(points) / len(points), 6),
            }
        )
    return out
