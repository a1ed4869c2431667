"""The diff page (`/diff?base=&new=`) and `GET /api/diff`: the table `clickwatch diff` prints; hostile names as text."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from markupsafe import escape
from playwright.sync_api import expect

from clickwatch.dashboard.models import DiffReport
from tests.dashboard.browser_fixtures import WatchedPage, chromium, serve_dashboard, settle, tab
from tests.dashboard.conftest import T0, StoreBuilder

__all__ = ["chromium", "tab"]

SCRIPT = "<script>window.__xss=1</script>"
IMG = '<img src=x onerror="window.__xss=2">'
HOSTILE_RUN = f"run{SCRIPT}"
HOSTILE_FIELD = f"f{IMG}"


def fill(store: StoreBuilder, run: str, *, extra: dict[str, object] | None = None, carts: int = 1) -> None:
    store.page(at=T0, consent="GIVEN", run=run)
    store.event(at=T0 + 1, schema="ProductView", body={"productSku": "1", **(extra or {})}, run=run)
    for i in range(carts):
        store.event(at=T0 + 2 + i, schema="AddedToCart", body={"productSku": "1", "productQty": 1}, run=run)


@pytest.fixture
def store(store_builder: Callable[..., StoreBuilder]) -> StoreBuilder:
    built = store_builder()
    fill(built, "base")
    fill(built, "same")
    fill(built, HOSTILE_RUN, extra={HOSTILE_FIELD: SCRIPT}, carts=0)
    built.close()
    return built


def test_api_diff_answers_the_report_as_its_model_says(
    store: StoreBuilder, client_for: Callable[..., TestClient]
) -> None:
    client = client_for(store.path)
    answer = client.get("/api/diff", params={"base": "base", "new": HOSTILE_RUN})
    assert answer.status_code == 200, answer.text
    report = DiffReport.model_validate(answer.json())
    assert report.regressed and report.regressions == 1
    rows = {row.schema_: row for row in report.schemas}
    assert [c.change for c in rows["AddedToCart"].changes] == ["schema_missing"]
    assert [(c.change, c.field) for c in rows["ProductView"].changes] == [("field_added", HOSTILE_FIELD)]
    same = client.get("/api/diff", params={"base": "base", "new": "same"}).json()
    assert same["regressed"] is False and all(row["changes"] == [] for row in same["schemas"])
    # fail_on as `clickwatch diff --fail-on` takes it.
    strict = client.get("/api/diff", params={"base": "base", "new": HOSTILE_RUN, "fail_on": "field_added"}).json()
    assert [c["change"] for row in strict["schemas"] for c in row["changes"] if c["regression"]] == ["field_added"]


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        ({"base": "base", "new": "nosuchrun"}, 404, "no run 'nosuchrun'"),
        ({"base": "base", "new": "same", "fail_on": "everything"}, 422, "fail_on: unknown everything"),
        ({"base": "base", "new": "same", "tolerance": "-1"}, 422, ""),
        ({"base": "base"}, 422, ""),
    ],
)
def test_api_diff_errors(
    store: StoreBuilder, client_for: Callable[..., TestClient], params: dict[str, str], status: int, message: str
) -> None:
    answer = client_for(store.path).get("/api/diff", params=params)
    assert answer.status_code == status, answer.text
    assert message in str(answer.json()["detail"])


def test_the_page_shows_the_table_with_hostile_names_escaped(
    store: StoreBuilder, client_for: Callable[..., TestClient]
) -> None:
    client = client_for(store.path)
    answer = client.get("/diff", params={"base": "base", "new": HOSTILE_RUN})
    assert answer.status_code == 200
    assert "script-src 'self'" in answer.headers["content-security-policy"]
    page = answer.text
    assert "Regressed" in page
    assert "schema_missing" in page and "field_added" in page
    for hostile in (SCRIPT, IMG):
        assert hostile not in page
    assert str(escape(HOSTILE_FIELD)) in page
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in page
    # The form offers the runs, the hostile one as text too.
    assert '<option value="base">' in page


def test_the_page_without_runs_named_and_with_an_unknown_run(
    store: StoreBuilder, client_for: Callable[..., TestClient]
) -> None:
    client = client_for(store.path)
    empty = client.get("/diff")
    assert empty.status_code == 200
    assert "Name two runs to compare" in empty.text
    unknown = client.get("/diff", params={"base": "base", "new": f"x{SCRIPT}"})
    assert unknown.status_code == 404
    assert SCRIPT not in unknown.text
    assert "no run &#39;x&lt;script&gt;" in unknown.text
    bad = client.get("/diff", params={"base": "base", "new": "same", "tolerance": "lots"})
    assert bad.status_code == 422 and "is not a number" in bad.text
    same = client.get("/diff", params={"base": "base", "new": "same"})
    assert same.status_code == 200 and "No change" in same.text


@pytest.mark.integration
def test_hostile_names_never_run_in_chromium(store: StoreBuilder, tab: WatchedPage) -> None:
    with serve_dashboard(store.path) as dashboard:
        page = tab.page
        page.goto(f"{dashboard.url}/diff?base=base&new={HOSTILE_RUN.replace('<', '%3C').replace('>', '%3E')}")
        expect(page.locator("#diff-verdict strong")).to_have_text("Regressed")
        expect(page.locator(".diff-table")).to_contain_text(HOSTILE_FIELD)
        expect(page.locator("#diff-verdict")).to_contain_text(HOSTILE_RUN)
        settle()
        assert page.evaluate("typeof window.__xss") == "undefined"
        assert page.locator("main img, main script").count() == 0
    assert tab.problems() == []
