"""monapi-agent's spool: an SQLite file of undelivered samples, oldest first, bounded by size
and age, plus the small meta table `status` reads. Pure: temporary files and a fake clock."""

from __future__ import annotations

import logging
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from monapi_agent.spool import Points, Spool, SpoolStats, read_status

BIG = 1 << 40


class Clock:
    """Wall-clock seconds the test sets."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def sample(i: int, points: int = 1) -> Points:
    return [
        {"measurement": "m", "tags": {"n": str(n)}, "fields": {"v": i}, "timestamp": i}
        for n in range(points)
    ]


def values(spool: Spool, max_points: int = BIG) -> list[int]:
    """The ``v`` field of the first point of each sample peek() returns."""
    return [int(points[0]["fields"]["v"]) for _, points in spool.peek(max_points)]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def open_spool(tmp_path: Path, clock: Clock) -> Iterator[Any]:
    opened: list[Spool] = []

    def make(path: Path | None = None, *, max_bytes: int = BIG, max_age: float = 1e9) -> Spool:
        spool = Spool(
            path or tmp_path / "spool.db", max_bytes=max_bytes, max_age=max_age, clock=clock
        )
        opened.append(spool)
        return spool

    yield make
    for spool in opened:
        spool.close()


def body_sizes(spool: Spool) -> list[int]:
    return [int(n) for (n,) in spool._db.execute("SELECT length(body) FROM samples ORDER BY id")]


# --- order, peek, delete --------------------------------------------------------------------------


def test_peek_gives_the_samples_oldest_first_with_increasing_ids(open_spool: Any) -> None:
    spool = open_spool()
    spool.put([sample(1), sample(2), sample(3)])
    spool.put([sample(4)])
    spool.put([sample(5), sample(6)])
    rows = spool.peek(BIG)
    assert [int(p[0]["fields"]["v"]) for _, p in rows] == [1, 2, 3, 4, 5, 6]
    ids = [rowid for rowid, _ in rows]
    assert ids == sorted(ids) and len(set(ids)) == 6
    assert rows[0][1] == sample(1)  # the points come back as they went in


def test_points_keep_their_json_types_through_the_spool(open_spool: Any) -> None:
    spool = open_spool()
    points = [
        {
            "measurement": "system",
            "tags": {"mount": "/srv/données"},
            "fields": {"uptime": 12, "load1": 0.5, "up": True, "note": 'a "quoted" \\ text'},
            "timestamp": 1_700_000_000_123_456_789,
        }
    ]
    spool.put([points])
    ((_, back),) = spool.peek(BIG)
    assert back == points
    assert isinstance(back[0]["fields"]["uptime"], int)  # an int field must stay an int
    assert isinstance(back[0]["timestamp"], int)


def test_peek_fills_up_to_max_points_without_splitting_a_sample(open_spool: Any) -> None:
    spool = open_spool()
    spool.put([sample(1, points=3), sample(2, points=2), sample(3, points=4)])
    assert values(spool, 9) == [1, 2, 3]
    assert values(spool, 8) == [1, 2]
    assert values(spool, 5) == [1, 2]
    assert values(spool, 4) == [1]


def test_peek_always_returns_at_least_one_sample_even_one_larger_than_max_points(
    open_spool: Any,
) -> None:
    spool = open_spool()
    spool.put([sample(1, points=5), sample(2)])
    assert values(spool, 1) == [1]
    assert values(spool, 0) == [1]


def test_peek_on_an_empty_spool_is_empty(open_spool: Any) -> None:
    assert open_spool().peek(100) == []


def test_empty_samples_are_not_stored(open_spool: Any) -> None:
    spool = open_spool()
    spool.put([[], sample(1), []])
    spool.put([])
    assert len(spool) == 1
    assert values(spool) == [1]


def test_delete_removes_exactly_the_given_samples_and_keeps_the_counts(open_spool: Any) -> None:
    spool = open_spool()
    spool.put([sample(1, points=2), sample(2, points=3), sample(3, points=1)])
    sizes = body_sizes(spool)
    ids = [rowid for rowid, _ in spool.peek(BIG)]

    spool.delete([ids[1]])
    assert values(spool) == [1, 3]
    stats = spool.stats()
    assert (stats.samples, stats.points, stats.bytes) == (2, 3, sizes[0] + sizes[2])

    spool.delete([])
    spool.delete([ids[1]])  # already gone: the counts do not move
    assert spool.stats() == stats
    spool.delete([ids[0], ids[2]])
    assert spool.stats() == SpoolStats(0, 0, 0, None)
    assert len(spool) == 0


def test_counts_are_kept_across_reopening(open_spool: Any, tmp_path: Path, clock: Clock) -> None:
    spool = open_spool()
    spool.put([sample(1, points=2), sample(2, points=3)])
    clock.now += 10
    spool.put([sample(3)])
    before = spool.stats()
    spool.close()

    again = open_spool()
    assert again.stats() == before
    assert before.samples == 3 and before.points == 6
    assert before.bytes == sum(body_sizes(again))
    assert before.oldest == clock.now - 10
    assert values(again) == [1, 2, 3]
    status = read_status(tmp_path / "spool.db")
    assert status is not None and status[0] == before


# --- bounds ---------------------------------------------------------------------------------------


def test_the_size_bound_drops_the_oldest_samples_first_and_says_how_many(
    open_spool: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    samples = [sample(i, points=4) for i in range(6)]
    probe = open_spool(tmp_path / "probe.db")
    probe.put(samples)
    sizes = body_sizes(probe)
    bound = sum(sizes[3:])  # room for the newest three

    spool = open_spool(max_bytes=bound)
    with caplog.at_level(logging.WARNING, logger="monapi_agent.spool"):
        spool.put(samples)

    assert values(spool) == [3, 4, 5]
    assert spool.stats().bytes == bound
    assert spool.stats().points == 12
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith(
        f"spool: dropped 3 oldest sample(s) (12 points, {sum(sizes[:3])} bytes) to stay under"
    )


def test_the_size_bound_applies_on_every_put(open_spool: Any, tmp_path: Path) -> None:
    probe = open_spool(tmp_path / "probe.db")
    probe.put([sample(i) for i in range(5)])
    sizes = body_sizes(probe)
    spool = open_spool(max_bytes=sizes[3] + sizes[4])
    for i in range(5):
        spool.put([sample(i)])
        assert spool.stats().bytes <= spool.max_bytes
    assert values(spool) == [3, 4]


def test_the_age_bound_drops_samples_older_than_max_age_with_a_warning(
    open_spool: Any, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    spool = open_spool(max_age=7200)
    spool.put([sample(1, points=2), sample(2)])
    clock.now += 3600
    spool.put([sample(3)])
    clock.now += 3601  # the first two are now older than 2h; the third is not
    with caplog.at_level(logging.WARNING, logger="monapi_agent.spool"):
        spool.put([sample(4)])

    assert values(spool) == [3, 4]
    assert spool.stats().oldest == clock.now - 3601
    assert [r.getMessage() for r in caplog.records] == [
        "spool: dropped 2 sample(s) (3 points) older than 2h, oldest first"
    ]


def test_a_sample_exactly_max_age_old_is_kept(open_spool: Any, clock: Clock) -> None:
    spool = open_spool(max_age=60)
    spool.put([sample(1)])
    clock.now += 60
    spool.put([sample(2)])
    assert values(spool) == [1, 2]


def test_the_bounds_are_applied_when_the_spool_is_opened(
    open_spool: Any, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    # An agent that was stopped for longer than max_age must not send what is too old
    spool = open_spool(max_age=86400)
    spool.put([sample(1), sample(2)])
    spool.close()
    clock.now += 2 * 86400
    with caplog.at_level(logging.WARNING, logger="monapi_agent.spool"):
        again = open_spool(max_age=86400)
    assert len(again) == 0
    assert again.peek(BIG) == []
    assert any("dropped 2 sample(s) (2 points) older than 1d" in m for m in caplog.messages)


# --- meta -----------------------------------------------------------------------------------------


def test_meta_values_are_stored_as_json_and_overwritten(open_spool: Any) -> None:
    spool = open_spool()
    assert spool.get_meta("last_push") is None
    config = {"etag": "abc", "config": {"interval": 10, "fields": [{"name": "x", "min": 0.5}]}}
    spool.set_meta(last_push=1.5, last_push_points=3, config=config)
    assert spool.get_meta("last_push") == 1.5
    assert spool.get_meta("last_push_points") == 3
    assert spool.get_meta("config") == config
    spool.set_meta(last_push=2.5)
    assert spool.get_meta("last_push") == 2.5
    assert spool.get_meta("last_push_points") == 3  # untouched
    spool.close()
    assert open_spool().get_meta("config") == config


# --- read_status ----------------------------------------------------------------------------------


def test_read_status_of_a_missing_file_is_none_and_creates_nothing(tmp_path: Path) -> None:
    assert read_status(tmp_path / "nope" / "spool.db") is None
    assert read_status(tmp_path / "spool.db") is None
    assert list(tmp_path.iterdir()) == []


def test_read_status_reports_counts_and_meta(open_spool: Any, tmp_path: Path, clock: Clock) -> None:
    spool = open_spool()
    spool.put([sample(1, points=2)])
    spool.set_meta(last_error={"at": 5.0, "status": 503, "message": "busy"})
    status = read_status(tmp_path / "spool.db")
    assert status is not None
    stats, meta = status
    assert stats == SpoolStats(1, 2, body_sizes(spool)[0], clock.now)
    assert meta == {"last_error": {"at": 5.0, "status": 503, "message": "busy"}}


def test_read_status_works_while_the_agent_holds_a_write_transaction(
    open_spool: Any, tmp_path: Path
) -> None:
    spool = open_spool()
    spool.put([sample(1)])
    path = tmp_path / "spool.db"
    writer = sqlite3.connect(path, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute(
            "INSERT INTO samples (created, points, body) VALUES (?, ?, ?)", (0.0, 7, b"x")
        )
        status = read_status(path)  # neither blocked nor seeing the uncommitted row
        assert status is not None
        assert (status[0].samples, status[0].points) == (1, 1)
        writer.execute("COMMIT")
    finally:
        writer.close()
    status = read_status(path)
    assert status is not None
    assert (status[0].samples, status[0].points) == (2, 8)


def test_read_status_of_a_closed_spool_and_does_not_write_to_it(
    open_spool: Any, tmp_path: Path
) -> None:
    spool = open_spool()
    spool.put([sample(1), sample(2)])
    spool.close()
    path = tmp_path / "spool.db"
    before = path.read_bytes()
    status = read_status(path)
    assert status is not None
    assert status[0].samples == 2
    assert path.read_bytes() == before


def test_read_status_of_a_file_that_was_never_initialised(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    path.touch()
    assert read_status(path) == (SpoolStats(0, 0, 0, None), {})


def test_read_status_of_a_path_with_uri_characters(open_spool: Any, tmp_path: Path) -> None:
    # read_status opens a file: URI; '?', '#' and '%' in the path must not change its meaning
    odd = tmp_path / "a dir?#%41" / "spool.db"
    spool = open_spool(odd)
    spool.put([sample(1), sample(2)])
    status = read_status(odd)
    assert status is not None
    assert status[0].samples == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a dir?#%41"]


# --- permissions ----------------------------------------------------------------------------------


def test_the_spool_file_and_its_directory_are_owner_only(
    open_spool: Any, tmp_path: Path, no_umask: None
) -> None:
    path = tmp_path / "state" / "monapi-agent" / "spool.db"
    spool = open_spool(path)
    spool.put([sample(1)])  # the WAL files exist now
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    for extra in ("spool.db-wal", "spool.db-shm"):
        side = path.parent / extra
        assert side.exists()
        assert stat.S_IMODE(side.stat().st_mode) == 0o600, extra
