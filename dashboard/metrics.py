"""Prometheus metrics read from the store's SQLite file at scrape time: true across restarts of the proxy, the
store and the dashboard, and cheap on a huge store (trigger-kept totals, counters the store writes)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from clickwatch.core import __version__
from clickwatch.core.config import BUILTIN_SCHEMAS
from clickwatch.core.findings import FindingKind, Severity
from clickwatch.core.model import Kind
from clickwatch.core.pipeline import REJECT_REASONS
from clickwatch.store import reader
from clickwatch.store.metrics_schema import COUNTERS, DURATION_BUCKETS, FINAL_VERDICTS, QUEUE_DEPTH

OTHER_SCHEMA = "other"
_COUNTER_HELP = {
    "proxy_flows": "HTTP flows through the proxy, tracked or not (traffic without deliveries means nothing is tracked)",
    "store_dropped": "Observations dropped: a bounded queue (the proxy's buffer or the store's) was full, or a store "
    "process died before writing them",
    "addon_errors": "Exceptions inside the clickwatch addon (each logged; the flow went on untouched)",
    "observer_pages_untouched": "Storefront pages passed on without the data-layer observer (their "
    "Content-Security-Policy, no place for it in their first 64 KB, or an encoding it cannot read)",
    "passthrough_connections": "Connections passed through without interception under --storefront (TLS tunnels to "
    "other hosts, and plain-HTTP requests to other hosts forwarded unjudged)",
}


class StoreCollector(Collector):
    """Builds every clickwatch metric from what the store holds: trigger-kept totals and the counters it writes."""

    def __init__(self, db: str, schemas: Iterable[str] = BUILTIN_SCHEMAS) -> None:
        self.db = db
        self.schemas = sorted(schemas)

    def collect(self) -> Iterator[Metric]:
        build = GaugeMetricFamily("clickwatch_build_info", "clickwatch version", labels=["version"])
        build.add_metric([__version__], 1.0)
        yield build
        try:
            conn = reader.connect(self.db)
        except reader.StoreUnavailable:
            conn = None
        try:
            yield from self._families(conn)
        finally:
            if conn is not None:
                conn.close()

    def _rows(self, conn: sqlite3.Connection | None, sql: str) -> list[sqlite3.Row]:
        if conn is None:
            return []
        try:
            return conn.execute(sql).fetchall()
        except sqlite3.Error:
            return []  # an older store without metric tables: the zeros still describe it

    def _families(self, conn: sqlite3.Connection | None) -> Iterator[Metric]:
        yield from self._deliveries(conn)
        yield from self._events(conn)
        yield from self._findings(conn)
        yield self._durations(conn)
        yield from self._counters(conn)

    def _deliveries(self, conn: sqlite3.Connection | None) -> Iterator[Metric]:
        """Deliveries by kind and final verdict, when the last of each ended, and those still pending."""
        kinds = [k.value for k in Kind]
        totals = {(r["kind"], r["verdict"]): r for r in self._rows(conn, "SELECT * FROM metric_deliveries")}
        deliveries = CounterMetricFamily(
            "clickwatch_deliveries", "Tracking calls by kind and final verdict", labels=["kind", "verdict"]
        )
        last = GaugeMetricFamily(
            "clickwatch_last_delivery_timestamp_seconds",
            "When the last delivery of this kind ended with this verdict (0: never)",
            labels=["kind", "verdict"],
        )
        for kind in kinds:
            for verdict in FINAL_VERDICTS:
                row = totals.get((kind, verdict))
                deliveries.add_metric([kind, verdict], float(row["n"]) if row else 0.0)
                last.add_metric([kind, verdict], float(row["last_at"] or 0.0) if row else 0.0)
        yield deliveries
        yield last

        pending_rows = self._rows(
            conn, "SELECT kind, SUM(n) AS n FROM delivery_counts WHERE verdict = 'pending' GROUP BY kind"
        )
        pending_by_kind = {r["kind"]: r["n"] for r in pending_rows}
        pending = GaugeMetricFamily(
            "clickwatch_deliveries_pending", "Tracking calls sent, not answered yet", labels=["kind"]
        )
        for kind in kinds:
            pending.add_metric([kind], float(pending_by_kind.get(kind, 0)))
        yield pending

    def _events(self, conn: sqlite3.Connection | None) -> Iterator[Metric]:
        """Clickstream events by schema and verdict, data-layer pushes by schema, observer reports dropped."""
        events: dict[tuple[str, str], float] = {
            (s, v): 0.0 for s in [*self.schemas, OTHER_SCHEMA] for v in FINAL_VERDICTS
        }
        for row in self._rows(conn, "SELECT * FROM metric_events"):
            schema = row["schema_name"] if row["schema_name"] in self.schemas else OTHER_SCHEMA
            if (schema, row["verdict"]) in events:
                events[(schema, row["verdict"])] += float(row["n"])
        family = CounterMetricFamily(
            "clickwatch_events", "Clickstream events by hybris-schema and final verdict", labels=["schema", "verdict"]
        )
        for (schema, verdict), value in events.items():
            family.add_metric([schema, verdict], value)
        yield family

        pushed = dict.fromkeys([*self.schemas, OTHER_SCHEMA], 0.0)
        for row in self._rows(conn, "SELECT schema_name, n FROM metric_datalayer"):
            pushed[row["schema_name"] if row["schema_name"] in self.schemas else OTHER_SCHEMA] += float(row["n"])
        yield _by_label(
            "clickwatch_datalayer_events",
            "Data-layer pushes the observer saw that the tag should send as clickstream events, by hybris-schema",
            "schema",
            pushed,
        )

        rejected = dict.fromkeys(REJECT_REASONS, 0.0)
        for row in self._rows(conn, "SELECT reason, n FROM metric_observer_rejected"):
            if row["reason"] in rejected:
                rejected[row["reason"]] = float(row["n"])
        yield _by_label(
            "clickwatch_observer_rejected",
            "Reports from the data-layer observer answered and dropped, by reason (docs/observer.md)",
            "reason",
            rejected,
        )

    def _findings(self, conn: sqlite3.Connection | None) -> Iterator[Metric]:
        """Findings by kind and severity."""
        found = {(k.value, s.value): 0.0 for k in FindingKind for s in Severity}
        for row in self._rows(conn, "SELECT * FROM metric_findings"):
            if (row["kind"], row["severity"]) in found:
                found[(row["kind"], row["severity"])] = float(row["n"])
        findings = CounterMetricFamily(
            "clickwatch_findings", "Findings by kind and severity", labels=["finding", "severity"]
        )
        for (finding, severity), value in found.items():
            findings.add_metric([finding, severity], value)
        yield findings

    def _durations(self, conn: sqlite3.Connection | None) -> Metric:
        """Time from request to response of answered deliveries, by kind."""
        kinds = [k.value for k in Kind]
        buckets: dict[str, dict[float, float]] = {k: dict.fromkeys(DURATION_BUCKETS, 0.0) for k in kinds}
        for row in self._rows(conn, "SELECT kind, le, n FROM metric_durations"):
            le = float("inf") if row["le"] >= 1e308 else float(row["le"])
            if row["kind"] in buckets and le in buckets[row["kind"]]:
                buckets[row["kind"]][le] = float(row["n"])
        sums = {r["kind"]: float(r["sum"]) for r in self._rows(conn, "SELECT kind, sum FROM metric_duration_sums")}
        histogram = HistogramMetricFamily(
            "clickwatch_delivery_duration_seconds",
            "Time from request to response of answered deliveries",
            labels=["kind"],
        )
        for kind in kinds:
            histogram.add_metric(
                [kind],
                buckets=[("+Inf" if le == float("inf") else repr(le), n) for le, n in buckets[kind].items()],
                sum_value=sums.get(kind, 0.0),
            )
        return histogram

    def _counters(self, conn: sqlite3.Connection | None) -> Iterator[Metric]:
        """The proxy's and the store's own counters, and the store's queue depth, as the store wrote them."""
        stored = {r["name"]: float(r["value"]) for r in self._rows(conn, "SELECT name, value FROM metric_counters")}
        for name in COUNTERS:
            counter = CounterMetricFamily(f"clickwatch_{name}", _COUNTER_HELP[name])
            counter.add_metric([], stored.get(name, 0.0))
            yield counter
        queue = GaugeMetricFamily("clickwatch_store_queue_depth", "Observations waiting to be written to the store")
        queue.add_metric([], stored.get(QUEUE_DEPTH, 0.0))
        yield queue


def _by_label(name: str, documentation: str, label: str, values: dict[str, float]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value_label, value in values.items():
        family.add_metric([value_label], value)
    return family


def registry_for(collector: StoreCollector) -> CollectorRegistry:
    """An explicit registry holding only clickwatch's metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The text exposition and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST
