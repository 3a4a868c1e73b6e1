"""Fixtures: the real app from the factory on real SQLite files in a temporary directory."""

from __future__ import annotations

import gzip
import itertools
import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text

from monapi import create_app
from monapi.app import shutdown
from monapi.bootstrap import initialize
from monapi.settings import load_settings

from . import engines


@pytest.fixture
def no_umask() -> Iterator[None]:
    """umask 000 for the test: file modes must then come from the code, not the umask."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never pick up MONAPI_* settings from the shell that runs them."""
    import os

    for name in list(os.environ):
        if name.startswith("MONAPI_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session."""
    with engines.postgresql_database() as url:
        yield url


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[engines.PostgresDatabases]:
    """Per-test PostgreSQL databases, copied from a migrated template."""
    dbs = engines.PostgresDatabases()
    yield dbs
    dbs.close()


@pytest.fixture
def config_store(request: pytest.FixtureRequest) -> str:
    """Which configuration store a test's app uses: sqlite, unless the module asks for more
    (``CONFIG_STORES = ["sqlite", "postgresql"]``)."""
    return str(getattr(request, "param", "sqlite"))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    stores = getattr(metafunc.module, "CONFIG_STORES", None)
    if stores and "config_store" in metafunc.fixturenames:
        metafunc.parametrize("config_store", stores, indirect=True)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis db number of this test session's own."""
    with engines.redis_database() as url:
        yield url


@pytest.fixture(scope="session")
def influxdb_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway InfluxDB 1.x for this test session."""
    with engines.influxdb(tmp_path_factory.mktemp("influxdb")) as url:
        yield url


@pytest.fixture(scope="session")
def victoriametrics_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway single-node VictoriaMetrics for this test session."""
    with engines.victoriametrics(tmp_path_factory.mktemp("victoriametrics")) as url:
        yield url


_created: list[Flask] = []


@pytest.fixture(autouse=True)
def _shutdown_apps() -> Iterator[None]:
    """Every app a test made is shut down after it: buffers written, connections closed."""
    yield
    while _created:
        shutdown(_created.pop())


def make_app(data_dir: Path, /, **overrides: Any) -> tuple[Flask, str]:
    """A fresh app on its own data directory, and its first admin token."""
    settings = {
        "data_dir": data_dir,
        "log_level": "WARNING",
        # Off unless a test is about them: many tests push far faster than any agent.
        "rate_limit_server": "0",
        "rate_limit_register": "0",
        **overrides,
    }
    token = initialize(load_settings(settings))
    assert token is not None
    app = create_app({**settings, "TESTING": True})
    _created.append(app)
    return app, token


TSDB_BACKENDS = ["sqlite", "influxdb", "victoriametrics"]
# One VictoriaMetrics serves the whole session: each test's server ids start apart.
_vm_server_id_bases = itertools.count(1000, 1000)


def backend_app(
    request: pytest.FixtureRequest, data_dir: Path, backend: str, /, **overrides: Any
) -> tuple[Flask, str, Callable[[], None]]:
    """A fresh app on the named time-series backend (one of TSDB_BACKENDS, the engines being the
    session's throwaway ones), its admin token, and what makes the engine show at once what was
    just written (VictoriaMetrics buffers for a moment)."""
    sync: Callable[[], None] = lambda: None  # noqa: E731
    if backend == "influxdb":
        overrides = {
            "tsdb": "influxdb",
            "influxdb_url": request.getfixturevalue("influxdb_url"),
            "influxdb_database": f"t_{uuid.uuid4().hex[:12]}",
            **overrides,
        }
    elif backend == "victoriametrics":
        url = request.getfixturevalue("victoriametrics_url")
        overrides = {"tsdb": "victoriametrics", "victoriametrics_url": url, **overrides}

        def sync() -> None:
            engines.vm_flush(url)

    app, token = make_app(data_dir, **overrides)
    if backend == "victoriametrics":
        with app.extensions["monapi.db"].engine.begin() as conn:
            conn.execute(
                text("INSERT INTO sqlite_sequence (name, seq) VALUES ('servers', :seq)"),
                {"seq": next(_vm_server_id_bases)},
            )
    return app, token, sync


@pytest.fixture
def app_and_token(
    request: pytest.FixtureRequest, tmp_path: Path, config_store: str
) -> Iterator[tuple[Flask, str]]:
    if config_store == "postgresql":
        dbs: engines.PostgresDatabases = request.getfixturevalue("pg_databases")
        url = dbs.new()
        app, token = make_app(tmp_path / "data", database_url=url)
        yield app, token
        while _created:
            shutdown(_created.pop())
        dbs.drop(url)
        return
    yield make_app(tmp_path / "data")


@pytest.fixture
def app(app_and_token: tuple[Flask, str]) -> Flask:
    return app_and_token[0]


@pytest.fixture
def admin_token(app_and_token: tuple[Flask, str]) -> str:
    return app_and_token[1]


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> Any:
    return app.test_cli_runner()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def register_server(
    client: FlaskClient, token: str, hostname: str = "web-01", ip: str = "192.0.2.10", **extra: Any
) -> dict[str, Any]:
    """Register a server and return the reply (with its api_key)."""
    resp = client.post(
        "/api/v1/servers",
        json={"hostname": hostname, "ip_address": ip, **extra},
        headers=bearer(token),
    )
    assert resp.status_code == 201, resp.get_json()
    body: dict[str, Any] = resp.get_json()
    return body


def push(client: FlaskClient, key: str, body: Any, *, gz: bool = False, **headers: str) -> Any:
    data = json.dumps(body).encode()
    hdrs = {**bearer(key), "Content-Type": "application/json", **headers}
    if gz:
        data = gzip.compress(data)
        hdrs["Content-Encoding"] = "gzip"
    return client.post("/api/v1/data", data=data, headers=hdrs)
