"""Alerts of a run: the plan's rules over the sampled metrics, and the built-in ones.

A rule (``alerts:`` in the plan) watches one metric of each sample (see
:mod:`counterpoint.plan.alert_metrics`): when ``metric OP threshold`` has held for
the rule's ``for`` duration (plan time, scaled like every plan duration) the alert
fires; it resolves at the first sample where the condition no longer holds. As in
Prometheus, a rule is checked only at samples (``settings.metrics_every``), so an
alert fires at the first sample at least ``for`` after the condition began.

Built-in alerts follow the run's events, one per subject:

===================  ========  ==========================================================
name                 severity  fires / resolves
===================  ========  ==========================================================
``task_stalled``     warning   a running task sent no status update for ``status_every``
                               / it reports progress, ends, or starts again
``agent_lost``       critical  a remote agent was silent past its heartbeats / it connects
``response_overdue`` warning   a request went unanswered past ``response_sla`` / the
                               answer arrives
``gate_blocked``     warning   a gate did not pass (blocked, incomplete, or waiting for
                               approvals) / it passes
===================  ========  ==========================================================

A firing alert is journaled (table ``alerts``, events ``alert_fired`` and
``alert_resolved``), sent on the run's bus as a protocol ``notification`` to everyone
(``event_type`` ``alert_fired`` / ``alert_resolved``), told to the contacts a rule names
in ``notify`` (through the escalation section's notifiers), and shown by
``counterpoint alerts``, the live display and the dashboard until it resolves. Alerts
still firing when a run ends stay firing in the journal; a resume carries them on.
"""

from __future__ import annotations

import json
import operator
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from counterpoint.messaging.protocol import Content, Message, MessageType, now
from counterpoint.plan.model import Plan
from counterpoint.runtime.events import RunEvent, RunObserver
from counterpoint.store.sqlite import SqliteStore

if TYPE_CHECKING:
    from counterpoint.runtime.escalation import Escalator

_DDL = """
CREATE TABLE IF NOT EXISTS alerts (
    run_id INTEGER NOT NULL,
    id INTEGER NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    severity TEXT NOT NULL,
    subject TEXT NOT NULL,
    message TEXT NOT NULL,
    metric TEXT,
    value REAL,
    threshold REAL,
    fired REAL NOT NULL,
    resolved REAL,
    resolution TEXT,
    PRIMARY KEY (run_id, id)
) WITHOUT ROWID;
"""
_UPSERT = "INSERT OR REPLACE INTO alerts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_COLUMNS = (
    "id",
    "name",
    "kind",
    "severity",
    "subject",
    "message",
    "metric",
    "value",
    "threshold",
    "fired",
    "resolved",
    "resolution",
)

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}

#: The built-in alerts and their severities.
BUILTIN = {
    "task_stalled": "warning",
    "agent_lost": "critical",
    "response_overdue": "warning",
    "gate_blocked": "warning",
}
_PRIORITY = {"critical": "critical", "warning": "high", "info": "medium"}
_TASK_MOVED = frozenset(
    {
        "task_progress",
        "task_started",
        "task_completed",
        "task_failed",
        "task_retrying",
        "task_cancelled",
        "task_requeued",
        "task_rate_limited",
        "task_blocked",
    }
)
_GATE_HELD = frozenset({"blocked", "incomplete", "waiting"})
_GATE_PASSED = frozenset({"allowed", "completed"})


@dataclass
class Alert:
    id: int
    name: str
    kind: str  # rule | builtin
    severity: str
    subject: str
    message: str
    metric: str | None = None
    value: float | None = None
    threshold: float | None = None
    fired: float = 0.0
    resolved: float | None = None
    resolution: str | None = None

    @property
    def firing(self) -> bool:
        return self.resolved is None

    def to_json(self) -> dict[str, Any]:
        out = {c: getattr(self, c) for c in _COLUMNS}
        out["since"] = self.fired
        out["status"] = "firing" if self.firing else "resolved"
        return out

    def row(self, run_id: int) -> tuple[Any, ...]:
        return (run_id, *(getattr(self, c) for c in _COLUMNS))


