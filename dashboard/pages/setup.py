"""The setup page: how to point a browser at the proxy and trust its CA, whether traffic arrived yet, and the
CA certificate downloads."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response

from clickwatch.dashboard.deps import SettingsDep
from clickwatch.dashboard.pages.common import error_page, page
from clickwatch.dashboard.settings import DashboardSettings
from clickwatch.store import reader

router = APIRouter(include_in_schema=False)

CA_FILES = {
    # Served under fixed names only: the confdir also holds mitmproxy-ca.pem, which contains the private key.
    "mitmproxy-ca-cert.pem": "application/x-pem-file",
    "mitmproxy-ca-cert.cer": "application/x-x509-ca-cert",
}


@router.get("/setup")
def setup(request: Request, settings: SettingsDep) -> Response:
    """How to point a browser at the proxy and trust its CA; whether traffic arrived yet."""
    cert = ca_path(settings, "mitmproxy-ca-cert.pem")
    traffic: dict[str, Any] = {"available": False, "reason": None}
    try:
        conn = reader.connect(settings.db)
    except reader.StoreUnavailable as exc:
        traffic["reason"] = str(exc)
    else:
        try:
            summary = reader.summary(conn, reader.DeliveryFilter())
            last, _ = reader.list_deliveries(conn, reader.DeliveryFilter(), 1)
            seen = reader.list_visitors(conn, None, 1)
            traffic.update(
                available=True,
                total=sum(summary["deliveries"].values()),
                summary=summary,
                last=last[0] if last else None,
                visitor=seen[0] if seen else None,
            )
        except sqlite3.Error as exc:
            traffic["reason"] = f"reading the store failed: {exc}"
        finally:
            conn.close()
    return page(
        request,
        "setup.html",
        {
            "proxy_url": settings.proxy_url,
            "storefront": settings.storefront,
            "cert_path": str(cert),
            "cert_exists": cert.is_file(),
            "confdir": str(cert.parent),
            "db": os.path.abspath(settings.db),
            "traffic": traffic,
        },
    )


def ca_path(settings: DashboardSettings, name: str) -> Path:
    """Where mitmproxy keeps a CA file, in the proxy's configuration directory."""
    return Path(os.path.expanduser(settings.confdir)) / name


def _ca_download(request: Request, settings: DashboardSettings, name: str) -> Response:
    path = ca_path(settings, name)
    if not path.is_file():
        return error_page(
            request,
            404,
            "CA certificate not created yet",
            f"{path} does not exist. mitmproxy creates its CA certificate the first time the proxy starts "
            f"with this configuration directory ({path.parent}): start the proxy, then download again.",
            back="/setup",
        )
    return FileResponse(path, media_type=CA_FILES[name], filename=name)


@router.get("/setup/mitmproxy-ca-cert.pem")
def ca_pem(request: Request, settings: SettingsDep) -> Response:
    """The proxy's CA certificate (PEM), for browsers and system stores."""
    return _ca_download(request, settings, "mitmproxy-ca-cert.pem")


@router.get("/setup/mitmproxy-ca-cert.cer")
def ca_cer(request: Request, settings: SettingsDep) -> Response:
    """The same certificate under the name Windows and Android expect."""
    return _ca_download(request, settings, "mitmproxy-ca-cert.cer")
