"""The agent WebSocket protocol against a real hub server on 127.0.0.1.

Each test starts a :class:`HubServer` on a free port inside its own event loop and
talks to it with real ``websockets`` clients (or the real :class:`AgentClient`),
asserting what an agent sees on the wire and what reaches the journal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shlex
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from counterpoint.agents.base import AgentLost, RateLimited, TaskContext, TaskFailed
from counterpoint.messaging.bus import Bus
from counterpoint.messaging.protocol import Content, Message, MessageType, Status, now
from counterpoint.messaging.protocol import status_update as make_status
from counterpoint.net.client import AgentClient, AgentConfig
from counterpoint.net.hub import Hub
from counterpoint.net.server import HubServer
from counterpoint.net.tokens import TokenStore
from counterpoint.plan.model import AgentSpec, Task

T = TypeVar("T")

HEARTBEAT_S = 0.2
LOST_AFTER = 3
MAX_BYTES = 4096
MAX_VIOLATIONS = 5
WAIT_S = 5.0

REMOTE = {"runner": {"remote": True}}
AGENTS = {
    "builder": AgentSpec.model_validate({"capabilities": ["build"], **REMOTE}),
    "reviewer": AgentSpec.model_validate({"capabilities": ["build", "review"], **REMOTE}),
    "tester": AgentSpec.model_validate({"capabilities": ["test"], **REMOTE}),
    "local": AgentSpec.model_validate(
        {"capabilities": ["build"], "runner": {"python": "mod:work"}}
    ),
}


# -- the harness ---------------------------------------------------------------------------


async def eventually(probe: Callable[[], T], what: str, timeout: float = WAIT_S) -> T:
    """Poll ``probe`` in the loop until it is truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)
    return value


