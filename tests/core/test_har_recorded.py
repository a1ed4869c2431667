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
from clickwatch.core.model import Answer, BrowserReport, ObserverRejected, StorefrontSeen
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


TOKEN = "AAAAAAAAAAAAAAAAAAAAAA"  # 22 characters, as core.observer.new_token makes them
SHOP = "https://shop.example"
UA = "Chromium test"


def _page(token: str = TOKEN, started: str = "2026-11-27T08:00:00.000Z") -> dict[str, Any]:
    """A storefront page the proxy added the observer to, with its token."""
    body = f'<html><head><script src="/__clickwatch/observer.js" data-clickwatch-page="{token}"></script></head>'
    return {
        "startedDateTime": started,
        "time": 20,
        "request": {
            "method": "GET",
            "url": f"{SHOP}/p/1",
            "headers": [{"name": "User-Agent", "value": UA}, {"name": "Sec-Fetch-Dest", "value": "document"}],
        },
        "response": {
            "status": 200,
            "headers": [{"name": "Content-Type", "value": "text/html; charset=utf-8"}],
            "content": {"mimeType": "text/html", "text": body},
        },
    }


def _observe(
    body: str, token: str = TOKEN, status: int = 204, ua: str = UA, origin: str = SHOP, at: str = "08:00:01"
) -> dict[str, Any]:
    """An observe request as Playwright records the observer's beacon."""
    headers = {"User-Agent": ua, "Origin": origin, "Sec-Fetch-Site": "same-origin"}
    return {
        "startedDateTime": f"2026-11-27T{at}.000Z",
        "time": 2,
        "request": {
            "method": "POST",
            "url": f"{SHOP}/__clickwatch/observe?token={token}",
            "headers": [{"name": k, "value": v} for k, v in headers.items()],
            "postData": {"mimeType": "text/plain;charset=UTF-8", "text": body},
        },
        "response": {"status": status, "headers": [], "content": {"size": 0, "mimeType": "x-unknown"}},
    }


def test_an_observer_report_counts_only_for_the_page_its_token_names_by_the_live_rule() -> None:
    script = _entry(f"{SHOP}/__clickwatch/observer.js", 200, method="GET")
    entries = [
        _page(), script,
        _observe('{"n": 1}'),
        _observe('{"n": 2}', token="B" * 22),  # a page this recording never served
        _observe('{"n": 3}', origin="https://evil.example"),  # sent from another site's page
        _observe('{"n": 4}', ua="another browser"),
        _observe('{"n": 5}', status=429),  # the proxy dropped it (flood): it stays dropped
    ]  # fmt: skip
    seen = observations({"log": {"entries": entries}}, "r", Patterns.compile())
    [page] = [o for o in seen if isinstance(o, StorefrontSeen)]
    assert page.page_load  # the observer's script and reports are no storefront traffic
    [report] = [o for o in seen if isinstance(o, BrowserReport)]
    assert (report.run, report.user_agent, report.body, report.origin, report.token) == (
        "r", UA, b'{"n": 1}', SHOP, TOKEN
    )  # fmt: skip
    assert report.served_at == page.request_at
    refused = [reason for o in seen if isinstance(o, ObserverRejected) for reason, _ in o.counts]
    assert refused == ["unbound", "wrong_origin", "wrong_visitor"]


def _batch(at_ms: int, *events: dict[str, Any]) -> str:
    return json.dumps({"v": 1, "page": "page-0001", "url": f"{SHOP}/p/1", "sent": at_ms, "events": list(events)})


def test_a_push_never_sent_is_found_from_the_reports_of_a_bound_page_only(tmp_path: Path) -> None:
    sent = 1_795_766_401_000  # 2026-11-27T08:00:01Z, when the report arrives
    consent = {"t": sent - 500, "type": "push", "name": "ConsentChanged", "data": {"granted": True}}
    cart = {"t": sent - 400, "type": "push", "name": "AddedToCart", "data": {"productSku": "1", "productQty": 1}}
    body = _batch(sent, {"t": sent - 900, "type": "page"}, consent, cart)

    def findings(report: dict[str, Any], name: str) -> list[str]:
        har = tmp_path / f"{name}.har"
        har.write_text(json.dumps({"log": {"entries": [_page(), report]}}))
        db = tmp_path / f"{name}.db"
        import_har(str(har), str(db))
        conn = open_database(str(db)).conn
        try:
            return [r[0] for r in conn.execute("SELECT kind FROM findings")]
        finally:
            conn.close()

    assert findings(_observe(body), "bound") == ["event_not_sent"]
    # The same report under a token no page of the recording carries tells nothing.
    assert findings(_observe(body, token="B" * 22), "unbound") == []
