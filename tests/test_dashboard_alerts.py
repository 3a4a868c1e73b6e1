"""The dashboard's alerts: the rule form (add, edit, errors, enable/disable, delete), silences,
and firing alerts on the overview, the server pages, the alerts page and the navigation.

Alerts fire the way they do in production: a rule made through the API or the form, values
pushed through the API, and one round of the evaluator (at a time the test chooses). What a
form changed is read back through the API.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from monapi.alerting.runner import evaluator_for
from monapi.services import users

from .conftest import bearer, make_app, push, register_server
from .receivers import WebhookReceiver
from .test_dashboard import (
    Browser,
    csrf,
    error_text,
    field_errors,
    form_token,
    signed_in,
)

CONFIG_STORES = ["sqlite", "postgresql"]

CPU_RULE = {
    "name": "High CPU",
    "measurement": "cpu",
    "field": "usage_percent",
    "aggregation": "max",
    "window": "1m",
    "condition": ">",
    "threshold": 90,
}


# ---- helpers ---------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _quick_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cheap argon2id parameters, as in test_dashboard.py: these tests sign in a great deal."""
    quick = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    monkeypatch.setattr(users, "_hasher", quick)
    monkeypatch.setattr(users, "_DUMMY_HASH", quick.hash("monapi: no such user"))


@pytest.fixture
def b(app: Flask) -> Browser:
    """A browser signed in as alice."""
    return signed_in(app)


def api_rule(api: FlaskClient, token: str, **body: Any) -> dict[str, Any]:
    """A rule made through the API."""
    resp = api.post("/api/v1/alerts", json={**CPU_RULE, **body}, headers=bearer(token))
    assert resp.status_code == 201, resp.get_json()
    rule: dict[str, Any] = resp.get_json()
    return rule


def api_rules(api: FlaskClient, token: str) -> dict[str, dict[str, Any]]:
    """Every rule, by name, as the API shows it."""
    resp = api.get("/api/v1/alerts", headers=bearer(token))
    assert resp.status_code == 200
    return {r["name"]: r for r in resp.get_json()["items"]}


def api_silences(api: FlaskClient, token: str) -> list[dict[str, Any]]:
    resp = api.get("/api/v1/alerts/silences", headers=bearer(token))
    assert resp.status_code == 200
    items: list[dict[str, Any]] = resp.get_json()["items"]
    return items


def push_cpu(api: FlaskClient, key: str, value: float, ts: float) -> None:
    point = {"measurement": "cpu", "timestamp": ts, "fields": {"usage_percent": value}}
    assert push(api, key, {"points": [point]}).status_code == 204


def evaluate(app: Flask, at: float) -> None:
    """One round of the evaluator at ``at``."""
    report = evaluator_for(app, clock=lambda: at).evaluate()
    assert not report.errors, report.errors


def shown_alerts(html: str, section: str | None = None) -> dict[str, str]:
    """'rule-server' -> state of the alert rows of a page (of one section, by its id)."""
    if section is not None:
        m = re.search(rf'<section[^>]*id="{section}"[^>]*>(.*?)</section>', html, re.S)
        if m is None:
            return {}
        html = m.group(1)
    return dict(re.findall(r'<tr data-alert="(\d+-\d+)" data-state="(\w+)">', html))


def alert_row(html: str, rule_id: int, server_id: int) -> str:
    m = re.search(rf'<tr data-alert="{rule_id}-{server_id}"[^>]*>(.*?)</tr>', html, re.S)
    assert m, html
    return m.group(1)


def rule_row(html: str, rule_id: int) -> str:
    m = re.search(rf'<tr data-rule="{rule_id}">(.*?)</tr>', html, re.S)
    assert m, html
    return m.group(1)


def nav_badge(html: str) -> int | None:
    """The number on the navigation's Alerts link (None: no badge)."""
    m = re.search(r'<span class="nav-badge" id="firing-count"[^>]*>(\d+)</span>', html)
    return int(m.group(1)) if m else None


def flashes(html: str) -> list[str]:
    return re.findall(r'<p class="flash \w+" role="status">([^<]*)</p>', html)


