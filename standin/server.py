"""The stand-in: a storefront and an ISS tenant with its Profile Tag, served on loopback over HTTP and HTTPS.

One process, four listeners. The storefront answers on http://localhost:<port> and https://localhost:<port>,
the tenant (tag script, tag configuration, consent references, clickstream events, CORS) on
http://127.0.0.1:<port> and https://127.0.0.1:<port>. Two host names make two origins, as in production, so
a real browser sends real CORS preflights before the tag's POSTs.

The storefront behaves like the SAP Commerce accelerator (a page per request; consent in the
`anonymous-consents` cookie, mirrored by the server in `<site>-profile.consent.given`) or, with
`spartacus=True`, like Spartacus (a single-page app; consent in browser storage, sent to the Commerce API
as `X-Anonymous-Consents`, the tag's consent reference as `X-Consent-Reference`; a shopper can sign in, and
then the account's consent decides). With `carousel=True` its home page shows a merchandising carousel fed by
the tenant's strategy service; with `csp="nonce"` or `csp="paths"` its pages send a Content-Security-Policy.
With `service_worker=True` (Spartacus style only) the shell registers a service worker modelled on Angular's
`ngsw-worker.js`, with its `ngsw.json` manifest: after the first page, navigations are answered from the worker's
cache (`worker_hash_mismatch=True` gives the manifest a wrong hash for index.html, which degrades the worker;
`server_rendered=True` makes navigations differ from index.html, as server-side rendering does).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import secrets
import shutil
import socket
import ssl
import struct
import tempfile
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from clickwatch.standin import catalog, certs
from clickwatch.standin.faults import HANG_SECONDS, FaultError, FaultName, Faults

log = logging.getLogger("clickwatch.standin")

BIND = "127.0.0.1"
STOREFRONT_HOST = "localhost"
TENANT_HOST = "127.0.0.1"
TENANT = "standin"
SITE = "electronics"
CONFIG_ID = f"{TENANT}-{SITE}-default"
CONSENT_TEMPLATE = "PROFILE"
TAG_PATH = "/js/profile-tag.js"
CLICKSTREAM_PATH = "/edge/clickstreamEvents"
CONSENT_PATH = f"/consent/{TENANT}/consentReferences"
OCC_PREFIX = f"/occ/v2/{SITE}"
TOKEN_PATH = "/authorizationserver/oauth/token"
STRATEGY_ID = "00000000-0000-0000-0000-000000000000"
STRATEGY_PATH = re.compile(rf"/strategy/{TENANT}/strategies/([^/]+)/products")
CAROUSEL = {
    "carouselId": "HomepageStandinMerchandisingCarousel",
    "carouselName": "Homepage Stand-in Merchandising Carousel",
    "strategyId": STRATEGY_ID,
}
MIX_CARD_ID = "standin-mixcard"
ACCOUNT = "shopper@standin.example"
TOKEN_SECONDS = 43199
CSP_MODES = ("nonce", "paths")
# What clickwatch must be told to capture the stand-in's tag loads (the default expects SAP's tag host).
TAG_PATTERN = r"^127\.0\.0\.1/(?:js/profile-tag\.js|config/[^/]+)$"
ALLOWED_HEADERS = ("content-type", "hybris-schema", "consent-reference")
CART_COOKIE = "standin-cart"
GIVEN_COOKIE = f"{SITE}-profile.consent.given"
ANONYMOUS_CONSENTS = "anonymous-consents"
NO_DECISION = quote(json.dumps([{"templateCode": CONSENT_TEMPLATE, "templateVersion": 1, "consentState": None}]))
STATIC = Path(__file__).with_name("static")
WORKER_PATH = "/ngsw-worker.js"
MANIFEST_PATH = "/ngsw.json"
INDEX_PATH = "/index.html"
# The files the worker prefetches and checks against their hashes (Angular's default "app" asset group).
WORKER_ASSETS = (INDEX_PATH, "/static/storefront.css", "/static/storefront.js")
# Angular's default navigationUrls ('/**', '!/**/*.*', '!/**/*__*', '!/**/*__*/**') as ngsw.json spells them.
NAVIGATION_URLS = (
    {"positive": True, "regex": r"^\/.*$"},
    {"positive": False, "regex": r"^\/(?:.+\/)?[^/]*\.[^/]*$"},
    {"positive": False, "regex": r"^\/(?:.+\/)?[^/]*__[^/]*$"},
    {"positive": False, "regex": r"^\/(?:.+\/)?[^/]*__[^/]*\/.*$"},
)
MAX_BODY = 1 << 20
MAX_RECEIVED = 2000


@dataclass(frozen=True, slots=True)
class Received:
    """A call as the tenant (tracking, strategy) or the storefront (Commerce API, OAuth) got it."""

    at: float
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    query: str = ""

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(
        self, standin: StandIn, handler: type[BaseHTTPRequestHandler], tls: ssl.SSLContext | None, port: int = 0
    ) -> None:
        super().__init__((BIND, port), handler)
        self.standin = standin
        self.tls = tls
        self.scheme = "https" if tls else "http"

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A browser that goes away mid-answer is ordinary here; the default would print a traceback.
        log.debug("stand-in: error serving %s", client_address, exc_info=True)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake happens here, in the connection's own thread, so a slow client cannot stall accept().
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(10)
        try:
            secure = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.debug("stand-in: TLS handshake with %s failed: %s", client_address, exc)
            return
        try:
            super().finish_request(secure, client_address)
        finally:
            secure.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30  # idle keep-alive connections end on their own
    server: _Server

    @property
    def standin(self) -> StandIn:
        return self.server.standin

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("stand-in %s: %s", self.server.scheme, format % args)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(min(length, MAX_BODY))

    def _send(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "application/json",
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        self.send_response(status)
        if body or status not in (204, 304):
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in headers or []:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, value: Any, headers: list[tuple[str, str]] | None = None) -> None:
        self._send(status, json.dumps(value).encode(), "application/json", headers)

    def _cookies(self) -> dict[str, str]:
        jar = SimpleCookie()
        try:
            jar.load(self.headers.get("Cookie", ""))
        except Exception:  # a malformed cookie header says nothing usable
            return {}
        return {name: morsel.value for name, morsel in jar.items()}


# --- storefront ----------------------------------------------------------------------------------------------


def page_data(path: str, query: dict[str, list[str]], cart: dict[str, Any]) -> dict[str, Any] | None:
    """What a storefront page shows (and what its data layer says), for both storefront styles; None: no page."""
    common = {"categories": [{"code": c.code, "name": c.name} for c in catalog.CATEGORIES], "cart": cart}
    if path == "/":
        return {"type": "home", "products": [p.as_json() for p in catalog.PRODUCTS[:3]], **common}
    if match := re.fullmatch(r"/c/([^/]+)", path):
        category = catalog.category(match[1])
        if category is None:
            return None
        listed = [p.as_json() for p in catalog.in_category(category.code)]
        shown = {"code": category.code, "name": category.name}
        return {"type": "category", "category": shown, "products": listed, **common}
    if match := re.fullmatch(r"/p/([^/]+)", path):
        product = catalog.product(match[1])
        return None if product is None else {"type": "product", "product": product.as_json(), **common}
    if path == "/search":
        text = (query.get("text") or [""])[0].strip()[:100]
        return {"type": "search", "text": text, "products": [p.as_json() for p in catalog.search(text)], **common}
    if path == "/cart":
        return {"type": "cart", **common}
    return None


def _occ_page(path: str, query: dict[str, list[str]], cart: dict[str, Any]) -> dict[str, Any] | None:
    """The Commerce API (OCC) calls of the Spartacus-style storefront, answered with the same page data."""
    rest = path.removeprefix(OCC_PREFIX)
    if rest == "/cms/pages":
        return page_data("/", {}, cart)
    if rest == "/products/search":
        term = (query.get("query") or [""])[0]
        if term.startswith(":relevance:allCategories:"):
            return page_data(f"/c/{term.rsplit(':', 1)[1]}", {}, cart)
        return page_data("/search", {"text": [term]}, cart)
    if match := re.fullmatch(r"/products/([^/]+)", rest):
        return page_data(f"/p/{match[1]}", {}, cart)
    if re.fullmatch(r"/users/(?:anonymous|current)/carts/[^/]+", rest):
        return page_data("/cart", {}, cart)
    return None


def _occ_date(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(at))


def consent_templates(state: str | None, changed_at: float | None = None) -> list[dict[str, Any]]:
    """The consent templates as OCC lists them: PROFILE, with the account's consent (a signed-in shopper's, given or
    withdrawn at `changed_at`); `state` None: no consent on record (an anonymous user's list, or an account that
    never gave it)."""
    template: dict[str, Any] = {
        "id": CONSENT_TEMPLATE,
        "name": "Personalised shopping",
        "description": "Profile tracking for personalisation (Intelligent Selling Services).",
        "version": 1,
    }
    if state is not None:
        at = changed_at if changed_at is not None else time.time()
        current = {"code": f"{CONSENT_TEMPLATE}-standin", "consentGivenDate": _occ_date(at)}
        if state == "WITHDRAWN":
            current["consentWithdrawnDate"] = _occ_date(at)
        template["currentConsent"] = current
    return [template]


def content_security_policy(mode: str | None, storefront: str, tenant: str, nonce: str) -> str | None:
    """The storefront's Content-Security-Policy for one page (None: no policy)."""
    if mode == "nonce":
        return f"script-src 'nonce-{nonce}' 'strict-dynamic'; object-src 'none'; base-uri 'none'"
    if mode == "paths":
        # A path-restricted source list: the storefront's own /static/ scripts and the tenant, nothing else.
        return f"script-src {storefront}/static/ {tenant}; connect-src 'self' {tenant}"
    return None


