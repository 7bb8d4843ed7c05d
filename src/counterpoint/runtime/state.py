"""The run's shared state: versioned keys, data conflicts and their resolution.

Agents never write the shared state directly: a task's writes (``ctx.state.set``
for Python agents, ``{"writes": {...}}`` in a shell or remote agent's result)
are committed by the run engine when the task completes. Two tasks that are not
ordered by their dependencies and write different values to the same key are a
*data conflict*, however far apart they finish. The plan's policies decide it,
per key pattern, first match wins:

=============  ===============================================================
priority       the higher-priority task's value; equal priorities escalate
first-writer   the value committed first stays
last-writer    the value committed last wins
merge          lists are unioned in order, objects merged key by key (a clash
               of two different plain values escalates), or ``reducer``
               (``module:function(key, current, new)``) computes the value
vote           with voters (the policy's ``voters`` or ``settings.voting.voters``): a
               ballot among the written values decides (the run engine holds it, see
               :mod:`counterpoint.runtime.voting`); without: the value most of the
               key's writers wrote. A tie escalates
escalate       a person decides (``counterpoint resolve``), the default
=============  ===============================================================

While a conflict on a key is open, tasks that read the key wait.
"""

from __future__ import annotations

import fnmatch
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from counterpoint.errors import CounterpointError
from counterpoint.plan.graph import Graph
from counterpoint.plan.model import SharedState as StateSpec
from counterpoint.plan.model import StatePolicy
from counterpoint.plan.writes import matches
from counterpoint.store.sqlite import SqliteStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS state_versions (
    run_id INTEGER NOT NULL,
    key TEXT NOT NULL,
    version INTEGER NOT NULL,
    value TEXT NOT NULL,
    task TEXT,
    agent TEXT,
    attempt INTEGER,
    ts REAL NOT NULL,
    status TEXT NOT NULL,
    PRIMARY KEY (run_id, key, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS conflicts (
    run_id INTEGER NOT NULL,
    id INTEGER NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    tasks TEXT NOT NULL,
    candidates TEXT NOT NULL,
    policy TEXT NOT NULL,
    status TEXT NOT NULL,
    resolution TEXT,
    detected REAL NOT NULL,
    resolved REAL,
    PRIMARY KEY (run_id, id)
) WITHOUT ROWID;
"""

_UPSERT_VERSION = (
    "INSERT INTO state_versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (run_id, key, version) DO UPDATE SET status = excluded.status"
)
_UPSERT_CONFLICT = (
    "INSERT INTO conflicts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (run_id, id) DO UPDATE SET status = excluded.status,"
    " resolution = excluded.resolution, resolved = excluded.resolved,"
    " candidates = excluded.candidates, tasks = excluded.tasks"
)

MISSING = object()


class StateError(CounterpointError):
    """A write the shared state refuses (an undeclared key, a value JSON cannot hold)."""


@dataclass
class Version:
    key: str
    version: int
    value: Any
    task: str | None
    agent: str | None
    attempt: int | None
    ts: float
    status: str  # current, superseded, rejected, candidate

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "value": self.value,
            "task": self.task,
            "agent": self.agent,
            "attempt": self.attempt,
            "ts": self.ts,
            "status": self.status,
        }


@dataclass
class Conflict:
    id: int
    kind: str  # data, merge
    key: str
    tasks: list[str]
    candidates: dict[str, Any]  # task -> the value it wrote
    policy: str
    status: str  # open, resolved, failed
    detected: float
    resolution: dict[str, Any] | None = None
    resolved: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "key": self.key,
            "tasks": self.tasks,
            "values": self.candidates,
            "policy": self.policy,
            "status": self.status,
            "resolution": self.resolution,
            "detected": self.detected,
            "resolved": self.resolved,
            "resolution_time_s": (
                round(self.resolved - self.detected, 6) if self.resolved is not None else None
            ),
        }


@dataclass
class _Key:
    versions: list[Version] = field(default_factory=list)

    @property
    def current(self) -> Version | None:
        for v in reversed(self.versions):
            if v.status == "current":
                return v
        return None


Reducer = Callable[[str, Any, Any], Any]


class SharedState:
    """The shared state of one run, journaled in its store."""

    def __init__(
        self,
        spec: StateSpec,
        store: SqliteStore,
        run_id: int,
        graph: Graph,
        *,
        load_reducer: Callable[[str], Reducer] | None = None,
        wall: Callable[[], float] = time.time,
        voters: Sequence[str] = (),
    ) -> None:
        self.spec = spec
        self.voters = list(voters)  # settings.voting.voters: the vote policy's default
        self.store = store
        self.run_id = run_id
        self.g = graph
        self.load_reducer = load_reducer
        self.wall = wall
        self.keys: dict[str, _Key] = {}
        self.conflicts: dict[int, Conflict] = {}
        self._reach: dict[int, set[int]] = {}
        store.ensure_schema(SCHEMA)

    # -- reading ------------------------------------------------------------------

    def restore(self) -> None:
        """Load the run's versions and conflicts (after a resume)."""
        for row in self.store.query(
            "SELECT key, version, value, task, agent, attempt, ts, status FROM state_versions"
            " WHERE run_id = ? ORDER BY key, version",
            (self.run_id,),
        ):
            v = Version(row[0], row[1], json.loads(row[2]), *row[3:])
            self.keys.setdefault(v.key, _Key()).versions.append(v)
        for c in _conflicts(self.store, self.run_id):
            self.conflicts[c.id] = c

    def get(self, key: str, default: Any = None) -> Any:
        entry = self.keys.get(key)
        current = entry.current if entry is not None else None
        return current.value if current is not None else default

    def snapshot(self, patterns: Iterable[str] = ("*",)) -> dict[str, Any]:
        """The current value of every key matching one of ``patterns``."""
        patterns = list(patterns)
        out = {}
        for key, entry in sorted(self.keys.items()):
            current = entry.current
            if current is not None and matches(key, patterns):
                out[key] = current.value
        return out

    def failed_key(self, reads: Iterable[str]) -> str | None:
        """The first key ``reads`` covers whose conflict nobody decided in time."""
        reads = list(reads)
        for c in self.conflicts.values():
            if c.status == "failed" and c.kind == "data" and matches(c.key, reads):
                return c.key
        return None

    def open_conflicts(self) -> list[Conflict]:
        return [c for c in self.conflicts.values() if c.status == "open"]

    def held(self, reads: Iterable[str]) -> str | None:
        """The first key with an open conflict that ``reads`` covers (the task must wait)."""
        reads = list(reads)
        for c in self.conflicts.values():
            if c.status == "open" and c.kind == "data" and matches(c.key, reads):
                return c.key
        return None

    # -- writing ------------------------------------------------------------------

    def commit(
        self,
        t: int,
        writes: dict[str, Any],
        agent: str | None,
        attempt: int,
        ordered_after: Callable[[int, int], bool] | None = None,
    ) -> list[Conflict]:
        """Commit task ``t``'s writes; returns the conflicts they raised (decided or open).

        ``ordered_after(w, t)`` may say that an earlier writer ``w`` happened before ``t``
        although no dependency orders them (serialized writes).
        """
        raised = []
        for key, value in sorted(self.validate(t, writes).items()):
            conflict = self._write(t, key, value, agent, attempt, ordered_after)
            if conflict is not None:
                raised.append(conflict)
        return raised

    def validate(self, t: int, writes: dict[str, Any]) -> dict[str, Any]:
        """``writes`` as plain JSON values; StateError for an undeclared key or a value
        JSON cannot hold (nothing is written then)."""
        task = self.g.tasks[t]
        undeclared = [k for k in writes if not matches(k, task.writes)]
        if undeclared:
            raise StateError(
                f"task {task.id!r} wrote {', '.join(map(repr, undeclared))}, which its "
                f"writes ({', '.join(task.writes) or 'none'}) do not declare"
            )
        out = {}
        for key, value in writes.items():
            try:
                out[key] = json.loads(json.dumps(value))
            except (TypeError, ValueError) as exc:
                raise StateError(
                    f"task {task.id!r}: the value of {key!r} is not JSON: {exc}"
                ) from None
        return out

    def _write(
        self,
        t: int,
        key: str,
        value: Any,
        agent: str | None,
        attempt: int,
        ordered_after: Callable[[int, int], bool] | None,
    ) -> Conflict | None:
        entry = self.keys.setdefault(key, _Key())
        current = entry.current
        tid = self.g.task_ids[t]
        version = Version(
            key, len(entry.versions) + 1, value, tid, agent, attempt, self.wall(), "current"
        )
        rival = self._rival(t, key, current, value, ordered_after)
        if rival is None:
            self._supersede(entry)
            self._add(entry, version)
            return None
        version.status = "candidate"
        self._add(entry, version)
        return self._conflict(key, rival, version)

    def _rival(
        self,
        t: int,
        key: str,
        current: Version | None,
        value: Any,
        ordered_after: Callable[[int, int], bool] | None,
    ) -> Version | None:
        """The committed version ``t``'s write conflicts with, if any."""
        if self._open_on(key) is not None:
            return current  # joins the open conflict
        if current is None or current.task is None or current.value == value:
            return None
        w = self.g.index.get(current.task)
        if w is None or w == t or self.reaches(w, t):
            return None
        if ordered_after is not None and ordered_after(w, t):
            return None
        return current

    def _conflict(self, key: str, rival: Version | None, version: Version) -> Conflict:
        existing = self._open_on(key)
        if existing is not None:
            assert version.task is not None
            existing.tasks.append(version.task)
            existing.candidates[version.task] = version.value
            conflict = existing
        else:
            assert rival is not None and rival.task is not None and version.task is not None
            conflict = Conflict(
                id=len(self.conflicts) + 1,
                kind="data",
                key=key,
                tasks=[rival.task, version.task],
                candidates={rival.task: rival.value, version.task: version.value},
                policy=self.policy_for(key).policy,
                status="open",
                detected=self.wall(),
            )
            self.conflicts[conflict.id] = conflict
        self._decide(conflict)
        self._save_conflict(conflict)
        return conflict

    def _open_on(self, key: str) -> Conflict | None:
        return next(
            (c for c in self.conflicts.values() if c.status == "open" and c.key == key), None
        )

    def policy_for(self, key: str) -> StatePolicy:
        for policy in self.spec.policies:
            if key == policy.key or fnmatch.fnmatchcase(key, policy.key):
                return policy
        return StatePolicy(key="*", policy=self.spec.default)

    # -- deciding -------------------------------------------------------------------

    def _decide(self, c: Conflict) -> None:
        """Apply the key's policy; the conflict stays open when a person must decide."""
        policy = self.policy_for(c.key)
        order = c.tasks  # commit order
        winner: str | None = None
        value: Any = MISSING
        why = ""
        if policy.policy == "last-writer":
            winner, why = order[-1], "the last writer wins"
        elif policy.policy == "first-writer":
            winner, why = order[0], "the first writer wins"
        elif policy.policy == "priority":
            ranks = {task: self.g.priority_rank[self.g.index[task]] for task in order}
            best = min(ranks.values())
            top = [task for task in order if ranks[task] == best]
            if len(top) == 1:
                winner, why = top[0], "the higher-priority task wins"
        elif policy.policy == "vote":
            if policy.voters or self.voters:
                return  # a ballot among the voters decides (decide_by_vote), else a person
            tally: dict[str, list[str]] = {}
            for task in order:
                tally.setdefault(_canon(c.candidates[task]), []).append(task)
            ranked = sorted(tally.values(), key=len, reverse=True)
            if len(ranked) == 1 or len(ranked[0]) > len(ranked[1]):
                winner = ranked[0][0]
                why = f"{len(ranked[0])} of {len(order)} writers wrote this value"
        elif policy.policy == "merge":
            value, why = self._merge(c, policy)
        if winner is None and value is MISSING:
            return  # escalate: a person decides
        if value is MISSING:
            assert winner is not None
            value = c.candidates[winner]
        self._settle(
            c,
            value,
            {
                "by": "policy",
                "policy": policy.policy,
                "winner": winner,
                "reason": why,
                "value": value,
            },
        )

    def _merge(self, c: Conflict, policy: StatePolicy) -> tuple[Any, str]:
        values = [c.candidates[task] for task in c.tasks]
        if policy.reducer:
            if self.load_reducer is None:
                return MISSING, ""
            reduce = self.load_reducer(policy.reducer)
            merged = values[0]
            for value in values[1:]:
                merged = reduce(c.key, merged, value)
            return merged, f"merged by {policy.reducer}"
        merged = values[0]
        for value in values[1:]:
            merged = _merge_values(merged, value)
            if merged is MISSING:
                return MISSING, ""
        return merged, "merged (lists unioned, objects merged)"

    def record_merge(self, task: str, details: dict[str, Any]) -> Conflict:
        """A task's branch does not merge: a conflict on the files (kept open until a later
        attempt merges cleanly or a person marks it resolved)."""
        paths = details.get("paths") or []
        c = Conflict(
            id=len(self.conflicts) + 1,
            kind="merge",
            key="files:" + ",".join(paths),
            tasks=[task],
            candidates={task: details},
            policy="escalate",
            status="open",
            detected=self.wall(),
        )
        self.conflicts[c.id] = c
        self._save_conflict(c)
        return c

    def merged(self, task: str, attempt: int) -> list[Conflict]:
        """``task``'s attempt merged cleanly: its open merge conflicts are resolved."""
        done = []
        for c in self.conflicts.values():
            if c.kind == "merge" and c.status == "open" and task in c.tasks:
                c.status, c.resolved = "resolved", self.wall()
                c.resolution = {
                    "by": "retry",
                    "winner": task,
                    "reason": f"attempt {attempt} merged cleanly",
                }
                self._save_conflict(c)
                done.append(c)
        return done

    def resolve(
        self, conflict_id: int, *, value: Any = MISSING, task: str | None = None, by: str
    ) -> Conflict:
        """A person's decision: the value to keep, or the task whose value wins."""
        c = self.conflicts.get(conflict_id)
        if c is None:
            raise StateError(f"no conflict {conflict_id} in this run")
        if c.status != "open":
            raise StateError(f"conflict {conflict_id} is already {c.status}")
        if c.kind == "merge":  # the files were merged by hand: nothing to apply
            c.status, c.resolved = "resolved", self.wall()
            c.resolution = {"by": by, "winner": task, "reason": "resolved by a person"}
            self._save_conflict(c)
            return c
        if task is not None:
            if task not in c.candidates:
                raise StateError(
                    f"task {task!r} is not part of conflict {conflict_id} "
                    f"(its tasks: {', '.join(c.tasks)})"
                )
            value = c.candidates[task]
        if value is MISSING:
            raise StateError("give the value to keep or the task whose value wins")
        self._settle(
            c,
            value,
            {
                "by": by,
                "policy": "escalate",
                "winner": task,
                "reason": "decided by a person",
                "value": value,
            },
        )
        self._save_conflict(c)
        return c

    def decide_by_vote(self, conflict_id: int, value: Any, reason: str, **details: Any) -> Conflict:
        """The ballot of a ``vote`` conflict chose ``value`` (one of its candidates)."""
        c = self.conflicts.get(conflict_id)
        if c is None or c.status != "open":
            raise StateError(f"conflict {conflict_id} is not open")
        winner = next((t for t in c.tasks if _canon(c.candidates[t]) == _canon(value)), None)
        self._settle(
            c,
            value,
            {
                "by": "vote",
                "policy": "vote",
                "winner": winner,
                "reason": reason,
                "value": value,
                **details,
            },
        )
        self._save_conflict(c)
        return c

    def fail(self, conflict_id: int, reason: str) -> Conflict:
        """Close a conflict nobody decided (escalation exhausted with ``fail``)."""
        c = self.conflicts[conflict_id]
        c.status, c.resolved = "failed", self.wall()
        c.resolution = {"by": "escalation", "reason": reason}
        entry = self.keys[c.key]
        for v in entry.versions:
            if v.status == "candidate":
                v.status = "rejected"
                self._save_version(v)
        self._save_conflict(c)
        return c

    def _settle(self, c: Conflict, value: Any, resolution: dict[str, Any]) -> None:
        entry = self.keys[c.key]
        winner = resolution.get("winner")
        self._supersede(entry)
        for v in entry.versions:
            if v.status == "candidate":
                v.status = "rejected"
                self._save_version(v)
        owner = next((v for v in reversed(entry.versions) if v.task == winner), None)
        version = Version(
            c.key,
            len(entry.versions) + 1,
            value,
            winner,
            owner.agent if owner else None,
            owner.attempt if owner else None,
            self.wall(),
            "current",
        )
        self._add(entry, version)
        c.status, c.resolution, c.resolved = "resolved", resolution, self.wall()

    def revert(self, task: str) -> list[str]:
        """Undo ``task``'s writes (its work was compensated): each key whose current value
        it wrote goes back to the value before it (a key it created disappears). Its
        versions are marked ``reverted``; a key someone wrote after it is left alone.
        Returns the keys reverted."""
        reverted = []
        for key, entry in sorted(self.keys.items()):
            current = entry.current
            if current is None or current.task != task:
                continue
            current.status = "reverted"
            self._save_version(current)
            before = next(
                (
                    v
                    for v in reversed(entry.versions)
                    if v.status == "superseded" and v.task != task
                ),
                None,
            )
            if before is not None:
                restored = Version(
                    key,
                    len(entry.versions) + 1,
                    before.value,
                    before.task,
                    before.agent,
                    before.attempt,
                    self.wall(),
                    "current",
                )
                self._add(entry, restored)
            reverted.append(key)
        return reverted

    # -- bookkeeping ------------------------------------------------------------------

    def _supersede(self, entry: _Key) -> None:
        for v in entry.versions:
            if v.status == "current":
                v.status = "superseded"
                self._save_version(v)

    def _add(self, entry: _Key, version: Version) -> None:
        entry.versions.append(version)
        self._save_version(version)

    def _save_version(self, v: Version) -> None:
        self.store.write(
            _UPSERT_VERSION,
            (
                self.run_id,
                v.key,
                v.version,
                json.dumps(v.value),
                v.task,
                v.agent,
                v.attempt,
                v.ts,
                v.status,
            ),
        )

    def _save_conflict(self, c: Conflict) -> None:
        self.store.write(
            _UPSERT_CONFLICT,
            (
                self.run_id,
                c.id,
                c.kind,
                c.key,
                json.dumps(c.tasks),
                json.dumps(c.candidates),
                c.policy,
                c.status,
                json.dumps(c.resolution) if c.resolution else None,
                c.detected,
                c.resolved,
            ),
        )

    def reaches(self, a: int, b: int) -> bool:
        """Whether task ``b`` depends, directly or not, on task ``a``."""
        seen = self._reach.get(a)
        if seen is None:
            seen = self._reach[a] = self.g.descendants(a)
        return b in seen


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _merge_values(a: Any, b: Any) -> Any:
    """Lists: ``a`` then the items of ``b`` it lacks; objects: key by key; else equal or MISSING."""
    if isinstance(a, list) and isinstance(b, list):
        seen = {_canon(x) for x in a}
        return a + [x for x in b if _canon(x) not in seen]
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for k, v in b.items():
            if k in out:
                merged = _merge_values(out[k], v)
                if merged is MISSING:
                    return MISSING
                out[k] = merged
            else:
                out[k] = v
        return out
    return a if a == b else MISSING


def _conflicts(store: SqliteStore, run_id: int) -> list[Conflict]:
    rows = store.query(
        "SELECT id, kind, key, tasks, candidates, policy, status, resolution, detected,"
        " resolved FROM conflicts WHERE run_id = ? ORDER BY id",
        (run_id,),
    )
    return [
        Conflict(
            id=r[0],
            kind=r[1],
            key=r[2],
            tasks=json.loads(r[3]),
            candidates=json.loads(r[4]),
            policy=r[5],
            status=r[6],
            resolution=json.loads(r[7]) if r[7] else None,
            detected=r[8],
            resolved=r[9],
        )
        for r in rows
    ]


def read_conflicts(store: SqliteStore, run_id: int) -> list[dict[str, Any]]:
    """Every conflict of a run, as JSON, for the command line (from any process)."""
    store.ensure_schema(SCHEMA)
    return [c.to_json() for c in _conflicts(store, run_id)]


def read_state(store: SqliteStore, run_id: int) -> dict[str, list[dict[str, Any]]]:
    """Every key's versions, oldest first, for the command line (from any process)."""
    store.ensure_schema(SCHEMA)
    out: dict[str, list[dict[str, Any]]] = {}
    for r in store.query(
        "SELECT key, version, value, task, agent, attempt, ts, status FROM state_versions"
        " WHERE run_id = ? ORDER BY key, version",
        (run_id,),
    ):
        out.setdefault(r[0], []).append(Version(r[0], r[1], json.loads(r[2]), *r[3:]).to_json())
    return out
