import json
from dataclasses import replace
from types import MappingProxyType
from urllib.parse import quote

import pytest

from clickwatch.core.config import Config
from clickwatch.core.consent import ConsentState
from clickwatch.core.decoding import decode_body
from clickwatch.core.findings import DEFAULT_SEVERITY, Finding, FindingKind, Severity
from clickwatch.core.judge import (
    CONSENT_PENDING,
    CONSENT_UNKNOWN,
    NO_COOKIE_SOURCE,
    ConsentSignal,
    Judge,
    Judgement,
    said,
)
from clickwatch.core.model import Answer, Kind, RequestSeen, StorefrontSeen, Verdict
from clickwatch.core.verdict import verdict_for
from clickwatch.core.visitor import visitor_key

T = 1000.0
RUN = "run-1"
IP = "10.0.0.7"
UA = "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0"
VISITOR = visitor_key(IP, UA)
ORIGIN = "https://electronics.example.com"
TENANT = "acme-electronics.api.us.context.cloud.sap"
PRODUCT = '{"productSku":"779864","productName":"Camera"}'
ALL_TRACKING_HEADERS = "content-type,consent-reference,hybris-schema"


def consents(state: str | None, template: str = "PROFILE") -> str:
    return quote(json.dumps([{"templateCode": template, "templateVersion": 1, "consentState": state}]), safe="")


GIVEN = f"anonymous-consents={consents('GIVEN')}"
WITHDRAWN = f"anonymous-consents={consents('WITHDRAWN')}"
UNDECIDED = f"anonymous-consents={consents(None)}"
PAUSE = "profile.tracking.pause=1"


# --- factories ----------------------------------------------------------------------------------------------


def clickstream(
    uid: str,
    at: float,
    body: str | bytes = PRODUCT,
    schema: str | None = "context/commerce/ProductView",
    reference: str | None = "cr-1",
    run: str = RUN,
    ip: str = IP,
    ua: str = UA,
) -> RequestSeen:
    headers = [("Origin", ORIGIN), ("Content-Type", "application/json")]
    if schema is not None:
        headers.append(("hybris-schema", schema))
    if reference is not None:
        headers.append(("consent-reference", reference))
    return RequestSeen(
        uid=uid,
        run=run,
        kind=Kind.CLICKSTREAM,
        target=None,
        method="POST",
        url=f"https://{TENANT}/edge/clickstreamEvents",
        host=TENANT,
        path="/edge/clickstreamEvents",
        client_addr=ip,
        user_agent=ua,
        headers=tuple(headers),
        raw_body=body.encode() if isinstance(body, str) else body,
        sent_at=at,
    )


def consent_reference(uid: str, at: float, run: str = RUN, ip: str = IP, ua: str = UA) -> RequestSeen:
    return RequestSeen(
        uid=uid,
        run=run,
        kind=Kind.CONSENT_REFERENCE,
        target=None,
        method="POST",
        url=f"https://{TENANT}/consent/acme/consentReferences",
        host=TENANT,
        path="/consent/acme/consentReferences",
        client_addr=ip,
        user_agent=ua,
        headers=(("Origin", ORIGIN), ("Content-Type", "application/json")),
        raw_body=b'{"id":"anonymous"}',
        sent_at=at,
    )


def preflight(uid: str, at: float, requested: str = ALL_TRACKING_HEADERS, method: str = "POST") -> RequestSeen:
    return RequestSeen(
        uid=uid,
        run=RUN,
        kind=Kind.PREFLIGHT,
        target=Kind.CLICKSTREAM,
        method="OPTIONS",
        url=f"https://{TENANT}/edge/clickstreamEvents",
        host=TENANT,
        path="/edge/clickstreamEvents",
        client_addr=IP,
        user_agent=UA,
        headers=(
            ("Origin", ORIGIN),
            ("Access-Control-Request-Method", method),
            ("Access-Control-Request-Headers", requested),
        ),
        raw_body=b"",
        sent_at=at,
    )


def cors_answer(allowed: str = ALL_TRACKING_HEADERS, origin: str = ORIGIN) -> tuple[tuple[str, str], ...]:
    return (
        ("Access-Control-Allow-Origin", origin),
        ("Access-Control-Allow-Methods", "POST, OPTIONS"),
        ("Access-Control-Allow-Headers", allowed),
    )


def page(
    at: float,
    cookie: str = "",
    header: str | None = None,
    set_cookies: tuple[str, ...] = (),
    page_load: bool = True,
    response_at: float | None = None,
    run: str = RUN,
    ip: str = IP,
    ua: str = UA,
) -> StorefrontSeen:
    return StorefrontSeen(
        run=run,
        client_addr=ip,
        user_agent=ua,
        request_at=at,
        response_at=response_at if response_at is not None else at + 0.1,
        cookie=cookie,
        anonymous_consents_header=header,
        set_cookies=set_cookies,
        page_load=page_load,
    )


class Trace:
    """A Judge plus everything it said, with the plumbing the store would do (bodies, verdicts)."""

    def __init__(self, config: Config | None = None) -> None:
        self.judge = Judge(config)
        self.all = Judgement()
        self.sent: dict[str, RequestSeen] = {}

    def _keep(self, judgement: Judgement) -> Judgement:
        self.all.extend(judgement)
        return judgement

    def send(self, seen: RequestSeen) -> Judgement:
        self.sent[seen.uid] = seen
        return self._keep(self.judge.request(seen, decode_body(seen.raw_body, "", "application/json")))

    def answer(self, uid: str, at: float, status: int | None = 201, headers=(), error: str | None = None) -> Judgement:
        seen = self.sent[uid]
        answer = Answer(uid, seen.kind, seen.sent_at, at, status, tuple(headers), b"", error)
        if status is None and error is None:
            answer = Answer(uid, seen.kind, seen.sent_at, at, None, (), b"", "connection reset")
        return self._keep(self.judge.answer(answer, verdict_for(seen.kind, status)))

    def deliver(self, seen: RequestSeen, duration: float = 0.2, status: int | None = None) -> None:
        self.send(seen)
        default = {Kind.PREFLIGHT: 204, Kind.STRATEGY: 200, Kind.TAG: 200}.get(seen.kind, 201)
        headers = cors_answer() if seen.kind is Kind.PREFLIGHT else ()
        self.answer(seen.uid, seen.sent_at + duration, status or default, headers)

    def page(self, *args, **kwargs) -> Judgement:
        return self._keep(self.judge.storefront(page(*args, **kwargs)))

    def evaluate(self, now: float, final: bool = False) -> Judgement:
        return self._keep(self.judge.evaluate(now, final))

    # views on everything said so far
    def findings(self, kind: FindingKind | None = None) -> list[Finding]:
        return [f for f in self.all.findings if kind is None or f.kind is kind]

    def kinds(self) -> list[FindingKind]:
        return [f.kind for f in self.all.findings]

    def consent(self, uid: str) -> str | None:
        values = [value for key, value in self.all.consent if key == uid]
        return values[-1] if values else None

    def states(self) -> list[ConsentState]:
        return [s.state for s in self.all.signals]


