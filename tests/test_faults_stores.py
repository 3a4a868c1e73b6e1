"""Faults of the configuration database and of Redis, with real processes.

PostgreSQL and Redis on the test machine are shared: they are never stopped. monapi reaches them
through :class:`TcpProxy`, a TCP forwarder of this file on a loopback port of its own, and the
tests break that path instead: ``cut()`` (connections reset, the port refuses), ``hang()`` (a
black hole: connections accepted, nothing forwarded) and ``restore()`` (the same port forwards
again).
"""

from __future__ import annotations

import contextlib
import select
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from sqlalchemy.engine import make_url

from monapi import db
from monapi.app import shutdown

from . import engines
from .conftest import _created, bearer, make_app, push, register_server
from .test_errors import SHAPE, check_shape
from .test_serve import call, start_instance


class TcpProxy:
    """A TCP forwarder from a loopback port of its own to ``upstream``, with three switches:

    * ``cut()``: every open connection is closed and the port stops listening, so a new
      connection is refused at once (the server went away);
    * ``hang()``: the port keeps accepting, but nothing is forwarded any more, on old or new
      connections (the server froze, or a black-holed network);
    * ``restore()``: the connections left over from a hang are closed, and the same port
      listens and forwards again.
    """

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.mode = "forward"
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._closed = False
        self._listen(0)
        assert self._listener is not None
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()

    # Switches -------------------------------------------------------------------------------
    def cut(self) -> None:
        """Reset every connection and refuse new ones."""
        with self._lock:
            self.mode = "cut"
            listener, self._listener = self._listener, None
        if listener is not None:
            # shutdown() first: a close() alone leaves the port listening until the acceptor's
            # select() returns, and a connection queued meanwhile would be reset, not refused.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        self._close_all()

    def hang(self) -> None:
        """Accept, but forward nothing (on open connections too)."""
        with self._lock:
            self.mode = "hang"
        if self._listener is None:
            self._listen(self.port)

    def restore(self) -> None:
        """Close what a hang left open, then forward again on the same port."""
        self._close_all()
        with self._lock:
            self.mode = "forward"
        if self._listener is None:
            self._listen(self.port)

    def close(self) -> None:
        """Stop for good: no listener, no connection, no thread left."""
        self._closed = True
        self.cut()
        self._acceptor.join(5)

    # Plumbing -------------------------------------------------------------------------------
    def _listen(self, port: int) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 5
        while True:
            try:
                listener.bind(("127.0.0.1", port))
                break
            except OSError:  # the old listener may take a moment to let go of the port
                if time.monotonic() > deadline:
                    listener.close()
                    raise
                time.sleep(0.02)
        listener.listen(128)
        with self._lock:
            self._listener = listener

    def _close_all(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def _accept_loop(self) -> None:
        while not self._closed:
            listener = self._listener
            if listener is None:
                time.sleep(0.02)
                continue
            try:
                ready, _, _ = select.select([listener], [], [], 0.05)
                if not ready:
                    continue
                client, _ = listener.accept()
            except (OSError, ValueError):  # closed by cut() meanwhile
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with self._lock:
            mode = self.mode
            if mode != "cut":
                self._sockets.add(client)
        if mode == "cut":  # accepted just before cut() closed the port
            self._drop(client)
            return
        if mode == "hang":  # held open, never read, until restore() or cut()
            return
        try:
            upstream = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            self._drop(client)
            return
        upstream.settimeout(None)
        with self._lock:
            live = self.mode == "forward" and client in self._sockets  # not cut meanwhile
            if live:
                self._sockets.add(upstream)
        if not live:
            self._drop(client)
            self._drop(upstream)
            return
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if self.mode != "forward":
                    continue  # the black hole: swallowed, never answered
                dst.sendall(data)
        except OSError:
            pass
        self._drop(src)
        self._drop(dst)

    def _drop(self, s: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(s)
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()


# Helpers ----------------------------------------------------------------------------------------
@dataclass
class Reply:
    """One HTTP exchange with a real ``monapi serve``, and how long it took."""

    status: int
    body: Any
    headers: dict[str, str]  # names in lower case
    seconds: float


def request(base: str, method: str, path: str, token: str | None = None, body: Any = None) -> Reply:
    """A request over HTTP; urllib's own 10 s timeout fails the test if monapi hangs."""
    t0 = time.monotonic()
    status, data, headers = call(base, method, path, token, body)
    return Reply(status, data, {k.lower(): v for k, v in headers.items()}, time.monotonic() - t0)


def assert_unavailable(reply: Reply, within: float) -> None:
    """A 503 in the one error shape, with Retry-After, answered within ``within`` seconds."""
    assert reply.status == 503, (reply.status, reply.body)
    assert SHAPE <= set(reply.body) <= SHAPE | {"details"}, reply.body
    assert reply.body["status"] == 503
    assert reply.body["code"] == "store_unavailable", reply.body
    assert reply.body["request_id"] == reply.headers["x-request-id"]
    assert int(reply.headers["retry-after"]) >= 1
    assert reply.seconds < within, f"took {reply.seconds:.1f} s"


def assert_client_unavailable(resp: Any, seconds: float, within: float) -> None:
    """:func:`assert_unavailable` for a Flask test-client response."""
    body = check_shape(resp, 503)
    assert body["code"] == "store_unavailable", body
    assert int(resp.headers["Retry-After"]) >= 1
    assert seconds < within, f"took {seconds:.1f} s"


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """What ``fn()`` returned, and the seconds it took."""
    t0 = time.monotonic()
    result = fn()
    return result, time.monotonic() - t0


def poll(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Wait until ``check()`` holds (at most ``timeout`` s); the seconds it took."""
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - t0


class Clock:
    """Distinct point timestamps, so that every accepted push adds exactly one point."""

    def __init__(self) -> None:
        self.next = int(time.time()) - 1800

    def points(self, value: float = 1.0) -> dict[str, Any]:
        self.next += 1
        return {"points": [{"timestamp": self.next, "fields": {"load1": value}}]}


def count_query(server_id: int) -> str:
    return f"/api/v1/servers/{server_id}/metrics?fields=load1&start=-1h&step=1h&agg=count"


def stored(series: dict[str, Any]) -> int:
    """How many points a count query found."""
    return sum(int(p[1] or 0) for s in series["series"] for p in s["points"])


@contextmanager
def serving(
    tmp: Path, env: dict[str, str], count: int = 1, proxies: Iterable[TcpProxy] = ()
) -> Iterator[list[str]]:
    """``count`` instances of ``monapi serve`` (two workers each) on one environment; yields their
    base URLs. They are stopped afterwards, with the proxies forwarding again first, so that
    they can write what they hold before they exit."""
    procs: list[subprocess.Popen[bytes]] = []
    bases: list[str] = []
    try:
        for i in range(count):
            data = tmp / f"serve{i}"
            data.mkdir()
            proc, base, _ = start_instance(data, env)
            procs.append(proc)
            bases.append(base)
        yield bases
    finally:
        for proxy in proxies:
            proxy.restore()
        for proc in procs:
            engines.stop_group(proc)


HOST = {"hostname": "web-01", "ip_address": "192.0.2.10"}


def assert_not_ready(reply: Reply, check: str, backend: str) -> None:
    """/readyz refusing: 503 in the one shape, naming the check and its backend."""
    assert reply.status == 503, reply.body
    assert reply.body["code"] == "not_ready"
    assert [d["location"] for d in reply.body["details"]] == [check]
    assert f"{check} ({backend})" in reply.body["error"]
    assert reply.body["request_id"] == reply.headers["x-request-id"]
    assert int(reply.headers["retry-after"]) >= 1


def all_ready(bases: list[str], rounds: int = 4) -> bool:
    """/readyz is 200 on ``rounds`` requests in a row to each instance (so on its workers)."""
    return all(request(b, "GET", "/readyz").status == 200 for _ in range(rounds) for b in bases)


def admin_token(tmp: Path) -> str:
    """The admin token the first instance printed on its first start."""
    words = (tmp / "serve0" / "out.log").read_text().split()
    return next(w for w in words if w.startswith("mka_"))


@dataclass
class Proxied:
    """A store reached through a proxy: the proxy, and the URL that goes through it."""

    proxy: TcpProxy
    url: str


@pytest.fixture
def pg_proxied(pg_databases: engines.PostgresDatabases) -> Iterator[Proxied]:
    """A fresh PostgreSQL database, reached through a proxy (``postgresql://`` URL)."""
    url = make_url(pg_databases.new())
    proxy = TcpProxy(url.port or 5432, url.host or "127.0.0.1")
    try:
        through = url.set(drivername="postgresql", host="127.0.0.1", port=proxy.port)
        yield Proxied(proxy, through.render_as_string(hide_password=False))
    finally:
        shutdown_apps(proxy)
        proxy.close()
        pg_databases.drop(url.render_as_string(hide_password=False))


@pytest.fixture
def redis_proxied(redis_url: str) -> Iterator[Proxied]:
    """This session's Redis db, reached through a proxy."""
    parts = urllib.parse.urlsplit(redis_url)
    proxy = TcpProxy(parts.port or 6379, parts.hostname or "127.0.0.1")
    try:
        yield Proxied(proxy, f"redis://127.0.0.1:{proxy.port}{parts.path}")
    finally:
        shutdown_apps(proxy)
        proxy.close()


def shutdown_apps(proxy: TcpProxy) -> None:
    """Shut down the test's apps while their store still answers: they write what they hold."""
    proxy.restore()
    while _created:
        shutdown(_created.pop())


def test_the_proxy_cuts_hangs_and_restores_on_the_same_port() -> None:
    """The fault injector itself: forwards, refuses after cut(), swallows after hang(),
    forwards again on the same port after restore()."""
    with socket.create_server(("127.0.0.1", 0)) as upstream:
        upstream.settimeout(5)

        def echo() -> None:
            with contextlib.suppress(OSError):
                while True:
                    conn, _ = upstream.accept()
                    with conn:
                        while data := conn.recv(1024):
                            conn.sendall(data)

        threading.Thread(target=echo, daemon=True).start()
        proxy = TcpProxy(upstream.getsockname()[1])
        try:

            def roundtrip() -> bytes:
                with socket.create_connection(("127.0.0.1", proxy.port), timeout=1) as s:
                    s.sendall(b"ping")
                    return s.recv(4)

            assert roundtrip() == b"ping"
            proxy.cut()
            with pytest.raises(ConnectionRefusedError):
                roundtrip()
            proxy.hang()
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                roundtrip()
            assert time.monotonic() - t0 >= 0.9
            proxy.restore()
            assert roundtrip() == b"ping"
        finally:
            proxy.close()


# The configuration database: PostgreSQL ----------------------------------------------------------
@pytest.mark.slow
def test_config_database_cut_gives_503_and_recovers_without_a_restart(
    tmp_path: Path, pg_proxied: Proxied
) -> None:
    """A real ``monapi serve`` (two workers) on PostgreSQL, whose connections are cut mid-run:
    every endpoint that needs the database answers 503 with Retry-After in the one error shape
    at once (never a 500, never a hang); pushes of a known server are refused the same way
    (without Redis, each request reads the cache versions from the database), so nothing is
    acknowledged unstored; /healthz stays 200 while /readyz is 503 naming config_store. Once the
    database is back, /readyz turns 200 and everything works again in the same processes, with
    nothing stored before lost and nothing refused during the cut stored."""
    proxy = pg_proxied.proxy
    with serving(tmp_path, {"MONAPI_DATABASE_URL": pg_proxied.url}, proxies=[proxy]) as [base]:
        token = admin_token(tmp_path)
        clock = Clock()
        server = request(base, "POST", "/api/v1/servers", token, HOST).body
        key, sid = server["api_key"], server["id"]
        for _ in range(5):
            assert request(base, "POST", "/api/v1/data", key, clock.points()).status == 204
        fields = request(base, "GET", "/api/v1/fields?measurement=system", token).body["items"]
        load5 = next(f for f in fields if f["name"] == "load5")

        proxy.cut()
        attempts = [
            ("GET", "/api/v1/servers", token, None),
            ("GET", f"/api/v1/servers/{sid}", token, None),
            ("POST", "/api/v1/servers", token, {"hostname": "web-02", "ip_address": "192.0.2.2"}),
            ("GET", "/api/v1/fields", token, None),
            ("PATCH", f"/api/v1/fields/{load5['id']}", token, {"enabled": False}),
            ("POST", f"/api/v1/servers/{sid}/rotate-key", token, None),
            ("POST", "/api/v1/enrollment-tokens", token, {"max_uses": 1}),
            ("POST", "/api/v1/data", key, clock.points()),
            ("GET", count_query(sid), key, None),
        ]
        for _ in range(2):  # each at least twice: both workers are likely to answer one
            for method, path, who, body in attempts:
                assert_unavailable(request(base, method, path, who, body), within=3)
            assert request(base, "GET", "/healthz").status == 200
            ready = request(base, "GET", "/readyz")
            assert_not_ready(ready, "config_store", "postgresql")

        proxy.restore()
        took = poll(lambda: all_ready([base]), 15, "/readyz after the database came back")
        assert took < 10
        listed = request(base, "GET", "/api/v1/servers", token).body
        assert [s["hostname"] for s in listed["items"]] == ["web-01"]  # web-02 was refused
        fields = request(base, "GET", "/api/v1/fields?measurement=system", token).body["items"]
        assert next(f for f in fields if f["id"] == load5["id"])["enabled"] is True
        assert stored(request(base, "GET", count_query(sid), key).body) == 5
        assert request(base, "POST", "/api/v1/data", key, clock.points()).status == 204
        assert stored(request(base, "GET", count_query(sid), key).body) == 6
        again = {"hostname": "web-02", "ip_address": "192.0.2.2"}
        assert request(base, "POST", "/api/v1/servers", token, again).status == 201


def test_a_hung_config_database_is_answered_503_within_the_timeouts(
    tmp_path: Path, pg_proxied: Proxied, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process app on PostgreSQL whose server stops answering (a black hole: connections
    accepted, nothing forwarded): requests that need it get 503 after the configured bounds
    (here 1 s for an answer, 2 s to connect: the shipped ones are 5 s and 5 s), never a hang;
    /healthz answers at once; after the database answers again, so does everything, with no
    restart."""
    monkeypatch.setattr(db, "PG_ANSWER_TIMEOUT_S", 1.0)
    monkeypatch.setattr(db, "PG_CONNECT_TIMEOUT_S", 2)
    app, token = make_app(tmp_path / "d", database_url=pg_proxied.url)
    client = app.test_client()
    server = register_server(client, token)
    key = server["api_key"]
    clock = Clock()
    assert push(client, key, clock.points()).status_code == 204

    pg_proxied.proxy.hang()
    attempts: list[Callable[[Flask], Any]] = [
        lambda a: a.test_client().get("/api/v1/servers", headers=bearer(token)),
        lambda a: a.test_client().get("/api/v1/fields", headers=bearer(token)),
        lambda a: a.test_client().post(
            "/api/v1/servers",
            json={"hostname": "b", "ip_address": "192.0.2.3"},
            headers=bearer(token),
        ),
        lambda a: push(a.test_client(), key, clock.points()),
    ]
    with ThreadPoolExecutor(len(attempts) + 1) as pool:
        running = [pool.submit(timed, lambda f=f: f(app)) for f in attempts]
        ready = pool.submit(timed, lambda: app.test_client().get("/readyz"))
        healthy, seconds = timed(lambda: app.test_client().get("/healthz"))
        assert healthy.status_code == 200 and seconds < 0.5
        # An answer times out (1 s), then a new connection does (2 s); a push is tried on the
        # hot path first, then once more in Flask (2 s more).
        for job in running:
            resp, seconds = job.result(timeout=30)
            assert_client_unavailable(resp, seconds, within=1 + 2 + 2 + 2)
        resp, seconds = ready.result(timeout=30)
        assert resp.status_code == 503 and seconds < 1 + 2 + 2
        assert resp.get_json()["details"][0]["location"] == "config_store"

    pg_proxied.proxy.restore()
    poll(lambda: client.get("/readyz").status_code == 200, 10, "/readyz after the hang")
    listed = client.get("/api/v1/servers", headers=bearer(token)).get_json()
    assert [s["hostname"] for s in listed["items"]] == ["web-01"]  # "b" was refused
    assert push(client, key, clock.points()).status_code == 204
    got = client.get(count_query(server["id"]), headers=bearer(key)).get_json()
    assert stored(got) == 2  # the one before and the one after: none from the hang


def test_with_redis_a_known_key_keeps_pushing_during_a_database_cut(
    tmp_path: Path, pg_proxied: Proxied, redis_url: str
) -> None:
    """In-process app on PostgreSQL (through the proxy) and Redis, the database cut: pushes of a
    known server are taken (its key record and the versions come from the caches; the check of
    the versions against the database fails and Redis' stand) and every one is stored; calls
    that need the database are 503; after restore() everything works again."""
    app, token = make_app(
        tmp_path / "d",
        database_url=pg_proxied.url,
        redis_url=redis_url,
        redis_prefix=f"f{uuid.uuid4().hex[:8]}",
    )
    client = app.test_client()
    server = register_server(client, token)
    key, sid = server["api_key"], server["id"]
    clock = Clock()
    assert push(client, key, clock.points()).status_code == 204

    pg_proxied.proxy.cut()
    app.extensions["monapi.cache"].reconcile_s = 0.1  # the check runs during the cut (5 s)
    taken = 0
    for _ in range(10):
        resp = push(client, key, clock.points())
        assert resp.status_code == 204, resp.get_json()
        taken += 1
        time.sleep(0.15)  # over 1.5 s: the versions are re-read (0.5 s) and checked
    resp, seconds = timed(lambda: client.get("/api/v1/servers", headers=bearer(token)))
    assert_client_unavailable(resp, seconds, within=3)
    check_shape(client.get("/readyz"), 503)

    pg_proxied.proxy.restore()
    poll(lambda: client.get("/readyz").status_code == 200, 10, "/readyz after the cut")
    assert stored(client.get(count_query(sid), headers=bearer(key)).get_json()) == 1 + taken
    assert push(client, key, clock.points()).status_code == 204


# The configuration database: SQLite ------------------------------------------------------------
LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
conn.execute("ROLLBACK")
"""


@contextmanager
def write_lock(path: Path) -> Iterator[None]:
    """Another process holds SQLite's write lock on ``path`` until the block ends."""
    with subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            assert proc.stdout.readline() == b"locked\n"  # bounded by sqlite3's own 5 s timeout
            yield
        finally:
            proc.stdin.close()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_a_locked_sqlite_config_store_refuses_writes_with_503_and_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process app on the embedded SQLite store while another process holds its write lock
    (``BEGIN EXCLUSIVE``): writes answer 503 with Retry-After after the busy timeout (here 1 s;
    30 s shipped), reads and pushes go on (WAL readers are not blocked, the points go to the
    time-series file), last-seen times wait in the process; once the lock is released, writes
    work and the waiting last-seen time reaches the database."""
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_S", 1.0)
    app, token = make_app(tmp_path / "d")
    client = app.test_client()
    server = register_server(client, token)
    key, sid = server["api_key"], server["id"]
    field = client.get("/api/v1/fields?measurement=system", headers=bearer(token)).get_json()
    field_id = next(f["id"] for f in field["items"] if f["name"] == "load5")
    clock = Clock()
    database = tmp_path / "d" / "monapi.db"

    with write_lock(database):
        body = {"hostname": "web-02", "ip_address": "192.0.2.2"}
        resp, seconds = timed(
            lambda: client.post("/api/v1/servers", json=body, headers=bearer(token))
        )
        assert_client_unavailable(resp, seconds, within=1 + 3)
        resp, seconds = timed(
            lambda: client.patch(
                f"/api/v1/fields/{field_id}", json={"enabled": False}, headers=bearer(token)
            )
        )
        assert_client_unavailable(resp, seconds, within=1 + 3)
        pushed_at = time.time()
        assert push(client, key, clock.points()).status_code == 204
        assert stored(client.get(count_query(sid), headers=bearer(key)).get_json()) == 1
        listed = client.get("/api/v1/servers", headers=bearer(token))  # tries to flush: locked
        assert listed.status_code == 200
        assert listed.get_json()["items"][0]["status"] == "online"
        assert client.get("/readyz").status_code == 200  # it answers reads
        assert last_seen_in(database, sid) is None

    assert client.post("/api/v1/servers", json=body, headers=bearer(token)).status_code == 201
    assert client.get("/api/v1/servers", headers=bearer(token)).status_code == 200  # flushes
    seen = last_seen_in(database, sid)
    assert seen is not None and seen >= pushed_at - 1


def last_seen_in(database: Path, server_id: int) -> float | None:
    """The last-seen time the configuration store holds (not the process's buffer)."""
    with contextlib.closing(sqlite3.connect(database, timeout=5)) as conn:
        row = conn.execute("SELECT last_seen FROM servers WHERE id = ?", (server_id,)).fetchone()
    return None if row is None or row[0] is None else float(row[0])


# Redis --------------------------------------------------------------------------------------------
SHARED_SECRETS = {
    "MONAPI_KEY_PEPPER": "faults-pepper-" + "p" * 20,
    "MONAPI_SECRET_KEY": "faults-secret-" + "s" * 20,
}


def codes(bases: list[str], key: str, body: dict[str, Any], n: int = 16) -> set[int]:
    """The statuses of ``n`` pushes spread over the instances (and so over their workers)."""
    return {
        request(bases[i % len(bases)], "POST", "/api/v1/data", key, body).status for i in range(n)
    }


def last_seen(base: str, token: str, server_id: int) -> float:
    """The server's last-seen time as the API shows it (0 if never seen)."""
    shown = request(base, "GET", f"/api/v1/servers/{server_id}", token).body["last_seen"]
    return datetime.fromisoformat(shown).timestamp() if shown else 0.0


@pytest.mark.slow
def test_redis_cut_mid_run_keeps_every_worker_serving_and_seeing_changes(
    tmp_path: Path,
    pg_databases: engines.PostgresDatabases,
    redis_url: str,
    redis_proxied: Proxied,
) -> None:
    """Two real instances (two workers each) sharing PostgreSQL, Redis (through the proxy) and
    the embedded time-series file. Redis is cut mid-run: pushes, reads and admin changes go on;
    a key rotated and a field disabled meanwhile are refused by every worker of every instance
    within a second (the caches fall back to the database per process); /readyz is 503 naming
    the cache; last-seen times still reach the database. After restore() /readyz is 200 again,
    what changed while Redis was away still holds everywhere, and last-seen times go through
    Redis again."""
    proxy = redis_proxied.proxy
    prefix = f"faults{uuid.uuid4().hex[:8]}"
    db_url = pg_databases.new()
    env = {
        "MONAPI_DATABASE_URL": db_url,
        "MONAPI_REDIS_URL": redis_proxied.url,
        "MONAPI_REDIS_PREFIX": prefix,
        "MONAPI_TSDB_PATH": str(tmp_path / "tsdb.sqlite3"),
        **SHARED_SECRETS,
    }
    shared = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        with serving(tmp_path, env, count=2, proxies=[proxy]) as bases:
            token = admin_token(tmp_path)
            clock = Clock()
            server = request(bases[0], "POST", "/api/v1/servers", token, HOST).body
            old_key, sid = server["api_key"], server["id"]
            assert codes(bases, old_key, clock.points(), n=4) == {204}
            fields = request(bases[0], "GET", "/api/v1/fields?measurement=system", token).body
            load5 = next(f for f in fields["items"] if f["name"] == "load5")

            proxy.cut()
            for i in range(12):
                reply = request(bases[i % 2], "POST", "/api/v1/data", old_key, clock.points())
                assert reply.status == 204 and reply.seconds < 3
            assert stored(request(bases[1], "GET", count_query(sid), old_key).body) == 1 + 12
            for base in bases:
                assert request(base, "GET", "/api/v1/servers", token).status == 200
                for _ in range(3):
                    assert_not_ready(request(base, "GET", "/readyz"), "cache", "redis")
                    assert request(base, "GET", "/healthz").status == 200
            rotated = request(bases[0], "POST", f"/api/v1/servers/{sid}/rotate-key", token)
            assert rotated.status == 200
            new_key = rotated.body["api_key"]
            disabled = request(
                bases[1], "PATCH", f"/api/v1/fields/{load5['id']}", token, {"enabled": False}
            )
            assert disabled.status == 200
            # A worker may go on with the versions it read last for up to half a second.
            late = clock.points()  # every late acceptance stores this one point
            seen: set[int] = set()

            def refused_everywhere() -> bool:
                got = codes(bases, old_key, late)
                seen.update(got)
                return got == {401}

            took = poll(refused_everywhere, 1.5, "the old key refused everywhere")
            assert seen <= {204, 401}
            assert codes(bases, old_key, clock.points()) == {401}
            accepted = 1 + 12 + (204 in seen)
            load5_point = {"fields": {"load5": 1.0}}
            assert codes(bases, new_key, load5_point) == {422}
            pushed_at = time.time()
            assert codes(bases, new_key, clock.points(), n=4) == {204}
            poll(
                lambda: all(last_seen(b, token, sid) >= pushed_at for b in bases),
                5,
                "last-seen times reaching the database while Redis is away",
            )

            proxy.restore()
            poll(lambda: all_ready(bases), 10, "/readyz after Redis came back")
            for _ in range(3):  # and it stays so: no stale copy in Redis brings them back
                assert codes(bases, old_key, clock.points()) == {401}
                assert codes(bases, new_key, load5_point) == {422}
            pushed_at = time.time()
            assert codes(bases, new_key, clock.points(), n=4) == {204}
            poll(
                lambda: float(shared.hget(f"{prefix}:seen", str(sid)) or 0) >= pushed_at,
                5,
                "last-seen times in Redis again",
            )
            assert all(last_seen(b, token, sid) >= pushed_at for b in bases)
            assert stored(request(bases[0], "GET", count_query(sid), new_key).body) == accepted + 2
            assert took < 1.5
    finally:
        shared.close()
        pg_databases.drop(db_url)


def test_changes_made_while_redis_was_away_still_hold_once_it_is_back(
    tmp_path: Path, redis_proxied: Proxied
) -> None:
    """In-process app on Redis: a key rotated and a field disabled while Redis did not answer
    stay so the moment Redis answers again. Redis still holds copies of the old key record and
    field configuration under the versions it last knew; the process must not take those
    versions (and copies) back as current until its next periodic comparison with the database
    (every 5 s; this test is over well before)."""
    app, token = make_app(
        tmp_path / "d", redis_url=redis_proxied.url, redis_prefix=f"f{uuid.uuid4().hex[:8]}"
    )
    client = app.test_client()
    server = register_server(client, token)
    old_key, sid = server["api_key"], server["id"]
    clock = Clock()
    load5_point = {"fields": {"load5": 1.0}}
    assert push(client, old_key, clock.points()).status_code == 204
    assert push(client, old_key, load5_point).status_code == 204
    fields = client.get("/api/v1/fields?measurement=system", headers=bearer(token)).get_json()
    load5 = next(f for f in fields["items"] if f["name"] == "load5")

    redis_proxied.proxy.cut()
    resp = client.post(f"/api/v1/servers/{sid}/rotate-key", headers=bearer(token))
    new_key = resp.get_json()["api_key"]
    patch = {"enabled": False}
    assert client.patch(f"/api/v1/fields/{load5['id']}", json=patch, headers=bearer(token))
    assert push(client, old_key, clock.points()).status_code == 401
    assert push(client, new_key, load5_point).status_code == 422

    redis_proxied.proxy.restore()
    poll(lambda: client.get("/readyz").status_code == 200, 10, "/readyz after Redis came back")
    assert push(client, old_key, clock.points()).status_code == 401
    assert push(client, new_key, load5_point).status_code == 422
    assert push(client, new_key, clock.points()).status_code == 204


def test_while_redis_hangs_a_request_waits_for_it_at_most_once(
    tmp_path: Path, redis_proxied: Proxied
) -> None:
    """In-process app on Redis that stops answering (a black hole): /readyz says so after one
    Redis timeout (1 s), and every request, for longer than the window in which requests leave
    Redis alone after a failure, answers within one timeout: reads, the server list (which
    also writes buffered last-seen times) and pushes. After restore() /readyz is 200."""
    app, token = make_app(
        tmp_path / "d", redis_url=redis_proxied.url, redis_prefix=f"f{uuid.uuid4().hex[:8]}"
    )
    client = app.test_client()
    server = register_server(client, token)
    key, sid = server["api_key"], server["id"]
    clock = Clock()
    assert push(client, key, clock.points()).status_code == 204

    redis_proxied.proxy.hang()
    calls: list[tuple[str, Callable[[], Any]]] = [
        ("list", lambda: client.get("/api/v1/servers", headers=bearer(token))),
        ("push", lambda: push(client, key, clock.points())),
        ("server", lambda: client.get(f"/api/v1/servers/{sid}", headers=bearer(token))),
        ("fields", lambda: client.get("/api/v1/fields", headers=bearer(token))),
    ]
    slow: list[tuple[str, float]] = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.5:
        for name, fn in calls:
            resp, seconds = timed(fn)
            assert resp.status_code in (200, 204), (name, resp.get_json())
            if seconds > 1.5:
                slow.append((name, round(seconds, 1)))
    assert not slow, f"requests that waited for Redis more than once: {slow}"
    resp, seconds = timed(lambda: client.get("/readyz"))
    assert resp.status_code == 503 and seconds < 1.5
    assert resp.get_json()["details"][0]["location"] == "cache"

    redis_proxied.proxy.restore()
    poll(lambda: client.get("/readyz").status_code == 200, 10, "/readyz after Redis came back")


@pytest.mark.parametrize("fallback", ["local", "open", "closed"])
def test_rate_limits_while_redis_is_away_follow_the_fallback_setting(
    tmp_path: Path, redis_url: str, redis_proxied: Proxied, fallback: str
) -> None:
    """In-process app on Redis with a limit of 5 pushes per server key, MONAPI_RATE_LIMIT_FALLBACK
    set, and Redis cut after 2 pushes: ``local`` counts in the process (the 6th push is 429),
    ``open`` lets everything through, ``closed`` answers 503 with Retry-After (and stores
    nothing); requests no limit applies to are served in every mode. After restore() the limit
    is counted in Redis again: it still holds the 2 pushes from before, so 3 more pass."""
    prefix = f"f{uuid.uuid4().hex[:8]}"
    app, token = make_app(
        tmp_path / "d",
        redis_url=redis_proxied.url,
        redis_prefix=prefix,
        rate_limit_server="5/hour",
        rate_limit_fallback=fallback,
    )
    client = app.test_client()
    server = register_server(client, token)
    key, sid = server["api_key"], server["id"]
    clock = Clock()
    for _ in range(2):
        assert push(client, key, clock.points()).status_code == 204
    with contextlib.closing(redis.Redis.from_url(redis_url, socket_timeout=5)) as shared:
        assert shared.exists(f"{prefix}:rl:key:{key.split('_')[1]}")

    redis_proxied.proxy.cut()
    if fallback == "local":
        for _ in range(5):
            assert push(client, key, clock.points()).status_code == 204
        refused = push(client, key, clock.points())
        check_shape(refused, 429)
        assert int(refused.headers["Retry-After"]) >= 1
        accepted = 2 + 5
    elif fallback == "open":
        for _ in range(8):
            assert push(client, key, clock.points()).status_code == 204
        accepted = 2 + 8
    else:
        for _ in range(2):
            resp, seconds = timed(lambda: push(client, key, clock.points()))
            assert_client_unavailable(resp, seconds, within=3)
        accepted = 2
    assert client.get("/api/v1/servers", headers=bearer(token)).status_code == 200
    check_shape(client.get("/readyz"), 503)

    redis_proxied.proxy.restore()
    poll(lambda: client.get("/readyz").status_code == 200, 10, "/readyz after Redis came back")
    for _ in range(3):
        assert push(client, key, clock.points()).status_code == 204
    check_shape(push(client, key, clock.points()), 429)
    got = client.get(count_query(sid), headers=bearer(token)).get_json()
    assert stored(got) == accepted + 3


def test_the_dashboard_answers_503_while_the_config_database_is_cut(
    tmp_path: Path, pg_proxied: Proxied
) -> None:
    """A signed-in dashboard page while PostgreSQL does not answer: the dashboard's 503 page
    with Retry-After (its own error handler used to turn this into a 500), and the page again
    once the database is back, with the same session."""
    from .test_dashboard import error_text, signed_in

    app, token = make_app(tmp_path / "d", database_url=pg_proxied.url)
    register_server(app.test_client(), token)
    b = signed_in(app)
    assert b.get("/").status_code == 200

    pg_proxied.proxy.cut()
    resp = b.get("/")
    assert resp.status_code == 503, resp.text[:500]
    assert resp.mimetype == "text/html" and int(resp.headers["Retry-After"]) >= 1
    assert any("configuration store" in m for m in error_text(resp.text)), resp.text[:800]
    assert "Traceback" not in resp.text and str(pg_proxied.proxy.port) not in resp.text

    pg_proxied.proxy.restore()
    poll(lambda: b.get("/").status_code == 200, 10, "the dashboard after the cut")
