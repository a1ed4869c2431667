"""The stand-in itself, without a browser: certificates, faults, CORS, the tenant's and the storefront's answers."""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from cryptography import x509

from standin import certs
from standin.faults import Fault, FaultError, FaultName, Faults
from standin.server import CLICKSTREAM_PATH, CONFIG_ID, CONSENT_PATH, GIVEN_COOKIE, TAG_PATH, StandIn, cors_headers

pytestmark = pytest.mark.integration

EVENT_HEADERS = {
    "content-type": "application/json",
    "hybris-schema": "context/commerce/ProductView",
    "consent-reference": "cr-1",
}


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with StandIn() as running:
        yield running


def client(standin: StandIn, timeout: float = 10.0) -> httpx.Client:
    """A client that verifies the stand-in's certificate against its own CA."""
    return httpx.Client(
        verify=ssl.create_default_context(cafile=str(standin.ca_cert)), trust_env=False, timeout=timeout
    )


# --- certificates ------------------------------------------------------------------------------------------------


def test_certificates_are_a_ca_and_a_leaf_for_the_loopback_names(tmp_path: Path) -> None:
    files = certs.generate(tmp_path)
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    leaf = x509.load_pem_x509_certificates(files.cert.read_bytes())[0]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert leaf.issuer == ca.subject
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert {str(a) for a in names.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    assert files.key.stat().st_mode & 0o077 == 0


def test_https_listeners_present_a_certificate_that_verifies_for_both_hosts(standin: StandIn) -> None:
    with client(standin) as verified:
        assert verified.get(standin.storefront_url()).status_code == 200
        assert verified.get(standin.tenant_origin() + TAG_PATH).status_code == 200
    # Without the stand-in's CA, nothing trusts it: a browser must trust the proxy's CA instead.
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(standin.storefront_url(), trust_env=False)


def test_a_client_that_never_finishes_tls_does_not_block_others(standin: StandIn) -> None:
    with socket.create_connection(("127.0.0.1", standin.port("tenant", "https"))), client(standin, 5) as verified:
        assert verified.get(standin.tenant_origin() + TAG_PATH).status_code == 200


# --- faults ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ("status:503", Fault(FaultName.STATUS, 503)),
        (" Status:429 ", Fault(FaultName.STATUS, 429)),
        ("slow:2.5", Fault(FaultName.SLOW, 2.5)),
        ("hang", Fault(FaultName.HANG)),
        ("reset", Fault(FaultName.RESET)),
        ("cors-no-consent-reference", Fault(FaultName.CORS_NO_CONSENT_REFERENCE)),
        ("track-before-consent", Fault(FaultName.TRACK_BEFORE_CONSENT)),
        ("duplicate-events", Fault(FaultName.DUPLICATE_EVENTS)),
        ("no-consent-reference", Fault(FaultName.NO_CONSENT_REFERENCE)),
    ],
)
def test_faults_parse_and_print_back(text: str, fault: Fault) -> None:
    assert Fault.parse(text) == fault
    assert Fault.parse(str(fault)) == fault


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("teapot", "unknown fault 'teapot' (known: status:<code>"),
        ("status", "give an HTTP status 100-599"),
        ("status:99", "give an HTTP status 100-599"),
        ("status:abc", "give an HTTP status 100-599"),
        ("slow", "give the delay in seconds"),
        ("slow:0", "more than 0"),
        ("slow:3600", "at most 60"),
        ("hang:5", "hang takes no argument"),
    ],
)
def test_bad_faults_are_named(text: str, message: str) -> None:
    with pytest.raises(FaultError, match=message.replace("(", r"\(")):
        Fault.parse(text)


def test_tag_faults_reach_the_tag_through_its_configuration() -> None:
    faults = Faults.parse(["duplicate-events", "status:500", "status:502"])
    assert faults.names() == ["duplicate-events", "status:502"]
    assert faults.tag_behaviour() == {
        "trackBeforeConsent": False,
        "duplicateEvents": True,
        "omitConsentReference": False,
    }