def rule_form(**values: str | list[str]) -> dict[str, str | list[str]]:
    """A filled-in rule form (the defaults of a new threshold rule on cpu.usage_percent)."""
    form: dict[str, str | list[str]] = {
        "name": "High CPU",
        "kind": "threshold",
        "field": "cpu.usage_percent",
        "aggregation": "max",
        "window": "1m",
        "condition": ">",
        "threshold": "90",
        "duration": "0s",
        "target": "all",
        "severity": "critical",
        "enabled": "on",
        "description": "",
    }
    form.update(values)
    return {k: v for k, v in form.items() if v is not None}


def post(b: Browser, app: Flask, path: str, **form: str | list[str]) -> TestResponse:
    return b.post(path, data={"csrf_token": csrf(app, b), **form})


# ---- the alerts page and the navigation ------------------------------------------------------


def test_alerts_page_without_rules_says_so(app: Flask, b: Browser) -> None:
    page = b.get("/alerts")
    assert page.status_code == 200
    assert "<title>Alerts · monapi</title>" in page.text
    assert "No alert is firing or pending." in page.text
    assert "No alert rule yet" in page.text
    assert "No silence is in force." in page.text
    assert "No alert has changed state yet." in page.text
    assert 'id="failed-notifications"' not in page.text
    assert re.search(r'<a href="/alerts" aria-current="page">Alerts</a>', page.text)
    assert nav_badge(page.text) is None
    overview = b.get("/").text
    assert '<a href="/alerts" >Alerts</a>' in overview
    assert 'id="firing-alerts"' not in overview
    assert "No alert is firing." in overview


def test_alert_pages_need_signing_in(app: Flask, admin_token: str) -> None:
    rule = api_rule(app.test_client(), admin_token)
    anonymous = app.test_client()
    for page in ("/alerts", "/alerts/new", f"/alerts/{rule['id']}/edit"):
        resp = anonymous.get(page)
        assert resp.status_code == 302 and resp.headers["Location"].startswith("/login?next=")


# ---- rules through the form ------------------------------------------------------------------


def test_add_a_threshold_rule_for_chosen_servers(app: Flask, admin_token: str, b: Browser) -> None:
    api = app.test_client()
    web = register_server(api, admin_token, "web-01")
    db1 = register_server(api, admin_token, "db-01", "192.0.2.11")
    form = b.get("/alerts/new")
    assert form.status_code == 200
    # the fields are the configured ones; the servers are every server, by name
    assert '<option value="cpu.usage_percent" >cpu.usage_percent (float, %)</option>' in form.text
    assert re.findall(
        r'<option value="(\d+)" >([\w-]+)</option>', form.text.split("server_ids")[1]
    )[:2] == [(str(db1["id"]), "db-01"), (str(web["id"]), "web-01")]
    resp = b.post(
        "/alerts/new",
        data={
            "csrf_token": form_token(form.text),
            **rule_form(
                target="servers",
                server_ids=[str(web["id"]), str(db1["id"])],
                tags="cpu=total",
                duration="2m",
                description="the CPU is busy",
            ),
        },
    )
    assert resp.status_code == 302 and resp.headers["Location"] == "/alerts"
    page = b.get("/alerts").text
    assert flashes(page) == ["rule High CPU added"]
    rule = api_rules(api, admin_token)["High CPU"]
    assert rule["kind"] == "threshold"
    assert rule["expression"] == "max(cpu.usage_percent{cpu=total}) over 1m > 90"
    assert (rule["duration"], rule["severity"], rule["enabled"]) == (120, "critical", True)
    assert rule["server_ids"] == sorted([web["id"], db1["id"]]) and rule["labels"] == {}
    assert rule["description"] == "the CPU is busy"
    row = rule_row(page, rule["id"])
    assert "<code>max(cpu.usage_percent{cpu=total}) over 1m &gt; 90</code>" in row
    assert "for 2m" in row
    assert '<span class="severity critical">critical</span>' in row
    assert ">db-01</a>, <a" in row and ">web-01</a>" in row
    assert '<td data-label="Enabled">yes</td>' in row


