"""The web dashboard: sign-in, sessions, CSRF, security headers, and every page, through a
browser-like test client that speaks HTTPS (the session cookie is Secure by default)."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from html import unescape as html_unescape
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from argon2 import PasswordHasher
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, update
from werkzeug.test import TestResponse

from monapi import auth, create_app, db
from monapi.app import shutdown
from monapi.bootstrap import initialize
from monapi.dashboard import charts
from monapi.models import ApiKey, DashboardSession, FieldConfig, Server, User, utcnow
from monapi.services import users
from monapi.services.metrics import auto_step
from monapi.settings import load_settings
from monapi.tsdb.base import Series

from . import engines
from .conftest import _created, bearer, make_app, push, register_server

# Sessions, users and field changes are database work: every test here runs on the embedded
# SQLite store and on PostgreSQL (the pure chart tests take no app and run once).
CONFIG_STORES = ["sqlite", "postgresql"]

HTTPS = "https://localhost"
PASSWORD = "correct horse battery"
WRONG = "not the password"


class Browser(FlaskClient):
    """A test client that talks to https://localhost, as a browser behind TLS would."""

    def open(self, *args: Any, **kwargs: Any) -> TestResponse:
        if args and isinstance(args[0], str):
            kwargs.setdefault("base_url", HTTPS)
        return super().open(*args, **kwargs)


def browser(app: Flask) -> Browser:
    return Browser(app, app.response_class, use_cookies=True)


def add_user(app: Flask, name: str = "alice", password: str = PASSWORD) -> None:
    with app.app_context():
        users.create_user(db.session(), name, password)


