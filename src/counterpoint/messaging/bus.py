"""The in-process message bus: publish/subscribe by recipient, in priority order.

A message goes to one agent (``recipient: security``), to every member of a
group (``recipient: reviewers``), or to everyone (``recipient: *``). Each
subscriber has a bounded mailbox that hands out the most urgent message first
(then the oldest); a full mailbox makes ``publish`` wait (backpressure) or
``publish_nowait`` raise :class:`BusFull`. Messages already seen (by
``message_id``) are dropped, so a resend never delivers twice.

Requests and responses are correlated (``content.request_id`` of a response
is the ``message_id`` of its request): :meth:`Bus.request` waits for the
answer, and :meth:`Bus.overdue` lists requests unanswered past their SLA.
:meth:`Bus.stalled` lists tasks whose agent sent no status update for too long.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from counterpoint.errors import CounterpointError
from counterpoint.messaging.protocol import Content, Message, MessageType, now

BROADCAST = "*"
_RANK = {"critical": 0, "high": 1, "medium": 2, "low": 3, None: 2}
_SEEN_LIMIT = 100_000


class BusFull(CounterpointError):
    """A recipient's mailbox is full (``publish_nowait``)."""


class UnknownRecipient(CounterpointError, LookupError):
    """No subscriber or group has that name."""


class Mailbox:
    """One subscriber's bounded queue, most urgent message first, then the oldest."""

    def __init__(self, name: str, capacity: int) -> None:
        self.name = name
        self.capacity = capacity
        self._heap: list[tuple[int, int, Message]] = []
        self._seq = itertools.count()
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    def __len__(self) -> int:
        return len(self._heap)

    @property
    def full(self) -> bool:
        return len(self._heap) >= self.capacity

    def put_nowait(self, message: Message) -> None:
        if self.full:
            raise BusFull(f"the mailbox of {self.name!r} is full ({self.capacity} messages)")
        heapq.heappush(self._heap, (_RANK[message.priority], next(self._seq), message))
        self._readable.set()
        if self.full:
            self._writable.clear()

    async def put(self, message: Message) -> None:
        while self.full:
            await self._writable.wait()
        self.put_nowait(message)

    def get_nowait(self) -> Message | None:
        if not self._heap:
            return None
        _, _, message = heapq.heappop(self._heap)
        self._writable.set()
        if not self._heap:
            self._readable.clear()
        return message

    async def get(self) -> Message:
        while not self._heap:
            await self._readable.wait()
        message = self.get_nowait()
        assert message is not None
        return message


@dataclass
class _Pending:
    request: Message
    deadline: float
    answer: asyncio.Future[Message]
    reported: bool = False


