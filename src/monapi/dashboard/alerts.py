"""The alerts page: firing and pending alerts, rules (add, edit, enable, delete), silences,
history and failed notifications; and the alert panels of the overview and the server pages.

Forms are checked by the same schemas as ``/api/v1/alerts`` and saved by the same service
functions, so the dashboard accepts and refuses exactly what the API does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from flask import flash, redirect, render_template, request, url_for
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Response

from .. import db
from ..alerting.evaluate import FIRING, SILENT, THRESHOLD, format_duration
from ..errors import ApiError
from ..models import AlertRule, FieldConfig, Server
from ..schemas import (
    CONDITIONS,
    SEVERITIES,
    AlertRuleCreate,
    AlertRuleUpdate,
    SilenceCreate,
)
from ..services import alerts as svc
from ..services import fields as fsvc
from . import bp
from .charts import fmt_value
from .forms import FormErrors, number, pydantic_errors
from .session import current_user, login_required, safe_next

AGGREGATIONS = ("mean", "min", "max", "last", "sum", "count")
TARGETS = ("all", "labels", "servers")
SILENCE_DURATIONS = ("1h", "4h", "24h", "7d")
HISTORY_SHOWN = 50
FAILED_SHOWN = 20
# Where an error of the schema or the service is shown: its key -> the form's input.
_INPUT_OF = {
    "measurement": "field",
    "field": "field",
    "tags": "tags",
    "aggregation": "aggregation",
    "window": "window",
    "condition": "condition",
    "threshold": "threshold",
    "intervals": "intervals",
    "duration": "duration",
    "server_ids": "server_ids",
    "labels": "labels",
    "severity": "severity",
    "enabled": "enabled",
    "name": "name",
    "description": "description",
    "kind": "kind",
    "rule_id": "rule_id",
    "server_id": "server_id",
    "ends_at": "ends_at",
    "comment": "comment",
}


# Shown states ---------------------------------------------------------------------------------
def alert_states(session: Session, server_id: int | None = None) -> list[dict[str, Any]]:
    """Firing and pending alerts (of one server), firing first, each with its value as text in
    its field's unit (a silent rule's value is seconds without a push)."""
    states = svc.list_states(session, server_id=server_id)
    if not states:
        return states
    ids = {s["rule_id"] for s in states}
    rules = session.execute(
        select(AlertRule.id, AlertRule.kind, AlertRule.measurement, AlertRule.field).where(
            AlertRule.id.in_(ids)
        )
    ).all()
    units: dict[tuple[str | None, str | None], str] = {
        (m, n): u
        for m, n, u in session.execute(
            select(FieldConfig.measurement, FieldConfig.name, FieldConfig.unit)
        ).all()
    }
    unit_of = {
        rid: "s" if kind == SILENT else units.get((meas, fld), "") for rid, kind, meas, fld in rules
    }
    for s in states:
        s["value_text"] = fmt_value(s["value"], unit_of.get(s["rule_id"], ""))
    return states


def firing_count() -> int | None:
    """How many alerts fire now, for the navigation's badge (None: the store did not say)."""
    try:
        counts = svc.state_counts(db.session())
    except SQLAlchemyError:
        # Error pages render the navigation too, sometimes because the store failed: the badge
        # must not turn the page that reports the failure into a second failure.
        return None
    return sum(n for (_, state), n in counts.items() if state == FIRING)


@bp.app_context_processor
def _alert_globals() -> dict[str, Any]:
    return {"firing_count": firing_count}


@bp.app_template_filter("duration")
def _duration_filter(seconds: float) -> str:
    return format_duration(seconds)


# Parsing forms --------------------------------------------------------------------------------
def parse_pairs(text: str) -> dict[str, str]:
    """``key=value`` items, one per line or separated by commas (ValueError for another)."""
    out: dict[str, str] = {}
    for item in (p.strip() for p in re.split(r"[,\n]", text)):
        if not item:
            continue
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"{item[:60]!r} is not key=value")
        out[key.strip()] = value.strip()
    return out


