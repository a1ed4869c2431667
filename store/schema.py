"""The store's schema, as named migrations applied in one place."""

from __future__ import annotations

import sqlite3

import sqlite_utils
from sqlite_utils import Migrations

from clickwatch.core.pipeline import REJECT_REASONS
from clickwatch.store import metrics_schema
from clickwatch.store.files import create_private

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


@migrations(name="0012_summary_counts")
def _summary_counts(db: sqlite_utils.Database) -> None:
    # Summaries filtered by kind, schema, run and finding (and any two of them) read these few hundred rows instead
    # of counting a million deliveries (bench/dashboard_bench.py). Kept exact by triggers in the writer's
    # transaction. A finding's delivery always exists when it is inserted (store/apply.py), and its kind, run and
    # schema never change; whichever of a delivery and its findings a reset deletes first takes their counts away.
    upsert = "ON CONFLICT ({}) DO UPDATE SET n = n + excluded.n"
    classed = upsert.format("run, delivery_kind, schema_name, kind, severity")
    flagged = upsert.format("finding, run, delivery_kind, schema_name, verdict")
    paired = upsert.format("finding, run, delivery_kind, schema_name, kind, severity")
    hourly = upsert.format("hour, run, kind, schema_name, verdict")
    hourly_found = upsert.format("hour, run, delivery_kind, schema_name, kind, severity")
    db.executescript(
        f"""
        -- Findings about a delivery, by that delivery's run, kind and schema.
        CREATE TABLE finding_class_counts (
            run TEXT NOT NULL, delivery_kind TEXT NOT NULL, schema_name TEXT NOT NULL, kind TEXT NOT NULL,
            severity TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (run, delivery_kind, schema_name, kind, severity)
        );
        -- Deliveries with at least one finding of kind `finding`, by verdict.
        CREATE TABLE flagged_counts (
            finding TEXT NOT NULL, run TEXT NOT NULL, delivery_kind TEXT NOT NULL, schema_name TEXT NOT NULL,
            verdict TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (finding, run, delivery_kind, schema_name, verdict)
        );
        -- Every finding of the deliveries that have a finding of kind `finding` (that one included).
        CREATE TABLE flagged_finding_counts (
            finding TEXT NOT NULL, run TEXT NOT NULL, delivery_kind TEXT NOT NULL, schema_name TEXT NOT NULL,
            kind TEXT NOT NULL, severity TEXT NOT NULL, n INTEGER NOT NULL,
            PRIMARY KEY (finding, run, delivery_kind, schema_name, kind, severity)
        );
        -- Per hour of sent_at (hour = sent_at / 3600, truncated): a summary since (or until) a time adds whole hours
        -- from here and counts only the rows of the partial hours at its ends.
        CREATE TABLE hourly_counts (
            hour INTEGER NOT NULL, run TEXT NOT NULL, kind TEXT NOT NULL, schema_name TEXT NOT NULL,
            verdict TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (hour, run, kind, schema_name, verdict)
        );
        CREATE TABLE hourly_finding_counts (
            hour INTEGER NOT NULL, run TEXT NOT NULL, delivery_kind TEXT NOT NULL, schema_name TEXT NOT NULL,
            kind TEXT NOT NULL, severity TEXT NOT NULL, n INTEGER NOT NULL,
            PRIMARY KEY (hour, run, delivery_kind, schema_name, kind, severity)
        );
        CREATE TRIGGER deliveries_hourly_on_insert AFTER INSERT ON deliveries BEGIN
            INSERT INTO hourly_counts VALUES (
                CAST(new.sent_at / 3600 AS INTEGER), new.run, new.kind, COALESCE(new.schema_name, ''), new.verdict, 1
            ) {hourly};
        END;
        CREATE TRIGGER deliveries_hourly_on_verdict AFTER UPDATE OF verdict ON deliveries
        WHEN old.verdict IS NOT new.verdict BEGIN
            INSERT INTO hourly_counts VALUES (
                CAST(old.sent_at / 3600 AS INTEGER), old.run, old.kind, COALESCE(old.schema_name, ''), old.verdict, -1
            ) {hourly};
            INSERT INTO hourly_counts VALUES (
                CAST(new.sent_at / 3600 AS INTEGER), new.run, new.kind, COALESCE(new.schema_name, ''), new.verdict, 1
            ) {hourly};
        END;
        CREATE TRIGGER deliveries_hourly_on_delete AFTER DELETE ON deliveries BEGIN
            INSERT INTO hourly_counts VALUES (
                CAST(old.sent_at / 3600 AS INTEGER), old.run, old.kind, COALESCE(old.schema_name, ''), old.verdict, -1
            ) {hourly};
            INSERT INTO hourly_finding_counts
                SELECT CAST(old.sent_at / 3600 AS INTEGER), old.run, old.kind, COALESCE(old.schema_name, ''), f.kind,
                    f.severity, -count(*)
                FROM findings f WHERE f.delivery_id = old.id GROUP BY f.kind, f.severity {hourly_found};
        END;
        CREATE TRIGGER findings_summarised_on_insert AFTER INSERT ON findings WHEN new.delivery_id IS NOT NULL BEGIN
            INSERT INTO finding_class_counts
                SELECT d.run, d.kind, COALESCE(d.schema_name, ''), new.kind, new.severity, 1
                FROM deliveries d WHERE d.id = new.delivery_id {classed};
            INSERT INTO hourly_finding_counts
                SELECT CAST(d.sent_at / 3600 AS INTEGER), d.run, d.kind, COALESCE(d.schema_name, ''), new.kind,
                    new.severity, 1
                FROM deliveries d WHERE d.id = new.delivery_id {hourly_found};
            -- the first finding of its kind flags the delivery with that kind
            INSERT INTO flagged_counts
                SELECT new.kind, d.run, d.kind, COALESCE(d.schema_name, ''), d.verdict, 1
                FROM deliveries d WHERE d.id = new.delivery_id AND NOT EXISTS (
                    SELECT 1 FROM findings f WHERE f.delivery_id = new.delivery_id AND f.kind = new.kind
                    AND f.id != new.id) {flagged};
            -- the new finding counts under every kind its delivery is flagged with, its own included
            INSERT INTO flagged_finding_counts
                SELECT fk.kind, d.run, d.kind, COALESCE(d.schema_name, ''), new.kind, new.severity, 1
                FROM deliveries d, (SELECT DISTINCT kind FROM findings WHERE delivery_id = new.delivery_id) fk
                WHERE d.id = new.delivery_id {paired};
            -- a kind newly flagged: the delivery's other findings count under it too
            INSERT INTO flagged_finding_counts
                SELECT new.kind, d.run, d.kind, COALESCE(d.schema_name, ''), f.kind, f.severity, count(*)
                FROM deliveries d, findings f
                WHERE d.id = new.delivery_id AND f.delivery_id = new.delivery_id AND f.id != new.id AND NOT EXISTS (
                    SELECT 1 FROM findings f2 WHERE f2.delivery_id = new.delivery_id AND f2.kind = new.kind
                    AND f2.id != new.id)
                GROUP BY f.kind, f.severity {paired};
        END;
        CREATE TRIGGER findings_summarised_on_delete AFTER DELETE ON findings WHEN old.delivery_id IS NOT NULL BEGIN
            INSERT INTO finding_class_counts
                SELECT d.run, d.kind, COALESCE(d.schema_name, ''), old.kind, old.severity, -1
                FROM deliveries d WHERE d.id = old.delivery_id {classed};
            INSERT INTO hourly_finding_counts
                SELECT CAST(d.sent_at / 3600 AS INTEGER), d.run, d.kind, COALESCE(d.schema_name, ''), old.kind,
                    old.severity, -1
                FROM deliveries d WHERE d.id = old.delivery_id {hourly_found};
            INSERT INTO flagged_counts
                SELECT old.kind, d.run, d.kind, COALESCE(d.schema_name, ''), d.verdict, -1
                FROM deliveries d WHERE d.id = old.delivery_id AND NOT EXISTS (
                    SELECT 1 FROM findings f WHERE f.delivery_id = old.delivery_id AND f.kind = old.kind) {flagged};
            INSERT INTO flagged_finding_counts
                SELECT fk.kind, d.run, d.kind, COALESCE(d.schema_name, ''), old.kind, old.severity, -1
                FROM deliveries d,
                    (SELECT kind FROM findings WHERE delivery_id = old.delivery_id UNION SELECT old.kind) fk
                WHERE d.id = old.delivery_id {paired};
            INSERT INTO flagged_finding_counts
                SELECT old.kind, d.run, d.kind, COALESCE(d.schema_name, ''), f.kind, f.severity, -count(*)
                FROM deliveries d, findings f
                WHERE d.id = old.delivery_id AND f.delivery_id = old.delivery_id AND NOT EXISTS (
                    SELECT 1 FROM findings f2 WHERE f2.delivery_id = old.delivery_id AND f2.kind = old.kind)
                GROUP BY f.kind, f.severity {paired};
        END;
        CREATE TRIGGER deliveries_summarised_on_delete AFTER DELETE ON deliveries BEGIN
            INSERT INTO finding_class_counts
                SELECT old.run, old.kind, COALESCE(old.schema_name, ''), f.kind, f.severity, -count(*)
                FROM findings f WHERE f.delivery_id = old.id GROUP BY f.kind, f.severity {classed};
            INSERT INTO flagged_counts
                SELECT DISTINCT f.kind, old.run, old.kind, COALESCE(old.schema_name, ''), old.verdict, -1
                FROM findings f WHERE f.delivery_id = old.id {flagged};
            INSERT INTO flagged_finding_counts
                SELECT fk.kind, old.run, old.kind, COALESCE(old.schema_name, ''), f.kind, f.severity, -count(*)
                FROM (SELECT DISTINCT kind FROM findings WHERE delivery_id = old.id) fk, findings f
                WHERE f.delivery_id = old.id GROUP BY fk.kind, f.kind, f.severity {paired};
        END;
        CREATE TRIGGER deliveries_flagged_on_verdict AFTER UPDATE OF verdict ON deliveries
        WHEN old.verdict IS NOT new.verdict BEGIN
            INSERT INTO flagged_counts
                SELECT DISTINCT f.kind, old.run, old.kind, COALESCE(old.schema_name, ''), old.verdict, -1
                FROM findings f WHERE f.delivery_id = old.id {flagged};
            INSERT INTO flagged_counts
                SELECT DISTINCT f.kind, new.run, new.kind, COALESCE(new.schema_name, ''), new.verdict, 1
                FROM findings f WHERE f.delivery_id = new.id {flagged};
        END;
        INSERT INTO hourly_counts
            SELECT CAST(sent_at / 3600 AS INTEGER), run, kind, COALESCE(schema_name, ''), verdict, count(*)
            FROM deliveries GROUP BY 1, 2, 3, 4, 5;
        INSERT INTO hourly_finding_counts
            SELECT CAST(d.sent_at / 3600 AS INTEGER), d.run, d.kind, COALESCE(d.schema_name, ''), f.kind, f.severity,
                count(*)
            FROM findings f JOIN deliveries d ON d.id = f.delivery_id GROUP BY 1, 2, 3, 4, 5, 6;
        -- The newest delivery of a run with a finding of a kind (the summary's last_delivered_at).
        CREATE INDEX findings_kind_run_sent_at ON findings(kind, run, sent_at);
        INSERT INTO finding_class_counts
            SELECT d.run, d.kind, COALESCE(d.schema_name, ''), f.kind, f.severity, count(*)
            FROM findings f JOIN deliveries d ON d.id = f.delivery_id GROUP BY 1, 2, 3, 4, 5;
        INSERT INTO flagged_counts
            SELECT fk.kind, d.run, d.kind, COALESCE(d.schema_name, ''), d.verdict, count(*)
            FROM (SELECT DISTINCT delivery_id, kind FROM findings WHERE delivery_id IS NOT NULL) fk
            JOIN deliveries d ON d.id = fk.delivery_id GROUP BY 1, 2, 3, 4, 5;
        INSERT INTO flagged_finding_counts
            SELECT fk.kind, d.run, d.kind, COALESCE(d.schema_name, ''), f.kind, f.severity, count(*)
            FROM (SELECT DISTINCT delivery_id, kind FROM findings WHERE delivery_id IS NOT NULL) fk
            JOIN deliveries d ON d.id = fk.delivery_id JOIN findings f ON f.delivery_id = fk.delivery_id
            GROUP BY 1, 2, 3, 4, 5, 6;
        """
    )


