"""InfluxDB 1.x backend (tested on 1.6.7, Debian's package): line protocol in, InfluxQL out.

Layout: one InfluxDB measurement per monapi measurement, the tags ``host`` and ``server_id`` plus
the point's own tags, and the fields under their monapi names, in the database
``MONAPI_INFLUXDB_DATABASE`` and the retention policy ``MONAPI_INFLUXDB_RETENTION_POLICY``.

Why a small client of our own: ``influxdb-client`` (v2) gets 404 from 1.x before 1.8, and the
``influxdb`` 5.x package is archived. Everything here is two endpoints: ``/write`` (gzip line
protocol over the pooled keep-alive connections of :class:`EngineHTTP`) and ``/query``.

Errors. A refused connection, a timeout or a 5xx raise StoreUnavailable (503 with Retry-After):
nothing is reported stored. A 400 from ``/write`` refuses some points but stores the others
(InfluxDB's "partial write"), and its message names at most one cause. monapi works out exactly
which points were refused: from the message when it names them (a field type conflict names the
measurement, the field and the type; "beyond retention policy" drops the oldest points), then by
sending the rest again to confirm, or else by sending halves again (bisection). InfluxDB writes
are idempotent (same series, time and fields overwrite), so sending an accepted point again is
harmless. The number of extra requests is bounded; points whose fate is still unknown then are
reported refused, never stored.
"""

from __future__ import annotations

import base64
import itertools
import logging
import math
import os
import re
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import msgspec

from ..errors import StoreRejected, StoreUnavailable
from ..settings import Settings
from .base import (
    AGGREGATIONS,
    LatestValue,
    Point,
    ReadsByServers,
    Rejection,
    Series,
    Value,
    WriteBatch,
)
from .groupcommit import GroupCommit
from .http import EngineHTTP, EngineResponse
from .lineprotocol import encode, encode_mixed
from .sqlite import tags_to_text

log = logging.getLogger("monapi.tsdb.influxdb")

ENGINE = "InfluxDB"
IDENTITY_TAGS = ("host", "server_id")
# Extra /write requests one write may spend finding which points InfluxDB refused.
PROBE_BUDGET = 40
# How long the field types of a database (SHOW FIELD KEYS) are trusted; a field not in the
# cache always triggers a fresh look.
FIELD_TYPES_TTL_S = 60.0
LATEST_CHUNK = 100  # servers per latest() query
MANY_CHUNK = 500  # servers per statement of query_many()
CHUNK_SIZE = 10_000  # rows per chunk of a /query answer (chunked answers ignore max-row-limit)
_LP_TYPE: dict[type, str] = {float: "float", int: "integer", bool: "boolean", str: "string"}
_BOOL_DERIVED = ("mean", "sum", "min", "max")  # InfluxQL cannot apply these to booleans
_INFLUXQL_AGG = {
    "mean": "MEAN",
    "min": "MIN",
    "max": "MAX",
    "last": "LAST",
    "sum": "SUM",
    "count": "COUNT",
}
_DROPPED_RE = re.compile(r"\s*dropped=(\d+)\s*$")
_Q = r'"((?:[^"\\]|\\.)*)"'
_TYPE_CONFLICT_RE = re.compile(
    rf"field type conflict: input field {_Q} on measurement {_Q} is type (\w+), "
    r"already exists as type (\w+)"
)
_BAD_FIELD_RE = re.compile(rf"invalid field name: input field {_Q} on measurement {_Q}")
_BAD_TAG_RE = re.compile(rf"invalid tag key: input tag {_Q} on measurement {_Q}")
_decode = msgspec.json.Decoder().decode

TagKey = tuple[tuple[str, str], ...]  # sorted tags without host and server_id
# (server id, measurement) -> monapi tags -> field -> (bucket start, value) points
_Got = dict[tuple[int, str], dict[TagKey, dict[str, list[tuple[int, Value]]]]]


# InfluxQL quoting -----------------------------------------------------------------------------
def quote_ident(name: str) -> str:
    """An InfluxQL identifier: double quotes, with backslash, quote and newline escaped."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def quote_string(value: str) -> str:
    """An InfluxQL string literal. InfluxQL refuses a raw newline inside a literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def _check_value(name: str, value: Value) -> str | None:
    # InfluxDB 1.x drops a point with a field called "time" (the column name of timestamps).
    if name == "time":
        return 'InfluxDB cannot store a field named "time": rename the field'
    return None


