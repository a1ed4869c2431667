"""A HAR that Playwright recorded of a visit through clickwatch imports to the live run's verdicts (issue 21).

The shopper is the system Chromium driven by Playwright with `record_har_path`, browsing the stand-in through a
real `clickwatch up`; the HAR Playwright writes when the visit closes is imported with `clickwatch import` (the
same configuration) into a store of its own. Deliveries (kind, schema, verdict, status, consent label) and
findings (kind, severity) must be the same in both, including where the data-layer observer's reports decide
(`event_not_sent`: a push the tag never sent) and where a request failed (Playwright writes status -1).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from clickwatch.core.observer import OBSERVE_PATH
from tests.e2e.conftest import CONFIG, GRACE_SECONDS, NETWORK_CONFIG, Clickwatch, Visit, settled
from tests.rig import CLICKWATCH

pytestmark = pytest.mark.integration

Delivery = tuple[str, str | None, str, int | None, str | None]
JOURNEY = ("home", "accept", "category", "product", "add-to-cart", "search")
# Playwright does not record what a page sends while it unloads (measured: neither a beacon nor a keepalive
# fetch sent on pagehide is in its HAR), and the observer sends what it still holds then. A shopper who stays on
# each view longer than the observer's 250 ms batching lets every report go while the page lives.
DWELL_MS = 600


def _walk(visit: Visit, standin: Any, steps: tuple[str, ...] = JOURNEY) -> None:
    walker = visit.shopper(standin)
    for step in steps:
        if step == "linger":  # on the product page, before answering the banner, past the grace window
            walker.page.wait_for_timeout((GRACE_SECONDS + 0.5) * 1000)
            continue
        walker.walk((step,))
        walker.page.wait_for_timeout(DWELL_MS)


def _deliveries(db: Path, run: str) -> list[Delivery]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT kind, schema_name, verdict, status_code, consent FROM deliveries WHERE run = ? "
            "ORDER BY sent_at, id",
            (run,),
        ).fetchall()
    finally:
        conn.close()
    return [tuple(r) for r in rows]


def _findings(db: Path, run: str) -> Counter[tuple[str, str]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return Counter(conn.execute("SELECT kind, severity FROM findings WHERE run = ?", (run,)).fetchall())
    finally:
        conn.close()


def _import(har: Path, tmp_path: Path, run: str, config_text: str = CONFIG) -> Path:
    config = tmp_path / "clickwatch.toml"
    config.write_text(config_text)
    db = tmp_path / "imported.db"
    done = subprocess.run(
        [str(CLICKWATCH), "import", str(har), "--db", str(db), "--config", str(config), "--run", run],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return db


def _entries(har: Path) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads(har.read_text())["log"]["entries"]
    return entries


def _same_as_live(clickwatch: Clickwatch, visit: Visit, tmp_path: Path, config: str = CONFIG) -> list[Delivery]:
    visit.close()
    settled(clickwatch, visit.run)
    assert visit.har is not None and visit.har.exists()
    imported = _import(visit.har, tmp_path, visit.run, config)
    live, offline = _deliveries(clickwatch.db, visit.run), _deliveries(imported, visit.run)
    # The browser's clock and the proxy's order calls made within a millisecond differently: compared as a
    # whole, and the tracking events in their order.
    assert Counter(offline) == Counter(live)
    assert [d for d in offline if d[0] == "clickstream"] == [d for d in live if d[0] == "clickstream"]
    assert _findings(imported, visit.run) == _findings(clickwatch.db, visit.run)
    return live


def test_a_healthy_visit_imports_healthy_with_the_same_deliveries(
    clickwatch: Clickwatch, recorded_visit: Visit, make_standin: Any, tmp_path: Path
) -> None:
    standin = make_standin()
    _walk(recorded_visit, standin)
    live = _same_as_live(clickwatch, recorded_visit, tmp_path)
    tracked = [d[1] for d in live if d[0] == "clickstream"]
    assert tracked == ["CategoryView", "ProductView", "AddedToCart", "KeywordSearch"]
    assert not _findings(clickwatch.db, recorded_visit.run)
    assert recorded_visit.har is not None
    assert any(OBSERVE_PATH in e["request"]["url"] for e in _entries(recorded_visit.har))


def test_a_push_the_tag_never_sent_is_found_offline_as_live(
    clickwatch: Clickwatch, recorded_visit: Visit, make_standin: Any, tmp_path: Path
) -> None:
    # Only the observer's reports can tell: the network shows nothing of an event that was never sent.
    standin = make_standin("drop-event:AddedToCart")
    _walk(recorded_visit, standin)
    _same_as_live(clickwatch, recorded_visit, tmp_path)
    assert _findings(clickwatch.db, recorded_visit.run) == {("event_not_sent", "error"): 1}


def test_failed_requests_playwright_writes_as_status_minus_1_are_failed_deliveries(
    clickwatch: Clickwatch, recorded_visit: Visit, make_standin: Any, tmp_path: Path
) -> None:
    standin = make_standin("reset")
    _walk(recorded_visit, standin)
    live = _same_as_live(clickwatch, recorded_visit, tmp_path)
    assert [d[2] for d in live if d[0] == "clickstream"] == ["failed"] * 4
    assert recorded_visit.har is not None
    failed = [e for e in _entries(recorded_visit.har) if e["response"]["status"] == -1]
    reasons = {e["response"].get("_failureText") for e in failed if "clickstreamEvents" in e["request"]["url"]}
    assert len(failed) >= 4 and None not in reasons
    # Each failed delivery keeps the reason the browser wrote.
    conn = sqlite3.connect(tmp_path / "imported.db")
    try:
        errors = {r[0] for r in conn.execute("SELECT error FROM deliveries WHERE kind = 'clickstream'")}
    finally:
        conn.close()
    assert errors == reasons


# Journeys of the issue whose verdicts rest on consent and on the observer: (fault, Spartacus-style, steps,
# the finding kinds the live run gets).
JOURNEYS = {
    "decline": (None, False, ("home", "decline", "category", "product", "add-to-cart"), set()),
    "accept-then-withdraw": (None, True, ("home", "accept", "product", "withdraw", "category", "search"), set()),
    "spartacus": (None, True, JOURNEY, set()),
    "stale-reference-after-withdrawal": (
        "stale-reference", True, ("home", "accept", "product", "withdraw", "category", "search"),
        {"stale_consent_reference"},
    ),
    "tracks-before-consent": (
        "track-before-consent", False, ("home", "product", "linger", "accept", "category", "product", "add-to-cart"),
        {"consent_violation"},
    ),
}  # fmt: skip


@pytest.mark.parametrize("journey", list(JOURNEYS))
def test_each_journey_imports_to_the_live_verdicts(
    clickwatch: Clickwatch, recorded_visit: Visit, make_standin: Any, tmp_path: Path, journey: str
) -> None:
    fault, spartacus, steps, kinds = JOURNEYS[journey]
    standin = make_standin(*([fault] if fault else []), spartacus=spartacus)
    _walk(recorded_visit, standin, steps)
    _same_as_live(clickwatch, recorded_visit, tmp_path)
    assert {kind for kind, _ in _findings(clickwatch.db, recorded_visit.run)} == kinds


@pytest.mark.parametrize("spartacus", [False, True], ids=["accelerator", "spartacus"])
def test_a_har_without_observer_reports_is_judged_from_the_network_as_live(
    clickwatch_network: Clickwatch, recorded_network_visit: Visit, make_standin: Any, tmp_path: Path, spartacus: bool
) -> None:
    # `clickwatch up --no-observer`: no page carries a token, no report is sent; both sides judge the network.
    standin = make_standin(spartacus=spartacus)
    _walk(recorded_network_visit, standin)
    _same_as_live(clickwatch_network, recorded_network_visit, tmp_path, NETWORK_CONFIG)
    assert recorded_network_visit.har is not None
    assert not [e for e in _entries(recorded_network_visit.har) if "/__clickwatch/" in e["request"]["url"]]
    assert not _findings(clickwatch_network.db, recorded_network_visit.run)
