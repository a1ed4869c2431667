"""The consent answer: did a browser track before consent, and which signal stood behind a call."""

from __future__ import annotations

import pytest

from clickwatch.core.answer import (
    Answer,
    ConsentAnswer,
    TrackingCall,
    consent_answer,
    sent_without_consent,
    signal_in_force,
)
from clickwatch.core.consent import ConsentState
from clickwatch.core.judge import ConsentSignal

CLICK = "clickstream"


@pytest.mark.parametrize(
    ("calls", "expected"),
    [
        ([], ConsentAnswer(Answer.NO_CALLS)),
        ([TrackingCall("strategy", None), TrackingCall("tag", "absent")], ConsentAnswer(Answer.NO_CALLS)),
        ([TrackingCall(CLICK, "given"), TrackingCall("consent_reference", "given")], ConsentAnswer(Answer.NO)),
        ([TrackingCall(CLICK, "given"), TrackingCall(CLICK, "unknown")], ConsentAnswer(Answer.CANNOT_TELL)),
        ([TrackingCall(CLICK, None)], ConsentAnswer(Answer.CANNOT_TELL)),
        ([TrackingCall(CLICK, "pending"), TrackingCall(CLICK, None)], ConsentAnswer(Answer.UNDECIDED, 1)),
        (
            [TrackingCall(CLICK, "withdrawn"), TrackingCall(CLICK, "paused"), TrackingCall(CLICK, "pending")],
            ConsentAnswer(Answer.TRACKED, 2),
        ),
        # The judge may find a violation on a call whose stored consent reads otherwise (decided later).
        ([TrackingCall(CLICK, "given", ("consent_violation",))], ConsentAnswer(Answer.TRACKED, 1)),
        ([TrackingCall(CLICK, "given", ("unknown_schema",))], ConsentAnswer(Answer.NO)),
    ],
)
def test_consent_answer(calls: list[TrackingCall], expected: ConsentAnswer) -> None:
    assert consent_answer(calls) == expected


@pytest.mark.parametrize(
    ("kind", "consent", "expected"),
    [
        (CLICK, "absent", True),
        ("consent_reference", "withdrawn", True),
        (CLICK, "paused", True),
        (CLICK, "given", False),
        (CLICK, "pending", False),
        (CLICK, "unknown", False),
        (CLICK, None, False),
        ("strategy", "absent", False),
    ],
)
def test_sent_without_consent(kind: str, consent: str | None, expected: bool) -> None:
    assert sent_without_consent(kind, consent) is expected


def _signal(at: float, state: ConsentState) -> ConsentSignal:
    return ConsentSignal("default", "v1", at, state, "cookie anonymous-consents", "")


def test_signal_in_force_is_the_last_at_or_before_the_call() -> None:
    states = (ConsentState.ABSENT, ConsentState.GIVEN, ConsentState.WITHDRAWN)
    signals = [_signal(at, state) for at, state in zip((10.0, 20.0, 30.0), states, strict=True)]
    assert signal_in_force(signals, 5.0) is None
    assert signal_in_force(signals, 10.0) is signals[0]
    assert signal_in_force(signals, 29.9) is signals[1]
    assert signal_in_force(signals, 99.0) is signals[2]
    assert signal_in_force([], 1.0) is None
