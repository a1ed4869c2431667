"""The store side of clickwatch: judges and writes what the proxy hands on, in a process of its own.

`StoreService` owns the store's lifecycle: it takes the proxy's wire messages (store.wire) and feeds the
StoreWriter (observations and counts) and the webhook notifier, and reports its progress.
`python -m clickwatch.store.worker --db PATH` runs one in a separate process, so that decoding, judging and SQLite
never compete with mitmproxy's event loop for the proxy's GIL. It reads length-prefixed pickled batches of
messages (wire.pack) on stdin, a private pipe from its own parent, and writes JSON lines on stdout: its status
several times a second and its log records, which the proxy logs as its own. It ignores SIGINT and SIGTERM: it
stops when the proxy closes the pipe (or dies), after writing everything it holds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import pickle
import signal
import struct
import sys
import threading
import time
import traceback
from typing import IO, Any

from clickwatch.core.config import build_config
from clickwatch.core.pipeline import Notice
from clickwatch.core.settings import BY_NAME, default
from clickwatch.store import wire
from clickwatch.store.notify import WebhookNotifier
from clickwatch.store.writer import StoreWriter

log = logging.getLogger("clickwatch.store")

FRAME = struct.Struct(">I")
STATUS_EVERY_SECONDS = 0.25
STATUS_MIN_SECONDS = 0.02
NICENESS = 10


class StoreService:
    """A StoreWriter and a webhook notifier driven by wire messages."""

    def __init__(
        self,
        path: str,
        *,
        queue_size: int = default("queue_size"),
        queue_bytes: int = default("queue_bytes"),
        take_over: bool = False,
    ) -> None:
        self.notifier: WebhookNotifier | None = None
        self.received = 0
        # A store that takes over from one that died while its proxy runs on leaves pending deliveries pending:
        # their answers are still on their way.
        self.writer = StoreWriter(
            path,
            queue_size=queue_size,
            queue_bytes=queue_bytes,
            on_notices=self._notify,
            fail_stale_pending=not take_over,
        )

    def start(self) -> None:
        """Start writing."""
        self.writer.start()

    def handle(self, message: wire.Message) -> None:
        """Act on one message; a bad one is logged and counted, never raised."""
        try:
            match message:
                case (
                    wire.Request()
                    | wire.Answer()
                    | wire.Storefront()
                    | wire.Browser()
                    | wire.Blocked()
                    | wire.Worker()
                    | wire.Rejected()
                ):
                    self.received += 1
                    self.writer.submit(message)
                case wire.Counts():
                    self.writer.count(message)
                case wire.Reset():
                    self.writer.reset(message)
                case wire.Config():
                    self.writer.config = build_config(**message.spec)
                case wire.Webhook():
                    self._open_webhook(message.url, message.min_interval)
                case _:
                    raise ValueError(f"unknown message {message!r}")
        except Exception:
            self.writer.stats.errors += 1
            log.exception("clickwatch store: could not handle a message from the proxy; it is skipped")

    def _open_webhook(self, url: str, interval: float) -> None:
        if self.notifier is not None:
            self.notifier.close()
            self.notifier = None
        if url:
            self.notifier = WebhookNotifier(url, min_interval=float(interval))

    def _notify(self, notices: list[Notice]) -> None:
        notifier = self.notifier
        if notifier is not None:
            notifier.notify(notices)

    def status(self) -> dict[str, Any]:
        """What the proxy needs to know: progress, losses, what still waits, and which Counts were written."""
        stats = self.writer.stats
        return {
            "connected": self.writer.connected,
            "received": self.received,
            "written": stats.written,
            "dropped": self.writer.dropped,
            "errors": stats.errors,
            "waiting": self.writer.waiting,
            "last_error": stats.last_error,
            "counted": dict(self.writer.confirmed),
            "settled": self.writer.settled,
            "resets": dict(self.writer.resets_done),
        }

    def close(self, timeout: float) -> bool:
        """Write everything held (waiting at most `timeout` s for a busy database); True if nothing was lost."""
        ok = self.writer.close(timeout)
        if self.notifier is not None:
            self.notifier.close()
            self.notifier = None
        return ok


class _Channel:
    """JSON lines to the proxy; a lost proxy is not an error here (the pipe's end tells us to stop)."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._lock = threading.Lock()

    def send(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, default=str).encode() + b"\n"
        with self._lock:
            try:
                self._out.write(line)
                self._out.flush()
            except (OSError, ValueError):
                pass


class _ForwardHandler(logging.Handler):
    """Hands log records to the proxy, which logs them as its own."""

    def __init__(self, channel: _Channel) -> None:
        super().__init__(logging.INFO)
        self._channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
            self._channel.send({"log": [record.levelno, record.name, text]})
        except Exception:
            self.handleError(record)


def read_batches(source: IO[bytes]) -> Any:
    """Yield the message batches of a length-prefixed stream until it ends."""
    while True:
        head = source.read(FRAME.size)
        if len(head) < FRAME.size:
            return
        (size,) = FRAME.unpack(head)
        payload = source.read(size)
        if len(payload) < size:
            return
        yield payload


def _report(channel: _Channel, service: StoreService, stop: threading.Event) -> None:
    # Several times a second, and soon after each batch written: the sooner the proxy knows what is written, the
    # less it hands again to a replacement should this process die.
    progress = service.writer.progress
    while not stop.is_set():
        progress.wait(STATUS_EVERY_SECONDS)
        progress.clear()
        if stop.wait(STATUS_MIN_SECONDS):
            return
        channel.send({"status": service.status()})


def serve(
    path: str,
    queue_size: int,
    shutdown_timeout: float,
    source: IO[bytes],
    out: IO[bytes],
    take_over: bool = False,
    queue_bytes: int = default("queue_bytes"),
) -> bool:
    """Run a StoreService fed from `source` until it ends; True if everything was written."""
    channel = _Channel(out)
    handler = _ForwardHandler(channel)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    service = StoreService(path, queue_size=queue_size, queue_bytes=queue_bytes, take_over=take_over)
    service.start()
    stop = threading.Event()
    reporter = threading.Thread(target=_report, args=(channel, service, stop), name="clickwatch-status", daemon=True)
    reporter.start()
    ok = False
    try:
        for payload in read_batches(source):
            try:
                messages = wire.unpack(*pickle.loads(payload))
            except Exception:
                service.writer.stats.errors += 1
                log.exception("clickwatch store: a batch from the proxy could not be read; it is skipped")
                continue
            for message in messages:
                service.handle(message)
    finally:
        ok = service.close(shutdown_timeout)
        stop.set()
        service.writer.progress.set()
        reporter.join(1.0)
        channel.send({"status": service.status(), "final": True, "ok": ok})
        root.removeHandler(handler)
    return ok


def build_parser() -> argparse.ArgumentParser:
    """The store process's arguments."""
    parser = argparse.ArgumentParser(prog="python -m clickwatch.store.worker", description=__doc__.split("\n\n")[0])
    # The addon's settings of the same names (core.settings), handed on by the proxy.
    parser.add_argument("--db", required=True, help=BY_NAME["db"].help)
    queue, queue_bytes, timeout = BY_NAME["queue_size"], BY_NAME["queue_bytes"], BY_NAME["shutdown_timeout"]
    parser.add_argument("--queue-size", type=int, default=queue.default, help=queue.help)
    parser.add_argument("--queue-bytes", type=int, default=queue_bytes.default, help=queue_bytes.help)
    parser.add_argument("--shutdown-timeout", type=float, default=float(timeout.default), help=timeout.help)
    parser.add_argument(
        "--take-over",
        action="store_true",
        help="replace a store process that died while the proxy runs on: leave pending deliveries pending",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the store process (started by the addon, not by people)."""
    args = build_parser().parse_args(argv)
    # Ctrl-C reaches the whole process group: the proxy decides when to stop, by closing the pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if NICENESS:
        # Background work: on a busy machine the proxy (and the browser, and the shop) come first.
        with contextlib.suppress(OSError):
            os.nice(NICENESS)
    started = time.monotonic()
    ok = serve(
        args.db,
        args.queue_size,
        args.shutdown_timeout,
        sys.stdin.buffer,
        sys.stdout.buffer,
        take_over=args.take_over,
        queue_bytes=args.queue_bytes,
    )
    log.debug("store process ran %.1f s", time.monotonic() - started)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
