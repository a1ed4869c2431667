"""Liveness for scripts and orchestrators: 200 once the store can be read."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from clickwatch.core import __version__
from clickwatch.dashboard.deps import ConnDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="200 once the dashboard can read the store")
def healthz(conn: ConnDep) -> dict[str, Any]:
    conn.execute("SELECT 1 FROM deliveries LIMIT 1").fetchall()
    return {"status": "ok", "version": __version__}
