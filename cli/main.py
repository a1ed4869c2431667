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

from clickwatch.core import settings
from clickwatch.core.config import Config, ConfigError, read_file
from clickwatch.core.diff import DEFAULT_FAIL_ON as DIFF_FAIL_ON
from clickwatch.core.diff import DEFAULT_TOLERANCE as DIFF_TOLERANCE
from clickwatch.core.findings import FindingKind
from clickwatch.core.model import Kind, Verdict
from clickwatch.core.settings import CommandSettings, SettingError
from clickwatch.store.diff import DEFAULT_SAMPLE as DIFF_SAMPLE
from clickwatch.store.reader import StoreDamaged, check_intact

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


def with_token_file(given: CommandSettings) -> CommandSettings:
    """The settings with the token read from token_file, when one is given (it wins over token)."""
    return dataclasses.replace(given, token=_token_from_file(given.token_file)) if given.token_file else given


def _token_from_file(path: str) -> str:
    """The access token a token file holds (its first line, trimmed); UsageError when there is none."""
    where = f"token file {path!r}"
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as handle:
            token = handle.readline(4096).strip()
            mode = os.fstat(handle.fileno()).st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{where}: {getattr(exc, 'strerror', None) or exc}") from None
    if not token:
        raise UsageError(f"{where}: the file's first line is empty")
    if mode & 0o077:
        print(f"clickwatch: warning: {where} can be read by other users (chmod 600 it)", file=sys.stderr)
    return token


def resolve(args: argparse.Namespace) -> tuple[CommandSettings, Config]:
    """What a command runs with, and how it judges: each setting's flag, else environment, else file, else default.

    The file is --config (or CLICKWATCH_CONFIG).
    """
    flags = {s.name: getattr(args, s.name) for s in settings.for_command(args.command)}
    try:
        path = settings.resolve(args.command, flags, os.environ, {}).get("config", "")
        config, file_values = read_file(path) if path else (Config(), {})
        values = settings.resolve(args.command, flags, os.environ, file_values)
    except (SettingError, ConfigError) as exc:
        raise UsageError(str(exc)) from None
    if flags.get("token") is not None:
        print(
            "clickwatch: warning: --token is visible to every user of this machine (ps, /proc); "
            "use --token-file or CLICKWATCH_TOKEN instead",
            file=sys.stderr,
        )
    return CommandSettings(**values), config


def _given(name: str, args: argparse.Namespace) -> bool:
    """Whether a setting was given by its flag or its environment variable."""
    env = settings.BY_NAME[name].env
    return getattr(args, name, None) is not None or bool(env and os.environ.get(env))


def _cmd_up(args: argparse.Namespace) -> int:
    from clickwatch.cli.up import run_up

    given = with_token_file(resolve(args)[0])
    from clickwatch.dashboard.settings import is_loopback

    _check_db_path(given.db)
    check_intact(given.db)  # a damaged store is refused before anything starts (StoreDamaged: exit 2)
    if not is_loopback(given.listen_host) and not given.token:
        token = settings.BY_NAME["token"]
        raise UsageError(
            f"listening on {given.listen_host} exposes captured traffic: give --token-file FILE "
            f"(or {token.env}; {token.flag} shows in ps)"
        )
    _check_port_free(given.listen_host, given.proxy_port)
    _check_port_free(given.listen_host, given.dashboard_port)
    try:
        return run_up(given, args.set)
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
    given = with_token_file(resolve(args)[0])
    try:
        if args.db or (_given("db", args) and not _given("url", args)):
            source: Any = StoreSource(given.db)
        else:
            source = ApiSource(given.url, given.token or None)
        report = run_check(source, filters, fail_on, expectations, args.wait, allow_empty=args.allow_empty)
    except (SourceError, CheckUsageError) as exc:
        raise UsageError(str(exc)) from None
    print_report(report, sys.stdout)
    if args.junit:
        from clickwatch.store.files import open_private

        try:
            with open_private(args.junit, "wb") as handle:
                handle.write(junit_xml(report))
        except OSError as exc:
            raise UsageError(f"--junit {args.junit}: {exc.strerror or exc}") from None
    return 0 if report.healthy else 1


