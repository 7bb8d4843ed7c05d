"""Escalation (seed section 4.2): cases that climb a ladder of contacts until resolved.

A *case* is something a person has to decide: a conflict between tasks, a gate
that is blocked, a task that needs attention. The run engine opens it for a
*subject* (``"conflict:3"``, ``"gate:deploy.exit"``, ``"task:t1"``); the case
starts at the ladder's first level and that level's contacts are notified. Each
level has a timeout (plan time, multiplied by the run's time scale): when it
passes and the case is still open, the case goes up one level and the next
contacts are notified. When the last level's time is up there are "no more
escalation levels available": the case becomes ``exhausted`` and
:meth:`Escalator.tick` returns it, so the engine applies ``escalation.exhausted``
(``fail`` or ``block`` what the case holds). The escalator itself never fails
anything.

Every case is journaled in the ``escalations`` table of the run's store (through
the store's buffered writes, committed by the engine's next flush), so a resumed
run picks its open cases up again with the time they had left
(:meth:`Escalator.restore`).

Contacts are notified in the ways the plan gives them (``escalation.contacts``;
a contact it does not describe is logged):

* ``log``: an ``escalation_notice`` event in the journal and a logging record;
* ``webhook``: an HTTP POST of the notice (:func:`notice_body`) as JSON, retried
  with exponential backoff and jitter up to ``NotifyPolicy.attempts`` times; every
  failed try is a ``notify_failed`` event;
* ``command``: a program (no shell; a string is split like a shell would) run
  with the notice as JSON on its stdin, in its own process group, stopped after
  ``NotifyPolicy.command_timeout_s``; its exit status is recorded.

Webhooks and commands run in background tasks that the escalator owns
(:meth:`Escalator.drain` waits for them at shutdown); a notification never
raises into the run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import shlex
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from email.message import Message as HttpHeaders
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from counterpoint.messaging.protocol import Content, Message, MessageType, Severity, now
from counterpoint.plan.model import Escalation, EscalationLevel, Notifier
from counterpoint.processes import stop_group

if TYPE_CHECKING:
    from counterpoint.store.sqlite import SqliteStore

log = logging.getLogger("counterpoint.escalation")

#: The seed's words for a case whose last level's time is up.
EXHAUSTED_MESSAGE = "no more escalation levels available"

OPEN = "open"
RESOLVED = "resolved"
EXHAUSTED = "exhausted"

#: Events the escalator emits (``emit(kind, None, **data)``).
EVENTS = (
    "escalation_opened",
    "escalated",
    "escalation_notice",
    "escalation_notified",
    "notify_failed",
    "escalation_resolved",
    "escalation_exhausted",
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS escalations (
    run_id INTEGER NOT NULL,
    id INTEGER NOT NULL,
    subject TEXT NOT NULL,
    kind TEXT NOT NULL,
    summary TEXT NOT NULL,
    details TEXT NOT NULL,
    level INTEGER NOT NULL,
    level_name TEXT NOT NULL,
    status TEXT NOT NULL,
    opened REAL NOT NULL,
    escalated REAL,
    deadline REAL,
    resolved REAL,
    resolution TEXT,
    PRIMARY KEY (run_id, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS escalations_by_subject ON escalations (run_id, subject);
"""

# One statement for every write, so the store's buffer (grouped by statement)
# keeps a case's writes in order.
_UPSERT = """
INSERT INTO escalations (run_id, id, subject, kind, summary, details, level, level_name, status,
                         opened, escalated, deadline, resolved, resolution)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (run_id, id) DO UPDATE SET
    level = excluded.level, level_name = excluded.level_name, status = excluded.status,
    escalated = excluded.escalated, deadline = excluded.deadline, resolved = excluded.resolved,
    resolution = excluded.resolution
"""
_SELECT = (
    "SELECT id, subject, kind, summary, details, level, level_name, status, opened, escalated,"
    " deadline, resolved, resolution FROM escalations WHERE run_id = ? ORDER BY id"
)

