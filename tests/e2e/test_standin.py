"""The stand-in itself, without a browser: certificates, faults, CORS, the tenant's and the storefront's answers."""

from __future__ import annotations

import json
import re
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from cryptography import x509

from clickwatch.standin import catalog, certs
from clickwatch.standin.faults import TRACKED_EVENTS, Fault, FaultError, FaultName, Faults
from clickwatch.standin.server import (
    CAROUSEL,
    CLICKSTREAM_PATH,
    CONFIG_ID,
    CONSENT_PATH,
    GIVEN_COOKIE,
    MIX_CARD_ID,
    STATIC,
    STRATEGY_ID,
    TAG_PATH,
    TOKEN_PATH,
    StandIn,
    cors_headers,
)

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
        ("drop-event:AddedToCart", Fault(FaultName.DROP_EVENT, text="AddedToCart")),
        (" Drop-Event: AddedToCart , CarouselViewed ", Fault(FaultName.DROP_EVENT, text="AddedToCart,CarouselViewed")),
        ("stale-reference", Fault(FaultName.STALE_REFERENCE)),
        ("early-tracking", Fault(FaultName.EARLY_TRACKING)),
        ("slow-reference:0.5", Fault(FaultName.SLOW_REFERENCE, 0.5)),
        ("account-without-consent", Fault(FaultName.ACCOUNT_WITHOUT_CONSENT)),
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
        ("slow-reference", "give the delay in seconds, e.g. slow-reference:3"),
        ("hang:5", "hang takes no argument"),
        ("stale-reference:1", "stale-reference takes no argument"),
        ("drop-event", "give data-layer event names, e.g. drop-event:AddedToCart"),
        ("drop-event:,", "give data-layer event names"),
        ("drop-event:Added To Cart", "give data-layer event names"),
        ("drop-event:AddToCart", "the tag never sends AddToCart (it sends ProductDetailsPageViewed"),
        ("drop-event:ConsentChanged", "the tag never sends ConsentChanged"),
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
        "earlyTracking": False,
        "duplicateEvents": True,
        "omitConsentReference": False,
        "dropEvents": [],
    }
    assert faults.storefront_behaviour() == {"staleReference": False}
    assert Faults.parse(["early-tracking"]).tag_behaviour()["earlyTracking"] is True


def test_drop_event_may_be_given_several_times_and_stale_reference_reaches_the_storefront() -> None:
    faults = Faults.parse(["drop-event:AddedToCart", "stale-reference", "drop-event:CartSnapshot,AddedToCart"])
    assert faults.names() == ["drop-event:AddedToCart", "stale-reference", "drop-event:CartSnapshot,AddedToCart"]
    assert faults.dropped_events() == ["AddedToCart", "CartSnapshot"]
    assert faults.tag_behaviour()["dropEvents"] == ["AddedToCart", "CartSnapshot"]
    assert faults.storefront_behaviour() == {"staleReference": True}
    # The same names twice are one fault.
    assert Faults.parse(["drop-event:AddedToCart", "drop-event:AddedToCart"]).names() == ["drop-event:AddedToCart"]


def test_the_faults_list_of_tracked_events_is_the_tags_schema_map() -> None:
    script = (STATIC / "profile-tag.js").read_text()
    schemas = re.search(r"var SCHEMAS = \{(.*?)\};", script, re.S)
    assert schemas is not None
    mapping = dict(re.findall(r"(\w+): \"(\w+)\"", schemas[1]))
    assert tuple(mapping) == TRACKED_EVENTS
    assert (mapping["CarouselViewed"], mapping["CarouselClicked"]) == ("carouselViewed", "carouselClicked")


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
        dropping = plain.post(f"{tenant}/admin/faults", json={"faults": ["drop-event:AddedToCart,CarouselClicked"]})
        assert dropping.json() == {"faults": ["drop-event:AddedToCart,CarouselClicked"]}
        behaviour = plain.get(f"{tenant}/config/{CONFIG_ID}").json()["behaviour"]
        assert behaviour["dropEvents"] == ["AddedToCart", "CarouselClicked"]
        unknown = plain.post(f"{tenant}/admin/faults", json={"faults": ["drop-event:Nothing"]})
        assert unknown.status_code == 400
        assert "never sends Nothing" in unknown.json()["detail"]
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


