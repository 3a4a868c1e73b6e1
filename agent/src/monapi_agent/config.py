"""The agent's settings: a TOML file, overridden by MONAPI_AGENT_* variables, overridden by flags.

The file holds the server key, so it is written with mode 0600 (owner only), atomically, and
``run`` warns when it finds it readable by others. Every error names the file, the setting and
what would be accepted: the operator reads these messages at a terminal, not in a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import stat
import tempfile
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .collect import Filters

ENV_PREFIX = "MONAPI_AGENT_"
KEY_PREFIX = "mks_"
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}

log = logging.getLogger("monapi_agent.config")


class ConfigError(Exception):
    """A setting is missing or wrong; the message says which and how to fix it."""


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def default_config_path() -> Path:
    """/etc/monapi-agent/agent.toml as root, else under $XDG_CONFIG_HOME (~/.config)."""
    if _is_root():
        return Path("/etc/monapi-agent/agent.toml")
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "monapi-agent" / "agent.toml"


def default_spool_path() -> Path:
    """/var/lib/monapi-agent/spool.db as root, else under $XDG_STATE_HOME (~/.local/state)."""
    if _is_root():
        return Path("/var/lib/monapi-agent/spool.db")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "monapi-agent" / "spool.db"


def parse_duration(text: str | float | int) -> float:
    """Seconds from 30, "30s", "5m", "2h", "7d" or "250ms"."""
    if isinstance(text, bool):
        raise ValueError("expected a duration such as 30s, 5m, 2h or 7d")
    if isinstance(text, int | float):
        seconds = float(text)
        if not math.isfinite(seconds):  # TOML has inf and nan
            raise ValueError("expected a duration such as 30s, 5m, 2h or 7d")
    else:
        m = _DURATION_RE.match(text)
        if m is None:
            raise ValueError(f"{text!r} is not a duration (examples: 30s, 5m, 2h, 7d)")
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


@dataclass
class Settings:
    """Everything the agent reads from its config file, environment and flags."""

    url: str | None = None
    key: str | None = None
    hostname: str | None = None
    server_id: int | None = None
    spool_path: Path = field(default_factory=default_spool_path)
    spool_max_mb: float = 100.0
    spool_max_age: float = 7 * 86400.0
    timeout: float = 10.0
    retry_min: float = 1.0
    retry_max: float = 300.0
    batch_max_points: int = 5000
    config_refresh: float = 60.0
    default_interval: int = 10
    ca_file: Path | None = None
    log_level: str = "info"
    ignore_mounts: tuple[str, ...] = Filters.ignore_mounts
    ignore_fstypes: tuple[str, ...] = Filters.ignore_fstypes
    ignore_devices: tuple[str, ...] = Filters.ignore_devices
    ignore_interfaces: tuple[str, ...] = Filters.ignore_interfaces
    # where the settings came from (not a setting)
    config_path: Path | None = None

    @property
    def filters(self) -> Filters:
        """The collector's include/exclude globs."""
        return Filters(
            ignore_mounts=self.ignore_mounts,
            ignore_fstypes=self.ignore_fstypes,
            ignore_devices=self.ignore_devices,
            ignore_interfaces=self.ignore_interfaces,
        )

    @property
    def spool_max_bytes(self) -> int:
        """The spool's size bound in bytes."""
        return int(self.spool_max_mb * 1024 * 1024)

    def require_server(self) -> tuple[str, str]:
        """The URL and key, or an error that says how to get them."""
        where = f" in {self.config_path}" if self.config_path else ""
        if not self.url:
            raise ConfigError(
                f"no server URL{where}: run `monapi-agent register --url URL --enroll-token"
                " TOKEN` first, or set url in the config file or MONAPI_AGENT_URL"
            )
        if not self.key:
            raise ConfigError(
                f"no server key{where}: run `monapi-agent register --url URL --enroll-token"
                " TOKEN` first, or set key in the config file or MONAPI_AGENT_KEY"
            )
        return self.url, self.key


SETTINGS = tuple(f.name for f in dataclasses.fields(Settings) if f.name != "config_path")
_DURATIONS = {"spool_max_age", "timeout", "retry_min", "retry_max", "config_refresh"}
_LISTS = {"ignore_mounts", "ignore_fstypes", "ignore_devices", "ignore_interfaces"}
_LOG_LEVELS = ("debug", "info", "warning", "error")