def form_token(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, html
    return m.group(1)


def log_in(b: Browser, name: str = "alice", password: str = PASSWORD, **extra: str) -> TestResponse:
    """Fill in and send the log-in form, as a browser would."""
    token = form_token(b.get("/login").text)
    return b.post(
        "/login", data={"csrf_token": token, "username": name, "password": password, **extra}
    )


def cookie_session(app: Flask, b: Browser) -> dict[str, Any]:
    """What the signed session cookie holds (sid, csrf)."""
    cookie = b.get_cookie("monapi_session")
    assert cookie is not None
    data: dict[str, Any] = app.session_interface.get_signing_serializer(app).loads(  # type: ignore[attr-defined]
        cookie.value
    )
    return data


def csrf(app: Flask, b: Browser) -> str:
    return str(cookie_session(app, b)["csrf"])


def signed_in(app: Flask, name: str = "alice") -> Browser:
    """A browser with a fresh user signed in."""
    add_user(app, name)
    b = browser(app)
    resp = log_in(b, name)
    assert resp.status_code == 302, resp.text
    return b


def error_text(html: str) -> list[str]:
    """The messages of role=alert paragraphs (error pages, log-in errors)."""
    return [
        re.sub(r"\s+", " ", m).strip() for m in re.findall(r'role="alert"[^>]*>(.*?)</p>', html)
    ]


def field_errors(html: str) -> dict[str, str]:
    """The messages shown next to form fields."""
    return dict(re.findall(r'<span class="field-error" id="err-(\w+)">([^<]*)</span>', html))


def hostnames(html: str) -> list[str]:
    """The servers of an overview page, in the order shown."""
    return re.findall(r'class="host" href="[^"]*">([^<]+)</a>', html)


def count(html: str, what: str) -> int:
    m = re.search(rf">(\d+) {what}</a>", html)
    assert m, what
    return int(m.group(1))


def sessions_in_db(app: Flask) -> list[DashboardSession]:
    with app.app_context():
        s = db.session()
        rows = list(s.execute(select(DashboardSession)).scalars())
        s.expunge_all()
        return rows


def add_servers(app: Flask, *servers: dict[str, Any]) -> dict[str, int]:
    """Servers straight into the configuration store (far faster than the API for many);
    returns hostname -> id."""
    with app.app_context():
        s = db.session()
        rows = [
            Server(
                hostname=x["hostname"],
                ip_address=x.get("ip", "192.0.2.1"),
                labels=x.get("labels", {}),
                interval=x.get("interval", 30),
                last_seen=x.get("last_seen"),
            )
            for x in servers
        ]
        s.add_all(rows)
        s.commit()
        return {r.hostname: r.id for r in rows}


@pytest.fixture(autouse=True)
def _quick_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """argon2id with its real parameters costs 0.05-0.3 s a hash (64 MiB, 4 lanes): these tests
    sign in a great deal, so they use argon2id with small parameters. The real parameters are
    tested in test_users.py."""
    quick = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    monkeypatch.setattr(users, "_hasher", quick)
    monkeypatch.setattr(users, "_DUMMY_HASH", quick.hash("monapi: no such user"))


@pytest.fixture
def make(
    request: pytest.FixtureRequest, tmp_path: Path, config_store: str
) -> Iterator[Callable[..., tuple[Flask, str]]]:
    """Apps with settings of the test's own, on this run's configuration store."""
    dbs: engines.PostgresDatabases | None = (
        request.getfixturevalue("pg_databases") if config_store == "postgresql" else None
    )
    urls: list[str] = []

    def build(**overrides: Any) -> tuple[Flask, str]:
        extra: dict[str, Any] = {}
        if dbs is not None:
            urls.append(dbs.new())
            extra["database_url"] = urls[-1]
        return make_app(tmp_path / f"data-{len(_created)}-{len(urls)}", **extra, **overrides)

    yield build
    while _created:
        shutdown(_created.pop())
    for url in urls:
        assert dbs is not None
        dbs.drop(url)


@pytest.fixture
def b(app: Flask) -> Browser:
    """A browser signed in as alice."""
    return signed_in(app)


# ---- signing in is required ----------------------------------------------------------------

PAGES = [
    "/",
    "/?status=online&q=web",
    "/servers/1",
    "/servers/1/series?start=-1h",
    "/fields",
    "/fields/new",
    "/fields/1/edit",
    "/enrollment",
]


def test_every_page_redirects_to_login_with_next(app: Flask) -> None:
    b = browser(app)
    for page in PAGES:
        resp = b.get(page)
        assert resp.status_code == 302, page
        loc = urlsplit(resp.headers["Location"])
        assert loc.path == "/login", page
        assert parse_qs(loc.query)["next"] == [page], page


def test_every_post_redirects_to_login_when_signed_out(app: Flask, admin_token: str) -> None:
    """With a valid CSRF token (from the log-in page) but no session, nothing is done."""
    api = app.test_client()
    s = register_server(api, admin_token)
    b = browser(app)
    token = form_token(b.get("/login").text)
    for path, form in [
        (f"/servers/{s['id']}/delete", {"confirm_hostname": "web-01"}),
        (f"/servers/{s['id']}/disable", {}),
        (f"/servers/{s['id']}/rotate-key", {}),
        ("/fields/new", {"measurement": "app", "name": "q", "type": "int"}),
        ("/fields/1/delete", {}),
        ("/enrollment", {"name": "x"}),
        ("/logout", {}),
    ]:
        resp = b.post(path, data={"csrf_token": token, **form})
        assert resp.status_code == 302, path
        assert resp.headers["Location"].startswith("/login?next="), path
    assert push(api, s["api_key"], {"fields": {"load1": 1.0}}).status_code == 204
    assert api.get(f"/api/v1/servers/{s['id']}", headers=bearer(admin_token)).status_code == 200
    with app.app_context():
        assert db.session().get(FieldConfig, 1) is not None
        kinds = db.session().execute(select(ApiKey.kind)).scalars().all()
        assert auth.ENROLL not in kinds


def test_htmx_request_gets_401_with_hx_redirect(app: Flask) -> None:
    resp = browser(app).get("/?q=web", headers={"HX-Request": "true"})
    assert resp.status_code == 401
    assert resp.data == b""
    loc = urlsplit(resp.headers["HX-Redirect"])
    assert loc.path == "/login" and parse_qs(loc.query)["next"] == ["/?q=web"]


def test_login_follows_next_for_local_paths_only(app: Flask) -> None:
    add_user(app)
    for target, expected in [
        ("/fields?show=discovered", "/fields?show=discovered"),
        ("/servers/7", "/servers/7"),
        ("//evil.example", "/"),
        ("https://evil.example", "/"),
        ("https://evil.example/x", "/"),
        ("/\\evil.example", "/"),
        ("\\\\evil.example", "/"),
        ("javascript:alert(1)", "/"),
        ("evil.example", "/"),
        ("", "/"),
    ]:
        resp = log_in(browser(app), next=target)
        assert resp.status_code == 302, target
        assert resp.headers["Location"] == expected, target


def test_login_page_redirects_a_signed_in_browser(app: Flask, b: Browser) -> None:
    assert b.get("/login").headers["Location"] == "/"
    assert b.get("/login?next=/fields").headers["Location"] == "/fields"
    assert b.get("/login?next=//evil.example").headers["Location"] == "/"


def test_next_with_a_control_character_does_not_leave_the_site(app: Flask) -> None:
    add_user(app)
    for target in ("/\t/evil.example", "/\n/evil.example", "/\r/evil.example"):
        resp = log_in(browser(app), next=target)
        loc = resp.headers["Location"]
        assert not loc.startswith("//") and urlsplit(loc).netloc == "", (target, loc)


# ---- log-in ----------------------------------------------------------------------------------


def test_login_signs_in_and_shows_the_user(app: Flask) -> None:
    b = signed_in(app)
    page = b.get("/")
    assert page.status_code == 200
    assert '<span class="who">alice</span>' in page.text
    assert re.search(r'<meta name="csrf-token" content="[^"]{32,}">', page.text)
    with app.app_context():
        user = users.get_user(db.session(), "alice")
        assert user is not None and user.last_login_at is not None


def test_wrong_password_and_unknown_user_get_the_same_401(app: Flask) -> None:
    add_user(app)
    b = browser(app)
    wrong = log_in(b, "alice", WRONG)
    unknown = log_in(b, "nobody", WRONG)
    bad_name = log_in(b, "no such user!", WRONG)
    for resp in (wrong, unknown, bad_name):
        assert resp.status_code == 401
        assert error_text(resp.text) == ["wrong user name or password"]
        assert "Retry-After" not in resp.headers
    assert 'name="username" autocomplete="username" required autofocus value="alice"' in wrong.text
    assert b.get("/").status_code == 302
    assert sessions_in_db(app) == []


def test_empty_username_or_password_is_400(app: Flask) -> None:
    add_user(app)
    for name, password in [("", PASSWORD), ("alice", ""), ("  ", PASSWORD)]:
        resp = log_in(browser(app), name, password)
        assert resp.status_code == 400
        assert error_text(resp.text) == ["enter a user name and a password"]


def test_repeated_wrong_passwords_lock_the_user(
    make: Callable[..., tuple[Flask, str]],
) -> None:
    app, _ = make(login_max_failures=3, login_lockout="15m")
    add_user(app)
    add_user(app, "bob")
    b = browser(app)
    for _ in range(2):
        assert log_in(b, "alice", WRONG).status_code == 401
    locked = log_in(b, "alice", WRONG)
    assert locked.status_code == 429
    assert locked.headers["Retry-After"] == "900"
    assert error_text(locked.text) == ["too many failed log-ins: this user is locked for 15 min"]
    # while locked, even the right password is refused
    right = log_in(b, "alice", PASSWORD)
    assert right.status_code == 429
    assert 890 <= int(right.headers["Retry-After"]) <= 900
    assert b.get("/").status_code == 302
    # another user is not affected
    assert log_in(browser(app), "bob").status_code == 302
    # a new password (the CLI's set-password) unlocks
    with app.app_context():
        s = db.session()
        user = users.get_user(s, "alice")
        assert user is not None and user.locked_until is not None
        users.set_password(s, user, "a brand new password")
    assert log_in(b, "alice", "a brand new password").status_code == 302
    assert b.get("/").status_code == 200


def test_lock_ends_after_the_lockout(make: Callable[..., tuple[Flask, str]]) -> None:
    app, _ = make(login_max_failures=2)
    add_user(app)
    b = browser(app)
    log_in(b, "alice", WRONG)
    assert log_in(b, "alice", WRONG).status_code == 429
    with app.app_context():
        s = db.session()
        s.execute(update(User).values(locked_until=utcnow() - timedelta(seconds=1)))
        s.commit()
    assert log_in(b, "alice").status_code == 302


def test_a_success_resets_the_failure_count(make: Callable[..., tuple[Flask, str]]) -> None:
    app, _ = make(login_max_failures=3)
    add_user(app)
    b = browser(app)
    for _ in range(2):
        assert log_in(b, "alice", WRONG).status_code == 401
    assert log_in(b, "alice").status_code == 302
    b.post("/logout", data={"csrf_token": csrf(app, b)})
    for _ in range(2):
        assert log_in(b, "alice", WRONG).status_code == 401  # not locked: the count restarted


def test_login_attempts_are_limited_per_address(make: Callable[..., tuple[Flask, str]]) -> None:
    app, _ = make(rate_limit_login="3/minute")
    add_user(app)
    b = browser(app)
    for _ in range(3):
        assert log_in(b, "alice", WRONG).status_code == 401
    limited = log_in(b, "alice")  # the right password too
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert error_text(limited.text)[0].startswith("too many log-in attempts from 127.0.0.1")
    assert b.get("/").status_code == 302
    # another address is not limited
    other = browser(app)
    other.environ_base["REMOTE_ADDR"] = "192.0.2.77"
    assert log_in(other, "alice").status_code == 302


def test_login_page_warns_about_plain_http_to_another_host(app: Flask) -> None:
    plain = app.test_client()
    warning = "This page came over plain HTTP"
    assert warning in plain.get("/login", base_url="http://monapi.example").text
    assert warning not in plain.get("/login", base_url="http://localhost").text
    assert warning not in plain.get("/login", base_url="https://monapi.example").text


def test_login_page_does_not_warn_when_the_cookie_is_not_secure(
    make: Callable[..., tuple[Flask, str]],
) -> None:
    app, _ = make(cookie_secure=False)
    resp = app.test_client().get("/login", base_url="http://monapi.example")
    assert "plain HTTP" not in resp.text


# ---- sessions --------------------------------------------------------------------------------


def test_session_cookie_flags_by_default(app: Flask) -> None:
    add_user(app)
    b = browser(app)
    first = b.get("/login").headers["Set-Cookie"]
    signed = log_in(b).headers["Set-Cookie"]
    for header in (first, signed):
        parts = [p.strip() for p in header.split(";")]
        assert parts[0].startswith("monapi_session=")
        assert "Secure" in parts and "HttpOnly" in parts and "SameSite=Lax" in parts
    assert "Expires=" in signed  # a permanent session: it ends with session_lifetime


def test_cookie_is_not_secure_when_turned_off(make: Callable[..., tuple[Flask, str]]) -> None:
    app, _ = make(cookie_secure=False)
    header = app.test_client().get("/login").headers["Set-Cookie"]
    parts = [p.strip() for p in header.split(";")]
    assert "Secure" not in parts and "HttpOnly" in parts and "SameSite=Lax" in parts


def test_the_database_keeps_only_the_sha256_of_the_session_token(app: Flask, b: Browser) -> None:
    sid = cookie_session(app, b)["sid"]
    [row] = sessions_in_db(app)
    assert row.id == hashlib.sha256(sid.encode()).hexdigest()
    assert row.id != sid and sid not in row.id
    assert row.address == "127.0.0.1"
    lifetime = row.expires_at - row.created_at
    assert lifetime == timedelta(hours=12)


def test_logout_deletes_the_session_so_a_copied_cookie_stops_working(
    app: Flask, b: Browser
) -> None:
    copied = b.get_cookie("monapi_session")
    assert copied is not None
    assert len(sessions_in_db(app)) == 1
    resp = b.post("/logout", data={"csrf_token": csrf(app, b)})
    assert resp.status_code == 302 and resp.headers["Location"] == "/login"
    assert sessions_in_db(app) == []
    assert b.get("/").status_code == 302
    replay = browser(app)
    replay.set_cookie("monapi_session", copied.value)
    assert replay.get("/").status_code == 302
    assert replay.get("/fields").headers["Location"].startswith("/login")


def test_logout_needs_post_and_the_token(app: Flask, b: Browser) -> None:
    assert b.get("/logout").status_code == 405
    assert b.post("/logout").status_code == 400
    assert b.get("/").status_code == 200  # still signed in


def test_an_expired_session_is_refused(app: Flask, b: Browser) -> None:
    assert b.get("/").status_code == 200
    with app.app_context():
        s = db.session()
        s.execute(update(DashboardSession).values(expires_at=utcnow() - timedelta(seconds=1)))
        s.commit()
    assert b.get("/").status_code == 302


def test_a_used_session_is_extended(app: Flask, b: Browser) -> None:
    with app.app_context():
        s = db.session()
        s.execute(
            update(DashboardSession).values(
                last_seen_at=utcnow() - timedelta(minutes=5),
                expires_at=utcnow() + timedelta(seconds=30),
            )
        )
        s.commit()
    assert b.get("/").status_code == 200
    [row] = sessions_in_db(app)
    assert row.expires_at - utcnow() > timedelta(hours=11)


def test_login_issues_a_new_csrf_token_and_session(app: Flask) -> None:
    add_user(app)
    b = browser(app)
    before = form_token(b.get("/login").text)
    resp = b.post("/login", data={"csrf_token": before, "username": "alice", "password": PASSWORD})
    assert resp.status_code == 302
    after = csrf(app, b)
    assert after != before
    # the token from before the log-in no longer works
    assert b.post("/enrollment", data={"csrf_token": before}).status_code == 400
    assert b.post("/enrollment", data={"csrf_token": after}).status_code == 200
    # logging in again gives yet another session (the old row stays until it expires)
    sid = cookie_session(app, b)["sid"]
    b.post("/logout", data={"csrf_token": after})
    log_in(b)
    assert cookie_session(app, b)["sid"] != sid


def test_deleting_a_user_or_changing_the_password_ends_the_sessions(app: Flask) -> None:
    alice = signed_in(app)
    bob = signed_in(app, "bob")
    with app.app_context():
        s = db.session()
        user = users.get_user(s, "alice")
        assert user is not None
        users.set_password(s, user, "another long password")
    assert alice.get("/").status_code == 302
    assert bob.get("/").status_code == 200
    with app.app_context():
        s = db.session()
        user = users.get_user(s, "bob")
        assert user is not None
        users.delete_user(s, user)
    assert bob.get("/").status_code == 302
    assert sessions_in_db(app) == []


# ---- CSRF ------------------------------------------------------------------------------------


def test_post_without_or_with_a_wrong_token_is_refused_and_changes_nothing(
    app: Flask, admin_token: str, b: Browser
) -> None:
    api = app.test_client()
    s = register_server(api, admin_token)
    with app.app_context():
        cpu = (
            db.session()
            .execute(select(FieldConfig).where(FieldConfig.measurement == "cpu"))
            .scalars()
            .first()
        )
        assert cpu is not None
        cpu_id, cpu_max = cpu.id, cpu.max_value
    attempts = [
        (f"/fields/{cpu_id}/edit", {"unit": "x", "max": "5", "enabled": "on"}),
        (f"/fields/{cpu_id}/delete", {}),
        ("/fields/new", {"measurement": "app", "name": "q", "type": "int"}),
        ("/enrollment", {"name": "sneaky"}),
        (f"/servers/{s['id']}/delete", {"confirm_hostname": "web-01"}),
        (f"/servers/{s['id']}/disable", {}),
        (f"/servers/{s['id']}/rotate-key", {}),
        ("/logout", {}),
    ]
    for path, form in attempts:
        for token in (None, "wrong-token-" + "x" * 40, ""):
            data = form if token is None else {**form, "csrf_token": token}
            resp = b.post(path, data=data)
            assert resp.status_code == 400, (path, token)
            assert resp.mimetype == "text/html"
            assert error_text(resp.text) == [
                "the form has expired or did not come from this dashboard. "
                "Reload the page and try again."
            ]
    with app.app_context():
        session = db.session()
        cpu = session.get(FieldConfig, cpu_id)
        assert cpu is not None and cpu.max_value == cpu_max and cpu.unit == "%"
        assert (
            session.execute(
                select(func.count())
                .select_from(FieldConfig)
                .where(FieldConfig.measurement == "app")
            ).scalar_one()
            == 0
        )
        kinds = session.execute(select(ApiKey.kind)).scalars().all()
        assert auth.ENROLL not in kinds
    assert push(api, s["api_key"], {"fields": {"load1": 1.0}}).status_code == 204
    assert b.get("/").status_code == 200  # still signed in


def test_login_form_needs_the_token_too(app: Flask) -> None:
    add_user(app)
    b = browser(app)
    b.get("/login")
    resp = b.post("/login", data={"username": "alice", "password": PASSWORD})
    assert resp.status_code == 400
    assert b.get("/").status_code == 302
    assert sessions_in_db(app) == []


def test_token_in_the_x_csrf_token_header_is_accepted(
    app: Flask, admin_token: str, b: Browser
) -> None:
    api = app.test_client()
    s = register_server(api, admin_token)
    resp = b.post(f"/servers/{s['id']}/disable", headers={"X-CSRF-Token": csrf(app, b)})
    assert resp.status_code == 302
    assert push(api, s["api_key"], {"fields": {"load1": 1.0}}).status_code == 403


def test_post_from_another_origin_is_refused_even_with_the_token(
    app: Flask, admin_token: str, b: Browser
) -> None:
    api = app.test_client()
    s = register_server(api, admin_token)
    token = csrf(app, b)
    for origin in ("https://evil.example", "http://localhost", "https://localhost:8443"):
        resp = b.post(
            f"/servers/{s['id']}/disable", data={"csrf_token": token}, headers={"Origin": origin}
        )
        assert resp.status_code == 400, origin
        assert "another site" in error_text(resp.text)[0]
    assert push(api, s["api_key"], {"fields": {"load1": 1.0}}).status_code == 204
    same = b.post(
        f"/servers/{s['id']}/disable", data={"csrf_token": token}, headers={"Origin": HTTPS}
    )
    assert same.status_code == 302
    assert push(api, s["api_key"], {"fields": {"load1": 1.0}}).status_code == 403


def test_a_non_ascii_token_is_a_400_not_a_500(app: Flask, b: Browser) -> None:
    assert b.post("/enrollment", data={"csrf_token": "\u00fc" * 43}).status_code == 400


# ---- security headers, scripts and assets ----------------------------------------------------


def all_pages(app: Flask, admin_token: str, b: Browser) -> dict[str, TestResponse]:
    """Every kind of page the dashboard renders, signed in and not."""
    api = app.test_client()
    s = register_server(api, admin_token, labels={"role": "web"})
    push(api, s["api_key"], {"measurement": "cpu", "fields": {"usage_percent": 12.0}})
    token = csrf(app, b)
    pages = {
        "login": browser(app).get("/login"),
        "overview": b.get("/"),
        "fleet": b.get("/", headers={"HX-Request": "true"}),
        "server": b.get(f"/servers/{s['id']}"),
        "fields": b.get("/fields"),
        "field_new": b.get("/fields/new"),
        "field_edit": b.get("/fields/1/edit"),
        "field_invalid": b.post("/fields/new", data={"csrf_token": token, "type": "x"}),
        "enrollment": b.get("/enrollment"),
        "token_created": b.post("/enrollment", data={"csrf_token": token, "name": "n"}),
        "not_found": b.get("/servers/999999"),
        "csrf_error": b.post("/enrollment"),
        "rotated": b.post(f"/servers/{s['id']}/rotate-key", data={"csrf_token": token}),
    }
    assert pages["not_found"].status_code == 404
    assert pages["field_invalid"].status_code == 422
    return pages


def test_pages_have_the_security_headers(app: Flask, admin_token: str, b: Browser) -> None:
    for name, resp in all_pages(app, admin_token, b).items():
        csp = resp.headers["Content-Security-Policy"]
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["script-src"] == "'self'", name
        assert "unsafe-eval" not in csp and "unsafe-inline" not in directives["script-src"]
        assert directives["frame-ancestors"] == "'none'"
        assert directives["object-src"] == "'none'"
        assert resp.headers["X-Frame-Options"] == "DENY", name
        assert resp.headers["X-Content-Type-Options"] == "nosniff", name
        assert resp.headers["Cache-Control"] == "no-store", name
        assert resp.headers["Referrer-Policy"] == "same-origin", name


def test_pages_have_no_inline_script(app: Flask, admin_token: str, b: Browser) -> None:
    """The CSP would block inline scripts and handlers: there must be none to block."""
    srcs: set[str] = set()
    for name, resp in all_pages(app, admin_token, b).items():
        html = resp.text
        scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S | re.I)
        assert len(scripts) == len(re.findall(r"<script\b", html, re.I)), name
        if name != "fleet":
            assert scripts, name
        for attrs, body in scripts:
            m = re.search(r'\bsrc="([^"]+)"', attrs)
            assert m and m.group(1).startswith("/assets/"), (name, attrs)
            assert body.strip() == "", name
            srcs.add(m.group(1))
        for tag in re.findall(r"<[a-zA-Z][^>]*>", html):
            assert not re.search(r"\s(on[a-z]+|hx-on[:\w-]*)\s*=", tag, re.I), (name, tag)
            assert "javascript:" not in tag.lower(), (name, tag)
    assert any("htmx-2.0.11.min.js" in s for s in srcs)
    assert any("uPlot-1.6.32.iife.min.js" in s for s in srcs)
    # every script a page loads is served
    anonymous = app.test_client()
    for src in srcs:
        with anonymous.get(src) as resp:
            assert resp.status_code == 200, src


