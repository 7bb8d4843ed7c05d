"""Escalation notices through real channels: a loopback webhook receiver and real commands."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from counterpoint.plan.model import Escalation
from counterpoint.runtime.escalation import Escalator, NotifyPolicy, notice_body
from counterpoint.store.sqlite import SqliteStore

PY = sys.executable
FAST = NotifyPolicy(attempts=5, backoff_s=0.01, backoff_max_s=0.05, webhook_timeout_s=5.0)


@dataclass
class Receiver:
    """A webhook receiver: answers ``answers`` in turn (then 200) and keeps every POST."""

    url: str
    answers: list[int] = field(default_factory=list)
    posts: list[tuple[str, dict[str, str], dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bodies(self, path: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [b for p, _, b in self.posts if path is None or p == path]


class Handler(BaseHTTPRequestHandler):
    receiver: Receiver

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.receiver.lock:
            self.receiver.posts.append((self.path, dict(self.headers), body))
            code = self.receiver.answers.pop(0) if self.receiver.answers else 200
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state = Receiver(url=f"http://127.0.0.1:{server.server_address[1]}")
    server.RequestHandlerClass = type("Bound", (Handler,), {"receiver": state})
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join()


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Events:
    def __init__(self) -> None:
        self.all: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, kind: str, task: int | None = None, **data: Any) -> None:
        self.all.append((kind, data))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [data for k, data in self.all if k == kind]


def escalator(
    tmp_path: Path, spec: dict[str, Any], *, policy: NotifyPolicy = FAST
) -> tuple[Escalator, Events, Clock]:
    events, clock = Events(), Clock()
    esc = Escalator(
        Escalation.model_validate(spec),
        SqliteStore(tmp_path / "state"),
        1,
        emit=events,
        clock=clock,
        policy=policy,
        cwd=tmp_path,
    )
    return esc, events, clock


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_each_level_posts_to_its_own_contacts(tmp_path: Path, receiver: Receiver) -> None:
    url = receiver.url
    spec = {
        "timeout": "1m",
        "levels": [
            {"name": "leads", "contacts": ["alice", "bob"]},
            {"name": "managers", "contacts": ["carol"]},
        ],
        "contacts": {
            "alice": {"notify": [{"webhook": f"{url}/alice"}]},
            "bob": {"notify": [{"webhook": f"{url}/bob"}]},
            "carol": {"notify": [{"webhook": f"{url}/carol"}, {"log": True}]},
        },
    }
    esc, events, clock = escalator(tmp_path, spec)

    async def scenario() -> None:
        esc.open("conflict:3", "conflict", "t1 and t2 wrote db.url", {"key": "db.url"})
        await esc.drain(10.0)
        assert sorted(p for p, _, _ in receiver.posts) == ["/alice", "/bob"]
        clock.t = 60.0
        assert esc.tick() == []
        await esc.drain(10.0)
        assert esc.in_flight == 0

    asyncio.run(scenario())
    (alice,) = receiver.bodies("/alice")
    (bob,) = receiver.bodies("/bob")
    (carol,) = receiver.bodies("/carol")
    assert (alice["event"], alice["contact"], alice["level"]["name"]) == (
        "escalation_opened",
        "alice",
        "leads",
    )
    assert alice["level"]["contacts"] == ["alice", "bob"]
    assert bob["contact"] == "bob"
    assert (carol["event"], carol["contact"], carol["level"]["index"]) == ("escalated", "carol", 1)
    assert carol["level"]["last"] is True
    assert carol["case"]["subject"] == "conflict:3"
    assert carol["case"]["details"] == {"key": "db.url"}
    assert carol["case"]["level_name"] == "managers"
    headers = {p: h for p, h, _ in receiver.posts}
    assert headers["/carol"]["Content-Type"] == "application/json"
    assert headers["/carol"]["X-Counterpoint-Notice"] == carol["notice_id"] == "1-1-1-carol"
    notified = sorted(
        (e["contact"], e["channel"], e["status"]) for e in events.of("escalation_notified")
    )
    assert notified == [
        ("alice", "webhook", 200),
        ("bob", "webhook", 200),
        ("carol", "webhook", 200),
    ]
    assert [e["contact"] for e in events.of("escalation_notice")] == ["carol"]
    assert events.of("notify_failed") == []


def test_a_receiver_that_fails_twice_still_gets_the_notice(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.answers = [503, 500]
    spec = {
        "levels": [{"name": "ops", "contacts": ["oncall"]}],
        "contacts": {"oncall": {"notify": [{"webhook": f"{receiver.url}/hook?token=s3cret"}]}},
    }
    esc, events, _ = escalator(tmp_path, spec)

    async def scenario() -> None:
        esc.open("gate:deploy.exit", "gate", "approval missing", {})
        await esc.drain(10.0)

    asyncio.run(scenario())
    bodies = receiver.bodies()
    assert len(bodies) == 3
    assert len({b["notice_id"] for b in bodies}) == 1  # the same notice, retried
    failed = events.of("notify_failed")
    assert [(f["attempt"], f["status"], f["final"]) for f in failed] == [
        (1, 503, False),
        (2, 500, False),
    ]
    assert all(f["attempts"] == 5 and "503" in failed[0]["error"] for f in failed)
    (ok,) = events.of("escalation_notified")
    assert (ok["attempts"], ok["status"], ok["contact"]) == (3, 200, "oncall")
    # the webhook's path and query (often a secret) are never journaled
    assert "s3cret" not in json.dumps(events.all)
    assert ok["target"] == receiver.url


def test_an_answer_that_will_not_get_better_is_not_retried(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.answers = [404]
    spec = {
        "levels": [{"name": "ops", "contacts": ["oncall"]}],
        "contacts": {"oncall": {"notify": [{"webhook": f"{receiver.url}/gone"}]}},
    }
    esc, events, _ = escalator(tmp_path, spec)

    async def scenario() -> None:
        esc.open("task:t1", "task", "stuck", {})
        await esc.drain(10.0)

    asyncio.run(scenario())
    assert len(receiver.posts) == 1
    (failed,) = events.of("notify_failed")
    assert (failed["status"], failed["final"], failed["attempt"]) == (404, True, 1)


def test_a_refused_connection_is_recorded_and_never_raises(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"
    spec = {
        "timeout": 1,
        "levels": [{"name": "ops", "contacts": ["oncall"]}, {"name": "boss", "contacts": ["cto"]}],
        "contacts": {"oncall": {"notify": [{"webhook": url}, {"log": True}]}},
    }
    esc, events, clock = escalator(tmp_path, spec, policy=NotifyPolicy(attempts=3, backoff_s=0.01))

    async def scenario() -> None:
        case = esc.open("conflict:1", "conflict", "x", {})
        clock.t = 1.0
        assert esc.tick() == []  # the run goes on while the webhook fails
        assert case.level == 1
        await esc.drain(10.0)

    asyncio.run(scenario())
    failed = events.of("notify_failed")
    assert [(f["attempt"], f["final"], f["channel"]) for f in failed] == [
        (1, False, "webhook"),
        (2, False, "webhook"),
        (3, True, "webhook"),
    ]
    assert all("refused" in f["error"].lower() for f in failed)
    assert events.of("escalation_notified") == []
    assert [e["contact"] for e in events.of("escalation_notice")] == ["oncall", "cto"]


def test_a_command_gets_the_notice_on_stdin(tmp_path: Path) -> None:
    out, env_out = tmp_path / "stdin.json", tmp_path / "env.json"
    keep = (
        "import json, os, sys; open(sys.argv[1], 'wb').write(sys.stdin.buffer.read()); "
        "json.dump({k: v for k, v in os.environ.items() if k.startswith('COUNTERPOINT_')}, "
        "open(sys.argv[2], 'w'))"
    )
    as_string = " ".join(shlex.quote(a) for a in [PY, "-c", keep, str(out), str(env_out)])
    spec = {
        "levels": [{"name": "ops", "contacts": ["pager"]}],
        "contacts": {"pager": {"notify": [{"command": as_string}]}},
    }
    esc, events, _ = escalator(tmp_path, spec)

    async def scenario() -> None:
        esc.open("gate:deploy.exit", "gate", "approval missing", {"phase": "deploy"})
        await esc.drain(20.0)

    asyncio.run(scenario())
    case = esc.case("gate:deploy.exit")
    assert case is not None
    got = json.loads(out.read_text())
    assert got == notice_body(case, "pager", spec=esc.spec, run_id=1, event="escalation_opened")
    assert got["case"]["details"] == {"phase": "deploy"}
    assert json.loads(env_out.read_text()) == {
        "COUNTERPOINT_RUN_ID": "1",
        "COUNTERPOINT_ESCALATION_EVENT": "escalation_opened",
        "COUNTERPOINT_ESCALATION_CASE": "1",
        "COUNTERPOINT_ESCALATION_SUBJECT": "gate:deploy.exit",
        "COUNTERPOINT_ESCALATION_LEVEL": "ops",
        "COUNTERPOINT_ESCALATION_CONTACT": "pager",
    }
    (ok,) = events.of("escalation_notified")
    assert (ok["channel"], ok["exit_code"], ok["target"]) == ("command", 0, PY)


def test_command_failures_are_recorded(tmp_path: Path) -> None:
    (tmp_path / "fail.py").write_text("import sys; sys.stderr.write('boom\\n'); sys.exit(3)\n")
    spec = {
        "levels": [{"name": "ops", "contacts": ["a", "b", "c"]}],
        "contacts": {
            "a": {"notify": [{"command": [PY, "fail.py"]}]},  # relative to cwd
            "b": {"notify": [{"command": "/nonexistent/notifier --flag"}]},
            "c": {"notify": [{"command": [PY, "-c", "import time; time.sleep(60)"]}]},
        },
    }
    policy = NotifyPolicy(command_timeout_s=2.0, kill_grace_s=0.5)
    esc, events, _ = escalator(tmp_path, spec, policy=policy)
    started = time.monotonic()

    async def scenario() -> None:
        esc.open("task:t1", "task", "stuck", {})
        await esc.drain(20.0)

    asyncio.run(scenario())
    assert time.monotonic() - started < 15.0
    failed = {f["contact"]: f for f in events.of("notify_failed")}
    assert failed["a"]["exit_code"] == 3
    assert failed["a"]["error"] == "exit code 3: boom"
    assert failed["b"]["error"].startswith("cannot start")
    assert failed["c"]["error"] == "timed out after 2 s"
    assert events.of("escalation_notified") == []


def test_drain_stops_what_is_still_running_at_shutdown(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    slow = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    spec = {
        "levels": [{"name": "ops", "contacts": ["slow"]}],
        "contacts": {"slow": {"notify": [{"command": [PY, "-c", slow]}]}},
    }
    esc, events, _ = escalator(tmp_path, spec, policy=NotifyPolicy(kill_grace_s=1.0))

    async def scenario() -> None:
        esc.open("task:t1", "task", "stuck", {})
        for _ in range(200):
            if pid_file.exists() and pid_file.read_text():
                break
            await asyncio.sleep(0.05)
        await esc.drain(0.1)

    asyncio.run(scenario())
    (failed,) = events.of("notify_failed")
    assert failed["error"] == "stopped at shutdown"
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


def test_notices_due_outside_an_event_loop_are_sent_by_drain(
    tmp_path: Path, receiver: Receiver
) -> None:
    spec = {
        "levels": [{"name": "ops", "contacts": ["oncall"]}],
        "contacts": {"oncall": {"notify": [{"webhook": f"{receiver.url}/late"}]}},
    }
    esc, events, _ = escalator(tmp_path, spec)
    esc.open("task:t1", "task", "stuck", {})  # no running loop here
    assert esc.in_flight == 1
    assert receiver.posts == []
    asyncio.run(esc.drain(10.0))
    assert len(receiver.bodies("/late")) == 1
    assert esc.in_flight == 0
    assert len(events.of("escalation_notified")) == 1
