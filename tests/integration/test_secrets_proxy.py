"""Secrets through the real proxy: no cookie value or listed credential reaches any column, store files are 0600."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, Proxy, Upstream, query, wait_until

pytestmark = pytest.mark.integration

MARKER = "mk9Rq2ZeroLeak"  # cannot turn up by chance in a uid, a visitor key or a time
UA = "Mozilla/5.0 (X11; Linux x86_64) clickwatch-secrets-test"
CONFIG = "[consent]\ngrace_seconds = 0.5\n\n[windows]\nsilence_seconds = 0.5\n"


def _everything(db: Path) -> str:
    """Every table and column of the store, as SQL text."""
    conn = sqlite3.connect(db)
    try:
        return "\n".join(conn.iterdump())
    finally:
        conn.close()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_no_cookie_value_or_listed_secret_is_stored_anywhere(
    proxy_factory: Callable[..., Proxy], upstream: Upstream, tmp_path: Path
) -> None:
    config = tmp_path / "clickwatch.toml"
    config.write_text(CONFIG)
    proxy = proxy_factory("--set", f"clickwatch_config={config}", "--set", "clickwatch_redact=X-Tenant-Secret,myField")
    page = {
        "User-Agent": UA,
        "Accept": "text/html",
        "Sec-Fetch-Dest": "document",
        "Cookie": f"electronics-profile.consent.given={MARKER}; JSESSIONID={MARKER}1",
    }
    event = "/s201/secrets/edge/clickstreamEvents"
    body = {
        "productSku": "300938",
        "myField": MARKER,
        "user": {"credentials": [{"password": f"{MARKER}2", "access_token": f"{MARKER}3"}]},
    }
    headers = {
        "User-Agent": UA,
        "hybris-schema": "context/commerce/ProductView",
        "consent-reference": "cr-0001",
        "X-Api-Key": f"{MARKER}4",
        "X-Auth-Token": f"{MARKER}5",
        "X-Tenant-Secret": f"{MARKER}6",
        "Cookie": f"electronics-profile.consent.given={MARKER}7",
    }
    with proxy.client() as client:
        assert client.get(upstream.url("/page/home"), headers=page).status_code == 200
        answer = client.post(upstream.url(f"{event}?token={MARKER}8&site=electronics"), json=body, headers=headers)
        assert answer.status_code == 201
    # What the upstream got is untouched: redaction is for the store only.
    (received,) = upstream.received_at(f"{event}?token={MARKER}8&site=electronics")
    assert received.header("x-api-key") == f"{MARKER}4" and json.loads(received.body) == body
    db = proxy.db_path
    wal, shm = Path(f"{db}-wal"), Path(f"{db}-shm")
    # Looked at before anything else opens the file (plain sqlite3.connect would create it with the umask's mode).
    wait_until(lambda: db.exists() and wal.exists() and shm.exists(), 10, "the store files")
    umask = os.umask(0o022)
    os.umask(umask)
    assert umask & 0o044 != 0o044  # the umask alone would let others read: the 0600 is clickwatch's doing
    assert (_mode(db), _mode(wal), _mode(shm)) == (0o600, 0o600, 0o600)
    wait_until(lambda: query(db, "SELECT 1 FROM findings WHERE kind='consent_violation'"), 10, "a verdict")
    assert proxy.stop() == 0

    everything = _everything(db)
    assert MARKER not in everything
    # The consent state is kept, and what the cookie meant, never its value.
    signals = query(db, "SELECT state, source, detail FROM consent_signals")
    assert [tuple(s) for s in signals] == [
        ("absent", "cookie electronics-profile.consent.given", "an unexpected value, read as absent")
    ]
    [row] = query(db, "SELECT url, request_headers, request_body FROM deliveries")
    assert row["url"].endswith(f"{event}?token=<redacted>&site=electronics")
    stored_headers = {k.lower(): v for k, v in json.loads(row["request_headers"])}
    assert stored_headers["x-tenant-secret"] == stored_headers["x-api-key"] == "<redacted>"
    assert stored_headers["cookie"] == "electronics-profile.consent.given=<redacted>"
    assert stored_headers["consent-reference"] == "cr-0001"
    assert json.loads(row["request_body"])["user"] == {
        "credentials": [{"password": "<redacted>", "access_token": "<redacted>"}]
    }


def test_exports_and_reports_are_written_0600(proxy: Proxy, upstream: Upstream, tmp_path: Path) -> None:
    with proxy.client() as client:
        client.post(upstream.url("/s201/x/edge/clickstreamEvents"), json={"productSku": "1"})
    assert proxy.stop() == 0
    before = os.umask(0o022)
    try:
        existing = tmp_path / "old.jsonl"
        existing.write_text("")
        existing.chmod(0o644)
        for output in (tmp_path / "out.csv", existing):
            subprocess.run(
                [sys.executable, "-m", "clickwatch.cli.main", "export", "--db", str(proxy.db_path), "-o", str(output)],
                cwd=REPO,
                check=True,
                capture_output=True,
            )
            assert _mode(output) == 0o600, output
            assert "edge/clickstreamEvents" in output.read_text()
        junit = tmp_path / "report.xml"
        subprocess.run(
            [sys.executable, "-m", "clickwatch.cli.main", "check", "--db", str(proxy.db_path), "--junit", str(junit)],
            cwd=REPO,
            capture_output=True,
        )
        assert _mode(junit) == 0o600
    finally:
        os.umask(before)