def test_vendored_assets_are_served_with_a_cache_lifetime(app: Flask) -> None:
    anonymous = app.test_client()
    for path, mimetype in [
        ("/assets/vendor/htmx-2.0.11.min.js", "text/javascript"),
        ("/assets/vendor/uPlot-1.6.32.iife.min.js", "text/javascript"),
        ("/assets/vendor/uPlot-1.6.32.min.css", "text/css"),
        ("/assets/app.js", "text/javascript"),
        ("/assets/app.css", "text/css"),
    ]:
        resp = anonymous.get(path)
        assert resp.status_code == 200, path
        assert resp.mimetype == mimetype, path
        assert resp.headers["Cache-Control"] == "public, max-age=3600", path
        assert resp.headers["X-Content-Type-Options"] == "nosniff", path
        assert len(resp.data) > 100, path
        resp.close()
    with anonymous.get("/assets/vendor/nope.js") as resp:
        assert resp.status_code == 404


def test_vendored_libraries_ship_with_their_licences() -> None:
    vendor = files("monapi.dashboard").joinpath("static", "vendor")
    htmx = vendor.joinpath("htmx-2.0.11.LICENSE").read_text()
    uplot = vendor.joinpath("uPlot-1.6.32.LICENSE").read_text()
    assert "BSD" in htmx
    assert "MIT" in uplot and "Leon Sorokin" in uplot


