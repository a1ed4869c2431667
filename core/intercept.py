"""Which hosts the proxy intercepts when storefront hosts are given: those and the tracking hosts, nothing else.

Owns the translation of storefront host patterns (`shop.example.com`, `*.example-shop.com`, `shop.test:8443`) and of
the configured tracking patterns (tenant host, tag pattern) into the anchored regular expressions mitmproxy's own
`allow_hosts` option matches against "host:port". mitmproxy then tunnels every other TLS connection untouched, and
the addon forwards plain-HTTP requests to other hosts unjudged by the same expressions.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

# When no tenant host is configured, tracking calls may go to any host: under --storefront the tenant's hosts are
# then taken to be the ISS cloud's (`<tenant>-<site>.api.<env>.context.cloud.sap`, the tag host beside them).
DEFAULT_TRACKING_DOMAIN = "context.cloud.sap"
_PORT_END = r"(?=:\d+$)"  # where the host ends in "host:port"
_HOST_PATTERN = re.compile(r"(?P<host>[a-z0-9*.\-]+)(?::(?P<port>\d+))?")


class HostPatternError(ValueError):
    """A storefront host pattern cannot be used; the message says what was expected."""


@dataclass(frozen=True, slots=True)
class Interception:
    """The allow_hosts expressions for storefront hosts and for tracking hosts, and what could not be derived."""

    storefront_patterns: tuple[str, ...]  # as given
    storefront: tuple[str, ...]
    tracking: tuple[str, ...]
    notes: tuple[str, ...] = ()

    @property
    def allow_hosts(self) -> tuple[str, ...]:
        """Every host that is intercepted, as mitmproxy's allow_hosts takes them."""
        return self.storefront + self.tracking


def storefront_regex(pattern: str) -> str:
    """A storefront host pattern as an anchored expression on "host:port" (`*` stands for one or more labels)."""
    found = _HOST_PATTERN.fullmatch(pattern.strip().lower())
    if found is None or found["host"].strip("*.") == "":
        raise HostPatternError(
            f"{pattern!r} is not a host name or pattern (e.g. shop.example.com, *.example-shop.com, shop.test:8443)"
        )
    host, port = found["host"], found["port"] or ""
    if port and not 0 < int(port) < 65536:
        raise HostPatternError(f"{pattern!r}: the part after ':' must be a port number")
    body = r"[^:]+".join(re.escape(part) for part in host.split("*"))
    return f"^{body}:{port or r'\d+'}$"


def host_regex(regex: str) -> str:
    """An expression searched in a host alone, rewritten for "host:port": its end anchors mean the host's end."""
    out: list[str] = []
    i, in_class = 0, False
    while i < len(regex):
        c = regex[i]
        if c == "\\":
            pair = regex[i : i + 2]
            out.append(_PORT_END if pair == r"\Z" and not in_class else pair)
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            # "]" right after "[" or "[^" is a literal member, not the end of the class.
            j = i + 1 + (regex[i + 1 : i + 2] == "^")
            j += regex[j : j + 1] == "]"
            out.append(regex[i:j])
            i, in_class = j, True
            continue
        elif c == "$":
            out.append(_PORT_END)
            i += 1
            continue
        out.append(c)
        i += 1
    return "".join(out)


def tag_host_regex(tag_pattern: str) -> str | None:
    """The host part of the tag pattern (searched in "host/path"), or None when it has no top-level '/'."""
    depth, i, in_class = 0, 0, False
    while i < len(tag_pattern):
        c = tag_pattern[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            i += 1 + (tag_pattern[i + 1 : i + 2] == "^")
            i += tag_pattern[i : i + 1] == "]"
            in_class = True
            continue
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "/" and depth == 0:
            host = tag_pattern[:i]
            if not host or "|" in host:
                return None  # an alternation would end at the cut: the host part cannot stand alone
            regex = host_regex(host) + _PORT_END
            try:
                re.compile(regex)
            except re.error:
                return None
            return regex
        i += 1
    return None


def interception(storefronts: Sequence[str], tenant_host: str, tag_pattern: str) -> Interception | None:
    """What to intercept for these storefront patterns; None (every host) when none is given.

    Raises HostPatternError naming a bad storefront pattern.
    """
    if not storefronts:
        return None
    storefront = tuple(dict.fromkeys(storefront_regex(p) for p in storefronts))
    notes: list[str] = []
    if tenant_host:
        tracking = [host_regex(tenant_host)]
    else:
        tracking = [r"(?:^|\.)" + re.escape(DEFAULT_TRACKING_DOMAIN) + _PORT_END]
        notes.append(f"tenant_host is not set: tracking calls are intercepted on *.{DEFAULT_TRACKING_DOMAIN}")
    if tag_pattern:
        tag = tag_host_regex(tag_pattern)
        if tag is None:
            notes.append("no host can be read off tag_pattern: tag loads are judged on the hosts above only")
        elif tag not in tracking:
            tracking.append(tag)
    return Interception(tuple(p.strip() for p in storefronts), storefront, tuple(tracking), tuple(notes))


def allowed(expressions: Sequence[re.Pattern[str]], host: str, port: int, *more_hosts: str) -> bool:
    """Whether any "host:port" of a request matches any expression, as mitmproxy decides for a connection."""
    names = (host, *more_hosts)
    return any(rex.search(f"{name}:{port}") for name in names for rex in expressions)
