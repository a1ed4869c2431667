"""`clickwatch up`: the proxy (mitmproxy with the addon) and the dashboard (uvicorn), started and stopped together."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from typing import TextIO

from clickwatch.cli.graceful import GracefulStop, quiet_cancellation
from clickwatch.core import settings
from clickwatch.core.intercept import Interception
from clickwatch.core.settings import CommandSettings
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
        except reader.StoreDamaged as exc:
            line = f"[{time.strftime('%H:%M:%S')}] {exc}"
        else:
            try:
                summary = reader.summary(conn, reader.DeliveryFilter())
                line = progress_line(summary, reader.list_findings(conn, limit=3))
            except reader.StoreDamaged as exc:
                line = f"[{time.strftime('%H:%M:%S')}] {exc}"
            finally:
                conn.close()
        core = line.split("] ", 1)[1]
        if core != last:
            last = core
            out.write(line + "\n")
            out.flush()


def interception_lines(plan: Interception | None) -> list[str]:
    """What the proxy decrypts, for the start-up banner: every host, or the storefront and tracking hosts."""
    if plan is None:
        return [
            "intercepting:       every HTTPS host (give --storefront HOST, e.g. --storefront '*.example-shop.com', "
            "to decrypt only the storefront and tracking hosts and tunnel the rest untouched)"
        ]
    lines = [
        f"intercepting:       storefront {', '.join(plan.storefront_patterns)} and the tracking hosts; "
        "every other host passes through untouched"
    ]
    lines += [f"                    ({note})" for note in plan.notes]
    # Consent also comes from the storefront's Commerce API (a signed-in shopper's consent lives in the account):
    # served from a host of its own, it is tunnelled unread unless named too.
    lines.append(" " * 20 + "(name the storefront's API host too if it has its own, e.g. api.example-shop.com)")
    return lines


def run_up(given: CommandSettings, sets: list[str]) -> int:
    """Run until Ctrl-C or SIGTERM; every captured delivery is written before returning."""
    return asyncio.run(_run(given, sets))


def addon_options(given: CommandSettings) -> dict[str, object]:
    """The addon options `up` sets from its own settings (those with both a flag and an option)."""
    return {s.option: settings.option_value(s, getattr(given, s.name)) for s in settings.for_command("up") if s.option}


async def _run(given: CommandSettings, sets: list[str]) -> int:
    from mitmproxy import exceptions, options
    from mitmproxy.tools.dump import DumpMaster

    from clickwatch.addon.capture import Clickwatch
    from clickwatch.dashboard.main import InsecureListen
    from clickwatch.dashboard.server import DashboardServer
    from clickwatch.dashboard.settings import DashboardSettings

    opts = options.Options(listen_host=given.listen_host, listen_port=given.proxy_port)
    # --quiet hides the progress line only: warnings and errors (a store process that died, a webhook that
    # refuses) always reach the terminal. Flows would drown them, and the progress line says the rest.
    master = DumpMaster(opts, with_termlog=True, with_dumper=False)
    opts.update(termlog_verbosity="warn")
    addon = Clickwatch()
    master.addons.add(addon)
    try:
        opts.update(**addon_options(given), ssl_insecure=given.upstream_insecure)
        if sets:
            opts.set(*sets)
    except exceptions.OptionsError as exc:
        raise ValueError(str(exc)) from None

    host = _url_host(given.listen_host)
    dashboard_settings = DashboardSettings(
        db=given.db,
        listen_host=given.listen_host,
        dashboard_port=given.dashboard_port,
        token=given.token or None,
        forwarded_allow_ips=given.forwarded_allow_ips,
        proxy_url=f"http://{host}:{given.proxy_port}",
        confdir=opts.confdir,
        # What the addon took (a --set clickwatch_storefront counts too), for the setup page.
        storefront=addon.interception.storefront_patterns if addon.interception else (),
    )
    try:
        dashboard = DashboardServer(dashboard_settings)
    except InsecureListen as exc:
        raise ValueError(str(exc)) from None
    dashboard.start()

    loop = asyncio.get_running_loop()
    # A signal stops cleanly: no new exchanges, those in flight finish (bounded), every answer seen is written.
    stop = GracefulStop(master, addon.inflight)
    master.addons.add(stop)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.request_stop)
    confdir = os.path.expanduser(opts.confdir)
    print(f"clickwatch proxy:   http://{host}:{given.proxy_port}", flush=True)
    print(f"dashboard:          http://{host}:{given.dashboard_port}/", flush=True)
    print(f"store:              {os.path.abspath(given.db)}", flush=True)
    print(f"CA certificate:     {os.path.join(confdir, 'mitmproxy-ca-cert.pem')}", flush=True)
    observer = (
        "on: /__clickwatch/observer.js is added to storefront pages (--no-observer to switch it off)"
        if addon.config.observer_enabled
        else "off: consent and events are judged from network traffic only"
    )
    print(f"data-layer observer: {observer}", flush=True)
    for line in interception_lines(addon.interception):
        print(line, flush=True)
    progress = None if given.quiet else asyncio.create_task(_progress(given.db, sys.stdout))
    try:
        await master.run()
    finally:
        quiet_cancellation(loop)
        if progress is not None:
            progress.cancel()
        dashboard.stop()
    return 0
