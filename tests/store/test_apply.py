"""Change numbers (seq): every delivery a batch changes gets the next one, in order; the live page resumes by them."""

import sqlite3

from clickwatch.core.model import Verdict
from clickwatch.core.pipeline import StoreOps
from clickwatch.core.record import answer_row, request_body, request_row
from clickwatch.store import wire
from clickwatch.store.apply import apply_ops
from clickwatch.store.schema import open_database

from .observations import answered, seen


def insert(uid: str) -> dict:
    request = wire.observation(seen(uid))
    return request_row(request, request_body(request, 1000))


def seqs(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT uid, seq FROM deliveries").fetchall())


def write(conn: sqlite3.Connection, ops: StoreOps) -> None:
    with conn:
        apply_ops(conn, ops)


def test_new_rows_carry_their_change_numbers_and_later_changes_get_new_ones(tmp_path):
    conn = open_database(str(tmp_path / "cw.db")).conn
    write(conn, StoreOps(inserts=[insert("a"), insert("b")]))
    assert seqs(conn) == {"a": 1, "b": 2}
    answer = answer_row(wire.observation(answered("a")), Verdict.DELIVERED, 1000)
    write(conn, StoreOps(inserts=[insert("c")], answers=[answer]))
    # The new row first, then the row its answer changed: both after everything before.
    assert seqs(conn) == {"a": 4, "b": 2, "c": 3}
    write(conn, StoreOps(consent=[{"uid": "b", "consent": "given"}]))
    assert seqs(conn)["b"] == 5


def test_a_row_inserted_again_is_a_change_not_a_new_row(tmp_path):
    # A batch handed on twice (after a store process died mid-batch) meets its own rows: they keep one row
    # each, and the change still moves them to the end.
    conn = open_database(str(tmp_path / "cw.db")).conn
    write(conn, StoreOps(inserts=[insert("a"), insert("b")]))
    write(conn, StoreOps(inserts=[insert("a"), insert("c")]))
    assert seqs(conn) == {"a": 3, "b": 2, "c": 4}
    assert conn.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0] == 3


def test_a_request_handed_again_with_its_answer_still_gets_the_answer(tmp_path):
    # A store that replaces a dead one is handed again what the dead one wrote but had not reported written: the
    # request's INSERT is ignored, and the answer folded into it must reach the row all the same.
    conn = open_database(str(tmp_path / "cw.db")).conn
    write(conn, StoreOps(inserts=[insert("a")]))
    answer = answer_row(wire.observation(answered("a", 500)), Verdict.REJECTED, 1000)
    write(
        conn, StoreOps(inserts=[insert("a"), insert("b")], answers=[answer], consent=[{"uid": "a", "consent": "given"}])
    )
    rows = dict(conn.execute("SELECT uid, verdict || ' ' || COALESCE(consent, '') FROM deliveries").fetchall())
    assert rows == {"a": "rejected given", "b": "pending "}