# ---- overview --------------------------------------------------------------------------------


def test_overview_with_no_server_says_how_to_add_one(app: Flask, b: Browser) -> None:
    page = b.get("/").text
    assert "No server has registered yet" in page
    assert count(page, "servers") == 0


def test_overview_shows_status_with_counts(app: Flask, b: Browser) -> None:
    now = time.time()
    add_servers(
        app,
        {"hostname": "up-1", "last_seen": now - 5},
        {"hostname": "up-2", "last_seen": now - 60, "interval": 30},
        {"hostname": "down", "last_seen": now - 3600},
        {"hostname": "new"},
    )
    page = b.get("/").text
    assert hostnames(page) == ["down", "new", "up-1", "up-2"]
    assert (count(page, "servers"), count(page, "online"), count(page, "offline")) == (4, 2, 1)
    assert count(page, "never seen") == 1
    for host, status in [("up-1", "online"), ("down", "offline"), ("new", "never seen")]:
        row = page.split(f'">{host}</a>')[1].split("</tr>")[0]
        assert f">{status}</span>" in row, host
    assert "never" in page.split('">new</a>')[1].split("</tr>")[0]
    # the status filter keeps the counts of everything
    online = b.get("/?status=online").text
    assert hostnames(online) == ["up-1", "up-2"]
    assert count(online, "servers") == 4
    assert hostnames(b.get("/?status=offline").text) == ["down"]
    assert hostnames(b.get("/?status=never_seen").text) == ["new"]


def test_overview_search_by_name_and_address(app: Flask, b: Browser) -> None:
    add_servers(
        app,
        {"hostname": "web-1", "ip": "10.0.0.11"},
        {"hostname": "web-2", "ip": "10.0.1.12"},
        {"hostname": "db-1", "ip": "2001:db8::7"},
    )
    assert hostnames(b.get("/?q=WEB").text) == ["web-1", "web-2"]
    assert hostnames(b.get("/?q=10.0.1.").text) == ["web-2"]
    assert hostnames(b.get("/?q=db8::7").text) == ["db-1"]
    assert hostnames(b.get("/?q=nothing-like-it").text) == []


def test_a_search_that_matches_nothing_says_so(app: Flask, b: Browser) -> None:
    add_servers(app, {"hostname": "web-1"})
    page = b.get("/?q=nothing-like-it").text
    assert "No server matches these filters" in page
    assert "No server has registered yet" not in page


def test_overview_label_filter(app: Flask, b: Browser) -> None:
    add_servers(
        app,
        {"hostname": "web-1", "labels": {"role": "web", "dc": "fra1"}},
        {"hostname": "web-2", "labels": {"role": "web", "dc": "ams1"}},
        {"hostname": "db-1", "labels": {"role": "db", "dc": "fra1"}},
        {"hostname": "bare"},
    )
    assert hostnames(b.get("/?label=role=web").text) == ["web-1", "web-2"]
    assert hostnames(b.get("/?label=role").text) == ["db-1", "web-1", "web-2"]
    assert hostnames(b.get("/?label=role=web,dc=fra1").text) == ["web-1"]
    assert hostnames(b.get("/?label= role = web , dc = fra1 ").text) == ["web-1"]
    assert hostnames(b.get("/?label=role=").text) == []  # an empty value matches no label
    assert hostnames(b.get("/?label=dc=fra1&q=db").text) == ["db-1"]
    page = b.get("/?label=role=web").text
    assert count(page, "servers") == 2
    assert '<span class="label">dc=fra1</span>' in page


def test_overview_sort_by_hostname_status_and_last_seen(app: Flask, b: Browser) -> None:
    now = time.time()
    add_servers(
        app,
        {"hostname": "b-online", "last_seen": now - 10},
        {"hostname": "a-offline", "last_seen": now - 5000},
        {"hostname": "d-offline", "last_seen": now - 900},
        {"hostname": "c-never"},
    )
    assert hostnames(b.get("/?sort=hostname").text) == [
        "a-offline",
        "b-online",
        "c-never",
        "d-offline",
    ]
    assert hostnames(b.get("/?sort=hostname&order=desc").text) == [
        "d-offline",
        "c-never",
        "b-online",
        "a-offline",
    ]
    # problems first: offline, never seen, online
    assert hostnames(b.get("/?sort=status").text) == [
        "a-offline",
        "d-offline",
        "c-never",
        "b-online",
    ]
    assert hostnames(b.get("/?sort=status&order=desc").text) == [
        "b-online",
        "c-never",
        "d-offline",
        "a-offline",
    ]
    # oldest first; never seen at the end
    assert hostnames(b.get("/?sort=last_seen").text) == [
        "a-offline",
        "d-offline",
        "b-online",
        "c-never",
    ]
    newest_first = hostnames(b.get("/?sort=last_seen&order=desc").text)
    assert [h for h in newest_first if h != "c-never"] == ["b-online", "d-offline", "a-offline"]


