"""What the proxy costs a browsing tester: a storefront page loaded in the system Chromium, directly, through bare
mitmdump, through `clickwatch up` and through `clickwatch up --storefront`.

Run from the repository root:

    .venv/bin/python bench/page_bench.py              # 20 loads per set-up (about two minutes)
    .venv/bin/python bench/page_bench.py --loads 5    # smoke run

The page (HTTPS, one loopback TLS server with the stand-in's self-signed certificate): its HTML on the storefront
host `localhost`, 40 assets on it, 20 on a second host (`127.0.0.1`, another origin), and the tag's calls (the tag
script, then three clickstream POSTs and a consent-reference POST to the storefront host, which the configuration
names as the tenant). Each load is a fresh browser context (cold cache, new connections); the set-ups take turns,
load by load, so drift on a shared machine hits them alike. The browser ignores certificate errors (a benchmark,
not a test of trust). It prints the load event's median and p90 per set-up, the time until the tag's calls were
answered, and the ratios to bare mitmdump; figures are in bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Browser, sync_playwright

from clickwatch.standin import certs
from clickwatch.standin.shopper import CHROMIUM_ARGS

BIN = Path(sys.executable).parent
CHROMIUM = "/usr/bin/chromium"
STOREFRONT_ASSETS = 40
OTHER_ASSETS = 20
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
)
TAG = b"""
(async function () {
  const post = (path, body, schema) => fetch(path, {method: "POST", body: JSON.stringify(body),
    headers: Object.assign({"content-type": "application/json"}, schema ? {"hybris-schema": schema} : {})});
  await post("/consent/acme/consentReferences", {}, null);
  await Promise.all([
    post("/edge/clickstreamEvents", {productSku: "1"}, "context/commerce/ProductView"),
    post("/edge/clickstreamEvents", {productCategory: "c"}, "context/commerce/CategoryView"),
    post("/edge/clickstreamEvents", {searchTerm: "s"}, "context/commerce/KeywordSearch"),
  ]);
  window.__tagDone = performance.now();
})();
"""
CONFIG = """[capture]
tenant_host = '^localhost$'
tag_pattern = '^localhost/js/profile-tag\\.js$'
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def page(port: int) -> bytes:
    """The storefront page: 40 images on its own host, 20 on the second, and the tag."""
    own = "".join(f'<img src="/img/{i}.png" width="1" height="1">' for i in range(STOREFRONT_ASSETS))
    other = "".join(
        f'<img src="https://127.0.0.1:{port}/cdn/{i}.png" width="1" height="1">' for i in range(OTHER_ASSETS)
    )
    return (
        f"<!doctype html><html><head><title>Shop</title>"
        f'<script src="/js/profile-tag.js" async></script></head>'
        f"<body><h1>Product 1</h1>{own}{other}</body></html>"
    ).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/":
            self._send(200, page(self.server.server_address[1]), "text/html; charset=utf-8")
        elif self.path.endswith(".png"):
            self._send(200, PNG, "image/png")
        elif self.path == "/js/profile-tag.js":
            self._send(200, TAG, "text/javascript")
        else:
            self._send(404, b"", "text/plain")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._send(201, b'{"ok":true}', "application/json")


@contextlib.contextmanager
def storefront(root: Path) -> Iterator[int]:
    files = certs.generate(root / "tls")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.socket = files.server_context().wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


