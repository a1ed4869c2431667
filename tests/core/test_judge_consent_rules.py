"""Issue 21's consent rules: consent given later never excuses a call made before it; every call labelled with what
the evidence says at that moment ("not given" apart from "withdrawn"); signed-in shoppers judged by their account's
consent as the Commerce API answers it; a second consent reference repeated only if the tag could have known the
first."""

import gzip
import json
from dataclasses import replace

from clickwatch.core.consent import ConsentState, read_account, signed_in
from clickwatch.core.findings import FindingKind, Severity
from clickwatch.core.model import AccountAnswer, Answer, Kind, Verdict
from clickwatch.core.storefront import PageFolding, read_exchange, reads_body
from tests.core.test_judge import GIVEN, Trace, clickstream, consent_reference, consents, page
from tests.core.test_judge_browser import browser, consent_kinds, granted, occ, strategy

T = 7000.0
TEMPLATES = "/occ/v2/electronics/users/current/consenttemplates"


def templates(state: str | None, given: str = "2026-12-08T03:00:00+0000", withdrawn: str | None = None) -> bytes:
    template: dict[str, object] = {"id": "PROFILE", "name": "Personalised shopping", "version": 1}
    if state is not None:
        current: dict[str, object] = {"code": "000123", "consentGivenDate": given}
        if withdrawn is not None:
            current["consentWithdrawnDate"] = withdrawn
        template["currentConsent"] = current
    other = {"id": "MARKETING_NEWSLETTER", "version": 0}
    return json.dumps({"consentTemplates": [other, template]}).encode()


def account(trace: Trace, at: float, body: bytes, path: str = TEMPLATES, method: str = "GET", status: int = 200):
    """A signed-in shopper's Commerce API call whose answer tells the account's consent."""
    seen = replace(
        page(at, header=consents("GIVEN"), page_load=False),
        logged_in=True,
        account=AccountAnswer(method, path, status, "", body, True),
    )
    return trace._keep(trace.judge.storefront(seen))


