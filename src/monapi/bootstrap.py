"""First-start set-up: schema, default fields, a first admin token."""

from __future__ import annotations

from sqlalchemy import func, select, text

from .app import key_pepper
from .auth import ADMIN, KeyService
from .db import Database
from .fields import seed_default_fields
from .models import ApiKey
from .settings import Settings


def initialize(settings: Settings, *, create_admin: bool = True) -> str | None:
    """Migrate; on an empty database also add the default fields and a first admin token.

    Returns the new admin token (to print once), or None when the database was set up before.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    database = Database(settings.resolved_database_url)
    try:
        database.upgrade()
        with database.session() as s:
            done = s.execute(
                text("SELECT 1 FROM state_versions WHERE name = 'bootstrapped'")
            ).first()
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
    finally:
        database.dispose()


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
