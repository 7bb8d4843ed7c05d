"""The escalation case of a runbook execution: ``runbook:NAME`` on its runbook's ladder.

One :class:`~counterpoint.runtime.escalation.Escalator` per execution, journaled with
the run id ``-EXECUTION`` so runbook cases never mix with a run's (whose ids count
up from 1). A case is opened when a step fails (a second failure finds it open and
notifies nobody twice), climbs while a process ticks it, and is resolved when the
failed step passes, the execution completes or it is abandoned.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from counterpoint.plan.model import Escalation
from counterpoint.rollback.runbook_journal import Execution
from counterpoint.runtime.escalation import OPEN, RESOLVED, Case, Escalator, NotifyPolicy
from counterpoint.store.sqlite import SqliteStore

KIND = "runbook"


def subject(name: str) -> str:
    """The escalation subject of a runbook's failures."""
    return f"runbook:{name}"


class RunbookCase:
    """The escalation of one execution; ``emit(kind, None, **data)`` gets its events."""

    def __init__(
        self,
        store: SqliteStore,
        ex: Execution,
        *,
        emit: Callable[..., None],
        policy: NotifyPolicy | None = None,
        by: str = "operator",
    ) -> None:
        self.store = store
        self.ex = ex
        self.by = by
        self.subject = subject(ex.runbook)
        self.escalator = Escalator(
            ex.escalation,
            store,
            -ex.id,
            emit=emit,
            policy=policy,
            cwd=Path(ex.source).parent,
        )
        self.escalator.restore()

    def current(self) -> Case | None:
        return self.escalator.case(self.subject)

    def open(self, step: str, step_name: str, kind: str, error: str) -> Case:
        """Open the case for a failed step (or return the one still open or exhausted)."""
        summary = f"runbook {self.ex.runbook}: step {step} failed: {error}"
        details = {
            "runbook": self.ex.runbook,
            "execution": self.ex.id,
            "step": step,
            "step_name": step_name,
            "kind": kind,
            "error": error,
            "source": self.ex.source,
        }
        case = self.escalator.open(self.subject, KIND, summary[:300], details)
        self.store.flush()
        return case

    def tick(self) -> None:
        self.escalator.tick()
        self.store.flush()

    def resolve(self, outcome: str, **more: Any) -> None:
        """Resolve the open (or exhausted) case, if there is one."""
        case = self.current()
        if case is not None and case.status != RESOLVED:
            resolution = {"outcome": outcome, "execution": self.ex.id, "by": self.by, **more}
            self.escalator.resolve(self.subject, resolution)
            self.store.flush()

    async def watch(self, case: Case, taken: Callable[[], int | None], poll_s: float) -> int | None:
        """Climb the ladder while ``case`` is open; the pid ``taken`` reports, if one does."""
        while case.status == OPEN:
            self.tick()
            taker = taken()
            if taker:
                return taker
            due = self.escalator.next_deadline()
            left = poll_s if due is None else due - time.monotonic()
            await asyncio.sleep(min(poll_s, max(0.005, left)))
        return None

    async def drain(self, timeout_s: float) -> None:
        await self.escalator.drain(timeout_s)
        self.store.flush()


def read_case(store: SqliteStore, ex: Execution) -> Case | None:
    """The execution's latest case as journaled (for ``runbook status``), or None."""
    escalator = Escalator(Escalation(), store, -ex.id, emit=lambda *a, **k: None)
    escalator.restore()
    return escalator.case(subject(ex.runbook))


__all__ = ["KIND", "RunbookCase", "read_case", "subject"]
