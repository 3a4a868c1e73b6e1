"""Deliver one alert notification over one channel: a signed JSON webhook or an e-mail.

One call is one attempt. Its :class:`Delivery` says whether it worked and, if not, whether a
later attempt may succeed (the receiver was unreachable, slow, or said "later") or not (it
refused the notification for good). The outbox, not this module, decides when to try again.

Error texts are for operators: they name the host (never a webhook's path or query, which often
carry a token), the answer, and at most the first 200 characters of what the receiver said, and
never contain the webhook secret or the SMTP password.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import smtplib
import socket
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

import urllib3
from urllib3.exceptions import (
    HTTPError as Urllib3Error,
)
from urllib3.exceptions import (
    LocationValueError,
    NewConnectionError,
    ProtocolError,
    SSLError,
)
from urllib3.exceptions import (
    TimeoutError as Urllib3Timeout,
)
from urllib3.util import parse_url

from .. import __version__
from ..settings import ENV_PREFIX, Settings

USER_AGENT = f"monapi/{__version__}"
CHANNELS = ("webhook", "email")
EXCERPT_CHARS = 200  # of a receiver's answer, in an error text
ERROR_CHARS = 400  # an error text is cut here whatever it holds
_READ_BYTES = 4096  # of a webhook's answer body: enough for the excerpt, bounded for a huge one


@dataclass(frozen=True, slots=True)
class Delivery:
    """The outcome of one attempt to deliver one notification."""

    ok: bool
    retry: bool  # a failure worth trying again later (network, timeout, 5xx, 408, 429, SMTP 4xx)
    error: str  # "" when ok; else a short, operator-readable reason, never holding a secret


OK = Delivery(True, False, "")


# Webhook -------------------------------------------------------------------------------------
def webhook_body(payload: dict[str, Any]) -> bytes:
    """The exact bytes POSTed (compact JSON, UTF-8, keys in the payload's order)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign(secret: bytes, body: bytes) -> str:
    """'sha256=' + hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def send_webhook(
    url: str,
    payload: dict[str, Any],
    *,
    secret: bytes | None,
    timeout: float,
    delivery_id: str,
    ssl_context: ssl.SSLContext | None = None,
) -> Delivery:
    """POST the payload once; 2xx is ok, 408/429/5xx/no answer is worth a retry, the rest not.

    Headers: Content-Type, User-Agent, X-Monapi-Event, X-Monapi-Delivery and, with a secret,
    X-Monapi-Signature-256. Redirects are not followed: a 3xx is a permanent failure naming
    the Location (re-POSTing an alert wherever a server points is not ours to decide).
    ``ssl_context`` replaces ``ssl.create_default_context()`` for https URLs.
    """
    body = webhook_body(payload)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Monapi-Event": _one_line(str(payload.get("event", ""))),
        "X-Monapi-Delivery": _one_line(delivery_id),
    }
    if secret:
        headers["X-Monapi-Signature-256"] = sign(secret, body)
    secrets = [secret] if secret else []
    try:
        parts = parse_url(url)
    except LocationValueError:
        return Delivery(False, False, "the webhook URL is not a valid URL")
    if parts.scheme not in ("http", "https") or not parts.host:
        return Delivery(False, False, "the webhook URL is not an http:// or https:// URL")
    where = f"webhook {parts.scheme}://{parts.host}" + (f":{parts.port}" if parts.port else "")
    if parts.auth:
        # urllib3 does not turn user:password@ into a header itself; the URL is the setting.
        headers.update(urllib3.make_headers(basic_auth=parts.auth))
        secrets.append(parts.auth.encode())
    context = None
    if parts.scheme == "https":
        context = ssl_context or ssl.create_default_context()
    pool = urllib3.PoolManager(
        num_pools=1, retries=False, timeout=urllib3.Timeout(total=timeout), ssl_context=context
    )
    try:
        try:
            resp = pool.request(
                "POST",
                url,
                body=body,
                headers=headers,
                redirect=False,
                retries=False,
                preload_content=False,
            )
        except Urllib3Error as exc:
            return _http_failure(where, exc, timeout)
        try:
            status = resp.status
            if 200 <= status < 300:
                return OK
            if 300 <= status < 400:
                location = resp.headers.get("Location") or "nowhere"
                return Delivery(
                    False,
                    False,
                    _cut(
                        f"{where} answered {status}, redirecting to {_one_line(location)}: "
                        "redirects are not followed, set the final URL",
                        secrets,
                    ),
                )
            try:
                excerpt = resp.read(_READ_BYTES)
            except Urllib3Error:
                excerpt = b""  # the status says enough
            retry = status in (408, 429) or 500 <= status < 600
            return Delivery(False, retry, _answer(where, status, resp.reason, excerpt, secrets))
        finally:
            resp.close()
    finally:
        pool.clear()


def _http_failure(where: str, exc: Urllib3Error, timeout: float) -> Delivery:
    """No HTTP answer: why, and whether it may work later."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, SSLError):
        verify = _cert_error(exc)
        if verify is not None:
            # A certificate the system does not trust stays untrusted until someone acts.
            reason = verify.verify_message or str(verify)
            return Delivery(False, False, _cut(f"{where}: certificate not trusted: {reason}"))
        return Delivery(False, True, _cut(f"{where}: TLS failed: {exc}"))
    if isinstance(exc, NewConnectionError):
        reason = _os_reason(cause) if isinstance(cause, OSError) else str(exc)
        return Delivery(False, True, _cut(f"{where} did not answer: {reason}"))
    if isinstance(exc, Urllib3Timeout):
        return Delivery(False, True, f"{where} did not answer within {timeout:g}s")
    if isinstance(exc, ProtocolError):
        return Delivery(False, True, _cut(f"{where} closed the connection without an answer"))
    if isinstance(exc, LocationValueError):
        return Delivery(False, False, "the webhook URL is not a valid URL")
    return Delivery(False, True, _cut(f"{where} failed: {type(exc).__name__}"))


def _answer(where: str, status: int, reason: str | None, data: bytes, secrets: list[bytes]) -> str:
    for s in secrets:
        data = data.replace(s, b"***")
    text = _one_line(data.decode("utf-8", "replace"))
    head = f"{where} answered {status}" + (f" {reason}" if reason else "")
    if text:
        head += ": " + text[:EXCERPT_CHARS]
    return _cut(head, secrets)


# E-mail --------------------------------------------------------------------------------------
def default_sender() -> str:
    """The sender when MONAPI_SMTP_FROM is not set: monapi@ this host's fully qualified name."""
    return "monapi@" + socket.getfqdn()


def email_message(
    payload: dict[str, Any], *, sender: str, to: list[str], delivery_id: str | None = None
) -> EmailMessage:
    """The notification as a plain-text e-mail naming server, rule, value and time.

    With a ``delivery_id`` the Message-ID is derived from it, so every attempt at one
    notification carries the same Message-ID and receivers can drop duplicates.
    """
    event = str(payload.get("event") or "")
    severity = str(payload.get("severity") or "")
    rule = payload.get("rule") or {}
    server = payload.get("server") or {}
    msg = EmailMessage()
    msg["Subject"] = _one_line(
        f"[monapi] {event.upper()} {severity}: {rule.get('name', '?')} on "
        f"{server.get('hostname', '?')}"
    )
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Date"] = format_datetime(datetime.now(UTC))
    domain = sender.rpartition("@")[2] or "monapi.invalid"
    if delivery_id:
        msg["Message-ID"] = f"<monapi.{re.sub(r'[^A-Za-z0-9._-]', '-', delivery_id)}@{domain}>"
        msg["X-Monapi-Delivery"] = _one_line(delivery_id)
    else:
        msg["Message-ID"] = make_msgid("monapi", domain=domain)
    msg["X-Monapi-Event"] = _one_line(event)
    # RFC 3834: no vacation auto-replies to a machine's alert.
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(_email_text(payload, delivery_id))
    return msg


def _email_text(payload: dict[str, Any], delivery_id: str | None) -> str:
    rule = payload.get("rule") or {}
    server = payload.get("server") or {}
    lines = [
        f"{str(payload.get('event') or '').upper()} ({payload.get('severity') or '?'})",
        str(payload.get("summary") or ""),
        "",
    ]

    def section(title: str, rows: list[tuple[str, Any]]) -> None:
        lines.append(title)
        for name, value in rows:
            if value is None or value == "":
                continue
            text = str(value).strip().replace("\n", "\n" + " " * 15)
            lines.append(f"  {name + ':':<12} {text}")
        lines.append("")

    labels = server.get("labels") or {}
    section(
        "Server",
        [
            ("hostname", server.get("hostname")),
            ("id", server.get("id")),
            ("address", server.get("ip_address")),
            ("labels", ", ".join(f"{k}={v}" for k, v in labels.items())),
        ],
    )
    duration = rule.get("duration_s")
    section(
        "Rule",
        [
            ("name", rule.get("name")),
            ("id", rule.get("id")),
            ("kind", rule.get("kind")),
            ("expression", rule.get("expression")),
            ("severity", payload.get("severity")),
            ("for", f"{_number(duration)}s" if isinstance(duration, int | float) else None),
            ("description", rule.get("description")),
        ],
    )
    series = payload.get("series") or {}
    value = payload.get("value")
    threshold = payload.get("threshold")
    section(
        "Value",
        [
            ("value", "none" if value is None else _number(value)),
            ("series", ", ".join(f"{k}={v}" for k, v in series.items())),
            (
                "threshold",
                None
                if threshold is None
                else f"{payload.get('condition') or ''} {_number(threshold)}".strip(),
            ),
        ],
    )
    section(
        "Time (UTC)",
        [
            ("at", _time(payload.get("at"))),
            ("started", _time(payload.get("started_at"))),
            ("resolved", _time(payload.get("resolved_at"))),
        ],
    )
    if payload.get("reason"):
        lines += [f"Reason: {payload['reason']}", ""]
    if payload.get("url"):
        lines += [f"Link: {payload['url']}", ""]
    lines += ["-- ", f"Sent by {USER_AGENT}" + (f", delivery {delivery_id}" if delivery_id else "")]
    return "\n".join(lines) + "\n"


def send_email(
    payload: dict[str, Any],
    settings: Settings,
    *,
    delivery_id: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Delivery:
    """Mail the notification once to MONAPI_ALERT_EMAIL_TO through MONAPI_SMTP_HOST.

    Security per MONAPI_SMTP_SECURITY (none, starttls, ssl), a log-in when MONAPI_SMTP_USERNAME
    is set. SMTP 4xx answers, refused connections and timeouts are worth a retry; 5xx answers
    (recipient refused, log-in failed), an untrusted certificate or a server without STARTTLS
    are not. ``ssl_context`` replaces ``ssl.create_default_context()``.
    """
    if not settings.alert_email_to or not settings.smtp_host:
        return Delivery(
            False,
            False,
            f"e-mail is not configured ({ENV_PREFIX}ALERT_EMAIL_TO, {ENV_PREFIX}SMTP_HOST)",
        )
    to = [a.strip() for a in settings.alert_email_to.split(",") if a.strip()]
    sender = settings.smtp_from or default_sender()
    msg = email_message(payload, sender=sender, to=to, delivery_id=delivery_id)
    host, port, timeout = settings.smtp_host, settings.resolved_smtp_port, settings.smtp_timeout
    password = settings.smtp_password.get_secret_value() if settings.smtp_password else ""
    secrets = [password.encode()] if password else []
    where = f"SMTP server {host}:{port}"
    security = settings.smtp_security
    context = (ssl_context or ssl.create_default_context()) if security != "none" else None
    smtp: smtplib.SMTP | None = None
    step = "connecting"
    try:
        if security == "ssl":
            smtp = smtplib.SMTP_SSL(host, port, timeout=timeout, context=context)
        else:
            smtp = smtplib.SMTP(host, port, timeout=timeout)
        step = "greeting"
        smtp.ehlo()
        if security == "starttls":
            step = "STARTTLS"
            smtp.starttls(context=context)
            smtp.ehlo()
        if settings.smtp_username:
            step = "logging in"
            smtp.login(settings.smtp_username, password)
        step = "sending"
        refused = smtp.send_message(msg, from_addr=sender, to_addrs=to)
    except smtplib.SMTPRecipientsRefused as exc:
        return _refused(where, exc.recipients, partial=False, secrets=secrets)
    except smtplib.SMTPNotSupportedError as exc:
        # STARTTLS or AUTH missing: the server's configuration or ours must change.
        return Delivery(False, False, _cut(f"{where} ({step}): {exc}", secrets))
    except smtplib.SMTPServerDisconnected as exc:
        # Also how smtplib reports a read that timed out ("... unexpectedly closed: timed out").
        text = str(exc) or "closed the connection"
        return Delivery(False, True, _cut(f"{where} ({step}): {text}", secrets))
    except smtplib.SMTPResponseException as exc:
        code = exc.smtp_code
        text = _smtp_text(exc.smtp_error)
        return Delivery(False, 400 <= code < 500, _cut(f"{where} ({step}): {code} {text}", secrets))
    except smtplib.SMTPException as exc:
        return Delivery(False, False, _cut(f"{where} ({step}): {exc}", secrets))
    except ssl.SSLCertVerificationError as exc:
        reason = exc.verify_message or str(exc)
        return Delivery(False, False, _cut(f"{where}: certificate not trusted: {reason}"))
    except OSError as exc:
        return Delivery(False, True, _cut(f"{where} ({step}): {_os_reason(exc)}", secrets))
    finally:
        if smtp is not None:
            _quit(smtp)
    if refused:
        return _refused(where, refused, partial=True, secrets=secrets)
    return OK


def _refused(
    where: str, refused: dict[str, tuple[int, bytes]], *, partial: bool, secrets: list[bytes]
) -> Delivery:
    # All temporary (a full mailbox, greylisting): try again, even if that mails the recipients
    # who got it a second time: a duplicate alert is better than a lost one.
    retry = all(400 <= code < 500 for code, _ in refused.values())
    listed = "; ".join(
        f"{rcpt}: {code} {_smtp_text(text)}" for rcpt, (code, text) in refused.items()
    )
    tail = " (the other recipients got it)" if partial else ""
    return Delivery(False, retry, _cut(f"{where} refused {listed}{tail}", secrets))


def _quit(smtp: smtplib.SMTP) -> None:
    # The message is in (or not) whatever QUIT answers: its failure changes nothing.
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        pass
    finally:
        smtp.close()


# Dispatch ------------------------------------------------------------------------------------
def send(
    channel: str,
    payload: dict[str, Any],
    settings: Settings,
    *,
    delivery_id: str,
    ssl_context: ssl.SSLContext | None = None,
) -> Delivery:
    """Deliver one notification over a channel ('webhook' or 'email') as configured now.

    Pass the same ``delivery_id`` on every attempt at one notification: it is sent with it
    (X-Monapi-Delivery, the e-mail's Message-ID) so receivers can drop duplicates.
    """
    if channel == "webhook":
        if not settings.alert_webhook_url:
            return Delivery(
                False, False, f"webhook is not configured ({ENV_PREFIX}ALERT_WEBHOOK_URL)"
            )
        secret = settings.alert_webhook_secret
        return send_webhook(
            settings.alert_webhook_url,
            payload,
            secret=secret.get_secret_value().encode() if secret else None,
            timeout=settings.smtp_timeout,
            delivery_id=delivery_id,
            ssl_context=ssl_context,
        )
    if channel == "email":
        return send_email(payload, settings, delivery_id=delivery_id, ssl_context=ssl_context)
    return Delivery(False, False, f"unknown notification channel {channel[:40]!r}")


# Helpers -------------------------------------------------------------------------------------
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_SPACES = re.compile(r"\s+")


def _one_line(text: str) -> str:
    """A header value or one-line message: control characters (a CR/LF would inject headers)
    become spaces."""
    return _SPACES.sub(" ", _CONTROL.sub(" ", text)).strip()


def _cut(text: str, secrets: list[bytes] | None = None) -> str:
    for s in secrets or ():
        if s:
            text = text.replace(s.decode("utf-8", "replace"), "***")
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 3] + "..."


def _smtp_text(raw: bytes | str) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return _one_line(text)[:EXCERPT_CHARS]


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"name not resolved ({exc.strerror or exc})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _cert_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure among ``exc``, its arguments and its causes."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        e = todo.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ssl.SSLCertVerificationError):
            return e
        todo += [e.__cause__, e.__context__, *e.args]
    return None


def _number(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return str(v)
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


def _time(v: Any) -> str | None:
    """RFC 3339 UTC for a datetime; a string is taken as already formatted."""
    if v is None or v == "":
        return None
    if isinstance(v, datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=UTC)
        return str(v.astimezone(UTC).isoformat()).replace("+00:00", "Z")
    return str(v)
