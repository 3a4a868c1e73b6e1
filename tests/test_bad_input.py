"""Hostile input, written by hand: every case is a clear 4xx in the one error shape that says what
was wrong and where, nothing already stored is lost or changed, and the next good request is
stored (204).

The cases run on POST /api/v1/data (JSON; through the hot path and through Flask), POST /write
and POST /api/v2/write (line protocol), and on the JSON admin endpoints (POST /api/v1/servers,
POST /api/v1/fields) where they apply: against the in-process app on the embedded store, a
representative subset against InfluxDB (whose JSON and line-protocol fast paths the embedded
store never takes) and against a real gunicorn (`monapi serve`), where bodies can also come
chunked or with a Content-Length that lies.
"""

from __future__ import annotations

import gzip
import http.client
import json
import math
import os
import signal
import socket
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import pytest
from flask import Flask
from werkzeug.test import EnvironBuilder

from monapi import create_app
from monapi.api.hotpath import HotPath
from monapi.app import shutdown
from monapi.bootstrap import initialize
from monapi.settings import load_settings

from .test_serve import start_instance

MAX_BODY = 256 * 1024
MAX_DECOMPRESSED = 1024 * 1024
SETTINGS = {
    "max_body_bytes": MAX_BODY,
    "max_decompressed_bytes": MAX_DECOMPRESSED,
    "rate_limit_server": "0",
    "rate_limit_register": "0",
    "log_level": "ERROR",  # the refusals are expected; a 5xx still fails the test by its status
}
SHAPE = {"error", "code", "status", "request_id"}
NOW_S = int(time.time())


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any  # the decoded JSON, or None
    headers: dict[str, str]  # lower-case names


@dataclass(frozen=True)
class Case:
    id: str
    body: bytes
    status: int
    where: str  # text the answer must hold (in its message or details): what and where
    headers: dict[str, str] = field(default_factory=dict)


def error_text(reply: Reply) -> str:
    """The message and details of an error answer, as one text to look for what and where in."""
    return json.dumps([reply.body.get("error"), reply.body.get("details")], ensure_ascii=False)


def assert_refused(reply: Reply, case: Case) -> None:
    """The case's 4xx, in the one error shape, saying what and where."""
    assert reply.status == case.status, (case.id, reply.status, reply.body)
    assert 400 <= reply.status < 500
    body = reply.body
    assert isinstance(body, dict), (case.id, body)
    assert set(body) >= SHAPE, body
    assert body["status"] == reply.status and body["code"], body
    assert isinstance(body["error"], str) and body["error"], body
    assert body["request_id"] == reply.headers["x-request-id"], body
    assert case.where in error_text(reply), (case.id, case.where, body)


# --- the cases ----------------------------------------------------------------------------------


@cache
def gzip_bomb(inflated: int = 32 * 1024 * 1024) -> bytes:
    """A few tens of kB that inflate to ``inflated`` bytes (32x MAX_DECOMPRESSED)."""
    return gzip.compress(b" " * inflated, compresslevel=9)


def point(**parts: Any) -> bytes:
    return json.dumps({"fields": {"load1": 1.0}, **parts}).encode()


def big_json() -> bytes:
    return point(tags={"a": "x" * (MAX_BODY + 1)})


