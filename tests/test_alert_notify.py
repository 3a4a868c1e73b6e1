"""Alert notification senders against real receivers: an HTTP server checking the signature as
a webhook consumer would, and an aiosmtpd SMTP server (plain, STARTTLS and implicit TLS, with
AUTH) started by the tests."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from monapi import __version__
from monapi.alerting.notify import (
    ERROR_CHARS,
    Delivery,
    email_message,
    send,
    send_email,
    send_webhook,
    sign,
    webhook_body,
)
from monapi.settings import load_settings

from .engines import free_port
from .receivers import SmtpReceiver, TlsFiles, WebhookReceiver, make_tls_files, verify

SECRET = b"whsec-7c1e0f-not-for-logs"
PASSWORD = "smtp-pa55-not-for-logs"


def firing() -> dict[str, Any]:
    """The payload the evaluator builds for a threshold rule that starts firing."""
    return {
        "event": "firing",
        "severity": "critical",
        "rule": {
            "id": 3,
            "name": "High CPU",
            "kind": "threshold",
            "description": "CPU saturated; check the batch jobs",
            "expression": "mean(cpu.usage_percent) over 5m > 90",
            "duration_s": 120.0,
        },
        "server": {
            "id": 7,
            "hostname": "web-01",
            "ip_address": "192.0.2.10",
            "labels": {"role": "web", "dc": "par1"},
        },
        "value": 93.25,
        "series": {"cpu": "total"},
        "condition": ">",
        "threshold": 90.0,
        "at": "2026-11-21T18:00:00Z",
        "started_at": "2026-11-21T17:58:00Z",
        "resolved_at": None,
        "summary": "High CPU on web-01: mean(cpu.usage_percent) over 5m is 93.25 (> 90)",
        "reason": "",
        "url": "http://monapi.example/servers/7",
    }


def resolved() -> dict[str, Any]:
    """The same alert resolving because its server was deleted."""
    p = firing()
    p.update(
        event="resolved",
        value=None,
        series={},
        at="2026-11-21T18:10:00Z",
        resolved_at="2026-11-21T18:10:00Z",
        summary="High CPU on web-01 resolved",
        reason="server deleted",
        url=None,
    )
    return p


@pytest.fixture
def hook() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as r:
        yield r


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def post(url: str, *, secret: bytes | None = SECRET, timeout: float = 5.0) -> Delivery:
    return send_webhook(url, firing(), secret=secret, timeout=timeout, delivery_id="n-42-1")


# Webhook: what is sent ------------------------------------------------------------------------
def test_receiver_verifies_the_signature_over_the_bytes_it_got(hook: WebhookReceiver) -> None:
    assert post(hook.url) == Delivery(True, False, "")
    [req] = hook.wait_for(1)
    header = req.headers["X-Monapi-Signature-256"]
    assert verify(SECRET, req.body, header)
    assert header == sign(SECRET, req.body)
    assert not verify(b"another secret", req.body, header)
    assert not verify(SECRET, req.body + b" ", header)


def test_no_signature_header_without_a_secret(hook: WebhookReceiver) -> None:
    assert post(hook.url, secret=None).ok
    [req] = hook.wait_for(1)
    assert "X-Monapi-Signature-256" not in req.headers
    assert req.json == firing()


def test_headers_name_event_delivery_and_sender_and_the_body_is_the_payload(
    hook: WebhookReceiver,
) -> None:
    payload = resolved()
    assert send_webhook(hook.url, payload, secret=SECRET, timeout=5, delivery_id="n-9-2").ok
    [req] = hook.wait_for(1)
    assert (req.method, req.path) == ("POST", "/hook")
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["User-Agent"] == f"monapi/{__version__}"
    assert req.headers["X-Monapi-Event"] == "resolved"
    assert req.headers["X-Monapi-Delivery"] == "n-9-2"
    assert req.body == webhook_body(payload)
    assert req.json == payload
    assert list(req.json) == list(payload)  # keys in the payload's order
    assert b": " not in req.body and b", " not in req.body.replace(b"High CPU", b"")


def test_body_is_utf8_json_with_non_ascii_kept() -> None:
    payload = {"event": "firing", "server": {"hostname": "bürö-01"}, "value": 1.5}
    body = webhook_body(payload)
    assert body == '{"event":"firing","server":{"hostname":"bürö-01"},"value":1.5}'.encode()
    assert json.loads(body) == payload


def test_credentials_in_the_url_become_basic_auth_and_stay_out_of_errors(
    hook: WebhookReceiver,
) -> None:
    hook.respond(503, body=b"busy")
    url = hook.url.replace("http://", "http://hooker:pw-in-url-123@")
    out = send_webhook(url, firing(), secret=None, timeout=5, delivery_id="d")
    assert (out.ok, out.retry) == (False, True)
    [req] = hook.wait_for(1)
    assert req.headers["Authorization"] == "Basic aG9va2VyOnB3LWluLXVybC0xMjM="
    assert "pw-in-url-123" not in out.error
    assert out.error.startswith(f"webhook http://127.0.0.1:{hook.port} answered 503")


# Webhook: how answers are classified ------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "ok", "retry"),
    [
        (200, True, False),
        (202, True, False),
        (204, True, False),
        (500, False, True),
        (502, False, True),
        (503, False, True),
        (429, False, True),
        (408, False, True),
        (400, False, False),
        (401, False, False),
        (404, False, False),
        (410, False, False),
        (422, False, False),
    ],
)
def test_status_decides_ok_retry_or_give_up(
    hook: WebhookReceiver, status: int, ok: bool, retry: bool
) -> None:
    hook.respond(status, body=b"" if status == 204 else b'{"detail":"from the receiver"}')
    out = post(hook.url)
    assert (out.ok, out.retry) == (ok, retry)
    if ok:
        assert out.error == ""
    else:
        assert out.error.startswith(f"webhook http://127.0.0.1:{hook.port} answered {status}")
        assert '{"detail":"from the receiver"}' in out.error
    assert len(hook.wait_for(1)) == 1  # one call, one attempt


def test_a_redirect_is_not_followed_and_names_its_location(hook: WebhookReceiver) -> None:
    target = hook.url.replace("/hook", "/moved")
    hook.respond(301, headers={"Location": target})
    out = post(hook.url)
    assert (out.ok, out.retry) == (False, False)
    assert "301" in out.error and target in out.error
    # Recorded before answering: had the redirect been followed, /moved would be here already.
    assert [r.path for r in hook.requests] == ["/hook"]


def test_failures_then_success_follow_the_script(hook: WebhookReceiver) -> None:
    hook.respond(503, times=2, body=b"maintenance")
    outcomes = [post(hook.url) for _ in range(3)]
    assert [(o.ok, o.retry) for o in outcomes] == [(False, True), (False, True), (True, False)]
    assert "maintenance" in outcomes[0].error
    reqs = hook.wait_for(3)
    # Every attempt is signed and carries the same delivery id (receivers drop duplicates).
    assert all(verify(SECRET, r.body, r.headers["X-Monapi-Signature-256"]) for r in reqs)
    assert {r.headers["X-Monapi-Delivery"] for r in reqs} == {"n-42-1"}


def test_refused_connection_is_worth_a_retry() -> None:
    out = post(f"http://127.0.0.1:{free_port()}/hook")
    assert (out.ok, out.retry) == (False, True)
    assert "connection refused" in out.error.lower()


def test_a_receiver_that_hangs_times_out_and_is_worth_a_retry(hook: WebhookReceiver) -> None:
    hook.hang()
    started = time.monotonic()
    out = post(hook.url, timeout=0.5)
    elapsed = time.monotonic() - started
    assert (out.ok, out.retry) == (False, True)
    assert "did not answer within 0.5s" in out.error
    assert 0.4 <= elapsed < 3.0
    assert len(hook.wait_for(1)) == 1


def test_a_connection_closed_without_an_answer_is_worth_a_retry(hook: WebhookReceiver) -> None:
    hook.drop()
    out = post(hook.url)
    assert (out.ok, out.retry) == (False, True)
    assert "without an answer" in out.error


@pytest.mark.parametrize("status", [500, 400])
def test_error_text_is_bounded_and_never_holds_the_secret(
    hook: WebhookReceiver, status: int
) -> None:
    # A receiver that echoes what it was configured with, then a wall of HTML.
    echoed = b"bad signature for key " + SECRET + b": " + b"<p>x</p>" * 2000
    hook.respond(status, body=echoed)
    out = post(hook.url)
    assert not out.ok
    assert SECRET.decode() not in out.error
    assert "bad signature for key ***" in out.error
    assert len(out.error) <= ERROR_CHARS
    assert "\n" not in out.error


def test_an_untrusted_certificate_is_not_worth_a_retry(tls: TlsFiles) -> None:
    with WebhookReceiver(tls=tls.server_context()) as hook:
        out = post(hook.url)  # the system's CAs do not know the test CA
        assert (out.ok, out.retry) == (False, False)
        assert "certificate not trusted" in out.error
        ctx = tls.client_context()
        out = send_webhook(
            hook.url, firing(), secret=SECRET, timeout=5, delivery_id="d", ssl_context=ctx
        )
        assert out == Delivery(True, False, "")
        req = hook.wait_for(1)[-1]
        assert verify(SECRET, req.body, req.headers["X-Monapi-Signature-256"])


# E-mail: the message -----------------------------------------------------------------------------
def test_message_names_server_rule_value_and_time() -> None:
    msg = email_message(firing(), sender="monapi@example.org", to=["a@example.com", "b@x.org"])
    assert msg["Subject"] == "[monapi] FIRING critical: High CPU on web-01"
    assert msg["From"] == "monapi@example.org"
    assert msg["To"] == "a@example.com, b@x.org"
    assert msg["Message-ID"].endswith("@example.org>")
    assert msg["Date"]
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg.get_content_type() == "text/plain" and not msg.is_multipart()
    text = msg.get_content()
    for expected in [
        "web-01",
        "192.0.2.10",
        "role=web, dc=par1",
        "id:          7",
        "High CPU",
        "mean(cpu.usage_percent) over 5m > 90",
        "severity:    critical",
        "CPU saturated; check the batch jobs",
        "value:       93.25",
        "series:      cpu=total",
        "threshold:   > 90",
        "at:          2026-11-21T18:00:00Z",
        "started:     2026-11-21T17:58:00Z",
        "High CPU on web-01: mean(cpu.usage_percent) over 5m is 93.25 (> 90)",
        "Link: http://monapi.example/servers/7",
    ]:
        assert expected in text, expected
    assert "resolved:" not in text and "Reason:" not in text


def test_resolved_message_says_when_and_why() -> None:
    msg = email_message(resolved(), sender="monapi@example.org", to=["a@example.com"])
    assert msg["Subject"] == "[monapi] RESOLVED critical: High CPU on web-01"
    text = msg.get_content()
    assert "resolved:    2026-11-21T18:10:00Z" in text
    assert "Reason: server deleted" in text
    assert "value:       none" in text
    assert "Link:" not in text


def test_names_with_line_breaks_cannot_add_headers() -> None:
    p = firing()
    p["rule"]["name"] = "CPU\r\nBcc: attacker@example.net"
    msg = email_message(p, sender="monapi@example.org", to=["a@example.com"], delivery_id="a\nb")
    assert msg["Bcc"] is None
    assert msg["Subject"] == "[monapi] FIRING critical: CPU Bcc: attacker@example.net on web-01"
    assert "\n" not in msg["Message-ID"]


# E-mail: delivery ------------------------------------------------------------------------------
def test_plain_smtp_delivers_to_every_recipient() -> None:
    with SmtpReceiver() as smtp:
        settings = load_settings(smtp.settings(alert_email_to="ops@example.com, dev@example.com"))
        assert send_email(firing(), settings, delivery_id="n-42-1") == Delivery(True, False, "")
        [mail] = smtp.wait_for(1)
    assert mail.mail_from == "monapi@example.org"
    assert mail.rcpt_tos == ["ops@example.com", "dev@example.com"]
    assert not mail.tls and mail.login is None
    msg = mail.message
    assert msg["Subject"] == "[monapi] FIRING critical: High CPU on web-01"
    assert msg["To"] == "ops@example.com, dev@example.com"
    assert msg["Message-ID"] == "<monapi.n-42-1@example.org>"
    assert msg["X-Monapi-Delivery"] == "n-42-1"
    body = msg.get_content()
    assert "web-01" in body and "93.25" in body and "2026-11-21T18:00:00Z" in body


def test_every_attempt_carries_the_same_message_id() -> None:
    with SmtpReceiver() as smtp:
        settings = load_settings(smtp.settings())
        assert send_email(firing(), settings, delivery_id="n-5").ok
        assert send_email(firing(), settings, delivery_id="n-5").ok
        first, second = smtp.wait_for(2)
    assert first.message["Message-ID"] == second.message["Message-ID"]


def test_sender_defaults_to_monapi_at_this_host() -> None:
    with SmtpReceiver() as smtp:
        settings = load_settings(smtp.settings(smtp_from=None))
        assert send_email(firing(), settings).ok
        [mail] = smtp.wait_for(1)
    assert mail.mail_from == "monapi@" + socket.getfqdn()
    assert mail.message["From"] == mail.mail_from


def test_starttls_with_login(tls: TlsFiles) -> None:
    with SmtpReceiver(security="starttls", tls=tls, username="alerts", password=PASSWORD) as smtp:
        settings = load_settings(smtp.settings())
        out = send_email(firing(), settings, ssl_context=tls.client_context())
        assert out == Delivery(True, False, "")
        [mail] = smtp.wait_for(1)
    assert mail.tls and mail.login == "alerts"
    assert smtp.logins == [("alerts", True)]
    assert mail.message["Subject"] == "[monapi] FIRING critical: High CPU on web-01"


def test_implicit_tls_with_login(tls: TlsFiles) -> None:
    with SmtpReceiver(security="ssl", tls=tls, username="alerts", password=PASSWORD) as smtp:
        settings = load_settings(smtp.settings())
        out = send_email(resolved(), settings, ssl_context=tls.client_context())
        assert out == Delivery(True, False, "")
        [mail] = smtp.wait_for(1)
    assert mail.tls and mail.login == "alerts"
    assert mail.message["Subject"] == "[monapi] RESOLVED critical: High CPU on web-01"


def test_a_wrong_password_is_not_retried_and_not_shown(tls: TlsFiles) -> None:
    with SmtpReceiver(security="starttls", tls=tls, username="alerts", password="right") as smtp:
        settings = load_settings(smtp.settings(smtp_password=PASSWORD))
        out = send_email(firing(), settings, ssl_context=tls.client_context())
        assert smtp.messages == []
    assert (out.ok, out.retry) == (False, False)
    assert "logging in" in out.error and "535" in out.error
    assert PASSWORD not in out.error
    # smtplib tries each mechanism the server offers (PLAIN, LOGIN): all were refused.
    assert smtp.logins and set(smtp.logins) == {("alerts", False)}


def test_an_untrusted_smtp_certificate_is_not_retried(tls: TlsFiles) -> None:
    with SmtpReceiver(security="ssl", tls=tls) as smtp:
        out = send_email(firing(), load_settings(smtp.settings()))  # system CAs only
        assert smtp.messages == []
    assert (out.ok, out.retry) == (False, False)
    assert "certificate not trusted" in out.error


def test_starttls_required_but_not_offered_is_not_retried() -> None:
    with SmtpReceiver() as smtp:
        out = send_email(firing(), load_settings(smtp.settings(smtp_security="starttls")))
        assert smtp.messages == []
    assert (out.ok, out.retry) == (False, False)
    assert "STARTTLS" in out.error


@pytest.mark.parametrize(
    ("reply", "retry"),
    [("550 5.1.1 no such user here", False), ("451 4.7.1 greylisted, come back later", True)],
)
def test_refused_recipient(reply: str, retry: bool) -> None:
    with SmtpReceiver(refuse={"ops@example.com": reply}) as smtp:
        out = send_email(firing(), load_settings(smtp.settings()))
        assert smtp.messages == []
    assert (out.ok, out.retry) == (False, retry)
    assert "ops@example.com" in out.error and reply in out.error


def test_one_refused_recipient_fails_the_delivery_and_the_others_get_it() -> None:
    with SmtpReceiver(refuse={"gone@example.com": "550 5.1.1 no such user"}) as smtp:
        settings = load_settings(smtp.settings(alert_email_to="ops@example.com,gone@example.com"))
        out = send_email(firing(), settings)
        [mail] = smtp.wait_for(1)
    assert (out.ok, out.retry) == (False, False)
    assert "gone@example.com: 550" in out.error and "other recipients got it" in out.error
    assert mail.rcpt_tos == ["ops@example.com"]


def test_unreachable_smtp_server_is_worth_a_retry() -> None:
    port = free_port()
    settings = load_settings(
        {"smtp_host": "127.0.0.1", "smtp_port": port, "smtp_security": "none"}
        | {"alert_email_to": "ops@example.com", "smtp_from": "monapi@example.org"}
    )
    out = send_email(firing(), settings)
    assert (out.ok, out.retry) == (False, True)
    assert f"127.0.0.1:{port}" in out.error and "connection refused" in out.error


def test_a_silent_smtp_server_times_out_and_is_worth_a_retry() -> None:
    # Listening but never accepting: the connection is made, the greeting never comes.
    with closing(socket.socket()) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        settings = load_settings(
            {"smtp_host": "127.0.0.1", "smtp_port": listener.getsockname()[1]}
            | {"smtp_security": "none", "smtp_timeout": 0.5, "alert_email_to": "a@example.com"}
            | {"smtp_from": "monapi@example.org"}
        )
        started = time.monotonic()
        out = send_email(firing(), settings)
        elapsed = time.monotonic() - started
    assert (out.ok, out.retry) == (False, True)
    assert "timed out" in out.error
    assert elapsed < 3.0


# Dispatch ------------------------------------------------------------------------------------
def test_send_dispatches_to_the_configured_webhook(hook: WebhookReceiver) -> None:
    settings = load_settings(
        {"alert_webhook_url": hook.url, "alert_webhook_secret": SECRET.decode()}
    )
    assert send("webhook", firing(), settings, delivery_id="n-1-1").ok
    [req] = hook.wait_for(1)
    assert req.headers["X-Monapi-Delivery"] == "n-1-1"
    assert verify(SECRET, req.body, req.headers["X-Monapi-Signature-256"])


def test_send_uses_the_timeout_setting_for_the_webhook(hook: WebhookReceiver) -> None:
    hook.hang()
    settings = load_settings({"alert_webhook_url": hook.url, "smtp_timeout": 0.3})
    out = send("webhook", firing(), settings, delivery_id="n-1-1")
    assert (out.ok, out.retry) == (False, True)
    assert "within 0.3s" in out.error


def test_send_dispatches_to_email() -> None:
    with SmtpReceiver() as smtp:
        out = send("email", firing(), load_settings(smtp.settings()), delivery_id="n-2-1")
        assert out.ok
        [mail] = smtp.wait_for(1)
    assert mail.message["X-Monapi-Delivery"] == "n-2-1"


def test_send_to_a_channel_no_longer_configured(tmp_path: Path) -> None:
    settings = load_settings({})
    assert send("webhook", firing(), settings, delivery_id="x") == Delivery(
        False, False, "webhook is not configured (MONAPI_ALERT_WEBHOOK_URL)"
    )
    assert send("email", firing(), settings, delivery_id="x") == Delivery(
        False, False, "e-mail is not configured (MONAPI_ALERT_EMAIL_TO, MONAPI_SMTP_HOST)"
    )
    out = send("pager", firing(), settings, delivery_id="x")
    assert (out.ok, out.retry) == (False, False) and "pager" in out.error
