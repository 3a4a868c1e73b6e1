"""/api/v1/enrollment-tokens: tokens that let new servers register themselves."""

from __future__ import annotations

from typing import Any

from ... import auth, db
from ...auth import ADMIN, ENROLL, requires
from ...schemas import EnrollCreate, EnrollCreated, EnrollList, EnrollOut, TokenPath
from ...services import tokens as tsvc
from ...settings import parse_duration
from ..common import blueprint, errors

bp = blueprint("enrollment", "Enrollment tokens for registering new servers")
BP = bp.name


@bp.post(
    "/enrollment-tokens", responses={201: EnrollCreated, **errors(400, 401, 403, 413, 415, 422)}
)
@requires(BP, ADMIN)
def create_enrollment_token(body: EnrollCreate) -> tuple[dict[str, Any], int]:
    """Create an enrollment token (optional expiry and use limit); the token is shown once."""
    session = db.session()
    expires = parse_duration(body.expires_in) if body.expires_in is not None else None
    row, token = tsvc.create_token(
        session,
        auth.get_keys(),
        ENROLL,
        name=body.name,
        expires_in=expires,
        max_uses=body.max_uses,
    )
    session.commit()
    return {**tsvc.token_dict(row), "token": token}, 201


@bp.get("/enrollment-tokens", responses={200: EnrollList, **errors(401, 403)})
@requires(BP, ADMIN)
def list_enrollment_tokens() -> dict[str, Any]:
    """Every enrollment token, newest first (never the secret)."""
    items = [tsvc.token_dict(k) for k in tsvc.list_tokens(db.session(), ENROLL)]
    return {"items": items, "total": len(items)}


@bp.delete(
    "/enrollment-tokens/<token_id>", responses={200: EnrollOut, **errors(401, 403, 404, 422)}
)
@requires(BP, ADMIN)
def revoke_enrollment_token(path: TokenPath) -> dict[str, Any]:
    """Revoke an enrollment token; servers it registered keep their keys."""
    session = db.session()
    row = tsvc.revoke_token(session, ENROLL, path.token_id)
    session.commit()
    return tsvc.token_dict(row)
