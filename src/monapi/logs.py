"""Logging: one line per event, JSON by default, with the request id when there is one."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

_STD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JSONFormatter(logging.Formatter):
    """Formats a record as one JSON object; ``extra=`` keys become fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in _STD and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        rid = getattr(record, "request_id", None)
        return f"{base} [request_id={rid}]" if rid else base


_configured: tuple[str, str] | None = None


def configure_logging(level: str, fmt: str) -> None:
    """Install monapi's handler on the 'monapi' logger (idempotent)."""
    global _configured
    if _configured == (level, fmt):
        return
    logger = logging.getLogger("monapi")
    for h in list(logger.handlers):
        if getattr(h, "_monapi", False):
            logger.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler._monapi = True  # type: ignore[attr-defined]
    handler.setFormatter(
        JSONFormatter()
        if fmt == "json"
        else TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    _configured = (level, fmt)
