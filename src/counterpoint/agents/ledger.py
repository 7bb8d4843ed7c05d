"""The worktree ledger: one durable row per attempt of a ``workspace: worktree`` task.

Each row says where the attempt works (base commit, worktree, branch), which CLI session
it holds (filled in by a coding agent's adapter with :func:`record_session`) and how it
ended. A resumed run reads it to base dependents on what their dependencies merged and
to reconcile what git has with what the run believed (see
:meth:`counterpoint.agents.worktree.WorktreeManager.reconcile`).

Statuses: ``created`` (worktree made), ``running`` (the agent started), ``merged``,
``conflict`` (its branch kept, the conflict with a person), ``failed`` (worktree kept),
``discarded`` (worktree and branch gone without a merge).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from counterpoint.store.sqlite import SqliteStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS worktree_attempts (
    run_id INTEGER NOT NULL,
    task TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    base TEXT NOT NULL,
    worktree TEXT NOT NULL,
    branch TEXT NOT NULL,
    session_id TEXT,
    status TEXT NOT NULL,
    merge_commit TEXT,
    updated REAL NOT NULL,
    PRIMARY KEY (run_id, task, attempt)
) WITHOUT ROWID;
"""
STATUSES = ("created", "running", "merged", "conflict", "failed", "discarded")
_COLUMNS = "task, attempt, base, worktree, branch, session_id, status, merge_commit"

#: The ledgers of the runs in this process, for :func:`record_session`.
_OPEN: dict[tuple[Path, int], WorktreeLedger] = {}


@dataclass(frozen=True)
class LedgerEntry:
    """One attempt's row. ``merge_commit`` is the integration commit holding its work."""

    task: str
    attempt: int
    base: str
    worktree: Path
    branch: str
    session_id: str | None
    status: str
    merge_commit: str | None


class WorktreeLedger:
    """The ``worktree_attempts`` table of one run; every write is flushed at once."""

    def __init__(self, store: SqliteStore, run_id: int, state_dir: Path | None = None) -> None:
        self.store = store
        self.run_id = run_id
        self._thread = threading.get_ident()  # the store's connection belongs to it
        store.ensure_schema(SCHEMA)
        if state_dir is not None:
            _OPEN[(Path(state_dir).resolve(), run_id)] = self

    def created(self, task: str, attempt: int, base: str, worktree: Path, branch: str) -> None:
        self._write(
            "INSERT INTO worktree_attempts (run_id, task, attempt, base, worktree, branch, "
            "status, updated) VALUES (?, ?, ?, ?, ?, ?, 'created', ?) "
            "ON CONFLICT (run_id, task, attempt) DO UPDATE SET base = excluded.base, "
            "worktree = excluded.worktree, branch = excluded.branch, status = 'created', "
            "merge_commit = NULL, updated = excluded.updated",
            (self.run_id, task, attempt, base, str(worktree), branch, time.time()),
        )

    def set_status(
        self, task: str, attempt: int, status: str, merge_commit: str | None = None
    ) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown worktree ledger status {status!r}")
        self._write(
            "UPDATE worktree_attempts SET status = ?, merge_commit = ?, updated = ? "
            "WHERE run_id = ? AND task = ? AND attempt = ?",
            (status, merge_commit, time.time(), self.run_id, task, attempt),
        )

    def record_session(self, task: str, attempt: int, session_id: str) -> None:
        """The CLI session the attempt's agent holds (so a resume can continue it).

        Callable from any thread (an agent's worker thread writes through a connection of
        its own, committed at once)."""
        sql = (
            "UPDATE worktree_attempts SET session_id = ?, updated = ? "
            "WHERE run_id = ? AND task = ? AND attempt = ?"
        )
        params = (session_id, time.time(), self.run_id, task, attempt)
        if threading.get_ident() == self._thread:
            self._write(sql, params)
            return
        conn = sqlite3.connect(self.store.path, timeout=30.0)
        try:
            with conn:
                conn.execute(sql, params)
        finally:
            conn.close()

    def entries(self) -> list[LedgerEntry]:
        self.store.flush()
        rows = self.store.query(
            f"SELECT {_COLUMNS} FROM worktree_attempts WHERE run_id = ? ORDER BY updated, task",
            (self.run_id,),
        )
        return [_entry(row) for row in rows]

    def entry(self, task: str, attempt: int) -> LedgerEntry | None:
        self.store.flush()
        rows = self.store.query(
            f"SELECT {_COLUMNS} FROM worktree_attempts "
            "WHERE run_id = ? AND task = ? AND attempt = ?",
            (self.run_id, task, attempt),
        )
        return _entry(rows[0]) if rows else None

    def session(self, task: str) -> str | None:
        """The latest session id recorded for any attempt of ``task``."""
        found = [e for e in self.entries() if e.task == task and e.session_id]
        return max(found, key=lambda e: e.attempt).session_id if found else None

    def _write(self, sql: str, params: tuple[object, ...]) -> None:
        self.store.write(sql, params)
        self.store.flush()  # a crash right after must still find the row


def _entry(row: tuple[object, ...]) -> LedgerEntry:
    task, attempt, base, worktree, branch, session, status, merge = row
    return LedgerEntry(
        task=str(task),
        attempt=int(attempt),  # type: ignore[call-overload]
        base=str(base),
        worktree=Path(str(worktree)),
        branch=str(branch),
        session_id=None if session is None else str(session),
        status=str(status),
        merge_commit=None if merge is None else str(merge),
    )


def record_session(state_dir: Path, run_id: int | str, task: str, attempt: int, sid: str) -> bool:
    """Record the CLI session id of a worktree attempt of a run in this process.

    For coding-agent adapters: call it as soon as the CLI tells its session id
    (``record_session(ctx.state_dir, ctx.run_id, ctx.task_id, ctx.attempt, sid)``).
    False when the run has no worktree ledger (the agent does not use worktrees).
    """
    ledger = _OPEN.get((Path(state_dir).resolve(), int(run_id)))
    if ledger is None:
        return False
    ledger.record_session(task, attempt, sid)
    return True
