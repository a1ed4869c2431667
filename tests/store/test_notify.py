"""Webhook notifications against a real HTTP receiver on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from clickwatch.core.pipeline import Notice
from clickwatch.store.notify import WebhookError, WebhookNotifier, check_url, redact
from tests.webhook_receiver import Receiver, running_receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as server:
        yield server


def notice(n: int, run: str = "default") -> Notice:
    return Notice(run, "clickstream delivery rejected", f"HTTP 400 #{n}", 1000.0 + n)


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_notices_are_posted_as_slack_compatible_json(receiver: Receiver) -> None:
    notifier = WebhookNotifier(receiver.url, min_interval=0, dashboard_url="http://127.0.0.1:8000/")
    notifier.notify([notice(1)])
    assert wait_for(lambda: receiver.bodies)
    notifier.close()
    body = receiver.bodies[0]
    assert "clickstream delivery rejected: HTTP 400 #1" in body["text"]
    assert "http://127.0.0.1:8000/" in body["text"]
    assert body["notices"][0]["run"] == "default"


def test_a_burst_is_rate_limited_into_few_messages(receiver: Receiver) -> None:
    notifier = WebhookNotifier(receiver.url, min_interval=1.0)
    notifier.notify([notice(0)])
    assert wait_for(lambda: len(receiver.bodies) == 1)
    for n in range(1, 31):
        notifier.notify([notice(n)])
    assert wait_for(lambda: len(receiver.bodies) == 2)
    time.sleep(0.3)
    notifier.close()
    assert len(receiver.bodies) == 2
    assert len(receiver.bodies[1]["notices"]) == 30
    assert "and 20 more" in receiver.bodies[1]["text"]
    assert receiver.times[1] - receiver.times[0] >= 0.95


def test_server_errors_are_retried(receiver: Receiver) -> None:
    receiver.statuses = [500, 503]
    notifier = WebhookNotifier(receiver.url, min_interval=0, retries=3)
    notifier.notify([notice(1)])
    assert wait_for(lambda: receiver.bodies)
    notifier.close()
    assert notifier.sent == 1
    assert notifier.failed == 0


def test_an_unreachable_receiver_never_blocks_the_caller(receiver: Receiver) -> None:
    url = receiver.url
    receiver.shutdown()
    receiver.server_close()
    notifier = WebhookNotifier(url, min_interval=0, retries=2, timeout=1.0)
    started = time.monotonic()
    for n in range(5000):
        notifier.notify([notice(n)])
    assert time.monotonic() - started < 0.5
    assert notifier.dropped > 0  # bounded queue: the excess is counted, not buffered without end
    assert wait_for(lambda: notifier.failed >= 1)
    notifier.close()


@pytest.mark.parametrize("url", ["ftp://example.org/x", "not a url", "http://"])
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(WebhookError):
        check_url(url)


def test_logged_urls_hide_the_secret_path() -> None:
    assert "SECRET" not in redact("https://hooks.slack.com/services/T000/B000/SECRET")
    assert "pw" not in redact("https://user:pw@example.org/hook")
