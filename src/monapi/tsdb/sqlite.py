"""Embedded time-series store: one SQLite file of its own, in WAL mode.

Layout: ``series`` (one row per server, measurement and tag set, with the names of the fields
seen in it), ``points`` (series id, timestamp, and the point's fields as one JSON object;
clustered on (series id, timestamp), so a range read is one index walk) and ``latest`` (the
newest fields of each series, merged on write, so overview pages do not scan).

One row per point rather than per value: an agent push of one point with 20 fields writes one
row on one page, not 20 rows on 20 pages. Pages written per commit are what an SQLite writer
pays for, and the writer is serialized across processes.

Writes use group commit: concurrent requests in a process hand their points to whichever of them
is flushing, and all wait for the one transaction that holds their points. Across gunicorn
worker processes, a ``flock`` serializes writers without SQLite's sleeping busy handler, which
would otherwise add tens of milliseconds to unlucky requests.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import msgspec

from ..errors import StoreUnavailable
from ..settings import Settings
from .base import LatestValue, ReadsByServers, Rejection, Series, Tags, Value, WriteBatch, register

log = logging.getLogger("monapi.tsdb.sqlite")

LAYOUT_VERSION = 2  # PRAGMA user_version of a file in this layout
CHUNK = 500  # server or series ids per read statement
LATEST_BATCH = 50  # servers per statement of latest_of (see there)
SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    server_id INTEGER NOT NULL,
    measurement TEXT NOT NULL,
    tags TEXT NOT NULL,
    fields TEXT NOT NULL DEFAULT '[]',
    UNIQUE (server_id, measurement, tags)
);
CREATE TABLE IF NOT EXISTS points (
    series_id INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    fields TEXT NOT NULL,
    PRIMARY KEY (series_id, ts)
) STRICT, WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS latest (
    series_id INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,
    fields TEXT NOT NULL
) STRICT;
"""
_INSERT_POINT = (
    "INSERT INTO points (series_id, ts, fields) VALUES (?, ?, ?) "
    "ON CONFLICT (series_id, ts) DO UPDATE SET fields = json_patch(points.fields, excluded.fields)"
)
# An older point arriving late adds the fields the newer one lacks, and changes nothing else.
_UPSERT_LATEST = (
    "INSERT INTO latest (series_id, ts, fields) VALUES (?, ?, ?) "
    "ON CONFLICT (series_id) DO UPDATE SET "
    "fields = CASE WHEN excluded.ts >= latest.ts THEN json_patch(latest.fields, excluded.fields) "
    "ELSE json_patch(excluded.fields, latest.fields) END, "
    "ts = MAX(latest.ts, excluded.ts)"
)
_encode = msgspec.json.Encoder().encode
_decode_fields = msgspec.json.Decoder(dict[str, Value]).decode
_decode_names = msgspec.json.Decoder(list[str]).decode
_decode_tags = msgspec.json.Decoder(dict[str, str]).decode

_AGG_SQL = {
    "mean": "AVG(v)",
    "min": "MIN(v)",
    "max": "MAX(v)",
    "sum": "SUM(v)",
    "count": "COUNT(v)",
    "last": "v, MAX(ts)",  # SQLite takes the bare column v from the row of MAX(ts)
}
SeriesKey = tuple[int, str, Tags]  # server id, measurement, sorted tags
Row = tuple[int, int, dict[str, Value]]  # series id, ts, fields


def tags_to_text(tags: Tags) -> str:
    """Canonical text of a sorted tag set (the series identity)."""
    return _encode(dict(sorted(tags))).decode()


def _json_path(field: str) -> str:
    # Field names are letters, digits, '_', '.', '-' (checked on the way in): quoting is safe.
    return f'$."{field}"'


class _Pending:
    __slots__ = ("batches", "done", "error")

    def __init__(self, batches: Sequence[WriteBatch]) -> None:
        self.batches = batches
        self.done = False
        self.error: BaseException | None = None


