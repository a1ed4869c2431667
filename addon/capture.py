"""mitmproxy addon: captures every ISS tracking call and its answer into the clickwatch store.

Load it into an existing mitmproxy with `mitmdump -s "$(clickwatch addon-path)"`, or run `clickwatch up`.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

from mitmproxy import ctx, exceptions, http

from core import matching
from core.model import Answer, Kind, RequestSeen
from core.record import RecordSettings
from core.verdict import StatusSpecError, parse_expected
from store.writer import StoreWriter

log = logging.getLogger("clickwatch.addon")

DEFAULT_RUN = "default"
STOPPED_ERROR = "clickwatch stopped before the answer arrived"


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
    """Recognises tracking calls, records each as a delivery, and judges its answer."""

    def __init__(self) -> None:
        self.patterns = matching.Patterns.compile()
        self.settings = RecordSettings()
        self.writer: StoreWriter | None = None
        self.inflight: dict[str, tuple[str, Kind, float]] = {}
        self.flows_seen = 0
        self.addon_errors = 0

    def load(self, loader: Any) -> None:
        loader.add_option(
            "clickwatch_db",
            str,
            "clickwatch.db",
            "Path of the SQLite file clickwatch stores deliveries in; created if missing.",
        )
        loader.add_option(
            "clickwatch_clickstream_path",
            str,
            matching.DEFAULT_CLICKSTREAM_PATH,
            "Regular expression searched in the request path of clickstream event POSTs (ISS edge endpoint).",
        )
        loader.add_option(
            "clickwatch_consent_path",
            str,
            matching.DEFAULT_CONSENT_PATH,
            "Regular expression searched in the request path of consent-reference POSTs.",
        )
        loader.add_option(
            "clickwatch_strategy_path",
            str,
            matching.DEFAULT_STRATEGY_PATH,
            "Regular expression searched in the request path of merchandising strategy calls.",
        )
        loader.add_option(
            "clickwatch_tag_pattern",
            str,
            matching.DEFAULT_TAG_PATTERN,
            "Regular expression searched in 'host/path' of Profile Tag script and tag config loads.",
        )
        loader.add_option(
            "clickwatch_tenant_host",
            str,
            matching.DEFAULT_TENANT_HOST,
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
            65536,
            "Characters of each decoded request or response body kept in the store; longer bodies are truncated "
            "and flagged.",
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
        if updated & {
            "clickwatch_clickstream_path",
            "clickwatch_consent_path",
            "clickwatch_strategy_path",
            "clickwatch_tag_pattern",
            "clickwatch_tenant_host",
        }:
            try:
                self.patterns = matching.Patterns.compile(
                    clickstream_path=opts.clickwatch_clickstream_path,
                    consent_path=opts.clickwatch_consent_path,
                    strategy_path=opts.clickwatch_strategy_path,
                    tag=opts.clickwatch_tag_pattern,
                    tenant_host=opts.clickwatch_tenant_host,
                )
            except matching.PatternError as exc:
                raise exceptions.OptionsError(f"clickwatch: {exc}") from None
        if updated & {"clickwatch_expected_status", "clickwatch_body_limit"}:
            if opts.clickwatch_body_limit < 0:
                raise exceptions.OptionsError(
                    f"clickwatch_body_limit: must be 0 or more characters, not {opts.clickwatch_body_limit}"
                )
            try:
                expected = parse_expected(opts.clickwatch_expected_status)
            except StatusSpecError as exc:
                raise exceptions.OptionsError(f"clickwatch_expected_status: {exc}") from None
            self.settings = RecordSettings(body_limit=opts.clickwatch_body_limit, expected=expected)
            if self.writer is not None:
                self.writer.settings = self.settings
        if opts.clickwatch_queue_size < 1:
            raise exceptions.OptionsError(
                f"clickwatch_queue_size: must be at least 1, not {opts.clickwatch_queue_size}"
            )
        if opts.clickwatch_shutdown_timeout < 0:
            raise exceptions.OptionsError(
                f"clickwatch_shutdown_timeout: must be 0 or more seconds, not {opts.clickwatch_shutdown_timeout}"
            )
        if "clickwatch_db" in updated or self.writer is None:
            self._open_store(opts.clickwatch_db, opts.clickwatch_queue_size)

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
        self.writer = StoreWriter(path, self.settings, queue_size=queue_size)
        self.writer.start()
        log.info("clickwatch: storing deliveries in %s", os.path.abspath(path))

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
                run=DEFAULT_RUN,
                kind=match.kind,
                target=match.target,
                method=req.method,
                url=req.pretty_url,
                host=req.pretty_host,
                path=req.path,
                client_addr=flow.client_conn.peername[0] if flow.client_conn.peername else "",
                user_agent=req.headers.get("user-agent", ""),
                headers=tuple(req.headers.items(multi=True)),
                raw_body=req.raw_content or b"",
                sent_at=sent_at,
            )
        )

    @fail_open
    def response(self, flow: http.HTTPFlow) -> None:
        started = self.inflight.pop(flow.id, None)
        if started is None or self.writer is None or flow.response is None:
            return
        uid, kind, sent_at = started
        resp = flow.response
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
        if started is None or self.writer is None:
            return
        uid, kind, sent_at = started
        message = flow.error.msg if flow.error else "connection ended without an answer"
        self.writer.submit(Answer(uid=uid, kind=kind, sent_at=sent_at, ended_at=time.time(), error=message))

    def done(self) -> None:
        if self.writer is None:
            return
        now = time.time()
        for uid, kind, sent_at in self.inflight.values():
            self.writer.submit(Answer(uid=uid, kind=kind, sent_at=sent_at, ended_at=now, error=STOPPED_ERROR))
        self.inflight.clear()
        self.writer.close(ctx.options.clickwatch_shutdown_timeout)
        self.writer = None


addons = [Clickwatch()]
