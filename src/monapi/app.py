"""The application factory."""

from __future__ import annotations

import inspect
import logging
import os
import secrets
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec
from flask import Flask, Response, g, request
from flask.json.provider import DefaultJSONProvider
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from flask.wrappers import Request
from flask_openapi3 import Info
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import IntegerConverter

from . import __version__, auth, cache, dashboard, db, fields, observability, ratelimit
from .api import health, influx
from .api.hotpath import HotPath
from .api.spec import MonapiOpenAPI
from .api.v1 import agent, alerts, data, enrollment, metrics, servers
from .api.v1 import fields as fields_api
from .errors import (
    ApiError,
    StoreUnavailable,
    register_error_handlers,
    request_id,
    validation_error_callback,
)
from .ingest import repeated_key
from .logs import configure_logging
from .settings import ConfigError, Settings, load_settings
from .tsdb import create_store

log = logging.getLogger("monapi")


class MsgspecJSONProvider(DefaultJSONProvider):
    """JSON through msgspec: fast, and datetimes as RFC 3339 rather than HTTP dates."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return msgspec.json.encode(obj).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        """Decode, refusing (ValueError: a 400 naming why) what JSON decoders let through:
        nesting deep enough to exhaust the stack, and a key twice in one object (decoders keep
        the last value without a word)."""
        try:
            obj = msgspec.json.decode(s)
        except RecursionError:
            raise ValueError("arrays or objects nested too deeply") from None
        if (found := repeated_key(s)) is not None:
            raise ValueError(f"{found[0]}: the key {found[1][:80]!r} appears more than once")
        return obj


class CookieFirstSessionInterface(SecureCookieSessionInterface):
    """Flask's cookie sessions, but a request without the cookie (every API call) skips building
    the signing serializer, which cost about a tenth of an agent push."""

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if not request.cookies.get(self.get_cookie_name(app)):
            return self.session_class()
        return super().open_session(app, request)


class AsciiIntegerConverter(IntegerConverter):
    """``<int:...>`` with ASCII digits only. werkzeug's regex, ``\\d+``, also matches the digits
    of other scripts, which int() reads: /servers/<ARABIC-INDIC DIGIT ONE> was server 1."""

    regex = r"[0-9]+"


def secret_from_file(path: Path) -> bytes:
    """Read a generated secret, creating it (mode 0600) the first time.

    Every gunicorn worker builds its app at the same moment, so the first start has several
    processes here at once: the secret is written whole to a file of this process's own and
    linked into place (atomic, and refused if another process's is there already), so a
    reader never sees a file that is still being written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    value = secrets.token_hex(32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(value + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return _read_secret(path)  # another process made it first: everyone uses that one
    finally:
        os.unlink(tmp)
    return value.encode()


def _read_secret(path: Path) -> bytes:
    value = path.read_text().strip()
    if len(value) < 32:
        raise ConfigError(f"{path} is shorter than 32 characters; delete it or set the secret")
    return value.encode()


def key_pepper(settings: Settings) -> bytes:
    """The API-key pepper: MONAPI_KEY_PEPPER, else a generated file in the data directory."""
    if settings.key_pepper is not None:
        value = settings.key_pepper.get_secret_value()
        if len(value) < 16:
            raise ConfigError("MONAPI_KEY_PEPPER must be at least 16 characters")
        return value.encode()
    return secret_from_file(settings.data_dir / "key_pepper")


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: defaults, then MONAPI_* environment variables, then ``config``.

    Lower-case keys of ``config`` override settings (``{"data_dir": tmp_path}``); upper-case keys
    go to Flask's ``app.config`` (``{"TESTING": True}``).
    """
    config = dict(config or {})
    flask_config = {k: v for k, v in config.items() if k.isupper()}
    settings = load_settings({k: v for k, v in config.items() if not k.isupper()})
    configure_logging(
        settings.log_level,
        settings.log_format,
        settings.log_file,
        settings.log_file_max_bytes,
        settings.log_file_backups,
    )
    settings.data_dir.mkdir(parents=True, exist_ok=True)

    app = MonapiOpenAPI(
        "monapi",
        static_folder=None,  # no /static route: the dashboard serves its own files
        info=Info(
            title="monapi",
            version=__version__,
            description="Self-hosted server-monitoring API. Every error has the shape "
            "{error, code, status, request_id, details?}.",
        ),
        security_schemes=auth.SECURITY_SCHEMES,
        doc_prefix="/api/v1",
        doc_url="/openapi.json",
        validation_error_status=422,
        validation_error_callback=validation_error_callback,
    )
    app.json = MsgspecJSONProvider(app)
    app.session_interface = CookieFirstSessionInterface()
    app.url_map.converters["int"] = AsciiIntegerConverter  # before any route is added
    secret_key = (
        settings.secret_key.get_secret_value()
        if settings.secret_key is not None
        else secret_from_file(settings.data_dir / "secret_key").decode()
    )
    app.config.update(SECRET_KEY=secret_key, MAX_CONTENT_LENGTH=settings.max_body_bytes)
    app.config.update(flask_config)
    app.extensions["monapi.settings"] = settings
    register_error_handlers(app)
    database = db.init_app(
        app,
        settings.resolved_database_url,
        settings.database_pool_size,
        settings.database_max_overflow,
    )
    _check_schema(database)
    cache.init_app(
        app,
        cache.create_coordinator(
            database,
            settings.redis_url,
            settings.redis_prefix,
            settings.last_seen_flush,
            fallback=settings.rate_limit_fallback,
        ),
    )
    fields.init_app(app)
    ratelimit.init_app(app, settings)  # before authentication: failed attempts count too
    auth.init_app(app, key_pepper(settings))
    ratelimit.install_key_limit(app, settings)
    try:
        app.extensions["monapi.tsdb"] = store = create_store(settings)
    except StoreUnavailable as exc:
        raise ConfigError(str(exc)) from None
    telemetry = observability.init_app(app, settings, store.name)

    for bp in (
        health.bp,
        servers.bp,
        servers.legacy,
        fields_api.bp,
        enrollment.bp,
        data.bp,
        metrics.bp,
        agent.bp,
        alerts.bp,
        influx.bp,
    ):
        app.register_api(bp)
    auth.check_rules_cover(app, public=set())
    dashboard.init_app(app, settings)
    _refuse_json_string_bodies(app)
    answered = _install_request_logging(app, telemetry if settings.metrics_enabled else None)
    app.wsgi_app = HotPath(  # type: ignore[method-assign]
        app, app.wsgi_app, data.ingest_body, answered
    )
    if settings.proxy_hops:
        # Trust X-Forwarded-For/-Proto/-Host from this many reverse proxies: the client address
        # (rate limits, logs) is then the one the proxy saw.
        n = settings.proxy_hops
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=n, x_proto=n, x_host=n
        )
    if settings.database_url and settings.key_pepper is None:
        log.warning(
            "MONAPI_KEY_PEPPER is not set: using %s/key_pepper; instances that share the "
            "database must share the pepper",
            settings.data_dir,
        )
    return app


def _check_schema(database: db.Database) -> None:
    current, head = database.current_revision(), database.head_revision()
    if current != head:
        raise ConfigError(
            f"the configuration store is at schema {current or 'none'}, this monapi needs {head}: "
            "run 'monapi db upgrade' (or 'monapi serve', which does it)"
        )


def _refuse_json_string_bodies(app: Flask) -> None:
    """Every request body of this API is a JSON object. flask-openapi3 decodes a body that is a
    JSON *string* a second time, as JSON, so '"{\\"hostname\\": ...}"' would pass: refuse it."""
    with_body_model = frozenset(
        endpoint
        for endpoint, view in app.view_functions.items()
        if "body" in inspect.signature(view).parameters
    )

    @app.before_request
    def _json_string_body() -> None:
        if (
            request.endpoint in with_body_model
            and request.is_json
            and isinstance(request.get_json(silent=True), str)
        ):
            raise ApiError(
                422,
                "invalid request: body: the body must be a JSON object, not a string",
                details=[{"location": "body", "reason": "Input should be an object"}],
            )


_access = logging.getLogger("monapi.access")


def log_access(method: str, path: str, status: int, rid: Callable[[], str], t0: float) -> None:
    """The access log line of a request (5xx WARNING, 4xx INFO, else DEBUG)."""
    level = logging.WARNING if status >= 500 else logging.INFO if status >= 400 else logging.DEBUG
    if _access.isEnabledFor(level):
        _access.log(
            level,
            "%s %s %d",
            method,
            path,
            status,
            extra={"request_id": rid(), "duration_ms": round((time.perf_counter() - t0) * 1000, 2)},
        )


Answered = Callable[[str, str, int, Callable[[], str], float], None]


def _install_request_logging(app: Flask, telemetry: observability.Telemetry | None) -> Answered:
    """Log and count every answer Flask gives; returns the same for the hot path's 204s
    (whose path is its route)."""

    def _start() -> None:
        g.t0 = time.perf_counter()
        request_id()  # now, so that every line logged for the request carries it

    # First of all hooks: one that refuses the request (a rate limit, a key) ends it early, and
    # its access line still needs the start time.
    app.before_request_funcs.setdefault(None, []).insert(0, _start)

    @app.after_request
    def _log(resp: Response) -> Response:
        t0 = g.get("t0", 0)
        log_access(request.method, request.path, resp.status_code, request_id, t0)
        if telemetry is not None:
            rule = request.url_rule
            route = rule.rule if rule is not None else observability.UNMATCHED
            telemetry.request(request.method, route, resp.status_code, time.perf_counter() - t0)
        return resp

    if telemetry is None:
        return log_access

    def answered(method: str, path: str, status: int, rid: Callable[[], str], t0: float) -> None:
        log_access(method, path, status, rid, t0)
        telemetry.request(method, path, status, time.perf_counter() - t0)

    return answered


def shutdown(app: Flask) -> None:
    """Stop the alert runner, write what is buffered and close every store of the app (worker
    exit, tests)."""
    from .alerting import runner

    runner.stop(app)
    app.extensions["monapi.cache"].close()
    app.extensions["monapi.tsdb"].close()
    app.extensions["monapi.telemetry"].close()
    app.extensions["monapi.db"].dispose()
