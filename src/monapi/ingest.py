"""The ingestion path: body decoding (msgspec) and the one validator every wire format uses.

A point is atomic: if any of its values is invalid, none of it is stored, and every reason is
reported with the point's index. Valid points of the same request are stored.
"""

from __future__ import annotations

import gzip
import json
import math
import re
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from .errors import ApiError
from .fields import (
    FIELD_NAME_HELP,
    FIELD_NAME_RE,
    MAX_TEXT_VALUE,
    MEASUREMENT_HELP,
    MEASUREMENT_RE,
    TEXT_VALUE_RE,
    FieldSpec,
)
from .lpparse import ParsedLine, Unsigned
from .tsdb import Point
from .tsdb.base import Rejection, Tags

MAX_ERRORS = 100
MAX_TAGS = 32
MAX_STRING_VALUE = 4096
# Set by monapi on every stored point: the server's identity from its key, and (in
# VictoriaMetrics, where a metric is named <measurement>_<field>) the measurement.
RESERVED_TAGS = ("host", "server_id", "measurement")
# The identity tags. The JSON API refuses them; line protocol clients (Telegraf always sends
# ``host``) have them replaced by the key's identity instead.
IDENTITY_TAGS = frozenset({"host", "server_id"})
# 1-64 of letters, digits, _ . -, not starting with "__" (engines keep those for themselves:
# __name__ is the metric name in VictoriaMetrics and Prometheus).
TAG_KEY_RE = re.compile(
    r"^(?:[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}|_(?:[A-Za-z0-9.\-][A-Za-z0-9_.\-]{0,62})?)$"
)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_FLOAT_MAX = sys.float_info.max
RawValue = bool | int | float | str


class PointIn(msgspec.Struct, forbid_unknown_fields=True):
    fields: dict[str, RawValue]
    # UNSET when absent (the validator reads it as "system"): the key count needs to know.
    measurement: str | UnsetType = UNSET
    timestamp: str | int | float | None = None
    tags: dict[str, str] = {}


class BodyIn(msgspec.Struct, forbid_unknown_fields=True):
    """Either one point (``fields`` ...) or a batch (``points``)."""

    points: list[PointIn] | None = None
    fields: dict[str, RawValue] | None = None
    measurement: str | UnsetType = UNSET
    timestamp: str | int | float | None = None
    tags: dict[str, str] = {}


class LoosePointIn(msgspec.Struct):
    """Second-chance decoding when the strict one fails, to report errors per point."""

    fields: Any = None
    measurement: Any = "system"
    timestamp: Any = None
    tags: Any = msgspec.field(default_factory=dict)


_strict = msgspec.json.Decoder(BodyIn)


MAX_NAME_SHOWN = 80  # characters of a name an error repeats

# Why a point was refused, in few words: the ``reason`` label of monapi_points_rejected_total
# (the error texts themselves name values, and would make a label of unbounded cardinality).
INVALID_POINT = "invalid_point"  # not an object, unknown keys, no fields
INVALID_NAME = "invalid_name"  # a measurement or (discovered) field name that is not valid
INVALID_TAG = "invalid_tag"
TIMESTAMP = "timestamp"  # unreadable, or outside the accepted window
UNKNOWN_FIELD = "unknown_field"
DISABLED_FIELD = "disabled_field"
INVALID_VALUE = "invalid_value"  # the wrong type, or outside the field's bounds
REFUSED_BY_STORE = "refused_by_store"  # the engine would not store it


@dataclass(slots=True)
class ValidationResult:
    # The stored points (a LazyPoints when the fast path sent them as line protocol).
    points: Sequence[Point] = field(default_factory=list)
    indexes: list[int] = field(default_factory=list)  # each point's index in the request
    rejected: int = 0
    dropped: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    error_count: int = 0
    discovered: dict[tuple[str, str], str] = field(default_factory=dict)
    # Each refused point's index -> the kind of its first error (see INVALID_POINT...).
    refused_kinds: dict[int, str] = field(default_factory=dict)

    def refused_by_store(self, refused: Sequence[Rejection]) -> None:
        """Points the time-series engine would not store: they count as rejected."""
        gone = set()
        for r in refused:
            if r.index in gone:
                continue
            gone.add(r.index)
            self.error(self.indexes[r.index], r.field, r.reason, REFUSED_BY_STORE)
            self.rejected += 1
        if gone:
            keep = [j for j in range(len(self.points)) if j not in gone]
            self.points = [self.points[j] for j in keep]
            self.indexes = [self.indexes[j] for j in keep]
            self.errors.sort(key=lambda e: e["index"])

    def error(self, index: int, fld: str | None, reason: str, kind: str) -> None:
        self.error_count += 1
        self.refused_kinds.setdefault(index, kind)
        if len(self.errors) < MAX_ERRORS:
            if fld is not None and len(fld) > MAX_NAME_SHOWN:  # a name of 10,000 characters
                fld = fld[:MAX_NAME_SHOWN] + "..."  # is not repeated in full in the answer
            self.errors.append({"index": index, "field": fld, "reason": reason})


