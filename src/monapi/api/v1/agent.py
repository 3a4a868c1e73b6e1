"""/api/v1/agent: what monapi-agent asks for (its configuration) and tells (its heartbeat)."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
from flask import Response, request

from ... import auth, db
from ...auth import SERVER, requires
from ...fields import get_registry
from ...schemas import AgentConfig, Heartbeat, HeartbeatOut
from ...services import servers as svc
from ..common import blueprint, errors

bp = blueprint("agent", "Endpoints for monapi-agent")
BP = bp.name


def agent_config() -> tuple[dict[str, Any], str]:
    """The calling server's configuration and its ETag."""
    p = auth.principal()
    assert p.server_id is not None
    session = db.session()
    server = svc.get_server(session, p.server_id)
    specs = get_registry().specs(session)
    fields = [
        {
            "measurement": f.measurement,
            "name": f.name,
            "type": f.type,
            "unit": f.unit,
            "min": f.min,
            "max": f.max,
        }
        for meas in sorted(specs)
        for f in sorted(specs[meas].values(), key=lambda x: x.name)
        if f.enabled
    ]
    config = {
        "server_id": server.id,
        "hostname": server.hostname,
        "interval": server.interval,
        "fields": fields,
    }
    etag = hashlib.sha256(msgspec.json.encode(config)).hexdigest()[:32]
    return config, etag


@bp.get(
    "/agent/config",
    responses={200: AgentConfig, 304: None, **errors(401, 403, 429)},
)
@requires(BP, SERVER)
def get_agent_config() -> Response | dict[str, Any]:
    """Interval and fields to collect, with an ETag; 304 when If-None-Match still matches."""
    config, etag = agent_config()
    if etag in request.if_none_match:
        resp = Response(status=304)
        resp.set_etag(etag)
        return resp
    from flask import jsonify

    resp = jsonify(config)
    resp.set_etag(etag)
    resp.headers["Cache-Control"] = "no-cache"
    return resp


@bp.post(
    "/agent/heartbeat",
    responses={200: HeartbeatOut, **errors(400, 401, 403, 413, 415, 422, 429)},
)
@requires(BP, SERVER)
def heartbeat(body: Heartbeat) -> dict[str, Any]:
    """Record the agent's version and uptime; the reply tells it the current config ETag."""
    p = auth.principal()
    assert p.server_id is not None
    session = db.session()
    server = svc.get_server(session, p.server_id)
    svc.heartbeat(session, server, body.agent_version, body.uptime)
    config, etag = agent_config()
    return {"server_id": server.id, "interval": config["interval"], "config_etag": etag}
