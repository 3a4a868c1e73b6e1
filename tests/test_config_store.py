"""The configuration store: migrations match the models, and the same code runs on PostgreSQL.

PostgreSQL runs on this machine at 127.0.0.1:5432 (trust auth). Each test session gets a fresh
database of its own, dropped at the end; the shared server itself is never reconfigured.
"""

from __future__ import annotations

import time
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from monapi.app import shutdown
from monapi.db import Database
from monapi.models import Base

from . import engines
from .conftest import _created, bearer, make_app, push, register_server


def _no_drift(url: str) -> None:
    db = Database(url)
    try:
        db.upgrade()
        with db.engine.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
            )
        assert diff == [], diff
        assert db.current_revision() == db.head_revision()
    finally:
        db.dispose()


def test_sqlite_schema_matches_the_models(tmp_path: Path) -> None:
    _no_drift(f"sqlite:///{tmp_path / 'c.db'}")


def test_postgresql_schema_matches_the_models(pg_url: str) -> None:
    _no_drift(pg_url)


def test_the_core_runs_unchanged_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    app, token = make_app(tmp_path / "d", database_url=pg_url.replace("+psycopg", ""))
    client = app.test_client()
    try:
        enroll = client.post(
            "/api/v1/enrollment-tokens", json={"max_uses": 1}, headers=bearer(token)
        ).get_json()["token"]
        server = register_server(client, enroll, "pg-host", labels={"db": "pg"})
        assert (
            client.post(
                "/api/v1/servers",
                headers=bearer(enroll),
                json={"hostname": "pg-2", "ip_address": "192.0.2.3"},
            ).status_code
            == 401
        )  # used up
        assert (
            client.post(
                "/api/v1/servers",
                headers=bearer(token),
                json={"hostname": "PG-HOST", "ip_address": "192.0.2.3"},
            ).status_code
            == 409
        )
        now = int(time.time())
        body = {"points": [{"timestamp": now - i, "fields": {"load1": 1.0 + i}} for i in range(3)]}
        assert push(client, server["api_key"], body).status_code == 204
        listed = client.get(
            "/api/v1/servers?status=online&label=db=pg&hostname=pg", headers=bearer(token)
        ).get_json()
        assert [s["hostname"] for s in listed["items"]] == ["pg-host"]
        f = client.post(
            "/api/v1/fields",
            headers=bearer(token),
            json={"measurement": "pg", "name": "conns", "type": "int", "max": 10},
        ).get_json()
        assert (
            push(
                client, server["api_key"], {"measurement": "pg", "fields": {"conns": 11}}
            ).status_code
            == 422
        )
        client.patch(f"/api/v1/fields/{f['id']}", headers=bearer(token), json={"max": 100})
        assert (
            push(
                client, server["api_key"], {"measurement": "pg", "fields": {"conns": 11}}
            ).status_code
            == 204
        )
        rotated = client.post(
            f"/api/v1/servers/{server['id']}/rotate-key", headers=bearer(token)
        ).get_json()["api_key"]
        assert push(client, server["api_key"], {"fields": {"load1": 1.0}}).status_code == 401
        assert push(client, rotated, {"fields": {"load1": 1.0}}).status_code == 204
        assert (
            client.delete(f"/api/v1/servers/{server['id']}", headers=bearer(token)).status_code
            == 204
        )
        assert client.get("/readyz").status_code == 200
    finally:
        shutdown(app)


def test_the_schema_version_check_agrees_with_alembic_without_importing_it(
    tmp_path: Path,
) -> None:
    """Workers check the schema with one query and the migration files: the same answers as
    Alembic's, and a worker's app does not load Alembic (about 10 MB per process)."""
    import os
    import subprocess
    import sys

    from alembic.script import ScriptDirectory

    db = Database(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        assert (
            db.head_revision()
            == ScriptDirectory.from_config(db.alembic_config()).get_current_head()
        )
        assert db.current_revision() is None
        db.upgrade()
        with db.engine.connect() as conn:
            assert db.current_revision() == MigrationContext.configure(conn).get_current_revision()
        assert db.current_revision() == db.head_revision()
    finally:
        db.dispose()
    app, _ = make_app(tmp_path / "d")
    shutdown(app)
    code = (
        "import sys; from monapi import create_app; create_app(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONAPI_")}
    env["MONAPI_DATA_DIR"] = str(tmp_path / "d")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_instances_starting_at_once_on_an_empty_postgresql_set_it_up_once(
    tmp_path: Path,
) -> None:
    """Several instances (gunicorn masters, each running the first-start set-up) on one new
    database at the same moment: each start succeeds, and the set-up happens exactly once."""
    import os
    import subprocess
    import sys

    from sqlalchemy import func, select, text

    from monapi.models import ApiKey

    start = (
        "import sys, time; from monapi.bootstrap import initialize;"
        " from monapi.settings import load_settings;"
        " s = load_settings({'data_dir': sys.argv[1], 'database_url': sys.argv[2],"
        " 'key_pepper': 'p' * 32});"
        " time.sleep(max(0.0, float(sys.argv[3]) - time.time()));"
        " print('token' if initialize(s) else 'none')"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONAPI_")}
    with engines.postgresql_database() as url:
        at = time.time() + 3  # every process imported monapi by then: they start together
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", start, str(tmp_path / str(i)), url, str(at)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for i in range(4)
        ]
        results = [p.communicate(timeout=120) for p in procs]
        assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in results]
        assert sorted(out.strip() for out, _ in results) == ["none", "none", "none", "token"]
        db = Database(url)
        try:
            with db.session() as s:
                assert s.execute(select(func.count()).select_from(ApiKey)).scalar_one() == 1
                fields = s.execute(text("SELECT count(*) FROM fields")).scalar_one()
                distinct = s.execute(
                    text("SELECT count(DISTINCT measurement || '.' || name) FROM fields")
                ).scalar_one()
                assert fields == distinct > 0  # the default fields, once each
            assert db.current_revision() == db.head_revision()
        finally:
            db.dispose()


def test_the_postgresql_pool_follows_its_settings(
    tmp_path: Path, pg_databases: engines.PostgresDatabases
) -> None:
    url = pg_databases.new()
    app, _ = make_app(tmp_path, database_url=url, database_pool_size=3, database_max_overflow=1)
    pool = app.extensions["monapi.db"].engine.pool
    assert (pool.size(), pool._max_overflow) == (3, 1)
    # 4 connections at most: a fifth waits for one to come back.
    conns = [app.extensions["monapi.db"].engine.connect() for _ in range(4)]
    try:
        assert pool.checkedout() == 4
        assert pool.overflow() == 1
    finally:
        for c in conns:
            c.close()
    shutdown(app)
    _created.remove(app)
    pg_databases.drop(url)
