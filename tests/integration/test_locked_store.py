"""Fault tests: the database is locked by another connection while tracking traffic flows through the proxy.

The proxy must keep answering the browser at full speed (it never waits on the disk), and every delivery
must reach the database once the lock is gone - including when the lock is only released while the proxy
is shutting down.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import Proxy, Upstream, wait_until

pytestmark = pytest.mark.integration

EVENT = {"productSku": "300938", "productName": "Photosmart E317 Digital Camera"}
HEADERS = {"hybris-schema": "context/commerce/ProductView", "consent-reference": "cr-locked-store"}
PROMPT = 1.0  # seconds: an answer slower than this means the proxy waited on the database


@contextlib.contextmanager
def write_locked(db_path: Path) -> Iterator[sqlite3.Connection]:
    """Hold the database's write lock from another connection (WAL mode: other writers block, readers do not).

    The connection lives in the test process, a different process from the proxy, exactly like a dashboard,
    a backup or a second clickwatch holding the file.
    """
    conn = sqlite3.connect(db_path, timeout=5.0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        # A pending write of our own, so the lock is a real writer's lock, not just an intention.
        conn.execute("UPDATE deliveries SET run = run WHERE id = (SELECT MIN(id) FROM deliveries)")
        yield conn
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()


def _warm_up(proxy: Proxy, upstream: Upstream) -> None:
    """One delivery, so the database file and its schema exist before we lock it."""
    with proxy.client() as client:
        assert (
            client.post(upstream.url("/s201/warmup/edge/clickstreamEvents"), json=EVENT, headers=HEADERS).status_code
            == 201
        )
    wait_until(
        lambda: [r for r in proxy.deliveries() if r["verdict"] == "delivered"],
        timeout=20.0,  # a fresh proxy's first delivery waits for its store process; a loaded CI machine is slow
        what="the warm-up delivery to be written",
    )


def _send_events(proxy: Proxy, upstream: Upstream, paths: list[str]) -> list[float]:
    """POST one event per path through the proxy; return each request's wall time after checking its 201."""
    durations = []
    with proxy.client(timeout=10.0) as client:
        for path in paths:
            started = time.monotonic()
            response = client.post(upstream.url(path), json=EVENT, headers=HEADERS)
            durations.append(time.monotonic() - started)
            assert response.status_code == 201, (path, response.status_code, response.text)
    return durations


def _committed_count(db_path: Path) -> int:
    conn = sqlite3.connect(db_path, timeout=5.0)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0])
    finally:
        conn.close()


def test_locked_database_does_not_slow_the_proxy_and_loses_nothing(proxy: Proxy, upstream: Upstream) -> None:
    _warm_up(proxy, upstream)
    paths = [f"/s201/locked-{i:02d}/edge/clickstreamEvents" for i in range(50)]

    with write_locked(proxy.db_path):
        locked_at = time.monotonic()
        durations = _send_events(proxy, upstream, paths)
        assert max(durations) < PROMPT, f"slowest answer took {max(durations):.2f} s while the database was locked"
        # Give the writer every chance to get through: it must not, the lock is real.
        time.sleep(max(0.0, 4.0 - (time.monotonic() - locked_at)))
        assert _committed_count(proxy.db_path) == 1, "a write got past the lock; the test is not testing anything"
    assert len(upstream.received) == 51

    # After the lock is released the held deliveries are written without any help.
    wait_until(
        lambda: _committed_count(proxy.db_path) == 51,
        timeout=10.0,
        what="the held deliveries to be written after the lock was released",
    )
    assert proxy.stop() == 0, proxy.log()
    rows = proxy.deliveries()
    assert len(rows) == 51
    assert len({r["uid"] for r in rows}) == 51
    assert {r["path"] for r in rows} == {"/s201/warmup/edge/clickstreamEvents", *paths}
    assert {r["verdict"] for r in rows} == {"delivered"}
    assert {r["status_code"] for r in rows} == {201}
    # Time stamps come from the traffic, not from when the row finally reached the disk.
    held = [r for r in rows if r["path"] in paths]
    assert max(r["duration_ms"] for r in held) < PROMPT * 1000


