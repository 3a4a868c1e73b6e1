"""Security, proven by tests: who may call what, secrets, injection, error bodies, headers, CSRF.

- The access matrix of docs/security.md is read from the document and every cell is requested
  on a populated app: the answer must be the documented one, and the document must have a row
  for every route of the app (so the two cannot drift apart).
- Keys, passwords and session tokens are never stored, logged or shown again after the answer
  that created them (configuration store on SQLite and PostgreSQL, Redis, every file of the data
  directory, every log record at DEBUG, every later answer); the key check compares digests in
  constant time.
- SQL and header injection in every string input (JSON properties from the OpenAPI document,
  query and path parameters, the headers monapi reads, the dashboard's forms): a clean 2xx/4xx,
  no injected header, the data unharmed, an accepted value stored and returned literally; and
  no client can forge a log line.
- No error body (4xx, 5xx, API or dashboard) holds a traceback, a source path or a secret (the
  secret key, the pepper, a key, a store's URL credentials or password).
- Security headers on every dashboard page and error page, nosniff and no cookie on the API.
- CSRF: every state-changing dashboard route refuses a request without the token, with a wrong
  one and from another origin, and changes nothing; a HEAD (which needs no token) is a GET.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import copy
import hmac
import itertools
import json
import logging
import re
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from argon2 import PasswordHasher
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import inspect as sa_inspect
from sqlalchemy import text
from werkzeug.test import TestResponse

import monapi
from monapi import auth, db, logs
from monapi.app import shutdown
from monapi.services import tokens as tsvc
from monapi.services import users
from monapi.settings import ConfigError, load_settings

from . import engines
from .conftest import _created, bearer, make_app, push, register_server
from .test_dashboard import Browser, browser

# Tests that take ``config_store`` run on the embedded SQLite store and on PostgreSQL.
CONFIG_STORES = ["sqlite", "postgresql"]

DOC = Path(__file__).resolve().parents[1] / "docs" / "security.md"
SRC = Path(monapi.__file__).resolve().parent
COLUMNS = (
    "none",
    "invalid",
    "revoked",
    "this server",
    "another server",
    "enrollment",
    "admin",
    "session",
)
HTTPS = "https://localhost"
PASSWORD = "correct horse battery staple"
KEY_RE = re.compile(r"mk[ase]_[0-9a-f]{16}_[A-Za-z0-9_\-]{43}")


@pytest.fixture(autouse=True)
def _quick_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """argon2id with small parameters: these tests sign in often (the real parameters are
    tested in test_users.py)."""
    quick = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    monkeypatch.setattr(users, "_hasher", quick)
    monkeypatch.setattr(users, "_DUMMY_HASH", quick.hash("monapi: no such user"))


# ---- browsers --------------------------------------------------------------------------------


def cookie_session(app: Flask, b: FlaskClient) -> dict[str, Any]:
    """What the signed session cookie of a browser holds (sid, csrf)."""
    cookie = b.get_cookie("monapi_session")
    if cookie is None:
        return {}
    serializer = app.session_interface.get_signing_serializer(app)  # type: ignore[attr-defined]
    data: dict[str, Any] = serializer.loads(cookie.value)
    return data


def anonymous(app: Flask) -> Browser:
    """A browser that opened the log-in page: it has a CSRF token, no session."""
    b = browser(app)
    b.get("/login").close()
    assert cookie_session(app, b)["csrf"]
    return b


def add_user(app: Flask, name: str = "alice", password: str = PASSWORD) -> None:
    with app.app_context():
        users.create_user(db.session(), name, password)


def sign_in(app: Flask, name: str = "alice", password: str = PASSWORD) -> Browser:
    b = anonymous(app)
    resp = b.post(
        "/login",
        data={
            "csrf_token": cookie_session(app, b)["csrf"],
            "username": name,
            "password": password,
        },
    )
    assert resp.status_code == 302, resp.text
    return b


def csrf_of(app: Flask, b: FlaskClient) -> str:
    return str(cookie_session(app, b)["csrf"])


def base64_of(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def drain(resp: TestResponse) -> TestResponse:
    """Read the body and close the response (file answers hold their file open until then)."""
    resp.get_data()
    resp.close()
    return resp


# ---- the documented access matrix ------------------------------------------------------------


def documented_matrix() -> dict[tuple[str, str], dict[str, str]]:
    """The access matrix of docs/security.md: (method, path) -> column -> documented answer."""
    section = DOC.read_text().split("\n## Access matrix\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[tuple[str, str], dict[str, str]] = {}
    header: list[str] | None = None
    for line in section.splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "method":
            header = cells
            continue
        if set("".join(cells)) <= {"-"}:
            continue
        assert header == ["method", "path", *COLUMNS], header
        method = re.fullmatch(r"`([A-Z]+)`", cells[0])
        path = re.fullmatch(r"`(/[^`]*)`", cells[1])
        assert method and path, line
        key = (method.group(1), path.group(1))
        assert key not in rows, f"two rows for {key}"
        values = dict(zip(COLUMNS, cells[2:], strict=True))
        for value in values.values():
            assert re.fullmatch(r"[1-5]\d\d|login page|redirect", value), (line, value)
        rows[key] = values
    assert rows, "no access matrix in docs/security.md"
    return rows


def doc_path(rule: str) -> str:
    """A url_map rule as the document writes it: /x/<int:server_id> -> /x/{server_id}."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def app_routes(app: Flask) -> dict[tuple[str, str], str]:
    """Every (method, path) the app answers (HEAD and OPTIONS aside) -> its endpoint."""
    out: dict[tuple[str, str], str] = {}
    for rule in app.url_map.iter_rules():
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            out[(method, doc_path(rule.rule))] = rule.endpoint
    return out


@dataclass(frozen=True)
class Call:
    """A request that is valid in every respect but the credential."""

    path: str
    json: Any = None
    form: dict[str, str] | None = None
    data: bytes | None = None
    content_type: str | None = None


@dataclass
class Target:
    """The objects a request names in its path (fresh ones for requests that change them)."""

    server: dict[str, Any]
    field_id: int
    token_id: str


@dataclass
class World:
    """A populated app: two servers with points, fields, tokens, a dashboard user, and the
    credentials of every column of the matrix."""

    app: Flask
    api: FlaskClient
    admin: str
    s1: dict[str, Any]
    s2: dict[str, Any]
    enroll: str
    field_id: int
    session: Browser
    invalid: dict[str, str] = field(default_factory=dict)
    revoked: dict[str, str] = field(default_factory=dict)
    counter: Iterator[int] = field(default_factory=itertools.count)

    def name(self, prefix: str) -> str:
        return f"{prefix}-{next(self.counter)}"

    def fresh_server(self) -> dict[str, Any]:
        return register_server(self.api, self.admin, self.name("fresh"), "192.0.2.20")

    def fresh_field(self) -> int:
        resp = self.api.post(
            "/api/v1/fields",
            json={"measurement": "sec", "name": self.name("f"), "type": "float"},
            headers=bearer(self.admin),
        )
        assert resp.status_code == 201, resp.get_json()
        return int(resp.get_json()["id"])

    def fresh_token(self) -> str:
        resp = self.api.post("/api/v1/enrollment-tokens", json={}, headers=bearer(self.admin))
        assert resp.status_code == 201, resp.get_json()
        return str(resp.get_json()["id"])

    def target(self, method: str, path: str) -> Target:
        """Objects for one request: fresh ones when the request changes or removes them."""
        changes = method != "GET"
        server = self.fresh_server() if changes and "{server_id}" in path else self.s1
        names_field = "{id}" in path or "{field_id}" in path
        field_id = self.fresh_field() if changes and names_field else self.field_id
        token_id = self.fresh_token() if "{token_id}" in path else ""
        return Target(server, field_id, token_id)


LP_BODY = b"system load1=0.5\nsystem,role=web load5=0.25\n"

