"""Whole-batch fast paths of ingestion, for a store that takes line protocol as it is (InfluxDB).

The exact path (``lpparse.parse`` or ``ingest.decode_points``, then ``Validator.validate``, then
``lineprotocol.encode`` in the store) reads any input and words every error, with Python work
per line and per value. The functions here recognise the bulk case with a few operations on the
whole batch, done in C (``bytes.split``, one msgspec decode per measurement, ``min``/``max``):
every point valid, every value a float of an enabled float field of its measurement, within the
field's bounds. They return the line protocol to send, or None for anything they do not plainly
recognise; the caller then takes the exact path for the whole request, so every answer and every
error message stays the exact path's. Tests check that both give the same stored points.

* Line protocol (``/write``): the body is split once (after checking that its only separators
  are single spaces and newlines, two or one per line); each distinct series key is parsed and
  validated once (the exact path's own functions) and mapped to the key the store writes, with
  the key's identity tags (unchanged when the line carries exactly that identity, tags sorted);
  the field sets of each measurement are decoded with one msgspec call into
  ``dict[Literal[<its float fields>], Annotated[float, Meta(ge=..., le=...)]]`` (unknown
  fields, types, bounds and non-finite values checked in C; per-field bounds through
  ``msgspec.convert`` into a struct when they differ; a repeated field seen as fewer fields
  than ``=`` signs); timestamps checked by min and max. The field sets are then forwarded as
  the client wrote them: ``lpparse`` reads a field set without quotes or backslashes the same
  way (as JSON, with msgspec), and InfluxDB parses the same float from the same text (both
  round correctly; ``-0`` is -0.0 for both). When no key changes and the precision is ns, the
  body is forwarded unchanged.
* JSON (``/api/v1/data``): the body is decoded into structs generated from the field
  configuration (a union tagged by ``measurement``; the fields a struct with each field's own
  bounds), so that the same checks run in C; tags are kept as JSON text and validated once per
  distinct text; the fields of the whole batch are written as line protocol by one msgspec
  encode, their punctuation swapped as ``lineprotocol`` does per point (the fields of a line
  come in the struct's order rather than the body's: the same point for InfluxDB). A key given
  twice in one object is read as its last value: the body's ':' are counted against the keys
  read (one each), and any difference takes the exact path, which refuses a repeated key.

The generated types are cached per field configuration (the registry hands out the same specs
object until the configuration version moves).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import compress, repeat
from operator import attrgetter
from typing import Annotated, Any, Literal, Union

import msgspec
from msgspec import UNSET

from .fields import FIELD_NAME_RE, MEASUREMENT_RE, FieldSpec
from .ingest import ValidationResult, Validator, parse_timestamp
from .lpparse import _SHORT_LINE, _fast_key
from .tsdb.base import Tags
from .tsdb.lineprotocol import series_prefix, tag_problem

_FLOAT_MAX = 1.7976931348623157e308
_INT64_MAX = 2**63 - 1
_MAX_REPLACED = 16  # series keys rewritten in the whole body at once, at most
_NS_FROM = 10**17  # parse_timestamp reads an epoch number this large (or larger) as ns
# What sends a body to the exact path at once: quotes, escapes, and whitespace but for single
# spaces and newlines (1.x skips tabs and NULs between sections; bytes.split() splits at all).
_LP_SPECIAL = (b'"', b"\\", b"\t", b"\r", b"\x00", b"\x0b", b"\x0c")
_NOT_SEPARATOR = bytes(c for c in range(256) if c not in b" \n")
_THREE, _TWO = b"  \n", b" \n"
_JSON_TO_LP = bytes.maketrans(b":", b"=")  # with the quotes deleted
_fields_of = attrgetter("fields")
_timestamp_of = attrgetter("timestamp")
_tags_of = attrgetter("tags")
_decode_tags = msgspec.json.Decoder(dict[str, str]).decode
# The tags of a JSON point without "tags": a text no body gives (a value has no space before it),
# so that the keys of a body can be counted (see json_batch).
_NO_TAGS_TEXT = b" {}"
_NO_TAGS = msgspec.Raw(_NO_TAGS_TEXT)

FieldCheck = Callable[[str], bool]


@dataclass(frozen=True, slots=True)
class _Measurement:
    name: str
    # list[dict[Literal[fields], Annotated[float, Meta(ge=lowest, le=highest)]]]
    decoder: msgspec.json.Decoder[Any]
    # list[struct of the fields with their own bounds], when the bounds differ between fields
    exact: Any | None
    # the tagged struct of a JSON point of this measurement
    json_point: Any


class FastConfig:
    """The generated types for one field configuration."""

    def __init__(self, specs: dict[str, dict[str, FieldSpec]], field_ok: FieldCheck) -> None:
        self.measurements: dict[str, _Measurement] = {}
        for meas, by_name in specs.items():
            if not MEASUREMENT_RE.fullmatch(meas):
                continue
            bounds = {
                name: (
                    -_FLOAT_MAX if spec.min is None else max(spec.min, -_FLOAT_MAX),
                    _FLOAT_MAX if spec.max is None else min(spec.max, _FLOAT_MAX),
                )
                for name, spec in by_name.items()
                if spec.enabled
                and spec.type == "float"
                and FIELD_NAME_RE.fullmatch(name)
                and field_ok(name)
            }
            if bounds:
                self.measurements[meas] = self._measurement(meas, bounds)
        self.json_decoder: msgspec.json.Decoder[Any] | None = None
        self.placeholder: Any = None
        if self.measurements:
            # A union of one tagged struct would accept a point without "measurement" (whose
            # default is "system"): the placeholder keeps it a union. Its tag is no valid
            # measurement name, and a point decoded as it takes the exact path.
            self.placeholder = msgspec.defstruct(
                "_NoMeasurement",
                [("fields", dict[str, Any])],
                tag_field="measurement",
                tag="",
                forbid_unknown_fields=True,
            )
            members: Any = Union[
                (*(m.json_point for m in self.measurements.values()), self.placeholder)
            ]
            body = msgspec.defstruct(
                "_FastBody", [("points", list[members])], forbid_unknown_fields=True
            )
            self.json_decoder = msgspec.json.Decoder(body)

    @staticmethod
    def _measurement(meas: str, bounds: dict[str, tuple[float, float]]) -> _Measurement:
        names = tuple(bounds)
        lowest = min(lo for lo, _ in bounds.values())
        highest = max(hi for _, hi in bounds.values())
        value = Annotated[float, msgspec.Meta(ge=lowest, le=highest)]
        as_dict = dict[Literal[names], value]  # type: ignore[valid-type]
        # The fields with their own bounds (any name: attributes renamed).
        attrs = [f"f{i}" for i in range(len(names))]
        as_struct = msgspec.defstruct(
            f"_Fields_{meas}",
            [
                (attr, Annotated[float, msgspec.Meta(ge=lo, le=hi)] | msgspec.UnsetType, UNSET)
                for attr, (lo, hi) in zip(attrs, bounds.values(), strict=True)
            ],
            rename=dict(zip(attrs, names, strict=True)),
            forbid_unknown_fields=True,
            gc=False,  # floats only
        )
        point = msgspec.defstruct(
            f"_Point_{meas}",
            [
                ("fields", as_struct),
                ("timestamp", int | None, None),
                ("tags", msgspec.Raw, _NO_TAGS),  # decoded once per distinct text
            ],
            tag_field="measurement",
            tag=meas,
            forbid_unknown_fields=True,
            gc=False,  # no cycles: a struct of floats, an int, a Raw
        )
        exact = list[as_struct] if len(set(bounds.values())) > 1 else None  # type: ignore[valid-type]
        return _Measurement(meas, msgspec.json.Decoder(list[as_dict]), exact, point)

    def fields_ok(self, m: _Measurement, dicts: list[dict[str, float]]) -> bool:
        """Per-field bounds, when the decoder's common bounds are not enough."""
        if m.exact is None:
            return True
        try:
            msgspec.convert(dicts, m.exact)
        except msgspec.ValidationError:
            return False
        return True


