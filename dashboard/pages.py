"""Server-rendered pages: live deliveries, one delivery, visitors' consent timelines, proxy setup, login.

Everything shown here was captured from traffic and is hostile input: templates autoescape every value,
and the pages' own scripts build rows with textContent only. A strict Content-Security-Policy (no inline
script) backs that up, so the seq and filters reach the script through data- attributes.
"""

from __future__ import annotations

import enum
import json
import os
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode

import jinja2
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from clickwatch.core import __version__
from clickwatch.core.config import BUILTIN_SCHEMAS
from clickwatch.core.findings import FindingKind, Severity
from clickwatch.core.model import Kind, Verdict
from clickwatch.core.redaction import REDACTED
from clickwatch.dashboard.deps import SettingsDep, delivery_filter
from clickwatch.dashboard.security import COOKIE, token_matches
from clickwatch.dashboard.settings import DashboardSettings
from clickwatch.store import reader

router = APIRouter(include_in_schema=False)

PAGE_SIZE = 100
CA_FILES = {
    # Served under fixed names only: the confdir also holds mitmproxy-ca.pem, which contains the private key.
    "mitmproxy-ca-cert.pem": "application/x-pem-file",
    "mitmproxy-ca-cert.cer": "application/x-x509-ca-cert",
}
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
FILTER_NAMES = ("kind", "verdict", "schema", "finding", "visitor", "run", "since", "until")
FILTER_MAX_LENGTH = {"visitor": 64, "since": 64, "until": 64}
TRACKING_KINDS = frozenset({Kind.CLICKSTREAM.value, Kind.CONSENT_REFERENCE.value})
NO_CONSENT_STATES = frozenset({"absent", "withdrawn", "paused"})
MAX_LOGIN_BODY = 8192


# --- formatting -------------------------------------------------------------------------------------------


def iso_time(ts: float | None) -> str:
    """Epoch seconds -> ISO 8601 UTC with milliseconds ('' for None)."""
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def clock_time(ts: float | None) -> str:
    """Epoch seconds -> 'YYYY-MM-DD HH:MM:SS.mmm UTC' ('—' for None); the page script shows local time."""
    if ts is None:
        return "—"
    moment = datetime.fromtimestamp(ts, UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d} UTC"


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
        loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent / "templates"),
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


def page(request: Request, name: str, context: dict[str, Any] | None = None, status_code: int = 200) -> Response:
    """A rendered page with the security headers every HTML page carries."""
    return templates.TemplateResponse(request, name, context or {}, status_code=status_code, headers=PAGE_HEADERS)


def error_page(request: Request, status_code: int, title: str, message: str, **extra: Any) -> Response:
    """A readable error page (never a stack trace)."""
    context = {"status": status_code, "title": title, "message": message, **extra}
    return page(request, "error.html", context, status_code)


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


# --- filters ----------------------------------------------------------------------------------------------


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


# --- pages ------------------------------------------------------------------------------------------------


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
                "filters": filters,
                "seq": seq,
                "live": not cursor,
                "older": older,
                "funnel": funnel_view(reader.funnel(conn, filters.flt.run)),
            },
        )

    return with_store(request, settings, build)


@router.get("/deliveries/{delivery_id}")
def delivery(request: Request, settings: SettingsDep, delivery_id: int) -> Response:
    """One delivery: request, response or error, timing, consent at that moment, findings."""

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
            before = [e for e in timeline["timeline"] if e["type"] == "consent" and e["at"] <= item["sent_at"]]
            signal = before[-1] if before else None
            push = next((p for p in timeline["pushes"] if p["delivery_id"] == delivery_id), None)
        return page(request, "delivery.html", {"d": item, "signal": signal, "push": push})

    return with_store(request, settings, build)


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
        context = {
            "t": timeline,
            "events": visitor_events(timeline),
            "run": run or "",
            "answer": consent_answer(timeline["timeline"]),
        }
        return page(request, "visitor.html", context)

    return with_store(request, settings, build)


# Same moment: the push first (a ConsentChanged push makes its consent signal), then consent, delivery, finding.
_TIMELINE_ORDER = {"datalayer": 0, "consent": 1, "delivery": 2, "finding": 3}


