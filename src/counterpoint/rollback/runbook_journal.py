"""The runbook journal: executions, their steps, decisions and events, in the state directory.

Tables of their own in ``state.db`` (beside runs, tied to none). Every change is
committed before the runner goes on, so an execution cut short anywhere (Ctrl-C,
SIGKILL, a crash) is resumed from what the journal says: a step journaled ``done``
is never run again.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from counterpoint.plan.model import Escalation, Runbook
from counterpoint.rollback.errors import UnknownSubject
from counterpoint.rollback.runbook_source import RunbookSource
from counterpoint.runtime.gates import Approval
from counterpoint.store.sqlite import SqliteStore

# Execution statuses; ``running`` with no process holding its lock was interrupted (SIGKILL).
RUNNING, FAILED, INTERRUPTED, COMPLETED, ABANDONED = (
    "running",
    "failed",
    "interrupted",
    "completed",
    "abandoned",
)
FINISHED = (COMPLETED, ABANDONED)
# Step statuses (``running`` and ``interrupted`` steps run again on resume).
PENDING, WAITING, DONE = "pending", "waiting", "done"
OUTPUT_CHARS = 32_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS runbook_executions (
    id INTEGER PRIMARY KEY,
    runbook TEXT NOT NULL,
    source TEXT NOT NULL,
    source_kind TEXT NOT NULL,
    definition TEXT NOT NULL,
    escalation TEXT NOT NULL,
    digest TEXT NOT NULL,
    status TEXT NOT NULL,
    by TEXT NOT NULL,
    pid INTEGER,
    takeover INTEGER,
    started REAL NOT NULL,
    finished REAL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS runbook_executions_by_name ON runbook_executions (runbook, id);
CREATE TABLE IF NOT EXISTS runbook_steps (
    execution INTEGER NOT NULL,
    step TEXT NOT NULL,
    position INTEGER NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    started REAL,
    finished REAL,
    detail TEXT NOT NULL DEFAULT '',
    output TEXT NOT NULL DEFAULT '',
    decided_by TEXT NOT NULL DEFAULT '[]',
    pid INTEGER,
    PRIMARY KEY (execution, step)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runbook_decisions (
    seq INTEGER PRIMARY KEY,
    execution INTEGER NOT NULL,
    step TEXT NOT NULL,
    by TEXT NOT NULL,
    approve INTEGER NOT NULL,
    comment TEXT NOT NULL,
    ts REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS runbook_events (
    seq INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    execution INTEGER NOT NULL,
    kind TEXT NOT NULL,
    step TEXT,
    data TEXT NOT NULL
);
"""
_EXECUTION = (
    "SELECT id, runbook, source, source_kind, definition, escalation, digest, status, by, pid,"
    " takeover, started, finished, detail FROM runbook_executions"
)
_STEP = (
    "SELECT step, position, kind, status, attempts, started, finished, detail, output,"
    " decided_by, pid FROM runbook_steps WHERE execution = ? ORDER BY position"
)


@dataclass(frozen=True)
class StepRun:
    """A step of an execution as journaled."""

    step: str
    position: int
    kind: str
    status: str = PENDING
    attempts: int = 0
    started: float | None = None
    finished: float | None = None
    detail: str = ""
    output: str = ""
    decided_by: tuple[str, ...] = ()
    pid: int | None = None  # a command's process (its group), while it runs

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "position": self.position,
            "kind": self.kind,
            "status": self.status,
            "attempts": self.attempts,
            "started": self.started,
            "finished": self.finished,
            "detail": self.detail,
            "output": self.output,
            "decided_by": list(self.decided_by),
        }


@dataclass(frozen=True)
class Execution:
    """One run of a runbook, with the definition it runs (kept for resumes and decisions)."""

    id: int
    runbook: str
    source: str
    source_kind: str
    definition: Runbook
    escalation: Escalation
    digest: str
    status: str
    by: str
    pid: int | None
    takeover: int | None
    started: float
    finished: float | None
    detail: str
    steps: tuple[StepRun, ...] = field(default=())

    def step(self, step_id: str) -> StepRun | None:
        return next((s for s in self.steps if s.step == step_id), None)

    def done(self) -> list[str]:
        return [s.step for s in self.steps if s.status == DONE]

    def as_source(self) -> RunbookSource:
        """The recorded definition, to resume or restart without the plan or file at hand."""
        return RunbookSource(
            Path(self.source), self.source_kind, {self.runbook: self.definition}, self.escalation
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "execution": self.id,
            "runbook": self.runbook,
            "source": self.source,
            "source_kind": self.source_kind,
            "status": self.status,
            "by": self.by,
            "started": self.started,
            "finished": self.finished,
            "detail": self.detail,
            "steps": [s.to_json() for s in self.steps],
        }