@contextlib.contextmanager
def proxy(root: Path, name: str, command: list[str], port: int, dashboard: int | None) -> Iterator[str]:
    """A proxy subprocess, ready (and its dashboard reading the store), stopped with SIGINT on exit."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    log = (root / f"{name}.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    try:
        deadline = time.monotonic() + 30
        while not _listening(port) or (dashboard is not None and not _healthy(dashboard)):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{name} did not start: see {root / f'{name}.log'}")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _healthy(port: int) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2, trust_env=False).status_code == 200
    return False


def launch(playwright: Any, proxy_url: str | None) -> Browser:
    args = [*CHROMIUM_ARGS, "--ignore-certificate-errors"]
    if proxy_url:
        args += [f"--proxy-server={proxy_url}", "--proxy-bypass-list=<-loopback>"]
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)


def load(browser: Browser, url: str) -> tuple[float, float]:
    """One cold load: ms to the load event, and ms until the tag's calls were answered."""
    context = browser.new_context(ignore_https_errors=True)
    try:
        tab = context.new_page()
        tab.goto(url, wait_until="load", timeout=30000)
        tab.wait_for_function("window.__tagDone !== undefined", timeout=30000)
        loaded, tag = tab.evaluate("[performance.getEntriesByType('navigation')[0].loadEventStart, window.__tagDone]")
        return float(loaded), float(tag)
    finally:
        context.close()


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[8]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loads", type=int, default=20, help="loads per set-up (default 20)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="page-bench-") as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        (root / "clickwatch.toml").write_text(CONFIG)
        site = stack.enter_context(storefront(root))
        url = f"https://localhost:{site}/"
        ports = {name: (free_port(), free_port()) for name in ("mitmdump", "up", "up --storefront")}
        confdir = f"confdir={root / 'mitm'}"
        commands = {
            "mitmdump": [str(BIN / "mitmdump"), "-q", "--listen-host", "127.0.0.1", "--listen-port",
                         str(ports["mitmdump"][0]), "--set", "ssl_insecure=true", "--set", confdir],
            "up": [str(BIN / "clickwatch"), "up", "--quiet", "--upstream-insecure", "--config", "clickwatch.toml",
                   "--db", "up.db", "--proxy-port", str(ports["up"][0]), "--dashboard-port", str(ports["up"][1]),
                   "--set", confdir],
            "up --storefront": [str(BIN / "clickwatch"), "up", "--quiet", "--upstream-insecure", "--config",
                                "clickwatch.toml", "--db", "sf.db", "--storefront", "localhost", "--proxy-port",
                                str(ports["up --storefront"][0]), "--dashboard-port",
                                str(ports["up --storefront"][1]), "--set", confdir],
        }  # fmt: skip
        proxies: dict[str, str | None] = {"direct": None}
        for name, command in commands.items():
            dashboard = None if name == "mitmdump" else ports[name][1]
            proxies[name] = stack.enter_context(proxy(root, name.replace(" ", ""), command, ports[name][0], dashboard))
        playwright = stack.enter_context(sync_playwright())
        browsers = {name: launch(playwright, proxy_url) for name, proxy_url in proxies.items()}
        for browser in browsers.values():
            stack.callback(browser.close)
        figures: dict[str, list[tuple[float, float]]] = {name: [] for name in browsers}
        for browser in browsers.values():  # warm-up: CA certificates generated, processes settled
            for _ in range(2):
                load(browser, url)
        for _ in range(args.loads):
            for name, browser in browsers.items():
                figures[name].append(load(browser, url))
        for name in ("up", "up --storefront"):
            with httpx.Client(base_url=f"http://127.0.0.1:{ports[name][1]}", timeout=10, trust_env=False) as api:
                time.sleep(1.5)
                total = api.get("/api/summary").json()["deliveries"]
            print(f"clickwatch {name}: deliveries judged {total}")
        print(f"\n{args.loads} cold loads per set-up: HTML + {STOREFRONT_ASSETS} assets on the storefront host + "
              f"{OTHER_ASSETS} on a second host + the tag and 4 tracking calls (ms)")  # fmt: skip
        base = statistics.median(t for t, _ in figures["mitmdump"])
        print(f"{'set-up':18} {'load p50':>9} {'load p90':>9} {'tag p50':>9} {'tag p90':>9} {'vs mitmdump':>12}")
        for name, values in figures.items():
            loads, tags = [v[0] for v in values], [v[1] for v in values]
            ratio = statistics.median(loads) / base
            print(
                f"{name:18} {statistics.median(loads):9.1f} {p90(loads):9.1f} {statistics.median(tags):9.1f} "
                f"{p90(tags):9.1f} {ratio:12.3f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