def check_url(url: str) -> str:
    """An http(s) URL of the monapi server, without a trailing slash."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http:// or https:// URL of a monapi server")
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r}: the server URL takes no query or fragment")
    return url.strip().rstrip("/")


def _convert(name: str, value: Any, base: Path | None) -> Any:
    """One setting from file, environment or flag text to its type; ValueError says why not."""
    if name in _DURATIONS:
        seconds = parse_duration(value)
        if name in ("timeout", "retry_min", "retry_max", "config_refresh") and seconds <= 0:
            raise ValueError("must be more than 0")
        return seconds
    if name in _LISTS:
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ValueError("expected a list of glob patterns")
    if name in ("spool_path", "ca_file"):
        if not isinstance(value, str) or not value:
            raise ValueError("expected a file path")
        path = Path(value).expanduser()
        if not path.is_absolute() and base is not None:
            path = base / path
        return path
    if name == "url":
        if not isinstance(value, str):
            raise ValueError("expected a URL string")
        return check_url(value)
    if name == "key":
        if not isinstance(value, str) or not value.startswith(KEY_PREFIX):
            raise ValueError(f"expected a server key ({KEY_PREFIX}...)")
        return value.strip()
    if name == "hostname":
        if not isinstance(value, str) or not value.strip():
            raise ValueError("expected a host name")
        return value.strip()
    if name in ("server_id", "batch_max_points", "default_interval"):
        if isinstance(value, bool):
            raise ValueError("expected a whole number")
        try:
            number = int(value)
        except (TypeError, ValueError, OverflowError):  # OverflowError: TOML's inf
            raise ValueError("expected a whole number") from None
        if isinstance(value, float) and value != number:
            raise ValueError("expected a whole number")
        if number < 1:
            raise ValueError("must be at least 1")
        return number
    if name == "spool_max_mb":
        if isinstance(value, bool):
            raise ValueError("expected a number of megabytes")
        try:
            mb = float(value)
        except (TypeError, ValueError):
            raise ValueError("expected a number of megabytes") from None
        if not math.isfinite(mb):
            raise ValueError("expected a number of megabytes")
        if mb <= 0:
            raise ValueError("must be more than 0")
        return mb
    if name == "log_level":
        if not isinstance(value, str) or value.lower() not in _LOG_LEVELS:
            raise ValueError(f"expected one of {', '.join(_LOG_LEVELS)}")
        return value.lower()
    raise ValueError("unknown setting")  # pragma: no cover - guarded by the callers


def _apply(
    settings: Settings,
    values: Mapping[str, Any],
    where: str,
    base: Path | None,
    sources: dict[str, str] | None = None,
) -> None:
    for name, value in values.items():
        if name not in SETTINGS:
            raise ConfigError(
                f"{where}: unknown setting {name!r}; the settings are: {', '.join(SETTINGS)}"
            )
        try:
            setattr(settings, name, _convert(name, value, base))
        except ValueError as exc:
            raise ConfigError(f"{where}: {name} = {value!r}: {exc}") from None
        if sources is not None:
            sources[name] = where


def read_file(path: Path) -> dict[str, Any]:
    """The raw table of a config file, or a ConfigError that names the file and the problem."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except PermissionError:
        raise ConfigError(f"cannot read config file {path}: permission denied") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None


def load(
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    must_exist: bool = False,
) -> Settings:
    """Defaults, then the file (if it exists, or must), then MONAPI_AGENT_*, then flags."""
    env = os.environ if env is None else env
    if path is None:
        explicit = env.get(ENV_PREFIX + "CONFIG")
        path = Path(explicit) if explicit else default_config_path()
        must_exist = must_exist or bool(explicit)
    settings = Settings(config_path=path)
    sources: dict[str, str] = {}  # where each setting came from, for the messages below
    if path.exists() or must_exist:
        _apply(settings, read_file(path), f"config file {path}", path.parent, sources)
    from_env = {
        name: env[ENV_PREFIX + name.upper()]
        for name in SETTINGS
        if env.get(ENV_PREFIX + name.upper())
    }
    for name, value in from_env.items():
        where = f"environment {ENV_PREFIX}{name.upper()}"
        _apply(settings, {name: value}, where, Path.cwd(), sources)
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    _apply(settings, flags, "flag", None, sources)
    if settings.retry_min > settings.retry_max:
        lo = sources.get("retry_min", "default")
        hi = sources.get("retry_max", "default")
        raise ConfigError(
            f"retry_min ({settings.retry_min:g}s, {lo}) is more than retry_max"
            f" ({settings.retry_max:g}s, {hi}): lower retry_min or raise retry_max"
        )
    return settings


def parse_assignments(items: Iterable[str]) -> dict[str, str]:
    """--set name=value flags as a dict; ConfigError for a malformed one."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--set {item!r}: expected name=value")
        out[name.strip()] = value
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # JSON's string escapes are valid TOML basic-string escapes once non-ASCII stays as is;
        # JSON leaves DEL (U+007F) unescaped, which TOML forbids in a string.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def write_file(path: Path, values: Mapping[str, Any]) -> None:
    """Write a flat TOML table atomically with mode 0600 (it holds the server key)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "# monapi-agent settings (written by `monapi-agent register`; see `monapi-agent --help`).",
        "# This file holds the server's API key: keep it readable by its owner only.",
    ]
    lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
    fd, tmp = tempfile.mkstemp(prefix=".agent-", suffix=".toml", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def warn_if_exposed(path: Path | None) -> None:
    """Log a warning when the config file (with the key) is readable by group or others."""
    if path is None or not path.exists():
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning(
            "config file %s has mode %o and holds the server key: run chmod 600 %s",
            path,
            mode,
            path,
        )
