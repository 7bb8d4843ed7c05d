"""The HTTP + WebSocket server in front of the hub (starlette on uvicorn).

Routes:

- ``GET /healthz``: ``{"status": "ok"}``, no token needed.
- ``WS /agents/{agent}/ws``: a remote agent's session; ``Authorization: Bearer
  TOKEN`` with the agent's own token, else the upgrade is refused (HTTP 403).
- ``GET /api/run``: the run's status (operator token).
- ``POST /api/cancel``: cancel the run (operator token).
- ``GET /api/conflicts``: the run's data conflicts (operator token).
- ``GET /metrics``: Prometheus metrics of the run (operator token).
- ``POST /api/conflicts/{id}/resolve``: decide one, ``{"task": T}`` or ``{"value": V}``
  (operator token).

It binds to 127.0.0.1 unless told otherwise, and never lets bad input crash it:
a frame that breaks the protocol gets an error frame, a frame larger than
twice the message limit closes the connection (1009).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from counterpoint.errors import CounterpointError
from counterpoint.net import frames as fr
from counterpoint.net.hub import Hub
from counterpoint.net.tokens import TokenStore

log = logging.getLogger("counterpoint.server")

METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


class ServerError(CounterpointError):
    """The server cannot start (the address is taken, the host is unknown...)."""


class Operations:
    """What operators may do over HTTP; the run engine provides it."""

    def __init__(
        self,
        status: Callable[[], dict[str, Any]],
        cancel: Callable[[str], None],
        conflicts: Callable[[], list[dict[str, Any]]] | None = None,
        resolve: Callable[[int, dict[str, Any], str], dict[str, Any]] | None = None,
        metrics: Callable[[], bytes] | None = None,
    ) -> None:
        self.metrics = metrics  # the Prometheus exposition
        self.status = status
        self.cancel = cancel
        self.conflicts = conflicts
        #: ``resolve(conflict_id, {"task": T} or {"value": V}, by)``: the decided conflict,
        #: or LookupError (no such conflict) / ValueError (a decision it refuses).
        self.resolve = resolve


def bearer(conn: HTTPConnection) -> str:
    scheme, _, token = conn.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


class _StarletteConnection:
    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws

    async def send_text(self, text: str) -> None:
        await self.ws.send_text(text)

    async def close(self, code: int, reason: str = "") -> None:
        await self.ws.close(code, reason)


async def _incoming(ws: WebSocket) -> AsyncIterator[str]:
    while True:
        try:
            event = await ws.receive()
        except (WebSocketDisconnect, RuntimeError):
            return
        if event["type"] == "websocket.disconnect":
            return
        text = event.get("text")
        if text is None:
            data = event.get("bytes") or b""
            text = data.decode("utf-8", errors="replace")
        yield text


class _Api:
    """The routes: agents' WebSocket, health, and the operator API (operator token)."""

    def __init__(self, hub: Hub, tokens: TokenStore, operations: Operations | None) -> None:
        self.hub = hub
        self.tokens = tokens
        self.operations = operations

    async def healthz(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "agents": len(self.hub.connected())})

    async def agent_ws(self, ws: WebSocket) -> None:
        agent = ws.path_params["agent"]
        if not self.tokens.check(agent, bearer(ws)):
            log.warning("refused a connection for agent %r: bad or missing token", agent)
            await ws.close(fr.CLOSE_UNAUTHORIZED)  # before accept: HTTP 403
            return
        await ws.accept()
        await self.hub.serve(agent, _StarletteConnection(ws), _incoming(ws))

    def operator(self, request: Request) -> str | None:
        return self.tokens.operator(bearer(request))

    async def run_status(self, request: Request) -> JSONResponse:
        if self.operator(request) is None:
            return _refused()
        body = self.operations.status() if self.operations else {}
        return JSONResponse({**body, "agents": self.hub.connected()})

    async def cancel(self, request: Request) -> JSONResponse:
        who = self.operator(request)
        if who is None:
            return _refused()
        if self.operations is None:
            return _error("no run to cancel", 409)
        self.operations.cancel(f"cancelled by operator {who}")
        return JSONResponse({"cancelling": True, "by": who}, status_code=202)

    async def metrics(self, request: Request) -> Response:
        if self.operator(request) is None:
            return _refused()
        if self.operations is None or self.operations.metrics is None:
            return _error("no metrics: no run is served", 404)
        return Response(self.operations.metrics(), media_type=METRICS_TYPE)

    async def conflicts(self, request: Request) -> JSONResponse:
        if self.operator(request) is None:
            return _refused()
        ops = self.operations
        return JSONResponse({"conflicts": ops.conflicts() if ops and ops.conflicts else []})

    async def resolve(self, request: Request) -> JSONResponse:
        who = self.operator(request)
        if who is None:
            return _refused()
        if self.operations is None or self.operations.resolve is None:
            return _error("no run to decide for", 409)
        ident = request.path_params["conflict"]
        if not ident.isdigit():
            return _error(f"no conflict {ident!r}: conflict ids are numbers", 404)
        body = await _json_body(request)
        if isinstance(body, JSONResponse):
            return body
        if not isinstance(body, dict) or len(body.keys() & {"task", "value"}) != 1:
            return _error('the body must be {"task": TASK} or {"value": JSON}', 400)
        try:
            return JSONResponse(self.operations.resolve(int(ident), body, who))
        except LookupError as exc:
            return _error(str(exc.args[0]) if exc.args else "not found", 404)
        except ValueError as exc:
            return _error(str(exc), 409)


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _refused() -> JSONResponse:
    return JSONResponse(
        {"error": "an operator token is required (Authorization: Bearer TOKEN)"},
        status_code=401,
        headers={"WWW-Authenticate": "Bearer"},
    )


