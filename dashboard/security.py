"""Access control: the token, signed login sessions, guessing throttled, cross-site writes refused, bodies bounded.

Loopback needs no token; any other address needs it on every request (docs/operations.md, "Security").
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import math
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import quote, urlsplit

from fastapi.responses import JSONResponse, RedirectResponse
from starlette.requests import HTTPConnection, Request

COOKIE = "clickwatch_session"
OPEN_PATHS = frozenset({"/healthz", "/login"})
SESSION_SECONDS = 12 * 3600
# A request body larger than this is refused before it is read (413); the dashboard takes no large bodies.
MAX_BODY_BYTES = 64 * 1024
# Wrong tokens per client address (an IPv6 /64 counts as one) before it must wait.
GUESSES_PER_MINUTE = 5
# While an address waits, one token from it is still compared every so often: the right one gets in (behind a
# reverse proxy every user shares the proxy's address, and one user's typos must not lock the others out), and a
# guesser still gets no more answers than the limit allows (one every 60 / 5 = 12 s).
THROTTLED_CHECK_SECONDS = 60.0 / GUESSES_PER_MINUTE
_TRACKED_ADDRESSES = 10_000

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


# --- sessions -----------------------------------------------------------------------------------------------


class Sessions:
    """Login sessions as signed cookies: `expiry.id.signature`, an HMAC keyed from the token, never the token.

    The key is derived from the token, so a session survives a restart of the dashboard and ends when the token
    changes or the session expires.
    """

    def __init__(self, token: str, lifetime: float = SESSION_SECONDS) -> None:
        self._key = hmac.new(token.encode(), b"clickwatch login session v1", hashlib.sha256).digest()
        self.lifetime = lifetime

    def _sign(self, payload: str) -> str:
        digest = hmac.new(self._key, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def issue(self, now: float | None = None) -> str:
        """A new session cookie value, valid for `lifetime` seconds."""
        expiry = int((time.time() if now is None else now) + self.lifetime)
        payload = f"{expiry}.{secrets.token_urlsafe(16)}"
        return f"{payload}.{self._sign(payload)}"

    def valid(self, value: str | None, now: float | None = None) -> bool:
        """Whether a cookie value is a session this dashboard signed and that has not expired."""
        if not value or len(value) > 200:
            return False
        payload, _, signature = value.rpartition(".")
        expiry, _, _ = payload.partition(".")
        if not expiry.isdigit() or not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
            return False
        return int(expiry) > (time.time() if now is None else now)


def supplied_token(request: HTTPConnection) -> str | None:
    """The token a request carries: Authorization bearer or X-Clickwatch-Token header."""
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-clickwatch-token")


def token_matches(supplied: str | None, token: str) -> bool:
    """Constant-time comparison of a supplied token with the configured one."""
    return supplied is not None and hmac.compare_digest(supplied.encode(), token.encode())


# --- throttling ---------------------------------------------------------------------------------------------


def client_key(address: str | None) -> str:
    """Who a guess is counted against: the client address, an IPv6 address by its /64."""
    if not address:
        return "?"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class Throttle:
    """Wrong tokens per client in a sliding minute: beyond `limit`, wrong ones are answered 429 with Retry-After.

    The right token is always let in (`check`), also while its address waits; a waiting address has at most one
    token a second compared (`check_every`), so throttling still bounds guessing.
    """

    def __init__(
        self, limit: int = GUESSES_PER_MINUTE, window: float = 60.0, check_every: float = THROTTLED_CHECK_SECONDS
    ) -> None:
        self.limit = limit
        self.window = window
        self.check_every = check_every
        # Bounded: the least recently failing clients are forgotten first.
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        # When a waiting client last had a token compared.
        self._checked: dict[str, float] = {}

    def _recent(self, key: str, now: float) -> deque[float] | None:
        times = self._failures.get(key)
        while times and times[0] <= now - self.window:
            times.popleft()
        if times is not None and not times:
            del self._failures[key]
            return None
        return times

    def retry_after(self, key: str, now: float | None = None) -> int:
        """Seconds the client must wait before its next try (0: it may try now)."""
        now = time.monotonic() if now is None else now
        times = self._recent(key, now)
        if times is None or len(times) < self.limit:
            return 0
        return max(1, int(times[0] + self.window - now + 0.999))

    def failed(self, key: str, now: float | None = None) -> None:
        """Count one wrong token."""
        now = time.monotonic() if now is None else now
        times = self._recent(key, now) or self._failures.setdefault(key, deque(maxlen=self.limit))
        times.append(now)
        self._failures.move_to_end(key)
        while len(self._failures) > _TRACKED_ADDRESSES:
            self._failures.popitem(last=False)

    def succeeded(self, key: str) -> None:
        """A right token clears the client's count."""
        self._failures.pop(key, None)
        self._checked.pop(key, None)

    def check(self, key: str, right: Callable[[], bool], now: float | None = None) -> tuple[bool, int]:
        """Compare a supplied token (`right`, constant-time) for a client: (let in, seconds to wait when not).

        A right token is let in and clears the count, waiting or not. A wrong one is counted; the wait is 0 (401)
        until the client is past its limit (429). A waiting client has a token compared at most every
        `check_every` s; sooner, it is answered 429 unread.
        """
        now = time.monotonic() if now is None else now
        wait = self.retry_after(key, now)
        if wait:
            if now - self._checked.get(key, -math.inf) < self.check_every:
                return False, wait
            self._checked.pop(key, None)
            self._checked[key] = now
            while len(self._checked) > _TRACKED_ADDRESSES:
                del self._checked[next(iter(self._checked))]
        if right():
            self.succeeded(key)
            return True, 0
        self.failed(key, now)
        return False, self.retry_after(key, now) if wait else 0


