"""The messages that cross from the proxy to the store: one named tuple per message, cheap to build and to pickle.

The proxy's hooks build these and nothing more; decoding header bytes, building the typed observations and
everything after happens on the store side (a worker process, or a thread in the proxy when asked for).
Each class is its message's one constructor; docs/store.md lists who sends which.
"""

from __future__ import annotations

import operator
from typing import Any, NamedTuple

from clickwatch.core import model
from clickwatch.core.pipeline import Observation

# Header fields as mitmproxy holds them: (name, value) byte pairs.
RawHeaders = tuple[tuple[bytes, bytes], ...]


class Request(NamedTuple):
    """A tracking call on its way to the tenant (`Clickwatch.request`); its verdict waits for its Answer."""

    uid: str
    run: str
    kind: str
    target: str | None
    method: str
    url: str
    host: str
    path: str
    client_addr: str
    fields: RawHeaders
    body: bytes
    sent_at: float


class Answer(NamedTuple):
    """How a tracking call ended (`Clickwatch.response`, `error`, `done`): a status with headers and body, or an
    error. `note` says why headers and body are missing when a full queue shed them."""

    uid: str
    kind: str
    sent_at: float
    ended_at: float
    status_code: int | None
    fields: RawHeaders
    body: bytes
    error: str | None
    note: str | None = None


class Storefront(NamedTuple):
    """What storefront traffic said about consent, sign-in and page loads (`Clickwatch._storefront`,
    `_flush_pages`); `repeats` more page loads, the last at `last_at`, were folded into this one. The fields of
    core.model.StorefrontSeen, in its order."""

    run: str
    client_addr: str
    user_agent: str
    request_at: float
    response_at: float | None
    cookie: str
    anonymous_consents_header: str | None
    set_cookies: tuple[str, ...]
    page_load: bool
    repeats: int = 0
    last_at: float | None = None
    consent_reference: bool = False
    logged_in: bool | None = None
    account: model.AccountAnswer | None = None


class Browser(NamedTuple):
    """An observe request from the data-layer observer in a page (`ObserverSide.request`), its body unread; it
    fitted its page's grant, whose run, visitor, origin, serving time and token it carries. The fields of
    core.model.BrowserReport, in its order."""

    run: str
    client_addr: str
    user_agent: str
    received_at: float
    body: bytes
    origin: str
    served_at: float
    token: str


class Blocked(NamedTuple):
    """A storefront page the observer was not added to, and why: its Content-Security-Policy, or no place for it
    (`ObserverSide.page_stream`)."""

    run: str
    client_addr: str
    user_agent: str
    at: float
    url: str
    reason: str


class Worker(NamedTuple):
    """A sign of a service worker for a storefront origin in one browser's traffic (`Clickwatch._worker`)."""

    run: str
    client_addr: str
    user_agent: str
    at: float
    url: str
    evidence: str


class Rejected(NamedTuple):
    """Observe requests the proxy answered and dropped since it last said, as (reason, how many) pairs
    (`ObserverSide.flush`)."""

    counts: tuple[tuple[str, int], ...]


class Config(NamedTuple):
    """The settings to judge by (`Clickwatch.configure`): the keyword arguments of `core.config.build_config`."""

    spec: dict[str, Any]


class Webhook(NamedTuple):
    """Where to notify of failed and rejected deliveries, and how often at most (`Clickwatch.configure`)."""

    url: str
    min_interval: float


class Counts(NamedTuple):
    """What the proxy counted since its previous Counts (`StoreLink`, with every hand-over that has news).

    The store adds the increments to its counters and records `seq` for `source` (one per StoreLink) in the
    same transaction, so a Counts handed again to a store that replaces a dead one is added once. `waiting`
    is not an increment: it is how many observations wait in the proxy's buffer now.
    """

    source: str
    seq: int
    proxy_flows: int
    addon_errors: int
    store_dropped: int
    waiting: int
    passthrough_connections: int = 0
    observer_pages_untouched: int = 0


