import base64
import json
import sqlite3

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons, tflow, tutils

from clickwatch.addon.capture import STOPPED_ERROR, Clickwatch
from clickwatch.core import serviceworker
from clickwatch.core.serviceworker import sha1
from clickwatch.store import wire
from clickwatch.store.link import StoreLink


class RecordingLink:
    """The store link for these tests: a StoreLink writing in a thread of this process (no store process), which
    also keeps every message the addon hands it."""

    def __init__(self, path: str, **options) -> None:
        self.link = StoreLink(path, **{**options, "use_process": False})
        self.path = path
        self.sent: list[wire.Observed] = []
        self.controls: list[wire.Control] = []

    @property
    def mode(self) -> str:
        return self.link.mode

    def send(self, message: wire.Observed) -> bool:
        self.sent.append(message)
        return self.link.send(message)

    def control(self, message: wire.Control) -> None:
        self.controls.append(message)
        self.link.control(message)

    def close(self, timeout: float | None = None) -> bool:
        return self.link.close(timeout)


def clickstream_flow(resp: bool = True, status: int = 201, path: str = "/edge/clickstreamEvents"):
    req = tutils.treq(
        method=b"POST",
        host="acme.api.us.context.cloud.sap",
        port=443,
        scheme=b"https",
        path=path.encode(),
        content=b'{"productSku":"300938"}',
    )
    req.headers["hybris-schema"] = "context/commerce/ProductView"
    req.headers["consent-reference"] = "cr-123"
    req.headers["content-type"] = "application/json"
    req.headers["user-agent"] = "Mozilla/5.0 test"
    flow = tflow.tflow(req=req)
    if resp:
        flow.response = tutils.tresp(status_code=status, content=b'{"ok":true}')
    return flow


def stored(path) -> list[sqlite3.Row]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM deliveries ORDER BY id").fetchall()
    finally:
        conn.close()


@pytest.fixture
def addon_ctx(tmp_path):
    addon = Clickwatch(open_link=RecordingLink)
    with taddons.context(addon) as tctx:
        tctx.configure(addon, clickwatch_db=str(tmp_path / "cw.db"))
        yield addon, tctx, str(tmp_path / "cw.db")
        addon.done()


def test_every_option_has_the_prefix_and_a_real_help_text():
    addon = Clickwatch(open_link=RecordingLink)
    with taddons.context(addon) as tctx:
        ours = [
            name
            for name in tctx.options.keys()  # noqa: SIM118 (OptManager is not iterable)
            if name.startswith("clickwatch")
        ]
        assert len(ours) >= 10
        for name in ours:
            assert name.startswith("clickwatch_")
            help_text = tctx.options._options[name].help
            assert len(help_text) > 30
            assert help_text.endswith(".")
        addon.done()


async def test_delivered_clickstream_is_stored(addon_ctx):
    addon, tctx, db = addon_ctx
    flow = clickstream_flow()
    await tctx.cycle(addon, flow)
    addon.done()
    [row] = stored(db)
    assert row["kind"] == "clickstream"
    assert row["verdict"] == "delivered"
    assert row["status_code"] == 201
    assert row["schema_name"] == "ProductView"
    assert row["consent_reference"] == "cr-123"
    assert row["host"] == "acme.api.us.context.cloud.sap"
    assert row["url"] == "https://acme.api.us.context.cloud.sap/edge/clickstreamEvents"
    assert row["request_body"] == '{"productSku":"300938"}'
    assert row["response_body"] == '{"ok":true}'
    assert row["client_addr"] == "127.0.0.1"


async def test_rejected_and_failed(addon_ctx):
    addon, tctx, db = addon_ctx
    await tctx.cycle(addon, clickstream_flow(status=400))
    broken = clickstream_flow(resp=False)
    broken.error = tflow.terr("Connection reset by peer")
    await tctx.cycle(addon, broken)
    addon.done()
    rejected, failed = stored(db)
    assert (rejected["verdict"], rejected["status_code"]) == ("rejected", 400)
    assert (failed["verdict"], failed["status_code"], failed["error"]) == ("failed", None, "Connection reset by peer")


async def test_expected_status_option_changes_the_verdict(addon_ctx):
    addon, tctx, db = addon_ctx
    tctx.configure(addon, clickwatch_expected_status="clickstream=200")
    await tctx.cycle(addon, clickstream_flow(status=201))
    addon.done()
    assert stored(db)[0]["verdict"] == "rejected"


