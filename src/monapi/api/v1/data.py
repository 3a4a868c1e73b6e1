"""POST /api/v1/data: metric ingestion with a server key (the hot path).

On a store that takes line protocol as it is (InfluxDB), a plainly valid batch takes a
whole-batch fast path (:mod:`monapi.fastpath`, :func:`store_encoded`) that stores the same
points; anything else goes through :func:`store_points`, which words every error.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from flask import Response, current_app, request

from ... import auth, db
from ...auth import SERVER, requires
from ...cache import get_coordinator
from ...errors import ApiError
from ...fastpath import FastConfig, json_batch
from ...fastpath import config as fast_config
from ...fields import FIELD_NAME_RE, MAX_TEXT_VALUE, MEASUREMENT_RE, TEXT_VALUE_RE, get_registry
from ...ingest import (
    MAX_TAGS,
    RESERVED_TAGS,
    TAG_KEY_RE,
    ValidationResult,
    Validator,
    decode_points,
    read_body,
)
from ...observability import get_telemetry
from ...schemas import IngestResult
from ...settings import Settings
from ...tsdb import Point, TimeSeriesStore, WriteBatch
from ...tsdb.base import EncodedLines, LazyPoints, Tags
from ...tsdb.lineprotocol import default_identity
from ..common import V1, blueprint, errors
from ..hotpath import OUTCOME_ENVIRON, Outcome
from ..spec import raw_request_body

bp = blueprint("data", "Metric ingestion")
BP = bp.name

_POINT = {
    "type": "object",
    "additionalProperties": False,
    "required": ["fields"],
    "properties": {
        "measurement": {"type": "string", "default": "system", "pattern": MEASUREMENT_RE.pattern},
        "timestamp": {
            "description": "RFC 3339, or epoch seconds / ms / us / ns (told apart by size);"
            " default: the time monapi receives it",
            "oneOf": [{"type": "string", "format": "date-time"}, {"type": "number"}],
        },
        "tags": {
            "type": "object",
            "maxProperties": MAX_TAGS,
            "propertyNames": {
                "pattern": TAG_KEY_RE.pattern,
                "not": {"enum": list(RESERVED_TAGS)},
            },
            "additionalProperties": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_TEXT_VALUE,
                "pattern": TEXT_VALUE_RE.pattern,
            },
        },
        "fields": {
            "type": "object",
            "minProperties": 1,
            "propertyNames": {"pattern": FIELD_NAME_RE.pattern},
            "additionalProperties": {
                "oneOf": [{"type": "number"}, {"type": "boolean"}, {"type": "string"}]
            },
        },
    },
}
_BODY = {
    "oneOf": [
        _POINT,
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["points"],
            "properties": {"points": {"type": "array", "items": _POINT, "minItems": 1}},
        },
    ]
}
_DOC = raw_request_body(
    V1 + "/data",
    "post",
    {
        "required": True,
        "description": 'One point, or {"points": [...]}. May be gzip-compressed'
        " (Content-Encoding: gzip).",
        "content": {
            "application/json": {
                "schema": _BODY,
                "examples": {
                    "point": {
                        "summary": "one point (204: stored)",
                        "value": {"measurement": "cpu", "fields": {"usage_percent": 12.5}},
                    },
                    "batch": {
                        "summary": "a batch (200: the first point stored, the second refused)",
                        "value": {
                            "points": [
                                {
                                    "measurement": "disk",
                                    "tags": {"mount": "/"},
                                    "fields": {"used_percent": 71.5, "free": 52_000_000_000},
                                },
                                {"measurement": "mem", "fields": {"used_percent": 140}},
                            ]
                        },
                    },
                },
            }
        },
    },
)


def store_points(
    points: Sequence[Any],
    settings: Settings,
    *,
    replace_identity: bool = False,
    now_ns: int | None = None,
) -> ValidationResult:
    """Validate decoded points against the field configuration and store the valid ones as the
    calling server's (every wire format ends here). ``res.points`` are the stored points."""
    principal = auth.principal()
    assert principal.server_id is not None
    registry = get_registry()
    res = Validator(
        registry.specs(),
        settings.unknown_fields,
        settings.timestamp_max_age,
        settings.timestamp_max_future,
        now_ns=now_ns,
        replace_identity=replace_identity,
    ).validate(points)
    if res.discovered and res.points:
        registry.discover(db.session(), res.discovered)
    telemetry = get_telemetry()
    if res.points:
        store: TimeSeriesStore = current_app.extensions["monapi.tsdb"]
        refused = telemetry.write(
            store,
            [WriteBatch(principal.server_id, principal.hostname or "", res.points)],
            len(res.points),
        )
        if refused:
            res.refused_by_store(refused)
    get_coordinator().mark_seen(principal.server_id, time.time())
    telemetry.ingested(res)
    return res


