"""The on-disk spool: samples that could not be delivered yet, oldest first, in SQLite (WAL).

One row per sample (its points as zlib-compressed JSON), so re-sending keeps the order in which
samples were taken and a partial drain deletes exactly what the server confirmed. The spool is
bounded by the bytes it holds and by the age of its samples; the oldest go first, and every drop
is logged with a count, never silently. A small ``meta`` table keeps what ``monapi-agent status``
reports (last successful push, last error) and the last field configuration, so an agent that
starts while the server is away still collects what the server asked for.

Only the agent's sender thread writes here; ``status`` opens the file read-only.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

log = logging.getLogger("monapi_agent.spool")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    points INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

Points = list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class SpoolStats:
    """What the spool holds."""

    samples: int
    points: int
    bytes: int
    oldest: float | None


class Spool:
    """Undelivered samples, bounded by ``max_bytes`` and ``max_age`` seconds."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int,
        max_age: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._clock = clock
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.exists():
            # Created owner-only: the spool holds the server's metrics.
            path.touch(mode=0o600)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a committed sample survives a crash of the agent; a power cut may lose
        # the last commits, which is the usual trade for not calling fsync every interval.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        row = self._db.execute(
            "SELECT count(*), coalesce(sum(points), 0), coalesce(sum(length(body)), 0) FROM samples"
        ).fetchone()
        self._samples, self._points, self._bytes = int(row[0]), int(row[1]), int(row[2])
        # An agent stopped for longer than max_age (or restarted with smaller bounds) must not
        # send what the bounds exclude before its first new sample.
        self.enforce_bounds()

    # -- samples ------------------------------------------------------------------------------

    def put(self, samples: Sequence[Points]) -> None:
        """Append samples (in the order given), then enforce the bounds."""
        rows = []
        now = self._clock()
        for points in samples:
            if not points:
                continue
            body = zlib.compress(json.dumps(points, separators=(",", ":")).encode(), 1)
            rows.append((now, len(points), body))
        if not rows:
            return
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT INTO samples (created, points, body) VALUES (?, ?, ?)", rows
            )
        self._samples += len(rows)
        self._points += sum(r[1] for r in rows)
        self._bytes += sum(len(r[2]) for r in rows)
        self.enforce_bounds()

    def peek(self, max_points: int) -> list[tuple[int, Points]]:
        """The oldest samples, as many as fit in ``max_points`` (always at least one)."""
        out: list[tuple[int, Points]] = []
        total = 0
        for rowid, n, body in self._db.execute(
            "SELECT id, points, body FROM samples ORDER BY id LIMIT 10000"
        ):
            if out and total + n > max_points:
                break
            out.append((rowid, json.loads(zlib.decompress(body))))
            total += n
        return out

    def delete(self, ids: Sequence[int]) -> None:
        """Remove delivered (or deliberately dropped) samples."""
        if not ids:
            return
        marks = ",".join("?" * len(ids))
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute(
                f"SELECT count(*), coalesce(sum(points), 0), coalesce(sum(length(body)), 0)"
                f" FROM samples WHERE id IN ({marks})",
                list(ids),
            ).fetchone()
            self._db.execute(f"DELETE FROM samples WHERE id IN ({marks})", list(ids))
        self._samples -= int(row[0])
        self._points -= int(row[1])
        self._bytes -= int(row[2])

    def enforce_bounds(self) -> None:
        """Drop samples older than max_age, then the oldest until under max_bytes; log counts."""
        cutoff = self._clock() - self.max_age
        # This runs on every put: look at the oldest row (by id, an index lookup) before
        # scanning the table for expired ones. Rows are appended in time order, so while the
        # oldest is young enough none is expired (8 ms saved per put at 100,000 samples).
        first = self._db.execute("SELECT created FROM samples ORDER BY id LIMIT 1").fetchone()
        old = (0, 0, 0)
        if first is not None and first[0] < cutoff:
            old = self._db.execute(
                "SELECT count(*), coalesce(sum(points), 0), coalesce(sum(length(body)), 0)"
                " FROM samples WHERE created < ?",
                (cutoff,),
            ).fetchone()
        if old[0]:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("DELETE FROM samples WHERE created < ?", (cutoff,))
            self._samples -= int(old[0])
            self._points -= int(old[1])
            self._bytes -= int(old[2])
            log.warning(
                "spool: dropped %d sample(s) (%d points) older than %s, oldest first",
                old[0],
                old[1],
                _human_duration(self.max_age),
            )
        if self._bytes <= self.max_bytes:
            return
        dropped = points = size = 0
        ids: list[int] = []
        over = self._bytes - self.max_bytes
        for rowid, n, length in self._db.execute(
            "SELECT id, points, length(body) FROM samples ORDER BY id"
        ):
            if size >= over:
                break
            ids.append(rowid)
            dropped += 1
            points += n
            size += length
        self.delete(ids)
        log.warning(
            "spool: dropped %d oldest sample(s) (%d points, %d bytes) to stay under %.1f MB",
            dropped,
            points,
            size,
            self.max_bytes / 1024 / 1024,
        )

    def stats(self) -> SpoolStats:
        """Counts kept in step with every change (no scan)."""
        oldest = None
        if self._samples:
            row = self._db.execute("SELECT min(created) FROM samples").fetchone()
            oldest = row[0]
        return SpoolStats(self._samples, self._points, self._bytes, oldest)

    def __len__(self) -> int:
        return self._samples

    # -- meta ---------------------------------------------------------------------------------

    def set_meta(self, **values: Any) -> None:
        """Store JSON values under their names (one transaction)."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [(k, json.dumps(v)) for k, v in values.items()],
            )

    def get_meta(self, key: str) -> Any:
        """A stored value, or None."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def close(self) -> None:
        """Close the database (the WAL is checkpointed)."""
        self._db.close()


def read_status(path: Path) -> tuple[SpoolStats, dict[str, Any]] | None:
    """The spool's counts and meta values, read-only (for `status`); None if there is no file."""
    if not path.exists():
        return None
    # Quoted: a '?', '#' or '%' in the path would otherwise end or change the file name.
    db = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True)
    try:
        db.execute("PRAGMA busy_timeout=5000")
        try:
            row = db.execute(
                "SELECT count(*), coalesce(sum(points), 0), coalesce(sum(length(body)), 0),"
                " min(created) FROM samples"
            ).fetchone()
            meta = {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM meta")}
        except sqlite3.OperationalError:  # a file created but never initialised
            return SpoolStats(0, 0, 0, None), {}
        return SpoolStats(int(row[0]), int(row[1]), int(row[2]), row[3]), meta
    finally:
        db.close()


def _human_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
