"""A compiled plan as an RCPSP instance (:class:`~counterpoint.plan.rcpsp.Problem`).

* Activities are the graph's nodes: the tasks, then the zero-length phase and
  milestone barriers, with the graph's edges as precedences.
* Time is counted in whole *steps*: the largest unit that divides every estimate
  (to the millisecond), coarsened when the plan would need more than
  :data:`MAX_STEPS` of them; then estimates are rounded *up* to whole steps, which
  keeps every schedule feasible with the real estimates (``exact`` is false).
* Counted resources are renewable resources. ``max_concurrency`` is one more, which
  every task of non-zero length holds one unit of.
* Agents with the same capabilities form a *group*, a renewable resource whose
  capacity is the sum of theirs: identical agents are interchangeable, and tasks that
  never overlap more than the group's capacity can always be dealt to its agents
  (interval partitioning), which :meth:`PlanProblem.agents` does after scheduling. A
  task needs one unit of one of the groups able to run it (every required capability),
  best match first as the run engine picks (fewest capabilities it does not need);
  the schedule generation chooses, per task, the group that lets it start first.
* A rate limit whose bucket holds every token the plan's tasks will ever ask for can
  never hold a task back and is left out. Other rate limits are not modelled:
  :attr:`PlanProblem.rate_limited` names them, and a schedule must then pass
  :meth:`PlanProblem.rates_ok` (the token buckets simulated) to be used.

:func:`build` returns None when the plan does not fit this model (a capacity above
255 units that could be reached) or is too large for the search.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

from counterpoint.plan.graph import Graph
from counterpoint.plan.rcpsp import MAX_CAPACITY, Problem, Solution

#: Steps in the longest possible schedule (the sum of all estimates) at most.
MAX_STEPS = 50_000
#: Plans with more graph nodes than this keep the single-pass schedule.
MAX_NODES = 3_000


@dataclass
class PlanProblem:
    """A plan's RCPSP instance with what is needed to map schedules back."""

    graph: Graph
    problem: Problem
    step_s: float
    exact: bool
    #: resource index -> ("resource", name) or ("agents", [agent names]) or ("slots", "")
    kinds: list[tuple[str, tuple[str, ...]]]
    #: per agent group resource: the agents in it (plan order) and their capacities
    group_agents: dict[int, list[tuple[str, int]]]
    #: per task: the agent of a zero-length task (the best able one), else None
    idle_agent: list[str | None]
    rate_limited: list[str]

    def to_seconds(self, sol: Solution) -> tuple[list[float], list[float]]:
        g = self.graph
        start = [sol.start[t] * self.step_s for t in range(g.n_tasks)]
        finish = [start[t] + g.duration[t] for t in range(g.n_tasks)]
        return start, finish

    def agents(self, sol: Solution) -> list[str | None]:
        """Deal each group's tasks to its agents: by start, least loaded agent first."""
        g = self.graph
        out: list[str | None] = [None] * g.n_tasks
        if not g.plan.agents:
            return out
        dur = self.problem.duration
        by_group: dict[int, list[int]] = {}
        for t in range(g.n_tasks):
            if dur[t] == 0 or sol.choice[t] < 0:
                out[t] = self.idle_agent[t]
            else:
                by_group.setdefault(sol.choice[t], []).append(t)
        for group, tasks in by_group.items():
            members = self.group_agents[group]
            running = [0] * len(members)
            ends: list[tuple[int, int]] = []  # (finish step, member)
            for t in sorted(tasks, key=lambda t: (sol.start[t], t)):
                while ends and ends[0][0] <= sol.start[t]:
                    _, m = heapq.heappop(ends)
                    running[m] -= 1
                free = [m for m, (_, cap) in enumerate(members) if running[m] < cap]
                m = min(free, key=lambda m: (running[m] / members[m][1], m))
                running[m] += 1
                heapq.heappush(ends, (sol.start[t] + dur[t], m))
                out[t] = members[m][0]
        return out

    def rates_ok(self, start_s: list[float]) -> bool:
        """True when the start times respect every rate limit that was left out."""
        plan = self.graph.plan
        tasks = self.graph.tasks
        for name in self.rate_limited:
            spec = plan.resources[name]
            assert spec.rate is not None
            refill = spec.rate / spec.window_s
            takers = sorted(
                (start_s[t], task.resources[name])
                for t, task in enumerate(tasks)
                if name in task.resources
            )
            level, last = float(spec.rate), 0.0
            for when, units in takers:
                level = min(float(spec.rate), level + (when - last) * refill)
                last = when
                level -= units
                if level < -1e-9 * max(1.0, spec.rate):
                    return False
        return True

    def solution_of(self, start_s: list[float], agent: list[str | None]) -> Solution | None:
        """A schedule in seconds as a :class:`Solution` of this problem (None if it does
        not fall on whole steps or names an agent outside its groups)."""
        g = self.graph
        p = self.problem
        starts = [0] * p.n
        for t in range(g.n_tasks):
            steps = start_s[t] / self.step_s
            if abs(steps - round(steps)) > 1e-6:
                return None
            starts[t] = round(steps)
        # barriers: as early as their predecessors allow
        for v in g.order:
            if v >= g.n_tasks:
                starts[v] = max((starts[u] + p.duration[u] for u in g.predecessors(v)), default=0)
        group_of: dict[str, int] = {
            name: grp for grp, members in self.group_agents.items() for name, _ in members
        }
        choice = [-1] * p.n
        for t in range(g.n_tasks):
            if p.alternatives[t]:
                grp = group_of.get(agent[t] or "", -1)
                if grp not in p.alternatives[t]:
                    if p.duration[t] > 0:
                        return None
                    grp = p.alternatives[t][0]
                choice[t] = grp
        makespan = max((starts[v] + p.duration[v] for v in range(p.n)), default=0)
        return Solution(starts, choice, makespan)


