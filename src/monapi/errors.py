"""One JSON error shape for every route, built in one place.

Shape (documented in the README and the OpenAPI spec as ``Error``)::

    {"error": "server 12 not found", "code": "not_found", "status": 404,
     "request_id": "5f0c...", "details": [...]}

``error`` is a plain string so that InfluxDB clients, which read ``{"error": "..."}``, understand
it too. ``details`` is present only when there is something more specific to say.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import secrets
import threading
import time
from typing import Any

from flask import Flask, Response, current_app, g, jsonify, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as ResponseBase

from .logs import redact

log = logging.getLogger("monapi.http")

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_failed",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._\-]{1,128}$")
REQUEST_ID_HEADER = "X-Request-ID"


class ApiError(Exception):
    """An error a view or service raises; rendered as the one JSON error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or _CODES.get(status, "error")
        self.details = details
        self.headers = headers or {}
        self.extra = extra or {}


class StoreUnavailable(Exception):
    """A backing store did not answer (down, timed out, locked); the API answers 503."""

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# While a store is away every request fails the same way: its reason is logged once per
# UNAVAILABLE_LOG_EVERY_S per process (with how many were not), the access log has each request.
UNAVAILABLE_LOG_EVERY_S = 10.0
_unavailable_logged: dict[str, tuple[float, int]] = {}  # reason -> (logged at, not logged since)
_unavailable_lock = threading.Lock()


def warn_unavailable(logger: logging.Logger, fmt: str, reason: str) -> None:
    """Log that a store did not answer, at most once per UNAVAILABLE_LOG_EVERY_S per reason."""
    now = time.monotonic()
    with _unavailable_lock:
        logged_at, skipped = _unavailable_logged.get(reason, (-UNAVAILABLE_LOG_EVERY_S, 0))
        if now - logged_at < UNAVAILABLE_LOG_EVERY_S:
            _unavailable_logged[reason] = (logged_at, skipped + 1)
            return
        if len(_unavailable_logged) > 1000:
            _unavailable_logged.clear()
        _unavailable_logged[reason] = (now, 0)
    more = f" ({skipped} more in the last {now - logged_at:.0f} s)" if skipped else ""
    logger.warning(fmt + "%s", reason, more, extra={"request_id": request_id()})


class StoreRejected(Exception):
    """A backing store refused data for a reason tied to the data; the API answers 400."""


_rid_state: tuple[int, str, itertools.count[int]] = (0, "", itertools.count())


def _new_request_id() -> str:
    """32 hex characters: a random prefix per process and a counter. Unique without asking the
    kernel for randomness on every request (uuid4 did, at a few percent of an agent push)."""
    global _rid_state
    pid, prefix, counter = _rid_state
    if pid != os.getpid():  # a new process (gunicorn forks): new prefix, new counter
        _rid_state = pid, prefix, counter = os.getpid(), secrets.token_hex(8), itertools.count()
    return f"{prefix}{next(counter):016x}"


# WSGI environ key: the id the hot path gave a request it then handed to Flask.
REQUEST_ID_ENVIRON = "monapi.request_id"


def request_id() -> str:
    """The id of the current request (taken from X-Request-ID when sane, else generated)."""
    rid = getattr(g, "request_id", None)
    if rid is None:
        rid = request.environ.get(REQUEST_ID_ENVIRON) or request_id_for(
            request.headers.get(REQUEST_ID_HEADER, "")
        )
        g.request_id = rid
    return str(rid)


def request_id_for(incoming: str) -> str:
    """The client's X-Request-ID when it is sane, else a new id."""
    return incoming if _REQUEST_ID_RE.match(incoming) else _new_request_id()


