"""The settings table (core.settings) is the one declaration: every surface derived from it must agree with it."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons

from clickwatch.addon.capture import Clickwatch
from clickwatch.cli.main import build_parser, resolve
from clickwatch.core import settings
from clickwatch.core.config import DOCUMENTED_KEYS, Config, config_from_mapping
from clickwatch.core.settings import BY_NAME, COMMANDS, SETTINGS, CommandSettings
from clickwatch.dashboard.settings import DashboardSettings
from clickwatch.store import worker

DOC = Path(__file__).resolve().parent.parent / "docs" / "settings.md"

# A value unlike the default, per type, as the file gives it and as text (flag, environment).
SAMPLES: dict[type, tuple[Any, str]] = {
    str: ("other", "other"),
    int: (4242, "4242"),
    float: (7.5, "7.5"),
    tuple: (("other", "more"), "other, more"),
}


def sample(setting: settings.Setting) -> tuple[Any, str]:
    if setting.type is bool:
        return (not setting.default, "true" if not setting.default else "false")
    if setting.addresses:
        return (("10.0.0.1", "192.0.2.0/24"), "10.0.0.1, 192.0.2.0/24")
    return SAMPLES[setting.type]


def subcommands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if a.dest == "command")
    return dict(action.choices)  # type: ignore[arg-type]


def test_names_are_unique_and_helped():
    for attribute in ("name", "flag", "env", "key", "option"):
        names = [getattr(s, attribute) for s in SETTINGS if getattr(s, attribute)]
        assert len(names) == len(set(names)), attribute
    for s in SETTINGS:
        assert s.help.endswith(".") and len(s.help) > 25, s.name
        assert set(s.used_by) <= set(settings.USED_BY), s.name
        assert not s.env or s.env.startswith(settings.ENV_PREFIX)
        assert not s.option or s.option.startswith(settings.OPTION_PREFIX)
        assert s.type is dict or isinstance(s.default, s.type), s.name


def test_addon_options_are_the_tables():
    addon = Clickwatch()
    with taddons.context(addon) as tctx:
        declared = {
            name: tctx.options._options[name]
            for name in tctx.options.keys()  # noqa: SIM118 (OptManager is not iterable)
            if name.startswith(settings.OPTION_PREFIX)
        }
        addon.done()
    expected = {o.name: o for o in settings.addon_options()}
    assert set(declared) == set(expected) == {s.option for s in SETTINGS if s.option}
    for name, option in declared.items():
        want = expected[name]
        assert (option.typespec, option.default, option.help, option.choices) == (
            want.typespec,
            want.default,
            want.help,
            want.choices,
        ), name
        # A judged setting's option is unset until given, so that any value given overrides the file.
        assert (option.default is None) == settings.BY_OPTION[name].judged


def test_cli_flags_are_the_tables():
    commands = subcommands()
    for command in COMMANDS:
        flags = {
            flag: action.dest
            for action in commands[command]._actions
            for flag in action.option_strings
            if action.dest in BY_NAME
        }
        assert flags == {s.flag: s.name for s in settings.for_command(command)}, command
        for action in commands[command]._actions:
            if action.dest in BY_NAME:
                assert action.default is None, f"{command} {action.option_strings}: a default hides the environment"
    demo = {a.dest: a.default for a in commands["demo"]._actions}
    assert demo["proxy_port"] == BY_NAME["proxy_port"].default
    assert demo["dashboard_port"] == BY_NAME["dashboard_port"].default


def test_every_flag_belongs_to_a_command():
    for s in SETTINGS:
        if s.flag:
            assert set(s.used_by) & set(COMMANDS), s.name


def test_command_settings_are_the_flagged_settings():
    fields = {f.name: f.default for f in dataclasses.fields(CommandSettings)}
    assert fields == {s.name: s.default for s in SETTINGS if s.flag}


@pytest.mark.parametrize("command", COMMANDS)
def test_each_environment_variable_reaches_its_command(command, monkeypatch, tmp_path):
    config_file = tmp_path / "env.toml"
    config_file.write_text("[consent]\ngrace_seconds = 3\n")
    for s in settings.for_command(command):
        assert s.env, f"{s.flag} has no environment variable"
        value, text = (str(config_file), str(config_file)) if s.name == "config" else sample(s)
        monkeypatch.setenv(s.env, text)
        args = build_parser().parse_args([command, *(["x.har"] if command == "import" else [])])
        given, config = resolve(args)
        assert getattr(given, s.name) == value, s.env
        assert config.grace_seconds == (3.0 if s.name == "config" else Config().grace_seconds)
        monkeypatch.delenv(s.env)


def test_dashboard_settings_are_the_tables(monkeypatch):
    fields = DashboardSettings.model_fields
    dashboard = [s for s in SETTINGS if "dashboard" in s.used_by]
    assert set(fields) == {s.name for s in dashboard}
    for s in dashboard:
        # The dashboard says "no token" with None; the table with "".
        assert (fields[s.name].default or s.type()) == s.default, s.name
        assert s.env == settings.ENV_PREFIX + s.name.upper()
        value, text = sample(s)
        monkeypatch.setenv(s.env, text)
        assert getattr(DashboardSettings(), s.name) == value, s.env


def test_config_is_the_judged_settings():
    fields = {f.name: f.default for f in dataclasses.fields(Config) if f.name != "source"}
    judged = [s for s in SETTINGS if s.judged]
    assert set(fields) == {s.name for s in judged}
    for s in judged:
        if s.type is not dict:
            assert fields[s.name] == s.default, s.name


def test_configuration_keys_are_the_tables():
    assert settings.documented_keys() == DOCUMENTED_KEYS
    sections = {s.section for s in SETTINGS if s.section}
    assert {key.partition(".")[0] for key in DOCUMENTED_KEYS} == sections
    for s in SETTINGS:
        if not s.key or s.type is dict:
            continue
        section, _, key = s.key.partition(".")
        value, _text = sample(s)
        if s.pattern:
            value = "x"
        data = {section: {key: value}}
        assert settings.from_mapping(data) == {s.name: value}, s.key
        config = config_from_mapping(data)
        if s.judged:
            assert getattr(config, s.name) == value, s.key
        else:
            assert config == Config(), s.key


def test_store_process_arguments_default_to_the_table():
    args = worker.build_parser().parse_args(["--db", "x.db"])
    assert args.queue_size == BY_NAME["queue_size"].default
    assert args.shutdown_timeout == BY_NAME["shutdown_timeout"].default


def test_the_reference_is_generated_from_the_table():
    assert DOC.read_text(encoding="utf-8") == settings.markdown(), (
        "docs/settings.md is stale: python -m clickwatch.core.settings --markdown > docs/settings.md"
    )


def test_the_reference_names_every_flag_variable_key_and_option():
    text = settings.markdown()
    for s in SETTINGS:
        for name in (s.flag, s.env, s.option):
            if name:
                assert f"`{name}`" in text
    for key in DOCUMENTED_KEYS:
        assert f"`{key}`" in text


# --- behaviour the table gives -------------------------------------------------------------------------------------


def write_config(tmp_path: Path) -> str:
    path = tmp_path / "clickwatch.toml"
    path.write_text("[capture]\nbody_limit = 10\n[observer]\nenabled = false\n")
    return str(path)


def test_an_addon_option_set_to_its_default_overrides_the_file(tmp_path):
    addon = Clickwatch()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, clickwatch_db=str(tmp_path / "cw.db"), clickwatch_config=write_config(tmp_path))
        assert (addon.config.body_limit, addon.config.observer_enabled) == (10, False)
        tctx.configure(addon, clickwatch_body_limit=65536, clickwatch_observer="true")
        assert (addon.config.body_limit, addon.config.observer_enabled) == (65536, True)
        assert addon.observer.enabled
        tctx.configure(addon, clickwatch_body_limit=None, clickwatch_observer=None)  # unset again: the file decides
        assert (addon.config.body_limit, addon.config.observer_enabled) == (10, False)
        addon.done()


def test_an_addon_switch_takes_true_or_false(tmp_path):
    addon = Clickwatch()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, clickwatch_db=str(tmp_path / "cw.db"))
        with pytest.raises(exceptions.OptionsError, match="clickwatch_observer: expected true or false, got 'maybe'"):
            tctx.configure(addon, clickwatch_observer="maybe")
        tctx.configure(addon, clickwatch_observer="false")
        assert addon.config.observer_enabled is False
        addon.done()
