"""Storefront host patterns and tracking patterns as mitmproxy allow_hosts expressions on "host:port"."""

from __future__ import annotations

import re

import pytest

from clickwatch.core import intercept, matching
from clickwatch.core.intercept import HostPatternError, host_regex, interception, storefront_regex, tag_host_regex


def hits(regex: str, *names: str) -> list[bool]:
    """Whether mitmproxy's search (case-insensitive, as its NextLayer compiles them) matches each name."""
    return [bool(re.search(regex, name, re.IGNORECASE)) for name in names]


def test_a_plain_host_matches_itself_on_any_port_and_nothing_around_it():
    regex = storefront_regex("shop.example.com")
    assert hits(regex, "shop.example.com:443", "SHOP.example.com:8080") == [True, True]
    assert hits(regex, "www.shop.example.com:443", "shop.example.com.evil:443", "shopxexample.com:443") == [
        False,
        False,
        False,
    ]


def test_a_wildcard_stands_for_one_or_more_labels_not_the_bare_domain():
    regex = storefront_regex("*.example-shop.com")
    assert hits(regex, "www.example-shop.com:443", "a.b.example-shop.com:443") == [True, True]
    assert hits(regex, "example-shop.com:443", "www.example-shop.com.evil.net:443", "wwwexample-shop.com:443") == [
        False,
        False,
        False,
    ]


def test_a_port_restricts_the_pattern_to_that_port():
    regex = storefront_regex("shop.test:8443")
    assert hits(regex, "shop.test:8443", "shop.test:443", "shop.test:84430") == [True, False, False]


@pytest.mark.parametrize(
    "bad", ["", "https://shop.example.com", "shop.example.com/path", "*", "*.", "shop:http", "a b", "shop:0"]
)
def test_what_is_not_a_host_pattern_is_refused_with_an_example(bad):
    with pytest.raises(HostPatternError, match=r"e\.g\.|port number"):
        storefront_regex(bad)


def test_end_anchors_of_a_host_expression_mean_the_end_of_the_host():
    assert hits(host_regex(r"^iss\.test$"), "iss.test:443", "iss.test.evil:443", "xiss.test:443") == [
        True,
        False,
        False,
    ]
    assert hits(host_regex(r"\.example\Z"), "a.example:80", "a.example.com:80") == [True, False]
    # Escaped dollars and dollars inside a class stay literal.
    assert host_regex(r"a\$[$]b") == r"a\$[$]b"
    assert host_regex(r"[]$]x$") == r"[]$]x(?=:\d+$)"


def test_the_tag_host_is_read_off_the_default_tag_pattern():
    regex = tag_host_regex(matching.DEFAULT_TAG_PATTERN)
    assert regex is not None
    assert hits(regex, "tag.static.eu.context.cloud.sap:443", "tag.static.eu.context.cloud.sap.evil:443") == [
        True,
        False,
    ]


@pytest.mark.parametrize("pattern", [r"profile-tag\.js$", r"(a\.com/x|b\.com/y)", r"a\.com|b\.com/x"])
def test_a_tag_pattern_without_a_host_part_gives_none(pattern):
    assert tag_host_regex(pattern) is None


def test_no_storefront_means_intercept_everything():
    assert interception((), "", matching.DEFAULT_TAG_PATTERN) is None


def test_interception_is_storefront_then_tracking_hosts():
    plan = interception(["shop.test", "*.cdn-shop.test"], r"^iss\.test$", matching.DEFAULT_TAG_PATTERN)
    assert plan is not None
    assert plan.allow_hosts == plan.storefront + plan.tracking
    compiled = [re.compile(r, re.IGNORECASE) for r in plan.allow_hosts]
    assert intercept.allowed(compiled, "shop.test", 443)
    assert intercept.allowed(compiled, "img.cdn-shop.test", 443)
    assert intercept.allowed(compiled, "iss.test", 8443)
    assert intercept.allowed(compiled, "tag.static.us.context.cloud.sap", 443)
    assert not intercept.allowed(compiled, "fonts.googleapis.com", 443)
    assert not intercept.allowed(compiled, "127.0.0.1", 443, "other.test")
    assert intercept.allowed(compiled, "127.0.0.1", 443, "shop.test")  # any of the names, as mitmproxy decides
    assert plan.notes == ()


def test_without_a_tenant_host_the_iss_cloud_is_the_tracking_domain_and_said_so():
    plan = interception(["shop.test"], "", "")
    assert plan is not None
    compiled = [re.compile(r, re.IGNORECASE) for r in plan.allow_hosts]
    assert intercept.allowed(compiled, "acme-site.api.eu.context.cloud.sap", 443)
    assert not intercept.allowed(compiled, "context.cloud.sap.evil.net", 443)
    assert "tenant_host is not set" in plan.notes[0]


def test_a_tag_pattern_without_a_host_is_noted():
    plan = interception(["shop.test"], r"^iss\.test$", r"profile-tag\.js$")
    assert plan is not None and "tag_pattern" in plan.notes[0]


def test_a_bad_storefront_pattern_names_itself():
    with pytest.raises(HostPatternError, match="'https://x'"):
        interception(["shop.test", "https://x"], "", "")
