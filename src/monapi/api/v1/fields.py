"""/api/v1/fields: the dynamic field configuration every value is checked against."""

from __future__ import annotations

from typing import Any

from ... import db
from ...auth import ADMIN, requires
from ...schemas import (
    FieldCreate,
    FieldList,
    FieldListQuery,
    FieldOut,
    FieldUpdate,
    IdPath,
)
from ...services import fields as fsvc
from ..common import blueprint, errors

bp = blueprint("fields", "The field configuration (what values are accepted)")
BP = bp.name


@bp.get("/fields", responses={200: FieldList, **errors(401, 403, 422)})
@requires(BP, ADMIN)
def list_fields(query: FieldListQuery) -> dict[str, Any]:
    """Every configured field, filtered by measurement, enabled, discovered."""
    rows = fsvc.list_fields(
        db.session(),
        measurement=query.measurement,
        enabled=query.enabled,
        discovered=query.discovered,
    )
    items = [fsvc.field_dict(f) for f in rows]
    return {"items": items, "total": len(items)}


@bp.post("/fields", responses={201: FieldOut, **errors(400, 401, 403, 409, 413, 415, 422)})
@requires(BP, ADMIN)
def create_field(body: FieldCreate) -> tuple[dict[str, Any], int]:
    """Add a field; values for it are accepted from the next request on, in every worker."""
    return fsvc.field_dict(fsvc.create_field(db.session(), body)), 201


@bp.get("/fields/<int:id>", responses={200: FieldOut, **errors(401, 403, 404, 422)})
@requires(BP, ADMIN)
def get_field(path: IdPath) -> dict[str, Any]:
    """One field."""
    return fsvc.field_dict(fsvc.get_field(db.session(), path.id))


@bp.patch(
    "/fields/<int:id>", responses={200: FieldOut, **errors(400, 401, 403, 404, 413, 415, 422)}
)
@requires(BP, ADMIN)
def update_field(path: IdPath, body: FieldUpdate) -> dict[str, Any]:
    """Change unit, description, bounds or enabled (the type cannot change)."""
    session = db.session()
    f = fsvc.get_field(session, path.id)
    return fsvc.field_dict(fsvc.update_field(session, f, body.model_dump(exclude_unset=True)))


@bp.delete("/fields/<int:id>", responses={204: None, **errors(401, 403, 404, 422)})
@requires(BP, ADMIN)
def delete_field(path: IdPath) -> tuple[str, int]:
    """Remove a field: new values for it are then unknown. Stored points stay."""
    session = db.session()
    fsvc.delete_field(session, fsvc.get_field(session, path.id))
    return "", 204