def _identity_free(tags: dict[str, str]) -> TagKey:
    """A series' monapi tags: no host, no server_id, and none of the empty values InfluxDB
    reports for a tag key the series lacks."""
    return tuple(sorted((k, v) for k, v in tags.items() if v != "" and k not in IDENTITY_TAGS))


def server_match(server_ids: Sequence[int]) -> str:
    """The InfluxQL condition on the ``server_id`` tag that selects these servers' points."""
    tag = f"{quote_ident('server_id')}::tag"
    if len(server_ids) == 1:
        return f"{tag} = {quote_string(str(server_ids[0]))}"
    return f"{tag} =~ /^({'|'.join(str(int(sid)) for sid in server_ids)})$/"


def _assemble(wanted: dict[str, list[str]], got: _Got) -> dict[int, list[Series]]:
    """Each server's series in the embedded store's order: measurement as asked, tags, field
    as asked."""
    keyed: dict[int, list[tuple[tuple[int, str, int], Series]]] = {}
    meas_index = {meas: mi for mi, meas in enumerate(wanted)}
    for (server_id, meas), by_tags in got.items():
        for tag_key, by_field in by_tags.items():
            tags_text = tags_to_text(tag_key)
            for fi, field in enumerate(wanted[meas]):
                points = by_field.get(field)
                if points:
                    points.sort(key=lambda p: p[0])
                    keyed.setdefault(server_id, []).append(
                        (
                            (meas_index[meas], tags_text, fi),
                            Series(meas, field, dict(tag_key), points),
                        )
                    )
    out: dict[int, list[Series]] = {}
    for server_id, items in keyed.items():
        items.sort(key=lambda item: item[0])
        out[server_id] = [s for _, s in items]
    return out


def _hours(seconds: float) -> int:
    """InfluxDB retention in whole hours, rounded up, at least 1 h (its minimum)."""
    return max(1, math.ceil(seconds / 3600))


def _parse_duration_ns(text: str) -> int:
    """InfluxDB's duration text ("720h0m0s", "0s") in nanoseconds; 0 means keep forever."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|µs|ns|m|s)", text):
        total += float(number) * units[unit]
    return int(total * 1e9)


def _short_duration(text: str) -> str:
    """ "720h0m0s" as "720h", "1h30m0s" as "1h30m"."""
    short = re.sub(r"(?<=[hm])0s$", "", text)
    return re.sub(r"(?<=h)0m$", "", short)


def _convert(value: Any, types: frozenset[str], agg: str) -> Value:
    """A value from InfluxDB's JSON in the field's Python type. JSON loses the difference
    between 52.0 and 52, so the field's InfluxDB type decides."""
    if agg == "count":
        return int(value)
    if agg == "mean":
        return float(value)
    if isinstance(value, bool | str):
        return value
    if "float" in types:
        return float(value)
    if isinstance(value, int | float):
        return value
    raise StoreRejected(f"{ENGINE} answered a value monapi cannot read: {value!r}")


# Answers of /query --------------------------------------------------------------------------
@dataclass(slots=True)
class _Series:
    name: str
    tags: dict[str, str]
    columns: list[str]
    values: list[list[Any]]


@dataclass(slots=True)
class _Result:
    error: str | None
    series: list[_Series]


@dataclass(slots=True)
class _Line:
    """A sent point on the slow path: where it came from and its line protocol."""

    ref: tuple[int, int]
    point: Point
    text: bytes


