"""The reader's side of the data layer: a visitor's pushes and what became of them, and the funnel.

Rows are written the way the proxy writes them: observations through core.pipeline.Pipeline, the operations
through store.apply.apply_ops, each batch in its own transaction. Nothing is evaluated unless a test says so,
so a push can still be waiting for its clickstream POST.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from clickwatch.core.model import Answer, BrowserReport, Kind, RequestSeen
from clickwatch.core.pipeline import Observation, Pipeline, StoreOps
from clickwatch.store import reader
from clickwatch.store.apply import apply_ops
from clickwatch.store.schema import LATEST_MIGRATION, migrations, open_database

T0 = 1_790_000_000.0
UA = "Mozilla/5.0 reader-test"


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = open_database(str(path))
        self.pipeline = Pipeline()
        self.count = 0

    def apply(self, ops: StoreOps) -> None:
        with self.db.conn:
            apply_ops(self.db.conn, ops)

    def feed(self, observation: Observation) -> None:
        self.apply(self.pipeline.process(observation))

    def evaluate(self, now: float) -> None:
        self.apply(self.pipeline.evaluate(now))

    def observe(self, at: float, *events: dict[str, object], run: str = "default", page: str = "page-0001") -> None:
        timed = [{"t": at * 1000, **event} for event in events]
        batch = {"v": 1, "page": page, "url": "https://shop.example/", "sent": at * 1000, "events": timed}
        self.feed(
            BrowserReport(
                run, "127.0.0.1", UA, at, json.dumps(batch).encode(), "https://shop.example", 0.0, page.ljust(22, "-")
            )
        )

    def clickstream(self, at: float, schema: str, body: dict[str, object], status: int = 201) -> str:
        self.count += 1
        uid = f"uid{self.count}"
        self.feed(
            RequestSeen(
                uid, "default", Kind.CLICKSTREAM, None, "POST", "https://t.example/edge/clickstreamEvents",
                "t.example", "/edge/clickstreamEvents", "127.0.0.1", UA,
                (("hybris-schema", f"context/commerce/{schema}"), ("consent-reference", "cr")),
                json.dumps(body).encode(), at,
            )
        )  # fmt: skip
        self.feed(Answer(uid, Kind.CLICKSTREAM, at, at + 0.05, status))
        return uid

    def reader(self) -> sqlite3.Connection:
        return reader.connect(str(self.path))


def consent(granted: bool) -> dict[str, object]:
    return {"type": "push", "name": "ConsentChanged", "data": {"granted": granted}}


def push(name: str, **data: object) -> dict[str, object]:
    return {"type": "push", "name": name, "data": data}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "cw.db")


def timeline(store: Store, **kwargs: object) -> dict:
    conn = store.reader()
    try:
        visitor = reader.list_visitors(conn)[0]["visitor"]
        result = reader.visitor_timeline(conn, visitor, **kwargs)  # type: ignore[arg-type]
        assert result is not None
        return result
    finally:
        conn.close()


def outcomes(store: Store) -> list[tuple[str, str | None]]:
    return [(p["name"], p["outcome"]) for p in timeline(store)["pushes"] if p["type"] == "push"]


def test_a_push_waits_for_its_post_then_is_sent_or_not_sent(store: Store) -> None:
    store.observe(T0, {"type": "page"}, consent(True), push("ProductDetailsPageViewed", productSku="7"))
    store.observe(T0 + 1, push("AddedToCart", productSku="7", productQty=1))
    assert outcomes(store) == [
        ("ConsentChanged", None),
        ("ProductDetailsPageViewed", "unmatched"),
        ("AddedToCart", "unmatched"),
    ]
    uid = store.clickstream(T0 + 0.3, "ProductView", {"productSku": "7"})
    store.evaluate(T0 + 60)  # the reconcile window of the cart push has passed
    assert outcomes(store) == [
        ("ConsentChanged", None),
        ("ProductDetailsPageViewed", "sent"),
        ("AddedToCart", "not_sent"),
    ]
    pushes = {p["name"]: p for p in timeline(store)["pushes"]}
    conn = store.reader()
    delivery_id = conn.execute("SELECT id FROM deliveries WHERE uid = ?", (uid,)).fetchone()[0]
    conn.close()
    assert pushes["ProductDetailsPageViewed"]["delivery_uid"] == uid
    assert pushes["ProductDetailsPageViewed"]["delivery_id"] == delivery_id


def test_a_push_without_consent_is_withheld_and_owes_nothing(store: Store) -> None:
    store.observe(T0, consent(False), push("ProductDetailsPageViewed", productSku="7"))
    store.evaluate(T0 + 60)
    assert outcomes(store) == [("ConsentChanged", None), ("ProductDetailsPageViewed", "withheld")]
    assert [e["kind"] for e in timeline(store)["timeline"] if e["type"] == "finding"] == []


def test_two_pushes_never_sent_at_one_moment_are_both_marked(store: Store) -> None:
    store.observe(T0, consent(True), push("AddedToCart", productSku="1"), push("AddedToCart", productSku="2"))
    store.evaluate(T0 + 60)
    assert outcomes(store) == [("ConsentChanged", None), ("AddedToCart", "not_sent"), ("AddedToCart", "not_sent")]


def test_pushes_are_bounded_like_the_timeline(store: Store) -> None:
    # (Each event before its batch was sent: an event stamped after it is not the observer's.)
    store.observe(T0, *[push("HomePageViewed", n=n) | {"t": (T0 - 6 + n) * 1000} for n in range(6)], consent(True))
    pushes = timeline(store, limit=3)["pushes"]
    assert [p["data"] for p in pushes] == [{"n": 0}, {"n": 1}, {"n": 2}]  # the oldest, in time order


def test_pushes_are_found_through_the_visitors_runs_index(store: Store) -> None:
    store.observe(T0, consent(True))
    store.observe(T0 + 1, consent(True), run="second")
    conn = store.reader()
    try:
        runs = {r["run"] for r in reader.list_visitors(conn)}
        assert runs == {"default", "second"}
        visitor = reader.list_visitors(conn)[0]["visitor"]
        assert len(reader.visitor_timeline(conn, visitor)["pushes"]) == 2  # type: ignore[index]
        assert len(reader.visitor_timeline(conn, visitor, "second")["pushes"]) == 1  # type: ignore[index]
        plan = " ".join(
            row[3]
            for row in conn.execute(
                "EXPLAIN QUERY PLAN SELECT dl.id FROM datalayer dl LEFT JOIN deliveries d ON d.uid = dl.delivery_uid "
                "WHERE dl.run IN (?, ?) AND dl.visitor = ? ORDER BY dl.at, dl.id LIMIT 10",
                ["default", "second", visitor],
            )
        )
        assert "USING INDEX datalayer_run_visitor_at" in plan
    finally:
        conn.close()


def test_funnel_reads_the_count_tables(store: Store) -> None:
    store.observe(T0, consent(True), push("ProductDetailsPageViewed", productSku="7"), push("CartSnapshot"))
    store.clickstream(T0 + 0.2, "ProductView", {"productSku": "7"})
    store.clickstream(T0 + 0.4, "ProductView", {"productSku": "8"}, status=500)
    store.observe(T0 + 1, consent(False), push("ProductDetailsPageViewed", productSku="9"), run="later")
    conn = store.reader()
    try:
        assert reader.funnel(conn) == {
            "run": None,
            "schemas": [
                {"schema": "CartSnapshot", "pushed": 1, "pushed_with_consent": 1, "sent": 0, "delivered": 0},
                {"schema": "ProductView", "pushed": 2, "pushed_with_consent": 1, "sent": 2, "delivered": 1},
            ],
        }
        assert reader.funnel(conn, "later")["schemas"] == [
            {"schema": "ProductView", "pushed": 1, "pushed_with_consent": 0, "sent": 0, "delivered": 0}
        ]
        # Only the count tables are read, never the datalayer or deliveries rows.
        statements: list[str] = []
        conn.set_trace_callback(statements.append)
        reader.funnel(conn)
        conn.set_trace_callback(None)
        assert statements and all("datalayer_counts" in s or "delivery_counts" in s for s in statements)
    finally:
        conn.close()


def test_a_store_still_being_migrated_is_not_read(tmp_path: Path) -> None:
    assert [m.name for m in migrations._migrations][-1] == LATEST_MIGRATION  # kept in step with the schema
    path = tmp_path / "cw.db"
    open_database(str(path)).conn.close()
    reader.connect(str(path)).close()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("DELETE FROM _sqlite_migrations WHERE name = ?", (LATEST_MIGRATION,))
    conn.close()
    with pytest.raises(reader.StoreUnavailable, match="being created or upgraded"):
        reader.connect(str(path))
