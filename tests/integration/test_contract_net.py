"""Contract-net allocation in real runs: calls for proposals, bids, awards, refusals,
calls made again and escalated, and what the journal, the report and ``bids`` show.

Tasks run the recording agent (``agents/recording.py``), so where a task really ran is
read from what the agent recorded; bidders come from ``agents/deciders.py`` (Python),
small scripts (shell) and ``counterpoint agent --bid`` (remote).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

from run_helpers import (
    AGENTS_DIR,
    PY,
    Collect,
    Workspace,
    cli,
    max_overlap,
    one_phase,
    run_in_process,
    spans,
    task,
)
from test_hub_run import Bench, bench, no_traceback, remote  # noqa: F401 - bench is a fixture

from counterpoint.runtime.events import RunEvent
from counterpoint.runtime.session import set_agent_state
from counterpoint.store.sqlite import SqliteStore

CONTRACT_NET = {"coordination": "contract_net", "contract_net": {"deadline": "2s"}}


def deciders(ws: Workspace) -> str:
    """A private copy of agents/deciders.py next to the plan; its module name."""
    module = f"deciders_{uuid.uuid4().hex[:10]}"
    shutil.copy(AGENTS_DIR / "deciders.py", ws.dir / f"{module}.py")
    return module


def agent(ws: Workspace, caps: list[str], capacity: int = 1, bid: str | None = None) -> Any:
    spec: dict[str, Any] = {
        "capabilities": caps,
        "capacity": capacity,
        "runner": {"python": ws.agent},
    }
    if bid is not None:
        spec["bid"] = {"python": bid}
    return spec


def where_ran(ws: Workspace) -> dict[str, str | None]:
    return {tid: e.agent for tid, e in ws.finished().items()}


def calls(ws: Workspace, *, task_id: str | None = None) -> list[dict[str, Any]]:
    args = ["bids", "--json", "--state", ws.state] + (["--task", task_id] if task_id else [])
    result = cli(*args)
    assert result.code == 0, str(result)
    return json.loads(result.stdout)["calls"]  # type: ignore[no-any-return]


def messages(ws: Workspace, event_type: str) -> list[dict[str, Any]]:
    store = SqliteStore(ws.state, create=False)
    try:
        found = store.events_of_kind(1, "message")
    finally:
        store.close()
    return [m for m in found if m.get("content", {}).get("event_type") == event_type]


def tables(state: Path) -> set[str]:
    with sqlite3.connect(state / "state.db") as db:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


# -- the best proposal wins -------------------------------------------------------------------


def bidding_plan(ws: Workspace, module: str) -> None:
    bid = f"{module}:by_input"
    ws.write_plan(
        one_phase(
            [
                # c has the best score: 50 (b: 40 x 1.5 = 60, a: 100)
                task(
                    "t1",
                    requires=["x"],
                    inputs={
                        "bids": {
                            "a": {"duration_s": 100},
                            "b": {"duration_s": 40, "load": 0.5},
                            "c": {"duration_s": 50},
                        }
                    },
                ),
                # cost counts with cost_weight 1: a 10 + 100, b 50 + 10; c refuses
                task(
                    "t2",
                    requires=["x"],
                    needs=["t1"],
                    inputs={
                        "bids": {
                            "a": {"duration_s": 10, "cost": 100},
                            "b": {"duration_s": 50, "cost": 10},
                        }
                    },
                ),
                # a tie: b has no capability it does not need (a has y), b comes before c
                task(
                    "t3",
                    requires=["x"],
                    needs=["t2"],
                    inputs={
                        "bids": {
                            "a": {"duration_s": 30},
                            "b": {"duration_s": 30},
                            "c": {"duration_s": 30},
                        }
                    },
                ),
            ],
            agents={
                "a": agent(ws, ["x", "y"], bid=bid),
                "b": agent(ws, ["x"], bid=bid),
                "c": agent(ws, ["x"], bid=bid),
            },
            settings={**CONTRACT_NET, "contract_net": {"deadline": "2s", "cost_weight": 1}},
        )
    )


def test_the_best_proposal_wins_deterministically_and_bidders_hear_the_outcome(
    tmp_path: Path,
) -> None:
    outcomes = []
    for run in ("first", "second"):
        folder = tmp_path / run
        folder.mkdir()
        ws = Workspace.create(folder)
        bidding_plan(ws, deciders(ws))
        code, seen = run_in_process(ws)
        assert code == 0
        outcomes.append(
            (where_ran(ws), [(e.task, e.data["agent"]) for e in seen.kinds("task_awarded")])
        )
    assert outcomes[0] == outcomes[1]
    ran, awarded = outcomes[0]
    assert ran == {"t1": "c", "t2": "b", "t3": "b"}
    assert awarded == [("t1", "c"), ("t2", "b"), ("t3", "b")]

    # Every bidder was asked each time, with its own name (the bidder recorded it).
    answered = [json.loads(x) for x in (ws.dir / "answered.jsonl").read_text().splitlines()]
    assert sorted((a["task"], a["agent"]) for a in answered) == sorted(
        (t, a) for t in ("t1", "t2", "t3") for a in ("a", "b", "c")
    )

    # The journal: each call with every answer, its score and the winner.
    found = {c["task"]: c for c in calls(ws)}
    t1 = found["t1"]
    assert (t1["status"], t1["winner"], t1["score"], t1["round"]) == ("awarded", "c", 50.0, 1)
    assert [(a["agent"], a["status"], a["score"]) for a in t1["answers"]] == [
        ("a", "proposal", 100.0),
        ("b", "proposal", 60.0),
        ("c", "proposal", 50.0),
    ]
    assert t1["answers"][1]["load"] == 0.5 and t1["answers"][1]["via"] == "python"
    t2 = found["t2"]
    assert [(a["agent"], a["status"], a["score"]) for a in t2["answers"]] == [
        ("a", "proposal", 110.0),
        ("b", "proposal", 60.0),
        ("c", "refusal", None),
    ]
    assert t2["answers"][2]["reason"] == "no proposal" and t2["winner"] == "b"
    assert [c["task"] for c in calls(ws, task_id="t3")] == ["t3"]

    # The winner was told it won, the other bidders that they lost; the refuser nothing.
    accepted = [
        (m["recipient"], m["content"]["task_id"]) for m in messages(ws, "proposal_accepted")
    ]
    assert accepted == [("c", "t1"), ("b", "t2"), ("b", "t3")]
    rejected = sorted(
        (m["recipient"], m["content"]["task_id"]) for m in messages(ws, "proposal_rejected")
    )
    assert rejected == [("a", "t1"), ("a", "t2"), ("a", "t3"), ("b", "t1"), ("c", "t3")]

    # The report's Coordination section shows the same.
    report = cli("report", "--state", ws.state)
    assert report.code == 0, str(report)
    assert "## Coordination" in report.stdout
    assert "| 1 | t1 | 1 | c | proposal | 50 | 0 | 0 | 50 | won |" in report.stdout
    assert "| 2 | t2 | 1 | c | refusal | - | - | - | - | refused: no proposal |" in report.stdout
    data = json.loads(cli("report", "--state", ws.state, "--format", "json").stdout)
    assert data["coordination"]["mode"] == "contract_net"
    assert [c["winner"] for c in data["coordination"]["calls"]] == ["c", "b", "b"]


def test_a_refusing_agent_never_gets_the_task(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    module = deciders(ws)
    ws.write_plan(
        one_phase(
            [task(f"t{i}", requires=["x"], sleep=0.2) for i in range(1, 4)],
            agents={
                "picky": agent(ws, ["x"], capacity=3, bid=f"{module}:refuse"),
                "willing": agent(ws, ["x"], capacity=1),
            },
            settings=CONTRACT_NET,
        )
    )
    code, _ = run_in_process(ws)
    assert code == 0
    assert set(where_ran(ws).values()) == {"willing"}  # picky was free, but refused
    assert max_overlap(spans(ws.executions())) == 1
    for c in calls(ws):
        picky = next(a for a in c["answers"] if a["agent"] == "picky")
        assert picky["status"] == "refusal" and picky["reason"] == f"I do not take {c['task']}"
        assert c["winner"] == "willing"


def test_without_bidders_agents_propose_by_load_so_parallel_tasks_spread(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    ws.write_plan(
        one_phase(
            [task(f"t{i}", requires=["x"], sleep=0.5) for i in range(1, 5)],
            agents={"a": agent(ws, ["x"], capacity=2), "b": agent(ws, ["x"], capacity=2)},
            settings=CONTRACT_NET,
        )
    )
    code, seen = run_in_process(ws)
    assert code == 0
    ran = list(where_ran(ws).values())
    assert sorted(ran) == ["a", "a", "b", "b"]
    assert max_overlap(spans(ws.executions())) == 4  # all four at once
    # The default proposals: the task's estimate (1s) at the agent's load, awarded
    # tasks included, so each award makes the next call see a busier agent.
    loads = [sorted(b["load"] for b in e.data["bids"]) for e in seen.kinds("task_awarded")]
    assert loads == [[0.0, 0.0], [0.0, 0.5], [0.5, 0.5], [0.5, 1.0]]
    for c in calls(ws):
        assert all(a["via"] == "default" and a["duration_s"] == 1.0 for a in c["answers"])


SHELL_BIDDER = """\
import json, os, sys
call = json.load(sys.stdin)
with open(f"call-{os.environ['COUNTERPOINT_AGENT']}.json", "w") as f:
    json.dump(call, f)
