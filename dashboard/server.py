"""Serve the dashboard with uvicorn: in a thread beside the proxy's event loop, or alone (`python -m
clickwatch.dashboard`)."""

from __future__ import annotations

import threading
import time

import uvicorn

from clickwatch.dashboard.main import create_app
from clickwatch.dashboard.settings import DashboardSettings


def uvicorn_config(settings: DashboardSettings, log_level: str = "warning") -> uvicorn.Config:
    """How uvicorn serves the dashboard: X-Forwarded-For is read only from the proxies the settings trust.

    uvicorn's own default trusts it from loopback, and every request arrives from loopback when clickwatch sits
    behind nothing: any client could then name its own address and guess tokens unthrottled.
    """
    trusted = list(settings.forwarded_allow_ips)
    return uvicorn.Config(
        create_app(settings),
        host=settings.listen_host,
        port=settings.dashboard_port,
        log_level=log_level,
        timeout_graceful_shutdown=2,
        lifespan="off",
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted,
    )


class DashboardServer:
    """uvicorn in a background thread; `stop()` lets open requests finish, bounded in time."""

    def __init__(
        self,
        settings: DashboardSettings,
        log_level: str = "warning",
    ) -> None:
        self.server = uvicorn.Server(uvicorn_config(settings, log_level))
        self.thread = threading.Thread(target=self.server.run, name="clickwatch-dashboard", daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        """Start serving; raise RuntimeError if uvicorn did not come up."""
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the dashboard did not start")
            time.sleep(0.02)

    def stop(self, timeout: float = 5.0) -> None:
        """Ask uvicorn to exit and wait for it."""
        self.server.should_exit = True
        self.thread.join(timeout)
