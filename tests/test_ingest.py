"""POST /api/v1/data: validation against the field configuration, partial success, limits."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from monapi.ingest import parse_timestamp

from .conftest import bearer, make_app, push, register_server


@pytest.fixture
def key(client: FlaskClient, admin_token: str) -> str:
    return str(register_server(client, admin_token)["api_key"])


def stored(app: Flask, server_id: int = 1) -> dict[tuple[str, str], object]:
    """Latest stored value per (measurement, field) of a server, straight from the store."""
    latest = app.extensions["monapi.tsdb"].latest([server_id])[server_id]
    return {(v.measurement, v.field): v.value for v in latest}


def test_single_point_is_stored(app: Flask, client: FlaskClient, key: str) -> None:
    resp = push(client, key, {"measurement": "cpu", "fields": {"usage_percent": 42.5}})
    assert resp.status_code == 204
    assert stored(app) == {("cpu", "usage_percent"): 42.5}


def test_batch_is_stored_and_ints_widen_to_float_fields(
    app: Flask, client: FlaskClient, key: str
) -> None:
    now = int(time.time())
    body = {
        "points": [
            {"measurement": "cpu", "timestamp": now - 20, "fields": {"usage_percent": 10}},
            {"measurement": "cpu", "timestamp": now - 10, "fields": {"usage_percent": 20.0}},
            {
                "measurement": "mem",
                "timestamp": now - 10,
                "fields": {"used": 1024, "total": 4096, "used_percent": 25.0},
            },
        ]
    }
    assert push(client, key, body).status_code == 204
    got = stored(app)
    assert got[("cpu", "usage_percent")] == 20.0
    assert got[("mem", "used")] == 1024 and isinstance(got[("mem", "used")], int)


def test_partially_valid_batch_stores_the_valid_points(
    app: Flask, client: FlaskClient, key: str
) -> None:
    body = {
        "points": [
            {"measurement": "cpu", "fields": {"usage_percent": 50.0}},  # ok
            {"measurement": "cpu", "fields": {"usage_percent": 150.0}},  # above max
            {"measurement": "mem", "fields": {"used": "lots", "total": 1}},  # wrong type
            {"measurement": "cpu", "fields": {"bogus": 1.0}},  # unknown field
            {"measurement": "system", "fields": {"load1": 1.5}},  # ok
        ]
    }
    resp = push(client, key, body)
    assert resp.status_code == 200
    out = resp.get_json()
    assert out["accepted"] == 2 and out["rejected"] == 3 and out["dropped"] == 0
    reasons = {(e["index"], e["field"]): e["reason"] for e in out["errors"]}
    assert "above the maximum 100" in reasons[(1, "usage_percent")]
    assert "expected an integer, got string" in reasons[(2, "used")]
    assert "unknown field cpu.bogus" in reasons[(3, "bogus")]
    got = stored(app)
    assert got == {("cpu", "usage_percent"): 50.0, ("system", "load1"): 1.5}  # point 2 atomic


def test_invalid_batch_is_422_and_stores_nothing(app: Flask, client: FlaskClient, key: str) -> None:
    resp = push(client, key, {"points": [{"fields": {"load1": -1.0}}, {"fields": {"nope": 1}}]})
    assert resp.status_code == 422
    err = resp.get_json()
    assert err["code"] == "validation_failed" and err["accepted"] == 0 and err["rejected"] == 2
    assert [d["index"] for d in err["details"]] == [0, 1]
    assert stored(app) == {}


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (True, "expected a float, got boolean"),
        ("1.0", "expected a float, got string"),
        (1e309, "not a finite number"),  # json.dumps writes Infinity; rejected as JSON or value
    ],
)
def test_float_field_type_checks(client: FlaskClient, key: str, value: object, reason: str) -> None:
    resp = push(client, key, {"fields": {"load1": value}})
    assert resp.status_code in (400, 422)
    err = resp.get_json()
    text = json.dumps(err)
    assert reason in text or err["code"] == "invalid_json"


def test_int_field_accepts_integral_floats_only(app: Flask, client: FlaskClient, key: str) -> None:
    assert push(client, key, {"fields": {"processes": 12.0}}).status_code == 204
    assert stored(app)[("system", "processes")] == 12
    resp = push(client, key, {"fields": {"processes": 12.5}})
    assert resp.status_code == 422
    assert push(client, key, {"fields": {"processes": 2**64}}).status_code in (400, 422)


def test_null_and_nested_values_are_reported_per_point(client: FlaskClient, key: str) -> None:
    body = {
        "points": [
            {"fields": {"load1": None}},
            {"fields": {"load1": {"a": 1}}},
            {"fields": {"load1": 0.1}},
        ]
    }
    resp = push(client, key, body)
    assert resp.status_code == 200
    out = resp.get_json()
    assert out["accepted"] == 1 and out["rejected"] == 2
    assert {e["index"] for e in out["errors"]} == {0, 1}


def test_timestamps_in_every_format_and_the_window(
    app: Flask, client: FlaskClient, key: str
) -> None:
    now = time.time()
    now_ns = time.time_ns()
    assert parse_timestamp(1_700_000_000, now_ns) == 1_700_000_000 * 10**9
    assert parse_timestamp(1_700_000_000_123, now_ns) == 1_700_000_000_123 * 10**6
    assert parse_timestamp(1_700_000_000_123_456_789, now_ns) == 1_700_000_000_123_456_789
    assert parse_timestamp("2023-11-14T22:13:20Z", now_ns) == 1_700_000_000 * 10**9
    assert parse_timestamp("2023-11-14T23:13:20.5+01:00", now_ns) == 1_700_000_000_500_000_000
    body = {
        "points": [
            {"timestamp": int(now), "fields": {"load1": 1.0}},
            {"timestamp": int(now * 1000), "fields": {"load5": 1.0}},
            {
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                "fields": {"load15": 1.0},
            },
            {"timestamp": now - 400 * 86400, "fields": {"load1": 2.0}},
            {"timestamp": now + 3600, "fields": {"load1": 3.0}},
            {"timestamp": "yesterday", "fields": {"load1": 4.0}},
            {"timestamp": "2024-01-01T00:00:00", "fields": {"load1": 5.0}},
        ]
    }
    out = push(client, key, body).get_json()
    assert out["accepted"] == 3 and out["rejected"] == 4
    reasons = {e["index"]: e["reason"] for e in out["errors"]}
    assert "older than" in reasons[3] and "future" in reasons[4]
    assert "RFC 3339" in reasons[5] and "time zone" in reasons[6]


def test_identity_comes_from_the_key_not_the_body(
    app: Flask, client: FlaskClient, admin_token: str
) -> None:
    a = register_server(client, admin_token, "a", "192.0.2.1")
    b = register_server(client, admin_token, "b", "192.0.2.2")
    resp = push(
        client,
        a["api_key"],
        {"fields": {"load1": 9.0}, "tags": {"host": "b", "server_id": str(b["id"])}},
    )
    assert resp.status_code == 422  # reserved tags are refused, never obeyed
    assert "reserved" in resp.get_json()["details"][0]["reason"]
    assert (
        push(client, a["api_key"], {"fields": {"load1": 9.0}, "tags": {"rack": "4"}}).status_code
        == 204
    )
    assert stored(app, a["id"]) == {("system", "load1"): 9.0}
    assert stored(app, b["id"]) == {}
    resp = push(client, a["api_key"], {"server_id": b["id"], "fields": {"load1": 1.0}})
    assert resp.status_code == 422  # unknown top-level key


def test_gzip_body_is_accepted(app: Flask, client: FlaskClient, key: str) -> None:
    resp = push(client, key, {"fields": {"load1": 3.25}}, gz=True)
    assert resp.status_code == 204
    assert stored(app) == {("system", "load1"): 3.25}


def test_broken_gzip_is_400(client: FlaskClient, key: str) -> None:
    resp = client.post(
        "/api/v1/data",
        data=b"not gzip",
        headers={**bearer(key), "Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert resp.status_code == 400 and resp.get_json()["code"] == "invalid_gzip"
    resp = client.post(
        "/api/v1/data",
        data=b"{}",
        headers={**bearer(key), "Content-Type": "application/json", "Content-Encoding": "br"},
    )
    assert resp.status_code == 415


def test_gzip_bomb_is_413(tmp_path: Path) -> None:
    app, token = make_app(tmp_path / "d", max_decompressed_bytes=100_000)
    client = app.test_client()
    key = register_server(client, token)["api_key"]
    bomb = gzip.compress(b'{"fields": {"load1": 1.0}' + b" " * 1_000_000 + b"}")
    assert len(bomb) < 10_000
    resp = client.post(
        "/api/v1/data",
        data=bomb,
        headers={**bearer(key), "Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert resp.status_code == 413
    assert "decompressed" in resp.get_json()["error"]


def test_body_too_large_is_413(tmp_path: Path) -> None:
    app, token = make_app(tmp_path / "d", max_body_bytes=2000)
    client = app.test_client()
    key = register_server(client, token)["api_key"]
    body = {"points": [{"fields": {"load1": 1.0}}] * 200}
    resp = push(client, key, body)
    assert resp.status_code == 413
    assert resp.get_json()["code"] == "payload_too_large"


def test_too_many_points_is_413(tmp_path: Path) -> None:
    app, token = make_app(tmp_path / "d", max_points_per_request=10)
    client = app.test_client()
    key = register_server(client, token)["api_key"]
    resp = push(client, key, {"points": [{"fields": {"load1": 1.0}}] * 11})
    assert resp.status_code == 413 and "limit is 10" in resp.get_json()["error"]


def test_malformed_and_mistyped_bodies(client: FlaskClient, key: str) -> None:
    h = {**bearer(key), "Content-Type": "application/json"}
    assert client.post("/api/v1/data", data=b"{oops", headers=h).status_code == 400
    assert client.post("/api/v1/data", data=b"", headers=h).status_code == 400
    assert client.post("/api/v1/data", data=b"[1, 2]", headers=h).status_code == 422
    assert client.post("/api/v1/data", data=b'{"points": []}', headers=h).status_code == 422
    assert client.post("/api/v1/data", data=b"{}", headers=h).status_code == 422
    resp = client.post(
        "/api/v1/data", data=b"load1=1", headers={**bearer(key), "Content-Type": "text/plain"}
    )
    assert resp.status_code == 415


def test_unknown_fields_discover_mode_creates_fields(tmp_path: Path) -> None:
    app, token = make_app(tmp_path / "d", unknown_fields="discover")
    client = app.test_client()
    key = register_server(client, token)["api_key"]
    resp = push(
        client,
        key,
        {"measurement": "nginx", "fields": {"requests": 5, "ok": True, "ver": "1.2", "rate": 0.5}},
    )
    assert resp.status_code == 204
    fields = client.get("/api/v1/fields?measurement=nginx", headers=bearer(token)).get_json()
    assert {(f["name"], f["type"], f["discovered"]) for f in fields["items"]} == {
        ("requests", "int", True),
        ("ok", "bool", True),
        ("ver", "string", True),
        ("rate", "float", True),
    }
    # now a configured field: a string for the int field is refused
    resp = push(client, key, {"measurement": "nginx", "fields": {"requests": "many"}})
    assert resp.status_code == 422


def test_unknown_fields_drop_mode_counts_them(tmp_path: Path) -> None:
    app, token = make_app(tmp_path / "d", unknown_fields="drop")
    client = app.test_client()
    key = register_server(client, token)["api_key"]
    resp = push(client, key, {"fields": {"load1": 1.0, "mystery": 2, "other": 3}})
    assert resp.status_code == 200
    assert resp.get_json() == {
        "accepted": 1,
        "rejected": 0,
        "dropped": 2,
        "errors": [],
        "errors_truncated": False,
    }
    assert stored(app) == {("system", "load1"): 1.0}


def test_errors_are_capped_at_100(client: FlaskClient, key: str) -> None:
    body = {"points": [{"fields": {"load1": -1.0}}] * 150 + [{"fields": {"load1": 1.0}}]}
    out = push(client, key, body).get_json()
    assert out["accepted"] == 1 and out["rejected"] == 150
    assert len(out["errors"]) == 100 and out["errors_truncated"] is True


def test_tags_are_validated(client: FlaskClient, key: str) -> None:
    many = {f"t{i}": "v" for i in range(33)}
    for tags in (many, {"bad key": "v"}, {"ok": ""}, {"ok": "x\u0000y"}):
        resp = push(client, key, {"fields": {"load1": 1.0}, "tags": tags})
        assert resp.status_code == 422, tags


def test_disabled_field_is_refused(client: FlaskClient, admin_token: str, key: str) -> None:
    fields = client.get("/api/v1/fields?measurement=system", headers=bearer(admin_token))
    load1 = next(f for f in fields.get_json()["items"] if f["name"] == "load1")
    client.patch(
        f"/api/v1/fields/{load1['id']}", json={"enabled": False}, headers=bearer(admin_token)
    )
    resp = push(client, key, {"fields": {"load1": 1.0}})
    assert resp.status_code == 422 and "disabled" in resp.get_json()["details"][0]["reason"]


def test_push_marks_the_server_online(client: FlaskClient, admin_token: str) -> None:
    s = register_server(client, admin_token)
    push(client, s["api_key"], {"fields": {"load1": 1.0}})
    got = client.get(f"/api/v1/servers/{s['id']}", headers=bearer(admin_token)).get_json()
    assert got["status"] == "online" and got["last_seen"] is not None


def test_store_failure_is_503_and_recovers_without_restart(
    app: Flask, client: FlaskClient, key: str
) -> None:
    store = app.extensions["monapi.tsdb"]
    assert push(client, key, {"fields": {"load1": 1.0}}).status_code == 204
    store._writer.close()  # the engine connection breaks under monapi's feet
    resp = push(client, key, {"fields": {"load1": 2.0}})
    assert resp.status_code == 503
    assert resp.headers["Retry-After"] and resp.get_json()["code"] == "store_unavailable"
    assert stored(app) == {("system", "load1"): 1.0}  # never a 2xx for what was not stored
    assert push(client, key, {"fields": {"load1": 3.0}}).status_code == 204
    assert stored(app) == {("system", "load1"): 3.0}


def test_an_error_does_not_repeat_a_huge_name_in_full(client: FlaskClient, key: str) -> None:
    """A 5,000-character unknown field: the error names it by its first 80 characters."""
    name = "f" * 5000
    resp = push(client, key, {"fields": {name: 1.0, "load1": 1.0}})
    assert resp.status_code == 422  # the point is refused whole
    (error,) = resp.get_json()["details"]
    assert error["field"] == "f" * 80 + "..."
    assert error["reason"] == f"unknown field system.{'f' * 80}... (not in the field configuration)"
    assert len(resp.data) < 1000
