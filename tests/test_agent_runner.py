"""monapi-agent's delivery logic against a real monapi served over HTTP in this process.

Each test starts the real app (``make_app`` on a temporary directory) behind werkzeug on a
loopback port, points a real ``Client`` at it and drives a ``Runner`` whose collector is a small
fake that hands out crafted samples: sample ``i`` is taken at ``BASE_S + i`` seconds and carries
the value ``i``, so what the server stored (read back through the query API with the admin
token) tells exactly which samples arrived. A server that is "away" is a stopped werkzeug
server; it comes back on the same port. Most tests drive the sender's steps (``_cycle``,
``_drain``, ``refresh_config``) with a fake monotonic clock; a few run the real ``run()`` loop.
"""

from __future__ import annotations

import itertools
import logging
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
from flask import Flask
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from monapi_agent import runner as runner_module
from monapi_agent.client import Client
from monapi_agent.collect import Collector, FieldWant
from monapi_agent.config import Settings
from monapi_agent.runner import UNCONFIGURED_REFRESH, Runner, backoff_delay
from monapi_agent.spool import Points, Spool, read_status

from .conftest import bearer, make_app, register_server

# Sample i is taken at BASE_S + i seconds (well inside monapi's accepted timestamp window).
BASE_S = int(time.time()) - 3600
# Measurements/fields of the default field configuration, one per point of a sample.
POINT_FIELDS = [
    ("cpu", "usage_percent"),
    ("system", "load1"),
    ("mem", "used_percent"),
    ("swap", "used_percent"),
    ("cpu", "idle_percent"),
    ("cpu", "user_percent"),
]


def sample(i: int, *, points: int = 1) -> Points:
    """A sample of ``points`` points (different fields) at BASE_S + i, every value ``i``."""
    ts = (BASE_S + i) * 1_000_000_000
    return [
        {"measurement": m, "fields": {f: float(i)}, "timestamp": ts}
        for m, f in POINT_FIELDS[:points]
    ]


def bad_sample(i: int) -> Points:
    """A sample whose only point has a field monapi does not know (refused: 422)."""
    return [{"measurement": "cpu", "fields": {"bogus": float(i)}, "timestamp": _ns(i)}]


def _ns(i: int) -> int:
    return (BASE_S + i) * 1_000_000_000


# --- the pieces around the runner -----------------------------------------------------------------


class FakeMonotonic:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeCollector:
    """Hands out prepared samples; records what the runner configured."""

    samples: list[Points] = field(default_factory=list)
    fields_calls: list[list[FieldWant]] = field(default_factory=list)
    primed: int = 0
    collected: int = 0
    on_collect: Callable[[], None] | None = None

    def set_fields(self, wants: Iterable[FieldWant]) -> None:
        self.fields_calls.append(list(wants))

    def prime(self) -> None:
        self.primed += 1

    def collect(self) -> Points:
        self.collected += 1
        out = self.samples.pop(0) if self.samples else []
        if self.on_collect is not None:
            self.on_collect()
        return out


class _OneRequestPerConnection(WSGIRequestHandler):
    """HTTP/1.0: the server closes every connection after its answer, so a stopped server is
    really gone for the agent (no kept-alive connection still served by a handler thread)."""

    protocol_version = "HTTP/1.0"


