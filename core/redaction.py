"""Keep credentials and cookie values out of the store while keeping headers useful."""

from __future__ import annotations

from clickwatch.core.model import Headers

REDACTED = "<redacted>"
_AUTH_HEADERS = frozenset({"authorization", "proxy-authorization"})


def _redact_auth(value: str) -> str:
    scheme, sep, _ = value.strip().partition(" ")
    return f"{scheme} {REDACTED}" if sep else REDACTED


def _redact_cookie(value: str) -> str:
    # Cookie names tell which consent and session cookies a browser sent; their values never leave.
    names = [part.split("=", 1)[0].strip() for part in value.split(";") if part.strip()]
    return "; ".join(f"{name}={REDACTED}" for name in names)


def _redact_set_cookie(value: str) -> str:
    # Attributes (Secure, SameSite, Path...) explain why a tag cannot keep its cookie, so they stay.
    first, sep, attributes = value.partition(";")
    name = first.split("=", 1)[0].strip()
    return f"{name}={REDACTED}{sep}{attributes}"


def redact_headers(headers: Headers) -> Headers:
    """Replace the secret part of Authorization, Proxy-Authorization, Cookie and Set-Cookie values."""
    out = []
    for name, value in headers:
        lower = name.lower()
        if lower in _AUTH_HEADERS:
            value = _redact_auth(value)
        elif lower == "cookie":
            value = _redact_cookie(value)
        elif lower == "set-cookie":
            value = _redact_set_cookie(value)
        out.append((name, value))
    return tuple(out)
