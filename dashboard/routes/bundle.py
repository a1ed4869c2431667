"""The evidence bundle of a run as a download: the zip `clickwatch export --bundle` writes (store/bundle.py)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from typing import Annotated

import anyio
import anyio.lowlevel
from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import FileResponse
from starlette.types import Receive, Scope, Send

from clickwatch.core import __version__
from clickwatch.dashboard.deps import SettingsDep
from clickwatch.dashboard.models import NOT_FOUND, UNAVAILABLE
from clickwatch.store import bundle, reader

router = APIRouter(prefix="/api", tags=["api"])
MEDIA_TYPE = "application/zip"


class TemporaryFileResponse(FileResponse):
    """A file sent once, then removed whatever happens: sent whole, client gone, stop of the server, an error.

    (A background task would not do: it runs only after a response that ended normally, so a download cancelled
    by the server's stop, or a send that raised, left the zip in the temporary folder.)
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


def download_name(run: str) -> str:
    """The file name offered for a run's bundle: ASCII only (header values are Latin-1 on the wire)."""
    name = f"clickwatch-{run}-evidence.zip"
    return "".join(c if (c.isascii() and c.isalnum()) or c in "-._" else "_" for c in name)


@router.get(
    "/export/bundle",
    summary="Download the evidence bundle of one run (zip: HAR, JSON lines, findings, JUnit, offline HTML report)",
    response_class=FileResponse,
    responses={200: {"content": {MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}}}
    | NOT_FOUND
    | UNAVAILABLE,
)
async def export_bundle(
    settings: SettingsDep,
    run: Annotated[str, Query(min_length=1, max_length=200, description="run name")],
) -> FileResponse:
    built: list[str] = []  # the zip's path once the worker thread has made it
    try:
        path = await anyio.to_thread.run_sync(_build, settings.db, run, built)
        # A cancellation while the thread ran is held until it ends, and is raised at the next checkpoint: here,
        # not after a response that nobody will send has been returned.
        await anyio.lowlevel.checkpoint()
    except BaseException:
        # The build failed, or the request was cancelled while it ran (the server stopping): the thread finishes
        # first (it is not abandoned), and a zip it made is sent to nobody, so it goes.
        for made in built:
            with contextlib.suppress(OSError):
                os.unlink(made)
        raise
    return TemporaryFileResponse(path, media_type=MEDIA_TYPE, filename=download_name(run))


def _build(db: str, run: str, built: list[str]) -> str:
    """In a worker thread: the run's bundle in a new temporary file (mkstemp: mode 0600); its path."""
    try:
        conn = reader.connect(db)
    except reader.StoreUnavailable as exc:
        raise HTTPException(status_code=503, detail=f"store unavailable: {exc}") from None
    # Built in a temporary file, then sent and removed: the zip is streamed to disk as it is read from the store,
    # so a big run never sits in memory, and a failure is an error answer rather than a cut-off download.
    handle = tempfile.NamedTemporaryFile(prefix="clickwatch-bundle-", suffix=".zip", delete=False)  # noqa: SIM115
    built.append(handle.name)
    try:
        with handle:
            bundle.write_bundle(conn, run, handle, version=__version__)
    except bundle.UnknownRun as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None
    except (OSError, sqlite3.Error) as exc:
        raise HTTPException(status_code=503, detail=f"cannot build the bundle: {exc}") from None
    finally:
        conn.close()
    return handle.name
