"""The ``monapi`` command line."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import click
from flask import Flask

from .settings import ConfigError, load_settings, parse_duration

GUNICORN_CONF = "python:monapi.gunicorn_conf"


def _fail(message: str) -> NoReturn:
    click.echo(f"monapi: {message}", err=True)
    sys.exit(2)


@contextmanager
def app_context() -> Iterator[Flask]:
    """An app (from the environment) with its context pushed; config errors end the command."""
    from .app import create_app

    try:
        app = create_app()
    except ConfigError as exc:
        _fail(str(exc))
    with app.app_context():
        yield app


@click.group()
@click.version_option(package_name="monapi")
def main() -> None:
    """monapi: self-hosted server-monitoring API. Settings come from MONAPI_* variables."""


# db ------------------------------------------------------------------------------------------
@main.group()
def db() -> None:
    """Configuration-store schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the configuration-store schema to the newest version."""
    from .db import Database

    try:
        settings = load_settings()
    except ConfigError as exc:
        _fail(str(exc))
    database = Database(settings.resolved_database_url)
    try:
        database.upgrade()
        click.echo(
            f"schema at {database.current_revision()} ({_safe_url(settings.resolved_database_url)})"
        )
    finally:
        database.dispose()


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# admin ---------------------------------------------------------------------------------------
@main.group()
def admin() -> None:
    """Admin tokens and dashboard users."""


@admin.command("create-token")
@click.option("--name", default="", help="what the token is for")
def admin_create_token(name: str) -> None:
    """Create an admin token and print it (shown only this once)."""
    from . import auth, db
    from .services.tokens import create_token

    with app_context():
        session = db.session()
        _row, token = create_token(session, auth.get_keys(), auth.ADMIN, name=name)
        session.commit()
    click.echo(token)


@admin.command("list-tokens")
def admin_list_tokens() -> None:
    """List admin tokens (ids and names; the secrets are never stored)."""
    from . import auth

    _list_tokens(auth.ADMIN)


@admin.command("revoke-token")
@click.argument("token_id")
def admin_revoke_token(token_id: str) -> None:
    """Revoke an admin token by its id (the part after mka_); it stops working at once."""
    from . import auth

    _revoke_token(auth.ADMIN, token_id)


def _list_tokens(kind: str) -> None:
    from . import db
    from .services.tokens import list_tokens, token_dict

    with app_context():
        rows = [token_dict(k) for k in list_tokens(db.session(), kind)]
    _table(rows, ["id", "name", "active", "uses", "max_uses", "expires_at", "created_at"])


def _revoke_token(kind: str, token_id: str) -> None:
    from . import db
    from .errors import ApiError
    from .services.tokens import revoke_token

    with app_context():
        session = db.session()
        try:
            revoke_token(session, kind, token_id)
        except ApiError as exc:
            _fail(exc.message)
        session.commit()
    click.echo(f"revoked {token_id}")


def _read_password(from_stdin: bool) -> str:
    """The new password: one line of standard input, or asked twice without echo."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    value: str = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    return value


_PASSWORD_STDIN = click.option(
    "--password-stdin", is_flag=True, help="read the password from standard input (one line)"
)


@admin.command("create-user")
@click.argument("username")
@_PASSWORD_STDIN
def admin_create_user(username: str, password_stdin: bool) -> None:
    """Create a dashboard user (the password is asked for, or read with --password-stdin)."""
    from . import db
    from .services import users

    try:
        users.check_username(username)
        password = users.check_password(_read_password(password_stdin))
    except users.UserError as exc:
        _fail(str(exc))
    with app_context():
        try:
            users.create_user(db.session(), username, password)
        except users.UserError as exc:
            _fail(str(exc))
    click.echo(f"created dashboard user {username}")


@admin.command("set-password")
@click.argument("username")
@_PASSWORD_STDIN
def admin_set_password(username: str, password_stdin: bool) -> None:
    """Change a dashboard user's password; also unlocks the user and ends the user's sessions."""
    from . import db
    from .services import users

    with app_context():
        session = db.session()
        user = users.get_user(session, username)
        if user is None:
            _fail(f"no dashboard user {username!r}")
        try:
            users.set_password(session, user, _read_password(password_stdin))
        except users.UserError as exc:
            _fail(str(exc))
    click.echo(f"password of {username} changed")


@admin.command("list-users")
def admin_list_users() -> None:
    """The dashboard users."""
    from . import db
    from .services import users

    with app_context():
        rows = [
            {
                "username": u.username,
                "created_at": u.created_at,
                "last_login_at": u.last_login_at,
                "locked_until": u.locked_until,
            }
            for u in users.list_users(db.session())
        ]
    _table(rows, ["username", "created_at", "last_login_at", "locked_until"])


