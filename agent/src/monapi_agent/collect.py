"""What monapi-agent measures: readings from a Source turned into points for monapi.

Design:

- The numbers come from a ``Source`` (``PsutilSource`` in production). The source, the wall
  clock and the monotonic clock are constructor parameters, so tests feed fixture readings and
  fake clocks and assert exact values; nothing here reads the machine or the time directly.
- The server decides which fields it wants (``set_fields``, from ``GET /api/v1/agent/config``).
  Only those are produced, and only the source methods they need are called: reading every
  disk and interface on each tick would be wasted CPU on the machine being monitored.
- CPU percentages and I/O rates come from cumulative counters, so they need two readings: the
  previous one is kept (from ``prime()`` or the previous ``collect()``) and the first reading
  of anything gives no value rather than a made-up one.
- Rates are per second over the *monotonic* clock, which never jumps when NTP or an operator
  sets the wall clock. Counters are read with psutil's ``nowrap=False``: we see the raw kernel
  counters and handle resets ourselves. A counter that went down was reset (reboot of a
  device, driver reload, 32-bit wrap) and restarted from zero, so the delta is the new value:
  never negative, at worst a little low for one interval.
- Values the server would refuse are not sent: a field outside its configured bounds is dropped
  from its point (the server rejects a whole point for one bad field), and fields the agent
  cannot produce are skipped. Problems are logged once, not on every tick, so a misconfigured
  field or a broken source does not flood the journal; ``collect()`` never raises because of a
  source.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Generic, Protocol, TypeVar

import psutil

__all__ = [
    "KNOWN_FIELDS",
    "Collector",
    "CpuTimes",
    "DiskIO",
    "DiskUsage",
    "FieldWant",
    "Filters",
    "Memory",
    "NetIO",
    "Partition",
    "PsutilSource",
    "Source",
    "Swap",
    "default_wants",
]

T = TypeVar("T")


# --- value objects -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CpuTimes:
    """Cumulative CPU seconds, /proc/stat semantics (guest times are inside user and nice)."""

    user: float
    nice: float
    system: float
    idle: float
    iowait: float
    irq: float
    softirq: float
    steal: float
    guest: float
    guest_nice: float


@dataclass(frozen=True, slots=True)
class Memory:
    """Physical memory in bytes."""

    total: int
    available: int


@dataclass(frozen=True, slots=True)
class Swap:
    """Swap space in bytes."""

    total: int
    used: int


@dataclass(frozen=True, slots=True)
class Partition:
    """A mounted file system."""

    device: str
    mountpoint: str
    fstype: str


@dataclass(frozen=True, slots=True)
class DiskUsage:
    """Space of one file system in bytes."""

    total: int
    used: int
    free: int


@dataclass(frozen=True, slots=True)
class DiskIO:
    """Cumulative I/O counters of one block device."""

    read_bytes: int
    write_bytes: int
    read_count: int
    write_count: int


@dataclass(frozen=True, slots=True)
class NetIO:
    """Cumulative counters of one network interface."""

    bytes_recv: int
    bytes_sent: int
    packets_recv: int
    packets_sent: int
    errin: int
    errout: int
    dropin: int
    dropout: int


class Source(Protocol):
    """Where the numbers come from: the machine (PsutilSource) or a test's fixtures."""

    def cpu_times(self) -> CpuTimes: ...
    def load_average(self) -> tuple[float, float, float]: ...
    def memory(self) -> Memory: ...
    def swap(self) -> Swap: ...
    def partitions(self) -> list[Partition]: ...
    def disk_usage(self, mountpoint: str) -> DiskUsage: ...
    def disk_io(self) -> dict[str, DiskIO]: ...
    def net_io(self) -> dict[str, NetIO]: ...
    def boot_time(self) -> float: ...
    def process_count(self) -> int: ...