def given_visitor(at: float = T - 10, config: Config | None = None) -> Trace:
    """A visitor whose consent cookie says GIVEN (on a request that is not a page load: no silence check armed)."""
    trace = Trace(config)
    trace.page(at, cookie=GIVEN, page_load=False)
    return trace


# --- the consent timeline -----------------------------------------------------------------------------------


def test_a_signal_records_time_state_source_and_detail():
    trace = Trace()
    out = trace.page(T, cookie=f"JSESSIONID=1; {GIVEN}")
    assert out.signals == [
        ConsentSignal(RUN, VISITOR, T, ConsentState.GIVEN, "cookie anonymous-consents", "PROFILE GIVEN")
    ]
    snapshot = out.visitors[(RUN, VISITOR)]
    assert snapshot.consent == "given"
    assert snapshot.consent_since == T
    assert snapshot.client_addr == IP
    assert snapshot.user_agent == UA


def test_set_cookie_signals_are_timed_at_the_response():
    trace = Trace()
    out = trace.page(
        T,
        cookie=UNDECIDED,
        set_cookies=(f"anonymous-consents={consents('GIVEN')}; Path=/",),
        page_load=False,
        response_at=T + 0.3,
    )
    assert [(s.at, s.state, s.source) for s in out.signals] == [
        (T, ConsentState.ABSENT, "cookie anonymous-consents"),
        (T + 0.3, ConsentState.GIVEN, "set-cookie anonymous-consents"),
    ]
    assert out.visitors[(RUN, VISITOR)].consent == "given"


def test_signals_are_recorded_only_on_change():
    trace = Trace()
    trace.page(T, cookie=GIVEN)
    trace.page(T + 1, cookie=GIVEN)
    trace.page(T + 2, cookie=GIVEN, set_cookies=("electronics-profile.consent.given=true",))
    trace.page(T + 3, cookie=WITHDRAWN)
    trace.page(T + 4, cookie=WITHDRAWN)
    trace.page(T + 5, cookie=GIVEN)
    assert [(s.at, s.state) for s in trace.all.signals] == [
        (T, ConsentState.GIVEN),
        (T + 3, ConsentState.WITHDRAWN),
        (T + 5, ConsentState.GIVEN),
    ]


def test_page_loads_are_counted_and_timed():
    trace = Trace()
    trace.page(T, cookie=GIVEN)
    trace.page(T + 1, cookie=GIVEN, page_load=False)  # an XHR is storefront traffic, not a page load
    out = trace.page(T + 2, cookie=GIVEN)
    snapshot = out.visitors[(RUN, VISITOR)]
    assert snapshot.page_loads == 2
    assert snapshot.last_page_at == T + 2
    assert snapshot.first_seen == T + 0.1
    assert snapshot.last_seen == T + 2.1


@pytest.mark.parametrize(
    ("cookie", "header", "set_cookies", "page_load", "expected"),
    [
        (GIVEN, None, (), True, [(ConsentState.GIVEN, "cookie anonymous-consents")]),
        (WITHDRAWN, None, (), True, [(ConsentState.WITHDRAWN, "cookie anonymous-consents")]),
        (UNDECIDED, None, (), True, [(ConsentState.ABSENT, "cookie anonymous-consents")]),
        ("anonymous-consents=%5B%5D", None, (), True, [(ConsentState.ABSENT, "cookie anonymous-consents")]),
        (
            "electronics-profile.consent.given=false",
            None,
            (),
            True,
            [(ConsentState.ABSENT, "cookie electronics-profile.consent.given")],
        ),
        (
            "electronics-profile.consent.given=true",
            None,
            (),
            True,
            [(ConsentState.GIVEN, "cookie electronics-profile.consent.given")],
        ),
        (f"{GIVEN}; {PAUSE}", None, (), True, [(ConsentState.PAUSED, "cookie profile.tracking.pause")]),
        (PAUSE, None, (), True, [(ConsentState.PAUSED, "cookie profile.tracking.pause")]),
        # A page load with no consent cookie at all is itself a signal: consent absent.
        ("", None, (), True, [(ConsentState.ABSENT, NO_COOKIE_SOURCE)]),
        ("JSESSIONID=1; cookie-notification=ACCEPTED", None, (), True, [(ConsentState.ABSENT, NO_COOKIE_SOURCE)]),
        # ... but other storefront traffic without cookies says nothing.
        ("", None, (), False, []),
        ("JSESSIONID=1", None, (), False, []),
        # A cookie that cannot be read is not the same as no cookie.
        ("anonymous-consents=garbage", None, (), True, []),
        # Spartacus: the header on an OCC call.
        ("", consents("GIVEN"), (), False, [(ConsentState.GIVEN, "header X-Anonymous-Consents")]),
        # The response can set a cookie on a cookieless page load: absent, then what it sets.
        (
            "",
            None,
            (f"anonymous-consents={consents(None)}; Path=/",),
            True,
            [(ConsentState.ABSENT, NO_COOKIE_SOURCE)],  # same state: not a change
        ),
        (
            "",
            None,
            ("electronics-profile.consent.given=true; Path=/",),
            True,
            [
                (ConsentState.ABSENT, NO_COOKIE_SOURCE),
                (ConsentState.GIVEN, "set-cookie electronics-profile.consent.given"),
            ],
        ),
        (
            GIVEN,
            None,
            ("electronics-profile.consent.given=true; Max-Age=0",),
            False,
            [
                (ConsentState.GIVEN, "cookie anonymous-consents"),
                (ConsentState.ABSENT, "set-cookie electronics-profile.consent.given"),
            ],
        ),
    ],
)
def test_storefront_signals(cookie, header, set_cookies, page_load, expected):
    trace = Trace()
    trace.page(T, cookie=cookie, header=header, set_cookies=set_cookies, page_load=page_load)
    assert [(s.state, s.source) for s in trace.all.signals] == expected


