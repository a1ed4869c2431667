"""What clickwatch does not judge streams through a real `clickwatch up`: server-sent events, large downloads and
uploads reach the other side as they arrive, and the dashboard's own live page works when viewed through the proxy.

Timing bounds are generous (this asserts behaviour: bytes arrive while the other side is still sending); the
figures measured are printed (`pytest -s`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.sync_api import Playwright, expect

from clickwatch.standin.shopper import CHROMIUM_ARGS
from tests.integration.conftest import Upstream, query
from tests.rig import Up, clickwatch_up, wait_until

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
MB = 1024 * 1024
WAIT = 15.0  # the longest any side waits for the other before the test fails


# --- a loopback server that streams ---------------------------------------------------------------------------------


class _StreamingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _StreamingHandler)
        self.second_event = threading.Event()  # the SSE handler sends its second event once this is set
        self.release = threading.Event()  # open streams end once this is set
        self.finished: set[str] = set()  # the downloads (by path) sent completely
        self.uploaded = 0


class _StreamingHandler(BaseHTTPRequestHandler):
    """/sse: two events and an open stream; /download?mb=N[&chunked=1]: N MB, paced; /upload: counts what arrives."""

    protocol_version = "HTTP/1.1"
    server: _StreamingServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/sse":
            self._sse()
        elif url.path == "/download":
            self._download(int(query["mb"]), query.get("chunked") == "1")
        elif url.path == "/bigpage":
            # A storefront page of 2 MB of unknown length: read whole all the same, and given the observer.
            page = b"<!doctype html><html><head><title>Shop</title></head><body>" + b"x" * (2 * MB) + b"</body></html>"
            self._chunked(200, "text/html; charset=utf-8", page)
        else:
            self.send_error(404)

    def _sse(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(b"id: 1\ndata: first\n\n")
        self.wfile.flush()
        if self.server.second_event.wait(WAIT):
            self.wfile.write(b"id: 2\ndata: second\n\n")
            self.wfile.flush()
        self.server.release.wait(WAIT)
        self.close_connection = True

    def _download(self, mb: int, chunked: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(mb * MB))
        self.end_headers()
        block = os.urandom(MB)
        started = time.monotonic()
        for i in range(mb):
            data = block if not chunked else b"%x\r\n%s\r\n" % (len(block), block)
            self.wfile.write(data)
            # Paced at 50 MB/s: slow enough that a proxy holding the answer back is seen to do so.
            delay = started + (i + 1) / 50 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        self.server.finished.add(self.path)

    def _chunked(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for start in range(0, len(body), 65536):
            part = body[start : start + 65536]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
        self.wfile.write(b"0\r\n\r\n")

    def do_POST(self) -> None:
        assert "chunked" in self.headers.get("Transfer-Encoding", "")
        self.server.uploaded = 0
        while True:
            size = int(self.rfile.readline().split(b";", 1)[0].strip(), 16)
            if size == 0:
                self.rfile.readline()
                break
            remaining = size
            while remaining:
                remaining -= len(self.rfile.read(min(remaining, 65536)))
            self.rfile.readline()
            self.server.uploaded += size
        if self.path == "/edge/clickstreamEvents":
            self._chunked(201, "application/json", b'{"accepted":' + str(self.server.uploaded).encode() + b"}")
            return
        body = str(self.server.uploaded).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def streaming() -> Iterator[_StreamingServer]:
    server = _StreamingServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.second_event.set()
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    with clickwatch_up(tmp_path_factory.mktemp("streaming")) as running:
        yield running


def _url(server: _StreamingServer, path: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


# --- server-sent events ---------------------------------------------------------------------------------------------


def _sse_timings(server: _StreamingServer, client: httpx.Client) -> tuple[float, float, float]:
    """Seconds to the headers and to the first event (the stream still open), then to the second once released."""
    server.second_event.clear()
    server.release.clear()
    started = time.monotonic()
    with client.stream("GET", _url(server, "/sse")) as answer:
        headers_at = time.monotonic() - started
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "text/event-stream"
        received = b""
        chunks = answer.iter_raw()
        while b"data: first\n\n" not in received:
            received += next(chunks)
        first_at = time.monotonic() - started
        assert b"second" not in received  # not sent yet: the first event came on its own
        server.second_event.set()
        sent_second = time.monotonic()
        while b"data: second\n\n" not in received:
            received += next(chunks)
        second_after = time.monotonic() - sent_second
        server.release.set()
    return headers_at, first_at, second_after


def test_server_sent_events_arrive_as_they_are_sent(up: Up, streaming: _StreamingServer) -> None:
    with httpx.Client(timeout=WAIT, trust_env=False) as direct:
        direct_figures = _sse_timings(streaming, direct)
    with up.client() as proxied:
        proxied_figures = _sse_timings(streaming, proxied)
    print(
        "\nSSE (s) direct / through clickwatch up: headers {:.3f} / {:.3f}, first event {:.3f} / {:.3f}, "
        "second event after it was sent {:.3f} / {:.3f}".format(
            *(v for pair in zip(direct_figures, proxied_figures, strict=True) for v in pair)
        )
    )
    headers_at, first_at, second_after = proxied_figures
    assert headers_at < 2.0
    assert first_at < 2.0
    assert second_after < 2.0


# --- large bodies ---------------------------------------------------------------------------------------------------


def proxy_rss(up: Up) -> int:
    """The proxy process's resident memory, in bytes (the store works in a process of its own)."""
    for line in Path(f"/proc/{up.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc")


