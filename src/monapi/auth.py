"""API keys: generation, digests, lookup through a versioned cache, and per-endpoint scopes.

A key reads ``mk<kind>_<id>_<secret>``: ``mka_`` admin tokens, ``mks_`` server keys, ``mke_``
enrollment tokens. ``id`` finds the record; the secret is 256 random bits. Only
HMAC-SHA256(pepper, key) is stored, and compared in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import msgspec
from flask import Flask, current_app, g, request
from sqlalchemy import select

from . import db
from .cache import get_coordinator, request_versions
from .errors import ApiError
from .models import ApiKey, Server, utcnow

ADMIN = "admin"
SERVER = "server"
ENROLL = "enroll"
KINDS = (ADMIN, SERVER, ENROLL)
_PREFIX = {ADMIN: "mka", SERVER: "mks", ENROLL: "mke"}
_KIND_OF_PREFIX = {v: k for k, v in _PREFIX.items()}
_KEY_RE = re.compile(r"^(mk[ase])_([0-9a-f]{16})_([A-Za-z0-9_\-]{43})$")
EXT = "monapi.auth"
# WSGI environ key under which api/hotpath.py hands a request it checked the key of to Flask.
PRINCIPAL_ENVIRON = "monapi.principal"
# ... and the exception checking it raised (a store that did not answer, a refused key), for
# Flask to answer without asking the store a second time.
AUTH_ERROR_ENVIRON = "monapi.auth_error"

# OpenAPI security requirements, used by the route decorators.
SECURITY_SCHEMES: dict[str, Any] = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <key>"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    # InfluxDB-compatible endpoints only (also 'Authorization: Token <key>'):
    "basic": {
        "type": "http",
        "scheme": "basic",
        "description": "the key as the password, any user name (InfluxDB endpoints only)",
    },
    "influxPassword": {
        "type": "apiKey",
        "in": "query",
        "name": "p",
        "description": "the key as InfluxDB 1.x's 'p' parameter (InfluxDB endpoints only)",
    },
}
SECURITY: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}]


@dataclass(frozen=True, slots=True)
class NewKey:
    """A freshly made key: ``plaintext`` is shown once, ``digest`` is what is stored."""

    id: str
    kind: str
    plaintext: str
    digest: str


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    kind: str
    digest: str
    server_id: int | None
    expires_at: datetime | None
    max_uses: int | None
    uses: int
    revoked: bool
    server_enabled: bool
    hostname: str | None


_decode_record = msgspec.json.Decoder(KeyRecord).decode
log = logging.getLogger("monapi.auth")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the kind of key, its id, and for a server key its server."""

    kind: str
    key_id: str
    server_id: int | None = None
    hostname: str | None = None


