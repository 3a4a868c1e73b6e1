"""WSGI entry point: ``gunicorn monapi.wsgi:app`` (or ``monapi serve``).

The app is built on first access, in the worker process, not when this module is imported;
its alert runner starts with it (unless MONAPI_ALERTS_ENABLED=false): every process that serves
the app takes part in the election of the deployment's one alert evaluator.
"""

from __future__ import annotations

from typing import Any

from . import create_app

_app: Any = None


def __getattr__(name: str) -> Any:
    global _app  # the one app of this worker process
    if name in ("app", "application"):
        if _app is None:
            from .alerting import runner

            _app = create_app()
            runner.start(_app)
        return _app
    raise AttributeError(name)
