"""Schemathesis over the served OpenAPI document, against the real app (WSGI, real SQLite files).

The requirement: no 5xx, and no response that breaks the spec, for generated valid and invalid
requests to every operation. Every built-in check of schemathesis runs on every operation:
not_a_server_error, status_code_conformance, content_type_conformance,
response_headers_conformance, response_schema_conformance (formats included),
positive_data_acceptance, negative_data_rejection, missing_required_header, unsupported_method,
allow_header_conformance, ignored_auth (and the stateful ones, which have nothing to look at
here). The one adjustment is in CONFIG: a few operations may also refuse schema-valid input with
the status their business validation uses, each with its reason.

Each test runs with the configuration in SQLite and in PostgreSQL (the PostgreSQL runs
generate fewer examples: a fresh database per operation costs more there).

- test_conforms_to_openapi: examples, coverage and fuzzing phases, positive and negative data,
  with the right key (admin, or a server key for /data and /agent/*), on a fresh app per
  operation that already holds servers, fields, points and an enrollment token.
- test_conforms_statefully: sequences of calls that follow the document's OpenAPI links (a
  server, field or enrollment token created, then read, changed, disabled, deleted...), on a
  fresh app per sequence, with the same checks plus the stateful ones (a created resource can
  be read; a deleted one is gone).
- test_refuses_missing_and_wrong_keys: valid requests with no key or a wrong one: 401 or 403,
  as documented.
- test_too_large_bodies_answer_as_documented: the 413 of every operation with a body.
- test_found_by_the_run: one request for each bug these runs found, now fixed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.schemas import OpenApiSchema

from monapi import create_app
from monapi.app import shutdown
from monapi.bootstrap import initialize
from monapi.settings import load_settings

from . import engines
from .conftest import bearer, make_app, push, register_server

SPEC_PATH = "/api/v1/openapi.json"
# Fixed, so that a failure reproduces; FUZZ_SEED=<n> and FUZZ_EXAMPLES=<n> explore further.
SEED = int(os.environ.get("FUZZ_SEED", "20240601"))
MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
# The PostgreSQL runs: every operation (and every stateful sequence) gets a database of its own.
PG_MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES_PG", "15"))
# Stateful: sequences per run, and calls per sequence at most.
STATEFUL_SEQUENCES = int(os.environ.get("FUZZ_SEQUENCES", "25"))
PG_STATEFUL_SEQUENCES = int(os.environ.get("FUZZ_SEQUENCES_PG", "12"))
STATEFUL_STEPS = int(os.environ.get("FUZZ_STEPS", "8"))

# positive_data_acceptance: a request valid by the schema must not be refused, except with these
# statuses (schemathesis' default list) ...
_ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]


def _also_refused_with(method: str, path: str, status: str) -> dict[str, Any]:
    """... and, for one operation, a status its business validation answers for requests that
    JSON Schema cannot tell from good ones (the reason is at each use)."""
    # One filter, the operation's name: separate include-method and include-path filters
    # would each match on their own (every POST would get the first POST rule).
    return {
        "include-name": f"{method} {path}",
        "checks": {"positive_data_acceptance": {"expected-statuses": [*_ACCEPTED, status]}},
    }


def _config(max_examples: int) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {**_CONFIG, "generation": {**_GENERATION, "max-examples": max_examples}}
    )


_GENERATION = {
    "mode": "all",
    "database": "none",
    # Keys are set by the test (below), never generated.
    "with-security-parameters": False,
}
_CONFIG: dict[str, Any] = {
    "seed": SEED,
    "operations": [
        # Values are checked against the field configuration (unknown fields, types, min/max)
        # and the timestamp window; a point refused for that is a 422 (nothing stored).
        _also_refused_with("POST", "/api/v1/data", "422"),
        # fields= must name configured fields; end must follow start; range and step limits.
        _also_refused_with("GET", "/api/v1/servers/{server_id}/metrics", "400"),
        # min <= max, and no bounds on bool/string fields: across properties of the body.
        _also_refused_with("POST", "/api/v1/fields", "422"),
        # The same, against the field as stored (its type and its other bound).
        _also_refused_with("PATCH", "/api/v1/fields/{id}", "422"),
        # expires_in must lie between 1 second and 10 years, also when written as text (30d).
        _also_refused_with("POST", "/api/v1/enrollment-tokens", "422"),
        # Each kind of alert rule needs and refuses its own keys, server_ids and labels exclude
        # each other, and the field must be configured with a type its aggregation fits.
        _also_refused_with("POST", "/api/v1/alerts", "422"),
        _also_refused_with("PATCH", "/api/v1/alerts/{id}", "422"),
        # A silence names a rule or a server (that exist) and ends_at or duration, in the future.
        _also_refused_with("POST", "/api/v1/alerts/silences", "422"),
        # The body is line protocol, which JSON Schema cannot describe: text that does not
        # parse, or lines the field configuration refuses, are InfluxDB's 400.
        _also_refused_with("POST", "/write", "400"),
        _also_refused_with("POST", "/api/v2/write", "400"),
    ],
}
CONFIG = _config(MAX_EXAMPLES)
PG_CONFIG = _config(PG_MAX_EXAMPLES)


@contextmanager
def _without_monapi_env() -> Iterator[None]:
    saved = {k: v for k, v in os.environ.items() if k.startswith("MONAPI_")}
    for k in saved:
        del os.environ[k]
    try:
        yield
    finally:
        os.environ.update(saved)


# For the 401/403 test: every secured operation with valid inputs and refused credentials.
AUTH_CONFIG = schemathesis.Config.from_dict(
    {
        "seed": SEED,
        "generation": {
            "mode": "positive",
            "max-examples": 5,
            "database": "none",
            "with-security-parameters": False,
        },
        "phases": {"examples": {"enabled": False}, "coverage": {"enabled": False}},
    }
)


def _load_schemas(*configs: schemathesis.Config) -> list[OpenApiSchema]:
    """The spec as the app serves it. It does not depend on data, so a throwaway app (built at
    collection, outside the fixtures) serves it; every test then runs against its own app."""
    with tempfile.TemporaryDirectory() as tmp, _without_monapi_env():
        overrides = {"data_dir": Path(tmp), "log_level": "WARNING"}
        initialize(load_settings(overrides))
        app = create_app(overrides)
        try:
            return [schemathesis.openapi.from_wsgi(SPEC_PATH, app, config=c) for c in configs]
        finally:
            shutdown(app)


# The stateful schema has no hook: its path parameters come from the links.
schema, pg_schema, stateful_schema, auth_schema = _load_schemas(
    CONFIG, PG_CONFIG, CONFIG, AUTH_CONFIG
)


@dataclass
class World:
    """A fresh app with a little of everything in it, so generated ids sometimes hit rows."""

    app: Flask
    client: FlaskClient
    admin: str
    server_key: str  # key of server 1
    other_server_key: str  # key of server 2
    enroll_token: str
    token_id: str
    field_id: int

    def key_for(self, case: Any) -> str:
        return self.server_key if takes_server_key(case.path) else self.admin


def takes_server_key(path: str) -> bool:
    """Operations tested with a server key (the others with the admin token)."""
    return path in ("/api/v1/data", "/write", "/api/v2/write", "/query") or path.startswith(
        "/api/v1/agent/"
    )


def _populate(app: Flask, admin: str) -> World:
    client = app.test_client()
    s1 = register_server(client, admin, "web-01", "192.0.2.10", labels={"role": "web"})
    s2 = register_server(client, admin, "db-01", "2001:db8::1", interval=60)
    assert (s1["id"], s2["id"]) == (1, 2)
    r = client.post(
        "/api/v1/fields",
        json={"measurement": "app", "name": "healthy", "type": "bool"},
        headers=bearer(admin),
    )
    assert r.status_code == 201, r.get_json()
    field_id = r.get_json()["id"]
    r = client.post(
        "/api/v1/fields",
        json={"measurement": "app", "name": "version", "type": "string"},
        headers=bearer(admin),
    )
    assert r.status_code == 201, r.get_json()
    points = {
        "points": [
            {"measurement": "cpu", "fields": {"usage_percent": 12.5, "idle_percent": 87}},
            {"measurement": "mem", "fields": {"used_percent": 40.0, "total": 8 * 2**30}},
            {"measurement": "disk", "tags": {"mount": "/"}, "fields": {"used_percent": 71.5}},
            {"measurement": "disk", "tags": {"mount": "/var"}, "fields": {"used_percent": 12}},
            {"measurement": "system", "fields": {"load1": 0.5, "uptime": 3600}},
            {"measurement": "app", "fields": {"healthy": True, "version": "1.2.3"}},
        ]
    }
    r = push(client, s1["api_key"], points)
    assert r.status_code == 204, r.get_json()
    r = client.post(  # alert rule 1 and silence 1, for the /alerts/{id} operations
        "/api/v1/alerts",
        json={
            "name": "cpu",
            "measurement": "cpu",
            "field": "usage_percent",
            "condition": ">",
            "threshold": 90,
            "labels": {"role": "web"},
        },
        headers=bearer(admin),
    )
    assert r.status_code == 201, r.get_json()
    r = client.post(
        "/api/v1/alerts/silences", json={"rule_id": 1, "duration": "1h"}, headers=bearer(admin)
    )
    assert r.status_code == 201, r.get_json()
    r = client.post(
        "/api/v1/enrollment-tokens",
        json={"name": "fleet", "expires_in": "1d", "max_uses": 5},
        headers=bearer(admin),
    )
    assert r.status_code == 201, r.get_json()
    enroll = r.get_json()
    return World(
        app=app,
        client=client,
        admin=admin,
        server_key=s1["api_key"],
        other_server_key=s2["api_key"],
        enroll_token=enroll["token"],
        token_id=enroll["id"],
        field_id=field_id,
    )


# The world of the running test, for the hook below (hooks cannot take fixtures).
_current: World | None = None


@pytest.fixture
def world(app_and_token: tuple[Flask, str]) -> Iterator[World]:
    global _current
    _current = _populate(*app_and_token)
    yield _current
    _current = None


@schema.hook
@pg_schema.hook
def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any]) -> Any:
    """Often point path parameters at rows that exist (random ids would almost never)."""
    world = _current
    if world is None or not path_parameters:
        return st.just(path_parameters)
    aimed = dict(path_parameters)
    if "server_id" in aimed:
        aimed["server_id"] = 1
    if "id" in aimed:
        aimed["id"] = world.field_id  # app.healthy, a bool field
    if "token_id" in aimed:
        aimed["token_id"] = world.token_id
    choices = [path_parameters, aimed]
    if "server_id" in aimed:
        choices.append({**aimed, "server_id": 2})
    if "id" in aimed:
        # cpu.usage_percent, the first default field; alert rule 1, silence 1
        choices.append({**aimed, "id": 1})
    return st.sampled_from(choices)


_UNHEALTHY = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=_UNHEALTHY)
def test_conforms_to_openapi(case: Any, world: World) -> None:
    case.call_and_validate(app=world.app, headers=bearer(world.key_for(case)))


@pg_schema.parametrize()
@settings(max_examples=PG_MAX_EXAMPLES, deadline=None, suppress_health_check=_UNHEALTHY)
@pytest.mark.parametrize("config_store", ["postgresql"], indirect=True)
def test_conforms_to_openapi_on_postgresql(case: Any, world: World) -> None:
    case.call_and_validate(app=world.app, headers=bearer(world.key_for(case)))


# --- stateful -----------------------------------------------------------------------------------


def _fresh_world(data_dir: Path, **overrides: Any) -> tuple[World, Callable[[], None]]:
    """A populated app of its own (not left to the autouse shutdown: one per sequence), and
    what closes it."""
    settings_ = {
        "data_dir": data_dir,
        "log_level": "WARNING",
        "rate_limit_server": "0",
        "rate_limit_register": "0",
        **overrides,
    }
    token = initialize(load_settings(settings_))
    assert token is not None
    app = create_app({**settings_, "TESTING": True})
    try:
        return _populate(app, token), lambda: shutdown(app)
    except BaseException:
        shutdown(app)
        raise


@dataclass
class Step:
    operation: str  # e.g. "GET /api/v1/servers/{server_id}"
    link: str | None  # the link followed to get here, if its values were used:
    # "POST /api/v1/servers -> [201] GetServer -> GET /api/v1/servers/{server_id}"
    status: int


class _Sequences(stateful_schema.as_state_machine()):  # type: ignore[misc]
    """Calls along the document's links, on a fresh world per sequence (see the test)."""

    new_world: ClassVar[Callable[[], tuple[World, Callable[[], None]]]]
    steps: ClassVar[list[Step]]

    def setup(self) -> None:
        self.world, self.close = type(self).new_world()

    def teardown(self) -> None:
        self.close()

    def get_call_kwargs(self, case: Any) -> dict[str, Any]:
        return {"app": self.world.app, "headers": bearer(self.world.key_for(case))}

    def validate_response(
        self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any
    ) -> None:
        # As call_and_validate does: the key is the test's (explicit), so ignored_auth probes
        # the operation without it instead of taking it for generated.
        case.validate_response(
            response,
            additional_checks=additional_checks,
            headers=kwargs["headers"],
            transport_kwargs=kwargs,
            recorder=self.recorder,
        )

    def step(self, input: Any) -> Any:
        output = super().step(input)
        link = input.transition.id if input.transition is not None and input.is_applied else None
        self.steps.append(Step(input.case.operation.label, link, output.response.status_code))
        return output


