"""The bounded inbox on both ends of the pipe: the proxy's buffer (StoreLink) and the store's queue (StoreWriter).

One policy: observations beyond the bound (a count, and bytes of bodies) are dropped and counted, with an error
logged at most every few seconds; an answer that finds the inbox full keeps its verdict and sheds its headers and
body; settings and counts are never dropped. Putting never blocks, and wakes a taker only when one sleeps.

Observations have one putting thread (the proxy's event loop, or the store process's reader), which keeps the
inbox lock-free. Controls (a setting, a reset) may come from any thread (a reset from a dashboard thread): they
go into a small locked lane of their own, each marked with how many observations were put before it, and the
taker hands each on behind exactly those, so a reset stays a barrier behind what was captured before it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from clickwatch.core.settings import default
from clickwatch.store.wire import Answer, Browser, Control, Message, Observed, Request, shed_answer

log = logging.getLogger("clickwatch.store")

# Answers shed to their verdict are a few hundred bytes: this many beyond the bound is a few MB at most.
ANSWER_OVERFLOW_LIMIT = 50000
OVERFLOW_NOTE = "response headers and body not kept: the store queue was full"
LOG_EVERY_SECONDS = 5.0
# Where each message class keeps its body: what the byte bound counts (headers and the rest are bounded by count).
_BODY_FIELD: dict[type, int] = {cls: cls._fields.index("body") for cls in (Request, Answer, Browser)}


def body_size(message: Message) -> int:
    """The bytes of body a message holds: what the inbox's byte bound counts (cheap: one length)."""
    index = _BODY_FIELD.get(type(message))
    return 0 if index is None else len(message[index])  # type: ignore[arg-type]


class Inbox:
    """Wire messages in arrival order, at most `bound` observations (plus shed answers) holding at most
    `byte_bound` bytes of bodies."""

    def __init__(self, bound: int, describe: Callable[[], str], byte_bound: int = default("queue_bytes")) -> None:
        self.bound = bound
        self.byte_bound = byte_bound
        self.dropped = 0  # counted by the one thread that puts
        self.shed = 0  # answers kept without their headers and body, counted by the one thread that puts
        self._describe = describe
        self._items: deque[Message] = deque()
        # The body size of each message held, put before its message and taken after it (so a taker always finds
        # one per message), and the bytes put and taken, each kept by one thread: no lock, no lost update.
        self._sizes: deque[int] = deque()
        self._bytes_in = 0
        self._bytes_out = 0
        # Observations put and taken so far, each counted by its one thread; controls wait in their own lane with
        # the number of observations put before them.
        self._put = 0
        self._taken = 0
        self._controls: deque[tuple[int, Control]] = deque()
        self._controls_lock = threading.Lock()
        self._ready = threading.Event()
        self._asleep = False
        self._last_log = 0.0

    def __len__(self) -> int:
        return len(self._items) + len(self._controls)

    @property
    def bytes(self) -> int:
        """Bytes of bodies held now."""
        return self._bytes_in - self._bytes_out

    def put(self, message: Observed) -> bool:
        """Queue an observation; False if it was dropped for want of room."""
        items = self._items
        held = len(items)
        index = _BODY_FIELD.get(type(message))
        size = 0 if index is None else len(message[index])  # type: ignore[arg-type]
        if held < self.bound and self._bytes_in - self._bytes_out + size <= self.byte_bound:
            self._bytes_in += size
            self._sizes.append(size)
            items.append(message)
            self._put += 1
            if self._asleep:
                self._asleep = False
                self._ready.set()
            return True
        if type(message) is Answer and held < self.bound + ANSWER_OVERFLOW_LIMIT:
            # An answer completes a request queued or written before it: keep its verdict, shed its bulk,
            # so no delivery is left pending for want of room.
            self._sizes.append(0)
            items.append(shed_answer(message, OVERFLOW_NOTE))
            self._put += 1
            self.shed += 1
            return True
        self.dropped += 1
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY_SECONDS:
            self._last_log = now
            log.error(
                "clickwatch %s (%d waiting, %d MB of bodies): %d observation(s) dropped so far",
                self._describe(),
                held,
                self.bytes >> 20,
                self.dropped,
            )
        return False

    def put_control(self, message: Control) -> None:
        """Queue a setting, counts or a reset, from any thread, behind every observation put before: never dropped."""
        with self._controls_lock:
            # An observation being put at this very moment by the other thread may come after it: a reset then
            # drops it by its capture time (StoreWriter), as it does anything captured before it that comes later.
            self._controls.append((self._put, message))
        self.wake()

    def take(self, limit: int | None = None, until: type | None = None) -> list[Message]:
        """The oldest messages, at most `limit` of them (all when None), ending with the first of class `until`."""
        items = self._items
        # Observations present now (the putting thread only adds): the prefix of them before the next control.
        count = len(items)
        taken: list[Message] = []
        room = len(self) if limit is None else limit
        while room > 0:
            control = self._controls[0] if self._controls else None
            if control is not None and control[0] <= self._taken:
                with self._controls_lock:
                    self._controls.popleft()
                taken.append(control[1])
                room -= 1
                if type(control[1]) is until:
                    break
                continue
            n = min(room, count if control is None else min(count, control[0] - self._taken))
            if n <= 0:
                break
            # Observations only: `until` (a reset, a setting) is always a control, so no run ends early.
            taken += [items.popleft() for _ in range(n)]
            count -= n
            room -= n
            self._taken += n
            sizes = self._sizes
            self._bytes_out += sum([sizes.popleft() for _ in range(n)])
        return taken

    def wait(self, timeout: float) -> bool:
        """Sleep until something is put or `wake` is called, at most `timeout` s; True if something waits."""
        if self._items or self._controls:
            return True
        self._asleep = True
        self._ready.clear()
        # Checked again after clear(): a put just before it must not be slept through.
        if not (self._items or self._controls):
            self._ready.wait(timeout)
        self._asleep = False
        return bool(self._items or self._controls)

    def wake(self) -> None:
        """End a taker's wait now (something was put, or it should stop waiting)."""
        self._asleep = False
        self._ready.set()
