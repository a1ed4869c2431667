"""mitmproxy addon: captures every ISS tracking call and its answer into the clickwatch store.

Load it into an existing mitmproxy with `mitmdump -s "$(clickwatch addon-path)"`, or run `clickwatch up`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import logging
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from mitmproxy import ctx, exceptions, http

from clickwatch.addon.observer import OWN_METADATA, ObserverSide, is_own
from clickwatch.core import matching
from clickwatch.core.config import Config, ConfigError, build_config
from clickwatch.core.consent import (
    ANONYMOUS_CONSENTS,
    CONSENT_GIVEN_SUFFIX,
    TRACKING_PAUSE,
    has_consent_cookie,
    signed_in,
)
from clickwatch.core.verdict import StatusSpecError
from clickwatch.store import wire
from clickwatch.store.link import StoreLink
from clickwatch.store.notify import WebhookError, check_url, redact

log = logging.getLogger("clickwatch.addon")

DEFAULT_RUN = "default"
RUN_HEADER = "X-Clickwatch-Run"
RUN_METADATA = "clickwatch_run"
MAX_RUN_LENGTH = 100
PAGE_FOLD_SECONDS = 1.0
STOPPED_ERROR = "clickwatch stopped before the answer arrived"
_CONSENT_COOKIE_BYTES = tuple(name.encode() for name in (ANONYMOUS_CONSENTS, CONSENT_GIVEN_SUFFIX, TRACKING_PAUSE))
_RUN_HEADERS = frozenset((b"proxy-authorization", RUN_HEADER.lower().encode()))
_MAX_REMEMBERED_BROWSERS = 10000
_MAX_REMEMBERED_ORIGINS = 4096

# Options that map onto a Config field; set to anything but their default, they override the config file.
_OPTION_FIELDS = {
    "clickwatch_clickstream_path": "clickstream_path",
    "clickwatch_consent_path": "consent_path",
    "clickwatch_strategy_path": "strategy_path",
    "clickwatch_tag_pattern": "tag_pattern",
    "clickwatch_tenant_host": "tenant_host",
    "clickwatch_body_limit": "body_limit",
    "clickwatch_observer": "observer_enabled",
}
_CONFIG_OPTIONS = {"clickwatch_config", "clickwatch_expected_status", *_OPTION_FIELDS}


def fail_open[F: Callable[..., Any]](hook: F) -> F:
    """Log and count any exception in a hook; the flow goes on untouched."""

    @functools.wraps(hook)
    def wrapper(self: Clickwatch, *args: Any) -> Any:
        try:
            return hook(self, *args)
        except Exception:
            self.addon_errors += 1
            log.exception("clickwatch: error in %s hook (flow passed on untouched)", hook.__name__)
            return None

    return wrapper  # type: ignore[return-value]


class Clickwatch:
    """Recognises tracking calls, records each as a delivery, and follows consent on storefront traffic."""

    def __init__(self) -> None:
        self.config = Config()
        self.patterns = self.config.patterns()
        self.writer: StoreLink | None = None
        self.inflight: dict[str, tuple[str, str, float]] = {}
        self._origins: dict[tuple[str, str | None, str, int], tuple[str, str]] = {}
        self._config_message: wire.Message = (
            wire.CONFIG,
            {"config_file": "", "overrides": {}, "expected_status": ""},
        )
        self._webhook_message: wire.Message = (wire.WEBHOOK, "", 10)
        # Per browser, the consent-bearing headers last handed on: unchanged ones on assets are not re-sent.
        self._last_consent_headers: OrderedDict[tuple[str, str, str], tuple[str, str | None, bool, bool | None]] = (
            OrderedDict()
        )
        self._connection_runs: dict[str, str] = {}
        # Per browser: [first page at, last page at, count, consent headers] of page loads not handed on yet.
        self._folded_pages: dict[tuple[str, str, str], list[Any]] = {}
        self._flush_timer: asyncio.TimerHandle | None = None
        self.flows_seen = 0
        self.addon_errors = 0
        self.observer = ObserverSide(self._send)

    def _send(self, message: wire.Message) -> None:
        if self.writer is not None:
            self.writer.send(message)

    def load(self, loader: Any) -> None:
        defaults = Config()
        loader.add_option(
            "clickwatch_db",
            str,
            "clickwatch.db",
            "Path of the SQLite file clickwatch stores deliveries, findings and consent signals in.",
        )
        loader.add_option(
            "clickwatch_config",
            str,
            "",
            "Path of a clickwatch TOML configuration file (patterns, statuses, consent, windows, schemas, "
            "severities); empty means built-in defaults.",
        )
        loader.add_option(
            "clickwatch_clickstream_path",
            str,
            defaults.clickstream_path,
            "Regular expression searched in the request path of clickstream event POSTs (ISS edge endpoint).",
        )
        loader.add_option(
            "clickwatch_consent_path",
            str,
            defaults.consent_path,
            "Regular expression searched in the request path of consent-reference POSTs.",
        )
        loader.add_option(
            "clickwatch_strategy_path",
            str,
            defaults.strategy_path,
            "Regular expression searched in the request path of merchandising strategy calls.",
        )
        loader.add_option(
            "clickwatch_tag_pattern",
            str,
            defaults.tag_pattern,
            "Regular expression searched in 'host/path' of Profile Tag script and tag config loads.",
        )
        loader.add_option(
            "clickwatch_tenant_host",
            str,
            defaults.tenant_host,
            "Regular expression the host of clickstream, consent-reference and strategy calls must match; "
            "empty means any host.",
        )
        loader.add_option(
            "clickwatch_expected_status",
            str,
            "",
            "Statuses that count as delivered, per kind, overriding the defaults, e.g. "
            "'clickstream=201;consent_reference=201;preflight=2xx;tag=2xx,304;strategy=2xx'.",
        )
        loader.add_option(
            "clickwatch_body_limit",
            int,
            defaults.body_limit,
            "Characters of each decoded request or response body kept in the store; longer bodies are truncated "
            "and flagged.",
        )
        loader.add_option(
            "clickwatch_observer",
            bool,
            defaults.observer_enabled,
            'Add clickwatch\'s data-layer observer (<script src="/__clickwatch/observer.js">) to storefront pages, '
            "so consent and intended events are read in the browser; false judges from network traffic only.",
        )
        loader.add_option(
            "clickwatch_webhook",
            str,
            "",
            "URL to POST a JSON notification (Slack-compatible 'text') to when a delivery is rejected or failed "
            "or an error finding is recorded; empty means no notifications.",
        )
        loader.add_option(
            "clickwatch_webhook_interval",
            int,
            10,
            "Minimum seconds between two webhook notifications; what happens in between is sent together.",
        )
        loader.add_option(
            "clickwatch_queue_size",
            int,
            10000,
            "Observations held in memory while the database cannot be written; beyond it they are dropped and counted.",
        )
        loader.add_option(
            "clickwatch_store_process",
            bool,
            True,
            "Decode, judge and write deliveries in a separate store process, so the proxy's event loop never "
            "waits for them; false does it in a thread of the proxy process (slower under heavy load).",
        )
        loader.add_option(
            "clickwatch_shutdown_timeout",
            int,
            10,
            "Seconds clickwatch waits at exit for queued deliveries to be written to a database that is busy.",
        )

    def configure(self, updated: set[str]) -> None:
        opts = ctx.options
        if updated & _CONFIG_OPTIONS:
            spec = self._config_spec()
            self.config = self._build_config(spec)
            self.patterns = self.config.patterns()
            self.observer.enabled = self.config.observer_enabled
            self._config_message = (wire.CONFIG, spec)
            if self.writer is not None:
                self.writer.control(self._config_message)
        if opts.clickwatch_queue_size < 1:
            raise exceptions.OptionsError(
                f"clickwatch_queue_size: must be at least 1, not {opts.clickwatch_queue_size}"
            )
        if opts.clickwatch_shutdown_timeout < 0:
            raise exceptions.OptionsError(
                f"clickwatch_shutdown_timeout: must be 0 or more seconds, not {opts.clickwatch_shutdown_timeout}"
            )
        if updated & {"clickwatch_webhook", "clickwatch_webhook_interval"}:
            self._check_webhook(opts.clickwatch_webhook, opts.clickwatch_webhook_interval)
            self._webhook_message = (wire.WEBHOOK, opts.clickwatch_webhook, opts.clickwatch_webhook_interval)
            if self.writer is not None:
                self.writer.control(self._webhook_message)
        if updated & {"clickwatch_db", "clickwatch_store_process"} or self.writer is None:
            self._open_store(opts.clickwatch_db, opts.clickwatch_queue_size)

    def _check_webhook(self, url: str, interval: int) -> None:
        if interval < 0:
            raise exceptions.OptionsError(f"clickwatch_webhook_interval: must be 0 or more seconds, not {interval}")
        if url:
            try:
                check_url(url)
            except WebhookError as exc:
                raise exceptions.OptionsError(f"clickwatch_webhook: {exc}") from None
            log.info("clickwatch: notifying %s", redact(url))

    def _config_spec(self) -> dict[str, Any]:
        """The plain values the Config is built from, here and in the store process."""
        opts = ctx.options
        defaults = Config()
        overrides = {
            field: getattr(opts, name)
            for name, field in _OPTION_FIELDS.items()
            if getattr(opts, name) != getattr(defaults, field)
        }
        return {
            "config_file": opts.clickwatch_config,
            "overrides": overrides,
            "expected_status": opts.clickwatch_expected_status,
        }

    def _build_config(self, spec: dict[str, Any]) -> Config:
        if ctx.options.clickwatch_body_limit < 0:
            raise exceptions.OptionsError(
                f"clickwatch_body_limit: must be 0 or more characters, not {ctx.options.clickwatch_body_limit}"
            )
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
        if self.writer is not None:
            if self.writer.path == path and (self.writer.mode == "process") == use_process:
                return
            self.writer.close(opts.clickwatch_shutdown_timeout)
        self.writer = StoreLink(
            path,
            queue_size=queue_size,
            shutdown_timeout=opts.clickwatch_shutdown_timeout,
            use_process=use_process,
            live_counters=lambda: {"proxy_flows": self.flows_seen, "addon_errors": self.addon_errors},
        )
        self.writer.control(self._config_message)
        if self._webhook_message[1]:
            self.writer.control(self._webhook_message)
        log.info(
            "clickwatch: storing deliveries in %s (%s)",
            os.path.abspath(path),
            "store process" if self.writer.mode == "process" else "in the proxy process",
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
        if is_own(flow.request.path):
            self.observer.requestheaders(flow)
        metadata = flow.metadata
        if "proxyauth" not in metadata:
            for name, _ in flow.request.headers.fields:
                if name.lower() in _RUN_HEADERS:
                    break
            else:
                # The common case: nothing for clickwatch in this request's headers.
                runs = self._connection_runs
                metadata[RUN_METADATA] = runs.get(flow.client_conn.id, DEFAULT_RUN) if runs else DEFAULT_RUN
                return
        headers = flow.request.headers
        run = _run_from_credentials(flow) or self._connection_runs.get(flow.client_conn.id)
        if RUN_HEADER in headers:
            # Meant for clickwatch, not for the storefront or the tenant: it goes no further.
            run = headers[RUN_HEADER] or run
            del headers[RUN_HEADER]
        metadata[RUN_METADATA] = clean_run(run)

    def client_disconnected(self, client: Any) -> None:
        self._connection_runs.pop(client.id, None)

    def _origin(self, req: http.Request) -> tuple[str, str]:
        """The host as the browser named it and the URL up to the path (cached: parsing costs microseconds)."""
        key = (req.scheme, req.host_header, req.host, req.port)
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
        if OWN_METADATA in flow.metadata:
            self.observer.request(flow, flow.metadata.get(RUN_METADATA, DEFAULT_RUN), _client_ip(flow))
            return
        host, origin = self._origin(req)
        match = self.patterns.classify(req.method, host, req.path)
        if match is None or self.writer is None:
            return
        # A fresh id per request: a replayed flow keeps its flow.id, but it is a new delivery.
        uid = uuid.uuid4().hex
        kind = match.kind.value
        sent_at = req.timestamp_start
        self.inflight[flow.id] = (uid, kind, sent_at)
        self.writer.send(
            (
                wire.REQUEST,
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
        if OWN_METADATA in flow.metadata:
            return
        started = self.inflight.pop(flow.id, None)
        resp = flow.response
        if self.writer is None or resp is None:
            return
        if started is None:
            page = self._storefront(flow, resp)
            if page is not None:
                self.observer.add_to_page(flow, *page)
            return
        uid, kind, sent_at = started
        self.writer.send(
            (
                wire.ANSWER,
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
        if OWN_METADATA in flow.metadata:
            return
        started = self.inflight.pop(flow.id, None)
        if self.writer is None:
            return
        if started is None:
            self._storefront(flow, None)
            return
        uid, kind, sent_at = started
        message = flow.error.msg if flow.error else "connection ended without an answer"
        self.writer.send((wire.ANSWER, uid, kind, sent_at, time.time(), None, (), b"", message))

    def _storefront(self, flow: http.HTTPFlow, resp: http.Response | None) -> tuple[str, str, str] | None:
        """Hand on what storefront traffic says about consent, sign-in and page loads; most of it says nothing new.

        Returns the browser (run, address, user agent) when this was a page load, else None.
        """
        assert self.writer is not None
        req = flow.request
        # One pass over the raw header fields: mitmproxy's case-insensitive lookups cost a scan each.
        cookies: list[bytes] = []
        anonymous: bytes | None = None
        dest: bytes | None = None
        accept = b""
        agent: bytes | None = None
        authorization: bytes | None = None
        reference = False
        for name, value in req.headers.fields:
            lowered = name.lower()
            if lowered == b"cookie":
                cookies.append(value)
            elif lowered == b"user-agent":
                agent = value if agent is None else agent + b", " + value
            elif lowered == b"accept":
                accept = value if not accept else accept + b", " + value
            elif lowered == b"sec-fetch-dest":
                dest = value if dest is None else dest + b", " + value
            elif lowered == b"x-anonymous-consents":
                anonymous = value if anonymous is None else anonymous + b", " + value
            elif lowered == b"authorization":
                authorization = value
            elif lowered == b"x-consent-reference":
                reference = reference or bool(value.strip())
        set_cookies: list[str] = []
        content_type: bytes | None = None
        if resp is not None:
            for name, value in resp.headers.fields:
                lowered = name.lower()
                if lowered == b"set-cookie":
                    if any(cookie in value.split(b"=", 1)[0] for cookie in _CONSENT_COOKIE_BYTES):
                        set_cookies.append(wire.header_text(value))
                elif lowered == b"content-type" and content_type is None:
                    content_type = value
        page_load = (
            content_type is not None
            and content_type[:9].lower() == b"text/html"
            and req.method.upper() == "GET"
            and (dest.lower() in (b"document", b"iframe") if dest is not None else b"text/html" in accept.lower())
        )
        cookie = wire.header_text(b"; ".join(cookies))
        consent_cookie = has_consent_cookie(cookie)  # names only; it skips parsing when neither name occurs
        logged_in = signed_in(
            req.path, wire.header_text(authorization) if authorization is not None else None, cookie, page_load
        )
        if (
            not page_load
            and not set_cookies
            and anonymous is None
            and not consent_cookie
            and not reference
            and logged_in is None
        ):
            return None  # an asset that tells nothing about consent
        run = flow.metadata.get(RUN_METADATA, DEFAULT_RUN)
        browser = (run, _client_ip(flow), wire.header_text(agent) if agent is not None else "")
        last = self._last_consent_headers.get(browser)
        if logged_in is None and last is not None:
            logged_in = last[3]  # a call that says nothing about sign-in leaves it as it was: nothing new to send
        headers = (cookie, wire.header_text(anonymous) if anonymous is not None else None, reference, logged_in)
        if not set_cookies and last == headers:
            if page_load:
                # Same browser, same consent headers: only the page count moves. Fold it and hand it on
                # once a second, so ordinary browsing costs the store almost nothing.
                folded = self._folded_pages.get(browser)
                if folded is None:
                    self._folded_pages[browser] = [req.timestamp_start, req.timestamp_start, 1, headers]
                else:
                    folded[1] = req.timestamp_start
                    folded[2] += 1
            return browser if page_load else None
        self._flush_pages(browser)  # keep the order: earlier pages before what changes now
        self._last_consent_headers[browser] = headers
        self._last_consent_headers.move_to_end(browser)
        if len(self._last_consent_headers) > _MAX_REMEMBERED_BROWSERS:
            self._last_consent_headers.popitem(last=False)
        self.writer.send(
            (
                wire.STOREFRONT,
                run,
                browser[1],
                browser[2],
                req.timestamp_start,
                resp.timestamp_end if resp is not None else None,
                headers[0],
                headers[1],
                tuple(set_cookies),
                page_load,
                0,
                None,
                reference,
                logged_in,
            )
        )
        return browser if page_load else None

    def _flush_pages(self, browser: tuple[str, str, str] | None = None) -> None:
        """Hand on folded page loads (of one browser, or of all)."""
        if self.writer is None:
            return
        browsers = [browser] if browser is not None else list(self._folded_pages)
        for key in browsers:
            folded = self._folded_pages.pop(key, None)
            if folded is None:
                continue
            first_at, last_at, count, (cookie, anonymous_header, reference, logged_in) = folded
            self.writer.send(
                (
                    wire.STOREFRONT,
                    key[0],
                    key[1],
                    key[2],
                    first_at,
                    None,
                    cookie,
                    anonymous_header,
                    (),
                    True,
                    count - 1,
                    last_at,
                    reference,
                    logged_in,
                )
            )

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
        if self.writer is None:
            return
        self._flush_pages()
        self.observer.flush()
        now = time.time()
        for uid, kind, sent_at in self.inflight.values():
            self.writer.send((wire.ANSWER, uid, kind, sent_at, now, None, (), b"", STOPPED_ERROR))
        self.inflight.clear()
        self.writer.close(ctx.options.clickwatch_shutdown_timeout)
        self.writer = None


def _run_from_credentials(flow: http.HTTPFlow) -> str | None:
    """The run named by proxy credentials (http://RUN@proxy): the user name; the header is then removed."""
    if "proxyauth" in flow.metadata:  # mitmproxy's own proxyauth (e.g. proxyauth=any) already checked it
        return str(flow.metadata["proxyauth"][0]) or None
    value = flow.request.headers.get("proxy-authorization")
    if value is None:
        return None
    del flow.request.headers["proxy-authorization"]
    scheme, _, encoded = value.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")[0]
    except (binascii.Error, UnicodeDecodeError):
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


addons = [Clickwatch()]
