"""Reports count only for the page clickwatch injected the observer into (issue 22), tried as a hostile client
would, with plain HTTP clients through a real `clickwatch up`: no token, a forged one, another origin, another
host, another browser, an expired page, a run header, floods, caps, and a 600 MB body that never ends."""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from clickwatch.core.observer import MAX_BODY_BYTES, PAGE_MAX_BYTES
from clickwatch.core.pipeline import REJECT_REASONS
from tests.integration.conftest import observe_url, page_token, query
from tests.integration.test_observer_proxy import UA, batch, shop
from tests.rig import Up, clickwatch_up, wait_until

pytestmark = pytest.mark.integration

__all__ = ["shop"]  # the fixture: a storefront on loopback


def _granted(value: bool) -> dict[str, Any]:
    return batch({"type": "push", "name": "ConsentChanged", "data": {"granted": value}})


def _rejected(up: Up) -> dict[str, int]:
    return {r["reason"]: r["n"] for r in query(up.db, "SELECT reason, n FROM metric_observer_rejected")}


def _metric(up: Up, reason: str) -> float:
    text = httpx.get(f"{up.dashboard_url}/metrics", timeout=5, trust_env=False).text
    line = f'clickwatch_observer_rejected_total{{reason="{reason}"}} '
    return float(next(row for row in text.splitlines() if row.startswith(line)).split()[-1])


