"""The InfluxDB-compatible endpoints: /write, /api/v2/write, /ping, /query.

Raw requests for every rule and error, then the real InfluxDB client libraries (``influxdb``
for 1.x, ``influxdb-client`` for 2.x) pointed at monapi over HTTP, with the data read back
through monapi's own query API.
"""

from __future__ import annotations

import base64
import gzip
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.serving import make_server

from .conftest import bearer, make_app, register_server

NOW_S = int(time.time())
FIELDS = [
    {"measurement": "cpu", "name": "usage_user", "type": "float", "min": 0, "max": 100},
    {"measurement": "cpu", "name": "usage_system", "type": "float", "min": 0, "max": 100},
    {"measurement": "mem", "name": "delta", "type": "float"},
    {"measurement": "net", "name": "up", "type": "bool"},
    {"measurement": "system", "name": "uptime_format", "type": "string"},
]  # besides the default fields: mem.used (int, >= 0), system.load1 (float, >= 0), ...


def configure_fields(client: FlaskClient, admin_token: str) -> None:
    for f in FIELDS:
        resp = client.post("/api/v1/fields", json=f, headers=bearer(admin_token))
        assert resp.status_code == 201, resp.get_json()


@pytest.fixture
def server(client: FlaskClient, admin_token: str) -> dict[str, Any]:
    configure_fields(client, admin_token)
    return register_server(client, admin_token, "web-01")


@pytest.fixture
def key(server: dict[str, Any]) -> str:
    return str(server["api_key"])


def write(
    client: FlaskClient,
    key: str | None,
    body: str | bytes,
    *,
    path: str = "/write",
    gz: bool = False,
    headers: dict[str, str] | None = None,
    **params: str,
) -> Any:
    data = body.encode() if isinstance(body, str) else body
    hdrs = {"Content-Type": "text/plain; charset=utf-8", **(headers or {})}
    if key is not None:
        hdrs.setdefault("Authorization", f"Token {key}")
    if gz:
        data = gzip.compress(data)
        hdrs["Content-Encoding"] = "gzip"
    if path == "/write":
        params.setdefault("db", "telegraf")
    return client.post(path, data=data, headers=hdrs, query_string=params)


def latest(client: FlaskClient, token: str, server_id: int) -> dict[tuple[str, str], Any]:
    resp = client.get(f"/api/v1/servers/{server_id}/latest", headers=bearer(token))
    assert resp.status_code == 200, resp.get_json()
    return {(v["measurement"], v["field"]): v for v in resp.get_json()["values"]}


def values(client: FlaskClient, token: str, server_id: int) -> dict[tuple[str, str], Any]:
    return {k: v["value"] for k, v in latest(client, token, server_id).items()}


# /ping and /query ------------------------------------------------------------------------------
def test_ping_answers_204_with_the_version_header(client: FlaskClient) -> None:
    for method in (client.get, client.head):
        resp = method("/ping")
        assert resp.status_code == 204
        assert resp.headers["X-Influxdb-Version"].startswith("1.")
        assert resp.headers["X-Influxdb-Build"] == "OSS"
    resp = client.get("/ping?verbose=true")
    assert resp.status_code == 200 and resp.get_json()["version"].startswith("1.")


def test_query_answers_the_start_up_statements(client: FlaskClient, key: str) -> None:
    resp = client.post(
        "/query",
        data={"q": 'CREATE DATABASE "telegraf"'},
        headers={"Authorization": f"Token {key}"},
    )
    assert resp.status_code == 200
    assert resp.get_json() == {"results": [{"statement_id": 0}]}
    resp = client.get(
        "/query",
        query_string={"q": "create database telegraf WITH DURATION 1d; SHOW DATABASES", "p": key},
    )
    assert resp.status_code == 200
    first, second = resp.get_json()["results"]
    assert first == {"statement_id": 0}
    assert second["statement_id"] == 1
    assert second["series"][0]["name"] == "databases"
    assert second["series"][0]["columns"] == ["name"] and second["series"][0]["values"]


def test_query_refuses_everything_else_with_a_json_error(client: FlaskClient, key: str) -> None:
    hdrs = {"Authorization": f"Token {key}"}
    for q in ("SELECT * FROM cpu", "DROP DATABASE telegraf", "SHOW DATABASES; SELECT 1"):
        resp = client.post("/query", data={"q": q}, headers=hdrs)
        assert resp.status_code == 400
        assert "only CREATE DATABASE and SHOW DATABASES" in resp.get_json()["error"]
    resp = client.post("/query", headers=hdrs)
    assert resp.status_code == 400 and '"q"' in resp.get_json()["error"]
    resp = client.post("/query", data={"q": "SHOW DATABASES"})
    assert resp.status_code == 401 and resp.headers["WWW-Authenticate"]