class PsutilSource:
    """The real machine, read with psutil."""

    def cpu_times(self) -> CpuTimes:
        """Cumulative CPU times of all cores; 0.0 for what the platform does not have."""
        t = psutil.cpu_times()
        return CpuTimes(
            *(
                float(getattr(t, name, 0.0))
                for name in (
                    "user",
                    "nice",
                    "system",
                    "idle",
                    "iowait",
                    "irq",
                    "softirq",
                    "steal",
                    "guest",
                    "guest_nice",
                )
            )
        )

    def load_average(self) -> tuple[float, float, float]:
        """Load averages over 1, 5 and 15 minutes."""
        one, five, fifteen = psutil.getloadavg()
        return (float(one), float(five), float(fifteen))

    def memory(self) -> Memory:
        """Total and available physical memory."""
        vm = psutil.virtual_memory()
        return Memory(total=int(vm.total), available=int(vm.available))

    def swap(self) -> Swap:
        """Total and used swap."""
        sm = psutil.swap_memory()
        return Swap(total=int(sm.total), used=int(sm.used))

    def partitions(self) -> list[Partition]:
        """Mounted physical file systems."""
        return [
            Partition(device=p.device, mountpoint=p.mountpoint, fstype=p.fstype)
            for p in psutil.disk_partitions(all=False)
        ]

    def disk_usage(self, mountpoint: str) -> DiskUsage:
        """Space of the file system mounted at mountpoint."""
        u = psutil.disk_usage(mountpoint)
        return DiskUsage(total=int(u.total), used=int(u.used), free=int(u.free))

    def disk_io(self) -> dict[str, DiskIO]:
        """Raw cumulative counters per block device (the Collector handles resets)."""
        counters = psutil.disk_io_counters(perdisk=True, nowrap=False) or {}
        return {
            name: DiskIO(
                read_bytes=int(c.read_bytes),
                write_bytes=int(c.write_bytes),
                read_count=int(c.read_count),
                write_count=int(c.write_count),
            )
            for name, c in counters.items()
        }

    def net_io(self) -> dict[str, NetIO]:
        """Raw cumulative counters per network interface (the Collector handles resets)."""
        counters = psutil.net_io_counters(pernic=True, nowrap=False) or {}
        return {
            name: NetIO(
                bytes_recv=int(c.bytes_recv),
                bytes_sent=int(c.bytes_sent),
                packets_recv=int(c.packets_recv),
                packets_sent=int(c.packets_sent),
                errin=int(c.errin),
                errout=int(c.errout),
                dropin=int(c.dropin),
                dropout=int(c.dropout),
            )
            for name, c in counters.items()
        }

    def boot_time(self) -> float:
        """When the machine booted, epoch seconds."""
        return float(psutil.boot_time())

    def process_count(self) -> int:
        """How many processes exist."""
        return len(psutil.pids())


# --- what the server may ask for ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldWant:
    """One field the server wants: its type and the bounds it enforces."""

    measurement: str
    name: str
    type: str
    min: float | None = None
    max: float | None = None

    @classmethod
    def from_config(cls, d: Mapping[str, Any]) -> FieldWant:
        """One entry of the agent configuration's "fields"; other keys (unit...) are ignored."""
        lo, hi = d.get("min"), d.get("max")
        return cls(
            measurement=str(d["measurement"]),
            name=str(d["name"]),
            type=str(d["type"]),
            min=None if lo is None else float(lo),
            max=None if hi is None else float(hi),
        )


@dataclass(frozen=True)
class Filters:
    """fnmatch globs of what is not worth reporting (pseudo file systems, loop devices...)."""

    ignore_mounts: tuple[str, ...] = ("/proc*", "/sys*", "/dev*", "/run*", "/snap/*", "/boot/efi")
    ignore_fstypes: tuple[str, ...] = (
        "tmpfs",
        "devtmpfs",
        "squashfs",
        "overlay",
        "proc",
        "sysfs",
        "cgroup*",
        "autofs",
        "nsfs",
        "tracefs",
        "devpts",
        "fuse.*",
    )
    ignore_devices: tuple[str, ...] = ("loop*", "ram*", "zram*", "fd*", "sr*")
    ignore_interfaces: tuple[str, ...] = ("lo",)


