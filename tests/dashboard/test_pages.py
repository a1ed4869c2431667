"""The server-rendered pages, against a real store filled through the real writer and Judge."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from clickwatch.dashboard.pages.common import CSP
from clickwatch.dashboard.pages.live import PAGE_SIZE
from tests.dashboard.conftest import T0, StoreBuilder
from tests.dashboard.test_api import HOSTILE_CURSORS

HOSTILE_NAME = "<script>alert(1)</script><img src=x onerror=alert(2)>"
HOSTILE_UA = "Mozilla/5.0 <script>alert('ua')</script>"
HOSTILE_PATH = "/edge/<svg onload=alert(3)>/clickstreamEvents"
RAW_MARKUP = ("<script>alert", "<img src=x", "<svg onload", "onerror=alert(2)>")
TOKEN = "s3cret-token"


@pytest.fixture
def filled(store_builder: Callable[..., StoreBuilder]) -> StoreBuilder:
    store = store_builder()
    store.page(at=T0, consent="GIVEN")
    store.event(at=T0 + 1)  # delivered
    store.event(at=T0 + 2, status=400, schema="AddedToCart", body={"productSku": "1", "productQty": 1})
    store.event(at=T0 + 3, status=None, error="connection reset", schema="KeywordSearch", body={"searchTerm": "x"})
    store.event(at=T0 + 4, schema="Bogus")  # unknown_schema
    store.event(at=T0 + 5, run="other", ua="Other browser")  # another run, consent unknown
    store.page(at=T0 + 6, consent=None, ua="Early browser")
    store.event(at=T0 + 7, ua="Early browser")  # tracked without consent
    store.close()
    return store


@pytest.fixture
def client(filled: StoreBuilder, client_for: Callable[..., TestClient]) -> TestClient:
    return client_for(filled.path)


def rows(html: str) -> list[int]:
    """The delivery ids of the live table's rows, in page order."""
    return [int(i) for i in re.findall(r'<tr data-id="(\d+)"', html)]


def api_ids(client: TestClient, query: str = "") -> list[int]:
    return [i["id"] for i in client.get(f"/api/deliveries?{query}").json()["items"]]


def assert_page(answer: httpx.Response, status: int = 200) -> str:
    """A page with the status, HTML, the CSP and no inline script."""
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("text/html")
    assert answer.headers["content-security-policy"] == CSP
    assert answer.headers["x-content-type-options"] == "nosniff"
    html = answer.text
    assert re.findall(r"<script(?![^>]*\ssrc=)", html) == []
    return html


# --- live events -------------------------------------------------------------------------------------------


def test_live_page_lists_deliveries_newest_first_with_the_banner(client: TestClient, filled: StoreBuilder) -> None:
    html = assert_page(client.get("/"))
    assert rows(html) == api_ids(client)
    assert len(rows(html)) == 6
    assert '<span class="verdict verdict-delivered">delivered</span>' in html
    assert '<span class="verdict verdict-rejected">rejected</span>' in html
    assert '<span class="verdict verdict-failed">failed</span>' in html
    assert 'class="badge sev-error" title="error: ' in html
    assert ">unknown_schema</span>" in html
    assert ">AddedToCart</td>" in html
    assert ">400</td>" in html
    assert 'title="connection reset">error</span>' in html
    assert re.search(r'<strong id="health-word">Failing</strong>', html)
    assert '<dd data-count="delivered">4</dd>' in html
    assert '<dd data-count="rejected">1</dd>' in html
    with sqlite3.connect(filled.path) as conn:
        last_seq = conn.execute("SELECT MAX(seq) FROM deliveries").fetchone()[0]
    assert f'data-after="{last_seq}"' in html
    assert 'data-live="1"' in html
    assert 'src="/static/live.js' in html


def test_filters_stay_in_the_form_and_reach_the_stream(client: TestClient) -> None:
    html = assert_page(client.get("/?verdict=rejected&schema=AddedToCart&run=default&kind="))
    assert rows(html) == api_ids(client, "verdict=rejected&schema=AddedToCart&run=default")
    assert len(rows(html)) == 1
    assert '<option value="rejected" selected>' in html
    assert 'name="schema" list="schema-names" value="AddedToCart"' in html
    assert 'name="run" value="default"' in html
    # Empty fields mean "any" and are left out of what the script subscribes to.
    assert 'data-query="verdict=rejected&amp;schema=AddedToCart&amp;run=default"' in html
    assert "for these filters" in html
    assert re.search(r'<strong id="health-word">Failing</strong>', html)


