from clickwatch.core.redaction import REDACTED, redact_headers
from clickwatch.core.visitor import visitor_key


def test_secrets_are_redacted_and_names_kept():
    headers = (
        ("Authorization", "Bearer abc.def.ghi"),
        ("proxy-authorization", "Basic dXNlcjpwYXNz"),
        ("Cookie", "anonymous-consents=%5B%5D; JSESSIONID=ABC123"),
        ("Set-Cookie", "electronics-consentReference=cr-1; Path=/; Secure; SameSite=None"),
        ("hybris-schema", "context/commerce/ProductView"),
    )
    out = dict(redact_headers(headers))
    assert out["Authorization"] == f"Bearer {REDACTED}"
    assert out["proxy-authorization"] == f"Basic {REDACTED}"
    assert out["Cookie"] == f"anonymous-consents={REDACTED}; JSESSIONID={REDACTED}"
    assert out["Set-Cookie"] == f"electronics-consentReference={REDACTED}; Path=/; Secure; SameSite=None"
    assert out["hybris-schema"] == "context/commerce/ProductView"
    flat = repr(out)
    for secret in ("abc.def.ghi", "dXNlcjpwYXNz", "%5B%5D", "ABC123", "cr-1"):
        assert secret not in flat


def test_token_without_scheme_is_wholly_redacted():
    assert redact_headers((("Authorization", "s3cret"),)) == (("Authorization", REDACTED),)


def test_visitor_key_is_stable_short_and_distinguishes_browsers():
    a = visitor_key("127.0.0.1", "Mozilla/5.0 Chrome")
    assert a == visitor_key("::ffff:127.0.0.1", "Mozilla/5.0 Chrome")
    assert a != visitor_key("127.0.0.1", "Mozilla/5.0 Firefox")
    assert a != visitor_key("127.0.0.2", "Mozilla/5.0 Chrome")
    assert len(a) == 16
    assert int(a, 16) >= 0


def test_visitor_key_accepts_undecodable_user_agents():
    assert len(visitor_key("127.0.0.1", "bad \udcff ua")) == 16
