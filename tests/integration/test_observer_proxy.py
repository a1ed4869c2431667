"""The proxy's side of the data-layer observer, through the real mitmdump: it adds the script to storefront pages
(respecting their Content-Security-Policy), answers /__clickwatch/... itself on any host, and takes reports."""

from __future__ import annotations

import gzip
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import httpx
import pytest

from clickwatch.core.observer import MAX_BODY_BYTES
from clickwatch.core.pipeline import REJECT_REASONS
from tests.integration.conftest import Proxy, observe_url, page_token, query, wait_until

pytestmark = pytest.mark.integration

UA = "Mozilla/5.0 (X11; Linux x86_64) clickwatch-observer-test"
HTML = b"<!doctype html><html lang=en><head><meta charset=utf-8><title>Shop</title></head><body>Hi</body></html>"
SCRIPT = b'<script src="/__clickwatch/observer.js"></script>'
TOKEN = re.compile(rb'data-clickwatch-page="([A-Za-z0-9_-]{22})"')
TOKENLESS = SCRIPT.replace(b"><", b" ><")  # the element once TOKEN.sub has taken its token attribute out
DOCUMENT = {"User-Agent": UA, "Accept": "text/html", "Sec-Fetch-Dest": "document"}
LARGE_BODY = b"<p>row</p>" * 120_000  # over clickwatch_stream_bytes (1 MiB): the page streams


class _Shop(BaseHTTPRequestHandler):
    """Pages chosen by path: /plain, /gzip, /nonce, /paths (CSP blocks the observer), /meta (CSP in a meta tag)."""

    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[str]] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.seen.append(self.path)
        body, headers = HTML, {"Content-Type": "text/html; charset=utf-8"}
        if self.path == "/gzip":
            body, headers["Content-Encoding"] = gzip.compress(HTML), "gzip"
        elif self.path == "/nonce":
            headers["Content-Security-Policy"] = "script-src 'nonce-r4nd0m' 'strict-dynamic'; object-src 'none'"
        elif self.path == "/paths":
            port = self.server.server_address[1]
            headers["Content-Security-Policy"] = f"script-src http://127.0.0.1:{port}/static/; connect-src 'self'"
        elif self.path == "/meta":
            body = HTML.replace(
                b"<title>", b"<meta Http-Equiv='Content-Security-Policy' content=\"script-src 'none'\"><title>"
            )
        elif self.path == "/data.json":
            body, headers = b'{"a": 1}', {"Content-Type": "application/json"}
        elif self.path == "/large":
            body = HTML.replace(b"Hi", LARGE_BODY)
        elif self.path == "/chunked-gzip":  # no length: streamed, and decoded as it streams
            self.send_response(200)
            for name, value in {**headers, "Content-Encoding": "gzip", "Transfer-Encoding": "chunked"}.items():
                self.send_header(name, value)
            self.end_headers()
            encoded = gzip.compress(HTML)
            for i in range(0, len(encoded), 7):
                piece = encoded[i : i + 7]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_response(200)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.seen.append(self.path)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def shop() -> Iterator[str]:
    _Shop.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Shop)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def batch(*events: dict[str, Any], page: str = "pageid0001") -> dict[str, Any]:
    now = time.time() * 1000
    return {"v": 1, "page": page, "url": "http://shop/p/1", "sent": now, "events": [{"t": now, **e} for e in events]}


def reports_to(client: httpx.Client, shop: str) -> str:
    """The URL the observer in a page of the shop just loaded through the proxy sends its reports to."""
    return observe_url(shop, page_token(client, f"{shop}/plain", UA))


def test_a_storefront_page_gets_the_observer_first_in_its_head(proxy: Proxy, shop: str) -> None:
    with proxy.client() as client:
        page = client.get(f"{shop}/plain", headers=DOCUMENT)
        compressed = client.get(f"{shop}/gzip", headers={**DOCUMENT, "Accept-Encoding": "gzip"})
        asset = client.get(f"{shop}/plain", headers={"User-Agent": UA, "Accept": "*/*", "Sec-Fetch-Dest": "script"})
        data = client.get(f"{shop}/data.json", headers=DOCUMENT)
        frame = client.get(f"{shop}/plain", headers={**DOCUMENT, "Sec-Fetch-Dest": "iframe"})
    tokens = [TOKEN.search(p.content) for p in (page, compressed)]
    assert tokens[0] and tokens[1] and tokens[0][1] != tokens[1][1]  # each page load: a token of its own
    element = SCRIPT.replace(b"><", b' data-clickwatch-page="%s"><' % tokens[0][1])
    assert page.content == HTML.replace(b"<head>", b"<head>" + element)
    assert int(page.headers["content-length"]) == len(page.content)
    # A compressed page is injected too (and sent on decoded).
    assert compressed.content.replace(tokens[1][1], tokens[0][1]) == page.content
    assert "content-encoding" not in compressed.headers
    # Neither a script nor JSON is a page load, and a frame is not a top-level page: untouched.
    assert asset.content == HTML and data.content == b'{"a": 1}'
    assert frame.content == HTML and frame.headers["content-length"] == str(len(HTML))


