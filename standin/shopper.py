"""A scripted shopper: headless system Chromium browsing the stand-in through the clickwatch proxy.

The browser trusts the proxy's CA the way a person's browser would: the CA is imported, with certutil, into
the NSS database of a home directory of the browser's own; certificate errors are never ignored. Playwright
drives the Debian Chromium (`apt-get install chromium`) and never downloads a browser.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page, Playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PROXY_PASSWORD = "clickwatch"  # with proxyauth=any only the user name (the run) matters
JOURNEY = ("home", "accept", "product", "add-to-cart", "search")
# Every step `Shopper.walk` knows, in the order its docstring names them.
STEPS = (
    "home", "home-link", "read", "accept", "accept-quick", "decline", "withdraw", "grant", "sign-in", "category",
    "product", "carousel-click", "add-to-cart", "search", "cart", "reload", "worker",
)  # fmt: skip
READ_SECONDS = 2.0  # a shopper reading the page (and its consent banner) before answering it
VIEW_TIMEOUT_MS = 15000
SETTLE_SECONDS = 5.0

_VIEW_CHANGED = """before => {
  const s = window.standinStorefront;
  return !!s && (s.id !== before.id || s.views > before.views) && !s.busy;
}"""
_WORKER_CONTROLS = "() => !!(navigator.serviceWorker && navigator.serviceWorker.controller)"
_WORKER_STATE = "() => fetch('/ngsw/state', {cache: 'no-store'}).then(r => r.text())"
_SETTLED = """() => {
  const s = window.standinStorefront, t = window.Y_TRACKING && window.Y_TRACKING.standin;
  return !!s && !s.busy && !!t && t.settled();
}"""


class ShopperError(Exception):
    """Something the shopper needs is missing; the message says how to install it."""


def require_chromium(path: Path = CHROMIUM) -> None:
    """Fail with an installation hint when the system Chromium is missing."""
    if not path.exists():
        raise ShopperError(
            f"{path} not found: the scripted journey needs the system Chromium (apt-get install chromium)"
        )


def require_certutil() -> str:
    """The path of NSS's certutil, or an installation hint."""
    certutil = shutil.which("certutil")
    if certutil is None:
        raise ShopperError("certutil not found: trusting the proxy's CA needs it (apt-get install libnss3-tools)")
    return certutil


