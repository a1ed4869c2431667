"""Would a page's Content-Security-Policy let the data-layer observer run? Decided without weakening the policy.

The observer is one script element, `<script src="/__clickwatch/observer.js">` on the page's own origin, that
reports with `navigator.sendBeacon` / `fetch` to `/__clickwatch/observe` on the same origin. Each enforced
policy (every `Content-Security-Policy` header, and each comma-separated policy in one, plus `<meta
http-equiv>` policies in the document's head, read by `core.inject`) must allow both: scripts by
`script-src-elem`, `script-src` or `default-src`; reports by `connect-src` or `default-src`. A nonce in the
script directive is reused on the injected element (CSP Level 3: a nonce also covers `'strict-dynamic'`
policies).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NONCE = re.compile(r"'nonce-([A-Za-z0-9+/_=-]+)'", re.IGNORECASE)
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class Origin:
    """A page's origin."""

    scheme: str
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class CspDecision:
    """Whether the observer may be added, the nonce it must carry, and why not when it may not."""

    allowed: bool
    nonce: str | None = None
    reason: str = ""


def _directives(policy: str) -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for part in policy.split(";"):
        tokens = part.split()
        if tokens:
            # The first occurrence of a directive wins; later duplicates are ignored by browsers.
            directives.setdefault(tokens[0].lower(), tokens[1:])
    return directives


def _host_matches(pattern: str, host: str) -> bool:
    pattern, host = pattern.lower(), host.lower()
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return pattern == host


def _source_allows(source: str, origin: Origin, path: str) -> bool:
    lowered = source.lower()
    if lowered == "'self'":
        return True
    if lowered == "*":
        return origin.scheme in ("http", "https")
    if lowered.startswith("'"):
        return False  # 'none', hashes, 'unsafe-inline', ... allow no external script by URL
    if re.fullmatch(r"[a-z][a-z0-9+.-]*:", lowered):
        # A scheme source; http: also allows https (CSP3 upgrades).
        return lowered[:-1] == origin.scheme or (lowered == "http:" and origin.scheme == "https")
    match = re.fullmatch(r"(?:([a-z][a-z0-9+.-]*)://)?(\*|\*\.[^/:]+|[^/:*]+)(?::(\d+|\*))?(/.*)?", lowered)
    if match is None:
        return False
    scheme, host, port, source_path = match.groups()
    if scheme is not None and scheme != origin.scheme and not (scheme == "http" and origin.scheme == "https"):
        return False
    if host != "*" and not _host_matches(host, origin.host):
        return False
    if port is None:
        wanted = _DEFAULT_PORTS.get(scheme or origin.scheme)
        if origin.port != wanted and not (scheme == "http" and origin.port == 443):
            return False
    elif port != "*" and int(port) != origin.port:
        return False
    if source_path:
        return path == source_path if not source_path.endswith("/") else path.startswith(source_path)
    return True


def _allows(sources: list[str], origin: Origin, path: str) -> bool:
    return any(_source_allows(source, origin, path) for source in sources)


def decide(policies: list[str], origin: Origin, script_path: str, report_path: str) -> CspDecision:
    """Would every policy let a script from `script_path` run and report to `report_path` on `origin`?"""
    nonce: str | None = None
    for header_value in policies:
        for policy in header_value.split(","):
            directives = _directives(policy)
            if "sandbox" in directives and "allow-scripts" not in directives["sandbox"]:
                return CspDecision(False, reason="sandbox without allow-scripts")
            scripts = next(
                (directives[d] for d in ("script-src-elem", "script-src", "default-src") if d in directives), None
            )
            if scripts is not None:
                nonces = [m.group(1) for s in scripts if (m := _NONCE.fullmatch(s))]
                strict = any(s.lower() == "'strict-dynamic'" for s in scripts)
                if nonces:
                    if nonce is not None and nonce not in nonces:
                        return CspDecision(False, reason="policies require different nonces")
                    nonce = nonce or nonces[0]
                elif strict or not _allows(scripts, origin, script_path):
                    used = next(d for d in ("script-src-elem", "script-src", "default-src") if d in directives)
                    return CspDecision(False, reason=f"{used} does not allow {script_path}")
            connects = next((directives[d] for d in ("connect-src", "default-src") if d in directives), None)
            if connects is not None and not _allows(connects, origin, report_path):
                which = "connect-src" if "connect-src" in directives else "default-src"
                return CspDecision(False, reason=f"{which} does not allow reports to {report_path}")
    return CspDecision(True, nonce=nonce)
