"""The pytest plugin as a suite uses it: inner pytest runs (pytester) whose tests send tracking calls through
a real clickwatch to the stand-in tenant, and what their results and reports say."""

from __future__ import annotations

import json
import re
import socket
import urllib.request

import pytest

from clickwatch.standin.server import StandIn
from clickwatch.testing.run import run_name
from clickwatch.testing.server import Server

# Here, not in conftest.py: a conftest below the root may not name plugins, and only these tests need it.
pytest_plugins = ["pytester"]

pytestmark = pytest.mark.integration
# An xdist worker is a fresh interpreter: leave out the heavy plugins the inner tests do not use.
LEAN = ["-p", "no:schemathesis", "-p", "no:hypothesispytest"]

# The inner suites' conftest: a fixture that POSTs a clickstream event through the test's run, over HTTPS.
INNER_CONFTEST = """
import json
import ssl

import httpx
import pytest

HEALTHY = {healthy!r}
FAILING = {failing!r}


@pytest.fixture
def send(clickwatch):
    def post(schema, failing=False, **body):
        trust = ssl.create_default_context(cafile=clickwatch.ca_cert)
        with httpx.Client(proxy=clickwatch.proxy_url, verify=trust, trust_env=False) as client:
            answer = client.post(
                (FAILING if failing else HEALTHY) + "/edge/clickstreamEvents",
                headers={{"hybris-schema": "context/commerce/" + schema, "content-type": "application/json"}},
                content=json.dumps({{"productSku": "300938", "productQty": 1, "cart": {{"code": "c1"}}, **body}}),
            )
        return answer.status_code

    return post
"""


@pytest.fixture
def inner(pytester: pytest.Pytester, standin: StandIn, failing_standin: StandIn) -> pytest.Pytester:
    """A pytester directory whose tests can `send` events to a healthy or a failing (503) tenant."""
    # In-process runs find clickwatch already imported: pytest cannot rewrite the plugin's asserts then.
    pytester.makeini(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
        "filterwarnings = ignore::pytest.PytestAssertRewriteWarning\n"
    )
    pytester.makeconftest(
        INNER_CONFTEST.format(healthy=standin.tenant_origin("https"), failing=failing_standin.tenant_origin("https"))
    )
    return pytester


def remote(server: Server) -> list[str]:
    """The options that point an inner run at the outer session's clickwatch."""
    return [f"--clickwatch-url={server.dashboard_url}", f"--clickwatch-proxy={server.proxy}"]


def runs_in(server: Server, prefix: str) -> dict[str, int]:
    """Deliveries per run, for the runs whose name starts with `prefix`, read from the outer clickwatch."""
    with urllib.request.urlopen(f"{server.dashboard_url}/api/deliveries?limit=500", timeout=10) as answer:
        items = json.load(answer)["items"]
    counts: dict[str, int] = {}
    for item in items:
        if item["run"].startswith(prefix):
            counts[item["run"]] = counts.get(item["run"], 0) + 1
    return counts


def test_run_names_are_node_ids_fit_for_a_proxy_user_name():
    taken: set[str] = set()
    assert run_name("suite/test_shop.py::test_cart[a b/c:d]", taken=taken) == "suite-test_shop.py-test_cart-a-b-c-d"
    # Two ids that sanitise alike still get two runs; a tag keeps sessions on a shared proxy apart.
    assert run_name("suite/test_shop.py::test_cart[a-b-c:d]", taken=taken) == "suite-test_shop.py-test_cart-a-b-c-d-2"
    assert run_name("t.py::test", "1a2b3c4d") == "t.py-test-1a2b3c4d"
    long_id = "tests/" + "deep/" * 40 + "test_x.py::test_long"
    name = run_name(long_id, "1a2b3c4d")
    assert len(name) <= 100 and name.endswith("-deep-test_x.py-test_long-1a2b3c4d")
    assert name != run_name(long_id.replace("deep", "DEEP"), "1a2b3c4d")


