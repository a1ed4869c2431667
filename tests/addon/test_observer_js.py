"""The data-layer observer (addon/observer.js) in the system Chromium, against docs/observer.md.

Test pages come from a small HTTP server of this module that serves the observer at /__clickwatch/observer.js,
a fake Profile Tag at /tag.js (it replaces `eventLayer.push` the way the real tag does) and records every POST.
Every observer request is checked against the wire format on arrival. The last tests run the observer in the
project's stand-in storefront, both styles, with Playwright adding the script the way the proxy will.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import Browser, Page, Playwright, Route

from clickwatch.standin import shopper
from clickwatch.standin.server import CLICKSTREAM_PATH, CONSENT_PATH, StandIn
from tests.integration.conftest import wait_until

pytestmark = pytest.mark.integration

OBSERVER = Path(__file__).resolve().parents[2] / "addon" / "observer.js"
CHROMIUM = str(shopper.CHROMIUM)
CHROMIUM_ARGS = shopper.CHROMIUM_ARGS
OBSERVE_PATH = "/__clickwatch/observe"
OBSERVER_SCRIPT = '<script src="/__clickwatch/observer.js"></script>'
TAG_SCRIPT = '<script src="/tag.js"></script>'
DELAY_MS = 250  # the observer's batch delay

# A Profile Tag as far as the data layer sees it: it takes the layer's push, replaces it with its own function
# that calls the original and then handles the new elements (like standin/static/profile-tag.js), and returns
# something of its own so a test can tell whose return value reached the caller. On ConsentChanged it sends a
# request of its own; an event named "Throw" makes its handler throw.
TAG_JS = """(function () {
  "use strict";
  var Y = (window.Y_TRACKING = window.Y_TRACKING || {});
  var layer = (Y.eventLayer = Y.eventLayer || []);
  var originalPush = layer.push;
  var handled = 0;
  var tag = (window.fakeTag = { seen: [], calls: [], consentAt: null, error: null });
  function handle(event) {
    var name = event && event.name;
    tag.seen.push(name);
    if (name === "ConsentChanged") {
      tag.consentAt = Date.now();
      var url = "/tag/consent?from=" + encodeURIComponent(location.pathname);
      fetch(url, { method: "POST", body: "granted", keepalive: true });
    }
    if (name === "Throw") throw (tag.error = new Error("tag failed"));
  }
  layer.push = function () {
    tag.calls.push(this);
    var length = originalPush.apply(this, arguments);
    while (handled < layer.length) handle(layer[handled++]);
    return "tag:" + length;
  };
  while (handled < layer.length) handle(layer[handled++]);
})();
"""


def script(code: str) -> str:
    return f"<script>{code}</script>"


def html(*head: str, body: str = "") -> str:
    return (
        '<!doctype html><html><head><meta charset="utf-8"><link rel="icon" href="data:,">'
        + "".join(head)
        + f"</head><body>{body}</body></html>"
    )


# --- the wire format ----------------------------------------------------------------------------------------


def check_body(raw: bytes) -> dict[str, Any]:
    """One POST /__clickwatch/observe body, checked against docs/observer.md."""
    assert len(raw) <= 64 * 1024
    body = json.loads(raw)
    assert set(body) == {"v", "page", "url", "sent", "events"}, body
    assert body["v"] == 1
    assert re.fullmatch(r"[A-Za-z0-9]{16}", body["page"]), body["page"]
    assert isinstance(body["url"], str) and 0 < len(body["url"]) <= 2000
    assert isinstance(body["sent"], int)
    assert 1 <= len(body["events"]) <= 100
    for event in body["events"]:
        assert isinstance(event["t"], int) and event["t"] <= body["sent"], event
        kind = event["type"]
        if kind == "push":
            assert set(event) <= {"t", "type", "name", "data", "early", "truncated"}, event
            assert isinstance(event["name"], str) and len(event["name"]) <= 100
            assert isinstance(event["data"], dict)
            assert len(json.dumps(event["data"], separators=(",", ":"), ensure_ascii=False).encode()) <= 4096
            assert event.get("early", True) is True and event.get("truncated", True) is True
        elif kind == "navigation":
            assert set(event) == {"t", "type", "how", "url"}, event
            assert event["how"] in ("pushState", "replaceState", "popstate")
            assert isinstance(event["url"], str) and len(event["url"]) <= 2000
        else:
            assert kind in ("page", "reference") and set(event) == {"t", "type"}, event
    return body


def flatten(bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every event of the bodies, each with its page id, in the order the observer recorded them."""
    ordered = sorted(bodies, key=lambda b: (b["sent"], b["events"][0]["t"]))
    return [{**event, "page": body["page"]} for body in ordered for event in body["events"]]


def pushes(events: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(e["name"], e["data"]) for e in events if e["type"] == "push"]


def push_names(events: list[dict[str, Any]]) -> list[str]:
    return [e["name"] for e in events if e["type"] == "push"]


# --- the test server ---------------------------------------------------------------------------------------


@dataclass
class Post:
    at: float
    path: str
    query: str
    body: bytes


@dataclass
class Server:
    """Serves the observer, the fake tag and registered pages; keeps every POST."""

    url: str = ""
    pages: dict[str, bytes] = field(default_factory=dict)
    posts: list[Post] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def posted(self) -> list[Post]:
        with self.lock:
            return list(self.posts)


