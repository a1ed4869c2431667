"""One thread owns the write connection: it judges and writes the wire messages the store process (or, in thread
mode, the proxy) hands it, so nobody upstream ever waits on the disk."""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import sqlite_utils

from clickwatch.core.config import Config
from clickwatch.core.model import Answer
from clickwatch.core.pipeline import Notice, Observation, Pipeline, StoreOps
from clickwatch.store.apply import apply_ops
from clickwatch.store.metrics_schema import COUNTERS
from clickwatch.store.schema import open_database
from clickwatch.store.wire import ANSWER, Message, observation, shed_answer

log = logging.getLogger("clickwatch.store")

# Errors about a row's values, not about the database: retrying cannot help, skipping the row does.
_DATA_ERRORS = (
    sqlite3.ProgrammingError,
    sqlite3.InterfaceError,
    sqlite3.IntegrityError,
    sqlite3.DataError,
    ValueError,
    TypeError,
    OverflowError,
)

STALE_PENDING_ERROR = "clickwatch stopped before an answer was seen"
# Answers shed to their verdict are a few hundred bytes: this many is a few MB at most.
ANSWER_OVERFLOW_LIMIT = 50000
OVERFLOW_NOTE = "response headers and body not kept: the store queue was full"
EVALUATE_EVERY_SECONDS = 1.0
# How long the writer lets observations gather before a commit: a hard kill loses at most this much.
GATHER_SECONDS = 0.1


@dataclass
class WriterStats:
    """Counters a monitor can read at any time (plain ints: safe to read under the GIL)."""

    written: int = 0
    dropped: int = 0
    errors: int = 0
    failed_writes: int = 0
    last_error: str | None = None
    batches: int = 0
    last_commit_at: float = 0.0
    blocked_since: float | None = None
    held: int = 0


class _Blocked(Exception):
    """The database cannot be written now; `remaining` is what still has to be written."""

    def __init__(self, remaining: StoreOps, error: sqlite3.Error) -> None:
        super().__init__(str(error))
        self.remaining = remaining
        self.error = error


def _typed(item: Observation | Message) -> Observation:
    return observation(item) if isinstance(item, tuple) else item


def _singles(ops: StoreOps) -> Iterator[StoreOps]:
    for name in ("inserts", "answers", "consent", "findings", "signals", "pushes", "links", "rejected"):
        for row in getattr(ops, name):
            single = StoreOps()
            getattr(single, name).append(row)
            yield single
    for key, row in ops.visitors.items():
        yield StoreOps(visitors={key: row})
    if ops.counters:
        yield StoreOps(counters=ops.counters)


