"""Throughput, latency, loss and memory of the clickwatch proxy against bare mitmdump, on loopback.

Run from the repository root:

    .venv/bin/python bench/capture_bench.py            # the issue's numbers (a few minutes)
    .venv/bin/python bench/capture_bench.py --quick    # smoke run (under a minute)

Three kinds of process: this one (the load generator: raw asyncio keep-alive connections), a minimal asyncio
HTTP/1.1 upstream in a process of its own, and the proxies under test (`mitmdump` subprocesses). Everything
listens on 127.0.0.1 only and stops by itself. See bench/README.md for what is measured and how.

It prints figures; it is not a test. Exit code 0 means the measurement ran, even when a target is missed;
1 means the load generator saw errors or unexpected statuses, a proxy logged errors or did not stop cleanly,
or (with --live) the clickwatch sources changed during the run; 2 means the run could not be made (a proxy
or the upstream did not start, a load batch did not finish in time).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import functools
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
ADDON = REPO / "addon" / "capture.py"
HOST = "127.0.0.1"

CLICKSTREAM_PATH = "/edge/clickstreamEvents"
PAGE_PATH = "/product/123"
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
# The anonymous-consents cookie a Spartacus storefront sends on every page once the visitor has decided.
CONSENT_COOKIE = (
    "anonymous-consents=%5B%7B%22templateCode%22%3A%22PROFILE%22%2C%22templateVersion%22%3A1%2C"
    "%22consentState%22%3A%22GIVEN%22%7D%5D"
)
EVENT_BODY = (
    b'{"productSku":"SKU-%06d","productName":"Bench product %d","productCategory":"bench",'
    b'"productCategoryName":"Bench","productPrice":19.99,"productCurrency":"EUR","timestamp":%d}'
)

# The control proxy of `--control`: mitmdump with a script defining every hook clickwatch's addon defines, each
# returning at once (the same script bench/hook_bench.py dispatches to).
CONTROL = "script"
EMPTY_ADDON = (
    '"""Every hook clickwatch defines, each returning at once: what mitmproxy\'s dispatch to an addon costs."""\n\n\n'
    "class Empty:\n"
    + "".join(
        f"    def {name}(self, *args):\n        return None\n\n"
        for name in (
            "load",
            "configure",
            "running",
            "done",
            "http_connect",
            "next_layer",
            "client_disconnected",
            "error",
            "requestheaders",
            "request",
            "responseheaders",
            "response",
        )
    )
    + "\naddons = [Empty()]\n"
)

TARGET_TRACKING_RATIO = 0.93
TARGET_STOREFRONT_RATIO = 0.97
TARGET_RSS_GROWTH_MB = 20.0
# Above this much CPU used by other processes during a measured batch, the figures are flagged as skewed.
FOREIGN_LOAD_WARN_CPUS = 0.10
SOAK_SAMPLES = 9  # VmRSS samples after the soak's warm-up, one per equal share of the rest

CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1

EXIT_ERRORS = 1
EXIT_FATAL = 2

# The packages a clickwatch proxy may import. mitmdump reloads an edited -s script (but not what it imports), so
# an edit during a run would mix versions or stop capture. By default the proxies run a copy of these taken at
# the start; with --live they run the repository's files and any change during the run is reported as an error.
PACKAGES = ("addon", "cli", "core", "dashboard", "store")


class BenchError(Exception):
    """The run cannot go on: a process did not start, a phase did not finish in time."""


def source_snapshot(root: Path = REPO) -> dict[str, str]:
    """sha256 of each clickwatch source file under `root`, by relative path."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for package in PACKAGES
        for path in sorted((root / package).rglob("*.py"))
    }


def snapshot_id(snapshot: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(snapshot, sort_keys=True).encode()).hexdigest()[:12]


def source_changes(before: dict[str, str]) -> list[str]:
    """Files changed, added or removed since `before`, each with its modification time."""
    after = source_snapshot()
    changed = []
    for name in sorted(before.keys() | after.keys()):
        if before.get(name) != after.get(name):
            path = REPO / name
            when = time.strftime("%H:%M:%S", time.localtime(path.stat().st_mtime)) if path.exists() else "removed"
            changed.append(f"{name} ({when})")
    return changed


def proxy_env(python_path: Path | None) -> dict[str, str]:
    """The proxies' environment: no proxy variables, and the source copy first on the import path."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    if python_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(python_path), env.get("PYTHONPATH")]))
    return env


def copy_sources(dest: Path) -> Path:
    """Copy the clickwatch packages to `dest`, check that Python imports them from there; the addon's path."""
    namespace = dest / "clickwatch"
    namespace.mkdir(parents=True)
    shutil.copy2(REPO / "clickwatch" / "__init__.py", namespace / "__init__.py")
    for package in PACKAGES:
        if (REPO / package).is_dir():
            shutil.copytree(REPO / package, namespace / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    check = subprocess.run(
        [
            sys.executable,
            "-c",
            "import clickwatch.core as c, clickwatch.store as s; print(c.__file__); print(s.__file__)",
        ],
        env=proxy_env(dest),
        cwd=dest.parent,  # where the proxies run: not the repository, which would come first on the path
        capture_output=True,
        text=True,
        timeout=60,
    )
    files = check.stdout.split()
    if check.returncode != 0 or len(files) != 2 or not all(Path(f).is_relative_to(dest) for f in files):
        raise BenchError(f"the source copy in {dest} is not what Python imports: {check.stdout}{check.stderr}")
    return namespace / "addon" / "capture.py"


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when the benchmark process dies, so nothing outlives it."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _proxy_child_setup(cpus: frozenset[int] | None) -> None:
    """Runs in the proxy's process before exec: tie it to the benchmark's life and, with --pin, to its CPUs."""
    _die_with_parent()
    if cpus:
        os.sched_setaffinity(0, cpus)


# --- upstream: a minimal HTTP/1.1 keep-alive server, run in its own process ----------------------------------------

_PAGE = (
    b"<!doctype html><html><head><title>Bench product 123</title></head><body><main><h1>Bench product 123</h1>"
    b"<p>A product page of the clickwatch benchmark storefront.</p><button>Add to cart</button></main></body></html>"
)
_CREATED = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
_OK_PAGE = b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: %d\r\n\r\n%s" % (
    len(_PAGE),
    _PAGE,
)
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


