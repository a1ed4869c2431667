"""Dependencies shared by the routes, as Annotated aliases; tests swap them with dependency_overrides."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request

from clickwatch.core import timeparse
from clickwatch.core.findings import FindingKind
from clickwatch.core.model import Kind, Verdict
from clickwatch.dashboard.feed import ChangeFeed
from clickwatch.dashboard.settings import DashboardSettings
from clickwatch.store import reader


def get_settings(request: Request) -> DashboardSettings:
    """The settings the app was created with."""
    settings: DashboardSettings = request.app.state.settings
    return settings


SettingsDep = Annotated[DashboardSettings, Depends(get_settings)]


def get_conn(settings: SettingsDep) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the store for one request."""
    try:
        conn = reader.connect(settings.db)
    except reader.StoreUnavailable as exc:
        raise HTTPException(status_code=503, detail=f"store unavailable: {exc}") from None
    try:
        yield conn
    finally:
        conn.close()


ConnDep = Annotated[sqlite3.Connection, Depends(get_conn)]


async def get_feed(request: Request, settings: SettingsDep) -> ChangeFeed:
    """The app's one reader of the change sequence, shared by every live stream of this event loop."""
    feed: ChangeFeed | None = getattr(request.app.state, "feed", None)
    if feed is None or feed.loop is not asyncio.get_running_loop():
        feed = ChangeFeed(settings.db, settings.poll_seconds)
        request.app.state.feed = feed
    return feed


FeedDep = Annotated[ChangeFeed, Depends(get_feed)]


def parse_time(name: str, value: str | None) -> float | None:
    """Epoch seconds or ISO 8601 (UTC when no zone is given) -> epoch seconds; 422 otherwise."""
    if value is None or value == "":
        return None
    try:
        return timeparse.parse_time(value)
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=f"{name}: {exc}") from None


def delivery_filter(
    kind: Annotated[Kind | None, Query(description="delivery kind")] = None,
    verdict: Annotated[Verdict | None, Query(description="delivered, rejected, failed or pending")] = None,
    schema: Annotated[
        str | None, Query(max_length=200, description="hybris-schema, short ('ProductView') or as sent")
    ] = None,
    finding: Annotated[FindingKind | None, Query(description="only deliveries with this finding")] = None,
    visitor: Annotated[str | None, Query(max_length=64, description="visitor key")] = None,
    run: Annotated[str | None, Query(max_length=200, description="run name")] = None,
    since: Annotated[str | None, Query(max_length=64, description="epoch seconds or ISO 8601")] = None,
    until: Annotated[str | None, Query(max_length=64, description="epoch seconds or ISO 8601")] = None,
) -> reader.DeliveryFilter:
    """The filters every listing, summary, stream and export accepts."""
    return reader.DeliveryFilter(
        kind=kind,
        verdict=verdict,
        schema=schema or None,
        finding=finding,
        visitor=visitor or None,
        run=run or None,
        since=parse_time("since", since),
        until=parse_time("until", until),
    )


FilterDep = Annotated[reader.DeliveryFilter, Depends(delivery_filter)]
