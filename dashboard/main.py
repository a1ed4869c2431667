"""Assembles the dashboard: settings, security, routers, static files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI, Response
from fastapi.staticfiles import StaticFiles

from clickwatch.core import __version__
from clickwatch.dashboard import pages
from clickwatch.dashboard.metrics import StoreCollector, registry_for, render
from clickwatch.dashboard.routes import api, health
from clickwatch.dashboard.security import browser_guard, token_guard
from clickwatch.dashboard.settings import DashboardSettings
from clickwatch.store.link import LiveStore

STATIC = Path(__file__).resolve().parent / "static"


class InsecureListen(ValueError):
    """Listening beyond loopback without an access token."""


def create_app(
    settings: DashboardSettings | None = None, live_writer: Callable[[], LiveStore | None] | None = None
) -> FastAPI:
    """The dashboard application for one store; `live_writer` gives in-process proxy numbers to the metrics."""
    settings = settings or DashboardSettings()
    if settings.needs_token() and not settings.token:
        raise InsecureListen(
            f"listening on {settings.listen_host} exposes captured traffic: set an access token "
            "(--token or CLICKWATCH_TOKEN), or listen on 127.0.0.1"
        )
    app = FastAPI(
        title="clickwatch",
        version=__version__,
        description="Deliveries of SAP Intelligent Selling Services tracking calls, their verdicts and findings.",
    )
    app.state.settings = settings
    if settings.token:
        app.middleware("http")(token_guard(settings.token))
    # Added last, so it runs first: refuse foreign Hosts and cross-site writes before anything else.
    app.middleware("http")(browser_guard(settings.listen_host, token_required=bool(settings.token)))
    registry = registry_for(StoreCollector(settings.db, live_writer))

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        body, content_type = render(registry)
        return Response(body, media_type=content_type)

    app.include_router(health.router)
    app.include_router(api.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
