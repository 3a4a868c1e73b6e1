"""Deployment files: Dockerfile, docker-compose.yml with .env.example, Cloud Foundry's Procfile,
manifest.yml and runtime.txt, and the systemd units.

No Docker engine runs here: the Dockerfile is parsed, and its CMD and HEALTHCHECK run from this
virtualenv with the image's ENV; docker-compose.yml is checked by Debian's docker-compose
(`config`) and by reading what it prints; the Procfile's web command runs as Cloud Foundry
would start it; the units go through `systemd-analyze verify` and `security`.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.specifiers import SpecifierSet

from monapi.settings import ENV_PREFIX, ConfigError, Settings, load_settings

from .engines import free_port, stop_group

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
GUNICORN_CONF = "python:monapi.gunicorn_conf"
SERVICES = {"monapi", "postgres", "redis", "influxdb", "victoriametrics"}
ENGINES = {"influxdb", "victoriametrics"}
SETTING_NAMES = {ENV_PREFIX + name.upper() for name in Settings.model_fields}


def random_secret() -> str:
    return secrets.token_hex(32)


# Dockerfile -------------------------------------------------------------------------------------
@dataclass
class Instruction:
    keyword: str
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form CMD / ENTRYPOINT / RUN, or None for shell form."""
        if not self.args.startswith("["):
            return None
        value = json.loads(self.args)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), self
        return value


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"no {keyword} in the stage FROM {self.base}"
        return found[-1]

    def env(self) -> dict[str, str]:
        """The stage's ENV values, in order (KEY=VALUE pairs, or the legacy KEY VALUE)."""
        values: dict[str, str] = {}
        for ins in self.all("ENV"):
            words = shlex.split(ins.args)
            if "=" not in words[0]:
                values[words[0]] = ins.args.split(None, 1)[1]
                continue
            for word in words:
                key, sep, value = word.partition("=")
                assert sep, f"line {ins.line}: {word!r} is not KEY=VALUE"
                values[key] = value
        return values


def parse_dockerfile(text: str) -> list[Stage]:
    """Instructions by stage, with continuation lines joined and comments dropped, as Docker's
    parser does (a comment or empty line inside a continuation is skipped)."""
    stages: list[Stage] = []
    current: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not current:
            start = number
        if stripped.endswith("\\"):
            current.append(stripped[:-1].strip())
            continue
        current.append(stripped)
        keyword, _, args = " ".join(current).partition(" ")
        current = []
        ins = Instruction(keyword.upper(), args.strip(), start)
        if ins.keyword == "FROM":
            words = ins.args.split()
            flags = [w for w in words if w.startswith("--")]
            words = [w for w in words if not w.startswith("--")]
            assert not flags, f"line {start}: FROM flags {flags} are not expected here"
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            assert len(words) in (1, 3), f"line {start}: FROM {ins.args!r}"
            stages.append(Stage(words[0], name))
            continue
        assert stages, f"line {start}: {ins.keyword} before the first FROM"
        stages[-1].instructions.append(ins)
    assert not current, "the Dockerfile ends inside a continuation line"
    return stages


@pytest.fixture(scope="module")
def dockerfile() -> list[Stage]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


_READ_CONF = """
import importlib, json
import monapi.gunicorn_conf as conf
module, _, attr = conf.wsgi_app.partition(":")
wsgi = importlib.import_module(module)
gives = attr in ("app", "application") and callable(getattr(wsgi, "__getattr__", None))
print(json.dumps({"wsgi_app": conf.wsgi_app, "graceful_timeout": conf.graceful_timeout,
                  "wsgi_module_gives_app": gives}))
"""


