"""clickwatch's settings table: every setting once, with everything its surfaces are derived from.

SETTINGS is the one place a setting is declared: name, type, default, help, and where it can be given (command-line
flag, environment variable, configuration-file key, mitmproxy addon option) and who takes it. The addon's options
(addon/capture.py), the commands' flags and environment (cli/main.py), the file's keys (core/config.py), the
dashboard's environment (dashboard/settings.py), the store process's arguments (store/worker.py) and the reference
docs/settings.md are read off it; tests/test_settings_table.py fails when one of them disagrees. After changing the
table, regenerate the reference: `python -m clickwatch.core.settings --markdown > docs/settings.md`.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from clickwatch.core import decoding, matching
from clickwatch.core.findings import FindingKind
from clickwatch.core.model import Kind

# Who takes a setting: the commands (their flags), and the components.
USED_BY = {
    "up": "`clickwatch up`",
    "check": "`clickwatch check`",
    "import": "`clickwatch import`",
    "export": "`clickwatch export`",
    "diff": "`clickwatch diff`",
    "browse": "`clickwatch browse`",
    "addon": "the mitmproxy addon",
    "store": "the store process",
    "judge": "the judge (a field of `core.config.Config`)",
    "dashboard": "the dashboard",
}
COMMANDS = ("up", "check", "import", "export", "diff", "browse")
ENV_PREFIX = "CLICKWATCH_"
OPTION_PREFIX = "clickwatch_"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class SettingError(ValueError):
    """A setting's value cannot be used; the message says what is wrong (the caller names where it came from)."""


class ConfigError(SettingError):
    """The configuration file cannot be used; the message names the key and the problem."""


@dataclass(frozen=True)
class Setting:
    """One setting: what it is, its default, and every name it is given by."""

    name: str
    type: type  # str, int, float, bool; tuple for a list of strings; dict for an open table of the configuration file
    default: Any
    help: str
    used_by: tuple[str, ...]
    flag: str | None = None
    env: str | None = None
    key: str | None = None  # "section.key"; for a dict, the section
    option: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    unit: str = ""
    nonempty: bool = False
    pattern: bool = False  # a regular expression (empty: no restriction)
    addresses: bool = False  # a list of IP addresses or networks
    keys: tuple[str, ...] = ()  # a dict's known keys; empty means any name

    @property
    def judged(self) -> bool:
        """Whether the judge reads it (a field of core.config.Config); its addon option then defaults to unset."""
        return "judge" in self.used_by

    @property
    def section(self) -> str | None:
        """The configuration file's section holding it."""
        return self.key.partition(".")[0] if self.key else None

    def problem(self, value: Any) -> str | None:
        """What is wrong with a well-typed value, or None."""
        if self.nonempty and not value:
            return "must not be empty"
        if self.addresses:
            for item in value:
                try:
                    ipaddress.ip_network(item, strict=False)
                except ValueError:
                    return f"expected IP addresses or networks such as 10.0.0.0/8, {item!r} is neither"
        if self.type in (int, float):
            if self.maximum is not None and self.minimum is not None and not self.minimum <= value <= self.maximum:
                return f"must be a port number {self.minimum:g}-{self.maximum:g}"
            if self.minimum is not None and value < self.minimum:
                if self.minimum == 0:
                    return f"must be 0 or more {self.unit}".rstrip()
                return f"must be at least {self.minimum:g}"
        return None

    def parse(self, text: str) -> Any:
        """A value from text (an environment variable, a string option); SettingError says what was expected."""
        if self.type is bool:
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise SettingError("expected true or false")
        if self.type is int:
            try:
                return int(text)
            except ValueError:
                raise SettingError("expected a whole number") from None
        if self.type is float:
            try:
                value = float(text)
            except ValueError:
                raise SettingError("expected a number") from None
            if not math.isfinite(value):
                raise SettingError("expected a number")
            return value
        if self.type is tuple:
            return tuple(item.strip() for item in text.split(",") if item.strip())
        return text

    def from_file(self, value: Any, where: str) -> Any:
        """A value as TOML gave it, checked: ConfigError names `where` and the problem."""
        if self.type is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: expected true or false, got {value!r}")
        elif self.type is float:
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ConfigError(f"{where}: expected a number of seconds, got {value!r}")
            value = float(value)
        elif self.type is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{where}: expected a whole number, got {value!r}")
        elif self.type is tuple:
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
            value = tuple(value)
        elif not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        if self.type in (int, float) and value < 0:
            raise ConfigError(f"{where}: must not be negative, got {value!r}")
        problem = self.problem(value)
        if problem is not None:
            raise ConfigError(f"{where}: {problem}" + (f", got {value!r}" if value != "" else ""))
        if self.pattern:
            try:
                matching.compile_pattern(where, value)
            except matching.PatternError as exc:
                raise ConfigError(str(exc)) from None
        return value

    def shown(self, value: Any = None) -> str:
        """A value (the default unless given) as people write it."""
        value = self.default if value is None else value
        if self.type is dict:
            return "the built-in table"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, tuple):
            return ", ".join(value) or "empty"
        if value == "":
            return "empty"
        return str(value)


