"""Servers: registration, listing, updates, keys, deletion, status."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Any, Protocol

from flask import current_app
from sqlalchemy import case, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .. import auth, db
from ..alerting.evaluate import retire
from ..cache import get_coordinator
from ..errors import ApiError
from ..models import ApiKey, Server, utcnow
from ..settings import Settings
from ..tsdb import TimeSeriesStore


def settings() -> Settings:
    s: Settings = current_app.extensions["monapi.settings"]
    return s


def store() -> TimeSeriesStore:
    st: TimeSeriesStore = current_app.extensions["monapi.tsdb"]
    return st


def _epoch_to_dt(ts: float | None) -> datetime | None:
    return datetime.fromtimestamp(ts, UTC) if ts is not None else None


class HasLastSeen(Protocol):
    """A ``Server``, or a row with its ``id`` and ``last_seen`` columns."""

    @property
    def id(self) -> int: ...
    @property
    def last_seen(self) -> float | None: ...


def last_seen_of(server: HasLastSeen, pending: dict[int, float]) -> float | None:
    """Last push time, including pushes this process has not written yet."""
    buffered = pending.get(server.id)
    if buffered is not None and (server.last_seen is None or buffered > server.last_seen):
        return buffered
    return server.last_seen


def status_of(last_seen: float | None, interval: int, now: float | None = None) -> str:
    """online / offline / never_seen from the last push against the server's interval."""
    if last_seen is None:
        return "never_seen"
    limit = interval * settings().offline_after_intervals
    return "online" if (now or time.time()) - last_seen <= limit else "offline"


def server_dict(server: Server, pending: dict[int, float] | None = None) -> dict[str, Any]:
    """A server as the API shows it."""
    seen = last_seen_of(
        server, pending if pending is not None else get_coordinator().pending_seen()
    )
    return {
        "id": server.id,
        "hostname": server.hostname,
        "ip_address": server.ip_address,
        "description": server.description,
        "labels": server.labels or {},
        "interval": server.interval,
        "enabled": server.enabled,
        "status": status_of(seen, server.interval),
        "last_seen": _epoch_to_dt(seen),
        "created_at": server.created_at,
        "updated_at": server.updated_at,
        "agent": {
            "version": server.agent_version,
            "uptime": server.agent_uptime,
            "heartbeat_at": server.heartbeat_at,
        },
    }


def get_server(session: Session, server_id: int) -> Server:
    """The server, or 404."""
    server = session.get(Server, server_id)
    if server is None:
        raise ApiError(404, f"server {server_id} not found")
    return server