def iso(at: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S+0000")


# --- consent given later never excuses a call made before it ----------------------------------------------------


def test_tracking_before_consent_accepted_two_seconds_later_is_a_violation():
    """The issue's case: reference and events before "Allow all", the echo of the acceptance within the grace window."""
    trace = Trace()
    browser(trace, T - 10, granted(False), first=True)  # Spartacus: a shopper who has not decided
    trace.deliver(consent_reference("r1", T))
    trace.deliver(clickstream("c1", T + 0.1))
    browser(trace, T + 2, granted(True))  # accepted 2 s later ...
    occ(trace, T + 2.5, "GIVEN")  # ... and the next Commerce API call echoes it, well inside the grace window
    trace.evaluate(T + 30)
    assert (trace.consent("r1"), trace.consent("c1")) == ("absent", "absent")
    violations = trace.findings(FindingKind.CONSENT_VIOLATION)
    assert [f.delivery_uid for f in violations] == ["r1", "c1"]
    never = "while consent was not given (data layer: ConsentChanged granted=false, never given)"
    assert never in violations[1].message


def test_a_consent_given_more_than_the_tolerance_after_the_call_does_not_clear_it():
    trace = Trace()
    browser(trace, T - 10, granted(False), first=True)
    trace.send(clickstream("c1", T))
    browser(trace, T + 1.2, granted(True))
    trace.page(T + 1.3, cookie=GIVEN, page_load=False)
    trace.evaluate(T + 30)
    assert trace.consent("c1") == "absent"
    assert FindingKind.CONSENT_VIOLATION in trace.kinds()


def test_a_network_echo_within_the_tolerance_still_clears_the_call():
    trace = Trace()
    browser(trace, T - 10, granted(False), first=True)
    trace.send(clickstream("c1", T))
    trace.page(T + 0.8, cookie=GIVEN, page_load=False)
    trace.evaluate(T + 30)
    assert trace.consent("c1") == "given"
    assert consent_kinds(trace) == []


def test_without_the_data_layer_a_late_echo_within_grace_still_clears_the_call():
    trace = Trace()
    trace.page(T - 5, cookie="", page_load=True)
    trace.send(clickstream("c1", T))
    trace.page(T + 4, cookie=GIVEN, page_load=False)  # the accelerator's late cookie echo
    trace.evaluate(T + 30)
    assert trace.consent("c1") == "given"
    assert trace.kinds() == []


# --- labels: what the evidence says at that moment ----------------------------------------------------------------


def test_a_strategy_call_before_consent_is_labelled_not_given_without_a_finding():
    trace = Trace()
    browser(trace, T - 10, granted(False), first=True)
    trace.deliver(strategy("s1", T, None))
    browser(trace, T + 3, granted(True))
    occ(trace, T + 3.5, "GIVEN")
    trace.deliver(strategy("s2", T + 5, "cr-1"))
    trace.evaluate(T + 30)
    assert (trace.consent("s1"), trace.consent("s2")) == ("absent", "given")
    assert trace.kinds() == []


def test_never_decided_is_not_given_and_a_false_after_true_is_withdrawn():
    trace = Trace()
    browser(trace, T - 10, granted(False), first=True)
    trace.send(clickstream("c1", T))
    browser(trace, T + 5, granted(True))
    browser(trace, T + 10, granted(False))
    trace.send(clickstream("c2", T + 15))
    trace.evaluate(T + 60)
    assert (trace.consent("c1"), trace.consent("c2")) == ("absent", "withdrawn")
    states = [(s.state, s.detail) for s in trace.all.signals]
    assert states == [
        (ConsentState.ABSENT, "ConsentChanged granted=false, never given"),
        (ConsentState.GIVEN, "ConsentChanged granted=true"),
        (ConsentState.WITHDRAWN, "ConsentChanged granted=false after consent"),
    ]
    first, second = trace.findings(FindingKind.CONSENT_VIOLATION)
    assert "while consent was not given" in first.message and "withdrawn" not in first.message
    assert "while consent was withdrawn" in second.message


# --- signed-in shoppers: the account's consent ----------------------------------------------------------------------


def test_any_users_call_with_a_bearer_token_is_signed_in():
    bearer = "Bearer abc"
    assert signed_in("/occ/v2/s/users/anonymous/consenttemplates", bearer, "", False) is True
    assert signed_in("/occ/v2/s/users/current/carts", bearer, "", False) is True
    assert signed_in("/occ/v2/s/users/anonymous/consenttemplates", None, "", False) is False
    assert signed_in("/occ/v2/s/users/current/carts", None, "", False) is False
    assert signed_in("/occ/v2/s/products/1", bearer, "", False) is None


def test_the_account_reader_reads_lists_single_templates_gifts_and_withdrawals():
    def read(body: bytes, path: str = TEMPLATES, method: str = "GET", status: int = 200, encoding: str = ""):
        return read_account(AccountAnswer(method, path, status, encoding, body, True), "PROFILE")

    none = read(templates(None))
    assert none is not None and none.state is ConsentState.ABSENT and "no PROFILE consent" in none.detail
    given = read(gzip.compress(templates("GIVEN", given="2026-12-08T03:00:00+0000")), encoding="gzip")
    assert given is not None and (given.state, given.code) == (ConsentState.GIVEN, "000123")
    assert given.changed_at == 1796698800.0
    gone = read(templates("GIVEN", withdrawn="2026-12-08T04:00:00Z"))
    assert gone is not None and gone.state is ConsentState.WITHDRAWN and gone.changed_at == 1796702400.0
    single = read(json.dumps(json.loads(templates("GIVEN"))["consentTemplates"][1]).encode(), TEMPLATES + "/PROFILE")
    assert single is not None and single.state is ConsentState.GIVEN
    posted = read(
        json.dumps(json.loads(templates("GIVEN"))["consentTemplates"][1]).encode(),
        "/occ/v2/s/users/current/consents",
        "POST",
        201,
    )
    assert posted is not None and posted.state is ConsentState.GIVEN
    deleted = read(b"", "/occ/v2/s/users/current/consents/000123", "DELETE")
    assert deleted is not None and (deleted.state, deleted.code, deleted.by_code) == (
        ConsentState.WITHDRAWN,
        "000123",
        True,
    )
    assert read(templates(None), status=401) is None
    assert read(b"{not json") is None
    assert read(templates("GIVEN"), path="/occ/v2/s/users/anonymous/consenttemplates") is None
    assert read_account(AccountAnswer("GET", TEMPLATES, 200, "", b"", False), "PROFILE") is None  # too long


def test_the_storefront_reader_hands_on_an_account_answer_bounded_and_never_folds_it():
    assert reads_body(TEMPLATES + "?lang=en") and not reads_body("/occ/v2/s/users/anonymous/consenttemplates")
    request = ((b"Authorization", b"Bearer t"), (b"Accept", b"application/json"))
    answer = ((b"Content-Type", b"application/json"), (b"Content-Encoding", b"gzip"))
    signals = read_exchange("GET", TEMPLATES + "?lang=en", request, answer, 200, b"\x1f\x8b")
    assert signals.account == AccountAnswer("GET", TEMPLATES, 200, "gzip", b"\x1f\x8b", True)
    assert signals.telling and signals.logged_in is True
    big = read_exchange("GET", TEMPLATES, request, answer, 200, b"x" * 70000)
    assert big.account is not None and (big.account.complete, big.account.body) == (False, b"")
    folding = PageFolding()
    browser_key = ("run", "10.0.0.1", "")
    assert folding.note(browser_key, signals, 1.0) is not None
    assert folding.note(browser_key, signals, 2.0) is not None  # the same headers, but an answer to read
    assert read_exchange("GET", "/occ/v2/s/products/1", request, answer, 200, b"{}").account is None


def signed_in_accepted(trace: Trace) -> None:
    """Accepted anonymously in the browser at T - 20, then signed in at T - 10."""
    browser(trace, T - 30, granted(False), first=True)
    browser(trace, T - 20, granted(True))
    occ(trace, T - 10, "GIVEN", signed_in=True)


def test_a_signed_in_shopper_whose_account_holds_no_consent_gets_one_mismatch_warning():
    trace = Trace()
    signed_in_accepted(trace)
    account(trace, T - 9, templates(None))
    trace.deliver(clickstream("c1", T))
    trace.deliver(clickstream("c2", T + 2, body='{"productSku":"2"}'))
    trace.evaluate(T + 30)
    assert (trace.consent("c1"), trace.consent("c2")) == ("given", "given")  # consent was given, in the browser
    (finding,) = trace.findings()
    assert (finding.kind, finding.severity, finding.delivery_uid) == (
        FindingKind.ACCOUNT_CONSENT_MISMATCH,
        Severity.WARNING,
        "c1",
    )
    assert "data layer said given" in finding.message and "account says not given" in finding.message
    account_signals = [s for s in trace.all.signals if s.source.startswith("account")]
    assert [(s.state, s.source) for s in account_signals] == [
        (ConsentState.ABSENT, "account (GET /users/current/consenttemplates)")
    ]


def test_a_signed_in_shopper_whose_account_consent_is_given_is_fine():
    trace = Trace()
    signed_in_accepted(trace)
    account(trace, T - 9, templates("GIVEN"))
    trace.deliver(clickstream("c1", T))
    trace.evaluate(T + 30)
    assert trace.consent("c1") == "given"
    assert trace.kinds() == []


def test_tracking_after_the_account_withdrew_consent_is_a_violation():
    trace = Trace()
    signed_in_accepted(trace)
    account(trace, T - 9, templates("GIVEN"))
    account(trace, T - 5, b"", "/occ/v2/electronics/users/current/consents/000123", "DELETE")
    trace.deliver(clickstream("c1", T))
    trace.evaluate(T + 30)
    assert trace.consent("c1") == "withdrawn"
    (finding,) = trace.findings()
    assert finding.kind is FindingKind.CONSENT_VIOLATION
    assert "account says withdrawn" in finding.message and "data layer said given" in finding.message


def test_an_account_withdrawal_older_than_the_browsers_consent_is_a_mismatch_not_a_violation():
    trace = Trace()
    signed_in_accepted(trace)
    account(trace, T - 9, templates("GIVEN", given=iso(T - 9000), withdrawn=iso(T - 8000)))
    trace.deliver(clickstream("c1", T))
    trace.evaluate(T + 30)
    assert trace.consent("c1") == "given"
    assert trace.kinds() == [FindingKind.ACCOUNT_CONSENT_MISMATCH]


def test_a_withdrawal_of_another_consent_changes_nothing():
    trace = Trace()
    signed_in_accepted(trace)
    account(trace, T - 9, templates("GIVEN"))
    account(trace, T - 5, b"", "/occ/v2/electronics/users/current/consents/999", "DELETE")
    trace.deliver(clickstream("c1", T))
    trace.evaluate(T + 30)
    assert trace.consent("c1") == "given" and trace.kinds() == []


def test_without_the_data_layer_the_account_decides_where_it_says_given():
    trace = Trace()
    occ(trace, T - 10, "WITHDRAWN", signed_in=True)
    account(trace, T - 9, templates("GIVEN"))
    trace.send(clickstream("c1", T))
    trace.evaluate(T + 200, final=True)
    assert trace.consent("c1") == "given" and trace.kinds() == []


def test_without_the_data_layer_an_account_without_consent_is_unknown():
    trace = Trace()
    occ(trace, T - 10, "GIVEN", signed_in=True)
    account(trace, T - 9, templates(None))
    trace.send(clickstream("c1", T))
    trace.evaluate(T + 200, final=True)
    assert trace.consent("c1") == "unknown"
    (finding,) = trace.findings()
    assert finding.kind is FindingKind.CONSENT_UNKNOWN and "account says not given" in finding.message


# --- repeated consent references -------------------------------------------------------------------------------------


def test_a_page_requested_before_the_first_reference_came_back_may_ask_again():
    """The issue's stand-in repro: accept, the data layer says given, a product page at once."""
    trace = Trace()
    browser(trace, T - 10, granted(False), first=True)
    browser(trace, T - 0.1, granted(True))
    trace.send(consent_reference("r1", T))
    trace.page(T + 0.05, cookie=GIVEN)  # the product page, requested before r1's answer
    trace.answer("r1", T + 0.3, 201)
    trace.deliver(consent_reference("r2", T + 0.6))  # the new page's tag had no reference: it asks again
    trace.evaluate(T + 30)
    assert FindingKind.REPEATED_CONSENT_REFERENCE not in trace.kinds()


def test_a_page_requested_after_the_first_reference_came_back_must_not_ask_again():
    trace = Trace()
    browser(trace, T - 10, granted(True), first=True)
    trace.deliver(consent_reference("r1", T))  # answered at T + 0.2
    trace.page(T + 5, cookie=GIVEN)
    trace.deliver(consent_reference("r2", T + 5.5))
    trace.evaluate(T + 30)
    (finding,) = trace.findings(FindingKind.REPEATED_CONSENT_REFERENCE)
    assert finding.delivery_uid == "r2" and "had come back before the page" in finding.message


def test_a_page_that_pushed_nothing_before_the_shopper_accepted_was_without_consent():
    """Accelerator style: no ConsentChanged before a decision; the acceptance is pushed 2 s after the call."""
    trace = Trace()
    trace.page(T - 5, cookie="")  # no consent cookie: absent
    browser(trace, T - 4.9, first=True)  # the observer watches the page
    trace.send(clickstream("c1", T))
    browser(trace, T + 2, granted(True))
    trace.page(T + 3, cookie=GIVEN)  # the next page carries the new cookie, well inside the grace window
    trace.evaluate(T + 30)
    assert trace.consent("c1") == "absent"
    (finding,) = trace.findings(FindingKind.CONSENT_VIOLATION)
    assert "no ConsentChanged on this page until granted=true 2.0 s after the call" in finding.message


def test_a_consent_announced_at_the_start_of_a_later_page_says_nothing_of_when():
    trace = Trace()
    trace.page(T - 5, cookie="")
    browser(trace, T - 4.9, first=True)
    trace.send(clickstream("c1", T))
    trace.page(T + 3, cookie=GIVEN)
    browser(trace, T + 3.1, granted(True), page_id="page0002", first=True)  # a new page announces it
    trace.evaluate(T + 30)
    assert trace.consent("c1") == "given"  # the network rule: the echo within the grace window
    assert consent_kinds(trace) == []


def test_a_reference_waiting_for_its_page_check_is_a_pending_decision():
    trace = Trace()
    browser(trace, T - 10, granted(True), first=True)
    trace.send(consent_reference("r1", T))
    judged = trace.judge.answer(Answer("r1", Kind.CONSENT_REFERENCE, T, T + 0.2, 201), Verdict.DELIVERED)
    [snapshot] = judged.visitors.values()
    assert snapshot.pending_decision is not None and "consent reference" in snapshot.pending_decision
    [after] = trace.evaluate(T + 30).visitors.values()
    assert after.pending_decision is None


def test_the_silence_check_is_decided_as_soon_as_an_event_after_consent_is_seen():
    trace = Trace()
    trace.page(T, cookie=GIVEN)
    (snapshot,) = trace.judge.visitors()
    assert (
        snapshot.pending_decision is not None and "waiting for events after consent until" in snapshot.pending_decision
    )
    trace.deliver(clickstream("c1", T + 2))
    (after,) = trace.judge.visitors()
    assert after.pending_decision is None  # no need to wait for the window's end: nothing will be said
    trace.evaluate(T + 60, final=True)
    assert FindingKind.NO_EVENTS_AFTER_CONSENT not in trace.kinds()
