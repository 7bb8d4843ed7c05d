"""SharedState on its own: conflicts are about dependencies, not time; policies; journal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from counterpoint.plan.load import parse_plan
from counterpoint.runtime.state import SharedState, StateError
from counterpoint.store.sqlite import SqliteStore

PLAN = """
version: 1
name: s
agents: {a: {capabilities: [x], runner: {shell: "true"}}}
shared_state:
  policies:
    - {key: "cfg.*", policy: last-writer}
phases:
  - id: p
    milestones:
      - id: m
        tasks:
          - {id: early, requires: [x], writes: [net.cidr, cfg.level], priority: high}
          - {id: late, requires: [x], writes: [net.cidr, cfg.level]}
          - {id: after, requires: [x], writes: [net.cidr], needs: [early]}
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def parts(tmp_path: Path) -> tuple[SharedState, Clock, SqliteStore]:
    plan = parse_plan(PLAN, "plan.yaml")
    graph = plan.compile()
    store = SqliteStore(tmp_path / "state", sync="normal")
    run_id = store.create_run("plan.yaml", "s", "f", "{}", {}, graph.task_ids)
    clock = Clock()
    return SharedState(plan.shared_state, store, run_id, graph, wall=clock), clock, store


def idx(state: SharedState, task: str) -> int:
    return state.g.index[task]


def test_unordered_writers_minutes_apart_conflict(parts: Any) -> None:
    state, clock, _ = parts
    assert state.commit(idx(state, "early"), {"net.cidr": "A"}, "a", 1) == []
    clock.now += 15 * 60  # a quarter of an hour later
    (conflict,) = state.commit(idx(state, "late"), {"net.cidr": "B"}, "a", 1)
    assert conflict.status == "open" and conflict.policy == "escalate"
    assert conflict.tasks == ["early", "late"] and conflict.candidates == {
        "early": "A",
        "late": "B",
    }
    assert state.get("net.cidr") == "A"  # the first value stands while it is open
    assert state.held(["net.*"]) == "net.cidr" and state.held(["dns.*"]) is None


def test_a_dependent_overwrites_without_conflict(parts: Any) -> None:
    state, clock, _ = parts
    state.commit(idx(state, "early"), {"net.cidr": "A"}, "a", 1)
    clock.now += 3600
    assert state.commit(idx(state, "after"), {"net.cidr": "C"}, "a", 1) == []
    assert state.get("net.cidr") == "C"


def test_the_same_value_is_no_conflict_and_policies_by_pattern(parts: Any) -> None:
    state, _, _ = parts
    state.commit(idx(state, "early"), {"net.cidr": "A", "cfg.level": 1}, "a", 1)
    (cfg,) = state.commit(idx(state, "late"), {"net.cidr": "A", "cfg.level": 2}, "a", 1)
    assert cfg.key == "cfg.level" and cfg.policy == "last-writer" and cfg.status == "resolved"
    assert state.get("cfg.level") == 2 and state.get("net.cidr") == "A"


def test_a_person_decides_and_the_journal_keeps_everything(parts: Any, tmp_path: Path) -> None:
    state, clock, store = parts
    state.commit(idx(state, "early"), {"net.cidr": "A"}, "a", 1)
    (conflict,) = state.commit(idx(state, "late"), {"net.cidr": "B"}, "a", 1)
    with pytest.raises(StateError, match="not part of conflict 1"):
        state.resolve(conflict.id, task="after", by="ops")
    clock.now += 90
    state.resolve(conflict.id, task="late", by="ops")
    with pytest.raises(StateError, match="already resolved"):
        state.resolve(conflict.id, value=1, by="ops")
    assert state.get("net.cidr") == "B"
    assert conflict.to_json()["resolution_time_s"] == 90
    store.flush()
    again = SharedState(state.spec, store, state.run_id, state.g)
    again.restore()
    assert again.get("net.cidr") == "B"
    assert again.conflicts[1].resolution == {
        "by": "ops",
        "policy": "escalate",
        "winner": "late",
        "reason": "decided by a person",
        "value": "B",
    }
    statuses = [v.status for v in again.keys["net.cidr"].versions]
    assert statuses == ["superseded", "rejected", "current"]


def test_undeclared_and_non_json_writes_are_refused(parts: Any) -> None:
    state, _, _ = parts
    with pytest.raises(StateError, match=r"'dns\.zone', which its writes"):
        state.commit(idx(state, "early"), {"dns.zone": "x"}, "a", 1)
    with pytest.raises(StateError, match="is not JSON"):
        state.commit(idx(state, "early"), {"net.cidr": {1, 2}}, "a", 1)


def test_revert_restores_the_value_before_a_task_and_forgets_what_it_created(
    parts: Any,
) -> None:
    state, clock, _ = parts
    state.commit(idx(state, "early"), {"net.cidr": "A", "cfg.level": 1}, "a", 1)
    clock.now += 1
    state.commit(idx(state, "after"), {"net.cidr": "B"}, "a", 1)  # after needs early
    assert state.revert("after") == ["net.cidr"]
    assert state.get("net.cidr") == "A"  # back to early's value
    assert [v.status for v in state.keys["net.cidr"].versions] == [
        "superseded",
        "reverted",
        "current",
    ]
    assert state.revert("early") == ["cfg.level", "net.cidr"]  # the restored A was early's
    assert state.snapshot() == {}  # both keys were created by early: gone
    assert state.revert("early") == []  # nothing of early's is current any more


def test_revert_leaves_a_key_someone_wrote_later_alone(parts: Any) -> None:
    state, _, _ = parts
    state.commit(idx(state, "early"), {"net.cidr": "A"}, "a", 1)
    state.commit(idx(state, "after"), {"net.cidr": "B"}, "a", 1)
    assert state.revert("early") == []
    assert state.get("net.cidr") == "B"
