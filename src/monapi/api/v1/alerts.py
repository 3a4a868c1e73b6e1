"""/api/v1/alerts: alert rules, their states and history, silences, and notifications."""

from __future__ import annotations

from typing import Any

from flask import request

from ... import auth, db
from ...auth import ADMIN, requires
from ...schemas import (
    AlertHistoryPage,
    AlertHistoryQuery,
    AlertRuleCreate,
    AlertRuleList,
    AlertRuleOut,
    AlertRuleUpdate,
    AlertStateList,
    AlertStateQuery,
    IdPath,
    NotificationPage,
    NotificationQuery,
    SilenceCreate,
    SilenceList,
    SilenceListQuery,
    SilenceOut,
)
from ...services import alerts as svc
from ...services.servers import page_links
from ..common import blueprint, errors

bp = blueprint("alerts", "Alert rules, alert states and history, silences, notifications")
BP = bp.name


# Rules --------------------------------------------------------------------------------------
@bp.get("/alerts", responses={200: AlertRuleList, **errors(401, 403)})
@requires(BP, ADMIN)
def list_rules() -> dict[str, Any]:
    """Every alert rule, with how many servers it is pending and firing for."""
    session = db.session()
    counts = svc.state_counts(session)
    items = [svc.rule_dict(r, counts) for r in svc.list_rules(session)]
    return {"items": items, "total": len(items)}


@bp.post("/alerts", responses={201: AlertRuleOut, **errors(400, 401, 403, 409, 413, 415, 422)})
@requires(BP, ADMIN)
def create_rule(body: AlertRuleCreate) -> tuple[dict[str, Any], int]:
    """Add a rule (threshold or silent); it is evaluated from the evaluator's next round."""
    return svc.rule_dict(svc.create_rule(db.session(), body)), 201


@bp.get("/alerts/<int:id>", responses={200: AlertRuleOut, **errors(401, 403, 404, 422)})
@requires(BP, ADMIN)
def get_rule(path: IdPath) -> dict[str, Any]:
    """One rule."""
    session = db.session()
    return svc.rule_dict(svc.get_rule(session, path.id), svc.state_counts(session))


@bp.patch(
    "/alerts/<int:id>",
    responses={200: AlertRuleOut, **errors(400, 401, 403, 404, 409, 413, 415, 422)},
)
@requires(BP, ADMIN)
def update_rule(path: IdPath, body: AlertRuleUpdate) -> dict[str, Any]:
    """Change a rule: only the keys sent change; the whole rule is checked again."""
    session = db.session()
    rule = svc.get_rule(session, path.id)
    changes = body.model_dump(exclude_unset=True)
    rule = svc.update_rule(session, rule, changes)
    return svc.rule_dict(rule, svc.state_counts(session))


@bp.delete("/alerts/<int:id>", responses={204: None, **errors(401, 403, 404, 422)})
@requires(BP, ADMIN)
def delete_rule(path: IdPath) -> tuple[str, int]:
    """Delete a rule with its states and history; alerts it had announced are announced
    resolved."""
    session = db.session()
    svc.delete_rule(session, svc.get_rule(session, path.id))
    return "", 204


# States and history -------------------------------------------------------------------------
@bp.get("/alerts/states", responses={200: AlertStateList, **errors(401, 403, 422)})
@requires(BP, ADMIN)
def list_states(query: AlertStateQuery) -> dict[str, Any]:
    """Where each rule stands for each server (default: pending and firing), firing first."""
    items = svc.list_states(
        db.session(),
        states=list(query.state),
        rule_id=query.rule_id,
        server_id=query.server_id,
        severity=query.severity,
    )
    return {"items": items, "total": len(items)}


@bp.get("/alerts/history", responses={200: AlertHistoryPage, **errors(401, 403, 422)})
@requires(BP, ADMIN)
def history(query: AlertHistoryQuery) -> dict[str, Any]:
    """Every state change, newest first; paginated."""
    items, total = svc.history(
        db.session(),
        page=query.page,
        per_page=query.per_page,
        rule_id=query.rule_id,
        server_id=query.server_id,
    )
    return _page(items, total, query.page, query.per_page, query.model_dump())


# Silences -----------------------------------------------------------------------------------
@bp.get("/alerts/silences", responses={200: SilenceList, **errors(401, 403, 422)})
@requires(BP, ADMIN)
def list_silences(query: SilenceListQuery) -> dict[str, Any]:
    """Silences in force or still to end (with expired=true, ended ones too)."""
    items = [svc.silence_dict(s) for s in svc.list_silences(db.session(), expired=query.expired)]
    return {"items": items, "total": len(items)}


@bp.post("/alerts/silences", responses={201: SilenceOut, **errors(400, 401, 403, 413, 415, 422)})
@requires(BP, ADMIN)
def create_silence(body: SilenceCreate) -> tuple[dict[str, Any], int]:
    """Mute a rule, a server, or a rule on one server, until a time: states still change and
    are recorded; notifications are not sent."""
    who = auth.principal()
    s = svc.create_silence(
        db.session(),
        rule_id=body.rule_id,
        server_id=body.server_id,
        ends_at=body.ends_at,
        duration=body.duration,
        comment=body.comment,
        created_by=f"{who.kind} key {who.key_id}",
    )
    return svc.silence_dict(s), 201


@bp.get("/alerts/silences/<int:id>", responses={200: SilenceOut, **errors(401, 403, 404, 422)})
@requires(BP, ADMIN)
def get_silence(path: IdPath) -> dict[str, Any]:
    """One silence."""
    return svc.silence_dict(svc.get_silence(db.session(), path.id))


@bp.delete("/alerts/silences/<int:id>", responses={204: None, **errors(401, 403, 404, 422)})
@requires(BP, ADMIN)
def end_silence(path: IdPath) -> tuple[str, int]:
    """End a silence now; an alert it muted that still fires is announced on the next round."""
    session = db.session()
    svc.end_silence(session, svc.get_silence(session, path.id))
    return "", 204


# Notifications ------------------------------------------------------------------------------
@bp.get("/alerts/notifications", responses={200: NotificationPage, **errors(401, 403, 422)})
@requires(BP, ADMIN)
def list_notifications(query: NotificationQuery) -> dict[str, Any]:
    """Notifications queued, sent and failed, newest first, with their last error."""
    rows, total = svc.list_notifications(
        db.session(), page=query.page, per_page=query.per_page, status=query.status
    )
    items = [svc.notification_dict(n) for n in rows]
    return _page(items, total, query.page, query.per_page, query.model_dump())


def _page(
    items: list[dict[str, Any]], total: int, page: int, per_page: int, args: dict[str, Any]
) -> dict[str, Any]:
    return {
        "items": items,
        "page": page,
        "per_page": per_page,
        "total": total,
        "pages": svc.pages(total, per_page),
        "links": page_links(request.base_url, page, per_page, total, args),
    }
