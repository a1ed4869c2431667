"""The plugin in the job it was made for: a Playwright test on the system Chromium, browsing the stand-in
through `clickwatch.playwright_proxy`, asserting on the events the tag sent for its clicks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Playwright

from clickwatch.standin import shopper
from clickwatch.standin.server import StandIn
from clickwatch.testing.server import Server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def browser(playwright_driver: Playwright, clickwatch_server: Server, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Browser]:  # fmt: skip
    """Headless system Chromium trusting the proxy's CA (`clickwatch.ca_cert`) through its NSS database."""
    try:
        shopper.require_chromium()
        home = shopper.trusting_home(tmp_path_factory.mktemp("browser-home"), clickwatch_server.ca_cert)
    except shopper.ShopperError as exc:
        pytest.fail(str(exc))
    launched = shopper.launch(playwright_driver, Path(home))
    yield launched
    launched.close()


@pytest.mark.clickwatch(fail_on="rejected,failed,error,warning")
def test_a_shopper_who_accepts_tracking_sends_product_view_and_added_to_cart(clickwatch, browser, standin: StandIn):
    context = browser.new_context(proxy=clickwatch.playwright_proxy)  # type: ignore[arg-type]
    try:
        page = context.new_page()
        shopper.Shopper(page, standin.storefront_url("https"), settle_seconds=3.0).walk(
            ["home", "accept", "category", "product", "add-to-cart"]
        )
        [view] = clickwatch.expect("ProductView", within=10)
        [added] = clickwatch.expect("AddedToCart", within=10)
    finally:
        for open_page in context.pages:
            open_page.close()
        context.close()
    assert view["consent"] == added["consent"] == "given"
    assert view["status_code"] == added["status_code"] == 201
    assert [d["schema_name"] for d in clickwatch.deliveries(kind="clickstream")] == [
        "CategoryView", "ProductView", "AddedToCart",
    ]  # fmt: skip
    clickwatch.expect_no_findings(severity="warning", within=10)
