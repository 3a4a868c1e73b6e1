"""Pooled keep-alive HTTP to a time-series engine, with its failures mapped onto ours.

A refused connection, a timeout, a reset, a 5xx or a 429 raise StoreUnavailable (the API answers
503 with Retry-After): the engine's answer is unknown or "later", so nothing may be reported
stored. Other 4xx answers are returned to the backend, which knows what they mean.

Plain ``http://`` engines (the usual case: on loopback or a private network) are reached with
:class:`RawPool`, a small HTTP/1.1 keep-alive client on sockets: an agent push costs monapi one
engine request (or a share of one, see :mod:`.groupcommit`), and urllib3 plus ``http.client``
spent about 0.4 ms of Python per request on URL parsing, retry objects and e-mail style header
parsing. ``https://`` engines go through urllib3 and its TLS handling.
"""

from __future__ import annotations

import gzip
import ipaddress
import logging
import select
import socket
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error

from ..errors import StoreUnavailable

log = logging.getLogger("monapi.tsdb.http")
DEFAULT_RETRY_AFTER = 5


class EngineResponse:
    """Status, headers and the whole body of an engine's answer."""

    __slots__ = ("data", "headers", "status")

    def __init__(self, status: int, headers: Mapping[str, str], data: bytes) -> None:
        self.status = status
        self.headers = headers
        self.data = data

    def text(self, limit: int = 500) -> str:
        return self.data[:limit].decode("utf-8", "replace").strip()


class EngineHTTP:
    """One engine's HTTP endpoint: a pool of keep-alive connections shared by the threads of a
    worker process."""

    def __init__(
        self,
        name: str,
        base_url: str,
        timeout_s: float,
        pool_size: int,
        headers: Mapping[str, str] | None = None,
        compression: str = "auto",
    ) -> None:
        """``compression``: gzip request bodies sent with ``compress=True`` ("gzip"), never
        ("none"), or unless the engine is on a loopback address ("auto")."""
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.gzip = compression == "gzip" or (
            compression == "auto" and not is_loopback(self.base_url)
        )
        self.timeout = urllib3.Timeout(connect=min(timeout_s, 5.0), read=timeout_s)
        self.headers = dict(headers or {})
        self.pool = urllib3.PoolManager(
            num_pools=4, maxsize=pool_size, block=False, timeout=self.timeout, retries=False
        )
        parts = urlsplit(self.base_url)
        self.raw: RawPool | None = None
        if parts.scheme == "http" and parts.hostname:
            self.raw = RawPool(
                parts.hostname,
                parts.port or 80,
                connect_timeout=min(timeout_s, 5.0),
                read_timeout=timeout_s,
                maxsize=pool_size,
                path_prefix=parts.path.rstrip("/"),
            )

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        compress: bool = False,
        idempotent: bool = True,
    ) -> EngineResponse:
        """Send a request; StoreUnavailable unless the engine gave a definite non-5xx answer.

        ``idempotent`` requests are sent again once if a pooled connection turns out to be
        closed before an answer came (the engine's keep-alive timeout); others only when the
        connection could not be made at all.
        """
        url = self.base_url + path
        if params:
            url += "?" + urlencode(params)
        hdrs = {**self.headers, **(headers or {})}
        if compress and body and self.gzip:
            body = gzip.compress(body, compresslevel=1)
            hdrs["Content-Encoding"] = "gzip"
        if self.raw is not None:
            try:
                status, rheaders, data = self.raw.request(
                    method, url[len(self.base_url) :], body, hdrs, idempotent
                )
            except OSError as exc:
                raise StoreUnavailable(
                    f"{self.name} at {self.base_url} did not answer: {_short(_os_reason(exc))}",
                    retry_after=DEFAULT_RETRY_AFTER,
                ) from exc
            return self._checked(EngineResponse(status, rheaders, data))
        retries = urllib3.Retry(
            total=2,
            connect=2,
            read=1 if idempotent else 0,
            status=0,
            other=0,
            allowed_methods=None,
            raise_on_status=False,
            backoff_factor=0,
        )
        try:
            resp = self.pool.request(
                method,
                url,
                body=body,
                headers=hdrs,
                retries=retries,
                preload_content=True,
                redirect=False,
            )
        except Urllib3Error as exc:
            reason = getattr(exc, "reason", None) or exc
            raise StoreUnavailable(
                f"{self.name} at {self.base_url} did not answer: {_short(reason)}",
                retry_after=DEFAULT_RETRY_AFTER,
            ) from exc
        return self._checked(EngineResponse(resp.status, resp.headers, resp.data or b""))

    def _checked(self, out: EngineResponse) -> EngineResponse:
        if out.status >= 500 or out.status == 429:
            raise StoreUnavailable(
                f"{self.name} answered {out.status}: {out.text(300)}",
                retry_after=_retry_after(out.headers.get("Retry-After")),
            )
        return out

    def close(self) -> None:
        self.pool.clear()
        if self.raw is not None:
            self.raw.close()


