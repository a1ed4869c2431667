"""The evidence bundle of a run, built from a real store filled through the real writer and pipeline: every member
parses, the manifest's hashes hold, no secret sent during capture reaches the zip, and the HTML needs nothing
from outside."""

from __future__ import annotations

import hashlib
import io
import json
import tracemalloc
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

import pytest
from markupsafe import escape

from clickwatch.store import bundle, reader, wire
from tests.dashboard.conftest import T0, UA, StoreBuilder
from tests.integration.conftest import wait_until

SECRET_TOKEN = "s3cr3t-bearer-7d1f0c"
SECRET_PROXY = "pr0xy-cred-51aa"
SECRET_COOKIE = "c00kie-value-9a2e44"
SECRET_SET_COOKIE = "set-c00kie-value-e1b3"
# Each would do something if it reached the page as markup: set the title, call a function, add an element.
HOSTILE_RUN = "<script>document.title='pwned-run'</script>"
HOSTILE_PATH = "/edge/clickstreamEvents?<img src=x onerror=\"document.title='pwned-url'\">"
HOSTILE_HEADER = "<script>window.__xss='header'</script>"
HOSTILE_BODY = '"><script>document.title="pwned-body"</script>'
HOSTILE_SCHEMA = "<img src=x onerror=\"document.title='pwned-schema'\">"  # its unknown_schema finding quotes it
HOSTILE_PUSH = "<svg onload=\"document.title='pwned-push'\"></svg>"
HOSTILE_UA = 'Mozilla/5.0 <iframe src="https://evil.example/"></iframe>'
EXPECTED_MEMBERS = {"deliveries.har", "deliveries.jsonl", "findings.json", "junit.xml", "report.html", "manifest.json"}


def secret_traffic(store: StoreBuilder, run: str, at: float) -> None:
    """A page load and a clickstream call carrying credentials and cookies, answered with a Set-Cookie."""
    consent = (
        "%5B%7B%22templateCode%22%3A%22PROFILE%22%2C%22templateVersion%22%3A1%2C%22consentState%22%3A%22GIVEN%22%7D%5D"
    )
    store.writer.submit(
        wire.Storefront(
            run=run,
            client_addr="127.0.0.1",
            user_agent=UA,
            request_at=at,
            response_at=at + 0.01,
            cookie=f"JSESSIONID={SECRET_COOKIE}; anonymous-consents={consent}",
            anonymous_consents_header=None,
            set_cookies=(f"session={SECRET_SET_COOKIE}; Path=/; Secure",),
            page_load=True,
        )
    )
    uid = store.event(
        at=at + 1,
        run=run,
        headers=(
            ("Authorization", f"Bearer {SECRET_TOKEN}"),
            ("Proxy-Authorization", f"Basic {SECRET_PROXY}"),
            ("Cookie", f"JSESSIONID={SECRET_COOKIE}; other={SECRET_COOKIE}"),
        ),
        status=None,
    )
    store.writer.submit(
        wire.Answer(
            uid=uid,
            kind="clickstream",
            sent_at=at + 1,
            ended_at=at + 1.05,
            status_code=201,
            fields=((b"Set-Cookie", f"session={SECRET_SET_COOKIE}; Path=/".encode()),),
            body=b"",
            error=None,
        )
    )


def hostile_store(store_builder: Callable[..., StoreBuilder]) -> StoreBuilder:
    """A run named with a payload whose every captured field holds one, plus secrets, plus another run."""
    store = store_builder()
    store.page(at=T0, consent="GIVEN", run=HOSTILE_RUN)
    store.push(HOSTILE_PUSH, {"x": HOSTILE_BODY}, at=T0 + 0.5, consent=True, run=HOSTILE_RUN)
    store.event(
        at=T0 + 1,
        run=HOSTILE_RUN,
        path=HOSTILE_PATH,
        headers=(("X-Note", HOSTILE_HEADER),),
        body={"productSku": HOSTILE_BODY},
    )
    store.event(at=T0 + 2, run=HOSTILE_RUN, schema=HOSTILE_SCHEMA, status=400)
    store.event(at=T0 + 3, run=HOSTILE_RUN, status=None, error=HOSTILE_BODY)
    store.event(at=T0 + 4, run=HOSTILE_RUN, ua=HOSTILE_UA, ip="10.0.0.9")
    secret_traffic(store, HOSTILE_RUN, T0 + 5)
    store.event(at=T0 + 9, run="other", schema="KeywordSearch", body={"searchTerm": "other run"})
    store.close()
    return store


