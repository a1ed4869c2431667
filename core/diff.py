"""What changed in the tracking between two runs: their profiles (per schema: counts, verdicts, finding kinds, payload
fields) and the comparison of two profiles. Pure: the store builds profiles (store/diff.py), the CLI and the
dashboard show the result.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from clickwatch.core.checks import json_type
from clickwatch.core.findings import FindingKind, Severity

# What a diff can report, per schema (or, for findings about no clickstream event, for the run as a whole).
SCHEMA_MISSING = "schema_missing"  # sent in BASE, not in NEW
SCHEMA_ADDED = "schema_added"  # sent in NEW, not in BASE
COUNT_DOWN = "count_down"  # fewer per visit than BASE, beyond the tolerance
COUNT_UP = "count_up"  # more per visit than BASE, beyond the tolerance
FIELD_MISSING = "field_missing"  # a payload field BASE's bodies had and NEW's sampled bodies never have
FIELD_ADDED = "field_added"  # a payload field only NEW's bodies have
FIELD_TYPE_CHANGED = "field_type_changed"  # the field's JSON type(s) differ
NEW_FINDING = "new_finding"  # a finding kind NEW has and BASE had not
VERDICT_WORSE = "verdict_worse"  # a larger share of rejected (or failed) deliveries than BASE, beyond the tolerance
CHANGES = (
    SCHEMA_MISSING, SCHEMA_ADDED, COUNT_DOWN, COUNT_UP, FIELD_MISSING, FIELD_ADDED, FIELD_TYPE_CHANGED, NEW_FINDING,
    VERDICT_WORSE,
)  # fmt: skip
BAD_VERDICTS = ("rejected", "failed")
VERDICTS = ("delivered", "rejected", "failed", "pending")
DEFAULT_FAIL_ON = "schema_missing,count_down,field_missing,field_type_changed,verdict_worse,error"
DEFAULT_TOLERANCE = 0.25
# Bounds on what one schema's bodies may add to a profile: a hostile or huge body cannot make a baseline huge.
MAX_FIELDS = 300
MAX_DEPTH = 8
MAX_PATH = 200
ROOT = "(body)"  # the path of a body that is a JSON scalar, not an object


class DiffUsageError(ValueError):
    """A bad --fail-on or tolerance value."""


def parse_fail_on(text: str) -> frozenset[str]:
    """'schema_missing,error' -> tokens: changes, or as `clickwatch check` takes them, verdicts, severities and
    finding kinds (a verdict counts when deliveries got worse to it, a severity or kind when such a finding is new)."""
    known = {*CHANGES, *BAD_VERDICTS, *(s.value for s in Severity), *(k.value for k in FindingKind)}
    tokens = frozenset(t.strip() for t in text.split(",") if t.strip())
    unknown = sorted(tokens - known)
    if unknown:
        raise DiffUsageError(
            f"--fail-on: unknown {', '.join(unknown)} (use changes {', '.join(CHANGES)}; verdicts rejected, failed; "
            "severities error, warning, info; or finding kinds)"
        )
    return tokens


def check_tolerance(value: float) -> float:
    """The relative change of a count per visit (0.25 = 25 %) beyond which it is reported."""
    if not 0 <= value < 1e6 or value != value:
        raise DiffUsageError(f"--count-tolerance: give a fraction of 0 or more (0.25 = 25 %), not {value:g}")
    return value


# --- profiles ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FindingCount:
    """How many findings of one kind (and severity) a schema's events, or the rest of a run, had."""

    kind: str
    severity: str
    count: int


@dataclass(frozen=True, slots=True)
class SchemaProfile:
    """One schema's clickstream events in a run: verdicts, findings, and the fields of the bodies sampled."""

    schema: str  # short name; "" when the events named no schema
    verdicts: Mapping[str, int]
    findings: tuple[FindingCount, ...] = ()
    fields: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # path -> sorted JSON types
    bodies: int = 0  # bodies sampled
    json_bodies: int = 0  # of those, JSON the fields were read from
    fields_capped: bool = False  # more than MAX_FIELDS paths: the rest were not kept

    @property
    def sent(self) -> int:
        """Events sent, whatever their verdict."""
        return sum(self.verdicts.values())


@dataclass(frozen=True, slots=True)
class RunProfile:
    """What a run's tracking looked like: the thing a baseline file keeps."""

    run: str
    source: str  # the store file or baseline file it was read from
    visits: int  # visitors seen in the run (a browser per run)
    schemas: tuple[SchemaProfile, ...]
    run_findings: tuple[FindingCount, ...] = ()  # about no clickstream event: a visitor, a preflight, ...
    sample: int = 0  # at most this many bodies per schema were read
    scan_capped: bool = False  # the run had more events than were looked at for bodies

    def by_schema(self) -> dict[str, SchemaProfile]:
        """The schemas by name."""
        return {s.schema: s for s in self.schemas}


