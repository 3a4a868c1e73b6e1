"""/api/v1/servers: register, list, read, update, disable/enable, rotate key, delete."""

from __future__ import annotations

from typing import Any

from flask import request

from ... import auth, db
from ...auth import ADMIN, ENROLL, SERVER, requires
from ...cache import get_coordinator
from ...schemas import (
    LegacyRegister,
    LegacyRegistered,
    ServerCreate,
    ServerCreated,
    ServerListQuery,
    ServerOut,
    ServerPage,
    ServerPath,
    ServerUpdate,
)
from ...services import servers as svc
from ..common import blueprint, errors

bp = blueprint("servers", "Monitored servers and their API keys")
legacy = blueprint("legacy", "Routes kept from the founding design", prefix="/api")
BP = bp.name


@bp.post(
    "/servers",
    responses={201: ServerCreated, **errors(400, 401, 403, 409, 413, 415, 422, 429)},
)
@requires(BP, ADMIN, ENROLL)
def create_server(body: ServerCreate) -> tuple[dict[str, Any], int]:
    """Register a server with an enrollment or admin token; the reply holds its API key, once."""
    server, key = svc.register_server(
        db.session(),
        auth.principal(),
        hostname=body.hostname,
        ip_address=body.ip_address,
        labels=body.labels,
        interval=body.interval,
        description=body.description,
    )
    return {**svc.server_dict(server), "api_key": key}, 201


@legacy.post(
    "/register_server",
    responses={201: LegacyRegistered, **errors(400, 401, 403, 409, 413, 415, 422, 429)},
)
@requires(legacy.name, ADMIN, ENROLL)
def register_server(body: LegacyRegister) -> tuple[dict[str, Any], int]:
    """The founding design's registration route (an alias of POST /api/v1/servers)."""
    server, key = svc.register_server(
        db.session(), auth.principal(), hostname=body.hostname, ip_address=body.ip_address
    )
    return {
        "status": "success",
        "hostname": server.hostname,
        "ip_address": server.ip_address,
        "api_key": key,
    }, 201


@bp.get("/servers", responses={200: ServerPage, **errors(401, 403, 422)})
@requires(BP, ADMIN)
def list_servers(query: ServerListQuery) -> dict[str, Any]:
    """List servers, filtered by hostname substring, label (key=value) and status; paginated."""
    items, total = svc.list_servers(
        db.session(),
        page=query.page,
        per_page=query.per_page,
        hostname=query.hostname,
        labels=query.label,
        status=query.status,
    )
    pending = get_coordinator().pending_seen()
    return {
        "items": [svc.server_dict(s, pending) for s in items],
        "page": query.page,
        "per_page": query.per_page,
        "total": total,
        "pages": max(1, -(-total // query.per_page)),
        "links": svc.page_links(
            request.base_url, query.page, query.per_page, total, query.model_dump()
        ),
    }


@bp.get("/servers/<int:server_id>", responses={200: ServerOut, **errors(401, 403, 404, 422, 429)})
@requires(BP, ADMIN, SERVER)
def get_server(path: ServerPath) -> dict[str, Any]:
    """One server (a server key may read only its own)."""
    auth.check_server_access(path.server_id)
    return svc.server_dict(svc.get_server(db.session(), path.server_id))


@bp.patch(
    "/servers/<int:server_id>",
    responses={200: ServerOut, **errors(400, 401, 403, 404, 413, 415, 422)},
)
@requires(BP, ADMIN)
def update_server(path: ServerPath, body: ServerUpdate) -> dict[str, Any]:
    """Change labels, description or interval."""
    session = db.session()
    server = svc.get_server(session, path.server_id)
    changes = body.model_dump(exclude_unset=True, exclude_none=True)
    return svc.server_dict(svc.update_server(session, server, changes))


@bp.post(
    "/servers/<int:server_id>/disable", responses={200: ServerOut, **errors(401, 403, 404, 422)}
)
@requires(BP, ADMIN)
def disable_server(path: ServerPath) -> dict[str, Any]:
    """Disable a server: its key is refused (403) until it is enabled again."""
    session = db.session()
    return svc.server_dict(svc.set_enabled(session, svc.get_server(session, path.server_id), False))


@bp.post(
    "/servers/<int:server_id>/enable", responses={200: ServerOut, **errors(401, 403, 404, 422)}
)
@requires(BP, ADMIN)
def enable_server(path: ServerPath) -> dict[str, Any]:
    """Enable a disabled server."""
    session = db.session()
    return svc.server_dict(svc.set_enabled(session, svc.get_server(session, path.server_id), True))


@bp.post(
    "/servers/<int:server_id>/rotate-key",
    responses={200: ServerCreated, **errors(401, 403, 404, 422)},
)
@requires(BP, ADMIN)
def rotate_key(path: ServerPath) -> dict[str, Any]:
    """Give the server a new API key; the old one stops working at once."""
    session = db.session()
    server = svc.get_server(session, path.server_id)
    key = svc.rotate_key(session, server)
    return {**svc.server_dict(server), "api_key": key}


@bp.delete("/servers/<int:server_id>", responses={204: None, **errors(401, 403, 404, 422)})
@requires(BP, ADMIN)
def delete_server(path: ServerPath) -> tuple[str, int]:
    """Delete a server, its key, and all of its stored points."""
    session = db.session()
    svc.delete_server(session, svc.get_server(session, path.server_id))
    return "", 204