def _port(name: str, default: int, help: str, used_by: tuple[str, ...]) -> Setting:
    return Setting(
        name, int, default, help, used_by, flag=f"--{name.replace('_', '-')}", env=f"{ENV_PREFIX}{name.upper()}",
        key=f"up.{name}", minimum=1, maximum=65535,
    )  # fmt: skip


def _seconds(name: str, default: float, key: str, help: str) -> Setting:
    return Setting(name, float, default, help, ("judge",), key=key, minimum=0, unit="seconds")


def _capture(name: str, default: str, help: str, key: str | None = None) -> Setting:
    return Setting(
        name, str, default, help, ("addon", "judge"), key=f"capture.{key or name}", option=OPTION_PREFIX + name,
        pattern=True,
    )  # fmt: skip


SETTINGS: tuple[Setting, ...] = (
    # Where clickwatch stores, listens and reads: the commands' settings.
    Setting(
        "db", str, "clickwatch.db",
        "Path of the SQLite file clickwatch stores deliveries, findings and consent signals in.",
        ("up", "check", "import", "export", "diff", "browse", "addon", "dashboard"),
        flag="--db", env="CLICKWATCH_DB", key="store.db", option="clickwatch_db",
    ),
    Setting(
        "config", str, "",
        "Path of a clickwatch TOML configuration file (patterns, statuses, consent, windows, schemas, "
        "severities); empty means built-in defaults.",
        ("up", "check", "import", "export", "diff", "browse", "addon"),
        flag="--config", env="CLICKWATCH_CONFIG", option="clickwatch_config",
    ),
    _port("proxy_port", 8080, "Port the proxy listens on.", ("up",)),
    _port("dashboard_port", 8000, "Port of the dashboard, its API and /metrics.", ("up", "dashboard")),
    Setting(
        "listen_host", str, "127.0.0.1",
        "Address the proxy and the dashboard listen on; anything but loopback needs an access token.",
        ("up", "dashboard"), flag="--listen-host", env="CLICKWATCH_LISTEN_HOST", key="up.listen_host",
    ),
    Setting(
        "upstream_insecure", bool, False,
        "Accept self-signed certificates of a QA storefront or stand-in tenant (the browser side stays protected "
        "by clickwatch's CA).",
        ("up", "browse"), flag="--upstream-insecure", env="CLICKWATCH_UPSTREAM_INSECURE", key="up.upstream_insecure",
    ),
    Setting(
        "token", str, "",
        "Access token for the dashboard and its API; required when listening beyond loopback. A flag shows in "
        "`ps` to every user of the machine: prefer token_file or the environment.",
        ("up", "check", "browse", "dashboard"), flag="--token", env="CLICKWATCH_TOKEN", key="up.token",
    ),
    Setting(
        "token_file", str, "",
        "Path of a file holding the access token (its first line); wins over token however that is given.",
        ("up", "check", "browse"), flag="--token-file", env="CLICKWATCH_TOKEN_FILE", key="up.token_file",
    ),
    Setting(
        "quiet", bool, False, "No live progress line in the terminal; warnings and errors still show.",
        ("up",), flag="--quiet", env="CLICKWATCH_QUIET", key="up.quiet",
    ),
    Setting(
        "storefront", tuple, (),
        "Storefront hosts to intercept, beside the tracking hosts (tenant, tag): a host, host:port or pattern "
        "such as *.example-shop.com; repeatable, comma-separated in the environment. Every other HTTPS connection "
        "passes through as an opaque tunnel and plain-HTTP requests to other hosts are forwarded unjudged; empty "
        "intercepts every host.",
        ("up", "browse", "addon", "dashboard"), flag="--storefront", env="CLICKWATCH_STOREFRONT", key="up.storefront",
        option="clickwatch_storefront",
    ),
    Setting(
        "forwarded_allow_ips", tuple, (),
        "Reverse proxies in front of the dashboard that are trusted to name the client (X-Forwarded-For) and the "
        "scheme (X-Forwarded-Proto): IP addresses or networks such as 10.0.0.0/8; repeatable, comma-separated in "
        "the environment. Wrong tokens are counted per client address: empty trusts no proxy, so every connection "
        "counts as the address it comes from.",
        ("up", "dashboard"), flag="--forwarded-allow-ips", env="CLICKWATCH_FORWARDED_ALLOW_IPS",
        key="up.forwarded_allow_ips", addresses=True,
    ),
    Setting(
        "url", str, "http://127.0.0.1:8000",
        "The running dashboard `clickwatch check` reads (unless given --db); `clickwatch browse` uses that "
        "clickwatch when given, else starts one.",
        ("check", "browse"), flag="--url", env="CLICKWATCH_URL",
    ),
    # What is captured.
    _capture(
        "clickstream_path", matching.DEFAULT_CLICKSTREAM_PATH,
        "Regular expression searched in the request path of clickstream event POSTs (ISS edge endpoint).",
    ),
    _capture(
        "consent_path", matching.DEFAULT_CONSENT_PATH,
        "Regular expression searched in the request path of consent-reference POSTs.",
    ),
    _capture(
        "strategy_path", matching.DEFAULT_STRATEGY_PATH,
        "Regular expression searched in the request path of merchandising strategy calls.",
    ),
    _capture(
        "tag_pattern", matching.DEFAULT_TAG_PATTERN,
        "Regular expression searched in 'host/path' of Profile Tag script and tag config loads.",
    ),
    _capture(
        "tenant_host", matching.DEFAULT_TENANT_HOST,
        "Regular expression the host of clickstream, consent-reference and strategy calls must match; "
        "empty means any host.",
    ),
    Setting(
        "body_limit", int, 65536,
        "Characters of each decoded request or response body kept in the store; longer bodies are truncated "
        "and flagged.",
        ("addon", "judge"), key="capture.body_limit", option="clickwatch_body_limit", minimum=0, unit="characters",
    ),
    Setting(
        "body_decode_limit", int, decoding.DEFAULT_DECODE_LIMIT,
        "Bytes a tracking request or response body is decoded to at most (after undoing gzip, br, zstd); a body "
        "that decodes to more is not read: it is kept as a short base64 prefix, and a clickstream POST gets an "
        "invalid_payload finding saying it was too big.",
        ("addon", "judge"), key="capture.body_decode_limit", option="clickwatch_body_decode_limit", minimum=1,
        unit="bytes",
    ),
    Setting(
        "redact", str, "",
        "Header, query parameter and JSON key names whose values are stored as <redacted>, comma-separated, added "
        "to the built-in list (authorization, cookie, set-cookie, x-api-key, token, password, ...: "
        "docs/operations.md); the built-in list cannot be shortened.",
        ("addon", "judge"), key="capture.redact", option="clickwatch_redact",
    ),
    Setting(
        "expected_status", dict, None,
        "Statuses that count as delivered, per kind: '201', '2xx', '200-204', lists with ','. As an option, "
        "per kind overriding the file, e.g. 'clickstream=201;consent_reference=201;preflight=2xx;tag=2xx,304;"
        "strategy=2xx'.",
        ("addon", "judge"), key="expected_status", option="clickwatch_expected_status", keys=tuple(Kind),
    ),
    # How consent is judged.
    Setting(
        "consent_template", str, "PROFILE", "Consent template id of the tracking consent.",
        ("judge",), key="consent.template", nonempty=True,
    ),
    _seconds(
        "grace_seconds", 10.0, "consent.grace_seconds",
        "Wait this long for a consent signal after a tracking call before calling it a violation.",
    ),
    _seconds(
        "echo_seconds", 120.0, "consent.echo_seconds",
        "Spartacus-style visitors without the observer: wait this long for the next consent echo.",
    ),
    Setting(
        "observer_enabled", bool, True,
        "Add clickwatch's data-layer observer (<script src=\"/__clickwatch/observer.js\">) to storefront pages, "
        "so consent and intended events are read in the browser; off, they are judged from network traffic only.",
        ("up", "browse", "addon", "judge"),
        flag="--no-observer", env="CLICKWATCH_OBSERVER", key="observer.enabled", option="clickwatch_observer",
    ),
    _seconds(
        "reconcile_seconds", 5.0, "observer.reconcile_seconds",
        "A data-layer push with consent and no clickstream POST within this is event_not_sent.",
    ),
    Setting(
        "datalayer_schemas", dict, None,
        "Data-layer push name -> the hybris-schema the tag sends for it; extends the built-in table, '' removes "
        "a built-in entry.",
        ("judge",), key="datalayer_schemas",
    ),
    # Time windows of the findings.
    _seconds(
        "duplicate_seconds", 2.0, "windows.duplicate_seconds", "Identical events closer than this are duplicates.",
    ),
    _seconds(
        "session_seconds", 1800.0, "windows.session_seconds",
        "More than one consent reference within this is repeated_consent_reference.",
    ),
    _seconds(
        "silence_seconds", 30.0, "windows.silence_seconds",
        "After consent and a page load, events must arrive within this.",
    ),
    _seconds("slow_delivery_seconds", 2.0, "windows.slow_delivery_seconds", "Answers slower than this are slow."),
    Setting(
        "schemas", dict, None,
        "Required body fields per hybris-schema name; extends the built-in table, a name given replaces its entry.",
        ("judge",), key="schemas",
    ),
    Setting(
        "severity", dict, None, "The severity (error, warning or info) of each finding kind.",
        ("judge",), key="severity", keys=tuple(FindingKind),
    ),
    # The proxy's store link.
    Setting(
        "webhook", str, "",
        "URL to POST a JSON notification (Slack-compatible 'text') to when a delivery is rejected or failed "
        "or an error finding is recorded; empty means no notifications.",
        ("addon", "store"), option="clickwatch_webhook",
    ),
    Setting(
        "webhook_interval", int, 10,
        "Minimum seconds between two webhook notifications; what happens in between is sent together.",
        ("addon", "store"), option="clickwatch_webhook_interval", minimum=0, unit="seconds",
    ),
    Setting(
        "stream_bytes", int, 1048576,
        "Answers and request bodies larger than this (or of unknown length), other than tracking calls, pass "
        "through as a stream instead of being read whole (storefront pages too, with the observer added as they "
        "stream); server-sent events always do.",
        ("addon",), option="clickwatch_stream_bytes", minimum=0, unit="bytes",
    ),
    Setting(
        "observer_token_seconds", int, 57600,
        "How long after a page was served the observer's reports from it count (its token's life); later ones are "
        "dropped as expired. The default, 16 hours, outlasts a working day with a tab left open.",
        ("addon",), option="clickwatch_observer_token_seconds", minimum=1, unit="seconds",
    ),
    Setting(
        "queue_size", int, 10000,
        "Observations held in memory while the database cannot be written; beyond it they are dropped and counted.",
        ("addon", "store"), option="clickwatch_queue_size", minimum=1,
    ),
    Setting(
        "queue_bytes", int, 256 * 1024 * 1024,
        "Bytes of request and response bodies held in memory, on each end of the pipe to the store process, "
        "while the store cannot keep up; beyond it answers keep only their verdict and other observations are "
        "dropped and counted.",
        ("addon", "store"), option="clickwatch_queue_bytes", minimum=1024, unit="bytes",
    ),
    Setting(
        "store_process", bool, True,
        "Decode, judge and write deliveries in a separate store process, so the proxy's event loop never "
        "waits for them; false does it in a thread of the proxy process (slower under heavy load).",
        ("addon",), option="clickwatch_store_process",
    ),
    Setting(
        "shutdown_timeout", int, 10,
        "Seconds clickwatch waits at exit for queued deliveries to be written to a database that is busy.",
        ("addon", "store"), option="clickwatch_shutdown_timeout", minimum=0, unit="seconds",
    ),
    # The dashboard on its own (`clickwatch up` sets these from its own settings).
    Setting(
        "proxy_url", str, "http://127.0.0.1:8080", "The proxy address the dashboard's setup page tells people to use.",
        ("dashboard",), env="CLICKWATCH_PROXY_URL",
    ),
    Setting(
        "confdir", str, "~/.mitmproxy",
        "mitmproxy's configuration directory, where the dashboard finds the CA certificate it offers.",
        ("dashboard",), env="CLICKWATCH_CONFDIR",
    ),
    Setting(
        "poll_seconds", float, 0.25, "How often the live event stream looks for new deliveries.",
        ("dashboard",), env="CLICKWATCH_POLL_SECONDS", minimum=0, unit="seconds",
    ),
)  # fmt: skip

