"""The fast paths against a real ``influxd``: what they store is what the exact path stores.

Two servers push the same points; the fast path is forced off for the second (its answer to
``line_protocol`` / ``json_batch`` replaced by None), so the second goes through the exact path.
InfluxDB then holds the same values for both, and both get the same answers, partial writes
included.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from monapi import fastpath
from monapi.api import influx
from monapi.api.v1 import data
from monapi.tsdb.base import EncodedLines, LazyPoints, Point, WriteBatch
from monapi.tsdb.lineprotocol import encode

from .conftest import bearer, push, register_server
from .test_tsdb_influxdb import NS, T0, fresh_db, influx_app, rows, store_of, write_lp

FIELDS = [
    *({"name": f"f{i}", "type": "float", "min": 0, "max": 100} for i in range(3)),
    {"name": "big", "type": "float"},
    {"name": "cnt", "type": "int"},
]
# Value texts the fast path forwards as they are; InfluxDB must read each as the exact path's
# float.
BOUNDED = ["0", "-0", "100", "1e2", "1E1", "0.1", "55.55", "3", "99.99999999999999", "-0.0"]
UNBOUNDED = [
    "1e308", "-1e-400", "1.7976931348623157e308", "12345678901234567890123", "-0", "5e-324",
    "0.1000000000000000055511151231257827", "-123.456e-7", "1e+30", "-9007199254740993",
]  # fmt: skip


class Setup:
    def __init__(self, tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.url, self.db = url, fresh_db()
        self.app, token = influx_app(tmp_path, url, self.db)
        self.client: FlaskClient = self.app.test_client()
        for f in FIELDS:
            resp = self.client.post(
                "/api/v1/fields", json={"measurement": "bench", **f}, headers=bearer(token)
            )
            assert resp.status_code == 201, resp.get_json()
        self.fast = register_server(self.client, token, "fast-01")
        self.exact = register_server(self.client, token, "exact-01")
        self.taken: list[tuple[str, bool]] = []  # (server id, fast path taken)
        exact_id = str(self.exact["id"])

        def spy(real: Callable[..., Any]) -> Callable[..., Any]:
            def wrapper(*args: Any) -> Any:
                ident = dict(args[-2])
                if ident["server_id"] == exact_id:
                    self.taken.append((exact_id, False))
                    return None  # the exact path
                got = real(*args)
                self.taken.append((ident["server_id"], got is not None))
                return got

            return wrapper

        monkeypatch.setattr(influx, "line_protocol", spy(fastpath.line_protocol))
        monkeypatch.setattr(data, "json_batch", spy(fastpath.json_batch))

    def write(self, server: dict[str, Any], body: str, precision: str = "ns") -> Any:
        return self.client.post(
            f"/write?db=x&precision={precision}",
            data=body.encode(),
            headers={"Authorization": f"Token {server['api_key']}"},
        )

    def stored(self, server: dict[str, Any]) -> list[dict[str, Any]]:
        """The server's rows, without the identity tags."""
        out = []
        for r in rows(self.url, self.db, "bench"):
            if r.pop("server_id") == str(server["id"]):
                r.pop("host")
                out.append(r)
        return sorted(out, key=lambda r: r["time"])


@pytest.fixture
def setup(tmp_path: Path, influxdb_url: str, monkeypatch: pytest.MonkeyPatch) -> Setup:
    return Setup(tmp_path, influxdb_url, monkeypatch)


def lp_lines(server: dict[str, Any], start_ns: int, identity: bool = True) -> list[str]:
    ident = f",host={server['hostname']},server_id={server['id']}" if identity else ""
    lines = []
    for i, value in enumerate(BOUNDED):
        lines.append(f"bench,cpu=cpu0{ident} f0={value},f1=1.5 {start_ns + i * NS}")
    for i, value in enumerate(UNBOUNDED):
        lines.append(f"bench,cpu=cpu1{ident} big={value} {start_ns + (100 + i) * NS}")
    return lines


def test_line_protocol_through_the_fast_path_stores_what_the_exact_path_stores(
    setup: Setup,
) -> None:
    for server in (setup.fast, setup.exact):
        resp = setup.write(server, "\n".join(lp_lines(server, T0 * NS)) + "\n")
        assert resp.status_code == 204, resp.get_json()
    assert setup.taken == [(str(setup.fast["id"]), True), (str(setup.exact["id"]), False)]
    fast, exact = setup.stored(setup.fast), setup.stored(setup.exact)
    assert fast == exact
    assert len(fast) == len(BOUNDED) + len(UNBOUNDED)
    assert [r["f0"] for r in fast[: len(BOUNDED)]] == [float(v) for v in BOUNDED]
    assert [r["big"] for r in fast[len(BOUNDED) :]] == [float(v) for v in UNBOUNDED]


def test_rewritten_keys_and_other_precisions_store_what_the_exact_path_stores(
    setup: Setup,
) -> None:
    # In seconds, lines without the identity tags (the key's are added) or with another host
    # (replaced); then lines without timestamps.
    for server in (setup.fast, setup.exact):
        lines = []
        for line in lp_lines(server, T0 * NS, identity=False):
            head, ts = line.rsplit(" ", 1)
            lines.append(f"{head.replace(',cpu=cpu1', ',cpu=cpu1,host=liar')} {int(ts) // NS}")
        assert setup.write(server, "\n".join(lines), "s").status_code == 204
        assert setup.write(server, "bench,cpu=now f0=5,f2=6\n").status_code == 204
    assert [fast for _, fast in setup.taken] == [True, True, False, False]
    fast, exact = setup.stored(setup.fast), setup.stored(setup.exact)
    now_fast, now_exact = fast.pop(), exact.pop()  # the points without timestamps
    assert abs(now_fast["time"] - now_exact["time"]) < 60 * NS
    now_fast.pop("time")
    assert now_fast == {"cpu": "now", "f0": 5.0, "f1": None, "f2": 6.0, "big": None}
    assert fast == exact and len(fast) == len(BOUNDED) + len(UNBOUNDED)


