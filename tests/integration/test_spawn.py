"""Tasks that spawn subtasks: validated, journaled, resumed, cancelled with their parent."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from run_helpers import Background, cli, status_json, wait_for

AGENTS = '''
import asyncio, json, os, time
from pathlib import Path

HERE = Path(__file__).parent

def record(**data):
    with open(HERE / "records.jsonl", "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "ts": time.time(), **data}) + "\\n")

def work(task, ctx):
    record(task=task.id, attempt=ctx.attempt, agent=ctx.agent, event="start")
    marker = HERE / f"hung-{task.id}"
    if task.inputs.get("hang_once") and not marker.exists():
        marker.touch()
        time.sleep(60)
    time.sleep(task.inputs.get("sleep", 0.02))
    if task.inputs.get("fail_until", 0) >= ctx.attempt:
        record(task=task.id, attempt=ctx.attempt, event="fail")
        raise RuntimeError("told to fail")
    record(task=task.id, attempt=ctx.attempt, event="end")
    return {"n": task.inputs.get("n"), "by": ctx.agent}

def fan_out(task, ctx):
    """Spawn what inputs.children says, wait for them, return their results."""
    record(task=task.id, attempt=ctx.attempt, event="start")
    ids = ctx.spawn(task.inputs["children"])
    out = ctx.wait_for_children_sync() if task.inputs.get("wait", True) else {}
    if task.inputs.get("fail_until", 0) >= ctx.attempt:
        record(task=task.id, attempt=ctx.attempt, event="fail")
        raise RuntimeError("parent told to fail")
    record(task=task.id, attempt=ctx.attempt, event="end")
    return {"ids": ids, "children": {k: [v.state, v.result] for k, v in out.items()}}

async def fan_out_async(task, ctx):
    ids = ctx.spawn(task.inputs["children"])
    out = await ctx.wait_for_children()
    return {"ids": ids, "children": {k: [v.state, v.result] for k, v in out.items()}}

def refused(task, ctx):
    """Try each bad spawn in inputs.bad and return what the run said."""
    said = []
    for spec in task.inputs["bad"]:
        try:
            ctx.spawn(spec)
            said.append("accepted")
        except Exception as exc:
            said.append(f"{type(exc).__name__}: {exc}")
    return {"said": said}

def nested(task, ctx):
    """Spawn a child running this same function, inputs.levels deep."""
    levels = task.inputs.get("levels", 0)
    if levels <= 0:
        return {"depth_reached": True}
    try:
        ids = ctx.spawn({"requires": ["spawner"], "inputs": {"levels": levels - 1}})
    except Exception as exc:
        return {"refused": str(exc)}
    out = ctx.wait_for_children_sync()
    return {"child": ids[0], "below": out[ids[0]].result}
'''


class Spawn:
    """A folder with a plan, a uniquely named copy of the spawning agents, and records."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.module = f"spawning_{uuid.uuid4().hex[:10]}"
        (tmp_path / f"{self.module}.py").write_text(AGENTS)
        self.plan = tmp_path / "plan.yaml"
        self.state = tmp_path / "state"

    def agent(self, func: str, capabilities: list[str], capacity: int = 1) -> dict[str, Any]:
        return {
            "capabilities": capabilities,
            "capacity": capacity,
            "runner": {"python": f"{self.module}:{func}"},
        }

    def write(self, milestones: list[dict[str, Any]], **settings: Any) -> None:
        plan = {
            "version": 1,
            "name": "spawn",
            "defaults": {"retries": 0, "estimate": "1m"},
            "settings": {"retry_backoff": 0.01, **settings},
            "agents": {
                "boss": self.agent("fan_out", ["spawner"]),
                "worker": self.agent("work", ["work"], capacity=2),
            },
            "resources": {"db": {"capacity": 1}},
            "phases": [{"id": "p1", "milestones": milestones}],
        }
        self.plan.write_text(yaml.safe_dump(plan, sort_keys=False))

    def records(self) -> list[dict[str, Any]]:
        path = self.dir / "records.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    def run(self, *extra: str) -> Any:
        return cli("run", self.plan, "--state", self.state, "--quiet", *extra)

    def result(self, task: str) -> dict[str, Any]:
        db = sqlite3.connect(self.state / "state.db")
        try:
            (text,) = db.execute("SELECT result FROM tasks WHERE task = ?", (task,)).fetchone()
        finally:
            db.close()
        return json.loads(text)  # type: ignore[no-any-return]

    def events(self, kind: str) -> list[dict[str, Any]]:
        db = sqlite3.connect(self.state / "state.db")
        try:
            rows = db.execute(
                "SELECT task, data FROM events WHERE kind = ? ORDER BY seq", (kind,)
            ).fetchall()
        finally:
            db.close()
        return [{"task": task, **json.loads(data or "{}")} for task, data in rows]


