"""Read the shopper's tracking consent from what a proxy sees of storefront traffic."""

from __future__ import annotations

import enum
import json
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from http.cookiejar import http2time  # type: ignore[attr-defined]  # public, missing from typeshed
from typing import Any
from urllib.parse import unquote

from clickwatch.core.decoding import DecodeError, parse_json, undo_content_encoding
from clickwatch.core.model import AccountAnswer

ANONYMOUS_CONSENTS = "anonymous-consents"
ANONYMOUS_CONSENTS_HEADER = "x-anonymous-consents"
CONSENT_GIVEN_SUFFIX = "-profile.consent.given"
TRACKING_PAUSE = "profile.tracking.pause"
# Set by the accelerator's GUID cookie strategy when a shopper signs in (HTTPS only).
SIGNED_IN_COOKIE = "acceleratorSecureGUID"
# A browser keeps a cookie of 4 KB at most; a header is given a little more room. Longer is not read.
MAX_CONSENTS_CHARS = 16384
MAX_CONSENTS_VALUES = 200
# A signed-in shopper's consent templates: a few hundred bytes per template. Longer answers are not read.
ACCOUNT_BODY_LIMIT = 64 * 1024
# /users/<id>/consenttemplates[/<template>] and /users/<id>/consents[/<code>] of a signed-in shopper: the
# anonymous user's templates hold no account consent (Spartacus asks for them with the bearer token too).
_ACCOUNT_PATH = re.compile(r"/users/(?!anonymous/)[^/]+/(consenttemplates|consents)(?:/([^/]+))?/?")


class ConsentState(enum.StrEnum):
    """A visitor's tracking consent at one moment.

    `absent` is "not given": no decision, or a decision against before any consent was given; `withdrawn` is
    consent taken back after it was given (or as the shopper's consent list names it: `WITHDRAWN`).
    """

    GIVEN = "given"
    WITHDRAWN = "withdrawn"
    ABSENT = "absent"
    PAUSED = "paused"


@dataclass(frozen=True, slots=True)
class ConsentReading:
    """What one storefront message says about consent, and which cookie or header said it."""

    state: ConsentState
    source: str
    detail: str = ""


def parse_cookie_header(value: str) -> dict[str, str]:
    """Cookie request header -> {name: raw value}; the first occurrence of a name wins, as browsers send it."""
    cookies: dict[str, str] = {}
    for part in value.split(";"):
        name, sep, raw = part.strip().partition("=")
        if sep and name and name not in cookies:
            cookies[name] = raw.strip().strip('"')
    return cookies


def parse_set_cookie(value: str, now: float | None = None) -> tuple[str, str, bool]:
    """Set-Cookie header -> (name, value, deleted); a cookie that expires at once (Max-Age <= 0, Expires past)."""
    first, _, attributes = value.partition(";")
    name, _, raw = first.strip().partition("=")
    max_age: str | None = None
    expires: str | None = None
    for attribute in attributes.split(";"):
        key, _, attr_value = attribute.partition("=")
        key = key.strip().lower()
        if key == "max-age":
            max_age = attr_value.strip()
        elif key == "expires":
            expires = attr_value.strip()
    # RFC 6265: Max-Age wins over Expires; any Max-Age of zero or less expires the cookie now (ASCII digits only,
    # read by sign and not by value: a 5,000-digit Max-Age is still a number, and int() refuses it).
    if max_age is not None and re.fullmatch(r"-?[0-9]+", max_age):
        deleted = max_age.startswith("-") or not max_age.strip("0")
    elif expires is not None:
        try:
            when = http2time(expires[:100])
        except (ValueError, OverflowError):
            when = None
        deleted = when is not None and when <= (time.time() if now is None else now)
    else:
        deleted = False
    return name.strip(), raw.strip().strip('"'), deleted


def anonymous_consents_state(raw: str, template: str) -> tuple[ConsentState, str] | None:
    """State of `template` in an anonymous-consents value (URL-encoded JSON array); None if unreadable."""
    if len(raw) > MAX_CONSENTS_CHARS:
        return None
    text = unquote(raw)
    # The list is flat (objects of strings in an array): deeper nesting, or more values than a list of consents
    # holds, is not read; json.loads would recurse as deep as the value nests.
    if text.count("[") + text.count("{") > MAX_CONSENTS_VALUES:
        return None
    try:
        consents = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(consents, list):
        return None
    if not consents:
        return ConsentState.ABSENT, "no consents in the list"
    for consent in consents:
        if isinstance(consent, dict) and consent.get("templateCode") == template:
            raw_state = consent.get("consentState")
            state = raw_state.upper() if isinstance(raw_state, str) else ""
            if state == "GIVEN":
                return ConsentState.GIVEN, f"{template} GIVEN"
            if state == "WITHDRAWN":
                return ConsentState.WITHDRAWN, f"{template} WITHDRAWN"
            return ConsentState.ABSENT, f"{template} has no decision"
    # SAP Commerce (DefaultConsentService) counts a non-empty list without the template's entry as given.
    return ConsentState.GIVEN, f"no {template} entry in a non-empty list (SAP Commerce reads it as given)"


