"""The evidence bundle of a run: one zip an auditor can keep, holding what the run sent and with which consent.

Members: the deliveries as HAR and as JSON lines (the exports), the findings (JSON), the JUnit report that
`clickwatch check --junit` writes for the run, an offline HTML report, and `manifest.json` (what, when, which
clickwatch, counts, and the SHA-256 of every other member). Each member is streamed into the zip as it is read
from the store, so a big run costs a page of rows in memory, not the run. Nothing is added to what the store
holds: headers are as redacted as the store keeps them.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

from clickwatch.store import export, reader, report
from clickwatch.store.check import DEFAULT_FAIL_ON, ReaderSource, gather, junit_xml, parse_fail_on

FORMAT = "clickwatch-evidence-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MEMBERS = {
    "deliveries.har": "every delivery of the run, in full, as HAR 1.2 (clickwatch's verdicts under _clickwatch), and "
    "its consent signals as storefront requests, so that `clickwatch import` judges it as the run was judged",
    "deliveries.jsonl": "every delivery of the run, in full, one JSON object per line",
    "findings.json": "every finding of the run, about a delivery or about a visitor",
    "junit.xml": "the JUnit report of `clickwatch check --junit` for the run (default --fail-on)",
    "report.html": "offline report: verdict summary, per-schema counts, consent timeline of each visitor",
}
_FLUSH = 64 * 1024
# The columns reader.list_findings answers with.
_FINDING_COLUMNS = "f.id, f.run, f.kind, f.severity, f.message, f.at, f.visitor, f.delivery_id, d.url, d.schema_name"


class UnknownRun(LookupError):
    """The store holds nothing of this run."""


@dataclass
class Manifest:
    """What a bundle holds: the members' sizes and hashes, and the run's counts."""

    run: str
    created_at: float
    version: str
    counts: dict[str, Any] = field(default_factory=dict)
    members: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The manifest.json document."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "what": f"clickwatch evidence bundle of run {self.run!r}",
            "run": self.run,
            "created_at": datetime.fromtimestamp(self.created_at, UTC).isoformat().replace("+00:00", "Z"),
            "clickwatch_version": self.version,
            "counts": self.counts,
            "members": self.members,
        }


def run_exists(conn: sqlite3.Connection, run: str) -> bool:
    """Whether the store holds anything of this run (a delivery, a visitor, a finding or a data-layer row)."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM deliveries WHERE run = ?) OR EXISTS (SELECT 1 FROM visitors WHERE run = ?) "
        "OR EXISTS (SELECT 1 FROM findings WHERE run = ?) OR EXISTS (SELECT 1 FROM datalayer WHERE run = ?)",
        (run, run, run, run),
    ).fetchone()
    return bool(row[0])


def iter_findings(conn: sqlite3.Connection, run: str) -> Iterator[dict[str, Any]]:
    """Every finding of the run, oldest first, read row by row (reader.list_findings answers pages of the newest)."""
    cursor = conn.execute(
        f"SELECT {_FINDING_COLUMNS} FROM findings f LEFT JOIN deliveries d ON d.id = f.delivery_id "
        "WHERE f.run = ? ORDER BY f.at, f.id",
        (run,),
    )
    for row in cursor:
        yield dict(row)


def _findings_json(run: str, findings: Iterable[dict[str, Any]]) -> Iterator[str]:
    yield '{"run": ' + json.dumps(run, ensure_ascii=False) + ', "findings": ['
    for index, finding in enumerate(findings):
        yield ("," if index else "") + "\n" + json.dumps(finding, ensure_ascii=False)
    yield "\n]}\n"


class _Counting:
    """Counts the items that pass through."""

    def __init__(self, items: Iterable[dict[str, Any]]) -> None:
        self.items = items
        self.count = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for item in self.items:
            self.count += 1
            yield item


def _member(archive: zipfile.ZipFile, name: str, chunks: Iterable[str | bytes], manifest: Manifest) -> None:
    """Stream one member into the zip, hashing what is written."""
    digest = hashlib.sha256()
    size = 0
    pending: list[bytes] = []
    pending_size = 0
    info = zipfile.ZipInfo(name, date_time=time.gmtime(manifest.created_at)[:6])
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    with archive.open(info, "w", force_zip64=True) as out:

        def flush() -> None:
            nonlocal pending, pending_size
            data = b"".join(pending)
            out.write(data)
            digest.update(data)
            pending, pending_size = [], 0

        for chunk in chunks:
            data = chunk.encode("utf-8", "replace") if isinstance(chunk, str) else chunk
            pending.append(data)
            pending_size += len(data)
            size += len(data)
            if pending_size >= _FLUSH:
                flush()
        flush()
    manifest.members.append({"name": name, "what": MEMBERS.get(name, ""), "size": size, "sha256": digest.hexdigest()})


def write_bundle(
    conn: sqlite3.Connection, run: str, out: IO[bytes], *, version: str, created_at: float | None = None
) -> Manifest:
    """Write the evidence bundle of `run` as a zip to `out` (a file opened for writing bytes); its manifest.

    Raises UnknownRun, before writing anything, when the store holds nothing of the run.
    """
    if not run_exists(conn, run):
        raise UnknownRun(f"no run {run!r} in this store")
    manifest = Manifest(run, time.time() if created_at is None else created_at, version)
    # One read transaction: every member is read from the same snapshot, so they agree with each other even
    # while the proxy keeps writing to the run.
    conn.execute("BEGIN")
    try:
        _write(conn, run, out, manifest)
    finally:
        conn.rollback()
    return manifest


def _write(conn: sqlite3.Connection, run: str, out: IO[bytes], manifest: Manifest) -> None:
    version = manifest.version
    flt = reader.DeliveryFilter(run=run)
    check = gather(ReaderSource(conn), {"run": run}, parse_fail_on(DEFAULT_FAIL_ON), [])
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
        deliveries = _Counting(reader.iter_deliveries(conn, flt))
        signals = conn.execute(
            "SELECT s.run, s.visitor, s.at, s.state, s.source, s.detail, v.user_agent FROM consent_signals s "
            "LEFT JOIN visitors v ON v.run = s.run AND v.visitor = s.visitor WHERE s.run = ? ORDER BY s.at, s.id",
            (run,),
        )
        _member(archive, "deliveries.har", export.har(deliveries, version, map(dict, signals)), manifest)
        _member(archive, "deliveries.jsonl", export.jsonl(reader.iter_deliveries(conn, flt)), manifest)
        findings = _Counting(iter_findings(conn, run))
        _member(archive, "findings.json", _findings_json(run, findings), manifest)
        _member(archive, "junit.xml", [junit_xml(check)], manifest)
        html = report.render(conn, run, check, created_at=manifest.created_at, version=version)
        _member(archive, "report.html", html, manifest)
        manifest.counts = {
            "deliveries": deliveries.count,
            "findings": findings.count,
            "visitors": int(conn.execute("SELECT count(*) FROM visitors WHERE run = ?", (run,)).fetchone()[0]),
            "verdicts": check.summary["deliveries"],
            "severities": check.summary["severities"],
            "healthy": check.healthy,
        }
        body = json.dumps(manifest.as_json(), indent=2, ensure_ascii=False) + "\n"
        info = zipfile.ZipInfo(MANIFEST, date_time=time.gmtime(manifest.created_at)[:6])
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        archive.writestr(info, body.encode("utf-8"))