class StorefrontHandler(_Handler):
    """The shop: pages, static files, adding to the cart, and (Spartacus style) the Commerce API and sign-in."""

    def _api(self, body: bytes = b"") -> bool:
        """Whether this is a Spartacus-style API call (OCC or OAuth); those are recorded."""
        url = urlsplit(self.path)
        if not self.standin.spartacus or not (url.path.startswith(OCC_PREFIX + "/") or url.path == TOKEN_PATH):
            return False
        headers = dict(self.headers.items())
        self.standin.record_storefront(Received(time.time(), self.command, url.path, headers, body, url.query))
        return True

    def _bearer(self) -> tuple[str | None, bool]:
        """The call's bearer token, and whether the call may go on (if not, a 401 has been sent).

        A token the stand-in did not issue is refused on any call, as OCC does; `/users/current/...` needs one.
        """
        authorization = self.headers.get("Authorization", "")
        token = authorization[7:].strip() if authorization[:7].lower() == "bearer " else None
        if authorization and (token is None or not self.standin.signed_in(token)):
            self._json(401, {"errors": [{"type": "InvalidTokenError", "message": "Invalid access token"}]})
            return None, False
        if token is None and "/users/current/" in urlsplit(self.path).path:
            self._json(401, {"errors": [{"type": "UnauthorizedError", "message": "Full authentication required"}]})
            return None, False
        return token, True

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path.startswith("/static/"):
            self._static(url.path.removeprefix("/static/"))
            return
        if self.standin.service_worker and url.path in (WORKER_PATH, MANIFEST_PATH, INDEX_PATH):
            self._worker_file(url.path)
            return
        if self._api():
            token, allowed = self._bearer()
            if not allowed:
                return
            if token is not None and url.path == f"{OCC_PREFIX}/users/current/consenttemplates":
                state, changed_at = self.standin.account_record(token)
                self._json(200, {"consentTemplates": consent_templates(state, changed_at)})
                return
            if url.path == f"{OCC_PREFIX}/users/anonymous/consenttemplates":
                # Spartacus asks for these at start, with the bearer token too when a shopper is signed in.
                self._json(200, {"consentTemplates": consent_templates(None)})
                return
            cart_id = url.path.rsplit("/", 1)[1] if "/carts/" in url.path else None
            data = _occ_page(url.path, query, self.standin.carts.get(cart_id))
            if data is None:
                self._json(404, {"errors": [{"type": "UnknownIdentifierError", "message": url.path}]})
            else:
                self._json(200, data)
            return
        data = page_data(url.path, query, self.standin.carts.get(self._cookies().get(CART_COOKIE)))
        self._page(200 if data is not None else 404, data, navigation=True)

    do_HEAD = do_GET

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        body = self._body()
        if not self.standin.spartacus and url.path == "/cart/add":
            form = parse_qs(body.decode("utf-8", "replace"))
            self._add_to_cart(
                self._cookies().get(CART_COOKIE), (form.get("productCodePost") or [""])[0], form.get("qty")
            )
            return
        if not self._api(body):
            self._json(404, {"errors": [{"type": "NotFound", "message": url.path}]})
            return
        if url.path == TOKEN_PATH:
            self._token(body)
            return
        token, allowed = self._bearer()
        if not allowed:
            return
        match = re.fullmatch(re.escape(OCC_PREFIX) + r"/users/(?:anonymous|current)/carts/([^/]+)/entries", url.path)
        if match:
            try:
                entry = json.loads(body)
                sku, qty = str(entry["product"]["code"]), [str(entry.get("quantity", 1))]
            except (ValueError, KeyError, TypeError):
                self._json(400, {"errors": [{"type": "ValidationError", "message": "product.code is required"}]})
                return
            self._add_to_cart(match[1], sku, qty)
            return
        if token is not None and url.path == f"{OCC_PREFIX}/users/current/consents":
            # A signed-in shopper's consent lives in the account: giving it is a request (unlike anonymous ones).
            params = {**parse_qs(url.query), **parse_qs(body.decode("utf-8", "replace"))}
            if (params.get("consentTemplateId") or [""])[0] != CONSENT_TEMPLATE:
                self._json(400, {"errors": [{"type": "ValidationError", "message": "consentTemplateId: PROFILE"}]})
                return
            self.standin.set_account_consent(token, "GIVEN")
            self._json(201, consent_templates(*self.standin.account_record(token))[0])
            return
        self._json(404, {"errors": [{"type": "NotFound", "message": url.path}]})

    def do_DELETE(self) -> None:
        url = urlsplit(self.path)
        if not self._api():
            self._json(404, {"errors": [{"type": "NotFound", "message": url.path}]})
            return
        token, allowed = self._bearer()
        if not allowed:
            return
        if token is not None and re.fullmatch(re.escape(OCC_PREFIX) + r"/users/current/consents/[^/]+", url.path):
            self.standin.set_account_consent(token, "WITHDRAWN")
            self._send(200)
            return
        self._json(404, {"errors": [{"type": "NotFound", "message": url.path}]})

    def _token(self, body: bytes) -> None:
        """The OAuth password grant Spartacus signs a shopper in with; any user name and password will do."""
        form = parse_qs(body.decode("utf-8", "replace"))
        if (form.get("grant_type") or [""])[0] != "password" or not (form.get("username") or [""])[0]:
            self._json(400, {"error": "invalid_request", "error_description": "grant_type=password and a username"})
            return
        answer = {"access_token": self.standin.sign_in(), "token_type": "bearer", "expires_in": TOKEN_SECONDS}
        self._json(200, {**answer, "scope": "basic openid"})

    def _add_to_cart(self, cart_id: str | None, sku: str, qty: list[str] | None) -> None:
        product = catalog.product(sku)
        quantity = int(qty[0]) if qty and qty[0].isdigit() and 0 < int(qty[0]) < 100 else 1
        if product is None:
            self._json(400, {"errors": [{"type": "UnknownIdentifierError", "message": f"no product {sku!r}"}]})
            return
        cart_id, cart = self.standin.carts.add(cart_id, product, quantity)
        headers = [] if self.standin.spartacus else [("Set-Cookie", self._cookie(CART_COOKIE, cart_id))]
        self._json(200, {"cart": cart, "entry": {**product.as_json(), "quantity": quantity}}, headers)

    def _worker_file(self, path: str) -> None:
        """The service worker's script, its manifest, or the app shell it caches as index.html."""
        if path == WORKER_PATH:
            self._send(200, self.standin.static["ngsw-worker.js"], "text/javascript; charset=utf-8")
        elif path == INDEX_PATH:
            self._page(200, None)
        else:
            self._json(200, self._manifest())

    def _manifest(self) -> dict[str, Any]:
        """An ngsw.json as Angular's CLI writes it: the asset group, and the SHA-1 of every file the worker checks."""
        shell, _ = self._shell(None)
        files = {path: self.standin.static[path.removeprefix("/static/")] for path in WORKER_ASSETS[1:]}
        files[INDEX_PATH] = shell
        hashes = {path: hashlib.sha1(body).hexdigest() for path, body in files.items()}
        if self.standin.worker_hash_mismatch:
            hashes[INDEX_PATH] = hashlib.sha1(shell + b"<!-- an older build -->").hexdigest()
        group = {
            "name": "app",
            "installMode": "prefetch",
            "updateMode": "prefetch",
            "cacheQueryOptions": {"ignoreVary": True},
            "urls": list(WORKER_ASSETS),
            "patterns": [],
        }
        return {
            "configVersion": 1,
            "timestamp": self.standin.build_timestamp,
            "index": INDEX_PATH,
            "assetGroups": [group],
            "dataGroups": [],
            "hashTable": hashes,
            "navigationUrls": list(NAVIGATION_URLS),
            "navigationRequestStrategy": "performance",
        }

    def _page(self, status: int, data: dict[str, Any] | None, navigation: bool = False) -> None:
        html, policy = self._shell(data)
        if navigation and self.standin.server_rendered:
            html += SERVER_RENDERED
        headers = self._consent_cookies()
        if policy:
            headers.append(("Content-Security-Policy", policy))
        self._send(status, html, "text/html; charset=utf-8", headers)

    def _shell(self, data: dict[str, Any] | None) -> tuple[bytes, str | None]:
        """A page's HTML and its Content-Security-Policy (None: no policy)."""
        tenant = self.standin.tenant_origin(self.server.scheme)
        carousel = None
        if self.standin.carousel:
            strategy = f"{tenant}/strategy/{TENANT}/strategies/{STRATEGY_ID}/products?site={SITE}"
            carousel = {**CAROUSEL, "strategyUrl": strategy}
        settings = {
            "mode": "spartacus" if self.standin.spartacus else "accelerator",
            "siteId": SITE,
            "tenant": TENANT,
            "consentTemplate": CONSENT_TEMPLATE,
            "tagUrl": tenant + TAG_PATH,
            "configUrl": f"{tenant}/config/{CONFIG_ID}",
            "occBase": OCC_PREFIX,
            "tokenUrl": TOKEN_PATH,
            "account": ACCOUNT,
            "carousel": carousel,
            "serviceWorker": WORKER_PATH if self.standin.service_worker else None,
            **self.standin.faults.storefront_behaviour(),
            # The accelerator renders each page on the server; Spartacus asks the Commerce API from the browser.
            "page": None if self.standin.spartacus else (data or {"type": "notfound"}),
        }
        embedded = json.dumps(settings).replace("<", "\\u003c")
        nonce = base64.b64encode(secrets.token_bytes(18)).decode()  # a fresh one for every answer
        policy = content_security_policy(self.standin.csp, self._origin(), tenant, nonce)
        carried = f' nonce="{nonce}"' if self.standin.csp == "nonce" else ""
        html = SHELL.replace("{{settings}}", embedded).replace("{{nonce}}", carried)
        return html.encode(), policy

    def _origin(self) -> str:
        """The storefront origin the browser asked (under either loopback name)."""
        origin = f"{self.server.scheme}://{self.headers.get('Host', '')}"
        if origin in self.standin.storefront_origins():
            return origin
        return self.standin.storefront_url(self.server.scheme).rstrip("/")

    def _consent_cookies(self) -> list[tuple[str, str]]:
        """Set-Cookie headers as the accelerator's consent filters write them (none in Spartacus style)."""
        if self.standin.spartacus:
            return []
        cookies = self._cookies()
        headers = []
        raw = cookies.get(ANONYMOUS_CONSENTS)
        if raw is None:
            raw = NO_DECISION
            headers.append(("Set-Cookie", self._cookie(ANONYMOUS_CONSENTS, NO_DECISION)))
        given = "true" if _consent_state(raw) == "GIVEN" else "false"
        if cookies.get(GIVEN_COOKIE) != given:
            headers.append(("Set-Cookie", self._cookie(GIVEN_COOKIE, given)))
        return headers

    def _cookie(self, name: str, value: str) -> str:
        secure = "; Secure" if self.server.scheme == "https" else ""
        return f"{name}={value}; Path=/; SameSite=Lax{secure}"

    def _static(self, name: str) -> None:
        content = self.standin.static.get(name)
        if content is None:
            self._send(404, b"not found", "text/plain")
            return
        kind = "text/css" if name.endswith(".css") else "text/javascript"
        self._send(200, content, f"{kind}; charset=utf-8")


