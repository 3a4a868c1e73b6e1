"""The agent's loop: collect on schedule, deliver in order, spool what cannot be delivered.

Two threads. The main thread only collects: every ``interval`` seconds (the server's setting for
this server) it takes a sample and hands it over, so a slow or absent server never delays
sampling. The sender thread owns the network and the spool:

* the spool is empty and the server answers: the sample is pushed from memory (only the time
  of the last push is noted in the spool file, for ``status``);
* the server is away (no connection, timeout, 5xx, 429, 401/403): the sample goes to the spool,
  and so does every later one until the spool is drained, which keeps the order; re-sends wait
  an exponential backoff with jitter (at least the server's Retry-After);
* the server refuses the data itself (400/415/422): logged with its reason and dropped, since
  sending it again would get the same answer; in a multi-sample batch the batch is halved until
  only the refused sample is dropped. A 413 halves the batch size for good.

SIGTERM (or SIGINT) stops collecting and flushes what is in memory: one short push when the
server was answering, else into the spool. Nothing acknowledged is lost and nothing is re-sent
after the server confirmed it; a push whose answer never arrived is re-sent with the same
timestamps, which monapi's stores (SQLite, InfluxDB) overwrite rather than duplicate.
"""

from __future__ import annotations

import logging
import random
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from .client import Client, Outcome, Reply
from .collect import Collector, FieldWant
from .config import Settings
from .spool import Points, Spool

log = logging.getLogger("monapi_agent")

# Samples kept in memory when even the spool cannot be written (disk full, read-only file).
MAX_MEMORY_SAMPLES = 1000
# A push at shutdown must not hold up a service manager's stop.
SHUTDOWN_PUSH_TIMEOUT = 5.0
# Before any configuration is known, ask again at least this often.
UNCONFIGURED_REFRESH = 15.0


def backoff_delay(
    failures: int,
    retry_min: float,
    retry_max: float,
    rand: float,
    retry_after: float | None = None,
) -> float:
    """Seconds to wait after the ``failures``-th failure in a row: doubling from retry_min up
    to retry_max, with "equal jitter" (between half the step and the step, ``rand`` in [0, 1)),
    so a fleet that lost its server spreads out but every agent still backs off; never less
    than the server's Retry-After."""
    step: float = min(retry_max, retry_min * 2.0 ** min(failures - 1, 60))
    delay = step / 2 + rand * step / 2
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


