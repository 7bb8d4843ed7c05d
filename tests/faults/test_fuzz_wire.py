"""Fuzzing the wire: hypothesis-generated frames sent to a live hub by an authenticated agent.

The hub (the product's :class:`Hub` behind its :class:`HubServer`, as in
``tests/integration/test_hub_wire.py``, whose harness this reuses) runs in a background
thread. Each example opens a welcomed connection and sends frames: JSON objects with
every op and wrong fields, wrong types and huge values, JSON that is not an object,
text that is not JSON, deeply nested JSON, invalid UTF-8 in a text frame, binary frames,
frames over the size limit and over twice the limit. Then:

* the hub answers each refused frame with an ``error`` frame whose code is documented, or
  closes the connection with a documented close code, and never hangs: a heartbeat sent
  after the frames is answered (frames are handled in order) unless it closed;
* another agent, connected all along, still has its messages journaled and acknowledged;
* nothing is logged at ERROR or with a traceback (an unexpected error) by the hub, the
  server or uvicorn.

What the unit tests already cover is not repeated: ``test_frames.py`` checks each frame
checker's errors by example, ``test_fuzz_loader.py`` fuzzes plans, not frames. When
atheris is installed, a coverage-guided harness of the frame parsing (``frames.decode``,
the frame checkers, the hub's fast path for message frames, ``parse_message``) runs for a
short budget too (``COUNTERPOINT_FAULTS=full``: a longer one).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from net_helpers import FULL, PY, figure
from test_hub_wire import AGENTS, MAX_BYTES, MAX_VIOLATIONS, Peer, Wire, msg, notification, wire
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

EXAMPLES = 600 if FULL else 80
ATHERIS_SECONDS = 120 if FULL else 6

#: The error codes docs/protocol.md lists (and the hello's, for a second hello).
ERROR_CODES = {
    "invalid_json",
    "invalid_frame",
    "unknown_op",
    "too_large",
    "invalid_message",
    "forbidden",
    "not_your_task",
    "stale_attempt",
    "unknown_recipient",
    "not_your_question",
    "question_closed",
    "not_supported",
}
#: Close codes docs/protocol.md lists, and RFC 6455's 1007 (a text frame that is not
#: UTF-8: the WebSocket layer closes before the hub sees it).
CLOSE_CODES = {1001, 1007, 1009, 4400, 4408, 4409, 4429}
OPS = [
    "hello",
    "welcome",
    "assign",
    "cancel",
    "msg",
    "result",
    "ack",
    "spawn",
    "wait_children",
    "reply",
    "cfp",
    "bid",
    "ballot",
    "vote",
    "heartbeat",
    "error",
    "",
    "MSG",
]
FIELDS = [
    "seq",
    "task_id",
    "attempt",
    "status",
    "result",
    "error",
    "retry_after_s",
    "message",
    "request",
    "tasks",
    "ids",
    "call",
    "ballot",
    "vote",
    "abstain",
    "refuse",
    "duration_s",
    "cost",
    "load",
    "note",
    "running",
    "session",
    "capabilities",
    "capacity",
    "last_seq",
    "version",
]

huge_ints = st.sampled_from([0, -1, 2**31, 2**63, -(2**63) - 1, 10**40, 10**300])
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | huge_ints
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    """A protocol message, sometimes valid, with fields dropped, retyped or invented."""
    base = notification("builder", draw(st.sampled_from(["*", "orchestrator", "tester", "nobody"])))
    body = base.to_json()
    for key in draw(st.lists(st.sampled_from([*body, "content.task_id", "extra"]), max_size=3)):
        if draw(st.booleans()):
            body.pop(key, None)
        else:
            body[key] = draw(values)
    return body


@st.composite
def frame_objects(draw: st.DrawFn) -> str:
    frame: dict[str, Any] = {"op": draw(st.sampled_from(OPS) | st.text(max_size=10))}
    if frame["op"] == "msg" and draw(st.booleans()):
        frame["seq"] = draw(st.integers(min_value=1, max_value=10**6) | huge_ints)
        frame["message"] = draw(messages())
    for key in draw(st.lists(st.sampled_from(FIELDS) | st.text(max_size=6), max_size=5)):
        frame[key] = draw(values)
    if draw(st.integers(0, 9)) == 0:
        del frame["op"]
    return json.dumps(frame, allow_nan=True)


def nested(depth: int) -> str:
    return '{"op":"ack","seq":' + "[" * depth + "]" * depth + "}"


#: (kind, payload): "text" a text frame, "bytes" a binary frame, "raw" bytes in a text frame.
frames = st.one_of(
    frame_objects().map(lambda t: ("text", t)),
    values.map(lambda v: ("text", json.dumps(v))),
    st.text(max_size=200).map(lambda t: ("text", t)),
    st.integers(500, 2000).map(lambda d: ("text", nested(d))),
    st.binary(max_size=200).map(lambda b: ("bytes", b)),
    frame_objects().map(lambda t: ("bytes", t.encode())),
    st.binary(min_size=1, max_size=64).map(lambda b: ("raw", b"\xff\xfe" + b)),
    st.integers(MAX_BYTES + 1, 2 * MAX_BYTES).map(
        lambda n: ("text", '{"op":"msg","x":"' + "x" * n + '"}')
    ),
    st.integers(2 * MAX_BYTES + 100, 4 * MAX_BYTES).map(lambda n: ("text", "y" * n)),
)


# -- the live hub in a thread ------------------------------------------------------------


#: uvicorn's own record of a text frame that is not UTF-8 (it closes the connection 1007
#: before the hub sees anything), which uvicorn logs at ERROR with a traceback; the
#: server turns it into one warning line, so it must never reach here as an error.
UVICORN_UTF8 = ("uvicorn.error", "Invalid UTF-8 sequence received from client.")


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.bad: list[str] = []
        self.uvicorn_utf8 = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.ERROR and not record.exc_info:
            return
        if record.name.startswith("websockets.client"):  # the fuzzing client's own
            return
        if (record.name, record.getMessage()) == UVICORN_UTF8:
            self.uvicorn_utf8 += 1
            return
        self.bad.append(f"{record.name}: {record.getMessage()}\n{self.format(record)}")


class LiveHub:
    """A hub serving in a background thread; a healthy agent ("tester") connected all along."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ready = threading.Event()
        self.failed: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping: asyncio.Event | None = None
        self.w: Wire | None = None
        self.peer: Peer | None = None
        self.seq = 0
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()
        if not self.ready.wait(30):
            raise RuntimeError(f"the hub did not start: {self.failed!r}")
        if self.failed is not None:
            raise self.failed

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to the test thread
            self.failed = exc
            self.ready.set()

    async def _serve(self) -> None:
        async with wire(self.tmp) as w:
            self.w, self.loop, self.stopping = w, asyncio.get_running_loop(), asyncio.Event()
            self.peer, _ = await w.join("tester")
            self.ready.set()
            await self.stopping.wait()

    def stop(self) -> None:
        if self.loop is not None and self.stopping is not None:
            self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(30)

    def healthy(self) -> None:
        """The other agent's message is journaled and acknowledged, as before the fuzzing."""
        assert self.loop is not None and self.w is not None and self.peer is not None
        self.seq += 1
        seq, peer, w = self.seq, self.peer, self.w
        note = notification("tester", "*", n=seq)

        async def check() -> None:
            after = len(peer.acks)
            await peer.send(msg(seq, note))
            await peer.acked(seq, after)
            assert w.journaled(str(note.message_id)) == 1

        asyncio.run_coroutine_threadsafe(check(), self.loop).result(15)

    def url(self) -> str:
        assert self.w is not None
        return self.w.url("builder")