def test_add_rules_for_labels_and_for_every_server_and_a_silent_rule(
    app: Flask, admin_token: str, b: Browser
) -> None:
    api = app.test_client()
    r1 = post(b, app, "/alerts/new", **rule_form(target="labels", labels="role=web\n dc = fra1 "))
    assert r1.status_code == 302
    r2 = post(
        b,
        app,
        "/alerts/new",
        **rule_form(name="Quiet", kind="silent", intervals="4", severity="warning", enabled=""),
    )
    assert r2.status_code == 302
    rules = api_rules(api, admin_token)
    assert rules["High CPU"]["labels"] == {"role": "web", "dc": "fra1"}
    assert rules["High CPU"]["server_ids"] is None
    quiet = rules["Quiet"]
    # the threshold inputs a silent rule does not use are ignored, not refused
    assert (quiet["kind"], quiet["intervals"], quiet["measurement"], quiet["threshold"]) == (
        "silent",
        4,
        None,
        None,
    )
    assert quiet["expression"] == "no push for 4 intervals"
    assert (quiet["enabled"], quiet["labels"], quiet["server_ids"]) == (False, {}, None)
    page = b.get("/alerts").text
    assert '<td data-label="Enabled">no</td>' in rule_row(page, quiet["id"])
    assert "all" in rule_row(page, quiet["id"])
    assert '<span class="label">dc=fra1</span>' in rule_row(page, rules["High CPU"]["id"])


RULE_ERRORS: list[tuple[dict[str, Any], str, str]] = [
    # (changes to a good form, where the message is shown, the message's start)
    ({"name": ""}, "name", "String should have at least 1 character"),
    ({"field": ""}, "field", "choose a field"),
    ({"field": "app.nope"}, "field", "app.nope is not a configured field"),
    ({"field": "app.version", "aggregation": "mean"}, "aggregation", "app.version is a string"),
    ({"threshold": "abc"}, "threshold", "threshold must be a number"),
    ({"threshold": ""}, "threshold", "enter the number the value is compared with"),
    ({"threshold": "nan"}, "threshold", "threshold must be a finite number"),
    ({"window": "soon"}, "window", "'soon' is not a number of seconds"),
    ({"window": "30d"}, "window", "window must be between 1 s and 604800 s"),
    ({"duration": "-1m"}, "duration", "'-1m' is not a number of seconds"),
    ({"condition": "=>"}, "condition", "choose a condition"),
    ({"severity": "urgent"}, "severity", "Input should be 'info', 'warning' or 'critical'"),
    ({"tags": "cpu"}, "tags", "'cpu' is not key=value"),
    ({"target": "labels", "labels": ""}, "labels", "give at least one label"),
    ({"target": "labels", "labels": "role"}, "labels", "'role' is not key=value"),
    ({"target": "labels", "labels": "bad key=x"}, "labels", "label key 'bad key'"),
    ({"target": "servers"}, "server_ids", "choose at least one server"),
    ({"target": "servers", "server_ids": "x"}, "server_ids", "choose servers from the list"),
    ({"target": "servers", "server_ids": "999999"}, "server_ids", "no server with id 999999"),
    ({"target": "elsewhere"}, "target", "choose all servers"),
    ({"kind": "silent", "intervals": "0"}, "intervals", "Input should be greater than 0"),
    ({"kind": "sometimes"}, "kind", "choose threshold or silent"),
    ({"name": "Taken"}, "name", "an alert rule named 'Taken' already exists"),
]


def test_bad_rule_input_is_shown_next_to_the_inputs(
    app: Flask, admin_token: str, b: Browser
) -> None:
    api = app.test_client()
    made = api.post(
        "/api/v1/fields",
        json={"measurement": "app", "name": "version", "type": "string"},
        headers=bearer(admin_token),
    )
    assert made.status_code == 201
    api_rule(api, admin_token, name="Taken")
    token = csrf(app, b)
    for changes, where, message in RULE_ERRORS:
        resp = b.post("/alerts/new", data={"csrf_token": token, **rule_form(**changes)})
        assert resp.status_code == 422, changes
        assert error_text(resp.text)[0].startswith("The rule was not saved"), changes
        shown = {k: v.replace("&#39;", "'") for k, v in field_errors(resp.text).items()}
        assert where in shown and shown[where].startswith(message), (changes, shown)
        # what was typed is kept
        name = changes.get("name", "High CPU")
        assert f'name="name" value="{name}"' in resp.text, changes
    # several problems at once are all shown
    resp = b.post(
        "/alerts/new",
        data={"csrf_token": token, **rule_form(name="", threshold="x", window="soon")},
    )
    assert resp.status_code == 422
    assert set(field_errors(resp.text)) == {"name", "threshold", "window"}
    assert set(api_rules(api, admin_token)) == {"Taken"}


