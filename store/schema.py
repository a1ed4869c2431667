"""The store's schema, as named migrations applied in one place."""

from __future__ import annotations

import sqlite3

import sqlite_utils
from sqlite_utils import Migrations

from clickwatch.core.pipeline import REJECT_REASONS
from clickwatch.store import metrics_schema

migrations = Migrations("clickwatch")


@migrations(name="0001_deliveries")
def _deliveries(db: sqlite_utils.Database) -> None:
    db["deliveries"].create(  # type: ignore[union-attr]
        {
            "id": int,
            "uid": str,
            "run": str,
            "kind": str,
            "target_kind": str,
            "verdict": str,
            "method": str,
            "url": str,
            "host": str,
            "path": str,
            "client_addr": str,
            "user_agent": str,
            "visitor": str,
            "schema": str,
            "schema_name": str,
            "consent_reference": str,
            "origin": str,
            "sent_at": float,
            "answered_at": float,
            "ended_at": float,
            "duration_ms": float,
            "status_code": int,
            "error": str,
            "request_headers": str,
            "request_body": str,
            "request_body_kind": str,
            "request_body_size": int,
            "request_body_truncated": int,
            "request_body_note": str,
            "response_headers": str,
            "response_body": str,
            "response_body_kind": str,
            "response_body_size": int,
            "response_body_truncated": int,
            "response_body_note": str,
        },
        pk="id",
        not_null={"uid", "run", "kind", "verdict", "method", "url", "visitor", "sent_at"},
    )
    table = db["deliveries"]
    table.create_index(["uid"], unique=True)  # type: ignore[union-attr]
    table.create_index(["sent_at"])  # type: ignore[union-attr]
    # One index per dashboard filter, each ordered by time for "newest first" pages.
    for column in ("kind", "verdict", "schema_name", "visitor", "run"):
        table.create_index([column, "sent_at"])  # type: ignore[union-attr]


@migrations(name="0002_consent_and_findings")
def _consent_and_findings(db: sqlite_utils.Database) -> None:
    db["deliveries"].add_column("consent", str)  # type: ignore[union-attr]
    db["findings"].create(  # type: ignore[union-attr]
        {
            "id": int,
            "delivery_id": int,
            "run": str,
            "visitor": str,
            "kind": str,
            "severity": str,
            "message": str,
            "at": float,
        },
        pk="id",
        not_null={"run", "visitor", "kind", "severity", "message", "at"},
        foreign_keys=[("delivery_id", "deliveries", "id")],
    )
    findings = db["findings"]
    findings.create_index(["delivery_id"])  # type: ignore[union-attr]
    for column in ("kind", "severity", "visitor", "run"):
        findings.create_index([column, "at"])  # type: ignore[union-attr]
    db["consent_signals"].create(  # type: ignore[union-attr]
        {"id": int, "run": str, "visitor": str, "at": float, "state": str, "source": str, "detail": str},
        pk="id",
        not_null={"run", "visitor", "at", "state", "source"},
    )
    db["consent_signals"].create_index(["run", "visitor", "at"])  # type: ignore[union-attr]
    db["visitors"].create(  # type: ignore[union-attr]
        {
            "run": str,
            "visitor": str,
            "client_addr": str,
            "user_agent": str,
            "first_seen": float,
            "last_seen": float,
            "page_loads": int,
            "last_page_at": float,
            "consent": str,
            "consent_since": float,
            "pending_decision": str,
        },
        pk=("run", "visitor"),
        not_null={"run", "visitor"},
    )
    db["visitors"].create_index(["last_seen"])  # type: ignore[union-attr]
    db["visitors"].create_index(["visitor"])  # type: ignore[union-attr]


