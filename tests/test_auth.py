"""Authentication and scopes: 401 without a valid key, 403 with the wrong kind of key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from .conftest import bearer, make_app, push, register_server

# Every test here runs on the embedded SQLite store and on PostgreSQL.
CONFIG_STORES = ["sqlite", "postgresql"]

# One representative of every class of endpoint: (method, path, body, kinds allowed)
ENDPOINTS: list[tuple[str, str, Any, set[str]]] = [
    (
        "POST",
        "/api/v1/servers",
        {"hostname": "new-1", "ip_address": "192.0.2.50"},
        {"admin", "enroll"},
    ),
    (
        "POST",
        "/api/register_server",
        {"hostname": "new-2", "ip_address": "192.0.2.51"},
        {"admin", "enroll"},
    ),
    ("GET", "/api/v1/servers", None, {"admin"}),
    ("GET", "/api/v1/servers/{sid}", None, {"admin", "server"}),
    ("PATCH", "/api/v1/servers/{sid}", {"description": "x"}, {"admin"}),
    ("POST", "/api/v1/servers/{sid}/enable", None, {"admin"}),
    ("GET", "/api/v1/servers/{sid}/metrics", None, {"admin", "server"}),
    ("GET", "/api/v1/servers/{sid}/latest", None, {"admin", "server"}),
    ("GET", "/api/v1/overview", None, {"admin"}),
    ("GET", "/api/v1/fields", None, {"admin"}),
    ("POST", "/api/v1/fields", {"measurement": "m", "name": "f", "type": "int"}, {"admin"}),
    ("GET", "/api/v1/enrollment-tokens", None, {"admin"}),
    ("POST", "/api/v1/enrollment-tokens", {}, {"admin"}),
    ("POST", "/api/v1/data", {"fields": {"load1": 1.0}}, {"server"}),
    ("GET", "/api/v1/agent/config", None, {"server"}),
    ("POST", "/api/v1/agent/heartbeat", {"agent_version": "1.0", "uptime": 5}, {"server"}),
]


@pytest.fixture
def keys(client: FlaskClient, admin_token: str) -> dict[str, Any]:
    server = register_server(client, admin_token)
    enroll = client.post("/api/v1/enrollment-tokens", json={}, headers=bearer(admin_token))
    return {
        "admin": admin_token,
        "server": server["api_key"],
        "enroll": enroll.get_json()["token"],
        "sid": server["id"],
    }


def _call(client: FlaskClient, method: str, path: str, body: Any, headers: dict[str, str]) -> Any:
    return client.open(path, method=method, json=body, headers=headers)


@pytest.mark.parametrize(("method", "path", "body", "allowed"), ENDPOINTS)
def test_missing_or_invalid_key_is_401(
    client: FlaskClient, keys: dict[str, Any], method: str, path: str, body: Any, allowed: set[str]
) -> None:
    path = path.format(sid=keys["sid"])
    forged = keys["server"][:-4] + "AAAA"
    for headers in (
        {},
        bearer("nonsense"),
        bearer(forged),
        {"X-API-Key": forged},
        {"Authorization": "Basic abc"},
    ):
        resp = _call(client, method, path, body, headers)
        assert resp.status_code == 401, (path, headers, resp.get_json())
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert resp.get_json()["code"] == "unauthorized"


@pytest.mark.parametrize(("method", "path", "body", "allowed"), ENDPOINTS)
def test_wrong_kind_of_key_is_403_and_right_kind_passes(
    client: FlaskClient,
    keys: dict[str, Any],
    method: str,
    path: str,
    body: Any,
    allowed: set[str],
) -> None:
    path = path.format(sid=keys["sid"])
    for kind in ("admin", "server", "enroll"):
        if isinstance(body, dict) and "hostname" in body:
            body = {**body, "hostname": f"{body['hostname']}-{kind}"}
        resp = _call(client, method, path, body, bearer(keys[kind]))
        if kind in allowed:
            assert resp.status_code < 400, (kind, path, resp.get_json())
        else:
            assert resp.status_code == 403, (kind, path, resp.get_json())
            assert resp.get_json()["code"] == "forbidden"


def test_x_api_key_header_is_accepted(client: FlaskClient, keys: dict[str, Any]) -> None:
    resp = client.get("/api/v1/servers", headers={"X-API-Key": keys["admin"]})
    assert resp.status_code == 200


def test_enrollment_token_max_uses_is_enforced(client: FlaskClient, admin_token: str) -> None:
    tok = client.post(
        "/api/v1/enrollment-tokens",
        json={"max_uses": 2, "name": "rack 4"},
        headers=bearer(admin_token),
    ).get_json()
    assert tok["max_uses"] == 2 and tok["uses"] == 0 and tok["active"] is True
    for i in range(2):
        register_server(client, tok["token"], f"r4-{i}", f"192.0.2.{i + 1}")
    resp = client.post(
        "/api/v1/servers",
        json={"hostname": "r4-9", "ip_address": "192.0.2.9"},
        headers=bearer(tok["token"]),
    )
    assert resp.status_code == 401
    listed = client.get("/api/v1/enrollment-tokens", headers=bearer(admin_token)).get_json()
    assert listed["items"][0]["uses"] == 2 and listed["items"][0]["active"] is False
    assert "token" not in listed["items"][0]


def test_duplicate_registration_does_not_use_up_the_token(
    client: FlaskClient, admin_token: str
) -> None:
    tok = client.post(
        "/api/v1/enrollment-tokens", json={"max_uses": 1}, headers=bearer(admin_token)
    ).get_json()["token"]
    register_server(client, admin_token, "taken")
    resp = client.post(
        "/api/v1/servers",
        json={"hostname": "taken", "ip_address": "192.0.2.9"},
        headers=bearer(tok),
    )
    assert resp.status_code == 409
    register_server(client, tok, "free")


def test_revoked_enrollment_token_stops_at_once(client: FlaskClient, admin_token: str) -> None:
    tok = client.post("/api/v1/enrollment-tokens", json={}, headers=bearer(admin_token)).get_json()
    register_server(client, tok["token"], "one")
    resp = client.delete(f"/api/v1/enrollment-tokens/{tok['id']}", headers=bearer(admin_token))
    assert resp.status_code == 200 and resp.get_json()["revoked"] is True
    resp = client.post(
        "/api/v1/servers",
        json={"hostname": "two", "ip_address": "192.0.2.9"},
        headers=bearer(tok["token"]),
    )
    assert resp.status_code == 401 and "revoked" in resp.get_json()["error"]
    missing = client.delete(
        "/api/v1/enrollment-tokens/0123456789abcdef", headers=bearer(admin_token)
    )
    assert missing.status_code == 404


def test_expired_enrollment_token_is_refused(client: FlaskClient, admin_token: str) -> None:
    from datetime import timedelta

    from sqlalchemy import update

    from monapi import db
    from monapi.models import ApiKey, utcnow

    tok = client.post(
        "/api/v1/enrollment-tokens", json={"expires_in": "1h"}, headers=bearer(admin_token)
    ).get_json()
    assert tok["expires_at"] is not None
    with client.application.app_context():
        s = db.session()
        s.execute(
            update(ApiKey)
            .where(ApiKey.id == tok["id"])
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        client.application.extensions["monapi.cache"].bump(s, "keys")
        s.commit()
    resp = client.post(
        "/api/v1/servers",
        json={"hostname": "late", "ip_address": "192.0.2.9"},
        headers=bearer(tok["token"]),
    )
    assert resp.status_code == 401 and "expired" in resp.get_json()["error"]


def test_bad_expiry_is_422(client: FlaskClient, admin_token: str) -> None:
    resp = client.post(
        "/api/v1/enrollment-tokens", json={"expires_in": "soon"}, headers=bearer(admin_token)
    )
    assert resp.status_code == 422
    assert resp.get_json()["details"][0]["location"] == "expires_in"


def test_a_key_that_worked_once_is_still_checked_against_the_current_record(
    tmp_path: Path,
) -> None:
    """The digest of a key that matched is remembered, but every push still compares it with
    the record: a key with another secret, or the old key after a rotation, is refused."""
    app, token = make_app(tmp_path / "d", rate_limit_server="0")
    client = app.test_client()
    s = register_server(client, token)
    key = s["api_key"]
    for _ in range(2):
        assert push(client, key, {"fields": {"load1": 1.0}}).status_code == 204
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    assert push(client, forged, {"fields": {"load1": 1.0}}).status_code == 401
    new = client.post(f"/api/v1/servers/{s['id']}/rotate-key", headers=bearer(token)).get_json()
    assert push(client, key, {"fields": {"load1": 1.0}}).status_code == 401
    assert push(client, new["api_key"], {"fields": {"load1": 1.0}}).status_code == 204
