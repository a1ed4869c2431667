"""`clickwatch check`: the CI gate. Healthy -> 0, unhealthy -> 1, usage errors -> 2."""

from __future__ import annotations

import time
from typing import Any, TextIO

from clickwatch.cli.sources import Source

# The rules themselves live in the store package, where the evidence bundle uses them too.
from clickwatch.store.check import (
    DEFAULT_FAIL_ON,
    VERDICT_TOKENS,
    CheckUsageError,
    Expectation,
    Report,
    gather,
    junit_xml,
    parse_fail_on,
)

__all__ = [
    "DEFAULT_FAIL_ON",
    "VERDICT_TOKENS",
    "CheckUsageError",
    "Expectation",
    "Report",
    "gather",
    "junit_xml",
    "parse_fail_on",
    "print_report",
    "run_check",
]


def run_check(
    source: Source,
    filters: dict[str, Any],
    fail_on: frozenset[str],
    expectations: list[Expectation],
    wait: float,
    poll: float = 0.5,
) -> Report:
    """Judge, waiting up to `wait` seconds for pending deliveries, pending decisions and expectations."""
    deadline = time.monotonic() + wait
    while True:
        report = gather(source, filters, fail_on, expectations)
        pending = report.summary["deliveries"]["pending"] + report.summary.get("pending_decisions", 0)
        unmet = any(count < e.minimum for e, count in report.expectations)
        if not (pending or unmet) or time.monotonic() >= deadline:
            report.waited_out = bool(wait) and bool(pending or unmet)
            if pending and wait:
                # Asked to wait for decisions and they did not come: that is not a healthy run.
                report.reasons.append(f"{pending} delivery/decision(s) still pending after {wait:g} s")
            return report
        time.sleep(poll)


def print_report(report: Report, out: TextIO) -> None:
    """A readable summary table."""
    d = report.summary["deliveries"]
    out.write("clickwatch check\n")
    out.write(f"  {'delivered':<12}{d['delivered']:>8}\n  {'rejected':<12}{d['rejected']:>8}\n")
    out.write(f"  {'failed':<12}{d['failed']:>8}\n  {'pending':<12}{d['pending']:>8}\n")
    found = {k: n for k, n in report.summary["findings"].items() if n}
    if found:
        out.write("findings\n")
        for kind, count in sorted(found.items(), key=lambda kv: -kv[1]):
            out.write(f"  {kind:<28}{count:>6}\n")
    if report.expectations:
        out.write("expectations\n")
        for expectation, count in report.expectations:
            mark = "ok  " if count >= expectation.minimum else "MISS"
            out.write(f"  {mark} {expectation.schema:<24} {count} delivered (want {expectation.minimum}+)\n")
    if report.failing or report.loose_findings:
        out.write("problems\n")
        for item, reasons in report.failing[:50]:
            out.write(f"  #{item['id']} {item['kind']} {item['schema'] or '-'} {item['url']}\n")
            for reason in reasons:
                out.write(f"      {reason}\n")
        if len(report.failing) > 50:
            out.write(f"  ... and {len(report.failing) - 50} more deliveries\n")
        for finding in report.loose_findings:
            out.write(f"  visitor {finding['visitor']}: {finding['kind']}: {finding['message']}\n")
    pending = d["pending"] + report.summary.get("pending_decisions", 0)
    if pending and not report.waited_out:
        out.write(f"note: {pending} delivery/decision(s) still pending; --wait SECONDS waits for them\n")
    out.write(("HEALTHY" if report.healthy else "UNHEALTHY: " + report.reasons[0]) + "\n")
