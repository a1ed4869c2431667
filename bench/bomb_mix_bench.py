"""Issue 15's mixed scenario: compression bombs spread among real clickstream POSTs through a real `clickwatch up`.

Two runs, each in a fresh `clickwatch up` (temporary store, loopback, free ports) in front of a loopback upstream
that answers 201 to `POST /edge/clickstreamEvents`: first `--posts` + `--bombs` valid POSTs (the comparison), then
`--posts` valid POSTs with `--bombs` compression bombs spread evenly among them (gzip, deflate, br, zstd with and
without its size stated, in turn: the builders of bench/decode_bench.py, 300 MiB of zeros each). Before the load one
page load grants the visitor's consent, so a healthy POST has no finding. For each run it prints: the time from the
last 201 to the store being drained (every delivery final), deliveries stored as `delivered` against 201s received
(valid and bomb apart, and which were lost), the finding kinds each group got, the peak RSS (VmHWM) of the proxy and
of its store process, and whether the store process was replaced.

    .venv/bin/python -m bench.bomb_mix_bench              # 8,000 POSTs + 80 bombs, 20 connections (a few minutes)
    .venv/bin/python -m bench.bomb_mix_bench --quick      # smoke run: 400 POSTs + 10 bombs

It prints figures; it is not a test (tests/integration/test_bomb_mix.py is). Exit code 0: both runs measured and no
delivery lost; 1: a delivery was lost, the store process was replaced or a run did not drain; 2: the run could not
be made.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from urllib.parse import parse_qs, urlsplit

import pytest

from bench.capture_bench import (
    CLICKSTREAM_PATH,
    CONSENT_COOKIE,
    CONTENT_LENGTH,
    EVENT_BODY,
    HOST,
    USER_AGENT,
    BenchError,
    Upstream,
    child_pids,
    percentile,
    proc_status_kb,
)
from bench.decode_bench import _cases
from tests.rig import Up, clickwatch_up

CODINGS = ("gzip", "deflate", "br", "zstd (size stated)", "zstd (size unstated)")
CRASH_LINE = "store process ended unexpectedly"
EXIT_LOST = 1
EXIT_FATAL = 2


@dataclass(frozen=True)
class Request:
    """One POST of the mix: its number (in its URL), its bomb coding ('' for a valid event) and its wire bytes."""

    number: int
    bomb: str
    wire: bytes


@dataclass
class Answered:
    """What the load generator saw: status by request number, latencies of the valid POSTs, errors."""

    status: dict[int, int] = field(default_factory=dict)
    latency: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    last_201: float = 0.0
    elapsed: float = 0.0


def bomb_bodies() -> dict[str, tuple[str, bytes]]:
    """Each bomb of bench/decode_bench.py (300 MiB of zeros) by name: (Content-Encoding, body)."""
    cases = _cases()
    return {name: (cases[name][0], cases[name][1]()) for name in CODINGS}


def bomb_positions(posts: int, bombs: int) -> dict[int, int]:
    """Request number -> index of the bomb sent there, spread evenly over `posts` + `bombs` requests."""
    total = posts + bombs
    return {int((k + 0.5) * total / bombs): k for k in range(bombs)} if bombs else {}


def build_requests(upstream_port: int, posts: int, bombs: int, bodies: dict[str, tuple[str, bytes]]) -> list[Request]:
    """The whole mix, in the order it is sent: valid events with a different body each, bombs at their places."""
    head = (
        f"Host: {HOST}:{upstream_port}\r\nUser-Agent: {USER_AGENT} bomb-mix-bench\r\nAccept: */*\r\n"
        f"Content-Type: application/json\r\nhybris-schema: context/commerce/ProductView\r\n"
        f"consent-reference: {uuid.uuid4()}\r\n"
    )
    at = bomb_positions(posts, bombs)
    names = list(bodies)
    requests = []
    for number in range(posts + bombs):
        if number in at:
            name = names[at[number] % len(names)]
            coding, body = bodies[name]
            query, extra = (
                f"n={number}&bomb={name.split()[0]}-{at[number] % len(names)}",
                f"Content-Encoding: {coding}\r\n",
            )
        else:
            body = EVENT_BODY % (number, number % 997, int(time.time() * 1000))
            query, extra, name = f"n={number}", "", ""
        line = f"POST http://{HOST}:{upstream_port}{CLICKSTREAM_PATH}?{query} HTTP/1.1\r\n"
        wire = f"{line}{head}{extra}Content-Length: {len(body)}\r\n\r\n".encode() + body
        requests.append(Request(number, name, wire))
    return requests


def grant_consent(proxy_port: int, upstream_port: int) -> None:
    """One storefront page load carrying a GIVEN consent cookie, from the same browser as the POSTs."""
    request = (
        f"GET http://{HOST}:{upstream_port}/product/123 HTTP/1.1\r\nHost: {HOST}:{upstream_port}\r\n"
        f"User-Agent: {USER_AGENT} bomb-mix-bench\r\nAccept: text/html\r\nCookie: {CONSENT_COOKIE}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()

    async def get() -> bytes:
        reader, writer = await asyncio.open_connection(HOST, proxy_port)
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        writer.close()
        return head

    head = asyncio.run(asyncio.wait_for(get(), 30))
    if b" 200 " not in head.split(b"\r\n", 1)[0]:
        raise BenchError(f"the consent page load was answered {head[:60]!r}")


async def _drive(proxy_port: int, requests: list[Request], connections: int, answered: Answered) -> None:
    streams = await asyncio.gather(*(asyncio.open_connection(HOST, proxy_port) for _ in range(connections)))
    remaining: Iterator[Request] = iter(requests)  # shared: each connection takes the next request to send
    clock = time.perf_counter

    async def worker(number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for request in remaining:
                started = clock()
                writer.write(request.wire)
                head = await reader.readuntil(b"\r\n\r\n")
                length = CONTENT_LENGTH.search(head)
                if length:
                    await reader.readexactly(int(length.group(1)))
                status = int(head.split(b" ", 2)[1])
                answered.status[request.number] = status
                if status == 201:
                    answered.last_201 = time.monotonic()
                if not request.bomb:
                    answered.latency.append(clock() - started)
        except (OSError, EOFError, asyncio.LimitOverrunError, ValueError, IndexError) as exc:
            answered.errors.append(f"connection {number}: {exc!r}")
        finally:
            writer.close()

    started = clock()
    await asyncio.gather(*(worker(n, r, w) for n, (r, w) in enumerate(streams)))
    answered.elapsed = clock() - started


def send(proxy_port: int, requests: list[Request], connections: int, timeout: float) -> Answered:
    """Send the mix over `connections` keep-alive connections; bounded by `timeout` seconds."""
    answered = Answered()

    async def bounded() -> None:
        async with asyncio.timeout(timeout):
            await _drive(proxy_port, requests, min(connections, len(requests)), answered)

    try:
        asyncio.run(bounded())
    except TimeoutError:
        raise BenchError(f"{len(requests)} requests did not finish within {timeout:.0f} s") from None
    return answered


class PeakWatch:
    """Samples VmHWM of the proxy and of every store process it starts (a replacement is a new pid)."""

    def __init__(self, proxy_pid: int) -> None:
        self.proxy_pid = proxy_pid
        self.peaks: dict[int, int] = {}  # pid -> kB
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        for pid in (self.proxy_pid, *child_pids(self.proxy_pid)):
            self.peaks[pid] = max(self.peaks.get(pid, 0), proc_status_kb(pid, "VmHWM"))

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self._sample()

    def stop(self) -> None:
        self._sample()
        self._stop.set()
        self._thread.join(5)

    @property
    def stores(self) -> list[int]:
        return [pid for pid in self.peaks if pid != self.proxy_pid]


def final_count(db: Path) -> tuple[int, int]:
    """(clickstream deliveries with a final verdict, those still pending); (0, 0) before the store exists."""
    with contextlib.suppress(sqlite3.Error), contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
        rows = dict(c.execute("SELECT verdict = 'pending', count(*) FROM deliveries GROUP BY 1").fetchall())
        return int(rows.get(0, 0)), int(rows.get(1, 0))
    return 0, 0


def wait_drained(db: Path, expected: int, timeout: float, stall: float) -> tuple[float | None, int]:
    """(seconds until `expected` deliveries are final and none pending, or None; final deliveries at the end).

    Gives up after `timeout` seconds, or when the count has not moved for `stall` seconds (a delivery was lost).
    """
    started = moved = time.monotonic()
    last = -1
    while (now := time.monotonic()) - started < timeout and now - moved < stall:
        final, pending = final_count(db)
        if final >= expected and pending == 0:
            return now - started, final
        if final != last:
            last, moved = final, now
        time.sleep(0.05)
    return None, last


@dataclass
class RunReport:
    name: str
    sent: Counter[str]  # "valid" / "bomb"
    answered_201: Counter[str]
    stored: Counter[str]  # delivered rows
    lost: dict[str, list[int]]
    other_statuses: Counter[int]
    findings: dict[str, Counter[str]]  # group -> finding kind -> deliveries
    bombs_naming_cap: Counter[str]  # bomb coding -> bombs whose finding names capture.body_decode_limit
    bombs_by_coding: Counter[str]
    drain_s: float | None
    rps: float
    p50_ms: float
    p99_ms: float
    proxy_peak_mb: float
    store_peak_mb: float
    store_processes: int
    crash_lines: int
    errors: list[str]


def read_store(db: Path) -> tuple[dict[int, tuple[str, str]], dict[int, list[tuple[str, str]]]]:
    """Deliveries by request number (verdict, bomb coding) and their findings (kind, message)."""
    deliveries: dict[int, tuple[str, str]] = {}
    findings: dict[int, list[tuple[str, str]]] = {}
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as conn:
        ids = {}
        for row_id, url, verdict in conn.execute("SELECT id, url, verdict FROM deliveries WHERE kind = 'clickstream'"):
            query = parse_qs(urlsplit(url).query)
            if "n" in query:
                number = int(query["n"][0])
                deliveries[number] = (verdict, query.get("bomb", [""])[0])
                ids[row_id] = number
        for delivery_id, kind, message in conn.execute("SELECT delivery_id, kind, message FROM findings"):
            if delivery_id in ids:
                findings.setdefault(ids[delivery_id], []).append((kind, message))
    return deliveries, findings


def run(name: str, args: argparse.Namespace, upstream: Upstream, requests: list[Request], root: Path) -> RunReport:
    """One fresh `clickwatch up`, consent granted, the mix sent, the store drained and read."""
    with clickwatch_up(root / name, start_timeout=60) as up:
        watch = PeakWatch(up.process.pid)
        try:
            grant_consent(up.proxy_port, upstream.port)
            answered = send(up.proxy_port, requests, args.connections, args.timeout)
            drained, final = wait_drained(up.db, len(answered.status), args.drain_timeout, args.stall)
            drain_s = None if drained is None else max(0.0, time.monotonic() - answered.last_201)
            if drained is None:
                answered.errors.append(f"not drained: {final:,} of {len(answered.status):,} deliveries final")
        finally:
            watch.stop()
        log = _stop_and_log(up)
    deliveries, findings = read_store(up.db)
    return _report(name, requests, answered, deliveries, findings, drain_s, watch, log)


def _stop_and_log(up: Up) -> str:
    up.stop()
    return up.log()


def _report(
    name: str,
    requests: list[Request],
    answered: Answered,
    deliveries: dict[int, tuple[str, str]],
    findings: dict[int, list[tuple[str, str]]],
    drain_s: float | None,
    watch: PeakWatch,
    log: str,
) -> RunReport:
    sent: Counter[str] = Counter()
    ok: Counter[str] = Counter()
    stored: Counter[str] = Counter()
    other: Counter[int] = Counter()
    lost: dict[str, list[int]] = {"valid": [], "bomb": []}
    kinds: dict[str, Counter[str]] = {"valid": Counter(), "bomb": Counter()}
    naming_cap: Counter[str] = Counter()
    by_coding: Counter[str] = Counter()
    for request in requests:
        group = "bomb" if request.bomb else "valid"
        sent[group] += 1
        status = answered.status.get(request.number)
        verdict = deliveries.get(request.number, ("", ""))[0]
        stored[group] += verdict == "delivered"
        if status == 201:
            ok[group] += 1
            if verdict != "delivered":
                lost[group].append(request.number)
        elif status is not None:
            other[status] += 1
        found = findings.get(request.number, [])
        kinds[group].update({kind for kind, _ in found} or {"(none)"})
        if request.bomb:
            by_coding[request.bomb] += 1
            naming_cap[request.bomb] += any("capture.body_decode_limit" in message for _, message in found)
    stores = watch.stores
    return RunReport(
        name=name,
        sent=sent,
        answered_201=ok,
        stored=stored,
        lost=lost,
        other_statuses=other,
        findings=kinds,
        bombs_naming_cap=naming_cap,
        bombs_by_coding=by_coding,
        drain_s=drain_s,
        rps=len(answered.status) / answered.elapsed if answered.elapsed else 0.0,
        p50_ms=percentile(answered.latency, 50) * 1000,
        p99_ms=percentile(answered.latency, 99) * 1000,
        proxy_peak_mb=watch.peaks.get(watch.proxy_pid, 0) / 1024,
        store_peak_mb=max((watch.peaks[pid] for pid in stores), default=0) / 1024,
        store_processes=len(stores),
        crash_lines=log.count(CRASH_LINE),
        errors=answered.errors + [line for line in log.splitlines() if "Traceback" in line or "dropped" in line],
    )


def print_report(reports: list[RunReport]) -> bool:
    """Print both runs side by side; True when nothing was lost and the store process was never replaced."""
    print(
        f"\n{'run':<10} {'sent valid+bomb':>16} {'201s valid/bomb':>16} {'delivered valid/bomb':>21} "
        f"{'lost':>5} {'req/s':>7} {'valid p50/p99 ms':>17} {'drained after last 201':>23} "
        f"{'peak MB proxy/store':>20} {'store pids':>10}"
    )
    healthy = True
    for r in reports:
        lost = len(r.lost["valid"]) + len(r.lost["bomb"])
        drained = f"{r.drain_s:.2f} s" if r.drain_s is not None else "NOT DRAINED"
        print(
            f"{r.name:<10} {r.sent['valid']:>8,}+{r.sent['bomb']:<7,} "
            f"{r.answered_201['valid']:>8,}/{r.answered_201['bomb']:<7,} "
            f"{r.stored['valid']:>11,}/{r.stored['bomb']:<9,} {lost:>5} {r.rps:>7.1f} "
            f"{r.p50_ms:>8.1f}/{r.p99_ms:<8.1f} {drained:>23} {r.proxy_peak_mb:>9.1f}/{r.store_peak_mb:<10.1f} "
            f"{r.store_processes:>10}"
        )
        healthy &= lost == 0 and r.store_processes == 1 and r.crash_lines == 0 and r.drain_s is not None
    for r in reports:
        print(f"\n{r.name}: finding kinds per delivery (a delivery counts once per kind)")
        for group, kinds in r.findings.items():
            if r.sent[group]:
                print(f"  {group:<6} " + ", ".join(f"{kind} {n:,}" for kind, n in kinds.most_common()))
        if r.bombs_by_coding:
            print(
                "  bombs whose finding names capture.body_decode_limit: "
                + ", ".join(f"{coding} {r.bombs_naming_cap[coding]}/{n}" for coding, n in r.bombs_by_coding.items())
            )
        if r.other_statuses:
            print(f"  answers other than 201: {dict(r.other_statuses)}")
        for group, numbers in r.lost.items():
            if numbers:
                print(f"  LOST {group}: {len(numbers)} answered 201 but not stored delivered, e.g. n={numbers[:10]}")
        if r.crash_lines or r.store_processes != 1:
            print(f"  STORE PROCESS REPLACED: {r.store_processes} store pids, {r.crash_lines} crash log line(s)")
        for error in r.errors[:10]:
            print(f"  error: {error}")
    if len(reports) == 2 and reports[0].drain_s and reports[1].drain_s is not None:
        base, mix = reports
        print(
            f"\nmix / without bombs (one run each, paired): req/s {mix.rps / base.rps:.2f}x, valid p99 "
            f"{mix.p99_ms / base.p99_ms:.2f}x, drain {mix.drain_s:.2f} s vs {base.drain_s:.2f} s, store peak "
            f"{mix.store_peak_mb / base.store_peak_mb:.2f}x, proxy peak {mix.proxy_peak_mb / base.proxy_peak_mb:.2f}x"
        )
    return healthy


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=8000, help="valid clickstream POSTs in the mix (default 8000)")
    parser.add_argument("--bombs", type=int, default=80, help="compression bombs spread among them (default 80)")
    parser.add_argument("--connections", type=int, default=20, help="keep-alive connections (default 20)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 400 POSTs and 10 bombs")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds the load of one run may take")
    parser.add_argument("--drain-timeout", type=float, default=300.0, help="seconds the store may take to drain")
    parser.add_argument("--stall", type=float, default=60.0, help="give up draining after this long without progress")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run without bombs")
    if "--quick" in (sys.argv[1:] if argv is None else argv):
        parser.set_defaults(posts=400, bombs=10)  # figures given on the command line still win
    args = parser.parse_args(argv)
    if args.posts < 1 or args.bombs < 0 or args.connections < 1:
        parser.error("--posts and --connections must be at least 1, --bombs at least 0")
    return args


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # so that every `finally` stops its child processes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    print(
        f"bomb mix: {args.posts:,} valid POSTs + {args.bombs} bombs over {args.connections} connections, "
        f"started {time.strftime('%Y-%m-%d %H:%M:%S')}"
    )
    started = time.monotonic()
    bodies = bomb_bodies() if args.bombs else {}
    sizes = ", ".join(f"{name} {len(body):,} B" for name, (_, body) in bodies.items())
    print(f"bombs built in {time.monotonic() - started:.1f} s (300 MiB of zeros each): {sizes}")
    upstream: Upstream | None = None
    reports = []
    try:
        upstream = Upstream.start(lifetime=args.timeout * 3 + 600)
        with tempfile.TemporaryDirectory(prefix="clickwatch-bombs-") as tmp:
            if not args.no_baseline:
                plain = build_requests(upstream.port, args.posts + args.bombs, 0, {})
                reports.append(run("no bombs", args, upstream, plain, Path(tmp)))
            mix = build_requests(upstream.port, args.posts, args.bombs, bodies)
            reports.append(run("bomb mix", args, upstream, mix, Path(tmp)))
    except (BenchError, pytest.fail.Exception) as exc:  # the rig reports a failed start as a test failure
        print(f"benchmark could not run: {exc}", file=sys.stderr)
        return EXIT_FATAL
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_FATAL
    finally:
        if upstream is not None:
            upstream.stop()
    return 0 if print_report(reports) else EXIT_LOST


if __name__ == "__main__":
    sys.exit(main())