class Reset(NamedTuple):
    """Remove captured data of one run (or all, `run` None) as of `at` (`StoreLink.reset`, for `POST /api/reset`).

    It travels behind what was captured before it, so the store writes and removes those first; the store also
    drops what it is handed later that was captured before `at` (a page load folded, a late hook), and its judge
    forgets the run's visitors. `id` names it in the store's status, which says when it is done.
    """

    id: str
    run: str | None
    at: float


type Observed = Request | Answer | Storefront | Browser | Blocked | Rejected | Worker
type Control = Config | Webhook | Counts | Reset
type Message = Observed | Control

# Pickling a NamedTuple costs over twice what a plain tuple does (it goes through copyreg): a batch crosses the
# pipe as plain tuples and one byte per message naming its class, both made in C loops (docs/store.md, "Cost").
_CLASSES: tuple[type[Message], ...] = (
    Request, Answer, Storefront, Browser, Blocked, Rejected, Config, Webhook, Counts, Reset, Worker,
)  # fmt: skip
_TAGS = {cls: tag for tag, cls in enumerate(_CLASSES)}
_PLAIN = operator.itemgetter(slice(None))  # a tuple subclass sliced is a plain tuple, and faster than tuple()


def pack(batch: list[Message]) -> tuple[bytes, list[tuple[Any, ...]]]:
    """A batch as plain values for pickling: its classes (one byte each) and its tuples."""
    return bytes(map(_TAGS.__getitem__, map(type, batch))), list(map(_PLAIN, batch))


def unpack(tags: bytes, values: list[tuple[Any, ...]]) -> list[Message]:
    """The batch `pack` was given."""
    return list(map(tuple.__new__, map(_CLASSES.__getitem__, tags), values))


def header_text(value: bytes) -> str:
    """Header bytes as mitmproxy turns them into str: nothing is lost, odd bytes become surrogates."""
    return value.decode("utf-8", "surrogateescape")


def decode_headers(fields: RawHeaders) -> tuple[tuple[str, str], ...]:
    """Header byte pairs as the (name, value) strings the store records."""
    return tuple((header_text(name), header_text(value)) for name, value in fields)


def shed_answer(message: Answer, note: str) -> Answer:
    """An Answer without its headers and body (kept when a queue is full); `note` says why, if there was a status."""
    return message._replace(fields=(), body=b"", note=note if message.status_code else None)


def is_observed(message: Message) -> bool:
    """Whether a message is an observation (not a setting or counts)."""
    return not isinstance(message, (Config, Webhook, Counts, Reset))


def count_observations(messages: list[Message]) -> int:
    """How many of these messages are observations."""
    return sum(1 for message in messages if is_observed(message))


def header_value(headers: tuple[tuple[str, str], ...], name: str) -> str | None:
    """A header's value as mitmproxy's `headers.get` gives it: repeated fields folded with ', '."""
    values = [value for key, value in headers if key.lower() == name]
    return ", ".join(values) if values else None


def observation(message: Observed) -> Observation:
    """The typed observation an observed message stands for."""
    match message:
        case Request():
            headers = decode_headers(message.fields)
            return model.RequestSeen(
                uid=message.uid,
                run=message.run,
                kind=model.Kind(message.kind),
                target=model.Kind(message.target) if message.target else None,
                method=message.method,
                url=message.url,
                host=message.host,
                path=message.path,
                client_addr=message.client_addr,
                user_agent=header_value(headers, "user-agent") or "",
                headers=headers,
                raw_body=message.body,
                sent_at=message.sent_at,
            )
        case Answer():
            return model.Answer(
                uid=message.uid,
                kind=model.Kind(message.kind),
                sent_at=message.sent_at,
                ended_at=message.ended_at,
                status_code=message.status_code,
                headers=decode_headers(message.fields),
                raw_body=message.body,
                error=message.error,
                note=message.note,
            )
        case Storefront():
            return model.StorefrontSeen(*message)
        case Browser():
            return model.BrowserReport(*message)
        case Blocked():
            return model.ObserverBlocked(*message)
        case Worker():
            return model.ServiceWorkerSeen(*message)
        case Rejected():
            return model.ObserverRejected(tuple((str(reason), int(n)) for reason, n in message.counts))
    raise ValueError(f"not an observation message: {message!r}")
