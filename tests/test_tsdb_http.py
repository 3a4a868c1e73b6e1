"""The keep-alive HTTP/1.1 client monapi uses for plain-http engines (tsdb/http.py RawPool),
against a small scripted HTTP server on loopback: what it sends, how it reads each kind of
answer, when it reuses a connection and how every failure becomes StoreUnavailable."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from monapi.errors import StoreUnavailable
from monapi.tsdb.http import EngineHTTP

from . import engines

# A reply script: given the request bytes and the connection's request number, the chunks to
# send (sent apart, with a short pause) and whether to close the connection afterwards.
Script = Callable[[bytes, int], tuple[list[bytes], bool]]


class ScriptedServer:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[bytes] = []
        self.connections = 0
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        n = 0
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buf) < length:
                    buf += conn.recv(65536)
                body, buf = buf[:length], buf[length:]
                self.requests.append(head + b"\r\n\r\n" + body)
                chunks, close = self.script(head, n)
                n += 1
                for c in chunks:
                    conn.sendall(c)
                    time.sleep(0.002)
                if close:
                    return

    def close(self) -> None:
        self._stop = True
        self.sock.close()


@pytest.fixture
def serve() -> Iterator[Callable[[Script], ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def start(script: Script) -> ScriptedServer:
        srv = ScriptedServer(script)
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.close()


def no_content(head: bytes, n: int) -> tuple[list[bytes], bool]:
    return [b"HTTP/1.1 204 No Content\r\nX-Influxdb-Version: 1.6.7\r\n\r\n"], False


def test_requests_go_over_one_kept_alive_connection(
    serve: Callable[[Script], ScriptedServer],
) -> None:
    srv = serve(no_content)
    http = EngineHTTP("Engine", srv.url + "/prefix", 2, 4)
    try:
        for i in range(3):
            resp = http.request(
                "POST",
                "/write",
                params={"db": "m", "precision": "ns"},
                body=f"m v={i}\n".encode(),
                headers={"Content-Type": "text/plain"},
            )
            assert resp.status == 204 and resp.data == b""
            assert resp.headers.get("x-influxdb-version") == "1.6.7"
            assert resp.headers["X-InfluxDB-Version"] == "1.6.7"
    finally:
        http.close()
    assert srv.connections == 1
    first = srv.requests[0].decode()
    assert first.startswith("POST /prefix/write?db=m&precision=ns HTTP/1.1\r\n")
    assert f"\r\nHost: 127.0.0.1:{srv.port}\r\n" in first
    assert "\r\nContent-Length: 6\r\n" in first and "\r\nContent-Type: text/plain\r\n" in first
    assert first.endswith("\r\n\r\nm v=0\n")


def test_answers_in_pieces_chunked_or_with_a_length_are_read_whole(
    serve: Callable[[Script], ScriptedServer],
) -> None:
    body = b'{"results":[{"statement_id":0}]}'

    def script(head: bytes, n: int) -> tuple[list[bytes], bool]:
        if n == 0:  # a length, with the head and the body split over several packets
            h = f"HTTP/1.1 200 OK\r\ncontent-length: {len(body)}\r\n\r\n".encode()
            return [h[:10], h[10:], body[:5], body[5:]], False
        # chunked, with a chunk extension and a trailer-free end, in pieces
        return [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"5;ext=1\r\n",
            body[:5] + b"\r\n",
            f"{len(body) - 5:x}\r\n".encode() + body[5:] + b"\r\n",
            b"0\r\n\r\n",
        ], False

    srv = serve(script)
    http = EngineHTTP("Engine", srv.url, 2, 4)
    try:
        assert http.request("GET", "/query").data == body
        assert http.request("GET", "/query").data == body
        assert http.request("GET", "/query").data == body  # the connection was left clean
    finally:
        http.close()
    assert srv.connections == 1


def test_an_idle_connection_the_engine_closed_is_replaced_for_an_idempotent_request(
    serve: Callable[[Script], ScriptedServer],
) -> None:
    def script(head: bytes, n: int) -> tuple[list[bytes], bool]:
        # Answers, then closes: the pooled connection is dead by the next request.
        return [b"HTTP/1.1 204 No Content\r\n\r\n"], True

    srv = serve(script)
    http = EngineHTTP("Engine", srv.url, 2, 4)
    try:
        assert http.request("POST", "/write", body=b"m v=1\n").status == 204
        time.sleep(0.05)
        assert http.request("POST", "/write", body=b"m v=2\n", idempotent=True).status == 204
        assert srv.connections == 2
        time.sleep(0.05)
        # Not idempotent (a VictoriaMetrics write): the closed connection is seen before the
        # request is sent, so it goes on a new one.
        assert http.request("POST", "/write", body=b"m v=3\n", idempotent=False).status == 204
        assert srv.connections == 3
        assert len(srv.requests) == 3  # each request reached the server once
    finally:
        http.close()


def test_connection_close_answers_are_not_pooled(serve: Callable[[Script], ScriptedServer]) -> None:
    def script(head: bytes, n: int) -> tuple[list[bytes], bool]:
        return [b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nOK"], True

    srv = serve(script)
    http = EngineHTTP("Engine", srv.url, 2, 4)
    try:
        for _ in range(3):
            assert http.request("GET", "/health").data == b"OK"
        assert http.raw is not None and http.raw._idle == []
    finally:
        http.close()
    assert srv.connections == 3


def test_an_answer_without_a_length_ends_with_the_connection(
    serve: Callable[[Script], ScriptedServer],
) -> None:
    def script(head: bytes, n: int) -> tuple[list[bytes], bool]:
        return [b"HTTP/1.0 200 OK\r\n\r\nall ", b"of it"], True

    srv = serve(script)
    http = EngineHTTP("Engine", srv.url, 2, 4)
    try:
        assert http.request("GET", "/x").data == b"all of it"
    finally:
        http.close()


def test_a_refused_connection_is_store_unavailable() -> None:
    http = EngineHTTP("InfluxDB", f"http://127.0.0.1:{engines.free_port()}", 2, 4)
    refused = r"InfluxDB at .* did not answer: connection refused"
    with pytest.raises(StoreUnavailable, match=refused):
        http.request("POST", "/write", body=b"m v=1\n")


def test_an_engine_that_does_not_answer_times_out(
    serve: Callable[[Script], ScriptedServer],
) -> None:
    srv = serve(lambda head, n: ([], False))  # reads the request, never answers
    http = EngineHTTP("Engine", srv.url, 0.3, 4)
    began = time.monotonic()
    try:
        with pytest.raises(StoreUnavailable, match="did not answer: timed out"):
            http.request("POST", "/write", body=b"m v=1\n")
    finally:
        http.close()
    assert time.monotonic() - began < 2


def test_a_5xx_or_429_is_store_unavailable_with_the_engines_retry_after(
    serve: Callable[[Script], ScriptedServer],
) -> None:
    def script(head: bytes, n: int) -> tuple[list[bytes], bool]:
        status = b"503 Service Unavailable" if n == 0 else b"429 Too Many Requests"
        retry = b"Retry-After: 7\r\n" if n == 0 else b""
        return [b"HTTP/1.1 " + status + b"\r\n" + retry + b"Content-Length: 4\r\n\r\nbusy"], False

    srv = serve(script)
    http = EngineHTTP("Engine", srv.url, 2, 4)
    try:
        with pytest.raises(StoreUnavailable, match="answered 503: busy") as err:
            http.request("POST", "/write", body=b"m v=1\n")
        assert err.value.retry_after == 7
        with pytest.raises(StoreUnavailable, match="answered 429"):
            http.request("POST", "/write", body=b"m v=1\n")
    finally:
        http.close()


def test_garbage_instead_of_http_is_store_unavailable(
    serve: Callable[[Script], ScriptedServer],
) -> None:
    srv = serve(lambda head, n: ([b"SSH-2.0-OpenSSH_9.2\r\n\r\n"], True))
    http = EngineHTTP("Engine", srv.url, 2, 4)
    with pytest.raises(StoreUnavailable, match="not an HTTP answer"):
        http.request("GET", "/ping")


def test_a_connection_closed_mid_answer_is_not_taken_for_a_stale_one(
    serve: Callable[[Script], ScriptedServer],
) -> None:
    srv = serve(lambda head, n: ([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"], True))
    http = EngineHTTP("Engine", srv.url, 2, 4)
    with pytest.raises(StoreUnavailable, match="in the middle of an answer"):
        http.request("GET", "/query")


def test_a_connection_that_dies_with_the_request_on_it_is_retried_only_when_idempotent(
    serve: Callable[[Script], ScriptedServer],
) -> None:
    """The engine reads the second request of a connection and closes it without an answer
    (it went away right then): an idempotent request is sent again on a new connection, a
    non-idempotent one is reported unanswered (it may have been stored)."""

    def script(head: bytes, n: int) -> tuple[list[bytes], bool]:
        if n == 1:
            return [], True
        return [b"HTTP/1.1 204 No Content\r\n\r\n"], False

    srv = serve(script)
    http = EngineHTTP("Engine", srv.url, 2, 4)
    try:
        assert http.request("POST", "/write", body=b"m v=1\n").status == 204
        assert http.request("POST", "/write", body=b"m v=2\n", idempotent=True).status == 204
        assert [r.endswith(b"m v=2\n") for r in srv.requests] == [False, True, True]
        with pytest.raises(StoreUnavailable, match="closed before an answer"):
            http.request("POST", "/write", body=b"m v=3\n", idempotent=False)
        assert sum(r.endswith(b"m v=3\n") for r in srv.requests) == 1
    finally:
        http.close()
