"""Request and response models of the management API (pydantic v2, strict, no extra keys).

The ingestion body is not here: it is decoded by msgspec on the hot path (see ``ingest.py``);
its JSON schema for the OpenAPI document is written by hand in ``api/v1/data.py``.
"""

from __future__ import annotations

import ipaddress
import math
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from .fields import (
    FIELD_NAME_HELP,
    FIELD_NAME_RE,
    FIELD_TYPES,
    MAX_TEXT_VALUE,
    MEASUREMENT_HELP,
    MEASUREMENT_RE,
    TEXT_VALUE_RE,
)
from .settings import parse_duration

# Patterns are written so that Python (with fullmatch) and JSON Schema (ECMA) read them alike;
# the same text goes into the OpenAPI document.
_HOST_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_\-]{0,61}[A-Za-z0-9_])?")
_ASCII_SPACE = "\t\n\v\f\r "
_SPACE = r"[\t\n\v\f\r ]*"
HOSTNAME_PATTERN = rf"^{_SPACE}{_HOST_LABEL.pattern}(?:\.{_HOST_LABEL.pattern})*\.*{_SPACE}$"
_LABEL_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-/]{0,62}$")
_LABEL_VALUE = TEXT_VALUE_RE
MAX_LABELS = 32
MAX_LABEL_VALUE = MAX_TEXT_VALUE


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


def _no_nul(v: str) -> str:
    if "\x00" in v:
        raise ValueError("must not contain the NUL character (\\u0000)")
    return v


Text = Annotated[str, AfterValidator(_no_nul), Field(json_schema_extra={"pattern": r"^[^\x00]*$"})]
"""Free text: anything but NUL, which PostgreSQL can neither store nor compare (SQLite can)."""


def check_hostname(v: str) -> str:
    """RFC 1123 host name (underscores tolerated), lower-cased; surrounding ASCII white space
    and trailing dots are dropped. Exactly what ``HOSTNAME_PATTERN`` describes."""
    h = v.strip(_ASCII_SPACE).rstrip(".")
    if not h or len(h) > 253 or not all(_HOST_LABEL.fullmatch(p) for p in h.split(".")):
        raise ValueError(
            "hostname must be 1-253 characters of dot-separated labels "
            "(letters, digits, '-', '_'; no leading or trailing '-')"
        )
    return h.lower()


def check_ip(v: str) -> str:
    try:
        return str(ipaddress.ip_address(v.strip()))
    except ValueError:
        raise ValueError(f"{v[:60]!r} is not an IPv4 or IPv6 address") from None


def check_labels(v: dict[str, str]) -> dict[str, str]:
    if len(v) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels")
    for k, val in v.items():
        if not _LABEL_KEY.fullmatch(k):
            raise ValueError(f"label key {k[:60]!r}: 1-63 letters, digits, '_', '.', '-', '/'")
        if len(val) > MAX_LABEL_VALUE or not _LABEL_VALUE.fullmatch(val):
            raise ValueError(
                f"label {k!r}: value must be at most {MAX_LABEL_VALUE} characters"
                " without control characters"
            )
    return v


def _integral(v: Any) -> Any:
    """JSON has one number type: 30.0 is the integer 30 (JSON Schema agrees); 30.5 is not."""
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def _as_float(v: Any) -> Any:
    """Integers are numbers too, as long as a float can hold them."""
    if isinstance(v, int) and not isinstance(v, bool):
        try:
            return float(v)
        except OverflowError:  # JSON integers have no bound
            raise ValueError("number out of the range of a 64-bit float") from None
    return v


# Constraints go before the validator, so that the JSON schema shows them as minimum/maximum.
JsonInt = Annotated[int, BeforeValidator(_integral)]
"""An integer as JSON Schema means it: 30 and 30.0, never 30.5, "30" or true."""
Interval = Annotated[int, Field(ge=1, le=86400), BeforeValidator(_integral)]
MaxUses = Annotated[int, Field(ge=1, le=1_000_000), BeforeValidator(_integral)]
Bound = Annotated[float, BeforeValidator(_as_float)]
"""A number (an integer is converted). No minimum/maximum in the schema: its decimal text would
not be the float limit exactly, so the document and the check would disagree at the edge."""