def _cmd_import(args: argparse.Namespace) -> int:
    from clickwatch.store.importer import HarImportError, import_har

    given, config = resolve(args)
    _check_db_path(given.db)
    check_intact(given.db)  # not one more run into a damaged store (StoreDamaged: exit 2)
    try:
        result = import_har(args.file, given.db, args.run, config)
    except HarImportError as exc:
        raise UsageError(str(exc)) from None
    observer = ""
    if result.observer_reports or result.observer_refused:
        observer = f", {result.observer_reports} observer reports ({result.observer_refused} refused)"
    print(
        f"imported {result.deliveries} deliveries ({result.findings} findings, "
        f"{result.storefront_requests} storefront requests{observer}) as run {result.run!r} into {given.db}"
    )
    return 0


def _export_bundle(args: argparse.Namespace, db: str) -> int:
    """`export --bundle FILE.zip --run RUN`: the run's evidence bundle (store/bundle.py)."""
    from clickwatch.core import __version__
    from clickwatch.store import bundle, reader
    from clickwatch.store.files import open_private

    if not args.run:
        raise UsageError("--bundle needs --run RUN: a bundle holds one whole run")
    names = ("since", "until", "kind", "verdict", "schema", "finding", "visitor")
    narrowing = [f"--{name}" for name in names if getattr(args, name)]
    if args.output != "-":
        narrowing.append("--output")
    if narrowing:
        raise UsageError(f"--bundle writes a whole run: {', '.join(narrowing)} cannot be given with it")
    try:
        conn = reader.connect(db)
    except reader.StoreUnavailable as exc:
        raise UsageError(str(exc)) from None
    # Written beside the target and renamed at the end: a failed export never leaves half a zip under its name.
    partial = f"{args.bundle}.part"
    try:
        with open_private(partial, "wb") as handle:
            manifest = bundle.write_bundle(conn, args.run, handle, version=__version__)
        os.replace(partial, args.bundle)
    except bundle.UnknownRun as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"--bundle {args.bundle}: {exc.strerror or exc}") from None
    finally:
        conn.close()
        with contextlib.suppress(OSError):
            os.unlink(partial)
    counts = manifest.counts
    health = "healthy" if counts["healthy"] else "unhealthy"
    print(
        f"wrote the evidence bundle of run {args.run!r} to {args.bundle}: {counts['deliveries']} deliveries, "
        f"{counts['findings']} findings, {counts['visitors']} visitors ({health})"
    )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from clickwatch.core import __version__
    from clickwatch.store import export, reader
    from clickwatch.store.files import open_private

    given, _ = resolve(args)
    if args.bundle:
        return _export_bundle(args, given.db)
    filters = _filters(args)
    try:
        conn = reader.connect(given.db)
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
                stack.enter_context(open_private(args.output, "w", encoding="utf-8", newline=""))
                if args.output != "-"
                else sys.stdout
            )
            for chunk in chunks:
                out.write(chunk)
    except OSError as exc:
        raise UsageError(f"--output {args.output}: {exc.strerror or exc}") from None
    except StoreDamaged:
        # What was written so far would pass for a whole export.
        if args.output != "-":
            with contextlib.suppress(OSError):
                os.unlink(args.output)
        raise
    finally:
        conn.close()
    return 0


