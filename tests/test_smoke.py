from __future__ import annotations

from flask.testing import FlaskClient

from .conftest import bearer, push, register_server


def test_register_push_and_query_back(client: FlaskClient, admin_token: str) -> None:
    server = register_server(client, admin_token)
    key = server["api_key"]
    resp = push(client, key, {"measurement": "cpu", "fields": {"usage_percent": 12.5}})
    assert resp.status_code == 204, resp.get_json()
    resp = client.get(
        f"/api/v1/servers/{server['id']}/metrics?fields=cpu.usage_percent&start=-5m&step=60s",
        headers=bearer(key),
    )
    assert resp.status_code == 200, resp.get_json()
    series = resp.get_json()["series"]
    assert series[0]["points"][0][1] == 12.5
