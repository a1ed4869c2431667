"""A damaged store is a clear error: every command that reads it exits 2 with one line naming the file and what is
wrong, never a traceback (exit 1 would read as "unhealthy" or "regressed" in CI). Real damage in a real store file:
pages overwritten on disk, and values that are not UTF-8 written into TEXT columns with sqlite3."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.rig import CLICKWATCH, clean_env, clickwatch_up, free_port, wait_until
from tests.store.damage import MALFORMED, UNDECODABLE

pytestmark = pytest.mark.integration

TENANT = "https://acme.api.us.context.cloud.sap"
# One clickstream POST, as a browser's HAR export holds it.
VISIT = {
    "startedDateTime": "2026-11-27T10:00:01Z",
    "time": 20,
    "request": {
        "method": "POST",
        "url": f"{TENANT}/edge/clickstreamEvents",
        "headers": [
            {"name": "hybris-schema", "value": "context/commerce/ProductView"},
            {"name": "consent-reference", "value": "cr"},
        ],
        "postData": {"mimeType": "application/json", "text": '{"productSku":"1"}'},
    },
    "response": {
        "status": 201,
        "headers": [{"name": "Content-Type", "value": "application/json"}],
        "content": {"mimeType": "application/json", "text": ""},
    },
}


def clickwatch(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLICKWATCH), *args], capture_output=True, text=True, timeout=60, check=False, cwd=cwd, env=clean_env()
    )


COMMANDS: dict[str, Callable[[Path, Path], list[str]]] = {
    "check": lambda db, out: ["check", "--db", str(db)],
    "check --run": lambda db, out: ["check", "--db", str(db), "--run", "default"],
    "diff": lambda db, out: ["diff", "--db", str(db), "other", "default"],
    "diff --save-baseline": lambda db, out: ["diff", "--db", str(db), "--save-baseline", f"{out}/b.json", "default"],
    "export": lambda db, out: ["export", "--db", str(db), "--format", "har", "--output", str(out / "all.har")],
    "export --bundle": lambda db, out: ["export", "--db", str(db), "--bundle", str(out / "b.zip"), "--run", "default"],
}


@pytest.mark.parametrize("damage", ["pages", "text"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_reading_command_exits_2_with_one_line_naming_the_file(
    damaged_stores: dict[str, Path], tmp_path: Path, damage: str, command: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    whole = clickwatch(*COMMANDS[command](damaged_stores["good"], out))
    assert whole.returncode in (0, 1) and "Traceback" not in whole.stderr, whole.stderr  # the same store, whole
    for made in out.iterdir():
        made.unlink()

    result = clickwatch(*COMMANDS[command](damaged_stores[damage], out))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    line = result.stderr.strip()
    assert line.startswith(f"clickwatch: {damaged_stores[damage]} is damaged: "), line
    assert (MALFORMED if damage == "pages" else UNDECODABLE) in line
    assert "\\xff" not in line and "\ufffd" not in line  # the value itself is not quoted: captured data stays out
    # Nothing that passes for a whole export or bundle is left behind.
    assert sorted(p.name for p in out.iterdir()) == []


def test_import_into_a_damaged_store_is_refused_and_into_a_whole_one_works(
    damaged_stores: dict[str, Path], tmp_path: Path
) -> None:
    har = tmp_path / "visit.har"
    creator = {"name": "test", "version": "1"}
    har.write_text(json.dumps({"log": {"version": "1.2", "creator": creator, "entries": [VISIT]}}))
    before = (damaged_stores["pages"].read_bytes(), damaged_stores["text"].read_bytes())
    damaged = clickwatch("import", str(har), "--db", str(damaged_stores["pages"]), "--run", "imported")
    assert damaged.returncode == 2, damaged.stdout + damaged.stderr
    assert damaged.stderr.count("\n") == 1 and "Traceback" not in damaged.stderr
    refusal = f"clickwatch: {damaged_stores['pages']} is damaged: {MALFORMED} (quick_check: Page "
    assert damaged.stderr.startswith(refusal)
    assert damaged_stores["pages"].read_bytes() == before[0]  # nothing written into it

    # A value that is not UTF-8 is found only where it is read (a quick check reads pages, not values): the import
    # does not read it, and succeeds; the commands that do read it say so (above).
    text = clickwatch("import", str(har), "--db", str(damaged_stores["text"]), "--run", "imported")
    assert text.returncode == 0 and "Traceback" not in text.stderr, text.stdout + text.stderr

    whole = clickwatch("import", str(har), "--db", str(damaged_stores["good"]), "--run", "imported")
    assert whole.returncode == 0, whole.stdout + whole.stderr
    assert whole.stdout.startswith("imported 1 deliveries") and "as run 'imported'" in whole.stdout
    assert clickwatch("check", "--db", str(damaged_stores["good"]), "--run", "imported").returncode in (0, 1)


def test_up_refuses_a_store_with_damaged_pages_before_starting(damaged_stores: dict[str, Path], tmp_path: Path) -> None:
    proxy, dashboard = free_port(), free_port()
    result = subprocess.run(
        [str(CLICKWATCH), "up", "--db", str(damaged_stores["pages"]), "--proxy-port", str(proxy),
         "--dashboard-port", str(dashboard), "--set", f"confdir={tmp_path / 'mitm'}"],
        capture_output=True, text=True, timeout=60, env=clean_env(), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"clickwatch: {damaged_stores['pages']} is damaged: {MALFORMED}")
    assert result.stdout == ""  # refused before anything started


def test_up_on_a_store_with_undecodable_values_serves_and_says_so(
    damaged_stores: dict[str, Path], tmp_path: Path
) -> None:
    # No SQLite check reads values: `up` starts, and its progress line says what it meets in place of the counts.
    with clickwatch_up(tmp_path / "up", quiet=False, db=damaged_stores["text"]) as up:
        wanted = f"{damaged_stores['text']} is damaged: {UNDECODABLE} 'message' (not UTF-8 text)"
        wait_until(lambda: wanted in up.log(), 30, "the damage in the progress line")
        assert up.healthy() and up.alive()
    assert "Traceback" not in up.log()
