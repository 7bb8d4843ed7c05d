"""Scenario 8, rollback under crash: the run is killed at the commits of its compensations
(the fault hook), then resumed until it ends.

Targets: uncompensated completed steps 0; order violations 0 (a step's compensation
starting before the compensation of a completed step that depended on it has finished);
every compensation run at least once.
"""

from __future__ import annotations

import json
import random
import uuid
from pathlib import Path
from typing import Any

from fault_helpers import (
    KILLED,
    figure,
    kill_env,
    resume_forked,
    run_forked,
    size,
    snapshot,
    trace_commits,
    workspace,
)
from run_helpers import Workspace, one_phase, task

AGENT = """
import asyncio, json, os, time

def _note(ctx, event):
    kind = "undo" if ctx.rollback is not None else "do"
    with open(ctx.workdir / "steps.jsonl", "a") as f:
        f.write(json.dumps({"task": ctx.task_id, "kind": kind, "event": event,
                            "pid": os.getpid(), "t": time.time()}) + "\\n")

async def step(task, ctx):
    _note(ctx, "start")
    await asyncio.sleep(0.02)
    if task.inputs.get("fail") and ctx.rollback is None:
        raise RuntimeError("boom")
    _note(ctx, "end")
    return {}
"""

CHAIN = 6


def rollback_plan(ws: Workspace) -> dict[str, list[str]]:
    """a0 -> ... -> a5 -> boom (fails: rollback_milestone), and b0, b1 beside: the needs."""
    module = f"steps_{uuid.uuid4().hex[:10]}"
    (ws.dir / f"{module}.py").write_text(AGENT, encoding="utf-8")
    needs: dict[str, list[str]] = {f"a{i}": [f"a{i - 1}"] if i else [] for i in range(CHAIN)}
    needs |= {"b0": [], "b1": ["b0"]}
    tasks: list[dict[str, Any]] = [
        task(t, needs=n, rollback={"python": f"{module}:step"}) for t, n in needs.items()
    ]
    tasks.append(
        task(
            "boom",
            needs=[f"a{CHAIN - 1}", "b1"],
            on_failure="rollback_milestone",
            inputs={"fail": True},
        )
    )
    ws.write_plan(
        one_phase(
            tasks,
            agents={"w": {"capacity": 3, "runner": {"python": f"{module}:step"}}},
            defaults={"retries": 0, "timeout": "60s", "estimate": "1s"},
        )
    )
    return needs


def steps(ws: Workspace) -> list[dict[str, Any]]:
    path = ws.dir / "steps.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def check(ws: Workspace, needs: dict[str, list[str]]) -> tuple[int, int, int]:
    """(uncompensated completed steps, order violations, compensations run)."""
    records = steps(ws)
    done = {r["task"] for r in records if r["kind"] == "do" and r["event"] == "end"}
    undo_start: dict[str, float] = {}
    undo_end: dict[str, float] = {}
    for r in records:
        if r["kind"] == "undo":
            target = undo_start if r["event"] == "start" else undo_end
            target.setdefault(r["task"], r["t"])
    uncompensated = len(done - set(undo_end))
    violations = sum(
        1
        for t, ns in needs.items()
        for n in ns
        if t in done and n in undo_start and undo_start[n] < undo_end.get(t, float("inf"))
    )
    return (
        uncompensated,
        violations,
        sum(1 for r in records if r["kind"] == "undo" and r["event"] == "start"),
    )


def test_a_rollback_killed_at_its_commits_compensates_everything_in_reverse_order(
    tmp_path: Path,
) -> None:
    probe = workspace(tmp_path / "probe")
    rollback_plan(probe)
    lines = trace_commits(probe, tmp_path / "trace.txt")
    during = [int(x.split()[0]) for x in lines if "compensation" in x or "rollback" in x]
    assert during, "the crash-free run journaled no compensation"
    points = [(w, k) for k in during for w in ("before", "after")]
    rng = random.Random(3)
    if len(points) > size(4, 1000):
        points = rng.sample(points, size(4, 1000))
    kills = uncompensated = violations = compensations = 0
    for i, (when, k) in enumerate(points):
        ws = workspace(tmp_path / f"k{i}")
        needs = rollback_plan(ws)
        code = run_forked(ws, kill_env(when, k))
        kills += code == KILLED
        for attempt in range(4):  # a second crash inside the resumed rollback, then clean
            if code != KILLED:
                break
            again = kill_env("before", rng.randint(2, 6)) if i % 2 and not attempt else None
            code = resume_forked(ws, again)
            kills += code == KILLED
        assert code == 1, code  # the rollback ends the run as failed
        u, v, c = check(ws, needs)
        uncompensated, violations, compensations = (
            uncompensated + u,
            violations + v,
            compensations + c,
        )
        assert (u, v) == (0, 0), (when, k, steps(ws))
        tasks = snapshot(ws.state).tasks
        assert all(tasks[t][0] == "rolled_back" for t in needs), tasks
    figure("rollback_crash.kill_points", len(points))
    figure("rollback_crash.kills", kills)
    figure("rollback_crash.uncompensated_steps", uncompensated)
    figure("rollback_crash.order_violations", violations)
    figure("rollback_crash.compensations_run", compensations)
    assert kills >= len(points)
