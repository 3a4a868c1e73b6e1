"""monapi-agent's collector: exact values from fixture sources and fake clocks, plus one smoke
test on the real machine."""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import replace
from fnmatch import fnmatchcase
from typing import Any

import pytest

from monapi_agent.collect import (
    KNOWN_FIELDS,
    Collector,
    CpuTimes,
    DiskIO,
    DiskUsage,
    FieldWant,
    Filters,
    Memory,
    NetIO,
    Partition,
    PsutilSource,
    Swap,
    default_wants,
)

LOGGER = "monapi_agent.collect"

CPU0 = CpuTimes(
    user=100.0,
    nice=10.0,
    system=50.0,
    idle=800.0,
    iowait=20.0,
    irq=5.0,
    softirq=5.0,
    steal=10.0,
    guest=30.0,
    guest_nice=2.0,
)
# 200 s of CPU time later: guest +10 is inside user +40, guest_nice +5 inside nice +5.
CPU1 = CpuTimes(
    user=140.0,
    nice=15.0,
    system=70.0,
    idle=900.0,
    iowait=30.0,
    irq=7.0,
    softirq=8.0,
    steal=30.0,
    guest=40.0,
    guest_nice=7.0,
)


class FixtureSource:
    """Readings the test sets as plain attributes; ``errors[method]`` makes a method raise."""

    def __init__(self) -> None:
        self.cpu = CPU0
        self.load = (0.5, 0.25, 0.125)
        self.mem = Memory(total=8000, available=6000)
        self.swp = Swap(total=1000, used=250)
        self.parts = [Partition("/dev/sda1", "/", "ext4")]
        # A value that is an exception is raised by disk_usage() for that mount.
        self.usage: dict[str, DiskUsage | Exception] = {"/": DiskUsage(1000, 600, 300)}
        self.disks = {"sda": DiskIO(read_bytes=0, write_bytes=0, read_count=0, write_count=0)}
        self.nics = {"eth0": NetIO(0, 0, 0, 0, 0, 0, 0, 0)}
        self.boot = 1_699_990_000.0
        self.procs = 123
        self.errors: dict[str, Exception] = {}
        self.calls: Counter[str] = Counter()

    def _enter(self, method: str) -> None:
        self.calls[method] += 1
        if method in self.errors:
            raise self.errors[method]

    def cpu_times(self) -> CpuTimes:
        self._enter("cpu_times")
        return self.cpu

    def load_average(self) -> tuple[float, float, float]:
        self._enter("load_average")
        return self.load

    def memory(self) -> Memory:
        self._enter("memory")
        return self.mem

    def swap(self) -> Swap:
        self._enter("swap")
        return self.swp

    def partitions(self) -> list[Partition]:
        self._enter("partitions")
        return list(self.parts)

    def disk_usage(self, mountpoint: str) -> DiskUsage:
        self._enter("disk_usage")
        u = self.usage[mountpoint]
        if isinstance(u, Exception):
            raise u
        return u

    def disk_io(self) -> dict[str, DiskIO]:
        self._enter("disk_io")
        return dict(self.disks)

    def net_io(self) -> dict[str, NetIO]:
        self._enter("net_io")
        return dict(self.nics)

    def boot_time(self) -> float:
        self._enter("boot_time")
        return self.boot

    def process_count(self) -> int:
        self._enter("process_count")
        return self.procs


