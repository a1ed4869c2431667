"""`clickwatch diff BASE NEW`: what changed in the tracking between two runs, or a run and a saved baseline.

Nothing counted changed -> 0, something did -> 1, usage errors (unknown run, unreadable file, bad flags) -> 2.
BASE (or NEW) is a baseline file when its name ends in `.json`, otherwise a run name.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import TextIO

from clickwatch.core.diff import Diff, RunProfile, SchemaProfile, as_dict, compare, per_visit
from clickwatch.store import reader
from clickwatch.store.diff import DiffError, load_baseline, profile_run, save_baseline

BASELINE_SUFFIX = ".json"
SHOWN_CHANGES = 200  # per run in the text report; the JSON report and JUnit hold them all


@dataclass(frozen=True)
class DiffOptions:
    """What `clickwatch diff` was asked for."""

    base: str
    new: str
    db: str
    base_db: str
    tolerance: float
    fail_on: frozenset[str]
    sample: int


def is_baseline(name: str) -> bool:
    """Whether BASE or NEW names a baseline file rather than a run: it ends in .json."""
    return name.lower().endswith(BASELINE_SUFFIX)


def profile(name: str, db: str, sample: int) -> RunProfile:
    """The profile of a run in a store file, or of a baseline file; DiffError when neither can be read."""
    if is_baseline(name):
        return load_baseline(name)
    try:
        conn = reader.connect(db)
    except reader.StoreUnavailable as exc:
        raise DiffError(str(exc)) from None
    try:
        return profile_run(conn, name, db, sample)
    finally:
        conn.close()


def run_diff(options: DiffOptions) -> Diff:
    """Read both sides and compare them."""
    base = profile(options.base, options.base_db, options.sample)
    new = profile(options.new, options.db, options.sample)
    return compare(base, new, options.tolerance, options.fail_on)


def save(run: str, db: str, path: str, sample: int, out: TextIO) -> None:
    """`--save-baseline FILE RUN`: write the run's profile to FILE."""
    if not is_baseline(path):
        raise DiffError(f"--save-baseline {path}: name the file *{BASELINE_SUFFIX}, so that diff knows it is one")
    found = profile(run, db, sample)
    save_baseline(found, path)
    fields = sum(len(s.fields) for s in found.schemas)
    out.write(
        f"saved run '{printable(run)}' to {printable(path)}: {len(found.schemas)} schema(s), {fields} field path(s), "
        f"{found.visits} visit(s)\n"
    )


def printable(text: str) -> str:
    """Captured text as a terminal can show it: control characters (escape sequences) spelled out."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _per_visit(found: SchemaProfile | None, visits: int) -> str:
    return "-" if found is None or found.sent == 0 else f"{per_visit(found, visits):.2f}"


def _where(found: RunProfile) -> str:
    kind = "baseline" if found.source and is_baseline(found.source) else "store"
    return f"'{printable(found.run)}' ({kind} {printable(found.source)}, {found.visits} visit(s))"


def print_report(diff: Diff, out: TextIO) -> None:
    """The table: per schema, BASE's and NEW's events per visit, and what changed."""
    out.write("clickwatch diff\n")
    out.write(f"  base  {_where(diff.base)}\n  new   {_where(diff.new)}\n")
    out.write(f"  {'schema':<26}{'base/visit':>11}{'new/visit':>11}  changes\n")
    shown = 0
    for name, base, new, changes in diff.rows():
        label = "(run)" if name is None else (printable(name) or "(no schema)")
        columns = f"  {label[:25]:<26}"
        columns += f"{_per_visit(base, diff.base.visits):>11}{_per_visit(new, diff.new.visits):>11}  "
        if not changes:
            out.write(columns + "unchanged\n")
            continue
        for index, change in enumerate(changes):
            shown += 1
            if shown > SHOWN_CHANGES:
                break
            mark = "REGRESSION " if change.regression else ""
            lead = columns if index == 0 else " " * len(columns)
            out.write(f"{lead}{mark}{change.change}: {printable(change.detail)}\n")
    if shown > SHOWN_CHANGES:
        out.write(f"  ... and {len(diff.changes) - SHOWN_CHANGES} more changes (--format json lists them all)\n")
    for side, found in (("base", diff.base), ("new", diff.new)):
        read = sum(s.bodies for s in found.schemas)
        note = f"note: {side}: fields from {read} body(ies), at most {found.sample} per schema"
        if found.scan_capped:
            note += ", among the run's first events only (the run is longer)"
        out.write(note + "\n")
    counted = len(diff.regressions)
    if counted:
        out.write(
            f"REGRESSED: {counted} of {len(diff.changes)} change(s) count: {printable(diff.regressions[0].detail)}\n"
        )
    elif diff.changes:
        out.write(f"NO REGRESSION: {len(diff.changes)} change(s), none counted by --fail-on\n")
    else:
        out.write("NO CHANGE\n")


def print_json(diff: Diff, out: TextIO) -> None:
    """The report as one JSON document (the same as GET /api/diff answers)."""
    out.write(json.dumps(as_dict(diff), indent=1, ensure_ascii=False) + "\n")


def junit_xml(diff: Diff) -> bytes:
    """JUnit XML: one test case per schema (and one for the rest of the run), failing when a change counts."""
    suite = ET.Element("testsuite", name="clickwatch diff")
    cases = failures = 0
    for name, _base, _new, changes in diff.rows():
        label = "run" if name is None else f"schema {printable(name) or '(no schema)'}"
        element = ET.SubElement(suite, "testcase", name=label, classname="clickwatch.diff")
        cases += 1
        counted = [c for c in changes if c.regression]
        if counted:
            failures += 1
            failure = ET.SubElement(element, "failure", message=printable(counted[0].detail)[:500])
            failure.text = "\n".join(f"{c.change}: {printable(c.detail)}" for c in counted)
        others = [c for c in changes if not c.regression]
        if others:
            ET.SubElement(element, "system-out").text = "\n".join(f"{c.change}: {printable(c.detail)}" for c in others)
    if cases == 0:
        ET.SubElement(suite, "testcase", name="no schemas", classname="clickwatch.diff")
        cases = 1
    suite.set("tests", str(cases))
    suite.set("failures", str(failures))
    suite.set("errors", "0")
    return ET.tostring(suite, encoding="utf-8", xml_declaration=True)