def test_spartacus_header_then_cookieless_page_loads_are_not_absent():
    trace = Trace()
    trace.page(T, header=consents("GIVEN"), page_load=False)
    trace.page(T + 1)  # Spartacus page loads carry no consent cookie: consent lives in browser storage
    trace.page(T + 2, cookie="JSESSIONID=1")
    assert [(s.state, s.source) for s in trace.all.signals] == [(ConsentState.GIVEN, "header X-Anonymous-Consents")]
    trace.send(clickstream("c1", T + 3))
    assert trace.consent("c1") == "given"


def test_a_visitor_with_consent_cookies_and_the_header_is_still_cookie_based():
    trace = Trace()
    trace.page(T, cookie=GIVEN, header=consents("GIVEN"), page_load=False)
    trace.page(T + 1)  # the cookies vanished: that is a signal for an accelerator visitor
    assert trace.states() == [ConsentState.GIVEN, ConsentState.ABSENT]


def test_the_consent_template_is_configurable():
    trace = Trace(Config(consent_template="TRACKING"))
    both = [
        {"templateCode": "PROFILE", "consentState": "GIVEN"},
        {"templateCode": "TRACKING", "consentState": "WITHDRAWN"},
    ]
    trace.page(T, cookie=f"anonymous-consents={quote(json.dumps(both), safe='')}")  # PROFILE given, TRACKING not
    trace.page(T + 1, cookie=f"anonymous-consents={consents('GIVEN', 'TRACKING')}")
    assert trace.states() == [ConsentState.WITHDRAWN, ConsentState.GIVEN]


def test_pause_wins_over_given_cookies_on_the_same_request():
    trace = Trace()
    trace.page(T, cookie=f"{GIVEN}; electronics-profile.consent.given=true; {PAUSE}", header=consents("GIVEN"))
    assert trace.states() == [ConsentState.PAUSED]


def test_pause_still_wins_when_the_response_sets_consent():
    trace = Trace()
    trace.page(T, cookie=PAUSE, set_cookies=(f"anonymous-consents={consents('GIVEN')}; Path=/",), page_load=False)
    trace.send(clickstream("c1", T + 1))
    trace.evaluate(T + 20)
    assert trace.consent("c1") == "paused"
    assert trace.kinds() == [FindingKind.CONSENT_VIOLATION]


# --- consent decisions --------------------------------------------------------------------------------------


def test_a_call_with_consent_given_is_given_at_once():
    trace = given_visitor()
    out = trace.send(clickstream("c1", T))
    assert out.consent == [("c1", "given")]
    assert out.findings == []
    assert trace.evaluate(T + 100, final=True).findings == []


@pytest.mark.parametrize("earlier", [None, "", UNDECIDED, WITHDRAWN])
def test_a_call_just_before_the_given_signal_is_not_a_violation(earlier):
    """(a) The first event leaves before the next storefront request shows the new consent cookie."""
    trace = Trace()
    if earlier is not None:
        trace.page(T - 30, cookie=earlier)
    out = trace.send(clickstream("c1", T))
    assert out.consent == [("c1", CONSENT_PENDING)]
    trace.page(T + 1, cookie=GIVEN)
    assert trace.evaluate(T + 5).consent == []
    out = trace.evaluate(T + 10.1)
    assert out.consent == [("c1", "given")]
    assert trace.kinds() == []


def test_a_given_signal_at_the_edge_of_the_grace_window_counts():
    trace = Trace()
    trace.page(T - 30, cookie=WITHDRAWN)
    trace.send(clickstream("c1", T))
    trace.page(T + 10, cookie=GIVEN, page_load=False)
    trace.evaluate(T + 10)
    assert trace.consent("c1") == "given"
    assert trace.kinds() == []


def test_a_given_signal_after_the_grace_window_is_too_late():
    trace = Trace()
    trace.page(T - 30, cookie=WITHDRAWN)
    trace.send(clickstream("c1", T))
    trace.page(T + 10.5, cookie=GIVEN, page_load=False)
    trace.evaluate(T + 11)
    assert trace.consent("c1") == "withdrawn"
    assert trace.kinds() == [FindingKind.CONSENT_VIOLATION]


def test_withdrawn_consent_is_a_violation_after_the_grace_window_and_not_before():
    """(b)"""
    trace = Trace()
    trace.page(T - 60, cookie=GIVEN, page_load=False)
    trace.page(T - 5, cookie=WITHDRAWN, page_load=False)
    assert trace.send(clickstream("c1", T)).consent == [("c1", CONSENT_PENDING)]
    early = trace.evaluate(T + 10 - 0.1)
    assert early.findings == []
    assert early.consent == []
    assert trace.consent("c1") == CONSENT_PENDING
    (snapshot,) = trace.judge.visitors()
    # T + grace (10 s), the latest the window can close: `check` reads it to say how long is left.
    assert snapshot.pending_decision == "consent of 1 call(s) awaits the grace window until 1970-01-01T00:16:50Z"
    late = trace.evaluate(T + 10 + 0.1)
    assert late.consent == [("c1", "withdrawn")]
    (finding,) = late.findings
    assert finding.kind is FindingKind.CONSENT_VIOLATION
    assert finding.severity is Severity.ERROR
    assert finding.delivery_uid == "c1"
    assert finding.visitor == VISITOR
    assert finding.run == RUN
    assert finding.at == T
    assert "clickstream event sent while consent was withdrawn" in finding.message
    assert "cookie anonymous-consents" in finding.message
    assert late.visitors[(RUN, VISITOR)].pending_decision is None
    # Decided once: later evaluations say nothing more.
    assert not trace.evaluate(T + 60)
    assert not trace.evaluate(T + 60, final=True).findings


def test_the_grace_window_is_configurable():
    trace = Trace(Config(grace_seconds=2.0))
    trace.page(T - 5, cookie=WITHDRAWN, page_load=False)
    trace.send(clickstream("c1", T))
    assert trace.evaluate(T + 1.9).findings == []
    assert [f.kind for f in trace.evaluate(T + 2.1).findings] == [FindingKind.CONSENT_VIOLATION]


def test_final_evaluation_decides_pending_calls_at_once():
    trace = Trace()
    trace.page(T - 5, cookie=WITHDRAWN, page_load=False)
    trace.send(clickstream("c1", T))
    out = trace.evaluate(T + 1, final=True)
    assert out.consent == [("c1", "withdrawn")]
    assert [f.kind for f in out.findings] == [FindingKind.CONSENT_VIOLATION]


