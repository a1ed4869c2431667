"""Consent as the browser knows it: the data layer, Spartacus' request-less consent, signed-in shoppers, stale
references, and intended (pushed) versus delivered events."""

from dataclasses import replace

import pytest

from clickwatch.core.config import Config
from clickwatch.core.consent import ConsentState
from clickwatch.core.findings import FindingKind, Severity
from clickwatch.core.judge import DATALAYER_SOURCE
from clickwatch.core.model import BrowserEvent, BrowserEventType, BrowserSeen, Kind, ObserverBlocked, RequestSeen
from tests.core.test_judge import (
    GIVEN,
    IP,
    ORIGIN,
    RUN,
    TENANT,
    UA,
    WITHDRAWN,
    Trace,
    clickstream,
    consent_reference,
    consents,
    page,
)

T = 5000.0
PRODUCT_SKU = "300938"


def occ(trace: Trace, at: float, state: str | None, *, reference: bool = False, signed_in: bool | None = None):
    """A Spartacus Commerce API call: consent only in X-Anonymous-Consents."""
    seen = replace(page(at, header=consents(state), page_load=False), consent_reference=reference, logged_in=signed_in)
    return trace._keep(trace.judge.storefront(seen))


def push(name: str, data: object = None) -> tuple[str, object]:
    return (name, data)


def browser(trace: Trace, at: float, *events: tuple[str, object], page_id: str = "page0001", first: bool = False):
    """One observer batch: events 10 ms apart from `at` (a page event first when `first`)."""
    items = [BrowserEvent(at, BrowserEventType.PAGE)] if first else []
    for index, (name, data) in enumerate(events, start=1):
        items.append(BrowserEvent(at + index * 0.01, BrowserEventType.PUSH, name, data))
    seen = BrowserSeen(RUN, IP, UA, page_id, f"{ORIGIN}/p/1", at + 0.3, tuple(items), origin=ORIGIN)
    return trace._keep(trace.judge.browser(seen))


def consent_kinds(trace: Trace) -> list[FindingKind]:
    """Findings about consent (a clickstream without its push on an observed page is another matter)."""
    return [kind for kind in trace.kinds() if kind is not FindingKind.EVENT_WITHOUT_PUSH]


def granted(value: bool) -> tuple[str, object]:
    return push("ConsentChanged", {"granted": value})


def strategy(uid: str, at: float, reference: str | None) -> RequestSeen:
    headers = (("Origin", ORIGIN),) + ((("consent-reference", reference),) if reference else ())
    return RequestSeen(
        uid, RUN, Kind.STRATEGY, None, "GET", f"https://{TENANT}/strategy/acme/strategies/s1/products",
        TENANT, "/strategy/acme/strategies/s1/products", IP, UA, headers, b"", at,
    )  # fmt: skip


def view(uid: str, at: float, sku: str = PRODUCT_SKU) -> RequestSeen:
    return clickstream(uid, at, body=f'{{"productSku":"{sku}","productName":"Camera"}}')


# --- Spartacus without the observer: consent reaches the wire only with the next Commerce API call ------------


def test_spartacus_consent_given_without_a_request_is_no_violation_when_the_echo_comes_late():
    trace = Trace()
    occ(trace, T - 5, "WITHDRAWN")
    trace.send(consent_reference("r1", T))
    trace.send(clickstream("c1", T + 0.5))
    trace.evaluate(T + 11)  # the grace window has passed, no echo yet: still waiting, not guessing
    assert trace.consent("c1") == "pending"
    assert trace.kinds() == []
    occ(trace, T + 60, "GIVEN")  # a minute later the shopper navigates: the echo says GIVEN
    trace.evaluate(T + 61)
    assert (trace.consent("r1"), trace.consent("c1")) == ("given", "given")
    assert trace.kinds() == []


def test_spartacus_without_any_echo_is_unknown_never_a_violation():
    trace = Trace(Config(echo_seconds=30))
    occ(trace, T - 5, "WITHDRAWN")
    trace.send(clickstream("c1", T))
    trace.evaluate(T + 29)
    assert trace.consent("c1") == "pending"
    trace.evaluate(T + 31)
    assert trace.consent("c1") == "unknown"
    (finding,) = trace.findings()
    assert (finding.kind, finding.severity) == (FindingKind.CONSENT_UNKNOWN, Severity.WARNING)
    assert "X-Anonymous-Consents" in finding.message