# The operations whose links (monapi.api.spec.LINKS) a run is to follow to a 2xx.
CREATES = {"POST /api/v1/servers", "POST /api/v1/fields", "POST /api/v1/enrollment-tokens"}


@pytest.mark.slow
@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_conforms_statefully(store: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Sequences that create a server, a field or an enrollment token and then follow the links
    from it (read, change, disable, rotate the key, delete, read again...): no 5xx, every answer
    as documented, a created resource can be read and a deleted one is gone."""
    made = iter(range(10**6))
    pg: engines.PostgresDatabases | None = (
        request.getfixturevalue("pg_databases") if store == "postgresql" else None
    )

    def new_world() -> tuple[World, Callable[[], None]]:
        data_dir = tmp_path / f"world-{next(made)}"
        if pg is None:
            return _fresh_world(data_dir)
        url = pg.new()
        try:
            world, close = _fresh_world(data_dir, database_url=url)
        except BaseException:
            pg.drop(url)
            raise

        def close_and_drop() -> None:
            try:
                close()
            finally:
                pg.drop(url)

        return world, close_and_drop

    steps: list[Step] = []
    machine: Any = type(
        "Sequences", (_Sequences,), {"new_world": staticmethod(new_world), "steps": steps}
    )
    machine.run(
        settings=settings(
            max_examples=STATEFUL_SEQUENCES if pg is None else PG_STATEFUL_SEQUENCES,
            stateful_step_count=STATEFUL_STEPS,
            deadline=None,
            database=None,
            derandomize="FUZZ_SEED" not in os.environ,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
    )
    assert not [s for s in steps if s.status >= 500]
    followed = {s.link for s in steps if s.link and 200 <= s.status < 300}
    # The run did follow links: from creates (a short run may miss one of the three), and to a
    # delete (then the resource is gone).
    assert len({link.split(" -> ")[0] for link in followed} & CREATES) >= 2, sorted(followed)
    assert any(link.split(" -> ")[-1].startswith("DELETE ") for link in followed)


# Who may call what (the @requires of each view), written out; health checks are public.
_SERVER_ONLY = {
    "POST /api/v1/data",
    "GET /api/v1/agent/config",
    "POST /api/v1/agent/heartbeat",
    "POST /write",
    "POST /api/v2/write",
}
_ADMIN_OR_SERVER = {
    "GET /query",
    "POST /query",
    "GET /api/v1/servers/{server_id}",
    "GET /api/v1/servers/{server_id}/metrics",
    "GET /api/v1/servers/{server_id}/latest",
}
_ADMIN_OR_ENROLL = {"POST /api/v1/servers", "POST /api/register_server"}


def _allowed_kinds(label: str) -> set[str]:
    if label in _SERVER_ONLY:
        return {"server"}
    if label in _ADMIN_OR_SERVER:
        return {"admin", "server"}
    if label in _ADMIN_OR_ENROLL:
        return {"admin", "enroll"}
    return {"admin"}


@dataclass
class AuthWorld:
    world: World
    revoked_token: str  # an enrollment token, revoked
    # world.other_server_key is the key of server 2, disabled


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def auth_world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AuthWorld]:
    """One world per configuration store for every operation: the test's requests are all
    refused, so none of them changes it (one that got through would fail the test anyway)."""
    pg: engines.PostgresDatabases | None = None
    overrides: dict[str, Any] = {}
    if request.param == "postgresql":
        pg = request.getfixturevalue("pg_databases")
        overrides["database_url"] = pg.new()
    try:
        with _without_monapi_env():
            world, close = _fresh_world(tmp_path_factory.mktemp("auth"), **overrides)
        try:
            client, admin = world.client, world.admin
            r = client.post("/api/v1/enrollment-tokens", json={}, headers=bearer(admin))
            assert r.status_code == 201, r.get_json()
            revoked = r.get_json()
            r = client.delete(f"/api/v1/enrollment-tokens/{revoked['id']}", headers=bearer(admin))
            assert r.status_code == 200, r.get_json()
            r = client.post("/api/v1/servers/2/disable", headers=bearer(admin))
            assert r.status_code == 200, r.get_json()
            yield AuthWorld(world, revoked["token"])
        finally:
            close()
    finally:
        if pg is not None:
            pg.drop(overrides["database_url"])


def _refused(aw: AuthWorld, case: Any) -> list[tuple[str, dict[str, str], int]]:
    """(what, headers, expected status) for every credential this operation must refuse."""
    w = aw.world
    admin_id = w.admin.split("_")[1]
    out = [
        ("no key", {}, 401),
        ("another scheme", {"Authorization": "Basic YWRtaW46c2VjcmV0"}, 401),
        ("malformed key", bearer("not-a-key"), 401),
        ("unknown key", bearer(f"mka_{'0' * 16}_{'A' * 43}"), 401),
        ("unknown key as X-API-Key", {"X-API-Key": f"mks_{'1' * 16}_{'B' * 43}"}, 401),
        ("admin id, wrong secret", bearer(f"mka_{admin_id}_{'C' * 43}"), 401),
        ("revoked enrollment token", bearer(aw.revoked_token), 401),
        ("key of a disabled server", bearer(w.other_server_key), 403),
    ]
    allowed = _allowed_kinds(case.operation.label)
    for kind, key in (("admin", w.admin), ("server", w.server_key), ("enroll", w.enroll_token)):
        if kind not in allowed:
            out.append((f"{kind} key", bearer(key), 403))
    server_id = (case.path_parameters or {}).get("server_id")
    if "server" in allowed and isinstance(server_id, int) and server_id != 1:
        out.append(("key of another server", bearer(w.server_key), 403))
    return out


@auth_schema.exclude(path_regex="^/(healthz|readyz|ping|metrics)$").parametrize()
@settings(max_examples=5, deadline=None, suppress_health_check=_UNHEALTHY)
def test_refuses_missing_and_wrong_keys(case: Any, auth_world: AuthWorld) -> None:
    for what, headers, status in _refused(auth_world, case):
        resp = case.call_and_validate(app=auth_world.world.app, headers=headers)
        assert resp.status_code == status, f"{what}: {resp.status_code} {resp.text[:200]}"
        if status == 401:
            # The InfluxDB-compatible endpoints also take Basic auth, and say so.
            influx = case.path in ("/write", "/api/v2/write", "/query")
            challenge = 'Basic realm="monapi"' if influx else 'Bearer realm="monapi"'
            assert resp.headers.get("www-authenticate") == [challenge], what


def test_too_large_bodies_answer_as_documented(tmp_path: Path) -> None:
    """A body over MONAPI_MAX_BODY_BYTES is a 413, in the spec of every operation with a body."""
    app, admin = make_app(tmp_path / "data", max_body_bytes=1024)
    client = app.test_client()
    server_key = register_server(client, admin)["api_key"]
    body = b'{"description": "' + b"x" * 2048 + b'"}'
    with_body = [
        (path, method, operation)
        for path, item in schema.raw_schema["paths"].items()
        for method, operation in item.items()
        if "requestBody" in operation
    ]
    assert len(with_body) == 13
    for path, method, operation in with_body:
        assert "413" in operation["responses"], (method, path)
        key = server_key if takes_server_key(path) else admin
        resp = client.open(
            path.replace("{server_id}", "1").replace("{id}", "1"),
            method=method.upper(),
            data=body,
            headers={**bearer(key), "Content-Type": "application/json"},
        )
        assert resp.status_code == 413, (method, path, resp.get_json())
        schema[path][method.upper()].validate_response(resp)  # the body: the one error shape


# What the runs above found, pinned down: (method, path, raw JSON body, status).
BIG = "1" + "0" * 400
FOUND = [
    # 500: an integer bound too large for a float (OverflowError inside the model)
    (
        "POST",
        "/api/v1/fields",
        f'{{"measurement": "x", "name": "y", "type": "int", "min": {BIG}}}',
        422,
    ),
    ("PATCH", "/api/v1/fields/1", f'{{"max": -{BIG}}}', 422),
    # accepted: "$" of a Python regex also matches before a final newline
    ("POST", "/api/v1/servers", r'{"hostname": "a\n.b", "ip_address": "192.0.2.1"}', 422),
    ("PATCH", "/api/v1/servers/1", r'{"labels": {"k\n": "v"}}', 422),
    ("POST", "/api/v1/fields", r'{"measurement": "cpu\n", "name": "y", "type": "int"}', 422),
    # accepted: flask-openapi3 decodes a body that is a JSON string a second time
    ("POST", "/api/v1/servers", r'"{\"hostname\": \"c\", \"ip_address\": \"192.0.2.1\"}"', 422),
    # refused: 30.0 is an integer to JSON (Schema)
    ("PATCH", "/api/v1/servers/1", '{"interval": 30.0}', 200),
    ("POST", "/api/v1/enrollment-tokens", '{"max_uses": 3.0, "expires_in": 3600.0}', 201),
    # refused: a no-break space or a zero-width joiner in a label value
    ("PATCH", "/api/v1/servers/1", r'{"labels": {"team": "ops\u00a0east \u200d"}}', 200),
    # accepted: werkzeug's <int:> also matches the digits of other scripts (here ARABIC-INDIC ONE)
    ("GET", "/api/v1/servers/%D9%A1", None, 404),
    # 400: the default field set had string fields, which "mean" cannot aggregate
    ("GET", "/api/v1/servers/1/metrics", None, 200),
    # 400 "not valid JSON" for a body that is JSON (null)
    ("POST", "/api/v1/servers", "null", 422),
    # 500 on PostgreSQL, which can neither store nor compare text with NUL (SQLite can)
    ("GET", "/api/v1/servers?hostname=%00", None, 422),
    ("GET", "/api/v1/fields?measurement=a%00", None, 422),
    ("POST", "/api/v1/agent/heartbeat", r'{"agent_version": "1\u0000", "uptime": 100}', 422),
    ("PATCH", "/api/v1/servers/1", r'{"description": "\u0000"}', 422),
    ("PATCH", "/api/v1/fields/1", r'{"unit": "%\u0000"}', 422),
    ("POST", "/api/v1/enrollment-tokens", r'{"name": "\u0000"}', 422),
]


@pytest.mark.parametrize(("method", "path", "body", "status"), FOUND)
@pytest.mark.parametrize("config_store", ["sqlite", "postgresql"], indirect=True)
def test_found_by_the_run(
    world: World, method: str, path: str, body: str | None, status: int
) -> None:
    key = world.server_key if takes_server_key(path) else world.admin
    resp = world.client.open(
        path,
        method=method,
        data=body,
        headers={**bearer(key), "Content-Type": "application/json"},
    )
    assert resp.status_code == status, resp.get_json()
    documented = (
        path.partition("?")[0]
        .replace("/servers/1", "/servers/{server_id}")
        .replace("/fields/1", "/fields/{id}")
    )
    if documented in schema.raw_schema["paths"]:
        operation = schema[documented][method]
        assert str(status) in operation.definition.raw["responses"]
        operation.validate_response(resp)
