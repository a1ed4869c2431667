"""One test's run: what a client needs to browse as that run, and assertions that wait for its traffic.

Everything is read through the dashboard's JSON API, so the same calls work against a clickwatch the session
started and against one running elsewhere. The rules of a healthy run are `clickwatch check`'s own.
"""

from __future__ import annotations

import hashlib
import io
import re
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clickwatch.cli.check import DEFAULT_FAIL_ON, Expectation, Report, parse_fail_on, print_report, run_check
from clickwatch.core.findings import Severity
from clickwatch.testing.server import Server

PROXY_PASSWORD = "clickwatch"  # the proxy accepts any password (proxyauth=any): only the user name, the run, counts
MAX_RUN_LENGTH = 100  # what the proxy keeps of a run name
POLL_SECONDS = 0.2
# The proxy hands flows to the store in batches: a run whose counts have not moved for this long has landed.
QUIET_SECONDS = 0.5
FILTERS = frozenset({"kind", "verdict", "schema", "finding", "visitor", "since", "until"})
# "severity='warning'" asks about warnings and anything worse.
_AT_LEAST = {
    Severity.ERROR.value: {Severity.ERROR.value},
    Severity.WARNING.value: {Severity.ERROR.value, Severity.WARNING.value},
    Severity.INFO.value: {s.value for s in Severity},
}


class ExpectationError(AssertionError):
    """A clickwatch expectation that the run did not meet; the message lists what did arrive."""


