"""The notification outbox: claiming due notifications, sending them, retrying with backoff.

A notification is written in the transaction of the state change it announces (see
``evaluate``), so a crash can neither lose one nor send one for a change that did not happen.
Sending claims the row first (a conditional update), so two processes never send the same one;
a claim that is never settled (the sender died mid-send) expires after ``CLAIM_S`` and the row
is tried again: delivery is at least once, and the ``X-Monapi-Delivery`` id (the row id) lets a
receiver drop a repeat.
"""

from __future__ import annotations

import logging

from sqlalchemy import or_, select, update

from ..db import Database
from ..models import Notification
from ..settings import Settings
from . import notify

log = logging.getLogger("monapi.alerts")

BACKOFF_BASE_S = 5.0  # the wait after the first failed attempt; doubled after each
BACKOFF_CAP_S = 900.0  # never more than 15 minutes between attempts
CLAIM_S = 300.0  # a claim not settled by then is taken to be a dead sender's


def backoff(attempts: int) -> float:
    """Seconds to wait after ``attempts`` failed attempts: 5, 10, 20, ... up to 15 minutes."""
    return float(min(BACKOFF_BASE_S * 2 ** max(0, attempts - 1), BACKOFF_CAP_S))


def deliver(database: Database, settings: Settings, now: float, limit: int = 50) -> int:
    """Send the notifications due at ``now``, oldest first (at most ``limit``); returns how many
    were delivered."""
    with database.session() as s:
        due = list(
            s.execute(
                select(Notification.id)
                .where(
                    Notification.status == "pending",
                    Notification.next_attempt_at <= now,
                    or_(Notification.claimed_until.is_(None), Notification.claimed_until < now),
                )
                .order_by(Notification.id)
                .limit(limit)
            ).scalars()
        )
    sent = 0
    for nid in due:
        row = _claim(database, nid, now)
        if row is None:
            continue  # another process took it
        result = notify.send(row.channel, row.payload, settings, delivery_id=str(nid))
        _settle(database, row, result, now, settings.alert_notify_max_attempts)
        sent += result.ok
    return sent


def _claim(database: Database, nid: int, now: float) -> Notification | None:
    """Take one notification for sending (None if another process has it or it is done)."""
    with database.session() as s:
        claimed = s.execute(
            update(Notification)
            .where(
                Notification.id == nid,
                Notification.status == "pending",
                or_(Notification.claimed_until.is_(None), Notification.claimed_until < now),
            )
            .values(claimed_until=now + CLAIM_S, attempts=Notification.attempts + 1)
            .execution_options(synchronize_session=False)
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            return None
        row = s.get(Notification, nid)
        if row is not None:
            s.expunge(row)
        return row


def _settle(
    database: Database, row: Notification, result: notify.Delivery, now: float, max_attempts: int
) -> None:
    """Record how an attempt went: sent, to be retried later, or failed for good."""
    if result.ok:
        values: dict[str, object] = {"status": "sent", "sent_at": now, "last_error": ""}
    elif result.retry and row.attempts < max_attempts:
        values = {"next_attempt_at": now + backoff(row.attempts), "last_error": result.error}
        log.warning(
            "alert notification %d (%s) attempt %d failed, retrying in %gs: %s",
            row.id,
            row.channel,
            row.attempts,
            backoff(row.attempts),
            result.error,
        )
    else:
        values = {"status": "failed", "last_error": result.error}
        log.error(
            "alert notification %d (%s) failed after %d attempt(s): %s",
            row.id,
            row.channel,
            row.attempts,
            result.error,
        )
    with database.session() as s:
        s.execute(
            update(Notification)
            .where(Notification.id == row.id)
            .values(claimed_until=None, **values)
            .execution_options(synchronize_session=False)
        )