def _consume_enrollment(session: Session, key_id: str) -> None:
    """Use one of an enrollment token's uses, atomically, so max_uses is never exceeded."""
    now = utcnow()
    result = session.execute(
        update(ApiKey)
        .where(
            ApiKey.id == key_id,
            ApiKey.kind == auth.ENROLL,
            ApiKey.revoked_at.is_(None),
            (ApiKey.expires_at.is_(None)) | (ApiKey.expires_at > now),
            (ApiKey.max_uses.is_(None)) | (ApiKey.uses < ApiKey.max_uses),
        )
        .values(uses=ApiKey.uses + 1)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise ApiError(
            401,
            "enrollment token is revoked, expired or used up",
            headers={"WWW-Authenticate": 'Bearer realm="monapi"'},
        )


def register_server(
    session: Session,
    principal: auth.Principal,
    *,
    hostname: str,
    ip_address: str,
    labels: dict[str, str] | None = None,
    interval: int | None = None,
    description: str = "",
) -> tuple[Server, str]:
    """Create a server and its API key; returns the key in plain text (shown once)."""
    if principal.kind == auth.ENROLL:
        _consume_enrollment(session, principal.key_id)
    server = Server(
        hostname=hostname,
        ip_address=ip_address,
        labels=labels or {},
        interval=interval or settings().default_interval,
        description=description,
        enabled=True,
    )
    session.add(server)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise ApiError(409, f"hostname {hostname!r} is already registered") from None
    key = auth.get_keys().generate(auth.SERVER)
    session.add(
        ApiKey(
            id=key.id,
            kind=auth.SERVER,
            digest=key.digest,
            server_id=server.id,
            name=f"server {hostname}",
        )
    )
    get_coordinator().bump(session, "keys")
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise ApiError(409, f"hostname {hostname!r} is already registered") from None
    return server, key.plaintext


def list_servers(
    session: Session,
    *,
    page: int,
    per_page: int,
    hostname: str | None = None,
    labels: list[str] | None = None,
    status: str | None = None,
) -> tuple[list[Server], int]:
    """One page of servers matching the filters, and the total count."""
    get_coordinator().flush_seen()  # status filters run in SQL: write what this process holds
    q = select(Server)
    if hostname:
        escaped = hostname.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        q = q.where(Server.hostname.like(f"%{escaped}%", escape="\\"))
    if status:
        now = time.time()
        k = settings().offline_after_intervals
        if status == "never_seen":
            q = q.where(Server.last_seen.is_(None))
        elif status == "online":
            q = q.where(Server.last_seen >= now - Server.interval * k)
        else:
            q = q.where(Server.last_seen < now - Server.interval * k)
    q = q.order_by(Server.id)
    if labels:
        wanted = [tuple(item.split("=", 1)) for item in labels]
        rows = [
            s
            for s in session.execute(q).scalars()
            if all((s.labels or {}).get(k) == v for k, v in wanted)
        ]
        total = len(rows)
        return rows[(page - 1) * per_page : page * per_page], total
    total = session.execute(select(func.count()).select_from(q.subquery())).scalar_one()
    items = session.execute(q.offset((page - 1) * per_page).limit(per_page)).scalars().all()
    return list(items), int(total)


def count_by_status() -> dict[str, int]:
    """How many servers are online, offline and never_seen (enabled ones), and disabled."""
    get_coordinator().flush_seen()  # counted in SQL: write what this process holds
    k = settings().offline_after_intervals
    seen = Server.last_seen
    status = case(
        (Server.enabled.is_(False), "disabled"),
        (seen.is_(None), "never_seen"),
        (seen >= time.time() - Server.interval * k, "online"),
        else_="offline",
    ).label("status")
    rows = db.session().execute(select(status, func.count()).group_by(status)).all()
    return {str(name): int(n) for name, n in rows}


def page_links(
    base: str, page: int, per_page: int, total: int, args: dict[str, Any]
) -> dict[str, Any]:
    """self/first/last/prev/next links that keep the other query arguments."""
    from urllib.parse import urlencode

    pages = max(1, math.ceil(total / per_page))

    def link(p: int) -> str:
        q: list[tuple[str, Any]] = []
        for k, v in args.items():
            if k in ("page", "per_page") or v is None:
                continue
            q.extend((k, item) for item in v) if isinstance(v, list) else q.append((k, v))
        q += [("page", p), ("per_page", per_page)]
        return f"{base}?{urlencode(q)}"

    return {
        "self": link(page),
        "first": link(1),
        "last": link(pages),
        "prev": link(page - 1) if page > 1 else None,
        "next": link(page + 1) if page < pages else None,
    }


def update_server(session: Session, server: Server, changes: dict[str, Any]) -> Server:
    """Apply label, description and interval changes."""
    for k, v in changes.items():
        setattr(server, k, v)
    get_coordinator().bump(session, "servers")
    session.commit()
    return server


def set_enabled(session: Session, server: Server, enabled: bool) -> Server:
    """Disable (its key stops working at once) or enable a server."""
    server.enabled = enabled
    get_coordinator().bump(session, "servers")
    session.commit()
    return server


def rotate_key(session: Session, server: Server) -> str:
    """Replace the server's key; the old one stops working at once."""
    session.execute(delete(ApiKey).where(ApiKey.server_id == server.id, ApiKey.kind == auth.SERVER))
    key = auth.get_keys().generate(auth.SERVER)
    session.add(
        ApiKey(
            id=key.id,
            kind=auth.SERVER,
            digest=key.digest,
            server_id=server.id,
            name=f"server {server.hostname}",
        )
    )
    get_coordinator().bump(session, "keys")
    session.commit()
    return key.plaintext


def delete_server(session: Session, server: Server) -> None:
    """Delete the server, its key and every point it stored."""
    server_id = server.id
    retire(session, settings(), reason="server deleted", server_id=server_id)
    session.flush()  # the resolutions are queued before the states go with the server
    session.execute(delete(ApiKey).where(ApiKey.server_id == server_id))
    session.delete(server)
    get_coordinator().bump(session, "keys", "servers")
    session.commit()
    store().delete_server(server_id)


def heartbeat(session: Session, server: Server, version: str, uptime: int) -> None:
    """Record the agent's version and uptime."""
    server.agent_version = version
    server.agent_uptime = uptime
    server.heartbeat_at = utcnow()
    session.commit()
    get_coordinator().mark_seen(server.id, time.time())
