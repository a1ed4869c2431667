"""A very large storefront page through bare mitmdump and through clickwatch: memory and time to the first byte.

The upstream (a child process on loopback) serves one HTML page of `--mb` megabytes (default 300): a head, then
rows, written as fast as the reader takes them (with Content-Length, or `--chunked`, or gzip-encoded with
`--encoding gzip`). Four set-ups: straight from the upstream (`direct`), bare mitmdump (`bare`, which reads a
body whole before sending it on: mitmproxy's default), mitmdump with a script streaming every answer
(`streaming`, the fair comparison) and clickwatch (`mitmdump -s addon/capture.py`). A client in this process asks
for it through each as a browser navigating to it does
(`Accept: text/html`, `Sec-Fetch-Dest: document`), reads it to the end and measures the time to the response's
first byte and to its first body byte, and the whole transfer. The proxy's resident memory is sampled every 20 ms
during the transfer: the growth is the highest sample minus the proxy's memory just before the request. Rounds
alternate between the proxies. It prints figures; it is not a test.

    .venv/bin/python bench/big_page_bench.py                    # 300 MB, 3 rounds each
    .venv/bin/python bench/big_page_bench.py --encoding gzip    # the same page, gzip-encoded by the upstream

Targets (issue 22): clickwatch's growth < 50 MB, and its first byte within 10 ms of (streaming) mitmdump's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.capture_bench import ADDON, HOST, Proxy, proc_status_kb  # noqa: E402

HEAD = b"<!doctype html><html lang=en><head><meta charset=utf-8><title>A very long list</title></head><body><ul>\n"
ROW = b"<li><a href='/p/%07d'>Product %07d</a> <span class=price>19.99</span></li>\n"
PIECE_ROWS = 4096  # rows per write: about 300 KB
TARGET_GROWTH_MB = 50.0
# The fair bare proxy for a page this size: mitmdump streaming every answer (its default reads a body whole).
STREAM_ALL = "def responseheaders(flow):\n    flow.response.stream = True\n"
TARGET_FIRST_BYTE_MS = 10.0


def _rows(total: int) -> list[bytes]:
    """The page after its head, in pieces: `total` bytes in all."""
    pieces, written, number = [], len(HEAD), 0
    while written < total:
        piece = b"".join(ROW % (n, n) for n in range(number, number + PIECE_ROWS))
        piece = piece[: total - written]
        pieces.append(piece)
        written += len(piece)
        number += PIECE_ROWS
    return pieces


async def _serve(conn: Connection, size: int, chunked: bool, encoding: str) -> None:
    # A few distinct pieces repeated: the page's bytes are made once, not 300 MB of them kept in memory.
    sample = _rows(min(size, 64 * 1024 * 1024))
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31) if encoding == "gzip" else None

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):  # the warm-up load reads a little and hangs up
            await page(reader, writer)

    async def page(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        nonlocal compressor
        compressor = zlib.compressobj(6, zlib.DEFLATED, 31) if encoding == "gzip" else None
        head = [b"HTTP/1.1 200 OK", b"Content-Type: text/html; charset=utf-8", b"Connection: close"]
        if compressor is not None:
            head += [b"Content-Encoding: gzip", b"Transfer-Encoding: chunked"]
        elif chunked:
            head.append(b"Transfer-Encoding: chunked")
        else:
            head.append(b"Content-Length: %d" % size)
        writer.write(b"\r\n".join(head) + b"\r\n\r\n")
        framed = chunked or compressor is not None

        async def send(data: bytes) -> None:
            if compressor is not None:
                data = compressor.compress(data)
            if data:
                writer.write(b"%x\r\n%s\r\n" % (len(data), data) if framed else data)
                await writer.drain()

        await send(HEAD)
        left, i = size - len(HEAD), 0
        while left > 0:
            piece = sample[i % len(sample)][:left]
            await send(piece)
            left -= len(piece)
            i += 1
        if compressor is not None:
            tail = compressor.flush()
            writer.write(b"%x\r\n%s\r\n" % (len(tail), tail))
        if framed:
            writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, HOST, 0)
    conn.send(server.sockets[0].getsockname()[1])
    conn.close()
    async with server:
        await server.serve_forever()


def _upstream_main(conn: Connection, size: int, chunked: bool, encoding: str) -> None:
    asyncio.run(_serve(conn, size, chunked, encoding))


@dataclass
class Transfer:
    first_byte_ms: float
    first_body_byte_ms: float
    seconds: float
    body_bytes: int
    growth_mb: float
    observer: bool


def fetch(proxy: Proxy | None, upstream_port: int) -> Transfer:
    """One page load through the proxy (None: straight from the upstream), read to the end, with the proxy's
    memory sampled as it goes."""
    pid = proxy.pid if proxy is not None else os.getpid()
    baseline = proc_status_kb(pid, "VmRSS")
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.02):
            peak = max(peak, proc_status_kb(pid, "VmRSS"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    target = f"http://{HOST}:{upstream_port}/big" if proxy is not None else "/big"
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {HOST}:{upstream_port}\r\n"
        "User-Agent: Mozilla/5.0 big-page-bench\r\nAccept: text/html\r\nSec-Fetch-Dest: document\r\n"
        "Accept-Encoding: gzip\r\nConnection: close\r\n\r\n"
    ).encode()
    start = time.perf_counter()
    first = first_body = 0.0
    received = bytearray()
    body = 0
    with socket.create_connection((HOST, proxy.port if proxy is not None else upstream_port)) as sock:
        sock.sendall(request)
        head_end = -1
        while True:
            data = sock.recv(1 << 20)
            if not data:
                break
            now = time.perf_counter()
            if not first:
                first = now
            if head_end < 0:
                received += data
                head_end = received.find(b"\r\n\r\n")
                if head_end >= 0 and len(received) > head_end + 4:
                    first_body = now
                body += max(0, len(received) - head_end - 4) if head_end >= 0 else 0
                continue
            if not first_body:
                first_body = now
            if len(received) < 256 * 1024:
                received += data
            body += len(data)
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    peak = max(peak, proc_status_kb(pid, "VmRSS"))
    if proxy is None:
        peak = baseline  # the client's own memory is not a proxy's
    return Transfer(
        (first - start) * 1000,
        (first_body - start) * 1000,
        seconds,
        body,
        (peak - baseline) / 1024,
        b"/__clickwatch/observer.js" in received,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=300, help="the page's size in MB (default 300)")
    parser.add_argument("--rounds", type=int, default=3, help="page loads per proxy (default 3)")
    parser.add_argument("--chunked", action="store_true", help="the upstream sends the page chunked")
    parser.add_argument("--encoding", choices=("identity", "gzip"), default="identity")
    args = parser.parse_args(argv)
    size = args.mb * 1000 * 1000
    args.mitmdump = shutil.which("mitmdump", path=str(Path(sys.executable).parent)) or shutil.which("mitmdump")
    args.addon, args.python_path, args.proxy_cpus, args.set = ADDON, None, None, []
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe(duplex=False)
    upstream = context.Process(
        target=_upstream_main, args=(child, size, args.chunked, args.encoding), daemon=True, name="big-page-upstream"
    )
    upstream.start()
    child.close()
    if not parent.poll(60):
        upstream.terminate()
        print("the upstream did not start", file=sys.stderr)
        return 2
    upstream_port = int(parent.recv())
    names = ("direct", "bare", "streaming", "clickwatch")
    results: dict[str, list[Transfer]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="big-page-bench-") as tmp:
        workdir = Path(tmp)
        streaming = workdir / "stream_all.py"
        streaming.write_text(STREAM_ALL)
        proxies: dict[str, Proxy | None] = {
            "direct": None,
            "bare": Proxy.start("bare", args, workdir, None),
            "streaming": Proxy.start("streaming", args, workdir, None, script=streaming),
            "clickwatch": Proxy.start("clickwatch", args, workdir, workdir / "cw.db"),
        }
        try:
            for proxy in proxies.values():  # one unmeasured small load each: imports and connections warm
                if proxy is not None:
                    fetch_small(proxy, upstream_port)
            for round_number in range(args.rounds):
                order = names if round_number % 2 == 0 else names[::-1]
                for name in order:
                    transfer = fetch(proxies[name], upstream_port)
                    results[name].append(transfer)
                    print(
                        f"round {round_number + 1} {name:10} first byte {transfer.first_byte_ms:8.1f} ms, first body "
                        f"byte {transfer.first_body_byte_ms:8.1f} ms, {transfer.body_bytes / 1e6:7.1f} MB in "
                        f"{transfer.seconds:5.2f} s, RSS growth {transfer.growth_mb:7.1f} MB, observer "
                        f"{'in' if transfer.observer else 'not in'} the page",
                        flush=True,
                    )
        finally:
            for proxy in proxies.values():
                if proxy is not None:
                    proxy.stop()
            upstream.terminate()
            upstream.join(5)
    bare, cw = results["streaming"], results["clickwatch"]

    def median(values: list[float]) -> float:
        return statistics.median(values)

    first_gap = median([t.first_body_byte_ms for t in cw]) - median([t.first_body_byte_ms for t in bare])
    growth = median([t.growth_mb for t in cw])
    print(f"\n{args.mb} MB page ({args.encoding}{', chunked' if args.chunked else ''}), {args.rounds} rounds, medians:")
    for name, transfers in results.items():
        first = median([t.first_byte_ms for t in transfers])
        body = median([t.first_body_byte_ms for t in transfers])
        seconds = median([t.seconds for t in transfers])
        grown = median([t.growth_mb for t in transfers])
        highest = max(t.growth_mb for t in transfers)
        print(
            f"  {name:10} first byte {first:8.1f} ms, first body byte {body:8.1f} ms, transfer {seconds:5.2f} s, "
            f"RSS growth {grown:7.1f} MB (highest round {highest:.1f} MB)"
        )
    ok_growth = growth < TARGET_GROWTH_MB
    ok_first = first_gap <= TARGET_FIRST_BYTE_MS
    print(f"  clickwatch RSS growth {growth:.1f} MB (target < {TARGET_GROWTH_MB:.0f}): {verdict(ok_growth)}")
    print(
        f"  first body byte, clickwatch - streaming mitmdump: {first_gap:+.1f} ms "
        f"(target <= {TARGET_FIRST_BYTE_MS:.0f}): {verdict(ok_first)}"
    )
    if not all(t.observer for t in cw):
        print("  the observer was missing from a page clickwatch served", file=sys.stderr)
        return 1
    return 0


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def fetch_small(proxy: Proxy, upstream_port: int) -> None:
    """Connect through the proxy once, reading a little of the page, so the first measured load starts warm."""
    with socket.create_connection((HOST, proxy.port)) as sock:
        sock.sendall(
            f"GET http://{HOST}:{upstream_port}/big HTTP/1.1\r\nHost: {HOST}:{upstream_port}\r\nAccept: text/html\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        sock.recv(65536)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