def test_spartacus_echo_saying_withdrawn_cannot_decide():
    trace = Trace()
    occ(trace, T - 5, "WITHDRAWN")
    trace.send(clickstream("c1", T))
    occ(trace, T + 20, "WITHDRAWN", reference=False)
    trace.evaluate(T + 21)
    assert trace.consent("c1") == "unknown"
    assert trace.kinds() == [FindingKind.CONSENT_UNKNOWN]


def test_spartacus_echo_still_saying_no_decision_convicts_the_call():
    trace = Trace()
    occ(trace, T - 5, None)
    trace.send(clickstream("c1", T))
    occ(trace, T + 20, None)
    occ(trace, T + 21, "WITHDRAWN")  # a different header value, so the proxy would hand it on too
    trace.evaluate(T + 22)
    assert trace.consent("c1") == "absent"
    (finding,) = trace.findings()
    assert finding.kind is FindingKind.CONSENT_VIOLATION
    assert "next consent echo still said so" in finding.message


def test_spartacus_withdraw_then_grant_again_is_no_repeated_reference_without_the_data_layer():
    trace = Trace()
    occ(trace, T - 5, "GIVEN")
    trace.deliver(consent_reference("r1", T))
    trace.deliver(consent_reference("r2", T + 30))  # withdrawn and given again in browser storage: no request
    trace.evaluate(T + 100, final=True)
    assert FindingKind.REPEATED_CONSENT_REFERENCE not in trace.kinds()


# --- accelerator: a second reference is repeated only without a withdrawal in between --------------------------


def test_a_second_reference_after_a_withdrawal_is_legitimate():
    trace = Trace()
    trace.page(T - 5, cookie=GIVEN, page_load=False)
    trace.deliver(consent_reference("r1", T))
    trace.page(T + 10, cookie=WITHDRAWN, page_load=False)
    trace.page(T + 20, cookie=GIVEN, page_load=False)
    trace.deliver(consent_reference("r2", T + 21))
    trace.evaluate(T + 30)
    assert FindingKind.REPEATED_CONSENT_REFERENCE not in trace.kinds()
    trace.deliver(consent_reference("r3", T + 40))  # no withdrawal since r2
    trace.evaluate(T + 50)
    assert trace.kinds().count(FindingKind.REPEATED_CONSENT_REFERENCE) == 1


# --- signed-in shoppers: anonymous consent decides nothing ---------------------------------------------------


def test_a_signed_in_shopper_is_never_judged_from_anonymous_consent():
    trace = Trace()
    occ(trace, T - 5, "WITHDRAWN", signed_in=True)
    trace.send(clickstream("c1", T))
    trace.evaluate(T + 200, final=True)
    assert trace.consent("c1") == "unknown"
    assert trace.kinds() == [FindingKind.CONSENT_UNKNOWN]
    assert "signed in" in trace.findings()[0].message


def test_a_signed_in_shopper_with_the_data_layer_saying_given_is_given():
    trace = Trace()
    occ(trace, T - 5, "WITHDRAWN", signed_in=True)
    browser(trace, T - 1, granted(True), first=True)
    trace.send(clickstream("c1", T))
    trace.evaluate(T + 200, final=True)
    assert trace.consent("c1") == "given"
    assert consent_kinds(trace) == []


def test_signing_out_makes_anonymous_consent_count_again():
    trace = Trace()
    occ(trace, T - 5, "WITHDRAWN", signed_in=True)
    occ(trace, T - 2, None, signed_in=False)
    trace.send(clickstream("c1", T))
    occ(trace, T + 5, None, signed_in=False)
    trace.evaluate(T + 200, final=True)
    assert trace.kinds() == [FindingKind.CONSENT_VIOLATION]


# --- the data layer decides -----------------------------------------------------------------------------------


