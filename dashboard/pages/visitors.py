"""The visitors pages: browsers seen, and one browser's consent timeline with the answer to 'did it track
before consent?' (decided by core.answer; formatted here)."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from clickwatch.core.answer import Answer, ConsentAnswer, TrackingCall, consent_answer, sent_without_consent
from clickwatch.dashboard.deps import SettingsDep
from clickwatch.dashboard.pages.common import error_page, page, with_store
from clickwatch.store import reader

router = APIRouter(include_in_schema=False)

# Same moment: the push first (a ConsentChanged push makes its consent signal), then consent, delivery, finding.
_TIMELINE_ORDER = {"datalayer": 0, "consent": 1, "delivery": 2, "finding": 3}


@router.get("/visitors")
def visitors(
    request: Request, settings: SettingsDep, run: Annotated[str | None, Query(max_length=200)] = None
) -> Response:
    """Browsers seen, most recent first."""

    def build(conn: sqlite3.Connection) -> Response:
        items = reader.list_visitors(conn, run or None, reader.MAX_LIMIT)
        return page(request, "visitors.html", {"items": items, "run": run or ""})

    return with_store(request, settings, build)


@router.get("/visitors/{visitor}")
def visitor(
    request: Request,
    settings: SettingsDep,
    visitor: str,
    run: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    """One browser's consent timeline: did it track before consent?"""

    def build(conn: sqlite3.Connection) -> Response:
        timeline = reader.visitor_timeline(conn, visitor, run or None)
        if timeline is None:
            where = f" in run {run!r}" if run else ""
            return error_page(request, 404, "No such visitor", f"No visitor {visitor!r}{where}.", back="/visitors")
        calls = [
            TrackingCall(e["kind"], e["consent"], tuple(f["kind"] for f in e["findings"]))
            for e in timeline["timeline"]
            if e["type"] == "delivery"
        ]
        context = {
            "t": timeline,
            "events": visitor_events(timeline),
            "run": run or "",
            "answer": answer_view(consent_answer(calls)),
        }
        return page(request, "visitor.html", context)

    return with_store(request, settings, build)


def visitor_events(timeline: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The timeline with the data layer's rows woven in, each delivery next to the push it carried and marked
    `bad` when it tracked without consent."""
    pushes = timeline["pushes"]
    carried = {p["delivery_id"]: p for p in pushes if p["delivery_id"] is not None}
    events = [
        {**e, "push": carried.get(e["id"]), "bad": sent_without_consent(e["kind"], e["consent"])}
        if e["type"] == "delivery"
        else dict(e)
        for e in timeline["timeline"]
    ]
    events += [{"type": "datalayer", "at": p["at"], "push": p} for p in pushes]
    events.sort(key=lambda e: (e["at"], _TIMELINE_ORDER.get(e["type"], 9)))
    return events


def _calls(n: int, noun: str = "call") -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


def answer_view(answer: ConsentAnswer) -> dict[str, str]:
    """The answer in words: its state (a CSS class), a title and a sentence."""
    match answer.answer:
        case Answer.TRACKED:
            title = "Yes: tracked without consent"
            text = f"{_calls(answer.calls, 'tracking call')} sent while consent was not given."
        case Answer.UNDECIDED:
            title = "Not decided yet"
            text = f"{_calls(answer.calls)} sent before the proxy saw consent; judged when the grace window ends."
        case Answer.CANNOT_TELL:
            title = "Cannot tell"
            text = "No consent signal was seen for some tracking calls of this browser."
        case Answer.NO:
            title = "No"
            text = "Every tracking call was sent with consent given."
        case Answer.NO_CALLS:
            title = "No tracking calls"
            text = "This browser has not sent any tracking call."
    return {"state": answer.answer.value, "title": title, "text": text}
