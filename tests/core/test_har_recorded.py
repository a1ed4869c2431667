"""HAR import reads what the browser recorded (issue 21): a request without an answer is a failed delivery,
with the reason the browser wrote; the observer's reports the proxy accepted are read as live.

Playwright (1.65 measured) writes `status: -1` and `response._failureText`; Chromium's DevTools HAR export writes
`status: 0` and `response._error` (the request's failure description); `_error` on the entry is also read. The
entries below have those shapes; tests/e2e/test_har_roundtrip.py imports HARs Playwright really recorded through
`clickwatch up`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from clickwatch.core.har import observations
from clickwatch.core.matching import Patterns
from clickwatch.core.model import Answer, BrowserReport, StorefrontSeen
from clickwatch.store.importer import import_har
from clickwatch.store.schema import open_database

TENANT = "https://acme.api.us.context.cloud.sap"


def _entry(url: str, status: int, method: str = "POST", **response: Any) -> dict[str, Any]:
    return {
        "startedDateTime": "2026-11-27T08:00:00.000Z",
        "time": 6.99,
        "request": {
            "method": method,
            "url": url,
            "headers": [{"name": "hybris-schema", "value": "context/commerce/ProductView"}],
            "postData": {"mimeType": "application/json", "text": '{"productSku": "1"}'},
        },
        "response": {
            "status": status,
            "statusText": "",
            "headers": [],
            "content": {"size": -1, "mimeType": "x-unknown"},
            **response,
        },
    }


PLAYWRIGHT = _entry(f"{TENANT}/edge/clickstreamEvents", -1, _failureText="net::ERR_CONNECTION_REFUSED")
CHROMIUM = _entry(f"{TENANT}/edge/clickstreamEvents", 0, _error="net::ERR_NAME_NOT_RESOLVED")
OLD_CHROMIUM = {**_entry(f"{TENANT}/edge/clickstreamEvents", 0), "_error": "net::ERR_TIMED_OUT"}


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        (PLAYWRIGHT, "net::ERR_CONNECTION_REFUSED"),
        (CHROMIUM, "net::ERR_NAME_NOT_RESOLVED"),
        (OLD_CHROMIUM, "net::ERR_TIMED_OUT"),
        (_entry(f"{TENANT}/edge/clickstreamEvents", -1), "no response recorded (status 0 or -1)"),
    ],
)
def test_a_request_without_an_answer_is_an_answer_with_the_browsers_reason(entry: dict[str, Any], error: str) -> None:
    seen = observations({"log": {"entries": [entry]}}, "r", Patterns.compile())
    [answer] = [o for o in seen if isinstance(o, Answer)]
    assert answer.status_code is None and answer.error == error and answer.raw_body == b"" and answer.headers == ()


def test_a_failed_storefront_request_has_no_answer() -> None:
    # A missing font, as in the ten Playwright HARs: storefront traffic, recorded without an answer.
    font = _entry("https://shop.example/fonts/x.woff2", -1, method="GET", _failureText="net::ERR_ABORTED")
    [seen] = observations({"log": {"entries": [font]}}, "r", Patterns.compile())
    assert isinstance(seen, StorefrontSeen) and seen.response_at is None


def test_import_stores_failed_deliveries_with_their_reason(tmp_path: Path) -> None:
    font = _entry("https://shop.example/fonts/x.woff2", -1, method="GET", _failureText="net::ERR_ABORTED")
    har = tmp_path / "playwright.har"
    har.write_text(json.dumps({"log": {"entries": [font, PLAYWRIGHT, CHROMIUM]}}))
    result = import_har(str(har), str(tmp_path / "cw.db"))
    assert result.deliveries == 2 and result.storefront_requests == 1
    db = open_database(str(tmp_path / "cw.db"))
    try:
        rows = db.conn.execute("SELECT verdict, status_code, error FROM deliveries ORDER BY error").fetchall()
    finally:
        db.conn.close()
    assert [tuple(r) for r in rows] == [
        ("failed", None, "net::ERR_CONNECTION_REFUSED"),
        ("failed", None, "net::ERR_NAME_NOT_RESOLVED"),
    ]


def _observe(status: int, body: str) -> dict[str, Any]:
    entry = _entry("https://shop.example/__clickwatch/observe", status, _transferSize=100)
    entry["request"]["postData"] = {"mimeType": "text/plain;charset=UTF-8", "text": body}
    entry["request"]["headers"] = [{"name": "User-Agent", "value": "Chromium test"}]
    return entry


def test_observer_reports_the_proxy_accepted_are_read_and_clickwatch_traffic_is_no_storefront_traffic() -> None:
    page = _entry("https://shop.example/p/1", 200, method="GET")
    script = _entry("https://shop.example/__clickwatch/observer.js", 200, method="GET")
    accepted, flooded = _observe(204, '{"v": 1}'), _observe(429, '{"v": 2}')
    seen = observations({"log": {"entries": [page, script, accepted, flooded]}}, "r", Patterns.compile())
    assert [type(o).__name__ for o in seen] == ["StorefrontSeen", "BrowserReport"]
    [report] = [o for o in seen if isinstance(o, BrowserReport)]
    assert (report.run, report.user_agent, report.body) == ("r", "Chromium test", b'{"v": 1}')
