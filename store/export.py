"""Export deliveries as HAR 1.2, JSON lines or CSV: for browsers' dev tools, scripts and spreadsheets."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from typing import Any

from clickwatch.core.timeparse import iso_utc

FORMATS = {"har": "application/json", "jsonl": "application/x-ndjson", "csv": "text/csv"}
CSV_COLUMNS = (
    "id", "run", "kind", "verdict", "method", "url", "schema", "status_code", "duration_ms",
    "sent_at", "visitor", "consent", "error", "findings", "pushed_at",
)  # fmt: skip


def _iso(ts: float | None) -> str | None:
    return iso_utc(ts) if ts is not None else None


def _har_headers(headers: list[list[str]]) -> list[dict[str, str]]:
    return [{"name": name, "value": value} for name, value in headers]


def _har_entry(item: dict[str, Any]) -> dict[str, Any]:
    request, response = item["request"], item["response"]
    req_body = request["body"]
    entry: dict[str, Any] = {
        "startedDateTime": _iso(item["sent_at"]),
        "time": item["duration_ms"] or 0,
        "request": {
            "method": item["method"],
            "url": item["url"],
            "httpVersion": "HTTP/1.1",
            "headers": _har_headers(request["headers"]),
            "queryString": [],
            "cookies": [],
            "headersSize": -1,
            "bodySize": req_body["size"] or 0,
        },
        "response": {
            "status": item["status_code"] or 0,
            "statusText": "",
            "httpVersion": "HTTP/1.1",
            "headers": _har_headers(response["headers"]) if response else [],
            "cookies": [],
            "content": {"size": 0, "mimeType": ""},
            "redirectURL": "",
            "headersSize": -1,
            "bodySize": -1,
        },
        "cache": {},
        "timings": {"send": 0, "wait": item["duration_ms"] or 0, "receive": 0},
        "_clickwatch": {
            key: item.get(key)
            for key in (
                "id",
                "run",
                "kind",
                "target",
                "verdict",
                "visitor",
                "consent",
                "error",
                "findings",
                "pushed_at",
            )
        },
    }
    if req_body["text"] is not None:
        mime = next((v for k, v in request["headers"] if k.lower() == "content-type"), "")
        post: dict[str, Any] = {"mimeType": mime, "text": req_body["text"]}
        if req_body["kind"] == "binary":
            post["encoding"] = "base64"
        entry["request"]["postData"] = post
    if response:
        body = response["body"]
        mime = next((v for k, v in response["headers"] if k.lower() == "content-type"), "")
        content: dict[str, Any] = {"size": body["size"] or 0, "mimeType": mime}
        if body["text"] is not None:
            content["text"] = body["text"]
            if body["kind"] == "binary":
                content["encoding"] = "base64"
        entry["response"]["content"] = content
    if item["error"]:
        entry["_error"] = item["error"]
    return entry


# Where the consent signals of a run are written as storefront requests: a host that cannot exist (RFC 2606).
SIGNAL_URL = "https://storefront.invalid/clickwatch-consent-signal"
_CONSENT_STATES = {"given": "GIVEN", "withdrawn": "WITHDRAWN"}


def consent_entry(signal: dict[str, Any], template: str = "PROFILE") -> dict[str, Any] | None:
    """A consent signal of the run (a row of consent_signals, with the visitor's `user_agent`) as the storefront
    request that carries it, so that importing the HAR follows the visitor's consent as the live run did.

    The signal is stored, not the request it was read from (cookie values are never stored): the entry says so
    under `_clickwatch` (`"kind": "consent_signal"`). Given or withdrawn consent is a request with that
    anonymous-consents cookie (or X-Anonymous-Consents header, when the live signal came from that header);
    absent consent is a page load without one. None for a state a request cannot carry (paused).
    """
    state, source = signal["state"], signal["source"] or ""
    headers = [{"name": "User-Agent", "value": signal.get("user_agent") or ""}]
    if state in _CONSENT_STATES:
        value = json.dumps(
            [{"templateCode": template, "templateVersion": 1, "consentState": _CONSENT_STATES[state]}],
            separators=(",", ":"),
        )
        if "header" in source.lower():
            headers.append({"name": "X-Anonymous-Consents", "value": value})
        else:
            headers.append(
                {"name": "Cookie", "value": "anonymous-consents=" + value.replace('"', "%22").replace(",", "%2C")}
            )
        headers += [{"name": "Accept", "value": "application/json"}, {"name": "Sec-Fetch-Dest", "value": "empty"}]
        content = {"size": 2, "mimeType": "application/json", "text": "{}"}
    elif state == "absent":
        headers += [{"name": "Accept", "value": "text/html"}, {"name": "Sec-Fetch-Dest", "value": "document"}]
        content = {"size": 0, "mimeType": "text/html", "text": ""}
    else:
        return None
    return {
        "startedDateTime": _iso(signal["at"]),
        "time": 0,
        "request": {
            "method": "GET", "url": SIGNAL_URL, "httpVersion": "HTTP/1.1", "headers": headers, "queryString": [],
            "cookies": [], "headersSize": -1, "bodySize": 0,
        },
        "response": {
            "status": 200, "statusText": "", "httpVersion": "HTTP/1.1",
            "headers": [{"name": "Content-Type", "value": content["mimeType"]}], "cookies": [], "content": content,
            "redirectURL": "", "headersSize": -1, "bodySize": -1,
        },
        "cache": {},
        "timings": {"send": 0, "wait": 0, "receive": 0},
        "_clickwatch": {
            "kind": "consent_signal", "run": signal["run"], "visitor": signal["visitor"], "consent": state,
            "source": source, "detail": signal.get("detail"),
        },
    }  # fmt: skip


def har(items: Iterable[dict[str, Any]], version: str, signals: Iterable[dict[str, Any]] = ()) -> Iterator[str]:
    """A HAR 1.2 document, streamed in pieces: the deliveries, then the consent signals given (consent_entry)."""
    yield '{"log": {"version": "1.2", "creator": ' + json.dumps({"name": "clickwatch", "version": version})
    yield ', "entries": ['
    index = -1
    for index, item in enumerate(items):
        yield ("," if index else "") + json.dumps(_har_entry(item), ensure_ascii=False)
    for signal in signals:
        entry = consent_entry(signal)
        if entry is not None:
            index += 1
            yield ("," if index else "") + json.dumps(entry, ensure_ascii=False)
    yield "]}}\n"


def jsonl(items: Iterable[dict[str, Any]]) -> Iterator[str]:
    """One JSON object per delivery per line."""
    for item in items:
        yield json.dumps(item, ensure_ascii=False) + "\n"


def _csv_safe(value: Any) -> Any:
    # Spreadsheets execute cells starting with these: captured strings are hostile input.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def csv_rows(items: Iterable[dict[str, Any]]) -> Iterator[str]:
    """A CSV table with one delivery per row and its findings' kinds in one cell."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    yield buffer.getvalue()
    for item in items:
        buffer.seek(0)
        buffer.truncate()
        row = {**item, "findings": " ".join(f["kind"] for f in item["findings"])}
        writer.writerow([_csv_safe(row.get(column)) for column in CSV_COLUMNS])
        yield buffer.getvalue()
