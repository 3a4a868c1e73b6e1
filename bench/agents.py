"""Agent-sized pushes: monapi against the framework's ceiling and a naive baseline (issue 7).

Part of ``bench/run.py`` (``make bench``); ``--skip-agents-compare``, ``--agents-levels``,
``--agents-seconds``, ``--agents-warmup``, ``--agents-wrk-threads`` and ``--baseline-workers``
control the comparison, ``--skip-soak``, ``--soak-seconds`` and ``--soak-connections`` the
memory soak.

**Comparison.** One throwaway InfluxDB (``tests/engines.py``, as ``bench/engines.py`` starts it)
and three targets on loopback, all running for the whole phase:

* ``monapi``: ``monapi serve`` with ``MONAPI_TSDB=influxdb`` (as ``bench/engines.py`` runs it),
  gunicorn gthread, workers = cores, 8 threads; bench fields and one server per wrk thread
  registered through the API.
* ``empty``: ``bench/baseline/empty.py``, one Flask route ``POST /api/v1/data`` that reads the
  body and answers 204, under monapi's own gunicorn configuration file (the same worker class,
  workers, threads, keep-alive): the framework's ceiling.
* ``baseline``: ``bench/baseline/app.py``, a naive reference of the founding design (BASELINE,
  not monapi): a new SQLite connection per request for the key, ``request.get_json()``, one
  ``requests.post`` per request (new connection) to the same InfluxDB, under ``gunicorn -w 4``
  (sync workers). Its SQLite table holds the same key strings as monapi's servers; it writes to
  its own database ``baseline`` in the same InfluxDB.

Every target gets the same requests: ``wrk`` with ``bench/agent.lua`` (1 point x 20 float fields,
a fresh µs timestamp, ``Authorization: Bearer <key>``, one key per wrk thread). For each
concurrency level (default 1, 4, 16, 64, 128 connections; wrk threads = min(connections, 64))
the three targets run one after the other, ``--agents-rounds`` times (default 3), in an order
rotated per level and round (monapi first, then empty first, ...) so that none always runs first
or last; ratios are the medians of the per-round ratios (each round's runs are side by side), and
requests/s and percentiles the medians of the rounds. Each run is a short warm-up, then N seconds
(default 8) measured: requests/s, p50/p90/p99 (wrk
``--latency``), replies other than 204, socket errors, CPU of the target, InfluxDB and wrk, and
at the end VmRSS of every gunicorn worker. For monapi and the baseline the field values stored in
InfluxDB with timestamps inside the run are counted: they must lie between those of the completed
204 replies and those of every request wrk sent (wrk stops with up to one request per connection
in flight).

Headline (64 connections): monapi / empty >= 0.5, monapi p99 < 50 ms, monapi / baseline >= 3.

**Memory soak** (issue 8: "10 minutes at half of the measured peak ingestion rate"). A fresh
monapi on a fresh InfluxDB, 64 agent connections: first the peak (a 15 s closed loop), then the
per-connection pause that gives half of it (one 8 s paced run, corrected by the response time it
measured), then ``--soak-seconds`` (default 600) at that pace (``--soak-load full``: a closed
loop instead); VmRSS of every gunicorn worker every 10 s, replies other than 204, socket errors,
and monapi's log lines at warning level or worse during the soak. Per worker: the first
sample after 1 minute (after half the run when shorter), the last, the maximum and the least
squares slope over the last 5 minutes (the last half when shorter), in MB/min, and the growth it
implies over that window. Goals: every worker under 100 MB at the end, and "not growing" = the
fitted growth over the window under 1 MB. A worker that was replaced during the soak is
reported.

The load generator (wrk) shares the two cores with the targets and InfluxDB.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import monapi
from engines import INFLUX_DB, INFLUX_RP, Engine, engine_pid, engine_version, start_engine
from run import (
    AGENT_FIELDS,
    MEASUREMENT,
    CpuMeter,
    Profiler,
    Server,
    _stop,
    _yes,
    format_table,
    free_port,
    mismatch_banner,
    run_wrk,
    running_server,
    set_up,
)

BENCH_DIR = Path(__file__).resolve().parent
BASELINE_DIR = BENCH_DIR / "baseline"
MONAPI_GUNICORN_CONF = Path(monapi.__file__).with_name("gunicorn_conf.py")
TARGETS = ("monapi", "empty", "baseline")
LABELS = {
    "monapi": "monapi (InfluxDB)",
    "empty": "empty Flask 204 route",
    "baseline": "BASELINE naive founding design",
}
DEFAULT_LEVELS = (1, 4, 16, 64, 128)
HEADLINE_CONNECTIONS = 64
WRK_THREADS_MAX = 64
BASELINE_WORKERS = 4
BASELINE_DB, BASELINE_RP = "baseline", "autogen"
GOALS = {
    "monapi_over_empty": 0.5,
    "monapi_p99_ms": 50.0,
    "monapi_over_baseline": 3.0,
    "worker_rss_mb": 100.0,
    # "not growing": fitted growth over the last 5 minutes (the last half when shorter)
    "worker_growth_mb": 1.0,
}
SOAK_SAMPLE_SECONDS = 10.0


@dataclass(frozen=True)
class Options:
    workers: int  # gunicorn workers of monapi and of the empty app
    threads: int  # threads per worker (monapi and the empty app)
    levels: tuple[int, ...]  # connections
    seconds: float  # measured part of each run
    warmup: float  # warm-up before each run
    wrk_threads_max: int  # wrk threads = min(connections, this): one key per thread
    log_level: str  # MONAPI_LOG_LEVEL of monapi (and the empty app's gunicorn)
    baseline_workers: int = BASELINE_WORKERS
    profile_dir: Path | None = None  # py-spy records of monapi's runs, when set
    rounds: int = 1  # every level runs each target once per round; results are medians


# Processes ------------------------------------------------------------------------------------
@contextlib.contextmanager
def gunicorn(
    name: str, args: list[str], env: Mapping[str, str], workdir: Path, port: int
) -> Iterator[Server]:
    """``python -m gunicorn <args>`` in its own session, in ``workdir``'s log; yields a Server
    (no admin token) once it answers HTTP on ``port``."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "server.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MONAPI_")}
    full_env.update(env)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", *args],
            cwd=BASELINE_DIR,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        _wait_http(proc, port, log_path, name)
        yield Server(port, workdir, proc, "")
    finally:
        _stop(proc)