def visitor_events(timeline: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The timeline with the data layer's rows woven in, each delivery next to the push it carried."""
    pushes = timeline["pushes"]
    carried = {p["delivery_id"]: p for p in pushes if p["delivery_id"] is not None}
    events = [{**e, "push": carried.get(e["id"])} if e["type"] == "delivery" else dict(e) for e in timeline["timeline"]]
    events += [{"type": "datalayer", "at": p["at"], "push": p} for p in pushes]
    events.sort(key=lambda e: (e["at"], _TIMELINE_ORDER.get(e["type"], 9)))
    return events


def funnel_view(funnel: Mapping[str, Any]) -> dict[str, Any]:
    """The funnel with the scale of its bars: the longest of pushed and sent is 100 %."""
    steps = funnel["schemas"]
    top = max([1, *(s["pushed"] for s in steps), *(s["sent"] for s in steps)])
    return {"run": funnel["run"], "schemas": steps, "top": top}


def consent_answer(events: list[dict[str, Any]]) -> dict[str, Any]:
    """'Did this browser track before consent?', answered from the consent each tracking call was judged by."""
    calls = [e for e in events if e["type"] == "delivery" and e["kind"] in TRACKING_KINDS]
    violations = [
        e
        for e in calls
        if e["consent"] in NO_CONSENT_STATES
        or any(f["kind"] == FindingKind.CONSENT_VIOLATION.value for f in e["findings"])
    ]
    waiting = [e for e in calls if e["consent"] == "pending"]
    unknown = [e for e in calls if e["consent"] in (None, "unknown")]
    if violations:
        n = len(violations)
        return {
            "state": "bad",
            "title": "Yes: tracked without consent",
            "text": f"{n} tracking call{'s' if n != 1 else ''} sent while consent was not given.",
        }
    if waiting:
        n = len(waiting)
        return {
            "state": "wait",
            "title": "Not decided yet",
            "text": f"{n} call{'s' if n != 1 else ''} sent before the proxy saw consent; "
            "judged when the grace window ends.",
        }
    if unknown:
        return {
            "state": "unknown",
            "title": "Cannot tell",
            "text": "No consent signal was seen for some tracking calls of this browser.",
        }
    if calls:
        return {"state": "good", "title": "No", "text": "Every tracking call was sent with consent given."}
    return {"state": "none", "title": "No tracking calls", "text": "This browser has not sent any tracking call."}


@router.get("/setup")
def setup(request: Request, settings: SettingsDep) -> Response:
    """How to point a browser at the proxy and trust its CA; whether traffic arrived yet."""
    cert = ca_path(settings, "mitmproxy-ca-cert.pem")
    traffic: dict[str, Any] = {"available": False, "reason": None}
    try:
        conn = reader.connect(settings.db)
    except reader.StoreUnavailable as exc:
        traffic["reason"] = str(exc)
    else:
        try:
            summary = reader.summary(conn, reader.DeliveryFilter())
            last, _ = reader.list_deliveries(conn, reader.DeliveryFilter(), 1)
            seen = reader.list_visitors(conn, None, 1)
            traffic.update(
                available=True,
                total=sum(summary["deliveries"].values()),
                summary=summary,
                last=last[0] if last else None,
                visitor=seen[0] if seen else None,
            )
        except sqlite3.Error as exc:
            traffic["reason"] = f"reading the store failed: {exc}"
        finally:
            conn.close()
    return page(
        request,
        "setup.html",
        {
            "proxy_url": settings.proxy_url,
            "cert_path": str(cert),
            "cert_exists": cert.is_file(),
            "confdir": str(cert.parent),
            "db": os.path.abspath(settings.db),
            "traffic": traffic,
        },
    )


def ca_path(settings: DashboardSettings, name: str) -> Path:
    """Where mitmproxy keeps a CA file, in the proxy's configuration directory."""
    return Path(os.path.expanduser(settings.confdir)) / name


def _ca_download(request: Request, settings: DashboardSettings, name: str) -> Response:
    path = ca_path(settings, name)
    if not path.is_file():
        return error_page(
            request,
            404,
            "CA certificate not created yet",
            f"{path} does not exist. mitmproxy creates its CA certificate the first time the proxy starts "
            f"with this configuration directory ({path.parent}): start the proxy, then download again.",
            back="/setup",
        )
    return FileResponse(path, media_type=CA_FILES[name], filename=name)


@router.get("/setup/mitmproxy-ca-cert.pem")
def ca_pem(request: Request, settings: SettingsDep) -> Response:
    """The proxy's CA certificate (PEM), for browsers and system stores."""
    return _ca_download(request, settings, "mitmproxy-ca-cert.pem")


@router.get("/setup/mitmproxy-ca-cert.cer")
def ca_cer(request: Request, settings: SettingsDep) -> Response:
    """The same certificate under the name Windows and Android expect."""
    return _ca_download(request, settings, "mitmproxy-ca-cert.cer")


# --- login ------------------------------------------------------------------------------------------------


def safe_next(target: str | None) -> str:
    """A same-site path to go to after login; anything that could leave the site becomes '/'."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    # Browsers drop tabs and newlines inside URLs and read '\' as '/': '/\t/evil.example' is '//evil.example'.
    if any(ch == "\\" or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in target):
        return "/"
    return target


@router.get("/login")
def login_form(request: Request, settings: SettingsDep, next: str | None = None) -> Response:
    """The token form (only when an access token is configured)."""
    if not settings.token:
        return RedirectResponse("/", status_code=303)
    return page(request, "login.html", {"next": safe_next(next), "failed": False})


@router.post("/login")
async def login(request: Request, settings: SettingsDep) -> Response:
    """Check the token; on success keep it in an HttpOnly, SameSite=Strict cookie and go on."""
    if not settings.token:
        return RedirectResponse("/", status_code=303)
    # Parsed by hand: a two-field urlencoded form does not need a multipart parser dependency.
    raw = await request.body()
    form = parse_qs(raw[:MAX_LOGIN_BODY].decode("utf-8", "replace")) if len(raw) <= MAX_LOGIN_BODY else {}
    supplied = (form.get("token") or [""])[0]
    target = safe_next((form.get("next") or [""])[0])
    if not token_matches(supplied, settings.token):
        return page(request, "login.html", {"next": target, "failed": True}, 401)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        settings.token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response