def test_final_evaluation_still_honours_a_given_signal_already_seen():
    trace = Trace()
    trace.page(T - 5, cookie=WITHDRAWN, page_load=False)
    trace.send(clickstream("c1", T))
    trace.page(T + 1, cookie=GIVEN, page_load=False)
    out = trace.evaluate(T + 1.5, final=True)
    assert out.consent == [("c1", "given")]
    assert out.findings == []


@pytest.mark.parametrize(
    ("setup", "consent", "source"),
    [
        ({"cookie": WITHDRAWN}, "withdrawn", "cookie anonymous-consents"),
        ({"cookie": UNDECIDED}, "absent", "cookie anonymous-consents"),
        ({"cookie": "anonymous-consents=%5B%5D"}, "absent", "cookie anonymous-consents"),
        ({"cookie": "electronics-profile.consent.given=false"}, "absent", "cookie electronics-profile.consent.given"),
        ({"cookie": f"{GIVEN}; {PAUSE}"}, "paused", "cookie profile.tracking.pause"),
        ({"cookie": ""}, "absent", NO_COOKIE_SOURCE),  # (k) a page load without cookies
        (
            {"cookie": "", "set_cookies": ("profile.tracking.pause=1; Path=/",), "page_load": False},
            "paused",
            "set-cookie",
        ),
    ],
)
def test_tracking_without_consent_is_a_violation(setup, consent, source):
    """(k) and the table of states that are not 'given'."""
    trace = Trace()
    trace.page(T - 5, **setup)
    trace.send(clickstream("c1", T))
    trace.evaluate(T + 10.1)
    assert trace.consent("c1") == consent
    (finding,) = trace.findings()
    assert finding.kind is FindingKind.CONSENT_VIOLATION
    assert f"while consent was {said(consent)} ({source}" in finding.message


def test_a_consent_reference_call_without_consent_is_a_violation():
    trace = Trace()
    trace.page(T - 5, cookie=WITHDRAWN, page_load=False)
    trace.send(consent_reference("r1", T))
    trace.evaluate(T + 11)
    (finding,) = trace.findings()
    assert finding.kind is FindingKind.CONSENT_VIOLATION
    assert finding.message.startswith("consent-reference call sent while consent was withdrawn")


@pytest.mark.parametrize("kind", [Kind.PREFLIGHT, Kind.TAG])
def test_other_calls_are_not_judged_on_consent(kind):
    trace = Trace()
    trace.page(T - 5, cookie=WITHDRAWN, page_load=False)
    out = trace.send(replace(preflight("p1", T), kind=kind, target=None))
    assert out.consent == []
    assert trace.evaluate(T + 100, final=True).findings == []


def test_a_withdrawal_after_the_call_does_not_make_it_a_violation():
    trace = given_visitor()
    trace.send(clickstream("c1", T))
    trace.page(T + 1, cookie=WITHDRAWN)
    trace.evaluate(T + 100, final=True)
    assert trace.consent("c1") == "given"
    assert trace.kinds() == []


def test_consent_never_seen_is_unknown_and_reported_once():
    """(c)"""
    trace = Trace()
    trace.send(clickstream("c1", T))
    trace.send(clickstream("c2", T + 1, body='{"productSku":"2"}'))
    trace.evaluate(T + 30)
    assert trace.consent("c1") == CONSENT_UNKNOWN
    assert trace.consent("c2") == CONSENT_UNKNOWN
    (finding,) = trace.findings()
    assert finding.kind is FindingKind.CONSENT_UNKNOWN
    assert finding.severity is Severity.WARNING
    assert finding.delivery_uid == "c1"
    assert "no consent signal was ever seen" in finding.message
    # A later call, decided separately, is unknown too and not reported again.
    trace.send(clickstream("c3", T + 40, body='{"productSku":"3"}'))
    trace.evaluate(T + 60, final=True)
    assert trace.consent("c3") == CONSENT_UNKNOWN
    assert trace.kinds() == [FindingKind.CONSENT_UNKNOWN]
    (snapshot,) = trace.judge.visitors()
    assert snapshot.consent == CONSENT_UNKNOWN
    assert snapshot.consent_since is None


def test_a_non_given_signal_within_the_grace_window_decides_an_otherwise_unknown_call():
    trace = Trace()
    trace.send(clickstream("c1", T))
    trace.page(T + 2)  # page load without consent cookies
    trace.evaluate(T + 11)
    assert trace.consent("c1") == "absent"
    assert trace.kinds() == [FindingKind.CONSENT_VIOLATION]


def test_the_consent_reference_call_is_not_a_consent_signal():
    trace = Trace()
    trace.deliver(consent_reference("r1", T))
    trace.send(clickstream("c1", T + 1))
    trace.evaluate(T + 20)
    assert trace.consent("r1") == CONSENT_UNKNOWN
    assert trace.consent("c1") == CONSENT_UNKNOWN
    assert trace.all.signals == []
    assert trace.kinds() == [FindingKind.CONSENT_UNKNOWN]


def test_runs_are_kept_apart():
    """(l) The same browser in two runs is two visitors."""
    trace = Trace()
    trace.page(T, cookie=GIVEN, page_load=False, run="A")
    assert trace.send(clickstream("a1", T + 1, run="A")).consent == [("a1", "given")]
    assert trace.send(clickstream("b1", T + 1, run="B")).consent == [("b1", CONSENT_PENDING)]
    trace.page(T + 2, cookie=WITHDRAWN, page_load=False, run="A")
    trace.evaluate(T + 20)
    assert trace.consent("b1") == CONSENT_UNKNOWN
    assert [(f.kind, f.run) for f in trace.findings()] == [(FindingKind.CONSENT_UNKNOWN, "B")]
    assert {(s.run, s.state) for s in trace.all.signals} == {("A", ConsentState.GIVEN), ("A", ConsentState.WITHDRAWN)}
    assert {(s.run, s.consent) for s in trace.judge.visitors()} == {("A", "withdrawn"), ("B", CONSENT_UNKNOWN)}


def test_runs_are_kept_apart_for_violations():
    trace = Trace()
    trace.page(T, cookie=WITHDRAWN, page_load=False, run="A")
    trace.page(T, cookie=GIVEN, page_load=False, run="B")
    trace.send(clickstream("a1", T + 1, run="A"))
    trace.send(clickstream("b1", T + 1, run="B"))
    trace.evaluate(T + 20)
    assert trace.consent("a1") == "withdrawn"
    assert trace.consent("b1") == "given"
    assert [(f.kind, f.run) for f in trace.findings()] == [(FindingKind.CONSENT_VIOLATION, "A")]