def _wait_http(proc: subprocess.Popen[bytes], port: int, log_path: Path, name: str) -> None:
    """Until ``GET /`` gets any HTTP answer (404 is fine: the apps have only the POST route)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited ({proc.returncode}):\n{log_path.read_text()}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/")
            conn.getresponse().read()
            conn.close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{name} did not answer within 60 s:\n{log_path.read_text()[-3000:]}")


def empty_app(workdir: Path, opts: Options) -> contextlib.AbstractContextManager[Server]:
    """bench/baseline/empty.py under monapi's gunicorn_conf.py (its settings come from the same
    MONAPI_* variables ``monapi serve`` sets)."""
    port = free_port()
    env = {
        "MONAPI_BIND": f"127.0.0.1:{port}",
        "MONAPI_WORKERS": str(opts.workers),
        "MONAPI_THREADS": str(opts.threads),
        "MONAPI_LOG_LEVEL": opts.log_level,
        "MONAPI_DATA_DIR": str(workdir),
    }
    args = ["-c", str(MONAPI_GUNICORN_CONF), "empty:app"]
    return gunicorn("empty app", args, env, workdir, port)


def baseline_app(
    workdir: Path, influx_url: str, keys: list[tuple[str, str, str]], workers: int
) -> contextlib.AbstractContextManager[Server]:
    """bench/baseline/app.py under ``gunicorn -w 4`` (sync workers, gunicorn's defaults)."""
    spec = importlib.util.spec_from_file_location("bench_baseline_app", BASELINE_DIR / "app.py")
    assert spec is not None and spec.loader is not None
    baseline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(baseline)
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "config.db"
    baseline.init_db(str(db), keys)
    _influx_query(influx_url, f'CREATE DATABASE "{BASELINE_DB}"', method="POST")
    port = free_port()
    env = {
        "BASELINE_DB": str(db),
        "BASELINE_INFLUX_URL": influx_url,
        "BASELINE_INFLUX_DB": BASELINE_DB,
    }
    # --no-control-socket: gunicorn 25+ otherwise takes over ~/.gunicorn/gunicorn.ctl, shared
    # with every other gunicorn on the machine; it changes nothing in request handling.
    args = ["-w", str(workers), "-b", f"127.0.0.1:{port}", "--no-control-socket", "app:app"]
    return gunicorn("baseline app", args, env, workdir, port)


# InfluxDB -------------------------------------------------------------------------------------
def _influx_query(url: str, q: str, db: str | None = None, method: str = "GET") -> Any:
    params = {"q": q, **({"db": db} if db else {})}
    req = urllib.request.Request(f"{url}/query?" + urlencode(params), method=method)
    with urllib.request.urlopen(req, timeout=300) as resp:
        doc = json.loads(resp.read())
    res = doc["results"][0]
    if res.get("error"):
        raise RuntimeError(f"InfluxDB: {q}: {res['error']}")
    return res


def influx_field_values(url: str, db: str, rp: str, t0_ns: int, t1_ns: int) -> int:
    """Field values of the bench measurement with timestamps in [t0, t1) in ``db``.``rp``."""
    q = (
        f'SELECT COUNT(*) FROM "{db}"."{rp}"."{MEASUREMENT}" '
        f"WHERE time >= {t0_ns} AND time < {t1_ns}"
    )
    res = _influx_query(url, q, db)
    rows = [row for s in res.get("series") or [] for row in s["values"]]
    return sum(int(v) for row in rows for v in row[1:] if v is not None)


# /proc ----------------------------------------------------------------------------------------
def rss_mb(pid: int) -> float | None:
    """VmRSS of a process in MB (MiB), None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def worker_rss(srv: Server) -> dict[str, float]:
    """VmRSS (MB) of each gunicorn worker, by pid (as text, for JSON)."""
    out = {}
    for pid in srv.worker_pids():
        mb = rss_mb(pid)
        if mb is not None:
            out[str(pid)] = mb
    return out


# The sweep ------------------------------------------------------------------------------------
@dataclass
class Target:
    name: str
    srv: Server
    count: tuple[str, str] | None  # (database, retention policy) to count in; None: not stored


def wrk_threads(connections: int, opts: Options) -> int:
    return max(1, min(connections, opts.wrk_threads_max))


def measure(
    wrk: str,
    t: Target,
    eng: Engine,
    keys_file: Path,
    connections: int,
    opts: Options,
    seconds: float,
) -> dict[str, Any]:
    """Warm-up, then one measured wrk run against one target; its stored values checked."""
    threads = wrk_threads(connections, opts)
    if opts.warmup > 0:
        run_wrk(wrk, t.srv, keys_file, connections, threads, opts.warmup)
        time.sleep(0.5)
    others = {"influxdb": [eng.pid]} if eng.pid else {}
    prof = (
        Profiler(opts.profile_dir, t.srv, f"agents-{connections}", seconds)
        if t.name == "monapi"
        else Profiler(None, t.srv, "", 0)
    )
    # Timestamps are the wall clock when wrk builds each request: every request of this run
    # (and none of the warm-up's) has one in [t0, t1).
    t0_ns = time.time_ns()
    cpu = CpuMeter(t.srv, others)
    r = run_wrk(wrk, t.srv, keys_file, connections, threads, seconds)
    cpu_used = cpu.result()
    t1_ns = time.time_ns()
    prof.wait()
    rss = worker_rss(t.srv)
    dur = r["duration_us"] / 1e6
    completed = r["requests"]
    ok = completed - r["not_204"]
    e = r["errors"]
    out: dict[str, Any] = {
        "target": t.name,
        "connections": connections,
        "wrk_threads": threads,
        "seconds": round(dur, 3),
        "requests": completed,
        "requests_per_s": round(completed / dur, 1) if dur > 0 else 0.0,
        "not_204": r["not_204"],
        "bad_statuses": r["bad_statuses"].split()[:20],
        "socket_errors": {k: e[k] for k in ("connect", "read", "write", "timeout")},
        "latency_ms": {k: round(v / 1000, 2) for k, v in r["latency_us"].items()},
        "requests_sent": r["sent"],
        "worker_rss_mb": rss,
        "cpu": cpu_used,
        "wrk_command": r["command"],
    }
    if t.count is not None:
        db, rp = t.count
        lo, hi = ok * AGENT_FIELDS, r["sent"] * AGENT_FIELDS
        time.sleep(0.5)  # requests in flight at wrk's deadline are still stored
        counts = [influx_field_values(eng.url, db, rp, t0_ns, t1_ns)]
        for delay in (0.5, 1.0, 2.0):
            if lo <= counts[-1] <= hi:
                break
            time.sleep(delay)
            counts.append(influx_field_values(eng.url, db, rp, t0_ns, t1_ns))
        out.update(
            stored_field_values=counts[-1],
            count_attempts=counts,
            expected_field_values=[lo, hi],
            stored_matches=lo <= counts[-1] <= hi,
        )
    lat = out["latency_ms"]
    errs = sum(out["socket_errors"].values())
    stored = (
        f", stored {out['stored_field_values']:,} in [{out['expected_field_values'][0]:,}, "
        f"{out['expected_field_values'][1]:,}]"
        if "stored_field_values" in out
        else ""
    )
    print(
        f"  {connections:>4} conns  {t.name:<8} {out['requests_per_s']:>9,.1f} req/s  "
        f"p50 {lat['p50']:.1f} p99 {lat['p99']:.1f} ms  not 204 {out['not_204']}  "
        f"socket errors {errs}{stored}  RSS {'/'.join(f'{v:g}' for v in rss.values())} MB",
        flush=True,
    )
    if out.get("stored_matches") is False:
        lo, hi = out["expected_field_values"]
        mismatch_banner(f"agents {t.name} {connections} conns", out["stored_field_values"], lo)
    return out


def run_compare(wrk: str, workdir: Path, opts: Options) -> dict[str, Any]:
    """The sweep: every level, every target, side by side on one InfluxDB."""
    if not opts.levels or any(c < 1 for c in opts.levels):
        raise ValueError(f"connection levels: {opts.levels!r}")
    n_keys = max(wrk_threads(c, opts) for c in opts.levels)
    runs: list[dict[str, Any]] = []
    with start_engine("influxdb", workdir / "influxdb") as url:
        eng = Engine("influxdb", url, engine_pid(workdir / "influxdb"))
        with contextlib.ExitStack() as stack:
            mon = stack.enter_context(
                running_server(
                    workdir / "monapi", opts.workers, opts.threads, opts.log_level, eng.monapi_env()
                )
            )
            _, servers = set_up(mon, 0, n_keys)
            keys_file = workdir / "agent_keys.txt"
            keys_file.write_text("".join(s["key"] + "\n" for s in servers))
            rows = [
                (f"agent-{i:03d}", f"192.0.2.{(i % 250) + 1}", s["key"])
                for i, s in enumerate(servers)
            ]
            empty = stack.enter_context(empty_app(workdir / "empty", opts))
            base = stack.enter_context(
                baseline_app(workdir / "baseline", url, rows, opts.baseline_workers)
            )
            targets = {
                "monapi": Target("monapi", mon, (INFLUX_DB, INFLUX_RP)),
                "empty": Target("empty", empty, None),
                "baseline": Target("baseline", base, (BASELINE_DB, BASELINE_RP)),
            }
            print(
                f"agents compare: InfluxDB at {url}; monapi {mon.base}, empty app {empty.base}, "
                f"baseline {base.base}; levels {', '.join(map(str, opts.levels))} connections, "
                f"{opts.warmup:g} s warm-up + {opts.seconds:g} s each",
                flush=True,
            )
            for i, conns in enumerate(opts.levels):
                for rnd in range(opts.rounds):
                    k = (i + rnd) % len(TARGETS)
                    for name in TARGETS[k:] + TARGETS[:k]:
                        try:
                            run = measure(
                                wrk, targets[name], eng, keys_file, conns, opts, opts.seconds
                            )
                        except RuntimeError as exc:
                            print(f"  !! {name} at {conns} connections: {exc}", flush=True)
                            run = {"target": name, "connections": conns, "error": str(exc)}
                        runs.append({**run, "round": rnd + 1})
            logs = {
                name: (t.srv.data_dir / "server.log").read_text(errors="replace")[-2000:]
                for name, t in targets.items()
            }
    return summarize(runs, opts, url, logs)


def _run(runs: list[dict[str, Any]], target: str, conns: int) -> dict[str, Any] | None:
    """The median run of ``target`` at ``conns`` over the rounds: requests/s and latency
    percentiles are each the median of the rounds (one run when there is one round)."""
    got = [
        r for r in runs if r["target"] == target and r["connections"] == conns and "error" not in r
    ]
    if not got:
        return None
    if len(got) == 1:
        return got[0]
    lat = {k: statistics.median(r["latency_ms"][k] for r in got) for k in got[0]["latency_ms"]}
    rps = statistics.median(r["requests_per_s"] for r in got)
    return {**got[0], "requests_per_s": rps, "latency_ms": lat, "round": "median"}


def _ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> float | None:
    if a is None or b is None or not b["requests_per_s"]:
        return None
    return round(float(a["requests_per_s"]) / float(b["requests_per_s"]), 3)


def _round_ratios(runs: list[dict[str, Any]], a: str, b: str, conns: int) -> list[float]:
    """``a`` / ``b`` requests/s within each round (the two ran minutes apart at most)."""
    out = []
    for r in sorted({x.get("round", 1) for x in runs}):
        pa = [x for x in runs if x.get("round", 1) == r and x["target"] == a]
        pb = [x for x in runs if x.get("round", 1) == r and x["target"] == b]
        ra = _ratio(
            next((x for x in pa if x["connections"] == conns and "error" not in x), None),
            next((x for x in pb if x["connections"] == conns and "error" not in x), None),
        )
        if ra is not None:
            out.append(ra)
    return out


def _median_ratio(runs: list[dict[str, Any]], a: str, b: str, conns: int) -> float | None:
    got = _round_ratios(runs, a, b, conns)
    return round(statistics.median(got), 3) if got else None


def summarize(
    runs: list[dict[str, Any]], opts: Options, url: str, logs: dict[str, str]
) -> dict[str, Any]:
    levels = list(opts.levels)
    by_level = []
    for c in levels:
        mon, emp, base = (_run(runs, t, c) for t in TARGETS)
        by_level.append(
            {
                "connections": c,
                **{
                    f"{t}_requests_per_s": r["requests_per_s"] if r else None
                    for t, r in zip(TARGETS, (mon, emp, base), strict=True)
                },
                **{
                    f"{t}_p99_ms": r["latency_ms"]["p99"] if r else None
                    for t, r in zip(TARGETS, (mon, emp, base), strict=True)
                },
                "monapi_over_empty": _median_ratio(runs, "monapi", "empty", c),
                "monapi_over_baseline": _median_ratio(runs, "monapi", "baseline", c),
                "monapi_over_empty_rounds": _round_ratios(runs, "monapi", "empty", c),
                "monapi_over_baseline_rounds": _round_ratios(runs, "monapi", "baseline", c),
                "monapi_p99_ms_rounds": [
                    r["latency_ms"]["p99"]
                    for r in runs
                    if r["target"] == "monapi" and r["connections"] == c and "error" not in r
                ],
            }
        )
    head_c = min(levels, key=lambda c: (abs(c - HEADLINE_CONNECTIONS), -c))
    mon, emp, base = (_run(runs, t, head_c) for t in TARGETS)
    over_empty = _median_ratio(runs, "monapi", "empty", head_c)
    over_base = _median_ratio(runs, "monapi", "baseline", head_c)
    p99 = mon["latency_ms"]["p99"] if mon else None
    rss_all = [
        v for r in runs if r["target"] == "monapi" for v in r.get("worker_rss_mb", {}).values()
    ]
    monapi_rss_max = max(rss_all) if rss_all else None
    headline = {
        "connections": head_c,
        "monapi_requests_per_s": mon["requests_per_s"] if mon else None,
        "empty_requests_per_s": emp["requests_per_s"] if emp else None,
        "baseline_requests_per_s": base["requests_per_s"] if base else None,
        "monapi_over_empty": over_empty,
        "monapi_over_baseline": over_base,
        "monapi_p99_ms": p99,
        "monapi_worker_rss_max_mb": monapi_rss_max,
    }
    goals_met = {
        "monapi_over_empty": over_empty is not None and over_empty >= GOALS["monapi_over_empty"],
        "monapi_p99_ms": p99 is not None and p99 < GOALS["monapi_p99_ms"],
        "monapi_over_baseline": over_base is not None
        and over_base >= GOALS["monapi_over_baseline"],
    }
    counted = [r for r in runs if "stored_matches" in r]
    return {
        "note": "monapi, an empty Flask route and a naive baseline of the founding design, one "
        "after the other per level and round (order rotated per level and round) on one "
        "InfluxDB; wrk shares the "
        "cores with the targets and InfluxDB",
        "influxdb": {"url": url, "version": engine_version("influxdb")},
        "targets": {
            "monapi": f"monapi serve, MONAPI_TSDB=influxdb, gunicorn gthread, {opts.workers} "
            f"workers x {opts.threads} threads",
            "empty": f"bench/baseline/empty.py under monapi's gunicorn_conf.py ({opts.workers} "
            f"workers x {opts.threads} threads, gthread, keep-alive 30 s)",
            "baseline": f"BASELINE (not monapi): bench/baseline/app.py under gunicorn -w "
            f"{opts.baseline_workers} (sync workers)",
        },
        "levels": levels,
        "rounds": opts.rounds,
        "seconds_per_run": opts.seconds,
        "warmup_seconds": opts.warmup,
        "wrk_threads_max": opts.wrk_threads_max,
        "request": f"bench/agent.lua: 1 point x {AGENT_FIELDS} float fields, Authorization: "
        "Bearer <key>, one key per wrk thread",
        "goals": {
            k: GOALS[k] for k in ("monapi_over_empty", "monapi_p99_ms", "monapi_over_baseline")
        },
        "headline": headline,
        "goals_met": goals_met,
        "by_level": by_level,
        "stored_matches": all(r["stored_matches"] for r in counted) if counted else False,
        "all_204": all(
            r.get("not_204") == 0 and not sum(r["socket_errors"].values())
            for r in runs
            if "error" not in r
        ),
        "errors": [f"{r['target']} {r['connections']}: {r['error']}" for r in runs if "error" in r],
        "runs": runs,
        "server_log_tails": logs,
    }


# Memory soak ----------------------------------------------------------------------------------
def _slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) in MB per minute."""
    if len(points) < 2:
        return 0.0
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    if den == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den * 60


def analyse_worker(samples: list[tuple[float, float]], seconds: float) -> dict[str, Any]:
    """One worker's (elapsed s, MB) samples: first after 1 min, last, max, growth."""
    settle = min(60.0, seconds / 2)
    window = min(300.0, seconds / 2)
    first = next((mb for t, mb in samples if t >= settle), samples[-1][1] if samples else 0.0)
    last_t = samples[-1][0] if samples else 0.0
    tail = [(t, mb) for t, mb in samples if t >= last_t - window]
    slope = _slope_per_min(tail)
    growth = slope * window / 60
    return {
        "samples": len(samples),
        "first_after_s": settle,
        "first_mb": first,
        "last_mb": samples[-1][1] if samples else 0.0,
        "max_mb": max((mb for _, mb in samples), default=0.0),
        "window_s": window,
        "slope_mb_per_min": round(slope, 3),
        "growth_over_window_mb": round(growth, 2),
        "under_limit": bool(samples) and samples[-1][1] < GOALS["worker_rss_mb"],
        "not_growing": growth < GOALS["worker_growth_mb"],
    }


PEAK_PROBE_SECONDS = 15.0  # the closed-loop run that measures the peak before a paced soak
CALIBRATE_SECONDS = 8.0  # the paced run that finds the delay giving the target rate


def pace(
    wrk: str, srv: Any, keys_file: Path, connections: int, threads: int, share: float
) -> dict[str, Any]:
    """The peak rate (a closed loop at ``connections``), then the per-connection delay that
    gives ``share`` of it: one paced run at the delay that ignores response time, and the delay
    corrected by the response time that run measured."""
    peak_run = run_wrk(wrk, srv, keys_file, connections, threads, PEAK_PROBE_SECONDS)
    peak = peak_run["requests"] / (peak_run["duration_us"] / 1e6)
    target = peak * share
    cycle_ms = connections * 1000 / target  # each connection: one request per cycle
    first = max(1, round(cycle_ms))
    probe = run_wrk(wrk, srv, keys_file, connections, threads, CALIBRATE_SECONDS, first)
    got = probe["requests"] / (probe["duration_us"] / 1e6)
    response_ms = max(0.0, connections * 1000 / got - first)
    delay = max(1, round(cycle_ms - response_ms))
    print(
        f"soak: peak {peak:,.0f} requests/s at {connections} connections (closed loop, "
        f"{PEAK_PROBE_SECONDS:g} s); target {target:,.0f}; delay {first} ms gave {got:,.0f}, "
        f"so {delay} ms",
        flush=True,
    )
    return {
        "peak_requests_per_s": round(peak, 1),
        "peak_p99_ms": round(peak_run["latency_us"]["p99"] / 1000, 2),
        "peak_not_204": peak_run["not_204"],
        "share_of_peak": share,
        "target_requests_per_s": round(target, 1),
        "calibration": {"delay_ms": first, "requests_per_s": round(got, 1)},
        "delay_ms": delay,
    }


def log_problems(log: Path) -> dict[str, int]:
    """Lines of monapi's JSON log at warning level and above, by level (the access log's
    4xx lines are info, 5xx warning)."""
    counts: dict[str, int] = {}
    for line in log.read_text(errors="replace").splitlines():
        try:
            level = json.loads(line).get("level", "")
        except ValueError:
            continue  # gunicorn's own lines
        if level in ("warning", "error", "critical"):
            counts[level] = counts.get(level, 0) + 1
    return counts


def run_soak(
    wrk: str,
    workdir: Path,
    opts: Options,
    seconds: float,
    connections: int,
    sample_every: float = SOAK_SAMPLE_SECONDS,
    share_of_peak: float | None = 0.5,
) -> dict[str, Any]:
    """monapi on a fresh InfluxDB under ``connections`` agents for ``seconds``; worker VmRSS
    every ``sample_every`` seconds. ``share_of_peak``: the load is paced to that share of the
    peak measured first on the same instance (None: a closed loop, as fast as it goes)."""
    threads = wrk_threads(connections, opts)
    with start_engine("influxdb", workdir / "influxdb") as url:
        eng = Engine("influxdb", url, engine_pid(workdir / "influxdb"))
        with running_server(
            workdir / "monapi", opts.workers, opts.threads, opts.log_level, eng.monapi_env()
        ) as srv:
            _, servers = set_up(srv, 0, threads)
            keys_file = workdir / "soak_keys.txt"
            keys_file.write_text("".join(s["key"] + "\n" for s in servers))
            paced = (
                pace(wrk, srv, keys_file, connections, threads, share_of_peak)
                if share_of_peak is not None
                else None
            )
            delay_ms = paced["delay_ms"] if paced else 0
            log_before = log_problems(srv.data_dir / "server.log")
            initial = worker_rss(srv)
            print(
                f"soak: monapi {srv.base} on InfluxDB {url}, {connections} connections "
                f"{f'paced ({delay_ms} ms between requests)' if paced else 'closed loop'} for "
                f"{seconds:g} s, worker RSS every {sample_every:g} s (at start: "
                f"{'/'.join(f'{v:g}' for v in initial.values())} MB)",
                flush=True,
            )
            result: list[dict[str, Any]] = []
            failure: list[BaseException] = []

            def load() -> None:
                try:
                    result.append(
                        run_wrk(wrk, srv, keys_file, connections, threads, seconds, delay_ms)
                    )
                except BaseException as exc:
                    failure.append(exc)

            t0_ns = time.time_ns()
            cpu = CpuMeter(srv, {"influxdb": [eng.pid]} if eng.pid else {})
            start = time.monotonic()
            runner = threading.Thread(target=load, daemon=True)
            runner.start()
            series: dict[str, list[tuple[float, float]]] = {}
            next_at = start + sample_every
            while runner.is_alive():
                runner.join(timeout=max(0.0, next_at - time.monotonic()))
                now = time.monotonic()
                if now < next_at:
                    continue
                next_at += sample_every
                elapsed = round(now - start, 1)
                sample = worker_rss(srv)
                for pid, mb in sample.items():
                    series.setdefault(pid, []).append((elapsed, mb))
                if int(elapsed) % 60 < sample_every:
                    print(
                        f"  {elapsed:>5.0f} s: {'/'.join(f'{v:g}' for v in sample.values())} MB",
                        flush=True,
                    )
            cpu_used = cpu.result()
            t1_ns = time.time_ns()
            if failure:
                raise RuntimeError(f"soak: wrk failed: {failure[0]}")
            r = result[0]
            final = worker_rss(srv)
            time.sleep(0.5)
            stored = influx_field_values(url, INFLUX_DB, INFLUX_RP, t0_ns, t1_ns)
            log_tail = (srv.data_dir / "server.log").read_text(errors="replace")[-2000:]
            log_after = log_problems(srv.data_dir / "server.log")
    ok = r["requests"] - r["not_204"]
    lo, hi = ok * AGENT_FIELDS, r["sent"] * AGENT_FIELDS
    dur = r["duration_us"] / 1e6
    workers = {pid: analyse_worker(s, seconds) for pid, s in series.items()}
    replaced = sorted(set(series) - set(final)) + sorted(set(final) - set(series))
    out = {
        "connections": connections,
        "wrk_threads": threads,
        "paced": paced,
        "seconds": round(dur, 1),
        "sample_every_s": sample_every,
        "requests": r["requests"],
        "requests_per_s": round(r["requests"] / dur, 1) if dur > 0 else 0.0,
        "latency_ms": {k: round(v / 1000, 2) for k, v in r["latency_us"].items()},
        "not_204": r["not_204"],
        "bad_statuses": r.get("bad_statuses", ""),
        "socket_errors": {k: r["errors"][k] for k in ("connect", "read", "write", "timeout")},
        "log_lines_warning_or_worse": {
            k: log_after.get(k, 0) - log_before.get(k, 0) for k in log_after
        },
        "stored_field_values": stored,
        "expected_field_values": [lo, hi],
        "stored_matches": lo <= stored <= hi,
        "worker_rss_at_start_mb": initial,
        "worker_rss_at_end_mb": final,
        "workers": workers,
        "workers_replaced": replaced,
        "series": {pid: s for pid, s in series.items()},
        "goals": {k: GOALS[k] for k in ("worker_rss_mb", "worker_growth_mb")},
        "goals_met": {
            "worker_rss_mb": bool(workers) and all(w["under_limit"] for w in workers.values()),
            "worker_growth_mb": bool(workers)
            and all(w["not_growing"] for w in workers.values())
            and not replaced,
        },
        "cpu": cpu_used,
        "server_log_tail": log_tail,
    }
    for pid, w in workers.items():
        print(
            f"  worker {pid}: {w['first_mb']:g} MB after {w['first_after_s']:g} s, last "
            f"{w['last_mb']:g}, max {w['max_mb']:g}, {w['slope_mb_per_min']:+.3f} MB/min over "
            f"the last {w['window_s']:g} s ({w['growth_over_window_mb']:+.2f} MB)",
            flush=True,
        )
    if not out["stored_matches"]:
        mismatch_banner("soak", stored, lo)
    return out


# Report ---------------------------------------------------------------------------------------
def _fmt(v: float | None, spec: str = ",.1f") -> str:
    return "n/a" if v is None else format(v, spec)


def table_rows(res: dict[str, Any]) -> list[tuple[str, ...]]:
    """Rows for bench/run.py's summary table (the comparison)."""
    h = res["headline"]
    c = h["connections"]
    rows: list[tuple[str, ...]] = [
        (
            f"Agents vs ceiling, {c} conns: monapi (InfluxDB)",
            f"{_fmt(h['monapi_requests_per_s'])} requests/s",
            "",
            "",
        ),
        (
            "  empty Flask 204 route (same gunicorn settings)",
            f"{_fmt(h['empty_requests_per_s'])} requests/s",
            "",
            "",
        ),
        (
            "  BASELINE naive founding design (gunicorn -w 4)",
            f"{_fmt(h['baseline_requests_per_s'])} requests/s",
            "",
            "",
        ),
        (
            "  monapi / empty route",
            _fmt(h["monapi_over_empty"], ".2f"),
            f">= {GOALS['monapi_over_empty']}",
            _yes(res["goals_met"]["monapi_over_empty"]),
        ),
        (
            "  monapi p99 (InfluxDB)",
            f"{_fmt(h['monapi_p99_ms'])} ms",
            f"< {GOALS['monapi_p99_ms']:g} ms",
            _yes(res["goals_met"]["monapi_p99_ms"]),
        ),
        (
            "  monapi / BASELINE",
            _fmt(h["monapi_over_baseline"], ".2f"),
            f">= {GOALS['monapi_over_baseline']:g}",
            _yes(res["goals_met"]["monapi_over_baseline"]),
        ),
        (
            "  agents: all 204 / stored ok (monapi, baseline)",
            f"{res['all_204']} / {res['stored_matches']}",
            "True / True",
            _yes(res["all_204"] and res["stored_matches"]),
        ),
    ]
    return rows


def soak_rows(s: dict[str, Any]) -> list[tuple[str, ...]]:
    ws = s["workers"].values()
    last = max((w["last_mb"] for w in ws), default=0.0)
    growth = max((w["growth_over_window_mb"] for w in ws), default=0.0)
    window = next(iter(ws))["window_s"] if ws else 0.0
    return [
        (
            f"Soak ({s['seconds']:g} s, {s['connections']} conns): worker RSS at end (max)",
            f"{last:g} MB",
            f"< {GOALS['worker_rss_mb']:g} MB",
            _yes(s["goals_met"]["worker_rss_mb"]),
        ),
        (
            f"  worker RSS growth over last {window:g} s (max, fitted)",
            f"{growth:+.2f} MB",
            f"< {GOALS['worker_growth_mb']:g} MB",
            _yes(s["goals_met"]["worker_growth_mb"]),
        ),
        *(
            [
                (
                    f"  paced at {s['paced']['share_of_peak']:g} of the peak "
                    f"({s['paced']['peak_requests_per_s']:,.0f} requests/s): target / got",
                    f"{s['paced']['target_requests_per_s']:,.0f} / {s['requests_per_s']:,.0f}",
                    "",
                    "",
                )
            ]
            if s.get("paced")
            else []
        ),
        (
            "  errors: non-204 / socket / log lines warning+",
            f"{s['not_204']} / {sum(s['socket_errors'].values())} / "
            f"{sum(s.get('log_lines_warning_or_worse', {}).values())}",
            "0 / 0 / 0",
            _yes(
                s["not_204"] == 0
                and not sum(s["socket_errors"].values())
                and not sum(s.get("log_lines_warning_or_worse", {}).values())
            ),
        ),
        (
            "  soak requests/s, p99 / all 204 / stored ok",
            f"{s['requests_per_s']:,.1f}, {s['latency_ms']['p99']} ms / "
            f"{s['not_204'] == 0 and not sum(s['socket_errors'].values())} / "
            f"{s['stored_matches']}",
            "",
            _yes(s["not_204"] == 0 and s["stored_matches"]),
        ),
    ]


def levels_table(res: dict[str, Any]) -> str:
    """Per level: requests/s and p99 of each target, and monapi's ratios."""
    rows: list[tuple[str, ...]] = [
        (
            "Conns",
            "monapi req/s",
            "empty req/s",
            "baseline req/s",
            "monapi p99",
            "empty p99",
            "baseline p99",
            "monapi/empty",
            "monapi/baseline",
        )
    ]
    for lv in res["by_level"]:
        rows.append(
            (
                str(lv["connections"]),
                *(_fmt(lv[f"{t}_requests_per_s"]) for t in TARGETS),
                *(f"{_fmt(lv[f'{t}_p99_ms'])} ms" for t in TARGETS),
                _fmt(lv["monapi_over_empty"], ".2f"),
                _fmt(lv["monapi_over_baseline"], ".2f"),
            )
        )
    return format_table(rows)


def rss_table(res: dict[str, Any]) -> str:
    """VmRSS of each target's workers at the end of its run, per level."""
    rows: list[tuple[str, ...]] = [("Conns", *(f"{t} workers RSS MB" for t in TARGETS))]
    for c in res["levels"]:
        cells = []
        for t in TARGETS:
            r = _run(res["runs"], t, c)
            cells.append("/".join(f"{v:g}" for v in r["worker_rss_mb"].values()) if r else "n/a")
        rows.append((str(c), *cells))
    return format_table(rows)


def exit_status(res: dict[str, Any] | None, soak: dict[str, Any] | None) -> int:
    """1 when a run failed or a stored count did not match; goals missed do not fail."""
    if res is not None and (res["errors"] or not res["stored_matches"]):
        return 1
    if soak is not None and not soak["stored_matches"]:
        return 1
    return 0
