"""The team set-up: the image, docker-compose.yml and the Prometheus, Alertmanager and Grafana configuration.

No Docker engine runs where these tests run: the compose file is checked by `docker-compose config`, the
Dockerfile statically, the configurations by promtool and amtool, and the scrape path (token file written
by the compose entrypoint, file-discovered targets, every dashboard query) by a real Prometheus scraping a
real clickwatch.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from clickwatch.dashboard.main import create_app
from clickwatch.dashboard.settings import DashboardSettings
from clickwatch.store.writer import StoreWriter
from tests.integration.conftest import free_port, wait_until

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
PROMETHEUS_DIR = REPO / "monitoring" / "prometheus"
ALERTMANAGER_YML = REPO / "monitoring" / "alertmanager" / "alertmanager.yml"
PROVISIONING = REPO / "monitoring" / "grafana" / "provisioning"
DATASOURCE_YML = PROVISIONING / "datasources" / "prometheus.yml"
PROVIDER_YML = PROVISIONING / "dashboards" / "provider.yml"
DASHBOARD_JSON = PROVISIONING / "dashboards" / "clickwatch.json"
CLICKWATCH = Path(sys.executable).with_name("clickwatch")

TOKEN_IN_CONTAINER = "/prometheus/clickwatch.token"
SERVICES = {"clickwatch", "prometheus", "alertmanager", "grafana"}
PUBLISHED = {
    ("clickwatch", 8080),
    ("clickwatch", 8000),
    ("prometheus", 9090),
    ("alertmanager", 9093),
    ("grafana", 3000),
}
NAMED_VOLUMES = {"clickwatch-data", "clickwatch-ca", "prometheus-data", "grafana-data"}
# The Debian package of each command-line tool the tests run.
PACKAGES = {
    "docker-compose": "docker-compose",
    "promtool": "prometheus",
    "prometheus": "prometheus",
    "amtool": "prometheus-alertmanager",
}
# PromQL words that are not metric names (functions are recognised by the parenthesis that follows them).
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        package = PACKAGES[name]
        pytest.fail(f"{name} is missing: install Debian's {package} package (apt-get install {package})")
    return path


def compose_config(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` with only the given variables: no developer .env, no COMPOSE_* from the shell."""
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.write_text("")
    return subprocess.run(
        [tool("docker-compose"), "--env-file", str(empty_env_file), "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), **env},
    )


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The compose file as docker-compose resolves it, with both required secrets set."""
    result = compose_config(
        tmp_path_factory.mktemp("compose"), CLICKWATCH_TOKEN="test-token", GRAFANA_ADMIN_PASSWORD="test-password"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(result.stdout)
    assert isinstance(config, dict)
    return config


def published_ports(service: dict[str, Any]) -> list[tuple[str, int]]:
    """(host address, container port) of each published port, in docker-compose v1 or v2 output form."""
    ports = []
    for port in service.get("ports", []):
        if isinstance(port, dict):  # Compose v2: long syntax
            ports.append((str(port.get("host_ip", "")), int(port["target"])))
            continue
        parts = str(port).split("/")[0].split(":")
        host = ":".join(parts[:-2]) if len(parts) >= 3 else ""
        ports.append((host, int(parts[-1])))
    return ports


def mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Container path → (source, read-only) of each volume of a service, in short or long syntax."""
    found = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            found[volume["target"]] = (str(volume["source"]), bool(volume.get("read_only", False)))
            continue
        source, target, *mode = str(volume).split(":")
        found[target] = (source, mode == ["ro"])
    return found


def unescape(value: str) -> str:
    """A compose string as the container sees it (`$$` is compose's escape for `$`)."""
    return value.replace("$$", "$")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


# --- docker-compose.yml -----------------------------------------------------------------------------------


def test_compose_file_declares_the_four_services_and_their_named_volumes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == SERVICES
    assert set(compose["volumes"]) >= NAMED_VOLUMES
    assert Path(services["clickwatch"]["build"]["context"]) == REPO
    clickwatch = mounts(services["clickwatch"])
    assert clickwatch["/data"][0] == "clickwatch-data"
    assert clickwatch["/home/clickwatch/.mitmproxy"][0] == "clickwatch-ca"
    assert mounts(services["prometheus"])["/prometheus"][0] == "prometheus-data"
    assert mounts(services["grafana"])["/var/lib/grafana"][0] == "grafana-data"
    assert services["clickwatch"]["environment"]["CLICKWATCH_TOKEN"] == "test-token"
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "test-password"


def test_every_published_port_is_bound_to_loopback(compose: dict[str, Any]) -> None:
    published = set()
    for name, service in compose["services"].items():
        for host, port in published_ports(service):
            assert host == "127.0.0.1", f"{name} publishes container port {port} on {host or 'every address'}"
            published.add((name, port))
    assert published == PUBLISHED


@pytest.mark.parametrize("missing", ["CLICKWATCH_TOKEN", "GRAFANA_ADMIN_PASSWORD"])
def test_compose_refuses_to_start_without_its_secrets(tmp_path: Path, missing: str) -> None:
    env = {"CLICKWATCH_TOKEN": "test-token", "GRAFANA_ADMIN_PASSWORD": "test-password"}
    del env[missing]
    result = compose_config(tmp_path, **env)
    assert result.returncode != 0
    assert f"set {missing} in .env" in result.stderr


def test_env_example_names_every_variable_the_compose_file_reads() -> None:
    variables = set(re.findall(r"\$\{(\w+)", COMPOSE.read_text()))
    example = (REPO / ".env.example").read_text()
    assert variables == {"CLICKWATCH_TOKEN", "GRAFANA_ADMIN_PASSWORD", "CLICKWATCH_DASHBOARD_BIND"}
    for variable in variables:
        assert re.search(rf"^#? ?{variable}=", example, re.MULTILINE), variable


def test_prometheus_service_writes_the_token_where_prometheus_yml_reads_it(compose: dict[str, Any]) -> None:
    service = compose["services"]["prometheus"]
    config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "clickwatch"]
    assert job["authorization"] == {"type": "Bearer", "credentials_file": TOKEN_IN_CONTAINER}
    shell, flag, script, *_ = service["entrypoint"]
    assert (shell, flag) == ("/bin/sh", "-c")
    assert f'"$CLICKWATCH_TOKEN" > {TOKEN_IN_CONTAINER}' in unescape(script)
    assert 'exec /bin/prometheus "$@"' in unescape(script)
    assert service["environment"]["CLICKWATCH_TOKEN"] == "test-token"
    assert mounts(service)["/etc/prometheus"] == (str(PROMETHEUS_DIR), True)
    assert "--config.file=/etc/prometheus/prometheus.yml" in service["command"]
    assert "--storage.tsdb.path=/prometheus" in service["command"]


