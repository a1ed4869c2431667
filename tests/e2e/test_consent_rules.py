"""Issue 21 in a real Chromium through `clickwatch up`: consent given later never excuses a call made before it;
each call labelled with what the evidence said at that moment, "not given" apart from "withdrawn"; a signed-in
shopper judged by the account's consent as the Commerce API answered it; a page requested before the first consent
reference came back may ask again."""

from __future__ import annotations

from typing import Any

import pytest

from clickwatch.standin.server import OCC_PREFIX
from tests.e2e.conftest import Clickwatch, Visit, settled

pytestmark = pytest.mark.integration


def _calls(clickwatch: Clickwatch, run: str) -> list[tuple[str, str | None, str | None]]:
    """(kind, schema, consent) of every call that consent labels, oldest first."""
    return [
        (d["kind"], d["schema_name"], d["consent"])
        for d in clickwatch.deliveries(run)
        if d["kind"] in ("clickstream", "consent_reference", "strategy")
    ]


def _messages(clickwatch: Clickwatch, run: str, kind: str) -> list[str]:
    return [f["message"] for f in clickwatch.api("/api/findings", run=run, kind=kind, limit=100)["items"]]


@pytest.mark.parametrize("spartacus", [False, True], ids=["accelerator", "spartacus"])
def test_tracking_before_consent_accepted_two_seconds_later_is_a_violation(
    clickwatch: Clickwatch, visit: Visit, make_standin: Any, spartacus: bool
) -> None:
    """The tag obtains a reference (and sends the carousel view, which Spartacus pushes without consent) before the
    shopper, who reads the banner for two seconds, accepts: well inside the grace window, and still a violation."""
    standin = make_standin("early-tracking", spartacus=spartacus, carousel=True)
    walker = visit.shopper(standin).walk(("home", "read", "accept", "product"))
    visit.close()
    settled(clickwatch, visit.run)
    accepted_at = next(at for name, at in walker.steps if name == "accept")
    before = [d for d in clickwatch.deliveries(visit.run) if d["sent_at"] < accepted_at]
    early = [(d["kind"], d["schema_name"]) for d in before if d["kind"] in ("clickstream", "consent_reference")]
    assert ("consent_reference", None) in early
    if spartacus:
        assert ("clickstream", "carouselViewed") in early  # pushed without consent, as Spartacus does
    assert {d["consent"] for d in before if d["kind"] != "tag" and d["kind"] != "preflight"} == {"absent"}
    assert accepted_at - min(d["sent_at"] for d in before if d["kind"] == "consent_reference") < 4.0
    kinds = clickwatch.finding_kinds(visit.run)
    assert kinds == {"consent_violation": len(early)}, clickwatch.api("/api/findings", run=visit.run)["items"]
    assert all("while consent was not given" in m for m in _messages(clickwatch, visit.run, "consent_violation"))
    assert clickwatch.check(visit.run).returncode == 1


def test_a_strategy_call_before_consent_is_labelled_not_given_without_a_finding(
    clickwatch: Clickwatch, visit: Visit, make_standin: Any
) -> None:
    standin = make_standin(spartacus=True, carousel=True)
    visit.shopper(standin).walk(("home", "read", "accept", "home-link", "product"))
    visit.close()
    settled(clickwatch, visit.run)
    calls = _calls(clickwatch, visit.run)
    strategies = [consent for kind, _, consent in calls if kind == "strategy"]
    assert strategies == ["absent", "given"]  # before the shopper accepted (lawful, no reference), and after
    assert [c for c in calls if c[0] != "strategy"] == [
        ("consent_reference", None, "given"),
        ("clickstream", "carouselViewed", "given"),
        ("clickstream", "ProductView", "given"),
    ]
    assert clickwatch.finding_kinds(visit.run) == {}
    assert clickwatch.check(visit.run, "--fail-on", "rejected,failed,error,warning").returncode == 0


