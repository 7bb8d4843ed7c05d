"""The live dashboard of a served run: its view of the run, and the feed that pushes it.

:class:`Dashboard` builds the view of a running plan from its orchestrator: the run's
status and counts, phases and milestones with their progress, every task, the agent
pool, gates, open conflicts, firing alerts and open escalations. It observes the run's
events for the little the engine does not keep in memory (the latest report of each
gate, when failed attempts ended). It also carries out what operators ask from the page
(decide a gate, put an agent in maintenance), through the same paths as the commands.

:class:`LiveFeed` pushes the view to browsers: a snapshot when one connects, then only
what changed (changed tasks, changed sections), at most a few times a second, merged
for a reader that falls behind, so a plan of thousands of tasks stays cheap to watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import time
from collections import Counter
from importlib import resources
from typing import TYPE_CHECKING, Any

from counterpoint.runtime.events import RunEvent, RunObserver, TaskState
from counterpoint.runtime.gates import declared_gates

if TYPE_CHECKING:
    from counterpoint.net.hub import Hub
    from counterpoint.plan.graph import Graph
    from counterpoint.runtime.orchestrator import Orchestrator

log = logging.getLogger("counterpoint.dashboard")

AGENT_STATES = ("maintenance", "available")
NOT_EVALUATED = "not_evaluated"
#: Events that end an attempt without completing its task (their time ends its bar).
_ATTEMPT_ENDS = frozenset(
    {"task_failed", "task_retrying", "task_cancelled", "task_rate_limited", "task_requeued"}
)
_ASSET_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}

Row = tuple[str, str | None, int, float | None, float | None, float | None, str]


class Dashboard(RunObserver):
    """The dashboard's view of one running plan, and the operator actions it offers."""

    def __init__(self, orch: Orchestrator, hub: Hub | None = None) -> None:
        self.orch = orch
        self.hub = hub
        self.g = orch.g
        self.plan_json: dict[str, Any] = json.loads(orch.plan.model_dump_json(by_alias=True))
        self.gates = [g for g in declared_gates(self.plan_json) if g.conditions]
        self.reports: dict[str, dict[str, Any]] = {}  # gate -> its latest evaluation
        self.evaluations: Counter[str] = Counter()
        self.ended: dict[int, float] = {}  # task -> when its latest attempt ended
        #: task -> (start, end, agent) of its latest attempt in an earlier process of the run
        self.restored: dict[int, tuple[float | None, float | None, str | None]] = {}
        self.finished: dict[str, Any] | None = None  # the run_finished event's data
        record = orch.store.latest_run()
        self.started_at = record.created if record is not None else time.time()
        self._milestones_of_phase: list[list[int]] = [[] for _ in orch.plan.phases]
        for m, k in enumerate(self.g.phase_of_milestone):
            self._milestones_of_phase[k].append(m)
        self._load_journal()
        self.tasks = TaskRows(self)
        self.feed = LiveFeed(self)
        self._sections: dict[str, Any] = {}

    # -- what the run tells us -------------------------------------------------------

    def _load_journal(self) -> None:
        """What earlier processes of a resumed run did: gate reports, task start and end."""
        store, run_id = self.orch.store, self.orch.run_id
        for report in store.events_of_kind(run_id, "gate_evaluated"):
            self._note_gate(report)
        for tid, rec in store.tasks(run_id).items():
            t = self.g.index.get(tid)
            if t is not None and rec.started is not None:
                self.restored[t] = (rec.started, rec.finished, rec.agent)

    def attach(self, graph: Graph) -> None:
        self.g = graph

    def on_event(self, event: RunEvent) -> None:
        kind = event.kind
        if kind == "gate_evaluated":
            self._note_gate(event.data)
        elif kind == "run_finished":
            self.finished = {**event.data, "ts": event.ts}
        t = self.g.index.get(event.task) if event.task is not None else None
        if t is None:
            return
        self.tasks.touched.add(t)
        if kind == "task_started":
            self.ended.pop(t, None)
        elif kind in _ATTEMPT_ENDS:
            self.ended[t] = event.ts

    def _note_gate(self, report: dict[str, Any]) -> None:
        if report.get("status") == "cancelled":  # stopped by a cancellation: no verdict
            return
        gate = str(report.get("gate"))
        self.reports[gate] = report
        self.evaluations[gate] += 1

    # -- the view --------------------------------------------------------------------

    def view(self) -> dict[str, Any]:
        """The whole view, as ``GET /api/snapshot`` answers it."""
        tasks = self.tasks.sync()
        full = [self._task(t, row, full=True) for t, row in enumerate(tasks.rows)]
        return {"now": time.time(), **self.sections(), "tasks": full}

    def changes(self) -> dict[str, Any]:
        """What changed since the previous call: the sections that differ, whole, and the
        tasks whose row changed; an empty dict when nothing did."""
        tasks = self.tasks.sync()
        sections = self.sections()
        out = {name: value for name, value in sections.items() if self._sections.get(name) != value}
        self._sections = sections
        changed = tasks.take()
        if changed:
            out["tasks"] = [self._task(t, tasks.rows[t]) for t in changed]
        return out

    def sections(self) -> dict[str, Any]:
        return {
            "run": self._run(),
            "phases": self._phases(),
            "agents": self._agents(),
            "gates": self._gates(),
            "conflicts": [c.to_json() for c in self.orch.shared.open_conflicts()],
            "alerts": self.alerts(),
            "escalations": self._escalations(),
        }

    def alerts(self) -> list[dict[str, Any]]:
        return self.orch.alerts.firing()

    def _run(self) -> dict[str, Any]:
        orch = self.orch
        totals = self.tasks.totals
        finished = self.finished or {}
        status = finished.get("status") or ("cancelling" if orch.cancelling else "running")
        return {
            "id": orch.run_id,
            "plan": orch.plan.name,
            "status": status,
            "exit_code": finished.get("exit_code"),
            "started": self.started_at,
            "finished": finished.get("ts"),
            "cancelling": orch.cancelling,
            "total": self.g.n_tasks,
            "counts": {s.value: totals[s] for s in TaskState},
            "waiting_gates": len(orch.gates_waiting),
        }

    def _phases(self) -> list[dict[str, Any]]:
        g, per_milestone = self.g, self.tasks.milestones
        phases = []
        for phase, mine in zip(g.plan.phases, self._milestones_of_phase, strict=True):
            counts: Counter[TaskState] = Counter()
            for m in mine:
                counts.update(per_milestone[m])
            milestones = [
                _progress(g.milestones[m].id, g.milestones[m].name, per_milestone[m]) for m in mine
            ]
            phases.append({**_progress(phase.id, phase.name, counts), "milestones": milestones})
        return phases

    def row(self, t: int) -> Row:
        """What changes of task ``t`` while it runs: state, agent, attempts, start, end,
        progress and a note (its error, why it is blocked or waits, its last message)."""
        orch = self.orch
        state, a = orch.state[t], orch.agent_of[t]
        started, ended = orch.started[t], None
        agent = orch.agents.names[a] if a is not None else None
        if started is None and state in (TaskState.COMPLETED, TaskState.FAILED):
            started, ended, agent = self.restored.get(t, (None, None, None))
        if state is TaskState.COMPLETED:
            ended = orch.finished_at.get(t, ended)
        elif state is not TaskState.RUNNING:
            ended = self.ended.get(t, ended)
        progress = orch.progress.get(t) if state is TaskState.RUNNING else None
        return (
            state.value,
            agent,
            orch.attempts[t],
            started,
            ended,
            progress[0] if progress else None,
            self._note(t, state, progress),
        )

    def _note(self, t: int, state: TaskState, progress: tuple[float, str] | None) -> str:
        orch = self.orch
        if state is TaskState.RUNNING:
            return progress[1] if progress else ""
        if state in (TaskState.FAILED, TaskState.RETRYING):
            return orch.error.get(t, "")
        if state is TaskState.BLOCKED:
            return orch.blocked_by.get(t, "")
        if state is TaskState.READY:
            if t in orch.parked:
                return orch.parked[t]
            if t in orch.contended:
                return "waiting for " + ", ".join(orch.contended[t][1])
        return ""

    def _task(self, t: int, row: Row, full: bool = False) -> dict[str, Any]:
        state, agent, attempts, started, ended, progress, note = row
        out: dict[str, Any] = {"id": self.g.task_ids[t]}
        if full:
            g = self.g
            out["name"] = g.tasks[t].title
            out["phase"] = g.plan.phases[g.phase_of_task[t]].id
            out["milestone"] = g.milestones[g.milestone_of_task[t]].id
        out.update(
            state=state,
            agent=agent,
            attempts=attempts,
            started=started,
            ended=ended,
            progress=progress,
            note=note,
        )
        return out

    def _agents(self) -> list[dict[str, Any]]:
        pool, plan = self.orch.agents, self.orch.plan
        sessions = self.hub.sessions if self.hub is not None else {}
        wall = time.time() - (self.hub.clock() if self.hub is not None else 0.0)
        agents = []
        for a, name in enumerate(pool.names):
            spec = plan.agents[name]
            session = sessions.get(name)
            agents.append(
                {
                    "name": name,
                    "state": pool.state(a).value,
                    "running": pool.running[a],
                    "capacity": pool.capacity[a],
                    "capabilities": list(spec.capabilities),
                    "remote": spec.remote,
                    "connected": session is not None and session.link is not None,
                    # whole seconds, so a live update goes out when a heartbeat arrives,
                    # not at every tick
                    "last_seen": round(session.last_seen + wall) if session else None,
                }
            )
        return agents

    def _gates(self) -> list[dict[str, Any]]:
        out = []
        for gate in self.gates:
            report = self.reports.get(gate.id)
            if report is None:
                conditions = [
                    {
                        "kind": c.get("kind"),
                        "name": c.get("name") or f"#{i + 1}",
                        "passed": None,
                        "message": "not evaluated yet",
                    }
                    for i, c in enumerate(gate.conditions)
                ]
            else:
                conditions = [
                    {k: r.get(k) for k in ("kind", "name", "passed", "message")}
                    for r in report.get("results", [])
                ]
            out.append(
                {
                    "gate": gate.id,
                    "kind": gate.kind,
                    "phase": gate.phase,
                    "milestone": gate.milestone,
                    "status": report.get("status") if report else NOT_EVALUATED,
                    "evaluations": self.evaluations[gate.id],
                    "approvers": sorted(_approvers(gate.conditions)),
                    "conditions": conditions,
                }
            )
        return out

    def _escalations(self) -> list[dict[str, Any]]:
        return [
            {
                "id": c.id,
                "subject": c.subject,
                "kind": c.kind,
                "summary": c.summary,
                "level": c.level_name,
                "opened": c.opened,
            }
            for c in self.orch.escalator.cases()
            if c.status == "open"
        ]

    # -- operator actions ------------------------------------------------------------

    def decide_gate(self, gate: str, by: str, approve: bool, comment: str = "") -> dict[str, Any]:
        """Record ``by``'s approval (or rejection) of ``gate`` in the journal, exactly as
        ``counterpoint approve`` does; the run picks it up at its next poll.

        LookupError: no such gate; ValueError: it has no approval condition;
        PermissionError: ``by`` is not one of its approvers.
        """
        from counterpoint.runtime.session import RunRefused, _gate_approvers

        if gate not in {g.id for g in declared_gates(self.plan_json, absent=True)}:
            known = ", ".join(g.id for g in self.gates) or "none"
            raise LookupError(f"unknown gate {gate!r}; the plan's gates: {known}")
        try:
            approvers = _gate_approvers(self.plan_json, gate)
        except RunRefused as exc:
            raise ValueError(str(exc)) from None
        if by not in approvers:
            raise PermissionError(
                f"operator {by!r} is not an approver of {gate} "
                f"(approvers: {', '.join(sorted(approvers))})"
            )
        kind = "approve" if approve else "reject"
        self.orch.store.add_command(self.orch.run_id, kind, gate=gate, by=by, comment=comment)
        self.orch.wake.set()
        report = self.reports.get(gate)
        return {
            "gate": gate,
            "decision": "approved" if approve else "rejected",
            "by": by,
            "comment": comment,
            "status": report.get("status") if report else NOT_EVALUATED,
        }

    def set_agent_state(self, agent: str, state: str) -> dict[str, Any]:
        """Put ``agent`` in maintenance or make it available (LookupError: no such agent)."""
        if state not in AGENT_STATES:
            raise ValueError(f"state must be 'maintenance' or 'available', not {state!r}")
        pool = self.orch.agents
        if agent not in pool.index:
            raise LookupError(
                f"unknown agent {agent!r}; the plan's agents: {', '.join(pool.names)}"
            )
        self.orch.set_agent_state(agent, state)
        return {"agent": agent, "state": pool.state(pool.index[agent]).value}


