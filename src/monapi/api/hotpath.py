"""The hot path: ``POST /api/v1/data`` with a server key, without Flask's request machinery.

An agent push is small, and Flask's per-request work (request context, URL matching, session,
hooks, the response object) cost about a third of the CPU monapi spent on it (py-spy, InfluxDB
backend, 64 agents). This WSGI middleware, in front of the Flask app, takes the requests it
can answer exactly as Flask would and runs the very same ingestion code
(:func:`monapi.api.v1.data.ingest_body`) in an app context:

* it takes only ``POST /api/v1/data`` with ``Content-Type: application/json``, a
  ``Content-Length`` within ``MAX_CONTENT_LENGTH`` and a server key in ``Authorization: Bearer``
  or ``X-API-Key`` that is valid, of an enabled server, and within its rate limit; anything else
  goes to Flask untouched, before this module did anything but look the key up;
* it answers a 204 itself (the headers Flask gives it, the same access log line);
* every other outcome (a 200 partial write, a 4xx for the body, a 503 from the store, any
  exception) goes to Flask with the outcome in the WSGI environ: Flask runs its usual hooks (the
  key is not checked or counted again) and the view turns the outcome into the response, so
  every error answer comes from the one place that makes them, and nothing is stored twice.

Being the app's outermost layer, it also holds every request body to what the client announced,
where gunicorn and werkzeug would not: a body that ends before its Content-Length is a 400
(:class:`_Announced`), and a chunked body is read here up to the limit, so that one over it is a
413 rather than silently cut (:meth:`HotPath._bound_streamed_body`).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from flask import Flask, g

from ..auth import AUTH_ERROR_ENVIRON, PRINCIPAL_ENVIRON, SERVER, Principal, get_keys, key_from
from ..errors import REQUEST_ID_ENVIRON, REQUEST_ID_HEADER, ApiError, request_id_for
from ..ratelimit import KEY_WAIT_ENVIRON, key_hit
from ..settings import Settings

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

PATH = "/api/v1/data"
# WSGI environ key: what ingest_body answered or raised, for the view to turn into a response.
OUTCOME_ENVIRON = "monapi.ingest_outcome"
_NO_CONTENT = "204 NO CONTENT"
_CONTENT_TYPE = ("Content-Type", "text/html; charset=utf-8")  # what Flask sends with a 204
_NOSNIFF = ("X-Content-Type-Options", "nosniff")  # as errors.py stamps on every answer


class _Announced:
    """``wsgi.input`` held to the request's Content-Length. gunicorn hands out what came when
    the client stops sending early, and werkzeug, trusting a server that ends the stream
    (``wsgi.input_terminated``), reads that as the whole body: an incomplete request (a valid
    prefix of it) would be stored. Here, the end of the stream before the announced length
    is a 400 that says so."""

    __slots__ = ("_got", "_length", "_stream")

    def __init__(self, stream: Any, length: int) -> None:
        self._stream = stream
        self._length = length
        self._got = 0

    def read(self, size: int | None = -1) -> bytes:
        data: bytes = self._stream.read(size)
        self._got += len(data)
        if self._got < self._length and (not data or size is None or size < 0) and size != 0:
            raise ApiError(
                400,
                f"the request body ended after {self._got} of the {self._length} bytes its"
                " Content-Length announced",
                code="incomplete_body",
            )
        return data


class Outcome:
    """What :func:`ingest_body` gave: a value to return (None: 204) or an exception to
    raise."""

    __slots__ = ("error", "value")

    def __init__(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value = value
        self.error = error

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


class HotPath:
    """WSGI middleware; see the module docstring."""

    def __init__(
        self,
        app: Flask,
        wsgi_app: WSGIApplication,
        ingest_body: Callable[[bytes, str | None], Any | None],
        log_access: Callable[[str, str, int, Callable[[], str], float], None],
    ) -> None:
        self.app = app
        self.next = wsgi_app
        self.ingest_body = ingest_body
        self.log_access = log_access
        settings: Settings = app.extensions["monapi.settings"]
        self.key_limit = settings.rate_limit_server
        self.max_length: int | None = app.config.get("MAX_CONTENT_LENGTH")

    def _principal(self, key: str, environ: WSGIEnvironment) -> Principal | None:
        """The caller, when its key is a valid server key of an enabled server within its rate
        limit; else None (Flask then answers, in its own words)."""
        try:
            record = get_keys().authenticate(key)
        except Exception as exc:  # ApiError, or a store that does not answer: Flask says it
            environ[AUTH_ERROR_ENVIRON] = exc  # in JSON, without asking the store again
            return None
        if record.kind != SERVER or not record.server_enabled:
            return None
        principal = Principal(record.kind, record.id, record.server_id, record.hostname)
        if self.key_limit[0] > 0:
            try:
                wait = key_hit(record.id, self.key_limit)
            except Exception:  # nothing was counted (Redis away, fallback closed): Flask says it
                return None
            environ[KEY_WAIT_ENVIRON] = wait  # counted once, here
            if wait > 0:
                environ[PRINCIPAL_ENVIRON] = principal
                return None
        return principal

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("wsgi.input_terminated"):  # gunicorn: see _Announced
            length = environ.get("CONTENT_LENGTH") or ""
            if length.isascii() and length.isdigit():
                environ["wsgi.input"] = _Announced(environ["wsgi.input"], int(length))
            elif "HTTP_TRANSFER_ENCODING" in environ:
                self._bound_streamed_body(environ)
        if environ.get("PATH_INFO") != PATH or environ.get("REQUEST_METHOD") != "POST":
            return self.next(environ, start_response)
        return self._ingest(environ, start_response)

    def _bound_streamed_body(self, environ: WSGIEnvironment) -> None:
        """A body without Content-Length (chunked), read here up to one byte over
        ``MAX_CONTENT_LENGTH`` and handed on with its length: werkzeug reads such a body only
        up to the limit and returns what it read without a word (a cut JSON body, or the first
        lines of a line-protocol body stored), where a body over the limit must be a 413. Over
        it, the Content-Length given makes Flask answer that 413 without reading."""
        if self.max_length is None:
            return
        data = environ["wsgi.input"].read(self.max_length + 1)
        environ["wsgi.input"] = io.BytesIO(data)
        environ["CONTENT_LENGTH"] = str(len(data))
        del environ["HTTP_TRANSFER_ENCODING"]  # else werkzeug ignores the length

    def _ingest(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        t0 = time.perf_counter()
        length = environ.get("CONTENT_LENGTH") or ""
        key = key_from(environ.get("HTTP_AUTHORIZATION", ""), environ.get("HTTP_X_API_KEY", ""))
        if (
            key is None
            or not (length.isascii() and length.isdigit())  # "²".isdigit(), but int() refuses it
            or (self.max_length is not None and int(length) > self.max_length)
            or "HTTP_TRANSFER_ENCODING" in environ
            or (environ.get("CONTENT_TYPE") or "").partition(";")[0].strip().lower()
            != "application/json"
        ):
            return self.next(environ, start_response)
        outcome: Outcome | None = None
        rid = environ[REQUEST_ID_ENVIRON] = request_id_for(environ.get("HTTP_X_REQUEST_ID", ""))
        with self.app.app_context():
            g.request_id = rid  # for the log lines of what follows
            principal = self._principal(key, environ)
            if principal is not None:
                try:
                    raw = environ["wsgi.input"].read(int(length))
                except ApiError:
                    raw = b""
                if len(raw) < int(length):  # the client sent less than it announced: Flask
                    environ["wsgi.input"] = _Announced(io.BytesIO(raw), int(length))  # says so
                    principal = None
            if principal is not None:
                g.principal = principal
                try:
                    outcome = Outcome(self.ingest_body(raw, environ.get("HTTP_CONTENT_ENCODING")))
                except Exception as exc:  # the view raises it again, inside Flask
                    outcome = Outcome(error=exc)
        if outcome is None:  # Flask answers (and pushes its own contexts, as always)
            return self.next(environ, start_response)
        if outcome.value is None and outcome.error is None:  # 204: every point stored
            start_response(_NO_CONTENT, [_CONTENT_TYPE, _NOSNIFF, (REQUEST_ID_HEADER, rid)])
            self.log_access("POST", PATH, 204, lambda: rid, t0)
            return []
        environ["wsgi.input"] = io.BytesIO(raw)
        environ[PRINCIPAL_ENVIRON] = principal
        environ[OUTCOME_ENVIRON] = outcome
        return self.next(environ, start_response)