async def test_ordinary_traffic_is_not_stored(addon_ctx):
    addon, tctx, db = addon_ctx
    flow = tflow.tflow(resp=True)
    await tctx.cycle(addon, flow)
    addon.done()
    assert stored(db) == []
    assert addon.flows_seen == 1


def traffic(flow):
    """What passes between browser, proxy and tenant (flow metadata is the proxy's own notebook)."""
    return flow.request.get_state(), flow.response.get_state() if flow.response else None, flow.error


async def test_hooks_change_nothing_in_the_flow(addon_ctx):
    addon, tctx, _ = addon_ctx
    flow = clickstream_flow()
    before = traffic(flow)
    await tctx.cycle(addon, flow)
    assert traffic(flow) == before


async def test_the_run_header_is_taken_out_and_recorded(addon_ctx):
    addon, tctx, db = addon_ctx
    flow = clickstream_flow()
    flow.request.headers["X-Clickwatch-Run"] = "nightly-42"
    await tctx.cycle(addon, flow)
    addon.done()
    assert "X-Clickwatch-Run" not in flow.request.headers
    assert stored(db)[0]["run"] == "nightly-42"


def basic(credentials: bytes) -> str:
    return "Basic " + base64.b64encode(credentials).decode()


@pytest.mark.parametrize(
    ("authorization", "run"),
    [
        (basic(b"alice:secret"), "alice"),
        (basic(b"alice:"), "alice"),
        ("basic " + base64.b64encode(b"al:ice:x").decode(), "al"),  # the user name ends at the first colon
        (basic(b"bob%2Fci:x"), "bob/ci"),  # percent-encoded as in http://bob%2Fci@proxy
        (basic("jürgen:x".encode()), "jürgen"),
        (basic(b"  spaced  :x"), "spaced"),
        (basic(b"tab\there:x"), "tabhere"),  # unprintable characters are dropped
        (basic(b"x" * 150 + b":y"), "x" * 100),
        # Not a run name: the default run (mitmproxy's parse_http_basic_auth refuses them).
        (basic(b":secret"), "default"),
        (basic(b"no-colon"), "default"),
        ("Bearer abc", "default"),
        ("Basic !!!", "default"),
        ("Basic", "default"),
        ("Basic a b", "default"),
        ("", "default"),
    ],
)
def test_proxy_credentials_name_the_run_and_go_no_further(addon_ctx, authorization, run):
    addon, _tctx, _db = addon_ctx
    flow = tflow.tflow()
    flow.request.headers["Proxy-Authorization"] = authorization
    addon.requestheaders(flow)
    assert flow.metadata["clickwatch_run"] == run
    assert "Proxy-Authorization" not in flow.request.headers


def test_credentials_on_connect_name_the_run_of_the_tunnel_and_the_header_wins(addon_ctx):
    addon, _tctx, _db = addon_ctx
    connect = tflow.tflow()
    connect.request.headers["Proxy-Authorization"] = basic(b"tunnel:x")
    addon.http_connect(connect)
    inside = tflow.tflow(client_conn=connect.client_conn)
    addon.requestheaders(inside)
    assert inside.metadata["clickwatch_run"] == "tunnel"
    headed = tflow.tflow(client_conn=connect.client_conn)
    headed.request.headers["X-Clickwatch-Run"] = "carol"
    addon.requestheaders(headed)
    assert headed.metadata["clickwatch_run"] == "carol"
    addon.client_disconnected(connect.client_conn)
    after = tflow.tflow(client_conn=connect.client_conn)
    addon.requestheaders(after)
    assert after.metadata["clickwatch_run"] == "default"


def test_mitmproxy_proxyauth_names_the_run_when_it_checked_the_credentials(addon_ctx):
    addon, _tctx, _db = addon_ctx
    flow = tflow.tflow()
    flow.metadata["proxyauth"] = ("dave", "pw")  # what mitmproxy's proxyauth=any leaves, the header taken out
    addon.requestheaders(flow)
    assert flow.metadata["clickwatch_run"] == "dave"


async def test_unanswered_request_fails_at_shutdown(addon_ctx):
    addon, _tctx, db = addon_ctx
    flow = clickstream_flow(resp=False)
    addon.request(flow)
    addon.done()
    [row] = stored(db)
    assert row["verdict"] == "failed"
    assert row["error"] == STOPPED_ERROR


