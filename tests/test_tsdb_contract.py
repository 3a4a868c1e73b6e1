"""One contract for every time-series backend: the same pushes give the same answers.

Each test runs on the embedded SQLite store, on a throwaway InfluxDB 1.x and on a throwaway
VictoriaMetrics, through the HTTP API (so the answers are what a client sees). The expected
values are worked out by hand; a backend passes by giving exactly them, with the same JSON
types. What a backend cannot store is refused with a reason naming the backend.
"""

from __future__ import annotations

import math
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from monapi.tsdb import Point, Series, TimeSeriesStore, Value, WriteBatch
from monapi.tsdb.influxdb import server_match
from monapi.tsdb.victoriametrics import (
    MANY_CHUNK,
    MANY_CHUNK_CHARS,
    VictoriaMetricsStore,
    server_chunks,
    server_matcher,
)

from .conftest import TSDB_BACKENDS, backend_app, bearer, push, register_server
from .test_queries import EXPECTED, SAMPLES

BACKENDS = TSDB_BACKENDS
T0 = (int(time.time()) // 3600) * 3600 - 7200  # an hour boundary, one to two hours ago


@dataclass
class Backend:
    name: str
    app: Flask
    client: FlaskClient
    token: str
    sync: Callable[[], None]  # make accepted points visible to reads (VictoriaMetrics buffers)

    def server(self, hostname: str = "web-01") -> dict[str, Any]:
        return register_server(self.client, self.token, hostname)

    def push(self, key: str, points: list[dict[str, Any]]) -> Any:
        resp = push(self.client, key, {"points": points})
        self.sync()
        return resp

    def field(self, measurement: str, name: str, ftype: str) -> None:
        resp = self.client.post(
            "/api/v1/fields",
            json={"measurement": measurement, "name": name, "type": ftype},
            headers=bearer(self.token),
        )
        assert resp.status_code == 201, resp.get_json()

    def query(self, server_id: int, **params: Any) -> dict[str, Any]:
        resp = self.client.get(
            f"/api/v1/servers/{server_id}/metrics?{urllib.parse.urlencode(params, doseq=True)}",
            headers=bearer(self.token),
        )
        assert resp.status_code == 200, resp.get_json()
        body: dict[str, Any] = resp.get_json()
        return body

    def latest(self, server_id: int) -> list[dict[str, Any]]:
        resp = self.client.get(f"/api/v1/servers/{server_id}/latest", headers=bearer(self.token))
        assert resp.status_code == 200, resp.get_json()
        values: list[dict[str, Any]] = resp.get_json()["values"]
        return values


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    name: str = request.param
    app, token, sync = backend_app(request, tmp_path / "data", name)
    return Backend(name, app, app.test_client(), token, sync)


def values(series: dict[str, Any]) -> list[tuple[int, Any, str]]:
    """(time, value, JSON type) of each point: 7 and 7.0 are different answers."""
    return [(t, v, type(v).__name__) for t, v in series["points"]]


# system.load1 samples (offset seconds, value), pushed out of order, and their aggregations
# worked out by hand for 60 s buckets at T0, T0+60 and T0+180: the query tests' data.
LOAD1, LOAD1_EXPECTED = SAMPLES, EXPECTED


@pytest.mark.parametrize("agg", list(LOAD1_EXPECTED))
def test_each_aggregation_over_float_values(backend: Backend, agg: str) -> None:
    s = backend.server()
    pts = [{"timestamp": T0 + off, "fields": {"load1": v}} for off, v in LOAD1]
    assert backend.push(s["api_key"], pts).status_code == 204
    body = backend.query(
        s["id"], fields="system.load1", start=T0, end=T0 + 299, step="60s", agg=agg
    )
    (series,) = body["series"]
    assert (series["measurement"], series["field"], series["tags"]) == ("system", "load1", {})
    want_type = "int" if agg == "count" else "float"
    expected = [
        (T0 + b, v, want_type) for b, v in zip((0, 60, 180), LOAD1_EXPECTED[agg], strict=True)
    ]
    assert values(series) == expected


@pytest.mark.parametrize(
    ("agg", "expected"),
    [
        ("mean", [(0, 5.0), (60, 15.0)]),
        ("count", [(0, 3), (60, 2)]),
        ("last", [(0, 6.0), (60, 20.0)]),
    ],
)
def test_a_range_that_starts_and_ends_inside_buckets_counts_only_points_inside_it(
    backend: Backend, agg: str, expected: list[tuple[int, float]]
) -> None:
    s = backend.server()
    pts = [{"timestamp": T0 + off, "fields": {"load1": v}} for off, v in LOAD1]
    assert backend.push(s["api_key"], pts).status_code == 204
    # [T0+30, T0+70]: 4, 5, 6 in the first bucket; 10, 20 in the second.
    body = backend.query(
        s["id"], fields="system.load1", start=T0 + 30, end=T0 + 70, step="60s", agg=agg
    )
    (series,) = body["series"]
    assert [(t - T0, v) for t, v in series["points"]] == expected


# system.processes is an int field: answers keep integers as integers.
PROCS = [(0, 100), (10, 101), (70, 105)]
PROCS_EXPECTED = {
    "mean": [(100.5, "float"), (105.0, "float")],
    "min": [(100, "int"), (105, "int")],
    "max": [(101, "int"), (105, "int")],
    "last": [(101, "int"), (105, "int")],
    "sum": [(201, "int"), (105, "int")],
    "count": [(2, "int"), (1, "int")],
}


@pytest.mark.parametrize("agg", list(PROCS_EXPECTED))
def test_each_aggregation_over_integer_values(backend: Backend, agg: str) -> None:
    s = backend.server()
    pts = [{"timestamp": T0 + off, "fields": {"processes": v}} for off, v in PROCS]
    assert backend.push(s["api_key"], pts).status_code == 204
    body = backend.query(
        s["id"], fields="system.processes", start=T0, end=T0 + 119, step="1m", agg=agg
    )
    (series,) = body["series"]
    assert values(series) == [
        (T0 + b, v, t) for b, (v, t) in zip((0, 60), PROCS_EXPECTED[agg], strict=True)
    ]


BOOLS = [(0, True), (10, False), (70, True)]
BOOLS_EXPECTED = {
    "mean": [(0.5, "float"), (1.0, "float")],
    "min": [(False, "bool"), (True, "bool")],
    "max": [(True, "bool"), (True, "bool")],
    "last": [(False, "bool"), (True, "bool")],
    "sum": [(1, "int"), (1, "int")],
    "count": [(2, "int"), (1, "int")],
}


@pytest.mark.parametrize("agg", list(BOOLS_EXPECTED))
def test_each_aggregation_over_boolean_values(backend: Backend, agg: str) -> None:
    backend.field("service", "healthy", "bool")
    s = backend.server()
    pts = [
        {"measurement": "service", "timestamp": T0 + off, "fields": {"healthy": v}}
        for off, v in BOOLS
    ]
    assert backend.push(s["api_key"], pts).status_code == 204
    body = backend.query(
        s["id"], fields="service.healthy", start=T0, end=T0 + 119, step="60s", agg=agg
    )
    (series,) = body["series"]
    assert values(series) == [
        (T0 + b, v, t) for b, (v, t) in zip((0, 60), BOOLS_EXPECTED[agg], strict=True)
    ]


TEXTS = [(0, "plain"), (10, 'with "quotes", a \\ backslash,\nand a newline'), (70, "ünïcode ✓")]


def test_string_values_are_stored_where_the_backend_can_and_refused_clearly_where_not(
    backend: Backend,
) -> None:
    backend.field("service", "state", "string")
    s = backend.server()
    pts = [
        {"measurement": "service", "timestamp": T0 + off, "fields": {"state": v}}
        for off, v in TEXTS
    ]
    resp = backend.push(s["api_key"], pts)
    if backend.name == "victoriametrics":
        assert resp.status_code == 422, resp.get_json()
        body = resp.get_json()
        assert body["rejected"] == 3 and body["accepted"] == 0
        for err, i in zip(body["details"], range(3), strict=True):
            assert err["index"] == i and err["field"] == "state"
            assert "VictoriaMetrics" in err["reason"] and "number" in err["reason"]
        assert backend.latest(s["id"]) == []
        return
    assert resp.status_code == 204, resp.get_json()
    for agg, expected in (("last", [TEXTS[1][1], TEXTS[2][1]]), ("count", [2, 1])):
        body = backend.query(
            s["id"], fields="service.state", start=T0, end=T0 + 119, step="60s", agg=agg
        )
        (series,) = body["series"]
        assert [v for _, v in series["points"]] == expected
    (latest,) = backend.latest(s["id"])
    assert latest["value"] == TEXTS[2][1]


def test_a_batch_with_a_value_the_backend_cannot_store_keeps_the_others(
    backend: Backend,
) -> None:
    backend.field("service", "state", "string")
    s = backend.server()
    pts = [
        {"timestamp": T0, "fields": {"load1": 1.5}},
        {"measurement": "service", "timestamp": T0, "fields": {"state": "up"}},
        {"timestamp": T0 + 10, "fields": {"load1": 2.5}},
    ]
    resp = backend.push(s["api_key"], pts)
    if backend.name == "victoriametrics":
        assert resp.status_code == 200, resp.get_json()
        body = resp.get_json()
        assert (body["accepted"], body["rejected"]) == (2, 1)
        assert [e["index"] for e in body["errors"]] == [1]
    else:
        assert resp.status_code == 204, resp.get_json()
    body = backend.query(s["id"], fields="system.load1", start=T0, end=T0 + 59, step="60s")
    (series,) = body["series"]
    assert series["points"] == [[T0, 2.0]]


def test_integers_beyond_what_the_backend_keeps_exactly_are_refused_or_kept_exactly(
    backend: Backend,
) -> None:
    big = 2**53 + 1  # the first integer a double cannot hold
    s = backend.server()
    resp = backend.push(s["api_key"], [{"timestamp": T0, "fields": {"processes": big}}])
    if backend.name == "victoriametrics":
        assert resp.status_code == 422, resp.get_json()
        (err,) = resp.get_json()["details"]
        assert err["field"] == "processes" and "VictoriaMetrics" in err["reason"]
        return
    assert resp.status_code == 204, resp.get_json()
    (latest,) = backend.latest(s["id"])
    assert latest["value"] == big and isinstance(latest["value"], int)


def test_floats_come_back_exactly(backend: Backend) -> None:
    # Everyday values: every backend gives back exactly what was pushed.
    numbers = [0.1, 12.5, 123456.789, 0.0, 99.99, 3.25, 1e-3]
    s = backend.server()
    pts = [{"timestamp": T0 + i, "fields": {"load1": v}} for i, v in enumerate(numbers)]
    assert backend.push(s["api_key"], pts).status_code == 204
    body = backend.query(
        s["id"], fields="system.load1", start=T0, end=T0 + 59, step="1s", agg="last"
    )
    (series,) = body["series"]
    assert [v for _, v in series["points"]] == numbers


def test_full_double_precision_is_kept_except_by_victoriametrics(backend: Backend) -> None:
    # 17 significant digits and extreme magnitudes. VictoriaMetrics keeps about 12 significant
    # digits (documented in docs/tsdb-victoriametrics.md); the others keep every bit.
    numbers = [0.30000000000000004, 1.7976931348623157e308, 5e-324, 2.718281828459045]
    s = backend.server()
    for i, v in enumerate(numbers):  # one series each: VictoriaMetrics scales per block
        srv = s if i == 0 else backend.server(f"p-{i}")
        assert (
            backend.push(srv["api_key"], [{"timestamp": T0, "fields": {"load1": v}}]).status_code
            == 204
        )
        (latest,) = backend.latest(srv["id"])
        if backend.name == "victoriametrics":
            assert math.isclose(latest["value"], v, rel_tol=1e-11) or (v < 1e-300)
        else:
            assert latest["value"] == v


TAGGED = {"/": [(0, 50.0), (30, 52.0)], "/srv/my data,x=1": [(0, 10.0), (30, 11.0)]}


def _push_disks(backend: Backend, key: str) -> None:
    pts = [
        {
            "measurement": "disk",
            "timestamp": T0 + off,
            "tags": {"mount": mount},
            "fields": {"used_percent": v},
        }
        for mount, samples in TAGGED.items()
        for off, v in samples
    ]
    assert backend.push(key, pts).status_code == 204


def test_series_keep_their_tags_and_a_tag_filter_selects_one(backend: Backend) -> None:
    s = backend.server()
    _push_disks(backend, s["api_key"])
    body = backend.query(
        s["id"], fields="disk.used_percent", start=T0, end=T0 + 59, step="60s", agg="max"
    )
    got = {x["tags"]["mount"]: x["points"] for x in body["series"]}
    assert got == {"/": [[T0, 52.0]], "/srv/my data,x=1": [[T0, 11.0]]}
    assert all(set(x["tags"]) == {"mount"} for x in body["series"])  # no host, no server_id
    body = backend.query(
        s["id"],
        fields="disk.used_percent",
        start=T0,
        end=T0 + 59,
        step="60s",
        agg="mean",
        tag="mount=/srv/my data,x=1",
    )
    (series,) = body["series"]
    assert series["tags"] == {"mount": "/srv/my data,x=1"} and series["points"] == [[T0, 10.5]]


def test_an_empty_range_gives_no_series(backend: Backend) -> None:
    s = backend.server()
    pts = [{"timestamp": T0 + off, "fields": {"load1": v}} for off, v in LOAD1]
    assert backend.push(s["api_key"], pts).status_code == 204
    for agg in ("mean", "last", "count"):
        body = backend.query(
            s["id"], fields="system.load1", start=T0 - 3600, end=T0 - 1, step="60s", agg=agg
        )
        assert body["series"] == []
    # and a server that never pushed
    other = backend.server("idle-01")
    assert backend.query(other["id"], fields="system.load1", start=T0, end=T0 + 60)["series"] == []
    assert backend.latest(other["id"]) == []


def test_servers_do_not_see_each_others_points(backend: Backend) -> None:
    a, b = backend.server("a-01"), backend.server("b-01")
    assert backend.push(a["api_key"], [{"timestamp": T0, "fields": {"load1": 1.0}}]).status_code
    assert backend.push(b["api_key"], [{"timestamp": T0, "fields": {"load1": 9.0}}]).status_code
    for srv, want in ((a, 1.0), (b, 9.0)):
        body = backend.query(srv["id"], fields="system.load1", start=T0, end=T0 + 59, agg="sum")
        (series,) = body["series"]
        assert [v for _, v in series["points"]] == [want]
        assert [x["value"] for x in backend.latest(srv["id"])] == [want]


def test_latest_gives_the_newest_value_of_every_series(backend: Backend) -> None:
    s = backend.server()
    _push_disks(backend, s["api_key"])
    pts = [
        {"timestamp": T0 + 5, "fields": {"load1": 0.5, "processes": 90}},
        {"timestamp": T0 + 15, "fields": {"load1": 0.75, "processes": 95}},
        {"timestamp": T0 + 10, "fields": {"load1": 9.9, "processes": 99}},  # late, older
    ]
    assert backend.push(s["api_key"], pts).status_code == 204
    got = {
        (v["measurement"], v["field"], tuple(sorted(v["tags"].items()))): (
            v["value"],
            type(v["value"]).__name__,
            v["timestamp"],
        )
        for v in backend.latest(s["id"])
    }

    def at(off: int) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(T0 + off))

    assert {k: (v[0], v[1]) for k, v in got.items()} == {
        ("disk", "used_percent", (("mount", "/"),)): (52.0, "float"),
        ("disk", "used_percent", (("mount", "/srv/my data,x=1"),)): (11.0, "float"),
        ("system", "load1", ()): (0.75, "float"),
        ("system", "processes", ()): (95, "int"),
    }
    for key, off in (
        (("system", "load1", ()), 15),
        (("disk", "used_percent", (("mount", "/"),)), 30),
    ):
        assert got[key][2].startswith(at(off)), got[key]