GZIP = {"Content-Encoding": "gzip"}
DEEP = b"[" * 100_000
NESTED = "nested too deeply"
JSON_CASES = [
    Case("huge body", big_json(), 413, "too large"),
    Case("gzip bomb", gzip_bomb(), 413, f"exceeds {MAX_DECOMPRESSED} bytes", GZIP),
    Case("two gzip members", gzip.compress(point()) + gzip.compress(point()), 400, "after", GZIP),
    Case("deeply nested", DEEP, 400, NESTED),
    Case("deeply nested field", b'{"fields": {"load1": ' + DEEP + b"}}", 400, NESTED),
    Case("deeply nested tags", b'{"fields": {"load1": 1}, "tags": ' + DEEP + b"}", 400, NESTED),
    Case("invalid UTF-8 in a key", b'{"fields": {"lo\xffad1": 1.0}}', 400, "UTF-8 at byte 15"),
    Case(
        "invalid UTF-8 in a tag", b'{"fields": {"load1": 1}, "tags": {"a": "\xc3"}}', 400, "UTF-8"
    ),
    Case("NaN", b'{"fields": {"load1": NaN}}', 400, "(byte 21)"),
    Case("Infinity", b'{"fields": {"load1": Infinity}}', 400, "(byte 21)"),
    Case("-Infinity", b'{"fields": {"load1": -Infinity}}', 400, "(byte 22)"),
    Case("1e999", b'{"fields": {"load1": 1e999}}', 400, "out of range"),
    Case("year 1", point(timestamp="0001-01-01T00:00:00Z"), 422, "older than"),
    Case("year 9999", point(timestamp="9999-12-31T23:59:59Z"), 422, "too far in the future"),
    Case("beyond int64", point(timestamp=10**30), 422, "too far in the future"),
    Case("below int64", point(timestamp=-(10**30)), 422, "older than"),
    Case("float timestamp 1e300", point(timestamp=1e300), 422, "too far in the future"),
    Case("NUL in a timestamp", point(timestamp="2024-01-01T00:00:00\x00Z"), 422, "RFC 3339"),
    Case("5000 tags", point(tags={f"t{i}": "v" for i in range(5000)}), 422, "5000 tags"),
    Case("long measurement", point(measurement="m" * 10_000), 422, "not a valid name"),
    Case("long field name", json.dumps({"fields": {"f" * 10_000: 1}}).encode(), 422, "unknown"),
    Case("long tag key", point(tags={"k" * 10_000: "v"}), 422, "is not valid"),
    Case("long tag value", point(tags={"k": "v" * 257}), 422, "1-256 characters"),
    Case(
        "long string value",
        b'{"measurement": "app", "fields": {"version": "%s"}}' % (b"v" * 5000),
        422,
        "longer than 4096",
    ),
    Case("NUL in a measurement", point(measurement="sys\x00tem"), 422, "not a valid name"),
    Case(
        "NUL in a field name",
        json.dumps({"fields": {"load1\x00": 1}}).encode(),
        422,
        "load1\\u0000",
    ),
    Case("NUL in a tag key", point(tags={"a\x00": "v"}), 422, "is not valid"),
    Case("NUL in a tag value", point(tags={"a": "v\x00"}), 422, "control characters"),
    Case(
        "raw NUL byte in a string",
        b'{"fields": {"load1": 1}, "tags": {"a": "\x00"}}',
        400,
        "(byte 40)",
    ),
    Case(
        "a field twice", b'{"fields": {"load1": 1, "load1": 2}}', 400, '"location": "body.fields"'
    ),
    Case(
        "fields twice",
        b'{"points": [{"fields": {"load1": 1}, "fields": {"load5": 2}}]}',
        400,
        "body.points[0]: the key 'fields'",
    ),
    Case(
        "a tag twice", b'{"fields": {"load1": 1}, "tags": {"a": "1", "a": "2"}}', 400, "body.tags"
    ),
]


def lp(text: str) -> bytes:
    """A body whose bad line is line 2 (after a comment): nothing else in it is stored."""
    return ("# hostile\n" + text + "\n").encode()


