"""Rate limits: per client address for registration, per server key for everything a server key
may call. Counted in Redis when it is configured (every worker and instance share the limit),
else per process. A refused request gets 429 with ``Retry-After``.

The address limit is checked before the key is, so guessing tokens is limited too.
"""

from __future__ import annotations

import math

from flask import Flask, g, request

from .auth import SERVER
from .cache import get_coordinator
from .errors import ApiError
from .settings import Settings

# WSGI environ key: the wait api/hotpath.py got when it counted the request against its key.
KEY_WAIT_ENVIRON = "monapi.key_wait"
# Endpoints that create servers: limited per client address.
REGISTRATION_ENDPOINTS = frozenset({"servers.create_server", "legacy.register_server"})


def _refuse(what: str, limit: tuple[int, float], wait: float) -> ApiError:
    seconds = max(1, math.ceil(wait))
    count, period = limit
    return ApiError(
        429,
        f"too many requests {what}: the limit is {count} per {period:g} s; retry in {seconds} s",
        code="rate_limited",
        headers={"Retry-After": str(seconds)},
    )


def key_hit(key_id: str, limit: tuple[int, float]) -> float:
    """Count a request of a server key: 0, or the seconds it must wait (429)."""
    return get_coordinator().hit(f"key:{key_id}", *limit)


def init_app(app: Flask, settings: Settings) -> None:
    """Install the address limit; call :func:`install_key_limit` after authentication."""
    register_limit = settings.rate_limit_register

    @app.before_request
    def _limit_registration() -> None:
        if register_limit[0] <= 0 or request.endpoint not in REGISTRATION_ENDPOINTS:
            return
        address = request.remote_addr or "unknown"
        wait = get_coordinator().hit(f"reg:{address}", *register_limit)
        if wait > 0:
            raise _refuse(f"from {address} to register servers", register_limit, wait)


def install_key_limit(app: Flask, settings: Settings) -> None:
    """Limit each server key; runs after the key was checked (g.principal is set)."""
    key_limit = settings.rate_limit_server

    @app.before_request
    def _limit_server_key() -> None:
        if key_limit[0] <= 0:
            return
        principal = g.get("principal")
        if principal is None or principal.kind != SERVER:
            return
        wait = request.environ.get(KEY_WAIT_ENVIRON)  # counted by api/hotpath.py already
        if wait is None:
            wait = key_hit(principal.key_id, key_limit)
        if wait > 0:
            raise _refuse(f"with server key {principal.key_id}", key_limit, wait)
