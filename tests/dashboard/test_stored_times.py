"""No stored time can break a page, an API answer, an export or a bundle (issue 21).

A store written by an older clickwatch, or by hand, may hold any number where a time belongs: year 10000 once a
zone is applied, far before the epoch, infinite. Every such time is written straight into a real store file with
sqlite3, then every page, API answer, export and bundle is requested from the real dashboard and the real CLI.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from clickwatch.core.timeparse import clock_utc, iso_utc
from tests.dashboard.browser_fixtures import WatchedPage, chromium, serve_dashboard, tab
from tests.dashboard.conftest import T0, StoreBuilder
from tests.rig import CLICKWATCH

__all__ = ["chromium", "tab"]  # fixtures used by name below

# Year 10000 in UTC (what '9999-12-31T23:59:59-23:59' is), far in the future, before year 1, and infinite.
EXTREMES = [253_402_387_139.0, 1e300, -1e14, float("inf"), float("-inf")]
RUN = "default"
_NAMED = ("at", "first_seen", "last_seen", "consent_since")


def _fill(store_builder: Callable[..., StoreBuilder]) -> StoreBuilder:
    store = store_builder()
    store.page(at=T0, consent="GIVEN")
    store.push("ProductDetailsPageViewed", {"productSku": "1"}, at=T0 + 0.5, consent=True)
    store.event(at=T0 + 1)
    store.event(at=T0 + 2, status=400, schema="AddedToCart", body={"productSku": "1", "productQty": 1})
    store.event(at=T0 + 3, status=None, error="connection reset", schema="KeywordSearch", body={"searchTerm": "x"})
    store.page(at=T0 + 6, consent=None, ua="Early browser")
    store.event(at=T0 + 7, ua="Early browser")  # tracked without consent: a finding
    store.close()
    return store


def _time_columns(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    """Every stored time: each REAL column named `at`, `*_at`, `first_seen`, `last_seen` or `consent_since`."""
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    out = []
    for table in tables:
        for _, name, kind, *_ in conn.execute(f"PRAGMA table_info({table})"):
            if kind.upper() == "REAL" and (name in _NAMED or name.endswith("_at")):
                out.append((table, name))
    return out


def _overwrite_times(path: Path, value: float) -> list[tuple[str, str]]:
    conn = sqlite3.connect(path)
    try:
        columns = _time_columns(conn)
        with conn:
            for table, column in columns:
                conn.execute(f"UPDATE {table} SET {column} = ? WHERE {column} IS NOT NULL", (value,))
    finally:
        conn.close()
    return columns


@pytest.mark.parametrize("value", EXTREMES, ids=["year-10000", "1e300", "before-year-1", "inf", "-inf"])
def test_every_page_answer_export_and_bundle_survives_any_stored_time(
    store_builder: Callable[..., StoreBuilder], client_for: Callable[..., TestClient], tmp_path: Path, value: float
) -> None:
    store = _fill(store_builder)
    columns = _overwrite_times(store.path, value)
    assert {("deliveries", "sent_at"), ("datalayer", "at"), ("visitors", "first_seen")} <= set(columns)
    client = client_for(store.path)
    deliveries = client.get("/api/deliveries", params={"limit": 100}).json()["items"]
    stored = sqlite3.connect(store.path).execute("SELECT count(*) FROM deliveries").fetchone()[0]
    assert len(deliveries) == stored >= 4
    visitors = client.get("/api/visitors").json()["items"]
    assert visitors
    paths = [
        "/", f"/?run={RUN}", "/visitors", f"/visitors?run={RUN}", "/setup", "/diff", "/metrics", "/healthz",
        "/api/deliveries", f"/api/summary?run={RUN}", "/api/summary", "/api/findings", "/api/visitors",
        f"/api/funnel?run={RUN}", "/api/export?format=har", "/api/export?format=jsonl", "/api/export?format=csv",
        f"/api/export/bundle?run={RUN}", f"/api/diff?base={RUN}&new={RUN}", f"/diff?base={RUN}&new={RUN}",
        "/api/deliveries?since=0",
    ]  # fmt: skip
    paths += [f"/deliveries/{d['id']}" for d in deliveries] + [f"/api/deliveries/{d['id']}" for d in deliveries]
    for visitor in visitors:
        paths += [f"/visitors/{visitor['visitor']}?run={visitor['run']}", f"/api/visitors/{visitor['visitor']}"]
    for path in paths:
        answer = client.get(path)
        assert answer.status_code == 200, (path, answer.status_code, answer.text[:500])
        assert "Traceback" not in answer.text, path
    # The times that can be shown are shown; those no date can hold are shown as what they are.
    page = client.get(f"/deliveries/{deliveries[0]['id']}").text
    assert clock_utc(value) in page
    har = client.get("/api/export?format=har").json()
    assert {e["startedDateTime"] for e in har["log"]["entries"]} == {iso_utc(value)}
    # The CLI's exports, bundle, check and diff read the same store.
    db = ["--db", str(store.path)]
    for args in (["--format", "har"], ["--format", "jsonl"], ["--format", "csv"]):
        done = _cli("export", *db, *args)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    for command in (["check", *db, "--run", RUN, "--junit", str(tmp_path / "j.xml")], ["diff", RUN, RUN, *db]):
        done = _cli(*command)
        assert done.returncode in (0, 1) and "Traceback" not in done.stderr, (command, done.stderr)
    target = tmp_path / "run.zip"
    done = _cli("export", "--db", str(store.path), "--run", RUN, "--bundle", str(target))
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    with zipfile.ZipFile(target) as bundle:
        assert "Traceback" not in bundle.read("report.html").decode()
        assert json.loads(bundle.read("deliveries.har"))["log"]["entries"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLICKWATCH), *args], capture_output=True, text=True, timeout=120, check=False)


def test_times_no_date_can_hold_are_shown_as_numbers() -> None:
    assert iso_utc(T0) == "2026-09-21T14:13:20Z"
    assert clock_utc(T0 + 0.25) == "2026-09-21 14:13:20.250 UTC"
    for value in EXTREMES:
        assert iso_utc(value) == clock_utc(value) == f"out of range ({value:g} s)"


@pytest.mark.integration
@pytest.mark.parametrize("value", [1e300, 253_402_387_139.0], ids=["1e300", "year-10000"])
def test_the_pages_scripts_show_any_stored_time_without_throwing(
    store_builder: Callable[..., StoreBuilder], tab: WatchedPage, value: float
) -> None:
    # JavaScript's dates end at the year 275760: 1e300 s is no date there either; the year 10000 is one.
    store = _fill(store_builder)
    _overwrite_times(store.path, value)
    with serve_dashboard(store.path) as dashboard:
        tab.page.goto(f"{dashboard.url}/")
        # The banner's "last delivered" is drawn by the page script from the summary it fetches.
        last = tab.page.locator("#health-last time")
        last.wait_for()
        tab.page.wait_for_function("() => document.getElementById('health-word').textContent === 'Failing'")
        shown = last.text_content() or ""
        assert ("out of range" in shown) == (value == 1e300), shown
        visitors = tab.page.locator("a[href^='/visitors/']")
        tab.page.goto(f"{dashboard.url}/visitors")
        tab.page.goto(f"{dashboard.url}{visitors.first.get_attribute('href')}")
        tab.page.wait_for_load_state("load")
        # Read while the dashboard still serves: a connection cut by its stop is no problem of the page's.
        assert tab.problems() == []
