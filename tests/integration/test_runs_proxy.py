"""Runs: many testers, one proxy. Named by proxy credentials or a header that never leaves the proxy."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.conftest import Proxy, Upstream

pytestmark = pytest.mark.integration

HEADERS = {"hybris-schema": "context/commerce/ProductView", "consent-reference": "cr", "User-Agent": "same-browser"}


def test_runs_by_credentials_and_header_stay_apart(proxy: Proxy, upstream: Upstream) -> None:
    path = "/s201/runs/edge/clickstreamEvents"
    with httpx.Client(proxy=f"http://alice@127.0.0.1:{proxy.port}", timeout=10, trust_env=False) as alice:
        assert alice.post(upstream.url(path), json={"productSku": "1"}, headers=HEADERS).status_code == 201
    with httpx.Client(proxy=f"http://bob%2Fci:x@127.0.0.1:{proxy.port}", timeout=10, trust_env=False) as bob:
        assert bob.post(upstream.url(path), json={"productSku": "2"}, headers=HEADERS).status_code == 201
    with proxy.client() as plain:
        headed = {**HEADERS, "X-Clickwatch-Run": "carol"}
        assert plain.post(upstream.url(path), json={"productSku": "3"}, headers=headed).status_code == 201
        assert plain.post(upstream.url(path), json={"productSku": "4"}, headers=HEADERS).status_code == 201
    assert proxy.stop() == 0
    runs = {row["request_body"]: row["run"] for row in proxy.deliveries()}
    assert runs == {
        '{"productSku":"1"}': "alice",
        '{"productSku":"2"}': "bob/ci",
        '{"productSku":"3"}': "carol",
        '{"productSku":"4"}': "default",
    }
    # The run header and the proxy credentials are for clickwatch only: the tenant never sees them.
    for received in upstream.received_at(path):
        names = {name.lower() for name, _ in received.headers}
        assert "x-clickwatch-run" not in names
        assert "proxy-authorization" not in names
