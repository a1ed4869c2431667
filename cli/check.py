"""`clickwatch check`: the CI gate. Healthy -> 0, unhealthy -> 1, usage errors -> 2."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any, TextIO

from clickwatch.cli.sources import Source, SourceError

# The rules themselves live in the store package, where the evidence bundle uses them too.
from clickwatch.store.check import (
    DEFAULT_FAIL_ON,
    VERDICT_TOKENS,
    CheckUsageError,
    Expectation,
    Report,
    UnknownRun,
    gather,
    junit_xml,
    parse_fail_on,
    unknown_run,
)

__all__ = [
    "DEFAULT_FAIL_ON",
    "VERDICT_TOKENS",
    "CheckUsageError",
    "Expectation",
    "Report",
    "UnknownRun",
    "gather",
    "junit_xml",
    "parse_fail_on",
    "print_report",
    "run_check",
]


# What a visitor's pending decision waits for (the judge's words), and the setting that sets its length.
WINDOWS = (
    ("grace window", "consent grace window (consent.grace_seconds)"),
    ("events after consent", "silence window (windows.silence_seconds)"),
    ("await their clickstream POST", "reconcile window (observer.reconcile_seconds)"),
    ("await their data-layer push", "reconcile window (observer.reconcile_seconds)"),
    ("await the page that asked", "reconcile window (observer.reconcile_seconds)"),
)


def run_check(
    source: Source,
    filters: dict[str, Any],
    fail_on: frozenset[str],
    expectations: list[Expectation],
    wait: float,
    poll: float = 0.5,
    allow_empty: bool = True,
    require_run: bool = True,
) -> Report:
    """Judge, waiting up to `wait` seconds for pending deliveries, pending decisions and expectations.

    UnknownRun when a run is asked for and the store holds nothing of it, even after the wait (a typo must not
    pass), unless `require_run` is False. `allow_empty=False`: a run (or selection) without any clickstream
    event is unhealthy.
    """
    deadline = time.monotonic() + wait
    run = filters.get("run")
    while True:
        if run is not None and require_run and not _exists(source, run):
            if time.monotonic() < deadline:
                time.sleep(poll)
                continue
            runs, more = source.runs(limit=20)
            raise unknown_run(run, runs, more)
        report = gather(source, filters, fail_on, expectations)
        answers = report.summary["deliveries"]["pending"]
        decisions = report.summary.get("pending_decisions", 0)
        unmet = any(count < e.minimum for e, count in report.expectations)
        if not (answers or decisions or unmet) or time.monotonic() >= deadline:
            break
        time.sleep(poll)
    report.waited_out = bool(wait) and bool(answers or decisions or unmet)
    if wait and answers:
        report.reasons.append(f"{answers} delivery(ies) still without an answer after {wait:g} s")
    if wait and decisions:
        # Asked to wait for decisions and they did not come: that is not a healthy run. Say which window.
        report.reasons.append(f"{decisions} decision(s) still open after {wait:g} s: {open_windows(source, run)}")
    if not allow_empty:
        counts = source.summary(**filters, kind="clickstream")["deliveries"]
        if not sum(counts.values()):
            where = f"run {run!r}" if run is not None else "the selection"
            report.reasons.insert(0, f"no clickstream event in {where} (--allow-empty accepts that)")
    return report


def _exists(source: Source, run: str) -> bool:
    try:
        return bool(source.runs(name=run)[0])
    except SourceError as exc:
        if "HTTP 404" in str(exc):
            return True  # a dashboard older than GET /api/runs: judged as before
        raise


# The judge states when each open window closes at the latest ("... until 2026-12-08T04:00:00Z").
_UNTIL = re.compile(r"until (\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z)")


def _epoch(text: str) -> float | None:
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def open_windows(source: Source, run: str | None) -> str:
    """Which windows the run's open decisions wait on, per visitor, and for how long they have been open."""
    now = time.time()
    parts = []
    for visitor in source.visitors(run) if run is not None else []:
        waiting = visitor.get("pending_decision")
        if not waiting:
            continue
        names = [name for words, name in WINDOWS if words in waiting] or [waiting]
        ends = [parsed for text in _UNTIL.findall(waiting) if (parsed := _epoch(text)) is not None]
        if ends:
            left = max(ends) - now
            opened = f", {left:.0f} s left" if left > 0 else ", closing now"
        else:
            since = max(filter(None, (visitor.get("consent_since"), visitor.get("last_page_at"))), default=None)
            opened = f", open for {now - since:.0f} s" if since else ""
        parts.append(f"visitor {visitor['visitor']}: {'; '.join(dict.fromkeys(names))}{opened}")
    if not parts:
        return "decisions of visitors not listed" if run is None else "the windows closed meanwhile"
    return "; ".join(parts[:5]) + (f"; and {len(parts) - 5} more visitors" if len(parts) > 5 else "")


def print_report(report: Report, out: TextIO) -> None:
    """A readable summary table."""
    d = report.summary["deliveries"]
    out.write("clickwatch check\n")
    out.write(f"  {'delivered':<12}{d['delivered']:>8}\n  {'rejected':<12}{d['rejected']:>8}\n")
    out.write(f"  {'failed':<12}{d['failed']:>8}\n  {'pending':<12}{d['pending']:>8}\n")
    out.write(f"  {'deciding':<12}{report.summary.get('pending_decisions', 0):>8}\n")
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
        out.write(
            f"note: {d['pending']} delivery(ies) without an answer and {report.summary.get('pending_decisions', 0)} "
            "decision(s) still open; --wait SECONDS waits for them\n"
        )
    out.write(("HEALTHY" if report.healthy else "UNHEALTHY: " + report.reasons[0]) + "\n")