Hostname = Annotated[
    str,
    Field(
        max_length=253,
        examples=["web-01.example.com"],
        json_schema_extra={"pattern": HOSTNAME_PATTERN},
        description="host name, stored lower-cased without surrounding white space"
        " or trailing dots",
    ),
    AfterValidator(check_hostname),
]
IPAddress = Annotated[
    str,
    Field(
        max_length=45,
        examples=["192.0.2.10"],
        json_schema_extra={"anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]},
    ),
    AfterValidator(check_ip),
]
Labels = Annotated[
    dict[str, str],
    AfterValidator(check_labels),
    WithJsonSchema(
        {
            "type": "object",
            "maxProperties": MAX_LABELS,
            "propertyNames": {"pattern": _LABEL_KEY.pattern},
            "additionalProperties": {
                "type": "string",
                "maxLength": MAX_LABEL_VALUE,
                "pattern": _LABEL_VALUE.pattern,
            },
        }
    ),
]
KeyValue = Annotated[str, WithJsonSchema({"type": "string", "pattern": "="})]
"""A key=value filter (checked by the model, so that the message says so)."""


class ServerCreate(Strict):
    hostname: Hostname
    ip_address: IPAddress
    labels: Labels = Field(default_factory=dict, examples=[{"role": "web"}])
    interval: Interval | None = Field(None, description="push interval in seconds")
    description: Text = Field("", max_length=2000)


class LegacyRegister(Strict):
    hostname: Hostname
    ip_address: IPAddress


class ServerUpdate(Strict):
    labels: Labels | None = None
    description: Text | None = Field(None, max_length=2000)
    interval: Interval | None = None


class ServerPath(Strict):
    model_config = ConfigDict(strict=False, extra="forbid")
    server_id: int = Field(ge=1, le=2**31 - 1)


class IdPath(Strict):
    model_config = ConfigDict(strict=False, extra="forbid")
    id: int = Field(ge=1, le=2**31 - 1)


class TokenPath(Strict):
    token_id: str = Field(pattern=r"^[0-9a-f]{16}$")


class ServerListQuery(Strict):
    model_config = ConfigDict(strict=False, extra="forbid")
    page: int = Field(1, ge=1, le=1_000_000)
    per_page: int = Field(20, ge=1, le=100)
    hostname: Text | None = Field(None, max_length=253, description="substring of the hostname")
    label: list[KeyValue] = Field(default_factory=list, description="key=value; repeat to AND")
    status: Literal["online", "offline", "never_seen"] | None = None

    @field_validator("label")
    @classmethod
    def _labels(cls, v: list[str]) -> list[str]:
        for item in v:
            if "=" not in item:
                raise ValueError(f"label filter {item[:60]!r} must be key=value")
        return v


class OverviewQuery(Strict):
    model_config = ConfigDict(strict=False, extra="forbid")
    page: int = Field(1, ge=1, le=1_000_000)
    per_page: int = Field(100, ge=1, le=1000)


class Agent(BaseModel):
    version: str | None
    uptime: int | None
    heartbeat_at: datetime | None


class ServerOut(BaseModel):
    id: int
    hostname: str
    ip_address: str
    description: str
    labels: dict[str, str]
    interval: int
    enabled: bool
    status: Literal["online", "offline", "never_seen"]
    last_seen: datetime | None
    created_at: datetime
    updated_at: datetime
    agent: Agent


class ServerCreated(ServerOut):
    api_key: str = Field(description="the server's API key; shown only this once")


class LegacyRegistered(BaseModel):
    status: Literal["success"]
    hostname: str
    ip_address: str
    api_key: str


class Links(BaseModel):
    self: str
    first: str
    last: str
    prev: str | None
    next: str | None


class ServerPage(BaseModel):
    items: list[ServerOut]
    page: int
    per_page: int
    total: int
    pages: int
    links: Links


class FieldCreate(Strict):
    measurement: str = Field(
        max_length=64, examples=["cpu"], json_schema_extra={"pattern": MEASUREMENT_RE.pattern}
    )
    name: str = Field(
        max_length=128,
        examples=["usage_percent"],
        json_schema_extra={"pattern": FIELD_NAME_RE.pattern},
    )
    type: Literal["float", "int", "bool", "string"]
    unit: Text = Field("", max_length=32)
    description: Text = Field("", max_length=2000)
    min: Bound | None = Field(None, description="numeric fields only; at most max")
    max: Bound | None = Field(None, description="numeric fields only; at least min")
    enabled: bool = True

    @field_validator("measurement")
    @classmethod
    def _m(cls, v: str) -> str:
        if not MEASUREMENT_RE.fullmatch(v):
            raise ValueError(f"measurement: {MEASUREMENT_HELP}")
        return v

    @field_validator("name")
    @classmethod
    def _n(cls, v: str) -> str:
        if not FIELD_NAME_RE.fullmatch(v):
            raise ValueError(f"name: {FIELD_NAME_HELP}")
        return v

    @model_validator(mode="after")
    def _bounds(self) -> FieldCreate:
        check_bounds(self.type, self.min, self.max)
        return self


def check_bounds(ftype: str, lo: float | None, hi: float | None) -> None:
    """min/max only for numbers, and min <= max."""
    if ftype in ("bool", "string") and (lo is not None or hi is not None):
        raise ValueError(f"min and max apply to numeric fields, not {ftype}")
    for v in (lo, hi):
        if v is not None and not math.isfinite(v):
            raise ValueError("min and max must be finite numbers")
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"min ({lo:g}) is greater than max ({hi:g})")


