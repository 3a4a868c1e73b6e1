"""Generated reference documents: docs/configuration.md, docs/api.md and docs/openapi.json.

``python -m monapi.docgen`` writes them (``make docs``); ``--check`` writes nothing and exits 1
naming the files that differ from what the code makes now. The configuration reference comes from
:class:`monapi.settings.Settings`, the API reference and ``openapi.json`` from the OpenAPI
document of a real app built with default settings.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic import BeforeValidator, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from . import auth
from .settings import (
    _UNIT_SECONDS,
    DURATION_HELP,
    ENV_PREFIX,
    RATE_HELP,
    Settings,
    load_settings,
    parse_duration,
    parse_rate,
)

CONFIGURATION_MD = "configuration.md"
API_MD = "api.md"
OPENAPI_JSON = "openapi.json"
REGENERATE = "make docs"

# Sections of the configuration reference: (title, intro, setting names). Every setting must be
# in exactly one (tests/test_docgen.py checks it, and generation refuses otherwise).
SECTIONS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "General",
        "Mode, data directory, secrets, and how servers are judged online.",
        (
            "env",
            "data_dir",
            "key_pepper",
            "secret_key",
            "proxy_hops",
            "default_interval",
            "offline_after_intervals",
            "last_seen_flush",
        ),
    ),
    (
        "Configuration store",
        "Servers, keys, fields, users and sessions: SQLite by default, or PostgreSQL.",
        ("database_url", "database_pool_size", "database_max_overflow"),
    ),
    (
        "Time-series store",
        "Where points go: the embedded SQLite store, InfluxDB 1.x or VictoriaMetrics.",
        (
            "tsdb",
            "tsdb_path",
            "retention",
            "retention_check_interval",
            "tsdb_timeout",
            "tsdb_pool_size",
            "tsdb_compression",
        ),
    ),
    (
        "InfluxDB",
        "Used when `MONAPI_TSDB=influxdb`.",
        (
            "influxdb_url",
            "influxdb_database",
            "influxdb_retention_policy",
            "influxdb_username",
            "influxdb_password",
        ),
    ),
    (
        "VictoriaMetrics",
        "Used when `MONAPI_TSDB=victoriametrics`.",
        (
            "victoriametrics_url",
            "victoriametrics_select_url",
            "victoriametrics_tenant",
            "victoriametrics_latest_window",
        ),
    ),
    (
        "Redis",
        "Optional: caches, last-seen times and rate limits shared by every worker and instance.",
        ("redis_url", "redis_prefix"),
    ),
    (
        "Ingestion limits",
        "What a push may contain; beyond a size limit the answer is 413.",
        (
            "unknown_fields",
            "max_body_bytes",
            "max_decompressed_bytes",
            "max_points_per_request",
            "timestamp_max_age",
            "timestamp_max_future",
        ),
    ),
    (
        "Rate limits",
        "Beyond a limit the answer is 429 with `Retry-After`. See [Rates](#rates) for the syntax.",
        ("rate_limit_server", "rate_limit_register", "rate_limit_login", "rate_limit_fallback"),
    ),
    (
        "Dashboard and sessions",
        "The web dashboard at `/`.",
        ("session_lifetime", "cookie_secure", "login_max_failures", "login_lockout", "public_url"),
    ),
    (
        "Server (gunicorn)",
        "Read by `monapi serve` and by `gunicorn -c python:monapi.gunicorn_conf`.",
        ("bind", "workers", "threads"),
    ),
    (
        "Logging",
        "",
        ("log_level", "log_format", "log_file", "log_file_max_bytes", "log_file_backups"),
    ),
    ("Metrics", "monapi's own metrics, for Prometheus.", ("metrics_enabled", "metrics_token")),
    (
        "Alerts",
        "Rule evaluation and where notifications go (rules themselves are managed through "
        "`/api/v1/alerts` and the dashboard; see [alerts.md](alerts.md)).",
        (
            "alerts_enabled",
            "alerts_interval",
            "alert_webhook_url",
            "alert_webhook_secret",
            "alert_email_to",
            "alert_notify_max_attempts",
        ),
    ),
    (
        "E-mail (SMTP)",
        "The SMTP server alert e-mail goes through (used when `MONAPI_ALERT_EMAIL_TO` is set).",
        (
            "smtp_host",
            "smtp_port",
            "smtp_security",
            "smtp_username",
            "smtp_password",
            "smtp_from",
            "smtp_timeout",
        ),
    ),
)

_HTTP_URL = "URL: `http://HOST:PORT` or `https://HOST:PORT`, without user or password"
# What the field validators of Settings accept, which the type alone does not say.
ACCEPTS: dict[str, str] = {
    "database_url": "URL: `sqlite:///PATH` or `postgresql://USER@HOST/DB`",
    "influxdb_url": _HTTP_URL,
    "victoriametrics_url": _HTTP_URL,
    "victoriametrics_select_url": _HTTP_URL,
    "public_url": _HTTP_URL,
    "redis_url": "URL: `redis://HOST:PORT/DB`, `rediss://...` or `unix:///PATH`",
    "victoriametrics_tenant": "`accountID` or `accountID:projectID`, for example `0` or `7:1`",
    "bind": "`host:port`",
    "log_level": "`DEBUG`, `INFO`, `WARNING`, `ERROR` (any case)",
}

OTHER_VARIABLES = """\
## Other variables

