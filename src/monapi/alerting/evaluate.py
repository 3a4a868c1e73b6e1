"""Alert evaluation: what each rule observes for each server, the state machine, and the outbox.

One evaluation, at a time ``now`` (the evaluator's clock, which tests control):

1. For each enabled rule, the servers it targets (enabled ones: every server, those with all of
   its labels, or those listed) and what it observes for each:

   * ``threshold``: the rule's aggregation of its field over ``(now - window, now]``, per series
     (a field may have several, such as one per disk), from the time-series store in one query
     for every server. The rule holds for a server when any series meets the condition; the
     value shown is the series furthest past the threshold. No value in the window: does not
     hold (a server that went quiet is the ``silent`` kind's business).
   * ``silent``: seconds since the server's last push (since its registration if it never
     pushed); holds past ``intervals`` times the server's own interval.

2. The state machine, per (rule, server): ``ok -> pending`` when the condition first holds,
   ``pending -> firing`` once it has held for the rule's duration (at once for 0), ``pending ->
   ok`` and ``firing -> resolved`` when it stops holding; ``resolved -> pending`` when it holds
   again. A server the rule no longer targets (disabled, relabelled, rule disabled) is treated
   as not holding. Every change is an :class:`AlertEvent` (the history).

3. Notifications go into the outbox (:class:`Notification`, one per configured channel) in the
   same transaction as the state change they announce. A firing alert is announced once, when a
   silence does not mute it (or once the silence ends, if it still fires); its resolution is
   announced when its firing was, silence or not, so a receiver never keeps an incident open.

Each rule's changes are one transaction, and every state row carries a version: two
evaluators that overlap (the lease normally prevents it) cannot both record a transition, so
neither can both queue its notification. The loser's transaction fails and is dropped.
"""

from __future__ import annotations

import logging
import math
import operator
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from ..db import Database
from ..models import AlertEvent, AlertRule, AlertState, Notification, Server, Silence
from ..settings import Settings
from ..tsdb import TimeSeriesStore, Value

log = logging.getLogger("monapi.alerts")

OK, PENDING, FIRING, RESOLVED = "ok", "pending", "firing", "resolved"
STATES = (OK, PENDING, FIRING, RESOLVED)
THRESHOLD, SILENT = "threshold", "silent"
OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
NS = 1_000_000_000
MS_NS = 1_000_000
Clock = Callable[[], float]


# Pure parts ---------------------------------------------------------------------------------
def format_duration(seconds: float) -> str:
    """90 -> '90s', 300 -> '5m', 5400 -> '90m', 7200 -> '2h', 86400 -> '1d'."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def format_value(value: float | None) -> str:
    """A value as notifications show it: up to 6 significant digits."""
    return "no data" if value is None else f"{value:.6g}"


def expression(rule: AlertRule) -> str:
    """The rule in words: 'mean(cpu.usage_percent) over 5m > 90', 'no push for 3 intervals'."""
    if rule.kind == SILENT:
        return f"no push for {rule.intervals or 3:g} intervals"
    tags = ",".join(f"{k}={v}" for k, v in sorted((rule.tags or {}).items()))
    series = f"{rule.measurement}.{rule.field}" + (f"{{{tags}}}" if tags else "")
    window = format_duration(rule.window_s or 300)
    return f"{rule.aggregation}({series}) over {window} {rule.condition} {rule.threshold:g}"


def numeric(value: Value | None) -> float | None:
    """A stored value as a number to compare: booleans are 1 and 0; text is not a number."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        v = float(value)
        return v if math.isfinite(v) else None
    return None


def merge_buckets(agg: str, buckets: Sequence[tuple[int, Value]]) -> float | None:
    """One value from the (at most two) epoch-aligned buckets a window spans, for every
    aggregation but mean (see :func:`mean_of`)."""
    values = [(b, v) for b, v in ((b, numeric(v)) for b, v in buckets) if v is not None]
    if not values:
        return None
    if agg in ("sum", "count"):
        return math.fsum(v for _, v in values)
    if agg == "min":
        return min(v for _, v in values)
    if agg == "max":
        return max(v for _, v in values)
    if agg == "last":
        return max(values)[1]
    raise ValueError(f"cannot merge {agg!r} buckets")


def mean_of(sums: Sequence[tuple[int, Value]], counts: Sequence[tuple[int, Value]]) -> float | None:
    """The mean over a window from its buckets' sums and counts (a mean of bucket means would
    weigh a bucket of 1 point like one of 100)."""
    total, n = merge_buckets("sum", sums), merge_buckets("count", counts)
    if total is None or not n:
        return None
    return total / n


@dataclass(slots=True)
class Observation:
    """What a rule saw for one server: the value shown, the tags of its series, and whether
    the condition holds."""

    value: float | None
    series: dict[str, str] = field(default_factory=dict)
    met: bool = False


