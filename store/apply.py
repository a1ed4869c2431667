"""Apply store operations inside the caller's transaction: the one write path of live capture and of imports."""

from __future__ import annotations

import sqlite3
from typing import Any

from clickwatch.core.pipeline import StoreOps


def _insert(table: str, columns: list[str]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})"


# A finding about a delivery that is no longer there (removed by a reset while it waited) is not stored: it
# would stand alone, about nothing the store shows.
_FINDING_INSERT = (
    "INSERT INTO findings (delivery_id, run, visitor, kind, severity, message, at) "
    "SELECT d.id, :run, :visitor, :kind, :severity, :message, :at "
    "FROM (SELECT 1) LEFT JOIN deliveries d ON d.uid = :delivery_uid "
    "WHERE :delivery_uid IS NULL OR d.id IS NOT NULL"
)
# What a reset removes, children before the deliveries they point to.
CAPTURED_TABLES = ("findings", "consent_signals", "datalayer", "visitors", "deliveries")


def next_changes(conn: sqlite3.Connection, count: int) -> int:
    """Hand out `count` change numbers (inside the caller's write transaction); the first of them.

    They only ever grow, resets included: the high-water mark lives in `change_counter` (migration 0014), so a
    reset of the run holding the newest changes never makes a number a viewer has seen come again. (A row whose
    seq was written by other means, an older version say, still counts: the mark never falls behind MAX(seq).)
    """
    newest = conn.execute(
        "UPDATE change_counter SET seq = MAX(seq, (SELECT COALESCE(MAX(seq), 0) FROM deliveries)) + ? WHERE id = 1 "
        "RETURNING seq",
        (count,),
    ).fetchone()
    return int(newest[0]) - count + 1


