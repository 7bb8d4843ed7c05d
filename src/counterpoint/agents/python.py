"""Python callables as agents: ``module:function`` called as ``function(task, ctx)``.

The plan file's folder comes first on the import path, so an ``agents.py``
next to the plan is ``agents:function``. Coroutine functions are awaited on
the run's event loop; plain functions run in a daemon thread. A thread cannot be
interrupted: on cancel or timeout the run stops waiting for it (the attempt is
recorded as cancelled or timed out) while the function may go on until it
returns, so a plain function that may hang should check a deadline itself.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import sys
import threading
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

from counterpoint.agents.base import TaskContext, TaskFailed
from counterpoint.errors import CounterpointError


class RunnerLoadError(CounterpointError, ImportError):
    """A ``module:function`` runner that cannot be imported or is not callable."""


@functools.cache
def _import(target: str, plan_dir: str) -> Callable[..., Any]:
    module_name, _, attr = target.partition(":")
    if plan_dir in sys.path:
        sys.path.remove(plan_dir)
    sys.path.insert(0, plan_dir)
    _forget_if_elsewhere(module_name, Path(plan_dir))
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


def _forget_if_elsewhere(module_name: str, plan_dir: Path) -> None:
    """Drop a cached module of the same name loaded from another folder than this plan's.

    Two plans may each have an ``agents.py``; each must get its own.
    """
    top = module_name.split(".")[0]
    cached = sys.modules.get(top)
    here = (plan_dir / f"{top}.py").exists() or (plan_dir / top / "__init__.py").exists()
    if cached is None or not here:
        return
    origin = Path(getattr(cached, "__file__", "") or "").resolve()
    if plan_dir.resolve() not in origin.parents:
        for name in [n for n in sys.modules if n == top or n.startswith(f"{top}.")]:
            del sys.modules[name]


def load_callable(target: str, plan_dir: Path) -> Callable[..., Any]:
    """Import ``module:function`` with ``plan_dir`` first on the import path."""
    return _import(target, str(plan_dir.resolve()))


class PythonRunner:
    """Runs a task by calling a Python function with the task and its context."""

    def __init__(self, target: str, plan_dir: Path) -> None:
        self.target = target
        self.func = load_callable(target, plan_dir)

    async def __call__(self, ctx: TaskContext) -> dict[str, Any]:
        return _as_result(await call_agent(self.func, ctx.task, ctx), self.target)


async def call_agent(func: Callable[..., Any], *args: Any) -> Any:
    """Await a coroutine function on this loop; call a plain one in a daemon thread (and
    await what it returns if that is awaitable)."""
    if inspect.iscoroutinefunction(func):
        return await func(*args)
    value = await in_daemon_thread(func, *args)
    if inspect.isawaitable(value):
        value = await value
    return value


async def in_daemon_thread(func: Callable[..., Any], *args: Any) -> Any:
    """Call ``func`` in a daemon thread and await its result.

    Unlike ``asyncio.to_thread``, a function that never returns cannot hold up a
    cancelled run at exit: the run stops waiting for it and the process can end.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(value: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    def work() -> None:
        value, error = None, None
        try:
            value = func(*args)
        except BaseException as exc:  # handed over to the awaiting task
            error = exc
        with suppress(RuntimeError):  # the run (and its loop) may be gone already
            loop.call_soon_threadsafe(settle, value, error)

    threading.Thread(target=work, name=f"counterpoint-{func.__name__}", daemon=True).start()
    return await future


def _as_result(value: Any, target: str) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    if isinstance(value, str | int | float | bool | list):
        return {"value": value}
    raise TaskFailed(f"{target} returned a {type(value).__name__}; return a dict or None")