class FieldUpdate(Strict):
    unit: Text | None = Field(None, max_length=32)
    description: Text | None = Field(None, max_length=2000)
    min: Bound | None = Field(None, description="numeric fields only; at most max")
    max: Bound | None = Field(None, description="numeric fields only; at least min")
    enabled: bool | None = None


class FieldOut(BaseModel):
    id: int
    measurement: str
    name: str
    type: Literal["float", "int", "bool", "string"]
    unit: str
    description: str
    min: float | None
    max: float | None
    enabled: bool
    discovered: bool
    created_at: datetime
    updated_at: datetime


class FieldList(BaseModel):
    items: list[FieldOut]
    total: int


class FieldListQuery(Strict):
    model_config = ConfigDict(strict=False, extra="forbid")
    measurement: Text | None = Field(None, max_length=64)
    enabled: bool | None = None
    discovered: bool | None = None


DurationText = Annotated[
    str, Field(json_schema_extra={"pattern": r"^\s*[0-9]+(\.[0-9]+)?\s*(ms|s|m|h|d|w)?\s*$"})
]
MAX_TOKEN_LIFETIME_S = 10 * 365 * 86400  # the longest lifetime of an enrollment token
ExpirySeconds = Annotated[int, Field(ge=1, le=MAX_TOKEN_LIFETIME_S), BeforeValidator(_integral)]


class EnrollCreate(Strict):
    name: Text = Field("", max_length=200)
    expires_in: DurationText | ExpirySeconds | None = Field(
        None, description="lifetime: seconds or a duration such as 24h, 7d; none = no expiry"
    )
    max_uses: MaxUses | None = None

    @field_validator("expires_in")
    @classmethod
    def _dur(cls, v: str | int | None) -> str | int | None:
        if v is not None:
            seconds = parse_duration(v)
            if not 1 <= seconds <= MAX_TOKEN_LIFETIME_S:
                raise ValueError("expires_in must be between 1 second and 10 years")
        return v


class EnrollOut(BaseModel):
    id: str
    name: str
    created_at: datetime
    expires_at: datetime | None
    max_uses: int | None
    uses: int
    revoked: bool
    active: bool


class EnrollCreated(EnrollOut):
    token: str = Field(description="the enrollment token; shown only this once")