def test_lock_released_during_shutdown_is_waited_for(proxy: Proxy, upstream: Upstream) -> None:
    """Ctrl-C while the database is locked: the proxy waits (up to clickwatch_shutdown_timeout) and writes it all."""
    _warm_up(proxy, upstream)
    paths = [f"/s201/shutdown-{i:02d}/edge/clickstreamEvents" for i in range(20)]

    with write_locked(proxy.db_path):
        durations = _send_events(proxy, upstream, paths)
        assert max(durations) < PROMPT
        stopper_result: list[int] = []
        stopper = threading.Thread(target=lambda: stopper_result.append(proxy.stop()))
        stopped_at = time.monotonic()
        stopper.start()
        time.sleep(2.5)  # the lock outlives the SIGINT; release it well within the 10 s shutdown timeout
        assert proxy.alive(), "the proxy exited while its deliveries could not be written yet"
        assert _committed_count(proxy.db_path) == 1
    stopper.join(20)
    assert not stopper.is_alive()
    assert stopper_result == [0], proxy.log()
    assert time.monotonic() - stopped_at < 10.0

    rows = proxy.deliveries()
    assert len(rows) == 21
    assert {r["verdict"] for r in rows} == {"delivered"}


def test_lock_outlasting_shutdown_timeout_ends_the_proxy_in_time(
    proxy_factory: Callable[..., Proxy], upstream: Upstream
) -> None:
    """A lock that never goes away must not keep the proxy from exiting; the loss is reported, not silent."""
    proxy = proxy_factory("--set", "clickwatch_shutdown_timeout=1")
    _warm_up(proxy, upstream)
    paths = [f"/s201/lost-{i:02d}/edge/clickstreamEvents" for i in range(10)]

    with write_locked(proxy.db_path):
        durations = _send_events(proxy, upstream, paths)
        assert max(durations) < PROMPT
        started = time.monotonic()
        proxy.stop(timeout=15.0)
        took = time.monotonic() - started
        assert _committed_count(proxy.db_path) == 1
    assert took < 6.0, f"exit took {took:.1f} s with clickwatch_shutdown_timeout=1"
    log = proxy.log()
    assert "could not be written before exit" in log, log
    assert "database is locked" in log, log


def test_full_queue_drops_are_reported_and_traffic_keeps_flowing(
    proxy_factory: Callable[..., Proxy], upstream: Upstream
) -> None:
    """Beyond clickwatch_queue_size observations are dropped: counted and logged, never slowing the browser."""
    proxy = proxy_factory("--set", "clickwatch_queue_size=2")
    _warm_up(proxy, upstream)
    paths = [f"/s201/overflow-{i:02d}/edge/clickstreamEvents" for i in range(10)]

    with write_locked(proxy.db_path):
        durations = _send_events(proxy, upstream, paths)
        assert max(durations) < PROMPT
        assert len(upstream.received) == 11
    assert proxy.stop() == 0, proxy.log()
    assert "queue is full" in proxy.log()
    rows = proxy.deliveries()
    assert 1 < len(rows) < 11, [r["path"] for r in rows]


def test_full_queue_leaves_no_delivery_pending_after_clean_shutdown(
    proxy_factory: Callable[..., Proxy], upstream: Upstream
) -> None:
    """A clean exit must not leave 'pending' rows: they read as 'still waiting', and the next start fails them."""
    proxy = proxy_factory("--set", "clickwatch_queue_size=1")
    _warm_up(proxy, upstream)
    hang = "/hang/overflow/edge/clickstreamEvents"
    answered = "/s201/overflow-answered/edge/clickstreamEvents"

    def send_hanging() -> None:
        with proxy.client(timeout=2.0) as client, contextlib.suppress(httpx.HTTPError):
            client.post(upstream.url(hang), json=EVENT, headers=HEADERS)

    with write_locked(proxy.db_path):
        hanging = threading.Thread(target=send_hanging)
        hanging.start()
        # The writer takes the hanging request into its batch and blocks on the lock; the queue (1) is empty.
        time.sleep(0.5)
        # This request fills the queue; its 201 answer finds the queue full and is dropped.
        assert _send_events(proxy, upstream, [answered])[0] < PROMPT
        hanging.join(10)
    assert proxy.stop() == 0, proxy.log()

    rows = {r["path"]: r for r in proxy.deliveries()}
    pending = [(path, r["verdict"]) for path, r in rows.items() if r["verdict"] == "pending"]
    assert pending == [], f"rows left pending after a clean shutdown: {pending}"
    # The answer that found the queue full keeps its verdict; only its bulk was shed, and that is said.
    assert rows[answered]["verdict"] == "delivered"
    assert rows[answered]["status_code"] == 201
    assert "queue was full" in rows[answered]["response_body_note"]
    assert rows[hang]["verdict"] == "failed"
