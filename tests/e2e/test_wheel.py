"""clickwatch installed from its wheel keeps to its own namespace: beside modules named `core`, `store`, `cli`,
`addon`, `dashboard` and `standin` (which blow up when imported), `clickwatch demo --journey` and
`mitmdump -s "$(clickwatch addon-path)"` still work.

The wheel is built from a copy of the repository and installed without dependencies into a fresh virtual
environment; the dependencies come from the test's own environment through a `.pth` line (no download but the
build backend's).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import REPO, Upstream, free_port, query, wait_until

pytestmark = pytest.mark.integration

SHADOWED = ("core", "store", "cli", "addon", "dashboard", "standin")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the clickwatch wheel in it; returns its bin directory."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    shutil.copytree(
        REPO,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", "*.db*", "tests", "bench"
        ),
    )
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(root / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (root / "dist").glob("clickwatch-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", str(wheel)]
    installed = subprocess.run(install, capture_output=True, text=True, timeout=120, check=False)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # Dependencies from this environment; its own editable clickwatch is not activated by a .pth line.
    (Path(site) / "_clickwatch_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin"


@pytest.fixture
def shadowed(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A working directory and PYTHONPATH holding modules with clickwatch's old top-level names."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    for name in SHADOWED:
        (shadow / f"{name}.py").write_text(f"raise ImportError('the unrelated module {name!r} was imported')\n")
    env = {**os.environ, "HOME": str(tmp_path), "PYTHONPATH": str(shadow)}
    env.pop("VIRTUAL_ENV", None)
    return shadow, env


def test_the_wheel_installs_its_own_package(installed: Path, shadowed: tuple[Path, dict[str, str]]) -> None:
    shadow, env = shadowed
    where = subprocess.run(
        [str(installed / "python"), "-c", "import clickwatch.core.judge as j; print(j.__file__)"],
        capture_output=True,
        text=True,
        cwd=shadow,
        env=env,
        check=True,
    ).stdout
    assert str(installed.parent) in where
    assert str(REPO) not in where


def test_demo_journey_runs_from_the_wheel_beside_modules_named_core_and_store(
    installed: Path, shadowed: tuple[Path, dict[str, str]]
) -> None:
    shadow, env = shadowed
    ports = ["--proxy-port", str(free_port()), "--dashboard-port", str(free_port())]
    result = subprocess.run(
        [str(installed / "clickwatch"), "demo", *ports, "--journey"],
        capture_output=True,
        text=True,
        cwd=shadow,
        env=env,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "HEALTHY" in result.stdout
    assert "was imported" not in result.stdout + result.stderr


def test_mitmdump_loads_the_installed_addon_by_path(
    installed: Path, shadowed: tuple[Path, dict[str, str]], upstream: Upstream, tmp_path: Path
) -> None:
    shadow, env = shadowed
    addon = subprocess.run(
        [str(installed / "clickwatch"), "addon-path"], capture_output=True, text=True, env=env, check=True
    ).stdout.strip()
    assert addon.startswith(str(installed.parent)), addon
    port, db = free_port(), tmp_path / "cw.db"
    mitmdump = [str(installed / "python"), "-c", "from mitmproxy.tools.main import mitmdump; mitmdump()"]
    options = ["--listen-host", "127.0.0.1", "--listen-port", str(port), "-q", "-s", addon]
    options += ["--set", f"clickwatch_db={db}", "--set", f"confdir={tmp_path / 'mitm'}"]
    process = subprocess.Popen(
        [*mitmdump, *options],
        cwd=shadow,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        proxy = f"http://127.0.0.1:{port}"

        url = upstream.url("/s201/wheel/edge/clickstreamEvents")

        def posted() -> bool:
            try:
                with httpx.Client(proxy=proxy, timeout=5) as client:
                    answer = client.post(url, json=[{"hybris-schema": "ProductView", "productSku": "1"}])
            except httpx.TransportError:
                return False
            return answer.status_code == 201

        wait_until(posted, 30, "mitmdump with the installed addon to forward a clickstream POST")
        rows = wait_until(
            lambda: db.exists() and query(db, "SELECT kind, status_code FROM deliveries"),
            15,
            "the delivery in the store",
        )
        assert [tuple(r) for r in rows] == [("clickstream", 201)]
    finally:
        os.killpg(process.pid, signal.SIGINT)
        output = process.communicate(timeout=30)[0].decode(errors="replace")
    assert "was imported" not in output, output