def test_a_large_or_unmeasured_page_streams_with_the_observer_in_its_head(proxy: Proxy, shop: str) -> None:
    with proxy.client() as client:
        large = client.get(f"{shop}/large", headers=DOCUMENT)
        chunked = client.get(f"{shop}/chunked-gzip", headers={**DOCUMENT, "Accept-Encoding": "gzip"})
    # (Each page's token, a test of its own above, taken out.)
    assert TOKEN.sub(b"", large.content) == HTML.replace(b"<head>", b"<head>" + TOKENLESS).replace(b"Hi", LARGE_BODY)
    # Its length is not known when its headers go on: HTTP/1.1 delimits it by chunks.
    assert "content-length" not in large.headers and large.headers["transfer-encoding"] == "chunked"
    # Encoded and sent in pieces of 7 bytes: decoded as it streams, sent on decoded.
    assert TOKEN.sub(b"", chunked.content) == HTML.replace(b"<head>", b"<head>" + TOKENLESS)
    assert "content-encoding" not in chunked.headers
    assert proxy.stop() == 0


def test_the_proxy_answers_its_own_paths_on_any_host_and_forwards_none(proxy: Proxy, shop: str) -> None:
    with proxy.client() as client:
        script = client.get(f"{shop}/__clickwatch/observer.js", headers={"User-Agent": UA})
        other_host = client.get("http://127.0.0.1:9/__clickwatch/observer.js", headers={"User-Agent": UA})
        unknown = client.get(f"{shop}/__clickwatch/nothing", headers={"User-Agent": UA})
        head = client.head(f"{shop}/__clickwatch/observer.js", headers={"User-Agent": UA})
        after_head = client.get(f"{shop}/__clickwatch/observer.js", headers={"User-Agent": UA})
        wrong_method = client.get(f"{shop}/__clickwatch/observe", headers={"User-Agent": UA})
        observed = client.post(reports_to(client, shop), json=batch({"type": "page"}), headers={"User-Agent": UA})
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert b"Y_TRACKING" in script.content
    assert other_host.status_code == 200  # port 9 has nothing listening: the answer came from the proxy
    assert (unknown.status_code, wrong_method.status_code, observed.status_code) == (404, 405, 204)
    # No body after an answer to HEAD: the kept-alive connection still serves the next request rightly.
    assert (head.status_code, head.content) == (405, b"")
    assert after_head.status_code == 200 and after_head.content == script.content
    assert not [path for path in _Shop.seen if path.startswith("/__clickwatch/")]
    assert proxy.stop() == 0
    # Not stored as storefront traffic or deliveries: only the observer's own report.
    assert query(proxy.db_path, "SELECT count(*) AS n FROM deliveries")[0]["n"] == 0
    assert [r["type"] for r in query(proxy.db_path, "SELECT type FROM datalayer")] == ["page"]


def test_reports_are_stored_and_consent_from_the_data_layer_is_a_signal(proxy: Proxy, shop: str) -> None:
    report = batch(
        {"type": "page"},
        {"type": "push", "name": "ConsentChanged", "data": {"granted": True}},
        {"type": "push", "name": "ProductDetailsPageViewed", "data": {"productSku": "300938"}},
        {"type": "navigation", "how": "pushState", "url": "/c/576"},
    )
    with proxy.client() as client:
        assert client.post(reports_to(client, shop), content=json.dumps(report), headers={"User-Agent": UA})
    assert proxy.stop() == 0
    rows = query(proxy.db_path, "SELECT type, name, schema_name, consent FROM datalayer ORDER BY at, id")
    assert [tuple(r) for r in rows] == [
        ("page", "", None, "absent"),  # the page loaded without a consent cookie
        ("push", "ConsentChanged", None, "given"),
        ("push", "ProductDetailsPageViewed", "ProductView", "given"),
        ("navigation", "pushState", None, "given"),
    ]
    signals = query(proxy.db_path, "SELECT state, source FROM consent_signals")
    assert [tuple(s) for s in signals] == [("absent", "page load without consent cookie"), ("given", "data layer")]
    # Pushed with consent and never sent: the lost event, decided at shutdown (its window had not passed
    # while running, so it is let go rather than guessed) -- here the proxy stops at once, so none is reported.
    assert not query(proxy.db_path, "SELECT kind FROM findings WHERE kind = 'event_not_sent'")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "bad_format"),
        (
            json.dumps({"v": 2, "page": "pageid0001", "sent": 1, "events": [{"t": 1, "type": "page"}]}).encode(),
            "bad_format",
        ),
        (b"[" * 5000, "bad_format"),
        (json.dumps(batch({"type": "push", "name": "X", "data": {"a": "x" * 5000}})).encode(), "bad_format"),
    ],
)
def test_bad_reports_are_answered_dropped_and_counted(proxy: Proxy, shop: str, body: bytes, reason: str) -> None:
    with proxy.client() as client:
        answer = client.post(reports_to(client, shop), content=body, headers={"User-Agent": UA})
    assert answer.status_code == 204
    assert proxy.stop() == 0
    assert query(proxy.db_path, "SELECT count(*) AS n FROM datalayer")[0]["n"] == 0
    counts = {r["reason"]: r["n"] for r in query(proxy.db_path, "SELECT reason, n FROM metric_observer_rejected")}
    assert counts == dict.fromkeys(REJECT_REASONS, 0) | {reason: 1}


