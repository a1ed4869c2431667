"""The webhook, end to end: a rejected delivery through the real proxy reaches a real receiver."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from tests.integration.conftest import Proxy, Upstream, wait_until
from tests.webhook_receiver import Receiver, running_receiver

pytestmark = pytest.mark.integration


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as server:
        yield server


def test_rejected_delivery_is_notified_and_the_proxy_is_not_slowed(
    proxy_factory: Callable[..., Proxy], upstream: Upstream, receiver: Receiver
) -> None:
    proxy = proxy_factory("--set", f"clickwatch_webhook={receiver.url}", "--set", "clickwatch_webhook_interval=0")
    with proxy.client() as client:
        started = time.monotonic()
        answer = client.post(
            upstream.url("/s500/edge/clickstreamEvents"),
            json={"productSku": "1"},
            headers={"hybris-schema": "context/commerce/ProductView", "consent-reference": "cr"},
        )
        assert answer.status_code == 500
        assert time.monotonic() - started < 2.0
    wait_until(lambda: receiver.bodies, 15, "the webhook message")
    assert proxy.stop() == 0
    text = receiver.bodies[0]["text"]
    assert "clickstream delivery rejected: HTTP 500" in text
    assert "SECRET" not in proxy.log()
