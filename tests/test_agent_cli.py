"""monapi-agent for real: the console script against `monapi serve` (gunicorn) on loopback.

Register, run a few intervals and read the data back through the query API; stop the server in
the middle of a run and start it again, and check that every sampled point arrived exactly once
(per-second counts of three measurements against the timestamps the agent logged).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from . import engines
from .test_serve import call, free_port, start_instance

pytestmark = pytest.mark.slow

AGENT = [sys.executable, "-m", "monapi_agent"]
SAMPLED = re.compile(r"sampled (\d+) points at (\d+)")


class Monapi:
    """One `monapi serve` on the embedded default, restartable on the same port and data."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.port = free_port()
        self.proc, self.base, self.log = start_instance(data, {}, self.port)
        self.admin = next(w for w in self.log.read_text().split() if w.startswith("mka_"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)

    def start(self) -> None:
        self.proc, _, _ = start_instance(self.data, {}, self.port)

    def enroll_token(self) -> str:
        status, body, _ = call(self.base, "POST", "/api/v1/enrollment-tokens", self.admin, {})
        assert status == 201, body
        return str(body["token"])


@pytest.fixture(scope="module")
def monapi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monapi]:
    server = Monapi(tmp_path_factory.mktemp("monapi"))
    try:
        yield server
    finally:
        server.stop()