def test_edit_a_rule(app: Flask, admin_token: str, b: Browser) -> None:
    api = app.test_client()
    web = register_server(api, admin_token, "web-01")
    rule = api_rule(api, admin_token, labels={"role": "web"}, duration="90s", severity="info")
    form = b.get(f"/alerts/{rule['id']}/edit")
    assert form.status_code == 200
    html = form.text
    assert "Edit the rule High CPU" in html
    assert '<option value="cpu.usage_percent" selected>' in html
    assert "<option selected>max</option>" in html and "<option selected>info</option>" in html
    assert 'name="threshold" value="90"' in html and 'name="window" value="1m"' in html
    assert 'name="duration" value="90s"' in html
    assert 'value="labels" checked' in html and ">role=web</textarea>" in html
    assert 'name="kind"' not in html  # the kind cannot change
    resp = post(
        b,
        app,
        f"/alerts/{rule['id']}/edit",
        **rule_form(
            name="Busy CPU",
            threshold="95.5",
            condition=">=",
            target="servers",
            server_ids=[str(web["id"])],
            severity="warning",
            enabled="",
        ),
    )
    assert resp.status_code == 302 and resp.headers["Location"] == "/alerts"
    assert flashes(b.get("/alerts").text) == ["rule Busy CPU saved"]
    got = api_rules(api, admin_token)["Busy CPU"]
    assert got["expression"] == "max(cpu.usage_percent) over 1m >= 95.5"
    assert (got["server_ids"], got["labels"]) == ([web["id"]], {})
    assert (got["severity"], got["enabled"], got["duration"]) == ("warning", False, 0)
    # back to every server
    resp = post(b, app, f"/alerts/{rule['id']}/edit", **rule_form(name="Busy CPU"))
    assert resp.status_code == 302
    got = api_rules(api, admin_token)["Busy CPU"]
    assert (got["server_ids"], got["labels"], got["enabled"]) == (None, {}, True)


def test_edit_errors_keep_the_rule_unchanged(app: Flask, admin_token: str, b: Browser) -> None:
    api = app.test_client()
    rule = api_rule(api, admin_token)
    api_rule(api, admin_token, name="Other")
    for changes, where, message in [
        ({"threshold": "x"}, "threshold", "threshold must be a number"),
        ({"name": "Other"}, "name", "an alert rule named "),
        ({"field": "app.nope"}, "field", "app.nope is not a configured field"),
    ]:
        resp = post(b, app, f"/alerts/{rule['id']}/edit", **rule_form(**changes))
        assert resp.status_code == 422, changes
        shown = field_errors(resp.text)
        assert shown[where].replace("&#39;", "'").startswith(message), shown
        assert "Edit the rule High CPU" in resp.text
    assert api_rules(api, admin_token)["High CPU"] == rule
    assert b.get("/alerts/999999/edit").status_code == 404
    assert post(b, app, "/alerts/999999/edit", **rule_form()).status_code == 404


def test_renaming_to_a_taken_name_names_the_taken_name(
    app: Flask, admin_token: str, b: Browser
) -> None:
    api = app.test_client()
    rule = api_rule(api, admin_token)
    api_rule(api, admin_token, name="Other")
    resp = post(b, app, f"/alerts/{rule['id']}/edit", **rule_form(name="Other"))
    assert resp.status_code == 422
    assert field_errors(resp.text)["name"] == "an alert rule named &#39;Other&#39; already exists"


def test_edit_a_silent_rule(app: Flask, admin_token: str, b: Browser) -> None:
    api = app.test_client()
    rule = api_rule(
        api,
        admin_token,
        name="Quiet",
        kind="silent",
        measurement=None,
        field=None,
        aggregation=None,
        window=None,
        condition=None,
        threshold=None,
    )
    html = b.get(f"/alerts/{rule['id']}/edit").text
    assert 'data-kind="silent"' in html and 'name="intervals" value="3"' in html
    resp = post(b, app, f"/alerts/{rule['id']}/edit", **rule_form(name="Quiet", intervals="5"))
    assert resp.status_code == 302
    got = api_rules(api, admin_token)["Quiet"]
    assert (got["kind"], got["intervals"], got["threshold"]) == ("silent", 5, None)


