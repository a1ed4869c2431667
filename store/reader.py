"""The read side of the store: filtered pages of deliveries, details, summaries, visitor timelines.

Readers open their own connections (WAL lets them read while the proxy writes). Every query here is
answered from an index or from the trigger-maintained count tables, so a million deliveries cost about
what a thousand do.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import math
import re
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from typing import Any, Concatenate

from clickwatch.core.findings import FindingKind, Severity
from clickwatch.core.model import Kind, Verdict
from clickwatch.core.record import schema_name
from clickwatch.store.schema import LATEST_MIGRATION

MAX_LIMIT = 500
MAX_ID = 2**63 - 1  # SQLite integers are signed 64-bit: a larger id cannot even be bound
MAX_CURSOR_TIME = 1e12  # epoch seconds (the year 33658): a cursor beyond it was not handed out by this API
# What became of a mapped data-layer push (the `outcome` of a visitor's pushes):
PUSH_SENT = "sent"  # a clickstream delivery carried it
PUSH_NOT_SENT = "not_sent"  # an event_not_sent finding names it: consent was given, no POST followed in time
PUSH_UNMATCHED = "unmatched"  # consent was given, nothing carried it yet and no finding says it never came
PUSH_WITHHELD = "withheld"  # not sent, and consent was not given at the push: nothing was owed
FUNNEL_STEPS = ("pushed", "pushed_with_consent", "sent", "delivered")

ITEM_COLUMNS = (
    "id, run, kind, target_kind, verdict, method, url, host, schema, schema_name, status_code, duration_ms, "
    "sent_at, answered_at, visitor, client_addr, consent, consent_reference, error, seq, pushed_at"
)

_D_ITEM_COLUMNS = ", ".join(f"d.{column.strip()}" for column in ITEM_COLUMNS.split(","))


class StoreUnavailable(Exception):
    """The store file cannot be read (missing, not a clickwatch store, or unreadable)."""


class StoreDamaged(Exception):
    """The store file is damaged: a page SQLite cannot read, or a text value that is not UTF-8. Not transient:
    reading again will not help, so commands exit 2 and the dashboard answers 500 (docs/reliability.md)."""


_UNDECODABLE = re.compile(r"Could not decode to UTF-8 column '(.*?)' with text", re.DOTALL)


def _raise_if_damage(path: str, exc: sqlite3.DatabaseError) -> None:
    """Raise StoreDamaged, naming the file and what is wrong, when a failed read means the file is damaged."""
    undecodable = _UNDECODABLE.match(str(exc))
    if undecodable:
        # sqlite3's own message quotes the whole value: captured data, and possibly a long body. The column is enough.
        what = f"an undecodable value in column {undecodable[1]!r} (not UTF-8 text)"
        raise StoreDamaged(f"{path} is damaged: {what}") from None
    if (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF == sqlite3.SQLITE_CORRUPT:
        raise StoreDamaged(f"{path} is damaged: {exc}") from None


def _guarded[**P, R](method: Callable[Concatenate[sqlite3.Cursor, P], R]) -> Callable[Concatenate[_Cursor, P], R]:
    """A cursor method whose sqlite3 errors that mean damage become StoreDamaged naming the cursor's file."""

    @functools.wraps(method)
    def guarded(cursor: _Cursor, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(cursor, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            _raise_if_damage(cursor.connection.path, exc)
            raise

    return guarded


class _Cursor(sqlite3.Cursor):
    """A cursor of a store connection: a read that finds damage raises StoreDamaged, whichever query it was. Rows
    are stepped by each of these methods (the C fetch methods do not go through `__next__`)."""

    connection: StoreConnection

    execute = _guarded(sqlite3.Cursor.execute)  # type: ignore[assignment]
    fetchone = _guarded(sqlite3.Cursor.fetchone)
    fetchmany = _guarded(sqlite3.Cursor.fetchmany)
    fetchall = _guarded(sqlite3.Cursor.fetchall)
    __next__ = _guarded(sqlite3.Cursor.__next__)


class StoreConnection(sqlite3.Connection):
    """A read connection that knows its file: the one place where a damaged store becomes StoreDamaged.

    Every query of a reader, an export, a bundle, a diff, a check, the dashboard and the metrics runs on one (made
    by `connect`), so none of them handles sqlite3's corruption and decoding errors itself.
    """

    path: str = ""

    def cursor(self, factory: Any = _Cursor) -> Any:
        return super().cursor(factory)

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        # sqlite3.Connection.execute makes its cursor in C, not through `cursor`: made here, it is ours.
        cursor: _Cursor = self.cursor()
        return cursor.execute(sql, parameters)


def check_intact(path: str) -> None:
    """StoreDamaged when SQLite's quick check finds damaged pages in the store at `path` (a file that is not there
    yet, or not a database at all, is left to whoever opens it). Reads every page: 0.25 s for 578 MB in the cache.

    Values that are not UTF-8 are not looked for: each is found when it is read.
    """
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0, factory=StoreConnection)
    except sqlite3.Error:
        return
    conn.path = path
    try:
        problems = [row[0] for row in conn.execute("PRAGMA quick_check(3)") if row[0] != "ok"]
    except sqlite3.Error:
        return
    finally:
        conn.close()
    if problems:
        first = " ".join(problems[0].replace("*** in database main ***", "").split())
        raise StoreDamaged(f"{path} is damaged: database disk image is malformed (quick_check: {first})")


class BadCursor(ValueError):
    """A pagination cursor that this store did not hand out."""


@dataclass(frozen=True, slots=True)
class DeliveryFilter:
    """What the dashboard, the API, exports and checks can filter deliveries by."""

    kind: Kind | None = None
    verdict: Verdict | None = None
    schema: str | None = None
    finding: FindingKind | None = None
    visitor: str | None = None
    run: str | None = None
    since: float | None = None
    until: float | None = None

    def is_empty(self) -> bool:
        """True when nothing is filtered."""
        return all(getattr(self, f.name) is None for f in fields(self))

    def only_run(self) -> bool:
        """True when at most the run is filtered (the count tables can answer)."""
        return all(getattr(self, f.name) is None for f in fields(self) if f.name != "run")

    def matches(self, item: dict[str, Any]) -> bool:
        """Whether a delivery item (as listed, with its findings) passes this filter: `where()` in Python, for the
        live feed, which reads each change once and filters it per subscriber (tests prove the two agree)."""
        for name in ("kind", "verdict", "visitor", "run"):
            wanted = getattr(self, name)
            if wanted is not None and item.get(name) != str(wanted):
                return False
        if self.schema is not None and item.get("schema_name") != schema_name(self.schema):
            return False
        if self.finding is not None and not any(f.get("kind") == str(self.finding) for f in item.get("findings", ())):
            return False
        sent_at = item.get("sent_at")
        if self.since is not None and (sent_at is None or sent_at < self.since):
            return False
        return self.until is None or (sent_at is not None and sent_at <= self.until)

    def where(self, alias: str = "d") -> tuple[str, list[Any]]:
        """SQL conditions and parameters for this filter."""
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("kind", self.kind),
            ("verdict", self.verdict),
            ("visitor", self.visitor),
            ("run", self.run),
        ):
            if value is not None:
                clauses.append(f"{alias}.{column} = ?")
                params.append(str(value))
        if self.schema is not None:
            # Users name schemas short ('ProductView') or as sent ('context/commerce/ProductView'): both are the
            # stored schema_name. One equality keeps its (schema_name, sent_at) index usable; an OR with the
            # unindexed `schema` column walked the whole store for a rare or unknown schema.
            clauses.append(f"{alias}.schema_name = ?")
            params.append(schema_name(self.schema))
        if self.finding is not None:
            clauses.append(f"EXISTS (SELECT 1 FROM findings f WHERE f.delivery_id = {alias}.id AND f.kind = ?)")
            params.append(str(self.finding))
        if self.since is not None:
            clauses.append(f"{alias}.sent_at >= ?")
            params.append(self.since)
        if self.until is not None:
            clauses.append(f"{alias}.sent_at <= ?")
            params.append(self.until)
        return (" AND ".join(clauses) or "1"), params


