"""Serve the dashboard with uvicorn in a thread beside the proxy's event loop."""

from __future__ import annotations

import threading
import time

import uvicorn

from clickwatch.dashboard.main import create_app
from clickwatch.dashboard.settings import DashboardSettings


class DashboardServer:
    """uvicorn in a background thread; `stop()` lets open requests finish, bounded in time."""

    def __init__(
        self,
        settings: DashboardSettings,
        log_level: str = "warning",
    ) -> None:
        config = uvicorn.Config(
            create_app(settings),
            host=settings.listen_host,
            port=settings.dashboard_port,
            log_level=log_level,
            timeout_graceful_shutdown=2,
            lifespan="off",
        )
        self.server = uvicorn.Server(config)
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
