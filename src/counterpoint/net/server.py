"""The HTTP + WebSocket server in front of the hub (starlette on uvicorn).

Routes (``GET /openapi.json`` describes the HTTP ones; docs/dashboard.md, docs/cli.md and
docs/security.md explain them). Every route needs a credential unless it is listed in
:data:`counterpoint.net.security.PUBLIC_ROUTES`; :class:`counterpoint.net.security.Guard`
checks it (and the Host header, the Origin, the rate of failed sign-ins) before any route
runs:

- ``GET /healthz``: ``{"status": "ok"}``, public, says nothing about the run.
- ``WS /agents/{agent}/ws``: a remote agent's session; ``Authorization: Bearer
  TOKEN`` with the agent's own token, else the upgrade is refused (HTTP 403).
- ``GET /``, ``GET /assets/{name}``: the dashboard's page and files (shipped in the
  package; public: the sign-in form and the script, no run data).
- ``POST /login`` (public), ``POST /logout``: the dashboard's session cookie.
- ``GET /api/snapshot``, ``WS /api/live``, ``GET /api/alerts``, ``GET /openapi.json``: the
  dashboard's view of the run, pushed live (an operator or viewer token or session).
- ``GET /api/whoami``: who a token or session belongs to.
- ``GET /api/run``, ``GET /api/conflicts``, ``GET /metrics``: the run's status, its data
  conflicts, Prometheus metrics (operator token).
- ``POST /api/cancel``, ``POST /api/conflicts/{id}/resolve``,
  ``POST /api/gates/{gate}/approve`` (``/reject``), ``POST /api/agents/{agent}/state``:
  what operators do (operator token).
- ``GET``/``POST /git/{agent}/...``: git's smart HTTP protocol on the agent's exchange
  repository (``workspace: worktree`` remote agents; the agent's own token).

It binds to 127.0.0.1 unless told otherwise, and never lets bad input crash it: a
request it cannot serve gets a 4xx answer ``{"error": "..."}`` saying why, a frame that
breaks the protocol gets an error frame, a frame larger than twice the message limit
closes the connection (1009).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.schemas import SchemaGenerator
from starlette.websockets import WebSocket, WebSocketDisconnect

from counterpoint.errors import CounterpointError
from counterpoint.net import frames as fr
from counterpoint.net.dashboard import asset, encode
from counterpoint.net.gitserve import ExchangeOf, GitEndpoint
from counterpoint.net.hub import Hub
from counterpoint.net.security import (
    Guard,
    HostPolicy,
    Principal,
    Security,
    client_address,
    cookie_name,
    same_origin,
    session_id,
)
from counterpoint.net.tokens import TokenStore

if TYPE_CHECKING:
    from counterpoint.net.dashboard import Dashboard, Subscriber

log = logging.getLogger("counterpoint.server")

METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
MAX_BODY_BYTES = 1024 * 1024
MAX_COMMENT_CHARS = 2000
CLOSE_TRY_AGAIN = 1013
#: The page loads nothing from elsewhere; its scripts and styles are files of the package.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class ServerError(CounterpointError):
    """The server cannot start (the address is taken, the host is unknown...)."""


class Operations:
    """What operators may do over HTTP, and what the dashboard shows; the run engine
    provides it."""

    def __init__(
        self,
        status: Callable[[], dict[str, Any]],
        cancel: Callable[[str], None],
        conflicts: Callable[[], list[dict[str, Any]]] | None = None,
        resolve: Callable[[int, dict[str, Any], str], dict[str, Any]] | None = None,
        metrics: Callable[[], bytes] | None = None,
        dashboard: Dashboard | None = None,
        exchange: ExchangeOf | None = None,
    ) -> None:
        self.metrics = metrics  # the Prometheus exposition
        #: A remote agent's exchange repository (``workspace: worktree``), served at /git.
        self.exchange = exchange
        self.status = status
        self.cancel = cancel
        self.conflicts = conflicts
        #: ``resolve(conflict_id, {"task": T} or {"value": V}, by)``: the decided conflict,
        #: or LookupError (no such conflict) / ValueError (a decision it refuses).
        self.resolve = resolve
        #: The dashboard's view, its live feed, gate decisions and agent states.
        self.dashboard = dashboard


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
    """The routes: agents' WebSocket, health, the dashboard, and the operator API.

    The docstrings after ``---`` are each route's OpenAPI description.
    """

    def __init__(
        self, hub: Hub, tokens: TokenStore, operations: Operations | None, security: Security
    ) -> None:
        self.hub = hub
        self.tokens = tokens
        self.operations = operations
        self.security = security
        self.dashboard = operations.dashboard if operations else None

    async def healthz(self, request: Request) -> JSONResponse:
        """Liveness.
        ---
        summary: Is the server up (public; says nothing about the run)
        tags: [server]
        responses:
          "200": {description: '{"status": "ok"}'}
        """
        return JSONResponse({"status": "ok"})

    async def login(self, request: Request) -> JSONResponse:
        """Sign in to the dashboard.
        ---
        summary: Trade an operator or viewer token for a session cookie
        description: >-
          The answer sets an HttpOnly, SameSite=Strict cookie that the page, its API calls
          and WS /api/live then send; the token itself stays out of the browser's storage
          and out of every address. Failed attempts count against the client address's
          limit (429 with Retry-After when over it).
        tags: [dashboard]
        requestBody:
          required: true
          content: {application/json: {schema: {$ref: "#/components/schemas/Login"}}}
        responses:
          "200": {description: '{"name": NAME, "role": "operator"|"viewer"} and the cookie'}
          "400": {$ref: "#/components/responses/BadRequest"}
          "401": {$ref: "#/components/responses/Unauthorized"}
          "403": {description: A page of another origin}
          "429": {description: Too many failed sign-ins from this address}
        """
        scope = request.scope
        if not same_origin(scope):
            return _error("a page of another origin may not sign in here", 403)
        address = client_address(scope)
        limiter = self.security.limiter
        wait = limiter.retry_after(address)
        if wait is not None:
            return JSONResponse(
                {"error": f"too many failed sign-ins from {address}; try again in {wait} s"},
                status_code=429,
                headers={"Retry-After": str(wait)},
            )
        body = await _fields(request, {"token": str}, required=("token",))
        if isinstance(body, JSONResponse):
            return body
        token = body["token"].strip()
        found = self.tokens.identify(token)
        if found is None or found[0] == "agent":
            if found is None:
                limiter.failed(address)
            return _error(
                "the token is not an operator or viewer token (make one with "
                "`counterpoint token create NAME --operator` or `--viewer`)",
                401,
            )
        kind, name = found
        principal = Principal(kind, name, "cookie")  # type: ignore[arg-type]
        ident = self.security.sessions.create(principal, token)
        answer = JSONResponse({"name": name, "role": kind})
        answer.set_cookie(
            cookie_name(scope),
            ident,
            max_age=int(self.security.sessions.ttl_s),
            path="/",
            secure=self.security.tls,
            httponly=True,
            samesite="strict",
        )
        return answer

    async def logout(self, request: Request) -> JSONResponse:
        """Sign out of the dashboard.
        ---
        summary: End the dashboard session (its cookie)
        tags: [dashboard]
        responses:
          "200": {description: '{"signed_out": true}'}
          "401": {$ref: "#/components/responses/Unauthorized"}
        """
        ident = session_id(request.scope)
        if ident:
            self.security.sessions.drop(ident)
        answer = JSONResponse({"signed_out": True})
        answer.delete_cookie(
            cookie_name(request.scope),
            path="/",
            secure=self.security.tls,
            httponly=True,
            samesite="strict",
        )
        return answer

    async def agent_ws(self, ws: WebSocket) -> None:
        agent = ws.path_params["agent"]
        if not self.tokens.check(agent, bearer(ws)):
            log.warning("refused a connection for agent %r: bad or missing token", agent)
            await ws.close(fr.CLOSE_UNAUTHORIZED)  # before accept: HTTP 403
            return
        await ws.accept()
        await self.hub.serve(agent, _StarletteConnection(ws), _incoming(ws))

    def operator(self, request: Request) -> str | None:
        """The operator the Guard let in (defence in depth: None for anyone else)."""
        who = _principal(request)
        return who.name if who is not None and who.kind == "operator" else None

    def _operator_or_refusal(self, request: Request) -> str | JSONResponse:
        who = self.operator(request)
        return who if who is not None else _refused(request)

    # -- the dashboard -------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        """The dashboard.
        ---
        summary: The live dashboard (HTML)
        tags: [dashboard]
        responses:
          "200": {description: The page; it loads /assets/* and follows WS /api/live}
        """
        found = asset("index.html")
        assert found is not None, "the package is missing counterpoint/net/static/index.html"
        return Response(found[0], media_type=found[1], headers=PAGE_HEADERS)

    async def asset(self, request: Request) -> Response:
        """A file of the dashboard.
        ---
        summary: A script, style sheet or image of the dashboard
        tags: [dashboard]
        parameters:
          - {name: name, in: path, required: true, schema: {type: string}}
        responses:
          "200": {description: The file}
          "404": {$ref: "#/components/responses/NotFound"}
        """
        name = request.path_params["name"]
        found = asset(name)
        if found is None:
            return _error(f"no dashboard asset {name!r}", 404)
        return Response(found[0], media_type=found[1], headers=PAGE_HEADERS)

    async def snapshot(self, request: Request) -> Response:
        """The dashboard's view of the run.
        ---
        summary: The whole view of the run, as the dashboard shows it
        description: >-
          An operator or viewer token (or the dashboard's session cookie). The same
          object WS /api/live sends first:
          run, phases, tasks, agents, gates, conflicts, alerts and escalations
          (docs/dashboard.md describes every field).
        tags: [dashboard]
        security: [{operator: []}, {session: []}]
        responses:
          "200": {$ref: "#/components/responses/View"}
          "401": {$ref: "#/components/responses/Unauthorized"}
          "404": {$ref: "#/components/responses/NotFound"}
        """
        if _principal(request) is None:
            return _refused(request)
        if self.dashboard is None:
            return _error("no run is served", 404)
        return Response(encode(self.dashboard.view()), media_type="application/json")

    async def alerts(self, request: Request) -> Response:
        """Alerts firing now.
        ---
        summary: The alerts firing now, oldest first
        tags: [dashboard]
        security: [{operator: []}, {session: []}]
        responses:
          "200": {$ref: "#/components/responses/Alerts"}
          "401": {$ref: "#/components/responses/Unauthorized"}
        """
        if _principal(request) is None:
            return _refused(request)
        found = self.dashboard.alerts() if self.dashboard is not None else []
        return Response(encode({"alerts": found}), media_type="application/json")

    async def live(self, ws: WebSocket) -> None:
        """The view, pushed: a snapshot, then what changed (docs/dashboard.md)."""
        if _principal(ws) is None:
            await ws.close(fr.CLOSE_FORBIDDEN)  # the Guard lets no one else in
            return
        if not _same_origin(ws):
            log.warning("refused a live feed for a page of %s", ws.headers.get("origin"))
            await ws.close(fr.CLOSE_FORBIDDEN)  # before accept: HTTP 403
            return
        await ws.accept()
        feed = self.dashboard.feed if self.dashboard is not None else None
        joined = feed.subscribe() if feed is not None else None
        if feed is None or joined is None:
            reason = "no run is served" if feed is None else "too many dashboards are open"
            await ws.close(CLOSE_TRY_AGAIN, reason)
            return
        subscriber, snapshot = joined
        watcher = asyncio.create_task(_until_disconnected(ws, subscriber))
        try:
            await _push(ws, subscriber, snapshot)
            if feed.closed:
                await ws.close(fr.CLOSE_RUN_FINISHED, "the run finished")
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass  # the browser went away
        finally:
            feed.unsubscribe(subscriber)
            watcher.cancel()

    async def whoami(self, request: Request) -> JSONResponse:
        """Who a token belongs to.
        ---
        summary: The operator or viewer a token or session belongs to
        tags: [operators]
        security: [{operator: []}, {session: []}]
        responses:
          "200": {description: '{"name": NAME, "role": "operator"|"viewer", "operator": NAME}
            ("operator" only for operators)'}
          "401": {$ref: "#/components/responses/Unauthorized"}
        """
        who = _principal(request)
        if who is None:
            return _refused(request)
        answer = {"name": who.name, "role": who.kind}
        if who.kind == "operator":
            answer["operator"] = who.name
        return JSONResponse(answer)

    # -- operators -------------------------------------------------------------------------

    async def run_status(self, request: Request) -> JSONResponse:
        """The run's status.
        ---
        summary: Task counts, running tasks, agent states and sessions
        tags: [operators]
        security: [{operator: []}]
        responses:
          "200": {description: The status}
          "401": {$ref: "#/components/responses/Unauthorized"}
        """
        if self.operator(request) is None:
            return _refused(request)
        body = self.operations.status() if self.operations else {}
        return JSONResponse({**body, "agents": self.hub.connected()})

    async def cancel(self, request: Request) -> JSONResponse:
        """Cancel the run.
        ---
        summary: Cancel the run (it ends with exit code 3)
        tags: [operators]
        security: [{operator: []}]
        responses:
          "202": {description: '{"cancelling": true, "by": NAME}'}
          "401": {$ref: "#/components/responses/Unauthorized"}
          "409": {$ref: "#/components/responses/Conflict"}
        """
        who = self.operator(request)
        if who is None:
            return _refused(request)
        if self.operations is None:
            return _error("no run to cancel", 409)
        self.operations.cancel(f"cancelled by operator {who}")
        return JSONResponse({"cancelling": True, "by": who}, status_code=202)

    async def metrics(self, request: Request) -> Response:
        """Prometheus metrics.
        ---
        summary: Prometheus metrics of the run (docs/metrics.md)
        tags: [operators]
        security: [{operator: []}]
        responses:
          "200": {description: The text exposition format, content: {text/plain: {}}}
          "401": {$ref: "#/components/responses/Unauthorized"}
          "404": {$ref: "#/components/responses/NotFound"}
        """
        if self.operator(request) is None:
            return _refused(request)
        if self.operations is None or self.operations.metrics is None:
            return _error("no metrics: no run is served", 404)
        return Response(self.operations.metrics(), media_type=METRICS_TYPE)

    async def conflicts(self, request: Request) -> JSONResponse:
        """The run's data conflicts.
        ---
        summary: Every data conflict of the run, as `counterpoint conflicts --json`
        tags: [operators]
        security: [{operator: []}]
        responses:
          "200": {description: '{"conflicts": [...]}'}
          "401": {$ref: "#/components/responses/Unauthorized"}
        """
        if self.operator(request) is None:
            return _refused(request)
        ops = self.operations
        return JSONResponse({"conflicts": ops.conflicts() if ops and ops.conflicts else []})

    async def resolve(self, request: Request) -> JSONResponse:
        """Decide a conflict.
        ---
        summary: Decide an open conflict
        tags: [operators]
        security: [{operator: []}]
        parameters:
          - {name: conflict, in: path, required: true, schema: {type: integer}}
        requestBody:
          required: true
          content: {application/json: {schema: {$ref: "#/components/schemas/Resolution"}}}
        responses:
          "200": {description: The decided conflict}
          "400": {$ref: "#/components/responses/BadRequest"}
          "401": {$ref: "#/components/responses/Unauthorized"}
          "404": {$ref: "#/components/responses/NotFound"}
          "409": {$ref: "#/components/responses/Conflict"}
        """
        who = self.operator(request)
        if who is None:
            return _refused(request)
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
        if "task" in body and not isinstance(body["task"], str):
            return _error(f"task must be a string (a task id), not {_kind(body['task'])}", 400)
        try:
            return JSONResponse(self.operations.resolve(int(ident), body, who))
        except LookupError as exc:
            return _error(str(exc.args[0]) if exc.args else "not found", 404)
        except ValueError as exc:
            return _error(str(exc), 409)

    async def approve(self, request: Request) -> JSONResponse:
        """Approve a gate.
        ---
        summary: Approve a gate as the operator of the token
        description: >-
          Recorded in the journal as `counterpoint approve GATE --as NAME` does; the run
          checks the gate again within its poll interval. The operator must be one of
          the gate's approvers.
        tags: [operators]
        security: [{operator: []}]
        parameters:
          - {name: gate, in: path, required: true, schema: {type: string}, example: build.exit}
        requestBody:
          content: {application/json: {schema: {$ref: "#/components/schemas/Comment"}}}
        responses:
          "202": {$ref: "#/components/responses/Decided"}
          "400": {$ref: "#/components/responses/BadRequest"}
          "401": {$ref: "#/components/responses/Unauthorized"}
          "403": {$ref: "#/components/responses/Forbidden"}
          "404": {$ref: "#/components/responses/NotFound"}
          "409": {$ref: "#/components/responses/Conflict"}
        """
        return await self._decide(request, approve=True)

    async def reject(self, request: Request) -> JSONResponse:
        """Reject a gate.
        ---
        summary: Reject a gate as the operator of the token
        description: >-
          As `counterpoint reject GATE --as NAME`: what waits on the gate is blocked.
        tags: [operators]
        security: [{operator: []}]
        parameters:
          - {name: gate, in: path, required: true, schema: {type: string}, example: build.exit}
        requestBody:
          content: {application/json: {schema: {$ref: "#/components/schemas/Comment"}}}
        responses:
          "202": {$ref: "#/components/responses/Decided"}
          "400": {$ref: "#/components/responses/BadRequest"}
          "401": {$ref: "#/components/responses/Unauthorized"}
          "403": {$ref: "#/components/responses/Forbidden"}
          "404": {$ref: "#/components/responses/NotFound"}
          "409": {$ref: "#/components/responses/Conflict"}
        """
        return await self._decide(request, approve=False)

    async def _decide(self, request: Request, approve: bool) -> JSONResponse:
        who = self._operator_or_refusal(request)
        if isinstance(who, JSONResponse):
            return who
        if self.dashboard is None:
            return _error("no run is served: there is no gate to decide", 409)
        body = await _fields(request, {"comment": str}, required=())
        if isinstance(body, JSONResponse):
            return body
        comment = body.get("comment", "")
        if len(comment) > MAX_COMMENT_CHARS:
            return _error(f"comment is too long ({len(comment)} characters; at most 2000)", 400)
        try:
            decided = self.dashboard.decide_gate(request.path_params["gate"], who, approve, comment)
        except LookupError as exc:
            return _error(str(exc.args[0]), 404)
        except PermissionError as exc:
            return _error(str(exc), 403)
        except ValueError as exc:
            return _error(str(exc), 409)
        return JSONResponse(decided, status_code=202)

    async def agent_state(self, request: Request) -> JSONResponse:
        """Put an agent in maintenance or back in service.
        ---
        summary: Take an agent out of service (maintenance) or back (available)
        description: As `counterpoint agent-state AGENT maintenance|available`.
        tags: [operators]
        security: [{operator: []}]
        parameters:
          - {name: agent, in: path, required: true, schema: {type: string}}
        requestBody:
          required: true
          content: {application/json: {schema: {$ref: "#/components/schemas/AgentState"}}}
        responses:
          "200": {description: '{"agent": NAME, "state": STATE} (its state now)'}
          "400": {$ref: "#/components/responses/BadRequest"}
          "401": {$ref: "#/components/responses/Unauthorized"}
          "404": {$ref: "#/components/responses/NotFound"}
          "409": {$ref: "#/components/responses/Conflict"}
        """
        if self.operator(request) is None:
            return _refused(request)
        if self.dashboard is None:
            return _error("no run is served: there is no agent to change", 409)
        body = await _fields(request, {"state": str}, required=("state",))
        if isinstance(body, JSONResponse):
            return body
        try:
            changed = self.dashboard.set_agent_state(request.path_params["agent"], body["state"])
        except LookupError as exc:
            return _error(str(exc.args[0]), 404)
        except ValueError as exc:
            return _error(str(exc), 400)
        return JSONResponse(changed)

    async def openapi(self, request: Request) -> JSONResponse:
        """This document.
        ---
        summary: The OpenAPI description of this HTTP API
        tags: [server]
        security: [{operator: []}, {session: []}]
        responses:
          "200": {description: OpenAPI 3.0 (JSON)}
          "401": {$ref: "#/components/responses/Unauthorized"}
        """
        if _principal(request) is None:
            return _refused(request)
        return JSONResponse(_schema(request.app))


def _same_origin(ws: WebSocket) -> bool:
    """True unless a browser opened the connection from a page of another site (browsers
    let any page open a WebSocket anywhere, and send its origin)."""
    origin = ws.headers.get("origin")
    if origin is None:  # not a browser
        return True
    return urlsplit(origin).netloc.lower() == ws.headers.get("host", "").lower()


async def _until_disconnected(ws: WebSocket, subscriber: Subscriber) -> None:
    """Read (and ignore) what a dashboard sends until it goes away; then stop its feed."""
    async for _ in _incoming(ws):
        pass
    subscriber.close()


async def _push(ws: WebSocket, subscriber: Subscriber, snapshot: dict[str, Any]) -> None:
    await ws.send_text(encode(snapshot))
    while (update := await subscriber.next()) is not None:
        await ws.send_text(encode(update))


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _principal(conn: HTTPConnection) -> Principal | None:
    """Who the Guard let in (``scope["state"]["principal"]``), or None."""
    found = conn.scope.get("state", {}).get("principal")
    return found if isinstance(found, Principal) else None


def _refused(request: Request) -> JSONResponse:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if not scheme:
        message = (
            "an operator token is required (Authorization: Bearer TOKEN, "
            "or sign in on the dashboard)"
        )
    elif scheme.lower() != "bearer" or not token.strip():
        message = "an operator token is required: send it as 'Authorization: Bearer TOKEN'"
    else:
        message = (
            "the token is not an operator token (make one with "
            "`counterpoint token create NAME --operator`)"
        )
    return JSONResponse({"error": message}, status_code=401, headers={"WWW-Authenticate": "Bearer"})


async def _http_error(request: Request, exc: Exception) -> Response:
    """Routing's own refusals (no such route, a method not allowed) as JSON errors."""
    assert isinstance(exc, HTTPException)
    path = request.url.path
    if exc.status_code == 404:
        message = f"no such route: {request.method} {path} (see /openapi.json)"
    elif exc.status_code == 405:
        allowed = sorted((exc.headers or {}).get("Allow", "").split(", "))
        message = f"{request.method} is not allowed on {path}; use {', '.join(allowed)}"
    else:
        message = exc.detail
    return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    message = f"internal error ({type(exc).__name__}); the server's log has the details"
    return JSONResponse({"error": message}, status_code=500)


def build_app(
    hub: Hub,
    tokens: TokenStore,
    operations: Operations | None = None,
    security: Security | None = None,
) -> Starlette:
    """The application; :class:`Guard` wraps every route (security.py lists the public
    ones by name: a route added here is private unless named there)."""
    security = security or Security()
    api = _Api(hub, tokens, operations, security)
    routes = [
        Route("/healthz", api.healthz),
        Route("/login", api.login, methods=["POST"]),
        Route("/logout", api.logout, methods=["POST"]),
        WebSocketRoute("/agents/{agent}/ws", api.agent_ws),
        Route("/", api.page),
        Route("/assets/{name}", api.asset),
        Route("/api/snapshot", api.snapshot),
        WebSocketRoute("/api/live", api.live),
        Route("/api/alerts", api.alerts),
        Route("/api/whoami", api.whoami),
        Route("/api/run", api.run_status),
        Route("/api/cancel", api.cancel, methods=["POST"]),
        Route("/api/conflicts", api.conflicts),
        Route("/metrics", api.metrics),
        Route("/api/conflicts/{conflict}/resolve", api.resolve, methods=["POST"]),
        Route("/api/gates/{gate}/approve", api.approve, methods=["POST"]),
        Route("/api/gates/{gate}/reject", api.reject, methods=["POST"]),
        Route("/api/agents/{agent}/state", api.agent_state, methods=["POST"]),
        Route("/openapi.json", api.openapi),
        Route(
            "/git/{agent}/{rest:path}",
            GitEndpoint(tokens, operations.exchange if operations else None).handle,
            methods=["GET", "POST"],
            name="git",
            include_in_schema=False,
        ),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(Guard, tokens=tokens, security=security)],
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )


def _schema(app: Starlette) -> dict[str, Any]:
    cached: dict[str, Any] | None = getattr(app.state, "openapi", None)
    if cached is None:
        cached = app.state.openapi = SchemaGenerator(openapi_base()).get_schema(app.routes)
    return cached


def openapi_base() -> dict[str, Any]:
    """The OpenAPI document without its paths (those come from the routes' docstrings)."""
    from counterpoint import __version__

    def answer(description: str, schema: str = "Error") -> dict[str, Any]:
        ref = {"$ref": f"#/components/schemas/{schema}"}
        return {"description": description, "content": {"application/json": {"schema": ref}}}

    return {
        "openapi": "3.0.3",
        "info": {
            "title": "counterpoint served run",
            "version": __version__,
            "description": (
                "The HTTP API of a served run (`counterpoint run --serve`, `counterpoint "
                "serve`): the dashboard's view and what operators do. Not described here: "
                "WS /api/live (the view, pushed live) and WS /agents/{ID}/ws (remote agents; "
                'docs/protocol.md). Every refused request gets {"error": "..."}. Every '
                "route but /healthz, /login and the page's static files needs a token or "
                "the dashboard's session (docs/security.md)."
            ),
        },
        "components": {
            "securitySchemes": {
                "operator": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "an operator token: `counterpoint token create NAME --operator`"
                    " (or, to read only, a viewer token: `--viewer`)",
                },
                "session": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "counterpoint_session_PORT",
                    "description": "the dashboard's session, set by POST /login",
                },
            },
            "schemas": _SCHEMAS,
            "responses": {
                "View": answer("The view of the run", "View"),
                "Alerts": answer('{"alerts": [...]}', "Alerts"),
                "Decided": answer("The decision is recorded in the journal", "Decision"),
                "BadRequest": answer("The body is not JSON, or a field is missing or wrong"),
                "Unauthorized": answer("No token or session, or a token of the wrong kind"),
                "Forbidden": answer("The operator is not one of the gate's approvers"),
                "NotFound": answer("No such gate, agent, conflict or asset, or no run served"),
                "Conflict": answer("The run cannot do it now (e.g. a conflict already decided)"),
            },
        },
    }


_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string", "description": "what is wrong"}},
    },
    "Login": {
        "type": "object",
        "required": ["token"],
        "additionalProperties": False,
        "properties": {"token": {"type": "string", "description": "operator or viewer token"}},
    },
    "Comment": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"comment": {"type": "string", "maxLength": MAX_COMMENT_CHARS}},
    },
    "Decision": {
        "type": "object",
        "properties": {
            "gate": {"type": "string"},
            "decision": {"type": "string", "enum": ["approved", "rejected"]},
            "by": {"type": "string"},
            "comment": {"type": "string"},
            "status": {"type": "string", "description": "the gate's latest status"},
        },
    },
    "AgentState": {
        "type": "object",
        "required": ["state"],
        "additionalProperties": False,
        "properties": {"state": {"type": "string", "enum": ["maintenance", "available"]}},
    },
    "Resolution": {
        "type": "object",
        "description": 'either {"task": TASK} (keep its value) or {"value": JSON}',
        "properties": {"task": {"type": "string"}, "value": {}},
    },
    "Alerts": {
        "type": "object",
        "properties": {"alerts": {"type": "array", "items": {"type": "object"}}},
    },
    "View": {
        "type": "object",
        "properties": {
            "now": {"type": "number", "description": "the server's clock (Unix seconds)"},
            "run": {"type": "object"},
            "phases": {"type": "array", "items": {"type": "object"}},
            "tasks": {"type": "array", "items": {"type": "object"}},
            "agents": {"type": "array", "items": {"type": "object"}},
            "gates": {"type": "array", "items": {"type": "object"}},
            "conflicts": {"type": "array", "items": {"type": "object"}},
            "alerts": {"type": "array", "items": {"type": "object"}},
            "escalations": {"type": "array", "items": {"type": "object"}},
        },
    },
}

_JSON_KINDS = {str: "a string", int: "a number", float: "a number", bool: "true or false"}


def _kind(value: Any) -> str:
    """How JSON would name ``value``'s type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


async def _fields(
    request: Request, fields: dict[str, type], required: tuple[str, ...]
) -> dict[str, Any] | JSONResponse:
    """The body as an object with only ``fields``, each of its type; else a 400 naming
    what is wrong. An empty body is an empty object when nothing is required."""
    body = await _json_body(request)
    if isinstance(body, JSONResponse):
        return body
    if body is None and not required:
        return {}
    example = ", ".join(f'"{name}": ...' for name in fields)
    if not isinstance(body, dict):
        return _error(f"the body must be a JSON object {{{example}}}, not {_kind(body)}", 400)
    unknown = sorted(body.keys() - fields.keys())
    if unknown:
        return _error(f"unknown field {unknown[0]!r}; the body is {{{example}}}", 400)
    for name in required:
        if name not in body:
            return _error(f"missing field {name!r}; the body is {{{example}}}", 400)
    for name, kind in fields.items():
        if name in body and (not isinstance(body[name], kind) or isinstance(body[name], bool)):
            return _error(f"{name} must be {_JSON_KINDS[kind]}, not {_kind(body[name])}", 400)
    return body


async def _json_body(request: Request) -> Any:
    """The request's JSON body (None when empty), or a 400/413 answer saying what is
    wrong with it."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY_BYTES:
        return _error("the body is over 1 MiB", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return _error("the body is over 1 MiB", 413)
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        reason = str(exc) if isinstance(exc, ValueError) else "nested too deeply"
        return _error(f"the body is not valid JSON: {reason}", 400)


class _PlainBadUtf8(logging.Filter):
    """uvicorn logs a text frame that is not UTF-8 (it closes the connection with 1007
    before the hub sees the frame) at ERROR with a traceback: bad input from a client,
    not a server error. Keep it as one warning line."""

    MESSAGE = "Invalid UTF-8 sequence received from client."

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage() == self.MESSAGE:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
            record.msg, record.args = "refused a text frame that is not UTF-8 (close 1007)", ()
        return True


_BAD_UTF8 = _PlainBadUtf8()


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the run engine owns SIGINT and SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HubServer:
    """Serves ``hub`` on ``host:port`` within the running event loop; over TLS when given
    a certificate and its key (PEM files)."""

    def __init__(
        self,
        hub: Hub,
        tokens: TokenStore,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        operations: Operations | None = None,
        sock: socket.socket | None = None,
        allowed_hosts: tuple[str, ...] = (),
        tls_cert: str | None = None,
        tls_key: str | None = None,
        security: Security | None = None,
    ) -> None:
        self.hub = hub
        self.host = host
        self.port = port
        self.sock = sock
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        if security is None:
            security = Security(hosts=HostPolicy(host, allowed_hosts), tls=tls_cert is not None)
        self.security = security
        self.app = build_app(hub, tokens, operations, security)
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'wss' if self.tls_cert else 'ws'}://{host}:{self.port}"

    async def start(self) -> None:
        sock = self.sock or bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        logging.getLogger("uvicorn.error").addFilter(_BAD_UTF8)  # once: filters are a set
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            ws="websockets-sansio",
            ws_max_size=2 * self.hub.max_message_bytes,
            ws_ping_interval=None,  # the protocol has its own heartbeats
            ws_per_message_deflate=False,  # small JSON frames: deflate costs more than it saves
            lifespan="off",
            access_log=False,
            ssl_certfile=self.tls_cert,
            ssl_keyfile=self.tls_key,
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