def test_disable_enable_and_delete_a_rule(app: Flask, admin_token: str, b: Browser) -> None:
    api = app.test_client()
    rule = api_rule(api, admin_token)
    path = f"/alerts/{rule['id']}"
    resp = post(b, app, f"{path}/toggle")
    assert resp.status_code == 302 and resp.headers["Location"] == "/alerts"
    page = b.get("/alerts").text
    assert flashes(page) == ["rule High CPU disabled"]
    assert api_rules(api, admin_token)["High CPU"]["enabled"] is False
    assert '<button type="submit" class="small">Enable</button>' in rule_row(page, rule["id"])
    post(b, app, f"{path}/toggle")
    assert api_rules(api, admin_token)["High CPU"]["enabled"] is True
    assert flashes(b.get("/alerts").text) == ["rule High CPU enabled"]
    # the delete button opens a dialog whose form does the deletion
    page = b.get("/alerts").text
    assert f'data-dialog="dlg-delete-rule-{rule["id"]}"' in page
    dialog = re.search(rf'<dialog id="dlg-delete-rule-{rule["id"]}">(.*?)</dialog>', page, re.S)
    assert dialog and f'action="{path}/delete"' in dialog.group(1)
    resp = post(b, app, f"{path}/delete")
    assert resp.status_code == 302 and resp.headers["Location"] == "/alerts"
    assert flashes(b.get("/alerts").text) == ["rule High CPU deleted"]
    assert api_rules(api, admin_token) == {}
    for action in ("toggle", "delete"):
        assert post(b, app, f"{path}/{action}").status_code == 404


def test_alert_forms_need_the_csrf_token(app: Flask, admin_token: str, b: Browser) -> None:
    api = app.test_client()
    rule = api_rule(api, admin_token)
    srv = register_server(api, admin_token)
    silence = api.post(
        "/api/v1/alerts/silences",
        json={"server_id": srv["id"], "duration": "1h"},
        headers=bearer(admin_token),
    ).get_json()
    attempts: list[tuple[str, dict[str, str | list[str]]]] = [
        ("/alerts/new", rule_form(name="Sneaky")),
        (f"/alerts/{rule['id']}/edit", rule_form(name="Renamed")),
        (f"/alerts/{rule['id']}/toggle", {}),
        (f"/alerts/{rule['id']}/delete", {}),
        ("/alerts/silences", {"server_id": str(srv["id"]), "duration": "1h"}),
        (f"/alerts/silences/{silence['id']}/end", {}),
    ]
    for path, form in attempts:
        for token in (None, "wrong-token-" + "x" * 40):
            data = form if token is None else {**form, "csrf_token": token}
            resp = b.post(path, data=data)
            assert resp.status_code == 400, (path, token)
    rules = api_rules(api, admin_token)
    assert set(rules) == {"High CPU"} and rules["High CPU"]["enabled"] is True
    assert [s["id"] for s in api_silences(api, admin_token)] == [silence["id"]]


# ---- firing alerts on the pages --------------------------------------------------------------


