"""`POST /api/reset` is a barrier, through a real `clickwatch up` (the dashboard beside the proxy, the store in its
own process): nothing captured before it is there after it, even what was still on its way to the store, and the
judge forgets the run's visitors."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from tests.rig import Up, clickwatch_up, wait_until

from .conftest import Upstream, query

BODY = {"productSku": "300938", "productName": "Camera"}
HEADERS = {"hybris-schema": "context/commerce/ProductView", "consent-reference": "cr-1"}
CAPTURED = ("deliveries", "findings", "consent_signals", "datalayer", "visitors")


def client_as(up: Up, run: str) -> httpx.Client:
    """A client through the proxy whose calls belong to `run`."""
    return up.client(headers={"X-Clickwatch-Run": run})


def rows_of(db: Path, run: str) -> dict[str, int]:
    return {
        table: int(query(db, f"SELECT count(*) AS n FROM {table} WHERE run = ?", run)[0]["n"]) for table in CAPTURED
    }


def burst(up: Up, upstream: Upstream, run: str, threads: int, each: int) -> int:
    """POST clickstream events from several connections at once; how many were answered 201."""
    answered = []

    def post(n: int) -> None:
        ok = 0
        with client_as(up, run) as client:
            for i in range(each):
                response = client.post(
                    upstream.url(f"/s201/{n}-{i}/edge/clickstreamEvents"), json=BODY, headers=HEADERS
                )
                ok += response.status_code == 201
        answered.append(ok)

    workers = [threading.Thread(target=post, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    return sum(answered)


def reset(up: Up, run: str | None) -> httpx.Response:
    params = {"run": run} if run is not None else {}
    return httpx.post(f"{up.dashboard_url}/api/reset", params=params, timeout=30, trust_env=False)


def consent_reference(up: Up, upstream: Upstream, run: str) -> None:
    with client_as(up, run) as client:
        response = client.post(upstream.url("/s201/consent/acme/consentReferences"), json={}, headers=HEADERS)
    assert response.status_code == 201


def repeated(db: Path, run: str) -> int:
    found = query(db, "SELECT count(*) AS n FROM findings WHERE run = ? AND kind = 'repeated_consent_reference'", run)
    return int(found[0]["n"])


def test_a_reset_right_after_a_burst_leaves_nothing_of_the_run(tmp_path: Path, upstream: Upstream) -> None:
    with clickwatch_up(tmp_path) as up:
        answered = burst(up, upstream, "burst", threads=4, each=150)
        answered += burst(up, upstream, "kept", threads=1, each=20)
        assert answered == 620
        # At once: most of the burst is still in the proxy's buffer, the pipe or the store's queue.
        response = reset(up, "burst")
        assert response.status_code == 200, response.text
        assert response.json()["run"] == "burst"
        left_at_once = rows_of(up.db, "burst")
        time.sleep(1.5)  # anything still on its way would be written by now
        left_later = rows_of(up.db, "burst")
        kept = rows_of(up.db, "kept")["deliveries"]
    print(f"\nreset right after 600 deliveries: {response.json()['removed']} removed, rows left {left_later}")
    assert left_at_once == left_later == dict.fromkeys(CAPTURED, 0)
    assert kept == 20  # another run's data stays


def test_the_judge_forgets_a_reset_runs_visitors(tmp_path: Path, upstream: Upstream) -> None:
    with clickwatch_up(tmp_path) as up:
        # Without a reset, a second reference for the same browser is reported: the check can fail.
        consent_reference(up, upstream, "control")
        consent_reference(up, upstream, "control")
        consent_reference(up, upstream, "fresh")
        assert reset(up, "fresh").status_code == 200
        consent_reference(up, upstream, "fresh")  # the same browser, after the reset
        wait_until(lambda: repeated(up.db, "control"), 10.0, "the control run's repeated reference")
        wait_until(lambda: rows_of(up.db, "fresh")["deliveries"] == 1, 10.0, "the call after the reset")
        time.sleep(0.5)
        assert repeated(up.db, "fresh") == 0
        # A reset of every run forgets every visitor.
        assert reset(up, None).status_code == 200
        consent_reference(up, upstream, "control")
        wait_until(lambda: rows_of(up.db, "control")["deliveries"] == 1, 10.0, "the call after the reset")
        time.sleep(0.5)
        assert repeated(up.db, "control") == 0
