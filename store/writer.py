"""One thread owns the write connection: the proxy hands it observations and never waits on the disk."""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from core.model import Answer, RequestSeen
from core.record import RecordSettings, answer_row, request_row
from store.schema import open_database

log = logging.getLogger("clickwatch.store")

Observation = RequestSeen | Answer

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


class StoreWriter:
    """Writes observations in small batches; holds them in a bounded queue while the database is unwritable."""

    def __init__(
        self,
        path: str,
        settings: RecordSettings | None = None,
        *,
        queue_size: int = 10000,
        batch_size: int = 500,
        retry_max_seconds: float = 2.0,
    ) -> None:
        self.path = path
        self.settings = settings or RecordSettings()
        self.batch_size = batch_size
        self.retry_max_seconds = retry_max_seconds
        self.stats = WriterStats()
        self._queue: queue.Queue[Observation] = queue.Queue(maxsize=queue_size)
        self._stopping = threading.Event()
        self._deadline = float("inf")
        self._thread = threading.Thread(target=self._run, name="clickwatch-store-writer", daemon=True)
        self._db: sqlite_utils.Database | None = None
        self._last_drop_log = 0.0

    @property
    def queue_depth(self) -> int:
        """Observations waiting to be written (not counting a batch being retried)."""
        return self._queue.qsize()

    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    def submit(self, observation: Observation) -> bool:
        """Queue an observation without blocking; count and report it when the queue is full."""
        try:
            self._queue.put_nowait(observation)
            return True
        except queue.Full:
            self.stats.dropped += 1
            now = time.monotonic()
            if now - self._last_drop_log >= 5.0:
                self._last_drop_log = now
                log.error(
                    "clickwatch store queue is full (%d waiting, database: %s): %d observation(s) dropped so far",
                    self._queue.maxsize,
                    self.stats.last_error or "slow",
                    self.stats.dropped,
                )
            return False

    def close(self, timeout: float = 10.0) -> bool:
        """Write everything queued, waiting at most `timeout` seconds; True when nothing was left behind."""
        self._deadline = time.monotonic() + timeout
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout + 1.0)
        left = self._queue.qsize() + self.stats.held
        if left:
            log.error(
                "clickwatch store: %d observation(s) could not be written before exit (%s)", left, self.stats.last_error
            )
        return left == 0 and not self._thread.is_alive()

    # --- writer thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        rows: list[tuple[str, dict[str, Any]]] = []
        backoff = 0.05
        try:
            # Create the schema now, so readers find an empty store rather than no store.
            self._connect()
        except sqlite3.Error as exc:
            self._note_failure(exc, 0)
        while True:
            if not rows:
                rows = self._next_batch()
                if not rows:
                    if self._stopping.is_set() and self._queue.empty():
                        break
                    continue
            self.stats.held = len(rows)
            try:
                self._write(rows)
            except _DATA_ERRORS:
                # A value SQLite cannot take: write the rows one by one so only the bad one is lost.
                self._write_each(rows)
            except sqlite3.Error as exc:
                self._note_failure(exc, len(rows))
                if self._stopping.is_set() and time.monotonic() >= self._deadline:
                    break
                time.sleep(min(backoff, max(0.0, self._deadline - time.monotonic())))
                backoff = min(backoff * 2, self.retry_max_seconds)
                continue
            self._note_success(len(rows))
            rows = []
            self.stats.held = 0
            backoff = 0.05
        if self._db is not None:
            self._db.conn.close()

    def _next_batch(self) -> list[tuple[str, dict[str, Any]]]:
        try:
            first = self._queue.get(timeout=0.1)
        except queue.Empty:
            return []
        batch = [first]
        while len(batch) < self.batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return [row for row in map(self._to_row, batch) if row is not None]

    def _to_row(self, observation: Observation) -> tuple[str, dict[str, Any]] | None:
        try:
            if isinstance(observation, RequestSeen):
                return ("insert", request_row(observation, self.settings))
            return ("answer", answer_row(observation, self.settings))
        except Exception:
            # A bug in decoding one body must not stop the store: log it, count it, keep going.
            self.stats.errors += 1
            log.exception("clickwatch could not turn an observation into a row; it is skipped")
            return None

    def _connect(self) -> sqlite_utils.Database:
        if self._db is None:
            db = open_database(self.path)
            try:
                # Requests still pending from an earlier process lost their connection when it ended.
                with db.conn:
                    db.conn.execute(
                        "UPDATE deliveries SET verdict = 'failed', error = ?, ended_at = COALESCE(ended_at, sent_at) "
                        "WHERE verdict = 'pending'",
                        (STALE_PENDING_ERROR,),
                    )
            except sqlite3.Error:
                db.conn.close()
                raise
            self._db = db
        return self._db

    def _write(self, rows: list[tuple[str, dict[str, Any]]]) -> None:
        db = self._connect()
        inserts = [row for op, row in rows if op == "insert"]
        answers = [row for op, row in rows if op == "answer"]
        with db.conn:
            # Requests first: an answer in this batch may belong to a request in this batch.
            if inserts:
                columns = list(inserts[0])
                db.conn.executemany(
                    f"INSERT OR IGNORE INTO deliveries ({', '.join(columns)}) "
                    f"VALUES ({', '.join(':' + c for c in columns)})",
                    inserts,
                )
            if answers:
                columns = [c for c in answers[0] if c != "uid"]
                db.conn.executemany(
                    f"UPDATE deliveries SET {', '.join(f'{c} = :{c}' for c in columns)} WHERE uid = :uid",
                    answers,
                )

    def _write_each(self, rows: list[tuple[str, dict[str, Any]]]) -> None:
        for row in rows:
            try:
                self._write([row])
            except _DATA_ERRORS:
                self.stats.errors += 1
                log.exception("clickwatch could not store delivery %s; it is skipped", row[1].get("uid"))

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
