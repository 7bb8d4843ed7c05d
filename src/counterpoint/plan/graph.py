"""The compiled plan: an integer-indexed DAG with the critical-path method on top.

Node ``0 .. n_tasks-1`` are the tasks in plan order. Phases and milestones add
zero-length barrier nodes (their start and their end), so "milestone B after A"
or "phase 2 after phase 1" costs one edge per task instead of one per pair of
tasks. Edges are kept in CSR form (flat integer arrays), built with numpy and
walked as Python lists in the hot loops.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
from numpy.typing import NDArray

from counterpoint.errors import PlanError
from counterpoint.plan.model import Plan, Priority, Task

EPS = 1e-9


class NodeKind(IntEnum):
    TASK = 0
    PHASE_START = 1
    PHASE_END = 2
    MILESTONE_START = 3
    MILESTONE_END = 4


@dataclass(frozen=True, slots=True)
class SpawnedTask:
    """A task added while the plan runs (``ctx.spawn``): it joins its parent's milestone."""

    task: Task
    parent: str
    milestone: int
    depth: int


@dataclass(slots=True)
class Edges:
    """Edge lists under construction: ``src[i] -> dst[i]`` means dst waits for src."""

    src: list[int] = field(default_factory=list)
    dst: list[int] = field(default_factory=list)

    def add(self, before: int, after: int) -> None:
        self.src.append(before)
        self.dst.append(after)


def _csr(keys: NDArray[np.int64], values: NDArray[np.int64], n: int) -> tuple[list[int], list[int]]:
    order = np.argsort(keys, kind="stable")
    counts = np.bincount(keys, minlength=n)
    starts = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=starts[1:])
    return starts.tolist(), values[order].tolist()


