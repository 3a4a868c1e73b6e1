"""/healthz (the process is alive) and /readyz (its stores answer)."""

from __future__ import annotations

from typing import Any

from flask import current_app

from ..auth import requires
from ..cache import get_coordinator
from ..db import get_db
from ..errors import ApiError, StoreUnavailable
from ..schemas import Health
from ..tsdb import TimeSeriesStore
from .common import blueprint, errors

bp = blueprint("health", "Liveness and readiness", prefix="", secured=False)
BP = bp.name


@bp.get("/healthz", responses={200: Health})
@requires(BP)
def healthz() -> dict[str, Any]:
    """Always 200 while the process serves requests."""
    return {"status": "ok"}


@bp.get("/readyz", responses={200: Health, **errors(503)})
@requires(BP)
def readyz() -> dict[str, Any]:
    """200 when the configuration store, the time-series store and the cache answer; 503 names
    the one that does not. Each check says which backend it is."""
    checks: dict[str, dict[str, str]] = {}
    failed = []
    store: TimeSeriesStore = current_app.extensions["monapi.tsdb"]
    database = get_db()
    coordinator = get_coordinator()
    for name, backend, ping in (
        ("config_store", database.backend, database.ping),
        ("tsdb", store.name, store.ping),
        ("cache", coordinator.name, coordinator.ping),
    ):
        try:
            ping()
            checks[name] = {"backend": backend, "status": "ok"}
        except StoreUnavailable as exc:
            checks[name] = {"backend": backend, "status": str(exc)}
            failed.append(name)
    if failed:
        names = ", ".join(f"{n} ({checks[n]['backend']})" for n in failed)
        raise ApiError(
            503,
            f"not ready: {names} not answering",
            code="not_ready",
            headers={"Retry-After": "5"},
            details=[{"location": n, "reason": checks[n]["status"]} for n in failed],
        )
    return {"status": "ready", "checks": checks}
