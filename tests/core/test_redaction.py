"""The redaction list: headers, query parameters and JSON keys at any depth, built-in names plus configured ones."""

from __future__ import annotations

import json

import pytest

from clickwatch.core.config import Config
from clickwatch.core.model import Answer, Kind, RequestSeen
from clickwatch.core.pipeline import Pipeline
from clickwatch.core.redaction import DEFAULT, DEFAULT_NAMES, REDACTED, Redaction, parse_names

SECRET = "Zq7SecretMarker"


@pytest.mark.parametrize(
    "name",
    [
        "X-Api-Key",
        "x-auth-token",
        "X-AUTH-TOKEN",
        "x_api_key",
        "Proxy-Authorization",
        "X-CSRF-Token",
        "Session",
        "xApiKey",
    ],
)
def test_listed_headers_are_redacted_whatever_their_spelling(name: str) -> None:
    assert DEFAULT.headers(((name, SECRET),))[0][1] in (REDACTED, f"{SECRET} {REDACTED}")
    assert SECRET not in repr(DEFAULT.headers(((name, f"Basic {SECRET}"),)))


def test_headers_the_judge_and_people_need_are_kept() -> None:
    kept = (
        ("consent-reference", "cr-1"),
        ("X-Consent-Reference", "cr-2"),
        ("X-Anonymous-Consents", "%5B%5D"),
        ("hybris-schema", "context/commerce/ProductView"),
        ("Content-Type", "application/json"),
        ("Origin", "https://shop.example"),
    )
    assert DEFAULT.headers(kept) == kept


def test_configured_names_are_added_to_the_built_in_list() -> None:
    redaction = Redaction.from_setting("X-Tenant-Secret, customerEmail;  sku2 ")
    assert redaction.extra == ("X-Tenant-Secret", "customerEmail", "sku2")
    assert redaction.headers((("x-tenant-secret", SECRET), ("Authorization", SECRET))) == (
        ("x-tenant-secret", REDACTED),
        ("Authorization", REDACTED),
    )
    assert json.loads(redaction.json_text(json.dumps({"customerEmail": SECRET, "token": SECRET}))) == {
        "customerEmail": REDACTED,
        "token": REDACTED,
    }
    assert parse_names("") == () and Redaction.from_setting("").names == DEFAULT.names
    assert {n.replace("-", "").replace("_", "") for n in DEFAULT_NAMES} <= redaction.names


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            f"https://t.example/edge/clickstreamEvents?token={SECRET}",
            f"https://t.example/edge/clickstreamEvents?token={REDACTED}",
        ),
        (
            f"/strategy/x/products?site=electronics&access_token={SECRET}&pageSize=10#top",
            f"/strategy/x/products?site=electronics&access_token={REDACTED}&pageSize=10#top",
        ),
        (
            f"/p?API-KEY={SECRET}&apikey={SECRET}&Api_Key={SECRET}",
            f"/p?API-KEY={REDACTED}&apikey={REDACTED}&Api_Key={REDACTED}",
        ),
        (f"/p?client%5Fsecret={SECRET}", f"/p?client%5Fsecret={REDACTED}"),
        ("/p?site=electronics&q=token", "/p?site=electronics&q=token"),  # a value that reads like a name stays
        ("/p?token", "/p?token"),
        ("/edge/clickstreamEvents", "/edge/clickstreamEvents"),
    ],
)
def test_query_parameters_of_stored_urls(url: str, expected: str) -> None:
    assert DEFAULT.url(url) == expected


def test_json_keys_at_any_depth_keep_the_rest_as_sent() -> None:
    body = {
        "productSku": "300938",
        "password": SECRET,
        "user": {"profile": {"id_token": SECRET, "name": "Ada"}, "Refresh-Token": [SECRET, {"x": SECRET}]},
        "items": [{"access_token": 12345, "qty": 2}, {"client_secret": None}, {"session": {"deep": [SECRET]}}],
        "note": "the word token in a value is fine",
    }
    text = json.dumps(body, indent=2)
    out = DEFAULT.json_text(text)
    assert SECRET not in out and "12345" not in out
    parsed = json.loads(out)
    assert parsed["productSku"] == "300938" and parsed["note"] == body["note"]
    assert parsed["password"] == REDACTED
    assert parsed["user"]["profile"] == {"id_token": REDACTED, "name": "Ada"}
    assert parsed["user"]["Refresh-Token"] == REDACTED
    assert parsed["items"] == [{"access_token": REDACTED, "qty": 2}, {"client_secret": REDACTED}, {"session": REDACTED}]
    # The text as sent, but for the values: formatting and key order stay.
    assert DEFAULT.json_text('{\n  "a" : 1,\n  "Token" :\t"x"\n}') == '{\n  "a" : 1,\n  "Token" :\t"<redacted>"\n}'


def test_json_keys_with_escapes_brackets_in_strings_and_a_body_cut_short() -> None:
    tricky = '{"a": "} ] \\" token", "pass\\u0077ord": "' + SECRET + '", "b": ["{", "token"], "token": "x'
    out = DEFAULT.json_text(tricky)
    assert SECRET not in out
    assert out.startswith('{"a": "} ] \\" token", "pass\\u0077ord": "<redacted>", "b": ["{", "token"], ')
    assert out.endswith('"token": "<redacted>"')  # the value ran to the end of what was kept
    cut = '{"session": {"deep": [1, 2, {"x": "' + SECRET
    assert DEFAULT.json_text(cut) == '{"session": "<redacted>"'


