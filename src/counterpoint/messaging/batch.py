"""The batch channel for messages of low urgency (seed section 3.2, "Batch Communication").

Messages queue until the channel holds ``max_messages`` of them or the oldest
has waited ``max_wait_s``; then they leave together as one batch
``{batch_id, timestamp, messages}``. Unlike the seed, which checks only when a
new message arrives, a timer flushes too, and :meth:`BatchChannel.close` flushes
what is left, so no message waits forever.

Every sink gets every batch, in order, through its own queue: a sink that fails
is retried with exponential backoff and jitter while the others carry on, and
its batches are never dropped. Delivery is at least once: a sink that fails
after its receiver got the batch will see it again (the webhook sends
``X-Batch-Id`` so a receiver can drop repeats).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import random
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from counterpoint.messaging.protocol import Message, parse_message

log = logging.getLogger("counterpoint.batch")


@dataclass(frozen=True)
class Batch:
    """Messages that travel together; ``messages`` are protocol JSON dicts in arrival order."""

    messages: list[dict[str, Any]]
    batch_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    timestamp: str = field(default_factory=lambda: _utc_stamp(datetime.now(UTC)))

    def to_json(self) -> dict[str, Any]:
        return {"batch_id": self.batch_id, "timestamp": self.timestamp, "messages": self.messages}


def _utc_stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Sink(Protocol):
    """Where batches go; :meth:`deliver` raises when the batch did not arrive."""

    async def deliver(self, batch: Batch) -> None: ...


class MessageLog(Protocol):
    """The part of the store the :class:`StoreSink` needs."""

    def append_messages(self, run_id: int, batch_id: str, messages: list[dict[str, Any]]) -> None:
        """Record one batch's messages for ``run_id`` (idempotent per ``batch_id``)."""


class JsonLinesSink:
    """Appends each batch as one JSON line, flushed and fsynced; a failed write is undone."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.name = f"jsonl:{self.path}"

    async def deliver(self, batch: Batch) -> None:
        line = json.dumps(batch.to_json(), separators=(",", ":")) + "\n"
        await asyncio.to_thread(self._append, line.encode())

    def _append(self, data: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            start = os.lseek(fd, 0, os.SEEK_END)
            try:
                _write_all(fd, data)
                os.fsync(fd)
            except BaseException:
                os.ftruncate(fd, start)  # no half line, and no repeat on redelivery
                raise
        finally:
            os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is a failure: urllib would turn the POST into a GET."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class WebhookSink:
    """POSTs each batch as JSON to ``url``; a non-2xx answer or a connection error raises."""

    def __init__(self, url: str, *, timeout_s: float = 10.0) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.name = f"webhook:{url}"
        self._opener = urllib.request.build_opener(_NoRedirect)

    async def deliver(self, batch: Batch) -> None:
        await asyncio.to_thread(self._post, batch)

    def _post(self, batch: Batch) -> None:
        request = urllib.request.Request(
            self.url,
            data=json.dumps(batch.to_json()).encode(),
            headers={"Content-Type": "application/json", "X-Batch-Id": batch.batch_id},
            method="POST",
        )
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                response.read()
                status, reason = response.status, response.reason
        except urllib.error.HTTPError as exc:
            exc.close()
            status, reason = exc.code, exc.reason
        if not 200 <= status < 300:
            raise OSError(f"{self.url} answered {status} {reason}")


class StoreSink:
    """Records each batch's messages in the run journal through a :class:`MessageLog`."""

    def __init__(self, message_log: MessageLog, run_id: int) -> None:
        self.message_log = message_log
        self.run_id = run_id
        self.name = "store"

    async def deliver(self, batch: Batch) -> None:
        # sqlite connections belong to the thread that made them: call in the loop's thread
        self.message_log.append_messages(self.run_id, batch.batch_id, batch.messages)


class _Lane:
    """One sink's queue of batches and the task that delivers them in order."""

    def __init__(self, name: str, sink: Sink, channel: BatchChannel) -> None:
        self.name = name
        self.sink = sink
        self.channel = channel
        self.pending: collections.deque[Batch] = collections.deque()
        self.ready = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self.task: asyncio.Task[None] | None = None

    def add(self, batch: Batch) -> None:
        self.pending.append(batch)
        self.idle.clear()
        self.ready.set()

    async def run(self) -> None:
        failures = 0
        while True:
            await self.ready.wait()
            if not await self._try(self.pending[0], failures):
                failures += 1
                await asyncio.sleep(self.channel.backoff(failures))
                continue
            failures = 0
            self.pending.popleft()
            if not self.pending:
                self.ready.clear()
                self.idle.set()

    async def _try(self, batch: Batch, failures: int) -> bool:
        try:
            await self.sink.deliver(batch)
        except Exception as exc:
            self.channel.counts["retries"] += 1
            log.warning(
                "batch %s to %s failed (try %d): %s", batch.batch_id, self.name, failures + 1, exc
            )
            return False
        self.channel.counts["deliveries"] += 1
        return True


