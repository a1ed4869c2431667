import sqlite3
import threading
import time

import pytest

from clickwatch.core.pipeline import StoreOps
from clickwatch.store import reader, schema, wire
from clickwatch.store.writer import DIED_BEFORE_DECIDING, STALE_PENDING_ERROR, STOPPED_BEFORE_DECIDING, StoreWriter

from .observations import answered, seen


def rows(path) -> list[sqlite3.Row]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM deliveries ORDER BY id").fetchall()
    finally:
        conn.close()


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "cw.db")


def test_request_then_answer_ends_as_one_judged_row(db_path):
    writer = StoreWriter(db_path)
    writer.start()
    writer.submit(seen("a"))
    assert wait_for(lambda: writer.stats.written == 1)
    assert [r["verdict"] for r in rows(db_path)] == ["pending"]
    writer.submit(answered("a"))
    assert writer.close()
    [row] = rows(db_path)
    assert row["verdict"] == "delivered"
    assert row["status_code"] == 201
    assert row["duration_ms"] == 250.0
    assert row["schema_name"] == "ProductView"
    assert row["request_body_kind"] == "json"


def test_request_and_answer_in_one_batch(db_path):
    writer = StoreWriter(db_path)
    for i in range(100):
        writer.submit(seen(f"u{i}"))
        writer.submit(answered(f"u{i}", 201 if i % 2 else 500))
    writer.start()
    assert writer.close()
    verdicts = [r["verdict"] for r in rows(db_path)]
    assert verdicts.count("delivered") == 50
    assert verdicts.count("rejected") == 50


def test_schema_is_migrated_with_wal_and_filter_indexes(db_path):
    writer = StoreWriter(db_path)
    writer.start()
    writer.submit(seen("a"))
    assert writer.close()
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    names = {r[0] for r in conn.execute("SELECT name FROM _sqlite_migrations WHERE migration_set='clickwatch'")}
    assert "0001_deliveries" in names
    indexed = {
        r[0]
        for r in conn.execute(
            "SELECT ii.name FROM pragma_index_list('deliveries') il, pragma_index_info(il.name) ii WHERE ii.seqno = 0"
        )
    }
    assert {"sent_at", "kind", "verdict", "schema_name", "visitor", "run", "uid"} <= indexed


