"""The escalation ladder: opening, climbing at each timeout, exhaustion, resolution, resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from counterpoint.messaging.bus import Bus
from counterpoint.messaging.protocol import Message, MessageType
from counterpoint.plan.model import Escalation
from counterpoint.runtime.escalation import (
    EXHAUSTED_MESSAGE,
    Case,
    Escalator,
    bus_notice,
    notice_body,
)
from counterpoint.store.sqlite import SqliteStore

RUN = 1
START_WALL = 1_750_000_000.0


class Clocks:
    """A monotonic clock and a wall clock that move together, by hand."""

    def __init__(self, mono: float = 500.0, wall: float = START_WALL) -> None:
        self.mono = mono
        self.wall_time = wall

    def clock(self) -> float:
        return self.mono

    def wall(self) -> float:
        return self.wall_time

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall_time += seconds

    def set(self, mono: float) -> None:
        self.advance(mono - self.mono)


class Events:
    """Records ``emit(kind, task, **data)`` calls like the run engine's emit."""

    def __init__(self) -> None:
        self.all: list[tuple[str, int | None, dict[str, Any]]] = []

    def __call__(self, kind: str, task: int | None = None, **data: Any) -> None:
        self.all.append((kind, task, data))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [data for k, _, data in self.all if k == kind]

    def kinds(self) -> list[str]:
        return [k for k, _, _ in self.all]


def spec_of(**raw: Any) -> Escalation:
    return Escalation.model_validate(raw)


def make(
    state: Path,
    spec: Escalation,
    clocks: Clocks,
    *,
    time_scale: float = 1.0,
    **kwargs: Any,
) -> tuple[Escalator, Events, SqliteStore]:
    store = SqliteStore(state)
    events = Events()
    esc = Escalator(
        spec,
        store,
        RUN,
        emit=events,
        time_scale=time_scale,
        clock=clocks.clock,
        wall=clocks.wall,
        **kwargs,
    )
    return esc, events, store


THREE = {
    "timeout": "100s",
    "levels": [
        {"name": "leads", "contacts": ["alice", "bob"], "timeout": "10s"},
        {"name": "managers", "contacts": ["carol"]},  # escalation.timeout: 100 s
        {"name": "sponsor", "contacts": ["dave"], "timeout": "5s"},
    ],
}


def test_the_default_ladder_is_the_seeds_three_levels_with_an_hour_each(tmp_path: Path) -> None:
    spec = Escalation()
    assert [(lv.name, lv.contacts) for lv in spec.ladder()] == [
        ("level1", ["team_lead", "architect"]),
        ("level2", ["project_manager", "senior_architect"]),
        ("level3", ["executive_sponsor", "cto"]),
    ]
    assert spec.exhausted == "fail"
    clocks = Clocks()
    esc, events, _ = make(tmp_path, spec, clocks)
    case = esc.open("conflict:3", "conflict", "t1 and t2 both wrote db.url", {"key": "db.url"})
    assert (case.level, case.level_name, case.status) == (0, "level1", "open")
    assert esc.next_deadline() == 500.0 + 3600.0
    assert case.deadline == START_WALL + 3600.0
    for _ in range(2):
        clocks.advance(3600.0)
        assert esc.tick() == []
    notified = [(n["level_name"], n["contact"]) for n in events.of("escalation_notice")]
    assert notified == [
        ("level1", "team_lead"),
        ("level1", "architect"),
        ("level2", "project_manager"),
        ("level2", "senior_architect"),
        ("level3", "executive_sponsor"),
        ("level3", "cto"),
    ]
    clocks.advance(3600.0)
    assert esc.tick() == [case]
    assert case.status == "exhausted"


def test_open_is_idempotent_per_subject_until_resolved(tmp_path: Path) -> None:
    clocks = Clocks()
    esc, events, _ = make(tmp_path, spec_of(**THREE), clocks)
    first = esc.open("gate:deploy.exit", "gate", "approval missing", {"gate": "deploy.exit"})
    clocks.advance(3.0)
    again = esc.open("gate:deploy.exit", "gate", "still missing", {})
    assert again is first
    assert again.summary == "approval missing"
    assert esc.next_deadline() == 510.0  # the ladder did not restart
    other = esc.open("task:t1", "task", "t1 needs a decision", {})
    assert (first.id, other.id) == (1, 2)
    assert len(events.of("escalation_opened")) == 2
    assert esc.cases() == [first, other]
    assert esc.case("gate:deploy.exit") is first
    assert esc.case("gate:nothing") is None

    esc.resolve("gate:deploy.exit", {"approved_by": "alice"})
    reopened = esc.open("gate:deploy.exit", "gate", "blocked again", {})
    assert reopened.id == 3
    assert (reopened.level, reopened.status) == (0, "open")
    assert esc.case("gate:deploy.exit") is reopened
    assert [c.status for c in esc.cases()] == ["resolved", "open", "open"]