class TaskRows:
    """The tasks' rows as the dashboard last saw them, and their counts per state.

    Kept up to date cheaply, so a plan of thousands of tasks costs little to watch: a
    :meth:`sync` looks again only at the tasks an event named, whose state changed (the
    state list is compared whole, at C speed), that run, or whose reason to wait came
    or went.
    """

    def __init__(self, dashboard: Dashboard) -> None:
        self.dashboard = dashboard
        orch, g = dashboard.orch, dashboard.g
        self.states = list(orch.state)
        self.rows = [dashboard.row(t) for t in range(g.n_tasks)]
        self.totals: Counter[TaskState] = Counter(self.states)
        self.milestones: list[Counter[TaskState]] = [Counter() for _ in range(g.n_milestones)]
        for m, state in zip(g.milestone_of_task, self.states, strict=True):
            self.milestones[m][state] += 1
        self.touched: set[int] = set()  # named by an event since the last sync
        self.changed: set[int] = set()  # rows changed since the last take
        self.waiting: set[int] = set()

    def sync(self) -> TaskRows:
        orch = self.dashboard.orch
        touched, self.touched = self.touched, set()
        of = self.dashboard.g.milestone_of_task
        for t in range(len(self.states), len(orch.state)):  # tasks spawned since
            state = orch.state[t]
            self.states.append(state)
            self.totals[state] += 1
            self.milestones[of[t]][state] += 1
            self.rows.append(self.dashboard.row(t))
            self.changed.add(t)
        if orch.state != self.states:
            for t, (new, old) in enumerate(zip(orch.state, self.states, strict=True)):
                if new is not old:
                    touched.add(t)
                    self.totals[old] -= 1
                    self.totals[new] += 1
                    self.milestones[of[t]][old] -= 1
                    self.milestones[of[t]][new] += 1
            self.states = list(orch.state)
        waiting = orch.parked.keys() | orch.contended.keys()
        touched |= waiting ^ self.waiting
        self.waiting = waiting
        touched.update(orch.running)
        for t in touched:
            row = self.dashboard.row(t)
            if row != self.rows[t]:
                self.rows[t] = row
                self.changed.add(t)
        return self

    def take(self) -> list[int]:
        """The tasks whose row changed since the last take, in plan order."""
        changed, self.changed = sorted(self.changed), set()
        return changed


