"""Assembles the dashboard: settings, security, metrics, the API and page routers, static files."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST

from clickwatch.core import __version__
from clickwatch.dashboard.metrics import StoreCollector, registry_for, render
from clickwatch.dashboard.pages import delivery, diff, live, login, setup, visitors
from clickwatch.dashboard.pages.common import store_damaged
from clickwatch.dashboard.routes import api, bundle, health
from clickwatch.dashboard.routes import diff as diff_api
from clickwatch.dashboard.security import BodyLimit, BrowserGuard, Sessions, Throttle, TokenGuard
from clickwatch.dashboard.settings import DashboardSettings
from clickwatch.store.reader import StoreDamaged

STATIC = Path(__file__).resolve().parent / "static"


class InsecureListen(ValueError):
    """Listening beyond loopback without an access token."""


def create_app(settings: DashboardSettings | None = None) -> FastAPI:
    """The dashboard application for one store."""
    settings = settings or DashboardSettings()
    if settings.needs_token() and not settings.token:
        raise InsecureListen(
            f"listening on {settings.listen_host} exposes captured traffic: set an access token "
            "(--token-file or CLICKWATCH_TOKEN), or listen on 127.0.0.1"
        )
    app = FastAPI(
        title="clickwatch",
        version=__version__,
        description="Deliveries of SAP Intelligent Selling Services tracking calls, their verdicts and findings.",
    )
    app.state.settings = settings
    # A damaged store is answered where it is found, by any route: 500 and one sentence, never a traceback.
    app.add_exception_handler(StoreDamaged, store_damaged)
    app.state.throttle = Throttle()
    if settings.token:
        app.state.sessions = Sessions(settings.token)
        app.add_middleware(TokenGuard, token=settings.token, sessions=app.state.sessions, throttle=app.state.throttle)
    # Added after, so it runs before: refuse foreign Hosts and cross-origin writes before anything else. Plain ASGI
    # middlewares only: an `http` middleware would pass every chunk of every live stream through a task and a queue.
    app.add_middleware(BrowserGuard, listen_host=settings.listen_host, token_required=bool(settings.token))
    # Outermost: no request body larger than the dashboard needs is ever read.
    app.add_middleware(BodyLimit)
    registry = registry_for(StoreCollector(settings.db))

    @app.get(
        "/metrics",
        tags=["metrics"],
        summary="Prometheus text exposition of the store's counters",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
    )
    def metrics() -> Response:
        body, content_type = render(registry)
        return Response(body, media_type=content_type)

    app.include_router(health.router)
    app.include_router(api.router)
    app.include_router(diff_api.router)
    app.include_router(bundle.router)
    for page in (live, delivery, visitors, diff, setup, login):
        app.include_router(page.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
