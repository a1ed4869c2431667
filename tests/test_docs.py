"""The README is part of the product: every option and flag must be documented there."""

from pathlib import Path

from mitmproxy.test import taddons

from clickwatch.addon.capture import Clickwatch
from clickwatch.cli.main import build_parser

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_addon_option_is_documented():
    addon = Clickwatch()
    with taddons.context(addon) as tctx:
        options = sorted(
            name
            for name in tctx.options.keys()  # noqa: SIM118 (OptManager is not iterable)
            if name.startswith("clickwatch_")
        )
        addon.done()
    assert options
    missing = [name for name in options if f"`{name}`" not in README]
    assert missing == []


def test_every_command_and_flag_is_documented():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    missing = []
    for name, command in subparsers.choices.items():
        if f"clickwatch {name}" not in README:
            missing.append(name)
        flags = [o for a in command._actions for o in a.option_strings if o.startswith("--") and o != "--help"]
        missing += [f"{name} {flag}" for flag in flags if f"`{flag}" not in README]
    assert missing == []


def test_readme_names_the_two_commands_ci_runs():
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert "make up" in README
    assert "make test" in README
    assert "make test" in ci


def test_every_configuration_key_is_documented():
    from clickwatch.core.config import DOCUMENTED_KEYS

    missing = [key for key in DOCUMENTED_KEYS if f"`{key}`" not in README]
    assert missing == []


def test_every_finding_kind_is_documented():
    from clickwatch.core.findings import FindingKind

    missing = [kind.value for kind in FindingKind if f"| `{kind.value}` |" not in README]
    assert missing == []


def test_readme_toml_example_is_a_valid_configuration(tmp_path):
    from clickwatch.core.config import Config, load_config

    example = README.split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "clickwatch.toml"
    path.write_text(example)
    assert load_config(str(path)) == Config()
