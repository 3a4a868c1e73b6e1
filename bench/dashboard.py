"""Dashboard render times with a big fleet (bench/run.py's phase; a benchmark, not a test).

``monapi serve`` on loopback gets ``n`` servers (1,000 by default), each with an hour of
agent-like data (cpu, mem, two disk mounts, load: one point of each every 30 s). A signed-in
client then fetches every page several times, one request at a time, and the median and the
slowest time of each are reported (the time to the last byte of the answer, over keep-alive
HTTP on 127.0.0.1) with the size of the page.

The goal is the issue's: no page takes more than one second to render for 1,000 servers.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

GOAL_MS = 1000.0
USER, PASSWORD = "bench", "bench-password-1"
Api = Callable[..., tuple[int, Any]]


def _create_user(data_dir: Any) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONAPI_")}
    env["MONAPI_DATA_DIR"] = str(data_dir)
    subprocess.run(
        [sys.executable, "-m", "monapi.cli", "admin", "create-user", USER, "--password-stdin"],
        input=PASSWORD + "\n",
        text=True,
        env=env,
        check=True,
        capture_output=True,
    )


def _points(now: int, i: int) -> list[dict[str, Any]]:
    pts: list[dict[str, Any]] = []
    for k in range(120):
        ts = now - 3600 + k * 30
        pts += [
            {"measurement": "cpu", "timestamp": ts, "fields": {"usage_percent": (i + k) % 100}},
            {"measurement": "mem", "timestamp": ts, "fields": {"used_percent": 40 + i % 50}},
            {
                "measurement": "disk",
                "timestamp": ts,
                "tags": {"mount": "/"},
                "fields": {"used_percent": 50 + k % 7},
            },
            {
                "measurement": "disk",
                "timestamp": ts,
                "tags": {"mount": "/var"},
                "fields": {"used_percent": 20 + i % 30},
            },
            {"timestamp": ts, "fields": {"load1": 0.5 + (k % 10) / 10}},
        ]
    return pts


def seed(port: int, token: str, api: Api, n: int) -> list[int]:
    """Register ``n`` servers and push an hour of data for each; returns their ids."""
    now = int(time.time())

    def one(i: int) -> int:
        status, body = api(
            port,
            "POST",
            "/api/v1/servers",
            token,
            {
                "hostname": f"dash-{i:04d}",
                "ip_address": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}",
                "labels": {"role": ("web", "db", "cache")[i % 3], "rack": str(i % 20)},
            },
        )
        if status != 201:
            raise RuntimeError(f"registering server {i}: {status} {body}")
        sid = int(body["id"])
        status, reply = api(
            port, "POST", "/api/v1/data", body["api_key"], {"points": _points(now, i)}
        )
        if status != 204:
            raise RuntimeError(f"pushing for server {i}: {status} {reply}")
        return sid

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, range(n)))


class Browser:
    """A signed-in HTTP client with the session cookie (keep-alive, one request at a time)."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.cookie = ""

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        self.conn.request("GET", path, headers={"Cookie": self.cookie, **(headers or {})})
        resp = self.conn.getresponse()
        body = resp.read()
        self._keep(resp)
        return resp.status, body

    def _keep(self, resp: http.client.HTTPResponse) -> None:
        for value in resp.headers.get_all("Set-Cookie") or []:
            self.cookie = value.split(";", 1)[0]

    def log_in(self) -> None:
        status, body = self.get("/login")
        m = re.search(rb'name="csrf_token" value="([^"]+)"', body)
        if status != 200 or not m:
            raise RuntimeError(f"no log-in form: {status}")
        form = f"csrf_token={m.group(1).decode()}&username={USER}&password={PASSWORD}&next=/"
        self.conn.request(
            "POST",
            "/login",
            body=form,
            headers={"Cookie": self.cookie, "Content-Type": "application/x-www-form-urlencoded"},
        )
        resp = self.conn.getresponse()
        resp.read()
        self._keep(resp)
        if resp.status != 302:
            raise RuntimeError(f"log-in failed: {resp.status}")


def run_dashboard(
    base: str, token: str, api: Api, port: int, data_dir: Any, n: int, rounds: int
) -> dict[str, Any]:
    """Seed ``n`` servers, then time every page ``rounds`` times."""
    _create_user(data_dir)
    t0 = time.perf_counter()
    ids = seed(port, token, api, n)
    seeded_s = time.perf_counter() - t0
    b = Browser(port)
    b.log_in()
    now = int(time.time())
    first = min(ids)
    pages = {
        "overview, 100 per page": ("/", {}),
        "overview, 1,000 per page": ("/?per_page=1000", {}),
        "overview, 1,000 per page, sorted by CPU": ("/?per_page=1000&sort=cpu&order=desc", {}),
        "overview refresh (htmx fragment), 1,000": ("/?per_page=1000", {"HX-Request": "true"}),
        "overview, label filter role=web": ("/?per_page=1000&label=role%3Dweb", {}),
        "server page": (f"/servers/{first}", {}),
        "server chart data, 1 h": (f"/servers/{first}/series?start={now - 3600}&end={now}", {}),
        "server chart data, 30 d": (
            f"/servers/{first}/series?start={now - 30 * 86400}&end={now}",
            {},
        ),
        "fields": ("/fields", {}),
        "enrollment": ("/enrollment", {}),
    }
    out: dict[str, Any] = {}
    for name, (path, headers) in pages.items():
        status, body = b.get(path, headers)  # warm-up (caches, first imports)
        if status != 200:
            raise RuntimeError(f"{name}: GET {path} answered {status}: {body[:300]!r}")
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            status, body = b.get(path, headers)
            times.append((time.perf_counter() - t) * 1000)
        rows = body.count(b"<tr data-server-id=")
        out[name] = {
            "path": path,
            "median_ms": round(statistics.median(times), 1),
            "max_ms": round(max(times), 1),
            "bytes": len(body),
            **({"server_rows": rows} if rows else {}),
            **({"series": len(json.loads(body)["series"])} if "series?" in path else {}),
        }
    worst = max(v["max_ms"] for v in out.values())
    return {
        "servers": n,
        "rounds": rounds,
        "seed_seconds": round(seeded_s, 1),
        "pages": out,
        "slowest_ms": worst,
        "goal_ms": GOAL_MS,
        "goal_met": worst <= GOAL_MS,
    }


def rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """Table rows for the summary."""
    out = [("page", "median ms", "max ms", "size")]
    for name, v in result["pages"].items():
        out.append(
            (name, f"{v['median_ms']:.0f}", f"{v['max_ms']:.0f}", f"{v['bytes'] / 1024:.0f} KiB")
        )
    return out
