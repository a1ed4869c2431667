"""The proxy's end of the store: a real store process (or thread), a real SQLite file, real faults (signals)."""

import logging
import os
import signal
import sqlite3
import sys
import time

import pytest

from clickwatch.store import link as link_module
from clickwatch.store import wire
from clickwatch.store.link import StoreLink

HEADERS = ((b"Host", b"acme.api.us.context.cloud.sap"), (b"User-Agent", b"Mozilla/5.0 link"))


def request(uid: str, body: bytes = b'{"productSku":"1"}') -> wire.Request:
    return wire.Request(
        uid,
        "default",
        "clickstream",
        None,
        "POST",
        "https://acme.api.us.context.cloud.sap/edge/clickstreamEvents",
        "acme.api.us.context.cloud.sap",
        "/edge/clickstreamEvents",
        "127.0.0.1",
        HEADERS,
        body,
        time.time(),
    )


def answer(uid: str, status: int = 201) -> wire.Answer:
    now = time.time()
    return wire.Answer(uid, "clickstream", now - 0.01, now, status, (), b"{}", None)


def counters(db) -> dict[str, float]:
    """What the store wrote to its counters so far (nothing while it is still creating the file)."""
    conn = sqlite3.connect(db)
    try:
        return dict(conn.execute("SELECT name, value FROM metric_counters").fetchall())
    except sqlite3.OperationalError:
        return {}
    finally:
        conn.close()


class CountingProxy:
    """A StoreLink fed by running totals the test sets, as the addon's hooks would count them."""

    def __init__(self, db) -> None:
        self.db = db
        self.counts = {"proxy_flows": 0, "addon_errors": 0}
        self.link = StoreLink(str(db), proxy_counts=lambda: dict(self.counts))

    def flows(self, total: int, uid: str) -> None:
        """The proxy has seen `total` flows so far, the last a tracking call `uid`."""
        self.counts["proxy_flows"] = total
        self.link.send(request(uid))


@pytest.fixture
def counting(tmp_path, monkeypatch) -> CountingProxy:
    monkeypatch.setattr(link_module, "MIN_PROCESS_LIFETIME", 0.0)  # a killed store is replaced by another process
    return CountingProxy(tmp_path / "cw.db")


def verdicts(db) -> dict[str, str]:
    conn = sqlite3.connect(db)
    try:
        return dict(conn.execute("SELECT uid, verdict FROM deliveries").fetchall())
    finally:
        conn.close()


