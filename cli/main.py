"""Entry point of the `clickwatch` command."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
from collections.abc import Sequence

from cli import __doc__ as _cli_doc

EXIT_USAGE = 2


class UsageError(Exception):
    """A problem the user can fix: reported in one line, exit code 2."""


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _check_db_path(path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path)) or "."
    if os.path.isdir(path):
        raise UsageError(f"database path {path!r} is a directory")
    if not os.path.isdir(directory):
        raise UsageError(f"database directory {directory!r} does not exist")
    target = path if os.path.exists(path) else directory
    if not os.access(target, os.W_OK):
        raise UsageError(f"database path {path!r} is not writable")


async def _run_proxy(args: argparse.Namespace) -> int:
    from mitmproxy import exceptions, options
    from mitmproxy.tools.dump import DumpMaster

    from addon.capture import Clickwatch

    opts = options.Options(listen_host=args.listen_host, listen_port=args.proxy_port)
    master = DumpMaster(opts, with_termlog=not args.quiet, with_dumper=False)
    addon = Clickwatch()
    master.addons.add(addon)
    try:
        opts.update(clickwatch_db=args.db, ssl_insecure=args.upstream_insecure)
        if args.set:
            opts.set(*args.set)
    except exceptions.OptionsError as exc:
        raise UsageError(str(exc)) from None

    from dashboard.main import InsecureListen
    from dashboard.server import DashboardServer
    from dashboard.settings import DashboardSettings

    host = _url_host(args.listen_host)
    settings = DashboardSettings(
        db=args.db,
        listen_host=args.listen_host,
        dashboard_port=args.dashboard_port,
        token=args.token,
        proxy_url=f"http://{host}:{args.proxy_port}",
        confdir=opts.confdir,
    )
    try:
        dashboard = DashboardServer(settings, live_writer=lambda: addon.writer)
    except InsecureListen as exc:
        raise UsageError(str(exc)) from None
    dashboard.start()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, master.shutdown)
    confdir = os.path.expanduser(opts.confdir)
    print(f"clickwatch proxy:   http://{host}:{args.proxy_port}", flush=True)
    print(f"dashboard:          http://{host}:{args.dashboard_port}/", flush=True)
    print(f"store:              {os.path.abspath(args.db)}", flush=True)
    print(f"CA certificate:     {os.path.join(confdir, 'mitmproxy-ca-cert.pem')}", flush=True)
    try:
        await master.run()
    finally:
        dashboard.stop()
    return 0


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _cmd_up(args: argparse.Namespace) -> int:
    from dashboard.settings import is_loopback

    _check_db_path(args.db)
    if not is_loopback(args.listen_host) and not args.token:
        raise UsageError(
            f"listening on {args.listen_host} exposes captured traffic: give --token (or CLICKWATCH_TOKEN)"
        )
    _check_port_free(args.listen_host, args.proxy_port)
    _check_port_free(args.listen_host, args.dashboard_port)
    return asyncio.run(_run_proxy(args))


def _cmd_addon_path(args: argparse.Namespace) -> int:
    from addon import capture

    print(os.path.abspath(capture.__file__))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every clickwatch command."""
    parser = argparse.ArgumentParser(prog="clickwatch", description=_cli_doc)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="start the capturing proxy")
    up.add_argument("--proxy-port", type=int, default=8080, help="port of the proxy (default 8080)")
    up.add_argument(
        "--dashboard-port", type=int, default=8000, help="port of the dashboard, API and metrics (default 8000)"
    )
    up.add_argument(
        "--token",
        default=os.environ.get("CLICKWATCH_TOKEN"),
        help="access token for the dashboard and API; required when listening beyond loopback",
    )
    up.add_argument("--listen-host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    up.add_argument("--db", default="clickwatch.db", help="SQLite store (default ./clickwatch.db)")
    up.add_argument(
        "--upstream-insecure",
        action="store_true",
        help="accept self-signed certificates of a QA storefront or stand-in tenant",
    )
    up.add_argument("--quiet", action="store_true", help="do not log proxy activity to the terminal")
    up.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set any mitmproxy or clickwatch_ option (repeatable)",
    )
    up.set_defaults(func=_cmd_up)

    addon_path = sub.add_parser("addon-path", help="print the addon script path for `mitmdump -s`")
    addon_path.set_defaults(func=_cmd_addon_path)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the clickwatch command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"clickwatch: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
