"""The steps around the agent of one worktree attempt, inside the attempt's own time.

Before the agent: ``settings.worktree.setup`` runs in the worktree, then the worktree is
checked to be the repository's worktree on the attempt's branch (never start an agent
elsewhere). After the agent succeeded: the ``check`` command runs in the worktree, the
work is committed, and a merge conflict with the integration branch is predicted
(``git merge-tree``). A conflict that a policy can resolve is resolved here, in
``STATE/worktrees/run-N/TASK-ATTEMPT.resolve``: a fresh worktree at the integration
branch's tip with the task's merge in progress. Mechanical rules apply first, then the
resolver agent; the verdict comes from git (:func:`counterpoint.agents.merging.unresolved`);
the check runs again there, on exactly the tree the integration branch will get. The
run's loop then merges that resolution (a fast-forward when the tip did not move).
What no policy resolved is left to the merge, which raises it for a person.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from counterpoint.agents.base import TaskFailed
from counterpoint.agents.merging import (
    classify,
    predict,
    resolve_mechanically,
    run_command,
    unresolved,
)
from counterpoint.agents.worktree import WorktreeError, WorktreeManager
from counterpoint.plan.model import Command, Plan, Task

if TYPE_CHECKING:
    from counterpoint.agents.base import TaskContext
    from counterpoint.plan.graph import Graph
    from counterpoint.runtime.runners import Runners
    from counterpoint.store.sqlite import SqliteStore

log = logging.getLogger("counterpoint.run")

#: Runs the resolver agent on a task (its prompt) in a folder (the resolution worktree).
ResolverCall = Callable[["TaskContext", Task, Path], Awaitable[Any]]
#: Emits a run event about the attempt's task.
Emit = Callable[..., None]


def check_of(plan: Plan, task: Task, agent: str | None) -> Command | None:
    """The check command: the task's, else its agent's, else ``settings.worktree.check``."""
    spec = plan.agents.get(agent or "")
    agent_check = None if spec is None else spec.check
    return task.check or agent_check or plan.settings.worktree.check


class WorktreeAttempt:
    """Setup and checks before the agent, check and conflict resolution after it."""

    def __init__(
        self,
        manager: WorktreeManager,
        plan: Plan,
        ctx: TaskContext,
        resolve: ResolverCall,
        emit: Emit,
    ) -> None:
        self.manager = manager
        self.plan = plan
        self.ctx = ctx
        self.task, self.attempt = ctx.task_id, ctx.attempt
        self.path = manager.worktree(self.task, self.attempt)
        self.resolve = resolve
        self.emit = emit

    async def before(self) -> None:
        """Run the setup command, then refuse a folder that is not the attempt's worktree."""
        settings = self.plan.settings.worktree
        if settings.setup is not None:
            done = await run_command(settings.setup, self.path, settings.setup_timeout)
            if not done.ok:
                raise TaskFailed(done.failure("the worktree setup command", settings.setup))
        try:
            await asyncio.to_thread(self.manager.verify, self.task, self.attempt)
        except WorktreeError as exc:
            raise TaskFailed(str(exc)) from None
        if self.manager.ledger is not None:
            self.manager.ledger.set_status(self.task, self.attempt, "running")

    async def after(self, checked: bool = False) -> None:
        """The agent succeeded: check, commit, and resolve a predicted conflict if a policy
        can. A failing check fails the attempt (nothing is merged). ``checked``: the check
        already passed on this work (a best-of-N winner's)."""
        check = check_of(self.plan, self.ctx.task, self.ctx.agent)
        if check is not None and not checked:
            await self._check(check, self.path, "")
        try:
            theirs = await asyncio.to_thread(self.manager.commit_attempt, self.task, self.attempt)
            await self._settle(theirs, check)
        except WorktreeError as exc:
            raise TaskFailed(f"could not merge the task's work: {exc}") from None

    async def _check(self, check: Command, where: Path, context: str) -> None:
        timeout = self.plan.settings.worktree.check_timeout
        done = await run_command(check, where, timeout)
        if not done.ok:
            raise TaskFailed(context + done.failure("the check command", check))

    async def _settle(self, theirs: str, check: Command | None) -> None:
        conflicts = self.plan.settings.conflicts
        if not conflicts.mechanical and conflicts.resolver is None:
            return  # nothing could resolve a conflict: the merge raises it for a person
        manager = self.manager
        ours = await asyncio.to_thread(manager.tip)
        prediction = await asyncio.to_thread(predict, manager.repo, ours, theirs)
        if prediction.clean:
            return
        mechanical, others = classify(prediction.paths, conflicts.mechanical)
        if others and conflicts.resolver is None:
            return  # for a person
        folder = await asyncio.to_thread(manager.open_resolution, self.task, self.attempt, theirs)
        problems = await asyncio.to_thread(resolve_mechanically, folder, mechanical)
        left = await asyncio.to_thread(unresolved, folder, prediction.paths)
        how = [f"{p} ({r.strategy})" for p, r in mechanical.items() if p not in left]
        if left:
            why = await self._semantic(folder, left, ours, theirs, problems)
            if why:
                manager.notes[(self.task, self.attempt)] = why
                self.emit("merge_unresolved", attempt=self.attempt, paths=left, reason=why)
                return
            how += [f"{p} (resolver {conflicts.resolver})" for p in left]
        commit = await asyncio.to_thread(manager.close_resolution, self.task, self.attempt, how)
        if check is not None:
            context = f"after resolving the conflict (kept in {folder}): "
            await self._check(check, folder, context)
        manager.resolved[(self.task, self.attempt)] = commit
        self.emit("merge_resolved", attempt=self.attempt, paths=list(prediction.paths), how=how)
        await asyncio.to_thread(manager.drop_resolution, self.task, self.attempt)

    async def _semantic(
        self, folder: Path, left: list[str], ours: str, theirs: str, problems: list[str]
    ) -> str:
        """Hand what is left to the resolver agent; why it is still unresolved ("": it is)."""
        name = self.plan.settings.conflicts.resolver
        if name is None:
            return "the mechanical rules did not resolve it: " + (
                "; ".join(problems) or ", ".join(left)
            )
        ledger = self.manager.ledger
        entries = [] if ledger is None else ledger.entries()  # the journal, in the loop's thread
        others = await asyncio.to_thread(self.manager.tasks_between, theirs, ours, left, entries)
        task = resolver_task(self.plan, self.ctx.task, self.attempt, others, left, self.manager)
        try:
            await self.resolve(self.ctx, task, folder)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the resolver failed: its conflict goes to a person
            return f"the resolver agent {name!r} failed: {exc}"
        try:
            still = await asyncio.to_thread(
                self.manager.resolution_left, folder, left, ours, theirs
            )
        except WorktreeError as exc:
            return f"the resolver agent {name!r} left the merge unusable: {exc}"
        if still:
            return f"the resolver agent {name!r} left {', '.join(still)} unresolved"
        return ""


