"""Real shoppers in a real Chromium, through the clickwatch proxy, on the stand-in: what clickwatch makes of it."""

from __future__ import annotations

import json
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Error, expect, sync_playwright

from clickwatch.standin import catalog, shopper
from clickwatch.standin.server import CONFIG_ID, CONSENT_PATH, TAG_PATH
from tests.e2e.conftest import GRACE_SECONDS, Clickwatch, Visit, metric_delta, settled

pytestmark = pytest.mark.integration

FULL_VISIT = ("home", "product", "accept", "category", "product", "add-to-cart", "search", "cart")
SCHEMAS_AFTER_CONSENT = ["CategoryView", "ProductView", "AddedToCart", "KeywordSearch", "CartSnapshot"]


def _step_time(walker: shopper.Shopper, name: str) -> float:
    return next(at for step, at in walker.steps if step == name)


def _clickstream(deliveries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in deliveries if d["kind"] == "clickstream"]


def _healthy_check(clickwatch: Clickwatch, run: str, *expect: str) -> None:
    args = [a for schema in expect for a in ("--expect", schema)]
    result = clickwatch.check(run, *args, "--fail-on", "rejected,failed,error,warning")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "HEALTHY" in result.stdout


@pytest.mark.parametrize("spartacus", [False, True], ids=["accelerator", "spartacus"])
def test_happy_path_tracks_only_after_consent_with_one_reference_and_clean_events(
    clickwatch: Clickwatch, visit: Visit, make_standin: Any, spartacus: bool
) -> None:
    standin = make_standin(spartacus=spartacus)
    before = clickwatch.metrics()
    walker = visit.shopper(standin).walk(FULL_VISIT)
    visit.close()
    summary = settled(clickwatch, visit.run)

    deliveries = clickwatch.deliveries(visit.run)
    accepted_at = _step_time(walker, "accept")
    tracking = [d for d in deliveries if d["kind"] in ("clickstream", "consent_reference")]
    # No tracking before consent: the product viewed before the banner was answered was not sent.
    assert tracking and all(d["sent_at"] > accepted_at for d in tracking)
    references = [d for d in deliveries if d["kind"] == "consent_reference"]
    assert len(references) == 1
    assert (references[0]["verdict"], references[0]["status_code"]) == ("delivered", 201)
    reference = json.loads(clickwatch.detail(references[0]["id"])["response"]["body"]["text"])["id"]
    events = _clickstream(deliveries)
    assert [d["schema_name"] for d in events] == SCHEMAS_AFTER_CONSENT
    assert all(d["verdict"] == "delivered" and d["status_code"] == 201 for d in events)
    assert all(d["consent"] == "given" for d in tracking)
    # Every event carries the reference the tenant handed out.
    assert {d["consent_reference"] for d in events} == {reference}
    # The bodies carry what the storefront pushed, and the tenant got exactly what clickwatch recorded.
    bodies = [clickwatch.body(d["id"]) for d in events]
    category = catalog.category(bodies[0]["productCategory"])
    assert category is not None and bodies[0] == {
        "productCategory": category.code,
        "productCategoryName": category.name,
    }
    product = catalog.in_category(category.code)[0]  # the first product the category page lists
    assert bodies[1] == {
        "productSku": product.sku, "productName": product.name, "productPrice": product.price,
        "productCategory": category.code, "productCategoryName": category.name, "categories": [category.code],
    }  # fmt: skip
    assert (bodies[2]["productSku"], bodies[2]["productQty"], bodies[2]["cartCode"]) == (
        product.sku,
        1,
        bodies[4]["cart"]["code"],
    )
    assert bodies[3] == {"searchTerm": "camera", "numResults": len(catalog.search("camera"))}
    assert [(e["sku"], e["quantity"]) for e in bodies[4]["cart"]["entries"]] == [(product.sku, 1)]
    assert [r.json() for r in standin.received("/edge/clickstreamEvents")] == bodies
    assert [r.headers["hybris-schema"] for r in standin.received("/edge/clickstreamEvents")] == [
        f"context/commerce/{s}" for s in SCHEMAS_AFTER_CONSENT
    ]
    # The browser really asked CORS permission, and the tag's script and configuration loads were captured.
    preflights = [d for d in deliveries if d["kind"] == "preflight"]
    assert {d["target_kind"] for d in preflights} == {"clickstream", "consent_reference"}
    assert all(d["verdict"] == "delivered" for d in preflights)
    tag_loads = {urlsplit(d["url"]).path for d in deliveries if d["kind"] == "tag"}
    assert tag_loads == {TAG_PATH, f"/config/{CONFIG_ID}"}
    assert urlsplit(references[0]["url"]).path == CONSENT_PATH

    assert summary["healthy"] is True
    assert summary["deliveries"]["rejected"] == summary["deliveries"]["failed"] == 0
    assert clickwatch.finding_kinds(visit.run) == {}
    after = clickwatch.metrics()
    for schema in SCHEMAS_AFTER_CONSENT:
        assert metric_delta(before, after, "clickwatch_events_total", schema=schema, verdict="delivered") == 1
    assert metric_delta(before, after, "clickwatch_findings_total") == 0
    assert metric_delta(before, after, "clickwatch_deliveries_total", verdict="rejected") == 0
    _healthy_check(clickwatch, visit.run, *SCHEMAS_AFTER_CONSENT)
    assert visit.problems == []