# Authentication --------------------------------------------------------------------------------
def test_every_credential_form_is_accepted(
    client: FlaskClient, admin_token: str, server: dict[str, Any]
) -> None:
    key = server["api_key"]
    basic = base64.b64encode(f"anyone:{key}".encode()).decode()
    forms: list[tuple[dict[str, str], dict[str, str]]] = [
        ({"Authorization": f"Token {key}"}, {}),
        ({"Authorization": f"Bearer {key}"}, {}),
        ({"Authorization": f"Basic {basic}"}, {}),
        ({"X-API-Key": key}, {}),
        ({}, {"u": "telegraf", "p": key}),
    ]
    for i, (headers, params) in enumerate(forms):
        resp = client.post(
            "/write",
            data=f"system load1={i}.5",
            headers={"Content-Type": "text/plain", **headers},
            query_string={"db": "telegraf", **params},
        )
        assert resp.status_code == 204, (headers, params, resp.get_json())
        assert values(client, admin_token, server["id"])[("system", "load1")] == i + 0.5
        resp = client.post(
            "/api/v2/write",
            data=f"system load1={i}.25",
            headers={"Content-Type": "text/plain", **headers},
            query_string={"bucket": "b", "org": "o", **params},
        )
        assert resp.status_code == 204, (headers, params, resp.get_json())


@pytest.mark.parametrize("path", ["/write", "/api/v2/write"])
def test_bad_credentials_are_401_with_json_and_a_challenge(
    client: FlaskClient, admin_token: str, key: str, path: str
) -> None:
    wrong = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    cases: list[tuple[dict[str, str], dict[str, str], str]] = [
        ({}, {}, "missing API key"),
        ({"Authorization": f"Token {wrong}"}, {}, "invalid API key"),
        ({}, {"u": "x", "p": "not-a-key"}, "malformed API key"),
        ({"Authorization": "Basic !!!notbase64"}, {}, "malformed Basic credentials"),
        ({"Authorization": "Basic " + base64.b64encode(b"user-only").decode()}, {}, "missing"),
    ]
    for headers, params, reason in cases:
        resp = client.post(path, data="system load1=1", headers=headers, query_string=params)
        assert resp.status_code == 401, (headers, params)
        body = resp.get_json()
        assert reason in body["error"]
        assert resp.headers["WWW-Authenticate"] == 'Basic realm="monapi"'
        if path.startswith("/api/v2/"):
            assert body["message"] == body["error"]
    resp = write(client, admin_token, "system load1=1", path=path)
    assert resp.status_code == 403  # an admin token is not a server key


def test_a_rotated_key_is_refused(client: FlaskClient, admin_token: str) -> None:
    s = register_server(client, admin_token, "old")
    assert write(client, s["api_key"], "system load1=1").status_code == 204
    resp = client.post(f"/api/v1/servers/{s['id']}/rotate-key", headers=bearer(admin_token))
    assert resp.status_code == 200
    new_key = resp.get_json()["api_key"]
    resp = write(client, s["api_key"], "system load1=2")
    assert resp.status_code == 401 and resp.get_json()["error"] == "invalid API key"
    assert write(client, new_key, "system load1=2").status_code == 204


# Line protocol through the validator ---------------------------------------------------------
def test_every_value_type_is_stored(
    client: FlaskClient, admin_token: str, server: dict[str, Any], key: str
) -> None:
    body = "\n".join(
        [
            f"cpu,cpu=cpu-total usage_user=1.5e1,usage_system=2 {NOW_S - 30}",
            f"mem used=1024i,delta=-2.5E-1 {NOW_S - 30}",
            f'system uptime_format="3 days, \\"up\\" \\\\o/",load1=0.5 {NOW_S - 30}',
            f"net up=T {NOW_S - 30}",
        ]
    )
    assert write(client, key, body, precision="s").status_code == 204
    got = latest(client, admin_token, server["id"])
    assert got[("cpu", "usage_user")]["value"] == 15.0
    assert got[("cpu", "usage_user")]["tags"] == {"cpu": "cpu-total"}
    assert got[("cpu", "usage_system")]["value"] == 2.0
    assert got[("mem", "used")]["value"] == 1024
    assert got[("mem", "delta")]["value"] == -0.25
    assert got[("system", "uptime_format")]["value"] == '3 days, "up" \\o/'
    assert got[("net", "up")]["value"] is True
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(NOW_S - 30))
    assert got[("cpu", "usage_user")]["timestamp"].startswith(stamp)


