"""Schedule-aware dispatch: the ready queue follows the plan's computed schedule.

With ``settings.dispatch: schedule`` (the default) the run computes the plan's
schedule when it starts, with the same search as ``counterpoint plan`` (time limit
``settings.dispatch_search``), and orders ready tasks by their *planned start*,
then by their latest start in that schedule (less slack first). When estimates
hold, a run then follows the searched schedule instead of the single
priority-rule pass the critical-path order amounts to.

When a task finishes far from its planned finish (more than a tenth of its
estimate and more than 2% of the planned makespan), the rest of the plan is
scheduled again from the run's current state, in a worker thread: finished tasks
take no time, running tasks their remaining estimate (at least a step), the
others their estimates. The queue is then reordered by the new planned starts.
A refresh runs at most once at a time; a drift seen meanwhile starts another one
at the first completion after it ends, and the pause between two refreshes is
ten times as long as the last one took (0.05-2 s), so that rescheduling never
takes more than a tenth of the run's CPU.

A ready task whose planned start is still ahead is *held back* when starting it
now would take agent slots or resource units that the schedule gives, during the
task's estimate, to tasks planned to start before it (ready ones waiting for
agents or resources, and pending ones waiting only for other tasks): the run then
leaves the schedule's room for them (as the serial scheme's schedules often do)
instead of filling every gap greedily. It starts at its planned start at the latest, and
whenever starting it early takes nothing a reserved task needs.

Plans of more than :data:`~counterpoint.plan.problem.MAX_NODES` graph nodes
(and ``dispatch: critical-path``) keep the critical-path order, which is what the
single pass would give them anyway.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

from counterpoint.plan.graph import Graph
from counterpoint.plan.problem import MAX_NODES
from counterpoint.plan.schedule import Schedule, schedule

log = logging.getLogger(__name__)

#: A finish this far from the plan (fraction of the task's estimate) may start a refresh...
DRIFT_OF_ESTIMATE = 0.10
#: ...when it is also this far (fraction of the planned makespan).
DRIFT_OF_MAKESPAN = 0.02
#: A task this close to its planned start (fraction of its estimate) is not early.
EARLY_TOLERANCE = 0.01
#: Refreshes search for this fraction of ``dispatch_search``.
REFRESH_SHARE = 0.25
#: Between the starts of two refreshes, at least this many times as long as the last
#: one took, and within these bounds (real seconds): a run whose tasks all overrun
#: would otherwise reschedule after every task, competing with the run for the CPU.
REFRESH_PAUSE = 10.0
REFRESH_EVERY_S = (0.05, 2.0)
#: Stop a dispatch search after this many schedules without improvement (per graph node,
#: at least ``MIN_STAGNATION``): a run should not wait long for the last percent.
STAGNATION_PER_NODE = 4
MIN_STAGNATION = 500

Key = tuple[float, float]


class DispatchOrder:
    """Queue keys (smaller first) for the run's tasks, from the plan's schedule.

    ``key(t)`` is ``(planned start, latest start)`` in plan seconds since the run
    started, or ``(latest start, 0)`` from the critical-path method when the run
    does not follow a schedule.
    """

    def __init__(self, graph: Graph, mode: str, search_s: float, seed: int) -> None:
        self.g = graph
        self.search_s = search_s
        self.seed = seed
        self.follows = mode == "schedule" and graph.n_nodes <= MAX_NODES
        self.planned: Schedule | None = None
        self.origin = 0.0  # plan time (s since the run started) of the schedule's zero
        self._keys: dict[int, Key] = {}
        self._by_start: list[tuple[float, int]] = []  # (planned start, task), earliest first
        self._head = 0  # entries before it have started (or will not run)
        self.refreshes = 0
        self._refreshing = False
        self._again = False
        self._next_refresh = -math.inf  # monotonic time the next refresh may start

    # -- the schedule -------------------------------------------------------------

    def plan(self, durations: Sequence[float] | None = None) -> Schedule | None:
        """Compute the initial schedule (blocking; bounded by ``search_s``).

        ``durations``: each task's remaining time, for a resumed run (finished tasks 0).
        """
        if not self.follows:
            return None
        graph = self.g if durations is None else self._with(durations)
        self._adopt(self._search(graph, self.search_s), origin=0.0)
        return self.planned

    def _with(self, durations: Sequence[float]) -> Graph:
        rest = copy.copy(self.g)
        rest.duration = list(durations)
        rest._cpm()
        return rest

    def _search(self, graph: Graph, limit: float, beside_loop: bool = False) -> Schedule:
        """``beside_loop``: in a worker thread beside the run's event loop, where loading
        (or compiling) the numba kernels would hold the GIL for up to seconds and stall
        the run: pure Python then, unless the kernels are already loaded."""
        from counterpoint.plan import _sgs_kernels

        stagnation = max(MIN_STAGNATION, STAGNATION_PER_NODE * graph.n_nodes)
        compiled = None if not beside_loop or _sgs_kernels.loaded() else False
        return schedule(
            graph, time_limit=limit, seed=self.seed, stagnation=stagnation, compiled=compiled
        )

    def _adopt(self, planned: Schedule, origin: float) -> None:
        self.planned = planned
        self.origin = origin
        latest = planned.latest_start_s
        self._keys = {
            t: (origin + planned.start_s[t], origin + (latest or planned.start_s)[t])
            for t in range(len(planned.start_s))
        }
        self._by_start = sorted((key[0], t) for t, key in self._keys.items())
        self._head = 0

    def key(self, t: int, now_plan: float) -> Key:
        """Where task ``t`` goes in the queue; ``now_plan``: plan seconds since the start."""
        if not self.follows:
            return (self.g.ls[t], 0.0)
        found = self._keys.get(t)
        if found is None:  # spawned after the schedule was made: as soon as it can
            return (now_plan, now_plan)
        return found

    def planned_finish(self, t: int) -> float | None:
        if self.planned is None or t >= len(self.planned.finish_s):
            return None
        return self.origin + self.planned.finish_s[t]

    # -- holding back: reservations ---------------------------------------------------

    def early(self, t: int, now_plan: float) -> float | None:
        """Task ``t``'s planned start when that is still ahead of ``now_plan``, else None."""
        key = self._keys.get(t) if self.follows else None
        if key is None or key[0] <= now_plan + EARLY_TOLERANCE * self.g.duration[t]:
            return None
        return key[0]

    def reserved(
        self, t: int, until: float, started: Callable[[int], bool], imminent: Callable[[int], bool]
    ) -> Iterator[tuple[int, float]]:
        """Tasks the schedule starts before ``until`` that wait to start: (task, start).

        ``started(u)``: ``u`` started or will not run (skipped for good from then on, so
        a retried task is not held for again); ``imminent(u)``: ``u`` is to be held for.
        """
        entries = self._by_start
        while self._head < len(entries) and started(entries[self._head][1]):
            self._head += 1
        for start, u in entries[self._head :]:
            if start >= until:
                return
            if u != t and not started(u) and imminent(u):
                yield u, start

    # -- drift and refresh ---------------------------------------------------------

    def drifted(self, t: int, finished_plan: float) -> bool:
        """Task ``t`` finished at ``finished_plan`` (plan seconds): far from the plan?"""
        planned = self.planned_finish(t)
        if planned is None or self.planned is None:
            return False
        off = abs(finished_plan - planned)
        return (
            off > DRIFT_OF_ESTIMATE * self.g.duration[t]
            and off > DRIFT_OF_MAKESPAN * self.planned.makespan_s
        )

    def refresh(
        self,
        now_plan: float,
        durations: Sequence[float],
        apply: Callable[[], None],
    ) -> asyncio.Task[None] | None:
        """Schedule the rest of the plan again in a worker thread.

        ``durations``: every graph node's remaining time from now (plan seconds).
        ``apply`` runs on the event loop once the new keys are in place. Returns the
        worker's asyncio task, or None when a refresh is already running (it is then
        repeated once that one ends; the caller passes fresh durations next time).
        """
        if not self.follows or self.g.spawned:
            return None
        if self._refreshing or time.monotonic() < self._next_refresh:
            self._again = True
            return None
        self._refreshing, self._again = True, False
        began = time.monotonic()
        rest = self._with(durations)
        limit = self.search_s * REFRESH_SHARE

        async def work() -> None:
            try:
                planned = await asyncio.to_thread(self._search, rest, limit, True)
            except Exception:  # a refresh is an optimisation: keep the current order
                log.exception("refreshing the dispatch schedule failed")
                return
            finally:
                self._refreshing = False
                took = time.monotonic() - began
                low, high = REFRESH_EVERY_S
                self._next_refresh = began + min(high, max(low, REFRESH_PAUSE * took))
            self._adopt(planned, origin=now_plan)
            self.refreshes += 1
            apply()

        return asyncio.get_running_loop().create_task(work())

    def due(self) -> bool:
        """A drift was seen while a refresh ran or too soon after one: is it time now?"""
        return self._again and not self._refreshing and time.monotonic() >= self._next_refresh


def peak(intervals: Iterable[tuple[float, float, int]]) -> int:
    """The most units the ``(start, end, units)`` intervals hold at one time."""
    events: list[tuple[float, int]] = []
    for start, end, units in intervals:
        if end > start and units:
            events.append((start, units))
            events.append((end, -units))
    events.sort()  # at equal times releases (negative) come first
    held = most = 0
    for _, change in events:
        held += change
        most = max(most, held)
    return most
