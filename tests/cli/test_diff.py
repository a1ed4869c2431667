"""`clickwatch diff` as users run it: subprocesses, real store files, baseline files, and two stand-in journeys."""

from __future__ import annotations

import io
import json
import os
import re
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

from clickwatch.cli.diff import print_report
from clickwatch.core.diff import compare
from clickwatch.standin.faults import Fault, FaultError, Faults
from clickwatch.store import diff as store_diff
from clickwatch.store import reader
from clickwatch.store.diff import BASELINE_VERSION, profile_run
from clickwatch.store.writer import StoreWriter
from tests.dashboard.conftest import T0, StoreBuilder
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration

CLICKWATCH = Path(sys.executable).with_name("clickwatch")


def clickwatch(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLICKWATCH), *args], capture_output=True, text=True, timeout=timeout, check=False, env=env
    )


def fill(store: StoreBuilder, run: str, *, extra: dict[str, object] | None = None, carts: int = 1) -> None:
    """A visit: a page with consent, a product view, `carts` add-to-carts and a search."""
    store.page(at=T0, consent="GIVEN", run=run)
    store.event(
        at=T0 + 1, schema="ProductView", body={"productSku": "1", "productPrice": 9.5, **(extra or {})}, run=run
    )
    for i in range(carts):
        store.event(at=T0 + 2 + i, schema="AddedToCart", body={"productSku": "1", "productQty": 1}, run=run)
    store.event(at=T0 + 9, schema="KeywordSearch", body={"searchTerm": "x", **(extra or {})}, run=run)


@pytest.fixture
def runs(store_builder: Callable[..., StoreBuilder]) -> StoreBuilder:
    """Run `base`; run `same` like it; run `wider` with a field added; run `dropped` without AddedToCart."""
    store = store_builder()
    fill(store, "base")
    fill(store, "same")
    fill(store, "wider", extra={"debugInfo": "x"})
    fill(store, "dropped", extra={"debugInfo": "x"}, carts=0)
    store.close()
    return store


def test_no_change_exits_0(runs: StoreBuilder, tmp_path: Path) -> None:
    junit = tmp_path / "diff.xml"
    result = clickwatch("diff", "base", "same", "--db", str(runs.path), "--junit", str(junit))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "NO CHANGE" in result.stdout
    assert re.search(r"ProductView +1\.00 +1\.00  unchanged", result.stdout), result.stdout
    suite = ET.parse(junit).getroot()
    assert (suite.get("tests"), suite.get("failures")) == ("3", "0")
    assert [case.get("name") for case in suite] == ["schema AddedToCart", "schema KeywordSearch", "schema ProductView"]


