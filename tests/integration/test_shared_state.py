"""The shared state in real runs: writes committed by the engine, data conflicts decided
by each policy, readers held by an open conflict, decisions from another terminal."""

from __future__ import annotations

import itertools
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from run_helpers import (
    AGENTS_DIR,
    PY,
    Background,
    Workspace,
    cli,
    one_phase,
    run_in_process,
    served,
    wait_for,
)

STATE_AGENT = str(AGENTS_DIR / "state_agent.py")


def writer(
    tid: str, writes: dict[str, Any], *, sleep: float = 0.05, **fields: Any
) -> dict[str, Any]:
    return {
        "id": tid,
        "requires": ["state"],
        "inputs": {"writes": writes, "sleep": sleep},
        "writes": sorted(writes) if writes else fields.pop("declared", []),
        **fields,
    }


def state_plan(ws: Workspace, tasks: list[dict[str, Any]], **top: Any) -> Path:
    agents = {
        "st": {"capabilities": ["state"], "capacity": 4, "runner": {"shell": [PY, STATE_AGENT]}}
    }
    return ws.write_plan(one_phase(tasks, agents=agents, **top))


def records(ws: Workspace) -> list[dict[str, Any]]:
    path = ws.dir / "records.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def seen_by(ws: Workspace, task: str) -> dict[str, Any]:
    return next(r["state"] for r in records(ws) if r["task"] == task and r["event"] == "start")


def conflicts(ws: Workspace) -> list[dict[str, Any]]:
    result = cli("conflicts", "--json", "--state", ws.state)
    assert result.code == 0, str(result)
    return json.loads(result.stdout)["conflicts"]  # type: ignore[no-any-return]


def state_json(ws: Workspace, *key: str) -> dict[str, Any]:
    result = cli("state", *key, "--json", "--state", ws.state)
    assert result.code == 0, str(result)
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def assert_one_conflict(ws: Workspace, policy: str, winner: str | None, status: str) -> None:
    found = conflicts(ws)
    assert len(found) == 1, found
    c = found[0]
    assert (c["key"], c["policy"], c["status"]) == ("net.cidr", policy, status), c
    assert sorted(c["tasks"]) == ["a", "b"]
    if winner is not None:
        assert c["resolution"]["winner"] == winner, c
        assert c["resolution_time_s"] is not None and c["resolution_time_s"] >= 0