| Variable | Default | Description |
|---|---|---|
| `PROMETHEUS_MULTIPROC_DIR` | a new temporary directory, removed when gunicorn exits | where \
the gunicorn workers keep the values of monapi's own metrics, which `/metrics` adds up \
(prometheus_client's multiprocess mode). monapi's gunicorn configuration makes a fresh \
directory when the variable is unset. If you set it, give a directory that only this monapi \
uses: the metric files in it are deleted at every start. |
"""

_KIND_NAMES = {
    auth.ADMIN: "admin token",
    auth.SERVER: "server key",
    auth.ENROLL: "enrollment token",
}
_METHODS = ("get", "head", "post", "put", "patch", "delete", "options", "trace")
_SIZE_UNITS = (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))
_DURATION_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


# Rendering values ----------------------------------------------------------------------------


def human_duration(seconds: float) -> str:
    """``2592000`` -> ``30d``, ``3600`` -> ``1h``, ``90`` -> ``90s``, ``0.5`` -> ``500ms``."""
    if seconds == 0:
        return "0s"
    for unit, size in _DURATION_UNITS:
        count = seconds / size
        if count >= 1 and count == int(count):
            # 90 s is clearer than 1.5m; so is 36h than 1.5d: only whole counts of a unit.
            return f"{int(count)}{unit}"
    millis = seconds * 1000
    if millis == int(millis):
        return f"{int(millis)}ms"
    return f"{seconds:g}s"


def human_size(n: int) -> str:
    """``10485760`` -> ``10 MiB``; a number no binary unit divides stays bytes."""
    for unit, size in _SIZE_UNITS:
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


def human_rate(value: object) -> str:
    """A rate limit as written in the environment: ``600/minute``, or ``0`` for none."""
    count, period = parse_rate(value)
    if count == 0:
        return "0 (no limit)"
    names = {1.0: "second", 60.0: "minute", 3600.0: "hour", 86400.0: "day"}
    unit = names.get(period) or human_duration(period)
    return f"{count}/{unit}"


def _validator_funcs(info: FieldInfo) -> set[object]:
    return {m.func for m in info.metadata if isinstance(m, BeforeValidator)}


def setting_kind(name: str, info: FieldInfo) -> str:
    """How a setting's value is written: duration, rate, size, bool, choice, int, float, path,
    secret or text."""
    funcs = _validator_funcs(info)
    if parse_duration in funcs:
        return "duration"
    if parse_rate in funcs:
        return "rate"
    base = _without_none(info.annotation)
    if get_origin(base) is Literal:
        return "choice"
    if base is bool:
        return "bool"
    if base is int:
        return "size" if name.endswith("_bytes") else "int"
    if base is float:
        return "float"
    if base is SecretStr:
        return "secret"
    if isinstance(base, type) and issubclass(base, Path):
        return "path"
    return "text"


def _without_none(annotation: Any) -> Any:
    args = [a for a in get_args(annotation) if a is not type(None)]
    if len(args) == 1 and type(None) in get_args(annotation):
        return args[0]
    return annotation


def _default_clause(description: str) -> tuple[str, str]:
    """Split ``"what it is; default what happens"`` into its two parts (the second may be "")."""
    main, _, default = description.partition("; default ")
    return main, default


def render_default(name: str, info: FieldInfo) -> str:
    """The default of a setting as a person writes it: ``30d``, ``10 MiB``, ``600/minute``;
    for an unset or computed default, what the description says happens."""
    _, said = _default_clause(info.description or "")
    if info.default_factory is not None:
        return said or "computed at start-up"
    value = info.default
    if value is None or value is PydanticUndefined:
        # "default none: what happens" reads "unset: what happens"
        said = said.removeprefix("none")
        if said.startswith((":", " (")) or not said:
            return f"unset{said}"
        return f"unset: {said}"
    kind = setting_kind(name, info)
    if kind == "duration":
        return f"`{human_duration(parse_duration(value))}`"
    if kind == "rate":
        return f"`{human_rate(value)}`"
    if kind == "size":
        return f"{human_size(int(value))} (`{int(value)}`)"
    if kind == "bool":
        return "`true`" if value else "`false`"
    if isinstance(value, float) and value == int(value):
        value = int(value)
    return f"`{value}`"


def _bounds(info: FieldInfo) -> str:
    low = high = ""
    for m in info.metadata:
        if isinstance(m, Ge):
            low = f"{m.ge}"
        elif isinstance(m, Gt):
            low = f"more than {m.gt}"
        elif isinstance(m, Le):
            high = f"{m.le}"
        elif isinstance(m, Lt):
            high = f"less than {m.lt}"
    if low and high and not low.startswith("more"):
        return f"{low} to {high}"
    parts = []
    if low:
        parts.append(low if low.startswith("more") else f"at least {low}")
    if high:
        parts.append(high if high.startswith("less") else f"at most {high}")
    return ", ".join(parts)


def _lengths(info: FieldInfo) -> str:
    low = next((m.min_length for m in info.metadata if isinstance(m, MinLen)), None)
    high = next((m.max_length for m in info.metadata if isinstance(m, MaxLen)), None)
    if low is not None and high is not None:
        return f"{low} to {high} characters"
    if high is not None:
        return f"at most {high} characters"
    if low is not None:
        return f"at least {low} characters"
    return ""


def render_accepts(name: str, info: FieldInfo) -> str:
    """What a setting accepts: its choices, kind and bounds."""
    kind = setting_kind(name, info)
    if name in ACCEPTS:
        text = ACCEPTS[name]
    elif kind == "choice":
        choices = get_args(_without_none(info.annotation))
        text = ", ".join(f"`{c}`" for c in choices)
    elif kind == "bool":
        text = "`true` or `false` (also `1`/`0`, `yes`/`no`, `on`/`off`)"
    elif kind == "duration":
        text = "[duration](#durations)"
    elif kind == "rate":
        text = "[rate](#rates)"
    elif kind == "size":
        text = "integer, bytes"
    elif kind == "int":
        text = "integer"
    elif kind == "float":
        text = "number"
    elif kind == "path":
        text = "path"
    else:
        text = "text"
    extra = [x for x in (_bounds(info), _lengths(info)) if x]
    if extra:
        text += ", " + ", ".join(extra)
    if kind == "secret":
        text += ", **secret**"
    return text


def render_description(info: FieldInfo) -> str:
    """The description without its default clause and without the syntax notes said once above."""
    main, _ = _default_clause(info.description or "")
    for note in (DURATION_HELP, RATE_HELP):
        main = main.removesuffix(": " + note)
    return main


def _cell(text: str) -> str:
    """Text fit for a Markdown table cell."""
    return _words(text).replace("|", "\\|")


# The configuration reference -----------------------------------------------------------------


def check_sections() -> list[str]:
    """Problems of :data:`SECTIONS` against the Settings model: settings in no section, in two,
    or names that are no setting."""
    fields = set(Settings.model_fields)
    seen: list[str] = [name for _, _, names in SECTIONS for name in names]
    problems = []
    missing = sorted(fields - set(seen))
    if missing:
        problems.append("settings in no section of monapi.docgen.SECTIONS: " + ", ".join(missing))
    twice = sorted({n for n in seen if seen.count(n) > 1})
    if twice:
        problems.append("settings in more than one section: " + ", ".join(twice))
    unknown = sorted(set(seen) - fields)
    if unknown:
        problems.append(
            "names in monapi.docgen.SECTIONS that are no setting: " + ", ".join(unknown)
        )
    unknown_accepts = sorted(set(ACCEPTS) - fields)
    if unknown_accepts:
        problems.append(
            "names in monapi.docgen.ACCEPTS that are no setting: " + ", ".join(unknown_accepts)
        )
    return problems


def _anchor(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def configuration_md() -> str:
    """``docs/configuration.md``: every setting, by section."""
    problems = check_sections()
    if problems:
        raise ValueError("; ".join(problems))
    fields = Settings.model_fields
    units = ", ".join(f"`{u}`" for u in _UNIT_SECONDS)
    out = [
        "# Configuration reference",
        "",
        "Generated from `monapi.settings.Settings` by `python -m monapi.docgen`: do not edit it "
        f"by hand, change the settings and run `{REGENERATE}`.",
        "",
        f"monapi reads its settings from environment variables named `{ENV_PREFIX}` and the "
        "setting's name in upper case. The app (every gunicorn worker) and every `monapi` "
        "command read them when they start and check every value: a bad value stops start-up "
        "with a message that names the variable and what it accepts. Values of **secret** "
        "settings are never repeated in those messages.",
        "",
        "## Contents",
        "",
    ]
    out += [f"- [{title}](#{_anchor(title)})" for title, _, _ in SECTIONS]
    out += [
        "- [Other variables](#other-variables)",
        "- [Durations](#durations) and [rates](#rates)",
        "",
    ]
    for title, intro, names in SECTIONS:
        out += [f"## {title}", ""]
        if intro:
            out += [intro, ""]
        out += ["| Variable | Accepts | Default | Description |", "|---|---|---|---|"]
        for name in names:
            info = fields[name]
            row = (
                f"`{ENV_PREFIX}{name.upper()}`",
                render_accepts(name, info),
                render_default(name, info),
                render_description(info),
            )
            out.append("| " + " | ".join(_cell(c) for c in row) + " |")
        out.append("")
    out.append(OTHER_VARIABLES)
    out += [
        "## Durations",
        "",
        f"Durations take {DURATION_HELP}. The units are {units}; a number without a unit is "
        "seconds. Fractions such as `1.5h` are accepted, negative values are not.",
        "",
        "## Rates",
        "",
        f"Rates take {RATE_HELP}. `off` and `none` also mean no limit.",
        "",
    ]
    return "\n".join(out)


# The API reference ---------------------------------------------------------------------------


@contextmanager
def _without_monapi_env() -> Iterator[None]:
    """Defaults only: a MONAPI_* variable of the shell must not change the generated document."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.upper().startswith(ENV_PREFIX)}
    try:
        yield
    finally:
        os.environ.update(saved)


