"""Turn observations into the rows the store keeps: decode, redact, time."""

from __future__ import annotations

import base64
import contextlib
import json
from typing import Any

from clickwatch.core.decoding import DEFAULT_DECODE_LIMIT, decode_body
from clickwatch.core.model import Answer, Body, BodyKind, Headers, RequestSeen, Verdict
from clickwatch.core.redaction import DEFAULT, Redaction
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


def _body(headers: Headers, raw: bytes, limit: int, max_decoded: int) -> Body:
    return decode_body(
        raw,
        content_encoding=header(headers, "content-encoding") or "",
        content_type=header(headers, "content-type") or "",
        limit=limit,
        max_decoded=max_decoded,
    )


def _headers_json(headers: Headers, redaction: Redaction) -> str:
    return json.dumps([[clean_text(k), clean_text(v)] for k, v in redaction.headers(headers)], ensure_ascii=False)


def _stored_text(body: Body, headers: Headers, redaction: Redaction) -> str | None:
    # Secrets by key leave JSON at any depth, and urlencoded forms; what else a body holds is kept as sent.
    text = body.text
    if text and body.kind is BodyKind.BINARY:
        # A base64 prefix cannot be redacted in place: kept only when its bytes name nothing on the list.
        with contextlib.suppress(ValueError):
            if redaction.mentions(base64.b64decode(text).decode("latin-1")):
                return None
        return text
    if not text or body.kind not in (BodyKind.JSON, BodyKind.TEXT):
        return text
    if body.kind is BodyKind.JSON or text.lstrip()[:1] in ("{", "["):
        return redaction.json_text(text)
    media = (header(headers, "content-type") or "").split(";", 1)[0].strip().lower()
    return redaction.query(text) if media == "application/x-www-form-urlencoded" else text


def _body_columns(prefix: str, body: Body, text: str | None = None) -> dict[str, Any]:
    return {
        f"{prefix}_body": text,
        f"{prefix}_body_kind": body.kind.value,
        f"{prefix}_body_size": body.size,
        f"{prefix}_body_truncated": int(body.truncated),
        f"{prefix}_body_note": body.note,
    }


def request_body(seen: RequestSeen, limit: int, max_decoded: int = DEFAULT_DECODE_LIMIT) -> Body:
    """The decoded request body of a tracking call (not read past `max_decoded` bytes)."""
    return _body(seen.headers, seen.raw_body, limit, max_decoded)


def request_row(seen: RequestSeen, body: Body, redaction: Redaction = DEFAULT) -> dict[str, Any]:
    """The row for a delivery whose request has been seen: verdict pending; secrets redacted."""
    schema = clean_text(header(seen.headers, "hybris-schema"))
    row: dict[str, Any] = {
        "uid": seen.uid,
        "run": clean_text(seen.run),
        "kind": seen.kind.value,
        "target_kind": seen.target.value if seen.target else None,
        "verdict": Verdict.PENDING.value,
        "method": clean_text(seen.method),
        "url": clean_text(redaction.url(seen.url)),
        "host": clean_text(seen.host),
        "path": clean_text(redaction.url(seen.path)),
        "client_addr": normalise_ip(seen.client_addr),
        "user_agent": clean_text(seen.user_agent),
        "visitor": visitor_key(seen.client_addr, seen.user_agent),
        "schema": schema,
        "schema_name": schema_name(schema),
        "consent_reference": clean_text(header(seen.headers, "consent-reference")),
        "origin": clean_text(header(seen.headers, "origin")),
        "sent_at": seen.sent_at,
        "request_headers": _headers_json(seen.headers, redaction),
    }
    row.update(_body_columns("request", body, _stored_text(body, seen.headers, redaction)))
    return row


def answer_row(
    answer: Answer,
    verdict: Verdict,
    limit: int,
    redaction: Redaction = DEFAULT,
    max_decoded: int = DEFAULT_DECODE_LIMIT,
) -> dict[str, Any]:
    """The columns an answer (response or error) sets on its delivery; secrets redacted."""
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
        row["response_headers"] = _headers_json(answer.headers, redaction)
        body = _body(answer.headers, answer.raw_body, limit, max_decoded)
        row.update(_body_columns("response", body, _stored_text(body, answer.headers, redaction)))
        if answer.note:
            row["response_body_note"] = answer.note
    return row
