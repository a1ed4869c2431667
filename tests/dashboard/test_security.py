"""Access to the dashboard: signed sessions, throttled guessing, cross-origin writes refused, bodies bounded."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from clickwatch.dashboard.security import COOKIE, GUESSES_PER_MINUTE, MAX_BODY_BYTES, Sessions, Throttle, client_key
from tests.dashboard.conftest import T0, StoreBuilder

TOKEN = "s3cret-token-for-tests"


@pytest.fixture
def filled(store_builder: Callable[..., StoreBuilder]) -> StoreBuilder:
    store = store_builder()
    store.page(at=T0, consent="GIVEN")
    store.event(at=T0 + 1)
    store.event(at=T0 + 2, run="other")
    store.close()
    return store


@pytest.fixture
def guarded(filled: StoreBuilder, client_for: Callable[..., TestClient]) -> TestClient:
    return client_for(filled.path, listen_host="0.0.0.0", token=TOKEN)


@pytest.fixture
def client(filled: StoreBuilder, client_for: Callable[..., TestClient]) -> TestClient:
    return client_for(filled.path)


def _count(client: TestClient, **headers: str) -> int:
    return len(client.get("/api/deliveries", headers=headers).json()["items"])


# --- sessions -----------------------------------------------------------------------------------------------


def test_a_session_is_signed_expires_and_never_holds_the_token() -> None:
    sessions = Sessions(TOKEN, lifetime=60)
    value = sessions.issue(now=1000.0)
    assert TOKEN not in value
    assert sessions.valid(value, now=1059.0)
    assert not sessions.valid(value, now=1060.0)  # expired
    expiry, ident, signature = value.split(".")
    assert not sessions.valid(f"{int(expiry) + 3600}.{ident}.{signature}", now=1000.0)  # expiry pushed on
    assert not sessions.valid(f"{expiry}.{ident}x.{signature}", now=1000.0)
    assert not Sessions("another token").valid(value, now=1000.0)  # a new token ends every session
    assert Sessions(TOKEN).valid(value, now=1000.0)  # a restart with the same token keeps it
    for junk in ("", TOKEN, "a.b.c", "1.2", "x" * 500, None):
        assert not sessions.valid(junk, now=1000.0)
    assert sessions.issue(now=0) != sessions.issue(now=0)  # a random id each


def test_login_sets_a_signed_expiring_cookie_and_the_raw_token_is_no_cookie(guarded: TestClient) -> None:
    answer = guarded.post("/login", data={"token": TOKEN, "next": "/"}, follow_redirects=False)
    assert answer.status_code == 303
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=") and TOKEN not in cookie
    for attribute in ("HttpOnly", "SameSite=strict", "Max-Age=43200", "Path=/"):
        assert attribute in cookie
    assert "Secure" not in cookie  # plain http on loopback: a Secure cookie would never come back
    assert guarded.get("/api/summary").status_code == 200
    guarded.cookies.clear()
    guarded.cookies.set(COOKIE, TOKEN)  # the token itself is not a session
    assert guarded.get("/api/summary").status_code == 401
    guarded.cookies.set("clickwatch_token", TOKEN)  # nor the old cookie
    assert guarded.get("/api/summary").status_code == 401


def test_the_cookie_is_secure_over_https(filled: StoreBuilder, client_for: Callable[..., TestClient]) -> None:
    client = client_for(filled.path, listen_host="0.0.0.0", token=TOKEN)
    client.base_url = client.base_url.copy_with(scheme="https")  # type: ignore[assignment]
    answer = client.post(
        "/login", data={"token": TOKEN}, headers={"Origin": "https://127.0.0.1:8000"}, follow_redirects=False
    )
    assert answer.status_code == 303
    assert "Secure" in answer.headers["set-cookie"]


# --- throttling ---------------------------------------------------------------------------------------------


def test_login_guesses_are_throttled_per_address_with_retry_after(guarded: TestClient) -> None:
    # A throttled address has a token compared at most every `check_every` s (test_review_login.py covers that
    # rhythm with its own clock): here no second passes on a slow machine, so every throttled try is unread.
    guarded.app.state.throttle.check_every = 3600.0  # type: ignore[attr-defined]
    for _ in range(GUESSES_PER_MINUTE):
        assert guarded.post("/login", data={"token": "guess"}).status_code == 401
    throttled = guarded.post("/login", data={"token": "guess"})
    assert throttled.status_code == 429
    wait = int(throttled.headers["retry-after"])
    assert 1 <= wait <= 60
    assert f"try again in {wait} s" in throttled.text  # the form says so, for a person at a browser
    # Within the compare rhythm even the right token waits: a guesser cannot tell a hit while throttled.
    assert guarded.post("/login", data={"token": TOKEN}, follow_redirects=False).status_code == 429
    # The API's bearer tokens count against the same address.
    assert guarded.get("/api/summary", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 429
    # Another address is not held back by this one.
    other = TestClient(guarded.app, base_url="http://127.0.0.1:8000", client=("10.0.0.9", 50000))
    assert other.post("/login", data={"token": TOKEN}, follow_redirects=False).status_code == 303


def test_wrong_bearer_tokens_are_throttled_too(guarded: TestClient) -> None:
    for _ in range(GUESSES_PER_MINUTE):
        assert guarded.get("/api/summary", headers={"Authorization": "Bearer guess"}).status_code == 401
    assert guarded.get("/api/summary", headers={"X-Clickwatch-Token": "guess"}).status_code == 429
    assert guarded.get("/api/summary").status_code == 401  # no token at all: no guess, just refused
    assert guarded.get("/healthz").status_code == 200


def test_the_throttle_forgets_after_its_window_and_on_success() -> None:
    throttle = Throttle(limit=3, window=60.0)
    for at in (0.0, 1.0, 2.0):
        assert throttle.retry_after("a", now=at) == 0
        throttle.failed("a", now=at)
    assert throttle.retry_after("a", now=2.5) == 58
    assert throttle.retry_after("a", now=60.5) == 0  # the first failure left the window
    throttle.failed("a", now=61.0)
    assert throttle.retry_after("a", now=61.0) == 0  # 2.0 and 61.0 in the window: two of three
    throttle.failed("a", now=61.5)
    assert throttle.retry_after("a", now=61.5) == 1  # until 2.0 leaves the window at 62.0
    throttle.succeeded("a")
    assert throttle.retry_after("a", now=61.5) == 0
    assert client_key("2001:db8::1") == client_key("2001:db8::ffff") == "2001:db8::/64"
    assert client_key("::ffff:10.0.0.1") == "10.0.0.1"


def test_the_throttle_holds_a_bounded_number_of_addresses() -> None:
    throttle = Throttle(limit=1)
    for n in range(20_000):
        throttle.failed(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}", now=0.0)
    assert len(throttle._failures) == 10_000


# --- cross-origin writes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://127.0.0.1:9999"},  # another port of the same machine is another origin
        {"Origin": "http://localhost:8000"},
        {"Origin": "https://127.0.0.1:8000"},
        {"Origin": "null"},  # sandboxed frames, file:// pages
        {"Origin": "http://127.0.0.1:8000", "Sec-Fetch-Site": "same-site"},
        {"Origin": "http://127.0.0.1:8000", "Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Sec-Fetch-Site": "cross-site", "Content-Type": "application/x-www-form-urlencoded"},
        {"Origin": "http://[::1"},  # unreadable
    ],
)
def test_writes_from_any_other_origin_are_refused(client: TestClient, headers: dict[str, str]) -> None:
    before = _count(client)
    answer = client.post("/api/reset", headers=headers)
    assert answer.status_code == 403
    assert _count(client) == before > 0


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://127.0.0.1:8000", "Sec-Fetch-Site": "same-origin"},
        {"Origin": "http://127.0.0.1:8000"},
        {},  # curl, CI scripts
        {"Sec-Fetch-Site": "none"},
        {"Origin": "null", "Sec-Fetch-Site": "same-origin"},  # the dashboard's own form (no-referrer pages)
    ],
)
def test_own_origin_and_script_writes_are_allowed(client: TestClient, headers: dict[str, str]) -> None:
    assert client.post("/api/reset", params={"run": "other"}, headers=headers).status_code == 200


def test_login_from_another_origin_is_refused(guarded: TestClient) -> None:
    answer = guarded.post(
        "/login", data={"token": TOKEN}, headers={"Origin": "http://127.0.0.1:9999"}, follow_redirects=False
    )
    assert answer.status_code == 403
    assert "set-cookie" not in answer.headers


# --- bounded bodies -----------------------------------------------------------------------------------------


def _chunks(total: int, size: int = 65536) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield b"a" * min(size, total - sent)
        sent += size


def test_large_bodies_are_refused_before_they_are_read(client: TestClient, guarded: TestClient) -> None:
    assert client.post("/api/reset", content=b"x" * (MAX_BODY_BYTES + 1)).status_code == 413
    assert client.post("/api/reset", content=b"x" * 100, params={"run": "nothing"}).status_code == 200
    assert guarded.post("/login", content=_chunks(1_000_000)).status_code == 413  # chunked: counted as it comes
    assert guarded.post("/login", content=b"token=" + b"a" * 9000).status_code == 413
    assert _count(client) > 0
