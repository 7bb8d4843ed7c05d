"""Python agents for docs/examples/hello-run: ``runner: {python: "hello_agents:NAME"}``.

Each is called as ``NAME(task, ctx)``. Set HELLO_FAIL to a task id to make that
task fail (to try retries, failures and ``resume --retry-failed``).
"""

from __future__ import annotations

import os
from typing import Any

from counterpoint import TaskContext, TaskFailed
from counterpoint.plan.model import Task


async def write(task: Task, ctx: TaskContext) -> dict[str, Any]:
    """An async agent: awaited on the run's event loop, so it can be cancelled at any await."""
    if os.environ.get("HELLO_FAIL") == task.id:
        raise TaskFailed(f"asked to fail (HELLO_FAIL={task.id})")
    for step in (1, 2, 3):
        await ctx.sleep(0.1)  # 0.1 s of plan time (multiplied by --time-scale)
        ctx.progress(step * 100 / 3, f"step {step} of 3")
    ctx.log.info("%s attempt %d on %s", ctx.task_id, ctx.attempt, ctx.agent)
    return {"greeting": f"hello, {ctx.inputs.get('who', 'world')}", "usage": {"tokens": 120}}


def count(task: Task, ctx: TaskContext) -> int:
    """A plain function: run in a worker thread; a non-dict result becomes {"value": ...}."""
    return len(task.needs)
