"""The plugin's own rig: one `clickwatch up` for the session, started by the plugin's own code with the
stand-in's configuration, and healthy and failing stand-ins to send traffic to.

Overriding `clickwatch_server` is how a suite starts clickwatch its own way (docs/pytest.md); here it gives the
outer tests' `clickwatch` fixture a proxy that knows the stand-in's tag, and the pytester runs reach the same
proxy with --clickwatch-url, so only the test that proves the plugin starts a proxy of its own starts another.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from clickwatch.standin.faults import Faults
from clickwatch.standin.server import TAG_PATTERN, StandIn
from clickwatch.testing.server import Server, start_local

GRACE_SECONDS = 1.0
SILENCE_SECONDS = 2.0
CONFIG = f"""
[capture]
tag_pattern = '{TAG_PATTERN}'
[consent]
grace_seconds = {GRACE_SECONDS}
[windows]
silence_seconds = {SILENCE_SECONDS}
"""


@pytest.fixture(scope="session")
def plugin_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A configuration file that recognises the stand-in's tag and decides quickly."""
    path = tmp_path_factory.mktemp("plugin-config") / "clickwatch.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture(scope="session")
def clickwatch_server(tmp_path_factory: pytest.TempPathFactory, plugin_config: Path) -> Iterator[Server]:
    """The session's `clickwatch up`, as the plugin starts it, trusting the stand-in's self-signed upstream."""
    with start_local(tmp_path_factory.mktemp("clickwatch"), str(plugin_config), ["--upstream-insecure"]) as server:
        yield server


@pytest.fixture(scope="session")
def standin() -> Iterator[StandIn]:
    """A stand-in storefront and tenant that behave."""
    running = StandIn().start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def failing_standin() -> Iterator[StandIn]:
    """A stand-in whose tenant answers every clickstream POST with 503."""
    running = StandIn(faults=Faults.parse(["status:503"])).start()
    yield running
    running.stop()