class Bus:
    """Routes messages between subscribers; journals each one through ``journal``."""

    def __init__(
        self,
        *,
        capacity: int = 1000,
        journal: Callable[[Message], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity = capacity
        self.journal = journal
        self.clock = clock
        self.mailboxes: dict[str, Mailbox] = {}
        self.groups: dict[str, set[str]] = {}
        self._seen: OrderedDict[uuid.UUID, None] = OrderedDict()
        self._pending: dict[uuid.UUID, _Pending] = {}
        self._last_status: dict[str, tuple[str, float]] = {}  # task -> (sender, time)
        self._late: list[tuple[str, str | None, float]] = []  # overdue requests answered

    def subscribe(self, name: str, groups: Iterable[str] = ()) -> Mailbox:
        box = self.mailboxes.get(name)
        if box is None:
            box = self.mailboxes[name] = Mailbox(name, self.capacity)
        for group in groups:
            self.groups.setdefault(group, set()).add(name)
        return box

    def recipients(self, message: Message) -> list[Mailbox]:
        target = message.recipient
        if target == BROADCAST:
            return [box for name, box in self.mailboxes.items() if name != message.sender]
        if target in self.mailboxes:
            return [self.mailboxes[target]]
        if target in self.groups:
            return [self.mailboxes[n] for n in sorted(self.groups[target]) if n != message.sender]
        raise UnknownRecipient(f"no agent or group named {target!r}")

    def _admit(self, message: Message) -> bool:
        """Record a new message (journal, correlation, status); False for a duplicate."""
        if message.message_id in self._seen:
            return False
        self._seen[message.message_id] = None
        if len(self._seen) > _SEEN_LIMIT:
            self._seen.popitem(last=False)
        if self.journal is not None:
            self.journal(message)
        self._observe(message)
        return True

    def _observe(self, message: Message) -> None:
        content = message.content
        if message.type is MessageType.RESPONSE and content.request_id in self._pending:
            pending = self._pending.pop(content.request_id)
            if not pending.answer.done():
                pending.answer.set_result(message)
            if pending.reported:
                late = self.clock() - pending.deadline
                self._late.append((str(content.request_id), pending.request.content.task_id, late))
        if message.type is MessageType.STATUS_UPDATE and content.task_id:
            self._last_status[content.task_id] = (message.sender, self.clock())

    async def publish(self, message: Message) -> int:
        """Deliver to every recipient, waiting while a mailbox is full; returns how many."""
        boxes = self._routable(message)  # an unknown recipient is refused before journaling
        if not self._admit(message):
            return 0
        for box in boxes:
            await box.put(message)
        return len(boxes)

    def publish_nowait(self, message: Message) -> int:
        """Deliver now or raise :class:`BusFull` (nothing is delivered then)."""
        boxes = self._routable(message)
        full = [b.name for b in boxes if b.full]
        if full:
            raise BusFull(f"mailbox full: {', '.join(full)}")
        if not self._admit(message):
            return 0
        for box in boxes:
            box.put_nowait(message)
        return len(boxes)

    def _routable(self, message: Message) -> list[Mailbox]:
        if message.recipient == "orchestrator" and "orchestrator" not in self.mailboxes:
            return []  # the orchestrator reads what it needs from _observe
        return self.recipients(message)

    async def request(self, message: Message, sla_s: float) -> Message:
        """Send a request and wait for its response (no time limit: see :meth:`overdue`)."""
        if message.type is not MessageType.REQUEST:
            raise ValueError("request() sends messages of type request")
        answer: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[message.message_id] = _Pending(message, self.clock() + sla_s, answer)
        await self.publish(message)
        return await answer

    def overdue(self) -> list[Message]:
        """Requests past their SLA, each reported once as a ``response_overdue`` notification."""
        now = self.clock()
        found = []
        for pending in self._pending.values():
            if not pending.reported and now >= pending.deadline:
                pending.reported = True
                found.append(_notice("response_overdue", pending.request, now - pending.deadline))
        return found

    def answered_late(self) -> list[tuple[str, str | None, float]]:
        """Requests reported overdue that got their answer since the last call:
        ``(request id, task id, seconds past the SLA)``."""
        found, self._late = self._late, []
        return found

    def started(self, task: str, agent: str) -> None:
        """A task began: its stall clock starts now."""
        self._last_status[task] = (agent, self.clock())

    def finished(self, task: str) -> None:
        self._last_status.pop(task, None)

    def stalled(self, status_every_s: float) -> list[Message]:
        """Running tasks silent for ``status_every_s``: one ``task_stalled`` notice per silence."""
        now = self.clock()
        found = []
        for task, (agent, since) in list(self._last_status.items()):
            if now - since >= status_every_s:
                self._last_status[task] = (agent, now)  # report again after another silence
                found.append(_stall_notice(task, agent, now - since))
        return found


def _notice(event: str, request: Message, late_s: float) -> Message:
    return Message(
        sender="orchestrator",
        recipient=request.sender,
        type=MessageType.NOTIFICATION,
        timestamp=now(),
        priority="high",
        content=Content(
            event_type=event,
            severity="warning",
            task_id=request.content.task_id,
            data={"request_id": str(request.message_id), "late_s": round(late_s, 3)},
        ),
    )


def _stall_notice(task: str, agent: str, silent_s: float) -> Message:
    return Message(
        sender="orchestrator",
        recipient=agent,
        type=MessageType.NOTIFICATION,
        timestamp=now(),
        priority="high",
        content=Content(
            event_type="task_stalled",
            severity="warning",
            task_id=task,
            data={"silent_s": round(silent_s, 3)},
        ),
    )
