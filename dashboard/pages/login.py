"""The login page: the access-token form, throttled per client, and the signed session cookie a right token earns."""

from __future__ import annotations

from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from clickwatch.dashboard.deps import SettingsDep
from clickwatch.dashboard.pages.common import page
from clickwatch.dashboard.security import COOKIE, Sessions, Throttle, client_key, read_bounded, token_matches

router = APIRouter(include_in_schema=False)

# A token and a return path: anything longer is refused (413) before more of it is read.
MAX_LOGIN_BODY = 8192


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
    """Check the token; on success set a signed, expiring session cookie (HttpOnly, SameSite=Strict) and go on."""
    if not settings.token:
        return RedirectResponse("/", status_code=303)
    throttle: Throttle = request.app.state.throttle
    key = client_key(request.client.host if request.client else None)
    # Read (8 KB at most) before the throttle: the right token gets in even while this address waits for wrong
    # ones (behind a reverse proxy, everyone's address), and only wrong ones are answered 429.
    raw = await read_bounded(request, MAX_LOGIN_BODY)
    if raw is None:
        return JSONResponse({"detail": f"login form larger than {MAX_LOGIN_BODY} bytes"}, status_code=413)
    # Parsed by hand: a two-field urlencoded form does not need a multipart parser dependency.
    form = parse_qs(raw.decode("utf-8", "replace"))
    supplied = (form.get("token") or [""])[0]
    target = safe_next((form.get("next") or [""])[0])
    token = settings.token
    granted, wait = throttle.check(key, lambda: token_matches(supplied, token))
    if wait:
        answer = page(request, "login.html", {"next": target, "failed": False, "wait": wait}, 429)
        answer.headers["Retry-After"] = str(wait)
        return answer
    if not granted:
        return page(request, "login.html", {"next": target, "failed": True}, 401)
    sessions: Sessions = request.app.state.sessions
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        sessions.issue(),
        max_age=int(sessions.lifetime),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response