def build(path: Path, run: str) -> tuple[bytes, bundle.Manifest]:
    conn = reader.connect(str(path))
    try:
        out = io.BytesIO()
        manifest = bundle.write_bundle(conn, run, out, version="9.9.9", created_at=T0 + 7200)
    finally:
        conn.close()
    return out.getvalue(), manifest


@pytest.fixture
def hostile(store_builder: Callable[..., StoreBuilder]) -> StoreBuilder:
    return hostile_store(store_builder)


def test_every_member_is_there_and_parses(hostile: StoreBuilder) -> None:
    data, manifest = build(hostile.path, HOSTILE_RUN)
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert archive.testzip() is None
    assert set(archive.namelist()) == EXPECTED_MEMBERS

    har = json.loads(archive.read("deliveries.har"))
    everything = har["log"]["entries"]
    # The deliveries, then the run's consent signals as the storefront requests that carry them.
    entries = [e for e in everything if e["_clickwatch"]["kind"] != "consent_signal"]
    signals = everything[len(entries) :]
    assert har["log"]["creator"] == {"name": "clickwatch", "version": "9.9.9"}
    assert len(entries) == 5
    assert signals and all(e["_clickwatch"]["kind"] == "consent_signal" for e in signals)
    assert {e["request"]["url"] for e in signals} == {"https://storefront.invalid/clickwatch-consent-signal"}
    assert {e["_clickwatch"]["run"] for e in signals} == {HOSTILE_RUN}
    assert {e["_clickwatch"]["run"] for e in entries} == {HOSTILE_RUN}  # the other run stays out
    assert any(e["request"]["url"].endswith(HOSTILE_PATH) for e in entries)

    lines = archive.read("deliveries.jsonl").decode().splitlines()
    items = [json.loads(line) for line in lines]
    assert [i["id"] for i in items] == [e["_clickwatch"]["id"] for e in entries]
    assert {i["verdict"] for i in items} == {"delivered", "rejected", "failed"}

    findings = json.loads(archive.read("findings.json"))
    assert findings["run"] == HOSTILE_RUN
    kinds = {f["kind"] for f in findings["findings"]}
    assert "unknown_schema" in kinds
    assert all(f["run"] == HOSTILE_RUN for f in findings["findings"])

    suite = ET.fromstring(archive.read("junit.xml"))
    assert suite.tag == "testsuite"
    assert int(suite.get("failures") or 0) >= 2  # the rejected and the failed delivery
    assert any("unknown_schema" in (f.text or "") and "pwned-schema" in (f.text or "") for f in suite.iter("failure"))

    html = archive.read("report.html").decode()
    assert html.startswith("<!doctype html>")
    assert "UNHEALTHY" in html

    assert manifest.counts["deliveries"] == 5
    assert manifest.counts["findings"] == len(findings["findings"])
    assert manifest.counts["healthy"] is False


def test_the_manifest_names_every_member_with_its_size_and_hash(hostile: StoreBuilder) -> None:
    data, _ = build(hostile.path, HOSTILE_RUN)
    archive = zipfile.ZipFile(io.BytesIO(data))
    manifest = json.loads(archive.read("manifest.json"))
    assert manifest["format"] == "clickwatch-evidence-bundle"
    assert manifest["run"] == HOSTILE_RUN
    assert manifest["clickwatch_version"] == "9.9.9"
    assert manifest["created_at"].startswith("2026-09-21T")
    assert manifest["counts"]["verdicts"] == {"delivered": 3, "rejected": 1, "failed": 1, "pending": 0}
    listed = {m["name"]: m for m in manifest["members"]}
    assert set(listed) == EXPECTED_MEMBERS - {"manifest.json"}
    for name, member in listed.items():
        content = archive.read(name)
        assert member["size"] == len(content), name
        assert member["sha256"] == hashlib.sha256(content).hexdigest(), name
        assert member["what"]


def test_the_junit_member_is_what_check_writes_for_the_run(hostile: StoreBuilder) -> None:
    from clickwatch.cli.check import junit_xml, parse_fail_on, run_check
    from clickwatch.cli.sources import StoreSource

    data, _ = build(hostile.path, HOSTILE_RUN)
    source = StoreSource(str(hostile.path))
    expected = junit_xml(run_check(source, {"run": HOSTILE_RUN}, parse_fail_on("rejected,failed,error"), [], 0))
    assert zipfile.ZipFile(io.BytesIO(data)).read("junit.xml") == expected


