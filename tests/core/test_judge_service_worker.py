"""A service worker serves the storefront's pages from its cache: those pages carry no observer, and the judge must
neither keep the last data-layer reading in charge nor stay silent about it."""

from clickwatch.core.findings import FindingKind, Severity
from clickwatch.core.model import ServiceWorkerSeen
from tests.core.test_judge import IP, ORIGIN, RUN, UA, Trace, clickstream, consent_reference
from tests.core.test_judge_browser import browser, granted, occ, push

T = 7000.0
WORKER = f"{ORIGIN}/ngsw-worker.js"  # the storefront's own origin: the calls and the pages are its


def worker(trace: Trace, at: float, evidence: str = "its script was fetched (Service-Worker: script)") -> None:
    trace._keep(trace.judge.service_worker(ServiceWorkerSeen(RUN, IP, UA, at, WORKER, evidence)))


def spartacus_visit(trace: Trace, with_worker: bool) -> None:
    """Consent accepted on the first page (observed); the worker then serves a reload; the shopper withdraws there."""
    occ(trace, T - 20, None)  # the first page's Commerce API call: no decision yet
    browser(trace, T - 19, granted(False), first=True)
    if with_worker:
        worker(trace, T - 18)
    browser(trace, T - 15, granted(True))
    occ(trace, T - 10, "GIVEN")  # the reload the worker served: its first Commerce API call
    occ(trace, T - 0.2, "WITHDRAWN")  # withdrawn on the worker's page, echoed by the next call


def test_a_withdrawal_on_a_page_the_worker_served_is_not_overruled_by_the_first_pages_data_layer():
    trace = Trace()
    spartacus_visit(trace, with_worker=True)
    trace.send(consent_reference("r2", T))  # a broken tag obtains a reference 0.2 s after the echo
    occ(trace, T + 1, "WITHDRAWN")
    trace.evaluate(T + 60)
    assert trace.consent("r2") != "given"
    # Spartacus withdraws and gives without a request: a withdrawn echo on both sides cannot prove the call unlawful.
    assert FindingKind.CONSENT_UNKNOWN in trace.kinds()


def test_without_the_worker_sign_the_first_pages_data_layer_would_have_cleared_the_call():
    # What the issue saw: the data layer's "granted" from page 1 decided a call made after the withdrawal.
    trace = Trace()
    spartacus_visit(trace, with_worker=False)
    trace.send(consent_reference("r2", T))
    occ(trace, T + 1, "WITHDRAWN")
    trace.evaluate(T + 60)
    assert trace.consent("r2") == "given"


def test_the_user_is_told_once_per_visitor_and_the_finding_names_the_worker():
    trace = Trace()
    spartacus_visit(trace, with_worker=True)
    worker(trace, T - 5, "its manifest was fetched (ngsw.json)")
    worker(trace, T - 1, "it fetched a file for its cache (ngsw-cache-bust)")
    found = trace.findings(FindingKind.SERVICE_WORKER)
    assert len(found) == 1
    assert found[0].severity is Severity.INFO
    assert found[0].delivery_uid is None
    assert "service worker" in found[0].message and WORKER in found[0].message


def test_a_healthy_visit_with_a_worker_has_no_finding_but_the_workers():
    trace = Trace()
    occ(trace, T - 20, None)
    browser(trace, T - 19, granted(False), first=True)
    worker(trace, T - 18)
    browser(trace, T - 15, granted(True))
    trace.deliver(consent_reference("r1", T - 14.9))
    trace.deliver(clickstream("c1", T - 14.5))
    browser(trace, T - 14.6, push("ProductDetailsPageViewed", {"productSku": "779864"}))
    occ(trace, T - 10, "GIVEN")  # a page the worker served
    trace.deliver(clickstream("c2", T - 9, body='{"productSku":"1","productName":"Lens"}'))  # its push is unseen
    trace.evaluate(T + 60, final=True)
    assert (trace.consent("r1"), trace.consent("c1"), trace.consent("c2")) == ("given", "given", "given")
    assert trace.kinds() == [FindingKind.SERVICE_WORKER]


def test_withdrawing_and_granting_again_on_a_worker_page_is_no_repeated_reference():
    # Neither change sends a request (Spartacus) and the worker's page has no observer: the second reference is lawful.
    trace = Trace()
    occ(trace, T - 20, None)
    browser(trace, T - 19, granted(True), first=True)
    trace.deliver(consent_reference("r1", T - 18.9))
    worker(trace, T - 18)
    occ(trace, T - 10, "GIVEN")
    trace.deliver(consent_reference("r2", T - 5))
    trace.evaluate(T + 60, final=True)
    assert FindingKind.REPEATED_CONSENT_REFERENCE not in trace.kinds()
    assert trace.kinds() == [FindingKind.SERVICE_WORKER]
