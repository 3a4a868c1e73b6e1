"""/healthz (the process is alive) and /readyz (its stores answer)."""

from __future__ import annotations

from typing import Any

from flask import current_app

from ..auth import requires
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
    """200 when the configuration store and the time-series store answer; 503 names the one
    that does not."""
    checks: dict[str, str] = {}
    failed = []
    store: TimeSeriesStore = current_app.extensions["monapi.tsdb"]
    for name, ping in (("config_store", get_db().ping), ("tsdb", store.ping)):
        try:
            ping()
            checks[name] = "ok"
        except StoreUnavailable as exc:
            checks[name] = str(exc)
            failed.append(name)
    if failed:
        raise ApiError(
            503,
            f"not ready: {', '.join(failed)} not answering",
            code="not_ready",
            headers={"Retry-After": "5"},
            details=[{"location": n, "reason": checks[n]} for n in failed],
        )
    return {"status": "ready", "checks": checks}
