"""clickwatch's settings: defaults from SAP's public storefront and tag sources, overridable by one TOML file."""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any

from clickwatch.core import matching
from clickwatch.core.findings import DEFAULT_SEVERITY, FindingKind, Severity
from clickwatch.core.model import Kind
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


class ConfigError(ValueError):
    """The configuration file cannot be used; the message names the key and the problem."""


@dataclass(frozen=True)
class Config:
    """Every setting clickwatch's core uses, with its default."""

    clickstream_path: str = matching.DEFAULT_CLICKSTREAM_PATH
    consent_path: str = matching.DEFAULT_CONSENT_PATH
    strategy_path: str = matching.DEFAULT_STRATEGY_PATH
    tag_pattern: str = matching.DEFAULT_TAG_PATTERN
    tenant_host: str = matching.DEFAULT_TENANT_HOST
    body_limit: int = 65536
    expected_status: Mapping[Kind, StatusSet] = DEFAULT_EXPECTED
    consent_template: str = "PROFILE"
    grace_seconds: float = 10.0
    echo_seconds: float = 120.0
    duplicate_seconds: float = 2.0
    session_seconds: float = 1800.0
    silence_seconds: float = 30.0
    slow_delivery_seconds: float = 2.0
    schemas: Mapping[str, tuple[str, ...]] = BUILTIN_SCHEMAS
    severity: Mapping[FindingKind, Severity] = DEFAULT_SEVERITY
    observer_enabled: bool = True
    reconcile_seconds: float = 5.0
    datalayer_schemas: Mapping[str, str] = BUILTIN_DATALAYER_SCHEMAS
    db: str = "clickwatch.db"
    proxy_port: int = 8080
    dashboard_port: int = 8000
    listen_host: str = "127.0.0.1"
    upstream_insecure: bool = False
    token: str = ""
    quiet: bool = False
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


# TOML layout: section -> key -> (Config field, type check).
_SCALARS: dict[str, dict[str, tuple[str, type]]] = {
    "capture": {
        "clickstream_path": ("clickstream_path", str),
        "consent_path": ("consent_path", str),
        "strategy_path": ("strategy_path", str),
        "tag_pattern": ("tag_pattern", str),
        "tenant_host": ("tenant_host", str),
        "body_limit": ("body_limit", int),
    },
    "consent": {
        "template": ("consent_template", str),
        "grace_seconds": ("grace_seconds", float),
        "echo_seconds": ("echo_seconds", float),
    },
    "observer": {
        "enabled": ("observer_enabled", bool),
        "reconcile_seconds": ("reconcile_seconds", float),
    },
    "store": {
        "db": ("db", str),
    },
    "up": {
        "proxy_port": ("proxy_port", int),
        "dashboard_port": ("dashboard_port", int),
        "listen_host": ("listen_host", str),
        "upstream_insecure": ("upstream_insecure", bool),
        "token": ("token", str),
        "quiet": ("quiet", bool),
    },
    "windows": {
        "duplicate_seconds": ("duplicate_seconds", float),
        "session_seconds": ("session_seconds", float),
        "silence_seconds": ("silence_seconds", float),
        "slow_delivery_seconds": ("slow_delivery_seconds", float),
    },
}
_MAPS = ("expected_status", "schemas", "severity", "datalayer_schemas")

# Every key a configuration file may hold, as "section.key" ("section.*" for open tables).
DOCUMENTED_KEYS: tuple[str, ...] = (
    *(f"{section}.{key}" for section, keys in _SCALARS.items() for key in keys),
    *(f"expected_status.{kind.value}" for kind in Kind),
    "schemas.*",
    "datalayer_schemas.*",
    *(f"severity.{kind.value}" for kind in FindingKind),
)


