"""Wire messages: what the proxy's hooks build must become exactly the observations the pipeline expects."""

import dataclasses
import pickle

import pytest
from mitmproxy.http import Headers

from clickwatch.core.model import (
    Answer,
    BrowserReport,
    Kind,
    ObserverBlocked,
    ObserverRejected,
    RequestSeen,
    StorefrontSeen,
)
from clickwatch.store import wire

FIELDS = (
    (b"Host", b"acme.api.us.context.cloud.sap"),
    (b"User-Agent", b"Mozilla/5.0 first"),
    (b"user-agent", b"second"),
    (b"hybris-schema", b"context/commerce/ProductView"),
    (b"X-Odd", b"caf\xe9 \xff"),  # not UTF-8: kept, as mitmproxy keeps it
)


def request_message(fields=FIELDS, target=None):
    return wire.Request(
        "uid-1",
        "run-a",
        "preflight" if target else "clickstream",
        target,
        "POST",
        "https://acme.api.us.context.cloud.sap/edge/clickstreamEvents",
        "acme.api.us.context.cloud.sap",
        "/edge/clickstreamEvents",
        "127.0.0.1",
        fields,
        b'{"productSku":"1"}',
        1700000000.5,
    )


def test_request_message_becomes_the_request_seen():
    seen = wire.observation(request_message())
    assert isinstance(seen, RequestSeen)
    assert seen.kind is Kind.CLICKSTREAM
    assert seen.target is None
    assert seen.uid == "uid-1"
    assert seen.run == "run-a"
    assert seen.raw_body == b'{"productSku":"1"}'
    assert seen.sent_at == 1700000000.5
    # Exactly what mitmproxy's own decoding gives, odd bytes included.
    assert seen.headers == tuple(Headers(list(FIELDS)).items(multi=True))
    # Repeated fields fold as mitmproxy's headers.get folds them.
    assert seen.user_agent == Headers(list(FIELDS)).get("user-agent") == "Mozilla/5.0 first, second"


def test_preflight_target_and_missing_user_agent():
    seen = wire.observation(request_message(fields=((b"Host", b"x"),), target="consent_reference"))
    assert isinstance(seen, RequestSeen)
    assert seen.kind is Kind.PREFLIGHT
    assert seen.target is Kind.CONSENT_REFERENCE
    assert seen.user_agent == ""


def test_answer_message_with_and_without_a_note():
    message = wire.Answer(
        "uid-1",
        "clickstream",
        1.0,
        2.0,
        201,
        ((b"Content-Type", b"application/json"),),
        b"{}",
        None,
    )
    answer = wire.observation(message)
    assert isinstance(answer, Answer)
    assert (answer.status_code, answer.headers, answer.raw_body, answer.error, answer.note) == (
        201,
        (("Content-Type", "application/json"),),
        b"{}",
        None,
        None,
    )
    noted = wire.observation(wire.shed_answer(message, "bulk not kept"))
    assert isinstance(noted, Answer)
    assert (noted.note, noted.headers, noted.raw_body, noted.status_code) == ("bulk not kept", (), b"", 201)
    failed = wire.observation(wire.Answer("uid-2", "tag", 1.0, 3.0, None, (), b"", "connection reset"))
    assert isinstance(failed, Answer)
    assert failed.kind is Kind.TAG
    assert failed.status_code is None
    assert failed.error == "connection reset"


def test_storefront_message_becomes_storefront_seen():
    message = wire.Storefront(
        "run-a",
        "127.0.0.1",
        "Mozilla/5.0",
        10.0,
        10.2,
        "anonymous-consents=x",
        None,
        ("anonymous-consents=y; Path=/",),
        True,
        4,
        15.0,
    )
    seen = wire.observation(message)
    assert isinstance(seen, StorefrontSeen)
    assert seen.set_cookies == ("anonymous-consents=y; Path=/",)
    assert (seen.page_load, seen.repeats, seen.last_at, seen.response_at) == (True, 4, 15.0, 10.2)


@pytest.mark.parametrize(
    ("message", "observed"),
    [(wire.Storefront, StorefrontSeen), (wire.Browser, BrowserReport), (wire.Blocked, ObserverBlocked)],
)
def test_messages_built_field_for_field_carry_the_observations_fields_in_order(message, observed):
    assert message._fields == tuple(field.name for field in dataclasses.fields(observed))


def test_a_batch_crosses_the_pipe_unchanged():
    batch = [
        request_message(),
        wire.Answer("uid-1", "clickstream", 1.0, 2.0, 201, (), b"{}", None),
        wire.Storefront("run-a", "127.0.0.1", "UA", 1.0, None, "", None, (), True),
        wire.Browser("run-a", "127.0.0.1", "UA", 1.0, b"{}", "https://shop.example", 0.5, "t" * 22),
        wire.Blocked("run-a", "127.0.0.1", "UA", 1.0, "https://shop.example/", "script-src"),
        wire.Rejected((("flood", 2),)),
        wire.Config({"config_file": "", "overrides": {}, "expected_status": ""}),
        wire.Webhook("https://hooks.example/x", 10),
        wire.Counts("source", 3, proxy_flows=5, addon_errors=0, store_dropped=1, waiting=2),
    ]
    tags, values = pickle.loads(pickle.dumps(wire.pack(batch)))
    assert all(type(value) is tuple for value in values)  # plain tuples cross the pipe: cheaper to pickle
    again = wire.unpack(tags, values)
    assert again == batch
    assert [type(message) for message in again] == [type(message) for message in batch]
    assert again[0].fields == FIELDS  # read by name on the other side


def test_observed_messages_become_their_observations():
    browser = wire.observation(
        wire.Browser("run-a", "127.0.0.1", "UA", 1.0, b"{}", "https://shop.example", 0.5, "t" * 22)
    )
    assert isinstance(browser, BrowserReport)
    assert (browser.run, browser.received_at, browser.body) == ("run-a", 1.0, b"{}")
    blocked = wire.observation(wire.Blocked("run-a", "127.0.0.1", "UA", 2.0, "https://shop.example/", "csp"))
    assert isinstance(blocked, ObserverBlocked)
    assert (blocked.url, blocked.reason) == ("https://shop.example/", "csp")
    rejected = wire.observation(wire.Rejected((("flood", 2), ("too_large", 1))))
    assert isinstance(rejected, ObserverRejected)
    assert rejected.counts == (("flood", 2), ("too_large", 1))


@pytest.mark.parametrize(
    "message",
    [
        wire.Config({}),
        wire.Webhook("", 10),
        wire.Counts("source", 1, proxy_flows=0, addon_errors=0, store_dropped=0, waiting=0),
    ],
)
def test_other_messages_are_not_observations(message):
    assert not wire.is_observed(message)
    with pytest.raises(ValueError, match="not an observation"):
        wire.observation(message)
