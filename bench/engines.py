"""Ingestion through monapi against writing the same batches straight into the engine.

Part of ``bench/run.py`` (``make bench``); ``--skip-engines``, ``--engines``,
``--engine-rounds``, ``--engine-seconds`` and ``--engine-kinds`` control it. For each engine
(InfluxDB 1.x, VictoriaMetrics single node; the Debian binaries, started as throwaway processes
on free loopback ports by ``tests/engines.py``):

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
* **json** (through monapi, JSON): the same N senders POST the same points as JSON to
  ``/api/v1/data`` (``bench/run.py``'s bulk sender, one server key each).
* **lp** (through monapi, line protocol): the same N senders POST the direct run's gzip line
  protocol (the same lines, gzip level 1, fresh timestamps per batch) to monapi's
  ``/write?db=monapi&rp=monapi&precision=ns`` with ``Authorization: Token <server key>``; every
  reply must be 204. For InfluxDB the body is byte for byte the direct body (monapi replaces
  the ``host`` and ``server_id`` tags by the key's, which are the same). For VictoriaMetrics the
  direct lines carry the label ``measurement`` (monapi adds it to every sample so it can map
  names back to fields) and monapi refuses that tag as input: the lp senders send the same
  lines without it, and monapi adds it again.

Batches are 5,000 points x 10 float fields. After a warm-up (one batch per sender of each
kind), the runs rotate direct, json, lp, direct, json, lp, ... (``--engine-kinds`` picks the
kinds and their order); each run is bounded in time and in batches. Every run writes its own
time slab (points 1 ms apart, hours back), so no point overwrites another and each run's points
can be counted in the engine afterwards: InfluxDB ``SELECT COUNT(*)``; VictoriaMetrics
``sum(count_over_time(...))`` after
``/internal/force_flush``. A count that differs from the acknowledged values is reported loudly
(and the command exits 1), as is a reply other than 204. CPU of the engine process, of
gunicorn (master and workers) and of the load generator (this process) is read per run from
/proc, and reported as cores used and as CPU milliseconds per batch. The load generator runs on
the same cores as the engine and monapi.

Goals: json / direct >= 0.75, lp / direct >= 0.9 (medians of the rounds).
"""

from __future__ import annotations

import gzip
import importlib
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
    lp_body,
    lp_partly_accepted,
    mismatch_banner,
    run_senders,
    running_server,
    send_batches,
    sender_summary,
    set_up,
)

REPO = Path(__file__).resolve().parent.parent
KINDS = ("direct", "json", "lp")
KIND_LABELS = {
    "direct": "direct, gzip line protocol",
    "json": "through monapi, JSON /api/v1/data",
    "lp": "through monapi, line protocol /write",
}
# monapi keeps at least this share of the engine's own throughput (median / direct median)
GOALS = {"json": 0.75, "lp": 0.9}
MONAPI_LP_PATH = "/write?db=monapi&rp=monapi&precision=ns"
VM_MEASUREMENT_TAG = "measurement"  # added by monapi's VictoriaMetrics store, refused as input
MAX_BATCHES = 300  # per sender and run, besides the time bound
SLAB_NS = MAX_BATCHES * BULK_POINTS * 1_000_000  # the timestamps one run may use (1 ms apart)
INFLUX_DB = INFLUX_RP = "monapi"
LABELS = {"influxdb": "InfluxDB", "victoriametrics": "VictoriaMetrics"}
DEB_PACKAGES = {"influxdb": "influxdb", "victoriametrics": "victoria-metrics"}


def _tests_engines() -> Any:
    """tests/engines.py (the throwaway engines of the test suite); imported by name, so that
    type-checking bench/ does not take in the test suite."""
    if str(REPO) not in sys.path:
        sys.path.append(str(REPO))
    return importlib.import_module("tests.engines")


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
    return lp_body(templates, base_ns, batch, 1)


