"""monapi-agent footprint (bench/run.py's last phase; a benchmark, not a test).

A real ``monapi-agent run`` (the installed console script, psutil on this machine) registers
with a monapi on loopback, takes the server's interval (10 s by default here) and runs for a
bounded time. Measured from the outside through /proc, so the agent is not disturbed:

* resident memory: VmRSS read every second (the maximum) and VmHWM (the kernel's peak) at
  the end;
* CPU: user + system ticks of the agent process over the steady part of the run (after the
  first two intervals: start-up imports and the first configuration fetch are reported
  separately), as a share of one core;
* delivery: samples the agent logged against values stored (cpu.usage_percent, count).

The goals are the issue's: under 30 MB resident and under 1 % of one core at a 10 s interval.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

GOALS = {"agent_rss_mb": 30.0, "agent_cpu_percent": 1.0}
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_SAMPLED = re.compile(r"sampled (\d+) points at (\d+)")


def _agent_command() -> list[str]:
    script = Path(sys.executable).with_name("monapi-agent")
    return [str(script)] if script.exists() else [sys.executable, "-m", "monapi_agent"]


def _cpu_seconds(pid: int) -> float:
    """On-CPU time of every thread of the process: /proc/PID/task/*/schedstat (nanoseconds),
    finer than the 10 ms ticks of /proc/PID/stat, which a 10 s interval agent barely moves."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            total += int((task / "schedstat").read_text().split()[0])
    except (FileNotFoundError, ProcessLookupError):
        pass
    if total:
        return total / 1e9
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def run_footprint(
    base: str,
    admin_token: str,
    api: Any,
    port: int,
    work: Path,
    seconds: float,
    interval: int,
) -> dict[str, Any]:
    """Register and run one agent for ``seconds``; ``api(port, method, path, token, body)``."""
    work.mkdir(parents=True, exist_ok=True)
    status, token = api(port, "POST", "/api/v1/enrollment-tokens", admin_token, {})
    if status != 201:
        raise RuntimeError(f"enrollment token: HTTP {status}: {token}")
    conf = work / "agent.toml"
    conf.write_text(f'spool_path = "{work / "spool.db"}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONAPI_AGENT_")}
    cmd = [*_agent_command(), "--config", str(conf)]
    reg = subprocess.run(
        [
            *cmd,
            "register",
            "--url",
            base,
            "--enroll-token",
            token["token"],
            "--hostname",
            "footprint-agent",
            "--interval",
            str(interval),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    if reg.returncode != 0:
        raise RuntimeError(f"monapi-agent register failed: {reg.stderr}")
    server_id = int(re.search(r"as server (\d+)", reg.stdout).group(1))  # type: ignore[union-attr]
    log_path = work / "agent.log"
    started = time.time()
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [*cmd, "--log-level", "debug", "run"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    rss_max = 0
    rss_series: list[int] = []
    try:
        warm = 2 * interval + 1.0
        deadline = time.monotonic() + warm
        while time.monotonic() < deadline and proc.poll() is None:
            rss_max = max(rss_max, _status_kb(proc.pid, "VmRSS"))
            time.sleep(1)
        cpu_startup = _cpu_seconds(proc.pid)
        t0 = time.monotonic()
        deadline = t0 + seconds
        while time.monotonic() < deadline and proc.poll() is None:
            rss = _status_kb(proc.pid, "VmRSS")
            rss_series.append(rss)
            rss_max = max(rss_max, rss)
            time.sleep(1)
        if proc.poll() is not None:
            raise RuntimeError(f"monapi-agent exited early:\n{log_path.read_text()[-3000:]}")
        cpu_steady = _cpu_seconds(proc.pid) - cpu_startup
        wall = time.monotonic() - t0
        hwm = _status_kb(proc.pid, "VmHWM")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    log_text = log_path.read_text()
    samples = _SAMPLED.findall(log_text)
    time.sleep(0.5)
    status, body = api(
        port,
        "GET",
        f"/api/v1/servers/{server_id}/metrics?fields=cpu.usage_percent&agg=count"
        f"&start={int(started) - 5}&end={int(time.time()) + 5}&step=1h",
        admin_token,
    )
    stored = sum(int(v) for s in body["series"] for _, v in s["points"]) if status == 200 else -1
    cpu_pct = 100.0 * cpu_steady / wall
    return {
        "interval_s": interval,
        "seconds": round(wall, 1),
        "samples": len(samples),
        "points_per_sample": int(samples[-1][0]) if samples else 0,
        "stored_cpu_values": stored,
        "stored_matches": stored == len(samples),
        "rss_max_mb": round(rss_max / 1024, 1),
        "rss_mean_mb": round(sum(rss_series) / len(rss_series) / 1024, 1) if rss_series else 0,
        "rss_hwm_mb": round(hwm / 1024, 1),
        "cpu_startup_s": round(cpu_startup, 3),
        "cpu_steady_s": round(cpu_steady, 3),
        "cpu_percent_of_one_core": round(cpu_pct, 3),
        "cpu_ms_per_sample": round(1000 * cpu_steady / max(1, wall / interval), 1),
        "exit_code": code,
        "errors": [line for line in log_text.splitlines() if " ERROR " in line][:5],
        "meets_rss": hwm / 1024 < GOALS["agent_rss_mb"],
        "meets_cpu": cpu_pct < GOALS["agent_cpu_percent"],
    }


def table_rows(f: dict[str, Any]) -> list[tuple[str, ...]]:
    """Rows for run.py's summary table."""
    yes = lambda ok: "yes" if ok else "NO"  # noqa: E731
    return [
        (
            f"monapi-agent resident memory (peak, {f['interval_s']} s interval)",
            f"{f['rss_hwm_mb']} MB (mean {f['rss_mean_mb']})",
            f"< {GOALS['agent_rss_mb']:g} MB",
            yes(f["meets_rss"]),
        ),
        (
            f"monapi-agent CPU over {f['seconds']:g} s steady",
            f"{f['cpu_percent_of_one_core']}% of one core ({f['cpu_ms_per_sample']} ms/sample)",
            f"< {GOALS['agent_cpu_percent']:g}%",
            yes(f["meets_cpu"]),
        ),
        (
            "  agent samples / stored / exit code",
            f"{f['samples']} / {f['stored_cpu_values']} / {f['exit_code']}",
            "equal / 0",
            yes(f["stored_matches"] and f["exit_code"] == 0),
        ),
    ]


if __name__ == "__main__":  # pragma: no cover - run through bench/run.py
    print(json.dumps({"goals": GOALS}))
