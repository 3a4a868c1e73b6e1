"""WSGI entry point: ``gunicorn monapi.wsgi:app`` (or ``monapi serve``).

The app is built on first access, in the worker process, not when this module is imported.
"""

from __future__ import annotations

from typing import Any

from . import create_app

_app: Any = None


def __getattr__(name: str) -> Any:
    global _app  # the one app of this worker process
    if name in ("app", "application"):
        if _app is None:
            _app = create_app()
        return _app
    raise AttributeError(name)
