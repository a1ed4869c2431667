"""A clean stop of `clickwatch up` on SIGINT or SIGTERM: stop accepting, let exchanges in flight finish within a
bound, close what is left, and only then let mitmproxy end (the addon's `done` then writes everything).

Without this, mitmproxy ends while client connections are still open: requests forwarded after the addon closed
its store link are answered to the client and never recorded, and asyncio cancels every open connection's task,
printing one CancelledError traceback each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sized
from typing import Any

log = logging.getLogger("clickwatch.cli")

# How long a stop lets exchanges in flight finish (a tracking call waiting on a slow tenant) before closing them.
DRAIN_SECONDS = 5.0
# How long closed client connections get to wind down (their flows end as errors, recorded as failed).
CLOSE_SECONDS = 2.0
POLL_SECONDS = 0.02


class GracefulStop:
    """A mitmproxy addon and signal handler: the first signal stops cleanly, a second one at once."""

    def __init__(self, master: Any, inflight: Sized) -> None:
        self.master = master
        self.inflight = inflight  # the capture addon's calls waiting for their answer
        self.open: set[str] = set()  # every exchange begun and not ended (storefront pages too), by flow id
        self.stopping = False
        self._task: asyncio.Task[None] | None = None

    def requestheaders(self, flow: Any) -> None:
        # Stopping: a new request on a connection still open is not forwarded (its client sees the connection
        # close, not an answer that would never be recorded).
        if self.stopping:
            flow.kill()
        else:
            self.open.add(flow.id)

    def response(self, flow: Any) -> None:
        self.open.discard(flow.id)

    def error(self, flow: Any) -> None:
        self.open.discard(flow.id)

    def request_stop(self) -> None:
        """Signal handler: begin a clean stop; a second signal ends at once."""
        if self.stopping:
            self.master.shutdown()
            return
        self.stopping = True
        self._task = asyncio.get_running_loop().create_task(self._stop())

    async def _stop(self) -> None:
        try:
            proxyserver = self.master.addons.get("proxyserver")
            for server in list(proxyserver.servers) if proxyserver is not None else []:
                with contextlib.suppress(Exception):
                    if server.is_running:
                        await server.stop()
            await self._until(lambda: not self.inflight and not self.open, DRAIN_SECONDS)
            if self.inflight:
                log.warning(
                    "clickwatch: %d tracking call(s) still waiting for an answer after %.0f s are recorded as failed",
                    len(self.inflight),
                    DRAIN_SECONDS,
                )
            if proxyserver is not None:
                for handler in list(proxyserver.connections.values()):
                    _close_client(handler)
                await self._until(lambda: not proxyserver.connections, CLOSE_SECONDS)
        finally:
            self.master.shutdown()

    @staticmethod
    async def _until(done: Any, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not done() and loop.time() < deadline:
            await asyncio.sleep(POLL_SECONDS)


def _close_client(handler: Any) -> None:
    """Close a client connection: mitmproxy ends its flows as errors, its task ends on its own (not cancelled)."""
    with contextlib.suppress(Exception):
        io = handler.transports.get(handler.client)
        if io is not None and io.writer is not None:
            io.writer.close()


def quiet_cancellation(loop: asyncio.AbstractEventLoop) -> None:
    """From now on (the end of `up`), tasks cancelled or dropped by asyncio's teardown print nothing."""
    default = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if isinstance(context.get("exception"), asyncio.CancelledError):
            return
        if str(context.get("message", "")).startswith("Task was destroyed but it is pending"):
            return
        if default is not None:
            default(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
