"""The clickwatch a test session talks to (`cli/instance.py`, shared with `clickwatch browse`): a `clickwatch up`
of its own on free loopback ports with a temporary store, or one already running elsewhere."""

from __future__ import annotations

from clickwatch.cli.instance import (
    CA_NAME,
    DEFAULT_PROXY_PORT,
    Dashboard,
    Server,
    ServerError,
    connect_remote,
    free_port,
    start_local,
    up_command,
)

__all__ = [
    "CA_NAME",
    "DEFAULT_PROXY_PORT",
    "Dashboard",
    "Server",
    "ServerError",
    "connect_remote",
    "free_port",
    "start_local",
    "up_command",
]
