"""Enrollment and admin tokens."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .. import auth
from ..cache import get_coordinator
from ..errors import ApiError
from ..models import ApiKey, utcnow


def token_dict(k: ApiKey) -> dict[str, Any]:
    """An enrollment or admin token as the API shows it (never the secret)."""
    now = utcnow()
    expired = k.expires_at is not None and k.expires_at <= now
    used_up = k.max_uses is not None and k.uses >= k.max_uses
    return {
        "id": k.id,
        "name": k.name,
        "created_at": k.created_at,
        "expires_at": k.expires_at,
        "max_uses": k.max_uses,
        "uses": k.uses,
        "revoked": k.revoked_at is not None,
        "active": k.revoked_at is None and not expired and not used_up,
    }


def create_token(
    session: Session,
    keys: auth.KeyService,
    kind: str,
    *,
    name: str = "",
    expires_in: float | None = None,
    max_uses: int | None = None,
) -> tuple[ApiKey, str]:
    """Make an enrollment or admin token; returns the row and the plain token (shown once)."""
    new = keys.generate(kind)
    row = ApiKey(
        id=new.id,
        kind=kind,
        digest=new.digest,
        name=name,
        expires_at=utcnow() + timedelta(seconds=expires_in) if expires_in else None,
        max_uses=max_uses,
        uses=0,
    )
    session.add(row)
    get_coordinator().bump(session, "keys")  # drop any cached 'no such key' answer
    session.flush()
    return row, new.plaintext


def list_tokens(session: Session, kind: str) -> list[ApiKey]:
    """Every token of a kind, newest first."""
    return list(
        session.execute(
            select(ApiKey).where(ApiKey.kind == kind).order_by(ApiKey.created_at.desc())
        ).scalars()
    )


def revoke_token(session: Session, kind: str, token_id: str) -> ApiKey:
    """Revoke a token; it stops working at once. Revoking twice is harmless."""
    row = session.get(ApiKey, token_id)
    if row is None or row.kind != kind:
        raise ApiError(404, f"{kind} token {token_id} not found")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        get_coordinator().bump(session, "keys")
    return row