def test_tick_climbs_exactly_when_each_levels_timeout_passes(tmp_path: Path) -> None:
    clocks = Clocks(mono=0.0)
    esc, events, _ = make(tmp_path, spec_of(**THREE, exhausted="block"), clocks)
    case = esc.open("conflict:1", "conflict", "two writers", {})
    assert [n["contact"] for n in events.of("escalation_notice")] == ["alice", "bob"]
    # level "leads" has its own 10 s, "managers" the default 100 s, "sponsor" 5 s
    for deadline, level, name in [(10.0, 1, "managers"), (110.0, 2, "sponsor")]:
        assert esc.next_deadline() == deadline
        clocks.set(deadline - 1e-6)
        assert esc.tick() == []
        assert case.level == level - 1
        clocks.set(deadline)
        assert esc.tick() == []
        assert (case.level, case.level_name, case.status) == (level, name, "open")
        assert case.escalated == START_WALL + deadline
    climbed = events.of("escalated")
    assert [(e["from_level"], e["level"], e["contacts"]) for e in climbed] == [
        (0, 1, ["carol"]),
        (1, 2, ["dave"]),
    ]
    assert [n["contact"] for n in events.of("escalation_notice")] == [
        "alice",
        "bob",
        "carol",
        "dave",
    ]
    assert esc.next_deadline() == 115.0
    clocks.set(115.0 - 1e-6)
    assert esc.tick() == []
    clocks.set(115.0)
    assert esc.tick() == [case]
    assert (case.status, case.level, case.deadline) == ("exhausted", 2, None)
    (done,) = events.of("escalation_exhausted")
    assert done["message"] == EXHAUSTED_MESSAGE == "no more escalation levels available"
    assert (done["subject"], done["action"], done["case_kind"]) == (
        "conflict:1",
        "block",
        "conflict",
    )
    assert esc.next_deadline() is None
    clocks.advance(1000.0)
    assert esc.tick() == []  # returned once only
    assert esc.open("conflict:1", "conflict", "two writers", {}) is case  # no new ladder


def test_time_scale_multiplies_every_level_timeout(tmp_path: Path) -> None:
    clocks = Clocks(mono=1000.0)
    esc, events, _ = make(tmp_path, spec_of(timeout="1h"), clocks, time_scale=5e-6)
    case = esc.open("task:t1", "task", "stuck", {})
    step = 3600.0 * 5e-6
    assert esc.timeout_s(0) == pytest.approx(0.018)
    for level in (1, 2):
        due = esc.next_deadline()
        assert due == pytest.approx(1000.0 + level * step)
        assert due is not None
        clocks.set(due - 1e-9)
        esc.tick()
        assert case.level == level - 1
        clocks.set(due)
        esc.tick()
        assert case.level == level
    due = esc.next_deadline()
    assert due is not None
    clocks.set(due)
    assert esc.tick() == [case]
    assert len(events.of("escalated")) == 2


def test_a_late_tick_climbs_every_level_whose_time_is_up(tmp_path: Path) -> None:
    clocks = Clocks(mono=0.0)
    esc, events, _ = make(tmp_path, spec_of(**THREE), clocks)
    late = esc.open("conflict:1", "conflict", "x", {})
    clocks.set(5.0)
    fresh = esc.open("conflict:2", "conflict", "y", {})
    clocks.set(112.0)  # late: conflict:1 was due at 10 and 110, conflict:2 at 15
    assert esc.tick() == []
    assert (late.level, fresh.level) == (2, 1)
    assert late.deadline == START_WALL + 115.0  # each deadline counts from the previous one
    assert esc.next_deadline() == 115.0
    assert [(e["subject"], e["level"]) for e in events.of("escalated")] == [
        ("conflict:1", 1),
        ("conflict:2", 1),
        ("conflict:1", 2),
    ]
    clocks.set(10_000.0)
    assert esc.tick() == [late, fresh]


