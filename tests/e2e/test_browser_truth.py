"""Consent and events as the browser knows them: real Chromium, through `clickwatch up`, on a stand-in that behaves
as SAP's storefronts do (docs/observer.md, Sources). No false alarm on lawful visits; the lost event and the stale
reference found; a page whose policy keeps the observer out judged from the network, and said so."""

from __future__ import annotations

import time
from typing import Any

import pytest

from clickwatch.standin.server import CAROUSEL, MIX_CARD_ID, OCC_PREFIX
from tests.e2e.conftest import ECHO_SECONDS, GRACE_SECONDS, Clickwatch, Visit, settled

pytestmark = pytest.mark.integration

CAROUSEL_VIEWED = f"""() => Y_TRACKING.eventLayer.push({{name: 'CarouselViewed', data: {{
  carouselId: '{CAROUSEL["carouselId"]}', carouselName: '{CAROUSEL["carouselName"]}',
  strategyId: '{CAROUSEL["strategyId"]}', mixCardId: '{MIX_CARD_ID}', productSkus: ['300938', '1934793']}}}})"""


def _header(received: Any, name: str) -> str:
    return next((v for k, v in received.headers.items() if k.lower() == name.lower()), "")


def _tracking(clickwatch: Clickwatch, run: str) -> list[dict[str, Any]]:
    return [d for d in clickwatch.deliveries(run) if d["kind"] in ("clickstream", "consent_reference")]


def _carousel_after_consent_without_any_commerce_api_call(visit: Visit, standin: Any) -> float:
    """Spartacus: accept (no request), then a carousel comes into view long after, with no API call between."""
    walker = visit.shopper(standin)
    walker.walk(("home", "accept"))
    accepted_at = next(at for name, at in walker.steps if name == "accept")
    time.sleep(GRACE_SECONDS + 1.0)  # longer than the grace window, and still no Commerce API call
    visit.page.evaluate(CAROUSEL_VIEWED)  # as a carousel scrolled into view does: no navigation
    walker.settle()
    time.sleep(GRACE_SECONDS + 1.0)
    assert not [r for r in standin.storefront_received(OCC_PREFIX) if r.at > accepted_at]
    visit.close()
    return accepted_at


def test_spartacus_consent_given_without_a_request_is_no_violation(
    clickwatch: Clickwatch, visit: Visit, make_standin: Any
) -> None:
    standin = make_standin(spartacus=True, carousel=True)
    accepted_at = _carousel_after_consent_without_any_commerce_api_call(visit, standin)
    settled(clickwatch, visit.run)
    tracking = _tracking(clickwatch, visit.run)
    assert [(d["kind"], d["schema_name"], d["consent"]) for d in tracking] == [
        ("consent_reference", None, "given"),
        ("clickstream", "carouselViewed", "given"),
    ]
    assert all(d["sent_at"] > accepted_at for d in tracking)
    # The carousel event the storefront pushed is the one the tag sent.
    assert tracking[1]["pushed_at"] is not None and tracking[1]["pushed_at"] <= tracking[1]["sent_at"] + 1
    assert clickwatch.finding_kinds(visit.run) == {}
    assert clickwatch.check(visit.run, "--fail-on", "rejected,failed,error,warning").returncode == 0


def test_spartacus_without_the_observer_says_unknown_never_violation(
    clickwatch_network: Clickwatch, network_visit: Visit, make_standin: Any
) -> None:
    standin = make_standin(spartacus=True, carousel=True)
    _carousel_after_consent_without_any_commerce_api_call(network_visit, standin)
    settled(clickwatch_network, network_visit.run, timeout=ECHO_SECONDS + 15)
    tracking = _tracking(clickwatch_network, network_visit.run)
    assert [d["consent"] for d in tracking] == ["unknown", "unknown"]
    assert clickwatch_network.finding_kinds(network_visit.run) == {"consent_unknown": 1}
    assert clickwatch_network.check(network_visit.run).returncode == 0  # a warning, not an accusation


def test_spartacus_without_the_observer_a_late_echo_clears_the_calls(
    clickwatch_network: Clickwatch, network_visit: Visit, make_standin: Any
) -> None:
    standin = make_standin(spartacus=True)
    walker = network_visit.shopper(standin).walk(("home", "accept"))
    network_visit.page.evaluate(  # tracked at once, while the last Commerce API call still said "no decision"
        "Y_TRACKING.eventLayer.push({name: 'KeywordSearch', data: {searchTerm: 'tripod', numResults: 0}})"
    )
    walker.settle()
    time.sleep(GRACE_SECONDS + 1.0)
    walker.walk(("category",))  # the echo: X-Anonymous-Consents says GIVEN, long after the grace window
    network_visit.close()
    settled(clickwatch_network, network_visit.run, timeout=ECHO_SECONDS + 15)
    assert {d["consent"] for d in _tracking(clickwatch_network, network_visit.run)} == {"given"}
    assert clickwatch_network.finding_kinds(network_visit.run) == {}