class _RssSampler:
    """The proxy's largest resident memory while something passes through it."""

    def __init__(self, up: Up) -> None:
        self.up = up
        self.baseline = proxy_rss(up)
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, proxy_rss(self.up))

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


@pytest.mark.parametrize(("mb", "chunked"), [(200, False), (64, True)], ids=["200MB-with-length", "64MB-chunked"])
def test_a_large_download_streams_without_growing_the_proxy(
    up: Up, streaming: _StreamingServer, mb: int, chunked: bool
) -> None:
    with up.client() as client:
        client.get(_url(streaming, "/download?mb=1"))  # warm: the connection and the flow machinery exist
        path = f"/download?mb={mb}{'&chunked=1' if chunked else ''}"
        with _RssSampler(up) as rss:
            started = time.monotonic()
            total = 0
            first_at = finished_before_first = None
            with client.stream("GET", _url(streaming, path)) as r:
                assert r.status_code == 200
                for chunk in r.iter_raw(MB):
                    if first_at is None:
                        first_at = time.monotonic() - started
                        finished_before_first = path in streaming.finished
                    total += len(chunk)
            elapsed = time.monotonic() - started
    print(
        f"\n{mb} MB download{' (chunked)' if chunked else ''} through clickwatch up: first bytes after "
        f"{first_at:.3f} s, all after {elapsed:.2f} s; proxy RSS {rss.baseline / MB:.1f} MB before, "
        f"+{rss.growth / MB:.1f} MB at most while it passed"
    )
    assert total == mb * MB
    assert first_at is not None and first_at < 2.0
    assert finished_before_first is False, "the first bytes arrived only after the upstream had sent everything"
    assert rss.growth < 20 * MB


def test_a_large_upload_streams_to_the_upstream(up: Up, streaming: _StreamingServer) -> None:
    reached = threading.Event()

    def body() -> Iterator[bytes]:
        block = os.urandom(MB)
        for i in range(64):
            if i == 32 and wait_for_upload(streaming):
                # Half is sent: a proxy that streams has handed some of it on by now; one that buffers has not.
                reached.set()
            yield block

    with up.client() as client, _RssSampler(up) as rss:
        answer = client.post(_url(streaming, "/upload"), content=body())
    print(f"\n64 MB upload through clickwatch up: proxy RSS +{rss.growth / MB:.1f} MB at most while it passed")
    assert answer.status_code == 200 and answer.text == str(64 * MB)
    assert reached.is_set(), "the upstream had received nothing after half the upload was sent"
    assert rss.growth < 20 * MB


