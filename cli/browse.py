"""`clickwatch browse [URL]`: a browser with a fresh profile that goes through the proxy as a run of its own and
trusts clickwatch's CA for that profile only.

Chromium and Chrome trust the CA by its public-key pin (`--ignore-certificate-errors-spki-list`, which Chromium
honours only with a `--user-data-dir` of its own: the fresh profile); Firefox by the certificate database of a
fresh profile (certutil). The system's trust store is never touched. The clickwatch is the one `--url` (or
CLICKWATCH_URL) names, or a `clickwatch up` started on free loopback ports for as long as the browser is open.

With `--headless` the page is loaded, the network is given time to go quiet (bounded), and the run is judged by
`clickwatch check`'s rules: exit 0 when nothing failed or was rejected and no error finding was raised, 1
otherwise.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from clickwatch.cli.check import DEFAULT_FAIL_ON, parse_fail_on, print_report, run_check
from clickwatch.cli.instance import Server, ServerError, connect_remote, start_local
from clickwatch.cli.sources import SourceError

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext

PROXY_PASSWORD = "clickwatch"  # proxyauth=any: only the user name, the run, counts
QUIET_SECONDS = 2.0  # the run has taken nothing new for this long: the page has stopped sending
LOAD_TIMEOUT_SECONDS = 30.0
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")
CHROME_CANDIDATES = ("google-chrome", "google-chrome-stable", "/opt/google/chrome/chrome")
FIREFOX_CANDIDATES = ("firefox", "firefox-esr")
# Chromium flags for a profile that is only a tool: no first-run pages, no background traffic of its own that
# would show up in the run.
CHROMIUM_ARGS = (
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


class BrowseError(Exception):
    """Something the user can fix (no such browser, bad URL, clickwatch unreachable): exit code 2."""


@dataclass(frozen=True)
class BrowseOptions:
    """What `clickwatch browse` was asked for."""

    url: str
    run: str
    browser: str = "chromium"
    headless: bool = False
    dashboard: str | None = None  # a running clickwatch's dashboard; None: start one
    proxy: str | None = None  # that clickwatch's proxy (host:port)
    token: str | None = None
    db: str | None = None  # for the clickwatch browse starts
    config: str | None = None
    up_args: Sequence[str] = field(default_factory=tuple)
    wait: float = 30.0
    fail_on: str = DEFAULT_FAIL_ON


@dataclass(frozen=True)
class Browser:
    """A browser executable and its family (how it is told to trust a CA)."""

    family: str  # "chromium" or "firefox"
    executable: str


def default_run() -> str:
    """A fresh run name: browse-YYYYmmdd-HHMMSS."""
    return f"browse-{time.strftime('%Y%m%d-%H%M%S')}"


def check_url(url: str) -> str:
    """The page to open: http(s) URLs only (a bare host gets https://), or about:blank."""
    if url == "about:blank":
        return url
    if "://" not in url:
        url = f"https://{url}"
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BrowseError(f"URL {url!r}: give an http or https address, e.g. https://shop.example/")
    return url


def find_browser(name: str) -> Browser:
    """The browser named by --browser: chromium, chrome, firefox, or the path of an executable."""
    families = {"chromium": CHROMIUM_CANDIDATES, "chrome": CHROME_CANDIDATES, "firefox": FIREFOX_CANDIDATES}
    if name in families:
        for candidate in families[name]:
            found = candidate if os.path.isabs(candidate) and os.access(candidate, os.X_OK) else shutil.which(candidate)
            if found:
                return Browser("firefox" if name == "firefox" else "chromium", found)
        raise BrowseError(f"--browser {name}: not found (looked for {', '.join(families[name])})")
    if not (os.path.isfile(name) and os.access(name, os.X_OK)):
        raise BrowseError(f"--browser {name!r}: give chromium, chrome, firefox or the path of a browser executable")
    return Browser("firefox" if "firefox" in os.path.basename(name).lower() else "chromium", name)


def spki_pin(ca_cert: Path) -> str:
    """Base64 of the SHA-256 of the certificate's SubjectPublicKeyInfo, as --ignore-certificate-errors-spki-list
    takes it."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    certificate = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    spki = certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def chromium_args(ca_cert: Path, headless: bool) -> list[str]:
    """Flags of a Chromium that trusts `ca_cert` (and nothing more) and proxies loopback too."""
    args = [
        *CHROMIUM_ARGS,
        "--proxy-bypass-list=<-loopback>",
        f"--ignore-certificate-errors-spki-list={spki_pin(ca_cert)}",
    ]
    if headless:
        args.append("--disable-gpu")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium refuses to start as root with its sandbox
    return args


def firefox_profile(profile: Path, ca_cert: Path, proxy: str) -> Path:
    """A fresh Firefox profile whose own certificate database trusts `ca_cert` and whose proxy is `proxy`."""
    from clickwatch.standin.shopper import ShopperError, trust_in_database

    try:
        trust_in_database(profile, ca_cert)
    except ShopperError as exc:
        raise BrowseError(str(exc)) from None
    host, _, port = proxy.rpartition(":")
    prefs = {
        "network.proxy.type": 1,
        "network.proxy.http": host,
        "network.proxy.http_port": int(port),
        "network.proxy.ssl": host,
        "network.proxy.ssl_port": int(port),
        "network.proxy.no_proxies_on": "",
        "network.proxy.allow_hijacking_localhost": True,
        "security.enterprise_roots.enabled": False,
        "browser.shell.checkDefaultBrowser": False,
        "browser.startup.homepage_override.mstone": "ignore",
        "datareporting.policy.dataSubmissionEnabled": False,
        "toolkit.telemetry.reportingpolicy.firstRun": False,
        "app.update.auto": False,
        "network.captive-portal-service.enabled": False,
    }
    lines = [f"user_pref({_js(name)}, {_js(value)});" for name, value in prefs.items()]
    (profile / "user.js").write_text("\n".join(lines) + "\n")
    return profile


def _js(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


@contextlib.contextmanager
def clickwatch_for(options: BrowseOptions, scratch: Path) -> Iterator[Server]:
    """The clickwatch named by --url, or one started for as long as the block lasts."""
    try:
        if options.dashboard:
            yield connect_remote(options.dashboard, options.proxy, options.token, scratch / "remote")
            return
        with start_local(scratch / "clickwatch", options.config, options.up_args, options.db) as server:
            yield server
    except ServerError as exc:
        raise BrowseError(str(exc)) from None


def run_url(server: Server, run: str) -> str:
    """The live page of the dashboard, filtered to the run."""
    return f"{server.dashboard_url}/?{urllib.parse.urlencode({'run': run})}"


def run_browse(options: BrowseOptions, out: TextIO = sys.stdout) -> int:
    """Open the browser; with --headless judge the run (0 healthy, 1 not); BrowseError for usage problems."""
    browser = find_browser(options.browser)
    url = check_url(options.url)
    fail_on = parse_fail_on(options.fail_on)
    if options.headless and browser.family == "firefox":
        raise BrowseError("--headless drives Chromium or Chrome; Firefox opens for a person only")
    with (
        tempfile.TemporaryDirectory(prefix="clickwatch-browse-") as scratch,
        clickwatch_for(options, Path(scratch)) as server,
    ):
        out.write(f"clickwatch browse: run {options.run!r} through the proxy {server.proxy}\n")
        out.write(f"  dashboard  {run_url(server, options.run)}\n")
        out.flush()
        profile = Path(scratch) / "profile"
        if browser.family == "firefox":
            firefox_profile(profile, server.ca_cert, server.proxy)
            out.write(f"  Firefox asks for the proxy's credentials: user name {options.run}, any password\n")
            out.flush()
            subprocess.run([browser.executable, "--profile", str(profile), "--no-remote", url], check=False)
            return 0
        with _chromium(browser, server, options, profile) as context:
            if not options.headless:
                page = context.pages[0] if context.pages else context.new_page()
                page.goto(url, wait_until="commit", timeout=LOAD_TIMEOUT_SECONDS * 1000)
                out.write("  close the browser to stop\n")
                out.flush()
                context.wait_for_event("close", timeout=0)
                return 0
            problem = _load(context, url, options, server, out)
        return audit(server, options.run, fail_on, options.wait, problem, out)


@contextlib.contextmanager
def _chromium(browser: Browser, server: Server, options: BrowseOptions, profile: Path) -> Iterator[BrowserContext]:
    """Chromium on a fresh profile through the proxy as the run, trusting the proxy's CA by its pin."""
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise BrowseError("clickwatch browse needs Playwright (pip install playwright)") from None
    # Proxy variables would only confuse: the proxy is given to the browser itself.
    env: dict[str, str | float | bool] = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    with sync_playwright() as playwright:
        try:
            context = playwright.chromium.launch_persistent_context(
                str(profile),
                executable_path=browser.executable,
                headless=options.headless,
                args=chromium_args(server.ca_cert, options.headless),
                proxy={"server": f"http://{server.proxy}", "username": options.run, "password": PROXY_PASSWORD},
                env=env,
            )
        except PlaywrightError as exc:
            raise BrowseError(f"{browser.executable} did not start: {str(exc).splitlines()[0]}") from None
        try:
            yield context
        finally:
            with contextlib.suppress(PlaywrightError):
                context.close()


def _load(context: BrowserContext, url: str, options: BrowseOptions, server: Server, out: TextIO) -> str | None:
    """Load the page, wait for the browser's network and then the run to go quiet (bounded); None when the page
    loaded, else why not."""
    from playwright.sync_api import Error as PlaywrightError

    page = context.pages[0] if context.pages else context.new_page()
    started = time.monotonic()
    problem = None
    try:
        answer = page.goto(url, wait_until="load", timeout=LOAD_TIMEOUT_SECONDS * 1000)
        status = f"{answer.status}" if answer is not None else "no answer"
    except PlaywrightError as exc:
        status = problem = f"not loaded: {str(exc).splitlines()[0]}"
    with contextlib.suppress(PlaywrightError):
        page.wait_for_load_state("networkidle", timeout=max(1.0, options.wait) * 1000)
    quiet = _wait_quiet(server, options.run, deadline=started + LOAD_TIMEOUT_SECONDS + options.wait)
    # Closing the page lets the data-layer observer send its last report (pagehide).
    with contextlib.suppress(PlaywrightError):
        page.close()
    out.write(f"loaded {url} ({status}) in {time.monotonic() - started:.1f} s{'' if quiet else ', still sending'}\n")
    out.flush()
    return problem


def _wait_quiet(server: Server, run: str, deadline: float) -> bool:
    """Wait until the run's deliveries have not changed for QUIET_SECONDS (or the deadline); True when quiet."""
    api = server.api()
    last: Any = None
    since = time.monotonic()
    while time.monotonic() < deadline:
        try:
            counts = api.summary(run=run)["deliveries"]
        except SourceError:
            counts = None
        if counts != last:
            last, since = counts, time.monotonic()
        elif time.monotonic() - since >= QUIET_SECONDS:
            return True
        time.sleep(0.25)
    return False


def audit(server: Server, run: str, fail_on: frozenset[str], wait: float, problem: str | None, out: TextIO) -> int:
    """Print the run's deliveries, findings and verdict by `clickwatch check`'s rules; 0 healthy, 1 not (a page
    that did not load is not a healthy one: nothing was audited)."""
    api = server.api()
    try:
        # A run that holds nothing is a page that sent nothing clickwatch records: it does not track.
        report = run_check(api, {"run": run}, fail_on, [], wait, require_run=False)
        deliveries = list(api.deliveries(run=run))
        findings = api.findings(run=run)
    except SourceError as exc:
        raise BrowseError(str(exc)) from None
    if problem is not None:
        report.reasons.insert(0, f"the page was {problem}")
    out.write(f"deliveries of run {run!r}: {len(deliveries)}\n")
    for item in sorted(deliveries, key=lambda d: d["sent_at"]):
        kinds = ", ".join(f["kind"] for f in item["findings"]) or "-"
        out.write(
            f"  #{item['id']} {item['kind']} {item['schema'] or '-'} {item['verdict']} "
            f"({item['status_code'] or item.get('error') or 'no answer'}) consent={item.get('consent') or '-'} "
            f"findings: {kinds}\n"
        )
    if not deliveries:
        out.write("  no tracking call was seen (nothing sent, or the tag's hosts are not the configured ones)\n")
    out.write(f"findings of run {run!r}: {len(findings)}\n")
    for finding in reversed(findings):
        out.write(f"  {finding['severity']} {finding['kind']}: {finding['message']}\n")
    print_report(report, out)
    out.flush()
    return 0 if report.healthy else 1
