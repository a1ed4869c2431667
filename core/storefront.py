"""Read what ordinary storefront traffic says about consent, sign-in and page loads.

Owns the storefront signals — consent cookies sent and set, the X-Anonymous-Consents header, Commerce API calls
carrying X-Consent-Reference, signed-in hints and page loads (by the one rule, `core.matching.is_page_load`) — for
live capture and HAR import alike, and the folding of a browser's repeated page loads that the proxy applies before
handing them on. Plain values in, plain values out: header fields are (name, value) byte pairs, as a proxy holds them.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

from clickwatch.core.consent import (
    ANONYMOUS_CONSENTS,
    CONSENT_GIVEN_SUFFIX,
    TRACKING_PAUSE,
    account_answer,
    has_consent_cookie,
    is_account_path,
    signed_in,
)
from clickwatch.core.matching import is_page_load
from clickwatch.core.model import AccountAnswer
from clickwatch.core.serviceworker import is_manifest

# Header fields as a proxy holds them: (name, value) byte pairs, in the order they were sent.
RawHeaders = tuple[tuple[bytes, bytes], ...]
# One browser as the proxy tells them apart: (run, client address, user agent).
Browser = tuple[str, str, str]

_CONSENT_COOKIE_NAMES = tuple(name.encode() for name in (ANONYMOUS_CONSENTS, CONSENT_GIVEN_SUFFIX, TRACKING_PAUSE))
_READ = frozenset(
    (
        b"cookie",
        b"user-agent",
        b"accept",
        b"sec-fetch-dest",
        b"sec-fetch-mode",
        b"service-worker",
        b"x-anonymous-consents",
        b"authorization",
        b"x-consent-reference",
    )
)
MAX_REMEMBERED_BROWSERS = 10000
# A browser sends the same Cookie header request after request, and parsing it costs microseconds: remember the
# answer for the headers seen last (the rule stays `has_consent_cookie`, by cookie names only).
_has_consent_cookie = functools.lru_cache(maxsize=1024)(has_consent_cookie)


class Signals(NamedTuple):
    """What one storefront exchange says; `telling` is False for an asset that says nothing about consent."""

    user_agent: str
    cookie: str
    anonymous_consents_header: str | None
    consent_reference: bool  # a Commerce API call carrying X-Consent-Reference (its value is not kept)
    logged_in: bool | None  # signed in (True), anonymous (False), or no sign (None)
    set_cookies: tuple[str, ...]  # only those whose cookie name holds a consent cookie name
    page_load: bool
    telling: bool
    worker: str = ""  # what in this exchange shows a service worker at work for the origin ("": nothing)
    account: AccountAnswer | None = None  # a Commerce API answer about the signed-in shopper's consents


# What Signals(...) does, without the Python-level __new__ it wraps: a third of a microsecond per request.
_new_signals = tuple.__new__


def reads_body(path: str) -> bool:
    """Whether the answer to this storefront request is read for its body (a signed-in shopper's consents)."""
    query = path.find("?")
    return "/users/" in path and is_account_path(path[:query] if query >= 0 else path)


def read_exchange(
    method: str,
    path: str,
    request: RawHeaders,
    response: RawHeaders | None,
    status: int | None = None,
    body: bytes | None = None,
) -> Signals:
    """The signals of one storefront request and its answer (None: no answer came).

    `status` and `body` (as sent, in its Content-Encoding) are read only from an answer about a signed-in
    shopper's consents (`reads_body`); the body is then handed on bounded, to be read by `core.consent.read_account`.
    """
    # One pass over the raw fields: a case-insensitive lookup per header would cost a scan each. Decoding is
    # header_text's, written out: this runs for every storefront request the proxy passes.
    cookies: list[bytes] = []
    anonymous: bytes | None = None
    dest: bytes | None = None
    mode: bytes | None = None
    worker_script = False
    accept = b""
    agent: bytes | None = None
    authorization: bytes | None = None
    reference = False
    for name, value in request:
        lowered = name.lower()
        if lowered not in _READ:
            continue  # most fields: one set lookup instead of a comparison per header read
        if lowered == b"cookie":
            cookies.append(value)
        elif lowered == b"user-agent":
            agent = value if agent is None else agent + b", " + value
        elif lowered == b"accept":
            accept = value if not accept else accept + b", " + value
        elif lowered == b"sec-fetch-dest":
            dest = value if dest is None else dest + b", " + value
        elif lowered == b"sec-fetch-mode":
            mode = value if mode is None else mode + b", " + value
        elif lowered == b"service-worker":
            worker_script = worker_script or value.strip().lower() == b"script"
        elif lowered == b"x-anonymous-consents":
            anonymous = value if anonymous is None else anonymous + b", " + value
        elif lowered == b"authorization":
            authorization = value
        elif lowered == b"x-consent-reference":
            reference = reference or bool(value.strip())
    set_cookies: list[str] = []
    page_load = False
    account: AccountAnswer | None = None
    if response is not None:
        content_type: bytes | None = None
        encoding = b""
        for name, value in response:
            lowered = name.lower()
            if lowered == b"set-cookie":
                if any(cookie in value.split(b"=", 1)[0] for cookie in _CONSENT_COOKIE_NAMES):
                    set_cookies.append(value.decode("utf-8", "surrogateescape"))
            elif lowered == b"content-type" and content_type is None:
                content_type = value
            elif lowered == b"content-encoding":
                encoding = value if not encoding else encoding + b", " + value
        if content_type is not None:
            page_load = is_page_load(method, dest, accept, content_type, mode)
        if status is not None and body is not None and "/users/" in path:
            account = account_answer(method, path, status, encoding.decode("latin-1"), body)
    cookie = (cookies[0] if len(cookies) == 1 else b"; ".join(cookies)).decode("utf-8", "surrogateescape")
    query = path.find("?")
    worker = service_worker_evidence(path, query, worker_script, dest, mode)
    logged_in = signed_in(
        path[:query] if query >= 0 else path,
        authorization.decode("utf-8", "surrogateescape") if authorization is not None else None,
        cookie,
        page_load,
    )
    return _new_signals(
        Signals,
        (
            agent.decode("utf-8", "surrogateescape") if agent is not None else "",
            cookie,
            anonymous.decode("utf-8", "surrogateescape") if anonymous is not None else None,
            reference,
            logged_in,
            tuple(set_cookies),
            page_load,
            page_load
            or bool(set_cookies)
            or anonymous is not None
            or reference
            or logged_in is not None
            or account is not None
            or _has_consent_cookie(cookie),
            worker,
            account,
        ),
    )


def service_worker_evidence(path: str, query: int, script: bool, dest: bytes | None, mode: bytes | None) -> str:
    """What in a storefront request shows a service worker at work for its origin ("": nothing).

    Its script as the browser fetches it to register or update it (`Service-Worker: script`), Angular's manifest
    (`ngsw.json`) or a fetch of Angular's worker (its `ngsw-cache-bust` query), and a navigation a worker passed to
    the network (`Sec-Fetch-Mode: navigate` with `Sec-Fetch-Dest: empty`). `query` is the index of the path's `?`.
    """
    if script:
        return "its script was fetched (Service-Worker: script)"
    if "ngsw" in path:
        if is_manifest(path):
            return "its manifest was fetched (ngsw.json)"
        if query >= 0 and "ngsw-cache-bust=" in path[query:]:
            return "it fetched a file for its cache (ngsw-cache-bust)"
    if mode is not None and dest is not None and mode.lower() == b"navigate" and dest.lower() == b"empty":
        return "it fetched a navigation on the page's behalf (Sec-Fetch-Mode: navigate, Sec-Fetch-Dest: empty)"
    return ""


@dataclass(slots=True)
class FoldedPages:
    """Page loads of one browser with unchanged consent headers (those of `signals`), not handed on yet."""

    browser: Browser
    first_at: float
    last_at: float
    count: int
    signals: Signals


_NOTHING_FOLDED: tuple[FoldedPages, ...] = ()


class PageFolding:
    """Per browser, the consent headers last handed on: what changes is handed on, unchanged page loads are folded.

    Ordinary browsing then costs the store one message per browser and interval, not one per page or asset.
    """

    def __init__(self, max_browsers: int = MAX_REMEMBERED_BROWSERS) -> None:
        self._last: OrderedDict[Browser, Signals] = OrderedDict()
        self._folded: dict[Browser, FoldedPages] = {}
        self._max_browsers = max_browsers

    def note(self, browser: Browser, signals: Signals, at: float) -> Signals | None:
        """The signals of a telling exchange to hand on now, after `flush(browser)`; None when nothing is new.

        None when they repeat the browser's last (then a page load is folded); a message that says nothing about
        sign-in keeps the browser's last sign-in state.
        """
        last = self._last.get(browser)
        if last is not None:
            if (
                not signals.set_cookies
                and signals.account is None
                and signals.cookie == last.cookie
                and signals.anonymous_consents_header == last.anonymous_consents_header
                and signals.consent_reference == last.consent_reference
                and (signals.logged_in is None or signals.logged_in == last.logged_in)
            ):
                if signals.page_load:
                    folded = self._folded.get(browser)
                    if folded is None:
                        page = last._replace(set_cookies=(), page_load=True, account=None)
                        self._folded[browser] = FoldedPages(browser, at, at, 1, page)
                    else:
                        folded.last_at = at
                        folded.count += 1
                return None
            if signals.logged_in is None and last.logged_in is not None:
                signals = signals._replace(logged_in=last.logged_in)
        self._last[browser] = signals._replace(account=None) if signals.account is not None else signals
        self._last.move_to_end(browser)
        if len(self._last) > self._max_browsers:
            self._last.popitem(last=False)
        return signals

    def flush(self, browser: Browser | None = None) -> tuple[FoldedPages, ...]:
        """Take the folded page loads of one browser, or of all."""
        if browser is not None:
            folded = self._folded.pop(browser, None)
            return (folded,) if folded is not None else _NOTHING_FOLDED
        taken = tuple(self._folded.values())
        self._folded.clear()
        return taken


# A browser's service worker shows itself again and again (every update check fetches its manifest): one sign per
# origin and second is enough to mark where pages stop being observed.
WORKER_SIGN_SECONDS = 1.0


class WorkerSightings:
    """Per browser and storefront origin, when a service worker was last handed on: which signs to hand on."""

    def __init__(self, max_entries: int = MAX_REMEMBERED_BROWSERS) -> None:
        self._last: OrderedDict[tuple[Browser, str], float] = OrderedDict()
        self._max_entries = max_entries

    def note(self, browser: Browser, origin: str, at: float, observed: bool = False) -> bool:
        """Whether this sign of a worker is to be handed on: the first for the origin, or one a second after the
        last while the pages the worker serves are not `observed` (the proxy could not add the observer to them)."""
        key = (browser, origin)
        last = self._last.get(key)
        if last is not None and (observed or 0.0 <= at - last < WORKER_SIGN_SECONDS):
            return False
        self._last[key] = at
        self._last.move_to_end(key)
        if len(self._last) > self._max_entries:
            self._last.popitem(last=False)
        return True