class FakeClock:
    """A clock that only moves when the test says so."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Rig:
    """A collector on a fixture source with fake wall and monotonic clocks."""

    def __init__(self, filters: Filters | None = None) -> None:
        self.source = FixtureSource()
        self.clock = FakeClock(1_700_000_000.0)
        self.mono = FakeClock(5_000.0)
        self.collector = Collector(
            self.source,
            clock=self.clock,
            monotonic=self.mono,
            filters=filters if filters is not None else Filters(),
        )

    def want(self, *fields: str) -> None:
        """Want these "measurement.name" fields with their native types."""
        wants = []
        for field in fields:
            meas, name = field.split(".")
            wants.append(FieldWant(meas, name, KNOWN_FIELDS[(meas, name)]))
        self.collector.set_fields(wants)

    def advance(self, seconds: float) -> None:
        self.clock.now += seconds
        self.mono.now += seconds


def only(points: list[dict[str, Any]], measurement: str) -> list[dict[str, Any]]:
    return [p for p in points if p["measurement"] == measurement]


def fields_of(points: list[dict[str, Any]], measurement: str) -> dict[str, Any]:
    (point,) = only(points, measurement)
    fields: dict[str, Any] = point["fields"]
    return fields


def warnings_in(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# --- cpu ---------------------------------------------------------------------------------------


def test_cpu_percentages_from_two_readings_leave_guest_time_out_of_the_total() -> None:
    rig = Rig()
    rig.want(*(f"{m}.{n}" for m, n in KNOWN_FIELDS if m == "cpu"))
    rig.collector.prime()
    rig.source.cpu = CPU1
    rig.advance(10)
    points = rig.collector.collect()
    # Δtotal = 40+5+20+100+10+2+3+20 = 200 (guest and guest_nice not added a second time).
    assert points == [
        {
            "measurement": "cpu",
            "fields": {
                "usage_percent": 45.0,  # 200 - (100 idle + 10 iowait)
                "user_percent": 22.5,  # user 40 + nice 5
                "system_percent": 12.5,  # system 20 + irq 2 + softirq 3
                "iowait_percent": 5.0,
                "steal_percent": 10.0,
                "idle_percent": 50.0,
            },
            "timestamp": 1_700_000_010_000_000_000,
        }
    ]


def test_cpu_percentages_are_clamped_into_0_to_100() -> None:
    rig = Rig()
    rig.want("cpu.usage_percent", "cpu.iowait_percent", "cpu.idle_percent", "cpu.user_percent")
    rig.collector.prime()
    # Linux's iowait can go down; here idle +110 and iowait -20 in a total of 100.
    rig.source.cpu = replace(CPU0, user=110.0, idle=910.0, iowait=0.0)
    assert fields_of(rig.collector.collect(), "cpu") == {
        "usage_percent": 10.0,
        "user_percent": 10.0,
        "iowait_percent": 0.0,  # -20 % clamped
        "idle_percent": 100.0,  # 110 % clamped
    }


def test_no_cpu_point_without_a_previous_reading_but_the_reading_is_kept() -> None:
    rig = Rig()
    rig.want("cpu.usage_percent")
    assert rig.collector.collect() == []
    rig.source.cpu = CPU1
    assert fields_of(rig.collector.collect(), "cpu") == {"usage_percent": 45.0}


def test_no_cpu_point_when_no_cpu_time_passed_or_the_counters_were_reset() -> None:
    rig = Rig()
    rig.want("cpu.usage_percent")
    rig.collector.prime()
    assert rig.collector.collect() == []  # the same reading again: Δtotal 0
    rig.source.cpu = replace(CPU0, idle=0.0)  # total went down
    assert rig.collector.collect() == []
    rig.source.cpu = replace(CPU0, idle=100.0, user=200.0)  # +100 idle, +100 user since reset
    assert fields_of(rig.collector.collect(), "cpu") == {"usage_percent": 50.0}


# --- rates -------------------------------------------------------------------------------------


def test_disk_and_net_rates_are_per_second_over_the_monotonic_delta() -> None:
    rig = Rig()
    rig.want(*(f"{m}.{n}" for m, n in KNOWN_FIELDS if m in ("diskio", "net")))
    rig.source.disks = {"sda": DiskIO(1000, 2000, 10, 20)}
    rig.source.nics = {"eth0": NetIO(100, 200, 1, 2, 0, 0, 0, 0)}
    rig.collector.prime()
    rig.mono.now += 4.0
    rig.clock.now -= 3600.0  # the wall clock was set back: rates do not care
    rig.source.disks = {"sda": DiskIO(1000 + 40960, 2000 + 8192, 10 + 100, 20 + 6)}
    rig.source.nics = {"eth0": NetIO(100 + 4000, 200 + 2000, 1 + 40, 2 + 20, 4, 2, 8, 1)}
    points = rig.collector.collect()
    assert points == [
        {
            "measurement": "diskio",
            "tags": {"device": "sda"},
            "fields": {
                "read_bytes_per_sec": 10240.0,
                "write_bytes_per_sec": 2048.0,
                "reads_per_sec": 25.0,
                "writes_per_sec": 1.5,
            },
            "timestamp": 1_699_996_400_000_000_000,
        },
        {
            "measurement": "net",
            "tags": {"interface": "eth0"},
            "fields": {
                "bytes_recv_per_sec": 1000.0,
                "bytes_sent_per_sec": 500.0,
                "packets_recv_per_sec": 10.0,
                "packets_sent_per_sec": 5.0,
                "err_in_per_sec": 1.0,
                "err_out_per_sec": 0.5,
                "drop_in_per_sec": 2.0,
                "drop_out_per_sec": 0.25,
            },
            "timestamp": 1_699_996_400_000_000_000,
        },
    ]


def test_counter_reset_gives_the_new_value_as_delta() -> None:
    rig = Rig()
    rig.want("net.bytes_recv_per_sec", "net.bytes_sent_per_sec", "diskio.read_bytes_per_sec")
    rig.source.nics = {"eth0": NetIO(1_000_000, 1_000, 0, 0, 0, 0, 0, 0)}
    rig.source.disks = {"sda": DiskIO(5_000_000, 0, 0, 0)}
    rig.collector.prime()
    rig.advance(5)
    # bytes_recv restarted from zero and is at 500 now; bytes_sent grew normally.
    rig.source.nics = {"eth0": NetIO(500, 1_250, 0, 0, 0, 0, 0, 0)}
    rig.source.disks = {"sda": DiskIO(1_000, 0, 0, 0)}
    points = rig.collector.collect()
    assert fields_of(points, "net") == {"bytes_recv_per_sec": 100.0, "bytes_sent_per_sec": 50.0}
    assert fields_of(points, "diskio") == {"read_bytes_per_sec": 200.0}


def test_new_interface_gives_no_rate_then_a_rate() -> None:
    rig = Rig()
    rig.want("net.bytes_recv_per_sec")
    rig.source.nics = {"eth0": NetIO(0, 0, 0, 0, 0, 0, 0, 0)}
    rig.collector.prime()
    rig.advance(2)
    rig.source.nics = {
        "eth0": NetIO(200, 0, 0, 0, 0, 0, 0, 0),
        "wg0": NetIO(9_000_000, 0, 0, 0, 0, 0, 0, 0),
    }
    points = rig.collector.collect()
    assert [p["tags"] for p in points] == [{"interface": "eth0"}]
    assert points[0]["fields"] == {"bytes_recv_per_sec": 100.0}
    rig.advance(2)
    rig.source.nics = {
        "eth0": NetIO(400, 0, 0, 0, 0, 0, 0, 0),
        "wg0": NetIO(9_000_600, 0, 0, 0, 0, 0, 0, 0),
    }
    points = rig.collector.collect()
    assert [(p["tags"]["interface"], p["fields"]) for p in points] == [
        ("eth0", {"bytes_recv_per_sec": 100.0}),
        ("wg0", {"bytes_recv_per_sec": 300.0}),
    ]


def test_vanished_interface_is_forgotten_and_starts_afresh_when_it_returns() -> None:
    rig = Rig()
    rig.want("net.bytes_recv_per_sec")
    rig.source.nics = {
        "eth0": NetIO(0, 0, 0, 0, 0, 0, 0, 0),
        "ppp0": NetIO(5_000_000, 0, 0, 0, 0, 0, 0, 0),
    }
    rig.collector.prime()
    rig.advance(1)
    rig.source.nics = {"eth0": NetIO(10, 0, 0, 0, 0, 0, 0, 0)}
    assert [p["tags"] for p in rig.collector.collect()] == [{"interface": "eth0"}]
    rig.advance(1)
    # ppp0 is back with fresh counters: a first sighting, not a reset from 5 MB.
    rig.source.nics = {
        "eth0": NetIO(20, 0, 0, 0, 0, 0, 0, 0),
        "ppp0": NetIO(70, 0, 0, 0, 0, 0, 0, 0),
    }
    assert [p["tags"] for p in rig.collector.collect()] == [{"interface": "eth0"}]
    rig.advance(1)
    rig.source.nics = {
        "eth0": NetIO(30, 0, 0, 0, 0, 0, 0, 0),
        "ppp0": NetIO(100, 0, 0, 0, 0, 0, 0, 0),
    }
    assert [(p["tags"]["interface"], p["fields"]) for p in rig.collector.collect()] == [
        ("eth0", {"bytes_recv_per_sec": 10.0}),
        ("ppp0", {"bytes_recv_per_sec": 30.0}),
    ]


def test_no_rates_when_the_monotonic_clock_did_not_advance() -> None:
    rig = Rig()
    rig.want("net.bytes_recv_per_sec", "diskio.reads_per_sec")
    rig.collector.prime()
    rig.clock.now += 10  # only the wall clock moved
    rig.source.nics = {"eth0": NetIO(100, 0, 0, 0, 0, 0, 0, 0)}
    rig.source.disks = {"sda": DiskIO(0, 0, 10, 0)}
    assert rig.collector.collect() == []
    rig.mono.now += 2
    rig.source.nics = {"eth0": NetIO(300, 0, 0, 0, 0, 0, 0, 0)}
    rig.source.disks = {"sda": DiskIO(0, 0, 30, 0)}
    points = rig.collector.collect()
    assert fields_of(points, "net") == {"bytes_recv_per_sec": 100.0}
    assert fields_of(points, "diskio") == {"reads_per_sec": 10.0}


# --- disks, filters ----------------------------------------------------------------------------


def test_default_filters_ignore_pseudo_mounts_fstypes_devices_and_loopback() -> None:
    rig = Rig()
    rig.want("disk.used", "diskio.reads_per_sec", "net.bytes_recv_per_sec")
    rig.source.parts = [
        Partition("/dev/sda1", "/", "ext4"),
        Partition("proc", "/proc", "proc"),
        Partition("tmpfs", "/run/user/1000", "tmpfs"),
        Partition("/dev/loop3", "/snap/core/123", "squashfs"),
        Partition("/dev/sda15", "/boot/efi", "vfat"),
        Partition("sshfs", "/mnt/remote", "fuse.sshfs"),
        Partition("overlay", "/var/lib/docker/overlay2/x/merged", "overlay"),
        Partition("tmpfs", "/tmp", "tmpfs"),
        Partition("/dev/sdb1", "/data", "xfs"),
    ]
    rig.source.usage = {"/": DiskUsage(100, 10, 90), "/data": DiskUsage(200, 20, 180)}
    devices = ["sda", "sdb", "loop0", "ram1", "zram0", "fd0", "sr0", "nvme0n1"]
    rig.source.disks = {d: DiskIO(0, 0, 0, 0) for d in devices}
    rig.source.nics = {n: NetIO(0, 0, 0, 0, 0, 0, 0, 0) for n in ["lo", "eth0", "docker0"]}
    rig.collector.prime()
    rig.advance(1)
    points = rig.collector.collect()
    assert [p["tags"] for p in points] == [
        {"mount": "/"},
        {"mount": "/data"},
        {"device": "nvme0n1"},
        {"device": "sda"},
        {"device": "sdb"},
        {"interface": "docker0"},
        {"interface": "eth0"},
    ]
    assert rig.source.calls["disk_usage"] == 2  # ignored mounts are not even asked


def test_configured_filters_replace_the_defaults() -> None:
    rig = Rig(
        Filters(
            ignore_mounts=("/data*",),
            ignore_fstypes=(),
            ignore_devices=("sd?",),
            ignore_interfaces=("lo", "docker*", "veth*"),
        )
    )
    rig.want("disk.used", "diskio.reads_per_sec", "net.bytes_recv_per_sec")
    rig.source.parts = [
        Partition("/dev/sda1", "/", "ext4"),
        Partition("tmpfs", "/tmp", "tmpfs"),
        Partition("/dev/sdb1", "/data", "xfs"),
    ]
    rig.source.usage = {"/": DiskUsage(100, 10, 90), "/tmp": DiskUsage(50, 0, 50)}
    rig.source.disks = {d: DiskIO(0, 0, 0, 0) for d in ["sda", "sda1", "loop0"]}
    rig.source.nics = {n: NetIO(0, 0, 0, 0, 0, 0, 0, 0) for n in ["lo", "eth0", "docker0", "veth1"]}
    rig.collector.prime()
    rig.advance(1)
    assert [p["tags"] for p in rig.collector.collect()] == [
        {"mount": "/"},
        {"mount": "/tmp"},
        {"device": "loop0"},
        {"device": "sda1"},
        {"interface": "eth0"},
    ]


def test_disks_are_deduplicated_by_device_keeping_the_shortest_mountpoint() -> None:
    rig = Rig()
    rig.want("disk.total", "disk.used", "disk.free", "disk.used_percent")
    rig.source.parts = [
        Partition("/dev/sda1", "/var/lib/kubelet/pods/x", "ext4"),
        Partition("/dev/sda1", "/", "ext4"),
        Partition("/dev/sdb1", "/srv/home", "xfs"),
        Partition("/dev/sdb1", "/home", "xfs"),
    ]
    rig.source.usage = {
        "/": DiskUsage(total=1000, used=600, free=300),  # 100 reserved for root
        "/home": DiskUsage(total=500, used=0, free=0),
    }
    points = rig.collector.collect()
    assert points == [
        {
            "measurement": "disk",
            "tags": {"mount": "/"},
            "fields": {"total": 1000, "used": 600, "free": 300, "used_percent": 66.66666666666667},
            "timestamp": 1_700_000_000_000_000_000,
        },
        {
            "measurement": "disk",
            "tags": {"mount": "/home"},
            "fields": {"total": 500, "used": 0, "free": 0, "used_percent": 0.0},
            "timestamp": 1_700_000_000_000_000_000,
        },
    ]
    assert rig.source.calls["disk_usage"] == 2


def test_disk_usage_oserror_skips_only_that_mount_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    rig = Rig()
    rig.want("disk.used")
    rig.source.parts = [
        Partition("/dev/sda1", "/", "ext4"),
        Partition("server:/export", "/mnt/nfs", "nfs4"),
        Partition("/dev/sdb1", "/srv", "ext4"),
    ]
    rig.source.usage = {
        "/": DiskUsage(100, 10, 90),
        "/mnt/nfs": PermissionError(13, "Permission denied"),
        "/srv": DiskUsage(100, 40, 60),
    }
    for _ in range(3):
        points = rig.collector.collect()
        assert [(p["tags"]["mount"], p["fields"]) for p in points] == [
            ("/", {"used": 10}),
            ("/srv", {"used": 40}),
        ]
    (message,) = warnings_in(caplog)
    assert "/mnt/nfs" in message
    assert "Permission denied" in message


# --- mem, swap, system -------------------------------------------------------------------------


def test_memory_used_and_percent_come_from_total_minus_available() -> None:
    rig = Rig()
    rig.want("mem.total", "mem.used", "mem.available", "mem.used_percent")
    rig.source.mem = Memory(total=8_000, available=6_000)
    assert fields_of(rig.collector.collect(), "mem") == {
        "total": 8_000,
        "used": 2_000,
        "available": 6_000,
        "used_percent": 25.0,
    }
    rig.source.mem = Memory(total=0, available=0)
    assert fields_of(rig.collector.collect(), "mem")["used_percent"] == 0.0


def test_swap_percent_and_a_machine_without_swap_gives_zeros() -> None:
    rig = Rig()
    rig.want("swap.total", "swap.used", "swap.used_percent")
    rig.source.swp = Swap(total=4_000, used=1_000)
    assert fields_of(rig.collector.collect(), "swap") == {
        "total": 4_000,
        "used": 1_000,
        "used_percent": 25.0,
    }
    rig.source.swp = Swap(total=0, used=7)  # some platforms report nonsense without swap
    assert fields_of(rig.collector.collect(), "swap") == {
        "total": 0,
        "used": 0,
        "used_percent": 0.0,
    }


def test_uptime_is_whole_seconds_since_boot_and_processes_are_counted() -> None:
    rig = Rig()
    rig.want("system.load1", "system.load5", "system.load15", "system.uptime", "system.processes")
    rig.clock.now = 1_700_000_100.9
    rig.source.boot = 1_700_000_000.0
    rig.source.procs = 321
    fields = fields_of(rig.collector.collect(), "system")
    assert fields == {"load1": 0.5, "load5": 0.25, "load15": 0.125, "uptime": 100, "processes": 321}
    assert type(fields["uptime"]) is int
    assert type(fields["processes"]) is int


# --- which fields, types, bounds ---------------------------------------------------------------


def test_only_wanted_fields_are_produced_and_unwanted_sources_are_not_called() -> None:
    rig = Rig()
    rig.want("cpu.usage_percent", "mem.used_percent", "system.load1")
    rig.collector.prime()
    rig.source.cpu = CPU1
    points = rig.collector.collect()
    assert [(p["measurement"], p["fields"]) for p in points] == [
        ("cpu", {"usage_percent": 45.0}),
        ("system", {"load1": 0.5}),
        ("mem", {"used_percent": 25.0}),
    ]
    assert dict(rig.source.calls) == {"cpu_times": 2, "load_average": 1, "memory": 1}


def test_before_set_fields_every_known_field_is_produced() -> None:
    rig = Rig()
    rig.collector.prime()
    rig.advance(1)
    rig.source.cpu = CPU1
    points = rig.collector.collect()
    produced = {(p["measurement"], name) for p in points for name in p["fields"]}
    assert produced == set(KNOWN_FIELDS)
    assert [p["measurement"] for p in points] == [
        "cpu",
        "system",
        "mem",
        "swap",
        "disk",
        "diskio",
        "net",
    ]
    assert all("tags" not in p for p in points[:4])


def test_a_point_with_no_fields_left_is_not_returned() -> None:
    rig = Rig()
    rig.collector.set_fields([FieldWant("mem", "used_percent", "float", max=10.0)])
    assert rig.collector.collect() == []


def test_unknown_configured_field_is_logged_once_across_set_fields_calls(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    rig = Rig()
    wants = [FieldWant("mem", "total", "int"), FieldWant("nginx", "requests", "int")]
    rig.collector.set_fields(wants)
    rig.collector.set_fields(wants)
    (message,) = warnings_in(caplog)
    assert "nginx.requests" in message
    assert "monapi-agent cannot collect it" in message
    assert "skip" in message
    assert fields_of(rig.collector.collect(), "mem") == {"total": 8000}


def test_bool_or_string_type_for_a_known_field_is_logged_once_and_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    rig = Rig()
    wants = [
        FieldWant("mem", "total", "string"),
        FieldWant("mem", "available", "bool"),
        FieldWant("mem", "used", "int"),
    ]
    for _ in range(2):
        rig.collector.set_fields(wants)
        assert fields_of(rig.collector.collect(), "mem") == {"used": 2000}
    messages = warnings_in(caplog)
    assert len(messages) == 2
    assert "mem.total" in messages[0]
    assert "'string'" in messages[0]
    assert "mem.available" in messages[1]
    assert "'bool'" in messages[1]
    assert all("monapi-agent cannot collect it" in m for m in messages)


def test_values_are_converted_to_the_configured_type() -> None:
    rig = Rig()
    rig.source.load = (1.6, 0.4, 0.0)
    rig.collector.set_fields(
        [
            FieldWant("system", "load1", "int"),
            FieldWant("system", "load5", "int"),
            FieldWant("mem", "total", "float"),
            FieldWant("mem", "used_percent", "int"),
        ]
    )
    points = rig.collector.collect()
    system, mem = fields_of(points, "system"), fields_of(points, "mem")
    assert system == {"load1": 2, "load5": 0}
    assert mem == {"total": 8000.0, "used_percent": 25}
    assert [type(v) for v in (*system.values(), *mem.values())] == [int, int, float, int]


def test_value_outside_its_bounds_drops_only_that_field_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    rig = Rig()
    rig.collector.set_fields(
        [
            FieldWant("mem", "total", "int", min=0.0),
            FieldWant("mem", "used_percent", "float", min=0.0, max=20.0),
            FieldWant("system", "load1", "float", min=1.0),
            FieldWant("system", "processes", "int", min=0.0, max=1000.0),
        ]
    )
    for _ in range(3):
        points = rig.collector.collect()
        assert fields_of(points, "mem") == {"total": 8000}
        assert fields_of(points, "system") == {"processes": 123}
    assert warnings_in(caplog) == [
        "field system.load1 = 0.5 is outside the configured min 1.0: not sent",
        "field mem.used_percent = 25.0 is outside the configured max 20.0: not sent",
    ]


def test_bounds_are_checked_per_mount_and_the_log_names_the_mount(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    rig = Rig()
    rig.collector.set_fields(
        [
            FieldWant("disk", "used_percent", "float", max=90.0),
            FieldWant("disk", "free", "int"),
        ]
    )
    rig.source.parts = [Partition("/dev/sda1", "/", "ext4"), Partition("/dev/sdb1", "/srv", "xfs")]
    rig.source.usage = {"/": DiskUsage(100, 95, 5), "/srv": DiskUsage(100, 50, 50)}
    points = rig.collector.collect()
    assert [(p["tags"]["mount"], p["fields"]) for p in points] == [
        ("/", {"free": 5}),
        ("/srv", {"free": 50, "used_percent": 50.0}),
    ]
    (message,) = warnings_in(caplog)
    assert "disk.used_percent (mount=/) = 95.0" in message


def test_a_value_that_is_not_finite_is_not_sent(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    rig = Rig()
    rig.collector.set_fields(
        [FieldWant("system", "load1", "int"), FieldWant("system", "load5", "float")]
    )
    rig.source.load = (math.nan, 0.25, 0.125)
    rig.collector.collect()
    assert fields_of(rig.collector.collect(), "system") == {"load5": 0.25}
    (message,) = warnings_in(caplog)
    assert "system.load1 = nan" in message


# --- failing sources ---------------------------------------------------------------------------


def test_raising_source_method_is_logged_once_others_collected_and_recovery_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    rig = Rig()
    rig.want("mem.used", "swap.used", "system.uptime", "system.processes")
    rig.source.errors["memory"] = RuntimeError("/proc/meminfo is unreadable")
    rig.source.errors["process_count"] = OSError("too many open files")
    for _ in range(3):
        points = rig.collector.collect()
        assert [(p["measurement"], p["fields"]) for p in points] == [
            ("system", {"uptime": 10_000}),
            ("swap", {"used": 250}),
        ]
    warned = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert len(warned) == 2
    assert warned[0][0] == logging.WARNING
    assert "process_count" in warned[0][1]
    assert "too many open files" in warned[0][1]
    assert "memory" in warned[1][1]
    assert "RuntimeError: /proc/meminfo is unreadable" in warned[1][1]

    caplog.clear()
    del rig.source.errors["memory"]
    for _ in range(2):
        assert fields_of(rig.collector.collect(), "mem") == {"used": 2000}
    ((level, message),) = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert level == logging.INFO
    assert "memory" in message

    caplog.clear()
    rig.source.errors["memory"] = RuntimeError("broken again")
    rig.collector.collect()
    rig.collector.collect()
    (message,) = warnings_in(caplog)
    assert "broken again" in message


def test_collect_never_raises_even_when_every_source_method_does(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    rig = Rig()
    methods = [
        "cpu_times",
        "load_average",
        "memory",
        "swap",
        "partitions",
        "disk_io",
        "net_io",
        "boot_time",
        "process_count",
    ]
    for name in methods:
        rig.source.errors[name] = ValueError(name)
    rig.collector.prime()
    assert rig.collector.collect() == []
    assert rig.collector.collect() == []
    assert len(warnings_in(caplog)) == len(methods)


def test_failed_counter_read_keeps_the_previous_reading_for_a_longer_interval() -> None:
    rig = Rig()
    rig.want("net.bytes_recv_per_sec")
    rig.collector.prime()
    rig.advance(1)
    rig.source.errors["net_io"] = OSError("netlink")
    assert rig.collector.collect() == []
    rig.advance(3)
    del rig.source.errors["net_io"]
    rig.source.nics = {"eth0": NetIO(400, 0, 0, 0, 0, 0, 0, 0)}
    assert fields_of(rig.collector.collect(), "net") == {"bytes_recv_per_sec": 100.0}


def test_a_measurement_wanted_again_starts_without_stale_counters() -> None:
    rig = Rig()
    rig.want("net.bytes_recv_per_sec")
    rig.collector.prime()
    rig.want("mem.total")
    rig.advance(3600)
    rig.source.nics = {"eth0": NetIO(3_600_000, 0, 0, 0, 0, 0, 0, 0)}
    rig.want("net.bytes_recv_per_sec")
    assert rig.collector.collect() == []  # not an average over the hour it was not read
    rig.advance(1)
    rig.source.nics = {"eth0": NetIO(3_600_500, 0, 0, 0, 0, 0, 0, 0)}
    assert fields_of(rig.collector.collect(), "net") == {"bytes_recv_per_sec": 500.0}


# --- timestamps, field list, configuration -----------------------------------------------------


def test_timestamp_is_clock_in_nanoseconds_taken_once_and_shared_by_all_points() -> None:
    rig = Rig()
    rig.source.parts = [Partition("/dev/sda1", "/", "ext4"), Partition("/dev/sdb1", "/srv", "xfs")]
    rig.source.usage["/srv"] = DiskUsage(1, 1, 0)
    ticks = iter([1_700_000_000.5, 1_700_000_099.0])
    rig.collector = Collector(rig.source, clock=lambda: next(ticks), monotonic=rig.mono)
    points = rig.collector.collect()
    assert len(points) >= 5
    assert {p["timestamp"] for p in points} == {1_700_000_000_500_000_000}
    assert fields_of(points, "system")["uptime"] == 10_000  # from the same clock reading


def test_known_fields_are_the_server_default_fields_with_their_types() -> None:
    from monapi.fields import DEFAULT_FIELDS

    assert {(m, n): t for m, n, t, *_ in DEFAULT_FIELDS} == KNOWN_FIELDS
    assert list(KNOWN_FIELDS) == [(m, n) for m, n, *_ in DEFAULT_FIELDS]


def test_default_wants_are_every_known_field_with_its_native_type_and_no_bounds() -> None:
    wants = default_wants()
    assert [(w.measurement, w.name, w.type) for w in wants] == [
        (m, n, t) for (m, n), t in KNOWN_FIELDS.items()
    ]
    assert all(w.min is None and w.max is None for w in wants)
    assert wants[0] == FieldWant("cpu", "usage_percent", "float")


def test_field_want_from_config_ignores_extra_keys() -> None:
    entry = {
        "measurement": "cpu",
        "name": "usage_percent",
        "type": "float",
        "unit": "%",
        "min": 0,
        "max": 100,
        "description": "not in the config today, ignored if it ever is",
    }
    want = FieldWant.from_config(entry)
    assert want == FieldWant("cpu", "usage_percent", "float", 0.0, 100.0)
    assert type(want.min) is float
    unbounded = {"measurement": "mem", "name": "total", "type": "int", "min": None, "max": None}
    assert FieldWant.from_config(unbounded) == FieldWant("mem", "total", "int")


# --- the real machine --------------------------------------------------------------------------


def test_psutil_source_smoke_on_the_real_machine() -> None:
    source = PsutilSource()
    filters = Filters()
    real_mounts = [
        p
        for p in source.partitions()
        if not any(fnmatchcase(p.mountpoint, g) for g in filters.ignore_mounts)
        and not any(fnmatchcase(p.fstype, g) for g in filters.ignore_fstypes)
    ]
    collector = Collector(source, filters=filters)
    collector.prime()
    time.sleep(0.2)
    points = collector.collect()
    assert {"cpu", "system", "mem"} <= {p["measurement"] for p in points}
    for p in points:
        assert set(p) <= {"measurement", "tags", "fields", "timestamp"}
        assert type(p["timestamp"]) is int
        for name, value in p["fields"].items():
            expected = int if KNOWN_FIELDS[(p["measurement"], name)] == "int" else float
            assert type(value) is expected, (p["measurement"], name, value)
            if name.endswith("_percent"):
                assert 0.0 <= value <= 100.0
            assert value >= 0
    assert fields_of(points, "system")["processes"] > 0
    assert fields_of(points, "mem")["total"] > 0
    if not real_mounts:
        pytest.skip("no real file system is mounted here (an overlay-only container?)")
    assert only(points, "disk")
