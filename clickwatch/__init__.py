"""clickwatch: an event-validation proxy and monitor for SAP Intelligent Selling Services tracking calls.

Everything importable lives under this package: `clickwatch.core` (plain-Python judging), `clickwatch.store`
(the SQLite store and its process), `clickwatch.addon` (the mitmproxy addon), `clickwatch.dashboard` (FastAPI),
`clickwatch.cli` (the `clickwatch` command) and `clickwatch.standin` (a stand-in storefront and tenant). In the
repository those packages sit at the top level (`addon/`, `dashboard/`, ...); `pyproject.toml` maps them here,
and the symbolic links beside this file give a checkout the same names.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("clickwatch")
except PackageNotFoundError:  # pragma: no cover - running from a source tree that is not installed
    __version__ = "0+unknown"
