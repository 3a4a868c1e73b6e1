"""Cache coordination on Redis, shared by every worker of every monapi instance.

What Redis holds (every key under ``MONAPI_REDIS_PREFIX``):

- ``<p>:versions`` (hash): the version of each cached collection (fields, keys, servers). The
  configuration store stays the source of truth: a change bumps its row in ``state_versions``
  inside the change's transaction, and after the commit the new number goes to this hash and a
  message to ``<p>:changed``. Every process listens on that channel and re-reads the hash at once;
  it also re-reads it at least every half second, and compares it with the configuration store
  every few seconds (a commit whose Redis update was lost is caught there). So a revoked key, a
  rotated key or a disabled field stops working everywhere within a second.
- ``<p>:c:<collection>:<version>:<id>``: shared copies of key records and of the field
  configuration, named by version, so a change needs no deletion: the old copies are never read
  again and expire.
- ``<p>:seen`` and ``<p>:seen:dirty`` (hashes): last-seen times. Pushes are buffered in the
  process and sent to Redis every second (so every instance shows the same status), and the
  dirty hash is drained into the configuration store every ``MONAPI_LAST_SEEN_FLUSH`` seconds by
  whichever process gets there first (the drain is atomic, so each time is written once).
- ``<p>:rl:<bucket>``: rate-limit state (GCRA: one timestamp per bucket, with Redis' clock).

When Redis does not answer, monapi keeps serving: versions come from the configuration store on
every request (as without Redis), shared copies are skipped, last-seen times stay buffered in the
process, and rate limits follow ``MONAPI_RATE_LIMIT_FALLBACK``: ``local`` (each process counts on
its own, as without Redis), ``open`` (no limits) or ``closed`` (503 for limited requests); a
warning is logged at most every 10 s. After a failure, requests do not try Redis again for
``RETRY_AFTER_FAILURE_S`` (the background threads do), so a Redis that hangs costs a request at
most one timeout, not one per call, and the first request after that window finds it back.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
from typing import cast

import redis
from flask import has_app_context
from sqlalchemy import event
from sqlalchemy.orm import Session

from .cache import COLLECTIONS, LocalCoordinator, RateLimiter, SeenBuffer
from .db import Database
from .errors import StoreUnavailable

log = logging.getLogger("monapi.cache")

MAX_STALENESS_S = 0.5  # re-read the versions hash at least this often
RECONCILE_S = 5.0  # compare with the configuration store this often
PUSH_SEEN_S = 1.0  # send buffered last-seen times to Redis this often
SHARED_TTL_S = 3600
RETRY_AFTER_FAILURE_S = 1.0  # requests skip Redis this long after it failed
_INFO_KEY = "monapi.bumped"

# Raise each named field of a hash to at least the given value (never lower it).
_HSET_MAX = """
for i = 1, #ARGV, 2 do
  local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '-1')
  if tonumber(ARGV[i + 1]) > cur then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return 1
"""
# Same, on two hashes (last seen, and the dirty set not yet written to SQL).
_SEEN = """
for i = 1, #ARGV, 2 do
  for k = 1, 2 do
    local cur = tonumber(redis.call('HGET', KEYS[k], ARGV[i]) or '0')
    if tonumber(ARGV[i + 1]) > cur then redis.call('HSET', KEYS[k], ARGV[i], ARGV[i + 1]) end
  end
end
return 1
"""
# Take the whole hash and delete it, atomically: each entry is drained by one process only.
_DRAIN = """
local all = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
return all
"""
# GCRA with Redis' own clock: ARGV = emission interval (us), burst tolerance (us).
# Returns 0 when allowed, else the microseconds to wait.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - tolerance - now
if wait > 0 then return wait end
local new_tat = tat + interval
local ttl_ms = math.ceil((new_tat - now) / 1000) + 1
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', ttl_ms)
return 0
"""