@admin.command("delete-user")
@click.argument("username")
def admin_delete_user(username: str) -> None:
    """Remove a dashboard user (and end the user's sessions)."""
    from . import db
    from .services import users

    with app_context():
        session = db.session()
        user = users.get_user(session, username)
        if user is None:
            _fail(f"no dashboard user {username!r}")
        users.delete_user(session, user)
    click.echo(f"deleted dashboard user {username}")


# enroll --------------------------------------------------------------------------------------
@main.group()
def enroll() -> None:
    """Enrollment tokens (let servers register themselves)."""


@enroll.command("create")
@click.option("--expires", default=None, help="lifetime, e.g. 24h, 7d (default: never)")
@click.option("--max-uses", type=click.IntRange(min=1), default=None, help="how many servers")
@click.option("--name", default="", help="what the token is for")
def enroll_create(expires: str | None, max_uses: int | None, name: str) -> None:
    """Create an enrollment token and print it (shown only this once)."""
    from . import auth, db
    from .schemas import MAX_TOKEN_LIFETIME_S
    from .services.tokens import create_token

    try:
        expires_s = parse_duration(expires) if expires else None
    except ValueError as exc:
        _fail(f"--expires: {exc}")
    if expires_s is not None and not 1 <= expires_s <= MAX_TOKEN_LIFETIME_S:
        _fail("--expires: from 1s to 10 years (3650d)")
    with app_context():
        session = db.session()
        _row, token = create_token(
            session,
            auth.get_keys(),
            auth.ENROLL,
            name=name,
            expires_in=expires_s,
            max_uses=max_uses,
        )
        session.commit()
    click.echo(token)


@enroll.command("list")
def enroll_list() -> None:
    """List enrollment tokens."""
    from . import auth

    _list_tokens(auth.ENROLL)


@enroll.command("revoke")
@click.argument("token_id")
def enroll_revoke(token_id: str) -> None:
    """Revoke an enrollment token by its id (the part after mke_)."""
    from . import auth

    _revoke_token(auth.ENROLL, token_id)


# servers -------------------------------------------------------------------------------------
@main.group()
def servers() -> None:
    """Registered servers."""


@servers.command("list")
def servers_list() -> None:
    """List servers with their status."""
    from . import db
    from .models import Server
    from .services.servers import server_dict

    with app_context():
        from sqlalchemy import select

        rows = [
            server_dict(s)
            for s in db.session().execute(select(Server).order_by(Server.id)).scalars()
        ]
    _table(rows, ["id", "hostname", "ip_address", "status", "enabled", "last_seen", "labels"])


def _table(rows: list[dict[str, Any]], cols: list[str]) -> None:
    if not rows:
        click.echo("(none)")
        return
    text = [[_cell(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in text)) for i, c in enumerate(cols)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for t in text:
        click.echo("  ".join(v.ljust(w) for v, w in zip(t, widths, strict=True)))


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, dict):
        return ",".join(f"{k}={x}" for k, x in v.items()) or "-"
    if hasattr(v, "isoformat"):
        return str(v.isoformat(timespec="seconds"))
    return str(v)


# serve ---------------------------------------------------------------------------------------
@main.command()
@click.option("--bind", default=None, help="host:port (default MONAPI_BIND or 127.0.0.1:8000)")
@click.option("--workers", type=int, default=None, help="worker processes (default: cores)")
@click.option("--threads", type=int, default=None, help="threads per worker (default 16)")
def serve(bind: str | None, workers: int | None, threads: int | None) -> None:
    """Set up the stores if needed and run monapi under gunicorn."""
    from .bootstrap import first_start_message, initialize

    for name, value in (("BIND", bind), ("WORKERS", workers), ("THREADS", threads)):
        if value is not None:
            os.environ[f"MONAPI_{name}"] = str(value)
    try:
        settings = load_settings()
        token = initialize(settings)
    except ConfigError as exc:
        _fail(str(exc))
    url = f"http://{settings.bind}"
    if token:
        click.echo(first_start_message(token, url))
    click.echo(
        f"monapi {url}  (API docs {url}/api/v1/swagger, data in {settings.data_dir.resolve()}, "
        f"{settings.workers} workers x {settings.threads} threads)",
    )
    sys.stdout.flush()
    os.execvp(
        sys.executable,
        [sys.executable, "-m", "gunicorn", "-c", GUNICORN_CONF],
    )


if __name__ == "__main__":
    main()
