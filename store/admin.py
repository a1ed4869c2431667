"""Maintenance writes from outside the store's writer: clearing captured data (the API's reset)."""

from __future__ import annotations

import sqlite3

_TABLES = ("findings", "consent_signals", "datalayer", "visitors", "deliveries")


def reset(path: str, run: str | None = None) -> int:
    """Remove captured data (of one run, or all); returns the number of deliveries removed."""
    conn = sqlite3.connect(path, timeout=10.0)
    try:
        with conn:
            clause, params = ("WHERE run = ?", (run,)) if run is not None else ("", ())
            removed = conn.execute(f"SELECT count(*) FROM deliveries {clause}", params).fetchone()[0]
            for table in _TABLES:
                conn.execute(f"DELETE FROM {table} {clause}", params)
        return int(removed)
    finally:
        conn.close()