@pytest.fixture(scope="module")
def gunicorn_conf(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Values of monapi.gunicorn_conf, read in a child process: importing it sets
    PROMETHEUS_MULTIPROC_DIR, which must not leak into this test session."""
    env = base_env()
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path_factory.mktemp("metrics"))
    done = subprocess.run(
        [sys.executable, "-c", _READ_CONF],
        env=env,
        cwd=tmp_path_factory.mktemp("conf"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    values = json.loads(done.stdout)
    assert isinstance(values, dict)
    return values


def split_flags(args: str) -> tuple[dict[str, str], str]:
    """``--from=x --chown=y rest`` -> ({"from": "x", "chown": "y"}, "rest")."""
    flags: dict[str, str] = {}
    rest = args
    while rest.startswith("--"):
        word, _, rest = rest.partition(" ")
        key, _, value = word[2:].partition("=")
        flags[key] = value
        rest = rest.strip()
    return flags, rest


def healthcheck(stage: Stage) -> tuple[dict[str, str], list[str]]:
    flags, rest = split_flags(stage.last("HEALTHCHECK").args)
    keyword, _, command = rest.partition(" ")
    assert keyword.upper() == "CMD", f"HEALTHCHECK {rest!r}: expected CMD [...]"
    argv = json.loads(command)
    assert isinstance(argv, list)
    return flags, [str(a) for a in argv]


def test_the_dockerfile_builds_wheels_in_a_first_stage_and_installs_them_in_a_slim_runtime(
    dockerfile: list[Stage],
) -> None:
    assert len(dockerfile) >= 2
    first, last = dockerfile[0], dockerfile[-1]
    for stage in (first, last):
        assert re.fullmatch(r"python:3\.11-slim(-\w+)?", stage.base), stage.base
    assert first.name, "the first stage needs a name for COPY --from"
    builds = " ".join(i.args for i in first.all("RUN"))
    wheel = re.search(r"pip wheel .*--wheel-dir (\S+)", builds)
    assert wheel, builds
    wheel_dir = wheel.group(1)
    assert "[postgresql]" in builds, "the image needs psycopg for PostgreSQL"

    copies = [split_flags(i.args) for i in last.all("COPY")]
    from_first = [rest.split() for flags, rest in copies if flags.get("from") == first.name]
    assert from_first, "the last stage copies nothing from the first"
    (source, target), *_ = from_first
    assert source.rstrip("/") == wheel_dir
    installs = " ".join(i.args for i in last.all("RUN"))
    # Offline from the copied wheels only: the runtime stage fetches nothing.
    assert re.search(rf"pip install --no-index --find-links {re.escape(target)} ", installs)
    assert "monapi[postgresql]" in installs
    assert not last.all("ADD")


def test_the_image_runs_as_an_unprivileged_user(dockerfile: list[Stage]) -> None:
    user = dockerfile[-1].last("USER").args
    name, _, group = user.partition(":")
    assert name not in ("root", "0", ""), user
    assert group not in ("root", "0"), user
    # The data directory is the volume, made for that user (by number, as USER names it).
    last = dockerfile[-1]
    data_dir = last.env()["MONAPI_DATA_DIR"]
    assert data_dir in last.last("VOLUME").args
    runs = " ".join(i.args for i in last.all("RUN"))
    assert re.search(rf"useradd .*--uid {re.escape(name)} .* monapi\b", runs), runs
    assert re.search(rf"groupadd .*--gid {re.escape(group)} monapi\b", runs), runs
    assert f"install -d -o monapi -g monapi -m 0700 {data_dir}" in runs


def test_the_image_command_is_gunicorn_with_monapi_config(
    dockerfile: list[Stage], gunicorn_conf: dict[str, Any]
) -> None:
    last = dockerfile[-1]
    assert not last.all("ENTRYPOINT")
    cmd = last.last("CMD").exec_form()
    assert cmd == ["gunicorn", "-c", GUNICORN_CONF]
    # The config module exists and names monapi's WSGI app, whose module is importable and
    # gives the app (built on first access, in the worker).
    assert gunicorn_conf["wsgi_app"] == "monapi.wsgi:app"
    assert gunicorn_conf["wsgi_module_gives_app"] is True
    bind = last.env()["MONAPI_BIND"]
    assert bind.startswith("0.0.0.0:"), "in a container monapi must listen on every interface"
    assert bind.rpartition(":")[2] in last.last("EXPOSE").args.split()


def test_the_build_context_holds_what_the_dockerfile_copies_and_no_secrets(
    dockerfile: list[Stage],
) -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def excluded(path: str) -> bool:
        # .dockerignore: the last matching pattern decides; "!" lets a path back in. A pattern
        # that matches a directory matches everything under it.
        verdict = False
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        for pattern in patterns:
            negate = pattern.startswith("!")
            pat = pattern.removeprefix("!").rstrip("/")
            pat = pat.replace("**/", "*")
            if any(fnmatch(p, pat) for p in prefixes) or fnmatch(parts[-1], pat):
                verdict = not negate
        return verdict

    sources = []
    for stage in dockerfile:
        for ins in stage.all("COPY"):
            flags, rest = split_flags(ins.args)
            if "from" not in flags:
                sources += rest.split()[:-1]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not excluded(source.rstrip("/")), f"{source} is left out of the build context"
    for path in ("src/monapi/app.py", "src/monapi/migrations/env.py"):
        assert not excluded(path), path
    for path in (".env", ".venv/bin/python", "data/monapi.db", "tests/test_deploy.py", ".git"):
        assert excluded(path), f"{path} would be sent to the Docker daemon"


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 45) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args!r} exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    pytest.fail(f"{url} did not answer 200 within {timeout} s:\n{log.read_text()}")


def base_env() -> dict[str, str]:
    """This environment without MONAPI_* settings, with this virtualenv first on PATH (where
    the image has its Python and gunicorn)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MONAPI_", "PROMETHEUS_"))}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture
def image_env(dockerfile: list[Stage], tmp_path: Path) -> dict[str, str]:
    """The image's ENV, with a temporary data directory and a free loopback port."""
    env = base_env()
    env.update(dockerfile[-1].env())
    env["MONAPI_DATA_DIR"] = str(tmp_path / "data")
    env["MONAPI_BIND"] = f"127.0.0.1:{free_port()}"
    env["MONAPI_WORKERS"] = "1"  # bounded load on shared cores
    env["MONAPI_THREADS"] = "4"
    return env


@pytest.mark.slow
def test_the_image_command_starts_on_an_empty_data_dir_and_its_healthcheck_follows_it(
    dockerfile: list[Stage], image_env: dict[str, str], tmp_path: Path
) -> None:
    last = dockerfile[-1]
    cmd = last.last("CMD").exec_form()
    assert cmd is not None
    flags, check = healthcheck(last)
    assert {"interval", "timeout", "start-period", "retries"} <= set(flags)
    assert check[0] == "python" and "/healthz" in " ".join(check)
    check = [sys.executable, *check[1:]]
    port = image_env["MONAPI_BIND"].rpartition(":")[2]

    log = tmp_path / "gunicorn.log"
    workdir = Path(image_env["MONAPI_DATA_DIR"])
    workdir.mkdir()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(VENV_BIN / cmd[0]), *cmd[1:]],
            cwd=workdir,
            env=image_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/healthz", proc, log)
        healthy = subprocess.run(check, env=image_env, capture_output=True, timeout=30, check=False)
        assert healthy.returncode == 0, healthy.stderr
        # First start on an empty database: migrated, and the first admin token is in the log.
        assert re.search(r"\bmka_\w+", log.read_text()), log.read_text()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
            assert resp.status == 200
    finally:
        stop_group(proc)
    down = subprocess.run(check, env=image_env, capture_output=True, timeout=30, check=False)
    assert down.returncode != 0, "the HEALTHCHECK passed with the server stopped"