def test_overview_sort_by_current_cpu(app: Flask, admin_token: str, b: Browser) -> None:
    api = app.test_client()
    for host, cpu in [("idle", 5.0), ("busy", 95.0), ("half", 50.0), ("quiet", None)]:
        key = register_server(api, admin_token, host)["api_key"]
        if cpu is not None:
            assert (
                push(api, key, {"measurement": "cpu", "fields": {"usage_percent": cpu}}).status_code
                == 204
            )
    assert hostnames(b.get("/?sort=cpu").text) == ["idle", "half", "busy", "quiet"]
    desc = hostnames(b.get("/?sort=cpu&order=desc").text)
    assert [h for h in desc if h != "quiet"] == ["busy", "half", "idle"]
    page = b.get("/?sort=cpu").text
    assert "95.0 %" in page and "5.0 %" in page


def test_overview_pages(app: Flask, b: Browser) -> None:
    add_servers(app, *[{"hostname": f"host-{i:03d}"} for i in range(120)])
    first = b.get("/?per_page=50").text
    assert hostnames(first) == [f"host-{i:03d}" for i in range(50)]
    assert "page 1 of 3" in first
    third = b.get("/?per_page=50&page=3").text
    assert hostnames(third) == [f"host-{i:03d}" for i in range(100, 120)]
    assert "page 3 of 3" in third
    assert "next \u203a" not in third and "\u2039 previous" in third
    # past the end: the last page
    assert hostnames(b.get("/?per_page=50&page=99").text) == hostnames(third)
    # the default is 100 per page
    default = b.get("/").text
    assert len(hostnames(default)) == 100 and "page 1 of 2" in default
    assert count(third, "servers") == 120


def test_overview_bad_filter_values_fall_back(app: Flask, b: Browser) -> None:
    add_servers(app, {"hostname": "b"}, {"hostname": "a"})
    resp = b.get("/?sort=nope&order=sideways&status=bogus&page=x&per_page=7")
    assert resp.status_code == 200
    assert hostnames(resp.text) == ["a", "b"]
    for query in ("page=-3", "per_page=-1", "per_page=abc", "page=1e9", "sort=&status="):
        resp = b.get(f"/?{query}")
        assert resp.status_code == 200, query
        assert hostnames(resp.text) == ["a", "b"], query


def test_htmx_request_gets_only_the_fleet_fragment(app: Flask, b: Browser) -> None:
    add_servers(app, {"hostname": "web-1"}, {"hostname": "db-1"})
    frag = b.get("/?q=web", headers={"HX-Request": "true"})
    assert frag.status_code == 200
    assert "<html" not in frag.text and "<head" not in frag.text
    assert frag.text.lstrip().startswith('<section id="fleet"')
    assert hostnames(frag.text) == ["web-1"]
    assert "Cookie" in frag.headers["Vary"] and "HX-Request" in frag.headers["Vary"]
    # a history restore needs the whole page
    full = b.get("/?q=web", headers={"HX-Request": "true", "HX-History-Restore-Request": "true"})
    assert "<html" in full.text and hostnames(full.text) == ["web-1"]


def test_sparklines_for_a_server_with_data_and_empty_without(
    app: Flask, admin_token: str, b: Browser
) -> None:
    api = app.test_client()
    busy = register_server(api, admin_token, "busy")
    register_server(api, admin_token, "empty", "192.0.2.11")
    now = int(time.time())
    points = [
        {"measurement": "cpu", "timestamp": now - off, "fields": {"usage_percent": v}}
        for off, v in [(900, 10.0), (780, 50.0), (660, 90.0), (60, 20.0)]
    ]
    assert push(api, busy["api_key"], {"points": points}).status_code == 204
    page = b.get("/").text
    rows = {
        host: row
        for host, row in re.findall(r'class="host" href="[^"]*">([^<]+)</a>(.*?)</tr>', page, re.S)
    }
    cpu_paths = re.findall(
        r'aria-label="cpu over the last hour">(?:<path d="([^"]*)"/>)?</svg>', rows["busy"]
    )
    assert len(cpu_paths) == 1 and cpu_paths[0]
    d = cpu_paths[0]
    # three points one step apart make a line; the last one, after a gap, stands alone
    assert re.fullmatch(r"M[\d.]+ [\d.]+L[\d.]+ [\d.]+L[\d.]+ [\d.]+M[\d.]+ [\d.]+h1", d), d
    assert "<path" not in rows["empty"]
    assert 'aria-label="mem over the last hour"></svg>' in rows["busy"]


# ---- server page -----------------------------------------------------------------------------


def test_server_page_shows_details_and_labels(app: Flask, admin_token: str, b: Browser) -> None:
    api = app.test_client()
    s = register_server(
        api, admin_token, "web-01", "192.0.2.44", labels={"role": "web", "dc": "fra1"}
    )
    page = b.get(f"/servers/{s['id']}")
    assert page.status_code == 200
    html = page.text
    assert "<title>web-01 · monapi</title>" in html
    assert "192.0.2.44" in html
    assert '<span class="label">dc=fra1</span> <span class="label">role=web</span>' in html
    assert "never seen" in html
    assert f'data-url="/servers/{s["id"]}/series"' in html
    m = re.search(r"data-fields='([^']*)'", html)
    assert m
    charted = {f["key"]: f for f in json.loads(html_unescape(m.group(1)))}
    assert charted["cpu.usage_percent"] == {
        "key": "cpu.usage_percent",
        "unit": "%",
        "type": "float",
    }
    assert s["api_key"] not in html
    six = b.get(f"/servers/{s['id']}?range=6h").text
    assert '<a href="?range=6h" aria-current="true">' in six


def test_server_page_custom_range_must_end_after_it_starts(
    app: Flask, admin_token: str, b: Browser
) -> None:
    s = register_server(app.test_client(), admin_token)
    ok = b.get(f"/servers/{s['id']}?start=2024-01-01T00:00&end=2024-01-02T00:00&tz=-60")
    assert ok.status_code == 200
    # tz is JavaScript's getTimezoneOffset: -60 is UTC+1, so local midnight is 23:00 UTC
    assert 'data-start="1704063600" data-end="1704150000"' in ok.text
    bad = b.get(f"/servers/{s['id']}?start=2024-01-02T00:00&end=2024-01-01T00:00")
    assert bad.status_code == 400
    assert error_text(bad.text) == ["the custom range must end after it starts"]
    junk = b.get(f"/servers/{s['id']}?start=yesterday&end=today")
    assert junk.status_code == 400 and "is not a date and time" in error_text(junk.text)[0]


def test_custom_range_with_an_absurd_time_zone_is_a_400(
    app: Flask, admin_token: str, b: Browser
) -> None:
    s = register_server(app.test_client(), admin_token)
    resp = b.get(f"/servers/{s['id']}?start=2024-01-01T00:00&end=2024-01-02T00:00&tz=99999999999")
    assert resp.status_code == 400


def test_series_returns_pushed_fields_with_the_auto_step(
    app: Flask, admin_token: str, b: Browser
) -> None:
    api = app.test_client()
    s = register_server(api, admin_token)
    now = int(time.time())
    body = {
        "points": [
            {"measurement": "cpu", "timestamp": now - 300, "fields": {"usage_percent": 42.0}},
            {"measurement": "system", "timestamp": now - 300, "fields": {"load1": 0.5}},
        ]
    }
    assert push(api, s["api_key"], body).status_code == 204
    start, end = now - 6 * 3600, now
    resp = b.get(f"/servers/{s['id']}/series?start={start}&end={end}")
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    data = resp.get_json()
    assert data["server_id"] == s["id"]
    assert data["step"] == auto_step(end - start) == 30
    assert data["agg"] == "mean"
    got = {(x["measurement"], x["field"]): x for x in data["series"]}
    assert set(got) == {("cpu", "usage_percent"), ("system", "load1")}
    assert [v for _, v in got[("cpu", "usage_percent")]["points"]] == [42.0]
    assert got[("cpu", "usage_percent")]["unit"] == "%"
    one = b.get(f"/servers/{s['id']}/series?start={start}&end={end}&fields=system.load1")
    assert [(x["measurement"], x["field"]) for x in one.get_json()["series"]] == [
        ("system", "load1")
    ]
    assert b.get(f"/servers/{s['id']}/series?start={end}&end={start}").status_code == 400


