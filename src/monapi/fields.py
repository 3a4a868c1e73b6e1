"""The dynamic field configuration: defaults, names, and a per-process cache kept fresh."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

import msgspec
from flask import Flask, current_app
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import db
from .cache import get_coordinator, request_versions
from .models import FieldConfig

EXT = "monapi.fields"
FIELD_TYPES = ("float", "int", "bool", "string")
MEASUREMENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")
FIELD_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
# Label and tag values: no control characters (C0, DEL, C1) and no line or paragraph separators.
TEXT_VALUE_RE = re.compile(r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]*$")
MAX_TEXT_VALUE = 256
MEASUREMENT_HELP = "1-64 characters: letters, digits, '_' or '-', not starting with a digit"
FIELD_NAME_HELP = "1-128 characters: letters, digits, '_', '.' or '-'"


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """What the validator needs to know about one field."""

    measurement: str
    name: str
    type: str
    min: float | None
    max: float | None
    enabled: bool
    unit: str


# The metrics monapi-agent collects. (measurement, name, type, unit, min, max, description)
_PCT = (0.0, 100.0)
DEFAULT_FIELDS: list[tuple[str, str, str, str, float | None, float | None, str]] = [
    ("cpu", "usage_percent", "float", "%", *_PCT, "CPU busy, all cores"),
    ("cpu", "user_percent", "float", "%", *_PCT, "CPU time in user space"),
    ("cpu", "system_percent", "float", "%", *_PCT, "CPU time in the kernel"),
    ("cpu", "iowait_percent", "float", "%", *_PCT, "CPU time waiting for I/O"),
    ("cpu", "steal_percent", "float", "%", *_PCT, "CPU time stolen by the hypervisor"),
    ("cpu", "idle_percent", "float", "%", *_PCT, "CPU idle"),
    ("system", "load1", "float", "", 0.0, None, "load average over 1 minute"),
    ("system", "load5", "float", "", 0.0, None, "load average over 5 minutes"),
    ("system", "load15", "float", "", 0.0, None, "load average over 15 minutes"),
    ("system", "uptime", "int", "s", 0.0, None, "seconds since boot"),
    ("system", "processes", "int", "", 0.0, None, "number of processes"),
    ("mem", "total", "int", "B", 0.0, None, "physical memory"),
    ("mem", "used", "int", "B", 0.0, None, "memory in use"),
    ("mem", "available", "int", "B", 0.0, None, "memory available to new processes"),
    ("mem", "used_percent", "float", "%", *_PCT, "memory in use"),
    ("swap", "total", "int", "B", 0.0, None, "swap space"),
    ("swap", "used", "int", "B", 0.0, None, "swap in use"),
    ("swap", "used_percent", "float", "%", *_PCT, "swap in use"),
    ("disk", "total", "int", "B", 0.0, None, "file-system size (tag mount)"),
    ("disk", "used", "int", "B", 0.0, None, "file-system space used (tag mount)"),
    ("disk", "free", "int", "B", 0.0, None, "file-system space free (tag mount)"),
    ("disk", "used_percent", "float", "%", *_PCT, "file-system space used (tag mount)"),
    ("diskio", "read_bytes_per_sec", "float", "B/s", 0.0, None, "bytes read (tag device)"),
    ("diskio", "write_bytes_per_sec", "float", "B/s", 0.0, None, "bytes written (tag device)"),
    ("diskio", "reads_per_sec", "float", "1/s", 0.0, None, "read operations (tag device)"),
    ("diskio", "writes_per_sec", "float", "1/s", 0.0, None, "write operations (tag device)"),
    ("net", "bytes_recv_per_sec", "float", "B/s", 0.0, None, "bytes received (tag interface)"),
    ("net", "bytes_sent_per_sec", "float", "B/s", 0.0, None, "bytes sent (tag interface)"),
    ("net", "packets_recv_per_sec", "float", "1/s", 0.0, None, "packets received"),
    ("net", "packets_sent_per_sec", "float", "1/s", 0.0, None, "packets sent"),
    ("net", "err_in_per_sec", "float", "1/s", 0.0, None, "receive errors (tag interface)"),
    ("net", "err_out_per_sec", "float", "1/s", 0.0, None, "transmit errors (tag interface)"),
    ("net", "drop_in_per_sec", "float", "1/s", 0.0, None, "incoming packets dropped"),
    ("net", "drop_out_per_sec", "float", "1/s", 0.0, None, "outgoing packets dropped"),
]


def seed_default_fields(session: Session) -> int:
    """Create the default fields that do not exist yet; returns how many were added."""
    existing = {
        (m, n) for m, n in session.execute(select(FieldConfig.measurement, FieldConfig.name))
    }
    added = 0
    for meas, name, ftype, unit, lo, hi, desc in DEFAULT_FIELDS:
        if (meas, name) in existing:
            continue
        session.add(
            FieldConfig(
                measurement=meas,
                name=name,
                type=ftype,
                unit=unit,
                min_value=lo,
                max_value=hi,
                description=desc,
                enabled=True,
                discovered=False,
            )
        )
        added += 1
    if added:
        # Seeding runs before any worker serves, so the shared counter is enough here.
        session.execute(
            text("UPDATE state_versions SET version = version + 1 WHERE name = 'fields'")
        )
    return added


_decode_specs = msgspec.json.Decoder(dict[str, dict[str, FieldSpec]]).decode


class FieldRegistry:
    """All fields by measurement then name, reloaded when the 'fields' version moves."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._version = -1
        self._specs: dict[str, dict[str, FieldSpec]] = {}

    def specs(self, session: Session | None = None) -> dict[str, dict[str, FieldSpec]]:
        """The current specs; the database is read only when the version moved."""
        version = request_versions().get("fields", 0)
        if version == self._version:
            return self._specs
        coord = get_coordinator()
        raw = coord.shared_get("fields", str(version), "all")
        specs: dict[str, dict[str, FieldSpec]] | None = None
        if raw is not None:
            try:
                specs = _decode_specs(raw)
            except msgspec.DecodeError:
                specs = None
        if specs is None:
            rows = (session or db.session()).execute(select(FieldConfig)).scalars().all()
            specs = {}
            for f in rows:
                specs.setdefault(f.measurement, {})[f.name] = FieldSpec(
                    f.measurement, f.name, f.type, f.min_value, f.max_value, f.enabled, f.unit
                )
            coord.shared_set("fields", str(version), "all", msgspec.json.encode(specs))
        with self._lock:
            self._specs, self._version = specs, version
        return specs

    def discover(self, session: Session, found: dict[tuple[str, str], str]) -> None:
        """Create discovered fields (inferred types); a concurrent creation is not an error."""
        for (meas, name), ftype in found.items():
            try:
                with session.begin_nested():
                    session.add(
                        FieldConfig(
                            measurement=meas,
                            name=name,
                            type=ftype,
                            unit="",
                            description="",
                            enabled=True,
                            discovered=True,
                        )
                    )
            except IntegrityError:
                pass
        get_coordinator().bump(session, "fields")
        session.commit()


def init_app(app: Flask) -> None:
    app.extensions[EXT] = FieldRegistry()


def get_registry() -> FieldRegistry:
    reg: FieldRegistry = current_app.extensions[EXT]
    return reg
