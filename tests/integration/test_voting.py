"""Decisions by vote in real runs: ``ctx.propose_decision`` with a quorum, ties and missing
quorums that escalate to a person, and the ``vote`` policy of the shared state.

Voters answer through ``agents/deciders.py:vote``, which reads each voter's choice from
``votes.json`` next to the plan; the tasks that ask are ``deciders:decide`` (async) and
``deciders:decide_sync`` (a plain function in its thread).
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

from run_helpers import (
    AGENTS_DIR,
    PY,
    Background,
    Workspace,
    cli,
    one_phase,
    run_in_process,
    wait_for,
)

from counterpoint.store.sqlite import SqliteStore

STATE_AGENT = str(AGENTS_DIR / "state_agent.py")


def setup(ws: Workspace, votes: dict[str, dict[str, Any]]) -> str:
    module = f"deciders_{uuid.uuid4().hex[:10]}"
    shutil.copy(AGENTS_DIR / "deciders.py", ws.dir / f"{module}.py")
    (ws.dir / "votes.json").write_text(json.dumps(votes), encoding="utf-8")
    return module


def voters(module: str, *names: str, silent: tuple[str, ...] = ()) -> dict[str, Any]:
    """Agents that only vote (no runner, no task needs them); ``silent`` ones have no
    vote responder (they abstain)."""
    out: dict[str, Any] = {}
    for name in names:
        spec: dict[str, Any] = {"capabilities": ["vote"]}
        if name not in silent:
            spec["vote"] = {"python": f"{module}:vote"}
        out[name] = spec
    return out


def asker(module: str, function: str = "decide") -> dict[str, Any]:
    return {"capabilities": ["ask"], "runner": {"python": f"{module}:{function}"}}


def ask(tid: str, question: str, options: list[Any], **inputs: Any) -> dict[str, Any]:
    return {
        "id": tid,
        "requires": ["ask"],
        "inputs": {"question": question, "options": options, **inputs},
    }


def decisions(ws: Workspace) -> list[dict[str, Any]]:
    result = cli("decisions", "--json", "--state", ws.state)
    assert result.code == 0, str(result)
    return json.loads(result.stdout)["decisions"]  # type: ignore[no-any-return]


def results(ws: Workspace) -> dict[str, Any]:
    store = SqliteStore(ws.state, create=False)
    try:
        return {t: r.result for t, r in store.tasks(1).items()}
    finally:
        store.close()


def ballots(ws: Workspace) -> list[dict[str, Any]]:
    from counterpoint.runtime.canvass import read_questions

    store = SqliteStore(ws.state, create=False)
    try:
        return read_questions(store, 1, "ballot")
    finally:
        store.close()


def test_a_decision_is_made_when_the_quorum_votes(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    module = setup(
        ws,
        {
            "colour?": {"v1": "blue", "v2": "red", "v3": "blue"},
            "size?": {"v1": 2, "v2": 2},
        },
    )
    ws.write_plan(
        one_phase(
            [
                ask("colour", "colour?", ["red", "blue"]),
                {**ask("size", "size?", [1, 2], voters=["v1", "v2"]), "requires": ["ask-sync"]},
            ],
            agents={
                "boss": asker(module),
                "clerk": {**asker(module, "decide_sync"), "capabilities": ["ask-sync"]},
                **voters(module, "v1", "v2", "v3"),
            },
            settings={"voting": {"voters": ["v1", "v2", "v3"], "quorum": "majority"}},
        )
    )
    code, seen = run_in_process(ws)
    assert code == 0
    got = results(ws)
    assert got["colour"] == {
        "decision": got["colour"]["decision"],
        "result": "blue",
        "status": "decided",
        "by": "vote",
        "votes": {"v1": "blue", "v2": "red", "v3": "blue"},
    }
    assert (got["size"]["result"], got["size"]["status"]) == (2, "decided")  # from a thread

    found = {d["question"]: d for d in decisions(ws)}
    colour = found["colour?"]
    assert (colour["status"], colour["quorum"], colour["source"]) == ("decided", 2, "task:colour")
    assert colour["reason"] == "2 of 3 votes (quorum 2, 3 voters)"
    assert found["size?"]["voters"] == ["v1", "v2"]
    made = [e for e in seen.kinds("decision_made") if e.task == "colour"]
    assert made and made[0].data["result"] == "blue"
    # Each voter was asked once per ballot, and its vote journaled.
    (ballot,) = [b for b in ballots(ws) if b["subject"] == f"decision:{colour['id']}"]
    assert ballot["status"] == "decided"
    assert [(a["agent"], a["status"], a["answer"]["vote"]) for a in ballot["answers"]] == [
        ("v1", "vote", "blue"),
        ("v2", "vote", "red"),
        ("v3", "vote", "blue"),
    ]
    report = cli("report", "--state", ws.state)
    assert "## Decisions" in report.stdout
    assert '| colour? | "red", "blue" | 2 of 3 | v1: "blue"; v2: "red"; v3: "blue" | "blue" |' in (
        report.stdout
    )


def test_a_tie_escalates_and_a_person_decides(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    module = setup(ws, {"colour?": {"v1": "red", "v2": "blue"}})
    ws.write_plan(
        one_phase(
            [ask("colour", "colour?", ["red", "blue"], voters=["v1", "v2"])],
            agents={"boss": asker(module), **voters(module, "v1", "v2")},
        )
    )
    run = Background(ws.dir, "run", ws.plan, "--state", ws.state, "--json")
    try:
        escalated = wait_for(
            lambda: (
                [d for d in decisions(ws) if d["status"] == "escalated"]
                if (ws.state / "state.db").exists()
                else None
            ),
            what="the tie to escalate",
        )
        (d,) = escalated
        assert d["reason"] == 'tie: "red", "blue" have 1 votes each'
        refused = cli("decide", str(d["id"]), "--option", "green", "--state", ws.state)
        assert refused.code == 2 and "is not one of the options" in refused.stderr
        decided = cli(
            "decide", str(d["id"]), "--option", "blue", "--as", "alice", "--state", ws.state
        )
        assert decided.code == 0, str(decided)
        done = run.wait(timeout=30)
    finally:
        run.stop()
    assert done.code == 0, str(done)
    assert results(ws)["colour"]["result"] == "blue"
    assert results(ws)["colour"]["status"] == "resolved"
    assert results(ws)["colour"]["by"] == "alice"
    (d,) = decisions(ws)
    assert (d["status"], d["result"], d["resolution"]["by"]) == ("resolved", "blue", "alice")
    events = [json.loads(line) for line in done.stdout.splitlines()]
    cases = [e for e in events if e["event"].startswith("escalation_")]
    assert ("escalation_opened", "decision:1") in [(e["event"], e.get("subject")) for e in cases]
    assert ("escalation_resolved", "decision:1") in [(e["event"], e.get("subject")) for e in cases]
    again = cli("decide", "1", "--option", "red", "--state", ws.state)
    assert again.code == 2 and "decision 1 is already resolved" in again.stderr


def test_a_missing_quorum_at_the_deadline_escalates_then_fails(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    module = setup(ws, {"colour?": {"v1": "red", "v2": "sleep"}})
    ws.write_plan(
        one_phase(
            [ask("colour", "colour?", ["red", "blue"], quorum=2, deadline="1s")],
            agents={"boss": asker(module), **voters(module, "v1", "v2", "v3", silent=("v3",))},
            settings={"voting": {"voters": ["v1", "v2", "v3"]}},
            escalation={"levels": [{"name": "lead", "contacts": ["ann"], "timeout": "1s"}]},
        )
    )
    code, seen = run_in_process(ws)
    assert code == 1
    (failed,) = seen.kinds("task_failed")
    assert failed.data["error"] == (
        "decision 1 (colour?) was not made: no quorum: 1 vote of 3 voters, quorum 2; "
        "no more escalation levels available"
    )
    (escalated,) = seen.kinds("decision_escalated")
    assert escalated.data["votes"] == {"v1": "red", "v2": None, "v3": None}
    (ballot,) = ballots(ws)
    assert ballot["status"] == "no_quorum"
    assert [(a["agent"], a["status"]) for a in ballot["answers"]] == [
        ("v1", "vote"),
        ("v2", "none"),  # still thinking at the deadline
        ("v3", "abstain"),  # no vote responder
    ]
    (d,) = decisions(ws)
    assert d["status"] == "failed"


def test_propose_decision_without_voters_fails_with_a_clear_error(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    module = setup(ws, {})
    ws.write_plan(
        one_phase(
            [
                ask("nobody", "colour?", ["red", "blue"]),
                ask("stranger", "colour?", ["red", "blue"], voters=["v1", "v1x"]),
                ask("alone", "colour?", ["red"], voters=["v1"]),
            ],
            agents={"boss": {**asker(module), "capacity": 3}, **voters(module, "v1")},
        )
    )
    code, seen = run_in_process(ws)
    assert code == 1
    errors = {e.task: e.data["error"] for e in seen.kinds("task_failed")}
    assert errors == {
        "nobody": "VotingError: no voters: pass voters=[...] or name them in "
        "settings.voting.voters",
        "stranger": "VotingError: unknown voter 'v1x' (did you mean 'v1'?); the plan's agents: "
        "boss, v1",
        "alone": "VotingError: a vote needs at least two options, got 1",
    }


# -- the vote policy of the shared state -----------------------------------------------------


def writer(tid: str, value: Any, sleep: float = 0.05, **fields: Any) -> dict[str, Any]:
    return {
        "id": tid,
        "requires": ["state"],
        "inputs": {"writes": {"net.cidr": value} if value is not None else {}, "sleep": sleep},
        "writes": ["net.cidr"] if value is not None else [],
        **fields,
    }


def state_plan(ws: Workspace, module: str, policy: dict[str, Any], **top: Any) -> None:
    agents = {
        "st": {"capabilities": ["state"], "capacity": 4, "runner": {"shell": [PY, STATE_AGENT]}},
        **voters(module, "v1", "v2", "v3"),
    }
    ws.write_plan(
        one_phase(
            [
                writer("a", "10.1.0.0/16"),
                writer("b", "10.2.0.0/16", sleep=0.3),
                writer("reader", None, needs=["b"], reads=["net.cidr"]),
            ],
            agents=agents,
            shared_state={"policies": [{"key": "net.*", "policy": "vote", **policy}]},
            **top,
        )
    )


def seen_by(ws: Workspace, task: str) -> dict[str, Any]:
    lines = (ws.dir / "records.jsonl").read_text().splitlines()
    return next(
        r["state"] for r in map(json.loads, lines) if r["task"] == task and r["event"] == "start"
    )


def conflicts(ws: Workspace) -> list[dict[str, Any]]:
    result = cli("conflicts", "--json", "--state", ws.state)
    assert result.code == 0, str(result)
    return json.loads(result.stdout)["conflicts"]  # type: ignore[no-any-return]


QUESTION = "the value of 'net.cidr'"


def test_the_vote_policy_lets_its_voters_settle_a_conflict(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    module = setup(ws, {QUESTION: {"v1": "10.2.0.0/16", "v2": "10.2.0.0/16", "v3": "10.1.0.0/16"}})
    state_plan(ws, module, {"voters": ["v1", "v2", "v3"], "quorum": 2})
    code, seen = run_in_process(ws)
    assert code == 0
    (c,) = conflicts(ws)
    assert (c["policy"], c["status"]) == ("vote", "resolved")
    assert c["resolution"]["by"] == "vote" and c["resolution"]["winner"] == "b"
    assert c["resolution"]["reason"] == "2 of 3 votes (quorum 2, 3 voters)"
    assert c["resolution"]["votes"] == {
        "v1": "10.2.0.0/16",
        "v2": "10.2.0.0/16",
        "v3": "10.1.0.0/16",
    }
    assert seen_by(ws, "reader") == {"net.cidr": "10.2.0.0/16"}  # the reader waited for it
    assert [e.task for e in seen.kinds("task_waiting")] == ["reader"]
    (d,) = decisions(ws)
    assert (d["source"], d["status"], d["result"]) == ("conflict:1", "decided", "10.2.0.0/16")
    assert d["options"] == ["10.1.0.0/16", "10.2.0.0/16"]
    assert not seen.kinds("escalation_opened")  # the voters decided: no person was asked


def test_a_tied_vote_on_a_conflict_waits_for_a_person_to_resolve_it(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    module = setup(ws, {QUESTION: {"v1": "10.1.0.0/16", "v2": "10.2.0.0/16"}})
    state_plan(ws, module, {}, settings={"voting": {"voters": ["v1", "v2", "v3"]}})
    run = Background(ws.dir, "run", ws.plan, "--state", ws.state, "--json")
    try:
        wait_for(
            lambda: (
                (ws.state / "state.db").exists()
                and any(d["status"] == "escalated" for d in decisions(ws))
            ),
            what="the tied vote to escalate",
        )
        (c,) = conflicts(ws)
        assert c["status"] == "open"
        assert not (ws.dir / "records.jsonl").exists() or not any(
            json.loads(line)["task"] == "reader"
            for line in (ws.dir / "records.jsonl").read_text().splitlines()
        )
        resolved = cli("resolve", "1", "--task", "a", "--as", "bob", "--state", ws.state)
        assert resolved.code == 0, str(resolved)
        done = run.wait(timeout=30)
    finally:
        run.stop()
    assert done.code == 0, str(done)
    assert seen_by(ws, "reader") == {"net.cidr": "10.1.0.0/16"}
    (d,) = decisions(ws)
    assert d["reason"] == "decided by bob"
    assert (d["status"], d["result"], d["resolution"]["by"]) == ("resolved", "10.1.0.0/16", "bob")
    events = [json.loads(line) for line in done.stdout.splitlines()]
    subjects = [(e["event"], e.get("subject")) for e in events if e["event"].startswith("escal")]
    assert subjects[:1] == [("escalation_opened", "conflict:1")]
    assert ("escalation_resolved", "conflict:1") in subjects
