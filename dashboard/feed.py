"""The live feed: one reader of the store's change sequence per dashboard, fanned out to every `/api/stream`.

Each stream client used to poll the store itself, four times a second, and a filtered one walked its matching rows
each time: five filtered viewers burned most of a core in the proxy's process. Here one task per event loop and
store reads each new change once, encodes it as JSON once, and publishes each read as one batch whose frames are
joined once: a subscriber that takes everything writes that same bytes object, and only a filtered one looks at the
items (`DeliveryFilter.matches`). All subscribers are woken by one event per batch; nothing is copied per
subscriber. A subscriber that falls more than `queue_size` changes behind is not buffered without bound: it is marked
overflowed, and its stream tells the browser to reconnect, which resumes from its Last-Event-ID through the
change-number index.

A live page also shows its run's summary and funnel. Rather than each page asking for them every second, a stream
that asks (`totals`) is sent events `summary` and `funnel`: the feed computes each once a second for every run some
subscriber follows, one query for all of that run's viewers, and sends the frames only when they changed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sqlite3
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from clickwatch.store import reader

log = logging.getLogger("clickwatch.dashboard")

QUEUE_SIZE = 1000  # changes a subscriber may have waiting before it is told to reconnect
BATCH = 500  # changes read per query; a full batch is followed at once by the next
TOTALS_SECONDS = 1.0  # how often the summaries and funnels that subscribers follow are computed again

TotalsKey = tuple[str, str | None]  # ("summary" or "funnel", run or None for all runs)


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
class Totals:
    """A run's summary or funnel as one Server-Sent Event, framed once for every subscriber of that run."""

    frame: bytes  # event: summary or funnel, data: as /api/summary?run= or /api/funnel?run= answers; no id
    version: int  # the feed's count of totals that changed, when this one did


