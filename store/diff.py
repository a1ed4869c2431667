"""A run's tracking profile read from the store, with bounded work, and baseline files that keep one.

Counts and verdicts come from the trigger-kept count tables, findings from one grouped query over the run's
findings; payload fields from at most `sample` request bodies per schema, chosen among the run's first
`SCAN_LIMIT` clickstream events (ids first, bodies only for those chosen). A profile says how much it sampled.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from typing import Any

from clickwatch.core import __version__
from clickwatch.core.diff import VERDICTS, FindingCount, RunProfile, SchemaProfile, add_fields
from clickwatch.core.model import BodyKind, Kind
from clickwatch.store.files import open_private

DEFAULT_SAMPLE = 100
MAX_SAMPLE = 10_000
SCAN_LIMIT = 50_000
BASELINE_VERSION = 1
MAX_BASELINE_BYTES = 16 * 1024 * 1024
_CHUNK = 500


class DiffError(Exception):
    """A run or a baseline that cannot be compared: the message says which and why (exit code 2)."""


class UnknownRun(DiffError):
    """No such run in the store."""


def known_runs(conn: sqlite3.Connection, limit: int = 20) -> list[str]:
    """Runs with something in them, by name."""
    rows = conn.execute(
        "SELECT run FROM delivery_counts GROUP BY run HAVING SUM(n) > 0 "
        "UNION SELECT DISTINCT run FROM visitors ORDER BY run LIMIT ?",
        (limit + 1,),
    ).fetchall()
    return [r[0] for r in rows]


def _exists(conn: sqlite3.Connection, run: str) -> bool:
    counted = conn.execute("SELECT SUM(n) FROM delivery_counts WHERE run = ?", (run,)).fetchone()[0]
    if counted:
        return True
    return conn.execute("SELECT 1 FROM visitors WHERE run = ? LIMIT 1", (run,)).fetchone() is not None


def profile_run(conn: sqlite3.Connection, run: str, source: str, sample: int = DEFAULT_SAMPLE) -> RunProfile:
    """The run's profile; UnknownRun when the store holds nothing of it."""
    if not _exists(conn, run):
        names = known_runs(conn)
        shown = ", ".join(repr(n) for n in names[:20]) + (", ..." if len(names) > 20 else "")
        raise UnknownRun(f"no run {run!r} in {source}" + (f" (runs: {shown})" if names else " (it holds no runs)"))
    verdicts: dict[str, dict[str, int]] = {}
    for row in conn.execute(
        "SELECT schema_name, verdict, SUM(n) FROM delivery_counts WHERE run = ? AND kind = ? "
        "GROUP BY schema_name, verdict HAVING SUM(n) > 0",
        (run, Kind.CLICKSTREAM.value),
    ):
        verdicts.setdefault(row[0], dict.fromkeys(VERDICTS, 0))[row[1]] = int(row[2])
    findings: dict[str, list[FindingCount]] = {}
    run_findings: list[FindingCount] = []
    for row in conn.execute(
        "SELECT CASE WHEN d.kind = ? THEN COALESCE(d.schema_name, '') END, f.kind, f.severity, count(*) "
        "FROM findings f LEFT JOIN deliveries d ON d.id = f.delivery_id WHERE f.run = ? "
        "GROUP BY 1, f.kind, f.severity ORDER BY 1, f.kind",
        (Kind.CLICKSTREAM.value, run),
    ):
        found = FindingCount(row[1], row[2], int(row[3]))
        if row[0] is None:
            run_findings.append(found)
        else:
            findings.setdefault(row[0], []).append(found)
    fields, bodies, json_bodies, capped, scan_capped = _sample_fields(conn, run, sample)
    schemas = tuple(
        SchemaProfile(
            schema=name,
            verdicts=verdicts.get(name, dict.fromkeys(VERDICTS, 0)),
            findings=tuple(findings.get(name, ())),
            fields={path: tuple(sorted(kinds)) for path, kinds in sorted(fields.get(name, {}).items())},
            bodies=bodies.get(name, 0),
            json_bodies=json_bodies.get(name, 0),
            fields_capped=name in capped,
        )
        for name in sorted(verdicts.keys() | findings.keys(), key=str.lower)
    )
    visits = int(conn.execute("SELECT count(*) FROM visitors WHERE run = ?", (run,)).fetchone()[0])
    return RunProfile(run, source, visits, schemas, tuple(run_findings), sample, scan_capped)


def _sample_fields(
    conn: sqlite3.Connection, run: str, sample: int
) -> tuple[dict[str, dict[str, set[str]]], dict[str, int], dict[str, int], set[str], bool]:
    """Field paths and types per schema from at most `sample` bodies each, among the run's first SCAN_LIMIT events."""
    # `+kind`: walk the (run, sent_at) index, never the (kind, sent_at) one, which holds every run's events.
    rows = conn.execute(
        "SELECT id, COALESCE(schema_name, '') FROM deliveries WHERE run = ? AND +kind = ? ORDER BY sent_at, id LIMIT ?",
        (run, Kind.CLICKSTREAM.value, SCAN_LIMIT + 1),
    ).fetchall()
    scan_capped = len(rows) > SCAN_LIMIT
    chosen: dict[str, list[int]] = {}
    for delivery_id, name in rows[:SCAN_LIMIT]:
        ids = chosen.setdefault(name, [])
        if len(ids) < sample:
            ids.append(delivery_id)
    fields: dict[str, dict[str, set[str]]] = {}
    bodies: dict[str, int] = {}
    json_bodies: dict[str, int] = {}
    capped: set[str] = set()
    wanted = [i for ids in chosen.values() for i in ids]
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start : start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        for name, text, kind, truncated in conn.execute(
            "SELECT COALESCE(schema_name, ''), request_body, request_body_kind, request_body_truncated "
            f"FROM deliveries WHERE id IN ({marks})",
            chunk,
        ):
            bodies[name] = bodies.get(name, 0) + 1
            # As the reader does: a stored JSON body is parsed only when it was kept whole.
            if kind != BodyKind.JSON.value or truncated or text is None:
                continue
            try:
                parsed = json.loads(text)
            except (ValueError, RecursionError):
                continue
            json_bodies[name] = json_bodies.get(name, 0) + 1
            if not add_fields(parsed, fields.setdefault(name, {})):
                capped.add(name)
    return fields, bodies, json_bodies, capped, scan_capped


