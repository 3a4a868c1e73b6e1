"""Dashboard sign-in: server-side sessions behind a signed cookie, CSRF tokens, log-in limits.

The cookie (Flask's signed session: HttpOnly, SameSite=Lax, Secure unless MONAPI_COOKIE_SECURE is
false) holds a random session token and the CSRF token. Only the token's SHA-256 is stored, in
``dashboard_sessions``; log-out deletes the row, so a copied cookie stops working at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from flask import current_app, g, redirect, request, session, url_for
from sqlalchemy import delete
from werkzeug.wrappers import Response

from .. import db
from ..models import DashboardSession, User, utcnow
from ..settings import Settings

F = TypeVar("F", bound=Callable[..., Any])
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# How often a session's expiry is pushed forward (a write), at most.
TOUCH_EVERY = timedelta(seconds=60)


class CsrfError(Exception):
    """A state-changing request without the right CSRF token or from another origin."""


def settings() -> Settings:
    s: Settings = current_app.extensions["monapi.settings"]
    return s


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_token() -> str:
    """This browser's CSRF token (made on first use; renewed at log-in)."""
    token = session.get("csrf")
    if not isinstance(token, str) or len(token) < 32:
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def check_csrf() -> None:
    """Refuse a state-changing request whose token (form field ``csrf_token`` or header
    ``X-CSRF-Token``) does not match this browser's, or whose Origin is another site."""
    if request.method in SAFE_METHODS:
        return
    origin = request.headers.get("Origin")
    if origin and origin != "null":
        ours = urlsplit(request.host_url)
        theirs = urlsplit(origin)
        if (theirs.scheme, theirs.netloc) != (ours.scheme, ours.netloc):
            raise CsrfError(f"the request came from another site ({origin})")
    sent = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token") or ""
    expected = session.get("csrf")
    if not isinstance(expected, str) or not hmac.compare_digest(
        sent.encode(errors="replace"), expected.encode()
    ):
        raise CsrfError("the form has expired or did not come from this dashboard")


def log_in(user: User) -> None:
    """Start a session for ``user``: a new token and a new CSRF token (no fixation)."""
    now = utcnow()
    token = secrets.token_urlsafe(32)
    s = db.session()
    s.execute(delete(DashboardSession).where(DashboardSession.expires_at <= now))
    s.add(
        DashboardSession(
            id=_digest(token),
            user_id=user.id,
            created_at=now,
            last_seen_at=now,
            expires_at=now + timedelta(seconds=settings().session_lifetime),
            address=(request.remote_addr or "")[:45],
            user_agent=request.headers.get("User-Agent", "")[:200],
        )
    )
    s.commit()
    session.clear()
    session.permanent = True
    session["sid"] = token
    session["csrf"] = secrets.token_urlsafe(32)
    g.user = user


def log_out() -> None:
    """End this browser's session (the row goes, so the cookie is worthless)."""
    token = session.get("sid")
    if isinstance(token, str):
        s = db.session()
        s.execute(delete(DashboardSession).where(DashboardSession.id == _digest(token)))
        s.commit()
    session.clear()
    g.user = None


def current_user() -> User | None:
    """The signed-in user of this request, if the session is valid and not expired."""
    if "user" in g:
        return cast(User | None, g.user)
    g.user = None
    token = session.get("sid")
    if not isinstance(token, str):
        return None
    s = db.session()
    row = s.get(DashboardSession, _digest(token))
    now = utcnow()
    if row is None or row.expires_at <= now:
        return None
    if now - row.last_seen_at >= TOUCH_EVERY:
        row.last_seen_at = now
        row.expires_at = now + timedelta(seconds=settings().session_lifetime)
        s.commit()
    g.user = s.get(User, row.user_id)
    return cast(User | None, g.user)


def safe_next(target: str | None) -> str:
    """Where to go after log-in: a path on this site only (never //host or a URL)."""
    if (
        target
        and target.startswith("/")
        and not target.startswith(("//", "/\\"))
        # Browsers drop tabs and newlines from URLs: "/\t/evil.example" would become
        # "//evil.example", another site.
        and not any(ord(c) < 0x20 or c == "\x7f" for c in target)
    ):
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc:
            return target
    return url_for("dashboard.overview")


def login_required(view: F) -> F:
    """Send a browser that is not signed in to the log-in page (htmx: via HX-Redirect)."""

    @wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if current_user() is None:
            target = url_for("dashboard.login", next=request.full_path.rstrip("?"))
            if request.headers.get("HX-Request") == "true":
                return Response("", 401, headers={"HX-Redirect": target})
            return redirect(target)
        return view(*args, **kwargs)

    wrapped.login_required = True  # type: ignore[attr-defined]
    return cast(F, wrapped)
