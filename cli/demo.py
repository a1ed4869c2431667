"""`clickwatch demo`: the stand-in storefront and tenant, the proxy and the dashboard, started together.

Without `--journey` it runs until Ctrl-C while a person browses. With `--journey` a headless Chromium takes a
scripted visit through the proxy (home, read, accept consent, product, add to cart, search; or the `--steps`
given), and the run is judged as `clickwatch check` would: exit 0 when healthy, 1 when not. `clickwatch up` runs
as a child process, so the demo exercises exactly what a user starts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TextIO

from clickwatch.cli.sources import ApiSource
from clickwatch.standin.faults import FaultError, Faults
from clickwatch.standin.server import TAG_PATTERN, StandIn

LISTEN = "127.0.0.1"
STARTUP_SECONDS = 30.0
STOP_SECONDS = 20.0
# The shopper reads the home page (and its banner) for a couple of seconds, then accepts: whatever the tag sends
# before that is sent without consent, however soon the acceptance follows.
JOURNEY_STEPS = ("home", "read", "accept", "product", "add-to-cart", "search")
# What the check expects delivered, for the steps that push it (with consent given).
_EXPECTED_BY_STEP = {"product": "ProductView", "add-to-cart": "AddedToCart", "search": "KeywordSearch"}
# With the service worker: once it controls the page, a reload comes from its cache, and the visit goes on there.
WORKER_JOURNEY_STEPS = ("home", "read", "accept", "worker", "reload", "product", "add-to-cart", "search")
# Short windows in journey mode, so the verdict comes seconds after the visit. A person reads a page longer
# than a script does, and the proxy sees a newly given consent only on the next storefront request: the
# interactive demo gives that more time.
JOURNEY_GRACE_SECONDS = 2
JOURNEY_SILENCE_SECONDS = 3
INTERACTIVE_GRACE_SECONDS = 30
CHECK_WAIT_SECONDS = 20.0


class DemoUsageError(Exception):
    """Something the user can fix (bad fault, missing browser, busy port): one line, exit code 2."""


@dataclass(frozen=True)
class DemoOptions:
    """What `clickwatch demo` was asked for."""

    journey: bool
    faults: Faults
    spartacus: bool
    proxy_port: int
    dashboard_port: int
    db: str | None
    chromium: Path
    shop_port: int = 0  # 0: a free port
    tenant_port: int = 0
    set_options: tuple[str, ...] = ()
    service_worker: bool = False  # Spartacus style with a service worker like Angular's (implies spartacus)
    steps: tuple[str, ...] = JOURNEY_STEPS
    carousel: bool = False


def parse_steps(text: str | None) -> tuple[str, ...]:
    """The --steps value (comma-separated shopper steps), or a DemoUsageError naming the unknown one."""
    from clickwatch.standin.shopper import STEPS

    if text is None:
        return JOURNEY_STEPS
    steps = tuple(step.strip() for step in text.split(",") if step.strip())
    unknown = [step for step in steps if step not in STEPS]
    if unknown or not steps:
        raise DemoUsageError(f"--steps: unknown step {', '.join(unknown) or '(none)'} (known: {', '.join(STEPS)})")
    if steps[0] != "home":
        steps = ("home", *steps)  # every visit starts on the home page
    return steps


def expected(steps: tuple[str, ...]) -> tuple[str, ...]:
    """The schemas a journey's steps make the tag send (what `clickwatch check` then expects delivered)."""
    return tuple(dict.fromkeys(_EXPECTED_BY_STEP[step] for step in steps if step in _EXPECTED_BY_STEP))


def parse_faults(names: list[str]) -> Faults:
    """The --fault values, or a DemoUsageError naming the bad one."""
    try:
        return Faults.parse(names)
    except FaultError as exc:
        raise DemoUsageError(f"--fault: {exc}") from None


def write_config(path: Path, journey: bool) -> None:
    """The demo's clickwatch configuration: the stand-in's tag host, and windows fit for the kind of visit."""
    grace = JOURNEY_GRACE_SECONDS if journey else INTERACTIVE_GRACE_SECONDS
    lines = [
        "# written by clickwatch demo",
        "[capture]",
        f"tag_pattern = '{TAG_PATTERN}'",
        "[consent]",
        f"grace_seconds = {grace}",
    ]
    if journey:
        lines += ["[windows]", f"silence_seconds = {JOURNEY_SILENCE_SECONDS}"]
    path.write_text("\n".join(lines) + "\n")


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((LISTEN, port), timeout=0.5):
        return True
    return False


