"""`monapi serve` for real: gunicorn, two worker processes, HTTP on loopback."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import psycopg
import pytest

from . import engines


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def call(
    base: str, method: str, path: str, token: str | None = None, body: Any = None
) -> tuple[int, Any, dict[str, str]]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw else None, dict(exc.headers)


def start_instance(
    data: Any, env_extra: dict[str, str], port: int | None = None
) -> tuple[subprocess.Popen[bytes], str, Any]:
    """`monapi serve` with two workers on ``port`` (default a free one); returns the process,
    base URL and log (appended to, so a restart on the same data keeps the first start's)."""
    port = port or free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONAPI_")}
    env.update(MONAPI_DATA_DIR=str(data), MONAPI_LOG_LEVEL="WARNING", MONAPI_LAST_SEEN_FLUSH="1")
    env.update(env_extra)
    out = data / "out.log"
    with out.open("a") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "monapi.cli",
                "serve",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "2",
                "--threads",
                "4",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if call(base, "GET", "/healthz")[0] == 200:
                return proc, base, out
        except OSError:
            time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail("monapi serve did not answer: " + out.read_text())


# "sqlite": one instance on the embedded defaults. The other: the scale-out layout, two
# instances (each gunicorn with two workers) sharing one PostgreSQL database, one Redis and one
# VictoriaMetrics.
@pytest.fixture(scope="module", params=["sqlite", "postgresql+redis+victoriametrics"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    env: dict[str, str] = {}
    count = 1
    sync: Any = lambda: None  # noqa: E731
    if request.param == "postgresql+redis+victoriametrics":
        dbs = request.getfixturevalue("pg_databases")
        vm_url = request.getfixturevalue("victoriametrics_url")
        db_url = dbs.new()
        # One VictoriaMetrics serves the whole test session: keep these server ids apart.
        with psycopg.connect(db_url.replace("postgresql+psycopg://", "postgresql://")) as conn:
            conn.execute("ALTER SEQUENCE servers_id_seq RESTART WITH 900000")

        def sync() -> None:
            engines.vm_flush(vm_url)

        env = {
            "MONAPI_DATABASE_URL": db_url,
            "MONAPI_TSDB": "victoriametrics",
            "MONAPI_VICTORIAMETRICS_URL": vm_url,
            "MONAPI_REDIS_URL": request.getfixturevalue("redis_url"),
            "MONAPI_REDIS_PREFIX": f"serve{os.getpid()}",
            # Instances that share a database share these secrets.
            "MONAPI_KEY_PEPPER": "test-pepper-" + "x" * 20,
            "MONAPI_SECRET_KEY": "test-secret-" + "y" * 20,
        }
        count = 2
    procs = []
    try:
        for i in range(count):
            data = tmp_path_factory.mktemp(f"serve{i}")
            procs.append(start_instance(data, env))
        proc, base, out = procs[0]
        token = next(w for w in out.read_text().split() if w.startswith("mka_"))
        yield {
            "base": base,
            "bases": [b for _, b, _ in procs],
            "token": token,
            "proc": proc,
            "procs": [p for p, _, _ in procs],
            "log": out,
            "kind": request.param,
            "sync": sync,
        }
    finally:
        for proc, _, _ in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(30)


def test_first_start_prints_the_admin_token_and_where_it_listens(served: dict[str, Any]) -> None:
    text = served["log"].read_text()
    assert "Admin token (shown only this once" in text
    assert served["base"] in text
    assert "Authorization: Bearer" in text


def test_round_trip_over_http_across_workers(served: dict[str, Any]) -> None:
    base, token = served["base"], served["token"]
    status, body, _ = call(base, "POST", "/api/v1/enrollment-tokens", token, {"max_uses": 1})
    assert status == 201
    status, server, _ = call(
        base,
        "POST",
        "/api/v1/servers",
        body["token"],
        {"hostname": "gw-1", "ip_address": "192.0.2.1"},
    )
    assert status == 201
    key = server["api_key"]
    now = int(time.time())
    points = [{"timestamp": now - i, "fields": {"load1": float(i)}} for i in range(50)]
    status, _, _ = call(base, "POST", "/api/v1/data", key, {"points": points})
    assert status == 204
    served["sync"]()
    status, got, headers = call(
        served["bases"][-1],  # read through the other instance, where there is one
        "GET",
        f"/api/v1/servers/{server['id']}/metrics?fields=load1&start=-5m&agg=count&step=5m",
        key,
    )
    assert status == 200 and headers["X-Request-ID"]
    assert sum(p[1] for p in got["series"][0]["points"]) == 50
    bases = served["bases"]
    # Disable the field; within a second every worker of every instance refuses it.
    _, fields, _ = call(base, "GET", "/api/v1/fields?measurement=system", token)
    load1 = next(f for f in fields["items"] if f["name"] == "load1")
    call(base, "PATCH", f"/api/v1/fields/{load1['id']}", token, {"enabled": False})
    time.sleep(1.0)
    codes = {
        call(bases[i % len(bases)], "POST", "/api/v1/data", key, {"fields": {"load1": 1.0}})[0]
        for i in range(20)
    }
    assert codes == {422}
    # Rotate the key: within a second the old one is refused everywhere.
    call(base, "POST", f"/api/v1/servers/{server['id']}/rotate-key", token)
    time.sleep(1.0)
    codes = {
        call(bases[i % len(bases)], "POST", "/api/v1/data", key, {"fields": {"load5": 1.0}})[0]
        for i in range(20)
    }
    assert codes == {401}


def test_parallel_registrations_of_one_hostname_give_one_201(served: dict[str, Any]) -> None:
    token = served["token"]
    body = {"hostname": "race-1", "ip_address": "192.0.2.7"}
    bases = served["bases"]
    with ThreadPoolExecutor(max_workers=12) as pool:
        codes = list(
            pool.map(
                lambda i: call(bases[i % len(bases)], "POST", "/api/v1/servers", token, body)[0],
                range(12),
            )
        )
    assert sorted(codes) == [201] + [409] * 11


def test_enrollment_max_uses_holds_under_parallel_requests(served: dict[str, Any]) -> None:
    base, token = served["base"], served["token"]
    _, tok, _ = call(base, "POST", "/api/v1/enrollment-tokens", token, {"max_uses": 3})

    bases = served["bases"]

    def register(i: int) -> int:
        body = {"hostname": f"par-{i}", "ip_address": "192.0.2.8"}
        return call(bases[i % len(bases)], "POST", "/api/v1/servers", tok["token"], body)[0]

    with ThreadPoolExecutor(max_workers=12) as pool:
        codes = list(pool.map(register, range(12)))
    assert sorted(codes) == [201] * 3 + [401] * 9
    _, listed, _ = call(base, "GET", "/api/v1/enrollment-tokens", token)
    assert next(t for t in listed["items"] if t["id"] == tok["id"])["uses"] == 3


def test_openapi_and_offline_docs_are_served(served: dict[str, Any]) -> None:
    base = served["base"]
    status, spec, _ = call(base, "GET", "/api/v1/openapi.json")
    assert status == 200 and spec["openapi"].startswith("3.")
    assert "/api/v1/data" in spec["paths"] and "/api/register_server" in spec["paths"]
    with urllib.request.urlopen(base + "/api/v1/swagger", timeout=10) as resp:
        page = resp.read().decode()
    assert "swagger" in page.lower()
    assert "https://" not in page and "http://" not in page.replace(base, "")  # no CDN
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets)
    for asset in assets:  # every script, style and image comes from monapi itself
        with urllib.request.urlopen(urljoin(base + "/api/v1/swagger", asset), timeout=10) as r:
            assert r.status == 200 and len(r.read()) > 100, asset


def test_readyz_names_every_backend(served: dict[str, Any]) -> None:
    for base in served["bases"]:
        status, body, _ = call(base, "GET", "/readyz")
        assert status == 200
        backends = {k: v["backend"] for k, v in body["checks"].items()}
        if served["kind"] == "sqlite":
            assert backends == {"config_store": "sqlite", "tsdb": "sqlite", "cache": "local"}
        else:
            assert backends == {
                "config_store": "postgresql",
                "tsdb": "victoriametrics",
                "cache": "redis",
            }


def test_sigterm_stops_cleanly(served: dict[str, Any]) -> None:
    for proc in served["procs"]:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(30) == 0


def test_each_worker_freezes_what_start_up_made_out_of_the_collectors_sight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc
    import runpy

    import monapi

    monkeypatch.setenv("MONAPI_DATA_DIR", str(tmp_path))
    # Set, so that the config neither makes a directory nor leaves the variable behind.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))
    conf = runpy.run_path(str(Path(monapi.__file__).parent / "gunicorn_conf.py"))
    gc.unfreeze()
    try:
        conf["post_worker_init"](None)
        assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()
