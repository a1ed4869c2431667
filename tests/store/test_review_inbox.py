"""Review item (b): a reset asked from a dashboard thread while the proxy's event loop puts into the same inbox.

The inbox has one putting thread for observations; controls (a reset, a setting) may come from any thread and
must neither unpair the bodies' sizes from their messages nor lose a wake-up, and a reset stays a barrier.
"""

import threading
import time
from collections import deque

from clickwatch.store import wire
from clickwatch.store.inbox import Inbox
from clickwatch.store.link import StoreLink

from .observations import seen

KB = 1024


class _PausedAppend(deque):
    """The sizes deque, pausing the putting thread between a size and its message: the moment a thread switch
    can come (the one fault injected here; everything else is the real inbox)."""

    def __init__(self, paused: threading.Event, resume: threading.Event) -> None:
        super().__init__()
        self.paused = paused
        self.resume = resume
        self.putter: int | None = None

    def append(self, value):  # type: ignore[override]
        super().append(value)
        if threading.get_ident() == self.putter and not self.paused.is_set():
            self.paused.set()
            assert self.resume.wait(5)


def test_a_control_put_from_another_thread_between_a_size_and_its_message_keeps_the_bytes_right():
    inbox = Inbox(100, lambda: "test inbox")
    paused, resume = threading.Event(), threading.Event()
    sizes = _PausedAppend(paused, resume)
    inbox._sizes = sizes
    body = b"x" * (64 * KB)

    def feeder() -> None:
        sizes.putter = threading.get_ident()
        inbox.put(seen("a", body=body))

    putting = threading.Thread(target=feeder)
    putting.start()
    assert paused.wait(5)
    inbox.put_control(wire.Reset("id", "default", time.time()))  # a dashboard thread, mid-put
    resume.set()
    putting.join(5)
    assert len(inbox) == 2
    taken = inbox.take(1)
    assert [type(m).__name__ for m in taken] == ["Reset"]
    assert inbox.bytes == 64 * KB  # the body of "a", still held
    held = [m for m in (taken + inbox.take()) if type(m) is wire.Request]
    assert [m.uid for m in held] == ["a"]
    assert inbox.bytes == 0
    # And, taken one at a time, the bytes held always match the bodies held.
    inbox.put(seen("b", body=body))
    inbox.put_control(wire.Reset("id2", "default", time.time()))
    inbox.put(seen("c", body=body))
    sizes_seen = []
    while inbox:
        inbox.take(1)
        sizes_seen.append(inbox.bytes)
    assert sizes_seen[-1] == 0 and all(size in (0, 64 * KB) for size in sizes_seen)


def test_a_reset_is_a_barrier_whichever_thread_puts_it():
    inbox = Inbox(100, lambda: "test inbox")
    inbox.put(seen("before"))
    done = threading.Thread(target=inbox.put_control, args=(wire.Reset("id", "default", time.time()),))
    done.start()
    done.join()
    inbox.put(seen("after"))
    assert [type(m).__name__ for m in inbox.take(10, until=wire.Reset)] == ["Request", "Reset"]
    assert [m.uid for m in inbox.take()] == ["after"]  # type: ignore[union-attr]


def test_a_sleeping_taker_is_woken_by_a_control_from_another_thread():
    inbox = Inbox(100, lambda: "test inbox")
    woke = []
    taker = threading.Thread(target=lambda: woke.append(inbox.wait(30)))
    taker.start()
    while not inbox._asleep:
        time.sleep(0.001)
    inbox.put_control(wire.Reset("id", None, time.time()))
    taker.join(10)
    assert woke == [True]


def test_many_dashboard_threads_resetting_while_the_proxy_puts_under_load(tmp_path):
    # A real link and store process; the test's main thread is the proxy's event loop (the one putting thread).
    link = StoreLink(str(tmp_path / "cw.db"))
    outcomes: list[object] = []

    def dashboard(n: int) -> None:
        for _ in range(3):
            try:
                outcomes.append(link.reset("default", timeout=30))
            except Exception as exc:  # the test reports it
                outcomes.append(exc)

    threads = [threading.Thread(target=dashboard, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    sent = 0
    deadline = time.monotonic() + 20
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        for _ in range(10):
            link.send(seen(f"r{sent}", body=b"x" * KB))
            sent += 1
        time.sleep(0.01)
    for thread in threads:
        thread.join(30)
    assert link.close(20) is True
    assert len(outcomes) == 24 and all(isinstance(o, int) for o in outcomes), outcomes
    assert len(link._inbox) == 0 and link._inbox.bytes == 0
    print(f"\n{sent} observations put while 8 threads made 24 resets")