def test_alertmanager_and_grafana_services_mount_their_configuration(compose: dict[str, Any]) -> None:
    alertmanager = compose["services"]["alertmanager"]
    assert mounts(alertmanager)["/etc/alertmanager"] == (str(ALERTMANAGER_YML.parent), True)
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in alertmanager["command"]
    grafana = compose["services"]["grafana"]
    assert mounts(grafana)["/etc/grafana/provisioning"] == (str(PROVISIONING), True)
    provider = load_yaml(PROVIDER_YML)["providers"][0]
    assert provider["options"]["path"] == "/etc/grafana/provisioning/dashboards"  # DASHBOARD_JSON's directory
    assert (
        grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
        == "/etc/grafana/provisioning/" + DASHBOARD_JSON.relative_to(PROVISIONING).as_posix()
    )


# --- Dockerfile ---------------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(
        r"\\\n", " ", "\n".join(ln for ln in DOCKERFILE.read_text().splitlines() if not ln.lstrip().startswith("#"))
    )
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1].strip()) for ln in text.splitlines() if ln.strip()]


def test_dockerfile_installs_the_locked_project_and_runs_clickwatch_up_beyond_loopback(compose: dict[str, Any]) -> None:
    instructions = dockerfile_instructions()

    def get(name: str) -> list[str]:
        return [args for inst, args in instructions if inst == name]

    assert get("FROM") == ["python:3.12-slim"]
    installs = [args for args in get("RUN") if "pip install" in args]
    assert len(installs) == 1
    pip = shlex.split(installs[0].split("&&")[0])
    assert pip[pip.index("-c") + 1] == "requirements.lock"
    assert pip[-1] == "."  # the project itself, not '.[dev]'
    assert not any("[dev]" in arg for arg in pip)
    (user,) = get("USER")
    assert user not in ("root", "0")
    (cmd,) = get("CMD")
    assert json.loads(cmd) == ["clickwatch", "up", "--listen-host", "0.0.0.0", "--db", "/data/clickwatch.db"]
    (volumes,) = get("VOLUME")
    assert set(json.loads(volumes)) == {"/data", "/home/clickwatch/.mitmproxy"}
    assert set(mounts(compose["services"]["clickwatch"])) == set(json.loads(volumes))
    assert get("EXPOSE") == ["8080 8000"]
    (healthcheck,) = get("HEALTHCHECK")
    probe = json.loads(healthcheck.split("CMD", 1)[1])
    assert probe[:2] == ["python", "-c"]
    assert "http://127.0.0.1:8000/healthz" in probe[2]
    assert "HOME=/home/clickwatch" in " ".join(get("ENV"))  # mitmproxy's confdir is ~/.mitmproxy


