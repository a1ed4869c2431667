"""The pytest plugin: the `clickwatch` fixture (one proxy per session, one run per test), the
`@pytest.mark.clickwatch(fail_on=...)` marker, and the consent timeline in the report of a failed test; a
Playwright browser that trusts the session's CA (`clickwatch_browser`), a page of the test's run
(`clickwatch_page`) and the stand-in shop (`clickwatch_standin`).

Loaded through the `pytest11` entry point in every pytest run where clickwatch is installed, so it imports
nothing heavy until a test asks for the fixture, and does nothing to tests that do not. Reference:
docs/pytest.md.
"""

from __future__ import annotations

import os
import secrets
import shlex
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

    from clickwatch.standin.server import StandIn
    from clickwatch.testing.run import ClickwatchRun
    from clickwatch.testing.server import Server
    from clickwatch.testing.site import StandInSite

MARKER = "clickwatch"
TIMELINE_SECTION = "clickwatch consent timeline"
CHECK_WAIT_SECONDS = 10.0
_RUN = pytest.StashKey["ClickwatchRun"]()
_CHECK = pytest.StashKey[dict[str, Any]]()
_TIMELINE_SHOWN = pytest.StashKey[bool]()
_RUNS_TAKEN = pytest.StashKey[set[str]]()
_SESSION_TAG = pytest.StashKey[str]()
_STANDIN_USED = pytest.StashKey[bool]()
STANDIN_FIXTURE = "clickwatch_standin"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("clickwatch", "clickwatch (tracking-event validation proxy)")
    group.addoption(
        "--clickwatch-url",
        default=None,
        metavar="URL",
        help="use the clickwatch whose dashboard is at URL (default: $CLICKWATCH_URL; unset: start one per "
        "session, or per xdist worker)",
    )
    group.addoption(
        "--clickwatch-proxy",
        default=None,
        metavar="HOST:PORT",
        help="the proxy of the clickwatch given by --clickwatch-url (default: its host, port 8080)",
    )
    group.addoption(
        "--clickwatch-config",
        default=None,
        metavar="FILE",
        help="configuration file for the clickwatch the session starts (clickwatch up --config)",
    )
    group.addoption(
        "--clickwatch-up-args",
        default=None,
        metavar="ARGS",
        help="more arguments for the clickwatch the session starts, e.g. '--upstream-insecure --no-observer'",
    )
    parser.addini("clickwatch_config", "configuration file for the clickwatch the session starts", default="")
    parser.addini("clickwatch_up_args", "more arguments for the clickwatch the session starts", type="args")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "clickwatch(fail_on='rejected,failed,error', expect=(), wait=10.0): once the test body has passed, fail "
        "the test when its clickwatch run is unhealthy by the rules of `clickwatch check`",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The marker means the test browses as a run of its own: it gets the fixture even if it did not ask.
    for item in items:
        marked = isinstance(item, pytest.Function) and item.get_closest_marker(MARKER) is not None
        if marked and MARKER not in item.fixturenames:  # type: ignore[attr-defined]
            item.fixturenames.append(MARKER)  # type: ignore[attr-defined]
    # The clickwatch a session starts learns the stand-in's tag host when a test will shop there.
    config.stash[_STANDIN_USED] = any(STANDIN_FIXTURE in getattr(item, "fixturenames", ()) for item in items)


@pytest.fixture(scope="session")
def clickwatch_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The clickwatch of this session (or xdist worker): one started for it, or the one --clickwatch-url names."""
    from clickwatch.core import settings
    from clickwatch.testing.server import ServerError, connect_remote, start_local

    config = request.config
    url_env, token_env = settings.BY_NAME["url"].env, settings.BY_NAME["token"].env
    url = config.getoption("--clickwatch-url") or (os.environ.get(url_env) if url_env else None)
    try:
        if url:
            token = os.environ.get(token_env) if token_env else None
            directory = tmp_path_factory.mktemp("clickwatch-remote")
            yield connect_remote(url, config.getoption("--clickwatch-proxy"), token, directory)
            return
        config_file = config.getoption("--clickwatch-config") or config.getini("clickwatch_config") or None
        given = config.getoption("--clickwatch-up-args")
        extra = shlex.split(given) if given is not None else list(config.getini("clickwatch_up_args"))
        root = tmp_path_factory.mktemp("clickwatch")
        if config.stash.get(_STANDIN_USED, False):
            from clickwatch.testing.site import standin_up_args

            config_file, standin_args = standin_up_args(config_file, root)
            extra = [*standin_args, *extra]
        with start_local(root, config_file, extra) as server:
            yield server
    except ServerError as exc:
        pytest.fail(f"clickwatch: {exc}", pytrace=False)


@pytest.fixture
def clickwatch(request: pytest.FixtureRequest, clickwatch_server: Server) -> ClickwatchRun:
    """This test's run on the session's proxy: `proxy_url`, `playwright_proxy`, `ca_cert`, `expect(...)`."""
    from clickwatch.testing.run import ClickwatchRun, run_name

    marker = request.node.get_closest_marker(MARKER)
    check = _marker_check(marker) if marker is not None else None
    taken = request.config.stash.setdefault(_RUNS_TAKEN, set())
    # A shared proxy keeps earlier sessions' runs: a tag of this session keeps their traffic out of this one's.
    tag = "" if clickwatch_server.local else _session_tag(request.config)
    handle = ClickwatchRun(clickwatch_server, run_name(request.node.nodeid, tag, taken))
    request.node.stash[_RUN] = handle
    if check is not None:
        request.node.stash[_CHECK] = check
    return handle


@pytest.fixture(scope="session")
def clickwatch_browser(request: pytest.FixtureRequest, clickwatch_server: Server) -> Iterator[Browser]:
    """A Playwright Chromium that trusts the session's CA (by its key pin, for this browser only) and sends
    loopback through the proxy too: Playwright's own Chromium, else the system's."""
    from clickwatch.testing.site import BrowserError, launch_browser

    # One Playwright per thread: with pytest-playwright loaded, its session's driver is shared.
    driver = request.getfixturevalue("playwright") if request.config.pluginmanager.hasplugin("playwright") else None
    try:
        with launch_browser(clickwatch_server.ca_cert, driver) as browser:
            yield browser
    except BrowserError as exc:
        pytest.fail(f"clickwatch_browser: {exc}", pytrace=False)


@pytest.fixture
def clickwatch_page(clickwatch: ClickwatchRun, clickwatch_browser: Browser) -> Iterator[Page]:
    """A page in a fresh browser context of its own, browsing through the proxy as this test's run."""
    context = clickwatch_browser.new_context(proxy=clickwatch.playwright_proxy)  # type: ignore[arg-type]
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture(scope="session")
def clickwatch_standin_server() -> Iterator[StandIn]:
    """The stand-in storefront and ISS tenant of the session (clickwatch.standin.server.StandIn)."""
    from clickwatch.standin.server import StandIn

    with StandIn() as standin:
        yield standin