BY_NAME: Mapping[str, Setting] = {s.name: s for s in SETTINGS}
BY_OPTION: Mapping[str, Setting] = {s.option: s for s in SETTINGS if s.option}
SECTIONS: tuple[str, ...] = tuple(dict.fromkeys(s.section for s in SETTINGS if s.section))


def default(name: str) -> Any:
    """The default of a setting (for the typed views: Config, CommandSettings, DashboardSettings)."""
    return BY_NAME[name].default


def for_command(command: str) -> tuple[Setting, ...]:
    """The settings a command takes as flags."""
    return tuple(s for s in SETTINGS if command in s.used_by and s.flag)


def documented_keys() -> tuple[str, ...]:
    """Every key a configuration file may hold, as "section.key" ("section.*" for open tables)."""
    keys: list[str] = []
    for s in SETTINGS:
        if s.key and s.type is dict:
            keys += [f"{s.key}.{k}" for k in s.keys] if s.keys else [f"{s.key}.*"]
        elif s.key:
            keys.append(s.key)
    return tuple(keys)


def from_mapping(data: Mapping[str, Any]) -> dict[str, Any]:
    """The scalar settings a parsed configuration file sets, by name; ConfigError for unknown or bad keys.

    Tables (dict settings) are left to core.config, which knows their contents.
    """
    values: dict[str, Any] = {}
    for section, body in data.items():
        if section not in SECTIONS:
            raise ConfigError(f"{section}: unknown section (known: {', '.join(SECTIONS)})")
        if not isinstance(body, dict):
            raise ConfigError(f"{section}: expected a table ([{section}]), got {body!r}")
        known = {s.key.partition(".")[2]: s for s in SETTINGS if s.key and s.section == section and s.type is not dict}
        if not known:
            continue
        for key, value in body.items():
            where = f"{section}.{key}"
            if key not in known:
                raise ConfigError(f"{where}: unknown key (known: {', '.join(known)})")
            values[known[key].name] = known[key].from_file(value, where)
    return values


