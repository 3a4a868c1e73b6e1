"""Alert rules, states, history, silences and notifications (the API and the dashboard use
these)."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Any

from flask import current_app
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .. import db
from ..alerting.evaluate import FIRING, PENDING, expression, retire, silenced
from ..errors import ApiError
from ..models import (
    AlertEvent,
    AlertRule,
    AlertState,
    FieldConfig,
    Notification,
    Server,
    Silence,
)
from ..schemas import AlertRuleCreate, AlertRuleFields, check_rule_shape, duration_seconds
from ..settings import Settings, parse_duration

# Which aggregations each field type allows: text can only be counted; a boolean is 1 or 0.
AGGS_BY_TYPE = {
    "float": ("mean", "min", "max", "last", "sum", "count"),
    "int": ("mean", "min", "max", "last", "sum", "count"),
    "bool": ("last", "min", "max", "count"),
    "string": ("count",),
}


def settings() -> Settings:
    s: Settings = current_app.extensions["monapi.settings"]
    return s


def _dt(ts: float | None) -> datetime | None:
    return datetime.fromtimestamp(ts, UTC) if ts is not None else None


def _unprocessable(location: str, reason: str) -> ApiError:
    return ApiError(
        422, f"{location}: {reason}", details=[{"location": location, "reason": reason}]
    )


# Rules --------------------------------------------------------------------------------------
def rule_dict(rule: AlertRule, counts: dict[tuple[int, str], int] | None = None) -> dict[str, Any]:
    """A rule as the API shows it (``counts``: (rule id, state) -> servers)."""
    counts = counts or {}
    return {
        "id": rule.id,
        "name": rule.name,
        "description": rule.description,
        "kind": rule.kind,
        "measurement": rule.measurement,
        "field": rule.field,
        "tags": rule.tags or {},
        "aggregation": rule.aggregation,
        "window": rule.window_s,
        "condition": rule.condition,
        "threshold": rule.threshold,
        "intervals": rule.intervals,
        "duration": rule.duration_s,
        "server_ids": rule.server_ids,
        "labels": rule.labels or {},
        "severity": rule.severity,
        "enabled": rule.enabled,
        "expression": expression(rule),
        "firing": counts.get((rule.id, FIRING), 0),
        "pending": counts.get((rule.id, PENDING), 0),
        "created_at": rule.created_at,
        "updated_at": rule.updated_at,
    }


def state_counts(session: Session) -> dict[tuple[int, str], int]:
    """(rule id, state) -> how many servers, for pending and firing."""
    rows = session.execute(
        select(AlertState.rule_id, AlertState.state, func.count())
        .where(AlertState.state.in_((PENDING, FIRING)))
        .group_by(AlertState.rule_id, AlertState.state)
    ).all()
    return {(int(r), str(s)): int(n) for r, s, n in rows}


def alert_counts() -> tuple[dict[tuple[str, str], int], dict[str, int]]:
    """(state, severity) -> alerts pending or firing, and status -> notifications (for
    /metrics)."""
    session = db.session()
    rows = session.execute(
        select(AlertState.state, AlertRule.severity, func.count())
        .join(AlertRule, AlertRule.id == AlertState.rule_id)
        .where(AlertState.state.in_((PENDING, FIRING)))
        .group_by(AlertState.state, AlertRule.severity)
    ).all()
    alerts = {(str(st), str(sev)): int(n) for st, sev, n in rows}
    outbox = session.execute(
        select(Notification.status, func.count()).group_by(Notification.status)
    ).all()
    return alerts, {str(st): int(n) for st, n in outbox}


def list_rules(session: Session) -> list[AlertRule]:
    """Every rule, by name."""
    return list(session.execute(select(AlertRule).order_by(AlertRule.name)).scalars())


def get_rule(session: Session, rule_id: int) -> AlertRule:
    """The rule, or 404."""
    rule = session.get(AlertRule, rule_id)
    if rule is None:
        raise ApiError(404, f"alert rule {rule_id} not found")
    return rule


def _check_field(session: Session, values: dict[str, Any]) -> None:
    """A threshold rule's field must be configured, and its aggregation fit the field's type."""
    if values["kind"] != "threshold":
        return
    f = session.execute(
        select(FieldConfig).where(
            FieldConfig.measurement == values["measurement"], FieldConfig.name == values["field"]
        )
    ).scalar_one_or_none()
    where = f"{values['measurement']}.{values['field']}"
    if f is None:
        raise _unprocessable(
            "body.field", f"{where} is not a configured field (see /api/v1/fields)"
        )
    allowed = AGGS_BY_TYPE.get(f.type, ())
    if values["aggregation"] not in allowed:
        raise _unprocessable(
            "body.aggregation",
            f"{where} is a {f.type} field: aggregation must be one of {', '.join(allowed)}",
        )


def _check_servers(session: Session, server_ids: list[int] | None) -> None:
    if not server_ids:
        return
    found = set(session.execute(select(Server.id).where(Server.id.in_(server_ids))).scalars())
    missing = sorted(set(server_ids) - found)
    if missing:
        raise _unprocessable(
            "body.server_ids", f"no server with id {', '.join(map(str, missing[:20]))}"
        )


def _columns(body: dict[str, Any]) -> dict[str, Any]:
    """API keys (seconds as text or numbers) to column values, with each kind's defaults."""
    threshold = body["kind"] == "threshold"
    server_ids = body.get("server_ids")
    return {
        "name": body["name"],
        "description": body.get("description") or "",
        "kind": body["kind"],
        "measurement": body.get("measurement") if threshold else None,
        "field": body.get("field") if threshold else None,
        "tags": (body.get("tags") or {}) if threshold else {},
        "aggregation": (body.get("aggregation") or "mean") if threshold else None,
        "window_s": parse_duration(body.get("window") or "5m") if threshold else None,
        "condition": body.get("condition") if threshold else None,
        "threshold": body.get("threshold") if threshold else None,
        "intervals": None if threshold else float(body.get("intervals") or 3),
        "duration_s": parse_duration(body.get("duration") or 0),
        "server_ids": sorted(set(server_ids)) if server_ids is not None else None,
        "labels": body.get("labels") or {},
        "severity": body.get("severity") or "warning",
        "enabled": True if body.get("enabled") is None else bool(body["enabled"]),
    }