def test_empty_filter_fields_mean_any(client: TestClient) -> None:
    html = assert_page(client.get("/?kind=&verdict=&schema=&finding=&visitor=&run="))
    assert len(rows(html)) == 6
    assert 'data-query=""' in html


def test_finding_and_visitor_filters(client: TestClient) -> None:
    html = assert_page(client.get("/?finding=unknown_schema"))
    assert rows(html) == api_ids(client, "finding=unknown_schema")
    visitor = client.get("/api/deliveries?run=other").json()["items"][0]["visitor"]
    assert rows(assert_page(client.get(f"/?visitor={visitor}"))) == api_ids(client, f"visitor={visitor}")


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("verdict=lost", "verdict: &#39;lost&#39; is not one of delivered"),
        ("kind=pixel", "kind"),
        ("finding=nope", "finding"),
        ("since=yesterday", "since"),
        ("visitor=" + "v" * 65, "visitor: longer than 64"),
        ("cursor=%25%25%25", "cursor"),
        ("since=Infinity", "since"),
        ("until=1e400", "until"),
        *((f"cursor={encoded}", "cursor") for encoded in HOSTILE_CURSORS.values()),
    ],
)
def test_bad_filters_are_a_readable_400_page(client: TestClient, query: str, fragment: str) -> None:
    html = assert_page(client.get(f"/?{query}"), 400)
    assert fragment in html


def test_older_deliveries_are_one_link_away(store_builder: Callable[..., StoreBuilder], client_for) -> None:
    store = store_builder()
    for i in range(PAGE_SIZE + 3):
        store.event(at=T0 + i)
    store.close()
    client = client_for(store.path)
    html = assert_page(client.get("/?schema=ProductView"))
    assert len(rows(html)) == PAGE_SIZE
    older = re.search(r'<a class="button-link" href="/\?([^"]+)">Older deliveries', html)
    assert older
    query = older.group(1).replace("&amp;", "&")
    assert query.startswith("schema=ProductView&cursor=")
    older_html = assert_page(client.get(f"/?{query}"))
    assert len(rows(older_html)) == 3
    assert set(rows(older_html)).isdisjoint(rows(html))
    assert 'data-live="0"' in older_html
    assert "this page does not update" in older_html


def test_no_deliveries_yet(store_builder: Callable[..., StoreBuilder], client_for) -> None:
    store = store_builder()
    store.close()
    html = assert_page(client_for(store.path).get("/"))
    assert rows(html) == []
    assert "Waiting for traffic" in html
    assert "No deliveries captured yet" in html


# --- delivery detail -------------------------------------------------------------------------------------


def test_delivery_detail(client: TestClient) -> None:
    rejected = api_ids(client, "verdict=rejected")[0]
    html = assert_page(client.get(f"/deliveries/{rejected}"))
    assert "<h1>AddedToCart</h1>" in html
    assert "https://acme.api.us.context.cloud.sap/edge/clickstreamEvents" in html
    # The body pretty-printed (and escaped), the headers with redacted values marked as such.
    assert "{\n  &#34;productSku&#34;: &#34;1&#34;,\n  &#34;productQty&#34;: 1\n}" in html
    assert '<th scope="row" class="mono">Authorization</th>' in html
    assert 'Bearer <span class="redacted" title="value not stored">redacted</span>' in html
    assert "secret-token-value" not in html
    assert 'Status <span class="mono strong">400</span>' in html
    assert "{\n  &#34;ok&#34;: true\n}" in html
    assert '<span class="consent consent-given">given</span>' in html
    assert "cookie anonymous-consents" in html  # the consent signal in force
    assert "<tr><th>Duration</th><td>50 ms</td></tr>" in html
    assert "No findings" in html


