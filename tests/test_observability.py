"""monapi watched: /metrics (Prometheus text format, counted across gunicorn workers), the
request id on every log line, the log file rotated by size across processes."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.parser import text_string_to_metric_families

from monapi.logs import file_handler

from .conftest import bearer, make_app, push, register_server
from .engines import free_port, stop_group

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by (name, labels); the parser refuses a bad exposition."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape(client: FlaskClient, **headers: str) -> Samples:
    resp = client.get("/metrics", headers=headers)
    assert resp.status_code == 200, resp.data
    assert resp.content_type == "text/plain; version=0.0.4; charset=utf-8"
    return parse(resp.get_data(as_text=True))


# In process ----------------------------------------------------------------------------------
def test_requests_are_counted_by_route_template_and_status(
    client: FlaskClient, admin_token: str
) -> None:
    server = register_server(client, admin_token)
    for _ in range(3):
        assert (
            client.get(f"/api/v1/servers/{server['id']}", headers=bearer(admin_token)).status_code
            == 200
        )
    assert client.get("/api/v1/servers/999", headers=bearer(admin_token)).status_code == 404
    assert client.get("/api/v1/servers/1").status_code == 401
    assert client.get("/no/such/path").status_code == 404
    s = scrape(client)
    route = "/api/v1/servers/<int:server_id>"
    total = "monapi_http_requests_total"
    assert value(s, total, method="GET", route=route, status="200") == 3
    assert value(s, total, method="GET", route=route, status="404") == 1
    assert value(s, total, method="GET", route=route, status="401") == 1
    assert value(s, total, method="POST", route="/api/v1/servers", status="201") == 1
    # Paths no route matched share one label value, whatever the path.
    assert value(s, total, method="GET", route="<unmatched>", status="404") == 1
    count = "monapi_http_request_duration_seconds_count"
    assert value(s, count, method="GET", route=route) == 5
    inf = value(
        s, "monapi_http_request_duration_seconds_bucket", method="GET", route=route, le="+Inf"
    )
    assert inf == 5
    assert value(s, "monapi_http_request_duration_seconds_sum", method="GET", route=route) > 0


def test_latencies_land_in_the_buckets_prometheus_client_would_put_them_in(
    tmp_path: Path,
) -> None:
    # Requests are tallied in memory and added to the histogram in bulk: the result must be
    # what observing each value would give, bounds and +Inf included.
    from prometheus_client import CollectorRegistry, Histogram

    from monapi.observability import REQUEST_BUCKETS, Telemetry
    from monapi.settings import load_settings

    seconds = [0.0, 1e-9, 0.001, 0.0010001, 0.3, 0.25, 1, 30, 30.5, 1e6]
    telemetry = Telemetry(load_settings({"data_dir": tmp_path}), "sqlite")
    reference_registry = CollectorRegistry()
    reference = Histogram(
        "monapi_http_request_duration_seconds",
        "reference",
        ["method", "route"],
        buckets=REQUEST_BUCKETS,
        registry=reference_registry,
    )
    for i, v in enumerate(seconds):
        telemetry.request("GET", "/x", 200, v)
        reference.labels("GET", "/x").observe(v)
        if i == 4:
            telemetry.flush()  # flushed twice: the second adds to the first
    telemetry.flush()

    def samples(metric: Any) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        return {
            (x.name, frozenset(x.labels.items())): x.value
            for family in metric.collect()
            for x in family.samples
            if not x.name.endswith("_created")
        }

    with telemetry._lock:  # nothing left in the tally
        assert not telemetry._tally.requests
    ours = samples(telemetry.latency)
    assert ours == samples(reference)
    count = (
        "monapi_http_request_duration_seconds_count",
        frozenset({("method", "GET"), ("route", "/x")}),
    )
    assert ours[count] == 10
    telemetry.close()


def test_points_accepted_and_rejected_by_reason_on_json_and_line_protocol(
    client: FlaskClient, admin_token: str
) -> None:
    key = register_server(client, admin_token)["api_key"]
    # 2 stored; the batch then stores 1 and refuses 3, each for its first error.
    assert (
        push(client, key, {"measurement": "cpu", "fields": {"usage_percent": 5.0}}).status_code
        == 204
    )
    assert (
        push(client, key, {"measurement": "cpu", "fields": {"usage_percent": 6.0}}).status_code
        == 204
    )
    batch = {
        "points": [
            {"measurement": "cpu", "fields": {"usage_percent": 7.0}},
            {"measurement": "cpu", "fields": {"usage_percent": 700.0}},
            {"measurement": "cpu", "fields": {"no_such_field": 1.0}},
            {"measurement": "cpu", "timestamp": "yesterday", "fields": {"usage_percent": 1.0}},
        ]
    }
    assert push(client, key, batch).status_code == 200
    # Line protocol: one stored, one that does not parse, one unknown field.
    body = b"cpu usage_percent=1.5\ncpu usage_percent=\ncpu bogus=1\n"
    resp = client.post("/write", data=body, headers=bearer(key))
    assert resp.status_code == 400, resp.data
    s = scrape(client)
    assert value(s, "monapi_points_accepted_total") == 2 + 1 + 1
    rejected = "monapi_points_rejected_total"
    assert value(s, rejected, reason="invalid_value") == 1
    assert value(s, rejected, reason="unknown_field") == 2
    assert value(s, rejected, reason="timestamp") == 1
    assert value(s, rejected, reason="invalid_line") == 1
    writes = "monapi_tsdb_write_duration_seconds_count"
    assert value(s, writes, backend="sqlite") == 4  # one per request that stored something
    assert value(s, "monapi_tsdb_writes_in_progress", backend="sqlite") == 0


def test_a_time_series_store_that_does_not_answer_counts_as_write_errors(tmp_path: Path) -> None:
    # InfluxDB configured on a port where nothing listens: the engine is down.
    app, token = make_app(
        tmp_path, tsdb="influxdb", influxdb_url=f"http://127.0.0.1:{free_port()}", tsdb_timeout="1s"
    )
    client = app.test_client()
    key = register_server(client, token)["api_key"]
    batch = {
        "points": [{"measurement": "cpu", "fields": {"usage_percent": float(i)}} for i in range(3)]
    }
    assert push(client, key, batch).status_code == 503
    s = scrape(client)
    assert value(s, "monapi_tsdb_write_errors_total", backend="influxdb", error="unavailable") == 1
    assert value(s, "monapi_points_rejected_total", reason="store_unavailable") == 3
    assert value(s, "monapi_points_accepted_total") == 0
    assert (
        value(s, "monapi_http_requests_total", method="POST", route="/api/v1/data", status="503")
        == 1
    )


def test_writes_waiting_on_a_frozen_engine_show_as_in_progress(
    tmp_path: Path, influxdb_url: str
) -> None:
    # InfluxDB behind a proxy that stops forwarding: pushes wait for their write.
    from .test_faults_stores import TcpProxy

    proxy = TcpProxy(int(influxdb_url.rsplit(":", 1)[1]))
    try:
        app, token = make_app(
            tmp_path,
            tsdb="influxdb",
            influxdb_url=f"http://127.0.0.1:{proxy.port}",
            influxdb_database="monapi_inflight",
            tsdb_timeout="20s",
        )
        client = app.test_client()
        key = register_server(client, token)["api_key"]
        point = {"measurement": "cpu", "fields": {"usage_percent": 1.0}}
        assert push(client, key, point).status_code == 204  # database made, connection open
        proxy.hang()

        def gauge() -> float:
            return value(scrape(client), "monapi_tsdb_writes_in_progress", backend="influxdb")

        with ThreadPoolExecutor(3) as pool:
            pushes = [
                pool.submit(lambda: push(app.test_client(), key, point).status_code)
                for _ in range(3)
            ]
            deadline = time.monotonic() + 10
            while gauge() != 3:  # published within a second
                assert time.monotonic() < deadline, gauge()
                time.sleep(0.2)
            assert not any(p.done() for p in pushes)
            proxy.restore()  # the hung connection is closed: the write is retried or fails
            codes = [p.result(timeout=60) for p in pushes]
        assert set(codes) <= {204, 503}, codes
        deadline = time.monotonic() + 10
        while gauge() != 0:
            assert time.monotonic() < deadline, gauge()
            time.sleep(0.2)
    finally:
        proxy.close()


def test_servers_are_counted_by_status(client: FlaskClient, admin_token: str) -> None:
    pushing = register_server(client, admin_token, "web-01")
    register_server(client, admin_token, "web-02")  # never pushes
    disabled = register_server(client, admin_token, "web-03")
    assert (
        push(
            client, pushing["api_key"], {"measurement": "cpu", "fields": {"usage_percent": 1.0}}
        ).status_code
        == 204
    )
    resp = client.post(f"/api/v1/servers/{disabled['id']}/disable", headers=bearer(admin_token))
    assert resp.status_code == 200, resp.data
    s = scrape(client)
    assert value(s, "monapi_servers", status="online") == 1
    assert value(s, "monapi_servers", status="never_seen") == 1
    assert value(s, "monapi_servers", status="disabled") == 1
    assert value(s, "monapi_servers", status="offline") == 0
    build = [k for k in s if k[0] == "monapi_build_info"]
    assert len(build) == 1 and dict(build[0][1])["tsdb"] == "sqlite"


def test_a_metrics_token_is_required_when_set(tmp_path: Path) -> None:
    app, token = make_app(tmp_path, metrics_token="m" * 8 + "etrics-scrape-token")
    client = app.test_client()
    missing = client.get("/metrics")
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert "MONAPI_METRICS_TOKEN" in missing.get_json()["error"]
    assert client.get("/metrics", headers=bearer("wrong")).status_code == 401
    assert (
        client.get("/metrics", headers=bearer(token)).status_code == 401
    )  # an admin token is not it
    scrape(client, Authorization="Bearer " + "m" * 8 + "etrics-scrape-token")


def test_metrics_can_be_turned_off_and_then_nothing_is_counted(tmp_path: Path) -> None:
    app, token = make_app(tmp_path, metrics_enabled=False)
    client = app.test_client()
    key = register_server(client, token)["api_key"]
    point = {"measurement": "cpu", "fields": {"usage_percent": 1.0}}
    assert push(client, key, point).status_code == 204
    resp = client.get("/metrics")
    assert resp.status_code == 404
    assert "MONAPI_METRICS_ENABLED" in resp.get_json()["error"]
    with app.app_context():  # monapi_servers reads the configuration store
        s = parse(app.extensions["monapi.telemetry"].exposition().decode())
    assert not [k for k in s if k[0].startswith("monapi_http_requests")]
    assert value(s, "monapi_points_accepted_total") == 0
    assert value(s, "monapi_tsdb_write_duration_seconds_count", backend="sqlite") == 0


def test_every_log_line_of_a_request_carries_its_id(tmp_path: Path) -> None:
    log = tmp_path / "log" / "monapi.log"
    app, token = make_app(tmp_path / "data", log_file=log, log_level="DEBUG")
    client = app.test_client()
    key = register_server(client, token)["api_key"]
    point = {"measurement": "cpu", "fields": {"usage_percent": 1.0}}
    stored = push(client, key, point, **{"X-Request-ID": "trace-42"})  # the hot path's 204
    assert stored.status_code == 204 and stored.headers["X-Request-ID"] == "trace-42"
    # Refused on the hot path, answered by Flask: one id for the request, in the answer and
    # in the log, whether the client sent one or not.
    refused = push(client, key, {"measurement": "cpu", "fields": {"nope": 1.0}})
    assert refused.status_code == 422
    rid = refused.headers["X-Request-ID"]
    # Any module's record, logged while a request is served, gets the id of that request.
    with app.test_request_context("/healthz", headers={"X-Request-ID": "trace-43"}):
        app.preprocess_request()
        logging.getLogger("monapi.anything").warning("something happened")
    logging.getLogger("monapi.anything").warning("outside of any request")
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    by_msg = {r["msg"]: r for r in lines}
    assert by_msg["POST /api/v1/data 204"]["request_id"] == "trace-42"
    assert by_msg["POST /api/v1/data 422"]["request_id"] == rid
    assert by_msg["something happened"]["request_id"] == "trace-43"
    assert "request_id" not in by_msg["outside of any request"]
    assert all(r["ts"] and r["level"] and r["logger"] for r in lines)


def _write_lines(path: str, worker: int, count: int) -> None:
    handler = file_handler(Path(path), 4096, 1000, "json")
    logger = logging.getLogger(f"rotation-test-{worker}")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    for i in range(count):
        logger.info("worker %d line %d %s", worker, i, "x" * 40)


def test_the_log_file_rotates_by_size_without_losing_lines_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "monapi.log"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from tests.test_observability import _write_lines;"
                f" _write_lines({str(path)!r}, {w}, 1500)",
            ],
            cwd=Path(__file__).parent.parent,
        )
        for w in range(3)
    ]
    for p in procs:
        assert p.wait(timeout=120) == 0
    files = [path, *sorted(tmp_path.glob("monapi.log.*[0-9]"))]
    seen: dict[int, list[int]] = {0: [], 1: [], 2: []}
    for f in files:
        assert f.stat().st_size <= 4096, f  # every file rotated at the limit
        for line in f.read_text().splitlines():
            _, w, _, i, _ = json.loads(line)["msg"].split(" ")
            seen[int(w)].append(int(i))
    assert len(files) > 20
    for w in range(3):  # every line of every process, once
        assert sorted(seen[w]) == list(range(1500))


# Under gunicorn ------------------------------------------------------------------------------
def _get(
    url: str, headers: dict[str, str] | None = None, data: bytes | None = None
) -> tuple[int, bytes]:
    req = urllib.request.Request(
        url, headers=headers or {}, data=data, method="POST" if data else "GET"
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """`gunicorn -c python:monapi.gunicorn_conf` with 2 workers, its metrics directory given
    (with a stale file of an earlier run in it), JSON logs on stderr."""
    port = free_port()
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    stale = MmapedDict(str(metrics_dir / "counter_999999.db"))
    labels = ["method", "route", "status"]
    key = mmap_key(
        "monapi_http_requests", "monapi_http_requests_total", labels, ["GET", "/healthz", "200"], ""
    )
    stale.write_value(key, 1000.0, 0.0)
    stale.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONAPI_")}
    env.update(
        MONAPI_DATA_DIR=str(tmp_path / "data"),
        MONAPI_BIND=f"127.0.0.1:{port}",
        MONAPI_WORKERS="2",
        MONAPI_THREADS="4",
        MONAPI_RATE_LIMIT_SERVER="0",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
    )
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "python:monapi.gunicorn_conf"],
            stdout=o,
            stderr=e,
            env=env,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if _get(base + "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, err.read_text()
            assert time.monotonic() < deadline, err.read_text()
            time.sleep(0.1)
        token = (
            out.read_text().split("Admin token (shown only this once; keep it safe):")[1].split()[0]
        )
        yield {"base": base, "proc": proc, "dir": metrics_dir, "token": token, "err": err}
    finally:
        stop_group(proc)


def _per_worker(metrics_dir: Path, route: str) -> dict[str, float]:
    """Each worker's own count of 200s on ``route``, read from its file."""
    counts = {}
    for f in metrics_dir.glob("counter_*.db"):
        d = MmapedDict(str(f), read_mode=True)
        for key, val, _ in d.read_all_values():
            labels = json.loads(key)[2]
            if key.startswith('["monapi_http_requests"') and labels == {
                "method": "GET",
                "route": route,
                "status": "200",
            }:
                counts[f.name] = val
        d.close()
    return counts