def without_tag(template: str, tag: str) -> str:
    """A line (template) without the tag ``tag``; it must be there once, and the series key
    must need no escaping (true of the bench lines)."""
    key, sep, rest = template.partition(" ")
    if "\\" in key or '"' in key or not sep:
        raise RuntimeError(f"unexpected series key in {template[:120]!r}")
    name, *tags = key.split(",")
    kept = [t for t in tags if t.partition("=")[0] != tag]
    if len(kept) != len(tags) - 1:
        raise RuntimeError(f"tag {tag!r} not once in {template[:120]!r}")
    return ",".join([name, *kept]) + sep + rest


def lp_templates_for_monapi(eng: Engine, templates: list[list[str]]) -> list[list[str]]:
    """The lines the lp senders send monapi: the direct ones (InfluxDB), or the direct ones
    without the ``measurement`` label that monapi's VictoriaMetrics store adds itself."""
    if eng.name == "influxdb":
        return templates
    return [[without_tag(t, VM_MEASUREMENT_TAG) for t in tpls] for tpls in templates]


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
    lp_templates: list[list[str]]  # per sender: the lines the lp run sends monapi
    base_ns: int
    profile_dir: Path | None

    def run(
        self, kind: str, slab: int, seconds: float, max_batches: int, tag: str
    ) -> dict[str, Any]:
        """One run of ``kind`` (direct, json or lp) into time slab ``slab``; counted
        afterwards."""
        base_ns = self.base_ns + slab * SLAB_NS
        eng = self.engine

        def sender(i: int, deadline: float, st: SenderStats) -> None:
            key = self.servers[i]["key"]
            if kind == "json":
                _bulk_sender(self.srv.port, key, base_ns, deadline, max_batches, self.pool, st)
                return
            templates = self.templates[i] if kind == "direct" else self.lp_templates[i]

            def body(batch: int) -> bytes:
                return direct_body(templates, base_ns, batch)

            if kind == "direct":
                path, headers = self.write_path, self.write_headers
                send_batches(eng.port, path, headers, body, deadline, max_batches, st)
                return
            headers = {**self.write_headers, "Authorization": f"Token {key}"}
            send_batches(
                self.srv.port,
                MONAPI_LP_PATH,
                headers,
                body,
                deadline,
                max_batches,
                st,
                lp_partly_accepted,
            )

        prof_dir = self.profile_dir if kind != "direct" and max_batches > 1 else None
        prof = Profiler(prof_dir, self.srv, f"{eng.name}-{tag}-{kind}", seconds)
        cpu = CpuMeter(self.srv, {"engine": [eng.pid] if eng.pid else []})
        stats, elapsed = run_senders(sender, len(self.servers), seconds)
        cpu_used = cpu.result()
        prof.wait()
        out = sender_summary(stats, elapsed)
        t_count = time.perf_counter()
        counts = self.count(base_ns, out["accepted_field_values"])
        stored = counts[-1]
        out.update(
            kind=kind,
            slab=slab,
            stored_field_values=stored,
            stored_matches=stored == out["accepted_field_values"],
            # every count made: more than one when the first differed (see count())
            count_attempts=counts,
            count_seconds=round(time.perf_counter() - t_count, 2),
            cpu=cpu_used,
            # CPU milliseconds per batch of 5,000 points: where the work is done
            cpu_ms_per_batch={
                who: round(1000 * cpu_used.get(key, 0.0) / max(1, out["requests"]), 1)
                for who, key in _PROCESSES
            },
        )
        cores = cpu_used["wall_s"] or 1.0
        line = (
            f"  {eng.name} {tag:<9} {kind:<6} {out['field_values_per_s']:>10,} field values/s "
            f"({out['requests']} batches, {out['seconds']:.1f} s; cores: engine "
            f"{cpu_used.get('engine_cpu_s', 0) / cores:.2f}, monapi "
            f"{cpu_used['server_cpu_s'] / cores:.2f}, senders "
            f"{cpu_used['python_client_cpu_s'] / cores:.2f}; other load "
            f"{cpu_used['other_share_of_machine']:.0%})"
        )
        print(line, flush=True)
        if out["errors"] or out["not_204"]:
            print(f"  !! {out['not_204']} replies not 204: {out['errors'][:3]}", flush=True)
        if len(counts) > 1 and out["stored_matches"]:
            print(
                f"  !! {eng.name} {tag} {kind}: the first count was {counts[0]:,} field values, "
                f"{out['accepted_field_values']:,} after {len(counts) - 1} recount(s) "
                f"({out['count_seconds']} s): all acknowledged values are stored, but "
                "were not all visible at once",
                flush=True,
            )
        if not out["stored_matches"]:
            mismatch_banner(f"{eng.name} {tag} {kind}", stored, out["accepted_field_values"])
        return out

    def count(self, base_ns: int, expected: int) -> list[int]:
        """The field values in the run's slab, counted again after 0.5, 1, 2 and 4 s while
        the count differs from ``expected``: once, in a quick run, VictoriaMetrics answered
        5,060 of 200,000 right after ``force_flush``; a recount tells values that became
        visible late from values that were lost. Every count is returned; the last one is
        what is checked."""
        counts = [self.engine.stored_field_values(base_ns, base_ns + SLAB_NS)]
        for delay in (0.5, 1.0, 2.0, 4.0):
            if counts[-1] == expected:
                break
            time.sleep(delay)
            counts.append(self.engine.stored_field_values(base_ns, base_ns + SLAB_NS))
        return counts