def test_each_xdist_worker_starts_its_own_clickwatch_and_each_test_gets_a_run_of_its_own(inner, plugin_config):
    inner.makepyfile(
        test_own="""
        import os
        import re
        from pathlib import Path

        import pytest


        def test_attributes(clickwatch, send):
            assert clickwatch.run == "test_own.py-test_attributes"
            proxy = re.fullmatch(r"http://(\\S+):clickwatch@(127.0.0.1:\\d+)", clickwatch.proxy_url)
            assert proxy and proxy[1] == clickwatch.run, clickwatch.proxy_url
            address = proxy[2]
            assert clickwatch.playwright_proxy == {
                "server": "http://" + address, "username": clickwatch.run, "password": "clickwatch",
            }
            assert clickwatch.chromium_args == ["--proxy-server=http://" + address, "--proxy-bypass-list=<-loopback>"]
            assert clickwatch.ca_cert.read_text().startswith("-----BEGIN CERTIFICATE-----")
            Path("proxy-" + os.environ["PYTEST_XDIST_WORKER"]).write_text(address)
            assert send("AddedToCart") == 201
            [event] = clickwatch.expect("AddedToCart")
            assert (event["run"], event["schema_name"], event["status_code"]) == (clickwatch.run, "AddedToCart", 201)


        @pytest.mark.parametrize("name", ["a b/c:d"])
        def test_sees_only_its_own_run(clickwatch, name):
            assert clickwatch.run == "test_own.py-test_sees_only_its_own_run-a-b-c-d"
            assert clickwatch.deliveries() == []
        """
    )
    # --dist each: both workers run both tests, each worker through the clickwatch it started.
    options = [f"--clickwatch-config={plugin_config}", "--clickwatch-up-args=--upstream-insecure"]
    result = inner.runpytest_subprocess("-n", "2", "--dist", "each", *LEAN, *options)
    result.assert_outcomes(passed=4)
    proxies = {path.name: path.read_text() for path in inner.path.glob("proxy-*")}
    assert sorted(proxies) == ["proxy-gw0", "proxy-gw1"]
    assert proxies["proxy-gw0"] != proxies["proxy-gw1"]
    # The proxies it started are gone with the session.
    for address in proxies.values():
        host, port = address.split(":")
        with pytest.raises(OSError), socket.create_connection((host, int(port)), timeout=2):
            pass


def test_expect_returns_the_events_or_fails_listing_what_arrived_with_the_consent_timeline(inner, clickwatch_server):
    inner.makepyfile(
        test_expect="""
        def test_found(clickwatch, send):
            send("ProductView")
            [event] = clickwatch.expect("ProductView", within=5)
            assert event["verdict"] == "delivered"
            assert clickwatch.expect("AddedToCart", count=0, within=0.5) == []
            assert [e["id"] for e in clickwatch.expect("ProductView", count=None)] == [event["id"]]


        def test_missing(clickwatch, send):
            send("ProductView")
            clickwatch.expect("ProductView")
            clickwatch.expect("AddedToCart", within=1)


        def test_too_many(clickwatch, send):
            send("AddedToCart", productSku="1")
            send("AddedToCart", productSku="2")
            clickwatch.expect("AddedToCart", count=2)
            clickwatch.expect("AddedToCart", count=1)
        """
    )
    result = inner.runpytest(*remote(clickwatch_server))
    result.assert_outcomes(passed=1, failed=2)
    out = result.stdout.str()
    tag = re.search(r"test_expect.py-test_missing-([0-9a-f]{8})", out)
    assert tag, out
    run = f"test_expect.py-test_missing-{tag[1]}"
    result.stdout.fnmatch_lines(
        [
            f"E * expected 1 delivered AddedToCart in run '{run}' within 1 s, saw 0",
            f"E * what arrived in run '{run}': 1 deliveries (ProductView x1)",
            "E * #* clickstream ProductView delivered (201) consent=* [[]missing_consent_reference (warning)*",
        ]
    )
    result.stdout.fnmatch_lines(["E * expected 1 delivered AddedToCart in run *test_too_many*, saw 2"])
    # Each failure carries its run's consent timeline as a report section, in plain text.
    result.stdout.fnmatch_lines(
        [
            f"*- clickwatch consent timeline (run {run}) -*",
            "visitor * (consent: *)",
            "  * #* clickstream ProductView delivered (201) *",
        ]
    )
    assert "clickwatch consent timeline (run test_expect.py-test_found" not in out


def test_expect_no_findings_names_the_findings_of_that_severity_and_worse(inner, clickwatch_server):
    inner.makepyfile(
        test_findings="""
        def test_no_errors(clickwatch, send):
            send("ProductView")
            clickwatch.expect("ProductView")
            clickwatch.expect_no_findings()  # a missing consent reference is a warning, not an error


        def test_no_warnings(clickwatch, send):
            send("ProductView")
            clickwatch.expect("ProductView")
            clickwatch.expect_no_findings(severity="warning")
        """
    )
    result = inner.runpytest(*remote(clickwatch_server))
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "E * expected no findings (warning+) in run *test_no_warnings*, found *",
            "E *   missing_consent_reference (warning): *",
        ]
    )