def totals_frame(event: str, content: dict[str, Any]) -> bytes:
    """The event for a summary or a funnel (no id: it does not move a client's Last-Event-ID)."""
    return f"event: {event}\ndata: {json.dumps(_finite(content), separators=(',', ':'))}\n\n".encode()


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

    def __init__(self, feed: ChangeFeed, flt: reader.DeliveryFilter, *, totals: bool = False) -> None:
        self.feed = feed
        self.flt = flt
        self.everything = flt.is_empty()
        # The funnel is per run whatever the filter; a summary is shared only by streams filtered by run alone.
        self.totals: tuple[TotalsKey, ...] = ()
        if totals:
            self.totals = (("summary", flt.run), ("funnel", flt.run)) if flt.only_run() else (("funnel", flt.run),)
        self.totals_sent: dict[TotalsKey, int] = {}
        self.taken = feed.published  # changes published before this subscriber are not for it
        self.resets = feed.resets
        self.sent = 0  # the newest change number this stream has written (or skipped)
        self.overflowed = False

    async def next(self, timeout: float) -> bytes:
        """What this stream writes next: its changes since the last call (and totals that changed), waiting up to
        `timeout` seconds for any (b"": nothing came). One bytes object, one write: a stream that takes everything
        and has only a batch to write gets that batch's own bytes object, shared by all such streams; anything more
        is joined (a copy costs far less than a second write to the socket).

        A filtered stream goes back to waiting when a batch holds nothing for it. When this subscriber fell too far
        behind or the store was emptied, `overflowed` is set and nothing is returned.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            feed = self.feed
            if self.resets != feed.resets or feed.published - self.taken > feed.queue_size:
                self.overflowed = True
                return b""
            out = self._take()
            if out:
                return out
            remaining = deadline - loop.time()
            if remaining <= 0:
                return b""
            try:
                await asyncio.wait_for(feed.arrived.wait(), remaining)
            except TimeoutError:
                return b""

    def _take(self) -> bytes:
        feed = self.feed
        chunks: list[bytes] = []
        if self.taken != feed.published:
            for batch in feed.batches:
                if batch.end <= self.taken:
                    continue
                if self.everything and batch.first > self.sent:
                    chunks.append(batch.frames)  # the same bytes object for every such stream
                else:
                    chunks.extend(c.frame for c in batch.changes if c.seq > self.sent and self.flt.matches(c.item))
                self.sent = max(self.sent, batch.changes[-1].seq)
            self.taken = feed.published
        for key in self.totals:
            totals = feed.totals.get(key)
            if totals is not None and totals.version > self.totals_sent.get(key, 0):
                chunks.append(totals.frame)
                self.totals_sent[key] = totals.version
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


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
        self.generation: int | None = None  # the store's count of full resets when the position was taken
        self._awaiting_store = False  # the position was taken before the store existed: its first count is no reset
        self.rows_read = 0  # deliveries read from the store, for all subscribers together
        self.reads = 0  # reads of the store (each may also compute the totals followed)
        self.published = 0  # changes published since the feed was made
        self.resets = 0  # times the store was emptied under the feed
        self.batches: deque[Batch] = deque()  # the last `queue_size` changes (or more), for subscribers behind
        self.arrived = asyncio.Event()  # set (and replaced) when a batch or totals are published or the store emptied
        self.totals: dict[TotalsKey, Totals] = {}  # the newest summary and funnel of each run followed
        self.totals_version = 0
        self.totals_computed = 0  # summaries and funnels computed, for all subscribers together
        self._totals_due = 0.0  # when (time.monotonic) the totals are computed again
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._conn: sqlite3.Connection | None = None

    def subscribe(self, flt: reader.DeliveryFilter, *, totals: bool = False) -> Subscription:
        """A new subscriber (`totals`: sent its run's summary and funnel too); starts the reader if it was idle."""
        sub = Subscription(self, flt, totals=totals)
        self.subscribers.add(sub)
        if any(key not in self.totals for key in sub.totals):
            self._totals_due = 0.0  # a run nobody followed yet: computed at the next read, not a second later
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
            self.totals.clear()

    def publish(self, changes: list[Change]) -> None:
        """Offer one read's changes to every subscriber: one batch, one wake-up."""
        self.published += len(changes)
        self.batches.append(Batch(tuple(changes), b"".join(c.frame for c in changes), self.published))
        while self.batches and self.batches[0].end <= self.published - self.queue_size:
            self.batches.popleft()
        self._wake()

    def publish_totals(self, computed: dict[TotalsKey, bytes]) -> None:
        """Keep the newest summary and funnel of each run followed; wake the subscribers when one changed."""
        changed = False
        for key, frame in computed.items():
            old = self.totals.get(key)
            if old is None or old.frame != frame:
                self.totals_version += 1
                self.totals[key] = Totals(frame, self.totals_version)
                changed = True
        for key in self.totals.keys() - computed.keys():
            del self.totals[key]  # nobody follows that run any more
        if changed:
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
                wanted: set[TotalsKey] = set()
                if time.monotonic() >= self._totals_due:
                    wanted = {key for sub in self.subscribers for key in sub.totals}
                    if wanted:
                        self._totals_due = time.monotonic() + TOTALS_SECONDS
                computed: dict[TotalsKey, bytes] = {}
                try:
                    changes, reset = await asyncio.to_thread(self._read, wanted, computed)
                except Exception as exc:  # a broken store must not end the feed: say so once, try again
                    if not failing:
                        log.warning("the live feed cannot read %s: %s", self.db, exc)
                    failing = True
                    changes, reset = [], False
                    computed.clear()  # totals of part of the runs: publishing them would drop the others' for a while
                else:
                    failing = False
                self._ready.set()
                if reset:
                    self.reset()
                if changes:
                    self.publish(changes)
                if wanted and computed:
                    self.publish_totals(computed)
                if len(changes) < self.batch:
                    await asyncio.sleep(self.poll_seconds)
        finally:
            self._ready.set()
            self._close()

    def _read(self, wanted: set[TotalsKey], computed: dict[TotalsKey, bytes]) -> tuple[list[Change], bool]:
        """In a worker thread: the changes after the position (or the starting position), and whether the store
        was reset under it; the `wanted` totals go into `computed`."""
        self.reads += 1
        conn = self._connection()
        if conn is None:
            if self.position is None:
                self.position = 0  # no store yet: everything it will hold is new
                self._awaiting_store = True
            return [], False
        try:
            generation = reader.reset_generation(conn)
            if self.position is None:
                self.position, self.generation = reader.last_seq(conn), generation
                self._compute_totals(conn, wanted, computed)
                return [], False
            if self._awaiting_store:
                self.generation, self._awaiting_store = generation, False
            elif generation != self.generation:
                # Everything was removed (change numbers go on growing, so the count of full resets says so, even
                # when new deliveries came before this read): streams restart from the new newest.
                self.position, self.generation = reader.last_seq(conn), generation
                return [], True
            items = reader.changes_after(conn, self.position, limit=self.batch)
            if generation is None and not items and (newest := reader.last_seq(conn)) < self.position:
                # A store older than the change counter: its numbers started again after a reset.
                self.position = newest
                return [], True
            self._compute_totals(conn, wanted, computed)
        except sqlite3.Error:
            self._close()
            raise
        self.rows_read += len(items)
        if items:
            self.position = int(items[-1]["seq"])
        return [change(item) for item in items], False

    def _compute_totals(
        self, conn: sqlite3.Connection, wanted: set[TotalsKey], computed: dict[TotalsKey, bytes]
    ) -> None:
        for event, run in wanted:
            if event == "summary":
                content = reader.summary(conn, reader.DeliveryFilter(run=run))
            else:
                content = reader.funnel(conn, run)
            computed[(event, run)] = totals_frame(event, content)
            self.totals_computed += 1

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
