"""How a command resolves its settings: flag, else environment, else configuration file, else default."""

from __future__ import annotations

from pathlib import Path

import pytest

from clickwatch.cli.main import EXIT_USAGE, build_parser, main, resolve
from clickwatch.cli.up import addon_options
from clickwatch.core.settings import CommandSettings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in ("DB", "CONFIG", "PROXY_PORT", "DASHBOARD_PORT", "LISTEN_HOST", "TOKEN", "QUIET", "OBSERVER", "URL"):
        monkeypatch.delenv(f"CLICKWATCH_{name}", raising=False)


def config_file(tmp_path: Path) -> str:
    path = tmp_path / "clickwatch.toml"
    path.write_text(
        "[up]\nproxy_port = 9001\ndashboard_port = 9002\nquiet = true\ntoken = 'from-file'\n"
        "[store]\ndb = 'file.db'\n[observer]\nenabled = false\n"
    )
    return str(path)


def up(*argv: str) -> CommandSettings:
    return resolve(build_parser().parse_args(["up", *argv]))[0]


def test_defaults_without_flags_environment_or_file():
    assert up() == CommandSettings()
    assert (up().proxy_port, up().db, up().observer_enabled) == (8080, "clickwatch.db", True)


def test_flag_beats_environment_beats_file_beats_default(tmp_path, monkeypatch):
    path = config_file(tmp_path)
    from_file = up("--config", path)
    assert (from_file.proxy_port, from_file.dashboard_port, from_file.db) == (9001, 9002, "file.db")
    assert (from_file.quiet, from_file.token, from_file.observer_enabled) == (True, "from-file", False)
    assert from_file.listen_host == "127.0.0.1"  # not in the file: the default
    monkeypatch.setenv("CLICKWATCH_PROXY_PORT", "9101")
    monkeypatch.setenv("CLICKWATCH_OBSERVER", "true")
    from_env = up("--config", path)
    assert (from_env.proxy_port, from_env.dashboard_port, from_env.observer_enabled) == (9101, 9002, True)
    from_flag = up("--config", path, "--proxy-port", "9201", "--no-observer")
    assert (from_flag.proxy_port, from_flag.observer_enabled) == (9201, False)


def test_the_configuration_file_comes_from_the_environment_too(tmp_path, monkeypatch):
    monkeypatch.setenv("CLICKWATCH_CONFIG", config_file(tmp_path))
    assert up().proxy_port == 9001


def test_a_setting_the_command_does_not_take_is_left_alone(monkeypatch):
    monkeypatch.setenv("CLICKWATCH_PROXY_PORT", "not a port")  # `export` has no --proxy-port: not read, not checked
    given, _ = resolve(build_parser().parse_args(["export", "--db", "x.db"]))
    assert (given.db, given.proxy_port) == ("x.db", 8080)


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--proxy-port", "70000"], {}, "clickwatch: --proxy-port: must be a port number 1-65535, not 70000\n"),
        ([], {"CLICKWATCH_DASHBOARD_PORT": "0"}, "CLICKWATCH_DASHBOARD_PORT='0': must be a port number 1-65535"),
        ([], {"CLICKWATCH_PROXY_PORT": "eighty"}, "CLICKWATCH_PROXY_PORT='eighty': expected a whole number"),
        ([], {"CLICKWATCH_QUIET": "maybe"}, "CLICKWATCH_QUIET='maybe': expected true or false"),
        ([], {"CLICKWATCH_CONFIG": "/no/such.toml"}, "/no/such.toml: cannot read configuration"),
    ],
)
def test_a_bad_setting_is_a_one_line_usage_error(argv, env, message, monkeypatch, capsys):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["up", *argv]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1


def test_a_bad_file_value_names_the_file_and_key(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text("[up]\nproxy_port = 0\n")
    assert main(["up", "--config", str(path)]) == EXIT_USAGE
    assert f"{path}: up.proxy_port: must be a port number 1-65535, got 0" in capsys.readouterr().err


def test_up_hands_its_addon_settings_on_as_options(tmp_path):
    given = up("--config", config_file(tmp_path), "--db", "flag.db")
    assert addon_options(given) == {
        "clickwatch_db": "flag.db",
        "clickwatch_config": str(tmp_path / "clickwatch.toml"),
        "clickwatch_observer": "false",
        "clickwatch_storefront": (),
    }


def test_check_reads_the_url_and_token_from_the_environment(monkeypatch):
    monkeypatch.setenv("CLICKWATCH_URL", "http://10.0.0.5:8000")
    monkeypatch.setenv("CLICKWATCH_TOKEN", "t0ken")
    given, _ = resolve(build_parser().parse_args(["check"]))
    assert (given.url, given.token) == ("http://10.0.0.5:8000", "t0ken")
    given, _ = resolve(build_parser().parse_args(["check", "--url", "http://127.0.0.1:9"]))
    assert given.url == "http://127.0.0.1:9"