def wait_for(probe, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        if time.monotonic() > deadline:
            pytest.fail("timed out")
        time.sleep(0.02)
    return value


@pytest.mark.parametrize("use_process", [True, False], ids=["process", "thread"])
def test_everything_sent_is_written_by_close(tmp_path, use_process):
    db = tmp_path / "cw.db"
    link = StoreLink(str(db), use_process=use_process)
    assert link.mode == ("process" if use_process else "thread")
    for n in range(300):
        link.send(request(f"u{n}"))
        link.send(answer(f"u{n}", 201 if n % 3 else 500))
    assert link.close(10) is True
    stored = verdicts(db)
    assert len(stored) == 300
    assert sum(v == "rejected" for v in stored.values()) == 100
    assert set(stored.values()) == {"delivered", "rejected"}


def test_store_process_runs_apart_and_exits_with_the_link(tmp_path):
    link = StoreLink(str(tmp_path / "cw.db"))
    backend = link._backend
    pid = backend.process.pid
    assert pid != os.getpid()
    link.send(request("one"))
    wait_for(lambda: link._backend.status().get("written", 0) >= 1)
    assert link.close(5)
    assert backend.process.returncode == 0


def test_the_proxys_counts_reach_the_store_with_its_observations(tmp_path):
    counts = {"proxy_flows": 0, "addon_errors": 0}
    db = tmp_path / "cw.db"
    link = StoreLink(str(db), proxy_counts=lambda: dict(counts))
    counts["proxy_flows"] = 40
    counts["addon_errors"] = 2
    link.send(request("a"))
    wait_for(lambda: counters(db).get("proxy_flows") == 40)
    assert counters(db)["addon_errors"] == 2
    counts["proxy_flows"] = 41  # no observation to go with it: handed on within a second all the same
    wait_for(lambda: counters(db).get("proxy_flows") == 41)
    assert link.close(5)
    # A later proxy's store adds its own counts to them; one started later counts from there.
    counts2 = {"proxy_flows": 3, "addon_errors": 0}
    again = StoreLink(str(db), proxy_counts=lambda: dict(counts2))
    counts2["proxy_flows"] = 8
    assert again.close(5)
    assert counters(db)["proxy_flows"] == 46.0
    assert counters(db)["addon_errors"] == 2.0


def test_a_stalled_store_process_fills_the_bound_and_drops_are_counted(tmp_path, caplog):
    db = tmp_path / "cw.db"
    link = StoreLink(str(db), queue_size=10, buffer_size=10)
    process = link._backend.process
    wait_for(lambda: link._backend.status().get("connected"))
    os.kill(process.pid, signal.SIGSTOP)  # a store process that reads nothing more
    try:
        big = b"x" * 1_000_000  # larger than a pipe holds: the feeder blocks on it
        link.send(request("first", big))
        time.sleep(0.3)
        with caplog.at_level(logging.ERROR, logger="clickwatch.store"):
            for n in range(40):
                link.send(request(f"later{n}"))
        assert link.dropped == 30
        link.send(answer("first"))  # finds the buffer full: kept, without its headers and body
        assert link.dropped == 30
        assert link.waiting >= 11
        assert "cannot keep up" in caplog.text
    finally:
        os.kill(process.pid, signal.SIGCONT)
    assert link.close(10) is False  # something was lost, and close says so
    stored = verdicts(db)
    assert stored["first"] == "delivered"
    conn = sqlite3.connect(db)
    (note,) = conn.execute("SELECT response_body_note FROM deliveries WHERE uid = 'first'").fetchone()
    assert "queue was full" in note
    (dropped,) = conn.execute("SELECT value FROM metric_counters WHERE name = 'store_dropped'").fetchone()
    conn.close()
    # The store process has a bound of its own (the same size): a burst may lose one more there, also counted.
    assert dropped >= 30
    assert len(stored) + dropped == 41


@pytest.mark.parametrize(("min_lifetime", "replacement"), [(60.0, "thread"), (0.0, "process")])
def test_a_killed_store_process_is_replaced_and_only_unconfirmed_work_counts_as_lost(
    tmp_path, caplog, monkeypatch, min_lifetime, replacement
):
    # One that dies soon after starting is not started again (it would likely die again): the proxy writes itself.
    monkeypatch.setattr(link_module, "MIN_PROCESS_LIFETIME", min_lifetime)
    db = tmp_path / "cw.db"
    link = StoreLink(str(db))
    first = link._backend.process
    first_started = link._backend.started
    for n in range(10):
        link.send(request(f"before{n}"))
        link.send(answer(f"before{n}"))
    wait_for(lambda: link._backend.status().get("written", 0) >= 20)
    with caplog.at_level(logging.ERROR, logger="clickwatch.store"):
        first.kill()
        first.wait(5)
        for n in range(10):
            link.send(request(f"after{n}"))
            link.send(answer(f"after{n}"))
        wait_for(lambda: link._backend.started > first_started)
    assert link.mode == replacement
    assert "store process ended unexpectedly" in caplog.text
    assert link.close(10) is True
    stored = verdicts(db)
    assert len(stored) == 20
    assert set(stored.values()) == {"delivered"}
    assert link.dropped == 0


def test_closing_with_a_stalled_store_process_ends_in_bounded_time(tmp_path, caplog):
    link = StoreLink(str(tmp_path / "cw.db"), shutdown_timeout=1)
    process = link._backend.process
    wait_for(lambda: link._backend.status().get("connected"))
    os.kill(process.pid, signal.SIGSTOP)  # never reads again: the hand-over blocks on the full pipe
    link.send(request("big", b"x" * 1_000_000))
    link.send(request("after"))
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="clickwatch.store"):
        assert link.close(1) is False
    # timeout (1 s) + grace for the feeder (5 s) + grace for the process (5 s) at most; never a hang.
    assert time.monotonic() - started < 12
    assert "stopped taking observations" in caplog.text
    assert process.poll() is not None


