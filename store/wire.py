"""The messages the proxy hands to the store: plain tuples, cheap to build on the event loop and to pickle.

The proxy's hooks build these and nothing more; decoding header bytes, building the typed observations and
everything after happens on the store side (a worker process, or a thread in the proxy when asked for).
"""

from __future__ import annotations

from typing import Any

from clickwatch.core.model import (
    Answer,
    BrowserReport,
    Kind,
    ObserverBlocked,
    ObserverRejected,
    RequestSeen,
    StorefrontSeen,
)
from clickwatch.core.pipeline import Observation

# Header fields as mitmproxy holds them: (name, value) byte pairs.
RawHeaders = tuple[tuple[bytes, bytes], ...]

REQUEST = "q"  # (REQUEST, uid, run, kind, target, method, url, host, path, client_addr, fields, body, sent_at)
ANSWER = "a"  # (ANSWER, uid, kind, sent_at, ended_at, status_code, fields, body, error[, note])
# (STOREFRONT, run, addr, ua, request_at, response_at, cookie, anon, set_cookies, page, repeats, last
#  [, consent_reference, logged_in])
STOREFRONT = "s"
BROWSER = "b"  # (BROWSER, run, addr, ua, received_at, body): an observe request from the data-layer observer
BLOCKED = "x"  # (BLOCKED, run, addr, ua, at, url, reason): the page's CSP would block the observer
REJECTED = "r"  # (REJECTED, {reason: count}): observe requests the proxy answered and dropped
CONFIG = "config"  # (CONFIG, {"config_file": str, "overrides": {field: value}, "expected_status": str})
WEBHOOK = "webhook"  # (WEBHOOK, url, min_interval_seconds)
COUNTERS = "counters"  # (COUNTERS, {"proxy_flows": n, "addon_errors": n, "store_dropped": n})
# To a store replacing one that died: (TAKE_OVER, its counter base or None, {counter: what it counted itself})
TAKE_OVER = "take_over"

OBSERVATIONS = frozenset((REQUEST, ANSWER, STOREFRONT, BROWSER, BLOCKED, REJECTED))

Message = tuple[Any, ...]


def header_text(value: bytes) -> str:
    """Header bytes as mitmproxy turns them into str: nothing is lost, odd bytes become surrogates."""
    return value.decode("utf-8", "surrogateescape")


def decode_headers(fields: RawHeaders) -> tuple[tuple[str, str], ...]:
    """Header byte pairs as the (name, value) strings the store records."""
    return tuple((header_text(name), header_text(value)) for name, value in fields)


def shed_answer(message: Message, note: str) -> Message:
    """An ANSWER without its headers and body (kept when a queue is full); `note` says why, if there was a status."""
    return (*message[:6], (), b"", message[8], note if message[5] else None)


def count_observations(messages: list[Message]) -> int:
    """How many of these messages are observations (not settings or counters)."""
    return sum(1 for message in messages if message[0] in OBSERVATIONS)


def header_value(headers: tuple[tuple[str, str], ...], name: str) -> str | None:
    """A header's value as mitmproxy's `headers.get` gives it: repeated fields folded with ', '."""
    values = [value for key, value in headers if key.lower() == name]
    return ", ".join(values) if values else None


def observation(message: Message) -> Observation:
    """The typed observation a REQUEST, ANSWER or STOREFRONT message stands for."""
    tag = message[0]
    if tag == REQUEST:
        _, uid, run, kind, target, method, url, host, path, addr, fields, body, sent_at = message
        headers = decode_headers(fields)
        return RequestSeen(
            uid=uid,
            run=run,
            kind=Kind(kind),
            target=Kind(target) if target else None,
            method=method,
            url=url,
            host=host,
            path=path,
            client_addr=addr,
            user_agent=header_value(headers, "user-agent") or "",
            headers=headers,
            raw_body=body,
            sent_at=sent_at,
        )
    if tag == ANSWER:
        _, uid, kind, sent_at, ended_at, status_code, fields, body, error, *note = message
        return Answer(
            uid=uid,
            kind=Kind(kind),
            sent_at=sent_at,
            ended_at=ended_at,
            status_code=status_code,
            headers=decode_headers(fields),
            raw_body=body,
            error=error,
            note=note[0] if note else None,
        )
    if tag == STOREFRONT:
        _, run, addr, agent, request_at, response_at, cookie, anon, set_cookies, page, repeats, last_at, *more = message
        reference, logged_in = more if more else (False, None)
        return StorefrontSeen(
            run=run,
            client_addr=addr,
            user_agent=agent,
            request_at=request_at,
            response_at=response_at,
            cookie=cookie,
            anonymous_consents_header=anon,
            set_cookies=tuple(set_cookies),
            page_load=page,
            repeats=repeats,
            last_at=last_at,
            consent_reference=reference,
            logged_in=logged_in,
        )
    if tag == BROWSER:
        _, run, addr, agent, received_at, body = message
        return BrowserReport(run, addr, agent, received_at, body)
    if tag == BLOCKED:
        _, run, addr, agent, at, url, reason = message
        return ObserverBlocked(run, addr, agent, at, url, reason)
    if tag == REJECTED:
        return ObserverRejected(tuple((str(reason), int(n)) for reason, n in message[1].items()))
    raise ValueError(f"not an observation message: {tag!r}")