class LiveServer:
    """The app served by werkzeug on loopback; stoppable and restartable on the same port."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.port = 0
        self._httpd: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self._httpd is None
        httpd = make_server(
            "127.0.0.1",
            self.port,
            self.app,
            threaded=True,
            request_handler=_OneRequestPerConnection,
        )
        self.port = httpd.server_port
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        assert self._thread is not None
        self._thread.join(10)
        self._httpd = None


@dataclass
class Monapi:
    """A running monapi with one registered server."""

    app: Flask
    admin: str
    server_id: int
    key: str
    http: LiveServer

    def admin_get(self, path: str, **query: str) -> Any:
        resp = self.app.test_client().get(path, query_string=query, headers=bearer(self.admin))
        assert resp.status_code == 200, resp.get_json()
        return resp.get_json()

    def admin_call(self, method: str, path: str, body: Any = None) -> Any:
        resp = self.app.test_client().open(
            path, method=method, json=body, headers=bearer(self.admin)
        )
        assert resp.status_code < 300, resp.get_json()
        return resp.get_json()

    def stored(self, measurement_field: str = "cpu.usage_percent") -> list[tuple[int, float]]:
        """(second, value) of every stored point of one field, oldest first."""
        body = self.admin_get(
            f"/api/v1/servers/{self.server_id}/metrics",
            fields=measurement_field,
            start=str(BASE_S - 60),
            end=str(BASE_S + 120),
            agg="last",
            step="1s",
        )
        return [(int(t), float(v)) for s in body["series"] for t, v in s["points"] if v is not None]

    def count(self, measurement_field: str = "cpu.usage_percent") -> int:
        """How many points of one field are stored (a duplicate would count twice)."""
        body = self.admin_get(
            f"/api/v1/servers/{self.server_id}/metrics",
            fields=measurement_field,
            start=str(BASE_S - 60),
            end=str(BASE_S + 120),
            agg="count",
            step="1h",
        )
        return int(sum(v or 0 for s in body["series"] for _, v in s["points"]))

    def agent_config(self) -> dict[str, Any]:
        resp = self.app.test_client().get("/api/v1/agent/config", headers=bearer(self.key))
        assert resp.status_code == 200
        body: dict[str, Any] = resp.get_json()
        return body


def expected(*indexes: int) -> list[tuple[int, float]]:
    return [(BASE_S + i, float(i)) for i in indexes]


_dirs = itertools.count()


@pytest.fixture
def start_monapi(tmp_path: Path) -> Iterator[Callable[..., Monapi]]:
    """Start a monapi (settings overrides as keywords; ``interval`` for the server)."""
    servers: list[LiveServer] = []

    def start(*, interval: int = 1, **overrides: Any) -> Monapi:
        app, admin = make_app(tmp_path / f"monapi-{next(_dirs)}", **overrides)
        reg = register_server(app.test_client(), admin, "agent-host", interval=interval)
        http = LiveServer(app)
        http.start()
        servers.append(http)
        return Monapi(app, admin, int(reg["id"]), str(reg["api_key"]), http)

    yield start
    for http in servers:
        http.stop()


@pytest.fixture
def monapi(start_monapi: Callable[..., Monapi]) -> Monapi:
    return start_monapi()


@pytest.fixture
def make_runner(tmp_path: Path) -> Iterator[Callable[..., Runner]]:
    """A Runner on a real Client and Spool; the collector is a FakeCollector."""
    made: list[Runner] = []

    def make(
        url: str,
        key: str,
        *,
        collector: FakeCollector | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        spool_path: Path | None = None,
        **settings: Any,
    ) -> Runner:
        values: dict[str, Any] = {
            "retry_min": 1.0,
            "retry_max": 8.0,
            "timeout": 5.0,
            "default_interval": 1,
        }
        values.update(settings)
        s = Settings(url=url, key=key, spool_path=spool_path or tmp_path / "spool.db", **values)
        spool = Spool(s.spool_path, max_bytes=s.spool_max_bytes, max_age=s.spool_max_age)
        runner = Runner(
            s,
            client=Client(url, key, timeout=s.timeout),
            spool=spool,
            collector=cast(Collector, collector or FakeCollector()),
            monotonic=monotonic,
            rand=lambda: 0.0,
        )
        made.append(runner)
        return runner

    yield make
    for r in made:
        r.spool.close()
        r.client.close()


def collector_of(runner: Runner) -> FakeCollector:
    return cast(FakeCollector, runner.collector)


def spooled(path: Path) -> list[Points]:
    """What a spool file holds, oldest first (read through a second connection)."""
    spool = Spool(path, max_bytes=1 << 30, max_age=1e9)
    try:
        return [points for _, points in spool.peek(1 << 30)]
    finally:
        spool.close()


_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # werkzeug colours some request lines


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def requests_seen(caplog: pytest.LogCaptureFixture, request_line: str) -> int:
    """How many requests werkzeug logged whose request line starts with ``request_line``."""
    return sum(
        1
        for r in caplog.records
        if r.name == "werkzeug" and f'"{request_line} ' in _ANSI.sub("", r.getMessage())
    )


def messages(caplog: pytest.LogCaptureFixture, level: int = logging.DEBUG) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("monapi_agent") and r.levelno >= level
    ]


@pytest.fixture(autouse=True)
def _logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="monapi_agent")
    caplog.set_level(logging.INFO, logger="werkzeug")


# --- delivery from memory -------------------------------------------------------------------------


def test_run_pushes_samples_from_memory_and_leaves_the_spool_empty(
    monapi: Monapi,
    make_runner: Callable[..., Runner],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    collector = FakeCollector(samples=[sample(0), sample(1)])
    runner = make_runner(monapi.http.url, monapi.key, collector=collector)

    assert runner.run(max_samples=2) == 0

    assert monapi.stored() == expected(0, 1)
    assert collector.primed == 1
    assert collector.collected == 2
    status = read_status(tmp_path / "spool.db")
    assert status is not None
    stats, meta = status
    assert stats.samples == 0
    assert meta["last_push_points"] == 1
    assert meta.get("last_error") is None
    assert not messages(caplog, logging.WARNING)


def test_a_resent_sample_is_stored_once(monapi: Monapi, make_runner: Callable[..., Runner]) -> None:
    # What makes "re-send when the answer never arrived" safe: same timestamps overwrite.
    runner = make_runner(monapi.http.url, monapi.key, monotonic=FakeMonotonic())
    assert runner._push_from_memory([sample(3)])
    assert runner._push_from_memory([sample(3)])
    assert monapi.stored() == expected(3)
    assert monapi.count() == 1


# --- the server away, then back -------------------------------------------------------------------


def test_server_away_spools_in_order_and_the_drain_delivers_everything_after_a_restart(
    monapi: Monapi,
    make_runner: Callable[..., Runner],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    mono = FakeMonotonic()
    runner = make_runner(monapi.http.url, monapi.key, monotonic=mono)
    runner.refresh_config()
    runner._cycle([sample(0)])
    assert monapi.stored() == expected(0)

    monapi.http.stop()
    for i in range(1, 5):
        runner._cycle([sample(i)])
        mono.advance(0.1)
    assert [s[0]["timestamp"] for s in spooled(tmp_path / "spool.db")] == [
        _ns(i) for i in range(1, 5)
    ]
    assert len(runner.spool) == 4
    warnings = messages(caplog, logging.WARNING)
    assert any("cannot deliver" in m and "unreachable" in m for m in warnings), warnings
    # one failed push; the later samples went straight to the spool behind it (backing off)
    assert runner._failures == 1

    monapi.http.start()  # the same app, the same port
    mono.advance(runner.settings.retry_max + 1)
    runner._cycle([])

    assert len(runner.spool) == 0
    assert spooled(tmp_path / "spool.db") == []
    assert monapi.stored() == expected(0, 1, 2, 3, 4)
    assert monapi.count() == 5  # each exactly once
    assert any("delivering again after 1 failed attempt" in m for m in messages(caplog))
    status = read_status(tmp_path / "spool.db")
    assert status is not None
    assert status[1]["last_push_points"] == 4  # the four spooled samples in one request


def test_while_backing_off_new_samples_queue_behind_the_spool_without_a_request(
    make_runner: Callable[..., Runner], caplog: pytest.LogCaptureFixture
) -> None:
    mono = FakeMonotonic()
    runner = make_runner(f"http://127.0.0.1:{free_port()}", "mks_1_x", monotonic=mono)
    runner._next_config = mono() + 3600  # configuration is another test's business
    runner._cycle([sample(0)])
    assert runner._failures == 1
    # retry_min 1s, rand 0: half a step of backoff
    assert runner._retry_at == pytest.approx(mono() + 0.5)
    runner._cycle([sample(1)])
    runner._cycle([sample(2)])
    assert runner._failures == 1  # no new attempt while backing off
    mono.advance(0.6)
    runner._cycle([sample(3)])  # spooled behind the others, then a drain attempt fails
    assert runner._failures == 2
    assert runner._retry_at == pytest.approx(mono() + 1.0)
    assert [s[0]["timestamp"] for _, s in runner.spool.peek(100)] == [_ns(i) for i in range(4)]
    # the same failure is not logged as a warning twice: the second is "still cannot deliver"
    assert sum("cannot deliver (" in m for m in messages(caplog, logging.WARNING)) == 1
    assert any("still cannot deliver (attempt 2)" in m for m in messages(caplog))


def test_the_drain_sends_oldest_first_and_keeps_the_rest_when_the_server_stops_it(
    start_monapi: Callable[..., Monapi],
    make_runner: Callable[..., Runner],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # monapi's own rate limit lets two requests through, then answers 429 with Retry-After.
    monapi = start_monapi(rate_limit_server="2/minute")
    mono = FakeMonotonic()
    runner = make_runner(monapi.http.url, monapi.key, monotonic=mono, batch_max_points=1)
    runner._next_config = mono() + 3600
    runner.spool.put([sample(i) for i in range(5)])

    runner._drain()

    assert monapi.stored() == expected(0, 1)  # one sample per request, oldest first
    assert [s[0]["timestamp"] for _, s in runner.spool.peek(100)] == [_ns(i) for i in (2, 3, 4)]
    warnings = messages(caplog, logging.WARNING)
    refused = [m for m in warnings if "HTTP 429" in m and "too many requests" in m]
    assert len(refused) == 1, warnings
    # the server's Retry-After (seconds, not the 0.5s of backoff) decides the next attempt
    said = re.search(r"retry in (\d+) s", refused[0])
    assert said is not None
    retry_after = int(said.group(1))
    assert retry_after > 1
    assert runner._retry_at - mono() == retry_after


def test_retry_after_of_a_rate_limited_push_from_memory_is_honoured(
    start_monapi: Callable[..., Monapi], make_runner: Callable[..., Runner]
) -> None:
    monapi = start_monapi(rate_limit_server="1/minute")
    mono = FakeMonotonic()
    runner = make_runner(monapi.http.url, monapi.key, monotonic=mono)
    runner._next_config = mono() + 3600
    runner._cycle([sample(0)])
    runner._cycle([sample(1)])  # 429: spooled, retried in no less than Retry-After
    assert len(runner.spool) == 1
    wait = runner._retry_at - mono()
    assert 50 <= wait <= 61
    mono.advance(wait / 2)
    runner._cycle([sample(2)])  # still backing off: spooled, not sent
    assert len(runner.spool) == 2
    assert monapi.stored() == expected(0)


# --- refused data ---------------------------------------------------------------------------------


def test_rejected_sample_is_logged_with_the_reason_and_not_retried(
    monapi: Monapi,
    make_runner: Callable[..., Runner],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    mono = FakeMonotonic()
    runner = make_runner(monapi.http.url, monapi.key, monotonic=mono)
    runner.refresh_config()

    runner._cycle([bad_sample(0)])

    errors = messages(caplog, logging.ERROR)
    assert len(errors) == 1
    assert "server refused 1 point(s) (HTTP 422)" in errors[0]
    assert "unknown field cpu.bogus" in errors[0]
    assert "dropped, not retried" in errors[0]
    assert len(runner.spool) == 0
    assert runner._failures == 0 and runner._retry_at == 0.0  # not a failure of the server
    status = read_status(tmp_path / "spool.db")
    assert status is not None
    assert status[1]["last_error"]["status"] == 422

    mono.advance(30)
    runner._cycle([sample(1)])
    runner._cycle([])
    assert monapi.stored() == expected(1)
    assert requests_seen(caplog, "POST /api/v1/data") == 2  # the refused one was sent once


def test_a_partly_refused_sample_logs_what_the_server_refused(
    monapi: Monapi, make_runner: Callable[..., Runner], caplog: pytest.LogCaptureFixture
) -> None:
    runner = make_runner(monapi.http.url, monapi.key, monotonic=FakeMonotonic())
    runner.refresh_config()
    runner._cycle([sample(0) + bad_sample(0)])

    assert monapi.stored() == expected(0)
    assert len(runner.spool) == 0
    warnings = messages(caplog, logging.WARNING)
    assert any(
        "server stored 1 point(s), refused 1" in m and "bogus unknown field cpu.bogus" in m
        for m in warnings
    ), warnings


def test_one_bad_sample_in_a_spooled_batch_is_the_only_one_lost(
    monapi: Monapi,
    make_runner: Callable[..., Runner],
    caplog: pytest.LogCaptureFixture,
) -> None:
    mono = FakeMonotonic()
    runner = make_runner(monapi.http.url, monapi.key, monotonic=mono)
    runner._next_config = mono() + 3600
    runner.spool.put([sample(0), sample(1), bad_sample(2), sample(3), sample(4)])

    runner._drain()

    assert monapi.stored() == expected(0, 1, 3, 4)
    assert len(runner.spool) == 0
    assert requests_seen(caplog, "POST /api/v1/data") == 1
    assert any("refused 1" in m for m in messages(caplog, logging.WARNING))


def test_wholly_refused_batches_are_halved_and_good_samples_after_them_delivered(
    monapi: Monapi,
    make_runner: Callable[..., Runner],
    caplog: pytest.LogCaptureFixture,
) -> None:
    runner = make_runner(monapi.http.url, monapi.key, monotonic=FakeMonotonic())
    runner._next_config = float("inf")
    runner.spool.put([bad_sample(0), bad_sample(1), bad_sample(2)])
    runner.spool.put([sample(3)])
    # a batch of only the three refused samples: 422 for the whole request
    runner._batch_max = 3

    runner._drain()

    assert monapi.stored() == expected(3)
    assert len(runner.spool) == 0
    refused = [m for m in messages(caplog, logging.ERROR) if "server refused 1 point(s)" in m]
    assert len(refused) == 3  # each refused sample dropped on its own, with its reason
    assert all("unknown field cpu.bogus" in m for m in refused)
    # [b0 b1 b2] refused as a whole, then b0, b1, b2 one by one, then s3
    assert requests_seen(caplog, "POST /api/v1/data") == 5
    assert runner._batch_max == 3  # a 422 does not shrink later batches


# --- 413 ------------------------------------------------------------------------------------------


def test_413_halves_the_batch_until_the_server_takes_it_and_remembers_the_size(
    start_monapi: Callable[..., Monapi],
    make_runner: Callable[..., Runner],
    caplog: pytest.LogCaptureFixture,
) -> None:
    monapi = start_monapi(max_points_per_request=5)
    runner = make_runner(monapi.http.url, monapi.key, monotonic=FakeMonotonic())
    runner._next_config = float("inf")
    runner.spool.put([sample(i, points=3) for i in range(4)])  # 12 points, 5 allowed

    runner._drain()

    assert len(runner.spool) == 0
    assert monapi.stored() == expected(0, 1, 2, 3)
    assert monapi.stored("system.load1") == expected(0, 1, 2, 3)
    assert monapi.stored("mem.used_percent") == expected(0, 1, 2, 3)
    info = messages(caplog, logging.INFO)
    assert any("server said 413: sending at most 6 points per request" in m for m in info)
    assert any("server said 413: sending at most 3 points per request" in m for m in info)
    assert runner._batch_max == 3
    # 12 (413), 6 (413), then four requests of one 3-point sample each
    assert requests_seen(caplog, "POST /api/v1/data") == 6

    runner.spool.put([sample(10, points=3), sample(11, points=3)])
    runner._drain()
    assert requests_seen(caplog, "POST /api/v1/data") == 8  # no 413 again: the size is kept


def test_a_single_sample_larger_than_the_server_allows_is_dropped_with_an_error(
    start_monapi: Callable[..., Monapi],
    make_runner: Callable[..., Runner],
    caplog: pytest.LogCaptureFixture,
) -> None:
    monapi = start_monapi(max_points_per_request=2)
    runner = make_runner(monapi.http.url, monapi.key, monotonic=FakeMonotonic())
    runner._next_config = float("inf")

    runner._cycle([sample(0, points=3)])
    runner._cycle([sample(1, points=2)])

    assert monapi.stored() == expected(1)
    assert len(runner.spool) == 0
    errors = messages(caplog, logging.ERROR)
    assert any(
        "dropped a sample of 3 points: the server refuses it as too large" in m for m in errors
    ), errors


# --- 401 / 403 ------------------------------------------------------------------------------------


def test_a_rotated_key_is_an_error_with_a_hint_and_samples_wait_for_the_new_key(
    monapi: Monapi,
    make_runner: Callable[..., Runner],
    caplog: pytest.LogCaptureFixture,
) -> None:
    mono = FakeMonotonic()
    runner = make_runner(monapi.http.url, monapi.key, monotonic=mono)
    runner.refresh_config()
    runner._cycle([sample(0)])
    new_key = monapi.admin_call("POST", f"/api/v1/servers/{monapi.server_id}/rotate-key")["api_key"]

    runner._cycle([sample(1)])
    runner._cycle([sample(2)])
    mono.advance(runner.settings.retry_max + 1)
    runner._cycle([])  # the drain is refused again: nothing dropped

    assert len(runner.spool) == 2
    assert monapi.stored() == expected(0)
    errors = [r for r in caplog.records if r.name == "monapi_agent" and r.levelno == logging.ERROR]
    assert len(errors) == 1  # the same refusal is not repeated at ERROR on every attempt
    text = errors[0].getMessage()
    assert "server refuses this agent's key (HTTP 401" in text
    assert "rotated or revoked" in text
    assert "monapi-agent register --force" in text
    assert runner._failures == 2

    runner.client.key = new_key
    mono.advance(runner.settings.retry_max + 1)
    runner._cycle([sample(3)])

    assert len(runner.spool) == 0
    assert monapi.stored() == expected(0, 1, 2, 3)
    assert runner._failures == 0


def test_a_refused_key_on_the_heartbeat_backs_off_without_fetching_the_config(
    monapi: Monapi,
    make_runner: Callable[..., Runner],
    caplog: pytest.LogCaptureFixture,
) -> None:
    mono = FakeMonotonic()
    runner = make_runner(monapi.http.url, "mks_1_wrong", monotonic=mono)
    runner.refresh_config()
    assert requests_seen(caplog, "POST /api/v1/agent/heartbeat") == 1
    assert requests_seen(caplog, "GET /api/v1/agent/config") == 0
    assert runner._failures == 1
    assert runner._retry_at > mono()
    runner._cycle([sample(0)])  # backing off: straight to the spool
    assert len(runner.spool) == 1
    assert requests_seen(caplog, "POST /api/v1/data") == 0
    assert any("rotated or revoked" in m for m in messages(caplog, logging.ERROR))


def test_a_disabled_server_keeps_its_samples_until_it_is_enabled_again(
    monapi: Monapi, make_runner: Callable[..., Runner], caplog: pytest.LogCaptureFixture
) -> None:
    mono = FakeMonotonic()
    runner = make_runner(monapi.http.url, monapi.key, monotonic=mono)
    runner._next_config = float("inf")
    monapi.admin_call("POST", f"/api/v1/servers/{monapi.server_id}/disable")
    runner._cycle([sample(0)])
    assert len(runner.spool) == 1
    assert any("HTTP 403" in m for m in messages(caplog, logging.ERROR))

    monapi.admin_call("POST", f"/api/v1/servers/{monapi.server_id}/enable")
    mono.advance(runner.settings.retry_max + 1)
    runner._cycle([sample(1)])
    assert len(runner.spool) == 0
    assert monapi.stored() == expected(0, 1)


# --- backoff --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failures", "rand", "delay"),
    [
        (1, 0.0, 0.5),  # half the first step
        (1, 0.5, 0.75),
        (2, 0.0, 1.0),
        (3, 0.0, 2.0),
        (4, 0.0, 4.0),
        (5, 0.0, 5.0),  # step capped at retry_max = 10
        (50, 0.0, 5.0),
        (10_000, 0.0, 5.0),  # no overflow however long the outage
        (3, 0.999999, 4.0),  # rand -> 1: up to the whole step
        (10_000, 0.999999, 10.0),
    ],
)
def test_backoff_doubles_with_equal_jitter_and_is_capped(
    failures: int, rand: float, delay: float
) -> None:
    assert backoff_delay(failures, 1.0, 10.0, rand) == pytest.approx(delay, abs=1e-4)


def test_backoff_jitter_stays_between_half_the_step_and_the_step() -> None:
    for failures in range(1, 12):
        step = min(300.0, 2.0 ** (failures - 1))
        low = backoff_delay(failures, 1.0, 300.0, 0.0)
        high = backoff_delay(failures, 1.0, 300.0, 0.9999999)
        assert low == step / 2
        assert step / 2 < high <= step


def test_backoff_never_waits_less_than_retry_after() -> None:
    assert backoff_delay(1, 1.0, 10.0, 0.0, retry_after=30.0) == 30.0  # even beyond retry_max
    assert backoff_delay(5, 1.0, 10.0, 0.0, retry_after=2.0) == 5.0  # a floor, not a ceiling
    assert backoff_delay(1, 1.0, 10.0, 0.0, retry_after=0.0) == 0.5


# --- configuration --------------------------------------------------------------------------------


def test_refresh_config_applies_the_server_interval_and_fields_and_caches_them(
    start_monapi: Callable[..., Monapi],
    make_runner: Callable[..., Runner],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monapi = start_monapi(interval=7)
    collector = FakeCollector()
    runner = make_runner(monapi.http.url, monapi.key, collector=collector)

    runner.refresh_config()

    config = monapi.agent_config()
    wants = [FieldWant.from_config(f) for f in config["fields"]]
    assert FieldWant("cpu", "usage_percent", "float", 0.0, 100.0) in wants
    assert collector.fields_calls == [wants]
    assert runner.interval == 7.0
    status = read_status(tmp_path / "spool.db")
    assert status is not None
    cached = status[1]["config"]
    assert cached["config"] == config
    assert cached["etag"] and cached["etag"] == runner._config_etag
    assert any(
        f"configuration (from the server): {len(wants)} fields, every 7s" in m
        for m in messages(caplog, logging.INFO)
    )


def test_an_unchanged_etag_does_not_fetch_the_config_again(
    monapi: Monapi,
    make_runner: Callable[..., Runner],
    caplog: pytest.LogCaptureFixture,
) -> None:
    mono = FakeMonotonic()
    collector = FakeCollector()
    runner = make_runner(monapi.http.url, monapi.key, collector=collector, monotonic=mono)
    runner.refresh_config()
    mono.advance(60)
    runner.refresh_config()
    mono.advance(60)
    runner._cycle([])  # due again: the sender refreshes by itself

    assert requests_seen(caplog, "POST /api/v1/agent/heartbeat") == 3
    assert requests_seen(caplog, "GET /api/v1/agent/config") == 1
    assert len(collector.fields_calls) == 1
    assert runner._next_config == mono() + 60


def test_an_interval_changed_by_an_admin_applies_at_the_next_refresh(
    monapi: Monapi,
    make_runner: Callable[..., Runner],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    collector = FakeCollector()
    runner = make_runner(monapi.http.url, monapi.key, collector=collector)
    runner.refresh_config()
    assert runner.interval == 1.0
    monapi.admin_call("PATCH", f"/api/v1/servers/{monapi.server_id}", {"interval": 5})
    cpu = monapi.admin_get("/api/v1/fields", measurement="cpu")["items"]
    idle = next(f for f in cpu if f["name"] == "idle_percent")
    monapi.admin_call("PATCH", f"/api/v1/fields/{idle['id']}", {"enabled": False})

    runner.refresh_config()

    assert runner.interval == 5.0
    assert len(collector.fields_calls) == 2
    assert ("cpu", "idle_percent") not in {
        (w.measurement, w.name) for w in collector.fields_calls[1]
    }
    assert ("cpu", "idle_percent") in {(w.measurement, w.name) for w in collector.fields_calls[0]}
    assert requests_seen(caplog, "GET /api/v1/agent/config") == 2
    status = read_status(tmp_path / "spool.db")
    assert status is not None
    assert status[1]["config"]["config"]["interval"] == 5
    assert any("every 5s" in m for m in messages(caplog, logging.INFO))


def test_an_agent_started_with_the_server_away_uses_the_cached_config(
    start_monapi: Callable[..., Monapi],
    make_runner: Callable[..., Runner],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monapi = start_monapi(interval=1)
    first = make_runner(monapi.http.url, monapi.key)
    first.refresh_config()
    wanted = collector_of(first).fields_calls[-1]
    first.spool.close()
    monapi.http.stop()

    collector = FakeCollector(samples=[sample(0)])
    runner = make_runner(monapi.http.url, monapi.key, collector=collector, default_interval=3600)
    assert runner.run(max_samples=1) == 0  # would take an hour on the default interval

    assert collector.fields_calls == [wanted]
    assert runner.interval == 1.0
    assert not any("no configuration" in m for m in messages(caplog))
    assert any("configuration (cached)" in m for m in messages(caplog, logging.INFO))
    assert [s[0]["timestamp"] for s in spooled(tmp_path / "spool.db")] == [_ns(0)]


def test_without_any_configuration_the_default_interval_is_used_and_asked_for_sooner(
    make_runner: Callable[..., Runner], caplog: pytest.LogCaptureFixture
) -> None:
    mono = FakeMonotonic()
    collector = FakeCollector()
    runner = make_runner(
        f"http://127.0.0.1:{free_port()}",
        "mks_1_x",
        collector=collector,
        monotonic=mono,
        default_interval=20,
        config_refresh=600.0,
    )
    runner.load_cached_config()
    runner.refresh_config()
    assert collector.fields_calls == []  # the collector keeps its own default fields
    assert runner.interval == 20.0
    assert runner._next_config == mono() + UNCONFIGURED_REFRESH
    assert runner._failures == 0  # a missing config is not a failed delivery


# --- stopping -------------------------------------------------------------------------------------


def _run_in_thread(
    runner: Runner, max_samples: int | None = None
) -> tuple[threading.Thread, list[int]]:
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(runner.run(max_samples)), daemon=True)
    thread.start()
    return thread, codes


def _stop_then_dawdle(runner: Runner) -> None:
    runner.stop()
    time.sleep(0.2)  # time enough for a sender that does not wait for the sample to finish


def test_stop_during_run_pushes_the_sample_held_in_memory(
    monapi: Monapi,
    make_runner: Callable[..., Runner],
    tmp_path: Path,
) -> None:
    collector = FakeCollector(samples=[sample(0)])
    runner = make_runner(monapi.http.url, monapi.key, collector=collector)
    # SIGTERM arrives while the sample is being taken: the sender hears of the stop before it
    # has the sample, and must not finish without it
    collector.on_collect = lambda: _stop_then_dawdle(runner)

    thread, codes = _run_in_thread(runner)
    thread.join(30)

    assert not thread.is_alive()
    assert codes == [0]
    assert monapi.stored() == expected(0)
    assert spooled(tmp_path / "spool.db") == []


def test_stop_during_run_spools_the_sample_held_in_memory_when_the_server_is_away(
    make_runner: Callable[..., Runner],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    collector = FakeCollector(samples=[sample(0)])
    runner = make_runner(f"http://127.0.0.1:{free_port()}", "mks_1_x", collector=collector)
    collector.on_collect = lambda: _stop_then_dawdle(runner)

    thread, codes = _run_in_thread(runner)
    thread.join(30)

    assert not thread.is_alive()
    assert codes == [0]
    assert spooled(tmp_path / "spool.db") == [sample(0)]
    info = messages(caplog, logging.INFO)
    assert any("1 sample(s) wait in the spool for the next start" in m for m in info), info


def test_stop_at_exit_spools_behind_older_samples_rather_than_pushing_ahead_of_them(
    monapi: Monapi, make_runner: Callable[..., Runner], tmp_path: Path
) -> None:
    collector = FakeCollector(samples=[sample(1)])
    runner = make_runner(monapi.http.url, monapi.key, collector=collector)
    runner.spool.put([sample(0)])
    runner._retry_at = float("inf")  # backing off: the spool is not drained before the stop
    collector.on_collect = runner.stop

    thread, codes = _run_in_thread(runner)
    thread.join(30)

    assert codes == [0]
    assert spooled(tmp_path / "spool.db") == [sample(0), sample(1)]
    assert monapi.stored() == []


def test_stop_from_another_thread_ends_a_long_wait_at_once(
    make_runner: Callable[..., Runner], tmp_path: Path
) -> None:
    collector = FakeCollector()
    runner = make_runner(
        f"http://127.0.0.1:{free_port()}", "mks_1_x", collector=collector, default_interval=3600
    )
    thread, codes = _run_in_thread(runner)
    deadline = time.monotonic() + 10
    while collector.primed == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert runner._sender is not None
    time.sleep(0.05)

    started = time.monotonic()
    runner.stop()
    thread.join(10)

    assert not thread.is_alive()
    assert time.monotonic() - started < 2
    assert codes == [0]
    assert collector.collected == 0
    assert spooled(tmp_path / "spool.db") == []


def test_a_stop_is_not_missed_while_the_sender_holds_the_lock(
    make_runner: Callable[..., Runner],
) -> None:
    # The sender holds the condition's lock between checking for work and waiting; a stop
    # that cannot take the lock then must still wake it (else it sleeps until its next timer,
    # here the configuration refresh 15s away).
    collector = FakeCollector()  # the sample is empty: the main thread never takes the lock
    runner = make_runner(
        f"http://127.0.0.1:{free_port()}", "mks_1_x", collector=collector, config_refresh=30.0
    )
    released = threading.Event()

    def hold_the_lock() -> None:
        with runner._cond:
            released.wait(10)

    def on_collect() -> None:
        threading.Thread(target=hold_the_lock, daemon=True).start()
        time.sleep(0.05)  # the holder has the lock now
        threading.Timer(0.3, released.set).start()

    collector.on_collect = on_collect
    started = time.monotonic()
    thread, codes = _run_in_thread(runner, max_samples=1)
    thread.join(30)
    assert not thread.is_alive()
    assert codes == [0]
    # one interval (1s) and the lock held 0.3s
    assert time.monotonic() - started < 5


# --- the spool cannot be written ------------------------------------------------------------------


def _lock_spool(path: Path) -> sqlite3.Connection:
    """Another connection holds the write lock: the agent's writes fail with "locked"."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    return other