def wait_for_upload(server: _StreamingServer) -> bool:
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        if server.uploaded:
            return True
        time.sleep(0.02)
    return False


def tracking_call(up: Up, upstream: Upstream) -> httpx.Response:
    """One clickstream call through the proxy to the test upstream, which answers 201."""
    with up.client() as client:
        return client.post(
            upstream.url("/s201/edge/clickstreamEvents"),
            json={"productSku": "1"},
            headers={"hybris-schema": "context/commerce/ProductView", "consent-reference": "cr"},
        )


def test_tracking_calls_are_still_read_whole_and_judged(up: Up, upstream: Upstream) -> None:
    assert tracking_call(up, upstream).status_code == 201
    with httpx.Client(base_url=up.dashboard_url, timeout=WAIT, trust_env=False) as api:
        items = wait_until(lambda: api.get("/api/deliveries").json()["items"], 10, "the delivery")
    assert items[0]["verdict"] == "delivered"
    assert items[0]["status_code"] == 201


def test_tracking_calls_and_pages_of_unknown_length_are_still_read_whole(up: Up, streaming: _StreamingServer) -> None:
    event = b'{"productSku":"' + b"7" * 2 * MB + b'"}'

    def body() -> Iterator[bytes]:
        yield event[:MB]
        yield event[MB:]

    with up.client() as client:
        answer = client.post(
            _url(streaming, "/edge/clickstreamEvents"),
            content=body(),  # chunked, and over the streaming bound: a tracking call is read whole all the same
            headers={"hybris-schema": "context/commerce/ProductView", "consent-reference": "cr"},
        )
        assert answer.status_code == 201 and answer.json() == {"accepted": len(event)}
        page = client.get(_url(streaming, "/bigpage"), headers={"Accept": "text/html", "Sec-Fetch-Dest": "document"})
    assert page.status_code == 200
    assert b"/__clickwatch/observer.js" in page.content  # read whole: the observer was added to it
    rows = wait_until(
        lambda: query(
            up.db,
            "SELECT verdict, request_body_size FROM deliveries WHERE url = ?",
            _url(streaming, "/edge/clickstreamEvents"),
        ),
        10,
        "the chunked tracking call in the store",
    )
    # Its whole body reached the store (a streamed request would have left none).
    assert [(r["verdict"], r["request_body_size"]) for r in rows] == [("delivered", len(event))]


# --- the dashboard's live page, viewed through the proxy ------------------------------------------------------------


def test_the_live_page_viewed_through_the_proxy_updates(
    playwright_driver: Playwright, tmp_path: Path, upstream: Upstream
) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found: this test needs the system Chromium (apt-get install chromium)")
    with clickwatch_up(tmp_path / "live") as running:
        # "<-loopback>": the browser sends even the dashboard on 127.0.0.1 through the proxy, as a team's
        # dashboard on another machine or a system-wide proxy setting would.
        args = [*CHROMIUM_ARGS, f"--proxy-server={running.proxy_url}", "--proxy-bypass-list=<-loopback>"]
        browser = playwright_driver.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
        try:
            page = browser.new_page()
            page.goto(f"{running.dashboard_url}/")
            expect(page.locator("#conn")).to_have_text("live", timeout=10000)
            expect(page.locator("#rows tr")).to_have_count(0)
            assert tracking_call(running, upstream).status_code == 201
            row = page.locator("#rows tr").first
            expect(row.locator(".verdict")).to_have_text("delivered", timeout=10000)
            expect(row.locator(".col-schema")).to_have_text("ProductView")
        finally:
            browser.close()
