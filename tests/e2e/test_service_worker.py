"""A storefront whose pages a service worker serves from its cache (Angular's ngsw-worker.js, as Spartacus' PWA
setup adds it), in Chromium through a real `clickwatch up`: what clickwatch sees, judges and says."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser

from clickwatch.standin import shopper
from clickwatch.standin.catalog import CATEGORIES
from tests.e2e.conftest import CONFIG, ECHO_SECONDS, Clickwatch, Visit, _clickwatch_up, _visit, settled
from tests.rig import wait_until

pytestmark = pytest.mark.integration

NORMAL = "Driver state: NORMAL ((nominal))"
HAS_OBSERVER = "() => !!document.querySelector('script[src=\"/__clickwatch/observer.js\"]')"
# The worker's cached copy of index.html, read from its cache by the page itself.
CACHED_INDEX = """() => caches.keys().then(names => {
  const assets = names.find(n => n.endsWith(':assets:app:cache'));
  return assets ? caches.open(assets).then(c => c.match('/index.html')).then(r => r ? r.text() : '') : '';
})"""


@pytest.fixture(scope="module")
def clickwatch_worker(clickwatch: Clickwatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clickwatch]:
    """`clickwatch up` with the observer, and a short wait for a Spartacus consent echo: pages the worker serves
    are judged from the network, and a call made after a withdrawal waits for the next echo (same CA)."""
    root = tmp_path_factory.mktemp("clickwatch-up-worker")
    config = CONFIG.replace("[consent]\n", f"[consent]\necho_seconds = {ECHO_SECONDS}\n")
    with _clickwatch_up(root, clickwatch.ca_cert.parent, config) as running:
        yield running


@pytest.fixture
def worker_visit(browser: Browser, clickwatch_worker: Clickwatch, request: pytest.FixtureRequest) -> Iterator[Visit]:
    """A fresh browser context browsing through this module's `clickwatch up` as a run of its own."""
    with _visit(browser, clickwatch_worker, request) as running:
        yield running


def _clickstream(clickwatch: Clickwatch, run: str) -> list[dict[str, Any]]:
    return [d for d in clickwatch.deliveries(run) if d["kind"] == "clickstream"]


def _visitor(clickwatch: Clickwatch, run: str) -> dict[str, Any]:
    visitors = clickwatch.api("/api/visitors", run=run)
    rows = visitors["items"]
    assert len(rows) == 1, rows
    return dict(rows[0])


# --- where the observer cannot be kept: server-rendered navigations are not the worker's index.html ---------------


def test_without_the_observer_on_worker_pages_a_healthy_visit_is_healthy_and_says_the_worker_serves_pages(
    clickwatch_worker: Clickwatch, worker_visit: Visit, make_standin: Any
) -> None:
    standin = make_standin(spartacus=True, service_worker=True, server_rendered=True)
    walker = worker_visit.shopper(standin)
    # Everything after the reload happens on the page the worker served from its cache.
    walker.walk(("home", "accept", "worker", "reload", "product", "add-to-cart", "search"))
    state = walker.worker_state()
    observed = walker.page.evaluate(HAS_OBSERVER)
    worker_visit.close()
    settled(clickwatch_worker, worker_visit.run)

    assert NORMAL in state, state
    assert not observed  # the proxy never saw the worker's index.html on a page load: it left it as it came
    events = _clickstream(clickwatch_worker, worker_visit.run)
    schemas = [d["schema_name"] for d in events]
    assert schemas == ["ProductView", "AddedToCart", "KeywordSearch"], schemas
    assert all((d["verdict"], d["consent"]) == ("delivered", "given") for d in events), events
    # The reload was answered from the worker's cache: only the first page reached the proxy.
    assert _visitor(clickwatch_worker, worker_visit.run)["page_loads"] == 1
    assert clickwatch_worker.finding_kinds(worker_visit.run) == {"service_worker": 1}
    result = clickwatch_worker.check(worker_visit.run, "--fail-on", "rejected,failed,error,warning")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "service_worker" in result.stdout and "HEALTHY" in result.stdout
    assert worker_visit.problems == []


