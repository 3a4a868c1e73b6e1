"""Faults with real processes: the time-series engine stopped or frozen under load, a gunicorn
worker killed under load, and agents pushing through an engine restart.

Nothing is faked: ``monapi serve`` (gunicorn, two workers), ``influxd`` and ``victoria-metrics``
started for this module, and real ``monapi-agent`` processes. Load comes from a few threads,
each pushing one distinct point per request (a server of its own, a timestamp and a value per
request) over a keep-alive connection to loopback. What the tests hold monapi to:

* acknowledged means stored: every point whose push got 204 is in the store afterwards, read
  straight from the store (InfluxDB's /query, VictoriaMetrics' /api/v1/export, the SQLite file);
* an engine that is away or too slow gives 503 with Retry-After in the one error shape, never a
  2xx; monapi recovers by itself when the engine is back (the time it takes is measured);
* a killed worker costs its clients their connection, never an acknowledged point;
* agents that push through an engine restart end with every sample stored exactly once.
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from monapi_agent.spool import read_status

from . import engines
from .test_serve import call, start_instance

pytestmark = pytest.mark.slow

ENGINES = ["influxdb", "victoriametrics"]
DATABASE = "monapi"  # InfluxDB database monapi writes to
MS = 1_000_000  # ns


def wait_for(
    what: str, check: Callable[[], bool], timeout: float, diag: Callable[[], str] = str
) -> float:
    """Poll ``check`` until it holds; the seconds that took. Fails naming ``what`` (and what
    ``diag`` tells) after ``timeout`` seconds."""
    began = time.monotonic()
    while not check():
        if time.monotonic() - began > timeout:
            pytest.fail(f"{what}: not within {timeout:g}s\n{diag()}", pytrace=False)
        time.sleep(0.05)
    return time.monotonic() - began


def every_server_pushed(load: Load, diag: Callable[[], str]) -> None:
    """Wait until the load has had 5 pushes of every server stored (204)."""
    wait_for(
        "every server pushed", lambda: load.each_server_has(lambda a: a.status == 204, 5), 20, diag
    )


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError as exc:
        return f"({path}: {exc})"


# The engine -------------------------------------------------------------------------------------
class Engine:
    """An InfluxDB or VictoriaMetrics of this module's own: stopped, started again on the same
    port and data directory, frozen and thawed while monapi runs.

    VictoriaMetrics runs with ``-dedup.minScrapeInterval=1ms``, as its documentation here asks
    (docs/tsdb-victoriametrics.md): a sample re-sent after a lost answer is then stored once."""

    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind = kind
        self.workdir = workdir
        self.port = engines.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._stack = ExitStack()
        self.starts = 0

    def start(self) -> None:
        log = self.workdir / "engine.log"
        if log.exists():  # each start truncates it: keep what the previous run said
            log.rename(self.workdir / f"engine.{self.starts}.log")
        self._stack = ExitStack()
        if self.kind == "influxdb":
            running = engines.influxdb_process(self.workdir, self.port)
        else:
            running = engines.victoriametrics_process(self.workdir, self.port, dedup=True)
        url, self.proc = self._stack.enter_context(running)
        assert url == self.url
        self.starts += 1

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 15 s); returns once the process is gone."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            proc.send_signal(signal.SIGCONT)  # a frozen process would not act on SIGTERM
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        finally:
            self._stack.close()

    def pause(self) -> None:
        assert self.proc is not None
        engines.pause(self.proc)

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def ensure_running(self) -> None:
        """Thawed and started: what a test leaves behind, whatever happened in it."""
        self.resume()
        if self.proc is not None and self.proc.poll() is not None:
            self.stop()
        if self.proc is None:
            self.start()

    def log_tail(self) -> str:
        return f"--- {self.kind} log:\n{tail(self.workdir / 'engine.log', 1500)}"

    def stored(self, server_id: int) -> list[tuple[int, float]]:
        """Every stored ``system.load1`` of a server as (timestamp in ns, value), each copy the
        engine keeps, read from the engine itself."""
        if self.kind == "influxdb":
            q = (
                f'SELECT "load1" FROM "{DATABASE}"."monapi"."system"'
                f" WHERE \"server_id\" = '{server_id}'"
            )
            params = {"db": DATABASE, "q": q, "epoch": "ns", "chunked": "true"}
            out: list[tuple[int, float]] = []
            for line in _post(self.url + "/query", params).splitlines():
                if not line.strip():
                    continue
                doc = json.loads(line)
                for res in doc.get("results", []):
                    assert "error" not in res, res
                    for series in res.get("series", []):
                        out.extend((int(t), float(v)) for t, v in series["values"])
            return out
        engines.vm_flush(self.url)
        match = f'{{__name__="system_load1",server_id="{server_id}"}}'
        # An explicit end: without one, the export leaves out samples of the last second.
        form = {"match[]": match, "start": "0", "end": str(int(time.time()) + 86400)}
        out = []
        for line in _post(self.url + "/api/v1/export", form).splitlines():
            if line.strip():
                doc = json.loads(line)
                out.extend(
                    (int(t) * MS, float(v))
                    for t, v in zip(doc["timestamps"], doc["values"], strict=True)
                )
        return out

    @property
    def resolution_ns(self) -> int:
        """The engine keeps timestamps to this many nanoseconds."""
        return 1 if self.kind == "influxdb" else MS


def _post(url: str, form: dict[str, str]) -> str:
    req = urllib.request.Request(url, data=urllib.parse.urlencode(form).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return str(resp.read().decode())


def sqlite_stored(tsdb_path: Path, server_id: int) -> list[tuple[int, float]]:
    """Every ``system.load1`` of a server in the embedded store's file, read with SQLite."""
    db = sqlite3.connect(f"file:{tsdb_path}?mode=ro", uri=True)
    try:
        db.execute("PRAGMA busy_timeout=10000")
        rows = db.execute(
            "SELECT p.ts, json_extract(p.fields, '$.load1') FROM points p "
            "JOIN series s ON s.id = p.series_id "
            "WHERE s.server_id = ? AND s.measurement = 'system'",
            (server_id,),
        ).fetchall()
    finally:
        db.close()
    return [(int(ts), float(v)) for ts, v in rows if v is not None]


