"""What the data-layer observer saw, through the API and the pages: pushes, their deliveries, the funnel, the check.

The store is filled through the real writer, pipeline and Judge (observer reports, clickstream calls, answers).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from clickwatch.cli.check import gather, parse_fail_on
from clickwatch.cli.sources import ApiSource, StoreSource
from clickwatch.core.model import Kind
from clickwatch.dashboard.pages.common import CSP
from tests.dashboard.browser_fixtures import serve_dashboard
from tests.dashboard.conftest import T0, StoreBuilder

OTHER_UA = "Mozilla/5.0 other-run browser"
HOSTILE_NAME = "<script>window.__xss=1</script><img src=x onerror=alert(2)>"
HOSTILE_DATA = {"productSku": "<svg onload=alert(3)>", "note": "</div><script>alert(4)</script>"}


@pytest.fixture
def observed(store_builder: Callable[..., StoreBuilder]) -> StoreBuilder:
    store = store_builder()
    store.page(at=T0, consent="GIVEN")
    # A page whose observer reports consent, then a product page view the tag sends and the tenant takes.
    store.observe(
        at=T0 + 1,
        events=[
            {"type": "page", "before": 0.5},
            {"type": "push", "name": "ConsentChanged", "data": {"granted": True}},
            {"type": "push", "name": "ProductDetailsPageViewed", "data": {"productSku": "300938"}},
        ],
    )
    store.event(at=T0 + 1.2, body={"productSku": "300938"})
    store.push("AddedToCart", {"productSku": "1", "productQty": 1}, at=T0 + 2)  # never sent: event_not_sent
    store.push("KeywordSearch", {"searchTerm": "shoes"}, at=T0 + 3)
    store.event(at=T0 + 3.1, schema="KeywordSearch", body={"searchTerm": "shoes"}, status=400)  # sent, rejected
    store.event(at=T0 + 4, schema="CategoryView", body={"productCategory": "576"})  # sent without a push
    store.push("HomePageViewed", {"page": "home"}, at=T0 + 5)  # the tag sends nothing for it
    store.observe(at=T0 + 5.5, events=[{"type": "navigation", "how": "pushState", "url": "/c/576"}])
    # Another run, another browser: consent withdrawn, a product page view the tag rightly does not send.
    store.push("ProductDetailsPageViewed", {"productSku": "2"}, at=T0 + 6, consent=False, run="other", ua=OTHER_UA)
    store.close()
    return store


@pytest.fixture
def client(observed: StoreBuilder, client_for: Callable[..., TestClient]) -> TestClient:
    return client_for(observed.path)


def visitor_of(client: TestClient, run: str = "default") -> str:
    visitors = client.get("/api/visitors", params={"run": run}).json()["items"]
    assert len(visitors) == 1
    return str(visitors[0]["visitor"])


def by_schema(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {i["schema_name"]: i for i in items}


# --- deliveries carry pushed_at ------------------------------------------------------------------------------


def test_every_delivery_carries_pushed_at(client: TestClient) -> None:
    items = by_schema(client.get("/api/deliveries").json()["items"])
    assert set(items) == {"ProductView", "KeywordSearch", "CategoryView"}
    assert all("pushed_at" in item for item in items.values())
    assert items["ProductView"]["pushed_at"] == pytest.approx(T0 + 1)
    assert items["KeywordSearch"]["pushed_at"] == pytest.approx(T0 + 3)
    assert items["CategoryView"]["pushed_at"] is None  # no push matched
    detail = client.get(f"/api/deliveries/{items['ProductView']['id']}").json()
    assert detail["pushed_at"] == pytest.approx(T0 + 1)
    assert client.get(f"/api/deliveries/{items['CategoryView']['id']}").json()["pushed_at"] is None
    timeline = client.get(f"/api/visitors/{visitor_of(client)}").json()["timeline"]
    deliveries = by_schema([e for e in timeline if e["type"] == "delivery"])
    assert deliveries["ProductView"]["pushed_at"] == pytest.approx(T0 + 1)
    assert deliveries["CategoryView"]["pushed_at"] is None


def test_exports_carry_pushed_at(client: TestClient) -> None:
    entries = client.get("/api/export?format=har").json()["log"]["entries"]
    har = {e["_clickwatch"]["id"]: e["_clickwatch"]["pushed_at"] for e in entries}
    rows = list(csv.DictReader(io.StringIO(client.get("/api/export?format=csv").text)))
    items = by_schema(client.get("/api/deliveries").json()["items"])
    product, category = items["ProductView"], items["CategoryView"]
    assert har[product["id"]] == pytest.approx(T0 + 1) and har[category["id"]] is None
    by_id = {int(r["id"]): r["pushed_at"] for r in rows}
    assert float(by_id[product["id"]]) == pytest.approx(T0 + 1) and by_id[category["id"]] == ""


def test_streamed_deliveries_carry_pushed_at(observed: StoreBuilder) -> None:
    with serve_dashboard(observed.path) as dashboard, httpx.Client(timeout=10, trust_env=False) as http:
        items: list[dict[str, Any]] = []
        with http.stream("GET", f"{dashboard.url}/api/stream", params={"after": 0}) as answer:
            assert answer.status_code == 200
            for line in answer.iter_lines():
                if line.startswith("data:"):
                    items.append(json.loads(line[5:]))
                if len(items) == 3:
                    break
    streamed = by_schema(items)
    assert streamed["ProductView"]["pushed_at"] == pytest.approx(T0 + 1)
    assert streamed["KeywordSearch"]["pushed_at"] == pytest.approx(T0 + 3)
    assert streamed["CategoryView"]["pushed_at"] is None


# --- a visitor's pushes ----------------------------------------------------------------------------------------


def test_visitor_lists_its_pushes_in_time_order_with_their_deliveries(client: TestClient) -> None:
    body = client.get(f"/api/visitors/{visitor_of(client)}").json()
    pushes = body["pushes"]
    assert [(p["type"], p["name"]) for p in pushes] == [
        ("page", ""),
        ("push", "ConsentChanged"),
        ("push", "ProductDetailsPageViewed"),
        ("push", "AddedToCart"),
        ("push", "KeywordSearch"),
        ("push", "HomePageViewed"),
        ("navigation", "pushState"),
    ]
    assert [p["at"] for p in pushes] == sorted(p["at"] for p in pushes)
    for push in pushes:
        assert {
            "id", "run", "page", "at", "type", "name", "schema_name", "consent", "data", "early", "truncated",
            "delivery_uid", "delivery_id", "outcome",
        } <= set(push)  # fmt: skip
        assert push["run"] == "default"
        assert push["page"] == "page-0001"
    named = {p["name"]: p for p in pushes}
    deliveries = by_schema(client.get("/api/deliveries").json()["items"])

    product = named["ProductDetailsPageViewed"]
    assert product["schema_name"] == "ProductView"
    assert product["consent"] == "given"
    assert product["data"] == {"productSku": "300938"}  # parsed, not JSON text
    assert product["delivery_id"] == deliveries["ProductView"]["id"]
    assert product["delivery_uid"] is not None
    assert product["outcome"] == "sent"
    assert named["KeywordSearch"]["delivery_id"] == deliveries["KeywordSearch"]["id"]

    not_sent = named["AddedToCart"]
    assert (not_sent["delivery_id"], not_sent["delivery_uid"], not_sent["outcome"]) == (None, None, "not_sent")
    # The finding that says so is on the timeline, about the visitor, at the moment of the push.
    [finding] = [e for e in body["timeline"] if e["type"] == "finding" and e["kind"] == "event_not_sent"]
    assert finding["at"] == not_sent["at"]
    assert finding["severity"] == "error"
    assert "AddedToCart" in finding["message"]

    for unmapped in ("ConsentChanged", "HomePageViewed"):
        assert named[unmapped]["schema_name"] is None
        assert named[unmapped]["outcome"] is None
    assert named["pushState"]["data"] == "/c/576"
    assert named[""]["type"] == "page"


def test_a_push_without_consent_is_withheld(client: TestClient) -> None:
    body = client.get(f"/api/visitors/{visitor_of(client, 'other')}", params={"run": "other"}).json()
    product = next(p for p in body["pushes"] if p["name"] == "ProductDetailsPageViewed")
    assert product["consent"] == "absent"  # granted:false with no granted:true before it: not given
    assert product["outcome"] == "withheld"
    assert not [e for e in body["timeline"] if e["type"] == "finding" and e["kind"] == "event_not_sent"]
    # The run filter keeps the other run's pushes out.
    default = client.get(f"/api/visitors/{visitor_of(client)}", params={"run": "other"})
    assert default.status_code == 404


def test_a_visitor_without_observer_has_no_pushes(store_builder: Callable[..., StoreBuilder], client_for) -> None:
    store = store_builder()
    store.page(at=T0)
    store.event(at=T0 + 1)
    store.close()
    client = client_for(store.path)
    body = client.get(f"/api/visitors/{visitor_of(client)}").json()
    assert body["pushes"] == []
    assert [e["pushed_at"] for e in body["timeline"] if e["type"] == "delivery"] == [None]


# --- the funnel ------------------------------------------------------------------------------------------------


def test_funnel_of_all_runs(client: TestClient) -> None:
    assert client.get("/api/funnel").json() == {
        "run": None,
        "schemas": [
            {"schema": "AddedToCart", "pushed": 1, "pushed_with_consent": 1, "sent": 0, "delivered": 0},
            {"schema": "CategoryView", "pushed": 0, "pushed_with_consent": 0, "sent": 1, "delivered": 1},
            {"schema": "KeywordSearch", "pushed": 1, "pushed_with_consent": 1, "sent": 1, "delivered": 0},
            {"schema": "ProductView", "pushed": 2, "pushed_with_consent": 1, "sent": 1, "delivered": 1},
        ],
    }


def test_funnel_of_one_run(client: TestClient) -> None:
    other = client.get("/api/funnel", params={"run": "other"}).json()
    assert other == {
        "run": "other",
        "schemas": [{"schema": "ProductView", "pushed": 1, "pushed_with_consent": 0, "sent": 0, "delivered": 0}],
    }
    default = {s["schema"]: s for s in client.get("/api/funnel?run=default").json()["schemas"]}
    assert default["ProductView"] == {
        "schema": "ProductView", "pushed": 1, "pushed_with_consent": 1, "sent": 1, "delivered": 1,
    }  # fmt: skip
    assert client.get("/api/funnel", params={"run": "no such run"}).json() == {"run": "no such run", "schemas": []}
    assert client.get("/api/funnel", params={"run": "x" * 201}).status_code == 422


def test_funnel_counts_every_verdict_as_sent(store_builder: Callable[..., StoreBuilder], client_for) -> None:
    store = store_builder()
    store.page(at=T0, consent="GIVEN")
    store.event(at=T0 + 1)
    store.event(at=T0 + 2, status=500)
    store.event(at=T0 + 3, status=None, error="reset")
    store.event(at=T0 + 4, status=None)  # never answered: pending until the writer closes (then failed)
    store.event(at=T0 + 5, kind=Kind.TAG, path="/tag.js")  # not a clickstream event: not in the funnel
    store.close()
    [product] = client_for(store.path).get("/api/funnel").json()["schemas"]
    assert product == {"schema": "ProductView", "pushed": 0, "pushed_with_consent": 0, "sent": 4, "delivered": 1}


def test_funnel_after_a_reset(observed: StoreBuilder, client_for: Callable[..., TestClient]) -> None:
    client = client_for(observed.path)
    assert client.post("/api/reset", params={"run": "other"}).status_code == 200
    assert [s["schema"] for s in client.get("/api/funnel?run=other").json()["schemas"]] == []
    product = {s["schema"]: s for s in client.get("/api/funnel").json()["schemas"]}["ProductView"]
    assert (product["pushed"], product["pushed_with_consent"]) == (1, 1)
    assert client.post("/api/reset").status_code == 200
    assert client.get("/api/funnel").json() == {"run": None, "schemas": []}


def test_funnel_of_an_empty_store(store_builder: Callable[..., StoreBuilder], client_for) -> None:
    store = store_builder()
    store.close()
    client = client_for(store.path)
    assert client.get("/api/funnel").json() == {"run": None, "schemas": []}
    assert client.get("/api/funnel?run=default").json() == {"run": "default", "schemas": []}


# --- summary and check count findings about a visitor -------------------------------------------------------------


def test_summary_counts_event_not_sent(client: TestClient) -> None:
    whole = client.get("/api/summary").json()
    assert whole["findings"]["event_not_sent"] == 1
    assert whole["findings"]["event_without_push"] == 1
    assert whole["severities"]["error"] == 1
    assert whole["healthy"] is False  # the rejected KeywordSearch, and the push never sent
    # A time or visitor filter still counts findings about a visitor (by their own time) ...
    since = client.get("/api/summary", params={"since": T0 + 1.5}).json()
    assert since["findings"]["event_not_sent"] == 1
    assert since["severities"]["error"] == 1
    visitor = client.get("/api/summary", params={"visitor": visitor_of(client)}).json()
    assert visitor["findings"]["event_not_sent"] == 1
    later = client.get("/api/summary", params={"since": T0 + 2.5}).json()
    assert later["findings"]["event_not_sent"] == 0
    # ... a filter on what only deliveries have (kind, verdict, schema, finding) does not.
    clickstream = client.get("/api/summary", params={"kind": "clickstream"}).json()
    assert clickstream["findings"]["event_not_sent"] == 0
    assert clickstream["findings"]["event_without_push"] == 1
    assert client.get("/api/summary?run=default").json()["findings"]["event_not_sent"] == 1
    assert client.get("/api/summary?run=other").json()["findings"]["event_not_sent"] == 0


def test_findings_can_be_asked_for_about_visitors_only(client: TestClient) -> None:
    loose = client.get("/api/findings", params={"visitor_level": "true"}).json()["items"]
    assert loose and all(f["delivery_id"] is None for f in loose)
    assert "event_not_sent" in {f["kind"] for f in loose}
    attached = client.get("/api/findings", params={"visitor_level": "false"}).json()["items"]
    assert attached and all(f["delivery_id"] is not None for f in attached)
    everything = client.get("/api/findings").json()["items"]
    assert len(everything) == len(loose) + len(attached)


def _event_not_sent_reasons(source: Any, filters: dict[str, Any]) -> list[str]:
    report = gather(source, filters, parse_fail_on("event_not_sent"), [])
    return [r for r in report.reasons if r.startswith("event_not_sent")]


def test_check_fails_on_a_push_never_sent_from_the_store_and_the_api(observed: StoreBuilder) -> None:
    store = StoreSource(str(observed.path))
    for filters in ({}, {"run": "default"}, {"since": T0}):
        assert len(_event_not_sent_reasons(store, filters)) == 1, filters
    assert _event_not_sent_reasons(store, {"run": "other"}) == []
    report = gather(store, {}, parse_fail_on("rejected,failed,error"), [])
    assert not report.healthy
    assert any(r.startswith("event_not_sent: the storefront pushed AddedToCart") for r in report.reasons)
    with serve_dashboard(observed.path) as dashboard:
        api = ApiSource(dashboard.url)
        assert len(_event_not_sent_reasons(api, {"since": T0})) == 1
        assert len(_event_not_sent_reasons(api, {})) == 1


def test_check_finds_a_push_never_sent_behind_many_newer_findings(
    store_builder: Callable[..., StoreBuilder],
) -> None:
    # More delivery findings than one page of findings (500), all newer than the visitor's one.
    store = store_builder()
    store.page(at=T0, consent="GIVEN")
    store.push("AddedToCart", {"productSku": "1", "productQty": 1}, at=T0 + 1, consent=True)
    for n in range(520):
        store.event(at=T0 + 10 + n / 100, schema="Bogus", body={"n": n})  # unknown_schema each
    store.close()
    source = StoreSource(str(store.path))
    assert source.summary()["findings"]["unknown_schema"] == 520
    assert len(_event_not_sent_reasons(source, {})) == 1
    assert len(_event_not_sent_reasons(source, {"since": T0})) == 1


# --- pages -----------------------------------------------------------------------------------------------------


def assert_page(answer: httpx.Response) -> str:
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-security-policy"] == CSP
    html = answer.text
    assert re.findall(r"<script(?![^>]*\ssrc=)", html) == []
    return html


def test_visitor_page_weaves_pushes_consent_and_deliveries_in_time_order(client: TestClient) -> None:
    visitor = visitor_of(client)
    body = client.get(f"/api/visitors/{visitor}").json()
    html = assert_page(client.get(f"/visitors/{visitor}"))
    timeline = html[html.index('<ol class="timeline">') :]
    entries = re.findall(r'<li class="tl ([^"]*)"', timeline)
    assert len(entries) == len(body["timeline"]) + len(body["pushes"])
    # In time order: page, ConsentChanged, the push of the product view, the data-layer consent, its delivery ...
    order = re.findall(r'id="(push-\d+|delivery-\d+)"|<span class="consent-source">([^<]*)</span>', timeline)
    flat = [a or f"consent:{b}" for a, b in order]
    named = {p["name"]: p for p in body["pushes"]}
    deliveries = by_schema([e for e in body["timeline"] if e["type"] == "delivery"])
    product = f"push-{named['ProductDetailsPageViewed']['id']}"
    product_delivery = f"delivery-{deliveries['ProductView']['id']}"
    assert flat.index("consent:cookie anonymous-consents") < flat.index(product)
    assert flat.index(product) < flat.index("consent:data layer") < flat.index(product_delivery)
    assert flat.index(product_delivery) < flat.index(f"push-{named['AddedToCart']['id']}")
    # Each delivery links to its push, each mapped push to its delivery; the one never sent says so.
    assert f'href="#{product}">pushed as ProductDetailsPageViewed</a>' in timeline
    assert f'href="#{product_delivery}">sent as delivery {deliveries["ProductView"]["id"]}</a>' in timeline
    not_sent = timeline[timeline.index(f'id="push-{named["AddedToCart"]["id"]}"') :]
    assert re.search(r'class="push-outcome push-not-sent"[^>]*>not sent</span>', not_sent.split("</li>")[0])
    assert "tl-outcome-not_sent" in timeline
    assert '<span class="consent-source">data layer</span>' in timeline
    assert "&#34;productSku&#34;: &#34;300938&#34;" in timeline  # the push's data, as text
    assert '<span class="push-name">pushState</span> <span class="mono small">/c/576</span>' in timeline


def test_visitor_page_marks_a_push_without_consent(client: TestClient) -> None:
    html = assert_page(client.get(f"/visitors/{visitor_of(client, 'other')}?run=other"))
    assert 'class="push-outcome push-withheld"' in html
    assert "not sent, no consent" in html
    assert '<span class="consent-source">data layer</span>' in html


def test_delivery_page_names_its_push(client: TestClient) -> None:
    deliveries = by_schema(client.get("/api/deliveries").json()["items"])
    html = assert_page(client.get(f"/deliveries/{deliveries['ProductView']['id']}"))
    assert re.search(r'#push-\d+">ProductDetailsPageViewed</a>', html)
    assert "none matched" in assert_page(client.get(f"/deliveries/{deliveries['CategoryView']['id']}"))


def test_live_page_draws_the_funnel_of_its_run(client: TestClient) -> None:
    html = assert_page(client.get("/"))
    funnel = html[html.index('<section id="funnel"') : html.index("</section>", html.index('<section id="funnel"'))]
    assert 'data-run=""' in funnel
    assert "all runs" in funnel
    rows = re.findall(r'<tr data-schema="([^"]*)">', funnel)
    assert rows == ["AddedToCart", "CategoryView", "KeywordSearch", "ProductView"]
    product = funnel[funnel.index('<tr data-schema="ProductView">') :]
    assert '<td class="num" data-step="pushed">2</td>' in product
    assert '<td class="num" data-step="pushed_with_consent">1</td>' in product
    assert '<td class="num" data-step="sent">1</td>' in product
    assert '<td class="num" data-step="delivered">1</td>' in product
    # Bars scaled to the longest step (2 pushes): 2 -> 100 %, 1 -> 50 %.
    assert re.search(r'class="bar bar-pushed"[^>]*width="100"', product)
    assert re.search(r'class="bar bar-sent"[^>]*width="50"', product)
    assert 'id="funnel-empty" class="empty small" hidden' in funnel

    other = assert_page(client.get("/?run=other"))
    funnel = other[other.index('<section id="funnel"') :]
    assert 'data-run="other"' in funnel
    assert re.findall(r'<tr data-schema="([^"]*)">', funnel) == ["ProductView"]


def test_live_page_without_anything_says_so(store_builder: Callable[..., StoreBuilder], client_for) -> None:
    store = store_builder()
    store.close()
    html = assert_page(client_for(store.path).get("/"))
    assert '<tbody id="funnel-rows">' in html
    assert re.search(r'<p id="funnel-empty" class="empty small" >', html)


def test_hostile_pushes_and_schemas_are_escaped(store_builder: Callable[..., StoreBuilder], client_for) -> None:
    store = store_builder()
    store.page(at=T0, consent="GIVEN")
    store.push(HOSTILE_NAME, HOSTILE_DATA, at=T0 + 1, consent=True, page="page-evil-1")
    store.observe(at=T0 + 2, events=[{"type": "navigation", "how": "pushState", "url": "/<script>alert(5)</script>"}])
    store.event(at=T0 + 3, schema="<img src=x onerror=alert(6)>")
    store.close()
    client = client_for(store.path)
    visitor = visitor_of(client)
    pushes = client.get(f"/api/visitors/{visitor}").json()["pushes"]
    assert pushes[1]["name"] == HOSTILE_NAME
    assert pushes[1]["data"] == HOSTILE_DATA
    for path in (f"/visitors/{visitor}", "/"):
        html = assert_page(client.get(path))
        for raw in ("<script>window", "<img src=x", "<svg onload", "</div><script>", "<script>alert"):
            assert raw not in html, f"{raw!r} unescaped on {path}"
    html = client.get(f"/visitors/{visitor}").text
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in html
    assert "&lt;svg onload=alert(3)&gt;" in html
    assert "/&lt;script&gt;alert(5)&lt;/script&gt;" in html
    assert 'data-schema="&lt;img src=x onerror=alert(6)&gt;"' in client.get("/").text


def test_openapi_documents_the_funnel_and_the_findings_filter(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert "/api/funnel" in spec["paths"]
    names = [p["name"] for p in spec["paths"]["/api/funnel"]["get"]["parameters"]]
    assert names == ["run"]
    assert "visitor_level" in [p["name"] for p in spec["paths"]["/api/findings"]["get"]["parameters"]]


def test_a_push_sent_as_a_rejected_delivery_says_so_and_the_page_answers_both_questions(client: TestClient) -> None:
    visitor = visitor_of(client)
    body = client.get(f"/api/visitors/{visitor}").json()
    deliveries = by_schema([e for e in body["timeline"] if e["type"] == "delivery"])
    html = assert_page(client.get(f"/visitors/{visitor}"))
    rejected, delivered = deliveries["KeywordSearch"]["id"], deliveries["ProductView"]["id"]
    assert (
        f'<a class="push-outcome push-sent push-sent-rejected" href="#delivery-{rejected}">'
        f"sent as delivery {rejected}: rejected</a>"
    ) in html
    assert f'<a class="push-outcome push-sent" href="#delivery-{delivered}">sent as delivery {delivered}</a>' in html
    # "Delivered?" and "with consent?", each answered.
    delivered_answer = html[html.index('id="answer-delivered"') : html.index('id="answer-consent"')]
    assert "Were its tracking calls delivered?" in delivered_answer
    assert "<strong>No: 1 of 3 calls not delivered</strong> — rejected (400) x1." in delivered_answer
    assert "Did this browser track before consent?" in html[html.index('id="answer-consent"') :]
