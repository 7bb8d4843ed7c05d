"""The run's side of schedule-aware dispatch: planning, holding back, refreshing.

:class:`Following` is a part of the orchestrator. It computes the schedule the ready
queue follows when the run starts (or resumes), holds back a ready task whose
planned start is still ahead when starting it would take what the schedule reserved
for tasks planned before it, and reschedules the rest when actual durations drift.
The schedule itself, the queue keys and the drift rule are in
:mod:`counterpoint.runtime.dispatch_order`; docs/running.md (ready order) and
docs/scheduling.md describe the behaviour.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from counterpoint.allocation import AgentPool, Demand, ResourcePool
from counterpoint.plan.graph import Graph
from counterpoint.queueing import ReadyQueue
from counterpoint.runtime.dispatch_order import DispatchOrder, peak
from counterpoint.runtime.events import TaskState

if TYPE_CHECKING:
    from counterpoint.runtime.orchestrator import RunOptions

#: Tasks that have not started and will: the schedule's reservations are for them.
WAITING = frozenset({TaskState.PENDING, TaskState.READY, TaskState.RETRYING})
ACTIVE = WAITING | {TaskState.RUNNING}

Span = tuple[int, float, float]  # (task, from, until) in plan seconds


class Following:
    """Schedule-aware dispatch for the orchestrator; see the module docstring."""

    g: Graph
    options: RunOptions
    order: DispatchOrder
    queue: ReadyQueue
    agents: AgentPool
    resources: ResourcePool
    state: list[TaskState]
    started: list[float | None]
    done: bytearray
    running: dict[int, asyncio.Task[None]]
    parked: dict[int, str]
    dormant: set[int]
    background: set[asyncio.Task[None]]
    began: float
    wake: asyncio.Event

    def emit(self, kind: str, task: int | None = None, **data: Any) -> None:
        raise NotImplementedError

    def _timer(self, when: float, task: int = -1) -> None:
        raise NotImplementedError

    def _demand(self, t: int) -> Demand:
        raise NotImplementedError

    # -- the schedule -----------------------------------------------------------------

    def _plan_time(self, now: float) -> float:
        """Plan seconds since the run (or this resume) started."""
        scale = self.options.time_scale
        return (now - self.began) / scale if scale > 0 else 0.0

    def _plan_dispatch(self, resumed: bool) -> None:
        """Compute the schedule the ready queue follows (``settings.dispatch``)."""
        if not self.order.follows:
            return
        # resumed: what is done takes no time, the rest is scheduled from now
        planned = self.order.plan(self._remaining_durations() if resumed else None)
        now_p = self._plan_time(time.monotonic())
        self.queue.reorder(lambda t: self.order.key(t, now_p))  # queued while restoring
        if planned is not None:
            self.emit(
                "schedule_planned",
                makespan_s=planned.makespan_s,
                lower_bound_s=planned.lower_bound_s,
                method=planned.method,
                schedules=planned.schedules,
            )

    def _remaining_durations(self) -> list[float]:
        """Each task's remaining plan time from now: 0 when it will not run again."""
        out = list(self.g.duration)  # phase and milestone barriers follow the tasks: 0
        scale = self.options.time_scale
        for t in range(self.g.n_tasks):
            estimate, state, started = out[t], self.state[t], self.started[t]
            if state is TaskState.RUNNING and started is not None:
                elapsed = (time.time() - started) / scale if scale > 0 else 0.0
                out[t] = max(estimate - elapsed, estimate * 0.05)
            elif state.terminal:
                out[t] = 0.0
        return out

    # -- holding back -----------------------------------------------------------------

    def _held_back(self, t: int, demand: Demand, now: float) -> bool:
        """Would ``t``, started before its planned start, take what the schedule reserved?

        Checked for its agent pool and each counted resource: the tasks the schedule
        starts before ``t`` would finish (see :meth:`_reservable`), plus the running
        tasks until their expected finish, must leave room for ``t``. If not, ``t``
        waits until they start (or its planned start, when it goes anyway).
        """
        now_p = self._plan_time(now)
        planned = self.order.early(t, now_p) if self.options.time_scale > 0 else None
        if planned is None:
            return False
        until = now_p + self.g.duration[t]
        ahead = list(self.order.reserved(t, until, self._started_or_gone, self._reservable))
        if not ahead:
            return False
        spans = [(u, max(a, now_p), max(a, now_p) + self.g.duration[u]) for u, a in ahead]
        spans += self._running_spans(now_p)
        if self._room_for(demand, spans):
            return False
        self._timer(self.began + planned * self.options.time_scale)
        return True

    def _started_or_gone(self, u: int) -> bool:
        return self.state[u] not in WAITING

    def _reservable(self, u: int) -> bool:
        """Is ``u`` held for? When only tasks stand between it and its start: queued (it
        waits for agents or resources, and some able agent is usable), or pending on tasks
        alone (not on a phase or milestone, whose gate may wait for a person)."""
        state, g = self.state[u], self.g
        if state is TaskState.READY:
            pool = self._demand(u).pool
            return u not in self.parked and (pool < 0 or self._runnable_now(pool))
        if state is not TaskState.PENDING or u in self.dormant:
            return False
        return all(
            self.done[v] or (v < g.n_tasks and self.state[v] in ACTIVE)
            for v in g.pred[g.pred_start[u] : g.pred_start[u + 1]]
        )

    def _running_spans(self, now_p: float) -> Iterator[Span]:
        """The running tasks, from now until their expected finish."""
        wall, scale = time.time(), self.options.time_scale
        for r in self.running:
            if r < self.g.n_tasks:
                left = self.g.duration[r] - (wall - (self.started[r] or wall)) / scale
                yield r, now_p, now_p + max(left, 0.0)

    def _room_for(self, demand: Demand, spans: list[Span]) -> bool:
        """Is there room for ``demand`` beside the most ``spans`` hold at once?"""
        for r, units in demand.counted:
            uses = [
                (a, b, n) for u, a, b in spans for res, n in self._demand(u).counted if res == r
            ]
            if uses and peak(uses) + units > self.resources.capacity[r]:
                return False
        if demand.pool < 0:
            return True
        uses = [(a, b, 1) for u, a, b in spans if self._demand(u).pool == demand.pool]
        agents = self.agents
        slots = sum(agents.capacity[a] for a in agents.pools[demand.pool] if agents.usable(a))
        return not uses or peak(uses) + 1 <= slots

    def _runnable_now(self, pool: int) -> bool:
        """Some agent of ``pool`` is usable now (not lost, offline or in maintenance)."""
        agents = self.agents
        return any(agents.capacity[a] > 0 and agents.usable(a) for a in agents.pools[pool])

    # -- refreshing ---------------------------------------------------------------------

    def _refresh_dispatch(self) -> None:
        """Actual durations drifted from the estimates: reschedule the rest, reorder."""
        now = time.monotonic()

        def reordered() -> None:
            self.queue.reorder(lambda t: self.order.key(t, self._plan_time(time.monotonic())))
            planned = self.order.planned
            if planned is not None:
                self.emit(
                    "schedule_refreshed",
                    makespan_s=round(self.order.origin + planned.makespan_s, 6),
                    method=planned.method,
                )
            self.wake.set()

        worker = self.order.refresh(self._plan_time(now), self._remaining_durations(), reordered)
        if worker is not None:
            self.background.add(worker)
            worker.add_done_callback(self.background.discard)
