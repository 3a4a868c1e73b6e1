"""Alert rules evaluated on every time-series backend with a clock the test controls: values
pushed through the API move a rule through pending, firing and resolved at the right moments."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from monapi.alerting.evaluate import Evaluator, Report
from monapi.alerting.runner import evaluator_for, runner_for
from monapi.models import AlertEvent, AlertState, Notification

from .conftest import TSDB_BACKENDS, backend_app, bearer, make_app, push, register_server


class Clock:
    """The evaluator's time, moved by the test."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass
class Setup:
    app: Flask
    client: FlaskClient
    token: str
    sync: Callable[[], None] = lambda: None
    clock: Clock = field(default_factory=lambda: Clock(time.time()))

    def evaluator(self) -> Evaluator:
        return evaluator_for(self.app, clock=self.clock)

    def at(self, t: float) -> Report:
        """Evaluate once at time ``t``."""
        self.clock.t = t
        self.sync()
        return self.evaluator().evaluate()

    def rule(self, **body: Any) -> dict[str, Any]:
        resp = self.client.post("/api/v1/alerts", json=body, headers=bearer(self.token))
        assert resp.status_code == 201, resp.get_json()
        rule: dict[str, Any] = resp.get_json()
        return rule

    def push(
        self,
        key: str,
        measurement: str,
        ts: float,
        tags: dict[str, str] | None = None,
        **fields: Any,
    ) -> None:
        point: dict[str, Any] = {"measurement": measurement, "timestamp": ts, "fields": fields}
        if tags:
            point["tags"] = tags
        resp = push(self.client, key, {"points": [point]})
        assert resp.status_code in (200, 204), resp.get_json()

    def states(self, **query: Any) -> list[dict[str, Any]]:
        query.setdefault("state", ["ok", "pending", "firing", "resolved"])
        resp = self.client.get(
            "/api/v1/alerts/states", query_string=query, headers=bearer(self.token)
        )
        assert resp.status_code == 200, resp.get_json()
        items: list[dict[str, Any]] = resp.get_json()["items"]
        return items

    def state(self, rule_id: int, server_id: int) -> str | None:
        found = [s for s in self.states(rule_id=rule_id) if s["server_id"] == server_id]
        return found[0]["state"] if found else None

    def events(self, rule_id: int) -> list[tuple[str, str, float]]:
        """(from, to, at) of the rule's history, oldest first."""
        db = self.app.extensions["monapi.db"]
        with db.session() as s:
            rows = s.execute(
                select(AlertEvent).where(AlertEvent.rule_id == rule_id).order_by(AlertEvent.id)
            ).scalars()
            return [(e.from_state, e.to_state, e.at) for e in rows]


@pytest.fixture(params=TSDB_BACKENDS)
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Setup:
    app, token, sync = backend_app(request, tmp_path / "data", request.param)
    return Setup(app, app.test_client(), token, sync)


def base_time() -> float:
    """A whole minute about an hour ago: pushed timestamps must be in the accepted past."""
    return float(math.floor(time.time() / 60) * 60 - 3600)


def test_threshold_rule_goes_pending_firing_resolved_at_the_right_moments(setup: Setup) -> None:
    t0 = base_time()
    srv = register_server(setup.client, setup.token)
    key, sid = srv["api_key"], srv["id"]
    rule = setup.rule(
        name="High CPU",
        measurement="cpu",
        field="usage_percent",
        aggregation="mean",
        window="1m",
        condition=">",
        threshold=90,
        duration="30s",
        severity="critical",
    )
    # 50 % for a minute, 95 % for two, then 20 %: one point every 10 s.
    for i in range(31):
        value = 50.0 if i < 6 else 95.0 if i < 18 else 20.0
        setup.push(key, "cpu", t0 + 10 * i, usage_percent=value)
    rid = rule["id"]

    setup.at(t0 + 55)  # (t0-5, t0+55]: all 50
    assert setup.state(rid, sid) is None
    setup.at(t0 + 90)  # (30, 90]: 50, 50, 95 x4: mean 80
    assert setup.state(rid, sid) is None
    setup.at(t0 + 110)  # (50, 110]: 95 x6
    assert setup.state(rid, sid) == "pending"
    [pending] = setup.states(rule_id=rid)
    assert pending["value"] == 95.0
    setup.at(t0 + 139)  # held 29 s of the 30 s
    assert setup.state(rid, sid) == "pending"
    setup.at(t0 + 140)
    assert setup.state(rid, sid) == "firing"
    setup.at(t0 + 170)  # (110, 170]: still 95
    assert setup.state(rid, sid) == "firing"
    setup.at(t0 + 200)  # (140, 200]: 95 x3 and 20 x3: mean 57.5
    [resolved] = setup.states(rule_id=rid)
    assert resolved["state"] == "resolved"
    assert resolved["value"] == pytest.approx(57.5)
    assert setup.events(rid) == [
        ("ok", "pending", t0 + 110),
        ("pending", "firing", t0 + 140),
        ("firing", "resolved", t0 + 200),
    ]
    rules = setup.client.get("/api/v1/alerts", headers=bearer(setup.token)).get_json()
    assert rules["items"][0]["firing"] == 0


