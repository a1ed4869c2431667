"""From observations to store operations: decode, record, judge. Pure Python; the store applies the result."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field, replace
from typing import Any

from clickwatch.core.config import Config
from clickwatch.core.decoding import BINARY_PREFIX_BYTES
from clickwatch.core.findings import DEFAULT_SEVERITY, Finding, FindingKind, Severity, clip
from clickwatch.core.judge import CONSENT_UNKNOWN, Judge, Judgement
from clickwatch.core.model import (
    Answer,
    Body,
    BodyKind,
    BrowserReport,
    ObserverBlocked,
    ObserverRejected,
    RequestSeen,
    ServiceWorkerSeen,
    StorefrontSeen,
    Verdict,
)
from clickwatch.core.observer import (
    PAGE_MAX_EVENTS,
    REFUSALS,
    VISITOR_MAX_EVENTS,
    Budget,
    ObserveFormatError,
    parse_batch,
)
from clickwatch.core.record import answer_row, clean_text, request_body, request_row
from clickwatch.core.redaction import Redaction
from clickwatch.core.verdict import verdict_for
from clickwatch.core.visitor import visitor_key

Observation = (
    RequestSeen | Answer | StorefrontSeen | BrowserReport | ObserverBlocked | ObserverRejected | ServiceWorkerSeen
)
# Why an observe request was answered and dropped: a small fixed set (a metric label). The proxy drops what is too
# large, floods, does not fit its page (REFUSALS) or is over its page's or visitor's cap; the store what is not the
# format, does not fit its page's life on the proxy's clock, or brings more events than the caps allow.
REJECT_REASONS = ("too_large", "flood", "bad_format", *REFUSALS, "bad_time", "page_cap", "visitor_cap")


@dataclass(frozen=True, slots=True)
class Notice:
    """One thing worth telling a person: a delivery that did not get through, or an error finding."""

    run: str
    title: str
    detail: str
    at: float


@dataclass
class StoreOps:
    """Rows to write, grouped so that each group is one executemany, applied in field order."""

    inserts: list[dict[str, Any]] = field(default_factory=list)
    answers: list[dict[str, Any]] = field(default_factory=list)
    consent: list[dict[str, Any]] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)
    signals: list[dict[str, Any]] = field(default_factory=list)
    visitors: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    counters: list[dict[str, Any]] = field(default_factory=list)
    pushes: list[dict[str, Any]] = field(default_factory=list)
    links: list[dict[str, Any]] = field(default_factory=list)
    # Observe requests dropped: (reason, how many, what was wrong); counted by the store, logged by the writer.
    rejected: list[tuple[str, int, str]] = field(default_factory=list)
    # What someone should hear about (failed deliveries, error findings): not stored, handed to notifiers.
    notices: list[Notice] = field(default_factory=list)

    def extend(self, other: StoreOps) -> None:
        """Append another batch's operations after this one's."""
        self.inserts.extend(other.inserts)
        self.answers.extend(other.answers)
        self.consent.extend(other.consent)
        self.findings.extend(other.findings)
        self.signals.extend(other.signals)
        self.visitors.update(other.visitors)
        self.counters = other.counters or self.counters
        self.pushes.extend(other.pushes)
        self.links.extend(other.links)
        self.rejected.extend(other.rejected)
        self.notices.extend(other.notices)

    def __len__(self) -> int:
        return (
            len(self.inserts)
            + len(self.answers)
            + len(self.consent)
            + len(self.findings)
            + len(self.signals)
            + len(self.visitors)
            + len(self.counters)
            + len(self.pushes)
            + len(self.links)
            + len(self.rejected)
        )


def _judged(ops: StoreOps, judgement: Judgement) -> StoreOps:
    ops.notices.extend(
        Notice(f.run, f"{f.kind.value} ({f.severity.value})", clip(f.message), f.at)
        for f in judgement.findings
        if f.severity is Severity.ERROR
    )
    ops.consent.extend({"uid": uid, "consent": consent} for uid, consent in judgement.consent)
    ops.findings.extend(
        {
            "delivery_uid": f.delivery_uid,
            "run": f.run,
            "visitor": f.visitor,
            "kind": f.kind.value,
            "severity": f.severity.value,
            # Bounded whatever the message was built from: a page of findings stays small.
            "message": clean_text(clip(f.message)),
            "at": f.at,
        }
        for f in judgement.findings
    )
    ops.signals.extend(
        {
            "run": s.run,
            "visitor": s.visitor,
            "at": s.at,
            "state": s.state.value,
            "source": clean_text(clip(s.source, 200)),
            "detail": clean_text(clip(s.detail)),
        }
        for s in judgement.signals
    )
    ops.pushes.extend(
        {
            "uid": p.uid,
            "run": p.run,
            "visitor": p.visitor,
            "page": p.page,
            "at": p.at,
            "type": p.type,
            "name": clean_text(p.name),
            "schema_name": p.schema,
            "consent": p.consent,
            "data": clean_text(json.dumps(p.data, ensure_ascii=False)) if p.data is not None else None,
            "early": int(p.early),
            "truncated": int(p.truncated),
        }
        for p in judgement.pushes
    )
    ops.links.extend(
        {"push_uid": link.push_uid, "delivery_uid": link.delivery_uid, "pushed_at": link.pushed_at}
        for link in judgement.links
    )
    for key, v in judgement.visitors.items():
        ops.visitors[key] = {
            "run": v.run,
            "visitor": v.visitor,
            "client_addr": v.client_addr,
            "user_agent": clean_text(v.user_agent),
            "first_seen": v.first_seen,
            "last_seen": v.last_seen,
            "page_loads": v.page_loads,
            "last_page_at": v.last_page_at,
            "consent": v.consent,
            "consent_since": v.consent_since,
            "pending_decision": v.pending_decision,
        }
    return ops


def _why(exc: BaseException, what: str) -> str:
    return clip(f"{what} could not be read ({exc.__class__.__name__}: {exc})", 500)


def _unreadable(config: Config, run: str, visitor: str, at: float, uid: str, exc: BaseException) -> Finding:
    """The finding for a message clickwatch failed to read or judge: it names what and why, and accuses nobody."""
    kind = FindingKind.UNREADABLE_MESSAGE
    return Finding(
        kind,
        config.severity.get(kind, DEFAULT_SEVERITY[kind]),
        _why(exc, "this delivery was stored but not judged: the message") + "; its verdict is from the status code",
        visitor,
        run,
        at,
        uid,
    )


def _unread_body(raw: bytes, exc: BaseException) -> Body:
    prefix = base64.b64encode(raw[:BINARY_PREFIX_BYTES]).decode("ascii")
    note = _why(exc, "the body")
    return Body(BodyKind.BINARY, prefix, len(raw), truncated=len(raw) > BINARY_PREFIX_BYTES, note=note, refused=True)


def _minimal_request_row(seen: RequestSeen, body: Body) -> dict[str, Any]:
    # Only what cannot fail: the request's own fields as text, no headers. Same columns as request_row.
    def text(value: object) -> str:
        return clean_text(clip(str(value), 2000)) or ""

    return {
        "uid": text(seen.uid),
        "run": text(seen.run),
        "kind": seen.kind.value,
        "target_kind": seen.target.value if seen.target else None,
        "verdict": Verdict.PENDING.value,
        "method": text(seen.method),
        # Without its query: the redaction list could not be applied, and a query can hold a token.
        "url": text(seen.url).partition("?")[0],
        "host": text(seen.host),
        "path": text(seen.path).partition("?")[0],
        "client_addr": text(seen.client_addr),
        "user_agent": text(seen.user_agent),
        "visitor": visitor_key(text(seen.client_addr), text(seen.user_agent)),
        "schema": None,
        "schema_name": None,
        "consent_reference": None,
        "origin": None,
        "sent_at": float(seen.sent_at),
        "request_headers": "[]",
        # Nor its body: it was never put through the redaction list either.
        "request_body": None,
        "request_body_kind": body.kind.value,
        "request_body_size": body.size,
        "request_body_truncated": int(body.size > 0),
        "request_body_note": "not stored: the request could not be recorded in full",
    }


class Pipeline:
    """Decodes, records and judges observations in the order they happened."""

    def __init__(self, config: Config | None = None) -> None:
        self.judge = Judge(config)
        self._events = Budget(PAGE_MAX_EVENTS, VISITOR_MAX_EVENTS)
        self._redaction = (self.config.redact, Redaction.from_setting(self.config.redact))

    @property
    def redaction(self) -> Redaction:
        """The redaction list in force (rebuilt when the `redact` setting changes)."""
        if self._redaction[0] != self.config.redact:
            self._redaction = (self.config.redact, Redaction.from_setting(self.config.redact))
        return self._redaction[1]

    @property
    def config(self) -> Config:
        """The settings in force."""
        return self.judge.config

    @config.setter
    def config(self, config: Config) -> None:
        self.judge.config = config

    def process(self, observation: Observation) -> StoreOps:
        """The store operations one observation leads to."""
        ops = StoreOps()
        if isinstance(observation, RequestSeen):
            return self._request(observation, ops)
        if isinstance(observation, Answer):
            verdict = verdict_for(observation.kind, observation.status_code, self.config.expected_status)
            ops.answers.append(self._answer_row(observation, verdict))
            if verdict in (Verdict.REJECTED, Verdict.FAILED):
                code = observation.status_code
                ops.notices.append(
                    Notice(
                        self.judge.run_of(observation.uid) or "default",
                        f"{observation.kind.value} delivery {verdict.value}",
                        f"HTTP {code}" if code is not None else f"no answer: {observation.error}",
                        observation.ended_at,
                    )
                )
            flight = self.judge.flight_of(observation.uid)
            try:
                judgement = self.judge.answer(observation, verdict)
            except Exception as exc:  # a bug met on one hostile answer: the delivery keeps its verdict
                judgement = Judgement()
                if flight is not None:
                    run, visitor = flight
                    finding = _unreadable(self.config, run, visitor, observation.ended_at, observation.uid, exc)
                    judgement.findings.append(finding)
            return _judged(ops, judgement)
        if isinstance(observation, BrowserReport):
            try:
                seen = parse_batch(observation)
            except ObserveFormatError as exc:
                ops.rejected.append((exc.reason, 1, str(exc)))
                return ops
            browser = (seen.run, visitor_key(seen.client_addr, seen.user_agent))
            over = self._events.spend(observation.token, browser, len(seen.events), seen.received_at)
            if over is not None:
                ops.rejected.append((over, 1, f"more events than the {over.replace('_', ' ')} allows"))
                return ops
            ops = _judged(ops, self.judge.browser(seen))
            for push in ops.pushes:  # what a page pushed is captured data too: secrets by key never stored
                if push["data"] is not None:
                    push["data"] = self.redaction.json_text(push["data"])
            return ops
        if isinstance(observation, ObserverBlocked):
            return _judged(ops, self.judge.observer_blocked(observation))
        if isinstance(observation, ServiceWorkerSeen):
            return _judged(ops, self.judge.service_worker(observation))
        if isinstance(observation, ObserverRejected):
            ops.rejected.extend((reason, n, "answered by the proxy") for reason, n in observation.counts)
            return ops
        return _judged(ops, self.judge.storefront(observation))

    # --- nothing vanishes: whatever one message holds, its delivery is stored -----------------------------------

    def _request(self, seen: RequestSeen, ops: StoreOps) -> StoreOps:
        try:
            body = request_body(seen, self.config.body_limit, self.config.body_decode_limit)
        except Exception as exc:
            body = _unread_body(seen.raw_body, exc)
        try:
            row = request_row(seen, body, self.redaction)
        except Exception as exc:
            body = _unread_body(seen.raw_body, exc)
            row = _minimal_request_row(seen, body)
        ops.inserts.append(row)
        try:
            judgement = self.judge.request(seen, body)
        except Exception as exc:
            # Not judged: consent cannot be told, and the finding says why (the delivery is not left pending).
            judgement = Judgement()
            judgement.consent.append((seen.uid, CONSENT_UNKNOWN))
            visitor = visitor_key(seen.client_addr, seen.user_agent)
            judgement.findings.append(_unreadable(self.config, seen.run, visitor, seen.sent_at, seen.uid, exc))
        return _judged(ops, judgement)

    def _answer_row(self, answer: Answer, verdict: Verdict) -> dict[str, Any]:
        try:
            return answer_row(answer, verdict, self.config.body_limit, self.redaction, self.config.body_decode_limit)
        except Exception as exc:
            # The verdict comes from the status code alone; what could not be read is named in the note.
            bare = replace(answer, headers=(), raw_body=b"", note=_why(exc, "the answer's headers and body"))
            return answer_row(bare, verdict, self.config.body_limit, self.redaction, self.config.body_decode_limit)

    def evaluate(self, now: float, final: bool = False) -> StoreOps:
        """Decisions whose window has passed (all of them when `final`)."""
        return _judged(StoreOps(), self.judge.evaluate(now, final))
