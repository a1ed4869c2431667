"""The monitoring tests reuse the real upstream server of the proxy integration tests."""

from tests.integration.conftest import upstream

__all__ = ["upstream"]
