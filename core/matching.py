"""Recognise tracking traffic by method, host and path, and a page load among storefront traffic.

Owns the patterns that tell tracking calls apart (`Patterns.classify`) and the one page-load rule (`is_page_load`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from clickwatch.core.model import Kind

DEFAULT_CLICKSTREAM_PATH = r"/edge/clickstreamEvents/?$"
DEFAULT_CONSENT_PATH = r"/consent/[^/]+/consentReferences/?$"
DEFAULT_STRATEGY_PATH = r"/strategy/(?:v1/sites/[^/]+|[^/]+)/strategies/[^/]+/products/?$"
DEFAULT_TAG_PATTERN = r"^tag\.static\.[^/]+\.context\.cloud\.sap/(?:js/profile-tag\.js|config/[^/]+)$"
DEFAULT_TENANT_HOST = ""


class PatternError(ValueError):
    """A configured pattern is not a valid regular expression."""


def compile_pattern(name: str, pattern: str) -> re.Pattern[str] | None:
    """Compile a user-supplied pattern; an empty pattern means 'no restriction'."""
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise PatternError(f"{name}: {pattern!r} is not a valid regular expression ({exc})") from None


@dataclass(frozen=True, slots=True)
class Match:
    """The kind of a tracking call; for a preflight, also the kind it precedes."""

    kind: Kind
    target: Kind | None = None


# Matches are frozen: one of each, shared, instead of a new dataclass per tracking call (its __init__ costs a
# microsecond through object.__setattr__).
_MATCH = {kind: Match(kind) for kind in Kind}
_PREFLIGHT = {kind: Match(Kind.PREFLIGHT, kind) for kind in Kind}


@dataclass(frozen=True, slots=True)
class Patterns:
    """Compiled patterns that decide which flows are tracking calls."""

    clickstream_path: re.Pattern[str] | None
    consent_path: re.Pattern[str] | None
    strategy_path: re.Pattern[str] | None
    tag: re.Pattern[str] | None
    tenant_host: re.Pattern[str] | None

    @classmethod
    def compile(
        cls,
        clickstream_path: str = DEFAULT_CLICKSTREAM_PATH,
        consent_path: str = DEFAULT_CONSENT_PATH,
        strategy_path: str = DEFAULT_STRATEGY_PATH,
        tag: str = DEFAULT_TAG_PATTERN,
        tenant_host: str = DEFAULT_TENANT_HOST,
    ) -> Patterns:
        """Compile pattern strings, raising PatternError naming the bad one."""
        return cls(
            clickstream_path=compile_pattern("clickstream path", clickstream_path),
            consent_path=compile_pattern("consent reference path", consent_path),
            strategy_path=compile_pattern("strategy path", strategy_path),
            tag=compile_pattern("tag pattern", tag),
            tenant_host=compile_pattern("tenant host", tenant_host),
        )

    def classify(self, method: str, host: str, path: str) -> Match | None:
        """Return what kind of tracking call this is, or None for ordinary traffic."""
        path = path.split("?", 1)[0]
        method = method.upper()
        if (
            self.tag is not None
            and method in ("GET", "HEAD", "OPTIONS")
            and self.tag.search(f"{host}/{path.lstrip('/')}")
        ):
            # A preflight of a tag load: only a header the page (or a tool in the browser) added makes one, and
            # its refusal blocks the tag; recorded so that the refusal is seen.
            return _PREFLIGHT[Kind.TAG] if method == "OPTIONS" else _MATCH[Kind.TAG]
        if self.tenant_host is not None and not self.tenant_host.search(host):
            return None
        target = self._tenant_call(path)
        if target is None:
            return None
        if method == "OPTIONS":
            return _PREFLIGHT[target]
        expected_method = "GET" if target is Kind.STRATEGY else "POST"
        return _MATCH[target] if method == expected_method else None

    def _tenant_call(self, path: str) -> Kind | None:
        if self.clickstream_path is not None and self.clickstream_path.search(path):
            return Kind.CLICKSTREAM
        if self.consent_path is not None and self.consent_path.search(path):
            return Kind.CONSENT_REFERENCE
        if self.strategy_path is not None and self.strategy_path.search(path):
            return Kind.STRATEGY
        return None


def is_page_load(
    method: str, sec_fetch_dest: bytes | None, accept: bytes, content_type: bytes, sec_fetch_mode: bytes | None = None
) -> bool:
    """Whether a storefront exchange is a page (an HTML document the browser navigated to), not an asset.

    On raw header values, as the proxy holds them: it runs for every storefront request, and HAR import turns its
    header strings back into bytes for it (`core.storefront.read_exchange` reads both). A navigation a service
    worker fetched on the page's behalf (`fetch(event.request)`) keeps `Sec-Fetch-Mode: navigate` but is sent with
    `Sec-Fetch-Dest: empty`: it is a page load too, and its answer reaches the page as it left the proxy.
    """
    if content_type[:9].lower() != b"text/html" or method.upper() != "GET":
        return False
    if sec_fetch_dest is not None:
        dest = sec_fetch_dest.lower()
        return dest in (b"document", b"iframe") or (
            dest == b"empty" and sec_fetch_mode is not None and sec_fetch_mode.lower() == b"navigate"
        )
    return b"text/html" in accept.lower()
