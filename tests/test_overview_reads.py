"""The overview's read path: the embedded store's ``latest_of`` (latest values of some fields)
and the overview built from it give exactly what ``latest`` and the former overview gave."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from monapi.services import metrics as msvc
from monapi.tsdb import LatestValue, Point, TimeSeriesStore, Value, WriteBatch
from monapi.tsdb.sqlite import CHUNK, LATEST_BATCH, SQLiteStore

from .conftest import bearer, push, register_server

CONFIG_STORES = ["sqlite", "postgresql"]  # the overview reads server rows from either
NS = 1_000_000_000
T = 1_700_000_000


@pytest.fixture
def store(tmp_path: Path) -> SQLiteStore:
    s = SQLiteStore(tmp_path / "ts.sqlite3", retention_s=10**9, prune_interval_s=3600)
    yield s
    s.close()


def pt(meas: str, ts: int, fields: dict[str, Value], **tags: str) -> Point:
    return Point(meas, tuple(sorted(tags.items())), ts * NS, fields)


def _write_mixed(store: SQLiteStore) -> None:
    """Servers 1 and 2 with tagged and untagged series, every value type, fields missing from
    some points and late (older) points; server 3 writes nothing."""
    store.write(
        [
            WriteBatch(
                1,
                "a",
                [
                    pt("cpu", T, {"usage_percent": 10.5, "idle_percent": 89.5}),
                    pt("cpu", T + 10, {"usage_percent": 12.0}),
                    pt("cpu", T + 5, {"usage_percent": 99.0, "steal_percent": 0.0}),  # late
                    pt("cpu", T, {"usage_percent": 50.0}, cpu="cpu1"),
                    pt("cpu", T, {"usage_percent": 40.0}, cpu="cpu0"),
                    pt("disk", T, {"used_percent": 40.0, "used": 4}, mount="/"),
                    pt("disk", T, {"used_percent": 90.0, "free": 1}, mount="/var"),
                    pt("disk", T, {"used_percent": 7}, mount="/srv/my data,x=1"),
                    pt("system", T, {"load1": 0.5, "uptime": 2**62, "up": True, "os": "linux"}),
                    pt("system", T + 20, {"up": False, "state": 'x","load1":5'}),
                    pt("mem", T, {"used_percent": 33.25, "total": 8_000_000_000}),
                    pt("net", T, {"bytes_recv_per_sec": 1.0e300}, interface="eth0"),
                ],
            ),
            WriteBatch(
                2,
                "b",
                [
                    pt("swap", T, {"used_percent": -0.0}),
                    pt("system", T, {"uptime": 5}),
                    pt("disk", T, {"used": 1}, mount="/"),  # no used_percent at all
                ],
            ),
        ]
    )


def _filtered(
    got: dict[int, list[LatestValue]], selectors: Sequence[tuple[str, str]]
) -> dict[int, list[LatestValue]]:
    keep = set(selectors)
    return {
        sid: [lv for lv in values if (lv.measurement, lv.field) in keep]
        for sid, values in got.items()
    }


def _typed(got: dict[int, list[LatestValue]]) -> list[tuple[Any, ...]]:
    """Everything in an answer, with the type of each value: 7 is not 7.0, True is not 1."""
    return [
        (sid, lv.measurement, lv.field, lv.tags, lv.ts, lv.value, type(lv.value))
        for sid, values in got.items()
        for lv in values
    ]


SELECTOR_SETS: list[list[tuple[str, str]]] = [
    msvc.OVERVIEW_SELECTORS,
    [("cpu", "usage_percent")],
    [("system", "up"), ("system", "state"), ("system", "uptime"), ("system", "os")],
    [("disk", "used_percent"), ("disk", "used"), ("disk", "free")],
    [("cpu", "usage_percent"), ("cpu", "usage_percent"), ("cpu", "steal_percent")],  # repeated
    [("nope", "x"), ("cpu", "nope")],
    [("net", "bytes_recv_per_sec"), ("swap", "used_percent"), ("mem", "total")],
    [],
]


@pytest.mark.parametrize("selectors", SELECTOR_SETS)
def test_latest_of_is_latest_keeping_only_the_selected_fields(
    store: SQLiteStore, selectors: list[tuple[str, str]]
) -> None:
    _write_mixed(store)
    ids = [3, 1, 2, 99]
    got = list(store.latest_of(ids, selectors))
    assert [sid for sid, _ in got] == ids  # every server asked for, in the order asked
    assert _typed(dict(got)) == _typed(_filtered(store.latest(ids), selectors))


def test_latest_of_values_by_hand(store: SQLiteStore) -> None:
    _write_mixed(store)
    got = dict(store.latest_of([1, 2, 3], msvc.OVERVIEW_SELECTORS))
    assert [(lv.measurement, lv.field, lv.tags, lv.ts // NS, lv.value) for lv in got[1]] == [
        ("cpu", "usage_percent", {"cpu": "cpu0"}, T, 40.0),  # by tag text: '{"' before '{}'
        ("cpu", "usage_percent", {"cpu": "cpu1"}, T, 50.0),
        ("cpu", "usage_percent", {}, T + 10, 12.0),
        ("disk", "used_percent", {"mount": "/"}, T, 40.0),
        ("disk", "used_percent", {"mount": "/srv/my data,x=1"}, T, 7),
        ("disk", "used_percent", {"mount": "/var"}, T, 90.0),
        ("mem", "used_percent", {}, T, 33.25),
        ("system", "load1", {}, T + 20, 0.5),
        ("system", "uptime", {}, T + 20, 2**62),
    ]
    assert [(lv.field, lv.value) for lv in got[2]] == [("used_percent", -0.0), ("uptime", 5)]
    assert got[3] == []
    assert list(store.latest_of([], msvc.OVERVIEW_SELECTORS)) == []
    assert list(store.latest_of([2, 1, 2], [])) == [(2, []), (1, [])]  # each server once
    # One dict per tag set in an answer (read-only for callers), across servers too.
    both = store.latest([1, 2])
    root = [lv.tags for sid in (1, 2) for lv in both[sid] if lv.tags == {"mount": "/"}]
    assert len(root) == 3 and all(t is root[0] for t in root)


@pytest.mark.parametrize("n", [LATEST_BATCH - 1, LATEST_BATCH, CHUNK + 37])
def test_latest_of_over_more_servers_than_one_statement_takes(store: SQLiteStore, n: int) -> None:
    store.write(
        [
            WriteBatch(i, f"h{i}", [pt("cpu", T + i, {"usage_percent": float(i), "x": i})])
            for i in range(1, n + 1)
        ]
    )
    ids = list(range(n + 2, 0, -1))  # two without data; not in id order
    got = list(store.latest_of(ids, [("cpu", "usage_percent")]))
    assert [sid for sid, _ in got] == ids
    assert _typed(dict(got)) == _typed(_filtered(store.latest(ids), [("cpu", "usage_percent")]))
    assert [v[0].value for _, v in got[2:]] == [float(i) for i in range(n, 0, -1)]
    assert got[0][1] == got[1][1] == []


class _NoLatestOf:
    """A store with only ``latest`` (as InfluxDB and VictoriaMetrics have)."""

    def __init__(self, inner: SQLiteStore) -> None:
        self.inner = inner

    def latest(self, server_ids: Sequence[int]) -> dict[int, list[LatestValue]]:
        return self.inner.latest(server_ids)


@pytest.mark.parametrize("selectors", SELECTOR_SETS)
def test_latest_of_a_store_without_it_filters_latest(
    store: SQLiteStore, selectors: list[tuple[str, str]]
) -> None:
    _write_mixed(store)
    plain: Any = _NoLatestOf(store)
    ids = [3, 1, 2, 1]
    fallback = list(msvc.latest_of(plain, ids, selectors))
    embedded = list(msvc.latest_of(store, ids, selectors))
    assert [sid for sid, _ in fallback] == [sid for sid, _ in embedded] == [3, 1, 2]
    assert _typed(dict(fallback)) == _typed(dict(embedded))
    assert _typed(dict(fallback)) == _typed(_filtered(store.latest([3, 1, 2]), selectors))


# The overview, through the API ----------------------------------------------------------------
def _former_values(latest: list[LatestValue]) -> dict[str, Value | None]:
    """The overview values as the overview computed them before it read only its fields: from
    every latest value of the server (the reduction itself is shared, the input is not)."""
    return msvc.overview_values(latest)


def _overview(client: FlaskClient, token: str, **params: Any) -> dict[str, Any]:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    resp = client.get(f"/api/v1/overview?{query}", headers=bearer(token))
    assert resp.status_code == 200, resp.get_json()
    body: dict[str, Any] = resp.get_json()
    return body


def test_overview_gives_what_the_former_overview_gave(
    app: Flask, client: FlaskClient, admin_token: str
) -> None:
    now = int(time.time())
    web = register_server(client, admin_token, "web-01", labels={"role": "web", "rack": "7"})
    db = register_server(client, admin_token, "db-01", "192.0.2.11")
    register_server(client, admin_token, "quiet", "192.0.2.12", interval=60)
    gone = register_server(client, admin_token, "gone", "192.0.2.13")
    resp = client.post(f"/api/v1/servers/{gone['id']}/disable", headers=bearer(admin_token))
    assert resp.status_code == 200, resp.get_json()
    disks = {"/": {"used_percent": 40.0}, "/var": {"used_percent": 91.5}, "/boot": {"used": 5}}
    points = [
        {"measurement": "cpu", "timestamp": now - 20, "fields": {"usage_percent": 90.0}},
        {"measurement": "cpu", "timestamp": now - 10, "fields": {"usage_percent": 12.5}},
        {"measurement": "cpu", "timestamp": now - 30, "fields": {"usage_percent": 70.0}},  # late
        {"measurement": "mem", "timestamp": now, "fields": {"used_percent": 33.0, "total": 8}},
        {"measurement": "system", "timestamp": now, "fields": {"load1": 0.25, "uptime": 4321}},
        *(
            {"measurement": "disk", "tags": {"mount": m}, "timestamp": now, "fields": f}
            for m, f in disks.items()
        ),
    ]
    assert push(client, web["api_key"], {"points": points}).status_code == 204
    # Two cpu series: the tagged one sorts first (its tag text), so it is the one shown.
    more = [
        {"measurement": "swap", "timestamp": now - 5, "fields": {"used_percent": 0.0}},
        {"measurement": "cpu", "timestamp": now, "fields": {"usage_percent": 8.0}},
        {
            "measurement": "cpu",
            "tags": {"cpu": "cpu0"},
            "timestamp": now - 1,
            "fields": {"usage_percent": 3.0, "idle_percent": 97.0},
        },
    ]
    assert push(client, db["api_key"], {"points": more}).status_code == 204

    body = _overview(client, admin_token, per_page=1000)
    store: TimeSeriesStore = app.extensions["monapi.tsdb"]
    items = body["items"]
    assert [i["hostname"] for i in items] == ["db-01", "gone", "quiet", "web-01"]
    latest = store.latest([i["id"] for i in items])
    for item in items:
        assert item["values"] == _former_values(latest[item["id"]]), item["hostname"]
        whole = client.get(f"/api/v1/servers/{item['id']}", headers=bearer(admin_token))
        server = whole.get_json()
        assert {k: item[k] for k in item if k != "values"} == {
            k: server[k] for k in ("id", "hostname", "status", "enabled", "last_seen", "labels")
        }
    by_name = {i["hostname"]: i for i in items}
    assert by_name["web-01"]["values"] == {
        "cpu.usage_percent": 12.5,
        "mem.used_percent": 33.0,
        "swap.used_percent": None,
        "disk.used_percent": 91.5,
        "system.load1": 0.25,
        "system.uptime": 4321,
    }
    assert by_name["db-01"]["values"]["cpu.usage_percent"] == 3.0
    assert by_name["db-01"]["values"]["swap.used_percent"] == 0.0
    assert by_name["web-01"]["labels"] == {"role": "web", "rack": "7"}
    assert by_name["web-01"]["status"] == "online"
    assert by_name["gone"]["enabled"] is False
    assert by_name["quiet"]["status"] == "never_seen"
    assert by_name["quiet"]["last_seen"] is None
    assert set(by_name["quiet"]["values"].values()) == {None}

    page = _overview(client, admin_token, per_page=2, page=2)
    assert [i["hostname"] for i in page["items"]] == ["quiet", "web-01"]
    assert (page["total"], page["pages"], page["page"], page["per_page"]) == (4, 2, 2, 2)
    assert page["items"] == items[2:]