def _consent_state(raw: str) -> str | None:
    """State of the PROFILE consent in an anonymous-consents cookie value."""
    try:
        consents = json.loads(unquote(raw))
    except ValueError:
        return None
    for consent in consents if isinstance(consents, list) else []:
        if isinstance(consent, dict) and consent.get("templateCode") == CONSENT_TEMPLATE:
            state = consent.get("consentState")
            return str(state) if state else None
    return None


# --- tenant --------------------------------------------------------------------------------------------------


def cors_headers(origin: str | None, allowed: set[str], faults: Faults, preflight: bool) -> list[tuple[str, str]]:
    """The tenant's CORS answer: the storefront's origin, POST, and the tag's headers (unless a fault drops one)."""
    if origin is None or origin not in allowed:
        return []
    headers = [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
    if preflight:
        names = [
            h
            for h in ALLOWED_HEADERS
            if h != "consent-reference" or not faults.get(FaultName.CORS_NO_CONSENT_REFERENCE)
        ]
        headers += [
            ("Access-Control-Allow-Methods", "GET, POST, OPTIONS"),
            ("Access-Control-Allow-Headers", ", ".join(names)),
            ("Access-Control-Max-Age", "600"),
        ]
    return headers


class TenantHandler(_Handler):
    """The tenant: tag script and configuration, consent references, clickstream events, faults."""

    def _cors(self, preflight: bool = False) -> list[tuple[str, str]]:
        return cors_headers(
            self.headers.get("Origin"), self.standin.storefront_origins(), self.standin.faults, preflight
        )

    def do_OPTIONS(self) -> None:
        headers = self._cors(preflight=True)
        self._send(204 if headers else 403, b"", headers=headers)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        path = url.path
        if STRATEGY_PATH.fullmatch(path):
            self._strategy(path, url.query)
        elif path == TAG_PATH:
            self._send(200, self.standin.static["profile-tag.js"], "text/javascript; charset=utf-8", self._cors())
        elif path.startswith("/config/"):
            origin = self.standin.tenant_origin(self.server.scheme)
            config = {
                "id": path.removeprefix("/config/"),
                "tenant": TENANT,
                "siteId": SITE,
                "consentReferenceUrl": origin + CONSENT_PATH,
                "clickstreamUrl": origin + CLICKSTREAM_PATH,
                "behaviour": self.standin.faults.tag_behaviour(),
            }
            self._json(200, config, self._cors())
        elif path == "/admin/faults":
            self._json(200, {"faults": self.standin.faults.names()})
        else:
            self._send(404, b"not found", "text/plain")

    do_HEAD = do_GET

    def _strategy(self, path: str, query: str) -> None:
        """A merchandising strategy's products (the catalog's recommended ones), with CORS for the storefront."""
        self.standin.record(Received(time.time(), self.command, path, dict(self.headers.items()), b"", query))
        products = [
            {
                "id": p.sku,
                "name": p.name,
                "price": p.price,
                "pageUrl": f"/p/{p.sku}",
                "thumbNailImage": f"/medias/{p.sku}-thumbnail.jpg",
                "mainImage": f"/medias/{p.sku}.jpg",
                "metadata": {"category": p.category.code},
            }
            for p in catalog.RECOMMENDED
        ]
        answer = {
            "resultCount": len(products),
            "products": products,
            "paged": {"from": 0, "size": len(products)},
            "metadata": {"mixcardId": MIX_CARD_ID, "site": (parse_qs(query).get("site") or [SITE])[0]},
        }
        self._json(200, answer, self._cors())

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        body = self._body()
        if path == "/admin/faults":
            self._set_faults(body)
            return
        if path not in (CONSENT_PATH, CLICKSTREAM_PATH):
            self._send(404, b"not found", "text/plain", self._cors())
            return
        self.standin.record(Received(time.time(), "POST", path, dict(self.headers.items()), body))
        if path == CONSENT_PATH:
            slow = self.standin.faults.get(FaultName.SLOW_REFERENCE)
            if slow is not None and slow.value is not None:
                self.standin.stopping.wait(slow.value)
            reference = str(uuid.uuid4())
            self._json(201, {"id": reference, "link": f"{CONSENT_PATH}/{reference}"}, self._cors())
            return
        self._clickstream()

    def _clickstream(self) -> None:
        faults = self.standin.faults
        if faults.get(FaultName.RESET):
            # SO_LINGER 0 turns close() into a TCP reset; no answer is ever written.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        if faults.get(FaultName.HANG):
            self.standin.stopping.wait(HANG_SECONDS)
            self.close_connection = True
            return
        slow = faults.get(FaultName.SLOW)
        if slow is not None and slow.value:
            self.standin.stopping.wait(slow.value)
        status = faults.get(FaultName.STATUS)
        if status is not None and status.value is not None and int(status.value) != 201:
            self._json(int(status.value), {"error": "stand-in fault", "status": int(status.value)}, self._cors())
            return
        self._send(201, b"", headers=self._cors())

    def _set_faults(self, body: bytes) -> None:
        try:
            request = json.loads(body or b"{}")
            names = request.get("faults", []) if isinstance(request, dict) else None
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise FaultError('send {"faults": ["status:503", ...]} (an empty list switches faults off)')
            self.standin.faults = Faults.parse(names)
        except (ValueError, FaultError) as exc:
            self._json(400, {"detail": str(exc)})
            return
        log.info("stand-in: faults now %s", self.standin.faults.names() or "off")
        self._json(200, {"faults": self.standin.faults.names()})


# --- the whole ---------------------------------------------------------------------------------------------


@dataclass
class StandIn:
    """The storefront and tenant, started together; `faults` may be changed while it runs."""

    spartacus: bool = False
    faults: Faults = field(default_factory=Faults)
    directory: Path | None = None
    carousel: bool = False  # the home page's merchandising carousel (read at every page load)
    csp: str | None = None  # None, "nonce" or "paths": see content_security_policy
    # Fixed HTTPS ports by role ("storefront", "tenant"); a role not named gets a free one (so do the HTTP ones).
    ports: dict[str, int] = field(default_factory=dict)
    service_worker: bool = False  # Spartacus style: a service worker like Angular's serves pages from its cache
    worker_hash_mismatch: bool = False  # the worker's manifest names a wrong hash for index.html (it degrades)
    server_rendered: bool = False  # navigations get other bytes than /index.html (as with server-side rendering)
    build_timestamp: int = field(default_factory=lambda: int(time.time() * 1000))  # the manifest's "timestamp"
    carts: catalog.Carts = field(default_factory=catalog.Carts, init=False)
    stopping: threading.Event = field(default_factory=threading.Event, init=False)
    static: dict[str, bytes] = field(default_factory=dict, init=False)
    certificates: certs.CertificateFiles | None = field(default=None, init=False)
    _received: deque[Received] = field(default_factory=lambda: deque(maxlen=MAX_RECEIVED), init=False)
    _storefront: deque[Received] = field(default_factory=lambda: deque(maxlen=MAX_RECEIVED), init=False)
    # bearer token -> its PROFILE consent ("GIVEN", "WITHDRAWN", None: never given) and when it last changed
    _accounts: dict[str, tuple[str | None, float]] = field(default_factory=dict, init=False)
    _servers: dict[tuple[str, str], _Server] = field(default_factory=dict, init=False)
    _threads: list[threading.Thread] = field(default_factory=list, init=False)
    _own_directory: bool = field(default=False, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        if self.csp not in (None, *CSP_MODES):
            raise ValueError(f"csp: None, 'nonce' or 'paths', not {self.csp!r}")
        if self.service_worker and not self.spartacus:
            raise ValueError("service_worker: the worker caches a single-page app's shell; it needs spartacus=True")

    def start(self) -> StandIn:
        """Make certificates, open the four listeners and serve in background threads."""
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="clickwatch-standin-"))
            self._own_directory = True
        self.certificates = certs.generate(self.directory)
        tls = self.certificates.server_context()
        self.static = {p.name: p.read_bytes() for p in STATIC.iterdir() if p.is_file()}
        for role, handler in (("storefront", StorefrontHandler), ("tenant", TenantHandler)):
            for scheme, context in (("http", None), ("https", tls)):
                server = _Server(self, handler, context, self.ports.get(role, 0) if scheme == "https" else 0)
                self._servers[(role, scheme)] = server
                name = f"standin-{role}-{scheme}"
                thread = threading.Thread(target=server.serve_forever, args=(0.1,), name=name, daemon=True)
                thread.start()
                self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Release hanging answers, close every listener, remove generated files."""
        self.stopping.set()
        for server in self._servers.values():
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(5)
        if self._own_directory and self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def port(self, role: str, scheme: str) -> int:
        """The port of one listener: role 'storefront' or 'tenant', scheme 'http' or 'https'."""
        return self._servers[(role, scheme)].port

    def storefront_url(self, scheme: str = "https") -> str:
        """The storefront's home page."""
        return f"{scheme}://{STOREFRONT_HOST}:{self.port('storefront', scheme)}/"

    def tenant_origin(self, scheme: str = "https") -> str:
        """Where the tag, its configuration and the tracking endpoints are."""
        return f"{scheme}://{TENANT_HOST}:{self.port('tenant', scheme)}"

    def storefront_origins(self) -> set[str]:
        """Origins the tenant's CORS allows: the storefront's, under either loopback name."""
        return {
            f"{scheme}://{host}:{self.port('storefront', scheme)}"
            for scheme in ("http", "https")
            for host in (STOREFRONT_HOST, "127.0.0.1")
        }

    @property
    def ca_cert(self) -> Path:
        """The CA that signed the stand-in's certificate (PEM)."""
        assert self.certificates is not None, "start() first"
        return self.certificates.ca_cert

    def record(self, received: Received) -> None:
        """Keep a tracking call the tenant got."""
        with self._lock:
            self._received.append(received)

    def received(self, path: str | None = None) -> list[Received]:
        """Calls the tenant got (tracking POSTs, strategy GETs), oldest first (all, or those to one path)."""
        with self._lock:
            return [r for r in self._received if path is None or r.path == path]

    def record_storefront(self, received: Received) -> None:
        """Keep a Commerce API (OCC) or OAuth call the storefront got."""
        with self._lock:
            self._storefront.append(received)

    def storefront_received(self, prefix: str = "") -> list[Received]:
        """Commerce API (OCC) and OAuth calls the Spartacus-style storefront got, oldest first (paths starting
        with `prefix`)."""
        with self._lock:
            return [r for r in self._storefront if r.path.startswith(prefix)]

    def sign_in(self) -> str:
        """A new bearer token for the stand-in's one account, whose PROFILE consent starts GIVEN (with the
        account-without-consent fault: never given)."""
        token = secrets.token_urlsafe(24)
        state = None if self.faults.get(FaultName.ACCOUNT_WITHOUT_CONSENT) else "GIVEN"
        with self._lock:
            self._accounts[token] = (state, time.time())
        return token

    def signed_in(self, token: str) -> bool:
        """Whether the stand-in issued `token`."""
        with self._lock:
            return token in self._accounts

    def account_record(self, token: str) -> tuple[str | None, float | None]:
        """The account's PROFILE consent ("GIVEN", "WITHDRAWN", None: none) and when it last changed."""
        with self._lock:
            return self._accounts.get(token, (None, None))

    def account_consent(self, token: str) -> str | None:
        """The account's PROFILE consent ("GIVEN", "WITHDRAWN") as signed in with `token`; None: none or no token."""
        return self.account_record(token)[0]

    def set_account_consent(self, token: str, state: str) -> None:
        """Give ("GIVEN") or withdraw ("WITHDRAWN") the account's PROFILE consent."""
        with self._lock:
            if token in self._accounts:
                self._accounts[token] = (state, time.time())


