"""Dashboard response times on a 1,000-delivery store against a 1,000,000-delivery one, and live-page latency.

Run from the repository root:

    .venv/bin/python bench/dashboard_bench.py                         # builds both stores in a temp dir
    .venv/bin/python bench/dashboard_bench.py --reuse /tmp/cw-1m.db   # builds the large store once, then reuses it
    .venv/bin/python bench/dashboard_bench.py --no-live               # skip the proxy -> live page latency
    .venv/bin/python bench/dashboard_bench.py --write-cost 4000       # only: CPU per delivery of 0013's triggers

Targets (issue 4): with 1,000,000 stored deliveries, the first page of `/api/deliveries` with any single filter,
`/api/summary` and the live page's first render each answer within 2x of the same call on a 1,000-delivery store,
measured in the same run; a new delivery appears on the live page within 1 s of its response passing the proxy.

How:

- Stores. Both stores get the real schema (`store.schema.open_database`: migrations and count triggers), then
  realistic rows bulk-inserted with plain SQL (the writer would take far too long for a million): a mix of kinds,
  verdicts, schemas, runs, visitors and consent states, about 5 % of deliveries with findings, a few visitor-level
  findings, consent signals and visitor rows. The trigger-maintained count tables are checked against count(*).
  No ANALYZE is run: a real store never gets one, so the query planner sees what it sees in production.
- Servers. Each store is served by its own `uvicorn dashboard.main:create_app --factory` subprocess on loopback.
  Calls alternate between the two servers (small, large, small, ...) so that slow spells on a shared machine hit
  both alike. Each call is timed from sending the request to having read the whole body, with keep-alive httpx
  clients, after a few warm-up calls. The table shows median and p95 per store, the ratio of medians and PASS/MISS
  against 2x. Rows marked `info` are measured for diagnosis and are not part of the issue's target.
- Live latency. With the small store served, a real `mitmdump -s addon/capture.py` proxy writes to it, and a tiny
  upstream answers 201. The benchmark follows `/api/stream`, sends a clickstream POST through the proxy, and takes
  the time from receiving the 201 to the SSE event that shows the delivery with its verdict.

It prints figures; it is not a test. Exit code 0 means the measurement ran (even with a MISS), 1 that something
broke (an unexpected status, a count table that does not match), 2 that a server or the proxy did not start.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.server
import json
import math
import os
import queue
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from clickwatch.store.schema import COUNT_RULES, open_database  # noqa: E402

HOST = "127.0.0.1"
ADDON = REPO / "addon" / "capture.py"
TARGET_RATIO = 2.0
TARGET_LIVE_SECONDS = 1.0
T_END = 1_790_000_000.0  # the newest delivery of either store is sent just before this
SPACING = 0.25  # mean seconds between deliveries
STORE_MARK = "dashboard-bench"  # written to a table of its own so --reuse recognises its stores

EXIT_ERRORS = 1
EXIT_FATAL = 2


class BenchError(Exception):
    """The run cannot go on: a server did not start, a store is not what it should be."""


# --- realistic rows ---------------------------------------------------------------------------------------------

SCHEMAS = [  # (short name, weight); sent as context/commerce/<name>
    ("ProductView", 38),
    ("PageView", 22),
    ("CategoryView", 10),
    ("KeywordSearch", 8),
    ("AddedToCart", 8),
    ("CartSnapshot", 5),
    ("ModifiedCart", 3),
    ("RemovedFromCart", 2),
    ("NavigatedToCheckout", 2),
    ("HomePageView", 1.9),
    ("Bogus", 0.1),
]
KINDS = [("clickstream", 86), ("consent_reference", 4), ("preflight", 6), ("tag", 2), ("strategy", 2)]
VERDICTS = [("delivered", 94.5), ("rejected", 3), ("failed", 2), ("pending", 0.5)]
CONSENTS = [("given", 80), ("absent", 8), ("withdrawn", 3), ("paused", 1), (None, 8)]
FINDINGS = [  # (kind, severity, weight) for findings tied to a delivery
    ("consent_unknown", "warning", 30),
    ("slow_delivery", "warning", 13),
    ("unknown_schema", "error", 12),
    ("invalid_payload", "error", 15),
    ("duplicate_event", "warning", 10),
    ("missing_consent_reference", "error", 8),
    ("consent_violation", "error", 6),
    ("cors_rejected", "error", 2),
    ("consent_reference_failed", "error", 2),
    ("repeated_consent_reference", "warning", 2),
]
FINDING_SHARE = 0.05
BROWSERS = [
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
]
TENANT = "acme.api.us.context.cloud.sap"
STOREFRONT = "https://shop.acme.example"

DELIVERY_COLUMNS = (
    "id, uid, run, kind, target_kind, verdict, method, url, host, path, client_addr, user_agent, visitor, schema, "
    "schema_name, consent_reference, origin, sent_at, answered_at, ended_at, duration_ms, status_code, error, "
    "request_headers, request_body, request_body_kind, request_body_size, request_body_truncated, request_body_note, "
    "response_headers, response_body, response_body_kind, response_body_size, response_body_truncated, "
    "response_body_note, consent, seq"
)
FINDING_COLUMNS = "delivery_id, run, visitor, kind, severity, message, at"


def _weighted(rng: random.Random, pairs: list[tuple[Any, float]] | list[tuple[Any, ...]], k: int) -> list[Any]:
    return rng.choices([p[0] for p in pairs], weights=[p[-1] for p in pairs], k=k)


@dataclass
class Visitor:
    key: str
    ip: str
    ua: str
    consent_reference: str
    runs: dict[str, list[float]] = field(default_factory=dict)  # run -> [first_seen, last_seen, page_loads]


def _visitors(rng: random.Random, count: int) -> list[Visitor]:
    out = []
    for n in range(count):
        ip = f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"
        ua = BROWSERS[n % len(BROWSERS)]
        key = hashlib.sha256(f"{ip}\n{ua}".encode()).hexdigest()[:16]
        out.append(Visitor(key, ip, ua, f"cr-{rng.getrandbits(64):016x}"))
    return out


def _runs(n: int) -> list[str]:
    return [f"ci-{k:04d}" for k in range(max(1, n // 50_000))]


def _delivery_rows(
    rng: random.Random, start: int, count: int, n: int, visitors: list[Visitor], runs: list[str]
) -> Iterator[tuple[tuple[Any, ...], list[tuple[Any, ...]]]]:
    """Rows for deliveries start+1 .. start+count of an n-delivery store, each with its finding rows."""
    kinds = _weighted(rng, KINDS, count)
    verdicts = _weighted(rng, VERDICTS, count)
    schemas = _weighted(rng, SCHEMAS, count)
    consents = _weighted(rng, CONSENTS, count)
    first = T_END - n * SPACING
    for j in range(count):
        i = start + j
        delivery_id = i + 1
        sent_at = first + i * SPACING + rng.random() * 0.2  # neighbours may swap: ids are not strictly time order
        # 60 % of the traffic is the default run; the rest belongs to CI runs, one after another in time.
        run = "default" if rng.random() < 0.6 else runs[i * len(runs) // n]
        visitor = visitors[rng.randrange(len(visitors))]
        kind = kinds[j]
        verdict = verdicts[j]
        target_kind = None
        schema = schema_name = None
        method = "POST"
        host = TENANT
        body = None
        if kind == "clickstream":
            schema_name = schemas[j]
            schema = f"context/commerce/{schema_name}"
            path = "/edge/clickstreamEvents"
            body = f'{{"productSku":"SKU-{i % 9973:05d}","timestamp":{int(sent_at * 1000)}}}'
        elif kind == "consent_reference":
            path = "/consent/acme/consentReferences"
            body = '{"consentTemplateId":"PROFILE","consentTemplateVersion":1}'
        elif kind == "preflight":
            method, target_kind, path = "OPTIONS", "clickstream", "/edge/clickstreamEvents"
        elif kind == "tag":
            method, host, path = "GET", "tag.static.us.context.cloud.sap", "/js/profile-tag.js"
        else:
            method, path = "GET", f"/strategy/v1/sites/acme/strategies/s-{i % 7}/products"
        status = error = answered = ended = duration = None
        response_headers = response_body = response_kind = response_size = response_truncated = None
        if verdict == "failed" and rng.random() < 0.5:
            error = "connection reset by peer"
            ended = sent_at + 0.4
            duration = 400.0
        elif verdict != "pending":
            status = {"delivered": 201 if method == "POST" else 200, "rejected": 400, "failed": 502}[verdict]
            if kind == "preflight" and verdict == "delivered":
                status = 204
            duration = round(20 + rng.random() * 180, 3)
            answered = ended = sent_at + duration / 1000
            response_headers = '[["content-type","application/json"],["content-length","2"]]'
            response_body, response_kind, response_size, response_truncated = "{}", "json", 2, 0
        request_headers = json.dumps(
            [
                ["content-type", "application/json"],
                ["hybris-schema", schema or ""],
                ["consent-reference", visitor.consent_reference],
                ["origin", STOREFRONT],
                ["user-agent", visitor.ua],
                ["authorization", "[redacted]"],
            ]
        )
        row = (
            delivery_id,
            f"{i:08x}-bench-{rng.getrandbits(48):012x}",
            run,
            kind,
            target_kind,
            verdict,
            method,
            f"https://{host}{path}",
            host,
            path,
            visitor.ip,
            visitor.ua,
            visitor.key,
            schema,
            schema_name,
            visitor.consent_reference if kind == "clickstream" else None,
            STOREFRONT,
            sent_at,
            answered,
            ended,
            duration,
            status,
            error,
            request_headers,
            body,
            "json" if body else "empty",
            len(body) if body else 0,
            0,
            None,
            response_headers,
            response_body,
            response_kind,
            response_size,
            response_truncated,
            None,
            consents[j] if kind == "clickstream" else None,
            delivery_id,
        )
        stats = visitor.runs.setdefault(run, [sent_at, sent_at, 0])
        stats[1] = sent_at
        if kind == "tag":
            stats[2] += 1
        findings: list[tuple[Any, ...]] = []
        if rng.random() < FINDING_SHARE:
            picked = rng.choices(FINDINGS, weights=[f[2] for f in FINDINGS], k=1 if rng.random() < 0.85 else 2)
            for finding_kind, severity, _ in picked:
                findings.append(
                    (delivery_id, run, visitor.key, finding_kind, severity, f"bench {finding_kind}", sent_at + 1.0)
                )
        yield row, findings


def generate_store(path: Path, n: int, seed: int = 4) -> float:
    """A store of n deliveries at `path` (replaced if it exists); returns the seconds it took."""
    started = time.monotonic()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    open_database(str(path)).conn.close()
    rng = random.Random(seed)
    visitors = _visitors(rng, max(8, n // 200))
    runs = _runs(n)
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-1000000")  # 1 GB while building: index inserts stay in memory
        conn.execute("PRAGMA temp_store=MEMORY")
        insert_delivery = f"INSERT INTO deliveries ({DELIVERY_COLUMNS}) VALUES ({', '.join('?' * 37)})"
        insert_finding = f"INSERT INTO findings ({FINDING_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
        chunk = 100_000
        for start in range(0, n, chunk):
            rows: list[tuple[Any, ...]] = []
            findings: list[tuple[Any, ...]] = []
            for row, found in _delivery_rows(rng, start, min(chunk, n - start), n, visitors, runs):
                rows.append(row)
                findings += found
            with conn:
                conn.executemany(insert_delivery, rows)
                conn.executemany(insert_finding, findings)
            if n >= 200_000:
                print(f"  {start + len(rows):>9,} deliveries written ({time.monotonic() - started:.0f} s)", flush=True)
        visitor_rows = []
        signal_rows = []
        loose_findings = []
        for v in visitors:
            for run, (first_seen, last_seen, page_loads) in v.runs.items():
                visitor_rows.append(
                    (run, v.key, v.ip, v.ua, first_seen - 2, last_seen, int(page_loads) + 1, last_seen, "given")
                )
                signal_rows.append((run, v.key, first_seen - 2, "absent", "page load without consent cookie", None))
                signal_rows.append((run, v.key, first_seen - 1, "given", "anonymous-consents", "PROFILE GIVEN"))
                if rng.random() < 0.02:  # a visitor-level finding: no delivery to point at
                    loose_findings.append(
                        (None, run, v.key, "no_events_after_consent", "error", "bench: nothing sent", last_seen)
                    )
        with conn:
            conn.executemany(
                "INSERT INTO visitors (run, visitor, client_addr, user_agent, first_seen, last_seen, page_loads, "
                "last_page_at, consent) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                visitor_rows,
            )
            conn.executemany(
                "INSERT INTO consent_signals (run, visitor, at, state, source, detail) VALUES (?, ?, ?, ?, ?, ?)",
                signal_rows,
            )
            conn.executemany(insert_finding, loose_findings)
            conn.execute("CREATE TABLE IF NOT EXISTS bench_mark (mark TEXT, n INTEGER)")
            conn.execute("INSERT INTO bench_mark VALUES (?, ?)", (STORE_MARK, n))
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return time.monotonic() - started


def check_counts(path: Path) -> tuple[int, int]:
    """Compare the trigger-kept count tables with count(*); returns (deliveries, findings) or raises BenchError."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        expected = set(
            conn.execute(
                "SELECT run, kind, verdict, COALESCE(schema_name, ''), count(*) FROM deliveries GROUP BY 1, 2, 3, 4"
            )
        )
        kept = set(conn.execute("SELECT run, kind, verdict, schema_name, n FROM delivery_counts WHERE n != 0"))
        if expected != kept:
            raise BenchError(f"{path}: delivery_counts differ from count(*): {sorted(expected ^ kept)[:5]}")
        expected = set(conn.execute("SELECT run, kind, severity, count(*) FROM findings GROUP BY 1, 2, 3"))
        kept = set(conn.execute("SELECT run, kind, severity, n FROM finding_counts WHERE n != 0"))
        if expected != kept:
            raise BenchError(f"{path}: finding_counts differ from count(*): {sorted(expected ^ kept)[:5]}")
        for table, expected_sql in COUNT_RULES.items():
            expected = set(conn.execute(expected_sql))
            kept = set(conn.execute(f"SELECT * FROM {table} WHERE n != 0"))
            if expected != kept:
                raise BenchError(f"{path}: {table} differs from count(*): {sorted(expected ^ kept)[:5]}")
        deliveries = conn.execute("SELECT count(*) FROM deliveries").fetchone()[0]
        findings = conn.execute("SELECT count(*) FROM findings").fetchone()[0]
        return int(deliveries), int(findings)
    finally:
        conn.close()


