"""A real headless Chromium on the real dashboard, fed by the real proxy: rows arrive live, hostile values stay text."""

from __future__ import annotations

import contextlib
import json
import threading

import httpx
import pytest
from playwright.sync_api import expect

from tests.dashboard.browser_fixtures import (
    WatchedPage,
    chromium,
    serve_dashboard,
    settle,
    tab,
    wait_for_store,
)
from tests.integration.conftest import Proxy, Upstream, proxy, proxy_factory, upstream, wait_until

# Fixtures used by name below: imported so pytest finds them here.
__all__ = ["chromium", "proxy", "proxy_factory", "tab", "upstream"]

pytestmark = pytest.mark.integration

CLICKSTREAM = "/s201/edge/clickstreamEvents"
HANGING = "/hang/edge/clickstreamEvents"
HEADERS = {
    "hybris-schema": "context/commerce/ProductView",
    "consent-reference": "cr-browser-test",
    "Origin": "https://shop.example",
    "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) clickwatch-browser-test",
}
SCRIPT_PAYLOAD = "<script>window.__xss=1</script>"
IMG_PAYLOAD = '<img src=x onerror="window.__xss=2">'
SCHEMA_PAYLOAD = '<img src=x onerror="window.__xss=3">'


def _post_quietly(proxy: Proxy, url: str) -> None:
    """A tracking POST whose upstream never answers: the proxy reports an error to the client."""
    with contextlib.suppress(httpx.HTTPError), proxy.client(timeout=20.0) as client:
        client.post(url, json={"productSku": "2"}, headers=HEADERS)


def _csp_violations(tab: WatchedPage) -> list[str]:
    return [m for m in tab.problems() if "Content Security Policy" in m or "Content-Security-Policy" in m]


def test_a_delivery_through_the_proxy_appears_live_without_a_reload(
    proxy: Proxy, upstream: Upstream, tab: WatchedPage
) -> None:
    page = tab.page
    with serve_dashboard(proxy.db_path) as dashboard:
        wait_for_store(dashboard)
        page.goto(dashboard.url + "/")
        expect(page.locator("#conn")).to_have_text("live", timeout=5000)
        expect(page.locator("#rows tr")).to_have_count(0)
        page.evaluate("window.__marker = 'still the same document'")

        with proxy.client() as client:
            answer = client.post(upstream.url(CLICKSTREAM), json={"productSku": "300938"}, headers=HEADERS)
        assert answer.status_code == 201

        row = page.locator("#rows tr").first
        expect(row.locator(".verdict")).to_have_text("delivered", timeout=8000)
        expect(row.locator(".verdict")).to_have_class("verdict verdict-delivered")
        expect(row.locator(".col-schema")).to_have_text("ProductView")
        expect(row.locator(".col-status")).to_have_text("201")
        expect(page.locator("#rows tr")).to_have_count(1)
        # The banner follows without a reload too.
        expect(page.locator('#health [data-count="delivered"]')).to_have_text("1", timeout=5000)
        expect(page.locator("#health-word")).to_have_text("Healthy")
        assert page.evaluate("window.__marker") == "still the same document"

        # A call that is still waiting shows as pending, and its row changes in place when it ends.
        hanging = threading.Thread(target=_post_quietly, args=(proxy, upstream.url(HANGING)), daemon=True)
        hanging.start()
        expect(page.locator("#rows tr")).to_have_count(2, timeout=8000)
        expect(row.locator(".verdict")).to_have_text("pending", timeout=8000)
        pending_id = row.get_attribute("data-id")
        upstream.server.release.set()
        hanging.join(15)
        expect(row.locator(".verdict")).to_have_text("failed", timeout=8000)
        expect(page.locator("#rows tr")).to_have_count(2)
        assert row.get_attribute("data-id") == pending_id
        expect(page.locator("#health-word")).to_have_text("Failing", timeout=5000)
        assert page.evaluate("window.__marker") == "still the same document"

        # A row links to the detail page of its delivery.
        page.locator("#rows tr").last.locator(".col-time a").click()
        expect(page.locator("h1")).to_have_text("ProductView")
        expect(page.locator(".request-line")).to_contain_text(CLICKSTREAM)
        expect(page.locator(".detail-title .verdict")).to_have_text("delivered")
        page.close()
    assert tab.problems() == [], tab.problems()


def test_hostile_captured_values_are_shown_as_text_and_never_run(
    proxy: Proxy, upstream: Upstream, tab: WatchedPage
) -> None:
    page = tab.page
    hostile_headers = {**HEADERS, "User-Agent": f"evil {SCRIPT_PAYLOAD}{IMG_PAYLOAD}", "hybris-schema": SCHEMA_PAYLOAD}
    body = {"productSku": "1", "productName": SCRIPT_PAYLOAD + IMG_PAYLOAD}
    with serve_dashboard(proxy.db_path) as dashboard:
        wait_for_store(dashboard)
        with proxy.client() as client:
            # One captured before the page opens (rendered by the server) ...
            assert client.post(upstream.url(CLICKSTREAM), json=body, headers=hostile_headers).status_code == 201
            wait_until(lambda: len(proxy.deliveries()) == 1, 10.0, "the first hostile delivery to be stored")
            page.goto(dashboard.url + "/")
            expect(page.locator("#conn")).to_have_text("live", timeout=5000)
            # ... and one while it is open (built by the page's script from the stream).
            assert client.post(upstream.url(CLICKSTREAM), json=body, headers=hostile_headers).status_code == 201

        expect(page.locator("#rows tr")).to_have_count(2, timeout=8000)
        expect(page.locator("#rows tr .col-schema")).to_have_text([SCHEMA_PAYLOAD, SCHEMA_PAYLOAD])
        expect(page.locator("#rows tr").first.locator(".badge")).to_contain_text(["unknown_schema"])
        settle()
        assert page.evaluate("typeof window.__xss") == "undefined"
        assert page.locator("#rows img, #rows script").count() == 0

        page.locator("#rows tr").first.locator(".col-time a").click()
        expect(page.locator("pre.code").first).to_contain_text(json.dumps(SCRIPT_PAYLOAD + IMG_PAYLOAD))
        expect(page.get_by_text(f"evil {SCRIPT_PAYLOAD}{IMG_PAYLOAD}", exact=True)).to_have_count(2)  # UA row, header
        expect(page.locator("h1")).to_have_text(SCHEMA_PAYLOAD)
        settle()
        assert page.evaluate("typeof window.__xss") == "undefined"
        assert page.locator("main img, main script").count() == 0
        page.close()
    assert _csp_violations(tab) == []
    assert tab.problems() == [], tab.problems()
