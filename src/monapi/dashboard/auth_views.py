"""Log-in and log-out pages."""

from __future__ import annotations

import math

from flask import redirect, render_template, request
from werkzeug.wrappers import Response

from .. import db
from ..cache import get_coordinator
from ..services import users
from . import bp
from .session import current_user, log_in, log_out, login_required, safe_next, settings


@bp.route("/login", methods=["GET", "POST"])
def login() -> Response | str | tuple[str, int, dict[str, str]]:
    """The log-in form; a POST signs in (limited per client address and per user)."""
    target = safe_next(request.values.get("next"))
    if request.method != "POST":  # GET, and HEAD (which the CSRF check lets through)
        if current_user() is not None:
            return redirect(target)
        return render_template("login.html", next=target, insecure=_insecure_transport())
    username = request.form.get("username", "").strip()
    password = request.form.get("password", "")
    limit = settings().rate_limit_login
    address = request.remote_addr or "unknown"
    wait = get_coordinator().hit(f"login:{address}", *limit) if limit[0] > 0 else 0.0
    if wait > 0:
        seconds = max(1, math.ceil(wait))
        message = f"too many log-in attempts from {address}; try again in {seconds} s"
        return _form(message, username, target, 429, {"Retry-After": str(seconds)})
    if not username or not password:
        return _form("enter a user name and a password", username, target, 400)
    s = settings()
    try:
        user = users.authenticate(
            db.session(),
            username,
            password,
            max_failures=s.login_max_failures,
            lockout=s.login_lockout,
        )
    except users.LoginRefused as exc:
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else {}
        return _form(exc.message, username, target, 429 if exc.retry_after else 401, headers)
    log_in(user)
    return redirect(target)


def _form(
    error: str, username: str, target: str, status: int, headers: dict[str, str] | None = None
) -> tuple[str, int, dict[str, str]]:
    html = render_template(
        "login.html",
        error=error,
        username=username,
        next=target,
        insecure=_insecure_transport(),
    )
    return html, status, headers or {}


def _insecure_transport() -> bool:
    """Plain HTTP to a host other than localhost while the cookie is Secure: the browser would
    drop the session cookie, so the log-in page says what to do."""
    host = request.host.rsplit(":", 1)[0].strip("[]")
    local = host in ("localhost", "127.0.0.1", "::1") or host.endswith(".localhost")
    return settings().cookie_secure and request.scheme == "http" and not local


@bp.post("/logout")
@login_required
def logout() -> Response:
    """End this browser's session."""
    log_out()
    return redirect("/login")
