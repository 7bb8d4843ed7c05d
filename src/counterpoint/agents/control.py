"""The control channel of a program run as a task: spawn subtasks and wait for them.

A shell agent's program (run by the run itself, or by a remote ``counterpoint
agent``) finds in ``$COUNTERPOINT_CONTROL`` the path of a Unix socket that lives
as long as its attempt. It speaks JSON lines: one request object per line, one
reply object per line, in order.

===================================================  =====================================
request                                              reply
===================================================  =====================================
``{"op": "spawn", "tasks": [TASK, ...]}``            ``{"ok": true, "ids": [...]}``
``{"op": "wait_children", "ids": null | [...]}``     ``{"ok": true, "children": {ID:
                                                     {"state", "result", "error"}}}``
anything wrong                                       ``{"ok": false, "error": "..."}``
===================================================  =====================================

``counterpoint spawn`` and ``counterpoint wait-children`` are this protocol's client
for shell scripts (see docs/spawning.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Protocol

from counterpoint.errors import CounterpointError

ENV = "COUNTERPOINT_CONTROL"
MAX_LINE = 4 * 1024 * 1024


class ControlError(CounterpointError):
    """The control channel refused a request or is not there."""


class Spawner(Protocol):
    """What a control channel forwards to: an attempt's spawn handle."""

    async def spawn_async(self, specs: list[Any]) -> list[str]: ...

    async def wait(self, ids: list[str] | None = None) -> dict[str, Any]: ...


@contextlib.asynccontextmanager
async def control_channel(spawner: Spawner | None) -> AsyncIterator[dict[str, str]]:
    """Serve the channel for one attempt; yields the environment to give its program
    (empty when the task cannot spawn)."""
    if spawner is None:
        yield {}
        return
    folder = Path(tempfile.mkdtemp(prefix="cp-ctl-"))
    path = folder / "control.sock"
    server = await asyncio.start_unix_server(
        lambda r, w: _serve(spawner, r, w), path=str(path), limit=MAX_LINE
    )
    os.chmod(path, 0o600)
    try:
        yield {ENV: str(path)}
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1.0)
        shutil.rmtree(folder, ignore_errors=True)


async def _serve(
    spawner: Spawner, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        while line := await reader.readline():
            reply = await _answer(spawner, line)
            writer.write(json.dumps(reply, default=str).encode() + b"\n")
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        pass  # the program went away, or sent a line over the limit
    finally:
        writer.close()


async def _answer(spawner: Spawner, line: bytes) -> dict[str, Any]:
    try:
        request = json.loads(line)
    except ValueError as exc:
        return {"ok": False, "error": f"the request is not valid JSON: {exc}"}
    if not isinstance(request, dict):
        return {"ok": False, "error": "a request must be a JSON object"}
    op = request.get("op")
    try:
        if op == "spawn":
            tasks = request.get("tasks")
            if not isinstance(tasks, list):
                return {"ok": False, "error": "'tasks' must be a list of task definitions"}
            return {"ok": True, "ids": await spawner.spawn_async(tasks)}
        if op == "wait_children":
            ids = request.get("ids")
            if ids is not None and not (
                isinstance(ids, list) and all(isinstance(i, str) for i in ids)
            ):
                return {"ok": False, "error": "'ids' must be a list of task ids, or null"}
            outcomes = await spawner.wait(ids)
            return {"ok": True, "children": {k: outcome_json(v) for k, v in outcomes.items()}}
    except CounterpointError as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": False, "error": f"unknown op {op!r}: use spawn or wait_children"}


def outcome_json(outcome: Any) -> dict[str, Any]:
    """A child's outcome as JSON (a ChildOutcome, or a dict already)."""
    if is_dataclass(outcome) and not isinstance(outcome, type):
        data = asdict(outcome)
    else:
        data = dict(outcome)
    return {k: data.get(k) for k in ("state", "result", "error")}


def request(op: str, path: str | None = None, **fields: Any) -> dict[str, Any]:
    """Send one request on the channel in ``$COUNTERPOINT_CONTROL`` and return the reply;
    ControlError when the channel is missing or the reply says ``ok: false``."""
    path = path or os.environ.get(ENV)
    if not path:
        raise ControlError(
            f"${ENV} is not set: only a task's program (run by counterpoint) can do this"
        )
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(path)
            sock.sendall(json.dumps({"op": op, **fields}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        raise ControlError(
            f"cannot reach the control channel {path}: {exc.strerror or exc}"
        ) from None
    try:
        reply = json.loads(data)
    except ValueError:
        raise ControlError("the control channel closed without a reply") from None
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", "refused")))
    return reply  # type: ignore[no-any-return]