def test_deep_nesting_costs_no_recursion() -> None:
    deep = '{"token": ' + "[" * 100_000 + "]" * 100_000 + ', "k": 1}'
    assert DEFAULT.json_text(deep) == '{"token": "<redacted>", "k": 1}'
    unrelated = "[" * 100_000 + '{"password": "' + SECRET + '"}' + "]" * 100_000
    assert SECRET not in DEFAULT.json_text(unrelated)


def test_text_without_any_listed_name_is_returned_as_is() -> None:
    tracking = '{"sessionId": "s-1", "tokenized": true, "cartCode": "00001"}'
    assert DEFAULT.json_text(tracking) == tracking  # names that only contain a listed one stay
    text = json.dumps({"productSku": "1", "categories": ["575"]})
    assert DEFAULT.json_text(text) is text
    assert DEFAULT.url("/edge/clickstreamEvents?site=x") == "/edge/clickstreamEvents?site=x"


def _request(**overrides: object) -> RequestSeen:
    values: dict[str, object] = {
        "uid": "u1",
        "run": "default",
        "kind": Kind.CLICKSTREAM,
        "target": None,
        "method": "POST",
        "url": f"https://t.example/edge/clickstreamEvents?apikey={SECRET}&site=electronics",
        "host": "t.example",
        "path": f"/edge/clickstreamEvents?apikey={SECRET}&site=electronics",
        "headers": (
            ("Content-Type", "application/json"),
            ("X-Tenant-Secret", SECRET),
            ("Cookie", f"electronics-profile.consent.given={SECRET}"),
        ),
        "raw_body": json.dumps({"productSku": "1", "nested": [{"password": SECRET}], "myField": SECRET}).encode(),
        "client_addr": "127.0.0.1",
        "user_agent": "ua",
        "sent_at": 1.0,
    }
    values.update(overrides)
    return RequestSeen(**values)  # type: ignore[arg-type]


def test_the_pipeline_redacts_every_column_with_the_configured_list() -> None:
    pipeline = Pipeline(Config(redact="x-tenant-secret,myField"))
    row = pipeline.process(_request()).inserts[0]
    assert SECRET not in json.dumps(row)
    assert row["url"] == f"https://t.example/edge/clickstreamEvents?apikey={REDACTED}&site=electronics"
    assert json.loads(row["request_body"]) == {
        "productSku": "1",
        "nested": [{"password": REDACTED}],
        "myField": REDACTED,
    }
    answer = Answer(
        uid="u1",
        kind=Kind.CLICKSTREAM,
        status_code=201,
        headers=(("Set-Cookie", f"session={SECRET}; Path=/; Secure"), ("Content-Type", "application/json")),
        raw_body=json.dumps({"id_token": SECRET, "ok": True}).encode(),
        sent_at=1.0,
        ended_at=1.1,
    )
    answered = pipeline.process(answer).answers[0]
    assert SECRET not in json.dumps(answered)
    assert json.loads(answered["response_body"]) == {"id_token": REDACTED, "ok": True}
    # Without the setting, the configured names are kept: the list is the setting's, not a guess.
    plain = Pipeline(Config()).process(_request(uid="u2")).inserts[0]
    assert SECRET in plain["request_headers"] and SECRET in plain["request_body"]
    assert f"consent.given={REDACTED}" in plain["request_headers"]


def test_a_urlencoded_form_body_is_redacted_by_parameter() -> None:
    seen = _request(
        headers=(("Content-Type", "application/x-www-form-urlencoded"),),
        raw_body=f"site=electronics&password={SECRET}".encode(),
    )
    row = Pipeline().process(seen).inserts[0]
    assert row["request_body"] == f"site=electronics&password={REDACTED}"


def test_data_layer_pushes_are_redacted_by_key() -> None:
    from clickwatch.core.model import BrowserReport

    event = {"type": "push", "name": "UserLoggedIn", "data": {"user": {"accessToken": "a", "token": SECRET}}}
    batch = {"v": 1, "page": "page-0001", "url": "https://shop.example/", "sent": 1000.0, "events": [
        {"t": 1000.0, **event}
    ]}  # fmt: skip
    ops = Pipeline().process(
        BrowserReport(
            "default", "127.0.0.1", "ua", 1.0, json.dumps(batch).encode(), "https://shop.example", 0.0, "t" * 22
        )
    )
    [push] = ops.pushes
    assert json.loads(push["data"]) == {"user": {"accessToken": REDACTED, "token": REDACTED}}


def test_a_url_in_a_referer_or_location_header_has_its_query_redacted() -> None:
    headers = (
        ("Referer", "https://shop.example/reset?token=tok-secret&page=2"),
        ("Location", "/account?access_token=at-secret#top"),
        ("Accept", "text/html"),
    )
    stored = dict(DEFAULT.headers(headers))
    assert stored["Referer"] == f"https://shop.example/reset?token={REDACTED}&page=2"
    assert stored["Location"] == f"/account?access_token={REDACTED}#top"
    assert stored["Accept"] == "text/html"


def test_a_binary_body_naming_a_listed_key_is_not_kept_even_in_part() -> None:
    # One byte that is not UTF-8 makes the body binary: a base64 prefix would carry the token readably.
    leaky = b'{"access_token": "' + SECRET.encode() + b'", "x": "\xff"}'
    row = Pipeline(Config()).process(_request(raw_body=leaky)).inserts[0]
    assert row["request_body_kind"] == "binary"
    assert row["request_body"] is None and row["request_body_size"] == len(leaky)
    plain = b"\x00\x01\xff plain bytes"
    kept = Pipeline(Config()).process(_request(uid="u2", raw_body=plain)).inserts[0]
    assert kept["request_body_kind"] == "binary" and kept["request_body"] is not None