# --- baseline files ----------------------------------------------------------------------------------------------


def _findings_data(items: tuple[FindingCount, ...]) -> list[dict[str, Any]]:
    return [{"kind": f.kind, "severity": f.severity, "count": f.count} for f in items]


def baseline_data(profile: RunProfile) -> dict[str, Any]:
    """A profile as a baseline file holds it."""
    return {
        "clickwatch_baseline": BASELINE_VERSION,
        "clickwatch": __version__,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run": profile.run,
        "source": profile.source,
        "visits": profile.visits,
        "sample": profile.sample,
        "scan_capped": profile.scan_capped,
        "run_findings": _findings_data(profile.run_findings),
        "schemas": [
            {
                "schema": s.schema,
                "verdicts": dict(s.verdicts),
                "findings": _findings_data(s.findings),
                "bodies": s.bodies,
                "json_bodies": s.json_bodies,
                "fields_capped": s.fields_capped,
                "fields": {path: list(kinds) for path, kinds in s.fields.items()},
            }
            for s in profile.schemas
        ],
    }


def save_baseline(profile: RunProfile, path: str) -> None:
    """Write the profile as a baseline file; DiffError when it cannot be written."""
    text = json.dumps(baseline_data(profile), indent=1, ensure_ascii=False) + "\n"
    try:
        with open_private(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        raise DiffError(f"cannot write baseline {path}: {exc.strerror or exc}") from None


class _Bad(ValueError):
    pass


def _get(data: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(data, dict) or key not in data:
        raise _Bad(f"{where}: missing {key!r}")
    value = data[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise _Bad(f"{where}.{key}: expected {getattr(kind, '__name__', 'a value')}, got {type(value).__name__}")
    return value


def _count(data: Any, key: str, where: str) -> int:
    value = _get(data, key, int, where)
    if value < 0:
        raise _Bad(f"{where}.{key}: must not be negative")
    return int(value)


def _findings_from(items: Any, where: str) -> tuple[FindingCount, ...]:
    if not isinstance(items, list):
        raise _Bad(f"{where}: expected a list")
    return tuple(
        FindingCount(_get(f, "kind", str, f"{where}[{i}]"), _get(f, "severity", str, f"{where}[{i}]"),
                     _count(f, "count", f"{where}[{i}]"))
        for i, f in enumerate(items)
    )  # fmt: skip


def _schema_from(data: Any, where: str) -> SchemaProfile:
    verdicts = _get(data, "verdicts", dict, where)
    counted = {v: _count(verdicts, v, f"{where}.verdicts") for v in VERDICTS if v in verdicts}
    fields = _get(data, "fields", dict, where)
    paths: dict[str, tuple[str, ...]] = {}
    for path, kinds in fields.items():
        if not isinstance(kinds, list) or not all(isinstance(k, str) for k in kinds):
            raise _Bad(f"{where}.fields[{path!r}]: expected a list of JSON type names")
        paths[str(path)] = tuple(sorted(kinds))
    return SchemaProfile(
        schema=_get(data, "schema", str, where),
        verdicts={**dict.fromkeys(VERDICTS, 0), **counted},
        findings=_findings_from(_get(data, "findings", list, where), f"{where}.findings"),
        fields=paths,
        bodies=_count(data, "bodies", where),
        json_bodies=_count(data, "json_bodies", where),
        fields_capped=bool(data.get("fields_capped", False)),
    )


def profile_from_baseline(data: Any, source: str) -> RunProfile:
    """A baseline file's content as a profile; DiffError names what is wrong."""
    if not isinstance(data, dict) or "clickwatch_baseline" not in data:
        raise DiffError(f"{source} is not a clickwatch baseline (no 'clickwatch_baseline' version field)")
    version = data["clickwatch_baseline"]
    if version != BASELINE_VERSION:
        raise DiffError(
            f"{source}: baseline version {version!r} is not one this clickwatch reads ({BASELINE_VERSION}); "
            "save it again with clickwatch diff --save-baseline"
        )
    try:
        schemas = _get(data, "schemas", list, "baseline")
        return RunProfile(
            run=_get(data, "run", str, "baseline"),
            source=source,
            visits=_count(data, "visits", "baseline"),
            schemas=tuple(_schema_from(s, f"baseline.schemas[{i}]") for i, s in enumerate(schemas)),
            run_findings=_findings_from(_get(data, "run_findings", list, "baseline"), "baseline.run_findings"),
            sample=_count(data, "sample", "baseline"),
            scan_capped=bool(data.get("scan_capped", False)),
        )
    except _Bad as exc:
        raise DiffError(f"{source}: {exc}") from None


def load_baseline(path: str) -> RunProfile:
    """Read a baseline file; DiffError when it is missing, unreadable, too large, not JSON or not a baseline."""
    try:
        size = os.path.getsize(path)
        if size > MAX_BASELINE_BYTES:
            raise DiffError(f"{path}: {size} bytes is too large for a baseline (at most {MAX_BASELINE_BYTES})")
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as exc:
        raise DiffError(f"cannot read baseline {path}: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise DiffError(f"{path} is not JSON ({exc})") from None
    return profile_from_baseline(data, path)
