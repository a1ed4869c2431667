"""Access control: loopback needs nothing; any other address needs the access token on every request."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from fastapi import Request, Response
from fastapi.responses import JSONResponse, RedirectResponse

COOKIE = "clickwatch_token"
OPEN_PATHS = frozenset({"/healthz", "/login"})


def supplied_token(request: Request) -> str | None:
    """The token a request carries: Authorization bearer, X-Clickwatch-Token header, or the login cookie."""
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-clickwatch-token") or request.cookies.get(COOKIE)


def token_matches(supplied: str | None, token: str) -> bool:
    """Constant-time comparison of a supplied token with the configured one."""
    return supplied is not None and hmac.compare_digest(supplied.encode(), token.encode())


def token_guard(token: str) -> Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]:
    """Middleware refusing every request without the token, except health checks, login and static files."""

    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        path = request.url.path
        if path in OPEN_PATHS or path.startswith("/static/") or token_matches(supplied_token(request), token):
            return await call_next(request)
        if path.startswith("/api/") or path == "/metrics" or path in ("/openapi.json", "/docs"):
            return JSONResponse(
                {"detail": "access token required: send 'Authorization: Bearer <token>' or log in at /login"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        target = path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)

    return guard


LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _hostname(value: str) -> str:
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def browser_guard(
    listen_host: str, token_required: bool
) -> Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]:
    """Refuse cross-site writes (a page on another site POSTing /api/reset) and, without a token,
    requests for a Host that is not this machine (DNS rebinding reading captured data)."""
    allowed = LOOPBACK_NAMES | {_hostname(listen_host)}

    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if not token_required and request.url.path != "/healthz":
            host = _hostname(request.headers.get("host", ""))
            if host not in allowed:
                return JSONResponse({"detail": f"unexpected Host {host!r}: use http://127.0.0.1"}, status_code=421)
        if request.method not in SAFE_METHODS:
            site = request.headers.get("sec-fetch-site")
            origin = request.headers.get("origin")
            origin_host = _hostname(origin.split("://", 1)[-1].split("/", 1)[0]) if origin else None
            if site == "cross-site" or (
                origin_host is not None and origin_host not in allowed | {_hostname(request.headers.get("host", ""))}
            ):
                return JSONResponse({"detail": "cross-site request refused"}, status_code=403)
        return await call_next(request)

    return guard