def build_app(hub: Hub, tokens: TokenStore, operations: Operations | None = None) -> Starlette:
    api = _Api(hub, tokens, operations)
    return Starlette(
        routes=[
            Route("/healthz", api.healthz),
            WebSocketRoute("/agents/{agent}/ws", api.agent_ws),
            Route("/api/run", api.run_status),
            Route("/api/cancel", api.cancel, methods=["POST"]),
            Route("/api/conflicts", api.conflicts),
            Route("/metrics", api.metrics),
            Route("/api/conflicts/{conflict}/resolve", api.resolve, methods=["POST"]),
        ]
    )


MAX_BODY_BYTES = 1024 * 1024


async def _json_body(request: Request) -> Any:
    """The request's JSON body, or a 400/413 answer saying what is wrong with it."""
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        return JSONResponse({"error": "the body is over 1 MiB"}, status_code=413)
    try:
        return json.loads(raw or b"null")
    except ValueError as exc:
        return JSONResponse({"error": f"the body is not valid JSON: {exc}"}, status_code=400)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the run engine owns SIGINT and SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HubServer:
    """Serves ``hub`` on ``host:port`` within the running event loop."""

    def __init__(
        self,
        hub: Hub,
        tokens: TokenStore,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        operations: Operations | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        self.hub = hub
        self.host = host
        self.port = port
        self.sock = sock
        self.app = build_app(hub, tokens, operations)
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}"

    async def start(self) -> None:
        sock = self.sock or bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            ws="websockets-sansio",
            ws_max_size=2 * self.hub.max_message_bytes,
            ws_ping_interval=None,  # the protocol has its own heartbeats
            ws_per_message_deflate=False,  # small JSON frames: deflate costs more than it saves
            lifespan="off",
            access_log=False,
        )
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise ServerError(f"the server on {self.url} stopped while starting")
            await asyncio.sleep(0.01)
        self.hub.start()

    async def stop(self, code: int = fr.CLOSE_GOING_AWAY, reason: str = "shutting down") -> None:
        await self.hub.close(code, reason)
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 5.0)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; ServerError (a clear message) if it cannot be."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ServerError(f"cannot serve on {host}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ServerError(
            f"cannot serve on {host}:{port}: {exc.strerror}"
            + ("; choose another --port" if exc.errno == 98 else "")
        ) from None
    sock.listen(512)
    sock.setblocking(False)
    return sock
