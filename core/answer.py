"""The consent answer: did a browser track before consent, and which consent signal stood behind a call.

The judge (core/judge.py) decides the consent of each call and stores it on the delivery; this module reads
those decisions back into the one answer the dashboard shows, so that the rule lives beside the judge and the
view only formats it.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from clickwatch.core.consent import ConsentState
from clickwatch.core.findings import FindingKind
from clickwatch.core.judge import CONSENT_PENDING, CONSENT_UNKNOWN, ConsentSignal
from clickwatch.core.model import Kind

# The calls that need consent: a strategy or Commerce API call does not (the judge asks the same).
TRACKING_KINDS = frozenset({Kind.CLICKSTREAM, Kind.CONSENT_REFERENCE})
NOT_GIVEN = frozenset(state for state in ConsentState if state is not ConsentState.GIVEN)


class Answer(enum.StrEnum):
    """'Did this browser track before consent?'"""

    TRACKED = "bad"  # yes: at least one tracking call went out without consent
    UNDECIDED = "wait"  # some calls wait for their grace window
    CANNOT_TELL = "unknown"  # no consent signal was seen for some calls
    NO = "good"  # every tracking call had consent
    NO_CALLS = "none"  # nothing that needs consent was sent


@dataclass(frozen=True, slots=True)
class TrackingCall:
    """What the answer needs of one delivery: its kind, the consent it was judged by, its finding kinds."""

    kind: str
    consent: str | None
    findings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ConsentAnswer:
    """The answer, and how many calls it rests on (those without consent, or those still waiting)."""

    answer: Answer
    calls: int = 0


def sent_without_consent(kind: str, consent: str | None) -> bool:
    """True for a tracking call the judge found sent while consent was absent, withdrawn or paused."""
    return kind in TRACKING_KINDS and consent in NOT_GIVEN


def consent_answer(calls: Iterable[TrackingCall]) -> ConsentAnswer:
    """Answer 'did this browser track before consent?' from the consent each of its calls was judged by."""
    tracking = [call for call in calls if call.kind in TRACKING_KINDS]
    violations = sum(
        1 for call in tracking if call.consent in NOT_GIVEN or FindingKind.CONSENT_VIOLATION in call.findings
    )
    if violations:
        return ConsentAnswer(Answer.TRACKED, violations)
    waiting = sum(1 for call in tracking if call.consent == CONSENT_PENDING)
    if waiting:
        return ConsentAnswer(Answer.UNDECIDED, waiting)
    if any(call.consent in (None, CONSENT_UNKNOWN) for call in tracking):
        return ConsentAnswer(Answer.CANNOT_TELL)
    return ConsentAnswer(Answer.NO if tracking else Answer.NO_CALLS)


def signal_in_force(signals: Sequence[ConsentSignal], at: float) -> ConsentSignal | None:
    """The last consent signal at or before `at` (signals in time order); None when none came before."""
    index = bisect.bisect_right(signals, at, key=lambda signal: signal.at)
    return signals[index - 1] if index else None