def flask_rule_to_path(rule: str) -> str:
    """``/api/v1/servers/<int:server_id>`` -> ``/api/v1/servers/{server_id}``."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def build_spec() -> tuple[dict[str, Any], dict[tuple[str, str], frozenset[str]]]:
    """The OpenAPI document of an app with default settings, and the key kinds each operation
    (path, method) accepts (an empty set: no key needed)."""
    # Imported here: building the app pulls in every store and view, which only this needs.
    from .app import create_app, shutdown
    from .bootstrap import initialize

    with (
        _without_monapi_env(),
        tempfile.TemporaryDirectory(prefix="monapi-docgen-") as tmp,
    ):
        overrides = {"data_dir": Path(tmp), "log_level": "WARNING"}
        initialize(load_settings(overrides), create_admin=False)
        app = create_app({**overrides, "TESTING": True})
        try:
            response = app.test_client().get("/api/v1/openapi.json")
            if response.status_code != 200:
                raise RuntimeError(f"/api/v1/openapi.json answered {response.status_code}")
            spec: dict[str, Any] = response.get_json()
            kinds: dict[tuple[str, str], frozenset[str]] = {}
            for rule in app.url_map.iter_rules():
                allowed = auth._RULES.get(rule.endpoint)
                if allowed is None:
                    continue
                for method in rule.methods or ():
                    kinds[(flask_rule_to_path(rule.rule), method.lower())] = allowed
        finally:
            shutdown(app)
    return spec, kinds


def _op_anchor(method: str, path: str) -> str:
    return f"op-{method}-{_anchor(path)}"


def _schema_anchor(name: str) -> str:
    return f"schema-{_anchor(name)}"


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _code(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if text == "":
        return '`""`'
    fence = "``" if "`" in text else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _number(value: float) -> str:
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        return str(int(value))
    return str(value)


def _alternatives(schema: Mapping[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """The non-null alternatives of an anyOf/oneOf, and whether null was one of them."""
    for key in ("anyOf", "oneOf"):
        if key in schema:
            alts = [a for a in schema[key] if a.get("type") != "null"]
            return alts, len(alts) < len(schema[key])
    return [], False


def schema_type(schema: Mapping[str, Any]) -> str:
    """A JSON schema's type in words, with $refs linked to the Schemas section."""
    if "$ref" in schema:
        name = _ref_name(schema["$ref"])
        return f"[{name}](#{_schema_anchor(name)})"
    if "const" in schema:
        return _code(schema["const"])
    alts, nullable = _alternatives(schema)
    if alts or nullable:
        if alts and all(set(a) == {"format"} for a in alts):
            # anyOf [{format: ipv4}, {format: ipv6}] next to a type: one type, several formats.
            formats = " or ".join(a["format"] for a in alts)
            text = f"{schema.get('type', 'string')} ({formats})"
        else:
            seen: list[str] = []
            for alt in alts:
                t = schema_type(alt)
                if t not in seen:
                    seen.append(t)
            text = " or ".join(seen)
        return f"{text} or null" if nullable else text
    kind = schema.get("type")
    if isinstance(kind, list):
        return " or ".join(str(k) for k in kind)
    if kind == "array" and isinstance(schema.get("prefixItems"), list):
        return "[" + ", ".join(schema_type(p) for p in schema["prefixItems"]) + "]"
    if kind == "array":
        items = schema.get("items")
        return f"array of {schema_type(items)}" if isinstance(items, dict) else "array"
    if kind == "object":
        values = schema.get("additionalProperties")
        if not schema.get("properties") and isinstance(values, dict) and values:
            return f"object of {schema_type(values)}"
        return "object"
    if kind is None:
        return "any"
    if "format" in schema:
        return f"{kind} ({schema['format']})"
    return str(kind)


