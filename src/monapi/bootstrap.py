"""First-start set-up: schema, default fields, a first admin token."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import func, select, text

from .app import key_pepper
from .auth import ADMIN, KeyService
from .db import Database
from .fields import seed_default_fields
from .models import ApiKey
from .settings import Settings

# pg_advisory_lock key of the set-up: "monapi" in ASCII.
SETUP_LOCK = 0x6D6F6E617069


@contextmanager
def _one_at_a_time(database: Database) -> Iterator[None]:
    """On PostgreSQL, one set-up at a time per database: instances that start together (a
    Compose scale, a rolling restart) would otherwise each create the tables, and all but one
    fail. The lock is the session's: a process that dies releases it."""
    if database.backend != "postgresql":
        yield
        return
    with database.engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        bounded = getattr(raw, "bounded", False)
        if bounded:  # waiting for another instance's migration may take longer than an answer
            raw.bounded = False  # type: ignore[union-attr]
        try:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": SETUP_LOCK})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": SETUP_LOCK})
                conn.commit()
        finally:
            if bounded:
                raw.bounded = True  # type: ignore[union-attr]


def initialize(settings: Settings, *, create_admin: bool = True) -> str | None:
    """Migrate; on an empty database also add the default fields and a first admin token.

    Returns the new admin token (to print once), or None when the database was set up before.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    database = Database(settings.resolved_database_url)
    try:
        with _one_at_a_time(database):
            return _initialize(database, settings, create_admin)
    finally:
        database.dispose()


def _initialize(database: Database, settings: Settings, create_admin: bool) -> str | None:
    """Migrate and seed (the lock held)."""
    database.upgrade()
    with database.session() as s:
        done = s.execute(text("SELECT 1 FROM state_versions WHERE name = 'bootstrapped'")).first()
        if done is not None:
            return None
        # First start: remember it, so that deleting every field later is not undone.
        s.execute(text("INSERT INTO state_versions (name, version) VALUES ('bootstrapped', 1)"))
        seed_default_fields(s)
        has_admin = s.execute(
            select(func.count()).select_from(ApiKey).where(ApiKey.kind == ADMIN)
        ).scalar_one()
        if not create_admin or has_admin:
            return None
        new = KeyService(key_pepper(settings)).generate(ADMIN)
        s.add(ApiKey(id=new.id, kind=ADMIN, digest=new.digest, name="first admin token"))
        s.execute(text("UPDATE state_versions SET version = version + 1 WHERE name = 'keys'"))
        return new.plaintext


def first_start_message(token: str, url: str) -> str:
    """What to print once when :func:`initialize` made the first admin token."""
    return (
        "\nFirst start: created the schema, the default fields and an admin token.\n"
        "Admin token (shown only this once; keep it safe):\n\n"
        f"    {token}\n\n"
        "Use it like this:\n"
        f"    export MONAPI_TOKEN={token}\n"
        f'    curl -H "Authorization: Bearer $MONAPI_TOKEN" {url}/api/v1/servers\n'
    )