class Peer:
    """A raw agent connection: frames read in the background (heartbeats filtered out)."""

    def __init__(self, ws: ClientConnection, heartbeat: bool) -> None:
        self.ws = ws
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.close_code: int | None = None
        self.close_reason = ""
        self.heartbeats = 0
        self.acks: list[int] = []  # the seq of every ack from the hub, in order
        self.reader = asyncio.create_task(self._read())
        self.beat = asyncio.create_task(self._beat()) if heartbeat else None

    async def _read(self) -> None:
        try:
            async for text in self.ws:
                frame = json.loads(text)
                if frame.get("op") == "heartbeat":
                    self.heartbeats += 1
                elif frame.get("op") == "ack":  # acks come at commit times: kept apart
                    self.acks.append(frame["seq"])
                else:
                    self.frames.put_nowait(frame)
        except ConnectionClosed as exc:
            if exc.rcvd is not None:
                self.close_code, self.close_reason = exc.rcvd.code, exc.rcvd.reason
            else:
                self.close_code = 1006
        else:
            rcvd = self.ws.protocol.close_rcvd
            self.close_code = rcvd.code if rcvd is not None else 1006
            self.close_reason = rcvd.reason if rcvd is not None else ""

    async def _beat(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await self.ws.send(json.dumps({"op": "heartbeat", "running": []}))
                await asyncio.sleep(HEARTBEAT_S / 4)

    def stop_heartbeats(self) -> None:
        if self.beat is not None:
            self.beat.cancel()

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def next(self, timeout: float = WAIT_S) -> dict[str, Any]:
        getter = asyncio.ensure_future(self.frames.get())
        done, _ = await asyncio.wait(
            {getter, self.reader}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if getter in done:
            return getter.result()
        getter.cancel()
        if self.reader in done and self.frames.empty():
            raise AssertionError(f"the hub closed the connection ({self.close_code})")
        raise AssertionError(f"no frame from the hub within {timeout}s")

    async def expect(self, op: str, **fields: Any) -> dict[str, Any]:
        frame = await self.next()
        assert frame["op"] == op, frame
        for key, value in fields.items():
            assert frame.get(key) == value, (key, frame)
        return frame

    async def error(self, code: str, field: str | None, seq: int | None = None) -> dict[str, Any]:
        frame = await self.expect("error", code=code)
        assert frame.get("field") == field, frame
        assert frame.get("seq") == seq, frame
        assert frame["message"], frame
        return frame

    async def acked(self, seq: int, after: int = 0) -> None:
        """Wait for an ack covering ``seq`` among the acks from index ``after`` on."""
        await eventually(lambda: any(a >= seq for a in self.acks[after:]), f"ack {seq}")

    async def quiet(self, seconds: float) -> None:
        """Nothing but heartbeats arrives for ``seconds``."""
        try:
            frame = await asyncio.wait_for(self.frames.get(), seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected frame {frame}")

    async def closed(self, timeout: float = WAIT_S) -> int | None:
        """The close code, once the hub has closed the connection."""
        await asyncio.wait_for(asyncio.shield(self.reader), timeout)
        return self.close_code

    async def stop(self) -> None:
        for task in (self.beat, self.reader):
            if task is not None:
                task.cancel()
        await asyncio.gather(
            *(t for t in (self.beat, self.reader) if t is not None), return_exceptions=True
        )
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 2)


@dataclass
class Wire:
    hub: Hub
    server: HubServer
    bus: Bus
    store: TokenStore
    tmp: Path
    journal: list[Message] = field(default_factory=list)
    commits: list[int] = field(default_factory=list)  # the journal's length at each commit
    commit_fails: bool = False
    states: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)
    peers: list[Peer] = field(default_factory=list)
    progress: list[tuple[str, float, str]] = field(default_factory=list)
    background: list[asyncio.Task[Any]] = field(default_factory=list)

    def commit(self) -> None:
        if self.commit_fails:
            raise OSError("the disk is full")
        self.commits.append(len(self.journal))

    def on_state(self, agent: str, state: str, info: dict[str, Any]) -> None:
        self.states.append((agent, state, info))

    def url(self, agent: str) -> str:
        return f"{self.server.url}/agents/{agent}/ws"

    async def open(self, agent: str, token: str | None = None, *, heartbeat: bool = True) -> Peer:
        """A connection to ``agent``'s endpoint with its token (or ``token``); no hello yet."""
        token = self.tokens.get(agent, "") if token is None else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        ws = await connect(
            self.url(agent),
            additional_headers=headers,
            ping_interval=None,
            max_size=None,
            open_timeout=WAIT_S,
            close_timeout=1,
        )
        peer = Peer(ws, heartbeat)
        self.peers.append(peer)
        return peer

    async def join(
        self,
        agent: str,
        session: str | None = None,
        *,
        heartbeat: bool = True,
        last_seq: int = 0,
        resumed: bool = False,
    ) -> tuple[Peer, dict[str, Any]]:
        """A welcomed connection of ``agent`` (a new session unless ``session`` is given)."""
        peer = await self.open(agent, heartbeat=heartbeat)
        await peer.send(
            {
                "op": "hello",
                "version": "1.0",
                "session": session or f"{agent}-{uuid.uuid4().hex[:8]}",
                "capabilities": AGENTS[agent].capabilities,
                "capacity": 2,
                "last_seq": last_seq,
            }
        )
        welcome = await peer.expect("welcome", agent=agent, resumed=resumed)
        return peer, welcome

    def assign(self, agent: str, task_id: str, attempt: int = 1) -> asyncio.Task[dict[str, Any]]:
        """``hub.run_task`` in the background; the task's progress goes to ``self.progress``."""
        ctx = TaskContext(
            run_id="run-1",
            task=Task(id=task_id, name=f"task {task_id}", instructions="do it"),
            attempt=attempt,
            agent=agent,
            state_dir=self.tmp,
            workdir=self.tmp,
            log_dir=self.tmp / "logs",
            on_progress=lambda task, pct, note: self.progress.append((task, pct, note)),
        )
        job = asyncio.create_task(self.hub.run_task(agent, ctx))
        self.background.append(job)
        return job

    def journaled(self, message_id: str) -> int:
        return sum(1 for m in self.journal if str(m.message_id) == message_id)


@contextlib.asynccontextmanager
async def wire(tmp_path: Path) -> AsyncIterator[Wire]:
    store = TokenStore(tmp_path / "state")
    journal: list[Message] = []
    bus = Bus(journal=journal.append)
    box: list[Wire] = []
    hub = Hub(
        bus,
        AGENTS,
        heartbeat_s=HEARTBEAT_S,
        lost_after=LOST_AFTER,
        max_message_bytes=MAX_BYTES,
        max_violations=MAX_VIOLATIONS,
        commit=lambda: box[0].commit(),
        commit_every_s=0.01,
        on_state=lambda agent, state, info: box[0].on_state(agent, state, info),
    )
    server = HubServer(hub, store, host="127.0.0.1", port=0)
    w = Wire(hub, server, bus, store, tmp_path, journal=journal)
    box.append(w)
    for name in ("builder", "reviewer", "tester", "local", "stranger"):
        w.tokens[name] = store.create(name)
    await server.start()
    assert server.port != 0
    try:
        yield w
    finally:
        for job in w.background:
            job.cancel()
        await asyncio.gather(*w.background, return_exceptions=True)
        await asyncio.gather(*(p.stop() for p in w.peers), return_exceptions=True)
        await server.stop()


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 60))


