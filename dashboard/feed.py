"""The live feed: one reader of the store's change sequence per dashboard, fanned out to every `/api/stream`.

Each stream client used to poll the store itself, four times a second, and a filtered one walked its matching rows
each time: five filtered viewers burned most of a core in the proxy's process. Here one task per event loop and
store reads each new change once, encodes it as JSON once, and offers it to every subscriber's bounded queue; a
subscriber's filter is applied in memory (`DeliveryFilter.matches`). A subscriber that falls a whole queue behind
is not buffered without bound: it is marked overflowed, and its stream tells the browser to reconnect, which
resumes from its Last-Event-ID through the change-number index.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sqlite3
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


class Subscription:
    """One stream's bounded queue of matching changes."""

    def __init__(self, flt: reader.DeliveryFilter, size: int) -> None:
        self.flt = flt
        self.queue: asyncio.Queue[Change | None] = asyncio.Queue(size)
        self.overflowed = False

    def offer(self, item: Change) -> None:
        """Queue a change if the filter takes it; on overflow, stop queueing and wake the stream to end."""
        if self.overflowed or not self.flt.matches(item.item):
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.restart()

    def restart(self) -> None:
        """Tell the stream to end and have its client reconnect (it resumes from its Last-Event-ID)."""
        self.overflowed = True
        # Make room for the wake-up: what is dropped will be read again from the store on reconnect.
        while True:
            try:
                self.queue.put_nowait(None)
                return
            except asyncio.QueueFull:
                self.queue.get_nowait()


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
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._conn: sqlite3.Connection | None = None

    def subscribe(self, flt: reader.DeliveryFilter) -> Subscription:
        """A new subscriber; starts the reader if it was idle."""
        sub = Subscription(flt, self.queue_size)
        self.subscribers.add(sub)
        if self._task is None or self._task.done():
            self.position = None
            self._ready.clear()
            self._task = self.loop.create_task(self._run(), name="clickwatch-live-feed")
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Forget a subscriber; the reader stops after its next wait when none is left."""
        self.subscribers.discard(sub)

    async def ready(self) -> int:
        """Wait for the reader's starting position: every change after it reaches the subscribers' queues."""
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
                    for sub in list(self.subscribers):
                        sub.restart()
                for item in changes:
                    for sub in list(self.subscribers):
                        sub.offer(item)
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
