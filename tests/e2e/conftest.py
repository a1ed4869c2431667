"""The end-to-end rig: the stand-in, a real `clickwatch up` (proxy and dashboard) and the system Chromium.

One `clickwatch up` and one browser serve the whole session, so the suite stays quick; every test browses as
its own run (the proxy's user name, with `proxyauth=any`), so its deliveries, findings and check are its own.
Stand-ins are per test: they start in milliseconds, and a fault switched on for one test cannot leak into
another. Chromium trusts the proxy's CA through the NSS database of its own home directory; certificate
errors are never ignored. A missing Chromium or certutil fails the session with how to install it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, Playwright
from prometheus_client.parser import text_string_to_metric_families

from clickwatch.standin import shopper
from clickwatch.standin.faults import Faults
from clickwatch.standin.server import TAG_PATTERN, StandIn
from tests.rig import CLICKWATCH, Up, clickwatch_up, wait_until

GRACE_SECONDS = 2.0
SILENCE_SECONDS = 3.0
SLOW_SECONDS = 1.0
CHECK_WAIT_SECONDS = 15.0
ECHO_SECONDS = 6.0  # without the observer: how long a Spartacus-style visitor's calls wait for a consent echo
CONFIG = f"""
[capture]
tag_pattern = '{TAG_PATTERN}'
[consent]
grace_seconds = {GRACE_SECONDS}
[windows]
silence_seconds = {SILENCE_SECONDS}
slow_delivery_seconds = {SLOW_SECONDS}
"""
# `clickwatch up --no-observer` judges from the network only: a Spartacus-style visitor's calls wait for an echo.
NETWORK_CONFIG = CONFIG.replace("[consent]\n", f"[consent]\necho_seconds = {ECHO_SECONDS}\n")
_runs = itertools.count(1)


class Clickwatch(Up):
    """The running `clickwatch up` (tests.rig.Up), with its dashboard API, its metrics and `clickwatch check`."""

    def api(self, path: str, **params: Any) -> Any:
        answer = httpx.get(f"{self.dashboard_url}{path}", params=params, timeout=10, trust_env=False)
        answer.raise_for_status()
        return answer.json()

    def deliveries(self, run: str, **filters: Any) -> list[dict[str, Any]]:
        """The run's deliveries, oldest first."""
        items: list[dict[str, Any]] = self.api("/api/deliveries", run=run, limit=500, **filters)["items"]
        return sorted(items, key=lambda d: (d["sent_at"], d["id"]))

    def detail(self, delivery_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self.api(f"/api/deliveries/{delivery_id}")
        return result

    def body(self, delivery_id: int) -> Any:
        """A delivery's request body, parsed as JSON."""
        return json.loads(self.detail(delivery_id)["request"]["body"]["text"])

    def summary(self, run: str) -> dict[str, Any]:
        result: dict[str, Any] = self.api("/api/summary", run=run)
        return result

    def finding_kinds(self, run: str) -> Counter[str]:
        """Every finding of the run (about a delivery or about a visitor), counted by kind."""
        return Counter(f["kind"] for f in self.api("/api/findings", run=run, limit=500)["items"])

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        text = httpx.get(f"{self.dashboard_url}/metrics", timeout=10, trust_env=False).text
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def check(self, run: str, *args: str, wait: float = CHECK_WAIT_SECONDS) -> subprocess.CompletedProcess[str]:
        """`clickwatch check` against the dashboard, for one run, as a CI job runs it."""
        command = [str(CLICKWATCH), "check", "--url", self.dashboard_url, "--run", run, "--wait", str(wait), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=wait + 60, check=False)


def metric_delta(
    before: dict[tuple[str, frozenset[tuple[str, str]]], float],
    after: dict[tuple[str, frozenset[tuple[str, str]]], float],
    name: str,
    **labels: str,
) -> float:
    """How much the samples named `name` whose labels include `labels` grew."""
    wanted = set(labels.items())

    def total(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> float:
        return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)

    return total(after) - total(before)


@pytest.fixture(scope="session")
def system_tools() -> None:
    """Chromium and certutil are required: a missing one fails the suite, saying how to install it."""
    try:
        shopper.require_chromium()
        shopper.require_certutil()
    except shopper.ShopperError as exc:
        pytest.fail(f"{exc}; the end-to-end suite does not run without it")


@contextlib.contextmanager
def _clickwatch_up(root: Path, confdir: Path, config_text: str, *extra: str) -> Iterator[Clickwatch]:
    """`clickwatch up` as a user starts it: a real process, its own store, short decision windows."""
    config = root / "clickwatch.toml"
    config.write_text(config_text)
    args = ["--config", str(config), "--upstream-insecure", "--set", "proxyauth=any", *extra]
    with clickwatch_up(root, *args, confdir=confdir) as up:
        yield Clickwatch(**vars(up))  # the same process, seen with the e2e suite's readers


@pytest.fixture(scope="session")
def clickwatch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clickwatch]:
    """`clickwatch up` on its defaults (the data-layer observer on), with short decision windows."""
    root = tmp_path_factory.mktemp("clickwatch-up")
    with _clickwatch_up(root, root / "mitm", CONFIG) as running:
        yield running


