"""How clickwatch judges (Config), and reading the TOML configuration file.

The settings themselves (names, types, defaults, keys) are declared once, in core.settings; Config is the judge's
typed view of those it reads, and the built-in tables below (schemas, data-layer mapping) are their defaults.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from clickwatch.core import matching, settings
from clickwatch.core.findings import DEFAULT_SEVERITY, FindingKind, Severity
from clickwatch.core.model import Kind
from clickwatch.core.settings import ConfigError as ConfigError
from clickwatch.core.settings import default
from clickwatch.core.verdict import DEFAULT_EXPECTED, StatusSet, StatusSpecError, parse_expected

# Required body fields per hybris-schema, from the storefronts' data-layer pushes (Spartacus integration-libs/cds).
# Kept to the identifying fields: tenants flatten and rename the rest.
BUILTIN_SCHEMAS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "ProductView": ("productSku",),
        "CategoryView": ("productCategory",),
        "KeywordSearch": ("searchTerm",),
        "AddedToCart": ("productSku", "productQty"),
        "RemovedFromCart": ("productSku",),
        "ModifiedCart": ("productSku", "productQty"),
        "CartSnapshot": ("cart",),
        "OrderCreated": (),
        "UserLoggedIn": (),
        "UserRegistered": (),
        "carouselViewed": ("carouselId", "strategyId", "productSkus"),
        "carouselClicked": ("carouselId", "strategyId", "sku"),
    }
)

# Data-layer push name -> the hybris-schema of the clickstream POST the tag should send for it (Spartacus
# integration-libs/cds push events and its e2e tests' intercepted POSTs).
BUILTIN_DATALAYER_SCHEMAS: Mapping[str, str] = MappingProxyType(
    {
        "ProductDetailsPageViewed": "ProductView",
        "CategoryPageViewed": "CategoryView",
        "KeywordSearch": "KeywordSearch",
        "AddedToCart": "AddedToCart",
        "ModifiedCart": "ModifiedCart",
        "RemovedFromCart": "RemovedFromCart",
        "CartSnapshot": "CartSnapshot",
        "CarouselViewed": "carouselViewed",
        "CarouselClicked": "carouselClicked",
    }
)


@dataclass(frozen=True)
class Config:
    """How clickwatch judges: the settings the core reads (declared, with their defaults, in core.settings)."""

    clickstream_path: str = default("clickstream_path")
    consent_path: str = default("consent_path")
    strategy_path: str = default("strategy_path")
    tag_pattern: str = default("tag_pattern")
    tenant_host: str = default("tenant_host")
    body_limit: int = default("body_limit")
    body_decode_limit: int = default("body_decode_limit")
    redact: str = default("redact")
    expected_status: Mapping[Kind, StatusSet] = DEFAULT_EXPECTED
    consent_template: str = default("consent_template")
    grace_seconds: float = default("grace_seconds")
    echo_seconds: float = default("echo_seconds")
    duplicate_seconds: float = default("duplicate_seconds")
    session_seconds: float = default("session_seconds")
    silence_seconds: float = default("silence_seconds")
    slow_delivery_seconds: float = default("slow_delivery_seconds")
    schemas: Mapping[str, tuple[str, ...]] = BUILTIN_SCHEMAS
    severity: Mapping[FindingKind, Severity] = DEFAULT_SEVERITY
    observer_enabled: bool = default("observer_enabled")
    reconcile_seconds: float = default("reconcile_seconds")
    datalayer_schemas: Mapping[str, str] = BUILTIN_DATALAYER_SCHEMAS
    source: str = field(default="built-in defaults", compare=False)

    def patterns(self) -> matching.Patterns:
        """The compiled capture patterns (raises matching.PatternError)."""
        return matching.Patterns.compile(
            clickstream_path=self.clickstream_path,
            consent_path=self.consent_path,
            strategy_path=self.strategy_path,
            tag=self.tag_pattern,
            tenant_host=self.tenant_host,
        )


# Every key a configuration file may hold, as "section.key" ("section.*" for open tables).
DOCUMENTED_KEYS: tuple[str, ...] = settings.documented_keys()
_JUDGED = frozenset(s.name for s in settings.SETTINGS if s.judged)


def _table(where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a table ([{where}]), got {value!r}")
    return value


def _member[E: StrEnum](names: type[E], key: str, where: str, what: str) -> E:
    try:
        return names(key)
    except ValueError:
        raise ConfigError(f"{where}: unknown {what} (known: {', '.join(names)})") from None


def _expected_status(body: dict[str, Any]) -> Mapping[Kind, StatusSet]:
    expected = dict(DEFAULT_EXPECTED)
    for key, value in body.items():
        where = f"expected_status.{key}"
        kind = _member(Kind, key, where, "delivery kind")
        if not isinstance(value, int | str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        try:
            expected[kind] = StatusSet.parse(str(value))
        except StatusSpecError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return MappingProxyType(expected)


def _schemas(body: dict[str, Any]) -> Mapping[str, tuple[str, ...]]:
    schemas = dict(BUILTIN_SCHEMAS)
    for key, value in body.items():
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"schemas.{key}: expected a list of required field names, got {value!r}")
        schemas[key] = tuple(value)
    return MappingProxyType(schemas)


def _datalayer_schemas(body: dict[str, Any]) -> Mapping[str, str]:
    mapping = dict(BUILTIN_DATALAYER_SCHEMAS)
    for key, value in body.items():
        if not isinstance(value, str):
            raise ConfigError(
                f"datalayer_schemas.{key}: expected a schema name or '' (not sent by the tag), got {value!r}"
            )
        if value:
            mapping[key] = value
        else:
            mapping.pop(key, None)
    return MappingProxyType(mapping)


def _severity(body: dict[str, Any]) -> Mapping[FindingKind, Severity]:
    severity = dict(DEFAULT_SEVERITY)
    for key, value in body.items():
        where = f"severity.{key}"
        finding = _member(FindingKind, key, where, "finding kind")
        try:
            severity[finding] = Severity(value)
        except ValueError:
            raise ConfigError(f"{where}: expected one of error, warning, info, got {value!r}") from None
    return MappingProxyType(severity)


# The tables of the file (dict settings in core.settings), each read by its own rules.
TABLE_READERS: Mapping[str, Callable[[dict[str, Any]], Mapping[Any, Any]]] = MappingProxyType(
    {
        "expected_status": _expected_status,
        "schemas": _schemas,
        "datalayer_schemas": _datalayer_schemas,
        "severity": _severity,
    }
)


def config_from_mapping(data: Mapping[str, Any], source: str = "configuration") -> Config:
    """Build a Config from parsed TOML, rejecting unknown keys and wrong types by name.

    Every section is checked, also those of settings the judge does not read ([store], [up]): see file_settings.
    """
    values = settings.from_mapping(data)
    changes: dict[str, Any] = {name: value for name, value in values.items() if name in _JUDGED}
    for section, read in TABLE_READERS.items():
        if section in data:
            changes[section] = read(_table(section, data[section]))
    return replace(Config(), source=source, **changes)


def read_file(path: str) -> tuple[Config, dict[str, Any]]:
    """A TOML configuration file as the judge's Config and every scalar setting it sets (by name).

    Every problem becomes a ConfigError naming the file and key.
    """
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    try:
        return config_from_mapping(data, source=path), settings.from_mapping(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def load_config(path: str) -> Config:
    """Read a TOML configuration file; every problem becomes a ConfigError naming the file and key."""
    return read_file(path)[0]


def build_config(
    config_file: str = "", overrides: Mapping[str, Any] | None = None, expected_status: str = ""
) -> Config:
    """A Config from a file (or the defaults), field overrides and an expected-status spec.

    The proxy and the store process build the same Config from these three plain values. Raises ConfigError,
    StatusSpecError or matching.PatternError naming what is wrong.
    """
    config = load_config(config_file) if config_file else Config()
    changes: dict[str, Any] = dict(overrides or {})
    if expected_status:
        changes["expected_status"] = MappingProxyType(parse_expected(expected_status, config.expected_status))
    config = replace(config, **changes)
    config.patterns()
    return config


def config_fields() -> tuple[str, ...]:
    """Names of every Config field (for adapters that map their own options onto it)."""
    return tuple(f.name for f in fields(Config))
