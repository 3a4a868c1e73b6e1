"""The time-series store interface. Every backend implements :class:`TimeSeriesStore`."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Protocol, overload

import msgspec

from ..settings import Settings

AGGREGATIONS = ("mean", "min", "max", "last", "sum", "count")
Value = float | int | bool | str
Tags = tuple[tuple[str, str], ...]


class Point(msgspec.Struct, gc=False):
    """One validated point. ``tags`` are sorted pairs; ``ts`` is nanoseconds since the epoch."""

    measurement: str
    tags: Tags
    ts: int
    fields: dict[str, Value]


@dataclass(slots=True)
class EncodedLines:
    """A batch's points already validated and written as line protocol, the way
    ``lineprotocol.encode`` writes them for InfluxDB: the identity tags of the batch applied,
    nanosecond timestamps, one line per point, in the order of ``WriteBatch.points``. Only a
    store that declares it (``encoded_field_ok``) is given such batches; field values may be
    written in any text that InfluxDB reads as the same float (``-0``, ``1.50``), as the client
    sent them."""

    data: bytes  # the lines (UTF-8) joined by "\n", without a final newline
    count: int  # how many lines (== len(points))


class LazyPoints(Sequence[Point]):
    """The points of a batch sent as :class:`EncodedLines`, built only when something reads them
    (a store that does not take encoded lines, or InfluxDB refusing part of a write). ``build``
    runs the exact path again: it must not need a request context (it may run in another
    request's thread under group commit) and must give exactly ``count`` points."""

    __slots__ = ("_build", "_count", "_lock", "_points")

    def __init__(self, count: int, build: Callable[[], Sequence[Point]]) -> None:
        self._count = count
        self._build: Callable[[], Sequence[Point]] | None = build
        self._points: Sequence[Point] | None = None
        self._lock = threading.Lock()

    @property
    def built(self) -> bool:
        return self._points is not None

    def _get(self) -> Sequence[Point]:
        points = self._points
        if points is None:
            with self._lock:
                if self._points is None:
                    assert self._build is not None
                    built = self._build()
                    if len(built) != self._count:
                        raise RuntimeError(
                            f"the exact path gave {len(built)} points for a batch of "
                            f"{self._count} encoded lines"
                        )
                    self._points, self._build = built, None
                points = self._points
            assert points is not None
        return points

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> Point: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Point]: ...

    def __getitem__(self, index: int | slice) -> Point | Sequence[Point]:
        return self._get()[index]

    def __iter__(self) -> Iterator[Point]:
        return iter(self._get())


@dataclass(slots=True)
class WriteBatch:
    """Points of one server; the identity comes from the key, never from the points.

    ``lines``: the same points as line protocol (see :class:`EncodedLines`), for a store that
    takes them; any other store reads ``points``."""

    server_id: int
    hostname: str
    points: Sequence[Point]
    lines: EncodedLines | None = None


@dataclass(slots=True)
class Series:
    """A range-query answer for one (measurement, field, tags)."""

    measurement: str
    field: str
    tags: dict[str, str]
    points: list[tuple[int, Value]] = dc_field(default_factory=list)  # (bucket start ns, value)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A point the engine refused: ``batch`` and ``index`` locate it in what was written."""

    batch: int
    index: int
    field: str | None
    reason: str


@dataclass(slots=True)
class LatestValue:
    measurement: str
    field: str
    tags: dict[str, str]
    ts: int
    value: Value


class TimeSeriesStore(Protocol):
    """What monapi needs from a time-series engine."""

    name: str

    def write(self, batches: Sequence[WriteBatch]) -> list[Rejection]:
        """Store the points; return only once the engine has accepted them.

        Returns the points the engine refused (a value it cannot store, a type conflict): every
        point not listed is stored. Raises StoreUnavailable when the engine is away or its
        answer is unknown (retry later): then no point may be reported stored."""
        ...

    def query(
        self,
        server_id: int,
        selectors: Sequence[tuple[str, str]],
        start_ns: int,
        end_ns: int,
        step_ns: int,
        agg: str,
        tag_filter: dict[str, str] | None = None,
    ) -> list[Series]:
        """Series of (measurement, field) pairs in [start, end], one value per step bucket."""
        ...

    def query_many(
        self,
        server_ids: Sequence[int],
        selectors: Sequence[tuple[str, str]],
        start_ns: int,
        end_ns: int,
        step_ns: int,
        agg: str,
    ) -> dict[int, list[Series]]:
        """For each server, what ``query(server_id, selectors, start_ns, end_ns, step_ns, agg)``
        would answer, in one round trip (or a few) rather than one per server. Every requested
        server id is a key, with an empty list when it has no points in the range."""
        ...

    def latest(self, server_ids: Sequence[int]) -> dict[int, list[LatestValue]]:
        """The newest value of every series of each server."""
        ...

    def delete_server(self, server_id: int) -> int:
        """Delete every point of a server; returns how many series went."""
        ...

    def prune(self, before_ns: int) -> int:
        """Delete points older than ``before_ns``; returns how many were removed."""
        ...

    def ping(self) -> None:
        """Raise StoreUnavailable unless the engine answers."""
        ...

    def close(self) -> None: ...


class ReadsByServers:
    """``query`` and ``query_many`` of a backend from its ``_read``, which answers for a set of
    servers at once: one code path, so that both give the same answers."""

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
        """What ``query`` answers for each server; a key only for a server with series."""
        raise NotImplementedError

    def query(
        self,
        server_id: int,
        selectors: Sequence[tuple[str, str]],
        start_ns: int,
        end_ns: int,
        step_ns: int,
        agg: str,
        tag_filter: dict[str, str] | None = None,
    ) -> list[Series]:
        got = self._read([server_id], selectors, start_ns, end_ns, step_ns, agg, tag_filter)
        return got.get(server_id, [])

    def query_many(
        self,
        server_ids: Sequence[int],
        selectors: Sequence[tuple[str, str]],
        start_ns: int,
        end_ns: int,
        step_ns: int,
        agg: str,
    ) -> dict[int, list[Series]]:
        got = self._read(server_ids, selectors, start_ns, end_ns, step_ns, agg)
        return {sid: got.get(sid, []) for sid in server_ids}


StoreFactory = Callable[[Settings], TimeSeriesStore]
_REGISTRY: dict[str, StoreFactory] = {}
# Backends imported only when chosen: module (in this package) -> its ``create`` function.
_MODULES = {"sqlite": "sqlite", "influxdb": "influxdb", "victoriametrics": "victoriametrics"}


def register(name: str, factory: StoreFactory) -> None:
    """Make a backend choosable as ``MONAPI_TSDB=<name>``."""
    _REGISTRY[name] = factory


def create_store(settings: Settings) -> TimeSeriesStore:
    """The configured backend."""
    factory = _REGISTRY.get(settings.tsdb)
    if factory is None and settings.tsdb in _MODULES:
        module = importlib.import_module(f"{__package__}.{_MODULES[settings.tsdb]}")
        factory = _REGISTRY.get(settings.tsdb) or module.create
    if factory is None:
        choices = ", ".join(sorted({*_REGISTRY, *_MODULES}))
        raise ValueError(f"MONAPI_TSDB={settings.tsdb!r} is not one of: {choices}")
    return factory(settings)
