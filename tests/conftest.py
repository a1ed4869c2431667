"""Fixtures shared across test folders: the real upstream server and the real store builder."""

from tests.dashboard.conftest import client_for, store_builder
from tests.integration.conftest import upstream

__all__ = ["client_for", "store_builder", "upstream"]
