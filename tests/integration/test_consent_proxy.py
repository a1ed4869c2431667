"""Consent and validation findings decided by the real proxy, on real traffic, while it runs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.integration.conftest import Proxy, Upstream, query, wait_until

pytestmark = pytest.mark.integration

UA = "Mozilla/5.0 (X11; Linux x86_64) clickwatch-consent-test"
EVENT = {"productSku": "300938", "productName": "Photosmart E317"}
CONFIG = """
[consent]
grace_seconds = 1.0

[windows]
silence_seconds = 1.0
"""


def consents(state: str | None) -> str:
    """An accelerator anonymous-consents cookie value with the PROFILE consent in `state`."""
    return quote(json.dumps([{"templateCode": "PROFILE", "templateVersion": 1, "consentState": state}]), safe="")


def page_headers(cookie: str | None) -> dict[str, str]:
    headers = {"User-Agent": UA, "Accept": "text/html,application/xhtml+xml", "Sec-Fetch-Dest": "document"}
    if cookie is not None:
        headers["Cookie"] = cookie
    return headers


def event_headers(**extra: str) -> dict[str, str]:
    headers = {
        "User-Agent": UA,
        "hybris-schema": "context/commerce/ProductView",
        "consent-reference": "cr-0001",
        "Origin": "https://shop.example",
    }
    headers.update(extra)
    return headers


def findings(db: Path) -> list[tuple[str, str | None]]:
    rows = query(
        db, "SELECT f.kind, d.path FROM findings f LEFT JOIN deliveries d ON d.id = f.delivery_id ORDER BY f.id"
    )
    return [(r["kind"], r["path"]) for r in rows]


@pytest.fixture
def consent_proxy(proxy_factory: Callable[..., Proxy], tmp_path: Path) -> Proxy:
    config = tmp_path / "clickwatch.toml"
    config.write_text(CONFIG)
    return proxy_factory("--set", f"clickwatch_config={config}")


def test_events_after_withdrawal_are_a_violation_decided_while_running(
    consent_proxy: Proxy, upstream: Upstream
) -> None:
    event = "/s201/withdrawn/edge/clickstreamEvents"
    with consent_proxy.client() as client:
        page = client.get(
            upstream.url("/page/home"), headers=page_headers(f"anonymous-consents={consents('WITHDRAWN')}")
        )
        assert page.status_code == 200
        assert client.post(upstream.url(event), json=EVENT, headers=event_headers()).status_code == 201
    # Decided by the proxy's periodic evaluation once the 1 s grace window has passed, without a restart.
    wait_until(lambda: ("consent_violation", event) in findings(consent_proxy.db_path), 10, "violation finding")
    [delivery] = query(consent_proxy.db_path, "SELECT verdict, consent FROM deliveries WHERE path = ?", event)
    assert (delivery["verdict"], delivery["consent"]) == ("delivered", "withdrawn")
    signals = query(consent_proxy.db_path, "SELECT state, source FROM consent_signals")
    assert [(s["state"], s["source"]) for s in signals] == [("withdrawn", "cookie anonymous-consents")]
    assert consent_proxy.stop() == 0
    message = query(consent_proxy.db_path, "SELECT message, severity FROM findings WHERE kind='consent_violation'")[0]
    assert message["severity"] == "error"
    assert "withdrawn" in message["message"]


def test_consent_given_right_after_the_first_event_is_no_violation(consent_proxy: Proxy, upstream: Upstream) -> None:
    event = "/s201/grace/edge/clickstreamEvents"
    with consent_proxy.client() as client:
        client.get(upstream.url("/page/home"), headers=page_headers(None))  # no consent cookie: absent
        client.post(upstream.url(event), json=EVENT, headers=event_headers())
        # The browser shows the new consent cookie only on its next storefront request, inside the grace window.
        client.get(upstream.url("/page/product"), headers=page_headers(f"anonymous-consents={consents('GIVEN')}"))
    wait_until(
        lambda: [r["consent"] for r in query(consent_proxy.db_path, "SELECT consent FROM deliveries")] == ["given"],
        10,
        "consent decided as given",
    )
    assert consent_proxy.stop() == 0
    assert findings(consent_proxy.db_path) == []
    states = [r["state"] for r in query(consent_proxy.db_path, "SELECT state FROM consent_signals ORDER BY at")]
    assert states == ["absent", "given"]
    [visitor] = query(consent_proxy.db_path, "SELECT page_loads, consent FROM visitors")
    assert (visitor["page_loads"], visitor["consent"]) == (2, "given")


def test_preflight_that_does_not_allow_consent_reference_is_cors_rejected(
    consent_proxy: Proxy, upstream: Upstream
) -> None:
    preflight = "/cors-no-cr/edge/clickstreamEvents"
    with consent_proxy.client() as client:
        answer = client.options(
            upstream.url(preflight),
            headers={
                "User-Agent": UA,
                "Origin": "https://shop.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "consent-reference,content-type,hybris-schema",
            },
        )
        assert answer.status_code == 204
    assert consent_proxy.stop() == 0
    assert findings(consent_proxy.db_path) == [("cors_rejected", preflight)]
    [row] = query(consent_proxy.db_path, "SELECT message FROM findings")
    assert "consent-reference" in row["message"]
    [delivery] = query(consent_proxy.db_path, "SELECT kind, verdict FROM deliveries")
    assert (delivery["kind"], delivery["verdict"]) == ("preflight", "delivered")


def test_consent_and_pages_but_no_events_is_the_silent_failure(consent_proxy: Proxy, upstream: Upstream) -> None:
    given = f"anonymous-consents={consents('GIVEN')}"
    with consent_proxy.client() as client:
        client.get(upstream.url("/page/home"), headers=page_headers(given))
        client.get(upstream.url("/page/product"), headers=page_headers(given))
    wait_until(lambda: ("no_events_after_consent", None) in findings(consent_proxy.db_path), 10, "silence finding")
    assert consent_proxy.stop() == 0
    assert findings(consent_proxy.db_path) == [("no_events_after_consent", None)]


def test_happy_path_has_no_findings(consent_proxy: Proxy, upstream: Upstream) -> None:
    given = f"anonymous-consents={consents('GIVEN')}"
    consent_call = "/s201/consent/acme/consentReferences"
    event = "/s201/happy/edge/clickstreamEvents"
    with consent_proxy.client() as client:
        client.get(upstream.url("/page/home"), headers=page_headers(given))
        assert client.post(upstream.url(consent_call), json={}, headers={"User-Agent": UA}).status_code == 201
        assert client.post(upstream.url(event), json=EVENT, headers=event_headers()).status_code == 201
        client.get(upstream.url("/page/product"), headers=page_headers(given))
    assert consent_proxy.stop() == 0
    rows = query(consent_proxy.db_path, "SELECT kind, verdict, consent FROM deliveries ORDER BY id")
    assert [(r["kind"], r["verdict"], r["consent"]) for r in rows] == [
        ("consent_reference", "delivered", "given"),
        ("clickstream", "delivered", "given"),
    ]
    assert findings(consent_proxy.db_path) == []


@pytest.mark.parametrize("how", ["", "?chunked"], ids=["with-length", "chunked-gzip"])
def test_a_signed_in_shoppers_account_consent_is_read_from_the_commerce_api_answer(
    consent_proxy: Proxy, upstream: Upstream, how: str
) -> None:
    bearer = {"User-Agent": UA, "Authorization": "Bearer t0k3n", "Accept": "application/json"}
    event = "/s201/signed-in/edge/clickstreamEvents"
    with consent_proxy.client() as client:
        answer = client.get(upstream.url(f"/occ/none/users/current/consenttemplates{how}"), headers=bearer)
        assert answer.json()["consentTemplates"][0]["id"] == "PROFILE"  # passed on whole, streamed or not
        assert client.post(upstream.url(event), json=EVENT, headers=event_headers()).status_code == 201
    wait_until(lambda: ("consent_unknown", event) in findings(consent_proxy.db_path), 10, "consent_unknown finding")
    signals = query(consent_proxy.db_path, "SELECT state, source, detail FROM consent_signals")
    assert [(s["state"], s["source"], s["detail"]) for s in signals] == [
        ("absent", "account (GET /users/current/consenttemplates)", "the account holds no PROFILE consent")
    ]
    [finding] = query(consent_proxy.db_path, "SELECT message FROM findings WHERE kind = 'consent_unknown'")
    assert "their account says not given" in finding["message"]
    assert consent_proxy.stop() == 0


def test_a_signed_in_shopper_whose_account_gave_consent_is_tracked_with_consent(
    consent_proxy: Proxy, upstream: Upstream
) -> None:
    bearer = {"User-Agent": UA, "Authorization": "Bearer t0k3n", "Accept": "application/json"}
    event = "/s201/account-given/edge/clickstreamEvents"
    with consent_proxy.client() as client:
        assert client.get(upstream.url("/occ/given/users/current/consenttemplates"), headers=bearer).status_code == 200
        assert client.post(upstream.url(event), json=EVENT, headers=event_headers()).status_code == 201

    def consent() -> list[str]:
        return [
            r["consent"] for r in query(consent_proxy.db_path, "SELECT consent FROM deliveries WHERE path = ?", event)
        ]

    wait_until(lambda: consent() == ["given"], 10, "the account's consent decides")
    assert findings(consent_proxy.db_path) == []
    assert consent_proxy.stop() == 0
