"""The generated reference documents (monapi.docgen): committed copies are current, every setting
and operation is in them, values read as people write them, and --check says what is stale."""

from __future__ import annotations

import difflib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel, Field, SecretStr

from monapi import docgen
from monapi.settings import ENV_PREFIX, Duration, RateLimit, Settings

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
FILES = (docgen.CONFIGURATION_MD, docgen.API_MD, docgen.OPENAPI_JSON)


@pytest.fixture(scope="module")
def generated() -> dict[str, str]:
    """What the generator makes from the code as it is now."""
    return docgen.generate()


def _env_without_monapi() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}


def _docgen(
    *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monapi.docgen", *args],
        check=False,
        cwd=cwd,
        env=env if env is not None else _env_without_monapi(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_committed_documents_are_what_the_code_generates(generated: dict[str, str]) -> None:
    assert sorted(generated) == sorted(FILES)
    for name, content in generated.items():
        path = DOCS / name
        assert path.is_file(), f"docs/{name} is missing: run `make docs` and commit it"
        committed = path.read_text(encoding="utf-8")
        if committed != content:
            diff = "".join(
                list(
                    difflib.unified_diff(
                        committed.splitlines(keepends=True),
                        content.splitlines(keepends=True),
                        f"docs/{name} (committed)",
                        f"docs/{name} (generated now)",
                    )
                )[:60]
            )
            pytest.fail(
                f"docs/{name} is out of date with the code: run `make docs` "
                f"(python -m monapi.docgen) and commit the result.\n{diff}"
            )


def test_every_setting_is_in_exactly_one_section() -> None:
    assert docgen.check_sections() == []


def test_a_setting_left_out_of_the_sections_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    title, intro, names = docgen.SECTIONS[0]
    monkeypatch.setattr(docgen, "SECTIONS", ((title, intro, names[1:]), *docgen.SECTIONS[1:]))
    problems = docgen.check_sections()
    assert len(problems) == 1
    assert "no section" in problems[0] and names[0] in problems[0]
    with pytest.raises(ValueError, match=names[0]):
        docgen.configuration_md()


def test_every_setting_has_a_row_in_the_configuration_reference(
    generated: dict[str, str],
) -> None:
    text = generated[docgen.CONFIGURATION_MD]
    rows = {
        line.split(" | ")[0].strip("| `"): line
        for line in text.splitlines()
        if line.startswith("| `")
    }
    for name, info in Settings.model_fields.items():
        env = f"{ENV_PREFIX}{name.upper()}"
        assert env in rows, f"{env} has no row in docs/configuration.md"
        row = rows[env]
        assert docgen.render_default(name, info) in row
        is_secret = "SecretStr" in str(info.annotation)
        assert ("**secret**" in row) == is_secret, row
    assert "| `PROMETHEUS_MULTIPROC_DIR` |" in text
    assert "## Durations" in text and "## Rates" in text


def test_every_operation_and_schema_is_in_the_api_reference(generated: dict[str, str]) -> None:
    text = generated[docgen.API_MD]
    spec = json.loads(generated[docgen.OPENAPI_JSON])
    assert spec["paths"], "the OpenAPI document has no paths"
    count = 0
    for method, path, _ in docgen.operations(spec):
        count += 1
        assert f"### `{method.upper()} {path}`" in text, f"{method.upper()} {path} is missing"
        assert f'<a id="{docgen._op_anchor(method, path)}"></a>' in text
    assert count == sum(1 for item in spec["paths"].values() for m in item if m in docgen._METHODS)
    for name in spec["components"]["schemas"]:
        assert f"\n### {name}\n" in text, f"schema {name} is missing"


def _who_may_call(text: str, heading: str) -> str:
    section = text.split(f"### `{heading}`\n", 1)[1]
    return section.split("**Who may call:** ", 1)[1].split("\n", 1)[0]


def test_the_api_reference_says_which_keys_an_operation_takes(generated: dict[str, str]) -> None:
    text = generated[docgen.API_MD]
    assert _who_may_call(text, "POST /api/v1/data").startswith("server key, sent as ")
    assert _who_may_call(text, "POST /api/v1/servers").startswith(
        "admin token or enrollment token, sent as "
    )
    assert _who_may_call(text, "GET /api/v1/servers/{server_id}").startswith(
        "admin token or server key, "
    )
    assert _who_may_call(text, "GET /api/v1/fields").startswith("admin token, ")
    assert _who_may_call(text, "GET /healthz") == "anyone; no API key needed."
    assert "the query parameter `p`" in _who_may_call(text, "POST /write")


def test_links_in_the_generated_markdown_lead_somewhere(generated: dict[str, str]) -> None:
    for name in (docgen.CONFIGURATION_MD, docgen.API_MD):
        text = generated[name]
        targets = set(re.findall(r'<a id="([^"]+)"></a>', text))
        targets |= {docgen._anchor(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}
        links = set(re.findall(r"\]\(#([^)]+)\)", text))
        assert links, name
        assert links <= targets, f"{name}: links without a target: {sorted(links - targets)}"
    assert "](openapi.json)" in generated[docgen.API_MD]


def test_the_api_reference_shows_request_bodies_and_nested_objects(
    generated: dict[str, str],
) -> None:
    text = generated[docgen.API_MD]
    data = text.split("### `POST /api/v1/data`\n", 1)[1].split("\n### ", 1)[0]
    assert "Fields of `points[]`, no others:" in data
    assert "| `points[].fields` | object of number or boolean or string | yes |" in data
    create = text.split("### `POST /api/v1/servers`\n", 1)[1].split("\n### ", 1)[0]
    assert "`application/json`: [ServerCreate](#schema-servercreate)" in create
    assert "| 201 | Created | [ServerCreated](#schema-servercreated) |" in create
    listing = text.split("### `GET /api/v1/servers`\n", 1)[1].split("\n### ", 1)[0]
    assert "| `per_page` | integer | no | 1 to 100; default `20` |" in listing


class _Example(BaseModel):
    pause: Duration = Field(90, description="a pause")
    window: Duration = Field(2592000.0, description="a window")
    limit: RateLimit = Field("0", description="a limit")  # type: ignore[assignment]
    cache_bytes: int = Field(3 << 30, description="a size")
    odd_bytes: int = Field(1000, description="a size no binary unit divides")
    computed: int = Field(default_factory=lambda: 4, description="how many")
    cores: int = Field(default_factory=lambda: 4, description="workers; default one per core")
    hook: str | None = Field(None, description="a hook; default none: nothing runs")
    target: str | None = Field(None, description="a target; default the first one")
    token: SecretStr | None = Field(None, description="a token")


def test_default_renderer_writes_values_as_people_do() -> None:
    assert docgen.human_duration(2592000.0) == "30d"
    assert docgen.human_duration(3600) == "1h"
    assert docgen.human_duration(600) == "10m"
    assert docgen.human_duration(5) == "5s"
    assert docgen.human_duration(90) == "90s"
    assert docgen.human_duration(129600) == "36h"
    assert docgen.human_duration(0.25) == "250ms"
    assert docgen.human_duration(0) == "0s"
    assert docgen.human_size(10 * 1024 * 1024) == "10 MiB"
    assert docgen.human_size(1024) == "1 KiB"
    assert docgen.human_size(3 << 30) == "3 GiB"
    assert docgen.human_size(1000) == "1000 bytes"

    fields = _Example.model_fields
    rendered = {name: docgen.render_default(name, info) for name, info in fields.items()}
    assert rendered == {
        "pause": "`90s`",
        "window": "`30d`",
        "limit": "`0 (no limit)`",
        "cache_bytes": "3 GiB (`3221225472`)",
        "odd_bytes": "1000 bytes (`1000`)",
        "computed": "computed at start-up",
        "cores": "one per core",
        "hook": "unset: nothing runs",
        "target": "unset: the first one",
        "token": "unset",
    }
    assert docgen.render_description(fields["hook"]) == "a hook"
    assert docgen.render_accepts("token", fields["token"]) == "text, **secret**"


def test_default_renderer_on_the_real_settings() -> None:
    fields = Settings.model_fields
    expected = {
        "retention": "`30d`",
        "retention_check_interval": "`1h`",
        "timestamp_max_future": "`10m`",
        "last_seen_flush": "`5s`",
        "max_body_bytes": "10 MiB (`10485760`)",
        "rate_limit_server": "`600/minute`",
        "cookie_secure": "`true`",
        "workers": "the number of cores",
        "tsdb": "`sqlite`",
        "influxdb_username": "unset",
    }
    for name, want in expected.items():
        assert docgen.render_default(name, fields[name]) == want, name
    assert docgen.render_accepts("tsdb_pool_size", fields["tsdb_pool_size"]) == "integer, 1 to 1024"
    assert docgen.render_accepts("retention", fields["retention"]) == "[duration](#durations)"


def test_check_mode_fails_on_stale_files_and_passes_on_fresh_ones(tmp_path: Path) -> None:
    out = tmp_path / "docs"
    missing = _docgen("--check", "--out-dir", str(out))
    assert missing.returncode == 1, missing.stderr
    for name in FILES:
        assert name in missing.stderr
    assert "make docs" in missing.stderr
    assert not out.exists(), "--check must write nothing"

    written = _docgen("--out-dir", str(out))
    assert written.returncode == 0, written.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)

    # MONAPI_* variables of the shell change nothing: the app is built on defaults, in a
    # temporary directory (a log file set here would be created otherwise).
    env = {
        **_env_without_monapi(),
        "MONAPI_METRICS_ENABLED": "false",
        "MONAPI_LOG_FILE": str(tmp_path / "docgen.log"),
    }
    fresh = _docgen("--check", "--out-dir", str(out), env=env)
    assert fresh.returncode == 0, fresh.stderr
    assert fresh.stderr == ""
    assert not (tmp_path / "docgen.log").exists()

    api = out / docgen.API_MD
    api.write_text(api.read_text(encoding="utf-8") + "edited by hand\n", encoding="utf-8")
    stale = _docgen("--check", "--out-dir", str(out))
    assert stale.returncode == 1
    assert docgen.API_MD in stale.stderr
    assert docgen.CONFIGURATION_MD not in stale.stderr
    assert docgen.OPENAPI_JSON not in stale.stderr


def test_without_out_dir_it_refuses_to_run_outside_the_repository(tmp_path: Path) -> None:
    result = _docgen("--check", cwd=tmp_path)
    assert result.returncode == 2
    assert "no docs/ directory here" in result.stderr
    assert not (tmp_path / "docs").exists()


def test_schema_words_for_tuples_maps_and_markdown_text() -> None:
    pair = {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "number"}]}
    assert docgen.schema_type(
        {"type": "array", "items": {**pair, "minItems": 2, "maxItems": 2}}
    ) == ("array of [integer, number]")
    assert docgen.schema_constraints({**pair, "minItems": 2, "maxItems": 2}) == []
    labels = {"type": "object", "additionalProperties": {"type": "string", "maxLength": 8}}
    assert docgen.schema_type(labels) == "object of string"
    assert docgen.schema_constraints(labels) == ["values: at most 8 characters"]
    nullable = {"anyOf": [{"$ref": "#/components/schemas/Agent"}, {"type": "null"}]}
    assert docgen.schema_type(nullable) == "[Agent](#schema-agent) or null"
    # A <key> outside a code span would be an HTML tag to a Markdown renderer, and vanish.
    assert docgen._words("send <key>\n as `Bearer <key>`<br/>now") == (
        "send &lt;key> as `Bearer <key>` now"
    )
    assert docgen._cell("a|b") == "a\\|b"
