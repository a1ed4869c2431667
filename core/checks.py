"""Stateless checks of one message: payload shape, schema, CORS preflight answers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clickwatch.core.findings import clip, listed
from clickwatch.core.model import Body, BodyKind, Headers
from clickwatch.core.record import header

SAFELISTED_METHODS = frozenset({"GET", "HEAD", "POST"})
_MAX_NULL_PATHS = 5
# Events of one body named in a finding; the rest are counted ("… and N more").
_MAX_EVENT_PROBLEMS = 10
_MAX_NAMES = 20
_MAX_KEY = 60


def _null_paths(value: Any, out: list[str]) -> None:
    # Iterative (the decoder bounds depth and count, but a path is only built for what is reported).
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack and len(out) < _MAX_NULL_PATHS:
        item, path = stack.pop()
        if item is None:
            out.append(path or "(body)")
        elif isinstance(item, dict):
            stack.extend(
                (child, f"{path}.{clip(str(key), _MAX_KEY)}" if path else clip(str(key), _MAX_KEY))
                for key, child in reversed(item.items())
            )
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{index}]") for index, child in reversed(list(enumerate(item))))


def json_type(value: Any) -> str:
    """The JSON type of a parsed value, as JSON Schema names it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def payload_problems(body: Body, required: tuple[str, ...] | None) -> list[str]:
    """What is wrong with an event body: not a JSON object (or array of objects), missing fields, nulls.

    At most a few events are named; the others with problems are counted.
    """
    if body.kind is BodyKind.EMPTY:
        return ["the body is empty"]
    if body.refused:
        return [f"the body is too big to judge ({body.note})"]
    if body.kind is not BodyKind.JSON:
        reason = body.note or f"{body.kind.value} body"
        return [f"the body is not JSON ({reason})"]
    parsed = body.parsed
    if isinstance(parsed, dict):
        events = [parsed]
    elif isinstance(parsed, list) and parsed and all(isinstance(item, dict) for item in parsed):
        events = parsed
    else:
        shape = "an empty array" if parsed == [] else f"a JSON {json_type(parsed)}"
        return [f"the body is {shape}, not an object or an array of objects"]
    problems: list[str] = []
    unnamed = 0
    for index, event in enumerate(events):
        if len(problems) >= _MAX_EVENT_PROBLEMS:
            # Counted only: the rest of the events are not described.
            if any(name not in event for name in required or ()) or _has_null(event):
                unnamed += 1
            continue
        where = f"event {index}: " if len(events) > 1 else ""
        missing = [name for name in required or () if name not in event]
        if missing:
            problems.append(f"{where}required field(s) missing: {listed(missing, _MAX_NAMES)}")
        nulls: list[str] = []
        _null_paths(event, nulls)
        if nulls:
            problems.append(f"{where}null value(s) at {', '.join(nulls)}")
    if unnamed:
        problems.append(f"… and {unnamed} more event(s) with problems")
    return problems


def _has_null(value: Any) -> bool:
    found: list[str] = []
    _null_paths(value, found)
    return bool(found)


def schema_problem(schema_name: str | None, known: Mapping[str, tuple[str, ...]]) -> str | None:
    """Why a hybris-schema value is not usable, or None when it names a known schema."""
    if not schema_name:
        return "the hybris-schema header is missing"
    if schema_name not in known:
        return f"hybris-schema {clip(schema_name, 100)!r} is not a known schema"
    return None


def _tokens(value: str | None) -> list[str]:
    return [token.strip().lower() for token in (value or "").split(",") if token.strip()]


# The request header that names a run (addon/capture.py's RUN_HEADER, lower-cased as header names are compared).
RUN_HEADER = "x-clickwatch-run"


def _joined(headers: Headers, name: str) -> str | None:
    # Repeated list-valued header lines mean the same as one line joined with commas (RFC 9110 5.3).
    values = [value for key, value in headers if key.lower() == name]
    return ", ".join(values) if values else None


def cors_problems(request_headers: Headers, status_code: int, response_headers: Headers) -> list[str]:
    """Why a browser would refuse to send the real request after this preflight answer (empty: it would send)."""
    if not 200 <= status_code <= 299:
        return [f"the preflight was answered {status_code}, not 2xx"]
    problems: list[str] = []
    origin = header(request_headers, "origin")
    allow_origin = header(response_headers, "access-control-allow-origin")
    if origin is not None:
        if allow_origin is None:
            problems.append("the answer has no Access-Control-Allow-Origin")
        elif allow_origin.strip() not in ("*", origin):
            problems.append(
                f"Access-Control-Allow-Origin is {clip(allow_origin.strip(), 200)!r}, "
                f"not the page's origin {clip(origin, 200)!r}"
            )
    method = (header(request_headers, "access-control-request-method") or "").strip().upper()
    allowed_methods = [m.upper() for m in _tokens(_joined(response_headers, "access-control-allow-methods"))]
    if method and method not in SAFELISTED_METHODS and method not in allowed_methods and "*" not in allowed_methods:
        problems.append(f"method {clip(method, 40)} is not in Access-Control-Allow-Methods")
    requested = _tokens(_joined(request_headers, "access-control-request-headers"))
    allowed = _tokens(_joined(response_headers, "access-control-allow-headers"))
    credentials = (header(response_headers, "access-control-allow-credentials") or "").strip().lower() == "true"
    if requested and not ("*" in allowed and not credentials):
        missing = [name for name in requested if name not in allowed]
        if missing:
            allows = listed([clip(name, 60) for name in allowed], _MAX_NAMES) if allowed else "nothing"
            named = listed([clip(name, 60) for name in missing], _MAX_NAMES)
            problems.append(f"request header(s) {named} not allowed by Access-Control-Allow-Headers (allows {allows})")
            if RUN_HEADER in missing:
                problems.append(
                    f"{RUN_HEADER} is clickwatch's run header, added by the client (e.g. Playwright's "
                    "extra_http_headers) to every request, cross-origin ones too: name a browser's run by proxy "
                    "credentials instead"
                )
    return problems