def test_delivery_detail_of_a_failed_call_and_its_findings(client: TestClient) -> None:
    failed = api_ids(client, "verdict=failed")[0]
    html = assert_page(client.get(f"/deliveries/{failed}"))
    assert 'No response: <span class="mono">connection reset</span>' in html
    bogus = api_ids(client, "finding=unknown_schema")[0]
    finding = client.get(f"/api/deliveries/{bogus}").json()["findings"][0]
    html = assert_page(client.get(f"/deliveries/{bogus}"))
    assert '<span class="badge sev-error">unknown_schema</span>' in html
    assert f"<p>{finding['message']}</p>".replace("'", "&#39;") in html


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/deliveries/999999", 404),
        ("/deliveries/abc", 422),
        ("/deliveries/9223372036854775808", 404),  # past SQLite's integers: once a 500
        (f"/deliveries/{10**300}", 404),
        ("/deliveries/-5", 404),
    ],
)
def test_unknown_or_bad_delivery(client: TestClient, path: str, status: int) -> None:
    answer = client.get(path)
    assert answer.status_code == status
    if status == 404:
        html = assert_page(answer, 404)
        assert "No such delivery" in html
        if len(path) > 20:
            assert "delivery id" in html and "out of range" in html


# --- visitors --------------------------------------------------------------------------------------------


def test_visitors_list_and_run_filter(client: TestClient) -> None:
    html = assert_page(client.get("/visitors"))
    visitors = client.get("/api/visitors").json()["items"]
    assert len(visitors) == 3
    for v in visitors:
        assert f">{v['visitor']}</a>" in html
    assert "Other browser" in html
    other = assert_page(client.get("/visitors?run=other"))
    assert "Other browser" in other and "Early browser" not in other
    assert 'name="run" value="other"' in other
    assert "No visitors in run" in assert_page(client.get("/visitors?run=nothing"))


def _visitor(client: TestClient, ua: str) -> str:
    return next(v["visitor"] for v in client.get("/api/visitors").json()["items"] if v["user_agent"] == ua)


def test_timeline_of_a_browser_that_waited_for_consent(client: TestClient) -> None:
    from tests.dashboard.conftest import UA

    visitor = _visitor(client, UA)
    html = assert_page(client.get(f"/visitors/{visitor}?run=default"))
    assert "Did this browser track before consent?" in html
    assert "<strong>No</strong>" in html
    assert html.index("tl tl-consent tl-consent-given") < html.index("tl tl-delivery")
    assert html.count('class="tl tl-delivery') == 4
    assert ">unknown_schema</span>" in html


def test_timeline_of_a_browser_that_tracked_before_consent(client: TestClient) -> None:
    visitor = _visitor(client, "Early browser")
    html = assert_page(client.get(f"/visitors/{visitor}"))
    assert "Yes: tracked without consent" in html
    assert "tl tl-delivery tl-bad" in html
    assert '<span class="consent consent-absent" title="absent: never given">not given</span>' in html
    assert ">consent_violation</span>" in html


@pytest.mark.parametrize("path", ["/visitors/0000000000000000", "/visitors/%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E"])
def test_unknown_visitor_is_404(client: TestClient, path: str) -> None:
    html = assert_page(client.get(path), 404)
    assert "No such visitor" in html
    assert "<img src=x" not in html


def test_unknown_visitor_in_a_run_is_404(client: TestClient) -> None:
    visitor = _visitor(client, "Other browser")
    assert_page(client.get(f"/visitors/{visitor}?run=default"), 404)


# --- store not there yet -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/deliveries/1", "/visitors", "/visitors/0000000000000000"])
def test_pages_say_the_store_is_not_available_yet(tmp_path: Path, client_for, path: str) -> None:
    missing = client_for(tmp_path / "missing.db")
    html = assert_page(missing.get(path), 503)
    assert "Store not available yet" in html
    assert str(tmp_path / "missing.db") in html
    assert 'id="retry" class="small" data-seconds="5"' in html  # common.js reloads it until the store exists
    not_a_store = tmp_path / "other.db"
    sqlite3.connect(not_a_store).execute("CREATE TABLE t (x)").connection.close()
    assert "Store not available yet" in assert_page(client_for(not_a_store).get(path), 503)


# --- setup ----------------------------------------------------------------------------------------------------


def test_setup_before_the_proxy_ever_ran(tmp_path: Path, client_for) -> None:
    client = client_for(tmp_path / "missing.db", proxy_url="http://127.0.0.1:9099")
    html = assert_page(client.get("/setup"))
    assert "http://127.0.0.1:9099" in html
    assert "Not yet: there is no store." in html
    assert "The CA certificate does not exist yet" in html
    assert str(tmp_path / "mitm" / "mitmproxy-ca-cert.pem") in html
    assert 'href="/setup/mitmproxy-ca-cert.pem"' not in html
    for name in ("mitmproxy-ca-cert.pem", "mitmproxy-ca-cert.cer"):
        missing = client.get(f"/setup/{name}")
        assert "CA certificate not created yet" in assert_page(missing, 404)