def test_locked_database_holds_observations_and_writes_them_after(db_path):
    schema.open_database(db_path).conn.close()
    locker = sqlite3.connect(db_path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    writer = StoreWriter(db_path, retry_max_seconds=0.2)
    writer.start()
    for i in range(20):
        assert writer.submit(seen(f"u{i}"))
        writer.submit(answered(f"u{i}"))
    assert wait_for(lambda: writer.stats.failed_writes >= 2)
    assert writer.stats.written == 0
    assert "locked" in (writer.stats.last_error or "")
    locker.execute("COMMIT")
    locker.close()
    assert writer.close()
    assert [r["verdict"] for r in rows(db_path)] == ["delivered"] * 20
    assert writer.stats.blocked_since is None


def test_full_queue_drops_and_counts_but_loses_nothing_committed(db_path):
    writer = StoreWriter(db_path, queue_size=5, batch_size=2, retry_max_seconds=0.1)
    writer.start()
    writer.submit(seen("committed"))
    assert wait_for(lambda: writer.stats.written == 1)
    locker = sqlite3.connect(db_path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    accepted = sum(writer.submit(seen(f"u{i}")) for i in range(20))
    assert writer.dropped == 20 - accepted
    assert writer.dropped >= 13  # at most 5 queued plus a 2-row batch held
    locker.execute("COMMIT")
    locker.close()
    assert writer.close()
    stored = [r["uid"] for r in rows(db_path)]
    assert stored[0] == "committed"
    assert len(stored) == 1 + accepted


def test_disk_full_is_survived(db_path, monkeypatch):
    """SQLITE_FULL for real: the writer's connection may not grow the file past a page limit."""
    opened: list[sqlite3.Connection] = []
    real_open = schema.open_database

    def small_database(path, **kwargs):
        db = real_open(path, **kwargs)
        db.conn.execute("PRAGMA max_page_count = 12")
        opened.append(db.conn)
        return db

    monkeypatch.setattr("clickwatch.store.writer.open_database", small_database)
    writer = StoreWriter(db_path, retry_max_seconds=0.1)
    writer.start()
    big = b'{"blob":"' + b"x" * 60000 + b'"}'
    for i in range(10):
        writer.submit(seen(f"u{i}", big))
    assert wait_for(lambda: writer.stats.failed_writes >= 1)
    assert "full" in (writer.stats.last_error or "")
    opened[-1].execute("PRAGMA max_page_count = 1000000")
    assert writer.close()
    assert len(rows(db_path)) == 10


def test_close_flushes_everything_queued(db_path):
    writer = StoreWriter(db_path)
    for i in range(2000):
        writer.submit(seen(f"u{i}"))
    writer.start()
    assert writer.close()
    assert len(rows(db_path)) == 2000


def test_close_gives_up_after_timeout_and_reports_what_is_left(db_path):
    schema.open_database(db_path).conn.close()
    locker = sqlite3.connect(db_path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    writer = StoreWriter(db_path, retry_max_seconds=0.1)
    writer.start()
    writer.submit(seen("a"))
    started = time.monotonic()
    assert writer.close(timeout=1.0) is False
    assert time.monotonic() - started < 5
    locker.execute("COMMIT")
    locker.close()


def test_pending_left_by_a_killed_proxy_becomes_failed_at_start(db_path):
    first = StoreWriter(db_path)
    first.start()
    first.submit(seen("orphan"))
    assert first.close()
    assert rows(db_path)[0]["verdict"] == "pending"
    second = StoreWriter(db_path)
    second.start()
    second.submit(seen("next"))
    assert second.close()
    orphan, nxt = rows(db_path)
    assert orphan["verdict"] == "failed"
    assert orphan["error"] == STALE_PENDING_ERROR
    assert nxt["verdict"] == "pending"


def test_a_row_sqlite_cannot_bind_is_skipped_alone(db_path, monkeypatch):
    from clickwatch.core import pipeline

    real = pipeline.request_row

    def poisoned(observation, body, *rest):
        row = real(observation, body, *rest)
        if observation.uid == "bad":
            row["user_agent"] = object()  # not bindable: the fault a decoding bug would cause
        return row

    monkeypatch.setattr(pipeline, "request_row", poisoned)
    writer = StoreWriter(db_path)
    for uid in ("a", "bad", "b"):
        writer.submit(seen(uid))
    writer.start()
    assert writer.close()
    assert [r["uid"] for r in rows(db_path)] == ["a", "b"]
    assert writer.stats.errors == 1


def test_submit_never_blocks(db_path):
    schema.open_database(db_path).conn.close()
    locker = sqlite3.connect(db_path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    writer = StoreWriter(db_path, queue_size=100)
    writer.start()
    done = threading.Event()

    def flood():
        for i in range(1000):
            writer.submit(seen(f"u{i}"))
        done.set()

    threading.Thread(target=flood).start()
    assert done.wait(2.0)
    locker.execute("COMMIT")
    locker.close()
    writer.close()


def test_answers_that_find_the_queue_full_keep_their_verdict(db_path):
    schema.open_database(db_path).conn.close()
    locker = sqlite3.connect(db_path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    writer = StoreWriter(db_path, queue_size=3, retry_max_seconds=0.1)
    for i in range(3):
        assert writer.submit(seen(f"u{i}"))
    # The queue is full: requests would be dropped, but answers are kept without their bulk.
    assert not writer.submit(seen("dropped"))
    for i in range(3):
        assert writer.submit(answered(f"u{i}"))
    writer.start()
    locker.execute("COMMIT")
    locker.close()
    assert writer.close()
    stored = rows(db_path)
    assert [(r["uid"], r["verdict"]) for r in stored] == [(f"u{i}", "delivered") for i in range(3)]
    assert all("queue was full" in r["response_body_note"] for r in stored)
    assert writer.dropped == 1


def test_database_failing_during_row_by_row_retry_keeps_the_writer_alive(db_path, monkeypatch):
    """A data error sends the batch row by row; if the database then locks, nothing is lost or doubled."""
    writer = StoreWriter(db_path, retry_max_seconds=0.05)
    real_write = writer._write
    faults = iter([sqlite3.IntegrityError("injected"), None, sqlite3.OperationalError("database is locked")])

    def flaky(ops, reset=None):
        fault = next(faults, None)
        if fault is not None:
            raise fault
        return real_write(ops, reset)

    monkeypatch.setattr(writer, "_write", flaky)
    for i in range(3):
        writer.submit(seen(f"u{i}"))
        writer.submit(answered(f"u{i}", 500))
    writer.start()
    assert wait_for(lambda: writer.stats.failed_writes >= 1)
    assert writer.close()
    assert [(r["uid"], r["verdict"]) for r in rows(db_path)] == [(f"u{i}", "rejected") for i in range(3)]


def counter(path, name: str) -> float:
    conn = sqlite3.connect(path)
    try:
        row = conn.execute("SELECT value FROM metric_counters WHERE name = ?", (name,)).fetchone()
        return float(row[0]) if row else 0.0
    finally:
        conn.close()


def counts(seq: int, flows: int, source: str = "proxy-a", dropped: int = 0) -> wire.Counts:
    return wire.Counts(source, seq, proxy_flows=flows, addon_errors=0, store_dropped=dropped, waiting=0)


def test_counts_are_added_once_even_when_handed_again_to_a_replacement(db_path):
    writer = StoreWriter(db_path)
    writer.count(counts(1, 10))  # before the database is open: it waits for what was written before
    writer.start()
    writer.submit(seen("a"))
    writer.count(counts(2, 5))
    assert wait_for(lambda: writer.confirmed.get("proxy-a") == 2)
    assert counter(db_path, "proxy_flows") == 15
    writer.count(counts(2, 5))  # the same Counts again: skipped
    assert writer.close()
    assert counter(db_path, "proxy_flows") == 15
    # A store that replaces a dead one is handed every Counts the proxy has no confirmation of: it skips those
    # the dead one wrote, and adds the rest; another proxy's are its own.
    replacement = StoreWriter(db_path, fail_stale_pending=False)
    for again in (counts(1, 10), counts(2, 5), counts(3, 1), counts(1, 100, source="proxy-b")):
        replacement.count(again)
    replacement.start()
    assert replacement.close()
    assert counter(db_path, "proxy_flows") == 116
    assert replacement.confirmed == {"proxy-a": 3, "proxy-b": 1}


def test_the_store_counts_its_own_drops_and_errors_with_the_proxys(db_path):
    schema.open_database(db_path).conn.close()
    locker = sqlite3.connect(db_path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    writer = StoreWriter(db_path, queue_size=2, retry_max_seconds=0.1)
    writer.start()
    writer.count(counts(1, 3, dropped=4))
    for i in range(5):
        writer.submit(seen(f"u{i}"))
    assert writer.dropped >= 1
    assert counter(db_path, "store_dropped") == 0  # nothing is written while the database is locked
    locker.execute("COMMIT")
    locker.close()
    assert writer.close()
    assert counter(db_path, "store_dropped") == 4 + writer.dropped
    assert counter(db_path, "proxy_flows") == 3
    assert counter(db_path, "addon_errors") == 0


def findings(path) -> list[sqlite3.Row]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM findings ORDER BY id").fetchall()
    finally:
        conn.close()


def test_a_reset_removes_what_came_before_it_and_what_was_captured_before_it(db_path):
    writer = StoreWriter(db_path)
    for i in range(50):
        writer.submit(seen(f"a{i}"))
    writer.submit(seen("other")._replace(run="other"))
    writer.reset(wire.Reset("r1", "default", 2000.0))
    writer.submit(seen("late"))  # handed in after the reset, captured before it (sent_at 1000)
    writer.submit(answered("a1", 500))  # the answer to a request the reset removed
    writer.submit(seen("after")._replace(sent_at=2001.0))
    writer.start()
    assert writer.close()
    assert [r["uid"] for r in rows(db_path)] == ["other", "after"]
    assert writer.resets_done == {"r1": 50}
    after = next(r["id"] for r in rows(db_path) if r["uid"] == "after")
    # Nothing about what was removed: no finding stands alone, about a delivery that is gone.
    assert {f["delivery_id"] for f in findings(db_path) if f["run"] == "default"} == {after}


def test_a_reset_of_every_run_waits_for_a_locked_database(db_path):
    schema.open_database(db_path).conn.close()
    writer = StoreWriter(db_path, retry_max_seconds=0.05)
    writer.submit(seen("a"))
    writer.reset(wire.Reset("r1", None, 2000.0))
    locker = sqlite3.connect(db_path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    writer.start()
    assert wait_for(lambda: writer.stats.failed_writes >= 1)
    assert writer.resets_done == {}
    locker.execute("ROLLBACK")
    locker.close()
    assert wait_for(lambda: writer.resets_done == {"r1": 1})
    writer.submit(seen("b")._replace(sent_at=2001.0))
    assert writer.close()
    assert [r["uid"] for r in rows(db_path)] == ["b"]


def _left_pending(db_path) -> None:
    """A store that wrote calls whose consent waited on the grace window, and ended without deciding them."""
    writer = StoreWriter(db_path)
    writer.pipeline.evaluate = lambda now, final=False: StoreOps()  # type: ignore[method-assign]
    writer.submit(seen("p1"))
    writer.submit(seen("p2"))
    writer.start()
    assert writer.close()
    assert [(r["consent"], r["verdict"]) for r in rows(db_path)] == [("pending", "pending")] * 2


def test_consent_a_dead_store_left_pending_is_settled_by_the_store_taking_over(db_path):
    _left_pending(db_path)
    writer = StoreWriter(db_path, fail_stale_pending=False)
    writer.start()
    assert writer.close()
    # Unknown, with a finding saying why; the verdicts still wait for their answers (the proxy lives on).
    assert [(r["consent"], r["verdict"]) for r in rows(db_path)] == [("unknown", "pending")] * 2
    [finding] = [f for f in findings(db_path) if f["kind"] == "consent_unknown"]
    assert finding["delivery_id"] == 1
    assert DIED_BEFORE_DECIDING in finding["message"] and "2 call(s)" in finding["message"]
    conn = sqlite3.connect(db_path)
    assert reader.pending_decisions(conn) == 0
    conn.close()


def test_decisions_left_pending_are_settled_at_the_next_start(db_path):
    _left_pending(db_path)
    writer = StoreWriter(db_path)
    writer.start()
    assert writer.close()
    assert [(r["consent"], r["verdict"]) for r in rows(db_path)] == [("unknown", "failed")] * 2
    [finding] = [f for f in findings(db_path) if f["kind"] == "consent_unknown"]
    assert STOPPED_BEFORE_DECIDING in finding["message"]