def child(tid: str, **inputs: Any) -> dict[str, Any]:
    return {"id": tid, "requires": ["work"], "inputs": inputs}


def test_a_parent_spawns_children_waits_for_them_and_the_milestone_waits_too(
    tmp_path: Path,
) -> None:
    sp = Spawn(tmp_path)
    children = [
        child("c1", n=1, sleep=0.2),
        {**child("c2", n=2), "needs": ["c1"]},
        {"requires": ["work"], "inputs": {"n": 3}},  # no id: top.3
    ]
    sp.write(
        [
            {
                "id": "m1",
                "tasks": [{"id": "top", "requires": ["spawner"], "inputs": {"children": children}}],
            },
            {"id": "m2", "after": ["m1"], "tasks": [{"id": "later", "requires": ["work"]}]},
        ]
    )
    result = sp.run()
    assert result.code == 0, str(result)

    top = sp.result("top")
    assert top["ids"] == ["c1", "c2", "top.3"]
    assert top["children"] == {
        "c1": ["completed", {"n": 1, "by": "worker"}],
        "c2": ["completed", {"n": 2, "by": "worker"}],
        "top.3": ["completed", {"n": 3, "by": "worker"}],
    }
    runs = sp.records()
    start = {r["task"]: r["ts"] for r in runs if r["event"] == "start"}
    end = {r["task"]: r["ts"] for r in runs if r["event"] == "end"}
    assert start["c2"] >= end["c1"], "c2 needs c1"
    assert start["later"] >= max(end["c1"], end["c2"], end["top.3"]), "m2 comes after m1's children"
    # journaled, and seen by status and the report
    assert status_json(sp.state)["counts"] == {"completed": 5}
    spawned = sp.events("task_spawned")
    assert [(e["task"], e["parent"], e["depth"], e["milestone"]) for e in spawned] == [
        ("c1", "top", 1, "m1"),
        ("c2", "top", 1, "m1"),
        ("top.3", "top", 1, "m1"),
    ]
    report = cli("report", "--state", sp.state, "--format", "json")
    assert report.code == 0, str(report)
    rows = json.loads(report.stdout)["spawned"]
    assert [(r["task"], r["parent"], r["state"]) for r in rows] == [
        ("c1", "top", "completed"),
        ("c2", "top", "completed"),
        ("top.3", "top", "completed"),
    ]


def test_a_waiting_parent_lends_its_agent_slot_to_its_children(tmp_path: Path) -> None:
    sp = Spawn(tmp_path)
    sp.write(
        [
            {
                "id": "m1",
                "tasks": [
                    {
                        "id": "top",
                        "requires": ["spawner"],
                        # a child only the parent's own agent can run
                        "inputs": {
                            "children": [
                                {"id": "inner", "requires": ["spawner"], "inputs": {"children": []}}
                            ]
                        },
                    }
                ],
            }
        ]
    )
    result = sp.run()
    assert result.code == 0, str(result)
    assert sp.result("top")["children"]["inner"][0] == "completed"


def test_an_async_agent_spawns_and_awaits_its_children(tmp_path: Path) -> None:
    sp = Spawn(tmp_path)
    plan_children = [child("a", n=1), child("b", n=2)]
    sp.write(
        [
            {
                "id": "m1",
                "tasks": [
                    {"id": "top", "requires": ["spawner"], "inputs": {"children": plan_children}}
                ],
            }
        ]
    )
    plan = yaml.safe_load(sp.plan.read_text())
    plan["agents"]["boss"]["runner"]["python"] = f"{sp.module}:fan_out_async"
    sp.plan.write_text(yaml.safe_dump(plan))
    result = sp.run()
    assert result.code == 0, str(result)
    assert sp.result("top")["children"] == {
        "a": ["completed", {"n": 1, "by": "worker"}],
        "b": ["completed", {"n": 2, "by": "worker"}],
    }