def send(runner: Runner, *samples: Points) -> None:
    """One turn of the sender: everything queued (and these new samples), then a cycle."""
    with runner._cond:
        runner._queue.extend(samples)
        batch, runner._queue = runner._queue, []
    runner._cycle(batch)


def test_samples_stay_in_memory_when_the_spool_cannot_be_written(
    make_runner: Callable[..., Runner],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    mono = FakeMonotonic()
    runner = make_runner(f"http://127.0.0.1:{free_port()}", "mks_1_x", monotonic=mono)
    runner._next_config = float("inf")
    runner.spool._db.execute("PRAGMA busy_timeout=0")
    other = _lock_spool(tmp_path / "spool.db")
    try:
        send(runner, sample(0))  # the push fails, and so does the spool: no crash
        mono.advance(100)
        send(runner, sample(1))
    finally:
        other.rollback()
        other.close()

    assert runner._queue == [sample(0), sample(1)]
    assert len(runner.spool) == 0
    errors = messages(caplog, logging.ERROR)
    assert any("cannot write the spool" in m and "keeping samples in memory" in m for m in errors)
    assert runner._failures == 2  # the delivery failures were still counted

    mono.advance(100)
    send(runner)  # the spool works again: written in order
    assert runner._queue == []
    assert spooled(tmp_path / "spool.db") == [sample(0), sample(1)]


def test_a_delivered_batch_that_cannot_be_deleted_is_sent_again_later_and_stored_once(
    monapi: Monapi,
    make_runner: Callable[..., Runner],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    mono = FakeMonotonic()
    runner = make_runner(monapi.http.url, monapi.key, monotonic=mono)
    runner._next_config = float("inf")
    runner.spool.put([sample(0), sample(1)])
    runner.spool._db.execute("PRAGMA busy_timeout=0")
    other = _lock_spool(tmp_path / "spool.db")
    try:
        runner._cycle([])
    finally:
        other.rollback()
        other.close()
    assert monapi.stored() == expected(0, 1)
    assert len(runner.spool) == 2
    assert any("cannot update the spool" in m for m in messages(caplog, logging.ERROR))
    assert runner._retry_at > mono()

    mono.advance(runner.settings.retry_max + 1)
    runner._cycle([])
    assert len(runner.spool) == 0
    assert monapi.count() == 2  # sent twice, stored once


def test_samples_held_in_memory_are_bounded_oldest_dropped_first(
    make_runner: Callable[..., Runner],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    runner = make_runner(f"http://127.0.0.1:{free_port()}", "mks_1_x")
    runner.spool._db.execute("PRAGMA busy_timeout=0")
    many = [sample(i % 100) for i in range(runner_module.MAX_MEMORY_SAMPLES + 5)]
    other = _lock_spool(tmp_path / "spool.db")
    try:
        runner._spool(many)
    finally:
        other.rollback()
        other.close()
    assert len(runner._queue) == runner_module.MAX_MEMORY_SAMPLES
    assert runner._queue == many[5:]
    assert any(
        "dropped the 5 oldest samples held in memory" in m for m in messages(caplog, logging.ERROR)
    )


def test_a_spool_that_cannot_be_written_is_retried_with_backoff_not_in_a_busy_loop(
    make_runner: Callable[..., Runner],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    collector = FakeCollector(samples=[sample(0)])
    runner = make_runner(
        f"http://127.0.0.1:{free_port()}",
        "mks_1_x",
        collector=collector,
        retry_min=0.2,
        retry_max=0.4,
        default_interval=3600,
    )
    runner.spool._db.execute("PRAGMA busy_timeout=0")
    other = _lock_spool(tmp_path / "spool.db")
    runner.interval = 0.05  # samples at once (with the server away, nothing changes it)
    thread, codes = _run_in_thread(runner)
    try:
        deadline = time.monotonic() + 10
        while collector.collected == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(1.0)
        failures = sum("cannot write the spool" in m for m in messages(caplog, logging.ERROR))
        # a retry every 0.1-0.4s, not thousands of attempts (and log lines) a second
        assert 1 <= failures <= 15, failures
    finally:
        other.rollback()
        other.close()
    deadline = time.monotonic() + 5
    while not spooled(tmp_path / "spool.db") and time.monotonic() < deadline:
        time.sleep(0.02)
    runner.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert codes == [0]
    assert spooled(tmp_path / "spool.db") == [sample(0)]