def test_a_signed_in_shopper_whose_anonymous_consent_says_withdrawn_is_no_violation(
    clickwatch: Clickwatch, visit: Visit, make_standin: Any
) -> None:
    standin = make_standin(spartacus=True)
    visit.shopper(standin).walk(("home", "decline", "sign-in", "product", "add-to-cart"))
    visit.close()
    settled(clickwatch, visit.run)
    api_calls = standin.storefront_received(f"{OCC_PREFIX}/users/current/")
    assert api_calls and all(_header(r, "Authorization").startswith("Bearer ") for r in api_calls)
    assert all("WITHDRAWN" in _header(r, "X-Anonymous-Consents") for r in api_calls)
    events = [d for d in _tracking(clickwatch, visit.run) if d["kind"] == "clickstream"]
    assert [(d["schema_name"], d["verdict"], d["consent"]) for d in events] == [
        ("ProductView", "delivered", "given"),
        ("AddedToCart", "delivered", "given"),
    ]
    assert clickwatch.finding_kinds(visit.run) == {}


@pytest.mark.parametrize("spartacus", [False, True], ids=["accelerator", "spartacus"])
def test_withdraw_then_grant_again_obtains_a_new_reference_lawfully(
    clickwatch: Clickwatch, visit: Visit, make_standin: Any, spartacus: bool
) -> None:
    standin = make_standin(spartacus=spartacus)
    visit.shopper(standin).walk(("home", "accept", "product", "withdraw", "grant", "category"))
    visit.close()
    settled(clickwatch, visit.run)
    references = [d for d in clickwatch.deliveries(visit.run) if d["kind"] == "consent_reference"]
    assert [d["verdict"] for d in references] == ["delivered", "delivered"]
    assert clickwatch.finding_kinds(visit.run) == {}, clickwatch.api("/api/findings", run=visit.run)["items"]


def test_an_event_the_tag_never_sent_is_event_not_sent(clickwatch: Clickwatch, visit: Visit, make_standin: Any) -> None:
    standin = make_standin("drop-event:AddedToCart")
    visit.shopper(standin).walk(("home", "accept", "product", "add-to-cart", "search"))
    visit.close()
    settled(clickwatch, visit.run)
    events = [d["schema_name"] for d in _tracking(clickwatch, visit.run) if d["kind"] == "clickstream"]
    assert events == ["ProductView", "KeywordSearch"]  # nothing on the wire says AddedToCart is missing
    assert clickwatch.finding_kinds(visit.run) == {"event_not_sent": 1}
    [finding] = clickwatch.api("/api/findings", run=visit.run)["items"]
    assert finding["severity"] == "error" and "AddedToCart" in finding["message"]
    result = clickwatch.check(visit.run)
    assert result.returncode == 1 and "event_not_sent" in result.stdout


def test_a_reference_kept_after_withdrawal_is_stale(clickwatch: Clickwatch, visit: Visit, make_standin: Any) -> None:
    standin = make_standin("stale-reference", spartacus=True)
    walker = visit.shopper(standin).walk(("home", "accept", "product", "withdraw"))
    withdrawn_at = time.time()
    walker.walk(("category", "search"))
    visit.close()
    settled(clickwatch, visit.run)
    stale = [r for r in standin.storefront_received(OCC_PREFIX) if r.at > withdrawn_at]
    assert stale and all(_header(r, "X-Consent-Reference") for r in stale)
    assert clickwatch.finding_kinds(visit.run) == {"stale_consent_reference": 1}


def test_without_the_fault_a_withdrawal_drops_the_reference_and_nothing_is_stale(
    clickwatch: Clickwatch, visit: Visit, make_standin: Any
) -> None:
    standin = make_standin(spartacus=True)
    walker = visit.shopper(standin).walk(("home", "accept", "product", "withdraw"))
    withdrawn_at = time.time()
    walker.walk(("category",))
    visit.close()
    settled(clickwatch, visit.run)
    later = [r for r in standin.storefront_received(OCC_PREFIX) if r.at > withdrawn_at]
    assert later and not [r for r in later if _header(r, "X-Consent-Reference")]
    assert clickwatch.finding_kinds(visit.run) == {}


def test_a_policy_that_blocks_the_observer_is_respected_and_the_visit_judged_from_the_network(
    clickwatch: Clickwatch, visit: Visit, make_standin: Any
) -> None:
    standin = make_standin(csp="paths")
    visit.shopper(standin).walk(("home", "accept", "product", "add-to-cart"))
    visit.close()
    settled(clickwatch, visit.run)
    events = [d for d in _tracking(clickwatch, visit.run) if d["kind"] == "clickstream"]
    assert [(d["schema_name"], d["consent"], d["pushed_at"]) for d in events] == [
        ("ProductView", "given", None),
        ("AddedToCart", "given", None),
    ]
    assert clickwatch.finding_kinds(visit.run) == {"observer_blocked": 1}
    assert visit.problems == []


def test_a_nonce_policy_carries_the_observer_in(clickwatch: Clickwatch, visit: Visit, make_standin: Any) -> None:
    standin = make_standin(csp="nonce")
    visit.shopper(standin).walk(("home", "accept", "product"))
    visit.close()
    settled(clickwatch, visit.run)
    [event] = [d for d in _tracking(clickwatch, visit.run) if d["kind"] == "clickstream"]
    assert event["pushed_at"] is not None
    assert clickwatch.finding_kinds(visit.run) == {}