class KeyService:
    """Makes and checks keys; holds the per-process cache of key records."""

    def __init__(self, pepper: bytes) -> None:
        self._pepper = pepper
        self._cache: dict[str, KeyRecord | None] = {}
        self._cache_version: tuple[int, int] = (-1, -1)
        self._lock = threading.Lock()
        self._verified: dict[str, str] = {}  # key that matched a record -> its digest

    def digest(self, key: str) -> str:
        return hmac.new(self._pepper, key.encode(), hashlib.sha256).hexdigest()

    def generate(self, kind: str) -> NewKey:
        key_id = secrets.token_hex(8)
        plaintext = f"{_PREFIX[kind]}_{key_id}_{secrets.token_urlsafe(32)}"
        return NewKey(key_id, kind, plaintext, self.digest(plaintext))

    def _load(self, key_id: str) -> KeyRecord | None:
        row = (
            db.session()
            .execute(
                select(ApiKey, Server.enabled, Server.hostname)
                .outerjoin(Server, ApiKey.server_id == Server.id)
                .where(ApiKey.id == key_id)
            )
            .first()
        )
        if row is None:
            return None
        k, enabled, hostname = row
        return KeyRecord(
            id=k.id,
            kind=k.kind,
            digest=k.digest,
            server_id=k.server_id,
            expires_at=k.expires_at,
            max_uses=k.max_uses,
            uses=k.uses,
            revoked=k.revoked_at is not None,
            server_enabled=bool(enabled) if k.server_id is not None else True,
            hostname=hostname,
        )

    def _shared_or_load(self, key_id: str, version: str) -> KeyRecord | None:
        """From the shared cache (Redis) when another process already loaded it for this
        version, else from the database (and offered to the others)."""
        coord = get_coordinator()
        raw = coord.shared_get("keys", version, key_id)
        if raw is not None:
            try:
                return _decode_record(raw)
            except msgspec.DecodeError:
                log.warning("ignoring an unreadable shared key record for %s", key_id)
        record = self._load(key_id)
        if record is not None:
            coord.shared_set("keys", version, key_id, msgspec.json.encode(record))
        return record

    def lookup(self, key_id: str) -> KeyRecord | None:
        versions = request_versions()
        current = (versions.get("keys", 0), versions.get("servers", 0))
        with self._lock:
            if current != self._cache_version:
                self._cache = {}
                self._cache_version = current
            if key_id in self._cache:
                return self._cache[key_id]
        record = self._shared_or_load(key_id, f"{current[0]}.{current[1]}")
        with self._lock:
            if len(self._cache) > 50_000:  # bound the memory random ids can take
                self._cache.clear()
            if self._cache_version == current:
                self._cache[key_id] = record
        return record

    def authenticate(self, presented: str) -> KeyRecord:
        """The record for a presented key, or a 401 ApiError saying why not."""
        m = _KEY_RE.match(presented)
        if not m:
            raise _unauthorized("malformed API key (expected mka_/mks_/mke_<id>_<secret>)")
        record = self.lookup(m.group(2))
        if record is None or record.kind != _KIND_OF_PREFIX[m.group(1)]:
            raise _unauthorized("invalid API key")
        # The digest of a key that matched once is remembered (only then, and bounded): an
        # agent's every later push skips the HMAC. The comparison with the record stays.
        digest = self._verified.get(presented)
        if digest is None:
            digest = self.digest(presented)
        if not hmac.compare_digest(record.digest, digest):
            raise _unauthorized("invalid API key")
        if len(self._verified) >= 100_000:
            self._verified.clear()
        self._verified[presented] = digest
        if record.revoked:
            raise _unauthorized("API key has been revoked")
        if record.expires_at is not None and record.expires_at <= utcnow():
            raise _unauthorized("API key has expired")
        if record.max_uses is not None and record.uses >= record.max_uses:
            raise _unauthorized("enrollment token has no uses left")
        return record


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, message, headers={"WWW-Authenticate": 'Bearer realm="monapi"'})


@dataclass(frozen=True, slots=True)
class Credentials:
    """How an endpoint's callers present their key: a reader, what to say when nothing was
    presented, and the ``WWW-Authenticate`` challenge of a 401."""

    read: Callable[[], str | None]
    missing: str
    challenge: str


def presented_key() -> str | None:
    """The key sent as ``Authorization: Bearer`` or ``X-API-Key``, if any."""
    return key_from(request.headers.get("Authorization", ""), request.headers.get("X-API-Key", ""))


def key_from(authorization: str, x_api_key: str) -> str | None:
    """:func:`presented_key` from the two header values."""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return x_api_key.strip() or None


