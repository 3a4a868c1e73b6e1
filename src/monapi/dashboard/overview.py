"""The overview: every server with its status, labels and last-hour sparklines."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from flask import render_template, request
from sqlalchemy import select
from sqlalchemy.orm import Session

from .. import db
from ..cache import get_coordinator
from ..models import Server
from ..services.servers import last_seen_of, status_of, store
from ..tsdb import Value
from . import bp, htmx
from .alerts import alert_states
from .charts import merge_max, spark_path
from .session import login_required

SPARK_RANGE_S = 3600
SPARK_STEP_S = 120
# column -> (measurement, field); disk is the fullest mount.
SPARKS = {
    "cpu": ("cpu", "usage_percent"),
    "mem": ("mem", "used_percent"),
    "disk": ("disk", "used_percent"),
}
SORTS = ("hostname", "status", "last_seen", "cpu", "mem", "disk")
STATUSES = ("online", "offline", "never_seen")
PER_PAGE = (50, 100, 250, 1000)
_STATUS_ORDER = {"offline": 0, "never_seen": 1, "online": 2}


@dataclass(slots=True)
class Row:
    """One server as the overview shows it."""

    id: int
    hostname: str
    ip_address: str
    status: str
    enabled: bool
    last_seen: float | None
    labels: dict[str, str]
    now: dict[str, float | None] = field(default_factory=dict)
    sparks: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Query:
    """The overview's filters, from the query string (bad values fall back to defaults)."""

    q: str = ""
    status: str = ""
    label: str = ""
    sort: str = "hostname"
    order: str = "asc"
    page: int = 1
    per_page: int = 100

    @classmethod
    def from_args(cls, args: Any) -> Query:
        """Read the filters; an unknown sort or status is ignored rather than an error page."""
        status = args.get("status", "")
        sort = args.get("sort", "hostname")
        try:
            page = max(1, int(args.get("page", 1)))
        except ValueError:
            page = 1
        try:
            per_page = int(args.get("per_page", 100))
        except ValueError:
            per_page = 100
        return cls(
            q=args.get("q", "").strip()[:200],
            status=status if status in STATUSES else "",
            label=args.get("label", "").strip()[:300],
            sort=sort if sort in SORTS else "hostname",
            order="desc" if args.get("order") == "desc" else "asc",
            page=page,
            per_page=per_page if per_page in PER_PAGE else 100,
        )

    def args(self, **changes: Any) -> dict[str, Any]:
        """The query string of this view with some filters changed (for links)."""
        out = {
            "q": self.q,
            "status": self.status,
            "label": self.label,
            "sort": self.sort,
            "order": self.order,
            "per_page": self.per_page,
            "page": self.page,
        }
        out.update(changes)
        return {k: v for k, v in out.items() if v not in ("", None)}


def _label_matches(labels: dict[str, str], wanted: str) -> bool:
    """``k=v`` (exact value), ``k`` (has the label) or several of them separated by commas."""
    for item in (w.strip() for w in wanted.split(",")):
        if not item:
            continue
        key, eq, value = item.partition("=")
        if key.strip() not in labels or (eq and labels[key.strip()] != value.strip()):
            return False
    return True


def fleet(session: Session, query: Query, now: float | None = None) -> dict[str, Any]:
    """The rows of one overview page, the status counts and the page count."""
    now = now or time.time()
    pending = get_coordinator().pending_seen()
    rows: list[Row] = []
    needle = query.q.lower()
    fleet_size = 0
    for s in session.execute(select(Server).order_by(Server.hostname)).scalars():
        fleet_size += 1
        if needle and needle not in s.hostname and needle not in s.ip_address:
            continue
        labels = s.labels or {}
        if query.label and not _label_matches(labels, query.label):
            continue
        seen = last_seen_of(s, pending)
        rows.append(
            Row(
                s.id,
                s.hostname,
                s.ip_address,
                status_of(seen, s.interval, now),
                s.enabled,
                seen,
                labels,
            )
        )
    counts = dict.fromkeys(STATUSES, 0)
    for r in rows:
        counts[r.status] += 1
    counts["all"] = len(rows)
    if query.status:
        rows = [r for r in rows if r.status == query.status]
    by_metric = query.sort in SPARKS
    if by_metric:  # sorting by a current value needs every row's latest values
        _fill_latest(rows)
    rows = _sorted(rows, query.sort, query.order == "desc")
    total = len(rows)
    pages = max(1, math.ceil(total / query.per_page))
    page = min(query.page, pages)
    shown = rows[(page - 1) * query.per_page : page * query.per_page]
    if not by_metric:
        _fill_latest(shown)
    _fill_sparks(shown, now)
    return {
        "rows": shown,
        "counts": counts,
        "fleet_size": fleet_size,
        "total": total,
        "pages": pages,
        "page": page,
    }


def _sorted(rows: list[Row], sort: str, desc: bool) -> list[Row]:
    """Rows in the chosen order; rows without a value (never seen, no data) come last in
    both directions, and equal values are ordered by host name."""
    if sort == "status":
        return sorted(rows, key=lambda r: (_STATUS_ORDER[r.status], r.hostname), reverse=desc)
    if sort == "hostname":
        return sorted(rows, key=lambda r: r.hostname, reverse=desc)

    def value(r: Row) -> float | None:
        return r.last_seen if sort == "last_seen" else r.now.get(sort)

    with_value = [r for r in rows if value(r) is not None]
    without = [r for r in rows if value(r) is None]
    with_value.sort(key=lambda r: r.hostname)
    with_value.sort(key=lambda r: value(r) or 0.0, reverse=desc)  # stable: names stay in order
    return with_value + sorted(without, key=lambda r: r.hostname)


def _fill_latest(rows: list[Row]) -> None:
    """Each row's newest CPU, memory and (fullest) disk usage."""
    if not rows:
        return
    wanted = {v: k for k, v in SPARKS.items()}
    latest = store().latest([r.id for r in rows])
    for r in rows:
        now: dict[str, float | None] = dict.fromkeys(SPARKS)
        for lv in latest.get(r.id, []):
            column = wanted.get((lv.measurement, lv.field))
            if column is None or not _number(lv.value):
                continue
            cur = now[column]
            if cur is None or float(lv.value) > cur:
                now[column] = float(lv.value)
        r.now = now


def _number(v: Value) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _fill_sparks(rows: list[Row], now: float) -> None:
    """Last-hour sparklines of the rows, in one store query for all of them."""
    if not rows:
        return
    step_ns = SPARK_STEP_S * 1_000_000_000
    end_ns = int(now // SPARK_STEP_S + 1) * step_ns  # the bucket holding now, whole
    start_ns = end_ns - SPARK_RANGE_S * 1_000_000_000
    by_server = store().query_many(
        [r.id for r in rows], list(SPARKS.values()), start_ns, end_ns, step_ns, "mean"
    )
    for r in rows:
        series = by_server.get(r.id, [])
        for column, (meas, fld) in SPARKS.items():
            points = merge_max(s for s in series if s.measurement == meas and s.field == fld)
            r.sparks[column] = spark_path(points, start_ns, end_ns, step_ns)


@bp.get("/")
@login_required
def overview() -> str:
    """Every server: status, last seen, labels, last-hour sparklines; filter, search, sort."""
    query = Query.from_args(request.args)
    data = fleet(db.session(), query)
    template = "_fleet.html" if htmx() else "overview.html"
    alerts = [] if htmx() else alert_states(db.session())  # the fragment has no alert panel
    return render_template(template, query=query, per_page_choices=PER_PAGE, alerts=alerts, **data)