@migrations(name="0013_time_bucket_counts")
def _time_bucket_counts(db: sqlite_utils.Database) -> None:
    # 0012's flagged tables per hour of sent_at: a summary with a finding and a time filter adds whole hours from
    # here and counts only the partial hours at its ends (it counted every finding of the kind in range: 100 ms for
    # a day at 1M). The same rules as 0012's triggers; only a delivery with findings (about one in twenty) pays.
    # And deliveries per minute, for the partial hours themselves; deliveries and their findings per day, for ranges
    # of days (a week's hours were thousands of rows to add).
    hour = "CAST(d.sent_at / 3600 AS INTEGER)"
    old_hour = "CAST(old.sent_at / 3600 AS INTEGER)"
    # Keyed by finding first: a summary reads one kind's range of hours. WITHOUT ROWID: one b-tree per table to
    # update on a write, and the key holds every column a summary groups by.
    flagged = "ON CONFLICT (finding, hour, run, delivery_kind, schema_name, verdict) DO UPDATE SET n = n + excluded.n"
    paired = (
        "ON CONFLICT (finding, hour, run, delivery_kind, schema_name, kind, severity) DO UPDATE SET n = n + excluded.n"
    )
    minutes = "ON CONFLICT (minute, run, kind, schema_name, verdict) DO UPDATE SET n = n + 1"
    days = "ON CONFLICT (day, run, kind, schema_name, verdict) DO UPDATE SET n = n + 1"
    moved_minutes = "ON CONFLICT (minute, run, kind, schema_name, verdict) DO UPDATE SET n = n + excluded.n"
    moved_days = "ON CONFLICT (day, run, kind, schema_name, verdict) DO UPDATE SET n = n + excluded.n"
    daily_found = "ON CONFLICT (day, run, delivery_kind, schema_name, kind, severity) DO UPDATE SET n = n + excluded.n"
    db.executescript(
        f"""
        CREATE TABLE hourly_flagged_counts (
            hour INTEGER NOT NULL, finding TEXT NOT NULL, run TEXT NOT NULL, delivery_kind TEXT NOT NULL,
            schema_name TEXT NOT NULL, verdict TEXT NOT NULL, n INTEGER NOT NULL,
            PRIMARY KEY (finding, hour, run, delivery_kind, schema_name, verdict)
        ) WITHOUT ROWID;
        CREATE TABLE hourly_flagged_finding_counts (
            hour INTEGER NOT NULL, finding TEXT NOT NULL, run TEXT NOT NULL, delivery_kind TEXT NOT NULL,
            schema_name TEXT NOT NULL, kind TEXT NOT NULL, severity TEXT NOT NULL, n INTEGER NOT NULL,
            PRIMARY KEY (finding, hour, run, delivery_kind, schema_name, kind, severity)
        ) WITHOUT ROWID;
        CREATE TRIGGER findings_hourly_flagged_on_insert AFTER INSERT ON findings WHEN new.delivery_id IS NOT NULL
        BEGIN
            INSERT INTO hourly_flagged_counts
                SELECT {hour}, new.kind, d.run, d.kind, COALESCE(d.schema_name, ''), d.verdict, 1
                FROM deliveries d WHERE d.id = new.delivery_id AND NOT EXISTS (
                    SELECT 1 FROM findings f WHERE f.delivery_id = new.delivery_id AND f.kind = new.kind
                    AND f.id != new.id) {flagged};
            INSERT INTO hourly_flagged_finding_counts
                SELECT {hour}, fk.kind, d.run, d.kind, COALESCE(d.schema_name, ''), new.kind, new.severity, 1
                FROM deliveries d, (SELECT DISTINCT kind FROM findings WHERE delivery_id = new.delivery_id) fk
                WHERE d.id = new.delivery_id {paired};
            INSERT INTO hourly_flagged_finding_counts
                SELECT {hour}, new.kind, d.run, d.kind, COALESCE(d.schema_name, ''), f.kind, f.severity, count(*)
                FROM deliveries d, findings f
                WHERE d.id = new.delivery_id AND f.delivery_id = new.delivery_id AND f.id != new.id AND NOT EXISTS (
                    SELECT 1 FROM findings f2 WHERE f2.delivery_id = new.delivery_id AND f2.kind = new.kind
                    AND f2.id != new.id)
                GROUP BY f.kind, f.severity {paired};
        END;
        CREATE TRIGGER findings_hourly_flagged_on_delete AFTER DELETE ON findings WHEN old.delivery_id IS NOT NULL
        BEGIN
            INSERT INTO hourly_flagged_counts
                SELECT {hour}, old.kind, d.run, d.kind, COALESCE(d.schema_name, ''), d.verdict, -1
                FROM deliveries d WHERE d.id = old.delivery_id AND NOT EXISTS (
                    SELECT 1 FROM findings f WHERE f.delivery_id = old.delivery_id AND f.kind = old.kind) {flagged};
            INSERT INTO hourly_flagged_finding_counts
                SELECT {hour}, fk.kind, d.run, d.kind, COALESCE(d.schema_name, ''), old.kind, old.severity, -1
                FROM deliveries d,
                    (SELECT kind FROM findings WHERE delivery_id = old.delivery_id UNION SELECT old.kind) fk
                WHERE d.id = old.delivery_id {paired};
            INSERT INTO hourly_flagged_finding_counts
                SELECT {hour}, old.kind, d.run, d.kind, COALESCE(d.schema_name, ''), f.kind, f.severity, -count(*)
                FROM deliveries d, findings f
                WHERE d.id = old.delivery_id AND f.delivery_id = old.delivery_id AND NOT EXISTS (
                    SELECT 1 FROM findings f2 WHERE f2.delivery_id = old.delivery_id AND f2.kind = old.kind)
                GROUP BY f.kind, f.severity {paired};
        END;
        -- A delivery without findings (nineteen in twenty) costs one probe of the (delivery_id, kind) index here.
        CREATE TRIGGER deliveries_hourly_flagged_on_delete AFTER DELETE ON deliveries
        WHEN EXISTS (SELECT 1 FROM findings WHERE delivery_id = old.id) BEGIN
            INSERT INTO hourly_flagged_counts
                SELECT DISTINCT {old_hour}, f.kind, old.run, old.kind, COALESCE(old.schema_name, ''), old.verdict, -1
                FROM findings f WHERE f.delivery_id = old.id {flagged};
            INSERT INTO hourly_flagged_finding_counts
                SELECT {old_hour}, fk.kind, old.run, old.kind, COALESCE(old.schema_name, ''), f.kind, f.severity,
                    -count(*)
                FROM (SELECT DISTINCT kind FROM findings WHERE delivery_id = old.id) fk, findings f
                WHERE f.delivery_id = old.id GROUP BY fk.kind, f.kind, f.severity {paired};
        END;
        CREATE TRIGGER deliveries_hourly_flagged_on_verdict AFTER UPDATE OF verdict ON deliveries
        WHEN old.verdict IS NOT new.verdict AND EXISTS (SELECT 1 FROM findings WHERE delivery_id = old.id) BEGIN
            INSERT INTO hourly_flagged_counts
                SELECT DISTINCT {old_hour}, f.kind, old.run, old.kind, COALESCE(old.schema_name, ''), old.verdict, -1
                FROM findings f WHERE f.delivery_id = old.id {flagged};
            INSERT INTO hourly_flagged_counts
                SELECT DISTINCT CAST(new.sent_at / 3600 AS INTEGER), f.kind, new.run, new.kind,
                    COALESCE(new.schema_name, ''), new.verdict, 1
                FROM findings f WHERE f.delivery_id = new.id {flagged};
        END;
        -- Per minute, deliveries only: the partial hours at a time filter's ends count whole minutes from here and
        -- only the rows of the partial minutes (a table lookup per row made half an hour of rows 20 ms at 1M).
        -- Per day (UTC, 24 of 0012's hours): a filter spanning days reads days, then hours at its ends.
        CREATE TABLE minute_counts (
            minute INTEGER NOT NULL, run TEXT NOT NULL, kind TEXT NOT NULL, schema_name TEXT NOT NULL,
            verdict TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (minute, run, kind, schema_name, verdict)
        ) WITHOUT ROWID;
        CREATE TABLE daily_counts (
            day INTEGER NOT NULL, run TEXT NOT NULL, kind TEXT NOT NULL, schema_name TEXT NOT NULL,
            verdict TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (day, run, kind, schema_name, verdict)
        ) WITHOUT ROWID;
        CREATE TABLE daily_finding_counts (
            day INTEGER NOT NULL, run TEXT NOT NULL, delivery_kind TEXT NOT NULL, schema_name TEXT NOT NULL,
            kind TEXT NOT NULL, severity TEXT NOT NULL, n INTEGER NOT NULL,
            PRIMARY KEY (day, run, delivery_kind, schema_name, kind, severity)
        ) WITHOUT ROWID;
        CREATE TRIGGER deliveries_minute_daily_on_insert AFTER INSERT ON deliveries BEGIN
            INSERT INTO minute_counts VALUES (
                CAST(new.sent_at / 60 AS INTEGER), new.run, new.kind, COALESCE(new.schema_name, ''), new.verdict, 1
            ) {minutes};
            INSERT INTO daily_counts VALUES (
                CAST(new.sent_at / 86400 AS INTEGER), new.run, new.kind, COALESCE(new.schema_name, ''), new.verdict, 1
            ) {days};
        END;
        -- One statement per table (the old row's bucket -1, the new one's +1): a late answer is the common update.
        CREATE TRIGGER deliveries_minute_daily_on_verdict AFTER UPDATE OF verdict ON deliveries
        WHEN old.verdict IS NOT new.verdict BEGIN
            INSERT INTO minute_counts VALUES
                (CAST(old.sent_at / 60 AS INTEGER), old.run, old.kind, COALESCE(old.schema_name, ''), old.verdict, -1),
                (CAST(new.sent_at / 60 AS INTEGER), new.run, new.kind, COALESCE(new.schema_name, ''), new.verdict, 1)
            {moved_minutes};
            INSERT INTO daily_counts VALUES
                (CAST(old.sent_at / 86400 AS INTEGER), old.run, old.kind, COALESCE(old.schema_name, ''), old.verdict,
                    -1),
                (CAST(new.sent_at / 86400 AS INTEGER), new.run, new.kind, COALESCE(new.schema_name, ''), new.verdict,
                    1)
            {moved_days};
        END;
        -- Retention and resets empty whole minutes: their rows go rather than stay as zeros.
        CREATE TRIGGER deliveries_minute_daily_on_delete AFTER DELETE ON deliveries BEGIN
            UPDATE minute_counts SET n = n - 1 WHERE minute = CAST(old.sent_at / 60 AS INTEGER) AND run = old.run
                AND kind = old.kind AND schema_name = COALESCE(old.schema_name, '') AND verdict = old.verdict;
            DELETE FROM minute_counts WHERE minute = CAST(old.sent_at / 60 AS INTEGER) AND run = old.run
                AND kind = old.kind AND schema_name = COALESCE(old.schema_name, '') AND verdict = old.verdict
                AND n = 0;
            UPDATE daily_counts SET n = n - 1 WHERE day = CAST(old.sent_at / 86400 AS INTEGER) AND run = old.run
                AND kind = old.kind AND schema_name = COALESCE(old.schema_name, '') AND verdict = old.verdict;
            INSERT INTO daily_finding_counts
                SELECT CAST(old.sent_at / 86400 AS INTEGER), old.run, old.kind, COALESCE(old.schema_name, ''), f.kind,
                    f.severity, -count(*)
                FROM findings f WHERE f.delivery_id = old.id GROUP BY f.kind, f.severity {daily_found};
        END;
        CREATE TRIGGER findings_daily_on_insert AFTER INSERT ON findings WHEN new.delivery_id IS NOT NULL BEGIN
            INSERT INTO daily_finding_counts
                SELECT CAST(d.sent_at / 86400 AS INTEGER), d.run, d.kind, COALESCE(d.schema_name, ''), new.kind,
                    new.severity, 1
                FROM deliveries d WHERE d.id = new.delivery_id {daily_found};
        END;
        CREATE TRIGGER findings_daily_on_delete AFTER DELETE ON findings WHEN old.delivery_id IS NOT NULL BEGIN
            INSERT INTO daily_finding_counts
                SELECT CAST(d.sent_at / 86400 AS INTEGER), d.run, d.kind, COALESCE(d.schema_name, ''), old.kind,
                    old.severity, -1
                FROM deliveries d WHERE d.id = old.delivery_id {daily_found};
        END;
        INSERT INTO minute_counts
            SELECT CAST(sent_at / 60 AS INTEGER), run, kind, COALESCE(schema_name, ''), verdict, count(*)
            FROM deliveries GROUP BY 1, 2, 3, 4, 5;
        INSERT INTO daily_counts
            SELECT CAST(sent_at / 86400 AS INTEGER), run, kind, COALESCE(schema_name, ''), verdict, count(*)
            FROM deliveries GROUP BY 1, 2, 3, 4, 5;
        INSERT INTO daily_finding_counts
            SELECT CAST(d.sent_at / 86400 AS INTEGER), d.run, d.kind, COALESCE(d.schema_name, ''), f.kind, f.severity,
                count(*)
            FROM findings f JOIN deliveries d ON d.id = f.delivery_id GROUP BY 1, 2, 3, 4, 5, 6;
        INSERT INTO hourly_flagged_counts
            SELECT {hour}, fk.kind, d.run, d.kind, COALESCE(d.schema_name, ''), d.verdict, count(*)
            FROM (SELECT DISTINCT delivery_id, kind FROM findings WHERE delivery_id IS NOT NULL) fk
            JOIN deliveries d ON d.id = fk.delivery_id GROUP BY 1, 2, 3, 4, 5, 6;
        INSERT INTO hourly_flagged_finding_counts
            SELECT {hour}, fk.kind, d.run, d.kind, COALESCE(d.schema_name, ''), f.kind, f.severity, count(*)
            FROM (SELECT DISTINCT delivery_id, kind FROM findings WHERE delivery_id IS NOT NULL) fk
            JOIN deliveries d ON d.id = fk.delivery_id JOIN findings f ON f.delivery_id = fk.delivery_id
            GROUP BY 1, 2, 3, 4, 5, 6, 7;
        """
    )


