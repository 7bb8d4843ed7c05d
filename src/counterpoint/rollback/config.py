"""Versioned configuration (seed section 7.1): every version kept with its checksum, and
automatic rollback of a version that does not validate.

A *scope* (an agent's id, or any name) has numbered versions. Each version stores
its data as canonical JSON with the sha256 of that text, its author and time, and
a status:

* ``pending``: being validated (it is already the current version);
* ``valid``: validated, or set while the scope had no validation;
* ``failed``: its validation failed, errored or gave no answer in time; the scope
  was rolled back automatically;
* ``rolled_back``: an operator rolled back from it (``rollback`` again does not
  come back to it; ``rollback --to`` can).

The current version is the newest valid one, or a pending one being validated.
A failed validation rolls back to the newest version that validated (never to the
failing one), journals a ``rolled_back`` event and calls ``notify``. Every read of
stored data checks its checksum: a version changed outside counterpoint is refused
with :class:`ChecksumError` (an automatic rollback skips it instead).

The last ``keep`` versions (10 by default) are kept; the current version and the
newest valid one are never dropped. One process at a time changes a scope (see
:mod:`counterpoint.rollback.locking`); a version left pending by a process that
died while validating it is rolled back by the next command that reads the scope.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from counterpoint.durations import format_duration
from counterpoint.rollback import locking
from counterpoint.rollback.errors import Refused, UnknownSubject, listed
from counterpoint.rollback.notify import notifiers, send
from counterpoint.rollback.validation import PLACEHOLDERS, Validation, ask
from counterpoint.rollback.values import canonical, checksum
from counterpoint.rollback.versions import (
    DEFAULT_KEEP,
    FAILED,
    PENDING,
    ROLLED_BACK,
    VALID,
    ConfigVersion,
    Policy,
    SetResult,
    notice,
    notice_text,
    version_of,
)
from counterpoint.store.sqlite import SqliteStore

INTERRUPTED = "its validation was interrupted (the process validating it stopped)"
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,199}$")
_LOCK = "config"

SCHEMA = """
CREATE TABLE IF NOT EXISTS config_scopes (
    scope TEXT PRIMARY KEY,
    current INTEGER,
    last_version INTEGER NOT NULL DEFAULT 0,
    keep INTEGER NOT NULL,
    validation TEXT,
    notify TEXT,
    updated REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS config_versions (
    scope TEXT NOT NULL,
    version INTEGER NOT NULL,
    data TEXT NOT NULL,
    checksum TEXT NOT NULL,
    author TEXT NOT NULL,
    created REAL NOT NULL,
    parent INTEGER,
    status TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    deadline REAL,
    validated REAL,
    PRIMARY KEY (scope, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS config_events (
    seq INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    scope TEXT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS config_events_by_scope ON config_events (scope, seq);
"""
_COLUMNS = (
    "scope, version, data, checksum, author, created, parent, status, detail, deadline, validated"
)

Notify = Callable[[dict[str, Any]], None]


class ConfigHistory:
    """The versioned configuration of every scope in one state directory's journal.

    ``clock`` gives the times recorded and the validation deadlines, ``sleep`` waits
    between asks of a validator that has no answer yet (inject both to test with a
    fake clock). ``notify`` gets a notice (a dict with ``text``) for each automatic
    rollback.
    """

    def __init__(
        self,
        store: SqliteStore,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        notify: Notify | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.sleep = sleep
        self.notify = notify
        store.ensure_schema(SCHEMA)

    # -- reading -----------------------------------------------------------------

    def scopes(self) -> list[str]:
        return [r[0] for r in self.store.query("SELECT scope FROM config_scopes ORDER BY scope")]

    def policy(self, scope: str) -> Policy:
        row = self._scope_row(scope)
        validation = Validation.from_json(json.loads(row[3])) if row[3] else None
        told = json.loads(row[5]) if row[5] else {}
        return Policy(
            row[2], validation, tuple(told.get("webhooks", ())), tuple(told.get("commands", ()))
        )

    def get(self, scope: str, version: int | None = None) -> ConfigVersion:
        """The current version (or ``version``), its checksum verified."""
        if version is None:
            current = self.current(scope)
            if current is None:
                raise Refused(self._no_current(scope))
            return current
        self._reap_unlocked(scope)
        found = self._version(scope, version)
        found.verify()
        return found

    def current(self, scope: str) -> ConfigVersion | None:
        """The current version, its checksum verified; None when the scope has none."""
        self._reap_unlocked(scope)
        number = self._scope_row(scope)[1]
        if number is None:
            return None
        found = self._version(scope, number)
        found.verify()
        return found

    def history(self, scope: str) -> list[ConfigVersion]:
        """Every kept version, newest first (checksums are not enforced: see ``intact``)."""
        self._reap_unlocked(scope)
        return self._versions(scope)

    def events(self, scope: str) -> list[dict[str, Any]]:
        rows = self.store.query(
            "SELECT ts, kind, data FROM config_events WHERE scope = ? ORDER BY seq", (scope,)
        )
        return [{"ts": r[0], "kind": r[1], **json.loads(r[2])} for r in rows]

    # -- changing ----------------------------------------------------------------

    def configure(self, scope: str, policy: Policy) -> Policy:
        """Give a scope its policy (creating the scope); versions beyond ``keep`` are dropped."""
        _check_name(scope)
        if policy.keep < 1:
            raise Refused("keep must be at least 1")
        check = policy.validation
        if check is not None and check.hook is not None:
            check.hook.check(PLACEHOLDERS)
        stored = None if check is None else json.dumps(check.to_json())
        if not all(c.strip() for c in policy.commands):
            raise Refused("a notify command must not be empty")
        try:
            notifiers(policy.webhooks, policy.commands)
        except ValueError:
            raise Refused(
                f"a webhook must be an http(s) URL: {', '.join(policy.webhooks)}"
            ) from None
        told = {"webhooks": list(policy.webhooks), "commands": list(policy.commands)}
        with self._lock(scope, "changing it or validating a new version"):
            self._ensure_scope(scope)
            self._write(
                "UPDATE config_scopes SET keep = ?, validation = ?, notify = ? WHERE scope = ?",
                (policy.keep, stored, json.dumps(told), scope),
            )
            self._event(scope, "policy", keep=policy.keep, validation=stored, notify=told)
            self.store.flush()
            self._prune(scope)
            self.store.flush()
            return self.policy(scope)

    def set(
        self,
        scope: str,
        data: Mapping[str, Any],
        *,
        author: str,
        validation: Validation | None = None,
    ) -> SetResult:
        """Make ``data`` the scope's new version and validate it (``validation``, else the
        scope's own). Data equal to the current version's makes no new version."""
        _check_name(scope)
        text = canonical(dict(data))
        if validation is not None and validation.hook is not None:
            validation.hook.check(PLACEHOLDERS)
        with self._lock(scope, "changing it or validating a new version"):
            self._ensure_scope(scope)
            self._reap(scope)
            row = self._scope_row(scope)
            current = None if row[1] is None else self._version(scope, row[1])
            if current is not None and current.text == text:
                return SetResult(current, changed=False)
            check = validation or self.policy(scope).validation
            number = self._record(scope, text, author, current, check)
            if check is None:
                return SetResult(self._version(scope, number))
            return self._validate(scope, number, check)

    def rollback(self, scope: str, *, to: int | None = None, author: str) -> ConfigVersion:
        """Go back to version ``to`` (default: the newest valid version before the current)."""
        with self._lock(scope, "changing it or validating a new version"):
            if self._reap(scope) and to is None:  # the version it would undo is undone already
                return self.get(scope)
            current = self._scope_row(scope)[1]
            target = self._manual_target(scope, current, to)
            target.verify()
            now = self.clock()
            self._write(
                "UPDATE config_versions SET status = ? WHERE scope = ? AND version > ?"
                " AND status IN (?, ?)",
                (ROLLED_BACK, scope, target.version, VALID, PENDING),
            )
            self._write(
                "UPDATE config_versions SET status = ?, detail = ? WHERE scope = ? AND version = ?",
                (VALID, target.detail, scope, target.version),
            )
            self._set_current(scope, target.version, now)
            self._event(
                scope,
                "rolled_back",
                **{"from": current, "to": target.version},
                automatic=False,
                by=author,
                reason=f"rolled back by {author}",
                started=now,
            )
            self.store.flush()
            return self._version(scope, target.version)

    # -- validation --------------------------------------------------------------

    def _validate(self, scope: str, number: int, check: Validation) -> SetResult:
        version = self._version(scope, number)
        assert version.deadline is not None
        try:
            verdict, reason = self._ask_until(version, check, version.deadline)
        except BaseException:  # Ctrl-C: a version that never validated does not stay
            self._auto_rollback(version, INTERRUPTED)
            raise
        if verdict:
            now = self.clock()
            self._write(
                "UPDATE config_versions SET status = ?, validated = ?, detail = ?, deadline = NULL"
                " WHERE scope = ? AND version = ?",
                (VALID, now, f"validated by {check.describe()}", scope, number),
            )
            self._event(scope, "validated", version=number, by=check.describe())
            self.store.flush()
            return SetResult(self._version(scope, number))
        target = self._auto_rollback(version, reason)
        return SetResult(self._version(scope, number), rolled_back_to=target)

    def _ask_until(
        self, version: ConfigVersion, check: Validation, deadline: float
    ) -> tuple[bool, str]:
        """Ask the validator until it answers or ``deadline`` passes: (valid, why not)."""
        payload = version.payload()
        while True:
            left = deadline - self.clock()
            if left <= 0:
                limit = format_duration(check.timeout_s)
                return False, f"no answer from {check.describe()} within {limit}"
            answer, why = ask(check, payload, left)
            if answer is not None:
                return answer, why
            self.sleep(min(check.interval_s, max(0.0, deadline - self.clock())))

    def _auto_rollback(self, failing: ConfigVersion, reason: str) -> int | None:
        """Mark ``failing`` failed and go back to the newest intact valid version."""
        started = self.clock()
        candidates = [
            v
            for v in self._versions(failing.scope)
            if v.status == VALID and v.version != failing.version
        ]
        target = next((v for v in candidates if v.intact), None)
        skipped = [v.version for v in candidates if not v.intact]
        to = None if target is None else target.version
        self._write(
            "UPDATE config_versions SET status = ?, detail = ?, deadline = NULL"
            " WHERE scope = ? AND version = ?",
            (FAILED, reason, failing.scope, failing.version),
        )
        self._set_current(failing.scope, to, self.clock())
        text = notice_text(failing, reason, to, skipped)
        self._event(
            failing.scope,
            "rolled_back",
            **{"from": failing.version, "to": to},
            automatic=True,
            reason=reason,
            skipped=skipped,
            started=started,
        )
        self.store.flush()
        told = notice(failing, reason, to, text, self.clock())
        if self.notify is not None:
            self.notify(told)
        self._send(failing.scope, told)
        return to

    def _send(self, scope: str, told: dict[str, Any]) -> None:
        """Send the notice to the scope's webhooks and commands; each outcome is journaled."""
        policy = self.policy(scope)
        targets = notifiers(policy.webhooks, policy.commands)

        send(self.store, told, targets, record=lambda kind, data: self._journal(scope, kind, data))
        self.store.flush()

    def _reap(self, scope: str) -> bool:
        """With the scope's lock held: roll back a version whose validation was cut short."""
        rows = self.store.query(
            f"SELECT {_COLUMNS} FROM config_versions WHERE scope = ? AND status = ?",
            (scope, PENDING),
        )
        for row in rows:
            self._auto_rollback(version_of(row, None), INTERRUPTED)
        return bool(rows)

    def _reap_unlocked(self, scope: str) -> None:
        if not self.store.query(
            "SELECT 1 FROM config_versions WHERE scope = ? AND status = ? LIMIT 1", (scope, PENDING)
        ):
            return
        with locking.attempt(self.store.state_dir, _LOCK, scope) as taken:
            if taken:  # nobody is validating it any more
                self._reap(scope)

    # -- journal -----------------------------------------------------------------

    def _record(
        self,
        scope: str,
        text: str,
        author: str,
        current: ConfigVersion | None,
        check: Validation | None,
    ) -> int:
        now = self.clock()
        number = int(self._scope_row(scope)[4]) + 1
        status = VALID if check is None else PENDING
        detail = "no validation" if check is None else f"validating with {check.describe()}"
        deadline = None if check is None else now + check.timeout_s
        self._write(
            f"INSERT INTO config_versions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                scope,
                number,
                text,
                checksum(text),
                author,
                now,
                None if current is None else current.version,
                status,
                detail,
                deadline,
                now if check is None else None,
            ),
        )
        self._write("UPDATE config_scopes SET last_version = ? WHERE scope = ?", (number, scope))
        self._set_current(scope, number, now)
        self._event(scope, "version_set", version=number, checksum=checksum(text), by=author)
        self.store.flush()
        self._prune(scope)
        self.store.flush()
        return number

    def _prune(self, scope: str) -> None:
        """Drop versions beyond the newest ``keep``, but never the current or newest valid one."""
        _, current, keep, _, last, _ = self._scope_row(scope)
        newest_valid = self.store.query(
            "SELECT MAX(version) FROM config_versions WHERE scope = ? AND status = ?",
            (scope, VALID),
        )[0][0]
        protected = [v for v in (current, newest_valid) if v is not None] or [0]
        marks = ",".join("?" * len(protected))
        self._write(
            f"DELETE FROM config_versions WHERE scope = ? AND version <= ?"
            f" AND version NOT IN ({marks})",
            (scope, last - keep, *protected),
        )

    def _ensure_scope(self, scope: str) -> None:
        self._write(
            "INSERT OR IGNORE INTO config_scopes (scope, keep, updated) VALUES (?, ?, ?)",
            (scope, DEFAULT_KEEP, self.clock()),
        )
        self.store.flush()

    def _set_current(self, scope: str, version: int | None, now: float) -> None:
        self._write(
            "UPDATE config_scopes SET current = ?, updated = ? WHERE scope = ?",
            (version, now, scope),
        )

    def _event(self, scope: str, kind: str, **data: Any) -> None:
        self._journal(scope, kind, data)

    def _journal(self, scope: str, kind: str, data: dict[str, Any]) -> None:
        self._write(
            "INSERT INTO config_events (ts, scope, kind, data) VALUES (?, ?, ?, ?)",
            (self.clock(), scope, kind, json.dumps(data, default=str)),
        )

    def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        self.store.write(sql, params)

    def _lock(self, scope: str, doing: str) -> Any:
        return locking.held(self.store.state_dir, _LOCK, scope, doing)

    # -- lookups -----------------------------------------------------------------

    def _scope_row(self, scope: str) -> tuple[Any, ...]:
        rows = self.store.query(
            "SELECT scope, current, keep, validation, last_version, notify FROM config_scopes"
            " WHERE scope = ?",
            (scope,),
        )
        if not rows:
            raise UnknownSubject.of("configuration scope", scope, self.scopes())
        return rows[0]

    def _versions(self, scope: str) -> list[ConfigVersion]:
        current = self._scope_row(scope)[1]
        rows = self.store.query(
            f"SELECT {_COLUMNS} FROM config_versions WHERE scope = ? ORDER BY version DESC",
            (scope,),
        )
        return [version_of(r, current) for r in rows]

    def _version(self, scope: str, version: int) -> ConfigVersion:
        current = self._scope_row(scope)[1]
        rows = self.store.query(
            f"SELECT {_COLUMNS} FROM config_versions WHERE scope = ? AND version = ?",
            (scope, version),
        )
        if not rows:
            kept = self.store.query(
                "SELECT version FROM config_versions WHERE scope = ? ORDER BY version", (scope,)
            )
            raise UnknownSubject(
                f"{scope} has no version {version} (versions kept: {listed([r[0] for r in kept])})"
            )
        return version_of(rows[0], current)

    def _manual_target(self, scope: str, current: int | None, to: int | None) -> ConfigVersion:
        if to is not None:
            target = self._version(scope, to)
            if target.current:
                raise Refused(f"version {to} is already the current version of {scope}")
            if target.status == FAILED:
                raise Refused(f"version {to} of {scope} failed validation ({target.detail})")
            return target
        older = [
            v
            for v in self._versions(scope)
            if v.status == VALID and (current is None or v.version < current)
        ]
        if not older:
            now = f"version {current}" if current is not None else "no version"
            raise Refused(f"{scope} has no earlier valid version to roll back to (current: {now})")
        return older[0]

    def _no_current(self, scope: str) -> str:
        failed = self.store.query(
            "SELECT MAX(version) FROM config_versions WHERE scope = ? AND status = ?",
            (scope, FAILED),
        )[0][0]
        if failed is None:
            return f"{scope} has no configuration yet"
        return (
            f"{scope} has no current configuration: version {failed} failed validation and no "
            "earlier version validated"
        )


def _check_name(scope: str) -> None:
    if not _NAME.match(scope):
        raise Refused(f"bad scope name {scope!r}: use letters, digits and _ . : @ - (at most 200)")


def rollback_outcomes(store: SqliteStore) -> list[dict[str, Any]]:
    """Every configuration rollback (automatic and manual), for the rollback success rate.

    A rollback is ``ok`` when the scope ended on a valid version; an automatic one
    with nothing valid to go back to is not.
    """
    if not store.query("SELECT 1 FROM sqlite_master WHERE name = 'config_events'"):
        return []
    rows = store.query(
        "SELECT ts, scope, data FROM config_events WHERE kind = 'rolled_back' ORDER BY seq"
    )
    outcomes = []
    for ts, scope, raw in rows:
        data = json.loads(raw)
        how = "automatic" if data.get("automatic") else f"by {data.get('by')}"
        to = data.get("to")
        outcomes.append(
            {
                "kind": "config",
                "subject": scope,
                "ok": to is not None,
                "started": data.get("started", ts),
                "finished": ts,
                "detail": f"version {data.get('from')} -> {to if to is not None else 'none'} "
                f"({how}): {data.get('reason', '')}",
            }
        )
    return outcomes


__all__ = ["INTERRUPTED", "SCHEMA", "ConfigHistory", "rollback_outcomes"]