class AddonOption(NamedTuple):
    """A mitmproxy option as `loader.add_option` takes it."""

    name: str
    typespec: Any
    default: Any
    help: str
    choices: tuple[str, ...] | None


def addon_options() -> tuple[AddonOption, ...]:
    """The addon's mitmproxy options.

    A judged setting's option defaults to None, "not set": the configuration file (or the default) decides, and any
    value given, the default included, overrides the file. mitmproxy parses no Optional[bool], so such a switch
    is an optional "true"/"false" string.
    """
    options = []
    for s in SETTINGS:
        if not s.option:
            continue
        if not s.judged:
            options.append(AddonOption(s.option, Sequence[str] if s.type is tuple else s.type, s.default, s.help, None))
            continue
        unset = "none" if s.type is dict else f"the configuration file's {s.key}, else {s.shown()}"
        typespec = str | None if s.type in (bool, dict) else s.type | None
        choices = ("true", "false") if s.type is bool else None
        options.append(AddonOption(s.option, typespec, None, f"{s.help} Not set: {unset}.", choices))
    return tuple(options)


def option_value(s: Setting, value: Any) -> Any:
    """A value as the setting's addon option takes it."""
    if s.judged and s.type is bool:
        return "true" if value else "false"
    return value


def option_problem(s: Setting, value: Any) -> str | None:
    """What is wrong with an addon option's value, in the words an OptionsError uses, or None."""
    if value is None:
        return None
    if s.judged and s.type is bool:
        try:
            s.parse(value)
        except SettingError as exc:
            return f"{s.option}: {exc}, got {value!r}"
        return None
    problem = s.problem(value) if s.type is not dict else None
    return f"{s.option}: {problem}, not {value}" if problem else None


