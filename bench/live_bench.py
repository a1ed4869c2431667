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
- Viewers. Plain HTTP/1.1 clients on raw asyncio sockets in this process (cheap, so that the measuring costs the
  proxy little CPU): each reads `/api/stream`, finds each token with a final verdict, and records when it came; a
  `reconnect` event is followed by a reconnect with Last-Event-ID. After the load, viewers get `--grace` seconds.
- Everything listens on 127.0.0.1; child processes are stopped with SIGINT (then killed) and every phase is bounded.

It prints figures; it is not a test. Exit code 0: the measurement ran (even with a MISS); 2: something did not start.
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
TARGET_RATIO = 0.90
TARGET_SECONDS = 1.0
FINAL = re.compile(rb'"verdict":"(delivered|rejected|failed)".*?"consent_reference":"lb-(\d+)"')
EVENT_ID = re.compile(rb"^id: ?(\d+)", re.M)


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
    proxy_port: int
    dashboard_port: int
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @classmethod
    def start(cls, name: str, workdir: Path) -> Layout:
        db = workdir / f"{name}.db"
        layout = cls(name, free_port(), free_port())
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
            layout.processes.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=log))
        log.close()
        for process in layout.processes:
            wait_port(layout.proxy_port, process, name)
        wait_port(layout.dashboard_port, layout.processes[-1], f"{name} dashboard")
        return layout

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


class Viewer:
    """One live-page viewer: follows /api/stream with a plain socket and notes when each token arrived, final."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.seen: dict[int, float] = {}
        self.reconnects = 0
        self.received = 0
        self.last_id = ""
        self.connected = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._follow())

    async def _follow(self) -> None:
        while True:
            reader, writer = await asyncio.open_connection(HOST, self.port)
            resume = f"Last-Event-ID: {self.last_id}\r\n" if self.last_id else ""
            head = f"GET /api/stream HTTP/1.1\r\nHost: {HOST}:{self.port}\r\nAccept: text/event-stream\r\n"
            writer.write(f"{head}{resume}\r\n".encode())
            try:
                rest = b""
                while chunk := await reader.read(65536):
                    self.connected.set()
                    self.received += len(chunk)
                    now = time.perf_counter()
                    data = rest + chunk
                    cut = data.rfind(b"\n\n")
                    if cut < 0:
                        rest = data
                        continue
                    complete, rest = data[: cut + 2], data[cut + 2 :]
                    for match in FINAL.finditer(complete):
                        self.seen.setdefault(int(match.group(2)), now)
                    ids = EVENT_ID.findall(complete)
                    if ids:
                        self.last_id = ids[-1].decode()
                self.reconnects += 1  # the server ended the stream (a `reconnect` event): resume
            finally:
                writer.close()


async def measure(layout: Layout, upstream_port: int, args: argparse.Namespace) -> dict[str, float]:
    load = Load(layout.proxy_port, upstream_port, args.concurrency)
    await load.run(min(3.0, args.seconds))  # warm-up: the store is created, connections made
    alone = await load.run(args.seconds)
    viewers = [Viewer(layout.dashboard_port) for _ in range(args.viewers)]
    for viewer in viewers:
        viewer.start()
    await asyncio.wait_for(asyncio.gather(*(v.connected.wait() for v in viewers)), 60)
    await asyncio.sleep(1.0)
    first_token = load.next_token
    watched = await load.run(args.seconds)
    await asyncio.sleep(args.grace)
    for viewer in viewers:
        assert viewer.task is not None
        viewer.task.cancel()
    tokens = {t: at for t, at in load.answered.items() if t >= first_token}
    late = [0] * len(viewers)
    missing = [0] * len(viewers)
    delays: list[float] = []
    for n, viewer in enumerate(viewers):
        for token, answered in tokens.items():
            arrived = viewer.seen.get(token)
            if arrived is None:
                missing[n] += 1
                continue
            delay = arrived - answered
            delays.append(delay)
            late[n] += delay > TARGET_SECONDS
    delays.sort()
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
        "reconnects": sum(v.reconnects for v in viewers),
        "missing_median": statistics.median(missing) if missing else 0,
        "received_mb": sum(v.received for v in viewers) / 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layout", choices=("up", "separate", "both"), default="both")
    parser.add_argument("--viewers", type=int, default=200, help="live-stream viewers (200)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of load per phase (10)")
    parser.add_argument("--concurrency", type=int, default=10, help="keep-alive load connections (10)")
    parser.add_argument("--grace", type=float, default=2.0, help="seconds the viewers get after the load (2)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="clickwatch-live-bench-"))
    upstream = http.server.ThreadingHTTPServer((HOST, 0), _Upstream)
    upstream.daemon_threads = True
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    print(f"clickwatch live bench: {args.viewers} viewers, {args.seconds:g} s per phase, {os.cpu_count()} CPUs")
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
        f"{'p50':>7} {'p99':>7} {'max':>7} {'reconn':>6}  result"
    )
    for name, f in rows:
        ratio = f["watched"] / f["alone"] if f["alone"] else 0.0
        ok = ratio >= TARGET_RATIO and f["missing_max"] == 0 and f["late_max"] == 0
        print(
            f"{name:<9} {f['alone']:>6.1f}/s {f['watched']:>6.1f}/s {ratio:>6.3f} {f['deliveries']:>6} "
            f"{f['missing_max']:>8} {f['late_max']:>6} {f['p50'] * 1e3:>5.0f}ms {f['p99'] * 1e3:>5.0f}ms "
            f"{f['max'] * 1e3:>5.0f}ms {f['reconnects']:>6}  {'PASS' if ok else 'MISS'}"
        )
    print("missing / >1 s: the worst viewer's count of deliveries not seen at all / seen later than 1 s after the 201")
    return 0


if __name__ == "__main__":
    sys.exit(main())
