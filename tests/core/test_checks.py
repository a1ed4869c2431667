import pytest

from clickwatch.core.checks import cors_problems, payload_problems, schema_problem
from clickwatch.core.config import BUILTIN_SCHEMAS
from clickwatch.core.decoding import decode_body

ORIGIN = "https://electronics.example.com"


def json_body(raw: bytes | str, content_type: str = "application/json"):
    return decode_body(raw.encode() if isinstance(raw, str) else raw, "", content_type)


# --- payload_problems --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "required"),
    [
        ('{"productSku":"779864"}', ("productSku",)),
        ('{"productSku":"779864","productName":"Camera","categories":["576","brand_10"]}', ("productSku",)),
        ('[{"productSku":"1"},{"productSku":"2"}]', ("productSku",)),
        ("{}", ()),
        ("{}", None),
        ('{"a":{"b":[1,2,{"c":"d"}]}}', None),
        ('{"productSku":0,"flag":false,"name":""}', ("productSku",)),  # falsy is not null
        (
            '{"carouselId":"HomepageE2EMerchandisingCarousel","carouselName":"Homepage E2E Merchandising Carousel",'
            '"strategyId":"00000000-0000-0000-0000-000000000000","mixCardId":"cypress-test-mixcard",'
            '"productSkus":["779864","832382","779866"]}',
            BUILTIN_SCHEMAS["carouselViewed"],
        ),
    ],
)
def test_good_payloads_have_no_problems(raw, required):
    assert payload_problems(json_body(raw), required) == []


def test_json_sent_as_text_plain_by_a_beacon_is_json():
    assert payload_problems(json_body('{"productSku":"1"}', "text/plain;charset=UTF-8"), ("productSku",)) == []


@pytest.mark.parametrize(
    ("raw", "content_type", "required", "expected"),
    [
        ("", "application/json", None, ["the body is empty"]),
        (b"", "", ("productSku",), ["the body is empty"]),
        ("[]", "application/json", None, ["the body is an empty array, not an object or an array of objects"]),
        ('"productSku"', "application/json", None, ["the body is a JSON string, not an object or an array of objects"]),
        ("42", "application/json", None, ["the body is a JSON number, not an object or an array of objects"]),
        ("[1, 2]", "application/json", None, ["the body is a JSON array, not an object or an array of objects"]),
        # One non-object in an array spoils the array.
        (
            '[{"a":1}, "x"]',
            "application/json",
            None,
            ["the body is a JSON array, not an object or an array of objects"],
        ),
        ("[[{}]]", "application/json", None, ["the body is a JSON array, not an object or an array of objects"]),
        ('{"productName":"Camera"}', "application/json", ("productSku",), ["required field(s) missing: productSku"]),
        (
            '{"carouselId":"c"}',
            "application/json",
            BUILTIN_SCHEMAS["carouselViewed"],
            ["required field(s) missing: strategyId, productSkus"],
        ),
        ('{"productSku":null}', "application/json", None, ["null value(s) at productSku"]),
        # A required field sent as null is there, but null.
        ('{"productSku":null}', "application/json", ("productSku",), ["null value(s) at productSku"]),
        ('{"a":{"b":null}}', "application/json", None, ["null value(s) at a.b"]),
        ('{"skus":["1",null]}', "application/json", None, ["null value(s) at skus[1]"]),
        ('{"a":[{"b":[null]}]}', "application/json", None, ["null value(s) at a[0].b[0]"]),
        ('{"a":null,"b":{"c":null}}', "application/json", None, ["null value(s) at a, b.c"]),
        (
            '{"productName":null}',
            "application/json",
            ("productSku",),
            ["required field(s) missing: productSku", "null value(s) at productName"],
        ),
        # Arrays of events: problems are numbered by event.
        (
            '[{"productSku":"1"},{"productName":"x"},{"productSku":null}]',
            "application/json",
            ("productSku",),
            ["event 1: required field(s) missing: productSku", "event 2: null value(s) at productSku"],
        ),
        # A one-event array reads like a single object.
        ('[{"productName":"x"}]', "application/json", ("productSku",), ["required field(s) missing: productSku"]),
    ],
)
def test_payload_problems(raw, content_type, required, expected):
    assert payload_problems(json_body(raw, content_type), required) == expected


def test_null_paths_are_capped_at_five():
    raw = "{" + ",".join(f'"k{i}":null' for i in range(8)) + "}"
    assert payload_problems(json_body(raw), None) == ["null value(s) at k0, k1, k2, k3, k4"]


@pytest.mark.parametrize(
    ("raw", "content_type", "fragment"),
    [
        ('{"productSku": "1"', "application/json", "the body is not JSON (invalid JSON: "),
        ("{bad", "application/json", "the body is not JSON (invalid JSON: "),
        ("productSku=1&productName=Camera", "application/x-www-form-urlencoded", "the body is not JSON (text body)"),
        ("hello", "text/plain", "the body is not JSON (text body)"),
        ("<xml/>", "application/xml", "the body is not JSON (text body)"),
        (b"\xff\xfe\x00\x01", "application/json", "the body is not JSON (not valid utf-8 text"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "image/png", "the body is not JSON (not valid utf-8 text"),
    ],
)
def test_bodies_that_are_not_json(raw, content_type, fragment):
    problems = payload_problems(json_body(raw, content_type), ("productSku",))
    assert len(problems) == 1
    assert problems[0].startswith(fragment)


