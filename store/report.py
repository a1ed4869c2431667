"""The offline HTML report of a run: one self-contained page (inline CSS, no script, no external URL) with the
verdict summary, the per-schema counts and the consent timeline of each visitor.

It is read from a file, far from the dashboard and its headers, so it carries its own Content-Security-Policy
in a meta element: no script of any kind, nothing loaded from anywhere, only its own style block (by hash).
Everything captured goes through Jinja's autoescaping, as on the dashboard.
"""

from __future__ import annotations

import base64
import hashlib
import re
import sqlite3
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from clickwatch.core.answer import Answer, TrackingCall, consent_answer, sent_without_consent
from clickwatch.core.model import Kind, Verdict
from clickwatch.core.timeparse import clock_utc
from clickwatch.store import reader
from clickwatch.store.check import Report

TEMPLATES = Path(__file__).resolve().parent / "templates"
MAX_VISITORS = 200  # timelines shown; the bundle's HAR and JSONL hold every delivery of the run
MAX_EVENTS = 200  # per visitor and per kind of row (signals, deliveries, findings, pushes)
MAX_REASONS = 50
ANSWERS = {
    Answer.TRACKED: "Yes: tracked without consent",
    Answer.UNDECIDED: "Not decided yet (a grace window was still open)",
    Answer.CANNOT_TELL: "Cannot tell: no consent signal for some tracking calls",
    Answer.NO: "No: every tracking call was sent with consent given",
    Answer.NO_CALLS: "No tracking calls",
}
_ORDER = {"datalayer": 0, "consent": 1, "delivery": 2, "finding": 3}
_STYLE = re.compile(r"<style>(.*?)</style>", re.S)


def clock(ts: float | None) -> str:
    """Epoch seconds -> 'YYYY-MM-DD HH:MM:SS.mmm UTC' ('—' for None)."""
    return "—" if ts is None else clock_utc(ts)


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["clock"] = clock
    source = (TEMPLATES / "report.html").read_text(encoding="utf-8")
    styles = _STYLE.findall(source)
    # The policy allows the one style block by its hash; a template edit that adds another fails here.
    assert len(styles) == 1, "report.html must have exactly one <style> block"
    digest = base64.b64encode(hashlib.sha256(styles[0].encode()).digest()).decode()
    env.globals["csp"] = (
        f"default-src 'none'; style-src 'sha256-{digest}'; img-src 'none'; script-src 'none'; "
        "object-src 'none'; base-uri 'none'; form-action 'none'"
    )
    return env


def schema_counts(conn: sqlite3.Connection, run: str) -> list[dict[str, Any]]:
    """Per schema: data-layer pushes (with consent) and clickstream events by verdict, from the count tables."""
    rows = {s["schema"]: {**s} for s in reader.funnel(conn, run)["schemas"]}
    verdicts = [v.value for v in Verdict if v is not Verdict.DELIVERED]
    for row in conn.execute(
        "SELECT schema_name, verdict, SUM(n) AS n FROM delivery_counts WHERE run = ? AND kind = ? "
        "GROUP BY schema_name, verdict",
        (run, Kind.CLICKSTREAM.value),
    ):
        entry = rows.get(row["schema_name"])
        # The funnel counted the sent and the delivered: the other verdicts complete the row.
        if entry is not None and row["verdict"] in verdicts:
            entry[row["verdict"]] = entry.get(row["verdict"], 0) + int(row["n"])
    return [{**dict.fromkeys(verdicts, 0), **rows[name]} for name in sorted(rows, key=str.lower)]


def _timeline(timeline: dict[str, Any]) -> list[dict[str, Any]]:
    """The visitor's rows woven with its data-layer pushes, in time order (as the dashboard's visitor page)."""
    events = [
        {**e, "bad": sent_without_consent(e["kind"], e["consent"])} if e["type"] == "delivery" else dict(e)
        for e in timeline["timeline"]
    ]
    events += [{"type": "datalayer", "at": p["at"], "push": p} for p in timeline["pushes"]]
    events.sort(key=lambda e: (e["at"], _ORDER.get(e["type"], 9)))
    return events


def visitor_timelines(conn: sqlite3.Connection, run: str, limit: int = MAX_VISITORS) -> Iterator[dict[str, Any]]:
    """Each visitor of the run, first seen first, with its timeline and the answer to 'tracked before consent?'.

    One visitor at a time: the page is rendered as it is read, so a big run costs one timeline of memory.
    """
    visitors = [
        r[0]
        for r in conn.execute(
            "SELECT visitor FROM visitors WHERE run = ? ORDER BY first_seen, visitor LIMIT ?", (run, limit)
        )
    ]
    for visitor in visitors:
        timeline = reader.visitor_timeline(conn, visitor, run, MAX_EVENTS)
        if timeline is None:
            continue
        calls = [
            TrackingCall(e["kind"], e["consent"], tuple(f["kind"] for f in e["findings"]))
            for e in timeline["timeline"]
            if e["type"] == "delivery"
        ]
        answer = consent_answer(calls)
        yield {
            "visitor": visitor,
            "visit": timeline["visits"][0],
            "events": _timeline(timeline),
            "answer": {"state": answer.answer.value, "text": ANSWERS[answer.answer]},
        }


def render(conn: sqlite3.Connection, run: str, check: Report, *, created_at: float, version: str) -> Iterator[str]:
    """The report's HTML, in pieces."""
    visitor_count = int(conn.execute("SELECT count(*) FROM visitors WHERE run = ?", (run,)).fetchone()[0])
    summary = check.summary
    context = {
        "run": run,
        "created_at": created_at,
        "version": version,
        "summary": summary,
        "total": sum(summary["deliveries"].values()),
        "findings": sorted(((k, n) for k, n in summary["findings"].items() if n), key=lambda kn: (-kn[1], kn[0])),
        "healthy": check.healthy,
        "reasons": check.reasons[:MAX_REASONS],
        "more_reasons": max(0, len(check.reasons) - MAX_REASONS),
        "schemas": schema_counts(conn, run),
        "visitors": visitor_timelines(conn, run),
        "visitor_count": visitor_count,
        "max_visitors": MAX_VISITORS,
        "max_events": MAX_EVENTS,
    }
    return _environment().get_template("report.html").generate(context)
