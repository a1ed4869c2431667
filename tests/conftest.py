"""Fixtures shared across test folders: the real upstream server, the real store builder, and the one
Playwright driver of the session (a second sync driver cannot run beside the first in one thread)."""

from collections.abc import Iterator

import pytest
from playwright.sync_api import Playwright, sync_playwright

from tests.dashboard.conftest import client_for, store_builder
from tests.integration.conftest import upstream
from tests.store.damage import damaged_stores

__all__ = ["client_for", "damaged_stores", "playwright_driver", "store_builder", "upstream"]


@pytest.fixture(scope="session")
def playwright_driver() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver
