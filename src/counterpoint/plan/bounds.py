"""Lower bounds on a plan's makespan: no schedule can be shorter.

* **critical path**: the longest chain of estimates (ignores agents and resources);
* **energy** per counted resource, per group of agents and for ``max_concurrency``:
  the work that must go through it (estimate x units) divided by its capacity;
* the same refined by **heads and tails**: for tasks that cannot start before ``a``
  (their earliest start) and are followed by at least ``b`` of work on their longest
  path to the end, the plan lasts at least ``a + work / capacity + b``; every pair of
  thresholds is tried (for up to :data:`MAX_HEAD_TAIL` tasks per resource; above
  that, heads with the smallest tail and tails with the smallest head, O(k log k)).

Agents: tasks that only agents of a set ``U`` can run must share ``U``'s slots, so
for every set of agents able to run some task (and for all agents together), the
work of the tasks that only ``U`` can run divided by ``U``'s capacity is a bound.

When every estimate is a whole number of ``step`` seconds, an optimal schedule can
be taken with its starts on whole steps, so a bound is rounded up to a whole step.
Rate limits are not used.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from counterpoint.plan.graph import Graph

MAX_HEAD_TAIL = 600


def _one_sided(h: NDArray[Any], q: NDArray[Any], e: NDArray[Any], cap: float) -> float:
    """max over a of a + work(head >= a) / cap + min tail among them: O(k log k)."""
    order = np.argsort(-h, kind="stable")
    work = np.cumsum(e[order]) / cap
    tail = np.minimum.accumulate(q[order])
    return float((h[order] + work + tail).max())


def _head_tail(h: NDArray[Any], q: NDArray[Any], e: NDArray[Any], cap: float) -> float:
    """max over thresholds (a, b) of a + work(head >= a, tail >= b) / cap + b."""
    k = len(e)
    if k == 0 or cap <= 0:
        return 0.0
    if k > MAX_HEAD_TAIL:
        return max(_one_sided(h, q, e, cap), _one_sided(q, h, e, cap))
    hv = np.unique(h)
    qv = np.unique(q)
    hi = np.searchsorted(hv, h)
    qi = np.searchsorted(qv, q)
    grid = np.zeros((len(hv), len(qv)), dtype=np.float64)
    count = np.zeros((len(hv), len(qv)), dtype=np.int64)
    np.add.at(grid, (hi, qi), e)
    np.add.at(count, (hi, qi), 1)

    def suffix(a: NDArray[Any]) -> NDArray[Any]:
        return np.asarray(a[::-1, ::-1].cumsum(axis=0).cumsum(axis=1)[::-1, ::-1])

    # grid[i, j]: work of the tasks with head >= hv[i] and tail >= qv[j] (count: how many)
    grid, count = suffix(grid), suffix(count)
    total = np.where(count > 0, hv[:, None] + grid / cap + qv[None, :], 0.0)
    return float(total.max())


def lower_bound(graph: Graph) -> float:
    """The best of the bounds above, in seconds."""
    from counterpoint.plan.problem import step_of

    plan = graph.plan
    n = graph.n_tasks
    end = graph.critical_path_s
    heads = np.asarray(graph.es[:n], dtype=np.float64)
    tails = end - np.asarray(graph.lf[:n], dtype=np.float64)
    dur = np.asarray(graph.duration[:n], dtype=np.float64)
    best = end

    def consider(tasks: list[int], units: NDArray[Any] | float, cap: float) -> None:
        nonlocal best
        if tasks and cap > 0:
            idx = np.asarray(tasks, dtype=np.int64)
            bound = _head_tail(heads[idx], tails[idx], dur[idx] * units, cap)
            best = max(best, bound)

    users: dict[str, list[int]] = {name: [] for name in plan.resources}
    by_need: dict[frozenset[str], list[int]] = {}
    lengths = graph.duration
    for t, task in enumerate(graph.tasks):
        if lengths[t] > 0:
            for name in task.resources:
                users[name].append(t)
            by_need.setdefault(frozenset(task.requires), []).append(t)
    for name, spec in plan.resources.items():
        if spec.capacity is not None:
            mine = users[name]
            units = np.asarray([graph.tasks[t].resources[name] for t in mine], dtype=np.float64)
            consider(mine, units, spec.capacity)
    slots = plan.settings.max_concurrency
    if slots is not None:
        consider([t for tasks in by_need.values() for t in tasks], 1.0, slots)
    for tasks, cap in _agent_sets(graph, by_need):
        consider(tasks, 1.0, cap)
    step, exact = step_of(graph.duration[:n])
    if exact and step > 0:
        best = math.ceil(best / step - 1e-6) * step
    return max(best, end)


def _agent_sets(
    graph: Graph, by_need: dict[frozenset[str], list[int]]
) -> list[tuple[list[int], int]]:
    """Per set of agents able to run some task (and all agents): the tasks only they can
    run and their capacity."""
    agents = graph.plan.agents
    cap = {name: a.capacity for name, a in agents.items() if a.capacity > 0}
    if not cap:
        return []
    able = {
        need: frozenset(a for a in cap if need <= set(agents[a].capabilities)) for need in by_need
    }
    out = []
    for group in set(able.values()) | {frozenset(cap)}:
        if group:
            only = [t for need, s in able.items() if s and s <= group for t in by_need[need]]
            out.append((only, sum(cap[a] for a in group)))
    return out
