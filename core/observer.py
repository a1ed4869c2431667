"""Read what the data-layer observer sends from the page (docs/observer.md): strict format, bounded, on our clock.

A report counts only for the page clickwatch injected the observer into: each injected page gets a token (an
attribute of the injected element), and the proxy keeps what it served that page to (a `PageGrant`). `refusal` is
the one rule that says whether a report's request fits its grant; live capture and HAR import both call it.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from clickwatch.core.decoding import too_deep
from clickwatch.core.model import BrowserEvent, BrowserEventType, BrowserReport, BrowserSeen
from clickwatch.core.visitor import normalise_ip

OBSERVER_PATH_PREFIX = "/__clickwatch/"
OBSERVER_SCRIPT_PATH = "/__clickwatch/observer.js"
OBSERVE_PATH = "/__clickwatch/observe"
MAX_BODY_BYTES = 64 * 1024
MAX_EVENTS = 100
MAX_NAME = 100
MAX_URL = 2000
MAX_DATA_JSON = 4096
# The observer copies data at most 20 levels deep; the batch adds 4 around it. Deeper is not the observer's.
MAX_DEPTH = 32
_PAGE_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
_NAVIGATIONS = frozenset(("pushState", "replaceState", "popstate"))
# A browser clock this far from the proxy's, or an event this old in its batch, is not the observer's.
_MAX_AGE_MS = 24 * 3600 * 1000

# The injected element's attribute that carries the page's token; the observer sends it back in the observe URL's
# query (`/__clickwatch/observe?token=...`), so the proxy checks it before it reads a byte of the body.
TOKEN_ATTRIBUTE = "data-clickwatch-page"
TOKEN_PARAMETER = "token"
_TOKEN = re.compile(r"[A-Za-z0-9_-]{22}")
# A page's token is good this long after the page was served: a QA tab left open for a working day still counts
# (the setting observer_token_seconds).
GRANT_SECONDS = 16 * 3600
# How far an event may lie outside its page's life (from the page's request to the report's arrival) on the
# proxy's clock: the events' times are estimates, and a clock reads in whole milliseconds.
CLOCK_TOLERANCE_SECONDS = 1.0
# Why a report does not count for its page (labels of clickwatch_observer_rejected_total, with the proxy's and the
# store's own: too_large, flood, bad_format, bad_time, page_cap, visitor_cap).
REFUSALS = ("unbound", "expired", "wrong_host", "wrong_origin", "wrong_visitor")
# What one page, and one visitor in one hour, may send at most; beyond it reports are answered and dropped
# (`page_cap`, `visitor_cap`). A busy page sends about one report a second while the shopper acts.
PAGE_MAX_REPORTS = 5_000
PAGE_MAX_BYTES = 16 * 1024 * 1024
PAGE_MAX_EVENTS = 50_000
VISITOR_MAX_REPORTS = 5_000
VISITOR_MAX_BYTES = 16 * 1024 * 1024
VISITOR_MAX_EVENTS = 50_000
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class PageGrant:
    """A page the observer was injected into: its token, and to whom, where and when it was served."""

    token: str
    run: str
    client_addr: str
    user_agent: str
    origin: str  # scheme://host[:port] of the page (page_origin)
    url: str
    served_at: float  # when the page was requested, on the proxy's clock
    expires_at: float


@dataclass(frozen=True, slots=True)
class ReportFacts:
    """What the proxy saw of an observe request, beside its body."""

    sent_to: str  # page_origin of the URL the report was sent to
    origin: str | None  # the Origin header, if sent
    fetch_site: str | None  # the Sec-Fetch-Site header, if sent
    client_addr: str
    user_agent: str
    received_at: float


def new_token() -> str:
    """An unguessable page token (128 random bits, URL-safe)."""
    return secrets.token_urlsafe(16)


def page_origin(url: str) -> str | None:
    """scheme://host[:port] of a URL as a browser's Origin names it (lower case, default port left out); None: none."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "")
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}" if port in (None, _DEFAULT_PORTS[scheme]) else f"{scheme}://{host}:{port}"