def resolver_task(
    plan: Plan,
    task: Task,
    attempt: int,
    others: list[str],
    paths: list[str],
    manager: WorktreeManager,
) -> Task:
    """The resolver agent's task: the conflict, and the instructions of both sides' tasks."""
    by_id = {t.id: t for t in plan.tasks()}
    sides = [task.id, *(o for o in others if o != task.id)]
    instructions = {t: by_id[t].instructions if t in by_id else "" for t in sides}
    listed = "\n".join(f"- {p}" for p in paths)
    told = "\n\n".join(
        f"Task {t}{' (being merged)' if t == task.id else ' (already merged)'}:\n{text or '-'}"
        for t, text in instructions.items()
    )
    prompt = (
        f"Resolve a git merge conflict. This worktree is at the integration branch "
        f"{manager.branch}, with the work of task {task.id} (attempt {attempt}) being merged "
        f"into it; the merge is in progress. These files conflict:\n{listed}\n\n"
        "Edit them so that both sides' intent is kept, remove every conflict marker, and "
        "stage them with `git add`. Do not commit, do not abort the merge.\n\n" + told
    )
    return Task(
        id=f"{task.id}:resolve-{attempt}",
        name=f"resolve the merge conflict of {task.id}",
        instructions=prompt,
        inputs={
            "conflict": {
                "task": task.id,
                "attempt": attempt,
                "paths": paths,
                "integration": manager.branch,
                "tasks": instructions,
            }
        },
    )


# -- what the run's loop uses --------------------------------------------------------------


def open_worktrees(plan: Plan, state_dir: Path, run_id: int, store: SqliteStore) -> WorktreeManager:
    """The run's worktree manager, with its ledger in the run's journal."""
    from counterpoint.agents.ledger import WorktreeLedger
    from counterpoint.agents.worktree import repository_folder

    ledger = WorktreeLedger(store, run_id, state_dir)
    return WorktreeManager(repository_folder(plan), state_dir, run_id, plan.settings, ledger)


def task_dependencies(g: Graph, t: int) -> list[str]:
    """The tasks task ``t`` waits for: its ``needs`` and, through milestone and phase
    barriers, the tasks of the milestones and phases before it."""
    starts, pred = g.pred_start, g.pred
    seen: set[int] = set()
    stack, found = [t], []
    while stack:
        node = stack.pop()
        for p in pred[starts[node] : starts[node + 1]]:
            if p in seen:
                continue
            seen.add(p)
            if p < g.n_tasks:
                found.append(g.task_ids[p])
            else:
                stack.append(p)
    return found


def resolver_call(runners: Runners, plan: Plan) -> ResolverCall:
    """Runs ``settings.conflicts.resolver``'s runner on a resolver task, in a folder."""

    async def call(ctx: TaskContext, task: Task, folder: Path) -> Any:
        name = plan.settings.conflicts.resolver
        runner = runners.for_task(task.id, name)
        resolver_ctx = dataclasses.replace(
            ctx,
            task=task,
            agent=name,
            workdir=folder,
            log_dir=ctx.log_dir / f"resolver-{ctx.attempt}",
            workspace=None,
            spawner=None,
            decider=None,
        )
        resolver_ctx.log_dir.mkdir(parents=True, exist_ok=True)
        return await runner(resolver_ctx)

    return call