def coalesce(ops: StoreOps) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Fold answers and consent decisions into requests of the same batch: one row written instead of three.

    Returns the answers and decisions folded: should a request's row be there already (handed again to a store
    that replaced a dead one), its INSERT is ignored and they are applied as updates.
    """
    new = {row["uid"]: row for row in ops.inserts}
    if not new:
        return [], []
    answers = []
    folded_answers = []
    for answer in ops.answers:
        row = new.get(answer["uid"])
        if row is None:
            answers.append(answer)
        else:
            row.update(answer)
            folded_answers.append(answer)
    ops.answers = answers
    consent = []
    folded_consent = []
    for decision in ops.consent:
        row = new.get(decision["uid"])
        if row is None:
            consent.append(decision)
        else:
            row["consent"] = decision["consent"]
            folded_consent.append(decision)
    ops.consent = consent
    links = []
    for link in ops.links:
        row = new.get(link["delivery_uid"])
        if row is None:
            links.append(link)
        else:
            row["pushed_at"] = link["pushed_at"]
            links.append({**link, "folded": True})
    ops.links = links
    return folded_answers, folded_consent


def _update_answers(conn: sqlite3.Connection, answers: list[dict[str, Any]]) -> None:
    for columns, rows in _by_columns(answers).items():
        sets = ", ".join(f"{c} = :{c}" for c in columns if c != "uid")
        conn.executemany(f"UPDATE deliveries SET {sets} WHERE uid = :uid", rows)


def _by_columns(rows: list[dict[str, Any]]) -> dict[tuple[str, ...], list[dict[str, Any]]]:
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row), []).append(row)
    return groups


def _apply_counters(conn: sqlite3.Connection, rows: list[dict[str, object]]) -> None:
    """Counter rows as the writer makes them: increments ("add"), gauges ("set") and Counts taken ("source")."""
    conn.executemany(
        "INSERT INTO metric_counters (name, value, updated_at) VALUES (:name, :add, :updated_at) "
        "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value, updated_at = excluded.updated_at",
        [row for row in rows if "add" in row],
    )
    conn.executemany(
        "INSERT INTO metric_counters (name, value, updated_at) VALUES (:name, :set, :updated_at) "
        "ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        [row for row in rows if "set" in row],
    )
    conn.executemany(
        "INSERT INTO counter_feeds (source, seq, updated_at) VALUES (:source, :seq, :updated_at) "
        "ON CONFLICT (source) DO UPDATE SET seq = MAX(seq, excluded.seq), updated_at = excluded.updated_at",
        [row for row in rows if "source" in row],
    )


def apply_ops(conn: sqlite3.Connection, ops: StoreOps) -> None:
    """Write a batch; order matters: an answer, a consent decision or a finding may belong to a request in it."""
    folded_answers, folded_consent = coalesce(ops)
    # Every delivery this batch changes gets the next change number (seq), in this order: the live page and
    # SSE resume by it. New rows carry theirs in the INSERT; only rows changed by later answers, consent
    # decisions or findings need an UPDATE.
    touched = dict.fromkeys(
        [row["uid"] for row in ops.inserts]
        + [row["uid"] for row in ops.answers]
        + [row["uid"] for row in ops.consent]
        + [row["delivery_uid"] for row in ops.findings if row["delivery_uid"]]
        + [row["delivery_uid"] for row in ops.links if not row.get("folded")]
    )
    start = next_changes(conn, len(touched)) if touched else 0
    seq = {uid: start + i for i, uid in enumerate(touched)}
    groups: dict[tuple[str, ...], list[dict[str, object]]] = {}
    for row in ops.inserts:
        row["seq"] = seq[row["uid"]]
        groups.setdefault(tuple(row), []).append(row)
    inserted_all = True
    for names, rows in groups.items():
        cursor = conn.executemany(_insert("deliveries", list(names)).replace("INSERT", "INSERT OR IGNORE", 1), rows)
        inserted_all = inserted_all and cursor.rowcount == len(rows)
    if not inserted_all:
        # Some rows were there already: what was folded into their ignored INSERTs is applied to them here.
        ops.answers = folded_answers + ops.answers
        ops.consent = folded_consent + ops.consent
    if ops.answers:
        _update_answers(conn, ops.answers)
    if ops.consent:
        conn.executemany("UPDATE deliveries SET consent = :consent WHERE uid = :uid", ops.consent)
    if ops.findings:
        conn.executemany(_FINDING_INSERT, ops.findings)
    if ops.signals:
        conn.executemany(_insert("consent_signals", list(ops.signals[0])), ops.signals)
    if ops.pushes:
        conn.executemany(_insert("datalayer", list(ops.pushes[0])).replace("INSERT", "INSERT OR IGNORE", 1), ops.pushes)
    if ops.links:
        conn.executemany(
            "UPDATE datalayer SET delivery_uid = :delivery_uid WHERE uid = :push_uid",
            [{"delivery_uid": r["delivery_uid"], "push_uid": r["push_uid"]} for r in ops.links],
        )
        unfolded = [r for r in ops.links if not r.get("folded")]
        conn.executemany(
            "UPDATE deliveries SET pushed_at = :pushed_at WHERE uid = :delivery_uid",
            [{"pushed_at": r["pushed_at"], "delivery_uid": r["delivery_uid"]} for r in unfolded],
        )
    if ops.rejected:
        conn.executemany(
            "INSERT INTO metric_observer_rejected (reason, n) VALUES (?, ?) "
            "ON CONFLICT (reason) DO UPDATE SET n = n + excluded.n",
            [(reason, n) for reason, n, _ in ops.rejected],
        )
    # A row that was already there (an INSERT ignored) is changed, not new: it needs the UPDATE too.
    new_rows = {row["uid"] for row in ops.inserts} if inserted_all else set()
    changed = [(number, uid) for uid, number in seq.items() if uid not in new_rows]
    if changed:
        conn.executemany("UPDATE deliveries SET seq = ? WHERE uid = ?", changed)
    if ops.counters:
        _apply_counters(conn, ops.counters)
    if ops.visitors:
        rows = list(ops.visitors.values())
        columns = list(rows[0])
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in ("run", "visitor", "first_seen"))
        conn.executemany(f"{_insert('visitors', columns)} ON CONFLICT(run, visitor) DO UPDATE SET {updates}", rows)


def remove_captured(conn: sqlite3.Connection, run: str | None = None) -> int:
    """Remove captured data (of one run, or all) inside the caller's transaction; the deliveries removed.

    The counters behind the metrics stay: they only ever grow, and so do change numbers (`next_changes`). A reset
    of every run is counted in `change_counter.resets`: what a live reader watches to restart its streams.
    """
    clause, params = ("WHERE run = ?", (run,)) if run is not None else ("", ())
    if run is None:
        conn.execute("UPDATE change_counter SET resets = resets + 1 WHERE id = 1")
    removed = conn.execute(f"SELECT count(*) FROM deliveries {clause}", params).fetchone()[0]
    for table in CAPTURED_TABLES:
        conn.execute(f"DELETE FROM {table} {clause}", params)
    return int(removed)
