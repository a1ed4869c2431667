"""The proxy's end of the store: takes wire messages on the event loop in well under a microsecond each.

`StoreLink.send` only appends to a bounded buffer. A feeder thread hands the buffer on at most every FEED_SECONDS
(and sleeps while there is nothing to hand on, so an idle proxy is not woken 40 times a second), either
to a store process (`python -m clickwatch.store.worker`, the default: decoding, judging and SQLite then never hold the
proxy's GIL) or to a StoreService in a thread of the proxy process. If the store process dies, what it had not
confirmed is counted as dropped, and a new one is started (or, when it dies within seconds of starting, the
store continues in a thread of the proxy process). Nothing here ever blocks the proxy.
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
from collections import deque
from collections.abc import Callable
from typing import IO, Any, Protocol

import clickwatch
from clickwatch.store.wire import ANSWER, CONFIG, COUNTERS, TAKE_OVER, WEBHOOK, Message, count_observations, shed_answer
from clickwatch.store.worker import FRAME, StoreService
from clickwatch.store.writer import ANSWER_OVERFLOW_LIMIT, OVERFLOW_NOTE

log = logging.getLogger("clickwatch.store")

# How long messages gather in the proxy before they are handed on: a hard kill of the proxy loses at most these,
# as the store process writes everything it received when its pipe closes.
FEED_SECONDS = 0.05
# With nothing to hand on, the feeder still sends the proxy's counters this often (the store writes them each second).
IDLE_SECONDS = 1.0
# A store process that dies sooner than this after starting is not restarted: the proxy writes itself instead.
MIN_PROCESS_LIFETIME = 10.0
# The proxy-side buffer holds at least this many: it only fills when the store process stalls (a burst between
# two hand-overs must never be dropped because clickwatch_queue_size, the bound for an unwritable database, is small).
FEED_BUFFER_MIN = 10000
# Extra seconds, beyond the shutdown timeout, for the store process to exit after writing.
EXIT_GRACE_SECONDS = 5.0

LiveCounters = Callable[[], dict[str, int]]


class LiveStore(Protocol):
    """What an in-process dashboard reads for up-to-the-moment proxy metrics."""

    @property
    def waiting(self) -> int: ...

    def metric_counters(self) -> dict[str, float]: ...


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

    def __init__(self, path: str, queue_size: int, take_over: bool = False) -> None:
        self.started = time.monotonic()
        self.service = StoreService(path, queue_size=queue_size, take_over=take_over)
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

    def __init__(self, path: str, queue_size: int, shutdown_timeout: float, take_over: bool = False) -> None:
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
        payload = pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)
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
    """Bounded hand-off from the proxy's hooks to the store; counts what it has to drop."""

    def __init__(
        self,
        path: str,
        *,
        queue_size: int = 10000,
        shutdown_timeout: float = 10.0,
        use_process: bool = True,
        live_counters: LiveCounters | None = None,
        buffer_size: int | None = None,
    ) -> None:
        self.path = path
        self.queue_size = queue_size
        self.buffer_size = buffer_size if buffer_size is not None else max(queue_size, FEED_BUFFER_MIN)
        self.shutdown_timeout = shutdown_timeout
        self._buffer: deque[Message] = deque()
        self._controls: dict[str, Message] = {}
        self._live = live_counters or (lambda: {})
        # Dropped on the event loop (send) and in the feeder thread: one counter each, no lock needed.
        self._dropped_sending = 0
        self._dropped_feeding = 0
        self._last_metrics: dict[str, float] = {}
        self._sent = 0  # observations handed to the current backend
        self._last_drop_log = 0.0
        self._stopping = False
        self._closed = False
        self._wake = threading.Event()
        self._idle = False  # the feeder sleeps until send() wakes it
        self._backend: _Backend = self._new_backend(use_process)
        self._feeder = threading.Thread(target=self._feed, name="clickwatch-store-feed", daemon=True)
        self._feeder.start()

    @property
    def mode(self) -> str:
        """Where the store runs: 'process' or 'thread'."""
        return self._backend.mode

    @property
    def dropped(self) -> int:
        """Observations this proxy dropped, or handed to a store process that died before writing them."""
        return self._dropped_sending + self._dropped_feeding

    def send(self, message: Message) -> None:
        """Hand on an observation; never blocks. When the buffer is full it is dropped and counted."""
        buffered = len(self._buffer)
        if buffered < self.buffer_size:
            self._buffer.append(message)
            if self._idle:
                self._idle = False
                self._wake.set()
            return
        if message[0] == ANSWER and buffered < self.buffer_size + ANSWER_OVERFLOW_LIMIT:
            # An answer completes a request already handed on: keep its verdict, shed its bulk (as the store does).
            self._buffer.append(shed_answer(message, OVERFLOW_NOTE))
            return
        self._dropped_sending += 1
        now = time.monotonic()
        if now - self._last_drop_log >= 5.0:
            self._last_drop_log = now
            log.error(
                "clickwatch store cannot keep up (%d observations waiting in the proxy): %d dropped so far",
                buffered,
                self.dropped,
            )

    def control(self, message: Message) -> None:
        """Hand on a setting (CONFIG, WEBHOOK); never dropped, and given again to a restarted store."""
        # A new dict, not an update: the feeder thread may be reading the old one.
        self._controls = {**self._controls, message[0]: message}
        self._buffer.append(message)
        self._wake.set()

    @property
    def waiting(self) -> int:
        """Observations not written yet, here and in the store."""
        return len(self._buffer) + int(self._backend.status().get("waiting", 0))

    def metric_counters(self) -> dict[str, float]:
        """Counter totals across restarts: what the store holds from earlier plus this process's counts."""
        status = self._backend.status()
        base = status.get("base") or {}
        own = self._counters()
        current = {
            "proxy_flows": own["proxy_flows"],
            "addon_errors": own["addon_errors"] + int(status.get("errors", 0)),
            "store_dropped": own["store_dropped"] + int(status.get("dropped", 0)),
        }
        totals = {name: float(base.get(name, 0.0)) + value for name, value in current.items()}
        # Counters never go down: right after a store restart its base may not be known yet.
        totals = {name: max(value, self._last_metrics.get(name, 0.0)) for name, value in totals.items()}
        self._last_metrics = totals
        return totals

    def close(self, timeout: float | None = None) -> bool:
        """Hand on everything, let the store write it (at most `timeout` s); True if nothing was lost."""
        timeout = self.shutdown_timeout if timeout is None else timeout
        self._stopping = True
        self._wake.set()
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
        return ok and self.dropped == 0 and not self._buffer

    # --- feeder thread -------------------------------------------------------------------------------

    def _counters(self) -> dict[str, int]:
        """This process's lifetime counts: every store adds them to the base it continues from."""
        live = self._live()
        return {
            "proxy_flows": live.get("proxy_flows", 0),
            "addon_errors": live.get("addon_errors", 0),
            "store_dropped": self.dropped,
        }

    def _new_backend(self, use_process: bool, take_over: bool = False) -> _Backend:
        self._sent = 0
        if use_process and getattr(sys, "frozen", False):
            # A bundled executable (PyInstaller) is not a Python interpreter: `-m clickwatch.store.worker` would
            # start it again.
            log.warning("clickwatch: %s cannot run a store process; the proxy writes the store itself", sys.executable)
            use_process = False
        if use_process:
            try:
                return _ProcessBackend(self.path, self.queue_size, self.shutdown_timeout, take_over)
            except OSError as exc:
                log.error("clickwatch could not start its store process (%s); the proxy writes the store itself", exc)
        return _ThreadBackend(self.path, self.queue_size, take_over)

    def _feed(self) -> None:
        while True:
            batch: list[Message] = []
            try:
                if not self._buffer:
                    self._idle = True
                    self._wake.clear()
                    # Checked again after clear(): a send() or close() just before it must not be slept through.
                    if not self._buffer and not self._stopping:
                        self._wake.wait(IDLE_SECONDS)
                    self._idle = False
                # Let a batch gather: one hand-over (and one wake-up of this thread) per interval under load.
                if not self._stopping:
                    self._wake.clear()
                    self._wake.wait(FEED_SECONDS)
                stopping = self._stopping
                batch = [self._buffer.popleft() for _ in range(len(self._buffer))]
                self._deliver(batch)
                batch = []
                if stopping and not self._buffer:
                    return
            except Exception:
                # Never let this thread die: the proxy would buffer into nothing. What was in hand is counted.
                self._dropped_feeding += count_observations(batch)
                log.exception("clickwatch store: unexpected error handing observations on")
                time.sleep(FEED_SECONDS)

    def _deliver(self, batch: list[Message]) -> None:
        counters = self._counters()
        batch.append((COUNTERS, {**counters, "store_waiting": len(self._buffer)}))
        try:
            self._backend.deliver(batch)
            self._sent += count_observations(batch)
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
        confirmed = int(status.get("written", 0)) + int(status.get("dropped", 0))
        lost = max(0, self._sent - confirmed)
        self._dropped_feeding += lost
        lived = time.monotonic() - old.started
        use_process = old.mode == "process" and lived >= MIN_PROCESS_LIFETIME
        log.error(
            "clickwatch store process ended unexpectedly (%s) after %.0f s; about %d observation(s) it had not "
            "written are counted as dropped; %s",
            reason,
            lived,
            lost,
            "starting a new one" if use_process else "the proxy writes the store itself from now on",
        )
        if isinstance(old, _ProcessBackend):
            old.discard()
        self._backend = self._new_backend(use_process, take_over=True)
        # The new store continues the old one's totals: its base (or the database's, if it never read one) plus
        # what it counted itself; the proxy's own counts come with every hand-over, as before.
        carry = {"addon_errors": float(status.get("errors", 0)), "store_dropped": float(status.get("dropped", 0))}
        replay = [
            (TAKE_OVER, status.get("base"), carry),
            *self._controls.values(),
            *(m for m in undelivered if m[0] not in (CONFIG, WEBHOOK, COUNTERS)),
        ]
        try:
            self._backend.deliver(replay)
            self._sent += count_observations(replay)
        except Exception:
            self._dropped_feeding += count_observations(replay)
            log.exception("clickwatch store: could not hand on to the new store")
