"""Runbooks (seed section 7.2, manual rollback): named procedures run step by step, journaled.

A runbook (a plan's ``runbooks:`` section, or a runbook file) is an ordered list of
steps: ``command``, ``check``, ``approval`` and ``manual``. :class:`RunbookRunner`
runs one to its end or its first failing step, journaling each step before and
after it acts (:mod:`counterpoint.rollback.runbook_journal`), so it resumes where
it stopped: after a failure, Ctrl-C, or SIGKILL, a step journaled ``done`` is never
run again; the interrupted or failed one runs again.

A failing step stops the runbook and opens the escalation case ``runbook:NAME`` on
the ladder of the runbook's plan (or file). Its first level is notified at once;
while the process waits (the default) it climbs the ladder, until the case is
exhausted, or another process resumes the execution (it takes over the case), or
Ctrl-C. The case is resolved when the failed step passes on a resume (or the
execution completes, or is restarted). Its cases are journaled with the run id
``-EXECUTION``, apart from every run's.

One process at a time runs a runbook of a state directory (a lock per name).
Approvals and confirmations arrive from other processes through the journal.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from counterpoint.durations import format_duration
from counterpoint.plan.model import (
    RunbookApprovalStep,
    RunbookCheckStep,
    RunbookCommandStep,
    RunbookManualStep,
)
from counterpoint.rollback import locking
from counterpoint.rollback.errors import Busy, Refused, UnknownSubject
from counterpoint.rollback.notify import DRAIN_S, POLICY
from counterpoint.rollback.runbook_case import RunbookCase, subject
from counterpoint.rollback.runbook_journal import (
    ABANDONED,
    COMPLETED,
    DONE,
    FAILED,
    FINISHED,
    INTERRUPTED,
    RUNNING,
    WAITING,
    Execution,
    RunbookJournal,
    StepRun,
    digest,
    runbook_outcomes,
)
from counterpoint.rollback.runbook_source import RunbookSource
from counterpoint.rollback.runbook_steps import (
    StepContext,
    StepOutcome,
    approval_state,
    argv_of,
    decided_by,
    run_check,
    run_command,
    stop_leftover,
)
from counterpoint.runtime.escalation import OPEN, Case, NotifyPolicy
from counterpoint.runtime.gates import COMMAND_TIMEOUT_S
from counterpoint.store.sqlite import SqliteStore

LOCK = "runbook"
POLL_S = 0.2
TAKEOVER_S = 10.0

Step = RunbookCommandStep | RunbookCheckStep | RunbookApprovalStep | RunbookManualStep
Decided = RunbookApprovalStep | RunbookManualStep
Observer = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class RunbookOptions:
    """How :class:`RunbookRunner` runs: ``approve_as`` approves every approval and manual
    step (an operator override); ``restart`` abandons an unfinished execution and starts
    anew; ``wait`` climbs the escalation ladder after a failure until it is exhausted."""

    by: str = "operator"
    approve_as: str | None = None
    restart: bool = False
    wait: bool = True
    poll_s: float = POLL_S
    takeover_s: float = TAKEOVER_S


@dataclass(frozen=True)
class RunbookResult:
    """How an execution ended this time: ``ran`` the steps run, ``case`` its escalation."""

    execution: Execution
    resumed: bool
    ran: tuple[str, ...]
    case: Case | None
    handed_over: bool = False

    @property
    def ok(self) -> bool:
        return self.execution.status == COMPLETED


class RunbookRunner:
    """Runs (or resumes) runbook ``name`` of ``source`` in ``store``'s state directory.

    ``source`` may be None to resume (or restart) with the definition the journal
    recorded. ``observe`` gets every event as a JSON-ready dict, as it is journaled.
    """

    def __init__(
        self,
        store: SqliteStore,
        name: str,
        source: RunbookSource | None,
        options: RunbookOptions | None = None,
        *,
        observe: Observer | None = None,
        policy: NotifyPolicy = POLICY,
    ) -> None:
        self.store = store
        self.name = name
        self.source = source
        self.options = options or RunbookOptions()
        self.observe = observe
        self.policy = policy
        self.journal = RunbookJournal(store)
        self.ex: Execution | None = None
        self.current: StepRun | None = None
        self.ran: list[str] = []
        self.case: RunbookCase | None = None
        if source is not None:
            source.get(name)

    # -- the whole execution ---------------------------------------------------------

    def run(self) -> RunbookResult:
        """Run to the end or the first failing step; Ctrl-C or SIGTERM: KeyboardInterrupt
        (after journaling where it stopped)."""
        with self._lock():
            try:
                return asyncio.run(self._main())
            except asyncio.CancelledError:
                raise KeyboardInterrupt from None

    async def _main(self) -> RunbookResult:
        with _cancelled_by(signal.SIGTERM):
            ex, resumed = self._begin()
            keeper = self.case = self._case(ex)
            try:
                failed = await self._steps(ex, resumed)
                case, handed = await self._finish(ex, failed)
            except asyncio.CancelledError:
                self._interrupted()
                await keeper.drain(1.0)
                raise
            await keeper.drain(1.0 if handed else DRAIN_S)  # a new owner waits for us
            done = self.journal.get(ex.id)
            return RunbookResult(done, resumed, tuple(self.ran), case, handed)

    def _begin(self) -> tuple[Execution, bool]:
        latest = self.journal.latest(self.name)
        if latest is not None and latest.status not in FINISHED:
            self.journal.ask_takeover(latest.id, None)
            if not self.options.restart:
                return self._resume(latest), True
            self._abandon(latest)
        restarted = latest.as_source() if latest is not None and self.options.restart else None
        source = self.source or restarted
        if source is None:
            where = self.store.state_dir
            raise Refused(
                f"runbook {self.name!r} has no unfinished execution in {where} to resume: give "
                "the plan (--plan) or runbook file (--file) that defines it to start one"
            )
        ex = self.ex = self.journal.create(self.name, source, self.options.by)
        self.journal.set_status(ex.id, RUNNING, pid=os.getpid())
        steps = [s.id for s in ex.definition.steps]
        self._emit("execution_started", steps=steps, source=ex.source, by=ex.by)
        return self.journal.get(ex.id), False

    def _resume(self, latest: Execution) -> Execution:
        self.ex = latest
        if self.source is not None:
            runbook = self.source.get(self.name)
            if digest(runbook, self.source.escalation) != latest.digest:
                self.journal.redefine(latest.id, self.name, self.source)
                self._emit("definition_changed", source=str(self.source.path))
        self.journal.set_status(latest.id, RUNNING, detail=latest.detail, pid=os.getpid())
        ex = self.ex = self.journal.get(latest.id)
        left = [s.step for s in ex.steps if s.status != DONE]
        self._emit(
            "execution_resumed",
            was=latest.status,
            at_step=left[0] if left else None,
            done=len(ex.done()),
            steps=len(ex.definition.steps),
            by=self.options.by,
        )
        return ex

    def _abandon(self, latest: Execution) -> None:
        self.ex = latest  # its events are its own
        self.journal.set_status(
            latest.id, ABANDONED, detail=f"abandoned: restarted by {self.options.by}"
        )
        self._case(latest).resolve("abandoned")
        self._emit("execution_abandoned", execution=latest.id, by=self.options.by)

    async def _finish(
        self, ex: Execution, failed: tuple[Step, StepOutcome] | None
    ) -> tuple[Case | None, bool]:
        if failed is not None:
            return await self._fail(ex, *failed)
        self.journal.set_status(ex.id, COMPLETED, detail=f"{len(ex.definition.steps)} steps done")
        self._keeper().resolve("completed")
        self._emit("execution_completed", ran=list(self.ran))
        return None, False

    def _interrupted(self) -> None:
        assert self.ex is not None
        now = self.journal.get(self.ex.id)
        current = self.current
        if current is not None and current.status in (RUNNING, WAITING):
            self._save(replace(current, status=INTERRUPTED, detail="interrupted", pid=None))
        if now.status != RUNNING:  # it had failed: Ctrl-C only ended the escalation wait
            self._emit("escalation_watch_stopped")
            return
        at = f" at step {current.step}" if current is not None else ""
        self.journal.set_status(now.id, INTERRUPTED, detail=f"interrupted{at}")
        self._emit("execution_interrupted", at_step=current.step if current else None)

    # -- steps ----------------------------------------------------------------------

    async def _steps(self, ex: Execution, resumed: bool) -> tuple[Step, StepOutcome] | None:
        """Each step not done yet, in order; the first failing one and how it failed."""
        total = len(ex.definition.steps)
        for position, step in enumerate(ex.definition.steps, 1):
            record = self.journal.get(ex.id).step(step.id) or StepRun(step.id, position, step.kind)
            where = {"position": position, "of": total}
            if record.status == DONE:
                if resumed:
                    self._emit("step_skipped", step.id, **where, detail=record.detail)
                continue
            self.ran.append(step.id)
            outcome = await self._step(step, record, where)
            if not outcome.ok:
                return step, outcome
            self._keeper().resolve("step_passed", step=step.id)
        return None

    async def _step(self, step: Step, record: StepRun, where: dict[str, int]) -> StepOutcome:
        if record.status in (RUNNING, INTERRUPTED) and record.pid:
            ctx = self._context(step.id, record.attempts)
            if await stop_leftover(record.pid, ctx):
                self._emit("leftover_stopped", step.id, pid=record.pid)
        if isinstance(step, RunbookApprovalStep | RunbookManualStep):
            return await self._decision(step, record, where)
        return await self._retried(step, record, where)

    async def _retried(
        self, step: RunbookCommandStep | RunbookCheckStep, record: StepRun, where: dict[str, int]
    ) -> StepOutcome:
        tries = step.retries + 1
        for n in range(1, tries + 1):
            outcome = await self._attempt(step, record, record.attempts + n, where)
            assert self.current is not None
            if outcome.ok or n == tries:
                self._ended(self.current, outcome)
                return outcome
            self._save(
                replace(self.current, detail=outcome.detail, output=outcome.output, pid=None)
            )
            self._emit(
                "step_retrying",
                step.id,
                attempt=record.attempts + n,
                error=outcome.detail,
                delay_s=step.retry_delay,
                left=tries - n,
            )
            await asyncio.sleep(step.retry_delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(
        self,
        step: RunbookCommandStep | RunbookCheckStep,
        record: StepRun,
        attempt: int,
        where: dict[str, int],
    ) -> StepOutcome:
        running = replace(
            record, status=RUNNING, attempts=attempt, started=time.time(), finished=None, pid=None
        )
        self._save(running)
        self._emit(
            "step_started", step.id, **where, kind=step.kind, name=step.title, attempt=attempt
        )
        ctx = self._context(step.id, attempt)
        if isinstance(step, RunbookCheckStep):
            outcome = await run_check(step, ctx)
        else:
            outcome = await run_command(
                argv_of(step.run),
                ctx,
                timeout_s=step.timeout or COMMAND_TIMEOUT_S,
                env=step.env,
                on_start=lambda pid: self._save(replace(running, pid=pid)),
            )
        return outcome

    async def _decision(self, step: Decided, record: StepRun, where: dict[str, int]) -> StepOutcome:
        """Wait for the step's approvers (or its confirmation), ticking the ladder meanwhile."""
        assert self.ex is not None
        waiting = replace(
            record, status=WAITING, attempts=record.attempts + 1, started=time.time(), pid=None
        )
        self._save(waiting)
        self._emit(
            "step_waiting",
            step.id,
            **where,
            kind=step.kind,
            name=step.title,
            approvers=list(step.approvers),
            count=step.count if isinstance(step, RunbookApprovalStep) else 1,
            instructions=step.instructions,
            timeout_s=step.timeout,
            approve_as=self.options.approve_as,
        )
        limit = step.timeout
        deadline = None if limit is None else time.monotonic() + limit
        seen = 0
        while True:
            decisions = self.journal.decisions(self.ex.id, step.id)
            for d in decisions[seen:]:
                self._emit(
                    "step_decision",
                    step.id,
                    kind=step.kind,
                    by=d.by,
                    approve=d.approve,
                    comment=d.comment,
                )
            seen = len(decisions)
            state = await approval_state(step, decisions, self.options.approve_as)
            if state.passed is not None:
                return self._decided(step, waiting, state.passed, state.message, decided_by(state))
            if limit is not None and deadline is not None and time.monotonic() >= deadline:
                why = f"no decision within {format_duration(limit)} ({state.message})"
                return self._decided(step, waiting, False, why, ())
            self._keeper().tick()
            await asyncio.sleep(self.options.poll_s)

    def _decided(
        self, step: Decided, waiting: StepRun, ok: bool, message: str, who: tuple[str, ...]
    ) -> StepOutcome:
        if ok and isinstance(step, RunbookManualStep):
            message = message.replace("approved by", "done, confirmed by", 1)
        outcome = StepOutcome(ok, message, decided_by=who)
        self._ended(waiting, outcome)
        return outcome

    def _ended(self, record: StepRun, outcome: StepOutcome) -> None:
        ended = replace(
            record,
            status=DONE if outcome.ok else FAILED,
            finished=time.time(),
            detail=outcome.detail,
            output=outcome.output,
            decided_by=outcome.decided_by,
            pid=None,
        )
        self._save(ended)
        took = round((ended.finished or 0.0) - (ended.started or 0.0), 3)
        data: dict[str, Any] = {"attempt": ended.attempts, "detail": outcome.detail, "took_s": took}
        if outcome.decided_by:
            data["decided_by"] = list(outcome.decided_by)
        if outcome.output:
            data["output"] = outcome.output[-1000:]
        self._emit("step_done" if outcome.ok else "step_failed", record.step, **data)

    # -- escalation -----------------------------------------------------------------

    async def _fail(self, ex: Execution, step: Step, outcome: StepOutcome) -> tuple[Case, bool]:
        """Stop at ``step``, open (or keep) the case, and climb its ladder while allowed."""
        detail = f"step {step.id} failed: {outcome.detail}"
        self.journal.set_status(ex.id, FAILED, detail=detail, pid=os.getpid())
        case = self._keeper().open(step.id, step.title, step.kind, outcome.detail)
        self._emit(
            "execution_failed",
            step.id,
            error=outcome.detail,
            case_id=case.id,
            case_status=case.status,
            level_name=case.level_name,
        )
        if not (self.options.wait and case.status == OPEN):
            return case, False
        self._emit("escalation_waiting", case_id=case.id, deadline=case.deadline)
        taker = await self._keeper().watch(
            case, lambda: self.journal.takeover(ex.id), self.options.poll_s
        )
        if taker:
            self._emit("handed_over", to_pid=taker)
        return case, bool(taker)

    def _case(self, ex: Execution) -> RunbookCase:
        return RunbookCase(
            self.store, ex, emit=self._escalation_event, policy=self.policy, by=self.options.by
        )

    def _keeper(self) -> RunbookCase:
        assert self.case is not None
        return self.case

    def _escalation_event(self, kind: str, _task: object = None, **data: Any) -> None:
        self._emit(kind, **data)

    # -- journal and helpers ----------------------------------------------------------

    def _save(self, record: StepRun) -> None:
        assert self.ex is not None
        self.current = record
        self.journal.save_step(self.ex.id, record)

    def _emit(self, kind: str, step: str | None = None, /, **data: Any) -> None:
        execution = data.pop("execution", None) or (self.ex.id if self.ex else 0)
        ts = self.journal.event(execution, kind, step, **data)
        self.store.flush()
        if self.observe is not None:
            head: dict[str, Any] = {"ts": ts, "event": kind, "runbook": self.name}
            head["execution"] = execution
            if step is not None:
                head["step"] = step
            self.observe({**head, **data})

    def _context(self, step: str, attempt: int) -> StepContext:
        assert self.ex is not None
        folder = Path(self.ex.source).parent
        return StepContext(self.name, self.ex.id, step, attempt, folder, self.store.state_dir)

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """Hold the runbook's lock; a process only waiting on an escalation hands it over."""
        asked = False
        patience = time.monotonic() + 0.3  # a status probe holds it for an instant
        deadline = patience + self.options.takeover_s
        while True:
            with locking.attempt(self.store.state_dir, LOCK, self.name) as taken:
                if taken:
                    yield
                    return
            if not asked and time.monotonic() > patience:
                self._ask_takeover()
                asked = True
            elif time.monotonic() > deadline:
                raise Busy(f"{self.name}: the process holding it did not hand over in time")
            time.sleep(0.05)

    def _ask_takeover(self) -> None:
        latest = self.journal.latest(self.name)
        pid = latest.pid if latest is not None else None
        if latest is None or latest.status != FAILED:
            what = f" (execution {latest.id})" if latest is not None else ""
            raise Busy(
                f"{self.name}: another process (pid {pid or '?'}) is running this runbook"
                f"{what}; wait for it, or stop it with Ctrl-C in its terminal"
            )
        self.journal.ask_takeover(latest.id, os.getpid())
        self.journal.event(latest.id, "takeover_requested", None, by_pid=os.getpid())
        self.store.flush()