def test_docker_build_context_holds_what_the_image_copies_and_no_local_state() -> None:
    patterns = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]

    def ignored(path: str) -> bool:
        parts = Path(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        return any(
            fnmatch.fnmatch(prefix, pattern) or fnmatch.fnmatch(prefix, pattern.removeprefix("**/"))
            or fnmatch.fnmatch(Path(prefix).name, pattern.removeprefix("**/"))
            for pattern in patterns
            for prefix in prefixes
        )  # fmt: skip

    copied = [src for inst, args in dockerfile_instructions() if inst == "COPY" for src in args.split()[:-1]]
    assert {"pyproject.toml", "requirements.lock", "README.md"} <= set(copied)
    for source in copied:
        assert (REPO / source).exists(), source
        assert not ignored(source.rstrip("/")), f"{source} is copied but excluded by .dockerignore"
    for local in (
        ".venv",
        ".git",
        ".env",
        "clickwatch.db",
        "clickwatch.db-wal",
        "dashboard/__pycache__",
        ".pytest_cache",
    ):
        assert ignored(local), f"{local} would be sent to the Docker daemon"


def test_the_installed_package_carries_every_subpackage_and_the_dashboard_files() -> None:
    """`pip install .` (not editable, as in the image) installs only what pyproject.toml names."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = set(setuptools["packages"])
    found = {
        ".".join(init.parent.relative_to(REPO).parts)
        for root in packages
        if "." not in root
        for init in (REPO / root).rglob("__init__.py")
    }
    assert found <= packages, f"pyproject.toml [tool.setuptools] packages misses {sorted(found - packages)}"
    package_data = setuptools.get("package-data", {})
    directories = {package: REPO / package.replace(".", "/") for package in packages}
    for root in sorted(p for p in packages if "." not in p):
        for file in sorted((REPO / root).rglob("*")):
            if not file.is_file() or file.suffix in (".py", ".pyc") or "__pycache__" in file.parts:
                continue
            package = max((p for p, d in directories.items() if file.is_relative_to(d)), key=len)
            relative = file.relative_to(directories[package]).as_posix()
            globs = package_data.get(package, []) + package_data.get("*", [])
            assert any(fnmatch.fnmatch(relative, g) for g in globs), (
                f"{package.replace('.', '/')}/{relative} is not in the wheel: "
                f"add it to [tool.setuptools.package-data] {package}"
            )


# --- Prometheus and Alertmanager ------------------------------------------------------------------------------


def prometheus_config_copy(tmp_path: Path, token_file: Path) -> Path:
    """monitoring/prometheus copied with the in-container token path pointing at `token_file`."""
    copy = tmp_path / "etc-prometheus"
    shutil.copytree(PROMETHEUS_DIR, copy)
    config = copy / "prometheus.yml"
    text = config.read_text()
    assert TOKEN_IN_CONTAINER in text
    config.write_text(text.replace(TOKEN_IN_CONTAINER, str(token_file)))
    return config


def test_promtool_checks_the_prometheus_config(tmp_path: Path) -> None:
    promtool = tool("promtool")
    # In place: syntax only, since the token file exists only inside the Prometheus container.
    result = subprocess.run(
        [promtool, "check", "config", "--syntax-only", "prometheus.yml"],
        capture_output=True,
        text=True,
        cwd=PROMETHEUS_DIR,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Fully (rule files, target files, token file) with the token path swapped for a real file.
    token = tmp_path / "clickwatch.token"
    token.write_text("test-token")
    config = prometheus_config_copy(tmp_path, token)
    result = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout
    assert "SUCCESS: 6 rules found" in result.stdout

    parsed = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    assert parsed["rule_files"] == ["alerts.yml"]
    assert parsed["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    (job,) = parsed["scrape_configs"]
    assert job["job_name"] == "clickwatch"  # ClickwatchDown watches up{job="clickwatch"}
    assert 'up{job="clickwatch"}' in (PROMETHEUS_DIR / "alerts.yml").read_text()
    assert job["file_sd_configs"][0]["files"] == ["targets/*.yml"]
    compose_targets = load_yaml(PROMETHEUS_DIR / "targets" / "compose.yml")
    assert compose_targets == [{"targets": ["clickwatch:8000"], "labels": {"instance": "compose"}}]
    assert load_yaml(PROMETHEUS_DIR / "targets" / "runners.yml") == []  # examples only, commented out


def test_amtool_checks_the_alertmanager_config_and_routes_critical_alerts_apart() -> None:
    amtool = tool("amtool")
    result = subprocess.run([amtool, "check-config", str(ALERTMANAGER_YML)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    rules = [r for g in load_yaml(PROMETHEUS_DIR / "alerts.yml")["groups"] for r in g["rules"]]
    assert {r["labels"]["severity"] for r in rules} == {"warning", "critical"}
    for rule in rules:
        expected = "on-call" if rule["labels"]["severity"] == "critical" else "qa-team"
        result = subprocess.run(
            [
                amtool,
                "config",
                "routes",
                "test",
                f"--config.file={ALERTMANAGER_YML}",
                f"--verify.receivers={expected}",
                f"alertname={rule['alert']}",
                f"severity={rule['labels']['severity']}",
                "instance=qa-runner-1",
            ],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, f"{rule['alert']}: {result.stdout}{result.stderr}"


# --- Grafana ----------------------------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_JSON.read_text())


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard's panels."""
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def concrete(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced by what 'All' and a short range send."""
    for variable, value in (("$instance", ".*"), ("$kind", ".*"), ("$__rate_interval", "1m"), ("$__range", "5m")):
        expr = expr.replace(variable, value)
    return expr


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric name, label matchers) of each vector selector in a PromQL expression."""

    def blank(match: re.Match[str]) -> str:  # same length: offsets stay those of `expr`
        return " " * len(match.group(0))

    masked = re.sub(r'"(?:[^"\\]|\\.)*"', lambda m: '"' + "x" * (len(m.group(0)) - 2) + '"', expr)
    masked = re.sub(r"\[[^\]]*\]", blank, masked)  # range and subquery durations
    masked = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", blank, masked)
    found = []
    for match in re.finditer(r"(?<![\w:$])([A-Za-z_:][\w:]*)\s*(\{[^}]*\})?(\s*\()?", masked):
        name, labels, call = match.groups()
        if call or name in PROMQL_WORDS:
            continue
        found.append((name, expr[match.start(2) : match.end(2)] if labels else ""))
    return found


@pytest.fixture(scope="module")
def exposed_names(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The sample names clickwatch's /metrics exposes, scraped from an empty store."""
    db = tmp_path_factory.mktemp("metrics") / "clickwatch.db"
    writer = StoreWriter(str(db))
    writer.start()
    writer.close()
    app = create_app(DashboardSettings(db=str(db), token=None))
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        answer = client.get("/metrics")
    assert answer.status_code == 200
    return {s.name for family in text_string_to_metric_families(answer.text) for s in family.samples}


def test_grafana_datasource_is_the_compose_prometheus_and_the_dashboard_uses_it() -> None:
    (source,) = load_yaml(DATASOURCE_YML)["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    uid = source["uid"]
    board = dashboard()
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
    for variable in board["templating"]["list"]:
        assert variable["datasource"] == {"type": "prometheus", "uid": uid}, variable["name"]


def test_dashboard_is_instance_aware() -> None:
    board = dashboard()
    assert board["uid"] == "clickwatch"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    instance = variables["instance"]
    assert instance["query"]["query"] == "label_values(clickwatch_build_info, instance)"
    assert instance["multi"] is True
    assert instance["includeAll"] is True
    assert instance["allValue"] == ".*"
    for name, variable in variables.items():
        if name != "instance":
            assert 'instance=~"$instance"' in variable["query"]["query"], name
    for expr in dashboard_queries():
        for metric, labels in selectors(expr):
            assert 'instance=~"$instance"' in labels, f"{metric} without the instance filter in: {expr}"


def test_dashboard_queries_only_name_metrics_clickwatch_exposes(exposed_names: set[str]) -> None:
    known = exposed_names | {"up"}  # `up` is Prometheus' own, per scraped proxy
    used = set()
    for expr in dashboard_queries():
        names = {metric for metric, _ in selectors(expr)}
        assert names, expr
        assert names <= known, f"unknown metric {sorted(names - known)} in: {expr}"
        used |= names
    # The panels the issue asks for: deliveries by verdict, failure ratio, findings by kind, latency
    # percentiles, pending deliveries, dropped deliveries and queue depth.
    assert {
        "clickwatch_deliveries_total",
        "clickwatch_findings_total",
        "clickwatch_delivery_duration_seconds_bucket",
        "clickwatch_deliveries_pending",
        "clickwatch_store_dropped_total",
        "clickwatch_store_queue_depth",
        # What the data-layer observer saw: pushes by schema beside the events sent, and its dropped reports.
        "clickwatch_datalayer_events_total",
        "clickwatch_observer_rejected_total",
    } <= used
    queries = "\n".join(dashboard_queries())
    assert "sum by (verdict) (rate(clickwatch_deliveries_total" in queries
    assert "sum by (finding) (rate(clickwatch_findings_total" in queries
    assert 'verdict=~"rejected|failed"' in queries
    for quantile in ("0.5", "0.95", "0.99"):
        assert (
            f"histogram_quantile({quantile}, sum by (le) (rate(clickwatch_delivery_duration_seconds_bucket" in queries
        )


def test_dashboard_layout_is_well_formed() -> None:
    panels = dashboard()["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        refs = [t["refId"] for t in panel.get("targets", [])]
        assert len(refs) == len(set(refs)), panel["title"]


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    rules = tmp_path / "dashboard-queries.yml"
    rules.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "dashboard",
                        "rules": [
                            {"record": f"dashboard:query{i}", "expr": concrete(e)}
                            for i, e in enumerate(dashboard_queries())
                        ],
                    }
                ]
            }
        )
    )
    result = subprocess.run([tool("promtool"), "check", "rules", str(rules)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the scrape path, for real -------------------------------------------------------------------------------


@pytest.mark.integration
def test_prometheus_started_as_compose_does_scrapes_clickwatch_with_the_token(
    tmp_path: Path, compose: dict[str, Any]
) -> None:
    """The compose entrypoint writes the token; prometheus.yml's file targets and every dashboard query work."""
    token = "s3cret-token"
    proxy_port, dashboard_port, prometheus_port = free_port(), free_port(), free_port()
    data = tmp_path / "prometheus-data"
    data.mkdir()
    token_file = data / "clickwatch.token"
    config = prometheus_config_copy(tmp_path, token_file)
    parsed = yaml.safe_load(config.read_text())
    parsed["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config.write_text(yaml.safe_dump(parsed))
    targets = config.parent / "targets" / "compose.yml"
    targets.write_text(targets.read_text().replace("clickwatch:8000", f"127.0.0.1:{dashboard_port}"))

    clickwatch = subprocess.Popen(
        [str(CLICKWATCH), "up", "--quiet", "--db", str(tmp_path / "cw.db"), "--proxy-port", str(proxy_port),
         "--dashboard-port", str(dashboard_port), "--set", f"confdir={tmp_path / 'mitm'}"],
        stdout=(tmp_path / "clickwatch.log").open("w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "CLICKWATCH_TOKEN": token},
    )  # fmt: skip
    service = compose["services"]["prometheus"]
    shell, flag, script, name = service["entrypoint"]
    script = unescape(script).replace(TOKEN_IN_CONTAINER, str(token_file))
    script = script.replace("/bin/prometheus", tool("prometheus"))
    command = [arg for arg in service["command"] if not arg.startswith(("--config.file=", "--storage.tsdb.path="))]
    command += [
        f"--config.file={config}",
        f"--storage.tsdb.path={data}",
        f"--web.listen-address=127.0.0.1:{prometheus_port}",
    ]
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CLICKWATCH_TOKEN": token}
    prometheus = subprocess.Popen(
        [shell, flag, script, name, *command],
        stdout=(tmp_path / "prometheus.log").open("w"),
        stderr=subprocess.STDOUT,
        env=environment,
    )
    api = httpx.Client(base_url=f"http://127.0.0.1:{prometheus_port}", timeout=5, trust_env=False)
    try:
        seen: list[Any] = []

        def scraped() -> dict[str, Any] | None:
            try:
                active = api.get("/api/v1/targets").json()["data"]["activeTargets"]
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                seen[:] = [repr(exc)]
                return None
            seen[:] = active
            return next((t for t in active if t["health"] == "up"), None)

        try:
            target = wait_until(scraped, 30, "Prometheus scraping clickwatch with the token")
        except pytest.fail.Exception:
            logs = {name: (tmp_path / f"{name}.log").read_text()[-2000:] for name in ("clickwatch", "prometheus")}
            pytest.fail(f"no target up; targets: {seen}; logs: {logs}")
        assert target["labels"]["job"] == "clickwatch"
        assert target["labels"]["instance"] == "compose"
        assert token_file.read_text() == token
        assert token_file.stat().st_mode & 0o077 == 0

        def instances() -> list[str]:
            answer = api.get("/api/v1/label/instance/values", params={"match[]": "clickwatch_build_info"})
            return list(answer.json()["data"])

        assert wait_until(instances, 10, "the dashboard's instance variable") == ["compose"]
        for expr in dashboard_queries():
            answer = api.get("/api/v1/query", params={"query": concrete(expr)}).json()
            assert answer["status"] == "success", f"{expr}: {answer}"
        (versions,) = [e for e in dashboard_queries() if "clickwatch_build_info" in e]
        build = api.get("/api/v1/query", params={"query": concrete(versions)}).json()
        assert [r["metric"]["instance"] for r in build["data"]["result"]] == ["compose"]
    finally:
        api.close()
        prometheus.terminate()
        prometheus.wait(10)
        clickwatch.send_signal(signal.SIGTERM)
        clickwatch.wait(20)