def step_of(durations: list[float]) -> tuple[float, bool]:
    """The time step (seconds) and whether every duration is a whole number of steps."""
    millis = [round(d * 1000) for d in durations if d > 0]
    if not millis:
        return 1.0, True
    exact = all(
        abs(d * 1000 - m) <= 1e-6 * max(1.0, d * 1000)
        for d, m in zip((d for d in durations if d > 0), millis, strict=True)
    )
    g = 0
    for m in millis:
        g = math.gcd(g, m)
    g = max(g, 1)
    total = sum(millis) // g
    if total > MAX_STEPS:
        g *= math.ceil(total / MAX_STEPS)
        exact = exact and all(m % g == 0 for m in millis)
    return g / 1000.0, exact


def build(
    graph: Graph, *, capacities: dict[tuple[str, str], int] | None = None
) -> PlanProblem | None:
    """The plan's RCPSP instance, or None when it does not fit (see the module doc).

    ``capacities`` overrides capacities: ``("agent", name)`` or ``("resource", name)``
    to units (the bottleneck analysis adds one).
    """
    if graph.n_nodes > MAX_NODES:
        return None
    return _Builder(graph, capacities or {}).build()


class _Unsupported(Exception):
    """The plan does not fit the model."""


class _Builder:
    def __init__(self, graph: Graph, over: dict[tuple[str, str], int]) -> None:
        self.graph = graph
        self.over = over
        self.step, self.exact = step_of(graph.duration[: graph.n_tasks])
        self.dur = [0 if d <= 0 else math.ceil(d / self.step - 1e-9) for d in graph.duration]
        self.busy = [t for t in range(graph.n_tasks) if self.dur[t] > 0]
        self.capacity: list[int] = []
        self.kinds: list[tuple[str, tuple[str, ...]]] = []
        self.demand: list[list[tuple[int, int]]] = [[] for _ in range(graph.n_nodes)]
        self.alternatives: list[list[int]] = [[] for _ in range(graph.n_nodes)]
        self.rate_limited: list[str] = []
        self.idle_agent: list[str | None] = [None] * graph.n_tasks
        self.group_agents: dict[int, list[tuple[str, int]]] = {}

    def build(self) -> PlanProblem | None:
        try:
            self._resources()
            self._slots()
            self._agents()
        except _Unsupported:
            return None
        for t in self.busy:
            if any(q > self.capacity[r] for r, q in self.demand[t]):
                return None  # can never run: left to the single-pass scheduler's error
        g = self.graph
        preds = [g.predecessors(v) for v in range(g.n_nodes)]
        problem = Problem(self.dur, preds, self.capacity, self.demand, self.alternatives)
        return PlanProblem(
            g,
            problem,
            self.step,
            self.exact,
            self.kinds,
            self.group_agents,
            self.idle_agent,
            self.rate_limited,
        )

    def _add(self, cap: int, kind: tuple[str, tuple[str, ...]]) -> int:
        if cap > MAX_CAPACITY:
            raise _Unsupported
        self.capacity.append(cap)
        self.kinds.append(kind)
        return len(self.capacity) - 1

    def _resources(self) -> None:
        tasks = self.graph.tasks
        for name, spec in self.graph.plan.resources.items():
            if spec.rate is not None:  # zero-length tasks take tokens too
                tokens = sum(t.resources.get(name, 0) for t in tasks)
                if tokens > spec.rate + 1e-9:
                    self.rate_limited.append(name)
                continue
            users = [t for t in self.busy if name in tasks[t].resources]
            units = [tasks[t].resources[name] for t in users]
            cap = self.over.get(("resource", name), spec.capacity or 0)
            if sum(units) <= cap:
                continue  # never binding
            div = math.gcd(*units)
            r = self._add(cap // div, ("resource", (name,)))
            for t, q in zip(users, units, strict=True):
                self.demand[t].append((r, q // div))

    def _slots(self) -> None:
        slots = self.graph.plan.settings.max_concurrency
        if slots is not None and slots < len(self.busy):
            r = self._add(slots, ("slots", ()))
            for t in self.busy:
                self.demand[t].append((r, 1))

    def _agents(self) -> None:
        plan = self.graph.plan
        if not plan.agents:
            return
        groups: dict[frozenset[str], list[tuple[str, int]]] = {}
        for name, spec in plan.agents.items():
            cap = self.over.get(("agent", name), spec.capacity)
            if cap > 0:
                groups.setdefault(frozenset(spec.capabilities), []).append((name, cap))
        index: dict[frozenset[str], int] = {}
        for caps, members in groups.items():
            total = min(sum(c for _, c in members), max(1, len(self.busy)))
            r = index[caps] = self._add(total, ("agents", tuple(m for m, _ in members)))
            self.group_agents[r] = members
        order = list(plan.agents)
        able_of: dict[frozenset[str], list[int]] = {}
        for t, task in enumerate(self.graph.tasks):
            need = frozenset(task.requires)
            if need not in able_of:
                fits = sorted(
                    (c for c in groups if need <= c),
                    key=lambda c: (len(c - need), order.index(groups[c][0][0])),
                )
                able_of[need] = [index[c] for c in fits]
            able = able_of[need]
            if not able:
                raise _Unsupported  # no agent can run it: the single pass says so
            self.idle_agent[t] = self.group_agents[able[0]][0][0]
            if self.dur[t] == 0:
                continue
            if len(able) == 1:
                self.demand[t].append((able[0], 1))
            else:
                self.alternatives[t] = list(able)
