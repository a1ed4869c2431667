"""Summaries from the trigger-kept count tables (migration 0012) agree with counting the rows, and the live feed's
in-memory filter agrees with the SQL one.

The store is filled through the real writer and Judge (tests/dashboard/conftest.py's StoreBuilder): deliveries of
several kinds, schemas, runs and verdicts, with findings of several kinds, some answered later than sent.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from clickwatch.core.findings import FindingKind, Severity
from clickwatch.core.model import Kind, Verdict
from clickwatch.store import reader
from clickwatch.store.apply import remove_captured
from tests.dashboard.conftest import T0, StoreBuilder

RUNS = ("default", "ci-1")
STEP = 1000.0  # seconds between deliveries: 30 of them span eight hours
SCHEMAS = ("ProductView", "KeywordSearch", "NoSuchThing")


@pytest.fixture
def store(store_builder: Callable[..., StoreBuilder]) -> Iterator[StoreBuilder]:
    builder = store_builder()
    at = T0
    for n, (run, schema) in enumerate(itertools.product(RUNS, SCHEMAS)):
        for status, body in ((201, None), (400, None), (201, {}), (None, None), (201, {"productSku": "dup"})):
            at += STEP  # across hours: the hourly tables and the partial hours at a time filter's ends
            builder.event(at=at, run=run, schema=schema, status=status, body=body)
        builder.event(at=at + 0.5, run=run, schema=schema, body={"productSku": "dup"})  # duplicate_event
        builder.event(at=at + 0.6, run=run, kind=Kind.PREFLIGHT, status=403 if n % 2 else 204)
        builder.event(at=at + 0.7, run=run, schema=schema, status=None, error="connection reset")
    builder.close()
    yield builder


def _filters() -> Iterator[reader.DeliveryFilter]:
    values: dict[str, tuple[Any, ...]] = {
        "kind": (Kind.CLICKSTREAM, Kind.PREFLIGHT, Kind.STRATEGY),
        "schema": ("ProductView", "context/commerce/KeywordSearch", "Absent"),
        "finding": tuple(FindingKind),
        "run": (*RUNS, "nope"),
    }
    yield reader.DeliveryFilter()
    for name, options in values.items():
        for value in options:
            yield reader.DeliveryFilter(**{name: value})
    for (a, a_values), (b, b_values) in itertools.combinations(values.items(), 2):
        for x, y in itertools.product(a_values[:2], b_values[:3]):
            yield reader.DeliveryFilter(**{a: x, b: y})
    times = [T0 + STEP * k + offset for k in (0, 3, 7, 12, 29) for offset in (0.0, 0.5)]
    for since, until in itertools.product([None, *times], [None, *times]):
        if since is None and until is None:
            continue
        yield reader.DeliveryFilter(since=since, until=until)
        for name, options in values.items():
            yield reader.DeliveryFilter(since=since, until=until, **{name: options[0]})


def _by_rows(conn: sqlite3.Connection, flt: reader.DeliveryFilter) -> dict[str, Any]:
    """The rule: count the matching rows themselves."""
    where, params = flt.where()
    deliveries = {v.value: 0 for v in Verdict}
    for verdict, n in conn.execute(f"SELECT verdict, count(*) FROM deliveries d WHERE {where} GROUP BY 1", params):
        deliveries[verdict] = n
    findings = {k.value: 0 for k in FindingKind}
    severities = {s.value: 0 for s in Severity}
    counted = conn.execute(
        f"SELECT f.kind, f.severity, count(*) FROM findings f JOIN deliveries d ON d.id = f.delivery_id "
        f"WHERE {where} GROUP BY 1, 2",
        params,
    ).fetchall()
    if flt.kind is None and flt.verdict is None and flt.schema is None and flt.finding is None:
        counted += conn.execute(
            "SELECT kind, severity, count(*) FROM findings WHERE delivery_id IS NULL AND (? IS NULL OR run = ?) "
            "AND (? IS NULL OR visitor = ?) AND (? IS NULL OR at >= ?) AND (? IS NULL OR at <= ?) GROUP BY 1, 2",
            [flt.run, flt.run, flt.visitor, flt.visitor, flt.since, flt.since, flt.until, flt.until],
        ).fetchall()
    for kind, severity, n in counted:
        findings[kind] += n
        severities[severity] += n
    last = conn.execute(
        f"SELECT MAX(d.sent_at) FROM deliveries d WHERE {where} AND d.verdict = 'delivered'", params
    ).fetchone()[0]
    return {"deliveries": deliveries, "findings": findings, "severities": severities, "last_delivered_at": last}


def agrees_with_rows(conn: sqlite3.Connection, flt: reader.DeliveryFilter) -> None:
    """The summary of `flt` is what counting the rows themselves gives."""
    got = reader.summary(conn, flt)
    assert {k: got[k] for k in ("deliveries", "findings", "severities", "last_delivered_at")} == _by_rows(conn, flt), (
        flt
    )


def _compare(conn: sqlite3.Connection) -> int:
    compared = 0
    for flt in _filters():
        agrees_with_rows(conn, flt)
        compared += 1
    return compared


def test_the_test_store_has_what_the_comparison_needs(store: StoreBuilder) -> None:
    conn = reader.connect(str(store.path))
    kinds = {row[0] for row in conn.execute("SELECT DISTINCT kind FROM findings WHERE delivery_id IS NOT NULL")}
    verdicts = {row[0] for row in conn.execute("SELECT DISTINCT verdict FROM deliveries")}
    several = conn.execute(
        "SELECT count(*) FROM (SELECT delivery_id FROM findings GROUP BY delivery_id HAVING count(DISTINCT kind) > 1)"
    ).fetchone()[0]
    conn.close()
    assert {"invalid_payload", "duplicate_event", "unknown_schema"} <= kinds
    assert {"delivered", "rejected", "failed"} <= verdicts
    assert several > 0  # deliveries with findings of more than one kind: the pair table's hard case


def test_counted_summaries_agree_with_the_rows(store: StoreBuilder) -> None:
    conn = reader.connect(str(store.path))
    try:
        assert _compare(conn) > 500
        assert sum(reader._whole_hours(flt) is not None for flt in _filters()) > 100
    finally:
        conn.close()


def test_counts_follow_verdict_changes_and_resets(store: StoreBuilder) -> None:
    conn = sqlite3.connect(store.path)
    conn.row_factory = sqlite3.Row
    try:
        with conn:  # a pending delivery with findings gets its verdict late, as a slow answer does
            conn.execute(
                "UPDATE deliveries SET verdict = 'delivered' WHERE verdict = 'pending' "
                "AND id IN (SELECT delivery_id FROM findings)"
            )
        _compare(conn)
        with conn:
            remove_captured(conn, "ci-1")
        _compare(conn)
        with conn:  # deliveries first, then their findings: the other order than a reset's
            conn.execute("DELETE FROM deliveries WHERE run = 'default' AND id % 2 = 0")
            conn.execute("DELETE FROM findings WHERE delivery_id NOT IN (SELECT id FROM deliveries)")
        _compare(conn)
        with conn:
            remove_captured(conn)
        for table in ("finding_class_counts", "flagged_counts", "flagged_finding_counts"):
            assert conn.execute(f"SELECT count(*) FROM {table} WHERE n != 0").fetchone()[0] == 0, table
    finally:
        conn.close()


def test_the_live_feeds_filter_agrees_with_the_sql_one(store: StoreBuilder) -> None:
    conn = reader.connect(str(store.path))
    try:
        items = reader.changes_after(conn, 0, limit=10_000)
        filters = [
            *_filters(),
            reader.DeliveryFilter(verdict=Verdict.REJECTED),
            reader.DeliveryFilter(since=T0 + 5, until=T0 + 9.5),
            reader.DeliveryFilter(visitor=items[0]["visitor"], since=T0 + 20),
        ]
        for flt in filters:
            expected = [item["id"] for item in reader.changes_after(conn, 0, flt, limit=10_000)]
            assert [item["id"] for item in items if flt.matches(item)] == expected, flt
    finally:
        conn.close()