# .env.example -----------------------------------------------------------------------------------
_ENV_LINE = re.compile(r"^(#\s?)?([A-Z][A-Z0-9_]*)=(\S*)$")


@dataclass
class EnvExample:
    set: dict[str, str]  # uncommented NAME=VALUE
    commented: dict[str, str]  # "# NAME=VALUE": the value used while it stays commented


def parse_env_example(text: str) -> EnvExample:
    example = EnvExample({}, {})
    for number, line in enumerate(text.splitlines(), 1):
        m = _ENV_LINE.match(line)
        if not m:
            assert not re.match(r"^[A-Z_]+=", line), f"line {number}: {line!r}"
            continue
        name = m.group(2)
        assert name not in example.set and name not in example.commented, f"{name} twice"
        (example.commented if m.group(1) else example.set)[name] = m.group(3)
    return example


@pytest.fixture(scope="module")
def env_example() -> EnvExample:
    return parse_env_example((ROOT / ".env.example").read_text())


def test_env_example_lists_every_setting_once(env_example: EnvExample) -> None:
    named = {n for n in (*env_example.set, *env_example.commented) if n.startswith(ENV_PREFIX)}
    assert named - SETTING_NAMES == set(), "not monapi settings (typos?)"
    assert SETTING_NAMES - named == set(), "settings missing from .env.example"


