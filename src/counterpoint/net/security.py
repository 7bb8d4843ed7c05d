"""Who may use the server: every route is private unless marked public, checked in one place.

:class:`Guard` wraps the whole application (HTTP and WebSocket) and, before any route
runs:

1. checks the ``Host`` header against an allow-list (loopback names by default), so a
   page of another site cannot reach the server through DNS rebinding (400);
2. refuses a browser's WebSocket or cookie-authenticated POST from a page of another
   origin (403);
3. finds the route and its access level (:data:`PUBLIC_ROUTES`, :data:`AGENT_ROUTES`,
   :data:`READ_ROUTES`; any other route, and any path no route matches, needs an operator
   or a signed-in viewer at least, and routed ones an operator), then checks the
   credentials: ``Authorization: Bearer TOKEN`` or the dashboard's session cookie (set by
   ``POST /login``);
4. counts failed authentications per client address and answers 429 (``Retry-After``)
   once an address has too many in a window, without slowing anyone else.

Tokens never appear in what it logs or answers: refusals name the kind of credential
wanted, never the one given.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import math
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Any, Literal
from urllib.parse import urlsplit

from starlette.routing import BaseRoute, Match

from counterpoint.net.tokens import TokenStore, digest

log = logging.getLogger("counterpoint.server")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

Access = Literal["public", "agent", "read", "operator"]

#: Routes anyone may call: a health check that says nothing about the run, the page's
#: static files (the sign-in form and the script that draws the run once signed in;
#: identical for everyone, no run data) and the sign-in itself.
PUBLIC_ROUTES = frozenset({"healthz", "page", "asset", "login"})
#: Routes of remote agents: the agent's own token (``/agents/{agent}/...``, ``/git/{agent}``).
AGENT_ROUTES = frozenset({"agent_ws", "git"})
#: Routes a viewer (read-only) token or session may use; operators may use them too.
READ_ROUTES = frozenset({"snapshot", "live", "alerts", "whoami", "openapi", "logout"})

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
WILDCARD_HOSTS = ("", "0.0.0.0", "::", "*")
SESSION_COOKIE = "counterpoint_session"
SESSION_TTL_S = 12 * 3600.0
MAX_SESSIONS = 10_000
MAX_FAILURES = 10
FAILURE_WINDOW_S = 60.0
MAX_TRACKED_ADDRESSES = 10_000


@dataclass(frozen=True)
class Principal:
    """Who a request comes from: an operator or a viewer (``kind``) and their name."""

    kind: Literal["operator", "viewer"]
    name: str
    via: Literal["bearer", "cookie"] = "bearer"


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, tls: bool) -> str | None:
    """The warning to print when serving on ``host`` reaches beyond this machine without
    TLS; None when it does not."""
    if tls or is_loopback(host):
        return None
    return (
        f"warning: serving on {host or '0.0.0.0'} without TLS: tokens and the run's data "
        "cross the network in clear text; give --tls-cert and --tls-key, or serve on "
        "127.0.0.1 behind an SSH tunnel or a TLS proxy (docs/security.md)"
    )


def tls_problem(cert: str | None, key: str | None) -> str | None:
    """Why ``--tls-cert``/``--tls-key`` cannot serve TLS (a clear message), or None."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        given, missing = ("--tls-cert", "--tls-key") if key is None else ("--tls-key", "--tls-cert")
        return f"{given} needs {missing} too"
    import ssl

    for option, path in (("--tls-cert", cert), ("--tls-key", key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            return f"{option} {path}: cannot read it ({exc.strerror})"
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        return (
            f"--tls-cert {cert} and --tls-key {key} are not a PEM certificate and its "
            f"private key ({reason})"
        )
    return None


def check_hosts(allowed: Iterable[str]) -> None:
    """ValueError naming the first ``--allowed-host`` that is not ``NAME[:PORT]``."""
    HostPolicy("127.0.0.1", allowed)


def split_host(value: str) -> tuple[str, int | None] | None:
    """(hostname lowercased without brackets, port or None) of a ``Host`` header value;
    None when it is not one."""
    value = value.strip()
    if not value or any(c in value for c in "/@?# \t\\"):
        return None
    try:
        parts = urlsplit(f"//{value}")
        name, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not name:
        return None
    return name.lower(), port


class HostPolicy:
    """The ``Host`` names the server answers to.

    Always: ``127.0.0.1``, ``localhost``, ``[::1]``; the address it binds to unless that
    is a wildcard; each ``--allowed-host`` (``NAME`` or ``NAME:PORT``). When it binds to a
    wildcard address, also any IP address literal (an address cannot be rebound by DNS,
    so agents may connect to the machine's address) and the machine's host name."""

    def __init__(self, bind_host: str = "127.0.0.1", allowed: Iterable[str] = ()) -> None:
        self.names: dict[str, set[int | None]] = {}
        for name in LOOPBACK_HOSTS:
            self._add(name, None)
        self.any_address = bind_host in WILDCARD_HOSTS
        if not self.any_address:
            self._add(bind_host.strip("[]"), None)
        else:
            import socket

            self._add(socket.gethostname(), None)
        for entry in allowed:
            parsed = split_host(entry)
            if parsed is None:
                raise ValueError(f"--allowed-host {entry!r} is not a host name or NAME:PORT")
            self._add(*parsed)

    def _add(self, name: str, port: int | None) -> None:
        self.names.setdefault(name.lower(), set()).add(port)

    def allows(self, header: str) -> bool:
        parsed = split_host(header)
        if parsed is None:
            return False
        name, port = parsed
        ports = self.names.get(name)
        if ports is not None and (None in ports or port in ports):
            return True
        if self.any_address:
            try:
                ipaddress.ip_address(name)
            except ValueError:
                return False
            return True
        return False


class FailureLimiter:
    """At most ``limit`` failed authentications per client address in ``window_s``;
    the next attempts from that address wait (429) until the oldest failure ages out."""

    def __init__(
        self,
        limit: int = MAX_FAILURES,
        window_s: float = FAILURE_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, address: str) -> deque[float] | None:
        times = self._failures.get(address)
        if times is None:
            return None
        cutoff = self.clock() - self.window_s
        while times and times[0] <= cutoff:
            times.popleft()
        if not times:
            del self._failures[address]
            return None
        return times

    def retry_after(self, address: str) -> int | None:
        """Seconds until ``address`` may try again, or None when it may now."""
        times = self._recent(address)
        if times is None or len(times) < self.limit:
            return None
        return max(1, math.ceil(times[0] + self.window_s - self.clock()))

    def failed(self, address: str) -> None:
        times = self._recent(address)
        if times is None:
            times = self._failures[address] = deque(maxlen=self.limit)
            while len(self._failures) > MAX_TRACKED_ADDRESSES:
                self._failures.popitem(last=False)
        times.append(self.clock())


@dataclass
class _Session:
    principal: Principal
    token_digest: str
    expires: float


@dataclass
class Sessions:
    """The dashboard's sign-ins: a random 256-bit id (the cookie) per session, kept only
    as its SHA-256 here; each lasts ``ttl_s`` and ends when its token is revoked."""

    ttl_s: float = SESSION_TTL_S
    clock: Callable[[], float] = time.time
    _by_digest: OrderedDict[str, _Session] = field(default_factory=OrderedDict)

    def create(self, principal: Principal, token: str) -> str:
        ident = secrets.token_urlsafe(32)
        self._by_digest[_sid(ident)] = _Session(principal, digest(token), self.clock() + self.ttl_s)
        while len(self._by_digest) > MAX_SESSIONS:
            self._by_digest.popitem(last=False)
        return ident

    def get(self, ident: str, tokens: TokenStore) -> Principal | None:
        key = _sid(ident)
        session = self._by_digest.get(key)  # keyed by a digest, not by the secret itself
        if session is None:
            return None
        p = session.principal
        if session.expires <= self.clock() or not tokens.holds(
            p.kind, p.name, session.token_digest
        ):
            del self._by_digest[key]
            return None
        return Principal(p.kind, p.name, "cookie")

    def drop(self, ident: str) -> None:
        self._by_digest.pop(_sid(ident), None)


def _sid(ident: str) -> str:
    return hashlib.sha256(ident.encode("utf-8", "replace")).hexdigest()


def cookie_name(scope: Scope) -> str:
    """The session cookie's name: per port, since browsers share cookies between ports."""
    server = scope.get("server")
    port = server[1] if server and len(server) > 1 and server[1] is not None else 0
    return f"{SESSION_COOKIE}_{port}"


def session_id(scope: Scope) -> str:
    """The session cookie's value in the request, or ''."""
    name = cookie_name(scope)
    for key, value in scope.get("headers", ()):
        if key == b"cookie":
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(value.decode("latin-1"))
            except CookieError:  # a malformed cookie header holds no session
                continue
            if name in jar:
                return jar[name].value
    return ""


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def bearer_of(scope: Scope) -> tuple[bool, str]:
    """(whether an Authorization header was sent, the bearer token in it or '')."""
    value = header(scope, b"authorization")
    if value is None:
        return False, ""
    scheme, _, token = value.partition(" ")
    return True, token.strip() if scheme.lower() == "bearer" else ""


def same_origin(scope: Scope) -> bool:
    """True unless a browser sent the request from a page of another origin."""
    origin = header(scope, b"origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc.lower() == (header(scope, b"host") or "").lower()


@dataclass
class Security:
    """What the server enforces (build_app's ``security``)."""

    hosts: HostPolicy = field(default_factory=HostPolicy)
    limiter: FailureLimiter = field(default_factory=FailureLimiter)
    sessions: Sessions = field(default_factory=Sessions)
    tls: bool = False  # the session cookie is then marked Secure


class Guard:
    """The ASGI middleware that enforces :class:`Security` on every request."""

    def __init__(self, app: ASGIApp, tokens: TokenStore, security: Security) -> None:
        self.app = app
        self.tokens = tokens
        self.security = security

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = header(scope, b"host") or ""
        if not self.security.hosts.allows(host):
            shown = host if len(host) <= 100 else host[:100] + "..."
            log.warning("refused a request for host %r", shown)
            await _deny(
                scope,
                send,
                400,
                f"the Host header {shown!r} is not one this server answers to; "
                "serve with --allowed-host NAME to add it",
            )
            return
        if kind == "websocket" and not same_origin(scope):
            log.warning("refused a WebSocket from a page of %s", header(scope, b"origin"))
            await _deny(scope, send, 403, "a page of another origin may not open this")
            return
        name, params = self._route(scope)
        access = access_of(name)
        if access == "public":
            await self.app(scope, receive, send)
            return
        address = client_address(scope)
        sent_header, token = bearer_of(scope)
        wait = self.security.limiter.retry_after(address) if sent_header else None
        if wait is not None:
            await _deny(
                scope,
                send,
                429,
                f"too many failed sign-ins from {address}; try again in {wait} s",
                {"Retry-After": str(wait)},
            )
            return
        if access == "agent":
            agent = str(params.get("agent", ""))
            if not self.tokens.check(agent, token):
                if sent_header:
                    self.security.limiter.failed(address)
                log.warning("refused %s for agent %r: bad or missing token", scope["path"], agent)
                await _deny(
                    scope,
                    send,
                    403 if kind == "websocket" else 401,
                    f"agent {agent!r}'s own token is required (Authorization: Bearer)",
                    {"WWW-Authenticate": "Bearer"},
                )
                return
            await self.app(scope, receive, send)
            return
        principal = await self._principal(scope, sent_header, token, address)
        if principal is None:
            await _deny(
                scope,
                send,
                401,
                _unauthorized(sent_header, token, access, scope),
                {"WWW-Authenticate": "Bearer"},
            )
            return
        if access == "operator" and principal.kind != "operator":
            await _deny(
                scope,
                send,
                403,
                f"viewer {principal.name!r} may only watch: this needs an operator",
            )
            return
        if principal.via == "cookie" and kind == "http" and not same_origin(scope):
            await _deny(scope, send, 403, "a page of another origin may not do this")
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    async def _principal(
        self, scope: Scope, sent_header: bool, token: str, address: str
    ) -> Principal | None:
        if sent_header:
            found = self.tokens.identify(token)
            if found is None:
                self.security.limiter.failed(address)
                return None
            kind, name = found
            if kind == "agent":
                return None
            return Principal(kind, name)
        ident = session_id(scope)
        if not ident:
            return None
        return self.security.sessions.get(ident, self.tokens)

    def _route(self, scope: Scope) -> tuple[str | None, dict[str, Any]]:
        """The name and path parameters of the route that serves ``scope`` (a route that
        takes its path but not its method counts), or (None, {})."""
        partial: tuple[str | None, dict[str, Any]] | None = None
        routes: list[BaseRoute] = scope["app"].routes  # the app's, routes added later too
        for route in routes:
            match, child = route.matches(scope)
            found = (getattr(route, "name", None), dict(child.get("path_params", {})))
            if match == Match.FULL:
                return found
            if match == Match.PARTIAL and partial is None:
                partial = found
        return partial or (None, {})


def access_of(name: str | None) -> Access:
    """The access level of the route ``name``: private (operator) unless listed."""
    if name in PUBLIC_ROUTES:
        return "public"
    if name in AGENT_ROUTES:
        return "agent"
    if name is None or name in READ_ROUTES:
        return "read"  # no route: a signed-in reader learns it does not exist
    return "operator"


def _unauthorized(sent_header: bool, token: str, access: Access, scope: Scope) -> str:
    wanted = "an operator token" if access == "operator" else "an operator or viewer token"
    if not sent_header:
        if session_id(scope):
            return "the session has ended (expired, signed out or its token revoked); sign in again"
        return f"{wanted} is required (Authorization: Bearer TOKEN, or sign in on the dashboard)"
    if not token:
        return f"{wanted} is required: send it as 'Authorization: Bearer TOKEN'"
    return (
        f"the token is not {wanted} (make one with `counterpoint token create NAME --operator`"
        + (")" if access == "operator" else " or `--viewer`)")
    )


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


async def _deny(
    scope: Scope, send: Send, status: int, message: str, headers: dict[str, str] | None = None
) -> None:
    """Answer ``status`` with ``{"error": message}``; a WebSocket upgrade gets the same
    HTTP answer where the server supports it, else a refusal (HTTP 403)."""
    body = json.dumps({"error": message}).encode()
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items()),
    ]
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})
    elif "websocket.http.response" in scope.get("extensions", {}):
        await send({"type": "websocket.http.response.start", "status": status, "headers": raw})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": ""})
