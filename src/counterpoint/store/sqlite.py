"""The run journal in SQLite (WAL): one file per state directory, one writer per run.

Writes are buffered and committed in groups (:meth:`SqliteStore.flush`); the
orchestrator flushes before it dispatches the dependents of completed tasks,
so a task the journal shows as complete is never run again after a crash.
Operator commands (cancel, agent state, approvals) arrive through the same
file from other processes, so they work whether or not the run is served.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import signal
import sqlite3
import struct
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from counterpoint.errors import CounterpointError

if TYPE_CHECKING:
    from counterpoint.messaging.protocol import Message

DB_NAME = "state.db"
SCHEMA_VERSION = 1
OPEN_PATIENCE_S = 30.0  # how long opening a journal waits for another process's lock

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    plan_path TEXT NOT NULL,
    plan_name TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    plan_blob BLOB NOT NULL,
    options TEXT NOT NULL,
    status TEXT NOT NULL,
    exit_code INTEGER,
    pid INTEGER,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    run_id INTEGER NOT NULL,
    task TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    agent TEXT,
    started REAL,
    finished REAL,
    error TEXT,
    blocked_by TEXT,
    result TEXT,
    PRIMARY KEY (run_id, task)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS attempts (
    run_id INTEGER NOT NULL,
    task TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    agent TEXT,
    started REAL NOT NULL,
    finished REAL,
    status TEXT NOT NULL,
    error TEXT,
    PRIMARY KEY (run_id, task, attempt)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    task TEXT,
    data TEXT
);
CREATE TABLE IF NOT EXISTS commands (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    args TEXT NOT NULL,
    done REAL
);
CREATE TABLE IF NOT EXISTS agents (
    run_id INTEGER NOT NULL,
    agent TEXT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (run_id, agent)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    run_id INTEGER NOT NULL,
    batch_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    message_id TEXT,
    json TEXT NOT NULL,
    stored REAL NOT NULL,
    PRIMARY KEY (batch_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_by_task ON events (run_id, task);
"""

_SCHEMA_NAMES = frozenset(re.findall(r"EXISTS (\w+)", _SCHEMA))

_UPSERT_TASK = """
INSERT INTO tasks (run_id, task, state, attempts, agent, started, finished, error, blocked_by,
                   result)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (run_id, task) DO UPDATE SET
    state = excluded.state, attempts = excluded.attempts, agent = excluded.agent,
    started = excluded.started, finished = excluded.finished, error = excluded.error,
    blocked_by = excluded.blocked_by, result = excluded.result
"""
_UPSERT_ATTEMPT = """
INSERT INTO attempts (run_id, task, attempt, agent, started, finished, status, error)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (run_id, task, attempt) DO UPDATE SET
    finished = excluded.finished, status = excluded.status, error = excluded.error
"""
_EVENT = "INSERT INTO events (run_id, ts, kind, task, data) VALUES (?, ?, ?, ?, ?)"


class _FaultHook:
    """Test-only fault injection at journal commits (docs/reliability.md#the-fault-hook).

    Armed only by environment variables, read once when a journal is first opened in
    the process; when none is set, a commit pays one ``is None`` test:

    - ``COUNTERPOINT_FAULT_KILL_AT=before:N`` (or ``after:N``): the process SIGKILLs
      itself right before (after) the N-th commit it makes (counting from 1);
    - ``COUNTERPOINT_FAULT_IO_AT=N``: the N-th commit and every later one fail with an
      injected ``disk I/O error``, as on a full disk;
    - ``COUNTERPOINT_FAULT_TRACE=FILE``: one line per commit (its number and the kinds
      of rows it writes) appended to FILE.
    """

    def __init__(self, kill_when: str, kill_at: int, io_at: int, trace: str) -> None:
        self.kill_when, self.kill_at, self.io_at, self.trace = kill_when, kill_at, io_at, trace
        self.count = 0

    @classmethod
    def from_env(cls, env: os._Environ[str] | dict[str, str]) -> _FaultHook | None:
        kill, io_at, trace = (
            env.get("COUNTERPOINT_FAULT_KILL_AT", ""),
            env.get("COUNTERPOINT_FAULT_IO_AT", ""),
            env.get("COUNTERPOINT_FAULT_TRACE", ""),
        )
        if not (kill or io_at or trace):
            return None
        when, _, at = kill.rpartition(":")
        if kill and (when not in ("before", "after", "") or not at.isdigit()):
            raise ValueError(f"COUNTERPOINT_FAULT_KILL_AT={kill!r}: use before:N or after:N")
        return cls(when or "before", int(at or 0), int(io_at or 0), trace)

    def before_commit(self, what: str) -> None:
        self.count += 1
        if self.trace:
            with open(self.trace, "a", encoding="utf-8") as f:
                f.write(f"{self.count} {what}\n")
        if self.io_at and self.count >= self.io_at:
            raise sqlite3.OperationalError("disk I/O error (injected by COUNTERPOINT_FAULT_IO_AT)")
        if self.kill_when == "before" and self.count == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def after_commit(self) -> None:
        if self.kill_when == "after" and self.count == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


