"""The background evaluator: one per deployment, whatever the workers and instances.

Every gunicorn worker of every instance runs an :class:`AlertRunner` thread, and each tick it
tries to take or renew the ``alerts`` lease, a row in the configuration store (so on
PostgreSQL it spans instances; on SQLite every process of the machine). Only the holder
evaluates rules and sends notifications; if it dies, another takes the lease once it has
expired (``lease_ttl``: three evaluation intervals, at least 15 s). The lease is a conditional
UPDATE, atomic on SQLite and PostgreSQL alike; the state rows' versions (see ``evaluate``) keep
even an overlap (a holder paused past its lease) from notifying twice.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time

from flask import Flask
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from ..db import Database
from ..models import Lease
from .evaluate import Clock, Evaluator, Report

log = logging.getLogger("monapi.alerts")
EXT = "monapi.alerts"
LEASE = "alerts"
MIN_TTL_S = 15.0
TICK_S = 5.0  # how often a runner checks the lease and the outbox (at most)


def holder_id() -> str:
    """This process, uniquely: host, pid and a random part (a pid can be reused)."""
    return f"{socket.gethostname()[:120]}:{os.getpid()}:{secrets.token_hex(4)}"


class LeaseHolder:
    """A named lease in the configuration store."""

    def __init__(self, database: Database, name: str, holder: str, ttl: float) -> None:
        self.db = database
        self.name = name
        self.holder = holder
        self.ttl = ttl

    def acquire(self, now: float) -> bool:
        """Take the lease, or renew it; False while another holder's has not expired."""
        with self.db.engine.begin() as conn:
            got = conn.execute(
                text(
                    "UPDATE leases SET holder = :h, expires_at = :exp "
                    "WHERE name = :n AND (holder = :h OR expires_at < :now)"
                ),
                {"h": self.holder, "exp": now + self.ttl, "n": self.name, "now": now},
            ).rowcount
            if got == 1:
                return True
            exists = conn.execute(select(Lease.name).where(Lease.name == self.name)).first()
        if exists is not None:
            return False
        try:
            with self.db.engine.begin() as conn:
                conn.execute(
                    text("INSERT INTO leases (name, holder, expires_at) VALUES (:n, :h, :exp)"),
                    {"n": self.name, "h": self.holder, "exp": now + self.ttl},
                )
        except IntegrityError:
            return False  # another process made it first
        return True

    def release(self) -> None:
        """Give the lease up (at shutdown), so another process takes over at once."""
        with self.db.engine.begin() as conn:
            conn.execute(
                text("UPDATE leases SET expires_at = 0 WHERE name = :n AND holder = :h"),
                {"n": self.name, "h": self.holder},
            )

    def current(self) -> tuple[str, float] | None:
        """(holder, expires_at) of the lease, if anyone ever took it."""
        with self.db.engine.connect() as conn:
            row = conn.execute(
                select(Lease.holder, Lease.expires_at).where(Lease.name == self.name)
            ).first()
        return (str(row[0]), float(row[1])) if row is not None else None


class AlertRunner:
    """Evaluates and delivers while it holds the lease; see the module docstring."""

    def __init__(
        self,
        evaluator: Evaluator,
        interval: float,
        *,
        clock: Clock = time.time,
        holder: str | None = None,
    ) -> None:
        self.evaluator = evaluator
        self.interval = interval
        self.clock = clock
        self.lease = LeaseHolder(
            evaluator.db, LEASE, holder or holder_id(), max(3 * interval, MIN_TTL_S)
        )
        self.next_evaluation = 0.0
        self.last_report: Report | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> bool:
        """One tick: take or renew the lease; if held, evaluate (when due) and send what is
        due. Returns whether this process holds the lease."""
        now = self.clock()
        if not self.lease.acquire(now):
            self.next_evaluation = 0.0  # evaluate at once should the lease come here
            return False
        if now >= self.next_evaluation:
            self.last_report = self.evaluator.evaluate(now)
            self.next_evaluation = now + self.interval
        self.evaluator.deliver(now)
        return True

    def start(self) -> None:
        """Run in a daemon thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._run, name="monapi-alerts", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        tick = min(self.interval, TICK_S)
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception as exc:  # the store away: try again next tick
                log.warning("alert evaluation failed: %s", exc)
            self._stop.wait(tick)

    def stop(self) -> None:
        """Stop the thread and hand the lease on."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        try:
            self.lease.release()
        except Exception as exc:
            log.warning("could not release the alerts lease: %s", exc)


def evaluator_for(app: Flask, clock: Clock = time.time) -> Evaluator:
    """An evaluator on the app's stores."""
    coordinator = app.extensions["monapi.cache"]
    return Evaluator(
        app.extensions["monapi.db"],
        app.extensions["monapi.tsdb"],
        app.extensions["monapi.settings"],
        coordinator.pending_seen,
        clock=clock,
    )


def runner_for(app: Flask, clock: Clock = time.time, holder: str | None = None) -> AlertRunner:
    """A runner on the app's stores, at the configured interval (not started)."""
    settings = app.extensions["monapi.settings"]
    return AlertRunner(
        evaluator_for(app, clock), settings.alerts_interval, clock=clock, holder=holder
    )


def start(app: Flask) -> AlertRunner | None:
    """Start this process's runner (gunicorn's post_worker_init), unless alerts are off."""
    if not app.extensions["monapi.settings"].alerts_enabled:
        return None
    runner = runner_for(app)
    app.extensions[EXT] = runner
    runner.start()
    return runner


def stop(app: Flask) -> None:
    """Stop this process's runner, if it has one (worker exit)."""
    runner: AlertRunner | None = app.extensions.pop(EXT, None)
    if runner is not None:
        runner.stop()
