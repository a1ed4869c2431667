"""Review item (c): change numbers only grow, also after a reset of the run holding the newest changes, so a live
viewer (which follows `seq > last seen`) never misses what comes after (real writer, real SQLite, real uvicorn)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

from clickwatch.store import wire
from clickwatch.store.apply import remove_captured
from tests.dashboard.browser_fixtures import serve_dashboard
from tests.dashboard.conftest import T0, StoreBuilder
from tests.dashboard.test_live_stream import Follower, _subscribed
from tests.integration.conftest import wait_until


def _seqs(path) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        return {uid: seq for uid, seq in conn.execute("SELECT uid, seq FROM deliveries")}
    except sqlite3.OperationalError:  # the writer is still creating the store
        return {}
    finally:
        conn.close()


def _reset(store: StoreBuilder, run: str | None) -> None:
    reset = wire.Reset(f"reset-{run}-{time.time()}", run, time.time())
    store.writer.reset(reset)
    wait_until(lambda: reset.id in store.writer.resets_done, 10.0, "the reset")


def test_a_reset_of_the_run_holding_the_newest_changes_never_hands_out_a_number_again(
    store_builder: Callable[..., StoreBuilder],
) -> None:
    store = store_builder()
    for n in range(3):
        store.event(at=T0 + n, run="A")
    for n in range(5):
        store.event(at=T0 + 10 + n, run="B")  # the newest changes
    wait_until(lambda: len(_seqs(store.path)) == 8, 10.0, "both runs written")
    handed_out = max(_seqs(store.path).values())
    with serve_dashboard(store.path) as dashboard:
        live = Follower(f"{dashboard.url}/api/stream")
        live.start()
        wait_until(lambda: _subscribed(dashboard, 1), 10.0, "the viewer")
        _reset(store, "B")
        now = time.time()
        new = [store.event(at=now + 1 + n, run="A" if n % 2 else "B") for n in range(4)]
        wait_until(lambda: set(new) <= set(_seqs(store.path)), 10.0, "the new deliveries")
        seqs = _seqs(store.path)
        assert min(seqs[uid] for uid in new) > handed_out  # never a number a viewer may have seen
        # A browser that lost its stream before the reset resumes from the last number it saw.
        resumed = Follower(f"{dashboard.url}/api/stream", headers={"Last-Event-ID": str(handed_out)})
        resumed.start()
        wait_until(lambda: len(resumed.deliveries()) == 4, 10.0, "the new deliveries on the resumed stream")

        # The viewer that followed all along gets them too (at once, or after being told to reconnect).
        def followed() -> bool:
            if live.ended.is_set() and live.events and live.events[-1][0] == "reconnect":
                again = Follower(f"{dashboard.url}/api/stream", headers={"Last-Event-ID": live.events[-1][1]})
                again.start()
                wait_until(lambda: len(again.deliveries()) >= 4, 10.0, "the new deliveries after reconnecting")
                again.stop()
                return True
            return len([d for d in live.deliveries().values() if d["seq"] > handed_out]) == 4

        wait_until(followed, 10.0, "the viewer to get the new deliveries")
        live.stop()
        resumed.stop()
        wait_until(lambda: _subscribed(dashboard, 0), 10.0, "the streams to end")
    store.close()


def test_a_reset_of_everything_keeps_numbering_upwards_and_counts_the_reset(
    store_builder: Callable[..., StoreBuilder],
) -> None:
    store = store_builder()
    for n in range(4):
        store.event(at=T0 + n)
    wait_until(lambda: len(_seqs(store.path)) == 4, 10.0, "the deliveries")
    handed_out = max(_seqs(store.path).values())
    conn = sqlite3.connect(store.path, timeout=10)
    with conn:
        remove_captured(conn)
    conn.close()
    first = store.event(at=time.time() + 1)
    wait_until(lambda: first in _seqs(store.path), 10.0, "the new delivery")
    assert _seqs(store.path)[first] > handed_out
    store.close()