@contextmanager
def _cancelled_by(sig: signal.Signals) -> Iterator[None]:
    """Turn ``sig`` into a cancellation of the current task (journaled like Ctrl-C)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    installed = False
    if task is not None:
        with suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, task.cancel)
            installed = True
    try:
        yield
    finally:
        if installed:
            loop.remove_signal_handler(sig)


def decide(
    store: SqliteStore, name: str, step: str, by: str, approve: bool, comment: str = ""
) -> Execution:
    """Record ``by``'s decision on an approval or manual ``step`` of ``name``'s unfinished
    execution (the waiting runner sees it within ``POLL_S``); returns the execution."""
    journal = RunbookJournal(store)
    ex = journal.latest(name)
    if ex is None:
        raise UnknownSubject.of("runbook", name, journal.names())
    if ex.status in FINISHED:
        raise Refused(
            f"execution {ex.id} of {name} is {ex.status}: no step waits for a decision "
            f"(`counterpoint runbook run {name}` starts a new execution)"
        )
    spec = next((s for s in ex.definition.steps if s.id == step), None)
    if spec is None:
        raise UnknownSubject.of("step", step, [s.id for s in ex.definition.steps])
    if not isinstance(spec, RunbookApprovalStep | RunbookManualStep):
        raise Refused(f"step {step} of {name} is a {spec.kind} step: it takes no decision")
    if by not in spec.approvers:
        raise Refused(
            f"{by!r} is not an approver of step {step} (approvers: {', '.join(spec.approvers)})"
        )
    found = ex.step(step)
    if found is not None and found.status == DONE:
        raise Refused(f"step {step} of {name} is already done ({found.detail})")
    journal.decide(ex.id, step, by, approve, comment)
    return ex


__all__ = [
    "Observer",
    "RunbookOptions",
    "RunbookResult",
    "RunbookRunner",
    "decide",
    "runbook_outcomes",
    "subject",
]
