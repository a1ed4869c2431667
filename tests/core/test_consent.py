import json
from urllib.parse import quote

import pytest

from clickwatch.core.consent import (
    ConsentReading,
    ConsentState,
    anonymous_consents_state,
    has_consent_cookie,
    parse_cookie_header,
    parse_set_cookie,
    read_request,
    read_response,
)

GIVEN_ENCODED = (
    "%5B%7B%22templateCode%22%3A%22PROFILE%22%2C%22templateVersion%22%3A1%2C%22consentState%22%3A%22GIVEN%22%7D%5D"
)


def consents(*entries: tuple[str, str | None]) -> str:
    """An anonymous-consents value as the accelerator writes it: URL-encoded JSON array."""
    return quote(
        json.dumps(
            [{"templateCode": code, "templateVersion": 1, "consentState": state} for code, state in entries],
            separators=(",", ":"),
        ),
        safe="",
    )


def test_helper_matches_the_accelerator_encoding():
    assert consents(("PROFILE", "GIVEN")) == GIVEN_ENCODED


# --- anonymous_consents_state ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "template", "expected"),
    [
        (GIVEN_ENCODED, "PROFILE", (ConsentState.GIVEN, "PROFILE GIVEN")),
        (consents(("PROFILE", "WITHDRAWN")), "PROFILE", (ConsentState.WITHDRAWN, "PROFILE WITHDRAWN")),
        (consents(("PROFILE", None)), "PROFILE", (ConsentState.ABSENT, "PROFILE has no decision")),
        (consents(("PROFILE", "")), "PROFILE", (ConsentState.ABSENT, "PROFILE has no decision")),
        (consents(("PROFILE", "given")), "PROFILE", (ConsentState.GIVEN, "PROFILE GIVEN")),
        (consents(("PROFILE", "MAYBE")), "PROFILE", (ConsentState.ABSENT, "PROFILE has no decision")),
        # No consents at all: nothing was decided.
        ("%5B%5D", "PROFILE", (ConsentState.ABSENT, "no consents in the list")),
        ("[]", "PROFILE", (ConsentState.ABSENT, "no consents in the list")),
        # A non-empty list without the template's entry: SAP Commerce's DefaultConsentService counts it as given.
        (
            consents(("MARKETING_NEWSLETTER", "GIVEN"), ("STORE_USER_INFORMATION", "GIVEN")),
            "PROFILE",
            (ConsentState.GIVEN, "no PROFILE entry in a non-empty list (SAP Commerce reads it as given)"),
        ),
        (
            consents(("MARKETING_NEWSLETTER", "WITHDRAWN"), ("PROFILE", "GIVEN")),
            "PROFILE",
            (ConsentState.GIVEN, "PROFILE GIVEN"),
        ),
        # A custom template: PROFILE no longer counts, the configured code does.
        (
            consents(("PROFILE", "WITHDRAWN")),
            "TRACKING",
            (ConsentState.GIVEN, "no TRACKING entry in a non-empty list (SAP Commerce reads it as given)"),
        ),
        (
            consents(("PROFILE", "GIVEN"), ("TRACKING", "WITHDRAWN")),
            "TRACKING",
            (ConsentState.WITHDRAWN, "TRACKING WITHDRAWN"),
        ),
        # Template codes are compared exactly.
        (
            consents(("profile", "WITHDRAWN")),
            "PROFILE",
            (ConsentState.GIVEN, "no PROFILE entry in a non-empty list (SAP Commerce reads it as given)"),
        ),
        # Not URL-encoded at all: still a readable JSON array.
        ('[{"templateCode":"PROFILE","consentState":"GIVEN"}]', "PROFILE", (ConsentState.GIVEN, "PROFILE GIVEN")),
        # Entries that are not objects are skipped.
        (
            quote('[1, "PROFILE", {"templateCode":"PROFILE","consentState":"WITHDRAWN"}]'),
            "PROFILE",
            (
                ConsentState.WITHDRAWN,
                "PROFILE WITHDRAWN",
            ),
        ),
    ],
)
def test_anonymous_consents_state(raw, template, expected):
    assert anonymous_consents_state(raw, template) == expected


