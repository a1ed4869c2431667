"""Review item (e): the right token always gets in, also while its address waits for wrong guesses (everyone behind
a reverse proxy shares one address); wrong guesses still wait; the login form works without Sec-Fetch-Site
(Safari before 16.4) because pages no longer send Referrer-Policy: no-referrer; a cross-site form is still refused."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from clickwatch.dashboard.security import COOKIE, GUESSES_PER_MINUTE, THROTTLED_CHECK_SECONDS, Throttle
from tests.dashboard.conftest import T0, StoreBuilder

TOKEN = "s3cret-token-for-review"
OWN = "http://127.0.0.1:8000"


@pytest.fixture
def guarded(store_builder: Callable[..., StoreBuilder], client_for: Callable[..., TestClient]) -> TestClient:
    store = store_builder()
    store.event(at=T0 + 1)
    store.close()
    client = client_for(store.path, listen_host="0.0.0.0", token=TOKEN)
    client.app.state.throttle.check_every = CHECK_EVERY  # type: ignore[attr-defined]
    return client


# The compare rhythm of a waiting address, shortened so that the tests need not sleep 12 s (the default's own
# bound is checked below).
CHECK_EVERY = 0.5


def test_the_default_rhythm_keeps_guessing_within_the_limit() -> None:
    """A waiting address gets about as many compares as the limit allows, however long it tries: 5 a minute, plus
    the compare every 12 s that lets a right token in (each such wrong one pushes the oldest out of the count), so
    at most twice the limit; one a second, as the first version allowed, would be 3,600 an hour."""
    assert THROTTLED_CHECK_SECONDS * GUESSES_PER_MINUTE >= 60.0
    throttle = Throttle()
    compared = [0]

    def wrong() -> bool:
        compared[0] += 1
        return False

    for second in range(3600):  # an hour of one guess a second from one address
        assert throttle.check("guesser", wrong, now=float(second))[0] is False
    assert compared[0] <= 2 * GUESSES_PER_MINUTE * 60  # measured: 358 (about 6 a minute)
    assert compared[0] >= 3600 / THROTTLED_CHECK_SECONDS  # and still compared: a right token would get in


def _throttle(client: TestClient) -> None:
    """One user behind the reverse proxy mistypes until the proxy's address waits."""
    for _ in range(GUESSES_PER_MINUTE):
        assert client.post("/login", data={"token": "typo"}).status_code == 401
    wrong = client.post("/login", data={"token": "typo"})
    assert wrong.status_code == 429 and 1 <= int(wrong.headers["retry-after"]) <= 60


def test_the_right_token_gets_in_while_the_shared_address_waits_for_wrong_ones(guarded: TestClient) -> None:
    _throttle(guarded)
    time.sleep(CHECK_EVERY + 0.05)  # another user, a moment later, from the same proxy address
    answer = guarded.post("/login", data={"token": TOKEN, "next": "/runs"}, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/runs"
    assert COOKIE in answer.cookies
    # The right token cleared the address's count: the next typo is a plain 401 again.
    guarded.cookies.clear()
    assert guarded.post("/login", data={"token": "typo"}).status_code == 401


def test_a_right_bearer_token_gets_in_while_the_address_waits_and_wrong_ones_still_wait(guarded: TestClient) -> None:
    for _ in range(GUESSES_PER_MINUTE):
        assert guarded.get("/api/summary", headers={"Authorization": "Bearer typo"}).status_code == 401
    refused = guarded.get("/api/summary", headers={"Authorization": "Bearer typo"})
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    time.sleep(CHECK_EVERY + 0.05)
    assert guarded.get("/api/summary", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_a_waiting_address_has_one_token_a_second_compared_at_most() -> None:
    throttle = Throttle(limit=2, window=60.0, check_every=1.0)
    compared: list[str] = []

    def token(value: str) -> Callable[[], bool]:
        return lambda: compared.append(value) or value == TOKEN

    assert throttle.check("proxy", token("a"), now=0.0) == (False, 0)
    assert throttle.check("proxy", token("b"), now=0.1) == (False, 0)
    granted, wait = throttle.check("proxy", token("c"), now=0.2)  # past the limit: compared, then 429
    assert not granted and wait >= 59
    # Sooner than a second after: answered 429 without being compared, the right token too (a guesser learns
    # nothing faster than one answer a second).
    assert throttle.check("proxy", token(TOKEN), now=0.5) == (False, wait)
    assert compared == ["a", "b", "c"]
    assert throttle.check("proxy", token(TOKEN), now=1.3) == (True, 0)  # a second later: compared, let in
    assert throttle.check("proxy", token("d"), now=1.4) == (False, 0)  # and the count starts again
    assert throttle.check("other", token("x"), now=1.4) == (False, 0)  # another address is not held back


def test_pages_send_a_same_origin_referrer_policy_not_no_referrer(guarded: TestClient) -> None:
    form = guarded.get("/login")
    assert form.headers["referrer-policy"] == "same-origin"
    assert 'content="no-referrer"' not in form.text


def test_the_login_form_from_a_browser_without_sec_fetch_site_gets_in(guarded: TestClient) -> None:
    # Safari before 16.4 sends no Sec-Fetch-Site; with the same-origin policy it sends its real Origin.
    answer = guarded.post(
        "/login", data={"token": TOKEN}, headers={"Origin": OWN, "Referer": f"{OWN}/login"}, follow_redirects=False
    )
    assert answer.status_code == 303 and COOKIE in answer.cookies


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://127.0.0.1:9999"},  # a form on another port
        {"Origin": "https://evil.example", "Referer": "https://evil.example/x"},
        {"Origin": "null"},  # a sandboxed frame or a file:// page
        {"Origin": "null", "Referer": f"{OWN}/login"},  # a Referer is easy to have: still not enough
        {"Origin": OWN, "Sec-Fetch-Site": "cross-site"},
    ],
)
def test_a_cross_site_login_form_is_still_refused(guarded: TestClient, headers: dict[str, str]) -> None:
    answer = guarded.post("/login", data={"token": TOKEN}, headers=headers, follow_redirects=False)
    assert answer.status_code == 403
    assert "set-cookie" not in answer.headers