def test_bad_spawns_are_refused_with_what_is_wrong_and_nothing_is_added(tmp_path: Path) -> None:
    sp = Spawn(tmp_path)
    bad = [
        {"id": "x1", "requires": ["work"], "needs": ["tpo"]},
        {"id": "x2", "requires": ["cooking"]},
        {"id": "x3", "requires": ["work"], "resources": {"dbb": 1}},
        {"id": "x4", "requires": ["work"], "resources": {"db": 2}},
        {"id": "x5", "requires": ["work"], "needs": ["later"]},  # later waits for m1's end
        {"id": "x6", "requires": ["work"], "estimate": "soon"},
        {"id": "top", "requires": ["work"]},
        {"id": "x7", "requires": ["work"], "colour": "red"},
        [
            {"id": "y1", "requires": ["work"], "needs": ["y2"]},
            {"id": "y2", "requires": ["work"], "needs": ["y1"]},
        ],
    ]
    sp.write(
        [
            {"id": "m1", "tasks": [{"id": "top", "requires": ["checker"], "inputs": {"bad": bad}}]},
            {"id": "m2", "after": ["m1"], "tasks": [{"id": "later", "requires": ["work"]}]},
        ]
    )
    plan = yaml.safe_load(sp.plan.read_text())
    plan["agents"]["checker"] = sp.agent("refused", ["checker"])
    sp.plan.write_text(yaml.safe_dump(plan))
    result = sp.run()
    assert result.code == 0, str(result)
    said = sp.result("top")["said"]
    assert len(said) == len(bad)
    assert all(s.startswith("SpawnError: top: ") for s in said), said
    assert "needs 'tpo', which is no task of the run; did you mean 'top'?" in said[0]
    assert "no agent can run it (requires ['cooking'])" in said[1]
    assert "resource 'dbb' is not in the plan; did you mean 'db'?" in said[2]
    assert "needs 2 db, more than its capacity 1" in said[3]
    assert "would close a cycle" in said[4] and "later" in said[4]
    assert "spawned task 'x6': estimate" in said[5]
    assert "task id 'top' is already a task of the run" in said[6]
    assert "spawned task 'x7'" in said[7] and "colour" in said[7]
    assert "would close a cycle" in said[8] and "y1" in said[8] and "y2" in said[8]
    assert sp.events("task_spawned") == []
    assert status_json(sp.state)["counts"] == {"completed": 2}


def test_spawn_depth_and_the_task_limit_are_enforced(tmp_path: Path) -> None:
    sp = Spawn(tmp_path)
    sp.write(
        [{"id": "m1", "tasks": [{"id": "top", "requires": ["spawner"], "inputs": {"levels": 5}}]}],
        max_spawn_depth=2,
    )
    plan = yaml.safe_load(sp.plan.read_text())
    plan["agents"]["boss"] = {**sp.agent("nested", ["spawner"]), "capacity": 1}
    sp.plan.write_text(yaml.safe_dump(plan))
    result = sp.run()
    assert result.code == 0, str(result)
    top = sp.result("top")
    assert top["child"] == "top.1"
    assert top["below"]["child"] == "top.1.1"
    assert "2 levels deep" not in json.dumps(top)
    assert (
        "would be 3 levels deep (settings.max_spawn_depth is 2)" in top["below"]["below"]["refused"]
    )

    # max_tasks: the plan's one task plus one spawned is the limit
    plan["settings"]["max_tasks"] = 2
    plan["settings"]["max_spawn_depth"] = 5
    sp.plan.write_text(yaml.safe_dump(plan))
    again = cli("run", sp.plan, "--state", tmp_path / "state2", "--quiet")
    assert again.code == 0, str(again)
    db = sqlite3.connect(tmp_path / "state2" / "state.db")
    (text,) = db.execute("SELECT result FROM tasks WHERE task = 'top'").fetchone()
    db.close()
    below = json.loads(text)["below"]
    assert "the run would have 3 tasks, more than settings.max_tasks (2)" in below["refused"]


def test_children_are_cancelled_with_their_parent_and_woken_by_its_retry(tmp_path: Path) -> None:
    sp = Spawn(tmp_path)
    children = [child("done-first", sleep=0.01), child("slow", hang_once=True)]
    sp.write(
        [
            {
                "id": "m1",
                "tasks": [
                    {
                        "id": "top",
                        "requires": ["spawner"],
                        "retries": 1,
                        "timeout": 2,  # the first attempt times out while slow hangs
                        "inputs": {"children": children},
                    }
                ],
            }
        ]
    )
    result = sp.run("--time-scale", "1")
    assert result.code == 0, str(result)
    runs = sp.records()
    starts = [(r["task"], r.get("attempt")) for r in runs if r["event"] == "start"]
    assert starts.count(("done-first", 1)) == 1, "a completed child never runs again"
    assert [a for t, a in starts if t == "slow"] == [1, 2], "slow was cancelled, then woken"
    assert [a for t, a in starts if t == "top"] == [1, 2]
    cancelled = sp.events("task_cancelled")
    assert any(e["task"] == "slow" and "its parent top" in e["reason"] for e in cancelled)
    assert [e["task"] for e in sp.events("task_respawned")] == ["slow"]
    assert sp.result("top")["children"] == {
        "done-first": ["completed", {"n": None, "by": "worker"}],
        "slow": ["completed", {"n": None, "by": "worker"}],
    }