class Headers(dict[str, str]):
    """Response headers; names are looked up without regard to case."""

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return super().get(key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key.lower() if isinstance(key, str) else key)


class StaleConnection(ConnectionError):
    """A pooled connection was closed by the engine before any answer came."""


class RawPool:
    """HTTP/1.1 with keep-alive to one ``http://`` host: the connections of a worker process,
    shared by its threads (each request takes one, gives it back when the answer was whole).

    Failures raise OSError (ConnectionError, TimeoutError, ...). A request on a pooled
    connection the engine had closed (its keep-alive timeout) is sent again on a new one when
    it is idempotent, or when nothing of it can have reached the engine; a request whose
    connection cannot be made is tried once more.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout: float,
        read_timeout: float,
        maxsize: int,
        path_prefix: str = "",
    ) -> None:
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.maxsize = maxsize
        self.path_prefix = path_prefix
        host_header = f"[{host}]" if ":" in host else host
        if port != 80:
            host_header += f":{port}"
        self._host_line = f"Host: {host_header}\r\n".encode()
        self._idle: list[socket.socket] = []
        self._lock = threading.Lock()

    def request(
        self,
        method: str,
        target: str,
        body: bytes | None,
        headers: Mapping[str, str],
        idempotent: bool = True,
    ) -> tuple[int, Headers, bytes]:
        head = [f"{method} {self.path_prefix}{target} HTTP/1.1\r\n".encode(), self._host_line]
        for k, v in headers.items():
            head.append(f"{k}: {v}\r\n".encode("latin-1"))
        if body is not None or method in ("POST", "PUT"):
            head.append(f"Content-Length: {len(body or b'')}\r\n".encode())
        head.append(b"\r\n")
        request = b"".join(head)
        connect_tries = 2
        while True:
            sock, reused = self._take()
            if sock is None:
                try:
                    sock = socket.create_connection(
                        (self.host, self.port), timeout=self.connect_timeout
                    )
                except OSError:
                    connect_tries -= 1
                    if connect_tries < 0:
                        raise
                    continue
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                sock.settimeout(self.read_timeout)
                if body:
                    sock.sendall(request + body if len(body) < 65536 else request)
                    if len(body) >= 65536:
                        sock.sendall(body)
                else:
                    sock.sendall(request)
                status, rheaders, data, keep = _read_response(sock, method)
            except (StaleConnection, BrokenPipeError, ConnectionResetError) as exc:
                sock.close()
                if reused and (idempotent or isinstance(exc, BrokenPipeError)):
                    continue  # the engine closed an idle connection: once more on a new one
                raise
            except BaseException:
                sock.close()
                raise
            if keep:
                self._give(sock)
            else:
                sock.close()
            return status, rheaders, data

    def _take(self) -> tuple[socket.socket | None, bool]:
        """An idle connection that is still open, or None. A connection the engine closed
        while idle (its keep-alive timeout) reads as ready, so it is dropped here rather than
        found dead with a request on it, which a non-idempotent request could not repeat."""
        while True:
            with self._lock:
                if not self._idle:
                    return None, False
                sock = self._idle.pop()
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            if not poller.poll(0):
                return sock, True
            sock.close()  # closed by the engine, or unexpected bytes: not usable

    def _give(self, sock: socket.socket) -> None:
        with self._lock:
            if len(self._idle) < self.maxsize:
                self._idle.append(sock)
                return
        sock.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for sock in idle:
            sock.close()

    def __del__(self) -> None:  # a store dropped without close(): no socket left open
        for sock in self._idle:
            sock.close()


_MAX_HEAD = 65536


def _read_response(sock: socket.socket, method: str) -> tuple[int, Headers, bytes, bool]:
    """Status, headers, body and whether the connection can be used again."""
    buf = b""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            break
        if len(buf) > _MAX_HEAD:
            raise ConnectionError("answer headers too long")
        chunk = sock.recv(65536)
        if not chunk:
            if not buf:
                raise StaleConnection("connection closed before an answer")
            raise ConnectionError("connection closed in the middle of an answer")
        buf += chunk
    lines = buf[:end].decode("latin-1").split("\r\n")
    rest = buf[end + 4 :]
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ConnectionError(f"not an HTTP answer: {lines[0][:80]!r}")
    status = int(parts[1])
    headers = Headers()
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    keep = parts[0] == "HTTP/1.1" and (headers.get("connection") or "").lower() != "close"
    if status in (204, 304) or 100 <= status < 200 or method == "HEAD":
        return status, headers, b"", keep and not rest
    if "chunked" in (headers.get("transfer-encoding") or "").lower():
        data, rest = _read_chunked(sock, rest)
        return status, headers, data, keep and not rest
    length = headers.get("content-length")
    if length is not None and length.isdigit():
        n = int(length)
        parts_read = [rest]
        have = len(rest)
        while have < n:
            chunk = sock.recv(min(n - have, 1 << 20))
            if not chunk:
                raise ConnectionError("connection closed in the middle of an answer")
            parts_read.append(chunk)
            have += len(chunk)
        data = b"".join(parts_read)
        return status, headers, data[:n], keep and have == n
    # No length: the body ends when the engine closes the connection.
    parts_read = [rest]
    while chunk := sock.recv(1 << 20):
        parts_read.append(chunk)
    return status, headers, b"".join(parts_read), False


def _read_chunked(sock: socket.socket, buf: bytes) -> tuple[bytes, bytes]:
    """The body of a chunked answer, and whatever came after it."""
    out: list[bytes] = []
    while True:
        while b"\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed in the middle of an answer")
            buf += chunk
        size_line, _, buf = buf.partition(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise ConnectionError(f"bad chunk size {size_line[:40]!r}") from None
        if size == 0:
            # Trailers (none expected), up to the empty line.
            while not (buf.startswith(b"\r\n") or b"\r\n\r\n" in buf):
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("connection closed in the middle of an answer")
                buf += chunk
            if buf.startswith(b"\r\n"):
                return b"".join(out), buf[2:]
            return b"".join(out), buf[buf.index(b"\r\n\r\n") + 4 :]
        while len(buf) < size + 2:
            chunk = sock.recv(max(65536, size + 2 - len(buf)))
            if not chunk:
                raise ConnectionError("connection closed in the middle of an answer")
            buf += chunk
        out.append(buf[:size])
        buf = buf[size + 2 :]


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return str(exc) or type(exc).__name__


def is_loopback(url: str) -> bool:
    """Whether a URL's host is this machine (localhost, 127.0.0.0/8, ::1)."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _retry_after(value: str | None) -> int:
    if value and value.strip().isdigit():
        return max(1, min(int(value.strip()), 3600))
    return DEFAULT_RETRY_AFTER


def _short(reason: object) -> str:
    text = str(reason)
    # urllib3 repeats the connection object in its messages; keep the part that says why.
    if ": " in text and "object at 0x" in text:
        text = text.rsplit(": ", 1)[-1]
    return text[:300]