def _cmd_diff(args: argparse.Namespace) -> int:
    from clickwatch.cli.diff import DiffOptions, junit_xml, print_json, print_report, run_diff, save
    from clickwatch.core.diff import DiffUsageError, check_tolerance, parse_fail_on
    from clickwatch.store.diff import MAX_SAMPLE, DiffError
    from clickwatch.store.files import open_private

    given, _ = resolve(args)
    if not 1 <= args.sample <= MAX_SAMPLE:
        raise UsageError(f"--sample: give 1-{MAX_SAMPLE} bodies per schema, not {args.sample}")
    try:
        if args.save_baseline:
            if len(args.runs) != 1:
                raise UsageError("--save-baseline FILE takes one RUN: clickwatch diff --save-baseline FILE.json RUN")
            save(args.runs[0], given.db, args.save_baseline, args.sample, sys.stdout)
            return 0
        if len(args.runs) != 2:
            raise UsageError("give BASE and NEW: two run names, or a baseline FILE.json and a run name")
        options = DiffOptions(
            base=args.runs[0],
            new=args.runs[1],
            db=given.db,
            base_db=args.base_db or given.db,
            tolerance=check_tolerance(args.count_tolerance),
            fail_on=parse_fail_on(args.fail_on),
            sample=args.sample,
        )
        diff = run_diff(options)
    except (DiffUsageError, DiffError) as exc:
        raise UsageError(str(exc)) from None
    if args.junit:
        try:
            with open_private(args.junit, "wb") as handle:
                handle.write(junit_xml(diff))
        except OSError as exc:
            raise UsageError(f"--junit {args.junit}: {exc.strerror or exc}") from None
    (print_json if args.format == "json" else print_report)(diff, sys.stdout)
    return 1 if diff.regressed else 0


def _cmd_addon_path(args: argparse.Namespace) -> int:
    from clickwatch.addon import capture

    print(os.path.abspath(capture.__file__))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from clickwatch.cli.demo import DemoOptions, DemoUsageError, parse_faults, parse_steps, run_demo

    try:
        options = DemoOptions(
            journey=args.journey,
            faults=parse_faults(args.fault),
            spartacus=args.spartacus,
            service_worker=args.service_worker,
            proxy_port=args.proxy_port,
            dashboard_port=args.dashboard_port,
            db=args.db,
            chromium=Path(args.chromium),
            shop_port=args.shop_port,
            tenant_port=args.tenant_port,
            set_options=tuple(args.set),
            steps=parse_steps(args.steps),
            carousel=args.carousel,
        )
        for flag, value in (("--shop-port", args.shop_port), ("--tenant-port", args.tenant_port)):
            if value and not 1 <= value <= 65535:
                raise UsageError(f"{flag}: must be a port number 1-65535, not {value}")
            if value:
                _check_port_free("127.0.0.1", value)
        if args.steps is not None and not args.journey:
            raise UsageError("--steps: only with --journey")
        for name in ("proxy_port", "dashboard_port"):
            port = settings.BY_NAME[name]
            problem = port.problem(getattr(args, name))
            if problem is not None:
                raise UsageError(f"{port.flag}: {problem}, not {getattr(args, name)}")
        if args.db:
            _check_db_path(args.db)
        _check_port_free("127.0.0.1", args.proxy_port)
        _check_port_free("127.0.0.1", args.dashboard_port)
        return run_demo(options)
    except DemoUsageError as exc:
        raise UsageError(str(exc)) from None


def _cmd_browse(args: argparse.Namespace) -> int:
    from clickwatch.cli.browse import BrowseError, BrowseOptions, default_run, run_browse
    from clickwatch.cli.check import CheckUsageError

    given = with_token_file(resolve(args)[0])
    remote = _given("url", args)
    if args.wait < 0:
        raise UsageError("--wait: must be 0 or more seconds")
    if remote:
        names = ("db", "config", "storefront", "upstream_insecure", "observer_enabled")
        started_only = [settings.BY_NAME[n].flag or n for n in names if getattr(args, n) is not None]
        started_only += ["--set"] if args.set else []
        if started_only:
            raise UsageError(
                f"{', '.join(started_only)}: for the clickwatch browse starts; with --url the running one is used"
            )
    elif args.proxy:
        raise UsageError("--proxy names the proxy of the clickwatch --url gives")
    up_args: list[str] = [f"--storefront={host}" for host in given.storefront]
    if given.upstream_insecure:
        up_args.append("--upstream-insecure")
    if not given.observer_enabled:
        up_args.append("--no-observer")
    for item in args.set:
        up_args += ["--set", item]
    if _given("db", args):
        _check_db_path(given.db)
    if args.headless and not args.page:
        raise UsageError("--headless: give the URL of the page to audit")
    options = BrowseOptions(
        url=args.page or "about:blank",
        run=args.run or default_run(),
        browser=args.browser,
        headless=args.headless,
        dashboard=given.url if remote else None,
        proxy=args.proxy,
        token=given.token or None,
        db=os.path.abspath(given.db) if _given("db", args) else None,
        config=given.config or None,
        up_args=up_args,
        wait=args.wait,
        fail_on=args.fail_on,
    )
    try:
        return run_browse(options)
    except (BrowseError, CheckUsageError) as exc:
        raise UsageError(str(exc)) from None


