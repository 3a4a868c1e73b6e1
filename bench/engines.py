"""Ingestion through monapi against writing the same batches straight into the engine.

Part of ``bench/run.py`` (``make bench``); ``--skip-engines``, ``--engines``,
``--engine-rounds`` and ``--engine-seconds`` control it. For each engine (InfluxDB 1.x,
VictoriaMetrics single node; the Debian binaries, started as throwaway processes on free
loopback ports by ``tests/engines.py``):

* ``monapi serve`` (gunicorn, the same workers and threads as the other phases) with
  ``MONAPI_TSDB`` set to the engine; the bench fields ``bench.f0`` ... (float, 0..100) are
  created through the admin API (unknown fields stay refused), and one server per sender is
  registered.
* **direct**: N senders (keep-alive ``http.client``, one thread each) POST the batches as line
  protocol straight to the engine, exactly the request monapi's store makes for them (taken
  once from its own ``write`` with the HTTP client stubbed, and checked byte for byte): the same
  path (``/write?db=monapi&rp=monapi&precision=ns`` for InfluxDB, ``/write`` for
  VictoriaMetrics), headers and lines (tags sorted with ``host`` and ``server_id``, floats as
  repr, ns timestamps), gzip level 1 like monapi's engine client.
* **through monapi**: the same N senders POST the same points as JSON to ``/api/v1/data``
  (``bench/run.py``'s bulk sender, one server key each).

Batches are 5,000 points x 10 float fields. After a warm-up (one batch per sender each way),
the runs alternate direct, monapi, direct, monapi, ...; each run is bounded in time and in
batches. Every run writes its own time slab (points 1 ms apart, hours back), so no point
overwrites another and each run's points can be counted in the engine afterwards: InfluxDB
``SELECT COUNT(*)``; VictoriaMetrics ``sum(count_over_time(...))`` after
``/internal/force_flush``. A count that differs from the acknowledged values is reported loudly
(and the command exits 1). CPU of the engine process, of gunicorn (master and workers) and of the
load generator (this process) is read per run from /proc. The load generator runs on the same
cores as the engine and monapi.
"""

from __future__ import annotations

import gzip
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlencode, urlsplit

from monapi.settings import load_settings
from monapi.tsdb import create_store
from monapi.tsdb.base import Point, WriteBatch
from monapi.tsdb.http import EngineHTTP, EngineResponse
from run import (
    BULK_POINTS,
    BULK_TAGS,
    MEASUREMENT,
    CpuMeter,
    Profiler,
    SenderStats,
    Server,
    _bulk_sender,
    _yes,
    api,
    bulk_pool,
    bulk_timestamp,
    format_table,
    run_senders,
    running_server,
    send_batches,
    sender_summary,
    set_up,
)

REPO = Path(__file__).resolve().parent.parent
GOAL_RATIO = 0.75  # monapi keeps at least this share of the engine's own throughput
MAX_BATCHES = 300  # per sender and run, besides the time bound
SLAB_NS = MAX_BATCHES * BULK_POINTS * 1_000_000  # the timestamps one run may use (1 ms apart)
INFLUX_DB = INFLUX_RP = "monapi"
LABELS = {"influxdb": "InfluxDB", "victoriametrics": "VictoriaMetrics"}
DEB_PACKAGES = {"influxdb": "influxdb", "victoriametrics": "victoria-metrics"}


def _tests_engines() -> Any:
    """tests/engines.py (the throwaway engines of the test suite)."""
    if str(REPO) not in sys.path:
        sys.path.append(str(REPO))
    import tests.engines

    return tests.engines