def option_parsed(s: Setting, value: Any) -> Any:
    """An addon option's value as the setting's type (None stays None: not set)."""
    if value is not None and s.judged and s.type is bool:
        return s.parse(value)
    return value


def resolve(
    command: str, flags: Mapping[str, Any], environ: Mapping[str, str], file_values: Mapping[str, Any]
) -> dict[str, Any]:
    """Each setting of a command: its flag, else its environment variable, else the file, else the default.

    SettingError names the flag or variable and the problem.
    """
    values: dict[str, Any] = {}
    for s in for_command(command):
        value, where = flags.get(s.name), s.flag
        if value is None and s.env and environ.get(s.env):
            raw = environ[s.env]
            where = f"{s.env}={raw!r}"
            try:
                value = s.parse(raw)
            except SettingError as exc:
                raise SettingError(f"{where}: {exc}") from None
        if value is None:
            value = file_values.get(s.name, s.default)
        else:
            if s.type is tuple:
                value = tuple(value)  # a repeatable flag gives a list
            if (problem := s.problem(value)) is not None:
                shown = where == s.flag and s.type is not tuple  # a list's problem names the bad item
                raise SettingError(f"{where}: {problem}" + (f", not {value}" if shown else ""))
        values[s.name] = value
    return values


@dataclass(frozen=True)
class CommandSettings:
    """What a command runs with (where it stores, listens and reads), as opposed to how it judges (Config).

    Built from SETTINGS by `resolve`: flag > environment > configuration file > default.
    """

    db: str = default("db")
    config: str = default("config")
    proxy_port: int = default("proxy_port")
    dashboard_port: int = default("dashboard_port")
    listen_host: str = default("listen_host")
    upstream_insecure: bool = default("upstream_insecure")
    token: str = default("token")
    token_file: str = default("token_file")
    quiet: bool = default("quiet")
    url: str = default("url")
    observer_enabled: bool = default("observer_enabled")
    storefront: tuple[str, ...] = default("storefront")
    forwarded_allow_ips: tuple[str, ...] = default("forwarded_allow_ips")