# --- CORS ----------------------------------------------------------------------------------------------------------


def test_cors_allows_the_storefront_origin_the_method_and_the_tags_headers() -> None:
    allowed = {"https://localhost:4443"}
    headers = dict(cors_headers("https://localhost:4443", allowed, Faults(), preflight=True))
    assert headers["Access-Control-Allow-Origin"] == "https://localhost:4443"
    assert "POST" in headers["Access-Control-Allow-Methods"]
    assert headers["Access-Control-Allow-Headers"] == "content-type, hybris-schema, consent-reference"
    faulty = dict(cors_headers("https://localhost:4443", allowed, Faults.parse(["cors-no-consent-reference"]), True))
    assert faulty["Access-Control-Allow-Headers"] == "content-type, hybris-schema"
    assert cors_headers("https://evil.example", allowed, Faults(), preflight=True) == []
    assert dict(cors_headers("https://localhost:4443", allowed, Faults(), preflight=False)) == {
        "Access-Control-Allow-Origin": "https://localhost:4443",
        "Vary": "Origin",
    }


def test_the_tenant_answers_preflights_for_its_storefront_only(standin: StandIn) -> None:
    origin = standin.storefront_url().rstrip("/")
    request = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "consent-reference"}
    with client(standin) as verified:
        ok = verified.options(standin.tenant_origin() + CLICKSTREAM_PATH, headers={"Origin": origin, **request})
        denied = verified.options(
            standin.tenant_origin() + CLICKSTREAM_PATH, headers={"Origin": "https://evil.example", **request}
        )
    assert ok.status_code == 204
    assert ok.headers["access-control-allow-origin"] == origin
    assert "consent-reference" in ok.headers["access-control-allow-headers"]
    assert denied.status_code == 403
    assert "access-control-allow-origin" not in denied.headers


# --- tenant --------------------------------------------------------------------------------------------------------


def test_the_tenant_hands_out_references_and_takes_events(standin: StandIn) -> None:
    tenant = standin.tenant_origin()
    with client(standin) as verified:
        config = verified.get(f"{tenant}/config/{CONFIG_ID}").json()
        reference = verified.post(tenant + CONSENT_PATH, json={"siteId": "electronics"})
        event = verified.post(tenant + CLICKSTREAM_PATH, json={"productSku": "300938"}, headers=EVENT_HEADERS)
    assert config["clickstreamUrl"] == tenant + CLICKSTREAM_PATH
    assert config["consentReferenceUrl"] == tenant + CONSENT_PATH
    assert reference.status_code == 201
    assert reference.json()["id"]
    assert event.status_code == 201
    received = standin.received(CLICKSTREAM_PATH)
    assert [(r.json(), r.headers["consent-reference"]) for r in received] == [({"productSku": "300938"}, "cr-1")]


def test_faults_switch_at_run_time_through_the_admin_endpoint(standin: StandIn) -> None:
    tenant = standin.tenant_origin("http")
    with httpx.Client(trust_env=False, timeout=10) as plain:
        assert plain.post(f"{tenant}/admin/faults", json={"faults": ["status:503", "no-consent-reference"]}).json() == {
            "faults": ["status:503", "no-consent-reference"]
        }
        assert plain.get(f"{tenant}/admin/faults").json() == {"faults": ["status:503", "no-consent-reference"]}
        assert plain.post(tenant + CLICKSTREAM_PATH, json={}, headers=EVENT_HEADERS).status_code == 503
        assert plain.get(f"{tenant}/config/{CONFIG_ID}").json()["behaviour"]["omitConsentReference"] is True
        bad = plain.post(f"{tenant}/admin/faults", json={"faults": ["status:999"]})
        assert bad.status_code == 400
        assert "100-599" in bad.json()["detail"]
        assert plain.post(f"{tenant}/admin/faults", content=b"not json").status_code == 400
        assert plain.post(f"{tenant}/admin/faults", json={"faults": []}).json() == {"faults": []}
        assert plain.post(tenant + CLICKSTREAM_PATH, json={}, headers=EVENT_HEADERS).status_code == 201