def _location_input(location: str) -> str:
    key = location.removeprefix("body").lstrip(".").split(".")[0]
    return _INPUT_OF.get(key, "form")


def _api_errors(exc: ApiError) -> dict[str, str]:
    """A service's refusal, next to the input it is about (a 409 is about the name)."""
    if exc.status == 409:
        return {"name": exc.message}
    out: dict[str, str] = {}
    for d in exc.details or []:
        out.setdefault(_location_input(str(d.get("location", ""))), str(d.get("reason", "")))
    return out or {"form": exc.message}


def rule_body(form: MultiDict[str, str], kind: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The rule the form describes, in the API's terms, and what is wrong with the inputs
    before the schema is asked (input name -> message)."""
    errors: dict[str, str] = {}
    body: dict[str, Any] = {
        "name": form.get("name", "").strip(),
        "description": form.get("description", "").strip(),
        "severity": form.get("severity", "warning"),
        "enabled": form.get("enabled") == "on",
        "duration": form.get("duration", "").strip() or "0",
    }
    if kind == THRESHOLD:
        measurement, dot, name = form.get("field", "").partition(".")
        if not dot:
            errors["field"] = "choose a field"
        body["measurement"], body["field"] = (measurement, name) if dot else (None, None)
        body["aggregation"] = form.get("aggregation", "mean")
        body["window"] = form.get("window", "").strip() or "5m"
        body["condition"] = form.get("condition", "")
        if body["condition"] not in CONDITIONS:
            errors["condition"] = "choose a condition"
            body["condition"] = None
        body["threshold"] = number(form, "threshold", errors)
        if body["threshold"] is None:
            errors.setdefault("threshold", "enter the number the value is compared with")
        try:
            body["tags"] = parse_pairs(form.get("tags", "")) or None
        except ValueError as exc:
            errors["tags"] = str(exc)
    else:
        body["intervals"] = number(form, "intervals", errors)
    target = form.get("target", "all")
    body["server_ids"], body["labels"] = None, None
    if target == "labels":
        try:
            body["labels"] = parse_pairs(form.get("labels", ""))
        except ValueError as exc:
            errors["labels"] = str(exc)
        else:
            if not body["labels"]:
                errors["labels"] = "give at least one label (key=value), or choose all servers"
    elif target == "servers":
        try:
            body["server_ids"] = sorted({int(v) for v in form.getlist("server_ids")}) or None
        except ValueError:
            errors["server_ids"] = "choose servers from the list"
        else:
            if not body["server_ids"]:
                errors["server_ids"] = "choose at least one server, or choose all servers"
    elif target != "all":
        errors["target"] = "choose all servers, servers with labels, or servers from the list"
    return body, errors


def parse_create(form: MultiDict[str, str]) -> AlertRuleCreate:
    """A new rule from the form, checked by the same schema as POST /api/v1/alerts."""
    kind = form.get("kind", THRESHOLD)
    if kind not in (THRESHOLD, SILENT):
        raise FormErrors({"kind": "choose threshold or silent"})
    body, errors = rule_body(form, kind)
    try:
        if errors:
            # Every input's problem shows at once: the schema judges the inputs that parsed
            # (without the check of the whole, which would repeat what is missing).
            AlertRuleUpdate.model_validate(body)
        else:
            return AlertRuleCreate.model_validate({**body, "kind": kind})
    except ValidationError as exc:
        errors = {**pydantic_errors(exc, _INPUT_OF), **errors}
    raise FormErrors(errors)


def parse_update(form: MultiDict[str, str], rule: AlertRule) -> dict[str, Any]:
    """The rule's new values from the edit form (the kind stays), checked by the same schema
    as PATCH /api/v1/alerts/{id}."""
    changes, errors = rule_body(form, rule.kind)
    try:
        AlertRuleUpdate.model_validate(changes)
    except ValidationError as exc:
        errors = {**pydantic_errors(exc, _INPUT_OF), **errors}
    if errors:
        raise FormErrors(errors)
    return changes


def rule_form_values(rule: AlertRule) -> dict[str, str]:
    """A stored rule as the form's inputs show it."""
    if rule.server_ids is not None:
        target = "servers"
    elif rule.labels:
        target = "labels"
    else:
        target = "all"
    return {
        "name": rule.name,
        "description": rule.description,
        "kind": rule.kind,
        "field": f"{rule.measurement}.{rule.field}" if rule.kind == THRESHOLD else "",
        "tags": ", ".join(f"{k}={v}" for k, v in sorted((rule.tags or {}).items())),
        "aggregation": rule.aggregation or "mean",
        "window": format_duration(rule.window_s or 300),
        "condition": rule.condition or ">",
        "threshold": "" if rule.threshold is None else format(rule.threshold, ".15g"),
        "intervals": format(rule.intervals or 3, ".15g"),
        "duration": format_duration(rule.duration_s),
        "target": target,
        "labels": "\n".join(f"{k}={v}" for k, v in sorted((rule.labels or {}).items())),
        "severity": rule.severity,
        "enabled": "on" if rule.enabled else "",
    }


NEW_RULE = {
    "kind": THRESHOLD,
    "aggregation": "mean",
    "window": "5m",
    "condition": ">",
    "intervals": "3",
    "duration": "0s",
    "target": "all",
    "severity": "warning",
    "enabled": "on",
}


def _servers(session: Session) -> list[tuple[int, str]]:
    """(id, host name) of every server, by name (the selects of the forms)."""
    rows = session.execute(select(Server.id, Server.hostname).order_by(Server.hostname)).all()
    return [(int(i), str(h)) for i, h in rows]


def _form_page(
    rule: AlertRule | None,
    values: dict[str, str],
    chosen: Iterable[int],
    errors: dict[str, str],
) -> str:
    session = db.session()
    fields = fsvc.list_fields(session)
    known = {f"{f.measurement}.{f.name}" for f in fields}
    return render_template(
        "alert_form.html",
        rule=rule,
        form=values,
        chosen=set(chosen),
        errors=errors,
        fields=fields,
        missing_field=values.get("field") if values.get("field") not in known else None,
        servers=_servers(session),
        aggregations=AGGREGATIONS,
        conditions=CONDITIONS,
        severities=SEVERITIES,
    )


def _form_again(rule: AlertRule | None, errors: dict[str, str]) -> tuple[str, int]:
    db.session().rollback()
    chosen: set[int] = set()
    for v in request.form.getlist("server_ids"):
        if v.isdigit():
            chosen.add(int(v))
    values = request.form.to_dict()
    if rule is not None:
        values["kind"] = rule.kind
    return _form_page(rule, values, chosen, errors), 422


# Pages ----------------------------------------------------------------------------------------
def _silence_what(s: dict[str, Any], rules: dict[int, str], servers: dict[int, str]) -> str:
    parts = []
    if s["rule_id"] is not None:
        parts.append(f"rule {rules.get(s['rule_id'], s['rule_id'])}")
    if s["server_id"] is not None:
        parts.append(f"server {servers.get(s['server_id'], s['server_id'])}")
    return " on ".join(parts)


def _page(
    silence_form: dict[str, str] | None = None, silence_errors: dict[str, str] | None = None
) -> str:
    session = db.session()
    counts = svc.state_counts(session)
    rules = [svc.rule_dict(r, counts) for r in svc.list_rules(session)]
    servers = _servers(session)
    hostnames = dict(servers)
    rule_names = {r["id"]: r["name"] for r in rules}
    for r in rules:  # the servers a rule lists, by name
        r["servers_shown"] = sorted((hostnames.get(i, str(i)), i) for i in r["server_ids"] or ())
    silences = [svc.silence_dict(s) for s in svc.list_silences(session)]
    for s in silences:
        s["what"] = _silence_what(s, rule_names, hostnames)
    history, _ = svc.history(session, page=1, per_page=HISTORY_SHOWN)
    failed, failed_total = svc.list_notifications(
        session, page=1, per_page=FAILED_SHOWN, status="failed"
    )
    return render_template(
        "alerts.html",
        alerts=alert_states(session),
        rules=rules,
        hostnames=hostnames,
        servers=servers,
        silences=silences,
        history=history,
        failed=[svc.notification_dict(n) for n in failed],
        failed_total=failed_total,
        rule_names=rule_names,
        durations=SILENCE_DURATIONS,
        silence_form=silence_form or {"duration": "1h"},
        silence_errors=silence_errors or {},
    )


@bp.get("/alerts")
@login_required
def alerts_page() -> str:
    """Firing and pending alerts, the rules, silences, recent history, failed notifications."""
    return _page()


@bp.route("/alerts/new", methods=["GET", "POST"])
@login_required
def alert_new() -> Response | str | tuple[str, int]:
    """Add a rule."""
    if request.method != "POST":  # GET, and HEAD (which the CSRF check lets through)
        return _form_page(None, dict(NEW_RULE), (), {})
    try:
        rule = svc.create_rule(db.session(), parse_create(request.form))
    except FormErrors as exc:
        return _form_again(None, exc.errors)
    except ApiError as exc:  # 409: the name is taken; 422: a field or server that is not there
        return _form_again(None, _api_errors(exc))
    flash(f"rule {rule.name} added", "ok")
    return redirect(url_for("dashboard.alerts_page"))


@bp.route("/alerts/<int:rule_id>/edit", methods=["GET", "POST"])
@login_required
def alert_edit(rule_id: int) -> Response | str | tuple[str, int]:
    """Change a rule (its kind is fixed); it applies from the evaluator's next round."""
    session = db.session()
    rule = svc.get_rule(session, rule_id)
    if request.method != "POST":  # GET, and HEAD (which the CSRF check lets through)
        return _form_page(rule, rule_form_values(rule), rule.server_ids or (), {})
    try:
        svc.update_rule(session, rule, parse_update(request.form, rule))
    except FormErrors as exc:
        return _form_again(rule, exc.errors)
    except ApiError as exc:
        return _form_again(svc.get_rule(db.session(), rule_id), _api_errors(exc))
    flash(f"rule {rule.name} saved", "ok")
    return redirect(url_for("dashboard.alerts_page"))


@bp.post("/alerts/<int:rule_id>/toggle")
@login_required
def alert_toggle(rule_id: int) -> Response:
    """Enable a disabled rule, or disable an enabled one (its alerts resolve on the next
    round)."""
    session = db.session()
    rule = svc.get_rule(session, rule_id)
    name, enabled = rule.name, not rule.enabled
    try:
        svc.update_rule(session, rule, {"enabled": enabled})
    except ApiError as exc:
        session.rollback()
        flash(f"rule {name} not changed: {exc.message}", "error")
    else:
        flash(f"rule {name} {'enabled' if enabled else 'disabled'}", "ok")
    return redirect(url_for("dashboard.alerts_page"))


@bp.post("/alerts/<int:rule_id>/delete")
@login_required
def alert_delete(rule_id: int) -> Response:
    """Delete a rule with its states and history; alerts it had announced are announced
    resolved."""
    session = db.session()
    rule = svc.get_rule(session, rule_id)
    name = rule.name
    svc.delete_rule(session, rule)
    flash(f"rule {name} deleted", "ok")
    return redirect(url_for("dashboard.alerts_page"))


def _optional_id(form: MultiDict[str, str], name: str, errors: dict[str, str]) -> int | None:
    text = form.get(name, "").strip()
    if not text:
        return None
    if not text.isdigit():
        errors[name] = f"choose a {name.removesuffix('_id')} from the list"
        return None
    return int(text)


def _utc_time(text: str, errors: dict[str, str]) -> str | None:
    """A ``datetime-local`` value, read as UTC, as RFC 3339 text."""
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        errors["ends_at"] = f"{text[:64]!r} is not a date and time"
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.isoformat()


def parse_silence(form: MultiDict[str, str]) -> SilenceCreate:
    """A silence from the form (a duration of the list, or ``until`` a time in UTC), checked
    by the same schema as POST /api/v1/alerts/silences."""
    errors: dict[str, str] = {}
    choice = form.get("duration", "1h")
    ends_at: str | None = None
    duration: str | None = None
    if choice == "until":
        text = form.get("ends_at", "").strip()
        if not text:
            errors["ends_at"] = "enter the time the silence ends"
        else:
            ends_at = _utc_time(text, errors)
    elif choice in SILENCE_DURATIONS:
        duration = choice
    else:
        errors["duration"] = f"choose one of {', '.join(SILENCE_DURATIONS)} or an end time"
    data = {
        "rule_id": _optional_id(form, "rule_id", errors),
        "server_id": _optional_id(form, "server_id", errors),
        "ends_at": ends_at,
        "duration": duration,
        "comment": form.get("comment", "").strip(),
    }
    if errors:
        raise FormErrors(errors)
    try:
        return SilenceCreate.model_validate(data)
    except ValidationError as exc:
        raise FormErrors(pydantic_errors(exc, _INPUT_OF)) from None


def _back(default: str) -> Response:
    """Back to the page the form was on (``next``: a path of this site), else ``default``."""
    target = request.form.get("next")
    return redirect(safe_next(target) if target else default)


@bp.post("/alerts/silences")
@login_required
def silence_create() -> Response | tuple[str, int]:
    """Mute a rule, a server, or a rule on one server, for a while or until a time."""
    session = db.session()
    try:
        body = parse_silence(request.form)
        user = current_user()
        s = svc.create_silence(
            session,
            rule_id=body.rule_id,
            server_id=body.server_id,
            ends_at=body.ends_at,
            duration=body.duration,
            comment=body.comment,
            created_by=f"dashboard user {user.username if user else ''}",
        )
    except FormErrors as exc:
        return _silence_again(exc.errors)
    except ApiError as exc:  # a rule or server that is not there (any more), a past end
        return _silence_again(_api_errors(exc))
    until = datetime.fromtimestamp(s.ends_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
    rule = session.get(AlertRule, s.rule_id) if s.rule_id is not None else None
    server = session.get(Server, s.server_id) if s.server_id is not None else None
    what = _silence_what(
        svc.silence_dict(s),
        {rule.id: rule.name} if rule else {},
        {server.id: server.hostname} if server else {},
    )
    flash(f"{what} silenced until {until}", "ok")
    return _back(url_for("dashboard.alerts_page"))


def _silence_again(errors: dict[str, str]) -> tuple[str, int]:
    db.session().rollback()
    return _page(silence_form=request.form.to_dict(), silence_errors=errors), 422


@bp.post("/alerts/silences/<int:silence_id>/end")
@login_required
def silence_end(silence_id: int) -> Response:
    """End a silence now; an alert it muted that still fires is announced on the next round."""
    session = db.session()
    svc.end_silence(session, svc.get_silence(session, silence_id))
    flash("silence ended", "ok")
    return _back(url_for("dashboard.alerts_page"))


def silences_of_server(session: Session, server_id: int) -> list[dict[str, Any]]:
    """The silences in force on this server (of every rule or of one), for its page."""
    rule_names = {r.id: r.name for r in svc.list_rules(session)}
    out = []
    for s in svc.active_silences(session):
        if s.server_id == server_id:
            d = svc.silence_dict(s)
            d["rule_name"] = rule_names.get(s.rule_id) if s.rule_id is not None else None
            out.append(d)
    out.sort(key=lambda d: d["ends_at"])
    return out
