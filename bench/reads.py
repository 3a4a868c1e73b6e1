#!/usr/bin/env python3
"""Read-query times on the embedded store (bench/run.py's "reads" phase; a benchmark, not a test).

``monapi serve`` on loopback, with a fresh data directory, gets ``n`` servers (1,000 by default)
that pushed agent-like data through the API (cpu, system, mem, swap, two disk mounts, one disk
device and one network interface: 8 points and 36 field values per push). The first of them has
24 hours of it at a 10 s interval (8,640 pushes); the others the last two minutes at 30 s.
Then, one request at a time over a keep-alive connection with the admin token, after a warm-up,
each query is timed ``rounds`` times (time to the last byte of the answer):

* ``GET /api/v1/servers/{id}/metrics?fields=cpu.usage_percent&start=..&end=..&step=5m``: 24 h of
  one field (8,640 stored points) in 5-minute means, 288 buckets; goal under 20 ms.
* ``GET /api/v1/overview?per_page=1000``: status and key latest values of 1,000 servers; goal
  under 100 ms.

Each answer is checked against the data that was pushed (the 288 means, the overview values).

Standalone: ``.venv/bin/python bench/reads.py [--rounds 20] [--servers 1000]``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

Api = Callable[..., tuple[int, Any]]
GOALS_MS = {"range": 20.0, "overview": 100.0}
STEP_S = 300
DAY_S = 86400
HISTORY_INTERVAL_S = 10
RECENT_INTERVAL_S = 30
RECENT_PUSHES = 4
BATCH_POINTS = 5_000


def _cpu(i: int, k: int) -> float:
    """cpu.usage_percent of server ``i`` at push ``k`` (also recomputed to check answers)."""
    return round((i * 7 + k * 13) % 1000 / 10, 1)


def _agent_points(i: int, k: int, ts: int) -> list[dict[str, Any]]:
    """What monapi-agent pushes at one time: one point per measurement, mount, device, NIC."""
    cpu = _cpu(i, k)
    return [
        {
            "measurement": "cpu",
            "timestamp": ts,
            "fields": {
                "usage_percent": cpu,
                "user_percent": round(cpu * 0.7, 2),
                "system_percent": round(cpu * 0.2, 2),
                "iowait_percent": round(cpu * 0.05, 2),
                "steal_percent": 0.0,
                "idle_percent": round(100 - cpu, 2),
            },
        },
        {
            "measurement": "system",
            "timestamp": ts,
            "fields": {
                "load1": round(0.5 + (k % 10) / 10, 2),
                "load5": round(0.6 + (k % 7) / 10, 2),
                "load15": 0.7,
                "uptime": 100_000 + k * HISTORY_INTERVAL_S,
                "processes": 200 + k % 17,
            },
        },
        {
            "measurement": "mem",
            "timestamp": ts,
            "fields": {
                "total": 8_000_000_000,
                "used": 3_000_000_000 + (i % 50) * 10_000_000,
                "available": 5_000_000_000 - (i % 50) * 10_000_000,
                "used_percent": 40.0 + i % 50,
            },
        },
        {
            "measurement": "swap",
            "timestamp": ts,
            "fields": {"total": 2_000_000_000, "used": 1_000_000, "used_percent": 0.05},
        },
        *(
            {
                "measurement": "disk",
                "tags": {"mount": mount},
                "timestamp": ts,
                "fields": {
                    "total": 100_000_000_000,
                    "used": int(pct * 1_000_000_000),
                    "free": int((100 - pct) * 1_000_000_000),
                    "used_percent": pct,
                },
            }
            for mount, pct in (("/", 50.0 + k % 7), ("/var", 20.0 + i % 30))
        ),
        {
            "measurement": "diskio",
            "tags": {"device": "sda"},
            "timestamp": ts,
            "fields": {
                "read_bytes_per_sec": 1000.0 * (k % 5),
                "write_bytes_per_sec": 4000.0 + k % 9,
                "reads_per_sec": 1.5,
                "writes_per_sec": 12.0,
            },
        },
        {
            "measurement": "net",
            "tags": {"interface": "eth0"},
            "timestamp": ts,
            "fields": {
                "bytes_recv_per_sec": 20_000.0 + k % 100,
                "bytes_sent_per_sec": 15_000.0,
                "packets_recv_per_sec": 120.0,
                "packets_sent_per_sec": 100.0,
                "err_in_per_sec": 0.0,
                "err_out_per_sec": 0.0,
                "drop_in_per_sec": 0.0,
                "drop_out_per_sec": 0.0,
            },
        },
    ]


def _push(port: int, api: Api, key: str, points: list[dict[str, Any]], what: str) -> None:
    for j in range(0, len(points), BATCH_POINTS):
        status, reply = api(
            port, "POST", "/api/v1/data", key, {"points": points[j : j + BATCH_POINTS]}
        )
        if status != 204:
            raise RuntimeError(f"pushing {what}: {status} {str(reply)[:300]}")


def seed(port: int, token: str, api: Api, n: int, end: int) -> tuple[list[int], float, float]:
    """Register ``n`` servers with recent agent data (the last two minutes); the first gets 24 h
    of history instead (pushes every 10 s in [end - 24 h, end)). Returns the ids and the two
    seeding times (s)."""
    t0 = time.perf_counter()
    now = int(time.time())

    def one(i: int) -> tuple[int, str]:
        status, body = api(
            port,
            "POST",
            "/api/v1/servers",
            token,
            {
                "hostname": f"reads-{i:04d}",
                "ip_address": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}",
                "labels": {"role": ("web", "db", "cache")[i % 3]},
            },
        )
        if status != 201:
            raise RuntimeError(f"registering server {i}: {status} {body}")
        if i:
            pts: list[dict[str, Any]] = []
            for k in range(RECENT_PUSHES):
                pts += _agent_points(i, k, now - (RECENT_PUSHES - 1 - k) * RECENT_INTERVAL_S)
            _push(port, api, body["api_key"], pts, f"server {i}")
        return int(body["id"]), str(body["api_key"])

    with ThreadPoolExecutor(4) as pool:
        registered = list(pool.map(one, range(n)))
    fleet_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    pts = []
    for k in range(DAY_S // HISTORY_INTERVAL_S):
        pts += _agent_points(0, k, end - DAY_S + k * HISTORY_INTERVAL_S)
    _push(port, api, registered[0][1], pts, "24 h history")
    history_s = time.perf_counter() - t0
    return [sid for sid, _ in registered], fleet_s, history_s


def expected_range(end: int) -> list[list[Any]]:
    """The 5-minute means of cpu.usage_percent of the 24 h server, as the API should answer."""
    buckets: dict[int, list[float]] = {}
    for k in range(DAY_S // HISTORY_INTERVAL_S):
        ts = end - DAY_S + k * HISTORY_INTERVAL_S
        buckets.setdefault(ts // STEP_S * STEP_S, []).append(_cpu(0, k))
    return [[b, sum(v) / len(v)] for b, v in sorted(buckets.items())]


def check_range(body: dict[str, Any], end: int) -> str | None:
    """None when the range answer is the expected one, else what is wrong."""
    series = body.get("series") or []
    if len(series) != 1:
        return f"{len(series)} series, expected 1"
    got = series[0]["points"]
    want = expected_range(end)
    if len(got) != len(want):
        return f"{len(got)} buckets, expected {len(want)}"
    for (gb, gv), (wb, wv) in zip(got, want, strict=True):
        if gb != wb or not math.isclose(gv, wv, rel_tol=1e-9, abs_tol=1e-9):
            return f"bucket {gb}: {gv}, expected {wb}: {wv}"
    return None


def check_overview(body: dict[str, Any], n: int) -> str | None:
    """None when the overview lists ``n`` servers with the values they pushed last."""
    items = body.get("items") or []
    if len(items) != n or body.get("total") != n:
        return f"{len(items)} items of {body.get('total')}, expected {n} of {n}"
    last = RECENT_PUSHES - 1
    for item in items:
        i = int(item["hostname"].rsplit("-", 1)[1])
        v = item["values"]
        k = DAY_S // HISTORY_INTERVAL_S - 1 if i == 0 else last
        want = {
            "cpu.usage_percent": _cpu(i, k),
            "mem.used_percent": 40.0 + i % 50,
            "swap.used_percent": 0.05,
            "disk.used_percent": max(50.0 + k % 7, 20.0 + i % 30),
            "system.load1": round(0.5 + (k % 10) / 10, 2),
            "system.uptime": 100_000 + k * HISTORY_INTERVAL_S,
        }
        if v != want:
            return f"{item['hostname']}: values {v}, expected {want}"
    return None


def _timed(conn: http.client.HTTPConnection, path: str, token: str) -> tuple[float, int, bytes]:
    t = time.perf_counter()
    conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
    resp = conn.getresponse()
    body = resp.read()
    return (time.perf_counter() - t) * 1000, resp.status, body


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(p * len(s)) - 1))]


def measure(
    port: int, token: str, queries: dict[str, str], rounds: int, warmup: int = 2
) -> dict[str, dict[str, Any]]:
    """Each query ``warmup`` + ``rounds`` times, one request at a time; the queries take turns
    round by round, so that both see the same machine."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    times: dict[str, list[float]] = {name: [] for name in queries}
    last: dict[str, bytes] = {}
    try:
        for r in range(warmup + rounds):
            for name, path in queries.items():
                ms, status, body = _timed(conn, path, token)
                if status != 200:
                    raise RuntimeError(f"{name}: GET {path} answered {status}: {body[:300]!r}")
                if r >= warmup:
                    times[name].append(ms)
                last[name] = body
    finally:
        conn.close()
    return {
        name: {
            "path": queries[name],
            "median_ms": round(statistics.median(t), 2),
            "p90_ms": round(_pct(t, 0.9), 2),
            "max_ms": round(max(t), 2),
            "bytes": len(last[name]),
            "body": last[name],
        }
        for name, t in times.items()
    }


