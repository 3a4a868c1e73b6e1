"""The cache layer, in-process and on Redis: invalidation across workers and instances, shared
copies, last-seen tracking without a database write per push, and rate limits.

Two app objects on one configuration store stand for two gunicorn workers (or two monapi
instances): each has its own process-level caches, exactly as separate processes would.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event, text

from monapi import create_app
from monapi.cache_redis import RedisCoordinator

from .conftest import _created, bearer, make_app, push, register_server

CACHES = ["local", "redis"]


@dataclass
class Pair:
    """Two instances of monapi on one configuration store (and one Redis, if any)."""

    kind: str
    a: Flask
    b: Flask
    token: str
    settings: dict[str, Any]

    @property
    def ca(self) -> FlaskClient:
        return self.a.test_client()

    @property
    def cb(self) -> FlaskClient:
        return self.b.test_client()

    def another(self, **overrides: Any) -> Flask:
        app = create_app({**self.settings, **overrides, "TESTING": True})
        _created.append(app)
        return app


def cache_settings(request: pytest.FixtureRequest, kind: str) -> dict[str, Any]:
    if kind == "local":
        return {}
    url = request.getfixturevalue("redis_url")
    return {"redis_url": url, "redis_prefix": f"t{uuid.uuid4().hex[:10]}"}


@pytest.fixture(params=CACHES)
def make_pair(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., Pair]:
    kind: str = request.param

    def make(**overrides: Any) -> Pair:
        data = tmp_path / "d"
        settings = {
            "data_dir": data,
            "log_level": "WARNING",
            "rate_limit_server": "0",
            "rate_limit_register": "0",
            **cache_settings(request, kind),
            **overrides,
        }
        a, token = make_app(data, **settings)
        b = create_app({**settings, "TESTING": True})
        _created.append(b)
        return Pair(kind, a, b, token, settings)

    return make


def eventually(check: Callable[[], bool], within: float = 1.0) -> float:
    """Seconds until ``check()`` held; fails if it did not within ``within`` seconds."""
    t0 = time.monotonic()
    while True:
        if check():
            return time.monotonic() - t0
        if time.monotonic() - t0 > within:
            pytest.fail(f"not true within {within} s")
        time.sleep(0.02)


def sql_log(app: Flask) -> list[str]:
    """Every SQL statement the app's configuration store runs from now on."""
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(app.extensions["monapi.db"].engine, "before_cursor_execute", record)
    return statements


def test_readyz_names_the_cache(make_pair: Callable[..., Pair]) -> None:
    p = make_pair()
    checks = p.ca.get("/readyz").get_json()["checks"]
    assert checks["cache"] == {"backend": p.kind, "status": "ok"}


def test_a_rotated_key_stops_working_on_the_other_instance_within_a_second(
    make_pair: Callable[..., Pair],
) -> None:
    p = make_pair()
    s = register_server(p.ca, p.token)
    assert push(p.cb, s["api_key"], {"fields": {"load1": 1.0}}).status_code == 204  # b caches
    resp = p.ca.post(f"/api/v1/servers/{s['id']}/rotate-key", headers=bearer(p.token))
    new_key = resp.get_json()["api_key"]
    eventually(lambda: push(p.cb, s["api_key"], {"fields": {"load1": 1.0}}).status_code == 401)
    assert push(p.cb, new_key, {"fields": {"load1": 1.0}}).status_code == 204


def test_a_revoked_enrollment_token_stops_working_on_the_other_instance_within_a_second(
    make_pair: Callable[..., Pair],
) -> None:
    p = make_pair()
    tok = p.ca.post("/api/v1/enrollment-tokens", json={}, headers=bearer(p.token)).get_json()
    register_server(p.cb, tok["token"], "one")  # b caches the token record
    p.ca.delete(f"/api/v1/enrollment-tokens/{tok['id']}", headers=bearer(p.token))

    def refused() -> bool:
        resp = p.cb.post(
            "/api/v1/servers",
            json={"hostname": f"h-{uuid.uuid4().hex[:6]}", "ip_address": "192.0.2.9"},
            headers=bearer(tok["token"]),
        )
        return resp.status_code == 401

    eventually(refused)


