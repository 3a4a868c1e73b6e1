"""Alert notifications end to end, on the embedded store and on InfluxDB: values pushed through
the API, rules evaluated with a clock the test controls, a webhook receiver and an SMTP server
started by the test."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from monapi.alerting.runner import AlertRunner, runner_for

from .conftest import backend_app, bearer, register_server
from .receivers import SmtpReceiver, WebhookReceiver, verify
from .test_alerts import Clock, Setup, base_time

SECRET = "whsec-" + "7f3a9c" * 6
BACKENDS = ["sqlite", "influxdb"]


class Rig(Setup):
    """A Setup whose app notifies ``hook`` and ``smtp``, with a runner on the test's clock."""

    hook: WebhookReceiver
    smtp: SmtpReceiver
    runner: AlertRunner

    def tick(self, t: float) -> None:
        """One runner round at ``t``: evaluate (when due) and deliver what is due."""
        self.clock.t = t
        self.runner.next_evaluation = 0.0  # every tick evaluates: the test says when
        assert self.runner.run_once() is True

    def notifications(self, **query: Any) -> list[dict[str, Any]]:
        resp = self.client.get(
            "/api/v1/alerts/notifications", query_string=query, headers=bearer(self.token)
        )
        assert resp.status_code == 200, resp.get_json()
        items: list[dict[str, Any]] = resp.get_json()["items"]
        return items


@pytest.fixture(params=BACKENDS)
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    with WebhookReceiver() as hook, SmtpReceiver() as smtp:
        app, token, _ = backend_app(
            request,
            tmp_path / "data",
            request.param,
            **smtp.settings(alert_email_to="ops@example.com, oncall@example.com"),
            alert_webhook_url=hook.url,
            alert_webhook_secret=SECRET,
            public_url="https://monapi.example",
        )
        r = Rig(app, app.test_client(), token, clock=Clock(base_time()))
        r.hook, r.smtp = hook, smtp
        r.runner = runner_for(app, clock=r.clock, holder="test")
        yield r


def cpu_rule(r: Rig, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "High CPU",
        "measurement": "cpu",
        "field": "usage_percent",
        "window": "1m",
        "condition": ">",
        "threshold": 90,
        "duration": "30s",
        "severity": "critical",
    }
    return r.rule(**{**body, **extra})


def test_one_firing_and_one_resolved_notification_by_webhook_and_email(rig: Rig) -> None:
    t0 = rig.clock.t
    srv = register_server(rig.client, rig.token, labels={"role": "web"})
    rule = cpu_rule(rig)
    for i in range(25):  # 95 % for two minutes, then 20 %
        rig.push(srv["api_key"], "cpu", t0 + 10 * i, usage_percent=95.0 if i < 12 else 20.0)
    # Every 5 s for four minutes: pending at 5 s, firing at 35 s, resolved once the minute's
    # mean drops under 90 (at 150 s), and nothing after.
    for t in range(5, 245, 5):
        rig.tick(t0 + t)
    requests = rig.hook.wait_for(2)
    assert [r.json["event"] for r in requests] == ["firing", "resolved"]
    for req in requests:
        assert verify(SECRET.encode(), req.body, req.headers["X-Monapi-Signature-256"])
        assert req.headers["X-Monapi-Event"] == req.json["event"]
    firing, resolved = (r.json for r in requests)
    assert firing["server"] == {
        "id": srv["id"],
        "hostname": "web-01",
        "ip_address": "192.0.2.10",
        "labels": {"role": "web"},
    }
    assert firing["rule"]["id"] == rule["id"] and firing["rule"]["name"] == "High CPU"
    assert firing["rule"]["expression"] == "mean(cpu.usage_percent) over 1m > 90"
    assert firing["severity"] == "critical"
    assert firing["value"] == 95.0
    assert firing["threshold"] == 90 and firing["condition"] == ">"
    assert firing["at"] == firing["started_at"]
    assert firing["url"] == f"https://monapi.example/servers/{srv['id']}"
    assert "High CPU on web-01" in firing["summary"]
    assert resolved["started_at"] == firing["started_at"]
    assert resolved["resolved_at"] == resolved["at"] and resolved["value"] < 90
    # The times are the clock's: pending at 5 s, firing 30 s later.
    from monapi.alerting.evaluate import iso

    assert firing["at"] == iso(t0 + 35)
    mails = rig.smtp.wait_for(2)
    assert len(mails) == 2
    subjects = [m.message["Subject"] for m in mails]
    assert subjects[0].startswith("[monapi] FIRING critical: High CPU on web-01")
    assert subjects[1].startswith("[monapi] RESOLVED")
    body = mails[0].message.get_content()
    assert "web-01" in body and "High CPU" in body and "95" in body and firing["at"] in body
    assert sorted(mails[0].rcpt_tos) == ["oncall@example.com", "ops@example.com"]
    sent = rig.notifications(status="sent")
    assert sorted((n["event"], n["channel"]) for n in sent) == [
        ("firing", "email"),
        ("firing", "webhook"),
        ("resolved", "email"),
        ("resolved", "webhook"),
    ]
    # Nothing more, however long it stays resolved.
    for t in range(245, 400, 30):
        rig.tick(t0 + t)
    assert len(rig.hook.requests) == 2 and len(rig.smtp.messages) == 2