print("thinking...")
print(json.dumps({"duration_s": 5, "note": "from the shell"}))
"""


def test_a_shell_bidder_reads_the_call_on_stdin_and_answers_on_stdout(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    (ws.dir / "bid.py").write_text(SHELL_BIDDER, encoding="utf-8")
    agents = {
        "plain": agent(ws, ["x"]),
        "scripted": {**agent(ws, ["x"]), "bid": {"shell": [PY, "bid.py"]}},
        "broken": {**agent(ws, ["x"]), "bid": {"shell": "sh -c 'echo nope >&2; exit 3'"}},
    }
    ws.write_plan(
        one_phase([task("t1", requires=["x"], estimate="1h")], agents=agents, settings=CONTRACT_NET)
    )
    code, _ = run_in_process(ws)
    assert code == 0
    assert where_ran(ws) == {"t1": "scripted"}  # 5 s beats plain's estimate of 1 h

    call = json.loads((ws.dir / "call-scripted.json").read_text())
    assert call["agent"] == "scripted" and call["task"]["id"] == "t1"
    assert call["task"]["estimate_s"] == 3600.0 and call["task"]["requires"] == ["x"]
    assert call["round"] == 1 and call["attempt"] == 1 and call["load"] == 0.0
    (found,) = calls(ws)
    assert call["call"] == found["call"]
    answers = {a["agent"]: a for a in found["answers"]}
    assert answers["scripted"]["via"] == "shell" and answers["scripted"]["duration_s"] == 5.0
    assert answers["plain"]["via"] == "default" and answers["plain"]["score"] == 3600.0
    assert answers["broken"]["status"] == "error"
    assert answers["broken"]["error"] == "exit code 3: nope"


def test_no_proposal_is_called_again_then_escalated_and_the_task_fails(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    module = deciders(ws)
    ws.write_plan(
        one_phase(
            [task("t1", requires=["x"]), task("t2", requires=["x"], needs=["t1"])],
            agents={"picky": agent(ws, ["x"], bid=f"{module}:refuse")},
            settings={"coordination": "contract_net", "contract_net": {"deadline": 1, "rounds": 2}},
            escalation={"levels": [{"name": "lead", "contacts": ["ann"], "timeout": "1.5s"}]},
        )
    )
    code, seen = run_in_process(ws)
    assert code == 1
    rounds = [e.data["round"] for e in seen.kinds("cfp_opened")]
    assert rounds[:3] == [1, 2, 3], rounds  # called again, then still while escalated
    kinds = [e.kind for e in seen.events]
    second_silence = [i for i, k in enumerate(kinds) if k == "cfp_unanswered"][1]
    opened = kinds.index("escalation_opened")
    assert opened > second_silence  # escalated after `rounds` calls without a proposal
    case = seen.kinds("escalation_opened")[0]
    assert case.data["subject"] == "cfp:t1" and case.data["case_kind"] == "allocation"
    (failed,) = seen.kinds("task_failed")
    assert failed.task == "t1"
    assert failed.data["error"].startswith("no agent proposed to take t1 in ")
    assert "picky refused (I do not take t1)" in failed.data["error"]
    assert failed.data["error"].endswith("; no more escalation levels available")
    assert [e.task for e in seen.kinds("task_blocked")] == ["t2"]
    assert ws.executions() == []
    found = calls(ws)
    assert [c["status"] for c in found[:2]] == ["unanswered", "unanswered"]
    assert found[-1]["status"] == "failed"  # the call in flight when the ladder ran out


def test_a_retried_attempt_is_called_again(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    ws.write_plan(
        one_phase(
            [task("t1", requires=["x"], retries=1, inputs={"fail_times": 1})],
            agents={"a": agent(ws, ["x"]), "b": agent(ws, ["x"])},
            settings={**CONTRACT_NET, "retry_backoff": 0},
        )
    )
    code, _ = run_in_process(ws)
    assert code == 0
    assert [e.attempt for e in ws.runs_of("t1")] == [1, 2]
    assert [(c["attempt"], c["status"]) for c in calls(ws)] == [(1, "awarded"), (2, "awarded")]


class _MaintenanceOnAward(Collect):
    """Puts the winner of ``task`` in maintenance the moment it is awarded (from another
    thread, through the journal, as `counterpoint agent-state` would)."""

    def __init__(self, state: Path, task_id: str) -> None:
        super().__init__()
        self.state, self.task_id = state, task_id
        self.threads: list[threading.Thread] = []

    def on_event(self, event: RunEvent) -> None:
        super().on_event(event)
        if event.kind == "task_awarded" and event.task == self.task_id and not self.threads:
            winner = event.data["agent"]
            worker = threading.Thread(
                target=set_agent_state, args=(self.state, winner, "maintenance")
            )
            worker.start()
            self.threads.append(worker)


def test_a_winner_that_becomes_unusable_before_the_start_is_replaced(tmp_path: Path) -> None:
    from run_helpers import quick_options

    from counterpoint.runtime.session import start_run

    ws = Workspace.create(tmp_path)
    module = deciders(ws)
    bid = f"{module}:by_input"
    ws.write_plan(
        one_phase(
            [
                task("hold", requires=["h"], sleep=1.0, resources={"lock": 1}),
                task(
                    "w",
                    requires=["x"],
                    resources={"lock": 1},
                    inputs={"bids": {"fast": {"duration_s": 1}, "slow": {"duration_s": 100}}},
                ),
            ],
            agents={
                "holder": agent(ws, ["h"]),
                "fast": agent(ws, ["x"], bid=bid),
                "slow": agent(ws, ["x"], bid=bid),
            },
            resources={"lock": {"capacity": 1}},
            settings=CONTRACT_NET,
        )
    )
    seen = _MaintenanceOnAward(ws.state, "w")
    code = start_run(ws.plan, ws.state, quick_options(), [seen], sync="normal")
    for worker in seen.threads:
        worker.join()
    assert code == 0
    assert where_ran(ws) == {"hold": "holder", "w": "slow"}
    awarded = [(e.task, e.data["agent"]) for e in seen.kinds("task_awarded")]
    assert ("w", "fast") in awarded and awarded[-1] == ("w", "slow")
    (recalled,) = seen.kinds("task_recalled")
    assert recalled.task == "w" and recalled.data["reason"] == "fast is maintenance"


def test_centralized_plans_run_as_before_without_calls(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    ws.write_plan(
        one_phase(
            [task("t1", requires=["x"]), task("t2", requires=["x"], needs=["t1"])],
            agents={"wide": agent(ws, ["x", "y"]), "narrow": agent(ws, ["x"])},
        )
    )
    code, seen = run_in_process(ws)
    assert code == 0
    assert where_ran(ws) == {"t1": "narrow", "t2": "narrow"}  # the fewest capabilities
    assert not [e for e in seen.events if e.kind.startswith(("cfp", "task_awarded", "ballot"))]
    assert not tables(ws.state) & {"canvass_questions", "canvass_answers", "decisions"}
    result = cli("bids", "--state", ws.state)
    assert (
        result.code == 0 and "no calls for proposals (coordination: centralized)" in result.stderr
    )


# -- remote agents ---------------------------------------------------------------------------


REMOTE_BIDDER = """\
import json, sys
call = json.load(sys.stdin)
with open(sys.argv[1], "a") as f:
    f.write(json.dumps(call) + "\\n")
