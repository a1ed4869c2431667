"""/api/stream through a real uvicorn: one reader of the change sequence for every client, resuming, overflow."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from starlette.middleware.base import BaseHTTPMiddleware

from clickwatch.dashboard.deps import get_feed
from clickwatch.dashboard.feed import ChangeFeed
from clickwatch.store import reader
from clickwatch.store.apply import remove_captured
from tests.dashboard.browser_fixtures import Dashboard, serve_dashboard
from tests.dashboard.conftest import T0, StoreBuilder
from tests.integration.conftest import wait_until

BURST = 200


class Follower(threading.Thread):
    """Reads one stream in a thread: events as (event name, id, data)."""

    def __init__(self, url: str, params: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(daemon=True)
        self.url, self.params, self.headers = url, params or {}, headers or {}
        self.events: list[tuple[str, str, Any]] = []
        self.connected = threading.Event()
        self.ended = threading.Event()
        self.client = httpx.Client(timeout=httpx.Timeout(10.0, read=None), trust_env=False)

    def run(self) -> None:
        fields: dict[str, str] = {}
        try:
            with self.client.stream("GET", self.url, params=self.params, headers=self.headers) as answer:
                assert answer.status_code == 200
                self.connected.set()
                for line in answer.iter_lines():
                    if line:
                        name, _, value = line.partition(":")
                        fields[name] = value.strip()
                        continue
                    if "data" in fields:
                        self.events.append(
                            (fields.get("event", "message"), fields.get("id", ""), json.loads(fields["data"]))
                        )
                    fields = {}
        except httpx.HTTPError:
            pass  # closed by stop()
        finally:
            self.connected.set()
            self.ended.set()

    def deliveries(self) -> dict[str, dict[str, Any]]:
        """The newest state of each delivery streamed, by id."""
        return {str(d["id"]): d for name, _, d in self.events if name == "delivery"}

    def stop(self) -> None:
        self.client.close()
        self.join(5)


@pytest.fixture
def store(store_builder: Callable[..., StoreBuilder]) -> Iterator[StoreBuilder]:
    builder = store_builder()
    builder.event(at=T0, schema="ProductView")
    wait_until(lambda: _readable(builder), 10.0, "the store")
    yield builder
    builder.close()


def _readable(builder: StoreBuilder) -> bool:
    try:
        conn = reader.connect(str(builder.path))
    except reader.StoreUnavailable:
        return False
    try:
        return reader.last_seq(conn) > 0
    finally:
        conn.close()


def _feed(dashboard: Dashboard) -> ChangeFeed:
    feed: ChangeFeed = dashboard.server.config.app.state.feed  # type: ignore[attr-defined]
    return feed


def test_every_client_gets_every_change_from_one_reader(store: StoreBuilder) -> None:
    with serve_dashboard(store.path) as dashboard:
        followers = [Follower(f"{dashboard.url}/api/stream") for _ in range(6)]
        followers.append(Follower(f"{dashboard.url}/api/stream", {"schema": "KeywordSearch"}))
        for follower in followers:
            follower.start()
            follower.connected.wait(10)
        feed = wait_until(lambda: _subscribed(dashboard, 7), 10.0, "seven subscribers")
        before = feed.rows_read
        first = _newest_seq(store)
        for n in range(5):
            store.event(at=T0 + 1 + n, schema="KeywordSearch" if n % 2 else "ProductView")
        wait_until(lambda: all(len(f.deliveries()) == 5 for f in followers[:6]), 10.0, "every change on every stream")
        wait_until(lambda: len(followers[6].deliveries()) == 2, 10.0, "the filtered stream's two")
        try:
            assert {d["schema_name"] for d in followers[6].deliveries().values()} == {"KeywordSearch"}
            assert all(d["verdict"] == "delivered" for d in followers[0].deliveries().values())
            # One reader: the feed read each change at most once, not once per client.
            assert feed.rows_read - before <= _newest_seq(store) - first
            assert len([f for f in [feed] if f is _feed(dashboard)]) == 1
        finally:
            for follower in followers:
                follower.stop()
        wait_until(lambda: not _feed(dashboard).subscribers, 10.0, "subscribers to leave with their clients")


def _subscribed(dashboard: Dashboard, n: int) -> ChangeFeed | None:
    feed = getattr(dashboard.server.config.app.state, "feed", None)  # type: ignore[attr-defined]
    return feed if feed is not None and len(feed.subscribers) == n and feed.position is not None else None


def _newest_seq(store: StoreBuilder) -> int:
    conn = reader.connect(str(store.path))
    try:
        return reader.last_seq(conn)
    finally:
        conn.close()


def test_resumes_after_last_event_id_and_after(store: StoreBuilder) -> None:
    store.event(at=T0 + 1, schema="KeywordSearch")
    wait_until(lambda: _newest_seq(store) >= 3, 10.0, "the second delivery")
    with serve_dashboard(store.path) as dashboard:
        everything = Follower(f"{dashboard.url}/api/stream", {"after": "0"})
        resumed = Follower(f"{dashboard.url}/api/stream", {"after": "0"}, {"Last-Event-ID": str(_newest_seq(store))})
        for follower in (everything, resumed):
            follower.start()
        wait_until(lambda: len(everything.deliveries()) == 2, 10.0, "both deliveries from the start")
        store.event(at=T0 + 2, schema="CartSnapshot")
        wait_until(lambda: len(resumed.deliveries()) == 1, 10.0, "only the new one after Last-Event-ID")
        for follower in (everything, resumed):
            follower.stop()
        assert [d["schema_name"] for d in resumed.deliveries().values()] == ["CartSnapshot"]


def test_a_client_that_falls_behind_is_told_to_reconnect_and_loses_nothing(store: StoreBuilder) -> None:
    with serve_dashboard(store.path) as dashboard:
        app = dashboard.server.config.app  # type: ignore[attr-defined]

        async def small_feed() -> ChangeFeed:
            # A queue of three: one batch of changes is offered at once, more than such a subscriber may hold.
            if getattr(app.state, "small_feed", None) is None:
                app.state.small_feed = app.state.feed = ChangeFeed(str(store.path), 0.1, queue_size=3)
            feed: ChangeFeed = app.state.small_feed
            return feed

        app.dependency_overrides[get_feed] = small_feed
        follower = Follower(f"{dashboard.url}/api/stream")
        follower.start()
        wait_until(lambda: _subscribed(dashboard, 1), 10.0, "the subscriber")
        for n in range(BURST):
            store.event(at=T0 + 1 + n, status=None)
        follower.ended.wait(10)
        follower.stop()
        names = [name for name, _, _ in follower.events]
        assert "reconnect" in names and names[-1] == "reconnect"
        last_id = follower.events[-1][1]
        assert follower.events[-1][2]["after"] == int(last_id)
        resumed = Follower(f"{dashboard.url}/api/stream", headers={"Last-Event-ID": last_id})
        resumed.start()
        wait_until(
            lambda: len(follower.deliveries().keys() | resumed.deliveries().keys()) == BURST,
            10.0,
            "the whole burst after resuming",
        )
        resumed.stop()


def test_streams_pass_the_guards_and_no_guard_handles_their_chunks(store: StoreBuilder) -> None:
    """The token guard still refuses a stream without the token and lets one with it follow every change, and no
    `http` middleware (Starlette's BaseHTTPMiddleware, a task and a queue per chunk) sits in a stream's path."""
    with serve_dashboard(store.path, token="s3cret-token-for-streams") as dashboard:
        app = dashboard.server.config.app  # type: ignore[attr-defined]
        assert [m.cls for m in app.user_middleware if issubclass(m.cls, BaseHTTPMiddleware)] == []  # type: ignore[arg-type]
        refused = httpx.get(f"{dashboard.url}/api/stream", trust_env=False, timeout=10)
        assert refused.status_code == 401
        follower = Follower(f"{dashboard.url}/api/stream", headers={"Authorization": "Bearer s3cret-token-for-streams"})
        follower.start()
        wait_until(lambda: _subscribed(dashboard, 1), 10.0, "the subscriber")
        for n in range(3):
            store.event(at=T0 + 1 + n, schema="ProductView")
        wait_until(lambda: len(follower.deliveries()) == 3, 10.0, "three deliveries through the guards")
        follower.stop()


@pytest.mark.parametrize(
    ("params", "headers", "field"),
    [
        ({}, {"Last-Event-ID": "junk"}, "Last-Event-ID"),
        ({}, {"Last-Event-ID": "-1"}, "Last-Event-ID"),
        ({}, {"Last-Event-ID": "1e300"}, "Last-Event-ID"),
        ({}, {"Last-Event-ID": "Infinity"}, "Last-Event-ID"),
        ({"after": "-1"}, {}, "after"),
        ({"after": str(2**63)}, {}, "after"),
        ({"after": "NaN"}, {}, "after"),
        ({"since": "Infinity"}, {}, "since"),
        ({"until": "1e400"}, {}, "until"),
        ({"kind": "nope"}, {}, "kind"),
    ],
)
def test_bad_stream_parameters_are_422_naming_the_field(
    store: StoreBuilder, params: dict[str, str], headers: dict[str, str], field: str
) -> None:
    with serve_dashboard(store.path) as dashboard:
        answer = httpx.get(f"{dashboard.url}/api/stream", params=params, headers=headers, trust_env=False, timeout=10)
    assert answer.status_code == 422
    assert field.lower() in json.dumps(answer.json()["detail"]).lower().replace("_", "-") or field in answer.text


def test_streams_go_on_after_everything_is_removed(store: StoreBuilder) -> None:
    """A reset of all runs numbers changes from 1 again: open streams restart there instead of waiting forever."""
    store.event(at=T0 + 1)
    wait_until(lambda: _newest_seq(store) >= 2, 10.0, "two deliveries")
    with serve_dashboard(store.path) as dashboard:
        follower = Follower(f"{dashboard.url}/api/stream")
        follower.start()
        wait_until(lambda: _subscribed(dashboard, 1), 10.0, "the subscriber")
        conn = sqlite3.connect(store.path, timeout=10)
        with conn:
            remove_captured(conn)
        conn.close()
        wait_until(lambda: follower.ended.is_set(), 10.0, "the stream to end with a reconnect")
        assert follower.events[-1][0] == "reconnect"
        resumed = Follower(f"{dashboard.url}/api/stream", headers={"Last-Event-ID": follower.events[-1][1]})
        resumed.start()
        wait_until(lambda: _subscribed(dashboard, 1), 10.0, "the resumed subscriber")
        store.event(at=T0 + 2, schema="CartSnapshot")
        wait_until(lambda: resumed.deliveries(), 10.0, "the new delivery after the reset")
        follower.stop()
        resumed.stop()
        assert [d["schema_name"] for d in resumed.deliveries().values()] == ["CartSnapshot"]