# Engines ---------------------------------------------------------------------------------------
@dataclass
class Engine:
    name: str
    url: str
    pid: int | None

    @property
    def port(self) -> int:
        return int(urlsplit(self.url).port or 80)

    def monapi_env(self) -> dict[str, str]:
        if self.name == "influxdb":
            return {
                "MONAPI_TSDB": "influxdb",
                "MONAPI_INFLUXDB_URL": self.url,
                "MONAPI_INFLUXDB_DATABASE": INFLUX_DB,
                "MONAPI_INFLUXDB_RETENTION_POLICY": INFLUX_RP,
            }
        return {"MONAPI_TSDB": "victoriametrics", "MONAPI_VICTORIAMETRICS_URL": self.url}

    def stored_field_values(self, t0_ns: int, t1_ns: int) -> int:
        """Field values of the bench measurement with timestamps in [t0, t1), in the engine."""
        if self.name == "influxdb":
            q = (
                f'SELECT COUNT(*) FROM "{INFLUX_DB}"."{INFLUX_RP}"."{MEASUREMENT}" '
                f"WHERE time >= {t0_ns} AND time < {t1_ns}"
            )
            doc = _get_json(f"{self.url}/query?" + urlencode({"db": INFLUX_DB, "q": q}))
            res = doc["results"][0]
            if res.get("error"):
                raise RuntimeError(f"InfluxDB: {q}: {res['error']}")
            rows = [row for s in res.get("series") or [] for row in s["values"]]
            return sum(int(v) for row in rows for v in row[1:] if v is not None)
        _tests_engines().vm_flush(self.url)
        # count_over_time looks back over (t - window, t]: with t = t1 - 1 ms that is [t0, t1).
        # VictoriaMetrics reads times and durations through floats and truncates to the ms, so
        # half a millisecond is added to land on the intended one.
        window_ms = (t1_ns - t0_ns) // 1_000_000
        at_ms = t1_ns // 1_000_000 - 1
        window = f"{window_ms // 1000}s" if window_ms % 1000 == 0 else f"{window_ms}.5ms"
        q = f'sum(count_over_time({{__name__=~"{MEASUREMENT}_f[0-9]+"}}[{window}]))'
        params = {"query": q, "time": f"{at_ms // 1000}.{at_ms % 1000:03d}5"}
        doc = _get_json(f"{self.url}/api/v1/query?" + urlencode(params))
        result = doc["data"]["result"]
        return int(float(result[0]["value"][1])) if result else 0


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=300) as resp:
        return json.loads(resp.read())


def start_engine(name: str, workdir: Path) -> AbstractContextManager[str]:
    """The engine's context manager from tests/engines.py; it yields the base URL."""
    te = _tests_engines()
    starter: Callable[[Path], AbstractContextManager[str]] = {
        "influxdb": te.influxdb,
        "victoriametrics": te.victoriametrics,
    }[name]
    return starter(workdir)


