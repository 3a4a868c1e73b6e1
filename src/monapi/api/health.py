"""/healthz (the process is alive), /readyz (its stores answer) and /metrics (monapi's own
metrics, for Prometheus)."""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, request

from ..auth import requires
from ..cache import get_coordinator
from ..db import get_db
from ..errors import ApiError, StoreUnavailable
from ..observability import CONTENT_TYPE, get_telemetry, token_matches
from ..schemas import Health
from ..settings import Settings
from ..tsdb import TimeSeriesStore
from .common import blueprint, errors

bp = blueprint("health", "Liveness, readiness and monapi's own metrics", prefix="", secured=False)
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


_EXPOSITION = {
    "description": "every metric of every worker, in the Prometheus text format (0.0.4)",
    "content": {CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}},
}


@bp.get("/metrics", responses={200: _EXPOSITION, **errors(401, 404)})
@requires(BP)
def metrics() -> Response:
    """monapi's own metrics for Prometheus: requests, points accepted and rejected, writes to
    the time-series store, servers by status. With MONAPI_METRICS_TOKEN set, the caller must
    send it as ``Authorization: Bearer TOKEN``; MONAPI_METRICS_ENABLED=false turns it off."""
    settings: Settings = current_app.extensions["monapi.settings"]
    if not settings.metrics_enabled:
        raise ApiError(404, "/metrics is turned off (MONAPI_METRICS_ENABLED=false)")
    if settings.metrics_token is not None:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise _metrics_unauthorized("/metrics needs MONAPI_METRICS_TOKEN as a bearer token")
        if not token_matches(given.strip(), settings.metrics_token.get_secret_value()):
            raise _metrics_unauthorized("wrong /metrics token")
    return Response(get_telemetry().exposition(), mimetype=None, content_type=CONTENT_TYPE)


def _metrics_unauthorized(message: str) -> ApiError:
    return ApiError(401, message, headers={"WWW-Authenticate": 'Bearer realm="monapi metrics"'})