def test_setup_with_traffic_and_a_certificate(client: TestClient, tmp_path: Path) -> None:
    confdir = tmp_path / "mitm"
    confdir.mkdir()
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    (confdir / "mitmproxy-ca-cert.pem").write_text(pem)
    (confdir / "mitmproxy-ca-cert.cer").write_text(pem)
    (confdir / "mitmproxy-ca.pem").write_text("-----BEGIN PRIVATE KEY-----\n")
    html = assert_page(client.get("/setup"))
    assert "6 deliveries captured so far" in html
    assert "storefront traffic passing through the proxy is not counted" in html
    for platform in ("Chrome / Chromium", "Firefox", "macOS", "Windows", "Debian / Ubuntu", "Android"):
        assert f"<strong>{platform}</strong>" in html
    assert 'href="/setup/mitmproxy-ca-cert.pem"' in html
    download = client.get("/setup/mitmproxy-ca-cert.pem")
    assert download.status_code == 200
    assert download.text == pem
    assert download.headers["content-type"] == "application/x-pem-file"
    assert 'filename="mitmproxy-ca-cert.pem"' in download.headers["content-disposition"]
    cer = client.get("/setup/mitmproxy-ca-cert.cer")
    assert cer.status_code == 200
    assert cer.headers["content-type"] == "application/x-x509-ca-cert"
    # The private key next to it is never served, under any name.
    for path in ("/setup/mitmproxy-ca.pem", "/setup/..%2Fmitm%2Fmitmproxy-ca.pem", "/static/..%2F..%2Fmitm"):
        assert "PRIVATE KEY" not in client.get(path).text


def test_setup_with_a_store_but_no_tracking_calls(store_builder: Callable[..., StoreBuilder], client_for) -> None:
    store = store_builder()
    store.page(at=T0)
    store.close()
    html = assert_page(client_for(store.path).get("/setup"))
    assert "No tracking calls captured yet." in html
    assert "storefront page load recorded" in html


# --- login ----------------------------------------------------------------------------------------------------