@contextlib.contextmanager
def live_hub(tmp: Path) -> Iterator[tuple[LiveHub, _Capture]]:
    capture = _Capture()
    hub = LiveHub(tmp)
    loggers = [logging.getLogger(n) for n in ("", "uvicorn", "uvicorn.error", "counterpoint")]
    for logger in loggers:
        logger.addHandler(capture)
    try:
        yield hub, capture
    finally:
        for logger in loggers:
            logger.removeHandler(capture)
        hub.stop()


def _hello(ws: ClientConnection) -> None:
    ws.send(
        json.dumps(
            {
                "op": "hello",
                "version": "1.0",
                "session": f"fuzz-{uuid.uuid4().hex[:8]}",
                "capabilities": AGENTS["builder"].capabilities,
                "capacity": 1,
            }
        )
    )
    assert json.loads(ws.recv(10))["op"] == "welcome"


def _exchange(hub: LiveHub, sent: list[tuple[str, Any]]) -> tuple[list[dict[str, Any]], int | None]:
    """Send ``sent`` then a heartbeat; (the hub's error frames, the close code or None)."""
    assert hub.w is not None
    errors: list[dict[str, Any]] = []
    with connect(
        hub.url(),
        additional_headers={"Authorization": f"Bearer {hub.w.tokens['builder']}"},
        max_size=None,
        open_timeout=10,
        close_timeout=2,
    ) as ws:
        _hello(ws)
        try:
            for kind, payload in sent:
                if kind == "raw":
                    ws.send(payload, text=True)  # not UTF-8, in a text frame
                else:
                    ws.send(payload)
            ws.send(json.dumps({"op": "heartbeat", "running": []}))
            while True:
                frame = json.loads(ws.recv(10))  # TimeoutError: the hub hangs
                if frame.get("op") == "heartbeat":
                    return errors, None
                if frame.get("op") == "error":
                    errors.append(frame)
        except ConnectionClosed as exc:
            return errors, exc.rcvd.code if exc.rcvd is not None else 1006