def test_unknown_server_is_a_404_page(app: Flask, b: Browser) -> None:
    for path in ("/servers/424242", "/servers/424242/series"):
        resp = b.get(path)
        assert resp.status_code == 404, path
        assert resp.mimetype == "text/html"
        assert error_text(resp.text) == ["server 424242 not found"]
        assert "Request id" in resp.text
    token = csrf(app, b)
    for action in ("rotate-key", "disable", "enable", "delete"):
        resp = b.post(f"/servers/424242/{action}", data={"csrf_token": token})
        assert resp.status_code == 404, action


def test_rotate_key_shows_a_new_key_and_the_old_one_stops(
    app: Flask, admin_token: str, b: Browser
) -> None:
    api = app.test_client()
    s = register_server(api, admin_token)
    old = s["api_key"]
    assert push(api, old, {"fields": {"load1": 1.0}}).status_code == 204
    resp = b.post(f"/servers/{s['id']}/rotate-key", data={"csrf_token": csrf(app, b)})
    assert resp.status_code == 200
    m = re.search(r'<pre class="copy" id="new-key">(mks_[^<]+)</pre>', resp.text)
    assert m
    new = m.group(1)
    assert new != old
    assert push(api, old, {"fields": {"load1": 1.0}}).status_code == 401
    assert push(api, new, {"fields": {"load1": 1.0}}).status_code == 204
    # shown once
    assert new not in b.get(f"/servers/{s['id']}").text


def test_disable_and_enable(app: Flask, admin_token: str, b: Browser) -> None:
    api = app.test_client()
    s = register_server(api, admin_token)
    token = csrf(app, b)
    resp = b.post(f"/servers/{s['id']}/disable", data={"csrf_token": token})
    assert resp.status_code == 302 and resp.headers["Location"] == f"/servers/{s['id']}"
    page = b.get(f"/servers/{s['id']}").text
    assert "web-01 is disabled" in page and '<span class="badge">disabled</span>' in page
    assert 'data-dialog="dlg-enable"' in page
    assert push(api, s["api_key"], {"fields": {"load1": 1.0}}).status_code == 403
    assert "disabled</span>" in b.get("/").text
    b.post(f"/servers/{s['id']}/enable", data={"csrf_token": token})
    assert push(api, s["api_key"], {"fields": {"load1": 1.0}}).status_code == 204
    assert "web-01 is enabled" in b.get(f"/servers/{s['id']}").text


def test_delete_needs_the_hostname_typed(app: Flask, admin_token: str, b: Browser) -> None:
    api = app.test_client()
    s = register_server(api, admin_token, "web-01")
    keep = register_server(api, admin_token, "keep", "192.0.2.99")
    push(api, s["api_key"], {"fields": {"load1": 1.0}})
    push(api, keep["api_key"], {"fields": {"load1": 2.0}})
    token = csrf(app, b)
    for typed in ("", "web-02", "web", "keep"):
        resp = b.post(
            f"/servers/{s['id']}/delete", data={"csrf_token": token, "confirm_hostname": typed}
        )
        assert resp.status_code == 302 and resp.headers["Location"] == f"/servers/{s['id']}"
        assert "not deleted: type web-01 to confirm" in b.get(resp.headers["Location"]).text
    assert api.get(f"/api/v1/servers/{s['id']}", headers=bearer(admin_token)).status_code == 200
    assert push(api, s["api_key"], {"fields": {"load1": 1.0}}).status_code == 204

    resp = b.post(
        f"/servers/{s['id']}/delete", data={"csrf_token": token, "confirm_hostname": " WEB-01 "}
    )
    assert resp.status_code == 302 and resp.headers["Location"] == "/"
    assert "web-01 and all of its data were deleted" in b.get("/").text
    assert api.get(f"/api/v1/servers/{s['id']}", headers=bearer(admin_token)).status_code == 404
    assert push(api, s["api_key"], {"fields": {"load1": 1.0}}).status_code == 401
    store = app.extensions["monapi.tsdb"]
    assert store.latest([s["id"]])[s["id"]] == []
    assert [v.value for v in store.latest([keep["id"]])[keep["id"]]] == [2.0]
    assert hostnames(b.get("/").text) == ["keep"]


# ---- fields ----------------------------------------------------------------------------------


def field_id(app: Flask, measurement: str, name: str) -> int:
    with app.app_context():
        return int(
            db.session()
            .execute(
                select(FieldConfig.id).where(
                    FieldConfig.measurement == measurement, FieldConfig.name == name
                )
            )
            .scalar_one()
        )


def test_fields_list_marks_discovered_fields(
    make: Callable[..., tuple[Flask, str]],
) -> None:
    app, admin_token = make(unknown_fields="discover")
    api = app.test_client()
    key = register_server(api, admin_token)["api_key"]
    assert push(api, key, {"measurement": "app", "fields": {"queue": 5}}).status_code == 204
    b = signed_in(app)
    page = b.get("/fields").text
    rows = dict(re.findall(r'<tr data-field="([^"]+)">(.*?)</tr>', page, re.S))
    assert 'class="badge discovered"' in rows["app.queue"]
    assert "discovered" not in rows["cpu.usage_percent"]
    assert '<td data-label="Max">100</td>' in rows["cpu.usage_percent"]
    only = b.get("/fields?show=discovered").text
    assert re.findall(r'<tr data-field="([^"]+)">', only) == ["app.queue"]


def test_add_a_field_and_it_applies_to_the_next_push(
    app: Flask, admin_token: str, b: Browser
) -> None:
    api = app.test_client()
    key = register_server(api, admin_token)["api_key"]
    assert push(api, key, {"measurement": "app", "fields": {"queue": 5}}).status_code == 422
    form = b.get("/fields/new").text
    resp = b.post(
        "/fields/new",
        data={
            "csrf_token": form_token(form),
            "measurement": "app",
            "name": "queue",
            "type": "int",
            "unit": "jobs",
            "min": "0",
            "max": "10",
            "description": "jobs waiting",
            "enabled": "on",
        },
    )
    assert resp.status_code == 302 and resp.headers["Location"] == "/fields"
    page = b.get("/fields").text
    assert "field app.queue added" in page
    assert '<tr data-field="app.queue">' in page
    assert push(api, key, {"measurement": "app", "fields": {"queue": 5}}).status_code == 204
    assert push(api, key, {"measurement": "app", "fields": {"queue": 50}}).status_code == 422


ADD_FIELD_ERRORS: list[tuple[dict[str, str], str, str]] = [
    # (form, where the message is shown, message)
    ({"measurement": "bad name!", "name": "x", "type": "float"}, "measurement", "measurement: "),
    ({"measurement": "app", "name": "", "type": "float"}, "name", "name: "),
    ({"measurement": "app", "name": "x", "type": "complex"}, "type", "Input should be"),
    ({"measurement": "app", "name": "x", "type": "float", "min": "abc"}, "min", "min must be a"),
    ({"measurement": "app", "name": "x", "type": "float", "max": "inf"}, "max", "max must be a"),
    (
        {"measurement": "app", "name": "x", "type": "float", "min": "5", "max": "1"},
        "form",
        "min (5) is greater than max (1)",
    ),
    (
        {"measurement": "app", "name": "x", "type": "bool", "min": "1"},
        "form",
        "min and max apply to numeric fields, not bool",
    ),
    (
        {"measurement": "cpu", "name": "usage_percent", "type": "float"},
        "name",
        "field cpu.usage_percent already exists",
    ),
]


