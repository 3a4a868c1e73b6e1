#!/usr/bin/env python3
"""monapi ingestion benchmark (a benchmark, not a test).

One command::

    .venv/bin/python bench/run.py            # full run (about 35 minutes)
    .venv/bin/python bench/run.py --quick    # short run (about 6 minutes)

Of the full run, the agent comparison (issue 7) takes about 9 minutes and the memory soak 10
(``--skip-agents-compare``, ``--skip-soak``; ``--quick``: about 1 minute for both).

It starts ``monapi serve`` (gunicorn, gthread) on a free 127.0.0.1 port with a fresh temporary
data directory, creates benchmark fields and servers through the API, then measures:

* bulk JSON ingestion: batches of 5,000 points x 10 fields, a few keep-alive senders (Python,
  one server key each), for a bounded time; reports field values/s = stored points x 10 / time.
* bulk line protocol: the same senders and servers post the same 5,000 points x 10 fields as
  InfluxDB line protocol (uncompressed, like the JSON bulk; floats as repr, ns timestamps) to
  ``/write?precision=ns`` with ``Authorization: Token <key>``; reported like the JSON phase.
* agent-sized requests: 1 point x 20 fields, 64 concurrent keep-alive connections (wrk, one
  server key per connection, fresh timestamps); reports requests/s and p50/p99 latency.
* monapi-agent footprint (bench/footprint.py): the real agent at a 10 s interval against its
  own monapi on loopback; peak resident memory and CPU share of one core over the steady part.
* engines (bench/engines.py): the bulk batches into a throwaway InfluxDB and VictoriaMetrics
  three ways, interleaved round by round: straight to the engine as gzip line protocol
  (direct), as JSON to monapi's /api/v1/data, and as the same gzip line protocol to monapi's
  /write (for VictoriaMetrics without the ``measurement`` tag, which monapi adds itself);
  reports each, per round and median, and their ratios to direct.
* agents compare (bench/agents.py, issue 7): agent-sized pushes (wrk, bench/agent.lua) at a
  sweep of concurrency levels against monapi on InfluxDB, an empty Flask 204 route under the
  same gunicorn settings (the framework's ceiling) and bench/baseline/app.py, a naive BASELINE
  of the founding design (not monapi; gunicorn -w 4), side by side on one InfluxDB; reports
  requests/s, p50/p90/p99, worker RSS, the ratios at 64 connections, and plots requests/s and
  p99 against connections (bench/plot.py: docs/img/bench-agents.png and docs/bench-agents.md;
  for --quick beside the JSON in bench/results/).
* memory soak (bench/agents.py): monapi on InfluxDB under 64 agents for 10 minutes, VmRSS of
  every gunicorn worker every 10 s: the end value and the growth over the last 5 minutes.
* reads (bench/reads.py, issue 7): on the embedded store, a 24-hour range at 10 s resolution
  for one field with a 5-minute step, and the overview of 1,000 servers (per_page=1000):
  median, p90 and max over keep-alive requests, answers checked.
* alerts (bench/alerts.py, issue 10): in process on the embedded stores, one evaluation round of
  10 rules over 1,000 servers when nothing changes, and the rounds where 1,500 alerts fire and
  resolve (transitions and queued notifications checked).

After each phase it counts the stored field values in the time-series file (for the engines: in
the engine), so the numbers are data that was stored, not just replies. Traffic goes only to
127.0.0.1; every phase is bounded in time and count. gunicorn and the engines are stopped at the
end, also on errors.

The load generators run on the same machine as the server and compete for the same cores.
Results are printed as a table and written as JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import http.client
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from monapi.settings import Settings

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
LUA_SCRIPT = BENCH_DIR / "agent.lua"
MEASUREMENT = "bench"
BULK_POINTS = 5_000
BULK_FIELDS = 10
AGENT_FIELDS = 20
GOALS = {
    "bulk_field_values_per_s": 150_000,
    "bulk_lp_field_values_per_s": 200_000,
    "agent_requests_per_s": 1_500,
    "agent_p99_ms": 50.0,
}


# Machine ------------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    wrk = shutil.which("wrk")
    wrk_version = ""
    if wrk:
        out = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
        wrk_version = (out.stdout + out.stderr).strip().splitlines()[0] if out else ""
    versions: dict[str, str] = {}
    for mod in ("gunicorn", "flask", "flask_openapi3", "msgspec", "sqlalchemy"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[mod] = version(mod.replace("_", "-"))
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "wrk": wrk_version,
        "packages": versions,
        "loadavg_before": os.getloadavg(),
    }


def ensure_wrk() -> str:
    """The wrk binary; installed from Debian (apt-get) when missing and running as root."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk not found: installing the Debian package 'wrk' ...", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        cmd = ["apt-get", "install", "-y", "-q", "wrk"]
        if subprocess.run(cmd, env=env, check=False).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, check=False)
            subprocess.run(cmd, env=env, check=False)
        found = shutil.which("wrk")
        if found:
            return found
    sys.exit("bench: wrk is required (apt-get install wrk)")