_UNREAD: Any = object()
_faults: Any = _UNREAD  # the process's _FaultHook, or None; read at the first open


def _arm_faults() -> None:
    global _faults
    if _faults is _UNREAD:
        _faults = _FaultHook.from_env(os.environ)


class StateDirError(CounterpointError):
    """The state directory or its database cannot be used (unwritable, corrupt, too new)."""


@dataclass(frozen=True)
class RunRecord:
    id: int
    plan_path: str
    plan_name: str
    fingerprint: str
    options: dict[str, Any]
    status: str
    exit_code: int | None
    pid: int | None
    created: float
    updated: float


@dataclass(frozen=True)
class TaskRecord:
    task: str
    state: str
    attempts: int
    agent: str | None
    started: float | None
    finished: float | None
    error: str | None
    blocked_by: str | None
    result: dict[str, Any] | None


@dataclass(frozen=True)
class Command:
    id: int
    kind: str
    args: dict[str, Any]
    ts: float


class SqliteStore:
    """The journal of one state directory."""

    def __init__(self, state_dir: Path, *, sync: str = "full", create: bool = True) -> None:
        self.state_dir = state_dir
        self.path = state_dir / DB_NAME
        self._pending: dict[str, list[Sequence[Any]]] = {}
        _arm_faults()
        self.conn = self._connect(create, sync)

    # -- opening ---------------------------------------------------------------

    def _connect(self, create: bool, sync: str) -> sqlite3.Connection:
        if not create and not self.path.exists():
            raise StateDirError(f"no run journal in {self.state_dir} (nothing was run there)")
        existed = self.path.exists() and self.path.stat().st_size > 0
        if existed and not _run_active(self.state_dir):
            problem = wal_problem(self.path.with_name(self.path.name + "-wal"))
            if problem is not None:
                raise StateDirError(
                    f"the run journal {self.path} is unreadable ({problem}); it may be corrupt "
                    "or truncated. Move it aside to start afresh."
                )
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        except (OSError, sqlite3.Error) as exc:
            raise StateDirError(
                f"cannot open the state directory {self.state_dir}: {exc}"
            ) from None
        try:
            self._prepare_patiently(conn, sync, existed)
        except sqlite3.OperationalError as exc:
            conn.close()
            raise StateDirError(f"cannot open the run journal {self.path}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StateDirError(
                f"the run journal {self.path} is unreadable ({exc}); it may be corrupt or "
                "truncated. Move it aside to start afresh."
            ) from None
        return conn

    def _prepare_patiently(self, conn: sqlite3.Connection, sync: str, existed: bool) -> None:
        """:meth:`_prepare`, tried again while another process holds a lock.

        SQLite answers "database is locked" at once, without waiting in the busy
        handler, when two connections open a new journal together (one switches it to
        WAL or creates the tables while the other reads it): waiting a little and trying
        again is all it takes.
        """
        deadline = time.monotonic() + OPEN_PATIENCE_S
        delay = 0.005
        while True:
            try:
                self._prepare(conn, sync, existed)
                return
            except sqlite3.OperationalError as exc:
                locked = "locked" in str(exc) or "busy" in str(exc)
                if not locked or time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.1)

    def _prepare(self, conn: sqlite3.Connection, sync: str, existed: bool) -> None:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
        conn.execute("PRAGMA busy_timeout=30000")
        row = conn.execute("PRAGMA quick_check").fetchone()
        if row is None or row[0] != "ok":
            raise sqlite3.DatabaseError(f"integrity check failed: {row[0] if row else 'no answer'}")
        if existed:
            _verify_content(conn)
        # in one transaction: a process opening the journal meanwhile sees all its tables
        # or none (a journal with some missing is refused as damaged)
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        if not names >= _SCHEMA_NAMES:
            conn.executescript(
                f"BEGIN IMMEDIATE;\n{_SCHEMA}\n"
                f"INSERT OR IGNORE INTO meta VALUES ('schema', '{SCHEMA_VERSION}');\nCOMMIT;"
            )
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if version is None:
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(version[0]) > SCHEMA_VERSION:
            raise StateDirError(
                f"{self.path} was written by a newer counterpoint (schema {version[0]})"
            )

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.conn.close()

    # -- buffered writes -------------------------------------------------------

    def _queue(self, sql: str, params: Sequence[Any]) -> None:
        self._pending.setdefault(sql, []).append(params)

    def flush(self) -> None:
        """Commit everything buffered in one transaction (durable per ``sync``)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        what = _summary(pending) if _faults is not None else ""
        try:
            with self._transaction(what):
                for sql, rows in pending.items():
                    self.conn.executemany(sql, rows)
        except BaseException:
            # Nothing is dropped: a later flush (after the disk has room again) or the
            # next run's resume sees the journal without a gap.
            for sql, rows in self._pending.items():
                pending.setdefault(sql, []).extend(rows)
            self._pending = pending
            raise

    def _transaction(self, what: str = "") -> _Transaction:
        return _Transaction(self.conn, what)

    @property
    def dirty(self) -> bool:
        return bool(self._pending)

    # -- tables of other modules (escalations, shared state, ...) ---------------

    def ensure_schema(self, ddl: str) -> None:
        """Create a module's own tables and indexes (``CREATE ... IF NOT EXISTS``)."""
        self.flush()
        self.conn.executescript(ddl)

    def write(self, sql: str, params: Sequence[Any]) -> None:
        """Buffer a write; it is committed by the next :meth:`flush`, in order with the rest."""
        self._queue(sql, params)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of a read (what :meth:`write` buffered is only seen after a flush)."""
        return self.conn.execute(sql, params).fetchall()

    # -- runs ------------------------------------------------------------------

    def create_run(
        self,
        plan_path: str,
        plan_name: str,
        fingerprint: str,
        plan_json: str,
        options: dict[str, Any],
        task_ids: Iterable[str],
    ) -> int:
        now = time.time()
        blob = zlib.compress(plan_json.encode("utf-8"), 6)
        with self._transaction():
            cur = self.conn.execute(
                "INSERT INTO runs (plan_path, plan_name, fingerprint, plan_blob, options, status,"
                " created, updated) VALUES (?, ?, ?, ?, ?, 'running', ?, ?)",
                (plan_path, plan_name, fingerprint, blob, json.dumps(options), now, now),
            )
            run_id = int(cur.lastrowid or 0)
            self.conn.executemany(
                "INSERT INTO tasks (run_id, task, state) VALUES (?, ?, 'pending')",
                ((run_id, t) for t in task_ids),
            )
        return run_id

    def adopt_plan(
        self, run_id: int, fingerprint: str, plan_json: str, task_ids: Sequence[str]
    ) -> None:
        """Make a changed plan the run's plan: new tasks pending, removed tasks forgotten."""
        self.flush()
        blob = zlib.compress(plan_json.encode("utf-8"), 6)
        with self._transaction():
            self.conn.execute(
                "UPDATE runs SET fingerprint = ?, plan_blob = ?, updated = ? WHERE id = ?",
                (fingerprint, blob, time.time(), run_id),
            )
            self.conn.execute("CREATE TEMP TABLE IF NOT EXISTS keep (task TEXT PRIMARY KEY)")
            self.conn.execute("DELETE FROM keep")
            self.conn.executemany("INSERT INTO keep VALUES (?)", ((t,) for t in task_ids))
            self.conn.execute(
                "DELETE FROM tasks WHERE run_id = ? AND task NOT IN (SELECT task FROM keep)",
                (run_id,),
            )
            self.conn.execute(
                "INSERT OR IGNORE INTO tasks (run_id, task, state) SELECT ?, task, 'pending'"
                " FROM keep",
                (run_id,),
            )

    def latest_run(self) -> RunRecord | None:
        row = self.conn.execute(
            "SELECT id, plan_path, plan_name, fingerprint, options, status, exit_code, pid,"
            " created, updated FROM runs ORDER BY id DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        return RunRecord(row[0], row[1], row[2], row[3], json.loads(row[4]), *row[5:])

    def plan_json(self, run_id: int) -> str:
        row = self.conn.execute("SELECT plan_blob FROM runs WHERE id = ?", (run_id,)).fetchone()
        return zlib.decompress(row[0]).decode("utf-8") if row else "{}"

    def set_run_status(
        self, run_id: int, status: str, exit_code: int | None = None, pid: int | None = None
    ) -> None:
        self.flush()
        with self._transaction():
            self.conn.execute(
                "UPDATE runs SET status = ?, exit_code = ?, pid = ?, updated = ? WHERE id = ?",
                (status, exit_code, pid, time.time(), run_id),
            )

    # -- tasks, attempts, events -------------------------------------------------

    def save_task(self, run_id: int, rec: TaskRecord) -> None:
        result = _to_json(rec.result) if rec.result is not None else None
        self._queue(
            _UPSERT_TASK,
            (
                run_id,
                rec.task,
                rec.state,
                rec.attempts,
                rec.agent,
                rec.started,
                rec.finished,
                rec.error,
                rec.blocked_by,
                result,
            ),
        )

    def save_attempt(
        self,
        run_id: int,
        task: str,
        attempt: int,
        agent: str | None,
        started: float,
        finished: float | None,
        status: str,
        error: str | None = None,
    ) -> None:
        self._queue(
            _UPSERT_ATTEMPT, (run_id, task, attempt, agent, started, finished, status, error)
        )

    def event(self, run_id: int, kind: str, task: str | None = None, **data: Any) -> None:
        payload = _to_json(data) if data else None
        self._queue(_EVENT, (run_id, time.time(), kind, task, payload))

    def message(self, run_id: int, message: Message) -> None:
        """Journal a protocol message as a ``message`` event (serialized once, by pydantic)."""
        payload = message.model_dump_json(exclude_none=True)
        self._queue(_EVENT, (run_id, time.time(), "message", message.content.task_id, payload))

    def tasks(self, run_id: int) -> dict[str, TaskRecord]:
        rows = self.conn.execute(
            "SELECT task, state, attempts, agent, started, finished, error, blocked_by, result"
            " FROM tasks WHERE run_id = ?",
            (run_id,),
        )
        return {r[0]: _task_record(r) for r in rows}

    def attempts(self, run_id: int, task: str) -> list[tuple[Any, ...]]:
        return self.conn.execute(
            "SELECT attempt, agent, started, finished, status, error FROM attempts"
            " WHERE run_id = ? AND task = ? ORDER BY attempt",
            (run_id, task),
        ).fetchall()

    def attempt_counts(self, run_id: int) -> dict[str, dict[str, int]]:
        """Per task, how many of its attempts ended in each status (``failed``, ``lost``...)."""
        out: dict[str, dict[str, int]] = {}
        rows = self.conn.execute(
            "SELECT task, status, COUNT(*) FROM attempts WHERE run_id = ? GROUP BY task, status",
            (run_id,),
        )
        for task, status, count in rows:
            out.setdefault(task, {})[status] = count
        return out

    def events(self, run_id: int, after: int = 0, limit: int = 1000) -> list[tuple[Any, ...]]:
        return self.conn.execute(
            "SELECT seq, ts, kind, task, data FROM events WHERE run_id = ? AND seq > ?"
            " ORDER BY seq LIMIT ?",
            (run_id, after, limit),
        ).fetchall()

    def events_of_kind(self, run_id: int, kind: str) -> list[dict[str, Any]]:
        """The data of every event of one kind, oldest first (gates, alerts ... are few)."""
        rows = self.conn.execute(
            "SELECT data FROM events WHERE run_id = ? AND kind = ? ORDER BY seq", (run_id, kind)
        )
        return [json.loads(r[0]) if r[0] else {} for r in rows]

    def append_messages(self, run_id: int, batch_id: str, messages: list[dict[str, Any]]) -> None:
        """Store a batch of messages durably (a redelivered batch is not stored twice)."""
        self.flush()
        stored = time.time()
        with self._transaction():
            self.conn.executemany(
                "INSERT OR IGNORE INTO messages VALUES (?, ?, ?, ?, ?, ?)",
                (
                    (run_id, batch_id, i, str(m.get("message_id")), _to_json(m), stored)
                    for i, m in enumerate(messages)
                ),
            )

    def batch_messages(self, run_id: int) -> list[dict[str, Any]]:
        """Messages stored by the batch channel, in the order they were stored."""
        rows = self.conn.execute(
            "SELECT json FROM messages WHERE run_id = ? ORDER BY stored, batch_id, seq", (run_id,)
        ).fetchall()
        return [json.loads(r[0]) for r in rows]

    # -- agents and operator commands ---------------------------------------------

    def save_agent_state(self, run_id: int, agent: str, state: str) -> None:
        self._queue(
            "INSERT INTO agents VALUES (?, ?, ?) ON CONFLICT (run_id, agent)"
            " DO UPDATE SET state = excluded.state",
            (run_id, agent, state),
        )

    def agent_states(self, run_id: int) -> dict[str, str]:
        rows = self.conn.execute("SELECT agent, state FROM agents WHERE run_id = ?", (run_id,))
        return dict(rows.fetchall())

    def add_command(self, run_id: int, kind: str, **args: Any) -> int:
        with self._transaction():
            cur = self.conn.execute(
                "INSERT INTO commands (run_id, ts, kind, args) VALUES (?, ?, ?, ?)",
                (run_id, time.time(), kind, json.dumps(args)),
            )
        return int(cur.lastrowid or 0)

    def take_commands(self, run_id: int) -> list[Command]:
        """Operator commands not yet handled, oldest first; they are marked handled."""
        rows = self.conn.execute(
            "SELECT id, kind, args, ts FROM commands WHERE run_id = ? AND done IS NULL ORDER BY id",
            (run_id,),
        ).fetchall()
        if rows:
            self._queue_many(
                "UPDATE commands SET done = ? WHERE id = ?", [(time.time(), r[0]) for r in rows]
            )
        return [Command(r[0], r[1], json.loads(r[2]), r[3]) for r in rows]

    def commands(self, run_id: int, kind: str) -> list[Command]:
        rows = self.conn.execute(
            "SELECT id, kind, args, ts FROM commands WHERE run_id = ? AND kind = ? ORDER BY id",
            (run_id, kind),
        ).fetchall()
        return [Command(r[0], r[1], json.loads(r[2]), r[3]) for r in rows]

    def _queue_many(self, sql: str, rows: list[Sequence[Any]]) -> None:
        self._pending.setdefault(sql, []).extend(rows)


_CORE_TABLES = ("meta", "runs", "tasks", "attempts", "events")
_TASK_STATES = frozenset(
    (
        "pending",
        "ready",
        "running",
        "retrying",
        "completed",
        "failed",
        "blocked",
        "cancelled",
        "rolled_back",
    )
)
_RUN_STATUSES = frozenset(("running", "completed", "failed", "cancelled"))
_WAL_MAGIC = (0x377F0682, 0x377F0683)


def _verify_content(conn: sqlite3.Connection) -> None:
    """What ``quick_check`` cannot see: a journal of another program or without its
    tables, and damage inside the rows a resume acts on (the latest run: its status,
    its plan against the plan's sha256 fingerprint, its tasks' states)."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        return  # a journal being created by another process right now
    missing = [t for t in _CORE_TABLES if t not in tables]
    if missing:
        raise sqlite3.DatabaseError(
            f"not a counterpoint run journal (tables missing: {', '.join(missing)})"
        )
    if conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() is None:
        raise sqlite3.DatabaseError("not a counterpoint run journal (no schema version)")
    run = conn.execute(
        "SELECT id, fingerprint, plan_blob, options, status FROM runs ORDER BY id DESC LIMIT 1"
    ).fetchone()
    if run is None:
        return
    run_id, digest, blob, options, status = run
    if status not in _RUN_STATUSES:
        raise sqlite3.DatabaseError(f"run {run_id} has an unknown status {status!r}")
    try:
        text = zlib.decompress(blob)
        json.loads(options)
    except (zlib.error, TypeError, ValueError) as exc:
        raise sqlite3.DatabaseError(f"run {run_id}'s plan or options are damaged: {exc}") from None
    if hashlib.sha256(text).hexdigest() != digest:
        raise sqlite3.DatabaseError(f"run {run_id}'s plan does not match its fingerprint")
    for task, state, result in conn.execute(
        "SELECT task, state, result FROM tasks WHERE run_id = ?", (run_id,)
    ):
        if state not in _TASK_STATES:
            raise sqlite3.DatabaseError(f"task {task!r} has an unknown state {state!r}")
        try:
            json.loads(result) if result else None
        except ValueError:
            raise sqlite3.DatabaseError(f"task {task!r} has a damaged result") from None


def _run_active(state_dir: Path) -> bool:
    """True when a process holds the run lock (it may be appending to the WAL now)."""
    path = state_dir / "run.lock"
    if not path.exists():
        return False
    try:
        with open(path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
    except OSError:
        return False
    return False


def wal_problem(wal: Path) -> str | None:
    """Damage in a write-ahead log that SQLite would pass over in silence, losing commits:
    a torn or flipped header, a frame of the current log whose checksum fails, a frame
    cut short. (Frames of an earlier log generation, left after a checkpoint, are normal.)"""
    try:
        data = wal.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"its write-ahead log cannot be read: {exc.strerror}"
    if not data:
        return None
    if len(data) < 32:
        return "its write-ahead log is shorter than its header"
    magic, _, page_size = struct.unpack(">III", data[:12])
    if magic not in _WAL_MAGIC or page_size < 512 or page_size & (page_size - 1):
        return "its write-ahead log has a damaged header"
    order = ">" if magic & 1 else "<"
    sums = _wal_checksum(data[:24], 0, 0, order)
    if sums != struct.unpack(">II", data[24:32]):
        return "its write-ahead log has a damaged header"
    salt, frame = data[16:24], 24 + page_size
    offset, broken = 32, False
    while offset < len(data):
        header = data[offset : offset + 24]
        current = len(header) == 24 and header[8:16] == salt
        if len(data) - offset < frame:
            return "its write-ahead log ends in a partial frame" if current or not broken else None
        if not current:
            broken = True  # the rest may be an earlier generation's frames
        elif broken:
            return "a frame of its write-ahead log follows a damaged one"
        else:
            sums = _wal_checksum(header[:8], *sums, order)
            sums = _wal_checksum(data[offset + 24 : offset + frame], *sums, order)
            if sums != struct.unpack(">II", header[16:24]):
                return "a frame of its write-ahead log fails its checksum"
        offset += frame
    return None


def _wal_checksum(data: bytes, s0: int, s1: int, order: str) -> tuple[int, int]:
    words = struct.unpack(f"{order}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def _to_json(value: Any) -> str:
    """JSON for a task result; values JSON cannot hold are written as their text."""
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError) as exc:
        return json.dumps({"unserializable_result": repr(value)[:2000], "reason": str(exc)})


def _summary(pending: dict[str, list[Sequence[Any]]]) -> str:
    """What a flush writes, for the fault hook's trace: tables, and the kinds of events."""
    parts: list[str] = []
    for sql, rows in pending.items():
        words = sql.split()
        table = words[words.index("INTO") + 1] if "INTO" in words else words[1]
        if sql == _EVENT:
            parts.extend(sorted({f"event:{r[2]}" for r in rows}))
        else:
            parts.append(table)
    return " ".join(parts)


def _task_record(r: Sequence[Any]) -> TaskRecord:
    result = json.loads(r[8]) if r[8] else None
    return TaskRecord(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], result)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (or ROLLBACK), for a connection in autocommit mode."""

    def __init__(self, conn: sqlite3.Connection, what: str = "") -> None:
        self.conn = conn
        self.what = what

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        if kind is not None:
            self.conn.execute("ROLLBACK")
            return
        if _faults is not None:  # test-only (see _FaultHook)
            try:
                _faults.before_commit(self.what)
            except sqlite3.Error:
                self.conn.execute("ROLLBACK")
                raise
        self.conn.execute("COMMIT")
        if _faults is not None:
            _faults.after_commit()
