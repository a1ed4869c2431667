"""The store's writer: one thread owns the write connection, judges the wire messages handed to it (by the store
process, or by the proxy in thread mode) and writes them with the counters, so nobody upstream waits on the disk.

It owns the counters (`metric_counters`): each batch adds the increments it has (the proxy's Counts, its own
errors and drops) in the same transaction as the rows it writes, and records each Counts' sequence number, so
counts handed again after a store died are added once.

A reset (wire.Reset) is a barrier: what was handed in before it is written, then removed in the same transaction;
the judge forgets the run's visitors; what comes after it but was captured before it is dropped. `settled` says
how many observations handed in (in order) are written or dropped, so a proxy whose store process died can hand
the rest to the next one. Decisions a dead store left pending are decided when the next one starts; a store that
takes over first lets the proxy hand again what the dead one had not settled (ending with a Counts), and leaves the
calls handed again to its own judge: they get their real decision, never also the dead store's "unknown".
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from clickwatch.core.config import Config
from clickwatch.core.findings import FindingKind
from clickwatch.core.pipeline import Notice, Pipeline, StoreOps
from clickwatch.core.settings import default
from clickwatch.store.apply import apply_ops, next_changes, remove_captured
from clickwatch.store.inbox import Inbox
from clickwatch.store.metrics_schema import COUNTERS, QUEUE_DEPTH
from clickwatch.store.schema import open_database
from clickwatch.store.wire import (
    Blocked,
    Browser,
    Counts,
    Observed,
    Request,
    Reset,
    Storefront,
    Worker,
    observation,
)

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
# Why decisions left pending by an earlier store are settled as unknown: its memory of the visitors went with it.
DIED_BEFORE_DECIDING = "the store process died before deciding"
STOPPED_BEFORE_DECIDING = "clickwatch stopped before deciding"
# Resets whose outcome the store reports (the proxy waits for its own, so a few are plenty).
RESETS_REMEMBERED = 64
# When each observation was captured: what a reset compares with its own time.
_CAPTURED_AT: dict[type, int] = {cls: cls._fields.index(name) for cls, name in (
    (Request, "sent_at"), (Storefront, "request_at"), (Browser, "received_at"), (Blocked, "at"),
    (Worker, "at"),
)}  # fmt: skip
EVALUATE_EVERY_SECONDS = 1.0
# How long the writer lets observations gather before a commit: a hard kill loses at most this much.
GATHER_SECONDS = 0.1


@dataclass
class WriterStats:
    """Counters a monitor can read at any time (plain ints: safe to read under the GIL)."""

    written: int = 0
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


class _Tally:
    """Counter increments not written yet, and the last Counts taken from each source."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.increments = dict.fromkeys(COUNTERS, 0)
        self.fed: dict[str, int] = {}
        # Per source, the last Counts taken (None until read from the database: a replacement store must not add
        # again what the store it replaces had written); counts that come sooner wait in `early`.
        self.taken: dict[str, int] | None = None
        self.early: list[Counts] = []
        self.proxy_waiting = 0

    def add(self, counts: Counts) -> None:
        """Take one Counts, unless it was taken (and written) before; call with the lock held."""
        assert self.taken is not None
        if counts.seq <= self.taken.get(counts.source, 0):
            return
        self.taken[counts.source] = self.fed[counts.source] = counts.seq
        self.increments["proxy_flows"] += counts.proxy_flows
        self.increments["addon_errors"] += counts.addon_errors
        self.increments["passthrough_connections"] += counts.passthrough_connections
        self.increments["observer_pages_untouched"] += counts.observer_pages_untouched
        self.increments["store_dropped"] += counts.store_dropped