class RedisCoordinator:
    """Versions, shared copies, last-seen times and rate limits on Redis."""

    name = "redis"

    def __init__(
        self,
        db: Database,
        url: str,
        prefix: str,
        flush_interval: float,
        timeout_s: float = 1.0,
        *,
        fallback: str = "local",
    ) -> None:
        if fallback not in ("local", "open", "closed"):
            raise ValueError(f"rate-limit fallback {fallback!r}: expected local, open or closed")
        self.db = db
        self.fallback = fallback
        self.local_limits = RateLimiter()  # counts while Redis does not answer (local)
        self._down_until = 0.0  # monotonic: requests skip Redis until then
        self.url = url
        self.prefix = prefix
        self.flush_interval = flush_interval
        # Versions and last-seen without Redis; always read from the database (the truth).
        self.sql = LocalCoordinator(db, flush_interval, use_hint=False)
        self.redis = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            health_check_interval=30,
        )
        self._k_versions = f"{prefix}:versions"
        self._k_changed = f"{prefix}:changed"
        self._k_seen = f"{prefix}:seen"
        self._k_dirty = f"{prefix}:seen:dirty"
        self._hset_max = self.redis.register_script(_HSET_MAX)
        self._seen_script = self.redis.register_script(_SEEN)
        self._drain = self.redis.register_script(_DRAIN)
        self._gcra = self.redis.register_script(_GCRA)
        self._lock = threading.Lock()
        self._snapshot: dict[str, int] = {}
        self._snapshot_at = 0.0  # monotonic time of the last read; 0 forces a read
        self._reconciled_at = 0.0
        self.buffer = SeenBuffer()  # pushes not yet sent to Redis
        self._pid = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._warned_at = 0.0
        self._closed = False
        self.reconcile_s = RECONCILE_S
        event.listen(db.sessionmaker, "after_commit", self._after_commit)
        event.listen(db.sessionmaker, "after_rollback", self._after_rollback)
        atexit.register(self.close)

    # Versions -------------------------------------------------------------------------------
    def versions(self) -> dict[str, int]:
        self._ensure_threads()
        now = time.monotonic()
        if now - self._snapshot_at < MAX_STALENESS_S:
            return self._snapshot
        if now < self._down_until:
            return self.sql.versions()
        # Read before the hash: if a failure (or the listener's catch-up after one) moves it
        # while the hash is read, what was read may predate the catch-up and is checked here.
        reconciled_at = self._reconciled_at
        try:
            raw = self._hgetall(self._k_versions)
            current = {k.decode(): int(v) for k, v in raw.items()}
            if now - reconciled_at >= self.reconcile_s or not all(
                c in current for c in COLLECTIONS
            ):
                current = self._reconcile_or_keep(current)
                self._reconciled_at = now
        except redis.RedisError as exc:
            self._failed("Redis did not answer; reading cache versions from the database", exc)
            return self.sql.versions()  # correct, just slower; retried on the next request
        with self._lock:
            self._snapshot, self._snapshot_at = current, now
        return current

    def _reconcile_or_keep(self, current: dict[str, int]) -> dict[str, int]:
        """:meth:`_reconcile`; while the configuration store does not answer, Redis' versions
        stand (pushes of known keys go on) if it has all of them, and the check is made again
        after ``reconcile_s``."""
        try:
            return self._reconcile(current)
        except redis.RedisError:
            raise
        except Exception as exc:
            if not all(c in current for c in COLLECTIONS):
                raise
            self._warn("could not check cache versions against the configuration store", exc)
            return current

    def _reconcile(self, current: dict[str, int]) -> dict[str, int]:
        """Raise Redis' versions to the configuration store's where a change was not
        announced (Redis restarted, or was away when the change was committed)."""
        truth = self.sql.versions()
        behind = {k: v for k, v in truth.items() if current.get(k, -1) < v}
        if behind:
            self._hset_max(keys=[self._k_versions], args=[x for kv in behind.items() for x in kv])
            self.redis.publish(self._k_changed, b"reconcile")
            current = {**current, **behind}
        return current

    def ping(self) -> None:
        try:
            self.redis.ping()
        except redis.RedisError as exc:
            self._down_until = time.monotonic() + RETRY_AFTER_FAILURE_S
            raise StoreUnavailable(f"Redis at {_safe_url(self.url)}: {exc}") from exc
        self._down_until = 0.0

    def bump(self, session: Session, *names: str) -> None:
        bumped: dict[str, int] = session.info.setdefault(_INFO_KEY, {})
        for name in names:
            version = self.sql.bump_returning(session, name)
            bumped[name] = max(bumped.get(name, 0), version)

    def _after_commit(self, session: Session) -> None:
        bumped: dict[str, int] | None = session.info.pop(_INFO_KEY, None)
        if not bumped:
            return
        with self._lock:  # this process sees its own change at once
            self._snapshot = {**self._snapshot, **bumped}
        if self._skip():  # others catch up when they reconcile with the database
            self._snapshot_at = 0.0
            return
        try:
            self._hset_max(keys=[self._k_versions], args=[x for kv in bumped.items() for x in kv])
            self.redis.publish(self._k_changed, b"bump")
        except redis.RedisError as exc:
            # Committed, but not announced: other processes catch up when they reconcile.
            self._failed("could not announce a configuration change on Redis", exc)
        self._snapshot_at = 0.0

    def _after_rollback(self, session: Session) -> None:
        session.info.pop(_INFO_KEY, None)

    def _hgetall(self, key: str) -> dict[bytes, bytes]:
        return cast(dict[bytes, bytes], self.redis.hgetall(key))

    # Shared copies --------------------------------------------------------------------------
    def shared_get(self, collection: str, version: str, key: str) -> bytes | None:
        if self._skip():
            return None
        try:
            value = self.redis.get(f"{self.prefix}:c:{collection}:{version}:{key}")
        except redis.RedisError as exc:
            self._failed("Redis did not answer; reading from the database", exc)
            return None
        return value if isinstance(value, bytes) else None

    def shared_set(self, collection: str, version: str, key: str, value: bytes) -> None:
        if self._skip():
            return
        try:
            self.redis.set(f"{self.prefix}:c:{collection}:{version}:{key}", value, ex=SHARED_TTL_S)
        except redis.RedisError as exc:
            self._failed("Redis did not answer; not sharing a cached entry", exc)

    # Last seen ------------------------------------------------------------------------------
    def mark_seen(self, server_id: int, ts: float) -> None:
        self.buffer.add(server_id, ts)
        self._ensure_threads()

    def pending_seen(self) -> dict[int, float]:
        local = self.buffer.snapshot()
        try:
            if self._skip():
                raise redis.ConnectionError("not answering (retried within a second)")
            raw = self._hgetall(self._k_seen)
        except redis.RedisError as exc:
            self._failed("Redis did not answer; showing this process's last-seen times", exc)
            shared = self.sql.pending_seen()
        else:
            shared = {int(k): float(v) for k, v in raw.items()}
        for k, v in local.items():
            if shared.get(k, 0.0) < v:
                shared[k] = v
        return shared

    def _send_seen(self, times: dict[int, float]) -> None:
        self._seen_script(
            keys=[self._k_seen, self._k_dirty],
            args=[x for kv in times.items() for x in (kv[0], repr(kv[1]))],
        )

    def push_seen(self) -> bool:
        """Send this process's buffered last-seen times to Redis; False if it did not answer
        (they stay buffered)."""
        batch = self.buffer.take()
        if not batch:
            return True
        try:
            if has_app_context() and self._skip():  # a request: leave Redis alone for now
                raise redis.ConnectionError("not answering (retried within a second)")
            self._send_seen(batch)
        except redis.RedisError as exc:
            self.buffer.add_all(batch)
            self._failed("could not send last-seen times to Redis; keeping them", exc)
            return False
        return True

    def flush_seen(self) -> int:
        """Write every last-seen time not yet in the configuration store (from every process of
        every instance) now; returns how many servers were updated."""
        if not self.push_seen():
            # Redis away: write what this process holds straight to the database.
            self.sql.seen.add_all(self.buffer.take())
            return self.sql.flush_seen()
        try:
            if has_app_context() and self._skip():  # a request: leave Redis alone for now
                raise redis.ConnectionError("not answering (retried within a second)")
            raw = self._drain(keys=[self._k_dirty])
        except redis.RedisError as exc:
            self._failed("could not read last-seen times from Redis", exc)
            return 0
        self.sql.seen.add_all({int(raw[i]): float(raw[i + 1]) for i in range(0, len(raw), 2)})
        written = self.sql.flush_seen()
        left = self.sql.pending_seen()
        if left:  # the database refused: hand them back to Redis for the next round
            try:
                self._send_seen(left)
                self.sql.seen.forget(left)
            except redis.RedisError:
                pass  # they stay in the database buffer and are retried from there
        return written

    # Rate limits ----------------------------------------------------------------------------
    def hit(self, bucket: str, limit: int, period: float) -> float:
        if limit <= 0:
            return 0.0
        interval_us = int(period * 1_000_000 / limit)
        tolerance_us = interval_us * (limit - 1)
        try:
            if self._skip():
                raise redis.ConnectionError("not answering (retried within a second)")
            wait_us = int(
                self._gcra(keys=[f"{self.prefix}:rl:{bucket}"], args=[interval_us, tolerance_us])
            )
        except redis.RedisError as exc:
            return self._hit_without_redis(bucket, limit, period, exc)
        return wait_us / 1_000_000

    def _hit_without_redis(
        self, bucket: str, limit: int, period: float, exc: redis.RedisError
    ) -> float:
        """What MONAPI_RATE_LIMIT_FALLBACK says while Redis does not answer."""
        if self.fallback == "open":
            self._failed("Redis did not answer; not applying rate limits (fallback open)", exc)
            return 0.0
        if self.fallback == "closed":
            self._failed("Redis did not answer; refusing rate-limited requests (closed)", exc)
            raise StoreUnavailable(
                "rate limits are counted in Redis, which does not answer, and "
                "MONAPI_RATE_LIMIT_FALLBACK=closed refuses what they apply to meanwhile",
                retry_after=max(1, round(RETRY_AFTER_FAILURE_S)),
            ) from exc
        self._failed("Redis did not answer; counting rate limits in this process (local)", exc)
        return self.local_limits.hit(bucket, limit, period)

    # Background work ------------------------------------------------------------------------
    def _ensure_threads(self) -> None:
        # Threads do not survive fork: start them once per worker process.
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._stop = threading.Event()
            self._threads = [
                threading.Thread(target=self._listen, name="monapi-redis-listen", daemon=True),
                threading.Thread(target=self._seen_loop, name="monapi-last-seen", daemon=True),
            ]
            for t in self._threads:
                t.start()

    def _listen(self) -> None:
        """Re-read the versions as soon as any process announces a change."""
        while not self._stop.is_set():
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(self._k_changed)
                self._snapshot_at = 0.0  # messages may have been missed while away
                if self._reconciled_at == 0.0:  # back after a failure: announce what was not
                    self._announce_missed()
                while not self._stop.is_set():
                    msg = pubsub.get_message(timeout=1.0)
                    if msg is not None:
                        self._snapshot_at = 0.0
            except redis.RedisError:
                self._reconciled_at = 0.0  # changes committed meanwhile did not reach Redis
                self._stop.wait(1.0)  # reconnect; meanwhile versions are polled
            except Exception:  # pragma: no cover - never let the listener die silently
                if self._stop.is_set():  # closed under it at shutdown: nothing failed
                    return
                log.exception("Redis listener failed; restarting it")
                self._stop.wait(1.0)
            finally:
                with contextlib.suppress(Exception):
                    pubsub.close()

    def _announce_missed(self) -> None:
        """Redis answers again after a failure: raise its versions to the configuration
        store's now (a change this process committed meanwhile was not announced), so that the
        other processes do not wait for their own check."""
        try:
            current = {k.decode(): int(v) for k, v in self._hgetall(self._k_versions).items()}
            self._reconcile(current)
            self._reconciled_at = time.monotonic()
        except redis.RedisError:
            raise
        except Exception as exc:  # the configuration store: the next request tries again
            self._warn("could not check cache versions against the configuration store", exc)

    def _seen_loop(self) -> None:
        last_flush = time.monotonic()
        while not self._stop.wait(PUSH_SEEN_S):
            try:
                self.push_seen()
                if time.monotonic() - last_flush >= self.flush_interval:
                    last_flush = time.monotonic()
                    self.flush_seen()
            except Exception:  # pragma: no cover - keep the loop alive
                log.exception("last-seen flush failed; will retry")

    def _skip(self) -> bool:
        """Whether a request should leave Redis alone for now (it failed a moment ago)."""
        return time.monotonic() < self._down_until

    def _failed(self, message: str, exc: Exception) -> None:
        """A request's call to Redis failed: skip Redis for a moment, and say so (rarely)."""
        self._down_until = time.monotonic() + RETRY_AFTER_FAILURE_S
        self._reconciled_at = 0.0  # changes committed meanwhile did not reach Redis
        self._warn(message, exc)

    def _warn(self, message: str, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._warned_at > 10:  # at most one warning every 10 s per process
            self._warned_at = now
            log.warning("%s: %s", message, exc)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._pid == os.getpid() or self._pid == 0:
            try:
                self.flush_seen()
            except Exception:  # pragma: no cover - shutting down; say so and go on
                log.warning("could not write last-seen times at shutdown", exc_info=True)
        self.sql.close()
        event.remove(self.db.sessionmaker, "after_commit", self._after_commit)
        event.remove(self.db.sessionmaker, "after_rollback", self._after_rollback)
        self.redis.close()


def _safe_url(url: str) -> str:
    """The URL without a password."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url