@pytest.mark.parametrize(
    "spelling, expected",
    [(s, True) for s in ("t", "T", "true", "True", "TRUE")]
    + [(s, False) for s in ("f", "F", "false", "False", "FALSE")],
)
def test_every_boolean_spelling(
    client: FlaskClient,
    admin_token: str,
    server: dict[str, Any],
    key: str,
    spelling: str,
    expected: bool,
) -> None:
    assert write(client, key, f"net up={spelling}").status_code == 204
    assert values(client, admin_token, server["id"])[("net", "up")] is expected


def test_unsigned_integers_where_the_field_allows_them(
    client: FlaskClient, admin_token: str, server: dict[str, Any], key: str
) -> None:
    assert write(client, key, "mem used=42u\nsystem load1=7u").status_code == 204
    got = values(client, admin_token, server["id"])
    assert got[("mem", "used")] == 42 and got[("system", "load1")] == 7.0
    resp = write(client, key, f"mem used={2**64 - 1}u")
    assert resp.status_code == 400
    assert "does not fit the field's 64-bit signed type" in resp.get_json()["error"]
    resp = write(client, key, "net up=1u")
    assert (
        resp.status_code == 400
        and "expected a boolean, got unsigned integer" in (resp.get_json()["error"])
    )


V1, V2 = "/write", "/api/v2/write"


@pytest.mark.parametrize(
    "path, precision, unit_ns",
    [
        (V1, "n", 1),
        (V1, "ns", 1),
        (V1, "u", 1_000),
        (V1, "us", 1_000),
        (V1, "ms", 10**6),
        (V1, "s", 10**9),
        (V1, "m", 60 * 10**9),
        (V1, "h", 3600 * 10**9),
        (V2, "ns", 1),
        (V2, "us", 1_000),
        (V2, "ms", 10**6),
        (V2, "s", 10**9),
    ],
)
def test_every_precision(
    app: Flask,
    client: FlaskClient,
    server: dict[str, Any],
    key: str,
    path: str,
    precision: str,
    unit_ns: int,
) -> None:
    ts = (NOW_S - 7200) * 10**9 // unit_ns + 1
    resp = write(client, key, f"system load1=1 {ts}", path=path, precision=precision)
    assert resp.status_code == 204
    (got,) = app.extensions["monapi.tsdb"].latest([server["id"]])[server["id"]]
    assert got.ts == ts * unit_ns


def test_an_unknown_precision_is_400(client: FlaskClient, key: str) -> None:
    resp = write(client, key, "system load1=1", precision="m", path="/api/v2/write")
    assert resp.status_code == 400 and "invalid precision 'm'" in resp.get_json()["message"]
    resp = write(client, key, "system load1=1", precision="days")
    assert resp.status_code == 400 and "use one of n, ns, u" in resp.get_json()["error"]


def test_a_point_without_timestamp_gets_the_time_of_arrival(
    app: Flask, client: FlaskClient, server: dict[str, Any], key: str
) -> None:
    before = time.time_ns()
    assert write(client, key, "system load1=4", precision="s").status_code == 204
    assert write(client, key, "cpu usage_user=4", path="/api/v2/write").status_code == 204
    after = time.time_ns()
    got = {
        v.measurement: v.ts
        for v in app.extensions["monapi.tsdb"].latest([server["id"]])[server["id"]]
    }
    assert got["system"] % 10**9 == 0  # truncated to the precision, as InfluxDB does
    assert before - 10**9 < got["system"] <= after
    assert before <= got["cpu"] <= after


def test_comments_blank_lines_crlf_and_escapes(
    client: FlaskClient, admin_token: str, server: dict[str, Any], key: str
) -> None:
    body = (
        "# a comment\r\n"
        "\r\n"
        "   \n"
        "cpu,cpu=cpu\\ 0\\,a\\=b usage_user=3 \r\n"
        "  # indented comment\n"
        "system load1=8\r\n"
    )
    assert write(client, key, body).status_code == 204
    got = latest(client, admin_token, server["id"])
    assert got[("cpu", "usage_user")]["tags"] == {"cpu": "cpu 0,a=b"}
    assert got[("system", "load1")]["value"] == 8.0


