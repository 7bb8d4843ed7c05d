"""A Python agent for the Ray backend's tests: it records each attempt and where it ran.

Each call appends JSON lines to ``records.jsonl`` in ``ctx.workdir`` (the plan's
folder), like ``recording.py``: ``start`` (with the process id and the Ray
resources the actor holds), then ``end``, ``cancelled`` or nothing (a killed
worker). The test copies this file next to each plan under a unique module name.

What a task does is steered by its ``inputs``:

- ``sleep``: seconds of real time to work (default 0.05), reporting progress;
- ``kill_first``: on attempt 1, kill the Ray worker running it (SIGKILL) mid-task;
- ``fail_times``: fail the first N attempts, then succeed;
- ``rate_limit_first``: on attempt 1, raise ``RateLimited`` with this retry-after;
- ``write``: ``{key: value}`` staged with ``ctx.state.set``;
- ``read``: a key whose value (``ctx.state.get``) goes into the result;
- ``send``: call ``ctx.send`` (not supported on Ray: the attempt fails).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from typing import Any

from counterpoint.agents.base import RateLimited, TaskContext, TaskFailed
from counterpoint.plan.model import Task

RECORDS = "records.jsonl"


def assigned() -> dict[str, float]:
    """The Ray resources this process holds (empty outside Ray)."""
    try:
        import ray

        if not ray.is_initialized():
            return {}
        held: dict[str, float] = ray.get_runtime_context().get_assigned_resources()
        return held
    except Exception:
        return {}


def record(ctx: TaskContext, event: str, **extra: Any) -> None:
    line = {
        "event": event,
        "task": ctx.task_id,
        "attempt": ctx.attempt,
        "agent": ctx.agent,
        "pid": os.getpid(),
        "t": time.time(),
        **extra,
    }
    with open(ctx.workdir / RECORDS, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


async def work(task: Task, ctx: TaskContext) -> dict[str, Any]:
    inputs = task.inputs
    record(ctx, "start", resources=assigned())
    try:
        if inputs.get("kill_first") and ctx.attempt == 1:
            await asyncio.sleep(0.1)  # mid-task
            os.kill(os.getpid(), signal.SIGKILL)
        if ctx.attempt <= int(inputs.get("fail_times", 0)):
            raise TaskFailed("failed on purpose")
        if inputs.get("rate_limit_first") is not None and ctx.attempt == 1:
            raise RateLimited(float(inputs["rate_limit_first"]))
        if inputs.get("send"):
            await ctx.send("anyone", "ping")
        for key, value in inputs.get("write", {}).items():
            ctx.state.set(key, value)
        ctx.progress(50, "half way")
        await asyncio.sleep(float(inputs.get("sleep", 0.05)))
    except asyncio.CancelledError:
        record(ctx, "cancelled")
        raise
    record(ctx, "end")
    result: dict[str, Any] = {"pid": os.getpid(), "attempt": ctx.attempt}
    if "read" in inputs:
        result["read"] = ctx.state.get(inputs["read"])
    return result


def work_sync(task: Task, ctx: TaskContext) -> dict[str, Any]:
    """A plain function: blocks its thread for ``sleep`` seconds."""
    record(ctx, "start", resources=assigned())
    time.sleep(float(task.inputs.get("sleep", 0.05)))
    record(ctx, "end")
    return {"pid": os.getpid()}
