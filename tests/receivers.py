"""Real receivers for notification tests: an HTTP webhook endpoint and an SMTP server, each on
127.0.0.1 in this process, recording what they get; and a throwaway CA for their TLS variants.

Both are context managers. ``wait_for(n, timeout)`` waits on a condition the receiving thread
notifies, so tests never poll or sleep.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage, Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from .engines import free_port, missing


# TLS -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TlsFiles:
    """A CA and a server certificate it signed for 127.0.0.1 and localhost (PEM files)."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        """What a test server presents."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context (like ``ssl.create_default_context()``) trusting the CA."""
        return ssl.create_default_context(cafile=str(self.ca_file))


def make_tls_files(directory: Path) -> TlsFiles:
    """Make a CA and a server certificate with the ``openssl`` CLI (valid for two days).

    The CA and leaf carry the extensions strict verification wants (key identifiers, critical
    basic constraints, key usage), so Python's default context accepts them.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        missing("openssl", "install the openssl command to make the test certificates")
    assert openssl is not None
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_pem = directory / "ca.key", directory / "ca.pem"
    key, csr, pem = directory / "server.key", directory / "server.csr", directory / "server.pem"
    ext = directory / "server.ext"
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "authorityKeyIdentifier=keyid\n"
        "subjectKeyIdentifier=hash\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    steps = [
        [
            *(openssl, "req", "-x509", *ec, "-keyout", ca_key, "-out", ca_pem, "-days", "2"),
            *("-subj", "/CN=monapi test CA", "-addext", "basicConstraints=critical,CA:TRUE"),
            *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
        ],
        [openssl, "req", "-new", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=localhost"],
        [
            *(openssl, "x509", "-req", "-in", csr, "-CA", ca_pem, "-CAkey", ca_key),
            *("-days", "2", "-set_serial", "0x" + os.urandom(8).hex()),
            *("-out", pem, "-extfile", ext),
        ],
    ]
    for cmd in steps:
        subprocess.run([str(c) for c in cmd], check=True, capture_output=True, timeout=30)
    return TlsFiles(ca_pem, pem, key)


def _wait(cond: threading.Condition, ready: Any, timeout: float, what: str) -> None:
    with cond:
        if not cond.wait_for(ready, timeout):
            raise AssertionError(f"{what} within {timeout}s")


# Webhook -------------------------------------------------------------------------------------
@dataclass
class Request:
    """One request the webhook receiver got."""

    method: str
    path: str
    headers: Message  # looked up without regard to case
    body: bytes
    json: Any  # the body parsed, or None if it is not JSON


def verify(secret: bytes, body: bytes, header: str | None) -> bool:
    """Whether an X-Monapi-Signature-256 header is the HMAC-SHA256 of the body with the secret,
    checked the way a receiver should (recomputed, compared in constant time)."""
    if not header:
        return False
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header)


@dataclass
class _Action:
    kind: Literal["answer", "hang", "drop"]
    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    seconds: float = 0.0


class _WebhookHandler(BaseHTTPRequestHandler):
    server: _WebhookServer

    def do_POST(self) -> None:
        self._handle()

    def do_GET(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def _handle(self) -> None:
        self.close_connection = True
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        action = self.server.receiver._record(self, body)
        if action.kind == "hang":
            # Released early when the receiver closes, so a test never waits out the hang.
            self.server.receiver._closing.wait(action.seconds)
            return  # no answer: the connection is closed
        if action.kind == "drop":
            return
        self.send_response(action.status)
        for name, value in action.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(action.body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(action.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # pytest shows stderr of failing tests; request lines would only be noise


class _WebhookServer(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True  # close() joins the handler threads: nothing outlives the receiver
    receiver: WebhookReceiver

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (a timeout test) resets the connection; keep it for the test.
        self.receiver.errors.append(sys.exc_info()[1])


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 and a free port that records every request.

    Answers ``status`` (200) with ``body`` unless told otherwise for the next requests with
    :meth:`respond`, :meth:`hang` or :meth:`drop`. ``tls``: serve https with that context.
    """

    def __init__(
        self,
        *,
        path: str = "/hook",
        status: int = 200,
        body: bytes = b'{"ok":true}',
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.requests: list[Request] = []
        self.errors: list[BaseException | None] = []
        self._default = _Action("answer", status, body, {"Content-Type": "application/json"})
        self._script: deque[_Action] = deque()
        self._cond = threading.Condition()
        self._closing = threading.Event()
        self._server = _WebhookServer(("127.0.0.1", 0), _WebhookHandler)
        self._server.receiver = self
        if tls is not None:
            # The handshake happens in the handler thread, not in the accepting one.
            self._server.socket = tls.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
        self.port: int = self._server.server_address[1]
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}{path}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def respond(
        self,
        status: int,
        *,
        times: int = 1,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer ``status`` (with ``body`` and ``headers``) to the next ``times`` requests."""
        with self._cond:
            self._script.extend(
                _Action("answer", status, body, dict(headers or {})) for _ in range(times)
            )

    def hang(self, *, times: int = 1, seconds: float = 30.0) -> None:
        """Answer nothing to the next ``times`` requests for ``seconds`` (or until closed), then
        close their connections."""
        with self._cond:
            self._script.extend(_Action("hang", seconds=seconds) for _ in range(times))

    def drop(self, *, times: int = 1) -> None:
        """Close the connection of the next ``times`` requests without an answer."""
        with self._cond:
            self._script.extend(_Action("drop") for _ in range(times))

    def wait_for(self, n: int, timeout: float = 5.0) -> list[Request]:
        """The requests so far, once there are at least ``n``; AssertionError after timeout."""
        _wait(self._cond, lambda: len(self.requests) >= n, timeout, f"{n} webhook requests")
        with self._cond:
            return list(self.requests)

    def _record(self, handler: _WebhookHandler, body: bytes) -> _Action:
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        req = Request(handler.command, handler.path, handler.headers, body, parsed)
        with self._cond:
            self.requests.append(req)
            action = self._script.popleft() if self._script else self._default
            self._cond.notify_all()
        return action

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


# SMTP ----------------------------------------------------------------------------------------
@dataclass
class Mail:
    """One message the SMTP receiver accepted."""

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    raw: bytes
    tls: bool  # the message came over TLS (implicit or STARTTLS)
    login: str | None  # who logged in, if anyone


class _SmtpHandler:
    def __init__(self, receiver: SmtpReceiver) -> None:
        self.receiver = receiver

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        # Enforced here rather than with auth_required, which aiosmtpd only allows over STARTTLS.
        if self.receiver.username is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = self.receiver.refuse.get(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        transport = server.transport
        tls = transport is not None and transport.get_extra_info("ssl_object") is not None
        login = session.login_data.decode() if isinstance(session.login_data, bytes) else None
        mail = Mail(envelope.mail_from or "", list(envelope.rcpt_tos), message, raw, tls, login)
        self.receiver._record(mail)
        return "250 Message accepted for delivery"


class SmtpReceiver:
    """An aiosmtpd SMTP server on 127.0.0.1 and a free port that records accepted messages.

    ``security``: none (plain), starttls (offers and requires STARTTLS) or ssl (TLS from the
    first byte); both TLS modes need ``tls``. With ``username``/``password`` it offers AUTH
    (PLAIN, LOGIN) and refuses MAIL before a successful log-in. ``refuse`` maps recipient
    addresses to the reply their RCPT gets (``"550 5.1.1 no such user"``,
    ``"451 4.7.1 greylisted"``).
    """

    def __init__(
        self,
        *,
        security: Literal["none", "starttls", "ssl"] = "none",
        tls: TlsFiles | None = None,
        username: str | None = None,
        password: str | None = None,
        refuse: Mapping[str, str] | None = None,
    ) -> None:
        if security != "none" and tls is None:
            raise ValueError(f"security={security} needs tls=TlsFiles(...)")
        self.security = security
        self.username = username
        self.password = password
        self.refuse = dict(refuse or {})
        self.messages: list[Mail] = []
        self.logins: list[tuple[str, bool]] = []  # (login, accepted) for every AUTH attempt
        self._cond = threading.Condition()
        self.port = free_port()
        kwargs: dict[str, Any] = {
            "hostname": "127.0.0.1",
            "port": self.port,
            "server_hostname": "smtp.test",  # else aiosmtpd asks socket.getfqdn(): slow, no use
            # over implicit TLS aiosmtpd does not see the session as encrypted: only STARTTLS
            # sessions may be told to refuse AUTH in clear.
            "auth_require_tls": security == "starttls",
        }
        if username is not None:
            kwargs["authenticator"] = self._authenticate
        if security == "starttls":
            assert tls is not None
            kwargs["tls_context"] = tls.server_context()
            kwargs["require_starttls"] = True
        elif security == "ssl":
            assert tls is not None
            kwargs["ssl_context"] = tls.server_context()
        self._controller = Controller(_SmtpHandler(self), **kwargs)

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == self.username
            and auth_data.password.decode() == self.password
        )
        login = auth_data.login.decode() if isinstance(auth_data, LoginPassword) else "?"
        with self._cond:
            self.logins.append((login, ok))
        if ok:
            return AuthResult(success=True, auth_data=auth_data)
        return AuthResult(success=False, handled=False)

    def _record(self, mail: Mail) -> None:
        with self._cond:
            self.messages.append(mail)
            self._cond.notify_all()

    def wait_for(self, n: int, timeout: float = 5.0) -> list[Mail]:
        """The messages so far, once there are at least ``n``; AssertionError after timeout."""
        _wait(self._cond, lambda: len(self.messages) >= n, timeout, f"{n} e-mail messages")
        with self._cond:
            return list(self.messages)

    def settings(self, **overrides: Any) -> dict[str, Any]:
        """monapi settings (for ``load_settings``) that mail alerts through this server."""
        out: dict[str, Any] = {
            "smtp_host": "127.0.0.1",
            "smtp_port": self.port,
            "smtp_security": self.security,
            "smtp_from": "monapi@example.org",
            "alert_email_to": "ops@example.com",
            "smtp_timeout": 5,
        }
        if self.username is not None:
            out["smtp_username"] = self.username
            out["smtp_password"] = self.password
        out.update(overrides)
        return out

    def __enter__(self) -> Self:
        self._controller.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._controller.stop()