# How to make a valid request for each documented row (the target's ids filled in).
REQUESTS: dict[tuple[str, str], Callable[[World, Target], Call]] = {
    ("GET", "/healthz"): lambda w, t: Call("/healthz"),
    ("GET", "/readyz"): lambda w, t: Call("/readyz"),
    ("GET", "/metrics"): lambda w, t: Call("/metrics"),
    ("GET", "/ping"): lambda w, t: Call("/ping"),
    ("GET", "/query"): lambda w, t: Call("/query?q=SHOW+DATABASES&db=telegraf"),
    ("POST", "/query"): lambda w, t: Call("/query", form={"q": "CREATE DATABASE telegraf"}),
    ("POST", "/write"): lambda w, t: Call(
        "/write?db=telegraf&precision=s", data=LP_BODY, content_type="text/plain"
    ),
    ("POST", "/api/v2/write"): lambda w, t: Call(
        "/api/v2/write?bucket=b&org=o", data=LP_BODY, content_type="text/plain"
    ),
    ("POST", "/api/register_server"): lambda w, t: Call(
        "/api/register_server", json={"hostname": w.name("legacy"), "ip_address": "192.0.2.30"}
    ),
    ("POST", "/api/v1/servers"): lambda w, t: Call(
        "/api/v1/servers",
        json={"hostname": w.name("new"), "ip_address": "192.0.2.31", "labels": {"role": "x"}},
    ),
    ("GET", "/api/v1/servers"): lambda w, t: Call("/api/v1/servers?per_page=5"),
    ("GET", "/api/v1/servers/{server_id}"): lambda w, t: Call(f"/api/v1/servers/{t.server['id']}"),
    ("PATCH", "/api/v1/servers/{server_id}"): lambda w, t: Call(
        f"/api/v1/servers/{t.server['id']}", json={"description": "patched"}
    ),
    ("DELETE", "/api/v1/servers/{server_id}"): lambda w, t: Call(
        f"/api/v1/servers/{t.server['id']}"
    ),
    ("POST", "/api/v1/servers/{server_id}/disable"): lambda w, t: Call(
        f"/api/v1/servers/{t.server['id']}/disable"
    ),
    ("POST", "/api/v1/servers/{server_id}/enable"): lambda w, t: Call(
        f"/api/v1/servers/{t.server['id']}/enable"
    ),
    ("POST", "/api/v1/servers/{server_id}/rotate-key"): lambda w, t: Call(
        f"/api/v1/servers/{t.server['id']}/rotate-key"
    ),
    ("GET", "/api/v1/servers/{server_id}/metrics"): lambda w, t: Call(
        f"/api/v1/servers/{t.server['id']}/metrics?fields=load1&start=-1h"
    ),
    ("GET", "/api/v1/servers/{server_id}/latest"): lambda w, t: Call(
        f"/api/v1/servers/{t.server['id']}/latest"
    ),
    ("GET", "/api/v1/overview"): lambda w, t: Call("/api/v1/overview"),
    ("GET", "/api/v1/fields"): lambda w, t: Call("/api/v1/fields?measurement=cpu"),
    ("POST", "/api/v1/fields"): lambda w, t: Call(
        "/api/v1/fields", json={"measurement": "sec", "name": w.name("n"), "type": "int"}
    ),
    ("GET", "/api/v1/fields/{id}"): lambda w, t: Call(f"/api/v1/fields/{t.field_id}"),
    ("PATCH", "/api/v1/fields/{id}"): lambda w, t: Call(
        f"/api/v1/fields/{t.field_id}", json={"unit": "ms"}
    ),
    ("DELETE", "/api/v1/fields/{id}"): lambda w, t: Call(f"/api/v1/fields/{t.field_id}"),
    ("GET", "/api/v1/enrollment-tokens"): lambda w, t: Call("/api/v1/enrollment-tokens"),
    ("POST", "/api/v1/enrollment-tokens"): lambda w, t: Call(
        "/api/v1/enrollment-tokens", json={"name": "matrix", "max_uses": 3}
    ),
    ("DELETE", "/api/v1/enrollment-tokens/{token_id}"): lambda w, t: Call(
        f"/api/v1/enrollment-tokens/{t.token_id}"
    ),
    ("POST", "/api/v1/data"): lambda w, t: Call(
        "/api/v1/data", json={"measurement": "cpu", "fields": {"usage_percent": 3.5}}
    ),
    ("GET", "/api/v1/agent/config"): lambda w, t: Call("/api/v1/agent/config"),
    ("POST", "/api/v1/agent/heartbeat"): lambda w, t: Call(
        "/api/v1/agent/heartbeat", json={"agent_version": "1.2.3", "uptime": 60}
    ),
    ("GET", "/api/v1/"): lambda w, t: Call("/api/v1/"),
    ("GET", "/api/v1/openapi.json"): lambda w, t: Call("/api/v1/openapi.json"),
    ("GET", "/api/v1/swagger"): lambda w, t: Call("/api/v1/swagger"),
    ("GET", "/api/v1/swagger/{filename}"): lambda w, t: Call("/api/v1/swagger/css/swagger-ui.css"),
    ("GET", "/api/v1/oauth2-redirect.html"): lambda w, t: Call("/api/v1/oauth2-redirect.html"),
    ("GET", "/api/v1/static/{filename}"): lambda w, t: Call("/api/v1/static/swagger-ui.css"),
    ("GET", "/assets/{filename}"): lambda w, t: Call("/assets/app.css"),
    ("GET", "/login"): lambda w, t: Call("/login"),
    ("POST", "/login"): lambda w, t: Call(
        "/login", form={"username": "alice", "password": PASSWORD}
    ),
    ("POST", "/logout"): lambda w, t: Call("/logout", form={}),
    ("GET", "/"): lambda w, t: Call("/?status=online&q=web"),
    ("GET", "/servers/{server_id}"): lambda w, t: Call(f"/servers/{t.server['id']}?range=6h"),
    ("GET", "/servers/{server_id}/series"): lambda w, t: Call(
        f"/servers/{t.server['id']}/series?start=-1h"
    ),
    ("POST", "/servers/{server_id}/rotate-key"): lambda w, t: Call(
        f"/servers/{t.server['id']}/rotate-key", form={}
    ),
    ("POST", "/servers/{server_id}/disable"): lambda w, t: Call(
        f"/servers/{t.server['id']}/disable", form={}
    ),
    ("POST", "/servers/{server_id}/enable"): lambda w, t: Call(
        f"/servers/{t.server['id']}/enable", form={}
    ),
    ("POST", "/servers/{server_id}/delete"): lambda w, t: Call(
        f"/servers/{t.server['id']}/delete", form={"confirm_hostname": t.server["hostname"]}
    ),
    ("GET", "/fields"): lambda w, t: Call("/fields"),
    ("GET", "/fields/new"): lambda w, t: Call("/fields/new"),
    ("POST", "/fields/new"): lambda w, t: Call(
        "/fields/new",
        form={"measurement": "sec", "name": w.name("d"), "type": "float", "enabled": "on"},
    ),
    ("GET", "/fields/{field_id}/edit"): lambda w, t: Call(f"/fields/{t.field_id}/edit"),
    ("POST", "/fields/{field_id}/edit"): lambda w, t: Call(
        f"/fields/{t.field_id}/edit", form={"unit": "ms", "max": "10", "enabled": "on"}
    ),
    ("POST", "/fields/{field_id}/delete"): lambda w, t: Call(
        f"/fields/{t.field_id}/delete", form={}
    ),
    ("GET", "/enrollment"): lambda w, t: Call("/enrollment"),
    ("POST", "/enrollment"): lambda w, t: Call(
        "/enrollment", form={"name": "rack 9", "expires_in": "1d", "max_uses": "5"}
    ),
    ("POST", "/enrollment/{token_id}/revoke"): lambda w, t: Call(
        f"/enrollment/{t.token_id}/revoke", form={}
    ),
    ("GET", "/api/v1/alerts"): lambda w, t: Call("/api/v1/alerts"),
    ("POST", "/api/v1/alerts"): lambda w, t: Call(
        "/api/v1/alerts", json={**_RULE, "name": w.name("rule")}
    ),
    ("GET", "/api/v1/alerts/{id}"): lambda w, t: Call(f"/api/v1/alerts/{_fresh_rule(w)}"),
    ("PATCH", "/api/v1/alerts/{id}"): lambda w, t: Call(
        f"/api/v1/alerts/{_fresh_rule(w)}", json={"threshold": 95}
    ),
    ("DELETE", "/api/v1/alerts/{id}"): lambda w, t: Call(f"/api/v1/alerts/{_fresh_rule(w)}"),
    ("GET", "/api/v1/alerts/states"): lambda w, t: Call("/api/v1/alerts/states?state=firing"),
    ("GET", "/api/v1/alerts/history"): lambda w, t: Call("/api/v1/alerts/history"),
    ("GET", "/api/v1/alerts/silences"): lambda w, t: Call("/api/v1/alerts/silences"),
    ("POST", "/api/v1/alerts/silences"): lambda w, t: Call(
        "/api/v1/alerts/silences", json={"server_id": w.s1["id"], "duration": "1h"}
    ),
    ("GET", "/api/v1/alerts/silences/{id}"): lambda w, t: Call(
        f"/api/v1/alerts/silences/{_fresh_silence(w)}"
    ),
    ("DELETE", "/api/v1/alerts/silences/{id}"): lambda w, t: Call(
        f"/api/v1/alerts/silences/{_fresh_silence(w)}"
    ),
    ("GET", "/api/v1/alerts/notifications"): lambda w, t: Call("/api/v1/alerts/notifications"),
    ("GET", "/alerts"): lambda w, t: Call("/alerts"),
    ("GET", "/alerts/new"): lambda w, t: Call("/alerts/new"),
    ("POST", "/alerts/new"): lambda w, t: Call("/alerts/new", form=_rule_form(w.name("rule"))),
    ("GET", "/alerts/{rule_id}/edit"): lambda w, t: Call(f"/alerts/{_fresh_rule(w)}/edit"),
    ("POST", "/alerts/{rule_id}/edit"): lambda w, t: Call(
        f"/alerts/{_fresh_rule(w)}/edit", form=_rule_form(w.name("renamed"))
    ),
    ("POST", "/alerts/{rule_id}/toggle"): lambda w, t: Call(
        f"/alerts/{_fresh_rule(w)}/toggle", form={}
    ),
    ("POST", "/alerts/{rule_id}/delete"): lambda w, t: Call(
        f"/alerts/{_fresh_rule(w)}/delete", form={}
    ),
    ("POST", "/alerts/silences"): lambda w, t: Call(
        "/alerts/silences", form={"server_id": str(w.s1["id"]), "duration": "1h"}
    ),
    ("POST", "/alerts/silences/{silence_id}/end"): lambda w, t: Call(
        f"/alerts/silences/{_fresh_silence(w)}/end", form={}
    ),
}


def _rule_form(name: str) -> dict[str, str]:
    """The dashboard's rule form, filled in with a valid threshold rule."""
    return {
        "name": name,
        "kind": "threshold",
        "field": "cpu.usage_percent",
        "aggregation": "mean",
        "window": "5m",
        "condition": ">",
        "threshold": "90",
        "target": "all",
        "severity": "warning",
        "enabled": "on",
    }


_RULE = {"measurement": "cpu", "field": "usage_percent", "condition": ">", "threshold": 90}


def _rule_body() -> dict[str, Any]:
    """Every property of an alert rule, with a value (the injection test fills each)."""
    return {
        **_RULE,
        "description": "d",
        "tags": {"role": "web"},
        "aggregation": "mean",
        "window": "5m",
        "intervals": None,
        "duration": "1m",
        "server_ids": None,
        "labels": {"role": "web"},
        "severity": "warning",
        "enabled": True,
    }


def _fresh_rule(w: World) -> int:
    """The id of a new alert rule (made through the API)."""
    body = {**_RULE, "name": w.name("rule")}
    resp = w.api.post("/api/v1/alerts", json=body, headers=bearer(w.admin))
    assert resp.status_code == 201, resp.get_json()
    return int(resp.get_json()["id"])


def _fresh_silence(w: World) -> int:
    """The id of a new silence of the first server (made through the API)."""
    body = {"server_id": w.s1["id"], "duration": "1h"}
    resp = w.api.post("/api/v1/alerts/silences", json=body, headers=bearer(w.admin))
    assert resp.status_code == 201, resp.get_json()
    return int(resp.get_json()["id"])


