"""The proxy's side of the data-layer observer: it answers /__clickwatch/... itself and adds the script to pages.

Nothing under /__clickwatch/ is ever forwarded upstream or stored as storefront traffic. Observe requests are
bounded here (size, rate per browser) and handed on unread: their format is checked on the store side.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter
from collections.abc import Callable
from importlib import resources

from mitmproxy import http

from clickwatch.core import csp
from clickwatch.core.decoding import DecodeError, stream_codings
from clickwatch.core.inject import PageStream, Place, script_element, unplaceable
from clickwatch.core.observer import MAX_BODY_BYTES, OBSERVE_PATH, OBSERVER_PATH_PREFIX, OBSERVER_SCRIPT_PATH
from clickwatch.store import wire

log = logging.getLogger("clickwatch.addon")

OWN_METADATA = "clickwatch_own"
# Every tab and frame of one browser shares this: a consent push is a report of its own, batches come at most
# every 250 ms per page. Beyond it, a page (or something posing as one) floods.
MAX_REQUESTS_PER_SECOND = 60
_ALLOWED = csp.CspDecision(True)
_MAX_REMEMBERED_BROWSERS = 10000
_SCRIPT_HEADERS = {
    "Content-Type": "text/javascript; charset=utf-8",
    # Served by the proxy on every page load: cached briefly, so repeated pages cost no round trip.
    "Cache-Control": "private, max-age=300",
    "X-Content-Type-Options": "nosniff",
}


def is_own(path: str) -> bool:
    """Whether a request path is clickwatch's own (answered by the proxy, never forwarded)."""
    return path.startswith(OBSERVER_PATH_PREFIX)


def _script() -> bytes:
    return resources.files("clickwatch.addon").joinpath("observer.js").read_bytes()


