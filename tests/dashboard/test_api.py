"""The JSON API contract, against a real store filled through the real writer and Judge."""

from __future__ import annotations

import base64
import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from clickwatch.dashboard import models
from clickwatch.dashboard.main import InsecureListen, create_app
from clickwatch.dashboard.settings import DashboardSettings
from clickwatch.store import export
from tests.dashboard.conftest import T0, StoreBuilder

ITEM_FIELDS = {
    "id", "run", "kind", "verdict", "method", "url", "schema", "status_code", "duration_ms",
    "sent_at", "visitor", "consent", "findings",
}  # fmt: skip


@pytest.fixture
def filled(store_builder: Callable[..., StoreBuilder]) -> StoreBuilder:
    store = store_builder()
    store.page(at=T0, consent="GIVEN")
    store.event(at=T0 + 1)  # delivered
    store.event(at=T0 + 2, status=400, schema="AddedToCart", body={"productSku": "1", "productQty": 1})
    store.event(at=T0 + 3, status=None, error="connection reset", schema="KeywordSearch", body={"searchTerm": "x"})
    store.event(at=T0 + 4, schema="Bogus")  # unknown_schema
    store.event(at=T0 + 5, run="other", ua="Other browser")  # another run, consent unknown
    store.close()
    return store


@pytest.fixture
def client(filled: StoreBuilder, client_for: Callable[..., TestClient]) -> TestClient:
    return client_for(filled.path)


def test_healthz(client: TestClient) -> None:
    answer = client.get("/healthz")
    assert answer.status_code == 200
    assert answer.json()["status"] == "ok"


def test_healthz_is_503_without_a_store(tmp_path: Path, client_for: Callable[..., TestClient]) -> None:
    assert client_for(tmp_path / "missing.db").get("/healthz").status_code == 503


def test_deliveries_newest_first_with_the_contract_fields(client: TestClient) -> None:
    body = client.get("/api/deliveries").json()
    assert body["next"] is None
    items = body["items"]
    assert [i["sent_at"] for i in items] == sorted((i["sent_at"] for i in items), reverse=True)
    assert len(items) == 5
    for item in items:
        assert set(item) >= ITEM_FIELDS
        for finding in item["findings"]:
            assert {"kind", "severity", "message"} <= set(finding)
    by_schema = {i["schema"]: i for i in items if i["run"] == "default"}
    assert by_schema["context/commerce/ProductView"]["verdict"] == "delivered"
    assert by_schema["context/commerce/ProductView"]["consent"] == "given"
    assert by_schema["context/commerce/AddedToCart"]["status_code"] == 400
    assert by_schema["context/commerce/KeywordSearch"]["verdict"] == "failed"
    assert [f["kind"] for f in by_schema["context/commerce/Bogus"]["findings"]] == ["unknown_schema"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("verdict=delivered", 3),
        ("verdict=rejected", 1),
        ("verdict=failed", 1),
        ("kind=clickstream", 5),
        ("kind=tag", 0),
        ("schema=ProductView", 2),
        ("schema=context/commerce/AddedToCart", 1),
        ("finding=unknown_schema", 1),
        ("finding=consent_unknown", 1),
        ("run=other", 1),
        ("run=default", 4),
        (f"since={T0 + 2}", 4),
        (f"until={T0 + 2}", 2),
        ("since=2027-01-01T00:00:00Z", 0),
        ("since=2027-01-01T00:00:00", 0),
        ("since=1970-01-01T00:00:00%2B00:00", 5),
    ],
)
def test_each_filter(client: TestClient, query: str, expected: int) -> None:
    answer = client.get(f"/api/deliveries?{query}")
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["items"]) == expected


SQL_PAYLOADS = (
    "' OR 1=1 --",
    "default' OR '1'='1",
    '" OR ""="',
    "x'); DROP TABLE deliveries; --",
    "default' UNION SELECT * FROM deliveries --",
    "1; DELETE FROM deliveries",
)


