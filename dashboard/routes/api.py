"""The JSON API's routes: the contract scripts and CI rely on (paths and field names are fixed).

Each route declares its response model (dashboard/models.py), so `/openapi.json` states what it answers.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Response
from fastapi.responses import StreamingResponse
from fastapi.sse import EventSourceResponse
from pydantic import TypeAdapter

from clickwatch.core import __version__
from clickwatch.core.findings import FindingKind, Severity
from clickwatch.dashboard.deps import ConnDep, FeedDep, FilterDep, SettingsDep, parse_time
from clickwatch.dashboard.feed import ChangeFeed, change
from clickwatch.dashboard.models import (
    NOT_FOUND,
    UNAVAILABLE,
    Delivery,
    DeliveryPage,
    FindingList,
    Funnel,
    Reset,
    RunList,
    Summary,
    Timeline,
    VisitorList,
)
from clickwatch.store import admin, export, reader
from clickwatch.store.bundle import run_exists
from clickwatch.store.diff import known_runs

router = APIRouter(prefix="/api", tags=["api"])
# SQLite integers are signed 64-bit: a larger id or change number cannot even be bound (OverflowError, a 500).
SQLITE_MAX_INT = 2**63 - 1
LimitQuery = Annotated[int, Query(ge=1, le=reader.MAX_LIMIT, description="items per page (1-500)")]
_JSON = TypeAdapter(Any)
CATCH_UP_BATCH = 200  # deliveries per catch-up read of a (re)connecting stream
RECONNECT_MS = 500  # how long EventSource waits before reconnecting after a `reconnect` event
KEEP_ALIVE_SECONDS = 15.0  # a comment after this long without events keeps proxies from closing the stream
# What /api/stream sends: each event's data is a delivery item, as /api/deliveries lists it.
STREAM_EVENTS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": (
            "event `delivery` per new or changed delivery; a comment as keep-alive; event `reconnect` (then the "
            "stream ends) when this client fell too far behind: reconnect with Last-Event-ID to resume; with "
            "`totals=true`, events `summary` and `funnel` (as /api/summary and /api/funnel answer for the stream's "
            "run) when they change, at most once a second (`summary` only when no filter but `run` is set)"
        ),
        "content": {
            "text/event-stream": {
                "itemSchema": {
                    "properties": {"data": {"contentSchema": {"$ref": "#/components/schemas/DeliveryItem"}}},
                    "required": ["data"],
                }
            }
        },
    }
}


def resume_point(
    after: Annotated[int | None, Query(ge=0, le=SQLITE_MAX_INT, description="start after this change number")] = None,
    last_event_id: Annotated[
        str | None, Header(max_length=32, description="resume after this change number (sent by EventSource)")
    ] = None,
) -> int | None:
    """The change number a stream resumes after: Last-Event-ID first, then `after`; None means 'from now'.

    Checked before the stream starts, so a bad value is a 422 naming the field, not a broken stream.
    """
    if last_event_id is not None and last_event_id.strip():
        text = last_event_id.strip()
        if not (text.isascii() and text.isdigit()):
            raise HTTPException(
                status_code=422, detail=f"Last-Event-ID: {text[:32]!r} is not a change number (0 or more)"
            )
        return min(int(text), SQLITE_MAX_INT)
    return after


def trusted_json(content: Any) -> Response:
    """The reader's rows as JSON, not validated again against the route's response model.

    For the long lists (up to 500 items; a timeline of up to 1,000 rows of each kind): validating costs about
    8 µs a delivery, a sixth of a 500-item page. The rows come from our own store; the API tests and the
    schemathesis run hold these routes to their published model.
    """
    return Response(_JSON.dump_json(content), media_type="application/json")


@router.get(
    "/deliveries",
    summary="Deliveries, newest first, one page at a time",
    response_model=DeliveryPage,
    responses=UNAVAILABLE,
)
def list_deliveries(
    conn: ConnDep,
    flt: FilterDep,
    limit: LimitQuery = 50,
    cursor: Annotated[str | None, Query(max_length=200, description="the `next` of the previous page")] = None,
) -> Response:
    try:
        items, next_cursor = reader.list_deliveries(conn, flt, limit, cursor)
    except reader.BadCursor as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    return trusted_json({"items": items, "next": next_cursor})


@router.get(
    "/deliveries/{delivery_id}",
    summary="One delivery with request, response or error, and findings",
    response_model=Delivery,
    responses=NOT_FOUND | UNAVAILABLE,
)
def get_delivery(
    conn: ConnDep, delivery_id: Annotated[int, Path(ge=-SQLITE_MAX_INT - 1, le=SQLITE_MAX_INT)]
) -> dict[str, Any]:
    item = reader.get_delivery(conn, delivery_id)
    if item is None:
        raise HTTPException(status_code=404, detail=f"no delivery {delivery_id}")
    return item


@router.get(
    "/summary",
    summary="Health, counts by verdict and finding, last delivered time",
    response_model=Summary,
    responses=UNAVAILABLE,
)
def get_summary(conn: ConnDep, flt: FilterDep) -> dict[str, Any]:
    return reader.summary(conn, flt)


@router.get(
    "/findings",
    summary="Findings, newest first, including those about a visitor rather than a delivery",
    response_model=FindingList,
    responses=UNAVAILABLE,
)
def list_findings(
    conn: ConnDep,
    run: Annotated[str | None, Query(max_length=200)] = None,
    kind: Annotated[FindingKind | None, Query()] = None,
    severity: Annotated[Severity | None, Query()] = None,
    since: Annotated[str | None, Query(max_length=64, description="epoch seconds or ISO 8601")] = None,
    until: Annotated[str | None, Query(max_length=64, description="epoch seconds or ISO 8601")] = None,
    visitor_level: Annotated[
        bool | None,
        Query(description="true: only findings about a visitor (no delivery); false: only those about a delivery"),
    ] = None,
    limit: LimitQuery = 100,
) -> Response:
    items = reader.list_findings(
        conn,
        run=run,
        kind=kind.value if kind else None,
        severity=severity.value if severity else None,
        since=parse_time("since", since),
        until=parse_time("until", until),
        visitor_level=visitor_level,
        limit=limit,
    )
    return trusted_json({"items": items})


@router.get(
    "/visitors",
    summary="Visitors (browsers), most recently seen first",
    response_model=VisitorList,
    responses=UNAVAILABLE,
)
def list_visitors(
    conn: ConnDep,
    run: Annotated[str | None, Query(max_length=200)] = None,
    limit: LimitQuery = 100,
) -> Response:
    return trusted_json({"items": reader.list_visitors(conn, run, limit)})


@router.get(
    "/runs",
    summary="The runs the store holds something of, by name; or whether it holds one (`name`)",
    response_model=RunList,
    responses=UNAVAILABLE,
)
def list_runs(
    conn: ConnDep,
    name: Annotated[str | None, Query(max_length=200)] = None,
    limit: LimitQuery = 100,
) -> Response:
    if name is not None:
        return trusted_json({"items": [name] if run_exists(conn, name) else [], "more": False})
    names = known_runs(conn, limit)
    return trusted_json({"items": names[:limit], "more": len(names) > limit})


@router.get(
    "/visitors/{visitor}",
    summary="A visitor's consent timeline (signals, deliveries, findings) and its data-layer pushes",
    response_model=Timeline,
    responses=NOT_FOUND | UNAVAILABLE,
)
def get_visitor(conn: ConnDep, visitor: str, run: Annotated[str | None, Query(max_length=200)] = None) -> Response:
    timeline = reader.visitor_timeline(conn, visitor, run)
    if timeline is None:
        raise HTTPException(status_code=404, detail=f"no visitor {visitor!r}")
    return trusted_json(timeline)


@router.get(
    "/funnel",
    summary="Per schema: pushed to the data layer (with consent), sent as clickstream events, delivered",
    response_model=Funnel,
    responses=UNAVAILABLE,
)
def get_funnel(
    conn: ConnDep,
    run: Annotated[str | None, Query(max_length=200, description="run name (all runs if left out)")] = None,
) -> dict[str, Any]:
    return reader.funnel(conn, run or None)


@router.get(
    "/stream",
    # Not EventSourceResponse here: FastAPI would then expect a generator of events and frame each one itself.
    response_class=StreamingResponse,
    summary="Server-Sent Events: every new or changed delivery (event id = change number)",
    responses=STREAM_EVENTS,
)
async def stream(
    settings: SettingsDep,
    feed: FeedDep,
    flt: FilterDep,
    start: Annotated[int | None, Depends(resume_point)],
    totals: Annotated[
        bool,
        Query(
            description="also send events `summary` and `funnel` of the stream's run, when they change (the live page)"
        ),
    ] = False,
) -> EventSourceResponse:
    return EventSourceResponse(
        _follow(settings.db, feed, flt, start, totals),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _follow(
    db: str, feed: ChangeFeed, flt: reader.DeliveryFilter, start: int | None, totals: bool = False
) -> AsyncIterator[bytes]:
    """One stream's bytes: the catch-up from the store, then the feed's batches, one write per batch (or fewer).

    A stream that takes everything writes the batch's frames as the feed joined them, the same bytes object for every
    viewer: with 200 viewers, per-viewer work is what costs the proxy's process, not the reading.
    """
    # Subscribe first, then catch up from the store: whatever the feed publishes from now on reaches this subscriber,
    # and the catch-up reads at least up to where the feed started, so nothing falls between (duplicates are skipped).
    sub = feed.subscribe(flt, totals=totals)
    try:
        position = await feed.ready()
        # "From now" is the feed's position: what comes after it, the feed brings, so the store is not touched (200
        # viewers connecting at once cost 400 connections to the store otherwise).
        sent = position if start is None else await asyncio.to_thread(_start_seq, db, start)
        while start is not None:
            backlog = [change(item) for item in await asyncio.to_thread(_changes, db, sent, flt)]
            if backlog:
                sent = max(sent, backlog[-1].seq)
                yield b"".join(c.frame for c in backlog)
            if len(backlog) < CATCH_UP_BATCH:
                break
        sub.sent = sent
        while True:
            # The subscription picks this stream's part of each batch (for one that takes everything, the batch's
            # own bytes) and goes back to waiting when a batch holds nothing for it: one write per wake-up, or none.
            out = await sub.next(KEEP_ALIVE_SECONDS)
            if sub.overflowed:
                # This client fell too far behind (or the store was emptied): rather than buffer without bound, end
                # the stream; EventSource reconnects after `retry` ms and resumes from its Last-Event-ID.
                sent = sub.sent
                note = json.dumps({"after": sent, "reason": "fell behind the live feed: reconnect with Last-Event-ID"})
                yield f"event: reconnect\ndata: {note}\nid: {sent}\nretry: {RECONNECT_MS}\n\n".encode()
                return
            yield out or b": keep-alive\n\n"
    finally:
        feed.unsubscribe(sub)


def _start_seq(db: str, start: int | None) -> int:
    """Where a stream starts: after `start`, or after the newest change; never beyond the newest (a Last-Event-ID
    from another store, or from before a reset, must not skip changes that come later)."""
    try:
        conn = reader.connect(db)
    except reader.StoreUnavailable:
        return start or 0
    try:
        newest = reader.last_seq(conn)
    except sqlite3.Error:
        return start or 0
    finally:
        conn.close()
    return newest if start is None else min(start, newest)


def _changes(db: str, seq: int, flt: reader.DeliveryFilter) -> list[dict[str, Any]]:
    try:
        conn = reader.connect(db)
    except reader.StoreUnavailable:
        return []
    try:
        return reader.changes_after(conn, seq, flt, limit=CATCH_UP_BATCH)
    except sqlite3.Error:
        return []
    finally:
        conn.close()


@router.post("/reset", summary="Remove captured data (of one run, or all)", response_model=Reset, responses=UNAVAILABLE)
def reset(settings: SettingsDep, run: Annotated[str | None, Query(max_length=200)] = None) -> dict[str, Any]:
    try:
        removed = admin.reset(settings.db, run)
    except sqlite3.Error as exc:
        raise HTTPException(status_code=503, detail=f"store not writable: {exc}") from None
    return {"removed": removed, "run": run}


@router.get(
    "/export",
    summary="Download deliveries as HAR, JSON lines or CSV",
    response_class=StreamingResponse,
    responses={200: {"content": {media_type: {} for media_type in export.FORMATS.values()}}, **UNAVAILABLE},
)
def export_deliveries(
    settings: SettingsDep,
    flt: FilterDep,
    format: Annotated[str, Query(pattern="^(har|jsonl|csv)$", description="har, jsonl or csv")] = "jsonl",
) -> StreamingResponse:
    try:
        conn = reader.connect(settings.db)
    except reader.StoreUnavailable as exc:
        raise HTTPException(status_code=503, detail=f"store unavailable: {exc}") from None

    def body() -> Iterator[str]:
        try:
            items = reader.iter_deliveries(conn, flt)
            if format == "har":
                yield from export.har(items, __version__)
            elif format == "csv":
                yield from export.csv_rows(items)
            else:
                yield from export.jsonl(items)
        finally:
            conn.close()

    filename = f"clickwatch{'-' + flt.run if flt.run else ''}.{format}"
    # Header values are Latin-1 on the wire: a run named "Ā" would fail the answer (a 500) if it stayed in the name.
    safe_name = "".join(c if (c.isascii() and c.isalnum()) or c in "-._" else "_" for c in filename)
    return StreamingResponse(
        body(),
        media_type=export.FORMATS[format],
        headers={"Content-Disposition": f'attachment; filename="{safe_name}"'},
    )