def schema_constraints(schema: Mapping[str, Any]) -> list[str]:
    """What a JSON schema demands beyond its type, in words."""
    alts, _ = _alternatives(schema)
    out: list[str] = []
    for alt in alts:
        if "$ref" not in alt:
            out += [c for c in schema_constraints(alt) if c not in out]
    if "enum" in schema:
        out.append("one of " + ", ".join(_code(v) for v in schema["enum"]))
    low = schema.get("minimum")
    high = schema.get("maximum")
    if low is not None and high is not None:
        out.append(f"{_number(low)} to {_number(high)}")
    elif low is not None:
        out.append(f"at least {_number(low)}")
    elif high is not None:
        out.append(f"at most {_number(high)}")
    if "exclusiveMinimum" in schema:
        out.append(f"more than {_number(schema['exclusiveMinimum'])}")
    if "exclusiveMaximum" in schema:
        out.append(f"less than {_number(schema['exclusiveMaximum'])}")
    for low_key, high_key, one, many in (
        ("minLength", "maxLength", "character", "characters"),
        ("minItems", "maxItems", "item", "items"),
        ("minProperties", "maxProperties", "entry", "entries"),
    ):
        lo, hi = schema.get(low_key), schema.get(high_key)
        if low_key == "minItems" and len(schema.get("prefixItems", ())) == lo == hi:
            continue  # a tuple: its type says how many
        if lo is not None and lo == hi:
            out.append(f"exactly {lo} {one if lo == 1 else many}")
        elif lo is not None and hi is not None:
            out.append(f"{lo} to {hi} {many}")
        elif hi is not None:
            out.append(f"at most {hi} {one if hi == 1 else many}")
        elif lo is not None:
            out.append(f"at least {lo} {one if lo == 1 else many}")
    if "pattern" in schema:
        out.append("matches " + _code(schema["pattern"]))
    names = schema.get("propertyNames")
    if isinstance(names, dict):
        if "pattern" in names:
            out.append("keys match " + _code(names["pattern"]))
        banned = names.get("not", {}).get("enum")
        if banned:
            out.append("keys not " + ", ".join(_code(v) for v in banned))
    for key, label in (("additionalProperties", "values"), ("items", "items")):
        inner = schema.get(key)
        if isinstance(inner, dict) and "$ref" not in inner and not inner.get("properties"):
            said = schema_constraints(inner)
            if said:
                out.append(f"{label}: " + ", ".join(said))
    if schema.get("default") is not None:
        out.append("default " + _code(schema["default"]))
    examples = schema.get("examples")
    if isinstance(examples, list) and examples:
        out.append("example " + _code(examples[0]))
    return out


