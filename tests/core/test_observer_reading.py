"""The observer's side of the core: its report format, and what a page's CSP allows (where its script goes:
test_inject.py)."""

import json

import pytest

from clickwatch.core import csp
from clickwatch.core.model import BrowserEventType, BrowserReport, BrowserSeen
from clickwatch.core.observer import MAX_BODY_BYTES, MAX_EVENTS, ObserveFormatError, ObserveTimeError, parse_batch

SHOP = csp.Origin("https", "shop.example.com", 443)
SCRIPT, REPORT = "/__clickwatch/observer.js", "/__clickwatch/observe"


def body(**overrides: object) -> bytes:
    message: dict[str, object] = {
        "v": 1,
        "page": "abcdefgh12345678",
        "url": "https://shop.example.com/p/1",
        "sent": 10_000.0,
        "events": [
            {"t": 9_000.0, "type": "page"},
            {"t": 9_500.0, "type": "push", "name": "ConsentChanged", "data": {"granted": True}, "early": True},
            {"t": 9_900.0, "type": "navigation", "how": "pushState", "url": "/c/1"},
            {"t": 9_950.0, "type": "reference"},
        ],
    }
    message.update(overrides)
    return json.dumps(message).encode()


def parse(raw: bytes, received_at: float = 500.0, served_at: float = 0.0) -> BrowserSeen:
    """A body as the proxy accepted it for a page of https://shop.example.com served at `served_at`."""
    report = BrowserReport("r", "1.2.3.4", "UA", received_at, raw, "https://shop.example.com", served_at, "t" * 22)
    return parse_batch(report)


# --- the report format ---------------------------------------------------------------------------------------


def test_a_report_is_placed_on_the_proxys_clock():
    seen = parse(body(), received_at=500.0)
    assert (seen.page, seen.url, seen.run) == ("abcdefgh12345678", "https://shop.example.com/p/1", "r")
    assert (seen.origin, seen.served_at, seen.client_addr, seen.user_agent) == (
        "https://shop.example.com",
        0.0,
        "1.2.3.4",
        "UA",
    )
    assert [(e.type, round(e.at, 3)) for e in seen.events] == [
        (BrowserEventType.PAGE, 499.0),
        (BrowserEventType.PUSH, 499.5),
        (BrowserEventType.NAVIGATION, 499.9),
        (BrowserEventType.REFERENCE, 499.95),
    ]
    push = seen.events[1]
    assert (push.name, push.data, push.early) == ("ConsentChanged", {"granted": True}, True)
    assert (seen.events[2].name, seen.events[2].data) == ("pushState", "/c/1")


def test_an_event_stamped_within_a_clock_tick_after_sending_is_placed_at_arrival_not_in_the_future():
    seen = parse(body(events=[{"t": 10_500.0, "type": "page"}]))
    assert seen.events[0].at == 500.0


@pytest.mark.parametrize(
    ("raw", "served_at", "reason"),
    [
        # The repro of issue 22: one report stamped 1e15 ms moved the visitor's clock to year -29605.
        (body(sent=1e15, events=[{"t": 1e15, "type": "page"}]), 0.0, "more than a day from the proxy's"),
        (body(sent=1e15 + 500_000, events=[{"t": 1e15, "type": "page"}]), 0.0, "more than a day"),
        (body(events=[{"t": 20_000.0, "type": "page"}]), 0.0, "later than its batch"),
        # Page served at 499.5 on the proxy's clock: an event placed at 498 is 1.5 s older than the page.
        (body(events=[{"t": 8_000.0, "type": "page"}]), 499.5, "earlier than its page was served"),
    ],
)
def test_a_report_outside_its_pages_life_or_the_proxys_clock_is_refused(raw, served_at, reason):
    with pytest.raises(ObserveTimeError, match=reason) as refused:
        parse(raw, served_at=served_at)
    assert refused.value.reason == "bad_time"


def test_an_event_within_the_tolerance_of_its_pages_serving_counts():
    seen = parse(body(events=[{"t": 9_500.0, "type": "page"}]), served_at=500.0)  # placed 0.5 s before serving
    assert seen.events[0].at == 499.5


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b"{", "not JSON"),
        (b"[" * 50 + b"]" * 50, "nested deeper"),
        (json.dumps([1]).encode(), "not a version 1"),
        (body(v=2), "not a version 1"),
        (body(page="short"), "page id"),
        (body(page="../../etc"), "page id"),
        (body(sent="now"), "sending time"),
        (body(sent=-1), "sending time"),
        (body(events=[]), "1 to 100"),
        (body(events=[{"t": 1, "type": "page"}] * (MAX_EVENTS + 1)), "1 to 100"),
        (body(events=["page"]), "not an object"),
        (body(events=[{"t": 1, "type": "click"}]), "unknown type"),
        (body(events=[{"t": True, "type": "page"}]), "event time"),
        (body(events=[{"t": 1, "type": "push", "name": 7}]), "name"),
        (body(events=[{"t": 1, "type": "push", "name": "x" * 101}]), "name"),
        (body(events=[{"t": 1, "type": "push", "name": "X", "data": {"a": "x" * 5000}}]), "4096"),
        (body(events=[{"t": 1, "type": "navigation", "how": "reload", "url": "/"}]), "how"),
        (body(url="x" * 2001), "page url"),
        (body(events=[{"t": 1e15, "type": "page"}]), "more than a day"),
        (body(sent=1e15), "more than a day from the proxy's"),
        (b" " * (MAX_BODY_BYTES + 1), "larger than"),
    ],
)
def test_anything_else_is_refused_with_a_reason(raw, reason):
    with pytest.raises(ObserveFormatError, match=reason):
        parse(raw)


# --- what a Content-Security-Policy allows ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policies", "allowed", "nonce"),
    [
        ([], True, None),
        (["default-src 'self'"], True, None),
        (["script-src 'self' https://tag.static.us.context.cloud.sap; connect-src *"], True, None),
        (["script-src https://shop.example.com"], True, None),
        (["script-src *.example.com"], True, None),
        (["script-src https:"], True, None),
        (["script-src *"], True, None),
        (["script-src 'nonce-abc' 'strict-dynamic'"], True, "abc"),
        (["script-src 'self' 'nonce-abc'", "script-src 'self'"], True, "abc"),
        (["img-src 'none'"], True, None),
        (["script-src 'none'"], False, None),
        (["script-src 'sha256-AAAA'"], False, None),
        (["script-src 'self' 'strict-dynamic'"], False, None),
        (["script-src https://shop.example.com/static/"], False, None),
        (["script-src https://shop.example.com/__clickwatch/observer.js"], True, None),
        (["script-src https://shop.example.com:8443"], False, None),
        (["script-src http://other.example.com"], False, None),
        (["default-src 'none'; script-src 'self'"], False, None),  # reports: connect-src falls back to 'none'
        (["script-src 'self'; connect-src https://tenant.example"], False, None),
        (["script-src 'self'", "script-src 'none'"], False, None),  # every policy must allow it
        (["script-src 'self', script-src 'none'"], False, None),  # two policies in one header
        (["sandbox allow-forms"], False, None),
        (["script-src-elem 'self'; script-src 'none'"], True, None),
    ],
)
def test_every_enforced_policy_must_allow_the_script_and_its_reports(policies, allowed, nonce):
    decision = csp.decide(policies, SHOP, SCRIPT, REPORT)
    assert (decision.allowed, decision.nonce) == (allowed, nonce)
    assert bool(decision.reason) is not allowed
