"""Remote agents spawn subtasks: the spawn and wait_children frames, on the wire and end
to end (a served run, a real `counterpoint agent`, its program using `counterpoint spawn`)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from run_helpers import cli
from test_hub_run import Bench, bench, journal, remote  # noqa: F401 - the bench fixture
from test_hub_wire import run, wire

from counterpoint.agents.base import TaskContext
from counterpoint.plan.model import Task


class RecordingSpawner:
    """Stands in for the run's spawn handle at the wire level (the end-to-end test below
    uses the real one)."""

    def __init__(self) -> None:
        self.spawned: list[list[Any]] = []

    async def spawn_async(self, specs: list[Any]) -> list[str]:
        self.spawned.append(specs)
        return [str(s.get("id", f"auto.{i}")) for i, s in enumerate(specs)]

    async def wait(self, ids: list[str] | None = None) -> dict[str, Any]:
        return {i: {"state": "completed", "result": {"i": i}, "error": None} for i in ids or []}


def test_only_the_agent_running_a_task_may_spawn_for_it_and_bad_frames_are_named(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with wire(tmp_path) as w:
            builder, _ = await w.join("builder")
            tester, _ = await w.join("tester")
            spawner = RecordingSpawner()
            ctx = TaskContext(
                run_id="1",
                task=Task(id="b1"),
                attempt=1,
                agent="builder",
                state_dir=tmp_path,
                workdir=tmp_path,
                log_dir=tmp_path / "logs",
                spawner=spawner,
            )
            job = asyncio.create_task(w.hub.run_task("builder", ctx))
            w.background.append(job)
            await builder.expect("assign", task_id="b1", attempt=1)

            spawn = {"op": "spawn", "request": "r1", "task_id": "b1", "attempt": 1}
            await tester.send({**spawn, "seq": 1, "tasks": [{"id": "x"}]})
            frame = await tester.error("not_your_task", "task_id", seq=1)
            assert "'b1'" in frame["message"]
            await builder.send({**spawn, "seq": 1, "tasks": "x"})
            await builder.error("invalid_frame", "tasks", seq=1)
            await builder.send({**spawn, "seq": 2, "attempt": 2, "tasks": []})
            await builder.error("stale_attempt", "attempt", seq=2)
            await builder.send({**spawn, "seq": 3, "request": "", "tasks": []})
            await builder.error("invalid_frame", "request", seq=3)
            assert spawner.spawned == []

            await builder.send({**spawn, "seq": 4, "tasks": [{"id": "c1"}, {"id": "c2"}]})
            reply = await builder.expect("reply", request="r1", ok=True)
            assert reply["ids"] == ["c1", "c2"]
            wait = {"op": "wait_children", "request": "r2", "task_id": "b1", "attempt": 1}
            await builder.send({**wait, "seq": 5, "ids": ["c1"]})
            reply = await builder.expect("reply", request="r2", ok=True)
            assert reply["children"] == {
                "c1": {"state": "completed", "result": {"i": "c1"}, "error": None}
            }
            assert spawner.spawned == [[{"id": "c1"}, {"id": "c2"}]]
            # a duplicate (a resend after a reconnect) is not applied again
            await builder.send({**spawn, "seq": 4, "tasks": [{"id": "c1"}, {"id": "c2"}]})
            await asyncio.sleep(0.2)
            assert spawner.spawned == [[{"id": "c1"}, {"id": "c2"}]]
            assert not job.done()

    run(scenario)


PARENT_SH = """#!/bin/sh
echo '[{"id": "local-child", "requires": ["local"], "inputs": {"n": 7}},
       {"id": "bad", "requires": ["nobody-has-this"]}]' | "$CP" spawn 2> refused.txt
echo '{"id": "local-child", "requires": ["local"], "inputs": {"n": 7}}' | "$CP" spawn > ids.txt
"$CP" wait-children > children.json || exit 4
echo '{"remote_parent": true}'
"""

CHILD_PY = """
def work(task, ctx):
    return {"n": task.inputs["n"] * 6, "by": ctx.agent}
"""


def test_a_remote_agents_program_spawns_a_child_the_run_gives_to_a_local_agent(
    bench: Bench,  # noqa: F811 - the fixture
) -> None:
    (bench.dir / "parent.sh").write_text(PARENT_SH)
    (bench.dir / "parent.sh").chmod(0o755)
    (bench.dir / "childwork.py").write_text(CHILD_PY)
    plan = {
        "version": 1,
        "name": "remote-spawn",
        "defaults": {"retries": 0},
        "agents": {
            "far": remote("far"),
            "near": {"capabilities": ["local"], "runner": {"python": "childwork:work"}},
        },
        "phases": [
            {"id": "p", "milestones": [{"id": "m", "tasks": [{"id": "top", "requires": ["far"]}]}]}
        ],
    }
    bench.plan.write_text(yaml.safe_dump(plan))
    token = bench.token("far")
    run_proc, url = bench.serve_run()
    cp = str(Path(sys.executable).parent / "counterpoint")
    args = ["agent", "--connect", url, "--id", "far", "--capabilities", "far"]
    args += ["--workdir", str(bench.dir), "--state", str(bench.dir / "agent-far"), "--once"]
    bench.start(*args, "--", "./parent.sh", COUNTERPOINT_TOKEN=token, CP=cp)
    result = run_proc.wait(timeout=60)
    assert result.code == 0, str(result)

    assert (bench.dir / "ids.txt").read_text().split() == ["local-child"]
    assert (
        "no agent can run it (requires ['nobody-has-this'])"
        in (bench.dir / "refused.txt").read_text()
    )
    children = json.loads((bench.dir / "children.json").read_text())
    assert children == {
        "local-child": {"state": "completed", "result": {"n": 42, "by": "near"}, "error": None}
    }
    j = journal(bench.state)
    assert j.tasks["top"].result == {"remote_parent": True}
    assert j.tasks["local-child"].agent == "near"
    assert [(t, d["parent"]) for t, d in j.of_kind("task_spawned")] == [("local-child", "top")]
    status = cli("status", "--json", "--state", bench.state)
    assert json.loads(status.stdout)["counts"] == {"completed": 2}