TS = f"{NOW_S}000000000"
MANY_TAGS = "".join(f",t{i}=v" for i in range(3000))
LP_CASES = [
    Case("huge body", lp("system load1=1,x=" + "1" * MAX_BODY), 413, "too large"),
    Case("gzip bomb", gzip_bomb(), 413, f"exceeds {MAX_DECOMPRESSED} bytes", GZIP),
    Case("deeply nested", DEEP, 400, '"line": 1'),
    Case("invalid UTF-8", lp("system,a=X load1=1").replace(b"X", b"\xff"), 400, "invalid UTF-8"),
    Case("NaN", lp("system load1=NaN"), 400, "invalid number: field 'load1'"),
    Case("Inf", lp("system load1=Inf"), 400, "invalid boolean: field 'load1'"),
    Case("-Inf", lp("system load1=-Inf"), 400, "invalid number: field 'load1'"),
    Case("1e999", lp("system load1=1e999"), 400, "value out of range: field 'load1'"),
    Case("timestamp beyond int64", lp("system load1=1 " + "9" * 20), 400, "out of range"),
    Case("timestamp far past", lp("system load1=1 -9223372036854775806"), 400, "older than"),
    Case("timestamp far future", lp("system load1=1 9223372036854775806"), 400, "in the future"),
    Case("3000 tags", lp(f"system{MANY_TAGS} load1=1"), 400, "3000 tags"),
    Case("long measurement", lp("m" * 70_000 + " load1=1"), 400, "max key length exceeded"),
    Case("long field key", lp("system " + "f" * 5000 + "=1"), 400, "unknown field"),
    Case("long tag value", lp("system,a=" + "v" * 300 + " load1=1"), 400, "1-256 characters"),
    Case("NUL in a measurement", lp("sys\x00tem load1=1"), 400, "not a valid name"),
    Case("NUL in a tag value", lp("system,a=v\x00 load1=1"), 400, "control characters"),
    Case("NUL in a field key", lp("system load1\x00=1"), 400, "unknown field"),
    Case("a field twice", lp("system load1=1,load1=2"), 400, "duplicate fields: 'load1'"),
    Case("a field twice, plain", lp(f"system load1=1,load5=2,load1=2 {TS}"), 400, "duplicate"),
]
# Each refused line is named by its number: line 2 (1 for the body that is one line).
for _case in LP_CASES:
    assert _case.status == 413 or _case.id == "deeply nested" or _case.body.startswith(b"# ")


def server(**parts: Any) -> bytes:
    return json.dumps({"hostname": "a", "ip_address": "192.0.2.1", **parts}).encode()


def field_body(**parts: Any) -> bytes:
    return json.dumps({"measurement": "x", "name": "y", "type": "float", **parts}).encode()


SERVERS, FIELDS = "/api/v1/servers", "/api/v1/fields"
ADMIN_CASES: list[tuple[str, Case]] = [
    (SERVERS, Case("huge body", server(description="d" * MAX_BODY), 413, "too large")),
    (SERVERS, Case("invalid UTF-8", server(hostname="aXb").replace(b"X", b"\xff"), 400, "byte 15")),
    (SERVERS, Case("NaN", server(interval=math.nan), 400, "(byte 57)")),
    (SERVERS, Case("long hostname", server(hostname="h" * 10_000), 422, "hostname")),
    (SERVERS, Case("NUL in the hostname", server(hostname="a\x00b"), 422, "hostname")),
    (SERVERS, Case("NUL in a label", server(labels={"k": "v\x00"}), 422, "labels")),
    (
        SERVERS,
        Case("5000 labels", server(labels={f"k{i}": "v" for i in range(5000)}), 422, "labels"),
    ),
    (FIELDS, Case("huge body", field_body(unit="u" * MAX_BODY), 413, "too large")),
    (FIELDS, Case("NaN", field_body(min=math.nan), 400, "(byte 58)")),
    (FIELDS, Case("1e999", field_body(min=1.5).replace(b"1.5", b"1e999"), 400, "out of range")),
    (FIELDS, Case("long name", field_body(name="n" * 10_000), 422, '"location": "name"')),
    (FIELDS, Case("NUL in the name", field_body(name="a\x00"), 422, '"location": "name"')),
    # JSON decoders raise RecursionError (a 500) on these, and keep the last "hostname" (a 201)
    (SERVERS, Case("deeply nested", DEEP, 400, "JSON")),
    (FIELDS, Case("deeply nested name", b'{"name": ' + DEEP + b"}", 400, "JSON")),
    (SERVERS, Case("a key twice", server(hostname="e")[:-1] + b', "hostname": "f"}', 400, "host")),
]


# --- the in-process app -------------------------------------------------------------------------


