"""The stand-in storefront and its Profile Tag in a real Chromium, straight at the stand-in: consent in both
storefront styles, the consent reference on Commerce API and strategy calls, the merchandising carousel, a
signed-in shopper, the drop-event and stale-reference faults, and both Content-Security-Policy modes."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Route, expect

from clickwatch.standin import catalog
from clickwatch.standin.server import (
    CAROUSEL,
    CLICKSTREAM_PATH,
    CONSENT_PATH,
    MIX_CARD_ID,
    STRATEGY_ID,
    TOKEN_PATH,
    Received,
)
from tests.standin.conftest import Tab, anonymous_consent

pytestmark = pytest.mark.integration

OCC = "/occ/v2/electronics"
STRATEGY = f"/strategy/standin/strategies/{STRATEGY_ID}/products"
RECOMMENDED = [p.sku for p in catalog.RECOMMENDED]
STORAGE_KEY = "electronics-consentReference"
Opener = Callable[..., Tab]


def header(received: Received, name: str) -> str | None:
    """A request header, whatever its case on the wire."""
    return next((v for k, v in received.headers.items() if k.lower() == name.lower()), None)


def schemas(tab: Tab) -> list[str]:
    """The hybris-schema of every clickstream POST the tenant got, in order."""
    return [
        (header(r, "hybris-schema") or "").removeprefix("context/commerce/")
        for r in tab.standin.received(CLICKSTREAM_PATH)
    ]


def occ_calls(tab: Tab, prefix: str = "") -> list[Received]:
    return tab.standin.storefront_received(OCC + prefix)


def test_spartacus_consent_is_local_and_occ_calls_carry_the_reference_only_while_one_is_known(tab: Opener) -> None:
    t = tab(spartacus=True)
    t.page.add_init_script(
        "window.__references = [];"
        "addEventListener('profiletag_consentReferenceLoaded', e => __references.push(e.detail.consentReference));"
    )
    walker = t.shopper().walk(("home", "product"))
    # Spartacus' tracking service pushes no page events without consent, only "not granted" (never decided).
    assert t.layer() == ["ConsentChanged"]
    assert t.page.evaluate("() => Y_TRACKING.eventLayer[0].data") == {"granted": False}
    assert all(header(c, "x-consent-reference") is None for c in occ_calls(t))

    requests, calls = len(t.requests), len(occ_calls(t))
    walker.accept()
    # Giving consent is local: the only request is the tag's, for its consent reference.
    assert t.requests_since(requests) == [f"POST 127.0.0.1{CONSENT_PATH}"]
    assert len(occ_calls(t)) == calls
    reference = t.state()["consentReference"]
    assert reference and t.page.evaluate("() => Y_TRACKING.standin.reference()") == reference
    assert t.page.evaluate("() => window.__references") == [reference]
    assert t.tag_storage() == {"cr": {STORAGE_KEY: {"consentReference": reference}}}
    assert t.reference_cookie() == reference

    walker.category()
    category = occ_calls(t, "/products/search")[-1]
    assert header(category, "x-consent-reference") == reference
    assert anonymous_consent(header(category, "x-anonymous-consents") or "") == "GIVEN"
    assert header(category, "x-profile-tag-debug") == "false"
    assert schemas(t) == ["CategoryView"]

    requests, calls = len(t.requests), len(occ_calls(t))
    walker.withdraw()
    # Withdrawing is local too, and the tag stops: no request at all.
    assert t.requests_since(requests) == []
    assert len(occ_calls(t)) == calls
    assert t.state()["consentReference"] is None
    assert t.tag_storage() is None
    assert t.reference_cookie() is None

    walker.search()
    search = occ_calls(t, "/products/search")[-1]
    assert header(search, "x-consent-reference") is None
    assert anonymous_consent(header(search, "x-anonymous-consents") or "") == "WITHDRAWN"

    walker.grant()
    again = t.state()["consentReference"]
    assert again and again != reference  # a new grant, a new reference
    walker.category()
    assert header(occ_calls(t, "/products/search")[-1], "x-consent-reference") == again
    assert schemas(t) == ["CategoryView", "CategoryView"]
    assert [header(r, "consent-reference") for r in t.standin.received(CLICKSTREAM_PATH)] == [reference, again]
    assert len(t.standin.received(CONSENT_PATH)) == 2
    assert t.page.evaluate("() => window.__references") == [reference, again]
    assert t.layer() == [
        "ConsentChanged",  # not granted: never decided
        "ConsentChanged", "Navigated", "CategoryPageViewed",  # accept, category
        "ConsentChanged",  # withdraw; the search pushed nothing
        "ConsentChanged", "Navigated", "CategoryPageViewed",  # grant, category
    ]  # fmt: skip
    assert walker.unsettled == []
    assert t.errors == []


def test_the_accelerator_pushes_every_event_and_the_tag_drops_them_until_consent(tab: Opener) -> None:
    t = tab()
    walker = t.shopper().walk(("home", "product"))
    assert t.layer() == ["ProductDetailsPageViewed"]
    assert schemas(t) == []
    walker.walk(("accept", "category"))
    assert t.layer() == ["ConsentChanged", "CategoryPageViewed"]  # consent from the cookie, told first
    assert schemas(t) == ["CategoryView"]
    assert t.tag_storage() == {"cr": {STORAGE_KEY: {"consentReference": t.state()["consentReference"]}}}
    assert t.errors == []


@pytest.mark.parametrize("spartacus", [False, True], ids=["accelerator", "spartacus"])
def test_drop_event_keeps_the_tag_from_sending_that_event_only(tab: Opener, spartacus: bool) -> None:
    t = tab("drop-event:AddedToCart", spartacus=spartacus)
    walker = t.shopper().walk(("home", "accept", "product", "add-to-cart"))
    assert t.layer()[-1] == "AddedToCart"  # pushed by the storefront...
    walker.walk(("search", "cart"))
    assert schemas(t) == ["ProductView", "KeywordSearch", "CartSnapshot"]  # ...and never sent
    assert walker.unsettled == []
    assert t.errors == []


@pytest.mark.parametrize("fault", [None, "stale-reference"], ids=["healthy", "stale-reference"])
def test_after_a_withdrawal_strategy_and_occ_calls_drop_the_reference_unless_it_is_stale(
    tab: Opener, fault: str | None
) -> None:
    t = tab(*([fault] if fault else []), spartacus=True, carousel=True)
    walker = t.shopper().walk(("home", "accept", "home-link"))
    reference = t.state()["consentReference"]
    walker.walk(("withdraw", "category", "home-link"))
    strategy = t.standin.received(STRATEGY)
    assert len(strategy) == 3
    category = occ_calls(t, "/products/search")[-1]
    stale = reference if fault else None
    assert [header(r, "consent-reference") for r in strategy] == [None, reference, stale]
    assert header(category, "x-consent-reference") == stale
    assert t.state()["consentReference"] == stale
    assert t.tag_storage() is None  # the tag itself forgot it either way, and tracks no more
    assert schemas(t) == ["carouselViewed"]
    assert t.errors == []


@pytest.mark.parametrize("spartacus", [False, True], ids=["accelerator", "spartacus"])
def test_carousel_events_reach_the_tenant_once_consent_is_given(tab: Opener, spartacus: bool) -> None:
    t = tab(spartacus=spartacus, carousel=True)
    walker = t.shopper()
    walker.home()
    expect(t.page.locator("#carousel a.carousel-item")).to_have_count(len(RECOMMENDED))
    skus = t.page.locator("#carousel a.carousel-item").evaluate_all("links => links.map(a => a.dataset.sku)")
    assert skus == RECOMMENDED
    assert t.layer().count("CarouselViewed") == 1  # pushed in both styles; the tag drops it without consent
    walker.accept()
    walker.home()
    reference = t.state()["consentReference"]
    assert [header(r, "consent-reference") for r in t.standin.received(STRATEGY)] == [None, reference]
    assert [r.method for r in t.standin.received(STRATEGY)] == ["GET", "GET"]
    walker.carousel_click()
    assert urlsplit(t.page.url).path == f"/p/{RECOMMENDED[0]}"
    assert t.state()["type"] == "product"
    # The click is sent as the browser leaves the page: on a loaded machine it can reach the tenant after the
    # product page's own event, so only the first is ordered.
    deadline = time.monotonic() + 10
    while len(sent := schemas(t)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sent[0] == "carouselViewed" and sorted(sent[1:]) == ["ProductView", "carouselClicked"], sent
    events = t.standin.received(CLICKSTREAM_PATH)
    assert all(header(r, "consent-reference") == reference for r in events)
    carousel = {**CAROUSEL, "mixCardId": MIX_CARD_ID}
    assert events[0].json() == {**carousel, "productSkus": RECOMMENDED}
    assert events[1].json() == {**carousel, "sku": RECOMMENDED[0], "imageUrl": f"/medias/{RECOMMENDED[0]}.jpg"}
    assert events[2].json()["productSku"] == RECOMMENDED[0]
    assert walker.unsettled == []
    assert t.errors == []


def test_a_signed_in_shopper_is_tracked_on_the_accounts_consent_while_the_anonymous_one_says_withdrawn(
    tab: Opener,
) -> None:
    t = tab(spartacus=True)
    walker = t.shopper().walk(("home", "decline", "category"))
    assert t.layer() == ["ConsentChanged", "ConsentChanged"]  # not decided, then declined: both "not granted"
    assert all(header(c, "authorization") is None for c in occ_calls(t))
    expect(t.page.locator("#sign-in")).to_be_visible()

    walker.sign_in()
    expect(t.page.locator("#signed-in")).to_have_text("signed in")
    expect(t.page.locator("#sign-in")).to_be_hidden()
    expect(t.page.locator("#consent-state")).to_have_text("given")
    token = t.standin.storefront_received(TOKEN_PATH)
    assert [c.method for c in token] == ["POST"]
    templates = occ_calls(t, "/users/current/consenttemplates")
    assert len(templates) == 1 and (header(templates[0], "authorization") or "").startswith("Bearer ")
    assert t.page.evaluate("() => Y_TRACKING.eventLayer.at(-1)") == {
        "name": "ConsentChanged",
        "data": {"granted": True},
    }
    reference = t.state()["consentReference"]
    assert reference and t.state()["signedIn"] is True

    calls = len(occ_calls(t))
    walker.walk(("product", "add-to-cart", "cart"))
    signed_in = occ_calls(t)[calls:]
    bearer = header(templates[0], "authorization")
    assert [(c.method, re.sub(r"/carts/[^/]+", "/carts/<id>", c.path.removeprefix(OCC))) for c in signed_in] == [
        ("GET", f"/products/{catalog.in_category('576')[0].sku}"),
        ("POST", "/users/current/carts/<id>/entries"),
        ("GET", "/users/current/carts/<id>"),
    ]
    for call in signed_in:
        assert header(call, "authorization") == bearer
        assert header(call, "x-consent-reference") == reference
        assert anonymous_consent(header(call, "x-anonymous-consents") or "") == "WITHDRAWN"
    assert schemas(t) == ["ProductView", "AddedToCart", "CartSnapshot"]
    assert {header(r, "consent-reference") for r in t.standin.received(CLICKSTREAM_PATH)} == {reference}

    # A reload keeps the shopper signed in; withdrawing in the account is a request, and tracking stops.
    walker.home()
    assert t.state()["signedIn"] is True
    walker.withdraw()
    assert [c.method for c in occ_calls(t, "/users/current/consents")] == ["DELETE"]
    walker.category()
    assert header(occ_calls(t)[-1], "x-consent-reference") is None
    assert schemas(t) == ["ProductView", "AddedToCart", "CartSnapshot"]
    assert walker.unsettled == []
    assert t.errors == []


OBSERVER = "/__clickwatch/observer.js"


def _inject_observer(tab: Tab) -> list[str]:
    """Add `<script src="/__clickwatch/observer.js">` to every page as the proxy does; return its loads."""
    loads: list[str] = []
    origin = tab.standin.storefront_url("http").rstrip("/")

    def handle(route: Route) -> None:
        if urlsplit(route.request.url).path == OBSERVER:
            loads.append(route.request.url)
            route.fulfill(status=200, content_type="text/javascript", body="window.__observed = true;")
        elif route.request.resource_type == "document":
            response = route.fetch()
            body = response.text().replace("<head>", f'<head><script src="{OBSERVER}"></script>', 1)
            route.fulfill(response=response, body=body)
        else:
            route.continue_()

    tab.page.route(f"{origin}/**", handle)
    # A page fulfilled by Playwright has no address of its own; Chromium would refuse it the loopback tenant.
    tab.page.context.grant_permissions(["local-network-access"])
    tab.page.add_init_script(
        "window.__violations = [];"
        "document.addEventListener('securitypolicyviolation', e => __violations.push(e.blockedURI));"
    )
    return loads


@pytest.mark.parametrize("spartacus", [False, True], ids=["accelerator", "spartacus"])
@pytest.mark.parametrize("csp", [None, "nonce", "paths"])
def test_the_storefront_works_under_its_csp_and_a_foreign_script_does_not(
    tab: Opener, csp: str | None, spartacus: bool
) -> None:
    t = tab(csp=csp, spartacus=spartacus, carousel=True)
    loads = _inject_observer(t)
    walker = t.shopper().walk(("home", "accept", "product"))
    # The storefront's own scripts, the tag, its calls and the strategy call all ran under the policy.
    assert schemas(t) == ["ProductView"]
    assert len(t.standin.received(STRATEGY)) == 1
    expect(t.page.locator("#carousel a.carousel-item")).to_have_count(0)  # on the product page now
    assert walker.unsettled == []
    violations: list[Any] = t.page.evaluate("() => window.__violations")
    observed = t.page.evaluate("() => window.__observed === true")
    if csp is None:
        assert observed and violations == [] and t.errors == []
    else:
        # Only the injected script is refused, before it is even fetched.
        assert not observed and loads == []
        assert violations and {urlsplit(v).path for v in violations} == {OBSERVER}
        assert t.errors and all(OBSERVER in e for e in t.errors)
