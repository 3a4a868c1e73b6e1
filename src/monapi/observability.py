"""monapi's own metrics, served at ``/metrics`` in the Prometheus text format.

Under gunicorn every worker is a process of its own, and a scrape reaches one of them: the
counts must be the sum over all of them. prometheus-client's multiprocess mode does that when
``PROMETHEUS_MULTIPROC_DIR`` names a directory before ``prometheus_client`` is first imported:
each process then keeps its values in files there, and a scrape reads them all. monapi's
gunicorn configuration (:mod:`monapi.gunicorn_conf`) sets it to a fresh directory, wipes it at
start and drops a dead worker's live gauges. Without it (tests, ``flask run``) each app counts
in a registry of its own.

Two families are computed at scrape time instead of counted: ``monapi_servers`` (from the
configuration store) and ``monapi_build_info``.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from bisect import bisect_left
from collections import Counter as Occurrences
from collections.abc import Iterable, Sequence
from hashlib import sha256
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    values,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

from . import __version__
from .errors import StoreRejected, StoreUnavailable, warn_unavailable
from .settings import ConfigError, Settings

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from .ingest import ValidationResult
    from .tsdb import TimeSeriesStore, WriteBatch
    from .tsdb.base import Rejection

log = logging.getLogger("monapi.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
INVALID_LINE = "invalid_line"  # a line of line protocol that does not parse
UNMATCHED = "<unmatched>"  # the route label of a request no route matched (404s of any path)

# Requests: from a 0.3 ms push answered by the hot path to a slow dashboard page or a 10 s
# engine timeout.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
PUBLISH_EVERY_S = 1.0  # how often each process adds what it counted to the metrics
WRITE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def multiprocess_mode() -> bool:
    """Whether prometheus-client keeps values in PROMETHEUS_MULTIPROC_DIR (decided when it was
    imported: the variable must be set before)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


