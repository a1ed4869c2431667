"""Judge deliveries against the visitor's consent and the event rules; name every problem as a finding.

The same Judge runs on live proxy traffic and on imported captures: it sees observations in order,
and decides what depends on later evidence (grace and silence windows) when `evaluate` is called.
"""

from __future__ import annotations

import bisect
import hashlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from core.checks import cors_problems, payload_problems, schema_problem
from core.config import Config
from core.consent import (
    CONSENT_GIVEN_SUFFIX,
    ConsentReading,
    ConsentState,
    has_consent_cookie,
    read_request,
    read_response,
)
from core.findings import Finding, FindingKind
from core.model import Answer, Body, Headers, Kind, RequestSeen, StorefrontSeen, Verdict
from core.record import header, schema_name
from core.visitor import normalise_ip, visitor_key

CONSENT_PENDING = "pending"
CONSENT_UNKNOWN = "unknown"
NO_COOKIE_SOURCE = "page load without consent cookie"
_MAX_READINGS = 500
_MAX_VISITORS = 50000


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


@dataclass
class Judgement:
    """Everything one observation (or one evaluation) decided."""

    findings: list[Finding] = field(default_factory=list)
    signals: list[ConsentSignal] = field(default_factory=list)
    consent: list[tuple[str, str]] = field(default_factory=list)  # (delivery uid, consent at that moment)
    visitors: dict[tuple[str, str], VisitorSnapshot] = field(default_factory=dict)

    def extend(self, other: Judgement) -> None:
        """Merge another judgement into this one."""
        self.findings.extend(other.findings)
        self.signals.extend(other.signals)
        self.consent.extend(other.consent)
        self.visitors.update(other.visitors)

    def __bool__(self) -> bool:
        return bool(self.findings or self.signals or self.consent or self.visitors)


