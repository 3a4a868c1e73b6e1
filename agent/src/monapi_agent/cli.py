"""The `monapi-agent` command: register, run, once, status, install-service."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import click

from . import __version__
from .client import AgentError, Client, Outcome, local_address
from .collect import Collector, FieldWant, PsutilSource, default_wants
from .config import (
    ConfigError,
    Settings,
    check_url,
    parse_assignments,
    read_file,
    warn_if_exposed,
    write_file,
)
from .config import load as load_settings
from .runner import Runner
from .spool import Spool, read_status

log = logging.getLogger("monapi_agent")


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"monapi-agent: error: {message}", err=True)
    sys.exit(code)


def _setup_logging(level: str) -> None:
    # Under systemd the journal stamps every line already.
    fmt = "%(levelname)s %(name)s: %(message)s"
    if "JOURNAL_STREAM" not in os.environ:
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr, force=True)


def _settings(ctx: click.Context, *, creates: bool = False, **flags: Any) -> Settings:
    """Settings for a command; a config file named with --config must exist unless the command
    ``creates`` it."""
    obj = ctx.ensure_object(dict)
    overrides = dict(obj.get("set", {}))
    overrides.update({k: v for k, v in flags.items() if v is not None})
    if obj.get("log_level"):
        overrides["log_level"] = obj["log_level"]
    try:
        settings = load_settings(
            obj.get("config"),
            overrides=overrides,
            must_exist=obj.get("config") is not None and not creates,
        )
    except ConfigError as exc:
        _fail(str(exc), 2)
    _setup_logging(settings.log_level)
    return settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="MONAPI_AGENT_CONFIG",
    help="Config file (default /etc/monapi-agent/agent.toml as root,"
    " else ~/.config/monapi-agent/agent.toml).",
)
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="NAME=VALUE",
    help="Override one setting of the config file (repeatable), e.g. --set timeout=5s.",
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None)
@click.version_option(__version__, prog_name="monapi-agent")
@click.pass_context
def main(
    ctx: click.Context, config: Path | None, assignments: tuple[str, ...], log_level: str | None
) -> None:
    """Collect this server's metrics and push them to monapi.

    Settings come from the config file, then MONAPI_AGENT_<NAME> environment variables, then
    flags. Run `monapi-agent register` once, then `monapi-agent run` (or the systemd unit).
    """
    try:
        sets = parse_assignments(assignments)
    except ConfigError as exc:
        _fail(str(exc), 2)
    ctx.obj = {"config": config, "set": sets, "log_level": log_level}


@main.command()
@click.option("--url", required=True, help="The monapi server, e.g. https://monapi.example:8000")
@click.option(
    "--enroll-token",
    required=True,
    envvar="MONAPI_AGENT_ENROLL_TOKEN",
    help="An enrollment token (mke_...) from POST /api/v1/enrollment-tokens.",
)
@click.option("--hostname", help="Name to register (default: this machine's host name).")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="Repeatable.")
@click.option("--ip", "ip_address", help="Address to register (default: the one routing to URL).")
@click.option(
    "--interval",
    type=click.IntRange(1, 86400),
    help="Seconds between samples (default: the server's default); changeable on the server.",
)
@click.option("--force", is_flag=True, help="Register again although the file holds a key.")
@click.pass_context
def register(
    ctx: click.Context,
    url: str,
    enroll_token: str,
    hostname: str | None,
    labels: tuple[str, ...],
    ip_address: str | None,
    interval: int | None,
    force: bool,
) -> None:
    """Register this server and write its key to the config file (mode 0600)."""
    settings = _settings(ctx, creates=True)
    path = settings.config_path
    assert path is not None
    try:
        url = check_url(url)
    except ValueError as exc:
        _fail(f"--url: {exc}", 2)
    label_map: dict[str, str] = {}
    for item in labels:
        k, sep, v = item.partition("=")
        if not sep or not k:
            _fail(f"--label {item!r}: expected key=value", 2)
        label_map[k] = v
    if settings.key and not force:
        _fail(
            f"{path} already holds a key (server {settings.server_id}, {settings.hostname}"
            f" at {settings.url}); use --force to register again",
            1,
        )
    existing: dict[str, Any] = read_file(path) if path.exists() else {}
    name = hostname or settings.hostname or socket.gethostname()
    client = Client(url, timeout=settings.timeout, ca_file=settings.ca_file)
    try:
        address = ip_address or local_address(url)
        reply = client.register(enroll_token, name, address, label_map, interval)
    except AgentError as exc:
        _fail(str(exc))
    existing.update(
        url=url, key=reply["api_key"], hostname=reply["hostname"], server_id=reply["id"]
    )
    try:
        write_file(path, existing)
    except OSError as exc:
        _fail(
            f"registered as server {reply['id']} but cannot write {path}: {exc}. The key is"
            f" shown once: {reply['api_key']}"
        )
    click.echo(
        f"registered {reply['hostname']} as server {reply['id']} at {url}\n"
        f"key written to {path} (mode 0600)\n"
        "next: monapi-agent run   (or: monapi-agent install-service)"
    )


@main.command()
@click.option("--url", help="Override the server URL.")
@click.option("--spool", "spool_path", type=click.Path(dir_okay=False), help="Spool file.")
@click.pass_context
def run(ctx: click.Context, url: str | None, spool_path: str | None) -> None:
    """Collect and push in the foreground until SIGTERM or Ctrl-C."""
    settings = _settings(ctx, url=url, spool_path=spool_path)
    try:
        base, key = settings.require_server()
    except ConfigError as exc:
        _fail(str(exc), 2)
    warn_if_exposed(settings.config_path)
    try:
        spool = Spool(
            settings.spool_path,
            max_bytes=settings.spool_max_bytes,
            max_age=settings.spool_max_age,
        )
    except (OSError, sqlite3.Error) as exc:  # a permission problem, a corrupt file
        _fail(f"cannot open the spool {settings.spool_path}: {exc}")
    client = Client(base, key, timeout=settings.timeout, ca_file=settings.ca_file)
    runner = Runner(
        settings,
        client=client,
        spool=spool,
        collector=Collector(PsutilSource(), filters=settings.filters),
    )
    runner.install_signal_handlers()
    log.info(
        "monapi-agent %s: pushing to %s (server %s), spool %s",
        __version__,
        base,
        settings.server_id,
        settings.spool_path,
    )
    sys.exit(runner.run())


def _cached_wants(settings: Settings) -> list[FieldWant]:
    try:
        status = read_status(settings.spool_path)
    except Exception:  # an unreadable spool only means: no cached configuration
        status = None
    if status:
        cached = status[1].get("config")
        if isinstance(cached, dict) and isinstance(cached.get("config"), dict):
            return [FieldWant.from_config(f) for f in cached["config"].get("fields", [])]
    return default_wants()


@main.command()
@click.option("--print", "print_only", is_flag=True, help="Print the sample; send nothing.")
@click.option(
    "--wait",
    type=click.FloatRange(min=0.1, max=60),
    default=1.0,
    show_default=True,
    help="Seconds between the two readings that give rates and CPU percentages.",
)
@click.pass_context
def once(ctx: click.Context, print_only: bool, wait: float) -> None:
    """Collect one sample; print it (--print) or push it and say what the server answered."""
    settings = _settings(ctx)
    collector = Collector(PsutilSource(), filters=settings.filters)
    collector.set_fields(_cached_wants(settings))
    collector.prime()
    time.sleep(wait)
    points = collector.collect()
    if print_only:
        click.echo(json.dumps({"points": points}, indent=2))
        return
    try:
        base, key = settings.require_server()
    except ConfigError as exc:
        _fail(str(exc), 2)
    reply = Client(base, key, timeout=settings.timeout, ca_file=settings.ca_file).push(points)
    if reply.outcome is not Outcome.OK:
        _fail(f"push failed: HTTP {reply.status}: {reply.message}")
    click.echo(f"pushed {len(points)} points to {base} (HTTP {reply.status})")
    if reply.status == 200:
        click.echo(json.dumps(reply.body, indent=2))


def _when(ts: float | None) -> str:
    if ts is None:
        return "never"
    ago = max(0.0, time.time() - ts)
    stamp = dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")
    return f"{stamp.replace('+00:00', 'Z')} ({ago:.0f}s ago)"


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--offline", is_flag=True, help="Do not contact the server.")
@click.pass_context
def status(ctx: click.Context, as_json: bool, offline: bool) -> None:
    """The server this agent talks to, its last successful push and the spool.

    Exits 1 when the server cannot be reached or refuses the key (unless --offline).
    """
    settings = _settings(ctx)
    try:
        spool = read_status(settings.spool_path)
    except Exception as exc:
        _fail(f"cannot read the spool {settings.spool_path}: {exc}")
    stats, meta = spool if spool else (None, {})
    report: dict[str, Any] = {
        "config_file": str(settings.config_path),
        "url": settings.url,
        "server_id": settings.server_id,
        "hostname": settings.hostname,
        "last_push": meta.get("last_push"),
        "last_push_points": meta.get("last_push_points"),
        "last_error": meta.get("last_error"),
        "spool": {
            "path": str(settings.spool_path),
            "samples": stats.samples if stats else 0,
            "points": stats.points if stats else 0,
            "bytes": stats.bytes if stats else 0,
            "oldest": stats.oldest if stats else None,
        },
    }
    code = 0
    if not offline and settings.url and settings.key:
        reply = Client(
            settings.url, settings.key, timeout=settings.timeout, ca_file=settings.ca_file
        ).agent_config(None)
        ok = reply.outcome is Outcome.OK
        report["check"] = {"ok": ok, "status": reply.status, "message": reply.message}
        code = 0 if ok else 1
    if as_json:
        click.echo(json.dumps(report, indent=2))
        sys.exit(code)
    sp = report["spool"]
    lines = [
        f"server:      {settings.url or '(not registered)'}"
        + (f"  (server {settings.server_id}, {settings.hostname})" if settings.server_id else ""),
        f"config file: {settings.config_path}",
        f"last push:   {_when(meta.get('last_push'))}"
        + (f", {meta['last_push_points']} points" if meta.get("last_push_points") else ""),
    ]
    err = meta.get("last_error")
    if isinstance(err, dict):
        lines.append(
            f"last error:  {_when(err.get('at'))}: HTTP {err.get('status')}: {err.get('message')}"
            if err.get("status")
            else f"last error:  {_when(err.get('at'))}: {err.get('message')}"
        )
    lines.append(
        f"spool:       {sp['samples']} samples, {sp['points']} points, {sp['bytes']} bytes"
        + (f", oldest {_when(sp['oldest'])}" if sp["oldest"] else "")
        + f"  ({sp['path']})"
    )
    if "check" in report:
        chk = report["check"]
        failed = f"HTTP {chk['status']}: {chk['message']}" if chk["status"] else chk["message"]
        lines.append(
            "check:       reachable, key accepted"
            if chk["ok"]
            else f"check:       FAILED: {failed}"
        )
    click.echo("\n".join(lines))
    sys.exit(code)


def unit_text(executable: str, config: Path) -> str:
    """The shipped systemd unit with this installation's command line filled in."""
    from importlib import resources  # only here: it costs the long-running agent memory

    template = resources.files("monapi_agent").joinpath("monapi-agent.service").read_text()
    return template.replace("@EXEC@", executable).replace("@CONFIG@", str(config))