@dataclass(frozen=True)
class Options:
    workers: int  # gunicorn workers of monapi serve
    threads: int  # threads per worker
    senders: int  # concurrent senders, the same for every kind of run
    rounds: int  # rounds of (one run of each kind)
    seconds: float  # length of each run
    log_level: str  # MONAPI_LOG_LEVEL
    profile_dir: Path | None  # py-spy records of the json and lp runs, when set
    kinds: tuple[str, ...] = KINDS  # the kinds of run, in their order within a round


def compare_engine(name: str, workdir: Path, opts: Options) -> dict[str, Any]:
    """Start the engine and monapi on it; warm up; then ``rounds`` x (one run of each kind)."""
    rounds, senders, kinds = opts.rounds, opts.senders, opts.kinds
    if not kinds or any(k not in KINDS for k in kinds):
        raise ValueError(f"kinds of run: {kinds!r} (some of {', '.join(KINDS)})")
    slabs = len(kinds) * (1 + rounds)
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
            lp_tpls = lp_templates_for_monapi(eng, templates)
            bench = Bench(
                eng,
                srv,
                servers,
                pool,
                path,
                headers,
                templates,
                lp_tpls,
                base_ns,
                opts.profile_dir,
            )
            print(
                f"{LABELS[name]} at {url} (pid {eng.pid}), monapi at {srv.base}: "
                f"{senders} senders, {rounds} rounds x {opts.seconds:g} s of "
                f"{', '.join(kinds)}",
                flush=True,
            )
            if "lp" in kinds and eng.name != "influxdb":
                print(
                    f"  lp: the direct lines without the {VM_MEASUREMENT_TAG!r} tag (monapi "
                    "refuses it as input and adds it itself), e.g.\n"
                    f"    direct {templates[0][0][:110]}...\n"
                    f"    lp     {lp_tpls[0][0][:110]}...",
                    flush=True,
                )
            # One batch per sender of each kind: pools, caches, InfluxDB's database and shards.
            warmup = [bench.run(kind, k, 30, 1, "warm-up") for k, kind in enumerate(kinds)]
            runs = []
            for r in range(rounds):
                for k, kind in enumerate(kinds):
                    slab = len(kinds) * (1 + r) + k
                    tag = f"round-{r + 1}"
                    runs.append(bench.run(kind, slab, opts.seconds, MAX_BATCHES, tag))
            log_tail = (srv.data_dir / "server.log").read_text(errors="replace")[-3000:]
    lp_note = (
        "byte for byte the direct body"
        if name == "influxdb"
        else f"the direct lines without the {VM_MEASUREMENT_TAG!r} tag (monapi adds it)"
    )
    return summarize(name, url, kinds, runs, warmup, log_tail, lp_note)