@pytest.mark.slow
def test_metrics_add_up_the_requests_of_two_gunicorn_workers(two_workers: dict[str, Any]) -> None:
    base, metrics_dir = two_workers["base"], two_workers["dir"]
    route = "/api/v1/swagger"  # any route; not /readyz, which the start-up polled
    sent = 0
    # New connections, concurrently, until each worker has answered some (each publishes
    # what it counted within a second).
    with ThreadPoolExecutor(8) as pool:
        while sent < 2000:
            codes = list(pool.map(lambda _: _get(base + route)[0], range(100)))
            assert codes == [200] * 100
            sent += 100
            time.sleep(1.5)
            per_worker = _per_worker(metrics_dir, route)
            if len(per_worker) == 2 and min(per_worker.values()) >= 5:
                break
    per_worker = _per_worker(metrics_dir, route)
    assert len(per_worker) == 2, per_worker  # both workers answered
    assert sum(per_worker.values()) == sent
    # Whichever worker answers the scrape, it reports the sum of both; the stale file of an
    # earlier run was wiped at start.
    for _ in range(6):
        status, body = _get(base + "/metrics")
        assert status == 200
        s = parse(body.decode())
        assert (
            value(s, "monapi_http_requests_total", method="GET", route=route, status="200") == sent
        )
        assert (
            value(s, "monapi_http_requests_total", method="GET", route="/healthz", status="200")
            == 0
        )
        assert (
            value(s, "monapi_http_request_duration_seconds_count", method="GET", route=route)
            == sent
        )