@contextmanager
def own_app(data_dir: Path, **overrides: Any) -> Iterator[tuple[Flask, str]]:
    """An app for a whole module (not left to the per-test shutdown of conftest)."""
    settings = {"data_dir": data_dir, **SETTINGS, **overrides}
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("MONAPI_")}
    try:
        token = initialize(load_settings(settings))
        assert token is not None
        app = create_app({**settings, "TESTING": True})
    finally:
        os.environ.update(saved)
    try:
        yield app, token
    finally:
        shutdown(app)


class GoodPushes:
    """What both targets do alike: a good point right after a hostile one."""

    seq: int

    def send(
        self, path: str, body: bytes, key: str | None = None, headers: dict[str, str] | None = None
    ) -> Reply:
        raise NotImplementedError

    def stored(self) -> list[Any]:
        raise NotImplementedError

    def push_good(self, path: str) -> None:
        """A good point right after: stored (204) and read back."""
        self.seq += 1
        value = float(self.seq)
        if path == "/api/v1/data":
            reply = self.send(path, json.dumps({"fields": {"load5": value}}).encode())
        else:
            reply = self.send(path, f"system load5={value}".encode())
        assert reply.status == 204, reply.body
        assert any(f'"value": {value}' in v for v in self.stored())


class InProcess(GoodPushes):
    """One server of an app: sends as it, and reads back what it stored."""

    def __init__(self, app: Flask, admin: str) -> None:
        self.app, self.admin = app, admin
        self.client = app.test_client()
        reply = self.send(
            "/api/v1/servers", b'{"hostname": "web-01", "ip_address": "192.0.2.10"}', admin
        )
        assert reply.status == 201, reply.body
        self.server_id, self.key = reply.body["id"], reply.body["api_key"]
        reply = self.send(
            "/api/v1/fields", b'{"measurement": "app", "name": "version", "type": "string"}', admin
        )
        assert reply.status == 201, reply.body
        self.seq = 0

    def send(
        self, path: str, body: bytes, key: str | None = None, headers: dict[str, str] | None = None
    ) -> Reply:
        hdrs = {"Authorization": f"Bearer {key or self.key}", **(headers or {})}
        hdrs.setdefault("Content-Type", "text/plain" if "write" in path else "application/json")
        resp = self.client.post(path, data=body, headers=hdrs)
        return Reply(
            resp.status_code,
            resp.get_json(silent=True),
            {k.lower(): v for k, v in resp.headers.items()},
        )

    def stored(self) -> list[Any]:
        resp = self.client.get(
            f"/api/v1/servers/{self.server_id}/latest",
            headers={"Authorization": f"Bearer {self.admin}"},
        )
        assert resp.status_code == 200, resp.get_json()
        return sorted(json.dumps(v, sort_keys=True) for v in resp.get_json()["values"])

    def catalogue(self) -> tuple[Any, ...]:
        auth = {"Authorization": f"Bearer {self.admin}"}
        servers = self.client.get("/api/v1/servers?per_page=100", headers=auth).get_json()
        fields = self.client.get("/api/v1/fields", headers=auth).get_json()
        return json.dumps(servers, sort_keys=True), json.dumps(fields, sort_keys=True)


class Target(Protocol):
    def send(
        self, path: str, body: bytes, key: str | None = None, headers: dict[str, str] | None = None
    ) -> Reply: ...

    def stored(self) -> list[Any]: ...

    def push_good(self, path: str) -> None: ...


def run_case(
    target: Target, path: str, case: Case, send: Callable[[Case], Reply] | None = None
) -> None:
    """The case on one path: refused as it says, nothing stored changed, the next push stored."""
    before = target.stored()
    reply = send(case) if send else target.send(path, case.body, headers=case.headers)
    assert_refused(reply, case)
    details = reply.body.get("details") or []
    if reply.status == 422:  # about a point: which one (and the field, for a value)
        assert [d["index"] for d in details] == [0], reply.body
    if "write" in path and reply.status == 400 and case.body.startswith(b"# hostile"):
        assert [d["line"] for d in details] == [2], reply.body  # which line (after the comment)
    if path == "/api/v2/write":
        assert reply.body["message"] == reply.body["error"]
    assert target.stored() == before, f"{case.id}: the stored points changed"
    target.push_good(path)


