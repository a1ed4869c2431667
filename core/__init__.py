"""Plain-Python core of clickwatch: matching, decoding, verdicts, consent, findings; no mitmproxy, no FastAPI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("clickwatch")
except PackageNotFoundError:  # pragma: no cover - running from a source tree that is not installed
    __version__ = "0+unknown"