_cache_lock = threading.Lock()
_cache: tuple[object, object, FastConfig] | None = None


def config(specs: dict[str, dict[str, FieldSpec]], field_ok: FieldCheck) -> FastConfig:
    """The generated types for this field configuration (cached for the latest one)."""
    global _cache
    hit = _cache
    if hit is not None and hit[0] is specs and hit[1] == field_ok:
        return hit[2]
    built = FastConfig(specs, field_ok)
    with _cache_lock:
        _cache = (specs, field_ok, built)
    return built


def _prefixes(
    keys: Iterable[Any],
    series: Callable[[Any], tuple[str, Tags] | None],
    validator: Validator,
    ident: Tags,
) -> dict[Any, str] | None:
    """The written series key of each distinct key, or None if one is not plainly valid.
    ``series`` gives a key's measurement and raw tags (validated here as the exact path
    does)."""
    out: dict[Any, str] = {}
    memo = _prefix_memo
    for key in keys:
        got = series(key)
        if got is None:
            return None
        meas, raw_tags = got
        # Whether tags are valid depends on nothing but the tags (no configuration): an
        # agent's series key is checked and written once, not on every push.
        mkey = (meas, raw_tags, ident)
        prefix = memo.get(mkey, _UNSEEN)
        if prefix is _UNSEEN:
            scratch = ValidationResult()
            tags = validator._tags(0, dict(raw_tags), scratch) if raw_tags else ()
            prefix = (
                None
                if scratch.error_count or tag_problem(tags)
                else series_prefix(meas, tags, ident)
            )
            if len(memo) >= PREFIX_MEMO_SIZE:
                memo.clear()
            memo[mkey] = prefix
        if prefix is None:
            return None
        out[key] = prefix
    return out


