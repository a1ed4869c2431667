"""Keep credentials and cookie values out of the store while keeping headers, URLs and bodies useful.

One list of names (built-in defaults plus the `redact` setting) is applied to header names, query parameter
names of stored URLs (and urlencoded form bodies) and JSON object keys at any depth. Names compare without case,
`-` or `_`, so `X-Api-Key`, `x_api_key`, `apiKey` and `APIKEY` are one name. A redacted
value becomes the fixed marker `<redacted>`: no hash, not even a keyed one, because a short secret hashed with a
key kept on the same machine is recovered by guessing, and a delivery check never needs to tell two secrets apart.
Cookie headers keep their cookie names and Set-Cookie its attributes; an Authorization header keeps its scheme.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import unquote_plus

from clickwatch.core.model import Headers

REDACTED = "<redacted>"
_JSON_REDACTED = json.dumps(REDACTED)

# Credentials by header, query parameter or JSON key. Not here on purpose: consent-reference (what the judge
# checks, an identifier the tenant hands out, not a credential), ordinary field names such as `code`, and
# `sessionId`, the tracking session id some tags send (a pseudonym, not a credential).
DEFAULT_NAMES: tuple[str, ...] = (
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "x-auth-token",
    "x-access-token",
    "x-csrf-token",
    "x-xsrf-token",
    "api_key",
    "apikey",
    "password",
    "passwd",
    "secret",
    "client_secret",
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "session",
    "jsessionid",
)
_AUTH_HEADERS = frozenset({"authorization", "proxyauthorization"})


@functools.lru_cache(maxsize=4096)
def normalise(name: str) -> str:
    """A name as the list compares it: no case, no '-' or '_', no surrounding space (accessToken is access_token)."""
    return name.strip().lower().replace("-", "").replace("_", "")


def parse_names(text: str) -> tuple[str, ...]:
    """The names a `redact` setting adds: separated by commas (semicolons and spaces work too)."""
    return tuple(name for name in re.split(r"[,;\s]+", text) if name)


def _redact_auth(value: str) -> str:
    scheme, sep, _ = value.strip().partition(" ")
    return f"{scheme} {REDACTED}" if sep else REDACTED


def _redact_cookie(value: str) -> str:
    # Cookie names tell which consent and session cookies a browser sent; their values never leave.
    names = [part.split("=", 1)[0].strip() for part in value.split(";") if part.strip()]
    return "; ".join(f"{name}={REDACTED}" for name in names)


def _redact_set_cookie(value: str) -> str:
    # Attributes (Secure, SameSite, Path...) explain why a tag cannot keep its cookie, so they stay.
    first, sep, attributes = value.partition(";")
    name = first.split("=", 1)[0].strip()
    return f"{name}={REDACTED}{sep}{attributes}"


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_STRING_OR_BRACKET = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)
_SCALAR_END = re.compile(r"[,}\]\s]")
_SPACE = re.compile(r"\s*")


def _value_end(text: str, start: int) -> int:
    """Where the JSON value starting at `start` ends (the text's end when it was cut short)."""
    if start >= len(text):
        return start
    first = text[start]
    if first == '"':
        match = _STRING.match(text, start)
        return match.end() if match else len(text)
    if first in "[{":
        depth = 0
        # Iterative, so depth costs nothing; strings are skipped whole, so brackets inside them do not count.
        for token in _STRING_OR_BRACKET.finditer(text, start):
            bracket = token.group()
            if bracket in ("[", "{"):
                depth += 1
            elif bracket in ("]", "}"):
                depth -= 1
                if depth == 0:
                    return token.end()
        return len(text)
    end = _SCALAR_END.search(text, start)
    return end.start() if end else len(text)


def _key(token: str) -> str:
    try:
        key = json.loads(token)
    except ValueError:
        return token[1:-1]
    return key if isinstance(key, str) else token[1:-1]


# Headers whose value is a URL: its query parameters are redacted as those of a stored URL are.
_URL_HEADERS = frozenset({"referer", "location", "contentlocation", "origin"})


@dataclass(frozen=True)
class Redaction:
    """A redaction list, ready to apply: built-in defaults plus the names a setting adds."""

    extra: tuple[str, ...] = ()
    names: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", frozenset(normalise(n) for n in (*DEFAULT_NAMES, *self.extra)))

    def mentions(self, text: str) -> bool:
        """Whether a text may hold a listed name anywhere (a cheap test; False means it certainly does not)."""
        return self._mentions(text)

    def _mentions(self, text: str) -> bool:
        # A cheap first look (substring searches in C): most bodies and URLs name none of these, and then
        # nothing is parsed.
        squeezed = text.lower().replace("-", "").replace("_", "")
        return any(name in squeezed for name in self.names)

    @classmethod
    def from_setting(cls, text: str) -> Redaction:
        """The list a `redact` setting describes."""
        return cls(parse_names(text))

    def secret(self, name: str) -> bool:
        """Whether a header, parameter or key of this name has its value redacted."""
        return normalise(name) in self.names

    def headers(self, headers: Headers) -> Headers:
        """Headers with the values of listed names redacted (Authorization keeps its scheme, cookies their names)."""
        out = []
        for name, value in headers:
            key = normalise(name)
            if key in self.names:
                if key in _AUTH_HEADERS:
                    value = _redact_auth(value)
                elif key == "cookie":
                    value = _redact_cookie(value)
                elif key == "setcookie":
                    value = _redact_set_cookie(value)
                else:
                    value = REDACTED
            elif key in _URL_HEADERS:
                value = self.url(value)  # a Referer or Location carries the page's query: ?token=... too
            out.append((name, value))
        return tuple(out)

    def query(self, query: str) -> str:
        """An urlencoded query or form with the values of listed parameters redacted; the rest kept as sent."""
        if not self._mentions(query):
            return query
        parts = []
        for part in query.split("&"):
            name, sep, _ = part.partition("=")
            if sep and self.secret(unquote_plus(name)):
                part = f"{name}={REDACTED}"
            parts.append(part)
        return "&".join(parts)

    def url(self, url: str) -> str:
        """A URL (or a path with its query) with the values of listed query parameters redacted."""
        before, sep, rest = url.partition("?")
        if not sep:
            return url
        query, hash_sep, fragment = rest.partition("#")
        return f"{before}?{self.query(query)}{hash_sep}{fragment}"

    def json_text(self, text: str) -> str:
        """JSON text (possibly cut short) with the value of every listed key, at any depth, redacted.

        Works on the text as stored, in one pass without recursion, so formatting stays, a truncated body is
        still covered and nesting depth costs nothing.
        """
        if not self._mentions(text):
            return text
        out: list[str] = []
        pos = skip_until = 0
        for token in _STRING.finditer(text):
            if token.start() < skip_until:
                continue
            colon = _SPACE.match(text, token.end())
            after = colon.end() if colon else token.end()
            if after >= len(text) or text[after] != ":" or not self.secret(_key(token.group())):
                continue
            space = _SPACE.match(text, after + 1)
            start = space.end() if space else after + 1
            end = _value_end(text, start)
            out += [text[pos:start], _JSON_REDACTED]
            pos = skip_until = end
        out.append(text[pos:])
        return "".join(out)


DEFAULT = Redaction()


def redact_headers(headers: Headers, names: Iterable[str] = ()) -> Headers:
    """Headers with the built-in list (and `names`) redacted."""
    return (Redaction(tuple(names)) if names else DEFAULT).headers(headers)