_CPU = (
    "usage_percent",
    "user_percent",
    "system_percent",
    "iowait_percent",
    "steal_percent",
    "idle_percent",
)
# Rate field -> the cumulative counter it is computed from.
_DISKIO_COUNTERS = {
    "read_bytes_per_sec": "read_bytes",
    "write_bytes_per_sec": "write_bytes",
    "reads_per_sec": "read_count",
    "writes_per_sec": "write_count",
}
_NET_COUNTERS = {
    "bytes_recv_per_sec": "bytes_recv",
    "bytes_sent_per_sec": "bytes_sent",
    "packets_recv_per_sec": "packets_recv",
    "packets_sent_per_sec": "packets_sent",
    "err_in_per_sec": "errin",
    "err_out_per_sec": "errout",
    "drop_in_per_sec": "dropin",
    "drop_out_per_sec": "dropout",
}

# (measurement, name) -> the type the agent produces natively. Must stay equal to the server's
# DEFAULT_FIELDS (a test checks it); the agent cannot import the server to read it.
KNOWN_FIELDS: dict[tuple[str, str], str] = {
    **{("cpu", n): "float" for n in _CPU},
    ("system", "load1"): "float",
    ("system", "load5"): "float",
    ("system", "load15"): "float",
    ("system", "uptime"): "int",
    ("system", "processes"): "int",
    ("mem", "total"): "int",
    ("mem", "used"): "int",
    ("mem", "available"): "int",
    ("mem", "used_percent"): "float",
    ("swap", "total"): "int",
    ("swap", "used"): "int",
    ("swap", "used_percent"): "float",
    ("disk", "total"): "int",
    ("disk", "used"): "int",
    ("disk", "free"): "int",
    ("disk", "used_percent"): "float",
    **{("diskio", n): "float" for n in _DISKIO_COUNTERS},
    **{("net", n): "float" for n in _NET_COUNTERS},
}
_PRODUCIBLE_TYPES = ("int", "float")


def default_wants() -> list[FieldWant]:
    """Every known field with its native type and no bounds (before the server was asked)."""
    return [FieldWant(meas, name, ftype) for (meas, name), ftype in KNOWN_FIELDS.items()]


# --- the collector -----------------------------------------------------------------------------


def _delta(new: float, old: float) -> float:
    """Growth of a cumulative counter; one that went down restarted from zero."""
    return new - old if new >= old else new


def _clamp_pct(v: float) -> float:
    return min(100.0, max(0.0, v))


def _cpu_total(t: CpuTimes) -> float:
    # guest and guest_nice are already counted in user and nice: adding them again would
    # understate every percentage on a virtualisation host.
    return t.user + t.nice + t.system + t.idle + t.iowait + t.irq + t.softirq + t.steal


C = TypeVar("C", DiskIO, NetIO)


class _History(Generic[C]):
    """The previous reading of cumulative counters by name, and its monotonic time."""

    __slots__ = ("at", "counters")

    def __init__(self) -> None:
        self.at: float | None = None
        self.counters: dict[str, C] = {}

    def advance(self, at: float, counters: dict[str, C]) -> tuple[float, dict[str, C]] | None:
        """Keep this reading; (seconds since the previous one, its counters), None if none.

        The previous reading is replaced as a whole, so a name that vanished is forgotten.
        """
        previous = None if self.at is None else (at - self.at, self.counters)
        self.at, self.counters = at, counters
        return previous

    def forget(self) -> None:
        """Drop the reading: the next one will be the first."""
        self.at, self.counters = None, {}


class _Failed:
    """Marker for a source call that raised (None could be a legitimate answer)."""


_FAILED = _Failed()


