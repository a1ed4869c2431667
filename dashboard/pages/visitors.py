"""The visitors pages: browsers seen, and one browser's consent timeline with the answer to 'did it track
before consent?' (decided by core.answer; formatted here)."""

from __future__ import annotations

import sqlite3
from collections import Counter
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
            "delivered": delivery_answer(timeline),
        }
        return page(request, "visitor.html", context)

    return with_store(request, settings, build)


def visitor_events(timeline: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The timeline with the data layer's rows woven in, each delivery next to the push it carried and marked
    `bad` when it tracked without consent."""
    verdicts = {e["id"]: e["verdict"] for e in timeline["timeline"] if e["type"] == "delivery"}
    # A push's badge tells what became of the delivery that carried it, not only that one did.
    pushes = [{**p, "delivery_verdict": verdicts.get(p["delivery_id"])} for p in timeline["pushes"]]
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


def delivery_answer(timeline: Mapping[str, Any]) -> dict[str, str]:
    """'Were this browser's tracking calls delivered?' in words: a state (a CSS class), a title and a sentence."""
    calls = [e for e in timeline["timeline"] if e["type"] == "delivery"]
    if not calls:
        return {"state": "none", "title": "No tracking calls", "text": "This browser has not sent any tracking call."}
    lost = [e for e in calls if e["verdict"] in ("rejected", "failed")]
    waiting = [e for e in calls if e["verdict"] == "pending"]
    if lost:
        how = ", ".join(
            f"{what} x{n}"
            for what, n in sorted(
                Counter(f"{e['verdict']} ({_answer(e)})" for e in lost).items(), key=lambda kv: -kv[1]
            )
        )
        return {
            "state": "bad",
            "title": f"No: {len(lost)} of {_calls(len(calls))} not delivered",
            "text": f"{how}." + (f" {len(waiting)} still without an answer." if waiting else ""),
        }
    if waiting:
        return {
            "state": "wait",
            "title": "Not yet",
            "text": f"{len(waiting)} of {_calls(len(calls))} still without an answer; the others were delivered.",
        }
    return {"state": "good", "title": "Yes", "text": f"Every one of its {_calls(len(calls))} was delivered."}


def _answer(delivery: Mapping[str, Any]) -> str:
    return str(delivery.get("status_code") or delivery.get("error") or "no answer")


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
