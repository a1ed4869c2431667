"""The live feed: one reader of the store's change sequence per dashboard, fanned out to every `/api/stream`.

Each stream client used to poll the store itself, four times a second, and a filtered one walked its matching rows
each time: five filtered viewers burned most of a core in the proxy's process. Here one task per event loop and
store reads each new change once, encodes it as JSON once, and publishes each read as one batch whose frames are
joined once: a subscriber that takes everything writes that same bytes object, and only a filtered one looks at the
items (`DeliveryFilter.matches`). All subscribers are woken by one event per batch; nothing is copied per
subscriber. A subscriber that falls more than `queue_size` changes behind is not buffered without bound: it is marked
overflowed, and its stream tells the browser to reconnect, which resumes from its Last-Event-ID through the
change-number index.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sqlite3
from collections import deque
from dataclasses import dataclass
from typing import Any

from clickwatch.store import reader

log = logging.getLogger("clickwatch.dashboard")

QUEUE_SIZE = 1000  # changes a subscriber may have waiting before it is told to reconnect
BATCH = 500  # changes read per query; a full batch is followed at once by the next


@dataclass(frozen=True, slots=True)
class Change:
    """One delivery as it is after change number `seq`, framed as a Server-Sent Event once for every subscriber."""

    seq: int
    item: dict[str, Any]
    frame: bytes  # event: delivery, data: the item as JSON (one line: JSON escapes newlines), id: seq


def change(item: dict[str, Any]) -> Change:
    """The Change for a delivery item as the reader returns it."""
    try:
        data = json.dumps(item, separators=(",", ":"), allow_nan=False)
    except ValueError:  # a non-finite number stored by an older version: JSON has no word for it
        data = json.dumps(_finite(item), separators=(",", ":"))
    seq = int(item["seq"])
    return Change(seq, item, f"event: delivery\ndata: {data}\nid: {seq}\n\n".encode())


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class Batch:
    """The changes of one read, in change-number order, with their frames joined once for all subscribers."""

    changes: tuple[Change, ...]
    frames: bytes
    end: int  # changes published up to and including this batch, counted from the feed's start

    @property
    def first(self) -> int:
        """The change number of the batch's first change."""
        return self.changes[0].seq


class Subscription:
    """One stream's place in the feed: the batches published after it, up to `queue_size` changes behind."""

    def __init__(self, feed: ChangeFeed, flt: reader.DeliveryFilter) -> None:
        self.feed = feed
        self.flt = flt
        self.everything = flt.is_empty()
        self.taken = feed.published  # changes published before this subscriber are not for it
        self.resets = feed.resets
        self.overflowed = False

    async def next(self, timeout: float) -> list[Batch]:
        """The batches published since the last call, waiting up to `timeout` seconds for one (none: time out).

        When this subscriber fell too far behind or the store was emptied, `overflowed` is set and nothing is returned.
        """
        feed = self.feed
        if self.taken == feed.published and self.resets == feed.resets:
            arrived = feed.arrived
            try:
                await asyncio.wait_for(arrived.wait(), timeout)
            except TimeoutError:
                return []
        if self.resets != feed.resets or feed.published - self.taken > feed.queue_size:
            self.overflowed = True
            return []
        batches = [batch for batch in feed.batches if batch.end > self.taken]
        self.taken = feed.published
        return batches


class ChangeFeed:
    """Reads the store's change sequence for all subscribers of one event loop; runs while anyone listens."""

    def __init__(self, db: str, poll_seconds: float, *, queue_size: int = QUEUE_SIZE, batch: int = BATCH) -> None:
        self.db = db
        self.poll_seconds = poll_seconds
        self.queue_size = queue_size
        self.batch = batch
        self.loop = asyncio.get_running_loop()
        self.subscribers: set[Subscription] = set()
        self.position: int | None = None  # the newest change read; None until the first read
        self.rows_read = 0  # deliveries read from the store, for all subscribers together
        self.published = 0  # changes published since the feed was made
        self.resets = 0  # times the store was emptied under the feed
        self.batches: deque[Batch] = deque()  # the last `queue_size` changes (or more), for subscribers behind
        self.arrived = asyncio.Event()  # set (and replaced) when a batch is published or the store was emptied
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._conn: sqlite3.Connection | None = None

    def subscribe(self, flt: reader.DeliveryFilter) -> Subscription:
        """A new subscriber; starts the reader if it was idle."""
        sub = Subscription(self, flt)
        self.subscribers.add(sub)
        if self._task is None or self._task.done():
            self.position = None
            self._ready.clear()
            self._task = self.loop.create_task(self._run(), name="clickwatch-live-feed")
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Forget a subscriber; the reader stops after its next wait when none is left."""
        self.subscribers.discard(sub)
        if not self.subscribers:
            self.batches.clear()

    def publish(self, changes: list[Change]) -> None:
        """Offer one read's changes to every subscriber: one batch, one wake-up."""
        self.published += len(changes)
        self.batches.append(Batch(tuple(changes), b"".join(c.frame for c in changes), self.published))
        while self.batches and self.batches[0].end <= self.published - self.queue_size:
            self.batches.popleft()
        self._wake()

    def reset(self) -> None:
        """The store was emptied under the feed: every subscriber restarts (reconnects) from the new newest."""
        self.resets += 1
        self.batches.clear()
        self._wake()

    def _wake(self) -> None:
        arrived, self.arrived = self.arrived, asyncio.Event()
        arrived.set()

    async def ready(self) -> int:
        """Wait for the reader's starting position: every change after it is published to the subscribers."""
        await self._ready.wait()
        return self.position or 0

    async def _run(self) -> None:
        failing = False
        try:
            while self.subscribers:
                try:
                    changes, reset = await asyncio.to_thread(self._read)
                except Exception as exc:  # a broken store must not end the feed: say so once, try again
                    if not failing:
                        log.warning("the live feed cannot read %s: %s", self.db, exc)
                    failing = True
                    changes, reset = [], False
                else:
                    failing = False
                self._ready.set()
                if reset:
                    self.reset()
                if changes:
                    self.publish(changes)
                if len(changes) < self.batch:
                    await asyncio.sleep(self.poll_seconds)
        finally:
            self._ready.set()
            self._close()

    def _read(self) -> tuple[list[Change], bool]:
        """In a worker thread: the changes after the position (or the starting position), and whether the store
        was reset under it."""
        conn = self._connection()
        if conn is None:
            if self.position is None:
                self.position = 0  # no store yet: everything it will hold is new
            return [], False
        try:
            if self.position is None:
                self.position = reader.last_seq(conn)
                return [], False
            items = reader.changes_after(conn, self.position, limit=self.batch)
            if not items and (newest := reader.last_seq(conn)) < self.position:
                # Everything was removed and change numbers start again: streams restart from the new newest.
                self.position = newest
                return [], True
        except sqlite3.Error:
            self._close()
            raise
        self.rows_read += len(items)
        if items:
            self.position = int(items[-1]["seq"])
        return [change(item) for item in items], False

    def _connection(self) -> sqlite3.Connection | None:
        if self._conn is None:
            try:
                self._conn = reader.connect(self.db)
            except reader.StoreUnavailable:
                return None
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