@pytest.mark.parametrize("payload", SQL_PAYLOADS)
@pytest.mark.parametrize("param", ["run", "schema", "visitor"])
def test_sql_in_a_filter_matches_nothing_and_leaves_the_store_whole(
    client: TestClient, filled: StoreBuilder, param: str, payload: str
) -> None:
    before = client.get("/api/summary").json()
    rows = client.get("/api/deliveries").json()["items"]
    assert len(rows) == 5
    paths = ["/api/deliveries", "/api/summary", "/api/export?format=jsonl"]
    paths += ["/api/findings"] if param == "run" else []  # findings are filtered by run, not schema or visitor
    for path in paths:
        answer = client.get(path, params={param: payload})
        assert answer.status_code == 200, (path, answer.text)
        if path in ("/api/deliveries", "/api/findings"):
            assert answer.json()["items"] == []
        elif path == "/api/summary":
            assert sum(answer.json()["deliveries"].values()) == 0, answer.json()
            assert sum(answer.json()["findings"].values()) == 0, answer.json()
        else:
            assert answer.text.strip() == ""
    assert client.get("/api/summary").json() == before
    assert client.get("/api/deliveries").json()["items"] == rows


def test_visitor_filter(client: TestClient) -> None:
    items = client.get("/api/deliveries?run=other").json()["items"]
    visitor = items[0]["visitor"]
    assert len(client.get(f"/api/deliveries?visitor={visitor}").json()["items"]) == 1


def test_cursor_pages_through_everything_once(client: TestClient) -> None:
    seen: list[int] = []
    url = "/api/deliveries?limit=2"
    pages = 0
    while url:
        body = client.get(url).json()
        seen += [i["id"] for i in body["items"]]
        pages += 1
        url = f"/api/deliveries?limit=2&cursor={body['next']}" if body["next"] else ""
    assert pages == 3
    assert sorted(seen) == sorted(set(seen))
    assert len(seen) == 5


# Cursors no page ever handed out: non-finite or absurd times, ids SQLite cannot hold, deep nesting (as base64).
HOSTILE_CURSORS = {
    raw: base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
    for raw in (
        "[Infinity, 1]",
        "[NaN, 1]",
        "[-Infinity, 1]",
        "[1e300, 1]",
        "[1790000000.0, 1e300]",
        "[1790000000.0, -1]",
        f"[1790000000.0, {2**63}]",
        f"[{10**120}, 1]",
        '["x", 1]',
        "[" * 40 + "1" + "]" * 40,
    )
}


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=abc", "limit"),
        ("verdict=lost", "verdict"),
        ("kind=pixel", "kind"),
        ("finding=nope", "finding"),
        ("since=yesterday", "since"),
        ("until=nan", "until"),
        ("cursor=%%%", "cursor"),
        ("cursor=WzEsMl0", ""),  # a well-formed cursor for a position that simply has nothing after it
        ("since=Infinity", "since"),
        ("until=-Infinity", "until"),
        ("since=1e400", "since"),
        *((f"cursor={encoded}", "cursor") for encoded in HOSTILE_CURSORS.values()),
    ],
)
def test_bad_parameters_are_422_with_a_clear_detail(client: TestClient, query: str, fragment: str) -> None:
    answer = client.get(f"/api/deliveries?{query}")
    if not fragment:
        assert answer.status_code == 200
        return
    assert answer.status_code == 422, answer.text
    assert fragment in json.dumps(answer.json()["detail"])


def test_delivery_detail(client: TestClient) -> None:
    item = client.get("/api/deliveries?schema=ProductView&run=default").json()["items"][0]
    detail = client.get(f"/api/deliveries/{item['id']}").json()
    assert set(detail) >= ITEM_FIELDS
    assert json.loads(detail["request"]["body"]["text"]) == {"productSku": "1"}
    headers = dict(detail["request"]["headers"])
    assert headers["Authorization"] == "Bearer <redacted>"
    assert detail["response"]["headers"] == [["content-type", "application/json"]]
    assert detail["error"] is None
    failed = client.get("/api/deliveries?verdict=failed").json()["items"][0]
    failed_detail = client.get(f"/api/deliveries/{failed['id']}").json()
    assert failed_detail["response"] is None
    assert failed_detail["error"] == "connection reset"


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/deliveries/999999", 404),
        ("/api/deliveries/abc", 422),
        ("/api/deliveries/9223372036854775808", 422),
        ("/api/deliveries/-9223372036854775809", 422),
        (f"/api/deliveries/{10**400}", 422),
        ("/api/deliveries/1e300", 422),
        ("/api/deliveries/Infinity", 422),
    ],
)
def test_unknown_or_bad_delivery_id(client: TestClient, path: str, status: int) -> None:
    answer = client.get(path)
    assert answer.status_code == status
    if status == 422:
        assert "delivery_id" in json.dumps(answer.json()["detail"])


