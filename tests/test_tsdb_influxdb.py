"""The InfluxDB 1.x backend against a real ``influxd`` (Debian's 1.6.7): setup, partial writes,
errors, and the parts of InfluxQL the contract tests do not reach.

Nothing here fakes InfluxDB. Faults come from a real ``influxd`` that is stopped, paused
(SIGSTOP), absent (a closed port) or behind a small proxy that answers 5xx instead of it.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import logging
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from monapi.errors import StoreUnavailable
from monapi.settings import load_settings
from monapi.tsdb import influxdb
from monapi.tsdb.base import Point, WriteBatch
from monapi.tsdb.influxdb import InfluxDBStore, quote_ident, quote_string

from . import engines
from .conftest import bearer, make_app, push, register_server

T0 = (int(time.time()) // 3600) * 3600 - 7200  # an hour boundary, one to two hours ago
NS = 10**9


def fresh_db() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


def influxql(url: str, q: str, db: str | None = None, auth: tuple[str, str] | None = None) -> Any:
    """One InfluxQL statement straight to InfluxDB (not through monapi)."""
    params = {"q": q, "epoch": "ns", **({"db": db} if db else {})}
    req = urllib.request.Request(
        url + "/query", data=urllib.parse.urlencode(params).encode(), method="POST"
    )
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)["results"][0]


def rows(url: str, db: str, measurement: str) -> list[dict[str, Any]]:
    """Every stored point of a measurement in monapi's retention policy, as dicts."""
    res = influxql(url, f'SELECT * FROM "{db}"."monapi"."{measurement}"', db)
    out = []
    for s in res.get("series", []):
        out.extend(dict(zip(s["columns"], v, strict=True)) for v in s["values"])
    return out


