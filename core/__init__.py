"""Plain-Python core of clickwatch: matching, decoding, verdicts. Never imports mitmproxy or FastAPI."""
