"""Where a request's cost sits in the proxy process: mitmproxy's dispatch, clickwatch's hook bodies, the store link.

Run from the repository root:

    .venv/bin/python bench/hook_bench.py              # both scenarios, about a minute
    .venv/bin/python bench/hook_bench.py --flows 2000 --repeats 3

No sockets and no load generator: one mitmproxy master with mitmdump's addons, in this process, and the same
request/answer pairs `capture_bench.py` sends (tracking POSTs, storefront page GETs with the consent cookie) as
prepared flows. Each request's four hook events (requestheaders, request, responseheaders, response) go through
mitmproxy's own `handle_lifecycle`, as the proxy server sends them, for three chains: mitmdump's addons alone (bare),
plus a script whose hooks return at once (what dispatching to any addon costs), and plus clickwatch's addon loaded as
`mitmdump -s` loads it. Then clickwatch's hook bodies are called directly, without the dispatch, once with the real
store link and once with a link whose `send` does nothing. It prints µs per request for each, best of `--repeats`.
What the event loop and mitmproxy's HTTP layers cost per request is not in these figures: `capture_bench.py`
measures the whole proxy process (its "proxy CPU" column). See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mitmproxy import http, options
from mitmproxy.test import tflow
from mitmproxy.tools.dump import DumpMaster

sys.path.insert(0, str(Path(__file__).resolve().parent))
import capture_bench as cb  # the same requests and answers as the capture benchmark

REPO = Path(__file__).resolve().parent.parent
HOOKS = ("requestheaders", "request", "responseheaders", "response")
EMPTY_ADDON = cb.EMPTY_ADDON  # every hook clickwatch defines, each returning at once
UPSTREAM_PORT = 8000


def tracking_flow(number: int) -> http.HTTPFlow:
    """A clickstream POST and its 201, as the proxy holds them after reading both."""
    body = cb.EVENT_BODY % (number, number % 997, int(time.time() * 1000))
    headers = [
        (b"Accept", b"*/*"),
        (b"Content-Type", b"application/json"),
        (b"hybris-schema", b"context/commerce/ProductView"),
        (b"consent-reference", b"6a1f6f1e-0b8e-4a43-9c55-6c8f3d1e9a%02d" % (number % 20)),
        (b"Content-Length", str(len(body)).encode()),
    ]
    answer_headers = [(b"Content-Type", b"application/json"), (b"Content-Length", b"2")]
    return _flow(number, b"POST", cb.CLICKSTREAM_PATH, headers, body, (201, b"Created", answer_headers, b"{}"))


def storefront_flow(number: int) -> http.HTTPFlow:
    """A product page GET with the consent cookie and its 200 text/html answer."""
    headers = [
        (b"Accept", b"text/html"),
        (b"Accept-Language", b"en-GB,en;q=0.8"),
        (b"Cookie", cb.CONSENT_COOKIE.encode()),
    ]
    answer_headers = [(b"Content-Type", b"text/html; charset=utf-8"), (b"Content-Length", str(len(cb._PAGE)).encode())]
    return _flow(number, b"GET", cb.PAGE_PATH, headers, b"", (200, b"OK", answer_headers, cb._PAGE))


_CLIENTS = [tflow.tclient_conn() for _ in range(20)]  # 20 keep-alive connections, as the capture benchmark opens
_SERVER = tflow.tserver_conn()


def _flow(
    number: int,
    method: bytes,
    path: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    answer: tuple[int, bytes, list[tuple[bytes, bytes]], bytes],
) -> http.HTTPFlow:
    """A request from one of the 20 connections (Host and User-Agent first, as the capture benchmark sends them)
    and its answer (status, reason, headers, body), held on the flow until the proxy would have read it."""
    authority = f"{cb.HOST}:{UPSTREAM_PORT}".encode()
    agent = f"{cb.USER_AGENT} bench/{number % 20}".encode()
    now = time.time()
    request = http.Request(
        cb.HOST,
        UPSTREAM_PORT,
        method,
        b"http",
        authority,
        path.encode(),
        b"HTTP/1.1",
        http.Headers([(b"Host", authority), (b"User-Agent", agent), *headers]),
        body,
        None,
        now,
        now,
    )
    status, reason, answer_headers, content = answer
    response = http.Response(b"HTTP/1.1", status, reason, http.Headers(answer_headers), content, None, now, now)
    flow = http.HTTPFlow(_CLIENTS[number % len(_CLIENTS)], _SERVER)
    flow.request = request
    flow.metadata["bench_response"] = response  # set on the flow just before responseheaders, as the proxy does
    return flow


async def dispatched(master: DumpMaster, flows: list[http.HTTPFlow]) -> float:
    """µs per request for the four hook events through mitmproxy's handle_lifecycle (with its update event)."""
    handle = master.addons.handle_lifecycle
    from mitmproxy.proxy.layers.http import (
        HttpRequestHeadersHook,
        HttpRequestHook,
        HttpResponseHeadersHook,
        HttpResponseHook,
    )

    start = time.thread_time_ns()
    for flow in flows:
        await handle(HttpRequestHeadersHook(flow))
        await handle(HttpRequestHook(flow))
        flow.response = flow.metadata["bench_response"]
        await handle(HttpResponseHeadersHook(flow))
        await handle(HttpResponseHook(flow))
    return (time.thread_time_ns() - start) / 1000 / len(flows)


