"""`clickwatch up --storefront HOST`: only the storefront and the tracking hosts are decrypted, judged and stored;
every other HTTPS connection is an opaque tunnel (the client sees that host's own certificate) and plain-HTTP
requests to other hosts are forwarded unjudged.

Every host here is one TLS server on 127.0.0.1 with its own self-signed certificate (standin.certs): the client
connects through the proxy to 127.0.0.1 and names the host in TLS (SNI) and in Host, as mitmproxy's allow_hosts
rule reads both, so no name needs to resolve.
"""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from clickwatch.standin import certs
from tests.integration.conftest import PAGE_HTML, Proxy, Upstream, query
from tests.rig import CLICKWATCH, Up, clickwatch_up, free_port, wait_until

pytestmark = pytest.mark.integration

STOREFRONT = "www.example-shop.test"
TENANT = "iss.test"
OTHER = "cdn.other.test"
TENANT_HOST = r"^iss\.test$"
OBSERVER_TAG = b"/__clickwatch/observer.js"
WAIT = 15.0  # seconds any connection or request here waits before the test fails


class _TlsHandler(BaseHTTPRequestHandler):
    """/page: a storefront page; POST /edge/clickstreamEvents: 201; anything else: 200 with the Host it was for."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/page":
            self._send(200, PAGE_HTML, "text/html; charset=utf-8")
        else:
            self._send(200, f"hello from {self.headers.get('Host')}".encode(), "text/plain")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._send(201 if self.path == "/edge/clickstreamEvents" else 404, b"{}", "application/json")


@dataclass
class TlsServer:
    port: int
    certificate: bytes  # DER of the leaf it presents


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    files = certs.generate(tmp_path_factory.mktemp("tls-server"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TlsHandler)
    server.daemon_threads = True
    server.socket = files.server_context().wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    leaf = x509.load_pem_x509_certificates(files.cert.read_bytes())[0]
    try:
        yield TlsServer(server.server_address[1], leaf.public_bytes(Encoding.DER))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@dataclass
class Exchange:
    certificate: bytes
    issuer: str
    status: int
    body: bytes


def through_proxy(proxy: Up | Proxy, server: TlsServer, name: str, request: bytes) -> Exchange:
    """CONNECT 127.0.0.1 through the proxy, TLS naming `name`, one HTTP/1.1 request: certificate seen, answer."""
    proxy_port = int((proxy.proxy_url if isinstance(proxy, Up) else proxy.url).rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=WAIT) as raw:
        raw.sendall(f"CONNECT 127.0.0.1:{server.port} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            data = raw.recv(4096)
            assert data, "the proxy closed the connection after CONNECT"
            head += data
        assert head.split(b" ", 2)[1] == b"200", head
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the test reads whose certificate it is instead
        with context.wrap_socket(raw, server_hostname=name) as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            tls.sendall(request)
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    issuer = x509.load_der_x509_certificate(der).issuer.rfc4514_string()
    return Exchange(der, issuer, int(head.split(b" ", 2)[1]), body)


def get(name: str, path: str, **headers: str) -> bytes:
    extra = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    return f"GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n{extra}\r\n".encode()


def clickstream(name: str) -> bytes:
    body = b'{"productSku":"1"}'
    return (
        f"POST /edge/clickstreamEvents HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nhybris-schema: context/commerce/ProductView\r\n"
        f"consent-reference: cr\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def page_load(name: str) -> bytes:
    return get(name, "/page", Accept="text/html", Sec_Fetch_Dest="document", User_Agent="test-browser")


def intercepted(exchange: Exchange, server: TlsServer) -> bool:
    if exchange.certificate == server.certificate:
        return False
    assert "mitmproxy" in exchange.issuer, exchange.issuer
    return True


def stored_hosts(up: Up, root: Path) -> list[str]:
    return [r["host"] for r in query(root / "cw.db", "SELECT host FROM deliveries ORDER BY id")]


def metric(up: Up, name: str) -> float | None:
    text = httpx.get(f"{up.dashboard_url}/metrics", timeout=WAIT, trust_env=False).text
    found = re.search(rf"^{name} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def test_only_the_storefront_and_tracking_hosts_are_intercepted(
    tmp_path: Path, tls_server: TlsServer, upstream: Upstream
) -> None:
    root = tmp_path / "up"
    with clickwatch_up(
        root, "--storefront", STOREFRONT, "--upstream-insecure", "--set", f"clickwatch_tenant_host={TENANT_HOST}"
    ) as up:
        # Another HTTPS host: an opaque tunnel, its own certificate reaches the client.
        other = through_proxy(up, tls_server, OTHER, get(OTHER, "/"))
        assert not intercepted(other, tls_server)
        assert (other.status, other.body) == (200, f"hello from {OTHER}".encode())
        tunnelled = through_proxy(up, tls_server, OTHER, clickstream(OTHER))
        assert not intercepted(tunnelled, tls_server) and tunnelled.status == 201

        # The storefront and the tenant: decrypted (the proxy's certificate), judged and stored.
        page = through_proxy(up, tls_server, STOREFRONT, page_load(STOREFRONT))
        assert intercepted(page, tls_server)
        assert OBSERVER_TAG in page.body  # a storefront page gets the data-layer observer
        tenant_page = through_proxy(up, tls_server, TENANT, page_load(TENANT))
        assert intercepted(tenant_page, tls_server)
        assert OBSERVER_TAG not in tenant_page.body  # a tracking host's page does not
        tracked = through_proxy(up, tls_server, TENANT, clickstream(TENANT))
        assert intercepted(tracked, tls_server) and tracked.status == 201

        # Plain HTTP: to the tenant it is judged; to another host it is forwarded and nothing is kept.
        with up.client() as client:
            url = upstream.url("/s201/edge/clickstreamEvents")
            headers = {"hybris-schema": "context/commerce/ProductView", "consent-reference": "cr"}
            assert client.post(url, json={}, headers={**headers, "Host": OTHER}).status_code == 201
            assert client.post(url, json={}, headers={**headers, "Host": TENANT}).status_code == 201
        assert len(upstream.received_at("/s201/edge/clickstreamEvents")) == 2

        hosts = wait_until(lambda: len(stored_hosts(up, root)) >= 2 and stored_hosts(up, root), 10, "two deliveries")
        assert sorted(hosts) == [TENANT, TENANT]
        # Two tunnels and one plain-HTTP request passed through.
        wait_until(lambda: metric(up, "clickwatch_passthrough_connections_total") == 3.0, 10, "the passthrough count")
        setup = httpx.get(f"{up.dashboard_url}/setup", timeout=WAIT, trust_env=False).text
        assert f"decrypts only the storefront (<code>{STOREFRONT}</code>)" in setup
        assert "Commerce API has a host of its own" in setup  # its consent answers would be tunnelled unread
    banner = up.log()
    assert f"intercepting:       storefront {STOREFRONT} and the tracking hosts" in banner
    assert "name the storefront's API host too" in banner
    assert sorted(stored_hosts(up, root)) == [TENANT, TENANT]


def test_storefront_patterns_from_the_configuration_file(tmp_path: Path, tls_server: TlsServer) -> None:
    config = tmp_path / "clickwatch.toml"
    config.write_text(
        '[up]\nstorefront = ["*.example-shop.test", "checkout.shop.test"]\n'
        f"[capture]\ntenant_host = '{TENANT_HOST}'\n"
    )
    with clickwatch_up(tmp_path / "up", "--config", str(config), "--upstream-insecure") as up:
        seen = {
            name: intercepted(through_proxy(up, tls_server, name, get(name, "/")), tls_server)
            for name in (
                "www.example-shop.test",
                "a.b.example-shop.test",
                "checkout.shop.test",
                TENANT,
                "example-shop.test",
                "www.example-shop.test.evil.test",
                "shop.test",
            )
        }
    assert seen == {
        "www.example-shop.test": True,
        "a.b.example-shop.test": True,
        "checkout.shop.test": True,
        TENANT: True,
        "example-shop.test": False,
        "www.example-shop.test.evil.test": False,
        "shop.test": False,
    }
    banner = up.log()
    assert "storefront *.example-shop.test, checkout.shop.test and the tracking hosts" in banner


def test_without_storefront_every_host_is_intercepted_and_the_banner_and_setup_say_so(
    tmp_path: Path, tls_server: TlsServer
) -> None:
    with clickwatch_up(tmp_path / "up", "--upstream-insecure") as up:
        assert intercepted(through_proxy(up, tls_server, OTHER, get(OTHER, "/")), tls_server)
        setup = httpx.get(f"{up.dashboard_url}/setup", timeout=WAIT, trust_env=False).text
        assert "decrypts <strong>every</strong> HTTPS host" in setup
        assert "clickwatch up --storefront shop.example.com" in setup
    assert "intercepting:       every HTTPS host (give --storefront HOST" in up.log()


def test_the_addon_loaded_into_mitmdump_takes_the_storefront_option(
    proxy_factory: Callable[..., Proxy], tls_server: TlsServer
) -> None:
    proxy = proxy_factory(
        "--set", f"clickwatch_storefront={STOREFRONT}", "--set", f"clickwatch_tenant_host={TENANT_HOST}",
        "--set", "ssl_insecure=true",
    )  # fmt: skip
    assert not intercepted(through_proxy(proxy, tls_server, OTHER, get(OTHER, "/")), tls_server)
    assert intercepted(through_proxy(proxy, tls_server, STOREFRONT, get(STOREFRONT, "/")), tls_server)
    tracked = through_proxy(proxy, tls_server, TENANT, clickstream(TENANT))
    assert intercepted(tracked, tls_server) and tracked.status == 201
    wait_until(lambda: [d["host"] for d in proxy.deliveries()] == [TENANT], 10, "the tenant's delivery")

    def passed_through() -> float | None:
        rows = query(proxy.db_path, "SELECT value FROM metric_counters WHERE name = 'passthrough_connections'")
        return rows[0]["value"] if rows else None

    # Loaded as a script, the addon sees mitmproxy's decision after it is made: the tunnel is counted all the same.
    wait_until(lambda: passed_through() == 1.0, 10, "the tunnel counted in the store")


def test_a_bad_storefront_pattern_is_a_one_line_error(tmp_path: Path) -> None:
    command = [
        str(CLICKWATCH), "up", "--proxy-port", str(free_port()), "--dashboard-port", str(free_port()),
        "--db", str(tmp_path / "cw.db"), "--storefront", "https://shop.example.com/",
    ]  # fmt: skip
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1
    assert "clickwatch_storefront: 'https://shop.example.com/' is not a host name or pattern" in result.stderr
