"""The rule that binds an observer report to the page clickwatch served it with (core.observer), and what the judge
lets a report decide: only its own site's calls, and never a clock outside its page's life (issue 22)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from clickwatch.core.config import Config
from clickwatch.core.findings import FindingKind
from clickwatch.core.inject import inject, script_element
from clickwatch.core.model import BrowserEvent, BrowserEventType, BrowserReport, BrowserSeen
from clickwatch.core.observer import (
    GRANT_SECONDS,
    MAX_EVENTS,
    PAGE_MAX_EVENTS,
    REFUSALS,
    TOKEN_ATTRIBUTE,
    Budget,
    ReportFacts,
    grant,
    new_token,
    page_origin,
    refusal,
    token_of,
)
from clickwatch.core.pipeline import Pipeline
from tests.core.test_judge import IP, ORIGIN, RUN, UA, Trace, clickstream

SERVED = 1_000.0
TOKEN = "abcdefghijklmnopqrstuv"
SHOP = grant(TOKEN, "A", "::ffff:10.0.0.7", UA, "https://Shop.Example.com:443/p/1?x=1", SERVED)
OWN = ReportFacts("https://shop.example.com", "https://shop.example.com", "same-origin", "10.0.0.7", UA, SERVED + 5)


# --- the token --------------------------------------------------------------------------------------------------


def test_a_token_is_unguessable_and_rides_in_the_injected_element():
    tokens = {new_token() for _ in range(1000)}
    assert len(tokens) == 1000 and all(len(t) == 22 for t in tokens)
    element = script_element("n0nce", TOKEN)
    assert (
        element
        == f'<script src="/__clickwatch/observer.js" {TOKEN_ATTRIBUTE}="{TOKEN}" nonce="n0nce"></script>'.encode()
    )
    assert inject(b"<html><head><title>", "text/html", script_element(None, TOKEN)) == (
        b'<html><head><script src="/__clickwatch/observer.js" data-clickwatch-page="' + TOKEN.encode() + b'">'
        b"</script><title>"
    )
    assert b"data-clickwatch-page" not in script_element(None, '"><script>alert(1)</script>')


@pytest.mark.parametrize(
    ("target", "token"),
    [
        (f"/__clickwatch/observe?token={TOKEN}", TOKEN),
        (f"https://shop.example.com/__clickwatch/observe?token={TOKEN}", TOKEN),
        ("/__clickwatch/observe", None),
        ("/__clickwatch/observe?token=", None),
        ("/__clickwatch/observe?token=short", None),
        (f"/__clickwatch/observe?token={TOKEN}&token={TOKEN}", None),
        ("/__clickwatch/observe?token=abcdefghijklmnopqrst%3C%3E", None),
    ],
)
def test_the_token_is_read_from_the_observe_url(target, token):
    assert token_of(target) == token


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://Shop.Example.com:443/p/1", "https://shop.example.com"),
        ("http://localhost:8080/", "http://localhost:8080"),
        ("http://shop.example.com:80", "http://shop.example.com"),
        ("https://[::1]:8443/x", "https://[::1]:8443"),
        ("null", None),
        ("ftp://shop.example.com/", None),
        ("https://shop.example.com:99999/", None),
    ],
)
def test_a_page_origin_is_spelled_as_a_browsers_origin_header(url, origin):
    assert page_origin(url) == origin


# --- the rule ---------------------------------------------------------------------------------------------------


def test_the_pages_own_report_counts_with_or_without_the_headers_a_browser_may_leave_out():
    assert SHOP.origin == "https://shop.example.com" and SHOP.expires_at == SERVED + GRANT_SECONDS
    assert refusal(SHOP, OWN) is None
    assert refusal(SHOP, replace(OWN, origin=None, fetch_site=None)) is None


@pytest.mark.parametrize(
    ("page", "facts", "reason"),
    [
        (None, OWN, "unbound"),
        (replace(SHOP, origin=""), OWN, "unbound"),
        (SHOP, replace(OWN, received_at=SERVED + GRANT_SECONDS + 1), "expired"),
        (SHOP, replace(OWN, sent_to="https://other.example.com"), "wrong_host"),
        (SHOP, replace(OWN, sent_to="http://shop.example.com"), "wrong_host"),
        (SHOP, replace(OWN, origin="https://evil.example"), "wrong_origin"),
        (SHOP, replace(OWN, origin="null"), "wrong_origin"),  # a sandboxed frame
        (SHOP, replace(OWN, origin=None, fetch_site="cross-site"), "wrong_origin"),
        (SHOP, replace(OWN, fetch_site="same-site"), "wrong_origin"),
        (SHOP, replace(OWN, client_addr="10.0.0.8"), "wrong_visitor"),
        (SHOP, replace(OWN, user_agent=UA + " other"), "wrong_visitor"),
    ],
)
def test_anything_else_is_refused_with_its_reason(page, facts, reason):
    assert reason in REFUSALS
    assert refusal(page, facts) == reason


def test_a_budget_caps_each_page_and_each_visitor_per_hour():
    budget = Budget(per_page=10, per_visitor_hour=15, max_keys=100)
    visitor = ("run", "visitor")
    assert budget.spend("p1", visitor, 10, 0.0) is None
    assert budget.spend("p1", visitor, 1, 1.0) == "page_cap"
    assert budget.spend("p2", visitor, 6, 2.0) == "visitor_cap"  # nothing spent when refused
    assert budget.spend("p2", visitor, 5, 3.0) is None
    assert budget.spend("p3", visitor, 1, 3599.0) == "visitor_cap"
    assert budget.spend("p3", visitor, 1, 3600.0) is None  # a new hour
    assert budget.spend("p1", ("run", "other"), 1, 3600.0) == "page_cap"


def test_a_budget_forgets_the_oldest_beyond_its_size():
    budget = Budget(per_page=1, per_visitor_hour=1000, max_keys=3)
    for n in range(4):
        assert budget.spend(f"p{n}", ("v",), 1, 0.0) is None
    assert budget.spend("p0", ("v",), 1, 0.0) is None  # forgotten: only memory is bounded, never a wrong refusal
    assert budget.spend("p3", ("v",), 1, 0.0) == "page_cap"


def test_the_store_drops_events_beyond_a_pages_cap_and_counts_them():
    pipeline = Pipeline()
    events = [{"t": 1_000_000.0, "type": "page"}] * MAX_EVENTS
    reasons = []
    for n in range(PAGE_MAX_EVENTS // MAX_EVENTS + 1):
        body = json.dumps({"v": 1, "page": f"page{n:06d}", "url": "https://shop.example.com/", "sent": 1_000_000.0,
                           "events": events}).encode()  # fmt: skip
        report = BrowserReport("A", IP, UA, 1000.0 + n * 0.001, body, "https://shop.example.com", 999.0, TOKEN)
        reasons.append([reason for reason, _, _ in pipeline.process(report).rejected])
    assert reasons[:-1] == [[]] * (PAGE_MAX_EVENTS // MAX_EVENTS)
    assert reasons[-1] == ["page_cap"]


# --- what a report may decide -----------------------------------------------------------------------------------

T = 5000.0
OTHER = "https://other.example"


def report(trace: Trace, at: float, *events: tuple[str, object], origin: str = ORIGIN, served_at: float | None = None):
    items = [BrowserEvent(at, BrowserEventType.PAGE)]
    items += [
        BrowserEvent(at + 0.01 * n, BrowserEventType.PUSH, name, data) for n, (name, data) in enumerate(events, 1)
    ]
    seen = BrowserSeen(RUN, IP, UA, "page0001", f"{origin}/", at + 0.3, tuple(items), 0.0, origin, served_at)
    return trace._keep(trace.judge.browser(seen))


def test_another_sites_data_layer_decides_neither_the_consent_nor_the_loss_of_the_shops_calls():
    trace = Trace()
    trace.page(T - 10)  # the shop's page, without consent
    report(trace, T - 10, ("ConsentChanged", {"granted": False}))
    report(trace, T - 5, ("ConsentChanged", {"granted": True}), origin=OTHER)  # another tab, another site
    trace.send(clickstream("c1", T))
    trace.evaluate(T + 60, final=True)
    assert trace.consent("c1") == "absent"  # never given on the shop: the other site's grant counts for nothing
    assert FindingKind.CONSENT_VIOLATION in trace.kinds()


def test_another_sites_pushes_pair_with_none_of_the_shops_posts():
    trace = Trace(Config(reconcile_seconds=2))
    report(trace, T - 1, ("ConsentChanged", {"granted": True}))
    sku = {"productSku": "779864", "productName": "Camera"}
    report(trace, T - 0.5, ("ProductDetailsPageViewed", sku), origin=OTHER)
    trace.send(clickstream("c1", T))
    report(trace, T + 1)  # the shop's page reports on after the POST
    trace.evaluate(T + 60, final=True)
    # The shop's POST has no push of its own site: the other site's push does not explain it.
    assert FindingKind.EVENT_WITHOUT_PUSH in trace.kinds()


def test_a_report_with_a_clock_an_hour_ahead_moves_no_later_page_out_of_its_life():
    # The repro of issue 22: one report with `sent` an hour ahead made a later healthy visit look late by an hour
    # (event_not_sent, no_events_after_consent, event_without_push).
    trace = Trace(Config(reconcile_seconds=2, silence_seconds=30))
    ahead = BrowserSeen(
        RUN, IP, UA, "page0001", f"{ORIGIN}/", T, (BrowserEvent(T, BrowserEventType.PAGE),), -3600.0, ORIGIN, T - 1
    )
    trace._keep(trace.judge.browser(ahead))
    trace.page(T + 10, cookie="", page_load=True)
    sku = {"productSku": "779864", "productName": "Camera"}
    report(trace, T + 10.1, ("ConsentChanged", {"granted": True}), ("ProductDetailsPageViewed", sku), served_at=T + 10)
    trace.send(clickstream("c1", T + 10.2))
    trace.evaluate(T + 100, final=True)
    assert trace.kinds() == []
    assert trace.consent("c1") == "given"
    pushes = [p for p in trace.all.pushes if p.name == "ProductDetailsPageViewed"]
    assert pushes and all(p.at >= T + 10 for p in pushes)


def test_the_sites_one_browser_reports_for_are_remembered_within_a_bound():
    trace = Trace()
    for n in range(100):
        report(trace, T + n, ("ConsentChanged", {"granted": n % 2 == 0}), origin=f"https://site{n}.example")
    [visitor] = trace.judge._visitors.values()
    assert len(visitor.site_layers) <= 64 and len(visitor.site_marks) <= 64
    assert "https://site99.example" in visitor.site_layers and "https://site0.example" not in visitor.site_layers