def _rss_kib(pid: int) -> int:
    """Resident memory of a process and its children (the store process), in KiB, from /proc."""
    total = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for each in pids:
        for line in Path(f"/proc/{each}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    with clickwatch_up(tmp_path) as running:
        yield running


def test_only_a_report_of_the_page_from_its_own_origin_and_browser_counts(up: Up, shop: str) -> None:
    # The page was served in run A (proxy user name); the hostile requests try every other way in.
    with httpx.Client(proxy=f"http://A:x@127.0.0.1:{up.proxy_port}", timeout=15, trust_env=False) as client:
        token = page_token(client, f"{shop}/plain", UA)
        report = json.dumps(_granted(True))
        plain = {"User-Agent": UA, "Content-Type": "text/plain;charset=UTF-8"}
        attempts = {
            "no token": (f"{shop}/__clickwatch/observe", plain),
            "forged token": (observe_url(shop, secrets.token_urlsafe(16)), plain),
            "another origin (a third-party frame)": (
                observe_url(shop, token),
                {**plain, "Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
            ),
            "a cross-site context without Origin": (
                observe_url(shop, token),
                {**plain, "Sec-Fetch-Site": "cross-site"},
            ),
            "another host": (observe_url("http://other.example", token), plain),
            "another browser": (observe_url(shop, token), {**plain, "User-Agent": UA + " other"}),
        }
        answers = {what: client.post(url, content=report, headers=headers) for what, (url, headers) in attempts.items()}
        # The page's own report, as Chromium sends it, with a run header that names another run: still run A.
        own = client.post(
            observe_url(shop, token),
            content=json.dumps(_granted(False)),
            headers={**plain, "Origin": shop, "Sec-Fetch-Site": "same-origin", "X-Clickwatch-Run": "B"},
        )
    assert {what: answer.status_code for what, answer in answers.items()} == dict.fromkeys(attempts, 403)
    assert own.status_code == 204
    wait_until(lambda: query(up.db, "SELECT id FROM datalayer"), 10, "the page's own report stored")
    wait_until(lambda: _rejected(up)["wrong_visitor"] == 1, 10, "the refusals counted")
    assert _rejected(up) == dict.fromkeys(REJECT_REASONS, 0) | {
        "unbound": 2,
        "wrong_origin": 2,
        "wrong_host": 1,
        "wrong_visitor": 1,
    }
    assert _metric(up, "wrong_origin") == 2 and _metric(up, "expired") == 0  # every reason exported from 0
    rows = query(up.db, "SELECT run, name, data FROM datalayer")
    assert [(r["run"], r["name"], json.loads(r["data"])) for r in rows] == [("A", "ConsentChanged", {"granted": False})]
    signals = query(up.db, "SELECT run, state, source FROM consent_signals WHERE source = 'data layer'")
    # (granted=false with no granted=true before it in the visit: never given, not withdrawn; issue 21.)
    assert [tuple(s) for s in signals] == [("A", "absent", "data layer")]


def test_a_report_after_its_pages_token_expired_is_dropped(tmp_path: Path, shop: str) -> None:
    with clickwatch_up(tmp_path, "--set", "clickwatch_observer_token_seconds=2") as up, up.client() as client:
        served = time.time()
        url = observe_url(shop, page_token(client, f"{shop}/plain", UA))
        assert client.post(url, json=batch({"type": "page"}), headers={"User-Agent": UA}).status_code == 204
        wait_until(lambda: time.time() > served + 2.5, 10, "the page's token to expire")
        late = client.post(url, json=batch({"type": "page"}), headers={"User-Agent": UA})
        assert late.status_code == 403 and b"expired" in late.content
        wait_until(lambda: _rejected(up)["expired"] == 1, 10, "the expired report counted")
        assert len(query(up.db, "SELECT id FROM datalayer")) == 1


def test_floods_are_keyed_by_the_page_and_its_browser_not_by_a_header(up: Up, shop: str) -> None:
    with up.client() as client:
        url = observe_url(shop, page_token(client, f"{shop}/plain", UA))
        body = json.dumps(batch({"type": "page"}))
        # A new User-Agent for every report (the limit was keyed by it): none is the page's browser.
        rotated = [client.post(url, content=body, headers={"User-Agent": f"{UA} {n}"}).status_code for n in range(600)]
        assert rotated == [403] * 600
        # The page itself, as fast as it can: refused beyond its rate.
        statuses: list[int] = []
        deadline = time.monotonic() + 20
        while 429 not in statuses and time.monotonic() < deadline:
            fresh = json.dumps(batch({"type": "page"}, page=f"pageid{len(statuses):04d}"))  # each its own event
            statuses.append(client.post(url, content=fresh, headers={"User-Agent": UA}).status_code)
    assert 429 in statuses and set(statuses) <= {204, 429}
    wait_until(lambda: _rejected(up)["flood"] == statuses.count(429), 10, "the flood counted")
    assert _rejected(up)["wrong_visitor"] == 600
    wait_until(lambda: len(query(up.db, "SELECT id FROM datalayer")) == statuses.count(204), 10, "accepted stored")


def test_a_page_sending_more_than_its_cap_is_dropped_and_counted(up: Up, shop: str) -> None:
    with up.client() as client:
        url = observe_url(shop, page_token(client, f"{shop}/plain", UA))
        statuses: list[int] = []
        deadline = time.monotonic() + 120
        while True:
            padded = json.dumps(batch({"type": "page"}, page=f"pageid{len(statuses):04d}")).encode()
            padded += b" " * (MAX_BODY_BYTES - len(padded))
            answer = client.post(url, content=padded, headers={"User-Agent": UA})
            statuses.append(answer.status_code)
            if b"page_cap" in answer.content:
                break
            if answer.status_code == 429:
                time.sleep(0.05)  # over the rate: the page waits, as the observer's batching does
            assert time.monotonic() < deadline, "the page's cap was never reached"
    assert statuses[-1] == 429
    accepted = statuses.count(204)
    assert accepted == PAGE_MAX_BYTES // MAX_BODY_BYTES
    wait_until(lambda: _rejected(up)["page_cap"] == 1, 10, "the excess counted")
    wait_until(lambda: len(query(up.db, "SELECT id FROM datalayer")) == accepted, 30, "the accepted reports stored")


@pytest.mark.parametrize("how", ["chunked", "declared"])
def test_a_600_mb_report_is_refused_before_it_is_read(up: Up, shop: str, how: str) -> None:
    with up.client() as client:
        url = observe_url(shop, page_token(client, f"{shop}/plain", UA))
    before = _rss_kib(up.process.pid)
    sent = 0
    chunk = b"x" * (1024 * 1024)

    def body() -> Iterator[bytes]:
        nonlocal sent
        for _ in range(600):
            sent += len(chunk)
            yield chunk

    headers = {"User-Agent": UA}
    if how == "declared":
        headers["Content-Length"] = str(600 * len(chunk))
    failed: Exception | None = None
    try:
        with up.client(timeout=30) as client:
            client.post(url, content=body(), headers=headers)
    except httpx.HTTPError as exc:  # the proxy closes the connection: the body is never read
        failed = exc
    after = _rss_kib(up.process.pid)
    print(f"600 MB {how} report: {sent / 2**20:.0f} MiB sent before the proxy closed; RSS {before} -> {after} KiB")
    assert failed is not None
    assert sent < 100 * len(chunk)  # closed long before the end (what was sent sat in socket buffers)
    assert after - before < 20 * 1024
    wait_until(lambda: _rejected(up)["too_large"] == 1, 10, "the refusal counted")
    assert os.path.exists(up.db)
