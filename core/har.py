"""Read a browser's HAR export into the same observations the proxy makes, in the order they happened.

Owns the HAR format: its validation and the mapping of its entries onto tracking calls, answers, storefront
traffic and the data-layer observer's reports. What storefront traffic says is read by `core.storefront`, the
reader the proxy uses; whether a report counts for its page by `core.observer.refusal`, the rule the proxy applies.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import uuid
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from clickwatch.core.findings import clip
from clickwatch.core.matching import Match, Patterns
from clickwatch.core.model import (
    Answer,
    BrowserReport,
    Headers,
    Kind,
    ObserverRejected,
    RequestSeen,
    ServiceWorkerSeen,
    StorefrontSeen,
)
from clickwatch.core.observer import (
    OBSERVE_PATH,
    OBSERVER_PATH_PREFIX,
    TOKEN_ATTRIBUTE,
    PageGrant,
    ReportFacts,
    grant,
    page_origin,
    refusal,
    token_of,
)
from clickwatch.core.record import header
from clickwatch.core.storefront import RawHeaders, WorkerSightings, read_exchange
from clickwatch.core.timeparse import in_range

HAR_CLIENT = "har-import"  # a HAR names no client address; one recording is one browser
_KINDS = frozenset(k.value for k in Kind)
# An entry's total time beyond a day is no browser's measurement.
MAX_ENTRY_SECONDS = 86400.0
# The token of a page clickwatch served: the first such attribute in the page, where the proxy put it (the start).
_PAGE_TOKEN = re.compile(re.escape(TOKEN_ATTRIBUTE).encode() + rb'="([A-Za-z0-9_-]{22})"')


class HarError(ValueError):
    """A HAR file that cannot be imported; the message names the entry and field."""


def _get(obj: Any, key: str, where: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(obj, dict):
        raise HarError(f"{where}: expected an object")
    if key not in obj:
        raise HarError(f"{where}.{key}: missing")
    value = obj[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not str):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise HarError(f"{where}.{key}: expected {names}, got {type(value).__name__}")
    return value


def _headers(entry_part: dict[str, Any], where: str) -> Headers:
    headers = _get(entry_part, "headers", where, list)
    out = []
    for index, field in enumerate(headers):
        name = _get(field, "name", f"{where}.headers[{index}]", str)
        value = _get(field, "value", f"{where}.headers[{index}]", str)
        out.append((name, value))
    return tuple(out)


def _text(container: Any, where: str) -> bytes:
    if container is None:
        return b""
    if not isinstance(container, dict):
        raise HarError(f"{where}: expected an object, got {type(container).__name__}")
    if "text" not in container:
        return b""
    text = _get(container, "text", where, str)
    if container.get("encoding") == "base64":
        try:
            return base64.b64decode(text, validate=True)
        except binascii.Error:
            raise HarError(f"{where}.text: not valid base64") from None
    return text.encode("utf-8", "surrogatepass")


def _raw(headers: Headers) -> RawHeaders:
    """HAR header strings as the byte fields a proxy holds, which the storefront reader reads."""
    return tuple((_bytes(name), _bytes(value)) for name, value in headers)


def _bytes(text: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")  # undoes header_text: odd bytes come back as they were
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")  # a lone surrogate the HAR itself holds ('\ud83d')


def _without_encoding(headers: Headers) -> Headers:
    # HAR bodies are stored decoded: the Content-Encoding header no longer describes them.
    return tuple((k, v) for k, v in headers if k.lower() != "content-encoding")


def _started(entry: dict[str, Any], where: str) -> float:
    raw = _get(entry, "startedDateTime", where, str)
    shown = _shown(raw)
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise HarError(f"{where}.startedDateTime: {shown} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise HarError(f"{where}.startedDateTime: {shown} has no time zone")
    try:
        started = moment.timestamp()
    except (OverflowError, ValueError):
        started = math.nan
    if not in_range(started):
        raise HarError(f"{where}.startedDateTime: {shown} is out of range (1970 to 9998 UTC)")
    return started


def _error(entry: dict[str, Any], response: dict[str, Any]) -> str | None:
    """Why the browser got no answer, where it wrote it: Playwright's `response._failureText`, Chromium's
    `response._error` (DevTools) or `_error`. A short text; anything else these fields hold says nothing to show."""
    for value in (response.get("_failureText"), response.get("_error"), entry.get("_error")):
        if isinstance(value, str) and value:
            return clip(value, 500)
    return None


def _shown(text: str) -> str:
    """A HAR value as an error message quotes it: short, and printable whatever it holds (a lone surrogate)."""
    return ascii(text[:100])


# What browsers write for a request that got no answer: Chromium's DevTools 0, Playwright -1.
NO_ANSWER = (0, -1)


def _status(response: dict[str, Any], where: str) -> int | None:
    """The answer's HTTP status, or None where the browser recorded none (a failed request)."""
    status = _get(response, "status", where, int)
    if status in NO_ANSWER:
        return None
    # Anything else outside HTTP's three digits is not a status.
    if not 100 <= status <= 999:
        raise HarError(f"{where}.status: {str(status)[:40]} is not an HTTP status (100-999, or 0 or -1: no answer)")
    return int(status)