def _healthy(url: str) -> bool:
    with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/healthz", timeout=2) as answer:
        return bool(answer.status == 200)
    return False


@contextlib.contextmanager
def clickwatch_up(options: DemoOptions, db: str, config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`clickwatch up` as a child process, ready (proxy listening, dashboard reading the store) when yielded."""
    command = [
        sys.executable, "-m", "clickwatch.cli.main", "up",
        "--proxy-port", str(options.proxy_port), "--dashboard-port", str(options.dashboard_port),
        "--listen-host", LISTEN, "--db", db, "--config", str(config), "--upstream-insecure",
    ]  # fmt: skip
    # Proxy credentials name the run (any user name, any password), for the scripted browser and a person's alike.
    command += ["--set", "proxyauth=any"]
    for option in options.set_options:
        command += ["--set", option]
    if options.journey:
        command += ["--quiet"]
    with log.open("wb") as log_file:
        output = log_file if options.journey else None  # a person watches the progress lines
        child = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT if options.journey else None)
        try:
            dashboard = f"http://{LISTEN}:{options.dashboard_port}"
            deadline = time.monotonic() + STARTUP_SECONDS
            while not (_listening(options.proxy_port) and _healthy(dashboard)):
                if child.poll() is not None:
                    lines = log.read_text(errors="replace").strip().splitlines() if options.journey else []
                    raise DemoUsageError(lines[-1] if lines else f"clickwatch up exited with {child.returncode}")
                if time.monotonic() > deadline:
                    raise DemoUsageError(f"clickwatch up did not start within {STARTUP_SECONDS:.0f} s (log: {log})")
                time.sleep(0.1)
            yield child
        finally:
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
                try:
                    child.wait(STOP_SECONDS)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()


def print_banner(standin: StandIn, options: DemoOptions, db: str, ca_cert: Path, out: TextIO) -> None:
    """What is running and what to open."""
    style = "Spartacus style" if options.spartacus or options.service_worker else "accelerator style"
    if options.service_worker:
        style += ", with a service worker"
    proxy = f"http://{LISTEN}:{options.proxy_port}"
    out.write("clickwatch demo: a stand-in storefront and ISS tenant behind the clickwatch proxy\n")
    style += ", with a carousel" if options.carousel else ""
    out.write(f"  storefront  {standin.storefront_url()}  ({style}; also {standin.storefront_url('http')})\n")
    out.write(f"  tenant      {standin.tenant_origin()}  faults: {', '.join(options.faults.names()) or 'none'}\n")
    out.write(f"  proxy       {proxy}  CA certificate {ca_cert}\n")
    out.write(f"  dashboard   http://{LISTEN}:{options.dashboard_port}/\n")
    out.write(f"  store       {db}\n")
    if not options.journey:
        out.write(
            f"Browse the storefront through the proxy, e.g.\n"
            f"  chromium --proxy-server={proxy} --proxy-bypass-list='<-loopback>' {standin.storefront_url()}\n"
            f"(trust the CA certificate first, see the README), accept the consent banner, view a product.\n"
            f"The proxy asks for credentials: the user name is the run (any password), e.g. http://alice:x@{proxy[7:]}\n"
            f"Switch faults while it runs:\n"
            f'  curl --insecure -X POST {standin.tenant_origin()}/admin/faults -d \'{{"faults": ["status:503"]}}\'\n'
            f"Ctrl-C stops everything.\n"
        )
    out.flush()


def take_journey(standin: StandIn, options: DemoOptions, ca_cert: Path, home: Path, run: str, out: TextIO) -> None:
    """Headless Chromium through the proxy as run `run`, taking the journey's steps."""
    from playwright.sync_api import sync_playwright

    from clickwatch.standin import shopper

    shopper.trusting_home(home, ca_cert)
    with sync_playwright() as playwright:
        browser = shopper.launch(playwright, home, options.chromium)
        try:
            context = shopper.visit(browser, f"http://{LISTEN}:{options.proxy_port}", run)
            walker = shopper.Shopper(context.new_page(), standin.storefront_url(), settle_seconds=3.0)
            worker = options.service_worker and options.steps == JOURNEY_STEPS
            walker.walk(WORKER_JOURNEY_STEPS if worker else options.steps)
            if options.service_worker:
                state = next((line for line in walker.worker_state().splitlines() if "Driver state" in line), "")
                out.write(f"service worker (/ngsw/state): {state or 'no state'}\n")
            # Closing the tab first lets the data-layer observer send its last report (pagehide).
            walker.page.close()
            time.sleep(0.3)
            context.close()
        finally:
            browser.close()
    taken = " → ".join(name for name, _ in walker.steps)
    unanswered = f" (no answer yet after: {', '.join(walker.unsettled)})" if walker.unsettled else ""
    out.write(f"journey: {taken} as run {run!r}{unanswered}\n")
    out.flush()


def judge(dashboard: str, run: str, out: TextIO, steps: tuple[str, ...] = JOURNEY_STEPS) -> bool:
    """Wait for the run's pending decisions, then print the `clickwatch check` report; True when healthy."""
    from clickwatch.cli.check import DEFAULT_FAIL_ON, Expectation, parse_fail_on, print_report, run_check

    source = ApiSource(dashboard)
    fail_on = parse_fail_on(DEFAULT_FAIL_ON)
    run_check(source, {"run": run}, fail_on, [], CHECK_WAIT_SECONDS)  # decisions first, so no time is spent on
    report = run_check(source, {"run": run}, fail_on, [Expectation(e) for e in expected(steps)], 0.0)  # unmet ones
    print_report(report, out)
    print_funnel(source, run, out)
    return report.healthy


def print_funnel(source: ApiSource, run: str, out: TextIO) -> None:
    """What the storefront pushed, what the tag sent, what the tenant took: per schema, from the observer."""
    from clickwatch.cli.sources import SourceError

    try:
        schemas = source.funnel(run)
    except (SourceError, KeyError) as exc:
        out.write(f"funnel: not available ({exc})\n")
        return
    out.write("funnel (data layer -> tenant):\n")
    out.write(f"  {'schema':<18} {'pushed':>7} {'w/ consent':>10} {'sent':>6} {'delivered':>9}\n")
    for row in schemas:
        out.write(
            f"  {row['schema']:<18} {row['pushed']:>7} {row['pushed_with_consent']:>10} {row['sent']:>6} "
            f"{row['delivered']:>9}\n"
        )
    out.flush()


def _check_journey_tools(options: DemoOptions) -> None:
    from clickwatch.standin.shopper import ShopperError, require_certutil, require_chromium

    try:
        require_chromium(options.chromium)
        require_certutil()
    except ShopperError as exc:
        raise DemoUsageError(str(exc)) from None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        raise DemoUsageError("the scripted journey needs Playwright (pip install playwright)") from None


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_demo(options: DemoOptions, out: TextIO = sys.stdout) -> int:
    """Run the demo; 0 healthy (or stopped by Ctrl-C), 1 unhealthy journey."""
    from clickwatch.standin.shopper import ShopperError

    if options.journey:
        _check_journey_tools(options)
    # SIGINT too, explicitly: a shell script's `clickwatch demo &` starts with SIGINT ignored, and `kill -INT`
    # must still stop it (and its `clickwatch up` child) cleanly.
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    with tempfile.TemporaryDirectory(prefix="clickwatch-demo-") as scratch:
        state = Path(scratch)
        db = os.path.abspath(options.db) if options.db else str(state / "demo.db")
        config = state / "clickwatch.toml"
        write_config(config, options.journey)
        ca_cert = Path("~/.mitmproxy/mitmproxy-ca-cert.pem").expanduser()
        try:
            with (
                StandIn(
                    spartacus=options.spartacus or options.service_worker,
                    service_worker=options.service_worker,
                    faults=options.faults,
                    carousel=options.carousel,
                    directory=state / "standin",
                    ports={k: v for k, v in (("storefront", options.shop_port), ("tenant", options.tenant_port)) if v},
                ) as standin,
                clickwatch_up(options, db, config, state / "clickwatch-up.log") as child,
            ):
                print_banner(standin, options, db, ca_cert, out)
                if not options.journey:
                    child.wait()
                    return 0
                run = f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
                try:
                    take_journey(standin, options, ca_cert, state / "browser-home", run, out)
                except ShopperError as exc:
                    raise DemoUsageError(str(exc)) from None
                return 0 if judge(f"http://{LISTEN}:{options.dashboard_port}", run, out, options.steps) else 1
        except KeyboardInterrupt:
            out.write("clickwatch demo: stopped\n")
            return 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