def _cell(text: str) -> str:
    return f"`{text}`" if text else ""


def _code(text: str) -> str:
    return "`" + text.replace("|", "\\|") + "`"


def markdown() -> str:
    """The reference of every setting, as docs/settings.md holds it."""
    lines = [
        "# Settings",
        "",
        "<!-- Generated from SETTINGS in core/settings.py by "
        "`python -m clickwatch.core.settings --markdown > docs/settings.md`; do not edit by hand "
        "(tests/test_settings_table.py checks it). -->",
        "",
        "Every setting of clickwatch, with each name it can be given by. Where a setting has several, a "
        "command-line flag wins over the environment variable, which wins over the configuration file "
        "([configuration.md](configuration.md)), which wins over the default. An addon option (`--set "
        "clickwatch_…=…` on `clickwatch up` or `mitmdump`) that is set wins over the configuration file, even when "
        "it names the default; a judged setting's option is unset until given.",
        "",
        "| setting | default | flag | environment | config key | addon option |",
        "|---|---|---|---|---|---|",
    ]
    for s in SETTINGS:
        shown = s.shown()
        default_cell = shown if s.type is dict or shown == "empty" else _code(shown)
        key = f"{s.key}.*" if s.type is dict else (s.key or "")
        lines.append(
            f"| [{s.name}](#{s.name}) | {default_cell} | {_cell(s.flag or '')} | "
            f"{_cell(s.env or '')} | {_cell(key)} | {_cell(s.option or '')} |"
        )
    for s in SETTINGS:
        lines += ["", f"## {s.name}", "", s.help, ""]
        type_name = "table" if s.type is dict else "list of strings" if s.type is tuple else s.type.__name__
        shown = s.shown()
        lines.append(f"- type: {type_name}; default: {shown if s.type is dict or shown == 'empty' else _code(shown)}")
        if s.flag:
            commands = ", ".join(f"`clickwatch {c}`" for c in COMMANDS if c in s.used_by)
            lines.append(f"- flag: `{s.flag}` ({commands})")
        if s.env:
            lines.append(f"- environment: `{s.env}`" + ("=false" if s.flag and s.flag.startswith("--no-") else ""))
        if s.key and s.type is dict:
            keys = ", ".join(f"`{s.key}.{k}`" for k in s.keys) if s.keys else f"`{s.key}.*` (any name)"
            lines.append(f"- config keys: {keys}")
        elif s.key:
            lines.append(f"- config key: `{s.key}`")
        if s.option:
            lines.append(f"- addon option: `{s.option}`" + (" (unset until given)" if s.judged else ""))
        if s.minimum is not None:
            problem = s.problem(s.minimum - 1)
            lines.append(f"- {problem}")
        lines.append("- used by: " + ", ".join(USED_BY[u] for u in s.used_by))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """`python -m clickwatch.core.settings --markdown`: print the reference."""
    parser = argparse.ArgumentParser(prog="python -m clickwatch.core.settings", description=markdown.__doc__)
    parser.add_argument("--markdown", action="store_true", help="print docs/settings.md")
    args = parser.parse_args(argv)
    if not args.markdown:
        parser.print_help()
        return 2
    sys.stdout.write(markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