def _handler(server: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self, status: int, body: bytes = b"", content_type: str = "text/html; charset=utf-8") -> None:
            self.send_response(status)
            if body:
                self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path == "/__clickwatch/observer.js":
                self._answer(200, OBSERVER.read_bytes(), "text/javascript; charset=utf-8")
            elif path == "/tag.js":
                self._answer(200, TAG_JS.encode(), "text/javascript; charset=utf-8")
            elif path in server.pages:
                self._answer(200, server.pages[path])
            elif path.endswith("/blank"):
                self._answer(200, html().encode())
            else:
                self._answer(404, b"not found", "text/plain")

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with server.lock:
                server.posts.append(Post(time.monotonic(), url.path, url.query, body))
            self._answer(204)

    return Handler


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    state = Server()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.1,), name="observer-test-server", daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


_tests = itertools.count(1)


@dataclass
class Site:
    """One test's corner of the server: its pages live under /t<n>/, so late requests of other tests never count."""

    server: Server
    prefix: str

    def add(self, name: str, content: str) -> str:
        path = f"{self.prefix}/{name}"
        self.server.pages[path] = content.encode()
        return self.server.url + path

    def bodies(self) -> list[dict[str, Any]]:
        found = []
        for post in self.server.posted():
            if post.path == OBSERVE_PATH:
                body = check_body(post.body)
                if urlsplit(body["url"]).path.startswith(self.prefix + "/"):
                    found.append(body)
        return found

    def events(self) -> list[dict[str, Any]]:
        return flatten(self.bodies())

    def wait(
        self, done: Callable[[list[dict[str, Any]]], bool], what: str, timeout: float = 5.0
    ) -> list[dict[str, Any]]:
        """The events, once `done` says they are all there."""

        def probe() -> list[dict[str, Any]] | None:
            events = self.events()
            return events if done(events) else None

        return wait_until(probe, timeout, what)

    def observe_posts(self) -> list[Post]:
        return [p for p in self.server.posted() if p.path == OBSERVE_PATH and f"{self.prefix}/".encode() in p.body]

    def tag_posts(self) -> list[Post]:
        return [
            p
            for p in self.server.posted()
            if p.path == "/tag/consent" and parse_qs(p.query).get("from", [""])[0].startswith(self.prefix + "/")
        ]


@pytest.fixture
def site(server: Server) -> Site:
    return Site(server, f"/t{next(_tests)}")


@pytest.fixture(scope="module")
def browser(playwright_driver: Playwright) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: the browser tests need the system Chromium (apt-get install chromium)")
    chromium = playwright_driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    try:
        yield chromium
    finally:
        chromium.close()


@dataclass
class Tab:
    page: Page
    errors: list[str]


@pytest.fixture
def tab(browser: Browser) -> Iterator[Tab]:
    """A page in a fresh profile; whatever throws uncaught in it, or logs an error, fails the test."""
    context = browser.new_context()
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    page.on("console", lambda message: errors.append(f"console: {message.text}") if message.type == "error" else None)
    try:
        yield Tab(page, errors)
    finally:
        context.close()
    assert errors == [], "the page saw errors"


def load(tab: Tab, url: str) -> Page:
    tab.page.goto(url)
    return tab.page


# --- pushes ------------------------------------------------------------------------------------------------


def test_the_pages_token_goes_with_every_report_and_leaves_the_markup(site: Site, tab: Tab) -> None:
    token = "TOKENtoken-_0123456789"
    element = f'<script src="/__clickwatch/observer.js" data-clickwatch-page="{token}"></script>'
    pushes = script("window.Y_TRACKING = {eventLayer: []}; Y_TRACKING.eventLayer.push({name: 'A'})")
    page = load(tab, site.add("index", html(element, pushes)))
    site.wait(lambda events: len(events) >= 2, "the page's reports")
    posts = site.observe_posts()
    assert posts and all(parse_qs(p.query) == {"token": [token]} for p in posts)
    # Taken off the element: page code copying the markup (a session-replay tool) does not carry it away.
    assert page.evaluate("() => document.documentElement.outerHTML.includes('data-clickwatch-page')") is False


def test_without_a_token_reports_go_without_one(site: Site, tab: Tab) -> None:
    load(tab, site.add("index", html(OBSERVER_SCRIPT)))
    site.wait(lambda events: len(events) >= 1, "the page's report")
    assert [p.query for p in site.observe_posts()] == [""]


def test_pushes_made_before_the_observer_are_recorded_as_early(site: Site, tab: Tab) -> None:
    early = script(
        "window.Y_TRACKING = {eventLayer: [{name: 'HomePageViewed', data: {}}]};"
        "Y_TRACKING.eventLayer.push({name: 'CategoryPageViewed', data: {productCategory: '576'}});"
    )
    page = load(
        tab, site.add("index", html(early, OBSERVER_SCRIPT, script("Y_TRACKING.eventLayer.push({name: 'Late'})")))
    )
    assert page.evaluate("Y_TRACKING.eventLayer.length") == 3
    events = site.wait(lambda e: len(e) >= 4, "four events")
    assert [(e["type"], e.get("name"), e.get("early", False)) for e in events] == [
        ("page", None, False),
        ("push", "HomePageViewed", True),
        ("push", "CategoryPageViewed", True),
        ("push", "Late", False),
    ]
    assert events[2]["data"] == {"productCategory": "576"}
    assert events[3]["data"] == {}  # no data: an empty object


