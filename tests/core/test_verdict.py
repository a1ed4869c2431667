import pytest

from clickwatch.core.model import Kind, Verdict
from clickwatch.core.verdict import StatusSet, StatusSpecError, parse_expected, verdict_for


@pytest.mark.parametrize(
    ("kind", "status", "verdict"),
    [
        (Kind.CLICKSTREAM, 201, Verdict.DELIVERED),
        (Kind.CLICKSTREAM, 200, Verdict.REJECTED),
        (Kind.CLICKSTREAM, 204, Verdict.REJECTED),
        (Kind.CLICKSTREAM, 400, Verdict.REJECTED),
        (Kind.CLICKSTREAM, 500, Verdict.REJECTED),
        (Kind.CLICKSTREAM, None, Verdict.FAILED),
        (Kind.CONSENT_REFERENCE, 201, Verdict.DELIVERED),
        (Kind.CONSENT_REFERENCE, 200, Verdict.REJECTED),
        (Kind.PREFLIGHT, 204, Verdict.DELIVERED),
        (Kind.PREFLIGHT, 403, Verdict.REJECTED),
        (Kind.TAG, 200, Verdict.DELIVERED),
        (Kind.TAG, 304, Verdict.DELIVERED),
        (Kind.TAG, 404, Verdict.REJECTED),
        (Kind.STRATEGY, 200, Verdict.DELIVERED),
        (Kind.STRATEGY, 302, Verdict.REJECTED),
    ],
)
def test_default_verdicts(kind, status, verdict):
    assert verdict_for(kind, status) is verdict


def test_status_set_forms():
    s = StatusSet.parse("201, 2xx | 300-302")
    assert 201 in s
    assert 250 in s
    assert 301 in s
    assert 303 not in s
    assert "201" not in s


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "names no HTTP status"),
        ("abc", "'abc' in 'abc' is not an HTTP status"),
        ("700", "outside the HTTP status range"),
        ("6xx", "is not an HTTP status"),
    ],
)
def test_status_set_errors(text, message):
    with pytest.raises(StatusSpecError, match=message):
        StatusSet.parse(text)


def test_parse_expected_overrides_one_kind_and_keeps_the_rest():
    expected = parse_expected("clickstream=200,201")
    assert verdict_for(Kind.CLICKSTREAM, 200, expected) is Verdict.DELIVERED
    assert verdict_for(Kind.CONSENT_REFERENCE, 200, expected) is Verdict.REJECTED


@pytest.mark.parametrize(
    ("spec", "message"),
    [("clickstream", "should look like kind=statuses"), ("pixel=200", "'pixel' is not a delivery kind")],
)
def test_parse_expected_errors(spec, message):
    with pytest.raises(StatusSpecError, match=message):
        parse_expected(spec)