def digest(runbook: Runbook, escalation: Escalation) -> str:
    text = json.dumps(
        [runbook.model_dump(mode="json"), escalation.model_dump(mode="json")], sort_keys=True
    )
    return hashlib.sha256(text.encode()).hexdigest()


class RunbookJournal:
    """Reads and writes the runbook tables of one state directory's store."""

    def __init__(self, store: SqliteStore, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        store.ensure_schema(SCHEMA)

    # -- executions ----------------------------------------------------------------

    def create(self, name: str, source: RunbookSource, by: str) -> Execution:
        runbook = source.get(name)
        self.store.flush()
        cur = self.store.conn.execute(
            "INSERT INTO runbook_executions (runbook, source, source_kind, definition, escalation,"
            " digest, status, by, started) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                name,
                str(source.path),
                source.kind,
                runbook.model_dump_json(),
                source.escalation.model_dump_json(),
                digest(runbook, source.escalation),
                RUNNING,
                by,
                self.clock(),
            ),
        )
        ident = int(cur.lastrowid or 0)
        self.sync_steps(ident, runbook)
        return self.get(ident)

    def redefine(self, execution: int, name: str, source: RunbookSource) -> None:
        """Let a resumed execution run a changed definition (its done steps stay done)."""
        runbook = source.get(name)
        self.store.write(
            "UPDATE runbook_executions SET source = ?, source_kind = ?, definition = ?,"
            " escalation = ?, digest = ? WHERE id = ?",
            (
                str(source.path),
                source.kind,
                runbook.model_dump_json(),
                source.escalation.model_dump_json(),
                digest(runbook, source.escalation),
                execution,
            ),
        )
        self.store.flush()
        self.sync_steps(execution, runbook)

    def sync_steps(self, execution: int, runbook: Runbook) -> None:
        """One row per step of ``runbook``; rows of steps it no longer has are dropped,
        unless done (kept as history, after the others)."""
        ids = [s.id for s in runbook.steps]
        known = {r[0]: r[3] for r in self.store.query(_STEP, (execution,))}
        for step, status in known.items():
            if step not in ids:
                if status == DONE:
                    self.store.write(
                        "UPDATE runbook_steps SET position = ? WHERE execution = ? AND step = ?",
                        (len(ids) + 1, execution, step),
                    )
                else:
                    self.store.write(
                        "DELETE FROM runbook_steps WHERE execution = ? AND step = ?",
                        (execution, step),
                    )
        for position, step in enumerate(runbook.steps, 1):
            self.store.write(
                "INSERT INTO runbook_steps (execution, step, position, kind, status)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (execution, step) DO UPDATE SET"
                " position = excluded.position, kind = excluded.kind",
                (execution, step.id, position, step.kind, PENDING),
            )
        self.store.flush()

    def get(self, execution: int) -> Execution:
        rows = self.store.query(f"{_EXECUTION} WHERE id = ?", (execution,))
        if not rows:
            raise UnknownSubject(f"no runbook execution {execution}")
        return self._execution(rows[0])

    def latest(self, name: str) -> Execution | None:
        rows = self.store.query(f"{_EXECUTION} WHERE runbook = ? ORDER BY id DESC LIMIT 1", (name,))
        return self._execution(rows[0]) if rows else None

    def executions(self, name: str | None = None) -> list[Execution]:
        """Executions, newest first (only ``name``'s when given)."""
        where, params = ("WHERE runbook = ?", (name,)) if name is not None else ("", ())
        rows = self.store.query(f"{_EXECUTION} {where} ORDER BY id DESC", params)
        return [self._execution(r) for r in rows]

    def names(self) -> list[str]:
        rows = self.store.query("SELECT DISTINCT runbook FROM runbook_executions ORDER BY 1")
        return [r[0] for r in rows]

    def set_status(
        self, execution: int, status: str, *, detail: str = "", pid: int | None = None
    ) -> None:
        finished = self.clock() if status in (*FINISHED, FAILED) else None
        self.store.write(
            "UPDATE runbook_executions SET status = ?, detail = ?, pid = ?, finished = ?"
            " WHERE id = ?",
            (status, detail, pid, finished, execution),
        )
        self.store.flush()

    def ask_takeover(self, execution: int, pid: int | None) -> None:
        """Ask (``pid``) or stop asking (None) the process waiting on an escalation to leave."""
        self.store.write(
            "UPDATE runbook_executions SET takeover = ? WHERE id = ?", (pid, execution)
        )
        self.store.flush()

    def takeover(self, execution: int) -> int | None:
        rows = self.store.query(
            "SELECT takeover FROM runbook_executions WHERE id = ?", (execution,)
        )
        return rows[0][0] if rows else None

    # -- steps ---------------------------------------------------------------------

    def save_step(self, execution: int, run: StepRun) -> None:
        self.store.write(
            "UPDATE runbook_steps SET status = ?, attempts = ?, started = ?, finished = ?,"
            " detail = ?, output = ?, decided_by = ?, pid = ? WHERE execution = ? AND step = ?",
            (
                run.status,
                run.attempts,
                run.started,
                run.finished,
                run.detail,
                run.output[-OUTPUT_CHARS:],
                json.dumps(list(run.decided_by)),
                run.pid,
                execution,
                run.step,
            ),
        )
        self.store.flush()

    # -- decisions -----------------------------------------------------------------

    def decide(self, execution: int, step: str, by: str, approve: bool, comment: str = "") -> None:
        self.store.write(
            "INSERT INTO runbook_decisions (execution, step, by, approve, comment, ts)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (execution, step, by, int(approve), comment, self.clock()),
        )
        self.event(execution, "decision_recorded", step, by=by, approve=approve, comment=comment)
        self.store.flush()

    def decisions(self, execution: int, step: str) -> list[Approval]:
        """The step's decisions, oldest first (a person's later one replaces an earlier)."""
        rows = self.store.query(
            "SELECT by, approve, comment FROM runbook_decisions WHERE execution = ? AND step = ?"
            " ORDER BY seq",
            (execution, step),
        )
        return [Approval(by, bool(approve), comment) for by, approve, comment in rows]

    # -- events --------------------------------------------------------------------

    def event(self, execution: int, kind: str, step: str | None = None, /, **data: Any) -> float:
        """Journal an event (committed by the next flush); returns its time."""
        ts = self.clock()
        self.store.write(
            "INSERT INTO runbook_events (ts, execution, kind, step, data) VALUES (?, ?, ?, ?, ?)",
            (ts, execution, kind, step, json.dumps(data, default=str)),
        )
        return ts

    def events(self, execution: int) -> list[dict[str, Any]]:
        rows = self.store.query(
            "SELECT ts, kind, step, data FROM runbook_events WHERE execution = ? ORDER BY seq",
            (execution,),
        )
        out = []
        for ts, kind, step, data in rows:
            event: dict[str, Any] = {"ts": ts, "event": kind}
            if step is not None:
                event["step"] = step
            out.append({**event, **json.loads(data)})
        return out

    # -- reading -------------------------------------------------------------------

    def _execution(self, row: tuple[Any, ...]) -> Execution:
        steps = tuple(_step_run(r) for r in self.store.query(_STEP, (row[0],)))
        ident, name, source, kind, definition, escalation, *rest = row
        sha, status, by, pid, takeover, started, finished, detail = rest
        return Execution(
            ident,
            name,
            source,
            kind,
            Runbook.model_validate_json(definition),
            Escalation.model_validate_json(escalation),
            sha,
            status,
            by,
            pid,
            takeover,
            started,
            finished,
            detail,
            steps=steps,
        )


