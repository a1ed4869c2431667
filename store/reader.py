"""The read side of the store: filtered pages of deliveries, details, summaries, visitor timelines.

Readers open their own connections (WAL lets them read while the proxy writes). Every query here is
answered from an index or from the trigger-maintained count tables, so a million deliveries cost about
what a thousand do.
"""

from __future__ import annotations

import base64
import binascii
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from typing import Any

from clickwatch.core.findings import FindingKind, Severity
from clickwatch.core.model import Kind, Verdict
from clickwatch.core.record import schema_name
from clickwatch.store.schema import LATEST_MIGRATION

MAX_LIMIT = 500
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
    """A read-only connection to an existing store."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0, check_same_thread=False)
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"cannot open {path}: {exc}") from None
    conn.row_factory = sqlite3.Row
    try:
        conn.execute("SELECT 1 FROM deliveries LIMIT 1").fetchall()
        conn.execute("SELECT 1 FROM delivery_counts LIMIT 1").fetchall()
        # Each migration commits on its own: a store half-way through them has some tables and not all columns.
        upgraded = conn.execute(
            "SELECT 1 FROM _sqlite_migrations WHERE migration_set = 'clickwatch' AND name = ?", (LATEST_MIGRATION,)
        ).fetchone()
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
    """The (sent_at, id) position a cursor stands for."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        sent_at, delivery_id = json.loads(raw)
        if isinstance(sent_at, bool) or isinstance(delivery_id, bool):
            raise TypeError
        return float(sent_at), int(delivery_id)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise BadCursor("cursor is not one this API handed out") from None


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
    else:
        where, params = flt.where()
        for row in conn.execute(
            f"SELECT verdict, count(*) AS n FROM deliveries d WHERE {where} GROUP BY verdict", params
        ):
            deliveries[row["verdict"]] = int(row["n"])
        counted = conn.execute(
            f"SELECT f.kind, f.severity, count(*) AS n FROM findings f JOIN deliveries d ON d.id = f.delivery_id "
            f"WHERE {where} GROUP BY f.kind, f.severity",
            params,
        ).fetchall()
        if _about_visitors(flt):
            # Findings about a visitor rather than a delivery (event_not_sent, no_events_after_consent, ...) count
            # too when the filter can apply to them: run, visitor and time (their own `at`).
            loose_where, loose_params = _loose_where(flt)
            counted += conn.execute(
                f"SELECT kind, severity, count(*) AS n FROM findings WHERE delivery_id IS NULL AND {loose_where} "
                "GROUP BY kind, severity",
                loose_params,
            ).fetchall()
        for row in counted:
            findings[row["kind"]] = findings.get(row["kind"], 0) + int(row["n"])
            severities[row["severity"]] = severities.get(row["severity"], 0) + int(row["n"])
    where, params = DeliveryFilter(**{**_as_dict(flt), "verdict": Verdict.DELIVERED}).where()
    last = conn.execute(f"SELECT MAX(d.sent_at) FROM deliveries d WHERE {where}", params).fetchone()[0]
    healthy = deliveries["rejected"] == 0 and deliveries["failed"] == 0 and severities["error"] == 0
    return {
        "healthy": healthy,
        "deliveries": deliveries,
        "findings": findings,
        "severities": severities,
        "last_delivered_at": last,
        "pending_decisions": pending_decisions(conn, flt.run),
    }


def _about_visitors(flt: DeliveryFilter) -> bool:
    """True when the filter names nothing only a delivery has (kind, verdict, schema, finding)."""
    return flt.kind is None and flt.verdict is None and flt.schema is None and flt.finding is None


def _loose_where(flt: DeliveryFilter) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for clause, value in (("run = ?", flt.run), ("visitor = ?", flt.visitor), ("at >= ?", flt.since)):
        if value is not None:
            clauses.append(clause)
            params.append(value)
    if flt.until is not None:
        clauses.append("at <= ?")
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
    """Deliveries (matching `flt`) created or changed after change number `seq`, oldest change first."""
    where, params = (flt or DeliveryFilter()).where()
    rows = conn.execute(
        f"SELECT {ITEM_COLUMNS} FROM deliveries d WHERE seq > ? AND {where} ORDER BY seq LIMIT ?",
        [seq, *params, limit],
    ).fetchall()
    by_id = _findings_by_delivery(conn, [r["id"] for r in rows])
    return [_item(r, by_id[r["id"]]) for r in rows]


def last_seq(conn: sqlite3.Connection) -> int:
    """The newest change number."""
    return int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM deliveries").fetchone()[0])


def iter_deliveries(conn: sqlite3.Connection, flt: DeliveryFilter) -> Iterator[dict[str, Any]]:
    """Every matching delivery in full, oldest first, for exports."""
    where, params = flt.where()
    ids = [r[0] for r in conn.execute(f"SELECT id FROM deliveries d WHERE {where} ORDER BY sent_at, id", params)]
    for delivery_id in ids:
        item = get_delivery(conn, delivery_id)
        if item is not None:
            yield item