def _hostname(srv: Server, server_id: int) -> str:
    status, body = api(srv.port, "GET", f"/api/v1/servers/{server_id}", srv.admin_token)
    if status != 200:
        raise RuntimeError(f"GET /api/v1/servers/{server_id}: {status} {body}")
    return str(body["hostname"])


def summarize(
    name: str,
    url: str,
    kinds: tuple[str, ...],
    runs: list[dict[str, Any]],
    warmup: list[dict[str, Any]],
    log: str,
    lp_note: str,
) -> dict[str, Any]:
    by_kind = {k: [r for r in runs if r["kind"] == k] for k in kinds}
    medians = {k: statistics.median(r["field_values_per_s"] for r in v) for k, v in by_kind.items()}
    d_med = medians.get("direct", 0.0)
    ratios = {k: round(medians[k] / d_med, 3) if d_med else None for k in kinds if k in GOALS}
    n_rounds = min(len(v) for v in by_kind.values())
    rounds = []
    for i in range(n_rounds):
        row: dict[str, Any] = {"round": i + 1}
        for k in kinds:
            row[f"{k}_field_values_per_s"] = by_kind[k][i]["field_values_per_s"]
        d = row.get("direct_field_values_per_s")
        for k in ratios:
            row[f"{k}_ratio"] = round(row[f"{k}_field_values_per_s"] / d, 3) if d else None
        rounds.append(row)
    every = [*warmup, *runs]
    return {
        "engine": name,
        "label": LABELS[name],
        "version": engine_version(name),
        "url": url,
        "senders": runs[0]["senders"] if runs else 0,
        "kinds": list(kinds),
        "lp_body": lp_note,
        "lp_path": MONAPI_LP_PATH,
        "rounds": rounds,
        **{f"{k}_median_field_values_per_s": round(v) for k, v in medians.items()},
        "ratios": ratios,
        "goals": {k: GOALS[k] for k in ratios},
        "goals_met": {k: r is not None and r >= GOALS[k] for k, r in ratios.items()},
        # medians over the rounds, per kind of run and process
        "cpu_ms_per_batch_median": {k: _median_cpu(v, "ms") for k, v in by_kind.items()},
        "cores_median": {k: _median_cpu(v, "cores") for k, v in by_kind.items()},
        "stored_matches": all(r["stored_matches"] for r in every),
        # runs whose first count differed from the acknowledged values (see Bench.count)
        "recounted": [
            f"{r['kind']} slab {r['slab']}: {r['count_attempts']}"
            for r in every
            if len(r["count_attempts"]) > 1
        ],
        "all_204": all(r["not_204"] == 0 and not r["errors"] for r in every),
        "runs": runs,
        "warmup": warmup,
        "monapi_log_tail": log,
    }


_PROCESSES = (
    ("engine", "engine_cpu_s"),
    ("monapi", "server_cpu_s"),
    ("senders", "python_client_cpu_s"),
)


def _median_cpu(runs: list[dict[str, Any]], unit: str) -> dict[str, float]:
    """Median over runs of CPU ms per batch (``ms``) or cores used (``cores``) per process, and
    their total."""
    if not runs:
        return {}
    out: dict[str, float] = {}
    for who, key in _PROCESSES:
        if unit == "ms":
            values = [r["cpu_ms_per_batch"][who] for r in runs]
        else:
            values = [r["cpu"].get(key, 0.0) / (r["cpu"]["wall_s"] or 1.0) for r in runs]
        out[who] = round(statistics.median(values), 2 if unit == "cores" else 1)
    if unit == "ms":
        totals = [sum(r["cpu_ms_per_batch"].values()) for r in runs]
    else:
        totals = [
            sum(r["cpu"].get(key, 0.0) for _, key in _PROCESSES) / (r["cpu"]["wall_s"] or 1.0)
            for r in runs
        ]
    out["total"] = round(statistics.median(totals), 2 if unit == "cores" else 1)
    return out


