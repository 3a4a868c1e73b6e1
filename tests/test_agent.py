"""Agent endpoints: configuration with ETag / 304, heartbeat."""

from __future__ import annotations

from flask.testing import FlaskClient

from .conftest import bearer, register_server

# Every test here runs on the embedded SQLite store and on PostgreSQL.
CONFIG_STORES = ["sqlite", "postgresql"]


def test_agent_config_has_etag_and_answers_304(client: FlaskClient, admin_token: str) -> None:
    s = register_server(client, admin_token, interval=15)
    h = bearer(s["api_key"])
    resp = client.get("/api/v1/agent/config", headers=h)
    assert resp.status_code == 200
    cfg = resp.get_json()
    assert cfg["server_id"] == s["id"] and cfg["interval"] == 15
    assert {
        "measurement": "cpu",
        "name": "usage_percent",
        "type": "float",
        "unit": "%",
        "min": 0.0,
        "max": 100.0,
    } in cfg["fields"]
    etag = resp.headers["ETag"]
    again = client.get("/api/v1/agent/config", headers={**h, "If-None-Match": etag})
    assert again.status_code == 304 and again.data == b""
    assert again.headers["ETag"] == etag


def test_agent_config_etag_changes_with_fields_and_interval(
    client: FlaskClient, admin_token: str
) -> None:
    s = register_server(client, admin_token)
    h = bearer(s["api_key"])
    etag = client.get("/api/v1/agent/config", headers=h).headers["ETag"]
    cpu = client.get("/api/v1/fields?measurement=cpu", headers=bearer(admin_token))
    fid = cpu.get_json()["items"][0]["id"]
    client.patch(f"/api/v1/fields/{fid}", json={"enabled": False}, headers=bearer(admin_token))
    resp = client.get("/api/v1/agent/config", headers={**h, "If-None-Match": etag})
    assert resp.status_code == 200 and resp.headers["ETag"] != etag
    assert all(
        f["name"] != cpu.get_json()["items"][0]["name"] or f["measurement"] != "cpu"
        for f in resp.get_json()["fields"]
    )
    etag2 = resp.headers["ETag"]
    client.patch(f"/api/v1/servers/{s['id']}", json={"interval": 5}, headers=bearer(admin_token))
    resp = client.get("/api/v1/agent/config", headers={**h, "If-None-Match": etag2})
    assert resp.status_code == 200 and resp.get_json()["interval"] == 5


def test_heartbeat_records_agent_and_marks_seen(client: FlaskClient, admin_token: str) -> None:
    s = register_server(client, admin_token)
    resp = client.post(
        "/api/v1/agent/heartbeat",
        json={"agent_version": "0.3.1", "uptime": 99},
        headers=bearer(s["api_key"]),
    )
    assert resp.status_code == 200
    body = resp.get_json()
    etag = client.get("/api/v1/agent/config", headers=bearer(s["api_key"])).headers["ETag"]
    assert body["config_etag"] == etag.strip('"')
    got = client.get(f"/api/v1/servers/{s['id']}", headers=bearer(admin_token)).get_json()
    assert got["agent"]["version"] == "0.3.1" and got["agent"]["uptime"] == 99
    assert got["status"] == "online"
    bad = client.post(
        "/api/v1/agent/heartbeat",
        json={"agent_version": "x", "uptime": -1},
        headers=bearer(s["api_key"]),
    )
    assert bad.status_code == 422
