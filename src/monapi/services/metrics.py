"""Reading points back: range queries with a step and an aggregation, latest values, overview."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy.orm import Session

from ..errors import ApiError
from ..fields import FieldSpec, get_registry
from ..models import Server
from ..settings import parse_duration
from ..tsdb import LatestValue, TimeSeriesStore, Value
from .servers import last_seen_of, status_of, store

MAX_POINTS_PER_SERIES = 11_000
TARGET_POINTS = 1_000
MAX_RANGE_S = 5 * 366 * 86400
NICE_STEPS = [
    1,
    2,
    5,
    10,
    15,
    30,
    60,
    120,
    300,
    600,
    900,
    1800,
    3600,
    7200,
    10800,
    21600,
    43200,
    86400,
    2 * 86400,
    7 * 86400,
]
_REL_RE = re.compile(r"^-\s*(.+)$")
# The values the overview shows for each server: label -> (measurement, field, how to reduce)
OVERVIEW_KEYS = {
    "cpu.usage_percent": ("cpu", "usage_percent", "first"),
    "mem.used_percent": ("mem", "used_percent", "first"),
    "swap.used_percent": ("swap", "used_percent", "first"),
    "disk.used_percent": ("disk", "used_percent", "max"),
    "system.load1": ("system", "load1", "first"),
    "system.uptime": ("system", "uptime", "first"),
}


def parse_time(value: str, now: float, name: str) -> float:
    """'now', '-1h' (relative), RFC 3339 or epoch seconds, to epoch seconds."""
    v = value.strip()
    if v == "now":
        return now
    m = _REL_RE.match(v)
    if m:
        try:
            return now - parse_duration(m.group(1))
        except ValueError:
            raise ApiError(
                400,
                f"{name}={value!r}: relative times look like -15m, -1h, -7d",
                details=[{"location": f"query.{name}", "reason": "bad duration"}],
            ) from None
    try:
        seconds = float(v)
    except ValueError:
        pass
    else:
        if math.isfinite(seconds):
            return seconds
    try:
        dt = datetime.fromisoformat(v)
    except ValueError:
        raise ApiError(
            400,
            f"{name}={value!r} is not a time: use now, -1h, RFC 3339 or epoch seconds",
            details=[{"location": f"query.{name}", "reason": "not a time"}],
        ) from None
    if dt.tzinfo is None:
        raise ApiError(
            400,
            f"{name}={value!r} has no time zone (add Z or +00:00)",
            details=[{"location": f"query.{name}", "reason": "no time zone"}],
        )
    return dt.timestamp()


def auto_step(range_s: float) -> int:
    """The smallest 'nice' step that keeps a series under about 1,000 points."""
    want = range_s / TARGET_POINTS
    for s in NICE_STEPS:
        if s >= want:
            return s
    return math.ceil(want / 86400) * 86400


def resolve_fields(session: Session, spec: str | None) -> list[FieldSpec]:
    """Field names from the query (measurement.field; bare names are system.<name>), or 400."""
    specs = get_registry().specs(session)
    if not spec:
        return [f for m in specs.values() for f in m.values() if f.enabled]
    out = []
    unknown = []
    for raw in spec.split(","):
        name = raw.strip()
        if not name:
            continue
        meas, dot, fld = name.partition(".")
        if not dot:
            meas, fld = "system", name
        found = specs.get(meas, {}).get(fld)
        if found is None:
            unknown.append(name)
        else:
            out.append(found)
    if unknown:
        raise ApiError(
            400,
            f"unknown field(s): {', '.join(unknown[:10])}",
            details=[
                {"location": "query.fields", "reason": f"unknown field {u}"} for u in unknown[:100]
            ],
        )
    if not out:
        raise ApiError(
            400,
            "fields is empty",
            details=[{"location": "query.fields", "reason": "no field named"}],
        )
    return out


def _present(spec: FieldSpec | None, value: Value | None, agg: str) -> Value | None:
    if value is None:
        return None
    if agg == "count":
        return int(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if spec is not None and agg in ("last", "min", "max"):
        # Engines that keep numbers as doubles (VictoriaMetrics) give 1.0 for true and 7.0
        # for 7: answer in the field's type, as the embedded store does.
        if spec.type == "bool":
            return bool(value)
        if spec.type == "int" and isinstance(value, float) and value.is_integer():
            return int(value)
    if (
        spec is not None
        and agg == "sum"
        and spec.type in ("int", "bool")
        and isinstance(value, float)
        and value.is_integer()
    ):
        return int(value)
    return value


def query_metrics(
    session: Session,
    server: Server,
    *,
    fields: str | None,
    start: str,
    end: str,
    step: str | None,
    agg: str,
    tags: list[str],
) -> dict[str, Any]:
    """Range query for one server."""
    now = time.time()
    t0 = parse_time(start, now, "start")
    t1 = parse_time(end, now, "end")
    if t1 <= t0:
        raise ApiError(
            400,
            "end must be after start",
            details=[{"location": "query.end", "reason": "end <= start"}],
        )
    if t1 - t0 > MAX_RANGE_S:
        raise ApiError(
            400,
            "range longer than 5 years",
            details=[{"location": "query.start", "reason": "range too long"}],
        )
    if step is None:
        step_s = auto_step(t1 - t0)
    else:
        try:
            step_s = int(parse_duration(step))
        except ValueError as exc:
            raise ApiError(
                400,
                f"step={step!r}: {exc}",
                details=[{"location": "query.step", "reason": str(exc)}],
            ) from None
        if step_s < 1:
            raise ApiError(
                400,
                "step must be at least 1s",
                details=[{"location": "query.step", "reason": "step < 1s"}],
            )
        if (t1 - t0) / step_s > MAX_POINTS_PER_SERIES:
            raise ApiError(
                400,
                f"step {step} gives more than {MAX_POINTS_PER_SERIES} points per series;"
                f" use a step of at least {math.ceil((t1 - t0) / MAX_POINTS_PER_SERIES)}s",
                details=[{"location": "query.step", "reason": "too many points"}],
            )
    tag_filter = {}
    for item in tags:
        k, eq, v = item.partition("=")
        if not eq:
            raise ApiError(
                400,
                f"tag={item!r} must be key=value",
                details=[{"location": "query.tag", "reason": "not key=value"}],
            )
        tag_filter[k] = v
    wanted = resolve_fields(session, fields)
    if agg not in ("last", "count"):
        if not fields:
            # The default set: the fields this aggregation can reduce, not a 400 for the others.
            wanted = [f for f in wanted if f.type != "string"]
        for f in wanted:
            if f.type == "string":
                raise ApiError(
                    400,
                    f"agg={agg} needs a numeric field; {f.measurement}.{f.name} "
                    "is a string (use last or count)",
                    details=[{"location": "query.agg", "reason": "string field"}],
                )
    by_key = {(f.measurement, f.name): f for f in wanted}
    step_ns = step_s * 1_000_000_000
    series = store().query(
        server.id, list(by_key), int(t0 * 1e9), int(t1 * 1e9), step_ns, agg, tag_filter or None
    )
    out = []
    for s in series:
        spec = by_key.get((s.measurement, s.field))
        out.append(
            {
                "measurement": s.measurement,
                "field": s.field,
                "tags": s.tags,
                "unit": spec.unit if spec else "",
                "points": [(ts // 1_000_000_000, _present(spec, v, agg)) for ts, v in s.points],
            }
        )
    return {
        "server_id": server.id,
        "start": datetime.fromtimestamp(t0, UTC),
        "end": datetime.fromtimestamp(t1, UTC),
        "step": step_s,
        "agg": agg,
        "series": out,
    }


def _specs_flat(session: Session) -> dict[tuple[str, str], FieldSpec]:
    return {
        (f.measurement, f.name): f
        for m in get_registry().specs(session).values()
        for f in m.values()
    }


def latest_dict(session: Session, server: Server) -> dict[str, Any]:
    """Newest value of every series of a server."""
    specs = _specs_flat(session)
    values = store().latest([server.id])[server.id]
    return {
        "server_id": server.id,
        "values": [_latest_item(specs, lv) for lv in values],
    }


def _latest_item(specs: dict[tuple[str, str], FieldSpec], lv: LatestValue) -> dict[str, Any]:
    spec = specs.get((lv.measurement, lv.field))
    return {
        "measurement": lv.measurement,
        "field": lv.field,
        "tags": lv.tags,
        "unit": spec.unit if spec else "",
        "value": _present(spec, lv.value, "last"),
        "timestamp": datetime.fromtimestamp(lv.ts / 1e9, UTC),
    }


class OverviewServer(Protocol):
    """What the overview reads of a server: a ``Server`` or a row of these columns."""

    @property
    def id(self) -> int: ...
    @property
    def hostname(self) -> str: ...
    @property
    def enabled(self) -> bool: ...
    @property
    def interval(self) -> int: ...
    @property
    def last_seen(self) -> float | None: ...
    @property
    def labels(self) -> dict[str, str] | None: ...


OVERVIEW_SELECTORS = list(dict.fromkeys((m, f) for m, f, _ in OVERVIEW_KEYS.values()))


def latest_of(
    st: TimeSeriesStore, server_ids: Sequence[int], selectors: Sequence[tuple[str, str]]
) -> Iterator[tuple[int, list[LatestValue]]]:
    """(server id, its ``st.latest`` values of the (measurement, field) pairs of ``selectors``)
    for each distinct server id, in order. From the store's ``latest_of`` when it has one (the
    embedded store: reads just those, a batch of servers at a time); else one ``latest``."""
    method = getattr(st, "latest_of", None)
    if method is not None:
        got: Iterator[tuple[int, list[LatestValue]]] = method(server_ids, selectors)
        return got
    keep = set(selectors)
    ids = list(dict.fromkeys(server_ids))
    every = st.latest(ids)
    return iter(
        [
            (sid, [lv for lv in every.get(sid, []) if (lv.measurement, lv.field) in keep])
            for sid in ids
        ]
    )


_WANTED = {(m, f): (label, how) for label, (m, f, how) in OVERVIEW_KEYS.items()}


def overview_values(latest_values: Iterable[LatestValue]) -> dict[str, Value | None]:
    """The overview's values from a server's latest values (any others are ignored): the first
    series of each key, the largest for "max" keys (the fullest disk)."""
    values: dict[str, Value | None] = dict.fromkeys(OVERVIEW_KEYS)
    for lv in latest_values:
        hit = _WANTED.get((lv.measurement, lv.field))
        if hit is None:
            continue
        label, how = hit
        cur = values[label]
        if cur is None or (
            how == "max"
            and isinstance(lv.value, int | float)
            and isinstance(cur, int | float)
            and lv.value > cur
        ):
            values[label] = lv.value
    return values


def overview_items(
    servers: Sequence[OverviewServer], pending: dict[int, float]
) -> list[dict[str, Any]]:
    """Status and key latest values of each server (``servers``: distinct)."""
    # Each server's values are used as they come, so that only a batch of them is alive at once.
    latest = latest_of(store(), [s.id for s in servers], OVERVIEW_SELECTORS)
    now = time.time()
    items = []
    for s, (sid, latest_values) in zip(servers, latest, strict=True):
        assert sid == s.id
        values = overview_values(latest_values)
        seen = last_seen_of(s, pending)
        items.append(
            {
                "id": s.id,
                "hostname": s.hostname,
                "status": status_of(seen, s.interval, now),
                "enabled": s.enabled,
                "last_seen": datetime.fromtimestamp(seen, UTC) if seen is not None else None,
                "labels": s.labels or {},
                "values": values,
            }
        )
    return items
