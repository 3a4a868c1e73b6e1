"""InfluxDB-compatible endpoints, so that Telegraf and InfluxDB client libraries push unchanged.

* ``POST /write`` (InfluxDB 1.x) and ``POST /api/v2/write`` (InfluxDB 2.x): line protocol,
  optionally gzip-compressed. Each line goes through the same validator as ``/api/v1/data``
  (field configuration, unknown-field setting, timestamp window) and is stored as the calling
  server's: ``host`` and ``server_id`` tags in a line are replaced by the key's identity. On
  InfluxDB a plainly valid bulk body takes a whole-batch fast path (:mod:`monapi.fastpath`)
  that stores the same points; anything else, and every error, goes line by line.
* ``GET``/``HEAD /ping``: 204 with ``X-Influxdb-Version``, as clients check at start-up.
* ``GET``/``POST /query``: ``CREATE DATABASE`` (Telegraf sends it at start-up) and
  ``SHOW DATABASES``, answered the way InfluxDB does; nothing else.

The database, retention policy, bucket and organisation named by a client are accepted and
ignored: the data goes to monapi's time-series store, under the server the key belongs to.

Errors follow InfluxDB, whose clients react to the status and read ``{"error": "..."}``: a line
that does not parse gives 400 ``unable to parse '<line>': <reason>``; when some lines are
refused the others are stored and the answer is 400 ``partial write: <reason> dropped=<n>``
(clients do not retry a 400); a body over the limit gives 413 (Telegraf then splits its batch);
a time-series store that does not answer gives 503 with ``Retry-After`` (clients retry).
"""

from __future__ import annotations

import re
import time
from typing import Any

from flask import Response, current_app, jsonify, request

from .. import __version__
from ..auth import ADMIN, INFLUX_CREDENTIALS, SERVER, requires
from ..errors import ApiError
from ..fastpath import line_protocol
from ..ingest import ValidationResult, Validator, read_body
from ..lpparse import LineError, ParsedLine, parse
from ..observability import INVALID_LINE, get_telemetry
from ..schemas import InfluxQueryResult
from ..settings import Settings
from ..tsdb import Point
from .common import blueprint, errors
from .spec import raw_request_body
from .v1.data import store_encoded, store_points

# The InfluxDB API version monapi answers as (1.8 is the last 1.x with /api/v2/write).
INFLUX_VERSION = "1.8.10"
VERSION_HEADERS = {
    "X-Influxdb-Version": INFLUX_VERSION,
    "X-Influxdb-Build": "OSS",
    "X-Monapi-Version": __version__,
}
# Nanoseconds per unit of each precision the two write APIs accept.
V1_PRECISIONS = {
    "n": 1,
    "ns": 1,
    "u": 1_000,
    "us": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
V2_PRECISIONS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
# How many reasons the error message spells out; details lists up to ingest.MAX_ERRORS.
MESSAGE_REASONS = 3
SECURITY: list[dict[str, list[str]]] = [
    {"bearer": []},
    {"basic": []},
    {"influxPassword": []},
    {"apiKey": []},
]

bp = blueprint(
    "influxdb",
    "InfluxDB-compatible line protocol ingestion (Telegraf, InfluxDB client libraries). The "
    "server key is accepted as 'Authorization: Token <key>' or 'Bearer <key>', as the Basic-auth "
    "password (any user name), as the 'p' query parameter, or as X-API-Key.",
    prefix="",
    secured=False,
)
BP = bp.name


@bp.after_request
def _influx_reply(resp: Response) -> Response:
    resp.headers.update(VERSION_HEADERS)
    if request.path.startswith("/api/v2/") and resp.status_code >= 400 and resp.is_json:
        # InfluxDB 2.x clients read an error's text from "message".
        body = resp.get_json(silent=True)
        if isinstance(body, dict) and "error" in body and "message" not in body:
            body["message"] = body["error"]
            resp.set_data(current_app.json.dumps(body))
    return resp


def _param(
    name: str,
    description: str,
    enum: list[str] | None = None,
    *,
    pattern: str | None = None,
    required: bool = False,
) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if enum:
        schema["enum"] = enum
    if pattern:
        schema["pattern"] = pattern
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema,
    }


_LP_BODY = {
    "required": False,
    "description": "InfluxDB line protocol, one point per line, optionally gzip-compressed "
    "(Content-Encoding: gzip). Example: 'cpu,cpu=cpu0 usage_user=1.5,usage_system=0.5 "
    "1700000000000000000'.",
    "content": {"text/plain": {"schema": {"type": "string"}}},
}
_WRITE_RESPONSES = {204: None, **errors(400, 401, 403, 413, 415, 429, 503)}


