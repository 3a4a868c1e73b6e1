"""The configuration store: engine, per-request sessions, migrations, health."""

from __future__ import annotations

import inspect as pyinspect
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, current_app, g
from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session, sessionmaker

from .errors import StoreUnavailable, error_response, warn_unavailable

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

log = logging.getLogger("monapi.db")
EXT = "monapi.db"
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# How long a request waits for the configuration store before it is answered 503. SQLite: the
# busy timeout, for a write while another process holds the write lock. PostgreSQL: a new
# connection (unless the URL sets connect_timeout), and every wait for the server's answer
# while a statement runs: a frozen server or a black-holed network would otherwise hold a
# worker thread for ever (neither libpq nor the server bounds that), and then every thread.
SQLITE_BUSY_TIMEOUT_S = 30.0
PG_CONNECT_TIMEOUT_S = 5
PG_ANSWER_TIMEOUT_S = 5.0


def make_engine(url: str, pool_size: int = 10, max_overflow: int = 20) -> Engine:
    """An engine tuned for the backend: WAL and a busy timeout on SQLite, pre-ping, bounded
    waits and a pool of ``pool_size`` (+ ``max_overflow`` at peaks) connections on
    PostgreSQL."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    engine = create_engine(url, pool_pre_ping=True, pool_size=pool_size, max_overflow=max_overflow)
    if engine.dialect.driver == "psycopg":
        bounded = _bounded_connection_class()

        @event.listens_for(engine, "do_connect")
        def _connect(_dialect: Any, _record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
            cparams.setdefault("connect_timeout", PG_CONNECT_TIMEOUT_S)
            return bounded.connect(*cargs, **cparams) if bounded is not None else None

    return engine


@cache
def _bounded_connection_class() -> Any:
    """A psycopg connection whose every wait for the server ends after PG_ANSWER_TIMEOUT_S:
    the connection is then closed (the pool replaces it) and the statement fails with
    OperationalError. None if this psycopg cannot bound its waits (then they are not)."""
    import psycopg

    wait_timeout: type[Exception] | None = getattr(psycopg.errors, "_WaitTimeout", None)
    parameters = pyinspect.signature(psycopg.Connection.wait).parameters
    if wait_timeout is None or "timeout" not in parameters:
        log.warning("psycopg %s cannot bound its waits for the database", psycopg.__version__)
        return None
    timed_out: type[Exception] = wait_timeout

    class BoundedConnection(psycopg.Connection[Any]):
        bounded = True  # False while migrating: a long ALTER TABLE is no fault

        def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
            limit = timeout if timeout is not None or not self.bounded else PG_ANSWER_TIMEOUT_S
            try:
                return super().wait(gen, interval, limit)
            except timed_out:
                if timeout is not None:
                    raise
                self.close()  # mid-statement: never to be used again
                raise psycopg.OperationalError(
                    f"the database did not answer within {limit:g} s"
                ) from None

    return BoundedConnection


class Database:
    """Engine plus session factory, kept in ``app.extensions['monapi.db']``."""

    def __init__(self, url: str, pool_size: int = 10, max_overflow: int = 20) -> None:
        self.url = url
        self.engine = make_engine(url, pool_size, max_overflow)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)
        self.backend = self.engine.dialect.name  # sqlite or postgresql
        # Exceptions that mean "the store did not answer" (503); set by init_app.
        self.unavailable_errors: tuple[type[Exception], ...] = ()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session outside a request (CLI, background threads); commits on success."""
        with self.sessionmaker() as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def alembic_config(self) -> AlembicConfig:
        # Alembic (about 10 MB resident) is imported only to migrate: workers check the schema
        # version with one query and the file names below.
        from alembic.config import Config as AlembicConfig

        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        return cfg

    def upgrade(self) -> None:
        """Bring the schema to the newest migration."""
        from alembic import command

        cfg = self.alembic_config()
        with self.engine.begin() as conn:
            raw = conn.connection.dbapi_connection
            bounded = getattr(raw, "bounded", False)
            try:
                if bounded:
                    raw.bounded = False  # type: ignore[union-attr]
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
            finally:
                if bounded:
                    raw.bounded = True  # type: ignore[union-attr]

    def current_revision(self) -> str | None:
        """The revision in ``alembic_version`` (None before the first migration)."""
        with self.engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        if len(rows) > 1:
            raise StoreUnavailable(f"configuration store: several schema heads {sorted(rows)}")
        return str(rows[0]) if rows else None

    def head_revision(self) -> str | None:
        return head_revision()

    def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers a trivial query."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except (OperationalError, DBAPIError) as exc:
            raise StoreUnavailable(f"configuration store: {exc.orig or exc}") from exc

    def dispose(self) -> None:
        self.engine.dispose()


def init_app(app: Flask, url: str, pool_size: int = 10, max_overflow: int = 20) -> Database:
    """Attach the configuration store; sessions live for one request."""
    db = Database(url, pool_size, max_overflow)
    app.extensions[EXT] = db
    # The database not answering (refused, reset, timed out, locked) is a 503 with Retry-After,
    # never a 500. The driver's own errors too: raw DBAPI connections raise them unwrapped.
    dbapi = db.engine.dialect.loaded_dbapi
    db.unavailable_errors = (
        OperationalError,
        InterfaceError,
        PoolTimeoutError,
        dbapi.OperationalError,
        dbapi.InterfaceError,
    )
    for unavailable in db.unavailable_errors:
        app.register_error_handler(unavailable, _unavailable)

    @app.teardown_appcontext
    def _close(_exc: BaseException | None) -> None:
        s = g.pop("db_session", None)
        if s is not None:
            s.close()

    return db


def store_unavailable(exc: Exception) -> StoreUnavailable:
    """What the API and the dashboard answer when the configuration store did not answer
    (``exc`` is one of ``Database.unavailable_errors``): the driver's words go to the log
    only."""
    warn_unavailable(
        log, "configuration store unavailable: %s", str(getattr(exc, "orig", None) or exc).strip()
    )
    return StoreUnavailable(
        f"the configuration store ({get_db().backend}) is not answering; retry later"
    )


def _unavailable(exc: Exception) -> Response:
    unavailable = store_unavailable(exc)
    return error_response(
        503,
        str(unavailable),
        code="store_unavailable",
        headers={"Retry-After": str(unavailable.retry_after)},
    )


def get_db() -> Database:
    """The configuration store of the current app."""
    db: Database = current_app.extensions[EXT]
    return db


def session() -> Session:
    """The session of the current request."""
    s: Session | None = g.get("db_session")
    if s is None:
        s = get_db().sessionmaker()
        g.db_session = s
    return s


_REVISION_RE = re.compile(
    r"""^(down_revision|revision)\s*(?::[^=]*)?=\s*["']?([\w.-]*)["']?""", re.M
)


@cache
def head_revision() -> str | None:
    """The newest migration: the revision no other migration names as its parent (the
    migrations form one line; tests check this against Alembic's own answer)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        found = dict((k, v) for k, v in _REVISION_RE.findall(path.read_text()))
        if found.get("revision"):
            revisions.add(found["revision"])
        if found.get("down_revision") and found["down_revision"] != "None":
            parents.add(found["down_revision"])
    heads = revisions - parents
    if len(heads) != 1:
        raise RuntimeError(f"migrations do not form one line: heads {sorted(heads)}")
    return heads.pop()
