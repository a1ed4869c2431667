"""Real things for the browser tests: the system Chromium driven by Playwright, and the dashboard under uvicorn.

Playwright never downloads a browser here: it drives /usr/bin/chromium (`apt-get install chromium`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright

from clickwatch.dashboard.main import create_app
from clickwatch.dashboard.settings import DashboardSettings
from clickwatch.standin.shopper import CHROMIUM_ARGS
from tests.integration.conftest import free_port, wait_until

CHROMIUM = Path("/usr/bin/chromium")


@dataclass
class Dashboard:
    """The dashboard served by a real uvicorn on a loopback port."""

    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@contextlib.contextmanager
def serve_dashboard(db: Path, **settings: Any) -> Iterator[Dashboard]:
    """Serve `create_app` for the store at `db` in a background thread; stop it on exit."""
    port = free_port()
    app = create_app(DashboardSettings(db=str(db), dashboard_port=port, poll_seconds=0.1, **settings))
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="off", timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="dashboard-uvicorn", daemon=True)
    thread.start()
    dashboard = Dashboard(f"http://127.0.0.1:{port}", server, thread)
    try:
        wait_until(lambda: server.started, 10.0, "the dashboard to listen")
        yield dashboard
    finally:
        # Open SSE responses would hold a graceful shutdown: the browser has closed them by now.
        dashboard.stop()


def wait_for_store(dashboard: Dashboard, timeout: float = 10.0) -> None:
    """Wait until the dashboard can read the store (the proxy creates it when it starts)."""

    def readable() -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{dashboard.url}/healthz", timeout=2.0, trust_env=False).status_code == 200
        return False

    wait_until(readable, timeout, "the dashboard to read the store")


@pytest.fixture(scope="session")
def chromium(playwright_driver: Playwright) -> Iterator[Browser]:
    """Headless system Chromium; a missing browser is a failure, not a skip."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found: the browser tests need the system Chromium (apt-get install chromium)")
    browser = playwright_driver.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
    try:
        yield browser
    finally:
        browser.close()


@dataclass
class WatchedPage:
    """A browser tab that records script errors and console errors (CSP violations among them)."""

    page: Page
    page_errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        return self.page_errors + self.console_errors


@pytest.fixture
def tab(chromium: Browser) -> Iterator[WatchedPage]:
    """A fresh browser context and page; every console error and uncaught exception is kept."""
    context = chromium.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    watched = WatchedPage(page)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            watched.console_errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: watched.page_errors.append(str(error)))
    try:
        yield watched
    finally:
        context.close()


def settle(seconds: float = 0.3) -> None:
    """Give the page a moment to run whatever a hostile value might have triggered."""
    time.sleep(seconds)
