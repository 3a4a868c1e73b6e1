"""Group commit for HTTP engines: concurrent small writes share one engine write, and each
request still gets exactly its own outcome. The engines themselves are exercised by the
contract suite (tests/test_tsdb_contract.py, concurrent writers on every backend)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

from monapi.errors import StoreUnavailable
from monapi.tsdb.base import Point, Rejection, WriteBatch
from monapi.tsdb.groupcommit import GroupCommit


def batch(server_id: int, n: int = 1, value: float = 1.0) -> WriteBatch:
    pts = [Point("system", (), 10**18 + i, {"load1": value}) for i in range(n)]
    return WriteBatch(server_id, f"h{server_id}", pts)


class Engine:
    """Records every engine write; can hold a write open until released."""

    def __init__(self) -> None:
        self.calls: list[list[WriteBatch]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.refuse: set[int] = set()  # server ids whose first point the engine refuses
        self.fail: BaseException | None = None
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0

    def write(self, batches: Sequence[WriteBatch]) -> list[Rejection]:
        with self.lock:
            self.calls.append(list(batches))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.entered.set()
        try:
            self.gate.wait(10)
            if self.fail is not None:
                raise self.fail
            return [
                Rejection(b, 0, "load1", f"refused {batch.server_id}")
                for b, batch in enumerate(batches)
                if batch.server_id in self.refuse
            ]
        finally:
            with self.lock:
                self.in_flight -= 1


def run_threads(n: int, target: object) -> list[threading.Thread]:
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]  # type: ignore[arg-type]
    for t in threads:
        t.start()
    return threads


def wait_queued(gc: GroupCommit, n: int) -> None:
    deadline = time.monotonic() + 10
    while len(gc._queue) < n:
        assert time.monotonic() < deadline, f"{len(gc._queue)} of {n} requests queued"
        time.sleep(0.001)


def hold_first_write(gc: GroupCommit, eng: Engine) -> threading.Thread:
    """A write that is at the engine and stays there until ``eng.gate`` is set."""
    eng.gate.clear()
    first = threading.Thread(target=gc.write, args=([batch(0)],))
    first.start()
    assert eng.entered.wait(5)
    return first


def test_a_write_alone_goes_straight_to_the_engine() -> None:
    eng = Engine()
    gc = GroupCommit(eng.write)
    b = batch(1)
    assert gc.write([b]) == []
    assert eng.calls == [[b]]


def test_writes_that_arrive_during_a_write_share_the_next_one() -> None:
    eng = Engine()
    gc = GroupCommit(eng.write)
    first = hold_first_write(gc, eng)
    results: dict[int, list[Rejection]] = {}
    threads = run_threads(20, lambda i: results.__setitem__(i, gc.write([batch(100 + i)])))
    wait_queued(gc, 20)
    eng.gate.set()
    for t in [first, *threads]:
        t.join(10)
    assert results == {i: [] for i in range(20)}
    # The first write alone, then the 20 queued ones in one engine write.
    assert [len(c) for c in eng.calls] == [1, 20]
    assert sorted(b.server_id for b in eng.calls[1]) == [100 + i for i in range(20)]
    assert gc.flushes == 2


def test_each_request_gets_only_its_own_rejections_with_its_own_indexes() -> None:
    eng = Engine()
    eng.refuse = {103, 107}
    gc = GroupCommit(eng.write)
    first = hold_first_write(gc, eng)
    results: dict[int, list[Rejection]] = {}
    # Each request writes two batches: its own server and a second one.
    threads = run_threads(
        10,
        lambda i: results.__setitem__(i, gc.write([batch(200 + i), batch(100 + i)])),
    )
    wait_queued(gc, 10)
    eng.gate.set()
    for t in [first, *threads]:
        t.join(10)
    for i in range(10):
        want = [Rejection(1, 0, "load1", f"refused {100 + i}")] if i in (3, 7) else []
        assert results[i] == want, i


def test_an_engine_error_fails_every_request_of_that_write_and_no_other() -> None:
    eng = Engine()
    gc = GroupCommit(eng.write)
    eng.gate.clear()
    errors: dict[int, BaseException | None] = {}

    def one(i: int) -> None:
        try:
            gc.write([batch(100 + i)])
            errors[i] = None
        except StoreUnavailable as exc:
            errors[i] = exc

    first = threading.Thread(target=one, args=(-1,))
    first.start()
    assert eng.entered.wait(5)
    threads = run_threads(5, one)
    wait_queued(gc, 5)
    eng.fail = StoreUnavailable("engine down")
    eng.gate.set()
    for t in [first, *threads]:
        t.join(10)
    assert len(errors) == 6
    assert all(isinstance(e, StoreUnavailable) for e in errors.values())
    assert [len(c) for c in eng.calls] == [1, 5]
    eng.fail = None
    assert gc.write([batch(1)]) == []  # the next write works again: nothing is stuck


def test_large_writes_do_not_queue_behind_a_grouped_write() -> None:
    eng = Engine()
    gc = GroupCommit(eng.write, alone_from=100)
    eng.gate.clear()
    small = threading.Thread(target=gc.write, args=([batch(1)],))
    small.start()
    assert eng.entered.wait(5)
    big = threading.Thread(target=gc.write, args=([batch(2, n=100)],))
    big.start()
    deadline = time.monotonic() + 5
    while eng.max_in_flight < 2:
        assert time.monotonic() < deadline, "the large write waited for the small one"
        time.sleep(0.001)
    eng.gate.set()
    small.join(5)
    big.join(5)
    assert sorted(len(c[0].points) for c in eng.calls) == [1, 100]


def test_one_grouped_write_holds_at_most_max_points() -> None:
    eng = Engine()
    gc = GroupCommit(eng.write, alone_from=50, max_points=100)
    first = hold_first_write(gc, eng)
    threads = run_threads(10, lambda i: gc.write([batch(100 + i, n=30)]))
    wait_queued(gc, 10)
    eng.gate.set()
    for t in [first, *threads]:
        t.join(10)
    sizes = [sum(len(b.points) for b in c) for c in eng.calls[1:]]
    assert sum(sizes) == 300
    assert max(sizes) <= 100
    assert len(sizes) == 4  # 3 + 3 + 3 + 1 requests of 30 points


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), RuntimeError("bug")])
def test_an_unexpected_exception_reaches_the_requests_instead_of_hanging_them(
    exc: BaseException,
) -> None:
    eng = Engine()
    eng.fail = exc
    gc = GroupCommit(eng.write)
    with pytest.raises(type(exc)):
        gc.write([batch(1)])
    eng.fail = None
    assert gc.write([batch(1)]) == []
