"""The field configuration API, and changes taking effect on the next request everywhere."""

from __future__ import annotations

from pathlib import Path

from flask.testing import FlaskClient

from monapi import create_app
from monapi.app import shutdown
from monapi.fields import DEFAULT_FIELDS

from .conftest import bearer, make_app, push, register_server

# Every test here runs on the embedded SQLite store and on PostgreSQL.
CONFIG_STORES = ["sqlite", "postgresql"]


def test_default_fields_are_created_on_first_start(client: FlaskClient, admin_token: str) -> None:
    body = client.get("/api/v1/fields", headers=bearer(admin_token)).get_json()
    assert body["total"] == len(DEFAULT_FIELDS)
    names = {(f["measurement"], f["name"]) for f in body["items"]}
    for expected in [
        ("cpu", "usage_percent"),
        ("system", "load1"),
        ("mem", "used_percent"),
        ("swap", "used"),
        ("disk", "used_percent"),
        ("diskio", "reads_per_sec"),
        ("net", "bytes_recv_per_sec"),
        ("system", "uptime"),
        ("system", "processes"),
    ]:
        assert expected in names
    cpu = next(f for f in body["items"] if f["name"] == "usage_percent")
    assert (cpu["type"], cpu["unit"], cpu["min"], cpu["max"]) == ("float", "%", 0.0, 100.0)


def test_create_get_update_delete_field(client: FlaskClient, admin_token: str) -> None:
    h = bearer(admin_token)
    resp = client.post(
        "/api/v1/fields",
        headers=h,
        json={"measurement": "nginx", "name": "active", "type": "int", "unit": "conn", "min": 0},
    )
    assert resp.status_code == 201
    f = resp.get_json()
    assert (f["min"], f["max"], f["enabled"], f["discovered"]) == (0.0, None, True, False)
    assert client.get(f"/api/v1/fields/{f['id']}", headers=h).get_json()["name"] == "active"
    upd = client.patch(f"/api/v1/fields/{f['id']}", headers=h, json={"max": 1000, "unit": "c"})
    assert upd.status_code == 200 and upd.get_json()["max"] == 1000.0
    assert (
        client.post(
            "/api/v1/fields",
            headers=h,
            json={"measurement": "nginx", "name": "active", "type": "int"},
        ).status_code
        == 409
    )
    assert client.delete(f"/api/v1/fields/{f['id']}", headers=h).status_code == 204
    assert client.get(f"/api/v1/fields/{f['id']}", headers=h).status_code == 404


def test_field_definitions_are_validated(client: FlaskClient, admin_token: str) -> None:
    h = bearer(admin_token)
    for body in [
        {"measurement": "m", "name": "f", "type": "decimal"},
        {"measurement": "1m", "name": "f", "type": "int"},
        {"measurement": "m", "name": "f f", "type": "int"},
        {"measurement": "m", "name": "f", "type": "int", "min": 5, "max": 1},
        {"measurement": "m", "name": "f", "type": "string", "min": 0},
        {"measurement": "m", "name": "f", "type": "int", "extra": 1},
    ]:
        resp = client.post("/api/v1/fields", headers=h, json=body)
        assert resp.status_code == 422, body
        assert resp.get_json()["details"], body
    cpu = client.get("/api/v1/fields?measurement=cpu", headers=h).get_json()["items"][0]
    resp = client.patch(f"/api/v1/fields/{cpu['id']}", headers=h, json={"min": 200})
    assert resp.status_code == 422 and "greater than max" in resp.get_json()["error"]
    resp = client.patch(f"/api/v1/fields/{cpu['id']}", headers=h, json={"type": "int"})
    assert resp.status_code == 422


def test_list_filters(client: FlaskClient, admin_token: str) -> None:
    h = bearer(admin_token)
    mem = client.get("/api/v1/fields?measurement=mem", headers=h).get_json()
    assert {f["measurement"] for f in mem["items"]} == {"mem"}
    client.patch(f"/api/v1/fields/{mem['items'][0]['id']}", headers=h, json={"enabled": False})
    off = client.get("/api/v1/fields?enabled=false", headers=h).get_json()
    assert [f["id"] for f in off["items"]] == [mem["items"][0]["id"]]
    assert client.get("/api/v1/fields?discovered=true", headers=h).get_json()["total"] == 0


def test_field_change_takes_effect_on_next_request(client: FlaskClient, admin_token: str) -> None:
    h = bearer(admin_token)
    key = register_server(client, admin_token)["api_key"]
    assert push(client, key, {"measurement": "app", "fields": {"queue": 5}}).status_code == 422
    f = client.post(
        "/api/v1/fields",
        headers=h,
        json={"measurement": "app", "name": "queue", "type": "int", "max": 10},
    ).get_json()
    assert push(client, key, {"measurement": "app", "fields": {"queue": 5}}).status_code == 204
    assert push(client, key, {"measurement": "app", "fields": {"queue": 50}}).status_code == 422
    client.patch(f"/api/v1/fields/{f['id']}", headers=h, json={"max": 100})
    assert push(client, key, {"measurement": "app", "fields": {"queue": 50}}).status_code == 204


def test_change_in_one_worker_is_seen_by_another(tmp_path: Path) -> None:
    """Two app instances on one data directory stand for two gunicorn workers."""
    data = tmp_path / "d"
    app1, token = make_app(data)
    app2 = create_app({"data_dir": data, "log_level": "WARNING", "TESTING": True})
    c1, c2 = app1.test_client(), app2.test_client()
    key = register_server(c1, token)["api_key"]
    # worker 2 warms its caches
    assert push(c2, key, {"fields": {"load1": 1.0}}).status_code == 204
    # worker 1 disables the field, worker 2 refuses it on its very next request
    load1 = next(
        f
        for f in c1.get("/api/v1/fields?measurement=system", headers=bearer(token)).get_json()[
            "items"
        ]
        if f["name"] == "load1"
    )
    c1.patch(f"/api/v1/fields/{load1['id']}", headers=bearer(token), json={"enabled": False})
    assert push(c2, key, {"fields": {"load1": 1.0}}).status_code == 422
    # worker 1 rotates the key, worker 2 refuses the old one at once
    c1.post("/api/v1/servers/1/rotate-key", headers=bearer(token))
    assert push(c2, key, {"fields": {"load5": 1.0}}).status_code == 401
    for a in (app1, app2):
        shutdown(a)
