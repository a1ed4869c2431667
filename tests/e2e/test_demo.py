"""`clickwatch demo` as a QA runs it after installing: a real process, real ports, the system Chromium."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration

CLICKWATCH = Path(sys.executable).with_name("clickwatch")


def demo(tmp_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    # HOME keeps mitmproxy's CA (~/.mitmproxy) inside the test's own directory.
    env = {**os.environ, "HOME": str(tmp_path)}
    ports = ["--proxy-port", str(free_port()), "--dashboard-port", str(free_port())]
    command = [str(CLICKWATCH), "demo", *ports, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)


@pytest.mark.parametrize(
    ("args", "code", "shown", "delivered"),
    [
        ([], 0, ["ok   ProductView", "ok   AddedToCart", "ok   KeywordSearch", "HEALTHY"], 1),
        (["--fault", "status:503"], 1, ["rejected (503)", "MISS ProductView", "UNHEALTHY"], 0),
    ],
    ids=["healthy", "status-503"],
)
def test_demo_journey_judges_the_visit(
    tmp_path: Path, args: list[str], code: int, shown: list[str], delivered: int
) -> None:
    result = demo(tmp_path, "--journey", *args)
    assert result.returncode == code, result.stdout + result.stderr
    assert "journey: home → read → accept → product → add-to-cart → search" in result.stdout
    for text in ["storefront  https://localhost:", "dashboard   http://127.0.0.1:", *shown]:
        assert text in result.stdout, result.stdout
    # The funnel, from the data-layer observer: pushed, pushed with consent, sent, delivered.
    assert "funnel (data layer -> tenant):" in result.stdout
    for schema in ("ProductView", "AddedToCart", "KeywordSearch"):
        assert re.search(rf"\n  {schema} +1 +1 +1 +{delivered}\n", result.stdout), result.stdout


def test_demo_without_chromium_says_how_to_install_it(tmp_path: Path) -> None:
    result = demo(tmp_path, "--journey", "--chromium", str(tmp_path / "no-chromium"), timeout=30)
    assert result.returncode == 2
    assert "apt-get install chromium" in result.stderr
    assert result.stderr.count("\n") == 1
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--fault", "teapot"], "--fault: unknown fault 'teapot'"), (["--proxy-port", "0"], "--proxy-port")],
)
def test_demo_usage_errors_exit_2_before_anything_starts(tmp_path: Path, args: list[str], message: str) -> None:
    result = subprocess.run(
        [str(CLICKWATCH), "demo", "--dashboard-port", str(free_port()), *args],
        capture_output=True, text=True, timeout=30, env={**os.environ, "HOME": str(tmp_path)}, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("background", [False, True], ids=["terminal", "started-with-sigint-ignored"])
def test_demo_without_journey_serves_until_interrupted(tmp_path: Path, background: bool) -> None:
    # A shell script's `clickwatch demo &` starts with SIGINT ignored; `kill -INT` must stop it all the same.
    proxy_port, dashboard_port, shop_port, tenant_port = free_port(), free_port(), free_port(), free_port()
    command = [
        str(CLICKWATCH), "demo", "--proxy-port", str(proxy_port), "--dashboard-port", str(dashboard_port),
        "--shop-port", str(shop_port), "--tenant-port", str(tenant_port), "--set", "connection_strategy=lazy",
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HOME": str(tmp_path), "PYTHONFAULTHANDLER": "1"},
        start_new_session=True,  # its own group, so that a hang can be cleared up whole
        preexec_fn=_ignore_sigint if background else None,
    )
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C stops everything"):
                break
        banner = "".join(lines)
        storefront = re.search(r"also (http://localhost:\d+/)", banner)
        assert storefront, banner
        assert f"--proxy-server=http://127.0.0.1:{proxy_port}" in banner
        # The ports asked for: the addresses are known before it starts.
        assert f"storefront  https://localhost:{shop_port}/" in banner
        assert f"tenant      https://127.0.0.1:{tenant_port}" in banner
        # The storefront answers through the proxy, to a client naming its run by proxy credentials.
        with httpx.Client(proxy=f"http://127.0.0.1:{proxy_port}", trust_env=False, timeout=10) as anonymous:
            assert anonymous.get(storefront[1]).status_code == 407
        credentials = f"http://demo-tester:x@127.0.0.1:{proxy_port}"
        with httpx.Client(proxy=credentials, trust_env=False, timeout=10) as through_proxy:
            assert "Stand-in Electronics" in through_proxy.get(storefront[1]).text
        dashboard = f"http://127.0.0.1:{dashboard_port}"
        assert httpx.get(f"{dashboard}/healthz", trust_env=False).status_code == 200
        deadline = time.monotonic() + 15
        while not httpx.get(f"{dashboard}/api/runs", params={"name": "demo-tester"}, trust_env=False).json()["items"]:
            assert time.monotonic() < deadline, "the page load never reached run demo-tester"
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        try:
            rest, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            # Say what it was doing: SIGABRT makes the demo and its `clickwatch up` child dump every thread's
            # stack (PYTHONFAULTHANDLER) into the output.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGABRT)
            try:
                rest = process.communicate(timeout=10)[0]
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"clickwatch demo did not stop within 30 s of SIGINT:\n{banner}{rest}")
        assert process.returncode == 0, banner + rest
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_demo_journey_with_the_service_worker_is_healthy_and_names_the_worker(tmp_path: Path) -> None:
    result = demo(tmp_path, "--journey", "--service-worker")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "(Spartacus style, with a service worker;" in result.stdout
    assert "journey: home → read → accept → worker → reload → product → add-to-cart → search" in result.stdout
    assert "service worker (/ngsw/state): Driver state: NORMAL ((nominal))" in result.stdout
    for text in ["ok   ProductView", "ok   AddedToCart", "ok   KeywordSearch", "HEALTHY"]:
        assert text in result.stdout, result.stdout
    assert re.search(r"\n  service_worker +1\n", result.stdout), result.stdout
    # The pages after the reload came from the worker's cache, with the observer the proxy added to its copy.
    for schema in ("ProductView", "AddedToCart", "KeywordSearch"):
        assert re.search(rf"\n  {schema} +1 +1 +1 +1\n", result.stdout), result.stdout