def pick(condition: str, threshold: float, candidates: Sequence[Observation]) -> Observation:
    """The observation a rule reports among a server's series: among those that meet the
    condition (any one is enough), else among all, the furthest in the condition's
    direction."""
    if not candidates:
        return Observation(None)
    test = OPS[condition]
    for c in candidates:
        c.met = c.value is not None and test(c.value, threshold)
    pool = [c for c in candidates if c.met] or list(candidates)
    if condition in (">", ">="):
        return max(pool, key=lambda c: (c.value is not None, c.value or 0.0))
    if condition in ("<", "<="):
        return min(pool, key=lambda c: (c.value is None, c.value or 0.0))
    return pool[0]


def targets(rule: AlertRule, servers: Iterable[Server]) -> list[Server]:
    """The enabled servers a rule applies to: those listed, else those with all its labels,
    else every one."""
    enabled = [s for s in servers if s.enabled]
    if rule.server_ids is not None:
        wanted = set(rule.server_ids)
        return [s for s in enabled if s.id in wanted]
    if rule.labels:
        return [
            s for s in enabled if all((s.labels or {}).get(k) == v for k, v in rule.labels.items())
        ]
    return enabled


def silenced(silences: Iterable[Silence], rule_id: int, server_id: int) -> bool:
    """Whether an active silence mutes this rule on this server."""
    return any(
        (s.rule_id is None or s.rule_id == rule_id)
        and (s.server_id is None or s.server_id == server_id)
        for s in silences
    )