def read_body(raw: bytes, encoding: str | None, max_decompressed: int) -> bytes:
    """The request body, gunzipped when sent with ``Content-Encoding: gzip`` (bounded)."""
    enc = (encoding or "identity").strip().lower()
    if enc in ("identity", ""):
        return raw
    if enc != "gzip":
        raise ApiError(415, f"unsupported Content-Encoding {enc!r}; use gzip or none")
    d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(raw, max_decompressed + 1)
    except zlib.error as exc:
        raise ApiError(400, f"body is not valid gzip: {exc}", code="invalid_gzip") from exc
    if len(out) > max_decompressed or d.unconsumed_tail:
        raise ApiError(
            413, f"decompressed body exceeds {max_decompressed} bytes", code="payload_too_large"
        )
    if not d.eof:
        raise ApiError(400, "body is not valid gzip: truncated stream", code="invalid_gzip")
    if d.unused_data.strip(b"\0"):  # zero padding aside, as gzip itself allows
        # Another gzip member (or junk): reading only the first would drop the rest silently.
        raise ApiError(
            400,
            f"body is not valid gzip: {len(d.unused_data)} bytes after the end of the gzip"
            " stream (send the body as one gzip stream)",
            code="invalid_gzip",
        )
    return out


def decode_points(body: bytes, max_points: int) -> list[PointIn] | list[Any]:
    """Decode a JSON body into points. Raises 400 for malformed JSON (a key twice in one object
    included), 413 for too many points.

    Returns strict ``PointIn`` objects when every point has the right JSON types; otherwise the
    raw per-point objects, which the validator then reports on one by one.
    """
    if not body:
        raise ApiError(400, 'empty body: send one point or {"points": [...]}')
    try:
        parsed = _strict.decode(body)
    except msgspec.ValidationError as exc:
        return _decode_loose(body, max_points, str(exc))
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise _not_json(exc, body) from None
    colons = body.count(b":")
    if colons > (keys := _keys_at_least(parsed)) and (
        b"\\" in body or colons > keys + _colons_in_strings(parsed)
    ):  # else no key can be repeated (see _keys_at_least)
        refuse_duplicate_keys(body)
    if parsed.points is not None:
        if parsed.fields is not None:
            raise ApiError(400, 'send either one point or {"points": [...]}, not both')
        points = parsed.points
    elif parsed.fields is not None:
        points = [PointIn(parsed.fields, parsed.measurement, parsed.timestamp, parsed.tags)]
    else:
        raise ApiError(
            422,
            "body has neither 'fields' (one point) nor 'points' (a batch)",
            details=[{"location": "body", "reason": "missing fields or points"}],
        )
    if len(points) > max_points:
        raise ApiError(413, f"{len(points)} points in one request; the limit is {max_points}")
    if not points:
        raise ApiError(
            422, "'points' is empty", details=[{"location": "body.points", "reason": "empty list"}]
        )
    return points


def _not_json(exc: Exception, body: bytes) -> ApiError:
    """The 400 for a body that does not decode, saying what is wrong and where."""
    if isinstance(exc, RecursionError):
        reason = "arrays or objects nested too deeply"
    elif isinstance(exc, UnicodeDecodeError):
        try:  # the decoder's position is within the string it was reading
            body.decode()
            where = ""
        except UnicodeDecodeError as whole:
            where = f" at byte {whole.start}"
        reason = f"invalid UTF-8{where}"
    else:
        reason = str(exc)
    return ApiError(400, f"body is not valid JSON: {reason}", code="invalid_json")