def _inline_object(schema: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]] | None:
    """The inline object (not a $ref) a property holds, directly, as array items or nullable."""
    if schema.get("properties"):
        return "", schema
    alts, _ = _alternatives(schema)
    if len(alts) == 1:
        return _inline_object(alts[0])
    items = schema.get("items")
    if schema.get("type") == "array" and isinstance(items, dict):
        found = _inline_object(items)
        if found is not None:
            return "[]" + found[0], found[1]
    return None


def object_table(schema: Mapping[str, Any], *, nested: bool = True, prefix: str = "") -> list[str]:
    """A table of an object schema's properties; inline nested objects one level down."""
    properties: Mapping[str, Any] = schema.get("properties", {})
    required = set(schema.get("required", []))
    out = [
        "| Field | Type | Required | Constraints | Description |",
        "|---|---|---|---|---|",
    ]
    later: list[str] = []
    for name, prop in properties.items():
        row = (
            _code(prefix + name),
            schema_type(prop),
            "yes" if name in required else "no",
            "; ".join(schema_constraints(prop)),
            prop.get("description", ""),
        )
        out.append("| " + " | ".join(_cell(c) for c in row) + " |")
        inner = _inline_object(prop)
        if nested and inner is not None:
            suffix, obj = inner
            path = f"{prefix}{name}{suffix}"
            closed = ", no others" if obj.get("additionalProperties") is False else ""
            later += ["", f"Fields of {_code(path)}{closed}:", ""]
            later += object_table(obj, nested=False, prefix=path + ".")
    if nested and schema.get("additionalProperties") is False:
        out += ["", "No other fields are accepted."]
    return out + later