class Collector:
    """Turns Source readings into monapi points for the fields the server wants."""

    def __init__(
        self,
        source: Source,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        filters: Filters = Filters(),  # frozen, so sharing the default is safe
        log: logging.Logger | None = None,
    ) -> None:
        self._source = source
        self._clock = clock
        self._monotonic = monotonic
        self._filters = filters
        self._log = log if log is not None else logging.getLogger("monapi_agent.collect")
        self._wants: dict[tuple[str, str], FieldWant] = {}
        self._by_measurement: dict[str, dict[str, FieldWant]] = {}
        # Things already logged, so each is logged once rather than on every tick.
        self._reported: set[tuple[str, ...]] = set()
        self._failing: set[str] = set()  # source calls whose last attempt raised
        # Previous counter readings, for percentages and rates.
        self._cpu_prev: CpuTimes | None = None
        self._diskio_prev: _History[DiskIO] = _History()
        self._net_prev: _History[NetIO] = _History()
        self.set_fields(default_wants())

    # -- configuration --

    def set_fields(self, wants: Iterable[FieldWant]) -> None:
        """Produce exactly these fields from now on; ones the agent cannot produce are skipped."""
        new: dict[tuple[str, str], FieldWant] = {}
        for w in wants:
            key = (w.measurement, w.name)
            native = KNOWN_FIELDS.get(key)
            if native is None:
                self._once(
                    ("unknown", *key),
                    "field %s.%s is configured on the server but monapi-agent cannot collect it;"
                    " it will skip it",
                    *key,
                )
                continue
            if w.type not in _PRODUCIBLE_TYPES:
                self._once(
                    ("type", *key, w.type),
                    "field %s.%s is configured with type %r but monapi-agent cannot collect it"
                    " as that type (it produces %s values); it will skip it",
                    *key,
                    w.type,
                    native,
                )
                continue
            new[key] = w
        for key, old in self._wants.items():
            if new.get(key) != old:
                # New bounds deserve a new warning if the value is out of them too.
                self._reported.discard(("bound", *key))
        self._wants = new
        self._by_measurement = {}
        for (meas, name), w in new.items():
            self._by_measurement.setdefault(meas, {})[name] = w
        # A counter no longer read goes stale: forget it, so that when the measurement is
        # wanted again the first rate is not an average over the whole pause.
        if "cpu" not in self._by_measurement:
            self._cpu_prev = None
        if "diskio" not in self._by_measurement:
            self._diskio_prev.forget()
        if "net" not in self._by_measurement:
            self._net_prev.forget()

    # -- collecting --

    def prime(self) -> None:
        """Read the wanted counters so that the next collect() can give percentages and rates."""
        if "cpu" in self._by_measurement:
            self._read_cpu()
        if "diskio" in self._by_measurement:
            self._read_counters("disk_io", self._source.disk_io, self._diskio_prev)
        if "net" in self._by_measurement:
            self._read_counters("net_io", self._source.net_io, self._net_prev)

    def collect(self) -> list[dict[str, Any]]:
        """One point per measurement (and per mount, device, interface) of the wanted fields."""
        now = self._clock()
        timestamp = int(now * 1e9)
        points: list[dict[str, Any]] = []

        def add(measurement: str, values: dict[str, float], tags: dict[str, str] | None) -> None:
            fields = self._finish(measurement, values, tags)
            if fields:
                point: dict[str, Any] = {"measurement": measurement}
                if tags:
                    point["tags"] = tags
                point["fields"] = fields
                point["timestamp"] = timestamp
                points.append(point)

        wanted = self._by_measurement
        if "cpu" in wanted:
            add("cpu", self._cpu(wanted["cpu"]), None)
        if "system" in wanted:
            add("system", self._system(wanted["system"], now), None)
        if "mem" in wanted:
            add("mem", self._mem(wanted["mem"]), None)
        if "swap" in wanted:
            add("swap", self._swap(wanted["swap"]), None)
        if "disk" in wanted:
            for mount, values in self._disk(wanted["disk"]):
                add("disk", values, {"mount": mount})
        if "diskio" in wanted:
            for device, values in self._diskio(wanted["diskio"]):
                add("diskio", values, {"device": device})
        if "net" in wanted:
            for iface, values in self._net(wanted["net"]):
                add("net", values, {"interface": iface})
        return points

    # -- measurements --

    def _read_cpu(self) -> tuple[CpuTimes | None, CpuTimes | None]:
        """(previous, current) cpu times; the current one becomes the previous."""
        cur = self._call("cpu_times", self._source.cpu_times)
        if isinstance(cur, _Failed):
            return None, None
        prev, self._cpu_prev = self._cpu_prev, cur
        return prev, cur

    def _cpu(self, want: Mapping[str, FieldWant]) -> dict[str, float]:
        prev, cur = self._read_cpu()
        if prev is None or cur is None:
            return {}
        total = _cpu_total(cur) - _cpu_total(prev)
        if total <= 0:
            # No time passed, or the counters were reset: no honest percentage this time.
            return {}

        def pct(*names: str) -> float:
            busy = sum(getattr(cur, n) - getattr(prev, n) for n in names)
            return _clamp_pct(100.0 * busy / total)

        idle_all = (cur.idle + cur.iowait) - (prev.idle + prev.iowait)
        values = {
            "usage_percent": _clamp_pct(100.0 * (total - idle_all) / total),
            "user_percent": pct("user", "nice"),  # nice is user space too
            "system_percent": pct("system", "irq", "softirq"),
            "iowait_percent": pct("iowait"),
            "steal_percent": pct("steal"),
            "idle_percent": pct("idle"),
        }
        return {k: v for k, v in values.items() if k in want}

    def _system(self, want: Mapping[str, FieldWant], now: float) -> dict[str, float]:
        values: dict[str, float] = {}
        if want.keys() & {"load1", "load5", "load15"}:
            load = self._call("load_average", self._source.load_average)
            if not isinstance(load, _Failed):
                values.update(zip(("load1", "load5", "load15"), load, strict=True))
        if "uptime" in want:
            boot = self._call("boot_time", self._source.boot_time)
            if not isinstance(boot, _Failed):
                values["uptime"] = int(now - boot)
        if "processes" in want:
            count = self._call("process_count", self._source.process_count)
            if not isinstance(count, _Failed):
                values["processes"] = count
        return {k: v for k, v in values.items() if k in want}

    def _mem(self, want: Mapping[str, FieldWant]) -> dict[str, float]:
        m = self._call("memory", self._source.memory)
        if isinstance(m, _Failed):
            return {}
        used = m.total - m.available
        values: dict[str, float] = {
            "total": m.total,
            "used": used,
            "available": m.available,
            "used_percent": 100.0 * used / m.total if m.total else 0.0,
        }
        return {k: v for k, v in values.items() if k in want}

    def _swap(self, want: Mapping[str, FieldWant]) -> dict[str, float]:
        s = self._call("swap", self._source.swap)
        if isinstance(s, _Failed):
            return {}
        # A machine without swap is normal: report zeros, not an error or a division by zero.
        values: dict[str, float] = (
            {"total": s.total, "used": s.used, "used_percent": 100.0 * s.used / s.total}
            if s.total
            else {"total": 0, "used": 0, "used_percent": 0.0}
        )
        return {k: v for k, v in values.items() if k in want}

    def _disk(self, want: Mapping[str, FieldWant]) -> list[tuple[str, dict[str, float]]]:
        parts = self._call("partitions", self._source.partitions)
        if isinstance(parts, _Failed):
            return []
        f = self._filters
        by_device: dict[str, Partition] = {}
        for p in parts:
            if any(fnmatchcase(p.mountpoint, g) for g in f.ignore_mounts) or any(
                fnmatchcase(p.fstype, g) for g in f.ignore_fstypes
            ):
                continue
            # Bind mounts (and btrfs subvolumes) show the same device and the same numbers:
            # report it once, at its shortest mount point. No device name: nothing to merge on.
            key = p.device or p.mountpoint
            kept = by_device.get(key)
            if kept is None or (len(p.mountpoint), p.mountpoint) < (
                len(kept.mountpoint),
                kept.mountpoint,
            ):
                by_device[key] = p
        out: list[tuple[str, dict[str, float]]] = []
        for mount in sorted(p.mountpoint for p in by_device.values()):
            u = self._call(f"disk_usage({mount})", self._source.disk_usage, mount)
            if isinstance(u, _Failed):
                continue
            # Percent of the space usable by ordinary users, as df shows it (root's reserve
            # is in neither used nor free).
            room = u.used + u.free
            values: dict[str, float] = {
                "total": u.total,
                "used": u.used,
                "free": u.free,
                "used_percent": 100.0 * u.used / room if room else 0.0,
            }
            out.append((mount, {k: v for k, v in values.items() if k in want}))
        return out

    def _read_counters(
        self, what: str, read: Callable[[], dict[str, C]], history: _History[C]
    ) -> tuple[dict[str, C], float, dict[str, C]] | None:
        """(current counters, seconds since the previous reading, previous counters)."""
        cur = self._call(what, read)
        if isinstance(cur, _Failed):
            return None
        previous = history.advance(self._monotonic(), cur)
        if previous is None:
            return None
        elapsed, counters = previous
        return cur, elapsed, counters

    def _diskio(self, want: Mapping[str, FieldWant]) -> list[tuple[str, dict[str, float]]]:
        read = self._read_counters("disk_io", self._source.disk_io, self._diskio_prev)
        if read is None:
            return []
        cur, elapsed, prev = read
        ignore = self._filters.ignore_devices
        devices = {d: c for d, c in cur.items() if not any(fnmatchcase(d, g) for g in ignore)}
        return _rates(devices, elapsed, prev, _DISKIO_COUNTERS, want)

    def _net(self, want: Mapping[str, FieldWant]) -> list[tuple[str, dict[str, float]]]:
        read = self._read_counters("net_io", self._source.net_io, self._net_prev)
        if read is None:
            return []
        cur, elapsed, prev = read
        ignore = self._filters.ignore_interfaces
        ifaces = {i: c for i, c in cur.items() if not any(fnmatchcase(i, g) for g in ignore)}
        return _rates(ifaces, elapsed, prev, _NET_COUNTERS, want)

    # -- types, bounds, failures --

    def _finish(
        self, measurement: str, values: Mapping[str, float], tags: Mapping[str, str] | None
    ) -> dict[str, int | float]:
        """The values in their configured types, without those the server would refuse."""
        fields: dict[str, int | float] = {}
        for name, raw in values.items():
            want = self._wants[(measurement, name)]
            if not math.isfinite(raw):
                # The server refuses NaN and infinity, and round() would raise on them.
                self._once(
                    ("finite", measurement, name),
                    "field %s.%s = %r is not a finite number: not sent",
                    measurement,
                    name,
                    raw,
                )
                continue
            value: int | float = round(raw) if want.type == "int" else float(raw)
            bound: tuple[str, float] | None = None
            if want.min is not None and value < want.min:
                bound = ("min", want.min)
            elif want.max is not None and value > want.max:
                bound = ("max", want.max)
            if bound is not None:
                where = f" ({', '.join(f'{k}={v}' for k, v in tags.items())})" if tags else ""
                self._once(
                    ("bound", measurement, name),
                    "field %s.%s%s = %r is outside the configured %s %r: not sent",
                    measurement,
                    name,
                    where,
                    value,
                    *bound,
                )
                continue
            fields[name] = value
        return fields

    def _call(self, what: str, fn: Callable[..., T], *args: Any) -> T | _Failed:
        """fn(*args), or _FAILED when it raises: logged once until it works again."""
        try:
            result = fn(*args)
        except Exception as exc:
            if what not in self._failing:
                self._failing.add(what)
                self._log.warning(
                    "cannot read %s: %s: %s; its fields are skipped until it works again",
                    what,
                    type(exc).__name__,
                    exc,
                )
            return _FAILED
        if what in self._failing:
            self._failing.discard(what)
            self._log.info("can read %s again; its fields are collected again", what)
        return result

    def _once(self, key: tuple[str, ...], msg: str, *args: object) -> None:
        if key not in self._reported:
            self._reported.add(key)
            self._log.warning(msg, *args)


def _rates(
    current: Mapping[str, C],
    elapsed: float,
    prev: Mapping[str, C],
    counters: Mapping[str, str],
    want: Mapping[str, FieldWant],
) -> list[tuple[str, dict[str, float]]]:
    """Per-second rates of the wanted counters, by name; none for names seen the first time."""
    if elapsed <= 0:
        return []
    out: list[tuple[str, dict[str, float]]] = []
    for name in sorted(current):
        old = prev.get(name)
        if old is None:
            continue
        new = current[name]
        out.append(
            (
                name,
                {
                    field: _delta(getattr(new, attr), getattr(old, attr)) / elapsed
                    for field, attr in counters.items()
                    if field in want
                },
            )
        )
    return out