# HTTP answers worth another try; any other non-2xx answer will not get better.
_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_STDERR_TAIL_CHARS = 500


@dataclass
class Case:
    """One escalation. Times are wall-clock (``time.time()``); ``level`` is a ladder index."""

    id: int
    subject: str
    kind: str
    summary: str
    details: dict[str, Any]
    level: int
    level_name: str
    status: str  # open | resolved | exhausted
    opened: float
    escalated: float | None = None  # when it last went up a level
    deadline: float | None = None  # when the current level's time is up (open cases only)
    resolved: float | None = None
    resolution: dict[str, Any] | None = None

    @property
    def time_to_resolve_s(self) -> float | None:
        """Seconds from opening to resolution (None until resolved)."""
        return None if self.resolved is None else max(0.0, self.resolved - self.opened)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "subject": self.subject,
            "kind": self.kind,
            "summary": self.summary,
            "details": self.details,
            "level": self.level,
            "level_name": self.level_name,
            "status": self.status,
            "opened": self.opened,
            "escalated": self.escalated,
            "deadline": self.deadline,
            "resolved": self.resolved,
            "resolution": self.resolution,
            "time_to_resolve_s": self.time_to_resolve_s,
        }


@dataclass(frozen=True)
class NotifyPolicy:
    """How hard webhook and command notifications try (real seconds, never time-scaled)."""

    attempts: int = 5  # webhook tries in all
    backoff_s: float = 1.0  # delay before the second try; doubles per failure, jittered
    backoff_max_s: float = 30.0
    webhook_timeout_s: float = 10.0
    command_timeout_s: float = 30.0
    kill_grace_s: float = 2.0  # SIGTERM to SIGKILL for a command past its timeout

    def backoff(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failed tries in a row: exponential, jittered."""
        ceiling = min(self.backoff_max_s, self.backoff_s * 2 ** min(failures - 1, 60))
        return random.uniform(ceiling / 2, ceiling)


@dataclass(frozen=True)
class _Notice:
    """One notification to send: a case at a level, for one contact."""

    event: str
    case_id: int
    subject: str
    level: int
    level_name: str
    contact: str
    body: dict[str, Any]

    def fields(self) -> dict[str, Any]:
        # No ``event``, ``ts``, ``kind`` or ``task`` keys: those belong to the run's events.
        return {
            "trigger": self.event,
            "case_id": self.case_id,
            "subject": self.subject,
            "level": self.level,
            "level_name": self.level_name,
            "contact": self.contact,
        }

    def data(self) -> bytes:
        return json.dumps(self.body, default=str).encode()


def level_timeout(spec: Escalation, level: EscalationLevel) -> float:
    """A level's timeout in plan seconds: its own, else ``escalation.timeout``."""
    return spec.timeout if level.timeout is None else level.timeout


def notice_body(
    case: Case, contact: str, *, spec: Escalation, run_id: int, event: str
) -> dict[str, Any]:
    """The JSON a webhook receives (and a command reads on stdin) for one contact.

    ``event`` is ``escalation_opened`` (the case reached its first level) or
    ``escalated`` (it went up to ``case.level``). ``level.timeout_s`` is plan time;
    ``case.deadline`` is the wall-clock time the level's (scaled) time is up.
    """
    ladder = spec.ladder()
    index = min(case.level, len(ladder) - 1)
    level = ladder[index]
    text = (
        f"[counterpoint] {case.kind} {case.subject} escalated to {case.level_name} "
        f"(level {case.level + 1} of {len(ladder)}) for {contact}: {case.summary}"
    )
    return {
        "type": "escalation",
        "event": event,
        "notice_id": f"{run_id}-{case.id}-{case.level}-{contact}",
        "run_id": run_id,
        "contact": contact,
        "level": {
            "index": case.level,
            "name": case.level_name,
            "contacts": list(level.contacts),
            "timeout_s": level_timeout(spec, level),
            "last": index == len(ladder) - 1,
            "count": len(ladder),
        },
        "case": case.to_json(),
        "text": text,
    }


_SEVERITY: dict[str, Severity] = {
    "escalation_opened": "warning",
    "escalated": "error",
    "escalation_exhausted": "critical",
    "escalation_resolved": "info",
}


def bus_notice(case: Case, event: str, *, sender: str = "orchestrator") -> Message:
    """A protocol ``notification`` to everyone (``*``) about a case, for the message bus."""
    return Message(
        sender=sender,
        recipient="*",
        type=MessageType.NOTIFICATION,
        timestamp=now(),
        priority="critical" if event == "escalation_exhausted" else "high",
        content=Content(
            event_type=event,
            severity=_SEVERITY.get(event, "warning"),
            data={"case": json.loads(json.dumps(case.to_json(), default=str))},
        ),
    )


class Escalator:
    """The escalation cases of one run; see the module docstring.

    Synchronous except for sending notifications, which runs in background tasks
    on the running event loop (notifications due while no loop runs start with
    the next call made inside one, at the latest in :meth:`drain`). ``emit`` is
    called as ``emit(kind, None, **data)``, like the run engine's ``emit``.
    ``clock`` gives the deadlines :meth:`next_deadline` returns; ``wall`` the
    times journaled and shown. Commands run in ``cwd`` (the plan's folder;
    default: the current directory). ``publish``, when given, also gets a
    :func:`bus_notice` for each case opened, escalated, exhausted and resolved.
    """

    def __init__(
        self,
        spec: Escalation,
        store: SqliteStore,
        run_id: int,
        *,
        emit: Callable[..., None],
        time_scale: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        policy: NotifyPolicy | None = None,
        cwd: Path | None = None,
        publish: Callable[[Message], object] | None = None,
    ) -> None:
        if not (math.isfinite(time_scale) and time_scale > 0):
            raise ValueError(f"time_scale must be a positive number, not {time_scale}")
        self.spec = spec
        self.store = store
        self.run_id = run_id
        self.time_scale = time_scale
        self.policy = policy or NotifyPolicy()
        self.cwd = cwd
        self._emit = emit
        self._publish = publish
        self._clock = clock
        self._wall = wall
        self._ladder = spec.ladder()
        self._cases: dict[int, Case] = {}
        self._by_subject: dict[str, Case] = {}
        self._due: dict[int, float] = {}  # case id -> monotonic deadline (open cases)
        self._next_id = 1
        self._tasks: set[asyncio.Task[None]] = set()
        self._deferred: list[Callable[[], Coroutine[Any, Any, None]]] = []
        store.ensure_schema(SCHEMA)

    # -- queries ---------------------------------------------------------------

    def cases(self) -> list[Case]:
        """Every case of the run (open, resolved, exhausted), oldest first."""
        return [self._cases[i] for i in sorted(self._cases)]

    def case(self, subject: str) -> Case | None:
        """The latest case for ``subject``, or None."""
        return self._by_subject.get(subject)

    def next_deadline(self) -> float | None:
        """The ``clock`` time of the earliest level deadline of an open case, or None."""
        return min(self._due.values(), default=None)

    def timeout_s(self, level: int) -> float:
        """Real seconds a case stays at ladder index ``level`` (plan time x time scale)."""
        return level_timeout(self.spec, self._ladder[level]) * self.time_scale

    @property
    def in_flight(self) -> int:
        """Webhook and command notifications not finished yet."""
        return len(self._tasks) + len(self._deferred)

    # -- changes ---------------------------------------------------------------

    def open(self, subject: str, kind: str, summary: str, details: dict[str, Any]) -> Case:
        """Open a case at the first level and notify its contacts.

        Idempotent: while ``subject`` has an open (or exhausted) case, that case is
        returned unchanged; a resolved subject gets a new case.
        """
        self._start_deferred()
        known = self._by_subject.get(subject)
        if known is not None and known.status != RESOLVED:
            return known
        now_wall = self._wall()
        timeout = self.timeout_s(0)
        case = Case(
            id=self._next_id,
            subject=subject,
            kind=kind,
            summary=summary,
            details=dict(details),
            level=0,
            level_name=self._ladder[0].name,
            status=OPEN,
            opened=now_wall,
            deadline=now_wall + timeout,
        )
        self._next_id += 1
        self._cases[case.id] = case
        self._by_subject[subject] = case
        self._due[case.id] = self._clock() + timeout
        self._journal(case)
        self._event(
            "escalation_opened",
            **self._case_fields(case),
            details=case.details,
            contacts=list(self._ladder[0].contacts),
            deadline=case.deadline,
        )
        log.info(
            "escalation %d opened for %s (%s) at %s: %s",
            case.id,
            subject,
            kind,
            case.level_name,
            summary,
        )
        self._announce(case, "escalation_opened")
        self._notify(case, "escalation_opened")
        return case

    def resolve(self, subject: str, resolution: dict[str, Any]) -> Case | None:
        """Close ``subject``'s open or exhausted case with ``resolution``; None if it has none."""
        self._start_deferred()
        case = self._by_subject.get(subject)
        if case is None or case.status == RESOLVED:
            return None
        case.status = RESOLVED
        case.resolved = self._wall()
        case.resolution = dict(resolution)
        case.deadline = None
        self._due.pop(case.id, None)
        self._journal(case)
        self._event(
            "escalation_resolved",
            **self._case_fields(case),
            resolution=case.resolution,
            time_to_resolve_s=case.time_to_resolve_s,
        )
        log.info(
            "escalation %d for %s resolved after %.3f s at %s",
            case.id,
            subject,
            case.time_to_resolve_s or 0.0,
            case.level_name,
        )
        self._announce(case, "escalation_resolved")
        return case

    def tick(self) -> list[Case]:
        """Move every case whose level deadline passed up the ladder.

        A case past its last level becomes ``exhausted``; the cases that did so in
        this call are returned (the engine applies ``escalation.exhausted`` to them).
        A late tick catches up: a case climbs every level whose time is up, each
        deadline counted from the previous one, all cases in deadline order.
        """
        self._start_deferred()
        at = self._clock()
        exhausted: list[Case] = []
        while self._due:
            case_id, due = min(self._due.items(), key=lambda item: (item[1], item[0]))
            if due > at:
                break
            case = self._cases[case_id]
            if case.level + 1 < len(self._ladder):
                self._escalate(case)
            else:
                self._exhaust(case)
                exhausted.append(case)
        return exhausted

    def restore(self) -> None:
        """Reload this run's cases from the store (after a resume).

        Open cases keep their level and the time their level had left when the run
        stopped (their deadline is journaled as wall-clock time); notifications that
        were in flight then are not sent again.
        """
        self.store.flush()
        self._cases.clear()
        self._by_subject.clear()
        self._due.clear()
        at_wall, at = self._wall(), self._clock()
        last = len(self._ladder) - 1
        for row in self.store.query(_SELECT, (self.run_id,)):
            case = _case_of(row)
            if case.level > last:  # the plan was changed to a shorter ladder
                case.level, case.level_name = last, self._ladder[last].name
            self._cases[case.id] = case
            self._by_subject[case.subject] = case
            if case.status == OPEN:
                if case.deadline is None:
                    case.deadline = at_wall + self.timeout_s(case.level)
                self._due[case.id] = at + (case.deadline - at_wall)
        self._next_id = max(self._cases, default=0) + 1
        if self._due:
            log.info("restored %d open escalation(s)", len(self._due))

    async def drain(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for notifications in flight, then stop the rest.

        A webhook or command stopped here is recorded as a final ``notify_failed``.
        Call it before the run's last store flush.
        """
        self._start_deferred()
        loop = asyncio.get_running_loop()
        end = loop.time() + max(0.0, timeout_s)
        while self._tasks:
            left = end - loop.time()
            if left <= 0:
                break
            await asyncio.wait(set(self._tasks), timeout=left)
        pending = set(self._tasks)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    # -- ladder ----------------------------------------------------------------

    def _escalate(self, case: Case) -> None:
        previous = case.level
        case.level += 1
        case.level_name = self._ladder[case.level].name
        timeout = self.timeout_s(case.level)
        self._due[case.id] += timeout
        case.deadline = (case.deadline if case.deadline is not None else self._wall()) + timeout
        case.escalated = self._wall()
        self._journal(case)
        self._event(
            "escalated",
            **self._case_fields(case),
            from_level=previous,
            contacts=list(self._ladder[case.level].contacts),
            deadline=case.deadline,
        )
        log.info(
            "escalation %d for %s went up to %s (level %d of %d)",
            case.id,
            case.subject,
            case.level_name,
            case.level + 1,
            len(self._ladder),
        )
        self._announce(case, "escalated")
        self._notify(case, "escalated")

    def _exhaust(self, case: Case) -> None:
        case.status = EXHAUSTED
        case.deadline = None
        self._due.pop(case.id, None)
        self._journal(case)
        self._event(
            "escalation_exhausted",
            **self._case_fields(case),
            message=EXHAUSTED_MESSAGE,
            action=self.spec.exhausted,
        )
        log.warning(
            "escalation %d for %s: %s (%s)",
            case.id,
            case.subject,
            EXHAUSTED_MESSAGE,
            self.spec.exhausted,
        )
        self._announce(case, "escalation_exhausted")

    def _case_fields(self, case: Case) -> dict[str, Any]:
        # ``kind`` and ``task`` are the engine's emit() parameters: the case kind is case_kind.
        return {
            "case_id": case.id,
            "subject": case.subject,
            "case_kind": case.kind,
            "summary": case.summary,
            "level": case.level,
            "level_name": case.level_name,
        }

    def _journal(self, case: Case) -> None:
        self.store.write(
            _UPSERT,
            (
                self.run_id,
                case.id,
                case.subject,
                case.kind,
                case.summary,
                _dumps(case.details),
                case.level,
                case.level_name,
                case.status,
                case.opened,
                case.escalated,
                case.deadline,
                case.resolved,
                None if case.resolution is None else _dumps(case.resolution),
            ),
        )

    def _event(self, kind: str, **data: Any) -> None:
        self._emit(kind, None, **data)

    def _safe_emit(self, kind: str, **data: Any) -> None:
        """For background tasks: a failing ``emit`` is logged, never raised."""
        try:
            self._emit(kind, None, **data)
        except Exception:
            log.exception("could not record the %s event", kind)

    def _announce(self, case: Case, event: str) -> None:
        if self._publish is None:
            return
        try:
            self._publish(bus_notice(case, event))
        except Exception as exc:
            log.warning("could not publish %s for %s on the bus: %s", event, case.subject, exc)

    # -- notifications ---------------------------------------------------------

    def _notify(self, case: Case, event: str) -> None:
        level = self._ladder[case.level]
        for contact in level.contacts:
            notice = _Notice(
                event=event,
                case_id=case.id,
                subject=case.subject,
                level=case.level,
                level_name=case.level_name,
                contact=contact,
                body=notice_body(case, contact, spec=self.spec, run_id=self.run_id, event=event),
            )
            for notifier in self.spec.contact(contact).notify:
                self._send(notice, notifier)

    def tell(self, contacts: list[str], *, event: str, subject: str, body: dict[str, Any]) -> None:
        """Send ``body`` to ``contacts`` through their notifiers, outside any case.

        Alerts use it: a firing alert that names contacts tells them, and tells them
        again when it resolves. ``body["text"]`` is the line a ``log`` notifier writes.
        The same retries, events (``escalation_notice``, ``escalation_notified``,
        ``notify_failed``, with ``case_id`` 0 and ``trigger`` = ``event``) apply.
        """
        for contact in contacts:
            notice = _Notice(event, 0, subject, -1, "", contact, {**body, "contact": contact})
            for notifier in self.spec.contact(contact).notify:
                self._send(notice, notifier)

    def _send(self, notice: _Notice, notifier: Notifier) -> None:
        if notifier.log:
            self._log_notice(notice)
        elif notifier.webhook is not None:
            url = notifier.webhook
            self._spawn(lambda: self._post_with_retries(notice, url))
        elif notifier.command is not None:
            command = notifier.command
            self._spawn(lambda: self._run_command(notice, command))

    def _log_notice(self, notice: _Notice) -> None:
        text = str(notice.body["text"])
        self._event("escalation_notice", **notice.fields(), text=text)
        log.info("%s", text)

    def _spawn(self, start: Callable[[], Coroutine[Any, Any, None]]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._deferred.append(start)  # no loop yet: started by the next call inside one
            return
        task = loop.create_task(start())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start_deferred(self) -> None:
        if not self._deferred:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        deferred, self._deferred = self._deferred, []
        for start in deferred:
            self._spawn(start)

    def _failed(self, notice: _Notice, channel: str, target: str, error: str, **data: Any) -> None:
        final = data.setdefault("final", True)
        self._safe_emit(
            "notify_failed", **notice.fields(), channel=channel, target=target, error=error, **data
        )
        log.log(
            logging.WARNING if final else logging.INFO,
            "notifying %s (%s %s) about %s failed: %s",
            notice.contact,
            channel,
            target,
            notice.subject,
            error,
        )

    async def _post_with_retries(self, notice: _Notice, url: str) -> None:
        target = _redact(url)
        tries = max(1, self.policy.attempts)
        attempt = 0
        try:
            for attempt in range(1, tries + 1):
                try:
                    status = await asyncio.to_thread(
                        _post, url, notice, self.policy.webhook_timeout_s
                    )
                except Exception as exc:  # refused, timed out, reset, a non-2xx answer
                    http = exc.status if isinstance(exc, _HttpError) else None
                    final = attempt == tries or (http is not None and http not in _RETRY_STATUSES)
                    error, extra = _reason(exc), {} if http is None else {"status": http}
                    self._failed(
                        notice,
                        "webhook",
                        target,
                        error,
                        attempt=attempt,
                        attempts=tries,
                        final=final,
                        **extra,
                    )
                    if final:
                        return
                    wait = exc.retry_after if isinstance(exc, _HttpError) else None
                    backoff = self.policy.backoff(attempt)
                    await asyncio.sleep(min(self.policy.backoff_max_s, wait or backoff))
                    continue
                self._safe_emit(
                    "escalation_notified",
                    **notice.fields(),
                    channel="webhook",
                    target=target,
                    attempts=attempt,
                    status=status,
                )
                return
        except asyncio.CancelledError:
            self._failed(
                notice, "webhook", target, "stopped at shutdown", attempt=attempt, attempts=tries
            )
            raise
        except Exception:  # never let a notification break the run
            log.exception("webhook notification to %s failed", target)

    async def _run_command(self, notice: _Notice, command: str | list[str]) -> None:
        try:
            argv = shlex.split(command) if isinstance(command, str) else list(command)
        except ValueError as exc:
            self._failed(notice, "command", str(command), f"cannot parse the command: {exc}")
            return
        if not argv:
            self._failed(notice, "command", "", "the command is empty")
            return
        target = argv[0]
        try:
            with tempfile.TemporaryFile() as stdin, tempfile.TemporaryFile() as stderr:
                stdin.write(notice.data())
                stdin.seek(0)
                code = await self._exec(notice, argv, stdin, stderr)
                if code is None:
                    return
                if code == 0:
                    self._safe_emit(
                        "escalation_notified",
                        **notice.fields(),
                        channel="command",
                        target=target,
                        exit_code=0,
                    )
                    return
                tail = _tail(stderr)
                why = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
                self._failed(
                    notice, "command", target, f"{why}: {tail}" if tail else why, exit_code=code
                )
        except Exception:  # never let a notification break the run
            log.exception("command notification %s failed", target)

    async def _exec(
        self, notice: _Notice, argv: list[str], stdin: IO[bytes], stderr: IO[bytes]
    ) -> int | None:
        """The command's exit status; None when it could not start, timed out or was stopped."""
        target = argv[0]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=stdin,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=stderr,
                cwd=self.cwd,
                env={**os.environ, **_command_env(notice, self.run_id)},
                start_new_session=True,
            )
        except OSError as exc:
            self._failed(notice, "command", target, f"cannot start: {exc.strerror or exc}")
            return None
        try:
            return await asyncio.wait_for(proc.wait(), self.policy.command_timeout_s)
        except TimeoutError:
            await stop_group(proc, self.policy.kill_grace_s)
            limit = self.policy.command_timeout_s
            self._failed(notice, "command", target, f"timed out after {limit:g} s")
            return None
        except asyncio.CancelledError:
            await stop_group(proc, self.policy.kill_grace_s)
            self._failed(notice, "command", target, "stopped at shutdown")
            raise


# -- helpers -------------------------------------------------------------------


class _HttpError(OSError):
    def __init__(self, status: int, reason: str, retry_after: float | None) -> None:
        super().__init__(f"answered {status} {reason}".strip())
        self.status = status
        self.retry_after = retry_after


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is a failure: urllib would turn the POST into a GET."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _post(url: str, notice: _Notice, timeout_s: float) -> int:
    """POST the notice (in a worker thread); the HTTP status, or raises."""
    request = urllib.request.Request(
        url,
        data=notice.data(),
        headers={
            "Content-Type": "application/json",
            "User-Agent": "counterpoint-escalation",
            "X-Counterpoint-Notice": str(notice.body["notice_id"]),
        },
        method="POST",
    )
    try:
        with _OPENER.open(request, timeout=timeout_s) as response:
            response.read()
            status: int = response.status
            reason: str = response.reason
            headers: HttpHeaders = response.headers
    except urllib.error.HTTPError as exc:
        exc.close()
        status, reason, headers = exc.code, str(exc.reason), exc.headers
    if not 200 <= status < 300:
        raise _HttpError(status, reason, _retry_after(headers.get("Retry-After")))
    return status


def _retry_after(value: str | None) -> float | None:
    try:
        seconds = float(value) if value else None
    except ValueError:
        return None
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None


def _redact(url: str) -> str:
    """``scheme://host[:port]``: webhook paths and queries often hold secrets (Slack, Teams)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.scheme}://{host}{f':{port}' if port else ''}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError):
        inner = exc.reason
        return str(inner.strerror if isinstance(inner, OSError) and inner.strerror else inner)
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


def _command_env(notice: _Notice, run_id: int) -> dict[str, str]:
    return {
        "COUNTERPOINT_RUN_ID": str(run_id),
        "COUNTERPOINT_ESCALATION_EVENT": notice.event,
        "COUNTERPOINT_ESCALATION_CASE": str(notice.case_id),
        "COUNTERPOINT_ESCALATION_SUBJECT": notice.subject,
        "COUNTERPOINT_ESCALATION_LEVEL": notice.level_name,
        "COUNTERPOINT_ESCALATION_CONTACT": notice.contact,
    }


def _tail(stream: IO[bytes]) -> str:
    stream.seek(0, os.SEEK_END)
    size = stream.tell()
    stream.seek(max(0, size - 4 * _STDERR_TAIL_CHARS))
    text = stream.read().decode("utf-8", errors="replace").strip()
    return text[-_STDERR_TAIL_CHARS:]


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str)


def _case_of(row: tuple[Any, ...]) -> Case:
    return Case(
        id=row[0],
        subject=row[1],
        kind=row[2],
        summary=row[3],
        details=json.loads(row[4]) if row[4] else {},
        level=row[5],
        level_name=row[6],
        status=row[7],
        opened=row[8],
        escalated=row[9],
        deadline=row[10],
        resolved=row[11],
        resolution=json.loads(row[12]) if row[12] else None,
    )


__all__ = [
    "EVENTS",
    "EXHAUSTED",
    "EXHAUSTED_MESSAGE",
    "OPEN",
    "RESOLVED",
    "Case",
    "Escalator",
    "NotifyPolicy",
    "bus_notice",
    "level_timeout",
    "notice_body",
]