def test_login_flow_with_a_token(filled: StoreBuilder, client_for) -> None:
    client = client_for(filled.path, token=TOKEN)
    bounced = client.get("/visitors?run=default", follow_redirects=False)
    assert bounced.status_code == 303
    assert bounced.headers["location"] == "/login?next=%2Fvisitors%3Frun%3Ddefault"
    form = assert_page(client.get(bounced.headers["location"]))
    assert 'name="next" value="/visitors?run=default"' in form
    assert 'type="password" name="token"' in form

    wrong = client.post("/login", data={"token": "guess", "next": "/visitors?run=default"}, follow_redirects=False)
    html = assert_page(wrong, 401)
    assert "That token is not right." in html
    assert 'name="next" value="/visitors?run=default"' in html
    assert "set-cookie" not in wrong.headers
    assert client.get("/", follow_redirects=False).status_code == 303

    right = client.post("/login", data={"token": TOKEN, "next": "/visitors?run=default"}, follow_redirects=False)
    assert right.status_code == 303
    assert right.headers["location"] == "/visitors?run=default"
    cookie = right.headers["set-cookie"]
    # A signed session that expires, never the token itself (tests/dashboard/test_security.py holds the rest).
    assert cookie.startswith("clickwatch_session=") and TOKEN not in cookie
    assert "Max-Age=43200" in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Path=/" in cookie
    assert_page(client.get("/"))
    assert_page(client.get("/visitors?run=default"))
    assert client.get("/api/summary").status_code == 200  # the live page's own fetches carry the cookie


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example",
        "https://evil.example",
        "/\\evil.example",
        "\\\\evil.example",
        "/\t/evil.example",
        "/\n/evil.example",
        "evil.example",
        "javascript:alert(1)",
        "",
    ],
)
def test_login_never_redirects_off_site(filled: StoreBuilder, client_for, target: str) -> None:
    client = client_for(filled.path, token=TOKEN)
    answer = client.post("/login", data={"token": TOKEN, "next": target}, follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/"
    form = client.get("/login", params={"next": target})
    assert 'name="next" value="/"' in assert_page(form)


def test_login_without_a_token_configured_goes_home(client: TestClient) -> None:
    for answer in (client.get("/login", follow_redirects=False), client.post("/login", follow_redirects=False)):
        assert answer.status_code == 303
        assert answer.headers["location"] == "/"


def test_oversized_login_form_is_refused(filled: StoreBuilder, client_for) -> None:
    client = client_for(filled.path, token=TOKEN)
    answer = client.post("/login", data={"token": TOKEN, "next": "/" + "a" * 10000}, follow_redirects=False)
    assert answer.status_code == 413
    assert "set-cookie" not in answer.headers


# --- hostile captured values ------------------------------------------------------------------------------


def test_hostile_captured_strings_are_escaped_everywhere(
    store_builder: Callable[..., StoreBuilder], client_for
) -> None:
    store = store_builder()
    store.page(at=T0, ua=HOSTILE_UA)
    store.event(
        at=T0 + 1,
        ua=HOSTILE_UA,
        path=HOSTILE_PATH,
        schema="<b>Product</b>",
        run="<i>run</i>",
        body={"productName": HOSTILE_NAME},
        headers=(("X-Note", "<script>alert('header')</script>"),),
    )
    store.event(at=T0 + 2, ua=HOSTILE_UA, status=None, error="<img src=x onerror=alert('error')>")
    store.close()
    client = client_for(store.path)
    [failed, first] = api_ids(client)
    visitor = client.get("/api/visitors").json()["items"][0]["visitor"]
    pages = {
        "/": client.get("/"),
        "detail": client.get(f"/deliveries/{first}"),
        "failed": client.get(f"/deliveries/{failed}"),
        "visitors": client.get("/visitors"),
        "timeline": client.get(f"/visitors/{visitor}"),
        "filtered": client.get("/", params={"schema": "<b>Product</b>", "run": "<i>run</i>"}),
    }
    for name, answer in pages.items():
        html = assert_page(answer)
        for raw in (*RAW_MARKUP, "<b>Product</b>", "<i>run</i>"):
            assert raw not in html, f"{raw!r} unescaped on {name}"
        # The only <svg> elements are the live page's own funnel bars.
        assert html.count("<svg") == html.count('<svg class="funnel-svg" viewBox="0 0 100 26"'), name
    detail = pages["detail"].text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;" in detail
    assert "Mozilla/5.0 &lt;script&gt;alert(&#39;ua&#39;)&lt;/script&gt;" in detail
    assert "/edge/&lt;svg onload=alert(3)&gt;/clickstreamEvents" in detail
    assert "&lt;script&gt;alert(&#39;header&#39;)&lt;/script&gt;" in detail
    assert "&lt;img src=x onerror=alert(&#39;error&#39;)&gt;" in pages["failed"].text
    assert "&lt;b&gt;Product&lt;/b&gt;" in pages["/"].text
    assert 'value="&lt;b&gt;Product&lt;/b&gt;"' in pages["filtered"].text
    assert "Mozilla/5.0 &lt;script&gt;" in pages["timeline"].text


def test_live_script_never_writes_markup() -> None:
    static = Path(__file__).resolve().parents[2] / "dashboard" / "static"
    for script in static.glob("*.js"):
        source = script.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in source, f"{script.name} uses {sink}"


def test_static_files_are_served(client: TestClient) -> None:
    for name, kind in (("live.js", "javascript"), ("common.js", "javascript"), ("style.css", "text/css")):
        answer = client.get(f"/static/{name}")
        assert answer.status_code == 200
        assert kind in answer.headers["content-type"]


def test_a_run_with_deliveries_still_without_an_answer_is_waiting_not_healthy(
    store_builder: Callable[..., StoreBuilder], client_for
) -> None:
    store = store_builder()
    store.page(at=T0, consent="GIVEN")
    store.event(at=T0 + 1)  # delivered
    store.event(at=time.time() - 30, schema="AddedToCart", body={"productSku": "1", "productQty": 1}, status=None)
    store.writer.close()  # the second stays pending: a tenant that hangs
    client = client_for(store.path)
    assert client.get("/api/summary").json()["oldest_pending_at"] is not None
    html = assert_page(client.get("/"))
    assert 'class="health health-pending"' in html
    assert '<strong id="health-word">Waiting</strong>' in html
    note = re.search(r'<span id="health-pending"[^>]*>([^<]*)</span>', html)
    assert note, html
    count, age = re.fullmatch(r"(\d+) without an answer, oldest sent (\d+) s ago", note[1]).groups()  # type: ignore[union-attr]
    assert int(count) == 1 and 30 <= int(age) < 120