class AlertMonitor(RunObserver):
    """The alerts of one run: feed it samples (:meth:`observe`) and the run's events."""

    def __init__(
        self,
        plan: Plan,
        store: SqliteStore,
        run_id: int,
        *,
        emit: Callable[..., None],
        publish: Callable[[Message], None] | None = None,
        escalator: Escalator | None = None,
        time_scale: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.rules = {r.name: r for r in plan.alerts}
        self.store = store
        self.run_id = run_id
        self._emit = emit
        self._publish = publish
        self._escalator = escalator
        self.time_scale = time_scale
        self.clock = clock
        self.wall = wall
        self.pending: dict[str, float] = {}  # rule -> since (clock) the condition holds
        self.active: dict[tuple[str, str], Alert] = {}  # (name, subject) -> firing alert
        self.next_id = 1
        store.ensure_schema(_DDL)

    # -- queries -------------------------------------------------------------------

    def firing(self) -> list[dict[str, Any]]:
        """Alerts firing now, oldest first: ``{"id", "name", "kind" ("rule" | "builtin"),
        "severity" ("critical" | "warning" | "info"), "subject", "message", "value",
        "since" (wall-clock seconds), ...}``."""
        return [a.to_json() for a in sorted(self.active.values(), key=lambda a: a.id)]

    def restore(self) -> None:
        """Carry on after a resume: alerts still firing stay so (a rule's ``for`` clock
        starts again); overdue responses resolve, their requests did not survive."""
        for alert in read_alerts(self.store, self.run_id):
            self.next_id = max(self.next_id, alert.id + 1)
            if alert.firing:
                self.active[(alert.name, alert.subject)] = alert
        for key, alert in list(self.active.items()):
            if alert.name == "response_overdue":
                self._resolve(key, "the run restarted; the request is gone")
            elif alert.kind == "rule" and alert.name not in self.rules:
                self._resolve(key, "the plan no longer has this rule")

    # -- rules ---------------------------------------------------------------------

    def observe(self, values: dict[str, float]) -> None:
        """Check every rule against one sample of the metrics."""
        now = self.clock()
        for rule in self.rules.values():
            value = values.get(rule.metric)
            holds = value is not None and OPERATORS[rule.op](value, rule.threshold)
            key = (rule.name, "run")
            if not holds:
                self.pending.pop(rule.name, None)
                if key in self.active:
                    self._resolve(key, f"{rule.metric} is {_num(value)} now")
                continue
            assert value is not None
            if key in self.active:
                self.active[key].value = value
                continue
            since = self.pending.setdefault(rule.name, now)
            if now - since >= rule.for_ * self.time_scale:
                self._fire(
                    rule.name,
                    "rule",
                    rule.severity,
                    "run",
                    f"{rule.metric} {rule.op} {_num(rule.threshold)} (now {_num(value)})",
                    metric=rule.metric,
                    value=value,
                    threshold=rule.threshold,
                )

    # -- built-in alerts, from the run's events ------------------------------------------

    def on_event(self, event: RunEvent) -> None:
        kind, task, data = event.kind, event.task, event.data
        if kind == "task_stalled" and task:
            silent = float(data.get("silent_s", 0.0))
            self._builtin(
                "task_stalled", task, f"task {task} sent no status update for {silent:g}s"
            )
        elif kind in _TASK_MOVED and task:
            self._clear("task_stalled", task, kind.removeprefix("task_").replace("_", " "))
        elif kind == "agent_lost":
            agent = str(data.get("agent", ""))
            self._builtin("agent_lost", agent, f"agent {agent} was lost (no heartbeat)")
        elif kind == "agent_connected":
            self._clear("agent_lost", str(data.get("agent", "")), "connected again")
        elif kind == "response_overdue":
            request = str(data.get("request_id", ""))
            late = float(data.get("late_s", 0.0))
            about = f" about task {task}" if task else ""
            self._builtin(
                "response_overdue",
                request,
                f"request {request}{about} unanswered {late:g}s past its SLA",
            )
        elif kind == "response_received":
            self._clear("response_overdue", str(data.get("request_id", "")), "answered")
        elif kind == "gate_evaluated":
            gate, status = str(data.get("gate", "")), str(data.get("status", ""))
            if status in _GATE_HELD:
                self._builtin("gate_blocked", gate, f"gate {gate} is {status}")
            elif status in _GATE_PASSED:
                self._clear("gate_blocked", gate, f"gate {status}")

    def _builtin(self, name: str, subject: str, message: str) -> None:
        found = self.active.get((name, subject))
        if found is not None:
            if found.message != message:  # e.g. a gate that was waiting is now blocked
                found.message = message
                self.store.write(_UPSERT, found.row(self.run_id))
            return
        self._fire(name, "builtin", BUILTIN[name], subject, message)

    def _clear(self, name: str, subject: str, why: str) -> None:
        if (name, subject) in self.active:
            self._resolve((name, subject), why)

    # -- firing and resolving ------------------------------------------------------------

    def _fire(
        self, name: str, kind: str, severity: str, subject: str, message: str, **kw: Any
    ) -> None:
        alert = Alert(self.next_id, name, kind, severity, subject, message, fired=self.wall(), **kw)
        self.next_id += 1
        self.active[(name, subject)] = alert
        self.pending.pop(name, None)
        self.store.write(_UPSERT, alert.row(self.run_id))
        self._emit("alert_fired", None, **_fields(alert))
        self._tell(alert, "alert_fired")

    def _resolve(self, key: tuple[str, str], why: str) -> None:
        alert = self.active.pop(key)
        alert.resolved = self.wall()
        alert.resolution = why
        self.store.write(_UPSERT, alert.row(self.run_id))
        self._emit(
            "alert_resolved",
            None,
            **_fields(alert),
            resolution=why,
            firing_s=round(alert.resolved - alert.fired, 6),
        )
        self._tell(alert, "alert_resolved")

    def _tell(self, alert: Alert, event: str) -> None:
        if self._publish is not None:
            self._publish(bus_alert(alert, event))
        rule = self.rules.get(alert.name) if alert.kind == "rule" else None
        if rule is not None and rule.notify and self._escalator is not None:
            verb = "firing" if event == "alert_fired" else f"resolved ({alert.resolution})"
            self._escalator.tell(
                list(rule.notify),
                event=event,
                subject=f"alert:{alert.name}",
                body={
                    "type": "alert",
                    "event": event,
                    "notice_id": f"{self.run_id}-alert-{alert.id}-{event}",
                    "run_id": self.run_id,
                    "alert": alert.to_json(),
                    "text": f"[counterpoint] {alert.severity} alert {alert.name} {verb}: "
                    f"{alert.message}",
                },
            )


def bus_alert(alert: Alert, event: str) -> Message:
    """The protocol ``notification`` to everyone (``*``) that an alert fired or resolved."""
    severity = alert.severity if event == "alert_fired" else "info"
    return Message(
        sender="orchestrator",
        recipient="*",
        type=MessageType.NOTIFICATION,
        timestamp=now(),
        priority=_PRIORITY.get(alert.severity, "medium") if event == "alert_fired" else "low",  # type: ignore[arg-type]
        content=Content(
            event_type=event,
            severity=severity,  # type: ignore[arg-type]
            data={"alert": json.loads(json.dumps(alert.to_json()))},
        ),
    )


def _fields(alert: Alert) -> dict[str, Any]:
    # ``kind`` is the emit() parameter for the event kind: the alert's kind is alert_kind.
    out: dict[str, Any] = {
        "alert_id": alert.id,
        "name": alert.name,
        "alert_kind": alert.kind,
        "severity": alert.severity,
        "subject": alert.subject,
        "message": alert.message,
    }
    if alert.metric is not None:
        out.update(metric=alert.metric, value=alert.value, threshold=alert.threshold)
    return out


def _num(value: float | None) -> str:
    return "missing" if value is None else f"{value:g}"


def read_alerts(store: SqliteStore, run_id: int) -> list[Alert]:
    """Every alert of the run, oldest first."""
    try:
        rows = store.query(
            f"SELECT {', '.join(_COLUMNS)} FROM alerts WHERE run_id = ? ORDER BY id", (run_id,)
        )
    except Exception as exc:  # a journal written before alerts existed has no table
        if "no such table" in str(exc):
            return []
        raise
    return [Alert(*row) for row in rows]
