"""The alert evaluator in real `monapi serve` processes: every worker of every instance runs a
runner, one holds the lease, and a firing is announced once."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .receivers import WebhookReceiver, verify
from .test_serve import call, start_instance

SECRET = "served-secret-" + "q" * 20


@pytest.fixture(params=["sqlite", "postgresql+influxdb"])
def fleet(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[list[str], str, WebhookReceiver]]:
    """One instance on the embedded stores, or two instances sharing PostgreSQL and InfluxDB;
    two workers each, evaluating every second, notifying a webhook receiver."""
    with WebhookReceiver() as hook:
        env = {
            "MONAPI_ALERTS_INTERVAL": "1s",
            "MONAPI_ALERT_WEBHOOK_URL": hook.url,
            "MONAPI_ALERT_WEBHOOK_SECRET": SECRET,
        }
        count = 1
        dbs = url = None
        if request.param == "postgresql+influxdb":
            dbs = request.getfixturevalue("pg_databases")
            url = dbs.new()
            env |= {
                "MONAPI_DATABASE_URL": url,
                "MONAPI_TSDB": "influxdb",
                "MONAPI_INFLUXDB_URL": request.getfixturevalue("influxdb_url"),
                "MONAPI_INFLUXDB_DATABASE": f"t_{uuid.uuid4().hex[:12]}",
                "MONAPI_KEY_PEPPER": "test-pepper-" + "x" * 20,
                "MONAPI_SECRET_KEY": "test-secret-" + "y" * 20,
            }
            count = 2
        procs = []
        try:
            for i in range(count):
                data = tmp_path / f"serve{i}"
                data.mkdir()
                procs.append(start_instance(data, env))
            token = next(w for w in procs[0][2].read_text().split() if w.startswith("mka_"))
            yield [base for _, base, _ in procs], token, hook
        finally:
            for proc, _, _ in procs:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(30)
            if dbs is not None and url is not None:
                dbs.drop(url)


def ok(status_body: tuple[int, Any, dict[str, str]], want: int = 200) -> Any:
    status, body, _ = status_body
    assert status == want, body
    return body


def test_every_worker_runs_a_runner_and_one_notifies(
    fleet: tuple[list[str], str, WebhookReceiver],
) -> None:
    bases, token, hook = fleet
    base = bases[0]
    srv = ok(
        call(
            base,
            "POST",
            "/api/v1/servers",
            token,
            {"hostname": "web-01", "ip_address": "192.0.2.1"},
        ),
        201,
    )
    ok(
        call(
            bases[-1],
            "POST",
            "/api/v1/alerts",
            token,
            {
                "name": "High CPU",
                "measurement": "cpu",
                "field": "usage_percent",
                "aggregation": "max",
                "window": "3s",
                "condition": ">",
                "threshold": 90,
            },
        ),
        201,
    )

    def push(value: float) -> None:
        body = {"points": [{"measurement": "cpu", "fields": {"usage_percent": value}}]}
        ok(call(base, "POST", "/api/v1/data", srv["api_key"], body), 204)

    push(99.0)
    [firing] = hook.wait_for(1, timeout=30)
    assert firing.json["event"] == "firing"
    assert firing.json["server"]["hostname"] == "web-01"
    assert verify(SECRET.encode(), firing.body, firing.headers["X-Monapi-Signature-256"])
    # Values back under the line for longer than the window: one resolution.
    deadline = time.monotonic() + 30
    while len(hook.requests) < 2 and time.monotonic() < deadline:
        push(10.0)
        time.sleep(0.5)
    requests = hook.wait_for(2, timeout=5)
    assert [r.json["event"] for r in requests] == ["firing", "resolved"]
    # Several more rounds of every runner: nothing else is sent.
    time.sleep(4)
    assert len(hook.requests) == 2
    states = ok(call(base, "GET", "/api/v1/alerts/states?state=resolved", token))
    assert [s["state"] for s in states["items"]] == ["resolved"]