def schema_block(schema: Mapping[str, Any]) -> list[str]:
    """A schema: its field table if it is an object, else its type and constraints."""
    if schema.get("properties"):
        return object_table(schema)
    alts, _ = _alternatives(schema)
    if alts and all(a.get("properties") or "$ref" in a for a in alts):
        out = ["One of:", ""]
        for i, alt in enumerate(alts, 1):
            if "$ref" in alt:
                out += [f"{i}. {schema_type(alt)}", ""]
            else:
                title = alt.get("title") or alt.get("description") or "An object"
                out += [f"{i}. {title}:", ""]
                out += ["   " + line if line else "" for line in object_table(alt)]
                out.append("")
        return out[:-1]
    line = schema_type(schema)
    constraints = schema_constraints(schema)
    if constraints:
        line += " (" + "; ".join(constraints) + ")"
    return [line]


def _who(
    operation: Mapping[str, Any],
    kinds: frozenset[str] | None,
    schemes: Mapping[str, Mapping[str, Any]],
) -> str:
    security = operation.get("security") or []
    names = [name for requirement in security for name in requirement]
    if (kinds is not None and not kinds) or (kinds is None and not names):
        return "anyone; no API key needed."
    who = " or ".join(_KIND_NAMES.get(k, k) for k in auth.KINDS if k in kinds) if kinds else "a key"
    ways = [_scheme_words(schemes.get(name, {}), name) for name in names]
    if not ways:
        return f"{who}."
    sent = ", ".join(ways[:-1]) + " or " + ways[-1] if len(ways) > 1 else ways[0]
    return f"{who}, sent as {sent}."


def _scheme_words(scheme: Mapping[str, Any], name: str) -> str:
    kind = scheme.get("type")
    if kind == "http" and scheme.get("scheme") == "bearer":
        return "`Authorization: Bearer <key>`"
    if kind == "http" and scheme.get("scheme") == "basic":
        return "HTTP Basic auth (the key as the password)"
    if kind == "apiKey" and scheme.get("in") == "header":
        return f"`{scheme.get('name')}: <key>`"
    if kind == "apiKey" and scheme.get("in") == "query":
        return f"the query parameter `{scheme.get('name')}`"
    return f"`{name}`"


_CODE_SPAN = re.compile(r"(``.+?``|`[^`]+`)")


def _words(text: object) -> str:
    """One line of Markdown text: flask-openapi3 turns docstring line breaks into ``<br/>``, and
    a ``<key>`` outside a code span would be taken for an HTML tag and vanish."""
    line = " ".join(str(text).replace("<br/>", " ").split())
    parts = _CODE_SPAN.split(line)
    return "".join(p if i % 2 else p.replace("<", "&lt;") for i, p in enumerate(parts))


