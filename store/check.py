"""The rules of `clickwatch check`: what makes a run unhealthy, and the JUnit report that says so.

Shared by the command (which adds waiting and the printed table) and the evidence bundle, so a bundle's
`junit.xml` is what `clickwatch check --junit` writes for the same run. A source is anything that answers the
three questions below: the store on a read connection here, a running dashboard's API in the command.
"""

from __future__ import annotations

import re
import sqlite3
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from clickwatch.core.findings import FindingKind, Severity
from clickwatch.core.model import Kind, Verdict
from clickwatch.store import reader

VERDICT_TOKENS = ("rejected", "failed")
DEFAULT_FAIL_ON = "rejected,failed,error"
# Characters XML 1.0 cannot carry at all, even escaped: captured text may hold them.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class CheckUsageError(ValueError):
    """A bad --fail-on or --expect value."""


class UnknownRun(CheckUsageError):
    """The run asked for holds nothing: a typo, or traffic that went to another run (exit code 2)."""


def unknown_run(run: str, runs: list[str], more: bool) -> UnknownRun:
    """The error for a run the store holds nothing of, listing the runs it does hold."""
    if not runs:
        return UnknownRun(f"no run {run!r}: the store holds no runs yet")
    shown = ", ".join(repr(r) for r in runs) + (", ..." if more else "")
    hint = " (traffic without proxy credentials goes to 'default')" if "default" in runs else ""
    return UnknownRun(f"no run {run!r}; the store holds: {shown}{hint}")


class Source(Protocol):
    """What a check needs to know."""

    def summary(self, **filters: Any) -> dict[str, Any]: ...

    def deliveries(self, **filters: Any) -> Iterator[dict[str, Any]]: ...

    def findings(self, **filters: Any) -> list[dict[str, Any]]: ...

    def runs(self, name: str | None = None, limit: int = 20) -> tuple[list[str], bool]: ...

    def visitors(self, run: str) -> list[dict[str, Any]]: ...


def delivery_filter(filters: dict[str, Any]) -> reader.DeliveryFilter:
    """The store filter for the same keyword filters the API takes."""
    return reader.DeliveryFilter(
        kind=Kind(filters["kind"]) if filters.get("kind") else None,
        verdict=Verdict(filters["verdict"]) if filters.get("verdict") else None,
        schema=filters.get("schema"),
        finding=FindingKind(filters["finding"]) if filters.get("finding") else None,
        visitor=filters.get("visitor"),
        run=filters.get("run"),
        since=filters.get("since"),
        until=filters.get("until"),
    )


class ReaderSource:
    """A source reading the store on an open read connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def summary(self, **filters: Any) -> dict[str, Any]:
        return reader.summary(self.conn, delivery_filter(filters))

    def deliveries(self, **filters: Any) -> Iterator[dict[str, Any]]:
        cursor = None
        while True:
            items, cursor = reader.list_deliveries(self.conn, delivery_filter(filters), reader.MAX_LIMIT, cursor)
            yield from items
            if cursor is None:
                return

    def findings(self, **filters: Any) -> list[dict[str, Any]]:
        return reader.list_findings(self.conn, limit=reader.MAX_LIMIT, **filters)

    def runs(self, name: str | None = None, limit: int = 20) -> tuple[list[str], bool]:
        """[name] when the store holds anything of that run (else []); without a name, the first `limit` runs
        and whether there are more."""
        from clickwatch.store.bundle import run_exists
        from clickwatch.store.diff import known_runs

        if name is not None:
            return ([name] if run_exists(self.conn, name) else []), False
        names = known_runs(self.conn, limit)
        return names[:limit], len(names) > limit

    def visitors(self, run: str) -> list[dict[str, Any]]:
        """The run's visitors, most recently seen first."""
        return reader.list_visitors(self.conn, run, reader.MAX_LIMIT)


def parse_fail_on(text: str) -> frozenset[str]:
    """'rejected,failed,error' -> tokens; each a verdict, a severity or a finding kind."""
    known = {*VERDICT_TOKENS, *(s.value for s in Severity), *(k.value for k in FindingKind)}
    tokens = frozenset(t.strip() for t in text.split(",") if t.strip())
    unknown = sorted(tokens - known)
    if unknown:
        raise CheckUsageError(
            f"--fail-on: unknown {', '.join(unknown)} (use verdicts rejected, failed; severities error, warning, "
            "info; or finding kinds)"
        )
    return tokens


@dataclass(frozen=True, slots=True)
class Expectation:
    """At least `minimum` delivered clickstream events of one schema."""

    schema: str
    minimum: int = 1

    @classmethod
    def parse(cls, text: str) -> Expectation:
        """'ProductView' or 'AddedToCart:2'."""
        schema, sep, count = text.partition(":")
        if not schema.strip():
            raise CheckUsageError(f"--expect {text!r}: name a schema, e.g. ProductView or AddedToCart:2")
        if not sep:
            return cls(schema.strip())
        try:
            minimum = int(count)
        except ValueError:
            raise CheckUsageError(f"--expect {text!r}: {count!r} is not a whole number") from None
        if minimum < 1:
            raise CheckUsageError(f"--expect {text!r}: the minimum count must be at least 1")
        return cls(schema.strip(), minimum)