def _save(session: Session, rule: AlertRule) -> AlertRule:
    name = rule.name  # before the rollback reloads the row
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise ApiError(409, f"an alert rule named {name!r} already exists") from None
    session.commit()
    return rule


def create_rule(session: Session, body: AlertRuleCreate) -> AlertRule:
    """Add a rule; the evaluator picks it up on its next round."""
    values = _columns(body.model_dump())
    _check_field(session, values)
    _check_servers(session, values["server_ids"])
    rule = AlertRule(**values)
    session.add(rule)
    return _save(session, rule)


def _as_body(rule: AlertRule) -> dict[str, Any]:
    """A stored rule in the API's terms (seconds as numbers), for merging an update into."""
    d = rule_dict(rule)
    return {k: d[k] for k in (*AlertRuleFields.model_fields, "kind")}


def update_rule(session: Session, rule: AlertRule, changes: dict[str, Any]) -> AlertRule:
    """Change what was sent (null clears server_ids, labels or tags); the kind stays. The
    result is checked as a whole, like a new rule."""
    if "kind" in changes:
        raise _unprocessable("body.kind", "the kind of a rule cannot change; create a new rule")
    if "name" in changes and changes["name"] is None:
        raise _unprocessable("body.name", "a rule keeps a name: give a new one or leave it out")
    merged = {**_as_body(rule), **changes}
    if changes.get("server_ids") is not None:
        merged["labels"] = {} if "labels" not in changes else merged["labels"]
    if changes.get("labels"):
        merged["server_ids"] = None if "server_ids" not in changes else merged["server_ids"]
    if rule.kind != "threshold":
        for k in ("tags", "aggregation", "window", "measurement", "field"):
            if not merged.get(k):
                merged[k] = None
    try:
        check_rule_shape(rule.kind, merged)
        if merged.get("window") is not None:
            duration_seconds(merged["window"], "window", 1, 7 * 86400)
    except ValueError as exc:
        raise _unprocessable("body", str(exc)) from None
    values = _columns(merged)
    # What the change touches is checked against the store: a rule whose field was deleted
    # can still be renamed or disabled.
    if changes.keys() & {"measurement", "field", "aggregation"}:
        _check_field(session, values)
    if changes.get("server_ids"):
        _check_servers(session, values["server_ids"])
    for k, v in values.items():
        setattr(rule, k, v)
    return _save(session, rule)