def test_children_are_cancelled_when_their_parent_fails_for_good(tmp_path: Path) -> None:
    sp = Spawn(tmp_path)
    sp.write(
        [
            {
                "id": "m1",
                "tasks": [
                    {
                        "id": "top",
                        "requires": ["spawner"],
                        "timeout": 1,
                        "inputs": {"children": [child("stuck", hang_once=True)]},
                    }
                ],
            }
        ]
    )
    result = sp.run("--time-scale", "1")
    assert result.code == 1, str(result)
    status = status_json(sp.state)
    assert status["counts"] == {"failed": 1, "cancelled": 1}, status["counts"]
    cancelled = sp.events("task_cancelled")
    assert [e["task"] for e in cancelled] == ["stuck"]
    assert "its parent top" in cancelled[0]["reason"]


def test_children_the_completing_attempt_did_not_spawn_again_are_dropped(tmp_path: Path) -> None:
    sp = Spawn(tmp_path)
    sp.write(
        [
            {
                "id": "m1",
                "tasks": [
                    {
                        "id": "top",
                        "requires": ["spawner"],
                        "retries": 1,
                        "inputs": {
                            "wait": False,
                            "fail_until": 1,
                            "children": [child("keep", sleep=0.01), child("gone", sleep=5)],
                        },
                    }
                ],
            },
            {"id": "m2", "after": ["m1"], "tasks": [{"id": "later", "requires": ["work"]}]},
        ]
    )
    agents = Path(sp.dir / f"{sp.module}.py")
    # the second attempt spawns only "keep"
    agents.write_text(
        agents.read_text().replace(
            'ids = ctx.spawn(task.inputs["children"])',
            'ids = ctx.spawn(task.inputs["children"][: 2 if ctx.attempt == 1 else 1])',
        )
    )
    result = sp.run("--time-scale", "0.01")
    assert result.code == 0, str(result)
    dropped = sp.events("task_dropped")
    assert [e["task"] for e in dropped] == ["gone"]
    assert "completed without spawning it" in dropped[0]["reason"]
    runs = sp.records()
    assert any(r["task"] == "later" and r["event"] == "end" for r in runs)
    assert status_json(sp.state)["counts"] == {"completed": 3, "cancelled": 1}


def test_waiting_for_a_child_that_waits_for_its_parent_is_refused(tmp_path: Path) -> None:
    sp = Spawn(tmp_path)
    sp.write(
        [
            {
                "id": "m1",
                "tasks": [
                    {
                        "id": "top",
                        "requires": ["spawner"],
                        "inputs": {
                            "children": [{"id": "k", "requires": ["work"], "needs": ["after-top"]}]
                        },
                    },
                    {"id": "after-top", "requires": ["work"], "needs": ["top"]},
                ],
            }
        ]
    )
    result = sp.run()
    assert result.code == 1, str(result)
    failed = status_json(sp.state)["failed"]
    assert failed and failed[0]["task"] == "top"
    assert "cannot wait for 'k': it waits (through its needs) for its parent" in failed[0]["error"]


def test_resume_after_kill_9_keeps_spawned_tasks_and_does_not_rerun_completed_ones(
    tmp_path: Path,
) -> None:
    sp = Spawn(tmp_path)
    children = [child("quick", sleep=0.01), child("long", hang_once=True)]
    sp.write(
        [
            {
                "id": "m1",
                "tasks": [{"id": "top", "requires": ["spawner"], "inputs": {"children": children}}],
            }
        ]
    )
    bg = Background(sp.dir, "run", sp.plan, "--state", sp.state, "--quiet")
    try:

        def midway() -> bool:
            runs = sp.records()
            return any(r["task"] == "long" and r["event"] == "start" for r in runs) and any(
                r["task"] == "quick" and r["event"] == "end" and r["ts"] < time.time() - 0.5
                for r in runs
            )

        wait_for(midway, what="quick done (and journaled) while long hangs")
        os.kill(bg.pid, signal.SIGKILL)
        bg.wait(timeout=10)
    finally:
        bg.stop()
    resumed = cli("resume", "--state", sp.state, "--quiet")
    assert resumed.code == 0, str(resumed)
    runs = sp.records()
    starts = [(r["task"], r["pid"]) for r in runs if r["event"] == "start"]
    assert [t for t, _ in starts].count("quick") == 1, "a completed child is not run again"
    assert [t for t, _ in starts].count("long") == 2
    assert [t for t, _ in starts].count("top") == 2
    assert status_json(sp.state)["counts"] == {"completed": 3}
    # the result of quick, completed before the crash, comes from the journal
    assert sp.result("top")["children"] == {
        "quick": ["completed", {"n": None, "by": "worker"}],
        "long": ["completed", {"n": None, "by": "worker"}],
    }


