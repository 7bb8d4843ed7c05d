"""Take the dashboard's screenshots for the docs (run once by hand, not a test).

    .venv/bin/python tests/browser/screenshots.py [--out docs]

Runs a copy of the flagship example (examples/cloud-migration) served, its 49 planned
days compressed into about a minute (its escalation levels made long enough for a person
to answer at that pace), approves its first two gates as team_lead over the API, and
photographs the dashboard (headless Chromium) while the implementation phase runs beside
the planning phase's gate, which waits for a sign-off. Writes ``dashboard.png`` (as
operator team_lead) and ``dashboard-read-only.png`` (as a viewer) into ``--out``, then
cancels the run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from conftest import CHROMIUM, CHROMIUM_ARGS

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

import yaml  # noqa: E402
from run_helpers import EXAMPLE, Background, cli, wait_for  # noqa: E402

TIME_SCALE = "0.000012"  # 49 days in about 50 s
APPROVE = ("foundation.exit", "architecture.exit")


def post(base: str, path: str, token: str) -> None:
    request = urllib.request.Request(
        base + path, data=b"{}", method="POST", headers={"Authorization": f"Bearer {token}"}
    )
    urllib.request.urlopen(request, timeout=10).close()


def snapshot(base: str, token: str) -> dict[str, Any]:
    request = urllib.request.Request(
        base + "/api/snapshot", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())  # type: ignore[no-any-return]


def ready_for_photo(base: str, token: str, approved: set[str]) -> bool:
    """Approve the first gates as they wait; True once implementation is well under way
    while planning's gate waits."""
    view = snapshot(base, token)
    for gate in view["gates"]:
        if gate["gate"] in APPROVE and gate["status"] == "waiting" and gate["gate"] not in approved:
            post(base, f"/api/gates/{gate['gate']}/approve", token)
            approved.add(gate["gate"])
    phases = {p["id"]: p for p in view["phases"]}
    implementation = phases["implementation"]
    waiting = {g["gate"]: g["status"] for g in view["gates"]}.get("planning.exit") == "waiting"
    return waiting and implementation["completed"] >= 0.35 * implementation["total"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    out = parser.parse_args().out
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        example = _patient_copy(Path(tmp) / "example")
        state = Path(tmp) / "state"
        made = cli("token", "create", "team_lead", "--operator", "--state", state)
        token = made.stdout.strip()
        made = cli("token", "create", "visitor", "--viewer", "--state", state)
        viewer = made.stdout.strip()
        run = Background(
            Path(tmp),
            *("run", example, "--state", state, "--serve", "--port", "0", "--json"),
            *("--time-scale", TIME_SCALE),
        )
        try:
            base = wait_for(lambda: _url(run), what="the hub to listen")
            approved: set[str] = set()
            for gate in APPROVE:  # decided before the run reaches them
                post(base, f"/api/gates/{gate}/approve", token)
                approved.add(gate)
            wait_for(lambda: ready_for_photo(base, token, approved), timeout=120, interval=0.2)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
                )
                _photo(browser, f"{base}/#token={token}", out / "dashboard.png", "operator")
                _photo(
                    browser, f"{base}/#token={viewer}", out / "dashboard-read-only.png", "viewer"
                )
                browser.close()
            post(base, "/api/cancel", token)
            run.wait(timeout=30)
        finally:
            run.stop()


def _patient_copy(folder: Path) -> Path:
    """The example, its escalation levels 2000 h long (40 s at the time scale)."""
    shutil.copytree(EXAMPLE.parent, folder, ignore=shutil.ignore_patterns(".counterpoint"))
    plan = yaml.safe_load((folder / "plan.yaml").read_text())
    plan["escalation"]["timeout"] = "2000h"
    for level in plan["escalation"]["levels"]:
        level["timeout"] = "2000h"
    (folder / "plan.yaml").write_text(yaml.safe_dump(plan, sort_keys=False))
    return folder / "plan.yaml"


def _url(run: Background) -> str | None:
    for line in run.out_path.read_text().splitlines():
        event = json.loads(line)
        if event["event"] == "hub_listening":
            return str(event["url"]).replace("ws://", "http://")
    return None


def _photo(browser: Any, url: str, path: Path, who: str) -> None:
    page = browser.new_page(viewport={"width": 1440, "height": 1000}, device_scale_factor=1)
    page.goto(url)
    page.wait_for_selector("#connection.c-live")
    page.wait_for_function(f"document.getElementById('who').textContent.startsWith('{who}')")
    page.wait_for_selector("#gantt svg")
    time.sleep(1.0)  # let a second of live updates land, so the bars have grown
    page.screenshot(path=str(path), full_page=True)
    page.close()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