async def test_internal_error_fails_open(addon_ctx, monkeypatch, caplog):
    addon, tctx, _db = addon_ctx

    def broken_send(message):
        raise RuntimeError("boom")

    monkeypatch.setattr(addon.link, "send", broken_send)
    flow = clickstream_flow()
    before = traffic(flow)
    await tctx.cycle(addon, flow)
    assert addon.addon_errors == 2  # request and response hooks both failed
    assert traffic(flow) == before
    assert flow.error is None
    assert "error in request hook" in caplog.text


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("clickwatch_clickstream_path", "(", "clickstream path: '\\(' is not a valid regular expression"),
        ("clickwatch_tag_pattern", "[", "tag pattern"),
        ("clickwatch_tenant_host", "*x", "tenant host"),
        ("clickwatch_expected_status", "clickstream=abc", "clickwatch_expected_status"),
        ("clickwatch_body_limit", -1, "clickwatch_body_limit: must be 0 or more"),
        ("clickwatch_queue_size", 0, "clickwatch_queue_size: must be at least 1"),
        ("clickwatch_shutdown_timeout", -5, "clickwatch_shutdown_timeout"),
        ("clickwatch_db", "/no/such/dir/cw.db", "directory '/no/such/dir' does not exist"),
    ],
)
def test_bad_option_values_raise_options_error(tmp_path, option, value, message):
    addon = Clickwatch(open_link=RecordingLink)
    with taddons.context(addon) as tctx:
        tctx.configure(addon, clickwatch_db=str(tmp_path / "cw.db"))
        with pytest.raises(exceptions.OptionsError, match=message):
            tctx.configure(addon, **{option: value})
        addon.done()


def test_db_that_is_a_directory_is_refused(tmp_path):
    addon = Clickwatch(open_link=RecordingLink)
    with taddons.context(addon) as tctx, pytest.raises(exceptions.OptionsError, match="is a directory"):
        tctx.configure(addon, clickwatch_db=str(tmp_path))


def page_flow(cookie: str):
    req = tutils.treq(method=b"GET", host="shop.example", port=443, scheme=b"https", path=b"/electronics/p/1")
    req.headers["cookie"] = cookie
    req.headers["accept"] = "text/html"
    req.headers["sec-fetch-dest"] = "document"
    req.headers["user-agent"] = "Mozilla/5.0 test"
    flow = tflow.tflow(req=req)
    flow.response = tutils.tresp(status_code=200, content=b"<html></html>")
    flow.response.headers["content-type"] = "text/html; charset=utf-8"
    return flow


async def test_unchanged_page_loads_are_folded_but_all_counted(addon_ctx):
    addon, tctx, db = addon_ctx
    given = "anonymous-consents=%5B%7B%22templateCode%22%3A%22PROFILE%22%2C%22consentState%22%3A%22GIVEN%22%7D%5D"
    link = addon.link
    for _ in range(25):
        await tctx.cycle(addon, page_flow(given))
    assert len(link.sent) == 1  # the first page; the other 24 wait folded
    addon.done()
    assert [type(message) for message in link.sent] == [wire.Storefront, wire.Storefront]
    assert link.sent[1].repeats == 23
    conn = sqlite3.connect(db)
    page_loads, consent = conn.execute("SELECT page_loads, consent FROM visitors").fetchone()
    conn.close()
    assert (page_loads, consent) == (25, "given")


async def test_a_replayed_flow_is_a_delivery_of_its_own(addon_ctx):
    # mitmproxy's client replay sends the same flow object again (same flow.id): it must not overwrite the first.
    addon, tctx, db = addon_ctx
    flow = clickstream_flow(status=400)
    await tctx.cycle(addon, flow)
    flow.response = tutils.tresp(status_code=201, content=b"{}")
    await tctx.cycle(addon, flow)
    addon.done()
    rows = stored(db)
    assert [row["verdict"] for row in rows] == ["rejected", "delivered"]
    assert rows[0]["uid"] != rows[1]["uid"]


async def test_each_tracking_call_is_a_request_and_an_answer_and_every_flow_is_counted(addon_ctx):
    addon, tctx, db = addon_ctx
    link = addon.link
    await tctx.cycle(addon, clickstream_flow(status=201))
    await tctx.cycle(addon, tflow.tflow(resp=True))  # not a tracking call: counted, not handed on
    addon.done()
    request, answer = link.sent
    assert isinstance(request, wire.Request) and isinstance(answer, wire.Answer)
    assert (request.uid, request.kind, request.method) == (answer.uid, "clickstream", "POST")
    assert (answer.status_code, answer.body, answer.error) == (201, b'{"ok":true}', None)
    assert [type(message) for message in link.controls] == [wire.Config]
    conn = sqlite3.connect(db)
    counters = dict(conn.execute("SELECT name, value FROM metric_counters").fetchall())
    conn.close()
    assert (counters["proxy_flows"], counters.get("addon_errors", 0)) == (2, 0)