def notification(sender: str, recipient: str, priority: str = "medium", **data: Any) -> Message:
    return Message(
        sender=sender,
        recipient=recipient,
        type=MessageType.NOTIFICATION,
        timestamp=now(),
        priority=priority,  # type: ignore[arg-type]
        content=Content(event_type="note", severity="info", data=data),
    )


def msg(seq: int, message: Message | dict[str, Any]) -> dict[str, Any]:
    body = message.to_json() if isinstance(message, Message) else message
    return {"op": "msg", "seq": seq, "message": body}


def status(sender: str, task_id: str, progress: float = 40.0) -> Message:
    return make_status(sender, task_id, Status.IN_PROGRESS, progress, message="halfway")


def result(seq: int, task_id: str, attempt: int = 1, **fields: Any) -> dict[str, Any]:
    frame = {"op": "result", "seq": seq, "task_id": task_id, "attempt": attempt}
    frame.update({"status": "completed", "result": {}, **fields})
    return frame


# -- 1. authentication ------------------------------------------------------------------


def test_the_upgrade_needs_the_agents_own_token(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with wire(tmp_path) as w:
            refusals = {
                "no token": "",
                "a wrong token": "cpt_" + "x" * 43,
                "another agent's token": w.tokens["tester"],
                "a token with its last character changed": w.tokens["builder"][:-1] + "!",
            }
            for why, token in refusals.items():
                with pytest.raises(InvalidStatus) as info:
                    await w.open("builder", token)
                assert info.value.response.status_code == 403, why
            operator = w.store.create("root", kind="operator")
            with pytest.raises(InvalidStatus) as info:
                await w.open("root", operator)  # an operator token opens no agent session
            assert info.value.response.status_code == 403
            assert w.hub.sessions == {}
            assert w.states == []

            _, welcome = await w.join("builder")  # the server keeps serving
            assert welcome["agent"] == "builder"

            w.store.revoke("builder")  # revoked while serving: refused at the next connection
            with pytest.raises(InvalidStatus) as info:
                await w.open("builder")
            assert info.value.response.status_code == 403
            w.tokens["builder"] = w.store.create("builder")  # and a new one works at once
            await w.join("builder")

    run(scenario)


# -- 2. the hello handshake ----------------------------------------------------------------


def test_a_hello_is_welcomed_with_the_session_parameters(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with wire(tmp_path) as w:
            peer, welcome = await w.join("builder", "s-1")
            assert welcome == {
                "op": "welcome",
                "agent": "builder",
                "session": "s-1",
                "resumed": False,
                "last_seq": 0,
                "heartbeat_s": HEARTBEAT_S,
                "max_message_bytes": MAX_BYTES,
            }
            assert w.states == [
                ("builder", "available", {"session_id": "s-1", "resumed": False, "capacity": 2})
            ]
            seen = w.hub.connected()["builder"]
            assert (seen["connected"], seen["session"], seen["capacity"]) == (True, "s-1", 2)
            await peer.send({"op": "heartbeat", "running": []})
            await eventually(lambda: peer.heartbeats, "a heartbeat reply")

    run(scenario)


@pytest.mark.parametrize("agent", ["stranger", "local"])
def test_an_agent_that_is_not_a_remote_agent_of_the_plan_is_closed_4404(
    tmp_path: Path, agent: str
) -> None:
    async def scenario() -> None:
        async with wire(tmp_path) as w:
            peer = await w.open(agent)  # its token is good: the upgrade succeeds
            await peer.send({"op": "hello", "session": "s-1", "capabilities": ["build"]})
            frame = await peer.error("unknown_agent", "agent")
            assert repr(agent) in frame["message"]
            assert "builder, reviewer, tester" in frame["message"]
            assert await peer.closed() == 4404
            assert agent not in w.hub.sessions
            assert w.states == []

    run(scenario)


@pytest.mark.parametrize(
    ("first", "field", "says"),
    [
        (
            {"op": "hello", "session": "s-1", "capabilities": ["test"]},
            "capabilities",
            "lacks build",
        ),
        ({"op": "hello", "session": "s-1"}, "capabilities", "lacks build"),
        ({"op": "heartbeat", "running": []}, "op", "first frame must be a hello"),
        ({"op": "msg", "seq": 1, "message": {}}, "op", "first frame must be a hello"),
        (
            {"op": "hello", "session": "s-1", "capabilities": ["build"], "version": "9"},
            "version",
            "not supported",
        ),
    ],
)
def test_a_bad_first_frame_is_closed_4400_naming_the_problem(
    tmp_path: Path, first: dict[str, Any], field: str, says: str
) -> None:
    async def scenario() -> None:
        async with wire(tmp_path) as w:
            peer = await w.open("builder")
            await peer.send(first)
            frame = await peer.error("bad_hello", field)
            assert says in frame["message"]
            assert await peer.closed() == 4400
            assert w.hub.sessions == {}
            await w.join("builder")  # a good hello afterwards is welcomed

    run(scenario)


def test_a_first_frame_that_is_not_json_is_closed_4400(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with wire(tmp_path) as w:
            peer = await w.open("builder")
            await peer.send("hello?")
            await peer.error("invalid_json", "frame")
            assert await peer.closed() == 4400

    run(scenario)


# -- 3. bad frames -----------------------------------------------------------------------


def test_bad_frames_get_error_frames_and_too_many_close_the_connection_4429(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with wire(tmp_path) as w:
            peer, _ = await w.join("builder")
            broken = notification("builder", "orchestrator").to_json()
            del broken["content"]["event_type"]
            bad_status = status("builder", "t1").to_json()
            del bad_status["content"]["progress"]

            await peer.send("{not json")
            await peer.error("invalid_json", "frame")
            await peer.send("[1, 2]")
            await peer.error("invalid_frame", "frame")
            await peer.send({"op": "dance"})
            await peer.error("unknown_op", "op")
            await peer.send(msg(1, bad_status))
            frame = await peer.error("invalid_message", "message.content.progress", seq=1)
            assert "content.progress" in frame["message"]
            await peer.acked(1)  # refused, but processed: never applied again
            await peer.send({"op": "msg", "seq": 0, "message": broken})
            await peer.error("invalid_frame", "seq")

            good = notification("builder", "orchestrator", n=1)
            await peer.send(msg(2, good))  # the connection is still open and working
            await peer.acked(2)
            assert [str(m.message_id) for m in w.journal] == [str(good.message_id)]
            assert w.hub.sessions["builder"].violations == MAX_VIOLATIONS

            await peer.send(msg(3, broken))  # one more than allowed
            await peer.error("invalid_message", "message.content.event_type", seq=3)
            assert await peer.closed() == 4429
            assert len(w.journal) == 1
            assert w.hub.counts["rejected"] == MAX_VIOLATIONS + 1

            other, _ = await w.join("builder")  # a new connection is accepted
            await other.send(msg(1, notification("builder", "orchestrator", n=2)))
            await other.acked(1)
            assert len(w.journal) == 2

    run(scenario)


def test_a_message_to_an_unknown_recipient_is_refused_and_not_journaled(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with wire(tmp_path) as w:
            peer, _ = await w.join("builder")
            await peer.send(msg(1, notification("builder", "nobody")))
            frame = await peer.error("unknown_recipient", "message.recipient", seq=1)
            assert "'nobody'" in frame["message"]
            await peer.acked(1)
            await peer.send(msg(2, notification("builder", "tester", n=2)))
            await peer.acked(2)
            assert [m.recipient for m in w.journal] == ["tester"]
            assert len(w.bus.mailboxes["tester"]) == 1

    run(scenario)


# -- 4. oversized frames -----------------------------------------------------------------


def test_oversized_frames_get_too_large_and_twice_the_limit_closes_1009(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with wire(tmp_path) as w:
            peer, _ = await w.join("builder", "s-1")
            big = notification("builder", "orchestrator", pad="x" * MAX_BYTES)
            frame = json.dumps(msg(1, big))
            assert MAX_BYTES < len(frame) < 2 * MAX_BYTES
            await peer.send(frame)
            error = await peer.error("too_large", "frame")
            assert str(MAX_BYTES) in error["message"]

            fits = notification("builder", "orchestrator", pad="x" * (MAX_BYTES - 600))
            assert len(json.dumps(msg(1, fits))) <= MAX_BYTES
            await peer.send(msg(1, fits))  # still open; the refused frame was not processed
            await peer.acked(1)
            assert [str(m.message_id) for m in w.journal] == [str(fits.message_id)]

            huge = notification("builder", "orchestrator", pad="x" * (2 * MAX_BYTES))
            await peer.send(msg(2, huge))
            assert await peer.closed() == 1009
            assert len(w.journal) == 1

            again, welcome = await w.join("builder", "s-1", resumed=True)  # still serving
            assert welcome["last_seq"] == 1
            await again.send(msg(2, notification("builder", "orchestrator", n=2)))
            await again.acked(2)
            assert len(w.journal) == 2

    run(scenario)


# -- 5. spoofing and other agents' tasks -------------------------------------------------


def test_an_agent_may_not_speak_for_another_or_about_its_tasks(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with wire(tmp_path) as w:
            builder, _ = await w.join("builder")
            tester, _ = await w.join("tester")
            theirs = w.assign("tester", "t-test")
            await tester.expect("assign", task_id="t-test", attempt=1, seq=1)

            await builder.send(msg(1, notification("tester", "reviewer")))
            frame = await builder.error("forbidden", "message.sender", seq=1)
            assert "'builder'" in frame["message"]
            await builder.send(msg(2, status("tester", "t-test")))
            await builder.error("forbidden", "message.sender", seq=2)
            await builder.send(msg(3, status("builder", "t-test")))
            frame = await builder.error("not_your_task", "task_id", seq=3)
            assert "'t-test'" in frame["message"]
            await builder.send(msg(4, status("builder", "t-nobody")))
            await builder.error("not_your_task", "task_id", seq=4)
            await builder.send(result(5, "t-test", result={"forged": True}))
            frame = await builder.expect("error", seq=5)
            assert frame["code"] in ("not_your_task", "stale_attempt"), frame

            await asyncio.sleep(0.1)
            assert w.journal == []
            assert w.progress == []
            assert len(w.bus.mailboxes["reviewer"]) == 0
            assert not theirs.done()

            await tester.send(msg(1, status("tester", "t-test")))  # its own agent may
            await tester.acked(1)
            await tester.send(result(2, "t-test", result={"real": True}))
            assert await asyncio.wait_for(theirs, WAIT_S) == {"real": True}
            assert [m.sender for m in w.journal] == ["tester"]

    run(scenario)


# -- 6. durable acknowledgements, dedupe and results ----------------------------------------


def test_a_status_update_is_journaled_once_and_acked_only_after_the_commit(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with wire(tmp_path) as w:
            peer, _ = await w.join("builder")
            job = w.assign("builder", "t1")
            assign = await peer.expect("assign", task_id="t1", attempt=1, seq=1)
            assert assign["payload"]["run_id"] == "run-1"
            assert assign["payload"]["task"]["id"] == "t1"
            await peer.send({"op": "ack", "seq": 1})

            w.commit_fails = True
            update = status("builder", "t1", 40)
            await peer.send(msg(1, update))
            await eventually(lambda: w.journal, "the status update in the journal")
            await asyncio.sleep(0.3)
            assert peer.acks == []  # not acknowledged while the journal cannot be committed
            w.commit_fails = False
            await peer.acked(1)
            assert peer.acks == [1]
            assert w.commits and w.commits[-1] >= 1  # the commit ran after it was journaled
            assert w.journaled(str(update.message_id)) == 1
            assert w.progress == [("t1", 40.0, "halfway")]

            await peer.send(msg(1, update))  # a resend of the same frame: acked again only
            await peer.acked(1, after=1)
            await peer.send(msg(2, update))  # the same message in a new frame
            await peer.acked(2)
            assert w.journaled(str(update.message_id)) == 1
            assert len(w.journal) == 1
            assert w.hub.counts["duplicates"] == 1

            assert not job.done()
            await peer.send(result(3, "t1", result={"artifact": "app.tar"}))
            await peer.acked(3)
            assert await asyncio.wait_for(job, WAIT_S) == {"artifact": "app.tar"}
            assert "t1" not in w.hub.sessions["builder"].tasks

            failing = w.assign("builder", "t2", attempt=2)
            await peer.expect("assign", task_id="t2", attempt=2, seq=2)
            await peer.send(result(4, "t2", attempt=2, status="failed", error="make: *** [all]"))
            with pytest.raises(TaskFailed, match=r"make: \*\*\* \[all\]"):
                await asyncio.wait_for(failing, WAIT_S)
            await peer.acked(4)

            limited = w.assign("builder", "t3")
            await peer.expect("assign", task_id="t3", attempt=1, seq=3)
            await peer.send(
                result(5, "t3", status="rate_limited", retry_after_s=12.5, error="slow down")
            )
            with pytest.raises(RateLimited) as info:
                await asyncio.wait_for(limited, WAIT_S)
            assert info.value.retry_after_s == 12.5
            await peer.acked(5)

            seen = len(peer.acks)
            await peer.send(result(5, "t3", status="completed"))  # a resent result: ignored
            await peer.acked(5, after=seen)
            assert w.hub.counts["duplicates"] == 2
            assert len(w.journal) == 1

    run(scenario)


# -- 7. reconnects with the real agent client ------------------------------------------------


def test_the_agent_client_resends_after_a_reconnect_and_nothing_is_applied_twice(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with wire(tmp_path) as w:
            runs = tmp_path / "runs.log"
            client = AgentClient(
                AgentConfig(
                    url=w.server.url,
                    agent="builder",
                    token=w.tokens["builder"],
                    capabilities=["build"],
                    command=(
                        f"echo {{task_id}} >> {shlex.quote(str(runs))}; "
                        "printf '%s\\n' '{{\"ran\": true}}'"
                    ),
                    use_shell=True,
                    workdir=tmp_path,
                    state_dir=tmp_path / "agent",
                    backoff_initial_s=0.2,
                    backoff_max_s=0.4,
                )
            )
            agent = asyncio.create_task(client.run())
            w.background.append(agent)
            first = await eventually(lambda: client.ws, "the client's connection")
            session = w.hub.sessions["builder"]

            w.commit_fails = True  # the hub processes frames but cannot acknowledge them
            notes = [notification("builder", "orchestrator", n=i) for i in range(5)]
            for note in notes:
                client.send({"op": "msg", "message": note.to_json()})
            await eventually(lambda: len(w.journal) == 5, "five journaled messages")
            assert len(client.outbox) == 5

            first.transport.abort()  # the connection drops before any acknowledgement
            await eventually(lambda: session.link is None, "the hub to see the drop")
            job = w.assign("builder", "t1")  # assigned while the agent is away
            await eventually(lambda: session.outbox, "the assign frame queued")
            assert client.ws is None and client.connections == 1

            await eventually(lambda: client.connections == 2, "the client to reconnect")
            assert w.hub.sessions["builder"] is session  # the same session, resumed
            await eventually(lambda: w.hub.counts["duplicates"] >= 5, "the resent frames")
            w.commit_fails = False

            assert await asyncio.wait_for(job, WAIT_S) == {"ran": True}
            await eventually(lambda: not client.outbox, "the client's outbox to drain")
            await eventually(lambda: not session.outbox, "the hub's outbox to drain")
            assert runs.read_text().split() == ["t1"]  # the assign was delivered once
            for note in notes:
                assert w.journaled(str(note.message_id)) == 1
            assert w.hub.counts["duplicates"] == 5
            updates = [m for m in w.journal if m.type is MessageType.STATUS_UPDATE]
            assert [m.content.task_id for m in updates] == ["t1"]  # "started", once
            states = [s for a, s, _ in w.states if a == "builder"]
            assert states == ["available", "offline", "available"]
            assert w.states[-1][2]["resumed"] is True
            assert client.errors == []

            client.stop()
            await asyncio.wait_for(agent, WAIT_S)

    run(scenario)


def test_the_hub_resends_unacknowledged_frames_to_a_resumed_session(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with wire(tmp_path) as w:
            peer, _ = await w.join("builder", "s-1")
            job = w.assign("builder", "t1")
            await peer.expect("assign", task_id="t1", seq=1)  # seen, but never acknowledged
            await peer.send({"op": "msg", "seq": 1, "message": status("builder", "t1").to_json()})
            await peer.acked(1)
            await peer.stop()
            await eventually(lambda: w.hub.sessions["builder"].link is None, "the drop")
            await w.bus.publish(notification("orchestrator", "builder", n=1))

            again, welcome = await w.join("builder", "s-1", resumed=True, last_seq=0)
            assert welcome["last_seq"] == 1  # what the hub has processed from the agent
            await again.expect("assign", task_id="t1", seq=1)
            frame = await again.expect("msg", seq=2)
            assert frame["message"]["content"]["data"] == {"n": 1}
            await again.send({"op": "ack", "seq": 2})
            await eventually(lambda: not w.hub.sessions["builder"].outbox, "the acks")

            third, _ = await w.join("builder", "s-1", resumed=True, last_seq=2)
            await third.quiet(0.2)  # everything was acknowledged: nothing is resent
            await third.send(result(2, "t1", result={"ok": 1}))
            assert await asyncio.wait_for(job, WAIT_S) == {"ok": 1}

    run(scenario)


# -- 8. lost agents ----------------------------------------------------------------------


def test_a_silent_agent_is_lost_and_its_late_result_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with wire(tmp_path) as w:
            silent, _ = await w.join("builder", "old", heartbeat=False)
            job = w.assign("builder", "t1")
            await silent.expect("assign", task_id="t1", attempt=1)
            await silent.send({"op": "ack", "seq": 1})
            quiet_since = time.monotonic()

            await eventually(lambda: any(s == "lost" for _, s, _ in w.states), "lost")
            took = time.monotonic() - quiet_since
            assert took >= HEARTBEAT_S * LOST_AFTER - 0.05
            agent, state, info = w.states[-1]
            assert (agent, state) == ("builder", "lost")
            assert info["silent_s"] > HEARTBEAT_S * LOST_AFTER
            assert f"missed {LOST_AFTER} heartbeats" in info["reason"]
            with pytest.raises(AgentLost):
                await asyncio.wait_for(job, WAIT_S)
            assert await silent.closed() == 4408
            assert "builder" not in w.hub.sessions

            back, welcome = await w.join("builder", "new")  # a new session
            assert welcome["resumed"] is False and welcome["last_seq"] == 0
            await back.send(result(1, "t1", attempt=1, result={"late": True}))
            frame = await back.expect("error", seq=1)
            assert frame["code"] in ("not_your_task", "stale_attempt"), frame
            await back.acked(1)

            retry = w.assign("builder", "t1", attempt=2)
            await back.expect("assign", task_id="t1", attempt=2)
            await back.send(result(2, "t1", attempt=1, result={"late": True}))
            await back.error("stale_attempt", "attempt", seq=2)
            await back.acked(2)
            await asyncio.sleep(0.05)
            assert not retry.done()  # the old attempt's result was not applied
            await back.send(result(3, "t1", attempt=2, result={"fresh": True}))
            assert await asyncio.wait_for(retry, WAIT_S) == {"fresh": True}

    run(scenario)


def test_an_agent_that_keeps_sending_heartbeats_is_not_lost(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with wire(tmp_path) as w:
            peer, _ = await w.join("builder")
            job = w.assign("builder", "t1")
            await peer.expect("assign", task_id="t1")
            await asyncio.sleep(HEARTBEAT_S * LOST_AFTER * 2)
            assert [s for _, s, _ in w.states] == ["available"]
            assert not job.done()
            assert w.hub.connected()["builder"]["tasks"] == ["t1"]

    run(scenario)


# -- 9. another process takes over an agent id -----------------------------------------------


def test_a_new_session_replaces_the_old_one(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with wire(tmp_path) as w:
            old, _ = await w.join("builder", "first")
            job = w.assign("builder", "t1")
            await old.expect("assign", task_id="t1")

            new, welcome = await w.join("builder", "second")
            assert welcome["session"] == "second" and welcome["resumed"] is False
            assert await old.closed() == 4409
            with pytest.raises(AgentLost, match="new session"):
                await asyncio.wait_for(job, WAIT_S)
            assert w.hub.sessions["builder"].id == "second"
            await new.quiet(0.1)  # the old session's assign is not handed to the new one

            await new.send(msg(1, notification("builder", "orchestrator")))
            await new.acked(1)

    run(scenario)


def test_a_reconnect_of_the_same_session_replaces_a_half_open_connection(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with wire(tmp_path) as w:
            old, _ = await w.join("builder", "s-1")
            job = w.assign("builder", "t1")
            await old.expect("assign", task_id="t1", seq=1)

            new, _ = await w.join("builder", "s-1", resumed=True)
            assert await old.closed() == 4409
            await new.expect("assign", task_id="t1", seq=1)  # unacknowledged: resent
            assert not job.done()  # the task survives the reconnect
            await new.send(result(1, "t1", result={"done": 1}))
            assert await asyncio.wait_for(job, WAIT_S) == {"done": 1}

    run(scenario)


# -- 10. messages to remote agents ------------------------------------------------------------


def test_messages_on_the_bus_reach_remote_agents_in_priority_order(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with wire(tmp_path) as w:
            for priority, n, to in [
                ("low", 0, "builder"),
                ("critical", 1, "builder"),
                ("medium", 2, "builder"),
                ("high", 3, "build"),  # a capability group: builder and reviewer
                ("low", 4, "*"),  # everyone
                ("critical", 5, "review"),  # reviewer only
                ("high", 6, "tester"),
            ]:
                await w.bus.publish(notification("orchestrator", to, priority, n=n))

            async def inbox(peer: Peer, count: int) -> list[tuple[int, int]]:
                got = [await peer.expect("msg") for _ in range(count)]
                await peer.quiet(0.1)
                return [(f["seq"], f["message"]["content"]["data"]["n"]) for f in got]

            builder, _ = await w.join("builder")
            assert await inbox(builder, 5) == [(1, 1), (2, 3), (3, 2), (4, 0), (5, 4)]
            reviewer, _ = await w.join("reviewer")
            assert await inbox(reviewer, 3) == [(1, 5), (2, 3), (3, 4)]
            tester, _ = await w.join("tester")
            assert await inbox(tester, 2) == [(1, 6), (2, 4)]

            await builder.send({"op": "ack", "seq": 5})
            await w.bus.publish(notification("orchestrator", "builder", "high", n=7))
            frame = await builder.expect("msg", seq=6)
            assert frame["message"]["sender"] == "orchestrator"
            assert frame["message"]["priority"] == "high"
            await builder.send({"op": "ack", "seq": 6})
            await eventually(lambda: not w.hub.sessions["builder"].outbox, "the acks")

            agent_note = notification("tester", "build", n=8)  # from one agent to a group
            await tester.send(msg(1, agent_note))
            await tester.acked(1)
            got = await builder.expect("msg", seq=7)
            assert got["message"]["message_id"] == str(agent_note.message_id)
            assert (await reviewer.expect("msg", seq=4))["message"]["sender"] == "tester"

    run(scenario)


def test_a_message_the_agent_never_acknowledged_reaches_its_next_session(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with wire(tmp_path) as w:
            peer, _ = await w.join("builder", "first")
            await peer.stop()  # the network goes away...
            await eventually(lambda: w.hub.sessions["builder"].link is None, "the drop")
            note = notification("orchestrator", "builder", "high", n=1)
            assert await w.bus.publish(note) == 1  # ...while a message is sent to the agent
            await eventually(lambda: any(s == "lost" for _, s, _ in w.states), "lost")

            back, _ = await w.join("builder", "second")  # the agent comes back
            try:
                frame = await back.next(timeout=1.0)
            except AssertionError:
                raise AssertionError(
                    "the message published while the agent was away was never delivered: "
                    "it was dropped with the lost session's outbox"
                ) from None
            assert frame["op"] == "msg", frame
            assert frame["message"]["message_id"] == str(note.message_id)
            assert w.journaled(str(note.message_id)) == 1

    run(scenario)