def test_tag_loaded_before_the_observer(site: Site, tab: Tab) -> None:
    page = load(
        tab,
        site.add("index", html(script("window.Y_TRACKING = {eventLayer: [{name: 'A'}]}"), TAG_SCRIPT, OBSERVER_SCRIPT)),
    )
    assert page.evaluate("Y_TRACKING.eventLayer.push({name: 'B', data: {n: 1}}, {name: 'C'})") == "tag:3"
    assert page.evaluate("fakeTag.seen") == ["A", "B", "C"]
    events = site.wait(lambda e: len(pushes(e)) >= 3, "three pushes")
    assert [(e["name"], e.get("early", False)) for e in events if e["type"] == "push"] == [
        ("A", True),
        ("B", False),
        ("C", False),
    ]
    assert pushes(events)[1] == ("B", {"n": 1})


def test_tag_loaded_after_the_observer_sees_every_push_and_each_is_recorded_once(site: Site, tab: Tab) -> None:
    layer = script("window.Y_TRACKING = window.Y_TRACKING || {}; Y_TRACKING.eventLayer = Y_TRACKING.eventLayer || [];")
    before = script("window.beforeTag = Y_TRACKING.eventLayer.push({name: 'BeforeTag'})")
    page = load(tab, site.add("index", html(OBSERVER_SCRIPT, layer, before, TAG_SCRIPT)))
    assert page.evaluate("beforeTag") == 1  # Array.prototype.push's answer, before the tag replaced it
    assert page.evaluate("Y_TRACKING.eventLayer.push({name: 'AfterTag'})") == "tag:2"
    # A second tag (or a tag re-initialising) wraps the wrapper again: still one record per push.
    page.evaluate("""() => new Promise((resolve) => {
        const s = document.createElement("script"); s.src = "/tag.js"; s.onload = resolve; document.head.appendChild(s);
    })""")
    # Each tag returns its own answer around the other's, as without the observer.
    assert page.evaluate("Y_TRACKING.eventLayer.push({name: 'AfterSecondTag'})") == "tag:tag:3"
    assert page.evaluate("fakeTag.seen") == ["BeforeTag", "AfterTag", "AfterSecondTag"]  # the second tag's view
    events = site.wait(lambda e: "AfterSecondTag" in push_names(e), "the last push")
    page.wait_for_timeout(DELAY_MS + 100)
    assert push_names(site.events()) == ["BeforeTag", "AfterTag", "AfterSecondTag"]
    assert not any(e.get("early") for e in events)


def test_layer_created_after_the_observer_loaded_behaves_as_without_it(site: Site, tab: Tab) -> None:
    page = load(tab, site.add("index", html(OBSERVER_SCRIPT)))
    result = page.evaluate("""() => {
        const before = [typeof window.Y_TRACKING, Object.keys(window).includes("Y_TRACKING")];
        window.Y_TRACKING = window.Y_TRACKING || {};
        const Y = window.Y_TRACKING;
        Y.eventLayer = Y.eventLayer || [];
        const layer = Y.eventLayer;
        const same = window.Y_TRACKING === Y && Y.eventLayer === layer && Y_TRACKING === Y;
        const length = layer.push({name: "First", data: {a: 1}});
        Y.eventLayer = Y.eventLayer || [];  // the idiom again keeps the same layer
        const kept = Y.eventLayer === layer;
        const replacement = [{name: "Copied", data: {b: 2}}];
        Y.eventLayer = replacement;
        replacement.push({name: "Second"});
        return {before, after: Object.keys(window).includes("Y_TRACKING"), same, length, kept,
                replaced: Y.eventLayer === replacement, keysY: Object.keys(Y), keysLayer: Object.keys(layer),
                json: JSON.stringify(Y)};
    }""")
    assert result == {
        "before": ["undefined", False],
        "after": True,
        "same": True,
        "length": 1,
        "kept": True,
        "replaced": True,
        "keysY": ["eventLayer"],
        "keysLayer": ["0"],  # no visible "push" of ours
        "json": '{"eventLayer":[{"name":"Copied","data":{"b":2}},{"name":"Second"}]}',
    }
    events = site.wait(lambda e: len(pushes(e)) >= 3, "three pushes")
    assert [(e["name"], e["data"], e.get("early", False)) for e in events if e["type"] == "push"] == [
        ("First", {"a": 1}, False),
        ("Copied", {"b": 2}, True),  # already in the layer when the page set it
        ("Second", {}, False),
    ]