def iso(ts: float | None) -> str | None:
    """Epoch seconds as RFC 3339 UTC with a Z, to the second."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# Observations -------------------------------------------------------------------------------
def window_bounds(now: float, window_s: float) -> tuple[int, int, int]:
    """(start_ns, end_ns, step_ns) of the window ``(now - window, now]`` in whole milliseconds
    (what every store keeps), with the window as the step: the range then spans at most two
    epoch-aligned buckets, merged by :func:`merge_buckets`."""
    step_ns = max(1, round(window_s * 1000)) * MS_NS
    end_ns = math.floor(now * 1000) * MS_NS
    return end_ns - step_ns + 1, end_ns, step_ns


def observe_threshold(
    store: TimeSeriesStore, rule: AlertRule, server_ids: Sequence[int], now: float
) -> dict[int, Observation]:
    """What a threshold rule sees for each server (a key for every id)."""
    assert rule.measurement and rule.field and rule.condition and rule.threshold is not None
    start, end, step = window_bounds(now, rule.window_s or 300)
    selectors = [(rule.measurement, rule.field)]
    agg = rule.aggregation or "mean"
    wanted = rule.tags or {}

    def keep(tags: dict[str, str]) -> bool:
        return all(tags.get(k) == v for k, v in wanted.items())

    if agg == "mean":
        sums = store.query_many(server_ids, selectors, start, end, step, "sum")
        counts = store.query_many(server_ids, selectors, start, end, step, "count")
    else:
        sums = store.query_many(server_ids, selectors, start, end, step, agg)
        counts = {}
    out: dict[int, Observation] = {}
    for sid in server_ids:
        by_tags = {tuple(sorted(s.tags.items())): s.points for s in counts.get(sid, [])}
        candidates = []
        for s in sums.get(sid, []):
            if not keep(s.tags):
                continue
            if agg == "mean":
                value = mean_of(s.points, by_tags.get(tuple(sorted(s.tags.items())), []))
            else:
                value = merge_buckets(agg, s.points)
            if value is not None:
                candidates.append(Observation(value, dict(s.tags)))
        out[sid] = pick(rule.condition, rule.threshold, candidates)
    return out


def observe_silent(
    rule: AlertRule, servers: Sequence[Server], seen: dict[int, float], now: float
) -> dict[int, Observation]:
    """Seconds since each server's last push (``seen``: times not yet written to the
    configuration store), held past ``intervals`` of its interval."""
    k = rule.intervals or 3
    out = {}
    for s in servers:
        last = max(s.last_seen or 0.0, seen.get(s.id, 0.0)) or s.created_at.timestamp()
        quiet = max(0.0, now - last)
        out[s.id] = Observation(round(quiet, 3), {}, quiet > k * s.interval)
    return out


# The evaluator ------------------------------------------------------------------------------
@dataclass(slots=True)
class Report:
    """What one evaluation did (for logs and tests)."""

    rules: int = 0
    transitions: int = 0
    queued: int = 0
    conflicts: int = 0
    errors: list[str] = field(default_factory=list)


def channels(settings: Settings) -> list[str]:
    """The notification channels configured."""
    out = []
    if settings.alert_webhook_url:
        out.append("webhook")
    if settings.smtp_host and settings.alert_email_to:
        out.append("email")
    return out


class Evaluator:
    """Evaluates every rule and delivers the outbox. Stateless between calls: everything it
    knows is in the configuration store, so any process can take over."""

    def __init__(
        self,
        database: Database,
        store: TimeSeriesStore,
        settings: Settings,
        pending_seen: Callable[[], dict[int, float]],
        *,
        clock: Clock = time.time,
    ) -> None:
        self.db = database
        self.store = store
        self.settings = settings
        self.pending_seen = pending_seen
        self.clock = clock

    # Evaluation -----------------------------------------------------------------------------
    def evaluate(self, now: float | None = None) -> Report:
        """Evaluate every rule once at ``now`` (default the clock)."""
        now = self.clock() if now is None else now
        report = Report()
        with self.db.session() as s:
            rules = list(s.execute(select(AlertRule).order_by(AlertRule.id)).scalars())
            if not rules:
                return report
            servers = list(s.execute(select(Server)).scalars())
            # A silence starts when it is made; only its end is compared with the clock.
            silences = list(s.execute(select(Silence).where(Silence.ends_at > now)).scalars())
            s.expunge_all()
        seen = self.pending_seen() if any(r.kind == SILENT for r in rules) else {}
        by_id = {srv.id: srv for srv in servers}
        for rule in rules:
            report.rules += 1
            try:
                observed = self._observe(rule, servers, seen, now) if rule.enabled else {}
                self._apply(rule, observed, by_id, silences, now, report)
            except (StaleDataError, IntegrityError) as exc:
                report.conflicts += 1
                log.info("rule %d: another evaluator changed its states first (%s)", rule.id, exc)
            except OperationalError as exc:
                if "locked" in str(exc) or "busy" in str(exc):
                    report.conflicts += 1
                    log.info("rule %d: another evaluator holds the store; skipped", rule.id)
                else:
                    report.errors.append(f"rule {rule.id}: {exc}")
                    log.warning("rule %d not evaluated: %s", rule.id, exc)
            except Exception as exc:  # one rule's failure (the store away) skips that rule only
                report.errors.append(f"rule {rule.id}: {exc}")
                log.warning("rule %d not evaluated: %s", rule.id, exc)
        return report

    def _observe(
        self, rule: AlertRule, servers: list[Server], seen: dict[int, float], now: float
    ) -> dict[int, Observation]:
        chosen = targets(rule, servers)
        if not chosen:
            return {}
        if rule.kind == SILENT:
            return observe_silent(rule, chosen, seen, now)
        return observe_threshold(self.store, rule, [srv.id for srv in chosen], now)

    def _apply(
        self,
        rule: AlertRule,
        observed: dict[int, Observation],
        servers: dict[int, Server],
        silences: list[Silence],
        now: float,
        report: Report,
    ) -> None:
        """Move this rule's states on, record the history and queue the notifications, in one
        transaction."""
        outlets = channels(self.settings)
        with self.db.session() as s:
            rows = {
                st.server_id: st
                for st in s.execute(select(AlertState).where(AlertState.rule_id == rule.id))
                .scalars()
                .all()
            }
            not_targeted = "rule disabled" if not rule.enabled else "server no longer targeted"
            for server_id in sorted(set(rows) | {k for k, o in observed.items() if o.met}):
                server = servers.get(server_id)
                if server is None:
                    continue  # deleted meanwhile: its rows go with it
                obs = observed.get(server_id)
                reason = "" if obs is not None else not_targeted
                st = rows.get(server_id)
                if st is None:
                    st = AlertState(
                        rule_id=rule.id,
                        server_id=server_id,
                        state=OK,
                        since=now,
                        evaluated_at=now,
                        series={},
                    )
                    s.add(st)
                muted = silenced(silences, rule.id, server_id)
                moved = step(st, obs or Observation(None), rule.duration_s, now)
                for before, after in moved:
                    report.transitions += 1
                    if after in (FIRING, RESOLVED):
                        log.info(
                            "alert %s: %s on %s (%s, value %s)%s",
                            after,
                            rule.name,
                            server.hostname,
                            expression(rule),
                            format_value(st.value),
                            " [silenced]" if muted else "",
                        )
                    s.add(
                        AlertEvent(
                            rule_id=rule.id,
                            server_id=server_id,
                            from_state=before,
                            to_state=after,
                            value=st.value,
                            at=now,
                            silenced=muted,
                            reason=reason,
                        )
                    )
                event = due_notification(st, muted)
                if event is not None:
                    st.notified = event
                    payload = build_payload(rule, server, st, event, now, self.settings, reason)
                    for channel in outlets:
                        report.queued += 1
                        s.add(queued(rule.id, server_id, event, channel, payload, now))

    # Delivery -------------------------------------------------------------------------------
    def deliver(self, now: float | None = None, limit: int = 50) -> int:
        """Send notifications that are due (at most ``limit``); returns how many were sent."""
        from . import outbox

        return outbox.deliver(self.db, self.settings, self.clock() if now is None else now, limit)


def step(st: AlertState, obs: Observation, duration_s: float, now: float) -> list[tuple[str, str]]:
    """Move one state on with what the rule observed; returns the transitions made."""
    moved: list[tuple[str, str]] = []

    def go(to: str) -> None:
        moved.append((st.state, to))
        st.state = to
        st.since = now

    changed_value = st.value != obs.value or (st.series or {}) != obs.series
    if obs.met:
        st.value, st.series = obs.value, obs.series
        if st.state in (OK, RESOLVED):
            st.pending_since, st.resolved_at, st.fired_at = now, None, None
            go(PENDING)
        if st.state == PENDING and now - (st.pending_since or now) >= duration_s:
            st.fired_at = now
            go(FIRING)
    elif st.state == PENDING:
        st.value, st.series = obs.value, obs.series
        st.pending_since = None
        go(OK)
    elif st.state == FIRING:
        st.value, st.series = obs.value, obs.series
        st.resolved_at = now
        go(RESOLVED)
    if moved or (changed_value and st.state in (PENDING, FIRING)):
        st.evaluated_at = now
    return moved


def due_notification(st: AlertState, muted: bool) -> str | None:
    """The event to announce now, if any: a firing not yet announced (unless muted), or the
    resolution of an announced firing (even when muted: the receiver's incident must close)."""
    if st.state == FIRING and st.notified != FIRING and not muted:
        return FIRING
    if st.state in (RESOLVED, OK) and st.notified == FIRING:
        return RESOLVED
    return None


def build_payload(
    rule: AlertRule,
    server: Server,
    st: AlertState,
    event: str,
    now: float,
    settings: Settings,
    reason: str = "",
) -> dict[str, Any]:
    """The notification: the server, the rule, the value and the time (see docs/alerts.md)."""
    expr = expression(rule)
    if rule.kind == SILENT:
        summary = f"{rule.name} on {server.hostname}: no push for {format_value(st.value)} s"
    else:
        shown = format_value(st.value)
        summary = f"{rule.name} on {server.hostname}: {expr.rsplit(' ', 2)[0]} is {shown}"
        summary += f" ({rule.condition} {rule.threshold:g})"
    if event == RESOLVED:
        summary = f"resolved: {summary}" + (f" ({reason})" if reason else "")
    base = settings.public_url
    return {
        "event": event,
        "severity": rule.severity,
        "rule": {
            "id": rule.id,
            "name": rule.name,
            "kind": rule.kind,
            "description": rule.description,
            "expression": expr,
            "duration_s": rule.duration_s,
        },
        "server": {
            "id": server.id,
            "hostname": server.hostname,
            "ip_address": server.ip_address,
            "labels": dict(server.labels or {}),
        },
        "value": st.value,
        "series": dict(st.series or {}),
        "condition": rule.condition,
        "threshold": rule.threshold,
        "at": iso(now),
        "started_at": iso(st.fired_at),
        "resolved_at": iso(st.resolved_at) if event == RESOLVED else None,
        "summary": summary,
        "reason": reason,
        "url": f"{base}/servers/{server.id}" if base else None,
    }


def queued(
    rule_id: int | None,
    server_id: int | None,
    event: str,
    channel: str,
    payload: dict[str, Any],
    now: float,
) -> Notification:
    """An outbox row, due at once."""
    return Notification(
        rule_id=rule_id,
        server_id=server_id,
        event=event,
        channel=channel,
        payload=payload,
        status="pending",
        attempts=0,
        next_attempt_at=now,
        last_error="",
        created_at=now,
    )


def retire(
    session: Session,
    settings: Settings,
    *,
    reason: str,
    now: float | None = None,
    rule_id: int | None = None,
    server_id: int | None = None,
) -> int:
    """Before a rule or a server is deleted: queue the resolution of each of its announced
    firings (their states go with the row). Returns how many were queued."""
    now = time.time() if now is None else now
    q = select(AlertState).where(AlertState.state == FIRING, AlertState.notified == FIRING)
    if rule_id is not None:
        q = q.where(AlertState.rule_id == rule_id)
    if server_id is not None:
        q = q.where(AlertState.server_id == server_id)
    n = 0
    outlets = channels(settings)
    for st in session.execute(q).scalars().all():
        rule, server = session.get(AlertRule, st.rule_id), session.get(Server, st.server_id)
        if rule is None or server is None:
            continue
        st.state, st.resolved_at, st.notified = RESOLVED, now, RESOLVED
        payload = build_payload(rule, server, st, RESOLVED, now, settings, reason)
        for channel in outlets:
            session.add(queued(rule.id, server.id, RESOLVED, channel, payload, now))
            n += 1
    return n
