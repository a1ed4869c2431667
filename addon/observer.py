"""The proxy's side of the data-layer observer: it answers /__clickwatch/... itself and adds the script to pages.

Nothing under /__clickwatch/ is ever forwarded upstream or stored as storefront traffic. Each page the observer is
added to gets a token and a grant (core.observer); an observe request counts only when it fits the grant its token
names (core.observer.refusal), and is bounded here (size before its body is read, rate per page and per visitor,
reports and bytes per page and per visitor), then handed on unread: its format is checked on the store side.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from importlib import resources

from mitmproxy import http

from clickwatch.core import csp, serviceworker
from clickwatch.core.decoding import DecodeError, stream_codings, undo_content_encoding
from clickwatch.core.inject import PageStream, Place, script_element, unplaceable
from clickwatch.core.observer import (
    GRANT_SECONDS,
    MAX_BODY_BYTES,
    OBSERVE_PATH,
    OBSERVER_PATH_PREFIX,
    OBSERVER_SCRIPT_PATH,
    PAGE_MAX_BYTES,
    PAGE_MAX_REPORTS,
    VISITOR_MAX_BYTES,
    VISITOR_MAX_REPORTS,
    Budget,
    PageGrant,
    ReportFacts,
    grant,
    new_token,
    page_origin,
    refusal,
    token_of,
)
from clickwatch.core.visitor import normalise_ip
from clickwatch.store import wire

log = logging.getLogger("clickwatch.addon")

OWN_METADATA = "clickwatch_own"
_SHELL_METADATA = "clickwatch_shell"  # a page given the observer without a nonce: a worker's copy may be made of it
# A consent push is a report of its own, other batches come at most every 250 ms per page. Beyond these, a page
# (or its browser: all its tabs together) floods. Keyed by the page's token and by the visitor its grant names,
# never by a header the client chooses.
MAX_REPORTS_PER_SECOND_PER_PAGE = 30
MAX_REPORTS_PER_SECOND_PER_VISITOR = 60
# Pages remembered with their grants: the oldest are forgotten first (their reports then count as unbound).
MAX_GRANTS = 50_000
_ALLOWED = csp.CspDecision(True)
_MAX_REMEMBERED_BROWSERS = 10000
_MAX_REWRITTEN = 4096
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


class Grants:
    """The pages the observer was added to, by token (bounded: the oldest are forgotten first)."""

    def __init__(self, limit: int = MAX_GRANTS) -> None:
        self.limit = limit
        self.lifetime = float(GRANT_SECONDS)
        self._by_token: dict[str, PageGrant] = {}

    def issue(self, token: str, run: str, client_addr: str, user_agent: str, url: str, served_at: float) -> PageGrant:
        """Remember that the page at `url` was served with `token` to this browser, in this run."""
        page = grant(token, run, normalise_ip(client_addr), user_agent, url, served_at, self.lifetime)
        self._by_token[token] = page
        if len(self._by_token) > self.limit:
            del self._by_token[next(iter(self._by_token))]
        return page

    def get(self, token: str | None) -> PageGrant | None:
        """The grant a token names, if the proxy issued it and still remembers it."""
        return self._by_token.get(token) if token is not None else None

    def __len__(self) -> int:
        return len(self._by_token)


class ObserverSide:
    """Serves the observer, takes its reports, and adds it to storefront pages where their policy allows."""

    def __init__(self, send: Callable[[wire.Observed], None]) -> None:
        self.send = send
        self.enabled = True
        self.script = _script()
        self.grants = Grants()
        self._rates: dict[object, list[int]] = {}
        self._reports = Budget(PAGE_MAX_REPORTS, VISITOR_MAX_REPORTS)
        self._bytes = Budget(PAGE_MAX_BYTES, VISITOR_MAX_BYTES)
        self.rejected: Counter[str] = Counter()
        # Storefront pages left as they came, without the observer (each also sent as Blocked).
        self.pages_untouched = 0
        self._last_log = 0.0
        self.shells = serviceworker.ShellHashes()
        # (origin, path) -> a file of an Angular worker's manifest served with the observer added
        self._rewritten: dict[tuple[str, str], serviceworker.Rewritten] = {}

    # --- requests ----------------------------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Refuse a report whose body could outgrow the limit before mitmproxy reads any of it into memory.

        mitmproxy reads a request's body whole before the `request` hook, and cannot answer before reading it: a
        report must declare a length within the limit (the observer's always do), or its connection is closed.
        """
        flow.metadata[OWN_METADATA] = True
        req = flow.request
        if req.method != "POST":
            return
        length = req.headers.get("content-length", "")
        if "transfer-encoding" in req.headers or not length.isdigit() or int(length) > MAX_BODY_BYTES:
            declared = f"a body of {length} bytes declared" if length else "a body of undeclared length"
            self._reject("too_large", declared)
            flow.kill()

    def request(self, flow: http.HTTPFlow, client_addr: str, run: str | None = None) -> None:
        """Answer a /__clickwatch/ request here (`run`: the proxy credentials' run, for a worker page's token)."""
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
        if path == serviceworker.WORKER_PAGE_PATH and req.method == "POST":
            self._worker_page(flow, client_addr, run)
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
        if not self.enabled:
            flow.response = http.Response.make(204, b"", {"Cache-Control": "no-store"})
            return  # switched off: no page was given a token, and nothing is recorded
        headers = req.headers
        received_at = req.timestamp_start
        facts = ReportFacts(
            page_origin(req.pretty_url) or "",
            headers.get("origin"),
            headers.get("sec-fetch-site"),
            client_addr,
            headers.get("user-agent", ""),
            received_at,
        )
        token = token_of(req.path)
        page = self.grants.get(token)
        reason = refusal(page, facts)
        if reason is not None or page is None or token is None:
            reason = reason or "unbound"
            self._reject(reason, f"a report from {facts.origin or 'no origin'} to {facts.sent_to or 'no host'}")
            flow.response = _plain(403, f"not a report of a page clickwatch served ({reason})")
            return
        visitor = (page.run, page.client_addr, page.user_agent)
        if not (
            self._within_rate(token, MAX_REPORTS_PER_SECOND_PER_PAGE)
            and self._within_rate(visitor, MAX_REPORTS_PER_SECOND_PER_VISITOR)
        ):
            self._reject("flood", "more reports a second than a page, or its browser, sends")
            flow.response = _plain(429, "too many observer reports")
            return
        over = self._reports.spend(token, visitor, 1, received_at) or self._bytes.spend(
            token, visitor, len(body), received_at
        )
        if over is not None:
            self._reject(over, f"more reports or bytes than the {over.replace('_', ' ')} allows")
            flow.response = _plain(429, f"too many observer reports ({over})")
            return
        self.send(
            wire.Browser(
                page.run,
                page.client_addr,
                page.user_agent,
                received_at,
                body,
                page.origin,
                page.served_at,
                token,
            )
        )
        flow.response = http.Response.make(204, b"", {"Cache-Control": "no-store"})

    def _within_rate(self, key: object, limit: int) -> bool:
        second = int(time.monotonic())
        window = self._rates.get(key)
        if window is None or window[0] != second:
            if len(self._rates) >= _MAX_REMEMBERED_BROWSERS:
                self._rates.clear()
            self._rates[key] = [second, 1]
            return True
        window[1] += 1
        return window[1] <= limit

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
        encoding, content_type, policies = _page_headers(resp)
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
            token = new_token()
            self.grants.issue(token, run, client_addr, agent, req.pretty_url, req.timestamp_start)
            if decision.nonce is None:
                flow.metadata[_SHELL_METADATA] = True  # the page a service worker's copy may be made of
            return script_element(decision.nonce, token)

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
        coding = (resp.headers.get("content-encoding") or "") if encoded else ""
        content = stream.whole(raw)
        if stream.failed is not None:
            log.warning("clickwatch: page %s left as it came (%s)", flow.request.pretty_url, stream.failed)
            return
        if not encoded and len(content) == len(raw):
            return  # left as it came
        if flow.metadata.get(_SHELL_METADATA):
            # Kept as it came (a reference: decoded and hashed only if a service worker's manifest asks).
            self.shells.learn(_origin(flow.request), raw, resp.headers.get("content-type", ""), coding)
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

    # --- service workers (Angular's ngsw-worker.js) ---------------------------------------------------------

    def _worker_page(self, flow: http.HTTPFlow, client_addr: str, run: str | None) -> None:
        """Give a page a service worker served with the observer (whose copy has no token) a token of its own.

        Only for an origin whose worker the proxy gave the observer, asked by a page of that origin (same-origin
        request, its Origin the host asked), in the run of the proxy credentials, as page loads get theirs.
        """
        req = flow.request
        headers = req.headers
        origin = page_origin(req.pretty_url) or ""
        if (
            not self.enabled
            or run is None
            or not self.keeps_worker_pages(req)
            or headers.get("sec-fetch-site", "same-origin") != "same-origin"
            or page_origin(headers.get("origin", "")) != origin
        ):
            self._reject("unbound", f"a page token asked from {headers.get('origin') or 'no origin'} for {origin}")
            flow.response = _plain(403, "no page of a service worker clickwatch serves here")
            return
        agent = headers.get("user-agent", "")
        if not self._within_rate((run, normalise_ip(client_addr), agent), MAX_REPORTS_PER_SECOND_PER_VISITOR):
            self._reject("flood", "more page tokens a second than a browser asks for")
            flow.response = _plain(429, "too many page tokens")
            return
        referer = headers.get("referer", "")
        url = referer if page_origin(referer) == origin else origin + "/"
        token = new_token()
        self.grants.issue(token, run, client_addr, agent, url, req.timestamp_start)
        body = json.dumps({"token": token}).encode()
        flow.response = http.Response.make(200, body, {"Content-Type": "application/json", "Cache-Control": "no-store"})

    def wants_whole(self, req: http.Request) -> bool:
        """Whether an answer must be read whole (not streamed): a worker's manifest, or a file whose hash it checks."""
        if not self.enabled:
            return False
        return serviceworker.is_manifest(req.path) or (
            bool(self._rewritten) and (_origin(req), req.path.partition("?")[0]) in self._rewritten
        )

    def keeps_worker_pages(self, req: http.Request) -> bool:
        """Whether pages the service worker of the request's origin serves from its cache carry the observer."""
        if not self._rewritten:
            return False
        origin = _origin(req)
        return any(key[0] == origin for key in self._rewritten)

    def worker_file(self, flow: http.HTTPFlow) -> None:
        """Give an Angular worker's manifest the hash of its index.html with the observer, and add the observer to
        the worker's own fetch of that file, the same bytes as on a page load: its integrity checks then pass."""
        req, resp = flow.request, flow.response
        if not self.enabled or resp is None or resp.status_code != 200 or not resp.raw_content:
            return
        manifest = serviceworker.is_manifest(req.path)
        if not manifest and not self._rewritten:
            return  # the usual case: no worker's files pass here
        origin = _origin(req)
        path = req.path.partition("?")[0]
        rewritten = None if manifest else self._rewritten.get((origin, path))
        if not manifest and rewritten is None:
            return
        read = _readable(resp)
        if read is None:
            return
        content, content_type, _ = read
        if manifest:
            result = serviceworker.rewrite_manifest(content, self.shells.of(origin))
            for key in [key for key in self._rewritten if key[0] == origin]:
                del self._rewritten[key]  # a new build the proxy cannot observe: its pages will carry no observer
            if result is not None:
                body, files = result
                for file in files:
                    self._rewritten[(origin, file.path)] = file
                while len(self._rewritten) > _MAX_REWRITTEN:
                    del self._rewritten[next(iter(self._rewritten))]
                _replace_body(resp, body)
            return
        assert rewritten is not None
        if (req.headers.get("sec-fetch-mode") or "").lower() == "navigate":
            return  # a page load: it gets the observer as pages do
        if serviceworker.sha1(content) != rewritten.original:
            return  # not the file the manifest named (a new build): the worker judges it as it came
        changed = serviceworker.with_observer(content, content_type.decode("latin-1"))
        if changed is not None and serviceworker.sha1(changed) == rewritten.observed:
            _replace_body(resp, changed)

    def _not_added(self, flow: http.HTTPFlow, run: str, client_addr: str, agent: str, reason: str) -> None:
        self.pages_untouched += 1
        at = time.time()
        self.send(wire.Blocked(run, client_addr, agent, at, flow.request.pretty_url, reason))