def test_the_data_layer_decides_over_a_contradicting_cookie():
    trace = Trace()
    trace.page(T - 5, cookie=WITHDRAWN, page_load=False)
    browser(trace, T - 1, granted(True), first=True)
    trace.send(clickstream("c1", T))
    trace.evaluate(T + 30)
    assert trace.consent("c1") == "given"
    assert consent_kinds(trace) == []
    sources = [(s.state, s.source) for s in trace.all.signals]
    # The timeline shows both: the cookie and the data layer.
    assert (ConsentState.WITHDRAWN, "cookie anonymous-consents") in sources
    assert (ConsentState.GIVEN, DATALAYER_SOURCE) in sources


def test_tracking_after_a_data_layer_withdrawal_is_a_violation_even_if_cookies_say_given():
    trace = Trace()
    trace.page(T - 5, cookie=GIVEN, page_load=False)
    browser(trace, T - 3, granted(True), first=True)
    browser(trace, T - 2, granted(False))
    trace.send(clickstream("c1", T))
    trace.evaluate(T + 30)
    assert trace.consent("c1") == "withdrawn"
    (finding,) = [f for f in trace.findings() if f.kind is not FindingKind.EVENT_WITHOUT_PUSH]
    assert finding.kind is FindingKind.CONSENT_VIOLATION
    assert "data layer" in finding.message


def test_the_data_layer_report_may_arrive_after_the_call():
    trace = Trace()
    occ(trace, T - 5, "WITHDRAWN")
    browser(trace, T - 10, first=True)  # the observer is running on the page
    trace.send(clickstream("c1", T + 0.2))
    assert trace.consent("c1") == "pending"
    browser(trace, T, granted(True))  # the report of the push just before the call arrives after it
    trace.evaluate(T + 30)
    assert trace.consent("c1") == "given"
    assert consent_kinds(trace) == []


def test_a_consent_push_just_after_the_call_gets_the_benefit_of_the_doubt():
    trace = Trace()
    browser(trace, T - 10, granted(False), first=True)
    trace.send(clickstream("c1", T))
    browser(trace, T + 0.3, granted(True))
    trace.evaluate(T + 30)
    assert trace.consent("c1") == "given"
    assert consent_kinds(trace) == []


# --- stale consent references ----------------------------------------------------------------------------------


def test_a_strategy_call_with_a_reference_after_withdrawal_is_stale():
    trace = Trace()
    browser(trace, T - 10, granted(True), first=True)
    browser(trace, T - 5, granted(False))
    trace.deliver(strategy("s1", T, "cr-1"))
    trace.deliver(strategy("s2", T + 1, None))
    trace.evaluate(T + 30)
    (finding,) = trace.findings()
    assert (finding.kind, finding.severity, finding.delivery_uid) == (
        FindingKind.STALE_CONSENT_REFERENCE,
        Severity.WARNING,
        "s1",
    )
    assert trace.consent("s1") == trace.consent("s2") == "withdrawn"


def test_a_strategy_call_with_a_reference_and_consent_is_fine():
    trace = Trace()
    browser(trace, T - 10, granted(True), first=True)
    trace.deliver(strategy("s1", T, "cr-1"))
    trace.evaluate(T + 30)
    assert trace.consent("s1") == "given"
    assert trace.kinds() == []


def test_commerce_api_calls_with_a_stale_reference_are_reported_once_per_withdrawal():
    trace = Trace()
    occ(trace, T - 10, "GIVEN", reference=True)
    occ(trace, T, "WITHDRAWN", reference=True)  # Spartacus bug 14105: the reference outlives the withdrawal
    occ(trace, T + 5, "WITHDRAWN", reference=True)
    trace.evaluate(T + 30)
    (finding,) = trace.findings()
    assert finding.kind is FindingKind.STALE_CONSENT_REFERENCE
    assert finding.delivery_uid is None
    assert "X-Consent-Reference" in finding.message


def test_commerce_api_calls_without_a_reference_after_withdrawal_are_fine():
    trace = Trace()
    occ(trace, T - 10, "GIVEN", reference=True)
    occ(trace, T, "WITHDRAWN", reference=False)
    trace.evaluate(T + 30, final=True)
    assert trace.kinds() == []


# --- intended versus delivered ----------------------------------------------------------------------------------