def test_an_added_field_is_reported_and_counts_only_when_asked(runs: StoreBuilder) -> None:
    result = clickwatch("diff", "base", "wider", "--db", str(runs.path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "field_added: ProductView: field debugInfo (string) added" in result.stdout
    assert "NO REGRESSION: 2 change(s)" in result.stdout
    strict = clickwatch("diff", "base", "wider", "--db", str(runs.path), "--fail-on", "field_added")
    assert strict.returncode == 1
    assert "REGRESSION field_added" in strict.stdout


def test_a_dropped_schema_exits_1_with_json_and_junit_reports(runs: StoreBuilder, tmp_path: Path) -> None:
    junit = tmp_path / "diff.xml"
    result = clickwatch(
        "diff", "base", "dropped", "--db", str(runs.path), "--format", "json", "--junit", str(junit)
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["regressed"] is True
    assert (report["base"]["run"], report["new"]["run"]) == ("base", "dropped")
    rows = {row["schema"]: row for row in report["schemas"]}
    missing = rows["AddedToCart"]["changes"]
    assert [(c["change"], c["regression"]) for c in missing] == [("schema_missing", True)]
    assert rows["AddedToCart"]["new"] is None and rows["AddedToCart"]["base"]["sent"] == 1
    added = [c for c in rows["ProductView"]["changes"] if c["change"] == "field_added"]
    assert [(c["field"], c["new"], c["regression"]) for c in added] == [("debugInfo", "string", False)]
    assert rows["ProductView"]["new"]["bodies_sampled"] == 1
    suite = ET.parse(junit).getroot()
    assert suite.get("failures") == "1"
    failed = [case for case in suite if case.find("failure") is not None]
    assert [case.get("name") for case in failed] == ["schema AddedToCart"]
    assert "schema_missing" in (failed[0].find("failure").text or "")  # type: ignore[union-attr]
    product = next(case for case in suite if case.get("name") == "schema ProductView")
    assert "field_added: ProductView: field debugInfo" in (product.findtext("system-out") or "")


def test_a_baseline_file_stands_for_its_run(runs: StoreBuilder, tmp_path: Path) -> None:
    baseline = tmp_path / "release-1.json"
    saved = clickwatch("diff", "--save-baseline", str(baseline), "base", "--db", str(runs.path))
    assert saved.returncode == 0, saved.stdout + saved.stderr
    assert "saved run 'base'" in saved.stdout
    assert stat.S_IMODE(baseline.stat().st_mode) == 0o600
    data = json.loads(baseline.read_text())
    assert data["clickwatch_baseline"] == BASELINE_VERSION and data["run"] == "base"
    product = next(s for s in data["schemas"] if s["schema"] == "ProductView")
    assert product["fields"] == {"productPrice": ["number"], "productSku": ["string"]}
    assert "9.5" not in baseline.read_text()  # field names and types, never captured values
    from_file = clickwatch("diff", str(baseline), "dropped", "--db", str(runs.path), "--format", "json")
    from_run = clickwatch("diff", "base", "dropped", "--db", str(runs.path), "--format", "json")
    assert from_file.returncode == from_run.returncode == 1
    file_report, run_report = json.loads(from_file.stdout), json.loads(from_run.stdout)
    assert file_report["schemas"] == run_report["schemas"]
    assert file_report["base"]["source"] == str(baseline)
    assert clickwatch("diff", str(baseline), "same", "--db", str(runs.path)).returncode == 0


def test_base_from_another_store_file(runs: StoreBuilder, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    writer = StoreWriter(str(other / "release.db"), None, clock=lambda: T0 + 3600)
    writer.start()
    release = StoreBuilder(writer, other / "release.db")
    fill(release, "release-1", carts=2)
    release.close()
    result = clickwatch("diff", "release-1", "base", "--base-db", str(release.path), "--db", str(runs.path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "REGRESSION count_down: AddedToCart: 2.00 -> 1.00 per visit (-50%)" in result.stdout
    # The same store through the environment, as `check` reads it.
    env = {**os.environ, "CLICKWATCH_DB": str(runs.path)}
    assert clickwatch("diff", "base", "same", env=env).returncode == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["base", "nosuchrun"], "no run 'nosuchrun' in"),
        (["base"], "give BASE and NEW"),
        (["base", "same", "extra"], "give BASE and NEW"),
        (["base", "same", "--fail-on", "everything"], "--fail-on: unknown everything"),
        (["base", "same", "--count-tolerance", "-1"], "--count-tolerance"),
        (["base", "same", "--sample", "0"], "--sample"),
        (["missing.json", "same"], "cannot read baseline missing.json"),
        (["base", "same", "--base-db", "/no/such/store.db"], "cannot open /no/such/store.db"),
        (["base", "same", "--junit", "/no/such/dir/diff.xml"], "--junit /no/such/dir/diff.xml"),
        (["--save-baseline", "out.json", "base", "same"], "--save-baseline FILE takes one RUN"),
        (["--save-baseline", "out.txt", "base"], "name the file *.json"),
        (["--save-baseline", "out.json", "nosuchrun"], "no run 'nosuchrun'"),
    ],
)
def test_usage_errors_exit_2(runs: StoreBuilder, tmp_path: Path, args: list[str], message: str) -> None:
    result = subprocess.run(
        [str(CLICKWATCH), "diff", "--db", str(runs.path), *args],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not JSON"),
        ('{"run": "x"}', "is not a clickwatch baseline"),
        ('{"clickwatch_baseline": 99, "run": "x"}', "baseline version 99 is not one this clickwatch reads (1)"),
        ('{"clickwatch_baseline": 1, "run": "x", "visits": 1, "sample": 1, "run_findings": [], "schemas": [{}]}',
         "baseline.schemas[0]: missing"),
        ('{"clickwatch_baseline": 1, "run": "x", "visits": "1", "schemas": []}', "baseline.visits: expected int"),
        ("[" * 100_000, "is not JSON"),
    ],
)  # fmt: skip
def test_a_bad_baseline_is_named(runs: StoreBuilder, tmp_path: Path, content: str, message: str) -> None:
    baseline = tmp_path / "bad.json"
    baseline.write_text(content)
    result = clickwatch("diff", str(baseline), "base", "--db", str(runs.path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr


def test_hostile_names_reach_the_terminal_spelled_out(store_builder: Callable[..., StoreBuilder]) -> None:
    store = store_builder()
    hostile = "evil\x1b[2J\x07run"
    fill(store, "base")
    fill(store, hostile, extra={"x\x1b]0;pwned\x07": 1})
    store.close()
    result = clickwatch("diff", "base", hostile, "--db", str(store.path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert "evil\\x1b[2J\\x07run" in result.stdout


# --- the scenario: two stand-in journeys, the second drops an event and adds a field -------------------


def demo_journey(tmp_path: Path, db: Path, *faults: str) -> str:
    """`clickwatch demo --journey` into `db`; the run it took."""
    env = {**os.environ, "HOME": str(tmp_path)}
    ports = ["--proxy-port", str(free_port()), "--dashboard-port", str(free_port())]
    fault_args = [arg for fault in faults for arg in ("--fault", fault)]
    result = subprocess.run(
        [str(CLICKWATCH), "demo", "--journey", "--db", str(db), *ports, *fault_args],
        capture_output=True, text=True, timeout=180, env=env, check=False,
    )  # fmt: skip
    found = re.search(r"as run '([^']+)'", result.stdout)
    assert found, result.stdout + result.stderr
    return found[1]


def test_two_standin_journeys_the_second_drops_an_event_and_adds_a_field(tmp_path: Path) -> None:
    db = tmp_path / "journeys.db"
    before = demo_journey(tmp_path, db)
    after = demo_journey(tmp_path, db, "drop-event:AddedToCart", "extra-field:debugInfo")
    junit = tmp_path / "diff.xml"
    result = clickwatch("diff", before, after, "--db", str(db), "--format", "json", "--junit", str(junit))
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    rows = {row["schema"]: row for row in report["schemas"]}
    assert [c["change"] for c in rows["AddedToCart"]["changes"]] == ["schema_missing"]
    for name in ("ProductView", "KeywordSearch"):
        added = [c["field"] for c in rows[name]["changes"] if c["change"] == "field_added"]
        assert added == ["debugInfo"], rows[name]
    # The dropped push is also a new finding about the run: event_not_sent, an error.
    loose = next(row for row in report["schemas"] if row["schema"] is None)
    assert ("new_finding", "event_not_sent", True) in [
        (c["change"], c["about"], c["regression"]) for c in loose["changes"]
    ]
    suite = ET.parse(junit).getroot()
    assert "schema AddedToCart" in [case.get("name") for case in suite if case.find("failure") is not None]
    # A run against itself changed nothing.
    same = clickwatch("diff", before, before, "--db", str(db))
    assert same.returncode == 0 and "NO CHANGE" in same.stdout, same.stdout


def test_body_sampling_is_bounded_and_says_so(
    store_builder: Callable[..., StoreBuilder], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_builder()
    store.page(at=T0, consent="GIVEN", run="long")
    for i in range(5):
        store.event(at=T0 + 1 + i, schema="ProductView", body={f"field{i}": i}, run="long")
    store.close()
    conn = reader.connect(str(store.path))
    try:
        two = profile_run(conn, "long", "s", sample=2).by_schema()["ProductView"]
        assert (two.sent, two.bodies, two.json_bodies) == (5, 2, 2)
        assert sorted(two.fields) == ["field0", "field1"]  # the run's first bodies
        assert not profile_run(conn, "long", "s", sample=2).scan_capped
        monkeypatch.setattr(store_diff, "SCAN_LIMIT", 3)
        capped = profile_run(conn, "long", "s", sample=100)
        assert capped.scan_capped and capped.by_schema()["ProductView"].bodies == 3
        out = io.StringIO()
        print_report(compare(capped, capped, 0.25, frozenset()), out)
        assert "among the run's first events only" in out.getvalue()
    finally:
        conn.close()
    result = clickwatch("diff", "long", "long", "--db", str(store.path), "--sample", "2", "--format", "json")
    row = json.loads(result.stdout)["schemas"][0]
    assert (row["base"]["bodies_sampled"], row["base"]["fields"]) == (2, 2)


def test_the_extra_field_fault_adds_fields_through_the_tags_configuration() -> None:
    faults = Faults.parse(["extra-field:debugInfo", "extra-field:variant,debugInfo"])
    assert faults.extra_fields() == ["debugInfo", "variant"]
    assert faults.tag_behaviour()["extraFields"] == ["debugInfo", "variant"]
    assert "extraFields" not in Faults.parse(["duplicate-events"]).tag_behaviour()
    assert str(Fault.parse(" Extra-Field: a , b ")) == "extra-field:a,b"
    for bad in ("extra-field", "extra-field:", "extra-field:a b", "extra-field:<img>"):
        with pytest.raises(FaultError, match="give field names"):
            Fault.parse(bad)