@functools.lru_cache(maxsize=256)
def _unplaceable(content_type: bytes) -> str | None:
    # A storefront sends the same Content-Type page after page: the answer is remembered.
    return unplaceable(content_type.decode("latin-1"))


def _origin(req: http.Request) -> str:
    # The connection's own fields: the Host header's (pretty_host) cost several microseconds per page load.
    return f"{req.scheme}://{req.host}:{req.port}"


def _page_headers(resp: http.Response) -> tuple[bytes, bytes, list[str]]:
    """A page answer's Content-Encoding (b"" for none or identity), Content-Type and Content-Security-Policy values."""
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
    return (b"" if encoding == b"identity" else encoding), content_type, policies


def _readable(resp: http.Response) -> tuple[bytes, bytes, list[str]] | None:
    """A response's decoded body, content type and Content-Security-Policy headers; None: not decodable."""
    encoding, content_type, policies = _page_headers(resp)
    raw = resp.raw_content or b""
    if not encoding:
        return raw, content_type, policies
    try:
        # clickwatch's decoder, not mitmproxy's get_content (which inflates without a cap).
        return undo_content_encoding(raw, encoding.decode("latin-1")), content_type, policies
    except DecodeError:
        return None


def _replace_body(resp: http.Response, body: bytes) -> None:
    # Sent uncompressed (re-compressing every page would cost the shopper more than the bytes saved), with its new
    # length; set on the raw fields, since the content setter's header lookups cost more than this.
    resp.headers.fields = tuple(
        (name, str(len(body)).encode() if name.lower() == b"content-length" else value)
        for name, value in resp.headers.fields
        if name.lower() != b"content-encoding"
    )
    resp.raw_content = body


def _plain(status: int, text: str) -> http.Response:
    headers = {"Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store"}
    return http.Response.make(status, text.encode(), headers)