def _write_doc(path: str, params: list[dict[str, Any]]) -> dict[str, Any]:
    doc = raw_request_body(path, "post", _LP_BODY)
    return {**doc, "parameters": params}


@bp.post(
    "/write",
    responses=_WRITE_RESPONSES,
    security=SECURITY,
    openapi_extensions=_write_doc(
        "/write",
        [
            _param("db", "InfluxDB database: accepted and ignored"),
            _param("rp", "retention policy: accepted and ignored"),
            _param("precision", "unit of the timestamps (empty: n)", ["", *V1_PRECISIONS]),
            _param("u", "user name: accepted and ignored"),
            _param("p", "password: the server key"),
        ],
    ),
)
@requires(BP, SERVER, credentials=INFLUX_CREDENTIALS)
def write_v1() -> Response:
    """Write line protocol (InfluxDB 1.x API). 204: every line stored; 400 partial write: the
    valid lines stored, the others listed."""
    return _write(V1_PRECISIONS, "n", v2=False)


@bp.post(
    "/api/v2/write",
    responses=_WRITE_RESPONSES,
    security=SECURITY,
    openapi_extensions=_write_doc(
        "/api/v2/write",
        [
            _param("bucket", "InfluxDB bucket: accepted and ignored"),
            _param("org", "organisation: accepted and ignored"),
            _param("orgID", "organisation id: accepted and ignored"),
            _param("precision", "unit of the timestamps (empty: ns)", ["", *V2_PRECISIONS]),
        ],
    ),
)
@requires(BP, SERVER, credentials=INFLUX_CREDENTIALS)
def write_v2() -> Response:
    """Write line protocol (InfluxDB 2.x API). 204: every line stored; 400 partial write: the
    valid lines stored, the others listed. Errors also carry ``message`` (what v2 clients
    read)."""
    return _write(V2_PRECISIONS, "ns", v2=True)


def _write(precisions: dict[str, int], default: str, *, v2: bool) -> Response:
    settings: Settings = current_app.extensions["monapi.settings"]
    precision = request.args.get("precision", "") or default
    unit = precisions.get(precision)
    if unit is None:
        raise ApiError(
            400,
            f"invalid precision {precision[:20]!r}: use one of {', '.join(precisions)}",
            code="invalid_precision",
        )
    body = read_body(
        request.get_data(cache=False),
        request.headers.get("Content-Encoding"),
        settings.max_decompressed_bytes,
    )
    now_ns = time.time_ns()
    default_ts = now_ns - now_ns % unit  # a point without a timestamp: now, in the precision
    max_points = settings.max_points_per_request
    fast = store_encoded(
        settings,
        lambda cfg, validator, ident: line_protocol(
            body, unit, default_ts, cfg, validator, ident, max_points
        ),
        lambda validator: _exact_points(validator, body, unit, default_ts),
        replace_identity=True,
        now_ns=now_ns,
    )
    if fast is not None:
        if fast.error_count == 0:
            return Response(status=204)
        raise _refusal(parse(body)[0], [], fast)  # InfluxDB refused some (the lines are valid)
    lines, bad = parse(body)
    if len(lines) + len(bad) > settings.max_points_per_request:
        raise ApiError(
            413,
            f"{len(lines) + len(bad)} lines in one request; the limit is "
            f"{settings.max_points_per_request}",
        )
    if not lines and not bad:
        if v2:
            raise ApiError(400, "writing requires points", code="empty_body")
        return Response(status=204)  # InfluxDB 1.x answers an empty write the same way
    _scale(lines, unit, default_ts)
    res = store_points(lines, settings, replace_identity=True, now_ns=now_ns) if lines else None
    if not bad and (res is None or (res.error_count == 0)):
        return Response(status=204)
    raise _refusal(lines, bad, res)


def _scale(lines: list[ParsedLine], unit: int, default_ts: int) -> None:
    """Timestamps in nanoseconds: the given one times the precision's unit, or the default."""
    for p in lines:
        p.timestamp = default_ts if p.timestamp is None else p.timestamp * unit


def _exact_points(validator: Validator, body: bytes, unit: int, default_ts: int) -> list[Point]:
    """The points the exact path stores for a body that the fast path took (all its lines)."""
    lines, bad = parse(body)
    _scale(lines, unit, default_ts)
    res = validator.validate(lines)
    if bad or res.error_count or res.dropped:
        raise RuntimeError("the exact path refused lines of a body the fast path took")
    return list(res.points)