@migrations(name="0014_change_counter")
def _change_counter(db: sqlite_utils.Database) -> None:
    # The newest change number ever handed out (seq was MAX(seq) + 1: a reset of the run holding the newest rows
    # made new changes reuse numbers a live viewer had seen, and it missed them), updated in the transaction that
    # hands numbers out; `resets` counts the resets that removed every run, which a reader of the changes can watch.
    db.executescript(
        """
        CREATE TABLE change_counter (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            seq INTEGER NOT NULL,
            resets INTEGER NOT NULL DEFAULT 0
        );
        INSERT INTO change_counter (id, seq) SELECT 1, COALESCE(MAX(seq), 0) FROM deliveries;
        """
    )


# The summary tables the triggers of migrations 0012 and 0013 keep, each with the query that counts the same from the
# rows (`SELECT * FROM table WHERE n != 0` must equal it): what the tests and the dashboard benchmark check them by.
_FLAGGED_BY = "(SELECT DISTINCT delivery_id, kind FROM findings WHERE delivery_id IS NOT NULL) fk"
COUNT_RULES: dict[str, str] = {
    "finding_class_counts": "SELECT d.run, d.kind, COALESCE(d.schema_name, ''), f.kind, f.severity, count(*) "
    "FROM findings f JOIN deliveries d ON d.id = f.delivery_id GROUP BY 1, 2, 3, 4, 5",
    "flagged_counts": "SELECT fk.kind, d.run, d.kind, COALESCE(d.schema_name, ''), d.verdict, count(*) "
    f"FROM {_FLAGGED_BY} JOIN deliveries d ON d.id = fk.delivery_id GROUP BY 1, 2, 3, 4, 5",
    "hourly_counts": "SELECT CAST(sent_at / 3600 AS INTEGER), run, kind, COALESCE(schema_name, ''), verdict, count(*) "
    "FROM deliveries GROUP BY 1, 2, 3, 4, 5",
    "hourly_finding_counts": "SELECT CAST(d.sent_at / 3600 AS INTEGER), d.run, d.kind, COALESCE(d.schema_name, ''), "
    "f.kind, f.severity, count(*) FROM findings f JOIN deliveries d ON d.id = f.delivery_id GROUP BY 1, 2, 3, 4, 5, 6",
    "flagged_finding_counts": "SELECT fk.kind, d.run, d.kind, COALESCE(d.schema_name, ''), f.kind, f.severity, "
    f"count(*) FROM {_FLAGGED_BY} JOIN deliveries d ON d.id = fk.delivery_id JOIN findings f "
    "ON f.delivery_id = fk.delivery_id GROUP BY 1, 2, 3, 4, 5, 6",
    # migration 0013
    "minute_counts": "SELECT CAST(sent_at / 60 AS INTEGER), run, kind, COALESCE(schema_name, ''), verdict, count(*) "
    "FROM deliveries GROUP BY 1, 2, 3, 4, 5",
    "daily_counts": "SELECT CAST(sent_at / 86400 AS INTEGER), run, kind, COALESCE(schema_name, ''), verdict, count(*) "
    "FROM deliveries GROUP BY 1, 2, 3, 4, 5",
    "daily_finding_counts": "SELECT CAST(d.sent_at / 86400 AS INTEGER), d.run, d.kind, COALESCE(d.schema_name, ''), "
    "f.kind, f.severity, count(*) FROM findings f JOIN deliveries d ON d.id = f.delivery_id GROUP BY 1, 2, 3, 4, 5, 6",
    "hourly_flagged_counts": "SELECT CAST(d.sent_at / 3600 AS INTEGER), fk.kind, d.run, d.kind, "
    f"COALESCE(d.schema_name, ''), d.verdict, count(*) FROM {_FLAGGED_BY} JOIN deliveries d ON d.id = fk.delivery_id "
    "GROUP BY 1, 2, 3, 4, 5, 6",
    "hourly_flagged_finding_counts": "SELECT CAST(d.sent_at / 3600 AS INTEGER), fk.kind, d.run, d.kind, "
    f"COALESCE(d.schema_name, ''), f.kind, f.severity, count(*) FROM {_FLAGGED_BY} JOIN deliveries d "
    "ON d.id = fk.delivery_id JOIN findings f ON f.delivery_id = fk.delivery_id GROUP BY 1, 2, 3, 4, 5, 6, 7",
}


# The last migration: a store without it is still being created or upgraded, and readers wait for it.
LATEST_MIGRATION: str = migrations._migrations[-1].name


def open_database(path: str, *, timeout: float = 1.0) -> sqlite_utils.Database:
    """Open the store for writing: WAL, NORMAL sync, migrations applied; a new store file is created 0600."""
    if path != ":memory:" and not path.startswith("file:"):
        create_private(path)  # captured traffic is evidence: not for other users of the machine
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
