"""VictoriaMetrics backend: line protocol in, the Prometheus query API out.

Writes are InfluxDB line protocol (gzip, pooled keep-alive) to ``/write`` of a single node or
``/insert/<tenant>/influx/write`` of a cluster's vminsert. VictoriaMetrics names each value
``<measurement>_<field>`` and turns tags into labels. Reads use ``/api/v1/query_range`` and
``/api/v1/query`` (a cluster's vmselect: ``/select/<tenant>/prometheus/api/v1/...``).

What VictoriaMetrics does that shapes this module (checked against victoria-metrics 1.79):

* A line it cannot parse is skipped and the request still answers 204, a string field is
  stored as 0, and labels beyond ``-maxLabelsPerTimeseries`` (30) are dropped silently. So
  everything it would drop or change is refused here, before sending, with a reason.
* Its tag unescaping turns ``\\\\`` into ``\\`` (InfluxDB keeps both), so backslashes in tag values
  are doubled for it.
* A metric name alone cannot be split back into (measurement, field): both may contain ``_``.
  Every sample therefore carries the label ``measurement``; the field is the rest of the name.
  The label is reserved: a point with a tag of that name is refused.
* Timestamps are milliseconds. Query times and durations are parsed through float arithmetic
  and truncated, so they are sent with half a millisecond added (``...9995``, ``...5ms``): the
  truncation then lands on the intended millisecond.
* It keeps values as decimals of about 12 significant digits (15 above 10**6), with one
  exponent per block of a series: floats are not kept bit for bit. That is accepted rather
  than refused, since most computed values (a CPU percentage) have 16 or 17 digits; integers
  up to 2**53 and values with up to 12 digits come back exactly.
* Rollup windows are left-open, ``(t - w, t]``: evaluating at ``b + step - 1 ms`` with a window
  of one step covers exactly the bucket ``[b, b + step)`` that the embedded store groups by.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar
from urllib.parse import urlencode

import msgspec

from ..errors import StoreRejected, StoreUnavailable
from ..settings import Settings
from .base import LatestValue, Point, ReadsByServers, Rejection, Series, Tags, Value, WriteBatch
from .groupcommit import GroupCommit
from .http import EngineHTTP, EngineResponse
from .lineprotocol import default_identity, encode
from .sqlite import tags_to_text

log = logging.getLogger("monapi.tsdb.victoriametrics")

ENGINE = "VictoriaMetrics"
MEASUREMENT_LABEL = "measurement"  # written with every sample; maps names back to fields
IDENTITY_LABELS = frozenset({"host", "server_id", MEASUREMENT_LABEL})
MAX_LABELS = 30  # VictoriaMetrics' default -maxLabelsPerTimeseries (the name not counted)
MAX_LINE_BYTES = 256 * 1024  # its default -influx.maxLineSize: a longer line fails the request
MAX_EXACT_INT = 2**53  # line-protocol integers are parsed into 64-bit floats
MAX_QUERY_CHARS = 12_000  # below its default -search.maxQueryLen (16 KiB)
LATEST_CHUNK = 500  # server ids per latest() query
MANY_CHUNK = 500  # server ids per query of query_many(), at most
MANY_CHUNK_CHARS = MAX_QUERY_CHARS // 4  # and at most this much text of ids
# query_range answers whose evaluation time is later than now - latencyOffset may have their
# last points rewritten by VictoriaMetrics (newer versions copy the previous value into them).
# Ranges reaching that close to now are evaluated this far in the past, with a negative offset.
RECENT_GUARD_MS = 3_600_000
_PROM_LABEL_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_REGEX_SPECIAL = frozenset(".^$*+?()[]{}|\\")
_FUNCS = {
    "mean": "avg_over_time",
    "min": "min_over_time",
    "max": "max_over_time",
    "last": "last_over_time",
    "sum": "sum_over_time",
    "count": "count_over_time",
}
T = TypeVar("T")
SeriesKey = tuple[str, str, Tags]  # measurement, field, sorted tags


# Answers of the Prometheus API ---------------------------------------------------------------
class _Result(msgspec.Struct):
    metric: dict[str, str]
    values: list[tuple[float, str]] = []
    value: tuple[float, str] | None = None


class _Data(msgspec.Struct):
    result: list[_Result] = []


class _Answer(msgspec.Struct):
    status: str = ""
    data: _Data | None = None
    error: str = ""
    isPartial: bool = False  # the API's spelling


class _SeriesAnswer(msgspec.Struct):
    status: str = ""
    data: list[dict[str, str]] = []
    error: str = ""


_decode_answer = msgspec.json.Decoder(_Answer).decode
_decode_series = msgspec.json.Decoder(_SeriesAnswer).decode


# Values and tags VictoriaMetrics cannot take -------------------------------------------------
def check_value(name: str, value: Value) -> str | None:
    """Why VictoriaMetrics cannot store this value exactly, or None (the line-protocol check)."""
    t = type(value)
    if t is str:
        return (
            f"{ENGINE} stores numbers only: field {name!r} is a string; keep text fields in the "
            "embedded store or InfluxDB (MONAPI_TSDB), or send a number"
        )
    if t is int and not -MAX_EXACT_INT <= value <= MAX_EXACT_INT:  # type: ignore[operator]
        return (
            f"{ENGINE} cannot hold this integer exactly: field {name!r} is {value}, beyond "
            "±2**53 (it reads integers as 64-bit floats); send the value in a larger unit"
        )
    if t is float and not math.isfinite(value):  # type: ignore[arg-type]
        return f"{ENGINE} stores finite numbers only: field {name!r} is {value}"
    return None


def tag_problem(tags: Tags) -> str | None:
    """Why a point's tags cannot become VictoriaMetrics labels unchanged, or None."""
    for key, _ in tags:
        if key == MEASUREMENT_LABEL:
            return (
                f"tag {key!r} is reserved with {ENGINE}: monapi stores the measurement name in "
                "that label; rename the tag"
            )
        if key.startswith("__"):
            return f"tag {key!r}: {ENGINE} reserves label names starting with '__'; rename the tag"
    if len(tags) + len(IDENTITY_LABELS) > MAX_LABELS:
        return (
            f"{ENGINE} keeps at most {MAX_LABELS} labels per series and would drop the rest "
            f"silently: this point has {len(tags)} tags, at most "
            f"{MAX_LABELS - len(IDENTITY_LABELS)} fit (host, server_id and measurement are added)"
        )
    return None