def seeded(app: Flask, admin: str) -> InProcess:
    """A target whose server already stored one point (which no hostile case may change)."""
    target = InProcess(app, admin)
    reply = target.send(
        "/api/v1/data",
        point(timestamp=NOW_S - 60, measurement="cpu", fields={"usage_percent": 12.5}),
    )
    assert reply.status == 204, reply.body
    return target


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    with own_app(tmp_path_factory.mktemp("embedded")) as (app, admin):
        yield seeded(app, admin)


def without_hot_path(target: InProcess) -> Callable[[Case], Reply]:
    """Send through Flask: the hot path in front of it is taken out for the call."""

    def send(case: Case) -> Reply:
        hot = target.app.wsgi_app
        assert isinstance(hot, HotPath)
        target.app.wsgi_app = hot.next  # type: ignore[method-assign,assignment]
        try:
            return target.send("/api/v1/data", case.body, headers=case.headers)
        finally:
            target.app.wsgi_app = hot  # type: ignore[method-assign]

    return send


@pytest.mark.parametrize("case", JSON_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("via", ["hot path", "flask"])
def test_hostile_json_is_a_clear_4xx(embedded: InProcess, case: Case, via: str) -> None:
    send = without_hot_path(embedded) if via == "flask" else None
    run_case(embedded, "/api/v1/data", case, send)


@pytest.mark.parametrize("case", LP_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("path", ["/write", "/api/v2/write"])
def test_hostile_line_protocol_is_a_clear_4xx(embedded: InProcess, case: Case, path: str) -> None:
    run_case(embedded, path, case)


def admin_case(target: InProcess, path: str, case: Case) -> None:
    before = target.catalogue()
    reply = target.send(path, case.body, target.admin, case.headers)
    assert_refused(reply, case)
    assert target.catalogue() == before, f"{case.id}: something was created"
    # The next good request is served.
    target.seq += 1
    body = (
        {"hostname": f"good-{target.seq}", "ip_address": "192.0.2.20"}
        if path == "/api/v1/servers"
        else {"measurement": "good", "name": f"f{target.seq}", "type": "float"}
    )
    assert target.send(path, json.dumps(body).encode(), target.admin).status == 201


@pytest.mark.parametrize(("path", "case"), ADMIN_CASES, ids=lambda c: getattr(c, "id", c))
def test_hostile_admin_json_is_a_clear_4xx(embedded: InProcess, path: str, case: Case) -> None:
    admin_case(embedded, path, case)


def test_a_gzip_bomb_does_not_inflate_in_memory(embedded: InProcess) -> None:
    """The refused bomb inflates 32 MiB; refusing it allocates about the limit (1 MiB)."""
    case = JSON_CASES[1]
    assert case.id == "gzip bomb"
    tracemalloc.start()
    try:
        reply = embedded.send("/api/v1/data", case.body, headers=case.headers)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert_refused(reply, case)
    assert peak < 4 * MAX_DECOMPRESSED + 2 * len(case.body), peak


def test_a_partial_line_protocol_write_says_which_lines_were_refused(embedded: InProcess) -> None:
    """Good lines around hostile ones are stored; each hostile one is listed with its line."""
    body = (
        f"system load15=1.5 {NOW_S}000000000\n"
        "system load1=NaN\n"
        f"system load15=2.5,load15=3 {NOW_S}000000000\n"
        f"sys\x00tem load15=4\n"
        f"system load15=5.5 {NOW_S + 1}000000000\n"
    ).encode()
    reply = embedded.send("/write", body)
    assert reply.status == 400
    assert reply.body["code"] == "partial_write"
    assert (reply.body["accepted"], reply.body["rejected"]) == (2, 3)
    assert [d["line"] for d in reply.body["details"]] == [2, 3, 4]
    load15 = [json.loads(v) for v in embedded.stored() if '"load15"' in v]
    assert [v["value"] for v in load15] == [5.5]


def wsgi_call(app: Flask, environ: dict[str, Any]) -> Reply:
    """One request through the app's whole WSGI stack, as a server would make it."""
    got: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        got["status"], got["headers"] = int(status.split(maxsplit=1)[0]), dict(headers)

    body = b"".join(app.wsgi_app(environ, start_response))
    headers = {k.lower(): v for k, v in got["headers"].items()}
    return Reply(got["status"], json.loads(body) if body else None, headers)


def server_environ(target: InProcess, path: str, body: bytes, **environ: Any) -> dict[str, Any]:
    """What gunicorn hands the app: an input stream it ends itself (wsgi.input_terminated)."""
    ctype = "text/plain" if "write" in path else "application/json"
    headers = {"Authorization": f"Bearer {target.key}", "Content-Type": ctype}
    builder = EnvironBuilder(path=path, method="POST", data=body, headers=list(headers.items()))
    built = builder.get_environ()
    built["wsgi.input_terminated"] = True
    built.update(environ)
    return built


def via_server(target: InProcess, path: str, **environ: Any) -> Callable[[Case], Reply]:
    return lambda case: wsgi_call(target.app, server_environ(target, path, case.body, **environ))


@pytest.mark.parametrize("path", ["/api/v1/data", "/write", "/api/v2/write"])
def test_a_body_shorter_than_its_content_length_is_not_stored(
    embedded: InProcess, path: str
) -> None:
    """gunicorn hands out what came when a client stops early, and werkzeug takes it for the
    whole body: a valid prefix was stored (204). It is a 400 that says so."""
    body = point() if path == "/api/v1/data" else f"system load1=1 {NOW_S}000000000\n".encode()
    case = Case("incomplete", body, 400, f"ended after {len(body)} of the 5000 bytes")
    run_case(embedded, path, case, via_server(embedded, path, CONTENT_LENGTH="5000"))


@pytest.mark.parametrize("path", ["/api/v1/data", "/write"])
def test_a_chunked_body_over_the_limit_is_a_413_not_cut(embedded: InProcess, path: str) -> None:
    """werkzeug reads a chunked body up to MAX_CONTENT_LENGTH and returns that much without a
    word: the first lines of a line-protocol body were stored (400 partial write)."""
    line = f"system,a={'v' * 200} load15=1.5 {NOW_S}000000000\n".encode()
    body = line * (MAX_BODY // len(line) + 10) if path == "/write" else big_json()
    chunked = {"HTTP_TRANSFER_ENCODING": "chunked", "CONTENT_LENGTH": ""}
    case = Case("chunked", body, 413, "too large")
    run_case(embedded, path, case, via_server(embedded, path, **chunked))
    # Within the limit, a chunked body is read whole (and takes the hot path for JSON).
    small = Case("small", line if path == "/write" else point(), 204, "")
    assert via_server(embedded, path, **chunked)(small).status == 204


# --- InfluxDB: the fast paths -------------------------------------------------------------------

INFLUX_JSON = [
    "gzip bomb", "deeply nested tags", "invalid UTF-8 in a tag", "NaN", "1e999", "beyond int64",
    "5000 tags", "NUL in a tag value", "a field twice", "fields twice", "a tag twice",
]  # fmt: skip
INFLUX_LP = [
    "gzip bomb", "invalid UTF-8", "NaN", "timestamp far future", "3000 tags",
    "NUL in a tag value", "a field twice", "a field twice, plain",
]  # fmt: skip


def cpu(**parts: Any) -> bytes:
    """A body of the JSON fast path's shape (a batch of cpu points)."""
    p = {"measurement": "cpu", "fields": {"usage_percent": 1.0}, "timestamp": NOW_S * 10**9}
    return json.dumps({"points": [{**p, **parts}]}).encode()


# Plainly valid but for one thing: the fast paths read such bodies; each must still be refused.
TWICE = cpu().replace(b"1.0}", b'1.0, "usage_percent": 2.0}')
TAG_TWICE = cpu(tags={"cpu": "a"}).replace(b'"a"}', b'"a", "cpu": "b"}')
FAST_JSON = [
    Case("repeated field, fast shape", TWICE, 400, "body.points[0].fields"),
    Case("repeated tag, fast shape", TAG_TWICE, 400, "body.points[0].tags"),
    Case("invalid UTF-8, fast shape", cpu(tags={"cpu": "X"}).replace(b"X", b"\xff"), 400, "UTF-8"),
    Case("deep tags, fast shape", cpu(tags=[]).replace(b"[]", DEEP), 400, NESTED),
]


@pytest.fixture(scope="module")
def influx(tmp_path_factory: pytest.TempPathFactory, influxdb_url: str) -> Iterator[InProcess]:
    db = f"t_{uuid.uuid4().hex[:12]}"
    with own_app(
        tmp_path_factory.mktemp("influx"),
        tsdb="influxdb",
        influxdb_url=influxdb_url,
        influxdb_database=db,
    ) as (app, admin):
        yield seeded(app, admin)


def by_id(cases: list[Case], ids: list[str]) -> list[Case]:
    chosen = [c for c in cases if c.id in ids]
    assert len(chosen) == len(ids)
    return chosen


@pytest.mark.parametrize("case", [*by_id(JSON_CASES, INFLUX_JSON), *FAST_JSON], ids=lambda c: c.id)
def test_hostile_json_on_influxdb(influx: InProcess, case: Case) -> None:
    run_case(influx, "/api/v1/data", case)


@pytest.mark.parametrize("case", by_id(LP_CASES, INFLUX_LP), ids=lambda c: c.id)
def test_hostile_line_protocol_on_influxdb(influx: InProcess, case: Case) -> None:
    run_case(influx, "/write", case)


# --- a real gunicorn ----------------------------------------------------------------------------


class Served(GoodPushes):
    """``monapi serve`` (two workers): raw HTTP/1.1 requests, one connection each."""

    def __init__(self, base: str, admin: str) -> None:
        self.host, port = base.removeprefix("http://").split(":")
        self.port = int(port)
        self.admin = admin
        reply = self.request(
            "POST",
            "/api/v1/servers",
            b'{"hostname": "web-01", "ip_address": "192.0.2.10"}',
            {"Authorization": f"Bearer {admin}", "Content-Type": "application/json"},
        )
        assert reply.status == 201, reply.body
        self.server_id, self.key = reply.body["id"], reply.body["api_key"]
        self.seq = 0

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str],
        *,
        chunked: bool = False,
    ) -> Reply:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request(
                method,
                path,
                body=iter([body]) if chunked and body else body,
                headers=headers,
                encode_chunked=chunked,
            )
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        return Reply(
            resp.status,
            json.loads(raw) if raw else None,
            {k.lower(): v for k, v in resp.getheaders()},
        )

    def send(
        self,
        path: str,
        body: bytes,
        key: str | None = None,
        headers: dict[str, str] | None = None,
        *,
        chunked: bool = False,
    ) -> Reply:
        hdrs = {
            "Authorization": f"Bearer {key or self.key}",
            "Content-Type": "text/plain" if "write" in path else "application/json",
            **(headers or {}),
        }
        return self.request("POST", path, body, hdrs, chunked=chunked)

    def raw(self, data: bytes, *, half_close: bool = False) -> bytes:
        """Bytes as sent (a lying Content-Length), and whatever comes back until the server
        closes (a 30 s bound)."""
        with socket.create_connection((self.host, self.port), timeout=30) as sock:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
            out = b""
            while chunk := sock.recv(65536):
                out += chunk
        return out

    def stored(self) -> list[Any]:
        reply = self.request(
            "GET",
            f"/api/v1/servers/{self.server_id}/latest",
            None,
            {"Authorization": f"Bearer {self.admin}"},
        )
        assert reply.status == 200, reply.body
        return sorted(json.dumps(v, sort_keys=True) for v in reply.body["values"])


def worker_pids(master: int) -> set[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return {int(pid) for pid in children}


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, int]]:
    env = {f"MONAPI_{k.upper()}": str(v) for k, v in SETTINGS.items()}
    proc, base, out = start_instance(tmp_path_factory.mktemp("serve"), env)
    try:
        token = next(w for w in out.read_text().split() if w.startswith("mka_"))
        target = Served(base, token)
        reply = target.send(
            "/api/v1/data",
            point(timestamp=NOW_S - 60, measurement="cpu", fields={"usage_percent": 12.5}),
        )
        assert reply.status == 204, reply.body
        yield target, proc.pid
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)