def test_deleting_a_server_deletes_its_points(backend: Backend) -> None:
    s = backend.server()
    keep = backend.server("keep-01")
    for srv in (s, keep):
        pts = [{"timestamp": T0 + off, "fields": {"load1": v}} for off, v in LOAD1]
        assert backend.push(srv["api_key"], pts).status_code == 204
    resp = backend.client.delete(f"/api/v1/servers/{s['id']}", headers=bearer(backend.token))
    assert resp.status_code == 204
    backend.sync()
    store = backend.app.extensions["monapi.tsdb"]
    assert store.latest([s["id"]]) == {s["id"]: []}
    assert (
        store.query(
            s["id"], [("system", "load1")], T0 * 10**9, (T0 + 300) * 10**9, 60 * 10**9, "count"
        )
        == []
    )
    body = backend.query(keep["id"], fields="system.load1", start=T0, end=T0 + 299, agg="count")
    (series,) = body["series"]
    assert sum(v for _, v in series["points"]) == len(LOAD1)


def test_readyz_names_the_backend(backend: Backend) -> None:
    resp = backend.client.get("/readyz")
    assert resp.status_code == 200, resp.get_json()
    checks = resp.get_json()["checks"]
    assert checks["tsdb"] == {"backend": backend.name, "status": "ok"}


