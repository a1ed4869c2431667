"""The live feed itself: one read of the store reaches every subscriber as one bytes object; totals are shared."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import httpx
import pytest

from clickwatch.dashboard.feed import ChangeFeed, Subscription
from clickwatch.store import reader
from clickwatch.store.apply import remove_captured
from tests.dashboard.browser_fixtures import serve_dashboard
from tests.dashboard.conftest import T0, StoreBuilder
from tests.dashboard.test_live_stream import Follower
from tests.integration.conftest import wait_until

SUBSCRIBERS = 50


def run_in_thread(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """asyncio.run in a thread of its own: the browser tests' driver keeps a loop in the main thread."""
    failure: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "the feed test did not finish within 60 s"
    if failure:
        raise failure[0]


@pytest.fixture
def store(store_builder: Callable[..., StoreBuilder]) -> Iterator[StoreBuilder]:
    builder = store_builder()
    builder.event(at=T0, schema="ProductView")
    wait_until(lambda: newest_seq(builder) > 0, 10.0, "the store")
    yield builder
    builder.close()


def newest_seq(builder: StoreBuilder) -> int:
    try:
        conn = reader.connect(str(builder.path))
    except reader.StoreUnavailable:
        return 0
    try:
        return reader.last_seq(conn)
    finally:
        conn.close()


def events(chunks: list[bytes]) -> list[tuple[str, dict[str, Any]]]:
    """The (event name, data) of complete Server-Sent Events, parsed as a browser would."""
    out = []
    for frame in b"".join(chunks).decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in frame.splitlines() if line and not line.startswith(":"))
        if "data" in fields:
            out.append((fields.get("event", "message"), json.loads(fields["data"])))
    return out


def test_one_read_reaches_fifty_subscribers_as_one_bytes_object(store: StoreBuilder) -> None:
    """Every subscriber that takes everything writes the very bytes object the feed joined once per read; a filtered
    one gets only its rows; the summary and funnel are computed per run followed, not per subscriber, and go out in
    the same write as the changes."""

    async def main() -> None:
        # A long pause between reads: the five deliveries below land in the store between two reads, so one read
        # brings them all (the first read, at once, only finds the starting position).
        feed = ChangeFeed(str(store.path), poll_seconds=5.0)
        everything = [feed.subscribe(reader.DeliveryFilter()) for _ in range(SUBSCRIBERS - 5)]
        pages = [feed.subscribe(reader.DeliveryFilter(), totals=True) for _ in range(3)]
        searches = feed.subscribe(reader.DeliveryFilter(schema="KeywordSearch"), totals=True)
        other_run = feed.subscribe(reader.DeliveryFilter(run="other"), totals=True)
        start = await feed.ready()
        for sub in feed.subscribers:
            sub.sent = start
        # The totals of the first read come at once (a page opened now shows them), before any change.
        first = {sub: await sub.next(0.0) for sub in (*pages, searches, other_run)}
        assert [name for name, _ in events([first[other_run]])] == ["summary", "funnel"]
        assert sum(events([first[other_run]])[0][1]["deliveries"].values()) == 0
        reads_before, rows_before = feed.reads, feed.rows_read
        for n in range(5):
            await asyncio.to_thread(store.event, at=T0 + 1 + n, schema="KeywordSearch" if n % 2 else "ProductView")
        await asyncio.to_thread(wait_until, lambda: newest_seq(store) >= start + 5, 10.0, "five new deliveries")
        end = newest_seq(store)
        got: dict[Subscription, list[bytes]] = {sub: [] for sub in feed.subscribers}

        async def until_final(sub: Subscription) -> None:
            while sub.sent < end:
                got[sub].append(await sub.next(10.0))

        await asyncio.wait_for(asyncio.gather(*(until_final(s) for s in (*everything, *pages, searches))), 20)
        got[other_run].append(await other_run.next(0.0))  # nothing changed in run "other": nothing is sent again
        for sub in list(feed.subscribers):
            feed.unsubscribe(sub)

        assert feed.reads - reads_before == 1  # one read for the fifty
        assert feed.rows_read - rows_before == end - start  # each change read once, not once per subscriber
        assert all(len(got[sub]) == 1 for sub in everything)  # one write each
        assert len({id(got[sub][0]) for sub in everything}) == 1  # of one bytes object, joined once for all
        assert [name for name, _ in events(got[everything[0]])] == ["delivery"] * (end - start)
        assert {d["schema_name"] for name, d in events(got[searches]) if name == "delivery"} == {"KeywordSearch"}
        assert got[other_run] == [b""]

        # Totals: one summary and one funnel per run followed (the schema filter shares the funnel of all runs), in
        # the same write as the changes.
        for sub in pages:
            assert len(got[sub]) == 1
            assert [name for name, _ in events(got[sub])] == ["delivery"] * (end - start) + ["summary", "funnel"]
        assert got[pages[0]] == got[pages[1]] == got[pages[2]]
        assert {name for name, _ in events(got[searches])} == {"delivery", "funnel"}
        assert feed.totals_computed == 4 * feed.reads  # (summary, funnel) x (all runs, "other") per read, for all
        everything_summary = next(d for name, d in events(got[pages[0]]) if name == "summary")
        assert sum(everything_summary["deliveries"].values()) == end - start + 1

    run_in_thread(main)