def add_fields(body: Any, into: dict[str, set[str]]) -> bool:
    """Add a parsed body's field paths (`data.products[].code`) and their types to `into`; False when MAX_FIELDS
    stopped it. An array of objects is a batch of events, read like one object each (as core.checks does)."""
    if isinstance(body, list) and body and all(isinstance(item, dict) for item in body):
        return all([_walk(item, "", into, 0) for item in body])
    if isinstance(body, dict | list):
        return _walk(body, "", into, 0)
    return _note(ROOT, json_type(body), into)


def _note(path: str, kind: str, into: dict[str, set[str]]) -> bool:
    if path not in into:
        if len(into) >= MAX_FIELDS:
            return False
        into[path] = set()
    into[path].add(kind)
    return True


def _walk(value: Any, prefix: str, into: dict[str, set[str]], depth: int) -> bool:
    complete = True
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if len(path) > MAX_PATH:
                continue
            complete = _note(path, json_type(item), into) and complete
            if depth < MAX_DEPTH and isinstance(item, dict | list):
                complete = _walk(item, path, into, depth + 1) and complete
    elif isinstance(value, list):
        path = f"{prefix}[]"
        for item in value:
            if isinstance(item, dict):
                complete = _walk(item, path, into, depth + 1) and complete
            elif prefix:
                complete = _note(path, json_type(item), into) and complete
    return complete


# --- comparison --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    """One difference. `schema` None: about the run, not one schema. `token`: the verdict or finding kind."""

    change: str
    schema: str | None
    detail: str
    field: str | None = None
    base: str | None = None
    new: str | None = None
    token: str | None = None
    severity: str | None = None
    regression: bool = False


@dataclass(frozen=True, slots=True)
class Diff:
    """Two profiles, how they differ, and which differences count as regressions."""

    base: RunProfile
    new: RunProfile
    tolerance: float
    fail_on: frozenset[str]
    changes: tuple[Change, ...]

    @property
    def regressions(self) -> tuple[Change, ...]:
        """The changes --fail-on counts."""
        return tuple(c for c in self.changes if c.regression)

    @property
    def regressed(self) -> bool:
        """Whether anything counted changed."""
        return any(c.regression for c in self.changes)

    def rows(self) -> list[tuple[str | None, SchemaProfile | None, SchemaProfile | None, list[Change]]]:
        """Per schema (sorted; then None for the rest of the run): BASE's and NEW's profile and the changes."""
        base, new = self.base.by_schema(), self.new.by_schema()
        rows: list[tuple[str | None, SchemaProfile | None, SchemaProfile | None, list[Change]]] = [
            (name, base.get(name), new.get(name), [c for c in self.changes if c.schema == name])
            for name in sorted(base.keys() | new.keys(), key=str.lower)
        ]
        loose = [c for c in self.changes if c.schema is None]
        if loose or self.base.run_findings or self.new.run_findings:
            rows.append((None, None, None, loose))
        return rows


def counts(change: Change, fail_on: frozenset[str]) -> bool:
    """Whether --fail-on counts a change: its name, or the verdict, finding kind or severity it is about."""
    return bool({change.change, change.token, change.severity} & fail_on)


def per_visit(profile: SchemaProfile | None, visits: int) -> float:
    """Events sent per visit (per run when the run saw no visitor)."""
    if profile is None:
        return 0.0
    return profile.sent / visits if visits > 0 else float(profile.sent)


def _types(kinds: Iterable[str]) -> str:
    return "|".join(kinds)


def _finding_changes(schema: str | None, base: Iterable[FindingCount], new: Iterable[FindingCount]) -> list[Change]:
    before = {f.kind for f in base}
    changes = []
    for f in sorted(new, key=lambda f: f.kind):
        if f.kind not in before and f.count > 0:
            where = f"schema {schema}" if schema is not None else "the run (visitors, other calls)"
            detail = f"{f.kind} ({f.severity}) x{f.count}: new for {where}"
            changes.append(Change(NEW_FINDING, schema, detail, new=str(f.count), token=f.kind, severity=f.severity))
    return changes


def _share(count: int, sent: int) -> str:
    return f"{count} of {sent} ({100 * count / sent:.0f} %)" if sent else "0 of 0"


