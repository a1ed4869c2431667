"""From observations to store operations: decode, record, judge. Pure Python; the store applies the result."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from clickwatch.core.config import Config
from clickwatch.core.findings import Severity
from clickwatch.core.judge import Judge, Judgement
from clickwatch.core.model import (
    Answer,
    BrowserReport,
    ObserverBlocked,
    ObserverRejected,
    RequestSeen,
    StorefrontSeen,
    Verdict,
)
from clickwatch.core.observer import ObserveFormatError, parse_batch
from clickwatch.core.record import answer_row, clean_text, request_body, request_row
from clickwatch.core.verdict import verdict_for

Observation = RequestSeen | Answer | StorefrontSeen | BrowserReport | ObserverBlocked | ObserverRejected
# Why an observe request was answered and dropped: a small fixed set (a metric label).
REJECT_REASONS = ("too_large", "flood", "bad_format")


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
        Notice(f.run, f"{f.kind.value} ({f.severity.value})", f.message, f.at)
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
            "message": clean_text(f.message),
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
            "source": s.source,
            "detail": clean_text(s.detail),
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


class Pipeline:
    """Decodes, records and judges observations in the order they happened."""

    def __init__(self, config: Config | None = None) -> None:
        self.judge = Judge(config)

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
            body = request_body(observation, self.config.body_limit)
            ops.inserts.append(request_row(observation, body))
            return _judged(ops, self.judge.request(observation, body))
        if isinstance(observation, Answer):
            verdict = verdict_for(observation.kind, observation.status_code, self.config.expected_status)
            ops.answers.append(answer_row(observation, verdict, self.config.body_limit))
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
            return _judged(ops, self.judge.answer(observation, verdict))
        if isinstance(observation, BrowserReport):
            try:
                seen = parse_batch(
                    observation.body,
                    observation.received_at,
                    observation.run,
                    observation.client_addr,
                    observation.user_agent,
                )
            except ObserveFormatError as exc:
                ops.rejected.append(("bad_format", 1, str(exc)))
                return ops
            return _judged(ops, self.judge.browser(seen))
        if isinstance(observation, ObserverBlocked):
            return _judged(ops, self.judge.observer_blocked(observation))
        if isinstance(observation, ObserverRejected):
            ops.rejected.extend((reason, n, "answered by the proxy") for reason, n in observation.counts)
            return ops
        return _judged(ops, self.judge.storefront(observation))

    def evaluate(self, now: float, final: bool = False) -> StoreOps:
        """Decisions whose window has passed (all of them when `final`)."""
        return _judged(StoreOps(), self.judge.evaluate(now, final))
