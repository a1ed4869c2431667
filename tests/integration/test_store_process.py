"""The store process beside a real mitmdump: how it starts, what survives a hard kill of either, how Ctrl-C stops it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from .conftest import Proxy, Upstream, query, wait_until

BODY = {"productSku": "300938", "productName": "Camera"}
HEADERS = {"hybris-schema": "context/commerce/ProductView", "consent-reference": "cr-1"}


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as listed:
            found += [int(child) for child in listed.read().split()]
    return found


def _command_line(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        return cmdline.read().replace(b"\0", b" ").decode()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie (exited, not yet reaped by its dead parent's reaper) counts as gone.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] == "Z"


def _post(proxy: Proxy, upstream: Upstream, count: int, prefix: str) -> None:
    with proxy.client() as client:
        for n in range(count):
            response = client.post(
                upstream.url(f"/s201/{prefix}{n}/edge/clickstreamEvents"), json=BODY, headers=HEADERS
            )
            assert response.status_code == 201


def test_the_store_runs_in_a_child_process_by_default(proxy: Proxy, upstream: Upstream) -> None:
    (child,) = wait_until(lambda: _children(proxy.process.pid), 10.0, "the store process")
    assert "clickwatch.store.worker" in _command_line(child)
    _post(proxy, upstream, 3, "p")
    assert proxy.stop() == 0, proxy.log()
    assert len(proxy.deliveries()) == 3
    wait_until(lambda: _gone(child), 10.0, "the store process to exit with the proxy")


def test_in_process_store_when_asked(proxy_factory: Callable[..., Proxy], upstream: Upstream) -> None:
    proxy = proxy_factory("--set", "clickwatch_store_process=false")
    _post(proxy, upstream, 3, "t")
    assert _children(proxy.process.pid) == []
    assert proxy.stop() == 0, proxy.log()
    assert [row["verdict"] for row in proxy.deliveries()] == ["delivered"] * 3


def test_hard_kill_of_the_proxy_loses_nothing_already_handed_on(proxy: Proxy, upstream: Upstream) -> None:
    (child,) = wait_until(lambda: _children(proxy.process.pid), 10.0, "the store process")
    _post(proxy, upstream, 25, "k")
    time.sleep(0.2)  # the proxy hands observations on at most every 50 ms
    proxy.kill()  # SIGKILL: no hook runs, nothing is flushed by the proxy
    # The store process sees its pipe close, writes what it holds, and exits.
    wait_until(lambda: _gone(child), 15.0, "the orphaned store process to finish and exit")
    rows = proxy.deliveries()
    assert len(rows) == 25
    assert {row["verdict"] for row in rows} == {"delivered"}


def test_ctrl_c_to_the_whole_process_group_still_writes_everything(
    proxy_factory: Callable[..., Proxy], upstream: Upstream, tmp_path: Path
) -> None:
    proxy = proxy_factory(new_session=True)
    (child,) = wait_until(lambda: _children(proxy.process.pid), 10.0, "the store process")
    _post(proxy, upstream, 40, "c")
    # A terminal's Ctrl-C reaches every process of the foreground group: the store process must not die of it.
    os.killpg(proxy.process.pid, signal.SIGINT)
    try:
        assert proxy.process.wait(20) == 0, proxy.log()
    except subprocess.TimeoutExpired:
        proxy.kill()
        raise
    rows = proxy.deliveries()
    assert len(rows) == 40
    assert {row["verdict"] for row in rows} == {"delivered"}
    assert _gone(child)


def _counter(db: Path, name: str) -> float:
    rows = query(db, "SELECT value FROM metric_counters WHERE name = ?", name)
    return float(rows[0]["value"]) if rows else 0.0


def test_counters_go_on_exactly_when_the_store_process_is_killed(proxy: Proxy, upstream: Upstream) -> None:
    (child,) = wait_until(lambda: _children(proxy.process.pid), 10.0, "the store process")
    _post(proxy, upstream, 5, "before")
    wait_until(lambda: _counter(proxy.db_path, "proxy_flows") == 5, 10.0, "the first flows to be counted")
    time.sleep(0.5)  # the store's next report tells the proxy they are written
    os.kill(child, signal.SIGKILL)
    seen = [_counter(proxy.db_path, "proxy_flows")]
    for n in range(5):
        _post(proxy, upstream, 1, f"after{n}")
        seen.append(_counter(proxy.db_path, "proxy_flows"))
        time.sleep(0.1)
    assert proxy.stop() == 0, proxy.log()
    assert "store process ended unexpectedly" in proxy.log()
    seen.append(_counter(proxy.db_path, "proxy_flows"))
    assert seen == sorted(seen)  # never lower, while the store was replaced
    assert seen[-1] == 10  # every flow counted once: none lost with the dead store, none counted twice
    assert _counter(proxy.db_path, "store_dropped") == 0
    rows = proxy.deliveries()
    assert len(rows) == 10
    assert {row["verdict"] for row in rows} == {"delivered"}