class EnrollList(BaseModel):
    items: list[EnrollOut]
    total: int


class MetricsQuery(Strict):
    model_config = ConfigDict(strict=False, extra="forbid")
    fields: str | None = Field(
        None,
        max_length=4000,
        description="comma-separated measurement.field names (a bare name means system.<name>);"
        " default every enabled field (the numeric ones unless agg is last or count)",
        json_schema_extra={"example": "cpu.usage_percent,load1"},
    )
    start: str = Field(
        "-1h",
        max_length=64,
        description="RFC 3339, epoch seconds, or -1h style",
        json_schema_extra={"example": "-6h"},
    )
    end: str = Field("now", max_length=64, description="RFC 3339, epoch seconds, now, or -5m")
    step: str | None = Field(
        None,
        max_length=32,
        description="bucket size, e.g. 10s, 5m; default"
        " chosen so a series has at most about 1,000 points",
        json_schema_extra={"example": "5m"},
    )
    agg: Literal["mean", "min", "max", "last", "sum", "count"] = "mean"
    tag: list[KeyValue] = Field(
        default_factory=list, description="key=value; keep only these series"
    )


class SeriesOut(BaseModel):
    measurement: str
    field: str
    tags: dict[str, str]
    unit: str
    points: list[tuple[int, float | int | bool | str | None]] = Field(
        description="[bucket start in epoch seconds, aggregated value]"
    )


class MetricsOut(BaseModel):
    server_id: int
    start: datetime
    end: datetime
    step: int = Field(description="bucket size in seconds")
    agg: str
    series: list[SeriesOut]


class LatestItem(BaseModel):
    measurement: str
    field: str
    tags: dict[str, str]
    unit: str
    value: float | int | bool | str | None
    timestamp: datetime


class LatestOut(BaseModel):
    server_id: int
    values: list[LatestItem]


class OverviewItem(BaseModel):
    id: int
    hostname: str
    status: Literal["online", "offline", "never_seen"]
    enabled: bool
    last_seen: datetime | None
    labels: dict[str, str]
    values: dict[str, float | int | bool | str | None]


class OverviewPage(BaseModel):
    items: list[OverviewItem]
    page: int
    per_page: int
    total: int
    pages: int
    links: Links


class AgentField(BaseModel):
    measurement: str
    name: str
    type: str
    unit: str
    min: float | None
    max: float | None


class AgentConfig(BaseModel):
    server_id: int
    hostname: str
    interval: int
    fields: list[AgentField]


class Heartbeat(Strict):
    agent_version: Text = Field(max_length=64)
    uptime: JsonInt = Field(ge=0, le=2**62)


class HeartbeatOut(BaseModel):
    server_id: int
    interval: int
    config_etag: str


class IngestResult(BaseModel):
    accepted: int = Field(description="points stored")
    rejected: int = Field(description="points refused (none of their values stored)")
    dropped: int = Field(
        description="values of unknown fields ignored (MONAPI_UNKNOWN_FIELDS=drop)"
    )
    errors: list[dict[str, Any]] = Field(description="up to 100: index, field, reason")
    errors_truncated: bool


class ErrorDetail(BaseModel):
    location: str | None = None
    reason: str | None = None
    index: int | None = None
    field: str | None = None


class ErrorOut(BaseModel):
    """The one error shape of every route."""

    error: str = Field(description="what went wrong, in words")
    code: str = Field(description="a stable machine-readable code")
    status: int
    request_id: str
    details: list[dict[str, Any]] | None = Field(
        None,
        description="specifics: {location, reason}; for ingestion {index, field, reason}, for"
        " line protocol {line, field, reason}",
    )
    message: str | None = Field(
        None, description="/api/v2/write only: the same text as error (InfluxDB 2.x clients)"
    )
    # Only on a 422 from POST /api/v1/data (no point stored) or a 400 from a line protocol write:
    accepted: int | None = Field(None, description="ingestion only: points stored")
    rejected: int | None = Field(None, description="ingestion only: points refused")
    dropped: int | None = Field(None, description="ingestion only: unknown-field values ignored")
    errors_truncated: bool | None = Field(
        None, description="ingestion only: more errors than the 100 listed"
    )


