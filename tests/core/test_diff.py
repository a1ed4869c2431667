"""The comparison of two run profiles (core/diff.py): each kind of change, the tolerance, what --fail-on counts."""

from __future__ import annotations

from typing import Any

import pytest

from clickwatch.core.diff import (
    CHANGES,
    DEFAULT_FAIL_ON,
    MAX_FIELDS,
    Change,
    DiffUsageError,
    FindingCount,
    RunProfile,
    SchemaProfile,
    add_fields,
    as_dict,
    check_tolerance,
    compare,
    counts,
    parse_fail_on,
)

FAIL_ON = parse_fail_on(DEFAULT_FAIL_ON)


def schema(
    name: str,
    delivered: int = 1,
    *,
    rejected: int = 0,
    failed: int = 0,
    bodies: list[Any] | None = None,
    findings: tuple[FindingCount, ...] = (),
) -> SchemaProfile:
    fields: dict[str, set[str]] = {}
    for body in bodies or []:
        add_fields(body, fields)
    return SchemaProfile(
        name,
        {"delivered": delivered, "rejected": rejected, "failed": failed, "pending": 0},
        findings,
        {path: tuple(sorted(kinds)) for path, kinds in fields.items()},
        bodies=len(bodies or []),
        json_bodies=len(bodies or []),
    )


def run(*schemas: SchemaProfile, visits: int = 1, name: str = "r", loose: tuple[FindingCount, ...] = ()) -> RunProfile:
    return RunProfile(name, "test.db", visits, schemas, loose, sample=100)


def changes(base: RunProfile, new: RunProfile, tolerance: float = 0.25) -> list[Change]:
    return list(compare(base, new, tolerance, FAIL_ON).changes)


def kinds(found: list[Change]) -> list[tuple[str, str | None]]:
    return [(c.change, c.schema) for c in found]


def test_the_same_profile_twice_has_no_change() -> None:
    profile = run(schema("ProductView", bodies=[{"productSku": "1", "data": {"products": [{"code": "x"}]}}]))
    diff = compare(profile, profile, 0.25, FAIL_ON)
    assert diff.changes == ()
    assert not diff.regressed


def test_a_schema_dropped_is_a_regression_and_one_added_is_reported_only() -> None:
    base = run(schema("ProductView"), schema("AddedToCart"))
    new = run(schema("ProductView"), schema("KeywordSearch"))
    diff = compare(base, new, 0.25, FAIL_ON)
    assert kinds(list(diff.changes)) == [("schema_missing", "AddedToCart"), ("schema_added", "KeywordSearch")]
    assert [c.regression for c in diff.changes] == [True, False]
    assert diff.regressed


def test_field_paths_name_nested_objects_and_arrays() -> None:
    fields: dict[str, set[str]] = {}
    add_fields({"data": {"products": [{"code": "1", "qty": 2}], "tags": ["a", None]}, "n": None}, fields)
    assert fields == {
        "data": {"object"},
        "data.products": {"array"},
        "data.products[].code": {"string"},
        "data.products[].qty": {"number"},
        "data.tags": {"array"},
        "data.tags[]": {"string", "null"},
        "n": {"null"},
    }
    # A batch (array of event objects) is read like its events; a scalar body has one path.
    batch: dict[str, set[str]] = {}
    add_fields([{"a": 1}, {"b": True}], batch)
    assert batch == {"a": {"number"}, "b": {"boolean"}}
    scalar: dict[str, set[str]] = {}
    add_fields("text", scalar)
    assert scalar == {"(body)": {"string"}}


def test_fields_added_missing_and_retyped() -> None:
    base = run(schema("ProductView", bodies=[{"productSku": "1", "productPrice": 9.5, "old": "x"}]))
    new = run(
        schema("ProductView", bodies=[{"productSku": 1, "productPrice": 9.5, "data": {"products": [{"code": "a"}]}}])
    )
    found = changes(base, new)
    by_field = {c.field: c for c in found}
    assert by_field["data.products[].code"].change == "field_added"
    assert by_field["data.products[].code"].new == "string"
    assert by_field["old"].change == "field_missing"
    assert by_field["productSku"].change == "field_type_changed"
    assert (by_field["productSku"].base, by_field["productSku"].new) == ("string", "number")
    assert "productPrice" not in by_field
    regressions = {c.field for c in found if c.regression}
    assert regressions == {"old", "productSku"}  # an added field is reported, not counted by default


def test_fields_are_not_compared_without_bodies_on_both_sides() -> None:
    # "Unknown" when evidence cannot decide: no JSON bodies sampled in NEW says nothing about its fields.
    base = run(schema("ProductView", bodies=[{"productSku": "1"}]))
    new = run(schema("ProductView"))
    assert changes(base, new) == []


def test_a_capped_field_list_does_not_accuse_a_field_of_missing() -> None:
    wide = {f"f{i:04d}": i for i in range(MAX_FIELDS + 10)}
    fields: dict[str, set[str]] = {}
    assert add_fields(wide, fields) is False
    assert len(fields) == MAX_FIELDS
    base = run(schema("ProductView", bodies=[{"zzz": 1}]))
    capped = SchemaProfile("ProductView", {"delivered": 1}, (), {k: tuple(v) for k, v in fields.items()}, 1, 1, True)
    found = changes(base, run(capped))
    assert "field_missing" not in {c.change for c in found}