def test_resolve_stops_the_ladder_and_records_the_time_to_resolve(tmp_path: Path) -> None:
    clocks = Clocks(mono=0.0)
    esc, events, _ = make(tmp_path, spec_of(**THREE), clocks)
    case = esc.open("conflict:1", "conflict", "x", {})
    clocks.set(12.5)
    esc.tick()
    resolved = esc.resolve("conflict:1", {"winner": "t2", "by": "carol"})
    assert resolved is case
    assert (case.status, case.level_name, case.deadline) == ("resolved", "managers", None)
    assert case.resolution == {"winner": "t2", "by": "carol"}
    assert case.resolved == START_WALL + 12.5
    assert case.time_to_resolve_s == 12.5
    (event,) = events.of("escalation_resolved")
    assert event["time_to_resolve_s"] == 12.5
    assert event["resolution"] == {"winner": "t2", "by": "carol"}
    assert esc.next_deadline() is None
    clocks.set(10_000.0)
    assert esc.tick() == []
    assert case.status == "resolved"
    assert esc.resolve("conflict:1", {}) is None  # already resolved
    assert esc.resolve("conflict:9", {}) is None  # never opened
    assert case.to_json()["time_to_resolve_s"] == 12.5


def test_an_exhausted_case_can_still_be_resolved(tmp_path: Path) -> None:
    clocks = Clocks(mono=0.0)
    esc, _, _ = make(tmp_path, spec_of(timeout=1, exhausted="block"), clocks)
    case = esc.open("gate:p.exit", "gate", "blocked", {})
    clocks.set(3.0)
    assert esc.tick() == [case]
    assert esc.resolve("gate:p.exit", {"approved_by": "cto"}) is case
    assert (case.status, case.time_to_resolve_s) == ("resolved", 3.0)


def test_restore_after_a_restart_keeps_levels_and_remaining_time(tmp_path: Path) -> None:
    clocks = Clocks(mono=0.0)
    esc, _, store = make(tmp_path, spec_of(**THREE), clocks)
    climbing = esc.open("conflict:1", "conflict", "x", {"keys": ["a", "b"]})
    clocks.set(4.0)
    waiting = esc.open("gate:g.exit", "gate", "y", {})
    esc.open("task:t9", "task", "z", {})
    esc.resolve("task:t9", {"ok": True})
    clocks.set(10.0)
    esc.tick()  # conflict:1 -> managers, due at 110; gate:g.exit due at 14
    assert (climbing.level, waiting.level) == (1, 0)
    store.close()  # the process stops here

    # 30 s later, in a new process whose monotonic clock has another origin
    later = Clocks(mono=7.0, wall=clocks.wall_time + 30.0)
    esc2, events2, _ = make(tmp_path, spec_of(**THREE), later)
    esc2.restore()
    by_subject = {c.subject: c for c in esc2.cases()}
    assert [c.id for c in esc2.cases()] == [1, 2, 3]
    one, gate, task = by_subject["conflict:1"], by_subject["gate:g.exit"], by_subject["task:t9"]
    assert (one.level, one.level_name, one.status, one.details) == (
        1,
        "managers",
        "open",
        {"keys": ["a", "b"]},
    )
    assert (task.status, task.resolution) == ("resolved", {"ok": True})
    assert gate.deadline == START_WALL + 14.0
    # the gate had 4 s left at the stop; 30 s passed: it is overdue and goes up at the next tick
    assert esc2.next_deadline() == pytest.approx(7.0 - 26.0)
    assert esc2.tick() == []
    assert (gate.level, one.level) == (1, 1)
    assert [e["subject"] for e in events2.of("escalated")] == ["gate:g.exit"]
    # conflict:1 had 100 s left at the stop (due at 110 s, stopped at 10 s): 70 s remain
    assert esc2.next_deadline() == pytest.approx(7.0 + 70.0)
    later.set(7.0 + 69.9)
    esc2.tick()
    assert one.level == 1
    later.set(7.0 + 70.0)
    esc2.tick()
    assert one.level == 2
    # idempotent across the restart; new cases continue the numbering
    assert esc2.open("conflict:1", "conflict", "x", {}) is one
    assert esc2.open("task:t9", "task", "again", {}).id == 4


