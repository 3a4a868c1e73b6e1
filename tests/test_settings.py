"""Settings from MONAPI_* variables, validated at start-up with messages saying how to fix them."""

from __future__ import annotations

from pathlib import Path

import pytest

from monapi import create_app
from monapi.settings import ConfigError, load_settings, parse_duration
from monapi.tsdb.http import EngineHTTP, is_loopback


def test_defaults(tmp_path: Path) -> None:
    s = load_settings({"data_dir": tmp_path})
    assert s.tsdb == "sqlite" and s.unknown_fields == "reject"
    assert s.retention == 30 * 86400
    assert s.timestamp_max_age == 365 * 86400 and s.timestamp_max_future == 600
    assert s.resolved_database_url == f"sqlite:///{(tmp_path / 'monapi.db').resolve()}"
    assert s.resolved_tsdb_path == (tmp_path / "tsdb.sqlite3").resolve()


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MONAPI_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MONAPI_RETENTION", "7d")
    monkeypatch.setenv("MONAPI_UNKNOWN_FIELDS", "discover")
    monkeypatch.setenv("MONAPI_DATABASE_URL", "postgresql://monapi@127.0.0.1/monapi")
    s = load_settings()
    assert s.data_dir == tmp_path and s.retention == 7 * 86400 and s.unknown_fields == "discover"
    assert s.resolved_database_url.startswith("postgresql+psycopg://")


def test_a_postgres_url_as_platforms_give_it_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    # Cloud Foundry's and Heroku's database services hand out postgres://, which SQLAlchemy 2
    # no longer accepts.
    monkeypatch.setenv("MONAPI_DATABASE_URL", "postgres://u:pw@db.internal:5432/monapi")
    s = load_settings()
    assert s.resolved_database_url == "postgresql+psycopg://u:pw@db.internal:5432/monapi"


@pytest.mark.parametrize(
    ("var", "value", "hint"),
    [
        ("MONAPI_RETENTION", "forever", "duration such as"),
        ("MONAPI_UNKNOWN_FIELDS", "maybe", "reject, discover, drop"),
        ("MONAPI_TSDB", "mongodb", "sqlite"),
        ("MONAPI_WORKERS", "0", "worker processes"),
        ("MONAPI_BIND", "8000", "host:port"),
        ("MONAPI_DATABASE_URL", "mysql://x", "postgresql://"),
        ("MONAPI_MAX_BODY_BYTES", "-5", "largest request body"),
    ],
)
def test_bad_value_names_the_variable_and_what_it_accepts(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, hint: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert var in str(exc.value) and hint in str(exc.value)
    with pytest.raises(ConfigError):
        create_app()


def test_durations() -> None:
    assert parse_duration("90") == 90 and parse_duration("10m") == 600
    assert parse_duration("1.5h") == 5400 and parse_duration(30) == 30
    for bad in ("", "ten", "-5s", "5y", True):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_app_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="monapi db upgrade"):
        create_app({"data_dir": tmp_path})