def test_plain_http_storefront_and_tenant_are_watched_too(
    clickwatch: Clickwatch, visit: Visit, make_standin: Any
) -> None:
    standin = make_standin()
    visit.shopper(standin, scheme="http").walk(("home", "accept", "product"))
    visit.close()
    settled(clickwatch, visit.run)
    events = _clickstream(clickwatch.deliveries(visit.run))
    assert [(d["schema_name"], d["verdict"], d["consent"]) for d in events] == [("ProductView", "delivered", "given")]
    assert events[0]["url"].startswith("http://127.0.0.1:")
    assert clickwatch.finding_kinds(visit.run) == {}
    # The proxy's credential challenge (407) on plain HTTP leaves nothing behind in the default run.
    assert clickwatch.api("/api/visitors", run="default")["items"] == []


def test_without_the_proxy_ca_in_its_trust_store_chromium_refuses_the_https_storefront(
    clickwatch: Clickwatch, make_standin: Any, playwright_driver: Any, tmp_path: Any, system_tools: None
) -> None:
    # Proof that the suite does not ignore certificate errors: the same browser set-up with an empty NSS store.
    standin = make_standin()
    untrusting = shopper.launch(playwright_driver, tmp_path)
    try:
        context = shopper.visit(untrusting, clickwatch.proxy_url, "e2e-untrusted")
        with pytest.raises(Error, match="ERR_CERT_AUTHORITY_INVALID"):
            context.new_page().goto(standin.storefront_url())
        context.close()
    finally:
        untrusting.close()


@pytest.mark.parametrize("fault", [None, "track-before-consent"], ids=["tag-stops", "tag-keeps-tracking"])
def test_consent_withdrawn_mid_visit(
    clickwatch: Clickwatch, visit: Visit, make_standin: Any, fault: str | None
) -> None:
    standin = make_standin(*([fault] if fault else []))
    walker = visit.shopper(standin).walk(("home", "accept", "product", "withdraw", "search", "category"))
    visit.close()
    settled(clickwatch, visit.run)
    withdrawn_at = _step_time(walker, "withdraw")
    events = _clickstream(clickwatch.deliveries(visit.run))
    before = [d for d in events if d["sent_at"] < withdrawn_at]
    after = [d for d in events if d["sent_at"] > withdrawn_at]
    assert [(d["schema_name"], d["consent"]) for d in before] == [("ProductView", "given")]
    visitor = events[0]["visitor"]
    states = [e["state"] for e in clickwatch.api(f"/api/visitors/{visitor}", run=visit.run)["timeline"]
              if e["type"] == "consent"]  # fmt: skip
    assert "given" in states and "withdrawn" in states[states.index("given") :]
    if fault is None:
        # The tag cleared its reference and stopped: nothing after the withdrawal, and nothing to report.
        assert after == []
        assert clickwatch.finding_kinds(visit.run) == {}
        assert clickwatch.check(visit.run).returncode == 0
    else:
        # A tag that ignores the withdrawal: every later event is a consent violation, and only those.
        assert [d["schema_name"] for d in after] == ["KeywordSearch", "CategoryView"]
        # "absent" when the event falls between the server's `<site>-profile.consent.given=false` (read as absent)
        # and the next request carrying the withdrawn anonymous-consents cookie: either way, not given.
        assert all(d["consent"] in ("withdrawn", "absent") for d in after)
        assert all([f["kind"] for f in d["findings"]] == ["consent_violation"] for d in after)
        assert clickwatch.finding_kinds(visit.run) == {"consent_violation": 2}
        result = clickwatch.check(visit.run)
        assert result.returncode == 1
        assert "consent_violation" in result.stdout


