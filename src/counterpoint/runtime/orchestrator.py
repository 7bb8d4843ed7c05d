"""The run loop: the one writer of run state.

Every ready task is dispatched the moment its own dependencies are done and an
able agent and all its resources are free (no lock-step supersteps). Results
come back as completions; the loop journals them, commits the journal, and
only then dispatches the dependents, so a crash never loses a completion that
a dependent has already acted on.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import random
import re
import shutil
import time
from collections import deque
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from counterpoint.agents.base import AgentLost, RateLimited, StateView, TaskContext, TaskFailed
from counterpoint.agents.python import load_callable
from counterpoint.allocation import AgentPool, Demand, ResourcePool
from counterpoint.messaging.bus import Bus, BusFull
from counterpoint.messaging.protocol import (
    Content,
    Message,
    MessageType,
    Status,
    now,
    status_update,
)
from counterpoint.plan.graph import Graph
from counterpoint.plan.model import OnFailure
from counterpoint.plan.writes import overlap
from counterpoint.queueing import ReadyQueue
from counterpoint.runtime.alerts import AlertMonitor
from counterpoint.runtime.candidates import Candidates
from counterpoint.runtime.coordination import Coordination, DecisionHandle
from counterpoint.runtime.dispatch_order import DispatchOrder
from counterpoint.runtime.escalation import Escalator
from counterpoint.runtime.events import Completion, Observers, RunEvent, TaskState
from counterpoint.runtime.following import Following
from counterpoint.runtime.gates import GateChecker, GateReport
from counterpoint.runtime.governing import Governing
from counterpoint.runtime.runners import Runners
from counterpoint.runtime.sampling import MetricSampler
from counterpoint.runtime.spawning import SpawnHandle, Spawning
from counterpoint.runtime.state import MISSING, Conflict, SharedState, StateError
from counterpoint.runtime.steering import Steering
from counterpoint.runtime.undo import Undoing
from counterpoint.store.sqlite import SqliteStore, TaskRecord

EXIT_OK, EXIT_FAILED, EXIT_CANCELLED = 0, 1, 3
DRAIN_NOTIFICATIONS_S = 5.0  # at the end, how long notifications still being sent may take
MAX_LOSSES = 3  # a task whose agent is lost more often than this fails
WAITING_NOTE_EVERY_S = 15.0
_SAFE = re.compile(r"[^A-Za-z0-9_.@-]")


def task_log_dir(state_dir: Path, run_id: int, task: str) -> Path:
    """Where a task's attempt logs live: ``logs/run-N/<task>/<attempt>.stdout``."""
    return state_dir / "logs" / f"run-{run_id}" / _SAFE.sub("_", task)


@dataclass
class RunOptions:
    time_scale: float = 1.0
    approve_as: str | None = None
    retry_failed: bool = False
    poll_s: float = 0.2
    kill_grace_s: float = 5.0
    seed: int | None = None
    #: ``local`` or ``ray`` (``--backend``); None: the plan's ``settings.backend``.
    backend: str | None = None
    #: The Ray cluster (``--ray-address``); None: the plan's ``settings.ray.address``.
    ray_address: str | None = None


