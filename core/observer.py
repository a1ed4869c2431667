"""Read what the data-layer observer sends from the page (docs/observer.md): strict format, bounded, on our clock."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from clickwatch.core.decoding import too_deep
from clickwatch.core.model import BrowserEvent, BrowserEventType, BrowserSeen

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


class ObserveFormatError(ValueError):
    """An observe request that is not the observer's format; the message is the (short, fixed) reason."""


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


def _event(raw: Any, sent_ms: float, received_at: float) -> BrowserEvent:
    if not isinstance(raw, dict):
        raise ObserveFormatError("an event is not an object")
    t = _number(raw.get("t"), "event time")
    if abs(sent_ms - t) > _MAX_AGE_MS:
        raise ObserveFormatError("an event's time is more than a day from the batch's")
    # The browser's clock need not agree with ours: only the gap between event and sending counts.
    at = received_at - max(0.0, sent_ms - t) / 1000.0
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


def parse_batch(body: bytes, received_at: float, run: str, client_addr: str, user_agent: str) -> BrowserSeen:
    """An observe request body -> the batch it stands for; ObserveFormatError says why it is not one."""
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
    events = message.get("events")
    if not isinstance(events, list) or not 1 <= len(events) <= MAX_EVENTS:
        raise ObserveFormatError(f"events is not a list of 1 to {MAX_EVENTS}")
    parsed = tuple(_event(raw, sent_ms, received_at) for raw in events)
    return BrowserSeen(run, client_addr, user_agent, page, url, received_at, parsed, received_at - sent_ms / 1000.0)
