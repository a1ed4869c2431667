"""What the plugin's browser and stand-in fixtures are made of: a Playwright Chromium trusting the session's CA
by its key pin, and the stand-in shop with what the session's clickwatch must know about it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from clickwatch.cli.browse import BrowseError, chromium_args, find_browser
from clickwatch.core.config import ConfigError, read_file
from clickwatch.core.settings import BY_NAME
from clickwatch.standin.faults import Faults
from clickwatch.standin.server import TAG_PATTERN

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Playwright

    from clickwatch.standin.server import StandIn


class BrowserError(Exception):
    """No browser could be launched; the message says what to install."""


@contextlib.contextmanager
def launch_browser(ca_cert: Path, playwright: Playwright | None = None) -> Iterator[Browser]:
    """Headless Chromium trusting `ca_cert` for this browser only: Playwright's own, else the system's. On the
    given Playwright (one per thread: pytest-playwright's, a suite's own), else one started for the block."""
    if playwright is not None:
        browser = launch_chromium(playwright, ca_cert)
        try:
            yield browser
        finally:
            browser.close()
        return
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise BrowserError("Playwright is not installed: pip install 'clickwatch[pytest]'") from None
    with sync_playwright() as started, launch_browser(ca_cert, started) as browser:
        yield browser


def launch_chromium(playwright: Playwright, ca_cert: Path) -> Browser:
    """Headless Chromium on `playwright` trusting `ca_cert` by its key pin; BrowserError when none starts."""
    from playwright.sync_api import Error as PlaywrightError

    executable = None
    if not os.path.exists(playwright.chromium.executable_path):
        try:
            executable = find_browser("chromium").executable
        except BrowseError as exc:
            raise BrowserError(
                f"Playwright's Chromium is not installed (playwright install chromium) and {exc}"
            ) from None
    # Proxy variables of the shell would only confuse: each context names the proxy itself.
    env: dict[str, str | float | bool] = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    try:
        return playwright.chromium.launch(
            executable_path=executable, headless=True, args=chromium_args(ca_cert, headless=True), env=env
        )
    except PlaywrightError as exc:
        raise BrowserError(f"Chromium did not start: {str(exc).splitlines()[0]}") from None


# Without a configuration of the user's, the stand-in's session decides as quickly as `clickwatch demo --journey`:
# a script reads no page for 30 s, and a marked test waits 10 s for the run's decisions.
STANDIN_CONFIG = """# written by the clickwatch pytest plugin for clickwatch_standin
[capture]
tag_pattern = '{tag_pattern}'
[consent]
grace_seconds = 2
[windows]
silence_seconds = 3
"""


def standin_up_args(config_file: str | None, directory: Path) -> tuple[str, list[str]]:
    """The configuration file and the extra `clickwatch up` arguments of a session that shops at the stand-in.

    Without `config_file`: one written in `directory` with the stand-in's tag and short windows. With it: that
    file, and the stand-in's tag added to the file's tag pattern by the addon option. Either way the stand-in's
    self-signed certificates are accepted upstream.
    """
    if not config_file:
        path = directory / "standin.toml"
        path.write_text(STANDIN_CONFIG.format(tag_pattern=TAG_PATTERN))
        return str(path), ["--upstream-insecure"]
    pattern = BY_NAME["tag_pattern"].default
    with contextlib.suppress(ConfigError):  # a bad file is reported by `clickwatch up` itself
        pattern = read_file(config_file)[0].tag_pattern
    combined = f"(?:{pattern})|(?:{TAG_PATTERN})" if pattern else TAG_PATTERN
    return config_file, ["--upstream-insecure", "--set", f"{BY_NAME['tag_pattern'].option}={combined}"]


@dataclass
class StandInSite:
    """The `clickwatch_standin` fixture: the stand-in storefront and ISS tenant, on loopback."""

    standin: StandIn

    @property
    def shop(self) -> str:
        """The storefront's home page (HTTPS), e.g. https://localhost:PORT/."""
        return self.standin.storefront_url()

    @property
    def tenant(self) -> str:
        """The tenant's origin (tag, tag configuration, clickstream endpoint), e.g. https://127.0.0.1:PORT."""
        return self.standin.tenant_origin()

    @property
    def tag_pattern(self) -> str:
        """The `capture.tag_pattern` that recognises the stand-in's tag."""
        return TAG_PATTERN

    def faults(self, *names: str) -> None:
        """Make the stand-in misbehave until the test ends: 'status:503', 'hang', 'track-before-consent', ...
        (docs/demo.md#faults); no names: behave."""
        self.standin.faults = Faults.parse(list(names))