class StoreWriter:
    """Judges and writes observations in small batches; holds them while the database is unwritable."""

    def __init__(
        self,
        path: str,
        config: Config | None = None,
        *,
        queue_size: int = 10000,
        batch_size: int = 2000,
        gather_seconds: float = GATHER_SECONDS,
        retry_max_seconds: float = 2.0,
        clock: Callable[[], float] = time.time,
        live_counters: Callable[[], dict[str, int]] | None = None,
        on_notices: Callable[[list[Notice]], None] | None = None,
        fail_stale_pending: bool = True,
    ) -> None:
        self.path = path
        self.pipeline = Pipeline(config)
        self.batch_size = batch_size
        self.gather_seconds = gather_seconds
        self.retry_max_seconds = retry_max_seconds
        self.clock = clock
        self.stats = WriterStats()
        self._queue: queue.Queue[Observation | Message] = queue.Queue(maxsize=queue_size)
        self._stopping = threading.Event()
        self._deadline = float("inf")
        self._thread = threading.Thread(target=self._run, name="clickwatch-store-writer", daemon=True)
        self._db: sqlite_utils.Database | None = None
        self._last_drop_log = 0.0
        self._last_reject_log = 0.0
        self._rejected_since_log = 0
        self._next_evaluation = 0.0
        self._answers_overflow: deque[Answer | Message] = deque()
        # Process-lifetime counts from the proxy (flows, addon errors), added to what earlier runs stored.
        self._live_counters = live_counters or (lambda: {})
        self._counter_base: dict[str, float] | None = None
        self._on_notices = on_notices
        # False for a store that takes over from one that died while its proxy runs on: answers to the
        # requests it left pending are still on their way.
        self._fail_stale_pending = fail_stale_pending
        self._counter_carry: dict[str, float] = {}
        self._counter_lock = threading.Lock()

    @property
    def config(self) -> Config:
        """The settings used to judge what is written."""
        return self.pipeline.config

    @config.setter
    def config(self, config: Config) -> None:
        self.pipeline.config = config

    @property
    def queue_depth(self) -> int:
        """Observations waiting to be written (not counting a batch being retried)."""
        return self._queue.qsize()

    @property
    def waiting(self) -> int:
        """Observations not written yet: queued, answers kept aside, and a batch being retried."""
        return self._queue.qsize() + len(self._answers_overflow) + self.stats.held

    @property
    def counter_base(self) -> dict[str, float] | None:
        """The counter totals earlier processes stored (None until the database was first opened)."""
        return dict(self._counter_base) if self._counter_base is not None else None

    def take_over_counters(self, base: dict[str, float] | None, carry: dict[str, float]) -> None:
        """Continue the counter totals of a store that died: its base (None: read the database) plus what it
        counted itself and may not have written (`carry`)."""
        with self._counter_lock:
            if base is not None:
                self._counter_base = {name: float(base.get(name, 0.0)) + carry.get(name, 0.0) for name in COUNTERS}
            elif self._counter_base is not None:
                self._counter_base = {name: value + carry.get(name, 0.0) for name, value in self._counter_base.items()}
            else:
                self._counter_carry = dict(carry)

    def metric_counters(self) -> dict[str, float]:
        """Cumulative counters across restarts: what earlier processes stored plus this process's counts."""
        live = {"proxy_flows": 0, "addon_errors": 0, "store_dropped": 0, **self._live_counters()}
        # A bug met while decoding, judging or writing one observation counts like one in the addon's hooks.
        live["addon_errors"] += self.stats.errors
        # Drops before this writer's queue (a store process's feed) count with the ones here.
        live["store_dropped"] += self.stats.dropped
        base = self._counter_base or {}
        return {name: base.get(name, 0.0) + float(live.get(name, 0)) for name in COUNTERS}

    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    def submit(self, item: Observation | Message) -> bool:
        """Queue an observation (or its wire message) without blocking; count and report it when the queue is full."""
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            pass
        if len(self._answers_overflow) < ANSWER_OVERFLOW_LIMIT:
            # An answer completes a row already queued or written: keep its verdict, shed its bulk,
            # so no delivery is left pending for want of room.
            if isinstance(item, Answer):
                note = OVERFLOW_NOTE if item.status_code else None
                self._answers_overflow.append(replace(item, headers=(), raw_body=b"", note=note))
                return True
            if isinstance(item, tuple) and item[0] == ANSWER:
                self._answers_overflow.append(shed_answer(item, OVERFLOW_NOTE))
                return True
        self.stats.dropped += 1
        now = time.monotonic()
        if now - self._last_drop_log >= 5.0:
            self._last_drop_log = now
            log.error(
                "clickwatch store queue is full (%d waiting; database %s): %d observation(s) dropped so far",
                self._queue.maxsize,
                self.stats.last_error or "busy or slow",
                self.stats.dropped,
            )
        return False

    def close(self, timeout: float = 10.0) -> bool:
        """Write everything queued and the final decisions, waiting at most `timeout` s; True if nothing was lost."""
        self._deadline = time.monotonic() + timeout
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout + 1.0)
        left = self._queue.qsize() + len(self._answers_overflow) + self.stats.held
        if self.stats.dropped:
            log.error(
                "clickwatch store: %d observation(s) were dropped in all because the queue was full",
                self.stats.dropped,
            )
        if left:
            log.error(
                "clickwatch store: %d observation(s) could not be written before exit (%s)",
                left,
                self.stats.last_error,
            )
        return left == 0 and not self._thread.is_alive()

    # --- writer thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        ops: StoreOps | None = None
        held = 0
        backoff = 0.05
        final_done = False
        try:
            # Create the schema now, so readers find an empty store rather than no store.
            self._connect()
        except sqlite3.Error as exc:
            self._note_failure(exc, 0)
        while True:
            if ops is None:
                ops, held = self._next_ops()
                if self._stopping.is_set() and self._queue.empty() and not self._answers_overflow and not final_done:
                    # Shutdown decides what still waited on a window: no later evidence will come.
                    ops.extend(self._guarded(lambda: self.pipeline.evaluate(self.clock(), final=True)))
                    ops.counters = self._counter_rows()
                    final_done = True
                if not ops:
                    ops = None
                    if final_done:
                        break
                    continue
            self.stats.held = held
            try:
                self._write_resilient(ops)
            except _Blocked as blocked:
                ops = blocked.remaining
                self._note_failure(blocked.error, held)
                if self._stopping.is_set() and time.monotonic() >= self._deadline:
                    break
                time.sleep(min(backoff, max(0.0, self._deadline - time.monotonic())))
                backoff = min(backoff * 2, self.retry_max_seconds)
                continue
            except Exception:
                # Never let the writer thread die: the proxy would go on capturing into nothing.
                self.stats.errors += 1
                log.exception("clickwatch store: unexpected error writing a batch; it is skipped")
            else:
                self._note_success(held)
                if ops.notices and self._on_notices is not None:
                    self._on_notices(ops.notices)
            ops, held = None, 0
            self.stats.held = 0
            backoff = 0.05
        if self._db is not None:
            self._db.conn.close()

    def _next_ops(self) -> tuple[StoreOps, int]:
        ops = StoreOps()
        count = 0
        try:
            first = self._queue.get(timeout=0.1)
        except queue.Empty:
            pass
        else:
            if not self._stopping.is_set():
                # Let a batch gather: one wake-up and one commit per interval instead of one per request,
                # which is what keeps this thread from competing with the proxy's event loop for the GIL.
                self._stopping.wait(self.gather_seconds)
            batch = [first]
            while len(batch) < self.batch_size:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            # Overflowed answers go only after the queue is drained: their requests were queued before them.
            if self._queue.empty():
                while self._answers_overflow:
                    batch.append(self._answers_overflow.popleft())
            count = len(batch)
            for item in batch:
                ops.extend(self._guarded(lambda i=item: self.pipeline.process(_typed(i))))  # type: ignore[misc]
            if ops.rejected:
                self._log_rejected(ops.rejected)
        if time.monotonic() >= self._next_evaluation:
            self._next_evaluation = time.monotonic() + EVALUATE_EVERY_SECONDS
            ops.extend(self._guarded(lambda: self.pipeline.evaluate(self.clock())))
            ops.counters = self._counter_rows()
        return ops, count

    def _log_rejected(self, rejected: list[tuple[str, int, str]]) -> None:
        self._rejected_since_log += sum(n for _, n, _ in rejected)
        now = time.monotonic()
        if now - self._last_reject_log >= 5.0:
            self._last_reject_log = now
            reason, _, detail = rejected[-1]
            log.warning(
                "clickwatch: %d observe request(s) from data-layer observers dropped (latest: %s, %s)",
                self._rejected_since_log,
                reason,
                detail,
            )
            self._rejected_since_log = 0

    def _counter_rows(self) -> list[dict[str, Any]]:
        if self._counter_base is None:
            return []  # not connected yet: the base is unknown, and writing would lose earlier runs' counts
        now = time.time()
        values = self.metric_counters()
        rows = [{"name": name, "value": value, "updated_at": now} for name, value in values.items()]
        rows.append(
            {
                "name": "store_queue_depth",
                # What waits here, and what waits before this writer (in a proxy feeding a store process).
                "value": float(self.waiting + self._live_counters().get("store_waiting", 0)),
                "updated_at": now,
            }
        )
        return rows

    def _guarded(self, step: Callable[[], StoreOps]) -> StoreOps:
        try:
            return step()
        except Exception:
            # A bug in decoding or judging one observation must not stop the store: log, count, go on.
            self.stats.errors += 1
            log.exception("clickwatch could not process an observation; it is skipped")
            return StoreOps()

    def _connect(self) -> sqlite_utils.Database:
        if self._db is None:
            db = open_database(self.path)
            try:
                # Requests still pending from an earlier process lost their connection when it ended.
                if self._fail_stale_pending:
                    with db.conn:
                        db.conn.execute(
                            "UPDATE deliveries SET verdict = 'failed', error = ?, "
                            "ended_at = COALESCE(ended_at, sent_at) WHERE verdict = 'pending'",
                            (STALE_PENDING_ERROR,),
                        )
                stored = dict(db.conn.execute("SELECT name, value FROM metric_counters").fetchall())
            except sqlite3.Error:
                db.conn.close()
                raise
            with self._counter_lock:
                if self._counter_base is None:
                    self._counter_base = {
                        name: float(stored.get(name, 0.0)) + self._counter_carry.get(name, 0.0) for name in COUNTERS
                    }
            self._db = db
        return self._db

    def _write(self, ops: StoreOps) -> None:
        conn = self._connect().conn
        with conn:
            apply_ops(conn, ops)

    def _write_resilient(self, ops: StoreOps) -> None:
        """Write a batch; a row SQLite refuses is skipped alone; a database problem raises _Blocked."""
        try:
            self._write(ops)
            return
        except _DATA_ERRORS:
            pass  # a value SQLite cannot take: write the rows one by one so only the bad one is lost
        except sqlite3.Error as exc:
            raise _Blocked(ops, exc) from exc
        singles = list(_singles(ops))
        for index, single in enumerate(singles):
            try:
                self._write(single)
            except _DATA_ERRORS:
                self.stats.errors += 1
                log.exception("clickwatch could not store a row; it is skipped")
            except sqlite3.Error as exc:
                remaining = StoreOps()
                for rest in singles[index:]:
                    remaining.extend(rest)
                raise _Blocked(remaining, exc) from exc

    def _note_failure(self, exc: sqlite3.Error, held: int) -> None:
        self.stats.failed_writes += 1
        message = f"{exc.__class__.__name__}: {exc}"
        if self.stats.blocked_since is None or message != self.stats.last_error:
            log.warning(
                "clickwatch cannot write to %s (%s); %d observation(s) held, %d queued, retrying",
                self.path,
                message,
                held,
                self._queue.qsize(),
            )
        self.stats.last_error = message
        if self.stats.blocked_since is None:
            self.stats.blocked_since = time.monotonic()

    def _note_success(self, count: int) -> None:
        if self.stats.blocked_since is not None:
            log.warning(
                "clickwatch store %s is writable again after %.1f s",
                self.path,
                time.monotonic() - self.stats.blocked_since,
            )
            self.stats.blocked_since = None
            self.stats.last_error = None
        self.stats.written += count
        self.stats.batches += 1
        self.stats.last_commit_at = time.time()