def delete_rule(session: Session, rule: AlertRule) -> None:
    """Remove a rule, its states and history; its announced firings are announced resolved."""
    retire(session, settings(), reason="rule deleted", rule_id=rule.id)
    session.flush()  # the resolutions are queued before the states go with the rule
    session.delete(rule)
    session.commit()


# States and history -------------------------------------------------------------------------
def active_silences(session: Session, now: float | None = None) -> list[Silence]:
    """Silences in force now."""
    now = time.time() if now is None else now
    return list(
        session.execute(
            select(Silence).where(Silence.starts_at <= now, Silence.ends_at > now)
        ).scalars()
    )


def list_states(
    session: Session,
    *,
    states: list[str] | None = None,
    rule_id: int | None = None,
    server_id: int | None = None,
    severity: str | None = None,
) -> list[dict[str, Any]]:
    """Alert states (default pending and firing), firing first, then by severity and time."""
    q = (
        select(AlertState, AlertRule, Server.hostname)
        .join(AlertRule, AlertRule.id == AlertState.rule_id)
        .join(Server, Server.id == AlertState.server_id)
        .where(AlertState.state.in_(states or (PENDING, FIRING)))
    )
    if rule_id is not None:
        q = q.where(AlertState.rule_id == rule_id)
    if server_id is not None:
        q = q.where(AlertState.server_id == server_id)
    if severity is not None:
        q = q.where(AlertRule.severity == severity)
    silences = active_silences(session)
    rank = {"firing": 0, "pending": 1, "resolved": 2, "ok": 3}
    weight = {"critical": 0, "warning": 1, "info": 2}
    rows = sorted(
        session.execute(q).all(),
        key=lambda r: (rank[r[0].state], weight.get(r[1].severity, 3), -r[0].since),
    )
    return [
        {
            "rule_id": rule.id,
            "rule_name": rule.name,
            "severity": rule.severity,
            "expression": expression(rule),
            "server_id": st.server_id,
            "hostname": hostname,
            "state": st.state,
            "value": st.value,
            "series": st.series or {},
            "since": _dt(st.since),
            "pending_since": _dt(st.pending_since),
            "fired_at": _dt(st.fired_at),
            "resolved_at": _dt(st.resolved_at),
            "evaluated_at": _dt(st.evaluated_at),
            "silenced": silenced(silences, rule.id, st.server_id),
            "notified": st.notified,
        }
        for st, rule, hostname in rows
    ]


