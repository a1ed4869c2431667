"""The evidence bundle where people open it: its HTML report from a file:// URL in a real headless Chromium (no
script runs, nothing is fetched), and the dashboard's download (the API route and the live page's link)."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import expect

from clickwatch.store import report
from tests.dashboard.browser_fixtures import WatchedPage, chromium, serve_dashboard, settle, tab
from tests.dashboard.conftest import StoreBuilder
from tests.store.test_bundle import (
    HOSTILE_PUSH,
    HOSTILE_RUN,
    HOSTILE_SCHEMA,
    HOSTILE_UA,
    SECRET_COOKIE,
    SECRET_TOKEN,
    build,
    hostile_store,
)

__all__ = ["chromium", "tab"]

TITLE = f"clickwatch evidence: run {HOSTILE_RUN}"
HOSTILE_ELEMENTS = "script, img, svg, iframe, object, embed"


@pytest.fixture
def hostile(store_builder: Callable[..., StoreBuilder]) -> StoreBuilder:
    return hostile_store(store_builder)


def _open(tab: WatchedPage, path: Path) -> list[str]:
    """Open a file in the tab; the URL of every request the page made."""
    requests: list[str] = []
    tab.page.on("request", lambda request: requests.append(request.url))
    tab.page.goto(path.as_uri())
    settle(0.5)
    return requests


def test_the_report_opened_from_a_file_runs_no_script_and_fetches_nothing(
    hostile: StoreBuilder, tab: WatchedPage, tmp_path: Path
) -> None:
    data, _ = build(hostile.path, HOSTILE_RUN)
    path = tmp_path / "report.html"
    path.write_bytes(zipfile.ZipFile(io.BytesIO(data)).read("report.html"))

    requests = _open(tab, path)

    page = tab.page
    assert requests == [path.as_uri()]
    assert page.title() == TITLE  # no payload set it
    assert page.evaluate("typeof window.__xss") == "undefined"
    assert page.locator(HOSTILE_ELEMENTS).count() == 0
    assert tab.problems() == []  # a blocked script or a refused load would be reported here
    # The payloads are on the page as text, and the page is styled (its own style block passed the policy).
    for payload in (HOSTILE_RUN, HOSTILE_SCHEMA, HOSTILE_PUSH, HOSTILE_UA):
        expect(page.get_by_text(payload).first).to_be_attached()
    expect(page.locator(".verdict")).to_have_text("UNHEALTHY")
    assert page.locator("section").first.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(255, 255, 255)"
    body = page.locator("body").inner_text()
    assert SECRET_TOKEN not in body and SECRET_COOKIE not in body


def test_the_title_check_catches_a_payload_that_runs_and_the_policy_stops_it(tab: WatchedPage, tmp_path: Path) -> None:
    """The checks above have teeth: the same payload, unescaped, runs on a page without the report's policy
    and does not run on a page with it (the policy holds even if escaping ever failed)."""
    payload = "<img src=x onerror=\"document.title='pwned'\">"
    bare = tmp_path / "bare.html"
    bare.write_text(f"<!doctype html><title>t</title>{payload}")
    _open(tab, bare)
    assert tab.page.title() == "pwned"

    policy = report._environment().globals["csp"]
    guarded = tmp_path / "guarded.html"
    guarded.write_text(
        f'<!doctype html><meta http-equiv="Content-Security-Policy" content="{policy}"><title>t</title>{payload}'
    )
    requests = _open(tab, guarded)
    assert tab.page.title() == "t"
    # The request count sees even a load the policy refused: the report's one request is not for want of looking.
    assert requests == [guarded.as_uri(), (tmp_path / "x").as_uri()]
    assert any("Content Security Policy" in problem for problem in tab.problems())


# --- the dashboard's download ---------------------------------------------------------------------------------


def test_the_api_answers_the_bundle_as_a_zip(hostile: StoreBuilder, client_for: Callable[..., TestClient]) -> None:
    client = client_for(hostile.path)
    answer = client.get("/api/export/bundle", params={"run": HOSTILE_RUN})
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/zip"
    assert answer.headers["content-disposition"].startswith("attachment; filename=")
    assert "<" not in answer.headers["content-disposition"]
    archive = zipfile.ZipFile(io.BytesIO(answer.content))
    assert archive.testzip() is None
    assert json.loads(archive.read("manifest.json"))["run"] == HOSTILE_RUN

    unknown = client.get("/api/export/bundle", params={"run": "nope"})
    assert unknown.status_code == 404
    assert unknown.json() == {"detail": "no run 'nope' in this store"}
    assert client.get("/api/export/bundle").status_code == 422


def test_the_api_says_503_when_the_store_cannot_be_read(tmp_path: Path, client_for: Callable[..., TestClient]) -> None:
    answer = client_for(tmp_path / "absent.db").get("/api/export/bundle", params={"run": "x"})
    assert answer.status_code == 503


def test_the_live_page_offers_the_bundle_of_its_run_for_download(hostile: StoreBuilder, tab: WatchedPage) -> None:
    page = tab.page
    with serve_dashboard(hostile.path) as dashboard:
        page.goto(f"{dashboard.url}/?run={quote(HOSTILE_RUN)}")
        link = page.locator("#bundle-download")
        expect(link).to_contain_text(HOSTILE_RUN)
        with page.expect_download() as info:
            link.click()
        download = info.value
        archive = zipfile.ZipFile(download.path())
        manifest = json.loads(archive.read("manifest.json"))
        assert manifest["run"] == HOSTILE_RUN
        assert manifest["counts"]["deliveries"] == 5
        assert download.suggested_filename.endswith("-evidence.zip")

        # Without a run filter, the bundle offered is that of the newest delivery's run.
        page.goto(f"{dashboard.url}/")
        expect(page.locator("#bundle-download")).to_contain_text("other")
        assert page.evaluate("typeof window.__xss") == "undefined"
    assert [p for p in tab.problems() if "Content Security Policy" in p] == []
