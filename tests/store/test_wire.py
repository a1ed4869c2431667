"""Wire messages: what the proxy's hooks build must become exactly the observations the pipeline expects."""

import pickle

import pytest
from mitmproxy.http import Headers

from clickwatch.core.model import Answer, Kind, RequestSeen, StorefrontSeen
from clickwatch.store import wire

FIELDS = (
    (b"Host", b"acme.api.us.context.cloud.sap"),
    (b"User-Agent", b"Mozilla/5.0 first"),
    (b"user-agent", b"second"),
    (b"hybris-schema", b"context/commerce/ProductView"),
    (b"X-Odd", b"caf\xe9 \xff"),  # not UTF-8: kept, as mitmproxy keeps it
)


def request_message(fields=FIELDS, target=None):
    return (
        wire.REQUEST,
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
    message = (
        wire.ANSWER,
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
    noted = wire.observation((*message[:6], (), b"", None, "bulk not kept"))
    assert isinstance(noted, Answer)
    assert noted.note == "bulk not kept"
    failed = wire.observation((wire.ANSWER, "uid-2", "tag", 1.0, 3.0, None, (), b"", "connection reset"))
    assert isinstance(failed, Answer)
    assert failed.kind is Kind.TAG
    assert failed.status_code is None
    assert failed.error == "connection reset"


def test_storefront_message_becomes_storefront_seen():
    message = (
        wire.STOREFRONT,
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


def test_messages_survive_pickling_unchanged():
    message = request_message()
    assert wire.observation(pickle.loads(pickle.dumps([message]))[0]) == wire.observation(message)


@pytest.mark.parametrize("message", [(wire.CONFIG, {}), ("nonsense",), (wire.COUNTERS, {})])
def test_other_messages_are_not_observations(message):
    with pytest.raises(ValueError, match="not an observation"):
        wire.observation(message)
