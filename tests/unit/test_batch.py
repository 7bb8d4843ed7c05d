"""The batch channel: size, timer and shutdown flushes, sinks, and redelivery that loses nothing."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from counterpoint.messaging.batch import Batch, BatchChannel, JsonLinesSink, StoreSink
from counterpoint.messaging.protocol import (
    Message,
    MessageError,
    MessageType,
    Status,
    status_update,
)

T = TypeVar("T")
STAMP = "2026-01-30T09:00:00Z"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def note(i: int) -> dict[str, Any]:
    """A valid low-urgency notification numbered ``i``."""
    return {
        "sender": "agent-a",
        "recipient": "orchestrator",
        "type": "notification",
        "timestamp": STAMP,
        "content": {"event_type": "tick", "severity": "info", "data": {"i": i}},
    }


def numbers(batches: list[Batch]) -> list[int]:
    return [m["content"]["data"]["i"] for b in batches for m in b.messages]


class Recorder:
    """A sink that records what it gets and fails the attempts ``fails`` marks True."""

    def __init__(self, name: str = "rec", fails: list[bool] | int = 0) -> None:
        self.name = name
        self.fails = [True] * fails if isinstance(fails, int) else list(fails)
        self.batches: list[Batch] = []
        self.attempts: list[float] = []

    async def deliver(self, batch: Batch) -> None:
        self.attempts.append(time.monotonic())
        if len(self.attempts) <= len(self.fails) and self.fails[len(self.attempts) - 1]:
            raise ConnectionError("sink down")
        self.batches.append(batch)


class DeadSink:
    name = "dead"

    async def deliver(self, batch: Batch) -> None:
        raise OSError("never up")


async def until(check: Callable[[], bool], timeout: float = 2.0) -> float:
    """Poll ``check`` until true; the seconds it took (fails the test at ``timeout``)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.002)
    return time.monotonic() - start


def test_flushes_at_exactly_max_messages() -> None:
    async def scenario() -> None:
        sink = Recorder()
        async with BatchChannel([sink], max_messages=5, max_wait_s=60) as ch:
            for i in range(4):
                await ch.put(note(i))
            await asyncio.sleep(0.02)
            assert sink.batches == [] and ch.stats["queued"] == 4
            await ch.put(note(4))
            await until(lambda: len(sink.batches) == 1)
            assert numbers(sink.batches) == [0, 1, 2, 3, 4] and ch.stats["queued"] == 0
            await ch.put(note(5))
        assert [len(b.messages) for b in sink.batches] == [5, 1]

    run(scenario())


def test_timer_flushes_a_lone_message_without_further_arrivals() -> None:
    async def scenario() -> None:
        sink = Recorder()
        async with BatchChannel([sink], max_messages=100, max_wait_s=0.05) as ch:
            await ch.put(note(1))
            took = await until(lambda: bool(sink.batches))
            assert 0.04 <= took < 0.5
            assert ch.stats["queued"] == 0

    run(scenario())


def test_timer_counts_from_the_oldest_queued_message() -> None:
    async def scenario() -> None:
        sink = Recorder()
        async with BatchChannel([sink], max_wait_s=0.3) as ch:
            start = time.monotonic()
            await ch.put(note(1))
            await asyncio.sleep(0.2)
            await ch.put(note(2))  # a timer reset on arrival would wait until 0.5 s
            await until(lambda: bool(sink.batches))
            assert 0.29 <= time.monotonic() - start < 0.45
            assert numbers(sink.batches) == [1, 2]

    run(scenario())


def test_close_flushes_what_is_queued() -> None:
    async def scenario() -> None:
        sink = Recorder()
        ch = BatchChannel([sink], max_wait_s=60)
        await ch.start()
        for i in range(3):
            await ch.put(note(i))
        await ch.close()
        assert numbers(sink.batches) == [0, 1, 2]
        stats = ch.stats
        assert stats["batches_sent"] == 1 and stats["messages_sent"] == 3
        assert stats["deliveries"] == 1 and stats["pending"] == 0 and stats["queued"] == 0
        with pytest.raises(RuntimeError, match="closed"):
            await ch.put(note(9))

    run(scenario())