def test_importing_reads_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing the package, the app module or the WSGI module touches no setting."""
    import importlib
    import sys

    monkeypatch.setenv("MONAPI_RETENTION", "not a duration")
    for name in [m for m in sys.modules if m == "monapi" or m.startswith("monapi.")]:
        monkeypatch.delitem(sys.modules, name)
    for mod in ("monapi", "monapi.app", "monapi.wsgi", "monapi.cli"):
        importlib.import_module(mod)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("600/minute", (600, 60.0)),
        ("5/s", (5, 1.0)),
        ("100/10s", (100, 10.0)),
        ("2/hour", (2, 3600.0)),
        ("0", (0, 0.0)),
        ("off", (0, 0.0)),
    ],
)
def test_rate_limits_are_read_from_the_environment_as_text(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str, parsed: tuple[int, float]
) -> None:
    monkeypatch.setenv("MONAPI_RATE_LIMIT_SERVER", text)
    monkeypatch.setenv("MONAPI_RATE_LIMIT_REGISTER", text)
    s = load_settings({"data_dir": tmp_path})
    assert s.rate_limit_server == parsed and s.rate_limit_register == parsed


def test_backend_settings_are_checked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name, value, hint in [
        ("MONAPI_RATE_LIMIT_SERVER", "lots", "N/minute"),
        ("MONAPI_TSDB", "mongodb", "victoriametrics"),
        ("MONAPI_INFLUXDB_URL", "influx:8086", "http://HOST:PORT"),
        ("MONAPI_VICTORIAMETRICS_TENANT", "acme", "accountID"),
        ("MONAPI_REDIS_URL", "localhost:6379", "redis://HOST:PORT/DB"),
    ]:
        monkeypatch.setenv(name, value)
        with pytest.raises(ConfigError) as err:
            load_settings({"data_dir": tmp_path})
        assert name in str(err.value) and hint in str(err.value), str(err.value)
        monkeypatch.delenv(name)


@pytest.mark.parametrize(
    "url, loopback",
    [
        ("http://127.0.0.1:8086", True),
        ("http://127.9.9.9", True),
        ("http://localhost:8428", True),
        ("http://[::1]:8086", True),
        ("https://influx.example.net", False),
        ("http://10.0.0.5:8086", False),
        ("http://[2001:db8::1]:8086", False),
    ],
)
def test_engine_writes_are_compressed_unless_the_engine_is_on_loopback(
    url: str, loopback: bool
) -> None:
    assert is_loopback(url) is loopback
    assert EngineHTTP("x", url, 1, 1).gzip is not loopback  # compression "auto"
    assert EngineHTTP("x", url, 1, 1, compression="gzip").gzip is True
    assert EngineHTTP("x", url, 1, 1, compression="none").gzip is False
    assert load_settings({"tsdb_compression": "none"}).tsdb_compression == "none"


# Production mode ------------------------------------------------------------------------------
STRONG_A = "3f9c1e7a5b2d48f0a6c9e1b7d3f5a2c8e4b6d0f1a3c5e7b9"
STRONG_B = "b81d6f3a9e2c47d5f0a8c3e6b1d9f4a7c2e5b8d0f3a6c9e1"


def test_development_needs_no_secrets(tmp_path: Path) -> None:
    """The default: secrets are generated into the data directory on first start."""
    s = load_settings({"data_dir": tmp_path})
    assert s.env == "development" and s.secret_key is None and s.key_pepper is None


@pytest.mark.parametrize(
    ("secret", "pepper", "why"),
    [
        (None, None, "MONAPI_SECRET_KEY is not set; MONAPI_KEY_PEPPER is not set"),
        (STRONG_A, None, "MONAPI_KEY_PEPPER is not set"),
        ("   ", STRONG_B, "MONAPI_SECRET_KEY is not set"),
        ("0123456789abcdef", STRONG_B, "MONAPI_SECRET_KEY is shorter than 32 characters"),
        ("change-me-change-me-change-me-change-me", STRONG_B, "MONAPI_SECRET_KEY looks like"),
        (STRONG_A, "please-replace-with-a-random-value-1234", "MONAPI_KEY_PEPPER looks like"),
        (STRONG_A, "ab" * 20, "MONAPI_KEY_PEPPER looks like a placeholder"),
        (STRONG_A, STRONG_A, "are the same"),
    ],
)
def test_production_refuses_to_start_without_strong_secrets(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    secret: str | None,
    pepper: str | None,
    why: str,
) -> None:
    monkeypatch.setenv("MONAPI_ENV", "production")
    monkeypatch.setenv("MONAPI_DATA_DIR", str(tmp_path))
    for var, value in (("MONAPI_SECRET_KEY", secret), ("MONAPI_KEY_PEPPER", pepper)):
        if value is not None:
            monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as exc:
        load_settings()
    message = str(exc.value)
    assert "MONAPI_ENV=production refuses to start" in message and why in message
    assert "openssl rand -hex 32" in message
    for value in (secret, pepper):  # the message never repeats a secret
        assert not value or not value.strip() or value not in message
    with pytest.raises(ConfigError):
        create_app()
    assert not (tmp_path / "secret_key").exists() and not (tmp_path / "key_pepper").exists()


def test_production_starts_with_strong_secrets_and_uses_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from monapi.bootstrap import initialize

    monkeypatch.setenv("MONAPI_ENV", "production")
    monkeypatch.setenv("MONAPI_SECRET_KEY", STRONG_A)
    monkeypatch.setenv("MONAPI_KEY_PEPPER", STRONG_B)
    overrides = {"data_dir": tmp_path, "log_level": "WARNING"}
    initialize(load_settings(overrides))
    app = create_app(overrides)
    try:
        assert app.config["SECRET_KEY"] == STRONG_A
        assert app.test_client().get("/readyz").status_code == 200
        # Nothing generated: the secrets come from the environment only.
        assert not (tmp_path / "secret_key").exists() and not (tmp_path / "key_pepper").exists()
    finally:
        from monapi.app import shutdown

        shutdown(app)


def test_monapi_serve_refuses_to_start_in_production_without_secrets(tmp_path: Path) -> None:
    """The real command: exit status 2 and the reason, before gunicorn starts."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("MONAPI_")}
    env.update(MONAPI_ENV="production", MONAPI_DATA_DIR=str(tmp_path), MONAPI_KEY_PEPPER=STRONG_B)
    done = subprocess.run(
        [sys.executable, "-m", "monapi.cli", "serve", "--bind", "127.0.0.1:9"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "MONAPI_SECRET_KEY is not set" in done.stderr
    assert "Booting worker" not in done.stderr + done.stdout
