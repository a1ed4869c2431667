"""Each failure mode the stand-in can play, as a shopper's real browser meets it: the right verdict or finding,
and nothing else."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.e2e.conftest import GRACE_SECONDS, Clickwatch, Visit, metric_delta, settled

pytestmark = pytest.mark.integration

TRACKED = ["CategoryView", "ProductView", "AddedToCart", "KeywordSearch"]  # what the visit sends after consent
ALL_FINDINGS = frozenset(
    {
        "consent_violation", "consent_unknown", "missing_consent_reference", "unknown_schema", "invalid_payload",
        "duplicate_event", "cors_rejected", "consent_reference_failed", "repeated_consent_reference",
        "no_events_after_consent", "slow_delivery", "stale_consent_reference", "event_not_sent",
        "event_without_push", "observer_blocked",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Expected:
    """What clickwatch must make of a visit under one fault."""

    verdicts: list[str]  # of the clickstream events, in order
    findings: dict[str, int] = field(default_factory=dict)  # every finding of the run, by kind
    check_exit: int = 1  # `clickwatch check` with its default --fail-on
    settle_seconds: float = 3.0  # how long the shopper waits for the tag after each step
    linger: float = 0.0  # seconds on the product page before answering the consent banner


FAULTS = {
    "status:503": Expected(["rejected"] * 4),
    "reset": Expected(["failed"] * 4),
    # The browser gives up when its profile is closed: the call ends without an answer.
    "hang": Expected(["failed"] * 4, settle_seconds=1.0),
    "slow:1.5": Expected(["delivered"] * 4, {"slow_delivery": 4}, check_exit=0),
    # The browser never sends the POSTs; the only trace on the wire is the preflights, and then the silence; the
    # data-layer observer saw the four events the storefront pushed with consent, never sent.
    "cors-no-consent-reference": Expected([], {"cors_rejected": 4, "no_events_after_consent": 1, "event_not_sent": 4}),
    # The consent-reference call on the home page and the product view before the banner was answered.
    "track-before-consent": Expected(["delivered"] * 5, {"consent_violation": 2}, linger=GRACE_SECONDS + 0.5),
    # Each second copy is a POST no push asked for.
    "duplicate-events": Expected(["delivered"] * 8, {"duplicate_event": 4, "event_without_push": 4}, check_exit=0),
    # A warning by default: no public source confirms today's tag sends the header on clickstream POSTs.
    "no-consent-reference": Expected(["delivered"] * 4, {"missing_consent_reference": 4}, check_exit=0),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_each_fault_ends_as_its_verdict_or_finding_and_only_that(
    clickwatch: Clickwatch, visit: Visit, make_standin: Any, fault: str
) -> None:
    expected = FAULTS[fault]
    standin = make_standin(fault)
    before = clickwatch.metrics()
    walker = visit.shopper(standin, settle_seconds=expected.settle_seconds)
    walker.home()
    walker.product(1)  # viewed before the banner is answered: a well-behaved tag drops it
    walker.page.wait_for_timeout(expected.linger * 1000)
    walker.walk(("accept", "category", "product", "add-to-cart", "search"))
    visit.close()
    summary = settled(clickwatch, visit.run)

    deliveries = clickwatch.deliveries(visit.run)
    events = [d for d in deliveries if d["kind"] == "clickstream"]
    assert [d["verdict"] for d in events] == expected.verdicts
    if fault.startswith(("status", "reset", "hang")):
        assert [d["schema_name"] for d in events] == TRACKED
        assert all(d["error"] for d in events if d["verdict"] == "failed")
    # Everything that is not the fault's doing stays clean: one reference, answered; preflights allowed.
    assert [(d["verdict"], d["status_code"]) for d in deliveries if d["kind"] == "consent_reference"] == [
        ("delivered", 201)
    ]
    assert all(d["verdict"] == "delivered" for d in deliveries if d["kind"] in ("preflight", "tag"))
    assert clickwatch.finding_kinds(visit.run) == expected.findings
    assert {k: n for k, n in summary["findings"].items() if n} == expected.findings

    after = clickwatch.metrics()
    for kind in ALL_FINDINGS:
        assert metric_delta(before, after, "clickwatch_findings_total", finding=kind) == expected.findings.get(kind, 0)
    for verdict in ("delivered", "rejected", "failed"):
        count = expected.verdicts.count(verdict)
        assert metric_delta(before, after, "clickwatch_events_total", verdict=verdict) == count, verdict

    result = clickwatch.check(visit.run)
    assert result.returncode == expected.check_exit, result.stdout + result.stderr
    if expected.check_exit == 0:
        # A warning is not a failure by default; a pipeline that wants it to be says so.
        strict = clickwatch.check(visit.run, "--fail-on", ",".join(expected.findings))
        assert strict.returncode == 1, strict.stdout
    assert ("HEALTHY" if expected.check_exit == 0 else "UNHEALTHY") in result.stdout


def test_the_silent_failure_is_reported_for_a_single_page_storefront_too(
    clickwatch: Clickwatch, visit: Visit, make_standin: Any
) -> None:
    standin = make_standin("cors-no-consent-reference", spartacus=True)
    visit.shopper(standin).walk(("home", "accept", "category", "product", "add-to-cart", "search"))
    visit.close()
    settled(clickwatch, visit.run)
    # The single-page navigations the observer reports arm the silence check as page loads do.
    expected = {"cors_rejected": 4, "no_events_after_consent": 1, "event_not_sent": 4}
    assert clickwatch.finding_kinds(visit.run) == expected
