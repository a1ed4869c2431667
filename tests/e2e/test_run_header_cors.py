"""A browser that names its run with the `X-Clickwatch-Run` request header breaks the tag: Chromium preflights
the tag's cross-origin configuration fetch for that header, the tenant does not allow it, and the tag never
loads its configuration. The refused preflight is recorded, with what added the header and what to do instead.
Real stand-in, real `clickwatch up`, real Chromium (trusting the proxy's CA by its key pin)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from playwright.sync_api import Playwright

from clickwatch.cli.instance import start_local
from clickwatch.standin.server import TAG_PATTERN, StandIn
from clickwatch.testing.site import launch_browser

pytestmark = pytest.mark.integration

CONFIG = f"[capture]\ntag_pattern = '{TAG_PATTERN}'\n[consent]\ngrace_seconds = 1\n"


def test_a_run_header_added_by_the_browser_is_recorded_as_the_cause_of_a_refused_preflight(
    tmp_path: Path, playwright_driver: Playwright
) -> None:
    config = tmp_path / "clickwatch.toml"
    config.write_text(CONFIG)
    run = "run-by-header"
    with (
        StandIn() as standin,
        start_local(tmp_path / "up", str(config), ["--upstream-insecure"]) as server,
        launch_browser(server.ca_cert, playwright_driver) as browser,
    ):
        proxy = {"server": f"http://{server.proxy}", "username": run, "password": "x"}
        context = browser.new_context(proxy=proxy, extra_http_headers={"X-Clickwatch-Run": run})  # type: ignore[arg-type]
        refused: list[str] = []
        page = context.new_page()
        page.on("console", lambda message: refused.append(message.text) if "CORS" in message.text else None)
        page.goto(standin.storefront_url())
        api = server.api()
        deadline = time.monotonic() + 90  # generous: the machine may be busy
        while not ((findings := api.findings(run=run, kind="cors_rejected")) and refused):
            assert time.monotonic() < deadline, f"findings {findings}; the browser said {refused}"
            page.wait_for_timeout(250)  # lets Playwright deliver the console events meanwhile
        context.close()
    [finding] = findings
    assert "x-clickwatch-run not allowed by Access-Control-Allow-Headers" in finding["message"]
    assert "name a browser's run by proxy credentials instead" in finding["message"]
    assert any("x-clickwatch-run" in text.lower() for text in refused), refused  # the browser's own words
