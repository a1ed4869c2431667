"""The docs are part of the product: the README is a front page, and the reference in docs/ names every
option, flag, configuration key, finding, metric and API route the code has; every link and cited file exists."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = (ROOT / "README.md").read_text()
README_LIMIT = 10_240
PACKAGES = ("addon", "cli", "core", "dashboard", "standin", "store", "testing")
# What each package may import from the others: the arrows run one way (docs/internals.md).
ALLOWED_IMPORTS = {
    "core": set(),
    "standin": set(),
    "store": {"core"},
    "addon": {"core", "store"},
    "dashboard": {"core", "store"},
    "cli": {"core", "store", "addon", "dashboard", "standin"},
    "testing": {"core", "store", "cli", "standin"},
}


def doc(name: str) -> str:
    """The text of one reference page."""
    return (DOCS / name).read_text()


def all_docs() -> str:
    """Every page under docs/, together."""
    return "\n".join(path.read_text() for path in sorted(DOCS.glob("*.md")))


def markdown_files() -> list[Path]:
    """The README, every reference page and the benchmarks' README: the files whose links must hold."""
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md")), ROOT / "bench" / "README.md"]


def test_readme_is_a_front_page():
    size = len(README.encode())
    assert size <= README_LIMIT, f"README.md is {size} bytes; the reference belongs in docs/"


def test_readme_names_the_two_commands_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make up" in README
    assert "make test" in README
    assert "make test" in ci


def test_every_addon_option_is_documented():
    from mitmproxy.test import taddons

    from clickwatch.addon.capture import Clickwatch

    addon = Clickwatch()
    with taddons.context(addon) as tctx:
        options = sorted(
            name
            for name in tctx.options.keys()  # noqa: SIM118 (OptManager is not iterable)
            if name.startswith("clickwatch_")
        )
        addon.done()
    assert options
    text = all_docs()
    missing = [name for name in options if f"`{name}`" not in text]
    assert missing == []


def test_every_command_and_flag_is_in_the_cli_reference():
    from clickwatch.cli.main import build_parser

    cli = doc("cli.md")
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    missing = []
    for name, command in subparsers.choices.items():
        if f"## `clickwatch {name}" not in cli:
            missing.append(name)
        flags = [o for a in command._actions for o in a.option_strings if o.startswith("--") and o != "--help"]
        missing += [f"{name} {flag}" for flag in flags if f"`{flag}" not in cli]
    assert missing == []


def test_every_configuration_key_is_documented():
    from clickwatch.core.config import DOCUMENTED_KEYS

    configuration = doc("configuration.md")
    missing = [key for key in DOCUMENTED_KEYS if f"`{key}`" not in configuration]
    assert missing == []


def test_configuration_example_is_a_valid_configuration(tmp_path):
    from clickwatch.core.config import Config, load_config

    example = doc("configuration.md").split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "clickwatch.toml"
    path.write_text(example)
    assert load_config(str(path)) == Config()


def test_every_finding_kind_is_documented():
    from clickwatch.core.findings import DEFAULT_SEVERITY, FindingKind

    findings = doc("findings.md")
    missing = [
        kind.value for kind in FindingKind if f"| `{kind.value}` | {DEFAULT_SEVERITY[kind].value} |" not in findings
    ]
    assert missing == []


def _exported_metrics(tmp_path: Path) -> dict[str, str]:
    """Every metric family /metrics exposes, by its exposition name, with its type."""
    from fastapi.testclient import TestClient

    from clickwatch.dashboard.main import create_app
    from clickwatch.dashboard.settings import DashboardSettings

    app = create_app(DashboardSettings(db=str(tmp_path / "absent.db")))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        text = client.get("/metrics").text
    types = dict(line.split()[2:4] for line in text.splitlines() if line.startswith("# TYPE "))
    # The text format names a counter family without `_total`; its samples, and the docs, carry it.
    return {
        (f"{name}_total" if kind == "counter" and not name.endswith("_total") else name): kind
        for name, kind in types.items()
    }


def test_every_metric_is_documented(tmp_path):
    metrics = _exported_metrics(tmp_path)
    assert "clickwatch_deliveries_total" in metrics
    page = doc("metrics.md")
    missing = [f"{name} ({kind})" for name, kind in metrics.items() if f"| `{name}` | {kind} |" not in page]
    assert missing == []


def test_every_alert_rule_is_documented():
    import yaml

    rules = yaml.safe_load((ROOT / "monitoring" / "prometheus" / "alerts.yml").read_text())
    page = doc("metrics.md")
    alerts = [rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule]
    assert alerts
    missing = [alert for alert in alerts if f"| `{alert}` |" not in page]
    assert missing == []


