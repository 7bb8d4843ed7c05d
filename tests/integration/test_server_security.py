"""The hardened service: every route of the app refuses callers without the right
credential unless it is explicitly public, the Host header and browsers' Origin are
checked, failed sign-ins are rate-limited per address, tokens are compared in constant
time and never logged, and the dashboard's session is an HttpOnly, SameSite=Strict cookie.

Most tests drive the real application (``build_app``, with its Guard) in-process through
starlette's TestClient; the TLS and warning tests run the real command line.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import socket
import ssl
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from run_helpers import cli
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.testclient import TestClient, WebSocketDenialResponse  # needs httpx2
from starlette.websockets import WebSocketDisconnect
from tls_helpers import self_signed

from counterpoint.messaging.bus import Bus
from counterpoint.net import security as sec
from counterpoint.net.hub import Hub
from counterpoint.net.security import FailureLimiter, HostPolicy, Security, Sessions
from counterpoint.net.server import HubServer, Operations, build_app
from counterpoint.net.tokens import TokenStore
from counterpoint.plan.model import AgentSpec

SECRET = "plan-secret-7f3a"  # in every answer that carries run data
AGENTS = {
    "builder": AgentSpec.model_validate({"capabilities": ["build"], "runner": {"remote": True}})
}
PUBLIC = {"healthz", "page", "asset", "login"}
EXTRA_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class App:
    """The real application over a token store, its operations returning SECRET."""

    def __init__(self, tmp_path: Path, **security: Any) -> None:
        self.store = TokenStore(tmp_path / "state")
        self.agent = self.store.create("builder")
        self.operator = self.store.create("alice", "operator")
        self.viewer = self.store.create("vera", "viewer")
        self.security = Security(
            hosts=security.pop("hosts", HostPolicy("127.0.0.1", ["testserver"])), **security
        )
        ops = Operations(
            status=lambda: {"plan": SECRET},
            cancel=lambda reason: None,
            conflicts=lambda: [{"key": SECRET}],
            metrics=lambda: SECRET.encode(),
        )
        self.hub = Hub(Bus(journal=lambda m: None), AGENTS)
        self.app = build_app(self.hub, self.store, ops, self.security)

    def client(self, address: str = "10.0.0.1") -> TestClient:
        return TestClient(self.app, client=(address, 40000), raise_server_exceptions=True)


@pytest.fixture
def app(tmp_path: Path) -> App:
    return App(tmp_path, limiter=FailureLimiter(limit=10_000))


def all_routes(routes: list[BaseRoute], prefix: str = "") -> Iterator[tuple[str, BaseRoute]]:
    """(path with its parameters filled in, route) of every route, mounts included."""
    for route in routes:
        if isinstance(route, Mount):
            yield from all_routes(route.routes, prefix + route.path)
        elif isinstance(route, Route | WebSocketRoute):
            path = re.sub(r"\{(\w+)(:\w+)?\}", lambda m: f"x{m.group(1)}", route.path)
            path = path.replace("xagent", "builder").replace("xrest", "info/refs")
            yield prefix + path, route
        else:  # pragma: no cover - the app has no other kind today
            raise AssertionError(f"a route of an unknown kind: {route!r}")


def refused_http(answer: Any, why: str) -> None:
    assert answer.status_code in (401, 403), (why, answer.status_code, answer.text)
    if answer.request.method != "HEAD":  # a HEAD answer has no body
        assert set(answer.json()) == {"error"}, (why, answer.text)
    assert SECRET not in answer.text, why


def refused_ws(client: TestClient, path: str, headers: dict[str, str], why: str) -> None:
    with (
        pytest.raises((WebSocketDenialResponse, WebSocketDisconnect)) as info,
        client.websocket_connect(path, headers=headers) as ws,
    ):
        ws.receive_text()
    denial = info.value
    status = getattr(denial, "status_code", 403)
    assert status in (401, 403), (why, path, status)


def test_every_route_refuses_callers_without_the_right_credential(app: App) -> None:
    client = app.client()
    routes = list(all_routes(app.app.routes))
    names = {getattr(r, "name", None) for _, r in routes}
    assert names >= PUBLIC and sec.PUBLIC_ROUTES == PUBLIC  # the public ones, explicitly
    assert len(routes) >= 20, [p for p, _ in routes]
    assert any("health" in p for p, _ in routes)
    checked = 0
    for path, route in routes:
        name = getattr(route, "name", None)
        human = name not in sec.AGENT_ROUTES
        wrong_kind = [app.agent] if human else [app.operator, app.viewer]
        if name not in sec.READ_ROUTES | sec.AGENT_ROUTES | PUBLIC:
            wrong_kind.append(app.viewer)  # operator routes: a viewer only watches
        credentials = {
            "no credential": {},
            "a bad token": {"Authorization": "Bearer cpt_" + "A" * 43},
            "an empty bearer": {"Authorization": "Bearer "},
            "another scheme": {"Authorization": f"Basic {app.operator}"},
            "a forged cookie": {"Cookie": f"{sec.SESSION_COOKIE}_80=forged"},
            **{
                f"a wrong-kind token {i}": {"Authorization": f"Bearer {t}"}
                for i, t in enumerate(wrong_kind)
            },
        }
        if isinstance(route, WebSocketRoute):
            for why, headers in credentials.items():
                if name in PUBLIC:  # pragma: no cover - no public WebSocket today
                    continue
                refused_ws(client, path, headers, f"WS {path}: {why}")
                checked += 1
            continue
        assert isinstance(route, Route)
        for method in sorted(set(route.methods or ()) | set(EXTRA_METHODS)):
            for why, headers in credentials.items():
                answer = client.request(method, path, headers=headers)
                if name in PUBLIC:
                    assert SECRET not in answer.text, (method, path, why)
                    assert "builder" not in answer.text or name == "asset", (method, path)
                    if method == "GET" and name == "healthz":
                        assert answer.json() == {"status": "ok"}
                    assert answer.status_code < 500, (method, path, answer.text)
                else:
                    refused_http(answer, f"{method} {path}: {why}")
                checked += 1
    assert checked > 500, checked
    # and the right credential opens each private route (not a refusal by the Guard)
    assert client.get("/api/run", headers=bearer(app.operator)).json()["plan"] == SECRET
    assert client.get("/metrics", headers=bearer(app.operator)).text == SECRET
    assert client.get("/api/whoami", headers=bearer(app.viewer)).json()["role"] == "viewer"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_route_added_later_is_private_by_default(app: App) -> None:
    from starlette.responses import JSONResponse

    async def brand_new(request: Any) -> JSONResponse:
        return JSONResponse({"data": SECRET})

    app.app.add_route("/api/brand-new", brand_new, name="brand_new")
    client = app.client()
    refused_http(client.get("/api/brand-new"), "no credential")
    refused_http(client.get("/api/brand-new", headers=bearer(app.viewer)), "a viewer")
    refused_http(client.get("/api/brand-new", headers=bearer(app.agent)), "an agent")
    assert client.get("/api/brand-new", headers=bearer(app.operator)).json() == {"data": SECRET}


def test_the_public_routes_say_nothing_about_the_run(app: App) -> None:
    client = app.client()
    assert client.get("/healthz").json() == {"status": "ok"}
    page = client.get("/")
    assert page.status_code == 200 and SECRET not in page.text and "Sign in" in page.text
    assert client.get("/assets/dashboard.js").status_code == 200
    bad = client.post("/login", json={"token": "cpt_nope"})
    assert bad.status_code == 401 and "not an operator or viewer token" in bad.json()["error"]
    assert client.post("/login", content=b"{oops").status_code == 400
    assert client.post("/login", json={"token": 7}).status_code == 400
    assert client.post("/login", json={"token": app.agent}).status_code == 401


def test_the_dashboard_session_is_an_httponly_samesite_cookie_that_ends(app: App) -> None:
    client = app.client()
    answer = client.post("/login", json={"token": app.operator})
    assert answer.json() == {"name": "alice", "role": "operator"}
    cookie = answer.headers["set-cookie"]
    name, value = cookie.split(";")[0].split("=", 1)
    assert name == f"{sec.SESSION_COOKIE}_80"
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain HTTP here; TLS adds it (test_hub_run)
    assert len(value) >= 43 and app.operator not in cookie  # 256 random bits, not the token
    assert client.get("/api/whoami").json()["operator"] == "alice"
    assert client.get("/api/run").json()["plan"] == SECRET
    assert client.post("/api/cancel").status_code == 202
    with client.websocket_connect("/api/live") as live:  # the cookie opens the live feed
        live.close()
    # a page of another origin cannot use the cookie to act
    other = client.post("/api/cancel", headers={"Origin": "http://evil.example"})
    assert other.status_code == 403 and "another origin" in other.json()["error"]
    assert client.post("/api/cancel", headers={"Origin": "http://testserver"}).status_code == 202

    assert client.post("/logout").json() == {"signed_out": True}
    client.cookies.set(name, value)  # the old cookie, replayed: the session is gone
    gone = client.get("/api/whoami")
    assert gone.status_code == 401 and "session has ended" in gone.json()["error"]

    # a revoked token ends the sessions made with it
    client = app.client()
    assert client.post("/login", json={"token": app.viewer}).status_code == 200
    assert client.get("/api/snapshot").status_code == 404  # signed in; no dashboard here
    app.store.revoke("vera", "viewer")
    assert client.get("/api/snapshot").status_code == 401


def test_sessions_expire() -> None:
    now = [1000.0]
    sessions = Sessions(ttl_s=60, clock=lambda: now[0])

    class Holds:
        def holds(self, *args: Any) -> bool:
            return True

    ident = sessions.create(sec.Principal("viewer", "v"), "cpt_x")
    assert sessions.get(ident, Holds()) is not None  # type: ignore[arg-type]
    now[0] += 61
    assert sessions.get(ident, Holds()) is None  # type: ignore[arg-type]


def test_a_host_not_on_the_allow_list_is_refused_with_400(tmp_path: Path) -> None:
    app = App(tmp_path, hosts=HostPolicy("127.0.0.1", ["dash.example.org"]))
    client = app.client()
    for host in ("evil.example", "127.0.0.1.evil.example", "", "a b", "x" * 300):
        answer = client.get("/healthz", headers={"Host": host})
        assert answer.status_code == 400, host
        assert "--allowed-host" in answer.json()["error"]
    for host in ("127.0.0.1:8765", "localhost:1", "[::1]:8765", "dash.example.org", "LOCALHOST"):
        assert client.get("/healthz", headers={"Host": host}).status_code == 200, host
    answer = client.get("/api/run", headers={"Host": "evil.example", **bearer(app.operator)})
    assert answer.status_code == 400  # before any credential is looked at
    with (
        pytest.raises((WebSocketDenialResponse, WebSocketDisconnect)),
        client.websocket_connect("/api/live", headers={"Host": "evil.example"}) as ws,
    ):
        ws.receive_text()


def test_the_host_policy() -> None:
    local = HostPolicy("127.0.0.1")
    assert local.allows("127.0.0.1:8765") and local.allows("localhost") and local.allows("[::1]")
    assert not local.allows("10.0.0.5:8765")  # an address it does not bind
    assert not local.allows("rebind.attacker.example:8765")
    bound = HostPolicy("10.0.0.5", ["hub.internal:8443"])
    assert bound.allows("10.0.0.5:8765") and bound.allows("hub.internal:8443")
    assert not bound.allows("hub.internal:9999")  # the port is part of that entry
    wildcard = HostPolicy("0.0.0.0")
    assert wildcard.allows("192.168.1.20:8765")  # an IP literal cannot be DNS-rebound
    assert wildcard.allows(f"{socket.gethostname()}:8765")
    assert not wildcard.allows("attacker.example:8765")
    with pytest.raises(ValueError, match="not a host name"):
        HostPolicy("127.0.0.1", ["http://x/"])


def test_websocket_origin_browsers_must_be_same_origin(app: App) -> None:
    client = app.client()
    evil = {"Origin": "http://evil.example"}
    refused_ws(client, "/api/live", {**evil, **bearer(app.operator)}, "live from another site")
    refused_ws(client, "/agents/builder/ws", {**evil, **bearer(app.agent)}, "agent from a page")
    same = {"Origin": "http://testserver", **bearer(app.operator)}
    with client.websocket_connect("/api/live", headers=same) as ws:
        ws.close()
    with client.websocket_connect("/agents/builder/ws", headers=bearer(app.agent)) as ws:
        ws.close()  # an agent sends no Origin
    login = client.post("/login", json={"token": app.operator}, headers=evil)
    assert login.status_code == 403  # no signing a visitor in from another site


def test_failed_authentication_is_rate_limited_per_address(tmp_path: Path) -> None:
    clock = [0.0]
    app = App(tmp_path, limiter=FailureLimiter(limit=10, window_s=60, clock=lambda: clock[0]))
    attacker, neighbour = app.client("10.9.9.9"), app.client("10.0.0.2")
    for i in range(10):
        code = attacker.get("/api/run", headers=bearer(f"cpt_guess{i}")).status_code
        assert code == 401, i
    limited = attacker.get("/api/run", headers=bearer("cpt_guess-more"))
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "60" and "too many" in limited.json()["error"]
    # while limited, even the right token waits (a guess that succeeds must not show)
    assert attacker.get("/api/run", headers=bearer(app.operator)).status_code == 429
    assert attacker.post("/login", json={"token": app.operator}).status_code == 429
    with (
        pytest.raises((WebSocketDenialResponse, WebSocketDisconnect)) as info,
        attacker.websocket_connect("/agents/builder/ws", headers=bearer(app.agent)) as ws,
    ):
        ws.receive_text()
    assert getattr(info.value, "status_code", 429) == 429
    assert attacker.get("/healthz").status_code == 200  # public routes are not limited
    # another address is not slowed at all
    assert neighbour.get("/api/run", headers=bearer(app.operator)).status_code == 200
    with neighbour.websocket_connect("/agents/builder/ws", headers=bearer(app.agent)) as ws:
        ws.close()
    clock[0] += 61  # the window passes
    assert attacker.get("/api/run", headers=bearer(app.operator)).status_code == 200


def test_failed_logins_and_agent_upgrades_count_too(tmp_path: Path) -> None:
    app = App(tmp_path, limiter=FailureLimiter(limit=3))
    client = app.client("10.1.1.1")
    for _ in range(2):
        assert client.post("/login", json={"token": "cpt_wrong"}).status_code == 401
    refused_ws(client, "/agents/builder/ws", bearer("cpt_wrong"), "a bad agent token")
    assert client.post("/login", json={"token": app.operator}).status_code == 429


def test_tokens_have_256_bits_are_stored_hashed_and_compared_in_constant_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = TokenStore(tmp_path)
    tokens = [store.create(f"agent{i}") for i in range(5)]
    tokens.append(store.create("op", "operator"))
    for token in tokens:
        assert token.startswith("cpt_") and len(token) >= 4 + 43  # token_urlsafe(32)
    text = (tmp_path / "tokens.json").read_text()
    assert not any(t in text or t[4:] in text for t in tokens)
    compared: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    for token in (tokens[0], tokens[-1], "cpt_unknown"):
        compared.clear()
        store.identify(token)
        # every stored digest is compared, whichever matches: no early exit, no dict lookup
        assert len(compared) == len(tokens), token
        assert all(token not in pair for pair in compared)  # digests, not the secret
    assert store.identify(tokens[-1]) == ("operator", "op")
    assert store.identify(tokens[0][:-1] + "x") is None


def test_no_token_reaches_the_logs_or_the_answers(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = app.client()
    wrong = "cpt_" + "Q" * 43
    texts = []
    for token in (app.operator, app.viewer, app.agent, wrong):
        for path in ("/api/run", "/api/snapshot", "/git/builder/info/refs", "/api/nothing"):
            answer = client.get(path, headers=bearer(token))
            texts.append(answer.text + json.dumps(dict(answer.headers)))
        answer = client.post("/login", json={"token": token})
        texts.append(answer.text + json.dumps(dict(answer.headers)))
        try:
            with client.websocket_connect("/agents/builder/ws", headers=bearer(token)) as ws:
                ws.close()
        except (WebSocketDenialResponse, WebSocketDisconnect):
            pass
    assert caplog.records, "the refusals were logged"
    logged = caplog.text + "".join(texts)
    for token in (app.operator, app.viewer, app.agent, wrong):
        assert token not in logged and token[4:] not in logged


def test_binding_beyond_loopback_without_tls_prints_a_warning(tmp_path: Path) -> None:
    empty = tmp_path / "state"
    wide = cli("serve", "--state", empty, "--host", "0.0.0.0", "--port", "0")
    assert wide.code == 2  # nothing to serve here; the warning came first
    assert "warning: serving on 0.0.0.0 without TLS" in wide.stderr, str(wide)
    local = cli("serve", "--state", empty, "--host", "127.0.0.1", "--port", "0")
    assert "without TLS" not in local.stderr, str(local)
    cert, key = self_signed(tmp_path)
    tls = cli("serve", "--state", empty, "--host", "0.0.0.0", "--tls-cert", cert, "--tls-key", key)
    assert "without TLS" not in tls.stderr, str(tls)


def test_tls_files_that_cannot_serve_exit_2_with_a_clear_message(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    state = tmp_path / "state"
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    cases = {
        ("--tls-cert", str(cert)): "--tls-cert needs --tls-key",
        ("--tls-key", str(key)): "--tls-key needs --tls-cert",
        ("--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", str(key)): "cannot read it",
        ("--tls-cert", str(junk), "--tls-key", str(key)): "not a PEM certificate",
        ("--tls-cert", str(key), "--tls-key", str(cert)): "not a PEM certificate",
        ("--allowed-host", "http://x/"): "not a host name",
    }
    for args, words in cases.items():
        result = cli("serve", "--state", state, *args)
        assert result.code == 2, (args, str(result))
        assert words in result.stderr, (args, str(result))
        assert "Traceback" not in result.output


def test_https_and_wss_with_a_self_signed_certificate(tmp_path: Path) -> None:
    """A HubServer over TLS: a real HTTPS request and a WSS agent upgrade, trusting the
    certificate as a CA; a client that does not trust it cannot connect."""
    import asyncio

    from websockets.asyncio.client import connect

    cert, key = self_signed(tmp_path)
    store = TokenStore(tmp_path / "state")
    agent, operator = store.create("builder"), store.create("alice", "operator")

    async def scenario() -> None:
        hub = Hub(Bus(journal=lambda m: None), AGENTS)
        server = HubServer(hub, store, "127.0.0.1", 0, tls_cert=str(cert), tls_key=str(key))
        await server.start()
        try:
            assert server.url.startswith("wss://127.0.0.1:")
            base = server.url.replace("wss://", "https://")
            trusting = ssl.create_default_context(cafile=str(cert))

            def get(path: str, token: str | None = None) -> tuple[int, Any, Any]:
                request = urllib.request.Request(
                    base + path, headers=bearer(token) if token else {}
                )
                with urllib.request.urlopen(request, timeout=10, context=trusting) as answer:
                    return answer.status, json.loads(answer.read()), answer.headers

            loop = asyncio.get_running_loop()
            assert (await loop.run_in_executor(None, get, "/healthz"))[:2] == (
                200,
                {"status": "ok"},
            )
            code, who, _ = await loop.run_in_executor(None, get, "/api/whoami", operator)
            assert (code, who["operator"]) == (200, "alice")
            login = urllib.request.Request(
                base + "/login", data=json.dumps({"token": operator}).encode(), method="POST"
            )

            def sign_in() -> str:
                with urllib.request.urlopen(login, timeout=10, context=trusting) as answer:
                    return str(answer.headers["Set-Cookie"])

            cookie = await loop.run_in_executor(None, sign_in)
            assert "Secure" in cookie  # never sent over plain HTTP
            url = f"{server.url}/agents/builder/ws"
            async with connect(url, ssl=trusting, additional_headers=bearer(agent)) as ws:
                await ws.send(
                    json.dumps(
                        {
                            "op": "hello",
                            "version": "1.0",
                            "session": "s-1",
                            "capabilities": ["build"],
                            "capacity": 1,
                            "running": [],
                            "last_seq": 0,
                        }
                    )
                )
                welcome = json.loads(await ws.recv())
                assert welcome["op"] == "welcome", welcome
            with pytest.raises(ssl.SSLCertVerificationError):
                async with connect(url, additional_headers=bearer(agent), open_timeout=5):
                    pass  # the system's CAs do not know a self-signed certificate
        finally:
            await server.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_openssl_is_there_for_the_tls_tests() -> None:
    assert subprocess.run(["openssl", "version"], capture_output=True).returncode == 0
