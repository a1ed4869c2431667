"""Summaries with a time filter read whole days and hours from trigger-kept tables (migrations 0012 and 0013), whole
minutes of the partial hours at the ends, and count only the rows of the partial minutes; they agree with counting
the rows, whatever wrote or removed them.

The store is filled through the real writer and Judge: deliveries of three runs over ten hours, several kinds and
schemas, with findings of several kinds (some deliveries with more than one), some answered only later.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from clickwatch.core.findings import FindingKind
from clickwatch.core.model import Kind
from clickwatch.store import reader
from clickwatch.store.apply import remove_captured
from clickwatch.store.schema import COUNT_RULES, open_database
from tests.dashboard.conftest import T0, StoreBuilder
from tests.store.test_reader_summary import agrees_with_rows

HOUR = 3600.0
DAY = 86400.0
START = (T0 // HOUR + 1) * HOUR  # an hour's first second
RUNS = ("default", "ci-1", "ci-2")
FINDINGS = ("invalid_payload", "duplicate_event", "unknown_schema", "slow_delivery")

HOURLY_TABLES = {  # each trigger-kept table by time, and the same counted from the rows
    table: rule for table, rule in COUNT_RULES.items() if table.startswith(("hourly_", "minute_", "daily_"))
}


@pytest.fixture
def store(store_builder: Callable[..., StoreBuilder]) -> Iterator[StoreBuilder]:
    builder = store_builder()
    for n in range(24):  # every three hours over the three days before: whole days inside a filter
        at = START - 3 * DAY + n * 3 * HOUR + 17.0
        builder.event(at=at, run=RUNS[n % 3], body=({}, None)[n % 2], status=(201, 400)[n % 2])
    for n in range(60):  # every ten minutes for ten hours: six deliveries and more per hour
        at = START + n * 600.0 + 17.0
        run = RUNS[n % 3]
        schema = ("ProductView", "KeywordSearch", "NoSuchThing")[n % 5 % 3]
        body: object | None = ({}, {"productSku": "dup"}, None)[n % 3]
        builder.event(at=at, run=run, schema=schema, status=(201, 400, None, 201)[n % 4], body=body)
        if n % 2:
            builder.event(at=at + 1.0, run=run, schema=schema, body={"productSku": "dup"})  # duplicate_event
        if n % 7 == 0:
            builder.event(at=at + 2.0, run=run, schema=schema, duration=60.0)  # slow
        builder.event(at=at + 3.0, run=run, kind=Kind.PREFLIGHT, status=204 if n % 2 else 403)
    builder.close()
    yield builder


def _tables_match(conn: sqlite3.Connection) -> None:
    for table, expected_sql in HOURLY_TABLES.items():
        expected = {tuple(row) for row in conn.execute(expected_sql)}
        kept = {tuple(row) for row in conn.execute(f"SELECT * FROM {table} WHERE n != 0")}
        assert kept == expected, (table, sorted(kept ^ expected)[:5])


def _timed_filters() -> Iterator[reader.DeliveryFilter]:
    """Time filters with partial hours at either end or both (and on an hour's first second), alone and with
    each other filter the issue names, and pairs with a finding."""
    edges = [
        None,
        START - 2 * DAY - 1234.5,
        START - 5.0,
        START,
        START + 2 * HOUR + 1234.5,
        START + 2 * HOUR + 3000.0,  # with the one before: whole minutes inside an hour, and no whole hour
        START + 5 * HOUR,
        START + 7 * HOUR + 3599.0,
    ]
    others: list[dict[str, Any]] = [
        {},
        {"run": "ci-1"},
        {"kind": Kind.CLICKSTREAM},
        {"schema": "ProductView"},
        *({"finding": FindingKind(kind)} for kind in FINDINGS),
        {"finding": FindingKind.CONSENT_VIOLATION},  # none in the store
        {"finding": FindingKind.DUPLICATE_EVENT, "run": "ci-2"},
        {"finding": FindingKind.INVALID_PAYLOAD, "kind": Kind.CLICKSTREAM},
        {"finding": FindingKind.UNKNOWN_SCHEMA, "schema": "NoSuchThing"},
        {"finding": FindingKind.DUPLICATE_EVENT, "schema": "context/commerce/KeywordSearch", "run": "default"},
    ]
    for since, until in itertools.product(edges, edges):
        if since is None and until is None:
            continue
        for other in others:
            yield reader.DeliveryFilter(since=since, until=until, **other)


def _compare(conn: sqlite3.Connection) -> int:
    """Every timed filter's summary against the rows; returns how many the hourly tables answered."""
    hourly = 0
    for flt in _timed_filters():
        agrees_with_rows(conn, flt)
        hourly += reader._whole_hours(flt) is not None
    return hourly


def _writable(store: StoreBuilder) -> sqlite3.Connection:
    conn = sqlite3.connect(store.path)
    conn.row_factory = sqlite3.Row
    return conn


def test_the_store_spans_hours_runs_and_finding_kinds(store: StoreBuilder) -> None:
    conn = _writable(store)
    try:
        kinds = {row[0] for row in conn.execute("SELECT DISTINCT kind FROM findings WHERE delivery_id IS NOT NULL")}
        hours = conn.execute("SELECT count(DISTINCT CAST(sent_at / 3600 AS INTEGER)) FROM deliveries").fetchone()[0]
        several = conn.execute(
            "SELECT count(*) FROM (SELECT delivery_id FROM findings GROUP BY delivery_id "
            "HAVING count(DISTINCT kind) > 1)"
        ).fetchone()[0]
        runs = {row[0] for row in conn.execute("SELECT DISTINCT run FROM deliveries")}
        flagged = conn.execute("SELECT count(*) FROM hourly_flagged_counts WHERE n != 0").fetchone()[0]
    finally:
        conn.close()
    assert set(FINDINGS) <= kinds
    assert hours >= 30
    assert several > 0  # deliveries flagged with more than one kind: the pair table's hard case
    assert set(RUNS) == runs
    assert flagged > 20


def test_finding_and_time_summaries_read_the_hourly_tables_and_agree_with_the_rows(store: StoreBuilder) -> None:
    conn = reader.connect(str(store.path))
    try:
        _tables_match(conn)
        hourly = _compare(conn)
        finding_hourly = sum(
            flt.finding is not None and reader._whole_hours(flt) is not None for flt in _timed_filters()
        )
        within = sum(reader._whole_hours(flt) is None and reader._within_hours(flt) for flt in _timed_filters())
    finally:
        conn.close()
    assert hourly > 200
    assert finding_hourly > 120  # the finding filters are answered from migration 0013's tables, not skipped
    assert within > 100  # short ranges: whole minutes and rows


def test_the_hourly_tables_follow_every_write_path(store: StoreBuilder) -> None:
    conn = _writable(store)
    try:
        with conn:  # verdicts moving flagged deliveries between classes (late answers, a failed connection)
            conn.execute(
                "UPDATE deliveries SET verdict = 'delivered' WHERE verdict = 'pending' "
                "AND id IN (SELECT delivery_id FROM findings)"
            )
            conn.execute(
                "UPDATE deliveries SET verdict = 'failed' WHERE id IN "
                "(SELECT delivery_id FROM findings WHERE kind = 'duplicate_event') AND id % 3 = 0"
            )
            conn.execute("UPDATE deliveries SET consent = 'withdrawn' WHERE id % 4 = 0")  # no verdict change
        _tables_match(conn)
        _compare(conn)
        with conn:  # one finding of a delivery flagged twice, and a delivery's only finding
            conn.execute(
                "DELETE FROM findings WHERE id = (SELECT MIN(f.id) FROM findings f WHERE f.delivery_id IN "
                "(SELECT delivery_id FROM findings GROUP BY delivery_id HAVING count(DISTINCT kind) > 1))"
            )
            conn.execute(
                "DELETE FROM findings WHERE id = (SELECT MAX(id) FROM findings WHERE delivery_id IN "
                "(SELECT delivery_id FROM findings GROUP BY delivery_id HAVING count(*) = 1))"
            )
            conn.execute(  # a finding added later to a delivery that already has one of another kind
                "INSERT INTO findings (delivery_id, run, visitor, kind, severity, message, at) "
                "SELECT delivery_id, run, visitor, 'consent_violation', 'error', 'late', at FROM findings "
                "WHERE kind = 'invalid_payload' LIMIT 3"
            )
        _tables_match(conn)
        _compare(conn)
        with conn:
            remove_captured(conn, "ci-1")  # a reset of one run
        _tables_match(conn)
        assert _compare(conn) > 200
        with conn:  # retention: the oldest hours go, findings first (as a reset), then deliveries first
            conn.execute("DELETE FROM findings WHERE sent_at < ?", (START + 2 * HOUR + 100,))
            conn.execute("DELETE FROM deliveries WHERE sent_at < ?", (START + 2 * HOUR + 100,))
        _tables_match(conn)
        _compare(conn)
        with conn:
            conn.execute("DELETE FROM deliveries WHERE sent_at > ?", (START + 8 * HOUR + 900,))
            conn.execute("DELETE FROM findings WHERE delivery_id NOT IN (SELECT id FROM deliveries)")
        _tables_match(conn)
        _compare(conn)
        with conn:
            remove_captured(conn)  # a reset of everything
        for table in HOURLY_TABLES:
            assert conn.execute(f"SELECT count(*) FROM {table} WHERE n != 0").fetchone()[0] == 0, table
    finally:
        conn.close()


def test_the_migration_backfills_an_older_store(store: StoreBuilder) -> None:
    conn = _writable(store)
    try:
        with conn:  # the store as migration 0012 left it, rows and all
            for (trigger,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'trigger' AND (name LIKE '%hourly_flagged%' "
                "OR name LIKE '%minute%' OR name LIKE '%daily%')"
            ).fetchall():
                conn.execute(f"DROP TRIGGER {trigger}")
            for table in HOURLY_TABLES:
                if table not in ("hourly_counts", "hourly_finding_counts"):
                    conn.execute(f"DROP TABLE {table}")
            conn.execute("DELETE FROM _sqlite_migrations WHERE name = '0013_time_bucket_counts'")
    finally:
        conn.close()
    open_database(str(store.path)).conn.close()
    conn = reader.connect(str(store.path))
    try:
        assert conn.execute("SELECT count(*) FROM hourly_flagged_finding_counts WHERE n != 0").fetchone()[0] > 20
        _tables_match(conn)
        assert _compare(conn) > 200
    finally:
        conn.close()