def direct(addon: Any, flows: list[http.HTTPFlow]) -> float:
    """µs per request for clickwatch's four hooks called as plain methods."""
    requestheaders, request, responseheaders, response = (getattr(addon, name) for name in HOOKS)
    start = time.thread_time_ns()
    for flow in flows:
        requestheaders(flow)
        request(flow)
        flow.response = flow.metadata["bench_response"]
        responseheaders(flow)
        response(flow)
    return (time.thread_time_ns() - start) / 1000 / len(flows)


class NullLink:
    """A store link that takes everything and keeps nothing: the hooks without the hand-off."""

    mode = "thread"

    def send(self, message: Any) -> bool:
        return True

    def control(self, message: Any) -> None:
        pass

    def close(self, timeout: float | None = None) -> bool:
        return True


async def make_master(workdir: Path, script: Path | None) -> DumpMaster:
    opts = options.Options()
    master = DumpMaster(opts, with_termlog=False)
    # mitmdump -q: no flow output (the dumper addon stays in the chain, as it does in mitmdump).
    master.options.update(flow_detail=0, confdir=str(workdir / "conf"))
    if script is not None:
        master.options.update_defer(clickwatch_db=str(workdir / f"{script.stem}.db"))
        master.options.update(scripts=[str(script)])
        for _ in range(100):
            if _script_addon(master) is not None:
                break
            await asyncio.sleep(0.05)
    return master


def _script_addon(master: DumpMaster) -> Any:
    loader = master.addons.get("scriptloader")
    for script in getattr(loader, "addons", []):  # a Script, whose addons are its module, whose addons are ours
        for module in getattr(script, "addons", []):
            for addon in getattr(module, "addons", []):
                return addon
    return None


def measure(builder: Callable[[int], http.HTTPFlow], count: int, run: Callable[[list[http.HTTPFlow]], Any]) -> float:
    flows = [builder(i) for i in range(count)]
    gc.collect()
    return run(flows)


async def main_async(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="clickwatch-hooks-"))
    empty = workdir / "empty_addon.py"
    empty.write_text(EMPTY_ADDON)
    masters = {
        "bare": await make_master(workdir, None),
        "empty": await make_master(workdir, empty),
        "clickwatch": await make_master(workdir, args.addon),
    }
    addon = _script_addon(masters["clickwatch"])
    if addon is None or addon.link is None:
        print("clickwatch's addon did not load", file=sys.stderr)
        return 2
    builders = {"tracking": tracking_flow, "storefront": storefront_flow}
    print(
        f"hook dispatch benchmark: {args.flows} requests x best of {args.repeats}, Python {sys.version.split()[0]}, "
        f"addon {args.addon}"
    )
    for scenario in args.scenario:
        builder = builders[scenario]
        best: dict[str, float] = {}
        for _ in range(args.repeats):
            for name, master in masters.items():
                flows = [builder(i) for i in range(args.flows)]
                gc.collect()
                best[name] = min(best.get(name, 1e9), await dispatched(master, flows))
            real_link = addon.link
            best["hooks"] = min(best.get("hooks", 1e9), measure(builder, args.flows, lambda f: direct(addon, f)))
            addon.link = NullLink()
            try:
                best["hooks, null link"] = min(
                    best.get("hooks, null link", 1e9), measure(builder, args.flows, lambda f: direct(addon, f))
                )
            finally:
                addon.link = real_link
            await asyncio.sleep(0.2)  # let the feeder thread hand on what was sent
        bare = best["bare"]
        print(f"\n== {scenario} (µs per request, 4 hook events each)")
        print(f"  bare mitmdump chain               {bare:8.1f}")
        print(f"  + a script whose hooks return     {best['empty']:8.1f}  (+{best['empty'] - bare:.1f}: dispatch)")
        print(f"  + clickwatch's addon              {best['clickwatch']:8.1f}  (+{best['clickwatch'] - bare:.1f})")
        print(f"  clickwatch's hooks, called direct {best['hooks']:8.1f}")
        print(
            f"  ... with a null store link        {best['hooks, null link']:8.1f}"
            f"  (send: {best['hooks'] - best['hooks, null link']:.1f})"
        )
    for master in masters.values():
        master.addons.trigger(__import__("mitmproxy.hooks", fromlist=["DoneHook"]).DoneHook())
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--flows", type=int, default=5000, help="requests per measurement (default 5000)")
    parser.add_argument("--repeats", type=int, default=5, help="measurements per chain; the best counts (default 5)")
    parser.add_argument(
        "--addon",
        type=Path,
        default=REPO / "addon" / "capture.py",
        help="the addon script to load (default: the repository's; put its sources first on PYTHONPATH to compare "
        "another version)",
    )
    parser.add_argument(
        "--scenario", choices=("tracking", "storefront"), action="append", help="default: both (repeatable)"
    )
    args = parser.parse_args(argv)
    args.scenario = args.scenario or ["tracking", "storefront"]
    os.environ.pop("http_proxy", None)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
