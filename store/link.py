"""The proxy's end of the store: takes wire messages on the event loop in well under a microsecond each.

`StoreLink.send` only puts into a bounded Inbox (store.inbox). A feeder thread hands the buffer on at most every
FEED_SECONDS (and sleeps while there is nothing to hand on, so an idle proxy is not woken 40 times a second), either
to a store process (`python -m clickwatch.store.worker`, the default: decoding, judging and SQLite then never hold the
proxy's GIL) or to a StoreService in a thread of the proxy process. The link keeps what it handed to a store process
until the store reports it settled (written or dropped); if the process dies, a new one is started and handed those
again, once (or, when it dies within seconds of starting, the store continues in a thread of the proxy process).
Nothing here ever blocks the proxy.

A reset (`StoreLink.reset`, for `POST /api/reset` in the same process) travels the same ordered path, behind what
was captured before it: the store writes and removes those, so nothing captured before a reset outlives it.

The link counts nothing for metrics itself: with each hand-over that has news it sends a Counts of what the
proxy counted since the previous one (flows, addon errors, drops), and keeps it until the store reports it
written; a replacement store is handed again those it had not reported, and skips any the dead one wrote.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from typing import IO, Any, Protocol

import clickwatch
from clickwatch.core.settings import default
from clickwatch.store.inbox import Inbox, body_size
from clickwatch.store.wire import Control, Counts, Message, Observed, Reset, count_observations, is_observed, pack
from clickwatch.store.worker import FRAME, StoreService

log = logging.getLogger("clickwatch.store")

# How long messages gather in the proxy before they are handed on: a hard kill of the proxy loses at most these,
# as the store process writes everything it received when its pipe closes.
FEED_SECONDS = 0.05
# Counts go with every hand-over of observations, and at least this often when there are only counts to send.
IDLE_SECONDS = 1.0
# A store process that dies sooner than this after starting is not restarted: the proxy writes itself instead.
MIN_PROCESS_LIFETIME = 10.0
# The proxy-side buffer holds at least this many: it only fills when the store process stalls (a burst between
# two hand-overs must never be dropped because clickwatch_queue_size, the bound for an unwritable database, is small).
FEED_BUFFER_MIN = 10000
# Extra seconds, beyond the shutdown timeout, for the store process to exit after writing.
EXIT_GRACE_SECONDS = 5.0
# How often a reset looks whether the store has done it.
RESET_POLL_SECONDS = 0.02

# The links open in this process, by the real path of their store: where a reset asked of the dashboard beside
# the proxy (`clickwatch up`) finds the ordered path to the store.
_OPEN_LINKS: dict[str, StoreLink] = {}
_OPEN_LOCK = threading.Lock()


class StoreBusy(Exception):
    """The store did not do what was asked in time (it still will: the request is queued)."""


def open_link_for(path: str) -> StoreLink | None:
    """The store link of this process that writes `path`, if any."""
    with _OPEN_LOCK:
        return _OPEN_LINKS.get(os.path.realpath(path))


# The proxy's own running totals ("proxy_flows", "addon_errors", "passthrough_connections",
# "observer_pages_untouched"), read by the feeder
# thread.
ProxyCounts = Callable[[], Mapping[str, int]]


class Link(Protocol):
    """What the addon needs of its store link (a StoreLink, or an in-process stand-in in tests)."""

    path: str

    @property
    def mode(self) -> str: ...

    def send(self, message: Observed) -> bool: ...

    def control(self, message: Control) -> None: ...

    def close(self, timeout: float | None = None) -> bool: ...


class LinkFactory(Protocol):
    """Opens a store link: StoreLink's signature."""

    def __call__(
        self,
        path: str,
        *,
        queue_size: int,
        shutdown_timeout: float,
        use_process: bool,
        proxy_counts: ProxyCounts | None = None,
        queue_bytes: int = ...,
    ) -> Link: ...


