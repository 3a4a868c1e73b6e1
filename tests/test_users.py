"""Dashboard users: argon2id hashes, log-in with lock-out, and the ``monapi admin`` user
commands, on a real configuration store with the real hashing parameters."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from typing import Any

import pytest
from argon2 import PasswordHasher
from argon2.exceptions import VerifyMismatchError
from click.testing import CliRunner, Result
from flask import Flask
from sqlalchemy import func, select

from monapi import db
from monapi.cli import main
from monapi.models import DashboardSession, User, utcnow
from monapi.services import users

# Every test here runs on the embedded SQLite store and on PostgreSQL.
CONFIG_STORES = ["sqlite", "postgresql"]

PASSWORD = "correct horse battery"
ARGON2_PARAMS = re.compile(r"^\$argon2id\$v=19\$(m=\d+,t=\d+,p=\d+)\$")


@pytest.fixture
def quick_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """argon2id with small parameters, for tests about something else than the hash's cost
    (the real parameters cost up to 0.3 s a hash on a busy machine)."""
    quick = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    monkeypatch.setattr(users, "_hasher", quick)
    monkeypatch.setattr(users, "_DUMMY_HASH", quick.hash("monapi: no such user"))


def argon2_params(hashed: str) -> str:
    m = ARGON2_PARAMS.match(hashed)
    assert m, hashed
    return m.group(1)


def login(app: Flask, name: str, password: str, **kw: Any) -> User:
    with app.app_context():
        user = users.authenticate(
            db.session(),
            name,
            password,
            max_failures=kw.pop("max_failures", 3),
            lockout=kw.pop("lockout", 60),
            **kw,
        )
        db.session().expunge(user)
        return user


def refused(app: Flask, name: str, password: str, **kw: Any) -> users.LoginRefused:
    with pytest.raises(users.LoginRefused) as info:
        login(app, name, password, **kw)
    return info.value


def user_row(app: Flask, name: str) -> User | None:
    with app.app_context():
        user = users.get_user(db.session(), name)
        if user is not None:
            db.session().expunge(user)
        return user


def add_session(app: Flask, name: str, sid: str) -> None:
    with app.app_context():
        s = db.session()
        user = users.get_user(s, name)
        assert user is not None
        now = utcnow()
        s.add(
            DashboardSession(
                id=sid, user_id=user.id, last_seen_at=now, expires_at=now + timedelta(hours=1)
            )
        )
        s.commit()


def session_ids(app: Flask) -> list[str]:
    with app.app_context():
        return sorted(db.session().execute(select(DashboardSession.id)).scalars())


# ---- the service -----------------------------------------------------------------------------


def test_create_user_stores_an_argon2id_hash(app: Flask) -> None:
    with app.app_context():
        users.create_user(db.session(), "alice", PASSWORD)
    user = user_row(app, "alice")
    assert user is not None
    assert user.password_hash.startswith("$argon2id$")
    assert PASSWORD not in user.password_hash
    assert PasswordHasher().verify(user.password_hash, PASSWORD)
    with pytest.raises(VerifyMismatchError):
        PasswordHasher().verify(user.password_hash, PASSWORD + "!")
    assert (user.failed_logins, user.locked_until, user.last_login_at) == (0, None, None)
    assert user.created_at is not None
    # the library's defaults (RFC 9106 low-memory): 64 MiB, 3 passes, 4 lanes
    assert argon2_params(user.password_hash) == "m=65536,t=3,p=4"


def test_the_same_password_hashes_differently_for_each_user(app: Flask) -> None:
    with app.app_context():
        a = users.create_user(db.session(), "a", PASSWORD).password_hash
        b = users.create_user(db.session(), "b", PASSWORD).password_hash
    assert a != b  # a salt of their own


def test_duplicate_user_name_is_refused(app: Flask, quick_hashes: None) -> None:
    with app.app_context():
        s = db.session()
        users.create_user(s, "alice", PASSWORD)
        with pytest.raises(users.UserError, match="user 'alice' already exists"):
            users.create_user(s, "alice", "another password")
        # the session is usable after the refusal
        users.create_user(s, "bob", PASSWORD)
        assert [u.username for u in users.list_users(s)] == ["alice", "bob"]


def test_user_names_are_checked(app: Flask) -> None:
    for bad in ("", "-lead", ".dot", "has space", "x" * 65, "t\u00e9st", "a/b", "a:b"):
        with pytest.raises(users.UserError, match="user names are 1-64 letters"):
            users.check_username(bad)
    for good in ("a", "A1", "ops.team@example-1_x", "x" * 64, "1st"):
        assert users.check_username(good) == good
    with app.app_context():
        with pytest.raises(users.UserError):
            users.create_user(db.session(), "has space", PASSWORD)
        assert users.list_users(db.session()) == []


def test_a_user_name_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(users.UserError):
        users.check_username("alice\n")


def test_passwords_are_checked(app: Flask) -> None:
    with pytest.raises(users.UserError, match="at least 10 characters"):
        users.check_password("x" * 9)
    with pytest.raises(users.UserError, match="at most 1024 characters"):
        users.check_password("x" * 1025)
    assert users.check_password("x" * 10) == "x" * 10
    assert users.check_password("x" * 1024) == "x" * 1024
    with app.app_context():
        with pytest.raises(users.UserError, match="at least 10"):
            users.create_user(db.session(), "alice", "short")
        assert users.list_users(db.session()) == []


def test_authenticate_right_and_wrong_password(app: Flask, quick_hashes: None) -> None:
    with app.app_context():
        users.create_user(db.session(), "alice", PASSWORD)
    assert refused(app, "alice", "wrong password").message == "wrong user name or password"
    assert user_row(app, "alice").failed_logins == 1  # type: ignore[union-attr]
    user = login(app, "alice", PASSWORD)
    assert user.username == "alice"
    assert user.last_login_at is not None
    assert abs((utcnow() - user.last_login_at).total_seconds()) < 60
    assert user_row(app, "alice").failed_logins == 0  # type: ignore[union-attr]
    # the password is case-sensitive and not trimmed
    refused(app, "alice", PASSWORD.upper())
    refused(app, "alice", PASSWORD + " ")
    # so is the user name
    refused(app, "Alice", PASSWORD)


def test_unknown_user_gets_the_same_answer_after_the_same_work(app: Flask) -> None:
    with app.app_context():
        real = users.create_user(db.session(), "alice", PASSWORD).password_hash
    for name in ("nobody", "not a valid name!", ""):
        exc = refused(app, name, PASSWORD)
        assert exc.message == "wrong user name or password"
        assert exc.retry_after is None
    # the stand-in hash checked for unknown users costs what a real one does...
    assert argon2_params(users._DUMMY_HASH) == argon2_params(real)
    # ...and is really checked: an unknown name takes about as long as a wrong password
    unknown, wrong = [], []
    for _ in range(3):
        t = time.perf_counter()
        refused(app, "nobody", "wrong password")
        unknown.append(time.perf_counter() - t)
        t = time.perf_counter()
        refused(app, "alice", "wrong password", max_failures=100)
        wrong.append(time.perf_counter() - t)
    assert min(unknown) > 0.25 * min(wrong), (unknown, wrong)
    # failed log-ins of unknown names count against nobody
    alice = user_row(app, "alice")
    assert alice is not None and alice.failed_logins == 3 and alice.locked_until is None


def test_lockout_after_repeated_failures_and_its_end(app: Flask, quick_hashes: None) -> None:
    with app.app_context():
        users.create_user(db.session(), "alice", PASSWORD)
    t0 = utcnow()
    for _ in range(2):
        exc = refused(app, "alice", "wrong password", now=t0)
        assert exc.retry_after is None
    locked = refused(app, "alice", "wrong password", now=t0)
    assert locked.retry_after == 60
    assert locked.message == "too many failed log-ins: this user is locked for 60 s"
    assert user_row(app, "alice").locked_until == t0 + timedelta(seconds=60)  # type: ignore[union-attr]
    # while locked: the right password is refused too, and tries do not extend the lock
    later = refused(app, "alice", PASSWORD, now=t0 + timedelta(seconds=30))
    assert later.retry_after == 30
    assert "locked for 30 s" in later.message
    refused(app, "alice", "wrong password", now=t0 + timedelta(seconds=59))
    assert user_row(app, "alice").locked_until == t0 + timedelta(seconds=60)  # type: ignore[union-attr]
    # once the lock is over, the right password works
    user = login(app, "alice", PASSWORD, now=t0 + timedelta(seconds=61))
    assert user.locked_until is None and user.failed_logins == 0


def test_lockout_message_in_minutes(app: Flask, quick_hashes: None) -> None:
    with app.app_context():
        users.create_user(db.session(), "alice", PASSWORD)
    exc = refused(app, "alice", "wrong password", max_failures=1, lockout=900)
    assert exc.retry_after == 900
    assert exc.message == "too many failed log-ins: this user is locked for 15 min"


def test_an_outdated_hash_is_upgraded_at_log_in(app: Flask) -> None:
    weak = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    with app.app_context():
        s = db.session()
        user = users.create_user(s, "alice", PASSWORD)
        user.password_hash = weak.hash(PASSWORD)
        s.commit()
    login(app, "alice", PASSWORD)
    upgraded = user_row(app, "alice").password_hash  # type: ignore[union-attr]
    assert argon2_params(upgraded) == "m=65536,t=3,p=4"
    assert PasswordHasher().verify(upgraded, PASSWORD)


def test_set_password_unlocks_and_ends_the_users_sessions(app: Flask, quick_hashes: None) -> None:
    with app.app_context():
        users.create_user(db.session(), "alice", PASSWORD)
        users.create_user(db.session(), "bob", PASSWORD)
    add_session(app, "alice", "a" * 64)
    add_session(app, "bob", "b" * 64)
    refused(app, "alice", "wrong password", max_failures=1)
    assert user_row(app, "alice").locked_until is not None  # type: ignore[union-attr]
    with app.app_context():
        s = db.session()
        user = users.get_user(s, "alice")
        assert user is not None
        with pytest.raises(users.UserError, match="at least 10"):
            users.set_password(s, user, "short")
        s.rollback()
        users.set_password(s, user, "a new long password")
    after = user_row(app, "alice")
    assert after is not None and after.locked_until is None and after.failed_logins == 0
    assert session_ids(app) == ["b" * 64]
    refused(app, "alice", PASSWORD)
    assert login(app, "alice", "a new long password").username == "alice"


def test_delete_user_removes_the_user_and_the_sessions(app: Flask, quick_hashes: None) -> None:
    with app.app_context():
        users.create_user(db.session(), "alice", PASSWORD)
        users.create_user(db.session(), "bob", PASSWORD)
    add_session(app, "alice", "a" * 64)
    add_session(app, "bob", "b" * 64)
    with app.app_context():
        s = db.session()
        user = users.get_user(s, "alice")
        assert user is not None
        users.delete_user(s, user)
        assert [u.username for u in users.list_users(s)] == ["bob"]
    assert session_ids(app) == ["b" * 64]
    assert refused(app, "alice", PASSWORD).message == "wrong user name or password"


# ---- the command line ------------------------------------------------------------------------


def cli(app: Flask, *args: str, input: str | None = None) -> Result:
    """Run ``monapi ARGS`` against the app's stores (the CLI reads its settings from the
    environment)."""
    settings = app.extensions["monapi.settings"]
    env = {"MONAPI_DATA_DIR": str(settings.data_dir), "MONAPI_LOG_LEVEL": "WARNING"}
    if settings.database_url:
        env["MONAPI_DATABASE_URL"] = settings.database_url
    return CliRunner().invoke(main, list(args), input=input, env=env)


def user_count(app: Flask) -> int:
    with app.app_context():
        return int(db.session().execute(select(func.count()).select_from(User)).scalar_one())


def test_cli_create_user_from_stdin(app: Flask, quick_hashes: None) -> None:
    result = cli(app, "admin", "create-user", "alice", "--password-stdin", input=PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "created dashboard user alice"
    assert PASSWORD not in result.output
    user = user_row(app, "alice")
    assert user is not None and user.password_hash.startswith("$argon2id$")
    assert login(app, "alice", PASSWORD).username == "alice"
    # only the line ending is taken off: spaces are part of the password
    result = cli(
        app, "admin", "create-user", "bob", "--password-stdin", input=" spaced out pw \r\n"
    )
    assert result.exit_code == 0, result.output
    assert login(app, "bob", " spaced out pw ").username == "bob"


def test_cli_create_user_asks_for_the_password_twice(app: Flask, quick_hashes: None) -> None:
    result = cli(app, "admin", "create-user", "alice", input=f"{PASSWORD}\n{PASSWORD}\n")
    assert result.exit_code == 0, result.output
    assert "created dashboard user alice" in result.output
    assert login(app, "alice", PASSWORD).username == "alice"
    # two different answers: asked again, and with nothing more to read, no user is made
    result = cli(app, "admin", "create-user", "bob", input=f"{PASSWORD}\nsomething else\n")
    assert result.exit_code != 0
    assert "do not match" in result.output
    assert user_row(app, "bob") is None


def test_cli_create_user_refusals(app: Flask, quick_hashes: None) -> None:
    ok = cli(app, "admin", "create-user", "alice", "--password-stdin", input=PASSWORD + "\n")
    assert ok.exit_code == 0, ok.output
    for args, stdin, message in [
        (["alice"], PASSWORD, "monapi: user 'alice' already exists"),
        (["bad name"], PASSWORD, "monapi: user names are 1-64 letters"),
        (["bob"], "short", "monapi: the password must be at least 10 characters"),
        (["bob"], "", "monapi: the password must be at least 10 characters"),
    ]:
        result = cli(app, "admin", "create-user", *args, "--password-stdin", input=stdin + "\n")
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, result.output
    assert user_count(app) == 1


def test_cli_list_users(app: Flask, quick_hashes: None) -> None:
    result = cli(app, "admin", "list-users")
    assert result.exit_code == 0 and result.output.strip() == "(none)"
    for name in ("bob", "alice"):
        cli(app, "admin", "create-user", name, "--password-stdin", input=PASSWORD + "\n")
    login(app, "alice", PASSWORD)
    lines = cli(app, "admin", "list-users").output.splitlines()
    assert lines[0].split() == ["username", "created_at", "last_login_at", "locked_until"]
    rows = [line.split() for line in lines[1:]]
    assert [r[0] for r in rows] == ["alice", "bob"]
    assert rows[0][2] != "-" and rows[0][3] == "-"  # alice has logged in
    assert rows[1][2:] == ["-", "-"]
    assert all(PASSWORD not in line and "argon2" not in line for line in lines)


def test_cli_set_password(app: Flask, quick_hashes: None) -> None:
    cli(app, "admin", "create-user", "alice", "--password-stdin", input=PASSWORD + "\n")
    add_session(app, "alice", "a" * 64)
    refused(app, "alice", "wrong password", max_failures=1)  # locked
    result = cli(
        app, "admin", "set-password", "alice", "--password-stdin", input="a new long password\n"
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "password of alice changed"
    assert session_ids(app) == []
    refused(app, "alice", PASSWORD)
    assert login(app, "alice", "a new long password").username == "alice"

    short = cli(app, "admin", "set-password", "alice", "--password-stdin", input="short\n")
    assert short.exit_code == 2 and "at least 10 characters" in short.output
    assert login(app, "alice", "a new long password").username == "alice"
    unknown = cli(app, "admin", "set-password", "nobody", "--password-stdin", input=PASSWORD)
    assert unknown.exit_code == 2
    assert "monapi: no dashboard user 'nobody'" in unknown.output


def test_cli_delete_user(app: Flask, quick_hashes: None) -> None:
    for name in ("alice", "bob"):
        cli(app, "admin", "create-user", name, "--password-stdin", input=PASSWORD + "\n")
    add_session(app, "alice", "a" * 64)
    result = cli(app, "admin", "delete-user", "alice")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "deleted dashboard user alice"
    assert user_row(app, "alice") is None and user_row(app, "bob") is not None
    assert session_ids(app) == []
    again = cli(app, "admin", "delete-user", "alice")
    assert again.exit_code == 2
    assert "monapi: no dashboard user 'alice'" in again.output


def test_cli_user_can_sign_in_to_the_dashboard(app: Flask, quick_hashes: None) -> None:
    cli(app, "admin", "create-user", "alice", "--password-stdin", input=PASSWORD + "\n")
    client = app.test_client()
    token = re.search(
        r'name="csrf_token" value="([^"]+)"',
        client.get("/login", base_url="https://localhost").text,
    )
    assert token
    resp = client.post(
        "/login",
        data={"csrf_token": token.group(1), "username": "alice", "password": PASSWORD},
        base_url="https://localhost",
    )
    assert resp.status_code == 302 and resp.headers["Location"] == "/"
    assert client.get("/", base_url="https://localhost").status_code == 200