# Given the generated types, a validator of the request and the identity tags of the key: the
# lines to store and their count, or None (take the exact path).
FastEncode = Callable[[FastConfig, Validator, Tags], tuple[bytes, int] | None]


def store_encoded(
    settings: Settings,
    encode: FastEncode,
    exact: Callable[[Validator], Sequence[Point]],
    *,
    replace_identity: bool,
    now_ns: int,
) -> ValidationResult | None:
    """The fast path of :func:`store_points` for a whole request (see :mod:`monapi.fastpath`),
    when the store takes line protocol as it is: None when the store does not, or when
    ``encode`` does not recognise the request (then nothing was stored: take the exact path).

    ``exact`` validates the request through the exact path with the validator it is given;
    it builds the points only if something needs them (InfluxDB refusing part of the write),
    and must give exactly the points that ``encode`` wrote, in the same order."""
    store: TimeSeriesStore = current_app.extensions["monapi.tsdb"]
    field_ok: Callable[[str], bool] | None = getattr(store, "encoded_field_ok", None)
    if field_ok is None:
        return None
    principal = auth.principal()
    assert principal.server_id is not None
    server_id, hostname = principal.server_id, principal.hostname or ""
    specs = get_registry().specs()

    def validator() -> Validator:
        return Validator(
            specs,
            settings.unknown_fields,
            settings.timestamp_max_age,
            settings.timestamp_max_future,
            now_ns=now_ns,
            replace_identity=replace_identity,
        )

    ident = default_identity(WriteBatch(server_id, hostname, []))
    got = encode(fast_config(specs, field_ok), validator(), ident)
    if got is None:
        return None
    data, count = got
    points = LazyPoints(count, lambda: exact(validator()))
    telemetry = get_telemetry()
    refused = telemetry.write(
        store, [WriteBatch(server_id, hostname, points, EncodedLines(data, count))], count
    )
    res = ValidationResult(points, list(range(count)))
    if refused:
        res.refused_by_store(refused)
    get_coordinator().mark_seen(server_id, time.time())
    telemetry.ingested(res)
    return res


def _result(res: ValidationResult, accepted: int) -> dict[str, Any]:
    return {
        "accepted": accepted,
        "rejected": res.rejected,
        "dropped": res.dropped,
        "errors": res.errors,
        "errors_truncated": res.error_count > len(res.errors),
    }


@bp.post(
    "/data",
    responses={
        204: None,
        200: IngestResult,
        **errors(400, 401, 403, 413, 415, 422, 429, 503),
    },
    openapi_extensions=_DOC,
)
@requires(BP, SERVER)
def ingest() -> Response | tuple[Any, int]:
    """Push points. 204: all stored; 200: some stored (the reply lists what was refused and why);
    422: none stored. The server is the key's server, whatever the body says."""
    outcome: Outcome | None = request.environ.get(OUTCOME_ENVIRON)
    if outcome is not None:  # the hot path ran ingest_body already: answer what it gave
        answer = outcome.result()
    else:
        mimetype = request.mimetype
        if mimetype != "application/json":
            raise ApiError(
                415, f"expected Content-Type: application/json, got {mimetype or 'none'!r}"
            )
        answer = ingest_body(request.get_data(cache=False), request.headers.get("Content-Encoding"))
    return Response(status=204) if answer is None else answer


def ingest_body(raw: bytes, content_encoding: str | None) -> tuple[Any, int] | None:
    """:func:`ingest` for a JSON body, without the request: the Flask view and the hot path
    (:mod:`monapi.api.hotpath`) both run it, in an app context with ``g.principal`` set.
    None means 204 (every point stored)."""
    settings: Settings = current_app.extensions["monapi.settings"]
    body = read_body(raw, content_encoding, settings.max_decompressed_bytes)
    max_points = settings.max_points_per_request
    res = store_encoded(
        settings,
        lambda cfg, validator, ident: json_batch(body, cfg, validator, ident, max_points),
        lambda validator: _exact_points(validator, body, max_points),
        replace_identity=False,
        now_ns=time.time_ns(),
    )
    if res is None:
        res = store_points(decode_points(body, max_points), settings)
    accepted = len(res.points)
    if res.error_count == 0 and res.dropped == 0:
        return None
    if accepted == 0 and res.error_count:
        raise ApiError(
            422,
            f"no point stored: {res.rejected} point(s) rejected; see details",
            details=res.errors,
            extra={k: v for k, v in _result(res, 0).items() if k != "errors"},
        )
    return _result(res, accepted), 200


def _exact_points(validator: Validator, body: bytes, max_points: int) -> list[Point]:
    """The points the exact path stores for a JSON body that the fast path took (all of
    them)."""
    res = validator.validate(decode_points(body, max_points))
    if res.error_count or res.dropped:
        raise RuntimeError("the exact path refused points of a batch the fast path took")
    return list(res.points)