class InfluxQueryResult(BaseModel):
    """What /query answers, in InfluxDB 1.x's shape."""

    results: list[dict[str, Any]] = Field(
        description="one per statement: {statement_id} or {statement_id, series}"
    )


class Check(BaseModel):
    backend: str = Field(description="which implementation: sqlite, postgresql, influxdb, ...")
    status: str = Field(description="ok, or why the store does not answer")


class Health(BaseModel):
    status: str
    checks: dict[str, Check] | None = Field(
        None, description="config_store, tsdb and cache, each with its backend and status"
    )


FIELD_TYPE_CHOICES = FIELD_TYPES


# Alerts -------------------------------------------------------------------------------------
CONDITIONS = (">", ">=", "<", "<=", "==", "!=")
SEVERITIES = ("info", "warning", "critical")
RULE_KINDS = ("threshold", "silent")
MAX_ALERT_WINDOW_S = 7 * 86400
MAX_ALERT_DURATION_S = 7 * 86400
Condition = Literal[">", ">=", "<", "<=", "==", "!="]
Severity = Literal["info", "warning", "critical"]
Aggregation = Literal["mean", "min", "max", "last", "sum", "count"]
DurationValue = DurationText | Annotated[float, BeforeValidator(_as_float)]
"""A duration: seconds (a number) or text such as 90s, 5m, 2h."""
ServerIds = Annotated[
    list[Annotated[int, Field(ge=1, le=2**31 - 1), BeforeValidator(_integral)]],
    Field(min_length=1, max_length=1000),
]


def duration_seconds(v: str | float, name: str, lo: float, hi: float) -> float:
    """A duration in seconds within [lo, hi], or ValueError naming ``name``."""
    seconds = parse_duration(v)
    if not lo <= seconds <= hi:
        raise ValueError(f"{name} must be between {lo:g} s and {hi:g} s (got {seconds:g} s)")
    return seconds


class AlertRuleFields(Strict):
    """What a rule is made of; every key optional, so that an update can say only what
    changes. Creation adds the rules in :class:`AlertRuleCreate`."""

    name: Text | None = Field(None, min_length=1, max_length=200, examples=["High CPU"])
    description: Text | None = Field(None, max_length=2000)
    measurement: str | None = Field(
        None, max_length=64, examples=["cpu"], json_schema_extra={"pattern": MEASUREMENT_RE.pattern}
    )
    field: str | None = Field(
        None,
        max_length=128,
        examples=["usage_percent"],
        json_schema_extra={"pattern": FIELD_NAME_RE.pattern},
    )
    tags: Labels | None = Field(
        None, description="threshold rules: only series with these tags (default every series)"
    )
    aggregation: Aggregation | None = Field(
        None, description="threshold rules: how the window's values are combined (default mean)"
    )
    window: DurationValue | None = Field(
        None,
        description="threshold rules: the window the aggregation runs over, up to now "
        "(seconds or 5m style; default 5m)",
        examples=["5m"],
    )
    condition: Condition | None = Field(
        None, description="threshold rules: value CONDITION threshold"
    )
    threshold: Bound | None = Field(None, description="threshold rules: the number compared with")
    intervals: Annotated[float, Field(gt=0, le=10_000), BeforeValidator(_as_float)] | None = Field(
        None,
        description="silent rules: fire when a server has not pushed for this many of its "
        "intervals (default 3)",
    )
    duration: DurationValue | None = Field(
        None,
        description="how long the condition must hold before the alert fires (seconds or 2m "
        "style; default 0: at once)",
    )
    server_ids: ServerIds | None = Field(
        None, description="only these servers; default every server (or those with labels)"
    )
    labels: Labels | None = Field(
        None, description="only servers that have all these labels; default every server"
    )
    severity: Severity | None = None
    enabled: bool | None = None

    @field_validator("measurement")
    @classmethod
    def _m(cls, v: str | None) -> str | None:
        if v is not None and not MEASUREMENT_RE.fullmatch(v):
            raise ValueError(f"measurement: {MEASUREMENT_HELP}")
        return v

    @field_validator("field")
    @classmethod
    def _f(cls, v: str | None) -> str | None:
        if v is not None and not FIELD_NAME_RE.fullmatch(v):
            raise ValueError(f"field: {FIELD_NAME_HELP}")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        # Names go into e-mail subjects and log lines: one line of printable text.
        if v is not None and not TEXT_VALUE_RE.fullmatch(v):
            raise ValueError("name must be one line without control characters")
        return v

    @field_validator("window")
    @classmethod
    def _window(cls, v: str | float | None) -> str | float | None:
        if v is not None:
            duration_seconds(v, "window", 1, MAX_ALERT_WINDOW_S)
        return v

    @field_validator("duration")
    @classmethod
    def _duration(cls, v: str | float | None) -> str | float | None:
        if v is not None:
            duration_seconds(v, "duration", 0, MAX_ALERT_DURATION_S)
        return v

    @field_validator("threshold")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("threshold must be a finite number")
        return v