class Telemetry:
    """The metrics of one app: what requests, ingestion and writes count, and the exposition."""

    def __init__(self, settings: Settings, tsdb_backend: str) -> None:
        self.backend = tsdb_backend
        self.enabled = settings.metrics_enabled  # off: nothing is counted, at no cost
        self.multiprocess = multiprocess_mode()
        if not self.multiprocess and os.environ.get(MULTIPROC_ENV):
            log.warning(
                "%s is set but prometheus_client was imported before it was: /metrics counts "
                "this process only; set it before the server starts",
                MULTIPROC_ENV,
            )
        if self.multiprocess:
            path = os.environ.get(MULTIPROC_ENV, "")
            if not os.path.isdir(path):
                raise ConfigError(
                    f"{MULTIPROC_ENV}={path!r} is not a directory: create it (empty, for monapi "
                    "alone) or unset it (monapi's gunicorn configuration sets one)"
                )
        # *_created series: noise (a scraper sees restarts as counters going down anyway)
        disable_created_metrics()  # type: ignore[no-untyped-call]
        # Multiprocess: the values live in files, and a scrape reads them all (the
        # MultiProcessCollector in ``self._registry``); else a registry of this app's own, so
        # that two apps in one process do not mix.
        own = None if self.multiprocess else CollectorRegistry()
        self.requests = Counter(
            "monapi_http_requests",
            "HTTP requests answered, by method, route (the URL rule, not the path) and status.",
            ["method", "route", "status"],
            registry=own,
        )
        self.latency = Histogram(
            "monapi_http_request_duration_seconds",
            "Time from a request's arrival in monapi to its answer, by method and route.",
            ["method", "route"],
            buckets=REQUEST_BUCKETS,
            registry=own,
        )
        self.accepted = Counter(
            "monapi_points_accepted",
            "Points stored (every wire format: JSON, /write line protocol).",
            registry=own,
        )
        self.rejected = Counter(
            "monapi_points_rejected",
            "Points refused, by the reason of their first error; store_unavailable: points of a "
            "request the time-series store did not answer (503).",
            ["reason"],
            registry=own,
        )
        self.dropped = Counter(
            "monapi_fields_dropped",
            "Values of unknown fields dropped (MONAPI_UNKNOWN_FIELDS=drop).",
            registry=own,
        )
        self.write_seconds = Histogram(
            "monapi_tsdb_write_duration_seconds",
            "Time a request waited for the time-series store to confirm its points (a write "
            "shared with concurrent requests included).",
            ["backend"],
            buckets=WRITE_BUCKETS,
            registry=own,
        )
        self.write_errors = Counter(
            "monapi_tsdb_write_errors",
            "Writes to the time-series store that failed: unavailable (no answer, 503), "
            "rejected (refused as a whole, 400), error (anything else, 500).",
            ["backend", "error"],
            registry=own,
        )
        self.in_progress = Gauge(
            "monapi_tsdb_writes_in_progress",
            "Requests waiting for the time-series store to confirm a write: queued behind a "
            "shared write, or in one (each worker's count, sampled every second).",
            ["backend"],
            registry=own,
            multiprocess_mode="livesum",
        )
        self._in_progress = self.in_progress.labels(tsdb_backend)
        # What requests count goes to a tally in memory first; a thread of each process adds it
        # to the metrics once a second (and a scrape, to its own process's first). Written
        # straight to the metrics files, a push cost 6 writes under prometheus-client's lock,
        # about 14 us of CPU, and 10 % of the embedded store's agent throughput (docs/
        # benchmarks.md); counting in the tally costs one lock and a few dict updates.
        self._lock = threading.Lock()
        self._tally = _Tally()
        self._inflight = 0  # writes in progress in this process (a gauge, also published)
        self._published_inflight = 0
        self._publisher_pid = 0
        self._stop = threading.Event()
        self._children: dict[tuple[Any, ...], Any] = {}  # labels() takes a lock: once each
        self._live: list[Collector] = [
            BuildInfo(settings, tsdb_backend),
            ServerCounts(),
            AlertCounts(),
        ]
        self._registry = own if own is not None else CollectorRegistry()
        if self.multiprocess:
            MultiProcessCollector(self._registry)  # type: ignore[no-untyped-call]
        for collector in self._live:
            self._registry.register(collector)

    # Counting (request threads) ------------------------------------------------------------
    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count an answered request."""
        if self._publisher_pid != os.getpid():
            self._start_publisher()
        with self._lock:
            tally = self._tally
            key = (method, route, status)
            tally.requests[key] = tally.requests.get(key, 0) + 1
            _observe(tally.latency, (method, route), seconds, REQUEST_BUCKETS)

    def ingested(self, res: ValidationResult) -> None:
        """Count what one request's validation and write gave."""
        if not self.enabled or not (res.points or res.refused_kinds or res.dropped):
            return
        refused = Occurrences(res.refused_kinds.values()) if res.refused_kinds else None
        with self._lock:
            tally = self._tally
            tally.accepted += len(res.points)
            tally.dropped += res.dropped
            if refused:
                for reason, n in refused.items():
                    tally.rejected[reason] = tally.rejected.get(reason, 0) + n

    def refused(self, reason: str, points: int) -> None:
        """Count points refused before validation (lines that do not parse)."""
        if not self.enabled:
            return
        with self._lock:
            self._tally.rejected[reason] = self._tally.rejected.get(reason, 0) + points

    def write(
        self, store: TimeSeriesStore, batches: Sequence[WriteBatch], points: int
    ) -> list[Rejection]:
        """``store.write(batches)``, timed, and its failure counted (then none of its
        ``points`` is stored)."""
        if not self.enabled:
            return store.write(batches)
        if self._publisher_pid != os.getpid():
            self._start_publisher()
        with self._lock:
            self._inflight += 1
        t0 = time.perf_counter()
        error: str | None = None
        try:
            return store.write(batches)
        except BaseException as exc:
            error = (
                "unavailable"
                if isinstance(exc, StoreUnavailable)
                else "rejected"
                if isinstance(exc, StoreRejected)
                else "error"
            )
            raise
        finally:
            seconds = time.perf_counter() - t0
            with self._lock:
                tally = self._tally
                self._inflight -= 1
                _observe(tally.latency, (), seconds, WRITE_BUCKETS)
                if error is not None:
                    tally.write_errors[error] = tally.write_errors.get(error, 0) + 1
                    if error == "unavailable":
                        tally.rejected["store_unavailable"] = (
                            tally.rejected.get("store_unavailable", 0) + points
                        )

    # Publishing (a thread of each process) ------------------------------------------------
    def _start_publisher(self) -> None:
        with self._lock:
            if self._publisher_pid == os.getpid():
                return
            if self._publisher_pid:  # forked: what the parent counted is the parent's
                self._tally = _Tally()
                self._inflight = self._published_inflight = 0
            self._publisher_pid = os.getpid()
        threading.Thread(target=self._publish, name="monapi-metrics", daemon=True).start()

    def _publish(self) -> None:
        while not self._stop.wait(PUBLISH_EVERY_S):
            try:
                self.flush()
            except Exception:  # pragma: no cover - a bug; keep counting, say it once a minute
                warn_unavailable(log, "metrics not published: %s", "flush failed")

    def flush(self) -> None:
        """Add what this process counted since the last flush to the metrics."""
        with self._lock:
            tally, self._tally = self._tally, _Tally()
            inflight = self._inflight
        for (method, route, status), n in tally.requests.items():
            self._child(self.requests, method, route, str(status)).inc(n)
        for labels, (total, counts) in tally.latency.items():
            if labels:  # (method, route): a request
                _add(self._child(self.latency, *labels), total[0], counts)
            else:  # a write to the store
                _add(self._child(self.write_seconds, self.backend), total[0], counts)
        if tally.accepted:
            self.accepted.inc(tally.accepted)
        if tally.dropped:
            self.dropped.inc(tally.dropped)
        for reason, n in tally.rejected.items():
            self._child(self.rejected, reason).inc(n)
        for error, n in tally.write_errors.items():
            self._child(self.write_errors, self.backend, error).inc(n)
        if inflight != self._published_inflight:
            self._in_progress.set(inflight)
            self._published_inflight = inflight

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def close(self) -> None:
        """Publish what is counted and stop the thread (app shutdown, worker exit)."""
        self._stop.set()
        self.flush()

    # Exposition ----------------------------------------------------------------------------
    def exposition(self) -> bytes:
        """Every metric of every worker, in the text format (this process's counts up to now,
        the other workers' as they published them, at most a second ago)."""
        self.flush()
        return generate_latest(self._registry)