# What a server-side rendered navigation adds to the shell: the page a navigation gets is then not the worker's
# index.html byte for byte (Spartacus with SSR renders each route on the server).
SERVER_RENDERED = b"<!-- rendered on the server -->\n"
SHELL = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Stand-in Electronics</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/storefront.css">
<script type="application/json" id="standin-settings"{{nonce}}>{{settings}}</script>
<script src="/static/storefront.js" defer{{nonce}}></script>
</head>
<body>
<header>
  <a href="/" class="logo">Stand-in Electronics</a>
  <nav id="categories"></nav>
  <form id="search" action="/search" method="get" role="search">
    <input name="text" type="search" placeholder="Search products" aria-label="Search products">
    <button type="submit">Search</button>
  </form>
  <a href="/cart" id="cart-link">Cart (<span id="cart-count">0</span>)</a>
  <button type="button" id="sign-in" hidden>Sign in</button>
  <span id="signed-in" hidden>signed in</span>
</header>
<main id="main"><p class="muted">Loading…</p></main>
<footer>
  <span id="mode"></span> · tracking consent: <strong id="consent-state">not decided</strong>
  <button type="button" id="consent-withdraw" hidden>Withdraw consent</button>
  <button type="button" id="consent-grant" hidden>Give consent</button>
</footer>
<div id="consent-banner" role="dialog" aria-label="Tracking consent" hidden>
  <p>We would like to personalise your visit (profile consent <code>PROFILE</code>).</p>
  <button type="button" id="consent-accept">Accept</button>
  <button type="button" id="consent-decline">Decline</button>
</div>
</body>
</html>
"""