def _schema_changes(
    name: str, base: SchemaProfile | None, new: SchemaProfile | None, diff_visits: tuple[int, int], tolerance: float
) -> list[Change]:
    label = name or "(no schema)"
    if new is None or new.sent == 0:
        if base is not None and base.sent:
            detail = f"{label}: {base.sent} sent in BASE, none in NEW"
            return [Change(SCHEMA_MISSING, name, detail, base=str(base.sent), new="0")]
        return []
    changes: list[Change] = []
    empty = SchemaProfile(name, dict.fromkeys(VERDICTS, 0))
    before = base if base is not None and base.sent else empty
    if before is empty:
        detail = f"{label}: {new.sent} sent in NEW, none in BASE"
        changes.append(Change(SCHEMA_ADDED, name, detail, base="0", new=str(new.sent)))
    else:
        b, n = per_visit(before, diff_visits[0]), per_visit(new, diff_visits[1])
        ratio = (n - b) / b
        if abs(ratio) > tolerance:
            kind = COUNT_UP if ratio > 0 else COUNT_DOWN
            detail = f"{label}: {b:.2f} -> {n:.2f} per visit ({ratio:+.0%})"
            changes.append(Change(kind, name, detail, base=f"{b:.2f}", new=f"{n:.2f}"))
    for verdict in BAD_VERDICTS:
        was, now = before.verdicts.get(verdict, 0), new.verdicts.get(verdict, 0)
        share_before = was / before.sent if before.sent else 0.0
        if now and now / new.sent > share_before * (1 + tolerance):
            detail = f"{label}: {verdict} {_share(was, before.sent)} -> {_share(now, new.sent)}"
            changes.append(
                Change(
                    VERDICT_WORSE, name, detail, base=_share(was, before.sent), new=_share(now, new.sent), token=verdict
                )
            )
    changes += _finding_changes(name, before.findings, new.findings)
    if before is not empty and before.json_bodies and new.json_bodies:
        changes += _field_changes(name, label, before, new)
    return changes


def _field_changes(name: str, label: str, base: SchemaProfile, new: SchemaProfile) -> list[Change]:
    changes = []
    for path in sorted(base.fields.keys() | new.fields.keys()):
        was, now = base.fields.get(path), new.fields.get(path)
        if was is None and now is not None:
            detail = f"{label}: field {path} ({_types(now)}) added"
            changes.append(Change(FIELD_ADDED, name, detail, field=path, new=_types(now)))
        elif now is None and was is not None:
            # Only an accusation when NEW's sample can speak for the field: a capped field list may just not hold it.
            if not new.fields_capped:
                detail = f"{label}: field {path} ({_types(was)}) missing"
                changes.append(Change(FIELD_MISSING, name, detail, field=path, base=_types(was)))
        elif was is not None and now is not None and tuple(was) != tuple(now):
            detail = f"{label}: field {path} was {_types(was)}, now {_types(now)}"
            changes.append(Change(FIELD_TYPE_CHANGED, name, detail, field=path, base=_types(was), new=_types(now)))
    return changes


def compare(base: RunProfile, new: RunProfile, tolerance: float, fail_on: frozenset[str]) -> Diff:
    """How NEW differs from BASE, each change marked as a regression when --fail-on counts it."""
    before, after = base.by_schema(), new.by_schema()
    changes: list[Change] = []
    for name in sorted(before.keys() | after.keys(), key=str.lower):
        changes += _schema_changes(name, before.get(name), after.get(name), (base.visits, new.visits), tolerance)
    changes += _finding_changes(None, base.run_findings, new.run_findings)
    marked = tuple(replace(c, regression=counts(c, fail_on)) for c in changes)
    return Diff(base, new, tolerance, fail_on, marked)


# --- the report as data: `--format json` and GET /api/diff -------------------------------------------------------


def _side(profile: SchemaProfile | None, visits: int) -> dict[str, Any] | None:
    if profile is None:
        return None
    return {
        "sent": profile.sent,
        "per_visit": round(per_visit(profile, visits), 4),
        "verdicts": {v: int(profile.verdicts.get(v, 0)) for v in VERDICTS},
        "findings": {f.kind: f.count for f in profile.findings},
        "bodies_sampled": profile.bodies,
        "json_bodies": profile.json_bodies,
        "fields": len(profile.fields),
    }


def _run(profile: RunProfile) -> dict[str, Any]:
    return {
        "run": profile.run,
        "source": profile.source,
        "visits": profile.visits,
        "sample": profile.sample,
        "scan_capped": profile.scan_capped,
        "run_findings": {f.kind: f.count for f in profile.run_findings},
    }


def change_dict(change: Change) -> dict[str, Any]:
    """A change as the JSON report gives it."""
    return {
        "change": change.change,
        "schema": change.schema,
        "detail": change.detail,
        "field": change.field,
        "base": change.base,
        "new": change.new,
        "about": change.token,
        "severity": change.severity,
        "regression": change.regression,
    }


def as_dict(diff: Diff) -> dict[str, Any]:
    """The whole diff as JSON-ready data (dashboard/models.py's DiffReport)."""
    return {
        "base": _run(diff.base),
        "new": _run(diff.new),
        "tolerance": diff.tolerance,
        "fail_on": sorted(diff.fail_on),
        "regressed": diff.regressed,
        "regressions": len(diff.regressions),
        "schemas": [
            {
                "schema": name,
                "base": _side(b, diff.base.visits),
                "new": _side(n, diff.new.visits),
                "changes": [change_dict(c) for c in changes],
            }
            for name, b, n, changes in diff.rows()
        ],
    }