def test_the_marker_fails_a_test_whose_run_is_unhealthy_by_the_rules_of_check(inner, clickwatch_server):
    inner.makepyfile(
        test_marker="""
        import pytest


        @pytest.mark.clickwatch
        def test_rejected(clickwatch, send):
            assert send("AddedToCart", failing=True) == 503


        @pytest.mark.clickwatch
        def test_delivered(clickwatch, send):
            assert send("AddedToCart") == 201


        @pytest.mark.clickwatch(fail_on="rejected,failed,warning")
        def test_warnings_count_when_asked(clickwatch, send):
            assert send("AddedToCart") == 201


        @pytest.mark.clickwatch(expect=["AddedToCart"], wait=1)
        def test_expected_event_never_sent():
            pass


        @pytest.mark.clickwatch(fail_on="nonsense")
        def test_bad_marker(clickwatch):
            pass
        """
    )
    result = inner.runpytest("-rA", *remote(clickwatch_server))
    result.assert_outcomes(passed=1, failed=3, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_rejected _*",
            "clickwatch run 'test_marker.py-test_rejected-*' is unhealthy",
            "problems",
            "  #* clickstream context/commerce/AddedToCart https://127.0.0.1:*/edge/clickstreamEvents",
            "      rejected (503)",
            "UNHEALTHY: delivery *: rejected (503)",
            "*- clickwatch consent timeline (run test_marker.py-test_rejected-*) -*",
            "* #* clickstream AddedToCart rejected (503) *",
        ]
    )
    result.stdout.fnmatch_lines(["UNHEALTHY: delivery *: missing_consent_reference: *"])
    # Its run holds nothing at all: named as such, with the runs the clickwatch does hold.
    result.stdout.fnmatch_lines(
        ["*clickwatch: nothing arrived in the test's run: no run 'test_marker.py-test_expected_event_never_sent-*'; "
         "the store holds: *"]
    )  # fmt: skip
    result.stdout.fnmatch_lines(["*@pytest.mark.clickwatch: fail_on: unknown nonsense*"])
    result.stdout.fnmatch_lines(["PASSED test_marker.py::test_delivered"])


def test_a_running_clickwatch_is_reached_by_url_or_environment(inner, clickwatch_server, monkeypatch):
    ca = clickwatch_server.ca_cert.read_text()
    inner.makepyfile(
        test_remote=f"""
        def test_remote(clickwatch, send):
            assert clickwatch.ca_cert.read_text() == {ca!r}
            assert clickwatch.playwright_proxy["server"] == "http://{clickwatch_server.proxy}"
            assert clickwatch.dashboard_url == "{clickwatch_server.dashboard_url}"
            assert send("CartSnapshot") == 201
            clickwatch.expect("CartSnapshot")
            print("RUN=" + clickwatch.run)
        """
    )
    monkeypatch.setenv("CLICKWATCH_URL", clickwatch_server.dashboard_url)
    first = inner.runpytest("-s", f"--clickwatch-proxy={clickwatch_server.proxy}")
    first.assert_outcomes(passed=1)
    second = inner.runpytest("-s", *remote(clickwatch_server))
    second.assert_outcomes(passed=1)
    # The same test in two sessions: two runs on the shared proxy, each with its own one event.
    names = [re.search(r"RUN=(\S+)", r.stdout.str())[1] for r in (first, second)]  # type: ignore[index]
    assert names[0] != names[1]
    assert runs_in(clickwatch_server, "test_remote.py-test_remote-") == {names[0]: 1, names[1]: 1}

    monkeypatch.delenv("CLICKWATCH_URL")
    unreachable = inner.runpytest("--clickwatch-url=http://127.0.0.1:9")
    unreachable.assert_outcomes(errors=1)
    unreachable.stdout.fnmatch_lines(["*clickwatch: --clickwatch-url: cannot reach http://127.0.0.1:9*"])


def test_xdist_workers_share_one_proxy_and_runs_keep_their_tests_apart(inner, clickwatch_server):
    inner.makepyfile(
        test_parallel="""
        import os
        from pathlib import Path

        import pytest


        @pytest.mark.parametrize("n", [1, 2, 3, 4])
        def test_sends(clickwatch, send, n):
            for sku in range(n):
                assert send("AddedToCart", productSku=str(sku), productQty=n) == 201
            events = clickwatch.expect("AddedToCart", count=n)
            assert {e["run"] for e in clickwatch.deliveries()} == {clickwatch.run}
            Path(f"worker-{n}.txt").write_text(os.environ["PYTEST_XDIST_WORKER"] + " " + clickwatch.run)
            assert len(events) == n
        """
    )
    result = inner.runpytest_subprocess("-n", "2", *LEAN, *remote(clickwatch_server))
    result.assert_outcomes(passed=4)
    seen = dict((int(path.stem.split("-")[1]), path.read_text().split()) for path in inner.path.glob("worker-*.txt"))
    assert {worker for worker, _ in seen.values()} == {"gw0", "gw1"}
    runs = {run: n for n, (_, run) in seen.items()}
    assert runs_in(clickwatch_server, "test_parallel.py-test_sends-") == runs
    # The workers of one pytest run share the session's tag.
    assert len({run.rsplit("-", 1)[1] for run in runs}) == 1
