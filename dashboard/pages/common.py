"""What every page shares: the template environment and its filters, the security headers, error pages, and
reading the store with a readable 503 page when it cannot be read."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from fastapi.templating import Jinja2Templates

from clickwatch.core import __version__
from clickwatch.core.config import BUILTIN_SCHEMAS
from clickwatch.core.findings import FindingKind, Severity
from clickwatch.core.model import Kind, Verdict
from clickwatch.core.redaction import REDACTED
from clickwatch.core.timeparse import clock_utc, iso_utc
from clickwatch.dashboard.settings import DashboardSettings
from clickwatch.store import reader

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # same-origin, not no-referrer: captured URLs still never reach another site, and a same-origin form POST
    # carries its real Origin (with no-referrer, Safari before 16.4 sent "null" and the login form was refused).
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


# --- formatting -------------------------------------------------------------------------------------------


def iso_time(ts: float | None) -> str:
    """Epoch seconds -> ISO 8601 UTC with milliseconds ('' for None)."""
    return "" if ts is None else iso_utc(ts, timespec="milliseconds")


def clock_time(ts: float | None) -> str:
    """Epoch seconds -> 'YYYY-MM-DD HH:MM:SS.mmm UTC' ('—' for None); the page script shows local time."""
    return "—" if ts is None else clock_utc(ts)


def duration(ms: float | None) -> str:
    """Milliseconds as '84 ms' or '2.31 s' ('—' for None)."""
    if ms is None:
        return "—"
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.2f} s"


def pretty_body(body: Mapping[str, Any] | None) -> str:
    """A stored body as text: JSON re-indented, anything else as stored."""
    if not body or body.get("text") is None:
        return ""
    text = str(body["text"])
    if body.get("kind") == "json" and not body.get("truncated"):
        try:
            return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
        except ValueError:
            return text
    return text


def compact_json(value: Any) -> str:
    """A parsed JSON value as one line of JSON text (escaped by the template like any other text)."""
    return json.dumps(value, ensure_ascii=False)


def bar_width(value: float, top: float) -> str:
    """A funnel bar's length in percent of the longest one (static/live.js computes the same)."""
    return f"{round(10000 * value / top) / 100:g}" if top > 0 else "0"


def _environment() -> jinja2.Environment:
    # Autoescape for every template, whatever its extension; StrictUndefined turns a typo into an error.
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        iso=iso_time, clock=clock_time, duration=duration, pretty=pretty_body, compact=compact_json, width=bar_width
    )
    env.globals.update(
        version=__version__,
        kinds=[k.value for k in Kind],
        verdicts=[v.value for v in Verdict],
        finding_kinds=[f.value for f in FindingKind],
        severities=[s.value for s in Severity],
        schema_names=sorted(BUILTIN_SCHEMAS, key=str.lower),
        REDACTED=REDACTED,
    )
    return env


templates = Jinja2Templates(env=_environment())


# --- answers ----------------------------------------------------------------------------------------------


def page(request: Request, name: str, context: dict[str, Any] | None = None, status_code: int = 200) -> Response:
    """A rendered page with the security headers every HTML page carries."""
    return templates.TemplateResponse(request, name, context or {}, status_code=status_code, headers=PAGE_HEADERS)


def error_page(request: Request, status_code: int, title: str, message: str, **extra: Any) -> Response:
    """A readable error page (never a stack trace)."""
    context = {"status": status_code, "title": title, "message": message, **extra}
    return page(request, "error.html", context, status_code)


def store_damaged(request: Request, exc: Exception) -> Response:
    """The answer to any request that found the store damaged (reader.StoreDamaged): 500 and one sentence, a page
    for a browser, JSON for the API and /metrics. The server goes on serving what it still can read."""
    if not request.url.path.startswith(("/api/", "/metrics")) and "text/html" in request.headers.get("accept", ""):
        message = "The dashboard cannot read the clickwatch store: the file is damaged."
        return error_page(request, 500, "Store damaged", message, detail=str(exc))
    return JSONResponse({"detail": str(exc)}, status_code=500)


def _store_unavailable(request: Request, settings: DashboardSettings, reason: str) -> Response:
    return error_page(
        request,
        503,
        "Store not available yet",
        "The dashboard cannot read the clickwatch store. It appears once the proxy has started and written to it.",
        detail=reason,
        db=os.path.abspath(settings.db),
        retry_seconds=5,
    )


def with_store(
    request: Request, settings: DashboardSettings, build: Callable[[sqlite3.Connection], Response]
) -> Response:
    """Render `build(conn)` on a read-only connection; a 503 page when the store cannot be read."""
    try:
        conn = reader.connect(settings.db)
    except reader.StoreUnavailable as exc:
        return _store_unavailable(request, settings, str(exc))
    try:
        return build(conn)
    except sqlite3.Error as exc:
        return _store_unavailable(request, settings, f"reading the store failed: {exc}")
    finally:
        conn.close()
