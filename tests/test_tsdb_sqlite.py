"""The embedded time-series store on a real SQLite file: writes, group commit, retention."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from monapi.tsdb import Point, WriteBatch
from monapi.tsdb.sqlite import SQLiteStore

NS = 1_000_000_000


def batch(server_id: int, ts_s: list[int], value: float = 1.0, field: str = "f") -> WriteBatch:
    return WriteBatch(
        server_id,
        f"h{server_id}",
        [Point("m", (), t * NS, {field: value + i}) for i, t in enumerate(ts_s)],
    )


def count(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM points").fetchone()[0])


@pytest.fixture
def store(tmp_path: Path) -> SQLiteStore:
    s = SQLiteStore(tmp_path / "ts.sqlite3", retention_s=3600, prune_interval_s=3600)
    yield s
    s.close()


def test_same_series_and_timestamp_overwrites(store: SQLiteStore) -> None:
    store.write([batch(1, [100, 200])])
    store.write([WriteBatch(1, "h1", [Point("m", (), 200 * NS, {"f": 9.0})])])
    (series,) = store.query(1, [("m", "f")], 0, 300 * NS, NS, "last")
    assert series.points == [(100 * NS, 1.0), (200 * NS, 9.0)]
    assert count(store.path) == 2


def test_tags_make_separate_series(store: SQLiteStore) -> None:
    store.write(
        [
            WriteBatch(
                1,
                "h",
                [
                    Point("disk", (("mount", "/"),), 10 * NS, {"used": 1}),
                    Point("disk", (("mount", "/var"),), 10 * NS, {"used": 2}),
                ],
            )
        ]
    )
    got = store.query(1, [("disk", "used")], 0, 20 * NS, 10 * NS, "sum")
    assert sorted((s.tags["mount"], s.points[0][1]) for s in got) == [("/", 1), ("/var", 2)]
    only = store.query(1, [("disk", "used")], 0, 20 * NS, 10 * NS, "sum", {"mount": "/var"})
    assert [s.tags for s in only] == [{"mount": "/var"}]


def test_concurrent_writers_are_grouped_and_all_stored(store: SQLiteStore) -> None:
    n_threads, per_thread = 16, 50
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(per_thread):
                store.write([batch(i + 1, [1000 + j])])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert count(store.path) == n_threads * per_thread
    latest = store.latest(list(range(1, n_threads + 1)))
    assert all(v[0].ts == (1000 + per_thread - 1) * NS for v in latest.values())


def _writer_process(path: str, server_id: int, n: int) -> None:
    s = SQLiteStore(Path(path), retention_s=3600, prune_interval_s=3600)
    for j in range(n):
        s.write([batch(server_id, [5000 + j])])
    s.close()


def test_several_processes_write_one_file(tmp_path: Path) -> None:
    """Gunicorn workers are processes: their writes must all land, none lost to locking."""
    path = tmp_path / "ts.sqlite3"
    SQLiteStore(path, 3600, 3600).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer_process, args=(str(path), i + 1, 200)) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert count(path) == 600


def test_prune_removes_only_old_points(store: SQLiteStore) -> None:
    store.write([batch(1, [100, 200, 300])])
    removed = store.prune(250 * NS)
    assert removed == 2
    (series,) = store.query(1, [("m", "f")], 0, 400 * NS, NS, "last")
    assert [p[0] for p in series.points] == [300 * NS]
    assert [v.ts for v in store.latest([1])[1]] == [300 * NS]


def test_retention_runs_in_the_background(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "ts.sqlite3", retention_s=60, prune_interval_s=0.2)
    try:
        now = int(time.time())
        store.write([batch(1, [now - 3600, now - 120, now - 10])])  # starts the pruner
        deadline = time.time() + 10
        while count(store.path) != 1 and time.time() < deadline:
            time.sleep(0.05)
        assert count(store.path) == 1
        (series,) = store.query(1, [("m", "f")], 0, (now + 1) * NS, NS, "last")
        assert [p[0] for p in series.points] == [(now - 10) * NS]
    finally:
        store.close()


def test_delete_server_removes_its_series_only(store: SQLiteStore) -> None:
    store.write([batch(1, [1, 2]), batch(2, [1])])
    assert store.delete_server(1) == 1
    assert store.latest([1, 2]) == {1: [], 2: store.latest([2])[2]}
    assert count(store.path) == 1
    store.write([batch(1, [3])])  # the cache of series ids was dropped: new rows, new series
    assert count(store.path) == 2


def test_values_keep_their_types(store: SQLiteStore) -> None:
    store.write([WriteBatch(1, "h", [Point("m", (), NS, {"i": 7, "f": 1.5, "s": "x", "b": True})])])
    got = {v.field: v.value for v in store.latest([1])[1]}
    assert got == {"i": 7, "f": 1.5, "s": "x", "b": 1}  # booleans come back as 0/1
    assert type(got["i"]) is int


def test_fields_of_one_point_sent_apart_are_merged(store: SQLiteStore) -> None:
    store.write([WriteBatch(1, "h", [Point("m", (), 10 * NS, {"a": 1.0, "b": 2.0})])])
    store.write([WriteBatch(1, "h", [Point("m", (), 10 * NS, {"b": 3.0, "c": 4.0})])])
    got = {
        s.field: s.points
        for s in store.query(1, [("m", "a"), ("m", "b"), ("m", "c")], 0, 20 * NS, 10 * NS, "last")
    }
    assert got == {"a": [(10 * NS, 1.0)], "b": [(10 * NS, 3.0)], "c": [(10 * NS, 4.0)]}
    assert count(store.path) == 1


def test_a_late_older_point_does_not_replace_newer_latest_values(store: SQLiteStore) -> None:
    store.write([WriteBatch(1, "h", [Point("m", (), 20 * NS, {"a": 2.0})])])
    store.write([WriteBatch(1, "h", [Point("m", (), 10 * NS, {"a": 1.0, "b": 5.0})])])
    latest = {v.field: (v.ts, v.value) for v in store.latest([1])[1]}
    assert latest == {"a": (20 * NS, 2.0), "b": (20 * NS, 5.0)}


def test_fields_missing_from_some_points_aggregate_over_those_present(store: SQLiteStore) -> None:
    store.write(
        [
            WriteBatch(
                1,
                "h",
                [
                    Point("m", (), 1 * NS, {"a": 1.0}),
                    Point("m", (), 2 * NS, {"b": 7.0}),
                    Point("m", (), 3 * NS, {"a": 3.0}),
                ],
            )
        ]
    )
    (a,) = store.query(1, [("m", "a")], 0, 10 * NS, 10 * NS, "mean")
    assert a.points == [(0, 2.0)]
    (cnt,) = store.query(1, [("m", "a")], 0, 10 * NS, 10 * NS, "count")
    assert cnt.points == [(0, 2)]
    (last,) = store.query(1, [("m", "a")], 0, 10 * NS, 10 * NS, "last")
    assert last.points == [(0, 3.0)]


def test_a_file_of_another_layout_is_refused_clearly(tmp_path: Path) -> None:
    from monapi.errors import StoreUnavailable

    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE samples (series_id INTEGER, ts INTEGER, value ANY)")
    with pytest.raises(StoreUnavailable, match="layout 0"):
        SQLiteStore(path, 3600, 3600)
