"""/api/v1/servers/{id}/metrics and /latest, and /api/v1/overview: reading points back."""

from __future__ import annotations

from typing import Any

from flask import request
from sqlalchemy import func, select

from ... import auth, db
from ...auth import ADMIN, SERVER, requires
from ...cache import get_coordinator
from ...models import Server
from ...schemas import LatestOut, MetricsOut, MetricsQuery, OverviewPage, OverviewQuery, ServerPath
from ...services import metrics as msvc
from ...services import servers as svc
from ..common import blueprint, errors

bp = blueprint("metrics", "Reading stored points back")
BP = bp.name


@bp.get(
    "/servers/<int:server_id>/metrics",
    responses={200: MetricsOut, **errors(400, 401, 403, 404, 422, 429, 503)},
)
@requires(BP, ADMIN, SERVER)
def server_metrics(path: ServerPath, query: MetricsQuery) -> dict[str, Any]:
    """Values of a server's fields over a time range, one aggregated value per step."""
    auth.check_server_access(path.server_id)
    session = db.session()
    server = svc.get_server(session, path.server_id)
    return msvc.query_metrics(
        session,
        server,
        fields=query.fields,
        start=query.start,
        end=query.end,
        step=query.step,
        agg=query.agg,
        tags=query.tag,
    )


@bp.get(
    "/servers/<int:server_id>/latest",
    responses={200: LatestOut, **errors(401, 403, 404, 422, 429, 503)},
)
@requires(BP, ADMIN, SERVER)
def server_latest(path: ServerPath) -> dict[str, Any]:
    """The newest value of every series of a server."""
    auth.check_server_access(path.server_id)
    session = db.session()
    return msvc.latest_dict(session, svc.get_server(session, path.server_id))


@bp.get("/overview", responses={200: OverviewPage, **errors(401, 403, 422, 503)})
@requires(BP, ADMIN)
def overview(query: OverviewQuery) -> dict[str, Any]:
    """Every server with its status and latest key values (CPU, memory, swap, disk, load)."""
    session = db.session()
    total = session.execute(select(func.count(Server.id))).scalar_one()
    # Rows of the columns shown rather than ORM objects: 3 ms instead of 10 for 1,000 servers.
    servers = session.execute(
        select(
            Server.id,
            Server.hostname,
            Server.enabled,
            Server.interval,
            Server.last_seen,
            Server.labels,
        )
        .order_by(Server.hostname)
        .offset((query.page - 1) * query.per_page)
        .limit(query.per_page)
    ).all()
    return {
        "items": msvc.overview_items(servers, get_coordinator().pending_seen()),
        "page": query.page,
        "per_page": query.per_page,
        "total": total,
        "pages": max(1, -(-total // query.per_page)),
        "links": svc.page_links(request.base_url, query.page, query.per_page, total, {}),
    }