def _big_upload(scheme: bytes = b"https", host: str = "shop.example"):
    req = tutils.treq(method=b"POST", host=host, port=443, scheme=scheme, path=b"/upload", content=b"")
    req.headers["transfer-encoding"] = "chunked"
    del req.headers["content-length"]
    return tflow.tflow(req=req)


async def test_a_large_upload_streams_but_not_one_already_answered(addon_ctx):
    # mitmproxy refuses to stream a request another addon has answered (its 407 when proxyauth asks for
    # credentials): "Can't set a response and enable streaming at the same time" would break the connection.
    addon, tctx, _ = addon_ctx
    plain = _big_upload()
    addon.requestheaders(plain)
    assert plain.request.stream is True
    answered = _big_upload()
    answered.response = tutils.tresp(status_code=407, content=b"")
    addon.requestheaders(answered)
    assert not answered.request.stream
    tctx.configure(addon, clickwatch_storefront=["shop.example"])
    elsewhere = _big_upload(scheme=b"http", host="other.example")
    addon.requestheaders(elsewhere)
    assert elsewhere.request.stream is True  # passed through as it is
    passthrough = _big_upload(scheme=b"http", host="other.example")
    passthrough.response = tutils.tresp(status_code=407, content=b"")
    addon.requestheaders(passthrough)
    assert not passthrough.request.stream
    assert addon.addon_errors == 0


async def test_a_header_that_is_not_latin_1_is_no_addon_error(addon_ctx):
    addon, _, _ = addon_ctx
    flow = tflow.tflow(req=tutils.treq(method=b"GET", path=b"/download"), resp=True)
    flow.request.headers.fields = ((b"accept", "text/html,€".encode()), (b"sec-fetch-dest", b"\xff\xfe"))
    flow.response.headers.fields = ((b"content-type", b"application/octet-stream"),)
    addon.responseheaders(flow)
    assert flow.response.stream is True  # unknown length, not a page: streamed, and no exception on the way
    assert addon.addon_errors == 0


# --- a service worker (Angular's ngsw-worker.js) ------------------------------------------------------------------

SHELL = b"<!doctype html><html><head><title>Shop</title></head><body><app-root></app-root></body></html>"


def shop_flow(path: bytes, body: bytes, content_type: str, **headers: str):
    req = tutils.treq(method=b"GET", host="shop.example", port=443, scheme=b"https", path=path)
    req.headers["user-agent"] = "Mozilla/5.0 test"
    for name, value in headers.items():
        req.headers[name.replace("_", "-")] = value
    flow = tflow.tflow(req=req)
    flow.response = tutils.tresp(status_code=200, content=body)
    flow.response.headers["content-type"] = content_type
    return flow


def ngsw(index_hash: str) -> bytes:
    table = {"/index.html": index_hash, "/main.js": "0" * 40}
    value = {"configVersion": 1, "timestamp": 1, "index": "/index.html", "assetGroups": [], "hashTable": table}
    return json.dumps(value).encode()


def shell_fetch():
    """The worker's own fetch of index.html for its cache (not a navigation), with a length it did not announce."""
    flow = shop_flow(
        b"/index.html?ngsw-cache-bust=0.3", SHELL, "text/html", sec_fetch_dest="empty", sec_fetch_mode="cors"
    )
    del flow.response.headers["content-length"]
    flow.request.timestamp_start += 5  # later than the one-a-second limit on the worker's signs
    return flow


