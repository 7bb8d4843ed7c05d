"""The hub: remote agents' sessions, task assignment, heartbeats and reliable delivery.

The hub knows nothing of HTTP: a server hands it each authenticated connection
(:meth:`Hub.serve`) as a way to send text and a stream of received text. Per
agent it keeps a *session* that outlives connections: the frames it sent and
the agent has not acknowledged (resent after a reconnect), the highest frame
number it processed from the agent (so a resent frame is not applied twice),
and the tasks assigned to the agent.

Acknowledgements are durable: the hub commits the journal (``commit``) and only
then acknowledges, in groups every ``commit_every_s``, so a message the agent
saw acknowledged survives a crash of the hub.

An agent silent for ``lost_after`` heartbeats is lost: its connection is
closed, its session forgotten, and its tasks fail with :class:`AgentLost` so
the run gives them to another agent. When it comes back it starts a new
session, and results it still sends for the old attempts are refused (the
attempt number is the fencing token).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from counterpoint.agents.base import AgentLost, ProgressSink, RateLimited, TaskContext, TaskFailed
from counterpoint.errors import CounterpointError
from counterpoint.messaging.bus import Bus, UnknownRecipient
from counterpoint.messaging.protocol import Message, MessageError, MessageType, parse_message
from counterpoint.net import frames as fr
from counterpoint.net.frames import FrameError
from counterpoint.plan.model import AgentSpec

log = logging.getLogger("counterpoint.hub")

HELLO_TIMEOUT_S = 10.0
#: Young-generation collections every this many allocations while serving (default 700):
#: at tens of thousands of messages a second, the default makes collections of the older
#: generations, which pause the event loop, far too frequent.
SERVING_GC_THRESHOLD = (100_000, 50, 1000)
OUTBOX_LIMIT = 10_000
DRAIN_TIMEOUT_S = 2.0
_HEARTBEAT_REPLY = fr.encode({"op": "heartbeat"})
_QUESTION_FIELD = {"cfp": "call", "ballot": "ballot"}  # the id field of each question frame

#: ``on_state(agent, state, info)``: an agent became ``available``, ``offline`` or ``lost``.
StateSink = Callable[[str, str, dict[str, Any]], None]


class Connection(Protocol):
    """What the hub needs of a connection: send a text frame, close with a code."""

    async def send_text(self, text: str) -> None: ...

    async def close(self, code: int, reason: str = "") -> None: ...


@dataclass(eq=False)
class Assignment:
    agent: str
    task_id: str
    attempt: int
    answer: asyncio.Future[dict[str, Any]]
    on_progress: ProgressSink | None = None
    spawner: Any = None  # the attempt's spawn handle (ctx.spawner)


class _Link:
    """One live connection: its writer task sends queued frames in order."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.writer = asyncio.create_task(self._write())
        self.closed = False
        self.shut = asyncio.Event()  # set once close() has sent its close frame

    def send(self, text: str) -> None:
        if not self.closed:
            self.queue.put_nowait(text)

    async def _write(self) -> None:
        while (text := await self.queue.get()) is not None:
            try:
                await self.conn.send_text(text)
            except Exception:  # the connection died; the reader notices and detaches
                self.closed = True
                self.shut.set()
                return

    async def close(self, code: int, reason: str) -> None:
        """Send what is queued (for a moment at most), then close the connection."""
        if not self.closed:
            self.closed = True
            self.queue.put_nowait(None)
            with contextlib.suppress(Exception):
                # asyncio.wait, not wait_for: a writer cancelled meanwhile by another
                # close (a reconnect replacing this link) must not raise CancelledError here
                await asyncio.wait({self.writer}, timeout=DRAIN_TIMEOUT_S)
        self.writer.cancel()
        with contextlib.suppress(Exception):
            await self.conn.close(code, reason)
        self.shut.set()

    async def closing(self) -> None:
        """Wait (a moment at most) for a close begun elsewhere to send its close frame, so
        the connection's handler does not return first and close it with another code."""
        if self.closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.shut.wait(), DRAIN_TIMEOUT_S + 1.0)