_THRESHOLD_ONLY = (
    "measurement",
    "field",
    "tags",
    "aggregation",
    "window",
    "condition",
    "threshold",
)


class AlertRuleCreate(AlertRuleFields):
    """A new rule: ``threshold`` (an aggregate of a field over a window against a number) or
    ``silent`` (a server that stopped pushing)."""

    name: Text = Field(min_length=1, max_length=200, examples=["High CPU"])
    kind: Literal["threshold", "silent"] = "threshold"

    @model_validator(mode="after")
    def _kind(self) -> AlertRuleCreate:
        check_rule_shape(self.kind, self.model_dump(exclude_unset=True))
        return self


def check_rule_shape(kind: str, given: dict[str, Any]) -> None:
    """What each kind needs and refuses (ValueError naming the key)."""
    present = {k for k, v in given.items() if v is not None}
    if kind == "threshold":
        missing = [
            k for k in ("measurement", "field", "condition", "threshold") if k not in present
        ]
        if missing:
            raise ValueError(f"a threshold rule needs {', '.join(missing)}")
        if "intervals" in present:
            raise ValueError("intervals applies to silent rules only")
    else:
        extra = [k for k in _THRESHOLD_ONLY if k in present]
        if extra:
            raise ValueError(f"{', '.join(extra)}: only threshold rules have these")
    if given.get("server_ids") is not None and given.get("labels"):
        raise ValueError("give server_ids or labels, not both")


class AlertRuleUpdate(AlertRuleFields):
    """Change a rule: only the keys given change (null clears server_ids or labels); the kind
    cannot change."""


class AlertRuleOut(BaseModel):
    id: int
    name: str
    description: str
    kind: Literal["threshold", "silent"]
    measurement: str | None
    field: str | None
    tags: dict[str, str]
    aggregation: str | None
    window: float | None = Field(description="seconds")
    condition: str | None
    threshold: float | None
    intervals: float | None
    duration: float = Field(description="seconds the condition must hold")
    server_ids: list[int] | None
    labels: dict[str, str]
    severity: Severity
    enabled: bool
    expression: str = Field(description="the rule in words, as notifications show it")
    firing: int = Field(description="servers it fires for now")
    pending: int = Field(description="servers it is pending for now")
    created_at: datetime
    updated_at: datetime


class AlertRuleList(BaseModel):
    items: list[AlertRuleOut]
    total: int


class AlertStateQuery(Strict):
    model_config = ConfigDict(strict=False, extra="forbid")
    state: list[Literal["ok", "pending", "firing", "resolved"]] = Field(
        default_factory=list, description="repeat for several; default pending and firing"
    )
    rule_id: int | None = Field(None, ge=1, le=2**31 - 1)
    server_id: int | None = Field(None, ge=1, le=2**31 - 1)
    severity: Severity | None = None


