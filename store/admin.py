"""Maintenance writes: clearing captured data (the API's reset).

A reset is a barrier when the proxy that captures into the store runs in this process (`clickwatch up`: the
dashboard beside the proxy): it travels through the proxy's store link behind everything captured before it, so
nothing captured before it can be written after it, and the store's judge forgets the run's visitors. Otherwise
(no proxy here) it removes the rows directly.
"""

from __future__ import annotations

import sqlite3

from clickwatch.store.apply import remove_captured
from clickwatch.store.link import StoreBusy, open_link_for

# How long a reset waits for the store to reach it behind what was captured before it.
RESET_TIMEOUT_SECONDS = 10.0


def reset(path: str, run: str | None = None, timeout: float = RESET_TIMEOUT_SECONDS) -> int:
    """Remove captured data (of one run, or all); returns the number of deliveries removed.

    Raises sqlite3.OperationalError when the store could not do it within `timeout` s (it still will).
    """
    link = open_link_for(path)
    if link is not None:
        try:
            return link.reset(run, timeout)
        except StoreBusy as exc:
            raise sqlite3.OperationalError(str(exc)) from None
    conn = sqlite3.connect(path, timeout=timeout)
    try:
        with conn:
            return remove_captured(conn, run)
    finally:
        conn.close()
