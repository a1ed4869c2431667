"""mitmproxy addon: captures every ISS tracking call and its answer into the clickwatch store.

Load it into an existing mitmproxy with `mitmdump -s "$(clickwatch addon-path)"`, or run `clickwatch up`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
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

from core import matching
from core.config import Config, ConfigError, load_config
from core.consent import ANONYMOUS_CONSENTS, CONSENT_GIVEN_SUFFIX, TRACKING_PAUSE, has_consent_cookie
from core.model import Answer, Kind, RequestSeen, StorefrontSeen
from core.pipeline import Notice
from core.verdict import StatusSpecError, parse_expected
from store.notify import WebhookError, WebhookNotifier, check_url, redact
from store.writer import StoreWriter

log = logging.getLogger("clickwatch.addon")

DEFAULT_RUN = "default"
RUN_HEADER = "X-Clickwatch-Run"
RUN_METADATA = "clickwatch_run"
MAX_RUN_LENGTH = 100
PAGE_FOLD_SECONDS = 1.0
STOPPED_ERROR = "clickwatch stopped before the answer arrived"
_CONSENT_COOKIE_NAMES = (ANONYMOUS_CONSENTS, CONSENT_GIVEN_SUFFIX, TRACKING_PAUSE)
_MAX_REMEMBERED_BROWSERS = 10000

# Options that map onto a Config field; set to anything but their default, they override the config file.
_OPTION_FIELDS = {
    "clickwatch_clickstream_path": "clickstream_path",
    "clickwatch_consent_path": "consent_path",
    "clickwatch_strategy_path": "strategy_path",
    "clickwatch_tag_pattern": "tag_pattern",
    "clickwatch_tenant_host": "tenant_host",
    "clickwatch_body_limit": "body_limit",
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
        self.writer: StoreWriter | None = None
        self.notifier: WebhookNotifier | None = None
        self.inflight: dict[str, tuple[str, Kind, float]] = {}
        # Per browser, the consent-bearing headers last handed on: unchanged ones on assets are not re-sent.
        self._last_consent_headers: OrderedDict[tuple[str, str, str], tuple[str, str | None]] = OrderedDict()
        self._connection_runs: dict[str, str] = {}
        # Per browser: [first page at, last page at, count, consent headers] of page loads not handed on yet.
        self._folded_pages: dict[tuple[str, str, str], list[Any]] = {}
        self._flush_timer: asyncio.TimerHandle | None = None
        self.flows_seen = 0
        self.addon_errors = 0

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
            "clickwatch_shutdown_timeout",
            int,
            10,
            "Seconds clickwatch waits at exit for queued deliveries to be written to a database that is busy.",
        )

    def configure(self, updated: set[str]) -> None:
        opts = ctx.options
        if updated & _CONFIG_OPTIONS:
            config = self._build_config()
            self.patterns = config.patterns()
            self.config = config
            if self.writer is not None:
                self.writer.config = config
        if opts.clickwatch_queue_size < 1:
            raise exceptions.OptionsError(
                f"clickwatch_queue_size: must be at least 1, not {opts.clickwatch_queue_size}"
            )
        if opts.clickwatch_shutdown_timeout < 0:
            raise exceptions.OptionsError(
                f"clickwatch_shutdown_timeout: must be 0 or more seconds, not {opts.clickwatch_shutdown_timeout}"
            )
        if updated & {"clickwatch_webhook", "clickwatch_webhook_interval"}:
            self._open_webhook(opts.clickwatch_webhook, opts.clickwatch_webhook_interval)
        if "clickwatch_db" in updated or self.writer is None:
            self._open_store(opts.clickwatch_db, opts.clickwatch_queue_size)

    def _open_webhook(self, url: str, interval: int) -> None:
        if interval < 0:
            raise exceptions.OptionsError(f"clickwatch_webhook_interval: must be 0 or more seconds, not {interval}")
        if url:
            try:
                check_url(url)
            except WebhookError as exc:
                raise exceptions.OptionsError(f"clickwatch_webhook: {exc}") from None
        if self.notifier is not None:
            self.notifier.close()
            self.notifier = None
        if url:
            self.notifier = WebhookNotifier(url, min_interval=float(interval))
            log.info("clickwatch: notifying %s", redact(url))

    def _notify(self, notices: list[Notice]) -> None:
        notifier = self.notifier
        if notifier is not None:
            notifier.notify(notices)

    def _build_config(self) -> Config:
        opts = ctx.options
        try:
            config = load_config(opts.clickwatch_config) if opts.clickwatch_config else Config()
        except ConfigError as exc:
            raise exceptions.OptionsError(f"clickwatch_config: {exc}") from None
        defaults = Config()
        overrides = {
            field: getattr(opts, name)
            for name, field in _OPTION_FIELDS.items()
            if getattr(opts, name) != getattr(defaults, field)
        }
        if opts.clickwatch_body_limit < 0:
            raise exceptions.OptionsError(
                f"clickwatch_body_limit: must be 0 or more characters, not {opts.clickwatch_body_limit}"
            )
        try:
            overrides["expected_status"] = parse_expected(opts.clickwatch_expected_status, config.expected_status)
        except StatusSpecError as exc:
            raise exceptions.OptionsError(f"clickwatch_expected_status: {exc}") from None
        config = dataclasses.replace(config, **overrides)
        try:
            config.patterns()
        except matching.PatternError as exc:
            raise exceptions.OptionsError(f"clickwatch: {exc}") from None
        return config

    def _open_store(self, path: str, queue_size: int) -> None:
        path = os.path.expanduser(path)
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise exceptions.OptionsError(f"clickwatch_db: directory {directory!r} does not exist")
        if os.path.isdir(path):
            raise exceptions.OptionsError(f"clickwatch_db: {path!r} is a directory, not a database file")
        if self.writer is not None:
            if self.writer.path == path:
                return
            self.writer.close(ctx.options.clickwatch_shutdown_timeout)
        self.writer = StoreWriter(
            path,
            self.config,
            queue_size=queue_size,
            live_counters=lambda: {"proxy_flows": self.flows_seen, "addon_errors": self.addon_errors},
            on_notices=self._notify,
        )
        self.writer.start()
        log.info("clickwatch: storing deliveries in %s", os.path.abspath(path))

    @fail_open
    def http_connect(self, flow: http.HTTPFlow) -> None:
        # HTTPS: credentials come once, on the CONNECT; every request in the tunnel belongs to that run.
        run = _run_from_credentials(flow)
        if run:
            self._connection_runs[flow.client_conn.id] = run

    @fail_open
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        headers = flow.request.headers
        run = _run_from_credentials(flow) or self._connection_runs.get(flow.client_conn.id)
        if RUN_HEADER in headers:
            # Meant for clickwatch, not for the storefront or the tenant: it goes no further.
            run = headers[RUN_HEADER] or run
            del headers[RUN_HEADER]
        flow.metadata[RUN_METADATA] = clean_run(run)

    def client_disconnected(self, client: Any) -> None:
        self._connection_runs.pop(client.id, None)

    @fail_open
    def request(self, flow: http.HTTPFlow) -> None:
        self.flows_seen += 1
        req = flow.request
        match = self.patterns.classify(req.method, req.pretty_host, req.path)
        if match is None or self.writer is None:
            return
        uid = uuid.uuid4().hex
        sent_at = req.timestamp_start
        self.inflight[flow.id] = (uid, match.kind, sent_at)
        self.writer.submit(
            RequestSeen(
                uid=uid,
                run=flow.metadata.get(RUN_METADATA, DEFAULT_RUN),
                kind=match.kind,
                target=match.target,
                method=req.method,
                url=req.pretty_url,
                host=req.pretty_host,
                path=req.path,
                client_addr=_client_ip(flow),
                user_agent=req.headers.get("user-agent", ""),
                headers=tuple(req.headers.items(multi=True)),
                raw_body=req.raw_content or b"",
                sent_at=sent_at,
            )
        )

    @fail_open
    def response(self, flow: http.HTTPFlow) -> None:
        started = self.inflight.pop(flow.id, None)
        if self.writer is None or flow.response is None:
            return
        resp = flow.response
        if started is None:
            self._storefront(flow, resp)
            return
        uid, kind, sent_at = started
        self.writer.submit(
            Answer(
                uid=uid,
                kind=kind,
                sent_at=sent_at,
                ended_at=resp.timestamp_end or time.time(),
                status_code=resp.status_code,
                headers=tuple(resp.headers.items(multi=True)),
                raw_body=resp.raw_content or b"",
            )
        )

    @fail_open
    def error(self, flow: http.HTTPFlow) -> None:
        started = self.inflight.pop(flow.id, None)
        if self.writer is None:
            return
        if started is None:
            self._storefront(flow, None)
            return
        uid, kind, sent_at = started
        message = flow.error.msg if flow.error else "connection ended without an answer"
        self.writer.submit(Answer(uid=uid, kind=kind, sent_at=sent_at, ended_at=time.time(), error=message))

    def _storefront(self, flow: http.HTTPFlow, resp: http.Response | None) -> None:
        """Hand on what storefront traffic says about consent and page loads; most of it says nothing new."""
        assert self.writer is not None
        req = flow.request
        cookie = req.headers.get("cookie", "")
        anonymous_header = req.headers.get("x-anonymous-consents")
        set_cookies = [
            value
            for value in (resp.headers.get_all("set-cookie") if resp is not None else ())
            if any(name in value.split("=", 1)[0] for name in _CONSENT_COOKIE_NAMES)
        ]
        page_load = resp is not None and matching.is_page_load(
            req.method,
            req.headers.get("sec-fetch-dest"),
            req.headers.get("accept", ""),
            resp.headers.get("content-type", ""),
        )
        if not page_load and not set_cookies and anonymous_header is None and not has_consent_cookie(cookie):
            return  # an asset that tells nothing about consent
        run = flow.metadata.get(RUN_METADATA, DEFAULT_RUN)
        browser = (run, _client_ip(flow), req.headers.get("user-agent", ""))
        headers = (cookie, anonymous_header)
        if not set_cookies and self._last_consent_headers.get(browser) == headers:
            if page_load:
                # Same browser, same consent headers: only the page count moves. Fold it and hand it on
                # once a second, so ordinary browsing costs the store almost nothing.
                folded = self._folded_pages.get(browser)
                if folded is None:
                    self._folded_pages[browser] = [req.timestamp_start, req.timestamp_start, 1, headers]
                else:
                    folded[1] = req.timestamp_start
                    folded[2] += 1
            return
        self._flush_pages(browser)  # keep the order: earlier pages before what changes now
        self._last_consent_headers[browser] = headers
        self._last_consent_headers.move_to_end(browser)
        if len(self._last_consent_headers) > _MAX_REMEMBERED_BROWSERS:
            self._last_consent_headers.popitem(last=False)
        self.writer.submit(
            StorefrontSeen(
                run=run,
                client_addr=browser[1],
                user_agent=browser[2],
                request_at=req.timestamp_start,
                response_at=resp.timestamp_end if resp is not None else None,
                cookie=cookie,
                anonymous_consents_header=anonymous_header,
                set_cookies=tuple(set_cookies),
                page_load=page_load,
            )
        )

    def _flush_pages(self, browser: tuple[str, str, str] | None = None) -> None:
        """Hand on folded page loads (of one browser, or of all)."""
        if self.writer is None:
            return
        browsers = [browser] if browser is not None else list(self._folded_pages)
        for key in browsers:
            folded = self._folded_pages.pop(key, None)
            if folded is None:
                continue
            first_at, last_at, count, (cookie, anonymous_header) = folded
            self.writer.submit(
                StorefrontSeen(
                    run=key[0],
                    client_addr=key[1],
                    user_agent=key[2],
                    request_at=first_at,
                    response_at=None,
                    cookie=cookie,
                    anonymous_consents_header=anonymous_header,
                    set_cookies=(),
                    page_load=True,
                    repeats=count - 1,
                    last_at=last_at,
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
        now = time.time()
        for uid, kind, sent_at in self.inflight.values():
            self.writer.submit(Answer(uid=uid, kind=kind, sent_at=sent_at, ended_at=now, error=STOPPED_ERROR))
        self.inflight.clear()
        self.writer.close(ctx.options.clickwatch_shutdown_timeout)
        self.writer = None
        if self.notifier is not None:
            self.notifier.close()
            self.notifier = None


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