def test_a_firing_alert_shows_everywhere_and_a_resolved_one_nowhere(
    app: Flask, admin_token: str, b: Browser
) -> None:
    api = app.test_client()
    web = register_server(api, admin_token, "web-01")
    db1 = register_server(api, admin_token, "db-01", "192.0.2.11")
    rule = api_rule(api, admin_token)
    t = time.time() - 600
    push_cpu(api, web["api_key"], 95.0, t)
    push_cpu(api, db1["api_key"], 10.0, t)
    evaluate(app, t + 5)

    fired = f"{rule['id']}-{web['id']}"
    overview = b.get("/").text
    assert shown_alerts(overview, "firing-alerts") == {fired: "firing"}
    row = alert_row(overview, rule["id"], web["id"])
    assert f'<a class="alert-host" href="/servers/{web["id"]}">web-01</a>' in row
    assert "95.0 %" in row and '<span class="severity warning">' in row
    assert "<code>max(cpu.usage_percent) over 1m &gt; 90</code>" in row
    assert "1 firing" in overview and "No alert is firing." not in overview
    assert nav_badge(overview) == 1
    # the fleet table stays where it was, below the panel
    assert overview.index('id="firing-alerts"') < overview.index('id="fleet"')

    server_page = b.get(f"/servers/{web['id']}").text
    assert shown_alerts(server_page, "server-alerts") == {fired: "firing"}
    assert "alert-host" not in server_page  # its own page: no server column
    assert nav_badge(server_page) == 1
    quiet = b.get(f"/servers/{db1['id']}").text
    assert shown_alerts(quiet, "server-alerts") == {}
    assert "No alert is firing or pending for db-01." in quiet

    alerts = b.get("/alerts").text
    assert shown_alerts(alerts, "alerts-now") == {fired: "firing"}
    assert '<span class="state firing">1 firing</span>' in rule_row(alerts, rule["id"])
    history = re.findall(
        r'<span class="state (\w+)">\w+</span> → <span class="state (\w+)">', alerts
    )
    assert history == [("pending", "firing"), ("ok", "pending")]  # newest first

    # the value falls: the alert resolves, and no page shows it any more
    push_cpu(api, web["api_key"], 5.0, t + 120)
    evaluate(app, t + 125)
    overview = b.get("/").text
    assert 'id="firing-alerts"' not in overview and "No alert is firing." in overview
    assert nav_badge(overview) is None
    assert shown_alerts(b.get(f"/servers/{web['id']}").text) == {}
    alerts = b.get("/alerts").text
    assert shown_alerts(alerts) == {}
    assert "No alert is firing or pending." in alerts
    assert '<td data-label="Now" class="counts-now">\u2013</td>' in rule_row(alerts, rule["id"])
    assert re.findall(r'<span class="state (\w+)">\w+</span> → <span class="state (\w+)">', alerts)[
        0
    ] == ("firing", "resolved")


def test_pending_alerts_are_shown_but_not_counted_as_firing(
    app: Flask, admin_token: str, b: Browser
) -> None:
    api = app.test_client()
    web = register_server(api, admin_token, "web-01")
    db1 = register_server(api, admin_token, "db-01", "192.0.2.11")
    slow = api_rule(api, admin_token, name="Slow", duration="5m")
    fast = api_rule(api, admin_token, name="Fast", severity="critical")
    t = time.time() - 600
    push_cpu(api, web["api_key"], 95.0, t)
    push_cpu(api, db1["api_key"], 99.0, t)
    evaluate(app, t + 5)
    overview = b.get("/").text
    assert shown_alerts(overview, "firing-alerts") == {
        f"{fast['id']}-{web['id']}": "firing",
        f"{fast['id']}-{db1['id']}": "firing",
        f"{slow['id']}-{web['id']}": "pending",
        f"{slow['id']}-{db1['id']}": "pending",
    }
    # firing first
    states = re.findall(r'<tr data-alert="\d+-\d+" data-state="(\w+)">', overview)
    assert states == ["firing", "firing", "pending", "pending"]
    assert "2 firing, 2 pending" in overview
    assert nav_badge(overview) == 2
    assert "99.0 %" in alert_row(overview, fast["id"], db1["id"])
    alerts = b.get("/alerts").text
    row = rule_row(alerts, slow["id"])
    assert '<span class="state pending">2 pending</span>' in row and "firing" not in row


def test_a_silent_rules_value_is_shown_in_seconds(app: Flask, admin_token: str, b: Browser) -> None:
    api = app.test_client()
    web = register_server(api, admin_token, "web-01", interval=30)
    rule = api_rule(
        api,
        admin_token,
        name="Quiet",
        kind="silent",
        measurement=None,
        field=None,
        aggregation=None,
        window=None,
        condition=None,
        threshold=None,
    )
    evaluate(app, time.time() + 3600)  # an hour after its registration, without a push
    row = alert_row(b.get(f"/servers/{web['id']}").text, rule["id"], web["id"])
    assert re.search(r'class="metric">(59m \d+s|1h 0m)', row), row
    assert "no push for 3 intervals" in row


# ---- silences --------------------------------------------------------------------------------


