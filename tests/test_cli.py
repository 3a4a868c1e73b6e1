"""The monapi command line, run in-process against a real data directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from monapi import create_app
from monapi.app import shutdown
from monapi.cli import main
from monapi.db import head_revision

from .conftest import bearer, register_server


@pytest.fixture
def cli(tmp_path: Path) -> tuple[CliRunner, dict[str, str]]:
    env = {"MONAPI_DATA_DIR": str(tmp_path / "d"), "MONAPI_LOG_LEVEL": "WARNING"}
    return CliRunner(), env


def run(cli: tuple[CliRunner, dict[str, str]], *args: str) -> str:
    runner, env = cli
    result = runner.invoke(main, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_db_upgrade_then_tokens_and_listing(
    cli: tuple[CliRunner, dict[str, str]], tmp_path: Path
) -> None:
    head = head_revision()
    assert f"schema at {head}" in run(cli, "db", "upgrade")
    assert f"schema at {head}" in run(cli, "db", "upgrade")  # idempotent
    admin = run(cli, "admin", "create-token", "--name", "ops").strip()
    assert admin.startswith("mka_")
    enroll = run(cli, "enroll", "create", "--expires", "1h", "--max-uses", "2").strip()
    assert enroll.startswith("mke_")
    listing = run(cli, "enroll", "list")
    token_id = enroll.split("_")[1]
    assert token_id in listing and "True" in listing

    app = create_app({"data_dir": tmp_path / "d", "log_level": "WARNING", "TESTING": True})
    client = app.test_client()
    assert client.get("/api/v1/servers", headers=bearer(admin)).status_code == 200
    register_server(client, enroll, "from-cli")
    assert "from-cli" in run(cli, "servers", "list")

    assert f"revoked {token_id}" in run(cli, "enroll", "revoke", token_id)
    resp = client.post(
        "/api/v1/servers",
        headers=bearer(enroll),
        json={"hostname": "late", "ip_address": "192.0.2.5"},
    )
    assert resp.status_code == 401
    shutdown(app)


def test_commands_fail_clearly(cli: tuple[CliRunner, dict[str, str]]) -> None:
    runner, env = cli
    result = runner.invoke(main, ["servers", "list"], env=env)
    assert result.exit_code == 2 and "monapi db upgrade" in result.output
    result = runner.invoke(main, ["db", "upgrade"], env={**env, "MONAPI_RETENTION": "x"})
    assert result.exit_code == 2 and "MONAPI_RETENTION" in result.output
    run(cli, "db", "upgrade")
    result = runner.invoke(main, ["enroll", "create", "--expires", "soon"], env=env)
    assert result.exit_code == 2 and "--expires" in result.output
    result = runner.invoke(main, ["enroll", "revoke", "0123456789abcdef"], env=env)
    assert result.exit_code == 2 and "not found" in result.output


def test_admin_tokens_are_listed_and_revoked_by_id(
    cli: tuple[CliRunner, dict[str, str]], tmp_path: Path
) -> None:
    """`monapi admin list-tokens` shows ids and names, never secrets; `revoke-token ID` stops
    that token at once and leaves the others working; an unknown id fails clearly."""
    run(cli, "db", "upgrade")
    keep = run(cli, "admin", "create-token", "--name", "ops").strip()
    leaked = run(cli, "admin", "create-token", "--name", "laptop").strip()
    listing = run(cli, "admin", "list-tokens")
    for token in (keep, leaked):
        _, token_id, secret = token.split("_", 2)
        assert token_id in listing and secret not in listing
    assert "laptop" in listing and "ops" in listing

    app = create_app({"data_dir": tmp_path / "d", "log_level": "WARNING", "TESTING": True})
    client = app.test_client()
    assert client.get("/api/v1/servers", headers=bearer(leaked)).status_code == 200
    leaked_id = leaked.split("_")[1]
    assert f"revoked {leaked_id}" in run(cli, "admin", "revoke-token", leaked_id)
    assert client.get("/api/v1/servers", headers=bearer(leaked)).status_code == 401
    assert client.get("/api/v1/servers", headers=bearer(keep)).status_code == 200
    shutdown(app)

    runner, env = cli
    result = runner.invoke(main, ["admin", "revoke-token", "0" * 16], env=env)
    assert result.exit_code != 0 and "not found" in result.output
    enroll_id = run(cli, "enroll", "create").strip().split("_")[1]
    result = runner.invoke(main, ["admin", "revoke-token", enroll_id], env=env)
    assert result.exit_code != 0 and "not found" in result.output  # not an admin token