class Runner:
    """One agent: a collector, a client, a spool and the schedule that ties them together."""

    def __init__(
        self,
        settings: Settings,
        *,
        client: Client,
        spool: Spool,
        collector: Collector,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.client = client
        self.spool = spool
        self.collector = collector
        self._clock = clock
        self._mono = monotonic
        self._rand = rand
        self.interval = float(settings.default_interval)
        self._queue: list[Points] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._started = monotonic()
        self._retry_at = 0.0
        self._failures = 0
        self._last_failure = ""
        self._batch_max = settings.batch_max_points
        self._config_etag: str | None = None
        self._configured = False
        self._next_config = 0.0
        # While the spool cannot be written, the samples held in memory wait until then.
        self._hold_until = 0.0
        self._spool_failures = 0
        # Set (under the lock) once the main thread will add no more samples: only then does
        # the sender flush and exit, so a sample taken while stopping is not left behind.
        self._closing = False
        self._sender: threading.Thread | None = None

    # -- configuration ------------------------------------------------------------------------

    def _apply_config(self, config: dict[str, Any], etag: str | None, source: str) -> None:
        wants = [FieldWant.from_config(f) for f in config.get("fields", [])]
        self.collector.set_fields(wants)
        interval = float(config.get("interval") or self.settings.default_interval)
        if interval != self.interval or not self._configured:
            log.info("configuration (%s): %d fields, every %gs", source, len(wants), interval)
        self.interval = interval
        self._config_etag = etag
        self._configured = True

    def load_cached_config(self) -> None:
        """Start from the last configuration the server gave (the server may be away now)."""
        cached = self.spool.get_meta("config")
        if isinstance(cached, dict) and isinstance(cached.get("config"), dict):
            self._apply_config(cached["config"], cached.get("etag"), "cached")

    def refresh_config(self) -> None:
        """Heartbeat; fetch the configuration when its ETag changed (or was never fetched)."""
        now = self._mono()
        self._next_config = now + (
            self.settings.config_refresh
            if self._configured
            else min(self.settings.config_refresh, UNCONFIGURED_REFRESH)
        )
        beat = self.client.heartbeat(int(now - self._started))
        if beat.outcome is Outcome.OK and isinstance(beat.body, dict):
            if self._configured and beat.body.get("config_etag") == self._config_etag:
                return
        elif beat.outcome is Outcome.UNAUTHORIZED:
            self._note_failure(beat, spooled=False)
            return
        elif beat.status is None:
            # No answer at all: asking for the configuration too would only wait out a second
            # timeout before sampling starts.
            log.debug("heartbeat not answered: %s", beat.message)
            return
        reply = self.client.agent_config(self._config_etag)
        if reply.status == 200 and isinstance(reply.body, dict):
            self._apply_config(reply.body, reply.etag, "from the server")
            self._set_meta(config={"etag": reply.etag, "config": reply.body})
        elif reply.status != 304:
            log.debug("configuration not fetched: %s", reply.message)

    # -- the main thread ----------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the loop (and flush); must run in the main thread."""

        def handler(signum: int, frame: FrameType | None) -> None:
            log.info("%s: stopping", signal.Signals(signum).name)
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def stop(self) -> None:
        """Ask the loop to finish (safe from a signal handler and from other threads)."""
        self._stop.set()
        # Never block in a signal handler: this only hurries a sender that is waiting; run()
        # then tells it (blocking, under the lock) that no more samples will come.
        if self._cond.acquire(blocking=False):
            try:
                self._cond.notify_all()
            finally:
                self._cond.release()

    def run(self, max_samples: int | None = None) -> int:
        """Collect and deliver until stopped (or after ``max_samples``); returns an exit code."""
        self.load_cached_config()
        self.refresh_config()
        if not self._configured:
            log.warning(
                "no configuration from %s yet: collecting the default fields every %gs",
                self.client.url,
                self.interval,
            )
        self.collector.prime()
        self._sender = threading.Thread(target=self._send_loop, name="monapi-agent-sender")
        self._sender.start()
        taken = 0
        next_tick = self._mono() + self.interval
        try:
            while not self._stop.wait(max(0.0, next_tick - self._mono())):
                sample = self.collector.collect()
                if sample:
                    log.debug("sampled %d points at %d", len(sample), sample[0]["timestamp"])
                    with self._cond:
                        self._queue.append(sample)
                        self._cond.notify_all()
                taken += 1
                if max_samples is not None and taken >= max_samples:
                    break
                next_tick += self.interval
                now = self._mono()
                if next_tick <= now:
                    missed = int((now - next_tick) // self.interval) + 1
                    log.warning("sampling fell %d interval(s) behind; skipping ahead", missed)
                    next_tick += missed * self.interval
        finally:
            self.stop()
            # Blocking, unlike stop(): a notify that stop() could not deliver (the sender held
            # the lock) would leave the sender asleep until its next timer.
            with self._cond:
                self._closing = True
                self._cond.notify_all()
            self._sender.join()
        return 0

    # -- the sender thread --------------------------------------------------------------------

    def _has_work(self, now: float) -> bool:
        if self._stop.is_set():
            return False  # only the flush at exit is left to do
        if (self._queue and now >= self._hold_until) or now >= self._next_config:
            return True
        return len(self.spool) > 0 and now >= self._retry_at

    def _send_loop(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._closing:
                        now = self._mono()
                        if self._has_work(now):
                            break
                        if self._stop.is_set():
                            self._cond.wait(1.0)  # run() sets _closing (and notifies) soon
                            continue
                        wake = self._next_config
                        if len(self.spool):
                            wake = min(wake, self._retry_at)
                        if self._queue:
                            wake = min(wake, self._hold_until)
                        self._cond.wait(max(0.01, wake - now))
                    batch, self._queue = self._queue, []
                    closing = self._closing
                if closing:
                    self._flush_at_exit(batch)
                    return
                self._cycle(batch)
        except Exception:
            log.exception("sender failed; samples in memory are spooled")
            with self._cond:
                batch, self._queue = self._queue, []
            self._spool(batch)
            self._stop.set()
            raise

    def _cycle(self, batch: list[Points]) -> None:
        if self._mono() >= self._next_config:
            self.refresh_config()
        if batch:
            if len(self.spool) or self._mono() < self._retry_at:
                self._spool(batch)
            else:
                self._push_from_memory(batch)
        if len(self.spool) and self._mono() >= self._retry_at:
            self._drain()

    def _spool(self, samples: list[Points]) -> None:
        if not samples:
            return
        try:
            self.spool.put(samples)
        except sqlite3.Error as exc:
            # Not again before a backoff: retrying at once would spin (and flood the log).
            self._spool_failures += 1
            delay = backoff_delay(
                self._spool_failures, self.settings.retry_min, self.settings.retry_max, self._rand()
            )
            self._hold_until = self._mono() + delay
            log.error(
                "cannot write the spool %s: %s; keeping samples in memory, trying again in %.1fs",
                self.spool.path,
                exc,
                delay,
            )
            with self._cond:
                self._queue[:0] = samples
                excess = len(self._queue) - MAX_MEMORY_SAMPLES
                if excess > 0:
                    del self._queue[:excess]
                    log.error("dropped the %d oldest samples held in memory", excess)
        else:
            self._spool_failures = 0

    def _push_from_memory(self, samples: list[Points], timeout: float | None = None) -> bool:
        points = [p for s in samples for p in s]
        reply = self.client.push(points, timeout=timeout)
        if reply.outcome is Outcome.OK:
            self._note_success(reply, len(points))
            return True
        if reply.outcome is Outcome.REJECTED and len(samples) == 1:
            self._note_rejected(reply, len(points))
            return True
        # Away, refused key, too large or a refusal somewhere in several samples: the spool
        # keeps them and the drain sorts them out in order.
        self._spool(samples)
        if reply.outcome in (Outcome.RETRY, Outcome.UNAUTHORIZED):
            self._note_failure(reply, spooled=True)
        return False

    def _drain(self) -> None:
        try:
            self._drain_spool()
        except sqlite3.Error as exc:
            # e.g. a delivered batch that cannot be deleted yet: it is sent again later, with
            # the same timestamps (stored once), rather than the sender dying.
            self._failures += 1
            delay = backoff_delay(
                self._failures, self.settings.retry_min, self.settings.retry_max, self._rand()
            )
            self._retry_at = self._mono() + delay
            log.error(
                "cannot update the spool %s: %s; draining again in %.1fs",
                self.spool.path,
                exc,
                delay,
            )

    def _drain_spool(self) -> None:
        limit = self._batch_max
        while len(self.spool) and not self._stop.is_set():
            rows = self.spool.peek(limit)
            ids = [rowid for rowid, _ in rows]
            points = [p for _, pts in rows for p in pts]
            reply = self.client.push(points)
            if reply.outcome is Outcome.OK:
                self.spool.delete(ids)
                self._note_success(reply, len(points))
                limit = self._batch_max
                continue
            if reply.outcome in (Outcome.REJECTED, Outcome.TOO_LARGE):
                if len(rows) > 1:
                    limit = max(1, len(points) // 2)
                    if reply.outcome is Outcome.TOO_LARGE:
                        self._batch_max = limit
                        log.info("server said 413: sending at most %d points per request", limit)
                    continue
                if reply.outcome is Outcome.TOO_LARGE:
                    log.error(
                        "dropped a sample of %d points: the server refuses it as too large (%s)",
                        len(points),
                        reply.message,
                    )
                else:
                    self._note_rejected(reply, len(points))
                self.spool.delete(ids)
                continue
            self._note_failure(reply, spooled=True)
            return

    def _flush_at_exit(self, batch: list[Points]) -> None:
        try:
            if batch:
                if not len(self.spool) and self._mono() >= self._retry_at:
                    timeout = min(self.settings.timeout, SHUTDOWN_PUSH_TIMEOUT)
                    self._push_from_memory(batch, timeout=timeout)
                else:
                    self._spool(batch)
                    log.info("spooled %d sample(s) at exit", len(batch))
            if self._queue:
                log.error(
                    "%d sample(s) lost at exit: the spool cannot be written", len(self._queue)
                )
            remaining = len(self.spool)
            if remaining:
                log.info("%d sample(s) wait in the spool for the next start", remaining)
        finally:
            self.spool.close()

    # -- outcomes -----------------------------------------------------------------------------

    def _set_meta(self, **values: Any) -> None:
        # What `status` reports; a spool that cannot be written must not stop delivery.
        try:
            self.spool.set_meta(**values)
        except sqlite3.Error as exc:
            log.debug("cannot record %s in the spool: %s", ", ".join(values), exc)

    def _note_success(self, reply: Reply, points: int) -> None:
        if self._failures:
            log.info(
                "delivering again after %d failed attempt(s); %d sample(s) left in the spool",
                self._failures,
                len(self.spool),
            )
        self._failures = 0
        self._retry_at = 0.0
        self._last_failure = ""
        if reply.status == 200 and isinstance(reply.body, dict):
            rejected = reply.body.get("rejected", 0)
            dropped = reply.body.get("dropped", 0)
            errors = reply.body.get("errors") or []
            reasons = "; ".join(
                f"{e.get('field') or ''} {e.get('reason')}".strip() for e in errors[:3]
            )
            log.warning(
                "server stored %s point(s), refused %s, ignored %s value(s) of unknown fields%s",
                reply.body.get("accepted"),
                rejected,
                dropped,
                f": {reasons}" if reasons else "",
            )
        self._set_meta(last_push=self._clock(), last_push_points=points)

    def _note_rejected(self, reply: Reply, points: int) -> None:
        log.error(
            "server refused %d point(s) (HTTP %s): %s; dropped, not retried",
            points,
            reply.status,
            reply.message,
        )
        self._set_meta(
            last_error={"at": self._clock(), "status": reply.status, "message": reply.message}
        )

    def _note_failure(self, reply: Reply, *, spooled: bool) -> None:
        self._failures += 1
        delay = backoff_delay(
            self._failures,
            self.settings.retry_min,
            self.settings.retry_max,
            self._rand(),
            reply.retry_after,
        )
        self._retry_at = self._mono() + delay
        what = f"HTTP {reply.status}: {reply.message}" if reply.status else reply.message
        if reply.outcome is Outcome.UNAUTHORIZED:
            hint = (
                "the server key was rotated or revoked, or this server was disabled or deleted;"
                " put the new key (POST /api/v1/servers/ID/rotate-key) in the config file and"
                " restart, or, for a deleted server, `monapi-agent register --force`"
            )
            if what != self._last_failure:
                log.error(
                    "server refuses this agent's key (%s): %s; spooling meanwhile", what, hint
                )
        elif what != self._last_failure:
            log.warning(
                "cannot deliver (%s)%s; retrying in %.1fs",
                what,
                f"; {len(self.spool)} sample(s) spooled" if spooled else "",
                delay,
            )
        else:
            log.info("still cannot deliver (attempt %d); retrying in %.1fs", self._failures, delay)
        self._last_failure = what
        self._set_meta(
            last_error={"at": self._clock(), "status": reply.status, "message": reply.message}
        )
