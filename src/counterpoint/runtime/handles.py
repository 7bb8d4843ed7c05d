"""Handles a task's attempt gets onto the run's event loop.

A handle is made on the run's loop when an attempt starts. A coroutine agent
awaits its methods there; a plain agent, which runs in a worker thread, calls
the blocking variants, which hand the work to the loop and wait for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from counterpoint.agents.base import TaskFailed

T = TypeVar("T")


class LoopBound:
    """Remembers the run's loop; :meth:`blocking` runs a coroutine there from a thread."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()

    def on_loop(self) -> bool:
        """True when called from the run's loop (a coroutine agent), not from a thread."""
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    def blocking(self, work: Coroutine[Any, Any, T], name: str) -> T:
        """Run ``work`` on the run's loop and wait for its result in this thread."""
        if self.on_loop():
            work.close()
            raise TaskFailed(f"{name}_sync() blocks: an async agent awaits {name}()")
        return asyncio.run_coroutine_threadsafe(work, self.loop).result()
