"""Reading back: range queries with step and aggregation, latest values, the overview."""

from __future__ import annotations

import time
from typing import Any

import pytest
from flask.testing import FlaskClient

from monapi.services.metrics import auto_step

from .conftest import bearer, push, register_server

T0 = (int(time.time()) // 60) * 60 - 600  # a minute boundary ten minutes ago
# (offset seconds, value), pushed out of order on purpose
SAMPLES = [
    (50, 6.0),
    (0, 1.0),
    (10, 2.0),
    (20, 3.0),
    (30, 4.0),
    (40, 5.0),
    (70, 20.0),
    (60, 10.0),
    (190, 7.5),
]
# Worked out by hand for 60 s buckets starting at T0, T0+60 and T0+180.
EXPECTED = {
    "mean": [3.5, 15.0, 7.5],
    "min": [1.0, 10.0, 7.5],
    "max": [6.0, 20.0, 7.5],
    "last": [6.0, 20.0, 7.5],
    "sum": [21.0, 30.0, 7.5],
    "count": [6, 2, 1],
}


def disk_points(ts: int, used: dict[str, float]) -> list[dict[str, Any]]:
    """One disk point per mount, with its used_percent."""
    return [
        {
            "measurement": "disk",
            "timestamp": ts,
            "tags": {"mount": m},
            "fields": {"used_percent": v},
        }
        for m, v in used.items()
    ]


@pytest.fixture
def server(client: FlaskClient, admin_token: str) -> dict[str, Any]:
    s = register_server(client, admin_token)
    body = {"points": [{"timestamp": T0 + off, "fields": {"load1": v}} for off, v in SAMPLES]}
    assert push(client, s["api_key"], body).status_code == 204
    return s


@pytest.mark.parametrize("agg", list(EXPECTED))
def test_aggregation_matches_hand_computed_values(
    client: FlaskClient, admin_token: str, server: dict[str, Any], agg: str
) -> None:
    resp = client.get(
        f"/api/v1/servers/{server['id']}/metrics?fields=system.load1&start={T0}"
        f"&end={T0 + 299}&step=60s&agg={agg}",
        headers=bearer(admin_token),
    )
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert body["step"] == 60 and body["agg"] == agg
    (series,) = body["series"]
    assert (series["measurement"], series["field"], series["unit"]) == ("system", "load1", "")
    assert [p[0] for p in series["points"]] == [T0, T0 + 60, T0 + 180]
    assert [p[1] for p in series["points"]] == EXPECTED[agg]


def test_bare_field_name_means_system_and_server_key_reads_own(
    client: FlaskClient, server: dict[str, Any]
) -> None:
    resp = client.get(
        f"/api/v1/servers/{server['id']}/metrics?fields=load1&start={T0}&end={T0 + 59}&step=1m",
        headers=bearer(server["api_key"]),
    )
    assert resp.get_json()["series"][0]["points"] == [[T0, 3.5]]


def test_relative_and_rfc3339_ranges(
    client: FlaskClient, admin_token: str, server: dict[str, Any]
) -> None:
    start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0))
    resp = client.get(
        f"/api/v1/servers/{server['id']}/metrics?fields=load1&start={start}&end=now&agg=count"
        "&step=1h",
        headers=bearer(admin_token),
    )
    assert resp.status_code == 200
    assert sum(p[1] for p in resp.get_json()["series"][0]["points"]) == len(SAMPLES)
    resp = client.get(
        f"/api/v1/servers/{server['id']}/metrics?fields=load1&start=-20m",
        headers=bearer(admin_token),
    )
    assert resp.status_code == 200 and resp.get_json()["step"] == 2  # 1200 s / 1000 -> 2 s


def test_step_is_chosen_to_keep_series_under_1000_points() -> None:
    assert auto_step(3600) == 5
    assert auto_step(86400) == 120
    assert auto_step(7 * 86400) == 900
    assert auto_step(30 * 86400) == 3600
    for r in (60, 3600, 86400, 30 * 86400, 365 * 86400):
        assert r / auto_step(r) <= 1000


