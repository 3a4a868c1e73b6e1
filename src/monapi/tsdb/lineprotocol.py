"""Encoding validated points as InfluxDB line protocol (InfluxDB 1.x and VictoriaMetrics).

Measurement names, field names and tag keys are restricted on the way in to characters that need
no escaping (letters, digits, ``_ . -``). Tag values are free text: commas, spaces and equals
signs are escaped with a backslash. Line protocol has no way to write a tag value that ends in a
backslash (the backslash would escape the separator after it), so such a point is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import msgspec

from .base import Point, Rejection, Tags, Value, WriteBatch

_TAG_ESCAPES = str.maketrans({",": "\\,", " ": "\\ ", "=": "\\="})
_STRING_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"'})

_FLOAT_ONLY = {float}
_encode_json = msgspec.json.Encoder().encode

# A check a backend applies to every value before it is sent: None, or why it cannot be stored.
ValueCheck = Callable[[str, Value], str | None]


def escape_tag(value: str) -> str:
    """A tag key or value as line protocol writes it."""
    return value.translate(_TAG_ESCAPES)


def format_value(value: Value) -> str:
    """A field value as line protocol writes it: 1.5, 7i, true, "text"."""
    t = type(value)
    if t is float:
        return repr(value)
    if t is bool:
        return "true" if value else "false"
    if t is int:
        return f"{value}i"
    return '"' + str(value).translate(_STRING_ESCAPES) + '"'


def tag_problem(tags: Tags) -> str | None:
    """Why a tag set cannot be written as line protocol, or None."""
    for key, value in tags:
        if value.endswith("\\"):
            return f"tag {key!r}: a value ending in a backslash cannot be sent as line protocol"
    return None


def encode(
    batches: Sequence[WriteBatch],
    check: ValueCheck | None = None,
    identity: Callable[[WriteBatch], Tags] | None = None,
) -> tuple[bytes, list[Rejection], list[tuple[int, int]]]:
    """Line protocol for every point that can be sent, with nanosecond timestamps.

    Each point gets the identity tags ``host`` and ``server_id`` (or what ``identity`` returns),
    merged into its sorted tags. Returns the body, the points refused before sending (by
    ``check`` or for their tags), and the (batch, index) of every line in the body, in order.
    """
    lines, refused, sent = _encode_points(batches, check, identity)
    body = ("\n".join(lines) + "\n").encode() if lines else b""
    return body, refused, sent


def encode_mixed(
    batches: Sequence[WriteBatch], check: ValueCheck | None = None
) -> tuple[bytes, list[Rejection], list[tuple[int, int]], list[int]]:
    """:func:`encode` (with the default identity) for batches of which some carry pre-encoded
    ``lines`` (already checked, identity applied): those are sent as they are, without reading
    their points, ahead of the others. Returns the body, the points refused before sending, the
    (batch, index) of every other line sent, and the indexes of the pre-encoded batches."""
    ready: list[int] = []
    parts: list[bytes] = []
    others: list[int] = []
    for b, batch in enumerate(batches):
        if batch.lines is None:
            others.append(b)
        elif batch.lines.count:
            ready.append(b)
            parts.append(batch.lines.data)
    if not ready and len(others) == len(batches):
        body, refused, sent = encode(batches, check)
        return body, refused, sent, []
    lines, refused, sent = _encode_points([batches[b] for b in others], check, None)
    refused = [Rejection(others[r.batch], r.index, r.field, r.reason) for r in refused]
    sent = [(others[b], i) for b, i in sent]
    if lines:
        parts.append("\n".join(lines).encode())
    body = b"\n".join(parts) + b"\n" if parts else b""
    return body, refused, sent, ready


def _encode_points(
    batches: Sequence[WriteBatch],
    check: ValueCheck | None,
    identity: Callable[[WriteBatch], Tags] | None,
) -> tuple[list[str], list[Rejection], list[tuple[int, int]]]:
    lines: list[str] = []
    sent: list[tuple[int, int]] = []
    refused: list[Rejection] = []
    for b, batch in enumerate(batches):
        ident = identity(batch) if identity else default_identity(batch)
        prefixes: dict[tuple[str, Tags], str] = {}
        for i, p in enumerate(batch.points):
            key = (p.measurement, p.tags)
            prefix = prefixes.get(key)
            if prefix is None:
                problem = tag_problem(p.tags) or tag_problem(ident)
                if problem is not None:
                    refused.append(Rejection(b, i, None, problem))
                    continue
                prefix = _prefix(p, ident)
                prefixes[key] = prefix
            fields = _fields(p, b, i, check, refused)
            if fields is None:
                continue
            lines.append(f"{prefix} {fields} {p.ts}")
            sent.append((b, i))
    return lines, refused, sent


def default_identity(batch: WriteBatch) -> Tags:
    return (
        ("host", batch.hostname or f"server-{batch.server_id}"),
        ("server_id", str(batch.server_id)),
    )


def _prefix(p: Point, ident: Tags) -> str:
    return series_prefix(p.measurement, p.tags, ident)


def series_prefix(measurement: str, tags: Tags, ident: Tags) -> str:
    """The series key of a line: the measurement and the sorted tags, identity included."""
    merged = sorted((*tags, *ident))
    return measurement + "".join(f",{k}={escape_tag(v)}" for k, v in merged)


def _fields(
    p: Point, b: int, i: int, check: ValueCheck | None, refused: list[Rejection]
) -> str | None:
    if check is not None:
        for name, value in p.fields.items():
            problem = check(name, value)
            if problem is not None:
                # A point is atomic: one value the engine cannot store refuses the point.
                refused.append(Rejection(b, i, name, problem))
                return None
    fields = p.fields
    if set(map(type, fields.values())) == _FLOAT_ONLY:
        # The bulk case: every value a float. msgspec writes them (shortest round-trip text,
        # as repr does) in C; field names need no quoting, so the JSON object becomes line
        # protocol by swapping its punctuation.
        return _encode_json(fields)[2:-1].decode().replace('":', "=").replace(',"', ",")
    # format_value() inlined for floats and ints: this runs once per stored value.
    return ",".join(
        [
            f"{name}={value!r}"
            if type(value) is float
            else f"{name}={value}i"
            if type(value) is int
            else f"{name}={format_value(value)}"
            for name, value in fields.items()
        ]
    )