def run_reads(port: int, token: str, api: Api, n: int, rounds: int) -> dict[str, Any]:
    """Seed, then time and check the two queries."""
    end = int(time.time()) // STEP_S * STEP_S  # history in [end - 24 h, end): 288 buckets
    ids, fleet_s, history_s = seed(port, token, api, n, end)
    queries = {
        "range": f"/api/v1/servers/{ids[0]}/metrics?fields=cpu.usage_percent"
        f"&start={end - DAY_S}&end={end - 1}&step=5m",
        "overview": f"/api/v1/overview?per_page={n}",
    }
    measured = measure(port, token, queries, rounds)
    problems = {
        "range": check_range(json.loads(measured["range"].pop("body")), end),
        "overview": check_overview(json.loads(measured["overview"].pop("body")), n),
    }
    out: dict[str, Any] = {
        "servers": n,
        "rounds": rounds,
        "history_points": DAY_S // HISTORY_INTERVAL_S * 8,
        "seed_fleet_seconds": round(fleet_s, 1),
        "seed_history_seconds": round(history_s, 1),
        "queries": measured,
    }
    for name, q in measured.items():
        q["goal_ms"] = GOALS_MS[name]
        q["goal_met"] = q["p90_ms"] < GOALS_MS[name]
        q["answer_ok"] = problems[name] is None
        if problems[name]:
            q["answer_problem"] = problems[name]
    return out