def test_whole_tracking_object_replaced_after_load(site: Site, tab: Tab) -> None:
    page = load(tab, site.add("index", html(OBSERVER_SCRIPT)))
    result = page.evaluate("""() => {
        window.Y_TRACKING = {eventLayer: []};
        Y_TRACKING.eventLayer.push({name: "OnFirst"});
        // The new layer starts with a copy of the old one's elements: only the new element is "early".
        const second = {q: [], eventLayer: Y_TRACKING.eventLayer.concat([{name: "AlreadyThere"}])};
        window.Y_TRACKING = second;
        second.eventLayer.push({name: "OnSecond"});
        const bare = {};  // a bare object whose layer comes later
        window.Y_TRACKING = bare;
        const keysBare = Object.keys(bare);
        bare.eventLayer = [];
        bare.eventLayer.push({name: "OnThird"});
        return {keysBare, keys: Object.keys(bare), length: bare.eventLayer.length, same: window.Y_TRACKING === bare};
    }""")
    assert result == {"keysBare": [], "keys": ["eventLayer"], "length": 1, "same": True}
    events = site.wait(lambda e: len(pushes(e)) >= 4, "four pushes")
    assert [(e["name"], e.get("early", False)) for e in events if e["type"] == "push"] == [
        ("OnFirst", False),
        ("AlreadyThere", True),
        ("OnSecond", False),
        ("OnThird", False),
    ]


# What a page can see of push: return values, `this`, exceptions, enumerable keys. Run with and without the
# observer, the answers must be the same. The one thing that differs by design: reading `layer.push` gives the
# observer's wrapper, so `layer.push === Array.prototype.push` (or === the tag's function) is false with it.
SCENARIO = """() => {
    const layer = window.Y_TRACKING.eventLayer;
    const out = {beforeTag: window.beforeTag};
    out.ret = layer.push({name: "After", data: {n: 2}});
    out.thisIsLayer = fakeTag.calls[fakeTag.calls.length - 1] === layer;
    const other = [];
    out.retOther = layer.push.call(other, {name: "Elsewhere"});
    out.thisIsOther = fakeTag.calls[fakeTag.calls.length - 1] === other;
    out.otherLength = other.length;
    try {
        layer.push({name: "Throw"});
        out.threw = "no";
    } catch (e) {
        out.threw = e === fakeTag.error ? "the tag's own error" : String(e);
    }
    out.lengthAfterThrow = layer.length;
    out.retAfterThrow = layer.push({name: "AfterThrow"});
    out.keys = Object.keys(layer);
    out.forIn = [];
    for (const key in layer) out.forIn.push(key);
    out.ownPush = Object.prototype.hasOwnProperty.call(layer, "push");
    out.seen = fakeTag.seen;
    out.keysY = Object.keys(window.Y_TRACKING);
    const fresh = (window.Y_TRACKING.eventLayer = []);
    out.freshRet = fresh.push(1, "two", null);
    out.freshKeys = Object.keys(fresh);
    fresh.push = null;
    out.nullPush = fresh.push === null;
    try {
        fresh.push({name: "Never"});
    } catch (e) {
        out.nullPushError = e.constructor.name;
    }
    out.sameLayer = window.Y_TRACKING.eventLayer === fresh;
    return out;
}"""


def test_push_keeps_return_value_this_and_the_tags_exception(site: Site, tab: Tab) -> None:
    layer = script("window.Y_TRACKING = window.Y_TRACKING || {}; Y_TRACKING.eventLayer = Y_TRACKING.eventLayer || [];")
    before = script("window.beforeTag = Y_TRACKING.eventLayer.push({name: 'BeforeTag'})")
    without = site.add("without", html(layer, before, TAG_SCRIPT))
    with_observer = site.add("with", html(OBSERVER_SCRIPT, layer, before, TAG_SCRIPT))
    expected = load(tab, without).evaluate(SCENARIO)
    assert expected["ret"] == "tag:2" and expected["threw"] == "the tag's own error"  # the scenario is live
    assert expected["retOther"] == "tag:1" and expected["thisIsOther"] is True
    assert load(tab, with_observer).evaluate(SCENARIO) == expected

    events = site.wait(lambda e: len(pushes(e)) >= 8, "eight pushes")
    assert pushes(events) == [
        ("BeforeTag", {}),
        ("After", {"n": 2}),
        ("Elsewhere", {}),  # pushed through the layer's push onto another array: still a push the page made
        ("Throw", {}),  # recorded although the tag's handler threw
        ("AfterThrow", {}),
        ("", {}),  # pushes that are not objects: recorded with an empty name
        ("", {}),
        ("", {}),
    ]


def test_uncaught_tag_error_reaches_the_page_as_before(site: Site, tab: Tab) -> None:
    push = script("setTimeout(function () { Y_TRACKING.eventLayer.push({name: 'Throw'}); }, 0)")
    for name, observer in (("without", ""), ("with", OBSERVER_SCRIPT)):
        page = load(tab, site.add(name, html(observer, TAG_SCRIPT, push)))
        page.wait_for_function("fakeTag.error !== null")
        page.wait_for_timeout(50)
        assert tab.errors == ["page error: tag failed"], name  # the same error, once, unchanged
        tab.errors.clear()
    events = site.wait(lambda e: "Throw" in push_names(e), "the throwing push")
    assert push_names(events) == ["Throw"]


# --- other events ----------------------------------------------------------------------------------------------


