"""HTTP to monapi: register, agent configuration (with its ETag), heartbeat and data pushes.

Every call returns a ``Reply`` whose ``outcome`` tells the runner what to do with the data:
deliver (OK), drop with the server's reason (REJECTED: a 4xx about the data itself, never
retried), split (TOO_LARGE), keep and warn loudly (UNAUTHORIZED: the key was rotated, revoked or
the server disabled), or keep and retry later (RETRY: the server is away, overloaded or broken).
"""

from __future__ import annotations

import enum
import gzip
import http.client
import json
import select
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import __version__

USER_AGENT = f"monapi-agent/{__version__}"
# Bodies above this are gzipped: a spool drain sends thousands of points at once.
GZIP_ABOVE = 4096


class Outcome(enum.Enum):
    """What a reply means for the data that was sent."""

    OK = "ok"
    REJECTED = "rejected"
    TOO_LARGE = "too_large"
    UNAUTHORIZED = "unauthorized"
    RETRY = "retry"


@dataclass(frozen=True, slots=True)
class Reply:
    """One answer (or the failure to get one)."""

    outcome: Outcome
    status: int | None
    message: str
    body: Any = None
    retry_after: float | None = None
    etag: str | None = None


class AgentError(Exception):
    """A call that must succeed failed; the message is for the operator."""


def _detail(d: Any) -> str:
    if not isinstance(d, dict):
        return str(d)
    where = d.get("location") or (
        f"point {d['index']}" + (f" field {d['field']}" if d.get("field") else "")
        if "index" in d
        else d.get("field") or d.get("line") or ""
    )
    return f"{where}: {d.get('reason')}" if where else str(d.get("reason"))


def _message(body: Any, fallback: str) -> str:
    """monapi's error text ({"error": "...", "details": [...]}) with the first three details."""
    if not isinstance(body, dict) or not isinstance(body.get("error"), str):
        return fallback
    text: str = body["error"]
    details = body.get("details")
    if isinstance(details, list) and details:
        shown = "; ".join(_detail(d) for d in details[:3])
        more = f" (and {len(details) - 3} more)" if len(details) > 3 else ""
        text += f" [{shown}{more}]"
    return text


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime  # rare: only an HTTP-date Retry-After

    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def classify(status: int) -> Outcome:
    """The outcome of an HTTP status for pushed data."""
    if status < 300:
        return Outcome.OK
    if status in (401, 403):
        return Outcome.UNAUTHORIZED
    if status == 413:
        return Outcome.TOO_LARGE
    if status in (400, 415, 422):
        return Outcome.REJECTED
    # 404/405 (a proxy in the way, a wrong path prefix), 408, 429 and 5xx: the server or the
    # way to it is not right now; the data is fine, keep it.
    return Outcome.RETRY