def test_oversized_and_flooding_reports_are_refused_and_counted(proxy: Proxy, shop: str) -> None:
    statuses = []
    with proxy.client() as client:
        url = reports_to(client, shop)
        big = json.dumps(batch({"type": "page"})).encode() + b" " * MAX_BODY_BYTES
        try:
            statuses.append(client.post(url, content=big, headers={"User-Agent": UA}).status_code)
        except Exception:  # a declared oversized body is refused before it is read: the connection is closed
            statuses.append(0)
        # More than the limit within one second: keep sending until refused (bounded), as a flooding page does.
        deadline = time.monotonic() + 20
        while 429 not in statuses[1:] and time.monotonic() < deadline:
            statuses.append(client.post(url, json=batch({"type": "page"}), headers={"User-Agent": UA}).status_code)
    assert statuses[0] in (0, 413)
    assert 429 in statuses[1:] and 204 in statuses[1:]
    assert proxy.stop() == 0
    counts = {r["reason"]: r["n"] for r in query(proxy.db_path, "SELECT reason, n FROM metric_observer_rejected")}
    assert counts["too_large"] == 1
    assert counts["flood"] == statuses[1:].count(429)
    assert query(proxy.db_path, "SELECT count(*) AS n FROM datalayer")[0]["n"] == statuses[1:].count(204)


def test_a_nonce_policy_gets_the_nonce_and_a_blocking_policy_is_respected(proxy: Proxy, shop: str) -> None:
    with proxy.client() as client:
        nonce = client.get(f"{shop}/nonce", headers=DOCUMENT)
        blocked = client.get(f"{shop}/paths", headers=DOCUMENT)
        meta = client.get(f"{shop}/meta", headers=DOCUMENT)
    assert b'<script src="/__clickwatch/observer.js" data-clickwatch-page="' in nonce.content
    assert b'" nonce="r4nd0m"></script>' in nonce.content
    # The page's policy is never weakened: the header is passed on as it came, the page unchanged.
    assert blocked.content == HTML and "connect-src" in blocked.headers["content-security-policy"]
    assert SCRIPT not in meta.content
    wait_until(
        lambda: query(proxy.db_path, "SELECT id FROM findings WHERE kind = 'observer_blocked'"),
        10,
        "observer_blocked finding",
    )
    assert proxy.stop() == 0
    [finding] = query(proxy.db_path, "SELECT severity, message, delivery_id FROM findings")
    assert (finding["severity"], finding["delivery_id"]) == ("info", None)
    assert "script-src does not allow /__clickwatch/observer.js" in finding["message"]


def test_observer_switched_off_leaves_pages_alone(proxy_factory: Callable[..., Proxy], shop: str) -> None:
    proxy = proxy_factory("--set", "clickwatch_observer=false")
    with proxy.client() as client:
        page = client.get(f"{shop}/plain", headers=DOCUMENT)
        script = client.get(f"{shop}/__clickwatch/observer.js", headers={"User-Agent": UA})
        report = client.post(f"{shop}/__clickwatch/observe", json=batch({"type": "page"}), headers={"User-Agent": UA})
    assert page.content == HTML
    assert (script.status_code, report.status_code) == (404, 204)
    assert not [path for path in _Shop.seen if path.startswith("/__clickwatch/")]
    assert proxy.stop() == 0
    assert query(proxy.db_path, "SELECT count(*) AS n FROM datalayer")[0]["n"] == 0
