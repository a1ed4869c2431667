"""Monotonic totals behind the Prometheus metrics, so they survive restarts and resets: per delivery, finding
and duration kept by triggers; the proxy's and the store's counters (metric_counters) added by the writer.

Unlike delivery_counts (which a reset empties), these only ever grow: a Prometheus counter must not go down.
"""

from __future__ import annotations

from clickwatch.core.findings import FindingKind, Severity
from clickwatch.core.model import Kind

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, float("inf"))
FINAL_VERDICTS = ("delivered", "rejected", "failed")
COUNTERS = ("proxy_flows", "store_dropped", "addon_errors", "passthrough_connections", "observer_pages_untouched")
# A gauge kept beside the counters in metric_counters: observations waiting, in the proxy and in the store.
QUEUE_DEPTH = "store_queue_depth"
_INF = 1e308  # SQLite has no infinity literal; every duration is below this

_FINALISED = """
    INSERT INTO metric_deliveries VALUES (new.kind, new.verdict, 1, COALESCE(new.ended_at, new.sent_at))
    ON CONFLICT (kind, verdict) DO UPDATE SET n = n + 1, last_at = MAX(last_at, excluded.last_at);
    INSERT INTO metric_events
        SELECT COALESCE(new.schema_name, ''), new.verdict, 1 WHERE new.kind = 'clickstream'
    ON CONFLICT (schema_name, verdict) DO UPDATE SET n = n + 1;
    UPDATE metric_durations SET n = n + 1
        WHERE new.status_code IS NOT NULL AND kind = new.kind AND le >= new.duration_ms / 1000.0;
    UPDATE metric_duration_sums SET sum = sum + new.duration_ms / 1000.0, count = count + 1
        WHERE new.status_code IS NOT NULL AND kind = new.kind;
"""


def script() -> str:
    """The SQL creating the metric tables, their triggers and their zero rows."""
    kinds = ", ".join(f"('{k.value}')" for k in Kind)
    buckets = ", ".join(f"({_INF if le == float('inf') else le})" for le in DURATION_BUCKETS)
    return f"""
        CREATE TABLE metric_deliveries (
            kind TEXT NOT NULL, verdict TEXT NOT NULL, n INTEGER NOT NULL, last_at REAL,
            PRIMARY KEY (kind, verdict)
        );
        CREATE TABLE metric_events (
            schema_name TEXT NOT NULL, verdict TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (schema_name, verdict)
        );
        CREATE TABLE metric_findings (
            kind TEXT NOT NULL, severity TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (kind, severity)
        );
        CREATE TABLE metric_durations (
            kind TEXT NOT NULL, le REAL NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (kind, le)
        );
        CREATE TABLE metric_duration_sums (kind TEXT PRIMARY KEY, sum REAL NOT NULL, count INTEGER NOT NULL);
        CREATE TABLE metric_counters (name TEXT PRIMARY KEY, value REAL NOT NULL, updated_at REAL);

        WITH kinds(kind) AS (VALUES {kinds}), buckets(le) AS (VALUES {buckets})
        INSERT INTO metric_durations SELECT kind, le, 0 FROM kinds, buckets;
        WITH kinds(kind) AS (VALUES {kinds}) INSERT INTO metric_duration_sums SELECT kind, 0, 0 FROM kinds;

        CREATE TRIGGER metric_finalised_on_update AFTER UPDATE OF verdict ON deliveries
        WHEN old.verdict = 'pending' AND new.verdict != 'pending' BEGIN {_FINALISED} END;
        CREATE TRIGGER metric_finalised_on_insert AFTER INSERT ON deliveries
        WHEN new.verdict != 'pending' BEGIN {_FINALISED} END;
        CREATE TRIGGER metric_finding_on_insert AFTER INSERT ON findings BEGIN
            INSERT INTO metric_findings VALUES (new.kind, new.severity, 1)
            ON CONFLICT (kind, severity) DO UPDATE SET n = n + 1;
        END;

        -- What the store already holds counts from the start.
        INSERT INTO metric_deliveries
            SELECT kind, verdict, count(*), MAX(COALESCE(ended_at, sent_at)) FROM deliveries
            WHERE verdict != 'pending' GROUP BY kind, verdict;
        INSERT INTO metric_events
            SELECT COALESCE(schema_name, ''), verdict, count(*) FROM deliveries
            WHERE kind = 'clickstream' AND verdict != 'pending' GROUP BY COALESCE(schema_name, ''), verdict;
        INSERT INTO metric_findings SELECT kind, severity, count(*) FROM findings GROUP BY kind, severity;
        UPDATE metric_durations SET n = (
            SELECT count(*) FROM deliveries d
            WHERE d.kind = metric_durations.kind AND d.status_code IS NOT NULL AND d.verdict != 'pending'
              AND d.duration_ms / 1000.0 <= metric_durations.le
        );
        UPDATE metric_duration_sums SET
            sum = COALESCE((SELECT SUM(duration_ms) / 1000.0 FROM deliveries d WHERE d.kind = metric_duration_sums.kind
                            AND d.status_code IS NOT NULL AND d.verdict != 'pending'), 0),
            count = (SELECT count(*) FROM deliveries d WHERE d.kind = metric_duration_sums.kind
                     AND d.status_code IS NOT NULL AND d.verdict != 'pending');
    """


ALL_FINDINGS = [(k.value, s.value) for k in FindingKind for s in Severity]
