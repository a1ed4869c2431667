"""Real components for integration tests: an upstream HTTP server, the proxy as a subprocess, the SQLite file.

Nothing here is mocked: the upstream is a threaded `http.server` on 127.0.0.1, the proxy is `mitmdump` with
the clickwatch addon loaded from `addon/capture.py`, and tests read the database with plain `sqlite3`.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

# free_port and wait_until are also imported from here by many tests.
from tests.rig import free_port, listening, stop_process
from tests.rig import wait_until as wait_until

REPO = Path(__file__).resolve().parents[2]
ADDON = REPO / "addon" / "capture.py"
MITMDUMP = Path(sys.executable).with_name("mitmdump")

STARTUP_TIMEOUT = 20.0
STARTUP_SETTLE = 0.3
STOP_TIMEOUT = 20.0
HANG_LIMIT = 30.0  # a hanging upstream handler gives up after this long even if nobody releases it

PAGE_HTML = b"<!doctype html><html><head><title>Storefront</title></head><body>Product 1</body></html>"

OBSERVE = "/__clickwatch/observe"
_TOKEN = re.compile(rb'data-clickwatch-page="([A-Za-z0-9_-]+)"')


def page_token(client: httpx.Client, url: str, user_agent: str) -> str:
    """Load a storefront page through the proxy as a browser does; the token the proxy gave the page's observer."""
    headers = {"User-Agent": user_agent, "Accept": "text/html", "Sec-Fetch-Dest": "document"}
    page = client.get(url, headers=headers)
    match = _TOKEN.search(page.content)
    assert match is not None, f"no observer token in the page at {url}: {page.content[:300]!r}"
    return match.group(1).decode()


def observe_url(origin: str, token: str) -> str:
    """Where the observer in a page of `origin` sends its reports, with its page's token."""
    return f"{origin}{OBSERVE}?token={token}"


_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    """Keep each phase's report on the item so fixtures can tell at teardown whether the test failed."""
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


def _test_failed(node: pytest.Item) -> bool:
    reports = node.stash.get(_REPORTS, {})
    return any(r.failed for r in reports.values())


# --- database helpers ---------------------------------------------------------------------------------


def read_deliveries(db_path: Path) -> list[dict[str, Any]]:
    """Every stored delivery as a dict, in insertion order; [] while the file or its schema does not exist yet."""
    if not db_path.exists():
        return []
    conn = sqlite3.connect(db_path, timeout=5.0)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in conn.execute("SELECT * FROM deliveries ORDER BY id")]
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    finally:
        conn.close()


def query(db: Path, sql: str, *args: Any) -> list[sqlite3.Row]:
    """Rows of a query on the store with plain sqlite3; none while the store (or that table) does not exist yet."""
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError:
        return []  # not created yet
    finally:
        conn.close()


@pytest.fixture
def deliveries() -> Callable[[Path], list[dict[str, Any]]]:
    """The plain-sqlite3 reader of the deliveries table, as a fixture."""
    return read_deliveries


# --- upstream -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """One request as the upstream server got it off the wire."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        lower = name.lower()
        return next((v for k, v in self.headers if k.lower() == lower), None)


class _UpstreamServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _UpstreamHandler)
        self.release = threading.Event()
        self.received: list[Received] = []
        self.lock = threading.Lock()