def test_batch_shape() -> None:
    async def scenario() -> None:
        sink = Recorder()
        async with BatchChannel([sink], max_messages=3) as ch:
            for i in (7, 3, 5):
                await ch.put(note(i))
        (batch,) = sink.batches
        body = batch.to_json()
        assert set(body) == {"batch_id", "timestamp", "messages"}
        assert uuid.UUID(body["batch_id"]).version == 4
        assert body["timestamp"].endswith("Z")
        stamp = datetime.fromisoformat(body["timestamp"])
        assert stamp.utcoffset() == timedelta(0)
        assert abs(datetime.now(UTC) - stamp) < timedelta(seconds=5)
        assert [m["content"]["data"]["i"] for m in body["messages"]] == [7, 3, 5]
        assert all(uuid.UUID(m["message_id"]) for m in body["messages"])
        json.dumps(body)  # plain JSON

    run(scenario())


def test_accepts_message_objects_as_their_json() -> None:
    message = status_update("agent-a", "iam-roles", Status.IN_PROGRESS, 40, step="plan")

    async def scenario() -> Recorder:
        sink = Recorder()
        async with BatchChannel([sink]) as ch:
            await ch.put(message)
        return sink

    assert run(scenario()).batches[0].messages == [message.to_json()]


def test_invalid_messages_are_rejected_at_put() -> None:
    async def scenario() -> None:
        async with BatchChannel([Recorder()]) as ch:
            with pytest.raises(MessageError, match="recipient"):
                await ch.put({"sender": "a", "type": "notification"})
            incomplete = Message(sender="a", recipient="b", type=MessageType.STATUS_UPDATE)
            with pytest.raises(MessageError, match=r"content\.task_id"):
                await ch.put(incomplete)
            assert ch.stats["queued"] == 0

    run(scenario())


def test_put_before_start_is_an_error() -> None:
    async def scenario() -> None:
        ch = BatchChannel([Recorder()])
        with pytest.raises(RuntimeError, match="start"):
            await ch.put(note(1))
        await ch.close()

    run(scenario())


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        BatchChannel([], max_messages=0)


def test_jsonl_sink_appends_one_batch_per_line(tmp_path: Path) -> None:
    path = tmp_path / "batches.jsonl"
    path.write_text('{"earlier": true}\n')

    async def scenario() -> Recorder:
        rec = Recorder()
        async with BatchChannel([JsonLinesSink(path), rec], max_messages=3) as ch:
            for i in range(7):
                await ch.put(note(i))
        return rec

    rec = run(scenario())
    lines = path.read_text().splitlines()
    assert lines[0] == '{"earlier": true}'
    assert [json.loads(line) for line in lines[1:]] == [b.to_json() for b in rec.batches]
    assert [len(b.messages) for b in rec.batches] == [3, 3, 1]


def test_jsonl_sink_undoes_a_failed_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "batches.jsonl"
    real_fsync, calls = os.fsync, []

    def flaky_fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            raise OSError("disk trouble")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", flaky_fsync)

    async def scenario() -> None:
        async with BatchChannel([JsonLinesSink(path)], retry_initial_s=0.01) as ch:
            await ch.put(note(1))
        assert ch.stats["retries"] == 1

    run(scenario())
    lines = path.read_text().splitlines()
    assert len(lines) == 1 and numbers([Batch(**json.loads(lines[0]))]) == [1]


def test_store_sink_appends_each_batch_to_the_message_log() -> None:
    class Log:
        def __init__(self) -> None:
            self.rows: list[tuple[int, str, list[dict[str, Any]]]] = []

        def append_messages(
            self, run_id: int, batch_id: str, messages: list[dict[str, Any]]
        ) -> None:
            self.rows.append((run_id, batch_id, messages))

    log, rec = Log(), Recorder()

    async def scenario() -> None:
        async with BatchChannel([StoreSink(log, run_id=4), rec], max_messages=2) as ch:
            for i in range(3):
                await ch.put(note(i))

    run(scenario())
    assert log.rows == [(4, b.batch_id, b.messages) for b in rec.batches]