def test_a_push_and_its_delivery_are_linked_whichever_arrives_first():
    trace = Trace()
    browser(trace, T, granted(True), push("ProductDetailsPageViewed", {"productSku": PRODUCT_SKU}), first=True)
    trace.deliver(view("c1", T + 0.5))
    trace.deliver(view("c2", T + 2.5, sku="1934793"))  # sent before its push's report arrives
    browser(trace, T + 2, push("ProductDetailsPageViewed", {"productSku": "1934793"}))
    trace.evaluate(T + 30)
    links = {(link.delivery_uid, round(link.pushed_at - T, 2)) for link in trace.all.links}
    assert links == {("c1", 0.02), ("c2", 2.01)}
    assert trace.kinds() == []


def test_a_push_with_consent_that_is_never_sent_is_event_not_sent():
    trace = Trace(Config(reconcile_seconds=5))
    browser(trace, T, granted(True), push("AddedToCart", {"productSku": PRODUCT_SKU}), first=True)
    assert not trace.evaluate(T + 4).findings
    trace.evaluate(T + 6)
    (finding,) = trace.findings()
    assert (finding.kind, finding.severity) == (FindingKind.EVENT_NOT_SENT, Severity.ERROR)
    assert "AddedToCart" in finding.message and f"productSku={PRODUCT_SKU}" in finding.message


def test_a_push_before_consent_that_is_never_sent_is_correct():
    trace = Trace()
    browser(trace, T, granted(False), push("ProductDetailsPageViewed", {"productSku": PRODUCT_SKU}), first=True)
    trace.evaluate(T + 60, final=True)
    assert trace.kinds() == []
    pushes = [p for p in trace.all.pushes if p.name == "ProductDetailsPageViewed"]
    assert [(p.schema, p.consent) for p in pushes] == [("ProductView", "absent")]  # never given: "not given"


def two_product_views() -> Trace:
    """Consent given, then two product views pushed (SKUs A and B)."""
    trace = Trace()
    sku_a, sku_b = (push("ProductDetailsPageViewed", {"productSku": sku}) for sku in "AB")
    browser(trace, T, granted(True), sku_a, sku_b, first=True)
    return trace


def test_identifying_fields_keep_two_pushes_of_one_schema_apart():
    trace = two_product_views()
    trace.deliver(view("cB", T + 0.5, sku="B"))
    trace.evaluate(T + 30)
    assert [link.delivery_uid for link in trace.all.links] == ["cB"]
    (finding,) = trace.findings()
    assert finding.kind is FindingKind.EVENT_NOT_SENT and "productSku=A" in finding.message


def test_a_post_without_a_push_on_an_observed_page_is_event_without_push():
    trace = Trace()
    browser(trace, T - 1, granted(True), first=True)
    trace.deliver(view("c1", T))
    browser(trace, T + 0.5, push("Navigated", {}))  # the observer reported after the POST: it was listening
    trace.evaluate(T + 30)
    (finding,) = trace.findings()
    assert (finding.kind, finding.severity, finding.delivery_uid) == (
        FindingKind.EVENT_WITHOUT_PUSH,
        Severity.INFO,
        "c1",
    )


def test_a_post_after_the_observers_last_report_is_not_judged():
    trace = Trace()
    browser(trace, T - 1, granted(True), first=True)
    trace.deliver(view("c1", T))  # the browser was closed at once: the report of its push may be lost
    trace.evaluate(T + 30)
    assert trace.kinds() == []


def test_a_post_without_an_observer_is_not_event_without_push():
    trace = Trace()
    trace.page(T - 1, cookie=GIVEN, page_load=False)
    trace.deliver(view("c1", T))
    trace.evaluate(T + 30, final=True)
    assert trace.kinds() == []


def test_the_mapping_is_configuration():
    trace = Trace(Config(datalayer_schemas={"MyView": "ProductView"}))
    browser(trace, T, granted(True), push("MyView", {"productSku": "A"}), push("AddedToCart", {}), first=True)
    trace.evaluate(T + 30)
    assert [f.kind for f in trace.findings()] == [FindingKind.EVENT_NOT_SENT]
    assert "MyView" in trace.findings()[0].message


