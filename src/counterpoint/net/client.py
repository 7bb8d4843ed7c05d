"""A remote agent (``counterpoint agent``): connects to a hub, runs the tasks it is given.

Each assigned task runs as a local program with the shell runner's semantics
(placeholders, the payload on stdin, the result from ``$COUNTERPOINT_RESULT_FILE``
or the last stdout line, exit code 75 for a rate limit, the process group killed
on cancellation). A stdout line that is a JSON object with a ``progress`` number
(``{"progress": 40, "message": "copying"}``) becomes a status update.

Delivery survives disconnects: every frame the agent sends is numbered and kept
until the hub acknowledges it (after journaling it); on reconnect (exponential
backoff with full jitter) the agent resends what is unacknowledged and the hub
drops what it has already processed. Frames from the hub are handled the same
way in the other direction. Heartbeats go out every ``heartbeat_s`` the hub asks
for, one timer per connection; a hub silent for three heartbeats is presumed
gone and the agent reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from counterpoint.agents.base import RateLimited, TaskContext, TaskFailed
from counterpoint.agents.shell import ShellRunner
from counterpoint.errors import CounterpointError
from counterpoint.messaging.protocol import Status, status_update
from counterpoint.net import frames as fr
from counterpoint.net.agent_workspace import AgentWorkspaces
from counterpoint.plan.model import Runner, Task

log = logging.getLogger("counterpoint.agent")

OPEN_TIMEOUT_S = 10.0


class AgentRefused(CounterpointError):
    """The hub refused this agent for good (bad token, unknown agent, capabilities)."""


@dataclass
class AgentConfig:
    url: str
    agent: str
    token: str
    capabilities: list[str]
    command: list[str] | str
    capacity: int = 1
    use_shell: bool = False
    workdir: Path = field(default_factory=Path.cwd)
    state_dir: Path = field(default_factory=lambda: Path(".counterpoint-agent"))
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    kill_grace_s: float = 5.0
    once: bool = False  # stop when the hub says its run finished
    #: How it answers calls for proposals and ballots: ``module:function`` (imported from
    #: ``workdir``) or a command (the question on stdin, the answer on stdout); None: the
    #: defaults (propose the task's estimate at its load; abstain). See docs/coordination.md.
    bid: str | None = None
    vote: str | None = None
    #: A CA certificate file (PEM) to trust for a ``wss://`` hub besides the system's
    #: (a self-signed or private CA's hub certificate).
    tls_ca: str | None = None

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of a ``wss://`` hub (None for ``ws://``)."""
        if not self.url.startswith("wss:"):
            return None
        context = ssl.create_default_context()
        if self.tls_ca:
            context.load_verify_locations(cafile=self.tls_ca)
        return context