@migrations(name="0003_running_counts")
def _running_counts(db: sqlite_utils.Database) -> None:
    # Counts kept exact by triggers, in the same transaction as the rows: summaries and metrics read a
    # handful of rows instead of scanning a million deliveries.
    db.executescript(
        """
        CREATE TABLE delivery_counts (
            run TEXT NOT NULL, kind TEXT NOT NULL, verdict TEXT NOT NULL, schema_name TEXT NOT NULL,
            n INTEGER NOT NULL, PRIMARY KEY (run, kind, verdict, schema_name)
        );
        CREATE TABLE finding_counts (
            run TEXT NOT NULL, kind TEXT NOT NULL, severity TEXT NOT NULL,
            n INTEGER NOT NULL, PRIMARY KEY (run, kind, severity)
        );
        CREATE TRIGGER deliveries_counted_on_insert AFTER INSERT ON deliveries BEGIN
            INSERT INTO delivery_counts VALUES (new.run, new.kind, new.verdict, COALESCE(new.schema_name, ''), 1)
            ON CONFLICT (run, kind, verdict, schema_name) DO UPDATE SET n = n + 1;
        END;
        CREATE TRIGGER deliveries_counted_on_verdict AFTER UPDATE OF verdict ON deliveries
        WHEN old.verdict IS NOT new.verdict BEGIN
            UPDATE delivery_counts SET n = n - 1 WHERE run = old.run AND kind = old.kind
                AND verdict = old.verdict AND schema_name = COALESCE(old.schema_name, '');
            INSERT INTO delivery_counts VALUES (new.run, new.kind, new.verdict, COALESCE(new.schema_name, ''), 1)
            ON CONFLICT (run, kind, verdict, schema_name) DO UPDATE SET n = n + 1;
        END;
        CREATE TRIGGER deliveries_counted_on_delete AFTER DELETE ON deliveries BEGIN
            UPDATE delivery_counts SET n = n - 1 WHERE run = old.run AND kind = old.kind
                AND verdict = old.verdict AND schema_name = COALESCE(old.schema_name, '');
        END;
        CREATE TRIGGER findings_counted_on_insert AFTER INSERT ON findings BEGIN
            INSERT INTO finding_counts VALUES (new.run, new.kind, new.severity, 1)
            ON CONFLICT (run, kind, severity) DO UPDATE SET n = n + 1;
        END;
        CREATE TRIGGER findings_counted_on_delete AFTER DELETE ON findings BEGIN
            UPDATE finding_counts SET n = n - 1 WHERE run = old.run AND kind = old.kind AND severity = old.severity;
        END;
        INSERT INTO delivery_counts
            SELECT run, kind, verdict, COALESCE(schema_name, ''), count(*) FROM deliveries
            GROUP BY run, kind, verdict, COALESCE(schema_name, '');
        INSERT INTO finding_counts SELECT run, kind, severity, count(*) FROM findings GROUP BY run, kind, severity;
        """
    )


@migrations(name="0004_change_sequence")
def _change_sequence(db: sqlite_utils.Database) -> None:
    # Every write that changes what a delivery looks like gives it a new, higher seq: the live page
    # follows `seq > last seen` and resumes from a Last-Event-ID.
    db["deliveries"].add_column("seq", int)  # type: ignore[union-attr]
    db.execute("UPDATE deliveries SET seq = id")
    db["deliveries"].create_index(["seq"])  # type: ignore[union-attr]


@migrations(name="0006_metric_totals")
def _metric_totals(db: sqlite_utils.Database) -> None:
    db.executescript(metrics_schema.script())


@migrations(name="0007_pending_decisions")
def _pending_decisions(db: sqlite_utils.Database) -> None:
    # Small partial indexes: "is anything still undecided?" is asked by every check and summary.
    db.execute("CREATE INDEX deliveries_consent_pending ON deliveries(run) WHERE consent = 'pending'")
    db.execute("CREATE INDEX visitors_pending_decision ON visitors(run) WHERE pending_decision IS NOT NULL")


@migrations(name="0008_findings_delivery_kind_index")
def _dashboard_indexes(db: sqlite_utils.Database) -> None:
    # The `finding` filter asks "does this delivery have a finding of kind K?" once per delivery it walks:
    # (delivery_id, kind) answers that from the index alone (bench/dashboard_bench.py: a page of a rare
    # finding kind on 1,000,000 deliveries takes about half as long). It also keeps the planner on this
    # probe if an index led by findings.kind is ever added: a covering (kind, ...) index turned it into a
    # scan of every finding of that kind, per delivery.
    db["findings"].create_index(["delivery_id", "kind"])  # type: ignore[union-attr]


@migrations(name="0009_findings_sent_at")
def _findings_sent_at(db: sqlite_utils.Database) -> None:
    # The `finding` filter pages newest first through one kind's findings, ordered like deliveries: each finding
    # carries its delivery's sent_at (copied on insert by a trigger, whoever writes; sent_at never changes).
    db.execute("ALTER TABLE findings ADD COLUMN sent_at REAL")
    db.execute(
        "UPDATE findings SET sent_at = (SELECT d.sent_at FROM deliveries d WHERE d.id = findings.delivery_id) "
        "WHERE delivery_id IS NOT NULL"
    )
    db.execute(
        """
        CREATE TRIGGER findings_sent_at_on_insert AFTER INSERT ON findings WHEN new.delivery_id IS NOT NULL BEGIN
            UPDATE findings SET sent_at = (SELECT sent_at FROM deliveries WHERE id = new.delivery_id)
            WHERE id = new.id;
        END
        """
    )
    # Needs 0008's (delivery_id, kind): without it the planner answers the EXISTS probe from this index instead.
    db["findings"].create_index(["kind", "sent_at", "delivery_id"])  # type: ignore[union-attr]


