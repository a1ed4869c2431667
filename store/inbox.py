"""The bounded inbox on both ends of the pipe: the proxy's buffer (StoreLink) and the store's queue (StoreWriter).

One policy: observations beyond the bound are dropped and counted, with an error logged at most every few
seconds; an answer that finds the inbox full keeps its verdict and sheds its headers and body; settings and
counts are never dropped. Putting never blocks, and wakes a taker only when one sleeps.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from clickwatch.store.wire import Answer, Control, Message, Observed, shed_answer

log = logging.getLogger("clickwatch.store")

# Answers shed to their verdict are a few hundred bytes: this many beyond the bound is a few MB at most.
ANSWER_OVERFLOW_LIMIT = 50000
OVERFLOW_NOTE = "response headers and body not kept: the store queue was full"
LOG_EVERY_SECONDS = 5.0


class Inbox:
    """Wire messages in arrival order, at most `bound` observations (plus shed answers) of them."""

    def __init__(self, bound: int, describe: Callable[[], str]) -> None:
        self.bound = bound
        self.dropped = 0  # counted by the one thread that puts
        self._describe = describe
        self._items: deque[Message] = deque()
        self._ready = threading.Event()
        self._asleep = False
        self._last_log = 0.0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, message: Observed) -> bool:
        """Queue an observation; False if it was dropped for want of room."""
        items = self._items
        held = len(items)
        if held < self.bound:
            items.append(message)
            if self._asleep:
                self._asleep = False
                self._ready.set()
            return True
        if type(message) is Answer and held < self.bound + ANSWER_OVERFLOW_LIMIT:
            # An answer completes a request queued or written before it: keep its verdict, shed its bulk,
            # so no delivery is left pending for want of room.
            items.append(shed_answer(message, OVERFLOW_NOTE))
            return True
        self.dropped += 1
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY_SECONDS:
            self._last_log = now
            log.error(
                "clickwatch %s (%d waiting): %d observation(s) dropped so far", self._describe(), held, self.dropped
            )
        return False

    def put_control(self, message: Control) -> None:
        """Queue a setting or counts: never dropped."""
        self._items.append(message)
        self.wake()

    def take(self, limit: int | None = None) -> list[Message]:
        """The oldest messages, at most `limit` of them (all when None)."""
        items = self._items
        count = len(items) if limit is None else min(limit, len(items))
        return [items.popleft() for _ in range(count)]

    def wait(self, timeout: float) -> bool:
        """Sleep until something is put or `wake` is called, at most `timeout` s; True if something waits."""
        if self._items:
            return True
        self._asleep = True
        self._ready.clear()
        # Checked again after clear(): a put just before it must not be slept through.
        if not self._items:
            self._ready.wait(timeout)
        self._asleep = False
        return bool(self._items)

    def wake(self) -> None:
        """End a taker's wait now (something was put, or it should stop waiting)."""
        self._asleep = False
        self._ready.set()
