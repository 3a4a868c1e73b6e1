"""Throwaway engines for the tests: InfluxDB and VictoriaMetrics as child processes on free
loopback ports in a temporary directory; a fresh PostgreSQL database and a free Redis db number
on the machine's shared servers (never reconfigured, only used).

A missing engine skips its tests on a developer's machine, and fails them under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

PG_ADMIN_URL = os.environ.get(
    "MONAPI_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("MONAPI_TEST_REDIS", "redis://127.0.0.1:6379")


def missing(what: str, how: str) -> None:
    """Fail under CI, skip elsewhere: a missing server is never a silent pass in CI."""
    message = f"{what} is not available: {how}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stop_group(proc: subprocess.Popen[Any]) -> None:
    """Stop a process started with ``start_new_session=True`` and everything it started
    (gunicorn and its workers): SIGTERM, 30 s to finish, then SIGKILL."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status < 300:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{url} did not answer within {timeout}s:\n{log.read_text()[-3000:]}")


@contextmanager
def _process(cmd: list[str], ready_url: str, workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = workdir / "engine.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
    try:
        _wait_http(ready_url, proc, log)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


INFLUXD_CONFIG = """\
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"
[meta]
  dir = "{dir}/meta"
  logging-enabled = false
[data]
  dir = "{dir}/data"
  wal-dir = "{dir}/wal"
  query-log-enabled = false
  trace-logging-enabled = false
[coordinator]
  log-queries-after = "0s"
[monitor]
  store-enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:{port}"
  log-enabled = false
  flux-enabled = false
[continuous_queries]
  enabled = false
"""


def _binary(name: str, package: str) -> str:
    """The engine's binary, or a skip (a failure under CI) saying which package to install."""
    binary = shutil.which(name) or (
        f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None
    )
    if binary is None:
        missing(name, f"install Debian's {package} package (make test does it as root)")
    assert binary is not None
    return binary


@contextmanager
def influxdb_process(
    workdir: Path, port: int | None = None, auth: bool = False
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A throwaway ``influxd`` (Debian's influxdb package), optionally with authentication
    enabled; yields its base URL and the process (to stop or pause it)."""
    binary = _binary("influxd", "influxdb")
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config = INFLUXD_CONFIG.format(dir=workdir, port=port, rpc_port=free_port())
    if auth:
        config = config.replace(
            "flux-enabled = false", "flux-enabled = false\n  auth-enabled = true"
        )
    (workdir / "influxdb.conf").write_text(config)
    url = f"http://127.0.0.1:{port}"
    cmd = [binary, "-config", str(workdir / "influxdb.conf")]
    with _process(cmd, url + "/ping", workdir) as proc:
        yield url, proc


@contextmanager
def influxdb(workdir: Path) -> Iterator[str]:
    """A throwaway ``influxd``; yields its base URL."""
    with influxdb_process(workdir) as (url, _):
        yield url


@contextmanager
def victoriametrics_process(
    workdir: Path, port: int | None = None, dedup: bool = False
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A throwaway single-node ``victoria-metrics``; yields its base URL and the process.

    ``port`` and ``workdir`` again start it anew on the same address and data. ``dedup`` keeps
    one sample per series and millisecond (``-dedup.minScrapeInterval=1ms``), so a sample sent
    twice (a re-send after a lost answer) is stored once."""
    binary = _binary("victoria-metrics", "victoria-metrics")
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    cmd = [
        binary,
        f"-storageDataPath={workdir / 'data'}",
        f"-httpListenAddr=127.0.0.1:{port}",
        "-retentionPeriod=100y",
        # Show points as soon as they are flushed (the default hides the last 30 s).
        "-search.latencyOffset=0s",
        "-search.disableCache",
        "-loggerLevel=ERROR",
        *(["-dedup.minScrapeInterval=1ms"] if dedup else []),
    ]
    with _process(cmd, url + "/health", workdir) as proc:
        yield url, proc


@contextmanager
def victoriametrics(workdir: Path) -> Iterator[str]:
    """A throwaway single-node ``victoria-metrics``; yields its base URL."""
    with victoriametrics_process(workdir) as (url, _):
        yield url


def vm_flush(url: str) -> None:
    """Make everything VictoriaMetrics accepted searchable now (it does so within a second)."""
    with urllib.request.urlopen(url + "/internal/force_flush", timeout=10) as resp:
        assert resp.status < 300


@contextmanager
def postgresql_database() -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL, dropped afterwards; yields its URL."""
    try:
        import psycopg
    except ImportError:  # pragma: no cover - a dev extra
        missing("psycopg", "pip install -e '.[postgresql]'")
        raise
    name = f"monapi_test_{uuid.uuid4().hex[:10]}"
    dsn = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        missing("PostgreSQL", f"{dsn}: {exc}")
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class PostgresDatabases:
    """Fresh databases copied from a migrated template: one per test costs a file copy
    (tens of milliseconds), not a migration run."""

    def __init__(self) -> None:
        import psycopg

        self.dsn = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
        self.base = PG_ADMIN_URL.rsplit("/", 1)[0]
        self.template = f"monapi_tpl_{uuid.uuid4().hex[:10]}"
        self.made: list[str] = []
        try:
            with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f'CREATE DATABASE "{self.template}"')
        except psycopg.OperationalError as exc:
            missing("PostgreSQL", f"{self.dsn}: {exc}")
        from monapi.db import Database

        db = Database(f"{self.base}/{self.template}")
        try:
            db.upgrade()
        finally:
            db.dispose()

    def new(self) -> str:
        import psycopg

        name = f"monapi_test_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        self.made.append(name)
        return f"{self.base}/{name}"

    def drop(self, url: str) -> None:
        import psycopg

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            for name in [*self.made, self.template]:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def redis_database() -> Iterator[str]:
    """A Redis db number no other test session holds, emptied before and after; yields its URL.

    The claim is a key with an expiry in the db itself, so a crashed session frees it later."""
    import redis

    token = uuid.uuid4().hex
    try:
        probe = redis.Redis.from_url(REDIS_URL + "/0", socket_timeout=5)
        databases = int(probe.config_get("databases").get("databases", 16))
        probe.close()
    except redis.RedisError as exc:
        missing("Redis", f"{REDIS_URL}: {exc}")
    for number in range(databases - 1, 0, -1):  # db 0 is left to whatever else uses the server
        client = redis.Redis.from_url(f"{REDIS_URL}/{number}", socket_timeout=5)
        try:
            if client.set("monapi-test:claim", token, nx=True, ex=6 * 3600):
                client.flushdb()
                client.set("monapi-test:claim", token, ex=6 * 3600)
                try:
                    yield f"{REDIS_URL}/{number}"
                finally:
                    client.flushdb()
                return
        finally:
            client.close()
    missing("a free Redis db number", f"every db of {REDIS_URL} is claimed by a test session")


def pause(proc: subprocess.Popen[bytes]) -> None:
    """SIGSTOP an engine and wait until the kernel has stopped it: the signal is delivered
    asynchronously, and a fast client could otherwise still get an answer."""
    proc.send_signal(signal.SIGSTOP)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with open(f"/proc/{proc.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "T":
                return
        time.sleep(0.005)
    raise AssertionError(f"process {proc.pid} did not stop")