@pytest.mark.parametrize(
    "raw",
    ["", "garbage", "%5B%7B", "not%20json", "null", "%7B%7D", '{"templateCode":"PROFILE"}', "42", '"GIVEN"'],
)
def test_unreadable_anonymous_consents_are_none(raw):
    assert anonymous_consents_state(raw, "PROFILE") is None


# --- parse_cookie_header -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("", {}),
        ("a=1", {"a": "1"}),
        ("a=1; b=2", {"a": "1", "b": "2"}),
        ("a=1;b=2", {"a": "1", "b": "2"}),
        ("  a=1 ;  b=2  ", {"a": "1", "b": "2"}),
        ('a="quoted"', {"a": "quoted"}),
        ("a=1; a=2", {"a": "1"}),  # the browser sends the most specific cookie first
        ("a=", {"a": ""}),
        ("flag; a=1", {"a": "1"}),  # a part without '=' is not a cookie
        ("=x; a=1", {"a": "1"}),
        ("a=b=c", {"a": "b=c"}),
        (
            f"JSESSIONID=ABC; anonymous-consents={GIVEN_ENCODED}",
            {"JSESSIONID": "ABC", "anonymous-consents": GIVEN_ENCODED},
        ),
    ],
)
def test_parse_cookie_header(header, expected):
    assert parse_cookie_header(header) == expected


# --- parse_set_cookie ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("a=1", ("a", "1", False)),
        ("a=1; Path=/; Secure; HttpOnly; SameSite=None", ("a", "1", False)),
        (f"anonymous-consents={GIVEN_ENCODED}; Path=/; Max-Age=31536000", ("anonymous-consents", GIVEN_ENCODED, False)),
        ('a="v"; Path=/', ("a", "v", False)),
        (" a = 1 ", ("a", "1", False)),
        ("a=; Max-Age=0", ("a", "", True)),
        ("a=; max-age = 0; Path=/", ("a", "", True)),
        ("a=; Path=/; MAX-AGE=0", ("a", "", True)),
        ("a=; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/", ("a", "", True)),
        ("a=; expires=thu, 01 jan 1970 00:00:10 gmt", ("a", "", True)),
        ("a=1; Expires=Fri, 01 Jan 2100 00:00:00 GMT", ("a", "1", False)),
        # The value is not an attribute: a cookie whose value mentions max-age=0 is not deleted.
        ("a=max-age=0; Path=/", ("a", "max-age=0", False)),
    ],
)
def test_parse_set_cookie(header, expected):
    assert parse_set_cookie(header) == expected


@pytest.mark.parametrize(
    "header",
    [
        "a=1; Expires=Thu, 01-Jan-1970 00:00:10 GMT; Path=/",
        "a=1; Max-Age=-1; Path=/",
    ],
)
def test_other_spellings_of_a_deletion(header):
    assert parse_set_cookie(header)[2] is True


# --- read_request ----------------------------------------------------------------------------------------


def _state(reading: ConsentReading | None) -> tuple[ConsentState, str] | None:
    return None if reading is None else (reading.state, reading.source)