def write_lp(url: str, db: str, body: str, rp: str = "monapi") -> None:
    req = urllib.request.Request(
        f"{url}/write?db={db}&rp={rp}&precision=s", data=body.encode(), method="POST"
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 204


def influx_app(tmp_path: Path, url: str, db: str, **overrides: Any) -> tuple[Flask, str]:
    return make_app(
        tmp_path / "data", tsdb="influxdb", influxdb_url=url, influxdb_database=db, **overrides
    )


def store_of(app: Flask) -> InfluxDBStore:
    store = app.extensions["monapi.tsdb"]
    assert isinstance(store, InfluxDBStore)
    return store


@contextmanager
def dedicated_influxd(
    workdir: Path, port: int | None = None, auth: bool = False
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """An influxd of the test's own, to stop, pause or protect with a password."""
    with engines.influxdb_process(workdir, port, auth) as running:
        yield running


class FaultProxy:
    """A small HTTP/1.1 proxy in front of the real influxd: it records what monapi sends and,
    when told to, answers with a fault instead of forwarding."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urllib.parse.urlsplit(upstream)
        self.fault: tuple[int, dict[str, str]] | None = None
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.connections = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                proxy.connections += 1

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items()}
                proxy.requests.append((self.command, self.path, headers, body))
                if proxy.fault is not None:
                    status, extra = proxy.fault
                    data = b'{"error":"injected fault"}'
                    self.send_response(status)
                    for k, v in {"Content-Type": "application/json", **extra}.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                conn = http.client.HTTPConnection(
                    proxy.upstream.hostname, proxy.upstream.port, timeout=10
                )
                try:
                    fwd = {k: v for k, v in headers.items() if k.lower() != "connection"}
                    conn.request(self.command, self.path, body=body or None, headers=fwd)
                    resp = conn.getresponse()
                    data = resp.read()
                    self.send_response(resp.status)
                    for k, v in resp.getheaders():
                        if k.lower() not in ("transfer-encoding", "content-length", "connection"):
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_POST = _relay

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def proxy(influxdb_url: str) -> Iterator[FaultProxy]:
    p = FaultProxy(influxdb_url)
    yield p
    p.close()


# Quoting ---------------------------------------------------------------------------------------
def test_influxql_quoting_escapes_what_influxql_unescapes(influxdb_url: str) -> None:
    assert quote_ident('a"b\\c') == '"a\\"b\\\\c"'
    assert quote_string("it's \\ x\ny") == "'it\\'s \\\\ x\\ny'"
    # and InfluxDB reads them back as the same text
    res = influxql(influxdb_url, f'SHOW TAG VALUES ON {quote_ident("no db")} WITH KEY = "k"')
    assert "database not found: no db" in res["error"]


# Setup -----------------------------------------------------------------------------------------
def test_start_creates_the_database_and_a_default_retention_policy(influxdb_url: str) -> None:
    db = fresh_db()
    store = influxdb.create(
        load_settings(
            {"influxdb_url": influxdb_url, "influxdb_database": db, "retention": 2 * 86400 + 1}
        )
    )
    try:
        res = influxql(influxdb_url, f'SHOW RETENTION POLICIES ON "{db}"')
        policies = {r[0]: (r[1], r[4]) for r in res["series"][0]["values"]}
        assert policies["monapi"] == ("49h0m0s", True)  # rounded up to whole hours, default
        store.ping()
    finally:
        store.close()


def test_an_existing_retention_policy_is_left_alone(
    influxdb_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    db = fresh_db()
    influxql(influxdb_url, f'CREATE DATABASE "{db}"')
    influxql(influxdb_url, f'CREATE RETENTION POLICY "monapi" ON "{db}" DURATION 3h REPLICATION 1')
    with caplog.at_level(logging.WARNING, logger="monapi.tsdb.influxdb"):
        store = InfluxDBStore(influxdb_url, db, "monapi", 30 * 86400)
    store.close()
    res = influxql(influxdb_url, f'SHOW RETENTION POLICIES ON "{db}"')
    policies = {r[0]: (r[1], r[4]) for r in res["series"][0]["values"]}
    assert policies == {"autogen": ("0s", True), "monapi": ("3h0m0s", False)}
    assert "3h0m0s" in caplog.text and "720h" in caplog.text


# Partial writes --------------------------------------------------------------------------------
def test_a_field_type_conflict_refuses_exactly_the_points_with_that_field(
    tmp_path: Path, influxdb_url: str
) -> None:
    db = fresh_db()
    app, token = influx_app(tmp_path, influxdb_url, db)
    client = app.test_client()
    s = register_server(client, token)
    # Someone else stored system.load1 as an integer in this shard before monapi did.
    write_lp(influxdb_url, db, f"system,host=other,server_id=999 load1=5i {T0}")
    pts = [
        {"timestamp": T0 + 1, "fields": {"load1": 1.5}},
        {"timestamp": T0 + 2, "fields": {"processes": 10}},
        {"measurement": "disk", "timestamp": T0 + 3, "tags": {"mount": "/"}, "fields": {"free": 7}},
        {"timestamp": T0 + 4, "fields": {"load1": 2.5, "processes": 11}},
    ]
    resp = push(client, s["api_key"], {"points": pts})
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert (body["accepted"], body["rejected"]) == (2, 2)
    assert [(e["index"], e["field"]) for e in body["errors"]] == [(0, "load1"), (3, "load1")]
    for err in body["errors"]:
        assert err["reason"].startswith("InfluxDB refused the point: field type conflict")
        assert "first stored as integer" in err["reason"]
    stored = {r["time"] // NS: r for r in rows(influxdb_url, db, "system") if r["server_id"] == "1"}
    assert sorted(stored) == [T0 + 2]
    assert stored[T0 + 2]["processes"] == 10
    assert [r["free"] for r in rows(influxdb_url, db, "disk")] == [7]


def test_points_beyond_the_retention_policy_are_refused_and_the_others_stored(
    tmp_path: Path, influxdb_url: str
) -> None:
    db = fresh_db()
    app, token = influx_app(tmp_path, influxdb_url, db, retention="1h")
    client = app.test_client()
    s = register_server(client, token)
    now = int(time.time())
    pts = [
        {"timestamp": now - 300, "fields": {"load1": 1.0}},
        {"timestamp": now - 3 * 3600, "fields": {"load1": 2.0}},
        {"timestamp": now - 2 * 3600, "fields": {"load1": 3.0}},
    ]
    resp = push(client, s["api_key"], {"points": pts})
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert [e["index"] for e in body["errors"]] == [1, 2]
    assert all("retention policy 'monapi' keeps (1h)" in e["reason"] for e in body["errors"])
    assert [r["load1"] for r in rows(influxdb_url, db, "system")] == [1.0]


def _batch(*points: Point) -> list[WriteBatch]:
    return [WriteBatch(1, "web-01", list(points))]


def test_refused_points_are_found_by_sending_halves_when_influxdb_does_not_say_which(
    influxdb_url: str,
) -> None:
    db = fresh_db()
    store = InfluxDBStore(influxdb_url, db, "monapi", 86400)
    try:
        # Two types for a new field in one request: InfluxDB 1.6 answers a bare "field type
        # conflict" and stores nothing of that shard. (monapi's validator never sends this; the
        # store must still find the one bad point.)
        refused = store.write(
            _batch(
                Point("fresh", (), T0 * NS, {"x": 1}),
                Point("fresh", (), (T0 + 1) * NS, {"x": 2.5}),
                Point("fresh", (), (T0 + 2) * NS, {"y": 1.0}),
                Point("other", (), (T0 + 3) * NS, {"z": 1.0}),
            )
        )
        assert [(r.index, r.field) for r in refused] == [(1, "x")]
        assert "field type conflict" in refused[0].reason
        got = sorted(r["time"] // NS for r in rows(influxdb_url, db, "fresh"))
        assert got == [T0, T0 + 2]
        assert len(rows(influxdb_url, db, "other")) == 1
    finally:
        store.close()


def test_points_whose_fate_stays_unknown_are_reported_refused(
    influxdb_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(influxdb, "PROBE_BUDGET", 0)
    db = fresh_db()
    store = InfluxDBStore(influxdb_url, db, "monapi", 86400)
    try:
        refused = store.write(
            _batch(
                Point("fresh", (), T0 * NS, {"x": 1}),
                Point("fresh", (), (T0 + 1) * NS, {"x": 2.5}),
                Point("fresh", (), (T0 + 2) * NS, {"y": 1.0}),
            )
        )
        assert sorted(r.index for r in refused) == [0, 1, 2]
        assert all("could not tell" in r.reason and "send it again" in r.reason for r in refused)
        assert rows(influxdb_url, db, "fresh") == []  # indeed none was stored
    finally:
        store.close()


def test_a_field_influxdb_cannot_name_is_refused_before_sending(influxdb_url: str) -> None:
    db = fresh_db()
    store = InfluxDBStore(influxdb_url, db, "monapi", 86400)
    try:
        refused = store.write(
            _batch(
                Point("m", (), T0 * NS, {"time": 1.0}),
                Point("m", (("time", "x"),), T0 * NS, {"v": 1.0}),
                Point("m", (), T0 * NS, {"v": 2.0}),
            )
        )
        assert [(r.index, r.field) for r in refused] == [(0, "time"), (1, None)]
        assert 'field named "time"' in refused[0].reason
        assert 'invalid tag key: input tag "time"' in refused[1].reason
        assert [r["v"] for r in rows(influxdb_url, db, "m")] == [2.0]
    finally:
        store.close()


def test_a_dropped_database_or_policy_is_created_again(influxdb_url: str) -> None:
    db = fresh_db()
    store = InfluxDBStore(influxdb_url, db, "monapi", 86400)
    try:
        assert store.write(_batch(Point("m", (), T0 * NS, {"v": 1.0}))) == []
        influxql(influxdb_url, f'DROP DATABASE "{db}"')
        assert store.latest([1]) == {1: []}
        assert store.write(_batch(Point("m", (), (T0 + 1) * NS, {"v": 2.0}))) == []
        influxql(influxdb_url, f'DROP RETENTION POLICY "monapi" ON "{db}"')
        assert store.write(_batch(Point("m", (), (T0 + 2) * NS, {"v": 3.0}))) == []
        assert [r["v"] for r in rows(influxdb_url, db, "m")] == [3.0]
    finally:
        store.close()


# Reads -----------------------------------------------------------------------------------------
def test_integers_at_the_int64_limits_round_trip(tmp_path: Path, influxdb_url: str) -> None:
    app, token = influx_app(tmp_path, influxdb_url, fresh_db())
    client = app.test_client()
    resp = client.post(
        "/api/v1/fields",
        json={"measurement": "app", "name": "counter", "type": "int"},
        headers=bearer(token),
    )
    assert resp.status_code == 201, resp.get_json()
    s = register_server(client, token)
    lo, hi = -(2**63), 2**63 - 1
    pts = [
        {"measurement": "app", "timestamp": T0, "fields": {"counter": lo}},
        {"measurement": "app", "timestamp": T0 + 1, "fields": {"counter": hi}},
    ]
    assert push(client, s["api_key"], {"points": pts}).status_code == 204
    store = store_of(app)
    ((latest,),) = store.latest([s["id"]]).values()
    assert latest.value == hi and type(latest.value) is int
    for agg, want in (("min", lo), ("max", hi), ("last", hi)):
        (series,) = store.query(
            s["id"], [("app", "counter")], T0 * NS, (T0 + 59) * NS, 60 * NS, agg
        )
        assert series.points == [(T0 * NS, want)]


def test_tag_values_with_quotes_backslashes_and_unicode(tmp_path: Path, influxdb_url: str) -> None:
    app, token = influx_app(tmp_path, influxdb_url, fresh_db())
    client = app.test_client()
    s = register_server(client, token)
    mounts = ["it's", 'say "hi"', "a\\b", "ünï ✓,=x", "/"]
    pts = [
        {
            "measurement": "disk",
            "timestamp": T0 + i,
            "tags": {"mount": m},
            "fields": {"used_percent": float(i)},
        }
        for i, m in enumerate(mounts)
    ]
    assert push(client, s["api_key"], {"points": pts}).status_code == 204
    store = store_of(app)
    for i, m in enumerate(mounts):
        (series,) = store.query(
            s["id"],
            [("disk", "used_percent")],
            T0 * NS,
            (T0 + 59) * NS,
            60 * NS,
            "last",
            {"mount": m},
        )
        assert series.tags == {"mount": m} and series.points == [(T0 * NS, float(i))]
    latest = {lv.tags["mount"]: lv.value for lv in store.latest([s["id"]])[s["id"]]}
    assert latest == {m: float(i) for i, m in enumerate(mounts)}


def test_a_renamed_host_stays_one_series(influxdb_url: str) -> None:
    store = InfluxDBStore(influxdb_url, fresh_db(), "monapi", 86400)
    try:
        p = [Point("disk", (("mount", "/"),), (T0 + i) * NS, {"used": float(i)}) for i in range(4)]
        assert (
            store.write([WriteBatch(1, "old-name", p[:2]), WriteBatch(1, "new-name", p[2:])]) == []
        )
        assert (
            store.write([WriteBatch(2, "other", [Point("disk", (), T0 * NS, {"used": 9.0})])]) == []
        )
        for agg, want in (("count", 4), ("sum", 6.0), ("mean", 1.5), ("last", 3.0)):
            (series,) = store.query(1, [("disk", "used")], T0 * NS, (T0 + 59) * NS, 60 * NS, agg)
            assert (series.tags, series.points) == ({"mount": "/"}, [(T0 * NS, want)])
        (latest,) = store.latest([1])[1]
        assert (latest.tags, latest.ts, latest.value) == ({"mount": "/"}, (T0 + 3) * NS, 3.0)
    finally:
        store.close()


def test_latest_of_many_servers_at_once(influxdb_url: str) -> None:
    store = InfluxDBStore(influxdb_url, fresh_db(), "monapi", 86400)
    try:
        ids = list(range(1, 251))
        batches = [
            WriteBatch(i, f"h{i}", [Point("system", (), T0 * NS, {"load1": float(i), "up": True})])
            for i in ids
        ]
        assert store.write(batches) == []
        got = store.latest([*ids, 9999])
        assert got[9999] == []
        for i in ids:
            assert [(v.field, v.value) for v in got[i]] == [("load1", float(i)), ("up", True)]
    finally:
        store.close()


def test_deleting_a_server_drops_its_series_and_counts_them(influxdb_url: str) -> None:
    db = fresh_db()
    store = InfluxDBStore(influxdb_url, db, "monapi", 86400)
    try:
        pts = [
            Point("disk", (("mount", "/"),), T0 * NS, {"used": 1.0}),
            Point("disk", (("mount", "/srv"),), T0 * NS, {"used": 2.0}),
            Point("system", (), T0 * NS, {"load1": 1.0}),
        ]
        store.write([WriteBatch(1, "a", pts), WriteBatch(2, "b", pts)])
        assert store.delete_server(1) == 3
        assert store.latest([1, 2])[1] == [] and len(store.latest([1, 2])[2]) == 3
        assert store.delete_server(1) == 0
        assert store.prune(time.time_ns()) == 0  # the retention policy's job
    finally:
        store.close()


# Engine failures -------------------------------------------------------------------------------
def test_influxdb_down_gives_503_with_retry_after_and_readyz_says_so(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{engines.free_port()}"  # nothing listens there
    app, token = influx_app(tmp_path, url, fresh_db())  # the app starts anyway
    client = app.test_client()
    s = register_server(client, token)
    resp = push(client, s["api_key"], {"timestamp": T0, "fields": {"load1": 1.0}})
    assert resp.status_code == 503, resp.get_json()
    assert resp.headers["Retry-After"] == "5"
    assert "InfluxDB" in resp.get_json()["error"]
    resp = client.get(f"/api/v1/servers/{s['id']}/latest", headers=bearer(token))
    assert resp.status_code == 503 and resp.headers["Retry-After"]
    resp = client.get("/readyz")
    assert resp.status_code == 503
    (detail,) = resp.get_json()["details"]
    assert detail["location"] == "tsdb" and "MONAPI_INFLUXDB_URL" in detail["reason"]


def test_the_app_starts_while_influxdb_is_down_and_works_once_it_is_up(tmp_path: Path) -> None:
    port = engines.free_port()
    db = fresh_db()
    app, token = influx_app(tmp_path, f"http://127.0.0.1:{port}", db)
    client = app.test_client()
    resp = client.get("/readyz")
    assert resp.status_code == 503
    assert "tsdb (influxdb)" in resp.get_json()["error"]
    with dedicated_influxd(tmp_path / "influxd", port=port) as (url, _):
        resp = client.get("/readyz")
        assert resp.status_code == 200, resp.get_json()
        assert resp.get_json()["checks"]["tsdb"] == {"backend": "influxdb", "status": "ok"}
        s = register_server(client, token)
        assert push(client, s["api_key"], {"timestamp": T0, "fields": {"load1": 1.0}}).status_code
        assert [r["load1"] for r in rows(url, db, "system")] == [1.0]
        res = influxql(url, f'SHOW RETENTION POLICIES ON "{db}"')
        policies = {r[0]: (r[1], r[4]) for r in res["series"][0]["values"]}
        assert policies["monapi"] == ("720h0m0s", True)
    # and once it stops again: 503, not an error per point
    resp = push(client, s["api_key"], {"timestamp": T0 + 1, "fields": {"load1": 2.0}})
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "5"
    assert client.get("/readyz").status_code == 503


def test_a_timeout_gives_503(tmp_path: Path) -> None:
    with dedicated_influxd(tmp_path / "influxd") as (url, proc):
        app, token = influx_app(tmp_path, url, fresh_db(), tsdb_timeout="1s")
        client = app.test_client()
        s = register_server(client, token)
        point = {"timestamp": T0, "fields": {"load1": 1.0}}
        assert push(client, s["api_key"], point).status_code == 204
        engines.pause(proc)
        try:
            started = time.monotonic()
            resp = push(client, s["api_key"], point)
            assert resp.status_code == 503, resp.get_json()
            assert resp.headers["Retry-After"]
            assert "timed out" in resp.get_json()["error"]
            assert time.monotonic() - started < 5
        finally:
            proc.send_signal(signal.SIGCONT)
        assert push(client, s["api_key"], point).status_code == 204


def test_a_5xx_gives_503_with_the_engines_retry_after(tmp_path: Path, proxy: FaultProxy) -> None:
    app, token = influx_app(tmp_path, proxy.url, fresh_db())
    client = app.test_client()
    s = register_server(client, token)
    point = {"timestamp": T0, "fields": {"load1": 1.0}}
    proxy.fault = (500, {})
    resp = push(client, s["api_key"], point)
    assert (resp.status_code, resp.headers["Retry-After"]) == (503, "5")
    assert "InfluxDB answered 500" in resp.get_json()["error"]
    proxy.fault = (503, {"Retry-After": "7"})
    resp = push(client, s["api_key"], point)
    assert (resp.status_code, resp.headers["Retry-After"]) == (503, "7")
    resp = client.get(
        f"/api/v1/servers/{s['id']}/metrics?fields=system.load1&start={T0}&end={T0 + 60}",
        headers=bearer(token),
    )
    assert resp.status_code == 503
    proxy.fault = None
    assert push(client, s["api_key"], point).status_code == 204


def test_writes_are_gzipped_over_one_kept_alive_connection(
    tmp_path: Path, proxy: FaultProxy
) -> None:
    app, token = influx_app(tmp_path, proxy.url, fresh_db(), tsdb_compression="gzip")
    client = app.test_client()
    s = register_server(client, token)
    for i in range(5):
        point = {"timestamp": T0 + i, "fields": {"load1": float(i)}}
        assert push(client, s["api_key"], point).status_code == 204
    writes = [r for r in proxy.requests if r[1].startswith("/write")]
    assert len(writes) == 5
    for _, path, headers, body in writes:
        assert headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(body).startswith(b"system,host=web-01,server_id=1 load1=")
        assert "precision=ns" in path and "rp=monapi" in path
    store = store_of(app)
    assert store.http.raw is not None and len(store.http.raw._idle) == 1  # kept for the next
    assert proxy.connections == 1  # setup, writes: one TCP connection


def test_writes_to_a_loopback_engine_are_not_compressed_by_default(
    tmp_path: Path, proxy: FaultProxy
) -> None:
    app, token = influx_app(tmp_path, proxy.url, fresh_db())
    client = app.test_client()
    s = register_server(client, token)
    assert push(client, s["api_key"], {"fields": {"load1": 1.0}}).status_code == 204
    (write,) = [r for r in proxy.requests if r[1].startswith("/write")]
    assert "Content-Encoding" not in write[2]
    assert write[3].startswith(b"system,host=web-01,server_id=1 load1=1.0 ")


def test_bad_credentials_are_a_clear_503_naming_the_settings(tmp_path: Path) -> None:
    with dedicated_influxd(tmp_path / "influxd", auth=True) as (url, _):
        influxql(url, "CREATE USER \"admin\" WITH PASSWORD 's3cret' WITH ALL PRIVILEGES")
        influxql(url, "CREATE USER \"nobody\" WITH PASSWORD 'pw'", auth=("admin", "s3cret"))
        db = fresh_db()
        wrong = InfluxDBStore(url, db, "monapi", 86400, username="admin", password="nope")
        with pytest.raises(StoreUnavailable, match="MONAPI_INFLUXDB_PASSWORD"):
            wrong.ping()
        with pytest.raises(StoreUnavailable, match="refused monapi's credentials"):
            wrong.write(_batch(Point("m", (), T0 * NS, {"v": 1.0})))
        wrong.close()
        weak = InfluxDBStore(url, db, "monapi", 86400, username="nobody", password="pw")
        with pytest.raises(StoreUnavailable, match=r"does not let user 'nobody'.*grant it READ"):
            weak.ping()
        weak.close()
        good = InfluxDBStore(url, db, "monapi", 86400, username="admin", password="s3cret")
        try:
            good.ping()
            assert good.write(_batch(Point("m", (), T0 * NS, {"v": 1.0}))) == []
            assert [v.value for v in good.latest([1])[1]] == [1.0]
        finally:
            good.close()
