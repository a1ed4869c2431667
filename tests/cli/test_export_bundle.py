"""`clickwatch export --bundle FILE.zip --run RUN` as users run it: a subprocess on a real store file."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.dashboard.conftest import T0, StoreBuilder

CLICKWATCH = Path(sys.executable).with_name("clickwatch")


def clickwatch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLICKWATCH), *args], capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def two_runs(store_builder: Callable[..., StoreBuilder]) -> StoreBuilder:
    store = store_builder()
    store.page(at=T0, consent="GIVEN", run="release-1")
    store.event(at=T0 + 1, run="release-1")
    store.event(at=T0 + 2, run="release-1", schema="AddedToCart", body={"productSku": "1", "productQty": 1})
    store.event(at=T0 + 3, run="release-2", status=500)
    store.close()
    return store


def test_a_bundle_is_written_and_exits_0(two_runs: StoreBuilder, tmp_path: Path) -> None:
    target = tmp_path / "evidence.zip"
    result = clickwatch("export", "--db", str(two_runs.path), "--bundle", str(target), "--run", "release-1")
    assert result.returncode == 0, result.stderr
    assert "2 deliveries" in result.stdout and "(healthy)" in result.stdout
    archive = zipfile.ZipFile(target)
    manifest = json.loads(archive.read("manifest.json"))
    assert manifest["run"] == "release-1"
    assert manifest["counts"]["deliveries"] == 2
    for member in manifest["members"]:
        assert hashlib.sha256(archive.read(member["name"])).hexdigest() == member["sha256"]
    # Captured traffic: readable by its owner only, like every export.
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert not Path(f"{target}.part").exists()


def test_an_unhealthy_run_is_still_exported_with_exit_0(two_runs: StoreBuilder, tmp_path: Path) -> None:
    target = tmp_path / "evidence.zip"
    result = clickwatch("export", "--db", str(two_runs.path), "--bundle", str(target), "--run", "release-2")
    assert result.returncode == 0, result.stderr
    assert "(unhealthy)" in result.stdout
    assert json.loads(zipfile.ZipFile(target).read("manifest.json"))["counts"]["healthy"] is False


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "--bundle needs --run RUN"),
        (["--run", "no-such-run"], "no run 'no-such-run' in this store"),
        (["--run", "release-1", "--kind", "clickstream"], "--kind cannot be given with it"),
        (["--run", "release-1", "--since", "1h", "--output", "x.jsonl"], "--since, --output cannot be given"),
    ],
)
def test_usage_errors_exit_2_and_leave_no_file(
    two_runs: StoreBuilder, tmp_path: Path, extra: list[str], message: str
) -> None:
    target = tmp_path / "evidence.zip"
    result = clickwatch("export", "--db", str(two_runs.path), "--bundle", str(target), *extra)
    assert result.returncode == 2
    assert message in result.stderr
    assert [p.name for p in tmp_path.iterdir() if ".zip" in p.name] == []


def test_a_missing_store_or_an_unwritable_target_exits_2(two_runs: StoreBuilder, tmp_path: Path) -> None:
    missing = clickwatch("export", "--db", str(tmp_path / "absent.db"), "--bundle", str(tmp_path / "b.zip"),
                         "--run", "release-1")  # fmt: skip
    assert missing.returncode == 2
    assert "absent.db" in missing.stderr
    nowhere = tmp_path / "no" / "such" / "dir" / "b.zip"
    unwritable = clickwatch("export", "--db", str(two_runs.path), "--bundle", str(nowhere), "--run", "release-1")
    assert unwritable.returncode == 2
    assert "--bundle" in unwritable.stderr and "No such file or directory" in unwritable.stderr


def test_an_existing_bundle_is_kept_when_the_new_one_fails(two_runs: StoreBuilder, tmp_path: Path) -> None:
    target = tmp_path / "evidence.zip"
    assert (
        clickwatch("export", "--db", str(two_runs.path), "--bundle", str(target), "--run", "release-1").returncode == 0
    )
    before = target.read_bytes()
    result = clickwatch("export", "--db", str(two_runs.path), "--bundle", str(target), "--run", "gone")
    assert result.returncode == 2
    assert target.read_bytes() == before