def reusable(path: Path, n: int) -> bool:
    """Whether `path` is a store this benchmark built with n deliveries, migrated to the current schema."""
    if not path.exists():
        return False
    applied = "SELECT name FROM _sqlite_migrations WHERE migration_set = 'clickwatch'"
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            before = {name for (name,) in conn.execute(applied)}
        # open_database applies migrations added since the store was built (a new index, new count tables with their
        # backfill), so an older store is brought up to date rather than rebuilt.
        started = time.monotonic()
        db = open_database(str(path), timeout=5.0)
        try:
            added = sorted({name for (name,) in db.conn.execute(applied)} - before)
            row = db.conn.execute("SELECT n FROM bench_mark WHERE mark = ?", (STORE_MARK,)).fetchone()
            count = db.conn.execute("SELECT count(*) FROM deliveries").fetchone()[0]
        finally:
            db.conn.close()
    except sqlite3.Error as exc:
        print(f"store {path}: not reusable ({exc})")
        return False
    if added:
        print(f"store {path}: migrated ({', '.join(added)}) in {time.monotonic() - started:.1f} s")
    return row is not None and row[0] == n and count == n


def probe_values(path: Path) -> dict[str, str]:
    """Filter values taken from the store itself, so that each store is asked the same kind of question."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        newest_visitor = conn.execute("SELECT visitor FROM deliveries ORDER BY sent_at DESC LIMIT 1").fetchone()[0]
        lo, hi = conn.execute("SELECT min(sent_at), max(sent_at) FROM deliveries").fetchone()
        ci_run = conn.execute("SELECT run FROM delivery_counts WHERE run != 'default' ORDER BY run LIMIT 1").fetchone()
        middle_id = conn.execute("SELECT max(id) / 2 FROM deliveries").fetchone()[0]
        return {
            "visitor": newest_visitor,
            "middle": f"{(lo + hi) / 2:.3f}",
            "recent": f"{hi - 600:.3f}",  # the last ten minutes
            "ci_run": ci_run[0] if ci_run else "ci-0000",
            "middle_id": str(middle_id),
        }
    finally:
        conn.close()


# --- what is measured -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    label: str
    path: str  # may name {visitor}, {middle}, {recent}, {ci_run}, {middle_id}
    target: bool = True  # part of the 2x target; False: measured for diagnosis only


PROBES = [
    Probe("deliveries", "/api/deliveries"),
    Probe("deliveries kind (common)", "/api/deliveries?kind=clickstream"),
    Probe("deliveries kind (rare)", "/api/deliveries?kind=strategy"),
    Probe("deliveries verdict (common)", "/api/deliveries?verdict=delivered"),
    Probe("deliveries verdict (rare)", "/api/deliveries?verdict=failed"),
    Probe("deliveries schema (short)", "/api/deliveries?schema=ProductView"),
    Probe("deliveries schema (as sent)", "/api/deliveries?schema=context/commerce/AddedToCart"),
    Probe("deliveries schema (rare)", "/api/deliveries?schema=Bogus"),
    Probe("deliveries schema (none)", "/api/deliveries?schema=NoSuchSchema"),
    Probe("deliveries finding (common)", "/api/deliveries?finding=consent_unknown"),
    Probe("deliveries finding (rare)", "/api/deliveries?finding=cors_rejected"),
    Probe("deliveries finding (none)", "/api/deliveries?finding=no_events_after_consent"),
    Probe("deliveries visitor", "/api/deliveries?visitor={visitor}"),
    Probe("deliveries visitor (unknown)", "/api/deliveries?visitor=0000000000000000"),
    Probe("deliveries run (default)", "/api/deliveries?run=default"),
    Probe("deliveries run (ci)", "/api/deliveries?run={ci_run}"),
    Probe("deliveries since", "/api/deliveries?since={middle}"),
    Probe("deliveries until", "/api/deliveries?until={middle}"),
    Probe("summary", "/api/summary"),
    Probe("summary run (default)", "/api/summary?run=default"),
    Probe("summary run (ci)", "/api/summary?run={ci_run}"),
    # Issue 13: every filtered summary (kind, schema, finding, since, run and any two of them) within 2x.
    Probe("summary kind", "/api/summary?kind=clickstream"),
    Probe("summary kind (rare)", "/api/summary?kind=strategy"),
    Probe("summary schema", "/api/summary?schema=ProductView"),
    Probe("summary schema (rare)", "/api/summary?schema=Bogus"),
    Probe("summary finding", "/api/summary?finding=consent_unknown"),
    Probe("summary finding (rare)", "/api/summary?finding=cors_rejected"),
    Probe("summary finding (none)", "/api/summary?finding=no_events_after_consent"),
    Probe("summary since", "/api/summary?since={middle}"),
    Probe("summary since (recent)", "/api/summary?since={recent}"),
    Probe("summary kind+schema", "/api/summary?kind=clickstream&schema=AddedToCart"),
    Probe("summary kind+finding", "/api/summary?kind=clickstream&finding=invalid_payload"),
    Probe("summary kind+run", "/api/summary?kind=preflight&run={ci_run}"),
    Probe("summary kind+since", "/api/summary?kind=clickstream&since={middle}"),
    Probe("summary schema+finding", "/api/summary?schema=ProductView&finding=slow_delivery"),
    Probe("summary schema+run", "/api/summary?schema=KeywordSearch&run=default"),
    Probe("summary schema+since", "/api/summary?schema=ProductView&since={middle}"),
    Probe("summary finding+run", "/api/summary?finding=unknown_schema&run={ci_run}"),
    Probe("summary finding+since", "/api/summary?finding=consent_unknown&since={middle}"),
    Probe("summary run+since", "/api/summary?run=default&since={middle}"),
    Probe("summary verdict", "/api/summary?verdict=failed", target=False),
    Probe("summary visitor", "/api/summary?visitor={visitor}", target=False),
    Probe("live page first render", "/"),
    Probe("live page kind filter", "/?kind=clickstream", target=False),
    Probe("delivery detail", "/api/deliveries/{middle_id}", target=False),
    # Issue 5 (Prometheus metrics): reported as n/a while /metrics answers 404. It reads trigger-kept totals, so
    # it should not grow with the store either; set target=True once the figure for it is settled.
    Probe("metrics", "/metrics", target=False),
]


@dataclass
class Timing:
    status: int
    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def p95(self) -> float:
        ordered = sorted(self.seconds)
        return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy") and not k.startswith("CLICKWATCH_")}
    env.update(extra)
    return env


def wait_port(port: int, process: subprocess.Popen[bytes], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"{what} exited with {process.returncode}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{what} did not listen on {HOST}:{port} within {timeout:.0f} s")


@dataclass
class Dashboard:
    """A uvicorn subprocess serving the dashboard for one store."""

    name: str
    port: int
    process: subprocess.Popen[bytes]

    @classmethod
    def start(cls, name: str, db: Path, workdir: Path) -> Dashboard:
        port = free_port()
        log = open(workdir / f"dashboard-{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        command = [sys.executable, "-m", "uvicorn", "clickwatch.dashboard.main:create_app", "--factory"]
        command += ["--host", HOST, "--port", str(port), "--log-level", "warning", "--no-access-log"]
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env=_child_env(CLICKWATCH_DB=str(db), CLICKWATCH_CONFDIR=str(workdir / "mitmproxy-conf")),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        dashboard = cls(name, port, process)
        wait_port(port, process, f"dashboard ({name})")
        return dashboard

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def measure(
    probes: list[Probe],
    small: Dashboard,
    large: Dashboard,
    values: tuple[dict[str, str], dict[str, str]],
    calls: int,
    warmup: int,
) -> list[tuple[Probe, Timing, Timing]]:
    results = []
    with (
        httpx.Client(base_url=small.url, trust_env=False, timeout=60) as small_client,
        httpx.Client(base_url=large.url, trust_env=False, timeout=60) as large_client,
    ):
        for probe in probes:
            paths = [probe.path.format(**values[0]), probe.path.format(**values[1])]
            statuses = [0, 0]
            seconds: list[list[float]] = [[], []]
            for round_ in range(warmup + calls):
                for side, client in enumerate((small_client, large_client)):
                    begin = time.perf_counter()
                    answer = client.get(paths[side])
                    _ = answer.content
                    elapsed = time.perf_counter() - begin
                    statuses[side] = answer.status_code
                    if answer.status_code != 200:
                        break
                    if round_ >= warmup:
                        seconds[side].append(elapsed)
                if statuses[0] != 200 or statuses[1] != 200:
                    break
            timings = [Timing(statuses[0], seconds[0]), Timing(statuses[1], seconds[1])]
            results.append((probe, timings[0], timings[1]))
    return results


def report(results: list[tuple[Probe, Timing, Timing]], small_n: int, large_n: int) -> tuple[int, int, list[str]]:
    print()
    print(
        f"{'call':<30} {'1k median':>10} {'1k p95':>9} {'1M median':>10} {'1M p95':>9} {'ratio':>7}  result".replace(
            "1k", f"{small_n // 1000}k"
        ).replace("1M", f"{large_n / 1e6:g}M")
    )
    missed = passed = 0
    problems = []
    for probe, small, large in results:
        if small.status != 200 or large.status != 200:
            na = f"n/a (HTTP {small.status} / {large.status})"
            print(f"{probe.label:<30} {'':>10} {'':>9} {'':>10} {'':>9} {'':>7}  {na}")
            if probe.label not in ("metrics", "live page first render") or small.status >= 500 or large.status >= 500:
                problems.append(f"{probe.label}: HTTP {small.status} / {large.status}")
            continue
        ratio = large.median / small.median
        ok = ratio <= TARGET_RATIO
        verdict = ("PASS" if ok else "MISS") if probe.target else f"info ({'<=' if ok else '>'}2x)"
        if probe.target:
            passed += ok
            missed += not ok
        print(
            f"{probe.label:<30} {small.median * 1e3:>8.2f}ms {small.p95 * 1e3:>7.2f}ms "
            f"{large.median * 1e3:>8.2f}ms {large.p95 * 1e3:>7.2f}ms {ratio:>6.2f}x  {verdict}"
        )
    return passed, missed, problems


# --- live latency: proxy -> store -> /api/stream ----------------------------------------------------------------


class _Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: Any) -> None:
        pass


class StreamFollower(threading.Thread):
    """Reads /api/stream and records when each delivery event arrives, by consent reference."""

    def __init__(self, url: str) -> None:
        super().__init__(name="sse-follower", daemon=True)
        self.url = url
        self.events: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
        self.connected = threading.Event()
        self.client = httpx.Client(trust_env=False, timeout=httpx.Timeout(10.0, read=None))
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.client.stream("GET", self.url, headers={"accept": "text/event-stream"}) as response:
                self.connected.set()
                for line in response.iter_lines():
                    if line.startswith("data:"):
                        now = time.perf_counter()
                        with contextlib.suppress(ValueError):
                            self.events.put((now, json.loads(line[5:].strip())))
        except BaseException as exc:  # closed by stop(), or a real error reported by the caller
            self.error = exc
        finally:
            self.connected.set()

    def wait_for(self, token: str, timeout: float) -> tuple[float | None, float | None]:
        """Arrival times of the first event for `token` and of the first one with a final verdict."""
        first = final = None
        deadline = time.perf_counter() + timeout
        while final is None:
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            try:
                at, item = self.events.get(timeout=left)
            except queue.Empty:
                break
            if item.get("consent_reference") != token:
                continue
            first = first if first is not None else at
            if item.get("verdict") != "pending":
                final = at
        return first, final

    def stop(self) -> None:
        self.client.close()


def live_latency(db: Path, dashboard: Dashboard, workdir: Path, rounds: int) -> tuple[list[float], list[float]]:
    """Seconds from the client receiving the 201 to the SSE event: (delivery shown with verdict, first shown)."""
    upstream = http.server.ThreadingHTTPServer((HOST, 0), _Upstream)
    upstream.daemon_threads = True
    threading.Thread(target=upstream.serve_forever, name="upstream", daemon=True).start()
    proxy_port = free_port()
    mitmdump = Path(sys.executable).parent / "mitmdump"
    log = open(workdir / "mitmdump.log", "wb")  # noqa: SIM115 (closed with the process)
    command = [str(mitmdump), "-q", "--listen-host", HOST, "--listen-port", str(proxy_port)]
    command += ["--set", f"confdir={workdir / 'mitmproxy-conf'}", "-s", str(ADDON), "--set", f"clickwatch_db={db}"]
    proxy = subprocess.Popen(
        command,
        cwd=workdir,
        env=_child_env(),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    follower = StreamFollower(f"{dashboard.url}/api/stream")
    shown: list[float] = []
    first_shown: list[float] = []
    try:
        wait_port(proxy_port, proxy, "mitmdump")
        follower.start()
        follower.connected.wait(10)
        time.sleep(0.5)  # the stream has read its starting change number
        target = f"http://{HOST}:{upstream.server_address[1]}/edge/clickstreamEvents"
        with httpx.Client(proxy=f"http://{HOST}:{proxy_port}", trust_env=False, timeout=10) as client:
            for n in range(rounds + 1):  # the first is a warm-up: the addon opens its store on first use
                token = f"bench-live-{os.getpid()}-{n}"
                answer = client.post(
                    target,
                    content=json.dumps({"productSku": f"LIVE-{n}", "timestamp": int(time.time() * 1000)}),
                    headers={
                        "content-type": "application/json",
                        "hybris-schema": "context/commerce/ProductView",
                        "consent-reference": token,
                        "user-agent": BROWSERS[0],
                    },
                )
                received = time.perf_counter()
                if answer.status_code != 201:
                    raise BenchError(f"the POST through the proxy got HTTP {answer.status_code}")
                first, final = follower.wait_for(token, timeout=10.0 if n == 0 else 5.0)
                if final is None:
                    raise BenchError(f"no SSE event with a verdict for {token} within the wait ({follower.error!r})")
                if n:
                    shown.append(final - received)
                    first_shown.append((first or final) - received)
                time.sleep(0.1 + random.random() * 0.3)  # land anywhere in the stream's poll interval
    finally:
        follower.stop()
        upstream.shutdown()
        if proxy.poll() is None:
            proxy.send_signal(signal.SIGINT)
            try:
                proxy.wait(15)
            except subprocess.TimeoutExpired:
                proxy.kill()
                proxy.wait()
    return shown, first_shown


# --- write cost of the time-bucket tables ----------------------------------------------------------------------

# Migration 0013's triggers: dropped for the "without" side of the write-cost comparison.
BUCKET_TRIGGERS = "name LIKE '%hourly_flagged%' OR name LIKE '%minute%' OR name LIKE '%daily%'"


def _write_loop(path: Path, n: int, with_buckets: bool) -> float:
    """CPU seconds per delivery of the store's SQL for n deliveries written as the writer does: 20 per transaction,
    each answered by a separate verdict update (a late answer), one in five with findings (one in fifteen with two)."""
    conn = open_database(str(path)).conn
    try:
        if not with_buckets:
            for (name,) in conn.execute(
                f"SELECT name FROM sqlite_master WHERE type = 'trigger' AND ({BUCKET_TRIGGERS})"
            ):
                conn.execute(f"DROP TRIGGER {name}")
            conn.commit()
        started = time.process_time()
        for batch in range(0, n, 20):
            with conn:
                for i in range(batch, min(batch + 20, n)):
                    at = T_END - n + i * 0.5
                    conn.execute(
                        "INSERT INTO deliveries (id, uid, run, kind, verdict, method, url, visitor, sent_at, "
                        "schema_name, seq) VALUES (?, ?, 'default', 'clickstream', 'pending', 'POST', "
                        "'https://acme/edge/clickstreamEvents', 'v', ?, ?, ?)",
                        (i + 1, f"w{i}", at, SCHEMAS[i % 3][0], i + 1),
                    )
                    conn.execute(
                        "UPDATE deliveries SET verdict = ?, status_code = 201, duration_ms = 100.0, answered_at = ?, "
                        "ended_at = ? WHERE uid = ?",
                        ("delivered" if i % 30 else "rejected", at + 0.1, at + 0.1, f"w{i}"),
                    )
                    if i % 5 == 0:
                        kinds = [("invalid_payload", "error")] + (
                            [("duplicate_event", "warning")] if i % 15 == 0 else []
                        )
                        for kind, severity in kinds:
                            conn.execute(
                                f"INSERT INTO findings ({FINDING_COLUMNS}) VALUES (?, 'default', 'v', ?, ?, 'w', ?)",
                                (i + 1, kind, severity, at),
                            )
        return (time.process_time() - started) / n
    finally:
        conn.close()


def write_cost(n: int, rounds: int) -> None:
    """Print the store's SQL CPU per delivery with and without migration 0013's triggers, paired rounds."""
    with tempfile.TemporaryDirectory(prefix="clickwatch-write-cost-") as tmp:
        pairs = []
        for round_ in range(rounds):
            without = _write_loop(Path(tmp) / f"without-{round_}.db", n, with_buckets=False)
            with_ = _write_loop(Path(tmp) / f"with-{round_}.db", n, with_buckets=True)
            pairs.append((without, with_))
            print(f"  round {round_ + 1}: without {without * 1e6:6.1f} us, with {with_ * 1e6:6.1f} us per delivery")
    ratios = sorted(with_ / without for without, with_ in pairs)
    print(
        f"write cost of migration 0013's triggers, {n:,} deliveries x {rounds} pairs: median "
        f"{statistics.median(p[0] for p in pairs) * 1e6:.1f} -> {statistics.median(p[1] for p in pairs) * 1e6:.1f} us "
        f"per delivery; paired ratio median {statistics.median(ratios):.3f} ({ratios[0]:.2f}-{ratios[-1]:.2f})"
    )


# --- main -------------------------------------------------------------------------------------------------------


def prepare(path: Path, n: int, reuse: bool) -> None:
    if reuse and reusable(path, n):
        print(f"store {path}: reusing {n:,} deliveries")
    else:
        seconds = generate_store(path, n)
        print(f"store {path}: built {n:,} deliveries in {seconds:.1f} s")
    started = time.monotonic()
    deliveries, findings = check_counts(path)
    size = sum(Path(f"{path}{s}").stat().st_size for s in ("", "-wal") if Path(f"{path}{s}").exists())
    print(
        f"  {deliveries:,} deliveries, {findings:,} findings, {size / 1e6:,.0f} MB; "
        f"count tables match count(*) (checked in {time.monotonic() - started:.1f} s)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--reuse", type=Path, help="large store file: reused if it is one this script built, else built"
    )
    parser.add_argument("--small", type=int, default=1_000, help="deliveries in the small store (1,000)")
    parser.add_argument("--large", type=int, default=1_000_000, help="deliveries in the large store (1,000,000)")
    parser.add_argument("--calls", type=int, default=25, help="measured calls per endpoint and store (25)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up calls per endpoint and store (3)")
    parser.add_argument("--live-rounds", type=int, default=20, help="deliveries sent for the live latency (20)")
    parser.add_argument("--no-live", action="store_true", help="skip the proxy -> live page latency")
    parser.add_argument("--only", metavar="TEXT", help="measure only the calls whose label contains TEXT")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--write-cost",
        type=int,
        metavar="N",
        help="only measure the CPU per delivery that migration 0013's triggers add, writing N deliveries (4000)",
    )
    args = parser.parse_args(argv)
    if args.write_cost:
        write_cost(args.write_cost, rounds=5)
        return 0

    workdir = Path(tempfile.mkdtemp(prefix="clickwatch-dashboard-bench-"))
    small_db = workdir / "small.db"
    large_db = args.reuse or workdir / "large.db"
    print(f"clickwatch dashboard benchmark: work directory {workdir}, python {sys.version.split()[0]}")
    print(f"sqlite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs")
    dashboards: list[Dashboard] = []
    status = 0
    try:
        prepare(small_db, args.small, reuse=False)
        prepare(large_db, args.large, reuse=args.reuse is not None)
        values = (probe_values(small_db), probe_values(large_db))
        dashboards = [Dashboard.start("small", small_db, workdir), Dashboard.start("large", large_db, workdir)]
        probes = [p for p in PROBES if args.only is None or args.only in p.label]
        print(f"measuring {len(probes)} calls x {args.calls} (+{args.warmup} warm-up) on each store ...", flush=True)
        results = measure(probes, dashboards[0], dashboards[1], values, args.calls, args.warmup)
        passed, missed, problems = report(results, args.small, args.large)
        print(f"\n2x target: {passed} PASS, {missed} MISS")
        for problem in problems:
            print(f"ERROR {problem}")
        if problems:
            status = EXIT_ERRORS
        dashboards[1].stop()
        if not args.no_live:
            print(f"\nlive latency: {args.live_rounds} clickstream POSTs through mitmdump + addon into the small store")
            shown, first = live_latency(small_db, dashboards[0], workdir, args.live_rounds)
            ok = max(shown) <= TARGET_LIVE_SECONDS
            print(
                f"  201 received -> SSE event with verdict: median {statistics.median(shown) * 1e3:.0f} ms, "
                f"max {max(shown) * 1e3:.0f} ms (target {TARGET_LIVE_SECONDS:.0f} s)  {'PASS' if ok else 'MISS'}"
            )
            print(
                f"  201 received -> first SSE event for it:   median {statistics.median(first) * 1e3:.0f} ms, "
                f"max {max(first) * 1e3:.0f} ms (negative: shown as pending before the answer)"
            )
    except BenchError as exc:
        print(f"FATAL {exc}")
        return EXIT_FATAL
    finally:
        for dashboard in dashboards:
            dashboard.stop()
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