def test_gzip_bodies(
    client: FlaskClient, admin_token: str, server: dict[str, Any], key: str
) -> None:
    assert write(client, key, "system load1=6.5", gz=True).status_code == 204
    assert values(client, admin_token, server["id"])[("system", "load1")] == 6.5
    resp = write(client, key, b"not gzip", headers={"Content-Encoding": "gzip"})
    assert resp.status_code == 400 and "gzip" in resp.get_json()["error"]


def test_a_host_tag_does_not_move_data_to_another_server(
    client: FlaskClient, admin_token: str, server: dict[str, Any], key: str
) -> None:
    other = register_server(client, admin_token, "db-01")
    body = f"cpu,cpu=cpu0,host=db-01,server_id={other['id']} usage_user=9"
    assert write(client, key, body).status_code == 204
    got = latest(client, admin_token, server["id"])
    assert got[("cpu", "usage_user")]["value"] == 9.0
    assert got[("cpu", "usage_user")]["tags"] == {"cpu": "cpu0"}
    assert latest(client, admin_token, other["id"]) == {}


def test_reserved_and_invalid_names_are_refused_per_line(
    client: FlaskClient, admin_token: str, server: dict[str, Any], key: str
) -> None:
    body = (
        "cpu,measurement=x usage_user=1\n"
        "system load1=3\n"
        "9cpu usage_user=1\n"
        "cpu,__name__=x usage_user=1"
    )
    resp = write(client, key, body)
    assert resp.status_code == 400
    out = resp.get_json()
    assert out["error"].startswith("partial write: line 1: ") and out["error"].endswith(
        " dropped=3"
    )
    assert [d["line"] for d in out["details"]] == [1, 3, 4]
    assert "reserved" in out["details"][0]["reason"]
    assert values(client, admin_token, server["id"]) == {("system", "load1"): 3.0}


# Errors ------------------------------------------------------------------------------------------
def test_an_unparseable_body_is_400_unable_to_parse(client: FlaskClient, key: str) -> None:
    resp = write(client, key, "cpu usage_user=\nsystem load1")
    assert resp.status_code == 400
    out = resp.get_json()
    assert out["error"].startswith("unable to parse 'cpu usage_user=': ")
    assert "\nunable to parse 'system load1': " in out["error"]
    assert out["code"] == "invalid_line_protocol"
    assert [d["line"] for d in out["details"]] == [1, 2]
    assert out["accepted"] == 0 and out["rejected"] == 2


def test_some_invalid_lines_store_the_others_and_answer_partial_write(
    client: FlaskClient, admin_token: str, server: dict[str, Any], key: str
) -> None:
    body = "\n".join(
        [
            "cpu,cpu=a usage_user=10",
            "cpu,cpu=b usage_user=140",  # over the field's maximum
            "cpu,cpu=c usage_user=",  # does not parse
            "mem used=1.5",  # an int field
            "cpu,cpu=d usage_guest=1",  # not configured (unknown fields: reject)
            "system load1=2",
        ]
    )
    resp = write(client, key, body)
    assert resp.status_code == 400
    out = resp.get_json()
    assert out["code"] == "partial_write"
    assert out["error"].startswith("partial write: unable to parse 'cpu,cpu=c usage_user=': ")
    assert out["error"].endswith(" dropped=4")
    assert "line 2: usage_user: 140.0 is above the maximum 100" in out["error"]
    assert "and 1 more" in out["error"]  # three reasons spelled out, the rest counted
    assert {d["line"] for d in out["details"]} == {2, 3, 4, 5}
    assert out["accepted"] == 2 and out["rejected"] == 4
    got = latest(client, admin_token, server["id"])
    assert got[("cpu", "usage_user")]["tags"] == {"cpu": "a"}
    assert got[("system", "load1")]["value"] == 2.0
    assert ("mem", "used") not in got


def test_unknown_fields_follow_the_setting(tmp_path: Path) -> None:
    for mode in ("drop", "discover", "reject"):
        app, token = make_app(tmp_path / mode, unknown_fields=mode)
        client = app.test_client()
        s = register_server(client, token)
        resp = write(client, s["api_key"], "nginx active=3i,reading=1u")
        got = values(client, token, s["id"])
        fields = client.get("/api/v1/fields", headers=bearer(token)).get_json()["items"]
        if mode == "discover":
            assert resp.status_code == 204
            assert got == {("nginx", "active"): 3, ("nginx", "reading"): 1}
            assert {(f["measurement"], f["name"], f["type"]) for f in fields} >= {
                ("nginx", "active", "int"),
                ("nginx", "reading", "int"),
            }
        elif mode == "drop":
            assert resp.status_code == 204 and got == {}
        else:
            assert resp.status_code == 400 and got == {}
            assert "unknown field nginx.active" in resp.get_json()["error"]


