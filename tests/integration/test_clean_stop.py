"""Stopping `clickwatch up` under load is clean, again and again: every tracking call answered 201 to its client is
in the store, the rest are recorded failed with a reason, and nothing prints a traceback."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.rig import clickwatch_up

from .conftest import Upstream

STOPS = 10
LOAD_SECONDS = 3.0
CONNECTIONS = 4
HEADERS = {"hybris-schema": "context/commerce/ProductView", "consent-reference": "cr-1"}


class _Load:
    """Clickstream POSTs on a few keep-alive connections until stopped; the paths answered 201."""

    def __init__(self, proxy_url: str, upstream: Upstream, run: int) -> None:
        self.stop = threading.Event()
        self.answered: list[str] = []
        self._lock = threading.Lock()
        self.workers = [
            threading.Thread(target=self._post, args=(proxy_url, upstream, f"{run}-{n}")) for n in range(CONNECTIONS)
        ]
        for worker in self.workers:
            worker.start()

    def _post(self, proxy_url: str, upstream: Upstream, name: str) -> None:
        with httpx.Client(proxy=proxy_url, timeout=10, trust_env=False) as client:
            i = 0
            while not self.stop.is_set():
                path = f"/s201/{name}-{i}/edge/clickstreamEvents"
                i += 1
                try:
                    response = client.post(upstream.url(path), json={"productSku": "1"}, headers=HEADERS)
                except httpx.HTTPError:
                    time.sleep(0.01)  # the proxy is stopping: it closes connections and accepts no new ones
                    continue
                if response.status_code == 201:
                    with self._lock:
                        self.answered.append(path)

    def end(self) -> None:
        self.stop.set()
        for worker in self.workers:
            worker.join(30)


def _stop_under_load(root: Path, upstream: Upstream, run: int, sig: signal.Signals) -> tuple[int, int, float]:
    """One `clickwatch up`, loaded, then stopped by `sig`: (answered 201, recorded delivered, seconds to stop)."""
    with clickwatch_up(root) as up:
        load = _Load(up.proxy_url, upstream, run)
        try:
            time.sleep(LOAD_SECONDS)
            started = time.monotonic()
            returncode = up.stop(sig, timeout=60)
            took = time.monotonic() - started
        finally:
            load.end()
    output = up.log()
    assert returncode == 0, output
    assert "Traceback" not in output, output
    conn = sqlite3.connect(up.db)
    stored = {url.split("/", 3)[3]: verdict for url, verdict in conn.execute("SELECT url, verdict FROM deliveries")}
    unexplained = conn.execute(
        "SELECT count(*) FROM deliveries WHERE verdict NOT IN ('delivered', 'failed') OR "
        "(verdict = 'failed' AND COALESCE(error, '') = '')"
    ).fetchone()[0]
    conn.close()
    lost = [path for path in load.answered if stored.get(path.lstrip("/")) != "delivered"]
    assert lost == [], f"{len(lost)} of {len(load.answered)} answered 201 are not stored as delivered"
    assert unexplained == 0  # what did not end delivered is failed, with its reason
    assert load.answered  # there was load to lose
    return len(load.answered), sum(v == "delivered" for v in stored.values()), took


@pytest.mark.parametrize("run", range(STOPS))
def test_stopping_under_load_loses_nothing_and_prints_no_traceback(
    tmp_path: Path, upstream: Upstream, run: int
) -> None:
    # Ten stops in a row (SIGTERM and SIGINT in turn), each its own test to stay within the per-test time limit.
    sig = signal.SIGTERM if run % 2 == 0 else signal.SIGINT
    answered, delivered, took = _stop_under_load(tmp_path / "up", upstream, run, sig)
    print(f"\nstop {run} ({sig.name}): {answered} answered 201, 0 lost, {delivered} delivered, stopped in {took:.1f} s")
