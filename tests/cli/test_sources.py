"""ApiSource reaches a dashboard on this machine directly, whatever the proxy environment says."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from clickwatch.cli.sources import ApiSource


class _Summary(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def dashboard() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Summary)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_loopback_dashboard_is_reached_directly_even_with_a_proxy_in_the_environment(
    dashboard: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = f"http://127.0.0.1:{_dead_port()}"
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, dead)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert ApiSource(dashboard).summary(run="r1") == {"path": "/api/summary?run=r1"}


def test_a_dashboard_elsewhere_still_honours_the_proxy_environment(
    dashboard: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The loopback server plays the proxy here: a request sent through it arrives in absolute form.
    monkeypatch.setenv("HTTP_PROXY", dashboard)
    monkeypatch.setenv("http_proxy", dashboard)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    answer = ApiSource("http://dashboard.example:9", timeout=5).summary()
    assert answer == {"path": "http://dashboard.example:9/api/summary?"}
