"""A real store, filled through the real writer and Judge, for the dashboard's tests."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from clickwatch.core.config import Config
from clickwatch.core.model import Kind
from clickwatch.dashboard.main import create_app
from clickwatch.dashboard.settings import DashboardSettings
from clickwatch.store import wire
from clickwatch.store.writer import StoreWriter

UA = "Mozilla/5.0 (X11; Linux x86_64) dashboard-test"
T0 = 1_790_000_000.0


@dataclass
class StoreBuilder:
    """Writes wire messages through the real writer and pipeline; `close()` flushes and decides open windows."""

    writer: StoreWriter
    path: Path
    count: int = 0

    def event(
        self,
        *,
        at: float,
        status: int | None = 201,
        schema: str = "ProductView",
        body: object | None = None,
        run: str = "default",
        ua: str = UA,
        ip: str = "127.0.0.1",
        path: str = "/edge/clickstreamEvents",
        headers: tuple[tuple[str, str], ...] = (),
        duration: float = 0.05,
        kind: Kind = Kind.CLICKSTREAM,
        error: str | None = None,
    ) -> str:
        self.count += 1
        uid = f"uid{self.count:06d}"
        payload = json.dumps(body if body is not None else {"productSku": str(self.count)}).encode()
        fields = (
            ("User-Agent", ua),
            ("hybris-schema", f"context/commerce/{schema}"),
            ("consent-reference", "cr-1"),
            ("content-type", "application/json"),
            ("Authorization", "Bearer secret-token-value"),
            *headers,
        )
        self.writer.submit(
            wire.Request(
                uid=uid,
                run=run,
                kind=kind.value,
                target=Kind.CLICKSTREAM.value if kind is Kind.PREFLIGHT else None,
                method="OPTIONS" if kind is Kind.PREFLIGHT else "POST",
                url=f"https://acme.api.us.context.cloud.sap{path}",
                host="acme.api.us.context.cloud.sap",
                path=path,
                client_addr=ip,
                fields=tuple((name.encode(), value.encode()) for name, value in fields),
                body=payload,
                sent_at=at,
            )
        )
        if status is not None or error is not None:
            self.writer.submit(
                wire.Answer(
                    uid=uid,
                    kind=kind.value,
                    sent_at=at,
                    ended_at=at + duration,
                    status_code=status,
                    fields=((b"content-type", b"application/json"),) if status else (),
                    body=b'{"ok":true}' if status else b"",
                    error=error,
                )
            )
        return uid

    def page(self, *, at: float, consent: str | None = "GIVEN", run: str = "default", ua: str = UA) -> None:
        cookie = ""
        if consent is not None:
            value = json.dumps([{"templateCode": "PROFILE", "templateVersion": 1, "consentState": consent}])
            cookie = "anonymous-consents=" + value.replace('"', "%22").replace(",", "%2C")
        self.writer.submit(
            wire.Storefront(
                run=run,
                client_addr="127.0.0.1",
                user_agent=ua,
                request_at=at,
                response_at=at + 0.01,
                cookie=cookie,
                anonymous_consents_header=None,
                set_cookies=(),
                page_load=True,
            )
        )

    def observe(
        self,
        *,
        at: float,
        events: Sequence[Mapping[str, object]],
        page: str = "page-0001",
        run: str = "default",
        ua: str = UA,
        ip: str = "127.0.0.1",
    ) -> None:
        """A report of the data-layer observer (docs/observer.md), received at `at`; each event happened at `at`
        unless it says `before` (seconds earlier)."""
        sent = at * 1000.0
        batch = {
            "v": 1,
            "page": page,
            "url": "https://shop.example/p/1",
            "sent": sent,
            "events": [
                {"t": sent - 1000.0 * float(str(e.get("before", 0))), **{k: v for k, v in e.items() if k != "before"}}
                for e in events
            ],
        }
        body = json.dumps(batch).encode()
        # As the proxy hands on a report it accepted for a page of the shop served long before.
        self.writer.submit(wire.Browser(run, ip, ua, at, body, "https://shop.example", 0.0, page.ljust(22, "-")))

    def push(self, name: str, data: object = None, *, at: float, consent: bool | None = None, **where: object) -> None:
        """One data-layer push (after a ConsentChanged push when `consent` is given), as the observer reports it."""
        events: list[dict[str, object]] = []
        if consent is not None:
            events.append({"type": "push", "name": "ConsentChanged", "data": {"granted": consent}})
        events.append({"type": "push", "name": name, "data": data if data is not None else {}})
        self.observe(at=at, events=events, **where)  # type: ignore[arg-type]

    def close(self) -> None:
        assert self.writer.close()


@pytest.fixture
def store_builder(tmp_path: Path) -> Callable[..., StoreBuilder]:
    def build(config: Config | None = None) -> StoreBuilder:
        path = tmp_path / "cw.db"
        writer = StoreWriter(str(path), config, clock=lambda: T0 + 3600)
        writer.start()
        return StoreBuilder(writer, path)

    return build


@pytest.fixture
def client_for(tmp_path: Path) -> Callable[..., TestClient]:
    def make(path: Path, **settings: object) -> TestClient:
        values: dict[str, object] = {"db": str(path), "confdir": str(tmp_path / "mitm"), **settings}
        app = create_app(DashboardSettings(**values))  # type: ignore[arg-type]
        return TestClient(app, base_url="http://127.0.0.1:8000")

    return make
