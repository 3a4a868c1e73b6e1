"""/api/v1/fields: the dynamic field configuration every value is checked against."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from ... import db
from ...auth import ADMIN, requires
from ...cache import get_coordinator
from ...errors import ApiError
from ...models import FieldConfig
from ...schemas import (
    FieldCreate,
    FieldList,
    FieldListQuery,
    FieldOut,
    FieldUpdate,
    IdPath,
    check_bounds,
)
from ..common import blueprint, errors

bp = blueprint("fields", "The field configuration (what values are accepted)")
BP = bp.name


def field_dict(f: FieldConfig) -> dict[str, Any]:
    return {
        "id": f.id,
        "measurement": f.measurement,
        "name": f.name,
        "type": f.type,
        "unit": f.unit,
        "description": f.description,
        "min": f.min_value,
        "max": f.max_value,
        "enabled": f.enabled,
        "discovered": f.discovered,
        "created_at": f.created_at,
        "updated_at": f.updated_at,
    }


def _get(field_id: int) -> FieldConfig:
    f = db.session().get(FieldConfig, field_id)
    if f is None:
        raise ApiError(404, f"field {field_id} not found")
    return f


@bp.get("/fields", responses={200: FieldList, **errors(401, 403, 422)})
@requires(BP, ADMIN)
def list_fields(query: FieldListQuery) -> dict[str, Any]:
    """Every configured field, filtered by measurement, enabled, discovered."""
    q = select(FieldConfig).order_by(FieldConfig.measurement, FieldConfig.name)
    if query.measurement is not None:
        q = q.where(FieldConfig.measurement == query.measurement)
    if query.enabled is not None:
        q = q.where(FieldConfig.enabled == query.enabled)
    if query.discovered is not None:
        q = q.where(FieldConfig.discovered == query.discovered)
    items = [field_dict(f) for f in db.session().execute(q).scalars()]
    return {"items": items, "total": len(items)}


@bp.post("/fields", responses={201: FieldOut, **errors(400, 401, 403, 409, 413, 415, 422)})
@requires(BP, ADMIN)
def create_field(body: FieldCreate) -> tuple[dict[str, Any], int]:
    """Add a field; values for it are accepted from the next request on, in every worker."""
    session = db.session()
    f = FieldConfig(
        measurement=body.measurement,
        name=body.name,
        type=body.type,
        unit=body.unit,
        description=body.description,
        min_value=body.min,
        max_value=body.max,
        enabled=body.enabled,
        discovered=False,
    )
    session.add(f)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise ApiError(409, f"field {body.measurement}.{body.name} already exists") from None
    get_coordinator().bump(session, "fields")
    session.commit()
    return field_dict(f), 201


@bp.get("/fields/<int:id>", responses={200: FieldOut, **errors(401, 403, 404, 422)})
@requires(BP, ADMIN)
def get_field(path: IdPath) -> dict[str, Any]:
    """One field."""
    return field_dict(_get(path.id))


@bp.patch(
    "/fields/<int:id>", responses={200: FieldOut, **errors(400, 401, 403, 404, 413, 415, 422)}
)
@requires(BP, ADMIN)
def update_field(path: IdPath, body: FieldUpdate) -> dict[str, Any]:
    """Change unit, description, bounds or enabled (the type cannot change)."""
    session = db.session()
    f = _get(path.id)
    changes = body.model_dump(exclude_unset=True)
    lo = changes.get("min", f.min_value)
    hi = changes.get("max", f.max_value)
    try:
        check_bounds(f.type, lo, hi)
    except ValueError as exc:
        raise ApiError(422, str(exc), details=[{"location": "body", "reason": str(exc)}]) from None
    for key, attr in (
        ("unit", "unit"),
        ("description", "description"),
        ("enabled", "enabled"),
        ("min", "min_value"),
        ("max", "max_value"),
    ):
        if key in changes:
            if changes[key] is None and key in ("unit", "description", "enabled"):
                continue
            setattr(f, attr, changes[key])
    get_coordinator().bump(session, "fields")
    session.commit()
    return field_dict(f)


@bp.delete("/fields/<int:id>", responses={204: None, **errors(401, 403, 404, 422)})
@requires(BP, ADMIN)
def delete_field(path: IdPath) -> tuple[str, int]:
    """Remove a field: new values for it are then unknown. Stored points stay."""
    session = db.session()
    session.delete(_get(path.id))
    get_coordinator().bump(session, "fields")
    session.commit()
    return "", 204