@pytest.mark.parametrize(
    ("cookie", "header", "expected"),
    [
        ("", None, None),
        ("JSESSIONID=abc; cookie-notification=ACCEPTED", None, None),
        (f"anonymous-consents={GIVEN_ENCODED}", None, (ConsentState.GIVEN, "cookie anonymous-consents")),
        (
            f"JSESSIONID=1; anonymous-consents={consents(('PROFILE', 'WITHDRAWN'))}",
            None,
            (ConsentState.WITHDRAWN, "cookie anonymous-consents"),
        ),
        (f"anonymous-consents={consents(('PROFILE', None))}", None, (ConsentState.ABSENT, "cookie anonymous-consents")),
        ("anonymous-consents=%5B%5D", None, (ConsentState.ABSENT, "cookie anonymous-consents")),
        (
            f"anonymous-consents={consents(('MARKETING_NEWSLETTER', 'GIVEN'))}",
            None,
            (ConsentState.GIVEN, "cookie anonymous-consents"),
        ),
        # Garbage in the consent list says nothing by itself ...
        ("anonymous-consents=garbage", None, None),
        # ... so the server's mirror cookie is read instead.
        (
            "anonymous-consents=garbage; electronics-profile.consent.given=true",
            None,
            (ConsentState.GIVEN, "cookie electronics-profile.consent.given"),
        ),
        (
            "electronics-profile.consent.given=true",
            None,
            (ConsentState.GIVEN, "cookie electronics-profile.consent.given"),
        ),
        (
            "electronics-profile.consent.given=TRUE",
            None,
            (ConsentState.GIVEN, "cookie electronics-profile.consent.given"),
        ),
        (
            "electronics-profile.consent.given=false",
            None,
            (ConsentState.ABSENT, "cookie electronics-profile.consent.given"),
        ),
        ("apparel-uk-profile.consent.given=", None, (ConsentState.ABSENT, "cookie apparel-uk-profile.consent.given")),
        # The browser's own list wins over the server's mirror cookie.
        (
            f"electronics-profile.consent.given=true; anonymous-consents={consents(('PROFILE', 'WITHDRAWN'))}",
            None,
            (ConsentState.WITHDRAWN, "cookie anonymous-consents"),
        ),
        # The pause cookie wins over everything.
        ("profile.tracking.pause=", None, (ConsentState.PAUSED, "cookie profile.tracking.pause")),
        (
            f"anonymous-consents={GIVEN_ENCODED}; electronics-profile.consent.given=true; profile.tracking.pause=1",
            GIVEN_ENCODED,
            (ConsentState.PAUSED, "cookie profile.tracking.pause"),
        ),
        # Spartacus: the header alone.
        (None, GIVEN_ENCODED, (ConsentState.GIVEN, "header X-Anonymous-Consents")),
        ("", consents(("PROFILE", "WITHDRAWN")), (ConsentState.WITHDRAWN, "header X-Anonymous-Consents")),
        ("JSESSIONID=1", "%5B%5D", (ConsentState.ABSENT, "header X-Anonymous-Consents")),
        ("", "garbage", None),
        # The cookie is preferred over the header when both are sent.
        (
            f"anonymous-consents={consents(('PROFILE', 'WITHDRAWN'))}",
            GIVEN_ENCODED,
            (ConsentState.WITHDRAWN, "cookie anonymous-consents"),
        ),
        # The header is read when only the mirror cookie is sent, and wins over it.
        (
            "electronics-profile.consent.given=true",
            consents(("PROFILE", "WITHDRAWN")),
            (ConsentState.WITHDRAWN, "header X-Anonymous-Consents"),
        ),
    ],
)
def test_read_request(cookie, header, expected):
    assert _state(read_request(cookie or "", header, "PROFILE")) == expected


def test_read_request_details():
    reading = read_request(f"anonymous-consents={GIVEN_ENCODED}", None, "PROFILE")
    assert reading == ConsentReading(ConsentState.GIVEN, "cookie anonymous-consents", "PROFILE GIVEN")
    reading = read_request("electronics-profile.consent.given=false", None, "PROFILE")
    assert reading == ConsentReading(ConsentState.ABSENT, "cookie electronics-profile.consent.given", "says not given")
    reading = read_request("electronics-profile.consent.given=", None, "PROFILE")
    assert reading is not None and reading.detail == "empty"
    # What the value means, never the value: no part of a cookie value reaches a signal or a finding.
    reading = read_request("electronics-profile.consent.given=secretvalue" + "x" * 100, None, "PROFILE")
    assert reading is not None and reading.detail == "an unexpected value, read as absent"


def test_read_request_uses_the_configured_template():
    cookie = f"anonymous-consents={consents(('PROFILE', 'GIVEN'), ('CDS', 'WITHDRAWN'))}"
    assert _state(read_request(cookie, None, "PROFILE")) == (ConsentState.GIVEN, "cookie anonymous-consents")
    assert _state(read_request(cookie, None, "CDS")) == (ConsentState.WITHDRAWN, "cookie anonymous-consents")
    # Not in a non-empty list: given, as SAP Commerce reads it.
    assert _state(read_request(cookie, None, "OTHER")) == (ConsentState.GIVEN, "cookie anonymous-consents")