def test_visitors_are_one_browser_each():
    trace = Trace()
    trace.page(T, cookie=GIVEN, page_load=False)
    trace.send(clickstream("same", T + 1))
    trace.send(clickstream("other-ua", T + 1, ua="Mozilla/5.0 Firefox/127.0"))
    trace.send(clickstream("other-ip", T + 1, ip="10.0.0.8"))
    trace.send(clickstream("mapped", T + 1, ip=f"::ffff:{IP}", body='{"productSku":"9"}'))
    assert trace.consent("same") == "given"
    assert trace.consent("mapped") == "given"
    assert trace.consent("other-ua") == CONSENT_PENDING
    assert trace.consent("other-ip") == CONSENT_PENDING


def test_consent_unknown_stays_once_per_visitor_and_run_after_a_long_pause():
    trace = Trace()
    trace.send(clickstream("c1", T))
    trace.evaluate(T + 20)
    trace.evaluate(T + 2000)  # idle for longer than session_seconds
    trace.send(clickstream("c2", T + 2001, body='{"productSku":"2"}'))
    trace.evaluate(T + 2020)
    assert trace.kinds() == [FindingKind.CONSENT_UNKNOWN]


def test_a_withdrawal_is_remembered_after_a_long_pause():
    trace = Trace()
    trace.page(T, cookie=WITHDRAWN, page_load=False)
    trace.evaluate(T + 2000)
    trace.send(clickstream("c1", T + 2001))
    trace.evaluate(T + 2020)
    assert trace.kinds() == [FindingKind.CONSENT_VIOLATION]


# --- event checks -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "body", "reference", "expected"),
    [
        ("context/commerce/ProductView", PRODUCT, "cr-1", []),
        ("context/commerce/carouselViewed", '{"carouselId":"c","strategyId":"s","productSkus":["1"]}', "cr-1", []),
        ("ProductView", PRODUCT, "cr-1", []),  # without the prefix the name is read as sent
        (" context/commerce/ProductView ", PRODUCT, "cr-1", []),
        # (j) missing consent-reference
        ("context/commerce/ProductView", PRODUCT, None, [FindingKind.MISSING_CONSENT_REFERENCE]),
        ("context/commerce/ProductView", PRODUCT, "", [FindingKind.MISSING_CONSENT_REFERENCE]),
        # unknown schema: missing and unknown
        (None, PRODUCT, "cr-1", [FindingKind.UNKNOWN_SCHEMA]),
        ("", PRODUCT, "cr-1", [FindingKind.UNKNOWN_SCHEMA]),
        ("context/commerce/PageView", PRODUCT, "cr-1", [FindingKind.UNKNOWN_SCHEMA]),
        ("context/commerce/CarouselViewed", PRODUCT, "cr-1", [FindingKind.UNKNOWN_SCHEMA]),
        # invalid payload
        ("context/commerce/ProductView", '{"productName":"Camera"}', "cr-1", [FindingKind.INVALID_PAYLOAD]),
        ("context/commerce/ProductView", '{"productSku":null}', "cr-1", [FindingKind.INVALID_PAYLOAD]),
        ("context/commerce/ProductView", '"hello"', "cr-1", [FindingKind.INVALID_PAYLOAD]),
        ("context/commerce/ProductView", "[]", "cr-1", [FindingKind.INVALID_PAYLOAD]),
        ("context/commerce/ProductView", "{not json", "cr-1", [FindingKind.INVALID_PAYLOAD]),
        ("context/commerce/ProductView", b"", "cr-1", [FindingKind.INVALID_PAYLOAD]),
        ("context/commerce/ProductView", b"\xff\xfe\x00", "cr-1", [FindingKind.INVALID_PAYLOAD]),
        # An unknown schema has no required fields, but its body is still checked.
        ("context/commerce/PageView", '{"a":null}', "cr-1", [FindingKind.UNKNOWN_SCHEMA, FindingKind.INVALID_PAYLOAD]),
        (
            None,
            '{"a":null}',
            None,
            [FindingKind.MISSING_CONSENT_REFERENCE, FindingKind.UNKNOWN_SCHEMA, FindingKind.INVALID_PAYLOAD],
        ),
    ],
)
def test_event_checks(schema, body, reference, expected):
    trace = given_visitor()
    trace.send(clickstream("c1", T, body=body, schema=schema, reference=reference))
    assert trace.kinds() == expected
    assert all(f.delivery_uid == "c1" and f.at == T for f in trace.findings())


def test_event_check_messages():
    trace = given_visitor()
    trace.send(clickstream("c1", T, body='{"productName":null}', schema="context/commerce/ProductView", reference=None))
    trace.send(clickstream("c2", T + 5, schema="context/commerce/PageView"))
    messages = {(f.delivery_uid, f.kind): f.message for f in trace.findings()}
    assert messages[("c1", FindingKind.MISSING_CONSENT_REFERENCE)] == (
        "clickstream event sent without a consent-reference header"
    )
    assert messages[("c1", FindingKind.INVALID_PAYLOAD)] == (
        "required field(s) missing: productSku; null value(s) at productName"
    )
    assert messages[("c2", FindingKind.UNKNOWN_SCHEMA)] == "hybris-schema 'PageView' is not a known schema"


def test_configured_schemas_are_used():
    schemas = MappingProxyType({**Config().schemas, "PageView": ("pageUrl",)})
    trace = given_visitor(config=Config(schemas=schemas))
    trace.send(clickstream("c1", T, schema="context/commerce/PageView", body='{"pageUrl":"/"}'))
    trace.send(clickstream("c2", T + 5, schema="context/commerce/PageView", body='{"title":"x"}'))
    assert [(f.delivery_uid, f.kind) for f in trace.findings()] == [("c2", FindingKind.INVALID_PAYLOAD)]