def _step_run(row: tuple[Any, ...]) -> StepRun:
    step, position, kind, status, attempts, started, finished, detail, output, who, pid = row
    return StepRun(
        step,
        position,
        kind,
        status,
        attempts,
        started,
        finished,
        detail,
        output,
        tuple(json.loads(who)),
        pid,
    )


def runbook_outcomes(store: SqliteStore) -> list[dict[str, Any]]:
    """Every runbook execution that has an outcome, for the rollback success rate.

    ``completed`` is a success; ``failed`` (a step failed, not resumed to the end
    yet) and ``abandoned`` (restarted instead) are not. An execution still running,
    or interrupted before it failed or finished, is left out.
    """
    if not store.query("SELECT 1 FROM sqlite_master WHERE name = 'runbook_executions'"):
        return []
    rows = store.query(
        "SELECT id, runbook, status, started, finished, detail FROM runbook_executions"
        " WHERE status IN (?, ?, ?) ORDER BY started",
        (COMPLETED, FAILED, ABANDONED),
    )
    return [
        {
            "kind": "runbook",
            "subject": name,
            "ok": status == COMPLETED,
            "started": started,
            "finished": finished,
            "detail": f"execution {ident} {status}: {detail}",
        }
        for ident, name, status, started, finished, detail in rows
    ]


__all__ = [
    "ABANDONED",
    "COMPLETED",
    "DONE",
    "FAILED",
    "INTERRUPTED",
    "PENDING",
    "RUNNING",
    "SCHEMA",
    "WAITING",
    "Execution",
    "RunbookJournal",
    "StepRun",
    "digest",
    "runbook_outcomes",
]