@dataclass
class Report:
    """What a check found."""

    summary: dict[str, Any]
    expectations: list[tuple[Expectation, int]]
    failing: list[tuple[dict[str, Any], list[str]]]
    loose_findings: list[dict[str, Any]]
    waited_out: bool
    reasons: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        """No counted problem and every expectation met."""
        return not self.reasons


def _counted(finding: dict[str, Any], fail_on: frozenset[str]) -> bool:
    return finding["kind"] in fail_on or finding["severity"] in fail_on


def gather(source: Source, filters: dict[str, Any], fail_on: frozenset[str], expectations: list[Expectation]) -> Report:
    """Read the source once and judge."""
    summary = source.summary(**filters)
    met = [
        (e, int(source.summary(**filters, kind="clickstream", schema=e.schema)["deliveries"]["delivered"]))
        for e in expectations
    ]
    failing: dict[int, tuple[dict[str, Any], list[str]]] = {}
    for verdict in VERDICT_TOKENS:
        if verdict in fail_on and summary["deliveries"][verdict]:
            for item in source.deliveries(**filters, verdict=verdict):
                failing[item["id"]] = (item, [f"{verdict} ({item['status_code'] or item.get('error') or 'no answer'})"])
    finding_kinds = [k for k, n in summary["findings"].items() if n]
    for kind in finding_kinds:
        for item in source.deliveries(**filters, finding=kind):
            reasons = [f"{f['kind']}: {f['message']}" for f in item["findings"] if _counted(f, fail_on)]
            if reasons:
                entry = failing.setdefault(item["id"], (item, []))
                entry[1].extend(r for r in reasons if r not in entry[1])
    # Findings about a visitor rather than a delivery (event_not_sent, no_events_after_consent, ...): asked for
    # as such, so that a run's many delivery findings cannot push them out of the page (a dashboard that does
    # not know `visitor_level` answers with every finding: those about a delivery are left out here).
    loose = [
        f
        for f in source.findings(run=filters.get("run"), since=filters.get("since"), visitor_level=True)
        if f["delivery_id"] is None and _counted(f, fail_on)
    ]
    report = Report(summary, met, sorted(failing.values(), key=lambda p: p[0]["sent_at"]), loose, waited_out=False)
    for item, reasons in report.failing:
        report.reasons.append(f"delivery {item['id']}: {'; '.join(reasons)}")
    for finding in loose:
        report.reasons.append(f"{finding['kind']}: {finding['message']}")
    for expectation, count in met:
        if count < expectation.minimum:
            report.reasons.append(f"expected {expectation.minimum}+ delivered {expectation.schema}, saw {count}")
    return report


def _xml_text(text: str) -> str:
    return _NOT_XML.sub("\ufffd", text)


def junit_xml(report: Report) -> bytes:
    """JUnit XML: one test case per expectation and per failing delivery (and per visitor-level finding)."""
    suite = ET.Element("testsuite", name="clickwatch")
    cases = 0
    failures = 0

    def case(name: str, classname: str, failure: str | None) -> None:
        nonlocal cases, failures
        element = ET.SubElement(suite, "testcase", name=_xml_text(name), classname=classname)
        cases += 1
        if failure is not None:
            failures += 1
            failure = _xml_text(failure)
            ET.SubElement(element, "failure", message=failure[:500]).text = failure

    for expectation, count in report.expectations:
        ok = count >= expectation.minimum
        message = f"expected at least {expectation.minimum} delivered {expectation.schema}, saw {count}"
        case(f"expect {expectation.schema}", "clickwatch.expectations", None if ok else message)
    for item, reasons in report.failing:
        case(f"delivery {item['id']} {item['kind']} {item['schema'] or ''}".strip(), "clickwatch.deliveries",
             f"{item['method']} {item['url']}\n" + "\n".join(reasons))  # fmt: skip
    for finding in report.loose_findings:
        case(f"visitor {finding['visitor']} {finding['kind']}", "clickwatch.visitors", finding["message"])
    pending = report.summary["deliveries"]["pending"] + report.summary.get("pending_decisions", 0)
    if report.waited_out and pending:
        case("pending decisions", "clickwatch.pending", f"{pending} delivery/decision(s) still pending")
    if cases == 0:
        case("healthy", "clickwatch", None)
    suite.set("tests", str(cases))
    suite.set("failures", str(failures))
    suite.set("errors", "0")
    return ET.tostring(suite, encoding="utf-8", xml_declaration=True)
