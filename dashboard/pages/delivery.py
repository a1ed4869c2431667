"""The delivery page: one delivery's request, response or error, timing, findings, and the consent signal in
force when it was sent."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from clickwatch.core.answer import signal_in_force
from clickwatch.core.consent import ConsentState
from clickwatch.core.judge import ConsentSignal
from clickwatch.dashboard.deps import SettingsDep
from clickwatch.dashboard.pages.common import error_page, page, with_store
from clickwatch.store import reader

router = APIRouter(include_in_schema=False)


@router.get("/deliveries/{delivery_id}")
def delivery(request: Request, settings: SettingsDep, delivery_id: int) -> Response:
    """One delivery: request, response or error, timing, consent at that moment, findings."""
    if not 0 <= delivery_id <= reader.MAX_ID:
        detail = f"delivery id {str(delivery_id)[:40]}: out of range (ids run from 1 to {reader.MAX_ID})."
        return error_page(request, 404, "No such delivery", detail, back="/")

    def build(conn: sqlite3.Connection) -> Response:
        item = reader.get_delivery(conn, delivery_id)
        if item is None:
            return error_page(
                request, 404, "No such delivery", f"There is no delivery {delivery_id} in this store.", back="/"
            )
        timeline = reader.visitor_timeline(conn, item["visitor"], item["run"])
        signal = None
        push = None
        if timeline is not None:
            signal = signal_in_force(consent_signals(timeline), item["sent_at"])
            push = next((p for p in timeline["pushes"] if p["delivery_id"] == delivery_id), None)
        return page(request, "delivery.html", {"d": item, "signal": signal, "push": push})

    return with_store(request, settings, build)


def consent_signals(timeline: Mapping[str, Any]) -> list[ConsentSignal]:
    """The consent signals of a visitor's stored timeline, in its order."""
    return [
        ConsentSignal(e["run"], timeline["visitor"], e["at"], ConsentState(e["state"]), e["source"], e["detail"] or "")
        for e in timeline["timeline"]
        if e["type"] == "consent"
    ]
