"""Deployments and their rollback (seed section 7.1), journaled step by step.

A deployment is recorded with its name (the service), version, the version it
replaced, its type and the hooks that act on the real system (see
:mod:`counterpoint.rollback.strategies`). Recording a new deployment of a name
supersedes the one before. Only the latest deployment of a name can be rolled back.

A rollback first journals its steps, then for each one journals ``running``, runs
the hook and journals ``done``, committing each change before going on. So it can
stop anywhere: a rollback cut short (a crash, SIGKILL, Ctrl-C) or stopped by a
failing step is resumed by the next :meth:`Deployments.rollback`, which skips the
steps already done and runs the interrupted or failed one again (hooks should set
a state, not change it by a delta, so running one twice is harmless).

Statuses: ``active``, ``superseded`` (a newer deployment of the name was recorded;
it becomes ``active`` again when that one is rolled back to its version),
``rolling_back``, ``rolled_back`` and ``rollback_failed``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from counterpoint.rollback import hooks, locking
from counterpoint.rollback.errors import Refused, UnknownSubject
from counterpoint.rollback.strategies import Rollout, describe, plan
from counterpoint.store.sqlite import SqliteStore

ACTIVE, SUPERSEDED = "active", "superseded"
ROLLING_BACK, ROLLED_BACK, ROLLBACK_FAILED = "rolling_back", "rolled_back", "rollback_failed"
PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,199}$")
_LOCK = "deploy"

SCHEMA = """
CREATE TABLE IF NOT EXISTS deployments (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    previous TEXT NOT NULL,
    rollout TEXT NOT NULL,
    status TEXT NOT NULL,
    author TEXT NOT NULL,
    created REAL NOT NULL,
    rollback_started REAL,
    rollback_finished REAL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS deployments_by_name ON deployments (name, id);
CREATE TABLE IF NOT EXISTS deployment_steps (
    deployment INTEGER NOT NULL,
    step INTEGER NOT NULL,
    hook TEXT NOT NULL,
    args TEXT NOT NULL,
    status TEXT NOT NULL,
    runs INTEGER NOT NULL DEFAULT 0,
    started REAL,
    finished REAL,
    error TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (deployment, step)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS deployment_events (
    seq INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    deployment INTEGER NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL
);
"""
_COLUMNS = (
    "id, name, version, previous, rollout, status, author, created, rollback_started,"
    " rollback_finished, detail"
)
_SET_STEP = (
    "UPDATE deployment_steps SET status = ?, runs = ?, started = ?, finished = ?, error = ?"
    " WHERE deployment = ? AND step = ?"
)
_SET_STATUS = (
    "UPDATE deployments SET status = ?, rollback_started = ?, rollback_finished = ?, detail = ?"
    " WHERE id = ?"
)


@dataclass(frozen=True)
class StepRecord:
    """A rollback step as journaled."""

    number: int
    hook: str
    args: dict[str, Any]
    status: str = PENDING
    runs: int = 0
    started: float | None = None
    finished: float | None = None
    error: str = ""

    def describe(self) -> str:
        return f"step {self.number}/{self.args['steps']}: {describe(self.hook, self.args)}"

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.number,
            "hook": self.hook,
            "what": describe(self.hook, self.args),
            "args": self.args,
            "status": self.status,
            "runs": self.runs,
            "started": self.started,
            "finished": self.finished,
            "error": self.error,
        }


@dataclass(frozen=True)
class Deployment:
    id: int
    name: str
    version: str
    previous: str
    rollout: Rollout
    status: str
    author: str
    created: float
    rollback_started: float | None = None
    rollback_finished: float | None = None
    detail: str = ""
    steps: tuple[StepRecord, ...] = ()

    @property
    def type(self) -> str:
        return self.rollout.type

    def left(self) -> list[StepRecord]:
        return [s for s in self.steps if s.status != DONE]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "type": self.type,
            "declared_type": self.rollout.declared,
            "version": self.version,
            "previous": self.previous,
            "status": self.status,
            "author": self.author,
            "created": self.created,
            "rollout": self.rollout.to_json(),
            "rollback": {
                "started": self.rollback_started,
                "finished": self.rollback_finished,
                "detail": self.detail,
                "steps": [s.to_json() for s in self.steps],
            },
        }


@dataclass(frozen=True)
class RollbackResult:
    """How a rollback ended: ``deployment`` as journaled, ``resumed`` if it continued an
    earlier one, ``ran`` the steps run this time, and ``left`` what is still undone."""

    deployment: Deployment
    resumed: bool
    ran: tuple[int, ...]

    @property
    def ok(self) -> bool:
        return self.deployment.status == ROLLED_BACK

    @property
    def left(self) -> list[StepRecord]:
        return self.deployment.left()


OnStep = Callable[[str, StepRecord], None]


class Deployments:
    """The deployments recorded in one state directory's journal, and their rollbacks.

    ``clock`` gives the times journaled; ``on_step(what, step)`` is told ``started``,
    ``done`` or ``failed`` for each step as the rollback goes.
    """

    def __init__(self, store: SqliteStore, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        store.ensure_schema(SCHEMA)

    # -- reading -----------------------------------------------------------------

    def names(self) -> list[str]:
        rows = self.store.query("SELECT DISTINCT name FROM deployments ORDER BY name")
        return [r[0] for r in rows]

    def history(self, name: str | None = None) -> list[Deployment]:
        """Deployments, newest first (only ``name``'s when given)."""
        if name is not None:
            self._known(name)
        where, params = ("WHERE name = ?", (name,)) if name is not None else ("", ())
        rows = self.store.query(
            f"SELECT {_COLUMNS} FROM deployments {where} ORDER BY id DESC", params
        )
        return [self._deployment(r) for r in rows]

    def latest(self, name: str) -> Deployment:
        self._known(name)
        rows = self.store.query(
            f"SELECT {_COLUMNS} FROM deployments WHERE name = ? ORDER BY id DESC LIMIT 1", (name,)
        )
        return self._deployment(rows[0])

    # -- recording ---------------------------------------------------------------

    def record(
        self,
        name: str,
        *,
        version: str,
        rollout: Rollout,
        previous: str | None = None,
        author: str,
    ) -> Deployment:
        """Record that ``name`` now runs ``version``; ``previous`` defaults to what ran before."""
        if not _NAME.match(name):
            raise Refused(
                f"bad deployment name {name!r}: use letters, digits and _ . : @ - (at most 200)"
            )
        if not version.strip():
            raise Refused("the version must not be empty")
        with locking.held(
            self.store.state_dir, _LOCK, name, "recording or rolling back a deployment of it"
        ):
            previous = self._previous(name, previous)
            if previous == version:
                raise Refused(f"{name}: the previous version is the new one ({version})")
            now = self.clock()
            self.store.write(
                "UPDATE deployments SET status = ? WHERE name = ? AND status = ?",
                (SUPERSEDED, name, ACTIVE),
            )
            self.store.write(
                "INSERT INTO deployments (name, version, previous, rollout, status, author,"
                " created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (name, version, previous, json.dumps(rollout.to_json()), ACTIVE, author, now),
            )
            self.store.flush()
            found = self.latest(name)
            self._event(found.id, "recorded", version=version, previous=previous, by=author)
            self.store.flush()
            return found

    def _previous(self, name: str, given: str | None) -> str:
        if name not in self.names():
            if given is None:
                raise Refused(f"{name} has no earlier deployment: give its previous version")
            return given
        latest = self.latest(name)
        if latest.status in (ROLLING_BACK, ROLLBACK_FAILED):
            raise Refused(
                f"the rollback of deployment {latest.id} of {name} is unfinished "
                f"({latest.status}); finish it first (deploy rollback {name})"
            )
        if given is not None:
            return given
        return latest.previous if latest.status == ROLLED_BACK else latest.version

    # -- rolling back ------------------------------------------------------------

    def rollback(self, name: str, *, author: str, on_step: OnStep | None = None) -> RollbackResult:
        """Roll back ``name``'s latest deployment, or resume its unfinished rollback."""
        with locking.held(
            self.store.state_dir, _LOCK, name, "recording or rolling back a deployment of it"
        ):
            found = self.latest(name)
            if found.status == ROLLED_BACK:
                raise Refused(
                    f"deployment {found.id} of {name} ({found.version}) was already rolled back "
                    f"to {found.previous}"
                )
            resumed = found.status != ACTIVE
            if resumed:
                self._resume(found, author)
            else:
                self._start(found, author)
            ran = []
            for step in self._fetch(found.id).left():
                ran.append(step.number)
                if not self._run(self._fetch(found.id), step, on_step):
                    return RollbackResult(self._fetch(found.id), resumed, tuple(ran))
            self._finish(self._fetch(found.id))
            return RollbackResult(self._fetch(found.id), resumed, tuple(ran))

    def _start(self, found: Deployment, author: str) -> None:
        steps = plan(found.name, found.id, found.version, found.previous, found.rollout)
        now = self.clock()
        self.store.write(_SET_STATUS, (ROLLING_BACK, now, None, "", found.id))
        for step in steps:
            self.store.write(
                "INSERT INTO deployment_steps (deployment, step, hook, args, status)"
                " VALUES (?, ?, ?, ?, ?)",
                (found.id, step.number, step.hook, json.dumps(step.args), PENDING),
            )
        self._event(found.id, "rollback_started", steps=len(steps), by=author)
        self.store.flush()

    def _resume(self, found: Deployment, author: str) -> None:
        left = found.left()
        self.store.write(
            _SET_STATUS, (ROLLING_BACK, found.rollback_started, None, found.detail, found.id)
        )
        self._event(
            found.id,
            "rollback_resumed",
            was=found.status,
            at_step=left[0].number if left else None,
            done=len(found.steps) - len(left),
            by=author,
        )
        self.store.flush()

    def _run(self, found: Deployment, step: StepRecord, on_step: OnStep | None) -> bool:
        """Run one step, journaled before and after; False when it failed."""
        started = self.clock()
        running = replace(step, status=RUNNING, runs=step.runs + 1)
        self._save_step(found.id, running, started=started, finished=None)
        self._event(found.id, "step_started", step=step.number, run=running.runs)
        self.store.flush()
        if on_step is not None:
            on_step("started", running)
        outcome = hooks.run(
            found.rollout.hooks[step.hook],
            {**step.args, "hook": step.hook},
            timeout_s=found.rollout.timeout_s,
            env={
                "COUNTERPOINT_DEPLOYMENT": found.name,
                "COUNTERPOINT_DEPLOYMENT_ID": str(found.id),
                "COUNTERPOINT_ROLLBACK_STEP": str(step.number),
            },
        )
        now = self.clock()
        status = DONE if outcome.ok else FAILED
        ended = replace(running, status=status, error=outcome.detail)
        self._save_step(found.id, ended, started=started, finished=now)
        self._event(found.id, f"step_{status}", step=step.number, error=outcome.detail)
        if not outcome.ok:
            detail = f"{step.describe()} failed: {outcome.detail}"
            self.store.write(
                _SET_STATUS, (ROLLBACK_FAILED, found.rollback_started, now, detail, found.id)
            )
            self._event(found.id, "rollback_failed", step=step.number, error=outcome.detail)
        self.store.flush()
        if on_step is not None:
            on_step(status, ended)
        return outcome.ok

    def _finish(self, found: Deployment) -> None:
        now = self.clock()
        detail = f"rolled back to {found.previous} in {len(found.steps)} step(s)"
        self.store.write(_SET_STATUS, (ROLLED_BACK, found.rollback_started, now, detail, found.id))
        self.store.write(
            "UPDATE deployments SET status = ? WHERE id = (SELECT MAX(id) FROM deployments"
            " WHERE name = ? AND id < ?) AND status = ? AND version = ?",
            (ACTIVE, found.name, found.id, SUPERSEDED, found.previous),
        )
        self._event(found.id, "rolled_back", to=found.previous)
        self.store.flush()

    # -- journal -----------------------------------------------------------------

    def _save_step(
        self, deployment: int, step: StepRecord, *, started: float, finished: float | None
    ) -> None:
        self.store.write(
            _SET_STEP,
            (step.status, step.runs, started, finished, step.error, deployment, step.number),
        )

    def _event(self, deployment: int, kind: str, **data: Any) -> None:
        self.store.write(
            "INSERT INTO deployment_events (ts, deployment, kind, data) VALUES (?, ?, ?, ?)",
            (self.clock(), deployment, kind, json.dumps(data, default=str)),
        )

    def events(self, deployment: int) -> list[dict[str, Any]]:
        rows = self.store.query(
            "SELECT ts, kind, data FROM deployment_events WHERE deployment = ? ORDER BY seq",
            (deployment,),
        )
        return [{"ts": r[0], "kind": r[1], **json.loads(r[2])} for r in rows]

    def _fetch(self, deployment: int) -> Deployment:
        rows = self.store.query(f"SELECT {_COLUMNS} FROM deployments WHERE id = ?", (deployment,))
        return self._deployment(rows[0])

    def _deployment(self, row: tuple[Any, ...]) -> Deployment:
        steps = self.store.query(
            "SELECT step, hook, args, status, runs, started, finished, error"
            " FROM deployment_steps WHERE deployment = ? ORDER BY step",
            (row[0],),
        )
        ident, name, version, previous, spec, status, author, created, began, ended, detail = row
        return Deployment(
            ident,
            name,
            version,
            previous,
            Rollout.from_json(json.loads(spec)),
            status,
            author,
            created,
            began,
            ended,
            detail,
            steps=tuple(StepRecord(s[0], s[1], json.loads(s[2]), *s[3:]) for s in steps),
        )

    def _known(self, name: str) -> None:
        names = self.names()
        if name not in names:
            raise UnknownSubject.of("deployment", name, names)


def rollback_outcomes(store: SqliteStore) -> list[dict[str, Any]]:
    """Every finished deployment rollback (``rolled_back`` or ``rollback_failed``), for the
    rollback success rate; a rollback still going on is left out."""
    if not store.query("SELECT 1 FROM sqlite_master WHERE name = 'deployments'"):
        return []
    rows = store.query(
        "SELECT id, name, version, previous, status, rollback_started, rollback_finished, detail"
        " FROM deployments WHERE status IN (?, ?) ORDER BY rollback_started",
        (ROLLED_BACK, ROLLBACK_FAILED),
    )
    return [
        {
            "kind": "deployment",
            "subject": name,
            "ok": status == ROLLED_BACK,
            "started": started,
            "finished": finished,
            "detail": f"deployment {ident} ({version} -> {previous}): {detail}",
        }
        for ident, name, version, previous, status, started, finished, detail in rows
    ]


__all__ = [
    "ACTIVE",
    "ROLLBACK_FAILED",
    "ROLLED_BACK",
    "ROLLING_BACK",
    "SCHEMA",
    "SUPERSEDED",
    "Deployment",
    "Deployments",
    "RollbackResult",
    "StepRecord",
    "rollback_outcomes",
]
