"""The login page: the access-token form, and the HttpOnly, SameSite=Strict cookie a correct token earns."""

from __future__ import annotations

from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from clickwatch.dashboard.deps import SettingsDep
from clickwatch.dashboard.pages.common import page
from clickwatch.dashboard.security import COOKIE, token_matches

router = APIRouter(include_in_schema=False)

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