@pytest.mark.parametrize(
    ("first", "second", "gap", "duplicate"),
    [
        # (d) same schema and body, just inside and just outside the window
        (("ProductView", PRODUCT), ("ProductView", PRODUCT), 0.0, True),
        (("ProductView", PRODUCT), ("ProductView", PRODUCT), 1.99, True),
        (("ProductView", PRODUCT), ("ProductView", PRODUCT), 2.0, True),
        (("ProductView", PRODUCT), ("ProductView", PRODUCT), 2.01, False),
        (("ProductView", PRODUCT), ("ProductView", PRODUCT), 30.0, False),
        # different bodies, or a different schema, are different events
        (("ProductView", PRODUCT), ("ProductView", '{"productSku":"779864","productName":"Lens"}'), 0.5, False),
        (("ProductView", PRODUCT), ("ProductView", PRODUCT.replace(",", ", ")), 0.5, False),
        (("ProductView", PRODUCT), ("CategoryView", PRODUCT), 0.5, False),
        (("ProductView", PRODUCT), (None, PRODUCT), 0.5, False),
        ((None, PRODUCT), (None, PRODUCT), 0.5, True),
    ],
)
def test_duplicates(first, second, gap, duplicate):
    trace = given_visitor()

    def schema(name):
        return None if name is None else f"context/commerce/{name}"

    trace.send(clickstream("c1", T, schema=schema(first[0]), body=first[1]))
    trace.send(clickstream("c2", T + gap, schema=schema(second[0]), body=second[1]))
    found = trace.findings(FindingKind.DUPLICATE_EVENT)
    assert [f.delivery_uid for f in found] == (["c2"] if duplicate else [])
    if duplicate:
        assert found[0].severity is Severity.WARNING
        assert f"sent {gap:.2f} s earlier (within 2 s)" in found[0].message


def test_duplicates_are_per_visitor_and_run():
    trace = Trace()
    for run, ua in (("A", UA), ("A", "Other/1.0"), ("B", UA)):
        trace.page(T - 5, cookie=GIVEN, page_load=False, run=run, ua=ua)
    trace.send(clickstream("c1", T, run="A"))
    trace.send(clickstream("c2", T + 0.1, run="A", ua="Other/1.0"))
    trace.send(clickstream("c3", T + 0.2, run="B"))
    assert trace.findings(FindingKind.DUPLICATE_EVENT) == []


def test_a_burst_of_duplicates_is_reported_each_time():
    trace = given_visitor()
    for index in range(3):
        trace.send(clickstream(f"c{index}", T + 1.5 * index))
    assert [f.delivery_uid for f in trace.findings(FindingKind.DUPLICATE_EVENT)] == ["c1", "c2"]


def test_the_duplicate_window_is_configurable():
    trace = given_visitor(config=Config(duplicate_seconds=5.0))
    trace.send(clickstream("c1", T))
    trace.send(clickstream("c2", T + 4.5))
    assert [f.delivery_uid for f in trace.findings(FindingKind.DUPLICATE_EVENT)] == ["c2"]


# --- answers ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "status", "response", "problem"),
    [
        (ALL_TRACKING_HEADERS, 204, cors_answer(), None),
        # (e) content-type allowed, consent-reference not
        ("content-type,consent-reference", 204, cors_answer("content-type"), "consent-reference"),
        (ALL_TRACKING_HEADERS, 204, cors_answer(origin="https://other.example"), "Access-Control-Allow-Origin"),
        (ALL_TRACKING_HEADERS, 403, (), "answered 403"),
        (ALL_TRACKING_HEADERS, 204, (("Access-Control-Allow-Headers", "*"),), "no Access-Control-Allow-Origin"),
    ],
)
def test_cors_rejected(requested, status, response, problem):
    trace = given_visitor()
    trace.send(preflight("p1", T, requested))
    out = trace.answer("p1", T + 0.1, status, response)
    if problem is None:
        assert out.findings == []
        return
    (finding,) = out.findings
    assert finding.kind is FindingKind.CORS_REJECTED
    assert finding.delivery_uid == "p1"
    assert finding.at == T + 0.1
    assert finding.message.startswith("the browser will not send the tracking call: ")
    assert problem in finding.message


def test_a_preflight_without_an_answer_is_not_a_cors_finding():
    trace = given_visitor()
    trace.send(preflight("p1", T))
    assert trace.answer("p1", T + 5, None, error="connection reset").findings == []


def test_an_answer_for_an_unknown_call_says_nothing():
    judge = Judge()
    out = judge.answer(Answer("nope", Kind.CLICKSTREAM, T, T + 1, 500), Verdict.REJECTED)
    assert out == Judgement()
    assert not out


@pytest.mark.parametrize(
    ("status", "error", "fragment"),
    [
        (500, None, "consent-reference call answered 500"),
        (200, None, "consent-reference call answered 200"),  # 201 is expected
        (403, None, "consent-reference call answered 403"),
        (None, "connection reset", "consent-reference call failed: connection reset"),
        (None, "TLS handshake failed", "consent-reference call failed: TLS handshake failed"),
    ],
)
def test_consent_reference_failed(status, error, fragment):
    """(h) rejected and failed verdicts."""
    trace = given_visitor()
    trace.send(consent_reference("r1", T))
    (finding,) = trace.answer("r1", T + 0.3, status, error=error).findings
    assert finding.kind is FindingKind.CONSENT_REFERENCE_FAILED
    assert finding.severity is Severity.ERROR
    assert finding.delivery_uid == "r1"
    assert finding.message.startswith(fragment)


def test_a_delivered_consent_reference_is_fine():
    trace = given_visitor()
    trace.deliver(consent_reference("r1", T))
    assert trace.kinds() == []


@pytest.mark.parametrize(
    ("gap", "repeated"),
    [(0.5, True), (29 * 60, True), (30 * 60, True), (31 * 60, False), (3600, False)],
)
def test_repeated_consent_reference(gap, repeated):
    """(g)"""
    trace = given_visitor()
    trace.deliver(consent_reference("r1", T))
    trace.page(T + gap - 1, cookie=GIVEN, page_load=False)
    trace.deliver(consent_reference("r2", T + gap))
    trace.evaluate(T + gap + 6)  # judged once the page that asked is known (a reconcile window)
    found = trace.findings(FindingKind.REPEATED_CONSENT_REFERENCE)
    assert [f.delivery_uid for f in found] == (["r2"] if repeated else [])
    if repeated:
        assert found[0].severity is Severity.WARNING
        assert "2 consent references within 30 min" in found[0].message


def test_three_consent_references_are_counted():
    trace = given_visitor()
    for index in range(3):
        trace.deliver(consent_reference(f"r{index}", T + 60 * index))
    trace.evaluate(T + 200)
    found = trace.findings(FindingKind.REPEATED_CONSENT_REFERENCE)
    assert [f.delivery_uid for f in found] == ["r1", "r2"]
    assert "3 consent references" in found[1].message


def test_failed_consent_references_do_not_count_as_obtained():
    trace = given_visitor()
    trace.send(consent_reference("r1", T))
    trace.answer("r1", T + 0.2, 500)
    trace.deliver(consent_reference("r2", T + 5))
    assert trace.kinds() == [FindingKind.CONSENT_REFERENCE_FAILED]


