"""Where `clickwatch check` reads from: a running dashboard's API, or a store file. Same questions, same answers."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any, Protocol

from clickwatch.core.findings import FindingKind
from clickwatch.core.model import Kind, Verdict
from clickwatch.store import reader


class SourceError(Exception):
    """The source cannot be read (dashboard unreachable, store missing)."""


class Source(Protocol):
    """What a check needs to know."""

    def summary(self, **filters: Any) -> dict[str, Any]: ...

    def deliveries(self, **filters: Any) -> Iterator[dict[str, Any]]: ...

    def findings(self, **filters: Any) -> list[dict[str, Any]]: ...


def delivery_filter(filters: dict[str, Any]) -> reader.DeliveryFilter:
    """The store filter for the same keyword filters the API takes."""
    return reader.DeliveryFilter(
        kind=Kind(filters["kind"]) if filters.get("kind") else None,
        verdict=Verdict(filters["verdict"]) if filters.get("verdict") else None,
        schema=filters.get("schema"),
        finding=FindingKind(filters["finding"]) if filters.get("finding") else None,
        visitor=filters.get("visitor"),
        run=filters.get("run"),
        since=filters.get("since"),
        until=filters.get("until"),
    )


class StoreSource:
    """Reads a store file directly (no dashboard needed)."""

    def __init__(self, db: str) -> None:
        try:
            self.conn = reader.connect(db)
        except reader.StoreUnavailable as exc:
            raise SourceError(str(exc)) from None

    def summary(self, **filters: Any) -> dict[str, Any]:
        return reader.summary(self.conn, delivery_filter(filters))

    def deliveries(self, **filters: Any) -> Iterator[dict[str, Any]]:
        cursor = None
        while True:
            items, cursor = reader.list_deliveries(self.conn, delivery_filter(filters), reader.MAX_LIMIT, cursor)
            yield from items
            if cursor is None:
                return

    def findings(self, **filters: Any) -> list[dict[str, Any]]:
        return reader.list_findings(self.conn, limit=reader.MAX_LIMIT, **filters)


class ApiSource:
    """Reads a running dashboard over its HTTP API."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def _get(self, path: str, params: dict[str, Any]) -> Any:
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        request = urllib.request.Request(f"{self.url}{path}?{query}")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
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

    def funnel(self, run: str | None = None) -> list[dict[str, Any]]:
        """Per schema: pushed, pushed with consent, sent, delivered (GET /api/funnel)."""
        schemas: list[dict[str, Any]] = self._get("/api/funnel", {"run": run})["schemas"]
        return schemas
