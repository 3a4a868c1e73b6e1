"""The secrets generated into the data directory on the first start."""

from __future__ import annotations

import multiprocessing
import stat
from pathlib import Path

import pytest

from monapi.app import secret_from_file
from monapi.settings import ConfigError


def _read(path: str) -> bytes:
    return secret_from_file(Path(path))


def test_processes_starting_at_once_all_get_the_one_secret(tmp_path: Path) -> None:
    """Every gunicorn worker builds its app at the same moment on the first start: none may
    read the file half-written (this failed a worker's boot: "shorter than 32 characters")."""
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(8) as pool:
        for i in range(30):
            path = tmp_path / f"secret_{i}"
            values = pool.map(_read, [str(path)] * 16)
            assert len(set(values)) == 1, values
            assert len(values[0]) == 64
            assert path.read_bytes().strip() == values[0]
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"secret_{i}" for i in range(30))


def test_a_short_secret_file_is_refused_with_how_to_fix_it(tmp_path: Path) -> None:
    path = tmp_path / "secret_key"
    path.write_text("short\n")
    with pytest.raises(ConfigError, match="shorter than 32 characters; delete it"):
        secret_from_file(path)
    assert secret_from_file(tmp_path / "new") == secret_from_file(tmp_path / "new")
