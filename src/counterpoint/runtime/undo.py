"""Running rollbacks: the run engine's side of :mod:`counterpoint.runtime.compensation`.

A mixin of the orchestrator (like :mod:`counterpoint.runtime.steering`): state lives on
the orchestrator; this module stops a scope, runs its compensations in order, reverts
the shared state of compensated tasks, and resumes rollbacks after a restart.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from counterpoint.agents.base import StateView, TaskContext, TaskFailed
from counterpoint.plan.graph import Graph, NodeKind
from counterpoint.plan.model import Plan
from counterpoint.runtime.compensation import (
    FINAL,
    WIRE_ATTEMPT,
    Compensation,
    Rollback,
    RollbackJournal,
    order,
    scope_members,
)
from counterpoint.runtime.events import TaskState
from counterpoint.store.sqlite import SqliteStore

if TYPE_CHECKING:
    from counterpoint.allocation import AgentPool
    from counterpoint.runtime.escalation import Escalator
    from counterpoint.runtime.orchestrator import RunOptions
    from counterpoint.runtime.runners import Runners
    from counterpoint.runtime.state import SharedState


@dataclass
class _Ended:
    rollback: int
    task: int
    attempt: int
    error: str | None
    result: dict[str, Any] = field(default_factory=dict)


class Undoing:
    """Rollbacks and their compensations; see the module docstring."""

    g: Graph
    plan: Plan
    plan_dir: Path
    run_id: int
    state_dir: Path
    store: SqliteStore
    options: RunOptions
    agents: AgentPool
    state: list[TaskState]
    running: dict[int, asyncio.Task[None]]
    gates_running: dict[int, asyncio.Task[None]]
    gates_waiting: set[int]
    gate_rechecks: dict[int, float]
    shared: SharedState
    escalator: Escalator
    agent_of: list[int | None]
    finished_at: dict[int, float]
    runners: Runners
    wake: asyncio.Event
    cancelling: str | None

    rollback_journal: RollbackJournal
    rollbacks: dict[int, Rollback]
    rolling: dict[int, int]  # task -> the open rollback its scope belongs to
    comp_running: dict[tuple[int, int], asyncio.Task[None]]
    comp_ended: deque[_Ended]
    comp_retry_at: dict[tuple[int, int], float]

    def emit(self, kind: str, task: int | None = None, **data: Any) -> None:
        raise NotImplementedError

    def _mark_blocked(self, v: int, reason: str, chain: list[str] | None = None) -> None:
        raise NotImplementedError

    def _block_downstream(self, v: int, reason: str) -> None:
        raise NotImplementedError

    def _backoff(self, failures: int) -> float:
        raise NotImplementedError

    def _gate_of(self, v: int) -> Any:
        raise NotImplementedError

    def _agent_name(self, t: int) -> str | None:
        raise NotImplementedError

    def _save(self, t: int, result: dict[str, Any] | None = None) -> None:
        raise NotImplementedError

    def _init_undo(self) -> None:
        self.rollback_journal = RollbackJournal(self.store, self.run_id, self.g)
        self.rollbacks = {}
        self.rolling = {}
        self.comp_running = {}
        self.comp_ended = deque()
        self.comp_retry_at = {}

    # -- starting ---------------------------------------------------------------------------

    def start_rollback(self, kind: str, scope: str, trigger: str) -> Rollback:
        """Roll back ``scope`` (``task``, ``milestone``, ``phase`` or ``run``); LookupError
        for an unknown scope. A scope already being rolled back is not started twice."""
        members = scope_members(self.g, kind, scope)
        for rb in self.rollbacks.values():
            if rb.open and (rb.scope_kind, rb.scope) == (kind, scope):
                return rb
        rb = Rollback(self.rollback_journal.next_id(), kind, scope, trigger, members)
        self.rollbacks[rb.id] = rb
        reason = f"rolled back ({kind} {scope}: {trigger})"
        for t in members:
            self.rolling.setdefault(t, rb.id)
            st = self.state[t]
            if st in (TaskState.PENDING, TaskState.READY, TaskState.RETRYING):
                self._mark_blocked(t, reason)
            elif st is TaskState.RUNNING and t in self.running:
                self.running[t].cancel()
            elif st is TaskState.COMPLETED:
                self._add_compensation(rb, t)
        order(self.g, rb.comps)
        self.rollback_journal.save(rb)
        for comp in rb.comps.values():
            self.rollback_journal.save_comp(rb, comp)
        self.emit(
            "rollback_started",
            None,
            rollback_id=rb.id,
            scope_kind=kind,
            scope=scope,
            trigger=trigger,
            compensations=[c.tid for c in rb.comps.values() if c.status == "pending"],
        )
        self._block_after_scope(rb, reason)
        self._drop_gates(rb)
        self.wake.set()
        return rb

    def _drop_gates(self, rb: Rollback) -> None:
        """Gates of the scope that wait (for approvals or a recheck) wait no more."""
        g = self.g
        nodes: set[int] = set()
        phases = [p.id for p in self.plan.phases]
        for m, ms in enumerate(g.milestones):
            k = g.phase_of_milestone[m]
            inside = (
                rb.scope_kind == "run"
                or (rb.scope_kind == "phase" and phases[k] == rb.scope)
                or (rb.scope_kind == "milestone" and ms.id == rb.scope)
            )
            if inside:
                base = g.n_tasks + 2 * g.n_phases + 2 * m
                nodes |= {base, base + 1}
        for k, pid in enumerate(phases):
            if rb.scope_kind == "run" or (rb.scope_kind == "phase" and pid == rb.scope):
                nodes |= {g.n_tasks + 2 * k, g.n_tasks + 2 * k + 1}
        for v in nodes & set(self.gates_waiting):
            self.gates_waiting.discard(v)
            self.gate_rechecks.pop(v, None)
            site = self._gate_of(v)
            gate = site.gate_id if site is not None else g.label(v)
            self.emit("gate_abandoned", None, gate=gate, reason="its scope was rolled back")
        for v in nodes & set(self.gates_running):
            self.gates_running[v].cancel()

    def _add_compensation(self, rb: Rollback, t: int) -> None:
        has_action = (
            self.g.tasks[t].rollback is not None
            or self.rollback_journal.registered(self.g.task_ids[t]) is not None
        )
        status = "pending" if has_action else "none"
        if has_action and self._undone_before(t):
            status = "already"  # compensated by an earlier rollback: never twice
        rb.comps[t] = Compensation(t, self.g.task_ids[t], status)

    def _undone_before(self, t: int) -> bool:
        """An earlier rollback compensated the task's latest completion."""
        completed = self.finished_at.get(t, 0.0)
        return any(
            (c := rb.comps.get(t)) is not None
            and c.status == "done"
            and (c.finished or 0.0) >= completed
            for rb in self.rollbacks.values()
        )

    def _block_after_scope(self, rb: Rollback, reason: str) -> None:
        """What comes after the scope never starts: its end (milestone or phase) is blocked."""
        g = self.g
        if rb.scope_kind == "run":
            return
        if rb.scope_kind == "task":
            self._block_downstream(g.index[rb.scope], reason)
            return
        if rb.scope_kind == "phase":
            k = [p.id for p in self.plan.phases].index(rb.scope)
            end = g.n_tasks + 2 * k + 1
        else:
            m = [ms.id for ms in g.milestones].index(rb.scope)
            end = g.n_tasks + 2 * g.n_phases + 2 * m + 1
        assert g.kind(end) in (NodeKind.PHASE_END, NodeKind.MILESTONE_END)
        self._block_downstream(end, reason)
        for t in rb.members:  # and whatever outside the scope needs its tasks
            self._block_downstream(t, reason)

    def rollback_member_completed(self, t: int) -> None:
        """A task of a scope being rolled back completed anyway (it raced the cancel)."""
        rb = self.rollbacks.get(self.rolling.get(t, -1))
        if rb is None or not rb.open or t in rb.comps:
            return
        self._add_compensation(rb, t)
        order(self.g, rb.comps)
        self.rollback_journal.save_comp(rb, rb.comps[t])

    # -- running --------------------------------------------------------------------------

    def _drive_rollbacks(self) -> None:
        """Handle ended compensations, start those whose turn came, finish rollbacks."""
        while self.comp_ended:
            self._compensation_ended(self.comp_ended.popleft())
        now = time.monotonic()
        for rb in list(self.rollbacks.values()):
            if not rb.open:
                continue
            if any(t in self.running for t in rb.members):
                continue  # cancelled work must stop before anything is undone
            for t, comp in rb.comps.items():
                if comp.status == "pending" and self._turn(rb, comp):
                    if self.cancelling is None:
                        self._start_compensation(rb, comp)
                elif comp.status == "retrying" and self.comp_retry_at.get((rb.id, t), 0) <= now:
                    self.comp_retry_at.pop((rb.id, t), None)
                    if self.cancelling is None:
                        self._start_compensation(rb, comp)
            self._maybe_finish(rb)

    def _turn(self, rb: Rollback, comp: Compensation) -> bool:
        """True when every compensation ``comp`` waits for is done (or had nothing to do);
        one that failed leaves ``comp`` undone."""
        waits = [rb.comps[w] for w in comp.waits_for]
        if any(w.status in ("failed", "left") for w in waits):
            comp.status = "left"
            comp.error = (
                "not run: "
                + ", ".join(w.tid for w in waits if w.status in ("failed", "left"))
                + " could not be undone first"
            )
            self.rollback_journal.save_comp(rb, comp)
            self.emit("compensation_left", comp.task, rollback_id=rb.id, reason=comp.error)
            return False
        return all(w.status in ("done", "none", "already") for w in waits)

    def _start_compensation(self, rb: Rollback, comp: Compensation) -> None:
        comp.attempts += 1
        comp.status = "running"
        comp.started = comp.started or time.time()
        self.rollback_journal.save_comp(rb, comp)
        self.store.flush()  # journaled before it acts on anything
        self.emit("compensation_started", comp.task, rollback_id=rb.id, attempt=comp.attempts)
        job = asyncio.create_task(self._compensate(rb.id, comp.task, comp.attempts))
        self.comp_running[(rb.id, comp.task)] = job

    async def _compensate(self, rid: int, t: int, attempt: int) -> None:
        task = self.g.tasks[t]
        ended = _Ended(rid, t, attempt, None)
        timeout = self.plan.effective(task).timeout_s * self.options.time_scale
        try:
            runner, agent = self._compensation_runner(task.id)
            ctx = self._compensation_context(rid, t, attempt, agent or self._agent_name(t))
            if agent is not None and task.rollback is not None and task.rollback.remote:
                ctx.attempt = WIRE_ATTEMPT * rid + attempt  # never one of the task's own
            async with asyncio.timeout(timeout if timeout > 0 else None):
                ended.result = await runner(ctx)
        except TaskFailed as exc:
            ended.error = str(exc) or "failed"
        except TimeoutError:
            ended.error = f"timed out after {timeout:g}s"
        except asyncio.CancelledError:
            ended.error = "cancelled"
        except Exception as exc:
            ended.error = f"{type(exc).__name__}: {exc}"
        self.comp_ended.append(ended)
        self.wake.set()

    def _compensation_runner(self, tid: str) -> tuple[Any, str | None]:
        """The action registered when the task's completed attempt started (the plan's,
        unless a resume with --allow-changed-plan changed it since), and the agent a
        remote action goes to."""
        from counterpoint.plan.model import Runner as RunnerSpec
        from counterpoint.runtime.runners import build_runner

        registered = self.rollback_journal.registered(tid)
        spec = self.g.tasks[self.g.index[tid]].rollback
        if registered is None:
            if spec is None:
                raise TaskFailed(f"task {tid!r} has no rollback action")
            action, agent = spec, None
        else:
            action, agent = RunnerSpec.model_validate(registered[0]), registered[1]
        if action.remote:
            runner = self.runners.by_agent.get(agent or "")
            if runner is None:
                raise TaskFailed(f"task {tid!r}: no remote agent to send its rollback to")
            return runner, agent
        planned = self.runners.rollback_by_task.get(tid)
        if planned is not None and spec is not None and action == spec:
            return planned, agent
        return build_runner(action, self.plan_dir, self.options.kill_grace_s), agent

    def _compensation_context(
        self, rid: int, t: int, attempt: int, agent: str | None
    ) -> TaskContext:
        from counterpoint.runtime.orchestrator import task_log_dir

        task = self.g.tasks[t]
        ctx = TaskContext(
            run_id=str(self.run_id),
            task=task,
            attempt=attempt,
            agent=agent,
            state_dir=self.state_dir,
            workdir=self.plan_dir,
            log_dir=task_log_dir(self.state_dir, self.run_id, task.id) / f"rollback-{rid}",
            time_scale=self.options.time_scale,
            estimate_s=self.g.duration[t] * self.options.time_scale,
            state=StateView(self.shared.snapshot(task.writes) if task.writes else {}),
            rollback={"rollback_id": rid, "attempt": attempt},
        )
        return ctx

    def _compensation_ended(self, ended: _Ended) -> None:
        rb = self.rollbacks.get(ended.rollback)
        self.comp_running.pop((ended.rollback, ended.task), None)
        if rb is None:
            return
        comp = rb.comps[ended.task]
        if ended.error is None:
            comp.status, comp.finished, comp.error = "done", time.time(), None
            self.rollback_journal.save_comp(rb, comp)
            keys = self.shared.revert(comp.tid)
            self.state[comp.task] = TaskState.ROLLED_BACK
            self._save(comp.task)
            self.emit("compensation_completed", comp.task, rollback_id=rb.id, reverted=keys)
            return
        if ended.error == "cancelled" and self.cancelling is not None:
            comp.status = "pending"  # a resume runs it again
            comp.error = "interrupted: the run was cancelled"
            self.rollback_journal.save_comp(rb, comp)
            return
        retries = self.plan.effective(self.g.tasks[comp.task]).retries
        if comp.attempts <= retries:
            delay = self._backoff(comp.attempts)
            comp.status, comp.error = "retrying", ended.error
            self.comp_retry_at[(rb.id, comp.task)] = time.monotonic() + delay
            self.rollback_journal.save_comp(rb, comp)
            self.emit(
                "compensation_retrying",
                comp.task,
                rollback_id=rb.id,
                error=ended.error,
                delay_s=round(delay, 3),
            )
            return
        comp.status, comp.finished, comp.error = "failed", time.time(), ended.error
        self.rollback_journal.save_comp(rb, comp)
        self.emit("compensation_failed", comp.task, rollback_id=rb.id, error=ended.error)
        self.escalator.open(
            f"rollback:{comp.tid}",
            "rollback",
            f"the rollback of {comp.tid} failed: {ended.error}",
            {"rollback_id": rb.id, "task": comp.tid, "error": ended.error},
        )

    def _maybe_finish(self, rb: Rollback) -> None:
        if any(c.status not in FINAL for c in rb.comps.values()):
            return
        if any((rb.id, t) in self.comp_running for t in rb.comps):
            return
        undone = rb.undone()
        rb.status = "failed" if undone else "completed"
        rb.finished = time.time()
        self.rollback_journal.save(rb)
        for t in rb.members:
            if self.rolling.get(t) == rb.id:
                del self.rolling[t]
        self.emit(
            "rollback_finished",
            None,
            rollback_id=rb.id,
            status=rb.status,
            compensated=[c.tid for c in rb.comps.values() if c.status == "done"],
            left_undone=undone,
        )

    def rollbacks_open(self) -> bool:
        return any(rb.open for rb in self.rollbacks.values())

    def next_compensation_retry(self) -> float | None:
        return min(self.comp_retry_at.values(), default=None)

    # -- resume -------------------------------------------------------------------------

    def _restore_rollbacks(self) -> None:
        """Carry on the rollbacks a stopped run left open (an interrupted compensation runs
        again; one journaled done never does)."""
        for rb in self.rollback_journal.load():
            self.rollbacks[rb.id] = rb
            if not rb.open:
                continue
            for t in rb.members:
                self.rolling.setdefault(t, rb.id)
            for comp in rb.comps.values():
                if comp.status in ("running", "retrying"):
                    comp.status = "pending"
                    self.rollback_journal.save_comp(rb, comp)
            self.emit("rollback_resumed", None, rollback_id=rb.id, scope=rb.scope)
