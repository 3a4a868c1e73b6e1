"""monapi: a self-hosted server-monitoring API."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from flask import Flask


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the Flask app (see :func:`monapi.app.create_app`)."""
    from .app import create_app as _create_app

    return _create_app(config)
