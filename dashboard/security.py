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
