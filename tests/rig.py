"""The test rig: free loopback ports, waiting with a deadline, and a real `clickwatch up` as a user starts it.

`clickwatch_up(root, *args)` runs the command on free loopback ports with its store and mitmproxy directory under
`root`, waits until the dashboard answers /healthz and the proxy accepts connections, and on leaving the block
stops it as Ctrl-C does (SIGINT, then a kill if it hangs). Its output is kept in `root/up.log`; a block that
fails prints the end of it, and a start-up that fails says why with the whole of it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

CLICKWATCH = Path(sys.executable).with_name("clickwatch")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
LOG_TAIL = 10_000  # characters of the log a failed block prints
CA_NAME = "mitmproxy-ca-cert.pem"


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:`port`."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=timeout):
        return True
    return False


def wait_until[T](probe: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Call `probe` until it returns something truthy; fail the test naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


def stop_process(process: subprocess.Popen[Any], sig: int = signal.SIGINT, timeout: float = STOP_TIMEOUT) -> bool:
    """Send `sig` and wait for the exit; kill after `timeout` seconds. True when it exited on its own."""
    if process.poll() is not None:
        return True
    process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return False
    return True


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment without proxy variables or CLICKWATCH_* settings (a test states its own), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy") and not k.startswith("CLICKWATCH_")}
    return {**env, **(extra or {})}


@dataclass
class Up:
    """A running `clickwatch up`: its process, its two loopback ports, its store and its output."""

    process: subprocess.Popen[bytes]
    proxy_port: int
    dashboard_port: int
    db: Path
    confdir: Path
    log_path: Path
    err_path: Path | None = None  # stderr, when it is kept apart from the log

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def ca_cert(self) -> Path:
        """The proxy's CA certificate (mitmproxy writes it into its confdir at start-up)."""
        return self.confdir / CA_NAME

    def log(self) -> str:
        """What it printed so far: stdout, and stderr too unless that is kept apart."""
        return self.log_path.read_text(errors="replace")

    def errors(self) -> str:
        """What it printed on stderr, when that is kept apart ("" otherwise)."""
        return self.err_path.read_text(errors="replace") if self.err_path else ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def healthy(self) -> bool:
        """Whether the dashboard answers /healthz with 200 (it can read the store)."""
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{self.dashboard_url}/healthz", timeout=2, trust_env=False).status_code == 200
        return False

    def client(self, timeout: float = 15.0, **kwargs: Any) -> httpx.Client:
        """An HTTP client that sends everything through the proxy (environment proxies ignored)."""
        return httpx.Client(proxy=self.proxy_url, timeout=timeout, trust_env=False, **kwargs)

    def stop(self, sig: int = signal.SIGINT, timeout: float = STOP_TIMEOUT) -> int:
        """Stop it with `sig`; its exit status. One that does not exit in time is killed and fails the test."""
        if not stop_process(self.process, sig, timeout):
            name = signal.Signals(sig).name
            pytest.fail(f"clickwatch up did not exit within {timeout:.0f} s of {name}\n--- its log ---\n{self.log()}")
        return int(self.process.returncode)


@contextlib.contextmanager
def clickwatch_up(
    root: Path,
    *args: str,
    quiet: bool = True,
    db: Path | None = None,
    confdir: Path | None = None,
    env: Mapping[str, str] | None = None,
    stderr_apart: bool = False,
    start_timeout: float = START_TIMEOUT,
) -> Iterator[Up]:
    """`clickwatch up [--quiet] ARGS` on free loopback ports, ready, for as long as the block lasts.

    The store is `db` (default `root/cw.db`), mitmproxy's directory `confdir` (default `root/mitm`); the
    environment is this one without proxies and CLICKWATCH_* settings, plus `env`. Output goes to `root/up.log`
    (stderr to `root/up.err` with `stderr_apart`).
    """
    root.mkdir(parents=True, exist_ok=True)
    db = db or root / "cw.db"
    confdir = confdir or root / "mitm"
    proxy_port, dashboard_port = free_port(), free_port()
    command = [
        str(CLICKWATCH), "up", *(["--quiet"] if quiet else []),
        "--proxy-port", str(proxy_port), "--dashboard-port", str(dashboard_port),
        "--db", str(db), "--set", f"confdir={confdir}", *args,
    ]  # fmt: skip
    log_path = root / "up.log"
    err_path = root / "up.err" if stderr_apart else None
    with contextlib.ExitStack() as files:
        out = files.enter_context(log_path.open("wb"))
        err = files.enter_context(err_path.open("wb")) if err_path else subprocess.STDOUT
        process = subprocess.Popen(command, cwd=root, env=clean_env(env), stdout=out, stderr=err)
    up = Up(process, proxy_port, dashboard_port, db, confdir, log_path, err_path)
    try:
        _wait_ready(up, start_timeout)
    except BaseException:
        stop_process(process)
        raise
    try:
        yield up
    except GeneratorExit:
        raise
    except BaseException:
        stop_process(process)
        print(f"--- clickwatch up log ({log_path}), its end ---\n{up.log()[-LOG_TAIL:]}{up.errors()[-LOG_TAIL:]}")
        raise
    finally:
        stop_process(process)


def _wait_ready(up: Up, timeout: float) -> None:
    """Return once the dashboard is healthy and the proxy listens; fail with the log if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while not (up.healthy() and listening(up.proxy_port)):
        if not up.alive():
            pytest.fail(f"clickwatch up exited with {up.process.returncode} during start-up:\n{up.log()}{up.errors()}")
        if time.monotonic() >= deadline:
            pytest.fail(f"clickwatch up did not serve its proxy and dashboard within {timeout:.0f} s:\n{up.log()}")
        time.sleep(0.1)
