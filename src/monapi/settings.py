"""Settings: defaults, then ``MONAPI_*`` environment variables, then explicit overrides.

Nothing here runs at import time; :func:`load_settings` is called by ``create_app`` and the CLI.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .logs import redact

ENV_PREFIX = "MONAPI_"

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
DURATION_HELP = "a number of seconds or a duration such as 90s, 10m, 12h, 30d"


def parse_duration(value: object) -> float:
    """Turn ``"30d"``, ``"10m"``, ``"90"`` or a number into seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected {DURATION_HELP}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION_RE.match(value)
        if not m:
            raise ValueError(f"{value!r} is not {DURATION_HELP}")
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2) or "s"]
    else:
        raise ValueError(f"expected {DURATION_HELP}")
    if seconds < 0:
        raise ValueError(f"expected {DURATION_HELP} (not negative)")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]

_RATE_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*(second|minute|hour|day|s|m|h|d)\s*$")
_RATE_UNIT = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
RATE_HELP = "N/second, N/minute, N/hour, N/day (also N/10s, N/5m), or 0 for no limit"


def parse_rate(value: object) -> tuple[int, float]:
    """``"600/minute"`` to (600, 60.0); ``"0"`` (or ``"off"``) to (0, 0.0), no limit."""
    if isinstance(value, tuple) and len(value) == 2:
        return int(value[0]), float(value[1])
    if not isinstance(value, str):
        raise ValueError(f"expected {RATE_HELP}")
    if value.strip().lower() in ("0", "off", "none", ""):
        return 0, 0.0
    m = _RATE_RE.match(value.lower())
    if not m:
        raise ValueError(f"{value!r} is not {RATE_HELP}")
    unit = m.group(3)
    unit = {"s": "second", "m": "minute", "h": "hour", "d": "day"}.get(unit, unit)
    count, period = int(m.group(1)), int(m.group(2) or 1) * _RATE_UNIT[unit]
    if count == 0:
        return 0, 0.0
    return count, float(period)


# NoDecode: from the environment this is text such as "600/minute", not JSON.
RateLimit = Annotated[tuple[int, float], BeforeValidator(parse_rate), NoDecode]


# Words of the placeholders people leave in example files; never in a generated random value.
_PLACEHOLDER_WORDS = ("change", "replace", "example", "default", "secret", "password", "xxx")
MIN_SECRET_CHARS = 32


def weak_secret(value: str | None) -> str | None:
    """Why a secret is not fit for production, or None."""
    if value is None or not value.strip():
        return "is not set"
    if len(value) < MIN_SECRET_CHARS:
        return f"is shorter than {MIN_SECRET_CHARS} characters"
    lowered = value.lower()
    if len(set(value)) < 8 or any(word in lowered for word in _PLACEHOLDER_WORDS):
        return "looks like a placeholder, not a random value"
    return None


class ConfigError(Exception):
    """A setting is missing or has a value monapi cannot use; the message says how to fix it."""