# monapi under gunicorn ------------------------------------------------------------------------
@dataclass
class Monapi:
    proc: subprocess.Popen[bytes]
    base: str
    log: Path
    token: str

    def workers(self) -> set[int]:
        """The pids of the gunicorn master's worker processes."""
        return {c.pid for c in psutil.Process(self.proc.pid).children()}

    def clients_of(self, worker: int) -> int:
        """How many client connections a worker holds open."""
        port = urllib.parse.urlsplit(self.base).port
        return sum(
            1
            for c in psutil.Process(worker).net_connections(kind="tcp")
            if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port
        )

    def log_tail(self) -> str:
        return f"--- monapi log:\n{tail(self.log)}"

    def register(self, hostname: str) -> tuple[int, str]:
        status, body, _ = call(
            self.base,
            "POST",
            "/api/v1/servers",
            self.token,
            {"hostname": hostname, "ip_address": "192.0.2.20"},
        )
        assert status == 201, body
        return int(body["id"]), str(body["api_key"])

    def readyz(self) -> tuple[int, Any, dict[str, str]]:
        return call(self.base, "GET", "/readyz")


@contextmanager
def serving(data: Path, env: dict[str, str]) -> Iterator[Monapi]:
    """``monapi serve`` (two workers) on ``data``; stopped (SIGTERM, then SIGKILL) after."""
    data.mkdir(parents=True, exist_ok=True)
    # Rate limits off: the load pushes far faster than an agent.
    proc, base, log = start_instance(data, {"MONAPI_RATE_LIMIT_SERVER": "0", **env})
    try:
        token = next(w for w in log.read_text().split() if w.startswith("mka_"))
        yield Monapi(proc, base, log, token)
    finally:
        engines.stop_group(proc)


