"""Alert rules checked and unit-tested by promtool, and one real Prometheus watching a real clickwatch."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import Upstream, free_port, wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "monitoring" / "prometheus" / "alerts.yml"
RULE_TESTS = REPO / "monitoring" / "prometheus" / "alerts.test.yml"
CLICKWATCH = Path(sys.executable).with_name("clickwatch")


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: install Debian's prometheus package (apt-get install prometheus)")
    return path


def test_promtool_checks_the_rules() -> None:
    result = subprocess.run([tool("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout


def test_promtool_unit_tests_every_alert_firing_and_quiet() -> None:
    result = subprocess.run(
        [tool("promtool"), "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, cwd=RULE_TESTS.parent
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    tested = RULE_TESTS.read_text()
    for alert in ("ClickwatchDeliveriesFailing", "ClickwatchConsentViolation", "ClickwatchEventNotSent",
                  "ClickwatchTrackingSilent", "ClickwatchStoreDropping", "ClickwatchDown"):  # fmt: skip
        assert f"alertname: {alert}" in tested
    # Alerts are per finding kind: a push the tag never sent has its own, unit-tested on an event_not_sent series.
    assert 'finding="event_not_sent"' in RULES.read_text()
    assert 'clickwatch_findings_total{instance="a", job="clickwatch", finding="event_not_sent"' in tested


def test_a_rejected_delivery_raises_the_failing_alert_in_a_real_prometheus(tmp_path: Path, upstream: Upstream) -> None:
    proxy_port, dashboard_port, prometheus_port = free_port(), free_port(), free_port()
    clickwatch = subprocess.Popen(
        [
            str(CLICKWATCH),
            "up",
            "--quiet",
            "--db",
            str(tmp_path / "cw.db"),
            "--proxy-port",
            str(proxy_port),
            "--dashboard-port",
            str(dashboard_port),
            "--set",
            f"confdir={tmp_path / 'mitm'}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    config = tmp_path / "prometheus.yml"
    config.write_text(
        f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {RULES}
scrape_configs:
  - job_name: clickwatch
    static_configs:
      - targets: ["127.0.0.1:{dashboard_port}"]
"""
    )
    prometheus = subprocess.Popen(
        [
            tool("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    api = httpx.Client(base_url=f"http://127.0.0.1:{prometheus_port}", timeout=5, trust_env=False)
    try:

        def scraped() -> bool:
            try:
                targets = api.get("/api/v1/targets").json()["data"]["activeTargets"]
            except (httpx.HTTPError, ValueError, KeyError):
                return False
            return any(t["health"] == "up" for t in targets)

        wait_until(scraped, 30, "Prometheus scraping clickwatch")
        time.sleep(2)  # a scrape of the zero counters before the rejection: increase() needs two samples
        with httpx.Client(proxy=f"http://127.0.0.1:{proxy_port}", timeout=10, trust_env=False) as client:
            answer = client.post(
                upstream.url("/s400/edge/clickstreamEvents"),
                json={"productSku": "1"},
                headers={"hybris-schema": "context/commerce/ProductView", "consent-reference": "cr"},
            )
            assert answer.status_code == 400

        def failing_alert() -> str | None:
            alerts = api.get("/api/v1/alerts").json()["data"]["alerts"]
            states = [a["state"] for a in alerts if a["labels"]["alertname"] == "ClickwatchDeliveriesFailing"]
            return states[0] if states else None

        state = wait_until(failing_alert, 30, "ClickwatchDeliveriesFailing pending or firing")
        assert state in ("pending", "firing")
        series = api.get(
            "/api/v1/query", params={"query": 'clickwatch_deliveries_total{kind="clickstream",verdict="rejected"}'}
        ).json()["data"]["result"]
        assert float(series[0]["value"][1]) == 1.0
    finally:
        api.close()
        prometheus.terminate()
        prometheus.wait(10)
        clickwatch.send_signal(signal.SIGTERM)
        clickwatch.wait(20)
