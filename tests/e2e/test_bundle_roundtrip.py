"""A run's evidence bundle, imported again: `clickwatch import` of its `deliveries.har` gives the same deliveries,
kinds, verdicts and consent as the live run it came from. Real journeys of the system Chromium through a real
`clickwatch up`; the HAR imported into a fresh store with no configuration (the stand-in's tag pattern is not
given: the kinds come from the bundle)."""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Clickwatch, Visit, settled
from tests.rig import CLICKWATCH

pytestmark = pytest.mark.integration

JOURNEYS = {
    "accept": ((), ("home", "product", "accept", "category", "product", "add-to-cart", "search")),
    "withdraw": ((), ("home", "accept", "product", "withdraw", "search", "category")),
    "track-before-consent": (("track-before-consent",), ("home", "product", "accept", "search")),
    "tenant-503": (("status:503",), ("home", "accept", "product", "add-to-cart")),
}


def _fields(item: dict[str, Any]) -> tuple[Any, ...]:
    return (item["kind"], item["schema_name"], item["verdict"], item["status_code"], item["consent"])


@pytest.mark.parametrize("journey", sorted(JOURNEYS))
def test_importing_a_bundles_har_gives_the_runs_deliveries_back(
    clickwatch: Clickwatch, visit: Visit, make_standin: Any, journey: str, tmp_path: Path
) -> None:
    faults, steps = JOURNEYS[journey]
    standin = make_standin(*faults)
    visit.shopper(standin).walk(steps)
    visit.close()
    settled(clickwatch, visit.run)
    live = [_fields(d) for d in clickwatch.deliveries(visit.run)]
    assert live

    answer = httpx.get(f"{clickwatch.dashboard_url}/api/export/bundle", params={"run": visit.run}, timeout=30,
                       trust_env=False)  # fmt: skip
    answer.raise_for_status()
    har = tmp_path / "deliveries.har"
    with zipfile.ZipFile(io.BytesIO(answer.content)) as bundle:
        har.write_bytes(bundle.read("deliveries.har"))
    entries = json.loads(har.read_text())["log"]["entries"]
    assert any(e["_clickwatch"]["kind"] == "consent_signal" for e in entries)

    db = tmp_path / "imported.db"
    imported = subprocess.run(
        [str(CLICKWATCH), "import", str(har), "--db", str(db), "--run", "again"],
        capture_output=True, text=True, timeout=120, check=False, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert imported.returncode == 0, imported.stdout + imported.stderr
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(
            "SELECT kind, schema_name, verdict, status_code, consent FROM deliveries WHERE run = 'again' "
            "ORDER BY sent_at, id"
        ).fetchall()
    assert [tuple(r) for r in rows] == live