class Client:
    """One monapi server over one keep-alive connection (stdlib http.client).

    The standard library rather than urllib3: the agent's resident memory is a goal (under
    30 MB), and urllib3's modules cost about 3.5 MB of it for a single connection to a single
    host. Not thread-safe: the runner calls it from its sender thread only.
    """

    def __init__(
        self,
        url: str,
        key: str | None = None,
        *,
        timeout: float = 10.0,
        ca_file: Path | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.key = key
        self.timeout = timeout
        parts = urlsplit(self.url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._ca_file = ca_file
        self._context: ssl.SSLContext | None = None
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        """Close the keep-alive connection (a later call opens a new one)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        conn = self._conn
        if conn is not None and conn.sock is not None and _dropped(conn.sock):
            # The server closed the idle keep-alive connection (gunicorn does after a few
            # seconds; the agent pushes every interval): open a new one rather than fail.
            self.close()
            conn = None
        if conn is None:
            if self._https:
                if self._context is None:
                    cafile = str(self._ca_file) if self._ca_file else None
                    self._context = ssl.create_default_context(cafile=cafile)
                conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=timeout, context=self._context
                )
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
            self._conn = conn
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Reply:
        hdrs = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        token = token or self.key
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            hdrs["Content-Type"] = "application/json"
            if len(data) > GZIP_ABOVE:
                data = gzip.compress(data, 1)
                hdrs["Content-Encoding"] = "gzip"
        hdrs.update(headers or {})
        seconds = timeout or self.timeout
        for attempt in (1, 2):
            conn = self._connection(seconds)
            reused = conn.sock is not None
            try:
                conn.request(method, self._prefix + path, body=data, headers=hdrs)
                resp = conn.getresponse()
                raw = resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                if reused and attempt == 1:
                    continue  # a keep-alive connection closed under us: once more, fresh
                return Reply(Outcome.RETRY, None, f"{self.url} unreachable: {exc}")
            except TimeoutError:
                self.close()
                return Reply(Outcome.RETRY, None, f"{self.url} did not answer within {seconds:g}s")
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                return Reply(Outcome.RETRY, None, f"{self.url} unreachable: {exc}")
            if resp.will_close:
                self.close()
            break
        status = resp.status
        parsed: Any = None
        if raw:
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = None
        text = _message(parsed, f"HTTP {status} {resp.reason or ''}".strip())
        return Reply(
            classify(status),
            status,
            text,
            parsed,
            _retry_after(resp.getheader("Retry-After")),
            resp.getheader("ETag"),
        )

    # -- the calls ----------------------------------------------------------------------------

    def push(self, points: list[dict[str, Any]], timeout: float | None = None) -> Reply:
        """POST points to /api/v1/data."""
        return self._request("POST", "/api/v1/data", body={"points": points}, timeout=timeout)

    def agent_config(self, etag: str | None) -> Reply:
        """GET /api/v1/agent/config; status 304 (and body None) when ``etag`` still matches."""
        headers = {"If-None-Match": f'"{etag}"'} if etag else {}
        reply = self._request("GET", "/api/v1/agent/config", headers=headers)
        if reply.etag:
            tag = reply.etag.removeprefix("W/").strip('"')
            return Reply(
                reply.outcome, reply.status, reply.message, reply.body, reply.retry_after, tag
            )
        return reply

    def heartbeat(self, uptime: int) -> Reply:
        """POST /api/v1/agent/heartbeat; the reply carries the current config ETag."""
        return self._request(
            "POST",
            "/api/v1/agent/heartbeat",
            body={"agent_version": __version__, "uptime": uptime},
        )

    def register(
        self,
        enroll_token: str,
        hostname: str,
        ip_address: str,
        labels: dict[str, str],
        interval: int | None = None,
    ) -> dict[str, Any]:
        """POST /api/v1/servers with an enrollment token; the reply (with api_key) or AgentError."""
        reply = self._request(
            "POST",
            "/api/v1/servers",
            token=enroll_token,
            body={"hostname": hostname, "ip_address": ip_address, "labels": labels}
            | ({"interval": interval} if interval else {}),
        )
        if reply.status == 201 and isinstance(reply.body, dict) and "api_key" in reply.body:
            return reply.body
        if reply.status is None:
            raise AgentError(f"cannot register: {reply.message}")
        hints = {
            401: "the enrollment token is wrong, expired, used up or revoked",
            403: "this token may not register servers (use an enrollment token, mke_...)",
            409: f"a server named {hostname!r} is already registered: pick another --hostname,"
            " or delete that server (or rotate its key) on the monapi server",
            404: f"no monapi API at {self.url} (check --url)",
        }
        hint = hints.get(reply.status or 0, "")
        raise AgentError(
            f"cannot register: HTTP {reply.status}: {reply.message}"
            + (f" ({hint})" if hint else "")
        )


def _dropped(sock: socket.socket) -> bool:
    """An idle keep-alive socket that is readable has been closed by the server (or is broken)."""
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


def local_address(url: str) -> str:
    """The address this machine uses to reach the server (what the server will see)."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise AgentError(f"cannot resolve {host}: {exc}") from None
    family, _, _, _, sockaddr = infos[0]
    # A UDP "connection" sends nothing; it only asks the kernel for the route and source address.
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect(sockaddr)
        except OSError as exc:
            raise AgentError(f"no route to {host}: {exc}") from None
        return str(s.getsockname()[0])
