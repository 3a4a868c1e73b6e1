"""POST /api/v1/data: metric ingestion with a server key (the hot path)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from flask import Response, current_app, request

from ... import auth, db
from ...auth import SERVER, requires
from ...cache import get_coordinator
from ...errors import ApiError
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
from ...schemas import IngestResult
from ...settings import Settings
from ...tsdb import TimeSeriesStore, WriteBatch
from ..common import V1, blueprint, errors
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
    if res.points:
        store: TimeSeriesStore = current_app.extensions["monapi.tsdb"]
        refused = store.write(
            [WriteBatch(principal.server_id, principal.hostname or "", res.points)]
        )
        if refused:
            res.refused_by_store(refused)
    get_coordinator().mark_seen(principal.server_id, time.time())
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
    settings: Settings = current_app.extensions["monapi.settings"]
    mimetype = request.mimetype
    if mimetype != "application/json":
        raise ApiError(415, f"expected Content-Type: application/json, got {mimetype or 'none'!r}")
    body = read_body(
        request.get_data(cache=False),
        request.headers.get("Content-Encoding"),
        settings.max_decompressed_bytes,
    )
    points = decode_points(body, settings.max_points_per_request)
    res = store_points(points, settings)
    accepted = len(res.points)
    if res.error_count == 0 and res.dropped == 0:
        return Response(status=204)
    if accepted == 0 and res.error_count:
        raise ApiError(
            422,
            f"no point stored: {res.rejected} point(s) rejected; see details",
            details=res.errors,
            extra={k: v for k, v in _result(res, 0).items() if k != "errors"},
        )
    return _result(res, accepted), 200