class _Tally:
    """Counts of one process not yet added to the metrics."""

    __slots__ = ("accepted", "dropped", "latency", "rejected", "requests", "write_errors")

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        # (method, route) of a request, () for a write -> [sum of seconds, count per bucket]
        self.latency: dict[tuple[str, ...], tuple[list[float], list[int]]] = {}
        self.accepted = 0
        self.dropped = 0
        self.rejected: dict[str, int] = {}
        self.write_errors: dict[str, int] = {}


def _observe(
    into: dict[tuple[str, ...], tuple[list[float], list[int]]],
    key: tuple[str, ...],
    seconds: float,
    buckets: tuple[float, ...],
) -> None:
    """One observation into a tally's histogram (the caller holds the lock)."""
    hist = into.get(key)
    if hist is None:
        hist = into[key] = ([0.0], [0] * (len(buckets) + 1))  # + the +Inf bucket
    hist[0][0] += seconds
    hist[1][bisect_left(buckets, seconds)] += 1  # the first bucket whose bound >= seconds


def _add(child: Any, total: float, counts: list[int]) -> None:
    """Add a tally's observations to a prometheus-client histogram child: its sum, and each
    bucket's count (``observe`` takes one value at a time; the child keeps one value per
    bucket and sums them when exposed)."""
    child._sum.inc(total)
    for bucket, n in zip(child._buckets, counts, strict=True):
        if n:
            bucket.inc(n)