def connect(path: str) -> sqlite3.Connection:
    """A read-only connection to an existing store; StoreUnavailable when there is none yet, StoreDamaged (now or
    on any later read) when the file is damaged."""
    try:
        conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, timeout=5.0, check_same_thread=False, factory=StoreConnection
        )
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"cannot open {path}: {exc}") from None
    conn.path = path
    conn.row_factory = sqlite3.Row
    try:
        conn.execute("SELECT 1 FROM deliveries LIMIT 1").fetchall()
        conn.execute("SELECT 1 FROM delivery_counts LIMIT 1").fetchall()
        # Each migration commits on its own: a store half-way through them has some tables and not all columns.
        upgraded = conn.execute(
            "SELECT 1 FROM _sqlite_migrations WHERE migration_set = 'clickwatch' AND name = ?", (LATEST_MIGRATION,)
        ).fetchone()
    except StoreDamaged:
        conn.close()
        raise
    except sqlite3.Error as exc:
        conn.close()
        raise StoreUnavailable(f"{path} is not a readable clickwatch store ({exc})") from None
    if upgraded is None:
        conn.close()
        raise StoreUnavailable(f"{path} is being created or upgraded by the proxy (migration {LATEST_MIGRATION})")
    return conn


def encode_cursor(sent_at: float, delivery_id: int) -> str:
    """An opaque cursor for the page after a delivery."""
    return base64.urlsafe_b64encode(json.dumps([sent_at, delivery_id]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, int]:
    """The (sent_at, id) position a cursor stands for; BadCursor (naming the cursor) for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        sent_at, delivery_id = json.loads(raw)
    except (ValueError, TypeError, RecursionError, binascii.Error, UnicodeDecodeError):
        raise BadCursor("cursor: not one this API handed out") from None
    # A cursor is [sent_at, id] as handed out: a finite time and a delivery id SQLite can hold.
    if isinstance(sent_at, bool) or not isinstance(sent_at, int | float):
        raise BadCursor("cursor: its time is not a number")
    # (an int beyond a float's range would make isfinite raise: the range check comes first; NaN fails isfinite)
    if abs(sent_at) > MAX_CURSOR_TIME or not math.isfinite(sent_at):
        raise BadCursor("cursor: its time is not a finite number in range")
    if isinstance(delivery_id, bool) or not isinstance(delivery_id, int) or not 0 <= delivery_id <= MAX_ID:
        raise BadCursor(f"cursor: its delivery id is not a whole number from 0 to {MAX_ID}")
    return float(sent_at), delivery_id


def _findings_by_delivery(conn: sqlite3.Connection, ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    if not ids:
        return out
    marks = ",".join("?" * len(ids))
    for row in conn.execute(
        f"SELECT delivery_id, kind, severity, message, at FROM findings WHERE delivery_id IN ({marks}) ORDER BY id",
        ids,
    ):
        out[row["delivery_id"]].append(
            {"kind": row["kind"], "severity": row["severity"], "message": row["message"], "at": row["at"]}
        )
    return out


def _item(row: sqlite3.Row, findings: list[dict[str, Any]]) -> dict[str, Any]:
    item = {key: row[key] for key in row.keys()}  # noqa: SIM118 (sqlite3.Row iterates values)
    item["findings"] = findings
    return item


def list_deliveries(
    conn: sqlite3.Connection, flt: DeliveryFilter, limit: int = 50, cursor: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """Newest first, one page, and the cursor of the next page (None at the end)."""
    if flt.finding is not None:
        # Page through that kind's findings newest first (each carries its delivery's sent_at) instead of
        # probing every delivery for one: a rare finding kind would walk the whole store for one page.
        where, params = replace(flt, finding=None).where()
        source = "findings fk CROSS JOIN deliveries d ON d.id = fk.delivery_id"
        where = (
            "fk.kind = ? AND NOT EXISTS (SELECT 1 FROM findings f2 WHERE f2.delivery_id = fk.delivery_id "
            f"AND f2.kind = fk.kind AND f2.id < fk.id) AND {where}"
        )
        params = [str(flt.finding), *params]
        at, key = "fk.sent_at", "fk.delivery_id"
    else:
        where, params = flt.where()
        source, at, key = "deliveries d", "d.sent_at", "d.id"
    if cursor:
        sent_at, delivery_id = decode_cursor(cursor)
        where += f" AND ({at} < ? OR ({at} = ? AND {key} < ?))"
        params += [sent_at, sent_at, delivery_id]
    rows = conn.execute(
        f"SELECT {_D_ITEM_COLUMNS} FROM {source} WHERE {where} ORDER BY {at} DESC, {key} DESC LIMIT ?",
        [*params, limit + 1],
    ).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    by_id = _findings_by_delivery(conn, [r["id"] for r in rows])
    items = [_item(r, by_id[r["id"]]) for r in rows]
    next_cursor = encode_cursor(rows[-1]["sent_at"], rows[-1]["id"]) if more and rows else None
    return items, next_cursor


def _json_or_none(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _body(row: sqlite3.Row, prefix: str) -> dict[str, Any]:
    return {
        "kind": row[f"{prefix}_body_kind"],
        "text": row[f"{prefix}_body"],
        "size": row[f"{prefix}_body_size"],
        "truncated": bool(row[f"{prefix}_body_truncated"]),
        "note": row[f"{prefix}_body_note"],
    }


def get_delivery(conn: sqlite3.Connection, delivery_id: int) -> dict[str, Any] | None:
    """One delivery with its request, its response or error, its findings and the consent it was judged by."""
    row = conn.execute(
        f"SELECT {ITEM_COLUMNS}, path, user_agent, origin, ended_at, request_headers, response_headers, "
        "request_body, request_body_kind, request_body_size, request_body_truncated, request_body_note, "
        "response_body, response_body_kind, response_body_size, response_body_truncated, response_body_note "
        "FROM deliveries d WHERE id = ?",
        (delivery_id,),
    ).fetchone()
    if row is None:
        return None
    summary_keys = [c.strip() for c in ITEM_COLUMNS.split(",")] + ["path", "user_agent", "origin", "ended_at"]
    item = {key: row[key] for key in summary_keys}
    item["findings"] = _findings_by_delivery(conn, [delivery_id])[delivery_id]
    item["request"] = {"headers": _json_or_none(row["request_headers"]) or [], "body": _body(row, "request")}
    if row["status_code"] is not None:
        item["response"] = {"headers": _json_or_none(row["response_headers"]) or [], "body": _body(row, "response")}
    else:
        item["response"] = None
    item["error"] = row["error"]
    return item


def summary(conn: sqlite3.Connection, flt: DeliveryFilter) -> dict[str, Any]:
    """Counts by verdict and by finding kind, health, and when the last delivery got through."""
    deliveries = {v.value: 0 for v in Verdict}
    findings = {k.value: 0 for k in FindingKind}
    severities = {s.value: 0 for s in Severity}
    if flt.only_run():
        run_clause, run_params = ("WHERE run = ?", [flt.run]) if flt.run is not None else ("", [])
        for row in conn.execute(
            f"SELECT verdict, SUM(n) AS n FROM delivery_counts {run_clause} GROUP BY verdict", run_params
        ):
            deliveries[row["verdict"]] = int(row["n"])
        for row in conn.execute(
            f"SELECT kind, severity, SUM(n) AS n FROM finding_counts {run_clause} GROUP BY kind, severity", run_params
        ):
            findings[row["kind"]] = findings.get(row["kind"], 0) + int(row["n"])
            severities[row["severity"]] = severities.get(row["severity"], 0) + int(row["n"])
    elif _counted(flt):
        _count_from_tables(conn, flt, deliveries, findings, severities)
    elif (hours := _whole_hours(flt)) is not None:
        _count_by_hours(conn, flt, hours, deliveries, findings, severities)
    elif _within_hours(flt):
        _count_edge(conn, flt, deliveries, findings, severities)
        if _about_visitors(flt):
            _count_loose(conn, flt, findings, severities)
    else:
        _count_rows(conn, flt, deliveries, findings, severities)
    last = _last_delivered(conn, flt)
    healthy = deliveries["rejected"] == 0 and deliveries["failed"] == 0 and severities["error"] == 0
    return {
        "healthy": healthy,
        "deliveries": deliveries,
        "findings": findings,
        "severities": severities,
        "last_delivered_at": last,
        "pending_decisions": pending_decisions(conn, flt.run),
        "oldest_pending_at": _oldest_pending(conn, flt) if deliveries["pending"] else None,
    }


def _add(counted: list[sqlite3.Row], findings: dict[str, int], severities: dict[str, int]) -> None:
    for row in counted:
        findings[row["kind"]] = findings.get(row["kind"], 0) + int(row["n"])
        severities[row["severity"]] = severities.get(row["severity"], 0) + int(row["n"])


def _count_rows(
    conn: sqlite3.Connection,
    flt: DeliveryFilter,
    deliveries: dict[str, int],
    findings: dict[str, int],
    severities: dict[str, int],
    *,
    loose: bool = True,
    findings_too: bool = True,
) -> None:
    """Counts by verdict, finding kind and severity from the matching rows themselves (through their indexes)."""
    if flt.finding is not None:
        _count_flagged_rows(conn, flt, deliveries, findings, severities)
        return
    where, params = flt.where()
    # `+verdict`: without statistics the planner otherwise walks the whole (verdict, sent_at) index to group
    # in order, rather than the few rows a time or visitor filter selects (200 ms instead of 2 ms at 1M).
    for row in conn.execute(f"SELECT verdict, count(*) AS n FROM deliveries d WHERE {where} GROUP BY +verdict", params):
        deliveries[row["verdict"]] += int(row["n"])
    if findings_too:
        _count_finding_rows(conn, flt, findings, severities)
    if loose and _about_visitors(flt):
        _count_loose(conn, flt, findings, severities)


def _count_finding_rows(
    conn: sqlite3.Connection,
    flt: DeliveryFilter,
    findings: dict[str, int],
    severities: dict[str, int],
    *,
    by_time: bool = False,
) -> None:
    """Findings of the matching deliveries by kind and severity, from their rows (no finding filter). `by_time`:
    walk the findings in the time range (each kind's (kind, sent_at) range) and look their deliveries up, rather than
    probing every delivery in range for findings; for a short range, where findings are far fewer than deliveries."""
    where, params = flt.where()
    # A finding carries its delivery's sent_at (migration 0009): the same time bounds on it let the planner
    # skip the findings outside them before looking their deliveries up.
    mirrored, mirror_params = _finding_time(flt)
    source = "findings f JOIN deliveries d ON d.id = f.delivery_id"
    if by_time:
        # Every kind a finding has has a row in finding_counts (trigger-kept): the IN list covers them all.
        source = "findings f CROSS JOIN deliveries d ON d.id = f.delivery_id"
        mirrored = f" AND f.kind IN (SELECT DISTINCT kind FROM finding_counts){mirrored}"
    counted = conn.execute(
        f"SELECT f.kind, f.severity, count(*) AS n FROM {source} WHERE {where}{mirrored} GROUP BY f.kind, f.severity",
        params + mirror_params,
    ).fetchall()
    _add(counted, findings, severities)


def _count_flagged_rows(
    conn: sqlite3.Connection,
    flt: DeliveryFilter,
    deliveries: dict[str, int],
    findings: dict[str, int],
    severities: dict[str, int],
) -> None:
    """As `_count_rows` for a `finding` filter: driven by that kind's findings, (kind, sent_at) in range, rather
    than probing every delivery in range for one (half a second for a day's traffic at 1M)."""
    where, params = replace(flt, finding=None).where()
    mirrored, mirror_params = _finding_time(flt, "fk")
    first_of_kind = (
        "fk.kind = ? AND NOT EXISTS (SELECT 1 FROM findings f2 WHERE f2.delivery_id = fk.delivery_id "
        "AND f2.kind = fk.kind AND f2.id < fk.id)"
    )
    source = "findings fk CROSS JOIN deliveries d ON d.id = fk.delivery_id"
    args = [str(flt.finding), *mirror_params, *params]
    for row in conn.execute(
        f"SELECT d.verdict, count(*) AS n FROM {source} WHERE {first_of_kind}{mirrored} AND {where} "
        "GROUP BY +d.verdict",
        args,
    ):
        deliveries[row["verdict"]] += int(row["n"])
    counted = conn.execute(
        f"SELECT f.kind, f.severity, count(*) AS n FROM {source} CROSS JOIN findings f ON f.delivery_id = d.id "
        f"WHERE {first_of_kind}{mirrored} AND {where} GROUP BY f.kind, f.severity",
        args,
    ).fetchall()
    _add(counted, findings, severities)


def _count_loose(
    conn: sqlite3.Connection, flt: DeliveryFilter, findings: dict[str, int], severities: dict[str, int]
) -> None:
    """Findings about a visitor rather than a delivery (event_not_sent, no_events_after_consent, ...): they count
    too when the filter can apply to them: run, visitor and time (their own `at`)."""
    loose_where, loose_params = _loose_where(flt)
    counted = conn.execute(
        f"SELECT kind, severity, count(*) AS n FROM findings WHERE delivery_id IS NULL AND {loose_where} "
        "GROUP BY kind, severity",
        loose_params,
    ).fetchall()
    _add(counted, findings, severities)


HOUR = 3600
MINUTE = 60
DAY_HOURS = 24  # a day bucket (sent_at / 86400) holds exactly 24 hour buckets (sent_at / 3600)


def _whole_hours(flt: DeliveryFilter) -> tuple[int | None, int | None] | None:
    """The whole hours (first, last; None: open) inside a since/until filter that the hourly tables (migrations
    0012 and 0013) can count; None when they cannot answer (a verdict or visitor filter, or no whole hour inside)."""
    if flt.since is None and flt.until is None:
        return None
    if flt.verdict is not None or flt.visitor is not None:
        return None
    # Hours are sent_at / 3600 truncated: before 1970 (or right after) they would not be floors.
    if any(t is not None and t < 2 * HOUR for t in (flt.since, flt.until)):
        return None
    first = math.ceil(flt.since / HOUR) if flt.since is not None else None
    last = math.floor(flt.until / HOUR) - 1 if flt.until is not None else None
    if first is not None and last is not None and first > last:
        return None
    return first, last


def _within_hours(flt: DeliveryFilter) -> bool:
    """A since..until filter with no whole hour inside (less than two hours) that minute_counts can count."""
    if flt.since is None or flt.until is None or flt.verdict is not None or flt.visitor is not None:
        return False
    return flt.since >= 2 * HOUR


def _count_by_hours(
    conn: sqlite3.Connection,
    flt: DeliveryFilter,
    hours: tuple[int | None, int | None],
    deliveries: dict[str, int],
    findings: dict[str, int],
    severities: dict[str, int],
) -> None:
    """Whole days and hours from the trigger-kept tables, the partial hours at the ends from minutes and rows. With
    a finding filter, migration 0013's flagged hourly tables: deliveries with a finding of that kind, and every
    finding of those."""
    first, last = hours
    if flt.finding is not None:
        _sum_buckets(
            conn,
            flt,
            ("hourly_flagged_counts", "hourly_flagged_finding_counts", "hour"),
            first,
            last,
            deliveries,
            findings,
            severities,
        )
    else:
        days_first = -(-first // DAY_HOURS) if first is not None else None
        days_last = (last + 1) // DAY_HOURS - 1 if last is not None else None
        if days_first is not None and days_last is not None and days_first > days_last:
            _sum_buckets(conn, flt, HOURLY, first, last, deliveries, findings, severities)
        else:
            _sum_buckets(conn, flt, DAILY, days_first, days_last, deliveries, findings, severities)
            if first is not None and days_first is not None and first < days_first * DAY_HOURS:
                _sum_buckets(conn, flt, HOURLY, first, days_first * DAY_HOURS - 1, deliveries, findings, severities)
            if last is not None and days_last is not None and (days_last + 1) * DAY_HOURS <= last:
                _sum_buckets(conn, flt, HOURLY, (days_last + 1) * DAY_HOURS, last, deliveries, findings, severities)
    if first is not None:  # since .. the first whole hour
        edge = replace(flt, until=math.nextafter(first * HOUR, -math.inf))
        _count_edge(conn, edge, deliveries, findings, severities)
    if last is not None:  # the end of the last whole hour .. until
        edge = replace(flt, since=float((last + 1) * HOUR))
        _count_edge(conn, edge, deliveries, findings, severities)
    if _about_visitors(flt):
        _count_loose(conn, flt, findings, severities)


# (deliveries by verdict, findings by kind and severity, bucket column): 0012's hours, 0013's days
HOURLY = ("hourly_counts", "hourly_finding_counts", "hour")
DAILY = ("daily_counts", "daily_finding_counts", "day")


def _sum_buckets(
    conn: sqlite3.Connection,
    flt: DeliveryFilter,
    tables: tuple[str, str, str],
    first: int | None,
    last: int | None,
    deliveries: dict[str, int],
    findings: dict[str, int],
    severities: dict[str, int],
) -> None:
    """Add the buckets first..last (None: open) of a pair of trigger-kept tables that match the filter."""
    by_verdict, by_kind, bucket = tables
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in (
        (f"{bucket} >= ?", first),
        (f"{bucket} <= ?", last),
        ("finding = ?", str(flt.finding) if flt.finding is not None else None),
        ("run = ?", flt.run),
        ("schema_name = ?", schema_name(flt.schema) if flt.schema else None),
    ):
        if value is not None:
            clauses.append(column)
            params.append(value)
    finding_clauses, finding_params = list(clauses), list(params)
    if flt.kind is not None:
        clauses.append("kind = ?" if flt.finding is None else "delivery_kind = ?")
        params.append(str(flt.kind))
        finding_clauses.append("delivery_kind = ?")
        finding_params.append(str(flt.kind))
    for row in conn.execute(
        f"SELECT verdict, SUM(n) AS n FROM {by_verdict} WHERE {' AND '.join(clauses)} GROUP BY verdict", params
    ):
        deliveries[row["verdict"]] += int(row["n"])
    counted = conn.execute(
        f"SELECT kind, severity, SUM(n) AS n FROM {by_kind} WHERE {' AND '.join(finding_clauses)} "
        "GROUP BY kind, severity",
        finding_params,
    ).fetchall()
    _add(counted, findings, severities)


def _count_edge(
    conn: sqlite3.Connection,
    flt: DeliveryFilter,
    deliveries: dict[str, int],
    findings: dict[str, int],
    severities: dict[str, int],
) -> None:
    """A partial hour (since and until both set, at most two hours apart): its findings from their rows; its
    deliveries by verdict from whole minutes of `minute_counts` (migration 0013) and the rows of the partial minutes
    at its ends. Counting every row looked each one up in the table (20 ms for half an hour at 1M)."""
    if flt.since is None or flt.until is None or flt.finding is not None:  # a finding's rows are few: count them
        _count_rows(conn, flt, deliveries, findings, severities, loose=False)
        return
    first, last = math.ceil(flt.since / MINUTE), math.floor(flt.until / MINUTE) - 1
    if first > last:
        _count_rows(conn, flt, deliveries, findings, severities, loose=False)
        return
    clauses = ["minute >= ?", "minute <= ?"]
    params: list[Any] = [first, last]
    for column, value in (
        ("run = ?", flt.run),
        ("kind = ?", str(flt.kind) if flt.kind is not None else None),
        ("schema_name = ?", schema_name(flt.schema) if flt.schema else None),
    ):
        if value is not None:
            clauses.append(column)
            params.append(value)
    for row in conn.execute(
        f"SELECT verdict, SUM(n) AS n FROM minute_counts WHERE {' AND '.join(clauses)} GROUP BY verdict", params
    ):
        deliveries[row["verdict"]] += int(row["n"])
    _count_finding_rows(conn, flt, findings, severities, by_time=True)
    before = replace(flt, until=math.nextafter(first * MINUTE, -math.inf))
    after = replace(flt, since=float((last + 1) * MINUTE))
    for part in (before, after):
        _count_rows(conn, part, deliveries, findings, severities, loose=False, findings_too=False)


def _finding_time(flt: DeliveryFilter, alias: str = "f") -> tuple[str, list[Any]]:
    clauses, params = "", []
    if flt.since is not None:
        clauses += f" AND {alias}.sent_at >= ?"
        params.append(flt.since)
    if flt.until is not None:
        clauses += f" AND {alias}.sent_at <= ?"
        params.append(flt.until)
    return clauses, params


def _counted(flt: DeliveryFilter) -> bool:
    """True when the trigger-kept tables of migration 0012 can answer: only run, kind, schema and finding set."""
    return flt.verdict is None and flt.visitor is None and flt.since is None and flt.until is None


def _count_from_tables(
    conn: sqlite3.Connection,
    flt: DeliveryFilter,
    deliveries: dict[str, int],
    findings: dict[str, int],
    severities: dict[str, int],
) -> None:
    """Counts by verdict, finding kind and severity for a run/kind/schema/finding filter, from the count tables."""
    clauses = ["1"]
    params: list[Any] = []
    for column, value in (("run", flt.run), ("schema_name", schema_name(flt.schema) if flt.schema else None)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if flt.finding is not None:
        clauses.append("finding = ?")
        params.append(str(flt.finding))
    if flt.finding is None:
        by_verdict = "SELECT verdict, SUM(n) AS n FROM delivery_counts WHERE {} GROUP BY verdict"
        by_kind = "SELECT kind, severity, SUM(n) AS n FROM finding_class_counts WHERE {} GROUP BY kind, severity"
    else:
        by_verdict = "SELECT verdict, SUM(n) AS n FROM flagged_counts WHERE {} GROUP BY verdict"
        by_kind = "SELECT kind, severity, SUM(n) AS n FROM flagged_finding_counts WHERE {} GROUP BY kind, severity"
    kind_column = "kind" if flt.finding is None else "delivery_kind"
    delivery_clauses, delivery_params = list(clauses), list(params)
    finding_clauses, finding_params = list(clauses), list(params)
    if flt.kind is not None:
        delivery_clauses.append(f"{kind_column} = ?")
        delivery_params.append(str(flt.kind))
        finding_clauses.append("delivery_kind = ?")
        finding_params.append(str(flt.kind))
    for row in conn.execute(by_verdict.format(" AND ".join(delivery_clauses)), delivery_params):
        deliveries[row["verdict"]] = int(row["n"])
    for row in conn.execute(by_kind.format(" AND ".join(finding_clauses)), finding_params):
        findings[row["kind"]] = findings.get(row["kind"], 0) + int(row["n"])
        severities[row["severity"]] = severities.get(row["severity"], 0) + int(row["n"])


def _oldest_pending(conn: sqlite3.Connection, flt: DeliveryFilter) -> float | None:
    """When the oldest matching delivery still without an answer was sent (through the (verdict, sent_at) index)."""
    if flt.finding is not None:
        return None  # a delivery without an answer has no finding about its answer yet: not worth a walk
    where, params = replace(flt, verdict=Verdict.PENDING).where()
    value = conn.execute(f"SELECT MIN(d.sent_at) FROM deliveries d WHERE {where}", params).fetchone()[0]
    return float(value) if value is not None else None


def _last_delivered(conn: sqlite3.Connection, flt: DeliveryFilter) -> float | None:
    """When the newest matching delivery got through."""
    delivered = replace(flt, verdict=Verdict.DELIVERED)
    if flt.finding is None:
        where, params = delivered.where()
        return conn.execute(f"SELECT MAX(d.sent_at) FROM deliveries d WHERE {where}", params).fetchone()[0]
    # Newest first along that finding kind's (kind, sent_at) index: probing every delivered delivery for the
    # finding walked the whole store when the kind was rare or absent.
    # With a run, its own (kind, run, sent_at) index (migration 0012): an old run's newest was a walk through every
    # newer finding of that kind.
    # The finding's own copy of sent_at bounds the walk too: an `until` in the past skipped every newer finding.
    where, params = replace(delivered, finding=None).where()
    run_clause, run_params = ("AND fk.run = ? ", [flt.run]) if flt.run is not None else ("", [])
    mirrored, mirror_params = _finding_time(flt, "fk")
    row = conn.execute(
        "SELECT d.sent_at FROM findings fk CROSS JOIN deliveries d ON d.id = fk.delivery_id "
        f"WHERE fk.kind = ? {run_clause}{mirrored} AND {where} ORDER BY fk.sent_at DESC LIMIT 1",
        [str(flt.finding), *run_params, *mirror_params, *params],
    ).fetchone()
    return None if row is None else row[0]


def _about_visitors(flt: DeliveryFilter) -> bool:
    """True when the filter names nothing only a delivery has (kind, verdict, schema, finding)."""
    return flt.kind is None and flt.verdict is None and flt.schema is None and flt.finding is None


def _loose_where(flt: DeliveryFilter) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    # `+run`, `+at`: visitor-level findings are few, found through delivery_id IS NULL; the (run, at) index walked
    # every finding of the run in range, each looked up to see it had a delivery (18 ms for a day of a run at 1M).
    for clause, value in (("+run = ?", flt.run), ("visitor = ?", flt.visitor), ("+at >= ?", flt.since)):
        if value is not None:
            clauses.append(clause)
            params.append(value)
    if flt.until is not None:
        clauses.append("+at <= ?")
        params.append(flt.until)
    return (" AND ".join(clauses) or "1"), params


def pending_decisions(conn: sqlite3.Connection, run: str | None = None) -> int:
    """Decisions still waiting on a window: deliveries whose consent is pending, visitors awaiting events."""
    clause, params = ("AND run = ?", [run]) if run is not None else ("", [])
    calls = conn.execute(f"SELECT count(*) FROM deliveries WHERE consent = 'pending' {clause}", params).fetchone()[0]
    visitors = conn.execute(
        f"SELECT count(*) FROM visitors WHERE pending_decision IS NOT NULL {clause}", params
    ).fetchone()[0]
    return int(calls) + int(visitors)


def list_findings(
    conn: sqlite3.Connection,
    *,
    run: str | None = None,
    kind: str | None = None,
    severity: str | None = None,
    since: float | None = None,
    until: float | None = None,
    visitor_level: bool | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Findings newest first, with the delivery they concern (if any).

    `visitor_level`: True keeps only findings about a visitor rather than a delivery, False only those about a
    delivery, None both.
    """
    clauses: list[str] = ["1"]
    params: list[Any] = []
    if visitor_level is not None:
        clauses.append("f.delivery_id IS NULL" if visitor_level else "f.delivery_id IS NOT NULL")
    for column, value in (("f.run", run), ("f.kind", kind), ("f.severity", severity)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if since is not None:
        clauses.append("f.at >= ?")
        params.append(since)
    if until is not None:
        clauses.append("f.at <= ?")
        params.append(until)
    rows = conn.execute(
        "SELECT f.id, f.run, f.kind, f.severity, f.message, f.at, f.visitor, f.delivery_id, d.url, d.schema_name "
        f"FROM findings f LEFT JOIN deliveries d ON d.id = f.delivery_id WHERE {' AND '.join(clauses)} "
        "ORDER BY f.at DESC, f.id DESC LIMIT ?",
        [*params, limit],
    )
    return [dict(r) for r in rows]


def _as_dict(flt: DeliveryFilter) -> dict[str, Any]:
    return {f.name: getattr(flt, f.name) for f in fields(flt)}


def list_visitors(conn: sqlite3.Connection, run: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Visitors seen most recently first."""
    clause, params = ("WHERE run = ?", [run]) if run is not None else ("", [])
    rows = conn.execute(f"SELECT * FROM visitors {clause} ORDER BY last_seen DESC LIMIT ?", [*params, limit])
    return [dict(r) for r in rows]


def visitor_timeline(
    conn: sqlite3.Connection, visitor: str, run: str | None = None, limit: int = 1000
) -> dict[str, Any] | None:
    """A visitor's consent signals, deliveries and visitor-level findings in time order, and its data-layer pushes."""
    clause, params = ("AND run = ?", [run]) if run is not None else ("", [])
    visits = [dict(r) for r in conn.execute(f"SELECT * FROM visitors WHERE visitor = ? {clause}", [visitor, *params])]
    if not visits:
        return None
    signals = conn.execute(
        f"SELECT run, at, state, source, detail FROM consent_signals WHERE visitor = ? {clause} ORDER BY at LIMIT ?",
        [visitor, *params, limit],
    ).fetchall()
    deliveries = conn.execute(
        f"SELECT {ITEM_COLUMNS} FROM deliveries d WHERE visitor = ? {clause} ORDER BY sent_at LIMIT ?",
        [visitor, *params, limit],
    ).fetchall()
    by_id = _findings_by_delivery(conn, [r["id"] for r in deliveries])
    loose = conn.execute(
        f"SELECT run, kind, severity, message, at FROM findings WHERE visitor = ? AND delivery_id IS NULL {clause} "
        "ORDER BY at LIMIT ?",
        [visitor, *params, limit],
    ).fetchall()
    events: list[dict[str, Any]] = []
    events += [{"type": "consent", **dict(s)} for s in signals]
    events += [{"type": "delivery", "at": r["sent_at"], **_item(r, by_id[r["id"]])} for r in deliveries]
    events += [{"type": "finding", **dict(f)} for f in loose]
    events.sort(key=lambda e: (e["at"], 0 if e["type"] == "consent" else 1))
    runs = sorted({v["run"] for v in visits})
    pushes = _pushes(conn, visitor, runs, [dict(f) for f in loose], limit)
    return {"visitor": visitor, "visits": visits, "timeline": events, "pushes": pushes}


def _pushes(
    conn: sqlite3.Connection, visitor: str, runs: list[str], loose: list[dict[str, Any]], limit: int
) -> list[dict[str, Any]]:
    """A visitor's data-layer rows in time order, each with the delivery that carried it and what became of it."""
    # The visitor's runs come from `visitors`: with them the (run, visitor, at) index finds the rows directly.
    marks = ",".join("?" * len(runs))
    rows = conn.execute(
        "SELECT dl.id, dl.run, dl.page, dl.at, dl.type, dl.name, dl.schema_name, dl.consent, dl.data, dl.early, "
        "dl.truncated, dl.delivery_uid, d.id AS delivery_id "
        "FROM datalayer dl LEFT JOIN deliveries d ON d.uid = dl.delivery_uid "
        f"WHERE dl.run IN ({marks}) AND dl.visitor = ? ORDER BY dl.at, dl.id LIMIT ?",
        [*runs, visitor, limit],
    ).fetchall()
    # An event_not_sent finding is made at the moment of the push it names: that moment identifies the push.
    not_sent: dict[tuple[str, float], int] = {}
    for finding in loose:
        if finding["kind"] == FindingKind.EVENT_NOT_SENT.value:
            key = (finding["run"], finding["at"])
            not_sent[key] = not_sent.get(key, 0) + 1
    pushes = []
    for row in rows:
        push = dict(row)
        push["data"] = _json_or_none(row["data"])
        push["early"] = bool(row["early"])
        push["truncated"] = bool(row["truncated"])
        push["outcome"] = _outcome(push, not_sent)
        pushes.append(push)
    return pushes


def _outcome(push: dict[str, Any], not_sent: dict[tuple[str, float], int]) -> str | None:
    if push["type"] != "push" or push["schema_name"] is None:
        return None  # not something the tag should send
    if push["delivery_uid"] is not None:
        return PUSH_SENT
    if push["consent"] != "given":
        return PUSH_WITHHELD
    key = (push["run"], push["at"])
    if not_sent.get(key):
        not_sent[key] -= 1
        return PUSH_NOT_SENT
    return PUSH_UNMATCHED


def funnel(conn: sqlite3.Connection, run: str | None = None) -> dict[str, Any]:
    """Per schema: pushed to the data layer (and with consent), sent as clickstream, delivered; from count tables."""
    clause, params = ("AND run = ?", [run]) if run is not None else ("", [])
    steps: dict[str, dict[str, Any]] = {}

    def entry(schema: str) -> dict[str, Any]:
        return steps.setdefault(schema, {"schema": schema, **dict.fromkeys(FUNNEL_STEPS, 0)})

    for row in conn.execute(
        f"SELECT schema_name, with_consent, SUM(n) AS n FROM datalayer_counts WHERE 1 {clause} "
        "GROUP BY schema_name, with_consent",
        params,
    ):
        step = entry(row["schema_name"])
        step["pushed"] += int(row["n"])
        if row["with_consent"]:
            step["pushed_with_consent"] += int(row["n"])
    for row in conn.execute(
        f"SELECT schema_name, verdict, SUM(n) AS n FROM delivery_counts WHERE kind = ? {clause} "
        "GROUP BY schema_name, verdict",
        [Kind.CLICKSTREAM.value, *params],
    ):
        step = entry(row["schema_name"])
        step["sent"] += int(row["n"])
        if row["verdict"] == Verdict.DELIVERED.value:
            step["delivered"] += int(row["n"])
    # Count rows stay behind at zero after a reset: a schema shows only while something was counted.
    schemas = [steps[name] for name in sorted(steps) if any(steps[name][s] for s in FUNNEL_STEPS)]
    return {"run": run, "schemas": schemas}


def changes_after(
    conn: sqlite3.Connection, seq: int, flt: DeliveryFilter | None = None, limit: int = 200
) -> list[dict[str, Any]]:
    """Deliveries (matching `flt`) created or changed after change number `seq`, oldest change first.

    Always walked along the change-number index, from `seq` on: the cost is the number of changes since then, never
    the number of rows a filter matches (with a filter's own index the planner sorted every matching row by seq).
    """
    where, params = (flt or DeliveryFilter()).where()
    rows = conn.execute(
        f"SELECT {ITEM_COLUMNS} FROM deliveries d INDEXED BY idx_deliveries_seq WHERE seq > ? AND {where} "
        "ORDER BY seq LIMIT ?",
        [seq, *params, limit],
    ).fetchall()
    by_id = _findings_by_delivery(conn, [r["id"] for r in rows])
    return [_item(r, by_id[r["id"]]) for r in rows]


def last_seq(conn: sqlite3.Connection) -> int:
    """The newest change number."""
    return int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM deliveries").fetchone()[0])


def reset_generation(conn: sqlite3.Connection) -> int | None:
    """How many times every run was removed (`change_counter.resets`); None for a store older than the counter."""
    try:
        row = conn.execute("SELECT resets FROM change_counter WHERE id = 1").fetchone()
    except sqlite3.OperationalError:  # no such table: a store from before migration 0014
        return None
    return int(row[0]) if row is not None else None


def iter_deliveries(conn: sqlite3.Connection, flt: DeliveryFilter) -> Iterator[dict[str, Any]]:
    """Every matching delivery in full, oldest first, for exports."""
    where, params = flt.where()
    ids = [r[0] for r in conn.execute(f"SELECT id FROM deliveries d WHERE {where} ORDER BY sent_at, id", params)]
    for delivery_id in ids:
        item = get_delivery(conn, delivery_id)
        if item is not None:
            yield item