def test_the_session_window_is_configurable():
    trace = given_visitor(config=Config(session_seconds=60.0))
    trace.deliver(consent_reference("r1", T))
    trace.deliver(consent_reference("r2", T + 61))
    assert trace.kinds() == []


@pytest.mark.parametrize(
    ("kind", "duration", "status", "slow"),
    [
        (Kind.CLICKSTREAM, 2.5, 201, True),
        (Kind.CLICKSTREAM, 2.01, 201, True),
        (Kind.CLICKSTREAM, 2.0, 201, False),
        (Kind.CLICKSTREAM, 1.9, 201, False),
        (Kind.CLICKSTREAM, 3.0, 500, True),  # slow and rejected: both are worth knowing
        (Kind.CLICKSTREAM, 30.0, None, False),  # a timeout is a failure, not a slow answer
        (Kind.PREFLIGHT, 2.5, 204, True),
        (Kind.CONSENT_REFERENCE, 2.5, 201, True),
    ],
)
def test_slow_delivery(kind, duration, status, slow):
    """(i)"""
    trace = given_visitor()
    seen = {
        Kind.CLICKSTREAM: clickstream("x", T),
        Kind.PREFLIGHT: preflight("x", T),
        Kind.CONSENT_REFERENCE: consent_reference("x", T),
    }[kind]
    trace.send(seen)
    out = trace.answer("x", T + duration, status, cors_answer() if kind is Kind.PREFLIGHT else ())
    found = [f for f in out.findings if f.kind is FindingKind.SLOW_DELIVERY]
    assert len(found) == int(slow)
    if slow:
        assert found[0].delivery_uid == "x"
        assert found[0].at == T + duration
        assert f"answered in {duration:.2f} s, slower than 2 s" == found[0].message


def test_the_slow_threshold_is_configurable():
    trace = given_visitor(config=Config(slow_delivery_seconds=0.5))
    trace.send(clickstream("c1", T))
    assert [f.kind for f in trace.answer("c1", T + 0.6).findings] == [FindingKind.SLOW_DELIVERY]


# --- no events after consent --------------------------------------------------------------------------------


def test_no_events_after_consent():
    """(f) Consent given, a page load, and no clickstream by the deadline."""
    trace = Trace()
    trace.page(T, cookie=GIVEN)
    (snapshot,) = trace.judge.visitors()
    until = "1970-01-01T00:17:10Z"  # T + 30 s
    assert snapshot.pending_decision == f"waiting for events after consent until {until} (windows.silence_seconds)"
    assert trace.evaluate(T + 29.9).findings == []
    out = trace.evaluate(T + 30)
    (finding,) = out.findings
    assert finding.kind is FindingKind.NO_EVENTS_AFTER_CONSENT
    assert finding.severity is Severity.ERROR
    assert finding.delivery_uid is None
    assert finding.at == T
    assert "1 storefront page(s) loaded" in finding.message
    assert "within 30 s" in finding.message
    assert out.visitors[(RUN, VISITOR)].pending_decision is None
    # Decided once per grant: more page loads do not repeat it.
    trace.page(T + 40, cookie=GIVEN)
    trace.evaluate(T + 200, final=True)
    assert trace.kinds() == [FindingKind.NO_EVENTS_AFTER_CONSENT]


def test_events_after_consent_clear_the_silence_check():
    trace = Trace()
    trace.page(T, cookie=GIVEN)
    trace.deliver(clickstream("c1", T + 1))
    trace.evaluate(T + 31)
    trace.evaluate(T + 100, final=True)
    assert trace.kinds() == []


def test_an_event_inside_the_grace_window_before_the_consent_cookie_counts_for_silence():
    """The proxy sees consent on the next page; the event the tag sent just before it is an event after consent."""
    trace = Trace()
    trace.page(T - 10, cookie="")
    trace.deliver(clickstream("c1", T - 1))
    trace.page(T, cookie=GIVEN)
    trace.evaluate(T + 100, final=True)
    assert trace.kinds() == []


def test_an_event_long_before_consent_does_not_count_for_silence():
    trace = Trace()
    trace.deliver(clickstream("c1", T - 60))
    trace.page(T, cookie=GIVEN)
    trace.evaluate(T + 100, final=True)
    assert FindingKind.NO_EVENTS_AFTER_CONSENT in trace.kinds()


def test_consent_given_by_set_cookie_then_a_page_load():
    trace = Trace()
    trace.page(T - 10, cookie="")
    trace.page(T, cookie=UNDECIDED, set_cookies=(f"anonymous-consents={consents('GIVEN')}",), page_load=False)
    trace.page(T + 2, cookie=GIVEN)
    trace.evaluate(T + 31.9)
    assert trace.kinds() == []
    assert [f.kind for f in trace.evaluate(T + 32).findings] == [FindingKind.NO_EVENTS_AFTER_CONSENT]


def test_a_page_load_before_consent_does_not_arm_the_silence_check():
    trace = Trace()
    trace.page(T - 10)  # page load, no consent
    trace.page(T, cookie="", set_cookies=(f"anonymous-consents={consents('GIVEN')}",), page_load=False)
    trace.evaluate(T + 100)
    trace.evaluate(T + 200, final=True)
    assert trace.kinds() == []


def test_the_page_load_whose_response_grants_consent_does_not_arm_it():
    trace = Trace()
    trace.page(T, cookie=UNDECIDED, set_cookies=(f"anonymous-consents={consents('GIVEN')}",), response_at=T + 0.2)
    trace.evaluate(T + 200, final=True)
    assert trace.kinds() == []


def test_consent_without_page_loads_is_not_a_silent_failure():
    trace = Trace()
    trace.page(T, cookie=GIVEN, page_load=False)
    trace.evaluate(T + 200, final=True)
    assert trace.kinds() == []


def test_final_evaluation_decides_the_silence_check_early():
    trace = Trace()
    trace.page(T, cookie=GIVEN)
    assert [f.kind for f in trace.evaluate(T + 1, final=True).findings] == [FindingKind.NO_EVENTS_AFTER_CONSENT]


def test_a_withdrawal_before_the_deadline_cancels_the_silence_check():
    trace = Trace()
    trace.page(T, cookie=GIVEN)
    trace.page(T + 5, cookie=WITHDRAWN)
    trace.evaluate(T + 100, final=True)
    assert trace.kinds() == []


def test_consent_given_again_is_checked_again():
    trace = Trace()
    trace.page(T, cookie=GIVEN)
    trace.evaluate(T + 30)
    trace.page(T + 40, cookie=WITHDRAWN)
    trace.page(T + 50, cookie=GIVEN)
    trace.evaluate(T + 80)
    assert [f.at for f in trace.findings(FindingKind.NO_EVENTS_AFTER_CONSENT)] == [T, T + 50]