def test_no_secret_sent_during_capture_is_anywhere_in_the_zip(hostile: StoreBuilder) -> None:
    data, _ = build(hostile.path, HOSTILE_RUN)
    archive = zipfile.ZipFile(io.BytesIO(data))
    texts = {name: archive.read(name).decode() for name in archive.namelist()}
    # The headers are there, redacted as the store keeps them: the check below is not vacuous.
    assert "Bearer <redacted>" in texts["deliveries.har"]
    assert "JSESSIONID=<redacted>" in texts["deliveries.jsonl"]
    for secret in (SECRET_TOKEN, SECRET_PROXY, SECRET_COOKIE, SECRET_SET_COOKIE, "secret-token-value"):
        leaks = [name for name, text in texts.items() if secret in text]
        assert leaks == [], f"{secret} in {leaks}"
    # Nor in the raw bytes (compressed members could hide nothing from a text search, but be plain about it).
    assert all(secret.encode() not in archive.read(n) for n in archive.namelist() for secret in (SECRET_TOKEN,))


class _Attributes(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.urls: list[str] = []
        self.styles: list[str] = []
        self.meta: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        values = dict(attrs)
        for name in ("href", "src", "action", "srcset", "poster", "data"):
            if values.get(name) is not None:
                self.urls.append(str(values[name]))
        if values.get("style") is not None:
            self.styles.append(str(values["style"]))
        if tag == "meta" and values.get("http-equiv"):
            self.meta[str(values["http-equiv"]).lower()] = str(values.get("content"))


def test_the_report_is_self_contained_and_forbids_scripts(hostile: StoreBuilder) -> None:
    data, _ = build(hostile.path, HOSTILE_RUN)
    html = zipfile.ZipFile(io.BytesIO(data)).read("report.html").decode()
    parsed = _Attributes()
    parsed.feed(html)
    assert "script" not in parsed.tags
    assert {"img", "svg", "iframe"} & set(parsed.tags) == set()
    assert parsed.urls == [] or all(url.startswith("#") for url in parsed.urls)
    assert parsed.styles == []
    policy = parsed.meta["content-security-policy"]
    assert "script-src 'none'" in policy
    assert "default-src 'none'" in policy
    assert "unsafe-inline" not in policy
    # The payloads are on the page, as text.
    for payload in (HOSTILE_RUN, HOSTILE_SCHEMA, HOSTILE_PUSH, HOSTILE_UA):
        assert str(escape(payload)) in html


def test_a_healthy_run_says_so(store_builder: Callable[..., StoreBuilder]) -> None:
    store = store_builder()
    store.page(at=T0, consent="GIVEN")
    store.push("ProductDetailsPageViewed", {"productSku": "1"}, at=T0 + 0.5, consent=True)
    store.event(at=T0 + 1)
    store.close()
    data, manifest = build(store.path, "default")
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert manifest.counts["healthy"] is True
    assert ET.fromstring(archive.read("junit.xml")).get("failures") == "0"
    html = archive.read("report.html").decode()
    assert "HEALTHY" in html and "UNHEALTHY" not in html
    assert "No: every tracking call was sent with consent given" in html
    schema_row = html.split('<td class="mono">ProductView</td>', 1)[1].split("</tr>", 1)[0]
    # pushed, with consent, sent, delivered, rejected, failed, pending
    assert [c.split(">")[-1] for c in schema_row.split("</td>")[:7]] == ["1", "1", "1", "1", "0", "0", "0"]


def test_an_unknown_run_writes_nothing(hostile: StoreBuilder) -> None:
    conn = reader.connect(str(hostile.path))
    out = io.BytesIO()
    with pytest.raises(bundle.UnknownRun, match="no run 'nope'"):
        bundle.write_bundle(conn, "nope", out, version="1")
    conn.close()
    assert out.getvalue() == b""


def test_a_big_run_is_streamed_not_held_in_memory(store_builder: Callable[..., StoreBuilder]) -> None:
    store = store_builder()
    store.page(at=T0, consent="GIVEN")
    filler = "x" * 40_000
    for index in range(250):  # 10 MB of bodies
        store.event(at=T0 + 1 + index / 100, body={"productSku": str(index), "filler": filler})
        if index % 25 == 24:  # within the writer's queue bound
            wait_until(lambda: store.writer.queue_depth == 0, 30.0, "the writer to catch up")
    store.close()
    conn = reader.connect(str(store.path))
    sink = io.BufferedWriter(io.FileIO(str(store.path.with_suffix(".zip")), "w"))
    tracemalloc.start()
    try:
        manifest = bundle.write_bundle(conn, "default", sink, version="1")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        sink.close()
        conn.close()
    har = next(m for m in manifest.members if m["name"] == "deliveries.har")
    assert har["size"] > 10_000_000
    assert peak < 3_000_000, f"peak {peak} bytes while writing {har['size']} bytes of HAR"