# The server ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    port: int
    data_dir: Path
    proc: subprocess.Popen[bytes]
    admin_token: str

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def worker_pids(self) -> list[int]:
        out = subprocess.run(
            ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True, check=False
        )
        return [int(x) for x in out.stdout.split()]

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the gunicorn master and its workers."""
        return process_cpu_seconds([self.proc.pid, *self.worker_pids()])


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) used so far by these processes (from /proc/<pid>/stat)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += (int(fields[11]) + int(fields[12])) / _CLK_TCK
    return total


class CpuMeter:
    """CPU seconds of the server, of this process (bulk senders), of children (wrk) and of
    other named processes (``others``: name -> pids, for example the engine)."""

    def __init__(self, srv: Server, others: Mapping[str, list[int]] | None = None) -> None:
        self.srv = srv
        self.others = dict(others or {})
        self.t0 = time.perf_counter()
        self.server0 = srv.cpu_seconds()
        self.others0 = {k: process_cpu_seconds(p) for k, p in self.others.items()}
        self.self0 = _rusage(resource.RUSAGE_SELF)
        self.children0 = _rusage(resource.RUSAGE_CHILDREN)
        self.machine0 = _machine_busy()

    def result(self) -> dict[str, float]:
        wall = time.perf_counter() - self.t0
        server = self.srv.cpu_seconds() - self.server0
        others = {k: process_cpu_seconds(p) - self.others0[k] for k, p in self.others.items()}
        client = _rusage(resource.RUSAGE_SELF) - self.self0
        children = _rusage(resource.RUSAGE_CHILDREN) - self.children0
        cores = os.cpu_count() or 1
        busy = _machine_busy() - self.machine0
        known = server + client + children + sum(others.values())
        out = {
            "wall_s": round(wall, 2),
            "server_cpu_s": round(server, 2),
            "python_client_cpu_s": round(client, 2),
            "wrk_and_tools_cpu_s": round(children, 2),
            "server_share_of_machine": round(server / (wall * cores), 3),
            "load_generators_share_of_machine": round((client + children) / (wall * cores), 3),
        }
        for k, used in others.items():
            out[f"{k}_cpu_s"] = round(used, 2)
            out[f"{k}_share_of_machine"] = round(used / (wall * cores), 3)
        # whatever else ran on the machine meanwhile (other users, the kernel): noise
        out["other_share_of_machine"] = round(max(0.0, busy - known) / (wall * cores), 3)
        out["machine_busy_share"] = round(busy / (wall * cores), 3)
        return out


def _machine_busy() -> float:
    """CPU seconds all cores spent not idle since boot (from /proc/stat)."""
    try:
        parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0
    ticks = [int(x) for x in parts]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / _CLK_TCK


def _rusage(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


@contextlib.contextmanager
def running_server(
    data_dir: Path,
    workers: int,
    threads: int,
    log_level: str,
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[Server]:
    """``monapi serve`` on a free loopback port; ``extra_env``: more MONAPI_* settings."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONAPI_")}
    env.update(
        MONAPI_DATA_DIR=str(data_dir),
        MONAPI_LOG_LEVEL=log_level,
        MONAPI_LOG_FORMAT="text",
        # The benchmark measures ingestion, not the limits: 64 agents pushing flat out would
        # exceed the per-key default by far, and set-up registers many servers at once.
        MONAPI_RATE_LIMIT_SERVER="0",
        MONAPI_RATE_LIMIT_REGISTER="0",
    )
    env.update(extra_env or {})
    log_path = data_dir / "server.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "monapi.cli",
                "serve",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                str(workers),
                "--threads",
                str(threads),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stopped as a whole below
        )
    try:
        token = _wait_ready(proc, port, log_path)
        yield Server(port, data_dir, proc, token)
    finally:
        _stop(proc)


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log_path: Path) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"monapi serve exited ({proc.returncode}):\n{log_path.read_text()}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                conn.close()
                m = re.search(r"\b(mka_[0-9a-f]{16}_[A-Za-z0-9_\-]{43})\b", log_path.read_text())
                if not m:
                    raise RuntimeError("no admin token in the output of monapi serve")
                return m.group(1)
            conn.close()
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"monapi did not answer /healthz within 60 s:\n{log_path.read_text()}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