def test_without_the_observer_on_worker_pages_tracking_after_a_withdrawal_there_is_not_judged_given(
    clickwatch_worker: Clickwatch, worker_visit: Visit, make_standin: Any
) -> None:
    standin = make_standin(
        "track-before-consent", spartacus=True, service_worker=True, carousel=True, server_rendered=True
    )
    # The first page is a category (no carousel there): consent is accepted on it, under the observer.
    first = shopper.Shopper(worker_visit.page, f"{standin.storefront_url()}c/{CATEGORIES[0].code}", settle_seconds=3.0)
    first.walk(("home", "accept", "worker"))
    # The home page comes from the worker's cache; the shopper withdraws there, then clicks the carousel, whose
    # events Spartacus pushes whatever consent says (and this tag sends); the search sends the next consent echo.
    walker = worker_visit.shopper(standin).walk(("home", "withdraw", "carousel-click", "search"))
    state = walker.worker_state()
    worker_visit.close()
    settled(clickwatch_worker, worker_visit.run, timeout=ECHO_SECONDS + 15)

    assert NORMAL in state, state
    withdrawn_at = next(at for step, at in walker.steps if step == "withdraw")
    events = _clickstream(clickwatch_worker, worker_visit.run)
    before = [(d["schema_name"], d["consent"]) for d in events if d["sent_at"] < withdrawn_at]
    after = [d for d in events if d["sent_at"] > withdrawn_at]
    assert before == [("carouselViewed", "given")], before  # (the category was viewed before consent)
    assert [d["schema_name"] for d in after] == ["carouselClicked"], after
    # Without the worker's sign the first page's data layer ("granted") decided this call: given, no finding.
    # The network had echoed the withdrawal just before it; Spartacus gives and withdraws consent without a
    # request, so a withdrawn echo on both sides of the call leaves it unknown, not given.
    assert [(d["consent"], [f["kind"] for f in d["findings"]]) for d in after] == [("unknown", ["consent_unknown"])]
    assert clickwatch_worker.finding_kinds(worker_visit.run) == {"service_worker": 1, "consent_unknown": 1}
    result = clickwatch_worker.check(worker_visit.run, "--fail-on", "rejected,failed,error,warning")
    assert result.returncode == 1, result.stdout


def test_without_the_observer_on_worker_pages_an_event_dropped_there_is_not_passed_as_healthy_silently(
    clickwatch_worker: Clickwatch, worker_visit: Visit, make_standin: Any
) -> None:
    standin = make_standin("drop-event:AddedToCart", spartacus=True, service_worker=True, server_rendered=True)
    walker = worker_visit.shopper(standin)
    walker.walk(("home", "accept", "worker", "reload", "product", "add-to-cart"))
    worker_visit.close()
    settled(clickwatch_worker, worker_visit.run)

    schemas = [d["schema_name"] for d in _clickstream(clickwatch_worker, worker_visit.run)]
    assert "AddedToCart" not in schemas and "ProductView" in schemas
    # The push happened on a page the observer was not on: nothing can say it was lost, and the user is told so.
    found = clickwatch_worker.api("/api/findings", run=worker_visit.run)
    rows = found["items"]
    worker = [f for f in rows if f["kind"] == "service_worker"]
    assert len(worker) == 1 and "not seen" in worker[0]["message"], rows
    assert {f["kind"] for f in rows} == {"service_worker"}
    result = clickwatch_worker.check(worker_visit.run)
    assert "service_worker" in result.stdout


def test_a_degraded_worker_passes_navigations_to_the_network_and_they_count_as_observed_page_loads(
    clickwatch_worker: Clickwatch, worker_visit: Visit, make_standin: Any
) -> None:
    standin = make_standin(spartacus=True, service_worker=True, worker_hash_mismatch=True)
    walker = worker_visit.shopper(standin)
    walker.walk(("home", "accept", "worker", "reload", "product", "add-to-cart"))
    state = walker.worker_state()
    worker_visit.close()
    settled(clickwatch_worker, worker_visit.run)

    assert "Driver state: EXISTING_CLIENTS_ONLY (Degraded due to: Hash mismatch" in state, state
    # The reload went to the network through the worker (Sec-Fetch-Dest: empty): a page load, with the observer.
    assert _visitor(clickwatch_worker, worker_visit.run)["page_loads"] == 2
    events = _clickstream(clickwatch_worker, worker_visit.run)
    assert [d["schema_name"] for d in events] == ["ProductView", "AddedToCart"]
    assert all((d["verdict"], d["consent"]) == ("delivered", "given") for d in events), events
    assert clickwatch_worker.finding_kinds(worker_visit.run) == {"service_worker": 1}


# --- the observer kept on pages the worker serves ------------------------------------------------------------------