class AlertStateOut(BaseModel):
    rule_id: int
    rule_name: str
    severity: Severity
    expression: str
    server_id: int
    hostname: str
    state: Literal["ok", "pending", "firing", "resolved"]
    value: float | None
    series: dict[str, str]
    since: datetime
    pending_since: datetime | None
    fired_at: datetime | None
    resolved_at: datetime | None
    evaluated_at: datetime
    silenced: bool = Field(description="a silence mutes its notifications now")
    notified: str | None = Field(description="the last event a notification was sent for")


class AlertStateList(BaseModel):
    items: list[AlertStateOut]
    total: int


class AlertHistoryQuery(Strict):
    model_config = ConfigDict(strict=False, extra="forbid")
    page: int = Field(1, ge=1, le=1_000_000)
    per_page: int = Field(50, ge=1, le=500)
    rule_id: int | None = Field(None, ge=1, le=2**31 - 1)
    server_id: int | None = Field(None, ge=1, le=2**31 - 1)


class AlertEventOut(BaseModel):
    id: int
    rule_id: int
    rule_name: str
    server_id: int
    hostname: str
    from_state: str
    to_state: str
    value: float | None
    at: datetime
    silenced: bool
    reason: str


class AlertHistoryPage(BaseModel):
    items: list[AlertEventOut]
    page: int
    per_page: int
    total: int
    pages: int
    links: Links


class SilenceCreate(Strict):
    rule_id: int | None = Field(None, ge=1, le=2**31 - 1, description="mute this rule")
    server_id: int | None = Field(None, ge=1, le=2**31 - 1, description="mute this server")
    ends_at: str | None = Field(
        None,
        max_length=64,
        description="until when (RFC 3339 with a time zone); or give duration",
        json_schema_extra={"format": "date-time"},
        examples=["2026-11-22T08:00:00Z"],
    )
    duration: DurationValue | None = Field(
        None, description="how long from now (seconds or 2h style); or give ends_at"
    )
    comment: Text = Field("", max_length=2000)

    @field_validator("ends_at")
    @classmethod
    def _aware(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                dt = datetime.fromisoformat(v.strip())
            except ValueError:
                raise ValueError(f"ends_at {v[:64]!r} is not an RFC 3339 time") from None
            if dt.tzinfo is None:
                raise ValueError("ends_at needs a time zone (add Z or +00:00)")
        return v

    @field_validator("duration")
    @classmethod
    def _dur(cls, v: str | float | None) -> str | float | None:
        if v is not None:
            duration_seconds(v, "duration", 1, 366 * 86400)
        return v

    @model_validator(mode="after")
    def _shape(self) -> SilenceCreate:
        if self.rule_id is None and self.server_id is None:
            raise ValueError("a silence needs rule_id, server_id or both")
        if (self.ends_at is None) == (self.duration is None):
            raise ValueError("give ends_at or duration (one of them)")
        return self


class SilenceOut(BaseModel):
    id: int
    rule_id: int | None
    server_id: int | None
    starts_at: datetime
    ends_at: datetime
    comment: str
    created_by: str
    created_at: datetime
    active: bool


class SilenceList(BaseModel):
    items: list[SilenceOut]
    total: int


class SilenceListQuery(Strict):
    model_config = ConfigDict(strict=False, extra="forbid")
    expired: bool = Field(False, description="also list silences that have ended")


class NotificationQuery(Strict):
    model_config = ConfigDict(strict=False, extra="forbid")
    page: int = Field(1, ge=1, le=1_000_000)
    per_page: int = Field(50, ge=1, le=500)
    status: Literal["pending", "sent", "failed"] | None = None


class NotificationOut(BaseModel):
    id: int
    rule_id: int | None
    server_id: int | None
    event: Literal["firing", "resolved"]
    channel: Literal["webhook", "email"]
    status: Literal["pending", "sent", "failed"]
    attempts: int
    next_attempt_at: datetime | None
    last_error: str
    created_at: datetime
    sent_at: datetime | None
    summary: str


class NotificationPage(BaseModel):
    items: list[NotificationOut]
    page: int
    per_page: int
    total: int
    pages: int
    links: Links