def test_silence_a_server_from_its_page_and_end_it(
    app: Flask, admin_token: str, b: Browser
) -> None:
    api = app.test_client()
    web = register_server(api, admin_token, "web-01")
    rule = api_rule(api, admin_token)
    t = time.time() - 600
    push_cpu(api, web["api_key"], 95.0, t)
    evaluate(app, t + 5)
    page = b.get(f"/servers/{web['id']}").text
    form = re.search(r'<form class="form inline silence-server"(.*?)</form>', page, re.S)
    assert form and 'action="/alerts/silences"' in form.group(1)
    assert f'name="server_id" value="{web["id"]}"' in form.group(1)
    options = re.findall(r'<option value="(\w+)">', form.group(1))
    assert options == ["1h", "4h", "24h", "7d"]
    assert "silenced</span>" not in alert_row(page, rule["id"], web["id"])

    before = time.time()
    resp = post(
        b,
        app,
        "/alerts/silences",
        server_id=str(web["id"]),
        duration="4h",
        comment="kernel update",
        next=f"/servers/{web['id']}",
    )
    assert resp.status_code == 302 and resp.headers["Location"] == f"/servers/{web['id']}"
    [silence] = api_silences(api, admin_token)
    assert (silence["server_id"], silence["rule_id"]) == (web["id"], None)
    assert silence["comment"] == "kernel update"
    assert silence["created_by"] == "dashboard user alice"
    ends = datetime.fromisoformat(silence["ends_at"]).timestamp()
    assert before + 4 * 3600 - 1 <= ends <= time.time() + 4 * 3600 + 1
    page = b.get(f"/servers/{web['id']}").text
    assert flashes(page)[0].startswith("server web-01 silenced until ")
    assert '<span class="badge silenced"' in alert_row(page, rule["id"], web["id"])
    line = re.search(
        rf'<form class="silence-line"[^>]*data-silence="{silence["id"]}">(.*?)</form>', page, re.S
    )
    assert line and "every rule until" in line.group(1) and "(kernel update)" in line.group(1)
    assert "silenced</span>" in alert_row(b.get("/").text, rule["id"], web["id"])
    alerts = b.get("/alerts").text
    row = re.search(rf'<tr data-silence="{silence["id"]}">(.*?)</tr>', alerts, re.S)
    assert row and "server web-01" in row.group(1) and "kernel update" in row.group(1)

    resp = post(b, app, f"/alerts/silences/{silence['id']}/end", next=f"/servers/{web['id']}")
    assert resp.status_code == 302 and resp.headers["Location"] == f"/servers/{web['id']}"
    page = b.get(f"/servers/{web['id']}").text
    assert flashes(page) == ["silence ended"]
    assert "silence-line" not in page
    assert "silenced</span>" not in alert_row(page, rule["id"], web["id"])
    assert api_silences(api, admin_token) == []
    assert post(b, app, "/alerts/silences/999999/end").status_code == 404


def test_silence_a_rule_until_a_time(app: Flask, admin_token: str, b: Browser) -> None:
    api = app.test_client()
    rule = api_rule(api, admin_token)
    web = register_server(api, admin_token, "web-01")
    until = (datetime.now(UTC) + timedelta(days=2)).replace(second=0, microsecond=0)
    resp = post(
        b,
        app,
        "/alerts/silences",
        rule_id=str(rule["id"]),
        server_id=str(web["id"]),
        duration="until",
        ends_at=until.strftime("%Y-%m-%dT%H:%M"),
        comment="",
    )
    assert resp.status_code == 302 and resp.headers["Location"] == "/alerts"
    page = b.get("/alerts").text
    assert flashes(page) == [
        f"rule High CPU on server web-01 silenced until {until:%Y-%m-%d %H:%M} UTC"
    ]
    [silence] = api_silences(api, admin_token)
    assert (silence["rule_id"], silence["server_id"]) == (rule["id"], web["id"])
    assert datetime.fromisoformat(silence["ends_at"]) == until
    # the server's page lists it too, as a silence of one rule
    line = re.search(
        r'<form class="silence-line"[^>]*>(.*?)</form>', b.get(f"/servers/{web['id']}").text, re.S
    )
    assert line and "the rule High CPU until" in line.group(1)
    # ``next`` leads back to a page of this site only
    resp = post(
        b, app, "/alerts/silences", rule_id=str(rule["id"]), duration="7d", next="//evil.example"
    )
    assert resp.status_code == 302 and resp.headers["Location"] == "/"
    assert len(api_silences(api, admin_token)) == 2