def wait_for_certificate(path: Path, timeout: float = 30.0) -> None:
    """Wait until `path` holds a whole PEM certificate.

    mitmproxy makes its CA on first start only once its proxy is already accepting connections, so a proxy
    that answers does not yet mean the CA file is there.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            x509.load_pem_x509_certificate(path.read_bytes())
            return
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                raise ShopperError(f"{path}: no CA certificate after {timeout:.0f} s") from None
            time.sleep(0.1)


def trusting_home(directory: Path, ca_cert: Path) -> Path:
    """A home directory whose NSS database (~/.pki/nssdb, read by Chromium on Linux) trusts `ca_cert`."""
    wait_for_certificate(ca_cert)
    trust_in_database(directory / ".pki" / "nssdb", ca_cert)
    return directory


def trust_in_database(database: Path, ca_cert: Path) -> Path:
    """A new NSS certificate database in `database` (Chromium's ~/.pki/nssdb, a Firefox profile) trusting
    `ca_cert` as a certificate authority for web sites."""
    certutil = require_certutil()
    database.mkdir(parents=True, exist_ok=True)
    for command in (
        [certutil, "-d", f"sql:{database}", "-N", "--empty-password"],
        [certutil, "-d", f"sql:{database}", "-A", "-t", "C,,", "-n", "clickwatch proxy CA", "-i", str(ca_cert)],
    ):
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        if result.returncode != 0:
            raise ShopperError(f"{' '.join(command[:4])} failed: {(result.stderr or result.stdout).strip()}")
    return database


def launch(playwright: Playwright, home: Path, chromium: Path = CHROMIUM) -> Browser:
    """Headless Chromium with `home` as its home directory (and so its NSS trust store)."""
    require_chromium(chromium)
    # Proxy variables would only confuse: the proxy is set per visit. HOME points Chromium at the NSS database.
    env: dict[str, str | float | bool] = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["HOME"] = str(home)
    return playwright.chromium.launch(
        executable_path=str(chromium),
        headless=True,
        args=[*CHROMIUM_ARGS, "--proxy-bypass-list=<-loopback>"],
        env=env,
    )


def visit(browser: Browser, proxy_url: str, run: str, record_har: Path | None = None) -> BrowserContext:
    """A fresh browser profile sending everything, loopback included, through the proxy as run `run`; with
    `record_har`, Playwright writes what the browser sent and received to that HAR file when the profile closes."""
    return browser.new_context(
        proxy={"server": proxy_url, "username": run, "password": PROXY_PASSWORD},
        viewport={"width": 1280, "height": 800},
        record_har_path=record_har,
    )


@dataclass
class Shopper:
    """Clicks through the storefront like a person, waiting for each view and for the tag to settle."""

    page: Page
    storefront: str
    settle_seconds: float = SETTLE_SECONDS
    steps: list[tuple[str, float]] = field(default_factory=list)
    unsettled: list[str] = field(default_factory=list)

    def walk(self, steps: Iterable[str] = JOURNEY) -> Shopper:
        """Take the named steps in order (see STEPS)."""
        actions = {
            "home": self.home,
            "home-link": self.home_link,
            "read": self.read,
            "accept": self.accept,
            "accept-quick": self.accept_quick,
            "decline": self.decline,
            "withdraw": self.withdraw,
            "grant": self.grant,
            "sign-in": self.sign_in,
            "category": self.category,
            "product": self.product,
            "carousel-click": self.carousel_click,
            "add-to-cart": self.add_to_cart,
            "search": self.search,
            "cart": self.cart,
            "reload": self.reload,
            "worker": self.worker,
        }
        for step in steps:
            actions[step]()
        return self

    def home(self) -> None:
        """Open the storefront's home page."""
        self._navigate("home", lambda: self.page.goto(self.storefront))

    def home_link(self) -> None:
        """Back to the home page with the header's logo link (in Spartacus style a route, not a page load)."""
        self._navigate("home-link", lambda: self.page.click("a.logo"))

    def read(self) -> None:
        """Read the page for a moment (READ_SECONDS) before the next step, as a person does."""
        self._record("read", lambda: self.page.wait_for_timeout(READ_SECONDS * 1000))

    def accept(self) -> None:
        """Accept the tracking consent in the banner."""
        self._act("accept", lambda: self.page.click("#consent-accept"))

    def accept_quick(self) -> None:
        """Accept, and go on as soon as the data layer says so: the tag may not have its reference back yet."""
        self._record("accept-quick", lambda: self.page.click("#consent-accept"))
        self.page.wait_for_function(
            "() => (window.Y_TRACKING.eventLayer || []).some(e => e.name === 'ConsentChanged' && e.data.granted)",
            timeout=VIEW_TIMEOUT_MS,
        )

    def decline(self) -> None:
        """Decline the tracking consent in the banner."""
        self._act("decline", lambda: self.page.click("#consent-decline"))

    def withdraw(self) -> None:
        """Withdraw consent given earlier (footer)."""
        self._act("withdraw", lambda: self.page.click("#consent-withdraw"))

    def grant(self) -> None:
        """Give consent again after a withdrawal or a decline (footer)."""
        self._act("grant", lambda: self.page.click("#consent-grant"))

    def sign_in(self) -> None:
        """Sign in (Spartacus style): from then on the account's consent, given, decides."""
        self._act("sign-in", lambda: self.page.click("#sign-in"), view_changes=True)

    def category(self, index: int = 0) -> None:
        """Open a category from the navigation."""
        self._navigate("category", lambda: self.page.locator("a.category-link").nth(index).click())

    def product(self, index: int = 0) -> None:
        """Open a product listed on the current page."""
        self._navigate("product", lambda: self.page.locator("a.product-link").nth(index).click())

    def carousel_click(self, index: int = 0) -> None:
        """Open a product from the home page's merchandising carousel (the stand-in needs carousel=True)."""
        self._navigate("carousel-click", lambda: self.page.locator("#carousel a.carousel-item").nth(index).click())

    def add_to_cart(self) -> None:
        """Add the product on the current page to the cart."""
        self._act("add-to-cart", lambda: self.page.click("#add-to-cart"), view_changes=True)

    def search(self, text: str = "camera") -> None:
        """Search with the header's search box."""

        def submit() -> None:
            self.page.fill("#search input[name=text]", text)
            self.page.press("#search input[name=text]", "Enter")

        self._navigate("search", submit)

    def cart(self) -> None:
        """Open the cart page."""
        self._navigate("cart", lambda: self.page.click("#cart-link"))

    def reload(self) -> None:
        """Reload the current page (a navigation: with a service worker in control, answered from its cache)."""
        self._navigate("reload", lambda: self.page.reload())

    def worker(self) -> None:
        """Wait until the storefront's service worker controls the page and has set up its version."""
        self._record("worker", lambda: None)
        self.page.wait_for_function(_WORKER_CONTROLS, timeout=VIEW_TIMEOUT_MS)
        self.worker_state()  # the worker answers its debug page once it has initialized

    def worker_state(self) -> str:
        """The service worker's debug page (`/ngsw/state`, as Angular's worker answers it), asked from the page."""
        return str(self.page.evaluate(_WORKER_STATE))

    def settle(self) -> bool:
        """Wait (bounded) until the tag has handed every event to the network and had its answers."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        try:
            self.page.wait_for_function(_SETTLED, timeout=self.settle_seconds * 1000)
        except PlaywrightTimeout:
            return False  # a tenant that never answers: the journey goes on, as a shopper would
        return True

    def _state(self) -> dict[str, object]:
        state = self.page.evaluate(
            "() => window.standinStorefront ? {...window.standinStorefront} : {id: '', views: 0}"
        )
        return dict(state) if isinstance(state, dict) else {"id": "", "views": 0}

    def _navigate(self, name: str, action: object) -> None:
        before = self._state() if self.page.url.startswith("http") else {"id": "", "views": 0}
        self._record(name, action)
        # A new document (accelerator) or a new route (Spartacus) that has finished rendering.
        self.page.wait_for_function(_VIEW_CHANGED, arg=before, timeout=VIEW_TIMEOUT_MS)
        if not self.settle():
            self.unsettled.append(name)

    def _act(self, name: str, action: object, view_changes: bool = False) -> None:
        self._record(name, action)
        if view_changes:
            self.page.wait_for_function("() => !window.standinStorefront.busy", timeout=VIEW_TIMEOUT_MS)
        if not self.settle():
            self.unsettled.append(name)

    def _record(self, name: str, action: object) -> None:
        assert callable(action)
        self.steps.append((name, time.time()))
        action()