class BatchChannel:
    """Queues messages and sends them in batches to every sink; see the module docstring."""

    def __init__(
        self,
        sinks: Sequence[Sink],
        *,
        max_messages: int = 100,
        max_wait_s: float = 60.0,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 60.0,
        close_timeout_s: float | None = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_messages < 1 or max_wait_s <= 0 or retry_initial_s <= 0:
            raise ValueError("max_messages, max_wait_s and retry_initial_s must be positive")
        self.max_messages = max_messages
        self.max_wait_s = max_wait_s
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = max(retry_max_s, retry_initial_s)
        self.close_timeout_s = close_timeout_s
        self.clock = clock
        self.counts = {"batches_sent": 0, "messages_sent": 0, "deliveries": 0, "retries": 0}
        self._sinks = list(sinks)
        self._lanes: list[_Lane] = []
        self._queue: list[dict[str, Any]] = []
        self._oldest: float | None = None
        self._arrived = asyncio.Event()
        self._timer: asyncio.Task[None] | None = None
        self._state = "new"

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Start the timer and one delivery task per sink."""
        if self._state != "new":
            raise RuntimeError(f"the batch channel is already {self._state}")
        self._state = "running"
        self._lanes = [
            _Lane(n, s, self) for n, s in zip(_names(self._sinks), self._sinks, strict=True)
        ]
        for lane in self._lanes:
            lane.task = asyncio.create_task(lane.run(), name=f"batch-sink {lane.name}")
        self._timer = asyncio.create_task(self._tick(), name="batch-timer")

    async def close(self, timeout: float | None = 30.0) -> None:
        """Flush, then retry until every sink has everything or ``timeout`` s pass.

        ``None`` waits forever. What is still undelivered then stays in :attr:`undelivered`.
        """
        if self._state != "running":
            self._state = "closed"
            return
        await self.flush()
        self._state = "closed"
        await _cancel(self._timer)
        if not await self.drain(timeout):
            log.error("batch channel closed with %d undelivered batch(es)", len(self.undelivered))
        for lane in self._lanes:
            await _cancel(lane.task)

    async def __aenter__(self) -> BatchChannel:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close(self.close_timeout_s)

    # -- messages --------------------------------------------------------------

    async def put(self, message: Message | dict[str, Any]) -> None:
        """Queue a message (raises ``MessageError`` if invalid); flush at once when full."""
        if self._state != "running":
            raise RuntimeError(f"the batch channel is {self._state}: start it before put()")
        raw = message.to_json() if isinstance(message, Message) else message
        self._queue.append(parse_message(raw).to_json())
        if self._oldest is None:
            self._oldest = self.clock()
            self._arrived.set()
        if len(self._queue) >= self.max_messages:
            await self.flush()

    async def flush(self) -> None:
        """Cut a batch of what is queued now and hand it to every sink (without waiting)."""
        if not self._queue or self._state != "running":
            return
        batch = Batch(messages=self._queue)
        self._queue, self._oldest = [], None
        self.counts["batches_sent"] += 1
        self.counts["messages_sent"] += len(batch.messages)
        for lane in self._lanes:
            lane.add(batch)

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait until every sink has every batch cut so far; ``False`` if ``timeout`` s passed."""
        waits = asyncio.gather(*(lane.idle.wait() for lane in self._lanes))
        try:
            await asyncio.wait_for(waits, timeout)
        except TimeoutError:
            return False
        return True

    # -- state -----------------------------------------------------------------

    @property
    def undelivered(self) -> list[tuple[str, Batch]]:
        """``(sink name, batch)`` for each batch a sink has not yet got, oldest first per sink."""
        return [(lane.name, batch) for lane in self._lanes for batch in lane.pending]

    @property
    def stats(self) -> dict[str, int]:
        """Batches and messages sent, sink deliveries, retries, pending deliveries, queued."""
        pending = sum(len(lane.pending) for lane in self._lanes)
        return {**self.counts, "pending": pending, "queued": len(self._queue)}

    def backoff(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failures in a row: exponential, jittered."""
        ceiling = min(self.retry_max_s, self.retry_initial_s * 2 ** min(failures - 1, 60))
        return random.uniform(ceiling / 2, ceiling)

    async def _tick(self) -> None:
        """Flush when the oldest queued message has waited ``max_wait_s``."""
        while True:
            if self._oldest is None:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            delay = self._oldest + self.max_wait_s - self.clock()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                await self.flush()


def _names(sinks: Sequence[Sink]) -> list[str]:
    """Each sink's ``name`` (or class name), made unique."""
    names: list[str] = []
    for sink in sinks:
        base = str(getattr(sink, "name", type(sink).__name__))
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}#{n}"
        names.append(name)
    return names


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is None:
        return
    task.cancel()
    await asyncio.wait([task])  # the caller's own cancellation still propagates