@dataclass
class Stack:
    engine: Engine
    monapi: Monapi

    def diag(self) -> str:
        return f"{self.monapi.log_tail()}\n{self.engine.log_tail()}"


@contextmanager
def engine_stack(kind: str, workdir: Path) -> Iterator[Stack]:
    engine = Engine(kind, workdir / "engine")
    try:
        engine.start()
        if kind == "influxdb":
            env = {"MONAPI_INFLUXDB_URL": engine.url, "MONAPI_INFLUXDB_DATABASE": DATABASE}
        else:
            env = {"MONAPI_VICTORIAMETRICS_URL": engine.url}
        # A short engine timeout: a frozen engine costs each request a second, not ten.
        env.update(MONAPI_TSDB=kind, MONAPI_TSDB_TIMEOUT="1s")
        with serving(workdir / "monapi", env) as monapi:
            yield Stack(engine, monapi)
    finally:
        engine.stop()


@pytest.fixture(scope="module")
def influxdb_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """monapi on an InfluxDB of this module's own."""
    with engine_stack("influxdb", tmp_path_factory.mktemp("faults-influxdb")) as stack:
        yield stack


@pytest.fixture(scope="module")
def victoriametrics_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """monapi on a VictoriaMetrics of this module's own."""
    with engine_stack("victoriametrics", tmp_path_factory.mktemp("faults-vm")) as stack:
        yield stack


@pytest.fixture
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    """The module's stack for the engine the test is parametrized with, its engine running
    before and after the test."""
    running: Stack = request.getfixturevalue(f"{request.param}_stack")
    running.engine.ensure_running()
    yield running
    running.engine.ensure_running()


# Load -------------------------------------------------------------------------------------------
@dataclass
class Answer:
    """One push and what came back (``status`` None: no answer, the connection failed)."""

    server_id: int
    seq: int
    ts_ms: int
    sent: float  # time.monotonic()
    done: float
    status: int | None
    retry_after: str | None = None
    body: bytes = b""
    error: str = ""

    def __str__(self) -> str:
        what = self.status if self.status is not None else self.error
        return f"server {self.server_id} seq {self.seq} ts {self.ts_ms}: {what} {self.body[:200]!r}"