def test_reset_slow_and_hang_misbehave_as_named(standin: StandIn) -> None:
    url = standin.tenant_origin("http") + CLICKSTREAM_PATH
    with httpx.Client(trust_env=False, timeout=5) as plain:
        standin.faults = Faults.parse(["reset"])
        with pytest.raises(httpx.TransportError):
            plain.post(url, json={}, headers=EVENT_HEADERS)
        standin.faults = Faults.parse(["slow:0.5"])
        started = time.monotonic()
        assert plain.post(url, json={}, headers=EVENT_HEADERS).status_code == 201
        assert time.monotonic() - started >= 0.5
        standin.faults = Faults.parse(["hang"])
        with pytest.raises(httpx.ReadTimeout):
            plain.post(url, json={}, headers=EVENT_HEADERS, timeout=0.5)


# --- storefront ------------------------------------------------------------------------------------------------


def test_the_accelerator_storefront_keeps_consent_in_cookies_as_the_accelerator_does(standin: StandIn) -> None:
    home = standin.storefront_url("http")

    def get(path: str = "", cookie: str = "") -> httpx.Response:
        return httpx.get(home + path, headers={"Cookie": cookie} if cookie else {}, trust_env=False, timeout=10)

    cookies = get().headers.get_list("set-cookie")
    # A first visit: no decision yet, and the server's mirror says false.
    assert any(c.startswith("anonymous-consents=") and "null" in c for c in cookies)
    assert any(c.startswith(f"{GIVEN_COOKIE}=false") for c in cookies)
    given = quote(json.dumps([{"templateCode": "PROFILE", "templateVersion": 1, "consentState": "GIVEN"}]))
    answer = get(cookie=f"anonymous-consents={given}; {GIVEN_COOKIE}=false")
    assert answer.headers.get_list("set-cookie") == [f"{GIVEN_COOKIE}=true; Path=/; SameSite=Lax"]
    assert get(cookie=f"anonymous-consents={given}; {GIVEN_COOKIE}=true").headers.get_list("set-cookie") == []
    product = get("p/300938")
    assert product.headers["content-type"].startswith("text/html")
    assert '"sku": "300938"' in product.text  # rendered in by the server; the page's script feeds the data layer
    assert get("p/no-such-product").status_code == 404
    added = httpx.post(home + "cart/add", data={"productCodePost": "300938", "qty": "2"}, trust_env=False)
    assert added.json()["cart"]["entries"] == [
        {"sku": "300938", "name": "Photosmart E317 Digital Camera", "quantity": 2, "price": 114.12}
    ]
    assert added.headers["set-cookie"].startswith("standin-cart=")


def test_the_spartacus_storefront_serves_one_shell_and_its_commerce_api() -> None:
    with StandIn(spartacus=True) as standin, httpx.Client(trust_env=False, timeout=10) as plain:
        home = standin.storefront_url("http")
        shell = plain.get(home + "p/300938")
        assert shell.status_code == 200
        assert shell.headers.get_list("set-cookie") == []  # consent lives in browser storage
        assert '"page": null' in shell.text
        occ = home + "occ/v2/electronics"
        assert plain.get(occ + "/products/300938").json()["product"]["sku"] == "300938"
        category = plain.get(occ + "/products/search", params={"query": ":relevance:allCategories:584"}).json()
        assert category["type"] == "category"
        assert [p["sku"] for p in category["products"]] == ["2053367"]
        assert plain.get(occ + "/products/search", params={"query": "powershot"}).json()["text"] == "powershot"
        entry = plain.post(occ + "/users/anonymous/carts/abc/entries", json={"product": {"code": "1382080"}})
        assert entry.json()["cart"]["guid"] == "abc"
        assert plain.get(occ + "/users/anonymous/carts/abc").json()["cart"]["totalItems"] == 1
        assert plain.get(occ + "/products/nothing").status_code == 404
