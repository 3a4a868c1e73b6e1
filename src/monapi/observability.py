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
from collections import Counter as Tally
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
PUBLISH_EVERY_S = 1.0  # how often writes in progress are copied to their gauge
WRITE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def multiprocess_mode() -> bool:
    """Whether prometheus-client keeps values in PROMETHEUS_MULTIPROC_DIR (decided when it was
    imported: the variable must be set before)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


class Telemetry:
    """The metrics of one app: what requests, ingestion and writes count, and the exposition."""

    def __init__(self, settings: Settings, tsdb_backend: str) -> None:
        self.backend = tsdb_backend
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
        # Multiprocess: the values live in files, and a scrape reads those (``_scrape_registry``);
        # else a registry of this app's own, so that two apps in one process do not mix.
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
        self._write_latency = self.write_seconds.labels(tsdb_backend)
        # Writes in progress: counted in memory, published by a thread once a second. Raising
        # and lowering the gauge around every write were 2 of the 8 writes to the metrics files
        # that a push made (about 20 us of CPU in all, measured in-process).
        self._in_progress = self.in_progress.labels(tsdb_backend)
        self._inflight = 0
        self._inflight_lock = threading.Lock()
        self._publisher_pid = 0
        self._stop = threading.Event()
        # (method, route, status) -> (counter child, histogram child): labels() takes a lock.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._live: list[Collector] = [BuildInfo(settings, tsdb_backend), ServerCounts()]
        self._registry = own if own is not None else CollectorRegistry()
        if self.multiprocess:
            MultiProcessCollector(self._registry)  # type: ignore[no-untyped-call]
        for collector in self._live:
            self._registry.register(collector)

    # Counting ------------------------------------------------------------------------------
    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count an answered request."""
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(method, route, str(status)),
                self.latency.labels(method, route),
            )
        children[0].inc()
        children[1].observe(seconds)

    def ingested(self, res: ValidationResult) -> None:
        """Count what one request's validation and write gave."""
        if res.points:
            self.accepted.inc(len(res.points))
        if res.refused_kinds:
            for reason, n in Tally(res.refused_kinds.values()).items():
                self.rejected.labels(reason).inc(n)
        if res.dropped:
            self.dropped.inc(res.dropped)

    def refused(self, reason: str, points: int) -> None:
        """Count points refused before validation (lines that do not parse)."""
        self.rejected.labels(reason).inc(points)

    def write(
        self, store: TimeSeriesStore, batches: Sequence[WriteBatch], points: int
    ) -> list[Rejection]:
        """``store.write(batches)``, timed, and its failure counted (then none of its
        ``points`` is stored)."""
        if self._publisher_pid != os.getpid():  # the first write of this process (a worker)
            self._start_publisher()
        with self._inflight_lock:
            self._inflight += 1
        t0 = time.perf_counter()
        try:
            return store.write(batches)
        except BaseException as exc:
            kind = (
                "unavailable"
                if isinstance(exc, StoreUnavailable)
                else "rejected"
                if isinstance(exc, StoreRejected)
                else "error"
            )
            self.write_errors.labels(self.backend, kind).inc()
            if kind == "unavailable":
                self.rejected.labels("store_unavailable").inc(points)
            raise
        finally:
            with self._inflight_lock:
                self._inflight -= 1
            self._write_latency.observe(time.perf_counter() - t0)

    def _start_publisher(self) -> None:
        with self._inflight_lock:
            if self._publisher_pid == os.getpid():
                return
            self._publisher_pid = os.getpid()
        threading.Thread(target=self._publish, name="monapi-metrics-inflight", daemon=True).start()

    def _publish(self) -> None:
        """Copy the count of writes in progress to the gauge once a second (when it changed)."""
        last = 0
        while not self._stop.wait(PUBLISH_EVERY_S):
            now = self._inflight
            if now != last:
                self._in_progress.set(now)
                last = now

    def close(self) -> None:
        """Stop the publishing thread (app shutdown)."""
        self._stop.set()

    # Exposition ----------------------------------------------------------------------------
    def exposition(self) -> bytes:
        """Every metric of every worker, in the text format."""
        return generate_latest(self._registry)


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