def test_pending_that_stops_holding_goes_back_to_ok_without_firing(setup: Setup) -> None:
    t0 = base_time()
    srv = register_server(setup.client, setup.token)
    rule = setup.rule(
        name="Load",
        measurement="system",
        field="load1",
        aggregation="max",
        window="30s",
        condition=">=",
        threshold=4,
        duration="1m",
    )
    for i, v in enumerate([1.0, 5.0, 6.0, 1.0, 1.0, 1.0, 1.0]):
        setup.push(srv["api_key"], "system", t0 + 10 * i, load1=v)
    setup.at(t0 + 15)  # (t0-15, t0+15]: max 5
    assert setup.state(rule["id"], srv["id"]) == "pending"
    setup.at(t0 + 60)  # (30, 60]: max 1
    assert setup.state(rule["id"], srv["id"]) == "ok"
    assert [e[:2] for e in setup.events(rule["id"])] == [("ok", "pending"), ("pending", "ok")]


def test_zero_duration_fires_at_once_and_any_series_may_hold(setup: Setup) -> None:
    """A disk rule holds when any mount is past the line, and shows that mount's value."""
    t0 = base_time()
    srv = register_server(setup.client, setup.token)
    rule = setup.rule(
        name="Disk full",
        measurement="disk",
        field="used_percent",
        aggregation="last",
        window="5m",
        condition=">",
        threshold=90,
    )
    setup.push(srv["api_key"], "disk", t0, {"mount": "/"}, used_percent=40.0)
    setup.push(srv["api_key"], "disk", t0 + 1, {"mount": "/var"}, used_percent=97.5)
    setup.at(t0 + 60)
    [st] = setup.states(rule_id=rule["id"])
    assert st["state"] == "firing"
    assert st["value"] == 97.5
    assert st["series"] == {"mount": "/var"}
    assert [e[:2] for e in setup.events(rule["id"])] == [("ok", "pending"), ("pending", "firing")]


def test_tag_filter_limits_the_series_a_rule_watches(setup: Setup) -> None:
    t0 = base_time()
    srv = register_server(setup.client, setup.token)
    rule = setup.rule(
        name="Root full",
        measurement="disk",
        field="used_percent",
        aggregation="last",
        window="5m",
        condition=">",
        threshold=90,
        tags={"mount": "/"},
    )
    setup.push(srv["api_key"], "disk", t0, {"mount": "/"}, used_percent=40.0)
    setup.push(srv["api_key"], "disk", t0, {"mount": "/var"}, used_percent=97.5)
    setup.at(t0 + 60)
    assert setup.state(rule["id"], srv["id"]) is None