def test_consent_reference_event_is_recorded_without_its_value(site: Site, tab: Tab) -> None:
    page = load(tab, site.add("index", html(OBSERVER_SCRIPT)))
    page.evaluate("""() => window.dispatchEvent(new CustomEvent("profiletag_consentReferenceLoaded",
        {detail: {consentReference: "secret-reference-123"}}))""")
    events = site.wait(lambda e: any(x["type"] == "reference" for x in e), "the reference event")
    assert [e["type"] for e in events] == ["page", "reference"]
    assert not any(b"secret-reference" in p.body for p in site.server.posted())


def test_spa_navigations_are_recorded_and_history_behaves_as_before(site: Site, tab: Tab) -> None:
    page = load(tab, site.add("index", html(OBSERVER_SCRIPT)))
    result = page.evaluate(
        """async (prefix) => {
        const out = {};
        out.push = history.pushState({a: 1}, "", prefix + "/c/576?sort=price");
        out.replace = history.replaceState.call(history, {b: 2}, "", prefix + "/p/300938");
        try {
            history.pushState({}, "", "https://elsewhere.example/");
            out.crossOrigin = "allowed";
        } catch (e) {
            out.crossOrigin = e.name;
        }
        const popped = new Promise((resolve) => addEventListener("popstate", resolve, {once: true}));
        history.back();
        await popped;
        out.state = history.state;
        out.path = location.pathname;
        return out;
    }""",
        site.prefix,
    )
    prefix = site.prefix
    assert result == {
        "push": None,
        "replace": None,
        "crossOrigin": "SecurityError",
        "state": None,
        "path": f"{prefix}/index",
    }
    events = site.wait(lambda e: len(e) >= 4, "three navigations")
    assert [(e["type"], e.get("how"), e.get("url")) for e in events] == [
        ("page", None, None),
        ("navigation", "pushState", f"{prefix}/c/576?sort=price"),
        ("navigation", "replaceState", f"{prefix}/p/300938"),
        ("navigation", "popstate", f"{prefix}/index"),
    ]


# --- sending ------------------------------------------------------------------------------------------------


def test_events_close_together_go_in_one_request(site: Site, tab: Tab) -> None:
    pushes_at_load = script(
        "Y_TRACKING.eventLayer.push({name: 'A'}, {name: 'B'}); Y_TRACKING.eventLayer.push({name: 'C'});"
    )
    load(tab, site.add("index", html(OBSERVER_SCRIPT, script("window.Y_TRACKING = {eventLayer: []}"), pushes_at_load)))
    site.wait(lambda e: len(e) >= 4, "four events")
    tab.page.wait_for_timeout(DELAY_MS + 100)
    bodies = site.bodies()
    assert len(bodies) == 1
    [body] = bodies
    assert [e.get("name", e["type"]) for e in body["events"]] == ["page", "A", "B", "C"]
    waited = body["sent"] - body["events"][0]["t"]
    assert DELAY_MS - 10 <= waited < DELAY_MS + 500  # one timer, started by the first event


def test_many_events_are_split_into_requests_of_at_most_100(site: Site, tab: Tab) -> None:
    page = load(tab, site.add("index", html(OBSERVER_SCRIPT, script("window.Y_TRACKING = {eventLayer: []}"))))
    page.evaluate("for (let i = 0; i < 250; i++) Y_TRACKING.eventLayer.push({name: 'E', data: {i}})")
    events = site.wait(lambda e: len(pushes(e)) >= 250, "250 pushes")
    assert [data["i"] for _, data in pushes(events)] == list(range(250))
    assert all(len(b["events"]) <= 100 for b in site.bodies())
    assert len(site.bodies()) >= 3


def test_large_batches_stay_under_the_body_limit_and_leave_the_keepalive_quota_to_the_page(
    site: Site, tab: Tab
) -> None:
    page = load(tab, site.add("index", html(OBSERVER_SCRIPT, script("window.Y_TRACKING = {eventLayer: []}"))))
    # 40 pushes of almost 4 KiB each (non-ASCII: 3 bytes in UTF-8) make ~160 KB: more than two requests' worth,
    # sent at once by the consent push. Chromium allows 64 KiB of keepalive requests in flight per page: the
    # page's own keepalive request right after must still go.
    status = page.evaluate("""() => {
        for (let i = 0; i < 40; i++) Y_TRACKING.eventLayer.push({name: "Big", data: {i, text: "€".repeat(1300)}});
        Y_TRACKING.eventLayer.push({name: "ConsentChanged", data: {granted: true}});
        return fetch("/page/keepalive", {method: "POST", body: "x".repeat(40000), keepalive: true})
            .then((response) => response.status, (error) => String(error));
    }""")
    assert status == 204
    events = site.wait(lambda e: len(pushes(e)) >= 41, "41 pushes")
    assert [data["i"] for _, data in pushes(events)[:40]] == list(range(40))
    assert not any(e.get("truncated") for e in events)
    sizes = [len(p.body) for p in site.observe_posts()]
    assert len(sizes) >= 3 and max(sizes) <= 64 * 1024  # check_body also checks each one


# Logs, in call order, what the page's code asked of sendBeacon and fetch: loaded before the observer, so the
# observer's requests go through it too.
CALL_LOG = script("""(function () {
    var log = (window.requestLog = []);
    var beacon = navigator.sendBeacon;
    navigator.sendBeacon = function (url) {
        log.push("beacon " + new URL(url, location.href).pathname);
        return beacon.apply(this, arguments);
    };
    var nativeFetch = window.fetch;
    window.fetch = function (url) {
        log.push("fetch " + new URL(url, location.href).pathname);
        return nativeFetch.apply(this, arguments);
    };
})();""")


