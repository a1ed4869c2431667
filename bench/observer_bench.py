"""Does the data-layer observer cost a shopper anything? Page-load time in a real Chromium, with and without it.

Starts the stand-in storefront and two `clickwatch up` processes in front of it (one with the observer, one with
`--no-observer`, sharing one CA), then loads the stand-in's home page in headless system Chromium through each
proxy, alternating, `--loads` times each: in a fresh browser context per load (a first visit: nothing cached) and
in one context per setting loading page after page (caches warm, as a shopper browses). For each load it reads
the page's Navigation Timing entry: `domContentLoadedEventEnd` and `loadEventEnd` (milliseconds from navigation
start). It prints median, p90 and mean per setting and the difference. It prints figures; it is not a test.

    .venv/bin/python bench/observer_bench.py                 # 20 loads each, accelerator-style home page
    .venv/bin/python bench/observer_bench.py --spartacus --loads 40
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from clickwatch.standin import shopper  # noqa: E402
from clickwatch.standin.server import TAG_PATTERN, StandIn  # noqa: E402

CLICKWATCH = Path(sys.executable).with_name("clickwatch")
_TIMING = """() => {
  const [n] = performance.getEntriesByType("navigation");
  return {dcl: n.domContentLoadedEventEnd, load: n.loadEventEnd,
          observer: !!document.querySelector('script[src="/__clickwatch/observer.js"]')};
}"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def clickwatch_up(workdir: Path, name: str, confdir: Path, *extra: str) -> Iterator[str]:
    """A `clickwatch up` child process; yields its proxy URL once it listens."""
    port, dashboard = free_port(), free_port()
    config = workdir / "clickwatch.toml"
    config.write_text(f"[capture]\ntag_pattern = '{TAG_PATTERN}'\n")
    command = [
        str(CLICKWATCH), "up", "--proxy-port", str(port), "--dashboard-port", str(dashboard),
        "--db", str(workdir / f"{name}.db"), "--config", str(config), "--upstream-insecure", "--quiet",
        "--set", f"confdir={confdir}", *extra,
    ]  # fmt: skip
    log = (workdir / f"{name}.log").open("wb")
    child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            if child.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"clickwatch up ({name}) did not start; see {workdir / (name + '.log')}")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        child.send_signal(signal.SIGINT)
        try:
            child.wait(20)
        except subprocess.TimeoutExpired:
            child.kill()
        log.close()


def _profile(browser: Any, proxy: str) -> Any:
    """A browser profile using the proxy without credentials: Playwright answers proxy credentials by
    intercepting every request, which switches Chromium's HTTP cache off; a shopper's browser keeps it."""
    return browser.new_context(proxy={"server": proxy}, viewport={"width": 1280, "height": 800})


def describe(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return f"median {statistics.median(values):7.1f}  p90 {p90:7.1f}  mean {statistics.fmean(values):7.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--loads", type=int, default=20, help="page loads per setting (default 20)")
    parser.add_argument("--spartacus", action="store_true", help="the Spartacus-style stand-in")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured loads per setting first (default 3)")
    args = parser.parse_args(argv)

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="clickwatch-observer-bench-") as scratch:
        workdir = Path(scratch)
        confdir = workdir / "mitm"
        with (
            StandIn(spartacus=args.spartacus, directory=workdir / "standin") as standin,
            clickwatch_up(workdir, "with-observer", confdir) as with_observer,
            clickwatch_up(workdir, "without-observer", confdir, "--no-observer") as without_observer,
        ):
            home = shopper.trusting_home(workdir / "home", confdir / "mitmproxy-ca-cert.pem")
            url = standin.storefront_url()
            results: dict[str, dict[str, list[float]]] = {
                setting: {"dcl": [], "load": [], "warm dcl": [], "warm load": []}
                for setting in ("with observer", "without observer")
            }
            proxies = {"with observer": with_observer, "without observer": without_observer}
            with sync_playwright() as playwright:
                browser = shopper.launch(playwright, home)
                # Warm: one profile per setting, loading page after page as a shopper browses (caches warm).
                warm = {name: _profile(browser, proxy) for name, proxy in proxies.items()}
                warm_pages = {name: context.new_page() for name, context in warm.items()}
                try:
                    for index in range(args.warmup + args.loads):
                        # Alternate the order, so that a slow spell of the machine hits both alike.
                        order = list(proxies) if index % 2 == 0 else list(reversed(proxies))
                        for setting in order:
                            # Cold: a fresh profile per load, as a first visit (nothing cached).
                            context = _profile(browser, proxies[setting])
                            page = context.new_page()
                            page.goto(url, wait_until="load")
                            cold = page.evaluate(_TIMING)
                            context.close()
                            warm_pages[setting].goto(url, wait_until="load")
                            hot = warm_pages[setting].evaluate(_TIMING)
                            for timing in (cold, hot):
                                if timing["observer"] != (setting == "with observer"):
                                    raise SystemExit(f"{setting}: observer present = {timing['observer']}")
                            if index >= args.warmup:
                                for prefix, timing in (("", cold), ("warm ", hot)):
                                    results[setting][prefix + "dcl"].append(float(timing["dcl"]))
                                    results[setting][prefix + "load"].append(float(timing["load"]))
                finally:
                    for context in warm.values():
                        context.close()
                    browser.close()
    style = "Spartacus-style" if args.spartacus else "accelerator-style"
    print(f"stand-in {style} home page over HTTPS through clickwatch up, {args.loads} loads each, ms:")
    for label, prefix in (("first visit (fresh profile)", ""), ("next pages (same profile)", "warm ")):
        print(f" {label}:")
        for setting, figures in results.items():
            print(f"  {setting:<17} DOMContentLoaded {describe(figures[prefix + 'dcl'])}")
            print(f"  {'':<17} load             {describe(figures[prefix + 'load'])}")
        with_ = statistics.median(results["with observer"][prefix + "load"])
        without = statistics.median(results["without observer"][prefix + "load"])
        print(f"  load event, median with minus without: {with_ - without:+.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
