"""The live page in a real headless Chromium takes its summary and funnel from the stream, not from polling."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest
from playwright.sync_api import Request, expect

from clickwatch.store import wire
from tests.dashboard.browser_fixtures import WatchedPage, chromium, serve_dashboard, settle, tab, wait_for_store
from tests.dashboard.conftest import T0, StoreBuilder

# Fixtures used by name below: imported so pytest finds them here.
__all__ = ["chromium", "tab"]

pytestmark = pytest.mark.integration


@pytest.fixture
def store(store_builder: Callable[..., StoreBuilder]) -> Iterator[StoreBuilder]:
    builder = store_builder()
    builder.event(at=T0, schema="ProductView")
    yield builder
    builder.close()


def test_the_banner_and_funnel_follow_the_stream_without_asking_the_api(store: StoreBuilder, tab: WatchedPage) -> None:
    page = tab.page
    asked: list[str] = []

    def on_request(request: Request) -> None:
        if "/api/summary" in request.url or "/api/funnel" in request.url:
            asked.append(request.url)

    page.on("request", on_request)
    with serve_dashboard(store.path) as dashboard:
        wait_for_store(dashboard)
        page.goto(dashboard.url + "/")
        expect(page.locator("#conn")).to_have_text("live", timeout=5000)
        expect(page.locator('[data-count="delivered"]')).to_have_text("1")
        page.evaluate("window.__marker = 'still the same document'")
        # The stream's first summary and funnel come within a read of the feed (0.1 s here); from then on, the page
        # stops asking for them.
        settle(2.0)
        for n in range(3):
            store.event(at=T0 + 1 + n, status=201 if n else 400, schema="KeywordSearch")
        store.push("ProductDetailsPageViewed", {"productSku": "1"}, at=T0 + 5, consent=True)

        expect(page.locator("#rows tr")).to_have_count(4, timeout=10000)
        expect(page.locator('[data-count="delivered"]')).to_have_text("3", timeout=10000)
        expect(page.locator('[data-count="rejected"]')).to_have_text("1")
        expect(page.locator("#health-word")).to_have_text("Failing")
        funnel = page.locator("#funnel-rows")
        # A push brings no delivery and so no delivery event: the funnel still shows it, from the stream.
        expect(funnel.locator('tr[data-schema="ProductView"] [data-step="pushed"]')).to_have_text("1", timeout=10000)
        expect(funnel.locator('tr[data-schema="KeywordSearch"] [data-step="sent"]')).to_have_text("3")
        expect(funnel.locator('tr[data-schema="KeywordSearch"] [data-step="delivered"]')).to_have_text("2")
        assert page.evaluate("window.__marker") == "still the same document"
        assert asked == []
        page.close()
    assert tab.problems() == [], tab.problems()


def test_the_banner_turns_to_waiting_while_a_delivery_has_no_answer_and_back(
    store: StoreBuilder, tab: WatchedPage
) -> None:
    import time

    page = tab.page
    with serve_dashboard(store.path) as dashboard:
        wait_for_store(dashboard)
        page.goto(dashboard.url + "/")
        expect(page.locator("#conn")).to_have_text("live", timeout=5000)
        expect(page.locator("#health-word")).to_have_text("Healthy")
        expect(page.locator("#health-pending")).to_be_hidden()
        hanging = store.event(at=time.time() - 20, schema="ProductView", status=None)  # a tenant that hangs
        expect(page.locator("#health-word")).to_have_text("Waiting", timeout=10000)
        expect(page.locator("#health-pending")).to_have_text(
            re.compile(r"^1 without an answer, oldest sent \d+ s ago$")
        )
        store.writer.submit(
            wire.Answer(uid=hanging, kind="clickstream", sent_at=time.time() - 20, ended_at=time.time(),
                        status_code=201, fields=(), body=b"", error=None)
        )  # fmt: skip
        expect(page.locator("#health-word")).to_have_text("Healthy", timeout=10000)
        expect(page.locator("#health-pending")).to_be_hidden()
        page.close()
    assert tab.problems() == [], tab.problems()