def test_count_per_visit_beyond_the_tolerance() -> None:
    base = run(schema("ProductView", 4), visits=4)  # one per visit
    assert changes(base, run(schema("ProductView", 5), visits=4)) == []  # +25 %: within
    up = changes(base, run(schema("ProductView", 8), visits=4))
    assert kinds(up) == [("count_up", "ProductView")]
    assert not up[0].regression
    down = changes(base, run(schema("ProductView", 1), visits=2))
    assert kinds(down) == [("count_down", "ProductView")]
    assert down[0].regression
    assert "1.00 -> 0.50 per visit (-50%)" in down[0].detail
    # Per visit: twice the events over twice the visits is no change.
    assert changes(base, run(schema("ProductView", 8), visits=8)) == []
    assert kinds(changes(base, run(schema("ProductView", 5), visits=4), tolerance=0.1)) == [("count_up", "ProductView")]


def test_verdicts_that_got_worse() -> None:
    base = run(schema("ProductView", 3, rejected=1))
    same_share = run(schema("ProductView", 3, rejected=1))
    assert changes(base, same_share) == []
    worse = changes(base, run(schema("ProductView", 1, rejected=3)))
    assert kinds(worse) == [("verdict_worse", "ProductView")]
    assert worse[0].token == "rejected"
    assert worse[0].detail == "ProductView: rejected 1 of 4 (25 %) -> 3 of 4 (75 %)"
    assert worse[0].regression
    failed = changes(run(schema("AddedToCart", 2)), run(schema("AddedToCart", 1, failed=1)))
    assert [(c.change, c.token) for c in failed] == [("verdict_worse", "failed")]


def test_new_finding_kinds_per_schema_and_for_the_run() -> None:
    warn = FindingCount("duplicate_event", "warning", 2)
    error = FindingCount("event_not_sent", "error", 1)
    base = run(schema("ProductView"))
    new = run(schema("ProductView", findings=(warn,)), loose=(error,))
    diff = compare(base, new, 0.25, FAIL_ON)
    assert [(c.change, c.schema, c.token, c.regression) for c in diff.changes] == [
        ("new_finding", "ProductView", "duplicate_event", False),  # a warning: not counted by default
        ("new_finding", None, "event_not_sent", True),  # an error
    ]
    # A finding kind BASE already had is no news.
    assert compare(new, new, 0.25, FAIL_ON).changes == ()
    rows = diff.rows()
    assert rows[-1][0] is None and [c.token for c in rows[-1][3]] == ["event_not_sent"]


def test_a_new_schemas_problems_are_new_too() -> None:
    found = changes(run(), run(schema("Bogus", 0, rejected=2, findings=(FindingCount("unknown_schema", "error", 2),))))
    assert [(c.change, c.token) for c in found] == [
        ("schema_added", None),
        ("verdict_worse", "rejected"),
        ("new_finding", "unknown_schema"),
    ]


@pytest.mark.parametrize(
    ("fail_on", "counted"),
    [
        ("schema_added", {"schema_added"}),
        ("new_finding", {"new_finding"}),
        ("warning", set()),
        ("error", {"new_finding"}),
        ("unknown_schema", {"new_finding"}),
        ("rejected", {"verdict_worse"}),
        ("failed", set()),
    ],
)
def test_fail_on_takes_changes_verdicts_severities_and_finding_kinds(fail_on: str, counted: set[str]) -> None:
    new = run(schema("Bogus", 0, rejected=2, findings=(FindingCount("unknown_schema", "error", 2),)))
    diff = compare(run(), new, 0.25, parse_fail_on(fail_on))
    assert {c.change for c in diff.regressions} == counted


def test_fail_on_and_tolerance_errors_name_the_problem() -> None:
    assert parse_fail_on(" schema_missing , error ") == {"schema_missing", "error"}
    assert set(CHANGES) <= parse_fail_on(",".join(CHANGES))
    with pytest.raises(DiffUsageError, match="--fail-on: unknown everything"):
        parse_fail_on("schema_missing,everything")
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(DiffUsageError, match="--count-tolerance"):
            check_tolerance(bad)
    assert check_tolerance(0) == 0
    assert counts(Change("count_up", "X", "d"), frozenset({"count_up"}))


def test_the_report_as_data() -> None:
    base = run(schema("ProductView", bodies=[{"a": 1}]), schema("AddedToCart"), name="base")
    new = run(schema("ProductView", 2, bodies=[{"a": 1, "b": "x"}]), name="new", visits=2)
    data = as_dict(compare(base, new, 0.25, FAIL_ON))
    assert data["regressed"] is True and data["regressions"] == 1
    assert [row["schema"] for row in data["schemas"]] == ["AddedToCart", "ProductView"]
    added = data["schemas"][0]
    assert added["new"] is None and added["base"]["sent"] == 1
    assert added["changes"][0]["change"] == "schema_missing" and added["changes"][0]["regression"] is True
    product = data["schemas"][1]
    assert product["new"]["per_visit"] == 1.0 and product["new"]["fields"] == 2
    assert [(c["change"], c["field"]) for c in product["changes"]] == [("field_added", "b")]
    assert data["base"]["run"] == "base" and data["new"]["visits"] == 2
    assert data["fail_on"] == sorted(FAIL_ON)