class Settings(BaseSettings):
    """Every monapi setting. The environment variable is ``MONAPI_`` + the upper-case name."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", validate_default=True, case_sensitive=False
    )

    env: Literal["development", "production"] = Field(
        "development",
        description="production refuses to start unless MONAPI_SECRET_KEY and MONAPI_KEY_PEPPER "
        "are set to strong random values (32+ characters, not placeholders, not equal)",
    )
    data_dir: Path = Field(
        Path("data"), description="directory for the embedded databases and generated secrets"
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the configuration store; default sqlite:///DATA_DIR/monapi.db",
    )
    database_pool_size: int = Field(
        10,
        ge=1,
        le=1000,
        description="PostgreSQL connections each worker keeps open (most requests, agent pushes "
        "with a known key among them, use none); workers x instances x (this + "
        "MONAPI_DATABASE_MAX_OVERFLOW) must stay under the server's max_connections",
    )
    database_max_overflow: int = Field(
        20,
        ge=0,
        le=1000,
        description="more PostgreSQL connections a worker may open at a peak, closed after use",
    )
    tsdb: Literal["sqlite", "influxdb", "victoriametrics"] = Field(
        "sqlite", description="time-series backend: sqlite, influxdb, victoriametrics"
    )
    tsdb_path: Path | None = Field(
        None, description="file of the embedded time-series store; default DATA_DIR/tsdb.sqlite3"
    )
    retention: Duration = Field(
        30 * 86400, description=f"how long points are kept: {DURATION_HELP}"
    )
    retention_check_interval: Duration = Field(
        3600, description=f"how often old points are pruned: {DURATION_HELP}"
    )
    tsdb_timeout: Duration = Field(
        10, description=f"how long to wait for InfluxDB or VictoriaMetrics: {DURATION_HELP}"
    )
    tsdb_pool_size: int = Field(
        16, ge=1, le=1024, description="keep-alive HTTP connections per worker to the engine"
    )
    tsdb_compression: Literal["auto", "gzip", "none"] = Field(
        "auto",
        description="gzip writes to InfluxDB or VictoriaMetrics: auto = gzip unless the engine's"
        " URL is a loopback address (compressing there costs both sides CPU and saves nothing)",
    )
    influxdb_url: str = Field(
        "http://127.0.0.1:8086", description="InfluxDB 1.x base URL (MONAPI_TSDB=influxdb)"
    )
    influxdb_database: str = Field(
        "monapi", min_length=1, max_length=64, description="InfluxDB database, created if missing"
    )
    influxdb_retention_policy: str = Field(
        "monapi",
        min_length=1,
        max_length=64,
        description="InfluxDB retention policy (duration MONAPI_RETENTION), created if missing",
    )
    influxdb_username: str | None = Field(None, description="InfluxDB user, if auth is enabled")
    influxdb_password: SecretStr | None = Field(
        None, description="InfluxDB password, if auth is enabled"
    )
    victoriametrics_url: str = Field(
        "http://127.0.0.1:8428",
        description="VictoriaMetrics single-node URL, or the vminsert URL of a cluster",
    )
    victoriametrics_select_url: str | None = Field(
        None,
        description="vmselect URL of a cluster; default MONAPI_VICTORIAMETRICS_URL (single node)",
    )
    victoriametrics_tenant: str | None = Field(
        None,
        description="cluster tenant (accountID or accountID:projectID); set it for a cluster, "
        "leave it unset for a single node",
    )
    victoriametrics_latest_window: Duration = Field(
        86400,
        description="how far back latest values are looked for in VictoriaMetrics: "
        + DURATION_HELP,
    )
    redis_url: str | None = Field(
        None,
        description="Redis URL (redis://HOST:6379/0) shared by every worker and instance; "
        "default none: caches, last-seen and rate limits per process",
    )
    redis_prefix: str = Field(
        "monapi", min_length=1, max_length=64, description="prefix of every Redis key monapi uses"
    )
    rate_limit_server: RateLimit = Field(
        "600/minute",  # type: ignore[assignment]  # parsed by the BeforeValidator
        description=f"requests per server key: {RATE_HELP}",
    )
    rate_limit_register: RateLimit = Field(
        "60/minute",  # type: ignore[assignment]  # parsed by the BeforeValidator
        description=f"registrations per client address: {RATE_HELP}",
    )
    rate_limit_login: RateLimit = Field(
        "10/minute",  # type: ignore[assignment]  # parsed by the BeforeValidator
        description=f"dashboard log-in attempts per client address: {RATE_HELP}",
    )
    rate_limit_fallback: Literal["local", "open", "closed"] = Field(
        "local",
        description="rate limits while Redis does not answer: local = each process counts on "
        "its own (as without Redis), open = no limits, closed = limited requests get 503",
    )
    login_max_failures: int = Field(
        5, ge=1, le=1000, description="failed log-ins in a row before a dashboard user is locked"
    )
    login_lockout: Duration = Field(
        900, description=f"how long a dashboard user stays locked: {DURATION_HELP}"
    )
    session_lifetime: Duration = Field(
        12 * 3600,
        description=f"a dashboard session ends after this long without a request: {DURATION_HELP}",
    )
    cookie_secure: bool = Field(
        True,
        description="mark the dashboard's session cookie Secure (sent over HTTPS only; browsers "
        "make an exception for localhost); false to use the dashboard over plain HTTP",
    )
    public_url: str | None = Field(
        None,
        description="the URL agents reach monapi at, shown in the dashboard's install commands; "
        "default the URL the browser used",
    )
    proxy_hops: int = Field(
        0,
        ge=0,
        le=10,
        description="reverse proxies in front of monapi whose X-Forwarded-For is trusted "
        "(client addresses for rate limits and logs); 0 when clients connect directly",
    )
    unknown_fields: Literal["reject", "discover", "drop"] = Field(
        "reject",
        description="what to do with a field that is not configured: reject, discover, drop",
    )
    max_body_bytes: int = Field(
        10 * 1024 * 1024, gt=0, description="largest request body in bytes (as sent)"
    )
    max_decompressed_bytes: int = Field(
        64 * 1024 * 1024, gt=0, description="largest gzip request body in bytes once decompressed"
    )
    max_points_per_request: int = Field(
        10_000, gt=0, description="most points accepted in one ingestion request"
    )
    timestamp_max_age: Duration = Field(
        365 * 86400, description=f"oldest timestamp accepted: {DURATION_HELP}"
    )
    timestamp_max_future: Duration = Field(
        600, description=f"furthest timestamp ahead of now accepted: {DURATION_HELP}"
    )
    default_interval: int = Field(
        30, ge=1, le=86400, description="push interval in seconds given to new servers"
    )
    offline_after_intervals: float = Field(
        3, gt=0, description="a server is offline after this many intervals without a push"
    )
    last_seen_flush: Duration = Field(
        5, description=f"how often buffered last-seen times are written: {DURATION_HELP}"
    )
    key_pepper: SecretStr | None = Field(
        None,
        description="server-side secret mixed into API-key digests, the same on every instance "
        "that shares the database; default a generated file DATA_DIR/key_pepper",
    )
    secret_key: SecretStr | None = Field(
        None, description="Flask secret key; default a generated file DATA_DIR/secret_key"
    )
    bind: str = Field("127.0.0.1:8000", description="address gunicorn listens on, host:port")
    workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        le=64,
        description="gunicorn worker processes; default the number of cores",
    )
    threads: int = Field(16, ge=1, le=256, description="threads per gunicorn worker")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="log level: DEBUG, INFO, WARNING, ERROR"
    )
    log_format: Literal["json", "text"] = Field("json", description="log format: json or text")
    log_file: Path | None = Field(
        None,
        description="also write the log to this file, rotated by size; default none "
        "(standard error only, which systemd, Docker and Cloud Foundry collect)",
    )
    log_file_max_bytes: int = Field(
        10 * 1024 * 1024,
        ge=1024,
        description="size in bytes at which MONAPI_LOG_FILE is rotated",
    )
    log_file_backups: int = Field(
        5, ge=0, le=1000, description="rotated log files kept (FILE.1, FILE.2, ...)"
    )
    metrics_enabled: bool = Field(
        True,
        description="count and serve monapi's own metrics at /metrics (Prometheus text "
        "format); false: /metrics is a 404 and nothing is counted",
    )
    metrics_token: SecretStr | None = Field(
        None,
        description="bearer token /metrics requires (Authorization: Bearer TOKEN); default "
        "none: /metrics answers whoever reaches monapi",
    )

    alerts_enabled: bool = Field(
        True,
        description="evaluate alert rules in the background and send their notifications; one "
        "process of the whole deployment does it at a time (a lease in the configuration store)",
    )
    alerts_interval: Duration = Field(
        30, description=f"how often alert rules are evaluated: {DURATION_HELP} (at least 1s)"
    )
    alert_webhook_url: str | None = Field(
        None,
        description="URL every alert notification is POSTed to as JSON; default none (no webhook)",
    )
    alert_webhook_secret: SecretStr | None = Field(
        None,
        description="key of the HMAC-SHA256 signature sent with each webhook notification "
        "(X-Monapi-Signature-256: sha256=HEX of the body); default none: not signed",
    )
    alert_email_to: str | None = Field(
        None,
        description="comma-separated addresses alert notifications are mailed to (needs "
        "MONAPI_SMTP_HOST); default none (no e-mail)",
    )
    alert_notify_max_attempts: int = Field(
        10,
        ge=1,
        le=100,
        description="attempts to deliver a notification (with growing waits, up to 15 minutes "
        "apart) before it is marked failed",
    )
    smtp_host: str | None = Field(
        None, description="SMTP server alert e-mail goes through; default none (no e-mail)"
    )
    smtp_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="SMTP port; default 465 with MONAPI_SMTP_SECURITY=ssl, 587 with starttls, "
        "25 with none",
    )
    smtp_security: Literal["none", "starttls", "ssl"] = Field(
        "starttls",
        description="SMTP transport security: starttls (upgrade the connection), ssl (TLS from "
        "the start) or none (plain; only where the relay is on this machine or network)",
    )
    smtp_username: str | None = Field(None, description="SMTP user, if the server wants a log-in")
    smtp_password: SecretStr | None = Field(None, description="SMTP password")
    smtp_from: str | None = Field(
        None, description="sender address of alert e-mail; default monapi@THIS-HOST"
    )
    smtp_timeout: Duration = Field(
        10, description=f"how long to wait for the SMTP server or the webhook: {DURATION_HELP}"
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, v: object) -> object:
        return v.upper() if isinstance(v, str) else v

    @field_validator("bind")
    @classmethod
    def _check_bind(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("expected host:port, for example 127.0.0.1:8000")
        return v

    @field_validator(
        "influxdb_url", "victoriametrics_url", "victoriametrics_select_url", "public_url"
    )
    @classmethod
    def _check_http_url(cls, v: str | None) -> str | None:
        if v is None:
            return None
        if not re.match(r"^https?://[^/\s]+(/\S*)?$", v):
            raise ValueError("expected http://HOST:PORT or https://HOST:PORT")
        if "@" in v.split("://", 1)[1].split("/", 1)[0]:
            # Never sent (requests go to the host and port), so they could only leak.
            raise ValueError(
                "credentials in the URL are not used: give InfluxDB's in "
                "MONAPI_INFLUXDB_USERNAME and MONAPI_INFLUXDB_PASSWORD"
            )
        return v.rstrip("/")

    @field_validator("alert_webhook_url")
    @classmethod
    def _check_webhook_url(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        if not re.match(r"^https?://[^/\s]+(/\S*)?$", v):
            raise ValueError("expected an http:// or https:// URL")
        return v

    @field_validator("alert_email_to")
    @classmethod
    def _check_email_to(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        addresses = [a.strip() for a in v.split(",") if a.strip()]
        for a in addresses:
            if not re.match(r"^[^@\s,<>]+@[^@\s,<>]+$", a):
                raise ValueError(f"{a[:80]!r} is not an e-mail address (name@domain)")
        return ", ".join(addresses)

    @field_validator("smtp_timeout")
    @classmethod
    def _check_smtp_timeout(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("give a timeout above 0, for example 10s")
        return v

    @field_validator("alerts_interval")
    @classmethod
    def _check_alerts_interval(cls, v: float) -> float:
        if v < 1:
            raise ValueError("alert rules are evaluated at most once a second: give 1s or more")
        return v

    @field_validator("victoriametrics_tenant")
    @classmethod
    def _check_tenant(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        if not re.match(r"^\d+(:\d+)?$", v):
            raise ValueError("expected accountID or accountID:projectID, for example 0 or 7:1")
        return v

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        if not re.match(r"^(redis|rediss|unix)://", v):
            raise ValueError("expected redis://HOST:PORT/DB, rediss://... or unix:///PATH")
        return v

    @field_validator("database_url")
    @classmethod
    def _check_url(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        if v.startswith("postgres://"):  # what Heroku, Cloud Foundry brokers and others give
            v = "postgresql://" + v[len("postgres://") :]
        if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", v):
            raise ValueError("expected sqlite:///PATH or postgresql://USER@HOST/DB")
        return v

    @model_validator(mode="after")
    def _production_needs_secrets(self) -> Settings:
        if self.env != "production":
            return self
        secret = self.secret_key.get_secret_value() if self.secret_key else None
        pepper = self.key_pepper.get_secret_value() if self.key_pepper else None
        problems = [
            f"{ENV_PREFIX}{name} {why}"
            for name, value in (("SECRET_KEY", secret), ("KEY_PEPPER", pepper))
            if (why := weak_secret(value)) is not None
        ]
        if not problems and secret == pepper:
            problems.append(f"{ENV_PREFIX}SECRET_KEY and {ENV_PREFIX}KEY_PEPPER are the same")
        if problems:
            raise ValueError(
                f"{ENV_PREFIX}ENV=production refuses to start: "
                + "; ".join(problems)
                + ". Set each to a random value of 32+ characters (openssl rand -hex 32), the same"
                " on every instance; the files monapi generates in the data directory are for"
                " development. An existing installation keeps its keys with"
                f" {ENV_PREFIX}KEY_PEPPER set to the contents of DATA_DIR/key_pepper."
            )
        return self

    @model_validator(mode="after")
    def _smtp_consistent(self) -> Settings:
        if self.alert_email_to and not self.smtp_host:
            raise ValueError(
                f"{ENV_PREFIX}ALERT_EMAIL_TO is set but {ENV_PREFIX}SMTP_HOST is not: set the SMTP "
                "server alert e-mail goes through, or unset ALERT_EMAIL_TO"
            )
        if (
            self.smtp_username
            and self.smtp_security == "none"
            and self.smtp_host not in ("localhost", "127.0.0.1", "::1")
        ):
            raise ValueError(
                f"{ENV_PREFIX}SMTP_USERNAME is set with {ENV_PREFIX}SMTP_SECURITY=none: the "
                "password would cross the network in clear; set SMTP_SECURITY to starttls or ssl"
            )
        return self

    # Derived values -------------------------------------------------------------------------
    @property
    def resolved_database_url(self) -> str:
        """The configuration-store URL, defaulting to a SQLite file in the data directory."""
        if self.database_url:
            url = self.database_url
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url[len("postgresql://") :]
            return url
        return f"sqlite:///{(self.data_dir / 'monapi.db').resolve()}"

    @property
    def resolved_smtp_port(self) -> int:
        """The SMTP port: MONAPI_SMTP_PORT, else the usual one for the security chosen."""
        if self.smtp_port is not None:
            return self.smtp_port
        return {"ssl": 465, "starttls": 587, "none": 25}[self.smtp_security]

    @property
    def resolved_tsdb_path(self) -> Path:
        """The embedded time-series file."""
        return (self.tsdb_path or self.data_dir / "tsdb.sqlite3").resolve()


def describe_field(name: str) -> str:
    """What a setting accepts, from its description."""
    info = Settings.model_fields.get(name)
    return (info.description or "") if info else ""


def load_settings(overrides: Mapping[str, Any] | None = None) -> Settings:
    """Settings from the environment plus overrides, or ConfigError naming the variable."""
    try:
        return Settings(**dict(overrides or {}))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if not err["loc"]:  # a check across settings: the message names them
                problems.append(msg)
                continue
            name = str(err["loc"][0])
            env = ENV_PREFIX + name.upper()
            field = Settings.model_fields.get(name)
            secret = field is not None and "SecretStr" in str(field.annotation)
            given = "'***'" if secret else redact(repr(err.get("input")))
            accepts = describe_field(name)
            problems.append(f"{env}={given}: {msg}" + (f" (accepts {accepts})" if accepts else ""))
        raise ConfigError("invalid settings:\n  " + "\n  ".join(problems)) from None
