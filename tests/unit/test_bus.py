"""The in-process bus: routing by recipient, priority order, backpressure, SLAs and stalls."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from counterpoint.messaging.bus import Bus, BusFull, UnknownRecipient
from counterpoint.messaging.protocol import Content, Message, MessageType, Status, now


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def note(sender: str, recipient: str, priority: Any = "medium", **data: Any) -> Message:
    return Message(
        sender=sender,
        recipient=recipient,
        type=MessageType.NOTIFICATION,
        timestamp=now(),
        priority=priority,
        content=Content(event_type="hello", severity="info", data=data),
    )


def request(sender: str, recipient: str) -> Message:
    return Message(
        sender=sender,
        recipient=recipient,
        type=MessageType.REQUEST,
        priority="high",
        content=Content(task_id="t1", request_type="information", data={"q": 1}),
    )


def response_to(req: Message) -> Message:
    return Message(
        sender=req.recipient,
        recipient=req.sender,
        type=MessageType.RESPONSE,
        content=Content(request_id=req.message_id, status=Status.COMPLETED, data={"a": 2}),
    )


def test_a_message_goes_to_its_agent_its_group_or_everyone_but_the_sender() -> None:
    async def scenario() -> None:
        bus = Bus()
        a, b, c = (
            bus.subscribe(n, groups=g) for n, g in [("a", ["rev"]), ("b", ["rev"]), ("c", [])]
        )
        assert await bus.publish(note("c", "a")) == 1
        assert await bus.publish(note("a", "rev")) == 1  # the sender is not its own reader
        assert await bus.publish(note("a", "*")) == 2
        assert (len(a), len(b), len(c)) == (1, 2, 1)
        with pytest.raises(UnknownRecipient):
            await bus.publish(note("a", "nobody"))

    asyncio.run(scenario())


def test_the_most_urgent_message_is_read_first_then_the_oldest() -> None:
    async def scenario() -> list[Any]:
        bus = Bus()
        box = bus.subscribe("a")
        for i, priority in enumerate(["low", "medium", "critical", "medium", "high"]):
            await bus.publish(note("x", "a", priority, n=i))
        return [
            (m.priority, (m.content.data or {})["n"]) for m in [await box.get() for _ in range(5)]
        ]

    assert asyncio.run(scenario()) == [
        ("critical", 2),
        ("high", 4),
        ("medium", 1),
        ("medium", 3),
        ("low", 0),
    ]


def test_a_full_mailbox_makes_publishers_wait_until_it_is_read() -> None:
    async def scenario() -> None:
        bus = Bus(capacity=2)
        box = bus.subscribe("a")
        await bus.publish(note("x", "a"))
        await bus.publish(note("x", "a"))
        with pytest.raises(BusFull):
            bus.publish_nowait(note("x", "a"))
        blocked = asyncio.create_task(bus.publish(note("x", "a")))
        await asyncio.sleep(0.01)
        assert not blocked.done()
        await box.get()
        assert await asyncio.wait_for(blocked, 1.0) == 1
        assert len(box) == 2

    asyncio.run(scenario())


def test_a_resent_message_is_delivered_once_and_every_message_is_journaled_once() -> None:
    journal: list[Message] = []

    async def scenario() -> int:
        bus = Bus(journal=journal.append)
        box = bus.subscribe("a")
        message = note("x", "a")
        await bus.publish(message)
        assert await bus.publish(message) == 0
        return len(box)

    assert asyncio.run(scenario()) == 1
    assert len(journal) == 1


def test_a_request_is_answered_by_the_response_that_names_it() -> None:
    async def scenario() -> Message:
        bus = Bus()
        bus.subscribe("asker")
        helper = bus.subscribe("helper")

        async def answer() -> None:
            req = await helper.get()
            await bus.publish(response_to(req))

        responder = asyncio.create_task(answer())
        reply = await asyncio.wait_for(bus.request(request("asker", "helper"), sla_s=60), 1.0)
        await responder
        return reply

    reply = asyncio.run(scenario())
    assert reply.type is MessageType.RESPONSE and reply.content.data == {"a": 2}


def test_an_unanswered_request_is_reported_overdue_once_after_its_sla() -> None:
    clock = FakeClock()

    async def scenario() -> None:
        bus = Bus(clock=clock)
        bus.subscribe("asker")
        bus.subscribe("helper")
        waiting = asyncio.create_task(bus.request(request("asker", "helper"), sla_s=3600))
        await asyncio.sleep(0)
        clock.t = 3599
        assert bus.overdue() == []
        clock.t = 3601
        (notice,) = bus.overdue()
        assert notice.content.event_type == "response_overdue"
        assert notice.recipient == "asker" and notice.content.task_id == "t1"
        assert bus.overdue() == []
        waiting.cancel()

    asyncio.run(scenario())


def test_a_task_silent_longer_than_status_every_raises_a_stall_notice() -> None:
    clock = FakeClock()
    bus = Bus(clock=clock)
    bus.started("t1", "agent-a")
    clock.t = 7199
    assert bus.stalled(7200) == []
    clock.t = 7200
    (notice,) = bus.stalled(7200)
    assert notice.content.event_type == "task_stalled" and notice.recipient == "agent-a"
    assert bus.stalled(7200) == []  # reported once per silence
    bus.finished("t1")
    clock.t = 20000
    assert bus.stalled(7200) == []


def test_a_status_update_resets_the_stall_clock() -> None:
    clock = FakeClock()
    bus = Bus(clock=clock)
    bus.started("t1", "a")
    clock.t = 7000
    update = Message(
        sender="a",
        recipient="orchestrator",
        type=MessageType.STATUS_UPDATE,
        timestamp=now(),
        content=Content(task_id="t1", status=Status.IN_PROGRESS, progress=50),
    )
    assert bus.publish_nowait(update) == 0  # read by the orchestrator, not a mailbox
    clock.t = 7300
    assert bus.stalled(7200) == []