def test_cases_are_journaled_in_their_own_table(tmp_path: Path) -> None:
    clocks = Clocks(mono=0.0)
    esc, _, store = make(tmp_path, spec_of(**THREE), clocks)
    esc.open("conflict:1", "conflict", "two writers", {"key": "db.url", "tasks": ["t1", "t2"]})
    esc.open("task:t1", "task", "stuck", {})
    clocks.set(10.0)
    esc.tick()
    clocks.set(20.0)
    esc.resolve("task:t1", {"retried": True})
    store.flush()

    reader = SqliteStore(tmp_path)
    rows = reader.query(
        "SELECT id, subject, kind, summary, details, level, level_name, status, opened,"
        " escalated, deadline, resolved, resolution FROM escalations WHERE run_id = ?"
        " ORDER BY id",
        (RUN,),
    )
    reader.close()
    assert rows == [
        (
            1,
            "conflict:1",
            "conflict",
            "two writers",
            json.dumps({"key": "db.url", "tasks": ["t1", "t2"]}),
            1,
            "managers",
            "open",
            START_WALL,
            START_WALL + 10.0,
            START_WALL + 110.0,
            None,
            None,
        ),
        (
            2,
            "task:t1",
            "task",
            "stuck",
            "{}",
            1,
            "managers",
            "resolved",
            START_WALL,
            START_WALL + 10.0,
            None,
            START_WALL + 20.0,
            json.dumps({"retried": True}),
        ),
    ]


def test_events_never_reuse_the_engines_own_keys(tmp_path: Path) -> None:
    clocks = Clocks(mono=0.0)
    esc, events, _ = make(tmp_path, spec_of(timeout=1), clocks)
    esc.open("conflict:1", "conflict", "x", {"kind": "details may say anything"})
    clocks.set(1.0)
    esc.tick()
    esc.open("task:t1", "task", "y", {})
    esc.resolve("task:t1", {})
    clocks.set(10.0)
    esc.tick()
    assert set(events.kinds()) == {
        "escalation_opened",
        "escalation_notice",
        "escalated",
        "escalation_resolved",
        "escalation_exhausted",
    }
    for _, task, data in events.all:
        assert task is None
        assert not {"kind", "task", "event", "ts"} & set(data)


def test_the_notice_body_carries_the_case_the_level_and_the_contact() -> None:
    spec = spec_of(**THREE)
    case = Case(
        id=7,
        subject="conflict:3",
        kind="conflict",
        summary="t1 and t2 both wrote db.url",
        details={"key": "db.url"},
        level=1,
        level_name="managers",
        status="open",
        opened=START_WALL,
        escalated=START_WALL + 10.0,
        deadline=START_WALL + 110.0,
    )
    body = notice_body(case, "carol", spec=spec, run_id=4, event="escalated")
    assert body == {
        "type": "escalation",
        "event": "escalated",
        "notice_id": "4-7-1-carol",
        "run_id": 4,
        "contact": "carol",
        "level": {
            "index": 1,
            "name": "managers",
            "contacts": ["carol"],
            "timeout_s": 100.0,
            "last": False,
            "count": 3,
        },
        "case": case.to_json(),
        "text": "[counterpoint] conflict conflict:3 escalated to managers (level 2 of 3) "
        "for carol: t1 and t2 both wrote db.url",
    }
    assert json.loads(json.dumps(body)) == body


def test_bus_notices_reach_subscribers(tmp_path: Path) -> None:
    bus = Bus()
    box = bus.subscribe("dashboard")
    clocks = Clocks(mono=0.0)
    esc, _, _ = make(tmp_path, spec_of(timeout=1), clocks, publish=bus.publish_nowait)
    esc.open("conflict:1", "conflict", "x", {})
    clocks.set(3.0)
    esc.tick()
    esc.resolve("conflict:1", {"by": "cto"})
    seen: list[Message] = []
    while (message := box.get_nowait()) is not None:
        seen.append(message)
    got = sorted((m.content.event_type or "", m.content.severity or "") for m in seen)
    assert got == [
        ("escalated", "error"),
        ("escalated", "error"),
        ("escalation_exhausted", "critical"),
        ("escalation_opened", "warning"),
        ("escalation_resolved", "info"),
    ]
    assert all(m.type is MessageType.NOTIFICATION and m.recipient == "*" for m in seen)
    case = esc.case("conflict:1")
    assert case is not None
    assert bus_notice(case, "escalated").content.data == {"case": case.to_json()}


def test_a_failing_bus_does_not_stop_escalation(tmp_path: Path) -> None:
    def broken(message: Message) -> None:
        raise RuntimeError("bus down")

    esc, events, _ = make(tmp_path, spec_of(timeout=1), Clocks(), publish=broken)
    esc.open("conflict:1", "conflict", "x", {})
    assert events.of("escalation_opened")


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf")])
def test_the_time_scale_must_be_positive(tmp_path: Path, scale: float) -> None:
    with pytest.raises(ValueError, match="time_scale"):
        make(tmp_path, Escalation(), Clocks(), time_scale=scale)