# (measurement, raw tags, identity) -> the written series key, or None when not plainly valid.
PREFIX_MEMO_SIZE = 20_000
_UNSEEN: Any = object()
_prefix_memo: dict[tuple[str, Tags, Tags], str | None] = {}


def _in_window(validator: Validator, lowest: int, highest: int) -> bool:
    return validator.oldest <= lowest and highest <= validator.newest


# Line protocol ---------------------------------------------------------------------------------
def line_protocol(
    body: bytes,
    unit: int,
    default_ts: int,
    cfg: FastConfig,
    validator: Validator,
    ident: Tags,
    max_points: int,
) -> tuple[bytes, int] | None:
    """The lines to store for a /write body (timestamps in ``unit`` ns, ``default_ts`` for a
    line without one) and their count, or None: take the exact path."""
    if not body or not cfg.measurements or tag_problem(ident):
        return None
    if any(c in body for c in _LP_SPECIAL):
        return None
    data = body if body[-1:] == b"\n" else body + b"\n"
    # Every line "key fields timestamp" (or "key fields"): its two (or one) spaces and its
    # newline are all the separators of the body, in this order.
    separators = data.translate(None, _NOT_SEPARATOR)
    if separators == _THREE * (len(separators) // 3):
        width = 3
    elif separators == _TWO * (len(separators) // 2):
        width = 2
    else:
        return None
    n = len(separators) // width
    if n > max_points:
        return None
    tokens = data.split()  # no other whitespace (_LP_SPECIAL), one separator at a time
    if len(tokens) != width * n:
        return None
    keys, fss = tokens[0::width], tokens[1::width]
    tss = tokens[2::width] if width == 3 else None
    del tokens
    longest_line = max(map(len, keys)) + max(map(len, fss)) + (max(map(len, tss)) if tss else 0)
    if longest_line + 2 > _SHORT_LINE:  # lpparse reads longer lines on its slow path
        return None

    # Timestamps: digits only (no sign), 1-19 of them, within int64 and the window.
    if tss is not None:
        digits = b"".join(tss)
        if not digits.isdigit():  # bytes: ASCII digits only
            return None
        shortest, longest = min(map(len, tss)), max(map(len, tss))
        if shortest < 1 or longest > 19:
            return None
        if shortest == longest:  # the same number of digits: text order is number order
            lowest, highest = int(min(tss)), int(max(tss))
        else:
            lowest, highest = min(map(int, tss)), max(map(int, tss))
        if highest > _INT64_MAX or not _in_window(validator, lowest * unit, highest * unit):
            return None
    elif not _in_window(validator, default_ts, default_ts):
        return None

    # Series keys: each distinct one parsed and validated once, as the exact path does.
    measurement_of: dict[bytes, str] = {}

    def series(key: bytes) -> tuple[str, Tags] | None:
        try:
            parsed = _fast_key(key.decode())
        except UnicodeDecodeError:
            return None
        if parsed is None or parsed[0] not in cfg.measurements:
            return None
        measurement_of[key] = parsed[0]
        return parsed[0], tuple(parsed[1].items())

    prefixes = _prefixes(dict.fromkeys(keys), series, validator, ident)
    if prefixes is None:
        return None

    # Field sets, per measurement: one decode each (see lpparse: the same JSON reading).
    names = set(measurement_of.values())
    groups: Iterable[tuple[str, Sequence[bytes]]]
    if len(names) == 1:
        groups = [(names.pop(), fss)]
    else:
        per_line = list(map(measurement_of.__getitem__, keys))
        groups = [(m, list(compress(fss, map(m.__eq__, per_line)))) for m in names]
    for meas, sets in groups:
        m = cfg.measurements[meas]
        joined = b"\n".join(sets)
        as_json = (
            b'[{"'
            + joined.replace(b"=", b'":').replace(b",", b',"').replace(b"\n", b'},{"')
            + b"}]"
        )
        try:
            dicts = m.decoder.decode(as_json)
        except msgspec.MsgspecError:
            return None
        # Every '=' separates one field: fewer fields means a repeated one (InfluxDB would get
        # both, the exact path refuses the line).
        if len(dicts) != len(sets) or sum(map(len, dicts)) != joined.count(b"="):
            return None
        if not cfg.fields_ok(m, dicts):
            return None

    written = {k: v.encode() for k, v in prefixes.items()}
    changed = {k: v for k, v in written.items() if k != v}
    if unit == 1 and tss is not None and len(changed) <= _MAX_REPLACED:
        out = data[:-1]
        if changed:
            # Each line starts with its key and a space; no key has a backslash, so no other
            # key (nor a written one) can match there.
            out = b"\n" + out
            for key, prefix in changed.items():
                out = (b"\n" + prefix + b" ").join(out.split(b"\n" + key + b" "))
            out = out[1:]
        return out, n
    ts_text: Iterable[bytes]
    if tss is None:
        ts_text = repeat(b"%d" % default_ts)
    elif unit == 1:
        ts_text = tss
    else:
        ts_text = map(b"%d".__mod__, map(unit.__mul__, map(int, tss)))
    lines = map(b" ".join, zip(map(written.__getitem__, keys), fss, ts_text, strict=False))
    return b"\n".join(lines), n


# JSON ------------------------------------------------------------------------------------------
def json_batch(
    body: bytes, cfg: FastConfig, validator: Validator, ident: Tags, max_points: int
) -> tuple[bytes, int] | None:
    """The lines to store for a /api/v1/data body and their count, or None: take the exact
    path."""
    if cfg.json_decoder is None or tag_problem(ident):
        return None
    try:
        points = cfg.json_decoder.decode(body).points
    except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError):
        return None
    n = len(points)
    if not n or n > max_points:
        return None
    kinds = list(map(type, points))
    distinct_kinds = set(kinds)
    if cfg.placeholder in distinct_kinds:
        return None
    fields = list(map(_fields_of, points))  # structs: types and per-field bounds checked

    raw_ts = list(map(_timestamp_of, points))
    if set(map(type, raw_ts)) == {int} and min(raw_ts) >= _NS_FROM:
        ts = raw_ts
    else:  # None (now), or epoch seconds, ms, us (int, as the struct has it: no ValueError)
        ts = list(map(parse_timestamp, raw_ts, repeat(validator.now_ns)))
    if not _in_window(validator, min(ts), max(ts)):
        return None

    raw_tags = list(map(_tags_of, points))  # JSON text, as sent
    keys: list[tuple[type, bytes]]
    if len(distinct_kinds) == 1 and raw_tags.count(raw_tags[0]) == n:
        keys = [(kinds[0], bytes(raw_tags[0]))]  # one series (the bulk case)
    else:
        keys = list(zip(kinds, map(bytes, raw_tags), strict=True))
    meas_of = {m.json_point: m.name for m in cfg.measurements.values()}
    tag_count: dict[bytes, int] = {}  # tags text -> its tags

    def series(key: tuple[type, bytes]) -> tuple[str, Tags] | None:
        try:
            tags = _decode_tags(key[1])  # as PointIn has them (the last of a repeated key)
        except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError):
            return None
        tag_count[key[1]] = len(tags)
        return meas_of[key[0]], tuple(tags.items())

    prefixes = _prefixes(dict.fromkeys(keys), series, validator, ident)
    if prefixes is None:
        return None
    # [{"a":1.5,"b":2.0},{"a":...}] -> a=1.5,b=2.0 and so on: field names need no escaping and
    # hold none of '"', ':', '}', '{', nor do numbers. Fields absent (UNSET) are left out, so a
    # point without fields shows as {}. The order of the fields is the struct's.
    encoded = msgspec.json.encode(fields)
    if b"{}" in encoded:
        return None
    # A key written twice is read as its last value, which the exact path refuses. Each key of
    # the body is followed by a ':': as many ':' as keys read (points; measurement, fields,
    # timestamp, tags; each field and tag) means none was repeated.
    texts = [k[1] for k in keys]
    per_key = 1 if len(keys) > 1 else n
    keys_read = (
        1
        + 3 * n
        - raw_ts.count(None)
        + per_key * (len(texts) - texts.count(_NO_TAGS_TEXT))
        + per_key * sum(map(tag_count.__getitem__, texts))
        + encoded.count(b":")
    )
    if body.count(b":") != keys_read:
        return None
    encoded = encoded.translate(_JSON_TO_LP, b'"')
    sets = encoded[2:-2].split(b"},{")
    stamps = msgspec.json.encode(ts)[1:-1].split(b",")
    heads: Iterable[bytes]
    if len(keys) == 1:
        heads = repeat(prefixes[keys[0]].encode() + b" ")
    else:
        spaced = {k: v.encode() + b" " for k, v in prefixes.items()}
        heads = map(spaced.__getitem__, keys)
    return b"\n".join(map(b"%s%s %s".__mod__, zip(heads, sets, stamps, strict=False))), n