class BuildInfo(Collector):
    """``monapi_build_info``: the version and the backends, as labels of a constant 1."""

    def __init__(self, settings: Settings, tsdb_backend: str) -> None:
        self.labels = {
            "version": __version__,
            "tsdb": tsdb_backend,
            "config_store": "postgresql"
            if settings.resolved_database_url.startswith("postgresql")
            else "sqlite",
            "cache": "redis" if settings.redis_url else "local",
        }

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "monapi_build_info",
            "monapi's version and the backends in use (always 1).",
            labels=list(self.labels),
        )
        family.add_metric(list(self.labels.values()), 1)
        yield family


class ServerCounts(Collector):
    """``monapi_servers``: registered servers by status, read from the configuration store at
    scrape time. A store that does not answer leaves the family out of that scrape (and says
    so in the log) rather than failing the whole scrape."""

    STATUSES: Sequence[str] = ("online", "offline", "never_seen", "disabled")

    def collect(self) -> Iterable[Metric]:
        from .services.servers import count_by_status

        try:
            counts = count_by_status()
        except (StoreUnavailable, SQLAlchemyError) as exc:
            warn_unavailable(log, "monapi_servers left out of /metrics: %s", str(exc))
            return
        family = GaugeMetricFamily(
            "monapi_servers",
            "Registered servers by status: online, offline and never_seen count enabled "
            "servers (offline after MONAPI_OFFLINE_AFTER_INTERVALS missed intervals).",
            labels=["status"],
        )
        for status in self.STATUSES:
            family.add_metric([status], counts.get(status, 0))
        yield family


class AlertCounts(Collector):
    """``monapi_alerts`` (pending and firing alerts by severity) and
    ``monapi_alert_notifications`` (the outbox by status), from the configuration store at
    scrape time: the same on every instance, whichever process evaluates."""

    def collect(self) -> Iterable[Metric]:
        from .services.alerts import alert_counts

        try:
            alerts, outbox = alert_counts()
        except (StoreUnavailable, SQLAlchemyError) as exc:
            warn_unavailable(log, "monapi_alerts left out of /metrics: %s", str(exc))
            return
        family = GaugeMetricFamily(
            "monapi_alerts",
            "Alerts (rule and server) pending or firing now, by severity.",
            labels=["state", "severity"],
        )
        for state in ("pending", "firing"):
            for severity in ("info", "warning", "critical"):
                family.add_metric([state, severity], alerts.get((state, severity), 0))
        yield family
        family = GaugeMetricFamily(
            "monapi_alert_notifications",
            "Alert notifications in the outbox by status: pending (queued or waiting for a "
            "retry), sent, failed (gave up).",
            labels=["status"],
        )
        for status in ("pending", "sent", "failed"):
            family.add_metric([status], outbox.get(status, 0))
        yield family


def init_app(app: Flask, settings: Settings, tsdb_backend: str) -> Telemetry:
    """Create the app's metrics (``app.extensions["monapi.telemetry"]``)."""
    telemetry = Telemetry(settings, tsdb_backend)
    app.extensions["monapi.telemetry"] = telemetry
    return telemetry


def get_telemetry() -> Telemetry:
    """The current app's metrics."""
    telemetry: Telemetry = current_app.extensions["monapi.telemetry"]
    return telemetry


def token_matches(given: str, expected: str) -> bool:
    """Constant-time comparison of a presented /metrics token (digests: equal lengths)."""
    return hmac.compare_digest(sha256(given.encode()).digest(), sha256(expected.encode()).digest())
