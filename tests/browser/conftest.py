"""Browser tests: Debian's Chromium driven by Python Playwright (never `playwright install`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from workbench.servers import CHROMIUM, CHROMIUM_ARGS

ROOT = Path(__file__).resolve().parents[2]
# screenshots of the last run (ignored by git); `make screenshots` points this at docs/images for the README
ARTIFACTS = Path(os.environ.get("WORKBENCH_SCREENSHOTS", ROOT / "bench" / "out" / "browser"))


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install-system-deps.sh (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_ARGS))
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    pg = context.new_page()
    pg.console_errors = []
    pg.on("console", lambda m: pg.console_errors.append(m.text) if m.type == "error" else None)
    yield pg
    context.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


def pytest_configure(config):
    os.environ.setdefault("PLAYWRIGHT_BROWSERS_PATH", "0")