def test_undecodable_content_encoding_is_not_json():
    body = decode_body(b"not gzip", "gzip", "application/json")
    problems = payload_problems(body, None)
    assert len(problems) == 1
    assert problems[0].startswith("the body is not JSON (could not undo content-encoding")


@pytest.mark.parametrize(
    ("raw", "json_word"),
    [("null", "null"), ('"x"', "string"), ("1", "number"), ("true", "boolean"), ("[1]", "array")],
)
def test_shape_messages_use_json_vocabulary(raw, json_word):
    (problem,) = payload_problems(json_body(raw), None)
    assert json_word in problem
    assert not any(word in problem for word in ("NoneType", "str,", "int,", "float,", "bool,", "list,"))


# --- schema_problem ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ProductView", None),
        ("carouselViewed", None),
        ("carouselClicked", None),
        ("OrderCreated", None),
        (None, "the hybris-schema header is missing"),
        ("", "the hybris-schema header is missing"),
        ("CarouselViewed", "hybris-schema 'CarouselViewed' is not a known schema"),  # the lower-case c matters
        ("productView", "hybris-schema 'productView' is not a known schema"),
        ("PageView", "hybris-schema 'PageView' is not a known schema"),
        ("context/commerce/ProductView", "hybris-schema 'context/commerce/ProductView' is not a known schema"),
    ],
)
def test_schema_problem(name, expected):
    assert schema_problem(name, BUILTIN_SCHEMAS) == expected


def test_builtin_schemas_are_the_domain_list():
    assert set(BUILTIN_SCHEMAS) == {
        "ProductView",
        "CategoryView",
        "KeywordSearch",
        "AddedToCart",
        "RemovedFromCart",
        "ModifiedCart",
        "CartSnapshot",
        "OrderCreated",
        "UserLoggedIn",
        "UserRegistered",
        "carouselViewed",
        "carouselClicked",
    }


def test_schema_problem_uses_the_given_table():
    assert schema_problem("PageView", {"PageView": ()}) is None
    assert schema_problem("ProductView", {"PageView": ()}) == "hybris-schema 'ProductView' is not a known schema"


# --- cors_problems ---------------------------------------------------------------------------------------------


def preflight(method="POST", headers="content-type,consent-reference,hybris-schema", origin=ORIGIN):
    out = []
    if origin is not None:
        out.append(("Origin", origin))
    if method is not None:
        out.append(("Access-Control-Request-Method", method))
    if headers is not None:
        out.append(("Access-Control-Request-Headers", headers))
    return tuple(out)


def allow(origin=ORIGIN, methods="POST, OPTIONS", headers="content-type, consent-reference, hybris-schema", **extra):
    out = []
    if origin is not None:
        out.append(("Access-Control-Allow-Origin", origin))
    if methods is not None:
        out.append(("Access-Control-Allow-Methods", methods))
    if headers is not None:
        out.append(("Access-Control-Allow-Headers", headers))
    out.extend((name.replace("_", "-"), value) for name, value in extra.items())
    return tuple(out)


@pytest.mark.parametrize(
    ("request_headers", "status", "response_headers"),
    [
        (preflight(), 204, allow()),
        (preflight(), 200, allow()),
        (preflight(), 299, allow()),
        (preflight(), 204, allow(origin="*")),
        (preflight(), 204, allow(origin=f" {ORIGIN} ")),
        # Headers and methods in any case and order, with odd spacing.
        (preflight(headers="Content-Type, Consent-Reference"), 204, allow(headers="CONSENT-REFERENCE ,content-type")),
        (preflight(), 204, allow(headers="Hybris-Schema,Content-Type,Consent-Reference,X-Other")),
        # Header names are case-insensitive.
        (
            (
                ("origin", ORIGIN),
                ("ACCESS-CONTROL-REQUEST-METHOD", "POST"),
                ("access-control-request-headers", "consent-reference"),
            ),
            204,
            (("ACCESS-CONTROL-ALLOW-ORIGIN", ORIGIN), ("access-control-allow-headers", "Consent-Reference")),
        ),
        # POST is CORS-safelisted: it needs no Access-Control-Allow-Methods.
        (preflight(method="POST"), 204, allow(methods=None)),
        (preflight(method="GET"), 204, allow(methods="")),
        (preflight(method="PUT"), 204, allow(methods="GET, PUT")),
        (preflight(method="put"), 204, allow(methods="put")),
        (preflight(method="PUT"), 204, allow(methods="*")),
        # A wildcard covers every header when the answer does not allow credentials.
        (preflight(), 204, allow(headers="*")),
        (preflight(), 204, allow(headers="*", Access_Control_Allow_Credentials="false")),
        (
            preflight(headers="consent-reference"),
            204,
            allow(headers="*, consent-reference", Access_Control_Allow_Credentials="true"),
        ),
        # Nothing requested: nothing to allow.
        (preflight(headers=None), 204, allow(headers=None)),
        (preflight(headers=""), 204, allow(headers=None)),
        # No Origin on the preflight: the origin check does not apply.
        (preflight(origin=None), 204, allow(origin=None)),
    ],
)
def test_preflights_the_browser_accepts(request_headers, status, response_headers):
    assert cors_problems(request_headers, status, response_headers) == []