@dataclass(slots=True)
class _Candidate:
    uid: str
    kind: Kind
    at: float


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
    readings: list[tuple[float, ConsentState, str, str]] = field(default_factory=list)
    header_based: bool = False  # Spartacus: consent travels in a header, pages carry no consent cookie
    page_loads: int = 0
    last_page_at: float | None = None
    given_at: float | None = None
    silence_deadline: float | None = None
    silence_checked_for: float | None = None
    clickstream_times: deque[float] = field(default_factory=lambda: deque(maxlen=64))
    candidates: list[_Candidate] = field(default_factory=list)
    unknown_reported: bool = False
    references: deque[float] = field(default_factory=deque)
    recent_bodies: dict[tuple[str, str], float] = field(default_factory=dict)

    def state_at(self, at: float) -> tuple[float, ConsentState, str, str] | None:
        index = bisect.bisect_right(self.readings, at, key=lambda r: r[0])
        return self.readings[index - 1] if index else None

    def current(self) -> tuple[float, ConsentState, str, str] | None:
        return self.readings[-1] if self.readings else None


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
        if seen.kind in (Kind.CLICKSTREAM, Kind.CONSENT_REFERENCE):
            self._consent_check(v, seen, out)
        if seen.kind is Kind.CLICKSTREAM:
            v.clickstream_times.append(seen.sent_at)
            self._event_checks(v, seen, body, out)
        out.visitors[(v.run, v.key)] = self._snapshot(v)
        return out

    def run_of(self, uid: str) -> str | None:
        """The run of a delivery still waiting for its answer."""
        flight = self._inflight.get(uid)
        return flight.run if flight else None

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
        if seen.page_load:
            v.page_loads += 1 + seen.repeats
            last = seen.last_at or seen.request_at
            v.last_page_at = max(last, v.last_page_at or last)
            self._arm_silence(v, seen.request_at)
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
                for candidate in due:
                    self._decide_consent(v, candidate, out)
                changed = True
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
        if reading.state is ConsentState.GIVEN:
            v.given_at = at
        elif v.given_at is not None and at >= v.given_at:
            v.given_at = None
            v.silence_deadline = None

    def _consent_check(self, v: _Visitor, seen: RequestSeen, out: Judgement) -> None:
        reading = v.state_at(seen.sent_at)
        if reading is not None and reading[1] is ConsentState.GIVEN:
            out.consent.append((seen.uid, ConsentState.GIVEN.value))
            return
        # The proxy may see the new consent cookie only on the next storefront request: wait before judging.
        v.candidates.append(_Candidate(seen.uid, seen.kind, seen.sent_at))
        out.consent.append((seen.uid, CONSENT_PENDING))

    def _decide_consent(self, v: _Visitor, candidate: _Candidate, out: Judgement) -> None:
        grace = self.config.grace_seconds
        at_call = v.state_at(candidate.at)
        start = bisect.bisect_right(v.readings, candidate.at, key=lambda r: r[0])
        end = bisect.bisect_right(v.readings, candidate.at + grace, key=lambda r: r[0])
        later = v.readings[start:end]
        if (at_call is not None and at_call[1] is ConsentState.GIVEN) or any(r[1] is ConsentState.GIVEN for r in later):
            out.consent.append((candidate.uid, ConsentState.GIVEN.value))
            return
        if at_call is None and not later:
            out.consent.append((candidate.uid, CONSENT_UNKNOWN))
            if not v.unknown_reported:
                v.unknown_reported = True
                self._find(
                    out,
                    FindingKind.CONSENT_UNKNOWN,
                    v,
                    candidate.at,
                    candidate.uid,
                    "no consent signal was ever seen for this visitor (proxy started mid-session, or consent "
                    "lives where the proxy cannot see it): consent cannot be judged",
                )
            return
        _, state, source, detail = at_call if at_call is not None else later[0]
        out.consent.append((candidate.uid, state.value))
        what = "clickstream event" if candidate.kind is Kind.CLICKSTREAM else "consent-reference call"
        self._find(
            out,
            FindingKind.CONSENT_VIOLATION,
            v,
            candidate.at,
            candidate.uid,
            f"{what} sent while consent was {state.value} ({source}: {detail}), and no consent was given "
            f"within {grace:g} s after",
        )

    def _arm_silence(self, v: _Visitor, page_at: float) -> None:
        if v.given_at is None or page_at < v.given_at or v.silence_checked_for == v.given_at:
            return
        if v.silence_deadline is None:
            v.silence_deadline = page_at + self.config.silence_seconds

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

    def _event_checks(self, v: _Visitor, seen: RequestSeen, body: Body, out: Judgement) -> None:
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
        if verdict is not Verdict.DELIVERED:
            return
        window = self.config.session_seconds
        while v.references and v.references[0] < answer.sent_at - window:
            v.references.popleft()
        v.references.append(answer.sent_at)
        if len(v.references) > 1:
            self._find(
                out,
                FindingKind.REPEATED_CONSENT_REFERENCE,
                v,
                answer.ended_at,
                answer.uid,
                f"visitor obtained {len(v.references)} consent references within {window / 60:g} min",
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
        pending = []
        if v.candidates:
            pending.append(f"consent of {len(v.candidates)} call(s) awaits the grace window")
        if v.silence_deadline is not None:
            pending.append("waiting for events after consent")
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
        return not v.candidates and v.silence_deadline is None and now - v.last_seen > self.config.session_seconds

    @staticmethod
    def _compact(v: _Visitor) -> None:
        # An idle browser keeps its consent and what was said about it; the per-event memory goes.
        del v.readings[:-1]
        v.recent_bodies.clear()
        v.clickstream_times.clear()

    def _forget_oldest(self) -> None:
        # Bounded memory on a long-running shared proxy: forget the least recently seen quiet browsers.
        quiet = sorted(
            (v for v in self._visitors.values() if not v.candidates and v.silence_deadline is None),
            key=lambda v: v.last_seen,
        )
        for v in quiet[: len(self._visitors) - _MAX_VISITORS]:
            del self._visitors[(v.run, v.key)]

    def visitors(self) -> Iterable[VisitorSnapshot]:
        """Snapshots of every visitor currently followed."""
        return [self._snapshot(v) for v in self._visitors.values()]
