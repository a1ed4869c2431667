"""Pages whose markup fooled a byte search for `<head`, loaded in real Chromium through `clickwatch up`: the observer
goes where the HTML parser is in the head, the page's own scripts run, none of its markup turns into text, and the
observer still reports (docs/observer.md, "Where the script goes")."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from tests.e2e.conftest import Clickwatch, Visit
from tests.integration.conftest import query
from tests.rig import wait_until

pytestmark = pytest.mark.integration


def _marked(name: str) -> str:
    """The page's own script: it says it ran, and pushes to the data layer (which the observer reports)."""
    return (
        f"window.ran = (window.ran || []).concat({name!r}); window.Y_TRACKING = window.Y_TRACKING || {{}};"
        f" Y_TRACKING.eventLayer = Y_TRACKING.eventLayer || [];"
        f" Y_TRACKING.eventLayer.push({{name: 'HostilePage', data: {{page: {name!r}}}}});"
    )


# name -> (the page, the text a reader sees in its body)
PAGES = {
    "script-string": (
        "<!doctype html><html><script>var s='<head>'; " + _marked("script-string") + "</script>"
        "<head><title>t</title></head><body><p>shop</p></body></html>",
        "shop",
    ),
    "srcdoc": (
        "<!doctype html><html><body><iframe srcdoc=\"<head><script>parent.framed = 'yes'</script></head>"
        '<p>in frame</p>"></iframe><script>' + _marked("srcdoc") + "</script><p>shop</p></body></html>",
        "shop",
    ),
    "attribute": (
        "<!doctype html><html><head data-x='a>b'><title>t</title><script>" + _marked("attribute") + "</script>"
        "</head><body><p>shop</p></body></html>",
        "shop",
    ),
    "comment": (
        "<!doctype html><!-- <head> --><html><!--><!-- <head> --!><head><title>t</title><script>"
        + _marked("comment")
        + "</script></head><body><p>shop</p></body></html>",
        "shop",
    ),
    "plaintext": (
        "<!doctype html><html><script>" + _marked("plaintext") + "</script><body><plaintext>raw <head> text",
        "raw <head> text",
    ),
}


class _Pages(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    other: ClassVar[str] = ""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        name = self.path.strip("/")
        if name == "framing":  # a page on this host framing a page of another host
            body = f'<!doctype html><html><head><title>t</title></head><body><iframe src="{self.other}/framed">'
        elif name == "framed":
            body = "<!doctype html><html><head><title>f</title></head><body><p>framed</p></body></html>"
        elif name in PAGES:
            body = PAGES[name][0]
        else:
            self.send_error(404)
            return
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def site() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
    server.daemon_threads = True
    port = server.server_address[1]
    _Pages.other = f"http://localhost:{port}"  # the same server under another host name: another site
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _reported(clickwatch: Clickwatch, run: str) -> list[str]:
    rows = query(clickwatch.db, "SELECT data FROM datalayer WHERE run = ? AND name = 'HostilePage'", run)
    return [json.loads(r["data"])["page"] for r in rows]


@pytest.mark.parametrize("name", list(PAGES))
def test_a_hostile_page_runs_its_scripts_shows_no_markup_and_the_observer_reports(
    clickwatch: Clickwatch, visit: Visit, site: str, name: str
) -> None:
    page = visit.page
    page.goto(f"{site}/{name}", wait_until="load")
    assert page.evaluate("window.ran") == [name]
    assert page.evaluate("document.body.innerText").strip() == PAGES[name][1]
    # The observer is the head's first element, and ran (it watches the data layer).
    assert page.evaluate("document.head.firstElementChild.getAttribute('src')") == "/__clickwatch/observer.js"
    assert page.evaluate("document.querySelectorAll('script[src=\"/__clickwatch/observer.js\"]').length") == 1
    if name == "srcdoc":
        assert page.evaluate("window.framed") == "yes"
        assert page.evaluate("document.querySelector('iframe').contentDocument.body.innerText") == "in frame"
    visit.close()
    assert wait_until(lambda: _reported(clickwatch, visit.run), 15, f"the observer's report of {name}") == [name]
    assert visit.problems == []


def test_a_frame_of_another_site_is_left_as_it_came(clickwatch: Clickwatch, visit: Visit, site: str) -> None:
    page = visit.page
    page.goto(f"{site}/framing", wait_until="load")
    frame = wait_until(lambda: next((f for f in page.frames if f.url.endswith("/framed")), None), 10, "the frame")
    frame.wait_for_load_state("load")
    assert frame.evaluate("document.body.innerText").strip() == "framed"
    assert frame.evaluate("document.querySelectorAll('script').length") == 0
    assert page.evaluate("document.head.firstElementChild.getAttribute('src')") == "/__clickwatch/observer.js"
    assert visit.problems == []