def _lp_tag_value(value: str) -> str:
    """A tag value prepared for VictoriaMetrics' unescaping, which turns ``\\\\`` into ``\\``.

    The line-protocol encoder then escapes commas, spaces and equals signs."""
    return value.replace("\\", "\\\\") if "\\" in value else value


def _identity(batch: WriteBatch) -> Tags:
    return tuple((k, _lp_tag_value(v)) for k, v in default_identity(batch))


# MetricsQL text -------------------------------------------------------------------------------
def quote(value: str) -> str:
    """A MetricsQL string literal (Go syntax): any text, including quotes and backslashes."""
    out = ['"']
    for ch in value:
        if ch in {"\\", '"'}:
            out.append("\\" + ch)
        elif ch < " " or ch == "\x7f":
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _regex_literal(text: str) -> str:
    return "".join("\\" + ch if ch in _REGEX_SPECIAL else ch for ch in text)


def duration(ms: int) -> str:
    """A window or offset of ``ms`` milliseconds that VictoriaMetrics parses to exactly ``ms``.

    Whole seconds are exact (``60s``); otherwise ``1e-3 * n * 1e3`` may land just below ``n``
    and be truncated, so half a millisecond is added (``1500.5ms`` is read as 1500 ms)."""
    if ms % 1000 == 0:
        return f"{ms // 1000}s"
    return f"{ms}.5ms"


def timestamp(ms: int) -> str:
    """A query time VictoriaMetrics reads as exactly ``ms`` (it truncates ``seconds * 1e3``)."""
    return f"{ms // 1000}.{ms % 1000:03d}5"