# API helpers --------------------------------------------------------------------------------
def api(port: int, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Authorization": f"Bearer {token}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, (json.loads(raw) if raw else None)
    finally:
        conn.close()


def set_up(srv: Server, n_bulk: int, n_agent: int) -> tuple[list[dict[str, Any]], ...]:
    """Benchmark fields (bench.f0..f19, float 0..100) and servers with their keys."""
    for i in range(max(BULK_FIELDS, AGENT_FIELDS)):
        status, body = api(
            srv.port,
            "POST",
            "/api/v1/fields",
            srv.admin_token,
            {"measurement": MEASUREMENT, "name": f"f{i}", "type": "float", "min": 0, "max": 100},
        )
        if status != 201:
            raise RuntimeError(f"creating field f{i}: {status} {body}")

    def register(prefix: str, n: int) -> list[dict[str, Any]]:
        out = []
        for i in range(n):
            status, body = api(
                srv.port,
                "POST",
                "/api/v1/servers",
                srv.admin_token,
                {"hostname": f"{prefix}-{i:03d}", "ip_address": f"192.0.2.{(i % 250) + 1}"},
            )
            if status != 201:
                raise RuntimeError(f"registering {prefix}-{i}: {status} {body}")
            out.append({"id": body["id"], "key": body["api_key"]})
        return out

    return register("bulk", n_bulk), register("agent", n_agent)


def stored_samples(data_dir: Path, server_ids: list[int]) -> int:
    """Field values in the time-series file for these servers (read-only, beside the server).

    The embedded store keeps one row per point with its fields as a JSON object."""
    uri = f"file:{data_dir / 'tsdb.sqlite3'}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=30)
    try:
        marks = ",".join("?" * len(server_ids))
        row = conn.execute(
            "SELECT COALESCE(SUM((SELECT COUNT(*) FROM json_each(p.fields))), 0) "
            "FROM points p WHERE series_id IN "
            f"(SELECT id FROM series WHERE server_id IN ({marks}))",
            server_ids,
        ).fetchone()
        return int(row[0])
    finally:
        conn.close()


def api_count(srv: Server, server: dict[str, Any], fld: str, start: int, end: int) -> int:
    """Stored values of one field of one server, counted by the API (agg=count)."""
    step = max(1, end - start + 1)
    path = (
        f"/api/v1/servers/{server['id']}/metrics?fields={MEASUREMENT}.{fld}&agg=count"
        f"&start={start}&end={end}&step={step}s"
    )
    status, body = api(srv.port, "GET", path, server["key"])
    if status != 200:
        raise RuntimeError(f"GET {path}: {status} {body}")
    return int(sum(v or 0 for s in body["series"] for _, v in s["points"]))


# Profiling (optional) -----------------------------------------------------------------------
class Profiler:
    """py-spy record on every worker for one phase (raw collapsed stacks; see
    bench/profile_summary.py). Set BENCH_PYSPY_GIL=1 to sample only the thread holding the GIL."""

    def __init__(self, out_dir: Path | None, srv: Server, phase: str, seconds: float) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        if out_dir is None:
            return
        pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        out_dir.mkdir(parents=True, exist_ok=True)
        for pid in srv.worker_pids():
            for fmt, ext in (("raw", "txt"),):
                self.procs.append(
                    subprocess.Popen(
                        [
                            pyspy,
                            "record",
                            "--pid",
                            str(pid),
                            "--duration",
                            str(int(seconds)),
                            "--rate",
                            "100",
                            "--nonblocking",
                            *(["--gil"] if os.environ.get("BENCH_PYSPY_GIL") == "1" else []),
                            "--format",
                            fmt,
                            "-o",
                            str(out_dir / f"{phase}-{pid}.{ext}"),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )

    def wait(self) -> None:
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


# Phase (a): bulk JSON ingestion ---------------------------------------------------------------
@dataclass
class SenderStats:
    requests: int = 0
    accepted_points: int = 0
    not_204: int = 0
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    last_done: float = 0.0


BULK_TAGS = {"cpu": "cpu-total"}


def send_batches(
    port: int,
    path: str,
    headers: dict[str, str],
    make_body: Callable[[int], bytes],
    deadline: float,
    max_batches: int,
    stats: SenderStats,
    partly_accepted: Callable[[int, bytes], int] = lambda status, raw: 0,
) -> None:
    """POST ``make_body(batch)`` (BULK_POINTS points each) on one keep-alive connection until
    the deadline or ``max_batches``. A 204 accepts the whole batch; for any other status
    ``partly_accepted(status, body)`` says how many of its points were accepted."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        for batch in range(max_batches):
            if time.perf_counter() >= deadline:
                break
            body = make_body(batch)
            t0 = time.perf_counter()
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            t1 = time.perf_counter()
            stats.requests += 1
            stats.latencies.append(t1 - t0)
            stats.last_done = t1
            if resp.status == 204:
                stats.accepted_points += BULK_POINTS
            else:
                stats.not_204 += 1
                stats.accepted_points += partly_accepted(resp.status, raw)
                if len(stats.errors) < 5:
                    stats.errors.append(f"{resp.status} {raw[:200]!r}")
    except Exception as exc:
        stats.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()


def bulk_timestamp(base_ns: int, batch: int, j: int) -> int:
    """Point j of a sender's batch: distinct per point, 1 ms apart, one series set per sender."""
    return base_ns + (batch * BULK_POINTS + j) * 1_000_000


def _bulk_sender(
    port: int,
    key: str,
    base_ns: int,
    deadline: float,
    max_batches: int,
    pool: list[dict[str, float]],
    stats: SenderStats,
) -> None:
    """JSON batches to monapi's /api/v1/data with one server's key."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    enc = msgspec.json.Encoder()

    def body(batch: int) -> bytes:
        return enc.encode(
            {
                "points": [
                    {
                        "measurement": MEASUREMENT,
                        "timestamp": bulk_timestamp(base_ns, batch, j),
                        "tags": BULK_TAGS,
                        "fields": pool[j],
                    }
                    for j in range(BULK_POINTS)
                ]
            }
        )

    def partly(status: int, raw: bytes) -> int:
        return int(json.loads(raw)["accepted"]) if status == 200 else 0

    send_batches(port, "/api/v1/data", headers, body, deadline, max_batches, stats, partly)


def bulk_pool(seed: int = 42) -> list[dict[str, float]]:
    """The field values of a batch (the same for every batch): BULK_POINTS x BULK_FIELDS."""
    rnd = random.Random(seed)
    return [
        {f"f{i}": round(rnd.uniform(0, 100), 2) for i in range(BULK_FIELDS)}
        for _ in range(BULK_POINTS)
    ]


BULK_LP_PATH = "/write?precision=ns"  # InfluxDB 1.x API; db and rp are optional for monapi


def lp_templates(pool: list[dict[str, float]]) -> list[str]:
    """The line protocol of a batch's points without their timestamps (``bench,cpu=cpu-total
    f0=12.5,...,f9=3.25 ``): what the JSON bulk sends, with floats as repr."""
    key = MEASUREMENT + "".join(f",{k}={v}" for k, v in sorted(BULK_TAGS.items()))
    return [f"{key} " + ",".join(f"{k}={v!r}" for k, v in f.items()) + " " for f in pool]


def lp_body(templates: list[str], base_ns: int, batch: int, gzip_level: int | None) -> bytes:
    """A batch as line protocol with fresh timestamps (those of ``bulk_timestamp``), gzip
    compressed at ``gzip_level`` unless None."""
    t0 = bulk_timestamp(base_ns, batch, 0)
    text = "".join([f"{tpl}{t0 + j * 1_000_000}\n" for j, tpl in enumerate(templates)]).encode()
    return text if gzip_level is None else gzip.compress(text, compresslevel=gzip_level)


def lp_partly_accepted(status: int, raw: bytes) -> int:
    """Points stored by a /write answered with 400 (partial write: ``accepted``)."""
    if status != 400:
        return 0
    with contextlib.suppress(ValueError, KeyError, TypeError):
        return int(json.loads(raw)["accepted"])
    return 0


def _bulk_lp_sender(
    port: int,
    key: str,
    base_ns: int,
    deadline: float,
    max_batches: int,
    templates: list[str],
    stats: SenderStats,
) -> None:
    """Line-protocol batches (uncompressed) to monapi's /write with one server's key."""
    headers = {"Authorization": f"Token {key}", "Content-Type": "text/plain; charset=utf-8"}

    def body(batch: int) -> bytes:
        return lp_body(templates, base_ns, batch, None)

    send_batches(
        port, BULK_LP_PATH, headers, body, deadline, max_batches, stats, lp_partly_accepted
    )


def run_senders(
    sender: Callable[[int, float, SenderStats], None], n: int, seconds: float
) -> tuple[list[SenderStats], float]:
    """``sender(i, deadline, stats)`` in n threads at once; their stats and the time from the
    first send to the last reply."""
    stats = [SenderStats() for _ in range(n)]
    start = time.perf_counter()
    deadline = start + seconds
    threads = [
        threading.Thread(target=sender, args=(i, deadline, st), daemon=True)
        for i, st in enumerate(stats)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 180)
    end = max([st.last_done for st in stats if st.requests] or [time.perf_counter()])
    return stats, end - start


def sender_summary(stats: list[SenderStats], elapsed: float) -> dict[str, Any]:
    """Requests, accepted points and field values (per second) and latency of a send phase."""
    accepted = sum(st.accepted_points for st in stats)
    lat = sorted(x for st in stats for x in st.latencies)
    return {
        "senders": len(stats),
        "points_per_request": BULK_POINTS,
        "fields_per_point": BULK_FIELDS,
        "seconds": round(elapsed, 3),
        "requests": sum(st.requests for st in stats),
        "not_204": sum(st.not_204 for st in stats),
        "errors": [e for st in stats for e in st.errors][:10],
        "accepted_points": accepted,
        "accepted_field_values": accepted * BULK_FIELDS,
        "field_values_per_s": round(accepted * BULK_FIELDS / elapsed) if elapsed > 0 else 0,
        "points_per_s": round(accepted / elapsed) if elapsed > 0 else 0,
        "requests_per_sender": [st.requests for st in stats],
        "latency_ms": {
            "p50": round(_pct(lat, 50) * 1000, 1),
            "p99": round(_pct(lat, 99) * 1000, 1),
            "max": round((lat[-1] if lat else 0) * 1000, 1),
        },
    }


def run_bulk(
    srv: Server,
    servers: list[dict[str, Any]],
    seconds: float,
    profile_dir: Path | None,
    kind: str = "json",
) -> dict[str, Any]:
    """The bulk phase: ``kind`` json (/api/v1/data) or lp (line protocol to /write)."""
    pool = bulk_pool()
    templates = lp_templates(pool)
    ids = [s["id"] for s in servers]
    before = stored_samples(srv.data_dir, ids)
    if kind == "json":
        # Timestamps start 6 hours back: well inside the accepted window, distinct per point.
        base_ns = (int(time.time()) - 6 * 3600) * 1_000_000_000
        max_batches = 10_000  # bound on count, besides the time bound
    else:
        # 12 hours back, at most 4,000 batches (5.6 hours of 1 ms steps): never on the
        # timestamps of the JSON phase, so every point is a new one.
        base_ns = (int(time.time()) - 12 * 3600) * 1_000_000_000
        max_batches = 4_000

    def sender(i: int, deadline: float, st: SenderStats) -> None:
        key = servers[i]["key"]
        if kind == "json":
            _bulk_sender(srv.port, key, base_ns, deadline, max_batches, pool, st)
        else:
            _bulk_lp_sender(srv.port, key, base_ns, deadline, max_batches, templates, st)

    prof = Profiler(profile_dir, srv, "bulk" if kind == "json" else "bulk-lp", seconds)
    cpu = CpuMeter(srv)
    stats, elapsed = run_senders(sender, len(servers), seconds)
    cpu_used = cpu.result()
    prof.wait()
    summary = sender_summary(stats, elapsed)
    accepted = summary["accepted_points"]
    stored = stored_samples(srv.data_dir, ids) - before
    # Cross-check one server through the API: values of f0 stored for it.
    s0, st0 = servers[0], stats[0]
    t_start = base_ns // 1_000_000_000 - 1
    t_end = (base_ns + st0.accepted_points * 1_000_000) // 1_000_000_000 + 1
    via_api = api_count(srv, s0, "f0", t_start, t_end) if st0.accepted_points else 0
    return {
        **summary,
        "kind": kind,
        "path": "/api/v1/data" if kind == "json" else BULK_LP_PATH,
        "body": "JSON" if kind == "json" else "line protocol, uncompressed",
        "stored_field_values": stored,
        # the time-series file and the API (one server's f0) agree with the 204 replies
        "stored_matches": stored == accepted * BULK_FIELDS and via_api == st0.accepted_points,
        "api_count_check": {
            "server_id": s0["id"],
            "field": "f0",
            "api_count": via_api,
            "expected": st0.accepted_points,
        },
        "cpu": cpu_used,
    }


def _pct(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


# Phase (b): agent-sized requests (wrk) ----------------------------------------------------------
def run_wrk(
    wrk: str,
    srv: Server,
    keys_file: Path,
    connections: int,
    threads: int,
    seconds: float,
    delay_ms: int = 0,
) -> dict[str, Any]:
    """wrk with bench/agent.lua; ``delay_ms``: each connection waits this long after a reply
    before its next request (0: as fast as replies come, a closed loop)."""
    env = {
        **os.environ,
        "BENCH_KEYS_FILE": str(keys_file),
        "BENCH_AGENT_FIELDS": str(AGENT_FIELDS),
        "BENCH_MEASUREMENT": MEASUREMENT,
        "BENCH_DELAY_MS": str(delay_ms),
    }
    cmd = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{int(seconds)}s",
        "--timeout",
        "5s",
        "--latency",
        "-s",
        str(LUA_SCRIPT),
        f"{srv.base}/api/v1/data",
    ]
    out = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr}\n{out.stdout}")
    for line in out.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            result: dict[str, Any] = json.loads(line[len("BENCH_JSON ") :])
            result["wrk_output"] = out.stdout
            result["command"] = " ".join(cmd)
            return result
    raise RuntimeError(f"no BENCH_JSON line in wrk's output:\n{out.stdout}\n{out.stderr}")


def run_agent(
    wrk: str,
    srv: Server,
    servers: list[dict[str, Any]],
    seconds: float,
    warmup: float,
    wrk_threads: int,
    profile_dir: Path | None,
) -> dict[str, Any]:
    keys_file = srv.data_dir / "agent_keys.txt"
    keys_file.write_text("".join(s["key"] + "\n" for s in servers))
    conns = len(servers)
    if warmup > 0:
        run_wrk(wrk, srv, keys_file, conns, wrk_threads, warmup)
        time.sleep(1.0)  # let requests still in flight when wrk stopped be stored
    ids = [s["id"] for s in servers]
    before = stored_samples(srv.data_dir, ids)
    prof = Profiler(profile_dir, srv, "agent", seconds)
    cpu = CpuMeter(srv)
    r = run_wrk(wrk, srv, keys_file, conns, wrk_threads, seconds)
    cpu_used = cpu.result()
    prof.wait()
    time.sleep(1.0)  # as above: requests in flight at wrk's deadline are stored too
    stored = stored_samples(srv.data_dir, ids) - before
    dur = r["duration_us"] / 1e6
    completed = r["requests"]
    e = r["errors"]
    # wrk stops at the deadline with up to one request per connection in flight; those may be
    # stored without being counted, so the stored values lie between those of the completed
    # 204 replies and those of every request wrk sent.
    ok_requests = completed - r["not_204"]
    sent = r["sent"]
    return {
        "connections": conns,
        "wrk_threads": wrk_threads,
        "fields_per_request": AGENT_FIELDS,
        "seconds": round(dur, 3),
        "requests": completed,
        "not_204": r["not_204"],
        "bad_statuses": r["bad_statuses"].split(),
        "socket_errors": {k: e[k] for k in ("connect", "read", "write", "timeout")},
        "requests_per_s": round(completed / dur, 1) if dur > 0 else 0,
        "latency_ms": {k: round(v / 1000, 2) for k, v in r["latency_us"].items()},
        "stored_field_values": stored,
        "requests_sent": sent,
        "expected_field_values": [ok_requests * AGENT_FIELDS, sent * AGENT_FIELDS],
        "stored_matches": ok_requests * AGENT_FIELDS <= stored <= sent * AGENT_FIELDS,
        "cpu": cpu_used,
        "wrk_command": r["command"],
        "wrk_output": r["wrk_output"],
    }


# Report ---------------------------------------------------------------------------------------
def table(result: dict[str, Any]) -> str:
    rows: list[tuple[str, ...]] = [("Benchmark", "Result", "Goal", "Met")]
    if "bulk" in result:
        rows += _bulk_rows(result["bulk"])
    if "bulk_lp" in result:
        rows += _bulk_rows(result["bulk_lp"])
    if "agent" in result:
        rows += _agent_rows(result["agent"])
    if "footprint" in result:
        import footprint

        rows += footprint.table_rows(result["footprint"])
    if "engines" in result:
        import engines

        rows += engines.table_rows(result["engines"])
    if "reads" in result:
        import reads

        rows += reads.table_rows(result["reads"])
    if "alerts" in result:
        import alerts

        rows += alerts.table_rows(result["alerts"])
    for key, what in (("agents_compare", "table_rows"), ("soak", "soak_rows")):
        if key in result:
            import agents

            if "error" in result[key]:
                rows.append((f"{key}: not measured", result[key]["error"][:60], "", "NO"))
            else:
                rows += getattr(agents, what)(result[key])
    return format_table(rows)


def format_table(rows: list[tuple[str, ...]]) -> str:
    """A Markdown table; the first row is the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _bulk_rows(b: dict[str, Any]) -> list[tuple[str, ...]]:
    lp = b.get("kind") == "lp"
    name = "Bulk line protocol /write" if lp else "Bulk JSON"
    goal = GOALS["bulk_lp_field_values_per_s" if lp else "bulk_field_values_per_s"]
    word = "bulk LP" if lp else "bulk"
    return [
        (
            f"{name} ({BULK_POINTS} pts x {BULK_FIELDS} fields, {b['senders']} senders)",
            f"{b['field_values_per_s']:,} field values/s",
            f">= {goal:,}",
            _yes(b["field_values_per_s"] >= goal),
        ),
        (
            f"  {word} request latency p50 / p99",
            f"{b['latency_ms']['p50']} / {b['latency_ms']['p99']} ms",
            "",
            "",
        ),
        (
            f"  {word} replies not 204 / stored = accepted",
            f"{b['not_204']} / {b['stored_matches']}",
            "0 / True",
            _yes(b["not_204"] == 0 and b["stored_matches"]),
        ),
    ]


def _agent_rows(a: dict[str, Any]) -> list[tuple[str, ...]]:
    return [
        (
            f"Agent-sized (1 pt x {AGENT_FIELDS} fields, {a['connections']} conns)",
            f"{a['requests_per_s']:,} requests/s",
            f">= {GOALS['agent_requests_per_s']:,}",
            _yes(a["requests_per_s"] >= GOALS["agent_requests_per_s"]),
        ),
        ("  agent latency p50", f"{a['latency_ms']['p50']} ms", "", ""),
        (
            "  agent latency p99",
            f"{a['latency_ms']['p99']} ms",
            f"< {GOALS['agent_p99_ms']:g} ms",
            _yes(a["latency_ms"]["p99"] < GOALS["agent_p99_ms"]),
        ),
        (
            "  agent replies not 204 / socket errors / stored ok",
            f"{a['not_204']} / {sum(a['socket_errors'].values())} / {a['stored_matches']}",
            "0 / 0 / True",
            _yes(
                a["not_204"] == 0 and not sum(a["socket_errors"].values()) and a["stored_matches"]
            ),
        ),
    ]


def _print_bulk(b: dict[str, Any]) -> None:
    print(
        f"  {b['field_values_per_s']:,} field values/s, p50 / p99 {b['latency_ms']['p50']} / "
        f"{b['latency_ms']['p99']} ms, {b['requests']} requests, {b['not_204']} not 204, "
        f"stored = accepted: {b['stored_matches']}; other load "
        f"{b['cpu']['other_share_of_machine']:.0%}",
        flush=True,
    )
    if b["errors"]:
        print(f"  !! errors: {b['errors'][:3]}", flush=True)
    if not b["stored_matches"]:
        mismatch_banner(f"bulk {b['kind']}", b["stored_field_values"], b["accepted_field_values"])


def mismatch_banner(what: str, stored: int, acknowledged: int) -> None:
    """The loud line of a stored count that differs from what was acknowledged."""
    print(
        f"\n!!!!! COUNT MISMATCH ({what}): {stored:,} field values stored, "
        f"{acknowledged:,} acknowledged !!!!!\n",
        file=sys.stderr,
        flush=True,
    )


def _yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    ncpu = os.cpu_count() or 1
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short phases (smoke run)")
    ap.add_argument("--workers", type=int, default=ncpu, help="gunicorn workers (default: cores)")
    threads = Settings.model_fields["threads"].default
    ap.add_argument(
        "--threads",
        type=int,
        default=threads,
        help=f"threads per worker (default: monapi's default, {threads})",
    )
    ap.add_argument(
        "--bulk-seconds",
        type=float,
        default=None,
        help="each bulk phase, JSON and line protocol (default 20; --quick 5)",
    )
    ap.add_argument(
        "--bulk-senders",
        type=int,
        default=None,
        help="concurrent bulk senders (default 2 x workers)",
    )
    ap.add_argument("--agent-seconds", type=float, default=None, help="agent phase (default 30)")
    ap.add_argument("--agent-connections", type=int, default=64, help="agent senders (64)")
    ap.add_argument(
        "--wrk-threads",
        type=int,
        default=None,
        help="wrk threads (default: one per connection, so one key per connection)",
    )
    ap.add_argument("--warmup-seconds", type=float, default=None, help="agent warm-up (default 5)")
    ap.add_argument(
        "--skip-bulk", action="store_true", help="skip both bulk phases (JSON and line protocol)"
    )
    ap.add_argument("--skip-bulk-json", action="store_true", help="skip the bulk JSON phase")
    ap.add_argument(
        "--skip-bulk-lp", action="store_true", help="skip the bulk line-protocol (/write) phase"
    )
    ap.add_argument("--skip-agent", action="store_true", help="skip the agent-sized (wrk) phase")
    ap.add_argument(
        "--skip-footprint", action="store_true", help="skip the monapi-agent footprint phase"
    )
    ap.add_argument(
        "--footprint-seconds",
        type=float,
        default=None,
        help="steady part of the monapi-agent footprint run (default 120; --quick 30)",
    )
    ap.add_argument(
        "--footprint-interval",
        type=int,
        default=10,
        help="the agent's interval in the footprint run (default 10 s)",
    )
    ap.add_argument(
        "--skip-dashboard", action="store_true", help="skip the dashboard render-time phase"
    )
    ap.add_argument(
        "--dashboard-servers",
        type=int,
        default=1000,
        help="servers (with an hour of data each) in the dashboard phase (default 1000)",
    )
    ap.add_argument(
        "--dashboard-rounds",
        type=int,
        default=None,
        help="requests per page in the dashboard phase (default 7; --quick 3)",
    )
    ap.add_argument(
        "--skip-reads",
        action="store_true",
        help="skip the read-query phase (24 h range, overview of 1,000 servers; bench/reads.py)",
    )
    ap.add_argument(
        "--skip-alerts",
        action="store_true",
        help="skip the alert evaluation phase (10 rules x 1,000 servers; bench/alerts.py)",
    )
    ap.add_argument(
        "--skip-engines", action="store_true", help="skip the InfluxDB/VictoriaMetrics comparison"
    )
    ap.add_argument(
        "--engines",
        default="influxdb,victoriametrics",
        help="engines to compare, comma-separated (default influxdb,victoriametrics)",
    )
    ap.add_argument(
        "--engine-rounds",
        type=int,
        default=None,
        help="rounds of (direct, JSON, LP) runs per engine (default 3; --quick 2)",
    )
    ap.add_argument(
        "--engine-seconds",
        type=float,
        default=None,
        help="length of each engine run (default 12; --quick 3)",
    )
    ap.add_argument(
        "--engine-kinds",
        default="direct,json,lp",
        help="kinds of engine run, comma-separated, run in this order each round (default\n"
        "direct,json,lp): direct = gzip line protocol straight to the engine; json = the\n"
        "points as JSON to monapi's /api/v1/data; lp = the direct run's gzip line protocol to\n"
        "monapi's /write (for VictoriaMetrics without the measurement tag monapi adds)",
    )
    ap.add_argument(
        "--skip-agents-compare",
        action="store_true",
        help="skip the agent comparison (monapi / empty route / baseline, issue 7)",
    )
    ap.add_argument(
        "--agents-levels",
        default=None,
        help="connection levels of the agent comparison, comma-separated\n"
        "(default 1,4,16,64,128; --quick 16,64)",
    )
    ap.add_argument(
        "--agents-seconds",
        type=float,
        default=None,
        help="measured part of each agent comparison run (default 8; --quick 3)",
    )
    ap.add_argument(
        "--agents-rounds",
        type=int,
        default=None,
        help="rounds of the agent comparison: each level runs every target once per round,\n"
        "in a rotated order; ratios are medians of the rounds (default 3; --quick 1)",
    )
    ap.add_argument(
        "--agents-warmup",
        type=int,
        default=None,
        help="warm-up before each agent comparison run, whole seconds (default 3; --quick 1)",
    )
    ap.add_argument(
        "--agents-wrk-threads",
        type=int,
        default=64,
        help="most wrk threads (= keys) in the agent comparison and soak (64)",
    )
    ap.add_argument(
        "--baseline-workers",
        type=int,
        default=4,
        help="gunicorn sync workers of the baseline (default 4, the founding design's)",
    )
    ap.add_argument("--skip-soak", action="store_true", help="skip the memory soak")
    ap.add_argument(
        "--soak-seconds",
        type=float,
        default=None,
        help="length of the memory soak (default 600; --quick 30)",
    )
    ap.add_argument(
        "--soak-connections", type=int, default=64, help="agents in the memory soak (64)"
    )
    ap.add_argument(
        "--soak-load",
        choices=("half", "full"),
        default="half",
        help="memory soak at half of the peak measured first (default), or a closed loop",
    )
    ap.add_argument("--log-level", default="INFO", help="MONAPI_LOG_LEVEL of the server (INFO)")
    ap.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="record each phase on every worker with py-spy into DIR (slows the run down)",
    )
    ap.add_argument("--keep-data", action="store_true", help="keep the temporary data directory")
    args = ap.parse_args(argv)

    bulk_s = args.bulk_seconds or (5.0 if args.quick else 20.0)
    agent_s = args.agent_seconds or (5.0 if args.quick else 30.0)
    warm_s = args.warmup_seconds if args.warmup_seconds is not None else (2 if args.quick else 5)
    senders = args.bulk_senders or 2 * args.workers
    wrk_threads = args.wrk_threads or args.agent_connections
    engine_names = [e.strip() for e in args.engines.split(",") if e.strip()]
    if args.engine_rounds is not None and not 1 <= args.engine_rounds <= 50:
        ap.error("--engine-rounds: 1 to 50")
    if args.engine_seconds is not None and not 0 < args.engine_seconds <= 600:
        ap.error("--engine-seconds: more than 0, at most 600")
    engine_kinds = [k.strip() for k in args.engine_kinds.split(",") if k.strip()]
    if not engine_kinds or len(set(engine_kinds)) != len(engine_kinds):
        ap.error("--engine-kinds: one or more of direct, json, lp, each once")
    if unknown := [k for k in engine_kinds if k not in ("direct", "json", "lp")]:
        ap.error(f"--engine-kinds: unknown {', '.join(unknown)} (direct, json, lp)")
    bulk_json = not (args.skip_bulk or args.skip_bulk_json)
    bulk_lp = not (args.skip_bulk or args.skip_bulk_lp)
    try:
        agents_levels = tuple(
            int(x)
            for x in (args.agents_levels or ("16,64" if args.quick else "1,4,16,64,128")).split(",")
            if x.strip()
        )
    except ValueError:
        ap.error("--agents-levels: comma-separated numbers of connections")
    if not agents_levels or any(not 1 <= c <= 10_000 for c in agents_levels):
        ap.error("--agents-levels: 1 to 10000 connections each")
    agents_s = args.agents_seconds or (3.0 if args.quick else 8.0)
    if not 1 <= agents_s <= 600:
        ap.error("--agents-seconds: 1 to 600")
    agents_rounds = args.agents_rounds or (1 if args.quick else 3)
    if not 1 <= agents_rounds <= 20:
        ap.error("--agents-rounds: 1 to 20")
    soak_s = args.soak_seconds or (30.0 if args.quick else 600.0)
    if not 10 <= soak_s <= 24 * 3600:
        ap.error("--soak-seconds: 10 to 86400")
    needs_wrk = not (args.skip_agent and args.skip_agents_compare and args.skip_soak)
    wrk = ensure_wrk() if needs_wrk else ""

    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(),
        "server": {
            "workers": args.workers,
            "threads": args.threads,
            "worker_class": "gthread",
            "bind": "127.0.0.1",
            "log_level": args.log_level,
        },
        "note": "load generators (Python bulk senders, wrk) run on the same machine and "
        "compete with the server for the same cores",
    }
    # SIGTERM/SIGHUP (a CI timeout, a closed terminal) unwind like Ctrl-C, so that the finally
    # blocks stop gunicorn, which runs in a session of its own.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    tmp = Path(tempfile.mkdtemp(prefix="monapi-bench-"))
    print(f"data dir {tmp}; {args.workers} workers x {args.threads} threads", flush=True)
    try:
        if bulk_json or bulk_lp or not args.skip_agent:
            with running_server(tmp / "data", args.workers, args.threads, args.log_level) as srv:
                n_agents = 0 if args.skip_agent else args.agent_connections
                bulk_servers, agent_servers = set_up(srv, senders, n_agents)
                if bulk_json:
                    print(f"bulk JSON: {senders} senders for {bulk_s:g} s ...", flush=True)
                    result["bulk"] = run_bulk(srv, bulk_servers, bulk_s, args.profile)
                    _print_bulk(result["bulk"])
                if bulk_lp:
                    print(f"bulk line protocol: {senders} senders for {bulk_s:g} s ...", flush=True)
                    result["bulk_lp"] = run_bulk(srv, bulk_servers, bulk_s, args.profile, "lp")
                    _print_bulk(result["bulk_lp"])
                if not args.skip_agent:
                    print(
                        f"agent: {args.agent_connections} connections for {agent_s:g} s "
                        f"(+{warm_s:g} s warm-up) ...",
                        flush=True,
                    )
                    result["agent"] = run_agent(
                        wrk, srv, agent_servers, agent_s, warm_s, wrk_threads, args.profile
                    )
                    print(f"  {result['agent']['requests_per_s']:,} requests/s", flush=True)
                result["server_log_tail"] = (srv.data_dir / "server.log").read_text(
                    errors="replace"
                )[-4000:]
        if not args.skip_footprint:
            import footprint

            seconds = args.footprint_seconds or (30.0 if args.quick else 120.0)
            print(
                f"monapi-agent footprint: {args.footprint_interval} s interval, "
                f"{seconds:g} s steady ...",
                flush=True,
            )
            with running_server(tmp / "footprint", 1, 4, args.log_level) as srv:
                result["footprint"] = footprint.run_footprint(
                    srv.base,
                    srv.admin_token,
                    api,
                    srv.port,
                    tmp / "agent",
                    seconds,
                    args.footprint_interval,
                )
            f = result["footprint"]
            print(
                f"  peak RSS {f['rss_hwm_mb']} MB, CPU {f['cpu_percent_of_one_core']}% of one "
                f"core, {f['samples']} samples, {f['stored_cpu_values']} stored",
                flush=True,
            )
        if not args.skip_dashboard:
            import dashboard

            n_dash = args.dashboard_servers
            print(f"dashboard: {n_dash} servers with an hour of data each ...", flush=True)
            with running_server(
                tmp / "dashboard", args.workers, args.threads, args.log_level
            ) as srv:
                result["dashboard"] = dashboard.run_dashboard(
                    srv.base,
                    srv.admin_token,
                    api,
                    srv.port,
                    srv.data_dir,
                    n_dash,
                    args.dashboard_rounds or (3 if args.quick else 7),
                )
            print(format_table(dashboard.rows(result["dashboard"])), flush=True)
        if not args.skip_reads:
            import reads

            rounds = 5 if args.quick else 20
            print(f"reads: 1000 servers, 24 h of one; {rounds} rounds per query ...", flush=True)
            with running_server(tmp / "reads", args.workers, args.threads, args.log_level) as srv:
                result["reads"] = reads.run_reads(srv.port, srv.admin_token, api, 1000, rounds)
        if not args.skip_alerts:
            import alerts

            rounds = 3 if args.quick else 10
            print(f"alerts: 10 rules x 1000 servers, {rounds} rounds ...", flush=True)
            result["alerts"] = alerts.run_alerts(1000, rounds)
        if not args.skip_engines and engine_names:
            import engines

            opts = engines.Options(
                workers=args.workers,
                threads=args.threads,
                senders=senders,
                rounds=args.engine_rounds or (2 if args.quick else 3),
                seconds=args.engine_seconds or (3.0 if args.quick else 12.0),
                log_level=args.log_level,
                profile_dir=args.profile,
                kinds=tuple(engine_kinds),
            )
            result["engines"] = engines.run_engines(engine_names, tmp / "engines", opts)
        if not (args.skip_agents_compare and args.skip_soak):
            import agents

            a_opts = agents.Options(
                workers=args.workers,
                threads=args.threads,
                levels=agents_levels,
                seconds=agents_s,
                rounds=agents_rounds,
                warmup=args.agents_warmup
                if args.agents_warmup is not None
                else (1 if args.quick else 3),
                wrk_threads_max=args.agents_wrk_threads,
                log_level=args.log_level,
                baseline_workers=args.baseline_workers,
                profile_dir=args.profile,
            )
            if not args.skip_agents_compare:
                result["agents_compare"] = _phase_or_error(
                    lambda: agents.run_compare(wrk, tmp / "agents", a_opts)
                )
                if "error" not in result["agents_compare"]:
                    print(agents.levels_table(result["agents_compare"]), flush=True)
            if not args.skip_soak:
                result["soak"] = _phase_or_error(
                    lambda: agents.run_soak(
                        wrk,
                        tmp / "soak",
                        a_opts,
                        soak_s,
                        args.soak_connections,
                        share_of_peak=0.5 if args.soak_load == "half" else None,
                    )
                )
    finally:
        if not args.keep_data:
            shutil.rmtree(tmp, ignore_errors=True)
    result["machine"]["loadavg_after"] = os.getloadavg()

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS_DIR / f"{stamp}{'-quick' if args.quick else ''}.json"
    result["results_file"] = out.name
    out.write_text(json.dumps(result, indent=2) + "\n")
    agents_doc = _agents_doc(result, out, args.quick)
    keys = (
        "bulk",
        "bulk_lp",
        "agent",
        "footprint",
        "engines",
        "agents_compare",
        "soak",
        "reads",
        "alerts",
    )
    if any(k in result for k in keys):
        print()
        print(table(result))
    if "engines" in result:
        import engines

        print()
        print(engines.rounds_table(result["engines"]))
        print()
        print(engines.cpu_table(result["engines"]))
    if "agents_compare" in result and "error" not in result["agents_compare"]:
        import agents

        print()
        print(agents.levels_table(result["agents_compare"]))
        print()
        print(agents.rss_table(result["agents_compare"]))
    m = result["machine"]
    print(
        f"\n{m['nproc']} x {m['cpu_model']}, {m['memory_gib']} GiB, Python {m['python']}, "
        f"SQLite {m['sqlite']}; load generators share these cores with the server."
    )
    print(f"results: {out}")
    if agents_doc:
        print(f"agent comparison plot and report: {', '.join(map(str, agents_doc))}")
    status = 0
    for phase in ("bulk", "bulk_lp"):
        b = result.get(phase)
        if b and not (b["stored_matches"] and b["not_204"] == 0 and not b["errors"]):
            status = 1
    f = result.get("footprint")
    if f and not (f["stored_matches"] and f["exit_code"] == 0 and not f["errors"]):
        status = 1
    if "engines" in result:
        import engines

        status = max(status, engines.exit_status(result["engines"]))
    if any(not q["answer_ok"] for q in result.get("reads", {}).get("queries", {}).values()):
        status = 1
    if "agents_compare" in result or "soak" in result:
        import agents

        a, s = result.get("agents_compare"), result.get("soak")
        if (a and "error" in a) or (s and "error" in s):
            status = 1
        else:
            status = max(status, agents.exit_status(a, s))
    return status