class _UpstreamProtocol(asyncio.Protocol):
    """Answers clickstream POSTs with 201 and page GETs with 200; anything else with 404. Keep-alive only."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while (end := buffer.find(b"\r\n\r\n")) >= 0:
            head = bytes(buffer[:end])
            length = CONTENT_LENGTH.search(head)
            total = end + 4 + (int(length.group(1)) if length else 0)
            if len(buffer) < total:
                return
            del buffer[:total]
            assert self.transport is not None
            self.transport.write(_answer(head))


def _answer(head: bytes) -> bytes:
    method, path, _ = head.split(b" ", 2)
    if method == b"POST" and path.startswith(CLICKSTREAM_PATH.encode()):
        return _CREATED
    if method == b"GET":
        return _OK_PAGE
    return _NOT_FOUND


def _upstream_main(conn: Connection, lifetime: float) -> None:
    """Child process: listen on an ephemeral loopback port, report it, serve until terminated or `lifetime` ends."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the terminal is the parent's to handle

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_UpstreamProtocol, HOST, 0, backlog=512)
        conn.send(server.sockets[0].getsockname()[1])
        conn.close()
        async with server:
            await asyncio.sleep(lifetime)

    asyncio.run(serve())


@dataclass
class Upstream:
    process: multiprocessing.process.BaseProcess
    port: int

    @classmethod
    def start(cls, lifetime: float) -> Upstream:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe(duplex=False)
        process = context.Process(target=_upstream_main, args=(child, lifetime), name="bench-upstream", daemon=True)
        process.start()
        child.close()
        try:
            if not parent.poll(30):
                raise EOFError
            port = int(parent.recv())
        except EOFError:
            process.terminate()
            raise BenchError("the upstream server did not report its port within 30 s") from None
        return cls(process, port)

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


# --- load generator: raw asyncio keep-alive connections to the proxy ------------------------------------------------

RequestBuilder = Callable[[], bytes]
# Every event body of a run is different: the same body twice from one visitor is a duplicate clickwatch reports.
_event_numbers = itertools.count(1)


def tracking_builder(upstream_port: int, connection: int) -> RequestBuilder:
    """Absolute-form clickstream POSTs as a browser behind the proxy sends them; one visitor per connection."""
    head = (
        f"POST http://{HOST}:{upstream_port}{CLICKSTREAM_PATH} HTTP/1.1\r\n"
        f"Host: {HOST}:{upstream_port}\r\n"
        f"User-Agent: {USER_AGENT} bench/{connection}\r\n"
        "Accept: */*\r\n"
        "Content-Type: application/json\r\n"
        "hybris-schema: context/commerce/ProductView\r\n"
        f"consent-reference: {uuid.uuid4()}\r\n"
    ).encode()

    def build() -> bytes:
        number = next(_event_numbers)
        body = EVENT_BODY % (number, number % 997, int(time.time() * 1000))
        return b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body)

    return build


def storefront_builder(upstream_port: int, connection: int) -> RequestBuilder:
    """Absolute-form page GETs carrying the consent cookie: ordinary traffic the proxy must pass, not store."""
    request = (
        f"GET http://{HOST}:{upstream_port}{PAGE_PATH} HTTP/1.1\r\n"
        f"Host: {HOST}:{upstream_port}\r\n"
        f"User-Agent: {USER_AGENT} bench/{connection}\r\n"
        "Accept: text/html\r\n"
        "Accept-Language: en-GB,en;q=0.8\r\n"
        f"Cookie: {CONSENT_COOKIE}\r\n"
        "\r\n"
    ).encode()
    return lambda: request


@dataclass
class LoadResult:
    """What the load generator saw for one batch of requests."""

    requests: int
    elapsed: float
    latencies: list[float]
    statuses: Counter[int]
    errors: list[str]

    @property
    def answered(self) -> int:
        return len(self.latencies)

    @property
    def rps(self) -> float:
        return self.answered / self.elapsed if self.elapsed > 0 else 0.0


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