def _children(pid: int) -> list[int]:
    """The processes gunicorn's master ``pid`` forked (its workers)."""
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


@pytest.mark.slow
def test_pushes_on_the_hot_path_are_counted_and_survive_a_killed_worker(
    two_workers: dict[str, Any],
) -> None:
    base, token = two_workers["base"], two_workers["token"]
    status, body = _get(
        base + "/api/v1/servers",
        {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        json.dumps({"hostname": "web-01", "ip_address": "192.0.2.1"}).encode(),
    )
    assert status == 201, body
    key = json.loads(body)["api_key"]
    point = json.dumps({"measurement": "cpu", "fields": {"usage_percent": 1.0}}).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: _get(base + "/api/v1/data", headers, point)[0], range(300)))
    assert codes == [204] * 300

    def totals() -> tuple[float, float]:
        status, body = _get(base + "/metrics")
        assert status == 200
        s = parse(body.decode())
        pushes = value(
            s, "monapi_http_requests_total", method="POST", route="/api/v1/data", status="204"
        )
        return pushes, value(s, "monapi_points_accepted_total")

    deadline = time.monotonic() + 5  # each worker publishes what it counted within a second
    while totals() != (300, 300):
        assert time.monotonic() < deadline, totals()
        time.sleep(0.2)
    # A worker killed: gunicorn starts another; what the dead one counted stays in the totals.
    workers = _children(two_workers["proc"].pid)
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        now = _children(two_workers["proc"].pid)
        if len(now) == 2 and workers[0] not in now:
            break
        assert time.monotonic() < deadline
        time.sleep(0.2)
    for _ in range(4):
        assert totals() == (300, 300)
    assert json.loads(two_workers["err"].read_text().splitlines()[0])["logger"] == "gunicorn.error"
    for line in two_workers["err"].read_text().splitlines():
        json.loads(line)  # gunicorn's own lines are JSON too
