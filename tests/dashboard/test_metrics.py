"""Prometheus metrics: fixed label sets from the start, true values, and counters that survive restarts and resets."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from clickwatch.core.config import BUILTIN_SCHEMAS, Config
from clickwatch.core.findings import FindingKind, Severity
from clickwatch.core.model import Kind
from clickwatch.dashboard.metrics import StoreCollector, registry_for
from clickwatch.store import wire
from clickwatch.store.writer import StoreWriter
from tests.dashboard.conftest import T0, UA, StoreBuilder


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_every_label_combination_exists_at_zero_on_an_empty_store(
    store_builder: Callable[..., StoreBuilder], client_for: Callable[..., TestClient]
) -> None:
    store = store_builder()
    store.close()
    samples = scrape(client_for(store.path))
    for kind in Kind:
        for verdict in ("delivered", "rejected", "failed"):
            assert value(samples, "clickwatch_deliveries_total", kind=kind.value, verdict=verdict) == 0
            assert value(samples, "clickwatch_last_delivery_timestamp_seconds", kind=kind.value, verdict=verdict) == 0
        assert value(samples, "clickwatch_delivery_duration_seconds_count", kind=kind.value) == 0
        assert value(samples, "clickwatch_delivery_duration_seconds_bucket", kind=kind.value, le="+Inf") == 0
    for finding in FindingKind:
        for severity in Severity:
            assert value(samples, "clickwatch_findings_total", finding=finding.value, severity=severity.value) == 0
    for schema in ("ProductView", "carouselViewed", "other"):
        assert value(samples, "clickwatch_events_total", schema=schema, verdict="delivered") == 0
    for name in ("clickwatch_proxy_flows_total", "clickwatch_store_dropped_total", "clickwatch_addon_errors_total"):
        assert value(samples, name) == 0
    assert value(samples, "clickwatch_store_queue_depth") == 0
    assert any(name == "clickwatch_build_info" for name, _ in samples)
    for schema in [*BUILTIN_SCHEMAS, "other"]:
        assert value(samples, "clickwatch_datalayer_events_total", schema=schema) == 0
    for reason in ("too_large", "flood", "bad_format"):
        assert value(samples, "clickwatch_observer_rejected_total", reason=reason) == 0


def test_values_follow_the_deliveries(
    store_builder: Callable[..., StoreBuilder], client_for: Callable[..., TestClient]
) -> None:
    store = store_builder()
    store.page(at=T0)
    store.event(at=T0 + 1, duration=0.03)
    store.event(at=T0 + 2, status=500, duration=0.3)
    store.event(at=T0 + 3, status=None, error="reset")
    store.event(at=T0 + 4, schema="<script>hostile</script>")
    store.close()
    samples = scrape(client_for(store.path))
    assert value(samples, "clickwatch_deliveries_total", kind="clickstream", verdict="delivered") == 2
    assert value(samples, "clickwatch_deliveries_total", kind="clickstream", verdict="rejected") == 1
    assert value(samples, "clickwatch_deliveries_total", kind="clickstream", verdict="failed") == 1
    assert value(samples, "clickwatch_events_total", schema="ProductView", verdict="delivered") == 1
    assert value(samples, "clickwatch_events_total", schema="other", verdict="delivered") == 1
    assert value(samples, "clickwatch_findings_total", finding="unknown_schema", severity="error") == 1
    assert value(samples, "clickwatch_delivery_duration_seconds_count", kind="clickstream") == 3
    assert value(samples, "clickwatch_delivery_duration_seconds_bucket", kind="clickstream", le="0.05") == 2
    assert value(samples, "clickwatch_delivery_duration_seconds_bucket", kind="clickstream", le="0.5") == 3
    assert abs(value(samples, "clickwatch_delivery_duration_seconds_sum", kind="clickstream") - 0.38) < 1e-6
    last = value(samples, "clickwatch_last_delivery_timestamp_seconds", kind="clickstream", verdict="delivered")
    assert abs(last - (T0 + 4.05)) < 1e-6
    # No label carries a captured value: URLs, visitors and hostile schemas never become label values.
    assert not any("hostile" in str(labels) or "http" in str(labels) for _, labels in samples)


def test_counters_survive_a_restart_and_a_reset(tmp_path: Path, client_for: Callable[..., TestClient]) -> None:
    path = tmp_path / "cw.db"
    for run in range(2):
        writer = StoreWriter(str(path))
        writer.start()
        # What one proxy counted while it ran: the store adds it to what earlier runs left.
        writer.count(wire.Counts(f"proxy-{run}", 1, proxy_flows=10, addon_errors=1, store_dropped=0, waiting=0))
        store = StoreBuilder(writer, path, count=run * 100)
        store.event(at=T0 + run)
        store.close()
    client = client_for(path)
    samples = scrape(client)
    assert value(samples, "clickwatch_deliveries_total", kind="clickstream", verdict="delivered") == 2
    assert value(samples, "clickwatch_proxy_flows_total") == 20
    assert value(samples, "clickwatch_addon_errors_total") == 2
    assert client.post("/api/reset").json()["removed"] == 2
    after = scrape(client)
    assert value(after, "clickwatch_deliveries_total", kind="clickstream", verdict="delivered") == 2
    assert value(after, "clickwatch_proxy_flows_total") == 20


def test_a_running_store_shows_what_it_has_written(tmp_path: Path, client_for: Callable[..., TestClient]) -> None:
    # No live numbers from the proxy: the metrics read the file, which the store writes with every batch.
    writer = StoreWriter(str(tmp_path / "cw.db"), queue_size=1)
    writer.start()
    try:
        writer.count(wire.Counts("proxy", 1, proxy_flows=7, addon_errors=0, store_dropped=2, waiting=0))
        store = StoreBuilder(writer, tmp_path / "cw.db")
        store.event(at=T0)
        store.event(at=T0 + 1)  # finds the queue full (or not, if the first was taken already)
        client = client_for(tmp_path / "cw.db")
        deadline = time.monotonic() + 10
        while value(scrape(client), "clickwatch_proxy_flows_total") != 7 and time.monotonic() < deadline:
            time.sleep(0.05)
        samples = scrape(client)
        assert value(samples, "clickwatch_proxy_flows_total") == 7
        assert value(samples, "clickwatch_store_dropped_total") >= 2
    finally:
        writer.close()
    dropped = value(scrape(client), "clickwatch_store_dropped_total")
    assert dropped == 2 + writer.dropped  # the proxy's drops and the store's own, each counted once


def test_datalayer_metrics_follow_the_pushes_and_the_rejections(
    store_builder: Callable[..., StoreBuilder], client_for: Callable[..., TestClient]
) -> None:
    # A storefront-specific push mapped to a schema clickwatch does not know: counted under "other".
    mapping = MappingProxyType({"ProductDetailsPageViewed": "ProductView", "WishlistAdded": "<b>Wishlist</b>"})
    store = store_builder(dataclasses.replace(Config(), datalayer_schemas=mapping))
    store.page(at=T0, consent="GIVEN")
    store.push("ProductDetailsPageViewed", {"productSku": "1"}, at=T0 + 1, consent=True)
    store.push("ProductDetailsPageViewed", {"productSku": "2"}, at=T0 + 2, consent=False)  # counted all the same
    store.push("WishlistAdded", {"productSku": "3"}, at=T0 + 3)
    store.push("HomePageViewed", at=T0 + 4)  # not mapped: the tag sends nothing for it, not counted
    for bad in (b"{not json", b'{"v": 2}'):
        store.writer.submit(wire.Browser("default", "127.0.0.1", UA, T0 + 5, bad, "https://shop.example", T0, "t" * 22))
    store.writer.submit(wire.Rejected((("flood", 3), ("too_large", 1))))
    store.close()
    client = client_for(store.path)
    samples = scrape(client)
    assert value(samples, "clickwatch_datalayer_events_total", schema="ProductView") == 2
    assert value(samples, "clickwatch_datalayer_events_total", schema="other") == 1
    assert value(samples, "clickwatch_datalayer_events_total", schema="AddedToCart") == 0
    assert value(samples, "clickwatch_observer_rejected_total", reason="bad_format") == 2
    assert value(samples, "clickwatch_observer_rejected_total", reason="flood") == 3
    assert value(samples, "clickwatch_observer_rejected_total", reason="too_large") == 1
    labels = {dict(labels).get("schema") for name, labels in samples if name == "clickwatch_datalayer_events_total"}
    assert labels == {*BUILTIN_SCHEMAS, "other"}  # bounded: a storefront's own names never become labels
    # Counters: a reset empties the funnel, not the totals.
    assert client.post("/api/reset").status_code == 200
    assert client.get("/api/funnel").json()["schemas"] == []
    after = scrape(client)
    assert value(after, "clickwatch_datalayer_events_total", schema="ProductView") == 2
    assert value(after, "clickwatch_observer_rejected_total", reason="flood") == 3


def test_datalayer_metrics_through_the_registry(store_builder: Callable[..., StoreBuilder]) -> None:
    store = store_builder()
    store.push("AddedToCart", {"productSku": "1", "productQty": 1}, at=T0, consent=True)
    store.close()
    registry = registry_for(StoreCollector(str(store.path)))
    assert registry.get_sample_value("clickwatch_datalayer_events_total", {"schema": "AddedToCart"}) == 1
    assert registry.get_sample_value("clickwatch_datalayer_events_total", {"schema": "ProductView"}) == 0
    assert registry.get_sample_value("clickwatch_observer_rejected_total", {"reason": "bad_format"}) == 0
    # A store that cannot be read still describes every label combination, at zero.
    empty = registry_for(StoreCollector(str(store.path) + ".missing"))
    assert empty.get_sample_value("clickwatch_datalayer_events_total", {"schema": "other"}) == 0
    assert empty.get_sample_value("clickwatch_observer_rejected_total", {"reason": "flood"}) == 0
