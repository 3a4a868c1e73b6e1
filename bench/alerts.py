#!/usr/bin/env python3
"""What one round of alert evaluation costs (bench/run.py's "alerts" phase; a benchmark, not a
test).

In process, on a fresh data directory and the embedded stores: ``n`` servers (1,000 by default,
half of them labelled role=web) with the last 10 minutes of cpu, mem, system and two disk mounts
at a 30 s interval, written straight into the time-series store; 10 rules: four threshold rules
for every server (mean of cpu over 5 m, max of mem over 5 m, last of disk per mount, mean of
load1 over 1 m), the same four for role=web only, a silent rule for every server, and one with
a tag filter. Then :meth:`Evaluator.evaluate` is timed:

* ``steady``: nothing changes (no rule holds), ``rounds`` times: the cost every interval pays;
* ``fire``: cpu jumps to 99 on every server (new points written first): every server's two cpu
  rules go to firing in one round, with their history rows and a webhook notification each;
* ``resolve``: cpu back to 5: every one of them resolves.

Each round's transitions are checked (``steady`` 0, ``fire`` and ``resolve`` one per firing
alert). Standalone: ``.venv/bin/python bench/alerts.py [--servers 1000] [--rounds 10]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

INTERVAL_S = 30
HISTORY_S = 600


def _points(sid: int, t_end: float, cpu: float, span_s: int = HISTORY_S) -> list[Any]:
    from monapi.tsdb import Point

    out = []
    for ts in range(int(t_end) - span_s + INTERVAL_S, int(t_end) + 1, INTERVAL_S):
        ns = ts * 1_000_000_000
        out += [
            Point("cpu", (), ns, {"usage_percent": cpu, "user_percent": cpu / 2}),
            Point("mem", (), ns, {"used_percent": 40.0 + sid % 20}),
            Point("system", (), ns, {"load1": 0.5, "uptime": 3600}),
            Point("disk", (("mount", "/"),), ns, {"used_percent": 50.0}),
            Point("disk", (("mount", "/var"),), ns, {"used_percent": 30.0}),
        ]
    return out


def run_alerts(servers: int, rounds: int) -> dict[str, Any]:
    """Time evaluation rounds; the result for bench/run.py."""
    from monapi import create_app
    from monapi.alerting.runner import evaluator_for
    from monapi.app import shutdown
    from monapi.bootstrap import initialize
    from monapi.settings import load_settings
    from monapi.tsdb import WriteBatch

    with tempfile.TemporaryDirectory(prefix="monapi-bench-alerts-") as tmp:
        overrides = {
            "data_dir": Path(tmp),
            "log_level": "WARNING",
            "rate_limit_register": "0",
            "alert_webhook_url": "http://127.0.0.1:9/hook",  # queued, never sent here
        }
        token = initialize(load_settings(overrides))
        app = create_app(overrides)
        try:
            client = app.test_client()
            auth = {"Authorization": f"Bearer {token}"}
            ids = []
            for i in range(servers):
                body = {
                    "hostname": f"srv-{i:05d}",
                    "ip_address": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}",
                    "interval": INTERVAL_S,
                    "labels": {"role": "web" if i % 2 else "db"},
                }
                resp = client.post("/api/v1/servers", json=body, headers=auth)
                assert resp.status_code == 201, resp.get_json()
                ids.append(resp.get_json()["id"])
            store = app.extensions["monapi.tsdb"]
            now = time.time()

            def write(cpu: float, span_s: int = HISTORY_S) -> None:
                batches = [
                    WriteBatch(sid, f"s{sid}", _points(sid, now, cpu, span_s)) for sid in ids
                ]
                for k in range(0, len(batches), 100):
                    assert not store.write(batches[k : k + 100])

            write(20.0)
            rules = [
                ("cpu", "usage_percent", "mean", "5m", 90),
                ("mem", "used_percent", "max", "5m", 95),
                ("disk", "used_percent", "last", "5m", 90),
                ("system", "load1", "mean", "1m", 50),
            ]
            for labels in ({}, {"role": "web"}):
                for m, f, agg, window, threshold in rules:
                    body = {
                        "name": f"{m}.{f} {labels}",
                        "measurement": m,
                        "field": f,
                        "aggregation": agg,
                        "window": window,
                        "condition": ">",
                        "threshold": threshold,
                        "labels": labels,
                    }
                    resp = client.post("/api/v1/alerts", json=body, headers=auth)
                    assert resp.status_code == 201, resp.get_json()
            extra = [
                {"name": "silent", "kind": "silent", "intervals": 3},
                {
                    "name": "root disk",
                    "measurement": "disk",
                    "field": "used_percent",
                    "aggregation": "max",
                    "tags": {"mount": "/"},
                    "condition": ">",
                    "threshold": 95,
                },
            ]
            for body in extra:
                resp = client.post("/api/v1/alerts", json=body, headers=auth)
                assert resp.status_code == 201, resp.get_json()
            # Every server pushed just now: the silent rule holds for none.
            app.extensions["monapi.cache"].seen.add_all({sid: now for sid in ids})
            evaluator = evaluator_for(app, clock=lambda: now)
            evaluator.evaluate(now)  # warm-up
            steady = []
            for _ in range(rounds):
                t = time.perf_counter()
                report = evaluator.evaluate(now)
                steady.append((time.perf_counter() - t) * 1000)
                assert report.transitions == 0 and not report.errors, report
            firing = servers + servers // 2  # the cpu rule for all, and for role=web
            write(99.0, span_s=300)
            t = time.perf_counter()
            fired = evaluator.evaluate(now)
            fire_ms = (time.perf_counter() - t) * 1000
            write(5.0, span_s=300)
            t = time.perf_counter()
            resolved = evaluator.evaluate(now)
            resolve_ms = (time.perf_counter() - t) * 1000
            checked = (
                not fired.errors
                and fired.transitions == 2 * firing  # ok -> pending -> firing
                and fired.queued == firing
                and resolved.transitions == firing
                and resolved.queued == firing
            )
            return {
                "servers": servers,
                "rules": len(rules) * 2 + len(extra),
                "rounds": rounds,
                "steady_median_ms": round(statistics.median(steady), 1),
                "steady_max_ms": round(max(steady), 1),
                "fire_ms": round(fire_ms, 1),
                "resolve_ms": round(resolve_ms, 1),
                "alerts_fired": firing,
                "checked": checked,
                "fired": {"transitions": fired.transitions, "queued": fired.queued},
                "resolved": {"transitions": resolved.transitions, "queued": resolved.queued},
            }
        finally:
            shutdown(app)


def table_rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """Rows for bench/run.py's summary table (Benchmark, Result, Goal, Met)."""
    n, r = result["servers"], result["rules"]
    return [
        (
            f"Alerts: one round, {n} servers x {r} rules, nothing changes",
            f"p50 {result['steady_median_ms']:.0f} / max {result['steady_max_ms']:.0f} ms",
            "-",
            "-",
        ),
        (
            f"  {result['alerts_fired']} alerts fire / resolve in one round",
            f"{result['fire_ms']:.0f} / {result['resolve_ms']:.0f} ms",
            "-",
            "-",
        ),
        (
            "  transitions and notifications checked",
            str(result["checked"]),
            "True",
            "yes" if result["checked"] else "NO",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--servers", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args(argv)
    result = run_alerts(args.servers, args.rounds)
    print(json.dumps(result, indent=2))
    return 0 if result["checked"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