def test_a_disabled_field_is_refused_on_the_other_instance_within_a_second(
    make_pair: Callable[..., Pair],
) -> None:
    p = make_pair()
    key = register_server(p.ca, p.token)["api_key"]
    assert push(p.cb, key, {"fields": {"load5": 1.0}}).status_code == 204  # b caches fields
    fields = p.ca.get("/api/v1/fields?measurement=system", headers=bearer(p.token)).get_json()
    load5 = next(f for f in fields["items"] if f["name"] == "load5")
    p.ca.patch(f"/api/v1/fields/{load5['id']}", headers=bearer(p.token), json={"enabled": False})
    eventually(lambda: push(p.cb, key, {"fields": {"load5": 1.0}}).status_code == 422)


def test_with_redis_the_other_instance_reads_key_records_from_redis_not_the_database(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    settings = {"data_dir": tmp_path / "d", **cache_settings(request, "redis")}
    a, token = make_app(tmp_path / "d", **settings)
    b = create_app({**settings, "log_level": "WARNING", "TESTING": True})
    _created.append(b)
    key = register_server(a.test_client(), token)["api_key"]
    assert push(a.test_client(), key, {"fields": {"load1": 1.0}}).status_code == 204
    statements = sql_log(b)
    assert push(b.test_client(), key, {"fields": {"load1": 2.0}}).status_code == 204
    touched = " ".join(statements).lower()
    assert "api_keys" not in touched and "field_config" not in touched, statements
    r = redis.Redis.from_url(settings["redis_url"])
    assert r.keys(f"{settings['redis_prefix']}:c:keys:*") and r.keys(
        f"{settings['redis_prefix']}:c:fields:*"
    )


def test_a_change_whose_announcement_was_lost_is_caught_by_reconciliation(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    settings = {"data_dir": tmp_path / "d", **cache_settings(request, "redis")}
    a, token = make_app(tmp_path / "d", **settings)
    coord = a.extensions["monapi.cache"]
    assert isinstance(coord, RedisCoordinator)
    coord.reconcile_s = 0.5
    c = a.test_client()
    key = register_server(c, token)["api_key"]
    assert push(c, key, {"fields": {"load1": 1.0}}).status_code == 204
    # Revoke behind Redis' back, as if Redis had been away at the commit.
    with a.extensions["monapi.db"].engine.begin() as conn:
        conn.execute(
            text("UPDATE api_keys SET revoked_at = CURRENT_TIMESTAMP WHERE kind = 'server'")
        )
        conn.execute(text("UPDATE state_versions SET version = version + 1 WHERE name = 'keys'"))
    eventually(lambda: push(c, key, {"fields": {"load1": 1.0}}).status_code == 401, within=2.0)


def test_a_push_does_not_write_the_database_and_last_seen_is_flushed_later(
    make_pair: Callable[..., Pair],
) -> None:
    p = make_pair(last_seen_flush="1h")  # nothing flushes on its own during the test
    s = register_server(p.ca, p.token)
    statements = sql_log(p.a)
    for i in range(20):
        assert push(p.ca, s["api_key"], {"fields": {"load1": float(i)}}).status_code == 204
    writes = [x for x in statements if x.lstrip().upper().startswith(("UPDATE", "INSERT"))]
    assert writes == []
    with p.a.app_context():
        assert p.a.extensions["monapi.cache"].flush_seen() == 1
    with p.a.extensions["monapi.db"].engine.connect() as conn:
        seen = conn.execute(text("SELECT last_seen FROM servers WHERE id = :i"), {"i": s["id"]})
        assert seen.scalar_one() is not None


def test_with_redis_every_instance_shows_the_same_status(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    settings = {
        "data_dir": tmp_path / "d",
        "last_seen_flush": "1h",
        **cache_settings(request, "redis"),
    }
    a, token = make_app(tmp_path / "d", **settings)
    b = create_app({**settings, "log_level": "WARNING", "TESTING": True})
    _created.append(b)
    s = register_server(a.test_client(), token)
    assert push(a.test_client(), s["api_key"], {"fields": {"load1": 1.0}}).status_code == 204

    def online_on_b() -> bool:
        body = b.test_client().get(f"/api/v1/servers/{s['id']}", headers=bearer(token))
        return bool(body.get_json()["status"] == "online")

    eventually(online_on_b, within=2.5)  # pushed to Redis every second, not written to SQL
    with a.extensions["monapi.db"].engine.connect() as conn:
        seen = conn.execute(text("SELECT last_seen FROM servers WHERE id = :i"), {"i": s["id"]})
        assert seen.scalar_one() is None


def test_the_server_key_rate_limit_answers_429_with_retry_after(
    make_pair: Callable[..., Pair],
) -> None:
    p = make_pair(rate_limit_server="3/minute")
    s1 = register_server(p.ca, p.token, "one")
    s2 = register_server(p.ca, p.token, "two")
    for _ in range(3):
        assert push(p.ca, s1["api_key"], {"fields": {"load1": 1.0}}).status_code == 204
    resp = push(p.ca, s1["api_key"], {"fields": {"load1": 1.0}})
    assert resp.status_code == 429
    body = resp.get_json()
    assert body["code"] == "rate_limited" and "3 per 60 s" in body["error"]
    assert 1 <= int(resp.headers["Retry-After"]) <= 20  # one request every 20 s
    assert push(p.ca, s2["api_key"], {"fields": {"load1": 1.0}}).status_code == 204
    assert p.ca.get("/api/v1/servers", headers=bearer(p.token)).status_code == 200  # admin
    # Shared across instances with Redis; per process without it.
    other = push(p.cb, s1["api_key"], {"fields": {"load1": 1.0}}).status_code
    assert other == (429 if p.kind == "redis" else 204)


def test_registration_is_limited_per_client_address_even_with_bad_tokens(
    make_pair: Callable[..., Pair],
) -> None:
    p = make_pair(rate_limit_register="2/hour")
    body = {"hostname": "x", "ip_address": "192.0.2.1"}
    here = {"REMOTE_ADDR": "198.51.100.7"}
    bad = bearer("mke_0123456789abcdef_" + "A" * 43)
    assert (
        p.ca.post("/api/v1/servers", json=body, headers=bad, environ_base=here).status_code == 401
    )
    assert (
        p.ca.post(
            "/api/v1/servers", json=body, headers=bearer(p.token), environ_base=here
        ).status_code
        == 201
    )
    resp = p.ca.post("/api/register_server", json=body, headers=bearer(p.token), environ_base=here)
    assert resp.status_code == 429 and int(resp.headers["Retry-After"]) > 0
    assert "198.51.100.7" in resp.get_json()["error"]
    elsewhere = {"REMOTE_ADDR": "198.51.100.8"}
    body2 = {"hostname": "y", "ip_address": "192.0.2.2"}
    resp = p.ca.post("/api/v1/servers", json=body2, headers=bearer(p.token), environ_base=elsewhere)
    assert resp.status_code == 201


def test_behind_a_proxy_the_forwarded_address_is_the_one_limited(tmp_path: Path) -> None:
    app, token = make_app(tmp_path / "d", rate_limit_register="1/hour", proxy_hops=1)
    c = app.test_client()
    proxy = {"REMOTE_ADDR": "127.0.0.1"}

    def register(client_ip: str, host: str) -> int:
        return c.post(
            "/api/v1/servers",
            json={"hostname": host, "ip_address": "192.0.2.1"},
            headers={**bearer(token), "X-Forwarded-For": client_ip},
            environ_base=proxy,
        ).status_code

    assert register("203.0.113.1", "a") == 201
    assert register("203.0.113.2", "b") == 201  # another client behind the same proxy
    assert register("203.0.113.1", "c") == 429


def test_without_redis_answering_monapi_keeps_serving(tmp_path: Path) -> None:
    from .engines import free_port

    app, token = make_app(
        tmp_path / "d", redis_url=f"redis://127.0.0.1:{free_port()}/0", rate_limit_server="100/s"
    )
    c = app.test_client()
    s = register_server(c, token)
    assert push(c, s["api_key"], {"fields": {"load1": 1.0}}).status_code == 204
    resp = c.post(f"/api/v1/servers/{s['id']}/rotate-key", headers=bearer(token))
    assert resp.status_code == 200
    assert push(c, s["api_key"], {"fields": {"load1": 1.0}}).status_code == 401  # at once
    ready = c.get("/readyz")
    assert ready.status_code == 503
    assert ready.get_json()["details"][0]["location"] == "cache"
    assert "redis" in ready.get_json()["error"]


# The version hint (SQLite configuration store) ------------------------------------------------
def count_version_reads(app: Flask) -> list[int]:
    """Counts the database reads of the cache versions by this app's coordinator."""
    coord = app.extensions["monapi.cache"]
    reads = [0]
    real = coord._read_versions

    def counted() -> dict[str, int]:
        reads[0] += 1
        return dict(real())

    coord._read_versions = counted
    return reads


def test_steady_pushes_read_no_cache_versions_from_the_database(tmp_path: Path) -> None:
    app, token = make_app(tmp_path / "d", rate_limit_server="0")
    client = app.test_client()
    key = register_server(client, token)["api_key"]
    assert push(client, key, {"fields": {"load1": 1.0}}).status_code == 204
    reads = count_version_reads(app)
    for i in range(20):
        assert push(client, key, {"fields": {"load1": float(i)}}).status_code == 204
    assert reads[0] == 0
    assert app.extensions["monapi.cache"].hint is not None


def test_a_change_committed_by_another_process_is_seen_on_the_next_request(
    tmp_path: Path,
) -> None:
    """The CLI in a process of its own creates an enrollment token (a change of the key
    versions): the running app reads the versions again at once, not after a second."""
    import os
    import subprocess
    import sys

    data = tmp_path / "d"
    app, _ = make_app(data)
    coord = app.extensions["monapi.cache"]
    with app.app_context():
        before = coord.versions()
    reads = count_version_reads(app)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONAPI_")}
    env["MONAPI_DATA_DIR"] = str(data)
    out = subprocess.run(
        [sys.executable, "-m", "monapi.cli", "enroll", "create", "--name", "other"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.startswith("mke_")
    with app.app_context():
        after = coord.versions()
    assert reads[0] == 1
    assert after["keys"] == before["keys"] + 1
    # The new token works through this app at once.
    resp = app.test_client().post(
        "/api/v1/servers",
        json={"hostname": "new-1", "ip_address": "192.0.2.9"},
        headers={"Authorization": f"Bearer {out.stdout.strip()}"},
    )
    assert resp.status_code == 201, resp.get_json()


def test_a_rolled_back_change_does_not_move_the_hint(tmp_path: Path) -> None:
    app, _ = make_app(tmp_path / "d")
    coord = app.extensions["monapi.cache"]
    db = app.extensions["monapi.db"]
    before = coord.hint.read()
    with db.sessionmaker() as session:
        coord.bump(session, "fields")
        session.rollback()
    assert coord.hint.read() == before
    with db.sessionmaker() as session:
        coord.bump(session, "fields")
        session.commit()
    assert coord.hint.read() == before + 1


def test_a_change_that_did_not_raise_the_hint_is_seen_within_a_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that died between its commit and raising the hint delays the others by at
    most HINT_MAX_AGE_S."""
    import monapi.cache

    monkeypatch.setattr(monapi.cache, "HINT_MAX_AGE_S", 0.2)
    app, _ = make_app(tmp_path / "d")
    coord = app.extensions["monapi.cache"]
    with app.app_context():
        before = coord.versions()["fields"]
    with app.extensions["monapi.db"].engine.begin() as conn:
        conn.execute(text("UPDATE state_versions SET version = version + 1 WHERE name = 'fields'"))
    with app.app_context():
        assert coord.versions()["fields"] == before  # cached: the hint did not move
        eventually(lambda: coord.versions()["fields"] == before + 1, within=1.0)


def test_postgresql_and_redis_keep_reading_the_versions_themselves() -> None:
    from monapi.cache import LocalCoordinator, hint_path
    from monapi.db import Database

    pg = Database("postgresql://nobody@127.0.0.1:1/none")  # no connection is made
    assert hint_path(pg) is None
    assert LocalCoordinator(pg, 5.0).hint is None
    mem = Database("sqlite:///:memory:")
    assert hint_path(mem) is None


def test_a_redis_that_hangs_costs_a_request_at_most_one_timeout(tmp_path: Path) -> None:
    """A Redis that accepts connections and never answers (a black hole): the first request
    waits for one timeout (1 s), the next ones leave Redis alone for a second and answer at
    once; pushes are stored all along, limits counted in the process (the local fallback)."""
    import socket

    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)  # the kernel accepts; nobody ever reads or answers
    try:
        port = hole.getsockname()[1]
        app, token = make_app(
            tmp_path / "d", redis_url=f"redis://127.0.0.1:{port}/0", rate_limit_server="3/minute"
        )
        c = app.test_client()
        s = register_server(c, token)
        times, codes = [], []
        for _ in range(5):
            t0 = time.monotonic()
            codes.append(push(c, s["api_key"], {"fields": {"load1": 1.0}}).status_code)
            times.append(time.monotonic() - t0)
        assert codes == [204, 204, 204, 429, 429]  # counted in the process meanwhile
        assert sum(times) < 4.0, times  # not one 1 s timeout per call to Redis
        assert max(times[1:]) < 0.5 or times[0] < 0.5, times
        resp = c.get("/readyz")
        assert resp.status_code == 503 and resp.get_json()["details"][0]["location"] == "cache"
    finally:
        hole.close()


@pytest.mark.parametrize(("fallback", "sixth"), [("local", 429), ("open", 204), ("closed", 503)])
def test_rate_limits_without_redis_follow_the_fallback_setting(
    tmp_path: Path, fallback: str, sixth: int
) -> None:
    """MONAPI_RATE_LIMIT_FALLBACK with a Redis that refuses connections: local counts in the
    process, open lets everything through, closed answers 503 with Retry-After (nothing stored)."""
    from .engines import free_port

    app, token = make_app(
        tmp_path / "d",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        rate_limit_server="5/minute",
        rate_limit_fallback=fallback,
    )
    c = app.test_client()
    s = register_server(c, token)
    answers = [push(c, s["api_key"], {"fields": {"load1": float(i)}}) for i in range(6)]
    expected_first = 503 if fallback == "closed" else 204
    assert [a.status_code for a in answers[:5]] == [expected_first] * 5
    assert answers[5].status_code == sixth
    if sixth != 204:
        assert int(answers[5].headers["Retry-After"]) >= 1
    if fallback == "closed":
        body = answers[5].get_json()
        assert body["code"] == "store_unavailable" and "MONAPI_RATE_LIMIT_FALLBACK" in body["error"]
        latest = c.get(f"/api/v1/servers/{s['id']}/latest", headers=bearer(token)).get_json()
        assert not latest.get("values"), latest  # a 503 stored nothing
    # Admin requests have no rate limit: they are served in every mode.
    assert c.get("/api/v1/servers", headers=bearer(token)).status_code == 200


def test_shutting_down_a_redis_backed_app_logs_no_error(tmp_path: Path, redis_url: str) -> None:
    """The listener thread's pubsub is closed under it at shutdown: that is no failure, and
    must not log an ERROR with a traceback on every worker exit."""
    import logging

    from monapi.app import shutdown

    app, token = make_app(tmp_path / "d", redis_url=redis_url, redis_prefix=uuid.uuid4().hex)
    c = app.test_client()
    key = register_server(c, token)["api_key"]
    assert push(c, key, {"fields": {"load1": 1.0}}).status_code == 204
    coord = app.extensions["monapi.cache"]
    errors: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            errors.append(record)

    handler = Keep(level=logging.ERROR)
    logging.getLogger("monapi").addHandler(handler)
    try:
        _created.remove(app)
        shutdown(app)
        for t in coord._threads:
            t.join(timeout=5)
            assert not t.is_alive(), t.name
    finally:
        logging.getLogger("monapi").removeHandler(handler)
    assert [r.getMessage() for r in errors] == []


def test_versions_read_while_the_listener_catches_up_are_still_checked(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """After a Redis failure the next read of the versions is checked against the database.
    If the listener thread catches up (and marks the check done) while a request is reading
    the hash, what that request read predates the catch-up: it must be checked too, or the
    request keeps stale versions (a rotated key working again) until the next check."""
    settings = {"data_dir": tmp_path / "d", **cache_settings(request, "redis")}
    a, _ = make_app(tmp_path / "d", **settings)
    coord = a.extensions["monapi.cache"]
    assert isinstance(coord, RedisCoordinator)
    with a.app_context():
        before = coord.versions()
    # A change Redis did not hear of (it was away at the commit), then a failure noticed.
    with a.extensions["monapi.db"].engine.begin() as conn:
        conn.execute(text("UPDATE state_versions SET version = version + 1 WHERE name = 'keys'"))
    coord._reconciled_at, coord._snapshot_at = 0.0, 0.0
    real = coord._hgetall

    def read_then_listener_catches_up(key: str) -> dict[bytes, bytes]:
        raw = real(key)  # still the old versions
        coord._reconciled_at = time.monotonic()  # as _announce_missed() does meanwhile
        return raw

    coord._hgetall = read_then_listener_catches_up  # type: ignore[method-assign]
    with a.app_context():
        assert coord.versions()["keys"] == before["keys"] + 1
