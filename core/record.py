"""Turn observations into the rows the store keeps: decode, redact, time."""

from __future__ import annotations

import json
from typing import Any

from clickwatch.core.decoding import decode_body
from clickwatch.core.model import Answer, Body, BodyKind, Headers, RequestSeen, Verdict
from clickwatch.core.redaction import redact_headers
from clickwatch.core.visitor import normalise_ip, visitor_key

SCHEMA_PREFIX = "context/commerce/"
_NO_BODY = Body(BodyKind.EMPTY, None, 0)


def clean_text(value: str | None) -> str | None:
    """Replace undecodable bytes (surrogate escapes) so any captured string can be stored and shown."""
    if value is None or value.isascii():
        return value
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        pass
    try:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        # A lone surrogate that is not an escaped byte (a cut emoji a page sent as JSON '\ud83d').
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def header(headers: Headers, name: str) -> str | None:
    """First value of a header, by case-insensitive name."""
    lower = name.lower()
    for key, value in headers:
        if key.lower() == lower:
            return value
    return None


def schema_name(schema: str | None) -> str | None:
    """'context/commerce/ProductView' -> 'ProductView'; other values are kept as sent."""
    if not schema:
        return None
    schema = schema.strip()
    return schema[len(SCHEMA_PREFIX) :] if schema.startswith(SCHEMA_PREFIX) else schema


def _body(headers: Headers, raw: bytes, limit: int) -> Body:
    return decode_body(
        raw,
        content_encoding=header(headers, "content-encoding") or "",
        content_type=header(headers, "content-type") or "",
        limit=limit,
    )


def _headers_json(headers: Headers) -> str:
    return json.dumps([[clean_text(k), clean_text(v)] for k, v in redact_headers(headers)], ensure_ascii=False)


def _body_columns(prefix: str, body: Body) -> dict[str, Any]:
    return {
        f"{prefix}_body": body.text,
        f"{prefix}_body_kind": body.kind.value,
        f"{prefix}_body_size": body.size,
        f"{prefix}_body_truncated": int(body.truncated),
        f"{prefix}_body_note": body.note,
    }


def request_body(seen: RequestSeen, limit: int) -> Body:
    """The decoded request body of a tracking call."""
    return _body(seen.headers, seen.raw_body, limit)


def request_row(seen: RequestSeen, body: Body) -> dict[str, Any]:
    """The row for a delivery whose request has been seen: verdict pending."""
    schema = clean_text(header(seen.headers, "hybris-schema"))
    row: dict[str, Any] = {
        "uid": seen.uid,
        "run": clean_text(seen.run),
        "kind": seen.kind.value,
        "target_kind": seen.target.value if seen.target else None,
        "verdict": Verdict.PENDING.value,
        "method": clean_text(seen.method),
        "url": clean_text(seen.url),
        "host": clean_text(seen.host),
        "path": clean_text(seen.path),
        "client_addr": normalise_ip(seen.client_addr),
        "user_agent": clean_text(seen.user_agent),
        "visitor": visitor_key(seen.client_addr, seen.user_agent),
        "schema": schema,
        "schema_name": schema_name(schema),
        "consent_reference": clean_text(header(seen.headers, "consent-reference")),
        "origin": clean_text(header(seen.headers, "origin")),
        "sent_at": seen.sent_at,
        "request_headers": _headers_json(seen.headers),
    }
    row.update(_body_columns("request", body))
    return row


def answer_row(answer: Answer, verdict: Verdict, limit: int) -> dict[str, Any]:
    """The columns an answer (response or error) sets on its delivery."""
    row: dict[str, Any] = {
        "uid": answer.uid,
        "verdict": verdict.value,
        "status_code": answer.status_code,
        "error": clean_text(answer.error),
        "answered_at": answer.ended_at if answer.status_code is not None else None,
        "ended_at": answer.ended_at,
        "duration_ms": round(max(0.0, answer.ended_at - answer.sent_at) * 1000, 3),
    }
    # Every answer row has the same columns, so a batch of them is one executemany.
    if answer.status_code is None:
        row["response_headers"] = None
        row.update(dict.fromkeys(_body_columns("response", _NO_BODY)))
    else:
        row["response_headers"] = _headers_json(answer.headers)
        row.update(_body_columns("response", _body(answer.headers, answer.raw_body, limit)))
        if answer.note:
            row["response_body_note"] = answer.note
    return row
