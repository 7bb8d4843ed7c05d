"""Stopping the commands counterpoint starts: each runs in its own process group, so a
stop reaches every process the command started."""

from __future__ import annotations

import asyncio
import os
import signal
from contextlib import suppress


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to a process group that may already be gone."""
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def stop_group(proc: asyncio.subprocess.Process, grace_s: float) -> None:
    """SIGTERM the command's process group, then SIGKILL it after ``grace_s``; wait for
    the command (even when the caller is being cancelled)."""
    signal_group(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), grace_s)
    except TimeoutError:
        pass
    finally:
        signal_group(proc.pid, signal.SIGKILL)
        with suppress(ProcessLookupError):
            proc.kill()
        await asyncio.shield(proc.wait())