def _latest_hash(state: str) -> str:
    return next(line.split(": ", 1)[1] for line in state.splitlines() if line.startswith("Latest manifest hash"))


def test_the_worker_serves_pages_with_the_observer_and_its_integrity_and_update_checks_pass(
    clickwatch_worker: Clickwatch, worker_visit: Visit, make_standin: Any
) -> None:
    standin = make_standin(spartacus=True, service_worker=True)
    walker = worker_visit.shopper(standin)
    walker.walk(("home", "accept", "worker"))
    installed = walker.worker_state()
    walker.walk(("reload", "product", "add-to-cart", "search"))
    observed = walker.page.evaluate(HAS_OBSERVER)
    cached = walker.page.evaluate(CACHED_INDEX)

    # The worker checked index.html, with the observer, against the manifest the proxy gave it, and kept it.
    assert NORMAL in installed, installed
    assert observed
    assert '<script src="/__clickwatch/observer.js" data-clickwatch-worker></script>' in cached

    # After the reload it checked for an update: the same manifest again (the same hash), so nothing new.
    def checked() -> str | None:
        state = walker.worker_state()
        return state if "check for update: no update" in state else None

    after = wait_until(checked, 15.0, "the worker's update check after the reload")
    assert NORMAL in after and _latest_hash(after) == _latest_hash(installed), after
    worker_visit.close()
    settled(clickwatch_worker, worker_visit.run)

    events = _clickstream(clickwatch_worker, worker_visit.run)
    assert [d["schema_name"] for d in events] == ["ProductView", "AddedToCart", "KeywordSearch"]
    assert all((d["verdict"], d["consent"]) == ("delivered", "given") for d in events), events
    # The observer on the worker's pages saw each push, and each was sent.
    funnel = {row["schema"]: row for row in clickwatch_worker.api("/api/funnel", run=worker_visit.run)["schemas"]}
    for schema in ("ProductView", "AddedToCart", "KeywordSearch"):
        assert (funnel[schema]["pushed_with_consent"], funnel[schema]["sent"]) == (1, 1), funnel
    assert clickwatch_worker.finding_kinds(worker_visit.run) == {"service_worker": 1}
    result = clickwatch_worker.check(worker_visit.run, "--fail-on", "rejected,failed,error,warning")
    assert result.returncode == 0, result.stdout + result.stderr
    assert worker_visit.problems == []


def test_tracking_after_a_withdrawal_on_a_worker_page_with_the_observer_is_a_consent_violation(
    clickwatch_worker: Clickwatch, worker_visit: Visit, make_standin: Any
) -> None:
    standin = make_standin("track-before-consent", spartacus=True, service_worker=True, carousel=True)
    first = shopper.Shopper(worker_visit.page, f"{standin.storefront_url()}c/{CATEGORIES[0].code}", settle_seconds=3.0)
    first.walk(("home", "accept", "worker"))
    walker = worker_visit.shopper(standin).walk(("home", "withdraw", "carousel-click", "search"))
    assert walker.page.evaluate(HAS_OBSERVER)
    worker_visit.close()
    settled(clickwatch_worker, worker_visit.run)

    withdrawn_at = next(at for step, at in walker.steps if step == "withdraw")
    after = [d for d in _clickstream(clickwatch_worker, worker_visit.run) if d["sent_at"] > withdrawn_at]
    # The observer on the worker's page saw the withdrawal as it happened: the data layer decides.
    assert [(d["schema_name"], d["consent"]) for d in after] == [("carouselClicked", "withdrawn")], after
    assert [f["kind"] for f in after[0]["findings"]] == ["consent_violation"]
    assert clickwatch_worker.check(worker_visit.run).returncode == 1


def test_an_event_dropped_on_a_worker_page_with_the_observer_is_event_not_sent(
    clickwatch_worker: Clickwatch, worker_visit: Visit, make_standin: Any
) -> None:
    standin = make_standin("drop-event:AddedToCart", spartacus=True, service_worker=True)
    walker = worker_visit.shopper(standin)
    walker.walk(("home", "accept", "worker", "reload", "product", "add-to-cart"))
    worker_visit.close()
    settled(clickwatch_worker, worker_visit.run)

    assert clickwatch_worker.finding_kinds(worker_visit.run) == {"service_worker": 1, "event_not_sent": 1}
    result = clickwatch_worker.check(worker_visit.run)
    assert result.returncode == 1 and "event_not_sent" in result.stdout
