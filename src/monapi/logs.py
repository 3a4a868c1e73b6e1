"""Logging: one line per event, JSON by default, with the request id when there is one; on
standard error, and optionally in a file rotated by size (``MONAPI_LOG_FILE``)."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import sys
from datetime import UTC, datetime
from logging.handlers import RotatingFileHandler
from pathlib import Path
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


class RequestIdFilter(logging.Filter):
    """Stamps the current request's id on every record logged while it is served (a record
    that names one already keeps it), so that all lines of one request can be found."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "request_id" not in record.__dict__:
            from flask import g, has_app_context

            if has_app_context():
                rid = g.get("request_id")
                if rid is not None:
                    record.request_id = rid
        return True


class SharedRotatingFileHandler(RotatingFileHandler):
    """A RotatingFileHandler that several processes (gunicorn's workers) may share.

    The stock handler rotates by the size its own process wrote, so each worker renames the
    file on its own count: lines go to a file another worker already rotated away, and backups
    are overwritten early. Here every write holds an exclusive lock on ``FILE.lock``; under it,
    a file that another process rotated is reopened first, and the size that decides rotation is
    the file's on disk."""

    def __init__(self, filename: str | os.PathLike[str], max_bytes: int, backups: int) -> None:
        super().__init__(filename, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self._lock_path = self.baseFilename + ".lock"

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            self.handleError(record)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._follow_rotation()
            super().emit(record)  # rotates first when the file is full
        finally:
            os.close(fd)  # closing releases the lock

    def _follow_rotation(self) -> None:
        """Reopen the file when the one this process holds is no longer FILE (renamed to
        FILE.1 by another process, or removed)."""
        if self.stream is None:
            return
        try:
            current = os.stat(self.baseFilename)
        except FileNotFoundError:
            current = None
        held = os.fstat(self.stream.fileno())
        if current is None or (current.st_ino, current.st_dev) != (held.st_ino, held.st_dev):
            self.stream.close()
            self.stream = self._open()


def formatter(fmt: str) -> logging.Formatter:
    """monapi's formatter for ``MONAPI_LOG_FORMAT`` (json or text)."""
    if fmt == "json":
        return JSONFormatter()
    return TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


def file_handler(path: Path, max_bytes: int, backups: int, fmt: str) -> logging.Handler:
    """The handler of ``MONAPI_LOG_FILE``: rotated at ``max_bytes``, ``backups`` kept."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = SharedRotatingFileHandler(path, max_bytes, backups)
    handler.setFormatter(formatter(fmt))
    handler.addFilter(RequestIdFilter())
    return handler


_configured: tuple[Any, ...] | None = None


def configure_logging(
    level: str,
    fmt: str,
    log_file: Path | None = None,
    max_bytes: int = 10 * 1024 * 1024,
    backups: int = 5,
) -> None:
    """Install monapi's handlers on the 'monapi' logger (idempotent): standard error, and the
    log file when one is set."""
    global _configured
    wanted = (level, fmt, log_file and log_file.resolve(), max_bytes, backups)
    if _configured == wanted:
        return
    logger = logging.getLogger("monapi")
    for h in list(logger.handlers):
        if getattr(h, "_monapi", False):
            logger.removeHandler(h)
            h.close()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    handlers[0].setFormatter(formatter(fmt))
    handlers[0].addFilter(RequestIdFilter())
    if log_file is not None:
        handlers.append(file_handler(log_file, max_bytes, backups, fmt))
    for handler in handlers:
        handler._monapi = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    _configured = wanted
