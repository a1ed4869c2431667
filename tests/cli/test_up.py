"""`clickwatch up` as a user runs it: a subprocess on real loopback ports with a real store file."""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import Upstream
from tests.rig import CLICKWATCH, clickwatch_up, free_port, wait_until

pytestmark = pytest.mark.integration


def test_up_captures_through_the_in_process_addon_and_stops_cleanly(tmp_path: Path, upstream: Upstream) -> None:
    with clickwatch_up(tmp_path, stderr_apart=True) as up:
        with up.client(timeout=10) as client:
            answer = client.post(
                upstream.url("/s201/edge/clickstreamEvents"),
                json={"productSku": "1"},
                headers={"hybris-schema": "context/commerce/ProductView", "consent-reference": "cr"},
            )
        assert answer.status_code == 201
        with httpx.Client(base_url=up.dashboard_url, timeout=10, trust_env=False) as api:
            # 503 until the store process has created the store (it starts beside the proxy, not before it).
            wait_until(lambda: api.get("/healthz").status_code == 200, 10, "the dashboard to read the store")
            items = wait_until(
                lambda: api.get("/api/deliveries").json()["items"], 10, "the delivery in the dashboard's API"
            )
            assert items[0]["verdict"] == "delivered"
        returncode = up.stop(signal.SIGTERM)
    out = up.log()
    assert returncode == 0, up.errors()
    assert up.proxy_url in out
    assert f"{up.dashboard_url}/" in out
    assert "mitmproxy-ca-cert.pem" in out
    conn = sqlite3.connect(up.db)
    rows = conn.execute("SELECT kind, verdict, status_code FROM deliveries").fetchall()
    conn.close()
    assert rows == [("clickstream", "delivered", 201)]


def test_port_in_use_is_a_one_line_error_with_exit_2(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.monotonic()
        result = subprocess.run(
            [str(CLICKWATCH), "up", "--proxy-port", str(port), "--db", str(tmp_path / "cw.db")],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert time.monotonic() - started < 10
    assert not (tmp_path / "cw.db").exists()


@pytest.mark.parametrize(
    ("db", "message"),
    [("missing-dir/cw.db", "does not exist"), (".", "is a directory")],
)
def test_unusable_database_path_is_a_one_line_error_with_exit_2(tmp_path: Path, db: str, message: str) -> None:
    result = subprocess.run(
        [str(CLICKWATCH), "up", "--proxy-port", str(free_port()), "--db", str(tmp_path / db)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert message in result.stderr


def test_bad_set_option_is_a_one_line_error_with_exit_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            str(CLICKWATCH),
            "up",
            "--proxy-port",
            str(free_port()),
            "--db",
            str(tmp_path / "cw.db"),
            "--set",
            "clickwatch_tenant_host=(",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "tenant host" in result.stderr
    assert result.stderr.count("\n") == 1


def test_listening_beyond_loopback_needs_a_token(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(CLICKWATCH), "up", "--listen-host", "0.0.0.0", "--db", str(tmp_path / "cw.db")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert "--token" in result.stderr


def test_addon_path_points_at_the_loadable_script() -> None:
    result = subprocess.run([str(CLICKWATCH), "addon-path"], capture_output=True, text=True, check=True)
    path = Path(result.stdout.strip())
    assert path.name == "capture.py"
    assert "addons = [Clickwatch()]" in path.read_text()


def test_up_shows_live_progress_unless_quiet(tmp_path: Path, upstream: Upstream) -> None:
    with clickwatch_up(tmp_path, quiet=False, stderr_apart=True) as up:
        with up.client(timeout=10) as client:
            client.post(
                upstream.url("/s400/edge/clickstreamEvents"),
                json={"productSku": "1"},
                headers={"hybris-schema": "context/commerce/ProductView"},
            )
        time.sleep(3.5)  # one progress tick after the delivery
        returncode = up.stop()
    out = up.log()
    assert returncode == 0
    assert "FAILING: 0 delivered, 1 rejected, 0 failed, 0 pending" in out
    assert "missing_consent_reference (warning)" in out
