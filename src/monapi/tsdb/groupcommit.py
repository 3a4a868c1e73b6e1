"""Group commit for the engines monapi reaches over HTTP (InfluxDB, VictoriaMetrics).

An agent push is one point: written alone, each costs the engine a whole HTTP request and
monapi a round trip. Concurrent small writes of one process are handed to one writer instead:
the first request to arrive while no write is in flight writes at once (no added wait when the
load is light); the requests that arrive meanwhile queue, and the next of them to run writes
the whole queue in one engine request. Every request still returns only after the engine
answered the write that held its points, with its own rejections or the write's error: a 2xx
still means stored.

Large writes (bulk batches of ``alone_from`` points or more) gain nothing from company and
would make small ones wait: they are written at once, concurrently, as before.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Sequence

from .base import Rejection, WriteBatch

# Requests of at least this many points are written alone, without queueing.
ALONE_FROM = 500
# At most this many points go into one grouped engine write.
GROUP_MAX_POINTS = 5000

WriteNow = Callable[[Sequence[WriteBatch]], list[Rejection]]


class _Pending:
    __slots__ = ("batches", "done", "error", "points", "rejections", "wake")

    def __init__(self, batches: Sequence[WriteBatch], points: int) -> None:
        self.batches = batches
        self.points = points
        # Held until the request is done or made the writer: its thread blocks on it alone
        # (one wake-up per request, no herd on a shared condition).
        self.wake = threading.Lock()
        self.wake.acquire()
        self.done = False
        self.error: BaseException | None = None
        self.rejections: list[Rejection] = []


class GroupCommit:
    """Merges concurrent ``write`` calls of one process into fewer calls of ``write_now``."""

    def __init__(
        self,
        write_now: WriteNow,
        alone_from: int = ALONE_FROM,
        max_points: int = GROUP_MAX_POINTS,
    ) -> None:
        self._write_now = write_now
        self.alone_from = alone_from
        self.max_points = max_points
        self._lock = threading.Lock()
        self._queue: list[_Pending] = []
        self._busy = False  # a writer is at work; it hands over to the queue's head when done
        self.flushes = 0  # engine writes made for grouped requests (for tests and the bench)

    def write(self, batches: Sequence[WriteBatch]) -> list[Rejection]:
        points = sum(len(b.points) for b in batches)
        if points >= self.alone_from:
            return self._write_now(batches)
        req = _Pending(batches, points)
        with self._lock:
            self._queue.append(req)
            lead = not self._busy
            self._busy = True
        if not lead:
            req.wake.acquire()  # until done, or made the writer
        while not req.done:
            # The writer: write the oldest queued requests (ours among them, or later).
            with self._lock:
                group = self._take()
            self._flush(group)
            with self._lock:
                if not self._queue:
                    self._busy = False
                    break
                if req.done:
                    # Hand over to the oldest waiting request: it writes the rest.
                    self._queue[0].wake.release()
                    break
        if req.error is not None:
            raise req.error
        return req.rejections

    def _take(self) -> list[_Pending]:
        """The oldest queued requests, up to ``max_points`` points (at least one request)."""
        queue = self._queue
        total = 0
        n = 0
        for req in queue:
            if n and total + req.points > self.max_points:
                break
            total += req.points
            n += 1
        group, self._queue = queue[:n], queue[n:]
        return group

    def _flush(self, group: list[_Pending]) -> None:
        """One engine write for ``group``; then each of its requests is done and woken."""
        batches: list[WriteBatch] = []
        starts: list[int] = []  # index of each request's first batch in ``batches``
        for req in group:
            starts.append(len(batches))
            batches.extend(req.batches)
        try:
            self.flushes += 1
            rejections = self._write_now(batches)
        except BaseException as exc:  # every request of the write fails with it
            for req in group:
                req.error = exc
        else:
            for r in rejections:
                k = bisect.bisect_right(starts, r.batch) - 1
                group[k].rejections.append(
                    Rejection(r.batch - starts[k], r.index, r.field, r.reason)
                )
        for req in group:
            req.done = True
            req.wake.release()  # the writer's own request: unlocked, no one waits on it