def token_of(target: str) -> str | None:
    """The page token an observe request carries in its query (target: its path with query, or its URL)."""
    query = target.partition("?")[2]
    if not query:
        return None
    values = parse_qs(query, keep_blank_values=True).get(TOKEN_PARAMETER)
    if not values or len(values) != 1 or not _TOKEN.fullmatch(values[0]):
        return None
    return values[0]


def grant(
    token: str,
    run: str,
    client_addr: str,
    user_agent: str,
    url: str,
    served_at: float,
    lifetime: float = GRANT_SECONDS,
) -> PageGrant:
    """The grant of a page served to a browser at `served_at`, good for `lifetime` seconds."""
    origin = page_origin(url) or ""
    return PageGrant(token, run, client_addr, user_agent, origin, url, served_at, served_at + lifetime)


def refusal(page: PageGrant | None, facts: ReportFacts) -> str | None:
    """Why a report does not count for the page its token names (one of REFUSALS); None: it counts.

    It must name a page the proxy served (`unbound`) and still be in time (`expired`), be sent to that page's
    origin (`wrong_host`), from a browser context of that origin where the browser says so (`wrong_origin`:
    Origin, Sec-Fetch-Site), by the browser the page was served to (`wrong_visitor`: address and User-Agent).
    """
    if page is None or not page.origin:
        return "unbound"
    if facts.received_at > page.expires_at:
        return "expired"
    if facts.sent_to != page.origin:
        return "wrong_host"
    if facts.origin is not None and facts.origin.strip().lower() != page.origin:
        return "wrong_origin"
    if facts.fetch_site is not None and facts.fetch_site.strip().lower() != "same-origin":
        return "wrong_origin"
    if normalise_ip(facts.client_addr) != normalise_ip(page.client_addr) or facts.user_agent != page.user_agent:
        return "wrong_visitor"
    return None