def run_name(nodeid: str, tag: str = "", taken: set[str] | None = None) -> str:
    """A test's node id made fit to be a proxy user name (letters, digits, `._-`), unique among `taken`."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", nodeid).strip("-.") or "test"
    suffix = f"-{tag}" if tag else ""
    room = MAX_RUN_LENGTH - len(suffix)
    if len(slug) > room:
        # Keep the end (the test's name) and a digest of the whole, so two long ids stay apart.
        digest = hashlib.sha1(nodeid.encode()).hexdigest()[:8]
        tail = slug[-(room - len(digest) - 1) :]
        if "-" in tail[:-1] and slug[-len(tail) - 1] != "-":
            tail = tail.split("-", 1)[1]  # from the start of a part of the id, not from the middle of a word
        slug = f"{digest}-{tail}"
    name = slug + suffix
    if taken is not None:
        base, n = name, 1
        while name in taken:
            n += 1
            name = f"{base[: MAX_RUN_LENGTH - len(str(n)) - 1]}-{n}"
        taken.add(name)
    return name


@dataclass
class ClickwatchRun:
    """The `clickwatch` fixture: this test's run on the session's proxy, and assertions about its traffic."""

    server: Server
    run: str
    started_at: float = field(default_factory=time.time)

    @property
    def proxy_url(self) -> str:
        """The proxy with this run as its credentials, for httpx, requests or curl."""
        return f"http://{urllib.parse.quote(self.run, safe='')}:{PROXY_PASSWORD}@{self.server.proxy}"

    @property
    def ca_cert(self) -> Path:
        """The PEM file of the CA certificate the proxy signs its certificates with."""
        return self.server.ca_cert

    @property
    def dashboard_url(self) -> str:
        """The dashboard (and JSON API) of the proxy."""
        return self.server.dashboard_url

    @property
    def playwright_proxy(self) -> dict[str, str]:
        """Playwright's `proxy=` for a browser or a context: the proxy, with this run as its user name."""
        return {"server": f"http://{self.server.proxy}", "username": self.run, "password": PROXY_PASSWORD}

    @property
    def chromium_args(self) -> list[str]:
        """Command-line switches that send all of Chromium's traffic, loopback included, through the proxy."""
        return [f"--proxy-server=http://{self.server.proxy}", "--proxy-bypass-list=<-loopback>"]

    def deliveries(self, **filters: Any) -> list[dict[str, Any]]:
        """The run's deliveries, oldest first; filters as the API's (kind, verdict, schema, finding, ...)."""
        unknown = sorted(set(filters) - FILTERS)
        if unknown:
            raise TypeError(f"deliveries(): unknown filter {', '.join(unknown)} (use {', '.join(sorted(FILTERS))})")
        given = {k: v for k, v in filters.items() if v is not None}
        items = list(self.server.api().deliveries(run=self.run, **given))
        return sorted(items, key=lambda d: (d["sent_at"], d["id"]))

    def findings(self, severity: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        """The run's findings (about deliveries and about visitors), oldest first; `severity` and worse."""
        items = self.server.api().findings(run=self.run, kind=kind)
        if severity is not None:
            if severity not in _AT_LEAST:
                raise ValueError(f"severity {severity!r}: use {', '.join(_AT_LEAST)}")
            items = [f for f in items if f["severity"] in _AT_LEAST[severity]]
        return sorted(items, key=lambda f: (f["at"], f["id"]))

    def expect(
        self,
        schema: str,
        count: int | None = 1,
        within: float = 5.0,
        verdict: str | None = "delivered",
        **filters: Any,
    ) -> list[dict[str, Any]]:
        """Wait up to `within` seconds for exactly `count` clickstream events of `schema` (any number >= 1 with
        count=None; none during the whole wait with count=0) with that verdict; return them, or fail listing what
        the run did receive."""
        __tracebackhide__ = True
        if count is not None and count < 0:
            raise ValueError(f"expect({schema!r}, count={count}): a count is 0 or more (None: any from 1)")
        wanted = {"kind": "clickstream", **filters, "schema": schema, "verdict": verdict}
        deadline = time.monotonic() + within
        while True:
            matching = self.deliveries(**wanted)
            arrived = bool(matching) if count == 0 else len(matching) >= (count or 1)
            if arrived or time.monotonic() >= deadline:
                break
            time.sleep(POLL_SECONDS)
        if count is not None and (arrived or count == 0):
            # Exactly `count`: one more on its way (a duplicate) must not slip past.
            self.quiet(QUIET_SECONDS * 2)
            matching = self.deliveries(**wanted)
        if len(matching) == count or (count is None and matching):
            return matching
        what = f"{verdict} {schema}" if verdict else schema
        want = "at least 1" if count is None else f"{count}"
        raise ExpectationError(
            f"expected {want} {what} in run {self.run!r} within {within:g} s, saw {len(matching)}\n{self.describe()}"
        )

    def expect_no_findings(self, severity: str | None = "error", kind: str | None = None, within: float = 5.0) -> None:
        """Fail when the run has findings of `severity` or worse (any with None), after waiting up to `within`
        seconds for the decisions still pending (consent grace, silence windows)."""
        __tracebackhide__ = True
        self.quiet(within)
        self.settle(within)
        found = self.findings(severity=severity, kind=kind)
        if found:
            what = " ".join(filter(None, [kind, f"{severity}+" if severity else None])) or "any"
            lines = [f"  {f['kind']} ({f['severity']}): {f['message']}" for f in found[:20]]
            raise ExpectationError(
                f"expected no findings ({what}) in run {self.run!r}, found {len(found)}:\n"
                + "\n".join(lines)
                + f"\n{self.describe()}"
            )

    def quiet(self, within: float) -> None:
        """Wait until the run's counts have not changed for QUIET_SECONDS (at most `within` seconds): what the
        proxy has seen has then reached the store."""
        deadline = time.monotonic() + within
        last: object = None
        since = time.monotonic()
        while time.monotonic() < deadline:
            summary = self.server.api().summary(run=self.run)
            now = time.monotonic()
            counts = (sorted(summary["deliveries"].items()), sorted(summary["findings"].items()))
            if counts != last:
                last, since = counts, now
            elif now - since >= QUIET_SECONDS:
                return
            time.sleep(POLL_SECONDS / 2)

    def settle(self, within: float) -> int:
        """Wait up to `within` seconds until nothing of the run is pending; the number still pending."""
        deadline = time.monotonic() + within
        while True:
            summary = self.server.api().summary(run=self.run)
            pending = int(summary["deliveries"]["pending"]) + int(summary.get("pending_decisions", 0))
            if not pending or time.monotonic() >= deadline:
                return pending
            time.sleep(POLL_SECONDS)

    def check(
        self, fail_on: str | Iterable[str] = DEFAULT_FAIL_ON, expect: Sequence[str] = (), wait: float = 10.0
    ) -> Report:
        """`clickwatch check --run RUN` for this run: the same rules, the same report."""
        tokens = fail_on if isinstance(fail_on, str) else ",".join(fail_on)
        expectations = [Expectation.parse(e) for e in expect]
        self.quiet(max(wait, QUIET_SECONDS * 2))
        return run_check(self.server.api(), {"run": self.run}, parse_fail_on(tokens), expectations, wait)

    def _elsewhere(self) -> str:
        """Where traffic may have gone instead: the runs the clickwatch holds."""
        from clickwatch.cli.sources import SourceError

        try:
            runs, more = self.server.api().runs(limit=10)
        except SourceError:
            runs, more = [], False
        others = [r for r in runs if r != self.run]
        held = (
            f"; the clickwatch holds runs {', '.join(repr(r) for r in others)}{', ...' if more else ''}"
            if others
            else ""
        )
        return (
            "(did the client use clickwatch.proxy_url or clickwatch.playwright_proxy? A client without proxy "
            f"credentials lands in run 'default', and a request header does not name a browser's run{held})"
        )

    def describe(self) -> str:
        """What arrived in the run: each delivery with its verdict and findings, and the visitor findings."""
        deliveries = self.deliveries()
        if not deliveries:
            return f"nothing arrived in run {self.run!r} " + self._elsewhere()
        schemas = Counter(d["schema_name"] or d["kind"] for d in deliveries)
        lines = [
            f"what arrived in run {self.run!r}: {len(deliveries)} deliveries ("
            + ", ".join(f"{name} x{n}" for name, n in sorted(schemas.items()))
            + ")"
        ]
        for d in deliveries[:50]:
            lines.append("  " + _delivery_line(d, self.started_at))
        if len(deliveries) > 50:
            lines.append(f"  ... and {len(deliveries) - 50} more")
        loose = [f for f in self.server.api().findings(run=self.run, visitor_level=True) if f["delivery_id"] is None]
        if loose:
            lines.append("findings about visitors:")
            lines += [f"  {f['kind']} ({f['severity']}): {f['message']}" for f in loose[:20]]
        return "\n".join(lines)

    def timeline_text(self) -> str:
        """Each visitor's consent timeline in this run, as plain text (signals, deliveries, findings)."""
        api = self.server.api()
        visitors = api.visitors(self.run)
        if not visitors:
            return f"no visitor seen in run {self.run!r}"
        lines: list[str] = []
        for visitor in visitors:
            key = str(visitor["visitor"])
            lines.append(f"visitor {key} (consent: {visitor.get('consent') or 'unknown'})")
            answer = api.timeline(key, self.run)
            events = answer.get("timeline")
            for event in events if isinstance(events, list) else []:
                lines.append("  " + _event_line(event, self.started_at))
        return "\n".join(lines)


def _offset(at: float | None, start: float) -> str:
    if at is None:
        return "        "
    return f"{at - start:+7.2f}s"


def _delivery_line(d: dict[str, Any], start: float) -> str:
    answer = d["status_code"] or d.get("error") or "no answer"
    line = f"{_offset(d['sent_at'], start)} #{d['id']} {d['kind']} {d['schema_name'] or '-'} {d['verdict']} ({answer})"
    if d.get("consent"):
        line += f" consent={d['consent']}"
    if d.get("findings"):
        line += " [" + "; ".join(f"{f['kind']} ({f['severity']})" for f in d["findings"]) + "]"
    return line


def _event_line(event: dict[str, Any], start: float) -> str:
    kind = event.get("type")
    if kind == "consent":
        detail = f" {event['detail']}" if event.get("detail") else ""
        return f"{_offset(event['at'], start)} consent  {event['state']} (from {event['source']}){detail}"
    if kind == "delivery":
        return _delivery_line(event, start)
    if kind == "finding":
        return f"{_offset(event['at'], start)} finding  {event['kind']} ({event['severity']}): {event['message']}"
    return f"{_offset(event.get('at'), start)} {kind}"


def report_text(report: Report) -> str:
    """`clickwatch check`'s summary table of a report."""
    out = io.StringIO()
    print_report(report, out)
    return out.getvalue()
