"""The webhook sink against a real HTTP server on 127.0.0.1: retries, body, failures kept."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from counterpoint.messaging.batch import Batch, BatchChannel, WebhookSink


@dataclass
class Hook:
    """What the server answers (in turn, then 200) and what it was sent."""

    url: str
    answers: list[int] = field(default_factory=list)
    posts: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)


class Handler(BaseHTTPRequestHandler):
    hook: Hook

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.hook.posts.append((self.path, dict(self.headers), body))
        self._answer(self.hook.answers.pop(0) if self.hook.answers else 200)

    def do_GET(self) -> None:
        self.hook.posts.append((self.path, dict(self.headers), b"GET"))
        self._answer(200)

    def _answer(self, code: int) -> None:
        self.send_response(code)
        if code in (301, 302, 303, 307, 308):
            self.send_header("Location", "/elsewhere")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def hook() -> Iterator[Hook]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state = Hook(url=f"http://127.0.0.1:{server.server_address[1]}/batches")
    server.RequestHandlerClass = type("Bound", (Handler,), {"hook": state})
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join()


class Recorder:
    name = "rec"

    def __init__(self) -> None:
        self.batches: list[Batch] = []

    async def deliver(self, batch: Batch) -> None:
        self.batches.append(batch)


def note(i: int) -> dict[str, Any]:
    return {
        "sender": "agent-a",
        "recipient": "orchestrator",
        "type": "notification",
        "timestamp": "2026-01-30T09:00:00Z",
        "content": {"event_type": "tick", "severity": "info", "data": {"i": i}},
    }


def send(url: str, count: int, *, timeout: float = 5.0) -> tuple[BatchChannel, Recorder]:
    rec = Recorder()

    async def scenario() -> BatchChannel:
        ch = BatchChannel([WebhookSink(url, timeout_s=2), rec], retry_initial_s=0.02)
        await ch.start()
        for i in range(count):
            await ch.put(note(i))
        await ch.close(timeout=timeout)
        return ch

    return asyncio.run(scenario()), rec


def test_webhook_delivers_after_server_errors(hook: Hook) -> None:
    hook.answers = [500, 500]
    ch, rec = send(hook.url, 3)
    (batch,) = rec.batches
    assert len(hook.posts) == 3 and ch.undelivered == []
    assert ch.stats["retries"] == 2 and ch.stats["deliveries"] == 2
    for path, headers, body in hook.posts:
        assert path == "/batches"
        assert headers["Content-Type"] == "application/json"
        assert headers["X-Batch-Id"] == batch.batch_id
        assert json.loads(body) == batch.to_json()


def test_a_redirect_is_a_failure_not_a_get(hook: Hook) -> None:
    hook.answers = [302]
    ch, _ = send(hook.url, 1)
    assert [body != b"GET" for _, _, body in hook.posts] == [True, True]
    assert ch.stats["retries"] == 1 and ch.undelivered == []


def test_unreachable_webhook_keeps_its_batches() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ch, rec = send(f"http://127.0.0.1:{port}/batches", 2, timeout=0.2)
    assert rec.batches and ch.stats["retries"] >= 1
    assert ch.undelivered == [(f"webhook:http://127.0.0.1:{port}/batches", rec.batches[0])]