def influx_presented_key() -> str | None:
    """The key as InfluxDB clients send credentials: ``Authorization: Token`` (v2) or ``Bearer``,
    the password of ``Authorization: Basic`` (any user name), ``X-API-Key``, or the ``p``
    query parameter (v1, with ``u``)."""
    auth = request.headers.get("Authorization", "")
    if auth:
        scheme, _, value = auth.partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if scheme in ("bearer", "token") and value:
            return value
        if scheme == "basic" and value:
            try:
                decoded = base64.b64decode(value, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise _unauthorized(
                    "malformed Basic credentials (not base64 of user:password)"
                ) from None
            _user, sep, password = decoded.partition(":")
            if sep and password:
                return password
    key = request.headers.get("X-API-Key", "").strip() or request.args.get("p", "").strip()
    return key or None


API_CREDENTIALS = Credentials(
    presented_key,
    "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
    'Bearer realm="monapi"',
)
INFLUX_CREDENTIALS = Credentials(
    influx_presented_key,
    "missing API key: send the server key as 'Authorization: Token <key>', as the password of"
    " Basic auth (any user name), or as the 'p' query parameter",
    'Basic realm="monapi"',
)


def get_keys() -> KeyService:
    svc: KeyService = current_app.extensions[EXT]
    return svc


# Endpoint -> kinds allowed, and how the key is presented where that is not API_CREDENTIALS.
# Filled by @requires at import of the view modules.
_RULES: dict[str, frozenset[str]] = {}
_CREDENTIALS: dict[str, Credentials] = {}
PUBLIC = frozenset[str]()
F = TypeVar("F", bound=Callable[..., Any])


def requires(
    blueprint_name: str, *kinds: str, credentials: Credentials = API_CREDENTIALS
) -> Callable[[F], F]:
    """Declare which key kinds may call a view; no kinds means the view is public."""

    def register(func: F) -> F:
        endpoint = f"{blueprint_name}.{func.__name__}"
        _RULES[endpoint] = frozenset(kinds)
        if credentials is not API_CREDENTIALS:
            _CREDENTIALS[endpoint] = credentials
        return func

    return register


def principal() -> Principal:
    """The authenticated caller of the current request."""
    p: Principal = g.principal
    return p


def check_server_access(server_id: int) -> None:
    """A server key may only touch its own server; admins may touch any."""
    p = principal()
    if p.kind == SERVER and p.server_id != server_id:
        raise ApiError(403, "a server key can only access its own server")


def init_app(app: Flask, pepper: bytes) -> None:
    """Install key checking in front of every endpoint that declared its scopes."""
    app.extensions[EXT] = KeyService(pepper)

    @app.before_request
    def _authenticate() -> None:
        endpoint = request.endpoint
        if endpoint is None:
            return
        checked: Principal | None = request.environ.get(PRINCIPAL_ENVIRON)
        if checked is not None:  # the hot path checked the key already (api/hotpath.py)
            g.principal = checked
            return
        kinds = _RULES.get(endpoint)
        if kinds is None or not kinds:
            return
        creds = _CREDENTIALS.get(endpoint, API_CREDENTIALS)
        try:
            key = creds.read()
            if key is None:
                raise _unauthorized(creds.missing)
            failed: Exception | None = request.environ.pop(AUTH_ERROR_ENVIRON, None)
            if failed is not None:
                raise failed
            record = get_keys().authenticate(key)
        except ApiError as exc:
            if exc.status == 401:
                exc.headers["WWW-Authenticate"] = creds.challenge
            raise
        if record.kind not in kinds:
            allowed = " or ".join(sorted(kinds))
            raise ApiError(403, f"a {record.kind} key cannot do this; it needs a {allowed} key")
        if record.kind == SERVER and not record.server_enabled:
            raise ApiError(403, "this server is disabled; an admin can enable it again")
        g.principal = Principal(record.kind, record.id, record.server_id, record.hostname)


def check_rules_cover(app: Flask, public: set[str]) -> None:
    """Fail start-up if an /api/v1 endpoint forgot to declare who may call it."""
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/"):
            continue
        if rule.endpoint in _RULES or rule.endpoint in public:
            continue
        if rule.endpoint.startswith(("openapi.", "swagger.")):
            continue
        raise RuntimeError(f"endpoint {rule.endpoint} ({rule.rule}) declares no scopes")