@main.command("install-service")
@click.option(
    "--unit-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/etc/systemd/system"),
    show_default=True,
)
@click.option("--no-enable", is_flag=True, help="Only write the unit file.")
@click.pass_context
def install_service(ctx: click.Context, unit_dir: Path, no_enable: bool) -> None:
    """Write the systemd unit for this installation and enable it (systemctl enable --now)."""
    settings = _settings(ctx, creates=True)
    assert settings.config_path is not None
    # This installation's script (next to its Python), not whichever is first on PATH.
    sibling = Path(sys.executable).with_name("monapi-agent")
    executable = str(sibling) if sibling.exists() else f"{sys.executable} -m monapi_agent"
    unit = unit_dir / "monapi-agent.service"
    try:
        unit_dir.mkdir(parents=True, exist_ok=True)
        unit.write_text(unit_text(executable, settings.config_path.resolve()))
    except OSError as exc:
        _fail(f"cannot write {unit}: {exc} (run as root?)")
    click.echo(f"wrote {unit}")
    if no_enable:
        return
    if shutil.which("systemctl") is None:
        _fail("systemctl not found: start `monapi-agent run` with your service manager")
    for cmd in (["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", unit.name]):
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            _fail(f"{' '.join(cmd)} failed: {done.stderr.strip() or done.stdout.strip()}")
    click.echo("enabled and started monapi-agent.service (journalctl -u monapi-agent -f)")


if __name__ == "__main__":  # pragma: no cover
    main()
