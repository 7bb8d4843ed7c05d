"""The live dashboard in a real browser: headless Chromium looks at a served run.

Each test starts ``counterpoint run PLAN --serve`` in the background (run_helpers.served)
and opens its dashboard. What a test asserts is what a person sees on the page (Playwright
waits for it), then what really happened to the run (its exit code, its journal).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from run_helpers import PY, Workspace, cli, journal, one_phase, plan, served, task

try:
    from playwright.sync_api import Page, expect
except ImportError:  # the browser fixture skips the tests (or fails them in CI)
    Page = Any  # type: ignore[assignment,misc]

STATE_AGENT = str(Path(__file__).resolve().parents[1] / "integration" / "agents" / "state_agent.py")
APPROVAL = {"kind": "approval", "approvers": ["alice"], "count": 1}


def agents(ws: Workspace, capacity: int = 2) -> dict[str, Any]:
    """``dev`` runs the recording agent; ``holder`` works until a file ``stop`` appears."""
    return {
        "dev": {"capacity": capacity, "runner": {"python": ws.agent}},
        "holder": {
            "capabilities": ["hold"],
            "capacity": 1,
            "runner": {"python": f"{ws.module}:work_sync"},
        },
    }


def held(tid: str, **fields: Any) -> dict[str, Any]:
    """A task that runs until the test creates the file ``stop`` (60 s at most)."""
    return task(tid, sleep=60, requires=["hold"], **fields)


def gated_plan(ws: Workspace) -> None:
    """Phase ``build`` ends with a gate only alice can approve; ``ship`` comes after."""
    ws.write_plan(
        plan(
            [
                {
                    "id": "build",
                    "milestones": [{"id": "code", "tasks": [task("compile", sleep=0.05)]}],
                    "exit_gate": {"conditions": [APPROVAL]},
                },
                {"id": "ship", "milestones": [{"id": "release", "tasks": [task("deploy")]}]},
            ],
            name="release-train",
            agents=agents(ws),
        )
    )


def row(page: Page, tid: str) -> Any:
    return page.locator(f'tr[data-task="{tid}"]')


def test_a_running_plan_updates_on_the_page_without_a_reload(page: Page, tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)
    ws.write_plan(
        one_phase(
            [held("hold"), task("after", needs=["hold"], sleep=0.05)],
            name="live-plan",
            agents=agents(ws),
        )
    )
    run, base, token = served(ws)
    try:
        page.goto(f"{base}/#token={token}")
        expect(page.get_by_role("heading", level=1)).to_contain_text("live-plan")
        expect(page.locator("#connection")).to_have_text("live")
        expect(row(page, "hold").locator(".state")).to_have_text("running")
        expect(row(page, "after").locator(".state")).to_have_text("pending")
        expect(page.locator('rect[data-task="hold"]')).to_have_count(1)  # its timeline bar
        page.evaluate("window.sameDocument = true")

        (ws.dir / "stop").touch()

        expect(row(page, "hold").locator(".state")).to_have_text("completed")
        expect(row(page, "after").locator(".state")).to_have_text("completed")
        expect(page.locator("#run-status")).to_have_text("completed (exit 0)")
        expect(page.locator("#stat-done")).to_have_text("2 / 2")
        expect(page.locator("#connection")).to_contain_text("run finished")
        assert page.evaluate("window.sameDocument") is True  # never reloaded
        result = run.wait(timeout=30)
    finally:
        run.stop()
    assert result.code == 0, str(result)


def test_an_operator_approves_a_gate_from_the_page_and_the_run_goes_to_the_end(
    page: Page, tmp_path: Path
) -> None:
    ws = Workspace.create(tmp_path)
    gated_plan(ws)
    run, base, token = served(ws, "alice")
    try:
        page.goto(base + "/")
        gate = page.locator('[data-gate="build.exit"]')
        expect(page.locator("#who")).to_have_text("signed out")
        expect(gate).to_have_count(0)  # nothing of the run before signing in

        page.get_by_label("Token").fill(token)
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("#who")).to_have_text("operator alice")
        expect(gate.locator(".badge")).to_have_text("waiting")
        page.get_by_label("Comment on build.exit").fill("looks good")
        page.get_by_role("button", name="Approve build.exit").click()

        expect(page.locator("#notice")).to_have_text("build.exit approved by alice")
        expect(gate.locator(".badge")).to_have_text("completed")
        expect(row(page, "deploy").locator(".state")).to_have_text("completed")
        expect(page.locator("#run-status")).to_have_text("completed (exit 0)")
        result = run.wait(timeout=30)
    finally:
        run.stop()
    assert result.code == 0, str(result)
    final = journal(ws, "gate_evaluated")[-1]
    assert final["status"] == "completed", final
    assert final["results"][0]["message"] == "approved by alice"


def test_a_visitor_sees_nothing_and_a_viewer_watches_without_controls(
    page: Page, tmp_path: Path
) -> None:
    ws = Workspace.create(tmp_path)
    gated_plan(ws)
    run, base, _ = served(ws, "alice")
    made = cli("token", "create", "vera", "--viewer", "--state", ws.state)
    assert made.code == 0, str(made)
    viewer = made.stdout.strip()
    gate = page.locator('[data-gate="build.exit"]')
    try:
        page.goto(base + "/")  # the public sign-in page: nothing of the run
        expect(page.locator("#who")).to_have_text("signed out")
        expect(page.locator("#signin-hint")).to_be_visible()
        expect(page.locator("#connection")).to_have_text("sign in to follow the run")
        expect(page.locator("#plan-name")).to_have_text("…")
        expect(gate).to_have_count(0)
        assert page.request.get(base + "/api/snapshot").status == 401
        answer = page.request.post(base + "/api/gates/build.exit/approve", data={})
        assert answer.status == 401
        assert "operator token is required" in answer.json()["error"]
        assert page.request.post(base + "/api/cancel").status == 401

        page.get_by_label("Token").fill("cpt_not-a-real-token")
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("#notice")).to_contain_text("not an operator or viewer token")
        expect(page.locator("#who")).to_have_text("signed out")

        page.get_by_label("Token").fill(viewer)
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("#who")).to_have_text("viewer vera")
        expect(gate.locator(".badge")).to_have_text("waiting")
        expect(page.locator('tr[data-agent="dev"]')).to_be_visible()
        expect(page.locator("#connection")).to_have_text("live")
        for name in ("Approve build.exit", "Reject build.exit", "Put dev in maintenance"):
            expect(page.get_by_role("button", name=name)).to_have_count(0)
        expect(page.get_by_role("button", name="Cancel run")).to_be_hidden()
        expect(gate.locator("input")).to_have_count(0)

        # the session is an HttpOnly, SameSite=Strict cookie the page's script cannot read
        assert page.evaluate("document.cookie") == ""
        (cookie,) = page.context.cookies()
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie
        assert viewer not in json.dumps(page.context.storage_state())
        snapshot = page.request.get(base + "/api/snapshot").json()  # the cookie goes along
        assert [g["status"] for g in snapshot["gates"]] == ["waiting"]
        answer = page.request.post(base + "/api/gates/build.exit/approve", data={})
        assert answer.status == 403 and "may only watch" in answer.json()["error"]

        page.get_by_role("button", name="Sign out").click()
        expect(page.locator("#who")).to_have_text("signed out")
        expect(gate).to_have_count(0)
        assert page.request.get(base + "/api/snapshot").status == 401
        assert run.running()
    finally:
        run.stop()
    assert journal(ws, "run_cancelling") == []


def test_an_operator_puts_an_agent_in_maintenance_and_cancels_the_run(
    page: Page, tmp_path: Path
) -> None:
    ws = Workspace.create(tmp_path)
    ws.write_plan(
        one_phase([task("first", sleep=30), task("second", sleep=30)], agents=agents(ws, 1))
    )
    run, base, token = served(ws, "carol")
    try:
        page.goto(f"{base}/#token={token}")
        expect(page.locator("#who")).to_have_text("operator carol")
        assert token not in page.url  # the token does not stay in the address
        assert token not in json.dumps(page.context.storage_state())  # nor in the browser
        assert token not in page.evaluate("JSON.stringify(history.state) + location.href")

        page.get_by_role("button", name="Put dev in maintenance").click()
        agent = page.locator('tr[data-agent="dev"]')
        expect(agent.locator(".badge")).to_have_text("maintenance")
        expect(page.locator("#notice")).to_have_text("dev is now maintenance")
        page.get_by_role("button", name="Make dev available").click()
        expect(agent.locator(".badge")).to_have_text("busy")

        page.get_by_role("button", name="Cancel run").click()
        page.get_by_role("dialog").get_by_role("button", name="Cancel the run").click()
        expect(page.locator("#run-status")).to_have_text("cancelled (exit 3)")
        result = run.wait(timeout=30)
    finally:
        run.stop()
    assert result.code == 3, str(result)
    assert [e["state"] for e in journal(ws, "agent_state")] == ["maintenance", "available"]
    assert journal(ws, "run_cancelling")[0]["reason"] == "cancelled by operator carol"


def test_an_operator_resolves_a_data_conflict_from_the_page(page: Page, tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path)

    def writer(tid: str, writes: dict[str, Any], sleep: float = 0.05, **fields: Any) -> Any:
        return {
            "id": tid,
            "inputs": {"writes": writes, "sleep": sleep},
            "writes": sorted(writes),
            **fields,
        }

    agent = {"st": {"capacity": 4, "runner": {"shell": [PY, STATE_AGENT]}}}
    ws.write_plan(
        one_phase(
            [
                writer("a", {"net.cidr": "10.1.0.0/16"}),
                writer("b", {"net.cidr": "10.2.0.0/16"}, sleep=0.4),
                writer("c", {}, needs=["a", "b"], reads=["net.cidr"]),
            ],
            agents=agent,
        )
    )
    run, base, token = served(ws, "dana")
    try:
        page.goto(f"{base}/#token={token}")
        conflict = page.locator('[data-conflict="1"]')
        expect(conflict).to_contain_text("net.cidr")
        expect(conflict).to_contain_text('"10.2.0.0/16"')
        page.get_by_label("or a value (JSON)").fill("10.9.0.0/16")
        page.get_by_role("button", name="Use this value for conflict 1").click()
        expect(page.locator("#notice")).to_contain_text("not valid JSON")

        page.get_by_role("button", name="Keep b's value for conflict 1").click()
        expect(page.locator("#conflicts")).to_have_text("No open conflicts.")
        expect(page.locator("#run-status")).to_have_text("completed (exit 0)")
        result = run.wait(timeout=30)
    finally:
        run.stop()
    assert result.code == 0, str(result)
    records = [json.loads(line) for line in (ws.dir / "records.jsonl").read_text().splitlines()]
    seen = next(r["state"] for r in records if r["task"] == "c" and r["event"] == "start")
    assert seen == {"net.cidr": "10.2.0.0/16"}
    assert re.search(r"dana", json.dumps(journal(ws, "conflict_resolved")))
