"""Rollbacks of a run: the compensations of completed work, in reverse dependency order.

A task may have a ``rollback:`` action (a runner, like ``run:``). When a task fails for
good and its ``on_failure`` is ``rollback_milestone``, ``rollback_phase`` or
``rollback_run`` (or an operator runs ``counterpoint rollback``), a **rollback** of that
scope starts: nothing more of the scope is dispatched, what runs in it is cancelled, and
the ``rollback:`` actions of its completed tasks run, each after the compensations of
every completed task that depended on it (the reverse of the order the work was done),
independent ones side by side. This module holds the bookkeeping: which compensations a
rollback has, what each waits for, and the journal (tables ``rollbacks`` and
``compensations``); the run engine runs them.

Guarantees: a compensation journaled ``done`` never runs again; one that was running
when the process stopped runs again on resume (at least once: it gets the same
``idempotency_key`` each time, ``RUN:TASK:rollback``). A compensation that fails is
retried like its task (``retries``, backoff), then its rollback escalates
(``rollback:TASK``) and the compensations that had to wait for it are left undone, as
the rollback's report says.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from counterpoint.plan.graph import Graph
from counterpoint.store.sqlite import SqliteStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS rollbacks (
    run_id INTEGER NOT NULL,
    id INTEGER NOT NULL,
    scope_kind TEXT NOT NULL,
    scope TEXT NOT NULL,
    trigger TEXT NOT NULL,
    status TEXT NOT NULL,
    started REAL NOT NULL,
    finished REAL,
    PRIMARY KEY (run_id, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rollback_actions (
    run_id INTEGER NOT NULL,
    task TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    action TEXT NOT NULL,
    agent TEXT,
    PRIMARY KEY (run_id, task, attempt)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS compensations (
    run_id INTEGER NOT NULL,
    rollback_id INTEGER NOT NULL,
    task TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    started REAL,
    finished REAL,
    error TEXT,
    PRIMARY KEY (run_id, rollback_id, task)
) WITHOUT ROWID;
"""
_UPSERT_ROLLBACK = "INSERT OR REPLACE INTO rollbacks VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
_UPSERT_COMPENSATION = "INSERT OR REPLACE INTO compensations VALUES (?, ?, ?, ?, ?, ?, ?, ?)"

SCOPES = ("task", "milestone", "phase", "run")
#: A compensation sent to a remote agent carries attempt ``WIRE_ATTEMPT * rollback id +
#: its attempt`` on the wire, never the number of one of the task's own attempts.
WIRE_ATTEMPT = 1000
#: Compensation statuses: ``pending`` (waits its turn), ``running``, ``retrying``, ``done``,
#: ``failed`` (retries used up), ``left`` (not run: one it had to wait for failed),
#: ``none`` (the task has no rollback action: nothing to undo), ``already`` (an earlier
#: rollback of the run compensated it: a compensation that completed never runs again).
FINAL = frozenset({"done", "failed", "left", "none", "already"})


@dataclass
class Compensation:
    task: int
    tid: str
    status: str = "pending"
    attempts: int = 0
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    waits_for: set[int] = field(default_factory=set)  # tasks whose compensation goes first

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.tid,
            "status": self.status,
            "attempts": self.attempts,
            "started": self.started,
            "finished": self.finished,
            "error": self.error,
        }


@dataclass
class Rollback:
    id: int
    scope_kind: str  # task | milestone | phase | run
    scope: str
    trigger: str  # the failed task, or "operator NAME"
    members: list[int]  # the scope's tasks
    status: str = "running"  # running | completed | failed
    started: float = field(default_factory=time.time)
    finished: float | None = None
    comps: dict[int, Compensation] = field(default_factory=dict)

    @property
    def open(self) -> bool:
        return self.status == "running"

    def undone(self) -> list[str]:
        """Tasks whose work this rollback could not undo (failed or left)."""
        return sorted(c.tid for c in self.comps.values() if c.status in ("failed", "left"))

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "scope_kind": self.scope_kind,
            "scope": self.scope,
            "trigger": self.trigger,
            "status": self.status,
            "started": self.started,
            "finished": self.finished,
            "compensations": [c.to_json() for c in self.comps.values()],
            "left_undone": self.undone(),
        }


def scope_members(graph: Graph, kind: str, scope: str) -> list[int]:
    """The tasks of a scope (``task`` T, ``milestone`` M, ``phase`` P, ``run``);
    LookupError naming what exists when the scope is unknown."""
    if kind == "run":
        return list(range(graph.n_tasks))
    if kind == "task":
        if scope not in graph.index:
            raise LookupError(f"no task {scope!r} in the plan")
        return [graph.index[scope]]
    if kind == "milestone":
        ids = [m.id for m in graph.milestones]
        if scope not in ids:
            raise LookupError(f"no milestone {scope!r}; milestones: {', '.join(ids)}")
        k = ids.index(scope)
        return [t for t in range(graph.n_tasks) if graph.milestone_of_task[t] == k]
    if kind == "phase":
        ids = [p.id for p in graph.plan.phases]
        if scope not in ids:
            raise LookupError(f"no phase {scope!r}; phases: {', '.join(ids)}")
        k = ids.index(scope)
        return [t for t in range(graph.n_tasks) if graph.phase_of_task[t] == k]
    raise LookupError(f"unknown rollback scope {kind!r} (one of {', '.join(SCOPES)})")