class Load:
    """Threads pushing distinct points to monapi, one server key each, over keep-alive
    connections, every ``pace`` seconds until stopped (at most ``max_each`` pushes a thread).

    Push ``seq`` of a server is one point at ``t0_ms + seq`` ms with ``load1 = seq``: every
    acknowledged point can be looked for in the store by its timestamp and value. Every other
    server sends it as line protocol to ``/write`` (the InfluxDB clients' route), the others as
    JSON to ``/api/v1/data``: both paths to the store are under the fault."""

    def __init__(
        self,
        base: str,
        servers: list[tuple[int, str]],
        *,
        pace: float = 0.02,
        max_each: int = 3000,
        timeout: float = 15.0,
    ) -> None:
        parts = urllib.parse.urlsplit(base)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.pace, self.max_each, self.timeout = pace, max_each, timeout
        self.t0_ms = int(time.time() * 1000) - 1_800_000  # half an hour ago
        self.answers: dict[int, list[Answer]] = {sid: [] for sid, _ in servers}
        self.crashed: list[str] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(
                target=self._push, args=(sid, key, i % 2 == 1), name=f"load-{sid}", daemon=True
            )
            for i, (sid, key) in enumerate(servers)
        ]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)
        if exc_type is None:  # else the test's own failure says more
            assert not any(t.is_alive() for t in self._threads), "a load thread did not finish"
            assert not self.crashed, self.crashed

    def _push(self, sid: int, key: str, line_protocol: bool) -> None:
        if line_protocol:
            path, kind = "/write?precision=ms", "text/plain; charset=utf-8"
        else:
            path, kind = "/api/v1/data", "application/json"
        headers = {"Authorization": f"Bearer {key}", "Content-Type": kind}
        conn: http.client.HTTPConnection | None = None
        try:
            for seq in range(self.max_each):
                if self._stop.is_set():
                    break
                ts = self.t0_ms + seq
                if line_protocol:
                    body = f"system load1={float(seq)!r} {ts}\n".encode()
                else:
                    body = json.dumps(
                        {"points": [{"timestamp": ts, "fields": {"load1": float(seq)}}]}
                    ).encode()
                sent = time.monotonic()
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection(
                            self.host, self.port, timeout=self.timeout
                        )
                    conn.request("POST", path, body, headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    answer = Answer(
                        sid,
                        seq,
                        ts,
                        sent,
                        time.monotonic(),
                        resp.status,
                        resp.getheader("Retry-After"),
                        data,
                    )
                    if resp.will_close:
                        conn.close()
                        conn = None
                except (OSError, http.client.HTTPException) as exc:
                    if conn is not None:
                        conn.close()
                        conn = None
                    answer = Answer(
                        sid,
                        seq,
                        ts,
                        sent,
                        time.monotonic(),
                        None,
                        error=f"{type(exc).__name__}: {exc}",
                    )
                self.answers[sid].append(answer)
                self._stop.wait(self.pace)
        except BaseException as exc:  # a bug in the test: say so instead of a silent thread
            self.crashed.append(f"server {sid}: {exc!r}")
            raise
        finally:
            if conn is not None:
                conn.close()

    def all(self) -> list[Answer]:
        return [a for sid in self.answers for a in list(self.answers[sid])]

    def each_server_has(self, pred: Callable[[Answer], bool], n: int = 1) -> bool:
        return all(sum(1 for a in list(al) if pred(a)) >= n for al in self.answers.values())

    def summary(self) -> str:
        counts = Counter(a.status if a.status is not None else "no answer" for a in self.all())
        return f"answers by status: {dict(counts)}"


def first_after(answers: list[Answer], since: float, status: int) -> Answer | None:
    return next((a for a in answers if a.sent >= since and a.status == status), None)


def problems_with_503(a: Answer) -> str | None:
    """Why a 503 is not the documented one (Retry-After, the one JSON error shape), or None."""
    if a.retry_after is None or not a.retry_after.isdigit() or int(a.retry_after) < 1:
        return f"Retry-After {a.retry_after!r}"
    try:
        body = json.loads(a.body)
    except ValueError:
        return "a body that is not JSON"
    if not (
        isinstance(body, dict)
        and isinstance(body.get("error"), str)
        and body["error"]
        and isinstance(body.get("code"), str)
        and body.get("status") == 503
        and isinstance(body.get("request_id"), str)
        and body["request_id"]
    ):
        return "not the error shape (error, code, status, request_id)"
    return None


def check_answers(load: Load, allowed: set[int | None], diag: str) -> None:
    """Every answer has an allowed status; every 503 is the documented one."""
    answers = load.all()
    odd = [a for a in answers if a.status not in allowed]
    assert not odd, (
        f"{len(odd)} answers outside {allowed}; {load.summary()}; first: "
        + "; ".join(map(str, odd[:5]))
        + f"\n{diag}"
    )
    bad = [(a, why) for a in answers if a.status == 503 and (why := problems_with_503(a))]
    assert not bad, (
        f"{len(bad)} of the 503s lack what a 503 must have; first: "
        + "; ".join(f"{a} ({why})" for a, why in bad[:5])
        + f"\n{diag}"
    )


def check_acknowledged_stored(
    load: Load, stored: Callable[[int], list[tuple[int, float]]], diag: str
) -> int:
    """Every point whose push got a 2xx is in the store with its value; returns their count."""
    acknowledged = 0
    missing: list[Answer] = []
    wrong: list[str] = []
    for sid, answers in load.answers.items():
        have: dict[int, set[float]] = {}
        for ts_ns, value in stored(sid):
            have.setdefault(ts_ns // MS, set()).add(value)
        for a in answers:
            if a.status is not None and 200 <= a.status < 300:
                acknowledged += 1
                values = have.get(a.ts_ms)
                if values is None:
                    missing.append(a)
                elif values != {float(a.seq)}:
                    wrong.append(f"{a}: stored {sorted(values)}")
    assert not missing and not wrong, (
        f"acknowledged but not stored: {len(missing)} of {acknowledged} (first: "
        + "; ".join(map(str, missing[:5]))
        + f"); stored with another value: {wrong[:5]}; {load.summary()}\n{diag}"
    )
    return acknowledged


def wait_for_recovery(load: Load, since: float, what: str, stack: Stack, monapi: Monapi) -> float:
    """Wait until every server got a 204 sent after ``since`` and /readyz is 200; the seconds
    from ``since`` to the last server's first 204."""
    wait_for(
        f"every server got a 204 after {what}",
        lambda: load.each_server_has(lambda a: a.sent >= since and a.status == 204),
        20,
        lambda: load.summary() + "\n" + stack.diag(),
    )
    recovered = max(
        a.done - since
        for al in load.answers.values()
        if (a := first_after(list(al), since, 204)) is not None
    )
    wait_for("/readyz is 200 again", lambda: monapi.readyz()[0] == 200, 10, stack.diag)
    return recovered


def readyz_says_tsdb_down(monapi: Monapi) -> bool:
    status, body, headers = monapi.readyz()
    if status != 503:
        return False
    assert headers.get("Retry-After", "").isdigit(), headers
    assert body["code"] == "not_ready" and body["status"] == 503, body
    assert [d["location"] for d in body["details"]] == ["tsdb"], body
    return True


# 1. The engine stopped during load ------------------------------------------------------------
@pytest.mark.parametrize("stack", ENGINES, indirect=True)
def test_an_engine_stopped_under_load_gets_503s_and_monapi_recovers_without_a_restart(
    stack: Stack,
) -> None:
    """The engine is terminated in the middle of the load and started again on the same port
    and data: every push is answered 204 or 503 with Retry-After in the error shape, /readyz is
    503 while the engine is away and 200 after, pushes succeed again within seconds with the
    same monapi processes, and every acknowledged point is in the engine."""
    monapi, engine = stack.monapi, stack.engine
    workers_before = monapi.workers()
    servers = [monapi.register(f"stop-{engine.kind}-{i}") for i in range(4)]
    with Load(monapi.base, servers) as load:
        every_server_pushed(load, stack.diag)
        time.sleep(1.0)  # load while the engine answers
        engine.stop()
        stopped = time.monotonic()
        wait_for(
            "/readyz says the tsdb is down", lambda: readyz_says_tsdb_down(monapi), 10, stack.diag
        )
        wait_for(
            "every server got a 503",
            lambda: load.each_server_has(lambda a: a.sent >= stopped and a.status == 503),
            10,
            lambda: load.summary() + "\n" + stack.diag(),
        )
        time.sleep(max(0.0, stopped + 3.0 - time.monotonic()))  # the engine stays away ~3 s
        engine.start()
        up = time.monotonic()
        recovered = wait_for_recovery(load, up, "the engine came back", stack, monapi)
        time.sleep(1.0)  # and the load goes on
    diag = stack.diag()
    check_answers(load, {204, 503}, diag)
    # Once a server's pushes succeed again, they keep succeeding: recovered, not flapping.
    for sid, answers in load.answers.items():
        first = first_after(answers, up, 204)
        assert first is not None
        later = [a for a in answers if a.sent > first.done and a.status != 204]
        assert not later, f"server {sid}: after recovering: {[str(a) for a in later[:5]]}\n{diag}"
    failed = sum(1 for a in load.all() if a.status == 503)
    acknowledged = check_acknowledged_stored(load, engine.stored, diag)
    assert failed > 0 and acknowledged > 0
    assert monapi.workers() == workers_before, "monapi's workers were replaced"
    print(
        f"\n{engine.kind} stopped: {acknowledged} pushes acknowledged (all stored), {failed} got"
        f" 503; recovered {recovered:.2f}s after the engine answered again"
    )
    assert recovered < 10


# 2. The engine frozen during load ---------------------------------------------------------------
@pytest.mark.parametrize("stack", ENGINES, indirect=True)
def test_a_frozen_engine_times_out_into_503s_and_monapi_recovers_when_it_thaws(
    stack: Stack,
) -> None:
    """SIGSTOP of the engine under load (MONAPI_TSDB_TIMEOUT=1s), SIGCONT three seconds later:
    answers are 204 or 503 with Retry-After, never a 2xx for a point that was not stored; the
    pushes succeed again by themselves. (A 503 after a timeout may still have been stored: the
    engine had the request. That is allowed; a 204 without the point is not.)"""
    monapi, engine = stack.monapi, stack.engine
    workers_before = monapi.workers()
    servers = [monapi.register(f"freeze-{engine.kind}-{i}") for i in range(4)]
    with Load(monapi.base, servers) as load:
        every_server_pushed(load, stack.diag)
        time.sleep(1.0)
        engine.pause()
        frozen = time.monotonic()
        try:
            wait_for(
                "/readyz says the tsdb is down",
                lambda: readyz_says_tsdb_down(monapi),
                10,
                stack.diag,
            )
            wait_for(
                "every server got a 503",
                lambda: load.each_server_has(lambda a: a.sent >= frozen and a.status == 503),
                10,
                lambda: load.summary() + "\n" + stack.diag(),
            )
            time.sleep(max(0.0, frozen + 3.0 - time.monotonic()))
        finally:
            engine.resume()
        thawed = time.monotonic()
        recovered = wait_for_recovery(load, thawed, "the engine thawed", stack, monapi)
        time.sleep(1.0)
    diag = stack.diag()
    check_answers(load, {204, 503}, diag)
    # At most two timeouts (the group write in flight when it came, then its own) and a margin:
    # a 503 follows monapi's timeout, not the engine's pace.
    slow = [str(a) for a in load.all() if a.status == 503 and a.done - a.sent > 4]
    assert not slow, f"503s after more than 4 s with a 1 s timeout: {slow[:3]}\n{diag}"
    acknowledged = check_acknowledged_stored(load, engine.stored, diag)
    failed = sum(1 for a in load.all() if a.status == 503)
    assert monapi.workers() == workers_before, "monapi's workers were replaced"
    print(
        f"\n{engine.kind} frozen: {acknowledged} pushes acknowledged (all stored), {failed} got"
        f" 503; recovered {recovered:.2f}s after SIGCONT"
    )
    assert recovered < 10


# 3. A worker killed during load -----------------------------------------------------------------
@pytest.fixture
def sqlite_monapi(tmp_path: Path) -> Iterator[Monapi]:
    """monapi on the embedded stores, alone for the test."""
    with serving(tmp_path / "monapi", {}) as monapi:
        yield monapi


@pytest.mark.parametrize("store", ["sqlite", "influxdb"])
def test_a_worker_killed_under_load_loses_no_acknowledged_point(
    store: str, request: pytest.FixtureRequest
) -> None:
    """SIGKILL of one gunicorn worker while threads push: gunicorn starts a new worker, the
    clients see answers (204) or a broken connection, never another status, and every point
    acknowledged with 204, before or after the kill, is in the store."""
    stored: Callable[[int], list[tuple[int, float]]]
    if store == "sqlite":
        monapi: Monapi = request.getfixturevalue("sqlite_monapi")
        stored = functools.partial(sqlite_stored, monapi.log.parent / "tsdb.sqlite3")
        diag: Callable[[], str] = monapi.log_tail
    else:
        stack: Stack = request.getfixturevalue("influxdb_stack")
        stack.engine.ensure_running()
        monapi, stored, diag = stack.monapi, stack.engine.stored, stack.diag
    workers = monapi.workers()
    assert len(workers) == 2, workers
    servers = [monapi.register(f"kill-{store}-{i}") for i in range(6)]
    with Load(monapi.base, servers, pace=0.01) as load:
        every_server_pushed(load, diag)
        time.sleep(0.5)
        # The worker holding most of the clients' keep-alive connections (with requests in
        # flight on them): its clients lose their connection.
        victim = max(workers, key=monapi.clients_of)
        held = monapi.clients_of(victim)
        assert held > 0, f"no worker holds a client connection: {workers}"
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        took = wait_for(
            "gunicorn replaced the killed worker",
            lambda: len(now := monapi.workers()) == 2 and victim not in now,
            30,
            diag,
        )
        wait_for(
            "every server got a 204 after the kill",
            lambda: load.each_server_has(lambda a: a.sent >= killed and a.status == 204),
            30,
            lambda: load.summary() + "\n" + diag(),
        )
        time.sleep(1.0)
    text = diag()
    check_answers(load, {204, None}, text)
    broken = [a for a in load.all() if a.status is None]
    assert broken, f"no client lost its connection to the killed worker; {load.summary()}"
    acknowledged = check_acknowledged_stored(load, stored, text)
    print(
        f"\n{store}: worker {victim} killed with {held} client connections; replaced in"
        f" {took:.2f}s; {acknowledged} pushes acknowledged (all stored), {len(broken)} pushes"
        " without an answer"
    )


# 4. End to end: agents through an engine restart ----------------------------------------------
SAMPLED = re.compile(r"sampled \d+ points at (\d+)")


class Agent:
    """One ``monapi-agent`` process with its own config file, spool and debug log."""

    def __init__(self, workdir: Path, hostname: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.dir = workdir
        self.hostname = hostname
        self.config = workdir / "agent.toml"
        self.spool = workdir / "spool.db"
        self.log = workdir / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.server_id = 0
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MONAPI_")}
        self.env.update(XDG_CONFIG_HOME=str(workdir), XDG_STATE_HOME=str(workdir))

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "monapi_agent", "--config", str(self.config), *args]

    def register(self, base: str, enroll_token: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.command(
                "register",
                "--url",
                base,
                "--enroll-token",
                enroll_token,
                "--hostname",
                self.hostname,
                "--interval",
                "1",
                "--ip",
                "127.0.0.1",
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.env,
        )

    def start(self) -> None:
        settings = {
            "spool_path": str(self.spool),
            "default_interval": "1",
            "timeout": "3s",
            "retry_min": "0.5s",
            "retry_max": "2s",
        }
        sets = [x for k, v in settings.items() for x in ("--set", f"{k}={v}")]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.command("--log-level", "debug", *sets, "run"),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
            )

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM, and the exit code (SIGKILL after ``timeout`` seconds: a failure)."""
        proc = self.proc
        assert proc is not None
        if proc.poll() is None:
            proc.terminate()
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            return -9

    def sampled(self) -> list[int]:
        """The timestamps (ns) of every sample the agent took, from its debug log."""
        return [int(m) for m in SAMPLED.findall(self.log.read_text(errors="replace"))]

    def spooled(self) -> int:
        status = read_status(self.spool)
        return status[0].samples if status else 0

    def last_push(self) -> float:
        status = read_status(self.spool)
        return float(status[1].get("last_push") or 0) if status else 0.0

    def log_tail(self) -> str:
        return f"--- agent {self.hostname} log:\n{tail(self.log, 2000)}"


@contextmanager
def agents(stack: Stack, workdir: Path, count: int) -> Iterator[list[Agent]]:
    """``count`` agents, each registered with ``monapi-agent register`` as a server of its own
    (interval 1 s) and running; killed if still running when the block ends."""
    monapi = stack.monapi
    status, tok, _ = call(
        monapi.base, "POST", "/api/v1/enrollment-tokens", monapi.token, {"max_uses": count}
    )
    assert status == 201, tok
    fleet = [Agent(workdir / f"agent{i}", f"e2e-{stack.engine.kind}-{i}") for i in range(count)]
    registering = [a.register(monapi.base, tok["token"]) for a in fleet]
    for agent, proc in zip(fleet, registering, strict=True):
        try:
            out, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0, out.decode()
        found = re.search(rb"as server (\d+)", out)
        assert found, out.decode()
        agent.server_id = int(found.group(1))
    try:
        for agent in fleet:
            agent.start()
        yield fleet
    finally:
        for agent in fleet:
            if agent.proc is not None and agent.proc.poll() is None:
                agent.proc.kill()
                agent.proc.wait(10)


@pytest.mark.parametrize("stack", ENGINES, indirect=True)
def test_agents_pushing_through_an_engine_restart_store_every_sample_exactly_once(
    stack: Stack, tmp_path: Path
) -> None:
    """Three real agents push every second; the engine is frozen until each agent got a 503
    (MONAPI_TSDB_TIMEOUT=1s), thawed, then stopped for five seconds and started again. The
    agents spool what monapi could not store and send it once the engine is back; stopped with
    SIGTERM after their spools drained, every sample each agent logged is in the engine exactly
    once (a re-sent sample the engine already had included), and nothing else is."""
    engine = stack.engine

    def diag() -> str:
        return "\n".join([*(a.log_tail() for a in fleet), stack.diag()])

    with agents(stack, tmp_path, 3) as fleet:
        wait_for(
            "every agent delivered five samples",
            lambda: all(len(a.sampled()) >= 5 and a.last_push() > 0 for a in fleet),
            30,
            diag,
        )
        # Frozen first: a push times out in monapi (503, spooled by the agent) while its
        # request waits in the engine's socket, which stores it on SIGCONT. The agent sends
        # that sample again after the restart: the copy must not be stored twice.
        engine.pause()
        try:
            wait_for("every agent spooled", lambda: all(a.spooled() > 0 for a in fleet), 15, diag)
        finally:
            engine.resume()
        time.sleep(1.0)  # the engine takes what waited in its sockets
        engine.stop()
        time.sleep(5.0)  # down; the agents spool every sample meanwhile
        engine.start()
        up_wall = time.time()
        drained = wait_for(
            "every agent drained its spool and pushed samples taken since",
            lambda: all(
                a.spooled() == 0
                and a.last_push() > up_wall
                and sum(1 for t in a.sampled() if t > up_wall * 1e9) >= 3
                for a in fleet
            ),
            30,
            diag,
        )
        codes = [a.stop() for a in fleet]
        assert codes == [0, 0, 0], f"exit codes {codes}\n{diag()}"
    text = diag()
    res = engine.resolution_ns
    for agent in fleet:
        assert agent.spooled() == 0, f"{agent.hostname} left samples in its spool\n{text}"
        sampled = [t // res * res for t in agent.sampled()]
        assert len(set(sampled)) == len(sampled), f"{agent.hostname}: a timestamp sampled twice"
        stored = Counter(ts for ts, _ in engine.stored(agent.server_id))
        missing = sorted(set(sampled) - set(stored))
        extra = sorted(set(stored) - set(sampled))
        twice = {ts: n for ts, n in stored.items() if n > 1}
        assert not missing and not extra and not twice, (
            f"{agent.hostname} (server {agent.server_id}): {len(sampled)} sampled,"
            f" {sum(stored.values())} stored; missing {missing[:5]} ({len(missing)}),"
            f" not sampled {extra[:5]} ({len(extra)}),"
            f" stored more than once {dict(list(twice.items())[:5])}"
            f"\n{text}"
        )
    print(
        f"\n{engine.kind}: agents sampled {[len(a.sampled()) for a in fleet]}, every sample"
        f" stored once; spools drained {drained:.1f}s after the engine came back"
    )
