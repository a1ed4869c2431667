"""Review item (d): the bundle's temporary zip is removed on every path: sent, client gone mid-download, error
(a real uvicorn, a real socket closed after the first bytes)."""

from __future__ import annotations

import base64
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import httpx
import pytest

from tests.dashboard.browser_fixtures import serve_dashboard
from tests.dashboard.conftest import T0, StoreBuilder
from tests.integration.conftest import wait_until


@pytest.fixture
def temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # Where tempfile puts the zip, watched alone (the machine's /tmp is shared).
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _bundles(folder: Path) -> list[str]:
    return [name for name in os.listdir(folder) if name.startswith("clickwatch-bundle-")]


def _big_run(store_builder: Callable[..., StoreBuilder]) -> StoreBuilder:
    store = store_builder()
    for n in range(40):
        # Incompressible bodies: the zip is megabytes, more than the socket buffers hold.
        store.event(at=T0 + n, run="big", body={"blob": base64.b64encode(os.urandom(96 * 1024)).decode()})
    store.close()
    return store


def test_the_zip_is_removed_when_the_client_goes_away_mid_download(
    store_builder: Callable[..., StoreBuilder], temp_dir: Path
) -> None:
    store = _big_run(store_builder)
    with serve_dashboard(store.path) as dashboard:
        port = int(dashboard.url.rsplit(":", 1)[1])
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.settimeout(30)
        client.connect(("127.0.0.1", port))
        client.sendall(b"GET /api/export/bundle?run=big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = client.recv(1024)
        assert first.startswith(b"HTTP/1.1 200")
        assert _bundles(temp_dir)  # being sent
        client.close()
        wait_until(lambda: not _bundles(temp_dir), 15.0, "the temporary zip to be removed")


def test_the_zip_is_removed_when_the_dashboard_stops_during_a_stalled_download(
    store_builder: Callable[..., StoreBuilder], temp_dir: Path
) -> None:
    # A client that stops reading and never hangs up: the dashboard's stop cancels the download (uvicorn's graceful
    # shutdown runs out), and the zip must not outlive it.
    store = _big_run(store_builder)
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.settimeout(30)
    try:
        with serve_dashboard(store.path) as dashboard:
            client.connect(("127.0.0.1", int(dashboard.url.rsplit(":", 1)[1])))
            client.sendall(b"GET /api/export/bundle?run=big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert client.recv(1024).startswith(b"HTTP/1.1 200")
            assert _bundles(temp_dir)
        wait_until(lambda: not _bundles(temp_dir), 15.0, "the temporary zip to be removed")
    finally:
        client.close()


def test_the_zip_is_removed_after_a_whole_download_and_after_an_error(
    store_builder: Callable[..., StoreBuilder], temp_dir: Path
) -> None:
    store = _big_run(store_builder)
    with serve_dashboard(store.path) as dashboard:
        answer = httpx.get(f"{dashboard.url}/api/export/bundle", params={"run": "big"}, trust_env=False, timeout=60)
        assert answer.status_code == 200 and answer.content.startswith(b"PK")
        wait_until(lambda: not _bundles(temp_dir), 15.0, "the temporary zip to be removed")
        unknown = httpx.get(f"{dashboard.url}/api/export/bundle", params={"run": "nope"}, trust_env=False, timeout=60)
        assert unknown.status_code == 404
        assert not _bundles(temp_dir)
    print(f"\nbundle of 40 deliveries: {len(answer.content):,} bytes")


def test_the_zip_is_removed_when_the_request_is_cancelled_while_it_is_built(
    store_builder: Callable[..., StoreBuilder], temp_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server stopping while the zip is built cancels the request: the build thread finishes its zip, which
    nobody will be sent, and it is removed. (A slower build is injected: a real one of this store takes
    milliseconds.)"""
    from clickwatch.dashboard.routes import bundle as route
    from clickwatch.dashboard.settings import DashboardSettings

    store = _big_run(store_builder)
    building = threading.Event()
    real_write = route.bundle.write_bundle

    def slow_write(*args: object, **kwargs: object) -> None:
        building.set()
        time.sleep(0.5)
        real_write(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(route.bundle, "write_bundle", slow_write)
    cancelled: list[bool] = []

    async def main() -> None:
        async with anyio.create_task_group() as group:

            async def request() -> None:
                try:
                    await route.export_bundle(DashboardSettings(db=str(store.path)), "big")
                except anyio.get_cancelled_exc_class():
                    cancelled.append(True)
                    raise

            group.start_soon(request)
            await anyio.to_thread.run_sync(building.wait, 10.0)
            group.cancel_scope.cancel()  # as uvicorn's stop does to a request in flight

    thread = threading.Thread(target=anyio.run, args=(main,))  # the browser tests keep a loop in the main thread
    thread.start()
    thread.join(30)
    assert cancelled == [True]
    assert not _bundles(temp_dir)