def make_world(app: Flask, admin: str) -> World:
    """Populate an app with everything the matrix needs."""
    api = app.test_client(use_cookies=False)
    s1 = register_server(api, admin, "web-01", "192.0.2.10", labels={"role": "web"})
    s2 = register_server(api, admin, "db-01", "192.0.2.11")
    points = {
        "points": [
            {"measurement": "cpu", "fields": {"usage_percent": 12.5}},
            {"fields": {"load1": 0.5}},
        ]
    }
    assert push(api, s1["api_key"], points).status_code == 204
    assert push(api, s2["api_key"], points).status_code == 204
    enroll = api.post("/api/v1/enrollment-tokens", json={}, headers=bearer(admin))
    assert enroll.status_code == 201
    fields = api.get("/api/v1/fields?measurement=cpu", headers=bearer(admin)).get_json()
    add_user(app)
    world = World(
        app=app,
        api=api,
        admin=admin,
        s1=s1,
        s2=s2,
        enroll=enroll.get_json()["token"],
        field_id=fields["items"][0]["id"],
        session=sign_in(app),
    )
    admin_id = admin.split("_")[1]
    world.invalid = {
        "malformed key": "not-a-key",
        "unknown key": f"mks_{'0' * 16}_{'A' * 43}",
        "admin id, wrong secret": f"mka_{admin_id}_{'B' * 43}",
    }
    rotated = world.fresh_server()
    resp = api.post(f"/api/v1/servers/{rotated['id']}/rotate-key", headers=bearer(admin))
    assert resp.status_code == 200
    revoked_enroll = api.post("/api/v1/enrollment-tokens", json={}, headers=bearer(admin))
    resp = api.delete(
        f"/api/v1/enrollment-tokens/{revoked_enroll.get_json()['id']}", headers=bearer(admin)
    )
    assert resp.status_code == 200
    with app.app_context():
        session = db.session()
        row, revoked_admin = tsvc.create_token(session, auth.get_keys(), auth.ADMIN, name="gone")
        session.commit()
        tsvc.revoke_token(session, auth.ADMIN, row.id)
        session.commit()
    deleted = world.fresh_server()
    assert api.delete(f"/api/v1/servers/{deleted['id']}", headers=bearer(admin)).status_code == 204
    world.revoked = {
        "rotated-away server key": rotated["api_key"],
        "revoked enrollment token": revoked_enroll.get_json()["token"],
        "revoked admin token": revoked_admin,
        "key of a deleted server": deleted["api_key"],
    }
    return world


@pytest.fixture
def world(tmp_path: Path) -> World:
    app, admin = make_app(tmp_path / "data", rate_limit_login="0")
    return make_world(app, admin)


def credentials(w: World, column: str, t: Target | None) -> list[tuple[str, str | None]]:
    """(what, key) for every credential of a column (None: no key, for none and session);
    the key of "this server" is the target's (without a target: a placeholder)."""
    if column == "invalid":
        return list(w.invalid.items())
    if column == "revoked":
        return list(w.revoked.items())
    key = {
        "none": None,
        "session": None,
        "this server": t.server["api_key"] if t is not None else "",
        "another server": w.s2["api_key"],
        "enrollment": w.enroll,
        "admin": w.admin,
    }[column]
    return [(column, key)]


def send(
    w: World, method: str, call: Call, key: str | None, *, dashboard: bool, signed_in: bool
) -> TestResponse:
    """One request as the column makes it: a key in the headers, or a signed-in browser."""
    headers = bearer(key) if key is not None else {}
    form = dict(call.form) if call.form is not None else None
    client: FlaskClient
    if signed_in:
        # /logout ends the session: it gets a browser of its own.
        client = sign_in(w.app) if call.path == "/logout" else w.session
        token = csrf_of(w.app, client)
        headers["X-CSRF-Token"] = token
        if dashboard and form is not None:
            form["csrf_token"] = token
    elif dashboard:
        client = anonymous(w.app)  # the CSRF token of a browser that has not signed in
        if form is not None:
            form["csrf_token"] = csrf_of(w.app, client)
    else:
        client = w.api
    data: Any = form if form is not None else call.data
    return drain(
        client.open(
            call.path,
            method=method,
            json=call.json,
            data=data,
            headers=headers,
            content_type=call.content_type,
        )
    )


def answer(resp: TestResponse, requested: str) -> str:
    """The answer in the document's words."""
    if resp.status_code == 302:
        loc = urlsplit(resp.headers["Location"])
        if loc.path == "/login" and parse_qs(loc.query).get("next") == [requested]:
            return "login page"
        if not loc.scheme and not loc.netloc and loc.path.startswith("/"):
            return "redirect"
        return f"302 to {resp.headers['Location']}"
    return str(resp.status_code)


def test_the_access_matrix_documents_every_route_of_the_app(world: World) -> None:
    """A route without a row in docs/security.md (or a row without a route) fails: a new route
    must say who may call it."""
    documented = set(documented_matrix())
    routes = set(app_routes(world.app))
    assert routes - documented == set(), "routes missing from the access matrix"
    assert documented - routes == set(), "rows of the access matrix without a route"
    assert set(REQUESTS) == documented, "a documented row without a request in REQUESTS"


def test_every_cell_of_the_access_matrix_is_the_documented_answer(world: World) -> None:
    """For every route and every credential kind (each variant of invalid and revoked keys),
    a request valid in every other respect gets exactly the status the document gives; a
    ``HEAD`` of every ``GET`` row gets the same."""
    endpoints = app_routes(world.app)
    wrong: list[str] = []
    asked = 0
    for (method, path), row in documented_matrix().items():
        dashboard = endpoints[(method, path)].startswith("dashboard.")
        if "{server_id}" not in path:  # the legend: both server-key columns are the same case
            assert row["this server"] == row["another server"], (method, path)
        for column in COLUMNS:
            for variant in range(len(credentials(world, column, None))):
                for sent in ("GET", "HEAD") if method == "GET" else (method,):
                    t = world.target(method, path)  # fresh objects for a request that changes
                    what, key = credentials(world, column, t)[variant]
                    call = REQUESTS[(method, path)](world, t)
                    resp = send(
                        world, sent, call, key, dashboard=dashboard, signed_in=column == "session"
                    )
                    asked += 1
                    got = answer(resp, call.path)
                    if got != row[column]:
                        wrong.append(
                            f"{sent} {path} [{column}: {what}]: documented {row[column]},"
                            f" got {got} {resp.get_data()[:160]!r}"
                        )
    assert not wrong, "\n".join(wrong)
    assert asked > 12 * len(documented_matrix())


# ---- keys are never stored, logged or shown again ---------------------------------------------


@pytest.fixture
def make(
    request: pytest.FixtureRequest, tmp_path: Path, config_store: str
) -> Iterator[Callable[..., tuple[Flask, str]]]:
    """Apps on this run's configuration store; on PostgreSQL also with Redis (a prefix of the
    test's own), the production set-up."""
    dbs: engines.PostgresDatabases | None = (
        request.getfixturevalue("pg_databases") if config_store == "postgresql" else None
    )
    urls: list[str] = []

    def build(**overrides: Any) -> tuple[Flask, str]:
        extra: dict[str, Any] = {}
        if dbs is not None:
            urls.append(dbs.new())
            extra["database_url"] = urls[-1]
            extra["redis_url"] = request.getfixturevalue("redis_url")
            extra["redis_prefix"] = f"monapi-sec-{uuid.uuid4().hex[:8]}"
        return make_app(tmp_path / f"data-{len(_created)}-{len(urls)}", **extra, **overrides)

    yield build
    while _created:
        shutdown(_created.pop())
    for url in urls:
        assert dbs is not None
        dbs.drop(url)


@dataclass
class Captured:
    """Every log record of a test, from the root logger and monapi's own."""

    records: list[logging.LogRecord]

    def lines(self) -> list[str]:
        """Each record as monapi writes it (JSON and text), with its arguments and extras."""
        json_fmt = logs.JSONFormatter()
        text_fmt = logs.TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        return [
            "\n".join((json_fmt.format(r), text_fmt.format(r), repr(r.args), repr(vars(r))))
            for r in self.records
        ]


@pytest.fixture
def debug_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Captured]:
    """Capture every log record at DEBUG (monapi's loggers do not propagate to the root), SQL
    statements with their parameters included (SQLAlchemy keeps its loggers at WARNING)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(logging.DEBUG)
    loggers = [logging.getLogger(), logging.getLogger("monapi"), logging.getLogger("sqlalchemy")]
    levels = [logger.level for logger in loggers]
    monkeypatch.setattr(logs, "_configured", logs._configured)  # create_app reconfigures it
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    try:
        yield Captured(records)
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


class Answers:
    """Every answer of a scenario, in order, as text: status, headers and body."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def __call__(self, what: str, resp: TestResponse) -> TestResponse:
        drain(resp)
        head = "\n".join(f"{k}: {v}" for k, v in resp.headers.items())
        self.seen.append((what, f"{resp.status}\n{head}\n\n{resp.get_data(as_text=True)}"))
        return resp

    def showing(self, secret: str) -> list[str]:
        return [what for what, text in self.seen if secret in text]


def secret_part(key: str) -> str:
    """The secret of mk?_<id>_<secret> (the id is not secret: listings show it)."""
    return key.split("_", 2)[2]


def stored_text(app: Flask) -> str:
    """Every value of every row of every table of the configuration store, as text."""
    engine = app.extensions["monapi.db"].engine
    out: list[str] = []
    with engine.connect() as conn:
        tables = sa_inspect(conn).get_table_names()
        assert {"api_keys", "servers", "users", "dashboard_sessions"} <= set(tables)
        for table in tables:
            for row in conn.execute(text(f'SELECT * FROM "{table}"')):
                out.extend(str(v) for v in row)
    return "\n".join(out)


def redis_text(app: Flask) -> str:
    """Every key and value monapi keeps in Redis (under its prefix), as text."""
    import redis

    settings = app.extensions["monapi.settings"]
    client = redis.Redis.from_url(settings.redis_url)
    out: list[str] = []
    try:
        for name in client.scan_iter(match=f"{settings.redis_prefix}:*"):
            raw_kind = client.type(name)
            kind = raw_kind.decode() if isinstance(raw_kind, bytes) else str(raw_kind)
            value: Any
            if kind == "string":
                value = client.get(name)
            elif kind == "hash":
                value = client.hgetall(name)
            elif kind == "set":
                value = client.smembers(name)
            elif kind == "zset":
                value = client.zrange(name, 0, -1, withscores=True)
            elif kind == "list":
                value = client.lrange(name, 0, -1)
            else:
                value = client.dump(name)
            out.append(f"{name!r} {value!r}")
    finally:
        client.close()
    assert out, "monapi kept nothing in Redis: the scan looked in the wrong place"
    return "\n".join(out)


