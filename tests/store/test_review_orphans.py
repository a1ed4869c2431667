"""Review item (a): a request the dead store had written AND that the link hands again to its successor ends with its
real consent decision, never also with the "died before deciding" finding (a real store process, a real kill -9)."""

import os
import signal
import sqlite3
import time
from urllib.parse import quote

from clickwatch.store import link as link_module
from clickwatch.store import wire
from clickwatch.store.link import StoreLink
from clickwatch.store.writer import DIED_BEFORE_DECIDING

# The visitor granted tracking consent: each call's real decision is "given", never "unknown".
GIVEN = quote('[{"templateCode":"PROFILE","templateVersion":1,"consentState":"GIVEN"}]')
URL = "https://acme.api.us.context.cloud.sap/edge/clickstreamEvents"


def _request(n: int) -> wire.Request:
    # One visitor per call (its own user agent): an orphan finding then names exactly the call it is about.
    headers = (
        (b"Host", b"acme.api.us.context.cloud.sap"),
        (b"User-Agent", f"Mozilla/5.0 review-{n}".encode()),
        (b"hybris-schema", b"context/commerce/ProductView"),
        (b"consent-reference", f"cr-{n}".encode()),
    )
    return wire.Request(
        f"call{n}", "default", "clickstream", None, "POST", URL, "acme.api.us.context.cloud.sap",
        "/edge/clickstreamEvents", "127.0.0.1", headers, b'{"productSku":"1"}', time.time(),
    )  # fmt: skip


def _page(n: int) -> wire.Storefront:
    # The storefront's next page, just after the call: its cookie says the visitor had granted tracking consent, so
    # the call waits for its grace window (or the store's stop), then is decided "given".
    now = time.time() + 0.001
    agent = f"Mozilla/5.0 review-{n}"
    return wire.Storefront("default", "127.0.0.1", agent, now, now, f"anonymous-consents={GIVEN}", None, (), True)


def _answer(n: int) -> wire.Answer:
    now = time.time()
    return wire.Answer(f"call{n}", "clickstream", now - 0.01, now, 201, (), b"{}", None)


def _written(db) -> int:
    try:
        conn = sqlite3.connect(db)
        try:
            return int(conn.execute("SELECT count(*) FROM deliveries").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def _wait(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_call_written_by_the_dead_store_and_handed_again_gets_its_decision_and_no_orphan_finding(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(link_module, "MIN_PROCESS_LIFETIME", 0.0)  # replaced by another process, not a thread
    db = tmp_path / "cw.db"
    link = StoreLink(str(db))
    # Every call waits for its consent decision (decided at the end, when the store stops).
    link.control(wire.Config({"overrides": {"grace_seconds": 60.0}}))
    first = link._backend.process
    sent = 0

    def burst(count: int) -> None:
        nonlocal sent
        for _ in range(count):
            link.send(_request(sent))
            link.send(_answer(sent))
            link.send(_page(sent))
            sent += 1

    burst(50)
    _wait(lambda: _written(db) >= 50, 20.0, "the first calls written")
    # In the middle of a burst, right after a commit the link has not heard of yet: what was just written is
    # handed again to the successor.
    before = _written(db)
    burst(200)
    _wait(lambda: _written(db) > before, 20.0, "a commit of the burst")
    os.kill(first.pid, signal.SIGKILL)
    burst(50)
    _wait(lambda: link._backend.process is not first, 20.0, "a new store process")
    assert link.close(20) is True
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    rows = {r["uid"]: r for r in conn.execute("SELECT id, uid, verdict, consent FROM deliveries")}
    orphaned = {
        r["delivery_id"]
        for r in conn.execute("SELECT delivery_id, message FROM findings WHERE kind = 'consent_unknown'")
        if DIED_BEFORE_DECIDING in r["message"]
    }
    conn.close()
    assert len(rows) == sent
    assert {r["verdict"] for r in rows.values()} == {"delivered"}
    both = [r["uid"] for r in rows.values() if r["id"] in orphaned and r["consent"] != "unknown"]
    assert both == [], f"{len(both)} call(s) have their real decision and an orphan finding"
    # Each call is either decided for real or unknown with the finding: never left pending, never unexplained.
    for r in rows.values():
        assert r["consent"] in ("given", "unknown")
        assert (r["consent"] == "unknown") == (r["id"] in orphaned), r["uid"]
    print(f"\n{sent} calls; {len(orphaned)} settled as orphans; {len(rows) - len(orphaned)} decided for real")