def test_body_over_the_limit_is_413(tmp_path: Path) -> None:
    app, token = make_app(
        tmp_path / "d",
        max_body_bytes=1000,
        max_points_per_request=5,
        max_decompressed_bytes=900,
        unknown_fields="drop",
    )
    client = app.test_client()
    key = register_server(client, token)["api_key"]
    resp = write(client, key, "system load1=1\n" * 100)
    assert resp.status_code == 413 and resp.get_json()["error"] == "request body too large"
    resp = write(client, key, "system load1=1\n" * 6)
    assert resp.status_code == 413 and "the limit is 5" in resp.get_json()["error"]
    assert write(client, key, "system load1=1\n" * 5, path="/api/v2/write").status_code == 204
    bomb = gzip.compress(b"system load1=1\n" * 10_000)
    assert len(bomb) < 1000
    resp = write(client, key, bomb, headers={"Content-Encoding": "gzip"})
    assert resp.status_code == 413 and "decompressed" in resp.get_json()["error"]


def test_empty_bodies(client: FlaskClient, key: str) -> None:
    assert write(client, key, "").status_code == 204  # as InfluxDB 1.x
    assert write(client, key, "# only a comment\n").status_code == 204
    resp = write(client, key, "", path="/api/v2/write")
    assert resp.status_code == 400 and resp.get_json()["message"] == "writing requires points"