@pytest.mark.parametrize(
    ("observer", "pause", "violations"),
    [(True, 0.3, 0), (True, GRACE_SECONDS + 1.0, 0), (False, 0.3, 0), (False, GRACE_SECONDS + 1.0, 2)],
    ids=[
        "observer-next-request-within-grace",
        "observer-next-request-after-grace",
        "network-next-request-within-grace",
        "network-next-request-after-grace",
    ],
)
def test_grace_window_first_event_before_the_next_storefront_request(
    request: pytest.FixtureRequest, make_standin: Any, observer: bool, pause: float, violations: int
) -> None:
    # Consent is given on a product page; the proxy's network view learns of it only from the next storefront
    # request (the cookie). Meanwhile the tag obtains its reference and a client-side component's event is tracked.
    clickwatch: Clickwatch = request.getfixturevalue("clickwatch" if observer else "clickwatch_network")
    visit: Visit = request.getfixturevalue("visit" if observer else "network_visit")
    standin = make_standin()
    walker = visit.shopper(standin).walk(("home", "product", "accept"))
    visit.page.evaluate(
        "Y_TRACKING.eventLayer.push({name: 'KeywordSearch', data: {searchTerm: 'tripod', numResults: 0}})"
    )
    walker.settle()
    time.sleep(pause)
    walker.search("camera")  # the next storefront request, carrying the consent cookie
    visit.close()
    settled(clickwatch, visit.run)
    deliveries = clickwatch.deliveries(visit.run)
    early = [d for d in deliveries if d["kind"] in ("consent_reference", "clickstream")][:2]
    assert [d["kind"] for d in early] == ["consent_reference", "clickstream"]
    assert clickwatch.body(early[1]["id"])["searchTerm"] == "tripod"
    if violations == 0:
        # With the observer the data layer says when consent was given: no window to guess with.
        assert [d["consent"] for d in early] == ["given", "given"]
        assert clickwatch.finding_kinds(visit.run) == {}
    else:
        # Past the window the network view cannot tell, and says so: the calls count as sent without consent.
        assert all([f["kind"] for f in d["findings"]] == ["consent_violation"] for d in early)
        assert clickwatch.finding_kinds(visit.run) == {"consent_violation": violations}
    later = _clickstream(deliveries)[1:]
    assert [(d["schema_name"], d["consent"], d["findings"]) for d in later] == [("KeywordSearch", "given", [])]


def _shop_in_own_browser(
    home: Any, proxy_url: str, storefront: Any, run: str, search: str, barrier: threading.Barrier, errors: list[str]
) -> None:
    try:
        with sync_playwright() as driver:
            browser: Browser = shopper.launch(driver, home)
            try:
                context = shopper.visit(browser, proxy_url, run)
                walker = shopper.Shopper(context.new_page(), storefront.storefront_url())
                barrier.wait(30)
                walker.walk(("home", "accept", "product", "add-to-cart"))
                walker.search(search)
                context.close()
            finally:
                browser.close()
    except Exception as exc:  # reported by the test, in the main thread
        errors.append(f"{run}: {exc!r}")


def test_two_runs_in_parallel_through_one_proxy_stay_apart(
    clickwatch: Clickwatch, make_standin: Any, browser_home: Any
) -> None:
    healthy, failing = make_standin(), make_standin("status:503")
    runs = {"e2e-parallel-a": (healthy, "camera"), "e2e-parallel-b": (failing, "camcorder")}
    barrier = threading.Barrier(len(runs))
    errors: list[str] = []
    threads = [
        threading.Thread(
            target=_shop_in_own_browser,
            args=(browser_home, clickwatch.proxy_url, standin, run, text, barrier, errors),
        )
        for run, (standin, text) in runs.items()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert errors == []
    for run, (_, text) in runs.items():
        settled(clickwatch, run)
        events = _clickstream(clickwatch.deliveries(run))
        assert [d["schema_name"] for d in events] == ["ProductView", "AddedToCart", "KeywordSearch"]
        assert clickwatch.body(events[-1]["id"])["searchTerm"] == text
        assert len(clickwatch.deliveries(run, kind="consent_reference")) == 1
        assert len({d["visitor"] for d in events}) == 1
    # Same browser build, same address: only the run tells them apart, and it does.
    a, b = (clickwatch.deliveries(run) for run in runs)
    assert {d["visitor"] for d in a} == {d["visitor"] for d in b}
    assert {d["verdict"] for d in _clickstream(a)} == {"delivered"}
    assert {d["verdict"] for d in _clickstream(b)} == {"rejected"}
    assert clickwatch.summary("e2e-parallel-a")["healthy"] is True
    assert clickwatch.summary("e2e-parallel-b")["deliveries"]["rejected"] == 3
    assert clickwatch.check("e2e-parallel-a").returncode == 0
    assert clickwatch.check("e2e-parallel-b").returncode == 1


def test_the_live_page_shows_a_delivery_appearing(
    clickwatch: Clickwatch, visit: Visit, make_standin: Any, browser: Browser
) -> None:
    standin = make_standin()
    watcher = browser.new_context()  # no proxy: the dashboard is reached directly
    try:
        live = watcher.new_page()
        live.goto(f"{clickwatch.dashboard_url}/?run={visit.run}&kind=clickstream")
        expect(live.locator("#conn")).to_have_text("live", timeout=10000)
        expect(live.locator("#rows tr")).to_have_count(0)
        live.evaluate("window.__marker = 'same document'")

        visit.shopper(standin).walk(("home", "accept", "product"))

        row = live.locator("#rows tr").first
        expect(row.locator(".col-schema")).to_have_text("ProductView", timeout=10000)
        expect(row.locator(".verdict")).to_have_text("delivered", timeout=10000)
        expect(row.locator(".col-status")).to_have_text("201")
        expect(live.locator('#health [data-count="delivered"]')).to_have_text("1", timeout=10000)
        assert live.evaluate("window.__marker") == "same document"
    finally:
        watcher.close()
