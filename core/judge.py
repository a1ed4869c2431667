"""Judge deliveries against the visitor's consent and the event rules; name every problem as a finding.

The same Judge runs on live proxy traffic and on imported captures: it sees observations in order,
and decides what depends on later evidence (grace and silence windows) when `evaluate` is called.
"""

from __future__ import annotations

import bisect
import hashlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from clickwatch.core.checks import cors_problems, payload_problems, schema_problem
from clickwatch.core.config import Config
from clickwatch.core.consent import (
    CONSENT_GIVEN_SUFFIX,
    AccountReading,
    ConsentReading,
    ConsentState,
    has_consent_cookie,
    read_account,
    read_request,
    read_response,
)
from clickwatch.core.findings import Finding, FindingKind
from clickwatch.core.model import (
    Answer,
    Body,
    BrowserEventType,
    BrowserSeen,
    Headers,
    Kind,
    ObserverBlocked,
    RequestSeen,
    ServiceWorkerSeen,
    StorefrontSeen,
    Verdict,
)
from clickwatch.core.observer import page_origin
from clickwatch.core.record import header, schema_name
from clickwatch.core.timeparse import iso_utc
from clickwatch.core.visitor import normalise_ip, visitor_key

CONSENT_PENDING = "pending"
CONSENT_UNKNOWN = "unknown"
NO_COOKIE_SOURCE = "page load without consent cookie"
DATALAYER_SOURCE = "data layer"
CONSENT_CHANGED = "ConsentChanged"
# The observer's times are estimated (received time minus the browser's own delay): a data-layer change this
# close after a call may have happened before it, and the benefit of that doubt goes to the shopper. Where the data
# layer said "not granted" at a call, this is also the only window in which other evidence of consent clears it:
# a consent given later, however soon, never excuses a call made before it.
DATALAYER_TOLERANCE_SECONDS = 1.0
# Identifying fields compared between a push and the clickstream body that carries it, where both have them.
IDENTIFYING_FIELDS = ("productSku", "sku", "searchTerm", "productCategory", "carouselId", "cartId", "cartCode")
_MAX_READINGS = 500
_MAX_VISITORS = 50000
_MAX_OPEN = 2000
_MAX_EVENTS_PER_POST = 100
_MAX_SITES = 64  # sites whose data layer one browser's reports speak for, remembered apart


@dataclass(frozen=True, slots=True)
class ConsentSignal:
    """A change of a visitor's consent state, as stored for the timeline."""

    run: str
    visitor: str
    at: float
    state: ConsentState
    source: str
    detail: str


@dataclass(frozen=True, slots=True)
class VisitorSnapshot:
    """What the store keeps about a visitor after each observation."""

    run: str
    visitor: str
    client_addr: str
    user_agent: str
    first_seen: float
    last_seen: float
    page_loads: int
    last_page_at: float | None
    consent: str
    consent_since: float | None
    pending_decision: str | None


@dataclass(frozen=True, slots=True)
class PushRecord:
    """One thing the data-layer observer saw, as stored for the timeline and the funnel."""

    uid: str
    run: str
    visitor: str
    page: str
    at: float
    type: str
    name: str
    schema: str | None  # the clickstream schema the tag should send for it (mapped pushes only)
    consent: str  # the visitor's consent at the moment of the push
    data: object
    early: bool = False
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class PushLink:
    """A data-layer push and the clickstream delivery that carried it."""

    push_uid: str
    delivery_uid: str
    pushed_at: float


@dataclass
class Judgement:
    """Everything one observation (or one evaluation) decided."""

    findings: list[Finding] = field(default_factory=list)
    signals: list[ConsentSignal] = field(default_factory=list)
    consent: list[tuple[str, str]] = field(default_factory=list)  # (delivery uid, consent at that moment)
    visitors: dict[tuple[str, str], VisitorSnapshot] = field(default_factory=dict)
    pushes: list[PushRecord] = field(default_factory=list)
    links: list[PushLink] = field(default_factory=list)

    def extend(self, other: Judgement) -> None:
        """Merge another judgement into this one."""
        self.findings.extend(other.findings)
        self.signals.extend(other.signals)
        self.consent.extend(other.consent)
        self.visitors.update(other.visitors)
        self.pushes.extend(other.pushes)
        self.links.extend(other.links)

    def __bool__(self) -> bool:
        return bool(self.findings or self.signals or self.consent or self.visitors or self.pushes or self.links)


@dataclass(slots=True)
class _Candidate:
    uid: str | None  # None: a Commerce API call (storefront traffic), not a delivery
    kind: Kind | None
    at: float
    reference: bool = False  # the call carries a consent reference
    site: str | None = None  # the origin of the page that made the call (Origin, Referer); None: not known


@dataclass(slots=True)
class _Open:
    """A mapped push waiting for its clickstream POST, or a clickstream POST waiting for its push."""

    uid: str
    at: float
    schema: str
    ident: dict[str, str]
    name: str = ""
    consent_given: bool = False  # as known when the push's report came: it only orders pairing (owed is asked later)
    site: str | None = None  # the page's origin: a push pairs only with a POST made from the same site


Reading = tuple[float, ConsentState, str, str]


def _state_at(readings: list[Reading], at: float) -> Reading | None:
    index = bisect.bisect_right(readings, at, key=lambda r: r[0])
    return readings[index - 1] if index else None


def _datalayer_reading(v: _Visitor, at: float, granted: bool, site: str | None) -> ConsentReading:
    """A ConsentChanged push as a reading: `granted:false` is a withdrawal only after a `granted:true` in the visit.

    Spartacus pushes `granted:false` for a shopper who never decided as well as for one who withdrew.
    """
    if granted:
        return ConsentReading(ConsentState.GIVEN, DATALAYER_SOURCE, "ConsentChanged granted=true")
    if any(r[1] is ConsentState.GIVEN and r[0] < at for r in v.layer(site)):
        return ConsentReading(ConsentState.WITHDRAWN, DATALAYER_SOURCE, "ConsentChanged granted=false after consent")
    return ConsentReading(ConsentState.ABSENT, DATALAYER_SOURCE, "ConsentChanged granted=false, never given")


def _until(at: float) -> str:
    """When an open window closes, as a pending decision states it (`clickwatch check` reads it back)."""
    return iso_utc(at, "seconds")


def _identifying(data: object) -> dict[str, str]:
    if not isinstance(data, dict):
        return {}
    return {
        name: str(value)
        for name in IDENTIFYING_FIELDS
        if isinstance(value := data.get(name), str | int | float) and not isinstance(value, bool)
    }


def _agree(a: dict[str, str], b: dict[str, str]) -> bool:
    return all(b.get(name, value) == value for name, value in a.items())


def _describe(ident: dict[str, str]) -> str:
    return " (" + ", ".join(f"{k}={v[:40]}" for k, v in ident.items()) + ")" if ident else ""


