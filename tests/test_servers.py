"""Server registration, the seed's alias, listing, updates, keys and deletion."""

from __future__ import annotations

import time

from flask import Flask
from flask.testing import FlaskClient

from .conftest import bearer, push, register_server

# Every test here runs on the embedded SQLite store and on PostgreSQL.
CONFIG_STORES = ["sqlite", "postgresql"]


def test_register_returns_server_and_key_once(client: FlaskClient, admin_token: str) -> None:
    body = register_server(client, admin_token, "Web-01.Example.com", labels={"role": "web"})
    assert body["hostname"] == "web-01.example.com"  # lower-cased
    assert body["ip_address"] == "192.0.2.10"
    assert body["labels"] == {"role": "web"}
    assert body["status"] == "never_seen"
    assert body["interval"] == 30
    assert body["api_key"].startswith("mks_")
    again = client.get(f"/api/v1/servers/{body['id']}", headers=bearer(admin_token)).get_json()
    assert "api_key" not in again


def test_key_is_stored_only_as_a_digest(app: Flask, client: FlaskClient, admin_token: str) -> None:
    key = register_server(client, admin_token)["api_key"]
    from sqlalchemy import text

    with app.extensions["monapi.db"].engine.connect() as conn:
        rows = conn.execute(text("SELECT id, digest FROM api_keys")).all()
    secret = key.split("_", 2)[2]
    for _key_id, digest in rows:
        assert secret not in digest and key not in digest
        assert len(digest) == 64
    assert any(key.split("_")[1] == r[0] for r in rows)


def test_seed_alias_register_server(client: FlaskClient, admin_token: str) -> None:
    resp = client.post(
        "/api/register_server",
        json={"hostname": "db-1", "ip_address": "2001:db8::1"},
        headers=bearer(admin_token),
    )
    assert resp.status_code == 201
    body = resp.get_json()
    assert set(body) == {"status", "hostname", "ip_address", "api_key"}
    assert body["status"] == "success"
    assert body["ip_address"] == "2001:db8::1"
    # the key works for ingestion
    assert push(client, body["api_key"], {"fields": {"load1": 0.5}}).status_code == 204


def test_seed_alias_needs_the_same_authentication(client: FlaskClient) -> None:
    resp = client.post("/api/register_server", json={"hostname": "x", "ip_address": "192.0.2.1"})
    assert resp.status_code == 401


def test_duplicate_hostname_is_409(client: FlaskClient, admin_token: str) -> None:
    register_server(client, admin_token, "dup")
    resp = client.post(
        "/api/v1/servers",
        json={"hostname": "DUP", "ip_address": "192.0.2.2"},
        headers=bearer(admin_token),
    )
    assert resp.status_code == 409
    assert "already registered" in resp.get_json()["error"]


def test_hostname_and_ip_are_validated(client: FlaskClient, admin_token: str) -> None:
    for body, where in [
        ({"hostname": "bad host!", "ip_address": "192.0.2.1"}, "hostname"),
        ({"hostname": "-lead", "ip_address": "192.0.2.1"}, "hostname"),
        ({"hostname": "ok", "ip_address": "999.1.1.1"}, "ip_address"),
        ({"hostname": "ok", "ip_address": "192.0.2.1", "interval": 0}, "interval"),
        ({"hostname": "ok", "ip_address": "192.0.2.1", "nope": 1}, "nope"),
        ({"hostname": "ok"}, "ip_address"),
    ]:
        resp = client.post("/api/v1/servers", json=body, headers=bearer(admin_token))
        assert resp.status_code == 422, body
        err = resp.get_json()
        assert err["code"] == "validation_failed"
        assert any(where in d["location"] for d in err["details"]), err


def test_list_paginates_with_total_and_links(client: FlaskClient, admin_token: str) -> None:
    for i in range(7):
        register_server(client, admin_token, f"node-{i}", f"192.0.2.{i + 1}")
    resp = client.get("/api/v1/servers?per_page=3&page=2", headers=bearer(admin_token))
    body = resp.get_json()
    assert resp.status_code == 200
    assert body["total"] == 7 and body["pages"] == 3 and body["page"] == 2
    assert [s["hostname"] for s in body["items"]] == ["node-3", "node-4", "node-5"]
    assert "page=3" in body["links"]["next"] and "page=1" in body["links"]["prev"]
    last = client.get(body["links"]["last"], headers=bearer(admin_token)).get_json()
    assert [s["hostname"] for s in last["items"]] == ["node-6"]
    assert last["links"]["next"] is None
    assert (
        client.get("/api/v1/servers?per_page=101", headers=bearer(admin_token)).status_code == 422
    )


def test_list_filters_by_hostname_label_and_status(client: FlaskClient, admin_token: str) -> None:
    a = register_server(client, admin_token, "web-a", labels={"role": "web", "dc": "x"})
    register_server(client, admin_token, "web-b", "192.0.2.11", labels={"role": "web"})
    register_server(client, admin_token, "db-a", "192.0.2.12", labels={"role": "db"})
    push(client, a["api_key"], {"fields": {"load1": 1.0}})
    h = bearer(admin_token)

    def names(q: str) -> list[str]:
        resp = client.get(f"/api/v1/servers?{q}", headers=h)
        assert resp.status_code == 200, resp.get_json()
        return [s["hostname"] for s in resp.get_json()["items"]]

    assert names("hostname=web") == ["web-a", "web-b"]
    assert names("label=role=web&label=dc=x") == ["web-a"]
    assert names("label=role=db") == ["db-a"]
    assert names("status=online") == ["web-a"]
    assert names("status=never_seen") == ["web-b", "db-a"]
    assert names("status=offline") == []
    assert names("hostname=%25") == []  # LIKE wildcards are literal