async def test_the_worker_gets_the_hash_of_its_shell_with_the_observer_and_the_shell_with_it(addon_ctx):
    addon, tctx, _ = addon_ctx
    script = shop_flow(b"/ngsw-worker.js", b"/* worker */", "text/javascript", service_worker="script")
    await tctx.cycle(addon, script)
    page = shop_flow(b"/p/1", SHELL, "text/html", sec_fetch_dest="document", sec_fetch_mode="navigate")
    await tctx.cycle(addon, page)
    assert b'data-clickwatch-page="' in page.response.raw_content  # the page load's own token
    # The worker's copy gets the observer without a token: the same bytes for every page it will serve.
    observed = serviceworker.with_observer(SHELL, "text/html")
    assert observed is not None and b"data-clickwatch-worker" in observed and b"data-clickwatch-page" not in observed
    manifest = shop_flow(b"/ngsw.json?ngsw-cache-bust=0.1", ngsw(sha1(SHELL)), "application/json")
    await tctx.cycle(addon, manifest)
    assert json.loads(manifest.response.raw_content)["hashTable"] == {
        "/index.html": sha1(observed),
        "/main.js": "0" * 40,
    }
    fetch = shell_fetch()
    addon.responseheaders(fetch)
    assert not fetch.response.stream  # read whole: the worker checks its hash
    await tctx.cycle(addon, fetch)
    assert fetch.response.raw_content == observed
    # The worker's signs: its script (the first); none once its pages carry the observer.
    workers = [m for m in addon.link.sent if isinstance(m, wire.Worker)]
    assert [(w.url, w.evidence[:14]) for w in workers] == [("https://shop.example/ngsw-worker.js", "its script was")]
    assert addon.addon_errors == 0


async def test_a_worker_whose_shell_the_proxy_never_saw_on_a_page_load_gets_its_files_as_they_came(addon_ctx):
    addon, tctx, _ = addon_ctx
    manifest = shop_flow(b"/ngsw.json", ngsw(sha1(SHELL)), "application/json")
    await tctx.cycle(addon, manifest)
    assert manifest.response.raw_content == ngsw(sha1(SHELL))
    fetch = shell_fetch()
    await tctx.cycle(addon, fetch)
    assert fetch.response.raw_content == SHELL
    # ... and its signs keep coming (one a second at most): its pages carry no observer.
    workers = [m for m in addon.link.sent if isinstance(m, wire.Worker)]
    assert [w.url for w in workers] == ["https://shop.example/ngsw.json", "https://shop.example/index.html"]


async def test_a_new_build_the_proxy_cannot_observe_passes_as_it_came_and_the_workers_signs_resume(addon_ctx):
    addon, tctx, _ = addon_ctx
    page = shop_flow(b"/", SHELL, "text/html", sec_fetch_dest="document", sec_fetch_mode="navigate")
    await tctx.cycle(addon, page)
    first = shop_flow(b"/ngsw.json", ngsw(sha1(SHELL)), "application/json")
    await tctx.cycle(addon, first)
    assert first.response.raw_content != ngsw(sha1(SHELL))  # this build's pages carry the observer
    deployed = shop_flow(b"/ngsw.json", ngsw("a" * 40), "application/json")
    deployed.request.timestamp_start += 5
    await tctx.cycle(addon, deployed)
    assert deployed.response.raw_content == ngsw("a" * 40)
    fetch = shell_fetch()
    await tctx.cycle(addon, fetch)
    assert fetch.response.raw_content == SHELL
    workers = [m.url for m in addon.link.sent if isinstance(m, wire.Worker)]
    assert workers == ["https://shop.example/ngsw.json", "https://shop.example/ngsw.json"]


def token_request(origin: str, run: str = "run-7"):
    req = tutils.treq(method=b"POST", host="shop.example", port=443, scheme=b"https", path=b"/__clickwatch/page")
    req.headers["origin"] = origin
    req.headers["sec-fetch-site"] = "same-origin"
    req.headers["referer"] = "https://shop.example/p/1"
    req.headers["user-agent"] = "Mozilla/5.0 test"
    req.headers["proxy-authorization"] = basic(f"{run}:x".encode())
    return tflow.tflow(req=req)


async def test_a_page_from_the_workers_copy_gets_a_token_of_its_own_and_only_there(addon_ctx):
    addon, tctx, _ = addon_ctx
    before = token_request("https://shop.example")
    await tctx.cycle(addon, before)
    assert before.response.status_code == 403  # no worker serves this origin's pages with the observer (yet)
    await tctx.cycle(addon, shop_flow(b"/", SHELL, "text/html", sec_fetch_dest="document", sec_fetch_mode="navigate"))
    await tctx.cycle(addon, shop_flow(b"/ngsw.json", ngsw(sha1(SHELL)), "application/json"))
    asked = token_request("https://shop.example")
    await tctx.cycle(addon, asked)
    assert asked.response.status_code == 200
    token = json.loads(asked.response.content)["token"]
    page = addon.observer.grants.get(token)
    assert page is not None and (page.run, page.url, page.origin) == (
        "run-7",
        "https://shop.example/p/1",
        "https://shop.example",
    )
    forged = token_request("https://evil.example")
    await tctx.cycle(addon, forged)
    assert forged.response.status_code == 403
    assert addon.addon_errors == 0