def _routes(routes: list, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(method, path) of every route, following included routers whichever way FastAPI keeps them."""
    from fastapi.routing import APIRoute

    for route in routes:
        if isinstance(route, APIRoute):
            for method in sorted(route.methods - {"HEAD"}):
                yield method, prefix + route.path
        elif hasattr(route, "original_router"):
            yield from _routes(route.original_router.routes, prefix + route.include_context.prefix)


def test_every_route_is_in_the_api_reference(tmp_path):
    from clickwatch.dashboard.main import create_app
    from clickwatch.dashboard.settings import DashboardSettings

    app = create_app(DashboardSettings(db=str(tmp_path / "absent.db")))
    routes = sorted(set(_routes(app.routes)))
    assert ("GET", "/api/deliveries") in routes
    api = doc("api.md")
    missing = [
        f"{method} {path}" for method, path in routes if not re.search(rf"`{method} {re.escape(path)}[`?,]", api)
    ]
    assert missing == []


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.M)}


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_a_file_that_exists(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # an absolute URL
        file_part, _, anchor = target.partition("#")
        linked = (page.parent / file_part).resolve() if file_part else page
        missing_anchor = bool(anchor) and linked.suffix == ".md" and linked.exists() and anchor not in _anchors(linked)
        if not linked.exists() or missing_anchor:
            broken.append(target)
    assert broken == []


def _text_files() -> Iterator[Path]:
    for folder in (*PACKAGES, "tests", "bench", "docs", "monitoring", "scripts"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file() and path.suffix in {".py", ".md", ".yml", ".yaml", ".js", ".html", ".toml", ""}:
                yield path
    yield from (ROOT / name for name in ("README.md", "Makefile", "Dockerfile", "docker-compose.yml", "pyproject.toml"))


# A cited file: a Markdown file by name, or a path into one of the repository's folders.
CITATION = re.compile(
    r"(?<![\w/.-])((?:(?:addon|cli|core|dashboard|standin|store|bench|docs|monitoring|scripts|tests)/[\w./-]*\w)"
    r"|[\w-]+\.md)\b"
)


def _ignored(cited: str) -> bool:
    """Paths git ignores (caches, benchmark results) may be named without existing."""
    patterns = [line.strip().rstrip("/") for line in (ROOT / ".gitignore").read_text().splitlines() if line.strip()]
    return any(part in patterns for part in Path(cited).parts) or any(cited.startswith(p) for p in patterns)


def test_nothing_cites_a_file_that_is_not_in_the_repository():
    missing = []
    for path in _text_files():
        if "__pycache__" in path.parts:
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for cited in set(CITATION.findall(text)):
            if "*" in cited or _ignored(cited):
                continue
            candidates = [ROOT / cited, path.parent / cited, DOCS / cited]
            if not any(candidate.exists() for candidate in candidates):
                missing.append(f"{path.relative_to(ROOT)}: {cited}")
    assert missing == []


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name.split(".")[1] for name in names if name.startswith("clickwatch.") and name.count(".") >= 1}


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_only_along_the_documented_arrows(package):
    wrong = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for imported in _imported_packages(path) - {package} - ALLOWED_IMPORTS[package]:
            wrong.append(f"{path.relative_to(ROOT)} imports clickwatch.{imported}")
    assert wrong == []


def test_every_module_opens_with_a_docstring():
    undocumented = [
        str(path.relative_to(ROOT))
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if "__pycache__" not in path.parts and not ast.get_docstring(ast.parse(path.read_text()))
    ]
    assert undocumented == []


def test_the_core_never_imports_mitmproxy_or_fastapi():
    adapters = {"mitmproxy", "fastapi", "starlette", "uvicorn", "prometheus_client"}
    wrong = []
    for path in sorted((ROOT / "core").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            wrong += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in adapters]
    assert wrong == []


# A test cited in docs/reliability.md: a test file, optionally with `::` and the names down to a test function.
CITED_TEST = re.compile(r"(?<![\w/.-])(tests/[\w/]+\.py)((?:::\w+)*)")


def test_every_test_the_reliability_report_cites_exists():
    text = doc("reliability.md")
    cited = set(CITED_TEST.findall(text))
    assert sum(1 for _, names in cited if names) >= 40  # the report names its tests, not only their files
    missing = []
    for path, names in sorted(cited):
        source = ROOT / path
        if not source.is_file():
            missing.append(path)
            continue
        code = source.read_text()
        missing += [
            f"{path}::{name}"
            for name in names.split("::")[1:]
            if not re.search(rf"^\s*(def|class) {name}\b", code, re.M)
        ]
    assert missing == []