def test_keys_passwords_and_session_tokens_are_never_stored_logged_or_shown_again(
    make: Callable[..., tuple[Flask, str]], config_store: str, debug_logs: Captured
) -> None:
    """Every kind of key, made every way there is, then used every way there is: its secret is
    in no file of the data directory, no row of the configuration store, no Redis value, no log
    record at DEBUG (SQL statements and the access log included) and no answer but the one
    that created it. The password and the session token are in none at all (the session token
    travels only inside the signed cookie)."""
    app, admin0 = make(log_level="DEBUG", rate_limit_login="0")
    api = app.test_client(use_cookies=False)
    seen = Answers()
    keys: dict[str, str] = {"first admin token": admin0}  # what -> key
    shown_by: dict[str, str] = {}  # what -> the one answer that may show it

    with app.app_context():  # what `monapi admin create-token` does
        session = db.session()
        _row, keys["second admin token"] = tsvc.create_token(
            session, auth.get_keys(), auth.ADMIN, name="cli"
        )
        session.commit()
    admin1 = keys["second admin token"]

    def made(what: str, key: str, by: str) -> str:
        keys[what], shown_by[what] = key, by
        return key

    r = seen("make token", api.post("/api/v1/enrollment-tokens", json={}, headers=bearer(admin1)))
    enroll = made("enrollment token (API)", r.get_json()["token"], "make token")
    enroll_id = r.get_json()["id"]
    host = {"ip_address": "192.0.2.40"}
    r = seen(
        "register",
        api.post("/api/v1/servers", json={**host, "hostname": "a"}, headers=bearer(admin0)),
    )
    made("server key (admin registration)", r.get_json()["api_key"], "register")
    id_a = r.get_json()["id"]
    r = seen(
        "enroll",
        api.post("/api/v1/servers", json={**host, "hostname": "e"}, headers=bearer(enroll)),
    )
    made("server key (enrollment)", r.get_json()["api_key"], "enroll")
    id_e = r.get_json()["id"]
    r = seen(
        "legacy",
        api.post("/api/register_server", json={**host, "hostname": "l"}, headers=bearer(enroll)),
    )
    key_l = made("server key (legacy route)", r.get_json()["api_key"], "legacy")
    r = seen("rotate", api.post(f"/api/v1/servers/{id_a}/rotate-key", headers=bearer(admin0)))
    key_r = made("server key (API rotation)", r.get_json()["api_key"], "rotate")

    add_user(app)
    b = browser(app)
    seen("login page", b.get("/login"))
    wrong_password = "not the password at all"
    form = {"csrf_token": csrf_of(app, b), "username": "alice"}
    refused = seen("wrong password", b.post("/login", data={**form, "password": wrong_password}))
    assert refused.status_code == 401
    signed = seen("sign in", b.post("/login", data={**form, "password": PASSWORD}))
    assert signed.status_code == 302
    sid, csrf = cookie_session(app, b)["sid"], csrf_of(app, b)
    r = seen("rotate (dashboard)", b.post(f"/servers/{id_e}/rotate-key", data={"csrf_token": csrf}))
    [key_d] = KEY_RE.findall(r.text)
    made("server key (dashboard rotation)", key_d, "rotate (dashboard)")
    r = seen(
        "make token (dashboard)", b.post("/enrollment", data={"csrf_token": csrf, "name": "d"})
    )
    [enroll_d] = set(KEY_RE.findall(r.text))
    made("enrollment token (dashboard)", enroll_d, "make token (dashboard)")
    r = seen(
        "enroll (dashboard token)",
        api.post("/api/v1/servers", json={**host, "hostname": "x"}, headers=bearer(enroll_d)),
    )
    made("server key (dashboard token)", r.get_json()["api_key"], "enroll (dashboard token)")

    # Every way a key is presented, accepted or refused.
    point = {"fields": {"load1": 0.25}}
    basic = base64_of(f"telegraf:{key_r}")
    uses = [
        ("push, bearer", push(api, key_r, point), 204),
        (
            "push, X-API-Key",
            api.post("/api/v1/data", json=point, headers={"X-API-Key": key_d}),
            204,
        ),
        (
            "write, p",
            api.post(f"/write?u=t&p={key_l}", data=LP_BODY, content_type="text/plain"),
            204,
        ),
        (
            "write, Token",
            api.post("/api/v2/write", data=LP_BODY, headers={"Authorization": f"Token {key_l}"}),
            204,
        ),
        (
            "write, Basic",
            api.post("/write", data=LP_BODY, headers={"Authorization": f"Basic {basic}"}),
            204,
        ),
        ("query, p", api.get(f"/query?q=SHOW+DATABASES&p={key_l}"), 200),
        (
            "heartbeat",
            api.post(
                "/api/v1/agent/heartbeat",
                json={"agent_version": "1", "uptime": 1},
                headers=bearer(key_r),
            ),
            200,
        ),
        ("config", api.get("/api/v1/agent/config", headers=bearer(key_d)), 200),
        ("rotated-away key", push(api, keys["server key (admin registration)"], point), 401),
        ("rotated-away key (dashboard)", push(api, keys["server key (enrollment)"], point), 401),
        (
            "revoke",
            api.delete(f"/api/v1/enrollment-tokens/{enroll_id}", headers=bearer(admin1)),
            200,
        ),
        (
            "revoked token",
            api.post("/api/v1/servers", json={**host, "hostname": "z"}, headers=bearer(enroll)),
            401,
        ),
    ]
    wrong = keys["wrong secret of a real id"] = f"mka_{admin0.split('_')[1]}_{'W' * 43}"
    uses.append(("wrong secret", api.get("/api/v1/servers", headers=bearer(wrong)), 401))
    for what, resp, status in uses:
        assert seen(what, resp).status_code == status, (what, resp.get_data()[:200])

    # Everything that lists or shows servers, tokens and keys, after the fact.
    servers = api.get("/api/v1/servers", headers=bearer(admin0)).get_json()["items"]
    reads = [
        "/api/v1/servers",
        "/api/v1/overview",
        "/api/v1/fields",
        "/api/v1/enrollment-tokens",
        "/api/v1/openapi.json",
        "/api/v1/swagger",
    ]
    for s in servers:
        reads += [f"/api/v1/servers/{s['id']}{tail}" for tail in ("", "/latest", "/metrics")]
    for path in reads:
        assert seen(path, api.get(path, headers=bearer(admin1))).status_code == 200, path
    pages = ["/", "/fields", "/enrollment", *(f"/servers/{s['id']}" for s in servers)]
    for path in pages:
        assert seen(path, b.get(path)).status_code == 200, path

    # (iii) no answer shows a key but the one that made it; none shows the password.
    for what, key in keys.items():
        expected = [shown_by[what]] if what in shown_by else []
        assert seen.showing(secret_part(key)) == expected, what
    for password in (PASSWORD, wrong_password):
        assert seen.showing(password) == []

    secrets = {
        **{what: secret_part(key) for what, key in keys.items()},
        "password": PASSWORD,
        "wrong password": wrong_password,
        "session token": sid,
        "CSRF token": csrf,
    }
    # (i) nothing stored: every file of the data directory (none left out: the pepper and the
    # secret key files hold only those), every row of the configuration store, Redis.
    data_dir: Path = app.extensions["monapi.settings"].data_dir
    files = {p: p.read_bytes() for p in data_dir.rglob("*") if p.is_file()}
    assert {p.name for p in files} >= {"key_pepper", "secret_key", "tsdb.sqlite3"}
    places = {str(p): data.decode("latin-1") for p, data in files.items()}
    places["configuration store"] = stored_text(app)
    if config_store == "postgresql":
        places["redis"] = redis_text(app)
    else:
        assert {p.name for p in files} >= {"monapi.db"}
    # (ii) nothing logged, at DEBUG, by any logger.
    lines = debug_logs.lines()
    assert len(lines) > 50, "the log capture saw almost nothing"
    assert any(getattr(r, "name", "") == "monapi.access" for r in debug_logs.records)
    places["log"] = "\n".join(lines)
    for what, secret in secrets.items():
        for where, content in places.items():
            assert secret not in content, f"{what} found in {where}"
    # The digests are stored (so the search above looked where the keys would be).
    stored = places["configuration store"]
    with app.app_context():
        digests = [auth.get_keys().digest(key) for key in (admin0, admin1, key_r, key_l, key_d)]
    assert all(d in stored for d in digests)
    if config_store == "postgresql":  # and Redis holds the cached key records, digests only
        assert any(d in places["redis"] for d in digests)
    # SQL statements with their parameters were logged too (and held no key)
    assert any(r.name.startswith("sqlalchemy.engine") for r in debug_logs.records)


# ---- constant-time comparison ----------------------------------------------------------------


