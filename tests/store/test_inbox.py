"""The inbox's bounds: a count and bytes of bodies; answers shed before anything is dropped; controls never."""

from clickwatch.store import wire
from clickwatch.store.inbox import OVERFLOW_NOTE, Inbox

from .observations import answered, seen

MB = 1024 * 1024


def big_answer(uid: str, size: int) -> wire.Answer:
    return answered(uid)._replace(fields=((b"content-type", b"application/json"),), body=b"x" * size)


def test_bodies_beyond_the_byte_bound_are_shed_from_answers_then_dropped_and_counted():
    inbox = Inbox(10000, lambda: "test inbox", byte_bound=3 * MB)
    held = []
    for n in range(10):
        inbox.put(seen(f"r{n}", body=b"x" * MB))
        inbox.put(big_answer(f"r{n}", MB))
        held.append(inbox.bytes)
    assert max(held) <= 3 * MB  # never more bodies than the bound, whatever came
    # Room for r0, its answer and r1: every later request is dropped, every later answer shed.
    assert inbox.dropped == 8
    assert inbox.shed == 9
    taken = inbox.take()
    assert inbox.bytes == 0
    answers = [m for m in taken if isinstance(m, wire.Answer)]
    assert len(answers) == 10  # no delivery is left pending for want of room
    assert [a.note for a in answers if not a.body] == [OVERFLOW_NOTE] * 9
    assert all(a.fields == () for a in answers if not a.body)


def test_room_comes_back_as_messages_are_taken():
    inbox = Inbox(10000, lambda: "test inbox", byte_bound=2 * MB)
    assert inbox.put(seen("a", body=b"x" * MB))
    assert inbox.put(seen("b", body=b"x" * MB))
    assert not inbox.put(seen("c", body=b"x" * MB))
    assert len(inbox.take(1)) == 1
    assert inbox.bytes == MB
    assert inbox.put(seen("c", body=b"x" * MB))
    assert inbox.dropped == 1


def test_small_messages_are_bounded_by_count_and_controls_are_never_dropped():
    inbox = Inbox(2, lambda: "test inbox", byte_bound=MB)
    for n in range(4):
        inbox.put(seen(f"r{n}"))
    inbox.put_control(wire.Reset("id", None, 0.0))
    assert inbox.dropped == 2
    assert [type(m).__name__ for m in inbox.take()] == ["Request", "Request", "Reset"]


def test_taking_stops_after_a_barrier():
    inbox = Inbox(100, lambda: "test inbox")
    inbox.put(seen("a"))
    inbox.put_control(wire.Reset("id", "default", 0.0))
    inbox.put(seen("b"))
    assert [type(m).__name__ for m in inbox.take(10, until=wire.Reset)] == ["Request", "Reset"]
    assert [m.uid for m in inbox.take(10, until=wire.Reset)] == ["b"]  # type: ignore[union-attr]
