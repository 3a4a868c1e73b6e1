"""Cache coordination: versioned caches shared by every worker, and buffered last-seen times.

The embedded implementation keeps its version counters in the configuration store, so a change
made through one gunicorn worker is seen by every other worker on its next request. With a
SQLite configuration store (every writer on this machine), a counter in a small shared memory
file (:class:`VersionHint`) says when to read them again, so the steady state runs no SQL per
request. Last-seen times are buffered in the process and written in one statement every few
seconds, never per push.
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import mmap
import os
import threading
import time
from pathlib import Path
from typing import Protocol

from flask import Flask, current_app, g
from sqlalchemy import event, text
from sqlalchemy.orm import Session

from .db import Database

log = logging.getLogger("monapi.cache")
EXT = "monapi.cache"
COLLECTIONS = ("fields", "keys", "servers")
# With a version hint, versions are read from the database at least this often anyway (a
# process that died between its commit and raising the hint delays others by at most this).
HINT_MAX_AGE_S = 1.0
_HINT_INFO_KEY = "monapi.hint"


class Coordinator(Protocol):
    """What the rest of monapi needs from the cache layer (in-process now, Redis later)."""

    name: str

    def versions(self) -> dict[str, int]:
        """The current version of every cached collection."""
        ...

    def ping(self) -> None:
        """Raise StoreUnavailable unless the cache answers."""
        ...

    def bump(self, session: Session, *names: str) -> None:
        """Mark collections changed, inside the caller's transaction."""
        ...

    def mark_seen(self, server_id: int, ts: float) -> None:
        """Record a push; written to the configuration store later, in bulk."""
        ...

    def pending_seen(self) -> dict[int, float]:
        """Last-seen times not yet written."""
        ...

    def flush_seen(self) -> int:
        """Write buffered last-seen times now; returns how many servers were updated."""
        ...

    def shared_get(self, collection: str, version: str, key: str) -> bytes | None:
        """A copy cached by any process for this version of the collection, if there is one."""
        ...

    def shared_set(self, collection: str, version: str, key: str, value: bytes) -> None:
        """Offer a copy to every other process (a no-op without a shared cache)."""
        ...

    def hit(self, bucket: str, limit: int, period: float) -> float:
        """Count a request against ``limit`` per ``period`` seconds for ``bucket``: 0 when it
        may go ahead, else the seconds to wait."""
        ...

    def close(self) -> None: ...


class RateLimiter:
    """Rate limits counted in this process (GCRA: one "theoretical arrival time" per bucket; a
    burst of ``limit`` is allowed, then one request every period/limit seconds)."""

    def __init__(self) -> None:
        self._tat: dict[str, float] = {}
        self._lock = threading.Lock()

    def hit(self, bucket: str, limit: int, period: float) -> float:
        """0 when the request may go ahead, else the seconds to wait."""
        if limit <= 0:
            return 0.0
        interval = period / limit
        tolerance = interval * (limit - 1)
        now = time.monotonic()
        with self._lock:
            tat = max(self._tat.get(bucket, now), now)
            wait = tat - tolerance - now
            if wait > 0:
                return wait
            self._tat[bucket] = tat + interval
            if len(self._tat) > 100_000:  # forget buckets that are back to full
                self._tat = {k: v for k, v in self._tat.items() if v > now}
        return 0.0


class SeenBuffer:
    """Last-seen times waiting to be written: the newest time per server, thread-safe."""

    def __init__(self) -> None:
        self._times: dict[int, float] = {}
        self._lock = threading.Lock()

    def add(self, server_id: int, ts: float) -> None:
        with self._lock:
            if self._times.get(server_id, 0.0) < ts:
                self._times[server_id] = ts

    def add_all(self, times: dict[int, float]) -> None:
        """Put times back (a write failed), never lowering a newer one."""
        with self._lock:
            for k, v in times.items():
                if self._times.get(k, 0.0) < v:
                    self._times[k] = v

    def take(self) -> dict[int, float]:
        with self._lock:
            batch, self._times = self._times, {}
        return batch

    def snapshot(self) -> dict[int, float]:
        with self._lock:
            return dict(self._times)

    def forget(self, handed_on: dict[int, float]) -> None:
        """Drop times that were handed on elsewhere (unless a newer one came meanwhile)."""
        with self._lock:
            for k, v in handed_on.items():
                if self._times.get(k) == v:
                    del self._times[k]


