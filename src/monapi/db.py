"""The configuration store: engine, per-request sessions, migrations, health."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app, g
from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from .errors import StoreUnavailable

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

log = logging.getLogger("monapi.db")
EXT = "monapi.db"
MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def make_engine(url: str) -> Engine:
    """An engine tuned for the backend: WAL and a busy timeout on SQLite, pre-ping on PostgreSQL."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


class Database:
    """Engine plus session factory, kept in ``app.extensions['monapi.db']``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)
        self.backend = self.engine.dialect.name  # sqlite or postgresql

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
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

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


def init_app(app: Flask, url: str) -> Database:
    """Attach the configuration store; sessions live for one request."""
    db = Database(url)
    app.extensions[EXT] = db

    @app.teardown_appcontext
    def _close(_exc: BaseException | None) -> None:
        s = g.pop("db_session", None)
        if s is not None:
            s.close()

    return db


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
