"""A clickwatch to talk to: a `clickwatch up` of its own on free loopback ports with a temporary store (for a
test session or `clickwatch browse`), or one already running elsewhere (its dashboard, proxy and CA certificate)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from clickwatch.cli.sources import ApiSource, SourceError

START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 20.0
DEFAULT_PROXY_PORT = 8080  # `clickwatch up`'s own default: where a remote proxy is looked for unless told
CA_NAME = "mitmproxy-ca-cert.pem"


class ServerError(Exception):
    """clickwatch could not be started or reached; the message says what happened."""


class Dashboard(ApiSource):
    """A running dashboard's JSON API: what `clickwatch check` reads, plus visitors and their timelines."""

    def timeline(self, visitor: str, run: str) -> dict[str, object]:
        """One visitor's consent timeline within the run (GET /api/visitors/{visitor})."""
        answer: dict[str, object] = self._get(f"/api/visitors/{urllib.parse.quote(visitor, safe='')}", {"run": run})
        return answer


@dataclass(frozen=True)
class Server:
    """Where a session's clickwatch listens: the proxy (host:port), the dashboard, the CA certificate file."""

    proxy: str
    dashboard_url: str
    ca_cert: Path
    token: str | None = None
    local: bool = True

    def api(self) -> Dashboard:
        """A client of the dashboard's JSON API."""
        return Dashboard(self.dashboard_url, self.token)


def free_port() -> int:
    """A TCP port nobody listens on right now (loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def _healthy(url: str) -> bool:
    # The dashboard is on loopback: asked directly, whatever proxy the environment names.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with contextlib.suppress(urllib.error.URLError, OSError), opener.open(f"{url}/healthz", timeout=2) as answer:
        return bool(answer.status == 200)
    return False


def _has_certificate(path: Path) -> bool:
    # mitmproxy writes its CA once its proxy already accepts connections: wait for the whole file.
    with contextlib.suppress(OSError):
        return b"-----END CERTIFICATE-----" in path.read_bytes()
    return False


def up_command(
    root: Path, proxy_port: int, dashboard_port: int, config: str | None, extra: Sequence[str], db: str | None = None
) -> list[str]:
    """The `clickwatch up` a session starts: loopback, its own store (`db`, else one in `root`) and CA, and the
    run as proxy user name."""
    command = [
        sys.executable, "-m", "clickwatch.cli.main", "up",
        "--listen-host", "127.0.0.1", "--proxy-port", str(proxy_port), "--dashboard-port", str(dashboard_port),
        "--db", db or str(root / "clickwatch.db"), "--quiet",
        # Browsers send proxy credentials only when challenged; proxyauth=any challenges and accepts any.
        "--set", "proxyauth=any", "--set", f"confdir={root / 'mitmproxy'}",
    ]  # fmt: skip
    if config:
        command += ["--config", config]
    return [*command, *extra]


@contextlib.contextmanager
def start_local(
    root: Path, config: str | None = None, extra: Sequence[str] = (), db: str | None = None
) -> Iterator[Server]:
    """Run `clickwatch up` for as long as the block lasts; its output is kept in `root/up.log`."""
    root.mkdir(parents=True, exist_ok=True)
    log_path = root / "up.log"
    for attempt in range(2):  # a port taken between choosing and binding it: choose again, once
        proxy_port, dashboard_port = free_port(), free_port()
        # Its settings are the flags above and --clickwatch-config, not whatever CLICKWATCH_* the shell has.
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLICKWATCH_")}
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                up_command(root, proxy_port, dashboard_port, config, extra, db),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # a Ctrl-C in the terminal stops pytest, which then stops this
            )
        server = Server(f"127.0.0.1:{proxy_port}", f"http://127.0.0.1:{dashboard_port}", root / "mitmproxy" / CA_NAME)
        try:
            if _wait_ready(process, server, proxy_port):
                yield server
                return
        finally:
            _stop(process)
        if attempt:
            break
    log_text = log_path.read_text(errors="replace")[-3000:]
    raise ServerError(f"clickwatch up exited with {process.returncode}:\n{log_text}")


def _wait_ready(process: subprocess.Popen[bytes], server: Server, proxy_port: int) -> bool:
    """True once proxy, dashboard and CA are there; False when the process exited; ServerError on timeout."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if _listening(proxy_port) and _healthy(server.dashboard_url) and _has_certificate(server.ca_cert):
            return True
        time.sleep(0.1)
    raise ServerError(f"clickwatch up did not serve its proxy and dashboard within {START_TIMEOUT_SECONDS:.0f} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)  # as Ctrl-C: every captured delivery is written before it exits
    try:
        process.wait(STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def connect_remote(url: str, proxy: str | None, token: str | None, directory: Path) -> Server:
    """A clickwatch already running: check its dashboard answers and fetch its CA certificate into `directory`."""
    url = url.rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ServerError(f"--clickwatch-url {url!r}: give the dashboard's address, e.g. http://127.0.0.1:8000")
    if not proxy:
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        proxy = f"{host}:{DEFAULT_PROXY_PORT}"
    proxy = proxy.removeprefix("http://").rstrip("/")
    server = Server(proxy, url, directory / CA_NAME, token or None, local=False)
    try:
        server.api().summary(run="")
    except SourceError as exc:
        raise ServerError(f"--clickwatch-url: {exc}") from None
    request = urllib.request.Request(f"{url}/setup/{CA_NAME}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            pem = answer.read()
    except (urllib.error.URLError, OSError) as exc:
        raise ServerError(f"{url}/setup/{CA_NAME}: cannot fetch the proxy's CA certificate: {exc}") from None
    directory.mkdir(parents=True, exist_ok=True)
    server.ca_cert.write_bytes(pem)
    return server