def test_fuzzed_frames_get_documented_errors_and_the_hub_keeps_serving(tmp_path: Path) -> None:
    tally = {"examples": 0, "frames": 0, "errors": 0, "closed": 0}
    with live_hub(tmp_path) as (hub, capture):
        hub.healthy()

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(sent=st.lists(frames, min_size=1, max_size=4))
        def example(sent: list[tuple[str, Any]]) -> None:
            errors, closed = _exchange(hub, sent)
            tally["examples"] += 1
            tally["frames"] += len(sent)
            tally["errors"] += len(errors)
            tally["closed"] += closed is not None
            for error in errors:
                assert error["code"] in ERROR_CODES, error
                assert isinstance(error["message"], str) and error["message"], error
            closing = any(kind == "raw" or len(payload) > 2 * MAX_BYTES for kind, payload in sent)
            if closed == 1006:  # our send broke on a connection the hub had closed
                assert closing, sent
            elif closed is not None:
                assert closed in CLOSE_CODES, (closed, sent)
            else:  # still open: fewer refusals than the limit
                assert len(errors) <= MAX_VIOLATIONS + 1, errors
            hub.healthy()
            assert capture.bad == [], capture.bad[0]

        example()
        assert capture.bad == [], capture.bad[0]
        assert capture.uvicorn_utf8 == 0, "uvicorn's UTF-8 traceback was not turned into a warning"

    figure("fuzz_wire.examples", tally["examples"])
    figure("fuzz_wire.frames", tally["frames"])
    figure("fuzz_wire.error_frames", tally["errors"])
    figure("fuzz_wire.connections_closed", tally["closed"])
    figure("fuzz_wire.unexpected_errors_logged", len(capture.bad))
    figure("fuzz_wire.uvicorn_utf8_tracebacks", capture.uvicorn_utf8)


@pytest.mark.parametrize("depth", [1500, 100_000])
def test_deeply_nested_json_is_refused_as_invalid_json_not_a_crash(
    tmp_path: Path, depth: int
) -> None:
    """Found by the fuzzer: json.loads raises RecursionError (not a ValueError) on deep
    nesting, which escaped the frame parser and killed the connection's handler."""
    with live_hub(tmp_path) as (hub, capture):
        text = nested(depth)
        errors, closed = _exchange(hub, [("text", text)])
        if len(text) <= MAX_BYTES:
            assert closed is None
            assert [e["code"] for e in errors] == ["invalid_json"], errors
        else:
            # over twice the limit: closed 1009 (1006 when our send broke on the closed
            # connection before we read the close frame)
            assert closed in (1009, 1006) or [e["code"] for e in errors] == ["too_large"], errors
        hub.healthy()
        assert capture.bad == [], capture.bad[0]


# -- atheris --------------------------------------------------------------------------------

HARNESS = r"""
import sys

import atheris

with atheris.instrument_imports(include=["counterpoint"]):
    from counterpoint.messaging.protocol import MessageError, parse_message
    from counterpoint.net import frames as fr
    from counterpoint.net.hub import _fast_message

CHECKS = (fr.check_hello, fr.check_result, fr.check_bid, fr.check_vote, fr.check_child_request)


def one(data):
    text = data.decode("utf-8", errors="replace")
    _fast_message(text, 4096)
    try:
        frame = fr.decode(text, 4096)
    except fr.FrameError:
        return
    for check in CHECKS:
        try:
            check(frame)
        except fr.FrameError:
            pass
    try:
        parse_message(frame.get("message"))
    except MessageError:
        pass


atheris.Setup(sys.argv, one)
atheris.Fuzz()
"""

SEEDS = [
    b'{"op":"hello","version":"1.0","session":"s","capabilities":["build"],"capacity":2}',
    b'{"op":"result","seq":2,"task_id":"t","attempt":1,"status":"completed","result":{}}',
    b'{"op":"bid","seq":7,"call":12,"duration_s":1800,"cost":0,"load":0.5}',
    b'{"op":"vote","seq":8,"ballot":13,"vote":"yes"}',
    b'{"op":"spawn","seq":4,"request":"9f","task_id":"t","attempt":1,"tasks":[{"id":"c"}]}',
    b'{"op":"msg","seq":1,"message":{"sender":"b","recipient":"*","type":"notification",'
    b'"timestamp":"2026-01-30T10:00:00Z","content":{"event_type":"e","severity":"info",'
    b'"data":{}}}}',
]


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris not installed")
def test_atheris_finds_no_crash_in_the_frame_parser(tmp_path: Path) -> None:
    harness = tmp_path / "harness.py"
    harness.write_text(HARNESS, encoding="utf-8")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, seed in enumerate(SEEDS):
        (corpus / f"seed{i}").write_bytes(seed)
    proc = subprocess.run(
        [PY, str(harness), f"-max_total_time={ATHERIS_SECONDS}", "-max_len=4096", str(corpus)],
        capture_output=True,
        text=True,
        timeout=ATHERIS_SECONDS + 120,
        cwd=tmp_path,
        check=False,
    )
    tail = proc.stderr[-4000:]
    runs = [line for line in proc.stderr.splitlines() if "Done " in line]
    figure("fuzz_wire.atheris_seconds", ATHERIS_SECONDS)
    if runs:
        figure("fuzz_wire.atheris_runs", int(runs[-1].split("Done ")[1].split()[0]))
    assert proc.returncode == 0, tail
    assert "Uncaught Python exception" not in proc.stderr, tail


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q", "-s"]))
