"""Rollbacks in real runs: a failing task's scope is undone by its tasks' rollback:
actions in reverse dependency order, each once, the shared state reverted; a failing
compensation is retried, escalated and reported; a rollback interrupted by kill -9 goes
on after resume without undoing anything twice; and ``counterpoint rollback``."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import yaml
from run_helpers import PY, Background, cli, wait_for

from counterpoint.runtime.session import start_run

AGENTS = """
import asyncio, json, os, time

async def work(task, ctx):
    await asyncio.sleep(task.inputs.get("sleep", 0.05))
    if task.inputs.get("fail"):
        from counterpoint.agents.base import TaskFailed
        raise TaskFailed("failed on purpose")
    for key in task.writes:
        ctx.state.set(key, f"{task.id}-value")
    return {"done": task.id}

async def undo(task, ctx):
    await asyncio.sleep(task.inputs.get("undo_sleep", 0.05))
    marker = ctx.workdir / f"undo-{task.id}.fails"
    if task.inputs.get("undo_fails") or marker.exists():
        from counterpoint.agents.base import TaskFailed
        raise TaskFailed(f"cannot undo {task.id}")
    with open(ctx.workdir / "undo.jsonl", "a") as f:
        f.write(json.dumps({"task": task.id, "attempt": ctx.attempt, "t": time.time(),
                            "key": ctx.idempotency_key, "rollback": ctx.rollback}) + "\\n")
    return {"undone": task.id}