@pytest.fixture
def clickwatch_standin(clickwatch_standin_server: StandIn) -> StandInSite:
    """The stand-in shop for this test: `shop` and `tenant` URLs, `tag_pattern` (already in the configuration of
    the clickwatch the session starts), `faults(...)` to make it misbehave for this test only."""
    from clickwatch.testing.site import StandInSite

    site = StandInSite(clickwatch_standin_server)
    site.faults()  # a fault set by an earlier test does not leak into this one
    return site


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    # When the test body has passed (a failure raises out of the yield), its run must be healthy. Checked here
    # rather than in a fixture's teardown so that an unhealthy run is the test's failure, not a teardown error.
    result = yield
    check, handle = item.stash.get(_CHECK, None), item.stash.get(_RUN, None)
    if check is None or handle is None:
        return result
    from clickwatch.cli.check import UnknownRun
    from clickwatch.cli.sources import SourceError
    from clickwatch.testing.run import report_text

    try:
        report = handle.check(**check)
    except UnknownRun as exc:
        pytest.fail(f"clickwatch: nothing arrived in the test's run: {exc}", pytrace=False)
    except SourceError as exc:
        pytest.fail(f"clickwatch: cannot check run {handle.run!r}: {exc}", pytrace=False)
    if not report.healthy:
        pytest.fail(f"clickwatch run {handle.run!r} is unhealthy\n{report_text(report)}", pytrace=False)
    return result


def _marker_check(marker: pytest.Mark) -> dict[str, Any]:
    """The marker's arguments as `ClickwatchRun.check` takes them, checked at setup rather than after the test."""
    from clickwatch.cli.check import DEFAULT_FAIL_ON, CheckUsageError, Expectation, parse_fail_on

    if marker.args:
        pytest.fail("@pytest.mark.clickwatch takes keyword arguments only: fail_on=, expect=, wait=", pytrace=False)
    unknown = sorted(set(marker.kwargs) - {"fail_on", "expect", "wait"})
    if unknown:
        pytest.fail(f"@pytest.mark.clickwatch: unknown argument {', '.join(unknown)}", pytrace=False)
    fail_on = marker.kwargs.get("fail_on", DEFAULT_FAIL_ON)
    fail_on = fail_on if isinstance(fail_on, str) else ",".join(fail_on)
    expect = marker.kwargs.get("expect", ())
    expect = [expect] if isinstance(expect, str) else list(expect)
    wait = marker.kwargs.get("wait", CHECK_WAIT_SECONDS)
    problem = None
    try:
        parse_fail_on(fail_on)
        for text in expect:
            Expectation.parse(text)
        if not isinstance(wait, int | float) or wait < 0:
            raise CheckUsageError(f"wait={wait!r}: give a number of seconds, 0 or more")
    except CheckUsageError as exc:
        problem = str(exc).replace("--fail-on", "fail_on").replace("--expect", "expect")
    if problem is not None:
        pytest.fail(f"@pytest.mark.clickwatch: {problem}", pytrace=False)
    return {"fail_on": fail_on, "expect": expect, "wait": float(wait)}


def _session_tag(config: pytest.Config) -> str:
    # Shared by the xdist workers of one run (their test ids differ anyway), new for every pytest run.
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and "testrunuid" in workerinput:
        return str(workerinput["testrunuid"])[:8]
    tag: str = config.stash.setdefault(_SESSION_TAG, secrets.token_hex(4))
    return tag


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    handle = item.stash.get(_RUN, None)
    if handle is None:
        return report  # not a clickwatch test
    if report.failed and not item.stash.get(_TIMELINE_SHOWN, False):
        item.stash[_TIMELINE_SHOWN] = True
        report.sections.append((f"{TIMELINE_SECTION} (run {handle.run})", _timeline(handle)))
    return report


def _timeline(handle: ClickwatchRun) -> str:
    try:
        return handle.timeline_text()
    except Exception as exc:  # a report must be written even when the dashboard is gone
        return f"(the timeline could not be read: {exc})"