class VersionHint:
    """A counter in a shared 8-byte memory-mapped file, raised after every commit that changed a
    cache version. Reading it costs no system call: a process reads the versions from the
    database again only when the counter moved (or its copy is older than HINT_MAX_AGE_S)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < 8:
                os.ftruncate(fd, 8)
            self._map = mmap.mmap(fd, 8, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)

    def read(self) -> int:
        return int.from_bytes(self._map[:8], "little")

    def raise_(self) -> None:
        fd = os.open(self.path, os.O_RDWR)  # a lock of its own, not one shared across a fork
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._map[:8] = ((self.read() + 1) % 2**64).to_bytes(8, "little")
        finally:
            os.close(fd)


def hint_path(db: Database) -> Path | None:
    """Where the version hint of a SQLite configuration store lives; None for PostgreSQL (other
    machines may change it) and for an in-memory database."""
    if db.backend != "sqlite":
        return None
    path = db.engine.url.database
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    return Path(path + "-monapi-versions")


class LocalCoordinator:
    """Version counters in the configuration store; last-seen buffered in this process."""

    name = "local"

    def __init__(self, db: Database, flush_interval: float, *, use_hint: bool = True) -> None:
        """``use_hint``: skip the database read while the shared version hint has not moved
        (SQLite only; see :class:`VersionHint`)."""
        self.db = db
        path = hint_path(db) if use_hint else None
        self.hint = VersionHint(path) if path is not None else None
        self._cached: tuple[int, float, dict[str, int]] | None = None  # hint, read at, versions
        if self.hint is not None:
            event.listen(db.sessionmaker, "after_commit", self._after_commit)
            event.listen(db.sessionmaker, "after_rollback", self._after_rollback)
        self.flush_interval = flush_interval
        self.seen = SeenBuffer()  # written to the database by flush_seen()
        self.limits = RateLimiter()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._stop = threading.Event()
        atexit.register(self.close)

    def versions(self) -> dict[str, int]:
        hint = self.hint
        if hint is None:
            return self._read_versions()
        seen = hint.read()  # before the read: a change committed meanwhile moves it again
        now = time.monotonic()
        cached = self._cached
        if cached is not None and cached[0] == seen and now - cached[1] < HINT_MAX_AGE_S:
            return cached[2]
        versions = self._read_versions()
        self._cached = (seen, now, versions)
        return versions

    def _read_versions(self) -> dict[str, int]:
        # Read on every authenticated request, so through a pooled DBAPI connection directly:
        # the same query and the same freshness (the pool ends the transaction on return), at a
        # fifth of the cost of a SQLAlchemy Core execution (about 20 us instead of 100 us).
        conn = self.db.engine.raw_connection()
        try:
            cur = conn.cursor()
            try:
                cur.execute("SELECT name, version FROM state_versions")
                rows = cur.fetchall()
            finally:
                cur.close()
        finally:
            conn.close()  # back to the pool
        return {str(name): int(version) for name, version in rows}

    def ping(self) -> None:
        return None  # in-process: always answers

    def bump(self, session: Session, *names: str) -> None:
        for name in names:
            self.bump_returning(session, name)
        session.info[_HINT_INFO_KEY] = True  # raise the hint once the change is committed

    def _after_commit(self, session: Session) -> None:
        if session.info.pop(_HINT_INFO_KEY, False) and self.hint is not None:
            self.hint.raise_()

    def _after_rollback(self, session: Session) -> None:
        session.info.pop(_HINT_INFO_KEY, None)

    def bump_returning(self, session: Session, name: str) -> int:
        """Add one to a collection's version inside the caller's transaction; the new value."""
        return int(
            session.execute(
                text(
                    "UPDATE state_versions SET version = version + 1 WHERE name = :n "
                    "RETURNING version"
                ),
                {"n": name},
            ).scalar_one()
        )

    def shared_get(self, collection: str, version: str, key: str) -> bytes | None:
        return None  # nothing is shared between processes without Redis

    def shared_set(self, collection: str, version: str, key: str, value: bytes) -> None:
        return None

    def hit(self, bucket: str, limit: int, period: float) -> float:
        return self.limits.hit(bucket, limit, period)

    def mark_seen(self, server_id: int, ts: float) -> None:
        self.seen.add(server_id, ts)
        self._ensure_flusher()

    def pending_seen(self) -> dict[int, float]:
        return self.seen.snapshot()

    def flush_seen(self) -> int:
        batch = self.seen.take()
        if not batch:
            return 0
        try:
            with self.db.engine.begin() as conn:
                conn.execute(
                    text(
                        "UPDATE servers SET last_seen = :ts WHERE id = :id "
                        "AND (last_seen IS NULL OR last_seen < :ts)"
                    ),
                    [{"id": k, "ts": v} for k, v in batch.items()],
                )
        except Exception:
            # Keep the times for the next round rather than lose them.
            self.seen.add_all(batch)
            log.warning("could not write last-seen times; will retry", exc_info=True)
            return 0
        return len(batch)

    def _ensure_flusher(self) -> None:
        # Threads do not survive fork: start one per worker process, lazily.
        if self._thread is not None and self._pid == _PID.value:
            return
        with self._lock:
            if self._thread is not None and self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, name="monapi-last-seen", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_interval):
            self.flush_seen()

    def close(self) -> None:
        self._stop.set()
        if self._pid == os.getpid():
            self.flush_seen()


class _Pid:
    """This process' id, kept current across fork without a system call per read."""

    value = os.getpid()

    @classmethod
    def reset(cls) -> None:
        cls.value = os.getpid()


os.register_at_fork(after_in_child=_Pid.reset)
_PID = _Pid


def init_app(app: Flask, coordinator: Coordinator) -> None:
    app.extensions[EXT] = coordinator


def create_coordinator(
    db: Database, redis_url: str | None, prefix: str, flush: float, fallback: str = "local"
) -> Coordinator:
    """Redis when a URL is configured, else the in-process coordinator. ``fallback``: what rate
    limits do while Redis does not answer (local, open or closed)."""
    if redis_url:
        from .cache_redis import RedisCoordinator

        return RedisCoordinator(db, redis_url, prefix, flush, fallback=fallback)
    return LocalCoordinator(db, flush)


def get_coordinator() -> Coordinator:
    coord: Coordinator = current_app.extensions[EXT]
    return coord


def request_versions() -> dict[str, int]:
    """Cache versions, read at most once per request."""
    v: dict[str, int] | None = g.get("cache_versions")
    if v is None:
        v = get_coordinator().versions()
        g.cache_versions = v
    return v


def now() -> float:
    return time.time()