def test_consent_change_is_sent_at_once_before_the_tags_own_request(site: Site, tab: Tab) -> None:
    page = load(tab, site.add("index", html(CALL_LOG, OBSERVER_SCRIPT, TAG_SCRIPT)))
    site.wait(lambda e: len(e) >= 1, "the page event")  # the page event's batch has gone
    page.evaluate("""() => new Promise((resolve) => {
        Y_TRACKING.eventLayer.push({name: "Other"});
        setTimeout(() => {
            Y_TRACKING.eventLayer.push({name: "ConsentChanged", data: {granted: true}});
            resolve();
        }, 30);
    })""")
    assert page.evaluate("requestLog") == [
        "beacon /__clickwatch/observe",
        "beacon /__clickwatch/observe",
        "fetch /tag/consent",
    ]
    events = site.wait(lambda e: "ConsentChanged" in push_names(e), "the consent push")
    wait_until(site.tag_posts, 5, "the tag's own request")
    consent_body = next(b for b in site.bodies() if "ConsentChanged" in push_names(b["events"]))
    # Sent with what was queued before it, in order, at once rather than after the batch delay ...
    assert push_names(consent_body["events"]) == ["Other", "ConsentChanged"]
    consent = consent_body["events"][-1]
    assert consent["data"] == {"granted": True}
    assert consent_body["sent"] - consent["t"] < 50
    # ... and before the tag handled the push (both times on the browser's clock).
    assert consent_body["sent"] <= page.evaluate("fakeTag.consentAt")
    assert len(push_names(events)) == 2


# Swallows the observer's batch timer (loaded before the observer, which takes the page's setTimeout): on such a
# page only the page going away can send anything.
NO_BATCH_TIMER = script(f"""(function () {{
    var set = window.setTimeout;
    window.setTimeout = function (fn, ms) {{ return ms === {DELAY_MS} ? 0 : set.apply(this, arguments); }};
}})();""")


def test_everything_left_is_sent_when_the_page_goes_away(site: Site, tab: Tab) -> None:
    start = script("window.Y_TRACKING = {eventLayer: [{name: 'AtLoad'}]}")
    page = load(tab, site.add("first", html(NO_BATCH_TIMER, OBSERVER_SCRIPT, start)))
    page.evaluate("Y_TRACKING.eventLayer.push({name: 'BeforeLeaving'})")
    page.wait_for_timeout(DELAY_MS + 100)
    assert site.bodies() == []  # nothing sent while the page stays
    page.evaluate("location.href = 'blank'")
    page.wait_for_url("**/blank")
    events = site.wait(lambda e: "BeforeLeaving" in push_names(e), "the pushes flushed on pagehide")
    assert [e.get("name", e["type"]) for e in events] == ["page", "AtLoad", "BeforeLeaving"]
    assert len(site.bodies()) == 1

    # Closing the tab sends what is left too.
    other = tab.page.context.new_page()
    other.goto(site.add("second", html(NO_BATCH_TIMER, OBSERVER_SCRIPT, start)))
    other.evaluate("Y_TRACKING.eventLayer.push({name: 'BeforeClosing'})")
    other.close()
    events = site.wait(lambda e: "BeforeClosing" in push_names(e), "the pushes flushed when the tab closed")
    assert len({e["page"] for e in events}) == 2


def test_hidden_page_and_pagehide_flush_at_once_visible_does_not(site: Site, tab: Tab) -> None:
    page = load(tab, site.add("index", html(OBSERVER_SCRIPT, script("window.Y_TRACKING = {eventLayer: []}"))))
    site.wait(lambda e: len(e) >= 1, "the page event")
    visibility = """(state) => {
        Object.defineProperty(document, "visibilityState", {configurable: true, get: () => state});
        Y_TRACKING.eventLayer.push({name: state});
        document.dispatchEvent(new Event("visibilitychange"));
    }"""
    page.evaluate(visibility, "visible")
    page.wait_for_timeout(DELAY_MS + 100)
    page.evaluate(visibility, "hidden")
    page.evaluate("""() => {
        Y_TRACKING.eventLayer.push({name: "pagehide"});
        dispatchEvent(new PageTransitionEvent("pagehide", {persisted: true}));  // as into the back/forward cache
    }""")
    site.wait(lambda e: "pagehide" in push_names(e), "the pagehide push")
    by_name = {push_names(b["events"])[0]: b for b in site.bodies() if push_names(b["events"])}
    assert by_name["visible"]["sent"] - by_name["visible"]["events"][0]["t"] >= DELAY_MS - 10  # waited for the timer
    assert by_name["hidden"]["sent"] - by_name["hidden"]["events"][0]["t"] < 50  # sent on visibilitychange
    assert by_name["pagehide"]["sent"] - by_name["pagehide"]["events"][0]["t"] < 50  # sent on pagehide