class StoreWriter:
    """Judges and writes observations in small batches; holds them while the database is unwritable."""

    def __init__(
        self,
        path: str,
        config: Config | None = None,
        *,
        queue_size: int = default("queue_size"),
        queue_bytes: int = default("queue_bytes"),
        batch_size: int = 2000,
        gather_seconds: float = GATHER_SECONDS,
        retry_max_seconds: float = 2.0,
        clock: Callable[[], float] = time.time,
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
        self._inbox = Inbox(queue_size, self._why_full, queue_bytes)
        # Observations handed in (dropped or not), and the arrival number of each one in the inbox, in order:
        # `settled`, the prefix of them that is written or dropped, follows from the oldest still waiting.
        self._arrivals = threading.Lock()
        self._arrived = 0
        self._marks: deque[int] = deque()
        self.settled = 0
        self.progress = threading.Event()  # set when `settled` moves: the store process reports it at once
        # Resets: the one being written, when each run (None: all) was last reset, what each one removed.
        self._reset_due: Reset | None = None
        self._reset_at: dict[str | None, float] = {}
        self.resets_done: dict[str, int] = {}
        self._orphans_settled = False
        self._stopping = threading.Event()
        self._deadline = float("inf")
        self._thread = threading.Thread(target=self._run, name="clickwatch-store-writer", daemon=True)
        self._db: sqlite_utils.Database | None = None
        self._last_reject_log = 0.0
        self._rejected_since_log = 0
        self._next_evaluation = 0.0
        self._tally = _Tally()
        self._counted_errors = 0
        self._counted_drops = 0
        # Per source, the last Counts committed: what a proxy may forget.
        self.confirmed: dict[str, int] = {}
        self._on_notices = on_notices
        # False for a store that takes over from one that died while its proxy runs on: answers to the
        # requests it left pending are still on their way.
        self._fail_stale_pending = fail_stale_pending
        # A store taking over: the calls the proxy hands again (their uids), up to the first Counts, which ends
        # what is handed again. Their consent is decided by this store's judge, so they are no orphans.
        self._handed_again: set[str] = set()
        self._handed_again_lock = threading.Lock()  # added to by the thread that submits, read by the writer
        self._handed_again_in = threading.Event()
        if fail_stale_pending:
            self._handed_again_in.set()

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
        return len(self._inbox)

    @property
    def waiting(self) -> int:
        """Observations not written yet: queued, and a batch being retried."""
        return len(self._inbox) + self.stats.held

    @property
    def dropped(self) -> int:
        """Observations dropped because the queue was full."""
        return self._inbox.dropped

    @property
    def connected(self) -> bool:
        """Whether the database was opened (and its schema is in place)."""
        return self._db is not None

    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    def submit(self, message: Observed) -> bool:
        """Queue an observation without blocking; False if the queue was full and it was dropped (and counted)."""
        with self._arrivals:
            self._arrived += 1
            if not self._inbox.put(message):
                return False  # dropped: not handed again either, so an orphan if the dead store left it pending
            self._marks.append(self._arrived)
        if type(message) is Request and not self._handed_again_in.is_set():
            with self._handed_again_lock:
                self._handed_again.add(message.uid)
        return True

    def reset(self, message: Reset) -> None:
        """Queue a reset behind everything handed in before it; `resets_done` says when it is done."""
        self._inbox.put_control(message)

    def count(self, counts: Counts) -> None:
        """Add a proxy's Counts to the counters with the next batch written."""
        # The first Counts ends what a proxy hands again to a store taking over (StoreLink._replace_backend).
        self._handed_again_in.set()
        tally = self._tally
        with tally.lock:
            tally.proxy_waiting = counts.waiting
            if tally.taken is None:
                tally.early.append(counts)
            else:
                tally.add(counts)

    def _why_full(self) -> str:
        return f"store queue is full (database {self.stats.last_error or 'busy or slow'})"

    def close(self, timeout: float = 10.0) -> bool:
        """Write everything queued and the final decisions, waiting at most `timeout` s; True if nothing was lost."""
        self._deadline = time.monotonic() + timeout
        self._stopping.set()
        self._inbox.wake()
        if self._thread.is_alive():
            self._thread.join(timeout + 1.0)
        left = len(self._inbox) + self.stats.held
        if self.dropped:
            log.error(
                "clickwatch store: %d observation(s) were dropped in all because the queue was full", self.dropped
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
                if self._stopping.is_set() and not self._inbox and not final_done:
                    # Shutdown decides what still waited on a window: no later evidence will come.
                    ops.extend(self._guarded(lambda: self.pipeline.evaluate(self.clock(), final=True)))
                    ops.counters += self._counter_rows(gauge=True)
                    final_done = True
                if not ops and self._reset_due is None:
                    ops = None
                    if final_done:
                        break
                    continue
            self.stats.held = held
            try:
                self._write_resilient(ops, self._reset_due)
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
                self.confirmed.update((row["source"], row["seq"]) for row in ops.counters if "source" in row)
                if ops.notices and self._on_notices is not None:
                    self._on_notices(ops.notices)
            ops, held = None, 0
            self.stats.held = 0
            self._settle()
            backoff = 0.05
        if self._db is not None:
            self._db.conn.close()

    def _next_ops(self) -> tuple[StoreOps, int]:
        ops = StoreOps()
        count = 0
        if not self._stopping.is_set() and self._inbox.wait(0.1):
            # Let a batch gather: one wake-up and one commit per interval instead of one per request,
            # which is what keeps this thread from competing with the proxy's event loop for the GIL.
            self._stopping.wait(self.gather_seconds)
        # A reset ends a batch: what came before it is written, then removed, in one transaction.
        batch = self._inbox.take(self.batch_size, until=Reset)
        if batch:
            count = len(batch) - (type(batch[-1]) is Reset)
            with self._arrivals:
                for _ in range(count):
                    self._marks.popleft()
            for item in batch:
                if type(item) is Reset:
                    self._begin_reset(item)
                elif not (self._reset_at and self._captured_before_reset(item)):  # type: ignore[arg-type]
                    ops.extend(self._guarded(lambda i=item: self.pipeline.process(observation(i))))  # type: ignore[misc]
            if ops.rejected:
                self._log_rejected(ops.rejected)
        gauge = time.monotonic() >= self._next_evaluation
        if gauge:
            self._next_evaluation = time.monotonic() + EVALUATE_EVERY_SECONDS
            ops.extend(self._guarded(lambda: self.pipeline.evaluate(self.clock())))
        ops.counters += self._counter_rows(gauge)
        return ops, count

    def _settle(self) -> None:
        """After a batch: every observation handed in before the oldest one waiting is written or dropped."""
        with self._arrivals:
            settled = self._marks[0] - 1 if self._marks else self._arrived
        if settled != self.settled:
            self.settled = settled
            self.progress.set()

    def _begin_reset(self, reset: Reset) -> None:
        self._guarded(lambda: self._forget(reset.run))
        if reset.run is None:
            self._reset_at = {None: reset.at}
        else:
            self._reset_at[reset.run] = max(reset.at, self._reset_at.get(reset.run, reset.at))
        self._reset_due = reset

    def _forget(self, run: str | None) -> StoreOps:
        self.pipeline.judge.forget(run)
        return StoreOps()

    def _captured_before_reset(self, message: Observed) -> bool:
        """Whether an observation handed in after a reset was captured before it (a late hook, folded pages)."""
        index = _CAPTURED_AT.get(type(message))
        if index is None:
            return False  # an answer: the judge forgot its request, and its row is gone
        run: Any = getattr(message, "run")  # noqa: B009 (every class with a capture time has a run)
        at: Any = message[index]
        latest = max(self._reset_at.get(run, -math.inf), self._reset_at.get(None, -math.inf))
        return bool(at < latest)

    def _finish_reset(self, reset: Reset, removed: int) -> None:
        self.resets_done[reset.id] = removed
        while len(self.resets_done) > RESETS_REMEMBERED:
            del self.resets_done[next(iter(self.resets_done))]
        if self._reset_due is reset:
            self._reset_due = None
        log.info("clickwatch store: %d delivery(ies) of %s removed by a reset", removed, reset.run or "every run")

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

    def _counter_rows(self, gauge: bool) -> list[dict[str, Any]]:
        """Rows for apply_ops: counter increments taken now, the sources they came from, and (if `gauge`) the
        queue depth; none before the database was read (a replacement store must know what was written)."""
        tally = self._tally
        with tally.lock:
            if tally.taken is None:
                return []
            increments, tally.increments = tally.increments, dict.fromkeys(COUNTERS, 0)
            fed, tally.fed = tally.fed, {}
            proxy_waiting = tally.proxy_waiting
        # A bug met while decoding, judging or writing one observation counts like one in the addon's hooks.
        errors, drops = self.stats.errors, self.dropped
        increments["addon_errors"] += errors - self._counted_errors
        increments["store_dropped"] += drops - self._counted_drops
        self._counted_errors, self._counted_drops = errors, drops
        now = time.time()
        rows: list[dict[str, Any]] = [
            {"name": name, "add": float(n), "updated_at": now} for name, n in increments.items() if n
        ]
        rows += [{"source": source, "seq": seq, "updated_at": now} for source, seq in fed.items()]
        if gauge:
            # What waits here, and what waits before this writer (in a proxy feeding a store process).
            waiting = float(self.waiting + proxy_waiting)
            rows.append({"name": QUEUE_DEPTH, "set": waiting, "updated_at": now})
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
                feeds = db.conn.execute("SELECT source, seq FROM counter_feeds").fetchall()
            except sqlite3.Error:
                db.conn.close()
                raise
            tally = self._tally
            with tally.lock:
                tally.taken = {str(source): int(seq) for source, seq in feeds}
                for counts in tally.early:
                    tally.add(counts)
                tally.early = []
            self._db = db
        return self._db

    def _write(self, ops: StoreOps, reset: Reset | None = None) -> int:
        """Write a batch (then the reset it ends with, if any) in one transaction; the deliveries the reset removed."""
        conn = self._connect().conn
        removed = 0
        # Taking over: orphans are settled once what the proxy hands again is all in (its first Counts), however long
        # that takes; batches before it are written as usual, and a call handed again is never an orphan.
        settle = not self._orphans_settled and (self._handed_again_in.is_set() or self._stopping.is_set())
        with conn:
            if settle:
                self._settle_orphans(conn)
            apply_ops(conn, ops)
            if reset is not None:
                removed = remove_captured(conn, reset.run)
        if settle:
            self._orphans_settled = True
            with self._handed_again_lock:
                self._handed_again = set()
        return removed

    def _settle_orphans(self, conn: sqlite3.Connection) -> None:
        """Consent decisions an earlier store left pending: unknown now, with a finding per visitor saying why.

        Its judge's memory of those visitors went with it, so nobody can decide them any more; a check waiting for
        them would wait for ever. (Their verdicts: failed at a start, see _connect; a store that takes over leaves
        them pending, as their answers, and those the dead store had not written, are handed to it.) A call the
        proxy handed again (the dead store may have written it just before it died, unbeknown to the proxy) is no
        orphan: this store's judge decides it.
        """
        reason = STOPPED_BEFORE_DECIDING if self._fail_stale_pending else DIED_BEFORE_DECIDING
        severity = self.config.severity[FindingKind.CONSENT_UNKNOWN].value
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS handed_again (uid TEXT PRIMARY KEY)")
        conn.execute("DELETE FROM temp.handed_again")
        with self._handed_again_lock:
            handed_again = [(uid,) for uid in self._handed_again]
        conn.executemany("INSERT OR IGNORE INTO temp.handed_again (uid) VALUES (?)", handed_again)
        orphan = (
            "consent = 'pending' AND kind IN ('clickstream', 'consent_reference') "
            "AND uid NOT IN (SELECT uid FROM temp.handed_again)"
        )
        conn.execute(
            "INSERT INTO findings (delivery_id, run, visitor, kind, severity, message, at) "
            "SELECT MIN(id), run, COALESCE(visitor, ''), ?, ?, "
            "'consent cannot be judged: ' || ? || ' (' || count(*) || ' call(s) waited for their decision)', "
            f"MIN(sent_at) FROM deliveries WHERE {orphan} GROUP BY run, visitor",
            (FindingKind.CONSENT_UNKNOWN.value, severity, reason),
        )
        pending = [
            uid
            for (uid,) in conn.execute(
                "SELECT uid FROM deliveries WHERE consent = 'pending' "
                "AND uid NOT IN (SELECT uid FROM temp.handed_again) ORDER BY id"
            )
        ]
        if pending:
            start = next_changes(conn, len(pending))
            conn.executemany(
                "UPDATE deliveries SET consent = 'unknown', seq = ? WHERE uid = ?",
                [(start + n, uid) for n, uid in enumerate(pending)],
            )
        visitors = conn.execute("UPDATE visitors SET pending_decision = NULL WHERE pending_decision IS NOT NULL")
        if pending or visitors.rowcount:
            log.warning(
                "clickwatch store: %d consent decision(s) and %d visitor decision(s) left pending by an earlier store "
                "are settled as unknown (%s)",
                len(pending),
                visitors.rowcount,
                reason,
            )

    def _write_resilient(self, ops: StoreOps, reset: Reset | None = None) -> None:
        """Write a batch; a row SQLite refuses is skipped alone; a database problem raises _Blocked."""
        try:
            removed = self._write(ops, reset)
        except _DATA_ERRORS:
            pass  # a value SQLite cannot take: write the rows one by one so only the bad one is lost
        except sqlite3.Error as exc:
            raise _Blocked(ops, exc) from exc
        else:
            if reset is not None:
                self._finish_reset(reset, removed)
            return
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
        if reset is not None:
            try:
                self._finish_reset(reset, self._write(StoreOps(), reset))
            except sqlite3.Error as exc:
                raise _Blocked(StoreOps(), exc) from exc

    def _note_failure(self, exc: sqlite3.Error, held: int) -> None:
        self.stats.failed_writes += 1
        message = f"{exc.__class__.__name__}: {exc}"
        if self.stats.blocked_since is None or message != self.stats.last_error:
            log.warning(
                "clickwatch cannot write to %s (%s); %d observation(s) held, %d queued, retrying",
                self.path,
                message,
                held,
                len(self._inbox),
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