def _keys_at_least(parsed: BodyIn) -> int:
    """How many keys the body has at least, without counting a repeated key twice (a key that
    is there but cannot be told from its absence is not counted). Every key of a JSON text is
    followed by a ':', so a body with no more ':' than this has no repeated key."""
    keys = 0 if parsed.points is None else 1
    points: list[PointIn] | tuple[BodyIn] = (
        parsed.points if parsed.points is not None else (parsed,)
    )
    for p in points:  # a loop is faster here than map() and count()
        tags = p.tags
        keys += (p.measurement is not UNSET) + (p.timestamp is not None) + (len(tags) > 0)
        keys += len(tags)
        if p.fields is not None:
            keys += 1 + len(p.fields)
    return keys


def _colons_in_strings(parsed: BodyIn) -> int:
    """The ':' in the keys and strings of :func:`_keys_at_least`'s count, as decoded: as in the
    body when it has no backslash (no escapes). RFC 3339 timestamps have two each."""
    n = 0
    points: list[PointIn] | tuple[BodyIn] = (
        parsed.points if parsed.points is not None else (parsed,)
    )
    for p in points:
        if isinstance(p.timestamp, str):
            n += p.timestamp.count(":")
        if p.measurement is not UNSET:
            n += p.measurement.count(":")
        for k, v in p.tags.items():
            n += k.count(":") + v.count(":")
        for k, value in (p.fields or {}).items():
            n += k.count(":") + (value.count(":") if type(value) is str else 0)
    return n


class _Keys(dict[str, Any]):
    """A decoded JSON object that had a key twice (the first one repeated)."""

    repeated: str | None = None


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = _Keys(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        obj.repeated = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
    return obj


def repeated_key(body: bytes | str) -> tuple[str, str] | None:
    """Where a JSON text has the same key twice in one object (``body.points[3].fields``) and
    which key, or None. JSON decoders keep the last value silently; this API refuses it."""
    if ":" not in body if isinstance(body, str) else b":" not in body:
        return None
    try:
        obj = json.loads(
            body,
            object_pairs_hook=_object,
            parse_float=len,  # the values do not matter, and are not converted
            parse_int=len,
            parse_constant=len,
        )
    except (ValueError, RecursionError):
        return None  # not JSON: the decoder says so
    stack: list[tuple[str, Any]] = [("body", obj)]
    while stack:  # depth first, in the order of the text
        where, value = stack.pop()
        if isinstance(value, dict):
            if isinstance(value, _Keys) and value.repeated is not None:
                return where, value.repeated
            stack.extend((f"{where}.{k}", v) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", v) for i, v in reversed(list(enumerate(value))))
    return None


def refuse_duplicate_keys(body: bytes) -> None:
    """Raise the 400 for a body with a key twice in one object (see :func:`repeated_key`)."""
    found = repeated_key(body)
    if found is not None:
        where, key = found
        reason = f"the key {key[:80]!r} appears more than once"
        raise ApiError(
            400,
            f"body is not valid JSON for this API: {where}: {reason}",
            code="duplicate_key",
            details=[{"location": where, "reason": reason}],
        )


def _decode_loose(body: bytes, max_points: int, strict_error: str) -> list[Any]:
    try:
        obj = msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise _not_json(exc, body) from None
    refuse_duplicate_keys(body)
    if not isinstance(obj, dict):
        raise ApiError(
            422,
            f"body must be a JSON object: {strict_error}",
            details=[{"location": "body", "reason": strict_error}],
        )
    if "points" in obj:
        points = obj["points"]
        extra = set(obj) - {"points"}
        if not isinstance(points, list) or extra:
            raise ApiError(
                422,
                f"invalid body: {strict_error}",
                details=[{"location": "body", "reason": strict_error}],
            )
    else:
        points = [obj]
    if len(points) > max_points:
        raise ApiError(413, f"{len(points)} points in one request; the limit is {max_points}")
    if not points:
        raise ApiError(422, "'points' is empty")
    return points


# RFC 3339 date-time (section 5.6; a space for the T, as its note allows), the offset optional
# here so that its absence gets its own message.
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
    r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})?"
)


