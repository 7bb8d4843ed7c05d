"""A chaos proxy between remote agents and the hub, working at the WebSocket frame level.

Agents connect to the proxy instead of the hub; for each connection the proxy opens one
to the hub, passes the HTTP upgrade through untouched, then parses the WebSocket frames
of each direction (RFC 6455: client-to-server frames are masked; the proxy forwards them
masked, byte for byte) and misbehaves:

* **drop**: every connection is cut after a random lifetime; the frames the proxy holds
  (delayed, not yet forwarded) are lost with it. Both sockets are aborted (RST), so
  neither side hears a close frame.
* **duplicate**: a complete text frame (not the first of its direction, the hello or the
  welcome) is forwarded twice.
* **delay**: a frame is held for a random time before it is forwarded (order within the
  direction is kept, as TCP keeps it: a later frame waits for an earlier one).
* **reorder** (late delivery): when a connection is cut, sometimes only the agent's side
  is aborted; the frames held for the hub are delivered late on the old connection, after
  the agent has reconnected and resent them on its new one, so the hub sees an old
  connection's frames after a newer connection's. This is the reordering TCP allows:
  across connections. Inside one connection TCP guarantees order, the protocol relies
  on it (cumulative acks), and the proxy never swaps two frames of one connection.
* **partition**: :meth:`ChaosProxy.partition` stops forwarding on the live connections
  without closing anything (no FIN, no RST): a network cut the peers cannot see.

The proxy runs its own event loop in a background thread (:meth:`start`, :meth:`stop`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

HEADER_END = b"\r\n\r\n"
OP_TEXT = 0x1


@dataclass
class Chaos:
    seed: int = 0
    lifetime_s: tuple[float, float] | None = None  # each connection cut after this long
    duplicate: float = 0.0  # probability a text frame is forwarded twice
    delay: float = 0.0  # probability a frame is held
    delay_s: tuple[float, float] = (0.0, 0.05)
    late: float = 0.0  # probability a cut delivers the hub-bound frames late
    stall_s: tuple[float, float] = (0.05, 0.3)  # how long they are held before the cut
    stall_max_s: float = 1.2  # ... or longer, until one is held (below the lost timeout)
    late_s: tuple[float, float] = (0.3, 1.0)


@dataclass
class Counters:
    connections: int = 0
    cuts: int = 0
    late_cuts: int = 0
    frames: int = 0
    duplicated: int = 0
    delayed: int = 0
    dropped: int = 0  # frames held when their connection was cut
    delivered_late: int = 0
    by_agent: dict[str, int] = field(default_factory=dict)  # connections per agent


def split_frame(buf: bytearray) -> tuple[bytes, int, bool] | None:
    """(the first whole frame's bytes, its opcode, FIN) from ``buf``, or None if incomplete."""
    if len(buf) < 2:
        return None
    b0, b1 = buf[0], buf[1]
    length = b1 & 0x7F
    at = 2
    if length == 126:
        if len(buf) < 4:
            return None
        length, at = int.from_bytes(buf[2:4], "big"), 4
    elif length == 127:
        if len(buf) < 10:
            return None
        length, at = int.from_bytes(buf[2:10], "big"), 10
    if b1 & 0x80:
        at += 4  # the masking key
    end = at + length
    if len(buf) < end:
        return None
    frame = bytes(buf[:end])
    del buf[:end]
    return frame, b0 & 0x0F, bool(b0 & 0x80)


class _Pipe:
    """One direction of one connection: frames queued with their release times."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        self.last_release = 0.0
        self.held = 0
        self.hold_until = 0.0  # nothing is forwarded before this (monotonic) time

    def put(self, frame: bytes, hold: float) -> None:
        release = max(time.monotonic() + hold, self.last_release)
        self.last_release = release
        self.held += 1
        self.queue.put_nowait((release, frame))

    async def run(self, paused: Callable[[], bool]) -> None:
        while (item := await self.queue.get()) is not None:
            release, frame = item
            delay = release - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            while paused() or time.monotonic() < self.hold_until:
                await asyncio.sleep(0.01)
            self.writer.write(frame)
            self.held -= 1
            await self.writer.drain()


class ChaosProxy:
    """Listens on 127.0.0.1 (a free port) and forwards to ``target`` with ``chaos``."""

    def __init__(self, target_host: str, target_port: int, chaos: Chaos) -> None:
        self.target = (target_host, target_port)
        self.chaos = chaos
        self.rng = random.Random(chaos.seed)
        self.counts = Counters()
        self.port = 0
        self.cutting = True  # False: stop cutting (let the run finish calmly)
        self._partitioned = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._ready = threading.Event()
        self._conns: set[asyncio.Task[None]] = set()
        self.on_cut: Callable[[Counters], None] | None = None  # called after each cut

    # -- lifecycle (from the test's thread) -------------------------------------------

    def start(self) -> int:
        self._thread = threading.Thread(target=self._main, name="chaos-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the chaos proxy did not start")
        return self.port

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        with contextlib.suppress(Exception):
            fut.result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def partition(self, on: bool = True) -> None:
        """Stop (or resume) forwarding on every connection, closing nothing."""
        self._partitioned = on

    def _main(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._server = loop.run_until_complete(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._conns):
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)

    # -- one connection ----------------------------------------------------------------

    async def _accept(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            await self._proxy(c_reader, c_writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # a peer went away, or the proxy is shutting down
        finally:
            self._conns.discard(task)
            for w in (c_writer,):
                _abort(w)

    async def _proxy(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        s_reader, s_writer = await asyncio.open_connection(*self.target)
        self.counts.connections += 1
        request = await c_reader.readuntil(HEADER_END)
        path = request.split(b" ", 2)[1].decode("latin-1") if b" " in request else ""
        agent = path.split("/")[2] if path.startswith("/agents/") else "?"
        self.counts.by_agent[agent] = self.counts.by_agent.get(agent, 0) + 1
        s_writer.write(request)
        response = await s_reader.readuntil(HEADER_END)
        c_writer.write(response)
        to_hub, to_agent = _Pipe(s_writer), _Pipe(c_writer)
        paused = lambda: self._partitioned  # noqa: E731
        tasks = [
            asyncio.create_task(self._read(c_reader, to_hub)),
            asyncio.create_task(self._read(s_reader, to_agent)),
            asyncio.create_task(to_hub.run(paused)),
            asyncio.create_task(to_agent.run(paused)),
        ]
        lifetime = self.chaos.lifetime_s
        timer = asyncio.create_task(
            asyncio.sleep(self.rng.uniform(*lifetime) if lifetime else 10**9)
        )
        try:
            done, _ = await asyncio.wait([*tasks, timer], return_when=asyncio.FIRST_COMPLETED)
            if timer in done and self.cutting:
                await self._cut(tasks, to_hub, to_agent, c_writer, s_writer)
                return
            if timer in done:  # no more cuts: carry on until one side closes
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            # One side closed: let what is queued go out, then close the other.
            await asyncio.sleep(0.05)
        finally:
            timer.cancel()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, timer, return_exceptions=True)
            _abort(s_writer)

    async def _cut(
        self,
        tasks: list[asyncio.Task[None]],
        to_hub: _Pipe,
        to_agent: _Pipe,
        c_writer: asyncio.StreamWriter,
        s_writer: asyncio.StreamWriter,
    ) -> None:
        self.counts.cuts += 1
        late = self.rng.random() < self.chaos.late
        if late:  # stall the hub-bound frames a moment first, so some are held
            to_hub.hold_until = float("inf")
            await asyncio.sleep(self.rng.uniform(*self.chaos.stall_s))
            waited = 0.0
            while not to_hub.held and waited < self.chaos.stall_max_s:  # a heartbeat at least
                await asyncio.sleep(0.02)
                waited += 0.02
        tasks[0].cancel()  # read nothing more from the agent
        tasks[1].cancel()
        tasks[3].cancel()  # what the hub sent and we hold is lost
        self.counts.dropped += to_agent.held
        _abort(c_writer)
        if late:
            # The frames we hold reach the hub after the agent has reconnected.
            self.counts.late_cuts += 1
            held = to_hub.held
            await asyncio.sleep(self.rng.uniform(*self.chaos.late_s))
            to_hub.hold_until = 0.0
            to_hub.queue.put_nowait(None)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(tasks[2], 5)
            self.counts.delivered_late += held - to_hub.held
        else:
            tasks[2].cancel()
            self.counts.dropped += to_hub.held
        _abort(s_writer)
        if self.on_cut is not None:
            self.on_cut(self.counts)

    async def _read(self, reader: asyncio.StreamReader, pipe: _Pipe) -> None:
        buf = bytearray()
        first = True
        while chunk := await reader.read(65536):
            buf += chunk
            while (got := split_frame(buf)) is not None:
                frame, opcode, fin = got
                self.counts.frames += 1
                hold = 0.0
                if self.rng.random() < self.chaos.delay:
                    hold = self.rng.uniform(*self.chaos.delay_s)
                    self.counts.delayed += 1
                pipe.put(frame, hold)
                if (
                    not first
                    and opcode == OP_TEXT
                    and fin
                    and self.rng.random() < self.chaos.duplicate
                ):
                    self.counts.duplicated += 1
                    pipe.put(frame, 0.0)
                first = False


def _abort(writer: asyncio.StreamWriter) -> None:
    transport = writer.transport
    if transport is not None and not transport.is_closing():
        transport.abort()