SILENCE_ERRORS: list[tuple[dict[str, str], str, str]] = [
    ({"duration": "until"}, "ends_at", "enter the time the silence ends"),
    ({"duration": "until", "ends_at": "tomorrow"}, "ends_at", "'tomorrow' is not a date"),
    (
        {"duration": "until", "ends_at": "2001-01-01T00:00"},
        "ends_at",
        "2001-01-01T00:00:00+00:00 is in the past",
    ),
    ({"duration": "1y"}, "duration", "choose one of 1h, 4h, 24h, 7d or an end time"),
    ({"server_id": "web"}, "server_id", "choose a server from the list"),
    ({"server_id": "999999"}, "server_id", "server 999999 not found"),
    ({"rule_id": "999999", "server_id": ""}, "rule_id", "alert rule 999999 not found"),
    ({"comment": "x" * 2001}, "comment", "String should have at most 2000 characters"),
]


def test_bad_silence_input_is_shown_next_to_the_inputs(
    app: Flask, admin_token: str, b: Browser
) -> None:
    api = app.test_client()
    web = register_server(api, admin_token, "web-01")
    token = csrf(app, b)
    for changes, where, message in SILENCE_ERRORS:
        form = {"server_id": str(web["id"]), "duration": "1h", "comment": "c", **changes}
        resp = b.post("/alerts/silences", data={"csrf_token": token, **form})
        assert resp.status_code == 422, changes
        assert error_text(resp.text)[0].startswith("The silence was not added"), changes
        shown = {k: v.replace("&#39;", "'") for k, v in field_errors(resp.text).items()}
        assert where in shown and shown[where].startswith(message), (changes, shown)
        assert "<title>Alerts · monapi</title>" in resp.text
    # neither a rule nor a server: the message is the form's
    resp = b.post(
        "/alerts/silences",
        data={"csrf_token": token, "rule_id": "", "server_id": "", "duration": "1h"},
    )
    assert resp.status_code == 422
    assert "a silence needs rule_id, server_id or both" in error_text(resp.text)[0]
    assert api_silences(api, admin_token) == []


# ---- failed notifications --------------------------------------------------------------------


def test_failed_notifications_are_listed_with_their_error(tmp_path: Path) -> None:
    """(On SQLite only: the listing does not depend on the store.)"""
    with WebhookReceiver(status=500, body=b"receiver is down") as hook:
        app, token = make_app(
            tmp_path / "data", alert_webhook_url=hook.url, alert_notify_max_attempts=1
        )
        b = signed_in(app)
        api = app.test_client()
        web = register_server(api, token, "web-01")
        api_rule(api, token)
        assert 'id="failed-notifications"' not in b.get("/alerts").text
        t = time.time() - 600
        push_cpu(api, web["api_key"], 95.0, t)
        evaluate(app, t + 5)
        assert evaluator_for(app).deliver() == 0
        hook.wait_for(1)
    page = b.get("/alerts").text
    section = re.search(
        r'<section class="card" id="failed-notifications">(.*?)</section>', page, re.S
    )
    assert section, page
    rows = re.findall(r"<tr data-notification=\"\d+\">(.*?)</tr>", section.group(1), re.S)
    assert len(rows) == 1
    assert '<td data-label="Channel">webhook</td>' in rows[0]
    assert '<td data-label="Event">firing</td>' in rows[0]
    assert '<td data-label="Attempts">1</td>' in rows[0]
    assert "High CPU on web-01" in rows[0]
    error = re.search(r'class="last-error"><code>(.*?)</code>', rows[0], re.S)
    assert error and "500" in error.group(1)


def test_the_nav_badge_does_not_break_an_error_page(app: Flask, b: Browser) -> None:
    resp = b.get("/servers/424242")
    assert resp.status_code == 404
    assert error_text(resp.text) == ["server 424242 not found"]
    assert '<a href="/alerts" >Alerts</a>' in resp.text