"""


class Bench:
    def __init__(self, folder: Path) -> None:
        self.dir = folder
        self.state = folder / "state"
        self.plan = folder / "plan.yaml"
        self.module = f"rb_agents_{abs(hash(str(folder))) % 10**8}"
        (folder / f"{self.module}.py").write_text(AGENTS, encoding="utf-8")

    def task(self, tid: str, **fields: Any) -> dict[str, Any]:
        inputs = fields.pop("inputs", {})
        out = {"id": tid, "inputs": inputs, **fields}
        out.setdefault("rollback", {"python": f"{self.module}:undo"})
        return out

    def write(self, phases: list[dict[str, Any]], **top: Any) -> None:
        plan: dict[str, Any] = {
            "version": 1,
            "name": "rollbacks",
            "defaults": {"retries": 0, "timeout": "60s", "estimate": "1s"},
            "settings": {"retry_backoff": "0.05s"},
            "agents": {
                "w": {
                    "capabilities": [],
                    "capacity": 4,
                    "runner": {"python": f"{self.module}:work"},
                }
            },
            "phases": phases,
            **top,
        }
        self.plan.write_text(yaml.safe_dump(plan, sort_keys=False), encoding="utf-8")

    def undone(self) -> list[dict[str, Any]]:
        path = self.dir / "undo.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def run(self) -> tuple[int, Any]:
        from run_helpers import Collect, quick_options

        seen = Collect()
        code = start_run(self.plan, self.state, quick_options(), [seen], sync="normal")
        return code, seen


def three_plus_failure(b: Bench, **late: Any) -> None:
    """Phase p1: a, then b (needs a); c on its own; late (needs b) fails with
    on_failure rollback_phase. Phase p2: e."""
    b.write(
        [
            {
                "id": "p1",
                "milestones": [
                    {
                        "id": "m1",
                        "tasks": [
                            b.task("a", writes=["net.a"]),
                            b.task("b", needs=["a"], writes=["net.b"]),
                            b.task("c", writes=["net.c"]),
                            b.task(
                                "late",
                                needs=["b"],
                                inputs={"fail": True, **late},
                                on_failure="rollback_phase",
                            ),
                        ],
                    }
                ],
            },
            {"id": "p2", "milestones": [{"id": "m2", "tasks": [b.task("e")]}]},
        ]
    )


def test_a_failed_task_rolls_back_its_phase_in_reverse_order_once_each(tmp_path: Path) -> None:
    b = Bench(tmp_path)
    three_plus_failure(b)
    code, seen = b.run()
    assert code == 1
    undone = b.undone()
    assert sorted(u["task"] for u in undone) == ["a", "b", "c"]  # each exactly once
    at = {u["task"]: u["t"] for u in undone}
    assert at["b"] < at["a"]  # b depended on a: b is undone first
    assert all(u["key"] == f"1:{u['task']}:rollback" for u in undone)
    assert all(u["rollback"] == {"rollback_id": 1, "attempt": 1} for u in undone)
    (started,) = seen.kinds("rollback_started")
    assert (started.data["scope_kind"], started.data["scope"]) == ("phase", "p1")
    assert started.data["trigger"] == "late failed"
    (finished,) = seen.kinds("rollback_finished")
    assert finished.data["status"] == "completed" and finished.data["left_undone"] == []
    assert set(finished.data["compensated"]) == {"a", "b", "c"}
    assert {e.task for e in seen.kinds("task_started")} == {"a", "b", "c", "late"}  # not e
    status = json.loads(cli("status", "--state", b.state, "--json").stdout)
    assert status["counts"] == {"rolled_back": 3, "failed": 1, "blocked": 1}
    # the shared state written by a, b and c is gone again
    state = json.loads(cli("state", "--state", b.state, "--json").stdout)
    assert state["state"] == {}
    versions = json.loads(cli("state", "net.a", "--state", b.state, "--json").stdout)
    assert [v["status"] for v in versions["versions"]] == ["reverted"]
    metrics = json.loads(cli("metrics", "--state", b.state, "--json").stdout)
    last = metrics["samples"][-1]["values"]
    assert (last["compensations.done"], last["rollbacks.total"]) == (3, 1)
    assert last["rollbacks.success_rate"] == 1 and last["tasks.rolled_back"] == 3
    report = json.loads(cli("report", "--state", b.state, "--format", "json").stdout)
    assert report["kpis"]["rollback_success_rate"] == 1.0
    (rb,) = report["rollbacks"]
    assert rb["status"] == "completed" and {c["task"] for c in rb["compensations"]} == {
        "a",
        "b",
        "c",
    }


def test_a_compensation_that_keeps_failing_is_escalated_and_reported(tmp_path: Path) -> None:
    b = Bench(tmp_path)
    b.write(
        [
            {
                "id": "p1",
                "milestones": [
                    {
                        "id": "m1",
                        "tasks": [
                            b.task("a"),
                            b.task("b", needs=["a"], inputs={"undo_fails": True}, retries=1),
                            b.task("c"),
                            b.task(
                                "late",
                                needs=["b", "c"],
                                inputs={"fail": True},
                                on_failure="rollback_milestone",
                            ),
                        ],
                    }
                ],
            }
        ]
    )
    code, seen = b.run()
    assert code == 1
    assert [u["task"] for u in b.undone()] == ["c"]  # a waits for b, whose undo failed
    assert [e.task for e in seen.kinds("compensation_retrying")] == ["b"]
    (failed,) = seen.kinds("compensation_failed")
    assert failed.task == "b" and "cannot undo b" in failed.data["error"]
    (left,) = seen.kinds("compensation_left")
    assert left.task == "a" and "b could not be undone first" in left.data["reason"]
    (finished,) = seen.kinds("rollback_finished")
    assert finished.data["status"] == "failed"
    assert sorted(finished.data["left_undone"]) == ["a", "b"]
    opened = [e.data["subject"] for e in seen.kinds("escalation_opened")]
    assert "rollback:b" in opened
    report = json.loads(cli("report", "--state", b.state, "--format", "json").stdout)
    assert report["kpis"]["rollback_success_rate"] == 0.5  # c undone, b not
    metrics = json.loads(
        cli("metrics", "rollbacks.success_rate", "--state", b.state, "--json").stdout
    )
    assert metrics["samples"][-1]["values"] == {"rollbacks.success_rate": 0.5}
    md = cli("report", "--state", b.state).stdout
    assert "left undone: a, b" in md


def test_a_rollback_interrupted_by_kill_goes_on_after_resume(tmp_path: Path) -> None:
    b = Bench(tmp_path)
    three_plus_failure(b)
    spec = yaml.safe_load(b.plan.read_text())
    spec["phases"][0]["milestones"][0]["tasks"][1]["inputs"]["undo_sleep"] = 30  # b's undo
    b.plan.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    run = Background(tmp_path, "run", b.plan, "--state", b.state, "--json")
    try:

        def b_undoing() -> bool:
            events = [json.loads(x) for x in run.out_path.read_text().splitlines() if x]
            started = {e.get("task") for e in events if e["event"] == "compensation_started"}
            return "b" in started and [u["task"] for u in b.undone()] == ["c"]

        wait_for(b_undoing, what="c undone and b's undo running")
        os.kill(run.pid, signal.SIGKILL)
        run.proc.wait()
    finally:
        run.stop()
    spec["phases"][0]["milestones"][0]["tasks"][1]["inputs"]["undo_sleep"] = 0.05
    b.plan.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    code, seen = _resume(b)
    assert code == 1
    undone = b.undone()
    assert sorted(u["task"] for u in undone) == ["a", "b", "c"]  # c not again; b, a once
    assert [e.task for e in seen.kinds("compensation_started")] == ["b", "a"]
    (resumed,) = seen.kinds("rollback_resumed")
    assert resumed.data["rollback_id"] == 1
    (finished,) = seen.kinds("rollback_finished")
    assert finished.data["status"] == "completed"
    assert [e.task for e in seen.kinds("task_started")] == []  # nothing of p1 or p2 ran again


def _resume(b: Bench) -> tuple[int, Any]:
    from run_helpers import Collect, quick_options

    from counterpoint.runtime.session import resume_run

    seen = Collect()
    code = resume_run(b.state, quick_options(), [seen], allow_changed_plan=True, sync="normal")
    return code, seen


def test_counterpoint_rollback_undoes_a_scope_of_a_finished_run(tmp_path: Path) -> None:
    b = Bench(tmp_path)
    b.write(
        [
            {
                "id": "p1",
                "milestones": [
                    {"id": "m1", "tasks": [b.task("a"), b.task("b", needs=["a"])]},
                    {"id": "m2", "tasks": [b.task("c")]},
                ],
            }
        ]
    )
    code, _ = b.run()
    assert code == 0 and b.undone() == []
    result = cli("rollback", "--milestone", "m1", "--state", b.state, "--json")
    assert result.code == 1, str(result)  # the run now has rolled-back work
    assert "resuming it to roll back milestone m1" in result.stderr
    assert [u["task"] for u in b.undone()] == ["b", "a"]
    again = cli("rollback", "--milestone", "m1", "--state", b.state, "--quiet")
    assert again.code == 1 and [u["task"] for u in b.undone()] == ["b", "a"]  # never twice
    events = [json.loads(x) for x in result.stdout.splitlines()]
    (started,) = [e for e in events if e["event"] == "rollback_started"]
    assert started["trigger"] == "operator counterpoint rollback"


def test_rollback_explains_bad_input(tmp_path: Path) -> None:
    b = Bench(tmp_path)
    b.write([{"id": "p1", "milestones": [{"id": "m1", "tasks": [b.task("a")]}]}])
    assert b.run()[0] == 0
    for args, message in (
        ((), "give exactly one of"),
        (("--task", "a", "--phase", "p1"), "give exactly one of"),
        (("--phase", "p9"), "no phase 'p9'; phases: p1"),
        (("--task", "zz"), "no task 'zz'"),
    ):
        result = cli("rollback", *args, "--state", b.state)
        assert result.code == 2 and message in result.stderr, (args, str(result))
        assert "Traceback" not in result.output
    spec = yaml.safe_load(b.plan.read_text())
    spec["phases"][0]["milestones"][0]["tasks"][0]["rollback"] = {"remote": True}
    b.plan.write_text(yaml.safe_dump(spec), encoding="utf-8")
    refused = cli("run", b.plan, "--state", tmp_path / "other")
    assert refused.code == 2, str(refused)
    assert "a remote rollback: action goes back to the remote agent" in refused.stderr
    assert "'w' could run it locally" in refused.stderr


def test_queued_work_of_a_rolled_back_scope_never_starts(tmp_path: Path) -> None:
    b = Bench(tmp_path)
    b.write(
        [
            {
                "id": "p1",
                "milestones": [
                    {
                        "id": "m1",
                        "tasks": [
                            b.task(
                                "first",
                                priority="critical",
                                inputs={"fail": True},
                                on_failure="rollback_milestone",
                            ),
                            b.task("queued1"),
                            b.task("queued2"),
                        ],
                    },
                    {"id": "m2", "tasks": [b.task("elsewhere", inputs={"sleep": 0.3})]},
                ],
            }
        ]
    )
    spec = yaml.safe_load(b.plan.read_text())
    spec["agents"]["w"]["capacity"] = 1  # queued1 and queued2 wait in the ready queue
    b.plan.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    code, seen = b.run()
    assert code == 1
    started = [e.task for e in seen.kinds("task_started")]
    assert "queued1" not in started and "queued2" not in started
    assert "elsewhere" in started  # another milestone goes on
    blocked = {e.task: e.data["reason"] for e in seen.kinds("task_blocked")}
    assert blocked["queued1"].startswith("rolled back (milestone m1: first failed)")


def test_the_action_registered_when_the_task_started_is_the_one_that_undoes_it(
    tmp_path: Path,
) -> None:
    b = Bench(tmp_path)
    b.write([{"id": "p1", "milestones": [{"id": "m1", "tasks": [b.task("a"), b.task("b")]}]}])
    assert b.run()[0] == 0
    rows = sqlite3.connect(b.state / "state.db").execute(
        "SELECT task, attempt, action FROM rollback_actions ORDER BY task"
    )
    assert [(t, n, json.loads(a)) for t, n, a in rows] == [
        ("a", 1, {"python": f"{b.module}:undo"}),
        ("b", 1, {"python": f"{b.module}:undo"}),
    ]
    spec = yaml.safe_load(b.plan.read_text())
    del spec["phases"][0]["milestones"][0]["tasks"][0]["rollback"]  # a's action removed since
    b.plan.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    assert cli("resume", "--state", b.state, "--allow-changed-plan", "--quiet").code == 0
    result = cli("rollback", "--task", "a", "--state", b.state, "--quiet")
    assert result.code == 1, str(result)
    assert [u["task"] for u in b.undone()] == ["a"]  # by the action registered at its start


REMOTE_WORK = """
import json, os, sys, time
record = {"task": os.environ["COUNTERPOINT_TASK_ID"], "attempt": os.environ["COUNTERPOINT_ATTEMPT"],
          "rollback": os.environ.get("COUNTERPOINT_ROLLBACK", ""),
          "key": os.environ["COUNTERPOINT_IDEMPOTENCY_KEY"]}
