"""What live-page viewers cost the proxy: tracking POSTs per second with none and with 200 `/api/stream` viewers.

Run from the repository root:

    .venv/bin/python bench/live_bench.py                    # both layouts, 200 viewers, 10 s of load per phase
    .venv/bin/python bench/live_bench.py --layout up --viewers 50 --seconds 5

Target (issue 15): with 200 viewers following the live stream the proxy keeps >= 90 % of its throughput, and each
viewer gets every delivery (with its verdict) within 1 s of its 201 reaching the client.

How:

- Layouts. `up`: a real `clickwatch up` (the dashboard is a thread of the proxy's process, as shipped). `separate`:
  `mitmdump -s addon/capture.py` and the dashboard in its own `uvicorn` process on the same store, for comparison.
- Load. A small threaded upstream answers 201; `--concurrency` keep-alive connections send clickstream POSTs through
  the proxy for `--seconds`, each with a unique `consent-reference` (the token the viewers look for). Phase 1 has no
  viewer; phase 2 the same load with `--viewers` streams open. The ratio is phase 2 / phase 1.
- Viewers. Plain HTTP/1.1 clients on raw asyncio sockets (cheap, so that the measuring costs the proxy little CPU),
  spread over `--viewer-processes` processes of their own (here, they would hold the interpreter lock the load
  generator needs): each reads `/api/stream`, finds each token with a final verdict, and records when it came; a
  `reconnect` event is followed by a reconnect with Last-Event-ID. After the load, viewers get `--grace` seconds.
  A thread of the first viewers' process notes when each token is final in the store: store→viewer is the
  dashboard's own part of the delay.
- CPU. The proxy's processes' CPU per POST in each phase (`/proc`), and the viewers' processes' CPU.
- Everything listens on 127.0.0.1; child processes are stopped with SIGINT (then killed) and every phase is bounded.

It prints figures; it is not a test. Exit code 0: the measurement ran (even with a MISS); 2: something did not start.
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import multiprocessing
import os
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
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
TARGET_RATIO = 0.90
TARGET_SECONDS = 1.0
VERDICT = b'"verdict":"'
FINAL_VERDICTS = (b"delivered", b"rejected", b"failed")
TOKEN = b'"consent_reference":"lb-'


class BenchError(Exception):
    """A process did not start or a phase did not finish."""


class _Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


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
    raise BenchError(f"{what} did not listen on {port} within {timeout:.0f} s")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy") and not k.startswith("CLICKWATCH_")}
    env.update(extra)
    return env


@dataclass
class Layout:
    """The proxy and the dashboard, started for one store."""

    name: str
    db: Path
    proxy_port: int
    dashboard_port: int
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @classmethod
    def start(cls, name: str, workdir: Path) -> Layout:
        db = workdir / f"{name}.db"
        layout = cls(name, db, free_port(), free_port())
        bin_dir = Path(sys.executable).parent
        log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 (closed with the processes)
        conf = ["--set", f"confdir={workdir / 'conf'}"]
        if name == "up":
            command = [str(bin_dir / "clickwatch"), "up", "--quiet", "--db", str(db)]
            command += ["--proxy-port", str(layout.proxy_port), "--dashboard-port", str(layout.dashboard_port), *conf]
            layout.processes.append(subprocess.Popen(command, cwd=workdir, env=_env(), stdout=log, stderr=log))
        else:
            command = [str(bin_dir / "mitmdump"), "-q", "--listen-host", HOST, "--listen-port", str(layout.proxy_port)]
            command += [*conf, "-s", str(REPO / "addon" / "capture.py"), "--set", f"clickwatch_db={db}"]
            layout.processes.append(subprocess.Popen(command, cwd=workdir, env=_env(), stdout=log, stderr=log))
            wait_port(layout.proxy_port, layout.processes[0], "mitmdump")
            command = [sys.executable, "-m", "uvicorn", "clickwatch.dashboard.main:create_app", "--factory"]
            command += ["--host", HOST, "--port", str(layout.dashboard_port), "--log-level", "warning"]
            command += ["--no-access-log"]
            env = _env(CLICKWATCH_DB=str(db), CLICKWATCH_CONFDIR=str(workdir / "conf"))
            layout.processes.append(subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=log))
        log.close()
        for process in layout.processes:
            wait_port(layout.proxy_port, process, name)
        wait_port(layout.dashboard_port, layout.processes[-1], f"{name} dashboard")
        return layout

    def cpu_seconds(self) -> float:
        """CPU time used so far by the layout's processes and their children (the store process)."""
        tick = os.sysconf("SC_CLK_TCK")
        stats: dict[int, tuple[int, int]] = {}  # pid: (parent, ticks)
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                stats[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
        ours = {p.pid for p in self.processes}
        grew = True
        while grew:
            more = {pid for pid, (parent, _) in stats.items() if parent in ours} - ours
            ours |= more
            grew = bool(more)
        return sum(stats[pid][1] for pid in ours if pid in stats) / tick

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


class Load:
    """Keep-alive clients posting clickstream events through the proxy; records when each token's 201 arrived."""

    def __init__(self, proxy_port: int, upstream_port: int, concurrency: int) -> None:
        self.proxy_port, self.upstream_port, self.concurrency = proxy_port, upstream_port, concurrency
        self.answered: dict[int, float] = {}
        self.errors = 0
        self.next_token = 0

    async def run(self, seconds: float) -> float:
        """Post for `seconds`; returns requests per second."""
        before = len(self.answered)
        deadline = time.perf_counter() + seconds
        started = time.perf_counter()
        await asyncio.gather(*(self._client(deadline) for _ in range(self.concurrency)))
        return (len(self.answered) - before) / (time.perf_counter() - started)

    async def _client(self, deadline: float) -> None:
        reader, writer = await asyncio.open_connection(HOST, self.proxy_port)
        url = f"http://{HOST}:{self.upstream_port}/edge/clickstreamEvents"
        try:
            while time.perf_counter() < deadline:
                token = self.next_token
                self.next_token += 1
                body = b'{"productSku":"LB-%d","timestamp":%d}' % (token, int(time.time() * 1000))
                head = (
                    f"POST {url} HTTP/1.1\r\nHost: {HOST}:{self.upstream_port}\r\nContent-Type: application/json\r\n"
                    f"hybris-schema: context/commerce/ProductView\r\nconsent-reference: lb-{token}\r\n"
                    f"User-Agent: live-bench/{token % 50}\r\nContent-Length: {len(body)}\r\n\r\n"
                )
                writer.write(head.encode() + body)
                status = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                if status.split()[1:2] == [b"201"]:
                    self.answered[token] = time.perf_counter()
                else:
                    self.errors += 1
        finally:
            writer.close()


def final_tokens(frames: bytes) -> list[int]:
    """The tokens of the deliveries that complete events in `frames` show with a final verdict (each event's own).

    What a viewer does with each chunk, so it must be cheap: bytes.find over the chunk, no JSON parsing and no
    regular expression that walks every byte between a verdict and its token (each cost the viewers' processes
    a core at 200 viewers, on the two cores the proxy needs). A test holds it to json.loads of every event.
    """
    tokens = []
    find = frames.find
    at = find(VERDICT)
    while at >= 0:
        at += len(VERDICT)
        if frames.startswith(FINAL_VERDICTS, at):
            end_of_event = find(b"\n", at)  # an event's data is one line: JSON escapes newlines
            if end_of_event < 0:
                break
            ref = find(TOKEN, at, end_of_event)
            if ref >= 0:
                ref += len(TOKEN)
                close = find(b'"', ref, end_of_event)
                if close > ref and frames[ref:close].isdigit():
                    tokens.append(int(frames[ref:close]))
            at = end_of_event
        at = find(VERDICT, at)
    return tokens


class Viewer:
    """One live-page viewer: follows /api/stream with a plain socket and notes when each token arrived, final.

    With `page`, it also asks what a live page asks (static/live.js): `/api/summary` and `/api/funnel`, each at most
    once a second after events arrived and the funnel every 5 s, on a keep-alive connection of its own; and, as the
    page does, it follows the stream with `totals=true` and stops asking for either once the stream brought it.
    """

    def __init__(self, port: int, page: bool = True) -> None:
        self.port = port
        self.page = page
        self.seen: dict[int, float] = {}
        self.reconnects = 0
        self.received = 0
        self.asked = 0  # summary and funnel requests made
        self.last_id = ""
        self.connected = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.poll: asyncio.Task[None] | None = None
        self.pushed: set[str] = set()  # "summary", "funnel": the stream brings them
        self._asking: dict[str, asyncio.Task[None]] = {}
        self._last_asked: dict[str, float] = {}
        self._api: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._api_lock = asyncio.Lock()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.task = loop.create_task(self._follow())
        if self.page:
            self.poll = loop.create_task(self._funnel_poll())

    async def _follow(self) -> None:
        path = "/api/stream?totals=true" if self.page else "/api/stream"
        while True:
            reader, writer = await asyncio.open_connection(HOST, self.port)
            resume = f"Last-Event-ID: {self.last_id}\r\n" if self.last_id else ""
            head = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\nAccept: text/event-stream\r\n"
            writer.write(f"{head}{resume}\r\n".encode())
            try:
                rest = b""
                while chunk := await reader.read(65536):
                    self.connected.set()
                    self.received += len(chunk)
                    now = time.perf_counter()
                    data = rest + chunk if rest else chunk
                    cut = data.rfind(b"\n\n")
                    if cut < 0:
                        rest = data
                        continue
                    complete, rest = data[: cut + 2], data[cut + 2 :]
                    for token in final_tokens(complete):
                        self.seen.setdefault(token, now)
                    last = complete.rfind(b"\nid: ")
                    if last >= 0:
                        self.last_id = complete[last + 5 : complete.index(b"\n", last + 5)].decode()
                    if self.page:
                        self._as_a_page(complete)
                self.reconnects += 1  # the server ended the stream (a `reconnect` event): resume
            finally:
                writer.close()

    def _as_a_page(self, complete: bytes) -> None:
        for what in ("summary", "funnel"):
            if what not in self.pushed and f"event: {what}\n".encode() in complete:
                self.pushed.add(what)
        if b"event: delivery\n" in complete:
            for what in ("summary", "funnel"):
                self._ask(what)

    def _ask(self, what: str) -> None:
        """As live.js: one request for `what` at most once a second, none once the stream brings it."""
        if what in self.pushed or (what in self._asking and not self._asking[what].done()):
            return
        delay = max(0.0, self._last_asked.get(what, 0.0) + 1.0 - time.monotonic())
        self._asking[what] = asyncio.get_running_loop().create_task(self._get(what, delay))

    async def _get(self, what: str, delay: float) -> None:
        await asyncio.sleep(delay)
        if what in self.pushed:
            return
        self._last_asked[what] = time.monotonic()
        async with self._api_lock:
            try:
                if self._api is None:
                    self._api = await asyncio.open_connection(HOST, self.port)
                reader, writer = self._api
                writer.write(f"GET /api/{what} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n\r\n".encode())
                self.asked += 1
                await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                if self._api is not None:
                    self._api[1].close()
                self._api = None

    async def _funnel_poll(self) -> None:
        while "funnel" not in self.pushed:
            await asyncio.sleep(5.0)
            self._ask("funnel")


def _store_watch(db: Path, stored: dict[int, float], stop: threading.Event) -> None:
    """Note when each token's delivery is final in the store: what the dashboard cannot be faster than."""
    while not stop.is_set() and not db.exists():
        time.sleep(0.05)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    seq = conn.execute("SELECT coalesce(max(seq), 0) FROM deliveries").fetchone()[0]
    while not stop.wait(0.02):
        rows = conn.execute(
            "SELECT seq, consent_reference FROM deliveries WHERE seq > ? AND verdict IN "
            "('delivered', 'rejected', 'failed') ORDER BY seq",
            (seq,),
        ).fetchall()
        now = time.perf_counter()
        for _seq, reference in rows:
            if reference and reference.startswith("lb-"):
                stored.setdefault(int(reference[3:]), now)
        if rows:
            seq = rows[-1][0]  # a row's seq grows with each change: what comes later has a larger one
    conn.close()


def _viewers_process(port: int, count: int, db: Path | None, page: bool, conn: Connection) -> None:
    """In a child process: `count` viewers; says "ready" once all are connected, reports when told to stop."""

    async def follow() -> None:
        viewers = [Viewer(port, page) for _ in range(count)]
        for viewer in viewers:
            viewer.start()
        await asyncio.wait_for(asyncio.gather(*(v.connected.wait() for v in viewers)), 60)
        stored: dict[int, float] = {}
        stop = threading.Event()
        watch = threading.Thread(target=_store_watch, args=(db, stored, stop), daemon=True)
        if db is not None:
            watch.start()
        conn.send("ready")
        await asyncio.to_thread(conn.recv)
        for viewer in viewers:
            assert viewer.task is not None
            viewer.task.cancel()
            if viewer.poll is not None:
                viewer.poll.cancel()
        stop.set()
        if db is not None:
            watch.join(5)
        conn.send([(v.seen, v.reconnects, v.received, v.asked) for v in viewers])
        conn.send((time.process_time(), stored))

    asyncio.run(follow())


async def measure(layout: Layout, upstream_port: int, args: argparse.Namespace) -> dict[str, float]:
    load = Load(layout.proxy_port, upstream_port, args.concurrency)
    await load.run(min(3.0, args.seconds))  # warm-up: the store is created, connections made
    cpu = layout.cpu_seconds()
    alone = await load.run(args.seconds)
    cpu_alone = (layout.cpu_seconds() - cpu) / (alone * args.seconds)
    # The viewers run in processes of their own: in this one, their parsing would hold the interpreter lock that the
    # load generator needs, and slow the load (not the proxy) down; in one process, the last of 200 viewers would
    # note an event when the other 199 are parsed. The first process also watches the store.
    spawn = multiprocessing.get_context("spawn")
    shares = [
        args.viewers // args.viewer_processes + (n < args.viewers % args.viewer_processes)
        for n in range(max(1, min(args.viewers, args.viewer_processes)))
    ]
    children: list[tuple[Connection, multiprocessing.context.SpawnProcess]] = []
    for n, share in enumerate(shares):
        ours, theirs = spawn.Pipe()
        child = spawn.Process(
            target=_viewers_process,
            args=(layout.dashboard_port, share, layout.db if n == 0 else None, not args.stream_only, theirs),
            daemon=True,
        )
        child.start()
        children.append((ours, child))
    reports: list[tuple[dict[int, float], int, int, int]] = []
    viewers_cpu = 0.0
    stored: dict[int, float] = {}
    try:
        for ours, _ in children:
            if not await asyncio.to_thread(ours.poll, 90):
                raise BenchError("the viewers did not connect within 90 s")
            ours.recv()
        await asyncio.sleep(1.0)
        first_token = load.next_token
        cpu = layout.cpu_seconds()
        watched = await load.run(args.seconds)
        cpu_watched = (layout.cpu_seconds() - cpu) / (watched * args.seconds)
        await asyncio.sleep(args.grace)
        for ours, _ in children:
            ours.send("stop")
        for ours, _ in children:
            if not await asyncio.to_thread(ours.poll, 60):
                raise BenchError("the viewers did not report within 60 s")
            reports += ours.recv()
            cpu_used, watched_store = ours.recv()
            viewers_cpu += cpu_used
            stored |= watched_store
    finally:
        for _, child in children:
            child.join(5)
            if child.is_alive():
                child.kill()
    tokens = {t: at for t, at in load.answered.items() if t >= first_token}
    late = [0] * len(reports)
    missing = [0] * len(reports)
    delays: list[float] = []
    for n, (seen, *_) in enumerate(reports):
        for token, answered in tokens.items():
            arrived = seen.get(token)
            if arrived is None:
                missing[n] += 1
                continue
            delay = arrived - answered  # perf_counter is the system's monotonic clock: the same in both processes
            delays.append(delay)
            late[n] += delay > TARGET_SECONDS
    delays.sort()
    # The dashboard's own part: from final in the store (seen by polling it every 20 ms) to the viewer.
    own = sorted(at - stored[t] for seen, *_ in reports for t, at in seen.items() if t in tokens and t in stored)
    return {
        "alone": alone,
        "watched": watched,
        "deliveries": len(tokens),
        "errors": load.errors,
        "missing_max": max(missing, default=0),
        "late_max": max(late, default=0),
        "p50": statistics.median(delays) if delays else float("nan"),
        "p99": delays[int(0.99 * (len(delays) - 1))] if delays else float("nan"),
        "max": delays[-1] if delays else float("nan"),
        "reconnects": sum(r[1] for r in reports),
        "missing_median": statistics.median(missing) if missing else 0,
        "received_mb": sum(r[2] for r in reports) / 1e6,
        "asked": sum(r[3] for r in reports),
        "viewers_cpu": viewers_cpu,
        "own_p50": statistics.median(own) if own else float("nan"),
        "own_p99": own[int(0.99 * (len(own) - 1))] if own else float("nan"),
        "cpu_alone": cpu_alone,
        "cpu_watched": cpu_watched,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layout", choices=("up", "separate", "both"), default="both")
    parser.add_argument("--viewers", type=int, default=200, help="live-stream viewers (200)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of load per phase (10)")
    parser.add_argument("--viewer-processes", type=int, default=4, help="processes the viewers are spread over (4)")
    parser.add_argument("--concurrency", type=int, default=10, help="keep-alive load connections (10)")
    parser.add_argument("--grace", type=float, default=2.0, help="seconds the viewers get after the load (2)")
    parser.add_argument(
        "--stream-only",
        action="store_true",
        help="viewers only follow the stream (by default each also asks what a live page asks: summary, funnel)",
    )
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="clickwatch-live-bench-"))
    upstream = http.server.ThreadingHTTPServer((HOST, 0), _Upstream)
    upstream.daemon_threads = True
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    what = "stream only" if args.stream_only else "as live pages: stream, summary and funnel"
    print(
        f"clickwatch live bench: {args.viewers} viewers ({what}), {args.seconds:g} s per phase, {os.cpu_count()} CPUs"
    )
    layouts = ("up", "separate") if args.layout == "both" else (args.layout,)
    rows = []
    try:
        for name in layouts:
            layout = Layout.start(name, workdir)
            try:
                figures = asyncio.run(asyncio.wait_for(measure(layout, upstream.server_address[1], args), 300))
            finally:
                layout.stop()
            rows.append((name, figures))
    except (BenchError, TimeoutError) as exc:
        print(f"FATAL {exc!r}")
        return 2
    finally:
        upstream.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"\n{'layout':<9} {'alone':>8} {'viewed':>8} {'ratio':>6} {'POSTs':>6} {'missing':>8} {'>1 s':>6} "
        f"{'p50':>7} {'p99':>7} {'max':>7} {'reconn':>6} {'ms/POST':>11} {'viewers':>12} {'store→viewer':>13} "
        f"{'asked':>6}  result"
    )
    for name, f in rows:
        ratio = f["watched"] / f["alone"] if f["alone"] else 0.0
        ok = ratio >= TARGET_RATIO and f["missing_max"] == 0 and f["late_max"] == 0
        print(
            f"{name:<9} {f['alone']:>6.1f}/s {f['watched']:>6.1f}/s {ratio:>6.3f} {f['deliveries']:>6} "
            f"{f['missing_max']:>8} {f['late_max']:>6} {f['p50'] * 1e3:>5.0f}ms {f['p99'] * 1e3:>5.0f}ms "
            f"{f['max'] * 1e3:>5.0f}ms {f['reconnects']:>6} "
            f"{f['cpu_alone'] * 1e3:>4.1f}→{f['cpu_watched'] * 1e3:<5.1f} "
            f"{f['viewers_cpu']:>4.1f}s {f['received_mb']:>4.0f}MB "
            f"{f['own_p50'] * 1e3:>5.0f}/{f['own_p99'] * 1e3:<5.0f}ms {f['asked']:>6}  {'PASS' if ok else 'MISS'}"
        )
    print("missing / >1 s: the worst viewer's count of deliveries not seen at all / seen later than 1 s after the 201")
    print("ms/POST: CPU of the proxy's processes (store process and dashboard included) per POST, alone → viewed;")
    print("viewers: CPU time and bytes of the viewers' process (its own process: it must not slow the load down)")
    print("store→viewer: p50/p99 from final in the store to the viewer, the dashboard's own part of the delay")
    print("asked: /api/summary and /api/funnel requests the viewers made as live pages do (0 with --stream-only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