def test_nothing_is_lost_or_invented_in_a_bigger_batch(backend: Backend) -> None:
    s = backend.server()
    n = 2000
    pts = [
        {"timestamp": T0 + i, "fields": {"load1": float(i % 97), "processes": i}} for i in range(n)
    ]
    assert backend.push(s["api_key"], pts).status_code == 204
    body = backend.query(
        s["id"], fields="system.load1,system.processes", start=T0, end=T0 + n, step="1h", agg="sum"
    )
    got = {x["field"]: x["points"] for x in body["series"]}
    assert got["processes"] == [[T0, n * (n - 1) // 2]]
    assert math.isclose(got["load1"][0][1], float(sum(i % 97 for i in range(n))))


def test_concurrent_small_writes_are_each_stored_once(backend: Backend) -> None:
    """Many threads writing one point at a time (agents; the HTTP engines group them)."""
    servers = [backend.server(f"conc-{i}") for i in range(8)]
    per_thread = 25
    failures: list[BaseException] = []

    def agent(k: int) -> None:
        s = servers[k % len(servers)]
        try:
            for j in range(per_thread):
                ts = (T0 + 60 * (k // len(servers)) + j) * NS
                pts = [Point("system", (), ts, {"load1": float(k * 1000 + j)})]
                assert _store(backend).write([WriteBatch(s["id"], s["hostname"], pts)]) == []
        except BaseException as exc:  # reported below, not lost in the thread
            failures.append(exc)

    threads = [threading.Thread(target=agent, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failures == []
    backend.sync()
    for i, s in enumerate(servers):
        body = backend.query(
            s["id"], fields="system.load1", start=T0, end=T0 + 3600, step="1h", agg="sum"
        )
        (series,) = body["series"]
        ks = [k for k in range(16) if k % len(servers) == i]
        want = sum(float(k * 1000 + j) for k in ks for j in range(per_thread))
        assert series["points"] == [[T0, want]]
        count = backend.query(
            s["id"], fields="system.load1", start=T0, end=T0 + 3600, step="1h", agg="count"
        )
        assert count["series"][0]["points"] == [[T0, len(ks) * per_thread]]


# query_many: the answer of query for every server, in one call ----------------------------------
NS = 1_000_000_000
MANY_SELECTORS = [
    ("system", "load1"),
    ("disk", "used_percent"),
    ("service", "healthy"),
    ("system", "processes"),
]
# (measurement, tags, offset s, fields)
Sample = tuple[str, dict[str, str], int, dict[str, Value]]


def _store(backend: Backend) -> TimeSeriesStore:
    store: TimeSeriesStore = backend.app.extensions["monapi.tsdb"]
    return store


def _write(backend: Backend, server_id: int, hostname: str, samples: list[Sample]) -> None:
    """Points straight into the store (so a test can also write under a renamed host)."""
    pts = [
        Point(meas, tuple(sorted(tags.items())), (T0 + off) * NS, fields)
        for meas, tags, off, fields in samples
    ]
    assert _store(backend).write([WriteBatch(server_id, hostname, pts)]) == []
    backend.sync()


def _disks(values: dict[str, list[tuple[int, float]]]) -> list[Sample]:
    return [
        ("disk", {"mount": mount}, off, {"used_percent": v})
        for mount, samples in values.items()
        for off, v in samples
    ]


@pytest.mark.parametrize("agg", ["mean", "min", "max", "last", "sum", "count"])
def test_query_many_answers_what_query_answers_for_each_server(backend: Backend, agg: str) -> None:
    backend.field("service", "healthy", "bool")
    a, b, idle, old, renamed = (
        backend.server(h) for h in ("a-01", "b-01", "idle-01", "old-01", "renamed-01")
    )
    _write(
        backend,
        a["id"],
        "a-01",
        [("system", {}, off, {"load1": v}) for off, v in LOAD1]
        + [("system", {}, off, {"processes": v}) for off, v in PROCS]
        + [("service", {}, off, {"healthy": v}) for off, v in BOOLS]
        + _disks({"/": [(0, 50.0), (40, 52.5)], "/srv/my data,x=1": [(5, 10.0), (65, 11.0)]})
        + _disks({"/var": [(100, 70.25), (200, 71.0)]}),
    )
    _write(
        backend,
        b["id"],
        "b-01",
        [("system", {}, off, {"load1": 100.0 + off}) for off in (0, 31, 59, 60, 250)]
        + [("service", {}, 70, {"healthy": False})]
        + _disks({"/": [(45, 20.0)]}),
    )
    # Points only outside the range asked for.
    _write(backend, old["id"], "old-01", [("system", {}, -3600, {"load1": 1.0})])
    # A renamed host: the server's series continue under a new host tag.
    _write(
        backend,
        renamed["id"],
        "renamed-old",
        [("system", {}, 35, {"load1": 1.5}), *_disks({"/": [(50, 30.0)]})],
    )
    _write(
        backend,
        renamed["id"],
        "renamed-new",
        [("system", {}, 95, {"load1": 2.5}), *_disks({"/": [(130, 31.0)]})],
    )
    unknown = renamed["id"] + 500
    ids = [a["id"], b["id"], idle["id"], old["id"], renamed["id"], unknown]
    store = _store(backend)
    # From inside the first bucket (a cut bucket) to the end of the fifth.
    span = ((T0 + 30) * NS, (T0 + 299) * NS, 60 * NS, agg)
    many = store.query_many(ids, MANY_SELECTORS, *span)
    assert many == {sid: store.query(sid, MANY_SELECTORS, *span) for sid in ids}
    assert list(many) == ids
    assert many[idle["id"]] == many[old["id"]] == many[unknown] == []
    # The answers are not all empty: every kind of series is there.
    got_a = [(s.measurement, s.field, s.tags) for s in many[a["id"]]]
    assert got_a == [
        ("system", "load1", {}),
        ("system", "processes", {}),
        ("disk", "used_percent", {"mount": "/"}),
        ("disk", "used_percent", {"mount": "/srv/my data,x=1"}),
        ("disk", "used_percent", {"mount": "/var"}),
        ("service", "healthy", {}),
    ]
    got_renamed = [(s.measurement, s.field, s.tags, len(s.points)) for s in many[renamed["id"]]]
    assert got_renamed == [("system", "load1", {}, 2), ("disk", "used_percent", {"mount": "/"}, 2)]
    assert [t for t, _ in many[b["id"]][0].points] == [(T0 + off) * NS for off in (0, 60, 240)]


def test_query_many_gives_every_server_asked_for_a_key(backend: Backend) -> None:
    s, idle = backend.server("web-01"), backend.server("idle-01")
    _write(backend, s["id"], "web-01", [("system", {}, 0, {"load1": 1.0})])
    store = _store(backend)
    span = (T0 * NS, (T0 + 59) * NS, 60 * NS, "mean")
    unknown = idle["id"] + 700
    got = store.query_many([unknown, idle["id"], s["id"]], [("system", "load1")], *span)
    assert got == {
        unknown: [],
        idle["id"]: [],
        s["id"]: [Series("system", "load1", {}, [(T0 * NS, 1.0)])],
    }
    assert store.query_many([], [("system", "load1")], *span) == {}
    assert store.query_many([s["id"], idle["id"]], [], *span) == {s["id"]: [], idle["id"]: []}
    # The same id twice is answered once.
    assert store.query_many([s["id"], s["id"]], [("system", "load1")], *span) == {
        s["id"]: [Series("system", "load1", {}, [(T0 * NS, 1.0)])]
    }
    with pytest.raises(ValueError, match="median"):
        store.query_many([s["id"]], [("system", "load1")], T0 * NS, (T0 + 59) * NS, NS, "median")


def test_query_many_over_more_servers_than_one_statement_takes(backend: Backend) -> None:
    x, y, z = (backend.server(h) for h in ("x-01", "y-01", "z-01"))
    _write(
        backend,
        x["id"],
        "x-01",
        [("system", {}, 0, {"load1": 1.0}), ("system", {}, 10, {"load1": 2.0})],
    )
    _write(backend, y["id"], "y-01", [("system", {}, 20, {"load1": 10.0})])
    _write(
        backend, z["id"], "z-01", [("system", {}, 70, {"load1": 5.0}), *_disks({"/": [(80, 9.0)]})]
    )
    # Ids no server has, long enough to make VictoriaMetrics' matchers split by their length.
    fillers = [10**12 + i for i in range(1197)]
    ids = [x["id"], *fillers[:599], y["id"], *fillers[599:], z["id"]]
    assert len(ids) == 1200
    store = _store(backend)
    selectors = [("system", "load1"), ("disk", "used_percent")]
    span = (T0 * NS, (T0 + 119) * NS, 60 * NS, "sum")
    got = store.query_many(ids, selectors, *span)
    assert list(got) == ids
    assert got[x["id"]] == [Series("system", "load1", {}, [(T0 * NS, 3.0)])]
    assert got[y["id"]] == [Series("system", "load1", {}, [(T0 * NS, 10.0)])]
    assert got[z["id"]] == [
        Series("system", "load1", {}, [((T0 + 60) * NS, 5.0)]),
        Series("disk", "used_percent", {"mount": "/"}, [((T0 + 60) * NS, 9.0)]),
    ]
    assert all(got[sid] == [] for sid in fillers)
    for srv in (x, y, z):
        assert got[srv["id"]] == store.query(srv["id"], selectors, *span)


def test_query_many_keeps_each_servers_points_to_itself(backend: Backend) -> None:
    a, b = backend.server("a-01"), backend.server("b-01")
    # The same series (measurement, field, tags) on both servers, with other values.
    for srv, base in ((a, 1.0), (b, 100.0)):
        _write(
            backend,
            srv["id"],
            srv["hostname"],
            [
                ("system", {}, 0, {"load1": base}),
                ("system", {}, 60, {"load1": base + 1}),
                *_disks({"/": [(0, base * 2)]}),
            ],
        )
    store = _store(backend)
    selectors = [("system", "load1"), ("disk", "used_percent")]
    span = (T0 * NS, (T0 + 119) * NS, 60 * NS, "sum")
    for srv, base in ((a, 1.0), (b, 100.0)):
        want = [
            Series("system", "load1", {}, [(T0 * NS, base), ((T0 + 60) * NS, base + 1)]),
            Series("disk", "used_percent", {"mount": "/"}, [(T0 * NS, base * 2)]),
        ]
        assert store.query_many([a["id"], b["id"]], selectors, *span)[srv["id"]] == want
        assert store.query_many([srv["id"]], selectors, *span) == {srv["id"]: want}


def test_server_conditions_name_exactly_the_servers() -> None:
    assert server_match([7]) == "\"server_id\"::tag = '7'"
    assert server_match([1, 22, 333]) == '"server_id"::tag =~ /^(1|22|333)$/'
    assert server_matcher([7]) == 'server_id="7"'
    assert server_matcher([1, 22, 333]) == 'server_id=~"1|22|333"'


def test_victoriametrics_server_chunks_keep_every_query_within_its_length_limit() -> None:
    ids = [*range(1, 700), *(10**15 + i for i in range(800)), 5, 6]  # 5 and 6 twice
    chunks = server_chunks(ids)
    assert [sid for chunk in chunks for sid in chunk] == list(dict.fromkeys(ids))
    assert len(chunks[0]) == MANY_CHUNK  # short ids: as many as a chunk takes
    for chunk in chunks:
        assert 0 < len(chunk) <= MANY_CHUNK
        assert len("|".join(map(str, chunk))) <= MANY_CHUNK_CHARS
    # Even with field names filling a selector, each query stays below VictoriaMetrics'
    # -search.maxQueryLen (16 KiB).
    store = VictoriaMetricsStore("http://127.0.0.1:9")
    wanted = [("m", f"field_{i:03d}_{'x' * 40}") for i in range(200)] + [("disk", "used")]
    for chunk in chunks:
        for expr in store._exprs("avg_over_time", server_matcher(chunk), wanted, {}):
            assert len(expr("3600s", " offset -3600s")) < 16 * 1024
    store.close()
