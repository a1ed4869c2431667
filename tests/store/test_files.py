"""Files holding captured data are created 0600, whatever the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from clickwatch.store.files import create_private, open_private
from clickwatch.store.schema import open_database


@pytest.fixture(autouse=True)
def permissive_umask() -> Iterator[None]:
    before = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(before)


def _mode(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_new_store_and_its_wal_and_shm_are_0600(tmp_path: Path) -> None:
    path = tmp_path / "cw.db"
    db = open_database(str(path))
    try:
        db.execute("CREATE TABLE IF NOT EXISTS probe (x)")
        db.conn.commit()
        assert [_mode(f"{path}{suffix}") for suffix in ("", "-wal", "-shm")] == [0o600] * 3
    finally:
        db.conn.close()


def test_an_existing_file_keeps_the_mode_its_owner_gave_it(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    path.write_bytes(b"")
    path.chmod(0o640)
    create_private(str(path))
    assert _mode(path) == 0o640


def test_an_export_is_created_0600_and_an_overwritten_one_made_0600(tmp_path: Path) -> None:
    new, old = tmp_path / "new.csv", tmp_path / "old.csv"
    old.write_text("old contents")
    old.chmod(0o644)
    for path in (new, old):
        with open_private(str(path), "w", encoding="utf-8") as handle:
            handle.write("captured")
        assert _mode(path) == 0o600
        assert path.read_text() == "captured"
    with open_private(str(new), "wb") as binary:
        binary.write(b"\x00")
    assert new.read_bytes() == b"\x00"
    with pytest.raises(ValueError):
        open_private(str(new), "a")
