"""A server's page: details, a chart per field, and rotate key / disable / enable / delete."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import flash, jsonify, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from .. import db
from ..errors import ApiError
from ..fields import get_registry
from ..services import metrics as msvc
from ..services import servers as svc
from . import bp
from .alerts import SILENCE_DURATIONS, alert_states, silences_of_server
from .session import login_required

RANGES = {"1h": 3600, "6h": 6 * 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400}


def _custom_time(value: str, offset_min: int, name: str) -> float:
    """A ``datetime-local`` value (the browser's local time, ``offset_min`` minutes behind UTC
    as JavaScript's getTimezoneOffset gives it; 0 = UTC without JavaScript) to epoch seconds."""
    try:
        local = datetime.fromisoformat(value)
        if local.tzinfo is not None:
            return local.timestamp()
        return (local.replace(tzinfo=UTC) + timedelta(minutes=offset_min)).timestamp()
    except (ValueError, OverflowError):
        raise ApiError(400, f"{name}: {value!r} is not a date and time") from None


def time_range(args: Any, now: float) -> dict[str, Any]:
    """The chart range from the query string: a preset (1h ... 30d) or a custom start/end."""
    preset = args.get("range", "1h")
    if args.get("start") and args.get("end"):
        try:
            offset = int(args.get("tz", 0))
        except ValueError:
            offset = 10_000
        if not -1440 <= offset <= 1440:
            raise ApiError(400, "tz: the time-zone offset is minutes from -1440 to 1440")
        start = _custom_time(args["start"], offset, "start")
        end = _custom_time(args["end"], offset, "end")
        if end <= start:
            raise ApiError(400, "the custom range must end after it starts")
        return {"preset": "custom", "start": start, "end": end}
    seconds = RANGES.get(preset, 3600)
    preset = preset if preset in RANGES else "1h"
    return {"preset": preset, "start": now - seconds, "end": now}


@bp.get("/servers/<int:server_id>")
@login_required
def server_page(server_id: int) -> str:
    """Details, labels and a chart per configured field over the chosen range."""
    session = db.session()
    server = svc.get_server(session, server_id)
    rng = time_range(request.args, time.time())
    specs = get_registry().specs(session)
    fields = [
        {"key": f"{f.measurement}.{f.name}", "unit": f.unit, "type": f.type}
        for m in sorted(specs)
        for f in sorted(specs[m].values(), key=lambda f: f.name)
        if f.enabled and f.type != "string"
    ]
    return render_template(
        "server.html",
        server=svc.server_dict(server),
        rng=rng,
        ranges=list(RANGES),
        fields=fields,
        new_key=None,
        alerts=alert_states(session, server_id),
        silences=silences_of_server(session, server_id),
        durations=SILENCE_DURATIONS,
    )


@bp.get("/servers/<int:server_id>/series")
@login_required
def server_series(server_id: int) -> Response:
    """The chart data: every numeric field of the server over [start, end] (epoch seconds),
    one mean per step, the step chosen from the range (about 1,000 points at most)."""
    session = db.session()
    server = svc.get_server(session, server_id)
    result = msvc.query_metrics(
        session,
        server,
        fields=request.args.get("fields") or None,
        start=request.args.get("start", "-1h"),
        end=request.args.get("end", "now"),
        step=None,
        agg="mean",
        tags=[],
    )
    return jsonify(result)


@bp.post("/servers/<int:server_id>/rotate-key")
@login_required
def server_rotate_key(server_id: int) -> str:
    """A new key for the server, shown once on the page; the old key stops at once."""
    session = db.session()
    server = svc.get_server(session, server_id)
    key = svc.rotate_key(session, server)
    rng = time_range({}, time.time())
    return render_template(
        "server.html",
        server=svc.server_dict(server),
        rng=rng,
        ranges=list(RANGES),
        fields=[],
        new_key=key,
    )


def _set_enabled(server_id: int, enabled: bool) -> Response:
    session = db.session()
    server = svc.set_enabled(session, svc.get_server(session, server_id), enabled)
    if enabled:
        flash(f"{server.hostname} is enabled", "ok")
    else:
        flash(f"{server.hostname} is disabled: its key is refused until you enable it", "ok")
    return redirect(url_for("dashboard.server_page", server_id=server_id))


@bp.post("/servers/<int:server_id>/disable")
@login_required
def server_disable(server_id: int) -> Response:
    """Disable the server: its key is refused until it is enabled again."""
    return _set_enabled(server_id, False)


@bp.post("/servers/<int:server_id>/enable")
@login_required
def server_enable(server_id: int) -> Response:
    """Enable a disabled server."""
    return _set_enabled(server_id, True)


@bp.post("/servers/<int:server_id>/delete")
@login_required
def server_delete(server_id: int) -> Response:
    """Delete the server, its key and its points; the host name must be typed to confirm."""
    session = db.session()
    server = svc.get_server(session, server_id)
    typed = request.form.get("confirm_hostname", "").strip().lower()
    if typed != server.hostname:
        flash(f"not deleted: type {server.hostname} to confirm", "error")
        return redirect(url_for("dashboard.server_page", server_id=server_id))
    hostname = server.hostname
    svc.delete_server(session, server)
    flash(f"{hostname} and all of its data were deleted", "ok")
    return redirect(url_for("dashboard.overview"))
