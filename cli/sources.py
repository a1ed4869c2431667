"""Where `clickwatch check` reads from: a running dashboard's API, or a store file. Same questions, same answers."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

from clickwatch.store import reader

# The store's own source and filter, shared with the evidence bundle; `Source` is what every source answers.
from clickwatch.store.check import ReaderSource, Source, delivery_filter

__all__ = ["ApiSource", "ReaderSource", "Source", "SourceError", "StoreSource", "delivery_filter"]


class SourceError(Exception):
    """The source cannot be read (dashboard unreachable, store missing)."""


class StoreSource(ReaderSource):
    """Reads a store file directly (no dashboard needed)."""

    def __init__(self, db: str) -> None:
        try:
            super().__init__(reader.connect(db))
        except reader.StoreUnavailable as exc:
            raise SourceError(str(exc)) from None


class ApiSource:
    """Reads a running dashboard over its HTTP API."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        # A dashboard on this machine is reached directly, whatever HTTP_PROXY says: in CI that variable often
        # points at clickwatch's own proxy, which would then capture (and slow) its own API calls.
        host = urllib.parse.urlsplit(self.url).hostname or ""
        loopback = host == "localhost" or host.startswith("127.") or host == "::1"
        handlers = [urllib.request.ProxyHandler({})] if loopback else []
        self._opener = urllib.request.build_opener(*handlers)

    def _get(self, path: str, params: dict[str, Any]) -> Any:
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        request = urllib.request.Request(f"{self.url}{path}?{query}")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:300]
            raise SourceError(f"{self.url}{path}: HTTP {exc.code} {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise SourceError(f"cannot reach {self.url}: {getattr(exc, 'reason', exc)}") from None

    def summary(self, **filters: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._get("/api/summary", filters)
        return result

    def deliveries(self, **filters: Any) -> Iterator[dict[str, Any]]:
        cursor = None
        while True:
            page = self._get("/api/deliveries", {**filters, "limit": reader.MAX_LIMIT, "cursor": cursor})
            yield from page["items"]
            cursor = page["next"]
            if cursor is None:
                return

    def findings(self, **filters: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self._get("/api/findings", {**filters, "limit": reader.MAX_LIMIT})["items"]
        return items

    def runs(self, name: str | None = None, limit: int = 20) -> tuple[list[str], bool]:
        """As ReaderSource.runs, from GET /api/runs."""
        answer = self._get("/api/runs", {"name": name, "limit": limit})
        return list(answer["items"]), bool(answer["more"])

    def visitors(self, run: str) -> list[dict[str, Any]]:
        """The run's visitors, most recently seen first (GET /api/visitors)."""
        items: list[dict[str, Any]] = self._get("/api/visitors", {"run": run, "limit": reader.MAX_LIMIT})["items"]
        return items

    def funnel(self, run: str | None = None) -> list[dict[str, Any]]:
        """Per schema: pushed, pushed with consent, sent, delivered (GET /api/funnel)."""
        schemas: list[dict[str, Any]] = self._get("/api/funnel", {"run": run})["schemas"]
        return schemas