async def _drive(
    proxy_port: int, upstream_port: int, builder: Callable[[int, int], RequestBuilder], total: int, concurrency: int
) -> LoadResult:
    connections = await asyncio.gather(
        *(asyncio.open_connection(HOST, proxy_port) for _ in range(min(concurrency, total)))
    )
    remaining: Iterator[int] = iter(range(total))  # shared: each connection takes the next request to send
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors: list[str] = []
    clock = time.perf_counter

    async def worker(number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        build = builder(upstream_port, number)
        try:
            for _ in remaining:
                payload = build()
                started = clock()
                writer.write(payload)
                head = await reader.readuntil(b"\r\n\r\n")
                length = CONTENT_LENGTH.search(head)
                if length:
                    await reader.readexactly(int(length.group(1)))
                latencies.append(clock() - started)
                statuses[int(head.split(b" ", 2)[1])] += 1
        except (OSError, EOFError, asyncio.LimitOverrunError, ValueError, IndexError) as exc:
            errors.append(f"connection {number}: {exc!r}")
        finally:
            writer.close()

    started = clock()
    await asyncio.gather(*(worker(n, reader, writer) for n, (reader, writer) in enumerate(connections)))
    elapsed = clock() - started
    for _, writer in connections:
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return LoadResult(total, elapsed, latencies, statuses, errors)


def run_load(
    proxy_port: int,
    upstream_port: int,
    builder: Callable[[int, int], RequestBuilder],
    total: int,
    concurrency: int,
    timeout: float,
) -> LoadResult:
    """Send `total` requests over `concurrency` keep-alive connections; bounded by `timeout` seconds."""

    async def bounded() -> LoadResult:
        async with asyncio.timeout(timeout):
            return await _drive(proxy_port, upstream_port, builder, total, concurrency)

    try:
        return asyncio.run(bounded())
    except TimeoutError:
        raise BenchError(f"{total} requests did not finish within {timeout:.0f} s") from None
    except OSError as exc:
        raise BenchError(f"cannot connect to the proxy on port {proxy_port}: {exc}") from None


# --- the proxies under test ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def proc_status_kb(pid: int, field_name: str) -> int:
    """A 'kB' line of /proc/<pid>/status (VmRSS, VmHWM); 0 when the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def thread_cpu_ticks(pid: int) -> dict[int, int]:
    """user+system clock ticks used so far by each thread of a process."""
    ticks: dict[int, int] = {}
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ticks[int(tid)] = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks


def child_pids(pid: int) -> list[int]:
    """The child processes of a process (clickwatch's store process), from /proc/<pid>/task/*/children."""
    children: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children") as listed:
                children += [int(child) for child in listed.read().split()]
    return children


# Key under which Proxy.cpu() reports the ticks of the proxy's child processes (not a thread id).
CHILDREN = -1


@dataclass
class CpuUse:
    """CPU seconds a proxy used during a phase: its event-loop (main) thread, its other threads, its children."""

    loop: float
    other: float
    children: float = 0.0

    @classmethod
    def between(cls, pid: int, before: dict[int, int], after: dict[int, int]) -> CpuUse:
        loop = (after.get(pid, 0) - before.get(pid, 0)) / CLOCK_TICKS
        other = sum(t - before.get(tid, 0) for tid, t in after.items() if tid not in (pid, CHILDREN)) / CLOCK_TICKS
        children = (after.get(CHILDREN, 0) - before.get(CHILDREN, 0)) / CLOCK_TICKS
        return cls(loop, other, children)


@dataclass
class Proxy:
    """A mitmdump subprocess: bare, or with the clickwatch addon writing to `db`."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    db: Path | None
    received: Counter[int] = field(default_factory=Counter)
    exit_code: int | None = None

    @classmethod
    def start(
        cls,
        name: str,
        args: argparse.Namespace,
        workdir: Path,
        db: Path | None,
        timeout: float = 30.0,
        script: Path | None = None,
    ) -> Proxy:
        port = free_port()
        command = [
            args.mitmdump,
            "--listen-host",
            HOST,
            "--listen-port",
            str(port),
            "-q",
            "--set",
            f"confdir={workdir / 'mitmproxy-conf'}",
        ]
        if db is not None:
            command += ["-s", str(args.addon), "--set", f"clickwatch_db={db}"]
            for option in args.set:
                command += ["--set", option]
        elif script is not None:
            command += ["-s", str(script)]
        log_path = workdir / f"{name}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                command,
                env=proxy_env(args.python_path),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                preexec_fn=functools.partial(_proxy_child_setup, args.proxy_cpus),
            )
        proxy = cls(name, port, process, log_path, db)
        proxy._wait_listening(timeout)
        return proxy

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def clickwatch(self) -> bool:
        return self.db is not None

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"{self.name} proxy exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise BenchError(f"{self.name} proxy did not listen on {HOST}:{self.port} within {timeout:.0f} s")

    def wait_capturing(self, upstream_port: int, timeout: float = 20.0) -> None:
        """Send one clickstream POST and wait until its row is in the store: the addon is loaded and writing."""
        assert self.db is not None
        result = self.load(upstream_port, tracking_builder, 1, 1, timeout)
        if result.errors or result.statuses[201] != 1:
            raise BenchError(f"{self.name}: probe POST failed ({dict(result.statuses)}, {result.errors})")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(sqlite3.Error):
                if self.db.exists() and count_rows(self.db).delivered_clickstream >= 1:
                    return
            if self.process.poll() is not None:
                raise BenchError(f"{self.name} proxy exited with {self.process.returncode}:\n{self.log_tail()}")
            time.sleep(0.1)
        raise BenchError(f"{self.name}: the probe delivery was not stored within {timeout:.0f} s:\n{self.log_tail()}")

    def load(
        self,
        upstream_port: int,
        builder: Callable[[int, int], RequestBuilder],
        total: int,
        concurrency: int,
        timeout: float,
    ) -> LoadResult:
        result = run_load(self.port, upstream_port, builder, total, concurrency, timeout)
        self.received.update(result.statuses)
        return result

    def rss_mb(self) -> float:
        return proc_status_kb(self.pid, "VmRSS") / 1024

    def peak_rss_mb(self) -> float:
        return proc_status_kb(self.pid, "VmHWM") / 1024

    def cpu(self) -> dict[int, int]:
        """Ticks per thread of the proxy, and of its child processes together under CHILDREN."""
        ticks = thread_cpu_ticks(self.pid)
        ticks[CHILDREN] = sum(process_ticks(child) for child in child_pids(self.pid))
        return ticks

    def children(self) -> list[int]:
        """Child processes: with the clickwatch addon, its store process (unless it runs in a thread)."""
        return child_pids(self.pid)

    def store_rss_mb(self) -> float:
        return sum(proc_status_kb(child, "VmRSS") for child in self.children()) / 1024

    def store_peak_rss_mb(self) -> float:
        return sum(proc_status_kb(child, "VmHWM") for child in self.children()) / 1024

    def stop(self, timeout: float = 30.0) -> None:
        """SIGINT, as Ctrl-C would: the clickwatch addon writes what it still holds before the process exits."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.exit_code = self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def log_lines(self) -> list[str]:
        try:
            return self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_lines()[-lines:])


def process_ticks(pid: int) -> int:
    """user+system clock ticks used so far by a whole process (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def busy_ticks() -> int:
    """Clock ticks all CPUs of the machine spent not idle (steal included: the hypervisor took them)."""
    with open("/proc/stat") as stat:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in stat.readline().split()[1:9])
    return user + nice + system + irq + softirq + steal


class ForeignLoad:
    """CPU used by processes other than the benchmark's own during a phase: a busy machine skews the figures."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = [os.getpid(), *pids]
        self.start()

    def start(self) -> None:
        self._busy, self._ours, self._at = busy_ticks(), self._our_ticks(), time.monotonic()

    def _our_ticks(self) -> int:
        return sum(process_ticks(pid) for pid in self.pids)

    def cpus(self) -> float:
        """CPUs' worth (1.0 = one whole CPU) of foreign work since start()."""
        foreign = (busy_ticks() - self._busy) - (self._our_ticks() - self._ours)
        return max(0.0, foreign / CLOCK_TICKS / max(1e-9, time.monotonic() - self._at))


def settle(proxies: list[Proxy], timeout: float = 15.0) -> float:
    """Wait until no proxy uses CPU (the clickwatch writer has drained); seconds waited."""
    started = time.monotonic()
    previous = {p.pid: sum(p.cpu().values()) for p in proxies}
    while time.monotonic() - started < timeout:
        time.sleep(0.1)
        current = {p.pid: sum(p.cpu().values()) for p in proxies}
        if all(current[pid] - previous[pid] <= 1 for pid in current):
            return time.monotonic() - started
        previous = current
    return time.monotonic() - started


# --- the store ----------------------------------------------------------------------------------------------------


OTHER_TABLES = ("visitors", "consent_signals", "findings")  # counted when the schema has them


@dataclass
class StoreCount:
    by_kind_verdict: dict[tuple[str, str], int]
    page_rows: int
    other_tables: dict[str, int] = field(default_factory=dict)

    @property
    def delivered_clickstream(self) -> int:
        return self.by_kind_verdict.get(("clickstream", "delivered"), 0)


def count_rows(db: Path) -> StoreCount:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
        grouped = conn.execute("SELECT kind, verdict, count(*) FROM deliveries GROUP BY kind, verdict").fetchall()
        pages = conn.execute(
            "SELECT count(*) FROM deliveries WHERE path = ? OR url LIKE ?", (PAGE_PATH, f"%{PAGE_PATH}")
        ).fetchone()[0]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        others = {t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in OTHER_TABLES if t in tables}
    return StoreCount({(kind, verdict): n for kind, verdict, n in grouped}, int(pages), others)


# --- the phases ---------------------------------------------------------------------------------------------------


@dataclass
class Round:
    number: int
    proxy: str
    result: LoadResult
    cpu: CpuUse
    idle_after: float
    foreign_cpus: float


@dataclass
class ScenarioReport:
    key: str
    target_ratio: float
    expected_status: int
    rounds: list[Round]
    bare_peak_mb: float
    cw_peak_mb: float
    store: StoreCount
    cw_received: Counter[int]
    errors: list[str]
    store_peak_mb: float = 0.0  # the clickwatch store process, beside the proxy

    def of(self, proxy: str) -> list[Round]:
        return [r for r in self.rounds if r.proxy == proxy]

    def median_rps(self, proxy: str) -> float:
        return statistics.median(r.result.rps for r in self.of(proxy))

    def latencies(self, proxy: str) -> list[float]:
        return [lat for r in self.of(proxy) for lat in r.result.latencies]

    def cpu_ms_per_request(self, proxy: str) -> tuple[float, float, float]:
        rounds = self.of(proxy)
        answered = sum(r.result.answered for r in rounds) or 1
        return (
            sum(r.cpu.loop for r in rounds) * 1000 / answered,
            sum(r.cpu.other for r in rounds) * 1000 / answered,
            sum(r.cpu.children for r in rounds) * 1000 / answered,
        )

    @property
    def ratio(self) -> float:
        bare = self.median_rps("bare")
        return self.median_rps("clickwatch") / bare if bare else 0.0

    @property
    def paired_ratios(self) -> list[float]:
        """clickwatch / bare req/s of each round: the two ran back to back, so a slow spell hits the pair alike."""
        return self.pairs("clickwatch", "bare")

    def pairs(self, proxy: str, base: str) -> list[float]:
        """`proxy` / `base` req/s of each round in which both ran."""
        by_round = {r.number: r.result.rps for r in self.of(base)}
        return [r.result.rps / by_round[r.number] for r in self.of(proxy) if by_round.get(r.number)]

    @property
    def controlled(self) -> bool:
        """Whether the run had the control proxy (`--control`: a script whose hooks return at once)."""
        return bool(self.of(CONTROL))

    @property
    def paired_ratio(self) -> float:
        """The median of the paired ratios: what the targets are judged on."""
        return statistics.median(self.paired_ratios) if self.paired_ratios else 0.0

    @property
    def cpu_ratio(self) -> float:
        """Bare mitmdump's event-loop CPU per request over clickwatch's: what the proxy's own thread pays, which
        other processes on the machine do not move (they move req/s)."""
        cw = self.cpu_ms_per_request("clickwatch")[0]
        return self.cpu_ms_per_request("bare")[0] / cw if cw else 0.0

    @property
    def lost(self) -> int:
        """201s the clients received whose delivery is not stored as delivered."""
        return self.cw_received[201] - self.store.delivered_clickstream


def check_result(where: str, result: LoadResult, expected_status: int) -> list[str]:
    problems = [f"{where}: {e}" for e in result.errors[:5]]
    if len(result.errors) > 5:
        problems.append(f"{where}: ... {len(result.errors) - 5} more connection errors")
    unexpected = {s: n for s, n in result.statuses.items() if s != expected_status}
    if unexpected:
        problems.append(f"{where}: unexpected statuses {unexpected}")
    if result.answered != result.requests:
        problems.append(f"{where}: {result.requests - result.answered} of {result.requests} requests got no answer")
    return problems


def describe(result: LoadResult) -> str:
    return (
        f"{result.rps:8.1f} req/s  p50 {percentile(result.latencies, 50) * 1000:6.2f} ms  "
        f"p99 {percentile(result.latencies, 99) * 1000:6.2f} ms"
    )


def run_scenario(
    key: str,
    builder: Callable[[int, int], RequestBuilder],
    expected_status: int,
    target_ratio: float,
    args: argparse.Namespace,
    upstream: Upstream,
    workdir: Path,
) -> ScenarioReport:
    print(
        f"\n== {key}: {args.requests:,} requests x {args.rounds} rounds per proxy, {args.concurrency} connections"
        f" (started {time.strftime('%H:%M:%S')})"
    )
    bare = Proxy.start(f"{key}-bare", args, workdir, None)
    cw: Proxy | None = None
    control: Proxy | None = None
    errors: list[str] = []
    rounds: list[Round] = []
    try:
        cw = Proxy.start(f"{key}-clickwatch", args, workdir, workdir / f"{key}.db")
        cw.wait_capturing(upstream.port)
        proxies = {"bare": bare, "clickwatch": cw}
        if args.control:
            empty = workdir / "empty_addon.py"
            empty.write_text(EMPTY_ADDON)
            control = proxies[CONTROL] = Proxy.start(f"{key}-{CONTROL}", args, workdir, None, script=empty)
        foreign = ForeignLoad([upstream.process.pid or 0, *(p.pid for p in proxies.values()), *cw.children()])
        for name, proxy in proxies.items():
            warm = proxy.load(upstream.port, builder, args.warmup, args.concurrency, args.timeout)
            errors += check_result(f"{key} warm-up {name}", warm, expected_status)
        for number in range(args.rounds):
            # Alternate which proxy goes first (ABBA...) so drift on a shared machine hits both alike.
            order = list(proxies) if number % 2 == 0 else list(reversed(proxies))
            for name in order:
                proxy = proxies[name]
                settle(list(proxies.values()))
                before = proxy.cpu()
                foreign.start()
                result = proxy.load(upstream.port, builder, args.requests, args.concurrency, args.timeout)
                foreign_cpus = foreign.cpus()
                after = proxy.cpu()
                idle_after = settle([proxy])
                cpu = CpuUse.between(proxy.pid, before, after)
                rounds.append(Round(number + 1, name, result, cpu, idle_after, foreign_cpus))
                errors += check_result(f"{key} round {number + 1} {name}", result, expected_status)
                per_request = 1000 / max(1, result.answered)
                print(
                    f"[{key}] round {number + 1}/{args.rounds}  {name:<10} {describe(result)}  "
                    f"proxy CPU {cpu.loop * per_request:.3f}+{cpu.other * per_request:.3f}"
                    f"+{cpu.children * per_request:.3f} ms/req (loop+threads+store process)  "
                    f"idle after {idle_after:.1f} s  other processes {foreign_cpus:.2f} CPU",
                    flush=True,
                )
        bare_peak, cw_peak, store_peak = bare.peak_rss_mb(), cw.peak_rss_mb(), cw.store_peak_rss_mb()
    finally:
        bare.stop()
        if control is not None:
            control.stop()
        if cw is not None:
            cw.stop(timeout=60)
    errors += proxy_problems([bare, cw] if control is None else [bare, cw, control])
    assert cw.db is not None
    store = count_rows(cw.db)
    return ScenarioReport(
        key, target_ratio, expected_status, rounds, bare_peak, cw_peak, store, cw.received.copy(), errors, store_peak
    )


def proxy_problems(proxies: list[Proxy]) -> list[str]:
    problems = []
    for proxy in proxies:
        if proxy.exit_code != 0:
            problems.append(f"{proxy.name} proxy exited with {proxy.exit_code} after SIGINT")
        lines = [line for line in proxy.log_lines() if line.strip()]
        if lines:
            shown = "\n    ".join(lines[:15])
            problems.append(f"{proxy.name} proxy logged {len(lines)} line(s) at error level:\n    {shown}")
    return problems


@dataclass
class SoakReport:
    deliveries: int
    warmup: int
    rss_idle_mb: float
    rss_base_mb: float
    rss_end_mb: float
    peak_mb: float
    samples: list[tuple[int, float, float]]  # deliveries so far, req/s of the chunk, VmRSS MB after it
    foreign_cpus: list[float]  # CPU used by other processes during each chunk
    store: StoreCount
    received: Counter[int]
    latencies_ms: tuple[float, float]
    errors: list[str]

    @property
    def growth_mb(self) -> float:
        return self.rss_end_mb - self.rss_base_mb

    @property
    def lost(self) -> int:
        return self.received[201] - self.store.delivered_clickstream


def split(total: int, parts: int) -> list[int]:
    """`total` as `parts` nearly equal positive sizes (fewer when total is small)."""
    base, extra = divmod(total, parts)
    return [size for i in range(parts) if (size := base + (1 if i < extra else 0)) > 0]


def run_soak(args: argparse.Namespace, upstream: Upstream, workdir: Path) -> SoakReport:
    warmup = min(args.soak_warmup, args.soak)
    print(
        f"\n== soak: {args.soak:,} clickstream deliveries through clickwatch; "
        f"VmRSS growth measured after the first {warmup:,} (started {time.strftime('%H:%M:%S')})"
    )
    cw = Proxy.start("soak-clickwatch", args, workdir, workdir / "soak.db")
    errors: list[str] = []
    samples: list[tuple[int, float, float]] = []
    latencies: list[float] = []
    foreign_cpus: list[float] = []
    try:
        cw.wait_capturing(upstream.port)
        foreign = ForeignLoad([upstream.process.pid or 0, cw.pid, *cw.children()])
        settle([cw])
        # The proxy and its store process together: what clickwatch costs in memory.
        rss_idle = cw.rss_mb() + cw.store_rss_mb()
        done = 0
        rss_base = rss_idle
        for size in [warmup, *split(args.soak - warmup, SOAK_SAMPLES)]:
            if size <= 0:
                continue
            foreign.start()
            result = cw.load(upstream.port, tracking_builder, size, args.concurrency, args.timeout)
            foreign_cpus.append(foreign.cpus())
            done += size
            errors += check_result(f"soak at {done:,}", result, 201)
            latencies += result.latencies
            settle([cw])
            proxy_rss, store_rss = cw.rss_mb(), cw.store_rss_mb()
            rss = proxy_rss + store_rss
            samples.append((done, result.rps, rss))
            if done == warmup:
                rss_base = rss
            print(
                f"[soak] {done:>7,} deliveries  {describe(result)}  VmRSS {rss:7.1f} MB "
                f"(proxy {proxy_rss:.1f} + store process {store_rss:.1f})  "
                f"other processes {foreign_cpus[-1]:.2f} CPU",
                flush=True,
            )
        rss_end, peak = cw.rss_mb() + cw.store_rss_mb(), cw.peak_rss_mb() + cw.store_peak_rss_mb()
    finally:
        cw.stop(timeout=60)
    errors += proxy_problems([cw])
    assert cw.db is not None
    return SoakReport(
        deliveries=args.soak,
        warmup=warmup,
        rss_idle_mb=rss_idle,
        rss_base_mb=rss_base,
        rss_end_mb=rss_end,
        peak_mb=peak,
        samples=samples,
        foreign_cpus=foreign_cpus,
        store=count_rows(cw.db),
        received=cw.received.copy(),
        latencies_ms=(percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000),
        errors=errors,
    )


# --- report -------------------------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def print_report(scenarios: list[ScenarioReport], soak: SoakReport | None, args: argparse.Namespace) -> None:
    print(
        f"\n== results ({args.requests:,} requests x {args.rounds} rounds per proxy, {args.concurrency} connections; "
        "req/s = median of rounds, ratio = median of the rounds' paired ratios, latency over all rounds)\n"
    )
    header = (
        f"{'scenario':<11} {'bare req/s':>10} {'cw req/s':>9} {'ratio':>6} {'target':>7}  "
        f"{'bare p50/p99 ms':>15}  {'cw p50/p99 ms':>15}  {'rows stored vs 2xx':>22}  "
        f"{'peak RSS MB bare/cw':>19}  result"
    )
    print(header)
    print("-" * len(header))
    for s in scenarios:
        bare_lat, cw_lat = s.latencies("bare"), s.latencies("clickwatch")
        if s.key == "tracking":
            rows = f"{s.store.delivered_clickstream:,} / {s.cw_received[201]:,} 201s"
        else:
            rows = f"{s.store.page_rows:,} / {s.cw_received[200]:,} 200s"
        print(
            f"{s.key:<11} {s.median_rps('bare'):>10.1f} {s.median_rps('clickwatch'):>9.1f} {s.paired_ratio:>6.3f} "
            f"{'>=' + format(s.target_ratio, '.2f'):>7}  "
            f"{percentile(bare_lat, 50) * 1000:>7.2f}/{percentile(bare_lat, 99) * 1000:<7.2f}  "
            f"{percentile(cw_lat, 50) * 1000:>7.2f}/{percentile(cw_lat, 99) * 1000:<7.2f}  "
            f"{rows:>22}  {s.bare_peak_mb:>9.1f}/{s.cw_peak_mb:<9.1f}  {verdict(s.paired_ratio >= s.target_ratio)}"
        )
    if soak is not None:
        rows = f"{soak.store.delivered_clickstream:,} / {soak.received[201]:,} 201s"
        soak_rps = statistics.median(rate for _, rate, _ in soak.samples) if soak.samples else 0.0
        print(
            f"{'soak':<11} {'':>10} {soak_rps:>9.1f} {'':>6} {'':>7}  {'':>15}  "
            f"{soak.latencies_ms[0]:>7.2f}/{soak.latencies_ms[1]:<7.2f}  {rows:>22}  "
            f"{'':>9}/{soak.peak_mb:<9.1f}  {verdict(soak.growth_mb < TARGET_RSS_GROWTH_MB)}"
        )

    print(
        "\nproxy CPU per request (ms, event-loop thread + other threads + store process; medians do not apply, "
        "sums over rounds):"
    )
    for s in scenarios:
        for name in ("bare", CONTROL, "clickwatch") if s.controlled else ("bare", "clickwatch"):
            loop, other, children = s.cpu_ms_per_request(name)
            print(f"  {s.key:<11} {name:<10} {loop:.3f} + {other:.3f} + {children:.3f} = {loop + other + children:.3f}")
    if any(s.store_peak_mb for s in scenarios):
        print("\nclickwatch store process peak RSS (MB, beside the proxy's figure above):")
        for s in scenarios:
            print(f"  {s.key:<11} {s.store_peak_mb:.1f}")

    print("\nstore contents (deliveries by kind/verdict; rows of the other tables):")
    for s in scenarios:
        print(f"  {s.key:<11} {_kinds(s.store)}")
    if soak is not None:
        print(f"  {'soak':<11} {_kinds(soak.store)}")

    print("\npaired ratios (clickwatch / bare req/s, round by round), ratio of median req/s, event-loop CPU ratio:")
    for s in scenarios:
        pairs = " ".join(f"{r:.3f}" for r in s.paired_ratios)
        print(f"  {s.key:<11} {pairs}  | medians {s.ratio:.3f}  | CPU bare/cw {s.cpu_ratio:.3f}")
    for s in (s for s in scenarios if s.controlled):
        # What any script addon costs (mitmproxy's dispatch to it) against what clickwatch's own hooks add to that.
        script_ratios, own_ratios = s.pairs(CONTROL, "bare"), s.pairs("clickwatch", CONTROL)
        bare_cpu, script_cpu, cw_cpu = (s.cpu_ms_per_request(n)[0] for n in ("bare", CONTROL, "clickwatch"))
        print(
            f"  {s.key:<11} control: empty script / bare {' '.join(f'{r:.3f}' for r in script_ratios)}"
            f"  median {statistics.median(script_ratios):.3f}; clickwatch / empty script "
            f"{' '.join(f'{r:.3f}' for r in own_ratios)}  median {statistics.median(own_ratios):.3f}; event-loop ms "
            f"per request bare {bare_cpu:.3f}, empty script {script_cpu:.3f} (+{script_cpu - bare_cpu:.3f}), "
            f"clickwatch {cw_cpu:.3f} (+{cw_cpu - script_cpu:.3f} on top)"
        )

    print("\ntargets:")
    for s in scenarios:
        ok = s.paired_ratio >= s.target_ratio
        print(f"  {s.key + ' throughput ratio':<34} {s.paired_ratio:.3f} >= {s.target_ratio:.2f}  {verdict(ok)}")
    lost = {s.key: s.lost for s in scenarios}
    if soak is not None:
        lost["soak"] = soak.lost
    detail = ", ".join(f"{k} {v}" for k, v in lost.items())
    none_lost = not any(lost.values())
    print(f"  {'deliveries lost (201s not stored)':<34} {sum(lost.values())} ({detail})  {verdict(none_lost)}")
    storefront = [s for s in scenarios if s.key == "storefront"]
    if storefront:
        pages = storefront[0].store.page_rows
        print(f"  {'storefront pages stored':<34} {pages}  {verdict(pages == 0)}")
    if soak is not None:
        print(
            f"  {'RSS growth over soak':<34} {soak.growth_mb:+.1f} MB < {TARGET_RSS_GROWTH_MB:.0f} MB  "
            f"{verdict(soak.growth_mb < TARGET_RSS_GROWTH_MB)}  (VmRSS {soak.rss_base_mb:.1f} MB after "
            f"{soak.warmup:,} -> {soak.rss_end_mb:.1f} MB after {soak.deliveries:,}; idle at start "
            f"{soak.rss_idle_mb:.1f} MB, peak {soak.peak_mb:.1f} MB)"
        )

    print_machine_load(scenarios, soak)


def print_machine_load(scenarios: list[ScenarioReport], soak: SoakReport | None) -> None:
    """Say whether other processes competed for the CPUs while the figures were taken."""
    batches = [(f"{s.key} round {r.number} {r.proxy}", r.foreign_cpus) for s in scenarios for r in s.rounds]
    if soak is not None:
        batches += [
            (f"soak to {done:,}", cpus) for (done, _, _), cpus in zip(soak.samples, soak.foreign_cpus, strict=True)
        ]
    if not batches:
        return
    busy = [(name, cpus) for name, cpus in batches if cpus > FOREIGN_LOAD_WARN_CPUS]
    worst = max(cpus for _, cpus in batches)
    if not busy:
        print(f"\nmachine: other processes used at most {worst:.2f} CPU during any measured batch (quiet)")
        return
    listed = ", ".join(f"{name} {cpus:.2f}" for name, cpus in busy)
    print(
        f"\nWARNING: other processes used more than {FOREIGN_LOAD_WARN_CPUS:.2f} CPU during {len(busy)} of "
        f"{len(batches)} measured batches ({listed}); those figures are skewed, rerun on a quiet machine"
    )


def _kinds(store: StoreCount) -> str:
    deliveries = ", ".join(f"{k}/{v}: {n:,}" for (k, v), n in sorted(store.by_kind_verdict.items())) or "no rows"
    others = "".join(f"; {table} {n:,}" for table, n in store.other_tables.items())
    return f"deliveries {deliveries}; storefront page rows {store.page_rows}{others}"


def summary(scenarios: list[ScenarioReport], soak: SoakReport | None, args: argparse.Namespace) -> dict[str, Any]:
    """The figures as JSON, for keeping runs side by side (bench/results/ is git-ignored)."""
    out: dict[str, Any] = {
        "settings": {k: getattr(args, k) for k in ("requests", "concurrency", "rounds", "warmup", "soak", "pin")},
        "sources": args.sources_id,
        "scenarios": {},
    }
    for s in scenarios:
        out["scenarios"][s.key] = {
            "ratio": s.paired_ratio,
            "paired_ratios": s.paired_ratios,
            "ratio_of_medians": s.ratio,
            "cpu_ratio": s.cpu_ratio,
            "target_ratio": s.target_ratio,
            "control": {
                "paired_ratios_vs_bare": s.pairs(CONTROL, "bare"),
                "clickwatch_vs_control": s.pairs("clickwatch", CONTROL),
                "median_rps": s.median_rps(CONTROL),
                "cpu_loop_ms_per_request": s.cpu_ms_per_request(CONTROL)[0],
            }
            if s.controlled
            else None,
            "rounds": [
                {
                    "round": r.number,
                    "proxy": r.proxy,
                    "rps": r.result.rps,
                    "cpu_loop_s": r.cpu.loop,
                    "cpu_other_s": r.cpu.other,
                    "cpu_store_process_s": r.cpu.children,
                    "foreign_cpus": r.foreign_cpus,
                }
                for r in s.rounds
            ],
            **{
                name: {
                    "median_rps": s.median_rps(name),
                    "p50_ms": percentile(s.latencies(name), 50) * 1000,
                    "p99_ms": percentile(s.latencies(name), 99) * 1000,
                }
                for name in ("bare", "clickwatch")
            },
            "peak_rss_mb": {"bare": s.bare_peak_mb, "clickwatch": s.cw_peak_mb, "store_process": s.store_peak_mb},
            "rows": {f"{k}/{v}": n for (k, v), n in s.store.by_kind_verdict.items()},
            "page_rows": s.store.page_rows,
            "other_tables": s.store.other_tables,
            "statuses_received": dict(s.cw_received),
            "lost": s.lost,
        }
    if soak is not None:
        out["soak"] = {
            "deliveries": soak.deliveries,
            "rss_base_mb": soak.rss_base_mb,
            "rss_end_mb": soak.rss_end_mb,
            "growth_mb": soak.growth_mb,
            "peak_mb": soak.peak_mb,
            "samples": soak.samples,
            "foreign_cpus": soak.foreign_cpus,
            "lost": soak.lost,
        }
    return out


# --- main ---------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=5000, help="requests per measured round (default 5000)")
    parser.add_argument("--concurrency", type=int, default=20, help="keep-alive connections (default 20)")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds per proxy and scenario (default 3)")
    parser.add_argument("--warmup", type=int, default=1000, help="unmeasured requests per proxy first (default 1000)")
    parser.add_argument("--soak", type=int, default=50000, help="deliveries of the memory phase; 0 skips it")
    parser.add_argument(
        "--soak-warmup", type=int, default=5000, help="deliveries before the soak's RSS baseline (default 5000)"
    )
    parser.add_argument(
        "--scenario", choices=("tracking", "storefront", "both"), default="both", help="which load (default both)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 500 requests, 1 round, 3,000-delivery soak")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds any one load batch may take")
    parser.add_argument("--mitmdump", default=None, help="mitmdump executable (default: the one beside this Python)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (databases, proxy logs)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an option for the clickwatch proxy only, e.g. clickwatch_observer=false (repeatable)",
    )
    parser.add_argument(
        "--control",
        action="store_true",
        help="also measure mitmdump with a script whose hooks return at once, in the same rounds: what mitmproxy's "
        "dispatch to any addon costs, apart from clickwatch's own work",
    )
    parser.add_argument(
        "--live",
        action="store_true",
        help="load the addon from the repository itself, not from a copy taken at the start "
        "(an edit during the run then makes it fail)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="run the proxies on one CPU and the load generator and upstream on another: steadier figures, but "
        "the clickwatch writer thread no longer gets a CPU of its own",
    )
    if "--quick" in (sys.argv[1:] if argv is None else argv):
        # Smaller defaults; figures given on the command line still win.
        parser.set_defaults(requests=500, rounds=1, warmup=50, soak=3000, soak_warmup=500)
    args = parser.parse_args(argv)
    args.proxy_cpus = args.load_cpus = None
    if args.pin:
        allowed = sorted(os.sched_getaffinity(0))
        if len(allowed) < 2:
            parser.error("--pin needs at least 2 CPUs")
        args.load_cpus, args.proxy_cpus = frozenset(allowed[:1]), frozenset(allowed[1:2])
    if min(args.requests, args.concurrency, args.rounds) < 1 or min(args.warmup, args.soak, args.soak_warmup) < 0:
        parser.error("--requests, --concurrency and --rounds must be at least 1; the others at least 0")
    if args.mitmdump is None:
        args.mitmdump = shutil.which("mitmdump", path=str(Path(sys.executable).parent)) or shutil.which("mitmdump")
    if not args.mitmdump:
        parser.error("mitmdump not found; pass --mitmdump")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="clickwatch-bench-"))
    sources = source_snapshot()
    try:
        if args.live:
            args.addon, args.python_path = ADDON, None
            args.sources_id = snapshot_id(sources)
        else:
            args.python_path = workdir / "src"
            args.addon = copy_sources(args.python_path)
            args.sources_id = snapshot_id(source_snapshot(args.python_path / "clickwatch"))
    except (BenchError, OSError, subprocess.SubprocessError) as exc:
        print(f"benchmark could not run: {exc}", file=sys.stderr)
        shutil.rmtree(workdir, ignore_errors=True)
        return EXIT_FATAL
    if args.load_cpus:
        os.sched_setaffinity(0, args.load_cpus)  # the upstream process inherits it
        pinning = f"proxies on CPU {min(args.proxy_cpus)}, load generator and upstream on CPU {min(args.load_cpus)}"
    else:
        pinning = "no CPU pinning"
    print(
        f"clickwatch capture benchmark: {args.mitmdump}, addon {args.addon} "
        f"({'the repository' if args.live else 'a copy of the repository'}'s sources, {args.sources_id}), "
        f"work dir {workdir}, {os.cpu_count()} CPUs, {pinning}, started {time.strftime('%Y-%m-%d %H:%M:%S')}"
    )
    upstream: Upstream | None = None
    scenarios: list[ScenarioReport] = []
    soak: SoakReport | None = None
    try:
        upstream = Upstream.start(lifetime=max(3600.0, args.timeout * 20))
        print(f"upstream: {HOST}:{upstream.port} (pid {upstream.process.pid})")
        if args.scenario in ("tracking", "both"):
            scenarios.append(
                run_scenario("tracking", tracking_builder, 201, TARGET_TRACKING_RATIO, args, upstream, workdir)
            )
        if args.scenario in ("storefront", "both"):
            scenarios.append(
                run_scenario("storefront", storefront_builder, 200, TARGET_STOREFRONT_RATIO, args, upstream, workdir)
            )
        if args.soak > 0:
            soak = run_soak(args, upstream, workdir)
    except BenchError as exc:
        print(f"\nbenchmark could not run: {exc}", file=sys.stderr)
        return EXIT_FATAL
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_FATAL
    finally:
        if upstream is not None:
            upstream.stop()
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    print_report(scenarios, soak, args)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary(scenarios, soak, args), indent=2) + "\n")
        print(f"\nfigures written to {args.json}")
    errors = [e for s in scenarios for e in s.errors] + (soak.errors if soak else [])
    changed = source_changes(sources)
    if changed and args.live:
        errors.append(
            "clickwatch sources changed during the run, so the figures may mix versions "
            f"(proxies load them when they start): {', '.join(changed)}"
        )
    elif changed:
        print(
            f"\nnote: clickwatch sources changed in the repository during the run ({', '.join(changed)}); "
            "the proxies ran the copy taken at the start"
        )
    if errors:
        print("\nerrors (the figures above may not mean what they say):", file=sys.stderr)
        for error in errors:
            print(f"  {error}", file=sys.stderr)
        return EXIT_ERRORS
    return 0


if __name__ == "__main__":
    sys.exit(main())
