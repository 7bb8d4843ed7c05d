"""The run engine's side of the governor (a mixin of the Orchestrator).

When an attempt ends, its coding ledger is journaled (:meth:`Governing._govern`); once the
run's budget is spent, the tasks that have not started are blocked, an escalation is
opened and no new task starts (:meth:`Governing._check_budget`). Before a worktree
attempt is merged, :meth:`Governing._unchanged_attempt` fails one that was expected to
change code and changed nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from counterpoint.runtime.events import Completion, TaskState
from counterpoint.runtime.governor import Governor, unchanged

if TYPE_CHECKING:
    from counterpoint.allocation import AgentPool
    from counterpoint.plan.graph import Graph
    from counterpoint.plan.model import Plan, Task
    from counterpoint.runtime.escalation import Escalator
    from counterpoint.store.sqlite import SqliteStore

BUDGET_SUBJECT = "run:budget"


class Governing:
    """Cost records, the run's budget and ``expect_changes``; see the module docstring."""

    g: Graph
    plan: Plan
    store: SqliteStore
    run_id: int
    state_dir: Path
    state: list[TaskState]
    agents: AgentPool
    agent_of: list[int | None]
    escalator: Escalator
    failed_fast: bool
    remote_workspaces: dict[int, dict[str, Any]]
    governor: Governor

    def emit(self, kind: str, task: int | None = None, **data: Any) -> None:
        raise NotImplementedError

    def _mark_blocked(self, v: int, reason: str, chain: list[str] | None = None) -> None:
        raise NotImplementedError

    def _agent_name(self, t: int) -> str | None:
        raise NotImplementedError

    def _init_governor(self) -> None:
        self.governor = Governor(self.store, self.run_id, self.plan.settings.budget)

    def _govern(self, done: Completion, log_dir: Path) -> None:
        """Journal what the attempt's coding agent reported (nothing for other runners)."""
        t = done.node
        phase = self.plan.phases[self.g.phase_of_task[t]].id
        usage = self.governor.record(
            self.g.task_ids[t], done.attempt, self._agent_name(t), phase, log_dir
        )
        if usage is not None:
            data = {k: v for k, v in usage.to_json().items() if k != "task"}
            self.emit("coding_usage", t, **data, run_cost_usd=round(self.governor.spent_usd, 6))

    def _check_budget(self) -> None:
        """Once the run's budget is spent: block what has not started, say so, escalate.

        Tasks that run go on to their end; the run then ends failed (``failed_fast`` is
        what stops dispatching and ends the run once nothing runs).
        """
        if self.governor.stopped or not self.governor.reached:
            return
        self.governor.stopped = True
        self.failed_fast = True
        message = self.governor.message()
        waiting = (TaskState.PENDING, TaskState.READY, TaskState.RETRYING)
        held = [t for t in range(self.g.n_tasks) if self.state[t] in waiting]
        for t in held:
            self._mark_blocked(t, f"not started: {message}")
        details = {
            "spent_usd": round(self.governor.spent_usd, 6),
            "max_cost_usd": self.plan.settings.budget.max_cost_usd
            if self.plan.settings.budget
            else None,
            "not_started": [self.g.task_ids[t] for t in held],
        }
        self.emit("budget_reached", None, message=message, **details)
        self.escalator.open(BUDGET_SUBJECT, "budget", message, details)

    def _unchanged_attempt(self, done: Completion, worktrees: Any) -> str | None:
        """Why a completed worktree attempt that had to change code must fail, or None."""
        t = done.node
        tid = self.g.task_ids[t]
        if worktrees is None or t in self.remote_workspaces or not self._expects_changes(t):
            return None
        if not worktrees.holds(tid, done.attempt):
            return None
        if not unchanged(worktrees.worktree(tid, done.attempt), worktrees.branch):
            return None
        return (
            "expect_changes: the attempt changed nothing in its worktree (no edit to commit, "
            "no new commit), so there is nothing to merge"
        )

    def _expects_changes(self, t: int) -> bool:
        task: Task = self.g.tasks[t]
        if task.expect_changes is not None:
            return task.expect_changes
        a = self.agent_of[t]
        agent = self.plan.agents[self.agents.names[a]] if a is not None else None
        runner = task.run or (agent.runner if agent is not None else None)
        return runner is not None and runner.coding is not None
