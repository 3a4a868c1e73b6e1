"""The hot path (api/hotpath.py): POST /api/v1/data answered without Flask's request machinery
when every point is stored, and through Flask, with the same answers as ever, otherwise.

Which path answered is seen through Flask's ``request_started`` signal, which only requests
that reach Flask send. The answers themselves are covered by every ingestion test, which all
go through the middleware."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, request_started

from monapi.auth import KeyService

from .conftest import bearer, make_app, push, register_server

POINT = {"fields": {"load1": 1.0}}


@pytest.fixture
def flask_requests(app: Flask) -> Iterator[list[str]]:
    """The paths of the requests that reached Flask."""
    seen: list[str] = []

    def record(sender: Any, **extra: Any) -> None:
        from flask import request

        seen.append(request.path)

    request_started.connect(record, app)
    yield seen
    request_started.disconnect(record, app)


def test_a_stored_push_never_reaches_flask(
    app: Flask, admin_token: str, flask_requests: list[str]
) -> None:
    client = app.test_client()
    key = register_server(client, admin_token)["api_key"]
    flask_requests.clear()
    resp = push(client, key, POINT)
    assert resp.status_code == 204 and resp.data == b""
    assert resp.headers["Content-Type"] == "text/html; charset=utf-8"  # as Flask sends it
    assert len(resp.headers["X-Request-ID"]) == 32
    gz = push(client, key, {"points": [POINT, POINT]}, gz=True)
    assert gz.status_code == 204
    xkey = client.post(
        "/api/v1/data",
        json=POINT,
        headers={"X-API-Key": key, "X-Request-ID": "agent-7.push-1"},
    )
    assert xkey.status_code == 204 and xkey.headers["X-Request-ID"] == "agent-7.push-1"
    assert flask_requests == []
    got = client.get(f"/api/v1/servers/{1}/latest", headers=bearer(admin_token)).get_json()
    assert [v["value"] for v in got["values"] if v["field"] == "load1"] == [1.0]


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b'{"fields": {"load1": 1.0}', {}, 400),  # not JSON
        (b'{"fields": {"load1": "high"}}', {}, 422),  # wrong type: nothing stored
        (b'{"points": [{"fields": {"load1": 1.0}}, {"fields": {"load1": "x"}}]}', {}, 200),
        (b'{"fields": {"load1": 1.0}}', {"Content-Type": "text/plain"}, 415),
        (b'{"fields": {"load1": 1.0}}', {"Content-Encoding": "br"}, 415),
        (b'{"fields": {"load1": 1.0}}', {"Content-Encoding": "gzip"}, 400),  # not gzip
    ],
)
def test_every_other_answer_comes_from_flask_as_before(
    app: Flask,
    admin_token: str,
    flask_requests: list[str],
    body: bytes,
    headers: dict[str, str],
    status: int,
) -> None:
    client = app.test_client()
    key = register_server(client, admin_token)["api_key"]
    flask_requests.clear()
    hdrs = {**bearer(key), "Content-Type": "application/json", **headers}
    resp = client.post("/api/v1/data", data=body, headers=hdrs)
    assert resp.status_code == status, resp.get_json()
    assert flask_requests == ["/api/v1/data"]
    doc = resp.get_json()
    if status != 200:
        assert doc["status"] == status and doc["request_id"] == resp.headers["X-Request-ID"]
    else:
        assert doc["accepted"] == 1 and doc["rejected"] == 1


@pytest.mark.parametrize(
    ("key", "status"),
    [("admin", 403), ("mks_0123456789abcdef_" + "A" * 43, 401), ("nonsense", 401), (None, 401)],
)
def test_requests_it_cannot_take_go_to_flask_untouched(
    app: Flask, admin_token: str, flask_requests: list[str], key: str | None, status: int
) -> None:
    client = app.test_client()
    register_server(client, admin_token)
    flask_requests.clear()
    presented = admin_token if key == "admin" else key
    headers = bearer(presented) if presented else {}
    resp = client.post("/api/v1/data", json=POINT, headers=headers)
    assert resp.status_code == status
    assert flask_requests == ["/api/v1/data"]


def test_a_disabled_server_and_a_body_over_the_limit_are_answered_by_flask(
    tmp_path: Path,
) -> None:
    app, token = make_app(tmp_path / "d", max_body_bytes=1000)
    client = app.test_client()
    s = register_server(client, token)
    big = {"points": [POINT] * 100}
    assert push(client, s["api_key"], big).status_code == 413
    client.post(f"/api/v1/servers/{s['id']}/disable", headers=bearer(token))
    resp = push(client, s["api_key"], POINT)
    assert resp.status_code == 403 and "disabled" in resp.get_json()["error"]


def test_a_refused_push_checks_the_key_once(
    app: Flask, admin_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = app.test_client()
    key = register_server(client, admin_token)["api_key"]
    calls = []
    real = KeyService.authenticate

    def counted(self: KeyService, presented: str) -> Any:
        calls.append(presented)
        return real(self, presented)

    monkeypatch.setattr(KeyService, "authenticate", counted)
    assert push(client, key, {"fields": {"load1": "x"}}).status_code == 422
    assert calls == [key]


def test_the_key_rate_limit_counts_each_request_once_on_either_path(tmp_path: Path) -> None:
    app, token = make_app(tmp_path / "d", rate_limit_server="4/minute")
    client = app.test_client()
    key = register_server(client, token)["api_key"]
    assert push(client, key, POINT).status_code == 204  # hot path
    assert push(client, key, {"fields": {"load1": "x"}}).status_code == 422  # through Flask
    assert push(client, key, POINT).status_code == 204
    assert push(client, key, POINT).status_code == 204
    refused = push(client, key, POINT)
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.get_json()["code"] == "rate_limited"


def test_a_stored_push_is_logged_like_any_request(
    app: Flask, admin_token: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = app.test_client()
    key = register_server(client, admin_token)["api_key"]
    with caplog.at_level(logging.DEBUG, logger="monapi.access"):
        resp = push(client, key, POINT)
    (rec,) = [r for r in caplog.records if r.name == "monapi.access"]
    assert rec.getMessage() == "POST /api/v1/data 204"
    assert rec.request_id == resp.headers["X-Request-ID"]  # type: ignore[attr-defined]
    assert rec.duration_ms >= 0  # type: ignore[attr-defined]


def test_a_configuration_store_that_fails_the_key_lookup_still_gets_a_json_answer(
    app: Flask, admin_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hot path hands anything unexpected in the key check to Flask, whose error handlers
    answer in JSON (here the key lookup raises, as a database that went away would)."""
    from monapi.errors import StoreUnavailable

    client = app.test_client()
    key = register_server(client, admin_token)["api_key"]

    def down(self: KeyService, key_id: str) -> Any:
        raise StoreUnavailable("configuration store: connection refused")

    monkeypatch.setattr(KeyService, "lookup", down)
    resp = push(client, key, POINT)
    assert resp.status_code == 503
    assert "configuration store" in resp.get_json()["error"]


@pytest.mark.parametrize("failure", ["store down", "unknown key"])
def test_a_key_check_that_failed_on_the_hot_path_is_not_made_again_in_flask(
    app: Flask, admin_token: str, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    """When the hot path's key check raised (a store that does not answer: each try may cost
    a timeout), Flask answers with that outcome and does not ask the store a second time."""
    from monapi.errors import StoreUnavailable

    client = app.test_client()
    key = register_server(client, admin_token)["api_key"]
    if failure == "unknown key":
        key = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    calls: list[str] = []
    real = KeyService.lookup

    def counted(self: KeyService, key_id: str) -> Any:
        calls.append(key_id)
        if failure == "store down":
            raise StoreUnavailable("configuration store: timed out", retry_after=5)
        return real(self, key_id)

    monkeypatch.setattr(KeyService, "lookup", counted)
    resp = push(client, key, POINT)
    if failure == "store down":
        assert resp.status_code == 503 and resp.headers["Retry-After"] == "5"
    else:
        assert resp.status_code == 401
        assert resp.headers["WWW-Authenticate"] == 'Bearer realm="monapi"'
    assert resp.get_json()["request_id"] == resp.headers["X-Request-ID"]
    assert len(calls) == 1, calls