@pytest.mark.parametrize(
    ("request_headers", "status", "response_headers", "expected"),
    [
        (preflight(), 403, allow(), ["the preflight was answered 403, not 2xx"]),
        (preflight(), 500, (), ["the preflight was answered 500, not 2xx"]),
        (preflight(), 301, allow(), ["the preflight was answered 301, not 2xx"]),
        (preflight(), 199, allow(), ["the preflight was answered 199, not 2xx"]),
        (preflight(), 300, allow(), ["the preflight was answered 300, not 2xx"]),
        (preflight(), 204, allow(origin=None), ["the answer has no Access-Control-Allow-Origin"]),
        (
            preflight(),
            204,
            allow(origin="https://apparel.example.com"),
            [
                "Access-Control-Allow-Origin is 'https://apparel.example.com', not the page's origin "
                "'https://electronics.example.com'"
            ],
        ),
        # Origins are compared exactly, scheme included.
        (
            preflight(),
            204,
            allow(origin="http://electronics.example.com"),
            [
                "Access-Control-Allow-Origin is 'http://electronics.example.com', not the page's origin "
                "'https://electronics.example.com'"
            ],
        ),
        (
            preflight(method="PUT"),
            204,
            allow(methods="GET, POST"),
            ["method PUT is not in Access-Control-Allow-Methods"],
        ),
        (
            preflight(method="DELETE"),
            204,
            allow(methods=None),
            ["method DELETE is not in Access-Control-Allow-Methods"],
        ),
        # The known misconfiguration: content-type allowed, the tracking headers not.
        (
            preflight(headers="content-type,consent-reference"),
            204,
            allow(headers="content-type"),
            ["request header(s) consent-reference not allowed by Access-Control-Allow-Headers (allows content-type)"],
        ),
        (
            preflight(),
            204,
            allow(headers=None),
            [
                "request header(s) content-type, consent-reference, hybris-schema not allowed by "
                "Access-Control-Allow-Headers (allows nothing)"
            ],
        ),
        # With credentials, '*' is a literal header name, not a wildcard.
        (
            preflight(headers="content-type,consent-reference"),
            204,
            allow(headers="*", Access_Control_Allow_Credentials="true"),
            [
                "request header(s) content-type, consent-reference not allowed by Access-Control-Allow-Headers "
                "(allows *)"
            ],
        ),
        (
            preflight(headers="content-type,consent-reference"),
            204,
            allow(headers="*, content-type", Access_Control_Allow_Credentials="TRUE"),
            [
                "request header(s) consent-reference not allowed by Access-Control-Allow-Headers "
                "(allows *, content-type)"
            ],
        ),
        # Every problem is listed, not just the first.
        (
            preflight(method="PUT", headers="consent-reference"),
            204,
            allow(origin="https://other.example", methods="POST", headers="content-type"),
            [
                "Access-Control-Allow-Origin is 'https://other.example', not the page's origin "
                "'https://electronics.example.com'",
                "method PUT is not in Access-Control-Allow-Methods",
                "request header(s) consent-reference not allowed by Access-Control-Allow-Headers (allows content-type)",
            ],
        ),
    ],
)
def test_preflights_the_browser_refuses(request_headers, status, response_headers, expected):
    assert cors_problems(request_headers, status, response_headers) == expected


def test_a_refusal_of_consent_reference_names_it():
    problems = cors_problems(preflight(headers="content-type,consent-reference"), 204, allow(headers="Content-Type"))
    assert len(problems) == 1
    assert "consent-reference" in problems[0]


def test_a_refusal_of_clickwatchs_own_run_header_says_who_added_it_and_what_to_do_instead():
    problems = cors_problems(preflight(method="GET", headers="x-clickwatch-run"), 204, allow(headers="content-type"))
    assert problems[0].startswith("request header(s) x-clickwatch-run not allowed by Access-Control-Allow-Headers")
    assert problems[1] == (
        "x-clickwatch-run is clickwatch's run header, added by the client (e.g. Playwright's extra_http_headers) to "
        "every request, cross-origin ones too: name a browser's run by proxy credentials instead"
    )


def test_the_run_header_is_the_addons():
    from clickwatch.addon.capture import RUN_HEADER
    from clickwatch.core.checks import RUN_HEADER as CHECKED

    assert RUN_HEADER.lower() == CHECKED


def test_repeated_allow_headers_lines_are_combined():
    response = (
        ("Access-Control-Allow-Origin", ORIGIN),
        ("Access-Control-Allow-Headers", "content-type"),
        ("Access-Control-Allow-Headers", "consent-reference, hybris-schema"),
    )
    assert cors_problems(preflight(), 204, response) == []
