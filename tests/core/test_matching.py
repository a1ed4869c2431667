import pytest

from clickwatch.core.matching import Match, PatternError, Patterns, is_page_load
from clickwatch.core.model import Kind

DEFAULT = Patterns.compile()


@pytest.mark.parametrize(
    ("method", "host", "path", "expected"),
    [
        ("POST", "acme-electronics.api.us.context.cloud.sap", "/edge/clickstreamEvents", Match(Kind.CLICKSTREAM)),
        ("POST", "127.0.0.1", "/edge/clickstreamEvents?x=1", Match(Kind.CLICKSTREAM)),
        ("post", "127.0.0.1", "/tenant/edge/clickstreamEvents/", Match(Kind.CLICKSTREAM)),
        ("OPTIONS", "t.example", "/edge/clickstreamEvents", Match(Kind.PREFLIGHT, Kind.CLICKSTREAM)),
        ("POST", "t.example", "/consent/acme/consentReferences", Match(Kind.CONSENT_REFERENCE)),
        ("OPTIONS", "t.example", "/consent/acme/consentReferences", Match(Kind.PREFLIGHT, Kind.CONSENT_REFERENCE)),
        ("GET", "t.example", "/strategy/acme/strategies/abc/products?site=x", Match(Kind.STRATEGY)),
        ("GET", "t.example", "/strategy/v1/sites/electronics/strategies/abc/products", Match(Kind.STRATEGY)),
        ("GET", "tag.static.us.context.cloud.sap", "/js/profile-tag.js", Match(Kind.TAG)),
        ("GET", "tag.static.eu.context.cloud.sap", "/config/acme-electronics-default", Match(Kind.TAG)),
        # A preflight of the tag's configuration (a header added by the page or a tool): recorded, judged as CORS.
        ("OPTIONS", "tag.static.eu.context.cloud.sap", "/config/acme", Match(Kind.PREFLIGHT, Kind.TAG)),
        # Ordinary traffic is not ours.
        ("GET", "t.example", "/edge/clickstreamEvents", None),
        ("POST", "t.example", "/edge/clickstreamEventsX", None),
        ("POST", "t.example", "/consent/consentReferences", None),
        ("GET", "shop.example", "/electronics/en/USD/p/123", None),
        ("GET", "tag.static.us.context.cloud.sap.evil.example", "/js/profile-tag.js", None),
        ("POST", "shop.example", "/occ/v2/electronics/users/anonymous/carts", None),
    ],
)
def test_classify_defaults(method, host, path, expected):
    assert DEFAULT.classify(method, host, path) == expected


def test_tenant_host_restricts_tenant_calls_but_not_tags():
    patterns = Patterns.compile(tenant_host=r"\.context\.cloud\.sap$")
    assert patterns.classify("POST", "shop.example", "/edge/clickstreamEvents") is None
    assert patterns.classify("POST", "a-b.api.us.context.cloud.sap", "/edge/clickstreamEvents") == Match(
        Kind.CLICKSTREAM
    )
    assert patterns.classify("GET", "tag.static.us.context.cloud.sap", "/js/profile-tag.js") == Match(Kind.TAG)


def test_custom_tag_pattern_for_a_stand_in():
    patterns = Patterns.compile(tag=r"^127\.0\.0\.1/tag/(profile-tag\.js|config/.+)$")
    assert patterns.classify("GET", "127.0.0.1", "/tag/profile-tag.js") == Match(Kind.TAG)
    assert patterns.classify("GET", "tag.static.us.context.cloud.sap", "/js/profile-tag.js") is None


def test_empty_pattern_disables_a_kind():
    patterns = Patterns.compile(strategy_path="")
    assert patterns.classify("GET", "t.example", "/strategy/acme/strategies/abc/products") is None


def test_bad_pattern_names_the_setting():
    with pytest.raises(PatternError, match=r"clickstream path: '\(' is not a valid regular expression"):
        Patterns.compile(clickstream_path="(")


@pytest.mark.parametrize(
    ("method", "dest", "accept", "content_type", "expected"),
    [
        ("GET", b"document", b"text/html", b"text/html; charset=utf-8", True),
        ("get", b"Document", b"", b"TEXT/HTML", True),
        ("GET", b"iframe", b"*/*", b"text/html", True),
        # Sec-Fetch-Dest decides when it is there; Accept only for browsers that do not send it.
        ("GET", b"empty", b"text/html", b"text/html", False),
        ("GET", b"script", b"text/html", b"text/html", False),
        ("GET", None, b"text/html,application/xhtml+xml", b"text/html", True),
        ("GET", None, b"*/*", b"text/html", False),
        # Only an HTML answer to a GET is a page.
        ("GET", b"document", b"text/html", b"application/pdf", False),
        ("GET", b"document", b"text/html", b"", False),
        ("POST", b"document", b"text/html", b"text/html", False),
        ("HEAD", b"document", b"text/html", b"text/html", False),
    ],
)
def test_is_page_load(method, dest, accept, content_type, expected):
    assert is_page_load(method, dest, accept, content_type) is expected


@pytest.mark.parametrize(
    ("dest", "mode", "expected"),
    [
        # A navigation a service worker passed to the network (Angular's worker when degraded, or "freshness").
        (b"empty", b"navigate", True),
        (b"empty", b"Navigate", True),
        # The worker's own fetch of the app shell for its cache: not a page the browser shows as it came.
        (b"empty", b"same-origin", False),
        (b"empty", b"cors", False),
        (b"empty", None, False),
        (b"document", b"navigate", True),
        # Nested navigations keep their own destination and rule.
        (b"embed", b"navigate", False),
    ],
)
def test_a_navigation_a_service_worker_fetched_is_a_page_load(dest, mode, expected):
    assert is_page_load("GET", dest, b"text/html", b"text/html; charset=utf-8", mode) is expected
