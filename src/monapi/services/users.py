"""Dashboard users: argon2 password hashes, log-in with lock-out after repeated failures."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..models import DashboardSession, User, utcnow

USERNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
MIN_PASSWORD = 10
MAX_PASSWORD = 1024
# argon2id with the library's defaults (RFC 9106 "low memory": t=3, m=64 MiB, p=4): about
# 50 ms per check here, which is what slows guessing down, on top of the lock-out.
_hasher = PasswordHasher()
# Checked when the user name is unknown, so that an unknown name takes as long as a wrong password.
# Made on first use: hashing costs ~180 ms, which every process importing this module (each
# gunicorn worker, each CLI command) would otherwise pay at start.
_DUMMY_HASH: str | None = None


class UserError(ValueError):
    """A user name or password that cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class LoginRefused(Exception):
    """A failed log-in: ``message`` is what the user is told; ``retry_after`` is set when
    the user is locked."""

    message: str
    retry_after: int | None = None


def check_username(username: str) -> str:
    """The user name, or UserError saying what is allowed."""
    if not USERNAME_RE.fullmatch(username):
        raise UserError(
            "user names are 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter "
            "or digit"
        )
    return username


def check_password(password: str) -> str:
    """The password, or UserError saying what is required."""
    if len(password) < MIN_PASSWORD:
        raise UserError(f"the password must be at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise UserError(f"the password must be at most {MAX_PASSWORD} characters")
    return password


def hash_password(password: str) -> str:
    """The argon2id hash of a password (with its own random salt)."""
    return _hasher.hash(password)


def get_user(session: Session, username: str) -> User | None:
    """The user with this name, if any."""
    return session.execute(select(User).where(User.username == username)).scalar_one_or_none()


def create_user(session: Session, username: str, password: str) -> User:
    """Add a dashboard user; UserError if the name is taken or the password too short."""
    user = User(
        username=check_username(username),
        password_hash=hash_password(check_password(password)),
        failed_logins=0,
    )
    session.add(user)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise UserError(f"user {username!r} already exists") from None
    return user


def set_password(session: Session, user: User, password: str) -> None:
    """Change a user's password; it also unlocks the user and ends the user's sessions."""
    user.password_hash = hash_password(check_password(password))
    user.failed_logins = 0
    user.locked_until = None
    session.execute(delete(DashboardSession).where(DashboardSession.user_id == user.id))
    session.commit()


def list_users(session: Session) -> list[User]:
    """Every dashboard user, by name."""
    return list(session.execute(select(User).order_by(User.username)).scalars())


def delete_user(session: Session, user: User) -> None:
    """Remove a user (and, by cascade, the user's sessions)."""
    session.execute(delete(DashboardSession).where(DashboardSession.user_id == user.id))
    session.delete(user)
    session.commit()


def authenticate(
    session: Session,
    username: str,
    password: str,
    *,
    max_failures: int,
    lockout: float,
    now: datetime | None = None,
) -> User:
    """The user if the password is right; LoginRefused otherwise.

    After ``max_failures`` wrong passwords in a row the user is locked for ``lockout`` seconds:
    every attempt is refused then, the right password included, without checking it."""
    now = now or utcnow()
    user = get_user(session, username) if USERNAME_RE.fullmatch(username) else None
    if user is None:
        _verify(_dummy_hash(), password)
        raise LoginRefused("wrong user name or password")
    if user.locked_until is not None and user.locked_until > now:
        wait = max(1, int((user.locked_until - now).total_seconds() + 0.999))
        raise LoginRefused(
            f"too many failed log-ins: this user is locked for {_minutes(wait)}", wait
        )
    if not _verify(user.password_hash, password):
        user.failed_logins = (user.failed_logins or 0) + 1
        locked = user.failed_logins >= max_failures
        if locked:
            user.locked_until = now + timedelta(seconds=lockout)
            user.failed_logins = 0
        session.commit()
        if locked:
            raise LoginRefused(
                f"too many failed log-ins: this user is locked for {_minutes(int(lockout))}",
                int(lockout),
            )
        raise LoginRefused("wrong user name or password")
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    user.failed_logins = 0
    user.locked_until = None
    user.last_login_at = now
    session.commit()
    return user


def _dummy_hash() -> str:
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = _hasher.hash("monapi: no such user")
    return _DUMMY_HASH


def _verify(stored: str, password: str) -> bool:
    try:
        return _hasher.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def _minutes(seconds: int) -> str:
    if seconds < 90:
        return f"{seconds} s"
    return f"{round(seconds / 60)} min"