@pytest.fixture(scope="session")
def clickwatch_network(clickwatch: Clickwatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clickwatch]:
    """`clickwatch up --no-observer`: judging from network traffic only (same CA as `clickwatch`)."""
    root = tmp_path_factory.mktemp("clickwatch-up-network")
    with _clickwatch_up(root, clickwatch.ca_cert.parent, NETWORK_CONFIG, "--no-observer") as running:
        yield running


@pytest.fixture(scope="session")
def browser_home(system_tools: None, clickwatch: Clickwatch, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home directory whose NSS database trusts the proxy's CA (and nothing else extra)."""
    return shopper.trusting_home(tmp_path_factory.mktemp("browser-home"), clickwatch.ca_cert)


@pytest.fixture(scope="session")
def browser(playwright_driver: Playwright, browser_home: Path) -> Iterator[Browser]:
    """Headless system Chromium trusting the proxy's CA; each visit gets its own context and proxy user."""
    launched = shopper.launch(playwright_driver, browser_home)
    try:
        yield launched
    finally:
        launched.close()


@pytest.fixture
def make_standin() -> Iterator[Callable[..., StandIn]]:
    """Start stand-ins for this test (each with its own faults); all stop at teardown."""
    started: list[StandIn] = []

    def make(
        *faults: str,
        spartacus: bool = False,
        carousel: bool = False,
        csp: str | None = None,
        service_worker: bool = False,
        worker_hash_mismatch: bool = False,
        server_rendered: bool = False,
    ) -> StandIn:
        standin = StandIn(
            spartacus=spartacus,
            faults=Faults.parse(faults),
            carousel=carousel,
            csp=csp,
            service_worker=service_worker,
            worker_hash_mismatch=worker_hash_mismatch,
            server_rendered=server_rendered,
        ).start()
        started.append(standin)
        return standin

    yield make
    for standin in started:
        standin.stop()


@dataclass
class Visit:
    """One shopper's browser profile, browsing through clickwatch as one run."""

    run: str
    page: Page
    close: Callable[[], None]
    problems: list[str]
    har: Path | None = None  # the HAR Playwright writes of the visit when it closes (`recorded_visit`)

    def shopper(self, standin: StandIn, scheme: str = "https", settle_seconds: float = 3.0) -> shopper.Shopper:
        return shopper.Shopper(self.page, standin.storefront_url(scheme), settle_seconds=settle_seconds)


@contextlib.contextmanager
def _visit(
    browser: Browser, clickwatch: Clickwatch, request: pytest.FixtureRequest, har: Path | None = None
) -> Iterator[Visit]:
    # The run travels as the proxy user name: no ':' (it would start the password) and nothing to escape.
    run = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"e2e-{next(_runs)}-{request.node.name}").strip("-")[:90]
    context = shopper.visit(browser, clickwatch.proxy_url, run, record_har=har)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    closed = False

    def close() -> None:
        nonlocal closed
        if not closed:
            closed = True
            # Closing the tab first lets the data-layer observer send what it still holds (pagehide), as a
            # shopper's closing tab does; closing the whole profile at once would cut that report off.
            for open_page in context.pages:
                open_page.close()
            time.sleep(0.3)
            context.close()

    try:
        yield Visit(run, page, close, problems, har)
    finally:
        close()
        if request.node.stash.get(_FAILED, False):
            print(f"--- clickwatch up log ---\n{clickwatch.log()[-5000:]}")


@pytest.fixture
def visit(browser: Browser, clickwatch: Clickwatch, request: pytest.FixtureRequest) -> Iterator[Visit]:
    """A fresh browser context whose proxy user name is a run of its own; page errors are collected."""
    with _visit(browser, clickwatch, request) as running:
        yield running


@pytest.fixture
def recorded_visit(
    browser: Browser, clickwatch: Clickwatch, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Visit]:
    """As `visit`, with Playwright recording it to the HAR `visit.har` (written when the visit closes)."""
    with _visit(browser, clickwatch, request, tmp_path / "visit.har") as running:
        yield running


@pytest.fixture
def recorded_network_visit(
    browser: Browser, clickwatch_network: Clickwatch, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Visit]:
    """As `network_visit`, with Playwright recording it to the HAR `visit.har`."""
    with _visit(browser, clickwatch_network, request, tmp_path / "visit.har") as running:
        yield running


@pytest.fixture
def network_visit(browser: Browser, clickwatch_network: Clickwatch, request: pytest.FixtureRequest) -> Iterator[Visit]:
    """As `visit`, through the proxy that has the data-layer observer switched off."""
    with _visit(browser, clickwatch_network, request) as running:
        yield running


_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    report = yield
    if report.failed:
        item.stash[_FAILED] = True
    return report


def settled(clickwatch: Clickwatch, run: str, timeout: float = CHECK_WAIT_SECONDS) -> dict[str, Any]:
    """Wait until nothing of the run is pending (answers, grace and silence windows); return its summary."""

    def done() -> dict[str, Any] | None:
        summary = clickwatch.summary(run)
        quiet = summary["deliveries"]["pending"] == 0 and summary.get("pending_decisions", 0) == 0
        return summary if quiet else None

    time.sleep(0.3)  # let the proxy hand the last flows to the store
    return wait_until(done, timeout, f"run {run} to be decided", interval=0.2)
