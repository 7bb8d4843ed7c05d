"""The agents of the previous-release sample journal (make_sample.py, test_replay.py).

Each call appends a JSON line to ``records.jsonl`` next to the plan (``ctx.workdir``):
``{"event": "start"|"end"|"fail"|"rollback", "task", "attempt", "pid"}``, so a test can
tell from the agent's side whether a completed task was executed again. Inputs:
``fail`` (every attempt fails), ``fail_times`` (the first N fail), ``write`` (a dict of
shared-state keys to set).
"""

from __future__ import annotations

import json
import os
from typing import Any

from counterpoint.agents.base import TaskContext, TaskFailed
from counterpoint.plan.model import Task


def _record(ctx: TaskContext, event: str) -> None:
    line = {"event": event, "task": ctx.task_id, "attempt": ctx.attempt, "pid": os.getpid()}
    with open(ctx.workdir / "records.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


async def work(task: Task, ctx: TaskContext) -> dict[str, Any]:
    _record(ctx, "start")
    inputs = task.inputs
    if inputs.get("fail") or ctx.attempt <= int(inputs.get("fail_times", 0)):
        _record(ctx, "fail")
        raise TaskFailed(f"{task.id} failed on purpose (attempt {ctx.attempt})")
    for key, value in dict(inputs.get("write", {})).items():
        ctx.state.set(key, value)
    _record(ctx, "end")
    return {"task": task.id, "value": inputs.get("value", task.id)}


async def undo(task: Task, ctx: TaskContext) -> dict[str, Any]:
    _record(ctx, "rollback")
    return {"undone": task.id}