@pytest.mark.parametrize("path", ["/api/summary", "/api/deliveries", "/api/export", "/api/findings"])
@pytest.mark.parametrize("query", ["since=Infinity", "until=NaN", "since=-1e999"])
def test_non_finite_times_are_refused_everywhere(client: TestClient, path: str, query: str) -> None:
    answer = client.get(f"{path}?{query}")
    assert answer.status_code == 422
    assert query.split("=")[0] in json.dumps(answer.json()["detail"])


def test_summary(client: TestClient) -> None:
    body = client.get("/api/summary").json()
    assert body["healthy"] is False
    assert body["deliveries"] == {"delivered": 3, "rejected": 1, "failed": 1, "pending": 0}
    assert body["findings"]["unknown_schema"] == 1
    assert body["findings"]["consent_unknown"] == 1
    assert body["last_delivered_at"] == T0 + 5


def test_summary_filters_use_the_same_parameters(client: TestClient) -> None:
    other = client.get("/api/summary?run=other").json()
    assert other["deliveries"] == {"delivered": 1, "rejected": 0, "failed": 0, "pending": 0}
    assert other["healthy"] is True  # consent_unknown is a warning
    schema = client.get("/api/summary?schema=ProductView&run=default").json()
    assert schema["deliveries"]["delivered"] == 1
    assert client.get("/api/summary?verdict=bogus").status_code == 422


def test_visitors_and_timeline(client: TestClient) -> None:
    visitors = client.get("/api/visitors").json()["items"]
    assert {v["run"] for v in visitors} == {"default", "other"}
    default = next(v for v in visitors if v["run"] == "default")
    assert default["page_loads"] == 1
    assert default["consent"] == "given"
    timeline = client.get(f"/api/visitors/{default['visitor']}?run=default").json()["timeline"]
    assert [e["type"] for e in timeline][:2] == ["consent", "delivery"]
    assert timeline[0]["state"] == "given"
    assert client.get("/api/visitors/0000000000000000").status_code == 404


def test_export_formats(client: TestClient) -> None:
    har = client.get("/api/export?format=har")
    assert har.status_code == 200
    assert "attachment" in har.headers["content-disposition"]
    entries = har.json()["log"]["entries"]
    assert len(entries) == 5
    assert entries[0]["request"]["method"] == "POST"
    assert entries[0]["_clickwatch"]["verdict"] == "delivered"
    lines = client.get("/api/export?format=jsonl&run=default").text.splitlines()
    assert len(lines) == 4
    assert all(json.loads(line)["run"] == "default" for line in lines)
    rows = list(csv.DictReader(io.StringIO(client.get("/api/export?format=csv&verdict=rejected").text)))
    assert [r["status_code"] for r in rows] == ["400"]
    assert client.get("/api/export?format=xml").status_code == 422


def test_export_names_the_file_in_ascii_whatever_the_run(client: TestClient) -> None:
    answer = client.get("/api/export?format=csv&run=Ā-run")
    assert answer.status_code == 200
    assert answer.headers["content-disposition"] == 'attachment; filename="clickwatch-_-run.csv"'


def test_csv_export_defuses_formula_cells(store_builder: Callable[..., StoreBuilder], client_for) -> None:
    store = store_builder()
    store.event(at=T0, status=None, error='=HYPERLINK("http://evil.example")')
    store.close()
    [row] = list(csv.DictReader(io.StringIO(client_for(store.path).get("/api/export?format=csv").text)))
    assert row["error"] == '\'=HYPERLINK("http://evil.example")'


def test_reset_all_and_one_run(client: TestClient) -> None:
    assert client.post("/api/reset?run=other").json()["removed"] == 1
    assert len(client.get("/api/deliveries").json()["items"]) == 4
    assert client.get("/api/summary?run=other").json()["deliveries"]["delivered"] == 0
    assert client.post("/api/reset").json()["removed"] == 4
    body = client.get("/api/summary").json()
    assert body["deliveries"] == {"delivered": 0, "rejected": 0, "failed": 0, "pending": 0}
    assert all(n == 0 for n in body["findings"].values())
    assert client.get("/api/visitors").json()["items"] == []