def _check_scalar(where: str, value: Any, expected: type) -> Any:
    if expected is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if expected is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(f"{where}: expected a number of seconds, got {value!r}")
        if value < 0:
            raise ConfigError(f"{where}: must not be negative, got {value!r}")
        return float(value)
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected a whole number, got {value!r}")
        if value < 0:
            raise ConfigError(f"{where}: must not be negative, got {value!r}")
        return value
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _table(where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a table ([{where}]), got {value!r}")
    return value


def config_from_mapping(data: Mapping[str, Any], source: str = "configuration") -> Config:
    """Build a Config from parsed TOML, rejecting unknown keys and wrong types by name."""
    changes: dict[str, Any] = {"source": source}
    for section, body in data.items():
        if section in _SCALARS:
            for key, value in _table(section, body).items():
                where = f"{section}.{key}"
                if key not in _SCALARS[section]:
                    raise ConfigError(f"{where}: unknown key (known: {', '.join(_SCALARS[section])})")
                name, value_type = _SCALARS[section][key]
                changes[name] = _check_scalar(where, value, value_type)
        elif section == "expected_status":
            expected = dict(DEFAULT_EXPECTED)
            for key, value in _table(section, body).items():
                where = f"expected_status.{key}"
                try:
                    kind = Kind(key)
                except ValueError:
                    raise ConfigError(f"{where}: unknown delivery kind (known: {', '.join(Kind)})") from None
                try:
                    expected[kind] = StatusSet.parse(
                        str(value) if isinstance(value, int) else _check_scalar(where, value, str)
                    )
                except StatusSpecError as exc:
                    raise ConfigError(f"{where}: {exc}") from None
            changes["expected_status"] = MappingProxyType(expected)
        elif section == "schemas":
            schemas = dict(BUILTIN_SCHEMAS)
            for key, value in _table(section, body).items():
                where = f"schemas.{key}"
                if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                    raise ConfigError(f"{where}: expected a list of required field names, got {value!r}")
                schemas[key] = tuple(value)
            changes["schemas"] = MappingProxyType(schemas)
        elif section == "datalayer_schemas":
            mapping = dict(BUILTIN_DATALAYER_SCHEMAS)
            for key, value in _table(section, body).items():
                where = f"datalayer_schemas.{key}"
                if not isinstance(value, str):
                    raise ConfigError(f"{where}: expected a schema name or '' (not sent by the tag), got {value!r}")
                if value:
                    mapping[key] = value
                else:
                    mapping.pop(key, None)
            changes["datalayer_schemas"] = MappingProxyType(mapping)
        elif section == "severity":
            severity = dict(DEFAULT_SEVERITY)
            for key, value in _table(section, body).items():
                where = f"severity.{key}"
                try:
                    finding = FindingKind(key)
                except ValueError:
                    raise ConfigError(f"{where}: unknown finding kind (known: {', '.join(FindingKind)})") from None
                try:
                    severity[finding] = Severity(value)
                except ValueError:
                    raise ConfigError(f"{where}: expected one of error, warning, info, got {value!r}") from None
            changes["severity"] = MappingProxyType(severity)
        else:
            known = ", ".join([*_SCALARS, *_MAPS])
            raise ConfigError(f"{section}: unknown section (known: {known})")
    config = replace(Config(), **changes)
    for key in ("clickstream_path", "consent_path", "strategy_path", "tag_pattern", "tenant_host"):
        try:
            matching.compile_pattern(f"capture.{key}", getattr(config, key))
        except matching.PatternError as exc:
            raise ConfigError(str(exc)) from None
    if not config.consent_template:
        raise ConfigError("consent.template: must not be empty")
    for key in ("proxy_port", "dashboard_port"):
        if not 1 <= getattr(config, key) <= 65535:
            raise ConfigError(f"up.{key}: must be a port number 1-65535, got {getattr(config, key)}")
    return config


def load_config(path: str) -> Config:
    """Read a TOML configuration file; every problem becomes a ConfigError naming the file and key."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    try:
        return config_from_mapping(data, source=path)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


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