def order(graph: Graph, comps: dict[int, Compensation]) -> None:
    """Set each compensation's ``waits_for``: the completed tasks that depend on it."""
    members = set(comps)
    for t, comp in comps.items():
        comp.waits_for = graph.descendants(t) & members


class RollbackJournal:
    """The rollbacks and compensations of one run in its store."""

    def __init__(
        self,
        store: SqliteStore,
        run_id: int,
        graph: Graph,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.g = graph
        self.wall = wall
        store.ensure_schema(SCHEMA)

    def register(self, task: str, attempt: int, action: dict[str, Any], agent: str | None) -> None:
        """Journal the rollback action of an attempt about to start (before it starts),
        and the agent it runs on (a remote action goes back to that agent)."""
        self.store.write(
            "INSERT OR REPLACE INTO rollback_actions VALUES (?, ?, ?, ?, ?)",
            (self.run_id, task, attempt, json.dumps(action, sort_keys=True), agent),
        )

    def registered(self, task: str) -> tuple[dict[str, Any], str | None] | None:
        """The rollback action registered for the task's latest attempt and its agent."""
        rows = self.store.query(
            "SELECT action, agent FROM rollback_actions WHERE run_id = ? AND task = ? "
            "ORDER BY attempt DESC LIMIT 1",
            (self.run_id, task),
        )
        return (json.loads(rows[0][0]), rows[0][1]) if rows else None

    def next_id(self) -> int:
        rows = self.store.query(
            "SELECT COALESCE(MAX(id), 0) FROM rollbacks WHERE run_id = ?", (self.run_id,)
        )
        return int(rows[0][0]) + 1

    def save(self, rb: Rollback) -> None:
        self.store.write(
            _UPSERT_ROLLBACK,
            (
                self.run_id,
                rb.id,
                rb.scope_kind,
                rb.scope,
                rb.trigger,
                rb.status,
                rb.started,
                rb.finished,
            ),
        )

    def save_comp(self, rb: Rollback, c: Compensation) -> None:
        self.store.write(
            _UPSERT_COMPENSATION,
            (self.run_id, rb.id, c.tid, c.status, c.attempts, c.started, c.finished, c.error),
        )

    def load(self) -> list[Rollback]:
        """Every rollback of the run, with its compensations (their order recomputed)."""
        found = []
        rows = self.store.query(
            "SELECT id, scope_kind, scope, trigger, status, started, finished FROM rollbacks "
            "WHERE run_id = ? ORDER BY id",
            (self.run_id,),
        )
        for rid, kind, scope, trigger, status, started, finished in rows:
            try:
                members = scope_members(self.g, kind, scope)
            except LookupError:
                members = []
            rb = Rollback(rid, kind, scope, trigger, members, status, started, finished)
            for tid, cstatus, attempts, cstarted, cfinished, error in self.store.query(
                "SELECT task, status, attempts, started, finished, error FROM compensations "
                "WHERE run_id = ? AND rollback_id = ?",
                (self.run_id, rid),
            ):
                t = self.g.index.get(tid)
                if t is not None:
                    rb.comps[t] = Compensation(
                        t, tid, cstatus, attempts, cstarted, cfinished, error
                    )
            order(self.g, rb.comps)
            found.append(rb)
        return found


def read_rollbacks(store: SqliteStore, run_id: int) -> list[dict[str, Any]]:
    """The run's rollbacks as JSON (for reports and the CLI), without a compiled plan."""
    try:
        rows = store.query(
            "SELECT id, scope_kind, scope, trigger, status, started, finished FROM rollbacks "
            "WHERE run_id = ? ORDER BY id",
            (run_id,),
        )
    except Exception as exc:  # a journal written before rollbacks existed
        if "no such table" in str(exc):
            return []
        raise
    out = []
    for rid, kind, scope, trigger, status, started, finished in rows:
        comps = [
            {
                "task": tid,
                "status": cstatus,
                "attempts": attempts,
                "started": cstarted,
                "finished": cfinished,
                "error": error,
            }
            for tid, cstatus, attempts, cstarted, cfinished, error in store.query(
                "SELECT task, status, attempts, started, finished, error FROM compensations "
                "WHERE run_id = ? AND rollback_id = ? ORDER BY COALESCE(started, 1e18), task",
                (run_id, rid),
            )
        ]
        out.append(
            {
                "id": rid,
                "scope_kind": kind,
                "scope": scope,
                "trigger": trigger,
                "status": status,
                "started": started,
                "finished": finished,
                "compensations": comps,
                "left_undone": sorted(
                    c["task"] for c in comps if c["status"] in ("failed", "left")
                ),
            }
        )
    return out


def compensation_outcomes(rollbacks: Iterable[dict[str, Any]]) -> list[bool]:
    """One boolean per compensation that ran to an end: True when it undid its task."""
    return [
        c["status"] == "done"
        for rb in rollbacks
        for c in rb["compensations"]
        if c["status"] in ("done", "failed")
    ]
