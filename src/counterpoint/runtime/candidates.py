"""The run engine's side of best-of-N (a mixin of the Orchestrator).

A task with ``attempts: N`` > 1 runs each attempt as N candidates
(:class:`counterpoint.agents.best_of.BestOfN`) inside the attempt's own time. The first
candidate uses the agent slot the attempt was dispatched on; the others borrow slots
here, only when an able agent has one free and the task's resources are available (so
they never wait in the queue ahead of other tasks, which the dispatcher serves first).
Each candidate's coding cost is journaled under ``TASK#K`` and counts towards the run's
budget at once.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from counterpoint.agents.best_of import BestOfN, Candidate, CandidateHooks, journal_candidates

if TYPE_CHECKING:
    from counterpoint.agents.base import TaskContext
    from counterpoint.allocation import AgentPool, Demand, ResourcePool
    from counterpoint.plan.graph import Graph
    from counterpoint.plan.model import Plan
    from counterpoint.runtime.governor import Governor
    from counterpoint.runtime.runners import Runners
    from counterpoint.store.sqlite import SqliteStore


class Candidates:
    """Lends agent slots to best-of-N attempts and records their candidates."""

    g: Graph
    plan: Plan
    store: SqliteStore
    run_id: int
    agents: AgentPool
    resources: ResourcePool
    demands: dict[int, Demand]
    runners: Runners
    governor: Governor
    cancelling: str | None
    failed_fast: bool
    wake: asyncio.Event

    def emit(self, kind: str, task: int | None = None, **data: Any) -> None:
        raise NotImplementedError

    def _check_budget(self) -> None:
        raise NotImplementedError

    def _expects_changes(self, t: int) -> bool:
        raise NotImplementedError

    def _best_of_n(self, t: int, ctx: TaskContext, steps: Any) -> BestOfN | None:
        """The best-of-N runner of a worktree attempt whose task has ``attempts`` > 1."""
        from counterpoint.agents.attempt import check_of

        if steps is None or ctx.task.attempts < 2:
            return None
        hooks = CandidateHooks(
            slots=_Lender(self, t),
            run_agent=lambda c: self.runners.for_task(c.task_id, c.agent)(c),
            emit=lambda kind, **data: self.emit(kind, t, **data),
            record_usage=lambda k, agent, logs: self._govern_candidate(t, ctx, k, agent, logs),
            journal=lambda task, attempt, cs: self._journal_candidates(task, attempt, cs),
            expects_changes=self._expects_changes(t),
        )
        check = check_of(self.plan, ctx.task, ctx.agent)
        return BestOfN(steps.manager, self.plan, ctx, check, hooks)

    def _govern_candidate(
        self, t: int, ctx: TaskContext, number: int, agent: str, log_dir: Path
    ) -> None:
        phase = self.plan.phases[self.g.phase_of_task[t]].id
        label = f"{ctx.task_id}#{number}"
        usage = self.governor.record(label, ctx.attempt, agent, phase, log_dir)
        if usage is None:
            return
        data = {k: v for k, v in usage.to_json().items() if k != "task"}
        self.emit(
            "coding_usage", t, **data, candidate=number,
            run_cost_usd=round(self.governor.spent_usd, 6),
        )  # fmt: skip
        self._check_budget()

    def _journal_candidates(self, task: str, attempt: int, cs: list[Candidate]) -> None:
        journal_candidates(self.store, self.run_id, task, attempt, cs)


class _Lender:
    """The extra slots of one best-of-N attempt: an able agent's free slot plus the task's
    resources, taken only when both are free now."""

    def __init__(self, run: Candidates, t: int) -> None:
        self.run, self.t = run, t

    def take(self) -> str | None:
        run = self.run
        if run.cancelling is not None or run.failed_fast:
            return None
        demand, now = run.demands[self.t], time.monotonic()
        if demand.pool < 0 or run.resources.ready_at(demand, now) > now:
            return None
        agent = run.agents.pick(demand.pool)
        if agent is None:
            return None
        run.resources.take(demand, now)
        run.agents.take(agent)
        return run.agents.names[agent]

    def give_back(self, agent: str) -> None:
        run = self.run
        run.resources.release(run.demands[self.t])
        run.agents.release(run.agents.index[agent])
        run.wake.set()  # the dispatcher may start a queued task on it