@pytest.mark.parametrize(
    ("query", "where"),
    [
        ("fields=nope.nothing", "query.fields"),
        ("fields=load1&start=-1h&end=-2h", "query.end"),
        ("fields=load1&start=yesterday", "query.start"),
        ("fields=load1&start=2024-01-01T00:00:00", "query.start"),
        ("fields=load1&step=0s", "query.step"),
        ("fields=load1&step=fast", "query.step"),
        ("fields=load1&start=-30d&step=1s", "query.step"),
        ("fields=load1&tag=novalue", "query.tag"),
    ],
)
def test_bad_queries_are_400_with_the_reason(
    client: FlaskClient, admin_token: str, server: dict[str, Any], query: str, where: str
) -> None:
    resp = client.get(
        f"/api/v1/servers/{server['id']}/metrics?{query}", headers=bearer(admin_token)
    )
    assert resp.status_code == 400, resp.get_json()
    assert resp.get_json()["details"][0]["location"] == where


def test_unknown_agg_is_422(client: FlaskClient, admin_token: str, server: dict[str, Any]) -> None:
    resp = client.get(
        f"/api/v1/servers/{server['id']}/metrics?agg=median", headers=bearer(admin_token)
    )
    assert resp.status_code == 422


def test_string_fields_only_last_and_count(
    client: FlaskClient, admin_token: str, server: dict[str, Any]
) -> None:
    h = bearer(admin_token)
    client.post(
        "/api/v1/fields",
        headers=h,
        json={"measurement": "app", "name": "version", "type": "string"},
    )
    push(client, server["api_key"], {"measurement": "app", "fields": {"version": "1.2.3"}})
    url = f"/api/v1/servers/{server['id']}/metrics?fields=app.version&start=-5m&step=5m"
    assert client.get(url + "&agg=mean", headers=h).status_code == 400
    last = client.get(url + "&agg=last", headers=h).get_json()
    assert last["series"][0]["points"][0][1] == "1.2.3"


def test_tag_filter_and_one_series_per_tag_set(
    client: FlaskClient, admin_token: str, server: dict[str, Any]
) -> None:
    now = int(time.time())
    push(
        client,
        server["api_key"],
        {"points": disk_points(now, {"/": 40.0, "/var": 90.0})},
    )
    url = f"/api/v1/servers/{server['id']}/metrics?fields=disk.used_percent&start=-5m&step=5m"
    both = client.get(url, headers=bearer(admin_token)).get_json()["series"]
    assert {s["tags"]["mount"]: s["points"][0][1] for s in both} == {"/": 40.0, "/var": 90.0}
    only = client.get(url + "&tag=mount=/var", headers=bearer(admin_token)).get_json()["series"]
    assert [s["tags"] for s in only] == [{"mount": "/var"}]


def test_latest_values(client: FlaskClient, admin_token: str, server: dict[str, Any]) -> None:
    resp = client.get(f"/api/v1/servers/{server['id']}/latest", headers=bearer(admin_token))
    assert resp.status_code == 200
    (item,) = resp.get_json()["values"]
    assert (item["measurement"], item["field"], item["value"]) == ("system", "load1", 7.5)
    assert item["timestamp"].startswith(time.strftime("%Y-%m-%dT", time.gmtime(T0 + 190)))


def test_overview_lists_status_and_key_values(
    client: FlaskClient, admin_token: str, server: dict[str, Any]
) -> None:
    register_server(client, admin_token, "quiet", "192.0.2.77")
    now = int(time.time())
    push(
        client,
        server["api_key"],
        {
            "points": [
                {"measurement": "cpu", "timestamp": now, "fields": {"usage_percent": 33.0}},
                *disk_points(now, {"/": 40.0, "/data": 80.0}),
            ]
        },
    )
    body = client.get("/api/v1/overview", headers=bearer(admin_token)).get_json()
    assert body["total"] == 2
    by_name = {i["hostname"]: i for i in body["items"]}
    web = by_name["web-01"]
    assert web["status"] == "online"
    assert web["values"]["cpu.usage_percent"] == 33.0
    assert web["values"]["disk.used_percent"] == 80.0  # the fullest mount
    assert web["values"]["mem.used_percent"] is None
    assert by_name["quiet"]["status"] == "never_seen"
    page = client.get("/api/v1/overview?per_page=1&page=2", headers=bearer(admin_token))
    assert [i["hostname"] for i in page.get_json()["items"]] == ["web-01"]
