"""Versioned configuration: history, checksums, the keep-last-N limit and automatic rollback,
with a fake clock (no test sleeps)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from counterpoint.rollback import (
    ChecksumError,
    ConfigHistory,
    Policy,
    Refused,
    UnknownSubject,
    Validation,
)
from counterpoint.rollback.config import rollback_outcomes
from counterpoint.rollback.values import apply, parse_assignment
from counterpoint.store.sqlite import SqliteStore


class FakeClock:
    """Wall-clock seconds that only move when the code under test sleeps."""

    def __init__(self) -> None:
        self.t = 1_000_000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def notices() -> list[dict[str, Any]]:
    return []


@pytest.fixture
def history(tmp_path: Path, clock: FakeClock, notices: list[dict[str, Any]]) -> ConfigHistory:
    return ConfigHistory(
        SqliteStore(tmp_path / "state"), clock=clock, sleep=clock.sleep, notify=notices.append
    )


def below(limit: int) -> Validation:
    """A validator that accepts ``port`` values below ``limit``."""
    return Validation(check=lambda version: version["data"]["port"] < limit)


def tamper(history: ConfigHistory, scope: str, version: int, text: str) -> None:
    history.store.conn.execute(
        "UPDATE config_versions SET data = ? WHERE scope = ? AND version = ?",
        (text, scope, version),
    )


def test_every_version_is_kept_with_its_checksum_author_and_time(
    history: ConfigHistory, clock: FakeClock
) -> None:
    history.set("agent-1", {"model": "small", "port": 80}, author="alice")
    clock.t += 60
    history.set("agent-1", {"model": "large", "port": 80}, author="bob")

    versions = history.history("agent-1")
    assert [(v.version, v.author, v.created) for v in versions] == [
        (2, "bob", 1_000_060.0),
        (1, "alice", 1_000_000.0),
    ]
    canonical = '{"model":"large","port":80}'
    assert versions[0].checksum == hashlib.sha256(canonical.encode()).hexdigest()
    assert versions[0].current and not versions[1].current
    assert history.get("agent-1").data == {"model": "large", "port": 80}
    assert history.get("agent-1", 1).data == {"model": "small", "port": 80}


def test_setting_the_same_data_again_makes_no_new_version(history: ConfigHistory) -> None:
    history.set("agent-1", {"a": 1, "b": 2}, author="alice")
    result = history.set("agent-1", {"b": 2, "a": 1}, author="bob")
    assert not result.changed
    assert result.version.version == 1
    assert len(history.history("agent-1")) == 1


def test_a_tampered_version_is_detected_and_refused_with_a_clear_error(
    history: ConfigHistory,
) -> None:
    history.set("agent-1", {"port": 80}, author="alice")
    history.set("agent-1", {"port": 81}, author="alice")
    tamper(history, "agent-1", 1, '{"port":6666}')

    with pytest.raises(ChecksumError, match=r"version 1 of agent-1 fails its checksum"):
        history.get("agent-1", 1)
    with pytest.raises(ChecksumError, match="changed outside counterpoint"):
        history.rollback("agent-1", author="ops")
    assert history.get("agent-1").version == 2  # the refused rollback changed nothing
    assert [v.intact for v in history.history("agent-1")] == [True, False]

    tamper(history, "agent-1", 2, '{"port":82}')
    with pytest.raises(ChecksumError, match="version 2"):
        history.get("agent-1")


def test_only_the_last_ten_versions_are_kept_by_default(history: ConfigHistory) -> None:
    for n in range(1, 13):
        history.set("agent-1", {"n": n}, author="alice")
    assert [v.version for v in history.history("agent-1")] == list(range(12, 2, -1))
    with pytest.raises(UnknownSubject, match=r"agent-1 has no version 2 \(versions kept: 3, "):
        history.get("agent-1", 2)


def test_the_number_of_versions_kept_is_configurable(history: ConfigHistory) -> None:
    for n in range(1, 6):
        history.set("agent-1", {"n": n}, author="alice")
    history.configure("agent-1", Policy(keep=2))
    assert [v.version for v in history.history("agent-1")] == [5, 4]
    history.set("agent-1", {"n": 6}, author="alice")
    assert [v.version for v in history.history("agent-1")] == [6, 5]


def test_the_limit_never_drops_the_last_version_that_validated(history: ConfigHistory) -> None:
    history.configure("agent-1", Policy(keep=1))
    history.set("agent-1", {"port": 80}, author="alice")
    for port in (90, 91, 92):
        result = history.set("agent-1", {"port": port}, author="alice", validation=below(85))
        assert result.rolled_back_to == 1
    assert [(v.version, v.status) for v in history.history("agent-1")] == [
        (4, "failed"),
        (1, "valid"),
    ]


def test_a_failing_version_is_rolled_back_to_the_last_valid_one_not_to_a_failing_one(
    history: ConfigHistory, notices: list[dict[str, Any]]
) -> None:
    history.set("agent-1", {"port": 80}, author="alice")
    history.set("agent-1", {"port": 81}, author="alice", validation=below(100))
    first = history.set("agent-1", {"port": 500}, author="bob", validation=below(100))
    second = history.set("agent-1", {"port": 600}, author="bob", validation=below(100))

    assert (first.ok, first.rolled_back_to, second.rolled_back_to) == (False, 2, 2)
    assert history.get("agent-1").version == 2
    assert history.get("agent-1").data == {"port": 81}
    statuses = {v.version: v.status for v in history.history("agent-1")}
    assert statuses == {4: "failed", 3: "failed", 2: "valid", 1: "valid"}
    assert [n["rolled_back_to"] for n in notices] == [2, 2]
    assert notices[1]["text"] == (
        "[counterpoint] configuration agent-1 version 4 failed validation "
        "(<lambda>: returned False); rolled back to version 2"
    )


def test_a_validator_without_an_answer_is_rolled_back_when_the_five_minutes_are_up(
    history: ConfigHistory, clock: FakeClock, notices: list[dict[str, Any]]
) -> None:
    asked: list[float] = []

    def silent(version: dict[str, Any]) -> None:
        asked.append(clock())

    history.set("agent-1", {"port": 80}, author="alice")
    start = clock()
    result = history.set("agent-1", {"port": 81}, author="bob", validation=Validation(check=silent))

    assert result.rolled_back_to == 1
    assert clock() == start + 300  # the seed's rollback timeout, in fake time
    assert len(asked) == 60 and asked[1] - asked[0] == 5  # asked every 5 s until then
    assert result.version.detail == "no answer from silent within 5m"
    assert notices[0]["version"] == 2 and notices[0]["reason"] == result.version.detail


def test_a_validator_that_answers_late_but_in_time_keeps_the_version(
    history: ConfigHistory, clock: FakeClock
) -> None:
    answers = iter([None, None, True])
    check = Validation(check=lambda version: next(answers), timeout_s=60, interval_s=10)
    history.set("agent-1", {"port": 80}, author="alice")
    result = history.set("agent-1", {"port": 81}, author="bob", validation=check)
    assert result.ok and result.version.status == "valid"
    assert clock.sleeps == [10, 10]
    assert history.get("agent-1").version == 2


def test_a_validator_that_raises_fails_the_version(history: ConfigHistory) -> None:
    def broken(version: dict[str, Any]) -> bool:
        raise ValueError("cannot reach the model endpoint")

    history.set("agent-1", {"port": 80}, author="alice")
    result = history.set("agent-1", {"port": 1}, author="bob", validation=Validation(check=broken))
    assert result.rolled_back_to == 1
    assert result.version.detail == "broken: ValueError: cannot reach the model endpoint"


def test_when_nothing_ever_validated_the_scope_is_left_without_configuration(
    history: ConfigHistory, notices: list[dict[str, Any]]
) -> None:
    result = history.set("agent-1", {"port": 500}, author="bob", validation=below(100))
    assert result.rolled_back_to is None
    with pytest.raises(Refused, match="version 1 failed validation and no earlier version"):
        history.get("agent-1")
    assert "no earlier version validated" in notices[0]["text"]


def test_an_automatic_rollback_skips_a_tampered_version(history: ConfigHistory) -> None:
    history.set("agent-1", {"port": 80}, author="alice")
    history.set("agent-1", {"port": 81}, author="alice")
    tamper(history, "agent-1", 2, '{"port":99}')
    result = history.set("agent-1", {"port": 500}, author="bob", validation=below(100))
    assert result.rolled_back_to == 1
    assert history.events("agent-1")[-1]["skipped"] == [2]


def test_a_manual_rollback_steps_back_through_valid_versions(history: ConfigHistory) -> None:
    for port in (80, 81, 82):
        history.set("agent-1", {"port": port}, author="alice")
    history.set("agent-1", {"port": 500}, author="bob", validation=below(100))

    assert history.rollback("agent-1", author="ops").version == 2  # 3 -> 2 (4 failed)
    assert history.rollback("agent-1", author="ops").version == 1  # not back up to 3
    with pytest.raises(Refused, match="no earlier valid version"):
        history.rollback("agent-1", author="ops")
    assert history.rollback("agent-1", to=3, author="ops").data == {"port": 82}
    with pytest.raises(Refused, match="version 4 of agent-1 failed validation"):
        history.rollback("agent-1", to=4, author="ops")
    with pytest.raises(Refused, match="already the current version"):
        history.rollback("agent-1", to=3, author="ops")


def test_unknown_scopes_and_bad_names_are_refused(history: ConfigHistory) -> None:
    history.set("agent-1", {"a": 1}, author="alice")
    with pytest.raises(UnknownSubject, match="did you mean 'agent-1'"):
        history.get("agent-2")
    with pytest.raises(Refused, match="bad scope name"):
        history.set("has space", {"a": 1}, author="alice")


def test_rollbacks_are_counted_for_the_success_rate(history: ConfigHistory) -> None:
    history.set("agent-1", {"port": 80}, author="alice")
    history.set("agent-1", {"port": 500}, author="bob", validation=below(100))
    history.set("agent-2", {"port": 500}, author="bob", validation=below(100))
    history.set("agent-1", {"port": 81}, author="alice")
    history.rollback("agent-1", author="ops")

    outcomes = rollback_outcomes(history.store)
    assert [(o["kind"], o["subject"], o["ok"]) for o in outcomes] == [
        ("config", "agent-1", True),
        ("config", "agent-2", False),
        ("config", "agent-1", True),
    ]
    assert all(o["started"] <= o["finished"] for o in outcomes)
    assert "(automatic)" in outcomes[0]["detail"] and "by ops" in outcomes[2]["detail"]


def test_a_journal_without_configuration_has_no_outcomes(tmp_path: Path) -> None:
    assert rollback_outcomes(SqliteStore(tmp_path)) == []


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("port=8080", ("port",), 8080),
        ("debug=true", ("debug",), True),
        ("model=gpt-4", ("model",), "gpt-4"),
        ('name="quoted"', ("name",), "quoted"),
        ("tags=[1, 2]", ("tags",), [1, 2]),
        ("ratio=NaN", ("ratio",), "NaN"),
        ("url=http://h/?a=b", ("url",), "http://h/?a=b"),
        ("db.pool.size=10", ("db", "pool", "size"), 10),
        ("empty=", ("empty",), ""),
    ],
)
def test_values_are_json_when_they_parse_and_text_otherwise(
    text: str, key: tuple[str, ...], value: Any
) -> None:
    assert parse_assignment(text) == (key, value)


def test_dotted_keys_build_and_change_nested_objects() -> None:
    data = {"db": {"pool": {"size": 5}, "host": "a"}, "old": 1}
    changed = apply(
        data, [parse_assignment("db.pool.size=10"), parse_assignment("x.y=1")], [("old",)]
    )
    assert changed == {"db": {"pool": {"size": 10}, "host": "a"}, "x": {"y": 1}}
    assert data["db"]["pool"]["size"] == 5  # the original is untouched
    with pytest.raises(Refused, match=r"db\.host holds \"a\", not an object"):
        apply(data, [parse_assignment("db.host.name=b")])
    with pytest.raises(Refused, match="cannot unset nope"):
        apply(data, [], [("nope",)])
    for bad in ("noequals", "=1", "a..b=1", ".a=1"):
        with pytest.raises(Refused):
            parse_assignment(bad)
    assert json.loads(json.dumps(changed)) == changed