def too_many(retry_after: int) -> JSONResponse:
    """The answer to a client that guessed too often."""
    return JSONResponse(
        {"detail": f"too many wrong tokens from this address: try again in {retry_after} s"},
        status_code=429,
        headers={"Retry-After": str(retry_after)},
    )


# --- the guards ---------------------------------------------------------------------------------------------


class TokenGuard:
    """ASGI middleware refusing every request without the token or a session, except health checks, login, static
    files. A wrong token counts against the client's address like a wrong login.

    Plain ASGI, not an `http` middleware: a granted request goes on with the server's own `send`, so a stream's
    writes cost nothing here (Starlette's `BaseHTTPMiddleware` passed every chunk through a task and a queue).
    """

    def __init__(self, app: ASGIApp, token: str, sessions: Sessions, throttle: Throttle) -> None:
        self.app = app
        self.token = token
        self.sessions = sessions
        self.throttle = throttle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = HTTPConnection(scope)
        path = request.url.path
        if path in OPEN_PATHS or path.startswith("/static/") or self.sessions.valid(request.cookies.get(COOKIE)):
            await self.app(scope, receive, send)
            return
        supplied = supplied_token(request)
        if supplied is not None:
            key = client_key(request.client.host if request.client else None)
            granted, wait = self.throttle.check(key, lambda: token_matches(supplied, self.token))
            if granted:
                await self.app(scope, receive, send)
                return
            if wait:
                await too_many(wait)(scope, receive, send)
                return
        if path.startswith("/api/") or path == "/metrics" or path in ("/openapi.json", "/docs"):
            refusal = JSONResponse(
                {"detail": "access token required: send 'Authorization: Bearer <token>' or log in at /login"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
            await refusal(scope, receive, send)
            return
        target = path + (f"?{request.url.query}" if request.url.query else "")
        await RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)(scope, receive, send)


LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _hostname(value: str) -> str:
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _origin(scheme: str, netloc: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an origin, the default port filled in; None when it cannot be read."""
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:
        return None
    if not parts.hostname or port is None:
        return None
    return scheme, parts.hostname, port


def cross_origin_write(request: HTTPConnection) -> bool:
    """Whether a write comes from a page of another origin than the dashboard's own (another port included).

    Browsers send Origin on every cross-origin POST (forms and no-cors fetches too) and Sec-Fetch-Site on every
    request; scripts and API clients (curl, CI) send neither, and are let through.
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        # The browser's own word. "same-site" is another port or subdomain: another origin all the same. Trusted
        # over Origin, which a page with Referrer-Policy: no-referrer sends as "null" even to its own origin. (The
        # dashboard's pages send same-origin, so a browser without Sec-Fetch-Site, Safari before 16.4, sends its
        # real Origin on the login form; "null" alone is still refused: sandboxed frames and file:// pages send it.)
        return site not in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None:
        return False
    scheme, sep, rest = origin.strip().lower().partition("://")
    own = _origin(request.url.scheme, request.headers.get("host", ""))
    return not sep or own is None or _origin(scheme, rest) != own


class BrowserGuard:
    """ASGI middleware refusing cross-origin writes (a page on another site or port POSTing /api/reset) and, without
    a token, requests for a Host that is not this machine (DNS rebinding reading captured data)."""

    def __init__(self, app: ASGIApp, listen_host: str, token_required: bool) -> None:
        self.app = app
        self.token_required = token_required
        self.allowed = LOOPBACK_NAMES | {_hostname(listen_host)}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = HTTPConnection(scope)
        if not self.token_required and request.url.path != "/healthz":
            host = _hostname(request.headers.get("host", ""))
            if host not in self.allowed:
                refusal = JSONResponse({"detail": f"unexpected Host {host!r}: use http://127.0.0.1"}, status_code=421)
                await refusal(scope, receive, send)
                return
        if scope["method"] not in SAFE_METHODS and cross_origin_write(request):
            await JSONResponse({"detail": "cross-origin request refused"}, status_code=403)(scope, receive, send)
            return
        await self.app(scope, receive, send)


# --- bounded bodies -----------------------------------------------------------------------------------------


class BodyTooLarge(Exception):
    """A request body went past its limit while it was read."""


async def _too_large(send: Send, limit: int) -> None:
    body = f'{{"detail":"request body larger than {limit} bytes"}}'.encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 413, "headers": [*headers, (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """ASGI middleware: a body declared or streamed past `limit` bytes is answered 413 before more is read.

    Declared sizes are refused without reading a byte; chunked bodies are counted as they arrive, so memory
    never holds more than the limit plus one chunk, whatever a client sends.
    """

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and (not value.isdigit() or int(value) > self.limit):
                await _too_large(send, self.limit)
                return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        # except*: should an `http` middleware (or a task group) come between, it hands it on in an ExceptionGroup.
        try:
            await self.app(scope, counted, watched)
        except* BodyTooLarge:
            if not started:
                await _too_large(send, self.limit)


async def read_bounded(request: Request, limit: int) -> bytes | None:
    """A request's body, or None as soon as it passes `limit` bytes (declared or streamed): never read whole."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        return None
    chunks = bytearray()
    async for chunk in request.stream():
        chunks += chunk
        if len(chunks) > limit:
            return None
    return bytes(chunks)