def parse_timestamp(value: object, now_ns: int) -> int:
    """RFC 3339 or epoch seconds / ms / us / ns (told apart by size) to nanoseconds."""
    if value is None:
        return now_ns
    if isinstance(value, bool):
        raise ValueError("timestamp must be RFC 3339 text or an epoch number")
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("timestamp is not a finite number")
        mag = abs(value)
        if mag < 1e11:
            return int(value * 1_000_000_000)
        if mag < 1e14:
            return int(value * 1_000_000)
        if mag < 1e17:
            return int(value * 1_000)
        return int(value)
    if isinstance(value, str):
        # fromisoformat alone takes any ISO 8601 form, and any character between date and time.
        m = _RFC3339.fullmatch(value)
        try:
            if m is None:
                raise ValueError
            dt = datetime.fromisoformat(value.upper())
        except ValueError:
            raise ValueError(f"timestamp {value[:40]!r} is not RFC 3339") from None
        if dt.tzinfo is None:
            raise ValueError(f"timestamp {value[:40]!r} has no time zone (add Z or +00:00)")
        return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000
    raise ValueError("timestamp must be RFC 3339 text or an epoch number")


def _check_value(spec: FieldSpec, value: object) -> tuple[RawValue | None, str | None]:
    """The stored value (converted) or the reason it is refused."""
    t = type(value)
    ftype = spec.type
    if ftype == "float":
        if t is float:
            if not math.isfinite(value):  # type: ignore[arg-type]
                return None, "value is not a finite number"
            v: float | int = value  # type: ignore[assignment]
        elif t is int or t is Unsigned:
            try:
                v = float(value)  # type: ignore[arg-type]
            except OverflowError:  # JSON allows any number of digits
                return None, "integer out of the float range"
        else:
            return None, f"expected a float, got {_type_name(value)}"
    elif ftype == "int":
        if t is int or t is Unsigned:
            v = int(value)  # type: ignore[call-overload]
        elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
            v = int(value)
        else:
            return None, f"expected an integer, got {_type_name(value)}"
        if not INT64_MIN <= v <= INT64_MAX:
            if t is Unsigned:
                return None, f"unsigned integer {v} does not fit the field's 64-bit signed type"
            return None, "integer out of the 64-bit range"
    elif ftype == "bool":
        if t is bool:
            return value, None  # type: ignore[return-value]
        return None, f"expected a boolean, got {_type_name(value)}"
    else:
        if t is str:
            if len(value) > MAX_STRING_VALUE:  # type: ignore[arg-type]
                return None, f"string longer than {MAX_STRING_VALUE} characters"
            return value, None  # type: ignore[return-value]
        return None, f"expected a string, got {_type_name(value)}"
    if spec.min is not None and v < spec.min:
        return None, f"{v} is below the minimum {spec.min:g}"
    if spec.max is not None and v > spec.max:
        return None, f"{v} is above the maximum {spec.max:g}"
    return v, None


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    return {
        bool: "boolean",
        int: "integer",
        Unsigned: "unsigned integer",
        float: "float",
        str: "string",
    }.get(type(value), type(value).__name__)


def infer_type(value: object) -> str | None:
    """The field type a discovered value implies (an unsigned integer is an int field)."""
    return {bool: "bool", int: "int", Unsigned: "int", float: "float", str: "string"}.get(
        type(value)
    )


# The specs last given to a Validator, and their fast-path bounds (see Validator.__init__).
_fast_of: tuple[object, dict[str, dict[str, tuple[float, float]]]] = (None, {})