# --- merchandising strategy --------------------------------------------------------------------------------------

STRATEGY = f"/strategy/standin/strategies/{STRATEGY_ID}/products"


def test_the_tenant_answers_strategy_calls_with_cors_and_records_them(standin: StandIn) -> None:
    origin = standin.storefront_url("http").rstrip("/")
    url = standin.tenant_origin("http") + STRATEGY
    with httpx.Client(trust_env=False, timeout=10) as plain:
        preflight = plain.options(
            url,
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "consent-reference",
            },
        )
        anonymous = plain.get(url, params={"site": "electronics"}, headers={"Origin": origin})
        consented = plain.get(
            url, params={"site": "electronics"}, headers={"Origin": origin, "consent-reference": "cr-9"}
        )
        assert plain.get(standin.tenant_origin("http") + "/strategy/standin/strategies").status_code == 404
    assert preflight.status_code == 204
    assert "GET" in preflight.headers["access-control-allow-methods"]
    assert "consent-reference" in preflight.headers["access-control-allow-headers"]
    assert anonymous.status_code == consented.status_code == 200
    assert anonymous.headers["access-control-allow-origin"] == origin
    answer = anonymous.json()
    assert [p["id"] for p in answer["products"]] == [p.sku for p in catalog.RECOMMENDED]
    assert answer["metadata"]["mixcardId"] == MIX_CARD_ID
    assert all(catalog.product(p["id"]) is not None and p["mainImage"] for p in answer["products"])
    calls = standin.received(STRATEGY)
    assert [(r.method, r.query, r.headers.get("consent-reference")) for r in calls] == [
        ("GET", "site=electronics", None),
        ("GET", "site=electronics", "cr-9"),
    ]
    assert standin.received(CLICKSTREAM_PATH) == []


def _settings(html: str) -> dict[str, Any]:
    found = re.search(r'<script type="application/json" id="standin-settings"[^>]*>(.*?)</script>', html, re.S)
    assert found is not None
    result: dict[str, Any] = json.loads(found[1])
    return result


def test_the_carousel_and_the_stale_reference_fault_reach_the_page_settings() -> None:
    with StandIn() as plain_standin:
        settings = _settings(httpx.get(plain_standin.storefront_url("http"), trust_env=False).text)
        assert settings["carousel"] is None
        assert settings["staleReference"] is False
    with StandIn(carousel=True, faults=Faults.parse(["stale-reference"])) as standin:
        settings = _settings(httpx.get(standin.storefront_url("http"), trust_env=False).text)
        assert settings["carousel"] == {
            **CAROUSEL,
            "strategyUrl": f"{standin.tenant_origin('http')}{STRATEGY}?site=electronics",
        }
        assert settings["staleReference"] is True
        standin.faults = Faults()  # as every page is rendered: the next page load knows
        assert _settings(httpx.get(standin.storefront_url("http"), trust_env=False).text)["staleReference"] is False


# --- Content-Security-Policy ---------------------------------------------------------------------------------------


def test_without_csp_the_storefront_sends_no_policy(standin: StandIn) -> None:
    page = httpx.get(standin.storefront_url("http"), trust_env=False)
    assert "content-security-policy" not in page.headers
    assert "nonce" not in page.text


def test_nonce_csp_gives_every_answer_its_own_nonce_carried_by_the_pages_scripts() -> None:
    with StandIn(csp="nonce") as standin:
        pages = [httpx.get(standin.storefront_url("http") + path, trust_env=False) for path in ("", "", "p/nothing")]
    nonces = []
    for page in pages:
        policy = page.headers["content-security-policy"]
        found = re.fullmatch(
            r"script-src 'nonce-([A-Za-z0-9+/]+=*)' 'strict-dynamic'; object-src 'none'; base-uri 'none'", policy
        )
        assert found is not None, policy
        nonces.append(found[1])
        scripts = re.findall(r"<script[^>]*>", page.text)
        assert len(scripts) == 2
        assert all(f'nonce="{found[1]}"' in tag for tag in scripts)
    assert len(set(nonces)) == 3  # a fresh nonce per answer, 404 pages included
    assert pages[2].status_code == 404


