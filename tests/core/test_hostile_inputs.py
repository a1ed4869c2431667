"""Hostile input, whatever it is: no exception escapes the core, and every tracking call ends as a stored delivery.

Property-based (hypothesis) over decoding, the consent readers, the checks, the judge (through core/pipeline.py,
and once through the real store writer into a real SQLite file) and the HAR reader; then each case the issue names,
as a plain regression test.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import gzip
import json
import math
import sqlite3
import subprocess
import sys
import uuid
import zlib
from pathlib import Path
from typing import Any

import brotli
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clickwatch.core.checks import cors_problems, payload_problems
from clickwatch.core.config import Config
from clickwatch.core.consent import (
    anonymous_consents_state,
    has_consent_cookie,
    parse_cookie_header,
    parse_set_cookie,
    read_request,
    read_response,
)
from clickwatch.core.decoding import DEFAULT_DECODE_LIMIT, MAX_JSON_DEPTH, MAX_JSON_VALUES, decode_body
from clickwatch.core.findings import MAX_TEXT, FindingKind
from clickwatch.core.har import HarError, observations
from clickwatch.core.model import Answer, BodyKind, Kind, RequestSeen, StorefrontSeen
from clickwatch.core.pipeline import Pipeline
from clickwatch.core.storefront import read_exchange
from clickwatch.store import wire
from clickwatch.store.importer import HarImportError, import_har
from clickwatch.store.writer import StoreWriter

# Bounded: the whole file runs in well under a minute on two shared cores.
BOUNDED = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# The longest finding message or signal detail: the cap and its "… and N more characters".
LONGEST_TEXT = MAX_TEXT + 60
CLICKWATCH = Path(sys.executable).parent / "clickwatch"

# --- strategies -----------------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30,
)
ENCODERS = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": lambda b: zstandard.ZstdCompressor().compress(b),
    "identity": lambda b: b,
}
codings = st.sampled_from(["", *ENCODERS, "gzip, br", "compress", "gzip,gzip,gzip,gzip,gzip", "br, zstd"]) | st.text(
    max_size=30
)
charsets = st.sampled_from(
    ["utf-8", "UTF-16", "latin-1", "punycode", "idna", "rot13", "hex", "unicode_escape", "utf-7", "undefined", "x"]
) | st.text(max_size=20)
media = st.sampled_from(["application/json", "text/plain", "", "application/x-www-form-urlencoded", "text/html"])


@st.composite
def content_types(draw: st.DrawFn) -> str:
    kind = draw(media)
    return f"{kind}; charset={draw(charsets)}" if draw(st.booleans()) else kind


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    """What a hostile or broken page sends: bytes, JSON, deep nesting, many values."""
    choice = draw(st.integers(0, 4))
    if choice == 0:
        return draw(st.binary(max_size=2000))
    if choice == 1:
        return json.dumps(draw(json_values)).encode("utf-8", "surrogatepass")
    if choice == 2:
        depth = draw(st.integers(1, 5000))
        return b"[" * depth + (b"]" * depth if draw(st.booleans()) else b"")
    if choice == 3:
        return b"[" + b"{}," * draw(st.integers(0, 70_000)) + b"{}]"
    return draw(st.text(max_size=300)).encode("utf-8", "surrogatepass")


@st.composite
def encoded_bodies(draw: st.DrawFn) -> tuple[bytes, str]:
    """(raw body, Content-Encoding), encoded as labelled, mislabelled, or labelled with nonsense."""
    raw = draw(payloads())
    coding = draw(codings)
    encoder = ENCODERS.get(coding)
    if encoder is not None and draw(st.booleans()):
        raw = encoder(raw)
    return raw, coding


header_text = st.text(max_size=200)
header_bytes = st.binary(max_size=200)
raw_fields = st.lists(
    st.tuples(
        st.sampled_from([b"cookie", b"user-agent", b"content-type", b"x-anonymous-consents", b"set-cookie"])
        | header_bytes,
        header_bytes,
    ),
    max_size=8,
)


@st.composite
def cookie_headers(draw: st.DrawFn) -> str:
    """A Cookie header with consent cookies that may be nested, huge, URL-encoded or nonsense."""
    depth = draw(st.integers(0, 3000))
    consents = draw(
        st.sampled_from(
            [
                "[" * depth,
                "%5B" * depth,
                '[{"templateCode":"PROFILE","consentState":"GIVEN"}]',
                json.dumps(draw(json_values)),
                "x" * draw(st.integers(0, 40_000)),
            ]
        )
        | st.text(max_size=100)
    )
    others = draw(st.text(max_size=100))
    return f"anonymous-consents={consents}; electronics-profile.consent.given={others}; {draw(header_text)}"


# --- decoding -------------------------------------------------------------------------------------------------------


@BOUNDED
@given(body=encoded_bodies(), content_type=content_types(), limit=st.integers(0, 70_000))
def test_decoding_never_raises_and_is_bounded(body: tuple[bytes, str], content_type: str, limit: int) -> None:
    raw, coding = body
    decoded = decode_body(raw, coding, content_type, limit=limit)
    assert decoded.text is None or len(decoded.text) <= max(limit, 1000)
    assert decoded.note is None or len(decoded.note) <= 1000
    if decoded.kind is BodyKind.JSON:
        assert decoded.refused is False
    if decoded.refused:
        assert decoded.parsed is None
        assert decoded.note


# --- consent readers ------------------------------------------------------------------------------------------------


@BOUNDED
@given(cookie=cookie_headers(), anonymous=st.none() | header_text, set_cookies=st.lists(header_text, max_size=5))
def test_consent_readers_never_raise(cookie: str, anonymous: str | None, set_cookies: list[str]) -> None:
    read_request(cookie, anonymous, "PROFILE")
    read_response(set_cookies, "PROFILE", paused_before=True)
    read_response([f"anonymous-consents={cookie}", *set_cookies], "PROFILE")
    has_consent_cookie(cookie)
    parse_cookie_header(cookie)
    anonymous_consents_state(cookie, "PROFILE")
    for value in set_cookies:
        parse_set_cookie(value)


@BOUNDED
@given(
    max_age=st.text(alphabet="-0123456789", max_size=6000) | header_text,
    expires=header_text,
)
def test_set_cookie_attributes_never_raise(max_age: str, expires: str) -> None:
    parse_set_cookie(f"x-profile.consent.given=true; Max-Age={max_age}; Expires={expires}", now=0.0)
    parse_set_cookie(f"x-profile.consent.given=true; Expires={expires}", now=0.0)


@BOUNDED
@given(method=st.text(max_size=10), path=st.text(max_size=100), request=raw_fields, response=st.none() | raw_fields)
def test_storefront_reader_never_raises(method: str, path: str, request: Any, response: Any) -> None:
    read_exchange(method, path, tuple(request), tuple(response) if response is not None else None)


# --- checks ---------------------------------------------------------------------------------------------------------


@BOUNDED
@given(body=encoded_bodies(), content_type=content_types(), required=st.lists(st.text(max_size=50), max_size=30))
def test_payload_checks_never_raise_and_say_little(
    body: tuple[bytes, str], content_type: str, required: list[str]
) -> None:
    decoded = decode_body(*body, content_type)
    problems = payload_problems(decoded, tuple(required))
    assert len(problems) <= 12
    assert len("; ".join(problems)) < 20_000


@BOUNDED
@given(request=st.lists(st.tuples(header_text, header_text), max_size=6), status=st.integers(-(10**30), 10**30))
def test_cors_checks_never_raise(request: list[tuple[str, str]], status: int) -> None:
    cors_problems(tuple(request), status, tuple(request))


# --- the judge, through the pipeline ---------------------------------------------------------------------------------


def _request(uid: str, headers: tuple[tuple[str, str], ...], body: bytes, kind: Kind = Kind.CLICKSTREAM) -> RequestSeen:
    return RequestSeen(
        uid=uid, run="default", kind=kind, target=Kind.CLICKSTREAM if kind is Kind.PREFLIGHT else None,
        method="POST", url="https://t.example/edge/clickstreamEvents", host="t.example",
        path="/edge/clickstreamEvents", client_addr="127.0.0.1", user_agent="pytest", headers=headers,
        raw_body=body, sent_at=1000.0,
    )  # fmt: skip


def _answer(uid: str, status: int | None, headers: tuple[tuple[str, str], ...], body: bytes, kind: Kind) -> Answer:
    return Answer(
        uid=uid, kind=kind, sent_at=1000.0, ended_at=1000.5, status_code=status, headers=headers,
        raw_body=body if status is not None else b"", error=None if status is not None else "reset",
    )  # fmt: skip


@st.composite
def tracking_headers(draw: st.DrawFn) -> tuple[tuple[str, str], ...]:
    body_coding = draw(codings)
    fixed = [
        ("content-type", draw(content_types())),
        ("content-encoding", body_coding),
        ("hybris-schema", draw(st.sampled_from(["context/commerce/ProductView", ""]) | header_text)),
        ("origin", draw(header_text)),
        ("access-control-request-headers", draw(header_text)),
    ]
    extra = draw(st.lists(st.tuples(header_text, header_text), max_size=4))
    return tuple(fixed + extra)


@BOUNDED
@given(
    headers=tracking_headers(),
    body=payloads(),
    kind=st.sampled_from(list(Kind)),
    status=st.none() | st.integers(100, 599),
    cookie=cookie_headers(),
)
def test_every_tracking_call_is_stored_with_a_verdict_whatever_it_holds(
    headers: tuple[tuple[str, str], ...], body: bytes, kind: Kind, status: int | None, cookie: str
) -> None:
    pipeline = Pipeline(Config())
    pipeline.process(
        StorefrontSeen(
            run="default", client_addr="127.0.0.1", user_agent="pytest", request_at=999.0, response_at=999.1,
            cookie=cookie, anonymous_consents_header=cookie[:100], set_cookies=(cookie,), page_load=True,
        )
    )  # fmt: skip
    uid = uuid.uuid4().hex
    encoded = ENCODERS.get(dict(headers)["content-encoding"], lambda b: b)(body)
    sent = pipeline.process(_request(uid, headers, encoded, kind))
    assert [row["uid"] for row in sent.inserts] == [uid]
    answered = pipeline.process(_answer(uid, status, headers, encoded, kind))
    assert [row["uid"] for row in answered.answers] == [uid]
    assert answered.answers[0]["verdict"] != "pending"
    final = pipeline.evaluate(2000.0, final=True)
    for ops in (sent, answered, final):
        assert all(len(f["message"]) <= LONGEST_TEXT for f in ops.findings)
        assert all(len(s["detail"] or "") <= LONGEST_TEXT for s in ops.signals)
    decided = [c["consent"] for ops in (sent, answered, final) for c in ops.consent if c["uid"] == uid]
    if decided:
        assert decided[-1] != "pending"


def test_a_bug_met_while_judging_still_stores_the_delivery_with_its_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    # Fault injection: a judge that fails on this input (no real input is known to make it fail any more).
    pipeline = Pipeline(Config())

    def broken(*args: object) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(pipeline.judge, "request", broken)
    sent = pipeline.process(_request("u1", (("content-type", "application/json"),), b"{}"))
    monkeypatch.undo()
    assert [row["uid"] for row in sent.inserts] == ["u1"]
    assert [c["consent"] for c in sent.consent] == ["unknown"]
    [finding] = sent.findings
    assert finding["kind"] == FindingKind.UNREADABLE_MESSAGE.value
    assert "RecursionError" in finding["message"]
    answered = pipeline.process(_answer("u1", 201, (), b"", Kind.CLICKSTREAM))
    assert answered.answers[0]["verdict"] == "delivered"


def test_a_request_that_cannot_be_recorded_is_stored_without_its_body_or_query(monkeypatch: pytest.MonkeyPatch) -> None:
    # Fault injection: building the row fails, so the redaction list was never applied: nothing it guards is kept.
    import clickwatch.core.pipeline as pipeline_module

    def broken(*args: object) -> None:
        raise ValueError("cannot build the row")

    monkeypatch.setattr(pipeline_module, "request_row", broken)
    seen = _request("u1", (("content-type", "application/json"),), b'{"password": "hunter2-secret"}')
    seen = dataclasses.replace(seen, url=seen.url + "?token=tok-secret", path=seen.path + "?token=tok-secret")
    sent = Pipeline(Config()).process(seen)
    [row] = sent.inserts
    assert row["uid"] == "u1"
    assert row["request_body"] is None and row["request_body_size"] == len(b'{"password": "hunter2-secret"}')
    assert "secret" not in repr(row)


def test_an_answer_that_cannot_be_read_still_resolves_its_delivery(monkeypatch: pytest.MonkeyPatch) -> None:
    import clickwatch.core.pipeline as pipeline_module

    pipeline = Pipeline(Config())
    pipeline.process(_request("u1", (("content-type", "application/json"),), b"{}"))
    real = pipeline_module.answer_row
    calls = []

    def fails_once(answer: Answer, *args: Any) -> dict[str, Any]:
        calls.append(answer)
        if len(calls) == 1:
            raise ValueError("unreadable response")
        return real(answer, *args)

    monkeypatch.setattr(pipeline_module, "answer_row", fails_once)
    answered = pipeline.process(_answer("u1", 201, (("content-type", "application/json"),), b"{}", Kind.CLICKSTREAM))
    [row] = answered.answers
    assert row["verdict"] == "delivered"
    assert "could not be read" in row["response_body_note"]


# --- through the real store writer, into a real SQLite file ----------------------------------------------------------


def test_hostile_tracking_calls_all_end_as_stored_judged_deliveries(tmp_path: Path) -> None:
    db = str(tmp_path / "cw.db")
    writer = StoreWriter(db)
    writer.start()
    sent: list[str] = []

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(fields=raw_fields, body=encoded_bodies(), status=st.none() | st.integers(100, 599))
    def one(fields: Any, body: tuple[bytes, str], status: int | None) -> None:
        uid = uuid.uuid4().hex
        raw, coding = body
        headers = (*fields, (b"content-encoding", coding.encode("utf-8", "surrogateescape")))
        writer.submit(
            wire.Request(
                uid, "default", "clickstream", None, "POST", "https://t.example/edge/clickstreamEvents",
                "t.example", "/edge/clickstreamEvents", "127.0.0.1", headers, raw, 1000.0,
            )
        )  # fmt: skip
        writer.submit(
            wire.Answer(uid, "clickstream", 1000.0, 1000.2, status, tuple(fields), raw, None if status else "reset")
        )
        sent.append(uid)

    one()
    assert writer.close()
    conn = sqlite3.connect(db)
    try:
        rows = dict(conn.execute("SELECT uid, verdict FROM deliveries").fetchall())
        longest = conn.execute("SELECT max(length(message)) FROM findings").fetchone()[0] or 0
    finally:
        conn.close()
    assert set(rows) == set(sent)
    assert "pending" not in rows.values()
    assert longest <= LONGEST_TEXT


# --- the HAR reader ------------------------------------------------------------------------------------------------

ENTRY = {
    "startedDateTime": "2026-11-27T08:00:00.000Z",
    "time": 12.5,
    "request": {
        "method": "POST",
        "url": "https://t.example/edge/clickstreamEvents",
        "headers": [{"name": "hybris-schema", "value": "context/commerce/ProductView"}],
        "postData": {"mimeType": "application/json", "text": '{"productSku": "1"}'},
    },
    "response": {"status": 201, "headers": [], "content": {"text": ""}},
}
hostile_values = (
    json_values
    | st.sampled_from([math.inf, -math.inf, math.nan, 10**30, -(10**400), "\ud800", "http://[::1/", "", [], {}])
    | st.integers()
    | st.floats()
)
FIELDS = [
    ("startedDateTime",),
    ("time",),
    ("request",),
    ("request", "method"),
    ("request", "url"),
    ("request", "headers"),
    ("request", "postData"),
    ("request", "postData", "text"),
    ("request", "postData", "encoding"),
    ("response",),
    ("response", "status"),
    ("response", "headers"),
    ("response", "content"),
    ("response", "content", "text"),
    ("_error",),
]


def _with(entry: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    entry = json.loads(json.dumps(entry))
    target = entry
    for key in path[:-1]:
        target = target.get(key) if isinstance(target, dict) else None
    if isinstance(target, dict):  # (an earlier change may have replaced the parent with something else)
        target[path[-1]] = value
    return entry


@BOUNDED
@given(changes=st.lists(st.tuples(st.sampled_from(FIELDS), hostile_values), max_size=4), count=st.integers(1, 3))
def test_the_har_reader_refuses_with_a_har_error_or_reads(
    changes: list[tuple[tuple[str, ...], Any]], count: int
) -> None:
    entry = ENTRY
    for path, value in changes:
        entry = _with(entry, path, value)
    har = {"log": {"entries": [entry] * count}}
    try:
        seen = observations(har, "r", Config().patterns())
    except HarError as exc:
        assert str(exc).startswith(("HAR", "log"))
        return
    for item in seen:
        times = (getattr(item, name, 0.0) for name in ("sent_at", "ended_at", "request_at"))
        assert all(t is None or math.isfinite(t) for t in times)


@BOUNDED
@given(document=json_values | st.recursive(st.just({}), lambda c: st.dictionaries(st.just("log"), c), max_leaves=5))
def test_the_har_reader_refuses_any_json_that_is_not_a_har(document: Any) -> None:
    with contextlib.suppress(HarError):  # a HarError is the clear error; anything else fails the test
        observations(document, "r", Config().patterns())


# --- the cases the issue names ---------------------------------------------------------------------------------------


def test_a_json_body_nested_2000_deep_is_an_invalid_payload_finding_not_an_exception() -> None:
    pipeline = Pipeline(Config())
    ops = pipeline.process(_request("u1", (("content-type", "application/json"),), b"[" * 2000 + b"]" * 2000))
    [row] = ops.inserts
    assert row["request_body_note"] == f"JSON nested deeper than {MAX_JSON_DEPTH} levels: not parsed"
    [payload] = [f for f in ops.findings if f["kind"] == "invalid_payload"]
    assert "nested deeper" in payload["message"]


def test_a_punycode_charset_is_read_as_utf8_and_judged() -> None:
    pipeline = Pipeline(Config())
    headers = (("content-type", "application/json; charset=punycode"),)
    ops = pipeline.process(_request("u1", headers, b'{"productSku": null}'))
    [row] = ops.inserts
    assert row["request_body_kind"] == "json"
    assert "punycode" in row["request_body_note"]
    [payload] = [f for f in ops.findings if f["kind"] == "invalid_payload"]
    assert "null value(s) at productSku" in payload["message"]


def test_a_deeply_nested_consent_cookie_is_not_read_and_a_call_without_consent_is_still_judged() -> None:
    pipeline = Pipeline(Config(grace_seconds=1.0))
    nested = "[" * 5000
    ops = pipeline.process(
        StorefrontSeen(
            run="default", client_addr="127.0.0.1", user_agent="pytest", request_at=999.0, response_at=999.1,
            cookie=f"anonymous-consents={nested}; electronics-profile.consent.given=false",
            anonymous_consents_header=None, set_cookies=(), page_load=True,
        )
    )  # fmt: skip
    assert [s["state"] for s in ops.signals] == ["absent"]  # the nested list is not read; the given cookie decides
    pipeline.process(_request("u1", (("content-type", "application/json"),), b'{"productSku": "1"}'))
    final = pipeline.evaluate(2000.0, final=True)
    assert "consent_violation" in [f["kind"] for f in final.findings]
    assert anonymous_consents_state(nested, "PROFILE") is None


def test_a_million_empty_objects_in_3_kb_of_gzip_make_a_short_finding_and_no_million_objects() -> None:
    raw = gzip.compress(b"[" + b"{}," * 999_999 + b"{}]")
    assert len(raw) < 4000
    body = decode_body(raw, "gzip", "application/json")
    assert body.refused and body.parsed is None
    assert body.note == f"decoded body exceeds {DEFAULT_DECODE_LIMIT} bytes (capture.body_decode_limit): not read"
    # Under the size cap, the count of values stops it before a single object is built.
    under = decode_body(gzip.compress(b"[" + b"{}," * 600_000 + b"{}]"), "gzip", "application/json")
    assert under.refused and under.parsed is None
    assert under.note == f"JSON with more than {MAX_JSON_VALUES} values: not parsed"
    pipeline = Pipeline(Config())
    ops = pipeline.process(_request("u1", (("content-type", "application/json"), ("content-encoding", "gzip")), raw))
    assert max(len(f["message"]) for f in ops.findings) < 300
    [row] = ops.inserts
    assert len(row["request_body"]) <= Config().body_limit


def test_many_events_with_problems_are_counted_not_each_described() -> None:
    body = decode_body(json.dumps([{"productSku": None}] * 5000).encode(), "", "application/json")
    problems = payload_problems(body, ("productName",))
    assert len(problems) == 11  # five events, two problems each, then the count of the rest
    assert problems[-1] == "… and 4995 more event(s) with problems"


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd"])
def test_a_bomb_in_a_tracking_post_is_not_inflated_past_the_cap_and_says_so(coding: str) -> None:
    bomb = ENCODERS[coding](b"\0" * (DEFAULT_DECODE_LIMIT * 8))
    pipeline = Pipeline(Config())
    ops = pipeline.process(_request("u1", (("content-type", "application/json"), ("content-encoding", coding)), bomb))
    [row] = ops.inserts
    assert row["request_body_kind"] == "binary"
    assert base64.b64decode(row["request_body"]) == bomb[:512]  # what was sent, not what it would inflate to
    assert f"exceeds {DEFAULT_DECODE_LIMIT} bytes" in row["request_body_note"]
    [payload] = [f for f in ops.findings if f["kind"] == "invalid_payload"]
    assert payload["message"].startswith("the body is too big to judge (decoded body exceeds")


def test_the_decode_cap_is_a_setting() -> None:
    body = json.dumps({"productSku": "1", "pad": "x" * 5000}).encode()
    assert decode_body(gzip.compress(body), "gzip", "application/json", max_decoded=4096).refused
    assert decode_body(body, "", "application/json", max_decoded=4096).refused
    ops = Pipeline(Config(body_decode_limit=4096)).process(
        _request("u1", (("content-type", "application/json"),), body)
    )
    assert "exceeds 4096 bytes" in ops.inserts[0]["request_body_note"]


def _har_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.har"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return path


def _entry_text(path: tuple[str, ...], raw_value: str) -> str:
    """The HAR with one field's JSON text replaced (to write what json.dumps cannot: Infinity, 400 digits)."""
    marker = "__VALUE__"
    return json.dumps({"log": {"entries": [ENTRY, _with(ENTRY, path, marker)]}}).replace(f'"{marker}"', raw_value)