class Subscriber:
    """One browser's share of the live feed: what it has not been sent yet, merged."""

    def __init__(self) -> None:
        self.pending: dict[str, Any] = {}
        self.tasks: dict[str, dict[str, Any]] = {}
        self.ready = asyncio.Event()
        self.closed = False

    def push(self, changes: dict[str, Any]) -> None:
        for name, value in changes.items():
            if name == "tasks":
                for row in value:
                    self.tasks[row["id"]] = row
            else:
                self.pending[name] = value
        self.ready.set()

    def close(self) -> None:
        self.closed = True
        self.ready.set()

    async def next(self) -> dict[str, Any] | None:
        """The next update to send (everything that changed since the last one), or None
        once the feed or the connection is closed and nothing is left to send."""
        while True:
            if self.pending or self.tasks:
                update = {"type": "update", "now": time.time(), **self.pending}
                if self.tasks:
                    update["tasks"] = list(self.tasks.values())
                self.pending, self.tasks = {}, {}
                return update
            if self.closed:
                return None
            await self.ready.wait()
            self.ready.clear()


class LiveFeed:
    """Pushes the dashboard's changes to every subscriber, at most every ``interval_s``."""

    def __init__(self, dashboard: Dashboard, interval_s: float = 0.25, max_clients: int = 64):
        self.dashboard = dashboard
        self.interval_s = interval_s
        self.max_clients = max_clients
        self.subscribers: set[Subscriber] = set()
        self.closed = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    def subscribe(self) -> tuple[Subscriber, dict[str, Any]] | None:
        """A new subscriber and the snapshot to send it first; None when the feed is
        closed or has ``max_clients`` subscribers already."""
        if self.closed or len(self.subscribers) >= self.max_clients:
            return None
        self._tick(always=True)  # the others catch up: the snapshot starts from that state
        subscriber = Subscriber()
        self.subscribers.add(subscriber)
        self._idle.clear()
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        return subscriber, {"type": "snapshot", **self.dashboard.view()}

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)
        subscriber.close()
        if not self.subscribers:
            self._idle.set()

    async def close(self, timeout_s: float = 2.0) -> None:
        """Send the last changes (the run's end) and end every subscription; wait (a
        moment at most) until every connection has sent what it had."""
        if self.closed:
            return
        self.closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._tick()
        for subscriber in self.subscribers:
            subscriber.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self._tick()
            except Exception:  # a view that cannot be built must not stop the feed
                log.exception("the dashboard's view could not be built")

    def _tick(self, always: bool = False) -> None:
        if not self.subscribers and not always:
            return
        changes = self.dashboard.changes()
        if changes:
            for subscriber in self.subscribers:
                subscriber.push(changes)


