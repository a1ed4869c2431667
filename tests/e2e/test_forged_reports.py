"""Nothing outside a storefront page can speak for it (issue 22): real Chromium through `clickwatch up`, a stand-in
shop on plain HTTP, and a hostile site on another host that forges the data-layer observer's reports from an iframe
in the shop's page, or speaks through its own data layer in another tab of the same browser."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from tests.e2e.conftest import Clickwatch, Visit, metric_delta, settled
from tests.rig import wait_until

pytestmark = pytest.mark.integration

# The frame forges reports as the observer writes them, to /__clickwatch/observe on its own origin and on the
# shop's, with no token, with a made-up one, and with any token it can find in its own document (none: frames get
# no observer), every 300 ms while it lives. Events are dated `ago` ms before sending.
_FORGER = """
(function () {
  var shop = %(shop)s, events = %(events)s, fired = 0;
  function body() {
    var now = Date.now();
    return JSON.stringify({v: 1, page: "forgedpage0001", url: shop + "/", sent: now, events: events.map(function (e) {
      var copy = JSON.parse(JSON.stringify(e)); copy.t = now - (copy.ago || 0); delete copy.ago; return copy;
    })});
  }
  function tokens() {
    var found = ["AAAAAAAAAAAAAAAAAAAAAA"];
    performance.getEntriesByType("resource").forEach(function (r) {
      var at = r.name.indexOf("token="); if (at >= 0) found.push(r.name.slice(at + 6));
    });
    var own = document.querySelector("[data-clickwatch-page]");
    if (own) found.push(own.getAttribute("data-clickwatch-page"));
    return found;
  }
  function fire() {
    var targets = [location.origin, shop], sent = body();
    targets.forEach(function (origin) {
      var url = origin + "/__clickwatch/observe";
      navigator.sendBeacon(url, new Blob([sent], {type: "text/plain"}));
      tokens().forEach(function (token) {
        navigator.sendBeacon(url + "?token=" + token, new Blob([sent], {type: "text/plain"}));
      });
    });
    fired += 1;
    if (fired === 6) fetch("/fired", {method: "POST", body: "6"});
    if (fired < 6) setTimeout(fire, 300);
  }
  fire();
})();
"""
# A page of another site, opened in another tab: its own script says consent was granted in its own data layer.
_OTHER_SITE = """<!doctype html><html><head><title>Other site</title></head><body><script>
window.Y_TRACKING = window.Y_TRACKING || {};
Y_TRACKING.eventLayer = Y_TRACKING.eventLayer || [];
Y_TRACKING.eventLayer.push({name: "ConsentChanged", data: {granted: true}});
</script>Another site</body></html>"""


class _Hostile(BaseHTTPRequestHandler):
    """The hostile site: /frame (the forger), /tab (another site's own data layer), POST /fired."""

    protocol_version = "HTTP/1.1"
    page: ClassVar[bytes] = b""
    fired: ClassVar[threading.Event] = threading.Event()
    own_paths: ClassVar[list[str]] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        body = self.page if self.path == "/frame" else _OTHER_SITE.encode()
        self._answer(200, body, "text/html; charset=utf-8")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.startswith("/__clickwatch/"):
            self.own_paths.append(self.path)  # the proxy answers these itself: never reached
        if self.path == "/fired":
            self.fired.set()
        self._answer(204, b"", "text/plain")

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def hostile() -> Iterator[str]:
    """The hostile site on another host (127.0.0.1: the shop is on localhost), plain HTTP."""
    _Hostile.fired = threading.Event()
    _Hostile.own_paths = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _frame(visit: Visit, hostile: str, shop: str, events: list[dict[str, Any]]) -> None:
    """Add the hostile site's frame to the shop's page and wait until it has forged all its reports."""
    _Hostile.page = (
        "<!doctype html><html><head><title>ad</title></head><body><script>"
        + _FORGER % {"shop": json.dumps(shop), "events": json.dumps(events)}
        + "</script></body></html>"
    ).encode()
    visit.page.evaluate(
        "src => { const f = document.createElement('iframe'); f.src = src; document.body.appendChild(f); }",
        f"{hostile}/frame",
    )
    wait_until(_Hostile.fired.is_set, 20, "the frame to forge its reports")


def _clickstream(clickwatch: Clickwatch, run: str) -> list[dict[str, Any]]:
    return [d for d in clickwatch.deliveries(run) if d["kind"] == "clickstream"]


def _datalayer_states(clickwatch: Clickwatch, run: str) -> list[str]:
    """The consent states the data layer reported for the run's visitors (as accepted from observer reports)."""
    states = []
    for visitor in clickwatch.api("/api/visitors", run=run)["items"]:
        timeline = clickwatch.api(f"/api/visitors/{visitor['visitor']}", run=run)["timeline"]
        states += [e["state"] for e in timeline if e["type"] == "consent" and e["source"] == "data layer"]
    return states


def _refused(before: Any, after: Any) -> dict[str, float]:
    reasons = ("unbound", "wrong_origin", "wrong_host", "wrong_visitor", "expired", "bad_time")
    return {r: metric_delta(before, after, "clickwatch_observer_rejected_total", reason=r) for r in reasons}


def test_a_third_party_frame_cannot_hide_a_consent_violation(
    clickwatch: Clickwatch, visit: Visit, make_standin: Any, hostile: str
) -> None:
    standin = make_standin("track-before-consent")
    shop = standin.storefront_url("http").rstrip("/")
    before = clickwatch.metrics()
    walker = visit.shopper(standin, scheme="http")
    walker.walk(("home", "product"))  # no consent, and the tag tracks the product view all the same
    granted = {"type": "push", "name": "ConsentChanged", "data": {"granted": True}}
    # Dated 5 s before the shop's POST (as in the issue), and dated now.
    _frame(visit, hostile, shop, [{**granted, "ago": 5000}, granted])
    visit.close()
    settled(clickwatch, visit.run)
    events = _clickstream(clickwatch, visit.run)
    assert events and all(d["consent"] != "given" for d in events)
    assert all("consent_violation" in [f["kind"] for f in d["findings"]] for d in events)
    assert set(clickwatch.finding_kinds(visit.run)) == {"consent_violation"}  # (the consent reference's too)
    refused = _refused(before, clickwatch.metrics())
    # Each round: 2 origins x (no token, a made-up one) unbound; the shop's own page token, found in the frame's
    # performance entries? never: a frame's entries hold only its own requests.
    assert refused["unbound"] >= 6 * 4, refused
    assert _Hostile.own_paths == []
    # Only the shop's own observer spoke: its page said consent was not given.
    assert "given" not in _datalayer_states(clickwatch, visit.run)


def test_forged_pushes_and_withdrawals_invent_nothing_on_a_healthy_visit(
    clickwatch: Clickwatch, visit: Visit, make_standin: Any, hostile: str
) -> None:
    standin = make_standin()
    shop = standin.storefront_url("http").rstrip("/")
    before = clickwatch.metrics()
    walker = visit.shopper(standin, scheme="http")
    walker.walk(("home", "accept", "product"))  # the product view's POST left with consent
    withdrawn = {"type": "push", "name": "ConsentChanged", "data": {"granted": False}}
    pushed = {"type": "push", "name": "ProductDetailsPageViewed", "data": {"productSku": "999999"}}
    given = {"type": "push", "name": "ConsentChanged", "data": {"granted": True}}
    # A withdrawal dated before the healthy POST, and a product view pushed with consent that no tag will send.
    _frame(visit, hostile, shop, [{**withdrawn, "ago": 3000}, {**withdrawn, "ago": 1000}, given, pushed])
    visit.close()
    settled(clickwatch, visit.run)
    events = _clickstream(clickwatch, visit.run)
    assert events and all(d["consent"] == "given" for d in events)
    assert clickwatch.finding_kinds(visit.run) == {}
    assert clickwatch.check(visit.run).returncode == 0
    assert _refused(before, clickwatch.metrics())["unbound"] >= 6 * 4


def test_another_sites_data_layer_in_another_tab_decides_nothing_for_the_shop(
    clickwatch: Clickwatch, visit: Visit, make_standin: Any, hostile: str
) -> None:
    standin = make_standin("track-before-consent")
    other = visit.page.context.new_page()
    other.goto(f"{hostile}/tab")  # another site, whose page clickwatch observes too: it says "granted"
    wait_until(lambda: "given" in _datalayer_states(clickwatch, visit.run), 15, "the other site's report taken")
    walker = visit.shopper(standin, scheme="http")
    walker.walk(("home", "product"))  # the shop's tab: no consent on this site, and the tag tracks all the same
    visit.close()
    settled(clickwatch, visit.run)
    events = _clickstream(clickwatch, visit.run)
    assert events and all(d["consent"] != "given" for d in events)
    assert all("consent_violation" in [f["kind"] for f in d["findings"]] for d in events)