def test_summary_and_funnel_events_are_what_the_api_answers(store: StoreBuilder) -> None:
    """A stream with `totals=true` is sent its run's summary and funnel as /api/summary and /api/funnel answer them
    (a summary only while no filter but the run is set); without it, neither; neither moves Last-Event-ID."""
    with serve_dashboard(store.path) as dashboard:
        url = f"{dashboard.url}/api/stream"
        page = Follower(url, {"totals": "true"})
        run_page = Follower(url, {"totals": "true", "run": "default"})
        filtered = Follower(url, {"totals": "true", "verdict": "rejected"})
        plain = Follower(url)
        followers = (page, run_page, filtered, plain)
        for follower in followers:
            follower.start()
            follower.connected.wait(10)
        for n in range(3):
            store.event(at=T0 + 1 + n, status=201 if n else 400)
        store.push("ProductDetailsPageViewed", {"productSku": "1"}, at=T0 + 5, consent=True)

        def latest(follower: Follower, name: str) -> dict[str, Any] | None:
            return next((data for event, _, data in reversed(follower.events) if event == name), None)

        def settled(follower: Follower) -> bool:
            summary, funnel = latest(follower, "summary"), latest(follower, "funnel")
            return (
                summary is not None
                and sum(summary["deliveries"].values()) == 4
                and funnel is not None
                and [s["pushed"] for s in funnel["schemas"]] == [1]
            )

        try:
            wait_until(lambda: settled(page) and settled(run_page), 15.0, "the summary and funnel of 4 deliveries")
            wait_until(lambda: latest(filtered, "funnel") is not None, 10.0, "the filtered stream's funnel")
            with httpx.Client(base_url=dashboard.url, trust_env=False, timeout=10) as client:
                assert latest(page, "summary") == client.get("/api/summary").json()
                assert latest(page, "funnel") == client.get("/api/funnel").json()
                assert latest(run_page, "summary") == client.get("/api/summary", params={"run": "default"}).json()
                assert latest(run_page, "funnel") == client.get("/api/funnel", params={"run": "default"}).json()
            assert latest(page, "summary")["healthy"] is False  # type: ignore[index]  # the 400
            assert latest(filtered, "summary") is None  # its summary is its own: the page asks /api/summary
            assert {event for event, _, _ in plain.events} == {"delivery"}
            # Totals carry no id: a stream resumes from its last delivery's change number.
            assert all(not event_id for event, event_id, _ in page.events if event != "delivery")
        finally:
            for follower in followers:
                follower.client.close()
    for follower in followers:  # the dashboard has stopped: their streams have ended
        follower.join(5)


def test_a_full_reset_restarts_streams_even_when_new_deliveries_come_before_the_next_read(store: StoreBuilder) -> None:
    """Change numbers only grow (migration 0014), so after a reset of every run the newest number is not lower than
    the feed's position once new deliveries have come: the feed learns of the reset from the store's count of full
    resets, and its subscribers restart (reconnect) instead of keeping rows that no longer exist."""

    async def main() -> None:
        feed = ChangeFeed(str(store.path), poll_seconds=5.0)  # the reset and the new rows land between two reads
        sub = feed.subscribe(reader.DeliveryFilter())
        start = await feed.ready()
        sub.sent = start

        def reset_then_capture() -> None:
            conn = sqlite3.connect(store.path, timeout=10)
            with conn:
                remove_captured(conn)
            conn.close()
            for n in range(3):
                store.event(at=T0 + 10 + n, schema="CartSnapshot")
            wait_until(lambda: newest_seq(store) > start + 2, 10.0, "three new deliveries after the reset")

        await asyncio.to_thread(reset_then_capture)
        assert newest_seq(store) > start  # what the feed's old rule (newest < position) could not see
        assert await sub.next(10.0) == b""  # woken by the reset at the next read, not by the three new rows
        assert sub.overflowed  # its stream tells the browser to reconnect
        assert feed.resets == 1
        assert feed.position == newest_seq(store)  # new streams start after the rows the reset left
        feed.unsubscribe(sub)

    run_in_thread(main)