def run_engines(names: list[str], workdir: Path, opts: Options) -> dict[str, Any]:
    """The comparison for each engine; an engine that cannot be started or fails is reported
    (``error``) and the others still run."""
    out: dict[str, Any] = {
        "note": "direct, JSON through monapi and line protocol through monapi rotate in one run "
        "on the same engine process; the load generator (this Python process) shares the cores "
        "with engine and monapi",
        "kinds": list(opts.kinds),
        "goals": dict(GOALS),
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
        for k in e["kinds"]:
            rows.append(
                (
                    f"{label} {KIND_LABELS[k]} (median of {n})",
                    f"{e[f'{k}_median_field_values_per_s']:,} field values/s",
                    "",
                    "",
                )
            )
        for k, ratio in e["ratios"].items():
            rows.append(
                (
                    f"  {label} {k.upper()} / direct",
                    "n/a (no direct run)" if ratio is None else f"{ratio:.2f}",
                    f">= {GOALS[k]}",
                    _yes(e["goals_met"][k]),
                )
            )
        rows.append(
            (
                f"  {label} all 204 / stored = acknowledged",
                f"{e['all_204']} / {e['stored_matches']}",
                "True / True",
                _yes(e["all_204"] and e["stored_matches"]),
            )
        )
        if e.get("recounted"):
            rows.append(
                (
                    f"  {label} runs counted again (first count short)",
                    str(len(e["recounted"])),
                    "0",
                    "NO",
                )
            )
    return rows


def rounds_table(result: dict[str, Any]) -> str:
    """Per round: field values/s of each kind of run and the ratios to direct."""
    tables = []
    for e in _engine_results(result):
        if "error" in e:
            continue
        kinds, ratios = e["kinds"], list(e["ratios"])
        head = ["Engine", "Round", *(f"{k} fv/s" for k in kinds), *(f"{k}/direct" for k in ratios)]
        rows: list[tuple[str, ...]] = [tuple(head)]
        for rnd in e["rounds"]:
            rows.append(
                (
                    e["label"],
                    str(rnd["round"]),
                    *(f"{rnd[f'{k}_field_values_per_s']:,}" for k in kinds),
                    *(_ratio(rnd[f"{k}_ratio"]) for k in ratios),
                )
            )
        rows.append(
            (
                e["label"],
                "median",
                *(f"{e[f'{k}_median_field_values_per_s']:,}" for k in kinds),
                *(_ratio(e["ratios"][k]) for k in ratios),
            )
        )
        tables.append(format_table(rows))
    return "\n\n".join(tables)


def cpu_table(result: dict[str, Any]) -> str:
    """Per engine, kind of run and round: cores used and CPU ms per batch of each process, and
    the share of the machine other processes (not engine, monapi or senders) used meanwhile."""
    rows: list[tuple[str, ...]] = [
        (
            "Engine",
            "Kind",
            "Round",
            "Cores engine / monapi / senders",
            "CPU ms/batch engine / monapi / senders / total",
            "Other load",
        )
    ]
    for e in _engine_results(result):
        if "error" in e:
            continue
        for k in e["kinds"]:
            runs = [r for r in e["runs"] if r["kind"] == k]
            for i, r in enumerate(runs):
                ms = r["cpu_ms_per_batch"]
                rows.append(
                    (
                        e["label"],
                        k,
                        str(i + 1),
                        " / ".join(_cores(r, key) for _, key in _PROCESSES),
                        " / ".join(f"{ms[who]:.1f}" for who, _ in _PROCESSES)
                        + f" / {sum(ms.values()):.1f}",
                        f"{r['cpu']['other_share_of_machine']:.0%}",
                    )
                )
            med_c, med_ms = e["cores_median"][k], e["cpu_ms_per_batch_median"][k]
            rows.append(
                (
                    e["label"],
                    k,
                    "median",
                    " / ".join(f"{med_c[who]:.2f}" for who, _ in _PROCESSES),
                    " / ".join(f"{med_ms[who]:.1f}" for who, _ in _PROCESSES)
                    + f" / {med_ms['total']:.1f}",
                    "",
                )
            )
    return format_table(rows)


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


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
