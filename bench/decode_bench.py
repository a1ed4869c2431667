"""What one hostile body costs the store: time and peak memory to decode a compression bomb of each coding.

Each case runs in a fresh child process (peak RSS is per process), twice: with the cap every body had before
(`MAX_DECODED_BYTES`, 64 MiB) and with the tracking body cap in force now (`capture.body_decode_limit`, 2 MiB by
default). Also a 3 KB gzip body of a million '{}' (JSON amplification) and a JSON body nested 2,000 deep.

    .venv/bin/python -m bench.decode_bench            # prints one line per case
"""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import brotli
import zstandard

BOMB_BYTES = 300 * 1024 * 1024
BEFORE = 64 * 1024 * 1024  # the cap every body had before capture.body_decode_limit


def _cases() -> dict[str, tuple[str, Callable[[], bytes]]]:
    zeros = b"\0" * BOMB_BYTES
    return {
        "gzip": ("gzip", lambda: gzip.compress(zeros, 9)),
        "deflate": ("deflate", lambda: zlib.compress(zeros, 9)),
        "br": ("br", lambda: brotli.compress(zeros, quality=5)),
        "zstd (size stated)": ("zstd", lambda: zstandard.ZstdCompressor(level=3).compress(zeros)),
        "zstd (size unstated)": (
            "zstd",
            lambda: zstandard.ZstdCompressor(level=3, write_content_size=False).compress(zeros),
        ),
        "gzip of a million {}": ("gzip", lambda: gzip.compress(b"[" + b"{}," * 999_999 + b"{}]", 9)),
        "JSON nested 2,000 deep": ("", lambda: b"[" * 2000 + b"]" * 2000),
    }


def _peak_kb() -> int:
    # This process's own high-water mark (ru_maxrss would carry the parent's across fork and exec).
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _child(path: str, coding: str, cap: int) -> None:
    from clickwatch.core.checks import payload_problems
    from clickwatch.core.decoding import decode_body

    raw = Path(path).read_bytes()
    before = _peak_kb()
    start = time.perf_counter()
    body = decode_body(raw, coding, "application/json", max_decoded=cap)
    message = "; ".join(payload_problems(body, ("productSku",)))
    elapsed = time.perf_counter() - start
    peak = _peak_kb()
    print(json.dumps({"ms": elapsed * 1000, "rss_mb": (peak - before) / 1024, "message": len(message)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=3, metavar=("FILE", "CODING", "CAP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], args.child[1], int(args.child[2]))
        return
    from clickwatch.core.decoding import DEFAULT_DECODE_LIMIT

    print(f"{'case':24} {'sent':>9} | {'64 MiB cap: ms':>14} {'peak MB':>8} | {'2 MiB cap: ms':>13} {'peak MB':>8}"
          f" {'finding chars':>13}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for name, (coding, make) in _cases().items():
            path = Path(tmp) / "body"
            path.write_bytes(make())
            figures = []
            for cap in (BEFORE, DEFAULT_DECODE_LIMIT):
                out = subprocess.run(
                    [sys.executable, "-m", "bench.decode_bench", "--child", str(path), coding, str(cap)],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                figures.append(json.loads(out))
            a, b = figures
            print(
                f"{name:24} {path.stat().st_size:>9} | {a['ms']:>14.1f} {a['rss_mb']:>8.1f} | "
                f"{b['ms']:>13.1f} {b['rss_mb']:>8.1f} {b['message']:>13}"
            )


if __name__ == "__main__":
    main()
