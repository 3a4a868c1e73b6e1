"""monapi-agent is its own distribution: it installs into a clean virtualenv without the server's
dependencies and works from there."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

AGENT_DIR = Path(__file__).resolve().parents[1] / "agent"
SERVER_ONLY = {"flask", "werkzeug", "sqlalchemy", "pydantic", "gunicorn", "alembic", "msgspec"}


def test_the_agent_installs_alone_and_runs_without_the_server(tmp_path: Path) -> None:
    # A copy: building a wheel writes build/ and *.egg-info next to the sources.
    source = tmp_path / "agent"
    shutil.copytree(AGENT_DIR, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    install = subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", str(source)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    listed = subprocess.run(
        [str(py), "-m", "pip", "list", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "monapi-agent" in names
    assert {"psutil", "click"} <= names
    assert not names & SERVER_ONLY, names & SERVER_ONLY
    assert "monapi" not in names
    script = env_dir / "bin" / "monapi-agent"
    (tmp_path / "agent.toml").write_text(f'spool_path = "{tmp_path / "spool.db"}"\n')
    version = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=True)
    assert "monapi-agent, version" in version.stdout
    once = subprocess.run(
        [
            str(script),
            "--config",
            str(tmp_path / "agent.toml"),
            "once",
            "--print",
            "--wait",
            "0.2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert once.returncode == 0, once.stderr
    assert {p["measurement"] for p in json.loads(once.stdout)["points"]} >= {"cpu", "mem"}
    # the unit file ships inside the package
    unit = subprocess.run(
        [
            str(script),
            "--config",
            str(tmp_path / "agent.toml"),
            "install-service",
            "--unit-dir",
            str(tmp_path / "units"),
            "--no-enable",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert unit.returncode == 0, unit.stderr
    assert f"ExecStart={script}" in (tmp_path / "units" / "monapi-agent.service").read_text()
    assert sys.executable not in (tmp_path / "units" / "monapi-agent.service").read_text()