class ObserverSide:
    """Serves the observer, takes its reports, and adds it to storefront pages where their policy allows."""

    def __init__(self, send: Callable[[wire.Observed], None]) -> None:
        self.send = send
        self.enabled = True
        self.script = _script()
        self._rates: dict[tuple[str, str], list[int]] = {}
        self.rejected: Counter[str] = Counter()
        # Storefront pages left as they came, without the observer (each also sent as Blocked).
        self.pages_untouched = 0
        self._last_log = 0.0

    # --- requests ----------------------------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Refuse a declared oversized report before mitmproxy reads its body into memory."""
        flow.metadata[OWN_METADATA] = True
        length = flow.request.headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            self._reject("too_large", f"a body of {length} bytes declared")
            flow.kill()

    def request(self, flow: http.HTTPFlow, run: str, client_addr: str) -> None:
        """Answer a /__clickwatch/ request here."""
        req = flow.request
        path = req.path.split("?", 1)[0]
        if req.method == "HEAD":
            # No body may follow an answer to HEAD; mitmproxy would send one, and break a kept-alive connection.
            flow.response = http.Response.make(405, b"", {"Allow": "GET, POST", "Cache-Control": "no-store"})
            return
        if path == OBSERVER_SCRIPT_PATH and req.method == "GET":
            if not self.enabled:
                flow.response = _plain(404, "the clickwatch observer is switched off")
                return
            flow.response = http.Response.make(200, self.script, _SCRIPT_HEADERS)
            return
        if path != OBSERVE_PATH:
            flow.response = _plain(404, "not a clickwatch endpoint")
            return
        if req.method != "POST":
            flow.response = _plain(405, "POST observer reports here")
            flow.response.headers["Allow"] = "POST"
            return
        body = req.raw_content or b""
        if len(body) > MAX_BODY_BYTES:
            self._reject("too_large", f"a body of {len(body)} bytes")
            flow.response = _plain(413, f"at most {MAX_BODY_BYTES} bytes")
            return
        agent = req.headers.get("user-agent", "")
        if not self._within_rate(client_addr, agent):
            self._reject("flood", f"more than {MAX_REQUESTS_PER_SECOND} reports a second from one browser")
            flow.response = _plain(429, "too many observer reports")
            return
        if self.enabled:
            self.send(wire.Browser(run, client_addr, agent, req.timestamp_start, body))
        flow.response = http.Response.make(204, b"", {"Cache-Control": "no-store"})

    def _within_rate(self, client_addr: str, agent: str) -> bool:
        second = int(time.monotonic())
        key = (client_addr, agent)
        window = self._rates.get(key)
        if window is None or window[0] != second:
            if len(self._rates) >= _MAX_REMEMBERED_BROWSERS:
                self._rates.clear()
            self._rates[key] = [second, 1]
            return True
        window[1] += 1
        return window[1] <= MAX_REQUESTS_PER_SECOND

    def _reject(self, reason: str, detail: str) -> None:
        self.rejected[reason] += 1
        now = time.monotonic()
        if now - self._last_log >= 5.0:
            self._last_log = now
            log.warning("clickwatch: observer report dropped (%s: %s)", reason, detail)

    def flush(self) -> None:
        """Hand on how many reports were dropped here, by reason."""
        if self.rejected:
            counts, self.rejected = dict(self.rejected), Counter()
            self.send(wire.Rejected(tuple(counts.items())))

    # --- pages -----------------------------------------------------------------------------------------------

    def page_stream(
        self, flow: http.HTTPFlow, run: str, client_addr: str, agent: str, whole: bool
    ) -> PageStream | None:
        """A stream that adds the observer to this top-level page as it passes; None: the page goes as it came.

        Called when the page's headers arrive. A page read `whole` is passed through the stream in one piece by
        `page_done`; otherwise its headers go on at once, without Content-Length (the page grows by the
        element, or not, and that is known only later) and without Content-Encoding (the page is sent decoded:
        see docs/observer.md). Whatever keeps the observer out is recorded (`observer_blocked`) and counted.
        """
        resp = flow.response
        if resp is None or resp.status_code in (204, 304):
            return None
        # One pass over the raw fields: every case-insensitive lookup by name would cost a scan of its own.
        encoding = content_type = b""
        policies: list[str] = []
        for name, value in resp.headers.fields:
            lowered = name.lower()
            if lowered == b"content-encoding":
                encoding = value.strip().lower()
            elif lowered == b"content-type" and not content_type:
                content_type = value
            elif lowered == b"content-security-policy":
                policies.append(value.decode("latin-1"))
        if encoding == b"identity":
            encoding = b""
        why = _unplaceable(content_type)
        if why is None and encoding:
            try:
                stream_codings(encoding.decode("latin-1"))
            except DecodeError as exc:
                why = str(exc)
        if why is not None:
            self._not_added(flow, run, client_addr, agent, why)
            return None
        req = flow.request

        def choose(place: Place) -> bytes | None:
            if place.at is None:
                self._not_added(flow, run, client_addr, agent, place.reason)
                return None
            decision = _ALLOWED
            if policies or place.policies:
                origin = csp.Origin(req.scheme, req.pretty_host, req.port)
                decision = csp.decide([*policies, *place.policies], origin, OBSERVER_SCRIPT_PATH, OBSERVE_PATH)
            if not decision.allowed:
                self._not_added(flow, run, client_addr, agent, f"the page's Content-Security-Policy: {decision.reason}")
                return None
            return script_element(decision.nonce)

        stream = PageStream(choose, encoding.decode("latin-1"))
        if not whole:
            # Set on the raw fields, in one pass: the length goes (HTTP/1 then delimits the page by chunks), and
            # so does the encoding, undone as the page streams.
            dropped = (b"content-length", b"content-encoding") if encoding else (b"content-length",)
            fields = [(n, v) for n, v in resp.headers.fields if n.lower() not in dropped]
            if resp.http_version.startswith("HTTP/1") and not any(n.lower() == b"transfer-encoding" for n, _ in fields):
                fields.append((b"Transfer-Encoding", b"chunked"))
            resp.headers.fields = tuple(fields)
        return stream

    def page_done(self, flow: http.HTTPFlow, stream: PageStream) -> None:
        """A page has all come: one read whole goes through its stream now, and its headers say what it became."""
        resp = flow.response
        if resp is None:
            return
        if resp.stream is stream:
            if stream.failed is not None:
                log.warning("clickwatch: page %s ended early: %s", flow.request.pretty_url, stream.failed)
            return
        raw = resp.raw_content or b""
        encoded = stream.decoder is not None
        content = stream.whole(raw)
        if stream.failed is not None:
            log.warning("clickwatch: page %s left as it came (%s)", flow.request.pretty_url, stream.failed)
            return
        if not encoded and len(content) == len(raw):
            return  # left as it came
        # Sent uncompressed, with its new length; set on the raw fields, since the content setter's header lookups
        # cost more than this.
        length = b"%d" % len(content)
        fields = []
        for name, value in resp.headers.fields:
            lowered = name.lower()
            if lowered == b"content-length":
                fields.append((name, length))
            elif lowered != b"content-encoding":
                fields.append((name, value))
        resp.headers.fields = tuple(fields)
        resp.raw_content = content

    def _not_added(self, flow: http.HTTPFlow, run: str, client_addr: str, agent: str, reason: str) -> None:
        self.pages_untouched += 1
        at = time.time()
        self.send(wire.Blocked(run, client_addr, agent, at, flow.request.pretty_url, reason))


@functools.lru_cache(maxsize=256)
def _unplaceable(content_type: bytes) -> str | None:
    # A storefront sends the same Content-Type page after page: the answer is remembered.
    return unplaceable(content_type.decode("latin-1"))


def _plain(status: int, text: str) -> http.Response:
    headers = {"Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store"}
    return http.Response.make(status, text.encode(), headers)