LABELS = {
    "range": "24 h of 1 field at 10 s, step 5m (288 means)",
    "overview": "overview of {n} servers (per_page={n})",
}


def table_rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """Rows for bench/run.py's summary table (Benchmark, Result, Goal, Met)."""
    rows: list[tuple[str, ...]] = []
    for name, q in result["queries"].items():
        rows.append(
            (
                "Read: " + LABELS[name].format(n=result["servers"]),
                f"p50 {q['median_ms']:.1f} / p90 {q['p90_ms']:.1f} / max {q['max_ms']:.1f} ms",
                f"p90 < {q['goal_ms']:g} ms",
                "yes" if q["goal_met"] else "NO",
            )
        )
        rows.append(
            (
                f"  {name} answer checked / size",
                f"{q['answer_ok']} / {q['bytes'] / 1024:.0f} KiB",
                "True",
                "yes" if q["answer_ok"] else "NO",
            )
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    import shutil
    import sys
    import tempfile
    from pathlib import Path

    import run

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20, help="timed requests per query (20)")
    ap.add_argument("--servers", type=int, default=1000, help="servers in the overview (1000)")
    ap.add_argument("--workers", type=int, default=2, help="gunicorn workers (2)")
    ap.add_argument("--threads", type=int, default=8, help="threads per worker (8)")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="monapi-reads-"))
    try:
        with run.running_server(tmp / "data", args.workers, args.threads, "WARNING") as srv:
            result = run_reads(srv.port, srv.admin_token, run.api, args.servers, args.rounds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=2))
    print(run.format_table([("Benchmark", "Result", "Goal", "Met"), *table_rows(result)]))
    ok = all(q["goal_met"] and q["answer_ok"] for q in result["queries"].values())
    sys.stdout.flush()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