@dataclass(eq=False)
class Session:
    """An agent's session: survives reconnects, ends when the agent is lost or replaced."""

    agent: str
    id: str
    capabilities: list[str]
    capacity: int
    last_seen: float
    link: _Link | None = None
    out_seq: int = 0
    outbox: OrderedDict[int, str] = field(default_factory=OrderedDict)
    in_seq: int = 0  # highest agent frame processed
    acked: int = 0  # highest agent frame acknowledged (committed)
    tasks: dict[str, Assignment] = field(default_factory=dict)
    violations: int = 0
    room: asyncio.Event = field(default_factory=asyncio.Event)
    pump: asyncio.Task[None] | None = None


class Hub:
    """Serves remote agents: sessions, assignments, messages, heartbeats."""

    def __init__(
        self,
        bus: Bus,
        agents: Mapping[str, AgentSpec],
        *,
        heartbeat_s: float = 30.0,
        lost_after: int = 3,
        max_message_bytes: int = fr.MAX_MESSAGE_BYTES,
        max_violations: int = 10,
        commit: Callable[[], None] | None = None,
        commit_every_s: float = 0.02,
        on_state: StateSink | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bus = bus
        self.agents = {name: spec for name, spec in agents.items() if spec.remote}
        self.heartbeat_s = heartbeat_s
        self.lost_after = lost_after
        self.max_message_bytes = max_message_bytes
        self.max_violations = max_violations
        self.commit = commit
        self.commit_every_s = commit_every_s
        self.on_state = on_state
        self.clock = clock
        self.sessions: dict[str, Session] = {}
        self.assigned: dict[str, Assignment] = {}  # task -> its current remote assignment
        self.given: set[tuple[str, str, int]] = set()  # (agent, task, attempt) ever assigned
        # calls for proposals and ballots: (agent, kind, id) -> its answer, while open
        self.questions: dict[tuple[str, str, int], asyncio.Future[dict[str, Any]]] = {}
        self.asked: set[tuple[str, str, int]] = set()  # every question ever put
        self._carried: dict[str, list[Any]] = {}  # messages an ended session never acknowledged
        self.counts = {"messages": 0, "rejected": 0, "duplicates": 0}
        self._background: list[asyncio.Task[None]] = []
        self._dirty: set[Session] = set()
        self._closing: set[asyncio.Task[None]] = set()
        for name, spec in self.agents.items():
            bus.subscribe(name, groups=spec.capabilities)

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        self._background = [
            asyncio.create_task(self._commit_loop()),
            asyncio.create_task(self._monitor()),
        ]

    async def close(self, code: int = fr.CLOSE_GOING_AWAY, reason: str = "shutting down") -> None:
        """Commit and acknowledge what arrived, then close every connection with ``code``."""
        self.on_state = None  # what happens to connections now is no news for the run
        self._commit_and_ack()
        for task in self._background:
            task.cancel()
        for session in list(self.sessions.values()):
            if session.pump is not None:
                session.pump.cancel()
        await asyncio.gather(
            *(s.link.close(code, reason) for s in self.sessions.values() if s.link is not None),
            *self._background,
            return_exceptions=True,
        )

    def connected(self) -> dict[str, dict[str, Any]]:
        """Every agent with a session: connected or not, its running tasks."""
        now = self.clock()
        return {
            name: {
                "connected": s.link is not None,
                "session": s.id,
                "capacity": s.capacity,
                "tasks": sorted(s.tasks),
                "silent_s": round(now - s.last_seen, 3),
            }
            for name, s in sorted(self.sessions.items())
        }

    # -- running tasks (called by the run engine) -------------------------------------

    async def run_task(self, agent: str, ctx: TaskContext) -> dict[str, Any]:
        """Assign ``ctx``'s attempt to ``agent`` and wait for its result."""
        session = self.sessions.get(agent)
        if session is None:
            raise AgentLost(f"agent {agent!r} is not connected")
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        job = Assignment(agent, ctx.task_id, ctx.attempt, answer, ctx.on_progress, ctx.spawner)
        session.tasks[job.task_id] = job
        self.assigned[job.task_id] = job
        self.given.add((agent, job.task_id, job.attempt))
        self._send(
            session,
            {
                "op": "assign",
                "task_id": job.task_id,
                "attempt": job.attempt,
                "payload": ctx.payload(),
            },
        )
        try:
            return await answer
        finally:
            if self.assigned.get(job.task_id) is job:
                del self.assigned[job.task_id]
            if session.tasks.get(job.task_id) is job:
                del session.tasks[job.task_id]
                if answer.cancelled() or not answer.done():  # cancelled: tell the agent to stop
                    self._send(
                        session,
                        {
                            "op": "cancel",
                            "task_id": job.task_id,
                            "attempt": job.attempt,
                            "reason": "cancelled",
                        },
                    )

    async def put_question(
        self, agent: str, kind: str, question: int, body: dict[str, Any]
    ) -> dict[str, Any]:
        """Put a call for proposals (``kind`` ``cfp``) or a ballot (``ballot``) to
        ``agent`` and wait for its ``bid`` or ``vote`` frame (the caller's deadline
        cancels the wait; a later answer is refused with ``question_closed``)."""
        session = self.sessions.get(agent)
        if session is None:
            raise AgentLost(f"agent {agent!r} is not connected")
        key = (agent, kind, question)
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.questions[key] = answer
        self.asked.add(key)
        self._send(session, {**body, "op": kind, _QUESTION_FIELD[kind]: question})
        try:
            return await answer
        finally:
            if self.questions.get(key) is answer:
                del self.questions[key]

    # -- connections (called by the server) ---------------------------------------------

    async def serve(self, agent: str, conn: Connection, incoming: AsyncIterator[str]) -> None:
        """Run one authenticated connection of ``agent`` until it closes."""
        try:
            first = await asyncio.wait_for(anext(incoming), HELLO_TIMEOUT_S)
        except (StopAsyncIteration, TimeoutError):
            with contextlib.suppress(Exception):  # the peer may be gone already
                await conn.close(fr.CLOSE_BAD_HELLO, "no hello")
            return
        session = await self._hello(agent, conn, first)
        if session is None:
            return
        link = session.link
        assert link is not None
        try:
            async for text in incoming:
                await self._receive(session, link, text)
                if session.violations > self.max_violations:
                    await link.close(fr.CLOSE_VIOLATIONS, "too many invalid frames")
                    break
                if session.link is not link:
                    break  # replaced by a newer connection, or lost
        finally:
            await self._detach(session, link)
            await link.closing()

    async def _hello(self, agent: str, conn: Connection, text: str) -> Session | None:
        try:
            frame = fr.decode(text, self.max_message_bytes)
            session_id, caps, capacity, last_seq = fr.check_hello(frame)
            spec = self.agents.get(agent)
            if spec is None:
                raise FrameError(
                    "unknown_agent",
                    f"the plan has no remote agent {agent!r} "
                    f"(remote agents: {', '.join(sorted(self.agents)) or 'none'})",
                    "agent",
                )
            missing = sorted(set(spec.capabilities) - set(caps))
            if missing:
                raise FrameError(
                    "bad_hello",
                    f"the plan gives {agent!r} the capabilities "
                    f"{', '.join(spec.capabilities)}; this worker lacks {', '.join(missing)}",
                    "capabilities",
                )
        except FrameError as exc:
            code = fr.CLOSE_UNKNOWN_AGENT if exc.code == "unknown_agent" else fr.CLOSE_BAD_HELLO
            with contextlib.suppress(Exception):
                await conn.send_text(fr.encode(exc.frame()))
            with contextlib.suppress(Exception):
                await conn.close(code, exc.code)
            return None
        session, resumed = await self._attach(agent, session_id, caps, capacity)
        session.violations = 0  # counted per connection
        link = session.link = _Link(conn)
        session.last_seen = self.clock()
        link.send(
            fr.encode(
                {
                    "op": "welcome",
                    "agent": agent,
                    "session": session.id,
                    "resumed": resumed,
                    "last_seq": session.acked,
                    "heartbeat_s": self.heartbeat_s,
                    "max_message_bytes": self.max_message_bytes,
                }
            )
        )
        self._acked(session, last_seq)
        for text in session.outbox.values():
            link.send(text)
        if session.pump is None:
            session.pump = asyncio.create_task(self._pump(session))
        self._state(agent, "available", session_id=session.id, resumed=resumed, capacity=capacity)
        return session

    async def _attach(
        self, agent: str, session_id: str, caps: list[str], capacity: int
    ) -> tuple[Session, bool]:
        old = self.sessions.get(agent)
        if old is not None and old.id == session_id:
            if old.link is not None:  # a half-open connection the agent has given up on
                await old.link.close(fr.CLOSE_REPLACED, "replaced by a reconnect")
            old.capabilities, old.capacity = caps, capacity
            return old, True
        if old is not None:  # another process took over this agent id
            self._end(old, f"agent {agent!r} started a new session", fr.CLOSE_REPLACED)
        session = Session(agent, session_id, caps, capacity, self.clock())
        self.sessions[agent] = session
        for message in self._carried.pop(agent, []):
            self._send(session, {"op": "msg", "message": message})
        return session, False

    async def _detach(self, session: Session, link: _Link) -> None:
        await link.close(fr.CLOSE_GOING_AWAY, "")
        if session.link is link:
            session.link = None
            if self.sessions.get(session.agent) is session:
                self._state(session.agent, "offline", session_id=session.id)

    def _end(self, session: Session, reason: str, code: int) -> None:
        """Forget ``session``: its tasks go back to the queue, its connection is closed."""
        if self.sessions.get(session.agent) is session:
            del self.sessions[session.agent]
        self._dirty.discard(session)
        if session.pump is not None:
            session.pump.cancel()
        unread = [
            f["message"] for f in map(json.loads, session.outbox.values()) if f["op"] == "msg"
        ]
        if unread:  # the next session of the agent gets them
            self._carried.setdefault(session.agent, []).extend(unread)
        session.outbox.clear()
        for job in list(session.tasks.values()):
            if not job.answer.done():
                job.answer.set_exception(
                    AgentLost(f"{reason}; {job.task_id} goes back to the queue")
                )
        session.tasks.clear()
        for key, waiting in list(self.questions.items()):
            if key[0] == session.agent and not waiting.done():
                waiting.set_exception(AgentLost(f"{reason}; it cannot answer"))
        link, session.link = session.link, None
        if link is not None:
            closing = asyncio.create_task(link.close(code, reason[:120]))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    # -- frames from the agent ------------------------------------------------------------

    async def _receive(self, session: Session, link: _Link, text: str) -> None:
        session.last_seen = self.clock()
        seq: int | None = None
        fast = _fast_message(text, self.max_message_bytes)
        if fast is not None:  # a well-formed message frame, validated in one pass
            fast_seq, message = fast
            if fast_seq <= session.in_seq:
                self.counts["duplicates"] += 1
                self._dirty.add(session)
                return
            seq = fast_seq
        try:
            if fast is not None:
                try:
                    await self._on_message(session, message)
                finally:
                    session.in_seq = fast_seq
                    self._dirty.add(session)
                return
            frame = fr.decode(text, self.max_message_bytes)
            op = frame["op"]
            if op == "heartbeat":
                link.send(_HEARTBEAT_REPLY)
                return
            if op == "ack":
                self._acked(session, fr.need_int(frame, "seq"))
                return
            if op not in ("msg", "result", "spawn", "wait_children", "bid", "vote"):
                raise FrameError("unknown_op", f"unknown op {op!r}", "op")
            seq = fr.need_int(frame, "seq", 1)
            if seq <= session.in_seq:
                self.counts["duplicates"] += 1
                self._dirty.add(session)  # acknowledge again: the first ack may be lost
                return
            try:
                if op == "msg":
                    await self._on_message(session, _message_of(frame))
                elif op == "result":
                    self._on_result(session, frame)
                elif op in ("bid", "vote"):
                    self._on_answer(session, frame)
                else:
                    self._on_child_request(session, frame)
            finally:
                session.in_seq = seq  # processed, accepted or refused: never again
                self._dirty.add(session)
        except FrameError as exc:
            session.violations += 1
            self.counts["rejected"] += 1
            link.send(fr.encode(exc.frame(seq)))

    async def _on_message(self, session: Session, message: Message) -> None:
        if message.sender != session.agent:
            raise FrameError(
                "forbidden",
                f"the sender must be {session.agent!r}, the agent of this connection",
                "message.sender",
            )
        job = None
        if message.type is MessageType.STATUS_UPDATE:
            job = self._own(session, message.content.task_id or "")
        try:
            await self.bus.publish(message)
        except UnknownRecipient as exc:
            raise FrameError("unknown_recipient", str(exc), "message.recipient") from None
        self.counts["messages"] += 1
        progress = message.content.progress
        if job is not None and job.on_progress is not None and progress is not None:
            note = (message.content.data or {}).get("message", "")
            job.on_progress(job.task_id, progress, str(note))

    def _own(self, session: Session, task_id: str) -> Assignment:
        job = session.tasks.get(task_id)
        if job is None:
            raise FrameError(
                "not_your_task",
                f"task {task_id!r} is not assigned to {session.agent!r}",
                "task_id",
            )
        return job

    def _on_result(self, session: Session, frame: dict[str, Any]) -> None:
        task_id, attempt, status = fr.check_result(frame)
        job = session.tasks.get(task_id)
        if job is None or job.attempt != attempt:
            if (session.agent, task_id, attempt) in self.given:
                raise FrameError(
                    "stale_attempt",
                    f"attempt {attempt} of {task_id!r} is no longer current; its result is ignored",
                    "attempt",
                )
            raise FrameError(
                "not_your_task",
                f"attempt {attempt} of task {task_id!r} was never assigned to {session.agent!r}",
                "task_id",
            )
        del session.tasks[task_id]
        if job.answer.done():
            return
        error = str(frame.get("error") or "")
        if status == "completed":
            job.answer.set_result(dict(frame.get("result") or {}))
        elif status == "rate_limited":
            after = frame.get("retry_after_s", 60.0)
            if not isinstance(after, int | float) or isinstance(after, bool):
                after = 60.0
            job.answer.set_exception(RateLimited(float(after), error))
        else:
            job.answer.set_exception(TaskFailed(error or f"{session.agent} reported a failure"))

    def _on_answer(self, session: Session, frame: dict[str, Any]) -> None:
        """A bid (to a call for proposals) or a vote (on a ballot): only to a question put
        to this agent, and only while it is open."""
        if frame["op"] == "bid":
            kind, (question, answer) = "cfp", fr.check_bid(frame)
        else:
            kind, (question, answer) = "ballot", fr.check_vote(frame)
        name = _QUESTION_FIELD[kind]
        key = (session.agent, kind, question)
        waiting = self.questions.pop(key, None)
        if waiting is None:
            if key in self.asked:
                raise FrameError(
                    "question_closed",
                    f"{name} {question} is closed (answered, or its deadline passed); "
                    "the answer is ignored",
                    name,
                )
            raise FrameError(
                "not_your_question", f"{name} {question} was never put to {session.agent!r}", name
            )
        if not waiting.done():
            waiting.set_result(answer)

    def _on_child_request(self, session: Session, frame: dict[str, Any]) -> None:
        """A spawn or wait_children frame: only for the agent's own current attempt."""
        request, task_id, attempt = fr.check_child_request(frame)
        job = self._own(session, task_id)
        if job.attempt != attempt:
            raise FrameError(
                "stale_attempt", f"attempt {attempt} of {task_id!r} is no longer current", "attempt"
            )
        if job.spawner is None:
            raise FrameError("not_supported", f"task {task_id!r} cannot spawn subtasks", "op")
        work = asyncio.create_task(self._answer_child_request(session, job, request, frame))
        self._closing.add(work)  # kept until done
        work.add_done_callback(self._closing.discard)

    async def _answer_child_request(
        self, session: Session, job: Assignment, request: str, frame: dict[str, Any]
    ) -> None:
        from counterpoint.agents.control import outcome_json

        reply: dict[str, Any] = {"op": "reply", "request": request, "ok": True}
        try:
            if frame["op"] == "spawn":
                reply["ids"] = await job.spawner.spawn_async(frame["tasks"])
            else:
                outcomes = await job.spawner.wait(frame.get("ids"))
                reply["children"] = {k: outcome_json(v) for k, v in outcomes.items()}
        except CounterpointError as exc:
            reply = {"op": "reply", "request": request, "ok": False, "error": str(exc)}
        if self.sessions.get(session.agent) is session:
            self._send(session, reply)

    def _acked(self, session: Session, seq: int) -> None:
        outbox = session.outbox
        while outbox and next(iter(outbox)) <= seq:
            outbox.popitem(last=False)
        if len(outbox) < OUTBOX_LIMIT:
            session.room.set()

    # -- frames to the agent ----------------------------------------------------------------

    def _send(self, session: Session, frame: dict[str, Any]) -> None:
        """Number ``frame``, keep it until acknowledged, and send it if connected."""
        session.out_seq += 1
        frame["seq"] = session.out_seq
        text = fr.encode(frame)
        session.outbox[session.out_seq] = text
        if len(session.outbox) >= OUTBOX_LIMIT:
            session.room.clear()
        if session.link is not None:
            session.link.send(text)

    async def _pump(self, session: Session) -> None:
        """Forward the agent's mailbox (messages to it, its groups, everyone) to it."""
        box = self.bus.subscribe(session.agent)
        while True:
            if len(session.outbox) >= OUTBOX_LIMIT:
                session.room.clear()
                await session.room.wait()
            message = await box.get()
            self._send(session, {"op": "msg", "message": message.to_json()})

    # -- background -----------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(self.commit_every_s)
            if self._dirty:
                self._commit_and_ack()

    def _commit_and_ack(self) -> None:
        if not self._dirty:
            return
        if self.commit is not None:
            try:
                self.commit()
            except Exception:  # nothing is acknowledged that is not durable
                log.exception("the hub could not commit the journal; acknowledgements wait")
                return
        dirty, self._dirty = self._dirty, set()
        for session in dirty:
            self._ack(session, session.in_seq)

    def _ack(self, session: Session, seq: int) -> None:
        session.acked = max(session.acked, seq)
        if session.link is not None:
            session.link.send(fr.encode({"op": "ack", "seq": seq}))

    async def _monitor(self) -> None:
        """Lose agents silent for ``lost_after`` heartbeats (checked 4 times a heartbeat)."""
        while True:
            await asyncio.sleep(max(0.01, self.heartbeat_s / 4))
            limit = self.heartbeat_s * self.lost_after
            now = self.clock()
            for session in list(self.sessions.values()):
                silent = now - session.last_seen
                if silent > limit:
                    reason = f"agent {session.agent!r} missed {self.lost_after} heartbeats"
                    self._end(session, reason, fr.CLOSE_LOST)
                    self._state(session.agent, "lost", silent_s=round(silent, 3), reason=reason)

    def _state(self, agent: str, state: str, **info: Any) -> None:
        if self.on_state is not None:
            try:
                self.on_state(agent, state, info)
            except Exception:
                log.exception("agent state observer failed")


def tune_gc_for_serving() -> None:
    """Keep garbage collection from pausing a busy hub: freeze what is already built (the
    plan, the graph) out of the collector's sight and collect the young generation less
    often. Cyclic garbage is still collected, in larger, rarer batches."""
    gc.freeze()
    gc.set_threshold(*SERVING_GC_THRESHOLD)


def _message_of(frame: dict[str, Any]) -> Message:
    try:
        return parse_message(frame.get("message"))
    except MessageError as exc:
        where = exc.problems[0][0] if exc.problems else "message"
        raise FrameError("invalid_message", str(exc), f"message.{where}") from None


class _MessageFrame(BaseModel):
    model_config = ConfigDict(extra="ignore")
    op: Literal["msg"]
    seq: Annotated[int, Field(strict=True, ge=1)]
    message: Message


_MESSAGE_FRAME_PREFIX = '{"op":"msg"'


def _fast_message(text: str, max_bytes: int) -> tuple[int, Message] | None:
    """(seq, message) of a valid message frame parsed straight from its JSON, else None.

    Anything else (another op, an error of any kind) takes the general path, which
    explains what is wrong.
    """
    if not text.startswith(_MESSAGE_FRAME_PREFIX):
        return None
    if len(text) * 4 > max_bytes and len(text.encode("utf-8")) > max_bytes:
        return None
    try:
        frame = _MessageFrame.model_validate_json(text)
    except ValidationError:
        return None
    if frame.message.missing():
        return None
    return frame.seq, frame.message
