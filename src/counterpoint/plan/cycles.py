"""Explaining dependency cycles: every cycle, as the chain of things that wait on each other.

Only the nodes Kahn's algorithm could not order are examined, trimmed further
to those that both reach and are reached by a cycle, so even a huge plan with a
cycle costs little here. Cycles are reported at the level a person wrote them:
first among tasks (``needs``), then among milestones and phases (``after`` and
phase order), then the mixed ones where a ``needs`` crosses a milestone or
phase boundary backwards.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import networkx as nx

from counterpoint.errors import Path, Problem

if TYPE_CHECKING:
    from counterpoint.plan.graph import Graph

MAX_CYCLES = 50


def cycle_problems(graph: Graph, stuck: set[int]) -> list[Problem]:
    """One problem per elementary cycle among the ``stuck`` nodes (at most ``MAX_CYCLES``)."""
    core = _trim(graph, stuck)
    full = nx.DiGraph()
    full.add_nodes_from(core)
    full.add_edges_from((u, v) for v in core for u in graph.predecessors(v) if u in core)
    views = (
        full.subgraph(v for v in core if v < graph.n_tasks),
        full.subgraph(v for v in core if v >= graph.n_tasks),
        full,
    )
    problems: list[Problem] = []
    for level, view in enumerate(views):
        for cycle in _cycles(view):
            mixed = level == 2
            if mixed and not _crosses_milestones(graph, cycle):
                continue  # the same cycle as a task-level or milestone-level one, threaded
            problems.append(_problem(graph, cycle))
            if len(problems) >= MAX_CYCLES:
                return problems
    return problems


def _crosses_milestones(graph: Graph, cycle: list[int]) -> bool:
    n, of = graph.n_tasks, graph.milestone_of_task
    pairs = zip(cycle, cycle[1:] + cycle[:1], strict=True)
    return any(u < n and v < n and of[u] != of[v] for u, v in pairs)


def _trim(graph: Graph, stuck: set[int]) -> set[int]:
    """Drop stuck nodes that only sit downstream of a cycle (they reach no cycle)."""
    out_degree = {v: sum(1 for w in graph.successors(v) if w in stuck) for v in stuck}
    queue = [v for v, d in out_degree.items() if d == 0]
    alive = set(stuck)
    while queue:
        v = queue.pop()
        alive.discard(v)
        for u in graph.predecessors(v):
            if u in alive:
                out_degree[u] -= 1
                if out_degree[u] == 0:
                    queue.append(u)
    return alive


def _cycles(view: nx.DiGraph) -> Iterator[list[int]]:
    for component in nx.strongly_connected_components(view):
        if len(component) < 2 and not any(view.has_edge(v, v) for v in component):
            continue
        sub = view.subgraph(component)
        found = sorted(_bounded_cycles(sub), key=lambda c: (len(c), min(c)))
        yield from found


def _bounded_cycles(sub: nx.DiGraph) -> Iterable[list[int]]:
    cycles: list[list[int]] = []
    for cycle in nx.simple_cycles(sub):
        cycles.append(_rotate(list(cycle)))
        if len(cycles) >= MAX_CYCLES:
            break
    return cycles


def _rotate(cycle: list[int]) -> list[int]:
    """Start a cycle at its lowest node (a task when it has one) so it always prints the same."""
    i = cycle.index(min(cycle))
    return cycle[i:] + cycle[:i]


def _problem(graph: Graph, cycle: list[int]) -> Problem:
    names = _names(graph, cycle)
    return Problem("cycle: " + " -> ".join([*names, names[0]]), _edge_path(graph, cycle))


def _names(graph: Graph, cycle: list[int]) -> list[str]:
    """Labels along the cycle; a barrier's start directly followed by its end reads as one."""
    names: list[str] = []
    i = 0
    while i < len(cycle):
        v = cycle[i]
        follows = cycle[(i + 1) % len(cycle)]
        if v >= graph.n_tasks and follows == v + 1 and (v - graph.n_tasks) % 2 == 0:
            names.append(graph.label(v).rsplit(" ", 1)[0])
            i += 2
            continue
        names.append(graph.label(v))
        i += 1
    return names


def _edge_path(graph: Graph, cycle: list[int]) -> Path:
    """The plan key that makes the cycle's first edge: a ``needs`` or an ``after`` entry."""
    pairs = list(zip(cycle, cycle[1:] + cycle[:1], strict=True))
    for before, after in pairs:
        if after < graph.n_tasks and before < graph.n_tasks:
            return _needs_path(graph, after, graph.task_ids[before])
    for before, after in pairs:
        path = _after_path(graph, before, after)
        if path:
            return path
    return ("phases",)


def _task_path(graph: Graph, task: int) -> Path:
    milestone = graph.milestone_of_task[task]
    phase = graph.phase_of_task[task]
    first_in_milestone = graph.milestone_of_task.index(milestone)
    local_milestone = milestone - graph.phase_of_milestone.index(phase)
    return ("phases", phase, "milestones", local_milestone, "tasks", task - first_in_milestone)


def _needs_path(graph: Graph, task: int, needed: str) -> Path:
    return (*_task_path(graph, task), "needs", graph.tasks[task].needs.index(needed))


def _after_path(graph: Graph, before: int, after: int) -> Path:
    base = graph.n_tasks + 2 * graph.n_phases
    if before < base or after < base or (before - base) % 2 != 1 or (after - base) % 2 != 0:
        return ()
    waiting, waited = (after - base) // 2, (before - base) // 2
    milestone = graph.milestones[waiting]
    name = graph.milestones[waited].id
    if name not in milestone.after:
        return ()
    phase = graph.phase_of_milestone[waiting]
    local = waiting - graph.phase_of_milestone.index(phase)
    return ("phases", phase, "milestones", local, "after", milestone.after.index(name))
