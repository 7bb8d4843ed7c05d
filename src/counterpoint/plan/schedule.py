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
import math
from dataclasses import dataclass
from typing import Any

from counterpoint.allocation import AgentPool, Demand, ResourcePool
from counterpoint.errors import ScheduleError
from counterpoint.plan.graph import Graph
from counterpoint.queueing import ReadyQueue


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


def schedule(graph: Graph) -> Schedule:
    """Compute a resource-feasible schedule for a compiled plan."""
    return _Scheduler(graph).run()


class _Scheduler:
    def __init__(self, graph: Graph) -> None:
        self.g = graph
        plan = graph.plan
        self.agents = AgentPool(plan.agents)
        self.resources = ResourcePool(plan.resources)
        self.slots = plan.settings.max_concurrency
        self.queue = ReadyQueue()
        self.waiting = [graph.pred_start[v + 1] - graph.pred_start[v] for v in range(graph.n_nodes)]
        self.start = [0.0] * graph.n_tasks
        self.finish = [0.0] * graph.n_tasks
        self.agent: list[int | None] = [None] * graph.n_tasks
        self.demand = [self._demand(t) for t in range(graph.n_tasks)]
        self.events: list[tuple[float, int]] = []  # (time, task); task -1 = a bucket refilled
        self.running = 0
        self.now = 0.0
        self.done = 0

    def _demand(self, t: int) -> Demand:
        task = self.g.tasks[t]
        pool = self.agents.pool_for(task.requires) if self.agents.names else -1
        return self.resources.demand(task.resources, pool)

    def run(self) -> Schedule:
        g = self.g
        for v in [v for v in range(g.n_nodes) if self.waiting[v] == 0]:
            self._ready(v)
        while self.done < g.n_nodes:
            self._dispatch()
            if not self.events:
                raise ScheduleError(self._stuck_reason())
            self._advance()
        names = self.agents.names
        agents = [names[a] if a is not None else None for a in self.agent]
        makespan = max(self.finish, default=0.0)
        return Schedule(list(g.task_ids), self.start, self.finish, agents, makespan)

    def _ready(self, v: int) -> None:
        g = self.g
        if v >= g.n_tasks:
            self._complete(v)
            return
        tail = g.critical_path_s - g.ls[v]
        self.queue.push(v, self.demand[v], g.priority_rank[v], tail, self.now)

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
        uses_agents = bool(self.agents.names)
        for demand, t in self.queue.candidates(self.now):
            if self.slots is not None and self.running >= self.slots:
                return
            if uses_agents and self.agents.free_slots <= 0:
                return  # every agent is busy: nothing more can start now
            assert isinstance(demand, Demand)
            if self._try_start(t, demand):
                self.queue.take(demand, t, self.now)

    def _try_start(self, t: int, demand: Demand) -> bool:
        now = self.now
        ready = self.resources.ready_at(demand, now)
        if ready > now:
            if ready != math.inf:
                heapq.heappush(self.events, (ready, -1))
            return False
        agent = self.agents.pick(demand.pool) if demand.pool >= 0 else None
        if demand.pool >= 0 and agent is None:
            return False
        self.resources.take(demand, now)
        if agent is not None:
            self.agents.take(agent)
        self.agent[t] = agent
        self.running += 1
        self.start[t] = now
        self.finish[t] = now + self.g.duration[t]
        heapq.heappush(self.events, (self.finish[t], t))
        return True

    def _release(self, t: int) -> None:
        self.resources.release(self.demand[t])
        agent = self.agent[t]
        if agent is not None:
            self.agents.release(agent)
        self.running -= 1

    def _stuck_reason(self) -> str:
        waiting = [self.g.task_ids[t] for _, t in self.queue.candidates(self.now)]
        return (
            "no schedule exists: tasks wait for agents or resources that can never be free "
            f"({', '.join(waiting[:5])})"
        )
