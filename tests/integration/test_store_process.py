"""The store process beside a real mitmdump: how it starts, what survives a hard kill of either, how Ctrl-C stops it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from clickwatch.store import link

from .conftest import Proxy, Upstream, query, wait_until

CLICKWATCH = Path(sys.executable).with_name("clickwatch")

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


def _pending(db: Path) -> tuple[set[str], set[str], int]:
    """Uids whose consent is pending, uids whose verdict is pending, visitors awaiting a decision."""
    consent = {row["uid"] for row in query(db, "SELECT uid FROM deliveries WHERE consent = 'pending'")}
    verdict = {row["uid"] for row in query(db, "SELECT uid FROM deliveries WHERE verdict = 'pending'")}
    visitors = query(db, "SELECT count(*) AS n FROM visitors WHERE pending_decision IS NOT NULL")
    return consent, verdict, int(visitors[0]["n"]) if visitors else 0


class _Load:
    """Clickstream POSTs from a few connections until stopped; remembers every uid-less path answered 201."""

    def __init__(self, proxy: Proxy, upstream: Upstream, threads: int = 3) -> None:
        self.stop = threading.Event()
        self.answered: list[str] = []
        self.workers = [threading.Thread(target=self._post, args=(proxy, upstream, n)) for n in range(threads)]
        for worker in self.workers:
            worker.start()

    def _post(self, proxy: Proxy, upstream: Upstream, n: int) -> None:
        with proxy.client() as client:
            i = 0
            while not self.stop.is_set():
                path = f"/s201/w{n}-{i}/edge/clickstreamEvents"
                with contextlib.suppress(httpx.HTTPError):
                    if client.post(upstream.url(path), json=BODY, headers=HEADERS).status_code == 201:
                        self.answered.append(path)
                i += 1
                time.sleep(0.01)

    def end(self) -> None:
        self.stop.set()
        for worker in self.workers:
            worker.join(30)


def test_decisions_a_killed_store_left_pending_are_settled_by_its_successor_and_at_the_next_start(
    proxy_factory: Callable[..., Proxy], upstream: Upstream, tmp_path: Path
) -> None:
    config = tmp_path / "clickwatch.toml"
    config.write_text("[consent]\ngrace_seconds = 8\n")  # the calls of the last 8 s wait for their decision
    proxy = proxy_factory("--set", f"clickwatch_config={config}")
    (store,) = wait_until(lambda: _children(proxy.process.pid), 10.0, "the store process")
    started = time.monotonic()
    load = _Load(proxy, upstream)
    try:
        # Old enough to be replaced by another process, not by a thread of the proxy.
        time.sleep(max(0.0, link.MIN_PROCESS_LIFETIME + 0.5 - (time.monotonic() - started)))
        os.kill(store, signal.SIGKILL)
        wait_until(lambda: _gone(store), 10.0, "the store process to die")
        left_consent, left_verdict, left_visitors = _pending(proxy.db_path)
        assert left_consent and left_visitors  # what the dead store had not decided
        (successor,) = wait_until(
            lambda: [child for child in _children(proxy.process.pid) if child != store], 10.0, "a new store process"
        )
        time.sleep(1.0)  # under load
    finally:
        load.end()
    # The successor settles what the dead one left: unknown, with a finding saying why (or, for the calls it was
    # handed again, decides them itself once their window passes); answers reach their rows.
    wait_until(lambda: not (_pending(proxy.db_path)[0] & left_consent), 20.0, "the dead store's consent decisions")
    wait_until(lambda: not (_pending(proxy.db_path)[1] & left_verdict), 10.0, "the dead store's pending verdicts")
    reasons = query(proxy.db_path, "SELECT message FROM findings WHERE kind = 'consent_unknown'")
    assert any("the store process died before deciding" in row["message"] for row in reasons)

    def all_delivered() -> bool:
        verdicts = {row["url"].split("/", 3)[3]: row["verdict"] for row in proxy.deliveries()}
        return all(verdicts.get(path.lstrip("/")) == "delivered" for path in load.answered)

    wait_until(all_delivered, 15.0, "every call answered 201 to be stored as delivered")  # nothing lost
    # Then both die hard: the successor's own calls are left pending; the next start settles them.
    _post(proxy, upstream, 5, "late")
    late = (
        "SELECT count(*) AS n FROM deliveries WHERE url LIKE '%/late%' AND verdict = 'delivered' "
        "AND consent = 'pending'"
    )
    wait_until(lambda: query(proxy.db_path, late)[0]["n"] == 5, 10.0, "the last calls written, their consent pending")
    os.kill(successor, signal.SIGKILL)
    proxy.kill()
    before_restart = _pending(proxy.db_path)
    assert before_restart[0]
    again = proxy_factory("--set", f"clickwatch_config={config}")
    wait_until(lambda: _pending(again.db_path) == (set(), set(), 0), 15.0, "every pending row to be settled")
    assert again.stop() == 0, again.log()
    checked = subprocess.run(
        [str(CLICKWATCH), "check", "--db", str(proxy.db_path), "--wait", "5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # It ends, with nothing left pending (a wait that ran out would say "still pending" and fail the run).
    assert checked.returncode in (0, 1), checked.stdout + checked.stderr
    assert "still pending" not in checked.stdout + checked.stderr
    print(
        f"\nkilled store: {len(left_consent)} consent decision(s), {len(left_verdict)} verdict(s) and "
        f"{left_visitors} visitor decision(s) pending; after the successor: 0; pending when both were killed: "
        f"{len(before_restart[0])} consent, {len(before_restart[1])} verdict(s); after the next start: 0"
    )