print(json.dumps({"duration_s": 1, "cost": 0, "load": call["load"]}))
"""


def test_a_remote_agent_bids_over_the_hub(bench: Bench) -> None:  # noqa: F811 - the fixture
    script = bench.dir / "remote_bid.py"
    script.write_text(REMOTE_BIDDER, encoding="utf-8")
    asked = bench.dir / "asked.jsonl"
    bench.write_plan(
        [
            task("warmup", requires=["far-only"]),  # waits for far to connect
            task("t1", requires=["build"], needs=["warmup"], estimate="1h"),
            task("t2", requires=["build"], needs=["warmup"], estimate="1h"),
        ],
        {
            "far": remote("build", "far-only", capacity=2),
            "near": {
                "capabilities": ["build"],
                "capacity": 2,
                "runner": {"shell": bench.command()},
            },
        },
        settings={"coordination": "contract_net", "contract_net": {"deadline": "5s"}},
    )
    token = bench.token("far")
    run, url = bench.serve_run()
    bench.agent(
        url,
        "far",
        token,
        "build,far-only",
        "--capacity",
        "2",
        "--bid",
        f"{sys.executable} {script} {asked}",
    )
    result = run.wait(timeout=60)
    assert result.code == 0, str(result)
    no_traceback(result)
    assert bench.ran() == {"warmup": ["far"], "t1": ["far"], "t2": ["far"]}

    # The remote bidder really got the calls, over the wire, and its answers won.
    got = [json.loads(line) for line in asked.read_text().splitlines()]
    assert sorted(c["task"]["id"] for c in got) == ["t1", "t2", "warmup"]
    assert all(c["agent"] == "far" and c["deadline_s"] == 5.0 for c in got)
    awards = {e["task"]: e for e in run.events("task_awarded")}
    assert {t: e["agent"] for t, e in awards.items()} == {"warmup": "far", "t1": "far", "t2": "far"}
    bids = {b["agent"]: b for b in awards["t1"]["bids"]}
    assert bids["far"]["duration_s"] == 1.0  # its own bid
    assert bids["near"]["duration_s"] == 3600.0  # the default: the task's estimate
    # The winner heard of it through its hub connection (its inbox).
    inbox = bench.dir / "agent-far" / "inbox.jsonl"
    notices = [json.loads(line) for line in inbox.read_text().splitlines()]
    accepted = {
        m["content"]["task_id"]
        for m in notices
        if m["content"].get("event_type") == "proposal_accepted"
    }
    assert accepted == {"warmup", "t1", "t2"}


# -- the frames on the wire ---------------------------------------------------------------------


def test_bid_and_vote_frames_are_checked_and_only_answer_questions_put_to_the_agent(
    tmp_path: Path,
) -> None:
    import asyncio

    from test_hub_wire import run as run_scenario
    from test_hub_wire import wire

    async def scenario() -> None:
        async with wire(tmp_path) as w:
            builder, _ = await w.join("builder")
            tester, _ = await w.join("tester")
            body = {"call": 7, "agent": "builder", "task": {"id": "t1"}, "deadline_s": 5.0}
            asked = asyncio.create_task(w.hub.put_question("builder", "cfp", 7, body))
            frame = await builder.expect("cfp", call=7, agent="builder")
            assert frame["seq"] >= 1 and frame["task"] == {"id": "t1"}
            await builder.send({"op": "ack", "seq": frame["seq"]})

            # a malformed bid is refused and the connection stays open
            await builder.send({"op": "bid", "seq": 1, "call": 7, "duration_s": -1})
            await builder.error("invalid_frame", "duration_s", 1)
            # another agent cannot answer a call put to builder
            await tester.send({"op": "bid", "seq": 1, "call": 7, "duration_s": 3})
            await tester.error("not_your_question", "call", 1)
            # a ballot nobody was asked
            await builder.send({"op": "vote", "seq": 2, "ballot": 3, "vote": "x"})
            await builder.error("not_your_question", "ballot", 2)
            # the real answer
            await builder.send({"op": "bid", "seq": 3, "call": 7, "duration_s": 3, "load": 0.5})
            assert await asyncio.wait_for(asked, 5) == {"duration_s": 3, "load": 0.5}
            # once answered, the call is closed
            await builder.send({"op": "bid", "seq": 4, "call": 7, "refuse": "changed my mind"})
            await builder.error("question_closed", "call", 4)

            # a ballot whose deadline passed (the caller stopped waiting) is closed too
            late = asyncio.create_task(
                w.hub.put_question("tester", "ballot", 9, {"ballot": 9, "options": [1, 2]})
            )
            await tester.expect("ballot", ballot=9)
            late.cancel()
            await asyncio.gather(late, return_exceptions=True)
            await tester.send({"op": "vote", "seq": 2, "ballot": 9, "vote": 1})
            await tester.error("question_closed", "ballot", 2)
            await builder.quiet(0.2)  # and the connections are still fine
            assert w.hub.sessions["builder"].link is not None

    run_scenario(scenario)


REMOTE_VOTER = """\
import json, sys
ballot = json.load(sys.stdin)
assert ballot["voter"] == "far", ballot
print(json.dumps({"vote": ballot["options"][-1]}))
"""


def test_a_remote_agent_votes_and_proposes_by_default_over_the_hub(
    bench: Bench,  # noqa: F811 - the fixture
) -> None:
    module = f"deciders_{uuid.uuid4().hex[:10]}"
    shutil.copy(AGENTS_DIR / "deciders.py", bench.dir / f"{module}.py")
    script = bench.dir / "remote_vote.py"
    script.write_text(REMOTE_VOTER, encoding="utf-8")
    bench.write_plan(
        [
            task("warmup", requires=["far-only"]),
            task(
                "choose",
                requires=["ask"],
                needs=["warmup"],
                inputs={"question": "ship?", "options": ["no", "yes"], "voters": ["far"]},
            ),
        ],
        {
            "far": remote("far-only"),
            "boss": {"capabilities": ["ask"], "runner": {"python": f"{module}:decide"}},
        },
        settings={"coordination": "contract_net", "voting": {"quorum": 1}},
    )
    token = bench.token("far")
    run, url = bench.serve_run()
    bench.agent(url, "far", token, "far-only", "--vote", f"{sys.executable} {script}")
    result = run.wait(timeout=60)
    assert result.code == 0, str(result)
    no_traceback(result)
    awards = {e["task"]: e for e in run.events("task_awarded")}
    (far_bid,) = awards["warmup"]["bids"]
    assert far_bid == {"agent": "far", "duration_s": 1.0, "cost": 0.0, "load": 0.0, "score": 1.0}
    (made,) = run.events("decision_made")
    assert made["result"] == "yes" and made["votes"] == {"far": "yes"}
    store = SqliteStore(bench.state, create=False)
    try:
        from counterpoint.runtime.canvass import read_questions

        (ballot,) = read_questions(store, 1, "ballot")
        (answer,) = ballot["answers"]
        assert (answer["via"], answer["status"], answer["answer"]["vote"]) == (
            "remote",
            "vote",
            "yes",
        )
        warmup = next(q for q in read_questions(store, 1, "cfp") if q["subject"] == "warmup")
        assert warmup["answers"][0]["via"] == "remote"
        assert store.tasks(1)["choose"].result["result"] == "yes"
    finally:
        store.close()


def test_the_contract_net_example_runs_to_completion(tmp_path: Path) -> None:
    from run_helpers import ROOT

    plan = ROOT / "examples" / "contract-net" / "plan.yaml"
    state = tmp_path / "state"
    result = cli("run", plan, "--state", state, "--time-scale", "0.001", "--quiet")
    assert result.code == 0, str(result)
    found = json.loads(cli("bids", "--state", state, "--json").stdout)["calls"]
    assert {c["task"]: c["winner"] for c in found} == {
        "choose-codec": "lead",
        "opening": "cloud",
        "chase": "cpu",
        "dialogue": "gpu",
        "finale": "cloud",
        "credits": "cpu",
        "upload": "cloud",
    }
    chase = next(c for c in found if c["task"] == "chase")
    gpu = next(a for a in chase["answers"] if a["agent"] == "gpu")
    assert gpu["status"] == "refusal" and "GPU memory" in gpu["reason"]
    decided = json.loads(cli("decisions", "--state", state, "--json").stdout)["decisions"]
    assert [(d["result"], d["status"]) for d in decided] == [("h265", "decided")]