def test_the_observer_switched_off_reconciles_nothing():
    trace = Trace(Config(observer_enabled=False))
    trace.page(T - 1, cookie=GIVEN, page_load=False)
    trace.deliver(view("c1", T))
    (visitor,) = trace.judge._visitors.values()
    assert visitor.open_sent == []
    trace.evaluate(T + 30, final=True)
    assert trace.kinds() == []


@pytest.mark.parametrize("times", [1, 3])
def test_observer_blocked_is_reported_once_per_visitor(times):
    trace = Trace()
    for index in range(times):
        trace._keep(trace.judge.observer_blocked(ObserverBlocked(RUN, IP, UA, T + index, "https://shop/", "x")))
    (finding,) = trace.findings()
    assert (finding.kind, finding.severity) == (FindingKind.OBSERVER_BLOCKED, Severity.INFO)


def test_a_single_page_navigation_after_consent_arms_the_silence_check():
    trace = Trace(Config(silence_seconds=3))
    seen = BrowserSeen(
        RUN, IP, UA, "page0001", "https://shop/", T + 0.3,
        (
            BrowserEvent(T, BrowserEventType.PAGE),
            BrowserEvent(T + 0.1, BrowserEventType.PUSH, "ConsentChanged", {"granted": True}),
            BrowserEvent(T + 0.2, BrowserEventType.NAVIGATION, "pushState", "/c/576"),
        ),
    )  # fmt: skip
    trace._keep(trace.judge.browser(seen))
    trace.evaluate(T + 2)
    assert FindingKind.NO_EVENTS_AFTER_CONSENT not in trace.kinds()
    trace.evaluate(T + 4)
    assert FindingKind.NO_EVENTS_AFTER_CONSENT in trace.kinds()


def test_the_same_product_viewed_before_and_after_consent_is_carried_by_the_second_push():
    trace = Trace()
    view_push = push("ProductDetailsPageViewed", {"productSku": PRODUCT_SKU})
    browser(trace, T, view_push, first=True)  # before the banner is answered: dropped by the tag
    trace.deliver(view("c1", T + 2.1))  # the POST after consent arrives before the report of its push
    browser(trace, T + 2, granted(True), view_push)
    trace.evaluate(T + 30)
    (link,) = trace.all.links
    assert (link.delivery_uid, round(link.pushed_at - T, 2)) == ("c1", 2.02)
    assert consent_kinds(trace) == [] and trace.kinds() == []


def test_a_tag_that_ignores_consent_still_has_its_posts_paired_with_their_pushes():
    trace = Trace()
    browser(trace, T, push("ProductDetailsPageViewed", {"productSku": PRODUCT_SKU}), first=True)
    trace.deliver(view("c1", T + 0.1))
    trace.evaluate(T + 30)
    assert [link.delivery_uid for link in trace.all.links] == ["c1"]
    assert FindingKind.EVENT_WITHOUT_PUSH not in trace.kinds()


def test_one_post_carrying_several_events_answers_each_push():
    trace = two_product_views()
    trace.deliver(clickstream("c1", T + 0.5, body='[{"productSku":"A"},{"productSku":"B"}]'))
    trace.evaluate(T + 30)
    assert sorted(link.delivery_uid for link in trace.all.links) == ["c1", "c1"]
    assert FindingKind.EVENT_NOT_SENT not in trace.kinds()


def test_the_pause_cookie_wins_over_the_data_layer():
    trace = Trace()
    browser(trace, T - 10, granted(True), first=True)
    trace.page(T - 5, cookie="profile.tracking.pause=1", page_load=False)
    browser(trace, T, push("ProductDetailsPageViewed", {"productSku": "A"}))  # the paused tag sends nothing
    trace.send(view("c1", T + 1))  # ... and a tag that does is sending while paused
    trace.evaluate(T + 30)
    assert trace.consent("c1") == "paused"
    assert FindingKind.EVENT_NOT_SENT not in trace.kinds()
    assert FindingKind.CONSENT_VIOLATION in trace.kinds()