def agent(
    conf: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run one monapi-agent command to completion."""
    return subprocess.run(
        [*AGENT, "--config", str(conf), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**_clean_env(), **(env or {})},
        check=False,
    )


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MONAPI_AGENT_")}


def register(monapi: Monapi, tmp: Path, hostname: str, *extra: str) -> tuple[Path, int]:
    conf = tmp / "agent.toml"
    spool = tmp / "spool.db"
    conf.write_text(f'spool_path = "{spool}"\n')
    done = agent(
        conf,
        "register",
        "--url",
        monapi.base,
        "--enroll-token",
        monapi.enroll_token(),
        "--hostname",
        hostname,
        *extra,
    )
    assert done.returncode == 0, done.stderr
    server_id = int(re.search(r"as server (\d+)", done.stdout).group(1))  # type: ignore[union-attr]
    return conf, server_id


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


class RunningAgent:
    """`monapi-agent run` as a child process, its log kept in a file."""

    def __init__(self, conf: Path, tmp: Path, *flags: str) -> None:
        self.log_path = tmp / "agent.log"
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(
                [*AGENT, "--config", str(conf), "--log-level", "debug", *flags, "run"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_clean_env(),
            )

    def log(self) -> str:
        return self.log_path.read_text()

    def samples(self) -> list[tuple[int, int]]:
        """(points, timestamp ns) of every sample the agent took."""
        return [(int(n), int(ts)) for n, ts in SAMPLED.findall(self.log())]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


def test_register_writes_the_key_owner_only_and_refuses_to_overwrite_it(
    monapi: Monapi, tmp_path: Path
) -> None:
    conf, server_id = register(monapi, tmp_path, "agent-reg", "--label", "role=web")
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    text = conf.read_text()
    assert f'url = "{monapi.base}"' in text
    assert re.search(r'key = "mks_[^"]+"', text)
    assert f"server_id = {server_id}" in text
    assert f'spool_path = "{tmp_path / "spool.db"}"' in text  # the operator's setting is kept
    status, body, _ = call(monapi.base, "GET", f"/api/v1/servers/{server_id}", monapi.admin)
    assert status == 200
    assert body["hostname"] == "agent-reg"
    assert body["labels"] == {"role": "web"}
    assert body["ip_address"] == "127.0.0.1"

    again = agent(conf, "register", "--url", monapi.base, "--enroll-token", "mke_x_y")
    assert again.returncode == 1
    assert "already holds a key" in again.stderr
    assert "--force" in again.stderr


def test_register_explains_a_refused_token_and_an_unreachable_url(
    monapi: Monapi, tmp_path: Path
) -> None:
    conf = tmp_path / "agent.toml"
    bad = agent(conf, "register", "--url", monapi.base, "--enroll-token", "mke_nope_nope")
    assert bad.returncode == 1
    assert "HTTP 401" in bad.stderr
    assert "enrollment token is wrong" in bad.stderr
    closed = f"http://127.0.0.1:{free_port()}"
    away = agent(conf, "register", "--url", closed, "--enroll-token", monapi.enroll_token())
    assert away.returncode == 1
    assert "cannot register" in away.stderr
    assert "unreachable" in away.stderr
    assert not conf.exists()
    taken = agent(conf, "register", "--url", "ftp://x", "--enroll-token", "mke_a_b")
    assert taken.returncode == 2
    assert "not an http:// or https:// URL" in taken.stderr


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('url = "http://127.0.0.1:1"\nkey = \n', "is not valid TOML"),
        ('url = "http://127.0.0.1:1"\ncolour = "blue"\n', "unknown setting 'colour'"),
        ('url = "http://127.0.0.1:1"\nkey = "abc"\n', "expected a server key (mks_...)"),
        ('url = "http://127.0.0.1:1"\ntimeout = "soon"\n', "is not a duration"),
        ('url = "http://127.0.0.1:1"\n', "no server key"),
    ],
)
def test_a_bad_config_file_is_a_clear_message_and_exit_2(
    tmp_path: Path, content: str, expected: str
) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_text(content)
    done = agent(conf, "run", timeout=30)
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr
    assert str(conf) in done.stderr or "no server key" in expected
    assert "Traceback" not in done.stderr


def test_a_missing_config_file_named_explicitly_is_an_error(tmp_path: Path) -> None:
    done = agent(tmp_path / "nope.toml", "status", timeout=30)
    assert done.returncode == 2
    assert "nope.toml does not exist" in done.stderr


def test_run_pushes_what_the_server_asks_for_and_status_reports_it(
    monapi: Monapi, tmp_path: Path
) -> None:
    conf, server_id = register(monapi, tmp_path, "agent-run", "--interval", "1")
    running = RunningAgent(conf, tmp_path)
    try:
        wait_for(lambda: len(running.samples()) >= 3, 30, "three samples")
        wait_for(
            lambda: (
                '"last_push"' in agent(conf, "status", "--json", "--offline").stdout
                and json.loads(agent(conf, "status", "--json", "--offline").stdout)["last_push"]
            ),
            20,
            "a successful push",
        )
    finally:
        code = running.stop()
    assert code == 0, running.log()
    assert "Traceback" not in running.log()
    status, latest, _ = call(
        monapi.base, "GET", f"/api/v1/servers/{server_id}/latest", monapi.admin
    )
    assert status == 200
    names = {(v["measurement"], v["field"]) for v in latest["values"]}
    for expected in [
        ("cpu", "usage_percent"),
        ("system", "load1"),
        ("system", "uptime"),
        ("system", "processes"),
        ("mem", "used"),
        ("mem", "used_percent"),
        ("disk", "used_percent"),
        ("net", "bytes_recv_per_sec"),
    ]:
        assert expected in names, (expected, sorted(names))
    status, metrics, _ = call(
        monapi.base,
        "GET",
        f"/api/v1/servers/{server_id}/metrics?fields=cpu.usage_percent&agg=count&start=-10m",
        monapi.admin,
    )
    assert status == 200
    assert sum(v for _, v in metrics["series"][0]["points"]) == len(running.samples())

    report = json.loads(agent(conf, "status", "--json").stdout)
    assert report["url"] == monapi.base
    assert report["server_id"] == server_id
    assert report["check"]["ok"] is True
    assert report["spool"]["samples"] == 0
    assert report["last_error"] is None
    human = agent(conf, "status")
    assert human.returncode == 0
    assert "reachable, key accepted" in human.stdout
    assert "last push:" in human.stdout


def _counts(monapi: Monapi, server_id: int, field: str, t0: int, t1: int) -> Counter[int]:
    status, body, _ = call(
        monapi.base,
        "GET",
        f"/api/v1/servers/{server_id}/metrics?fields={field}&agg=count&step=1s&start={t0}&end={t1}",
        monapi.admin,
    )
    assert status == 200, body
    out: Counter[int] = Counter()
    for series in body["series"]:
        for sec, count in series["points"]:
            out[int(sec)] += int(count)
    return out


def test_server_stopped_mid_run_every_sampled_point_arrives_exactly_once(
    monapi: Monapi, tmp_path: Path
) -> None:
    conf, server_id = register(monapi, tmp_path, "agent-gap", "--interval", "1")
    t0 = int(time.time()) - 2
    running = RunningAgent(conf, tmp_path, "--set", "retry_min=0.2s", "--set", "retry_max=1s")
    try:
        wait_for(lambda: len(running.samples()) >= 3, 30, "three samples")
        monapi.stop()
        before = len(running.samples())
        wait_for(lambda: len(running.samples()) >= before + 4, 30, "samples while away")
        offline = json.loads(agent(conf, "status", "--json", "--offline").stdout)
        assert offline["spool"]["samples"] >= 3
        assert offline["last_error"] is not None
        away = agent(conf, "status")
        assert away.returncode == 1
        assert "FAILED" in away.stdout
        monapi.start()
        wait_for(
            lambda: (
                json.loads(agent(conf, "status", "--json", "--offline").stdout)["spool"]["samples"]
                == 0
            ),
            60,
            "the spool to drain",
        )
        after = len(running.samples())
        wait_for(lambda: len(running.samples()) >= after + 2, 30, "samples after the restart")
    finally:
        code = running.stop()
        monapi.start() if monapi.proc.poll() is not None else None
    assert code == 0, running.log()
    log = running.log()
    assert "cannot deliver" in log
    assert "delivering again" in log
    samples = running.samples()
    assert len(samples) >= 9
    t1 = int(time.time()) + 2
    expected = Counter(ts // 1_000_000_000 for _, ts in samples)
    # One point per sample in each of these measurements: the per-second counts must match the
    # agent's own record exactly (a loss or a duplicate changes a count).
    for field in ("cpu.usage_percent", "system.load1", "mem.used"):
        assert _counts(monapi, server_id, field, t0, t1) == expected, field
    # and the last sample (pushed at SIGTERM) is among them
    assert samples[-1][1] // 1_000_000_000 in expected


def test_sigterm_spools_what_it_holds_when_the_server_is_away(
    monapi: Monapi, tmp_path: Path
) -> None:
    conf = tmp_path / "agent.toml"
    spool = tmp_path / "spool.db"
    conf.write_text(
        f'url = "http://127.0.0.1:{free_port()}"\nkey = "mks_1_nothing"\n'
        f'spool_path = "{spool}"\ndefault_interval = 1\nretry_max = "1s"\n'
    )
    running = RunningAgent(conf, tmp_path)
    try:
        wait_for(lambda: len(running.samples()) >= 2, 30, "two samples")
    finally:
        code = running.stop()
    assert code == 0
    report = json.loads(agent(conf, "status", "--json").stdout)
    assert report["spool"]["samples"] == len(running.samples())
    assert report["check"]["ok"] is False
    assert "unreachable" in report["check"]["message"]


def test_once_print_collects_a_full_sample_and_sends_nothing(tmp_path: Path) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_text(f'spool_path = "{tmp_path / "spool.db"}"\n')
    done = agent(conf, "once", "--print", "--wait", "0.3")
    assert done.returncode == 0, done.stderr
    points = json.loads(done.stdout)["points"]
    measurements = {p["measurement"] for p in points}
    assert {"cpu", "system", "mem", "disk"} <= measurements
    assert all(isinstance(p["timestamp"], int) for p in points)
    assert not (tmp_path / "spool.db").exists()


def test_the_agent_never_imports_the_server() -> None:
    code = (
        "import sys, monapi_agent.cli, monapi_agent.runner;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in"
        " ('monapi', 'flask', 'sqlalchemy', 'pydantic', 'werkzeug'));"
        "print(','.join(bad))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""


def test_install_service_writes_the_unit_for_this_installation(tmp_path: Path) -> None:
    conf = tmp_path / "agent.toml"
    done = agent(conf, "install-service", "--unit-dir", str(tmp_path / "units"), "--no-enable")
    assert done.returncode == 0, done.stderr
    unit = (tmp_path / "units" / "monapi-agent.service").read_text()
    exec_line = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert exec_line.endswith(f"--config {conf.resolve()} run")
    command = exec_line.removeprefix("ExecStart=").split(" --config")[0]
    assert shutil.which(command.split()[0])
    assert "@" not in unit
    assert "WantedBy=multi-user.target" in unit


def test_the_shipped_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        engines.missing("systemd-analyze", "install the systemd package")
    done = agent(
        tmp_path / "agent.toml", "install-service", "--unit-dir", str(tmp_path), "--no-enable"
    )
    assert done.returncode == 0, done.stderr
    verify = subprocess.run(
        [str(analyze), "verify", str(tmp_path / "monapi-agent.service")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # verify prints a line for every unknown key or unusable command, and exits 1 for the latter
    assert verify.returncode == 0, verify.stderr
    assert "monapi-agent.service" not in verify.stderr, verify.stderr
