"""Python callables as agents: ``module:function`` called as ``function(task, ctx)``.

The plan file's folder comes first on the import path, so an ``agents.py``
next to the plan is ``agents:function``. Coroutine functions are awaited on
the run's event loop; plain functions run in a worker thread (they cannot be
interrupted there: on cancel the run stops waiting for them and says so).
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from counterpoint.agents.base import TaskContext, TaskFailed
from counterpoint.errors import CounterpointError


class RunnerLoadError(CounterpointError, ImportError):
    """A ``module:function`` runner that cannot be imported or is not callable."""


@functools.cache
def _import(target: str, plan_dir: str) -> Callable[..., Any]:
    module_name, _, attr = target.partition(":")
    if plan_dir not in sys.path:
        sys.path.insert(0, plan_dir)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise RunnerLoadError(
            f"cannot import {module_name!r} for runner {target!r}: {exc}"
        ) from exc
    func = getattr(module, attr, None)
    if not callable(func):
        raise RunnerLoadError(f"{target!r}: module {module_name!r} has no callable {attr!r}")
    return func  # type: ignore[no-any-return]


def load_callable(target: str, plan_dir: Path) -> Callable[..., Any]:
    """Import ``module:function`` with ``plan_dir`` first on the import path."""
    return _import(target, str(plan_dir.resolve()))


class PythonRunner:
    """Runs a task by calling a Python function with the task and its context."""

    def __init__(self, target: str, plan_dir: Path) -> None:
        self.target = target
        self.func = load_callable(target, plan_dir)

    async def __call__(self, ctx: TaskContext) -> dict[str, Any]:
        if inspect.iscoroutinefunction(self.func):
            value = await self.func(ctx.task, ctx)
        else:
            value = await asyncio.to_thread(self.func, ctx.task, ctx)
            if inspect.isawaitable(value):
                value = await value
        return _as_result(value, self.target)


def _as_result(value: Any, target: str) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    if isinstance(value, str | int | float | bool | list):
        return {"value": value}
    raise TaskFailed(f"{target} returned a {type(value).__name__}; return a dict or None")