def test_a_bundled_interpreter_writes_in_a_thread(tmp_path, monkeypatch):
    # PyInstaller-style executables set sys.frozen; `sys.executable -m clickwatch.store.worker` would start that
    # program again.
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    link = StoreLink(str(tmp_path / "cw.db"))
    assert link.mode == "thread"
    link.send(request("one"))
    assert link.close(5)
    assert verdicts(tmp_path / "cw.db") == {"one": "pending"}  # no answer was handed on


def test_a_store_package_in_the_working_directory_does_not_shadow_ours(tmp_path, monkeypatch):
    # `python -m` would put the working directory first on sys.path; a user's ./store must not be what runs.
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "__init__.py").write_text('raise SystemExit("not clickwatch")\n')
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "cw.db"
    link = StoreLink(str(db))
    link.send(request("one"))
    link.send(answer("one"))
    assert link.close(5) is True
    assert link.mode == "process"
    assert verdicts(db) == {"one": "delivered"}


def test_a_replacement_store_leaves_in_flight_deliveries_to_their_answers(tmp_path):
    # The proxy lives on: the answer to a request the dead store wrote as pending is still coming.
    db = tmp_path / "cw.db"
    link = StoreLink(str(db))
    link.send(request("inflight"))
    wait_for(lambda: link._backend.status().get("written", 0) >= 1)
    first = link._backend
    first.process.kill()
    link.send(answer("inflight"))
    wait_for(lambda: link._backend is not first)
    assert link.close(10) is True
    assert verdicts(db) == {"inflight": "delivered"}
    conn = sqlite3.connect(db)
    counted = dict(conn.execute("SELECT verdict, n FROM metric_deliveries WHERE kind = 'clickstream'").fetchall())
    conn.close()
    assert counted.get("delivered") == 1
    assert not counted.get("failed")


def test_counters_never_go_back_across_a_store_restart(tmp_path):
    counting = CountingProxy(tmp_path / "cw.db")
    db, link = counting.db, counting.link
    counting.flows(250, "a")
    wait_for(lambda: counters(db).get("proxy_flows") == 250)
    wait_for(lambda: link._backend.status().get("written", 0) >= 1)  # and the proxy knows "a" is written
    seen = [counters(db)["proxy_flows"]]
    first = link._backend
    first.process.kill()
    counting.flows(252, "b")
    wait_for(lambda: link._backend is not first)
    for _ in range(20):
        seen.append(counters(db)["proxy_flows"])
        time.sleep(0.05)
    assert seen == sorted(seen)  # monotonic: the store only ever adds
    assert link.close(10)
    assert counters(db)["proxy_flows"] == 252.0  # every flow the proxy saw, none lost with the dead store


def test_counts_a_killed_store_never_wrote_are_handed_to_its_replacement(counting):
    db, link = counting.db, counting.link
    counting.flows(10, "a")
    wait_for(lambda: counters(db).get("proxy_flows") == 10)
    first = link._backend
    wait_for(lambda: first.status().get("written", 0) >= 1)  # and the proxy knows "a" is written
    os.kill(first.process.pid, signal.SIGSTOP)  # it takes the next batch into its pipe and never writes it
    counting.flows(17, "b")
    wait_for(lambda: link._unconfirmed and link._unconfirmed[-1].proxy_flows == 7)
    time.sleep(0.3)
    assert counters(db)["proxy_flows"] == 10
    first.process.kill()  # SIGKILL, while stopped: what it held is gone
    link.send(request("c"))
    wait_for(lambda: link._backend is not first)
    assert link.close(10) is True  # "b" was handed to the replacement: nothing lost
    assert counters(db)["proxy_flows"] == 17  # the increment it never wrote came again, once
    assert counters(db).get("store_dropped", 0) == link.dropped == 0
    assert set(verdicts(db)) == {"a", "b", "c"}


