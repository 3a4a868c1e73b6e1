"""The fields page: list, add and edit the field configuration, with the API's validation."""

from __future__ import annotations

from typing import Any

from flask import flash, redirect, render_template, request, url_for
from pydantic import ValidationError
from werkzeug.wrappers import Response

from .. import db
from ..errors import ApiError
from ..schemas import FieldCreate, FieldUpdate
from ..services import fields as fsvc
from . import bp
from .forms import FormErrors, number, pydantic_errors
from .session import login_required

FORM_FIELDS = ("measurement", "name", "type", "unit", "description", "min", "max")
_INPUT_OF = {f: f for f in FORM_FIELDS}


def parse_create(form: Any) -> FieldCreate:
    """A new field from the form, checked by the same schema as POST /api/v1/fields."""
    errors: dict[str, str] = {}
    data = {
        "measurement": form.get("measurement", "").strip(),
        "name": form.get("name", "").strip(),
        "type": form.get("type", ""),
        "unit": form.get("unit", "").strip(),
        "description": form.get("description", "").strip(),
        "min": number(form, "min", errors),
        "max": number(form, "max", errors),
        "enabled": form.get("enabled") == "on",
    }
    try:
        body = FieldCreate.model_validate(data)
    except ValidationError as exc:
        errors = {**pydantic_errors(exc, _INPUT_OF), **errors}
        raise FormErrors(errors) from None
    if errors:
        raise FormErrors(errors)
    return body


def parse_update(form: Any) -> dict[str, Any]:
    """The changes from the edit form, checked by the same schema as PATCH /api/v1/fields."""
    errors: dict[str, str] = {}
    data = {
        "unit": form.get("unit", "").strip(),
        "description": form.get("description", "").strip(),
        "min": number(form, "min", errors),
        "max": number(form, "max", errors),
        "enabled": form.get("enabled") == "on",
    }
    try:
        FieldUpdate.model_validate(data)
    except ValidationError as exc:
        raise FormErrors({**pydantic_errors(exc, _INPUT_OF), **errors}) from None
    if errors:
        raise FormErrors(errors)
    return data


@bp.get("/fields")
@login_required
def fields_page() -> str:
    """Every configured field by measurement; discovered ones are marked."""
    show = request.args.get("show", "")
    rows = fsvc.list_fields(db.session(), discovered=True if show == "discovered" else None)
    return render_template("fields.html", rows=rows, show=show)


@bp.route("/fields/new", methods=["GET", "POST"])
@login_required
def field_new() -> Response | str | tuple[str, int]:
    """Add a field."""
    if request.method != "POST":  # GET, and HEAD (which the CSRF check lets through)
        return render_template("field_form.html", field=None, form={"enabled": "on"}, errors={})
    try:
        f = fsvc.create_field(db.session(), parse_create(request.form))
    except FormErrors as exc:
        return _form_again(None, exc.errors)
    except ApiError as exc:  # 409: it exists
        return _form_again(None, {"name": exc.message})
    flash(f"field {f.measurement}.{f.name} added", "ok")
    return redirect(url_for("dashboard.fields_page"))


@bp.route("/fields/<int:field_id>/edit", methods=["GET", "POST"])
@login_required
def field_edit(field_id: int) -> Response | str | tuple[str, int]:
    """Change a field's unit, description, bounds or enabled (its name and type are fixed)."""
    session = db.session()
    f = fsvc.get_field(session, field_id)
    if request.method != "POST":  # GET, and HEAD (which the CSRF check lets through)
        form = {
            "unit": f.unit,
            "description": f.description,
            "min": "" if f.min_value is None else f"{f.min_value:g}",
            "max": "" if f.max_value is None else f"{f.max_value:g}",
            "enabled": "on" if f.enabled else "",
        }
        return render_template("field_form.html", field=f, form=form, errors={})
    try:
        fsvc.update_field(session, f, parse_update(request.form))
    except FormErrors as exc:
        return _form_again(f, exc.errors)
    except ApiError as exc:  # 422: bounds that do not fit the type
        return _form_again(f, {"min": exc.message})
    flash(f"field {f.measurement}.{f.name} saved", "ok")
    return redirect(url_for("dashboard.fields_page"))


@bp.post("/fields/<int:field_id>/delete")
@login_required
def field_delete(field_id: int) -> Response:
    """Remove a field (stored points stay; new values for it become unknown)."""
    session = db.session()
    f = fsvc.get_field(session, field_id)
    name = f"{f.measurement}.{f.name}"
    fsvc.delete_field(session, f)
    flash(f"field {name} removed", "ok")
    return redirect(url_for("dashboard.fields_page"))


def _form_again(field: Any, errors: dict[str, str]) -> tuple[str, int]:
    db.session().rollback()
    return render_template("field_form.html", field=field, form=request.form, errors=errors), 422
