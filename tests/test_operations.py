"""The backup and restore procedures of docs/operations.md, run for real.

Each test runs the commands the guide gives (the scripts in deploy/ops/, pg_dump/pg_restore,
influxd backup/restore, vmbackup/vmrestore) against real processes, restores into a fresh place
and reads the points and keys back through monapi.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from flask import Flask

from monapi.app import shutdown

from . import engines
from .conftest import _created, bearer, make_app, push, register_server
from .engines import free_port
from .test_serve import call as serve_call

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
BACKUP_SCRIPT = REPO / "deploy" / "ops" / "backup-embedded.sh"
RESTORE_SCRIPT = REPO / "deploy" / "ops" / "restore-embedded.sh"
# Far enough back to be inside the default retention and the accepted timestamp range.
T0 = int(time.time()) - 6 * 3600
WORKERS = ("--workers", "2", "--threads", "4")


def need(binary: str, package: str) -> str:
    """The path of a tool the procedure uses; the test fails (never skips) without it."""
    path = shutil.which(binary)
    if path is None:
        pytest.fail(f"{binary} is missing: install Debian's {package} package", pytrace=False)
    return path


def run(*cmd: str | Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command of the guide; with ``ok``, fail the test with its output unless it exits 0."""
    done = subprocess.run(
        [str(c) for c in cmd], check=False, capture_output=True, text=True, timeout=300
    )
    if ok:
        assert done.returncode == 0, f"{cmd}: {done.stdout}{done.stderr}"
    return done


def call(
    base: str, method: str, path: str, token: str | None = None, body: Any = None
) -> tuple[int, Any]:
    """tests/test_serve.py's ``call`` without the headers."""
    status, answer, _ = serve_call(base, method, path, token, body)
    return status, answer


