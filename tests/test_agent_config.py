"""monapi-agent's settings: defaults, the TOML file, MONAPI_AGENT_* and flags (in that order of
precedence), the messages of a wrong setting, and the owner-only config file it writes."""

from __future__ import annotations

import logging
import math
import stat
import tomllib
from pathlib import Path
from typing import Any

import pytest

from monapi_agent import config
from monapi_agent.collect import Filters
from monapi_agent.config import (
    ConfigError,
    Settings,
    load,
    parse_assignments,
    parse_duration,
    read_file,
    warn_if_exposed,
    write_file,
)

KEY = "mks_12_abcdef"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user (not root) whose XDG directories are under tmp_path."""
    monkeypatch.setattr(config, "_is_root", lambda: False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    return tmp_path


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    return tmp_path / "etc" / "agent.toml"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --- defaults and where the files are -------------------------------------------------------------


def test_defaults_without_a_config_file(home: Path, conf: Path) -> None:
    s = load(conf, env={})
    assert s == Settings(config_path=conf)
    assert s.url is None and s.key is None and s.hostname is None and s.server_id is None
    assert s.spool_path == home / "xdg-state" / "monapi-agent" / "spool.db"
    assert s.spool_max_mb == 100.0
    assert s.spool_max_bytes == 100 * 1024 * 1024
    assert s.spool_max_age == 7 * 86400.0
    assert (s.timeout, s.retry_min, s.retry_max, s.config_refresh) == (10.0, 1.0, 300.0, 60.0)
    assert s.batch_max_points == 5000
    assert s.default_interval == 10
    assert s.ca_file is None
    assert s.log_level == "info"
    assert s.filters == Filters()
    assert not conf.exists()  # loading never creates the file


def test_default_paths_follow_xdg_for_a_user(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert config.default_config_path() == home / "xdg-config" / "monapi-agent" / "agent.toml"
    assert config.default_spool_path() == home / "xdg-state" / "monapi-agent" / "spool.db"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(home / "user"))
    assert config.default_config_path() == home / "user" / ".config" / "monapi-agent" / "agent.toml"
    assert config.default_spool_path() == (
        home / "user" / ".local" / "state" / "monapi-agent" / "spool.db"
    )


def test_default_paths_for_root_are_system_wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "_is_root", lambda: True)
    assert config.default_config_path() == Path("/etc/monapi-agent/agent.toml")
    assert config.default_spool_path() == Path("/var/lib/monapi-agent/spool.db")


def test_without_a_path_the_default_config_file_is_read(home: Path) -> None:
    default = write(config.default_config_path(), "timeout = 3\n")
    s = load(env={})
    assert s.config_path == default
    assert s.timeout == 3.0


def test_monapi_agent_config_names_the_file_and_it_must_exist(tmp_path: Path) -> None:
    chosen = write(tmp_path / "chosen.toml", "retry_max = '2m'\n")
    s = load(env={"MONAPI_AGENT_CONFIG": str(chosen)})
    assert s.config_path == chosen
    assert s.retry_max == 120.0
    with pytest.raises(ConfigError, match=r"config file .*missing\.toml does not exist"):
        load(env={"MONAPI_AGENT_CONFIG": str(tmp_path / "missing.toml")})


def test_a_missing_file_is_an_error_only_when_it_must_exist(home: Path, conf: Path) -> None:
    assert load(conf, env={}).url is None
    with pytest.raises(ConfigError) as err:
        load(conf, env={}, must_exist=True)
    assert str(err.value) == f"config file {conf} does not exist"


# --- precedence -----------------------------------------------------------------------------------


def test_the_environment_overrides_the_file_and_flags_override_both(home: Path, conf: Path) -> None:
    write(
        conf,
        'url = "http://file.example:8000"\n'
        f'key = "{KEY}"\n'
        'timeout = "5s"\n'
        "retry_max = 100\n"
        'log_level = "warning"\n',
    )
    env = {"MONAPI_AGENT_TIMEOUT": "7", "MONAPI_AGENT_URL": "http://env.example"}

    s = load(conf, env=env, overrides={"timeout": "9s", "url": None})

    assert s.timeout == 9.0  # flag over environment over file
    assert s.url == "http://env.example"  # environment over file (the flag was not given)
    assert s.key == KEY  # file only
    assert s.retry_max == 100.0
    assert s.log_level == "warning"
    assert s.retry_min == 1.0  # default
    assert load(conf, env=env).timeout == 7.0
    assert load(conf, env={}).timeout == 5.0


def test_empty_environment_variables_are_ignored(home: Path, conf: Path) -> None:
    write(conf, "timeout = 4\n")
    s = load(conf, env={"MONAPI_AGENT_TIMEOUT": "", "MONAPI_AGENT_URL": ""})
    assert s.timeout == 4.0
    assert s.url is None


def test_lists_from_the_environment_and_flags_are_comma_separated(home: Path, conf: Path) -> None:
    write(conf, 'ignore_mounts = ["/file/*"]\nignore_fstypes = ["nfs", "cifs"]\n')
    s = load(
        conf,
        env={"MONAPI_AGENT_IGNORE_MOUNTS": " /mnt/* , /media/*,, "},
        overrides={"ignore_interfaces": "lo,docker*"},
    )
    assert s.ignore_mounts == ("/mnt/*", "/media/*")
    assert s.ignore_fstypes == ("nfs", "cifs")
    assert s.ignore_interfaces == ("lo", "docker*")
    assert s.ignore_devices == Filters.ignore_devices
    assert s.filters == Filters(
        ignore_mounts=("/mnt/*", "/media/*"),
        ignore_fstypes=("nfs", "cifs"),
        ignore_devices=Filters.ignore_devices,
        ignore_interfaces=("lo", "docker*"),
    )


def test_an_empty_list_clears_the_default_patterns(home: Path, conf: Path) -> None:
    write(conf, "ignore_mounts = []\n")
    assert load(conf, env={}).ignore_mounts == ()


# --- paths ----------------------------------------------------------------------------------------


def test_a_relative_spool_path_in_the_file_is_relative_to_the_files_directory(
    home: Path, conf: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    write(conf, 'spool_path = "state/spool.db"\nca_file = "ca.pem"\n')
    monkeypatch.chdir(tmp_path)
    s = load(conf, env={})
    assert s.spool_path == conf.parent / "state" / "spool.db"
    assert s.ca_file == conf.parent / "ca.pem"


def test_a_relative_path_from_the_environment_is_relative_to_the_working_directory(
    home: Path, conf: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    s = load(conf, env={"MONAPI_AGENT_SPOOL_PATH": "here.db"})
    assert s.spool_path == tmp_path / "here.db"


def test_absolute_and_home_relative_paths(
    home: Path, conf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(home / "user"))
    write(conf, 'spool_path = "~/spool.db"\nca_file = "/etc/ssl/ca.pem"\n')
    s = load(conf, env={})
    assert s.spool_path == home / "user" / "spool.db"
    assert s.ca_file == Path("/etc/ssl/ca.pem")


# --- conversions ----------------------------------------------------------------------------------


def test_values_are_normalised(home: Path, conf: Path) -> None:
    write(
        conf,
        'url = "  https://mon.example:8443/monapi/ "\n'
        f'key = "{KEY}  "\n'
        'hostname = " web-01 "\n'
        'server_id = "12"\n'
        "batch_max_points = 100.0\n"
        'spool_max_mb = "0.5"\n'
        'log_level = "DEBUG"\n'
        'config_refresh = "1.5m"\n'
        'spool_max_age = "250ms"\n',
    )
    s = load(conf, env={})
    assert s.url == "https://mon.example:8443/monapi"
    assert s.key == KEY
    assert s.hostname == "web-01"
    assert s.server_id == 12
    assert s.batch_max_points == 100
    assert s.spool_max_bytes == 512 * 1024
    assert s.log_level == "debug"
    assert s.config_refresh == 90.0
    assert s.spool_max_age == 0.25


@pytest.mark.parametrize(
    ("line", "fragments"),
    [
        ('colour = "blue"', ["unknown setting 'colour'", "the settings are: url, key"]),
        ('config_path = "/x"', ["unknown setting 'config_path'"]),
        ('timeout = "soon"', ["timeout = 'soon'", "is not a duration", "30s, 5m"]),
        ('timeout = "-5s"', ["timeout = '-5s'", "is not a duration"]),
        ('timeout = "5 minutes"', ["timeout = '5 minutes'", "is not a duration"]),
        ("timeout = 0", ["timeout = 0", "must be more than 0"]),
        ("retry_min = -1", ["retry_min = -1", "cannot be negative"]),
        ("retry_max = true", ["retry_max = True", "expected a duration"]),
        ("config_refresh = nan", ["config_refresh = nan", "expected a duration"]),
        ("spool_max_age = inf", ["spool_max_age = inf", "expected a duration"]),
        ('url = "ftp://mon.example"', ["url = 'ftp://mon.example'", "http:// or https://"]),
        ('url = "http://"', ["url = 'http://'", "http:// or https://"]),
        ('url = "http://h/?a=1"', ["takes no query or fragment"]),
        ("url = 8000", ["url = 8000", "expected a URL string"]),
        ('key = "abc"', ["key = 'abc'", "expected a server key (mks_...)"]),
        ("key = 12", ["key = 12", "expected a server key"]),
        ('hostname = "  "', ["hostname = '  '", "expected a host name"]),
        ("server_id = 1.5", ["server_id = 1.5", "expected a whole number"]),
        ("server_id = true", ["server_id = True", "expected a whole number"]),
        ('server_id = "twelve"', ["server_id = 'twelve'", "expected a whole number"]),
        ("default_interval = 0", ["default_interval = 0", "must be at least 1"]),
        ("default_interval = inf", ["default_interval = inf", "expected a whole number"]),
        ("batch_max_points = nan", ["batch_max_points = nan", "expected a whole number"]),
        ("spool_max_mb = 0", ["spool_max_mb = 0", "must be more than 0"]),
        ('spool_max_mb = "lots"', ["spool_max_mb = 'lots'", "megabytes"]),
        ("spool_max_mb = inf", ["spool_max_mb = inf", "megabytes"]),
        ("spool_max_mb = false", ["spool_max_mb = False", "megabytes"]),
        ('log_level = "loud"', ["log_level = 'loud'", "debug, info, warning, error"]),
        ("ignore_mounts = [1, 2]", ["ignore_mounts = [1, 2]", "list of glob patterns"]),
        ("ignore_mounts = 5", ["expected a list of glob patterns"]),
        ('spool_path = ""', ["spool_path = ''", "expected a file path"]),
        ("ca_file = 5", ["ca_file = 5", "expected a file path"]),
    ],
)
def test_a_wrong_setting_in_the_file_names_the_file_and_the_setting(
    home: Path, conf: Path, line: str, fragments: list[str]
) -> None:
    write(conf, f"{line}\n")
    with pytest.raises(ConfigError) as err:
        load(conf, env={})
    text = str(err.value)
    assert text.startswith(f"config file {conf}: "), text
    for fragment in fragments:
        assert fragment in text, text


def test_a_wrong_environment_variable_is_named(home: Path, conf: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load(conf, env={"MONAPI_AGENT_RETRY_MIN": "quick"})
    assert str(err.value).startswith("environment MONAPI_AGENT_RETRY_MIN: retry_min = 'quick': ")


def test_a_wrong_flag_is_named(home: Path, conf: Path) -> None:
    with pytest.raises(ConfigError, match=r"^flag: batch_max_points = 'x': expected a whole"):
        load(conf, env={}, overrides={"batch_max_points": "x"})
    with pytest.raises(ConfigError, match=r"^flag: unknown setting 'nope'"):
        load(conf, env={}, overrides={"nope": "1"})


def test_retry_min_above_retry_max_is_an_error_that_says_where_each_came_from(
    home: Path, conf: Path
) -> None:
    write(conf, 'retry_min = "10s"\n')
    with pytest.raises(ConfigError) as err:
        load(conf, env={"MONAPI_AGENT_RETRY_MAX": "5s"})
    text = str(err.value)
    assert f"retry_min (10s, config file {conf})" in text
    assert "retry_max (5s, environment MONAPI_AGENT_RETRY_MAX)" in text
    with pytest.raises(ConfigError, match=r"retry_min \(400s, flag\).*retry_max \(300s, default\)"):
        load(conf, env={}, overrides={"retry_min": "400s", "retry_max": None})
    assert load(conf, env={"MONAPI_AGENT_RETRY_MAX": "10s"}).retry_max == 10.0  # equal is fine


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'url = "http://x"\nkey = \n', "is not valid TOML"),
        (b'[server]\nurl = "http://x"\nurl = "y"\n', "is not valid TOML"),
        (b'hostname = "caf\xe9"\n', "is not UTF-8 text"),
    ],
)
def test_an_unreadable_config_file_is_named(conf: Path, content: bytes, expected: str) -> None:
    conf.parent.mkdir(parents=True)
    conf.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        read_file(conf)
    assert str(conf) in str(err.value)
    assert expected in str(err.value)


def test_a_directory_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        read_file(tmp_path)


def test_require_server_says_how_to_get_a_url_and_key(home: Path, conf: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load(conf, env={}).require_server()
    assert f"no server URL in {conf}" in str(err.value)
    assert "monapi-agent register --url URL --enroll-token TOKEN" in str(err.value)
    with pytest.raises(ConfigError, match=r"no server key .*MONAPI_AGENT_KEY"):
        load(conf, env={"MONAPI_AGENT_URL": "http://x"}).require_server()
    url, key = load(
        conf, env={"MONAPI_AGENT_URL": "http://x/", "MONAPI_AGENT_KEY": KEY}
    ).require_server()
    assert (url, key) == ("http://x", KEY)


# --- durations and --set --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (30, 30.0),
        (2.5, 2.5),
        (0, 0.0),
        ("30", 30.0),
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("7d", 604800.0),
        ("250ms", 0.25),
        (" 1.5 m ", 90.0),
        ("0s", 0.0),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "soon", "-5s", "5 minutes", "1e3", "5w", "s", "1.s", True, -1, math.nan, math.inf]
)
def test_parse_duration_refuses(text: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_parse_assignments() -> None:
    assert parse_assignments(["retry_min=2s", " timeout =5", "url=http://h/?x=1"]) == {
        "retry_min": "2s",
        "timeout": "5",
        "url": "http://h/?x=1",
    }
    assert parse_assignments([]) == {}
    for bad in ["retry_min", "=5", " =5"]:
        with pytest.raises(ConfigError, match="expected name=value"):
            parse_assignments([bad])


# --- the file the agent writes --------------------------------------------------------------------


def test_write_file_is_owner_only_even_replacing_a_readable_file(
    conf: Path, no_umask: None
) -> None:
    write(conf, "# old\n").chmod(0o644)
    write_file(conf, {"url": "http://x", "key": KEY})
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    assert read_file(conf) == {"url": "http://x", "key": KEY}
    assert [p.name for p in conf.parent.iterdir()] == ["agent.toml"]  # no temporary left


def test_write_file_creates_the_directory(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "agent.toml"
    write_file(path, {"server_id": 3})
    assert read_file(path) == {"server_id": 3}
    text = path.read_text()
    assert text.startswith("# monapi-agent settings")
    assert "holds the server's API key" in text


def test_write_file_round_trips_every_kind_of_value(home: Path, conf: Path) -> None:
    values: dict[str, Any] = {
        "url": "https://mon.example:8443",
        "key": 'mks_1_q"uo\\te',
        "hostname": "hôte-01 «été» \u2028 日本 \U0001f600",
        "server_id": 42,
        "spool_max_mb": 0.5,
        "timeout": 1e-3,
        "ignore_mounts": ["/a b", 'c"d', "e\\f", "tab\there", "new\nline", "bell\x07", "del\x7f"],
        "log_level": "debug",
    }
    write_file(conf, {**values, "ca_file": None})
    raw = read_file(conf)
    assert raw == values  # None was left out
    s = load(conf, env={})
    assert s.key == values["key"]
    assert s.hostname == values["hostname"]
    assert s.ignore_mounts == tuple(values["ignore_mounts"])
    assert s.server_id == 42 and s.spool_max_mb == 0.5 and s.timeout == 1e-3


def test_write_file_round_trips_what_read_file_gave(conf: Path) -> None:
    # `register` rewrites the operator's file with the new key: nothing else may change
    write(
        conf,
        '# mine\nspool_path = "/var/tmp/s.db"\nignore_fstypes = ["nfs"]\nretry_max = 60\n'
        "spool_max_mb = 2.5\n",
    )
    values = read_file(conf)
    values.update(key=KEY, server_id=7)
    write_file(conf, values)
    assert read_file(conf) == values


def test_a_failed_write_leaves_the_old_file_and_no_temporary(conf: Path) -> None:
    write(conf, "timeout = 3\n")
    with pytest.raises(TypeError):
        write_file(conf, {"timeout": 4, "labels": {"nested": "tables are not written"}})
    assert conf.read_text() == "timeout = 3\n"
    assert [p.name for p in conf.parent.iterdir()] == ["agent.toml"]


def test_written_text_is_valid_toml_for_tomllib(conf: Path) -> None:
    write_file(conf, {"hostname": "x\x7fy\x00z"})
    assert tomllib.loads(conf.read_text(encoding="utf-8")) == {"hostname": "x\x7fy\x00z"}


# --- exposure warning -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "warns"), [(0o600, False), (0o400, False), (0o640, True), (0o644, True), (0o604, True)]
)
def test_warn_if_exposed(
    conf: Path, caplog: pytest.LogCaptureFixture, mode: int, warns: bool
) -> None:
    write(conf, f'key = "{KEY}"\n').chmod(mode)
    with caplog.at_level(logging.WARNING, logger="monapi_agent.config"):
        warn_if_exposed(conf)
    if warns:
        (record,) = caplog.records
        assert record.levelno == logging.WARNING
        assert record.getMessage() == (
            f"config file {conf} has mode {mode:o} and holds the server key: run chmod 600 {conf}"
        )
    else:
        assert caplog.records == []


def test_warn_if_exposed_is_quiet_without_a_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="monapi_agent.config"):
        warn_if_exposed(None)
        warn_if_exposed(tmp_path / "missing.toml")
    assert caplog.records == []