def test_failing_sink_is_redelivered_in_order_without_delaying_the_healthy_one() -> None:
    flaky, healthy = Recorder("flaky", fails=3), Recorder("healthy")

    async def scenario() -> None:
        ch = BatchChannel([flaky, healthy], max_messages=2, retry_initial_s=0.04, retry_max_s=0.1)
        async with ch:
            for i in range(6):
                await ch.put(note(i))
            took = await until(lambda: len(healthy.batches) == 3)
            assert took < 0.1 and flaky.batches == []  # healthy went ahead during the backoff
            assert [b for name, b in ch.undelivered if name == "flaky"] == healthy.batches
            await until(lambda: len(flaky.batches) == 3)
        assert ch.stats["retries"] == 3 and ch.stats["deliveries"] == 6

    run(scenario())
    assert flaky.batches == healthy.batches
    assert numbers(flaky.batches) == list(range(6))
    gaps = [b - a for a, b in zip(flaky.attempts, flaky.attempts[1:], strict=False)]
    assert [g >= low for g, low in zip(gaps, (0.02, 0.04, 0.05), strict=False)] == [True] * 3


def test_backoff_grows_with_jitter_up_to_the_maximum() -> None:
    ch = BatchChannel([], retry_initial_s=1.0, retry_max_s=5.0)
    for failures, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (40, 5.0), (500, 5.0)):
        waits = {ch.backoff(failures) for _ in range(50)}
        assert all(ceiling / 2 <= w <= ceiling for w in waits) and len(waits) > 1


def test_close_timeout_keeps_undelivered_batches_in_order() -> None:
    dead, healthy, twin = DeadSink(), Recorder(), DeadSink()

    async def scenario() -> BatchChannel:
        ch = BatchChannel([dead, healthy, twin], max_messages=2, retry_initial_s=0.01)
        await ch.start()
        for i in range(4):
            await ch.put(note(i))
        started = time.monotonic()
        await ch.close(timeout=0.1)
        assert time.monotonic() - started < 1.0
        return ch

    ch = run(scenario())
    assert numbers(healthy.batches) == [0, 1, 2, 3]
    assert ch.undelivered == [("dead", b) for b in healthy.batches] + [
        ("dead#2", b) for b in healthy.batches
    ]
    assert ch.stats["pending"] == 4


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    ops=st.lists(st.one_of(st.integers(1, 7), st.sampled_from(["flush", "pause"])), max_size=25),
    max_messages=st.integers(1, 5),
    fails=st.lists(st.lists(st.booleans(), max_size=8), min_size=2, max_size=2),
)
def test_nothing_is_lost_or_repeated(
    ops: list[int | str], max_messages: int, fails: list[list[bool]]
) -> None:
    sinks = [Recorder("a", fails[0]), Recorder("b", fails[1])]

    async def scenario() -> tuple[int, BatchChannel]:
        ch = BatchChannel(
            sinks,
            max_messages=max_messages,
            max_wait_s=0.004,
            retry_initial_s=0.001,
            retry_max_s=0.003,
        )
        sent = 0
        async with ch:
            for op in ops:
                if op == "flush":
                    await ch.flush()
                elif op == "pause":
                    await asyncio.sleep(0.003)
                else:
                    for _ in range(int(op)):
                        await ch.put(note(sent))
                        sent += 1
        return sent, ch

    sent, ch = run(scenario())
    assert ch.undelivered == []
    for sink in sinks:
        assert numbers(sink.batches) == list(range(sent))
        assert all(0 < len(b.messages) <= max_messages for b in sink.batches)
    assert [b.batch_id for b in sinks[0].batches] == [b.batch_id for b in sinks[1].batches]


def test_the_sqlite_store_keeps_batches_durably_and_ignores_a_redelivery(tmp_path: Path) -> None:
    from counterpoint.store.sqlite import SqliteStore

    store = SqliteStore(tmp_path / "state")
    messages = [{"message_id": f"m{i}", "n": i} for i in range(3)]
    store.append_messages(1, "batch-a", messages)
    store.append_messages(1, "batch-a", messages)  # the same batch delivered again
    store.append_messages(1, "batch-b", [{"message_id": "m9", "n": 9}])
    store.close()
    again = SqliteStore(tmp_path / "state", create=False)
    assert [m["n"] for m in again.batch_messages(1)] == [0, 1, 2, 9]
    again.close()
