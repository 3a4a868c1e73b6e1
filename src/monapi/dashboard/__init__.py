"""The web dashboard: server-rendered pages (Jinja + htmx), charts drawn by uPlot.

Every asset is served from this package (``static/vendor`` holds htmx and uPlot, pinned, with
their licences): the dashboard works with no internet access.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

from flask import Blueprint, Flask, render_template, request
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from .. import __version__
from ..db import get_db, store_unavailable
from ..errors import ApiError, StoreUnavailable, request_id
from ..logs import redact
from ..settings import Settings
from . import charts
from .session import CsrfError, check_csrf, csrf_token, current_user

log = logging.getLogger("monapi.dashboard")
bp = Blueprint(
    "dashboard",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/assets",
)
# Endpoints that may be seen without signing in; every other dashboard view must be decorated
# with @login_required (checked at start-up, like the API's scopes).
PUBLIC = frozenset({"dashboard.login", "dashboard.static"})
# No inline script anywhere: every script is a file of this package.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'; object-src 'none'"
)


@bp.before_request
def _csrf() -> None:
    check_csrf()


@bp.after_request
def _headers(resp: Response) -> Response:
    resp.headers["Content-Security-Policy"] = CSP
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["Referrer-Policy"] = "same-origin"
    if request.endpoint == "dashboard.static":
        resp.headers["Cache-Control"] = "public, max-age=3600"
    else:
        resp.headers["Cache-Control"] = "no-store"
        resp.headers["Vary"] = "Cookie, HX-Request"
    return resp


def _error_page(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    html = render_template(
        "error.html", status=status, message=redact(message), request_id=request_id()
    )
    return Response(html, status, headers=headers, mimetype="text/html")


@bp.errorhandler(CsrfError)
def _csrf_error(exc: CsrfError) -> Response:
    return _error_page(400, f"{exc}. Reload the page and try again.")


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError) -> Response:
    return _error_page(exc.status, exc.message, exc.headers)


@bp.errorhandler(StoreUnavailable)
def _unavailable(exc: StoreUnavailable) -> Response:
    return _error_page(503, str(exc), {"Retry-After": str(exc.retry_after)})


@bp.errorhandler(HTTPException)
def _http(exc: HTTPException) -> Response:
    status = exc.code or 500
    message = "page not found" if status == 404 else str(exc.description or exc.name)
    return _error_page(status, message)


@bp.errorhandler(Exception)
def _unexpected(exc: Exception) -> Response:
    # This handler wins over the app's for the blueprint's pages: the configuration store not
    # answering is a 503 here too, not a 500.
    if isinstance(exc, get_db().unavailable_errors):
        return _unavailable(store_unavailable(exc))
    log.exception(
        "unhandled error on %s %s", request.method, request.path, extra={"request_id": request_id()}
    )
    return _error_page(500, "internal error; the request id is in the server log")


@bp.app_template_filter("value")
def _value_filter(value: Any, unit: str = "") -> str:
    return charts.fmt_value(value, unit)


@bp.app_template_filter("ago")
def _ago_filter(ts: float | None) -> str:
    return charts.fmt_ago(None if ts is None else time.time() - ts)


@bp.app_template_filter("utc")
def _utc_filter(value: Any) -> str:
    if value is None:
        return "\u2013"  # en dash
    if isinstance(value, int | float):
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(value))
    return str(value.strftime("%Y-%m-%d %H:%M:%S UTC"))


@bp.app_context_processor
def _globals() -> dict[str, Any]:
    return {"csrf_token": csrf_token, "current_user": current_user}


def init_app(app: Flask, settings: Settings) -> None:
    """Serve the dashboard at ``/`` with its session cookie settings."""
    from . import alerts, auth_views, enrollment, fields, overview, servers  # noqa: F401 (routes)

    app.config.update(
        SESSION_COOKIE_NAME="monapi_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.cookie_secure,
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=settings.session_lifetime),
    )
    app.register_blueprint(bp)
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith("dashboard.") or rule.endpoint in PUBLIC:
            continue
        view = app.view_functions[rule.endpoint]
        if not getattr(view, "login_required", False):
            raise RuntimeError(f"dashboard endpoint {rule.endpoint} is not behind login_required")
    app.jinja_env.globals["static_version"] = __version__  # cache-busting query of assets


def htmx() -> bool:
    """Whether this request came from htmx (answer with the fragment only)."""
    return request.headers.get("HX-Request") == "true" and not request.headers.get(
        "HX-History-Restore-Request"
    )
