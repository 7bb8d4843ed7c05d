"""A Python agent for run tests that records every execution it performs.

Each call appends JSON lines to ``records.jsonl`` in the plan's folder
(``ctx.workdir``): one ``start`` line, then one of ``end``, ``fail``,
``rate_limited`` or ``cancelled``. Every line carries the task id, attempt,
agent, pid and ``time.time()``, so tests can assert what really happened
(order, overlap, rates) without trusting the engine's own bookkeeping.

What a task does is steered by its ``inputs``:

- ``sleep``: seconds of real time to work (default 0.05);
- ``first_sleep``: seconds to work on attempt 1 instead (a task that hangs once);
- ``fail``: true to fail every attempt;
- ``fail_times``: fail the first N attempts, then succeed;
- ``rate_limit_first``: on attempt 1, raise ``RateLimited`` with this retry-after;
- ``error``: the failure message (default "failed on purpose");
- ``usage``: reported back as the result's ``usage`` (e.g. ``{"tokens": 30}``).

The test copies this file next to each plan under a unique module name, because
Python runners are imported once per process and module name.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from counterpoint.agents.base import RateLimited, TaskContext, TaskFailed
from counterpoint.plan.model import Task

RECORDS = "records.jsonl"
DEFAULT_SLEEP_S = 0.05


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
    record(ctx, "start")
    try:
        if inputs.get("fail") or ctx.attempt <= int(inputs.get("fail_times", 0)):
            record(ctx, "fail")
            raise TaskFailed(str(inputs.get("error", "failed on purpose")))
        retry_after = inputs.get("rate_limit_first")
        if retry_after is not None and ctx.attempt == 1:
            record(ctx, "rate_limited")
            raise RateLimited(float(retry_after))
        sleep = inputs.get("sleep", DEFAULT_SLEEP_S)
        if ctx.attempt == 1:
            sleep = inputs.get("first_sleep", sleep)
        await asyncio.sleep(float(sleep))
    except asyncio.CancelledError:
        record(ctx, "cancelled")
        raise
    record(ctx, "end")
    result: dict[str, Any] = {"task": task.id, "attempt": ctx.attempt}
    if "usage" in inputs:
        result["usage"] = inputs["usage"]
    return result


def work_sync(task: Task, ctx: TaskContext) -> dict[str, Any]:
    """A plain (blocking) function agent: works ``sleep`` seconds in its worker thread.

    It also stops early once a file named ``stop`` appears in the plan's folder, so a
    test can always release the thread when it is done.
    """
    record(ctx, "start")
    stop = ctx.workdir / "stop"
    deadline = time.monotonic() + float(task.inputs.get("sleep", DEFAULT_SLEEP_S))
    while time.monotonic() < deadline and not stop.exists():
        time.sleep(0.02)
    record(ctx, "end")
    return {"task": task.id, "attempt": ctx.attempt}