def _setting_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """The flags of the settings a command takes, from the settings table (default None: not given)."""
    for s in settings.for_command(command):
        assert s.flag is not None
        where = "; ".join(filter(None, [f"env {s.env}" if s.env else "", f"config {s.key}" if s.key else ""]))
        text = s.help.rstrip(".").replace("%", "%%")
        if s.flag.startswith("--no-"):
            text = f"switch off: {text[0].lower()}{text[1:]}"
        help_text = f"{text} (default {s.shown()}; {where})" if where else f"{text} (default {s.shown()})"
        if s.type is bool:
            action = "store_false" if s.flag.startswith("--no-") else "store_true"
            parser.add_argument(s.flag, dest=s.name, action=action, default=None, help=help_text)
        elif s.type is tuple:
            parser.add_argument(s.flag, dest=s.name, action="append", default=None, metavar="HOST", help=help_text)
        else:
            parser.add_argument(s.flag, dest=s.name, type=s.type, default=None, help=help_text)


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


def _version() -> str:
    from clickwatch import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every clickwatch command."""
    parser = argparse.ArgumentParser(
        prog="clickwatch",
        description="Event-validation proxy and monitor for SAP Intelligent Selling Services tracking calls.",
    )
    parser.add_argument("--version", action="version", version=f"clickwatch {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="start the capturing proxy and the dashboard")
    _setting_flags(up, "up")
    up.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set any mitmproxy or clickwatch_ option (repeatable)",
    )
    up.set_defaults(func=_cmd_up)

    check = sub.add_parser("check", help="the CI gate: exit 0 when healthy, 1 when not, 2 on usage errors")
    _setting_flags(check, "check")
    _filter_options(check, full=False)
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
    check.add_argument(
        "--allow-empty", action="store_true", help="a run without any clickstream event is healthy (default: it is not)"
    )
    check.set_defaults(func=_cmd_check)

    imp = sub.add_parser("import", help="import and judge a HAR file exported from a browser")
    imp.add_argument("file", metavar="FILE.har")
    _setting_flags(imp, "import")
    imp.add_argument("--run", default=None, help="run name (default: the file's name)")
    imp.set_defaults(func=_cmd_import)

    exp = sub.add_parser("export", help="export deliveries as HAR, JSON lines or CSV")
    _setting_flags(exp, "export")
    exp.add_argument("--format", choices=["har", "jsonl", "csv"], default="jsonl")
    exp.add_argument("--output", "-o", default="-", help="file to write (default: standard output)")
    exp.add_argument(
        "--bundle",
        default=None,
        metavar="FILE.zip",
        help="write the evidence bundle of one run (needs --run): HAR, JSON lines, findings, JUnit, HTML report",
    )
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
    demo.add_argument(
        "--service-worker",
        action="store_true",
        help="Spartacus style with a service worker like Angular's, serving pages from its cache",
    )
    demo.add_argument(
        "--carousel", action="store_true", help="the home page shows a merchandising carousel (strategy calls)"
    )
    demo.add_argument(
        "--steps",
        default=None,
        metavar="LIST",
        help="with --journey: the shopper's steps, comma-separated (default home,read,accept,product,add-to-cart,"
        "search; the names are in docs/demo.md)",
    )
    for name in ("proxy_port", "dashboard_port"):
        port = settings.BY_NAME[name]
        assert port.flag is not None
        demo.add_argument(
            port.flag, dest=name, type=int, default=port.default, help=f"{port.help} (default {port.default})"
        )
    demo.add_argument(
        "--shop-port", type=int, default=0, help="HTTPS port of the stand-in storefront (default a free one)"
    )
    demo.add_argument(
        "--tenant-port", type=int, default=0, help="HTTPS port of the stand-in tenant (default a free one)"
    )
    demo.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="an option for its clickwatch up (repeatable)"
    )
    demo.add_argument("--db", default=None, help="SQLite store (default: a temporary file removed at exit)")
    demo.add_argument("--chromium", default="/usr/bin/chromium", help="the Chromium for --journey")
    demo.set_defaults(func=_cmd_demo)

    diff = sub.add_parser(
        "diff",
        help="what changed in the tracking between two runs (or a saved baseline and a run): exit 1 on a regression",
    )
    diff.add_argument(
        "runs", nargs="*", metavar="BASE NEW", help="two run names; a name ending in .json is a baseline file"
    )
    _setting_flags(diff, "diff")
    diff.add_argument("--base-db", default=None, metavar="PATH", help="the store BASE is read from (default: --db)")
    diff.add_argument(
        "--fail-on",
        default=DIFF_FAIL_ON,
        help=f"what counts as a regression: changes, verdicts, severities or finding kinds (default {DIFF_FAIL_ON})",
    )
    diff.add_argument(
        "--count-tolerance",
        type=float,
        default=DIFF_TOLERANCE,
        metavar="FRACTION",
        help=f"report a schema's count per visit when it changed by more than this (default {DIFF_TOLERANCE:g})",
    )
    diff.add_argument(
        "--sample",
        type=int,
        default=DIFF_SAMPLE,
        metavar="N",
        help=f"read at most N bodies per schema for payload fields (default {DIFF_SAMPLE})",
    )
    diff.add_argument("--format", choices=["text", "json"], default="text", help="the report's format (default text)")
    diff.add_argument("--junit", default=None, metavar="FILE", help="write a JUnit XML report")
    diff.add_argument(
        "--save-baseline", default=None, metavar="FILE.json", help="write RUN's tracking profile to FILE.json and stop"
    )
    diff.set_defaults(func=_cmd_diff)

    browse = sub.add_parser(
        "browse",
        help="open a browser with a fresh profile through the proxy as a run of its own (--headless: audit a page)",
    )
    browse.add_argument("page", nargs="?", default=None, metavar="URL", help="the page to open (default a blank one)")
    _setting_flags(browse, "browse")
    browse.add_argument("--run", default=None, help="the run the browser's traffic belongs to (default browse-TIME)")
    browse.add_argument(
        "--browser",
        default="chromium",
        metavar="chromium|chrome|firefox|PATH",
        help="the browser to open (default chromium)",
    )
    browse.add_argument(
        "--headless", action="store_true", help="load URL without a window, print the run's verdict, exit 0/1"
    )
    browse.add_argument(
        "--proxy", default=None, metavar="HOST:PORT", help="the proxy of the clickwatch --url names (default port 8080)"
    )
    browse.add_argument(
        "--wait", type=float, default=30.0, help="--headless: wait up to this many seconds for pending decisions"
    )
    browse.add_argument("--fail-on", default="rejected,failed,error", help="--headless: what makes the run unhealthy")
    browse.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="an option for the clickwatch up it starts"
    )
    browse.set_defaults(func=_cmd_browse)

    addon_path = sub.add_parser("addon-path", help="print the addon script path for `mitmdump -s`")
    addon_path.set_defaults(func=_cmd_addon_path)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the clickwatch command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (UsageError, StoreDamaged) as exc:
        # A damaged store is no verdict: exit 1 would read as "unhealthy" or "regressed" in CI.
        print(f"clickwatch: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