def test_status_goes_offline_after_missed_intervals(
    app: Flask, client: FlaskClient, admin_token: str
) -> None:
    s = register_server(client, admin_token, interval=10)
    push(client, s["api_key"], {"fields": {"load1": 1.0}})
    h = bearer(admin_token)
    assert client.get(f"/api/v1/servers/{s['id']}", headers=h).get_json()["status"] == "online"
    # Pretend the last push was 31 s ago: more than 3 intervals of 10 s.
    coord = app.extensions["monapi.cache"]
    coord.flush_seen()
    from sqlalchemy import text

    with app.extensions["monapi.db"].engine.begin() as conn:
        conn.execute(text("UPDATE servers SET last_seen = :t"), {"t": time.time() - 31})
    assert client.get(f"/api/v1/servers/{s['id']}", headers=h).get_json()["status"] == "offline"
    names = [
        x["hostname"]
        for x in client.get("/api/v1/servers?status=offline", headers=h).get_json()["items"]
    ]
    assert names == ["web-01"]


def test_update_labels_description_interval(client: FlaskClient, admin_token: str) -> None:
    s = register_server(client, admin_token)
    resp = client.patch(
        f"/api/v1/servers/{s['id']}",
        json={"labels": {"env": "prod"}, "description": "front", "interval": 60},
        headers=bearer(admin_token),
    )
    assert resp.status_code == 200
    body = resp.get_json()
    assert (body["labels"], body["description"], body["interval"]) == ({"env": "prod"}, "front", 60)
    bad = client.patch(
        f"/api/v1/servers/{s['id']}", json={"hostname": "x"}, headers=bearer(admin_token)
    )
    assert bad.status_code == 422


def test_rotated_key_is_rejected_at_once(client: FlaskClient, admin_token: str) -> None:
    s = register_server(client, admin_token)
    old = s["api_key"]
    assert push(client, old, {"fields": {"load1": 1.0}}).status_code == 204
    resp = client.post(f"/api/v1/servers/{s['id']}/rotate-key", headers=bearer(admin_token))
    assert resp.status_code == 200
    new = resp.get_json()["api_key"]
    assert new != old
    assert push(client, old, {"fields": {"load1": 1.0}}).status_code == 401
    assert push(client, new, {"fields": {"load1": 1.0}}).status_code == 204


def test_disabled_server_key_is_refused_until_enabled(
    client: FlaskClient, admin_token: str
) -> None:
    s = register_server(client, admin_token)
    h = bearer(admin_token)
    resp = client.post(f"/api/v1/servers/{s['id']}/disable", headers=h)
    assert resp.status_code == 200 and resp.get_json()["enabled"] is False
    refused = push(client, s["api_key"], {"fields": {"load1": 1.0}})
    assert refused.status_code == 403 and "disabled" in refused.get_json()["error"]
    assert client.post(f"/api/v1/servers/{s['id']}/enable", headers=h).status_code == 200
    assert push(client, s["api_key"], {"fields": {"load1": 1.0}}).status_code == 204


def test_delete_removes_server_key_and_points(
    app: Flask, client: FlaskClient, admin_token: str
) -> None:
    s = register_server(client, admin_token)
    keep = register_server(client, admin_token, "keep", "192.0.2.99")
    push(client, s["api_key"], {"fields": {"load1": 1.0}})
    push(client, keep["api_key"], {"fields": {"load1": 2.0}})
    h = bearer(admin_token)
    assert client.delete(f"/api/v1/servers/{s['id']}", headers=h).status_code == 204
    assert client.get(f"/api/v1/servers/{s['id']}", headers=h).status_code == 404
    assert push(client, s["api_key"], {"fields": {"load1": 1.0}}).status_code == 401
    store = app.extensions["monapi.tsdb"]
    assert store.latest([s["id"]])[s["id"]] == []
    assert [v.value for v in store.latest([keep["id"]])[keep["id"]]] == [2.0]
    assert client.delete(f"/api/v1/servers/{s['id']}", headers=h).status_code == 404


def test_server_key_reads_only_its_own_server(client: FlaskClient, admin_token: str) -> None:
    a = register_server(client, admin_token, "a", "192.0.2.1")
    b = register_server(client, admin_token, "b", "192.0.2.2")
    assert client.get(f"/api/v1/servers/{a['id']}", headers=bearer(a["api_key"])).status_code == 200
    for path in ("", "/metrics", "/latest"):
        resp = client.get(f"/api/v1/servers/{b['id']}{path}", headers=bearer(a["api_key"]))
        assert resp.status_code == 403, path


def test_a_deleted_servers_id_is_never_reused(client: FlaskClient, admin_token: str) -> None:
    """Workers cache series by server id; a new server must not inherit a deleted one's."""
    first = register_server(client, admin_token, "gone")
    client.delete(f"/api/v1/servers/{first['id']}", headers=bearer(admin_token))
    second = register_server(client, admin_token, "new")
    assert second["id"] > first["id"]
