"""Fixtures of the browser tests: Debian's Chromium, headless, driven by Playwright, and
served runs (``counterpoint run --serve``) for it to look at.

Playwright drives the system's ``/usr/bin/chromium`` (``make test`` installs it); it never
downloads a browser of its own. Without Chromium or Playwright the tests are skipped on a
developer's machine and fail in CI (``CI`` set), so a missing install step cannot pass
unnoticed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))  # run_helpers

CHROMIUM = Path(os.environ.get("COUNTERPOINT_CHROMIUM", "/usr/bin/chromium"))
#: Without the background-networking switches Chromium hangs on an offline machine.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 1000}
#: How long a page expectation waits (Playwright's default is 5 s; runs on a loaded CI
#: machine can take longer).
EXPECT_TIMEOUT_MS = 15_000


def _unavailable(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{why}; `make test` installs it")
    pytest.skip(why)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium per test module."""
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[browser]')")
        raise
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing (apt-get install chromium)")
    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page (its own cookies and storage); fails the test on a script error."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(EXPECT_TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"the page raised: {errors}"