def test_a_key_is_checked_by_comparing_digests_in_constant_time(
    app: Flask, admin_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong secret for a real key id, a right key, and the hot path's server key: each is
    checked by hmac.compare_digest of the stored digest and the presented key's digest."""
    calls: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return bool(real(a, b))

    api = app.test_client(use_cookies=False)
    server = register_server(api, admin_token)
    keys: auth.KeyService = app.extensions[auth.EXT]
    wrong = f"mka_{admin_token.split('_')[1]}_{'Z' * 43}"
    with app.app_context():
        stored = {k: keys.lookup(k.split("_")[1]) for k in (admin_token, server["api_key"])}
    monkeypatch.setattr(hmac, "compare_digest", spy)  # the module auth.py calls
    assert api.get("/api/v1/servers", headers=bearer(wrong)).status_code == 401
    record = stored[admin_token]
    assert record is not None
    assert calls == [(record.digest, keys.digest(wrong))]
    calls.clear()
    assert api.get("/api/v1/servers", headers=bearer(admin_token)).status_code == 200
    assert calls == [(record.digest, keys.digest(admin_token))]
    calls.clear()
    assert push(api, server["api_key"], {"fields": {"load1": 1.0}}).status_code == 204
    server_record = stored[server["api_key"]]
    assert server_record is not None
    assert calls == [(server_record.digest, keys.digest(server["api_key"]))]


def test_the_csrf_token_is_compared_in_constant_time(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dashboard's CSRF check compares the sent token with the session's by
    hmac.compare_digest."""
    calls: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return bool(real(a, b))

    add_user(app)
    b = sign_in(app)
    token = csrf_of(app, b)
    monkeypatch.setattr(hmac, "compare_digest", spy)  # the module auth.py calls
    assert b.post("/enrollment", data={"csrf_token": "x" * 43}).status_code == 400
    # (the cookie's signature is checked the same way, by itsdangerous)
    assert (b"x" * 43, token.encode()) in calls


# Words that name a secret, or something made from one, in the code that checks credentials.
_SECRET_WORDS = re.compile(r"digest|secret|plaintext|presented|password|csrf|token|sent|expected")
_CREDENTIAL_CODE = ["auth.py", "api/hotpath.py", "dashboard/session.py", "services/users.py"]


def _constant(node: ast.expr) -> bool:
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return all(_constant(e) for e in node.elts)
    return isinstance(node, ast.Constant)


def test_no_secret_is_compared_with_equality_operators() -> None:
    """A second line behind the spies above: in the code that checks credentials, no ``==``,
    ``!=``, ``in`` or ``not in`` has an operand that names a secret or a digest, except in SQL
    conditions (a model column on the left: the database looks the digest up by its index,
    which tells an attacker nothing about the stored value's bytes)."""
    found: list[str] = []
    for name in _CREDENTIAL_CODE:
        tree = ast.parse((SRC / name).read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Compare):
                continue
            if not any(isinstance(op, ast.Eq | ast.NotEq | ast.In | ast.NotIn) for op in node.ops):
                continue
            left = node.left
            sql = (
                isinstance(left, ast.Attribute)
                and isinstance(left.value, ast.Name)
                and left.value.id[:1].isupper()
            )
            operands = [
                ast.unparse(x)
                for x in (node.left, *node.comparators)
                if not _constant(x)  # 'bearer', ('bearer', 'token')
            ]
            if not sql and any(_SECRET_WORDS.search(o) for o in operands):
                found.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
    assert found == []
    # and the comparisons that are made are the constant-time ones
    assert "hmac.compare_digest(record.digest, digest)" in (SRC / "auth.py").read_text()
    assert "hmac.compare_digest(" in (SRC / "dashboard/session.py").read_text()


# ---- injection -------------------------------------------------------------------------------

SQL_INJECTIONS = [
    "' OR '1'='1",
    "1; DROP TABLE servers; --",
    '"); DELETE FROM servers; --',
    "\u2019 OR \u20191\u2019=\u20191; DELETE FROM fields; --",  # typographic quotes
    "%' OR 1=1 --",  # a LIKE wildcard and a quote
    "x' UNION SELECT digest FROM api_keys --",
]
HEADER_INJECTIONS = ["\r\nSet-Cookie: x=1", "%0d%0aX-Injected: 1", "\nX-Injected: 1"]
INJECTIONS = SQL_INJECTIONS + HEADER_INJECTIONS


def clean(resp: TestResponse, what: str) -> TestResponse:
    """A 2xx/3xx/4xx answer whose headers are the app's own: nothing injected."""
    drain(resp)
    assert resp.status_code < 500, f"{what}: {resp.status} {resp.get_data()[:300]!r}"
    for name, value in resp.headers.items():
        assert "\r" not in value and "\n" not in value, (what, name, value)
        assert name.lower() != "x-injected", what
        if name.lower() == "set-cookie":
            assert value.startswith("monapi_session="), (what, value)
    return resp


def holds(doc: Any, value: str) -> bool:
    """Whether a JSON document has ``value`` as one of its strings (key or value), exactly."""
    if isinstance(doc, str):
        return doc == value
    if isinstance(doc, dict):
        return any(k == value or holds(v, value) for k, v in doc.items())
    if isinstance(doc, list):
        return any(holds(v, value) for v in doc)
    return False


@dataclass
class Injection:
    """A populated app (behind one trusted proxy, so X-Forwarded-* are read) for injection."""

    w: World
    spec: dict[str, Any]
    patch_field: int
    servers_before: dict[int, str]
    fields_before: set[int]

    def assert_unharmed(self) -> None:
        """The servers and fields there before are all still there, and the tables answer."""
        api, admin = self.w.api, self.w.admin
        now: dict[int, str] = {}
        for page in itertools.count(1):
            servers = api.get(f"/api/v1/servers?per_page=100&page={page}", headers=bearer(admin))
            now.update((s["id"], s["hostname"]) for s in servers.get_json()["items"])
            if page >= servers.get_json()["pages"]:
                break
        assert self.servers_before.items() <= now.items()
        fields = api.get("/api/v1/fields", headers=bearer(admin)).get_json()
        assert self.fields_before <= {f["id"] for f in fields["items"]}
        assert push(api, self.w.s1["api_key"], {"fields": {"load1": 2.0}}).status_code == 204
        stored = stored_text(self.w.app)  # every table is still there and readable
        assert "web-01" in stored


def make_injection(app: Flask, admin: str) -> Injection:
    w = make_world(app, admin)
    api = w.api
    for name in ("version", "note"):
        resp = api.post(
            "/api/v1/fields",
            json={"measurement": "app", "name": name, "type": "string"},
            headers=bearer(admin),
        )
        assert resp.status_code == 201
    patch_field = w.fresh_field()
    servers = api.get("/api/v1/servers?per_page=100", headers=bearer(admin)).get_json()["items"]
    fields = api.get("/api/v1/fields", headers=bearer(admin)).get_json()["items"]
    return Injection(
        w=w,
        spec=api.get("/api/v1/openapi.json").get_json(),
        patch_field=patch_field,
        servers_before={s["id"]: s["hostname"] for s in servers},
        fields_before={f["id"] for f in fields},
    )


@pytest.fixture
def injection(make: Callable[..., tuple[Flask, str]]) -> Injection:
    return make_injection(*make(proxy_hops=1, rate_limit_login="0"))


def resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def string_slots(
    spec: dict[str, Any], schema: dict[str, Any], base: Any, where: tuple[Any, ...] = ()
) -> list[tuple[tuple[Any, ...], str]]:
    """Where a body may hold a string, by its schema: (location, "value") for a string value,
    (location, "key") for a key of a map (labels, tags, fields). ``base`` must have every
    property of the schema (so that none is left out)."""
    schema = resolve(spec, schema)
    alternatives = [resolve(spec, a) for a in schema.get("anyOf", schema.get("oneOf", []))]
    if alternatives:
        if any(a.get("type") == "string" for a in alternatives):
            return [(where, "value")]
        objects = [a for a in alternatives if a.get("type") == "object"]
        # the object alternative that describes ``base`` (a point, not a batch of points)
        fits = [a for a in objects if set(a.get("properties", base)) >= set(base)]
        return string_slots(spec, (fits or objects)[0], base, where) if objects else []
    kind = schema.get("type")
    if kind == "string":
        return [(where, "value")]
    out: list[tuple[tuple[Any, ...], str]] = []
    if kind == "object":
        for name, sub in schema.get("properties", {}).items():
            assert name in base, f"the base body at {where} lacks {name!r}"
            out += string_slots(spec, sub, base[name], (*where, name))
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and not schema.get("properties"):
            assert base, f"the base body at {where} has no entry"
            for key in base:
                out.append(((*where, key), "key"))
                out += string_slots(spec, extra, base[key], (*where, key))
    if kind == "array":
        out += string_slots(spec, schema["items"], base[0], (*where, 0))
    return out


def injected(body: Any, where: tuple[Any, ...], kind: str, value: str) -> Any:
    """A copy of ``body`` with ``value`` at ``where`` (a value, or the name of a map's key)."""
    out = copy.deepcopy(body)
    parent = out
    for step in where[:-1]:
        parent = parent[step]
    last = where[-1]
    if kind == "key":
        parent[value] = parent.pop(last)
    else:
        parent[last] = value
    return out


def now_rfc3339() -> str:
    import datetime as dt

    return dt.datetime.now(dt.UTC).isoformat()


# Every JSON body of the API, valid and with every property set, the key to send it with, the
# path to send it to, and where what it stored is read back (from the reply):
# (method, documented path) -> (body, key, path, read-back path).
def json_operations(
    inj: Injection,
) -> dict[tuple[str, str], tuple[Callable[[], Any], str, str, Callable[[Any], str]]]:
    w = inj.w
    sid, fid = w.s1["id"], inj.patch_field
    server = f"/api/v1/servers/{sid}"
    rule = _fresh_rule(w)
    return {
        ("POST", "/api/v1/servers"): (
            lambda: {
                "hostname": w.name("inj"),
                "ip_address": "192.0.2.60",
                "labels": {"role": "web"},
                "interval": 60,
                "description": "d",
            },
            w.admin,
            "/api/v1/servers",
            lambda reply: f"/api/v1/servers/{reply['id']}",
        ),
        ("POST", "/api/register_server"): (
            lambda: {"hostname": w.name("legacy"), "ip_address": "192.0.2.61"},
            w.enroll,
            "/api/register_server",
            lambda reply: "/api/v1/servers?per_page=100",
        ),
        ("PATCH", "/api/v1/servers/{server_id}"): (
            lambda: {"labels": {"role": "web"}, "description": "d", "interval": 30},
            w.admin,
            server,
            lambda reply: server,
        ),
        ("POST", "/api/v1/fields"): (
            lambda: {
                "measurement": "inj",
                "name": w.name("f"),
                "type": "float",
                "unit": "u",
                "description": "d",
                "min": 0,
                "max": 10,
                "enabled": True,
            },
            w.admin,
            "/api/v1/fields",
            lambda reply: f"/api/v1/fields/{reply['id']}",
        ),
        ("PATCH", "/api/v1/fields/{id}"): (
            lambda: {"unit": "u", "description": "d", "min": 0, "max": 10, "enabled": True},
            w.admin,
            f"/api/v1/fields/{fid}",
            lambda reply: f"/api/v1/fields/{fid}",
        ),
        ("POST", "/api/v1/enrollment-tokens"): (
            lambda: {"name": "n", "expires_in": "1d", "max_uses": 5},
            w.admin,
            "/api/v1/enrollment-tokens",
            lambda reply: "/api/v1/enrollment-tokens",
        ),
        ("POST", "/api/v1/alerts"): (
            lambda: {**_rule_body(), "name": w.name("rule"), "kind": "threshold"},
            w.admin,
            "/api/v1/alerts",
            lambda reply: f"/api/v1/alerts/{reply['id']}",
        ),
        ("PATCH", "/api/v1/alerts/{id}"): (
            lambda: {**_rule_body(), "name": w.name("renamed")},
            w.admin,
            f"/api/v1/alerts/{rule}",
            lambda reply: f"/api/v1/alerts/{rule}",
        ),
        ("POST", "/api/v1/alerts/silences"): (
            lambda: {
                "rule_id": None,
                "server_id": sid,
                "ends_at": None,
                "duration": "1h",
                "comment": "c",
            },
            w.admin,
            "/api/v1/alerts/silences",
            lambda reply: f"/api/v1/alerts/silences/{reply['id']}",
        ),
        ("POST", "/api/v1/agent/heartbeat"): (
            lambda: {"agent_version": "1.0", "uptime": 5},
            w.s1["api_key"],
            "/api/v1/agent/heartbeat",
            lambda reply: server,
        ),
        ("POST", "/api/v1/data"): (
            lambda: {
                "measurement": "app",
                "timestamp": now_rfc3339(),
                "tags": {"role": "web"},
                "fields": {"version": "1.0"},
            },
            w.s1["api_key"],
            "/api/v1/data",
            lambda reply: f"{server}/latest",
        ),
    }


def test_injection_in_every_json_string_property_is_refused_or_stored_literally(
    injection: Injection,
) -> None:
    """Every string property of every JSON request body of the OpenAPI document (map keys
    included), set to each SQL and header injection: a clean 2xx/4xx; a value that was
    accepted is read back exactly as sent; the servers and fields are all still there."""
    inj, api = injection, injection.w.api
    operations = json_operations(inj)
    with_json = {
        (method.upper(), path)
        for path, item in inj.spec["paths"].items()
        for method, op in item.items()
        if "application/json" in op.get("requestBody", {}).get("content", {})
    }
    assert with_json == set(operations), "a JSON body without a base body in json_operations"
    accepted: list[str] = []
    for (method, documented), (base, key, path, read_back) in operations.items():
        operation = inj.spec["paths"][documented][method.lower()]
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        slots = string_slots(inj.spec, schema, base())
        assert slots, path
        for where, kind in slots:
            for value in INJECTIONS:
                body = injected(base(), where, kind, value)
                what = f"{method} {path} {kind} {where}={value!r}"
                resp = clean(api.open(path, method=method, json=body, headers=bearer(key)), what)
                assert resp.status_code in (200, 201, 204, 400, 409, 422), what
                if resp.status_code < 300:
                    accepted.append(what)
                    reply = resp.get_json() if resp.data else None
                    stored = api.get(read_back(reply), headers=bearer(inj.w.admin)).get_json()
                    assert holds(stored, value), f"{what}: stored as something else: {stored}"
    # Free-text properties take every value, quotes and control characters included.
    for free in ("description", "unit", "name", "agent_version", "labels', 'role", "tags', 'role"):
        assert any(f"('{free}'" in a for a in accepted), free
    assert any("('fields', 'version')" in a for a in accepted)  # a string field's value
    inj.assert_unharmed()


def _takes_string(schema: dict[str, Any]) -> bool:
    if schema.get("type") == "string":
        return True
    if schema.get("type") == "array":
        return _takes_string(schema.get("items", {}))
    return any(_takes_string(a) for a in schema.get("anyOf", []))


SERVER_KEY_PATHS = ("/write", "/api/v2/write", "/query", "/api/v1/data", "/api/v1/agent/")


def test_injection_in_every_query_and_path_parameter_is_harmless(injection: Injection) -> None:
    """Every query parameter that takes text and every path parameter of the OpenAPI document,
    set to each injection: a clean 2xx/4xx, filters match nothing (not everything), no path
    reaches another resource, and the data is unharmed."""
    inj, api, w = injection, injection.w.api, injection.w
    token_id = w.fresh_token()
    ids = {"server_id": w.s1["id"], "id": inj.patch_field, "token_id": token_id}
    checked: set[tuple[str, str, str]] = set()
    for documented, item in inj.spec["paths"].items():
        for method, op in item.items():
            server_key = documented.startswith(SERVER_KEY_PATHS)
            key = w.s1["api_key"] if server_key else w.admin
            body: dict[str, Any] = {}
            if method == "post" and documented in ("/write", "/api/v2/write"):
                body = {"data": LP_BODY, "content_type": "text/plain"}
            for param in op.get("parameters", []):
                name, where = param["name"], param["in"]
                if where == "query":
                    assert "requestBody" not in op or body, (method, documented, name)
                    if not _takes_string(param["schema"]):
                        continue
                for value in INJECTIONS:
                    what = f"{method.upper()} {documented} {where} {name}={value!r}"
                    if where == "query":
                        path = documented.format(**ids) + f"?{name}={quote(value, safe='')}"
                    else:  # path: the routes' converters and patterns refuse it
                        path = documented.format(**{**ids, name: quote(value, safe="")})
                    resp = clean(
                        api.open(path, method=method.upper(), headers=bearer(key), **body), what
                    )
                    checked.add((method, documented, name))
                    if where == "path":
                        assert resp.status_code in (404, 422), what
                    reply = resp.get_json(silent=True) if resp.status_code == 200 else None
                    if documented == "/api/v1/servers" and name in ("hostname", "label"):
                        assert reply is None or reply["total"] == 0, what
                    if documented == "/api/v1/fields" and name == "measurement":
                        assert reply is None or reply["items"] == [], what
    # every parameter that takes text was tried, path parameters of every method included
    assert {("get", "/api/v1/servers", "hostname"), ("get", "/api/v1/servers", "label")} <= checked
    assert ("get", "/api/v1/servers/{server_id}/metrics", "fields") in checked
    assert ("delete", "/api/v1/enrollment-tokens/{token_id}", "token_id") in checked
    assert ("delete", "/api/v1/servers/{server_id}", "server_id") in checked
    assert ("post", "/write", "p") in checked and ("get", "/query", "q") in checked
    # what the paths would have named is untouched
    tokens = api.get("/api/v1/enrollment-tokens", headers=bearer(w.admin)).get_json()["items"]
    assert any(t["id"] == token_id and t["active"] for t in tokens)
    inj.assert_unharmed()


# The headers monapi reads, as WSGI environ keys, with a value that is valid on its own (the
# injection is tried alone and appended to it).
READ_HEADERS = {
    "HTTP_AUTHORIZATION": "Bearer {key}",
    "HTTP_X_API_KEY": "{key}",
    "HTTP_X_REQUEST_ID": "trace-1",
    "HTTP_X_FORWARDED_FOR": "198.51.100.7",
    "HTTP_X_FORWARDED_HOST": "monapi.example",
    "HTTP_X_FORWARDED_PROTO": "https",
    "CONTENT_TYPE": "{content_type}",
    "HTTP_CONTENT_ENCODING": "identity",
    "HTTP_IF_NONE_MATCH": '"abc"',
    "HTTP_HOST": "localhost",
    "HTTP_ORIGIN": HTTPS,
    "HTTP_HX_REQUEST": "true",
    "HTTP_USER_AGENT": "agent/1.0",
}


def test_injection_in_every_header_monapi_reads_is_harmless(tmp_path: Path) -> None:
    """Each header monapi reads, set to each header injection and two SQL ones (raw CR/LF
    included, as a proxy that does not check could pass them), alone and after a valid value,
    on the hot path, the API, the InfluxDB endpoints and the dashboard: a clean 2xx/4xx with no
    injected header, and the data unharmed. (Headers reach no SQL but the session's address:
    the embedded store is enough here.)"""
    app, admin = make_app(tmp_path / "data", proxy_hops=1, rate_limit_login="0")
    inj = make_injection(app, admin)
    w = inj.w
    k1 = w.s1["api_key"]
    signed_in = w.session
    requests: list[tuple[str, Callable[[dict[str, str]], TestResponse]]] = []

    def api_call(
        method: str,
        path: str,
        key: str,
        content_type: str | None = None,
        body: Callable[[], dict[str, Any]] = dict,
    ) -> Callable[[dict[str, str]], TestResponse]:
        def call(environ: dict[str, str]) -> TestResponse:
            env = {"HTTP_AUTHORIZATION": f"Bearer {key}", **environ}
            if content_type is not None:
                env.setdefault("CONTENT_TYPE", content_type)
            return w.api.open(path, method=method, environ_overrides=env, **body())

        return call

    def page(method: str, path: str, form: dict[str, str] | None = None) -> Callable[..., Any]:
        def call(environ: dict[str, str]) -> TestResponse:
            data = {**form, "csrf_token": csrf_of(w.app, signed_in)} if form is not None else None
            return signed_in.open(path, method=method, data=data, environ_overrides=environ)

        return call

    point = json.dumps({"fields": {"load1": 1.5}}).encode()
    host = {"ip_address": "192.0.2.9"}
    requests += [
        (
            "hot path push",
            api_call("POST", "/api/v1/data", k1, "application/json", lambda: {"data": point}),
        ),
        ("agent config", api_call("GET", "/api/v1/agent/config", k1)),
        ("line protocol", api_call("POST", "/write", k1, "text/plain", lambda: {"data": LP_BODY})),
        ("server list", api_call("GET", "/api/v1/servers?hostname=web", w.admin)),
        (
            "registration",
            api_call(
                "POST",
                "/api/v1/servers",
                w.enroll,
                body=lambda: {"json": {**host, "hostname": w.name("hdr")}},
            ),
        ),
        ("overview page", page("GET", "/")),
        ("token page", page("POST", "/enrollment", {"name": "headers"})),
        ("log-in page", lambda env: anonymous(w.app).open("/login", environ_overrides=env)),
        ("log-in", lambda env: _log_in_with(w.app, env)),
    ]
    for what, call in requests:
        for header, template in READ_HEADERS.items():
            valid = template.format(key=k1, content_type="application/json")
            for value in HEADER_INJECTIONS + SQL_INJECTIONS[:2]:
                for sent in (value, valid + value):
                    clean(call({header: sent}), f"{what}: {header}={sent!r}")
    # credentials in the query string (InfluxDB's u and p) too
    for value in INJECTIONS:
        path = f"/write?u={quote(value, safe='')}&p={quote(value, safe='')}"
        resp = clean(w.api.post(path, data=LP_BODY, content_type="text/plain"), path)
        assert resp.status_code == 401
    inj.assert_unharmed()


def _log_in_with(app: Flask, environ: dict[str, str]) -> TestResponse:
    b = anonymous(app)
    data = {"csrf_token": csrf_of(app, b), "username": "alice", "password": PASSWORD}
    return b.post("/login", data=data, environ_overrides=environ)


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_injected_line_breaks_cannot_forge_a_log_line(
    tmp_path: Path, debug_logs: Captured, log_format: str
) -> None:
    """Paths and values a client sends end up in log lines (the access log has the path): in
    either log format each record stays one line, whatever line breaks the client put in, so
    nobody can add a line that looks like monapi's own."""
    app, admin = make_app(tmp_path / "data", log_level="DEBUG", log_format=log_format)
    api = app.test_client(use_cookies=False)
    forged = "2026-01-01 00:00:00,000 INFO monapi.auth: admin token accepted"
    for breaker in ("%0d%0a", "%0a", "%0d", "%e2%80%a8", "%c2%85", "%0b%0c"):
        clean(api.get(f"/nope{breaker}{quote(forged)}"), breaker)
        clean(api.get(f"/api/v1/servers/1{breaker}x", headers=bearer(admin)), breaker)
        clean(api.get(f"/login{breaker}x"), breaker)
    handler = next(h for h in logging.getLogger("monapi").handlers if getattr(h, "_monapi", False))
    access = [r for r in debug_logs.records if r.name == "monapi.access"]
    assert len(access) >= 18
    for record in access:
        line = handler.format(record)
        assert not re.search(r"[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]", line), line


def test_injection_in_every_dashboard_input_is_harmless(injection: Injection) -> None:
    """Every form field and query parameter of the dashboard's pages, and its path parameters,
    set to each injection: a clean answer (no 5xx, nothing injected, redirects stay on the
    site), a value the form accepted is stored as sent (less surrounding white space, which
    every form strips), and the data is unharmed."""
    inj, w = injection, injection.w
    b = w.session
    sid, fid = w.s1["id"], inj.patch_field
    # path, a valid form, its free-text fields, where they are read back
    forms: list[tuple[str, dict[str, str], set[str], str]] = [
        (
            "/fields/new",
            {
                "measurement": "dash",
                "name": "n",
                "type": "float",
                "unit": "u",
                "description": "d",
                "min": "0",
                "max": "1",
                "enabled": "on",
            },
            {"unit", "description"},
            "/api/v1/fields?measurement=dash",
        ),
        (
            f"/fields/{fid}/edit",
            {"unit": "u", "description": "d", "min": "0", "max": "1", "enabled": "on"},
            {"unit", "description"},
            f"/api/v1/fields/{fid}",
        ),
        (
            "/enrollment",
            {"name": "n", "expires_in": "1d", "max_uses": "3"},
            {"name"},
            "/api/v1/enrollment-tokens",
        ),
        (f"/servers/{sid}/delete", {"confirm_hostname": "not-web-01"}, set(), ""),
        ("/login", {"username": "alice", "password": PASSWORD, "next": "/fields"}, set(), ""),
    ]
    stored_literally: list[str] = []
    for path, valid, free_text, read_back in forms:
        for name in valid:
            for value in INJECTIONS:
                form = {**valid, name: value}
                if path == "/fields/new" and name != "name":
                    form["name"] = w.name("n")
                client = anonymous(w.app) if path == "/login" else b
                form["csrf_token"] = csrf_of(w.app, client)
                what = f"POST {path} {name}={value!r}"
                resp = clean(client.post(path, data=form), what)
                location = resp.headers.get("Location", "/")
                assert location.startswith("/") and not location.startswith("//"), what
                if name in free_text and resp.status_code < 400:
                    stored = w.api.get(read_back, headers=bearer(w.admin)).get_json()
                    assert holds(stored, value.strip()), f"{what}: stored as {stored}"
                    stored_literally.append(f"{path} {name}")
    assert len(stored_literally) >= 15, stored_literally
    pages = {
        "/": ["q", "status", "label", "sort", "order", "page", "per_page"],
        f"/servers/{sid}": ["range", "start", "end", "tz"],
        f"/servers/{sid}/series": ["fields", "start", "end"],
        "/fields": ["show"],
        "/login": ["next"],
    }
    for path, names in pages.items():
        for name in names:
            for value in INJECTIONS:
                query = {name: value}
                if name in ("start", "end", "tz"):
                    query = {"start": "2026-01-01T00:00", "end": "2026-01-02T00:00", **query}
                clean(b.get(path, query_string=query), f"GET {path} {name}={value!r}")
    for value in INJECTIONS:
        token = quote(value, safe="")
        resp = clean(
            b.post(f"/enrollment/{token}/revoke", data={"csrf_token": csrf_of(w.app, b)}), token
        )
        assert resp.status_code in (302, 404), token
        clean(b.get(f"/servers/{token}"), token)
        clean(b.get(f"/fields/{token}/edit"), token)
    assert b.get("/").status_code == 200  # still signed in
    inj.assert_unharmed()


# ---- no secret or stack trace in an error body ------------------------------------------------

SECRET_KEY = "sk-" + uuid.uuid4().hex + uuid.uuid4().hex
PEPPER = "pp-" + uuid.uuid4().hex + uuid.uuid4().hex
DB_PASSWORD = "Db-Pw-" + uuid.uuid4().hex[:12]
ENGINE_PASSWORD = "Engine-Pw-" + uuid.uuid4().hex[:12]


def assert_no_leak(resp: TestResponse, what: str, secrets: list[str]) -> str:
    """The body and headers of an error answer: no traceback, no path of the source tree, none
    of the secrets."""
    drain(resp)
    assert resp.status_code >= 400, what
    shown = "\n".join(f"{k}: {v}" for k, v in resp.headers.items()) + resp.get_data(as_text=True)
    for bad in ("Traceback", 'File "', str(SRC), "site-packages", '.py", line', *secrets):
        assert bad not in shown, f"{what}: {bad!r} in {shown[:500]}"
    return shown


def test_error_answers_show_no_traceback_source_path_or_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """4xx of every kind and 500s from a failure deep inside (API, hot path, dashboard), whose
    exception text names the secret key, the pepper, a key and a source file: the answer says
    only what the client may know."""
    app, admin = make_app(
        tmp_path / "data", secret_key=SECRET_KEY, key_pepper=PEPPER, rate_limit_login="0"
    )
    w = make_world(app, admin)
    api, k1 = w.api, w.s1["api_key"]
    secrets = [SECRET_KEY, PEPPER, secret_part(admin), secret_part(k1), secret_part(w.enroll)]
    wrong = f"mka_{admin.split('_')[1]}_{'Q' * 43}"
    json_h = {**bearer(k1), "Content-Type": "application/json"}
    four_xx = {
        "400 bad JSON": api.post("/api/v1/data", data=b"{", headers=json_h),
        "400 line protocol": api.post("/write", data=b"cpu x=\n", headers=bearer(k1)),
        "400 query": api.get("/query?q=DROP+DATABASE+x", headers=bearer(k1)),
        "401 no key": api.get("/api/v1/servers"),
        "401 wrong secret": api.get("/api/v1/servers", headers=bearer(wrong)),
        "401 Basic": api.post("/write", data=LP_BODY, headers={"Authorization": "Basic !!"}),
        "403": api.get("/api/v1/servers", headers=bearer(k1)),
        "404": api.get("/api/v1/servers/9999", headers=bearer(admin)),
        "404 path": api.get("/no/such/page"),
        "405": api.delete("/api/v1/overview", headers=bearer(admin)),
        "409": api.post(
            "/api/v1/servers",
            json={"hostname": "web-01", "ip_address": "192.0.2.1"},
            headers=bearer(admin),
        ),
        "413": api.post("/api/v1/data", data=b"{" + b" " * (11 << 20) + b"}", headers=json_h),
        "415": api.post("/api/v1/data", data=b"x", headers={**bearer(k1), "Content-Type": "x/y"}),
        "422": api.post("/api/v1/data", json={"fields": {"nope": 1}}, headers=bearer(k1)),
        "422 schema": api.post("/api/v1/fields", json={"type": 1}, headers=bearer(admin)),
        "dashboard 404": w.session.get("/servers/9999"),
        "dashboard 400": w.session.post("/enrollment", data={"csrf_token": "x"}),
        "log-in 401": anonymous(app).post("/login", data={"username": "alice", "password": "x"}),
    }
    for what, resp in four_xx.items():
        assert resp.status_code == int(what[:3]) if what[0].isdigit() else resp.status_code >= 400
        assert_no_leak(resp, what, [*secrets, wrong])

    def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            f"failed with {SECRET_KEY} {PEPPER} {admin} {k1} at {SRC / 'services' / 'x.py'}"
        )

    from monapi.dashboard import overview
    from monapi.services import servers as server_service

    store = app.extensions["monapi.tsdb"]
    monkeypatch.setattr(server_service, "list_servers", explode)
    monkeypatch.setattr(overview, "fleet", explode)
    monkeypatch.setattr(store, "write", explode)
    monkeypatch.setattr(store, "latest", explode)
    five_xx = {
        "API": api.get("/api/v1/servers", headers=bearer(admin)),
        "API read": api.get(f"/api/v1/servers/{w.s1['id']}/latest", headers=bearer(admin)),
        "hot path": push(api, k1, {"fields": {"load1": 1.0}}),
        "line protocol": api.post("/write", data=LP_BODY, headers=bearer(k1)),
        "dashboard": w.session.get("/"),
    }
    for what, resp in five_xx.items():
        assert resp.status_code == 500, (what, resp.get_data()[:300])
        assert "internal error" in assert_no_leak(resp, what, secrets), what


@pytest.mark.parametrize(
    "setting", ["influxdb_url", "victoriametrics_url", "victoriametrics_select_url"]
)
def test_an_engine_url_with_credentials_is_refused_without_showing_them(
    tmp_path: Path, setting: str
) -> None:
    """An engine URL written with a user and password (MONAPI_INFLUXDB_URL=http://u:p@host):
    monapi never sends them (requests go to the host and port; InfluxDB's credentials have
    their own settings), so such a URL could only leak them, in a 503 or the log. Start-up
    refuses it, naming the setting and what to use, never the password."""
    url = f"http://monapi:{ENGINE_PASSWORD}@127.0.0.1:{engines.free_port()}"
    with pytest.raises(ConfigError) as exc:
        load_settings({"data_dir": tmp_path, setting: url})
    message = str(exc.value)
    assert f"MONAPI_{setting.upper()}=" in message and "credentials in the URL" in message
    assert "MONAPI_INFLUXDB_PASSWORD" in message
    assert ENGINE_PASSWORD not in message and "***@127.0.0.1" in message


def test_a_secret_setting_is_never_repeated_in_a_start_up_error(tmp_path: Path) -> None:
    """A bad value of a secret setting (a key pepper too short for production, here a value of
    the wrong kind) is named, never shown."""
    with pytest.raises(ConfigError) as exc:
        load_settings({"data_dir": tmp_path, "key_pepper": 12345678901234567890})
    assert "MONAPI_KEY_PEPPER='***'" in str(exc.value)
    assert "12345678901234567890" not in str(exc.value)


class TcpProxy:
    """A TCP relay on a free loopback port to ``upstream``; ``close()`` refuses new connections
    and cuts the open ones (the server behind it then looks unreachable)."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.closed = False
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self.lock:
                if self.closed:  # closed while this connection was being made
                    client.close()
                    server.close()
                    return
                self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with self.lock:
            self.closed = True
            with contextlib.suppress(OSError):
                self.listener.shutdown(socket.SHUT_RDWR)  # ends the accept() that waits
            self.listener.close()
            for s in self.sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
        self.thread.join(5)


def test_a_postgresql_that_stops_answering_shows_no_url_or_password(
    tmp_path: Path, pg_databases: engines.PostgresDatabases, debug_logs: Captured
) -> None:
    """The configuration store's URL has a password (PostgreSQL ignores it under trust auth);
    once the database is unreachable, no answer (API, hot path, dashboard, /readyz) and no log
    line shows the password or a traceback."""
    url = pg_databases.new()
    proxy: TcpProxy | None = None
    try:
        parts = urlsplit(url.replace("postgresql+psycopg", "http"))
        assert parts.hostname and parts.port
        proxy = TcpProxy(parts.hostname, parts.port)
        with_password = (
            f"postgresql+psycopg://{parts.username}:{DB_PASSWORD}@127.0.0.1:{proxy.port}"
            f"{parts.path}"
        )
        app, admin = make_app(tmp_path / "data", database_url=with_password, rate_limit_login="0")
        w = make_world(app, admin)
        assert w.api.get("/readyz").status_code == 200
        app.extensions["monapi.cache"].flush_seen()  # nothing left to write at shut-down
        proxy.close()
        secrets = [DB_PASSWORD, with_password, secret_part(admin)]
        answers = {
            "readyz": w.api.get("/readyz"),
            "API": w.api.get("/api/v1/servers", headers=bearer(admin)),
            "push": push(w.api, w.s1["api_key"], {"fields": {"load1": 1.0}}),
            "registration": w.api.post(
                "/api/v1/servers",
                json={"hostname": "late", "ip_address": "192.0.2.5"},
                headers=bearer(w.enroll),
            ),
            "dashboard": w.session.get("/"),
            "log-in": _log_in_with(app, {}),
        }
        for what, resp in answers.items():
            assert resp.status_code >= 500, (what, resp.status_code)
            assert_no_leak(resp, what, secrets)
        formats = [logs.JSONFormatter(), logs.TextFormatter("%(levelname)s: %(message)s")]
        written = [f.format(r) for r in debug_logs.records for f in formats]
        assert not any(DB_PASSWORD in line for line in written)
    finally:
        while _created:
            shutdown(_created.pop())
        if proxy is not None:
            proxy.close()
        pg_databases.drop(url)


# ---- headers ----------------------------------------------------------------------------------

REFERRER_POLICIES = {
    "no-referrer",
    "same-origin",
    "strict-origin",
    "strict-origin-when-cross-origin",
}


def assert_page_headers(resp: TestResponse, what: str, *, secure: bool = True) -> None:
    """The dashboard's security headers, and the session cookie's flags if one is set."""
    h = resp.headers
    csp = dict(d.strip().split(" ", 1) for d in h.get("Content-Security-Policy", "").split(";"))
    assert csp.get("script-src") == "'self'", (what, csp)
    assert csp.get("frame-ancestors") == "'none'" and csp.get("object-src") == "'none'", what
    assert csp.get("base-uri") == "'none'" and csp.get("form-action") == "'self'", what
    assert "unsafe-eval" not in h["Content-Security-Policy"], what
    assert h.get("X-Frame-Options") == "DENY", what
    assert h.get("X-Content-Type-Options") == "nosniff", what
    assert h.get("Referrer-Policy") in REFERRER_POLICIES, what
    assert h.get("Cache-Control") in ("no-store", "public, max-age=3600"), what
    for cookie in h.getlist("Set-Cookie"):
        flags = {p.strip().split("=")[0].lower(): p.strip() for p in cookie.split(";")[1:]}
        assert "httponly" in flags and flags.get("samesite") in ("SameSite=Lax", "SameSite=Strict")
        assert ("secure" in flags) == secure, (what, cookie)


def test_every_dashboard_answer_carries_the_security_headers(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every dashboard route (GET and POST, from the url_map, signed in), the log-in page and
    its refusals, and the error pages (404, 400, 422, 429, 500): CSP without inline scripts,
    no framing, nosniff, a referrer policy, and a cookie that is HttpOnly, SameSite and
    Secure."""
    endpoints = app_routes(world.app)
    answers: dict[str, TestResponse] = {}
    for (method, path), endpoint in endpoints.items():
        if endpoint.startswith("dashboard."):
            t = world.target(method, path)
            call = REQUESTS[(method, path)](world, t)
            resp = send(world, method, call, None, dashboard=True, signed_in=True)
            answers[f"{method} {path}"] = resp
            answers[f"{method} {path}, signed out"] = send(
                world, method, call, None, dashboard=True, signed_in=False
            )
    assert len(answers) >= 2 * 20
    b, app = world.session, world.app
    answers |= {
        "log-in page": drain(browser(app).get("/login")),
        "wrong password": _log_in_with_password(app, "wrong password"),
        "404 server": drain(b.get("/servers/999999")),
        "404 field": drain(b.get("/fields/999999/edit")),
        "400 CSRF": drain(b.post("/enrollment", data={"csrf_token": "wrong"})),
        "400 range": drain(b.get("/servers/1?start=x&end=y")),
        "422 form": drain(b.post("/fields/new", data={"csrf_token": csrf_of(app, b)})),
        "htmx 401": drain(browser(app).get("/", headers={"HX-Request": "true"})),
    }
    for _ in range(5):  # the lock-out after repeated wrong passwords
        answers["429 locked"] = _log_in_with_password(app, "wrong again")
    assert answers["429 locked"].status_code == 429

    def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    from monapi.dashboard import overview

    monkeypatch.setattr(overview, "fleet", explode)
    answers["500"] = drain(b.get("/"))
    statuses = {resp.status_code for resp in answers.values()}
    assert {200, 302, 400, 401, 404, 422, 429, 500} <= statuses
    for what, resp in answers.items():
        assert_page_headers(resp, what)


def _log_in_with_password(app: Flask, password: str) -> TestResponse:
    b = anonymous(app)
    data = {"csrf_token": csrf_of(app, b), "username": "alice", "password": password}
    return drain(b.post("/login", data=data))


@pytest.mark.parametrize("cookie_secure", [True, False])
def test_the_session_cookie_is_secure_exactly_when_configured(
    tmp_path: Path, cookie_secure: bool
) -> None:
    """MONAPI_COOKIE_SECURE decides the Secure flag of every cookie the dashboard sets (the
    anonymous one of the log-in page, the signed-in one, a refreshed one); HttpOnly and
    SameSite are always there."""
    app, _ = make_app(tmp_path / "data", cookie_secure=cookie_secure, rate_limit_login="0")
    add_user(app)
    b = browser(app)
    answers = [drain(b.get("/login"))]
    data = {"csrf_token": csrf_of(app, b), "username": "alice", "password": PASSWORD}
    answers.append(drain(b.post("/login", data=data)))
    answers.append(drain(b.get("/fields")))
    assert all(resp.headers.getlist("Set-Cookie") for resp in answers[:2])
    for i, resp in enumerate(answers):
        assert_page_headers(resp, str(i), secure=cookie_secure)


def test_every_api_answer_carries_nosniff_and_sets_no_cookie(world: World) -> None:
    """Every route outside the dashboard, with a credential it takes and with none, plus the
    hot path's 204, a 404 and a 405: ``X-Content-Type-Options: nosniff``, no cookie, and
    HTML answers (the API documentation) cannot be framed."""
    documented = documented_matrix()
    endpoints = app_routes(world.app)
    answers: dict[str, TestResponse] = {}
    for (method, path), endpoint in endpoints.items():
        if endpoint.startswith("dashboard."):
            continue
        row = documented[(method, path)]
        for column in ("none", "admin", "this server"):
            t = world.target(method, path)
            call = REQUESTS[(method, path)](world, t)
            [(_, key)] = credentials(world, column, t)
            resp = send(world, method, call, key, dashboard=False, signed_in=False)
            assert resp.status_code == int(row[column]), (method, path, column)
            answers[f"{method} {path} [{column}]"] = resp
    assert "POST /api/v1/data [this server]" in answers  # the hot path's 204
    answers["404"] = drain(world.api.get("/no/such/page"))
    answers["405"] = drain(world.api.put("/api/v1/servers", headers=bearer(world.admin)))
    answers["404 dashboard-like"] = drain(world.api.get("/servers/abc"))
    for what, resp in answers.items():
        assert resp.headers.get("X-Content-Type-Options") == "nosniff", what
        assert "Set-Cookie" not in resp.headers, what
        if resp.mimetype == "text/html" and resp.data:
            assert resp.headers.get("X-Frame-Options") == "DENY", what


# ---- CSRF -------------------------------------------------------------------------------------

STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}


def test_every_state_changing_dashboard_route_refuses_a_forged_request_and_changes_nothing(
    world: World,
) -> None:
    """Every dashboard route that takes POST, PUT, PATCH or DELETE (from the url_map), from a
    signed-in browser: without the CSRF token, with a wrong or empty one, with the token of
    another browser, and with the right token from another origin, the answer is the
    documented 400 error page and the configuration store is exactly as before; the same
    request with the right token then gets its documented answer."""
    app, b = world.app, world.session
    documented = documented_matrix()
    routes = [
        (method, path)
        for (method, path), endpoint in app_routes(app).items()
        if endpoint.startswith("dashboard.") and method in STATE_CHANGING
    ]
    assert {m for m, _ in routes} == {"POST"} and len(routes) >= 11
    other_browser = csrf_of(app, anonymous(app))
    for method, path in routes:
        t = world.target(method, path)
        call = REQUESTS[(method, path)](world, t)
        form = dict(call.form or {})
        app.extensions["monapi.cache"].flush_seen()
        before = stored_text(app)
        forged: dict[str, tuple[dict[str, str], dict[str, str]]] = {
            "no token": (form, {}),
            "empty token": ({**form, "csrf_token": ""}, {}),
            "wrong token": ({**form, "csrf_token": "A" * 43}, {}),
            "another browser's token": ({**form, "csrf_token": other_browser}, {}),
            "wrong header": (form, {"X-CSRF-Token": "A" * 43}),
            "another site": (
                {**form, "csrf_token": csrf_of(app, b)},
                {"Origin": "https://evil.example"},
            ),
        }
        for what, (data, headers) in forged.items():
            resp = drain(b.open(call.path, method=method, data=data, headers=headers))
            assert resp.status_code == 400, (method, path, what, resp.status_code)
            assert resp.mimetype == "text/html" and "Reload the page" in resp.text
            assert_page_headers(resp, f"{path} {what}")
        assert stored_text(app) == before, f"{method} {path} changed something"
        resp = send(world, method, call, None, dashboard=True, signed_in=True)
        assert answer(resp, call.path) == documented[(method, path)]["session"], (method, path)
    assert drain(b.get("/")).status_code == 200  # still signed in


def test_a_head_request_is_a_get_it_changes_nothing_and_signs_no_one_in(world: World) -> None:
    """HEAD skips the CSRF check (it is a safe method), so a route that takes GET and POST must
    answer it as the GET it is. With the form body of a valid POST and no token, from a
    signed-in browser and from one that is not: the GET's answer, and the configuration store
    exactly as before (no field changed, no session made)."""
    app = world.app
    both = [
        path
        for (method, path), endpoint in app_routes(app).items()
        if endpoint.startswith("dashboard.") and method == "GET" and ("POST", path) in REQUESTS
    ]
    assert {"/login", "/fields/new", "/fields/{field_id}/edit"} <= set(both)
    for path in both:
        t = world.target("POST", path)
        post = REQUESTS[("POST", path)](world, t)
        get = REQUESTS[("GET", path)](world, t)
        for b in (world.session, anonymous(app)):
            expected = answer(drain(b.get(get.path)), get.path)
            app.extensions["monapi.cache"].flush_seen()
            before = stored_text(app)
            resp = drain(b.open(post.path, method="HEAD", data=post.form))
            assert answer(resp, post.path) == expected, (path, resp.status_code)
            assert resp.data == b""
            assert stored_text(app) == before, f"HEAD {path} changed something"
