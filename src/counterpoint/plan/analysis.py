"""What ``counterpoint plan`` reports beyond the schedule itself.

The parallel execution matrix (seed section 1.1: per milestone, which tasks can
run side by side, what it waits for, what it needs) and the cross-phase overlap
opportunities (seed section 1.2: which tasks of the next phase could start
early if a phase allowed ``overlap``, and how much sooner the plan would end).
"""

from __future__ import annotations

from dataclasses import dataclass

from counterpoint.plan.graph import EPS, Graph


@dataclass(frozen=True)
class MilestoneRow:
    """One row of the parallel execution matrix."""

    phase: str
    milestone: str
    title: str
    after: list[str]
    waves: list[list[str]]  # tasks that can run side by side, wave by wave
    capabilities: list[str]
    resources: list[str]
    start_s: float
    finish_s: float


@dataclass(frozen=True)
class EarlyStart:
    task: str
    earliest_start_s: float
    with_overlap_s: float

    @property
    def saved_s(self) -> float:
        return self.earliest_start_s - self.with_overlap_s


@dataclass(frozen=True)
class Overlap:
    """What ``overlap: true`` on ``phase`` would let ``next_phase`` do sooner."""

    phase: str
    next_phase: str
    tasks: list[EarlyStart]
    makespan_saved_s: float


def parallel_matrix(graph: Graph) -> list[MilestoneRow]:
    levels = graph.levels()
    members: list[list[int]] = [[] for _ in range(graph.n_milestones)]
    for t in range(graph.n_tasks):
        members[graph.milestone_of_task[t]].append(t)
    rows = []
    for j, milestone in enumerate(graph.milestones):
        tasks = members[j]
        waves: dict[int, list[str]] = {}
        for t in sorted(tasks, key=lambda t: (levels[t], graph.es[t], t)):
            waves.setdefault(levels[t], []).append(graph.task_ids[t])
        rows.append(
            MilestoneRow(
                phase=graph.plan.phases[graph.phase_of_milestone[j]].id,
                milestone=milestone.id,
                title=milestone.title,
                after=list(milestone.after),
                waves=list(waves.values()),
                capabilities=sorted({c for t in tasks for c in graph.tasks[t].requires}),
                resources=sorted({r for t in tasks for r in graph.tasks[t].resources}),
                start_s=graph.es[graph.milestone_start(j)],
                finish_s=graph.ef[graph.milestone_end(j)],
            )
        )
    return rows


def overlap_opportunities(graph: Graph) -> list[Overlap]:
    """For each phase without ``overlap`` that has a successor: the tasks that could start early."""
    found = []
    for k, phase in enumerate(graph.plan.phases[:-1]):
        if phase.overlap:
            continue
        es, ef = graph.forward(overlap_phase=k)
        early = [
            EarlyStart(graph.task_ids[t], graph.es[t], es[t])
            for t in range(graph.n_tasks)
            if graph.phase_of_task[t] == k + 1 and es[t] < graph.es[t] - EPS
        ]
        if early:
            saved = graph.critical_path_s - max(ef, default=0.0)
            found.append(Overlap(phase.id, graph.plan.phases[k + 1].id, early, saved))
    return found