class _UpstreamHandler(BaseHTTPRequestHandler):
    """Behaviour chosen by the first path segment: s201, s400, s500, reset, hang, page, cors-no-cr."""

    protocol_version = "HTTP/1.1"
    timeout = 15  # idle keep-alive connections end on their own
    server: _UpstreamServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes = b"", content_type: str = "application/json", **extra: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        body = self._read_body()
        with self.server.lock:
            self.server.received.append(Received(self.command, self.path, list(self.headers.items()), body))
        behaviour = self.path.split("?", 1)[0].lstrip("/").split("/", 1)[0]
        if behaviour == "reset":
            # Abort: SO_LINGER 0 turns close() into an RST, and no response is ever written.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()
            self.connection.close()
            self.close_connection = True
        elif behaviour == "hang":
            self.server.release.wait(HANG_LIMIT)
            self.close_connection = True
        elif behaviour == "cors-no-cr":
            # A tenant whose CORS set-up forgot the consent-reference header: the browser then never sends the POST.
            self._send(
                204,
                Access_Control_Allow_Origin="https://shop.example",
                Access_Control_Allow_Methods="POST",
                Access_Control_Allow_Headers="content-type, hybris-schema",
            )
        elif behaviour == "page":
            self._send(200, PAGE_HTML, "text/html; charset=utf-8")
        elif behaviour == "occ":
            self._occ()
        elif behaviour.startswith("s") and behaviour[1:].isdigit():
            status = int(behaviour[1:])
            if self.command == "OPTIONS":
                self._send(
                    status,
                    Access_Control_Allow_Origin="https://shop.example",
                    Access_Control_Allow_Methods="POST",
                    Access_Control_Allow_Headers="content-type, hybris-schema, consent-reference",
                )
            elif status < 300:
                self._send(status, b'{"ok":true}')
            else:
                self._send(status, b'{"error":"rejected by test upstream"}')
        else:
            self._send(404, b"no such behaviour", "text/plain")

    def _occ(self) -> None:
        """A Commerce API answer about a signed-in shopper's consent templates: `/occ/<state>/users/current/…`
        (`given` or `none`); `?chunked` sends it gzipped, in chunks, with no length."""
        state = self.path.split("/")[2]
        template: dict[str, Any] = {"id": "PROFILE", "version": 1}
        if state == "given":
            template["currentConsent"] = {"code": "c1", "consentGivenDate": "2026-01-01T00:00:00+0000"}
        body = json.dumps({"consentTemplates": [template]}).encode()
        if "chunked" not in self.path:
            self._send(200, body)
            return
        packed = gzip.compress(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for start in range(0, len(packed), 16):
            piece = packed[start : start + 16]
            self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")

    do_GET = do_POST = do_PUT = do_OPTIONS = do_HEAD = _handle


@dataclass
class Upstream:
    """Handle on the running upstream server."""

    server: _UpstreamServer
    port: int

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def received(self) -> list[Received]:
        with self.server.lock:
            return list(self.server.received)

    def received_at(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    """A real threaded HTTP server on 127.0.0.1 whose behaviour is picked by the first path segment."""
    server = _UpstreamServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Upstream(server, server.server_address[1])
    finally:
        server.release.set()  # let any hanging handler return
        server.shutdown()
        server.server_close()
        thread.join(5)


# --- proxy --------------------------------------------------------------------------------------------


@dataclass
class Proxy:
    """The real proxy: mitmdump with the clickwatch addon, running as a subprocess."""

    port: int
    db_path: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    _log_file: Any = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, timeout: float = 10.0) -> httpx.Client:
        """An HTTP client that sends everything through this proxy (environment proxies ignored)."""
        return httpx.Client(proxy=self.url, timeout=timeout, trust_env=False)

    def deliveries(self) -> list[dict[str, Any]]:
        return read_deliveries(self.db_path)

    def log(self) -> str:
        self._log_file.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGINT, like Ctrl-C, then wait for exit; the addon writes its queue out before the process ends."""
        if not stop_process(self.process, signal.SIGINT, timeout):
            pytest.fail(f"proxy did not exit within {timeout:.0f} s of SIGINT\n--- proxy log ---\n{self.log()}")
        return int(self.process.returncode)

    def kill(self) -> None:
        if self.alive():
            self.process.kill()
            self.process.wait(10)


def start_proxy(tmp_path: Path, *options: str, new_session: bool = False) -> Proxy:
    """Start mitmdump with the addon on a free port and wait (bounded) until it accepts connections."""
    if not MITMDUMP.exists():
        pytest.fail(f"mitmdump not found next to the interpreter at {MITMDUMP}")
    port = free_port()
    db_path = tmp_path / "cw.db"
    log_path = tmp_path / "proxy.log"
    cmd = [
        str(MITMDUMP),
        "-q",
        "--listen-host",
        "127.0.0.1",
        "--listen-port",
        str(port),
        "-s",
        str(ADDON),
        "--set",
        f"clickwatch_db={db_path}",
        "--set",
        f"confdir={tmp_path / 'mitm'}",
        *options,
    ]
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    log_file = log_path.open("ab")
    process = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=new_session
    )
    proxy = Proxy(port, db_path, log_path, process, log_file)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        if not proxy.alive():
            output = proxy.log()
            log_file.close()
            pytest.fail(f"proxy exited with {process.returncode} during startup\n--- proxy log ---\n{output}")
        if listening(port):
            # mitmproxy listens before the script's own startup errors make it exit: make sure it stays up.
            time.sleep(STARTUP_SETTLE)
            if proxy.alive():
                return proxy
            continue
        if time.monotonic() >= deadline:
            proxy.kill()
            output = proxy.log()
            log_file.close()
            pytest.fail(f"proxy did not listen on {port} within {STARTUP_TIMEOUT:.0f} s\n--- proxy log ---\n{output}")
        time.sleep(0.05)


def _finish(proxy: Proxy, node: pytest.Item) -> None:
    try:
        stop_process(proxy.process, signal.SIGINT, STOP_TIMEOUT)
        if _test_failed(node):
            print(f"--- proxy log ({proxy.log_path}) ---\n{proxy.log()}")
    finally:
        proxy._log_file.close()


@pytest.fixture
def proxy_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Proxy]]:
    """Start a proxy with extra `--set` options; every proxy started is stopped (or killed) at teardown."""
    started: list[Proxy] = []

    def factory(*options: str, new_session: bool = False) -> Proxy:
        proxy = start_proxy(tmp_path, *options, new_session=new_session)
        started.append(proxy)
        return proxy

    yield factory
    for proxy in started:
        _finish(proxy, request.node)


@pytest.fixture
def proxy(proxy_factory: Callable[..., Proxy]) -> Proxy:
    """The real proxy with the addon, default options, a database and confdir under tmp_path."""
    return proxy_factory()