def _split(metric: dict[str, str]) -> tuple[str, SeriesKey] | None:
    """(server id, (measurement, field, tags)) of a series, or None for one monapi did not write.

    Takes the labels out of ``metric`` (a decoded answer, used for nothing else): the field is
    the metric name after the measurement label's value and "_"."""
    name = metric.pop("__name__", "")
    meas = metric.pop(MEASUREMENT_LABEL, None)
    owner = metric.pop("server_id", "")
    metric.pop("host", None)
    if meas is None or len(name) <= len(meas) + 1 or name[len(meas)] != "_":
        return None
    if not name.startswith(meas):
        return None
    tags = tuple(sorted(metric.items())) if metric else ()
    return owner, (meas, name[len(meas) + 1 :], tags)


def server_matcher(server_ids: Sequence[int]) -> str:
    """The label matcher that selects these servers' series (ids are integers: no quoting
    or regex escaping is needed)."""
    if len(server_ids) == 1:
        return f"server_id={quote(str(server_ids[0]))}"
    return f"server_id=~{quote('|'.join(str(int(sid)) for sid in server_ids))}"


def server_chunks(server_ids: Sequence[int]) -> list[list[int]]:
    """The distinct ids in groups of at most MANY_CHUNK ids and MANY_CHUNK_CHARS characters,
    so that a selector with a group's matcher and a long list of names still fits one query
    (see VictoriaMetricsStore._exprs)."""
    chunks: list[list[int]] = []
    size = 0
    for sid in dict.fromkeys(server_ids):
        cost = len(str(int(sid))) + 1
        if not chunks or len(chunks[-1]) >= MANY_CHUNK or size + cost > MANY_CHUNK_CHARS:
            chunks.append([])
            size = 0
        chunks[-1].append(sid)
        size += cost
    return chunks


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# The store -------------------------------------------------------------------------------------
class VictoriaMetricsStore(ReadsByServers):
    """Time series in VictoriaMetrics (single node, or a cluster's vminsert and vmselect)."""

    name = "victoriametrics"

    def __init__(
        self,
        insert_url: str,
        select_url: str | None = None,
        tenant: str | None = None,
        *,
        timeout_s: float = 10.0,
        pool_size: int = 16,
        latest_window_s: float = 86400.0,
        max_future_s: float = 600.0,
        compression: str = "auto",
    ) -> None:
        select_url = (select_url or insert_url).rstrip("/")
        insert_url = insert_url.rstrip("/")
        self.tenant = tenant
        self.timeout_s = timeout_s
        self.latest_window_ms = max(1, int(latest_window_s * 1000))
        self.max_future_ms = max(0, math.ceil(max_future_s) * 1000)
        if select_url == insert_url:
            self._insert = self._select = EngineHTTP(
                ENGINE, insert_url, timeout_s, pool_size, compression=compression
            )
        else:
            self._insert = EngineHTTP(
                f"{ENGINE} vminsert", insert_url, timeout_s, pool_size, compression=compression
            )
            self._select = EngineHTTP(f"{ENGINE} vmselect", select_url, timeout_s, pool_size)
        if tenant is None:
            self.write_path = "/write"
            self.api_path = "/api/v1"
            self.delete_path = "/api/v1/admin/tsdb/delete_series"
        else:
            self.write_path = f"/insert/{tenant}/influx/write"
            self.api_path = f"/select/{tenant}/prometheus/api/v1"
            self.delete_path = f"/delete/{tenant}/prometheus/api/v1/admin/tsdb/delete_series"
        self._pool_size = pool_size
        self._executor: ThreadPoolExecutor | None = None
        self._executor_pid = 0
        self._executor_lock = threading.Lock()
        self._group = GroupCommit(self._write_now)

    # Writes --------------------------------------------------------------------------------
    def write(self, batches: Sequence[WriteBatch]) -> list[Rejection]:
        """Concurrent small writes of this process go to VictoriaMetrics together (see
        :mod:`.groupcommit`)."""
        return self._group.write(batches)

    def _write_now(self, batches: Sequence[WriteBatch]) -> list[Rejection]:
        prepared, refused, origin = self._prepare(batches)
        body, lp_refused, sent = encode(prepared, check=check_value, identity=_identity)
        refused.extend(
            Rejection(r.batch, origin[r.batch][r.index], r.field, r.reason) for r in lp_refused
        )
        sent = [(b, origin[b][i]) for b, i in sent]
        if len(body) >= MAX_LINE_BYTES:
            body, sent = self._drop_long_lines(body, sent, refused)
        if not body:
            return refused
        resp = self._insert.request(
            "POST",
            self.write_path,
            body=body,
            headers={"Content-Type": "text/plain; charset=utf-8"},
            compress=True,
            idempotent=False,  # a write sent twice would store its samples twice
        )
        if resp.status < 300:
            return refused
        self._raise_if_misconfigured(self._insert, self.write_path, resp)
        # A 4xx: VictoriaMetrics parses a request as a stream, so lines before the one it choked
        # on may be stored. Which ones cannot be told: none of them is reported stored.
        reason = (
            f"{ENGINE} refused the request that carried this point ({resp.status}: "
            f"{resp.text(300)}); points sent with it may be partly stored"
        )
        log.error("VictoriaMetrics refused a write: %s %s", resp.status, resp.text(300))
        refused.extend(Rejection(b, i, None, reason) for b, i in sent)
        return refused

    def _prepare(
        self, batches: Sequence[WriteBatch]
    ) -> tuple[list[WriteBatch], list[Rejection], list[list[int]]]:
        """Batches whose points carry the measurement label (and doubled backslashes), the points
        refused for their tags, and for each prepared point its index in the original batch."""
        out: list[WriteBatch] = []
        refused: list[Rejection] = []
        origin: list[list[int]] = []
        for b, batch in enumerate(batches):
            labels: dict[tuple[str, Tags], Tags | str] = {}
            points: list[Point] = []
            where: list[int] = []
            for i, p in enumerate(batch.points):
                key = (p.measurement, p.tags)
                tags = labels.get(key)
                if tags is None:
                    problem = tag_problem(p.tags)
                    tags = problem if problem is not None else self._labels(p)
                    labels[key] = tags
                if isinstance(tags, str):
                    refused.append(Rejection(b, i, None, tags))
                    continue
                points.append(Point(p.measurement, tags, p.ts, p.fields))
                where.append(i)
            out.append(WriteBatch(batch.server_id, batch.hostname, points))
            origin.append(where)
        return out, refused, origin

    @staticmethod
    def _labels(p: Point) -> Tags:
        return tuple(
            sorted(
                [(k, _lp_tag_value(v)) for k, v in p.tags] + [(MEASUREMENT_LABEL, p.measurement)]
            )
        )

    @staticmethod
    def _drop_long_lines(
        body: bytes, sent: list[tuple[int, int]], refused: list[Rejection]
    ) -> tuple[bytes, list[tuple[int, int]]]:
        """Refuse lines VictoriaMetrics would fail the whole request for (-influx.maxLineSize)."""
        lines = body.split(b"\n")[:-1]  # the body ends with a newline
        keep: list[bytes] = []
        kept: list[tuple[int, int]] = []
        for line, where in zip(lines, sent, strict=True):
            if len(line) < MAX_LINE_BYTES:
                keep.append(line)
                kept.append(where)
            else:
                refused.append(
                    Rejection(
                        where[0],
                        where[1],
                        None,
                        f"{ENGINE} refuses line-protocol lines longer than {MAX_LINE_BYTES} bytes "
                        f"(-influx.maxLineSize); this point is {len(line)}: send fewer fields "
                        "per point",
                    )
                )
        return (b"\n".join(keep) + b"\n" if keep else b""), kept

    # Reads ---------------------------------------------------------------------------------
    def _read(
        self,
        server_ids: Sequence[int],
        selectors: Sequence[tuple[str, str]],
        start_ns: int,
        end_ns: int,
        step_ns: int,
        agg: str,
        tag_filter: dict[str, str] | None = None,
    ) -> dict[int, list[Series]]:
        """The answer of ``query`` for each server (a key only when it has series): the same
        requests as for one server, with the servers' ids in one label matcher (a few hundred
        ids per matcher, see server_chunks), run in parallel."""
        func = _FUNCS.get(agg)
        if func is None:
            raise ValueError(f"unknown aggregation {agg!r}")
        if step_ns <= 0 or step_ns % 1_000_000:
            raise StoreRejected(f"{ENGINE} keeps millisecond timestamps: use a whole-ms step")
        wanted = list(dict.fromkeys(selectors))
        if not wanted or not server_ids:
            return {}
        tag_filter = tag_filter or {}
        if any(k in IDENTITY_LABELS or k.startswith("__") or not v for k, v in tag_filter.items()):
            return {}  # no series has such a tag (as in the embedded store)
        step = step_ns // 1_000_000
        # Samples are whole milliseconds: ts >= start_ns and ts <= end_ns on them.
        lo, hi = _ceil_div(start_ns, 1_000_000), end_ns // 1_000_000
        if hi < lo:
            return {}
        first, last = lo - lo % step, hi - hi % step  # bucket starts, aligned to the epoch
        full_lo = first if lo == first else first + step
        full_hi = last if hi == last + step - 1 else last - step
        # Buckets cut by start or end: one instant query each, windowed to the part inside.
        cut = []
        if first == last:
            if full_lo > full_hi:
                cut.append((first, lo, hi))
        else:
            if lo != first:
                cut.append((first, lo, first + step - 1))
            if hi != last + step - 1:
                cut.append((last, last, hi))
        calls: list[Callable[[], list[tuple[int, _Result]]]] = []
        for chunk in server_chunks(server_ids):
            exprs = self._exprs(func, server_matcher(chunk), wanted, tag_filter)
            if full_lo <= full_hi:
                for expr in exprs:
                    calls.append(self._range_call(expr, full_lo, full_hi, step))
            for bucket, a, b in cut:
                for expr in exprs:
                    calls.append(self._instant_call(expr, bucket, a, b))
        return self._assemble(self._run(calls), wanted, tag_filter, agg == "count")

    def _exprs(
        self,
        func: str,
        servers: str,
        wanted: Sequence[tuple[str, str]],
        tag_filter: dict[str, str],
    ) -> list[Callable[[str, str], str]]:
        """Builders of the query text (from a window and an offset clause): normally one.

        One selector per measurement, joined with ``or``. ``or`` matches series on their labels
        without the name, so two fields of one measurement must never be in two operands of one
        query (the second would be dropped): a measurement whose field list would pass
        -search.maxQueryLen is split over separate queries."""
        fields: dict[str, list[str]] = {}
        for meas, field in wanted:
            fields.setdefault(meas, []).append(field)
        # Filters VictoriaMetrics can apply; every filter is also checked on the answers.
        extra = "".join(
            f",{k}={quote(v)}" for k, v in sorted(tag_filter.items()) if _PROM_LABEL_RE.match(k)
        )
        selectors: list[tuple[str, str]] = []  # (measurement, selector)
        for meas, names in fields.items():
            tail = f",{MEASUREMENT_LABEL}={quote(meas)},{servers}{extra}}}"
            chunk: list[str] = []
            for name in [_regex_literal(f"{meas}_{f}") for f in names]:
                if chunk and sum(len(n) + 1 for n in chunk) + len(name) > MAX_QUERY_CHARS // 2:
                    selectors.append((meas, "{__name__=~" + quote("|".join(chunk)) + tail))
                    chunk = []
                chunk.append(name)
            selectors.append((meas, "{__name__=~" + quote("|".join(chunk)) + tail))
        groups: list[list[str]] = []
        members: list[set[str]] = []
        size = 0
        for meas, sel in selectors:
            cost = len(sel) + 60  # with the function, window, offset and " or "
            if not groups or size + cost > MAX_QUERY_CHARS or meas in members[-1]:
                groups.append([])
                members.append(set())
                size = 0
            groups[-1].append(sel)
            members[-1].add(meas)
            size += cost

        def builder(group: list[str]) -> Callable[[str, str], str]:
            def build(window: str, offset: str) -> str:
                return " or ".join(
                    f"{func}({sel}[{window}]{offset}) keep_metric_names" for sel in group
                )

            return build

        return [builder(g) for g in groups]

    def _range_call(
        self, expr: Callable[[str, str], str], full_lo: int, full_hi: int, step: int
    ) -> Callable[[], list[tuple[int, _Result]]]:
        """One query_range over the whole buckets full_lo..full_hi (their start times)."""

        def call() -> list[tuple[int, _Result]]:
            start, end = full_lo + step - 1, full_hi + step - 1  # evaluation times
            guard = int(time.time() * 1000) - RECENT_GUARD_MS
            shift = 0
            if end > guard:
                shift = _ceil_div(end - guard, 1000) * 1000
            offset = f" offset -{duration(shift)}" if shift else ""
            data = self._prom(
                "/query_range",
                {
                    "query": expr(duration(step), offset),
                    "start": timestamp(start - shift),
                    "end": timestamp(end - shift),
                    "step": duration(step),
                },
            )
            # The label of a bucket is its start: evaluation time + shift - step + 1 ms.
            return [(shift - step + 1, r) for r in data.result]

        return call

    def _instant_call(
        self, expr: Callable[[str, str], str], bucket: int, a: int, b: int
    ) -> Callable[[], list[tuple[int, _Result]]]:
        """One instant query over [a, b] (ms, inclusive), answered as the bucket's value."""

        def call() -> list[tuple[int, _Result]]:
            data = self._prom(
                "/query", {"query": expr(duration(b - a + 1), ""), "time": timestamp(b)}
            )
            out = []
            for r in data.result:
                if r.value is not None:
                    r.values = [r.value]
                    r.value = None
                    out.append((bucket - b, r))  # evaluation time b + (bucket - b) = bucket
            return out

        return call

    def _assemble(
        self,
        answers: Iterable[list[tuple[int, _Result]]],
        wanted: Sequence[tuple[str, str]],
        tag_filter: dict[str, str],
        as_int: bool,
    ) -> dict[int, list[Series]]:
        """Each server's series in the embedded store's order: measurement as asked, tags,
        field as asked."""
        order = {key: n for n, key in enumerate(wanted)}
        meas_order: dict[str, int] = {}
        for meas, _ in wanted:
            meas_order.setdefault(meas, len(meas_order))
        points: dict[tuple[int, SeriesKey], dict[int, Value]] = {}
        for answer in answers:
            for adjust, r in answer:
                found = _split(r.metric)
                if found is None or (found[1][0], found[1][1]) not in order:
                    continue
                owner, key = found
                if not owner.isdigit():
                    continue
                if any(dict(key[2]).get(k) != v for k, v in tag_filter.items()):
                    continue
                bucket_values = points.setdefault((int(owner), key), {})
                for t, v in r.values:
                    value = float(v)
                    if math.isnan(value):
                        continue
                    bucket = round(t * 1000) + adjust
                    bucket_values[bucket] = int(value) if as_int else value
        texts: dict[Tags, str] = {}
        for _, (_, _, tags) in points:
            if tags not in texts:
                texts[tags] = tags_to_text(tags)
        keys = sorted(
            (k for k, v in points.items() if v),
            key=lambda k: (k[0], meas_order[k[1][0]], texts[k[1][2]], order[k[1][:2]]),
        )
        out: dict[int, list[Series]] = {}
        for server_id, (meas, field, tags) in keys:
            by_bucket = points[(server_id, (meas, field, tags))]
            out.setdefault(server_id, []).append(
                Series(
                    meas,
                    field,
                    dict(tags),
                    [(b * 1_000_000, by_bucket[b]) for b in sorted(by_bucket)],
                )
            )
        return out

    def latest(self, server_ids: Sequence[int]) -> dict[int, list[LatestValue]]:
        """Newest value of each series, looked for within the latest window (older: not shown).

        Evaluated at now + MONAPI_TIMESTAMP_MAX_FUTURE, so points stamped ahead are seen too.
        Two instant queries per 500 servers (values; their timestamps), run in parallel."""
        out: dict[int, list[LatestValue]] = {sid: [] for sid in server_ids}
        ids = sorted(set(server_ids))
        if not ids:
            return out
        at = timestamp((int(time.time()) + 1) * 1000 + self.max_future_ms)
        window = duration(self.latest_window_ms + self.max_future_ms)
        calls: list[Callable[[], _Data]] = []
        for i in range(0, len(ids), LATEST_CHUNK):
            chunk = ids[i : i + LATEST_CHUNK]
            sel = f"{{{server_matcher(chunk)}}}"
            for func in ("last_over_time", "tlast_over_time"):
                query = f"{func}({sel}[{window}]) keep_metric_names"
                calls.append(self._prom_call("/query", {"query": query, "time": at}))
        answers = self._run(calls)
        values: dict[tuple[str, SeriesKey], float] = {}
        rows: dict[int, list[tuple[SeriesKey, float, int]]] = {}
        for n in range(0, len(answers), 2):
            for r in answers[n].result:
                found = _split(r.metric)
                if found is not None and r.value is not None:
                    values[found] = float(r.value[1])
            for r in answers[n + 1].result:
                found = _split(r.metric)
                if found is None or r.value is None or not found[0].isdigit():
                    continue
                value = values.get(found)
                if value is not None and not math.isnan(value):
                    ts_ns = round(float(r.value[1]) * 1000) * 1_000_000
                    rows.setdefault(int(found[0]), []).append((found[1], value, ts_ns))
        texts: dict[Tags, str] = {}
        for sid, found_rows in rows.items():
            if sid not in out:
                continue
            for (_, _, tags), _, _ in found_rows:
                if tags not in texts:
                    texts[tags] = tags_to_text(tags)
            found_rows.sort(key=lambda row: (row[0][0], texts[row[0][2]], row[0][1]))
            out[sid] = [
                LatestValue(meas, field, dict(tags), ts_ns, value)
                for (meas, field, tags), value, ts_ns in found_rows
            ]
        return out

    # Maintenance ---------------------------------------------------------------------------
    def delete_server(self, server_id: int) -> int:
        """Delete every series of the server; returns how many (measurement, tags) series went.

        The count comes from /api/v1/series just before the delete (series with samples at any
        time), and is 0 when VictoriaMetrics will not list them (over its series limits)."""
        match = f"{{server_id={quote(str(server_id))}}}"
        count = 0
        resp = self._form(
            "/series",  # start=1: 0 would mean "not given", the last 5 minutes
            {"match[]": match, "start": "1", "end": str(int(time.time()) + 3 * 86400)},
        )
        if resp.status == 200:
            try:
                listed = _decode_series(resp.data).data
            except msgspec.DecodeError:
                listed = []
            count = len(
                {
                    frozenset((k, v) for k, v in m.items() if k not in ("__name__", "host"))
                    for m in listed
                }
            )
        else:
            self._raise_if_misconfigured(self._select, self.api_path + "/series", resp)
            log.warning(
                "VictoriaMetrics did not list series of server %s: %s", server_id, resp.text()
            )
        resp = self._select.request("POST", self.delete_path, params={"match[]": match})
        if resp.status >= 300:
            self._raise_if_misconfigured(self._select, self.delete_path, resp)
            raise StoreRejected(
                f"{ENGINE} refused to delete the series of server {server_id} "
                f"({resp.status}: {resp.text(300)})"
            )
        return count

    def prune(self, before_ns: int) -> int:
        """Nothing to do: VictoriaMetrics drops old data itself (its -retentionPeriod)."""
        return 0

    def ping(self) -> None:
        for http in dict.fromkeys((self._insert, self._select)):
            resp = http.request("GET", "/health")
            if resp.status != 200:
                raise StoreUnavailable(
                    f"{http.name} at {http.base_url} answered {resp.status} to /health: "
                    f"{resp.text(200)}; check MONAPI_VICTORIAMETRICS_URL"
                    + (" and MONAPI_VICTORIAMETRICS_SELECT_URL" if http is self._select else "")
                )

    def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None and self._executor_pid == os.getpid():
            executor.shutdown(wait=False)
        for http in dict.fromkeys((self._insert, self._select)):
            http.close()

    # HTTP ------------------------------------------------------------------------------------
    def _form(self, endpoint: str, params: dict[str, str]) -> EngineResponse:
        """POST a form to the select side (queries can be longer than a URL may be)."""
        if self.tenant is not None:
            params = {**params, "deny_partial_response": "1"}
        return self._select.request(
            "POST",
            self.api_path + endpoint,
            body=urlencode(params).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )

    def _prom(self, endpoint: str, params: dict[str, str]) -> _Data:
        """A query answer; nocache=1 so that VictoriaMetrics evaluates exactly what is asked
        (otherwise it aligns a range to the step and moves recent instants back)."""
        resp = self._form(endpoint, {**params, "nocache": "1", "timeout": f"{self.timeout_s:g}s"})
        if resp.status != 200:
            self._raise_if_misconfigured(self._select, self.api_path + endpoint, resp)
            raise StoreRejected(f"{ENGINE} refused the query ({resp.status}): {resp.text(400)}")
        try:
            answer = _decode_answer(resp.data)
        except msgspec.DecodeError as exc:
            raise StoreUnavailable(
                f"{self._select.name} gave an answer monapi cannot read: {exc}"
            ) from exc
        if answer.status != "success" or answer.data is None:
            raise StoreRejected(f"{ENGINE} refused the query: {answer.error or resp.text(400)}")
        if answer.isPartial:
            raise StoreUnavailable(
                f"{self._select.name} answered with part of the data (a vmstorage node is down)"
            )
        return answer.data

    def _prom_call(self, endpoint: str, params: dict[str, str]) -> Callable[[], _Data]:
        return lambda: self._prom(endpoint, params)

    @staticmethod
    def _raise_if_misconfigured(http: EngineHTTP, path: str, resp: EngineResponse) -> None:
        """A 4xx that says the URL layout or access is wrong: 503, the data is not at fault."""
        text = resp.text(300)
        if resp.status in (401, 403, 404, 405) or "unsupported path" in text:
            raise StoreUnavailable(
                f"{http.name} at {http.base_url} does not serve {path} ({resp.status}: {text}); "
                "check MONAPI_VICTORIAMETRICS_URL, MONAPI_VICTORIAMETRICS_SELECT_URL and "
                "MONAPI_VICTORIAMETRICS_TENANT (set the tenant for a cluster only)",
                retry_after=60,
            )

    def _run(self, calls: Sequence[Callable[[], T]]) -> list[T]:
        """Run independent requests, in parallel when there are several."""
        if len(calls) <= 1:
            return [c() for c in calls]
        futures = [self._pool().submit(c) for c in calls]
        return [f.result() for f in futures]

    def _pool(self) -> ThreadPoolExecutor:
        # Per process: a gunicorn worker forked after the app was made starts its own.
        if self._executor is None or self._executor_pid != os.getpid():
            with self._executor_lock:
                if self._executor is None or self._executor_pid != os.getpid():
                    self._executor = ThreadPoolExecutor(
                        max_workers=min(8, self._pool_size), thread_name_prefix="monapi-vm"
                    )
                    self._executor_pid = os.getpid()
        return self._executor


def create(settings: Settings) -> VictoriaMetricsStore:
    """The store for MONAPI_TSDB=victoriametrics (no request is made until it is used)."""
    return VictoriaMetricsStore(
        settings.victoriametrics_url,
        settings.victoriametrics_select_url,
        settings.victoriametrics_tenant,
        timeout_s=settings.tsdb_timeout,
        pool_size=settings.tsdb_pool_size,
        latest_window_s=settings.victoriametrics_latest_window,
        max_future_s=settings.timestamp_max_future,
        compression=settings.tsdb_compression,
    )