class SQLiteStore(ReadsByServers):
    """The embedded time-series store."""

    name = "sqlite"

    def __init__(
        self,
        path: Path,
        retention_s: float,
        prune_interval_s: float,
        busy_timeout_s: float = 30.0,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.retention_s = retention_s
        self.prune_interval_s = prune_interval_s
        self.busy_timeout_s = busy_timeout_s
        self._lock_path = str(self.path) + ".writelock"
        self._prune_lock_path = str(self.path) + ".prunelock"
        self._cv = threading.Condition()
        self._pending: list[_Pending] = []
        self._flushing = False
        self._writer: sqlite3.Connection | None = None
        self._writer_pid = 0
        self._sids: dict[SeriesKey, int] = {}
        self._names: dict[int, frozenset[str]] = {}  # field names recorded per series
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._reader_gen = 0  # bumped by close(): every thread then opens a fresh connection
        self._pruner: threading.Thread | None = None
        self._pruner_pid = 0
        self._stop = threading.Event()
        with self._write_lock():
            conn = self._connect()
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                tables = conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]
                if version == 0 and tables == 0:
                    conn.executescript(SCHEMA + f"PRAGMA user_version = {LAYOUT_VERSION};")
                elif version != LAYOUT_VERSION:
                    raise StoreUnavailable(
                        f"time-series store {self.path} has layout {version}, this monapi "
                        f"reads layout {LAYOUT_VERSION}: move the file away or use another path"
                    )
            finally:
                conn.close()

    # Connections ---------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA cache_size=-32000")
            conn.execute("PRAGMA journal_size_limit=67108864")
            # Checkpoint every 10,000 WAL pages (about 40 MB) rather than 1,000: each agent push
            # dirties some 20 pages, mostly the same series-tail pages again and again, which a
            # checkpoint then copies once per 10,000 frames instead of once per 1,000.
            conn.execute("PRAGMA wal_autocheckpoint=10000")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"time-series store {self.path}: {exc}") from exc
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if (
            conn is None
            or getattr(self._local, "pid", 0) != os.getpid()
            or getattr(self._local, "gen", -1) != self._reader_gen
        ):
            conn = self._connect()
            conn.execute("PRAGMA query_only=ON")
            self._local.conn = conn
            self._local.pid = os.getpid()
            self._local.gen = self._reader_gen
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    @contextmanager
    def _write_lock(self) -> Iterator[None]:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    # Writes --------------------------------------------------------------------------------
    def write(self, batches: Sequence[WriteBatch]) -> list[Rejection]:
        self._ensure_pruner()
        req = _Pending(batches)
        with self._cv:
            self._pending.append(req)
            while not req.done:
                if self._flushing:
                    self._cv.wait()
                    continue
                # Become the flusher for everything queued so far, ours included.
                self._flushing = True
                group, self._pending = self._pending, []
                self._cv.release()
                try:
                    self._flush_group(group)
                finally:
                    self._cv.acquire()
                    self._flushing = False
                    self._cv.notify_all()
        if req.error is not None:
            raise req.error
        return []  # every value type is stored

    def _flush_group(self, group: list[_Pending]) -> None:
        try:
            self._flush([b for req in group for b in req.batches], group)
        except sqlite3.Error as exc:
            err: BaseException = StoreUnavailable(f"time-series store write failed: {exc}")
            self._sids.clear()  # ids may be from a rolled-back transaction
            self._names.clear()
            self._drop_writer()  # the next write reconnects: recover without a restart
            log.error("time-series write failed: %s", exc)
            for req in group:
                req.error = err
        except BaseException as exc:  # pragma: no cover - a bug; fail the waiters, not hang
            for req in group:
                req.error = exc
            log.exception("time-series write crashed")
        for req in group:
            req.done = True

    def _drop_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            with suppress(sqlite3.Error):
                writer.close()

    def _writer_conn(self) -> sqlite3.Connection:
        if self._writer is None or self._writer_pid != os.getpid():
            self._writer = self._connect()
            self._writer_pid = os.getpid()
            self._sids = {}
            self._names = {}
        return self._writer

    def _flush(self, batches: Sequence[WriteBatch], group: list[_Pending] | None = None) -> None:
        """Write the batches in one transaction.

        With ``group`` (the flusher's requests), writes queued while this process waited for
        the cross-process lock join the transaction: they are appended to ``group``, so they
        are marked done (or failed) with it. Fewer, larger commits when workers contend.
        """
        conn = self._writer_conn()
        rows: list[Row] = []
        misses: list[tuple[SeriesKey, int, dict[str, Value]]] = []
        self._rows(batches, rows, misses)
        with self._write_lock():
            if group is not None:
                with self._cv:
                    late, self._pending = self._pending, []
                if late:
                    group.extend(late)
                    self._rows([b for req in late for b in req.batches], rows, misses)
            conn.execute("BEGIN IMMEDIATE")
            try:
                if misses:
                    self._resolve(conn, {key for key, _, _ in misses})
                    rows.extend((self._sids[key], ts, f) for key, ts, f in misses)
                # Newest fields per series (merged in time order) and field names not yet
                # recorded for their series.
                latest: dict[int, tuple[int, dict[str, Value]]] = {}
                new_names: dict[int, set[str]] = {}
                names = self._names
                params = []
                for sid, ts, fields in rows:
                    params.append((sid, ts, _encode(fields).decode()))
                    cur = latest.get(sid)
                    if cur is None:
                        latest[sid] = (ts, fields)
                    elif ts >= cur[0]:
                        latest[sid] = (ts, {**cur[1], **fields})
                    else:
                        latest[sid] = (cur[0], {**fields, **cur[1]})
                    known = names.get(sid)
                    if known is None or not known.issuperset(fields):
                        new_names.setdefault(sid, set()).update(fields)
                conn.executemany(_INSERT_POINT, params)
                conn.executemany(
                    _UPSERT_LATEST,
                    [(sid, ts, _encode(f).decode()) for sid, (ts, f) in latest.items()],
                )
                for sid, added in new_names.items():
                    self._record_names(conn, sid, added)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                self._names.clear()
                raise

    def _record_names(self, conn: sqlite3.Connection, sid: int, added: set[str]) -> None:
        """Add field names to a series' list (read inside the transaction: other processes
        may have added some)."""
        row = conn.execute("SELECT fields FROM series WHERE id = ?", (sid,)).fetchone()
        current = set(_decode_names(row[0])) if row else set()
        if not current.issuperset(added):
            current |= added
            conn.execute(
                "UPDATE series SET fields = ? WHERE id = ?",
                (_encode(sorted(current)).decode(), sid),
            )
        self._names[sid] = frozenset(current)

    def _rows(
        self,
        batches: Sequence[WriteBatch],
        rows: list[Row],
        misses: list[tuple[SeriesKey, int, dict[str, Value]]],
    ) -> None:
        """Rows of known series into ``rows``; points of series without an id yet into
        ``misses``."""
        sids = self._sids
        for batch in batches:
            server_id = batch.server_id
            for p in batch.points:
                key = (server_id, p.measurement, p.tags)
                sid = sids.get(key)
                if sid is None:
                    misses.append((key, p.ts, p.fields))
                else:
                    rows.append((sid, p.ts, p.fields))

    def _resolve(self, conn: sqlite3.Connection, keys: set[SeriesKey]) -> None:
        """Find or create series ids for (server, measurement, tags) keys."""
        for key in keys:
            server_id, meas, tags = key
            text = tags_to_text(tags)
            conn.execute(
                "INSERT OR IGNORE INTO series (server_id, measurement, tags) VALUES (?, ?, ?)",
                (server_id, meas, text),
            )
            sid, names = conn.execute(
                "SELECT id, fields FROM series WHERE server_id = ? AND measurement = ? "
                "AND tags = ?",
                (server_id, meas, text),
            ).fetchone()
            self._sids[key] = int(sid)
            self._names[int(sid)] = frozenset(_decode_names(names))

    # Reads ---------------------------------------------------------------------------------
    def _series(
        self,
        conn: sqlite3.Connection,
        server_ids: Sequence[int],
        selectors: Sequence[tuple[str, str]],
    ) -> dict[int, list[tuple[int, str, str, dict[str, str]]]]:
        """(series id, measurement, field, tags) of every series holding a selected field, per
        server: measurements as asked, then tags, then fields as asked."""
        wanted: dict[str, list[str]] = {}
        for meas, field in selectors:
            wanted.setdefault(meas, []).append(field)
        out: dict[int, list[tuple[int, str, str, dict[str, str]]]] = {}
        marks = ",".join("?" * len(server_ids))
        for meas, fields in wanted.items():
            for server_id, sid, tags, names in conn.execute(
                "SELECT server_id, id, tags, fields FROM series"
                f" WHERE server_id IN ({marks}) AND measurement = ? ORDER BY server_id, tags",
                (*server_ids, meas),
            ):
                present = set(_decode_names(names))
                out.setdefault(int(server_id), []).extend(
                    (int(sid), meas, f, _decode_tags(tags)) for f in fields if f in present
                )
        return out

    @staticmethod
    def _buckets(
        conn: sqlite3.Connection,
        wanted: Iterable[tuple[int, str]],
        start_ns: int,
        end_ns: int,
        step_ns: int,
        agg: str,
    ) -> dict[tuple[int, str], list[tuple[int, Value]]]:
        """(bucket start, value) of each wanted (series id, field) with points in the range.

        One statement per field name and CHUNK series: each series is one walk of the
        (series_id, ts) key, and a bucket's points are aggregated in time order. ``LIMIT -1``
        keeps the inner select from being flattened into the grouping one: flattened, SQLite
        sorts the whole JSON of each point and parses it twice (the filter, the aggregate)."""
        by_field: dict[str, list[int]] = {}
        for sid, field in dict.fromkeys(wanted):
            by_field.setdefault(field, []).append(sid)
        outer = _AGG_SQL[agg]
        out: dict[tuple[int, str], list[tuple[int, Value]]] = {}
        for field, sids in by_field.items():
            for i in range(0, len(sids), CHUNK):
                chunk = sids[i : i + CHUNK]
                sql = (
                    f"SELECT series_id, (ts / ?) * ? AS b, {outer} FROM ("
                    "SELECT series_id, ts, json_extract(fields, ?) AS v FROM points "
                    f"WHERE series_id IN ({','.join('?' * len(chunk))}) AND ts >= ? AND ts <= ? "
                    "LIMIT -1) WHERE v IS NOT NULL GROUP BY series_id, b ORDER BY series_id, b"
                )
                params = (step_ns, step_ns, _json_path(field), *chunk, start_ns, end_ns)
                for sid, b, value, *_ in conn.execute(sql, params):
                    out.setdefault((sid, field), []).append((int(b), value))
        return out

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
        """The answer of ``query`` for each server (a key only when it has series)."""
        if agg not in _AGG_SQL:
            raise ValueError(f"unknown aggregation {agg!r}")
        try:
            conn = self._reader()
            out: dict[int, list[Series]] = {}
            ids = list(dict.fromkeys(server_ids))
            for i in range(0, len(ids), CHUNK):
                found = self._series(conn, ids[i : i + CHUNK], selectors)
                if tag_filter:
                    for server_id, rows in found.items():
                        found[server_id] = [
                            r for r in rows if all(r[3].get(k) == v for k, v in tag_filter.items())
                        ]
                wanted = [(sid, field) for rows in found.values() for sid, _, field, _ in rows]
                points = self._buckets(conn, wanted, start_ns, end_ns, step_ns, agg)
                for server_id, rows in found.items():
                    series = [
                        Series(meas, field, tags, list(points[(sid, field)]))
                        for sid, meas, field, tags in rows
                        if (sid, field) in points
                    ]
                    if series:
                        out[server_id] = series
            return out
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"time-series store read failed: {exc}") from exc

    def latest(self, server_ids: Sequence[int]) -> dict[int, list[LatestValue]]:
        out: dict[int, list[LatestValue]] = {sid: [] for sid in server_ids}
        if not server_ids:
            return out
        tag_maps: dict[str, dict[str, str]] = {}
        try:
            conn = self._reader()
            ids = list(server_ids)
            for i in range(0, len(ids), CHUNK):
                self._latest_into(out, conn, ids[i : i + CHUNK], None, tag_maps)
            return out
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"time-series store read failed: {exc}") from exc

    def latest_of(
        self, server_ids: Sequence[int], selectors: Sequence[tuple[str, str]]
    ) -> Iterator[tuple[int, list[LatestValue]]]:
        """(server id, what ``latest`` answers for it keeping only the (measurement, field)
        pairs of ``selectors``) for each distinct server id, in order. Only those measurements'
        rows are read and only those fields become values (the overview wants 6 of the 36 an
        agent sends), ``LATEST_BATCH`` servers per statement: a caller that uses each answer as
        it comes has one batch of values alive at a time, not 7,000 for a page of 1,000
        servers, and so sets off far fewer full garbage collections (some 50 ms each here)."""
        wanted: dict[str, list[str]] = {}
        for meas, name in selectors:
            names = wanted.setdefault(meas, [])
            if name not in names:
                names.append(name)
        by_meas = {m: sorted(n) for m, n in wanted.items()}
        ids = list(dict.fromkeys(server_ids))
        tag_maps: dict[str, dict[str, str]] = {}
        for i in range(0, len(ids), LATEST_BATCH):
            got: dict[int, list[LatestValue]] = {sid: [] for sid in ids[i : i + LATEST_BATCH]}
            if by_meas:
                try:
                    self._latest_into(got, self._reader(), list(got), by_meas, tag_maps)
                except sqlite3.Error as exc:
                    raise StoreUnavailable(f"time-series store read failed: {exc}") from exc
            yield from got.items()

    @staticmethod
    def _latest_into(
        out: dict[int, list[LatestValue]],
        conn: sqlite3.Connection,
        server_ids: Sequence[int],
        wanted: dict[str, list[str]] | None,
        tag_maps: dict[str, dict[str, str]],
    ) -> None:
        """Append the latest values of ``server_ids`` (one statement) to their lists in
        ``out``: of every field (``wanted`` None), or of the sorted field names of ``wanted``'s
        measurements; series by server, measurement and tags, then fields by name.

        Values with the same tag set share one ``tags`` dict (``tag_maps``; read-only for
        callers): fewer objects, and so fewer full garbage collections."""
        marks = ",".join("?" * len(server_ids))
        sql = (
            "SELECT s.server_id, s.measurement, s.tags, l.ts, l.fields "
            "FROM series s JOIN latest l ON l.series_id = s.id "
            f"WHERE s.server_id IN ({marks})"
        )
        params: list[int | str] = [*server_ids]
        if wanted is not None:
            sql += f" AND s.measurement IN ({','.join('?' * len(wanted))})"
            params.extend(wanted)
        sql += " ORDER BY s.server_id, s.measurement, s.tags"
        mk = LatestValue
        # Integers as stored: ts is a STRICT column, server_id has INTEGER affinity.
        for server_id, meas, tags, ts, fields in conn.execute(sql, params):
            tag_map = tag_maps.get(tags)
            if tag_map is None:
                tag_map = tag_maps[tags] = _decode_tags(tags)
            values = _decode_fields(fields)
            dest = out[server_id]
            if wanted is None:
                for k in sorted(values):
                    dest.append(mk(meas, k, tag_map, ts, values[k]))
            else:
                for k in wanted[meas]:
                    if k in values:
                        dest.append(mk(meas, k, tag_map, ts, values[k]))

    # Maintenance ---------------------------------------------------------------------------
    @contextmanager
    def _exclusive_writer(self) -> Iterator[sqlite3.Connection]:
        """The writer connection, with no group flush running in this process meanwhile."""
        with self._cv:
            while self._flushing:
                self._cv.wait()
            self._flushing = True
        try:
            yield self._writer_conn()
        finally:
            with self._cv:
                self._flushing = False
                self._cv.notify_all()

    def delete_server(self, server_id: int) -> int:
        with self._exclusive_writer() as conn, self._write_lock():
            conn.execute("BEGIN IMMEDIATE")
            try:
                ids = [
                    r[0]
                    for r in conn.execute("SELECT id FROM series WHERE server_id = ?", (server_id,))
                ]
                conn.executemany("DELETE FROM points WHERE series_id = ?", [(i,) for i in ids])
                conn.executemany("DELETE FROM latest WHERE series_id = ?", [(i,) for i in ids])
                conn.execute("DELETE FROM series WHERE server_id = ?", (server_id,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            for key in [k for k in self._sids if k[0] == server_id]:
                self._names.pop(self._sids.pop(key), None)
            return len(ids)

    def prune(self, before_ns: int) -> int:
        """Delete samples older than ``before_ns``, one series at a time so writers keep going."""
        conn = self._connect()
        removed = 0
        try:
            ids = [r[0] for r in conn.execute("SELECT id FROM series")]
            for sid in ids:
                with self._write_lock():
                    cur = conn.execute(
                        "DELETE FROM points WHERE series_id = ? AND ts < ?", (sid, before_ns)
                    )
                    removed += cur.rowcount
            with self._write_lock():
                conn.execute("DELETE FROM latest WHERE ts < ?", (before_ns,))
        finally:
            conn.close()
        return removed

    def prune_expired(self) -> int:
        """Apply the retention setting once, unless another process is already doing it."""
        fd = os.open(self._prune_lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0
            cutoff = int((time.time() - self.retention_s) * 1e9)
            removed = self.prune(cutoff)
            if removed:
                log.info(
                    "retention: removed %d points older than %.0f s", removed, self.retention_s
                )
            return removed
        finally:
            os.close(fd)

    def _ensure_pruner(self) -> None:
        if self._pruner is not None and self._pruner_pid == os.getpid():
            return
        with self._readers_lock:
            if self._pruner is not None and self._pruner_pid == os.getpid():
                return
            self._pruner_pid = os.getpid()
            self._stop = threading.Event()
            self._pruner = threading.Thread(
                target=self._prune_loop, name="monapi-retention", daemon=True
            )
            self._pruner.start()

    def _prune_loop(self) -> None:
        while not self._stop.wait(self.prune_interval_s):
            try:
                self.prune_expired()
            except Exception:
                log.exception("retention pruning failed; will try again")

    def ping(self) -> None:
        try:
            self._reader().execute("SELECT 1 FROM series LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"time-series store {self.path}: {exc}") from exc

    def stats(self) -> dict[str, Any]:
        conn = self._reader()
        return {
            "series": conn.execute("SELECT COUNT(*) FROM series").fetchone()[0],
            "points": conn.execute("SELECT COUNT(*) FROM points").fetchone()[0],
        }

    def close(self) -> None:
        self._stop.set()
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
            self._reader_gen += 1
        if self._writer is not None and self._writer_pid == os.getpid():
            self._writer.close()
            self._writer = None


def _factory(settings: Settings) -> SQLiteStore:
    return SQLiteStore(
        settings.resolved_tsdb_path, settings.retention, settings.retention_check_interval
    )


register("sqlite", _factory)