def _from_values(
    anonymous: tuple[str, str] | None,
    given_cookie: tuple[str, str] | None,
    paused: str | None,
    template: str,
) -> ConsentReading | None:
    # Precedence follows the accelerator: pause silences everything; the browser's own consent list
    # is what the tag reads; the server-set <site>-profile.consent.given cookie only mirrors it.
    if paused is not None:
        return ConsentReading(ConsentState.PAUSED, paused, "tracking paused (assisted service)")
    if anonymous is not None:
        source, raw = anonymous
        parsed = anonymous_consents_state(raw, template)
        if parsed is not None:
            return ConsentReading(parsed[0], source, parsed[1])
    if given_cookie is not None:
        source, raw = given_cookie
        # The detail names what the value means, never the value itself: cookie values are not stored.
        if raw.lower() == "true":
            return ConsentReading(ConsentState.GIVEN, source, "says given")
        if raw.lower() == "false":
            return ConsentReading(ConsentState.ABSENT, source, "says not given")
        unexpected = "an unexpected value, read as absent"
        return ConsentReading(ConsentState.ABSENT, source, unexpected if raw else "empty")
    return None


def read_request(cookie_header: str, anonymous_header: str | None, template: str) -> ConsentReading | None:
    """Consent as a storefront request carries it (Cookie, X-Anonymous-Consents); None when it says nothing."""
    cookies = parse_cookie_header(cookie_header) if cookie_header else {}
    anonymous: tuple[str, str] | None = None
    if ANONYMOUS_CONSENTS in cookies:
        anonymous = (f"cookie {ANONYMOUS_CONSENTS}", cookies[ANONYMOUS_CONSENTS])
    elif anonymous_header is not None:
        anonymous = ("header X-Anonymous-Consents", anonymous_header)
    given = next(
        ((f"cookie {name}", value) for name, value in cookies.items() if name.endswith(CONSENT_GIVEN_SUFFIX)),
        None,
    )
    paused = f"cookie {TRACKING_PAUSE}" if TRACKING_PAUSE in cookies else None
    return _from_values(anonymous, given, paused, template)


def read_response(set_cookies: list[str], template: str, paused_before: bool = False) -> ConsentReading | None:
    """Consent as a storefront response sets it (Set-Cookie); None when it sets no consent cookie.

    `paused_before`: the request carried the pause cookie, which stays in force unless this response deletes it.
    """
    anonymous: tuple[str, str] | None = None
    given: tuple[str, str] | None = None
    paused: str | None = f"cookie {TRACKING_PAUSE}" if paused_before else None
    touched = False
    for header in set_cookies:
        name, value, deleted = parse_set_cookie(header)
        if name == ANONYMOUS_CONSENTS and not deleted:
            anonymous = (f"set-cookie {name}", value)
            touched = True
        elif name.endswith(CONSENT_GIVEN_SUFFIX):
            given = (f"set-cookie {name}", "false" if deleted else value)
            touched = True
        elif name == TRACKING_PAUSE:
            paused = None if deleted else f"set-cookie {name}"
            touched = True
    return _from_values(anonymous, given, paused, template) if touched else None


def has_consent_cookie(cookie_header: str) -> bool:
    """Whether a request carries any cookie that can tell the consent state (by name, not by value)."""
    if ANONYMOUS_CONSENTS not in cookie_header and CONSENT_GIVEN_SUFFIX not in cookie_header:
        return False  # the common case on a hot path: no need to parse
    return any(
        name == ANONYMOUS_CONSENTS or name.endswith(CONSENT_GIVEN_SUFFIX) for name in parse_cookie_header(cookie_header)
    )


