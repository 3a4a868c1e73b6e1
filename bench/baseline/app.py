"""BASELINE: a naive reference of the founding design, not monapi.

``bench/agents.py`` measures monapi against this app (issue 7: monapi must reach at least 3
times its requests/s). It is kept deliberately close to the founding articles' code: one Flask
module, a SQLite ``config.db`` opened with ``sqlite3.connect(path)`` on every request to look up
the key, ``request.get_json()``, the point turned into InfluxDB line protocol by string
formatting, and one ``requests.post`` to InfluxDB's ``/write`` per request (no session, so a new
TCP connection per request). It runs as ``gunicorn -w 4`` (sync workers, the default class),
exactly the founding Procfile's ``gunicorn run:app --workers 4``; sync workers answer with
``Connection: close``, so every agent request is a new connection to the app as well.

The key comes as ``X-API-Key`` (the founding design) or as ``Authorization: Bearer <key>``, which
is what ``bench/agent.lua`` sends to monapi: all three targets of the benchmark get byte for byte
the same requests. Not for production: no validation besides "is JSON with points", no
escaping of line-protocol special characters, no limits.

Settings (environment): ``BASELINE_DB`` (the SQLite file, table ``servers``; the benchmark fills
it with the same key strings as monapi's servers), ``BASELINE_INFLUX_URL`` and
``BASELINE_INFLUX_DB``.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any

import requests
from flask import Flask, Response, jsonify, request

CONFIG_DB_PATH = os.environ.get("BASELINE_DB", "config.db")
INFLUX_URL = os.environ.get("BASELINE_INFLUX_URL", "http://127.0.0.1:8086")
INFLUX_DB = os.environ.get("BASELINE_INFLUX_DB", "monitoring")

SCHEMA = """
CREATE TABLE IF NOT EXISTS servers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    hostname TEXT NOT NULL,
    ip_address TEXT NOT NULL,
    api_key TEXT NOT NULL UNIQUE
)
"""

app = Flask(__name__)


def db_get_server(api_key: str) -> tuple[int, str] | None:
    """The server of this key: a new SQLite connection per call, as in the founding design."""
    conn = sqlite3.connect(CONFIG_DB_PATH)
    try:
        cursor = conn.cursor()
        cursor.execute("SELECT id, hostname FROM servers WHERE api_key = ?", (api_key,))
        row = cursor.fetchone()
        return (int(row[0]), str(row[1])) if row else None
    finally:
        conn.close()


def to_ns(ts: float | int | None) -> int | None:
    """Epoch seconds, ms, us or ns to ns (told apart by size), like the agent sends them."""
    if ts is None:
        return None
    if ts < 1e11:
        return int(ts * 1_000_000_000)
    if ts < 1e14:
        return int(ts * 1_000_000)
    if ts < 1e17:
        return int(ts * 1_000)
    return int(ts)


def to_line(point: dict[str, Any], hostname: str, server_id: int) -> str:
    tags = {"host": hostname, "server_id": str(server_id), **(point.get("tags") or {})}
    tag_text = ",".join(f"{k}={v}" for k, v in sorted(tags.items()))
    fields = ",".join(f"{k}={float(v)}" for k, v in point["fields"].items())
    line = f"{point['measurement']},{tag_text} {fields}"
    ts = to_ns(point.get("timestamp"))
    return line if ts is None else f"{line} {ts}"


@app.route("/api/v1/data", methods=["POST"])
def submit_data() -> Response | tuple[Response, int]:
    api_key = request.headers.get("X-API-Key")
    if not api_key:
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            api_key = auth[len("Bearer ") :].strip()
    if not api_key:
        return jsonify({"error": "API key required"}), 401
    server = db_get_server(api_key)
    if server is None:
        return jsonify({"error": "Invalid API key"}), 401
    data = request.get_json()
    if not data or "points" not in data:
        return jsonify({"error": "Invalid JSON"}), 400
    body = "\n".join(to_line(p, server[1], server[0]) for p in data["points"])
    try:
        resp = requests.post(
            f"{INFLUX_URL}/write",
            params={"db": INFLUX_DB, "precision": "ns"},
            data=body.encode(),
            timeout=10,
        )
    except requests.RequestException as e:
        return jsonify({"error": str(e)}), 503
    if resp.status_code != 204:
        return jsonify({"error": resp.text}), 502
    return Response(status=204)


def init_db(path: str, servers: list[tuple[str, str, str]]) -> None:
    """Create the table and insert (hostname, ip_address, api_key) rows (used by the bench)."""
    conn = sqlite3.connect(path)
    try:
        conn.execute(SCHEMA)
        conn.executemany(
            "INSERT INTO servers (hostname, ip_address, api_key) VALUES (?, ?, ?)", servers
        )
        conn.commit()
    finally:
        conn.close()