class AgentClient:
    """One remote agent process's connection to the hub, kept alive across failures."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.session = str(uuid.uuid4())
        self.runner = ShellRunner(
            Runner(shell=config.command, use_shell=config.use_shell),
            config.workdir,
            kill_grace_s=config.kill_grace_s,
        )
        self.workspaces = AgentWorkspaces(
            config.url, config.token, config.state_dir, tls_ca=config.tls_ca
        )
        self.out_seq = 0
        self.outbox: OrderedDict[int, str] = OrderedDict()
        self.in_seq = 0
        self.running: dict[str, tuple[int, asyncio.Task[None]]] = {}
        self.requests: dict[str, asyncio.Future[dict[str, Any]]] = {}  # spawn, wait_children
        self.heartbeat_s = 30.0
        self.max_bytes = fr.MAX_MESSAGE_BYTES
        self.errors: list[dict[str, Any]] = []
        self.connections = 0
        self._queue: asyncio.Queue[str] | None = None
        self.ws: ClientConnection | None = None  # the live connection, if any
        self._stop = asyncio.Event()
        self._heard = 0.0
        self.answering: set[asyncio.Task[None]] = set()  # bids and votes being worked out

    # -- public -----------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Serve until :meth:`stop`; raises :class:`AgentRefused` when the hub refuses us."""
        failures = 0
        try:
            while not self._stop.is_set():
                welcomed = await self._connect_once()
                failures = 0 if welcomed else failures + 1
                if self._stop.is_set():
                    break
                ceiling = min(
                    self.config.backoff_max_s, self.config.backoff_initial_s * 2**failures
                )
                delay = random.uniform(ceiling / 2, ceiling)  # "equal jitter": never 0
                log.info("reconnecting in %.2fs", delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
        finally:
            await self._cancel_all()

    # -- one connection -------------------------------------------------------------------

    async def _connect_once(self) -> bool:
        url = f"{self.config.url.rstrip('/')}/agents/{self.config.agent}/ws"
        try:
            async with websockets.connect(
                url,
                additional_headers={"Authorization": f"Bearer {self.config.token}"},
                open_timeout=OPEN_TIMEOUT_S,
                ping_interval=None,
                max_size=None,
                close_timeout=2,
                compression=None,  # small JSON frames: deflate costs more than it saves
                ssl=self.config.ssl_context(),
            ) as ws:
                return await self._session(ws)
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise AgentRefused(
                    f"the hub at {self.config.url} refused agent {self.config.agent!r} "
                    f"(HTTP {status}): check the token (counterpoint token create "
                    f"{self.config.agent})"
                ) from None
            log.warning("the hub answered HTTP %d; will retry", status)
        except (OSError, InvalidHandshake, TimeoutError, ConnectionClosed) as exc:
            log.warning("cannot reach the hub at %s: %s", url, exc or type(exc).__name__)
        return False

    async def _session(self, ws: ClientConnection) -> bool:
        await ws.send(
            fr.encode(
                {
                    "op": "hello",
                    "version": "1.0",
                    "session": self.session,
                    "capabilities": self.config.capabilities,
                    "capacity": self.config.capacity,
                    "last_seq": self.in_seq,
                }
            )
        )
        try:
            first = await asyncio.wait_for(ws.recv(), OPEN_TIMEOUT_S)
        except ConnectionClosed as exc:
            self._check_close(exc)
            return False
        welcome = fr.decode(first, 2**31)
        if welcome.get("op") != "welcome":
            with contextlib.suppress(ConnectionClosed, TimeoutError):
                await asyncio.wait_for(ws.wait_closed(), 2)
            raise AgentRefused(
                f"the hub refused agent {self.config.agent!r}: {welcome.get('message')}"
            )
        await self._welcomed(welcome)
        self.connections += 1
        self.ws = ws
        queue = self._queue = asyncio.Queue()
        writer = asyncio.create_task(self._write(ws, queue))
        beat = asyncio.create_task(self._heartbeats(ws))
        for text in self.outbox.values():
            queue.put_nowait(text)
        stopper = asyncio.create_task(self._stop.wait())
        try:
            reader = asyncio.create_task(self._read(ws))
            await asyncio.wait({reader, stopper, writer}, return_when=asyncio.FIRST_COMPLETED)
            reader.cancel()
            failure = None
            if reader.done() and not reader.cancelled():
                failure = reader.exception()
            if isinstance(failure, ConnectionClosed):
                self._check_close(failure)
            elif failure is not None:
                raise failure
        finally:
            self._queue = None
            self.ws = None
            for task in (beat, writer, stopper):
                task.cancel()
        return True

    def _check_close(self, exc: ConnectionClosed) -> None:
        code = exc.rcvd.code if exc.rcvd is not None else None
        if code == fr.CLOSE_RUN_FINISHED:
            log.info("the run finished")
            if self.config.once:
                self.stop()
            return
        if code in fr.FATAL_CLOSE_CODES:
            reason = exc.rcvd.reason if exc.rcvd is not None else ""
            raise AgentRefused(f"the hub closed the connection ({code} {reason})".strip())
        log.warning("connection closed (%s)", code)

    async def _welcomed(self, welcome: dict[str, Any]) -> None:
        self.heartbeat_s = float(welcome.get("heartbeat_s", 30.0))
        self.max_bytes = int(welcome.get("max_message_bytes", fr.MAX_MESSAGE_BYTES))
        self._heard = time.monotonic()
        if welcome.get("resumed"):
            self._acked(int(welcome.get("last_seq", 0)))
            return
        # A new session on the hub: it forgot our old tasks (they went to other agents).
        self.in_seq = 0
        await self._cancel_all()

    async def _write(self, ws: ClientConnection, queue: asyncio.Queue[str]) -> None:
        while True:
            await ws.send(await queue.get())

    async def _read(self, ws: ClientConnection) -> None:
        async for text in ws:
            self._heard = time.monotonic()
            try:
                frame = fr.decode(text, 2**31)
            except fr.FrameError as exc:
                log.warning("ignored a frame from the hub: %s", exc)
                continue
            self._on_frame(frame)

    async def _heartbeats(self, ws: ClientConnection) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            if time.monotonic() - self._heard > 3 * self.heartbeat_s:
                log.warning("the hub is silent; reconnecting")
                await ws.close(1001, "hub silent")
                return
            self._raw({"op": "heartbeat", "running": sorted(self.running)})

    # -- frames from the hub ---------------------------------------------------------------

    def _on_frame(self, frame: dict[str, Any]) -> None:
        op = frame.get("op")
        if op == "ack":
            self._acked(int(frame.get("seq", 0)))
        elif op == "error":
            self._on_error(frame)
        elif op in ("assign", "cancel", "msg", "reply", "cfp", "ballot"):
            seq = int(frame.get("seq", 0))
            if seq <= self.in_seq:
                self._raw({"op": "ack", "seq": self.in_seq})
                return
            self.in_seq = seq
            getattr(self, f"_on_{op}")(frame)
            self._raw({"op": "ack", "seq": seq})

    def _on_error(self, frame: dict[str, Any]) -> None:
        self.errors.append(frame)
        log.warning(
            "the hub refused a frame: %s (%s)", frame.get("message"), frame.get("field", "")
        )
        seq = frame.get("seq")
        if isinstance(seq, int):
            self.outbox.pop(seq, None)  # processed (refused): do not resend

    def _on_assign(self, frame: dict[str, Any]) -> None:
        task_id, attempt = str(frame["task_id"]), int(frame["attempt"])
        current = self.running.get(task_id)
        if current is not None and current[0] == attempt:
            return
        if current is not None:
            current[1].cancel()
        job = asyncio.create_task(self._run_task(task_id, attempt, frame.get("payload") or {}))
        self.running[task_id] = (attempt, job)

    def _on_cancel(self, frame: dict[str, Any]) -> None:
        current = self.running.get(str(frame.get("task_id")))
        if current is not None and current[0] == frame.get("attempt"):
            current[1].cancel()

    def _on_reply(self, frame: dict[str, Any]) -> None:
        """The hub's answer to a spawn or wait_children request."""
        waiting = self.requests.pop(str(frame.get("request")), None)
        if waiting is not None and not waiting.done():
            waiting.set_result(frame)

    async def ask(self, op: str, task_id: str, attempt: int, **fields: Any) -> dict[str, Any]:
        """Send a spawn or wait_children request for a running attempt; its reply."""
        request = uuid.uuid4().hex
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.requests[request] = answer
        try:
            self.send(
                {"op": op, "request": request, "task_id": task_id, "attempt": attempt, **fields}
            )
            reply = await answer
        finally:
            self.requests.pop(request, None)
        if not reply.get("ok"):
            raise TaskFailed(str(reply.get("error") or "refused by the hub"))
        return reply

    def _on_cfp(self, frame: dict[str, Any]) -> None:
        """A call for proposals: answer it (a ``bid`` frame) before its deadline."""
        self._start_answer("cfp", frame)

    def _on_ballot(self, frame: dict[str, Any]) -> None:
        """A ballot: answer it (a ``vote`` frame) before its deadline."""
        self._start_answer("ballot", frame)

    def _start_answer(self, kind: str, frame: dict[str, Any]) -> None:
        job = asyncio.create_task(self._answer(kind, frame))
        self.answering.add(job)
        job.add_done_callback(self.answering.discard)

    async def _answer(self, kind: str, frame: dict[str, Any]) -> None:
        body = {k: v for k, v in frame.items() if k not in ("op", "seq")}
        name = "call" if kind == "cfp" else "ballot"
        reply: dict[str, Any] = {"op": "bid" if kind == "cfp" else "vote", name: body.get(name)}
        seconds = body.get("deadline_s")
        limit = float(seconds) if isinstance(seconds, int | float) and seconds > 0 else 60.0
        try:
            async with asyncio.timeout(limit):
                reply.update(await self._respond(kind, body))
        except TimeoutError:
            log.warning("%s %s: no answer before its deadline", name, body.get(name))
            return
        except Exception as exc:  # a bidder that fails refuses; a voter abstains
            why = str(exc) or type(exc).__name__
            reply.update(
                {"refuse": f"the bidder failed: {why}"}
                if kind == "cfp"
                else {"abstain": f"the voter failed: {why}"}
            )
        try:
            self.send(reply)
        except TaskFailed as exc:
            log.warning("cannot answer %s %s: %s", name, body.get(name), exc)

    async def _respond(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        from counterpoint.runtime.canvass import (
            call_python,
            call_shell,
            is_python_target,
            takes_two,
        )

        target = self.config.bid if kind == "cfp" else self.config.vote
        if target is None:
            return self._default_answer(kind, body)
        if is_python_target(target):
            from counterpoint.agents.python import load_callable

            func = load_callable(target, self.config.workdir)
            if kind == "cfp":
                task = _task_of(body.get("task") or {})
                value = await call_python(func, (task, body) if takes_two(func) else (task,))
            else:
                value = await call_python(func, (body,))
        else:
            env = {"COUNTERPOINT_AGENT": self.config.agent, "COUNTERPOINT_QUESTION": kind}
            value = await call_shell(
                target,
                body,
                self.config.workdir,
                env,
                use_shell=self.config.use_shell,
                kill_grace_s=self.config.kill_grace_s,
            )
        return _as_answer(kind, value)

    def _default_answer(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        """Without ``--bid``: propose the task's estimate at the agent's load (the run's
        view or its own, the higher); without ``--vote``: abstain."""
        if kind != "cfp":
            return {"abstain": "no vote responder"}
        task = body.get("task") or {}
        estimate = task.get("estimate_s", 0.0)
        own = len(self.running) / max(1, self.config.capacity)
        told = body.get("load", 0.0)
        load = max(own, float(told) if isinstance(told, int | float) else 0.0)
        return {"duration_s": float(estimate or 0.0), "cost": 0.0, "load": load}

    def _on_msg(self, frame: dict[str, Any]) -> None:
        """Messages for this agent are appended to ``<state>/inbox.jsonl``."""
        inbox = self.config.state_dir / "inbox.jsonl"
        inbox.parent.mkdir(parents=True, exist_ok=True)
        with inbox.open("a", encoding="utf-8") as f:
            f.write(json.dumps(frame.get("message"), separators=(",", ":")) + "\n")

    # -- frames to the hub -------------------------------------------------------------------

    def _acked(self, seq: int) -> None:
        while self.outbox and next(iter(self.outbox)) <= seq:
            self.outbox.popitem(last=False)

    def _raw(self, frame: dict[str, Any]) -> None:
        if self._queue is not None:
            self._queue.put_nowait(fr.encode(frame))

    def send(self, frame: dict[str, Any]) -> None:
        """Number ``frame`` and send it now or after the next reconnect, until acknowledged."""
        self.out_seq += 1
        frame["seq"] = self.out_seq
        text = fr.encode(frame)
        if len(text.encode("utf-8")) > self.max_bytes:
            self.out_seq -= 1
            raise TaskFailed(f"a frame of {len(text)} bytes is over the hub's {self.max_bytes}")
        self.outbox[self.out_seq] = text
        if self._queue is not None:
            self._queue.put_nowait(text)

    # -- running tasks ------------------------------------------------------------------------

    async def _run_task(self, task_id: str, attempt: int, payload: dict[str, Any]) -> None:
        frame: dict[str, Any] = {"op": "result", "task_id": task_id, "attempt": attempt}
        try:
            ctx = self._context(task_id, attempt, payload)
            spec = payload.get("workspace")
            if isinstance(spec, dict):  # workspace: worktree, on a branch of the run
                ctx.workdir = await asyncio.to_thread(
                    self.workspaces.checkout, task_id, attempt, spec
                )
            self._status(task_id, 0.0, "started")
            result = await self.runner(ctx)
            if isinstance(spec, dict):
                result["workspace"] = await asyncio.to_thread(
                    self.workspaces.push, task_id, attempt, spec, ctx.workdir
                )
            frame.update(status="completed", result=result)
        except asyncio.CancelledError:
            self.running.pop(task_id, None)
            raise
        except RateLimited as exc:
            frame.update(status="rate_limited", retry_after_s=exc.retry_after_s, error=str(exc))
        except Exception as exc:
            frame.update(status="failed", error=str(exc) or type(exc).__name__)
        if self.running.get(task_id, (None,))[0] == attempt:
            del self.running[task_id]
        try:
            self.send(frame)
        except TaskFailed as exc:
            self.send({**frame, "status": "failed", "result": {}, "error": str(exc)})

    def _context(self, task_id: str, attempt: int, payload: dict[str, Any]) -> TaskContext:
        spec = payload.get("task") or {}
        try:
            task = Task.model_validate(
                {
                    "id": task_id,
                    "name": spec.get("name") or "",
                    "instructions": spec.get("instructions") or "",
                    "inputs": spec.get("inputs") or {},
                    "requires": spec.get("requires") or [],
                    "reads": spec.get("reads") or [],
                    "writes": spec.get("writes") or [],
                }
            )
        except ValueError as exc:
            raise TaskFailed(f"the hub sent an invalid task: {exc}") from None
        logs = self.config.state_dir / "logs" / _safe(task_id)
        return TaskContext(
            run_id=str(payload.get("run_id", "")),
            task=task,
            attempt=attempt,
            agent=self.config.agent,
            state_dir=self.config.state_dir,
            workdir=self.config.workdir,
            log_dir=logs,
            time_scale=float(payload.get("time_scale", 1.0)),
            estimate_s=float(spec.get("estimate_s", 0.0)),
            on_progress=self._status,
            rollback=rollback if isinstance(rollback := payload.get("rollback"), dict) else None,
            spawner=None if payload.get("rollback") else _RemoteSpawner(self, task_id, attempt),
        )

    def _status(self, task_id: str, progress: float, note: str) -> None:
        message = status_update(
            self.config.agent, task_id, Status.IN_PROGRESS, progress, message=note
        )
        self.send({"op": "msg", "message": message.to_json()})

    async def _cancel_all(self) -> None:
        for answering in list(self.answering):
            answering.cancel()
        jobs = [job for _, job in self.running.values()]
        self.running.clear()
        for job in jobs:
            job.cancel()
        if jobs:
            await asyncio.gather(*jobs, return_exceptions=True)


class _RemoteSpawner:
    """A remote task's spawn handle: its requests go to the hub (the program reaches it
    through its control channel, ``$COUNTERPOINT_CONTROL``)."""

    def __init__(self, client: AgentClient, task_id: str, attempt: int) -> None:
        self.client, self.task_id, self.attempt = client, task_id, attempt

    async def spawn_async(self, specs: list[Any]) -> list[str]:
        reply = await self.client.ask("spawn", self.task_id, self.attempt, tasks=specs)
        return [str(i) for i in reply.get("ids") or []]

    async def wait(self, ids: list[str] | None = None) -> dict[str, Any]:
        reply = await self.client.ask("wait_children", self.task_id, self.attempt, ids=ids)
        children: dict[str, Any] = reply.get("children") or {}
        return children


def _task_of(spec: dict[str, Any]) -> Task:
    """The task of a call for proposals, as a plan task (what a Python bidder gets)."""
    fields = {
        k: spec[k]
        for k in ("name", "instructions", "inputs", "requires", "reads", "writes", "resources")
        if spec.get(k) is not None
    }
    try:
        return Task.model_validate(
            {"id": str(spec.get("id") or "task"), **fields, "estimate": spec.get("estimate_s")}
        )
    except ValueError as exc:
        raise TaskFailed(f"the hub sent an invalid task: {exc}") from None


def _as_answer(kind: str, value: Any) -> dict[str, Any]:
    """A bidder's or voter's return value as the fields of a ``bid`` or ``vote`` frame."""
    if kind == "cfp":
        if value is None:
            return {"refuse": "no proposal"}
        if not isinstance(value, dict):
            return {"refuse": f"the bidder returned a {type(value).__name__}, not an object"}
        if "refuse" in value:
            reason = value["refuse"]
            return {"refuse": reason if isinstance(reason, str) and reason else "refused"}
        return dict(value)
    if value is None:
        return {"abstain": "no vote"}
    if isinstance(value, dict) and "abstain" in value:
        reason = value["abstain"]
        return {"abstain": reason if isinstance(reason, str) else "abstained"}
    if isinstance(value, dict) and "vote" in value:
        return {"vote": value["vote"]}
    return {"vote": value}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_.@-" else "_" for c in name)