@pytest.mark.parametrize(
    ("path", "raw_value", "message"),
    [
        (("request", "method"), "5", "log.entries[1].request.method: expected str, got int"),
        (("response", "status"), "1" + "0" * 30, "log.entries[1].response.status: 1000000000000000000000000000000 is"),
        (("time",), "9" * 400, "log.entries[1].time: 9999999999"),
        (("request", "url"), '"http://[::1/edge/clickstreamEvents"', "log.entries[1].request.url: 'http://[::1/"),
        (("request", "url"), '"https://t.example/\\ud800"', None),  # a lone surrogate: read, stored cleaned
        (("request", "method"), '"\\ud800"', None),
        (("time",), "Infinity", "log.entries[1].time: inf is not a time in milliseconds"),
        (("time",), "NaN", "log.entries[1].time: nan is not a time in milliseconds"),
        (("time",), "-1", "log.entries[1].time: -1 is not a time in milliseconds"),
        (("request", "postData"), "7", "log.entries[1].request.postData: expected an object, got int"),
        (("startedDateTime",), '"\\ud800"', "log.entries[1].startedDateTime: '\\ud800' is not an ISO 8601 time"),
        # Times outside what a stored time may hold (issue 21): year 10000 once the offset is applied, before 1970.
        (("startedDateTime",), '"9999-12-31T23:59:59-23:59"', "startedDateTime: '9999-12-31T23:59:59-23:59' is out of"),
        (("startedDateTime",), '"9999-06-01T00:00:00Z"', "entries[1].startedDateTime: '9999-06-01T00:00:00Z' is out"),
        (("startedDateTime",), '"1969-12-31T23:59:59Z"', "entries[1].startedDateTime: '1969-12-31T23:59:59Z' is out"),
        (("startedDateTime",), '"0001-01-01T00:00:00+01:00"', "startedDateTime: '0001-01-01T00:00:00+01:00'"),
        (("response", "status"), "-2", "log.entries[1].response.status: -2 is not an HTTP status"),
    ],
)  # fmt: skip
def test_bad_har_values_exit_2_naming_the_entry_and_field(
    tmp_path: Path, path: tuple[str, ...], raw_value: str, message: str | None
) -> None:
    har = _har_file(tmp_path, _entry_text(path, raw_value))
    db = tmp_path / "cw.db"
    result = subprocess.run(
        [str(CLICKWATCH), "import", str(har), "--db", str(db)], capture_output=True, text=True, timeout=60, check=False
    )
    if message is None:
        assert result.returncode == 0, result.stderr
        conn = sqlite3.connect(db)
        try:
            # The entry with the odd value is no clickstream call any more (its method or path): storefront.
            assert conn.execute("SELECT count(*) FROM deliveries").fetchone()[0] == 1
        finally:
            conn.close()
        return
    assert result.returncode == 2, result.stderr
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_an_imported_har_stores_no_non_finite_number_and_exports_none(tmp_path: Path) -> None:
    har = _har_file(tmp_path, json.dumps({"log": {"entries": [ENTRY, _with(ENTRY, ("time",), 86_400_000)]}}))
    db = str(tmp_path / "cw.db")
    import_har(str(har), db, "r")
    conn = sqlite3.connect(db)
    try:
        numbers = conn.execute("SELECT sent_at, ended_at, duration_ms FROM deliveries").fetchall()
    finally:
        conn.close()
    assert all(math.isfinite(n) for row in numbers for n in row)
    with pytest.raises(HarImportError, match="nested too deeply"):
        import_har(str(_har_file(tmp_path, "[" * 100_000)), db, "deep")


def test_commas_inside_strings_are_no_values_a_healthy_long_text_is_parsed() -> None:
    # A product description full of commas is one value: the bound on values must not refuse it (no finding).
    text = ", ".join(["red"] * (MAX_JSON_VALUES + 10))
    body = json.dumps({"events": [{"description": text, "escaped": 'say \\"a, b\\"'}]}).encode()
    decoded = decode_body(body, "", "application/json", max_decoded=DEFAULT_DECODE_LIMIT)
    assert decoded.kind is BodyKind.JSON and not decoded.refused, decoded.note
    many = json.dumps(list(range(MAX_JSON_VALUES + 10))).encode()
    refused = decode_body(many, "", "application/json", max_decoded=DEFAULT_DECODE_LIMIT)
    assert refused.refused and "values" in (refused.note or "")