def _of_site[T](table: dict[str, list[T]], site: str) -> list[T]:
    """A site's list in a per-site table of one browser; past _MAX_SITES sites the oldest is forgotten."""
    entries = table.get(site)
    if entries is None:
        entries = table[site] = []
        if len(table) > _MAX_SITES:
            del table[next(iter(table))]
    return entries


def call_site(headers: Headers) -> str | None:
    """The site (page origin) a call was made from: its Origin, else its Referer's; None when neither names one."""
    origin = header(headers, "origin")
    if origin and origin.strip().lower() != "null":
        return page_origin(origin.strip())
    referer = header(headers, "referer")
    return page_origin(referer.strip()) if referer else None


def said(state: ConsentState | str) -> str:
    """A consent state as messages word it: `absent` is "not given" (never given, or declined before giving)."""
    return "not given" if state == ConsentState.ABSENT else str(state)


def _explicit_no_decision(reading: Reading) -> bool:
    # Only an explicit "no decision" in the shopper's own consent list says the browser had not consented.
    return reading[1] is ConsentState.ABSENT and reading[3].endswith("has no decision")


@dataclass(slots=True)
class _InFlight:
    run: str
    visitor: str
    kind: Kind
    headers: Headers


@dataclass
class _Visitor:
    run: str
    key: str
    client_addr: str
    user_agent: str
    first_seen: float
    last_seen: float
    readings: list[Reading] = field(default_factory=list)  # from cookies and headers (later echoes)
    datalayer: list[Reading] = field(default_factory=list)  # ConsentChanged pushes: the browser's own truth
    logins: list[tuple[float, bool]] = field(default_factory=list)  # signed in (True) or anonymous, from when
    account: list[tuple[float, AccountReading]] = field(default_factory=list)  # the signed-in shopper's, as answered
    account_code: str | None = None  # the code of the account's consent (to recognise its withdrawal)
    account_reported_for: float | None = None  # the account reading an account_consent_mismatch was said for
    pages: list[float] = field(default_factory=list)  # when storefront pages were requested (page loads)
    pending_references: list[tuple[float, float, str]] = field(default_factory=list)  # (sent, answered, uid)
    page_marks: list[tuple[float, bool]] = field(default_factory=list)  # pages with (True) or without observer
    # The same two, per site (page origin): a report speaks only for the calls its own site makes.
    site_layers: dict[str, list[Reading]] = field(default_factory=dict)
    site_marks: dict[str, list[tuple[float, bool]]] = field(default_factory=dict)
    open_pushes: list[_Open] = field(default_factory=list)
    open_sent: list[_Open] = field(default_factory=list)
    heard_until: float = 0.0  # when the observer last reported: a push made before then has been reported
    offsets: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=64))  # (received, offset)
    # Calls cleared at once because the data layer said given: a withdrawal reported late re-opens them.
    given_early: deque[_Candidate] = field(default_factory=lambda: deque(maxlen=512))
    told: set[FindingKind] = field(default_factory=set)  # visitor-level findings said once (observer_blocked, ...)
    stale_reported_for: float | None = None
    header_based: bool = False  # Spartacus: consent travels in a header, pages carry no consent cookie
    page_loads: int = 0
    last_page_at: float | None = None
    given_at: float | None = None
    silence_deadline: float | None = None
    silence_checked_for: float | None = None
    clickstream_times: deque[float] = field(default_factory=lambda: deque(maxlen=64))
    candidates: list[_Candidate] = field(default_factory=list)
    unknown_reported: bool = False
    references: deque[tuple[float, float]] = field(default_factory=deque)  # (sent, answered) of each reference
    recent_bodies: dict[tuple[str, str], float] = field(default_factory=dict)

    def state_at(self, at: float) -> Reading | None:
        return _state_at(self.readings, at)

    def current(self) -> Reading | None:
        if self.datalayer:
            return self.datalayer[-1]
        if self.signed_in_at(self.last_seen):
            return None
        return self.readings[-1] if self.readings else None

    def signed_in_at(self, at: float) -> bool:
        index = bisect.bisect_right(self.logins, at, key=lambda r: r[0])
        return index > 0 and self.logins[index - 1][1]

    def account_for(self, at: float, after: float) -> tuple[float, AccountReading] | None:
        """The account's consent as last read at `at`, else as first read within `after` seconds after it."""
        index = bisect.bisect_right(self.account, at, key=lambda r: r[0])
        if index:
            return self.account[index - 1]
        if index < len(self.account) and self.account[index][0] <= at + after:
            return self.account[index]
        return None

    def page_before(self, at: float) -> float | None:
        index = bisect.bisect_right(self.pages, at)
        return self.pages[index - 1] if index else None

    def observed_at(self, at: float, site: str | None = None) -> bool:
        marks = self.site_marks.get(site, []) if site else self.page_marks
        index = bisect.bisect_right(marks, at, key=lambda r: r[0])
        return index > 0 and marks[index - 1][1]

    def layer(self, site: str | None) -> list[Reading]:
        """The data layer's consent changes on one site's pages (on every site's, for a call of no known site)."""
        return self.site_layers.get(site, []) if site else self.datalayer

    def mark(self, at: float, observed: bool, site: str | None) -> None:
        for marks in (self.page_marks, _of_site(self.site_marks, site) if site else None):
            if marks is not None:
                bisect.insort(marks, (at, observed), key=lambda m: m[0])
                del marks[:-_MAX_READINGS]

    def withdrawn_between(self, start: float, end: float) -> bool:
        return any(start < r[0] <= end and r[1] is ConsentState.WITHDRAWN for r in (*self.datalayer, *self.readings))