def test_store_unavailable_is_503_with_retry_after(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    app, token = make_app(
        tmp_path / "d",
        tsdb="influxdb",
        influxdb_url=f"http://127.0.0.1:{port}",
        tsdb_timeout=2,
        unknown_fields="discover",
    )
    client = app.test_client()
    key = register_server(client, token)["api_key"]
    for path in ("/write", "/api/v2/write"):
        resp = write(client, key, "system load1=1", path=path)
        assert resp.status_code == 503
        assert int(resp.headers["Retry-After"]) > 0 and resp.get_json()["error"]


# Real clients over HTTP --------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "influxdb"])
def live(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """monapi on a loopback port (werkzeug's threaded server), on the embedded store and on a
    real InfluxDB, with the test fields and one server."""
    overrides: dict[str, Any] = {}
    if request.param == "influxdb":
        overrides = {
            "tsdb": "influxdb",
            "influxdb_url": request.getfixturevalue("influxdb_url"),
            "influxdb_database": f"influx_compat_{time.time_ns()}",
        }
    app, token = make_app(tmp_path / "data", **overrides)
    client = app.test_client()
    configure_fields(client, token)
    server = register_server(client, token, "web-01")
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield {
            "app": app,
            "client": client,
            "token": token,
            "server": server,
            "port": httpd.server_port,
        }
    finally:
        httpd.shutdown()
        thread.join(10)


def _series(client: FlaskClient, token: str, server_id: int, fields: str) -> dict[str, Any]:
    start = NOW_S - 3600
    resp = client.get(
        f"/api/v1/servers/{server_id}/metrics",
        query_string={
            "fields": fields,
            "start": str(start),
            "end": "now",
            "agg": "count",
            "step": "2h",
        },
        headers=bearer(token),
    )
    assert resp.status_code == 200, resp.get_json()
    return {
        (s["measurement"], s["field"], tuple(sorted(s["tags"].items()))): sum(
            v for _, v in s["points"] if v
        )
        for s in resp.get_json()["series"]
    }


def test_influxdb_v1_client_writes_points(live: dict[str, Any]) -> None:
    from influxdb import InfluxDBClient
    from influxdb.exceptions import InfluxDBClientError

    key = live["server"]["api_key"]
    c = InfluxDBClient("127.0.0.1", live["port"], "telegraf", key, "telegraf", timeout=10)
    assert c.ping().startswith("1.")
    c.create_database("telegraf")
    assert {"name": "monapi"} in c.get_list_database() or c.get_list_database()
    points = [
        {
            "measurement": "cpu",
            "tags": {"cpu": f"cpu{i % 2}", "host": "elsewhere"},
            "time": (NOW_S - 100 + i) * 10**9,
            "fields": {"usage_user": float(i), "usage_system": 1.0},
        }
        for i in range(10)
    ] + [
        {
            "measurement": "system",
            "time": (NOW_S - 50) * 10**9,
            "fields": {"uptime_format": 'up "1" day, \\ 2', "load1": 0.25},
        },
        {"measurement": "mem", "time": (NOW_S - 50) * 10**9, "fields": {"used": 77}},
        {"measurement": "net", "time": (NOW_S - 50) * 10**9, "fields": {"up": False}},
    ]
    assert c.write_points(points) is True
    assert c.write_points(
        [{"measurement": "system", "time": NOW_S - 40, "fields": {"load1": 0.5}}],
        time_precision="s",
    )
    client, token, sid = live["client"], live["token"], live["server"]["id"]
    counts = _series(client, token, sid, "cpu.usage_user,cpu.usage_system")
    assert counts == {
        ("cpu", "usage_user", (("cpu", "cpu0"),)): 5,
        ("cpu", "usage_user", (("cpu", "cpu1"),)): 5,
        ("cpu", "usage_system", (("cpu", "cpu0"),)): 5,
        ("cpu", "usage_system", (("cpu", "cpu1"),)): 5,
    }
    got = values(client, token, sid)
    assert got[("cpu", "usage_user")] in (8.0, 9.0)
    assert got[("system", "uptime_format")] == 'up "1" day, \\ 2'
    assert got[("system", "load1")] == 0.5
    assert got[("mem", "used")] == 77 and got[("net", "up")] is False
    with pytest.raises(InfluxDBClientError) as err:
        c.write_points([{"measurement": "cpu", "fields": {"usage_user": 500.0}}])
    assert err.value.code == 400 and "partial write" in str(err.value.content)
    bad = InfluxDBClient("127.0.0.1", live["port"], "telegraf", "wrong", "telegraf", timeout=10)
    with pytest.raises(InfluxDBClientError) as err:
        bad.write_points([{"measurement": "system", "fields": {"load1": 1.0}}])
    assert err.value.code == 401


def test_influxdb_v2_client_writes_points(live: dict[str, Any]) -> None:
    from influxdb_client import InfluxDBClient, Point, WritePrecision
    from influxdb_client.client.write_api import SYNCHRONOUS
    from influxdb_client.rest import ApiException

    key = live["server"]["api_key"]
    with InfluxDBClient(f"http://127.0.0.1:{live['port']}", token=key, org="any") as c:
        assert c.ping() is True
        api = c.write_api(write_options=SYNCHRONOUS)
        records = [
            Point("cpu")
            .tag("cpu", "cpu-total")
            .tag("host", "ignored")
            .field("usage_user", 12.5 + i)
            .time((NOW_S - 200 + i) * 10**9, WritePrecision.NS)
            for i in range(5)
        ]
        records.append(Point("mem").field("used", 5).time(NOW_S - 20, WritePrecision.S))
        records.append(
            Point("system")
            .field("uptime_format", 'a "quoted", \\ value')
            .time((NOW_S - 20) * 1000, WritePrecision.MS)
        )
        api.write(bucket="telegraf", record=records[:5])
        api.write(bucket="telegraf", record=records[5], write_precision=WritePrecision.S)
        api.write(bucket="telegraf", record=records[6], write_precision=WritePrecision.MS)
        api.write(bucket="telegraf", record="net up=true", write_precision=WritePrecision.NS)
        with pytest.raises(ApiException) as err:
            api.write(bucket="telegraf", record="cpu usage_user=1000")
        assert err.value.status == 400 and "partial write" in str(err.value.body)
    client, token, sid = live["client"], live["token"], live["server"]["id"]
    counts = _series(client, token, sid, "cpu.usage_user")
    assert counts == {("cpu", "usage_user", (("cpu", "cpu-total"),)): 5}
    got = values(client, token, sid)
    assert got[("cpu", "usage_user")] == 16.5
    assert got[("mem", "used")] == 5
    assert got[("system", "uptime_format")] == 'a "quoted", \\ value'
    assert got[("net", "up")] is True
    with InfluxDBClient(f"http://127.0.0.1:{live['port']}", token="nope", org="any") as c:
        with pytest.raises(ApiException) as err:
            c.write_api(write_options=SYNCHRONOUS).write(bucket="b", record="system load1=1")
        assert err.value.status == 401
