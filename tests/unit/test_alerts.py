"""Alert rules over metric samples and the built-in alerts, with a fake clock and a real
journal: pending, firing after ``for``, resolving, notifications, and resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_escalation import Clocks, Events

from counterpoint.messaging.protocol import Message, MessageType
from counterpoint.plan.model import Plan
from counterpoint.runtime.alerts import Alert, AlertMonitor, read_alerts
from counterpoint.runtime.escalation import Escalator
from counterpoint.runtime.events import RunEvent
from counterpoint.store.sqlite import SqliteStore

RUN = 1


def plan_with(alerts: list[dict[str, Any]], **top: Any) -> Plan:
    return Plan.model_validate(
        {
            "version": 1,
            "name": "alerts",
            "alerts": alerts,
            "phases": [{"id": "p", "milestones": [{"id": "m", "tasks": [{"id": "t"}]}]}],
            **top,
        }
    )


class Setup:
    def __init__(self, tmp_path: Path, plan: Plan, time_scale: float = 1.0) -> None:
        self.clocks = Clocks()
        self.events = Events()
        self.published: list[Message] = []
        self.store = SqliteStore(tmp_path / "state")
        self.escalator = Escalator(
            plan.escalation,
            self.store,
            RUN,
            emit=self.events,
            clock=self.clocks.clock,
            wall=self.clocks.wall,
        )
        self.monitor = self.new_monitor(plan, time_scale)

    def new_monitor(self, plan: Plan, time_scale: float = 1.0) -> AlertMonitor:
        monitor = AlertMonitor(
            plan,
            self.store,
            RUN,
            emit=self.events,
            publish=self.published.append,
            escalator=self.escalator,
            time_scale=time_scale,
            clock=self.clocks.clock,
            wall=self.clocks.wall,
        )
        monitor.restore()
        return monitor

    def at(self, mono: float, **values: float) -> None:
        self.clocks.set(mono)
        self.monitor.observe({k.replace("__", "."): v for k, v in values.items()})

    def rows(self) -> list[Alert]:
        self.store.flush()  # the journal commits buffered writes, as the run loop does
        return read_alerts(self.store, RUN)

    def firing(self) -> list[str]:
        return [f"{a['name']}:{a['subject']}" for a in self.monitor.firing()]


DEEP_QUEUE = {
    "name": "deep-queue",
    "metric": "queue.depth",
    "op": ">=",
    "threshold": 5,
    "for": "10m",
    "severity": "critical",
}


def test_a_rule_fires_after_its_for_duration_and_resolves_when_it_no_longer_holds(
    tmp_path: Path,
) -> None:
    s = Setup(tmp_path, plan_with([DEEP_QUEUE]))
    s.at(1000, queue__depth=7)  # the condition begins: pending
    s.at(1300, queue__depth=9)
    s.at(1599, queue__depth=5)
    assert s.firing() == [] and s.events.of("alert_fired") == []
    s.at(1600, queue__depth=6)  # held for 10 minutes: fires
    assert s.firing() == ["deep-queue:run"]
    (fired,) = s.events.of("alert_fired")
    assert fired["severity"] == "critical" and fired["value"] == 6 and fired["threshold"] == 5
    assert fired["message"] == "queue.depth >= 5 (now 6)"
    s.at(1700, queue__depth=8)  # still firing: no second alert, the value follows
    assert len(s.events.of("alert_fired")) == 1
    assert s.monitor.firing()[0]["value"] == 8
    s.at(1800, queue__depth=4)
    assert s.firing() == []
    (resolved,) = s.events.of("alert_resolved")
    assert resolved["alert_id"] == fired["alert_id"]
    assert resolved["firing_s"] == 200 and resolved["resolution"] == "queue.depth is 4 now"
    (row,) = s.rows()
    assert (row.name, row.kind, row.resolved, row.resolution) == (
        "deep-queue",
        "rule",
        s.clocks.wall(),
        "queue.depth is 4 now",
    )


def test_a_break_in_the_condition_restarts_the_for_clock(tmp_path: Path) -> None:
    s = Setup(tmp_path, plan_with([DEEP_QUEUE]))
    s.at(0, queue__depth=7)
    s.at(500, queue__depth=1)  # dips: pending ends
    s.at(550, queue__depth=7)  # pending again from 550
    s.at(1100, queue__depth=7)  # 550 s since the new start: not yet
    assert s.firing() == []
    s.at(1150, queue__depth=7)
    assert s.firing() == ["deep-queue:run"]


def test_the_for_duration_is_plan_time_scaled_like_every_plan_duration(tmp_path: Path) -> None:
    s = Setup(tmp_path, plan_with([DEEP_QUEUE]), time_scale=0.01)  # 10 min -> 6 s
    s.at(0, queue__depth=9)
    s.at(5.9, queue__depth=9)
    assert s.firing() == []
    s.at(6.0, queue__depth=9)
    assert s.firing() == ["deep-queue:run"]


@pytest.mark.parametrize(
    ("op", "threshold", "value", "fires"),
    [
        ("==", 0, 0, True),
        ("!=", 0, 0, False),
        ("<", 1, 0.5, True),
        ("<=", 1, 1, True),
        (">", 1, 1, False),
        (">=", 1, 1, True),
    ],
)
def test_every_operator(
    tmp_path: Path, op: str, threshold: float, value: float, fires: bool
) -> None:
    rule = {"name": "r", "metric": "agents.utilization", "op": op, "threshold": threshold}
    s = Setup(tmp_path, plan_with([rule]))
    s.at(1, agents__utilization=value)
    assert s.firing() == (["r:run"] if fires else [])


def test_a_metric_missing_from_the_sample_never_fires(tmp_path: Path) -> None:
    rule = {"name": "r", "metric": "tasks.failed", "op": "<", "threshold": 1}
    s = Setup(tmp_path, plan_with([rule]))
    s.at(1, queue__depth=0)
    assert s.firing() == []


def test_a_firing_alert_goes_on_the_bus_and_to_the_contacts_it_names(tmp_path: Path) -> None:
    rule = {
        "name": "failures",
        "metric": "tasks.failed",
        "op": ">",
        "threshold": 0,
        "notify": ["oncall"],
    }
    s = Setup(
        tmp_path,
        plan_with([rule], escalation={"contacts": {"oncall": {"notify": [{"log": True}]}}}),
    )
    s.at(1, tasks__failed=2)
    (fired,) = [m for m in s.published if m.content.event_type == "alert_fired"]
    assert fired.type is MessageType.NOTIFICATION and fired.recipient == "*"
    assert fired.content.severity == "warning" and fired.priority == "high"
    assert fired.content.data["alert"]["name"] == "failures"
    (notice,) = s.events.of("escalation_notice")
    assert notice["contact"] == "oncall" and notice["trigger"] == "alert_fired"
    assert (
        notice["text"] == "[counterpoint] warning alert failures firing: tasks.failed > 0 (now 2)"
    )
    s.at(2, tasks__failed=0)
    assert [m.content.event_type for m in s.published] == ["alert_fired", "alert_resolved"]
    texts = [n["text"] for n in s.events.of("escalation_notice")]
    assert texts[1].startswith("[counterpoint] warning alert failures resolved (tasks.failed is 0")


def ev(kind: str, task: str | None = None, **data: Any) -> RunEvent:
    return RunEvent(kind, task, data)


def test_built_in_alerts_follow_the_runs_events(tmp_path: Path) -> None:
    s = Setup(tmp_path, plan_with([]))
    m = s.monitor
    m.on_event(ev("task_stalled", "build", silent_s=7200))
    m.on_event(ev("task_stalled", "build", silent_s=7300))  # the same silence: one alert
    m.on_event(ev("agent_lost", agent="w1", reason="silent"))
    m.on_event(ev("response_overdue", "build", request_id="r-1", late_s=12))
    m.on_event(ev("gate_evaluated", gate="p.exit", status="waiting"))
    assert s.firing() == [
        "task_stalled:build",
        "agent_lost:w1",
        "response_overdue:r-1",
        "gate_blocked:p.exit",
    ]
    severities = {a["name"]: a["severity"] for a in m.firing()}
    assert severities["agent_lost"] == "critical" and severities["task_stalled"] == "warning"
    m.on_event(ev("gate_evaluated", gate="p.exit", status="blocked"))  # still held: same alert
    assert m.firing()[3]["message"] == "gate p.exit is blocked"
    m.on_event(ev("task_progress", "build", progress=40))
    m.on_event(ev("agent_connected", agent="w1"))
    m.on_event(ev("response_received", "build", request_id="r-1", late_s=20))
    m.on_event(ev("gate_evaluated", gate="p.exit", status="completed"))
    assert s.firing() == []
    resolutions = [a.resolution for a in s.rows()]
    assert resolutions == ["progress", "connected again", "answered", "gate completed"]


def test_firing_alerts_survive_a_restart_and_overdue_responses_do_not(tmp_path: Path) -> None:
    plan = plan_with([DEEP_QUEUE])
    s = Setup(tmp_path, plan)
    s.at(0, queue__depth=9)
    s.at(600, queue__depth=9)
    s.monitor.on_event(ev("agent_lost", agent="w1"))
    s.monitor.on_event(ev("response_overdue", "t", request_id="r-9", late_s=1))
    s.store.flush()
    again = s.new_monitor(plan)
    assert [f"{a['name']}:{a['subject']}" for a in again.firing()] == [
        "deep-queue:run",
        "agent_lost:w1",
    ]
    assert s.rows()[2].resolution == "the run restarted; the request is gone"
    again.on_event(ev("agent_lost", agent="w2"))
    assert again.firing()[-1]["id"] == 4  # ids go on from the journal