SERVED_JSON = [
    "huge body", "deeply nested", "deeply nested tags", "invalid UTF-8 in a key", "NaN",
    "a field twice", "5000 tags",
]  # fmt: skip
SERVED_LP = [
    "huge body",
    "invalid UTF-8",
    "a field twice",
    "NUL in a tag value",
    "long measurement",
]


@pytest.mark.slow
def test_hostile_requests_against_gunicorn(served: tuple[Served, int]) -> None:
    """The cases over real HTTP, also chunked, and with a Content-Length that lies; the
    workers neither die (the same pids throughout) nor grow with a gzip bomb."""
    target, master = served
    workers = worker_pids(master)
    assert len(workers) == 2
    for case in by_id(JSON_CASES, SERVED_JSON):
        run_case(target, "/api/v1/data", case)
        # Chunked, without a Content-Length: Flask's path, bounded by the same limits.
        run_case(
            target,
            "/api/v1/data",
            case,
            lambda c: target.send("/api/v1/data", c.body, headers=c.headers, chunked=True),
        )
    for path in ("/write", "/api/v2/write"):
        for case in by_id(LP_CASES, SERVED_LP):
            run_case(target, path, case)
    # Good lines over the limit, chunked (as Telegraf sends gzip): none stored, and a 413 (on
    # which Telegraf splits the batch), not the first lines stored and a 400.
    line = f"system,a={'v' * 200} load15=1.5 {NOW_S}000000000\n".encode()
    lines = Case("lines over the limit", line * (MAX_BODY // len(line) + 10), 413, "too large")
    run_case(target, "/write", lines)
    run_case(target, "/write", lines, lambda c: target.send("/write", c.body, chunked=True))
    for path, case in ADMIN_CASES[:2]:
        reply = target.send(path, case.body, target.admin, case.headers)
        assert_refused(reply, case)

    # A gzip bomb in every worker (one connection each, the kernel spreads them): refused, and
    # no worker holds the inflated 32 MiB afterwards.
    rss = {pid: rss_bytes(pid) for pid in workers}
    bomb = JSON_CASES[1]
    for _ in range(6):
        run_case(target, "/api/v1/data", bomb)
    grown = {pid: rss_bytes(pid) - rss[pid] for pid in workers}
    assert max(grown.values()) < 24 * 2**20, grown

    # A Content-Length over the limit: refused at once, without reading the body.
    head = (
        "POST /api/v1/data HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {target.key}\r\nConnection: close\r\n"
    )
    answer = target.raw((head + f"Content-Length: {MAX_BODY + 1}\r\n\r\n").encode() + b"{}")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    target.push_good("/api/v1/data")
    # Shorter than the body: the body as announced is cut JSON (400); the rest is not a request.
    good = point(timestamp=NOW_S, fields={"load15": 9.0})
    answer = target.raw((head + f"Content-Length: {len(good) - 5}\r\n\r\n").encode() + good)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"truncated" in answer
    # Longer than the body, and the client gives up: nothing stored, nothing hangs.
    before = target.stored()
    answer = target.raw((head + "Content-Length: 5000\r\n\r\n").encode() + good, half_close=True)
    assert answer.startswith(b"HTTP/1.1 400") and b"incomplete_body" in answer, answer[:300]
    lp_head = head.replace("/api/v1/data", "/write").replace("application/json", "text/plain")
    line = f"system load15=9 {NOW_S}000000000\n".encode()
    lp_request = (lp_head + "Content-Length: 5000\r\n\r\n").encode() + line
    answer = target.raw(lp_request, half_close=True)
    assert answer.startswith(b"HTTP/1.1 400") and b"incomplete_body" in answer, answer[:300]
    assert target.stored() == before
    target.push_good("/api/v1/data")
    assert worker_pids(master) == workers, "a worker died"
