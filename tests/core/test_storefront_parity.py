"""Live capture and HAR import read storefront traffic alike: one table of messages, judged through both paths.

The live path is the addon's hooks on real mitmproxy flows, read from what it hands to the store; the HAR path is
`core.har.observations` on the same messages written as HAR entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest
from mitmproxy.test import taddons, tflow, tutils

from clickwatch.addon.capture import Clickwatch
from clickwatch.core.consent import has_consent_cookie
from clickwatch.core.har import observations
from clickwatch.core.matching import Patterns
from clickwatch.core.model import StorefrontSeen
from clickwatch.store import wire

HTML = ("Content-Type", "text/html; charset=utf-8")
JSON = ("Content-Type", "application/json")
NAVIGATE = (("Accept", "text/html,application/xhtml+xml,*/*;q=0.8"), ("Sec-Fetch-Dest", "document"))
GIVEN = "%5B%7B%22templateCode%22%3A%22PROFILE%22%2C%22consentState%22%3A%22GIVEN%22%7D%5D"
UA = ("User-Agent", "Mozilla/5.0 parity")


@dataclass(frozen=True)
class Message:
    """One storefront exchange as a browser saw it; status None: no answer came (an error)."""

    name: str
    url: str
    request: tuple[tuple[str, str], ...]
    status: int | None = 200
    response: tuple[tuple[str, str], ...] = (HTML,)
    method: str = "GET"
    # What the rule says of it (a few fields, so the table also pins the rule, not only the agreement).
    expect: dict[str, Any] = field(default_factory=dict)


SHOP = "https://shop.example"
OCC = f"{SHOP}/occ/v2/electronics"

MESSAGES = [
    Message("navigation", f"{SHOP}/p/1", (UA, *NAVIGATE), expect={"page_load": True, "logged_in": False}),
    Message("iframe", f"{SHOP}/frame", (UA, ("Sec-Fetch-Dest", "iframe")), expect={"page_load": True}),
    Message(
        "Sec-Fetch-Dest in capitals", f"{SHOP}/p/2", (UA, ("Sec-Fetch-Dest", "Document")), expect={"page_load": True}
    ),
    Message(
        "Sec-Fetch-Dest wins over Accept",
        f"{SHOP}/fragment",
        (UA, ("Accept", "text/html"), ("Sec-Fetch-Dest", "empty")),
        expect={"telling": False, "page_load": False},
    ),
    Message("no Sec-Fetch, Accept text/html", f"{SHOP}/old", (UA, ("Accept", "TEXT/HTML")), expect={"page_load": True}),
    Message(
        "no Sec-Fetch, Accept */*",
        f"{SHOP}/any",
        (UA, ("Accept", "*/*")),
        expect={"telling": False, "page_load": False},
    ),
    Message(
        "XHR for HTML",
        f"{SHOP}/cms/component",
        (UA, ("Accept", "text/html"), ("Sec-Fetch-Dest", "empty"), ("X-Requested-With", "XMLHttpRequest")),
        expect={"telling": False, "page_load": False},
    ),
    Message(
        "fetch for JSON",
        f"{OCC}/products/1",
        (UA, ("Accept", "application/json"), ("Sec-Fetch-Dest", "empty")),
        response=(JSON,),
        expect={"telling": False},
    ),
    Message(
        "redirect with an HTML body",
        f"{SHOP}/",
        (UA, *NAVIGATE),
        status=302,
        response=(("Location", "/en/"), HTML),
        expect={"page_load": True},
    ),
    Message(
        "redirect without a body",
        f"{SHOP}/go",
        (UA, *NAVIGATE),
        status=301,
        response=(("Location", "/en/"),),
        expect={"telling": False, "page_load": False},
    ),
    Message(
        "form POST", f"{SHOP}/login", (UA, *NAVIGATE), method="POST", expect={"telling": False, "page_load": False}
    ),
    Message("HEAD", f"{SHOP}/p/3", (UA, *NAVIGATE), method="HEAD", expect={"telling": False, "page_load": False}),
    Message(
        "document that is not HTML",
        f"{SHOP}/terms.pdf",
        (UA, *NAVIGATE),
        response=(("Content-Type", "application/pdf"),),
        expect={"telling": False},
    ),
    Message(
        "content type in capitals",
        f"{SHOP}/p/4",
        (UA, *NAVIGATE),
        response=(("Content-Type", "TEXT/HTML;Charset=UTF-8"),),
        expect={"page_load": True},
    ),
    Message(
        "two content types: the first counts",
        f"{SHOP}/p/5",
        (UA, *NAVIGATE),
        response=(("Content-Type", "image/png"), HTML),
        expect={"telling": False},
    ),
    Message("navigation without an answer", f"{SHOP}/p/6", (UA, *NAVIGATE), status=None, expect={"telling": False}),
    Message(
        "image",
        f"{SHOP}/medias/1.png",
        (UA, ("Accept", "image/*"), ("Sec-Fetch-Dest", "image"), ("Cookie", "JSESSIONID=1")),
        response=(("Content-Type", "image/png"),),
        expect={"telling": False},
    ),
    Message(
        "asset carrying the consent cookie",
        f"{SHOP}/app.js",
        (UA, ("Sec-Fetch-Dest", "script"), ("Cookie", f"JSESSIONID=1; anonymous-consents={GIVEN}")),
        response=(("Content-Type", "application/javascript"),),
        expect={"telling": True, "page_load": False},
    ),
    Message(
        "consent given cookie of a tenant",
        f"{SHOP}/p/7",
        (UA, *NAVIGATE, ("Cookie", "acme-profile.consent.given=true")),
        expect={"page_load": True},
    ),
    Message(
        "the pause cookie alone says nothing on an asset",
        f"{SHOP}/app.css",
        (UA, ("Cookie", "profile.tracking.pause=true")),
        response=(("Content-Type", "text/css"),),
        expect={"telling": False},
    ),
    Message(
        "cookie split over two fields (HTTP/2)",
        f"{SHOP}/p/8",
        (UA, *NAVIGATE, ("Cookie", "JSESSIONID=1"), ("Cookie", f"anonymous-consents={GIVEN}")),
        expect={"cookie": f"JSESSIONID=1; anonymous-consents={GIVEN}"},
    ),
    Message(
        "consent cookies set, others not kept",
        f"{SHOP}/consent",
        (UA, ("Accept", "application/json")),
        response=(
            JSON,
            ("Set-Cookie", "JSESSIONID=2; Path=/"),
            ("Set-Cookie", f"anonymous-consents={GIVEN}; Path=/"),
            ("Set-Cookie", "profile.tracking.pause=; Max-Age=0"),
        ),
        expect={"set_cookies": (f"anonymous-consents={GIVEN}; Path=/", "profile.tracking.pause=; Max-Age=0")},
    ),
    Message(
        "Commerce API call with consent headers",
        f"{OCC}/products/1?fields=FULL",
        (UA, ("Accept", "application/json"), ("X-Anonymous-Consents", GIVEN), ("X-Consent-Reference", "cr-1")),
        response=(JSON,),
        expect={"anonymous_consents_header": GIVEN, "consent_reference": True, "logged_in": None},
    ),
    Message(
        "a blank consent reference is none",
        f"{OCC}/products/2",
        (UA, ("X-Consent-Reference", "  ")),
        response=(JSON,),
        expect={"telling": False},
    ),
    Message(
        "consent header repeated",
        f"{OCC}/cms/pages",
        (UA, ("X-Anonymous-Consents", "%5B%5D"), ("x-anonymous-consents", GIVEN)),
        response=(JSON,),
        expect={"anonymous_consents_header": f"%5B%5D, {GIVEN}"},
    ),
    Message(
        "signed-in API call",
        f"{OCC}/users/current/carts",
        (UA, ("Authorization", "Bearer t0k3n")),
        response=(JSON,),
        expect={"logged_in": True},
    ),
    Message(
        "signed-in user details, with a query",
        f"{OCC}/users/current?fields=FULL",
        (UA, ("Authorization", "bearer t0k3n")),
        response=(JSON,),
        expect={"logged_in": True},
    ),
    Message(
        "/users/current without a token",
        f"{OCC}/users/current/carts",
        (UA,),
        response=(JSON,),
        expect={"logged_in": False},
    ),
    Message(
        "anonymous API call", f"{OCC}/users/anonymous/carts/g1", (UA,), response=(JSON,), expect={"logged_in": False}
    ),
    Message(
        "accelerator page of a signed-in shopper",
        f"{SHOP}/my-account",
        (UA, *NAVIGATE, ("Cookie", "acceleratorSecureGUID=abc; JSESSIONID=1")),
        expect={"page_load": True, "logged_in": True},
    ),
    Message(
        "odd bytes in a cookie and a UTF-8 user agent",
        f"{SHOP}/p/9",
        (("User-Agent", "Mozilla/5.0 (Jürgen)"), *NAVIGATE, ("Cookie", f"name=caf\udce9; anonymous-consents={GIVEN}")),
        expect={"user_agent": "Mozilla/5.0 (Jürgen)", "cookie": f"name=caf\udce9; anonymous-consents={GIVEN}"},
    ),
    Message("no user agent", f"{SHOP}/p/10", NAVIGATE, expect={"user_agent": "", "page_load": True}),
]

SIGNALS = ("user_agent", "cookie", "anonymous_consents_header", "set_cookies", "page_load", "consent_reference")


def signals(seen: StorefrontSeen) -> dict[str, Any]:
    """What a storefront observation says, leaving out who and when."""
    return {
        **{name: getattr(seen, name) for name in SIGNALS},
        "logged_in": seen.logged_in,
        "answered": seen.response_at is not None,
    }


def telling(said: dict[str, Any]) -> bool:
    return bool(
        said["page_load"]
        or said["set_cookies"]
        or said["anonymous_consents_header"] is not None
        or said["consent_reference"]
        or said["logged_in"] is not None
        or has_consent_cookie(said["cookie"])
    )


class RecordingLink:
    """The store link for this test: keeps what the addon hands on; no store behind it."""

    mode = "recording"

    def __init__(self, path: str, **options: Any) -> None:
        self.path = path
        self.sent: list[wire.Observed] = []

    def send(self, message: wire.Observed) -> bool:
        self.sent.append(message)
        return True

    def control(self, message: wire.Control) -> None:
        pass

    def close(self, timeout: float | None = None) -> bool:
        return True


def raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def live(message: Message, db: str) -> list[dict[str, Any]]:
    """What the addon hands to the store for this message (a fresh addon: nothing folded, nothing remembered)."""
    parts = urlsplit(message.url)
    req = tutils.treq(
        method=message.method.encode(),
        scheme=parts.scheme.encode(),
        host=parts.hostname,
        port=443,
        path=raw(parts.path + (f"?{parts.query}" if parts.query else "")),
    )
    req.headers.fields = tuple((raw(k), raw(v)) for k, v in message.request)
    flow = tflow.tflow(req=req)
    links: list[RecordingLink] = []

    def open_link(path: str, **options: Any) -> RecordingLink:
        links.append(RecordingLink(path))
        return links[-1]

    addon = Clickwatch(open_link=open_link)
    with taddons.context(addon) as tctx:
        tctx.configure(addon, clickwatch_db=db)
        if message.status is None:
            addon.requestheaders(flow)
            addon.request(flow)
            flow.error = tflow.terr("Connection reset by peer")
            addon.error(flow)
        else:
            resp = tutils.tresp(status_code=message.status, content=b"<html><body>page</body></html>")
            resp.headers.fields = tuple((raw(k), raw(v)) for k, v in message.response)
            flow.response = resp
            # The hooks one by one, as tctx.cycle would call them: a session's sync Playwright keeps an event
            # loop running in this thread once a browser test has run, so this test must not need one.
            addon.requestheaders(flow)
            addon.request(flow)
            addon.response(flow)
        addon.done()
    [link] = links
    return [signals(wire.observation(m)) for m in link.sent if isinstance(m, wire.Storefront)]


def har(message: Message) -> list[dict[str, Any]]:
    """What HAR import reads from the same message written as a HAR entry."""
    entry = {
        "startedDateTime": "2026-11-27T10:00:00.000Z",
        "time": 20,
        "request": {
            "method": message.method,
            "url": message.url,
            "headers": [{"name": k, "value": v} for k, v in message.request],
        },
        "response": {
            "status": message.status or 0,
            "headers": [{"name": k, "value": v} for k, v in message.response] if message.status else [],
            "content": {"mimeType": "text/html", "text": "<html><body>page</body></html>"},
        },
    }
    seen = observations({"log": {"entries": [entry]}}, "har", Patterns.compile())
    assert all(isinstance(s, StorefrontSeen) for s in seen)
    return [signals(s) for s in seen]  # type: ignore[arg-type]


@pytest.mark.parametrize("message", MESSAGES, ids=[m.name for m in MESSAGES])
def test_live_capture_and_har_import_read_a_message_alike(message: Message, tmp_path) -> None:
    from_live = live(message, str(tmp_path / "cw.db"))
    [from_har] = har(message)
    # HAR import keeps every storefront entry; the proxy hands on only those that say something.
    assert from_live == ([from_har] if telling(from_har) else [])
    said = from_har
    expected = {"telling": telling(said), **{k: v for k, v in said.items() if k in message.expect}}
    assert expected == {"telling": message.expect.get("telling", True), **message.expect}