def _elapsed(entry: dict[str, Any], where: str) -> float:
    elapsed = _get(entry, "time", where, (int, float))
    try:
        seconds = float(elapsed) / 1000.0
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_ENTRY_SECONDS:
        raise HarError(
            f"{where}.time: {str(elapsed)[:40]} is not a time in milliseconds (0 to {MAX_ENTRY_SECONDS * 1000:.0f})"
        )
    return seconds


def _url(request: dict[str, Any], where: str) -> tuple[str, str, str]:
    """(url, host, path and query) of an absolute URL."""
    url = _get(request, "url", where, str)
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as exc:
        raise HarError(f"{where}.url: {_shown(url)} is not a valid URL ({exc})") from None
    if not host:
        raise HarError(f"{where}.url: {_shown(url)} is not an absolute URL")
    return url, host, (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _exported_kind(entry: dict[str, Any]) -> Match | None:
    """The kind clickwatch's own export recorded for an entry (`_clickwatch.kind`, `.target_kind`), for a tracking
    call the importing configuration's patterns do not match (a bundle from a run with another tag pattern)."""
    marks = entry.get("_clickwatch")
    if not isinstance(marks, dict) or marks.get("kind") not in _KINDS:
        return None
    kind, target = Kind(marks["kind"]), marks.get("target_kind")
    if kind is not Kind.PREFLIGHT:
        return Match(kind)
    return Match(kind, Kind(target) if target in _KINDS else Kind.CLICKSTREAM)


Observation = RequestSeen | Answer | StorefrontSeen | BrowserReport | ObserverRejected | ServiceWorkerSeen


def observations(har: Any, run: str, patterns: Patterns) -> list[Observation]:
    """Every observation a proxy would have made of this recording, oldest first; HarError on bad input."""
    log = _get(har, "log", "HAR", dict)
    entries = _get(log, "entries", "log", list)
    parsed = []
    for index, entry in enumerate(entries):
        where = f"log.entries[{index}]"
        request = _get(entry, "request", where, dict)
        response = _get(entry, "response", where, dict)
        method = _get(request, "method", f"{where}.request", str)
        url, host, path = _url(request, f"{where}.request")
        status = _status(response, f"{where}.response")
        elapsed = _elapsed(entry, where)
        parsed.append(
            (
                _started(entry, where), index, method, (url, host, path), status, elapsed,
                _headers(request, f"{where}.request"), _headers(response, f"{where}.response"),
                _text(request.get("postData"), f"{where}.request.postData"),
                _text(response.get("content"), f"{where}.response.content"),
                _error(entry, response) if status is None else None,
            )
        )  # fmt: skip
    parsed.sort(key=lambda p: (p[0], p[1]))
    out: list[Observation] = []
    answers: list[Answer] = []
    grants: dict[str, PageGrant] = {}  # the pages clickwatch served in this recording, by token
    workers = WorkerSightings()
    for started, i, method, where_to, status, elapsed, req_headers, resp_headers, req_body, resp_body, error in parsed:
        url, host, path = where_to
        user_agent = header(req_headers, "user-agent") or ""
        ended = started + elapsed
        if path.startswith(OBSERVER_PATH_PREFIX):
            # clickwatch's own traffic, answered by its proxy, is never storefront traffic. An observer report
            # the proxy accepted (answered 204) is read as the live proxy hands it on.
            if method == "POST" and path.split("?", 1)[0] == OBSERVE_PATH and status == 204:
                facts = ReportFacts(
                    page_origin(url) or "", header(req_headers, "origin"), header(req_headers, "sec-fetch-site"),
                    HAR_CLIENT, user_agent, started,
                )  # fmt: skip
                out.append(_report(grants.get(token_of(path) or ""), facts, req_body))
            continue
        match = patterns.classify(method, host, path) or _exported_kind(entries[i])
        if match is None:
            # No status: the browser recorded no answer, as the proxy sees an error.
            answered = status is not None
            # (HAR bodies are stored decoded: an account-consent answer is read without its Content-Encoding.)
            answer = _raw(_without_encoding(resp_headers)) if answered else None
            signals = read_exchange(method, path, _raw(req_headers), answer, status, resp_body)
            if signals.page_load and answered and (token := _PAGE_TOKEN.search(resp_body)):
                # A page the proxy added the observer to: its reports count as the live proxy counted them.
                page_token = token.group(1).decode("ascii")
                grants[page_token] = grant(page_token, run, HAR_CLIENT, signals.user_agent, url, started)
            origin = url[: len(url) - len(path)] if url.endswith(path) else url
            if signals.worker and workers.note((run, HAR_CLIENT, signals.user_agent), origin, started):
                where_seen = origin + path.partition("?")[0]
                out.append(ServiceWorkerSeen(run, HAR_CLIENT, signals.user_agent, started, where_seen, signals.worker))
            out.append(
                StorefrontSeen(
                    run=run,
                    client_addr=HAR_CLIENT,
                    user_agent=signals.user_agent,
                    request_at=started,
                    response_at=ended if answered else None,
                    cookie=signals.cookie,
                    anonymous_consents_header=signals.anonymous_consents_header,
                    set_cookies=signals.set_cookies,
                    page_load=signals.page_load,
                    consent_reference=signals.consent_reference,
                    logged_in=signals.logged_in,
                    account=signals.account,
                )
            )
            continue
        uid = uuid.uuid4().hex
        out.append(
            RequestSeen(
                uid=uid, run=run, kind=match.kind, target=match.target, method=method, url=url, host=host,
                path=path, client_addr=HAR_CLIENT, user_agent=user_agent, headers=_without_encoding(req_headers),
                raw_body=req_body, sent_at=started,
            )
        )  # fmt: skip
        # A request the browser recorded without an answer failed, as one the proxy saw end in an error.
        answers.append(
            Answer(
                uid=uid, kind=match.kind, sent_at=started, ended_at=ended,
                status_code=status, headers=_without_encoding(resp_headers) if status is not None else (),
                raw_body=resp_body if status is not None else b"",
                error=None if status is not None else error or "no response recorded (status 0 or -1)",
            )
        )  # fmt: skip
    # Answers go in at the time they arrived, among the other observations.
    merged: list[Observation] = []
    pending = sorted(answers, key=lambda a: a.ended_at)
    for obs in out:
        at = _at(obs)
        while pending and pending[0].ended_at <= at:
            merged.append(pending.pop(0))
        merged.append(obs)
    merged.extend(pending)
    return merged


def _at(obs: Observation) -> float:
    """When the proxy would have met it."""
    if isinstance(obs, RequestSeen):
        return obs.sent_at
    if isinstance(obs, BrowserReport):
        return obs.received_at
    if isinstance(obs, StorefrontSeen):
        return obs.request_at
    if isinstance(obs, ServiceWorkerSeen):
        return obs.at
    if isinstance(obs, ObserverRejected):
        return -math.inf  # placed where it was met; its time is not kept
    return obs.ended_at


def _report(page: PageGrant | None, facts: ReportFacts, body: bytes) -> BrowserReport | ObserverRejected:
    """An observe request in the recording, bound to its page by the rule the live proxy applies
    (core.observer.refusal): the report of that page, or refused with the reason."""
    reason = refusal(page, facts)
    if reason is not None or page is None:
        return ObserverRejected(((reason or "unbound", 1),))
    return BrowserReport(
        page.run, page.client_addr, page.user_agent, facts.received_at, body, page.origin, page.served_at, page.token
    )
