"""The things clickwatch observes and records, as typed, frozen values."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, NamedTuple


class Kind(enum.StrEnum):
    """What a captured tracking call is."""

    CLICKSTREAM = "clickstream"
    CONSENT_REFERENCE = "consent_reference"
    PREFLIGHT = "preflight"
    TAG = "tag"
    STRATEGY = "strategy"


class Verdict(enum.StrEnum):
    """Whether a delivery reached the tenant as expected."""

    DELIVERED = "delivered"
    REJECTED = "rejected"
    FAILED = "failed"
    PENDING = "pending"


class BodyKind(enum.StrEnum):
    """How a captured body is stored."""

    EMPTY = "empty"
    JSON = "json"
    TEXT = "text"
    BINARY = "binary"


Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Body:
    """A decoded, possibly truncated message body as it will be stored."""

    kind: BodyKind
    text: str | None
    size: int
    truncated: bool = False
    note: str | None = None
    parsed: Any = None
    refused: bool = False  # too large or too deeply nested to read: `note` says which


@dataclass(frozen=True, slots=True)
class RequestSeen:
    """A tracking request as it left the browser, before any answer."""

    uid: str
    run: str
    kind: Kind
    target: Kind | None  # for a preflight: the kind of call it clears the way for
    method: str
    url: str
    host: str
    path: str
    client_addr: str
    user_agent: str
    headers: Headers
    raw_body: bytes
    sent_at: float


@dataclass(frozen=True, slots=True)
class Answer:
    """How a tracking request ended: an HTTP response, or an error instead of one."""

    uid: str
    kind: Kind
    sent_at: float
    ended_at: float
    status_code: int | None = None
    headers: Headers = ()
    raw_body: bytes = b""
    error: str | None = None
    note: str | None = None  # why the response headers and body were not kept, when they were not


class AccountAnswer(NamedTuple):
    """A Commerce API answer about a signed-in shopper's consents (`/users/<id>/consenttemplates…`,
    `…/consents…`): its body bounded, still in its Content-Encoding, read on the store side by
    `core.consent.read_account`."""

    method: str
    path: str  # without the query
    status: int
    content_encoding: str
    body: bytes
    complete: bool  # False: longer than the bound, not read


@dataclass(frozen=True, slots=True)
class StorefrontSeen:
    """Consent-bearing or page-load storefront traffic; raw cookie values live only in memory."""

    run: str
    client_addr: str
    user_agent: str
    request_at: float
    response_at: float | None
    cookie: str
    anonymous_consents_header: str | None
    set_cookies: tuple[str, ...]
    page_load: bool
    repeats: int = 0  # further page loads with the same consent headers, folded into this one
    last_at: float | None = None  # when the last folded page load happened
    consent_reference: bool = False  # a Commerce API call carrying X-Consent-Reference (its value is not kept)
    logged_in: bool | None = None  # a signed-in shopper (True), an anonymous one (False), or no sign (None)
    account: AccountAnswer | None = None  # an answer about the signed-in shopper's account consent


class BrowserEventType(enum.StrEnum):
    """What the data-layer observer saw in the page."""

    PAGE = "page"  # the observer started on a new document
    PUSH = "push"  # a push to window.Y_TRACKING.eventLayer
    REFERENCE = "reference"  # the window event profiletag_consentReferenceLoaded
    NAVIGATION = "navigation"  # a single-page navigation (pushState, replaceState, popstate)


@dataclass(frozen=True, slots=True)
class BrowserEvent:
    """One thing the observer recorded, placed on the proxy's clock."""

    at: float
    type: BrowserEventType
    name: str = ""  # a push's name, or a navigation's `how`
    data: Any = None  # a push's data (JSON), or a navigation's URL
    early: bool = False  # pushed before the observer loaded: `at` is when the observer found it
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class BrowserSeen:
    """A batch of events the data-layer observer sent from one page, already checked against its format."""

    run: str
    client_addr: str
    user_agent: str
    page: str
    url: str
    received_at: float
    events: tuple[BrowserEvent, ...]
    # received_at minus the browser's sending time: the browser's clock offset plus this report's delay on the way
    # (the events' times above are placed with it; the judge corrects them with the least delayed recent report).
    offset: float = 0.0
    origin: str = ""  # the page's origin (scheme://host[:port]) from its grant: the site this report speaks for
    served_at: float | None = None  # when the page was requested: no correction moves an event before it


@dataclass(frozen=True, slots=True)
class ObserverBlocked:
    """The observer was not added to a page: its Content-Security-Policy would block it, or it has no place."""

    run: str
    client_addr: str
    user_agent: str
    at: float
    url: str
    reason: str


@dataclass(frozen=True, slots=True)
class ServiceWorkerSeen:
    """A service worker at work for a storefront origin, seen in a browser's traffic (first sign per origin)."""

    run: str
    client_addr: str
    user_agent: str
    at: float
    url: str  # the request that showed it (the worker's script, its manifest, a fetch of its own)
    evidence: str  # what in that request showed it


@dataclass(frozen=True, slots=True)
class BrowserReport:
    """An observe request as the proxy accepted it for its page (core.observer.refusal): its body is checked and
    read on the store side. Run, visitor, origin and serving time are the page's grant's, never the request's."""

    run: str
    client_addr: str
    user_agent: str
    received_at: float
    body: bytes
    origin: str
    served_at: float
    token: str


@dataclass(frozen=True, slots=True)
class ObserverRejected:
    """Observe requests the proxy answered and dropped (too large, flooding, not bound to their page, over a cap),
    counted by reason."""

    counts: tuple[tuple[str, int], ...]
