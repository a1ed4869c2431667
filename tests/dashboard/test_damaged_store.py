"""A damaged store through the real dashboard (uvicorn on loopback): what reads damage answers 500 with one sentence
naming the file, never a traceback, and the server goes on serving what it can still read. The damage is real:
pages overwritten on disk, values that are not UTF-8 written with sqlite3 (tests/store/damage.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import pytest

from tests.dashboard.browser_fixtures import serve_dashboard
from tests.store.damage import MALFORMED, UNDECODABLE

pytestmark = pytest.mark.integration


def _ids(path: Path) -> tuple[int, int]:
    """The first clickstream delivery (the one given a URL that is not UTF-8) and the last one without findings
    (in the pages overwritten), read from the whole store the damaged ones were copied from."""
    conn = sqlite3.connect(path)
    try:
        # (The first clickstream delivery carries the store's slow_delivery finding: min(id) over all of them.)
        low, high = conn.execute(
            "SELECT min(id), max(CASE WHEN NOT EXISTS (SELECT 1 FROM findings f WHERE f.delivery_id = d.id) "
            "THEN id END) FROM deliveries d WHERE kind = 'clickstream'"
        ).fetchone()
    finally:
        conn.close()
    return int(low), int(high)


def _damaged(answer: httpx.Response, path: Path, what: str) -> None:
    assert answer.status_code == 500, answer.text[:500]
    assert "Traceback" not in answer.text
    if answer.headers["content-type"].startswith("application/json"):
        detail = answer.json()["detail"]
        assert detail.startswith(f"{path} is damaged: ") and what in detail, detail
    else:
        assert "Store damaged" in answer.text and f"{path} is damaged: " in answer.text and what in answer.text


def test_damaged_pages_answer_500_and_the_server_goes_on(damaged_stores: dict[str, Path]) -> None:
    low, high = _ids(damaged_stores["good"])
    db = damaged_stores["pages"]
    with serve_dashboard(db) as dashboard, httpx.Client(base_url=dashboard.url, timeout=20) as client:
        _damaged(client.get(f"/api/deliveries/{high}"), db, MALFORMED)
        _damaged(client.get("/api/deliveries", params={"limit": 500}), db, MALFORMED)
        _damaged(client.get("/api/export/bundle", params={"run": "default"}), db, MALFORMED)
        page = client.get(f"/deliveries/{high}", headers={"Accept": "text/html"})
        _damaged(page, db, MALFORMED)
        # A download already under way cannot turn into a 500: it is cut off, never ended as if whole.
        with pytest.raises(httpx.RemoteProtocolError):
            client.get("/api/export", params={"format": "jsonl"})
        # What the damage does not touch is still served, again and again.
        for _ in range(3):
            assert client.get(f"/api/deliveries/{low}").status_code == 200
            assert client.get("/api/summary").status_code == 200
            assert client.get("/metrics").status_code == 200
            assert client.get("/healthz").status_code == 200


def test_values_that_are_not_utf8_answer_500_and_the_server_goes_on(damaged_stores: dict[str, Path]) -> None:
    low, high = _ids(damaged_stores["good"])
    # The metrics read the store at scrape time: a scrape that meets damage fails, the process does not.
    conn = sqlite3.connect(damaged_stores["text"])
    with conn:
        conn.execute("UPDATE metric_deliveries SET kind = CAST(x'ff' AS TEXT)")
    conn.close()
    db = damaged_stores["text"]
    with serve_dashboard(db) as dashboard, httpx.Client(base_url=dashboard.url, timeout=20) as client:
        _damaged(client.get(f"/api/deliveries/{low}"), db, UNDECODABLE)
        _damaged(client.get("/api/findings"), db, UNDECODABLE)
        _damaged(client.get(f"/deliveries/{low}", headers={"Accept": "text/html"}), db, UNDECODABLE)
        _damaged(client.get("/api/export/bundle", params={"run": "default"}), db, UNDECODABLE)
        for _ in range(2):
            _damaged(client.get("/metrics"), db, UNDECODABLE)
        assert client.get("/healthz").status_code == 200
        assert client.get(f"/api/deliveries/{high}").status_code == 200
        assert client.get("/api/summary").status_code == 200