def test_counts_a_killed_store_wrote_but_never_reported_are_not_added_twice(counting, monkeypatch):
    db, link = counting.db, counting.link
    first = link._backend
    wait_for(lambda: first.status().get("connected"))
    # Injected fault: the store's reports stop reaching the proxy (as when it dies right after a commit).
    stale = dict(first.status())
    monkeypatch.setattr(first, "status", lambda: stale)
    for flows in (5, 9, 12):
        counting.flows(flows, f"at{flows}")
        wait_for(lambda flows=flows: counters(db).get("proxy_flows") == flows)
    assert len(link._unconfirmed) >= 3  # the proxy has no word that any was written
    first.process.kill()
    counting.flows(13, "after")
    wait_for(lambda: link._backend is not first)
    link.close(10)  # False: without reports, the observations it had are counted as lost (it wrote them)
    assert counters(db)["proxy_flows"] == 13  # handed again to the new store, which skipped what was written


def test_the_store_process_is_out_of_reach_of_a_terminal_ctrl_c_and_yields_to_the_proxy(tmp_path):
    link = StoreLink(str(tmp_path / "cw.db"))
    pid = link._backend.process.pid
    # Its own process group: the terminal's SIGINT goes to the proxy's group only.
    assert os.getpgid(pid) == pid != os.getpgrp()
    # And at a lower priority than the proxy: on a busy machine the proxy's traffic comes first.
    wait_for(lambda: link._backend.status().get("connected"))
    with open(f"/proc/{pid}/stat") as stat:
        niceness = int(stat.read().rsplit(")", 1)[1].split()[16])
    assert niceness == os.getpriority(os.PRIO_PROCESS, 0) + 10
    assert link.close(5)


def test_a_bug_in_handing_on_does_not_stop_the_feeder(tmp_path, monkeypatch, caplog):
    # Injected fault (a bug cannot be produced for real): the first hand-over raises; later ones must still go.
    db = tmp_path / "cw.db"
    link = StoreLink(str(db))
    real = link._deliver
    calls = []

    def once_broken(batch):
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("boom")
        real(batch)

    monkeypatch.setattr(link, "_deliver", once_broken)
    with caplog.at_level(logging.ERROR, logger="clickwatch.store"):
        link.send(request("lost-with-the-bug"))
        wait_for(lambda: len(calls) >= 1)
        link.send(request("after"))
        link.send(answer("after"))
        assert link.close(5) is False  # one observation was lost, and close says so
    assert link.dropped == 1
    assert "unexpected error handing observations on" in caplog.text
    assert verdicts(db) == {"after": "delivered"}


def test_a_link_fed_big_bodies_holds_no_more_than_its_byte_bound(tmp_path):
    mb = 1024 * 1024
    bound = 4 * mb
    db = tmp_path / "cw.db"
    link = StoreLink(str(db), queue_bytes=bound)
    wait_for(lambda: link._backend.status().get("connected"))
    store = link._backend
    os.kill(store.process.pid, signal.SIGSTOP)  # a stalled store: its pipe fills, the proxy's buffer must not grow
    held = []
    try:
        for n in range(40):
            link.send(request(f"r{n}", body=b"x" * mb))
            link.send(answer(f"r{n}")._replace(body=b"y" * mb))
            held.append(link._inbox.bytes)
            time.sleep(0.005)
        assert max(held) <= bound
        assert link._replay_bytes <= bound  # what is kept for a replacement store is bounded too
        dropped, shed = link.dropped, link._inbox.shed
        assert dropped > 0 and shed > 0
    finally:
        os.kill(store.process.pid, signal.SIGCONT)
    assert link.close(10) is False  # observations were dropped, and close says so
    rows = verdicts(db)
    assert set(rows.values()) == {"delivered"}  # every request kept got its verdict, shed answer or not
    assert counters(db)["store_dropped"] == dropped + int(store.status().get("dropped", 0))
    assert len(rows) + counters(db)["store_dropped"] == 40  # each request written, or dropped and counted


def test_a_reset_through_the_link_removes_what_was_sent_before_it(tmp_path):
    from clickwatch.store import admin

    db = tmp_path / "cw.db"
    link = StoreLink(str(db))
    for n in range(200):
        link.send(request(f"r{n}"))
        link.send(answer(f"r{n}"))
    # At once: most of them are still in the proxy's buffer, the pipe or the store's queue.
    assert admin.reset(str(db), "default") == 200  # the API's reset finds the link of this process
    link.send(request("after"))
    assert link.close(10) is True
    assert verdicts(db) == {"after": "pending"}
    assert admin.reset(str(db)) == 1  # no link open any more: the rows are removed directly
    assert verdicts(db) == {}