class Judge:
    """Follows consent per visitor and turns deliveries into findings."""

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self._visitors: dict[tuple[str, str], _Visitor] = {}
        self._inflight: dict[str, _InFlight] = {}

    # --- observations ------------------------------------------------------------------------------

    def request(self, seen: RequestSeen, body: Body) -> Judgement:
        """Judge a tracking request as it is sent."""
        out = Judgement()
        v = self._visitor(seen.run, seen.client_addr, seen.user_agent, seen.sent_at)
        self._inflight[seen.uid] = _InFlight(seen.run, v.key, seen.kind, seen.headers)
        site = call_site(seen.headers)
        if seen.kind in (Kind.CLICKSTREAM, Kind.CONSENT_REFERENCE, Kind.STRATEGY):
            reference = seen.kind is Kind.STRATEGY and bool(header(seen.headers, "consent-reference"))
            self._consent_check(v, _Candidate(seen.uid, seen.kind, seen.sent_at, reference, site), out)
        if seen.kind is Kind.CLICKSTREAM:
            v.clickstream_times.append(seen.sent_at)
            if self._ends_silence(v, seen.sent_at):
                self._silence_broken(v)
            name = self._event_checks(v, seen, body, out)
            if name and self.config.observer_enabled:
                # A body may carry several events (an array): each can answer a push of its own.
                items = body.parsed if isinstance(body.parsed, list) and body.parsed else [body.parsed]
                for item in items[:_MAX_EVENTS_PER_POST]:
                    self._link(v, _Open(seen.uid, seen.sent_at, name, _identifying(item), site=site), False, out)
        out.visitors[(v.run, v.key)] = self._snapshot(v)
        return out

    def run_of(self, uid: str) -> str | None:
        """The run of a delivery still waiting for its answer."""
        flight = self._inflight.get(uid)
        return flight.run if flight else None

    def flight_of(self, uid: str) -> tuple[str, str] | None:
        """(run, visitor) of a delivery still waiting for its answer."""
        flight = self._inflight.get(uid)
        return (flight.run, flight.visitor) if flight else None

    def answer(self, answer: Answer, verdict: Verdict) -> Judgement:
        """Judge how a tracking request ended."""
        out = Judgement()
        flight = self._inflight.pop(answer.uid, None)
        if flight is None:
            return out
        v = self._visitors.get((flight.run, flight.visitor))
        if v is None:
            return out
        duration = answer.ended_at - answer.sent_at
        if answer.status_code is not None and duration > self.config.slow_delivery_seconds:
            self._find(
                out,
                FindingKind.SLOW_DELIVERY,
                v,
                answer.ended_at,
                answer.uid,
                f"answered in {duration:.2f} s, slower than {self.config.slow_delivery_seconds:g} s",
            )
        if flight.kind is Kind.CONSENT_REFERENCE:
            self._consent_reference_checks(v, answer, verdict, out)
        elif flight.kind is Kind.PREFLIGHT and answer.status_code is not None:
            problems = cors_problems(flight.headers, answer.status_code, answer.headers)
            if problems:
                self._find(
                    out,
                    FindingKind.CORS_REJECTED,
                    v,
                    answer.ended_at,
                    answer.uid,
                    "the browser will not send the tracking call: " + "; ".join(problems),
                )
        return out

    def storefront(self, seen: StorefrontSeen) -> Judgement:
        """Follow consent and page loads from ordinary storefront traffic."""
        out = Judgement()
        v = self._visitor(seen.run, seen.client_addr, seen.user_agent, seen.response_at or seen.request_at)
        template = self.config.consent_template
        if seen.anonymous_consents_header is not None and not has_consent_cookie(seen.cookie):
            v.header_based = True
        reading = read_request(seen.cookie, seen.anonymous_consents_header, template)
        if reading is None and seen.page_load and not v.header_based and not has_consent_cookie(seen.cookie):
            reading = ConsentReading(ConsentState.ABSENT, NO_COOKIE_SOURCE, "no consent cookie sent")
        if reading is not None:
            self._record(v, seen.request_at, reading, out)
        if seen.set_cookies and seen.response_at is not None:
            paused_before = reading is not None and reading.state is ConsentState.PAUSED
            set_reading = read_response(list(seen.set_cookies), template, paused_before)
            if set_reading is not None:
                self._record(v, seen.response_at, set_reading, out)
        if seen.logged_in is not None and not (seen.page_load and v.header_based):
            # A Spartacus shell load carries no sign-in cookie even for a signed-in shopper: only its API calls tell.
            self._signed_in(v, seen.request_at, seen.logged_in)
        if seen.account is not None:
            account = read_account(seen.account, template)
            if account is not None:
                self._record_account(v, seen.response_at or seen.request_at, account, out)
        if seen.page_load:
            v.page_loads += 1 + seen.repeats
            last = seen.last_at or seen.request_at
            v.last_page_at = max(last, v.last_page_at or last)
            for at in {seen.request_at, last}:
                bisect.insort(v.pages, at)
            del v.pages[:-_MAX_READINGS]
            self._arm_silence(v, seen.request_at)
        if seen.consent_reference and not any(c.uid is None for c in v.candidates):
            self._consent_check(v, _Candidate(None, None, seen.request_at, reference=True), out)
        out.visitors[(v.run, v.key)] = self._snapshot(v)
        return out

    def browser(self, seen: BrowserSeen) -> Judgement:
        """Follow what the data-layer observer saw in the page: consent as it changed, and what was pushed."""
        out = Judgement()
        v = self._visitor(seen.run, seen.client_addr, seen.user_agent, seen.received_at)
        v.heard_until = max(v.heard_until, seen.received_at)
        # A report can wait in the browser before it leaves (a beacon during navigation, a busy connection): its
        # events would be placed that much too late. The least delayed report of the last minute gives the clock.
        v.offsets.append((seen.received_at, seen.offset))
        while v.offsets and v.offsets[0][0] < seen.received_at - 60.0:
            v.offsets.popleft()
        shift = min(offset for _, offset in v.offsets) - seen.offset  # <= 0
        if seen.served_at is not None and seen.events:
            # Never before its page was served: no report (a page's own scripts can forge one) moves another's
            # events out of their page's life.
            shift = max(shift, min(0.0, seen.served_at - min(event.at for event in seen.events)))
        site = seen.origin or None
        mapping = self.config.datalayer_schemas
        for index, original in enumerate(seen.events):
            event = replace(original, at=original.at + shift) if shift else original
            if event.type is BrowserEventType.PAGE:
                v.mark(event.at, True, site)
            elif event.type is BrowserEventType.NAVIGATION:
                # A single-page storefront shows its pages without page loads: its navigations arm the silence
                # check as page loads do.
                self._arm_silence(v, event.at)
            if event.type is BrowserEventType.PUSH and event.name == CONSENT_CHANGED:
                granted = event.data.get("granted") if isinstance(event.data, dict) else None
                if isinstance(granted, bool):
                    self._record_datalayer(v, event.at, _datalayer_reading(v, event.at, granted, site), out, site)
            schema = mapping.get(event.name) if event.type is BrowserEventType.PUSH else None
            consent, owed = self._push_consent(v, event.at, site)
            uid = hashlib.sha256(f"{seen.run}\n{v.key}\n{seen.page}\n{event.at!r}\n{index}".encode()).hexdigest()[:24]
            record = PushRecord(
                uid, v.run, v.key, seen.page, event.at, event.type.value, event.name, schema, consent,
                event.data, event.early, event.truncated,
            )  # fmt: skip
            out.pushes.append(record)
            if schema is not None:
                push = _Open(uid, event.at, schema, _identifying(event.data), event.name, owed, site)
                self._link(v, push, True, out)
        out.visitors[(v.run, v.key)] = self._snapshot(v)
        return out

    def observer_blocked(self, seen: ObserverBlocked) -> Judgement:
        """The observer was not added to a page (its policy, or no place for it): judge this visitor from the network,
        and say so once."""
        return self._unobserved(
            seen.run, seen.client_addr, seen.user_agent, seen.at, seen.url, FindingKind.OBSERVER_BLOCKED,
            f"clickwatch's data-layer observer was not added to a page ({seen.reason}); "
            "this visitor is judged from network signals only",
        )  # fmt: skip

    def service_worker(self, seen: ServiceWorkerSeen) -> Judgement:
        """A service worker serves this visitor's storefront: pages it serves from its cache reach no proxy, so they
        carry no observer. From now on the network decides where it is newer than the data layer; say so once."""
        return self._unobserved(
            seen.run, seen.client_addr, seen.user_agent, seen.at, seen.url, FindingKind.SERVICE_WORKER,
            f"a service worker serves this storefront ({seen.evidence}: {seen.url}); pages it answers from its "
            "cache never reach the proxy and are not counted as page loads. Where the proxy could add its "
            "observer to the worker's own copy of the page (Angular's ngsw-worker.js), those pages are still "
            "observed; on a page without it, network consent signals newer than the data layer decide, and "
            "events it pushes are not seen (a lost one cannot be reported)",
        )  # fmt: skip

    def _unobserved(
        self, run: str, client_addr: str, user_agent: str, at: float, url: str, kind: FindingKind, message: str
    ) -> Judgement:
        """Pages from `at` on have no observer: network signals newer than the data layer decide; told once a kind."""
        out = Judgement()
        v = self._visitor(run, client_addr, user_agent, at)
        v.mark(at, False, page_origin(url))
        if kind not in v.told:
            v.told.add(kind)
            self._find(out, kind, v, at, None, message)
        out.visitors[(v.run, v.key)] = self._snapshot(v)
        return out

    def evaluate(self, now: float, final: bool = False) -> Judgement:
        """Decide what waited on a window that has now passed (all of it when `final`)."""
        out = Judgement()
        grace = self.config.grace_seconds
        for v in list(self._visitors.values()):
            changed = False
            due = [c for c in v.candidates if final or c.at + grace <= now]
            if due:
                # A plain split, not a membership test: thousands of calls can wait at once under load.
                v.candidates = [] if final else [c for c in v.candidates if c.at + grace > now]
                undecided = [c for c in due if not self._decide_consent(v, c, now, final, out)]
                if undecided:
                    v.candidates[:0] = undecided
                changed = True
            if v.open_pushes or v.open_sent:
                changed = self._reconcile(v, now, final, out) or changed
            if v.pending_references:
                changed = self._decide_references(v, now, final, out) or changed
            if v.silence_deadline is not None and (final or v.silence_deadline <= now):
                self._decide_silence(v, out)
                changed = True
            if changed:
                out.visitors[(v.run, v.key)] = self._snapshot(v)
            elif self._idle(v, now):
                self._compact(v)
        if len(self._visitors) > _MAX_VISITORS:
            self._forget_oldest()
        return out

    # --- consent -----------------------------------------------------------------------------------

    def _record(self, v: _Visitor, at: float, reading: ConsentReading, out: Judgement) -> None:
        before = v.state_at(at)
        if (
            reading.state is ConsentState.ABSENT
            and before is not None
            and before[1] is ConsentState.WITHDRAWN
            and reading.source.endswith(CONSENT_GIVEN_SUFFIX)
        ):
            return  # the server's mirror cookie says only "not given": after a withdrawal it adds nothing
        entry = (at, reading.state, reading.source, reading.detail)
        bisect.insort(v.readings, entry, key=lambda r: r[0])
        if len(v.readings) > _MAX_READINGS:
            del v.readings[0]
        if before is not None and before[1] is reading.state:
            return
        out.signals.append(ConsentSignal(v.run, v.key, at, reading.state, reading.source, reading.detail))
        if v.datalayer:
            return  # shown in the timeline, but the data layer decides when consent was given
        self._given_changed(v, at, reading.state)

    def _record_datalayer(
        self, v: _Visitor, at: float, reading: ConsentReading, out: Judgement, site: str | None = None
    ) -> None:
        before = _state_at(v.datalayer, at)
        entry = (at, reading.state, reading.source, reading.detail)
        for layer in (v.datalayer, _of_site(v.site_layers, site) if site else None):
            if layer is not None:
                bisect.insort(layer, entry, key=lambda r: r[0])
                if len(layer) > _MAX_READINGS:
                    del layer[0]
        if before is not None and before[1] is reading.state:
            return
        out.signals.append(ConsentSignal(v.run, v.key, at, reading.state, reading.source, reading.detail))
        self._given_changed(v, at, reading.state)
        if reading.state is not ConsentState.GIVEN:
            self._reopen(v, at, out)

    def _reopen(self, v: _Visitor, withdrawn_at: float, out: Judgement) -> None:
        """Calls cleared at once that a late report shows came after consent ended: decide them again."""
        horizon = v.last_seen - self.config.grace_seconds - self.config.reconcile_seconds
        kept: deque[_Candidate] = deque(maxlen=v.given_early.maxlen)
        for candidate in v.given_early:
            said = self._datalayer_says(v, candidate.at, candidate.site) if candidate.at > withdrawn_at else None
            if said is not None and not said[0]:
                v.candidates.append(candidate)
                if candidate.uid is not None:
                    out.consent.append((candidate.uid, CONSENT_PENDING))
            elif candidate.at >= horizon:
                kept.append(candidate)
        v.given_early = kept

    def _record_account(self, v: _Visitor, at: float, reading: AccountReading, out: Judgement) -> None:
        """A Commerce API answer about the signed-in shopper's consent: kept, and shown in the timeline."""
        if reading.by_code:
            # DELETE …/consents/<code>: a withdrawal of this template's consent only if the code is its own.
            if reading.code is None or reading.code != v.account_code:
                return
            reading = replace(reading, changed_at=at)
        elif reading.code is not None:
            v.account_code = reading.code
        index = bisect.bisect_right(v.account, at, key=lambda r: r[0])
        before = v.account[index - 1][1] if index else None
        v.account.insert(index, (at, reading))
        del v.account[:-_MAX_READINGS]
        if before is not None and before.state is reading.state:
            return
        out.signals.append(ConsentSignal(v.run, v.key, at, reading.state, reading.source, reading.detail))

    @staticmethod
    def _given_changed(v: _Visitor, at: float, state: ConsentState) -> None:
        if state is ConsentState.GIVEN:
            v.given_at = at
        elif v.given_at is not None and at >= v.given_at:
            v.given_at = None
            v.silence_deadline = None

    @staticmethod
    def _signed_in(v: _Visitor, at: float, signed_in: bool) -> None:
        index = bisect.bisect_right(v.logins, at, key=lambda r: r[0])
        if (v.logins[index - 1][1] if index else False) is signed_in:
            return
        v.logins.insert(index, (at, signed_in))
        del v.logins[:-_MAX_READINGS]

    def _datalayer_says(self, v: _Visitor, at: float, site: str | None = None) -> tuple[bool, Reading] | None:
        """(given?, the reading that says so) from the data layer of the call's site, or None when it said nothing."""
        layer = v.layer(site)
        if not layer:
            return None
        network = v.state_at(at)
        if network is not None and network[1] is ConsentState.PAUSED:
            return False, network  # the pause cookie (assisted service) wins over everything
        at_call = _state_at(layer, at)
        if at_call is not None and network is not None and network[0] > at_call[0] and not v.observed_at(at, site):
            return None  # a page the observer did not see (policy, lost report): the newer network signal decides
        end = bisect.bisect_right(layer, at + DATALAYER_TOLERANCE_SECONDS, key=lambda r: r[0])
        start = bisect.bisect_right(layer, at, key=lambda r: r[0])
        soon = next((r for r in layer[start:end] if r[1] is ConsentState.GIVEN), None)
        if at_call is not None and at_call[1] is ConsentState.GIVEN:
            return True, at_call
        if soon is not None:
            return True, soon
        if at_call is not None:
            return False, at_call
        return self._given_later_on_this_page(v, at, network, layer, site)

    @staticmethod
    def _given_later_on_this_page(
        v: _Visitor, at: float, network: Reading | None, layer: list[Reading], site: str | None
    ) -> tuple[bool, Reading] | None:
        """The data layer said nothing before the call, but the observer watched its page and saw consent given there
        later: consent was given after the call (an accelerator page pushes nothing before the shopper decides).

        Only on the same page: a ConsentChanged pushed at the start of a later page may announce a consent given
        earlier, without a push, and says nothing of when.
        """
        if (network is not None and network[1] is ConsentState.GIVEN) or not v.observed_at(at, site):
            return None
        start = bisect.bisect_right(layer, at + DATALAYER_TOLERANCE_SECONDS, key=lambda r: r[0])
        later = next((r for r in layer[start:] if r[1] is ConsentState.GIVEN), None)
        if later is None:
            return None
        marks = v.site_marks.get(site, []) if site else v.page_marks
        first = bisect.bisect_right(marks, at, key=lambda m: m[0])
        if any(mark[0] <= later[0] for mark in marks[first:]):
            return None  # a new page began in between
        page = marks[first - 1][0]
        detail = f"no ConsentChanged on this page until granted=true {later[0] - at:.1f} s after the call"
        return False, (page, ConsentState.ABSENT, DATALAYER_SOURCE, detail)

    def _push_consent(self, v: _Visitor, at: float, site: str | None = None) -> tuple[str, bool]:
        """The visitor's consent at a push, and whether the tag then owed a clickstream POST for it.

        No benefit of the doubt here: it would accuse the tag. Asked again when the push's window has passed,
        so that reports arriving out of order (a withdrawal's beacon after the push's batch) are all in.
        """
        network = v.state_at(at)
        if network is not None and network[1] is ConsentState.PAUSED:
            return ConsentState.PAUSED.value, False
        reading = _state_at(v.layer(site), at)
        if reading is not None:
            return reading[1].value, reading[1] is ConsentState.GIVEN
        if v.signed_in_at(at) or network is None:
            return CONSENT_UNKNOWN, False
        return network[1].value, network[1] is ConsentState.GIVEN

    def _consent_check(self, v: _Visitor, candidate: _Candidate, out: Judgement) -> None:
        said = self._datalayer_says(v, candidate.at, candidate.site)
        if said is not None:
            given = said[0]
            if given and v.signed_in_at(candidate.at):
                # The account may disagree with the browser: decided once its answer had time to come.
                found = v.account_for(candidate.at, 0.0)
                given = found is not None and found[1].state is ConsentState.GIVEN
        elif v.page_marks or v.signed_in_at(candidate.at):
            given = False  # the observer's report may still be on its way, or only the data layer can tell
        else:
            reading = v.state_at(candidate.at)
            given = reading is not None and reading[1] is ConsentState.GIVEN
        if given:
            if candidate.uid is not None:
                out.consent.append((candidate.uid, ConsentState.GIVEN.value))
            if said is not None:
                v.given_early.append(candidate)
            return
        # The proxy may see the new consent only later (the next storefront request, the observer's report).
        v.candidates.append(candidate)
        if candidate.uid is not None:
            out.consent.append((candidate.uid, CONSENT_PENDING))

    def _decide_consent(self, v: _Visitor, candidate: _Candidate, now: float, final: bool, out: Judgement) -> bool:
        """Decide a call's consent once its grace window has passed; False: it waits for more evidence."""
        said = self._datalayer_says(v, candidate.at, candidate.site)
        grace = self.config.grace_seconds
        if said is not None:
            given, reading = said
            # The data layer said "not granted" at the call: only evidence of consent within its own tolerance (its
            # report may be placed late) clears it. A consent given afterwards, however soon, never does.
            since = max(candidate.at - DATALAYER_TOLERANCE_SECONDS, reading[0])
            echo = next(
                (
                    r
                    for r in v.readings
                    if since < r[0] <= candidate.at + DATALAYER_TOLERANCE_SECONDS and r[1] is ConsentState.GIVEN
                ),
                None,
            )
            if reading[1] is not ConsentState.PAUSED and (given or echo is not None):
                granted = reading if given else echo
                assert granted is not None
                if not (v.signed_in_at(candidate.at) and self._account_disagrees(v, candidate, granted, out)):
                    self._consent_is(out, candidate, ConsentState.GIVEN.value)
            else:
                self._not_given(v, candidate, reading, "as the page's data layer said", out)
            return True
        if v.signed_in_at(candidate.at):
            self._signed_in_without_datalayer(v, candidate, out)
            return True
        at_call = v.state_at(candidate.at)
        start = bisect.bisect_right(v.readings, candidate.at, key=lambda r: r[0])
        end = bisect.bisect_right(v.readings, candidate.at + grace, key=lambda r: r[0])
        later = v.readings[start:end]
        if (at_call is not None and at_call[1] is ConsentState.GIVEN) or any(r[1] is ConsentState.GIVEN for r in later):
            self._consent_is(out, candidate, ConsentState.GIVEN.value)
            return True
        if v.header_based and candidate.kind is not None:
            # (A Commerce API call carries its own X-Anonymous-Consents: its reading at the call is the echo.)
            return self._decide_by_echo(v, candidate, start, now, final, out)
        if at_call is None and not later:
            self._unknown(
                v,
                candidate,
                "no consent signal was ever seen for this visitor (proxy started mid-session, or consent "
                "lives where the proxy cannot see it): consent cannot be judged",
                out,
            )
            return True
        reading = at_call if at_call is not None else later[0]
        self._not_given(v, candidate, reading, f"and no consent was given within {grace:g} s after", out)
        return True

    def _decide_by_echo(
        self,
        v: _Visitor,
        candidate: _Candidate,
        start: int,
        now: float,
        final: bool,
        out: Judgement,
    ) -> bool:
        # Spartacus gives and withdraws consent in browser storage, with no request: the proxy sees the state only
        # when the next Commerce API call echoes it, which may come minutes later. The first decisive echo after
        # the call decides: GIVEN clears it; an explicit "no decision" convicts it (the browser had not
        # consented, and cannot return to "no decision"); WITHDRAWN cannot decide (given and withdrawn in
        # between, with no request, is lawful).
        for reading in v.readings[start:]:
            if reading[1] is ConsentState.GIVEN:
                self._consent_is(out, candidate, ConsentState.GIVEN.value)
                return True
            if reading[1] is ConsentState.WITHDRAWN:
                self._unknown(
                    v,
                    candidate,
                    f"the next consent echo said withdrawn ({reading[2]}): consent may have been given and withdrawn "
                    "in between without any request, as Spartacus does; only the data layer could tell",
                    out,
                )
                return True
            if _explicit_no_decision(reading):
                self._not_given(v, candidate, reading, "and the next consent echo still said so", out)
                return True
        if not final and now < candidate.at + self.config.echo_seconds:
            return False
        self._unknown(
            v,
            candidate,
            f"no consent echo (X-Anonymous-Consents) came within {self.config.echo_seconds:g} s after the call: "
            "consent given in browser storage reaches the proxy only with the next Commerce API call",
            out,
        )
        return True

    def _account_disagrees(self, v: _Visitor, candidate: _Candidate, granted: Reading, out: Judgement) -> bool:
        """A signed-in shopper's browser said given: does their account say otherwise? (True: decided here.)

        An account withdrawal dated after the browser's consent is the shopper's latest word: tracking then is a
        violation. An account that simply holds no consent (Spartacus transfers anonymous consent to the account
        only at registration, never at sign-in) is a record that disagrees with the browser: a warning, once per
        reading of the account.
        """
        found = v.account_for(candidate.at, self.config.grace_seconds)
        if found is None or found[1].state is ConsentState.GIVEN:
            return False
        read_at, account = found
        both = (
            f"the data layer said given ({granted[2]}: {granted[3]}) but the signed-in shopper's account says "
            f"{said(account.state)} ({account.source}: {account.detail})"
        )
        withdrawn_at = account.changed_at if account.state is ConsentState.WITHDRAWN else None
        if withdrawn_at is not None and withdrawn_at > granted[0]:
            reading = (read_at, account.state, account.source, account.detail)
            self._not_given(v, candidate, reading, f"after consent given in the browser: {both}", out)
            return True
        self._consent_is(out, candidate, ConsentState.GIVEN.value)
        if candidate.kind in (Kind.CLICKSTREAM, Kind.CONSENT_REFERENCE) and v.account_reported_for != read_at:
            v.account_reported_for = read_at
            self._find(
                out,
                FindingKind.ACCOUNT_CONSENT_MISMATCH,
                v,
                candidate.at,
                candidate.uid,
                f"tracked on consent given in this browser, not in the account: {both}; the account's consent "
                "record should hold it (Spartacus transfers anonymous consent to the account only at registration)",
            )
        return True

    def _signed_in_without_datalayer(self, v: _Visitor, candidate: _Candidate, out: Judgement) -> None:
        """A signed-in shopper's call and no data layer: the account decides where it was read and says enough."""
        found = v.account_for(candidate.at, self.config.grace_seconds)
        if found is not None:
            read_at, account = found
            if account.state is ConsentState.GIVEN:
                self._consent_is(out, candidate, ConsentState.GIVEN.value)
                return
            if account.state is ConsentState.WITHDRAWN and (account.changed_at or 0.0) >= v.first_seen:
                # Withdrawn in the account during this visit: whatever the browser held before, this is the latest.
                reading = (read_at, account.state, account.source, account.detail)
                self._not_given(v, candidate, reading, "as the signed-in shopper's account said", out)
                return
            why = (
                f"the shopper is signed in and their account says {said(account.state)} ({account.source}: "
                f"{account.detail}), but consent given in this browser cannot be told without the data layer"
            )
        else:
            why = (
                "the shopper is signed in: their consent lives in their account, whose consent answers the proxy "
                "did not see, and the data layer did not say"
            )
        self._unknown(v, candidate, why, out)

    @staticmethod
    def _consent_is(out: Judgement, candidate: _Candidate, consent: str) -> None:
        if candidate.uid is not None:
            out.consent.append((candidate.uid, consent))

    def _unknown(self, v: _Visitor, candidate: _Candidate, why: str, out: Judgement) -> None:
        self._consent_is(out, candidate, CONSENT_UNKNOWN)
        if candidate.kind not in (Kind.CLICKSTREAM, Kind.CONSENT_REFERENCE) or v.unknown_reported:
            return  # a strategy or Commerce API call needs no consent: only a reference would need it
        v.unknown_reported = True
        self._find(out, FindingKind.CONSENT_UNKNOWN, v, candidate.at, candidate.uid, f"consent cannot be judged: {why}")

    def _not_given(self, v: _Visitor, candidate: _Candidate, reading: Reading, how: str, out: Judgement) -> None:
        _, state, source, detail = reading
        self._consent_is(out, candidate, state.value)
        if candidate.kind in (Kind.CLICKSTREAM, Kind.CONSENT_REFERENCE):
            what = "clickstream event" if candidate.kind is Kind.CLICKSTREAM else "consent-reference call"
            self._find(
                out,
                FindingKind.CONSENT_VIOLATION,
                v,
                candidate.at,
                candidate.uid,
                f"{what} sent while consent was {said(state)} ({source}: {detail}), {how}",
            )
            return
        if not candidate.reference:
            return  # a strategy call without a reference is what a shopper without consent should send
        if candidate.uid is None:
            if v.stale_reported_for == reading[0]:
                return  # one finding per withdrawal for the Commerce API, not one per call
            v.stale_reported_for = reading[0]
        what = "merchandising strategy call" if candidate.kind is Kind.STRATEGY else "Commerce API call"
        header_name = "consent-reference" if candidate.kind is Kind.STRATEGY else "X-Consent-Reference"
        self._find(
            out,
            FindingKind.STALE_CONSENT_REFERENCE,
            v,
            candidate.at,
            candidate.uid,
            f"{what} carried {header_name} while consent was {said(state)} ({source}: {detail}), {how}",
        )

    # --- intended versus delivered ---------------------------------------------------------------------------

    def _pairs(self, push: _Open, sent: _Open) -> bool:
        return (
            push.schema == sent.schema
            and (push.site is None or sent.site is None or push.site == sent.site)
            # Either side of the push: its time is an estimate that a delayed report can place too late.
            and abs(sent.at - push.at) <= self.config.reconcile_seconds
            and _agree(push.ident, sent.ident)
        )

    def _link(self, v: _Visitor, item: _Open, is_push: bool, out: Judgement) -> None:
        """Pair a push made with consent and the clickstream POST that carries it, whichever came first.

        A push made without consent pairs only at the end of the window, with a POST that no push made with
        consent explains: the same product viewed before and after accepting is two pushes, and the POST after
        consent carries the second one.
        """
        if is_push and item.consent_given:
            sent = next((s for s in v.open_sent if self._pairs(item, s)), None)
            if sent is not None:
                v.open_sent.remove(sent)
                out.links.append(PushLink(item.uid, sent.uid, item.at))
                return
        elif not is_push:
            push = next((p for p in v.open_pushes if p.consent_given and self._pairs(p, item)), None)
            if push is not None:
                v.open_pushes.remove(push)
                out.links.append(PushLink(push.uid, item.uid, push.at))
                return
        own = v.open_pushes if is_push else v.open_sent
        own.append(item)
        del own[:-_MAX_OPEN]

    def _reconcile(self, v: _Visitor, now: float, final: bool, out: Judgement) -> bool:
        """Pushes never sent, and posts never pushed, once the reconcile window has passed."""
        window = self.config.reconcile_seconds
        due_sent = [s for s in v.open_sent if s.at + window <= now]
        v.open_sent = [] if final else [s for s in v.open_sent if s.at + window > now]
        reported: set[str] = set()
        for sent in due_sent:
            # Nothing made with consent explains it: a push made without consent may (a tag that ignores consent).
            push = next((p for p in v.open_pushes if self._pairs(p, sent)), None)
            if push is not None:
                v.open_pushes.remove(push)
                out.links.append(PushLink(push.uid, sent.uid, push.at))
            elif sent.uid not in reported and v.observed_at(sent.at, sent.site) and v.heard_until > sent.at:
                reported.add(sent.uid)
                # (Only when the observer reported after the POST: a browser closed at once loses its last report.)
                self._find(
                    out,
                    FindingKind.EVENT_WITHOUT_PUSH,
                    v,
                    sent.at,
                    sent.uid,
                    f"{sent.schema} was sent from a page whose data layer had no matching push within {window:g} s "
                    "before it (the tag made it up, sent it twice, or the push was not observed)",
                )
        # A push made without consent is kept a window longer: only a POST's own decision may still pair it.
        due_pushes = [p for p in v.open_pushes if p.at + window * (1 if p.consent_given else 2) <= now]
        # At the end nothing more will come: what is still inside its window cannot be decided, and is let go.
        v.open_pushes = (
            [] if final else [p for p in v.open_pushes if p.at + window * (1 if p.consent_given else 2) > now]
        )
        for push in due_pushes:
            if self._push_consent(v, push.at, push.site)[1]:
                self._find(
                    out,
                    FindingKind.EVENT_NOT_SENT,
                    v,
                    push.at,
                    None,
                    f"the storefront pushed {push.name}{_describe(push.ident)} while consent was given, and no "
                    f"{push.schema} clickstream POST followed within {window:g} s",
                )
        # Only what a reader sees as waiting changed: pushes, and posts of a visitor the observer reports on.
        return bool(due_pushes or (due_sent and v.page_marks))

    def _arm_silence(self, v: _Visitor, page_at: float) -> None:
        if v.given_at is None or page_at < v.given_at or v.silence_checked_for == v.given_at:
            return
        if v.silence_deadline is None:
            v.silence_deadline = page_at + self.config.silence_seconds
            if any(self._ends_silence(v, t) for t in v.clickstream_times):
                self._silence_broken(v)

    def _ends_silence(self, v: _Visitor, sent_at: float) -> bool:
        """Whether a clickstream event answers the silence check now waiting (as `_decide_silence` would count it)."""
        return (
            v.given_at is not None
            and v.silence_deadline is not None
            and v.given_at - self.config.grace_seconds <= sent_at <= v.silence_deadline
        )

    @staticmethod
    def _silence_broken(v: _Visitor) -> None:
        """An event came in the window: the check's outcome (no finding) is known, it waits no longer."""
        v.silence_deadline = None
        v.silence_checked_for = v.given_at

    def _decide_silence(self, v: _Visitor, out: Judgement) -> None:
        given_at, deadline = v.given_at, v.silence_deadline
        v.silence_deadline = None
        if given_at is None or deadline is None:
            return
        v.silence_checked_for = given_at
        # The proxy sees consent late (on the next storefront request): an event inside the grace window
        # before that counts as sent after consent, exactly as it does for violations.
        earliest = given_at - self.config.grace_seconds
        if any(earliest <= t <= deadline for t in v.clickstream_times):
            return
        self._find(
            out,
            FindingKind.NO_EVENTS_AFTER_CONSENT,
            v,
            given_at,
            None,
            f"consent was given and {v.page_loads} storefront page(s) loaded, but no clickstream event was "
            f"sent within {self.config.silence_seconds:g} s",
        )

    # --- events --------------------------------------------------------------------------------------

    def _event_checks(self, v: _Visitor, seen: RequestSeen, body: Body, out: Judgement) -> str | None:
        if not header(seen.headers, "consent-reference"):
            self._find(
                out,
                FindingKind.MISSING_CONSENT_REFERENCE,
                v,
                seen.sent_at,
                seen.uid,
                "clickstream event sent without a consent-reference header",
            )
        name = schema_name(header(seen.headers, "hybris-schema"))
        problem = schema_problem(name, self.config.schemas)
        if problem:
            self._find(out, FindingKind.UNKNOWN_SCHEMA, v, seen.sent_at, seen.uid, problem)
        required = self.config.schemas.get(name) if name else None
        problems = payload_problems(body, required)
        if problems:
            self._find(out, FindingKind.INVALID_PAYLOAD, v, seen.sent_at, seen.uid, "; ".join(problems))
        digest = hashlib.sha256(f"{body.size}:{body.text or ''}".encode("utf-8", "surrogatepass")).hexdigest()
        key = (name or "", digest)
        window = self.config.duplicate_seconds
        previous = v.recent_bodies.get(key)
        if previous is not None and abs(seen.sent_at - previous) <= window:
            self._find(
                out,
                FindingKind.DUPLICATE_EVENT,
                v,
                seen.sent_at,
                seen.uid,
                f"same {name or 'event'} body sent {abs(seen.sent_at - previous):.2f} s earlier (within {window:g} s)",
            )
        v.recent_bodies[key] = seen.sent_at
        if len(v.recent_bodies) > 256:
            horizon = seen.sent_at - window
            v.recent_bodies = {k: t for k, t in v.recent_bodies.items() if t >= horizon}
        return name

    def _consent_reference_checks(self, v: _Visitor, answer: Answer, verdict: Verdict, out: Judgement) -> None:
        if verdict in (Verdict.REJECTED, Verdict.FAILED):
            how = f"answered {answer.status_code}" if answer.status_code is not None else f"failed: {answer.error}"
            self._find(
                out,
                FindingKind.CONSENT_REFERENCE_FAILED,
                v,
                answer.ended_at,
                answer.uid,
                f"consent-reference call {how}; the tag cannot send events without a reference",
            )
            return
        if verdict is Verdict.DELIVERED:
            # Judged once the page that asked is known: a folded page load reaches the judge up to a second late.
            v.pending_references.append((answer.sent_at, answer.ended_at, answer.uid))
            out.visitors[(v.run, v.key)] = self._snapshot(v)  # the store shows the decision waiting

    def _decide_references(self, v: _Visitor, now: float, final: bool, out: Judgement) -> bool:
        """Judge the consent references answered at least a reconcile window ago, oldest first."""
        window = self.config.reconcile_seconds
        due = sorted(r for r in v.pending_references if final or r[1] + window <= now)
        if not due:
            return False
        v.pending_references = [r for r in v.pending_references if not (final or r[1] + window <= now)]
        for sent, answered, uid in due:
            self._repeated_reference(v, sent, answered, uid, out)
        return True

    def _repeated_reference(self, v: _Visitor, sent: float, answered: float, uid: str, out: Judgement) -> None:
        """A second reference is repeated only if the tag could have known the first one.

        It could when the first had come back before the page that asked again was requested (the tag keeps its
        reference in browser storage); a page requested before that answer came could not have it.
        """
        window = self.config.session_seconds
        while v.references and v.references[0][0] < sent - window:
            v.references.popleft()
        if v.references and v.withdrawn_between(v.references[-1][0], sent):
            v.references.clear()  # withdrawn, then given again: a new reference is what the tag must obtain
        earlier = v.references[-1] if v.references else None
        v.references.append((sent, answered))
        if v.header_based and (not v.datalayer or not v.observed_at(sent)):
            return  # Spartacus withdraws without a request: without the data layer a withdrawal may be unseen
        if earlier is None:
            return
        page = v.page_before(sent)
        asked_from = page if page is not None and page > earlier[0] else sent
        if earlier[1] > asked_from:
            return  # the page that asked again was requested before the earlier reference came back
        self._find(
            out,
            FindingKind.REPEATED_CONSENT_REFERENCE,
            v,
            answered,
            uid,
            f"visitor obtained {len(v.references)} consent references within {window / 60:g} min, with no "
            "withdrawal in between, although the earlier one had come back before the page that asked again was "
            "requested",
        )

    # --- helpers ---------------------------------------------------------------------------------------

    def _visitor(self, run: str, client_addr: str, user_agent: str, at: float) -> _Visitor:
        key = visitor_key(client_addr, user_agent)
        v = self._visitors.get((run, key))
        if v is None:
            v = _Visitor(run, key, normalise_ip(client_addr), user_agent, at, at)
            self._visitors[(run, key)] = v
        v.last_seen = max(v.last_seen, at)
        return v

    def _find(self, out: Judgement, kind: FindingKind, v: _Visitor, at: float, uid: str | None, message: str) -> None:
        out.findings.append(Finding(kind, self.config.severity[kind], message, v.key, v.run, at, uid))

    def _snapshot(self, v: _Visitor) -> VisitorSnapshot:
        current = v.current()
        # Each open window says when it closes at the latest, so that a waiting `check` can say how long is left.
        pending = []
        config = self.config
        if v.candidates:
            # A Spartacus-style visitor's call may wait past the grace window for the next consent echo.
            longest = max(config.grace_seconds, config.echo_seconds if v.header_based else 0.0)
            until = max(c.at for c in v.candidates) + longest
            pending.append(f"consent of {len(v.candidates)} call(s) awaits the grace window until {_until(until)}")
        if v.silence_deadline is not None:
            pending.append(
                f"waiting for events after consent until {_until(v.silence_deadline)} (windows.silence_seconds)"
            )
        window = config.reconcile_seconds
        if v.open_pushes:
            until = max(p.at + window * (1 if p.consent_given else 2) for p in v.open_pushes)
            waiting = f"{len(v.open_pushes)} data-layer event(s) await their clickstream POST"
            pending.append(f"{waiting} until {_until(until)}")
        if v.open_sent and v.page_marks:
            until = max(s.at for s in v.open_sent) + window
            pending.append(f"{len(v.open_sent)} clickstream POST(s) await their data-layer push until {_until(until)}")
        if v.pending_references:
            until = max(r[1] for r in v.pending_references) + window
            pending.append(
                f"{len(v.pending_references)} consent reference(s) await the page that asked until {_until(until)}"
            )
        return VisitorSnapshot(
            run=v.run,
            visitor=v.key,
            client_addr=v.client_addr,
            user_agent=v.user_agent,
            first_seen=v.first_seen,
            last_seen=v.last_seen,
            page_loads=v.page_loads,
            last_page_at=v.last_page_at,
            consent=current[1].value if current else CONSENT_UNKNOWN,
            consent_since=current[0] if current else None,
            pending_decision="; ".join(pending) or None,
        )

    def _idle(self, v: _Visitor, now: float) -> bool:
        busy = v.candidates or v.open_pushes or v.open_sent or v.pending_references or v.silence_deadline is not None
        return not busy and now - v.last_seen > self.config.session_seconds

    @staticmethod
    def _compact(v: _Visitor) -> None:
        # An idle browser keeps its consent and what was said about it; the per-event memory goes.
        del v.readings[:-1]
        del v.datalayer[:-1]
        del v.logins[:-1]
        del v.account[:-1]
        del v.page_marks[:-1]
        del v.pages[:-1]
        for layer in v.site_layers.values():
            del layer[:-1]
        for marks in v.site_marks.values():
            del marks[:-1]
        v.recent_bodies.clear()
        v.clickstream_times.clear()

    def _forget_oldest(self) -> None:
        # Bounded memory on a long-running shared proxy: forget the least recently seen quiet browsers.
        quiet = sorted(
            (
                v
                for v in self._visitors.values()
                if not (v.candidates or v.open_pushes or v.open_sent or v.pending_references)
                and v.silence_deadline is None
            ),
            key=lambda v: v.last_seen,
        )
        for v in quiet[: len(self._visitors) - _MAX_VISITORS]:
            del self._visitors[(v.run, v.key)]

    def forget(self, run: str | None = None) -> None:
        """Forget the visitors and calls in flight of one run (all when None): its captured data was reset."""
        if run is None:
            self._visitors.clear()
            self._inflight.clear()
            return
        for key in [key for key in self._visitors if key[0] == run]:
            del self._visitors[key]
        for uid in [uid for uid, flight in self._inflight.items() if flight.run == run]:
            del self._inflight[uid]

    def visitors(self) -> Iterable[VisitorSnapshot]:
        """Snapshots of every visitor currently followed."""
        return [self._snapshot(v) for v in self._visitors.values()]
