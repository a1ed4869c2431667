"""The system Chromium, straight at the stand-in (no proxy): the stand-in's own behaviour in a real browser."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from playwright.sync_api import Browser, Page, Playwright, Request

from clickwatch.standin import shopper
from clickwatch.standin.faults import Faults
from clickwatch.standin.server import StandIn


@pytest.fixture(scope="session")
def chromium(playwright_driver: Playwright) -> Iterator[Browser]:
    """Headless /usr/bin/chromium; proxy variables are dropped so it talks to loopback directly."""
    shopper.require_chromium()
    env: dict[str, str | float | bool] = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    browser = playwright_driver.chromium.launch(
        executable_path=str(shopper.CHROMIUM), headless=True, args=shopper.CHROMIUM_ARGS, env=env
    )
    try:
        yield browser
    finally:
        browser.close()


@dataclass
class Tab:
    """One fresh browser profile on one stand-in: its page, every request it made, and every error it met."""

    standin: StandIn
    page: Page
    requests: list[Request] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def shopper(self) -> shopper.Shopper:
        return shopper.Shopper(self.page, self.standin.storefront_url("http"))

    def layer(self) -> list[str]:
        """The names pushed to the data layer on the current document, in order."""
        names: list[str] = self.page.evaluate("() => window.Y_TRACKING.eventLayer.map(e => e.name)")
        return names

    def state(self) -> dict[str, Any]:
        """window.standinStorefront."""
        result: dict[str, Any] = self.page.evaluate("() => ({...window.standinStorefront})")
        return result

    def tag_storage(self) -> Any:
        """The tag's localStorage entry `profiletag`, parsed (None: absent)."""
        return json.loads(self.page.evaluate("() => localStorage.getItem('profiletag') || 'null'"))

    def reference_cookie(self) -> str | None:
        cookies = self.page.context.cookies()
        return next((c["value"] for c in cookies if c["name"] == "electronics-consentReference"), None)

    def requests_since(self, count: int) -> list[str]:
        """'METHOD host/path' of the requests after the first `count`."""
        return [f"{r.method} {urlsplit(r.url).hostname}{urlsplit(r.url).path}" for r in self.requests[count:]]


@pytest.fixture
def tab(chromium: Browser) -> Iterator[Callable[..., Tab]]:
    """Open a stand-in (its options as keyword arguments, faults by name) and a fresh browser profile on it."""
    opened: list[tuple[StandIn, Any]] = []

    def open_tab(*faults: str, **options: Any) -> Tab:
        standin = StandIn(faults=Faults.parse(faults), **options).start()
        context = chromium.new_context(viewport={"width": 1280, "height": 800})
        opened.append((standin, context))
        result = Tab(standin, context.new_page())
        result.page.on("request", lambda request: result.requests.append(request))
        result.page.on("pageerror", lambda error: result.errors.append(f"pageerror: {error}"))
        result.page.on(
            "console", lambda message: result.errors.append(message.text) if message.type == "error" else None
        )
        return result

    yield open_tab
    for standin, context in opened:
        context.close()
        standin.stop()


def anonymous_consent(header: str) -> str | None:
    """The PROFILE state an X-Anonymous-Consents header says."""
    states = [c.get("consentState") for c in json.loads(unquote(header)) if c.get("templateCode") == "PROFILE"]
    return states[0] if states else None
