"""Helpers shared by the API blueprints."""

from __future__ import annotations

from typing import Any

from flask_openapi3 import APIBlueprint, Tag

from ..auth import SECURITY
from ..schemas import ErrorOut

V1 = "/api/v1"


def errors(*codes: int) -> dict[str | int, Any]:
    """OpenAPI responses for error codes, all in the one error shape."""
    return {code: ErrorOut for code in codes}


def blueprint(
    name: str, description: str, *, prefix: str = V1, secured: bool = True
) -> APIBlueprint:
    """An API blueprint with its OpenAPI tag and (by default) key security."""
    return APIBlueprint(
        name,
        __name__,
        url_prefix=prefix,
        abp_tags=[Tag(name=name, description=description)],
        abp_security=SECURITY if secured else None,
    )