class Validator:
    """Checks points against the field configuration; shared by every wire format."""

    def __init__(
        self,
        specs: dict[str, dict[str, FieldSpec]],
        unknown: str,
        max_age_s: float,
        max_future_s: float,
        now_ns: int | None = None,
        replace_identity: bool = False,
    ) -> None:
        """``replace_identity``: drop ``host`` and ``server_id`` tags (the key's identity is
        stamped on every point anyway) instead of refusing the point."""
        self.specs = specs
        self.unknown = unknown
        self.replace_identity = replace_identity
        self.now_ns = now_ns if now_ns is not None else time.time_ns()
        self.oldest = self.now_ns - int(max_age_s * 1e9)
        self.newest = self.now_ns + int(max_future_s * 1e9)
        self._good_tag_keys: set[str] = set()
        self._good_tag_values: set[str] = set()
        # measurement -> {float field: (low, high)} for the fast path; a valid measurement name
        # is in here once seen. Shared by every Validator of the same specs (the registry hands
        # out one dict per field-configuration version): an agent push does not rebuild it.
        global _fast_of
        known_specs, fast = _fast_of
        if known_specs is not specs:
            fast = {}
            _fast_of = (specs, fast)
        self._fast: dict[str, dict[str, tuple[float, float]]] = fast

    def _fast_bounds(self, meas: str) -> dict[str, tuple[float, float]]:
        bounds = {
            name: (
                -_FLOAT_MAX if spec.min is None else max(spec.min, -_FLOAT_MAX),
                _FLOAT_MAX if spec.max is None else min(spec.max, _FLOAT_MAX),
            )
            for name, spec in (self.specs.get(meas) or {}).items()
            if spec.enabled and spec.type == "float"
        }
        self._fast[meas] = bounds
        return bounds

    def validate(self, points: Sequence[Any]) -> ValidationResult:
        stored: list[Point] = []
        res = ValidationResult(stored)
        specs = self.specs
        # Line protocol: the points of one series share one tags dict (see lpparse), checked once.
        # Keyed by id(): every dict stays alive in ``points`` for the whole call.
        tag_memo: dict[int, tuple[Tags, list[str]]] = {}
        for i, p in enumerate(points):
            ns_given = line = False
            if isinstance(p, PointIn):
                meas = "system" if p.measurement is UNSET else p.measurement
                raw_fields, raw_ts, raw_tags = p.fields, p.timestamp, p.tags
            elif type(p) is ParsedLine:
                # Line protocol: the caller has put the timestamp in nanoseconds already.
                meas, raw_fields, raw_ts, raw_tags = p.measurement, p.fields, p.timestamp, p.tags
                ns_given = raw_ts is not None
                line = True
            else:
                shaped = self._loose(i, p, res)
                if shaped is None:
                    continue
                meas, raw_fields, raw_ts, raw_tags = shaped
            before = res.error_count
            fast = self._fast.get(meas)
            if fast is None:
                if not MEASUREMENT_RE.fullmatch(meas):
                    res.error(
                        i,
                        None,
                        f"measurement {meas[:80]!r} is not a valid name ({MEASUREMENT_HELP})",
                        INVALID_NAME,
                    )
                    res.rejected += 1
                    continue
                fast = self._fast_bounds(meas)
            ts: int
            try:
                ts = raw_ts if ns_given else parse_timestamp(raw_ts, self.now_ns)  # type: ignore[assignment]
            except ValueError as exc:
                res.error(i, None, str(exc), TIMESTAMP)
                ts = 0
            else:
                if ts < self.oldest:
                    res.error(i, None, "timestamp is older than the accepted window", TIMESTAMP)
                elif ts > self.newest:
                    res.error(i, None, "timestamp is too far in the future", TIMESTAMP)
            if not raw_tags:
                tags: Tags = ()
            elif line:
                tags = self._shared_tags(i, raw_tags, res, tag_memo)
            else:
                tags = self._tags(i, raw_tags, res)
            if not raw_fields:
                res.error(i, None, "point has no fields", INVALID_POINT)
            mspecs = specs.get(meas)
            out: dict[str, RawValue] = {}
            for name, value in raw_fields.items():
                if type(value) is float:
                    # The common case, without a call: an enabled float field, in its bounds
                    # (which exclude inf; NaN fails every comparison). Anything else takes
                    # the full check below, which also says why.
                    bounds = fast.get(name)
                    if bounds is not None and bounds[0] <= value <= bounds[1]:
                        out[name] = value
                        continue
                spec = mspecs.get(name) if mspecs is not None else None
                if spec is None:
                    self._unknown(i, meas, name, value, out, res)
                    continue
                if not spec.enabled:
                    res.error(i, name, f"field {meas}.{name} is disabled", DISABLED_FIELD)
                    continue
                v, reason = _check_value(spec, value)
                if reason is not None:
                    res.error(i, name, reason, INVALID_VALUE)
                else:
                    out[name] = v  # type: ignore[assignment]
            if res.error_count != before:
                res.rejected += 1
            elif out:
                stored.append(Point(meas, tags, ts, out))
                res.indexes.append(i)
        return res

    def _loose(
        self, i: int, p: Any, res: ValidationResult
    ) -> tuple[str, dict[str, Any], Any, Any] | None:
        if not isinstance(p, dict):
            res.error(i, None, f"a point must be a JSON object, got {_type_name(p)}", INVALID_POINT)
            res.rejected += 1
            return None
        extra = set(p) - {"measurement", "timestamp", "tags", "fields"}
        meas = p.get("measurement", "system")
        fields = p.get("fields")
        problems = []
        if extra:
            problems.append(f"unknown keys: {', '.join(sorted(extra)[:5])}")
        if not isinstance(meas, str):
            problems.append("measurement must be a string")
        if not isinstance(fields, dict):
            problems.append("fields must be an object of name: value")
        tags = p.get("tags", {})
        if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
            problems.append("tags must be an object of string values")
        if problems:
            for prob in problems:
                res.error(i, None, prob, INVALID_POINT)
            res.rejected += 1
            return None
        return meas, fields, p.get("timestamp"), tags  # type: ignore[return-value]

    def _tags(
        self, i: int, raw: dict[str, str], res: ValidationResult
    ) -> tuple[tuple[str, str], ...]:
        if len(raw) > MAX_TAGS:
            res.error(i, None, f"{len(raw)} tags; at most {MAX_TAGS} are allowed", INVALID_TAG)
            return ()
        good = self._good_tag_keys
        replaced = False
        for k, v in raw.items():
            if k not in good:
                if self.replace_identity and k in IDENTITY_TAGS:
                    replaced = True
                    continue
                if not TAG_KEY_RE.fullmatch(k):
                    res.error(
                        i,
                        None,
                        f"tag key {k[:80]!r} is not valid (1-64 of letters, digits, _ . -;"
                        " not starting with __)",
                        INVALID_TAG,
                    )
                    continue
                if k in RESERVED_TAGS:
                    res.error(
                        i, None, f"tag {k!r} is reserved: it is set from the API key", INVALID_TAG
                    )
                    continue
                good.add(k)
            if v in self._good_tag_values:
                continue
            if not v or len(v) > MAX_TEXT_VALUE or not TEXT_VALUE_RE.fullmatch(v):
                res.error(
                    i, None, f"tag {k!r}: 1-256 characters, no control characters", INVALID_TAG
                )
            elif len(self._good_tag_values) < 10_000:
                self._good_tag_values.add(v)
        if replaced:
            return tuple(sorted((k, v) for k, v in raw.items() if k not in IDENTITY_TAGS))
        return tuple(sorted(raw.items()))

    def _shared_tags(
        self,
        i: int,
        raw: dict[str, str],
        res: ValidationResult,
        memo: dict[int, tuple[Tags, list[str]]],
    ) -> Tags:
        """:meth:`_tags` for a tags dict that other points of the request may share."""
        hit = memo.get(id(raw))
        if hit is None:
            alone = ValidationResult()
            hit = memo[id(raw)] = (self._tags(0, raw, alone), [e["reason"] for e in alone.errors])
        for reason in hit[1]:
            res.error(i, None, reason, INVALID_TAG)
        return hit[0]

    def _unknown(
        self,
        i: int,
        meas: str,
        name: str,
        value: Any,
        out: dict[str, RawValue],
        res: ValidationResult,
    ) -> None:
        if self.unknown == "drop":
            res.dropped += 1
            return
        if self.unknown == "reject":
            shown = name if len(name) <= MAX_NAME_SHOWN else name[:MAX_NAME_SHOWN] + "..."
            res.error(
                i,
                name,
                f"unknown field {meas}.{shown} (not in the field configuration)",
                UNKNOWN_FIELD,
            )
            return
        # discover
        if not FIELD_NAME_RE.fullmatch(name):
            res.error(
                i, name, f"field name {name[:80]!r} is not valid ({FIELD_NAME_HELP})", INVALID_NAME
            )
            return
        ftype = infer_type(value)
        if ftype is None:
            res.error(i, name, f"cannot infer a field type from {_type_name(value)}", INVALID_VALUE)
            return
        if isinstance(value, float) and not math.isfinite(value):
            res.error(i, name, "value is not a finite number", INVALID_VALUE)
            return
        if ftype == "int":
            if not INT64_MIN <= value <= INT64_MAX:
                res.error(i, name, "integer out of the 64-bit range", INVALID_VALUE)
                return
            value = int(value)  # an Unsigned is stored as a plain int
        known = res.discovered.setdefault((meas, name), ftype)
        if known != ftype:
            res.error(
                i,
                name,
                f"field {meas}.{name} seen as {known} and {ftype} in one request",
                INVALID_VALUE,
            )
            return
        out[name] = value


def gzip_bytes(data: bytes) -> bytes:
    """gzip ``data`` (for tests and the benchmark)."""
    return gzip.compress(data, compresslevel=5)