def test_paths_csp_allows_the_static_folder_and_the_tenant_only() -> None:
    with StandIn(csp="paths", spartacus=True) as standin:
        for scheme, host in (("http", "localhost"), ("https", "127.0.0.1")):
            port = standin.port("storefront", scheme)
            page = client(standin).get(f"{scheme}://{host}:{port}/c/576")
            tenant = standin.tenant_origin(scheme)
            assert page.headers["content-security-policy"] == (
                f"script-src {scheme}://{host}:{port}/static/ {tenant}; connect-src 'self' {tenant}"
            )
            assert "nonce" not in page.text
        # Commerce API answers are JSON, not pages: no policy.
        occ = client(standin).get(standin.storefront_url() + "occ/v2/electronics/products/300938")
        assert "content-security-policy" not in occ.headers


def test_an_unknown_csp_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="csp"):
        StandIn(csp="strict")


# --- signing in (Spartacus style) ------------------------------------------------------------------------------------


def test_a_shopper_signs_in_and_the_account_consent_needs_the_bearer_token() -> None:
    with StandIn(spartacus=True) as standin, httpx.Client(trust_env=False, timeout=10) as plain:
        home = standin.storefront_url("http")
        occ = home + "occ/v2/electronics"
        refused = plain.post(home + TOKEN_PATH.lstrip("/"), data={"grant_type": "client_credentials"})
        assert refused.status_code == 400
        answer = plain.post(
            home + TOKEN_PATH.lstrip("/"),
            data={"grant_type": "password", "username": "shopper@standin.example", "password": "x"},
        ).json()
        assert answer["token_type"] == "bearer"
        assert answer["expires_in"] > 0
        bearer = {"Authorization": f"Bearer {answer['access_token']}"}

        assert plain.get(occ + "/users/current/consenttemplates").status_code == 401
        assert (
            plain.get(occ + "/users/current/consenttemplates", headers={"Authorization": "Bearer nope"}).status_code
            == 401
        )
        assert plain.get(occ + "/products/300938", headers={"Authorization": "Bearer nope"}).status_code == 401
        templates = plain.get(occ + "/users/current/consenttemplates", headers=bearer).json()["consentTemplates"]
        assert [(t["id"], "consentWithdrawnDate" in t["currentConsent"]) for t in templates] == [("PROFILE", False)]

        assert (
            plain.post(occ + "/users/current/carts/g1/entries", json={"product": {"code": "300938"}}).status_code == 401
        )
        entry = plain.post(
            occ + "/users/current/carts/g1/entries", json={"product": {"code": "300938"}}, headers=bearer
        )
        assert entry.json()["cart"]["totalItems"] == 1
        assert plain.get(occ + "/users/current/carts/g1", headers=bearer).json()["cart"]["guid"] == "g1"
        assert plain.get(occ + "/products/300938", headers=bearer).status_code == 200  # any OCC call may carry it

        # A registered shopper's consent lives in the account: withdrawing and giving it are requests.
        code = templates[0]["currentConsent"]["code"]
        assert plain.delete(f"{occ}/users/current/consents/{code}", headers=bearer).status_code == 200
        templates = plain.get(occ + "/users/current/consenttemplates", headers=bearer).json()["consentTemplates"]
        assert "consentWithdrawnDate" in templates[0]["currentConsent"]
        given = plain.post(
            occ + "/users/current/consents",
            data={"consentTemplateId": "PROFILE", "consentTemplateVersion": "1"},
            headers=bearer,
        )
        assert given.status_code == 201
        assert standin.account_consent(answer["access_token"]) == "GIVEN"

        calls = standin.storefront_received()
        assert [(c.method, c.path) for c in calls][:2] == [("POST", TOKEN_PATH), ("POST", TOKEN_PATH)]
        assert calls[-1].headers["Authorization"] == bearer["Authorization"]
        assert standin.storefront_received("/occ/v2/electronics/users/current/consents")[-1].method == "POST"
    # The accelerator-style storefront has no such API.
    with StandIn() as accelerator:
        assert (
            httpx.post(accelerator.storefront_url("http") + TOKEN_PATH.lstrip("/"), trust_env=False).status_code == 404
        )
        assert accelerator.storefront_received() == []