def _phase_or_error(run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A phase's result, or ``{"error": ...}`` when it failed (reported, the others still run;
    the command exits 1). Ctrl-C and SIGTERM still stop the benchmark."""
    try:
        return run()
    except BaseException as exc:
        # tests/engines.py says "engine missing" with pytest.skip (or pytest.fail under CI)
        pytest = sys.modules.get("pytest")
        skips = (pytest.skip.Exception, pytest.fail.Exception) if pytest else ()
        if not isinstance(exc, (Exception, *skips)):
            raise
        msg = f"{type(exc).__name__}: {str(exc)[-2000:]}"
        print(f"\n!!!!! {msg}\n", file=sys.stderr, flush=True)
        return {"error": msg}


def _agents_doc(result: dict[str, Any], out: Path, quick: bool) -> list[Path]:
    """The agent comparison's plot and Markdown report: docs/img/bench-agents.png and
    docs/bench-agents.md for a full run, beside the JSON for --quick."""
    a = result.get("agents_compare")
    if not a or "error" in a:
        return []
    import plot

    if quick:
        png, md = out.with_suffix(".agents.png"), out.with_suffix(".agents.md")
    else:
        png, md = plot.DEFAULT_PNG, plot.DEFAULT_REPORT
    try:
        return [plot.plot_agents(result, png), plot.write_report(result, png, md)]
    except Exception as exc:  # a plot must not lose the run: the JSON is written already
        print(f"!! plot/report failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return []


if __name__ == "__main__":
    sys.exit(main())