def engine_pid(workdir: Path) -> int | None:
    """The child process of this one whose command line names ``workdir`` (its config file or
    data directory)."""
    out = subprocess.run(
        ["pgrep", "-P", str(os.getpid())], capture_output=True, text=True, check=False
    )
    for pid in (int(x) for x in out.stdout.split()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if str(workdir).encode() in cmdline:
            return pid
    return None


def engine_version(name: str) -> str:
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", DEB_PACKAGES[name]],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or "unknown"


# The direct senders ----------------------------------------------------------------------------
@dataclass
class EngineRequest:
    """The write request monapi's store makes for one batch (body before gzip)."""

    path: str  # with the query string
    headers: dict[str, str]
    body: bytes


def monapi_request(
    eng: Engine, server: dict[str, Any], hostname: str, points: list[Point]
) -> EngineRequest:
    """What monapi's store for this engine sends for these points: the real store (its
    ``write``), with its HTTP client answering 204 instead of sending."""
    overrides = {k.removeprefix("MONAPI_").lower(): v for k, v in eng.monapi_env().items()}
    store = create_store(load_settings(overrides))
    sent: list[EngineRequest] = []

    def capture(_http: EngineHTTP, method: str, path: str, **kw: Any) -> EngineResponse:
        params = kw.get("params")
        headers = {**_http.headers, **(kw.get("headers") or {})}
        if kw.get("compress"):
            headers["Content-Encoding"] = "gzip"
        full = path + ("?" + urlencode(params) if params else "")
        sent.append(EngineRequest(full, headers, kw.get("body") or b""))
        return EngineResponse(204, {}, b"")

    try:
        with mock.patch.object(EngineHTTP, "request", capture):
            refused = store.write([WriteBatch(server["id"], hostname, points)])
    finally:
        store.close()
    if refused or len(sent) != 1:
        raise RuntimeError(f"monapi's {eng.name} store: {len(sent)} requests, refused {refused}")
    return sent[0]


def batch_points(pool: list[dict[str, float]], base_ns: int, batch: int) -> list[Point]:
    """The points the bulk sender sends in this batch, as monapi validates them."""
    tags = tuple(sorted(BULK_TAGS.items()))
    return [
        Point(MEASUREMENT, tags, bulk_timestamp(base_ns, batch, j), dict(f))
        for j, f in enumerate(pool)
    ]


def line_templates(req: EngineRequest, points: list[Point]) -> list[str]:
    """Each line of ``req`` (monapi's body for ``points``) without its timestamp."""
    lines = req.body.decode().splitlines()
    if len(lines) != len(points) or not all(
        line.endswith(f" {p.ts}") for line, p in zip(lines, points, strict=True)
    ):
        raise RuntimeError(f"unexpected line protocol from monapi's store: {lines[:2]}")
    return [line[: -len(str(p.ts))] for line, p in zip(lines, points, strict=True)]


def direct_body(templates: list[str], base_ns: int, batch: int) -> bytes:
    """A batch as gzip line protocol (level 1, as monapi's engine client compresses)."""
    t0 = bulk_timestamp(base_ns, batch, 0)
    text = "".join([f"{tpl}{t0 + j * 1_000_000}\n" for j, tpl in enumerate(templates)])
    return gzip.compress(text.encode(), compresslevel=1)


def direct_senders(
    eng: Engine, servers: list[dict[str, Any]], hostnames: list[str], pool: list[dict[str, float]]
) -> tuple[str, dict[str, str], list[list[str]]]:
    """The path and headers of monapi's write requests and, per server, the line templates;
    checked: a direct body is, uncompressed, byte for byte what monapi sends for that batch."""
    base_ns = 1_700_000_000 * 10**9
    templates = []
    for server, hostname in zip(servers, hostnames, strict=True):
        points = batch_points(pool, base_ns, 0)
        req = monapi_request(eng, server, hostname, points)
        templates.append(line_templates(req, points))
    again = monapi_request(eng, servers[0], hostnames[0], batch_points(pool, base_ns, 7))
    if gzip.decompress(direct_body(templates[0], base_ns, 7)) != again.body:
        raise RuntimeError("direct line protocol differs from monapi's for the same batch")
    headers = {k: v for k, v in again.headers.items() if k.lower() != "authorization"}
    return again.path, headers, templates


# Runs ------------------------------------------------------------------------------------------
@dataclass
class Bench:
    engine: Engine
    srv: Server
    servers: list[dict[str, Any]]
    pool: list[dict[str, float]]
    write_path: str  # of monapi's write requests to the engine, used by the direct senders
    write_headers: dict[str, str]
    templates: list[list[str]]
    base_ns: int
    profile_dir: Path | None

    def run(
        self, kind: str, slab: int, seconds: float, max_batches: int, tag: str
    ) -> dict[str, Any]:
        """One run of ``kind`` (direct or monapi) into time slab ``slab``; counted afterwards."""
        base_ns = self.base_ns + slab * SLAB_NS
        eng = self.engine

        def sender(i: int, deadline: float, st: SenderStats) -> None:
            if kind == "monapi":
                key = self.servers[i]["key"]
                _bulk_sender(self.srv.port, key, base_ns, deadline, max_batches, self.pool, st)
                return

            def body(batch: int) -> bytes:
                return direct_body(self.templates[i], base_ns, batch)

            path, headers = self.write_path, self.write_headers
            send_batches(eng.port, path, headers, body, deadline, max_batches, st)

        prof_dir = self.profile_dir if kind == "monapi" and max_batches > 1 else None
        prof = Profiler(prof_dir, self.srv, f"{eng.name}-{tag}", seconds)
        cpu = CpuMeter(self.srv, {"engine": [eng.pid] if eng.pid else []})
        stats, elapsed = run_senders(sender, len(self.servers), seconds)
        cpu_used = cpu.result()
        prof.wait()
        out = sender_summary(stats, elapsed)
        t_count = time.perf_counter()
        stored = eng.stored_field_values(base_ns, base_ns + SLAB_NS)
        out.update(
            kind=kind,
            slab=slab,
            stored_field_values=stored,
            stored_matches=stored == out["accepted_field_values"],
            count_seconds=round(time.perf_counter() - t_count, 2),
            cpu=cpu_used,
            # CPU milliseconds per batch of 5,000 points: where the work is done
            cpu_ms_per_batch={
                who: round(1000 * cpu_used.get(key, 0.0) / max(1, out["requests"]), 1)
                for who, key in (
                    ("engine", "engine_cpu_s"),
                    ("monapi", "server_cpu_s"),
                    ("senders", "python_client_cpu_s"),
                )
            },
        )
        cores = cpu_used["wall_s"] or 1.0
        line = (
            f"  {eng.name} {tag:<9} {kind:<6} {out['field_values_per_s']:>10,} field values/s "
            f"({out['requests']} batches, {out['seconds']:.1f} s; cores: engine "
            f"{cpu_used.get('engine_cpu_s', 0) / cores:.2f}, monapi "
            f"{cpu_used['server_cpu_s'] / cores:.2f}, senders "
            f"{cpu_used['python_client_cpu_s'] / cores:.2f})"
        )
        print(line, flush=True)
        if out["errors"] or out["not_204"]:
            print(f"  !! {out['not_204']} replies not 204: {out['errors'][:3]}", flush=True)
        if not out["stored_matches"]:
            print(
                f"\n!!!!! COUNT MISMATCH ({eng.name} {tag} {kind}): the engine holds {stored:,} "
                f"field values, {out['accepted_field_values']:,} were acknowledged !!!!!\n",
                file=sys.stderr,
                flush=True,
            )
        return out


@dataclass(frozen=True)
class Options:
    workers: int  # gunicorn workers of monapi serve
    threads: int  # threads per worker
    senders: int  # concurrent senders, the same each way
    rounds: int  # rounds of (direct, monapi)
    seconds: float  # length of each run
    log_level: str  # MONAPI_LOG_LEVEL
    profile_dir: Path | None  # py-spy records of the monapi runs, when set


def compare_engine(name: str, workdir: Path, opts: Options) -> dict[str, Any]:
    """Start the engine and monapi on it; warm up; then ``rounds`` x (direct, monapi)."""
    rounds, senders = opts.rounds, opts.senders
    slabs = 2 + 2 * rounds
    # Slabs lie back to back, ending at least an hour before now (InfluxDB's retention policy
    # of monapi keeps 30 days, monapi accepts a year back).
    base_ns = (int(time.time()) - 3600) * 10**9 - slabs * SLAB_NS
    with start_engine(name, workdir / name) as url:
        eng = Engine(name, url, engine_pid(workdir / name))
        env = eng.monapi_env()
        with running_server(
            workdir / f"monapi-{name}", opts.workers, opts.threads, opts.log_level, env
        ) as srv:
            servers, _ = set_up(srv, senders, 0)
            hostnames = [_hostname(srv, s["id"]) for s in servers]
            pool = bulk_pool()
            path, headers, templates = direct_senders(eng, servers, hostnames, pool)
            bench = Bench(
                eng, srv, servers, pool, path, headers, templates, base_ns, opts.profile_dir
            )
            print(
                f"{LABELS[name]} at {url} (pid {eng.pid}), monapi at {srv.base}: "
                f"{senders} senders, {rounds} rounds x {opts.seconds:g} s",
                flush=True,
            )
            # One batch per sender each way: pools, caches, InfluxDB's database and shards.
            warmup = [
                bench.run("monapi", 0, 30, 1, "warm-up"),
                bench.run("direct", 1, 30, 1, "warm-up"),
            ]
            runs = []
            for r in range(rounds):
                for k, kind in enumerate(("direct", "monapi")):
                    slab = 2 + 2 * r + k
                    tag = f"round-{r + 1}"
                    runs.append(bench.run(kind, slab, opts.seconds, MAX_BATCHES, tag))
            log_tail = (srv.data_dir / "server.log").read_text(errors="replace")[-3000:]
    return summarize(name, url, runs, warmup, log_tail)


def _hostname(srv: Server, server_id: int) -> str:
    status, body = api(srv.port, "GET", f"/api/v1/servers/{server_id}", srv.admin_token)
    if status != 200:
        raise RuntimeError(f"GET /api/v1/servers/{server_id}: {status} {body}")
    return str(body["hostname"])


def summarize(
    name: str, url: str, runs: list[dict[str, Any]], warmup: list[dict[str, Any]], log: str
) -> dict[str, Any]:
    direct = [r for r in runs if r["kind"] == "direct"]
    monapi = [r for r in runs if r["kind"] == "monapi"]
    d_med = statistics.median(r["field_values_per_s"] for r in direct)
    m_med = statistics.median(r["field_values_per_s"] for r in monapi)
    ratio = m_med / d_med if d_med else 0.0
    every = [*warmup, *runs]
    return {
        "engine": name,
        "label": LABELS[name],
        "version": engine_version(name),
        "url": url,
        "senders": direct[0]["senders"] if direct else 0,
        "rounds": [
            {
                "round": i + 1,
                "direct_field_values_per_s": d["field_values_per_s"],
                "monapi_field_values_per_s": m["field_values_per_s"],
                "ratio": round(m["field_values_per_s"] / d["field_values_per_s"], 3)
                if d["field_values_per_s"]
                else 0.0,
            }
            for i, (d, m) in enumerate(zip(direct, monapi, strict=True))
        ],
        "direct_median_field_values_per_s": round(d_med),
        "monapi_median_field_values_per_s": round(m_med),
        "ratio": round(ratio, 3),
        "goal_ratio": GOAL_RATIO,
        "goal_met": ratio >= GOAL_RATIO,
        "stored_matches": all(r["stored_matches"] for r in every),
        "all_204": all(r["not_204"] == 0 and not r["errors"] for r in every),
        "runs": runs,
        "warmup": warmup,
        "monapi_log_tail": log,
    }


def run_engines(names: list[str], workdir: Path, opts: Options) -> dict[str, Any]:
    """The comparison for each engine; an engine that cannot be started or fails is reported
    (``error``) and the others still run."""
    out: dict[str, Any] = {
        "note": "direct and through monapi alternate in one run on the same engine process; "
        "the load generator (this Python process) shares the cores with engine and monapi",
        "rounds": opts.rounds,
        "seconds_per_run": opts.seconds,
        "max_batches_per_sender_and_run": MAX_BATCHES,
        "fields": "bench.f0..f19 created through the admin API (MONAPI_UNKNOWN_FIELDS=reject)",
    }
    for name in names:
        if name not in LABELS:
            raise SystemExit(f"bench: unknown engine {name!r} (influxdb, victoriametrics)")
        try:
            out[name] = compare_engine(name, workdir, opts)
        except BaseException as exc:
            # tests/engines.py says "engine missing" with pytest.skip (or pytest.fail under CI)
            pytest = sys.modules.get("pytest")
            skips = (pytest.skip.Exception, pytest.fail.Exception) if pytest else ()
            if not isinstance(exc, (Exception, *skips)):
                raise  # Ctrl-C, SIGTERM: the context managers have stopped everything
            out[name] = {"engine": name, "label": LABELS[name], "error": _describe(exc)}
        if "error" in out[name]:
            print(f"\n!!!!! {LABELS[name]}: {out[name]['error']}\n", file=sys.stderr, flush=True)
    return out


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[-2000:]}"


