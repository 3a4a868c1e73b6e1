"""The enrollment page: create and revoke enrollment tokens, and how to install the agent."""

from __future__ import annotations

import shlex

from flask import flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from .. import auth, db
from ..auth import ENROLL
from ..errors import ApiError
from ..schemas import MAX_TOKEN_LIFETIME_S
from ..services import tokens as tsvc
from ..settings import parse_duration
from . import bp
from .session import login_required, settings

AGENT_VENV = "/opt/monapi-agent"


def install_commands(url: str, token: str) -> list[str]:
    """The commands that install monapi-agent on a new server and register it (as root)."""
    agent = f"{AGENT_VENV}/bin/monapi-agent"
    return [
        f"python3 -m venv {AGENT_VENV}",
        f"{AGENT_VENV}/bin/pip install ./monapi_agent-*.whl",
        f"{agent} register --url {shlex.quote(url)} --enroll-token {shlex.quote(token)}",
        f"{agent} install-service",
    ]


def _page(new: dict[str, str] | None = None, errors: dict[str, str] | None = None) -> str:
    rows = [tsvc.token_dict(k) for k in tsvc.list_tokens(db.session(), ENROLL)]
    url = settings().public_url or request.url_root.rstrip("/")
    return render_template(
        "enrollment.html",
        rows=rows,
        new=new,
        commands=install_commands(url, new["token"]) if new else None,
        errors=errors or {},
        form=request.form if errors else {},
    )


@bp.get("/enrollment")
@login_required
def enrollment_page() -> str:
    """The enrollment tokens, newest first, and the form to make one."""
    return _page()


@bp.post("/enrollment")
@login_required
def enrollment_create() -> str | tuple[str, int]:
    """Make a token (name, lifetime, use limit); it is shown once, with the install commands."""
    name = request.form.get("name", "").strip()
    errors: dict[str, str] = {}
    expires_text = request.form.get("expires_in", "").strip()
    expires: float | None = None
    if expires_text:
        try:
            expires = parse_duration(expires_text)
        except ValueError as exc:
            errors["expires_in"] = f"lifetime: {exc}"
        else:
            if not 1 <= expires <= MAX_TOKEN_LIFETIME_S:
                errors["expires_in"] = (
                    "lifetime must be from 1s to 10 years (3650d), for example 24h or 7d"
                )
    uses_text = request.form.get("max_uses", "").strip()
    max_uses: int | None = None
    if uses_text:
        if (
            not (uses_text.isascii() and uses_text.isdigit())
            or not 1 <= int(uses_text) <= 1_000_000
        ):
            errors["max_uses"] = "uses must be a whole number from 1 to 1,000,000"
        else:
            max_uses = int(uses_text)
    if len(name) > 200:
        errors["name"] = "the name is at most 200 characters"
    if errors:
        return _page(errors=errors), 422
    session = db.session()
    row, token = tsvc.create_token(
        session, auth.get_keys(), ENROLL, name=name, expires_in=expires, max_uses=max_uses
    )
    session.commit()
    return _page(new={"id": row.id, "token": token, "name": row.name})


@bp.post("/enrollment/<token_id>/revoke")
@login_required
def enrollment_revoke(token_id: str) -> Response:
    """Revoke a token at once; servers it registered keep their keys."""
    session = db.session()
    try:
        row = tsvc.revoke_token(session, ENROLL, token_id)
    except ApiError as exc:
        flash(exc.message, "error")
        return redirect(url_for("dashboard.enrollment_page"))
    session.commit()
    flash(f"token {row.name or row.id} revoked", "ok")
    return redirect(url_for("dashboard.enrollment_page"))