def error_response(
    status: int,
    message: str,
    *,
    code: str | None = None,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Response:
    """Build the JSON error response; every error path of the app goes through here. The
    credentials of a URL in the message or details (a store's address) are never shown."""
    body: dict[str, Any] = {
        "error": redact(message),
        "code": code or _CODES.get(status, "error"),
        "status": status,
        "request_id": request_id(),
    }
    if details:
        body["details"] = [
            {k: redact(v) if isinstance(v, str) else v for k, v in d.items()} for d in details
        ]
    if extra:
        body.update(extra)
    resp = jsonify(body)
    resp.status_code = status
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def _http_message(exc: HTTPException) -> str:
    if exc.code == 404:
        return f"no such endpoint: {request.method} {request.path}"
    if exc.code == 405:
        return f"method {request.method} is not allowed on {request.path}"
    if exc.code == 413:
        return "request body too large"
    return str(exc.description or exc.name)


def _pydantic_details(exc: ValidationError) -> list[dict[str, Any]]:
    details = []
    for err in exc.errors(include_url=False, include_context=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"])
        details.append({"location": loc, "reason": err["msg"]})
    return details


def _json_problem(data: bytes) -> str | None:
    """Why ``data`` does not parse as JSON (with where, as the decoder says), or None if it
    does (``null`` included, which get_json cannot tell apart)."""
    try:
        current_app.json.loads(data)
    except UnicodeDecodeError:  # its position is within the string the decoder was reading
        try:
            data.decode()
        except UnicodeDecodeError as whole:
            return f"invalid UTF-8 at byte {whole.start}"
        return "invalid UTF-8"
    except ValueError as exc:
        return str(exc) or type(exc).__name__
    except RecursionError:
        return "arrays or objects nested too deeply"
    return None


def validation_error_callback(exc: ValidationError) -> Response:
    """flask-openapi3 hook: request validation failures in the shared error shape."""
    if request.method in ("POST", "PUT", "PATCH") and request.content_length:
        mimetype = request.mimetype or ""
        if mimetype != "application/json" and not mimetype.endswith("+json"):
            return error_response(
                415, f"expected Content-Type: application/json, got {mimetype or 'none'!r}"
            )
        problem = _json_problem(request.get_data(cache=True))
        if problem is not None:
            return error_response(
                400, f"request body is not valid JSON: {problem}", code="invalid_json"
            )
    details = _pydantic_details(exc)
    where = details[0]["location"] if details else "request"
    return error_response(
        422,
        f"invalid request: {where}: {details[0]['reason']}" if details else "invalid request",
        details=details,
    )


def register_error_handlers(app: Flask) -> None:
    """Route every exception to the one error shape and stamp the request id on every reply."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return error_response(
            exc.status,
            exc.message,
            code=exc.code,
            details=exc.details,
            headers=exc.headers,
            extra=exc.extra,
        )

    @app.errorhandler(StoreUnavailable)
    def _unavailable(exc: StoreUnavailable) -> Response:
        warn_unavailable(log, "store unavailable: %s", str(exc))
        return error_response(
            503, str(exc), code="store_unavailable", headers={"Retry-After": str(exc.retry_after)}
        )

    @app.errorhandler(StoreRejected)
    def _rejected(exc: StoreRejected) -> Response:
        return error_response(400, str(exc), code="store_rejected")

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> ResponseBase:
        resp = exc.get_response()
        if exc.response is not None and resp.mimetype == "application/json":
            return resp  # already in our shape (flask-openapi3 validation callback)
        status = exc.code or 500
        headers = {}
        if status == 405 and "Allow" in resp.headers:
            headers["Allow"] = resp.headers["Allow"]
        if "Retry-After" in resp.headers:
            headers["Retry-After"] = resp.headers["Retry-After"]
        return error_response(status, _http_message(exc), headers=headers)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception(
            "unhandled error on %s %s",
            request.method,
            request.path,
            extra={"request_id": request_id()},
        )
        return error_response(500, "internal error; the request id is in the server log")

    @app.after_request
    def _stamp(resp: Response) -> Response:
        resp.headers[REQUEST_ID_HEADER] = request_id()
        # No browser may read an answer as something other than its Content-Type (a JSON body
        # that echoes a value as HTML), nor frame an HTML one (the API documentation).
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        if resp.mimetype == "text/html":
            resp.headers.setdefault("X-Frame-Options", "DENY")
        return resp