def _engine_results(result: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for name in LABELS:
        if isinstance(result.get(name), dict):
            yield result[name]


# Report ----------------------------------------------------------------------------------------
def table_rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """Rows for bench/run.py's summary table."""
    rows: list[tuple[str, ...]] = []
    for e in _engine_results(result):
        label = e["label"]
        if "error" in e:
            rows.append((f"{label}: not measured", e["error"][:60], "", "NO"))
            continue
        n = len(e["rounds"])
        rows += [
            (
                f"{label} direct, gzip line protocol (median of {n})",
                f"{e['direct_median_field_values_per_s']:,} field values/s",
                "",
                "",
            ),
            (
                f"{label} through monapi, JSON (median of {n})",
                f"{e['monapi_median_field_values_per_s']:,} field values/s",
                "",
                "",
            ),
            (
                f"  {label} monapi / direct",
                f"{e['ratio']:.2f}",
                f">= {GOAL_RATIO}",
                _yes(e["goal_met"]),
            ),
            (
                f"  {label} all 204 / stored = acknowledged",
                f"{e['all_204']} / {e['stored_matches']}",
                "True / True",
                _yes(e["all_204"] and e["stored_matches"]),
            ),
        ]
    return rows


def rounds_table(result: dict[str, Any]) -> str:
    """Per round: field values/s each way, the ratio, and the cores each process used."""
    rows: list[tuple[str, ...]] = [
        (
            "Engine",
            "Round",
            "Direct fv/s",
            "monapi fv/s",
            "Ratio",
            "Direct: engine / senders cores",
            "monapi: engine / monapi / senders cores",
        )
    ]
    for e in _engine_results(result):
        if "error" in e:
            continue
        direct = [r for r in e["runs"] if r["kind"] == "direct"]
        monapi = [r for r in e["runs"] if r["kind"] == "monapi"]
        for rnd, d, m in zip(e["rounds"], direct, monapi, strict=True):
            rows.append(
                (
                    e["label"],
                    str(rnd["round"]),
                    f"{d['field_values_per_s']:,}",
                    f"{m['field_values_per_s']:,}",
                    f"{rnd['ratio']:.2f}",
                    f"{_cores(d, 'engine_cpu_s')} / {_cores(d, 'python_client_cpu_s')}",
                    f"{_cores(m, 'engine_cpu_s')} / {_cores(m, 'server_cpu_s')} / "
                    f"{_cores(m, 'python_client_cpu_s')}",
                )
            )
        rows.append(
            (
                e["label"],
                "median",
                f"{e['direct_median_field_values_per_s']:,}",
                f"{e['monapi_median_field_values_per_s']:,}",
                f"{e['ratio']:.2f}",
                "",
                "",
            )
        )
    return format_table(rows)


def _cores(run: dict[str, Any], key: str) -> str:
    cpu = run["cpu"]
    return f"{cpu.get(key, 0.0) / (cpu['wall_s'] or 1.0):.2f}"


def exit_status(result: dict[str, Any]) -> int:
    """1 when an engine could not be measured or a count did not match, else 0."""
    bad = [
        e
        for e in _engine_results(result)
        if "error" in e or not e["stored_matches"] or not e["all_204"]
    ]
    return 1 if bad else 0
