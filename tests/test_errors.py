"""One JSON error shape from every route and status, with a request id in body, header and log."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, abort
from flask.testing import FlaskClient

from monapi.errors import StoreUnavailable

from .conftest import bearer, make_app, register_server

SHAPE = {"error", "code", "status", "request_id"}


@pytest.fixture
def app_with_faults(tmp_path: Path) -> Flask:
    app, token = make_app(tmp_path / "d")
    app.config["token"] = token

    @app.get("/boom")
    def boom() -> Any:
        raise RuntimeError("secret internals")

    @app.get("/slow-down")
    def slow_down() -> Any:
        abort(429)

    @app.get("/store-down")
    def store_down() -> Any:
        raise StoreUnavailable("time-series store: connection refused", retry_after=7)

    return app


def check_shape(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.data[:300]
    assert resp.mimetype == "application/json"
    body: dict[str, Any] = resp.get_json()
    assert set(body) >= SHAPE, body
    assert set(body) <= SHAPE | {"details", "accepted", "rejected", "dropped", "errors_truncated"}
    assert body["status"] == status
    assert isinstance(body["error"], str) and body["error"]
    assert body["request_id"] == resp.headers["X-Request-ID"]
    assert b"<html" not in resp.data.lower() and b"Traceback" not in resp.data
    return body


def test_every_status_has_the_one_shape(app_with_faults: Flask) -> None:
    client = app_with_faults.test_client()
    token = app_with_faults.config["token"]
    h = bearer(token)
    key = register_server(client, token)["api_key"]
    jh = {**bearer(key), "Content-Type": "application/json"}
    big = b"{" + b" " * (11 * 1024 * 1024) + b"}"
    cases = [
        (400, lambda: client.post("/api/v1/data", data=b"{", headers=jh)),
        (401, lambda: client.get("/api/v1/servers")),
        (403, lambda: client.get("/api/v1/servers", headers=bearer(key))),
        (404, lambda: client.get("/api/v1/servers/999", headers=h)),
        (404, lambda: client.get("/no/such/page")),
        (405, lambda: client.delete("/api/v1/overview", headers=h)),
        (
            409,
            lambda: client.post(
                "/api/v1/servers", headers=h, json={"hostname": "web-01", "ip_address": "192.0.2.1"}
            ),
        ),
        (413, lambda: client.post("/api/v1/data", data=big, headers=jh)),
        (
            415,
            lambda: client.post(
                "/api/v1/data", data=b"x", headers={**bearer(key), "Content-Type": "text/csv"}
            ),
        ),
        (
            415,
            lambda: client.post(
                "/api/v1/fields",
                data=b"measurement=x",
                headers={**h, "Content-Type": "application/x-www-form-urlencoded"},
            ),
        ),
        (422, lambda: client.post("/api/v1/fields", headers=h, json={"measurement": "x"})),
        (429, lambda: client.get("/slow-down")),
        (500, lambda: client.get("/boom")),
        (503, lambda: client.get("/store-down")),
    ]
    for status, call in cases:
        body = check_shape(call(), status)
        if status == 500:
            assert "secret internals" not in body["error"]


def test_405_keeps_the_allow_header(client: FlaskClient, admin_token: str) -> None:
    resp = client.put("/api/v1/fields", headers=bearer(admin_token))
    check_shape(resp, 405)
    assert "GET" in resp.headers["Allow"] and "POST" in resp.headers["Allow"]


def test_503_has_retry_after(app_with_faults: Flask) -> None:
    resp = app_with_faults.test_client().get("/store-down")
    body = check_shape(resp, 503)
    assert resp.headers["Retry-After"] == "7" and body["code"] == "store_unavailable"


def test_request_id_is_taken_from_the_client_when_sane(client: FlaskClient) -> None:
    resp = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert resp.headers["X-Request-ID"] == "abc-123"
    resp = client.get("/healthz", headers={"X-Request-ID": "bad id <script>"})
    assert resp.headers["X-Request-ID"] != "bad id <script>"
    assert len(resp.headers["X-Request-ID"]) == 32


@contextmanager
def kept_records(name: str) -> Iterator[list[logging.LogRecord]]:
    """The records of logger ``name`` (DEBUG and up) while the block runs."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler, logger = Keep(), logging.getLogger(name)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def test_errors_are_logged_with_the_request_id(app_with_faults: Flask) -> None:
    with kept_records("monapi") as records:
        resp = app_with_faults.test_client().get("/boom", headers={"X-Request-ID": "trace-500"})
    assert resp.status_code == 500
    ids = [getattr(r, "request_id", None) for r in records]
    assert "trace-500" in ids
    crash = next(r for r in records if getattr(r, "request_id", None) == "trace-500" and r.exc_info)
    assert "secret internals" in str(crash.exc_info[1])


def test_health_and_readiness(app: Flask, client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["checks"] == {
        "config_store": {"backend": "sqlite", "status": "ok"},
        "tsdb": {"backend": "sqlite", "status": "ok"},
        "cache": {"backend": "local", "status": "ok"},
    }


def test_readyz_names_the_store_that_does_not_answer(tmp_path: Path) -> None:
    app, _ = make_app(tmp_path / "d")
    store = app.extensions["monapi.tsdb"]
    store.close()
    store.path.rename(tmp_path / "moved")
    store.path.mkdir()  # a directory where the file was: SQLite cannot open it
    resp = app.test_client().get("/readyz")
    body = check_shape(resp, 503)
    assert body["details"][0]["location"] == "tsdb"
    assert "tsdb" in body["error"] and resp.headers["Retry-After"]
    assert app.test_client().get("/healthz").status_code == 200


def test_a_request_refused_by_an_early_hook_logs_its_own_duration(tmp_path: Path) -> None:
    """The access line of a request a rate limit refuses (a hook that runs before the others)
    gives that request's duration, not the time since the process started."""
    app, token = make_app(tmp_path / "d", rate_limit_register="1/minute")
    client = app.test_client()
    with kept_records("monapi.access") as records:
        register_server(client, token, "first")
        body = {"hostname": "second", "ip_address": "192.0.2.2"}
        resp = client.post("/api/v1/servers", json=body, headers=bearer(token))
    assert resp.status_code == 429
    refused = [r for r in records if r.getMessage().endswith(" 429")]
    assert len(refused) == 1
    assert 0 <= refused[0].duration_ms < 5_000  # type: ignore[attr-defined]


def test_a_store_that_is_away_is_logged_once_per_interval_not_per_request(
    app_with_faults: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """During an outage every request fails the same way: the reason is logged once per
    interval per process, with the count of the ones not logged; the access log still has one
    line per request."""
    from monapi import errors

    monkeypatch.setattr(errors, "_unavailable_logged", {})
    client = app_with_faults.test_client()
    with kept_records("monapi") as records:
        for _ in range(5):
            assert client.get("/store-down").status_code == 503
        monkeypatch.setattr(errors, "UNAVAILABLE_LOG_EVERY_S", 0.0)
        assert client.get("/store-down").status_code == 503
    reasons = [r.getMessage() for r in records if r.name == "monapi.http"]
    assert reasons[0] == "store unavailable: time-series store: connection refused"
    assert len(reasons) == 2 and reasons[1].endswith(" (4 more in the last 0 s)"), reasons
    access = [r for r in records if r.name == "monapi.access"]
    assert len(access) == 6
