"""Pure helpers for drawing: sparkline paths, value formatting. No I/O, tested on plain data."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from ..tsdb import Series, Value

SPARK_WIDTH = 100
SPARK_HEIGHT = 24


def merge_max(series: Iterable[Series]) -> list[tuple[int, float]]:
    """Several series (disk usage of each mount) as one: the highest value of each bucket."""
    best: dict[int, float] = {}
    for s in series:
        for ts, v in s.points:
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                continue
            if ts not in best or v > best[ts]:
                best[ts] = float(v)
    return sorted(best.items())


def spark_path(
    points: Sequence[tuple[int, float]],
    start_ns: int,
    end_ns: int,
    step_ns: int,
    *,
    lo: float = 0.0,
    hi: float = 100.0,
    width: int = SPARK_WIDTH,
    height: int = SPARK_HEIGHT,
) -> str:
    """An SVG path (``d``) through the points, x from the time range, y from [lo, hi] (values
    outside are clamped). A gap of more than one step breaks the line, so a server that was
    away shows a hole rather than a straight line across it. A lone point is a short dash."""
    if not points or end_ns <= start_ns:
        return ""
    span = end_ns - start_ns
    scale = hi - lo if hi > lo else 1.0
    parts: list[str] = []
    prev_ts: int | None = None
    run = 0
    for ts, v in points:
        x = (ts - start_ns) / span * width
        y = height - (min(max(v, lo), hi) - lo) / scale * height
        joined = prev_ts is not None and ts - prev_ts <= step_ns
        if not joined and run == 1:
            parts.append("h1")  # the previous run was a single point: make it visible
        parts.append(f"{'L' if joined else 'M'}{x:.1f} {y:.1f}")
        run = run + 1 if joined else 1
        prev_ts = ts
    if run == 1:
        parts.append("h1")
    return "".join(parts)


def fmt_value(value: Value | None, unit: str = "") -> str:
    """A value for a person: percentages with one decimal, bytes in binary units, seconds as
    durations, big numbers with thousands separators."""
    if value is None:
        return "\u2013"  # en dash
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if unit in ("%", "percent"):
        return f"{value:.1f} %"
    if unit in ("bytes", "B"):
        return fmt_bytes(float(value))
    if unit in ("bytes/s", "B/s"):
        return fmt_bytes(float(value)) + "/s"
    if unit in ("s", "seconds") and value >= 120:
        return fmt_duration(float(value))
    text = f"{value:,.2f}".rstrip("0").rstrip(".") if isinstance(value, float) else f"{value:,}"
    return f"{text} {unit}".strip()


def fmt_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover - the loop always returns


def fmt_duration(seconds: float) -> str:
    """90061 -> '1d 1h'; 3700 -> '1h 1m'; 59 -> '59s'."""
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {s}s"
    return f"{s}s"


def fmt_ago(seconds: float | None) -> str:
    """How long ago, briefly: 'never', 'just now', '5 min ago', '3 h ago', '2 d ago'."""
    if seconds is None:
        return "never"
    if seconds < 10:
        return "just now"
    if seconds < 90:
        return f"{int(seconds)} s ago"
    if seconds < 5400:
        return f"{round(seconds / 60)} min ago"
    if seconds < 172800:
        return f"{round(seconds / 3600)} h ago"
    return f"{round(seconds / 86400)} d ago"