with open(sys.argv[1], "a") as f:
    f.write(json.dumps(record) + "\\n")
sys.exit(1 if record["task"] == "late" and not record["rollback"] else 0)
"""


def test_a_remote_rollback_action_goes_back_to_the_agent_that_ran_the_task(
    tmp_path: Path,
) -> None:
    from counterpoint.net.tokens import TokenStore

    script = tmp_path / "remote_work.py"
    script.write_text(REMOTE_WORK, encoding="utf-8")
    records = tmp_path / "remote.jsonl"
    plan = {
        "version": 1,
        "name": "remote-rollback",
        "defaults": {"retries": 0, "timeout": "60s", "estimate": "1s"},
        "agents": {"far": {"capabilities": ["x"], "runner": {"remote": True}}},
        "phases": [
            {
                "id": "p1",
                "milestones": [
                    {
                        "id": "m1",
                        "tasks": [
                            {"id": "a", "requires": ["x"], "rollback": {"remote": True}},
                            {
                                "id": "late",
                                "requires": ["x"],
                                "needs": ["a"],
                                "on_failure": "rollback_milestone",
                            },
                        ],
                    }
                ],
            }
        ],
    }
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan), encoding="utf-8")
    state = tmp_path / "state"
    token = TokenStore(state).create("far")
    run = Background(
        tmp_path,
        "run",
        tmp_path / "plan.yaml",
        "--state",
        state,
        "--serve",
        "--port",
        "0",
        "--json",
    )
    agent = None
    try:

        def url() -> str | None:
            for line in run.out_path.read_text().splitlines():
                event = json.loads(line)
                if event["event"] == "hub_listening":
                    return str(event["url"])
            return None

        address = wait_for(url, what="the hub to listen")
        agent = Background(
            tmp_path,
            "agent",
            "--connect",
            address,
            "--id",
            "far",
            "--token",
            token,
            "--capabilities",
            "x",
            "--state",
            tmp_path / "agent-far",
            "--once",
            "--",
            PY,
            str(script),
            str(records),
        )
        result = run.wait(timeout=60)
    finally:
        run.stop()
        if agent is not None:
            agent.stop()
    assert result.code == 1, str(result)
    seen = [json.loads(line) for line in records.read_text().splitlines()]
    assert [(r["task"], r["rollback"]) for r in seen] == [("a", ""), ("late", ""), ("a", "1")]
    assert seen[-1]["key"] == "1:a:rollback" and seen[-1]["attempt"] == "1001"
    events = [json.loads(line) for line in result.stdout.splitlines()]
    (finished,) = [e for e in events if e["event"] == "rollback_finished"]
    assert finished["status"] == "completed" and finished["compensated"] == ["a"]


def test_a_gate_waiting_inside_a_rolled_back_scope_stops_waiting(tmp_path: Path) -> None:
    b = Bench(tmp_path)
    approval = {"conditions": [{"kind": "approval", "approvers": ["lead"]}]}
    b.write(
        [
            {
                "id": "p1",
                "milestones": [
                    {"id": "m1", "exit_gate": approval, "tasks": [b.task("a")]},
                    {
                        "id": "m2",
                        "tasks": [
                            b.task(
                                "slow",
                                inputs={"sleep": 0.5, "fail": True},
                                on_failure="rollback_phase",
                            )
                        ],
                    },
                ],
            }
        ]
    )
    code, seen = b.run()  # without the fix this waits for lead forever (the test times out)
    assert code == 1
    (abandoned,) = seen.kinds("gate_abandoned")
    assert abandoned.data == {"gate": "m1.exit", "reason": "its scope was rolled back"}
    assert [u["task"] for u in b.undone()] == ["a"]