# --- read_response ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("set_cookies", "expected"),
    [
        ([], None),
        (["JSESSIONID=abc; Path=/; HttpOnly"], None),
        ([f"anonymous-consents={GIVEN_ENCODED}; Path=/"], (ConsentState.GIVEN, "set-cookie anonymous-consents")),
        (
            [f"anonymous-consents={consents(('PROFILE', 'WITHDRAWN'))}; Path=/"],
            (ConsentState.WITHDRAWN, "set-cookie anonymous-consents"),
        ),
        (["anonymous-consents=%5B%5D; Path=/"], (ConsentState.ABSENT, "set-cookie anonymous-consents")),
        (["anonymous-consents=garbage; Path=/"], None),
        # Deleting the consent list says nothing about consent.
        (["anonymous-consents=; Max-Age=0; Path=/"], None),
        (["anonymous-consents=; Expires=Thu, 01 Jan 1970 00:00:00 GMT"], None),
        (
            ["electronics-profile.consent.given=true; Path=/"],
            (ConsentState.GIVEN, "set-cookie electronics-profile.consent.given"),
        ),
        (
            ["electronics-profile.consent.given=false; Path=/"],
            (ConsentState.ABSENT, "set-cookie electronics-profile.consent.given"),
        ),
        # Deleting the mirror cookie means consent is no longer given, whatever value it carries.
        (
            ["electronics-profile.consent.given=true; Max-Age=0; Path=/"],
            (ConsentState.ABSENT, "set-cookie electronics-profile.consent.given"),
        ),
        (
            ["electronics-profile.consent.given=true; Expires=Thu, 01 Jan 1970 00:00:00 GMT"],
            (ConsentState.ABSENT, "set-cookie electronics-profile.consent.given"),
        ),
        (["profile.tracking.pause=1; Path=/"], (ConsentState.PAUSED, "set-cookie profile.tracking.pause")),
        (["profile.tracking.pause=; Max-Age=0"], None),
        (
            [f"anonymous-consents={GIVEN_ENCODED}; Path=/", "profile.tracking.pause=1; Path=/"],
            (ConsentState.PAUSED, "set-cookie profile.tracking.pause"),
        ),
        # The consent list wins over the mirror cookie in one response, whatever the order.
        (
            ["electronics-profile.consent.given=true", f"anonymous-consents={consents(('PROFILE', 'WITHDRAWN'))}"],
            (ConsentState.WITHDRAWN, "set-cookie anonymous-consents"),
        ),
        (
            [f"anonymous-consents={consents(('PROFILE', 'WITHDRAWN'))}", "electronics-profile.consent.given=true"],
            (ConsentState.WITHDRAWN, "set-cookie anonymous-consents"),
        ),
        # The last Set-Cookie of a name is the one the browser keeps.
        (
            [f"anonymous-consents={consents(('PROFILE', 'WITHDRAWN'))}", f"anonymous-consents={GIVEN_ENCODED}"],
            (ConsentState.GIVEN, "set-cookie anonymous-consents"),
        ),
    ],
)
def test_read_response(set_cookies, expected):
    assert _state(read_response(set_cookies, "PROFILE")) == expected


def test_read_response_custom_template():
    header = f"anonymous-consents={consents(('PROFILE', 'GIVEN'), ('TRACKING', 'WITHDRAWN'))}; Path=/"
    assert _state(read_response([header], "TRACKING")) == (ConsentState.WITHDRAWN, "set-cookie anonymous-consents")


@pytest.mark.parametrize(
    ("cookie", "expected"),
    [
        ("", False),
        ("JSESSIONID=1; cookie-notification=ACCEPTED", False),
        ("anonymous-consents=%5B%5D", True),
        ("electronics-profile.consent.given=false", True),
        ("JSESSIONID=1; anonymous-consents=garbage", True),
    ],
)
def test_has_consent_cookie(cookie, expected):
    assert has_consent_cookie(cookie) is expected


def test_dashed_expiry_deletes_the_mirror_cookie():
    header = "electronics-profile.consent.given=true; Expires=Thu, 01-Jan-1970 00:00:10 GMT; Path=/"
    assert _state(read_response([header], "PROFILE")) == (
        ConsentState.ABSENT,
        "set-cookie electronics-profile.consent.given",
    )
