"""Issue 15 item 1's mixed scenario, smaller: compression bombs spread among real clickstream POSTs through a real
`clickwatch up`. Nothing answered 201 is lost, every bomb is stored with a finding naming the decode cap, the healthy
POSTs have none, and the store process is the one it started with. Figures at full size: bench/bomb_mix_bench.py."""

from __future__ import annotations

import gzip
import threading
import zlib
from collections.abc import Callable
from pathlib import Path

import brotli
import zstandard

from tests.rig import Up, clickwatch_up

from .conftest import Upstream, query, wait_until

POSTS = 400  # in all, bombs included
BOMBS = 10
CONNECTIONS = 4
# 32 MiB of zeros: 16 times capture.body_decode_limit's default, and quick to build in every coding.
ZEROS = b"\0" * (32 * 1024 * 1024)
CODINGS: dict[str, tuple[str, Callable[[], bytes]]] = {
    "gzip": ("gzip", lambda: gzip.compress(ZEROS, 9)),
    "deflate": ("deflate", lambda: zlib.compress(ZEROS, 9)),
    "br": ("br", lambda: brotli.compress(ZEROS, quality=5)),
    "zstd-stated": ("zstd", lambda: zstandard.ZstdCompressor(level=3).compress(ZEROS)),
    "zstd-unstated": ("zstd", lambda: zstandard.ZstdCompressor(level=3, write_content_size=False).compress(ZEROS)),
}
HEADERS = {"hybris-schema": "context/commerce/ProductView", "consent-reference": "cr-bombs"}
CONSENT_GIVEN = (
    "anonymous-consents=%5B%7B%22templateCode%22%3A%22PROFILE%22%2C%22templateVersion%22%3A1%2C"
    "%22consentState%22%3A%22GIVEN%22%7D%5D"
)
CRASH_LINE = "store process ended unexpectedly"


def _store_pid(up: Up) -> int:
    def children() -> list[int]:
        with open(f"/proc/{up.process.pid}/task/{up.process.pid}/children") as listed:
            return [int(pid) for pid in listed.read().split()]

    (pid,) = wait_until(children, 10.0, "the store process")
    return pid


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _send(up: Up, upstream: Upstream, bombs: dict[int, tuple[str, str, bytes]]) -> dict[str, int]:
    """POSTs 0..POSTS-1 over a few keep-alive connections, the bombs at their numbers; status by path."""
    numbers = iter(range(POSTS))
    statuses: dict[str, int] = {}
    lock = threading.Lock()

    def post() -> None:
        with up.client(timeout=30) as client:
            while (n := next(numbers, None)) is not None:
                if n in bombs:
                    name, coding, body = bombs[n]
                    path = f"/s201/bomb-{name}-{n}/edge/clickstreamEvents"
                    headers = {**HEADERS, "content-encoding": coding, "content-type": "application/json"}
                    response = client.post(upstream.url(path), content=body, headers=headers)
                else:
                    path = f"/s201/ok-{n}/edge/clickstreamEvents"
                    event = {"productSku": f"SKU-{n:06d}", "productName": f"Product {n}", "productPrice": 19.99}
                    response = client.post(upstream.url(path), json=event, headers=HEADERS)
                with lock:
                    statuses[path] = response.status_code

    threads = [threading.Thread(target=post) for _ in range(CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return statuses


def test_bombs_among_real_posts_lose_nothing_and_are_judged_by_the_cap(tmp_path: Path, upstream: Upstream) -> None:
    built = {name: (coding, make()) for name, (coding, make) in CODINGS.items()}
    names = list(built)
    bombs = {
        int((k + 0.5) * POSTS / BOMBS): (names[k % len(names)], *built[names[k % len(names)]]) for k in range(BOMBS)
    }
    with clickwatch_up(tmp_path / "up") as up:
        store = _store_pid(up)
        with up.client() as client:  # the visitor grants consent on a storefront page: a healthy POST is clean
            page = client.get(upstream.url("/page/home"), headers={"accept": "text/html", "cookie": CONSENT_GIVEN})
        assert page.status_code == 200
        statuses = _send(up, upstream, bombs)
        assert len(statuses) == POSTS
        answered = [path for path, status in statuses.items() if status == 201]
        assert len(answered) == POSTS  # the proxy fails open: a bomb is passed on like any other body

        def final() -> bool:
            rows = query(up.db, "SELECT count(*) FROM deliveries WHERE verdict != 'pending'")
            return bool(rows) and rows[0][0] >= POSTS

        wait_until(final, 30.0, f"{POSTS} final deliveries")
        assert _alive(store), "the store process died"
        assert _store_pid(up) == store, "the store process was replaced"
        up.stop()
    log = up.log()
    assert CRASH_LINE not in log, log
    assert "Traceback" not in log, log

    rows = query(up.db, "SELECT id, url, verdict FROM deliveries WHERE kind = 'clickstream'")
    stored = {row["url"].split("/", 3)[3]: (row["id"], row["verdict"]) for row in rows}
    lost = [path for path in answered if stored.get(path.lstrip("/"), (0, ""))[1] != "delivered"]
    assert lost == [], f"{len(lost)} of {len(answered)} POSTs answered 201 are not stored delivered: {lost[:5]}"

    findings: dict[int, list[tuple[str, str]]] = {}
    for row in query(up.db, "SELECT delivery_id, kind, message FROM findings"):
        findings.setdefault(row["delivery_id"], []).append((row["kind"], row["message"]))
    judged: dict[str, int] = {}
    for path, (delivery_id, _) in stored.items():
        found = findings.get(delivery_id, [])
        if path.startswith("s201/bomb-"):
            name = path.split("/")[1].removeprefix("bomb-").rsplit("-", 1)[0]
            capped = [m for kind, m in found if kind == "invalid_payload" and "capture.body_decode_limit" in m]
            assert capped, f"bomb {path} has no finding naming the cap: {found}"
            judged[name] = judged.get(name, 0) + 1
        else:
            assert found == [], f"healthy POST {path} was accused: {found}"
    assert judged == {name: BOMBS // len(names) for name in names}
