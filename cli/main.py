"""Entry point of the `clickwatch` command: parse, resolve settings (flag > environment > config file >
default), run, and turn library errors into one-line messages and exit codes (2 for usage errors)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

from clickwatch.core.config import Config, ConfigError, load_config
from clickwatch.core.findings import FindingKind
from clickwatch.core.model import Kind, Verdict

EXIT_USAGE = 2
DEFAULT_URL = "http://127.0.0.1:8000"

# Flag -> (Config field, environment variable): one table for `up` and the store-touching commands.
SETTINGS = {
    "db": ("db", "CLICKWATCH_DB"),
    "proxy_port": ("proxy_port", "CLICKWATCH_PROXY_PORT"),
    "dashboard_port": ("dashboard_port", "CLICKWATCH_DASHBOARD_PORT"),
    "listen_host": ("listen_host", "CLICKWATCH_LISTEN_HOST"),
    "upstream_insecure": ("upstream_insecure", "CLICKWATCH_UPSTREAM_INSECURE"),
    "token": ("token", "CLICKWATCH_TOKEN"),
    "quiet": ("quiet", "CLICKWATCH_QUIET"),
    "observer": ("observer_enabled", "CLICKWATCH_OBSERVER"),
}


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


def _env_value(name: str, env: str, kind: type) -> Any:
    raw = os.environ.get(env)
    if raw is None or raw == "":
        return None
    if kind is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise UsageError(f"{env}={raw!r}: expected true or false")
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            raise UsageError(f"{env}={raw!r}: expected a whole number") from None
    return raw


def resolve(args: argparse.Namespace) -> Config:
    """The configuration in force: the file (--config or CLICKWATCH_CONFIG), then environment, then flags."""
    path = args.config or os.environ.get("CLICKWATCH_CONFIG")
    try:
        config = load_config(path) if path else Config()
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    values: dict[str, Any] = {}
    defaults = Config()
    for flag, (field, env) in SETTINGS.items():
        if not hasattr(args, flag):
            continue
        value = getattr(args, flag)
        if value is None:
            value = _env_value(flag, env, type(getattr(defaults, field)))
        if value is not None:
            values[field] = value
    config = dataclasses.replace(config, **values)
    for port in ("proxy_port", "dashboard_port"):
        if not 1 <= getattr(config, port) <= 65535:
            raise UsageError(f"--{port.replace('_', '-')}: {getattr(config, port)} is not a port number (1-65535)")
    args.config_path = path
    return config


def _cmd_up(args: argparse.Namespace) -> int:
    from clickwatch.cli.up import run_up

    config = resolve(args)
    from clickwatch.dashboard.settings import is_loopback

    _check_db_path(config.db)
    if not is_loopback(config.listen_host) and not config.token:
        raise UsageError(
            f"listening on {config.listen_host} exposes captured traffic: give --token (or CLICKWATCH_TOKEN)"
        )
    _check_port_free(config.listen_host, config.proxy_port)
    _check_port_free(config.listen_host, config.dashboard_port)
    try:
        return run_up(config, args.config_path, args.set)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    from clickwatch.core.timeparse import parse_time

    filters: dict[str, Any] = {"run": args.run}
    for name in ("since", "until"):
        value = getattr(args, name, None)
        if value:
            try:
                filters[name] = parse_time(value, now=time.time(), allow_span=True)
            except ValueError as exc:
                raise UsageError(f"--{name}: {exc}") from None
    for name in ("kind", "verdict", "schema", "finding", "visitor"):
        value = getattr(args, name, None)
        if value:
            filters[name] = value
    return filters


def _cmd_check(args: argparse.Namespace) -> int:
    from clickwatch.cli.check import CheckUsageError, Expectation, junit_xml, parse_fail_on, print_report, run_check
    from clickwatch.cli.sources import ApiSource, SourceError, StoreSource

    try:
        fail_on = parse_fail_on(args.fail_on)
        expectations = [Expectation.parse(e) for e in args.expect]
    except CheckUsageError as exc:
        raise UsageError(str(exc)) from None
    if args.wait < 0:
        raise UsageError("--wait: must be 0 or more seconds")
    filters = _filters(args)
    try:
        if args.db or (args.url is None and os.environ.get("CLICKWATCH_DB") and not os.environ.get("CLICKWATCH_URL")):
            source: Any = StoreSource(resolve(args).db)
        else:
            token = args.token or os.environ.get("CLICKWATCH_TOKEN")
            source = ApiSource(args.url or os.environ.get("CLICKWATCH_URL") or DEFAULT_URL, token)
        report = run_check(source, filters, fail_on, expectations, args.wait)
    except SourceError as exc:
        raise UsageError(str(exc)) from None
    print_report(report, sys.stdout)
    if args.junit:
        try:
            with open(args.junit, "wb") as handle:
                handle.write(junit_xml(report))
        except OSError as exc:
            raise UsageError(f"--junit {args.junit}: {exc.strerror or exc}") from None
    return 0 if report.healthy else 1


def _cmd_import(args: argparse.Namespace) -> int:
    from clickwatch.store.importer import HarImportError, import_har

    config = resolve(args)
    _check_db_path(config.db)
    try:
        result = import_har(args.file, config.db, args.run, config)
    except HarImportError as exc:
        raise UsageError(str(exc)) from None
    print(
        f"imported {result.deliveries} deliveries ({result.findings} findings, "
        f"{result.storefront_requests} storefront requests) as run {result.run!r} into {config.db}"
    )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from clickwatch.core import __version__
    from clickwatch.store import export, reader

    config = resolve(args)
    filters = _filters(args)
    try:
        conn = reader.connect(config.db)
    except reader.StoreUnavailable as exc:
        raise UsageError(str(exc)) from None
    from clickwatch.cli.sources import delivery_filter

    items = reader.iter_deliveries(conn, delivery_filter(filters))
    chunks = (
        export.har(items, __version__)
        if args.format == "har"
        else export.csv_rows(items)
        if args.format == "csv"
        else export.jsonl(items)
    )
    try:
        with contextlib.ExitStack() as stack:
            out = (
                stack.enter_context(open(args.output, "w", encoding="utf-8", newline=""))
                if args.output != "-"
                else sys.stdout
            )
            for chunk in chunks:
                out.write(chunk)
    except OSError as exc:
        raise UsageError(f"--output {args.output}: {exc.strerror or exc}") from None
    finally:
        conn.close()
    return 0


def _cmd_addon_path(args: argparse.Namespace) -> int:
    from clickwatch.addon import capture

    print(os.path.abspath(capture.__file__))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from clickwatch.cli.demo import DemoOptions, DemoUsageError, parse_faults, run_demo

    try:
        options = DemoOptions(
            journey=args.journey,
            faults=parse_faults(args.fault),
            spartacus=args.spartacus,
            proxy_port=args.proxy_port,
            dashboard_port=args.dashboard_port,
            db=args.db,
            chromium=Path(args.chromium),
        )
        for flag, port in (("--proxy-port", args.proxy_port), ("--dashboard-port", args.dashboard_port)):
            if not 1 <= port <= 65535:
                raise UsageError(f"{flag}: {port} is not a port number (1-65535)")
        if args.db:
            _check_db_path(args.db)
        _check_port_free("127.0.0.1", args.proxy_port)
        _check_port_free("127.0.0.1", args.dashboard_port)
        return run_demo(options)
    except DemoUsageError as exc:
        raise UsageError(str(exc)) from None


def _store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default=None, help="SQLite store (default ./clickwatch.db; env CLICKWATCH_DB)")
    parser.add_argument("--config", default=None, help="TOML configuration file (env CLICKWATCH_CONFIG)")


def _filter_options(parser: argparse.ArgumentParser, *, full: bool) -> None:
    parser.add_argument("--run", default=None, help="only this run")
    parser.add_argument("--since", default=None, help="only since this time: epoch seconds, ISO 8601, or 10m/2h/1d ago")
    if full:
        parser.add_argument("--until", default=None, help="only until this time")
        parser.add_argument("--kind", default=None, choices=[k.value for k in Kind])
        parser.add_argument("--verdict", default=None, choices=[v.value for v in Verdict])
        parser.add_argument("--schema", default=None, help="hybris-schema, e.g. ProductView")
        parser.add_argument("--finding", default=None, choices=[k.value for k in FindingKind])
        parser.add_argument("--visitor", default=None, help="visitor key")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every clickwatch command."""
    parser = argparse.ArgumentParser(
        prog="clickwatch",
        description="Event-validation proxy and monitor for SAP Intelligent Selling Services tracking calls.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="start the capturing proxy and the dashboard")
    up.add_argument("--proxy-port", type=int, default=None, help="port of the proxy (default 8080)")
    up.add_argument(
        "--dashboard-port", type=int, default=None, help="port of the dashboard, API and metrics (default 8000)"
    )
    up.add_argument("--listen-host", default=None, help="address to listen on (default 127.0.0.1)")
    _store_options(up)
    up.add_argument(
        "--upstream-insecure",
        action="store_true",
        default=None,
        help="accept self-signed certificates of a QA storefront or stand-in tenant",
    )
    up.add_argument("--token", default=None, help="access token for the dashboard and API (required off loopback)")
    up.add_argument("--quiet", action="store_true", default=None, help="no live progress in the terminal")
    up.add_argument(
        "--no-observer",
        dest="observer",
        action="store_false",
        default=None,
        help="do not add the data-layer observer to storefront pages: judge consent and events from network "
        "traffic only (env CLICKWATCH_OBSERVER=false; config observer.enabled)",
    )
    up.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set any mitmproxy or clickwatch_ option (repeatable)",
    )
    up.set_defaults(func=_cmd_up)

    check = sub.add_parser("check", help="the CI gate: exit 0 when healthy, 1 when not, 2 on usage errors")
    check.add_argument("--url", default=None, help=f"a running dashboard (default {DEFAULT_URL}; env CLICKWATCH_URL)")
    _store_options(check)
    _filter_options(check, full=False)
    check.add_argument("--token", default=None, help="the dashboard's access token (env CLICKWATCH_TOKEN)")
    check.add_argument(
        "--fail-on",
        default="rejected,failed,error",
        help="what makes a run unhealthy: verdicts, severities or finding kinds (default rejected,failed,error)",
    )
    check.add_argument(
        "--expect",
        action="append",
        default=[],
        metavar="SCHEMA[:N]",
        help="require at least N (default 1) delivered events of this schema (repeatable)",
    )
    check.add_argument("--wait", type=float, default=0.0, help="wait up to this many seconds for pending decisions")
    check.add_argument("--junit", default=None, metavar="FILE", help="write a JUnit XML report")
    check.set_defaults(func=_cmd_check)

    imp = sub.add_parser("import", help="import and judge a HAR file exported from a browser")
    imp.add_argument("file", metavar="FILE.har")
    _store_options(imp)
    imp.add_argument("--run", default=None, help="run name (default: the file's name)")
    imp.set_defaults(func=_cmd_import)

    exp = sub.add_parser("export", help="export deliveries as HAR, JSON lines or CSV")
    _store_options(exp)
    exp.add_argument("--format", choices=["har", "jsonl", "csv"], default="jsonl")
    exp.add_argument("--output", "-o", default="-", help="file to write (default: standard output)")
    _filter_options(exp, full=True)
    exp.set_defaults(func=_cmd_export)

    demo = sub.add_parser("demo", help="start a stand-in storefront and tenant with the proxy and the dashboard")
    demo.add_argument(
        "--journey", action="store_true", help="drive headless Chromium through a scripted visit, then judge it"
    )
    demo.add_argument("--fault", action="append", default=[], metavar="NAME", help="a stand-in fault (repeatable)")
    demo.add_argument(
        "--spartacus", action="store_true", help="a Spartacus-style storefront instead of the accelerator"
    )
    demo.add_argument("--proxy-port", type=int, default=8080, help="port of the proxy (default 8080)")
    demo.add_argument("--dashboard-port", type=int, default=8000, help="port of the dashboard (default 8000)")
    demo.add_argument("--db", default=None, help="SQLite store (default: a temporary file removed at exit)")
    demo.add_argument("--chromium", default="/usr/bin/chromium", help="the Chromium for --journey")
    demo.set_defaults(func=_cmd_demo)

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