def test_targets_by_label_and_by_id(setup: Setup) -> None:
    t0 = base_time()
    web = register_server(setup.client, setup.token, "web-01", labels={"role": "web"})
    db = register_server(setup.client, setup.token, "db-01", "192.0.2.11", labels={"role": "db"})
    by_label = setup.rule(
        name="web cpu",
        measurement="cpu",
        field="usage_percent",
        window="1m",
        condition=">",
        threshold=90,
        labels={"role": "web"},
    )
    by_id = setup.rule(
        name="db cpu",
        measurement="cpu",
        field="usage_percent",
        window="1m",
        condition=">",
        threshold=90,
        server_ids=[db["id"]],
    )
    everyone = setup.rule(
        name="any cpu",
        measurement="cpu",
        field="usage_percent",
        window="1m",
        condition=">",
        threshold=90,
    )
    for srv in (web, db):
        setup.push(srv["api_key"], "cpu", t0, usage_percent=99.0)
    setup.at(t0 + 30)
    firing = {(s["rule_id"], s["server_id"]) for s in setup.states(state=["firing"])}
    assert firing == {
        (by_label["id"], web["id"]),
        (by_id["id"], db["id"]),
        (everyone["id"], web["id"]),
        (everyone["id"], db["id"]),
    }
    # A server that leaves the target set resolves, saying why.
    resp = setup.client.patch(
        f"/api/v1/servers/{web['id']}",
        json={"labels": {"role": "api"}},
        headers=bearer(setup.token),
    )
    assert resp.status_code == 200
    setup.at(t0 + 40)
    assert setup.state(by_label["id"], web["id"]) == "resolved"
    assert setup.state(everyone["id"], web["id"]) == "firing"
    history = setup.client.get(
        "/api/v1/alerts/history",
        query_string={"rule_id": by_label["id"]},
        headers=bearer(setup.token),
    ).get_json()["items"]
    assert history[0]["to_state"] == "resolved"
    assert history[0]["reason"] == "server no longer targeted"


def test_no_data_in_the_window_does_not_hold(setup: Setup) -> None:
    t0 = base_time()
    srv = register_server(setup.client, setup.token)
    rule = setup.rule(
        name="Low memory",
        measurement="mem",
        field="available",
        aggregation="min",
        window="1m",
        condition="<",
        threshold=1000,
    )
    setup.push(srv["api_key"], "mem", t0, available=10)
    setup.at(t0 + 30)
    assert setup.state(rule["id"], srv["id"]) == "firing"
    setup.at(t0 + 120)  # nothing in (60, 120]
    [st] = setup.states(rule_id=rule["id"])
    assert st["state"] == "resolved"
    assert st["value"] is None


def test_silent_rule_fires_after_n_intervals_without_a_push(setup: Setup) -> None:
    srv = register_server(setup.client, setup.token, interval=10)
    never = register_server(setup.client, setup.token, "new-01", "192.0.2.12", interval=10)
    rule = setup.rule(name="Quiet", kind="silent", intervals=3, severity="critical")
    setup.push(srv["api_key"], "cpu", time.time(), usage_percent=1.0)
    pushed = time.time()
    setup.at(pushed + 29)
    assert setup.state(rule["id"], srv["id"]) is None
    setup.at(pushed + 31.5)
    [st] = [s for s in setup.states(rule_id=rule["id"]) if s["server_id"] == srv["id"]]
    assert st["state"] == "firing"
    assert 31 <= st["value"] <= 33
    # A server that never pushed counts from its registration.
    assert setup.state(rule["id"], never["id"]) == "firing"
    setup.push(srv["api_key"], "cpu", time.time(), usage_percent=1.0)
    setup.at(time.time() + 1)
    assert setup.state(rule["id"], srv["id"]) == "resolved"


def test_disabled_rule_resolves_what_it_fired(setup: Setup) -> None:
    t0 = base_time()
    srv = register_server(setup.client, setup.token)
    rule = setup.rule(
        name="cpu",
        measurement="cpu",
        field="usage_percent",
        window="1m",
        condition=">",
        threshold=90,
    )
    setup.push(srv["api_key"], "cpu", t0, usage_percent=99.0)
    setup.at(t0 + 10)
    assert setup.state(rule["id"], srv["id"]) == "firing"
    resp = setup.client.patch(
        f"/api/v1/alerts/{rule['id']}", json={"enabled": False}, headers=bearer(setup.token)
    )
    assert resp.status_code == 200, resp.get_json()
    setup.at(t0 + 20)
    assert setup.state(rule["id"], srv["id"]) == "resolved"