def test_env_example_needs_its_secrets_filled_before_production_starts(
    env_example: EnvExample, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("MONAPI_SECRET_KEY", "MONAPI_KEY_PEPPER", "POSTGRES_PASSWORD"):
        assert env_example.set[name] == "", f"{name} must be left for the user to fill"
    assert env_example.set["COMPOSE_PROFILES"] == env_example.set["MONAPI_TSDB"]
    assert env_example.set["COMPOSE_PROFILES"] in ENGINES
    for name, value in env_example.set.items():
        if name.startswith(ENV_PREFIX):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("MONAPI_ENV", "production")  # docker-compose.yml's default
    with pytest.raises(ConfigError, match="MONAPI_SECRET_KEY is not set"):
        load_settings()


def test_env_example_values_load_and_the_commented_ones_are_the_defaults(
    env_example: EnvExample, compose_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    compose_env = compose_config["services"]["monapi"]["environment"]
    defaults = Settings.model_fields
    for name, value in env_example.commented.items():
        if not name.startswith(ENV_PREFIX):
            continue
        field_name = name.removeprefix(ENV_PREFIX).lower()
        info = defaults[field_name]
        if compose_env.get(name) is not None:
            # docker-compose.yml sets it: the comment shows that value.
            assert value == str(compose_env[name]), name
        elif value == "":
            assert info.default is None or info.default_factory is not None, (
                f"{name} is shown unset, but its default is {info.default!r}"
            )
        else:
            parsed = getattr(load_settings({field_name: value}), field_name)
            assert parsed == getattr(load_settings(), field_name), (name, value)
    # Everything at once, as a user who uncommented every line and filled the secrets.
    for name, value in {**env_example.commented, **env_example.set}.items():
        if name.startswith(ENV_PREFIX) and value:
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("MONAPI_SECRET_KEY", random_secret())
    monkeypatch.setenv("MONAPI_KEY_PEPPER", random_secret())
    settings = load_settings()
    assert settings.env == "production"
    assert settings.tsdb == env_example.set["MONAPI_TSDB"]


# docker-compose ---------------------------------------------------------------------------------
def docker_compose() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        pytest.fail(
            "docker-compose is not installed: run `make engines` (it runs apt-get install "
            "--no-install-recommends docker-compose; no Docker engine is needed)",
            pytrace=False,
        )
    return found


def compose(workdir: Path, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [docker_compose(), *args],
        cwd=workdir,
        env={**base_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"docker-compose {' '.join(args)}:\n{done.stderr}"
    return done.stdout


def compose_project(tmp: Path, env_file: str | None) -> Path:
    """A copy of the files Compose reads, with ``env_file`` as .env (none if None)."""
    tmp.mkdir()
    for name in ("docker-compose.yml", "Dockerfile", ".dockerignore"):
        shutil.copy(ROOT / name, tmp / name)
    if env_file is not None:
        (tmp / ".env").write_text(env_file)
    return tmp


def filled_env_file(engine: str = "influxdb", **extra: str) -> str:
    """.env.example with the secrets filled in and ``engine`` chosen, as the docs say."""
    text = (ROOT / ".env.example").read_text()
    values = {
        "MONAPI_SECRET_KEY": random_secret(),
        "MONAPI_KEY_PEPPER": random_secret(),
        "POSTGRES_PASSWORD": secrets.token_hex(16),
        "COMPOSE_PROFILES": engine,
        "MONAPI_TSDB": engine,
        **extra,
    }
    for name, value in values.items():
        text, count = re.subn(rf"(?m)^(# )?{name}=\S*$", f"{name}={value}", text)
        assert count == 1, name
    return text


@pytest.fixture(scope="module")
def compose_config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`docker-compose config` of the files as shipped, without a .env."""
    workdir = compose_project(tmp_path_factory.mktemp("compose") / "bare", None)
    config = yaml.safe_load(compose(workdir, "config"))
    assert isinstance(config, dict)
    return config


def test_compose_config_passes_without_env_file_and_with_the_example(tmp_path: Path) -> None:
    bare = compose_project(tmp_path / "bare", None)
    assert compose(bare, "config", "-q") == ""
    example = compose_project(tmp_path / "example", (ROOT / ".env.example").read_text())
    assert compose(example, "config", "-q") == ""
    filled = compose_project(tmp_path / "filled", filled_env_file())
    assert compose(filled, "config", "-q") == ""
    services = set(compose(filled, "config", "--services").split())
    assert services == SERVICES
    volumes = set(compose(filled, "config", "--volumes").split())
    assert volumes == {f"{s}-data" for s in SERVICES}


def test_compose_services_have_volumes_and_healthchecks(
    compose_config: dict[str, Any], dockerfile: list[Stage], gunicorn_conf: dict[str, Any]
) -> None:
    services = compose_config["services"]
    assert set(services) == SERVICES
    images = {name: s.get("image") for name, s in services.items()}
    assert images["postgres"] == "postgres:16"
    assert images["redis"] == "redis:7"
    assert images["influxdb"] == "influxdb:1.8"
    assert re.fullmatch(r"victoriametrics/victoria-metrics:v1\.\d+\.\d+", images["victoriametrics"])
    assert services["monapi"]["build"]["context"]
    mounts = {
        name: {v.split(":")[0]: v.split(":")[1] for v in s.get("volumes", [])}
        for name, s in services.items()
    }
    assert mounts["monapi"] == {"monapi-data": dockerfile[-1].env()["MONAPI_DATA_DIR"]}
    assert mounts["postgres"] == {"postgres-data": "/var/lib/postgresql/data"}
    assert mounts["redis"] == {"redis-data": "/data"}
    assert mounts["influxdb"] == {"influxdb-data": "/var/lib/influxdb"}
    vm_path = next(
        a.split("=", 1)[1]
        for a in services["victoriametrics"]["command"]
        if a.startswith("-storageDataPath=")
    )
    assert mounts["victoriametrics"] == {"victoriametrics-data": vm_path}
    assert set(compose_config["volumes"]) == {f"{s}-data" for s in SERVICES}
    # Compose waits longer than gunicorn lets requests finish after SIGTERM.
    grace = re.fullmatch(r"(\d+)s", services["monapi"]["stop_grace_period"])
    assert grace and int(grace.group(1)) > gunicorn_conf["graceful_timeout"]
    for name, service in services.items():
        assert service.get("restart") == "unless-stopped", name
        if name == "monapi":
            # The image's HEALTHCHECK applies; the Dockerfile tests run it.
            assert "healthcheck" not in service
            continue
        test = service["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL"), name
    checks = {
        name: " ".join(s["healthcheck"]["test"]) for name, s in services.items() if name != "monapi"
    }
    assert "pg_isready" in checks["postgres"]
    assert "ping" in checks["redis"] and "PONG" in checks["redis"]
    assert "127.0.0.1:8086/ping" in checks["influxdb"]
    assert "127.0.0.1:8428/health" in checks["victoriametrics"]


def active_services(config: dict[str, Any], profiles: set[str]) -> set[str]:
    """What `docker compose up` starts with these profiles: services without a profile, and
    those with one of them. (docker-compose 1.29's `config --services` lists every service.)"""
    return {
        name
        for name, s in config["services"].items()
        if not s.get("profiles") or profiles & set(s["profiles"])
    }


def test_compose_profiles_swap_influxdb_for_victoriametrics(
    compose_config: dict[str, Any], tmp_path: Path
) -> None:
    services = compose_config["services"]
    for engine in ENGINES:
        assert services[engine]["profiles"] == [engine]
        active = active_services(compose_config, {engine})
        assert active == {"monapi", "postgres", "redis", engine}
        # monapi waits only for services every profile starts (depending on an engine would
        # make `up` refuse the other profile), and for them to be healthy.
        for dep, how in services["monapi"]["depends_on"].items():
            assert dep in active and how == {"condition": "service_healthy"}, dep
            assert "healthcheck" in services[dep]
    for engine in ENGINES:
        workdir = compose_project(tmp_path / engine, filled_env_file(engine))
        config = yaml.safe_load(compose(workdir, "config"))
        assert config["services"]["monapi"]["environment"]["MONAPI_TSDB"] == engine


def test_compose_points_monapi_at_the_services_by_name(tmp_path: Path) -> None:
    password = secrets.token_hex(16)
    workdir = compose_project(
        tmp_path / "p", filled_env_file("influxdb", POSTGRES_PASSWORD=password)
    )
    config = yaml.safe_load(compose(workdir, "config"))
    services = config["services"]
    env = services["monapi"]["environment"]
    assert env["MONAPI_ENV"] == "production"

    db = urlsplit(env["MONAPI_DATABASE_URL"])
    pg_env = services["postgres"]["environment"]
    assert db.scheme == "postgresql" and db.hostname == "postgres" and db.port == 5432
    assert db.username == pg_env["POSTGRES_USER"] and db.path == "/" + pg_env["POSTGRES_DB"]
    assert db.password is None, "the password goes through PGPASSWORD, not the URL"
    assert env["PGPASSWORD"] == pg_env["POSTGRES_PASSWORD"] == password

    redis = urlsplit(env["MONAPI_REDIS_URL"])
    assert (redis.scheme, redis.hostname, redis.port) == ("redis", "redis", 6379)
    influx = urlsplit(env["MONAPI_INFLUXDB_URL"])
    assert (influx.hostname, influx.port) == ("influxdb", 8086)
    vm = urlsplit(env["MONAPI_VICTORIAMETRICS_URL"])
    vm_listen = next(
        a for a in services["victoriametrics"]["command"] if a.startswith("-httpListenAddr=")
    )
    assert vm.hostname == "victoriametrics" and vm_listen.endswith(f":{vm.port}")

    bind_port = env["MONAPI_BIND"].rpartition(":")[2]
    (published,) = services["monapi"]["ports"]
    assert published == f"127.0.0.1:8000:{bind_port}/tcp"
    assert env["MONAPI_DATA_DIR"] == "/var/lib/monapi"

    # What the container gets is a valid production configuration.
    given = {k.removeprefix(ENV_PREFIX).lower(): v for k, v in env.items() if k in SETTING_NAMES}
    given = {k: v for k, v in given.items() if v is not None}
    settings = load_settings(given)
    assert settings.env == "production" and settings.tsdb == "influxdb"


def test_compose_passes_every_other_setting_from_env_file(
    compose_config: dict[str, Any], tmp_path: Path
) -> None:
    env = compose_config["services"]["monapi"]["environment"]
    assert set(env) >= SETTING_NAMES, "settings docker-compose.yml does not pass to monapi"
    workdir = compose_project(
        tmp_path / "p",
        filled_env_file(
            MONAPI_RETENTION="7d", MONAPI_METRICS_TOKEN="t" * 40, PUBLISH_ADDRESS="0.0.0.0:8080"
        ),
    )
    config = yaml.safe_load(compose(workdir, "config"))
    env = config["services"]["monapi"]["environment"]
    assert env["MONAPI_RETENTION"] == "7d"
    assert env["MONAPI_METRICS_TOKEN"] == "t" * 40
    assert env["MONAPI_UNKNOWN_FIELDS"] is None  # commented in .env: monapi's default applies
    assert config["services"]["monapi"]["ports"] == ["0.0.0.0:8080:8000/tcp"]


# Cloud Foundry ----------------------------------------------------------------------------------
def procfile() -> dict[str, str]:
    processes = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, command = line.partition(":")
            assert sep, line
            processes[name.strip()] = command.strip()
    return processes


def manifest_app() -> dict[str, Any]:
    manifest = yaml.safe_load((ROOT / "manifest.yml").read_text())
    (app,) = manifest["applications"]
    assert isinstance(app, dict)
    return app


def test_procfile_web_runs_gunicorn_with_monapi_config_on_cloud_foundrys_port() -> None:
    processes = procfile()
    assert set(processes) == {"web"}
    assert shlex.split(processes["web"]) == [
        "gunicorn",
        "-c",
        GUNICORN_CONF,
        "--bind",
        "0.0.0.0:$PORT",
    ]


def test_manifest_checks_healthz_and_sets_valid_production_settings() -> None:
    app = manifest_app()
    assert app["name"] == "monapi"
    assert app["buildpacks"] == ["python_buildpack"]
    assert app["health-check-type"] == "http"
    assert app["health-check-http-endpoint"] == "/healthz"
    assert int(app["instances"]) >= 1 and re.fullmatch(r"\d+[MG]", app["memory"])
    env = {k: str(v) for k, v in app["env"].items()}
    assert set(env) <= SETTING_NAMES
    assert env["MONAPI_ENV"] == "production"
    # The cores a container sees are the host's: the default worker count would not fit.
    assert int(env["MONAPI_WORKERS"]) <= 4
    given = {k.removeprefix(ENV_PREFIX).lower(): v for k, v in env.items()}
    # As after `cf set-env` of the two secrets.
    given.update(secret_key=random_secret(), key_pepper=random_secret())
    load_settings(given)


def test_runtime_txt_names_a_python_pyproject_accepts_and_requirements_install_monapi() -> None:
    runtime = (ROOT / "runtime.txt").read_text().strip()
    m = re.fullmatch(r"python-(3)\.(11)\.(x|\d+)", runtime)
    assert m, runtime
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert SpecifierSet(pyproject["project"]["requires-python"]).contains("3.11.0")
    assert sys.version_info[:2] == (3, 11), "the tests run on the Python the deployments use"
    lines = [
        line.strip()
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines == [".[postgresql]"]
    assert "postgresql" in pyproject["project"]["optional-dependencies"]


@pytest.mark.slow
def test_procfile_web_command_serves_healthz_on_port(tmp_path: Path) -> None:
    port = free_port()
    env = base_env()
    env.update({k: str(v) for k, v in manifest_app()["env"].items()})
    env.update(
        PORT=str(port),
        MONAPI_SECRET_KEY=random_secret(),
        MONAPI_KEY_PEPPER=random_secret(),
        MONAPI_DATA_DIR=str(tmp_path / "data"),
        MONAPI_WORKERS="1",
    )
    log = tmp_path / "web.log"
    with log.open("wb") as out:
        # The buildpack runs the command with a shell, which expands $PORT.
        proc = subprocess.Popen(
            ["sh", "-c", procfile()["web"]],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/healthz", proc, log)
        assert f"0.0.0.0:{port}" in log.read_text()
    finally:
        stop_group(proc)


# systemd ----------------------------------------------------------------------------------------
def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail("systemd-analyze is not installed: apt-get install systemd", pytrace=False)
    return found


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections of a unit file, each key with every value it was given, in order."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, line
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def server_unit() -> dict[str, list[str]]:
    return parse_unit((ROOT / "deploy/systemd/monapi.service").read_text())["Service"]


def verifiable_copy(unit: Path, tmp_path: Path, **replace: str) -> Path:
    text = unit.read_text()
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    copy = tmp_path / unit.name
    copy.write_text(text)
    return copy


def test_the_server_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify wants ExecStart's program to exist: this virtualenv's gunicorn stands in for
    # /opt/monapi's.
    unit = verifiable_copy(
        ROOT / "deploy/systemd/monapi.service",
        tmp_path,
        **{"/opt/monapi/bin/gunicorn": str(VENV_BIN / "gunicorn")},
    )
    done = subprocess.run(
        [systemd_analyze(), "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "monapi.service" not in done.stderr, done.stderr


def test_the_server_unit_runs_the_image_command_as_monapi_in_a_sandbox(
    server_unit: dict[str, list[str]], dockerfile: list[Stage]
) -> None:
    def one(key: str) -> str:
        (value,) = server_unit[key]
        return value

    exec_start = shlex.split(one("ExecStart"))
    assert exec_start[0] == "/opt/monapi/bin/gunicorn"
    assert exec_start[1:] == (dockerfile[-1].last("CMD").exec_form() or [])[1:]
    assert one("User") == one("Group") == "monapi"
    environment = dict(w.split("=", 1) for v in server_unit["Environment"] for w in shlex.split(v))
    assert set(environment) <= SETTING_NAMES
    assert environment["MONAPI_DATA_DIR"] == "/var/lib/" + one("StateDirectory")
    assert one("WorkingDirectory") == environment["MONAPI_DATA_DIR"]
    assert one("EnvironmentFile") == "/etc/monapi/monapi.env"  # required: no leading "-"
    assert one("Type") == "notify"  # gunicorn's master sends READY=1
    hardening = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictSUIDSGID": "yes",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "CapabilityBoundingSet": "",
        "UMask": "0077",
        "StateDirectoryMode": "0700",
    }
    assert {k: one(k) for k in hardening} == hardening
    assert one("RestrictAddressFamilies").split() == ["AF_UNIX", "AF_INET", "AF_INET6"]


def exposure(unit: Path) -> float:
    done = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert m, done.stdout + done.stderr
    return float(m.group(1))


def test_systemd_rates_both_units_well_sandboxed(tmp_path: Path) -> None:
    server = verifiable_copy(
        ROOT / "deploy/systemd/monapi.service",
        tmp_path,
        **{"/opt/monapi/bin/gunicorn": str(VENV_BIN / "gunicorn")},
    )
    # systemd-analyze security: 0 is fully sandboxed, 10 not at all; "OK" is below 5.
    assert exposure(server) <= 2.0
    agent = verifiable_copy(
        ROOT / "agent/src/monapi_agent/monapi-agent.service",
        tmp_path,
        **{"@EXEC@": str(VENV_BIN / "monapi-agent"), "@CONFIG@": str(tmp_path / "agent.toml")},
    )
    # The agent runs as root (every mount's usage), with only CAP_DAC_READ_SEARCH left.
    assert exposure(agent) <= 4.5
    agent_service = parse_unit(agent.read_text())["Service"]
    assert agent_service["CapabilityBoundingSet"] == ["CAP_DAC_READ_SEARCH"]
    assert agent_service["ProtectSystem"] == ["strict"]