class Orchestrator(Steering, Undoing, Spawning, Coordination, Governing, Candidates, Following):
    """Runs one plan to the end (or until cancelled), journaling every transition."""

    def __init__(
        self,
        graph: Graph,
        store: SqliteStore,
        run_id: int,
        runners: Runners,
        options: RunOptions,
        observers: Observers,
        state_dir: Path,
    ) -> None:
        self.g = graph
        self.plan = graph.plan
        self.store = store
        self.run_id = run_id
        self.runners = runners
        self.options = options
        self.observers = observers
        self.state_dir = state_dir
        self.plan_dir = (graph.plan.source_path or Path("plan.yaml")).parent
        n, nt = graph.n_nodes, graph.n_tasks
        self.state = [TaskState.PENDING] * nt
        self.attempts = [0] * nt
        self.failures = [0] * nt
        self.agent_of: list[int | None] = [None] * nt
        self.started: list[float | None] = [None] * nt
        self.error: dict[int, str] = {}
        self.blocked_by: dict[int, str] = {}
        self.done = bytearray(n)
        self.blocked = bytearray(n)
        self.waiting = [graph.pred_start[v + 1] - graph.pred_start[v] for v in range(n)]
        self.agents = AgentPool(self.plan.agents)
        self.resources = ResourcePool(self.plan.resources, time.monotonic())
        self.queue = ReadyQueue(self.plan.settings.aging)
        self.order = DispatchOrder(
            graph,
            self.plan.settings.dispatch,
            self.plan.settings.dispatch_search,
            options.seed or 0,
        )
        self.began = time.monotonic()
        self.background: set[asyncio.Task[None]] = set()  # dispatch schedule refreshes
        self.demands: dict[int, Demand] = {}
        self.running: dict[int, asyncio.Task[None]] = {}
        self.gates_running: dict[int, asyncio.Task[None]] = {}
        self.gates_waiting: set[int] = set()
        self.gate_rechecks: dict[int, float] = {}
        self.timers: list[tuple[float, int]] = []  # (monotonic time, task or -1)
        self.completions: deque[Completion] = deque()
        self.wake = asyncio.Event()
        self.cancelling: str | None = None
        self.failed_fast = False
        self.checker = GateChecker(self.plan_dir)
        self.rng = random.Random(options.seed)
        self._next_poll = 0.0
        self.progress: dict[int, tuple[float, str]] = {}
        self.tempdirs: dict[int, Path] = {}
        self.remote_workspaces: dict[int, dict[str, Any]] = {}  # task -> its branch
        self.bus = Bus(journal=self._journal_message)
        for name, spec in self.plan.agents.items():
            self.bus.subscribe(name, groups=spec.capabilities)
        self.losses = [0] * nt
        self.shared = SharedState(
            self.plan.shared_state,
            store,
            run_id,
            graph,
            load_reducer=lambda target: load_callable(target, self.plan_dir),
            voters=self.plan.settings.voting.voters,
        )
        self.writers_running: dict[int, list[str]] = {}  # serialized writes: task -> keys
        self.finished_at: dict[int, float] = {}  # completed task -> wall time
        self.parked: dict[int, str] = {}  # ready tasks waiting outside the queue, and why
        self.contended: dict[int, tuple[float, list[str]]] = {}  # task -> since, resources
        self.unrunnable: dict[int, str] = {}  # parked: no agent able to take it can work
        self.escalator = Escalator(
            self.plan.escalation,
            store,
            run_id,
            emit=self.emit,
            time_scale=options.time_scale,
            cwd=self.plan_dir,
            publish=self._publish_quietly,
        )
        self._init_undo()
        self._init_spawn()
        self._init_coordination()
        self._init_governor()
        self.sampler = MetricSampler(store, run_id, self.plan.settings.metrics_every)
        self.alerts = AlertMonitor(
            self.plan,
            store,
            run_id,
            emit=self.emit,
            publish=self._publish_quietly,
            escalator=self.escalator,
            time_scale=options.time_scale,
        )
        self.observers.observers[:0] = [self.sampler, self.alerts]
        self.hub_url: str | None = None
        self._waiting_noted = -math.inf
        for name in runners.remote_agents:  # until they connect
            self.agents.offline[self.agents.index[name]] = True

    # -- public -----------------------------------------------------------------

    async def run(self, previous: dict[str, TaskRecord] | None = None) -> int:
        """Run to the end; returns the exit code (0 done, 1 failures, 3 cancelled)."""
        self.began = time.monotonic()
        self._restore(previous or {})
        self.observers.attach(self.g)
        self.emit("run_started", tasks=self.g.n_tasks, resumed=bool(previous))
        self._plan_dispatch(resumed=bool(previous))
        if self.hub_url is not None:
            self.emit("hub_listening", url=self.hub_url, remote_agents=self.runners.remote_agents)
        self._poll_commands()  # e.g. a rollback asked for while the run was stopped
        try:
            while not self._finished():
                self._drain()
                self._coordinate()
                self._drive_rollbacks()
                self.store.flush()
                self._poll_commands()
                self._tick_escalations()
                self._fire_timers()
                self._dispatch()
                self._sample_metrics()
                if self._finished():
                    break
                self._note_waiting()
                await self._sleep()
        finally:
            await self._stop_everything()
            self._drain()
            self._sample_metrics(final=True)
            await self.escalator.drain(DRAIN_NOTIFICATIONS_S)
            self.store.flush()
        return self._conclude()

    def _sample_metrics(self, final: bool = False) -> None:
        """Journal a sample of the metrics when one is due, and check the alert rules."""
        now = time.monotonic()
        if final or self.sampler.due(now):
            values = self.sampler.sample(self, now)
            self.alerts.observe(values)
            values["alerts.firing"] = float(len(self.alerts.active))
            self.sampler.record(values)

    def cancel(self, reason: str = "cancelled") -> None:
        """Stop dispatching, cancel running tasks, and end the run (exit code 3)."""
        if self.cancelling is None:
            self.cancelling = reason
            self.emit("run_cancelling", reason=reason)
            for task in [*self.running.values(), *self.gates_running.values()]:
                task.cancel()
        self.wake.set()

    def force(self) -> None:
        """A second interrupt: kill every task's processes now instead of waiting for them."""
        from counterpoint.agents import shell

        self.cancel("interrupted twice")
        shell.kill_all()
        self.wake.set()

    def snapshot(self) -> dict[str, Any]:
        """Counts per state, and the running tasks (for live displays)."""
        counts: dict[str, int] = {}
        for s in self.state:
            counts[s.value] = counts.get(s.value, 0) + 1
        running = [
            {
                "task": self.g.task_ids[t],
                "agent": self._agent_name(t),
                "started": self.started[t],
                "progress": self.progress.get(t, (0.0, ""))[0],
            }
            for t in self.running
        ]
        agents = {name: self.agents.state(a).value for a, name in enumerate(self.agents.names)}
        return {
            "counts": counts,
            "running": running,
            "waiting_gates": len(self.gates_waiting),
            "agents": agents,
        }

    def metrics_sample(self) -> dict[str, Any]:
        """What the Prometheus gauges show (read at each scrape)."""
        snap = self.snapshot()
        return {
            "tasks": snap["counts"],
            "agents": snap["agents"],
            "queue": len(self.queue),
            "waiting": len(self.parked),
            "running": len(self.running),
            "conflicts_open": len(self.shared.open_conflicts()),
            "escalations_open": sum(1 for c in self.escalator.cases() if c.status == "open"),
            "queue_oldest_wait_s": self.queue.oldest_wait(time.monotonic()),
            "alerts": self.alerts.firing(),
            "messages": {
                k.removeprefix("messages."): v
                for k, v in self.sampler.counts.items()
                if k.startswith("messages.") and k != "messages.total"
            },
            "resources": self.resources.in_use(),
            "rollback_success_rate": self.sampler.last.get("rollbacks.success_rate", 1.0),
        }

    def emit(self, kind: str, task: int | None = None, **data: Any) -> None:
        tid = self.g.task_ids[task] if task is not None else None
        self.store.event(self.run_id, kind, tid, **data)
        self.observers.emit(RunEvent(kind, tid, data))

    # -- start and resume -------------------------------------------------------

    def _restore(self, previous: dict[str, TaskRecord]) -> None:
        dropped = self._restore_spawned()
        self.shared.restore()
        self.escalator.restore()
        self.governor.restore()
        if previous:
            self.sampler.restore()
        self.alerts.restore()
        self._restore_rollbacks()
        for name, state in self.store.agent_states(self.run_id).items():
            self._set_agent_state(name, state, journal=False)
        failed: list[int] = []
        undone: list[int] = []
        ended = self.store.attempt_counts(self.run_id) if previous else {}
        for t, tid in enumerate(self.g.task_ids):
            rec = previous.get(tid)
            if rec is not None:
                self._restore_task(t, rec, failed, undone)
                self._restore_budget(t, rec, ended.get(tid, {}))
        self._settle_restored(previous, dropped)
        self._recount()
        for t in failed:
            self._block_downstream(t, f"{self.g.task_ids[t]} failed")
        for t in undone:
            self._block_downstream(t, f"{self.g.task_ids[t]} was rolled back")
        for v in [v for v in range(self.g.n_nodes) if self._startable(v)]:
            self._on_ready(v)
        self._check_budget()  # a resumed run whose budget is already spent starts nothing

    def _restore_task(self, t: int, rec: TaskRecord, failed: list[int], undone: list[int]) -> None:
        """One task's state from the journal; failed and rolled-back ones are noted."""
        tid = self.g.task_ids[t]
        self.attempts[t] = rec.attempts
        if rec.state == TaskState.COMPLETED:
            self.state[t] = TaskState.COMPLETED
            self.done[t] = 1
            self.finished_at[t] = rec.finished or 0.0
        elif rec.state == TaskState.FAILED and not self.options.retry_failed:
            self.state[t] = TaskState.FAILED
            self.error[t] = rec.error or "failed"
            failed.append(t)
        elif not self.options.retry_failed and (
            rec.state == TaskState.ROLLED_BACK
            or (rec.state == TaskState.BLOCKED and _rolled_back(rec.blocked_by))
        ):  # a rolled-back scope stays undone until --retry-failed
            self.state[t] = TaskState(rec.state)
            self.blocked_by[t] = rec.blocked_by or ""
            self.finished_at[t] = rec.finished or 0.0
            self.blocked[t] = 1
            undone.append(t)
        elif rec.state != TaskState.PENDING:
            if rec.state == TaskState.RUNNING and rec.attempts:
                self.store.save_attempt(
                    self.run_id,
                    tid,
                    rec.attempts,
                    rec.agent,
                    rec.started or 0.0,
                    None,
                    "interrupted",
                    "the run stopped while this attempt was running",
                )
            self.state[t] = TaskState.PENDING
            self._save(t)

    def _restore_budget(self, t: int, rec: TaskRecord, ended: dict[str, int]) -> None:
        """The retries (and agent losses) a task used before the run stopped still count,
        so a resume never gives a task waiting to retry a fresh budget; ``--retry-failed``
        does, for the tasks it runs again."""
        fresh = self.options.retry_failed and rec.state in (
            TaskState.FAILED,
            TaskState.ROLLED_BACK,
            TaskState.BLOCKED,
        )
        if not fresh:
            self.failures[t] = ended.get("failed", 0) + ended.get("timed_out", 0)
        self.losses[t] = ended.get("lost", 0)

    def _startable(self, v: int) -> bool:
        if self.done[v] or self.blocked[v] or self.waiting[v]:
            return False
        return v >= self.g.n_tasks or self.state[v] is not TaskState.FAILED

    def _recount(self) -> None:
        ps, pred = self.g.pred_start, self.g.pred
        for v in range(self.g.n_nodes):
            self.waiting[v] = sum(1 for i in range(ps[v], ps[v + 1]) if not self.done[pred[i]])

    # -- the loop ---------------------------------------------------------------

    def _finished(self) -> bool:
        if self.running or self.gates_running or self.comp_running or self.comp_ended:
            return False
        if self.cancelling is not None or self.failed_fast:
            return True
        if self.rollbacks_open():
            return False
        return not self.queue and not self.timers and not self.gates_waiting and not self.parked

    async def _sleep(self) -> None:
        now = time.monotonic()
        deadline = min(self._next_poll, self.sampler.next_due, *self.gate_rechecks.values())
        if self.timers:
            deadline = min(deadline, self.timers[0][0])
        escalation = self.escalator.next_deadline()
        if escalation is not None:
            deadline = min(deadline, escalation)
        retry = self.next_compensation_retry()
        if retry is not None:
            deadline = min(deadline, retry)
        if self.completions:
            return
        try:
            async with asyncio.timeout(max(0.0, deadline - now)):
                await self.wake.wait()
        except TimeoutError:
            pass
        self.wake.clear()

    def _fire_timers(self) -> None:
        if self.gate_rechecks:
            self._recheck_due()
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            _, t = heapq.heappop(self.timers)
            if t >= 0 and self.state[t] is TaskState.RETRYING and self.cancelling is None:
                self._enqueue(t)

    def _timer(self, when: float, task: int = -1) -> None:
        heapq.heappush(self.timers, (when, task))

    # -- dispatch ---------------------------------------------------------------

    def _demand(self, t: int) -> Demand:
        demand = self.demands.get(t)
        if demand is None:
            task = self.g.tasks[t]
            pool = self.agents.pool_for(task.requires) if self.agents.names else -1
            demand = self.demands[t] = self.resources.demand(task.resources, pool)
        return demand

    def _on_ready(self, v: int) -> None:
        """``v``'s dependencies are all done: queue a task, open a barrier or check its gate."""
        if v < self.g.n_tasks:
            if self.state[v] is TaskState.PENDING and v not in self.dormant:
                self._enqueue(v)
            return
        gate = self._gate_of(v)
        if gate is None:
            self._complete_node(v)
        else:
            self._start_gate(v)

    def _enqueue(self, t: int) -> None:
        if self.coordinating and self._calls_for(t):
            return  # contract net: it waits for the proposals of a call
        demand = self._demand(t)
        now = time.monotonic()
        key = self.order.key(t, self._plan_time(now))
        self.queue.push(t, demand, self.g.priority_rank[t], key, now)
        self.state[t] = TaskState.READY

    def _dispatch(self) -> None:
        if self.cancelling is not None or self.failed_fast:
            return
        cap = self.plan.settings.max_concurrency
        now = time.monotonic()
        for demand, t in self.queue.candidates(now):
            assert isinstance(demand, Demand)
            if self.state[t] is not TaskState.READY:  # blocked while queued (a rollback)
                self.queue.take(demand, t, now)
                continue
            if cap is not None and len(self.running) >= cap:
                self.queue.hold_all(now)
                return
            ready = self.resources.ready_at(demand, now)
            if ready > now:
                if ready != math.inf:
                    self._timer(ready)
                self._note_contention(t, demand, now)
                self.queue.hold(demand, now)
                continue
            if self._parks(demand, t, now):
                continue
            agent = self.agents.pick(demand.pool) if demand.pool >= 0 else None
            if demand.pool >= 0 and agent is None:
                self.queue.hold(demand, now)
                if self.awards and self._winner_gone(demand, t, now):
                    continue  # contract net: its winner left; it is called again
                if not self._can_ever_run(demand.pool):
                    self._park_unrunnable(demand, t, now)
                continue
            if self._held_back(t, demand, now):
                self.queue.hold(demand, now)
                continue
            waited, first_chance = self.queue.take(demand, t, now)
            self.sampler.dispatched(waited, first_chance)
            self._start(t, agent, demand, now)

    def _start(self, t: int, agent: int | None, demand: Demand, now: float) -> None:
        if self.unrunnable.pop(t, None) is not None:
            self.escalator.resolve(f"task:{self.g.task_ids[t]}", {"by": "run", "started": True})
        waited = self.contended.pop(t, None)
        if waited is not None:
            since, names = waited
            self.emit("resource_waited", t, resources=names, waited_s=round(now - since, 6))
        self.resources.take(demand, now)
        if agent is not None:
            self.agents.take(agent)
        self.attempts[t] += 1
        self.agent_of[t] = agent
        self.started[t] = time.time()
        self.state[t] = TaskState.RUNNING
        if self.plan.settings.serialize_conflicting_writes and self.g.tasks[t].writes:
            self.writers_running[t] = self.g.tasks[t].writes
        ctx = self._context(t)
        self.store.save_attempt(
            self.run_id,
            ctx.task_id,
            ctx.attempt,
            ctx.agent,
            self.started[t] or 0.0,
            None,
            "running",
        )
        self._save(t)
        rollback = self.g.tasks[t].rollback
        if rollback is not None:  # journaled with the attempt, before the task runs
            self.rollback_journal.register(
                ctx.task_id, ctx.attempt, rollback.model_dump(exclude_defaults=True), ctx.agent
            )
        self.emit("task_started", t, agent=ctx.agent, attempt=ctx.attempt)
        self.bus.started(ctx.task_id, ctx.sender)
        self.running[t] = asyncio.create_task(self._execute(t, ctx))

    def _context(self, t: int) -> TaskContext:
        task = self.g.tasks[t]
        log_dir = task_log_dir(self.state_dir, self.run_id, task.id)
        return TaskContext(
            run_id=str(self.run_id),
            task=task,
            attempt=self.attempts[t],
            agent=self._agent_name(t),
            state_dir=self.state_dir,
            workdir=self._workdir(t),
            log_dir=log_dir,
            time_scale=self.options.time_scale,
            estimate_s=self.g.duration[t] * self.options.time_scale,
            on_progress=(
                self._note_progress
                if self.runners.is_remote(task.id, self._agent_name(t))
                else self._on_progress
            ),
            bus=self.bus,
            response_sla_s=self.plan.settings.response_sla * self.options.time_scale,
            state=StateView(self.shared.snapshot(task.reads) if task.reads else {}),
            workspace=self.remote_workspaces.get(t),
            spawner=SpawnHandle(self, t, self.attempts[t]),
            decider=DecisionHandle(self, t),
        )

    def _workdir(self, t: int) -> Path:
        """The plan's folder; a fresh folder per attempt for ``workspace: tempdir`` agents; a
        git worktree on its own branch per attempt for ``workspace: worktree`` agents."""
        from counterpoint.agents.attempt import open_worktrees, task_dependencies
        from counterpoint.agents.worktree import WorktreeError, WorktreeManager

        agent = self.agent_of[t]
        workspace = (
            "none" if agent is None else self.plan.agents[self.agents.names[agent]].workspace
        )
        if workspace == "worktree":
            worktrees: WorktreeManager | None = getattr(self, "worktrees", None)
            if worktrees is None:  # one per run, made when first needed
                worktrees = open_worktrees(self.plan, self.state_dir, self.run_id, self.store)
                self.worktrees = worktrees
            was_started = worktrees.started
            tid, name = self.g.task_ids[t], self.agents.names[agent]  # type: ignore[index]
            deps = task_dependencies(self.g, t)  # the task branches from their merged work
            if self.runners.is_remote(tid, name):
                attempt = self.attempts[t]
                try:
                    self.remote_workspaces[t] = worktrees.prepare_remote(tid, attempt, name, deps)
                except WorktreeError as exc:  # the agent is told, and fails the attempt
                    why = f"could not prepare the task's branch: {exc}"
                    worktrees.unprepared[(tid, attempt)] = why
                    self.remote_workspaces[t] = {"kind": "worktree", "error": why}
                path = self.plan_dir  # the agent works in a worktree of its own clone
            else:
                path = worktrees.workdir(tid, self.attempts[t], deps)
            if worktrees.started and not was_started:
                self.emit(
                    "integration_branch",
                    repository=str(worktrees.repo),
                    branch=worktrees.branch,
                    base=worktrees.base,
                )
                if worktrees.reconciled:  # a resume after a crash
                    self.emit("worktrees_reconciled", notes=worktrees.reconciled)
            return path
        if workspace != "tempdir":
            return self.plan_dir
        name = f"{_SAFE.sub('_', self.g.task_ids[t])}-{self.attempts[t]}"
        folder = self.state_dir / "workspaces" / f"run-{self.run_id}" / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        self.tempdirs[t] = folder
        return folder

    def exchange_of(self, agent: str) -> Path | None:
        """``agent``'s exchange repository for its task branches (None: it has none yet)."""
        worktrees = getattr(self, "worktrees", None)
        if worktrees is None or agent not in self.agents.index or not worktrees.started:
            return None
        path: Path = worktrees.exchange_path(agent)
        return path if path.is_dir() else None

    def _clean_workspace(
        self, t: int, keep: bool, result: dict[str, Any] | None = None
    ) -> str | None:
        """Remove a task's temporary workspace after success; keep it after a failure.

        A worktree's branch is merged after success (then the worktree is removed) and
        kept after a failure. Returns why a successful attempt must count as failed: a
        merge conflict (also emitted as ``merge_conflict``) or a git failure.
        """
        from counterpoint.agents.worktree import WorktreeManager

        folder = self.tempdirs.pop(t, None)
        if folder is not None and not keep:
            shutil.rmtree(folder, ignore_errors=True)
        worktrees: WorktreeManager | None = getattr(self, "worktrees", None)
        tid, attempt = self.g.task_ids[t], self.attempts[t]
        if worktrees is None or not worktrees.holds(tid, attempt):
            return None
        pushed = (result or {}).get("workspace")
        commit = pushed.get("commit") if isinstance(pushed, dict) else None
        session = (result or {}).get("session_id")
        if isinstance(session, str) and worktrees.ledger is not None:
            worktrees.ledger.record_session(tid, attempt, session)
        self.remote_workspaces.pop(t, None)
        merge = worktrees.finish(
            tid, attempt, succeeded=not keep, commit=commit if isinstance(commit, str) else None
        )
        if merge is not None and merge.conflict is not None:
            details = merge.conflict.event()
            self.emit("merge_conflict", t, **details)
            conflict = self.shared.record_merge(tid, details)
            self._conflict_raised(conflict)
        elif merge is not None and merge.error is None and not keep:
            if merge.resolved is not None:  # a conflict that appeared only at the merge
                paths, how = merge.resolved
                self.emit("merge_resolved", t, attempt=attempt, paths=paths, how=how)
            for conflict in self.shared.merged(tid, attempt):
                self._decided(conflict)
        return None if merge is None else merge.error

    def _worktree_steps(self, t: int, ctx: TaskContext) -> Any:
        """The steps around a local worktree attempt's agent (None: it has no worktree)."""
        from counterpoint.agents.attempt import WorktreeAttempt, resolver_call

        worktrees = getattr(self, "worktrees", None)
        if worktrees is None or worktrees.prepared.get(ctx.task_id) != ctx.attempt:
            return None
        resolve = resolver_call(self.runners, self.plan)
        return WorktreeAttempt(
            worktrees, self.plan, ctx, resolve, lambda kind, **data: self.emit(kind, t, **data)
        )

    async def _execute(self, t: int, ctx: TaskContext) -> None:
        timeout = self.plan.effective(ctx.task).timeout_s * self.options.time_scale
        outcome = Completion(t, ctx.attempt, "completed")
        try:
            runner = self.runners.for_task(ctx.task_id, ctx.agent)
            steps = self._worktree_steps(t, ctx)
            best = self._best_of_n(t, ctx, steps)  # attempts: N, candidates in worktrees
            async with asyncio.timeout(timeout if timeout > 0 else None):
                if best is not None:  # the winner's work is now on the attempt's branch
                    outcome.result = await best.run()
                else:
                    if steps is not None:  # setup, then the worktree is checked
                        await steps.before()
                    outcome.result = await runner(ctx)
                if steps is not None:  # check, commit, resolve a predicted conflict
                    await steps.after(checked=best is not None)
            outcome.writes = _writes_of(ctx, outcome.result)
        except TaskFailed as exc:
            outcome.kind, outcome.error = "failed", str(exc)
        except RateLimited as exc:
            outcome.kind, outcome.retry_after_s, outcome.error = (
                "rate_limited",
                exc.retry_after_s,
                str(exc),
            )
        except AgentLost as exc:
            outcome.kind, outcome.error = "lost", str(exc)
        except TimeoutError:
            outcome.kind, outcome.error = "timed_out", f"timed out after {timeout:g}s"
        except asyncio.CancelledError:
            outcome.kind, outcome.error = "cancelled", self.cancelling or "cancelled"
        except Exception as exc:
            outcome.kind, outcome.error = "failed", f"{type(exc).__name__}: {exc}"
        self.completions.append(outcome)
        self.wake.set()

    # -- completions ------------------------------------------------------------

    def _drain(self) -> None:
        while self.completions:
            done = self.completions.popleft()
            if done.kind == "gate":
                self._gate_done(done)
                continue
            self.running.pop(done.node, None)
            self.bus.finished(self.g.task_ids[done.node])
            self._release(done.node)
            if done.kind == "completed" and done.writes:
                try:  # refused writes fail the attempt before its work is merged
                    self.shared.validate(done.node, done.writes)
                except StateError as exc:
                    done.kind, done.error = "failed", str(exc)
            if done.kind == "completed":  # an attempt that had to change code and did not
                unchanged = self._unchanged_attempt(done, getattr(self, "worktrees", None))
                if unchanged is not None:
                    done.kind, done.error = "failed", unchanged
            error = self._clean_workspace(done.node, done.kind != "completed", done.result)
            if error is not None and done.kind in ("completed", "failed"):
                done.kind, done.error = "failed", error  # e.g. a merge conflict
            if self.withdrawing and done.node in self.withdrawing:
                if done.kind != "completed":  # cancelled with its parent
                    self.withdrawn_ended(done)
                    continue
                del self.withdrawing[done.node]
            handler = getattr(self, f"_on_{done.kind}")
            handler(done)
            if self.children and done.node in self.children:
                self._parent_ended(done.node)
            self._check_budget()
        worktrees = getattr(self, "worktrees", None)
        if worktrees is not None and self._finished():  # the run ends: free its branch
            worktrees.cleanup()

    def _parent_ended(self, t: int) -> None:
        st = self.state[t]
        if st is TaskState.COMPLETED:
            self.parent_completed(t)
        elif st in (TaskState.FAILED, TaskState.BLOCKED, TaskState.CANCELLED):
            self.parent_stopped(t, "failed")
        else:  # retrying, or back in the queue
            self.parent_stopped(t, "retry")

    def _release(self, t: int) -> None:
        if self.child_waits or self.lent:
            self._stop_waiting(t)  # a wait of the attempt that ended (its slot comes back)
        if self.writers_running.pop(t, None) is not None:
            self._unpark()
        self.resources.release(self.demands[t])
        agent = self.agent_of[t]
        if agent is not None:
            self.agents.release(agent)

    def _on_completed(self, done: Completion) -> None:
        t = done.node
        if done.writes and not self._commit_writes(done):
            return
        self._draw_usage(t, done.result)
        if t in self.parent_of:
            self.child_results[t] = done.result
        self.finished_at[t] = time.time()
        self.state[t] = TaskState.COMPLETED
        self._finish_attempt(done, "completed")
        self._save(t, result=done.result)
        self.emit("task_completed", t, attempt=done.attempt, usage=done.result.get("usage"))
        if self.order.drifted(t, self._plan_time(time.monotonic())) or self.order.due():
            self._refresh_dispatch()
        if t in self.rolling:
            self.rollback_member_completed(t)
        self._complete_node(t)

    def _on_failed(self, done: Completion) -> None:
        t = done.node
        self.failures[t] += 1
        self._finish_attempt(done, done.kind)
        retries = self.plan.effective(self.g.tasks[t]).retries
        if self.failures[t] <= retries and self.cancelling is None and not self.failed_fast:
            delay = self._backoff(self.failures[t])
            self.state[t] = TaskState.RETRYING
            self.error[t] = done.error
            self._save(t)
            self.emit("task_retrying", t, attempt=done.attempt, error=done.error, delay_s=delay)
            self._timer(time.monotonic() + delay, t)
            return
        self._fail(t, done.error)

    _on_timed_out = _on_failed

    def _on_rate_limited(self, done: Completion) -> None:
        t = done.node
        now = time.monotonic()
        until = now + done.retry_after_s
        for r, _ in self.demands[t].rated:
            self.resources.buckets[r].drain(now, until)
        self._finish_attempt(done, "rate_limited")
        self.state[t] = TaskState.RETRYING
        self._save(t)
        self.emit("task_rate_limited", t, retry_after_s=done.retry_after_s)
        self._timer(until, t)

    def _on_lost(self, done: Completion) -> None:
        """The agent was lost: the task goes back to the queue without using a retry."""
        t = done.node
        self.losses[t] += 1
        self._finish_attempt(done, "lost")
        if self.losses[t] > MAX_LOSSES:
            self._fail(t, f"lost its agent {self.losses[t]} times; last: {done.error}")
            return
        if self.cancelling is not None or self.failed_fast:
            self.state[t] = TaskState.CANCELLED
            self._save(t)
            return
        self.emit("task_requeued", t, attempt=done.attempt, reason=done.error)
        self._enqueue(t)
        self._save(t)

    def _on_cancelled(self, done: Completion) -> None:
        t = done.node
        self.state[t] = TaskState.CANCELLED
        self._finish_attempt(done, "cancelled")
        self._save(t)
        self.emit("task_cancelled", t, reason=done.error)

    def _fail(self, t: int, error: str) -> None:
        self.state[t] = TaskState.FAILED
        self.error[t] = error
        self._save(t)
        policy = self.plan.effective(self.g.tasks[t]).on_failure
        self.emit("task_failed", t, error=error, policy=policy.value)
        tid = self.g.task_ids[t]
        if policy is OnFailure.FAIL_FAST:
            self._fail_fast(tid)
            return
        self._block_downstream(t, f"{tid} failed")
        if policy is not OnFailure.BLOCK:  # rollback_milestone, rollback_phase, rollback_run
            kind = policy.value.removeprefix("rollback_")
            if kind == "milestone":
                scope = self.g.milestones[self.g.milestone_of_task[t]].id
            elif kind == "phase":
                scope = self.plan.phases[self.g.phase_of_task[t]].id
            else:
                scope = "run"
            self.start_rollback(kind, scope, f"{tid} failed")

    def _fail_fast(self, tid: str) -> None:
        self.failed_fast = True
        for task in self.running.values():
            task.cancel()
        for v in range(self.g.n_tasks):
            if self.state[v] in (TaskState.PENDING, TaskState.READY, TaskState.RETRYING):
                self._mark_blocked(v, f"{tid} failed (fail_fast)")

    def _finish_attempt(self, done: Completion, status: str) -> None:
        t = done.node
        self.store.save_attempt(
            self.run_id,
            self.g.task_ids[t],
            done.attempt,
            self._agent_name(t),
            self.started[t] or 0.0,
            time.time(),
            status,
            done.error or None,
        )
        self._govern(done, task_log_dir(self.state_dir, self.run_id, self.g.task_ids[t]))

    def _backoff(self, failures: int) -> float:
        s = self.plan.settings
        base = min(s.retry_backoff_max, s.retry_backoff * 2.0 ** (failures - 1))
        return base * (0.5 + self.rng.random() / 2)

    def _draw_usage(self, t: int, result: dict[str, Any]) -> None:
        usage = result.get("usage")
        if not isinstance(usage, dict):
            return
        now = time.monotonic()
        for name, spec in self.plan.resources.items():
            amount = usage.get(spec.usage) if spec.usage else None
            if isinstance(amount, int | float) and not isinstance(amount, bool):
                held = self.g.tasks[t].resources.get(name, 0)
                self.resources.buckets[self.resources.index[name]].take(amount - held, now)

    # -- the graph ----------------------------------------------------------------

    def _complete_node(self, v: int) -> None:
        self.done[v] = 1
        ss, succ = self.g.succ_start, self.g.succ
        for i in range(ss[v], ss[v + 1]):
            w = succ[i]
            self.waiting[w] -= 1
            if self.waiting[w] == 0 and not self.blocked[w]:
                self._on_ready(w)

    def _block_downstream(self, v: int, reason: str) -> None:
        """Block everything that waits on ``v``; each blocked task's event names the chain
        of dependencies from ``v`` to it. A dependency conflict: it goes up the ladder."""
        origin = self.g.label(v) if v >= self.g.n_tasks else self.g.task_ids[v]
        stack = [(v, [origin])]
        blocked = []
        ss, succ = self.g.succ_start, self.g.succ
        while stack:
            u, chain = stack.pop()
            for i in range(ss[u], ss[u + 1]):
                w = succ[i]
                if w < self.g.n_tasks and self.state[w] is TaskState.FAILED:
                    continue  # what waits on it was blocked when it failed
                if not self.blocked[w] and not self.done[w]:
                    link = [*chain, self.g.task_ids[w]] if w < self.g.n_tasks else chain
                    self._mark_blocked(w, reason, link)
                    stack.append((w, link))
                    if w < self.g.n_tasks:
                        blocked.append(self.g.task_ids[w])
        if blocked and not self.failed_fast and v < self.g.n_tasks:  # gates have their own case
            self.escalator.open(
                f"dependency:{origin}",
                "dependency",
                f"{len(blocked)} task(s) can never start: {reason}",
                {"origin": origin, "reason": reason, "blocked": sorted(blocked)},
            )

    def _mark_blocked(self, v: int, reason: str, chain: list[str] | None = None) -> None:
        self.blocked[v] = 1
        if v < self.g.n_tasks:
            self.state[v] = TaskState.BLOCKED
            self.blocked_by[v] = reason
            self._save(v)
            if chain is None:
                self.emit("task_blocked", v, reason=reason)
            else:
                self.emit("task_blocked", v, reason=reason, chain=chain)

    # -- the end ----------------------------------------------------------------------

    async def _stop_everything(self) -> None:
        pending = [
            *self.running.values(),
            *self.gates_running.values(),
            *self.comp_running.values(),
            *self.coordination_jobs(),
            *self.background,
        ]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    def _conclude(self) -> int:
        counts = self.snapshot()["counts"]
        if self.cancelling is not None:
            code = EXIT_CANCELLED
        elif (
            counts.get("failed")
            or counts.get("blocked")
            or counts.get("rolled_back")
            or self.failed_fast
        ):
            code = EXIT_FAILED
        else:
            code = EXIT_OK
        status = {EXIT_OK: "completed", EXIT_FAILED: "failed", EXIT_CANCELLED: "cancelled"}[code]
        self.emit("run_finished", status=status, exit_code=code, counts=counts)
        self.store.set_run_status(self.run_id, status, code)
        return code

    def _save(self, t: int, result: dict[str, Any] | None = None) -> None:
        self.store.save_task(
            self.run_id,
            TaskRecord(
                task=self.g.task_ids[t],
                state=self.state[t].value,
                attempts=self.attempts[t],
                agent=self._agent_name(t),
                started=self.started[t],
                finished=time.time() if self.state[t].terminal else None,
                error=self.error.get(t),
                blocked_by=self.blocked_by.get(t),
                result=result,
            ),
        )
        if self.parent_of and t in self.parent_of:
            self.child_changed(t)

    def _agent_name(self, t: int) -> str | None:
        a = self.agent_of[t]
        return self.agents.names[a] if a is not None else None

    def _journal_message(self, message: Message) -> None:
        self.store.message(self.run_id, message)
        self.sampler.message(message.type.value)

    def _check_messages(self) -> None:
        """Raise overdue-response and stalled-task notifications (journaled, observed)."""
        silence = self.plan.settings.status_every * self.options.time_scale
        for notice in [*self.bus.overdue(), *self.bus.stalled(silence)]:
            with suppress(BusFull):  # an agent not reading its mailbox misses the copy
                self.bus.publish_nowait(notice)
            content = notice.content
            tid = content.task_id
            t = self.g.index.get(tid) if tid else None
            self.emit(content.event_type or "notification", t, **(content.data or {}))
        for request_id, tid, late_s in self.bus.answered_late():
            t = self.g.index.get(tid) if tid else None
            self.emit("response_received", t, request_id=request_id, late_s=round(late_s, 3))

    def _on_progress(self, task_id: str, percent: float, message: str) -> None:
        t = self.g.index[task_id]
        self.bus.publish_nowait(
            status_update(
                self._agent_name(t) or f"task:{task_id}",
                task_id,
                Status.IN_PROGRESS,
                percent,
                message=message,
            )
        )
        self._note_progress(task_id, percent, message)

    def _note_progress(self, task_id: str, percent: float, message: str) -> None:
        """Show progress a remote agent reported (its status update is already journaled)."""
        t = self.g.index[task_id]
        self.progress[t] = (percent, message)
        self.observers.emit(
            RunEvent("task_progress", task_id, {"progress": percent, "message": message})
        )

    # -- remote agents -----------------------------------------------------------------

    def remote_state(self, agent: str, state: str, info: dict[str, Any]) -> None:
        """The hub says a remote agent connected (``available``), dropped or was lost."""
        a = self.agents.index.get(agent)
        if a is None:
            return
        if state == "available":
            self.agents.offline[a] = self.agents.lost[a] = False
            capacity = min(self.plan.agents[agent].capacity, int(info.get("capacity", 1)))
            self.agents.set_capacity(a, capacity)
            self.emit("agent_connected", agent=agent, **info)
            self._agents_changed()
        elif state == "offline":
            self.agents.offline[a] = True
            self.emit("agent_disconnected", agent=agent, **info)
        elif state == "lost":
            self.agents.lost[a] = True
            self.emit("agent_lost", agent=agent, **info)
            notice = Message(
                sender="orchestrator",
                recipient="*",
                type=MessageType.NOTIFICATION,
                timestamp=now(),
                priority="high",
                content=Content(
                    event_type="agent_lost", severity="warning", data={"agent": agent, **info}
                ),
            )
            with suppress(BusFull):
                self.bus.publish_nowait(notice)
        self.wake.set()

    def _note_waiting(self) -> None:
        """While nothing runs and remote agents are missing, say what the run waits for."""
        if self.running or not self.queue or self.hub_url is None:
            return
        now = time.monotonic()
        if now - self._waiting_noted < WAITING_NOTE_EVERY_S:
            return
        missing = [
            name
            for name in self.runners.remote_agents
            if not self.agents.usable(self.agents.index[name])
        ]
        if missing:
            self._waiting_noted = now
            self.emit("waiting_for_agents", agents=missing, url=self.hub_url)

    # -- shared state -------------------------------------------------------------------

    def _commit_writes(self, done: Completion) -> bool:
        """Commit a completed task's writes; False (and the attempt failed) if refused."""
        t = done.node
        try:
            conflicts = self.shared.commit(
                t, done.writes, self._agent_name(t), done.attempt, self._serialized_before
            )
        except StateError as exc:
            done.kind, done.error = "failed", str(exc)
            self._on_failed(done)
            return False
        self.emit("state_written", t, keys=sorted(done.writes))
        for conflict in conflicts:
            self._conflict_raised(conflict)
        return True

    def _serialized_before(self, w: int, t: int) -> bool:
        """With serialized writes, ``w`` finished before ``t`` started: ``t`` saw its write."""
        if not self.plan.settings.serialize_conflicting_writes:
            return False
        started = self.started[t]
        return (
            self.state[w] is TaskState.COMPLETED
            and started is not None
            and (self.finished_at.get(w, math.inf) <= started)
        )

    def _conflict_raised(self, conflict: Conflict) -> None:
        self._conflict_event("conflict_detected", conflict)
        if conflict.status == "resolved":  # decided now, perhaps after waiting open
            self._decided(conflict)
            return
        if conflict.policy == "vote" and self._ballot_decides(conflict):
            self._notify_conflict(conflict)  # its voters decide first (runtime/coordination.py)
            return
        self.escalator.open(
            f"conflict:{conflict.id}",
            "conflict",
            f"tasks {', '.join(conflict.tasks)} wrote different values to {conflict.key!r}",
            conflict.to_json(),
        )
        self._notify_conflict(conflict)

    def _conflict_event(self, kind: str, conflict: Conflict) -> None:
        data = conflict.to_json()
        data["conflict_kind"] = data.pop("kind")
        data["conflict"] = data.pop("id")
        self.emit(kind, None, **data)

    def _notify_conflict(self, conflict: Conflict) -> None:
        resolved = conflict.status == "resolved"
        notice = Message(
            sender="orchestrator",
            recipient="*",
            type=MessageType.NOTIFICATION,
            timestamp=now(),
            priority="medium" if resolved else "high",
            content=Content(
                event_type="conflict_resolved" if resolved else "conflict_detected",
                severity="info" if resolved else "warning",
                data=conflict.to_json(),
            ),
        )
        with suppress(BusFull):
            self.bus.publish_nowait(notice)

    def _tick_escalations(self) -> None:
        """Move overdue cases up their ladder; apply ``escalation.exhausted`` to the rest."""
        for case in self.escalator.tick():
            if self.plan.escalation.exhausted != "fail":
                continue  # block: it waits for a person however long it takes
            kind, _, ident = case.subject.partition(":")
            if kind == "conflict" and ident.isdigit():
                self.shared.fail(int(ident), "no more escalation levels available")
                self._conflict_failed(int(ident))
                self._unpark()
            else:
                self._escalation_failed(case.subject)

    def _escalation_failed(self, subject: str) -> None:
        """A gate waiting for approval, or held for a recheck, did not pass before its
        escalation ran out: what waits on it is blocked. (A gate that failed without a
        ``recheck`` has blocked its work already.)"""
        if self._coordination_failed(subject):
            return  # a call for proposals or a decision (runtime/coordination.py)
        kind, _, gate_id = subject.partition(":")
        t = self.g.index.get(gate_id) if kind == "task" else None
        if t is not None and t in self.unrunnable:
            reason = self.unrunnable.pop(t)
            self.parked.pop(t, None)
            self._fail(t, f"{reason}; no more escalation levels available")
            return
        if kind != "gate":
            return
        for v in list(self.gates_waiting):
            site = self._gate_of(v)
            if site is not None and site.gate_id == gate_id:
                self.gates_waiting.discard(v)
                self.gate_rechecks.pop(v, None)
                reason = f"gate {gate_id} did not pass in time: no more escalation levels available"
                self.emit("gate_abandoned", None, gate=gate_id, reason=reason)
                self._block_downstream(v, reason)

    def _gate_blocked(self, gate_id: str, report: GateReport) -> None:
        waiting = report.waiting
        self.escalator.open(
            f"gate:{gate_id}",
            "gate",
            f"gate {gate_id} is {'waiting for approval' if waiting else report.status}",
            report.to_json(),
        )

    def _gate_passed(self, gate_id: str, report: GateReport) -> None:
        self.escalator.resolve(f"gate:{gate_id}", {"by": "gate", "status": report.status})

    def _publish_quietly(self, message: Message) -> None:
        with suppress(BusFull):
            self.bus.publish_nowait(message)

    def _parks(self, demand: Demand, t: int, now: float) -> bool:
        """Take a ready task out of the queue while the shared state makes it wait: it reads
        a key under an open conflict, or (serialized writes) a running task writes what it
        writes. A task reading a key whose conflict nobody decided in time fails."""
        task = self.g.tasks[t]
        why = None
        if task.reads and self.shared.conflicts:
            failed = self.shared.failed_key(task.reads)
            if failed is not None:
                self.queue.take(demand, t, now)
                self._fail(
                    t, f"the conflict on {failed!r} was not resolved: no more escalation levels"
                )
                return True
            held = self.shared.held(task.reads)
            if held is not None:
                why = f"reads {held!r}, which has an open conflict"
        if why is None and self.writers_running and task.writes:
            for other, keys in self.writers_running.items():
                if any(overlap(mine, theirs) for mine in task.writes for theirs in keys):
                    why = f"writes what {self.g.task_ids[other]} writes (serialized)"
                    break
        if why is None:
            return False
        self.queue.take(demand, t, now)
        self.parked[t] = why
        self.emit("task_waiting", t, reason=why)
        return True

    def _note_contention(self, t: int, demand: Demand, now: float) -> None:
        """``t`` waits for resources: remember since when and for which (the first time)."""
        if t in self.contended:
            return
        names = [
            self.resources.names[r] for r, units in demand.counted if self.resources.free[r] < units
        ] + [
            self.resources.names[r]
            for r, units in demand.rated
            if self.resources.buckets[r].ready_at(now, units) > now
        ]
        self.contended[t] = (now, names)
        self.emit("resource_contention", t, resources=names)

    def _can_ever_run(self, pool: int) -> bool:
        """Some agent able to take the work is usable, or a remote one may still connect."""
        agents = self.agents
        return any(
            agents.capacity[a] > 0 and (agents.usable(a) or agents.offline[a])
            for a in agents.pools[pool]
        )

    def _park_unrunnable(self, demand: Demand, t: int, now: float) -> None:
        """No agent that could take ``t`` can work (lost, in maintenance): a dependency
        conflict. ``t`` waits outside the queue and its case goes up the ladder."""
        able = [self.agents.names[a] for a in self.agents.pools[demand.pool]]
        states = ", ".join(f"{n} {self.agents.state(self.agents.index[n]).value}" for n in able)
        reason = f"no agent able to take it can work ({states or 'none'})"
        self.queue.take(demand, t, now)
        self.parked[t] = reason
        tid = self.g.task_ids[t]
        if self.unrunnable.get(t) != reason:
            self.emit("task_unrunnable", t, reason=reason, agents=able)
        self.unrunnable[t] = reason
        self.escalator.open(
            f"task:{tid}",
            "dependency",
            f"{tid} cannot start: {reason}",
            {"task": tid, "reason": reason, "agents": able},
        )

    def _agents_changed(self) -> None:
        if self.unrunnable:
            self._unpark()  # those still without an agent come back here

    def _unpark(self) -> None:
        """Give parked tasks back to the queue (their reason may be gone)."""
        for t in list(self.parked):
            del self.parked[t]
            if self.state[t] is TaskState.READY:
                self._enqueue(t)
        self.wake.set()

    def resolve_conflict(
        self, conflict_id: int, decision: dict[str, Any], by: str
    ) -> dict[str, Any]:
        """An operator's decision over the API; LookupError or ValueError when refused."""
        if conflict_id not in self.shared.conflicts:
            raise LookupError(f"no conflict {conflict_id} in this run")
        try:
            conflict = self.shared.resolve(
                conflict_id,
                value=decision.get("value", MISSING),
                task=decision.get("task"),
                by=by,
            )
        except StateError as exc:
            raise ValueError(str(exc)) from None
        self._decided(conflict)
        return conflict.to_json()

    def _command(self, kind: str, args: dict[str, Any]) -> None:
        if kind == "rollback":
            try:
                self.start_rollback(
                    str(args.get("scope_kind", "")),
                    str(args.get("scope", "")),
                    f"operator {args.get('by', 'operator')}",
                )
            except LookupError as exc:
                self.emit("command_refused", None, command="rollback", reason=str(exc.args[0]))
            return
        if kind == "decide":
            self._decide_command(args)  # a person decides a vote (runtime/coordination.py)
            return
        if kind != "resolve":
            return
        try:
            conflict = self.shared.resolve(
                int(args.get("conflict", 0)),
                value=args.get("value", MISSING),
                task=args.get("task"),
                by=str(args.get("by", "operator")),
            )
        except StateError as exc:
            self.emit("command_refused", None, command="resolve", reason=str(exc))
            return
        self._decided(conflict)

    def _decided(self, conflict: Conflict) -> None:
        """``conflict`` is resolved (by its policy, a person or a clean retry): say so,
        close its case if it had one, release the tasks that waited for it."""
        self._conflict_event("conflict_resolved", conflict)
        self.escalator.resolve(f"conflict:{conflict.id}", conflict.resolution or {})
        self._notify_conflict(conflict)
        if self.conflict_ballots:
            self._conflict_settled(conflict)
        if self.parked:
            self._unpark()


def _rolled_back(blocked_by: str | None) -> bool:
    return (blocked_by or "").startswith("rolled back")


def _writes_of(ctx: TaskContext, result: dict[str, Any]) -> dict[str, Any]:
    """The task's staged writes and those its result lists under ``writes``."""
    listed = result.get("writes") if isinstance(result, dict) else None
    if listed is not None and not isinstance(listed, dict):
        raise TaskFailed(f"the result's writes must be an object of key: value, not {listed!r}")
    return {**ctx.state.writes, **(listed or {})}