def test_the_silence_window_is_configurable():
    trace = Trace(Config(silence_seconds=5.0))
    trace.page(T, cookie=GIVEN)
    assert trace.evaluate(T + 4.9).findings == []
    assert [f.kind for f in trace.evaluate(T + 5).findings] == [FindingKind.NO_EVENTS_AFTER_CONSENT]


def test_an_event_after_the_silence_deadline_does_not_hide_the_silence():
    trace = Trace()
    trace.page(T, cookie=GIVEN)
    trace.deliver(clickstream("c1", T + 100))
    trace.evaluate(T + 200, final=True)
    assert FindingKind.NO_EVENTS_AFTER_CONSENT in trace.kinds()


# --- severities and the whole picture -----------------------------------------------------------------------


def test_severities_come_from_the_config():
    """(n)"""
    severity = MappingProxyType({**DEFAULT_SEVERITY, FindingKind.DUPLICATE_EVENT: Severity.ERROR})
    trace = given_visitor(config=Config(severity=severity))
    trace.send(clickstream("c1", T))
    trace.send(clickstream("c2", T + 1))
    trace.send(clickstream("c3", T + 10, reference=None))
    assert [(f.kind, f.severity) for f in trace.findings()] == [
        (FindingKind.DUPLICATE_EVENT, Severity.ERROR),
        (FindingKind.MISSING_CONSENT_REFERENCE, Severity.WARNING),
    ]


def test_default_severities():
    assert DEFAULT_SEVERITY[FindingKind.CONSENT_VIOLATION] is Severity.ERROR
    assert DEFAULT_SEVERITY[FindingKind.CONSENT_UNKNOWN] is Severity.WARNING
    assert DEFAULT_SEVERITY[FindingKind.DUPLICATE_EVENT] is Severity.WARNING
    assert set(DEFAULT_SEVERITY) == set(FindingKind)


def test_a_realistic_happy_path_has_no_findings():
    """(o) An accelerator visitor: lands, grants consent, browses; the tag does everything right."""
    trace = Trace()
    # Landing page: no cookies yet; the server sets an undecided consent list.
    trace.page(T, set_cookies=(f"anonymous-consents={consents(None)}; Path=/; Secure", "JSESSIONID=x; Path=/"))
    trace.deliver(replace(preflight("t1", T + 0.5), kind=Kind.TAG, target=None, method="GET"), status=200)
    # The shopper accepts the consent banner: an XHR whose answer sets the new cookies.
    trace.page(
        T + 5,
        cookie=f"JSESSIONID=x; {UNDECIDED}",
        set_cookies=(f"anonymous-consents={consents('GIVEN')}; Path=/", "electronics-profile.consent.given=true"),
        page_load=False,
    )
    # The tag obtains a reference (preflight first), then sends the events of that page.
    trace.deliver(preflight("p1", T + 5.2, "content-type"))
    trace.deliver(consent_reference("r1", T + 5.3))
    trace.deliver(preflight("p2", T + 5.6))
    trace.deliver(clickstream("c1", T + 5.7, schema="context/commerce/CategoryView", body='{"productCategory":"576"}'))
    # Next pages carry the consent cookies; each sends its events.
    cookie = f"JSESSIONID=x; {GIVEN}; electronics-profile.consent.given=true"
    trace.page(T + 12, cookie=cookie)
    trace.deliver(clickstream("c2", T + 13))
    trace.deliver(
        clickstream(
            "c3",
            T + 13.5,
            schema="context/commerce/carouselViewed",
            body='{"carouselId":"HomepageE2EMerchandisingCarousel","carouselName":"Homepage E2E Merchandising '
            'Carousel","strategyId":"00000000-0000-0000-0000-000000000000","mixCardId":"cypress-test-mixcard",'
            '"productSkus":["779864","832382","779866"]}',
        )
    )
    trace.page(T + 20, cookie=cookie)
    trace.deliver(
        clickstream("c4", T + 21, schema="context/commerce/AddedToCart", body='{"productSku":"1","productQty":1}')
    )
    trace.deliver(clickstream("c5", T + 21.5, schema="context/commerce/CartSnapshot", body='{"cart":{"entries":[]}}'))
    trace.page(T + 25, cookie=cookie, page_load=False)
    trace.deliver(clickstream("c6", T + 30))  # the same product viewed again, later
    for now in (T + 11, T + 40, T + 60):
        trace.evaluate(now)
    trace.evaluate(T + 3000, final=True)
    assert trace.findings() == []
    assert {uid: trace.consent(uid) for uid in ("r1", "c1", "c2", "c3", "c4", "c5", "c6")} == dict.fromkeys(
        ("r1", "c1", "c2", "c3", "c4", "c5", "c6"), "given"
    )
    assert trace.states() == [ConsentState.ABSENT, ConsentState.GIVEN]


def test_the_happy_path_with_the_first_event_ahead_of_the_cookie():
    """(a) in a full flow: the tag fires right after the banner click, before the proxy sees the cookie."""
    trace = Trace()
    trace.page(T)
    trace.deliver(consent_reference("r1", T + 3))
    trace.deliver(clickstream("c1", T + 3.5))
    trace.page(T + 4, cookie=GIVEN)
    trace.deliver(clickstream("c2", T + 5, body='{"productSku":"2"}'))
    trace.evaluate(T + 14)
    trace.evaluate(T + 100, final=True)
    assert trace.findings() == []
    assert trace.consent("r1") == "given"
    assert trace.consent("c1") == "given"


def test_an_evaluation_with_nothing_waiting_says_nothing():
    trace = given_visitor()
    trace.send(clickstream("c1", T))
    assert not trace.evaluate(T + 5)
    assert not Judge().evaluate(T, final=True)


def test_the_mirror_cookie_after_a_withdrawal_does_not_flip_the_state_to_absent():
    trace = Trace()
    trace.page(T - 10, cookie=GIVEN)
    trace.page(T, cookie=f"anonymous-consents={consents('WITHDRAWN')}", page_load=False)
    trace.page(
        T + 0.1,
        cookie=f"anonymous-consents={consents('WITHDRAWN')}",
        set_cookies=("electronics-profile.consent.given=false; Path=/",),
        page_load=False,
        response_at=T + 0.2,
    )
    assert trace.states() == [ConsentState.GIVEN, ConsentState.WITHDRAWN]
