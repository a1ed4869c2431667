"""mitmproxy addon: captures every ISS tracking call and its answer into the clickwatch store.

Owns the hooks: which run a flow belongs to (proxy credentials, read by mitmproxy's own proxyauth parser, or the
X-Clickwatch-Run header), tracking calls handed on as they happen, and storefront traffic handed on as
`core.storefront` reads and folds it. Judging happens in the store. What is not judged stays out of the way: large
or open-ended bodies and server-sent events pass through as streams, and with storefront hosts given
(`clickwatch_storefront`) the addon sets mitmproxy's `allow_hosts`, so other HTTPS hosts are tunnelled untouched.

Load it into an existing mitmproxy with `mitmdump -s "$(clickwatch addon-path)"`, or run `clickwatch up`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import re
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from mitmproxy import ctx, exceptions, http
from mitmproxy.addons import proxyauth
from mitmproxy.proxy import layers
from mitmproxy.proxy.layer import NextLayer

from clickwatch.addon.observer import OWN_METADATA, ObserverSide, is_own
from clickwatch.core import intercept, matching, settings, storefront
from clickwatch.core.config import Config, ConfigError, build_config
from clickwatch.core.consent import ACCOUNT_BODY_LIMIT
from clickwatch.core.verdict import StatusSpecError
from clickwatch.store import wire
from clickwatch.store.link import Link, LinkFactory, StoreLink
from clickwatch.store.notify import WebhookError, check_url, redact

log = logging.getLogger("clickwatch.addon")

DEFAULT_RUN = "default"
RUN_HEADER = "X-Clickwatch-Run"
RUN_METADATA = "clickwatch_run"
# A plain-HTTP request to a host that is neither a storefront nor a tracking host: forwarded, never read.
PASSTHROUGH_METADATA = "clickwatch_passthrough"
# A storefront page's pass through the observer's injection (as it streams, or once it is all there).
PAGE_METADATA = "clickwatch_page"
MAX_RUN_LENGTH = 100
PAGE_FOLD_SECONDS = 1.0
STOPPED_ERROR = "clickwatch stopped before the answer arrived"
_RUN, _LENGTH, _CHUNKED = "run", "length", "chunked"
# The request fields requestheaders reads: the run's (credentials, the run header) and the body's length.
_REQUEST_READ = {
    b"proxy-authorization": _RUN,
    RUN_HEADER.lower().encode(): _RUN,
    b"content-length": _LENGTH,
    b"transfer-encoding": _CHUNKED,
}
_MAX_REMEMBERED_ORIGINS = 4096
TAP_METADATA = "clickwatch_tap"
_EVENT_STREAM = b"text/event-stream"

# Options of judged settings: unset (None) unless given; given, even as the default, they override the config file.
_OPTION_FIELDS = {s.option: s for s in settings.SETTINGS if s.option and s.judged}
_CONFIG_OPTIONS = {"clickwatch_config", *_OPTION_FIELDS}


def fail_open[F: Callable[..., Any]](hook: F) -> F:
    """Log and count any exception in a hook; the flow goes on untouched."""

    @functools.wraps(hook)
    def wrapper(self: Clickwatch, data: Any) -> Any:  # every hook takes one argument: no *args tuple per call
        try:
            return hook(self, data)
        except Exception:
            self.addon_errors += 1
            log.exception("clickwatch: error in %s hook (flow passed on untouched)", hook.__name__)
            return None

    return wrapper  # type: ignore[return-value]


def _raw(value: str) -> bytes:
    """A header value back as the bytes it came as (mitmproxy decodes them as UTF-8 with surrogateescape)."""
    return value.encode("utf-8", "surrogateescape")


class _BodyTap:
    """A streamed answer's body passed on unchanged, its first bytes kept (one more than core reads, so an answer too
    long to read is known as such)."""

    __slots__ = ("_kept",)

    def __init__(self) -> None:
        self._kept = bytearray()

    def __call__(self, data: bytes) -> bytes:
        room = ACCOUNT_BODY_LIMIT + 1 - len(self._kept)
        if room > 0:
            self._kept += data[:room]
        return data

    def body(self) -> bytes:
        return bytes(self._kept)


class Clickwatch:
    """Recognises tracking calls, records each as a delivery, and follows consent on storefront traffic."""

    def __init__(self, open_link: LinkFactory = StoreLink) -> None:
        self.config = Config()
        self.patterns = self.config.patterns()
        # The store link: a StoreLink (a store process fed over a pipe) unless a test hands in another.
        self.open_link = open_link
        self.link: Link | None = None
        self._store_opened: tuple[str, bool] | None = None
        self.inflight: dict[str, tuple[str, str, float]] = {}
        self._origins: dict[tuple[Any, ...], tuple[str, str]] = {}
        self._config_message = wire.Config({"config_file": "", "overrides": {}, "expected_status": ""})
        self._webhook_message = wire.Webhook("", 10)
        self._connection_runs: dict[str, str] = {}
        self._pages = storefront.PageFolding()
        self._workers = storefront.WorkerSightings()
        self._flush_timer: asyncio.TimerHandle | None = None
        self.flows_seen = 0
        self.addon_errors = 0
        self.passthrough = 0
        self.stream_bytes: int = settings.default("stream_bytes")
        # With storefront hosts given: every host intercepted (mitmproxy's allow_hosts, compiled as it compiles
        # them), and the storefront hosts alone (pages the observer is added to). None: every host.
        self._allowed: list[re.Pattern[str]] | None = None
        self._storefronts: list[re.Pattern[str]] | None = None
        self.interception: intercept.Interception | None = None
        self._allow_hosts_set = False
        self.observer = ObserverSide(self._send)
        # Delivery ids: random per proxy, then counted (uuid4 reads os.urandom, a system call, for every request).
        self._uid_prefix = uuid.uuid4().hex[:16]
        self._uid_count = itertools.count(1)

    def _send(self, message: wire.Observed) -> None:
        if self.link is not None:
            self.link.send(message)

    def load(self, loader: Any) -> None:
        for option in settings.addon_options():
            loader.add_option(option.name, option.typespec, option.default, option.help, option.choices)

    def configure(self, updated: set[str]) -> None:
        opts = ctx.options
        for name, setting in settings.BY_OPTION.items():
            problem = settings.option_problem(setting, getattr(opts, name))
            if problem is not None:
                raise exceptions.OptionsError(problem)
        if updated & _CONFIG_OPTIONS:
            spec = self._config_spec()
            self.config = self._build_config(spec)
            self.patterns = self.config.patterns()
            self.observer.enabled = self.config.observer_enabled
            self._config_message = wire.Config(spec)
            if self.link is not None:
                self.link.control(self._config_message)
        if updated & {"clickwatch_storefront", *_CONFIG_OPTIONS}:
            self._intercept(opts.clickwatch_storefront)
        if "allow_hosts" in updated:
            self._allowed = [re.compile(x, re.IGNORECASE) for x in opts.allow_hosts] or None
        if "clickwatch_stream_bytes" in updated:
            self.stream_bytes = opts.clickwatch_stream_bytes
        if "clickwatch_observer_token_seconds" in updated:
            self.observer.grants.lifetime = float(opts.clickwatch_observer_token_seconds)
        if updated & {"clickwatch_webhook", "clickwatch_webhook_interval"}:
            self._check_webhook(opts.clickwatch_webhook)
            self._webhook_message = wire.Webhook(opts.clickwatch_webhook, opts.clickwatch_webhook_interval)
            if self.link is not None:
                self.link.control(self._webhook_message)
        if updated & {"clickwatch_db", "clickwatch_store_process"} or self.link is None:
            self._open_store(opts.clickwatch_db, opts.clickwatch_queue_size)

    def _intercept(self, storefronts: list[str]) -> None:
        """With storefront hosts: intercept those and the tracking hosts only, through mitmproxy's allow_hosts."""
        try:
            plan = intercept.interception(storefronts, self.config.tenant_host, self.config.tag_pattern)
        except intercept.HostPatternError as exc:
            raise exceptions.OptionsError(f"clickwatch_storefront: {exc}") from None
        self.interception = plan
        if plan is None:
            self._storefronts = None
            if self._allow_hosts_set:
                self._allow_hosts_set = False
                ctx.options.update(allow_hosts=[])
            return
        self._storefronts = [re.compile(x, re.IGNORECASE) for x in plan.storefront]
        for note in plan.notes:
            log.info("clickwatch: %s", note)
        self._allow_hosts_set = True
        if list(ctx.options.allow_hosts) != list(plan.allow_hosts):
            ctx.options.update(allow_hosts=list(plan.allow_hosts))

    def _check_webhook(self, url: str) -> None:
        if url:
            try:
                check_url(url)
            except WebhookError as exc:
                raise exceptions.OptionsError(f"clickwatch_webhook: {exc}") from None
            log.info("clickwatch: notifying %s", redact(url))

    def _config_spec(self) -> dict[str, Any]:
        """The plain values the Config is built from, here and in the store process."""
        opts = ctx.options
        given = {setting: getattr(opts, name) for name, setting in _OPTION_FIELDS.items()}
        return {
            "config_file": opts.clickwatch_config,
            "overrides": {
                setting.name: settings.option_parsed(setting, value)
                for setting, value in given.items()
                if value is not None and setting.type is not dict
            },
            "expected_status": opts.clickwatch_expected_status or "",
        }

    def _build_config(self, spec: dict[str, Any]) -> Config:
        try:
            return build_config(**spec)
        except ConfigError as exc:
            raise exceptions.OptionsError(f"clickwatch_config: {exc}") from None
        except StatusSpecError as exc:
            raise exceptions.OptionsError(f"clickwatch_expected_status: {exc}") from None
        except matching.PatternError as exc:
            raise exceptions.OptionsError(f"clickwatch: {exc}") from None

    def _open_store(self, path: str, queue_size: int) -> None:
        opts = ctx.options
        path = os.path.expanduser(path)
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise exceptions.OptionsError(f"clickwatch_db: directory {directory!r} does not exist")
        if os.path.isdir(path):
            raise exceptions.OptionsError(f"clickwatch_db: {path!r} is a directory, not a database file")
        use_process = opts.clickwatch_store_process
        if self.link is not None:
            if self._store_opened == (path, use_process):
                return
            self.link.close(opts.clickwatch_shutdown_timeout)
        self.link = self.open_link(
            path,
            queue_size=queue_size,
            queue_bytes=opts.clickwatch_queue_bytes,
            shutdown_timeout=opts.clickwatch_shutdown_timeout,
            use_process=use_process,
            proxy_counts=lambda: {
                "proxy_flows": self.flows_seen,
                "addon_errors": self.addon_errors,
                "passthrough_connections": self.passthrough,
                "observer_pages_untouched": self.observer.pages_untouched,
            },
        )
        self._store_opened = (path, use_process)
        self.link.control(self._config_message)
        if self._webhook_message.url:
            self.link.control(self._webhook_message)
        log.info(
            "clickwatch: storing deliveries in %s (%s)",
            os.path.abspath(path),
            "store process" if self.link.mode == "process" else "in the proxy process",
        )

    @fail_open
    def http_connect(self, flow: http.HTTPFlow) -> None:
        # HTTPS: credentials come once, on the CONNECT; every request in the tunnel belongs to that run.
        run = _run_from_credentials(flow)
        if run:
            self._connection_runs[flow.client_conn.id] = clean_run(run)

    @fail_open
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self.flows_seen += 1
        req = flow.request
        own = is_own(req.path)
        if own:
            self.observer.requestheaders(flow)
        metadata = flow.metadata
        run_headers = "proxyauth" in metadata
        body: bytes | None = None  # a declared length, or b"chunked"
        for name, value in req.headers.fields:
            read = _REQUEST_READ.get(name.lower())  # most fields: this one lookup
            if read is None:
                continue
            if read is _RUN:
                run_headers = True
            else:
                body = value if read is _LENGTH else b"chunked"
        if run_headers:
            headers = req.headers
            run = _run_from_credentials(flow) or self._connection_runs.get(flow.client_conn.id)
            if RUN_HEADER in headers:
                # Meant for clickwatch, not for the storefront or the tenant: it goes no further.
                run = headers[RUN_HEADER] or run
                del headers[RUN_HEADER]
            metadata[RUN_METADATA] = clean_run(run)
        else:
            # The common case: nothing for clickwatch in this request's headers.
            runs = self._connection_runs
            metadata[RUN_METADATA] = runs.get(flow.client_conn.id, DEFAULT_RUN) if runs else DEFAULT_RUN
        if own or flow.response is not None or flow.error is not None:
            return  # answered already (e.g. mitmproxy's 407): mitmproxy refuses to stream such a request
        if self._allowed is not None and req.scheme == "http" and not self._intercepted(req):
            metadata[PASSTHROUGH_METADATA] = True
            self.passthrough += 1
            req.stream = True
            return
        if body is not None and (body == b"chunked" or not body.isdigit() or int(body) > self.stream_bytes):
            host, _ = self._origin(req)
            if self.patterns.classify(req.method, host, req.path) is None:
                req.stream = True  # not a tracking call, and large or open-ended: nothing here reads it

    def _intercepted(self, req: http.Request) -> bool:
        """Whether a plain-HTTP request goes to a storefront or tracking host, by mitmproxy's allow_hosts rule."""
        assert self._allowed is not None
        return intercept.allowed(self._allowed, req.host, req.port, req.pretty_host)

    @fail_open
    def next_layer(self, data: NextLayer) -> None:
        # mitmproxy decides first when this addon runs after its NextLayer (clickwatch up); loaded as a script,
        # this runs before it, so look once the decision is made.
        if data.layer is not None:
            self._count_tunnel(data)
        elif self._allowed is not None:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().call_soon(self._count_tunnel, data)

    def _count_tunnel(self, data: NextLayer) -> None:
        layer = data.layer
        # Only what --storefront passes through (not ignore_hosts or tcp_hosts a user set without it).
        if self._allowed is not None and isinstance(layer, layers.TCPLayer) and layer.flow is None:
            self.passthrough += 1

    @fail_open
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        resp = flow.response
        if resp is None or flow.id in self.inflight or OWN_METADATA in flow.metadata:
            return  # a tracking call is read whole, and clickwatch's own answers are small
        if PASSTHROUGH_METADATA in flow.metadata:
            resp.stream = True
            return
        length: bytes | None = None
        content_type = b""
        for name, value in resp.headers.fields:
            lowered = name.lower()
            if lowered == b"content-length":
                length = value
            elif lowered == b"content-type" and not content_type:
                content_type = value
        if content_type[:17].lower() == _EVENT_STREAM:
            resp.stream = True
            return
        small = length is not None and length.strip().isdigit() and int(length) <= self.stream_bytes
        page = content_type[:9].lower() == b"text/html" and self.observer.enabled
        if page and self._add_observer(flow, resp, content_type, small):
            return
        if not small and storefront.reads_body(flow.request.path):
            # A signed-in shopper's consents, of unknown or large length: passed on as it comes, its beginning kept.
            tap = _BodyTap()
            flow.metadata[TAP_METADATA] = tap
            resp.stream = tap
            return
        if not small and not self.observer.wants_whole(flow.request):
            # Nothing here reads the body of an answer that is not a tracking call's, but a service worker's manifest
            # and the file whose hash it checks (read whole, however large).
            resp.stream = True

    def _add_observer(self, flow: http.HTTPFlow, resp: http.Response, content_type: bytes, small: bool) -> bool:
        """Pass a top-level storefront page through the observer's injection: a small one read whole (it keeps a
        Content-Length), any other as it streams. False: not such a page."""
        req = flow.request
        dest: bytes | None = None
        mode: bytes | None = None
        accept = agent = b""
        for name, value in req.headers.fields:  # one pass: each lookup by name would scan them all again
            lowered = name.lower()
            if lowered == b"sec-fetch-dest":
                dest = value if dest is None else dest
            elif lowered == b"sec-fetch-mode":
                mode = value if mode is None else mode
            elif lowered == b"accept":
                accept += value
            elif lowered == b"user-agent":
                agent = value if not agent else agent + b", " + value
        # A navigation a service worker passed to the network (Sec-Fetch-Dest: empty) is the top-level document it
        # fetched for.
        worker_navigation = dest is not None and dest.lower() == b"empty" and (mode or b"").lower() == b"navigate"
        if dest is not None and dest.lower() != b"document" and not worker_navigation:
            return False  # a frame (or anything but a top-level document): left as it is
        if not matching.is_page_load(req.method, dest, accept, content_type, mode):
            return False
        if self._storefronts is not None and not self._on_storefront(req):
            return False
        run = flow.metadata.get(RUN_METADATA, DEFAULT_RUN)
        user_agent = agent.decode("utf-8", "surrogateescape")
        stream = self.observer.page_stream(flow, run, _client_ip(flow), user_agent, whole=small)
        if stream is None:
            return False
        flow.metadata[PAGE_METADATA] = stream
        if not small:
            resp.stream = stream
        return True

    def client_disconnected(self, client: Any) -> None:
        self._connection_runs.pop(client.id, None)

    def _origin(self, req: http.Request) -> tuple[str, str]:
        """The host as the browser named it and the URL up to the path (cached: parsing costs microseconds)."""
        # Keyed on the raw fields pretty_host and pretty_url read (the path aside): req.host_header's
        # case-insensitive lookup alone cost more than everything else here.
        data = req.data
        key = (
            data.method.upper() == b"CONNECT",
            data.scheme,
            data.host,
            data.port,
            data.authority,
            data.http_version,
            tuple([value for name, value in data.headers.fields if name.lower() == b"host"]),
        )
        known = self._origins.get(key)
        if known is None:
            path = req.path if req.path != "*" else ""
            url = req.pretty_url
            known = (req.pretty_host, url[: len(url) - len(path)] if path else url)
            if len(self._origins) >= _MAX_REMEMBERED_ORIGINS:
                self._origins.clear()
            self._origins[key] = known
        return known

    @fail_open
    def request(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        metadata = flow.metadata
        if OWN_METADATA in metadata:
            # (The run a report counts for is its page's, from the page's grant: never this request's.)
            self.observer.request(flow, _client_ip(flow), metadata.get(RUN_METADATA, DEFAULT_RUN))
            return
        if PASSTHROUGH_METADATA in metadata:
            return
        host, origin = self._origin(req)
        match = self.patterns.classify(req.method, host, req.path)
        if match is None or self.link is None:
            return
        # A fresh id per request: a replayed flow keeps its flow.id, but it is a new delivery.
        uid = f"{self._uid_prefix}{next(self._uid_count):016x}"
        kind = match.kind.value
        sent_at = req.timestamp_start
        self.inflight[flow.id] = (uid, kind, sent_at)
        self.link.send(
            wire.Request(
                uid,
                flow.metadata.get(RUN_METADATA, DEFAULT_RUN),
                kind,
                match.target.value if match.target is not None else None,
                req.method,
                origin + req.path if req.path != "*" else origin,
                host,
                req.path,
                _client_ip(flow),
                req.headers.fields,
                req.raw_content or b"",
                sent_at,
            )
        )

    @fail_open
    def response(self, flow: http.HTTPFlow) -> None:
        metadata = flow.metadata
        if OWN_METADATA in metadata or PASSTHROUGH_METADATA in metadata:
            return
        started = self.inflight.pop(flow.id, None)
        resp = flow.response
        if self.link is None or resp is None:
            return
        if started is None:
            on_storefront = self._storefronts is None or self._on_storefront(flow.request)
            if on_storefront:
                # First: whether a worker's pages carry the observer decides whether its signs are handed on.
                self.observer.worker_file(flow)
            # A streamed answer has no body here: its headers still say what they say about consent.
            self._storefront(flow, resp)
            page = metadata.get(PAGE_METADATA)
            if page is not None:
                self.observer.page_done(flow, page)
            return
        uid, kind, sent_at = started
        self.link.send(
            wire.Answer(
                uid,
                kind,
                sent_at,
                resp.timestamp_end or time.time(),
                resp.status_code,
                resp.headers.fields,
                resp.raw_content or b"",
                None,
            )
        )

    @fail_open
    def error(self, flow: http.HTTPFlow) -> None:
        metadata = flow.metadata
        if OWN_METADATA in metadata or PASSTHROUGH_METADATA in metadata:
            return
        started = self.inflight.pop(flow.id, None)
        if self.link is None:
            return
        if started is None:
            self._storefront(flow, None)
            return
        uid, kind, sent_at = started
        message = flow.error.msg if flow.error else "connection ended without an answer"
        self.link.send(wire.Answer(uid, kind, sent_at, time.time(), None, (), b"", message))

    def _on_storefront(self, req: http.Request) -> bool:
        """Whether a request went to one of the given storefront hosts (not a tracking host)."""
        assert self._storefronts is not None
        return intercept.allowed(self._storefronts, req.host, req.port, req.pretty_host)

    def _storefront(self, flow: http.HTTPFlow, resp: http.Response | None) -> None:
        """Hand on what storefront traffic says about consent, sign-in and page loads; most of it says nothing new."""
        req = flow.request
        if resp is None:
            signals = storefront.read_exchange(req.method, req.path, req.headers.fields, None)
        else:
            tap = flow.metadata.get(TAP_METADATA)
            body = tap.body() if tap is not None else resp.raw_content
            signals = storefront.read_exchange(
                req.method, req.path, req.headers.fields, resp.headers.fields, resp.status_code, body
            )
        if signals.worker:
            self._worker(flow, signals)
        if not signals.telling:
            return  # an asset that tells nothing about consent
        browser = (flow.metadata.get(RUN_METADATA, DEFAULT_RUN), _client_ip(flow), signals.user_agent)
        fresh = self._pages.note(browser, signals, req.timestamp_start)
        if fresh is not None:
            for pages in self._pages.flush(browser):  # keep the order: earlier pages before what changes now
                self._send(_folded_message(pages))
            self._send(
                _storefront_message(
                    browser, fresh, req.timestamp_start, resp.timestamp_end if resp is not None else None
                )
            )

    def _worker(self, flow: http.HTTPFlow, signals: storefront.Signals) -> None:
        """Hand on a sign of a service worker at work for a storefront origin (at most one per origin and second)."""
        req = flow.request
        browser = (flow.metadata.get(RUN_METADATA, DEFAULT_RUN), _client_ip(flow), signals.user_agent)
        _, origin = self._origin(req)
        if self._workers.note(browser, origin, req.timestamp_start, self.observer.keeps_worker_pages(req)):
            # Pages folded so far came before it: hand them on first, so the store sees them in order.
            for pages in self._pages.flush(browser):
                self._send(_folded_message(pages))
            path = req.path.partition("?")[0]  # a query says nothing of the worker, and may carry anything
            self._send(wire.Worker(*browser, req.timestamp_start, origin + path, signals.worker))

    def _flush_pages(self) -> None:
        """Hand on the page loads folded so far, of every browser."""
        for pages in self._pages.flush():
            self._send(_folded_message(pages))

    def running(self) -> None:
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._flush_timer = loop.call_later(PAGE_FOLD_SECONDS, self._flush_tick)

    def _flush_tick(self) -> None:
        try:
            self._flush_pages()
            self.observer.flush()
        except Exception:
            self.addon_errors += 1
            log.exception("clickwatch: could not hand on page loads")
        self._schedule_flush()

    def done(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self.link is None:
            return
        self._flush_pages()
        self.observer.flush()
        now = time.time()
        for uid, kind, sent_at in self.inflight.values():
            self.link.send(wire.Answer(uid, kind, sent_at, now, None, (), b"", STOPPED_ERROR))
        self.inflight.clear()
        self.link.close(ctx.options.clickwatch_shutdown_timeout)
        self.link = None
        self._store_opened = None


def _run_from_credentials(flow: http.HTTPFlow) -> str | None:
    """The run named by proxy credentials (http://RUN@proxy): the user name; the header is then removed."""
    if "proxyauth" in flow.metadata:  # mitmproxy's own proxyauth (e.g. proxyauth=any) already checked it
        return str(flow.metadata["proxyauth"][0]) or None
    value = flow.request.headers.get("proxy-authorization")
    if value is None:
        return None
    del flow.request.headers["proxy-authorization"]
    try:
        _, user, _ = proxyauth.parse_http_basic_auth(value)
    except ValueError:  # not Basic, not base64, or no "user:password"
        return None
    return unquote(user) or None


def clean_run(run: str | None) -> str:
    """A run name fit to store and show: printable, at most 100 characters; the default run when empty."""
    if run is None:
        return DEFAULT_RUN
    cleaned = "".join(c for c in run.strip() if c.isprintable())[:MAX_RUN_LENGTH]
    return cleaned or DEFAULT_RUN


def _client_ip(flow: http.HTTPFlow) -> str:
    peer = flow.client_conn.peername
    return str(peer[0]) if peer else ""


def _storefront_message(
    browser: storefront.Browser,
    said: storefront.Signals,
    request_at: float,
    response_at: float | None,
    repeats: int = 0,
    last_at: float | None = None,
) -> wire.Storefront:
    return wire.Storefront(
        *browser,
        request_at,
        response_at,
        said.cookie,
        said.anonymous_consents_header,
        said.set_cookies,
        said.page_load,
        repeats,
        last_at,
        said.consent_reference,
        said.logged_in,
        said.account,
    )


def _folded_message(pages: storefront.FoldedPages) -> wire.Storefront:
    """Page loads folded with unchanged consent headers, as one message counting them all."""
    return _storefront_message(pages.browser, pages.signals, pages.first_at, None, pages.count - 1, pages.last_at)


addons = [Clickwatch()]