class InfluxDBStore(ReadsByServers):
    """Points in an InfluxDB 1.x database; see the module docstring for the layout."""

    name = "influxdb"

    def __init__(
        self,
        url: str,
        database: str,
        retention_policy: str,
        retention_s: float,
        *,
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = 10.0,
        pool_size: int = 16,
        compression: str = "auto",
    ) -> None:
        self.url = url.rstrip("/")
        self.compression = compression
        self.database = database
        self.retention_policy = retention_policy
        self.retention_hours = _hours(retention_s)
        self.username = username
        self._password = password
        self.timeout_s = timeout_s
        self.pool_size = pool_size
        self.rp_duration = f"{self.retention_hours}h"  # as InfluxDB has it, once set up
        self._headers: dict[str, str] = {}
        if username:
            token = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
        self._http_client = self._new_http()
        self._pid = os.getpid()
        self._ready = False
        self._setup_lock = threading.Lock()
        self._types: dict[tuple[str, str], frozenset[str]] = {}
        self._types_at = -math.inf
        self._types_lock = threading.Lock()
        self._source = f"{quote_ident(database)}.{quote_ident(retention_policy)}"
        self._group = GroupCommit(self._write_now)
        try:
            self._ensure()
        except StoreUnavailable as exc:
            # The app starts anyway: /readyz reports it, and the next write or read tries again.
            log.warning("%s; monapi will set up the database when InfluxDB answers", exc)

    # HTTP ------------------------------------------------------------------------------------
    def _new_http(self) -> EngineHTTP:
        return EngineHTTP(
            ENGINE, self.url, self.timeout_s, self.pool_size, self._headers, self.compression
        )

    @property
    def http(self) -> EngineHTTP:
        """The connection pool of this process (a forked gunicorn worker makes its own)."""
        if self._pid != os.getpid():
            self._http_client = self._new_http()
            self._pid = os.getpid()
        return self._http_client

    def _auth_error(self, status: int, message: str) -> StoreUnavailable:
        if status == 401:
            what = (
                f"{ENGINE} at {self.url} refused monapi's credentials ({message}): check "
                "MONAPI_INFLUXDB_USERNAME and MONAPI_INFLUXDB_PASSWORD"
            )
        else:
            who = f"user {self.username!r}" if self.username else "the anonymous user"
            what = (
                f"{ENGINE} at {self.url} does not let {who} do this ({message}): grant it READ "
                f"and WRITE on database {self.database!r} (and create the database and "
                "retention policy as an admin), or set MONAPI_INFLUXDB_USERNAME and "
                "MONAPI_INFLUXDB_PASSWORD to such a user"
            )
        return StoreUnavailable(what, retry_after=30)

    def _query(self, statements: Sequence[str], *, db: bool = True) -> list[_Result]:
        """Run InfluxQL statements in one request; one result per statement (chunks merged)."""
        params = {"epoch": "ns", "chunked": "true", "chunk_size": str(CHUNK_SIZE)}
        if db:
            params["db"] = self.database
        resp = self.http.request(
            "POST",
            "/query",
            params=params,
            body=urlencode({"q": ";\n".join(statements)}).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        if resp.status in (401, 403):
            raise self._auth_error(resp.status, _error_text(resp))
        if resp.status == 400:
            raise StoreRejected(f"{ENGINE} refused a query monapi made: {_error_text(resp)}")
        if resp.status != 200:
            raise StoreUnavailable(
                f"{ENGINE} at {self.url} answered {resp.status} to a query: {_error_text(resp)} "
                "(is MONAPI_INFLUXDB_URL an InfluxDB 1.x?)",
                retry_after=30,
            )
        results = [_Result(None, []) for _ in statements]
        skipped = False
        open_series: dict[tuple[int, str, tuple[tuple[str, str], ...]], _Series] = {}
        for chunk in resp.data.split(b"\n"):
            if not chunk.strip():
                continue
            try:
                doc = _decode(chunk)
            except msgspec.DecodeError:
                raise StoreUnavailable(
                    f"{ENGINE} at {self.url} answered a query with something other than "
                    f"InfluxDB's JSON: {resp.text(200)!r} (is MONAPI_INFLUXDB_URL an InfluxDB 1.x?)"
                ) from None
            if not isinstance(doc, dict):
                continue
            if doc.get("error"):
                raise StoreRejected(f"{ENGINE} refused a query monapi made: {doc['error']}")
            for res in doc.get("results", []):
                sid = int(res.get("statement_id", 0))
                if sid >= len(results):
                    continue
                if res.get("error"):
                    if res["error"] == "not executed":
                        skipped = True  # InfluxDB 1.6 gives these the failing statement's id
                    else:
                        results[sid].error = str(res["error"])
                for s in res.get("series", []) or []:
                    tags = s.get("tags") or {}
                    key = (sid, s.get("name", ""), tuple(sorted(tags.items())))
                    known = open_series.get(key)
                    if known is not None:
                        known.values.extend(s.get("values") or [])
                        continue
                    series = _Series(s.get("name", ""), tags, s["columns"], s.get("values") or [])
                    open_series[key] = series
                    results[sid].series.append(series)
        # InfluxDB stops at the first failing statement and skips the rest ("not executed"):
        # give them the error that stopped them, so that no skipped statement reads as empty.
        failed = next((i for i, r in enumerate(results) if r.error), None)
        if skipped:
            if failed is None:
                raise StoreRejected(f"{ENGINE} did not run a query monapi made")
            for r in results[failed + 1 :]:
                r.error = r.error or results[failed].error
        return results

    def _checked(self, result: _Result) -> _Result | None:
        """The result, or None when the database is gone (nothing stored); other statement
        errors become StoreRejected."""
        if result.error is None:
            return result
        if result.error.startswith("database not found"):
            self._ready = False  # created again on the next write
            return None
        raise StoreRejected(f"{ENGINE} refused a query monapi made: {result.error}")

    # Setup -----------------------------------------------------------------------------------
    def _ensure(self) -> None:
        if self._ready:
            return
        with self._setup_lock:
            if not self._ready:
                self._setup()
                self._ready = True

    def _setup(self) -> None:
        """Create the database and the retention policy if missing.

        The policy is made the database's default only when monapi creates it: an existing
        policy (and the default) belong to whoever made them, so a different duration is only
        logged."""
        db, rp = quote_ident(self.database), quote_ident(self.retention_policy)
        for _ in range(4):
            (res,) = self._query([f"SHOW RETENTION POLICIES ON {db}"], db=False)
            if res.error and res.error.startswith("database not found"):
                (created,) = self._query([f"CREATE DATABASE {db}"], db=False)
                if created.error:
                    raise StoreUnavailable(
                        f"{ENGINE} could not create database {self.database!r}: {created.error}"
                    )
                log.info("created InfluxDB database %s", self.database)
                continue
            if res.error:
                raise StoreUnavailable(
                    f"{ENGINE} could not list the retention policies of {self.database!r}: "
                    f"{res.error}"
                )
            policies = {}
            for s in res.series:
                cols = s.columns
                for row in s.values:
                    policies[row[cols.index("name")]] = row[cols.index("duration")]
            if self.retention_policy in policies:
                have = _parse_duration_ns(str(policies[self.retention_policy]))
                want = self.retention_hours * 3600 * 10**9
                self.rp_duration = _short_duration(str(policies[self.retention_policy]))
                if have != want:
                    log.warning(
                        "InfluxDB retention policy %s on %s keeps points for %s, not the %dh of "
                        "MONAPI_RETENTION; monapi leaves it as it is (change it with ALTER "
                        "RETENTION POLICY)",
                        self.retention_policy,
                        self.database,
                        policies[self.retention_policy],
                        self.retention_hours,
                    )
                return
            (made,) = self._query(
                [
                    f"CREATE RETENTION POLICY {rp} ON {db} DURATION {self.retention_hours}h "
                    "REPLICATION 1 DEFAULT"
                ],
                db=False,
            )
            if made.error and "already exists" not in made.error:
                raise StoreUnavailable(
                    f"{ENGINE} could not create retention policy {self.retention_policy!r} on "
                    f"{self.database!r}: {made.error}"
                )
            if not made.error:
                log.info(
                    "created InfluxDB retention policy %s on %s (%dh, default)",
                    self.retention_policy,
                    self.database,
                    self.retention_hours,
                )
        raise StoreUnavailable(
            f"{ENGINE}: database {self.database!r} or retention policy "
            f"{self.retention_policy!r} keeps disappearing while monapi creates it"
        )

    # Writes ----------------------------------------------------------------------------------
    def encoded_field_ok(self, name: str) -> bool:
        """Whether a batch whose float fields include ``name`` may come as pre-encoded line
        protocol (``WriteBatch.lines``): whatever :func:`_check_value` refuses must take the
        exact path, which reports it per point."""
        return _check_value(name, 0.0) is None

    def write(self, batches: Sequence[WriteBatch]) -> list[Rejection]:
        """Concurrent small writes of this process go to InfluxDB together (see
        :mod:`.groupcommit`)."""
        return self._group.write(batches)

    def _write_now(self, batches: Sequence[WriteBatch]) -> list[Rejection]:
        self._ensure()
        body, refused, sent, ready = encode_mixed(batches, check=_check_value)
        if not sent and not ready:
            return refused
        message = self._post_write(body)
        if message is None:
            return refused
        # Refused in part: the points of pre-encoded batches are needed now (built lazily).
        sent = [(b, i) for b in ready for i in range(len(batches[b].points))] + sent
        lines = [
            _Line(
                (b, i),
                batches[b].points[i],
                encode(
                    [WriteBatch(batches[b].server_id, batches[b].hostname, [batches[b].points[i]])]
                )[0],
            )
            for b, i in sent
        ]
        refused.extend(self._resolve(lines, message))
        return refused

    def _post_write(self, body: bytes) -> str | None:
        """POST line protocol. None when every line was stored; InfluxDB's message when it
        refused some (a 400 or 413); StoreUnavailable when its answer says nothing about the
        points (down, 5xx, credentials)."""
        params = {"db": self.database, "rp": self.retention_policy, "precision": "ns"}
        for attempt in range(2):
            try:
                resp = self.http.request(
                    "POST",
                    "/write",
                    params=params,
                    body=body,
                    headers={"Content-Type": "text/plain; charset=utf-8"},
                    compress=True,
                    idempotent=True,
                )
            except StoreUnavailable as exc:
                if attempt == 0 and "retention policy not found" in str(exc):
                    self._ready = False  # someone dropped it: create it again, send again
                    self._ensure()
                    continue
                raise
            if resp.status < 300:
                return None
            message = _error_text(resp)
            if resp.status == 404 and attempt == 0 and "database not found" in message:
                self._ready = False
                self._ensure()
                continue
            if resp.status in (401, 403):
                raise self._auth_error(resp.status, message)
            if resp.status in (400, 413):
                return message
            raise StoreUnavailable(
                f"{ENGINE} at {self.url} answered {resp.status} to a write: {message} "
                "(is MONAPI_INFLUXDB_URL an InfluxDB 1.x?)",
                retry_after=30,
            )
        raise StoreUnavailable(
            f"{ENGINE} lost database {self.database!r} again right after monapi created it"
        )

    def _resolve(self, lines: list[_Line], message: str) -> list[Rejection]:
        """Which of ``lines`` (all sent, answered by ``message``) InfluxDB did not store."""
        budget = PROBE_BUDGET
        out: list[Rejection] = []
        pending: list[tuple[list[_Line], str]] = [(lines, message)]
        while pending:
            subset, msg = pending.pop()
            core, dropped = _split_message(msg)
            if len(subset) == 1:
                out.append(self._rejection(subset[0], core))
                continue
            parts: list[list[_Line]]
            bad = self._attribute(subset, core, dropped)
            if bad is not None and bad:
                if len(bad) == dropped:  # the message accounts for every dropped point
                    out.extend(self._rejection(x, core) for x in bad)
                    ids = {id(x) for x in bad}
                    parts = [[x for x in subset if id(x) not in ids]]  # confirm the rest
                elif len(bad) < len(subset):
                    ids = {id(x) for x in bad}
                    parts = [bad, [x for x in subset if id(x) not in ids]]
                else:
                    parts = [subset[: len(subset) // 2], subset[len(subset) // 2 :]]
            else:
                parts = [subset[: len(subset) // 2], subset[len(subset) // 2 :]]
            for part in parts:
                if not part:
                    continue
                if budget <= 0:
                    out.extend(self._rejection(x, core, unknown=True) for x in part)
                    continue
                budget -= 1
                answer = self._post_write(b"".join(x.text for x in part))
                if answer is not None:
                    pending.append((part, answer))
        return out

    def _attribute(self, subset: list[_Line], core: str, dropped: int) -> list[_Line] | None:
        """The points of ``subset`` that InfluxDB's message names, or None if it names none."""
        m = _TYPE_CONFLICT_RE.search(core)
        if m:
            field, meas, given = _unq(m.group(1)), _unq(m.group(2)), m.group(3)
            return [
                x
                for x in subset
                if x.point.measurement == meas
                and field in x.point.fields
                and _LP_TYPE.get(type(x.point.fields[field])) == given
            ]
        m = _BAD_FIELD_RE.search(core)
        if m:
            field, meas = _unq(m.group(1)), _unq(m.group(2))
            return [x for x in subset if x.point.measurement == meas and field in x.point.fields]
        m = _BAD_TAG_RE.search(core)
        if m:
            key, meas = _unq(m.group(1)), _unq(m.group(2))
            return [
                x
                for x in subset
                if x.point.measurement == meas and any(k == key for k, _ in x.point.tags)
            ]
        if "points beyond retention policy" in core and 0 < dropped <= len(subset):
            # InfluxDB drops the points older than now - duration, except those that fall in a
            # shard group it writes anyway: the dropped ones are the oldest.
            ordered = sorted(subset, key=lambda x: x.point.ts)
            if (
                dropped < len(ordered)
                and ordered[dropped - 1].point.ts == ordered[dropped].point.ts
            ):
                return None
            return ordered[:dropped]
        return None

    def _rejection(self, line: _Line, core: str, *, unknown: bool = False) -> Rejection:
        b, i = line.ref
        if unknown:
            return Rejection(
                b,
                i,
                None,
                f"{ENGINE} refused part of the write ({core}) and monapi could not tell within "
                f"{PROBE_BUDGET} requests whether it stored this point: send it again",
            )
        m = _TYPE_CONFLICT_RE.search(core)
        if m:
            return Rejection(
                b,
                i,
                _unq(m.group(1)),
                f"{ENGINE} refused the point: {m.group(0)} (the field was first stored as "
                f"{m.group(4)}; InfluxDB keeps one type per field)",
            )
        m = _BAD_FIELD_RE.search(core)
        if m:
            return Rejection(b, i, _unq(m.group(1)), f"{ENGINE} refused the point: {core}")
        if "points beyond retention policy" in core:
            return Rejection(
                b,
                i,
                None,
                f"{ENGINE} refused the point: its timestamp is older than retention policy "
                f"{self.retention_policy!r} keeps ({self.rp_duration}) (points beyond retention "
                "policy)",
            )
        return Rejection(b, i, None, f"{ENGINE} refused the point: {core}")

    # Field types -----------------------------------------------------------------------------
    def _field_types(
        self, need: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], frozenset[str]]:
        """InfluxDB's type(s) of each field (a field can have a different type per shard)."""
        types = self._types
        fresh = time.monotonic() - self._types_at < FIELD_TYPES_TTL_S
        if fresh and all(k in types for k in need):
            return types
        with self._types_lock:
            (res,) = self._query([f"SHOW FIELD KEYS ON {quote_ident(self.database)}"])
            found: dict[tuple[str, str], set[str]] = {}
            if self._checked(res) is not None:
                for s in res.series:
                    for name, ftype in s.values:
                        found.setdefault((s.name, name), set()).add(ftype)
            self._types = {k: frozenset(v) for k, v in found.items()}
            self._types_at = time.monotonic()
            return self._types

    # Reads -----------------------------------------------------------------------------------
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
        """The answer of ``query`` for each server (a key only when it has series), from one
        request: the statements of every measurement for every MANY_CHUNK servers."""
        if agg not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {agg!r}")
        if tag_filter and any(v == "" or k in IDENTITY_TAGS for k, v in tag_filter.items()):
            return {}  # no monapi series has an empty tag value, nor these keys as tags
        ids = list(dict.fromkeys(server_ids))
        if not selectors or not ids:
            return {}
        self._ensure()
        wanted: dict[str, list[str]] = {}
        for meas, field in selectors:
            if field not in wanted.setdefault(meas, []):
                wanted[meas].append(field)
        types = self._field_types(selectors)
        span = f"time >= {start_ns} AND time <= {end_ns}"
        for key, value in sorted((tag_filter or {}).items()):
            span += f" AND {quote_ident(key)}::tag = {quote_string(value)}"
        wheres = [
            f"{server_match(ids[i : i + MANY_CHUNK])} AND {span}"
            for i in range(0, len(ids), MANY_CHUNK)
        ]
        plans = {}
        for meas, fields in wanted.items():
            present = [f for f in fields if (meas, f) in types]
            booly = [f for f in present if agg in _BOOL_DERIVED and types[(meas, f)] == {"boolean"}]
            normal = [f for f in present if f not in booly]
            if normal or booly:
                plans[meas] = (normal, booly)
        got: _Got = {}
        collided = self._run_plans(plans, wheres, step_ns, agg, types, None, got)
        if collided:
            # A server's points under two host tags (the host was renamed): group by the
            # server and the monapi tags alone, as one series.
            got_again: _Got = {}
            self._run_plans(
                {m: plans[m] for m in collided}, wheres, step_ns, agg, types, collided, got_again
            )
            for stale in [k for k in got if k[1] in collided]:
                del got[stale]
            got.update(got_again)
        return _assemble(wanted, got)

    def _run_plans(
        self,
        plans: dict[str, tuple[list[str], list[str]]],
        wheres: Sequence[str],
        step_ns: int,
        agg: str,
        types: dict[tuple[str, str], frozenset[str]],
        group_keys: dict[str, list[str]] | None,
        got: _Got,
    ) -> dict[str, list[str]]:
        """Run the statements of every measurement and every condition (a set of servers) in
        one request and fill ``got``.

        Returns the measurements where two InfluxDB series map to one monapi series, with the
        tag keys to group them by instead (only when ``group_keys`` is None)."""
        statements: list[str] = []
        # (measurement, kind, field) per statement; kind: "agg", "total" or "true"
        what: list[tuple[str, str, str | None]] = []
        for where, (meas, (normal, booly)) in itertools.product(wheres, plans.items()):
            src = f"{self._source}.{quote_ident(meas)}"
            if group_keys is None:
                group = f"GROUP BY time({step_ns}ns), * fill(none)"
            else:
                keys = "".join(f", {quote_ident(k)}" for k in ["server_id", *group_keys[meas]])
                group = f"GROUP BY time({step_ns}ns){keys} fill(none)"
            if normal:
                fn = _INFLUXQL_AGG[agg]
                cols = ", ".join(
                    f"{fn}({quote_ident(f)}::field) AS {quote_ident(f)}" for f in normal
                )
                statements.append(f"SELECT {cols} FROM {src} WHERE {where} {group}")
                what.append((meas, "agg", None))
            if booly:
                cols = ", ".join(
                    f"COUNT({quote_ident(f)}::field) AS {quote_ident(f)}" for f in booly
                )
                statements.append(f"SELECT {cols} FROM {src} WHERE {where} {group}")
                what.append((meas, "total", None))
                for f in booly:
                    statements.append(
                        f"SELECT COUNT({quote_ident(f)}::field) AS {quote_ident(f)} FROM {src} "
                        f"WHERE {where} AND {quote_ident(f)}::field = true {group}"
                    )
                    what.append((meas, "true", f))
        if not statements:
            return {}
        results = self._query(statements)
        collided: dict[str, list[str]] = {}
        # (server id, measurement, tags, field) -> bucket -> count
        totals: dict[tuple[int, str, TagKey, str], dict[int, int]] = {}
        trues: dict[tuple[int, str, TagKey, str], dict[int, int]] = {}
        for (meas, kind, _field), result in zip(what, results, strict=True):
            checked = self._checked(result)
            if checked is None:
                continue
            seen: set[tuple[str, TagKey]] = set()
            for s in checked.series:
                owner = s.tags.get("server_id", "")
                if not owner.isdigit():
                    continue
                server_id = int(owner)
                tag_key = _identity_free(s.tags)
                if (owner, tag_key) in seen and group_keys is None:
                    collided[meas] = sorted(k for k in s.tags if k not in IDENTITY_TAGS)
                seen.add((owner, tag_key))
                for row in s.values:
                    ts = int(row[0])
                    for col, value in zip(s.columns[1:], row[1:], strict=True):
                        if value is None:
                            continue
                        if kind == "agg":
                            got.setdefault((server_id, meas), {}).setdefault(
                                tag_key, {}
                            ).setdefault(col, []).append(
                                (ts, _convert(value, types[(meas, col)], agg))
                            )
                        else:
                            into = totals if kind == "total" else trues
                            bucket = into.setdefault((server_id, meas, tag_key, col), {})
                            bucket[ts] = bucket.get(ts, 0) + int(value)
        for (server_id, meas, tag_key, field), counts in totals.items():
            true_counts = trues.get((server_id, meas, tag_key, field), {})
            points = (
                got.setdefault((server_id, meas), {}).setdefault(tag_key, {}).setdefault(field, [])
            )
            for ts, n in counts.items():
                points.append((ts, _bool_agg(agg, true_counts.get(ts, 0), n)))
        return collided

    def latest(self, server_ids: Sequence[int]) -> dict[int, list[LatestValue]]:
        out: dict[int, list[LatestValue]] = {int(sid): [] for sid in server_ids}
        if not server_ids:
            return out
        self._ensure()
        ids = sorted(out)
        src = f"{self._source}./.*/"
        # (server, measurement, tags) -> [(newest ts, {field: value})] per InfluxDB series
        found: dict[tuple[int, str, TagKey], list[tuple[int, dict[str, Any]]]] = {}
        for i in range(0, len(ids), LATEST_CHUNK):
            chunk = ids[i : i + LATEST_CHUNK]
            where = f"WHERE {server_match(chunk)}"
            last_values, newest = self._query(
                [
                    f"SELECT LAST(*) FROM {src} {where} GROUP BY *",
                    f"SELECT * FROM {src} {where} GROUP BY * ORDER BY time DESC LIMIT 1",
                ]
            )
            checked_last, checked_newest = self._checked(last_values), self._checked(newest)
            if checked_last is None or checked_newest is None:
                continue
            times = {
                (s.name, tuple(sorted(s.tags.items()))): int(s.values[0][0])
                for s in checked_newest.series
                if s.values
            }
            for s in checked_last.series:
                ts = times.get((s.name, tuple(sorted(s.tags.items()))))
                if ts is None or not s.values:
                    continue
                row = s.values[0]
                fields = {
                    col.removeprefix("last_"): value
                    for col, value in zip(s.columns[1:], row[1:], strict=True)
                    if value is not None
                }
                if not fields:
                    continue
                key = (int(s.tags.get("server_id", "0")), s.name, _identity_free(s.tags))
                found.setdefault(key, []).append((ts, fields))
        need = {(m, f) for (_, m, _), versions in found.items() for _, d in versions for f in d}
        types = self._field_types(need) if need else {}
        rows: list[tuple[int, str, str, TagKey, int, dict[str, Any]]] = []
        for (server_id, meas, tag_key), versions in found.items():
            if server_id not in out:
                continue
            # The newest InfluxDB series first: after a host rename, its values win.
            versions.sort(key=lambda v: v[0], reverse=True)
            merged: dict[str, Any] = {}
            for _, fields in versions:
                for name, value in fields.items():
                    merged.setdefault(name, value)
            rows.append((server_id, meas, tags_to_text(tag_key), tag_key, versions[0][0], merged))
        rows.sort(key=lambda r: (r[0], r[1], r[2]))
        for server_id, meas, _, tag_key, ts, merged in rows:
            out[server_id].extend(
                LatestValue(
                    meas,
                    name,
                    dict(tag_key),
                    ts,
                    _convert(merged[name], types.get((meas, name), frozenset()), "last"),
                )
                for name in sorted(merged)
            )
        return out

    # Maintenance -----------------------------------------------------------------------------
    def delete_server(self, server_id: int) -> int:
        """Drop every series of the server. The count is of InfluxDB series, which split a
        monapi series in two if the server's host name changed."""
        self._ensure()
        cond = f"{quote_ident('server_id')} = {quote_string(str(server_id))}"
        (listed,) = self._query([f"SHOW SERIES ON {quote_ident(self.database)} WHERE {cond}"])
        checked = self._checked(listed)
        count = sum(len(s.values) for s in checked.series) if checked else 0
        (dropped,) = self._query([f"DROP SERIES WHERE {cond}"])
        self._checked(dropped)
        return count

    def prune(self, before_ns: int) -> int:
        """Retention is the retention policy's job in InfluxDB (whole shards expire)."""
        return 0

    def ping(self) -> None:
        try:
            resp = self.http.request("GET", "/ping")
        except StoreUnavailable as exc:
            raise StoreUnavailable(
                f"{exc} (check MONAPI_INFLUXDB_URL and that influxd runs)", exc.retry_after
            ) from exc
        if resp.status != 204:
            raise StoreUnavailable(
                f"{ENGINE} at {self.url} answered /ping with {resp.status}, not 204: "
                "is MONAPI_INFLUXDB_URL an InfluxDB 1.x?"
            )
        self._ensure()

    def close(self) -> None:
        self.http.close()


def _bool_agg(agg: str, trues: int, n: int) -> Value:
    """mean/sum/min/max of a bucket of booleans from its count of true values and of all."""
    if agg == "mean":
        return trues / n
    if agg == "sum":
        return trues
    if agg == "min":
        return trues == n
    return trues > 0  # max


def _error_text(resp: EngineResponse) -> str:
    """InfluxDB's error message: {"error": "..."}, else its header, else the body."""
    try:
        doc = _decode(resp.data)
        if isinstance(doc, dict) and isinstance(doc.get("error"), str):
            return str(doc["error"]).strip()
    except msgspec.DecodeError:
        pass
    header = resp.headers.get("X-Influxdb-Error")
    return header or resp.text(300) or f"HTTP {resp.status}"


def _split_message(message: str) -> tuple[str, int]:
    """("field type conflict: ...", dropped) from "partial write: ... dropped=N"."""
    core = message.removeprefix("partial write:").strip()
    m = _DROPPED_RE.search(core)
    dropped = -1
    if m:
        dropped = int(m.group(1))
        core = core[: m.start()].strip()
    return core, dropped


def _unq(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def create(settings: Settings) -> InfluxDBStore:
    """The backend for ``MONAPI_TSDB=influxdb``."""
    password = settings.influxdb_password
    return InfluxDBStore(
        settings.influxdb_url,
        settings.influxdb_database,
        settings.influxdb_retention_policy,
        settings.retention,
        username=settings.influxdb_username,
        password=password.get_secret_value() if password is not None else None,
        timeout_s=settings.tsdb_timeout,
        pool_size=settings.tsdb_pool_size,
        compression=settings.tsdb_compression,
    )