class Graph:
    """A compiled plan. Build it with :meth:`Plan.compile` or :func:`compile_plan`."""

    def __init__(self, plan: Plan, spawned: Sequence[SpawnedTask] = ()) -> None:
        self.plan = plan
        tasks = plan.tasks()
        self.n_plan_tasks = len(tasks)
        self.spawned = list(spawned)
        tasks += [s.task for s in self.spawned]
        milestones = plan.milestones()
        self.tasks = tasks
        self.milestones = milestones
        self.n_tasks = len(tasks)
        self.task_ids = [t.id for t in tasks]
        self.index = {tid: i for i, tid in enumerate(self.task_ids)}
        self.n_phases = len(plan.phases)
        self.n_milestones = len(milestones)
        self.n_nodes = self.n_tasks + 2 * self.n_phases + 2 * self.n_milestones
        self.milestone_index = {m.id: j for j, m in enumerate(milestones)}
        self.phase_of_task: list[int] = []
        self.milestone_of_task: list[int] = []
        self.phase_of_milestone: list[int] = []
        for pi, phase in enumerate(plan.phases):
            for m in phase.milestones:
                self.phase_of_milestone.append(pi)
                self.phase_of_task.extend([pi] * len(m.tasks))
                self.milestone_of_task.extend([len(self.phase_of_milestone) - 1] * len(m.tasks))
        for spawned_task in self.spawned:
            self.milestone_of_task.append(spawned_task.milestone)
            self.phase_of_task.append(self.phase_of_milestone[spawned_task.milestone])
        d = plan.defaults
        self.duration = [d.estimate if t.estimate is None else t.estimate for t in tasks]
        self.duration += [0.0] * (self.n_nodes - self.n_tasks)
        rank = {p: p.rank for p in Priority}
        self.priority_rank = [rank[t.priority or d.priority] for t in tasks]
        edges = self._edges()
        src = np.asarray(edges.src, dtype=np.int64)
        dst = np.asarray(edges.dst, dtype=np.int64)
        self.pred_start, self.pred = _csr(dst, src, self.n_nodes)
        self.succ_start, self.succ = _csr(src, dst, self.n_nodes)
        self.order = self._topological_order()
        self._cpm()

    def extend(self, spawned: Sequence[SpawnedTask]) -> None:
        """Add tasks after the plan's (and earlier spawned) ones, in place.

        Task numbers do not change; barrier nodes move up by ``len(spawned)``. Raises
        ``PlanError`` (and changes nothing) when the new tasks would close a cycle.
        """
        grown = Graph(self.plan, [*self.spawned, *spawned])
        for name in grown.__dict__:
            setattr(self, name, getattr(grown, name))

    # -- node numbering -------------------------------------------------------

    def phase_start(self, phase: int) -> int:
        return self.n_tasks + 2 * phase

    def phase_end(self, phase: int) -> int:
        return self.n_tasks + 2 * phase + 1

    def milestone_start(self, milestone: int) -> int:
        return self.n_tasks + 2 * self.n_phases + 2 * milestone

    def milestone_end(self, milestone: int) -> int:
        return self.n_tasks + 2 * self.n_phases + 2 * milestone + 1

    def kind(self, node: int) -> NodeKind:
        if node < self.n_tasks:
            return NodeKind.TASK
        rel = node - self.n_tasks
        if rel < 2 * self.n_phases:
            return NodeKind.PHASE_END if rel % 2 else NodeKind.PHASE_START
        return NodeKind.MILESTONE_END if rel % 2 else NodeKind.MILESTONE_START

    def label(self, node: int) -> str:
        """A task's id, or a readable name for a barrier node."""
        kind = self.kind(node)
        if kind is NodeKind.TASK:
            return self.task_ids[node]
        rel = node - self.n_tasks
        if kind in (NodeKind.PHASE_START, NodeKind.PHASE_END):
            phase = self.plan.phases[rel // 2].id
            return f"phase {phase} {'starts' if kind is NodeKind.PHASE_START else 'done'}"
        milestone = self.milestones[(rel - 2 * self.n_phases) // 2].id
        return f"milestone {milestone} {'starts' if kind is NodeKind.MILESTONE_START else 'done'}"

    # -- construction ---------------------------------------------------------

    def _edges(self) -> Edges:
        edges = Edges()
        self._phase_edges(edges)
        self._milestone_edges(edges)
        self._task_edges(edges)
        return edges

    def _phase_edges(self, edges: Edges) -> None:
        for k in range(self.n_phases):
            edges.add(self.phase_start(k), self.phase_end(k))
            if k == 0:
                continue
            previous = self.plan.phases[k - 1]
            gate = self.phase_start(k - 1) if previous.overlap else self.phase_end(k - 1)
            edges.add(gate, self.phase_start(k))
            edges.add(self.phase_end(k - 1), self.phase_end(k))

    def _milestone_edges(self, edges: Edges) -> None:
        for j, milestone in enumerate(self.milestones):
            phase = self.phase_of_milestone[j]
            edges.add(self.phase_start(phase), self.milestone_start(j))
            edges.add(self.milestone_start(j), self.milestone_end(j))
            edges.add(self.milestone_end(j), self.phase_end(phase))
            for name in milestone.after:
                other = self.milestone_index.get(name)
                if other is not None:
                    edges.add(self.milestone_end(other), self.milestone_start(j))

    def _task_edges(self, edges: Edges) -> None:
        index = self.index
        for t, task in enumerate(self.tasks):
            m = self.milestone_of_task[t]
            edges.add(self.milestone_start(m), t)
            edges.add(t, self.milestone_end(m))
            for name in task.needs:
                u = index.get(name)
                if u is not None:
                    edges.add(u, t)

    def _topological_order(self) -> list[int]:
        n = self.n_nodes
        ps = self.pred_start
        indegree = [ps[v + 1] - ps[v] for v in range(n)]
        ready = deque(v for v in range(n) if indegree[v] == 0)
        order: list[int] = []
        ss, succ = self.succ_start, self.succ
        while ready:
            u = ready.popleft()
            order.append(u)
            for i in range(ss[u], ss[u + 1]):
                w = succ[i]
                indegree[w] -= 1
                if indegree[w] == 0:
                    ready.append(w)
        if len(order) != n:
            from counterpoint.plan.cycles import cycle_problems

            raise PlanError(cycle_problems(self, {v for v in range(n) if indegree[v] > 0}))
        return order

    # -- critical path method -------------------------------------------------

    def forward(self, *, overlap_phase: int | None = None) -> tuple[list[float], list[float]]:
        """Earliest start and finish per node; ``overlap_phase`` runs as if it had ``overlap``.

        With ``overlap_phase=k`` the next phase starts when phase ``k`` starts rather than
        when it ends, which shows what ``overlap: true`` on phase ``k`` would gain.
        """
        n = self.n_nodes
        dur = self.duration
        ps, pred = self.pred_start, self.pred
        es = [0.0] * n
        ef = [0.0] * n
        skip = dst = -1
        if overlap_phase is not None and overlap_phase + 1 < self.n_phases:
            skip, dst = self.phase_end(overlap_phase), self.phase_start(overlap_phase + 1)
        for v in self.order:
            best = 0.0
            for i in range(ps[v], ps[v + 1]):
                u = pred[i]
                # phase_start(k) is phase_end(k) - 1: the relaxed edge starts there
                x = ef[u] if not (v == dst and u == skip) else ef[u - 1]
                if x > best:
                    best = x
            es[v] = best
            ef[v] = best + dur[v]
        return es, ef

    def _cpm(self) -> None:
        n = self.n_nodes
        dur = self.duration
        es, ef = self.forward()
        end = max(ef, default=0.0)
        ss, succ = self.succ_start, self.succ
        lf = [end] * n
        ls = [0.0] * n
        for v in reversed(self.order):
            best = end
            for i in range(ss[v], ss[v + 1]):
                x = ls[succ[i]]
                if x < best:
                    best = x
            lf[v] = best
            ls[v] = best - dur[v]
        self.es, self.ef, self.ls, self.lf = es, ef, ls, lf
        self.critical_path_s = end

    # -- queries --------------------------------------------------------------

    def topological_order(self) -> list[str]:
        """Task ids in an order where every task comes after everything it waits for."""
        return [self.task_ids[v] for v in self.order if v < self.n_tasks]

    def earliest_start(self, task: str) -> float:
        return self.es[self.index[task]]

    def latest_start(self, task: str) -> float:
        return self.ls[self.index[task]]

    def slack(self, task: str) -> float:
        """How long a task can slip without delaying the plan (ignoring resources)."""
        v = self.index[task]
        return max(0.0, self.ls[v] - self.es[v])

    def critical_path(self) -> list[str]:
        """One longest chain of tasks through the plan (dependency order, ignoring resources)."""
        if not self.order:
            return []
        node = max(range(self.n_nodes), key=lambda v: (self.ef[v], -v))
        chain = [node]
        ps, pred, ef = self.pred_start, self.pred, self.ef
        while True:
            v = chain[-1]
            tight = [
                pred[i] for i in range(ps[v], ps[v + 1]) if abs(ef[pred[i]] - self.es[v]) <= EPS
            ]
            if not tight:
                break
            chain.append(min(tight, key=lambda u: (self.kind(u) is not NodeKind.TASK, u)))
        return [self.task_ids[v] for v in reversed(chain) if v < self.n_tasks]

    def levels(self) -> list[int]:
        """Per task: how many tasks lie on the longest chain before it (0 = can start first)."""
        n_tasks = self.n_tasks
        ps, pred = self.pred_start, self.pred
        level = [0] * self.n_nodes
        for v in self.order:
            best = 0
            for i in range(ps[v], ps[v + 1]):
                u = pred[i]
                x = level[u] + (1 if u < n_tasks else 0)
                if x > best:
                    best = x
            level[v] = best
        return level[:n_tasks]

    def predecessors(self, node: int) -> list[int]:
        return self.pred[self.pred_start[node] : self.pred_start[node + 1]]

    def successors(self, node: int) -> list[int]:
        return self.succ[self.succ_start[node] : self.succ_start[node + 1]]

    def descendants(self, node: int) -> set[int]:
        """Every node that depends, directly or not, on ``node`` (barriers included)."""
        seen: set[int] = set()
        stack = [node]
        ss, succ = self.succ_start, self.succ
        while stack:
            u = stack.pop()
            for i in range(ss[u], ss[u + 1]):
                w = succ[i]
                if w not in seen:
                    seen.add(w)
                    stack.append(w)
        return seen


def compile_plan(plan: Plan) -> Graph:
    """``plan.compile()``: raises :class:`PlanError` listing every broken reference and cycle."""
    return plan.compile()


__all__ = ["Graph", "NodeKind", "SpawnedTask", "compile_plan"]