def test_add_field_is_checked_like_the_api(app: Flask, b: Browser) -> None:
    token = csrf(app, b)
    for form, where, message in ADD_FIELD_ERRORS:
        resp = b.post("/fields/new", data={"csrf_token": token, **form})
        assert resp.status_code == 422, form
        assert "The field was not saved" in resp.text
        if where == "form":  # errors of the whole form are in the banner at the top
            assert message in error_text(resp.text)[0], form
        else:
            errors = field_errors(resp.text)
            assert message in errors[where].replace("&#39;", "'"), form
        # what was typed is kept
        assert f'name="measurement" value="{form["measurement"]}"' in resp.text
    with app.app_context():
        n = (
            db.session()
            .execute(
                select(func.count())
                .select_from(FieldConfig)
                .where(FieldConfig.measurement == "app")
            )
            .scalar_one()
        )
        assert n == 0


def test_edit_a_field_applies_to_the_next_push(app: Flask, admin_token: str, b: Browser) -> None:
    api = app.test_client()
    key = register_server(api, admin_token)["api_key"]
    fid = field_id(app, "system", "load1")
    form = b.get(f"/fields/{fid}/edit")
    assert form.status_code == 200
    assert 'name="min" value="0"' in form.text and 'name="max" value=""' in form.text
    token = form_token(form.text)

    def save(**values: str) -> TestResponse:
        return b.post(f"/fields/{fid}/edit", data={"csrf_token": token, **values})

    assert push(api, key, {"fields": {"load1": 50.0}}).status_code == 204
    resp = save(unit="procs", min="0", max="20", description="run queue", enabled="on")
    assert resp.status_code == 302 and resp.headers["Location"] == "/fields"
    assert push(api, key, {"fields": {"load1": 50.0}}).status_code == 422
    assert push(api, key, {"fields": {"load1": 5.0}}).status_code == 204
    row = re.search(r'<tr data-field="system.load1">(.*?)</tr>', b.get("/fields").text, re.S)
    assert row and '"Unit">procs<' in row.group(1) and '"Max">20<' in row.group(1)
    # an unchecked box disables the field
    save(unit="procs", min="0", max="20")
    assert push(api, key, {"fields": {"load1": 5.0}}).status_code == 422
    save(unit="", min="", max="", enabled="on")
    assert push(api, key, {"fields": {"load1": 500.0}}).status_code == 204
    with app.app_context():
        f = db.session().get(FieldConfig, fid)
        assert f is not None
        assert (f.unit, f.min_value, f.max_value, f.enabled) == ("", None, None, True)


def test_edit_field_errors(app: Flask, b: Browser) -> None:
    fid = field_id(app, "system", "load1")
    token = csrf(app, b)
    resp = b.post(f"/fields/{fid}/edit", data={"csrf_token": token, "min": "x", "enabled": "on"})
    assert resp.status_code == 422 and field_errors(resp.text) == {"min": "min must be a number"}
    resp = b.post(f"/fields/{fid}/edit", data={"csrf_token": token, "min": "9", "max": "1"})
    assert resp.status_code == 422
    assert "min (9) is greater than max (1)" in resp.text
    with app.app_context():
        f = db.session().get(FieldConfig, fid)
        assert f is not None and (f.min_value, f.max_value, f.enabled) == (0.0, None, True)
    assert b.get("/fields/999999/edit").status_code == 404


def test_edit_bounds_of_a_bool_field_is_refused(app: Flask, admin_token: str, b: Browser) -> None:
    api = app.test_client()
    created = api.post(
        "/api/v1/fields",
        headers=bearer(admin_token),
        json={"measurement": "app", "name": "healthy", "type": "bool"},
    )
    assert created.status_code == 201
    fid = created.get_json()["id"]
    resp = b.post(
        f"/fields/{fid}/edit", data={"csrf_token": csrf(app, b), "min": "1", "enabled": "on"}
    )
    assert resp.status_code == 422
    assert "not bool" in field_errors(resp.text)["min"]


def test_delete_a_field(app: Flask, admin_token: str, b: Browser) -> None:
    api = app.test_client()
    key = register_server(api, admin_token)["api_key"]
    fid = field_id(app, "system", "load1")
    resp = b.post(f"/fields/{fid}/delete", data={"csrf_token": csrf(app, b)})
    assert resp.status_code == 302 and resp.headers["Location"] == "/fields"
    page = b.get("/fields").text
    assert "field system.load1 removed" in page
    assert 'data-field="system.load1"' not in page and 'data-field="system.load5"' in page
    assert push(api, key, {"fields": {"load1": 1.0}}).status_code == 422
    assert b.post(f"/fields/{fid}/delete", data={"csrf_token": csrf(app, b)}).status_code == 404


# ---- enrollment ------------------------------------------------------------------------------


def created_token(html: str) -> str:
    m = re.search(r'<code id="token-value">(mke_[^<]+)</code>', html)
    assert m, html
    return m.group(1)


def install_commands(html: str) -> list[str]:
    m = re.search(r'<pre class="copy" id="install-commands">(.*?)</pre>', html, re.S)
    assert m
    return [line for line in m.group(1).splitlines() if line]


def test_enrollment_token_is_shown_once_with_the_install_commands(app: Flask, b: Browser) -> None:
    token = csrf(app, b)
    resp = b.post(
        "/enrollment",
        data={"csrf_token": token, "name": "rack 4", "expires_in": "24h", "max_uses": "2"},
    )
    assert resp.status_code == 200
    secret = created_token(resp.text)
    commands = install_commands(resp.text)
    assert commands[0] == "python3 -m venv /opt/monapi-agent"
    assert (
        f"/opt/monapi-agent/bin/monapi-agent register --url {HTTPS} --enroll-token {secret}"
        in commands
    )
    assert "Token rack 4 created" in resp.text
    token_id = secret.split("_")[1]
    listing = b.get("/enrollment").text
    assert secret not in listing
    row = re.search(rf'<tr data-token="{token_id}">(.*?)</tr>', listing, re.S)
    assert row and "rack 4" in row.group(1) and "0 of 2" in row.group(1)
    assert "active" in row.group(1)


def test_install_commands_use_the_public_url(make: Callable[..., tuple[Flask, str]]) -> None:
    app, _ = make(public_url="https://mon.example.com")
    b = signed_in(app)
    resp = b.post("/enrollment", data={"csrf_token": csrf(app, b), "expires_in": ""})
    secret = created_token(resp.text)
    assert any(
        c.endswith(f"register --url https://mon.example.com --enroll-token {secret}")
        for c in install_commands(resp.text)
    )


ENROLLMENT_ERRORS: list[tuple[dict[str, str], dict[str, str]]] = [
    ({"expires_in": "soon"}, {"expires_in": "lifetime: "}),
    ({"expires_in": "0s"}, {"expires_in": "lifetime must be from 1s to 10 years"}),
    ({"max_uses": "0"}, {"max_uses": "uses must be a whole number from 1 to 1,000,000"}),
    ({"max_uses": "x"}, {"max_uses": "uses must be a whole number"}),
    ({"max_uses": "1000001"}, {"max_uses": "uses must be a whole number"}),
    ({"max_uses": "-1"}, {"max_uses": "uses must be a whole number"}),
    ({"name": "n" * 201}, {"name": "the name is at most 200 characters"}),
    (
        {"expires_in": "-1h", "max_uses": "0"},
        {"expires_in": "lifetime: ", "max_uses": "uses must be"},
    ),
]


def test_enrollment_form_errors(app: Flask, b: Browser) -> None:
    token = csrf(app, b)
    for form, errors in ENROLLMENT_ERRORS:
        resp = b.post("/enrollment", data={"csrf_token": token, **form})
        assert resp.status_code == 422, form
        assert "The token was not created" in resp.text
        shown = field_errors(resp.text)
        assert set(shown) == set(errors), form
        for name, text in errors.items():
            assert shown[name].startswith(text), shown
        assert "token-value" not in resp.text
        # what was typed is kept
        for name, value in form.items():
            assert f'name="{name}"' in resp.text and f'value="{value}"' in resp.text
    with app.app_context():
        assert auth.ENROLL not in db.session().execute(select(ApiKey.kind)).scalars().all()