def _text(operation: Mapping[str, Any]) -> str:
    summary = _words(operation.get("summary", ""))
    description = _words(operation.get("description", ""))
    if summary and description and not summary.endswith((".", ":", "!", "?")):
        # flask-openapi3 cuts a docstring after its first line: join the sentence back up.
        return f"{summary} {description}"
    return "\n\n".join(t for t in (summary, description) if t)


def _parameters(operation: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    params = operation.get("parameters", [])
    for where in ("path", "query", "header", "cookie"):
        here = [p for p in params if p.get("in") == where]
        if not here:
            continue
        out += [
            f"**{where.capitalize()} parameters**",
            "",
            "| Name | Type | Required | Constraints | Description |",
            "|---|---|---|---|---|",
        ]
        for p in here:
            schema = p.get("schema", {})
            row = (
                _code(p["name"]),
                schema_type(schema),
                "yes" if p.get("required") else "no",
                "; ".join(schema_constraints(schema)),
                p.get("description") or schema.get("description", ""),
            )
            out.append("| " + " | ".join(_cell(c) for c in row) + " |")
        out.append("")
    return out


def _request_body(operation: Mapping[str, Any], schemas: Mapping[str, Any]) -> list[str]:
    body = operation.get("requestBody")
    if not body:
        return []
    required = "required" if body.get("required") else "optional"
    out = [f"**Request body** ({required})", ""]
    if body.get("description"):
        out += [_words(body["description"]), ""]
    for content_type, content in sorted(body.get("content", {}).items()):
        schema = content.get("schema", {})
        if "$ref" in schema:
            # The body's own fields here, its nested schemas linked: one level, readable.
            resolved = schemas.get(_ref_name(schema["$ref"]), {})
            out += [f"{_code(content_type)}: {schema_type(schema)}", ""]
            out += [*schema_block(resolved), ""]
            continue
        block = schema_block(schema)
        if len(block) > 1:
            out += [f"{_code(content_type)}:", "", *block, ""]
        else:
            out += [f"{_code(content_type)}: {block[0]}", ""]
        for name, example in sorted(content.get("examples", {}).items()):
            label = example.get("summary") or name
            out += [
                f"Example, {label}:",
                "",
                "```json",
                json.dumps(example.get("value"), indent=2, sort_keys=True, ensure_ascii=False),
                "```",
                "",
            ]
    return out


def _responses(operation: Mapping[str, Any]) -> list[str]:
    out = [
        "**Responses**",
        "",
        "| Status | Description | Body |",
        "|---|---|---|",
    ]
    responses: Mapping[str, Any] = operation.get("responses", {})
    for status in sorted(responses, key=lambda s: (not s.isdigit(), s)):
        response = responses[status]
        bodies = []
        for content_type, content in sorted(response.get("content", {}).items()):
            text = schema_type(content.get("schema", {}))
            if content_type != "application/json":
                text = f"{_code(content_type)}: {text}"
            bodies.append(text)
        row = (status, response.get("description", ""), "; ".join(bodies) or "none")
        out.append("| " + " | ".join(_cell(c) for c in row) + " |")
    out.append("")
    return out


def operations(spec: Mapping[str, Any]) -> list[tuple[str, str, Mapping[str, Any]]]:
    """Every (method, path, operation) of the document, sorted by path, then method."""
    found = []
    for path in sorted(spec.get("paths", {})):
        item = spec["paths"][path]
        for method in _METHODS:
            if method in item:
                found.append((method, path, item[method]))
    return found


def api_md(spec: Mapping[str, Any], kinds: Mapping[tuple[str, str], frozenset[str]]) -> str:
    """``docs/api.md``: one section per tag, one subsection per operation, then the schemas."""
    schemes: Mapping[str, Mapping[str, Any]] = spec.get("components", {}).get("securitySchemes", {})
    schemas: Mapping[str, Any] = spec.get("components", {}).get("schemas", {})
    tags = [(t["name"], t.get("description", "")) for t in spec.get("tags", [])]
    by_tag: dict[str, list[tuple[str, str, Mapping[str, Any]]]] = {}
    for method, path, op in operations(spec):
        by_tag.setdefault((op.get("tags") or ["other"])[0], []).append((method, path, op))
    known = {name for name, _ in tags}
    tags += [(name, "") for name in sorted(by_tag) if name not in known]
    tags = [(name, desc) for name, desc in tags if name in by_tag]

    out = [
        "# API reference",
        "",
        "Generated from monapi's OpenAPI document by `python -m monapi.docgen`: do not edit it by "
        f"hand, change the code and run `{REGENERATE}`. The document itself is "
        "[openapi.json](openapi.json) (for tools; a running monapi serves it at "
        "`/api/v1/openapi.json`, with Swagger UI at `/api/v1/swagger`).",
        "",
        _words(spec.get("info", {}).get("description", "")),
        "",
        "## Keys",
        "",
        "Three kinds of key, each shown once when it is made: admin tokens (`mka_...`), server "
        "keys (`mks_...`, one per server) and enrollment tokens (`mke_...`, for registering "
        "servers). Each operation below says which kinds it takes. No key, or an invalid, "
        "revoked or expired one: 401. A valid key of the wrong kind, or a server key for "
        "another server: 403. A key is sent as:",
        "",
        "| Scheme | How | Note |",
        "|---|---|---|",
    ]
    for name in sorted(schemes):
        scheme = schemes[name]
        how = _scheme_words(scheme, name)
        note = scheme.get("description", "")
        if note and note in how:  # bearer's description is what "how" says already
            note = ""
        row = (_code(name), how, note)
        out.append("| " + " | ".join(_cell(c) for c in row) + " |")
    out += ["", "## Contents", ""]
    for tag, desc in tags:
        out.append(f"- [{tag}](#tag-{_anchor(tag)})" + (f": {_words(desc)}" if desc else ""))
        for method, path, _ in by_tag[tag]:
            out.append(f"  - [`{method.upper()} {path}`](#{_op_anchor(method, path)})")
    out += ["- [Schemas](#schemas)", ""]

    for tag, desc in tags:
        out += [f'<a id="tag-{_anchor(tag)}"></a>', "", f"## {tag}", ""]
        if desc:
            out += [_words(desc), ""]
        for method, path, op in by_tag[tag]:
            out += [
                f'<a id="{_op_anchor(method, path)}"></a>',
                "",
                f"### `{method.upper()} {path}`",
                "",
            ]
            text = _text(op)
            if text:
                out += [text, ""]
            out += [f"**Who may call:** {_who(op, kinds.get((path, method)), schemes)}", ""]
            out += _parameters(op)
            out += _request_body(op, schemas)
            out += _responses(op)

    out += ["## Schemas", ""]
    for name in sorted(schemas):
        schema = schemas[name]
        out += [f'<a id="{_schema_anchor(name)}"></a>', "", f"### {name}", ""]
        if schema.get("description"):
            out += [_words(schema["description"]), ""]
        out += [*schema_block(schema), ""]
    return "\n".join(out).rstrip("\n") + "\n"


def openapi_json(spec: Mapping[str, Any]) -> str:
    """``docs/openapi.json``: the document, pretty-printed with sorted keys."""
    return json.dumps(spec, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


# Command line --------------------------------------------------------------------------------


def generate() -> dict[str, str]:
    """Every generated file's name (in docs/) and content."""
    spec, kinds = build_spec()
    return {
        CONFIGURATION_MD: configuration_md(),
        API_MD: api_md(spec, kinds),
        OPENAPI_JSON: openapi_json(spec),
    }


def stale_files(out_dir: Path, files: Mapping[str, str]) -> list[str]:
    """The generated files missing from ``out_dir`` or different there."""
    stale = []
    for name, content in files.items():
        path = out_dir / name
        if not path.is_file() or path.read_text(encoding="utf-8") != content:
            stale.append(name)
    return stale


def main(argv: Sequence[str] | None = None) -> int:
    """Write the generated documents, or with --check tell whether they are current."""
    parser = argparse.ArgumentParser(
        prog="python -m monapi.docgen",
        description="Generate docs/configuration.md, docs/api.md and docs/openapi.json.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 naming the files that are missing or out of date",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="directory of the generated files (default: docs, which must exist)",
    )
    args = parser.parse_args(argv)
    out_dir: Path = args.out_dir if args.out_dir is not None else Path("docs")
    if args.out_dir is None and not out_dir.is_dir():
        parser.error("no docs/ directory here: run it from the repository root, or give --out-dir")
    files = generate()
    if args.check:
        stale = stale_files(out_dir, files)
        if stale:
            names = ", ".join(str(out_dir / name) for name in stale)
            print(f"out of date: {names}; run '{REGENERATE}'", file=sys.stderr)
            return 1
        return 0
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (out_dir / name).write_text(content, encoding="utf-8")
        print(out_dir / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
