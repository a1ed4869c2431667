"""`clickwatch browse` as a user runs it: a real stand-in shop, a real `clickwatch up` (started by browse or
already running), the system Chromium trusting the proxy's CA by its key pin, nothing mocked."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from clickwatch.cli import browse
from clickwatch.cli.instance import start_local
from clickwatch.standin.faults import Faults
from clickwatch.standin.server import TAG_PATTERN, StandIn

pytestmark = pytest.mark.integration

CLICKWATCH = Path(sys.executable).with_name("clickwatch")
CONFIG = f"[capture]\ntag_pattern = '{TAG_PATTERN}'\n[consent]\ngrace_seconds = 2\n"


def clickwatch(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env_free = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    return subprocess.run(
        [str(CLICKWATCH), *args], capture_output=True, text=True, timeout=timeout, check=False, env=env_free
    )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "standin.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with StandIn() as shop:
        yield shop


def test_headless_audit_of_a_page_that_waits_for_consent_exits_0(standin: StandIn, config: Path) -> None:
    result = clickwatch(
        "browse", "--headless", "--config", str(config), "--upstream-insecure", "--run", "audit-ok",
        "--wait", "15", standin.storefront_url(),
    )  # fmt: skip
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    # The HTTPS page came through the proxy's own certificate, trusted by the pin alone.
    assert f"loaded {standin.storefront_url()} (200)" in out
    assert "run 'audit-ok'" in out and "/?run=audit-ok" in out
    assert " tag - delivered (200)" in out
    assert "clickstream" not in out  # the stand-in's tag waits for consent
    assert out.rstrip().endswith("HEALTHY")


def test_headless_audit_of_a_page_that_tracks_before_consent_exits_1(standin: StandIn, config: Path) -> None:
    standin.faults = Faults.parse(["track-before-consent"])
    result = clickwatch(
        "browse", "--headless", "--config", str(config), "--upstream-insecure", "--wait", "15",
        standin.storefront_url(),
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "error consent_violation" in result.stdout
    assert "UNHEALTHY: delivery" in result.stdout
    assert "run 'browse-" in result.stdout  # a fresh run name when none is given


def test_headless_audit_through_a_running_clickwatch(standin: StandIn, config: Path, tmp_path: Path) -> None:
    with start_local(tmp_path / "up", str(config), ["--upstream-insecure"]) as server:
        result = clickwatch(
            "browse", "--headless", "--url", server.dashboard_url, "--proxy", server.proxy, "--run", "remote-audit",
            "--wait", "15", standin.storefront_url(),
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"through the proxy {server.proxy}" in result.stdout
        assert server.api().summary(run="remote-audit")["deliveries"]["delivered"] >= 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--headless"], "--headless: give the URL"),
        (["--browser", "/nonexistent/browser", "https://x.example/"], "--browser '/nonexistent/browser'"),
        (["--url", "http://127.0.0.1:9", "--db", "x.db", "https://x.example/"], "--db: for the clickwatch browse"),
        (["--proxy", "127.0.0.1:1", "https://x.example/"], "--proxy names the proxy of the clickwatch --url"),
        (["--headless", "--browser", "firefox", "https://x.example/"], "firefox"),
        (["--headless", "--wait", "-1", "https://x.example/"], "--wait: must be 0 or more"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    result = clickwatch("browse", *args, timeout=30)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr


def test_the_pin_is_openssls_spki_digest(standin: StandIn) -> None:
    pem = standin.ca_cert.read_bytes()
    pubkey = subprocess.run(["openssl", "x509", "-pubkey", "-noout"], input=pem, capture_output=True, check=True)
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-outform", "der"], input=pubkey.stdout, capture_output=True, check=True
    )
    sha = ["openssl", "dgst", "-sha256", "-binary"]
    digest = subprocess.run(sha, input=der.stdout, capture_output=True, check=True)
    expected = subprocess.run(["base64"], input=digest.stdout, capture_output=True, check=True).stdout.decode().strip()
    assert browse.spki_pin(standin.ca_cert) == expected
    assert f"--ignore-certificate-errors-spki-list={expected}" in browse.chromium_args(standin.ca_cert, True)


def test_a_firefox_profile_trusts_the_ca_in_its_own_database_and_proxies_loopback(
    standin: StandIn, tmp_path: Path
) -> None:
    profile = browse.firefox_profile(tmp_path / "profile", standin.ca_cert, "127.0.0.1:18080")
    listed = subprocess.run(["certutil", "-d", f"sql:{profile}", "-L"], capture_output=True, text=True, check=True)
    [line] = [row for row in listed.stdout.splitlines() if row.startswith("clickwatch proxy CA")]
    assert line.split()[-1] == "C,,"
    prefs = (profile / "user.js").read_text()
    assert 'user_pref("network.proxy.ssl", "127.0.0.1");' in prefs
    assert 'user_pref("network.proxy.ssl_port", 18080);' in prefs
    assert 'user_pref("network.proxy.allow_hijacking_localhost", true);' in prefs
    assert 'user_pref("security.enterprise_roots.enabled", false);' in prefs


def test_a_page_that_does_not_load_is_not_a_healthy_audit(tmp_path: Path) -> None:
    with StandIn() as stopped:
        url = stopped.storefront_url()
    result = clickwatch("browse", "--headless", "--wait", "0", url)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "UNHEALTHY: the page was not loaded: " in result.stdout
