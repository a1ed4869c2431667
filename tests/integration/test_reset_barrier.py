"""`POST /api/reset` is a barrier, through a real `clickwatch up` (the dashboard beside the proxy, the store in its
own process): nothing captured before it is there after it, even what was still on its way to the store, and the
judge forgets the run's visitors."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from .conftest import Upstream, free_port, query, wait_until

CLICKWATCH = Path(sys.executable).with_name("clickwatch")
BODY = {"productSku": "300938", "productName": "Camera"}
HEADERS = {"hybris-schema": "context/commerce/ProductView", "consent-reference": "cr-1"}
CAPTURED = ("deliveries", "findings", "consent_signals", "datalayer", "visitors")


@dataclass
class Up:
    process: subprocess.Popen[bytes]
    proxy_url: str
    dashboard_url: str
    db: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, run: str) -> httpx.Client:
        return httpx.Client(proxy=self.proxy_url, timeout=15, trust_env=False, headers={"X-Clickwatch-Run": run})


@contextlib.contextmanager
def clickwatch_up(root: Path) -> Iterator[Up]:
    """`clickwatch up` on free loopback ports, stopped with SIGINT (killed if it hangs) on exit."""
    proxy_port, dashboard_port = free_port(), free_port()
    log_path = root / "up.log"
    command = [
        str(CLICKWATCH), "up", "--quiet", "--proxy-port", str(proxy_port), "--dashboard-port", str(dashboard_port),
        "--db", str(root / "cw.db"), "--set", f"confdir={root / 'mitm'}",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy") and not k.startswith("CLICKWATCH_")}
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        up = Up(
            process, f"http://127.0.0.1:{proxy_port}", f"http://127.0.0.1:{dashboard_port}", root / "cw.db", log_path
        )

        def ready() -> bool:
            if process.poll() is not None:
                pytest.fail(f"clickwatch up exited with {process.returncode}:\n{up.log()}")
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{up.dashboard_url}/healthz", timeout=2, trust_env=False).status_code == 200
            return False

        try:
            wait_until(ready, 30.0, "clickwatch up to serve its dashboard and store", interval=0.1)
            yield up
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def rows_of(db: Path, run: str) -> dict[str, int]:
    return {
        table: int(query(db, f"SELECT count(*) AS n FROM {table} WHERE run = ?", run)[0]["n"]) for table in CAPTURED
    }


def burst(up: Up, upstream: Upstream, run: str, threads: int, each: int) -> int:
    """POST clickstream events from several connections at once; how many were answered 201."""
    answered = []

    def post(n: int) -> None:
        ok = 0
        with up.client(run) as client:
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
    with up.client(run) as client:
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
