"""Real damage in a real store file, for the tests of what reads one: pages overwritten on disk, and values that are
not UTF-8 written into TEXT columns with sqlite3 (`damaged_stores`, a fixture of every test through tests/conftest.py).
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.dashboard.conftest import T0, StoreBuilder

MALFORMED = "database disk image is malformed"
UNDECODABLE = "an undecodable value in column"


def build_store(store_builder: Callable[..., StoreBuilder], events: int = 200) -> Path:
    """A store written by the real writer: two runs, enough deliveries to fill some fifty pages."""
    store = store_builder()
    store.page(at=T0, consent="GIVEN")
    for n in range(events):
        # The first answered slowly: each run has a finding (slow_delivery here), whose text the damage reaches.
        duration = 3.0 if n == 0 else 0.05
        store.event(
            at=T0 + 1 + n, schema="ProductView", body={"productSku": str(n), "note": "x" * 300}, duration=duration
        )
    store.event(at=T0 + events + 1, schema="KeywordSearch", body={"searchTerm": "x"}, run="other", status=500)
    store.close()
    assert not Path(f"{store.path}-wal").exists() or Path(f"{store.path}-wal").stat().st_size == 0
    return store.path


def damage_pages(path: Path) -> None:
    """Overwrite the later half of the deliveries table's leaf pages on disk, as a failing disk would."""
    conn = sqlite3.connect(path)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    leaves = [n for (n,) in conn.execute("SELECT pageno FROM dbstat WHERE name = 'deliveries' AND pagetype = 'leaf'")]
    conn.close()
    assert len(leaves) > 20
    with path.open("r+b") as handle:
        for page in sorted(leaves)[len(leaves) // 2 :]:
            handle.seek((page - 1) * page_size)
            handle.write(b"\xde\xad\xbe\xef" * (page_size // 4))


def damage_text(path: Path) -> None:
    """Invalid UTF-8 in TEXT columns every reading command reads: a delivery's URL and body, the findings' text."""
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "UPDATE deliveries SET url = CAST(x'ff' AS TEXT), request_body = CAST(x'ff' AS TEXT) "
            "WHERE id = (SELECT min(id) FROM deliveries WHERE kind = 'clickstream')"
        )
        conn.execute("UPDATE findings SET message = CAST(x'fffe' AS TEXT)")
    conn.close()


@pytest.fixture
def damaged_stores(store_builder: Callable[..., StoreBuilder], tmp_path: Path) -> dict[str, Path]:
    """The same store three times: whole, with damaged pages, and with values that are not UTF-8."""
    good = build_store(store_builder)
    pages, text = tmp_path / "pages.db", tmp_path / "text.db"
    shutil.copy(good, pages)
    shutil.copy(good, text)
    damage_pages(pages)
    damage_text(text)
    return {"good": good, "pages": pages, "text": text}
