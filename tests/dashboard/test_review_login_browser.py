"""Review item (e), in a real headless Chromium: the login form's POST carries the dashboard's real Origin.

With Referrer-Policy: no-referrer a browser sends `Origin: null` even on a same-origin form POST (the Fetch
standard's rule, which Chromium and Safari follow); Safari before 16.4 sends no Sec-Fetch-Site either, so the
cross-origin guard refused its login. Pages now send same-origin: the Origin is the dashboard's own.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Request

from tests.dashboard.browser_fixtures import WatchedPage, chromium, serve_dashboard, tab
from tests.dashboard.conftest import T0, StoreBuilder

__all__ = ["chromium", "tab"]

pytestmark = pytest.mark.integration

TOKEN = "browser-review-token"


def test_the_login_form_posts_with_the_dashboards_own_origin(
    store_builder: Callable[..., StoreBuilder], tab: WatchedPage
) -> None:
    store = store_builder()
    store.event(at=T0 + 1)
    store.close()
    with serve_dashboard(Path(store.path), token=TOKEN, listen_host="0.0.0.0") as dashboard:
        posts: list[dict[str, str]] = []

        def seen(request: Request) -> None:
            if request.method == "POST" and request.url.endswith("/login"):
                posts.append(request.all_headers())

        page = tab.page
        page.on("request", seen)
        page.goto(f"{dashboard.url}/login")
        page.fill("input[name=token]", TOKEN)
        page.click("button[type=submit]")
        page.wait_for_url(f"{dashboard.url}/")
        [headers] = posts
        assert headers.get("origin") == dashboard.url  # not "null"
        assert headers.get("referer", "").startswith(f"{dashboard.url}/login")