def test_ordered_writers_are_not_a_conflict_and_readers_see_the_latest(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    state_plan(
        ws,
        [
            writer("a", {"net.cidr": "10.0.0.0/16"}),
            writer("b", {"net.cidr": "10.1.0.0/16"}, needs=["a"], reads=["net.cidr"]),
            writer("c", {}, needs=["b"], reads=["net.*"]),
        ],
    )
    code, _ = run_in_process(ws)
    assert code == 0
    assert seen_by(ws, "b") == {"net.cidr": "10.0.0.0/16"}
    assert seen_by(ws, "c") == {"net.cidr": "10.1.0.0/16"}
    assert conflicts(ws) == []
    versions = state_json(ws, "net.cidr")["versions"]
    assert [(v["version"], v["task"], v["status"]) for v in versions] == [
        (1, "a", "superseded"),
        (2, "b", "current"),
    ]


@pytest.mark.parametrize(
    ("policy", "winner", "value"),
    [
        ("last-writer", "b", "10.2.0.0/16"),
        ("first-writer", "a", "10.1.0.0/16"),
        ("priority", "b", "10.2.0.0/16"),
    ],
)
def test_parallel_writers_conflict_and_the_policy_decides(
    tmp_path: Path, policy: str, winner: str, value: str
) -> None:
    ws = Workspace.create(tmp_path)
    state_plan(
        ws,
        [
            writer("a", {"net.cidr": "10.1.0.0/16"}, sleep=0.05, priority="low"),
            writer("b", {"net.cidr": "10.2.0.0/16"}, sleep=0.6, priority="high"),
            writer("c", {}, needs=["a", "b"], reads=["net.cidr"]),
        ],
        shared_state={"policies": [{"key": "net.*", "policy": policy}]},
    )
    code, events = run_in_process(ws)
    assert code == 0
    assert_one_conflict(ws, policy, winner, "resolved")
    assert seen_by(ws, "c") == {"net.cidr": value}
    assert state_json(ws)["state"] == {"net.cidr": value}
    assert [e.data["key"] for e in events.kinds("conflict_detected")] == ["net.cidr"]


def test_merge_unions_lists_and_merges_objects(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    state_plan(
        ws,
        [
            writer("a", {"net.cidr": {"zones": ["a", "b"], "vpc": "x"}}),
            writer("b", {"net.cidr": {"zones": ["b", "c"], "subnets": 3}}, sleep=0.4),
        ],
        shared_state={"policies": [{"key": "net.cidr", "policy": "merge"}]},
    )
    code, _ = run_in_process(ws)
    assert code == 0
    assert state_json(ws)["state"] == {
        "net.cidr": {"zones": ["a", "b", "c"], "vpc": "x", "subnets": 3}
    }
    assert conflicts(ws)[0]["status"] == "resolved"


def test_an_undeclared_write_fails_the_task_naming_the_key(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    state_plan(ws, [{**writer("a", {"net.cidr": "x"}), "writes": ["dns.*"]}])
    code, events = run_in_process(ws)
    assert code == 1
    failed = events.kinds("task_failed")
    assert len(failed) == 1 and "'net.cidr'" in failed[0].data["error"], failed
    assert "dns.*" in failed[0].data["error"]
    assert state_json(ws)["state"] == {}


def test_an_escalated_conflict_holds_its_readers_until_a_person_decides(tmp_path: Path) -> None:
    """Writers finishing far apart still conflict; the reader waits for `resolve`."""
    ws = Workspace.create(tmp_path)
    state_plan(
        ws,
        [
            writer("a", {"net.cidr": "10.1.0.0/16"}, sleep=0.05),
            writer("b", {"net.cidr": "10.2.0.0/16"}, sleep=1.0),
            writer("c", {}, needs=["b"], reads=["net.cidr"]),
            writer("d", {}, needs=["a"], sleep=0.05),
        ],
    )
    run = Background(ws.dir, "run", ws.plan, "--state", ws.state, "--quiet")
    try:
        wait_for(
            lambda: cli("conflicts", "--json", "--state", ws.state).code == 0 and conflicts(ws),
            what="the conflict to be recorded",
        )
        assert_one_conflict(ws, "escalate", None, "open")
        wait_for(lambda: any(r["task"] == "d" and r["event"] == "end" for r in records(ws)))
        assert not any(r["task"] == "c" for r in records(ws)), "the reader ran during the conflict"
        bad = cli("resolve", "1", "--task", "zz", "--state", ws.state)
        assert bad.code == 2 and "not part of conflict 1" in bad.stderr, str(bad)
        ok = cli("resolve", "1", "--task", "a", "--as", "alice", "--state", ws.state)
        assert ok.code == 0, str(ok)
        result = run.wait(timeout=30)
    finally:
        run.stop()
    assert result.code == 0, str(result)
    assert seen_by(ws, "c") == {"net.cidr": "10.1.0.0/16"}
    c = conflicts(ws)[0]
    assert c["status"] == "resolved" and c["resolution"]["by"] == "alice", c
    assert c["resolution"]["winner"] == "a"


def test_serialized_writes_never_overlap_and_do_not_conflict(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    state_plan(
        ws,
        [
            writer("a", {"net.cidr": "1"}, sleep=0.3),
            writer("b", {"net.cidr": "2"}, sleep=0.3),
            writer("c", {"net.cidr": "3"}, sleep=0.3),
        ],
        settings={"serialize_conflicting_writes": True},
    )
    code, _ = run_in_process(ws)
    assert code == 0
    spans = {}
    for r in records(ws):
        spans.setdefault(r["task"], {})[r["event"]] = r["t"]
    ordered = sorted(spans.values(), key=lambda s: s["start"])
    for first, second in itertools.pairwise(ordered):
        assert second["start"] >= first["end"], spans
    assert conflicts(ws) == []
    assert len(state_json(ws, "net.cidr")["versions"]) == 3


def test_state_and_conflicts_commands_refuse_unknown_things(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    state_plan(ws, [writer("a", {"net.cidr": "x"})])
    assert run_in_process(ws)[0] == 0
    missing = cli("state", "nope", "--state", ws.state)
    assert missing.code == 2 and "no key 'nope'" in missing.stderr, str(missing)
    none = cli("resolve", "7", "--value", "1", "--state", ws.state)
    assert none.code == 2 and "no conflict 7" in none.stderr, str(none)
    both = cli("resolve", "1", "--value", "1", "--task", "a", "--state", ws.state)
    assert both.code == 2 and "exactly one of" in both.stderr, str(both)
    table = cli("state", "--state", ws.state)
    assert table.code == 0 and "net.cidr" in table.stdout, str(table)


def test_a_conflict_nobody_decides_climbs_the_ladder_then_fails_its_readers(
    tmp_path: Path,
) -> None:
    ws = Workspace.create(tmp_path)
    state_plan(
        ws,
        [
            writer("a", {"net.cidr": "10.1.0.0/16"}),
            writer("b", {"net.cidr": "10.2.0.0/16"}, sleep=0.3),
            writer("c", {}, needs=["a", "b"], reads=["net.cidr"]),
            writer("d", {}, needs=["c"]),
        ],
        escalation={
            "timeout": 0.2,
            "levels": [
                {"name": "leads", "contacts": ["lead"]},
                {"name": "execs", "contacts": ["cto"], "timeout": 0.3},
            ],
            "exhausted": "fail",
        },
    )
    code, events = run_in_process(ws)
    assert code == 1
    opened = [e.data["subject"] for e in events.kinds("escalation_opened")]
    assert opened == ["conflict:1", "dependency:c"], opened  # then c's failure blocks d
    assert [e.data["level_name"] for e in events.kinds("escalated")] == ["execs"]
    exhausted = [e.data["subject"] for e in events.kinds("escalation_exhausted")]
    assert exhausted == ["conflict:1"], exhausted
    failed = {e.task: e.data["error"] for e in events.kinds("task_failed")}
    assert set(failed) == {"c"} and "'net.cidr' was not resolved" in failed["c"], failed
    assert [e.task for e in events.kinds("task_blocked")] == ["d"]
    assert not any(r["task"] == "c" for r in records(ws))
    assert conflicts(ws)[0]["status"] == "failed"


def test_vote_waits_on_a_tie_and_the_majority_decides(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    state_plan(
        ws,
        [
            writer("a", {"net.cidr": "X"}, sleep=0.05),
            writer("b", {"net.cidr": "Y"}, sleep=0.4),
            writer("c", {"net.cidr": "X"}, sleep=0.8),
            writer("reader", {}, needs=["b"], reads=["net.cidr"]),
        ],
        shared_state={"policies": [{"key": "net.*", "policy": "vote"}]},
    )
    code, events = run_in_process(ws)
    assert code == 0
    waiting = [e for e in events.kinds("task_waiting") if e.task == "reader"]
    assert waiting, "the reader should wait while the vote is tied"
    (c,) = conflicts(ws)
    assert c["status"] == "resolved" and c["tasks"] == ["a", "b", "c"], c
    assert c["resolution"]["reason"] == "2 of 3 writers wrote this value"
    assert seen_by(ws, "reader") == {"net.cidr": "X"}


def api(url: str, path: str, token: str | None, body: Any = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        url + path,
        data=None
        if body is None
        else (body if isinstance(body, bytes) else json.dumps(body).encode()),
        method="GET" if body is None else "POST",
        headers={"Authorization": f"Bearer {token}"} if token else {},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_an_operator_decides_a_conflict_over_the_api_of_a_served_run(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    state_plan(
        ws,
        [
            writer("a", {"net.cidr": "10.1.0.0/16"}),
            writer("b", {"net.cidr": "10.2.0.0/16"}, sleep=0.4),
            writer("c", {}, needs=["a", "b"], reads=["net.cidr"]),
        ],
    )
    run, base, token = served(ws, "alice")
    try:
        wait_for(lambda: api(base, "/api/conflicts", token)[1]["conflicts"], what="a conflict")
        assert api(base, "/api/conflicts", None)[0] == 401
        assert api(base, "/api/conflicts/1/resolve", None, {"task": "a"})[0] == 401
        code, answer = api(base, "/api/conflicts/1/resolve", token, b"{not json")
        assert code == 400 and "not valid JSON" in answer["error"], answer
        code, answer = api(base, "/api/conflicts/1/resolve", token, {"task": "a", "value": 1})
        assert code == 400, answer
        code, answer = api(base, "/api/conflicts/9/resolve", token, {"task": "a"})
        assert code == 404 and "no conflict 9" in answer["error"], answer
        code, answer = api(base, "/api/conflicts/1/resolve", token, {"task": "zz"})
        assert code == 409 and "not part of conflict 1" in answer["error"], answer
        code, answer = api(base, "/api/conflicts/1/resolve", token, {"value": "10.9.0.0/16"})
        assert code == 200 and answer["status"] == "resolved", answer
        assert answer["resolution"]["by"] == "alice"
        code, answer = api(base, "/api/conflicts/1/resolve", token, {"task": "a"})
        assert code == 409 and "already resolved" in answer["error"], answer
        result = run.wait(timeout=30)
    finally:
        run.stop()
    assert result.code == 0, str(result)
    assert seen_by(ws, "c") == {"net.cidr": "10.9.0.0/16"}