class Served:
    """`monapi serve` (two workers) on a data directory, on a free loopback port."""

    def __init__(self, data: Path, env_extra: dict[str, str] | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MONAPI_")}
        env.update(
            MONAPI_DATA_DIR=str(data),
            MONAPI_LOG_LEVEL="WARNING",
            MONAPI_RATE_LIMIT_SERVER="0",
            MONAPI_LAST_SEEN_FLUSH="1",
            **(env_extra or {}),
        )
        self.log = data.parent / f"{data.name}.log"
        self.base = f"http://127.0.0.1:{free_port()}"
        bind = self.base.removeprefix("http://")
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "monapi.cli", "serve", "--bind", bind, *WORKERS],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"monapi serve exited: {self.log.read_text()}")
            try:
                if call(self.base, "GET", "/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        pytest.fail(f"monapi serve did not get ready: {self.log.read_text()}")

    def admin_token(self) -> str:
        found = re.search(r"mka_\S+", self.log.read_text())
        assert found is not None, self.log.read_text()
        return found.group(0)

    def stop(self) -> None:
        engines.stop_group(self.proc)


@pytest.fixture
def serving() -> Iterator[list[Served]]:
    """Every instance a test starts is stopped after it."""
    started: list[Served] = []
    yield started
    for s in started:
        s.stop()


def value(i: int) -> float:
    """The value of the i-th test point: within cpu.usage_percent's 0..100, exact in binary."""
    return (i % 400) / 4


def point(i: int) -> dict[str, Any]:
    """The i-th test point: one per second from T0."""
    return {"measurement": "cpu", "timestamp": T0 + i, "fields": {"usage_percent": value(i)}}


def values_over(base: str, key: str, server_id: int, first: int, last: int) -> dict[int, float]:
    """{i: value} of the points first..last of ``point`` read back through the API."""
    path = (
        f"/api/v1/servers/{server_id}/metrics?fields=cpu.usage_percent"
        f"&start={T0 + first}&end={T0 + last}&step=1s&agg=last"
    )
    status, body = call(base, "GET", path, key)
    assert status == 200, body
    (series,) = body["series"]
    return {ts - T0: value for ts, value in series["points"]}


class Pusher(threading.Thread):
    """Pushes point after point (one request each) until stopped; counts acknowledged ones."""

    def __init__(self, base: str, key: str, start: int) -> None:
        super().__init__(daemon=True)
        self.base, self.key, self.next = base, key, start
        self.acked = start  # points start..acked-1 are acknowledged (204), in order
        self.stop = threading.Event()
        self.failures: list[Any] = []

    def run(self) -> None:
        while not self.stop.is_set():
            status, body = call(self.base, "POST", "/api/v1/data", self.key, point(self.next))
            if status != 204:
                self.failures.append((status, body))
                return
            self.next += 1
            self.acked = self.next


def test_embedded_backup_taken_while_serving_restores_points_and_keys(
    tmp_path: Path, serving: list[Served]
) -> None:
    need("sqlite3", "sqlite3")
    first = Served(tmp_path / "data")
    serving.append(first)
    admin = first.admin_token()
    status, server = call(
        first.base,
        "POST",
        "/api/v1/servers",
        admin,
        {"hostname": "web-01", "ip_address": "192.0.2.1"},
    )
    assert status == 201, server
    key, sid = server["api_key"], server["id"]
    assert (
        call(first.base, "POST", "/api/v1/data", key, {"points": [point(i) for i in range(50)]})[0]
        == 204
    )

    # The backup runs while a client keeps pushing through the running server.
    pusher = Pusher(first.base, key, start=1000)
    pusher.start()
    while pusher.acked < 1050:  # pushes are flowing before the backup starts
        assert not pusher.failures, pusher.failures
        time.sleep(0.05)
    acked_before = pusher.acked
    backup = tmp_path / "backup"
    out = run(BACKUP_SCRIPT, tmp_path / "data", backup, ok=False)
    acked_after = pusher.acked
    time.sleep(0.3)
    pusher.stop.set()
    pusher.join(20)
    assert out.returncode == 0, out.stdout + out.stderr
    assert not pusher.failures, pusher.failures
    assert pusher.acked > acked_after, "the server stopped taking pushes during the backup"
    assert sorted(p.name for p in backup.iterdir()) == [
        "key_pepper",
        "monapi.db",
        "secret_key",
        "tsdb.sqlite3",
    ]
    assert all(p.stat().st_mode & 0o077 == 0 for p in backup.iterdir()), "backup readable by others"
    first.stop()

    restored = tmp_path / "restored"
    run(RESTORE_SCRIPT, backup, restored)
    second = Served(restored)
    serving.append(second)

    # The server key and the admin token of the first installation authenticate.
    assert values_over(second.base, key, sid, 0, 49) == {i: value(i) for i in range(50)}
    status, listing = call(second.base, "GET", "/api/v1/servers", admin)
    assert status == 200 and [s["hostname"] for s in listing["items"]] == ["web-01"], listing
    # The copy is one moment of the store: every push acknowledged before the backup began,
    # a gap-free run after it, nothing that was not acknowledged by the time it ended.
    during = values_over(second.base, key, sid, 1000, pusher.acked + 10)
    stored = sorted(during)
    assert stored == list(range(1000, 1000 + len(stored)))
    assert during == {i: value(i) for i in stored}
    assert acked_before <= 1000 + len(stored) <= acked_after + 1
    assert call(second.base, "POST", "/api/v1/data", key, point(5000))[0] == 204


def test_restore_without_the_key_pepper_locks_every_key_out(tmp_path: Path) -> None:
    need("sqlite3", "sqlite3")
    app, admin = make_app(tmp_path / "data")
    client = app.test_client()
    server = register_server(client, admin)
    assert push(client, server["api_key"], point(1)).status_code == 204
    backup = tmp_path / "backup"
    run(BACKUP_SCRIPT, tmp_path / "data", backup)
    (backup / "key_pepper").unlink()  # a backup of the databases alone
    run(RESTORE_SCRIPT, backup, tmp_path / "restored")

    app2 = _app_without_bootstrap(tmp_path / "restored")
    client2 = app2.test_client()
    # monapi generated a new pepper: the stored digests no longer match any key.
    resp = client2.get(f"/api/v1/servers/{server['id']}", headers=bearer(server["api_key"]))
    assert resp.status_code == 401, resp.get_json()
    assert client2.get("/api/v1/servers", headers=bearer(admin)).status_code == 401


def _app_without_bootstrap(data: Path, **overrides: Any) -> Flask:
    """An app on an existing data directory (no first-start set-up, no new admin token)."""
    from monapi import create_app

    app = create_app(
        {"data_dir": data, "log_level": "WARNING", "rate_limit_server": "0", **overrides}
    )
    _created.append(app)
    return app


def test_postgresql_dump_and_restore_keep_servers_and_keys(tmp_path: Path) -> None:
    pg_dump = need("pg_dump", "postgresql-client")
    pg_restore = need("pg_restore", "postgresql-client")
    admin_dsn = engines.PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    base = admin_dsn.rsplit("/", 1)[0]
    source, target = (f"monapi_ops_{uuid.uuid4().hex[:8]}_{n}" for n in ("a", "b"))
    pepper = "ops-test-pepper-" + uuid.uuid4().hex
    try:
        with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{source}"')
            conn.execute(f'CREATE DATABASE "{target}"')
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {admin_dsn} does not answer: {exc}", pytrace=False)
    try:
        app, admin = make_app(tmp_path / "a", database_url=f"{base}/{source}", key_pepper=pepper)
        client = app.test_client()
        server = register_server(client, admin)
        dump = tmp_path / "monapi.dump"
        run(pg_dump, "--format=custom", f"--file={dump}", f"{base}/{source}")
        run(pg_restore, "--no-owner", "--exit-on-error", f"--dbname={base}/{target}", dump)
        app2 = _app_without_bootstrap(
            tmp_path / "b", database_url=f"{base}/{target}", key_pepper=pepper
        )
        client2 = app2.test_client()
        key = server["api_key"]
        resp = client2.get(f"/api/v1/servers/{server['id']}", headers=bearer(key))
        assert resp.status_code == 200 and resp.get_json()["hostname"] == "web-01"
        assert client2.get("/api/v1/servers", headers=bearer(admin)).status_code == 200
        # The restored database goes on where the first left off: a new registration works.
        assert register_server(client2, admin, hostname="web-02")["id"] == server["id"] + 1
    finally:
        while _created:
            shutdown(_created.pop())
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            for name in (source, target):
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _rpc_address(workdir: Path) -> str:
    """The backup/restore (RPC) address of a throwaway influxd started by tests/engines.py."""
    found = re.search(r'^bind-address = "([^"]+)"', (workdir / "influxdb.conf").read_text(), re.M)
    assert found is not None
    return found.group(1)


def test_influxdb_portable_backup_restores_into_a_new_influxd(tmp_path: Path) -> None:
    influxd = need("influxd", "influxdb")
    with engines.influxdb_process(tmp_path / "influx-a") as (url_a, _):
        app, admin = make_app(tmp_path / "data", tsdb="influxdb", influxdb_url=url_a)
        client = app.test_client()
        server = register_server(client, admin)
        key, sid = server["api_key"], server["id"]
        assert push(client, key, {"points": [point(i) for i in range(100)]}).status_code == 204
        backup = tmp_path / "influx-backup"
        rpc = _rpc_address(tmp_path / "influx-a")
        run(influxd, "backup", "-portable", "-db", "monapi", "-host", rpc, backup)
    assert any(backup.glob("*.manifest")), sorted(p.name for p in backup.iterdir())
    with engines.influxdb_process(tmp_path / "influx-b") as (url_b, _):
        # Restored before monapi first connects: restore refuses a database that exists.
        rpc = _rpc_address(tmp_path / "influx-b")
        run(influxd, "restore", "-portable", "-db", "monapi", "-host", rpc, backup)
        app2 = _app_without_bootstrap(tmp_path / "data", tsdb="influxdb", influxdb_url=url_b)
        _assert_the_100_points_read_back(app2, sid, key)


def test_victoriametrics_backup_restores_into_a_new_node(tmp_path: Path) -> None:
    vmbackup = need("vmbackup", "victoria-metrics")
    vmrestore = need("vmrestore", "victoria-metrics")
    with engines.victoriametrics_process(tmp_path / "vm-a") as (url_a, _):
        app, admin = make_app(tmp_path / "data", tsdb="victoriametrics", victoriametrics_url=url_a)
        client = app.test_client()
        server = register_server(client, admin)
        key, sid = server["api_key"], server["id"]
        assert push(client, key, {"points": [point(i) for i in range(100)]}).status_code == 204
        # No flush first: the snapshot itself must hold what was acknowledged a moment ago.
        run(
            vmbackup,
            f"-storageDataPath={tmp_path / 'vm-a' / 'data'}",
            f"-snapshot.createURL={url_a}/snapshot/create",
            f"-dst=fs://{tmp_path / 'vmb'}",
        )
        with urllib.request.urlopen(url_a + "/snapshot/list", timeout=10) as resp:
            assert json.loads(resp.read())["snapshots"] == []  # vmbackup deleted its snapshot
    run(
        vmrestore, f"-src=fs://{tmp_path / 'vmb'}", f"-storageDataPath={tmp_path / 'vm-b' / 'data'}"
    )
    with engines.victoriametrics_process(tmp_path / "vm-b") as (url_b, _):
        app2 = _app_without_bootstrap(
            tmp_path / "data", tsdb="victoriametrics", victoriametrics_url=url_b
        )
        _assert_the_100_points_read_back(app2, sid, key)


def _assert_the_100_points_read_back(app: Flask, sid: int, key: str) -> None:
    """The 100 points pushed before the backup, read through monapi from the restored engine."""
    resp = app.test_client().get(
        f"/api/v1/servers/{sid}/metrics?fields=cpu.usage_percent"
        f"&start={T0}&end={T0 + 99}&step=1s&agg=last",
        headers=bearer(key),
    )
    assert resp.status_code == 200, resp.get_json()
    (series,) = resp.get_json()["series"]
    assert {ts - T0: v for ts, v in series["points"]} == {i: value(i) for i in range(100)}