def test_never_decided_is_not_given_and_a_false_after_true_is_withdrawn(
    clickwatch: Clickwatch, visit: Visit, make_standin: Any
) -> None:
    standin = make_standin("track-before-consent")
    visit.shopper(standin).walk(("home", "product", "read", "accept", "withdraw", "category"))
    visit.close()
    settled(clickwatch, visit.run)
    tracking = [c for c in _calls(clickwatch, visit.run) if c[0] != "strategy"]
    assert tracking == [
        ("consent_reference", None, "absent"),
        ("clickstream", "ProductView", "absent"),
        ("clickstream", "CategoryView", "withdrawn"),
    ]
    messages = _messages(clickwatch, visit.run, "consent_violation")
    assert len(messages) == 3
    assert sum("while consent was not given" in m for m in messages) == 2
    assert (
        sum("while consent was withdrawn (data layer: ConsentChanged granted=false after" in m for m in messages) == 1
    )
    visitor = clickwatch.deliveries(visit.run)[0]["visitor"]
    timeline = clickwatch.api(f"/api/visitors/{visitor}", run=visit.run)
    states = [(e["state"], e["source"]) for e in timeline["timeline"] if e["type"] == "consent"]
    assert ("given", "data layer") in states and ("withdrawn", "data layer") in states


def test_a_signed_in_shopper_whose_account_holds_no_consent_is_an_account_mismatch(
    clickwatch: Clickwatch, visit: Visit, make_standin: Any
) -> None:
    """Spartacus 4.3.8: "Allow all", then an ordinary sign-in; the account holds no consent, events go on."""
    standin = make_standin("account-without-consent", spartacus=True)
    visit.shopper(standin).walk(("home", "read", "accept", "sign-in", "home", "product", "add-to-cart"))
    visit.close()
    settled(clickwatch, visit.run)
    anonymous = standin.storefront_received(f"{OCC_PREFIX}/users/anonymous/consenttemplates")
    assert any(r.headers.get("Authorization", "").startswith("Bearer ") for r in anonymous)  # as Spartacus asks
    events = [c for c in _calls(clickwatch, visit.run) if c[0] == "clickstream"]
    assert events == [("clickstream", "ProductView", "given"), ("clickstream", "AddedToCart", "given")]
    assert clickwatch.finding_kinds(visit.run) == {"account_consent_mismatch": 1}
    [message] = _messages(clickwatch, visit.run, "account_consent_mismatch")
    assert "data layer said given" in message and "account says not given" in message
    visitor = clickwatch.deliveries(visit.run)[0]["visitor"]
    timeline = clickwatch.api(f"/api/visitors/{visitor}", run=visit.run)
    account = [
        (e["state"], e["detail"])
        for e in timeline["timeline"]
        if e["type"] == "consent" and e["source"].startswith("account")
    ]
    assert account == [("absent", "the account holds no PROFILE consent")]
    assert clickwatch.check(visit.run).returncode == 0  # a warning: the shopper did consent, in this browser


def test_a_bearer_token_on_users_anonymous_is_a_signed_in_shopper(
    clickwatch_network: Clickwatch, network_visit: Visit, make_standin: Any
) -> None:
    """Without the observer: after a reload Spartacus asks for users/anonymous/consenttemplates with the bearer
    token; the shopper is still signed in, judged by the account (given), not by the anonymous "withdrawn"."""
    standin = make_standin(spartacus=True)
    network_visit.shopper(standin).walk(("home", "decline", "sign-in", "home", "product", "add-to-cart"))
    network_visit.close()
    settled(clickwatch_network, network_visit.run, timeout=30)
    anonymous = standin.storefront_received(f"{OCC_PREFIX}/users/anonymous/consenttemplates")
    assert any(r.headers.get("Authorization", "").startswith("Bearer ") for r in anonymous)
    events = [c for c in _calls(clickwatch_network, network_visit.run) if c[0] == "clickstream"]
    assert events == [("clickstream", "ProductView", "given"), ("clickstream", "AddedToCart", "given")]
    assert clickwatch_network.finding_kinds(network_visit.run) == {}


def test_a_page_requested_before_the_first_reference_came_back_may_ask_again(
    clickwatch: Clickwatch, visit: Visit, make_standin: Any
) -> None:
    """Accept, and open a product page as soon as the data layer says so, while the reference is still on its way."""
    standin = make_standin("slow-reference:0.5")  # under the e2e slow_delivery_seconds (1 s)
    visit.shopper(standin).walk(("home", "accept-quick", "product", "add-to-cart"))
    visit.close()
    settled(clickwatch, visit.run)
    references = [d for d in clickwatch.deliveries(visit.run) if d["kind"] == "consent_reference"]
    assert [(d["verdict"], d["consent"]) for d in references] == [("delivered", "given"), ("delivered", "given")]
    assert clickwatch.finding_kinds(visit.run) == {}
    assert clickwatch.check(visit.run, "--fail-on", "rejected,failed,error,warning").returncode == 0
