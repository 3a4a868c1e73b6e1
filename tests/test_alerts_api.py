"""/api/v1/alerts: rules, silences, states and notifications through the API, and its errors."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from monapi.alerting.runner import evaluator_for

from .conftest import bearer, push, register_server

CONFIG_STORES = ["sqlite", "postgresql"]
CPU = {"measurement": "cpu", "field": "usage_percent", "condition": ">", "threshold": 90}


def post(client: FlaskClient, token: str, path: str, body: Any) -> Any:
    return client.post(f"/api/v1/alerts{path}", json=body, headers=bearer(token))


def test_create_threshold_rule_with_defaults(client: FlaskClient, admin_token: str) -> None:
    resp = post(client, admin_token, "", {"name": "High CPU", **CPU})
    assert resp.status_code == 201, resp.get_json()
    rule = resp.get_json()
    assert rule["kind"] == "threshold"
    assert rule["aggregation"] == "mean"
    assert rule["window"] == 300
    assert rule["duration"] == 0
    assert rule["severity"] == "warning"
    assert rule["enabled"] is True
    assert rule["server_ids"] is None and rule["labels"] == {}
    assert rule["expression"] == "mean(cpu.usage_percent) over 5m > 90"
    got = client.get(f"/api/v1/alerts/{rule['id']}", headers=bearer(admin_token)).get_json()
    assert got == rule
    listed = client.get("/api/v1/alerts", headers=bearer(admin_token)).get_json()
    assert listed["total"] == 1 and listed["items"][0]["id"] == rule["id"]


def test_create_silent_rule_and_durations_as_text_or_seconds(
    client: FlaskClient, admin_token: str
) -> None:
    resp = post(client, admin_token, "", {"name": "Quiet", "kind": "silent", "duration": 90})
    assert resp.status_code == 201, resp.get_json()
    rule = resp.get_json()
    assert rule["intervals"] == 3
    assert rule["duration"] == 90
    assert rule["measurement"] is None and rule["aggregation"] is None
    assert rule["expression"] == "no push for 3 intervals"
    resp = post(client, admin_token, "", {"name": "cpu", **CPU, "window": "90s", "duration": "2m"})
    assert resp.get_json()["window"] == 90 and resp.get_json()["duration"] == 120


@pytest.mark.parametrize(
    ("body", "status", "where"),
    [
        ({"name": "x", "measurement": "cpu", "field": "usage_percent"}, 422, "condition"),
        ({"name": "x", **CPU, "field": "nope"}, 422, "not a configured field"),
        ({"name": "x", **CPU, "condition": "=>"}, 422, "condition"),
        ({"name": "x", **CPU, "window": "0s"}, 422, "window"),
        ({"name": "x", **CPU, "window": "30d"}, 422, "window"),
        ({"name": "x", **CPU, "duration": "-1m"}, 422, "duration"),
        ({"name": "x", **CPU, "threshold": "90"}, 422, "threshold"),
        ({"name": "x", **CPU, "severity": "page"}, 422, "severity"),
        ({"name": "x", **CPU, "server_ids": [1], "labels": {"a": "b"}}, 422, "not both"),
        ({"name": "x", **CPU, "server_ids": [424242]}, 422, "no server with id 424242"),
        ({"name": "x", **CPU, "intervals": 3}, 422, "silent rules only"),
        ({"name": "x", "kind": "silent", "measurement": "cpu"}, 422, "only threshold rules"),
        ({"name": "", **CPU}, 422, "name"),
        ({"name": "x", **CPU, "bogus": 1}, 422, "bogus"),
        (
            {"name": "x", **CPU, "measurement": "net", "field": "interface", "aggregation": "mean"},
            422,
            "aggregation",
        ),
    ],
)
def test_bad_rules_are_refused_saying_where(
    client: FlaskClient, admin_token: str, body: dict[str, Any], status: int, where: str
) -> None:
    if body.get("field") == "interface":  # a text field: only count makes sense
        resp = client.post(
            "/api/v1/fields",
            json={"measurement": "net", "name": "interface", "type": "string"},
            headers=bearer(admin_token),
        )
        assert resp.status_code == 201
    resp = post(client, admin_token, "", body)
    assert resp.status_code == status, resp.get_json()
    err = resp.get_json()
    assert where in err["error"] + str(err.get("details")), err
    assert client.get("/api/v1/alerts", headers=bearer(admin_token)).get_json()["total"] == 0


def test_duplicate_name_is_409(client: FlaskClient, admin_token: str) -> None:
    assert post(client, admin_token, "", {"name": "cpu", **CPU}).status_code == 201
    resp = post(client, admin_token, "", {"name": "cpu", **CPU})
    assert resp.status_code == 409
    assert "already exists" in resp.get_json()["error"]


def test_update_changes_only_what_is_sent_and_checks_the_whole(
    client: FlaskClient, admin_token: str
) -> None:
    srv = register_server(client, admin_token)
    rule = post(client, admin_token, "", {"name": "cpu", **CPU, "labels": {"role": "web"}})
    rid = rule.get_json()["id"]
    url = f"/api/v1/alerts/{rid}"
    resp = client.patch(
        url, json={"threshold": 95, "severity": "critical"}, headers=bearer(admin_token)
    )
    assert resp.status_code == 200, resp.get_json()
    got = resp.get_json()
    assert got["threshold"] == 95 and got["severity"] == "critical"
    assert got["labels"] == {"role": "web"} and got["condition"] == ">"
    # Choosing servers by id replaces the label choice.
    got = client.patch(url, json={"server_ids": [srv["id"]]}, headers=bearer(admin_token))
    assert got.get_json()["server_ids"] == [srv["id"]] and got.get_json()["labels"] == {}
    got = client.patch(url, json={"server_ids": None}, headers=bearer(admin_token))
    assert got.get_json()["server_ids"] is None
    for bad, where in (
        ({"kind": "silent"}, "kind"),
        ({"field": "nope"}, "not a configured field"),
        ({"intervals": 2}, "silent rules only"),
        ({"window": "0"}, "window"),
        ({"name": None}, "keeps a name"),
        ({"condition": None}, "needs condition"),
    ):
        resp = client.patch(url, json=bad, headers=bearer(admin_token))
        assert resp.status_code == 422, (bad, resp.get_json())
        assert where in str(resp.get_json()), resp.get_json()
    after = client.get(url, headers=bearer(admin_token)).get_json()
    assert after["threshold"] == 95 and after["field"] == "usage_percent"


def test_unknown_rule_is_404_and_delete_is_204(client: FlaskClient, admin_token: str) -> None:
    h = bearer(admin_token)
    assert client.get("/api/v1/alerts/99", headers=h).status_code == 404
    assert client.patch("/api/v1/alerts/99", json={"threshold": 1}, headers=h).status_code == 404
    assert client.delete("/api/v1/alerts/99", headers=h).status_code == 404
    rid = post(client, admin_token, "", {"name": "cpu", **CPU}).get_json()["id"]
    assert client.delete(f"/api/v1/alerts/{rid}", headers=h).status_code == 204
    assert client.get(f"/api/v1/alerts/{rid}", headers=h).status_code == 404


def test_only_admin_keys_reach_alerts(client: FlaskClient, admin_token: str) -> None:
    srv = register_server(client, admin_token)
    assert client.get("/api/v1/alerts").status_code == 401
    for path in ("", "/states", "/history", "/silences", "/notifications"):
        resp = client.get(f"/api/v1/alerts{path}", headers=bearer(srv["api_key"]))
        assert resp.status_code == 403, path


def test_silences_create_list_and_end(client: FlaskClient, admin_token: str) -> None:
    h = bearer(admin_token)
    srv = register_server(client, admin_token)
    rid = post(client, admin_token, "", {"name": "cpu", **CPU}).get_json()["id"]
    resp = post(
        client,
        admin_token,
        "/silences",
        {"rule_id": rid, "duration": "2h", "comment": "maintenance"},
    )
    assert resp.status_code == 201, resp.get_json()
    s = resp.get_json()
    assert s["active"] is True and s["comment"] == "maintenance"
    ends = datetime.fromisoformat(s["ends_at"])
    assert abs((ends - datetime.now(UTC)).total_seconds() - 7200) < 60
    assert s["created_by"].startswith("admin key ")
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    resp = post(client, admin_token, "/silences", {"server_id": srv["id"], "ends_at": later})
    assert resp.status_code == 201, resp.get_json()
    listed = client.get("/api/v1/alerts/silences", headers=h).get_json()
    assert listed["total"] == 2
    assert client.delete(f"/api/v1/alerts/silences/{s['id']}", headers=h).status_code == 204
    listed = client.get("/api/v1/alerts/silences", headers=h).get_json()
    assert [x["server_id"] for x in listed["items"]] == [srv["id"]]
    every = client.get("/api/v1/alerts/silences?expired=true", headers=h).get_json()
    ended = [x for x in every["items"] if x["id"] == s["id"]]
    assert ended and ended[0]["active"] is False
    assert client.get("/api/v1/alerts/silences/999", headers=h).status_code == 404


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"duration": "1h"}, "rule_id, server_id or both"),
        ({"rule_id": 1}, "ends_at or duration"),
        ({"rule_id": 1, "duration": "1h", "ends_at": "2099-01-01T00:00:00Z"}, "one of them"),
        ({"rule_id": 1, "ends_at": "2001-01-01T00:00:00Z"}, "in the past"),
        ({"rule_id": 1, "ends_at": "2099-01-01T00:00:00"}, "time zone"),
        ({"rule_id": 1, "ends_at": "tomorrow"}, "not an RFC 3339 time"),
        ({"rule_id": 77, "duration": "1h"}, "alert rule 77 not found"),
        ({"server_id": 77, "duration": "1h"}, "server 77 not found"),
    ],
)
def test_bad_silences_are_refused(
    client: FlaskClient, admin_token: str, body: dict[str, Any], where: str
) -> None:
    post(client, admin_token, "", {"name": "cpu", **CPU})
    resp = post(client, admin_token, "/silences", body)
    assert resp.status_code == 422, resp.get_json()
    assert where in str(resp.get_json()), resp.get_json()


def test_states_history_and_notifications_lists(app: Flask, admin_token: str) -> None:
    client = app.test_client()
    h = bearer(admin_token)
    srv = register_server(client, admin_token)
    rid = post(client, admin_token, "", {"name": "cpu", **CPU, "severity": "critical"})
    rid = rid.get_json()["id"]
    resp = push(
        client,
        srv["api_key"],
        {
            "points": [
                {
                    "measurement": "cpu",
                    "timestamp": time.time() - 5,
                    "fields": {"usage_percent": 99.0},
                }
            ]
        },
    )
    assert resp.status_code == 204
    evaluator_for(app).evaluate()
    [st] = client.get("/api/v1/alerts/states", headers=h).get_json()["items"]
    assert st["state"] == "firing" and st["rule_name"] == "cpu" and st["hostname"] == "web-01"
    assert st["severity"] == "critical" and st["value"] == 99.0 and st["silenced"] is False
    assert client.get("/api/v1/alerts/states?state=ok", headers=h).get_json()["total"] == 0
    assert (
        client.get(
            f"/api/v1/alerts/states?server_id={srv['id']}&severity=info", headers=h
        ).get_json()["total"]
        == 0
    )
    assert client.get("/api/v1/alerts", headers=h).get_json()["items"][0]["firing"] == 1
    hist = client.get(f"/api/v1/alerts/history?rule_id={rid}&per_page=1", headers=h).get_json()
    assert hist["total"] == 2 and hist["pages"] == 2
    assert hist["items"][0]["to_state"] == "firing"
    assert "page=2" in hist["links"]["next"]
    # No channel is configured: nothing is queued.
    assert client.get("/api/v1/alerts/notifications", headers=h).get_json()["total"] == 0
    post(client, admin_token, "/silences", {"server_id": srv["id"], "duration": "1h"})
    [st] = client.get("/api/v1/alerts/states", headers=h).get_json()["items"]
    assert st["silenced"] is True


def test_metrics_count_alerts_by_state_and_severity(app: Flask, admin_token: str) -> None:
    from .test_observability import scrape, value

    client = app.test_client()
    srv = register_server(client, admin_token)
    post(client, admin_token, "", {"name": "cpu", **CPU, "severity": "critical"})
    post(client, admin_token, "", {"name": "slow", **CPU, "duration": "1h", "severity": "info"})
    resp = push(
        client,
        srv["api_key"],
        {
            "points": [
                {
                    "measurement": "cpu",
                    "timestamp": time.time() - 5,
                    "fields": {"usage_percent": 99.0},
                }
            ]
        },
    )
    assert resp.status_code == 204
    s = scrape(client)
    assert value(s, "monapi_alerts", state="firing", severity="critical") == 0
    evaluator_for(app).evaluate()
    s = scrape(client)
    assert value(s, "monapi_alerts", state="firing", severity="critical") == 1
    assert value(s, "monapi_alerts", state="pending", severity="info") == 1
    assert value(s, "monapi_alerts", state="firing", severity="info") == 0
    assert ("monapi_alert_notifications", frozenset({("status", "failed")})) in s


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ({"alert_email_to": "ops@example.com"}, "MONAPI_SMTP_HOST is not"),
        ({"alert_email_to": "ops, x@y", "smtp_host": "mail"}, "'ops' is not an e-mail address"),
        (
            {"smtp_host": "mail.example.com", "smtp_username": "u", "smtp_security": "none"},
            "in clear",
        ),
        ({"alert_webhook_url": "ftp://example.com/hook"}, "http:// or https://"),
        ({"alerts_interval": "500ms"}, "1s or more"),
        ({"smtp_timeout": 0}, "above 0"),
        ({"smtp_security": "tls"}, "MONAPI_SMTP_SECURITY"),
    ],
)
def test_alert_settings_are_checked_at_start(given: dict[str, Any], says: str) -> None:
    from monapi.settings import ConfigError, load_settings

    with pytest.raises(ConfigError) as exc:
        load_settings(given)
    assert says in str(exc.value)


def test_smtp_port_follows_the_security_unless_given() -> None:
    from monapi.settings import load_settings

    assert load_settings({}).resolved_smtp_port == 587
    assert load_settings({"smtp_security": "ssl"}).resolved_smtp_port == 465
    assert load_settings({"smtp_security": "none"}).resolved_smtp_port == 25
    assert load_settings({"smtp_security": "ssl", "smtp_port": 2465}).resolved_smtp_port == 2465
    s = load_settings(
        {
            "alert_email_to": " a@x.org ,b@y.org ",
            "smtp_host": "localhost",
            "smtp_username": "u",
            "smtp_security": "none",
        }
    )
    assert s.alert_email_to == "a@x.org, b@y.org"


def test_a_rule_whose_field_went_can_still_be_disabled(
    client: FlaskClient, admin_token: str
) -> None:
    h = bearer(admin_token)
    resp = client.post(
        "/api/v1/fields", json={"measurement": "app", "name": "q", "type": "int"}, headers=h
    )
    assert resp.status_code == 201
    fid = resp.get_json()["id"]
    rule = post(
        client,
        admin_token,
        "",
        {"name": "queue", "measurement": "app", "field": "q", "condition": ">", "threshold": 100},
    ).get_json()
    assert client.delete(f"/api/v1/fields/{fid}", headers=h).status_code == 204
    resp = client.patch(f"/api/v1/alerts/{rule['id']}", json={"enabled": False}, headers=h)
    assert resp.status_code == 200, resp.get_json()
    resp = client.patch(f"/api/v1/alerts/{rule['id']}", json={"field": "q"}, headers=h)
    assert resp.status_code == 422
    resp = client.patch(f"/api/v1/alerts/{rule['id']}", json={"name": "cpu2"}, headers=h)
    assert resp.status_code == 200
    other = post(client, admin_token, "", {"name": "other", **CPU}).get_json()
    resp = client.patch(f"/api/v1/alerts/{other['id']}", json={"name": "cpu2"}, headers=h)
    assert resp.status_code == 409
    assert "'cpu2' already exists" in resp.get_json()["error"]


def test_firing_and_resolving_are_logged(
    app: Flask, admin_token: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = app.test_client()
    srv = register_server(client, admin_token)
    post(client, admin_token, "", {"name": "High CPU", **CPU, "window": "1m"})
    resp = push(
        client,
        srv["api_key"],
        {
            "points": [
                {
                    "measurement": "cpu",
                    "timestamp": time.time() - 5,
                    "fields": {"usage_percent": 99.0},
                }
            ]
        },
    )
    assert resp.status_code == 204
    with caplog.at_level("INFO", logger="monapi.alerts"):
        evaluator_for(app).evaluate()
        evaluator_for(app).evaluate(time.time() + 120)
    lines = [r.getMessage() for r in caplog.records if r.name == "monapi.alerts"]
    assert lines == [
        "alert firing: High CPU on web-01 (mean(cpu.usage_percent) over 1m > 90, value 99)",
        "alert resolved: High CPU on web-01 (mean(cpu.usage_percent) over 1m > 90, value no data)",
    ]
