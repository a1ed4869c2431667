"""HAR import reads storefront traffic with the same rules as the proxy: sign-in and X-Consent-Reference too."""

from clickwatch.core.findings import FindingKind
from clickwatch.core.har import observations
from clickwatch.core.judge import Judge
from clickwatch.core.matching import Patterns
from clickwatch.core.model import RequestSeen, StorefrontSeen
from clickwatch.core.record import request_body

TENANT = "https://acme.api.us.context.cloud.sap"


def entry(
    url: str, started: str, headers: dict[str, str], method: str = "GET", status: int = 200, ct: str = "text/html"
):
    return {
        "startedDateTime": started,
        "time": 20,
        "request": {
            "method": method,
            "url": url,
            "headers": [{"name": k, "value": v} for k, v in headers.items()],
            **(
                {"postData": {"mimeType": "application/json", "text": '{"productSku":"1"}'}} if method == "POST" else {}
            ),
        },
        "response": {
            "status": status,
            "headers": [{"name": "Content-Type", "value": ct}],
            "content": {"mimeType": ct, "text": ""},
        },
    }


def judged(entries: list[dict]) -> list[FindingKind]:
    judge = Judge()
    for seen in observations({"log": {"entries": entries}}, "har", Patterns.compile()):
        if isinstance(seen, StorefrontSeen):
            judge.storefront(seen)
        elif isinstance(seen, RequestSeen):
            judge.request(seen, request_body(seen, 65536))
    return [f.kind for f in judge.evaluate(10**10, final=True).findings]


def test_an_accelerator_shopper_signed_in_by_cookie_is_not_judged_from_anonymous_consent():
    def visit(cookie: str) -> list[dict]:
        page = {"Accept": "text/html", "Sec-Fetch-Dest": "document", "Cookie": cookie}
        event = {"hybris-schema": "context/commerce/ProductView", "consent-reference": "cr"}
        return [
            entry("https://shop.example/p/1", "2026-11-27T10:00:00.000Z", page),
            entry(f"{TENANT}/edge/clickstreamEvents", "2026-11-27T10:00:01Z", event, "POST", 201, "application/json"),
        ]

    assert judged(visit("acceleratorSecureGUID=abc; JSESSIONID=1")) == [FindingKind.CONSENT_UNKNOWN]
    # Not signed in: a page load without any consent cookie says "absent".
    assert judged(visit("JSESSIONID=1")) == [FindingKind.CONSENT_VIOLATION]


def test_a_commerce_api_call_with_a_stale_reference_is_read_from_a_har_too():
    withdrawn = "%5B%7B%22templateCode%22%3A%22PROFILE%22%2C%22consentState%22%3A%22WITHDRAWN%22%7D%5D"
    call = {"Accept": "application/json", "X-Anonymous-Consents": withdrawn, "X-Consent-Reference": "cr-1"}
    entries = [
        entry("https://shop.example/occ/v2/el/products/1", "2026-11-27T10:00:00.000Z", call, ct="application/json")
    ]
    assert judged(entries) == [FindingKind.STALE_CONSENT_REFERENCE]


def test_a_signed_in_shoppers_account_consent_is_read_from_the_har_as_live():
    """The HAR holds the answer's body decoded: its Content-Encoding no longer applies, and the same reader reads it."""
    templates = '{"consentTemplates":[{"id":"PROFILE","version":1}]}'
    answer = entry(
        "https://shop.example/occ/v2/electronics/users/current/consenttemplates?lang=en",
        "2026-11-27T10:00:00.000Z",
        {"Authorization": "Bearer t", "Accept": "application/json"},
        ct="application/json",
    )
    answer["response"]["headers"].append({"name": "Content-Encoding", "value": "gzip"})
    answer["response"]["content"]["text"] = templates
    [seen] = observations({"log": {"entries": [answer]}}, "har", Patterns.compile())
    assert isinstance(seen, StorefrontSeen) and seen.logged_in is True
    assert seen.account is not None and seen.account.content_encoding == ""
    signals = Judge().storefront(seen).signals
    assert [(s.state.value, s.source) for s in signals] == [("absent", "account (GET /users/current/consenttemplates)")]
