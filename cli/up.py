"""`clickwatch up`: the proxy (mitmproxy with the addon) and the dashboard (uvicorn), started and stopped together."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from typing import TextIO

from clickwatch.core.config import Config
from clickwatch.store import reader

PROGRESS_EVERY_SECONDS = 2.0


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def progress_line(summary: dict[str, object], latest: list[dict[str, object]]) -> str:
    """One terminal line: deliveries by verdict, and the newest findings."""
    d = summary["deliveries"]
    assert isinstance(d, dict)
    state = "healthy" if summary["healthy"] else "FAILING"
    line = (
        f"[{time.strftime('%H:%M:%S')}] {state}: {d['delivered']} delivered, {d['rejected']} rejected, "
        f"{d['failed']} failed, {d['pending']} pending"
    )
    if latest:
        line += " | latest: " + "; ".join(f"{f['kind']} ({f['severity']})" for f in latest[:3])
    return line


async def _progress(db: str, out: TextIO) -> None:
    """Print a line whenever the counts change (until cancelled)."""
    last = ""
    while True:
        await asyncio.sleep(PROGRESS_EVERY_SECONDS)
        try:
            conn = reader.connect(db)
        except reader.StoreUnavailable:
            continue
        try:
            line = progress_line(reader.summary(conn, reader.DeliveryFilter()), reader.list_findings(conn, limit=3))
        finally:
            conn.close()
        core = line.split("] ", 1)[1]
        if core != last:
            last = core
            out.write(line + "\n")
            out.flush()


def run_up(config: Config, config_path: str | None, sets: list[str]) -> int:
    """Run until Ctrl-C or SIGTERM; every captured delivery is written before returning."""
    return asyncio.run(_run(config, config_path, sets))


async def _run(config: Config, config_path: str | None, sets: list[str]) -> int:
    from mitmproxy import exceptions, options
    from mitmproxy.tools.dump import DumpMaster

    from clickwatch.addon.capture import Clickwatch
    from clickwatch.dashboard.main import InsecureListen
    from clickwatch.dashboard.server import DashboardServer
    from clickwatch.dashboard.settings import DashboardSettings

    opts = options.Options(listen_host=config.listen_host, listen_port=config.proxy_port)
    master = DumpMaster(opts, with_termlog=not config.quiet, with_dumper=False)
    if not config.quiet:
        opts.update(termlog_verbosity="warn")  # the progress line says what matters; flows would drown it
    addon = Clickwatch()
    master.addons.add(addon)
    try:
        opts.update(
            clickwatch_db=config.db,
            clickwatch_config=config_path or "",
            clickwatch_observer=config.observer_enabled,
            ssl_insecure=config.upstream_insecure,
        )
        if sets:
            opts.set(*sets)
    except exceptions.OptionsError as exc:
        raise ValueError(str(exc)) from None

    host = _url_host(config.listen_host)
    settings = DashboardSettings(
        db=config.db,
        listen_host=config.listen_host,
        dashboard_port=config.dashboard_port,
        token=config.token or None,
        proxy_url=f"http://{host}:{config.proxy_port}",
        confdir=opts.confdir,
    )
    try:
        dashboard = DashboardServer(settings, live_writer=lambda: addon.writer)
    except InsecureListen as exc:
        raise ValueError(str(exc)) from None
    dashboard.start()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, master.shutdown)
    confdir = os.path.expanduser(opts.confdir)
    print(f"clickwatch proxy:   http://{host}:{config.proxy_port}", flush=True)
    print(f"dashboard:          http://{host}:{config.dashboard_port}/", flush=True)
    print(f"store:              {os.path.abspath(config.db)}", flush=True)
    print(f"CA certificate:     {os.path.join(confdir, 'mitmproxy-ca-cert.pem')}", flush=True)
    observer = (
        "on: /__clickwatch/observer.js is added to storefront pages (--no-observer to switch it off)"
        if addon.config.observer_enabled
        else "off: consent and events are judged from network traffic only"
    )
    print(f"data-layer observer: {observer}", flush=True)
    progress = None if config.quiet else asyncio.create_task(_progress(config.db, sys.stdout))
    try:
        await master.run()
    finally:
        if progress is not None:
            progress.cancel()
        dashboard.stop()
    return 0
