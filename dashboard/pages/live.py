"""The live page: deliveries newest first with the page's filters, the summary and the funnel; its script
follows /api/stream from the change number embedded here."""

from __future__ import annotations

import enum
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response

from clickwatch.core.findings import FindingKind
from clickwatch.core.model import Kind, Verdict
from clickwatch.dashboard.deps import SettingsDep, delivery_filter
from clickwatch.dashboard.pages.common import error_page, page, with_store
from clickwatch.store import reader

router = APIRouter(include_in_schema=False)

PAGE_SIZE = 100
FILTER_NAMES = ("kind", "verdict", "schema", "finding", "visitor", "run", "since", "until")
FILTER_MAX_LENGTH = {"visitor": 64, "since": 64, "until": 64}


@dataclass(frozen=True)
class PageFilter:
    """The live page's filters: what the form and the stream URL carry, and what the reader gets."""

    values: dict[str, str] = field(default_factory=dict)
    flt: reader.DeliveryFilter = field(default_factory=reader.DeliveryFilter)
    error: str | None = None

    @property
    def query(self) -> str:
        """The filters as a query string (empty ones left out), for the stream and the summary."""
        return urlencode(self.values)


def page_filter(request: Request) -> PageFilter:
    """The API's filters, except that empty form fields mean 'any' and a bad value is shown, not a 422 JSON."""
    values = {name: value.strip() for name in FILTER_NAMES if (value := request.query_params.get(name, "")).strip()}
    try:
        for name, value in values.items():
            if len(value) > FILTER_MAX_LENGTH.get(name, 200):
                raise ValueError(f"{name}: longer than {FILTER_MAX_LENGTH.get(name, 200)} characters")
        flt = delivery_filter(
            kind=_enum(Kind, "kind", values.get("kind")),
            verdict=_enum(Verdict, "verdict", values.get("verdict")),
            schema=values.get("schema"),
            finding=_enum(FindingKind, "finding", values.get("finding")),
            visitor=values.get("visitor"),
            run=values.get("run"),
            since=values.get("since"),
            until=values.get("until"),
        )
    except ValueError as exc:
        return PageFilter(values, reader.DeliveryFilter(), str(exc))
    except HTTPException as exc:
        return PageFilter(values, reader.DeliveryFilter(), str(exc.detail))
    return PageFilter(values, flt)


def _enum[E: enum.StrEnum](cls: type[E], name: str, value: str | None) -> E | None:
    if value is None:
        return None
    try:
        return cls(value)
    except ValueError:
        choices = ", ".join(member.value for member in cls)
        raise ValueError(f"{name}: {value!r} is not one of {choices}") from None


PageFilterDep = Annotated[PageFilter, Depends(page_filter)]


@router.get("/")
def live(
    request: Request,
    settings: SettingsDep,
    filters: PageFilterDep,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    """Live deliveries, newest first; the page script follows /api/stream from the seq embedded here."""
    if filters.error:
        return error_page(request, 400, "Filter not understood", filters.error, back="/")

    def build(conn: sqlite3.Connection) -> Response:
        # The seq first: a change landing between the two reads is streamed again, never missed.
        seq = reader.last_seq(conn)
        try:
            items, next_cursor = reader.list_deliveries(conn, filters.flt, PAGE_SIZE, cursor or None)
        except reader.BadCursor as exc:
            return error_page(request, 400, "Page link not valid", str(exc), back="/")
        summary = reader.summary(conn, filters.flt)
        older = urlencode({**filters.values, "cursor": next_cursor}) if next_cursor else None
        return page(
            request,
            "live.html",
            {
                "items": items,
                "summary": summary,
                "total": sum(summary["deliveries"].values()),
                "pending_age": (
                    max(0, round(time.time() - summary["oldest_pending_at"])) if summary["oldest_pending_at"] else None
                ),
                "filters": filters,
                "seq": seq,
                "live": not cursor,
                "older": older,
                "funnel": funnel_view(reader.funnel(conn, filters.flt.run)),
                # The evidence bundle is of one run: the filtered one, else the run of the newest delivery shown.
                "bundle_run": filters.flt.run or (items[0]["run"] if items else None),
            },
        )

    return with_store(request, settings, build)


def funnel_view(funnel: Mapping[str, Any]) -> dict[str, Any]:
    """The funnel with the scale of its bars: the longest of pushed and sent is 100 %."""
    steps = funnel["schemas"]
    top = max([1, *(s["pushed"] for s in steps), *(s["sent"] for s in steps)])
    return {"run": funnel["run"], "schemas": steps, "top": top}