def test_a_gate_waiting_while_tasks_are_spawned_still_opens_its_milestone(tmp_path: Path) -> None:
    """Spawned tasks move the barrier nodes up: a gate waiting meanwhile must follow."""
    sp = Spawn(tmp_path)
    gate = {"conditions": [{"kind": "approval", "approvers": ["lead"]}]}
    sp.write(
        [
            {
                "id": "m1",
                "tasks": [
                    {
                        "id": "top",
                        "requires": ["spawner"],
                        "inputs": {"children": [child("k1", sleep=0.5), child("k2", sleep=0.5)]},
                    }
                ],
            },
            {"id": "m2", "entry_gate": gate, "tasks": [{"id": "gated", "requires": ["work"]}]},
            {"id": "m3", "after": ["m1", "m2"], "tasks": [{"id": "last", "requires": ["work"]}]},
        ]
    )
    bg = Background(sp.dir, "run", sp.plan, "--state", sp.state, "--quiet")
    try:
        wait_for(
            lambda: any(r["task"] == "k1" and r["event"] == "start" for r in sp.records()),
            what="the children to run",
        )
        assert cli("approve", "m2.entry", "--as", "lead", "--state", sp.state).code == 0
        result = bg.wait(timeout=60)
    finally:
        bg.stop()
    assert result.code == 0, str(result)
    runs = sp.records()
    start = {r["task"]: r["ts"] for r in runs if r["event"] == "start"}
    end = {r["task"]: r["ts"] for r in runs if r["event"] == "end"}
    assert start["last"] >= max(end["k1"], end["k2"], end["gated"])
    assert status_json(sp.state)["counts"] == {"completed": 5}


PARENT_SH = """#!/bin/sh
echo '[{"id": "s1", "requires": ["work"], "inputs": {"n": 1}},
       {"id": "s2", "requires": ["work"], "needs": ["s1"], "inputs": {"n": 2}}]' \\
  | "$CP" spawn > ids.txt || exit 3
echo '{"id": "bad", "requires": ["work"], "needs": ["nope"]}' | "$CP" spawn 2> refused.txt
echo "refused: $?" >> refused.txt
"$CP" wait-children > children.json
echo "waited: $?" >> refused.txt
echo '{"shell_parent": true}'
"""


def test_a_shell_agent_spawns_and_waits_through_its_control_channel(tmp_path: Path) -> None:
    sp = Spawn(tmp_path)
    parent = tmp_path / "parent.sh"
    parent.write_text(PARENT_SH)
    parent.chmod(0o755)
    sp.write([{"id": "m1", "tasks": [{"id": "top", "requires": ["shell-boss"]}]}])
    plan = yaml.safe_load(sp.plan.read_text())
    cp = str(Path(sys.executable).parent / "counterpoint")
    plan["agents"]["shell-boss"] = {
        "capabilities": ["shell-boss"],
        "runner": {"shell": ["./parent.sh"], "env": {"CP": cp}},
    }
    sp.plan.write_text(yaml.safe_dump(plan))
    result = sp.run()
    assert result.code == 0, str(result)
    assert (tmp_path / "ids.txt").read_text().split() == ["s1", "s2"]
    children = json.loads((tmp_path / "children.json").read_text())
    assert children == {
        "s1": {"state": "completed", "result": {"n": 1, "by": "worker"}, "error": None},
        "s2": {"state": "completed", "result": {"n": 2, "by": "worker"}, "error": None},
    }
    refused = (tmp_path / "refused.txt").read_text()
    assert "needs 'nope', which is no task of the run" in refused
    assert "refused: 1" in refused and "waited: 0" in refused
    assert sp.result("top") == {"shell_parent": True}


def test_spawn_outside_a_task_is_refused_with_exit_2() -> None:
    result = cli("spawn")
    assert result.code == 2
    assert "$COUNTERPOINT_CONTROL is not set" in result.stderr