# Counts what the observer asks of timers: loaded before it, so the observer's own timers go through it.
TIMER_LOG = script("""(function () {
    var set = window.setTimeout, every = window.setInterval;
    window.timerLog = {timeouts: [], intervals: 0};
    window.setTimeout = function (fn, ms) { timerLog.timeouts.push(ms); return set.apply(this, arguments); };
    window.setInterval = function () { timerLog.intervals++; return every.apply(this, arguments); };
})();""")


def test_one_timer_per_batch_and_none_when_idle(site: Site, tab: Tab) -> None:
    page = load(
        tab, site.add("index", html(TIMER_LOG, OBSERVER_SCRIPT, script("window.Y_TRACKING = {eventLayer: []}")))
    )
    site.wait(lambda e: len(e) >= 1, "the page event")
    page.evaluate("for (let i = 0; i < 20; i++) Y_TRACKING.eventLayer.push({name: 'E' + i})")
    site.wait(lambda e: len(pushes(e)) >= 20, "20 pushes")
    page.wait_for_timeout(3 * DELAY_MS)  # idle: nothing more
    assert page.evaluate("timerLog") == {"timeouts": [DELAY_MS, DELAY_MS], "intervals": 0}  # page event, then the 20
    assert len(site.bodies()) == 2


# --- data ------------------------------------------------------------------------------------------------------


def test_cyclic_unusual_and_huge_data(site: Site, tab: Tab) -> None:
    page = load(tab, site.add("index", html(OBSERVER_SCRIPT, script("window.Y_TRACKING = {eventLayer: []}"))))
    result = page.evaluate("""() => {
        const layer = Y_TRACKING.eventLayer;
        const cyclic = {sku: "1", nested: {list: [1, "two", null]}};
        cyclic.self = cyclic;
        cyclic.nested.up = cyclic;
        cyclic.node = document.body;
        cyclic.win = window;
        cyclic.fn = () => 1;
        cyclic.missing = undefined;
        cyclic.nan = NaN;
        cyclic.when = new Date(Date.UTC(2025, 0, 2));
        cyclic.big = 10n;
        Object.defineProperty(cyclic, "broken", {enumerable: true, get() { throw new Error("getter"); }});
        layer.push({name: "Cyclic", data: cyclic});
        layer.push({name: "Huge", data: {sku: "2", price: 9.5, ok: true, none: null, text: "x".repeat(10000),
                                         list: new Array(100000).fill(7), deep: {a: {b: 1}}}});
        layer.push({name: "Wide", data: {sku: "3", a: "y".repeat(1000), b: "y".repeat(1000), c: "y".repeat(1000),
                                         d: "y".repeat(1000), e: "y".repeat(1000), nested: {f: 1}}});
        let deep = {};
        const root = deep;
        for (let i = 0; i < 50; i++) deep = deep.next = {};
        layer.push({name: "Deep", data: root});
        layer.push({name: "x".repeat(300), data: [1, 2]});
        layer.push({name: 42, data: "text"});
        return layer.length;
    }""")
    assert result == 6
    events = site.wait(lambda e: len(pushes(e)) >= 6, "six pushes")
    by_name = {e["name"]: e for e in events if e["type"] == "push"}
    cyclic = by_name["Cyclic"]
    assert "truncated" not in cyclic
    assert cyclic["data"] == {
        "sku": "1",
        "nested": {"list": [1, "two", None], "up": "[cycle]"},
        "self": "[cycle]",
        "node": "[node BODY]",
        "win": "[window]",
        "nan": None,
        "when": "2025-01-02T00:00:00.000Z",
        "big": "10",
    }
    huge = by_name["Huge"]
    assert huge["truncated"] is True
    assert huge["data"] == {"sku": "2", "price": 9.5, "ok": True, "none": None, "text": "x" * 512}
    wide = by_name["Wide"]  # over 4 KiB in a few values: cut for its size alone
    assert wide["truncated"] is True
    assert wide["data"] == {"sku": "3", **{key: "y" * 512 for key in "abcde"}}
    deep = by_name["Deep"]
    assert "truncated" not in deep and json.dumps(deep["data"]).count("next") == 20
    assert by_name["x" * 100]["data"] == {}  # name cut to 100; data that is not an object: {}
    assert by_name[""]["data"] == {}  # a name that is not a string: ""


def test_injected_twice_records_once(site: Site, tab: Tab) -> None:
    again = script("""(function () {
        var s = document.createElement("script");
        s.src = "/__clickwatch/observer.js?again";
        document.head.appendChild(s);
    })();""")
    start = script("window.Y_TRACKING = {eventLayer: []}; Y_TRACKING.eventLayer.push({name: 'AtLoad'})")
    page = load(tab, site.add("index", html(OBSERVER_SCRIPT, OBSERVER_SCRIPT, again, start)))
    page.wait_for_load_state("load")
    page.evaluate("Y_TRACKING.eventLayer.push({name: 'Later'}); history.pushState({}, '', 'next')")
    assert page.evaluate(
        "window.__clickwatchObserver === true && !Object.keys(window).includes('__clickwatchObserver')"
    )
    site.wait(lambda e: "Later" in push_names(e), "the later push")
    page.wait_for_timeout(DELAY_MS + 100)
    events = site.events()
    assert [e.get("name", e["type"]) for e in events] == ["page", "AtLoad", "Later", "navigation"]
    assert len({e["page"] for e in events}) == 1


# --- the stand-in storefront ------------------------------------------------------------------------------------


