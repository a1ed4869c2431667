"""The CLI tests use the same real upstream server as the proxy integration tests."""

from tests.integration.conftest import upstream

__all__ = ["upstream"]
