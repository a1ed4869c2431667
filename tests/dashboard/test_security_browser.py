"""Cross-origin writes in a real headless Chromium: a page on another 127.0.0.1 port cannot erase a run."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Response

from tests.dashboard.browser_fixtures import WatchedPage, chromium, serve_dashboard, tab
from tests.dashboard.conftest import T0, StoreBuilder
from tests.integration.conftest import wait_until

# Fixtures used by name below: imported so pytest finds them here.
__all__ = ["chromium", "tab"]

pytestmark = pytest.mark.integration

TOKEN = "browser-test-token"


class _Attacker(ThreadingHTTPServer):
    daemon_threads = True
    pages: dict[str, bytes]


class _AttackerHandler(BaseHTTPRequestHandler):
    server: _Attacker

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        body = self.server.pages.get(self.path, b"not here")
        self.send_response(200 if self.path in self.server.pages else 404)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def attacker() -> Iterator[Callable[[str, str], str]]:
    """A page server on another 127.0.0.1 port: add(path, html) returns the page's URL."""
    server = _Attacker(("127.0.0.1", 0), _AttackerHandler)
    server.pages = {}
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()

    def add(path: str, html: str) -> str:
        server.pages[path] = html.encode()
        return f"http://127.0.0.1:{server.server_address[1]}{path}"

    try:
        yield add
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def filled(store_builder: Callable[..., StoreBuilder]) -> StoreBuilder:
    store = store_builder()
    store.page(at=T0, consent="GIVEN")
    store.event(at=T0 + 1)
    store.event(at=T0 + 2)
    store.event(at=T0 + 3, run="other")
    store.close()
    return store


def _deliveries(url: str, **headers: str) -> int:
    answer = httpx.get(f"{url}/api/deliveries", headers=headers, timeout=5.0, trust_env=False)
    answer.raise_for_status()
    return len(answer.json()["items"])


def _reset_answers(tab: WatchedPage) -> list[int]:
    statuses: list[int] = []

    def seen(response: Response) -> None:
        if "/api/reset" in response.url:
            statuses.append(response.status)

    tab.page.on("response", seen)
    return statuses


@pytest.mark.parametrize("token", [None, TOKEN])
def test_a_page_on_another_port_cannot_reset(
    filled: StoreBuilder, tab: WatchedPage, attacker: Callable[[str, str], str], token: str | None
) -> None:
    settings: dict[str, Any] = {"token": token, "listen_host": "0.0.0.0"} if token else {}
    with serve_dashboard(Path(filled.path), **settings) as dashboard:
        auth = {"Authorization": f"Bearer {token}"} if token else {}
        assert _deliveries(dashboard.url, **auth) == 3
        page = tab.page
        if token:
            # Logged in: the SameSite=Strict cookie still goes along, as another port is the same site.
            page.goto(f"{dashboard.url}/login")
            page.fill("input[name=token]", token)
            page.click("button[type=submit]")
            page.wait_for_url(f"{dashboard.url}/")
        statuses = _reset_answers(tab)
        reset = f"{dashboard.url}/api/reset"
        fetching = attacker(
            "/fetch.html",
            f"""<!doctype html><title>start</title><script>
            fetch({reset!r}, {{method: "POST", mode: "no-cors", credentials: "include"}})
              .then(() => document.title = "sent", () => document.title = "failed");
            </script>""",
        )
        page.goto(fetching)
        page.wait_for_function("document.title !== 'start'")
        posting = attacker(
            "/form.html",
            f"""<!doctype html><form method="post" action="{reset}" id="f">
            <input name="x" value="1"></form><script>document.getElementById("f").submit()</script>""",
        )
        page.goto(posting)
        page.wait_for_url(reset)
        assert "cross-origin request refused" in page.content()
        wait_until(lambda: len(statuses) == 2, 5.0, "both cross-origin requests to reach the dashboard")
        assert statuses == [403, 403]
        assert _deliveries(dashboard.url, **auth) == 3  # nothing erased

        # The dashboard's own pages can still reset: same origin.
        page.goto(f"{dashboard.url}/")
        answer = page.evaluate("fetch('/api/reset?run=other', {method: 'POST'}).then(r => r.json())")
        assert answer == {"removed": 1, "run": "other"}
        assert _deliveries(dashboard.url, **auth) == 2