def history(
    session: Session,
    *,
    page: int,
    per_page: int,
    rule_id: int | None = None,
    server_id: int | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """State changes, newest first, and how many there are."""
    q = (
        select(AlertEvent, AlertRule.name, Server.hostname)
        .join(AlertRule, AlertRule.id == AlertEvent.rule_id)
        .join(Server, Server.id == AlertEvent.server_id)
    )
    if rule_id is not None:
        q = q.where(AlertEvent.rule_id == rule_id)
    if server_id is not None:
        q = q.where(AlertEvent.server_id == server_id)
    total = session.execute(select(func.count()).select_from(q.subquery())).scalar_one()
    rows = session.execute(
        q.order_by(AlertEvent.at.desc(), AlertEvent.id.desc())
        .offset((page - 1) * per_page)
        .limit(per_page)
    ).all()
    items = [
        {
            "id": ev.id,
            "rule_id": ev.rule_id,
            "rule_name": name,
            "server_id": ev.server_id,
            "hostname": hostname,
            "from_state": ev.from_state,
            "to_state": ev.to_state,
            "value": ev.value,
            "at": _dt(ev.at),
            "silenced": ev.silenced,
            "reason": ev.reason,
        }
        for ev, name, hostname in rows
    ]
    return items, int(total)


# Silences -----------------------------------------------------------------------------------
def silence_dict(s: Silence, now: float | None = None) -> dict[str, Any]:
    """A silence as the API shows it."""
    now = time.time() if now is None else now
    return {
        "id": s.id,
        "rule_id": s.rule_id,
        "server_id": s.server_id,
        "starts_at": _dt(s.starts_at),
        "ends_at": _dt(s.ends_at),
        "comment": s.comment,
        "created_by": s.created_by,
        "created_at": s.created_at,
        "active": s.starts_at <= now < s.ends_at,
    }


def list_silences(session: Session, *, expired: bool = False) -> list[Silence]:
    """Silences that have not ended (and, with ``expired``, those that have), newest first."""
    q = select(Silence).order_by(Silence.ends_at.desc(), Silence.id.desc())
    if not expired:
        q = q.where(Silence.ends_at > time.time())
    return list(session.execute(q).scalars())


def create_silence(
    session: Session,
    *,
    rule_id: int | None,
    server_id: int | None,
    ends_at: str | None,
    duration: str | float | None,
    comment: str,
    created_by: str,
) -> Silence:
    """Mute a rule, a server, or a rule on one server, from now until a time."""
    now = time.time()
    if rule_id is not None and session.get(AlertRule, rule_id) is None:
        raise _unprocessable("body.rule_id", f"alert rule {rule_id} not found")
    if server_id is not None and session.get(Server, server_id) is None:
        raise _unprocessable("body.server_id", f"server {server_id} not found")
    if ends_at is not None:
        end = datetime.fromisoformat(ends_at.strip()).timestamp()
        if end <= now:
            raise _unprocessable("body.ends_at", f"{ends_at} is in the past")
    else:
        assert duration is not None
        end = now + parse_duration(duration)
    s = Silence(
        rule_id=rule_id,
        server_id=server_id,
        starts_at=now,
        ends_at=end,
        comment=comment,
        created_by=created_by[:200],
    )
    session.add(s)
    session.commit()
    return s


def get_silence(session: Session, silence_id: int) -> Silence:
    """The silence, or 404."""
    s = session.get(Silence, silence_id)
    if s is None:
        raise ApiError(404, f"silence {silence_id} not found")
    return s


def end_silence(session: Session, s: Silence) -> None:
    """End a silence now (it stays in the list of expired ones); a firing alert it muted is
    announced on the evaluator's next round."""
    now = time.time()
    s.ends_at = min(s.ends_at, now)
    session.commit()


# Notifications ------------------------------------------------------------------------------
def notification_dict(n: Notification) -> dict[str, Any]:
    """An outbox row as the API shows it (not its payload: that may hold labels)."""
    return {
        "id": n.id,
        "rule_id": n.rule_id,
        "server_id": n.server_id,
        "event": n.event,
        "channel": n.channel,
        "status": n.status,
        "attempts": n.attempts,
        "next_attempt_at": _dt(n.next_attempt_at) if n.status == "pending" else None,
        "last_error": n.last_error,
        "created_at": _dt(n.created_at),
        "sent_at": _dt(n.sent_at),
        "summary": str((n.payload or {}).get("summary", "")),
    }


def list_notifications(
    session: Session, *, page: int, per_page: int, status: str | None = None
) -> tuple[list[Notification], int]:
    """Notifications, newest first, and how many there are."""
    q = select(Notification)
    if status is not None:
        q = q.where(Notification.status == status)
    total = session.execute(select(func.count()).select_from(q.subquery())).scalar_one()
    rows = session.execute(
        q.order_by(Notification.id.desc()).offset((page - 1) * per_page).limit(per_page)
    ).scalars()
    return list(rows), int(total)


def pages(total: int, per_page: int) -> int:
    return max(1, math.ceil(total / per_page))