def signed_in(method_path: str, authorization: str | None, cookie_header: str, page_load: bool) -> bool | None:
    """Whether storefront traffic shows a signed-in shopper (True), an anonymous one (False), or says nothing.

    Spartacus: any Commerce API call to /users/... with a bearer token (it asks for users/anonymous/consenttemplates
    with the token too); /users/current/... or /users/anonymous/... without one is anonymous.
    Accelerator: page loads carry the acceleratorSecureGUID cookie only while a shopper is signed in.
    """
    if "/users/" in method_path:
        if authorization is not None and authorization.lstrip()[:7].lower() == "bearer ":
            return True
        if "/users/anonymous/" in method_path or "/users/current/" in method_path:
            return False
        return False if method_path.endswith("/users/current") else None
    if page_load:
        return SIGNED_IN_COOKIE in parse_cookie_header(cookie_header) if cookie_header else False
    return None


@dataclass(frozen=True, slots=True)
class AccountReading:
    """What a Commerce API answer says of a signed-in shopper's consent to one template.

    `state`: GIVEN, WITHDRAWN, or ABSENT (no consent on record). `changed_at`: the consent's given or withdrawn
    date as the Commerce server dated it (None when it gave none). `code`: the consent's code, kept in memory to
    recognise its withdrawal (`DELETE …/consents/<code>` answers with no body), never stored.
    """

    state: ConsentState
    source: str
    detail: str
    changed_at: float | None = None
    code: str | None = None
    by_code: bool = False  # a withdrawal that names the consent by its code only (which template is not said)


def is_account_path(path: str) -> bool:
    """Whether a Commerce API path (without its query) answers about a signed-in shopper's consents."""
    return "/users/" in path and _ACCOUNT_PATH.search(path) is not None


def account_answer(method: str, path: str, status: int, content_encoding: str, body: bytes) -> AccountAnswer | None:
    """The answer to hand on for `read_account`, its body bounded; None when the path is not about account consent."""
    query = path.find("?")
    path = path[:query] if query >= 0 else path
    if not is_account_path(path):
        return None
    complete = len(body) <= ACCOUNT_BODY_LIMIT
    return AccountAnswer(method.upper(), path, status, content_encoding, body if complete else b"", complete)


def _date(value: Any) -> float | None:
    if not isinstance(value, str) or not value or len(value) > 64:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    except (ValueError, OverflowError):
        return None


def _template_reading(item: Any, template: str, source: str) -> AccountReading | None:
    if not isinstance(item, dict) or item.get("id") != template:
        return None
    current = item.get("currentConsent")
    if not isinstance(current, dict):
        return AccountReading(ConsentState.ABSENT, source, f"the account holds no {template} consent")
    code = current.get("code") if isinstance(current.get("code"), str) else None
    withdrawn = current.get("consentWithdrawnDate")
    if withdrawn:
        when = _date(withdrawn)
        shown = datetime.fromtimestamp(when, UTC).isoformat() if when is not None else "an unreadable date"
        return AccountReading(ConsentState.WITHDRAWN, source, f"{template} withdrawn on {shown}", when, code)
    given = current.get("consentGivenDate")
    if given:
        when = _date(given)
        shown = datetime.fromtimestamp(when, UTC).isoformat() if when is not None else "an unreadable date"
        return AccountReading(ConsentState.GIVEN, source, f"{template} given on {shown}", when, code)
    return AccountReading(ConsentState.ABSENT, source, f"the account's {template} consent has neither date")


def read_account(answer: AccountAnswer, template: str) -> AccountReading | None:
    """A signed-in shopper's consent to `template` as one Commerce API answer tells it; None when it does not.

    Lists and single templates (`GET …/consenttemplates[/<id>]`), a consent given (`POST …/consents`, answered
    with its template) and a consent withdrawn (`DELETE …/consents/<code>`, no body: `code` says which).
    """
    match = _ACCOUNT_PATH.search(answer.path)
    if match is None or not 200 <= answer.status <= 299:
        return None
    resource, item = match.group(1), match.group(2)
    source = f"account ({answer.method} {match.group(0).rstrip('/')})"
    if answer.method == "DELETE":
        if resource != "consents" or not item:
            return None
        return AccountReading(
            ConsentState.WITHDRAWN, source, "consent withdrawn in the account", None, unquote(item), by_code=True
        )
    if not answer.complete or not answer.body:
        return None
    try:
        data = undo_content_encoding(answer.body, answer.content_encoding, ACCOUNT_BODY_LIMIT)
        parsed, problem, _ = parse_json(data.decode("utf-8", "replace"))
    except (DecodeError, ValueError, EOFError, OSError):
        return None
    if problem is not None:
        return None
    if isinstance(parsed, dict) and isinstance(parsed.get("consentTemplates"), list):
        return next(
            (r for t in parsed["consentTemplates"] if (r := _template_reading(t, template, source)) is not None),
            None,
        )
    return _template_reading(parsed, template, source)
