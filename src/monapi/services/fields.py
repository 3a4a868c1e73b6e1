"""The field configuration: adding and changing fields (the API and the dashboard use these)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..cache import get_coordinator
from ..errors import ApiError
from ..models import FieldConfig
from ..schemas import FieldCreate, check_bounds

# FieldUpdate keys -> FieldConfig attributes
_UPDATABLE = {
    "unit": "unit",
    "description": "description",
    "enabled": "enabled",
    "min": "min_value",
    "max": "max_value",
}


def field_dict(f: FieldConfig) -> dict[str, Any]:
    """A field as the API shows it."""
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


def get_field(session: Session, field_id: int) -> FieldConfig:
    """The field, or 404."""
    f = session.get(FieldConfig, field_id)
    if f is None:
        raise ApiError(404, f"field {field_id} not found")
    return f


def list_fields(
    session: Session,
    *,
    measurement: str | None = None,
    enabled: bool | None = None,
    discovered: bool | None = None,
) -> list[FieldConfig]:
    """Fields by measurement and name, optionally filtered."""
    q = select(FieldConfig).order_by(FieldConfig.measurement, FieldConfig.name)
    if measurement is not None:
        q = q.where(FieldConfig.measurement == measurement)
    if enabled is not None:
        q = q.where(FieldConfig.enabled == enabled)
    if discovered is not None:
        q = q.where(FieldConfig.discovered == discovered)
    return list(session.execute(q).scalars())


def create_field(session: Session, body: FieldCreate) -> FieldConfig:
    """Add a field (409 if it exists); values for it are accepted from the next request on,
    in every worker."""
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
    return f


def update_field(session: Session, f: FieldConfig, changes: dict[str, Any]) -> FieldConfig:
    """Change unit, description, bounds or enabled (422 when the bounds do not fit the type).
    ``changes`` holds only what was sent; None clears a bound and leaves the others as they
    are."""
    lo = changes.get("min", f.min_value)
    hi = changes.get("max", f.max_value)
    try:
        check_bounds(f.type, lo, hi)
    except ValueError as exc:
        raise ApiError(422, str(exc), details=[{"location": "body", "reason": str(exc)}]) from None
    for key, attr in _UPDATABLE.items():
        if key in changes:
            if changes[key] is None and key in ("unit", "description", "enabled"):
                continue
            setattr(f, attr, changes[key])
    get_coordinator().bump(session, "fields")
    session.commit()
    return f


def delete_field(session: Session, f: FieldConfig) -> None:
    """Remove a field: new values for it are then unknown. Stored points stay."""
    session.delete(f)
    get_coordinator().bump(session, "fields")
    session.commit()