def test_failed_deliveries_are_retried_with_backoff_then_marked_failed(rig: Rig) -> None:
    t0 = rig.clock.t
    srv = register_server(rig.client, rig.token)
    rig.rule(
        name="cpu",
        measurement="cpu",
        field="usage_percent",
        window="1m",
        condition=">",
        threshold=90,
    )
    rig.push(srv["api_key"], "cpu", t0, usage_percent=99.0)
    rig.hook.respond(503, times=2)
    rig.tick(t0 + 1)  # fires; first attempt: 503
    assert len(rig.hook.wait_for(1)) == 1
    [hook] = [n for n in rig.notifications() if n["channel"] == "webhook"]
    assert hook["status"] == "pending" and hook["attempts"] == 1
    assert "503" in hook["last_error"]
    rig.tick(t0 + 5.9)  # the first wait is 5 s: not yet
    assert len(rig.hook.requests) == 1
    rig.tick(t0 + 6)  # second attempt: 503 again; the next wait is 10 s
    rig.tick(t0 + 15.9)
    assert len(rig.hook.requests) == 2
    rig.tick(t0 + 16)
    requests = rig.hook.wait_for(3)
    assert len(requests) == 3
    # One notification, delivered on the third attempt: the same delivery id each time.
    assert len({r.headers["X-Monapi-Delivery"] for r in requests}) == 1
    [hook] = [n for n in rig.notifications() if n["channel"] == "webhook"]
    assert hook["status"] == "sent" and hook["attempts"] == 3 and hook["last_error"] == ""

    # A receiver that refuses for good (4xx): failed at once, with the reason to see.
    rig.hook.respond(410, times=1, body=b"gone")
    rig.push(srv["api_key"], "cpu", t0 + 100, usage_percent=10.0)
    rig.tick(t0 + 130)  # resolves
    [resolved] = [n for n in rig.notifications(status="failed") if n["channel"] == "webhook"]
    assert resolved["event"] == "resolved" and resolved["attempts"] == 1
    assert "410" in resolved["last_error"]


def test_silence_mutes_firing_until_it_ends(rig: Rig) -> None:
    # Silences end on wall time, so this test's clock and points are the present.
    now = time.time()
    srv = register_server(rig.client, rig.token)
    rule = cpu_rule(rig, duration=0)
    resp = rig.client.post(
        "/api/v1/alerts/silences",
        json={"server_id": srv["id"], "duration": "1h", "comment": "maintenance"},
        headers=bearer(rig.token),
    )
    assert resp.status_code == 201
    silence = resp.get_json()
    for i in range(12):
        rig.push(srv["api_key"], "cpu", now - 110 + 10 * i, usage_percent=99.0)
    rig.tick(now - 60)
    rig.tick(now)
    assert rig.state(rule["id"], srv["id"]) == "firing"
    assert rig.notifications() == []
    assert len(rig.hook.requests) == 0
    history = rig.client.get("/api/v1/alerts/history", headers=bearer(rig.token)).get_json()
    assert history["items"][0]["to_state"] == "firing" and history["items"][0]["silenced"]
    resp = rig.client.delete(f"/api/v1/alerts/silences/{silence['id']}", headers=bearer(rig.token))
    assert resp.status_code == 204
    rig.tick(time.time() + 0.01)  # still firing, no longer muted: announced now
    [req] = rig.hook.wait_for(1)
    assert req.json["event"] == "firing"


def test_fired_and_resolved_under_a_silence_sends_nothing(rig: Rig) -> None:
    t0 = rig.clock.t
    srv = register_server(rig.client, rig.token)
    rule = cpu_rule(rig, duration=0)
    resp = rig.client.post(
        "/api/v1/alerts/silences",
        json={"rule_id": rule["id"], "duration": "1h"},
        headers=bearer(rig.token),
    )
    assert resp.status_code == 201
    rig.push(srv["api_key"], "cpu", t0, usage_percent=99.0)
    rig.tick(t0 + 10)
    rig.tick(t0 + 120)
    assert rig.state(rule["id"], srv["id"]) == "resolved"
    assert rig.notifications() == [] and rig.hook.requests == []


def test_an_announced_alert_is_resolved_when_a_silence_starts_and_it_ends(rig: Rig) -> None:
    """A silence mutes new firings, never the resolution of one already announced: the
    receiver's incident must close."""
    t0 = rig.clock.t
    srv = register_server(rig.client, rig.token)
    rule = cpu_rule(rig, duration=0)
    rig.push(srv["api_key"], "cpu", t0, usage_percent=99.0)
    rig.tick(t0 + 10)
    rig.hook.wait_for(1)
    rig.client.post(
        "/api/v1/alerts/silences",
        json={"rule_id": rule["id"], "duration": "1h"},
        headers=bearer(rig.token),
    )
    rig.tick(t0 + 120)
    assert [r.json["event"] for r in rig.hook.wait_for(2)] == ["firing", "resolved"]


@pytest.mark.parametrize("what", ["rule", "server"])
def test_deleting_a_firing_rule_or_server_announces_the_resolution(rig: Rig, what: str) -> None:
    t0 = rig.clock.t
    srv = register_server(rig.client, rig.token)
    rule = cpu_rule(rig, duration=0)
    rig.push(srv["api_key"], "cpu", t0, usage_percent=99.0)
    rig.tick(t0 + 10)
    rig.hook.wait_for(1)
    path = f"/api/v1/alerts/{rule['id']}" if what == "rule" else f"/api/v1/servers/{srv['id']}"
    assert rig.client.delete(path, headers=bearer(rig.token)).status_code == 204
    rig.tick(time.time() + 0.01)  # queued at the wall time of the deletion
    requests = rig.hook.wait_for(2)
    assert [r.json["event"] for r in requests] == ["firing", "resolved"]
    assert requests[1].json["reason"] == f"{what} deleted"
    assert requests[1].json["server"]["hostname"] == "web-01"
