"""The liveness route for scripts and orchestrators: 200 once the store can be read, 503 before."""

from __future__ import annotations

from fastapi import APIRouter

from clickwatch.core import __version__
from clickwatch.dashboard.deps import ConnDep
from clickwatch.dashboard.models import UNAVAILABLE, Health

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="200 once the dashboard can read the store", responses=UNAVAILABLE)
def healthz(conn: ConnDep) -> Health:
    conn.execute("SELECT 1 FROM deliveries LIMIT 1").fetchall()
    return Health(status="ok", version=__version__)
