"""A resource-feasible schedule: when each task would run, on which agent, and the makespan.

The method is the parallel schedule-generation scheme: time advances from one
event (a task finishing, a rate-limit bucket refilling) to the next, and at
each event the ready tasks are started in priority order (plan priority class,
then latest start from the critical-path method, then plan order) while an
agent slot and all their resources are free. A task takes every resource it
needs at once or waits, exactly as the run engine grants them.

Ready tasks are grouped by what they demand (the agents able to run them and
their resource units): when the best task of a group does not fit, none of the
group does, so one failed test skips the whole group. That keeps the scheme
close to O(n log n) on plans with millions of tasks.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

from counterpoint.errors import ScheduleError
from counterpoint.plan.graph import Graph

Demand = tuple[tuple[int, int], ...]
Signature = tuple[int, Demand, Demand]  # (agent pool, counted units, rate units)


@dataclass(frozen=True, slots=True)
class ScheduledTask:
    task: str
    start_s: float
    finish_s: float
    agent: str | None


@dataclass(frozen=True)
class Schedule:
    """Start and finish times per task (indexed like :attr:`Graph.task_ids`)."""

    task_ids: list[str]
    start_s: list[float]
    finish_s: list[float]
    agent: list[str | None]
    makespan_s: float

    def entries(self) -> list[ScheduledTask]:
        """Every task, ordered by start time then plan order."""
        order = sorted(range(len(self.task_ids)), key=lambda i: (self.start_s[i], i))
        return [
            ScheduledTask(self.task_ids[i], self.start_s[i], self.finish_s[i], self.agent[i])
            for i in order
        ]

    def to_json(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for e in self.entries():
            item: dict[str, Any] = {"task": e.task, "start_s": e.start_s, "finish_s": e.finish_s}
            if e.agent is not None:
                item["agent"] = e.agent
            out.append(item)
        return out


class _Bucket:
    """A token bucket: ``size`` tokens, refilled continuously at ``refill`` per second."""

    __slots__ = ("level", "refill", "size", "updated")

    def __init__(self, size: float, refill: float) -> None:
        self.size, self.refill, self.level, self.updated = size, refill, size, 0.0

    def available(self, now: float) -> float:
        self.level = min(self.size, self.level + (now - self.updated) * self.refill)
        self.updated = now
        return self.level

    def ready_at(self, now: float, units: int) -> float:
        return now + (units - self.available(now)) / self.refill


class _Pools:
    """Agents and resources as the scheduler sees them: free slots, free units, buckets."""

    def __init__(self, graph: Graph) -> None:
        plan = graph.plan
        self.agent_names = list(plan.agents)
        self.agent_caps = [set(a.capabilities) for a in plan.agents.values()]
        self.agent_free = [a.capacity for a in plan.agents.values()]
        self.agent_capacity = [a.capacity for a in plan.agents.values()]
        self.resource_index = {name: i for i, name in enumerate(plan.resources)}
        specs = list(plan.resources.values())
        self.free = [s.capacity or 0 for s in specs]
        self.buckets = {
            i: _Bucket(s.rate, s.rate / s.window_s)
            for i, s in enumerate(specs)
            if s.rate is not None
        }
        self.slots = plan.settings.max_concurrency
        self.pools: list[list[int]] = []
        self._pool_ids: dict[frozenset[str], int] = {}

    def pool_for(self, requires: list[str]) -> int:
        """The index of the list of agents able to run work needing ``requires``."""
        key = frozenset(requires)
        if key not in self._pool_ids:
            able = [a for a, caps in enumerate(self.agent_caps) if key <= caps]
            able.sort(key=lambda a: (len(self.agent_caps[a] - key), a))
            self._pool_ids[key] = len(self.pools)
            self.pools.append(able)
        return self._pool_ids[key]

    def pick_agent(self, pool: int) -> int | None:
        """Best match first (fewest unneeded capabilities), then the least loaded."""
        best, best_key = None, (0, 0.0)
        for a in self.pools[pool]:
            if self.agent_free[a] <= 0:
                continue
            extra = len(self.agent_caps[a])
            load = 1.0 - self.agent_free[a] / self.agent_capacity[a]
            if best is None or (extra, load) < best_key:
                best, best_key = a, (extra, load)
        return best


def schedule(graph: Graph) -> Schedule:
    """Compute a resource-feasible schedule for a compiled plan."""
    return _Scheduler(graph).run()


class _Scheduler:
    def __init__(self, graph: Graph) -> None:
        self.g = graph
        self.pools = _Pools(graph)
        self.use_agents = bool(graph.plan.agents)
        n = graph.n_nodes
        self.waiting = [graph.pred_start[v + 1] - graph.pred_start[v] for v in range(n)]
        self.start = [0.0] * graph.n_tasks
        self.finish = [0.0] * graph.n_tasks
        self.agent: list[int | None] = [None] * graph.n_tasks
        self.signature = [self._signature(t) for t in range(graph.n_tasks)]
        self.groups: dict[Signature, list[tuple[int, float, int]]] = {}
        self.events: list[tuple[float, int]] = []  # (time, node); node -1 = bucket refill
        self.running = 0
        self.now = 0.0
        self.done = 0

    def _signature(self, t: int) -> Signature:
        task = self.g.tasks[t]
        pools = self.pools
        counted: list[tuple[int, int]] = []
        rated: list[tuple[int, int]] = []
        for name, units in task.resources.items():
            r = pools.resource_index[name]
            (rated if r in pools.buckets else counted).append((r, units))
        pool = pools.pool_for(task.requires) if self.use_agents else -1
        return (pool, tuple(sorted(counted)), tuple(sorted(rated)))

    def run(self) -> Schedule:
        g = self.g
        for v in [v for v in range(g.n_nodes) if self.waiting[v] == 0]:
            self._ready(v)
        while self.done < g.n_nodes:
            self._dispatch()
            if not self.events:
                raise ScheduleError(self._stuck_reason())
            self._advance()
        names = self.pools.agent_names
        agents = [names[a] if a is not None else None for a in self.agent]
        makespan = max(self.finish, default=0.0)
        return Schedule(list(g.task_ids), self.start, self.finish, agents, makespan)

    def _ready(self, v: int) -> None:
        g = self.g
        if v >= g.n_tasks:
            self._complete(v)
            return
        key = (g.priority_rank[v], g.ls[v], v)
        heapq.heappush(self.groups.setdefault(self.signature[v], []), key)

    def _complete(self, v: int) -> None:
        """Mark ``v`` finished now and release whatever it unblocks (barriers cascade)."""
        self.done += 1
        g = self.g
        ss, succ, waiting = g.succ_start, g.succ, self.waiting
        for i in range(ss[v], ss[v + 1]):
            w = succ[i]
            waiting[w] -= 1
            if waiting[w] == 0:
                self._ready(w)

    def _advance(self) -> None:
        """Move time to the next event and finish every task ending then."""
        now = self.events[0][0]
        self.now = now
        finished: list[int] = []
        while self.events and self.events[0][0] == now:
            _, node = heapq.heappop(self.events)
            if node >= 0:
                finished.append(node)
        for t in finished:
            self._release(t)
            self._complete(t)

    def _dispatch(self) -> None:
        """Start every ready task that fits now, best first, one test per demand group."""
        candidates = [(heap[0], sig) for sig, heap in self.groups.items() if heap]
        heapq.heapify(candidates)
        while candidates:
            _, sig = heapq.heappop(candidates)
            heap = self.groups[sig]
            if not self._try_start(heap[0][2], sig):
                continue
            heapq.heappop(heap)
            if heap:
                heapq.heappush(candidates, (heap[0], sig))
            else:
                del self.groups[sig]

    def _try_start(self, t: int, sig: Signature) -> bool:
        pools, now = self.pools, self.now
        pool, counted, rated = sig
        if pools.slots is not None and self.running >= pools.slots:
            return False
        if any(pools.free[r] < units for r, units in counted):
            return False
        for r, units in rated:
            bucket = pools.buckets[r]
            if bucket.available(now) < units - 1e-9:
                heapq.heappush(self.events, (bucket.ready_at(now, units), -1))
                return False
        agent = pools.pick_agent(pool) if pool >= 0 else None
        if pool >= 0 and agent is None:
            return False
        self._take(t, sig, agent)
        return True

    def _take(self, t: int, sig: Signature, agent: int | None) -> None:
        pools, now = self.pools, self.now
        for r, units in sig[1]:
            pools.free[r] -= units
        for r, units in sig[2]:
            pools.buckets[r].level -= units
        if agent is not None:
            pools.agent_free[agent] -= 1
        self.agent[t] = agent
        self.running += 1
        self.start[t] = now
        self.finish[t] = now + self.g.duration[t]
        heapq.heappush(self.events, (self.finish[t], t))

    def _release(self, t: int) -> None:
        pools = self.pools
        for r, units in self.signature[t][1]:
            pools.free[r] += units
        agent = self.agent[t]
        if agent is not None:
            pools.agent_free[agent] += 1
        self.running -= 1

    def _stuck_reason(self) -> str:
        waiting = [self.g.task_ids[h[0][2]] for h in self.groups.values() if h]
        return (
            "no schedule exists: tasks wait for agents or resources that can never be free "
            f"({', '.join(waiting[:5])})"
        )