def _refusal(
    lines: list[ParsedLine], bad: list[LineError], res: ValidationResult | None
) -> ApiError:
    """The 400 for a write where some lines were refused, in InfluxDB's words."""
    if bad:
        get_telemetry().refused(INVALID_LINE, len(bad))
    unparsed = [f"unable to parse '{e.line}': {e.reason}" for e in bad]
    details: list[dict[str, Any]] = [
        {"line": e.lineno, "field": None, "reason": f"unable to parse: {e.reason}"} for e in bad
    ]
    refused: list[str] = []
    stored = rejected = 0
    if res is not None:
        stored, rejected = len(res.points), res.rejected
        for err in res.errors:
            lineno = lines[err["index"]].lineno
            where = f"line {lineno}" + (f": {err['field']}" if err["field"] else "")
            refused.append(f"{where}: {err['reason']}")
            details.append({"line": lineno, "field": err["field"], "reason": err["reason"]})
        more = res.error_count - len(res.errors)
    else:
        more = 0
    details.sort(key=lambda d: d["line"])
    dropped = len(bad) + rejected
    extra = {"accepted": stored, "rejected": dropped}
    if not lines:
        return ApiError(
            400,
            _first(unparsed, 0, "\n"),
            code="invalid_line_protocol",
            details=details[:100],
            extra=extra,
        )
    reasons = unparsed + refused
    return ApiError(
        400,
        f"partial write: {_first(reasons, more, '; ')} dropped={dropped}",
        code="partial_write",
        details=details[:100],
        extra=extra,
    )


def _first(reasons: list[str], more: int, sep: str) -> str:
    shown = sep.join(reasons[:MESSAGE_REASONS])
    rest = len(reasons) - MESSAGE_REASONS + more
    return f"{shown}{sep}and {rest} more" if rest > 0 else shown


@bp.get("/ping", responses={204: None})
@requires(BP)
def ping() -> Response:
    """204 with ``X-Influxdb-Version`` (``?verbose=true``: 200 with the version in JSON), as
    InfluxDB answers; no key needed. HEAD works too."""
    if request.args.get("verbose", "").lower() in ("true", "1"):
        return jsonify({"version": INFLUX_VERSION, "monapi": __version__})
    return Response(status=204)


_CREATE_DATABASE = re.compile(
    r'^CREATE\s+DATABASE\s+(?:"(?:[^"\\]|\\.)+"|[A-Za-z_][A-Za-z0-9_]*)(?:\s+WITH\b.*)?$',
    re.IGNORECASE | re.DOTALL,
)
_SHOW_DATABASES = re.compile(r"^SHOW\s+DATABASES$", re.IGNORECASE)
_QUERY_PARAMS = [
    _param(
        "q",
        "CREATE DATABASE <name> or SHOW DATABASES (also lower case, WITH ... clauses, several"
        " separated by ';'; on POST also as a form field)",
        pattern=r"^(CREATE DATABASE [A-Za-z_][A-Za-z0-9_]{0,63}|SHOW DATABASES)$",
        required=True,
    ),
    _param("db", "accepted and ignored"),
    _param("u", "user name: accepted and ignored"),
    _param("p", "password: the server key"),
]
_QUERY_DOC: dict[str, Any] = {
    "responses": {200: InfluxQueryResult, **errors(400, 401, 403, 429)},
    "security": SECURITY,
    "openapi_extensions": {"parameters": _QUERY_PARAMS},
}


@bp.get("/query", **_QUERY_DOC)
@requires(BP, SERVER, ADMIN, credentials=INFLUX_CREDENTIALS)
def query_get() -> Response:
    """The start-up statements of InfluxDB 1.x clients: ``CREATE DATABASE`` succeeds without
    doing anything (data goes to monapi's store), ``SHOW DATABASES`` lists one database. Data
    is read through ``/api/v1``, not InfluxQL."""
    return _query()


@bp.post("/query", **_QUERY_DOC)
@requires(BP, SERVER, ADMIN, credentials=INFLUX_CREDENTIALS)
def query_post() -> Response:
    """As GET; ``q`` may also come as a form field."""
    return _query()


def _query() -> Response:
    settings: Settings = current_app.extensions["monapi.settings"]
    q = request.values.get("q", "")
    statements = [s.strip() for s in q.split(";") if s.strip()]
    if not statements:
        raise ApiError(400, 'missing required parameter "q"', code="missing_query")
    results: list[dict[str, Any]] = []
    for i, statement in enumerate(statements):
        if _CREATE_DATABASE.match(statement):
            results.append({"statement_id": i})
        elif _SHOW_DATABASES.match(statement):
            results.append(
                {
                    "statement_id": i,
                    "series": [
                        {
                            "name": "databases",
                            "columns": ["name"],
                            "values": [[settings.influxdb_database]],
                        }
                    ],
                }
            )
        else:
            raise ApiError(
                400,
                f"monapi answers only CREATE DATABASE and SHOW DATABASES on /query, not "
                f"{statement[:60]!r}; read data through /api/v1",
                code="unsupported_query",
            )
    return jsonify({"results": results})