def _progress(ident: str, name: str, counts: Counter[TaskState]) -> dict[str, Any]:
    return {
        "id": ident,
        "name": name or ident,
        "total": sum(counts.values()),
        "completed": counts[TaskState.COMPLETED],
        "counts": {state.value: n for state, n in counts.items() if n},
    }


def _approvers(conditions: list[dict[str, Any]]) -> set[str]:
    return {
        name
        for cond in conditions
        if cond.get("kind") == "approval"
        for name in cond.get("approvers", [])
    }


def encode(value: Any) -> str:
    """JSON for browsers: values JSON cannot hold become their text, NaN and infinities
    become null (``JSON.parse`` refuses them)."""
    try:
        return json.dumps(value, default=str, allow_nan=False, separators=(",", ":"))
    except ValueError:
        return json.dumps(_finite(value), default=str, separators=(",", ":"))


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def asset(name: str) -> tuple[bytes, str] | None:
    """A file of the page (``static/NAME``, shipped in the package) and its media type;
    None for any other name."""
    suffix = name[name.rfind(".") :] if "." in name else ""
    if suffix not in _ASSET_TYPES or name not in _asset_names():
        return None
    return _read(name), _ASSET_TYPES[suffix]


@functools.cache
def _read(name: str) -> bytes:
    return resources.files("counterpoint.net").joinpath("static", name).read_bytes()


@functools.cache
def _asset_names() -> frozenset[str]:
    folder = resources.files("counterpoint.net").joinpath("static")
    return frozenset(f.name for f in folder.iterdir() if f.is_file())