class Budget:
    """How much each page, and each visitor in each hour, has spent of one measure (reports, bytes, events).

    Memory is bounded: past `max_keys` pages (or visitors) the oldest are forgotten, which can only let more in.
    """

    def __init__(self, per_page: int, per_visitor_hour: int, max_keys: int = 20_000) -> None:
        self.per_page = per_page
        self.per_visitor_hour = per_visitor_hour
        self.max_keys = max_keys
        self._pages: dict[str, int] = {}
        self._visitors: dict[tuple[str, ...], list[int]] = {}  # visitor -> [hour, spent]

    def spend(self, page: str, visitor: tuple[str, ...], amount: int, now: float) -> str | None:
        """Spend `amount` for a page and its visitor; `page_cap` or `visitor_cap` (nothing spent) when over."""
        spent = self._pages.get(page, 0)
        if spent + amount > self.per_page:
            return "page_cap"
        hour = int(now // 3600)
        window = self._visitors.get(visitor)
        if window is None or window[0] != hour:
            window = [hour, 0]
        if window[1] + amount > self.per_visitor_hour:
            return "visitor_cap"
        window[1] += amount
        self._remember(self._visitors, visitor, window)
        self._remember(self._pages, page, spent + amount)
        return None

    def _remember[K, V](self, table: dict[K, V], key: K, value: V) -> None:
        table.pop(key, None)
        table[key] = value  # most recently used last
        while len(table) > self.max_keys:
            del table[next(iter(table))]


class ObserveFormatError(ValueError):
    """An observe request that is not the observer's format; the message is the (short, fixed) reason."""

    reason = "bad_format"


class ObserveTimeError(ObserveFormatError):
    """A report whose times do not fit its page's life or the proxy's clock."""

    reason = "bad_time"


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ObserveFormatError(f"{what} is not a time in milliseconds")
    try:
        number = float(value)
    except OverflowError:
        raise ObserveFormatError(f"{what} is not a time in milliseconds") from None
    if not math.isfinite(number) or number < 0:
        raise ObserveFormatError(f"{what} is not a time in milliseconds")
    return number


def _text(value: Any, what: str, limit: int) -> str:
    if not isinstance(value, str):
        raise ObserveFormatError(f"{what} is not a string")
    if len(value) > limit:
        raise ObserveFormatError(f"{what} is longer than {limit} characters")
    return value


def _event(raw: Any, sent_ms: float, received_at: float, served_at: float) -> BrowserEvent:
    if not isinstance(raw, dict):
        raise ObserveFormatError("an event is not an object")
    t = _number(raw.get("t"), "event time")
    if abs(sent_ms - t) > _MAX_AGE_MS:
        raise ObserveTimeError("an event's time is more than a day from the batch's")
    if t - sent_ms > CLOCK_TOLERANCE_SECONDS * 1000:
        raise ObserveTimeError("an event is later than its batch was sent")
    # The browser's clock need not agree with ours: only the gap between event and sending counts.
    at = received_at - max(0.0, sent_ms - t) / 1000.0
    if at < served_at - CLOCK_TOLERANCE_SECONDS:
        raise ObserveTimeError("an event is earlier than its page was served")
    try:
        kind = BrowserEventType(str(raw.get("type")))
    except ValueError:
        raise ObserveFormatError("an event has an unknown type") from None
    if kind is BrowserEventType.PUSH:
        name = _text(raw.get("name", ""), "a push's name", MAX_NAME)
        data = raw.get("data")
        # Measured as the observer measures it: compact JSON, UTF-8 (a lone surrogate counts as its 3 bytes).
        compact = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")
        if data is not None and len(compact) > MAX_DATA_JSON:
            raise ObserveFormatError(f"a push's data is larger than {MAX_DATA_JSON} bytes of JSON")
        early, truncated = raw.get("early") is True, raw.get("truncated") is True
        return BrowserEvent(at, kind, name, data, early=early, truncated=truncated)
    if kind is BrowserEventType.NAVIGATION:
        how = raw.get("how")
        if how not in _NAVIGATIONS:
            raise ObserveFormatError("a navigation has an unknown 'how'")
        return BrowserEvent(at, kind, how, _text(raw.get("url", ""), "a navigation's url", MAX_URL))
    return BrowserEvent(at, kind)


def parse_batch(report: BrowserReport) -> BrowserSeen:
    """An accepted observe request -> the batch it stands for; ObserveFormatError says why it is not one.

    Every event must lie in its page's life on the proxy's clock (from the page's request to the report's arrival,
    give or take CLOCK_TOLERANCE_SECONDS), and the browser's clock within a day of the proxy's (ObserveTimeError).
    """
    body, received_at = report.body, report.received_at
    if len(body) > MAX_BODY_BYTES:
        raise ObserveFormatError(f"larger than {MAX_BODY_BYTES} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ObserveFormatError("not UTF-8") from None
    try:
        message = json.loads(text)
    except RecursionError:
        raise ObserveFormatError(f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError:
        raise ObserveFormatError("not JSON") from None
    if too_deep(message, MAX_DEPTH):
        raise ObserveFormatError(f"nested deeper than {MAX_DEPTH} levels")
    if not isinstance(message, dict) or message.get("v") != 1:
        raise ObserveFormatError("not a version 1 observer batch")
    page = message.get("page")
    if not isinstance(page, str) or not _PAGE_ID.fullmatch(page):
        raise ObserveFormatError("no valid page id")
    url = _text(message.get("url", ""), "the page url", MAX_URL)
    sent_ms = _number(message.get("sent"), "the batch's sending time")
    if abs(sent_ms - received_at * 1000.0) > _MAX_AGE_MS:
        raise ObserveTimeError("the browser's clock is more than a day from the proxy's")
    events = message.get("events")
    if not isinstance(events, list) or not 1 <= len(events) <= MAX_EVENTS:
        raise ObserveFormatError(f"events is not a list of 1 to {MAX_EVENTS}")
    served_at = min(report.served_at, received_at)
    parsed = tuple(_event(raw, sent_ms, received_at, served_at) for raw in events)
    return BrowserSeen(
        report.run,
        report.client_addr,
        report.user_agent,
        page,
        url,
        received_at,
        parsed,
        received_at - sent_ms / 1000.0,
        report.origin,
        served_at,
    )