class _Backend(Protocol):
    mode: str
    started: float

    def deliver(self, batch: list[Message]) -> None: ...

    def alive(self) -> bool: ...

    def status(self) -> dict[str, Any]: ...

    def close(self, timeout: float) -> bool: ...

    def abort(self) -> None: ...


class _ThreadBackend:
    """The store in a thread of the proxy process (slower under load: it shares the proxy's GIL)."""

    mode = "thread"

    def __init__(self, path: str, queue_size: int, queue_bytes: int, take_over: bool = False) -> None:
        self.started = time.monotonic()
        self.service = StoreService(path, queue_size=queue_size, queue_bytes=queue_bytes, take_over=take_over)
        self.service.start()

    def deliver(self, batch: list[Message]) -> None:
        for message in batch:
            self.service.handle(message)

    def alive(self) -> bool:
        return True

    def status(self) -> dict[str, Any]:
        return self.service.status()

    def close(self, timeout: float) -> bool:
        return self.service.close(timeout)

    def abort(self) -> None:
        pass  # handing on to a thread never blocks


class _ProcessBackend:
    """A `python -m clickwatch.store.worker` child fed over a pipe; its status and log lines come back on another."""

    mode = "process"

    def __init__(
        self, path: str, queue_size: int, queue_bytes: int, shutdown_timeout: float, take_over: bool = False
    ) -> None:
        self.started = time.monotonic()
        self._status: dict[str, Any] = {}
        self._final: dict[str, Any] | None = None
        # The directory holding the clickwatch package: found by a child of an interpreter that lacks it (mitmdump
        # installed on its own, loading our addon by path).
        root = os.path.dirname(os.path.dirname(os.path.abspath(clickwatch.__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "clickwatch.store.worker",
                "--db",
                path,
                "--queue-size",
                str(queue_size),
                "--queue-bytes",
                str(queue_bytes),
                "--shutdown-timeout",
                str(shutdown_timeout),
                *(["--take-over"] if take_over else []),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            close_fds=True,
            # Its own process group: a terminal's Ctrl-C must not reach it (not even while it is still importing);
            # it stops when the proxy closes its pipe.
            process_group=0,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self._pipe: IO[bytes] = self.process.stdin
        self._reader = threading.Thread(
            target=self._read, args=(self.process.stdout,), name="clickwatch-store-status", daemon=True
        )
        self._reader.start()

    def deliver(self, batch: list[Message]) -> None:
        payload = pickle.dumps(pack(batch), protocol=pickle.HIGHEST_PROTOCOL)
        self._pipe.write(FRAME.pack(len(payload)))
        self._pipe.write(payload)
        self._pipe.flush()

    def alive(self) -> bool:
        return self.process.poll() is None

    def status(self) -> dict[str, Any]:
        return self._final or self._status

    def _read(self, source: IO[bytes]) -> None:
        # Keep reading whatever comes: a store process whose status pipe fills up would stall its writer.
        for line in source:
            try:
                record = json.loads(line)
                if "log" in record:
                    level, name, text = record["log"]
                    logging.getLogger(str(name)).log(int(level), "%s", text)
                if "status" in record:
                    self._status = record["status"]
                    if record.get("final"):
                        self._final = {**record["status"], "ok": bool(record.get("ok"))}
            except Exception:  # a line that is not ours, e.g. a library printing to stdout
                continue

    def abort(self) -> None:
        """Stop a store process that no longer reads: a hand-over blocked on its pipe then fails at once."""
        self.process.kill()

    def discard(self) -> None:
        """After it died or was stopped: reap the process and close the pipes."""
        if self.alive():
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        self._reader.join(1.0)
        for pipe in (self._pipe, self.process.stdout):
            with contextlib.suppress(OSError, ValueError):
                if pipe is not None:
                    pipe.close()

    def close(self, timeout: float) -> bool:
        with contextlib.suppress(OSError):
            self._pipe.close()
        try:
            self.process.wait(timeout + EXIT_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            log.error("clickwatch store process did not finish writing within %.0f s; it is stopped", timeout)
            self.process.kill()
            self.process.wait()
        self._reader.join(1.0)
        return self._final is not None and bool(self._final.get("ok")) and self.process.returncode == 0


class StoreLink:
    """Bounded hand-off from the proxy's hooks to the store; sends the proxy's counts with it."""

    def __init__(
        self,
        path: str,
        *,
        queue_size: int = default("queue_size"),
        shutdown_timeout: float = 10.0,
        use_process: bool = True,
        proxy_counts: ProxyCounts | None = None,
        buffer_size: int | None = None,
        queue_bytes: int = default("queue_bytes"),
    ) -> None:
        self.path = path
        self.queue_size = queue_size
        self.queue_bytes = queue_bytes
        self.shutdown_timeout = shutdown_timeout
        self._inbox = Inbox(
            buffer_size if buffer_size is not None else max(queue_size, FEED_BUFFER_MIN),
            lambda: "store cannot keep up: observations wait in the proxy",
            queue_bytes,
        )
        # Called on the event loop for every observation: the inbox's own method, no call in between.
        self.send = self._inbox.put
        self._controls: dict[type, Control] = {}
        # Drops in the feeder thread (the inbox counts those on the event loop): one counter per thread.
        self._dropped_feeding = 0
        # What goes into Counts: the proxy's running totals, as last sent (a new link starts from the current
        # ones: what was counted before belongs to the store the previous link fed).
        self._proxy_counts = proxy_counts or (lambda: {})
        self._sent_totals = self._totals()
        self._last_waiting = 0
        self._last_counts = 0.0
        self.source = uuid.uuid4().hex
        self._seq = 0
        self._unconfirmed: deque[Counts] = deque()
        self._sent = 0  # observations handed to the current backend
        # What a store process was handed and has not settled: (its number, the message), at most queue_bytes of
        # bodies; handed again to the next one if it dies (never twice: a message that killed two is not a third).
        self._replay: deque[tuple[int, Observed]] = deque()
        self._replay_bytes = 0
        # Resets not done yet, by id: handed again to a new store, and answered by the one that does them.
        self._resets: dict[str, Reset] = {}
        self._resets_lock = threading.Lock()
        self._stopping = threading.Event()
        self._closed = False
        self._backend: _Backend = self._new_backend(use_process)
        self._feeder = threading.Thread(target=self._feed, name="clickwatch-store-feed", daemon=True)
        self._feeder.start()
        self._key = os.path.realpath(path)
        with _OPEN_LOCK:
            _OPEN_LINKS[self._key] = self

    @property
    def mode(self) -> str:
        """Where the store runs: 'process' or 'thread'."""
        return self._backend.mode

    @property
    def dropped(self) -> int:
        """Observations this proxy dropped, or handed to a store process that died before writing them."""
        return self._inbox.dropped + self._dropped_feeding

    def control(self, message: Control) -> None:
        """Hand on a setting (Config, Webhook); never dropped, and given again to a restarted store."""
        # A new dict, not an update: the feeder thread may be reading the old one.
        self._controls = {**self._controls, type(message): message}
        self._inbox.put_control(message)

    def reset(self, run: str | None = None, timeout: float = 10.0) -> int:
        """Remove the captured data of one run (all when None) behind everything captured before now; the
        deliveries removed. Raises StoreBusy when the store has not done it within `timeout` s (it still will)."""
        if self._closed or self._stopping.is_set():
            raise StoreBusy("clickwatch is stopping: nothing was reset")
        reset = Reset(uuid.uuid4().hex, run, time.time())
        with self._resets_lock:
            self._resets[reset.id] = reset
        self._inbox.put_control(reset)
        deadline = time.monotonic() + timeout
        while True:
            done = (self._backend.status().get("resets") or {}).get(reset.id)
            if done is not None:
                return int(done)
            if time.monotonic() >= deadline:
                raise StoreBusy(f"the store has not reached the reset within {timeout:g} s; it will do it when it can")
            time.sleep(RESET_POLL_SECONDS)

    @property
    def waiting(self) -> int:
        """Observations not written yet, here and in the store."""
        return len(self._inbox) + int(self._backend.status().get("waiting", 0))

    def close(self, timeout: float | None = None) -> bool:
        """Hand on everything, let the store write it (at most `timeout` s); True if nothing was lost."""
        timeout = self.shutdown_timeout if timeout is None else timeout
        with _OPEN_LOCK:
            if _OPEN_LINKS.get(self._key) is self:
                del _OPEN_LINKS[self._key]
        self._stopping.set()
        self._inbox.wake()
        self._feeder.join(timeout + EXIT_GRACE_SECONDS)
        # From here on a failing hand-over is the end, not a reason to start another store.
        self._closed = True
        stuck = self._feeder.is_alive()
        if stuck:
            log.error("clickwatch store: the store process stopped taking observations; it is stopped")
            self._backend.abort()
            self._feeder.join(EXIT_GRACE_SECONDS)
        ok = self._backend.close(timeout) and not stuck
        if self.dropped:
            log.error("clickwatch store: %d observation(s) were dropped in the proxy in all", self.dropped)
        return ok and self.dropped == 0 and not self._inbox

    # --- feeder thread -------------------------------------------------------------------------------

    def _totals(self) -> dict[str, int]:
        counts = self._proxy_counts()
        return {
            "proxy_flows": int(counts.get("proxy_flows", 0)),
            "addon_errors": int(counts.get("addon_errors", 0)),
            "passthrough_connections": int(counts.get("passthrough_connections", 0)),
            "observer_pages_untouched": int(counts.get("observer_pages_untouched", 0)),
            "store_dropped": self.dropped,
        }

    def _counts(self, due: bool, news: bool = False) -> Counts | None:
        """What was counted since the last Counts, when `due` or the last was a while ago and there is news (or
        always, with `news`)."""
        now = time.monotonic()
        if not due and now - self._last_counts < IDLE_SECONDS:
            return None
        totals = self._totals()
        sent, self._sent_totals = self._sent_totals, totals
        increments = {name: max(0, value - sent[name]) for name, value in totals.items()}
        waiting = len(self._inbox)
        if not news and not any(increments.values()) and waiting == self._last_waiting:
            return None
        self._last_counts = now
        self._last_waiting = waiting
        self._seq += 1
        counts = Counts(self.source, self._seq, waiting=waiting, **increments)
        self._unconfirmed.append(counts)
        return counts

    def _confirmed(self, status: dict[str, Any]) -> int:
        """The last Counts the store reported written; those before it need not be kept (nor what it settled, nor
        the resets it did)."""
        seq = int((status.get("counted") or {}).get(self.source, 0))
        while self._unconfirmed and self._unconfirmed[0].seq <= seq:
            self._unconfirmed.popleft()
        settled = int(status.get("settled", 0))
        replay = self._replay
        while replay and replay[0][0] <= settled:
            self._replay_bytes -= body_size(replay.popleft()[1])
        done = status.get("resets")
        if done and self._resets:
            with self._resets_lock:
                for key in [key for key in self._resets if key in done]:
                    del self._resets[key]
        return seq

    def _keep(self, batch: list[Message], replayable: bool) -> None:
        """Number what was handed to the backend; keep it for a new store process if this one dies."""
        keep = replayable and self._backend.mode == "process"
        for message in batch:
            if not is_observed(message):
                continue
            self._sent += 1
            if keep:
                size = body_size(message)
                if self._replay_bytes + size <= self.queue_bytes:
                    self._replay.append((self._sent, message))  # type: ignore[arg-type]
                    self._replay_bytes += size

    def _new_backend(self, use_process: bool, take_over: bool = False) -> _Backend:
        self._sent = 0
        self._replay = deque()
        self._replay_bytes = 0
        if use_process and getattr(sys, "frozen", False):
            # A bundled executable (PyInstaller) is not a Python interpreter: `-m clickwatch.store.worker` would
            # start it again.
            log.warning("clickwatch: %s cannot run a store process; the proxy writes the store itself", sys.executable)
            use_process = False
        if use_process:
            try:
                return _ProcessBackend(self.path, self.queue_size, self.queue_bytes, self.shutdown_timeout, take_over)
            except OSError as exc:
                log.error("clickwatch could not start its store process (%s); the proxy writes the store itself", exc)
        return _ThreadBackend(self.path, self.queue_size, self.queue_bytes, take_over)

    def _feed(self) -> None:
        inbox = self._inbox
        while True:
            batch: list[Message] = []
            try:
                if not inbox and not self._stopping.is_set():
                    inbox.wait(IDLE_SECONDS)
                # Let a batch gather: one hand-over (and one wake-up of this thread) per interval under load.
                if inbox and not self._stopping.is_set():
                    self._stopping.wait(FEED_SECONDS)
                stopping = self._stopping.is_set()
                batch = inbox.take()
                self._deliver(batch)
                batch = []
                if stopping and not inbox:
                    return
            except Exception:
                # Never let this thread die: the proxy would buffer into nothing. What was in hand is counted.
                self._dropped_feeding += count_observations(batch)
                log.exception("clickwatch store: unexpected error handing observations on")
                time.sleep(FEED_SECONDS)

    def _deliver(self, batch: list[Message]) -> None:
        self._confirmed(self._backend.status())
        # The last hand-over before the link closes takes the last counts, however recent the previous ones.
        counts = self._counts(due=bool(batch) or self._stopping.is_set())
        if counts is not None:
            batch.append(counts)
        if not batch:
            return
        try:
            self._backend.deliver(batch)
            self._keep(batch, replayable=True)
            if self._backend.alive():
                return
            reason = f"exit code {self._backend_exit_code()}"
            batch = []
        except Exception as exc:
            reason = f"{exc.__class__.__name__}: {exc}"
        if self._closed:
            lost = count_observations(batch)
            self._dropped_feeding += lost
            log.error("clickwatch store: %d observation(s) could not be handed on before exit (%s)", lost, reason)
            return
        self._replace_backend(reason, batch)

    def _backend_exit_code(self) -> int | None:
        backend = self._backend
        return backend.process.poll() if isinstance(backend, _ProcessBackend) else None

    def _replace_backend(self, reason: str, undelivered: list[Message]) -> None:
        old = self._backend
        status = old.status()
        self._confirmed(status)
        settled = int(status.get("settled", 0))
        again = [message for number, message in self._replay if number > settled]
        lost = max(0, self._sent - settled - len(again))
        self._dropped_feeding += lost
        lived = time.monotonic() - old.started
        use_process = old.mode == "process" and lived >= MIN_PROCESS_LIFETIME
        log.error(
            "clickwatch store process ended unexpectedly (%s) after %.0f s; %d observation(s) it had not written "
            "are handed to the next store, %d could not be kept and are counted as dropped; %s",
            reason,
            lived,
            len(again),
            lost,
            "starting a new one" if use_process else "the proxy writes the store itself from now on",
        )
        if isinstance(old, _ProcessBackend):
            old.discard()
        self._backend = self._new_backend(use_process, take_over=True)
        # What is handed again ends with a Counts (a fresh one, news or not): the new store writes nothing before
        # it, and leaves the calls handed again before it to its own judge rather than settling them as orphans.
        self._counts(due=True, news=True)
        # The settings again, resets not done, what it had not settled and what was not handed on, and every
        # Counts the old store did not report written (the new one skips any it did write). A reset handed again
        # before older observations still holds: the store drops what was captured before a reset's time.
        replay = [
            *self._controls.values(),
            *list(self._resets.values()),
            *again,
            *(m for m in undelivered if is_observed(m)),
            *self._unconfirmed,
        ]
        try:
            self._backend.deliver(replay)
            self._keep(replay, replayable=False)
        except Exception:
            self._dropped_feeding += count_observations(replay)
            log.exception("clickwatch store: could not hand on to the new store")