def observe_with_route(page: Page, origin: str, captured: list[dict[str, Any]]) -> None:
    """What the proxy will do, done by Playwright: the observer first in <head>, /__clickwatch/* answered."""

    def handle(route: Route) -> None:
        request = route.request
        path = urlsplit(request.url).path
        if path == "/__clickwatch/observer.js":
            route.fulfill(status=200, content_type="text/javascript; charset=utf-8", body=OBSERVER.read_text())
        elif path == OBSERVE_PATH:
            captured.append(check_body(request.post_data_buffer or b""))
            route.fulfill(status=204)
        elif request.resource_type == "document":
            response = route.fetch()
            body = response.text()
            if "text/html" in response.headers.get("content-type", ""):
                body = body.replace("<head>", "<head>" + OBSERVER_SCRIPT, 1)
            route.fulfill(response=response, body=body)
        else:
            route.continue_()

    page.route(origin + "/**", handle)


def browser_wait(page: Page, probe: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    """wait_until for things Playwright's route handlers deliver: they only run while Playwright is called."""
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.1f} s waiting for {what}")
        page.wait_for_timeout(50)
    return value


@pytest.mark.parametrize("spartacus", [False, True], ids=["accelerator", "spartacus"])
def test_standin_storefront(browser: Browser, spartacus: bool) -> None:
    standin = StandIn(spartacus=spartacus).start()
    # The documents come from route.fulfill, so Chromium does not know them as loopback documents: without this
    # permission its Local Network Access checks would block the tag on 127.0.0.1.
    context = browser.new_context(permissions=["local-network-access"])
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        home = standin.storefront_url("http")
        captured: list[dict[str, Any]] = []
        observe_with_route(page, home.rstrip("/"), captured)
        ready = (
            "(type) => window.standinStorefront && !window.standinStorefront.busy && standinStorefront.type === type"
        )

        page.goto(home)
        page.wait_for_function(ready, arg="home")
        page.wait_for_function("window.Y_TRACKING.standin && Y_TRACKING.standin.ready")
        page.click("#consent-accept")
        browser_wait(page, lambda: standin.received(CONSENT_PATH), "the tag's consent reference")
        link = page.locator("a.product-link").first
        sku = link.get_attribute("data-sku")
        link.click()
        page.wait_for_function(ready, arg="product")
        page.wait_for_function("Y_TRACKING.standin && Y_TRACKING.standin.settled()")  # a new document's tag: async

        def product_sent() -> list[Any]:
            bodies = [r.json() for r in standin.received(CLICKSTREAM_PATH)]
            return [b for b in bodies if b.get("productSku") == sku]

        [tag_sent] = browser_wait(page, product_sent, "the tag's ProductView event")
        browser_wait(page, lambda: "ProductDetailsPageViewed" in push_names(flatten(captured)), "the product push")
        page.wait_for_timeout(DELAY_MS + 100)
        reference = page.evaluate("Y_TRACKING.standin.reference()")
        events = flatten(captured)
        pages = list(dict.fromkeys(e["page"] for e in events))
        assert errors == []
    finally:
        context.close()
        standin.stop()

    assert not any(e.get("early") or e.get("truncated") for e in events)
    # Only what the stand-in promises; it may push more (carousels, login) and navigate in other ways.
    # (In Spartacus style the storefront pushes page events only once consent is given, as Spartacus does.)
    relied_on = {"ConsentChanged", "ProductDetailsPageViewed"} | (set() if spartacus else {"HomePageViewed"})
    observed = [
        (e["type"], e.get("name") or e.get("how"), pages.index(e["page"]))
        for e in events
        if e["type"] == "page"
        or (e["type"] == "push" and e["name"] in relied_on)
        or (e["type"] == "navigation" and e["url"] == f"/p/{sku}")
    ]
    if spartacus:
        # One document; the product page is a route of it. Spartacus tells the tag "not granted" at start, then
        # the shopper accepts.
        assert observed == [
            ("page", None, 0),
            ("push", "ConsentChanged", 0),
            ("push", "ConsentChanged", 0),
            ("navigation", "pushState", 0),
            ("push", "ProductDetailsPageViewed", 0),
        ]
        assert ("Navigated", {"url": f"/p/{sku}"}) in pushes(events)
    else:
        # Two documents; the storefront repeats the consent it has on every page.
        assert observed == [
            ("page", None, 0),
            ("push", "HomePageViewed", 0),
            ("push", "ConsentChanged", 0),
            ("page", None, 1),
            ("push", "ConsentChanged", 1),
            ("push", "ProductDetailsPageViewed", 1),
        ]
    consents = [data for name, data in pushes(events) if name == "ConsentChanged"]
    # Spartacus style starts with "not granted" (a shopper who has not decided); every later one says granted.
    assert consents[1 if spartacus else 0 :] == [{"granted": True}] * (len(consents) - (1 if spartacus else 0))
    assert not spartacus or consents[0] == {"granted": False}
    assert reference and reference not in json.dumps(captured)  # the consent reference never leaves the page
    product = next(data for name, data in pushes(events) if name == "ProductDetailsPageViewed")
    assert product["productSku"] == sku
    assert product == tag_sent  # what the storefront pushed is what the tag sent
