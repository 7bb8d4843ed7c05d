"""The dashboard's HTTP API and live feed, without a browser: a served run answered over
loopback, every refusal a clear 4xx JSON error, and the server still well afterwards."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from run_helpers import Background, Workspace, cli, journal, plan, served, task, wait_for
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Origin

APPROVAL = {"kind": "approval", "approvers": ["alice"], "count": 1}
Answer = tuple[int, Any, Any]


def call(
    base: str,
    path: str,
    token: str | None = None,
    body: Any = None,
    method: str | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """(status, the decoded JSON body or the text, the headers) of one request."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        base + path,
        data=data,
        method=method or ("GET" if body is None else "POST"),
        headers={**({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, _decode(answer.read(), answer.headers), answer.headers
    except urllib.error.HTTPError as exc:
        return exc.code, _decode(exc.read(), exc.headers), exc.headers


def _decode(raw: bytes, headers: Any) -> Any:
    if headers.get("Content-Type", "").startswith("application/json"):
        return json.loads(raw)
    return raw.decode()


def refused(answer: Answer, status: int, *words: str) -> None:
    code, body, _ = answer
    assert code == status, answer
    assert isinstance(body, dict) and set(body) == {"error"}, body
    for word in words:
        assert word in body["error"], body


def gated(ws: Workspace, tasks_after: int = 1) -> None:
    """``build`` (one quick task) ends with a gate only alice approves; ``ship`` after it."""
    ws.write_plan(
        plan(
            [
                {
                    "id": "build",
                    "milestones": [{"id": "code", "tasks": [task("compile", sleep=0.05)]}],
                    "exit_gate": {"conditions": [APPROVAL]},
                },
                {
                    "id": "ship",
                    "milestones": [
                        {
                            "id": "release",
                            "tasks": [task(f"t{i:03}", sleep=0.01) for i in range(tasks_after)],
                        }
                    ],
                },
            ],
            agents={"dev": {"capacity": 8, "runner": {"python": ws.agent}}},
        )
    )


def token(ws: Workspace, name: str, *kind: str) -> str:
    made = cli("token", "create", name, *kind, "--state", ws.state)
    assert made.code == 0, str(made)
    return made.stdout.strip()


def gate_status(base: str, token: str) -> str:
    return str(call(base, "/api/snapshot", token)[1]["gates"][0]["status"])


def test_the_api_refuses_bad_requests_with_clear_errors_and_keeps_serving(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    gated(ws)
    run, base, alice = served(ws, "alice")
    try:
        mallory = token(ws, "mallory", "--operator")
        agent = token(ws, "builder")
        wait_for(lambda: gate_status(base, alice) == "waiting", what="the gate to wait")
        approve = "/api/gates/build.exit/approve"

        viewer = token(ws, "vera", "--viewer")
        refused(call(base, approve, body={}), 401, "operator token is required")
        refused(call(base, approve, viewer, {}), 403, "viewer 'vera' may only watch")
        refused(call(base, approve, agent, {}), 401, "not an operator token")
        refused(call(base, approve, "cpt_forged", {}), 401, "not an operator token")
        refused(call(base, approve, headers={"Authorization": f"Basic {alice}"}, body={}), 401)
        refused(call(base, approve, mallory, {}), 403, "'mallory' is not an approver", "alice")
        refused(call(base, approve, alice, b"{oops"), 400, "not valid JSON")
        refused(call(base, approve, alice, b"[" * 100_000), 400, "not valid JSON")
        refused(call(base, approve, alice, ["yes"]), 400, "must be a JSON object", "an array")
        refused(call(base, approve, alice, {"coment": "x"}), 400, "unknown field 'coment'")
        refused(call(base, approve, alice, {"comment": 7}), 400, "comment must be a string")
        refused(call(base, approve, alice, {"comment": "x" * 2001}), 400, "too long")
        too_long = {"Content-Length": str(1024 * 1024 + 1)}  # refused before it is read
        refused(call(base, approve, alice, b"{}", headers=too_long), 413, "over 1 MiB")
        refused(call(base, "/api/gates/nope.exit/approve", alice, {}), 404, "unknown gate")
        refused(call(base, "/api/gates/code.exit/reject", alice, {}), 409, "no approval")
        assert gate_status(base, alice) == "waiting"  # nothing above was recorded

        state = "/api/agents/dev/state"
        refused(call(base, state, body={"state": "maintenance"}), 401)
        refused(call(base, state, alice, {}), 400, "missing field 'state'")
        refused(call(base, state, alice, {"state": True}), 400, "state must be a string")
        refused(call(base, state, alice, {"state": "asleep"}), 400, "'maintenance' or 'available'")
        refused(call(base, "/api/agents/ghost/state", alice, {"state": "available"}), 404, "ghost")
        code, body, _ = call(base, state, alice, {"state": "maintenance"})
        assert (code, body) == (200, {"agent": "dev", "state": "maintenance"})
        assert call(base, state, alice, {"state": "available"})[1]["state"] == "available"

        resolve = "/api/conflicts/1/resolve"
        refused(call(base, resolve, alice, {"task": ["a"]}), 400, "task must be a string")
        refused(call(base, resolve, alice, {"task": "a"}), 404, "no conflict 1")
        refused(call(base, "/api/whoami"), 401)
        refused(call(base, "/api/whoami", agent), 401, "not an operator or viewer token")
        assert call(base, "/api/whoami", mallory)[:2] == (
            200,
            {"name": "mallory", "role": "operator", "operator": "mallory"},
        )
        assert call(base, "/api/whoami", viewer)[:2] == (200, {"name": "vera", "role": "viewer"})
        refused(call(base, "/api/nothing"), 401)  # not even whether it exists
        refused(call(base, "/api/nothing", viewer), 404, "no such route", "/api/nothing")
        refused(call(base, "/api/snapshot", viewer, {}), 405, "POST is not allowed", "GET")
        refused(call(base, "/api/cancel", alice), 405, "use POST")
        refused(call(base, "/assets/..%2Fserver.py"), 401)  # no asset of that name
        refused(call(base, "/assets/..%2Fserver.py", viewer), 404)
        refused(call(base, "/assets/nothing.js"), 404, "no dashboard asset")
        assert call(base, "/healthz")[:2] == (200, {"status": "ok"})  # still well

        code, body, _ = call(base, approve, alice, {"comment": "ship it"})
        assert code == 202, body
        assert body == {
            "gate": "build.exit",
            "decision": "approved",
            "by": "alice",
            "comment": "ship it",
            "status": "waiting",
        }
        result = run.wait(timeout=30)
    finally:
        run.stop()
    assert result.code == 0, str(result)
    assert journal(ws, "gate_evaluated")[-1]["results"][0]["message"] == "approved by alice"
    assert [e["state"] for e in journal(ws, "agent_state")] == ["maintenance", "available"]


def test_the_page_and_its_assets_are_public_the_view_and_openapi_need_a_viewer(
    tmp_path: Path,
) -> None:
    ws = Workspace.create(tmp_path)
    gated(ws)
    run, base, alice = served(ws, "alice")
    try:
        code, page, headers = call(base, "/")
        assert code == 200 and headers["Content-Type"].startswith("text/html")
        assert "default-src 'self'" in headers["Content-Security-Policy"]
        assert 'src="assets/dashboard.js"' in page and "http" not in page.replace("http-", "")
        for name, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
            code, text, headers = call(base, f"/assets/{name}")
            assert code == 200 and headers["Content-Type"].startswith(kind), name
            assert "//cdn" not in text and "https://" not in text  # nothing from elsewhere

        wait_for(lambda: gate_status(base, alice) == "waiting", what="the gate to wait")
        viewer = token(ws, "vera", "--viewer")
        for path in ("/api/snapshot", "/api/alerts", "/openapi.json"):
            refused(call(base, path), 401, "token is required")
        code, view, _ = call(base, "/api/snapshot", viewer)
        assert code == 200
        assert view["run"]["status"] == "running" and view["run"]["total"] == 2
        assert view["run"]["counts"]["completed"] == 1
        assert [(t["id"], t["phase"], t["state"]) for t in view["tasks"]] == [
            ("compile", "build", "completed"),
            ("t000", "ship", "pending"),
        ]
        build = view["phases"][0]
        assert (build["id"], build["completed"], build["total"]) == ("build", 1, 1)
        assert view["gates"][0]["approvers"] == ["alice"]
        assert view["agents"][0]["name"] == "dev" and not view["agents"][0]["remote"]
        assert view["conflicts"] == []
        code, alerts, _ = call(base, "/api/alerts", viewer)
        assert code == 200 and isinstance(alerts["alerts"], list)
        names = [(a["name"], a["severity"]) for a in alerts["alerts"]]
        assert names == [(a["name"], a["severity"]) for a in view["alerts"]]

        code, doc, _ = call(base, "/openapi.json", viewer)
        assert code == 200 and doc["openapi"].startswith("3.")
        for path, method in (
            ("/api/snapshot", "get"),
            ("/api/alerts", "get"),
            ("/api/whoami", "get"),
            ("/api/gates/{gate}/approve", "post"),
            ("/api/gates/{gate}/reject", "post"),
            ("/api/agents/{agent}/state", "post"),
            ("/api/conflicts/{conflict}/resolve", "post"),
            ("/api/cancel", "post"),
            ("/api/run", "get"),
            ("/metrics", "get"),
        ):
            operation = doc["paths"][path][method]
            assert operation["summary"] and operation["responses"], (path, operation)
        assert "403" in doc["paths"]["/api/gates/{gate}/approve"]["post"]["responses"]
        assert call(base, "/api/gates/build.exit/approve", alice, {})[0] == 202
        assert run.wait(timeout=30).code == 0
    finally:
        run.stop()


def test_the_live_feed_sends_a_snapshot_then_only_what_changed(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    gated(ws, tasks_after=300)
    run, base, alice = served(ws, "alice")
    feed = base.replace("http://", "ws://") + "/api/live"
    try:
        with pytest.raises(InvalidStatus) as refused_page:  # a page of another site
            connect(feed, origin=Origin("http://elsewhere.example"), open_timeout=10)
        assert refused_page.value.response.status_code == 403
        with pytest.raises(InvalidStatus) as no_token:
            connect(feed, open_timeout=10)
        assert no_token.value.response.status_code == 401
        auth = {"Authorization": f"Bearer {alice}"}
        with connect(feed, open_timeout=10, additional_headers=auth) as live:
            first = json.loads(live.recv(timeout=10))
            assert first["type"] == "snapshot"
            assert len(first["tasks"]) == 301 and first["run"]["plan"] == "test-plan"
            updates = []
            gate = first["gates"][0]["status"]
            while gate != "waiting":
                update = json.loads(live.recv(timeout=10))
                updates.append(update)
                gate = update.get("gates", [{"status": gate}])[0]["status"]
            changed = {row["id"] for u in updates for row in u.get("tasks", [])}
            assert changed <= {"compile"}, changed  # the 300 waiting tasks are not resent
            assert all(u["type"] == "update" for u in updates)

            assert call(base, "/api/gates/build.exit/approve", alice, {})[0] == 202
            try:
                while True:
                    updates.append(json.loads(live.recv(timeout=30)))
            except ConnectionClosed as closed:  # the run ended: the server closes the feed
                assert closed.rcvd is not None and closed.rcvd.code == 4000, closed
        runs = [u["run"] for u in updates if "run" in u]
        assert (runs[-1]["status"], runs[-1]["exit_code"]) == ("completed", 0)
        done = {row["id"] for u in updates for row in u.get("tasks", [])}
        assert len(done) == 301
        result = run.wait(timeout=30)
    finally:
        run.stop()
    assert result.code == 0, str(result)


def test_a_resumed_run_shows_what_earlier_processes_did(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    gated(ws)
    run, base, alice = served(ws, "alice")
    try:
        wait_for(lambda: gate_status(base, alice) == "waiting", what="the gate to wait")
        before = call(base, "/api/snapshot", alice)[1]["tasks"][0]
        assert call(base, "/api/cancel", alice, {})[0] == 202
        assert run.wait(timeout=30).code == 3
    finally:
        run.stop()
    serve = Background(ws.dir, "serve", "--state", ws.state, "--port", "0", "--json")
    try:
        base = wait_for(lambda: listening(serve), what="the resumed run to listen")
        wait_for(lambda: gate_status(base, alice) == "waiting", what="the gate to wait again")
        view = call(base, "/api/snapshot", alice)[1]
        compiled = view["tasks"][0]
        assert (compiled["state"], compiled["agent"]) == ("completed", "dev")
        assert compiled["started"] == before["started"]
        assert compiled["ended"] == pytest.approx(before["ended"], abs=0.1)
        assert compiled["ended"] >= compiled["started"]
        assert call(base, "/api/gates/build.exit/approve", alice, {})[0] == 202
        assert serve.wait(timeout=30).code == 0
    finally:
        serve.stop()


def listening(process: Background) -> str | None:
    for line in process.out_path.read_text().splitlines():
        event = json.loads(line)
        if event["event"] == "hub_listening":
            return str(event["url"]).replace("ws://", "http://")
    return None
