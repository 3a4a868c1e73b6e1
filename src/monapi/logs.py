"""Logging: one line per event, JSON by default, with the request id when there is one."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

_STD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


# The user and password of a URL (an engine URL written with credentials): never logged or
# shown in an answer.
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s@]+@")


def redact(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced by ``***``."""
    return _URL_CREDENTIALS.sub(r"\1***@", text) if "@" in text else text


# What would end a line of text (str.splitlines, terminals, log viewers), and other controls.
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")


def _escape_controls(text: str) -> str:
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), text)


class JSONFormatter(logging.Formatter):
    """Formats a record as one JSON object; ``extra=`` keys become fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for k, v in record.__dict__.items():
            if k not in _STD and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """One line per record: control characters in the message (a path a client sent, say)
    are escaped, so that nobody can forge a line; a traceback follows on lines of its own."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return _escape_controls(redact(super().formatMessage(record)))

    def formatException(self, ei: Any) -> str:
        return redact(super().formatException(ei))

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