@pytest.mark.parametrize(
    ("path", "model"),
    [
        ("/api/deliveries?limit=500", models.DeliveryPage),
        ("/api/findings?limit=500", models.FindingList),
        ("/api/visitors?limit=500", models.VisitorList),
        ("/api/visitors/{visitor}", models.Timeline),
        ("/api/deliveries/1", models.Delivery),
        ("/api/deliveries/3", models.Delivery),
        ("/api/summary", models.Summary),
        ("/api/funnel", models.Funnel),
        ("/healthz", models.Health),
    ],
)
def test_answers_are_what_their_model_says(client: TestClient, path: str, model: type[BaseModel]) -> None:
    """Strictly, and unchanged by it: the long lists skip validation at run time, so this holds them to it."""
    visitor = client.get("/api/visitors").json()["items"][-1]["visitor"]
    body = client.get(path.format(visitor=visitor)).json()
    parsed = model.model_validate_json(json.dumps(body), strict=True)
    assert parsed.model_dump(mode="json", by_alias=True) == body


def test_openapi_states_each_answer(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    visitor = paths["/api/visitors"]["get"]["responses"]
    assert visitor["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/VisitorList"}
    assert visitor["503"]["content"]["application/json"]["schema"]["required"] == ["detail"]
    schemas = spec["components"]["schemas"]
    assert schemas["DeliveryItem"]["additionalProperties"] is False
    assert "null" in [t.get("type") for t in schemas["DeliveryItem"]["properties"]["status_code"]["anyOf"]]
    assert set(paths["/api/export"]["get"]["responses"]["200"]["content"]) == set(export.FORMATS.values())
    assert "text/event-stream" in paths["/api/stream"]["get"]["responses"]["200"]["content"]
    assert "/metrics" in paths


def test_openapi_documents_the_contract(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/healthz", "/api/deliveries", "/api/deliveries/{delivery_id}", "/api/summary", "/api/visitors",
        "/api/visitors/{visitor}", "/api/stream", "/api/reset", "/api/export",
    ):  # fmt: skip
        assert path in paths


def test_non_loopback_listen_requires_a_token(tmp_path: Path) -> None:
    with pytest.raises(InsecureListen, match="access token"):
        create_app(DashboardSettings(db=str(tmp_path / "x.db"), listen_host="0.0.0.0"))


def test_token_protects_everything_but_healthz(filled: StoreBuilder, client_for) -> None:
    client = client_for(filled.path, listen_host="0.0.0.0", token="s3cret-token")
    assert client.get("/healthz").status_code == 200
    assert client.get("/api/deliveries").status_code == 401
    assert client.get("/api/deliveries", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/deliveries", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
    assert client.get("/api/summary", headers={"X-Clickwatch-Token": "s3cret-token"}).status_code == 200
    assert client.get("/openapi.json").status_code == 401
    page = client.get("/", follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"].startswith("/login")


def test_a_foreign_host_is_refused_without_a_token(client: TestClient) -> None:
    """DNS rebinding: a page on attacker.example resolving to 127.0.0.1 must not read captured data."""
    answer = client.get("/api/deliveries", headers={"Host": "attacker.example:8000"})
    assert answer.status_code == 421
    assert client.get("/api/deliveries", headers={"Host": "localhost:8000"}).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example", "Content-Type": "text/plain"},
        {"Sec-Fetch-Site": "cross-site"},
    ],
)
def test_cross_site_writes_are_refused(client: TestClient, headers: dict[str, str]) -> None:
    answer = client.post("/api/reset", headers=headers)
    assert answer.status_code == 403
    assert len(client.get("/api/deliveries").json()["items"]) == 5


def test_same_origin_and_script_writes_are_allowed(client: TestClient) -> None:
    assert client.post("/api/reset?run=other", headers={"Origin": "http://127.0.0.1:8000"}).status_code == 200
    assert client.post("/api/reset?run=other").status_code == 200
