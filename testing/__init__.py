"""clickwatch inside a test suite: the pytest plugin (`clickwatch.testing.pytest_plugin`, loaded through the
`pytest11` entry point) and what it is built from — the proxy a session uses, and the handle each test gets on
its own run."""