def test_a_network_signal_of_consent_within_the_grace_window_clears_a_late_data_layer_report():
    trace = Trace()
    browser(trace, T - 10, granted(False), first=True)
    trace.send(consent_reference("r1", T + 5.0))
    trace.send(clickstream("c1", T + 5.1))
    trace.page(T + 5.3, cookie=GIVEN, page_load=False)  # the storefront wrote the cookie with the push
    browser(trace, T + 6.3, granted(True))  # the push's report, placed a second late
    trace.evaluate(T + 30)
    assert (trace.consent("r1"), trace.consent("c1")) == ("given", "given")
    assert consent_kinds(trace) == []


def test_a_page_the_observer_did_not_see_is_judged_by_its_newer_network_signal():
    trace = Trace()
    browser(trace, T - 10, granted(False), first=True)
    trace._keep(trace.judge.observer_blocked(ObserverBlocked(RUN, IP, UA, T - 2, f"{ORIGIN}/", "policy")))
    trace.page(T - 1, cookie=GIVEN, page_load=False)  # consent given on the blocked page
    trace.send(clickstream("c1", T + 20))
    trace.evaluate(T + 60)
    assert trace.consent("c1") == "given"
    assert FindingKind.CONSENT_VIOLATION not in trace.kinds()


def test_a_withdrawal_reported_after_the_push_it_preceded_makes_the_push_not_owed():
    trace = Trace()
    browser(trace, T - 10, granted(True), first=True)
    browser(trace, T, push("ProductDetailsPageViewed", {"productSku": "A"}))  # arrives first ...
    browser(trace, T - 0.5, granted(False))  # ... the withdrawal just before it, reported late
    trace.evaluate(T + 60)
    assert FindingKind.EVENT_NOT_SENT not in trace.kinds()


def test_a_call_cleared_at_once_is_reopened_when_a_withdrawal_before_it_is_reported_late():
    trace = Trace()
    browser(trace, T - 10, granted(True), first=True)
    trace.deliver(strategy("s1", T, "cr-1"))
    assert trace.consent("s1") == "given"  # the data layer said given when the call came
    browser(trace, T - 2, granted(False))  # the withdrawal's report, late
    assert trace.consent("s1") == "pending"
    trace.evaluate(T + 30)
    assert trace.consent("s1") == "withdrawn"
    assert trace.kinds() == [FindingKind.STALE_CONSENT_REFERENCE]


def test_a_network_signal_before_the_data_layers_withdrawal_clears_nothing():
    trace = Trace()
    trace.page(T - 0.6, cookie=GIVEN, page_load=False)  # the page loaded with consent ...
    browser(trace, T - 0.5, granted(True), first=True)
    browser(trace, T - 0.3, granted(False))  # ... then the shopper withdrew
    trace.send(clickstream("c1", T))  # a tag that ignores the withdrawal
    trace.evaluate(T + 30)
    assert trace.consent("c1") == "withdrawn"
    assert FindingKind.CONSENT_VIOLATION in trace.kinds()


def test_a_report_delayed_in_the_browser_is_placed_by_the_least_delayed_recent_one():
    trace = Trace()
    # Report 1 left at once (offset 0); report 2 waited 1.5 s in the browser before leaving: parse_batch placed its
    # events 1.5 s late, and its offset says so.
    first = BrowserSeen(
        RUN, IP, UA, "page0001", f"{ORIGIN}/", T, (BrowserEvent(T, BrowserEventType.PAGE),), 0.0, ORIGIN
    )
    trace._keep(trace.judge.browser(first))
    late_events = (
        BrowserEvent(T + 1.5 + 1.0, BrowserEventType.PUSH, "ConsentChanged", {"granted": True}),
        BrowserEvent(T + 1.5 + 1.1, BrowserEventType.PUSH, "ProductDetailsPageViewed", {"productSku": "A"}),
    )
    trace.send(consent_reference("r1", T + 1.05))  # the tag's calls, right after the push, arrive first
    trace.deliver(view("c1", T + 1.15, sku="A"))
    trace._keep(
        trace.judge.browser(BrowserSeen(RUN, IP, UA, "page0001", f"{ORIGIN}/", T + 3, late_events, 1.5, ORIGIN))
    )
    trace.evaluate(T + 60)
    assert (trace.consent("r1"), trace.consent("c1")) == ("given", "given")
    [link] = trace.all.links
    assert link.delivery_uid == "c1" and link.pushed_at == pytest.approx(T + 1.1)
    assert trace.kinds() == []