def test_enrollment_uses_with_a_superscript_digit_is_a_422(app: Flask, b: Browser) -> None:
    resp = b.post("/enrollment", data={"csrf_token": csrf(app, b), "max_uses": "\u00b2"})
    assert resp.status_code == 422


def test_enrollment_lifetime_is_bounded_like_the_api(app: Flask, b: Browser) -> None:
    resp = b.post("/enrollment", data={"csrf_token": csrf(app, b), "expires_in": "99999999d"})
    assert resp.status_code == 422


def test_enrollment_token_registers_servers_until_revoked(app: Flask, b: Browser) -> None:
    api = app.test_client()
    resp = b.post("/enrollment", data={"csrf_token": csrf(app, b), "name": "ci"})
    secret = created_token(resp.text)
    register_server(api, secret, "enrolled-1")
    token_id = secret.split("_")[1]
    revoked = b.post(f"/enrollment/{token_id}/revoke", data={"csrf_token": csrf(app, b)})
    assert revoked.status_code == 302 and revoked.headers["Location"] == "/enrollment"
    listing = b.get("/enrollment").text
    assert "token ci revoked" in listing
    row = re.search(rf'<tr data-token="{token_id}">(.*?)</tr>', listing, re.S)
    assert row and '<span class="badge">revoked</span>' in row.group(1)
    again = api.post(
        "/api/v1/servers",
        headers=bearer(secret),
        json={"hostname": "enrolled-2", "ip_address": "192.0.2.5"},
    )
    assert again.status_code == 401
    unknown = b.post("/enrollment/0123456789abcdef/revoke", data={"csrf_token": csrf(app, b)})
    assert unknown.status_code == 302
    assert "not found" in b.get("/enrollment").text


def test_enrollment_token_with_a_use_limit(app: Flask, b: Browser) -> None:
    api = app.test_client()
    resp = b.post("/enrollment", data={"csrf_token": csrf(app, b), "max_uses": "1"})
    secret = created_token(resp.text)
    register_server(api, secret, "first")
    second = api.post(
        "/api/v1/servers",
        headers=bearer(secret),
        json={"hostname": "second", "ip_address": "192.0.2.6"},
    )
    assert second.status_code == 401
    assert "expired or used up" in b.get("/enrollment").text


# ---- start-up check --------------------------------------------------------------------------


def test_startup_fails_if_a_dashboard_view_is_not_behind_login_required(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import monapi.dashboard.overview as overview_module

    settings = {"data_dir": tmp_path / "d", "log_level": "WARNING"}
    initialize(load_settings(settings))
    monkeypatch.delattr(overview_module.overview, "login_required")
    with pytest.raises(RuntimeError, match=r"dashboard\.overview is not behind login_required"):
        create_app({**settings, "TESTING": True})
    monkeypatch.undo()
    app = create_app({**settings, "TESTING": True})
    _created.append(app)
    assert app.test_client().get("/").status_code == 302


# ---- charts.py: pure functions ---------------------------------------------------------------


def test_spark_path_empty_and_degenerate_ranges() -> None:
    assert charts.spark_path([], 0, 1000, 100) == ""
    assert charts.spark_path([(500, 50.0)], 1000, 1000, 100) == ""
    assert charts.spark_path([(500, 50.0)], 1000, 0, 100) == ""


def test_spark_path_maps_time_and_value_to_the_box() -> None:
    # x: 0..1000 ns -> 0..100; y: 0..100 % -> 24..0
    assert charts.spark_path([(500, 50.0)], 0, 1000, 100) == "M50.0 12.0h1"
    assert charts.spark_path([(0, 0.0), (100, 100.0)], 0, 1000, 100) == "M0.0 24.0L10.0 0.0"
    assert (
        charts.spark_path([(0, 5.0), (100, 10.0)], 0, 1000, 100, lo=0, hi=10, width=10, height=10)
        == "M0.0 5.0L1.0 0.0"
    )


def test_spark_path_gaps_break_the_line_and_lone_points_get_a_dash() -> None:
    pts = [(0, 10.0), (100, 20.0), (300, 30.0), (500, 40.0), (600, 50.0)]
    d = charts.spark_path(pts, 0, 1000, 100)
    assert d == "M0.0 21.6L10.0 19.2M30.0 16.8h1M50.0 14.4L60.0 12.0"
    # a lone point at the end
    assert charts.spark_path([(0, 10.0), (500, 40.0)], 0, 1000, 100) == "M0.0 21.6h1M50.0 14.4h1"


def test_spark_path_clamps_values_outside_the_range() -> None:
    assert charts.spark_path([(0, 150.0), (100, -20.0)], 0, 1000, 100) == "M0.0 0.0L10.0 24.0"
    # a flat range (hi == lo) does not divide by zero
    assert charts.spark_path([(0, 5.0)], 0, 1000, 100, lo=5, hi=5) == "M0.0 24.0h1"


def test_merge_max_takes_the_highest_value_per_bucket() -> None:
    a = Series("disk", "used_percent", {"mount": "/"}, [(0, 10.0), (100, 70.0), (200, 5)])
    b = Series("disk", "used_percent", {"mount": "/var"}, [(100, 30.0), (0, 40.0), (300, 1.0)])
    junk = Series(
        "disk",
        "used_percent",
        {"mount": "/x"},
        [(0, float("nan")), (100, float("inf")), (200, True), (300, "full")],
    )
    merged = charts.merge_max([a, b, junk])
    assert merged == [(0, 40.0), (100, 70.0), (200, 5.0), (300, 1.0)]
    assert all(isinstance(v, float) for _, v in merged)
    assert charts.merge_max([]) == []


def test_fmt_value() -> None:
    dash = "\u2013"
    cases: list[tuple[Any, str, str]] = [
        (None, "", dash),
        (True, "", "true"),
        (False, "%", "false"),
        ("up", "", "up"),
        (12.345, "%", "12.3 %"),
        (7, "percent", "7.0 %"),
        (1536, "B", "1.5 KiB"),
        (1536, "bytes", "1.5 KiB"),
        (2048.0, "B/s", "2.0 KiB/s"),
        (90, "s", "90 s"),
        (3700, "s", "1h 1m"),
        (120.0, "seconds", "2m 0s"),
        (1234567, "", "1,234,567"),
        (1234.5, "", "1,234.5"),
        (0.1, "", "0.1"),
        (2.0, "req", "2 req"),
        (0.0, "", "0"),
    ]
    for value, unit, expected in cases:
        assert charts.fmt_value(value, unit) == expected, (value, unit)


def test_fmt_bytes() -> None:
    assert charts.fmt_bytes(0) == "0 B"
    assert charts.fmt_bytes(1023) == "1023 B"
    assert charts.fmt_bytes(1024) == "1.0 KiB"
    assert charts.fmt_bytes(5 * 1024**3) == "5.0 GiB"
    assert charts.fmt_bytes(3 * 1024**6) == "3072.0 PiB"
    assert charts.fmt_bytes(-2048) == "-2.0 KiB"


def test_fmt_duration() -> None:
    assert charts.fmt_duration(0) == "0s"
    assert charts.fmt_duration(59.9) == "59s"
    assert charts.fmt_duration(61) == "1m 1s"
    assert charts.fmt_duration(3700) == "1h 1m"
    assert charts.fmt_duration(90061) == "1d 1h"
    assert charts.fmt_duration(86400 * 400) == "400d 0h"


def test_fmt_ago() -> None:
    assert charts.fmt_ago(None) == "never"
    assert charts.fmt_ago(0) == "just now"
    assert charts.fmt_ago(9.9) == "just now"
    assert charts.fmt_ago(10) == "10 s ago"
    assert charts.fmt_ago(89) == "89 s ago"
    assert charts.fmt_ago(90) == "2 min ago"
    assert charts.fmt_ago(600) == "10 min ago"
    assert charts.fmt_ago(5400) == "2 h ago"
    assert charts.fmt_ago(7200) == "2 h ago"
    assert charts.fmt_ago(172800) == "2 d ago"
    assert charts.fmt_ago(86400 * 10) == "10 d ago"