@migrations(name="0010_datalayer")
def _datalayer(db: sqlite_utils.Database) -> None:
    # What the data-layer observer saw in the page, each push linked to the clickstream delivery that carried it.
    reasons = ", ".join(f"('{reason}', 0)" for reason in REJECT_REASONS)
    db.executescript(
        f"""
        CREATE TABLE datalayer (
            id INTEGER PRIMARY KEY, uid TEXT NOT NULL UNIQUE, run TEXT NOT NULL, visitor TEXT NOT NULL, page TEXT,
            at REAL NOT NULL, type TEXT NOT NULL, name TEXT, schema_name TEXT, consent TEXT, data TEXT,
            early INTEGER NOT NULL DEFAULT 0, truncated INTEGER NOT NULL DEFAULT 0, delivery_uid TEXT
        );
        CREATE INDEX datalayer_run_visitor_at ON datalayer(run, visitor, at);
        CREATE INDEX datalayer_run_at ON datalayer(run, at);
        CREATE INDEX datalayer_delivery_uid ON datalayer(delivery_uid) WHERE delivery_uid IS NOT NULL;
        ALTER TABLE deliveries ADD COLUMN pushed_at REAL;
        -- The funnel's first steps, per run and schema, kept exact by triggers (a reset empties them).
        CREATE TABLE datalayer_counts (
            run TEXT NOT NULL, schema_name TEXT NOT NULL, with_consent INTEGER NOT NULL, n INTEGER NOT NULL,
            PRIMARY KEY (run, schema_name, with_consent)
        );
        CREATE TRIGGER datalayer_counted_on_insert AFTER INSERT ON datalayer WHEN new.schema_name IS NOT NULL BEGIN
            INSERT INTO datalayer_counts VALUES (new.run, new.schema_name, new.consent = 'given', 1)
            ON CONFLICT (run, schema_name, with_consent) DO UPDATE SET n = n + 1;
            INSERT INTO metric_datalayer VALUES (new.schema_name, 1)
            ON CONFLICT (schema_name) DO UPDATE SET n = n + 1;
        END;
        CREATE TRIGGER datalayer_counted_on_delete AFTER DELETE ON datalayer WHEN old.schema_name IS NOT NULL BEGIN
            UPDATE datalayer_counts SET n = n - 1
            WHERE run = old.run AND schema_name = old.schema_name AND with_consent = (old.consent = 'given');
        END;
        -- Monotonic totals for Prometheus (a reset does not lower them).
        CREATE TABLE metric_datalayer (schema_name TEXT PRIMARY KEY, n INTEGER NOT NULL);
        CREATE TABLE metric_observer_rejected (reason TEXT PRIMARY KEY, n INTEGER NOT NULL);
        INSERT INTO metric_observer_rejected VALUES {reasons};
        """
    )


@migrations(name="0011_counter_feeds")
def _counter_feeds(db: sqlite_utils.Database) -> None:
    # Per proxy link, the last Counts added to metric_counters: a Counts handed again to a replacement store is
    # skipped, not added twice. The counters hold increments from now on; what they hold already stays.
    db.executescript("CREATE TABLE counter_feeds (source TEXT PRIMARY KEY, seq INTEGER NOT NULL, updated_at REAL);")


# The last migration: a store without it is still being created or upgraded, and readers wait for it.
LATEST_MIGRATION: str = migrations._migrations[-1].name


def open_database(path: str, *, timeout: float = 1.0) -> sqlite_utils.Database:
    """Open the store for writing: WAL, NORMAL sync, migrations applied."""
    conn = sqlite3.connect(path, timeout=timeout, check_same_thread=False)
    try:
        db = sqlite_utils.Database(conn)
        conn.execute("PRAGMA journal_mode=WAL")
        # In WAL mode NORMAL survives a process crash; only power loss can drop the last commits.
        conn.execute("PRAGMA synchronous=NORMAL")
        migrations.apply(db)
    except BaseException:
        conn.close()
        raise
    return db