# Two evaluators ----------------------------------------------------------------------------


CONFIG = ["sqlite", "postgresql"]


@pytest.fixture(params=CONFIG)
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Setup, Flask]]:
    """Two apps (two processes' worth) on one configuration store and one time-series file."""
    overrides: dict[str, Any] = {"alert_webhook_url": "http://127.0.0.1:9/hook"}
    url = None
    dbs = None
    if request.param == "postgresql":
        dbs = request.getfixturevalue("pg_databases")
        url = dbs.new()
        overrides["database_url"] = url
    app, token = make_app(tmp_path / "data", **overrides)
    other = engines_app(tmp_path / "data", overrides)
    yield Setup(app, app.test_client(), token), other
    if dbs is not None and url is not None:
        from monapi.app import shutdown

        from .conftest import _created

        while _created:  # before the database goes
            shutdown(_created.pop())
        dbs.drop(url)


def engines_app(data_dir: Path, overrides: dict[str, Any]) -> Flask:
    from monapi import create_app

    from .conftest import _created

    app = create_app(
        {
            "data_dir": data_dir,
            "log_level": "WARNING",
            "rate_limit_server": "0",
            **overrides,
            "TESTING": True,
        }
    )
    _created.append(app)
    return app


def notifications(app: Flask) -> list[tuple[str, int | None, str]]:
    db = app.extensions["monapi.db"]
    with db.session() as s:
        rows = s.execute(select(Notification).order_by(Notification.id)).scalars()
        return [(n.event, n.server_id, n.channel) for n in rows]


def test_two_evaluators_at_once_queue_each_notification_once(
    shared: tuple[Setup, Flask],
) -> None:
    """Even past the lease (two evaluators racing round after round), each transition is
    recorded once and so notified once."""
    import threading

    setup, other = shared
    t0 = base_time()
    servers = [
        register_server(setup.client, setup.token, f"web-{i:02d}", f"192.0.2.{10 + i}")
        for i in range(4)
    ]
    setup.rule(
        name="cpu",
        measurement="cpu",
        field="usage_percent",
        window="1m",
        condition=">",
        threshold=90,
    )
    for srv in servers:
        setup.push(srv["api_key"], "cpu", t0, usage_percent=99.0)
        setup.push(srv["api_key"], "cpu", t0 + 100, usage_percent=10.0)
    evaluators = [evaluator_for(setup.app), evaluator_for(other)]
    for t in (t0 + 10, t0 + 20, t0 + 110, t0 + 120):
        barrier = threading.Barrier(2)
        reports: list[Report] = []

        def run(
            ev: Evaluator,
            at: float = t,
            barrier: threading.Barrier = barrier,
            reports: list[Report] = reports,
        ) -> None:
            barrier.wait(timeout=10)
            reports.append(ev.evaluate(at))

        threads = [threading.Thread(target=run, args=(ev,)) for ev in evaluators]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=60)
        assert not any(r.errors for r in reports), reports
    got = notifications(setup.app)
    assert sorted(got) == sorted(
        [("firing", s["id"], "webhook") for s in servers]
        + [("resolved", s["id"], "webhook") for s in servers]
    )
    db = setup.app.extensions["monapi.db"]
    with db.session() as s:
        assert {st.state for st in s.execute(select(AlertState)).scalars()} == {"resolved"}
        assert s.execute(select(AlertEvent)).scalars().all().__len__() == 4 * 3


def test_one_runner_holds_the_lease_until_it_stops_or_lapses(
    shared: tuple[Setup, Flask],
) -> None:
    setup, other = shared
    clock = Clock(time.time())
    first = runner_for(setup.app, clock=clock, holder="first")
    second = runner_for(other, clock=clock, holder="second")
    assert first.run_once() is True
    assert second.run_once() is False
    assert first.run_once() is True  # renews
    clock.t += first.lease.ttl + 1  # the first holder went quiet: its lease lapses
    assert second.run_once() is True
    assert first.run_once() is False
    second.stop()  # hands the lease on at once
    assert first.run_once() is True
    assert first.lease.current() is not None
    assert first.lease.current()[0] == "first"  # type: ignore[index]