def test_json_through_the_fast_path_stores_what_the_exact_path_stores(setup: Setup) -> None:
    points: list[dict[str, Any]] = [
        {
            "measurement": "bench",
            "timestamp": (T0 + i) * NS,
            "tags": {"cpu": "cpu0"},
            "fields": {"f0": float(v), "f1": 2},
        }
        for i, v in enumerate(BOUNDED)
    ]
    points += [
        {"measurement": "bench", "timestamp": T0 + 100 + i, "fields": {"big": float(v)}}
        for i, v in enumerate(UNBOUNDED)
    ]
    for server in (setup.fast, setup.exact):
        assert push(setup.client, server["api_key"], {"points": points}).status_code == 204
    assert setup.taken == [(str(setup.fast["id"]), True), (str(setup.exact["id"]), False)]
    fast, exact = setup.stored(setup.fast), setup.stored(setup.exact)
    assert fast == exact and len(fast) == len(points)


def test_a_partial_write_gets_the_exact_paths_answer(setup: Setup) -> None:
    # Someone stored bench.f1 as an integer in this shard: InfluxDB refuses the lines with f1.
    write_lp(setup.url, setup.db, f"bench,host=other,server_id=999 f1=5i {T0 - 100}")
    answers = []
    for server in (setup.fast, setup.exact):
        ident = f",host={server['hostname']},server_id={server['id']}"
        body = "\n".join(
            [
                f"bench,cpu=a{ident} f0=1 {T0 * NS}",
                f"bench,cpu=a{ident} f1=2.5 {(T0 + 1) * NS}",
                f"bench,cpu=a{ident} f0=3,f1=4 {(T0 + 2) * NS}",
                f"bench,cpu=a{ident} f2=5 {(T0 + 3) * NS}",
            ]
        )
        resp = setup.write(server, body)
        assert resp.status_code == 400
        answer = resp.get_json()
        answer.pop("request_id")
        answers.append(answer)
    assert [fast for _, fast in setup.taken] == [True, False]
    assert answers[0] == answers[1]
    assert answers[0]["error"].startswith("partial write: line 2: f1: InfluxDB refused the point")
    assert (answers[0]["accepted"], answers[0]["rejected"]) == (2, 2)
    assert [d["line"] for d in answers[0]["details"]] == [2, 3]
    fast, exact = setup.stored(setup.fast), setup.stored(setup.exact)
    assert fast == exact and [r["time"] // NS for r in fast] == [T0, T0 + 3]

    # The same through JSON: 200, the refused points listed.
    answers = []
    for server in (setup.fast, setup.exact):
        points = [
            {"measurement": "bench", "timestamp": (T0 + 10) * NS, "fields": {"f1": 1.0}},
            {"measurement": "bench", "timestamp": (T0 + 11) * NS, "fields": {"f2": 1.0}},
        ]
        resp = push(setup.client, server["api_key"], {"points": points})
        assert resp.status_code == 200
        answers.append(resp.get_json())
    assert [fast for _, fast in setup.taken[2:]] == [True, False]
    assert answers[0] == answers[1]
    assert [(e["index"], e["field"]) for e in answers[0]["errors"]] == [(0, "f1")]


def test_the_store_writes_pre_encoded_and_normal_batches_together(
    tmp_path: Path, influxdb_url: str
) -> None:
    """Several requests in one write (group commit): pre-encoded batches of some servers, points
    of others; InfluxDB's refusals map back to each batch, and a pre-encoded batch's points are
    built only then."""
    db = fresh_db()
    app: Flask
    app, _ = influx_app(tmp_path, influxdb_url, db)
    store = store_of(app)
    write_lp(influxdb_url, db, f"system,host=other,server_id=999 load5=5i {T0 - 100}")

    def points(server: int, n: int, conflict: set[int] = frozenset()) -> list[Point]:  # type: ignore[assignment]
        return [
            Point(
                "system",
                (("cpu", "c"),),
                (T0 + i) * NS,
                {"load5" if i in conflict else "load1": float(server * 100 + i)},
            )
            for i in range(n)
        ]

    def encoded(server: int, pts: list[Point]) -> WriteBatch:
        body = encode([WriteBatch(server, f"h{server}", pts)])[0]
        lazy = LazyPoints(len(pts), lambda: pts)
        return WriteBatch(server, f"h{server}", lazy, EncodedLines(body[:-1], len(pts)))

    ok = encoded(1, points(1, 600))
    refused_some = encoded(3, points(3, 700, conflict={5, 650}))
    batches = [ok, WriteBatch(2, "h2", points(2, 3, conflict={1})), refused_some]
    refused = store.write(batches)
    assert sorted((r.batch, r.index, r.field) for r in refused) == [
        (1, 1, "load5"),
        (2, 5, "load5"),
        (2, 650, "load5"),
    ]
    assert isinstance(ok.points, LazyPoints) and isinstance(refused_some.points, LazyPoints)
    assert refused_some.points.built  # needed to find the refused points
    stored = rows(influxdb_url, db, "system")
    by_server: dict[str, int] = {}
    for r in stored:
        by_server[r["server_id"]] = by_server.get(r["server_id"], 0) + 1
    assert by_server == {"999": 1, "1": 600, "2": 2, "3": 698}
    assert {r["host"] for r in stored if r["server_id"] == "3"} == {"h3"}
    assert time.time_ns() > T0 * NS
