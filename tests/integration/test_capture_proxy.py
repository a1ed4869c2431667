"""End to end through the real proxy: client -> mitmdump + clickwatch addon -> upstream, stored in SQLite.

Every tracking request sent through the proxy must end as exactly one delivery row with the right verdict,
and the traffic itself must reach the upstream untouched.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import re
import sqlite3
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from .conftest import ADDON, MITMDUMP, REPO, Proxy, Upstream, free_port, wait_until

pytestmark = pytest.mark.integration

PRODUCT_VIEW = {
    "productSku": "300938",
    "productName": "Photosmart E317 Digital Camera",
    "productPrice": 114.12,
    "productCategory": "575",
    "productCategoryName": "Digital Compacts",
    "categories": ["575", "brand_745"],
}
TRACKING_HEADERS = {
    "hybris-schema": "context/commerce/ProductView",
    "consent-reference": "cr-7c1e2f30-0d5b-4bb8-9f21-5f2d1f3e9a10",
    "Origin": "https://shop.example",
    "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) clickwatch-integration",
}


def _only(rows: list[dict], path: str) -> dict:
    """The one row stored for `path`; fails if there are none or several."""
    matching = [r for r in rows if r["path"] == path]
    assert len(matching) == 1, f"expected exactly one delivery for {path}, got {len(matching)}: {matching}"
    return matching[0]


def _stopped_rows(proxy: Proxy, expected: int) -> list[dict]:
    """Stop the proxy (it flushes its queue on SIGINT) and return the rows, checking how many there are."""
    assert proxy.stop() == 0, proxy.log()
    rows = proxy.deliveries()
    assert len(rows) == expected, f"expected {expected} deliveries, got {len(rows)}: {[r['path'] for r in rows]}"
    return rows


def test_delivered_clickstream_is_stored_with_its_details(proxy: Proxy, upstream: Upstream) -> None:
    path = "/s201/delivered/edge/clickstreamEvents"
    headers = {
        **TRACKING_HEADERS,
        "Authorization": "Bearer s3cret",
        # Values chosen so they cannot turn up by chance inside a hex uid or visitor key.
        "Cookie": "anonymous-consents=abcConsentValue; JSESSIONID=xyzSessionValue",
    }
    with proxy.client() as client:
        response = client.post(upstream.url(path), json=PRODUCT_VIEW, headers=headers)
    assert response.status_code == 201
    assert response.json() == {"ok": True}

    # The upstream got the request exactly as sent: credentials are only redacted in the store.
    (received,) = upstream.received_at(path)
    assert json.loads(received.body) == PRODUCT_VIEW
    assert received.header("authorization") == "Bearer s3cret"
    assert received.header("cookie") == headers["Cookie"]

    (row,) = _stopped_rows(proxy, 1)
    assert row["path"] == path
    assert row["kind"] == "clickstream"
    assert row["target_kind"] is None
    assert row["verdict"] == "delivered"
    assert row["status_code"] == 201
    assert row["error"] is None
    assert row["method"] == "POST"
    assert row["url"] == upstream.url(path)
    assert row["run"] == "default"
    assert row["schema"] == "context/commerce/ProductView"
    assert row["schema_name"] == "ProductView"
    assert row["consent_reference"] == TRACKING_HEADERS["consent-reference"]
    assert row["origin"] == "https://shop.example"
    assert row["user_agent"] == TRACKING_HEADERS["User-Agent"]
    assert row["client_addr"] == "127.0.0.1"
    assert re.fullmatch(r"[0-9a-f]{16}", row["visitor"])
    assert re.fullmatch(r"[0-9a-f]{32}", row["uid"])

    assert row["request_body_kind"] == "json"
    assert json.loads(row["request_body"]) == PRODUCT_VIEW
    assert row["request_body_size"] == len(received.body)
    assert row["request_body_truncated"] == 0
    assert row["response_body_kind"] == "json"
    assert json.loads(row["response_body"]) == {"ok": True}

    assert row["sent_at"] > 0
    assert row["answered_at"] >= row["sent_at"]
    assert row["ended_at"] == row["answered_at"]
    assert row["duration_ms"] > 0

    # Not in the row, and not anywhere else in the database either (findings, consent signals, visitors...).
    stored = json.dumps(row)
    conn = sqlite3.connect(proxy.db_path)
    try:
        everything = "\n".join(conn.iterdump())
    finally:
        conn.close()
    for secret in ("s3cret", "abcConsentValue", "xyzSessionValue"):
        assert secret not in stored
        assert secret not in everything
    assert "JSESSIONID" in stored and "anonymous-consents" in stored
    request_headers = {k.lower(): v for k, v in json.loads(row["request_headers"])}
    assert request_headers["authorization"] == "Bearer <redacted>"
    assert request_headers["cookie"] == "anonymous-consents=<redacted>; JSESSIONID=<redacted>"
    assert request_headers["hybris-schema"] == "context/commerce/ProductView"


def test_error_statuses_are_rejected(proxy: Proxy, upstream: Upstream) -> None:
    paths = {400: "/s400/rejected/edge/clickstreamEvents", 500: "/s500/rejected/edge/clickstreamEvents"}
    with proxy.client() as client:
        for status, path in paths.items():
            assert client.post(upstream.url(path), json=PRODUCT_VIEW, headers=TRACKING_HEADERS).status_code == status

    rows = _stopped_rows(proxy, 2)
    for status, path in paths.items():
        row = _only(rows, path)
        assert row["verdict"] == "rejected"
        assert row["status_code"] == status
        assert row["error"] is None
        assert row["answered_at"] is not None
        assert json.loads(row["response_body"]) == {"error": "rejected by test upstream"}


def test_connection_reset_by_upstream_is_failed(proxy: Proxy, upstream: Upstream) -> None:
    path = "/reset/failed/edge/clickstreamEvents"
    with proxy.client() as client:
        response = client.post(upstream.url(path), json=PRODUCT_VIEW, headers=TRACKING_HEADERS)
    assert response.status_code == 502  # mitmproxy answers the client itself when the upstream aborts
    assert len(upstream.received_at(path)) == 1

    (row,) = _stopped_rows(proxy, 1)
    assert row["path"] == path
    assert row["verdict"] == "failed"
    assert row["status_code"] is None
    assert row["error"]
    assert row["answered_at"] is None
    assert row["ended_at"] >= row["sent_at"]
    assert row["response_headers"] is None


def test_hanging_upstream_is_pending_then_failed_when_client_gives_up(proxy: Proxy, upstream: Upstream) -> None:
    path = "/hang/timeout/edge/clickstreamEvents"
    outcome: list[BaseException | httpx.Response] = []

    # The client waits 4 s: long enough for the first delivery of a fresh proxy (its store process starting and
    # creating the file) to show as pending on a loaded machine, before the client gives up.
    def send() -> None:
        with proxy.client(timeout=4.0) as client:
            try:
                outcome.append(client.post(upstream.url(path), json=PRODUCT_VIEW, headers=TRACKING_HEADERS))
            except httpx.HTTPError as exc:
                outcome.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        pending = wait_until(
            lambda: [r for r in proxy.deliveries() if r["path"] == path and r["verdict"] == "pending"],
            timeout=3.8,
            what="the hanging delivery to show as pending while the client waits",
        )
    finally:
        sender.join(10)
    assert not sender.is_alive()
    assert len(pending) == 1
    assert pending[0]["status_code"] is None
    assert pending[0]["ended_at"] is None
    assert len(outcome) == 1 and isinstance(outcome[0], httpx.TimeoutException), outcome

    # The proxy notices the client hung up and ends the delivery without waiting for shutdown.
    failed = wait_until(
        lambda: [r for r in proxy.deliveries() if r["path"] == path and r["verdict"] == "failed"],
        timeout=5.0,
        what="the hanging delivery to be failed after the client gave up",
    )
    assert failed[0]["uid"] == pending[0]["uid"]
    assert failed[0]["status_code"] is None
    assert failed[0]["error"]
    assert failed[0]["duration_ms"] >= 1000

    (row,) = _stopped_rows(proxy, 1)
    assert row["verdict"] == "failed"


def test_gzip_request_body_is_stored_decoded_and_forwarded_unchanged(proxy: Proxy, upstream: Upstream) -> None:
    path = "/s201/gzip/edge/clickstreamEvents"
    raw = gzip.compress(json.dumps(PRODUCT_VIEW).encode(), mtime=0)
    headers = {**TRACKING_HEADERS, "Content-Type": "application/json", "Content-Encoding": "gzip"}
    with proxy.client() as client:
        assert client.post(upstream.url(path), content=raw, headers=headers).status_code == 201

    (received,) = upstream.received_at(path)
    assert received.body == raw
    assert received.header("content-encoding") == "gzip"
    assert received.header("content-length") == str(len(raw))

    (row,) = _stopped_rows(proxy, 1)
    assert row["verdict"] == "delivered"
    assert row["request_body_kind"] == "json"
    assert json.loads(row["request_body"]) == PRODUCT_VIEW
    assert row["request_body_size"] == len(json.dumps(PRODUCT_VIEW).encode())
    assert row["request_body_note"] is None


def test_beacon_text_plain_json_is_stored_as_json(proxy: Proxy, upstream: Upstream) -> None:
    path = "/s201/beacon/edge/clickstreamEvents"
    body = json.dumps(PRODUCT_VIEW).encode()
    headers = {**TRACKING_HEADERS, "Content-Type": "text/plain;charset=UTF-8"}
    with proxy.client() as client:
        assert client.post(upstream.url(path), content=body, headers=headers).status_code == 201

    (row,) = _stopped_rows(proxy, 1)
    assert row["verdict"] == "delivered"
    assert row["request_body_kind"] == "json"
    assert json.loads(row["request_body"]) == PRODUCT_VIEW


def test_text_and_empty_bodies(proxy: Proxy, upstream: Upstream) -> None:
    text_path = "/s201/text/edge/clickstreamEvents"
    empty_path = "/s201/empty/edge/clickstreamEvents"
    with proxy.client() as client:
        text = client.post(
            upstream.url(text_path), content=b"event=ProductView&sku=300938", headers={"Content-Type": "text/plain"}
        )
        empty = client.post(upstream.url(empty_path), content=b"", headers=TRACKING_HEADERS)
    assert (text.status_code, empty.status_code) == (201, 201)
    assert upstream.received_at(empty_path)[0].body == b""

    rows = _stopped_rows(proxy, 2)
    text_row = _only(rows, text_path)
    assert text_row["verdict"] == "delivered"
    assert text_row["request_body_kind"] == "text"
    assert text_row["request_body"] == "event=ProductView&sku=300938"
    assert text_row["request_body_size"] == len("event=ProductView&sku=300938")
    empty_row = _only(rows, empty_path)
    assert empty_row["verdict"] == "delivered"
    assert empty_row["request_body_kind"] == "empty"
    assert empty_row["request_body"] is None
    assert empty_row["request_body_size"] == 0


def test_large_body_is_truncated_in_store_but_forwarded_whole(proxy: Proxy, upstream: Upstream) -> None:
    path = "/s201/large/edge/clickstreamEvents"
    size = 5 * 1024 * 1024
    prefix, suffix = b'{"pad":"', b'"}'
    body = prefix + b"x" * (size - len(prefix) - len(suffix)) + suffix
    assert len(body) == size
    with proxy.client(timeout=30) as client:
        response = client.post(upstream.url(path), content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 201

    (received,) = upstream.received_at(path)
    assert len(received.body) == size
    assert hashlib.sha256(received.body).digest() == hashlib.sha256(body).digest()

    (row,) = _stopped_rows(proxy, 1)
    assert row["verdict"] == "delivered"
    assert row["request_body_truncated"] == 1
    assert row["request_body_size"] == size
    assert len(row["request_body"]) == 65536  # clickwatch_body_limit default
    assert body.decode().startswith(row["request_body"])


def test_non_utf8_body_is_stored_as_binary(proxy: Proxy, upstream: Upstream) -> None:
    path = "/s201/binary/edge/clickstreamEvents"
    body = b"\xff\xfe\x00garbage"
    with proxy.client() as client:
        response = client.post(
            upstream.url(path), content=body, headers={**TRACKING_HEADERS, "Content-Type": "text/plain"}
        )
    assert response.status_code == 201
    assert upstream.received_at(path)[0].body == body

    (row,) = _stopped_rows(proxy, 1)
    assert row["verdict"] == "delivered"
    assert row["status_code"] == 201
    assert row["request_body_kind"] == "binary"
    assert row["request_body_note"]
    assert row["request_body_size"] == len(body)


def test_ordinary_storefront_traffic_passes_and_is_not_stored(proxy: Proxy, upstream: Upstream) -> None:
    tracked = "/s201/control/edge/clickstreamEvents"
    with proxy.client() as client:
        page = client.get(upstream.url("/page/product/300938"))
        cart = client.post(upstream.url("/page/cart/entries"), json={"product": "300938", "qty": 1})
        # A GET to the clickstream path is not a clickstream POST either.
        probe = client.get(upstream.url("/page/x/edge/clickstreamEvents"))
        control = client.post(upstream.url(tracked), json=PRODUCT_VIEW, headers=TRACKING_HEADERS)
    assert page.status_code == 200
    assert page.content == b"<!doctype html><html><head><title>Storefront</title></head><body>Product 1</body></html>"
    assert cart.status_code == 200
    assert probe.status_code == 200
    assert control.status_code == 201
    assert len(upstream.received) == 4

    # Only the tracking call was recorded (and it proves the store was working).
    (row,) = _stopped_rows(proxy, 1)
    assert row["path"] == tracked


def test_cors_preflight_is_stored_as_preflight(proxy: Proxy, upstream: Upstream) -> None:
    path = "/s204/preflight/edge/clickstreamEvents"
    headers = {
        "Origin": "https://shop.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,hybris-schema,consent-reference",
    }
    with proxy.client() as client:
        response = client.options(upstream.url(path), headers=headers)
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "https://shop.example"

    (row,) = _stopped_rows(proxy, 1)
    assert row["method"] == "OPTIONS"
    assert row["kind"] == "preflight"
    assert row["target_kind"] == "clickstream"
    assert row["verdict"] == "delivered"
    assert row["status_code"] == 204
    assert row["origin"] == "https://shop.example"


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("clickwatch_clickstream_path=(", ["clickwatch", "regular expression"]),
        ("clickwatch_body_limit=-1", ["clickwatch_body_limit", "-1"]),
        ("clickwatch_config=BAD_TOML", ["clickwatch_config", "windows.silence_seconds", "expected a number"]),
        ("clickwatch_config=/no/such/file.toml", ["clickwatch_config", "/no/such/file.toml", "cannot read"]),
        ("clickwatch_webhook=ftp://example.org/hook", ["clickwatch_webhook", "not an http(s) URL"]),
    ],
)
def test_bad_option_stops_startup_with_a_clear_message(tmp_path: Path, option: str, expected: list[str]) -> None:
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("[windows]\nsilence_seconds = 'soon'\n")
    option = option.replace("BAD_TOML", str(bad_toml))
    cmd = [
        str(MITMDUMP),
        "-q",
        "--listen-host",
        "127.0.0.1",
        "--listen-port",
        str(free_port()),
        "-s",
        str(ADDON),
        "--set",
        f"clickwatch_db={tmp_path / 'cw.db'}",
        "--set",
        f"confdir={tmp_path / 'mitm'}",
        "--set",
        option,
    ]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=30, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    for fragment in expected:
        assert fragment in output, output


def test_request_in_flight_at_shutdown_is_failed_not_left_pending(proxy: Proxy, upstream: Upstream) -> None:
    path = "/hang/shutdown/edge/clickstreamEvents"
    outcome: list[BaseException | httpx.Response] = []

    def send() -> None:
        with proxy.client(timeout=20.0) as client:
            try:
                outcome.append(client.post(upstream.url(path), json=PRODUCT_VIEW, headers=TRACKING_HEADERS))
            except httpx.HTTPError as exc:
                outcome.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        wait_until(
            lambda: [r for r in proxy.deliveries() if r["path"] == path and r["verdict"] == "pending"],
            timeout=15.0,  # a fresh proxy's first delivery waits for its store process (slow on a loaded machine)
            what="the hanging delivery to show as pending",
        )
        (row,) = _stopped_rows(proxy, 1)
    finally:
        sender.join(10)
    assert not sender.is_alive()
    assert row["verdict"] == "failed"
    assert row["status_code"] is None
    assert row["error"]
    assert row["ended_at"] >= row["sent_at"]


def test_deliveries_pending_when_the_proxy_crashed_are_failed_on_restart(
    proxy_factory: Callable[..., Proxy], upstream: Upstream
) -> None:
    path = "/hang/crash/edge/clickstreamEvents"
    crashed = proxy_factory()
    sender = threading.Thread(target=_post_ignoring_errors, args=(crashed, upstream.url(path)))
    sender.start()
    try:
        wait_until(
            lambda: [r for r in crashed.deliveries() if r["path"] == path and r["verdict"] == "pending"],
            timeout=15.0,  # a fresh proxy's first delivery waits for its store process (slow on a loaded machine)
            what="the hanging delivery to show as pending",
        )
        crashed.kill()  # SIGKILL: no chance to flush or to end anything
    finally:
        sender.join(10)
    (row,) = crashed.deliveries()
    assert row["verdict"] == "pending"

    restarted = proxy_factory()  # same tmp_path: same database file
    with restarted.client() as client:
        assert (
            client.post(upstream.url("/s201/after-crash/edge/clickstreamEvents"), json=PRODUCT_VIEW).status_code == 201
        )
    rows = _stopped_rows(restarted, 2)
    stale = _only(rows, path)
    assert stale["verdict"] == "failed"
    assert stale["error"]
    assert stale["ended_at"] is not None
    assert _only(rows, "/s201/after-crash/edge/clickstreamEvents")["verdict"] == "delivered"


def _post_ignoring_errors(proxy: Proxy, url: str) -> None:
    with proxy.client(timeout=20.0) as client, contextlib.suppress(httpx.HTTPError):
        client.post(url, json=PRODUCT_VIEW, headers=TRACKING_HEADERS)
