"""The evidence bundle of a run as a download: the zip `clickwatch export --bundle` writes (store/bundle.py)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from typing import Annotated

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
def export_bundle(
    settings: SettingsDep,
    run: Annotated[str, Query(min_length=1, max_length=200, description="run name")],
) -> FileResponse:
    try:
        conn = reader.connect(settings.db)
    except reader.StoreUnavailable as exc:
        raise HTTPException(status_code=503, detail=f"store unavailable: {exc}") from None
    # Built in a temporary file (mkstemp: mode 0600), then sent and removed: the zip is streamed to disk as it is
    # read from the store, so a big run never sits in memory, and a failure is an error answer rather than a
    # cut-off download.
    handle = tempfile.NamedTemporaryFile(prefix="clickwatch-bundle-", suffix=".zip", delete=False)  # noqa: SIM115
    built = False
    try:
        with handle:
            bundle.write_bundle(conn, run, handle, version=__version__)
        built = True
    except bundle.UnknownRun as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None
    except (OSError, sqlite3.Error) as exc:
        raise HTTPException(status_code=503, detail=f"cannot build the bundle: {exc}") from None
    finally:
        conn.close()
        if not built:
            os.unlink(handle.name)
    return TemporaryFileResponse(handle.name, media_type=MEDIA_TYPE, filename=download_name(run))
