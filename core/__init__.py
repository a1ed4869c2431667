"""Plain-Python core of clickwatch: settings, matching, decoding, storefront and consent reading, the judge and its
findings, HAR reading; no mitmproxy, no FastAPI, nothing of the other packages."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("clickwatch")
except PackageNotFoundError:  # pragma: no cover - running from a source tree that is not installed
    __version__ = "0+unknown"
