r"""Parsing InfluxDB line protocol (the input side), with InfluxDB 1.x semantics.

A body is a sequence of points, one per line::

    measurement[,tag_key=tag_value...] field_key=field_value[,field_key=field_value...] [timestamp]

The rules follow ``models/points.go`` of influxdata/influxdb 1.x (``ParsePointsWithPrecision`` and
the scanners it calls, read in their 1.7/1.8 form; ``pkg/escape`` for unescaping). Where 1.x and
the documentation differ, 1.x wins. The few places where this parser deliberately differs from 1.x
are marked "Deviation", here and in the code.

Lines
    Points are separated by ``\n``, but the split respects quotes (1.x ``scanLine``): a string
    field value may contain raw newlines, so one point can span several lines. After the first
    unescaped space of a line, ``=`` and ``,`` outside quotes are counted, and a ``"`` opens or
    closes a string only where a value is expected (more ``=`` than ``,`` seen so far). A
    backslash skips the next character, so a backslash right before a newline joins the two
    lines, as in 1.x. Leading spaces, tabs and NULs are skipped; blank lines and lines whose first
    other character is ``#`` are comments. Deviation: a ``\r`` ending a line is dropped (CRLF
    bodies); 1.x keeps it and then rejects the point.

Names
    A separator (``,``, space, and ``=`` in tags and field keys) is escaped when the character
    before it is a backslash. 1.x looks at that one previous byte only, so ``\\,`` still escapes
    the comma. Unescaping removes a backslash only in front of a character that can be escaped
    there; any other backslash, ``\\`` included, is kept as it is:

    - measurement: ``\,`` ``\ `` ``\=`` ``\"`` (1.x ``Point.Name()`` uses ``escape.Unescape``); it
      ends at the first unescaped comma (tags follow) or space (fields follow);
    - tag keys and values: ``\,`` ``\ `` ``\=`` (``unescapeTag``);
    - field keys: ``\,`` ``\ `` ``\=`` ``\"`` (``escape.AppendUnescaped``). A separator right
      after two (or four...) backslashes in a field key is "invalid field format": there 1.x
      ``scanFields`` reads backslashes in pairs but the field iterator does not, and 1.x rejects
      such a key or stores a broken one.

    Tag keys and values must not be empty. A tag key cannot start with ``=``; a tag value may (a
    1.x quirk, kept); a later unescaped ``=`` in a tag value is "invalid tag format". A repeated
    tag key is "duplicate tags". Measurement plus tags may not exceed 65535 bytes, nor that plus 4
    plus any field key (``MaxKeyLength``). Deviation: a repeated field key is "duplicate fields"
    (1.x keeps both values in the point, and the last one wins where it is stored: a value the
    client sent would be dropped without a word).

Field values
    - float: ``-?(digits[.digits?] | .digits)([eE][+-]?digits)?``, e.g. ``1``, ``-1.5``, ``.5``,
      ``1.``, ``1e10``, ``1.5E-3``. No leading ``+``, no ``NaN`` or ``Inf``; a value beyond the
      float64 range is an error.
    - integer ``12i``, ``-12i`` (int64); unsigned ``12u`` (uint64, no sign). Deviation: 1.x OSS
      refuses ``u`` values unless uint64 support is enabled in the build
      (``enableUint64Support``); this parser returns them as :class:`Unsigned` and leaves the
      choice to the caller.
    - boolean: ``t`` ``T`` ``true`` ``True`` ``TRUE`` ``f`` ``F`` ``false`` ``False`` ``FALSE``.
      Any other unquoted value that does not start like a number (``0-9 . - N n``) is read as a
      boolean, so ``+1``, ``Inf`` or ``abc`` are reported as "invalid boolean", as 1.x does.
    - string: double-quoted; ``\"`` is a quote and ``\\`` a backslash, any other backslash stays.
      Deviation: text right after the closing quote (``x="a"b``) is "invalid field format"; 1.x
      accepts it and stores a mangled string.

Sections are separated by one or more spaces (1.x also skips tabs and NULs before the field set
and the timestamp). The optional timestamp is a decimal integer, possibly negative, that fits in
int64. It is returned as written: scaling it by the request's precision and the 1.x time-range
check (``MinInt64 + 2 .. MaxInt64 - 1`` ns) are the caller's. Only spaces may follow it.

Errors
    Reasons use 1.x's words, with the field or tag concerned: "missing measurement", "missing
    fields", "missing tag key", "missing tag value", "invalid tag format", "duplicate tags",
    "duplicate fields" (not in 1.x), "max key length exceeded", "missing field key", "missing
    field value", "unbalanced quotes", "invalid field format", "invalid number", "invalid
    boolean", "value out of range" (1.x: "invalid float" or "unable to parse integer ...: value
    out of range"), "invalid timestamp" (1.x: "bad timestamp" or a strconv error), "unexpected
    text after the timestamp" (1.x: "point is invalid"), and "invalid UTF-8": bytes that are not
    UTF-8 make the point they are in an error, the other points of the body are still parsed
    (1.x does not check UTF-8 here).

Not checked here, as in the 1.x parser: the shard-level rules (a tag or field named ``time``,
field type conflicts, ``validate-keys``).

Speed: a line without backslashes and double quotes (the bulk case) takes a fast path made of
``str.split`` and one msgspec JSON decode of its field set (floats, integers, booleans), or a
loop over the values when JSON cannot represent them exactly. A line with a string field but a
plain series key takes its key from the fast path and the rest from the character-level parser,
which reads every other line and words every error.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import msgspec

__all__ = ["LineError", "ParsedLine", "Unsigned", "parse"]


class Unsigned(int):
    """A field value written with the 'u' suffix (InfluxDB unsigned integer)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Unsigned({int(self)})"

    def __str__(self) -> str:
        return int.__repr__(self)


FieldValue = bool | int | float | str


@dataclass(slots=True)
class ParsedLine:
    """One point. Points of the same series in one body may share one tags dict: read-only."""

    measurement: str
    tags: dict[str, str]
    fields: dict[str, FieldValue]  # int values may be Unsigned
    timestamp: int | None  # the raw integer as written (in the request's precision), None if absent
    lineno: int  # 1-based line number in the body where the point starts


@dataclass(slots=True)
class LineError:
    lineno: int
    line: str  # the offending line as sent, without the line ending, at most 200 characters
    reason: str


_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_UINT64_MAX = 2**64 - 1
_MAX_KEY = 65535  # models.MaxKeyLength, in bytes
# A line this long or shorter cannot exceed _MAX_KEY, even at 4 bytes per character.
_SHORT_LINE = (_MAX_KEY - 4) // 4 - 1
_INF = math.inf
_LINE_SHOWN = 200

_BOOLS: dict[str, bool] = {
    "t": True,
    "T": True,
    "true": True,
    "True": True,
    "TRUE": True,
    "f": False,
    "F": False,
    "false": False,
    "False": False,
    "FALSE": False,
}
_NUMBER_START = frozenset("0123456789.-Nn")  # 1.x scanFields: these values go to scanNumber
_FLOAT_START = frozenset("0123456789.-")
_FLOAT_END = frozenset("0123456789.")

# Slow path.
_COMMA_SPACE = re.compile(r"[, ]")
_NAME_END = re.compile(r"[, =]")
_SPACE_NEWLINE = re.compile(r"[ \n]")
_STRING = re.compile(r'"([^"\\]*(?:\\[\s\S][^"\\]*)*)"')  # any backslash pair is skipped
_STRING_ESCAPE = re.compile(r'\\([\\"])')
_FLOAT = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_INT = re.compile(r"-?[0-9]+")
_UINT = re.compile(r"[0-9]+")
_TIMESTAMP = re.compile(r"-?[0-9]*")
# In a field key, 1.x scanFields reads backslashes in pairs while the key is then cut with scanTo
# (previous byte only): a separator after an even run of backslashes is read both ways.
_AMBIGUOUS_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)+[, =]")
_SURROGATE = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8 (surrogateescape)

# Fast path: a field set read as JSON by msgspec, in C. Every '=' becomes '":' and every ','
# becomes ',"' (integers first lose their 'i'). This is exact when the line has no '"', '\\' or
# JSON whitespace and the field set no ",:". The only quotes are then the inserted ones; a key can
# only open right after '{' or ',' (an inserted quote follows each) and must close on a quote
# followed by ':', which only an '=' gives (no ':' follows a comma); values must be JSON numbers
# or true/false (typed decoders), never strings. So the keys are exactly the texts before each
# '=' and the values the texts after it, and a JSON number or true/false is a valid line-protocol
# value of the same type, but for the caveats handled in _fast_fields (-0, integers).
_FLOAT_FIELDS = msgspec.json.Decoder(dict[str, float | bool])
_INT_FIELDS = msgspec.json.Decoder(dict[str, int])
_MIXED_FIELDS = msgspec.json.Decoder(dict[str, int | float | bool])
_INTEGRAL_FLOAT = re.compile(r"=-?[0-9]+(?:,|$)")  # a float the JSON decoder would read as an int


class _Invalid(Exception):
    """Why a value cannot be parsed (slow path only)."""


def parse(body: bytes) -> tuple[list[ParsedLine], list[LineError]]:
    """Parse a line-protocol body into its points and the errors of the lines that failed.

    Each point is parsed on its own: good points are returned even when others fail (InfluxDB
    writes them and answers "partial write"). A point containing bytes that are not UTF-8 is
    reported as "invalid UTF-8" (one error per point, the rest of the body is parsed). Points of
    the same series (same series key text) may share one tags dict; do not mutate it. Never raises.
    """
    return _parse(body, fast=True)


def _parse(body: bytes, fast: bool) -> tuple[list[ParsedLine], list[LineError]]:
    try:
        text = body.decode()
        bad_utf8 = False
    except UnicodeDecodeError:
        text = body.decode("utf-8", "surrogateescape")
        bad_utf8 = True
    raw = text.split("\n")
    # Only quotes and backslashes can make a point span lines or need the slow path.
    special = '"' in text or "\\" in text
    lines: Iterable[tuple[int, str]] = _logical_lines(raw) if special else enumerate(raw, 1)
    # Characters the fast path must not meet: JSON whitespace and what 1.x skips between sections.
    odd = "\t" in text or "\r" in text or "\x00" in text
    # What the JSON decoding of a field set must look for (see _FLOAT_FIELDS), checked per line
    # only when the body contains it: a key ending at a comma, an empty key, the integer -0.
    comma_colon = ",:" in text
    empty_key = " =" in text or ",=" in text
    minus_zero = "=-0" in text

    points: list[ParsedLine] = []
    errors: list[LineError] = []
    # Measurement and tags of each series key seen by the fast path (None: not for it). Its
    # points share the tags dict: the caller validates it once per series.
    keys: dict[str, tuple[str, dict[str, str]] | None] = {}
    for lineno, text_line in lines:
        if not text_line:
            continue
        line = text_line[:-1] if text_line[-1] == "\r" else text_line
        if not line:
            continue
        s = line
        if s[0] in " \t\x00#":
            s = s.lstrip(" \t\x00")
            if not s or s[0] == "#":
                continue
        if bad_utf8 and _SURROGATE.search(s):
            errors.append(LineError(lineno, _shown(line), "invalid UTF-8"))
            continue
        try:
            if fast and len(s) <= _SHORT_LINE:
                if not (special and ('"' in s or "\\" in s)) and not (
                    odd and ("\t" in s or "\r" in s or "\x00" in s)
                ):
                    # Fast path: what it does not plainly recognise as valid goes to the slow one.
                    parts = s.split(" ")
                    if len(parts) == 3:
                        key, fs, tss = parts
                        ts = (
                            int(tss) if len(tss) <= 19 and tss.isdigit() and tss.isascii() else None
                        )
                        if ts is None or ts > _INT64_MAX:
                            fs = ""
                    elif len(parts) == 2:
                        key, fs = parts
                        ts = None
                    else:
                        fs = ""
                    if fs:
                        if key in keys:
                            parsed_key = keys[key]
                        else:
                            parsed_key = keys[key] = _fast_key(key)
                        if parsed_key is not None:
                            fields = _fast_fields(fs, comma_colon, empty_key, minus_zero)
                            if fields is not None:
                                measurement, tags = parsed_key
                                points.append(ParsedLine(measurement, tags, fields, ts, lineno))
                                continue
                # A plain series key (no backslash) that the fast path can read: only the rest
                # of the line needs the slow path (string fields, mostly).
                sp = s.find(" ")
                if sp > 0 and s.find("\\", 0, sp) < 0:
                    key = s[:sp]
                    if key in keys:
                        parsed_key = keys[key]
                    else:
                        parsed_key = keys[key] = _fast_key(key)
                    if parsed_key is not None:
                        rest = _slow_fields(s, sp, 0)
                        if isinstance(rest, str):
                            errors.append(LineError(lineno, _shown(line), rest))
                        else:
                            measurement, tags = parsed_key
                            points.append(ParsedLine(measurement, tags, *rest, lineno))
                        continue
            result = _slow_point(s)
        except Exception as exc:  # a bug here must not fail the whole request
            result = f"internal error: {type(exc).__name__}"
        if isinstance(result, str):
            errors.append(LineError(lineno, _shown(line), result))
        else:
            points.append(ParsedLine(*result, lineno))
    return points, errors


def _shown(line: str) -> str:
    if _SURROGATE.search(line):
        line = line.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if len(line) > _LINE_SHOWN:
        return line[: _LINE_SHOWN - 3] + "..."
    return line


def _logical_lines(raw: list[str]) -> Iterator[tuple[int, str]]:
    """(line number, text) of each point's line, joining lines as 1.x scanLine does."""
    i = 0
    n = len(raw)
    while i < n:
        line = raw[i]
        if '"' not in line and "\\" not in line:
            yield i + 1, line
            i += 1
            continue
        start = i
        fields = quoted = False
        equals = commas = 0
        while True:
            segment = raw[i]
            if "\\" not in segment:
                # No escapes: jump from quote to quote.
                pos = 0
                if not fields:
                    pos = segment.find(" ")
                    fields = pos >= 0
                more = False
                while fields:
                    q = segment.find('"', pos)
                    if quoted:
                        if q < 0:
                            more = True
                            break
                        quoted = False
                    else:
                        end = len(segment) if q < 0 else q
                        equals += segment.count("=", pos, end)
                        commas += segment.count(",", pos, end)
                        if q < 0:
                            break
                        quoted = equals > commas
                    pos = q + 1
            else:
                more = False
                j = 0
                m = len(segment)
                while j < m:
                    c = segment[j]
                    if c == "\\":
                        if j + 1 == m:
                            more = True  # the backslash escapes the newline
                            break
                        j += 2
                        continue
                    if c == " ":
                        fields = True
                    elif fields:
                        if c == '"':
                            if equals > commas:
                                quoted = not quoted
                        elif not quoted:
                            if c == "=":
                                equals += 1
                            elif c == ",":
                                commas += 1
                    j += 1
                more = more or quoted
            # 1.x drops a newline that ends the body from the block, so a final empty line
            # is never joined.
            if not more or i + 1 >= n or (i + 2 == n and not raw[i + 1]):
                break
            i += 1
        yield start + 1, "\n".join(raw[start : i + 1])
        i += 1


def _fast_fields(
    fs: str, comma_colon: bool, empty_key: bool, minus_zero: bool
) -> dict[str, Any] | None:
    """The fields of a field set without backslashes, quotes, spaces, tabs, CRs or NULs, or None
    if they are anything but plainly valid."""
    fields: dict[str, Any] | None = None
    if not (comma_colon and ",:" in fs):
        # Integers lose their 'i' to become JSON integers; a key cannot contain a comma, so every
        # "i," ends a value.
        ints = fs.count("i,")
        if fs[-1] == "i":
            ints += 1
            fs_json = fs.replace("i,", ",")[:-1]
        else:
            fs_json = fs.replace("i,", ",") if ints else fs
        fs_json = '{"' + fs_json.replace("=", '":').replace(",", ',"') + "}"
        try:
            if not ints:
                # msgspec reads the JSON integer -0 as 0.0, not -0.0.
                if not (minus_zero and ("=-0," in fs or fs[-3:] == "=-0")):
                    fields = _FLOAT_FIELDS.decode(fs_json)
            elif ints == fs.count("="):
                fields = _INT_FIELDS.decode(fs_json)
                if max(fields.values()) > _INT64_MAX or min(fields.values()) < _INT64_MIN:
                    fields = None
            elif not _INTEGRAL_FLOAT.search(fs):
                # No float is written as an integer, so the JSON integers are exactly the values
                # that had an 'i' if there are as many of them.
                fields = _MIXED_FIELDS.decode(fs_json)
                values = fields.values()
                if (
                    list(map(type, values)).count(int) != ints
                    or max(values) > _INT64_MAX
                    or min(values) < _INT64_MIN
                ):
                    fields = None
        except msgspec.MsgspecError:
            fields = None
        # Each '=' separates one field (no escapes, no strings): fewer fields is a repeated key.
        if fields is not None and not (empty_key and "" in fields) and len(fields) == fs.count("="):
            return fields

    # Mixed types: one value at a time.
    mixed: dict[str, FieldValue] = {}
    ascii_fs = fs.isascii()
    for item in fs.split(","):
        k, _, v = item.partition("=")
        if not k or not v:
            return None
        last = v[-1]
        value: FieldValue
        if last in _FLOAT_END:
            # float() also takes '+1', '1_0', 'inf', whitespace and non-ASCII digits.
            if v[0] not in _FLOAT_START or "_" in v or not (ascii_fs or v.isascii()):
                return None
            try:
                value = float(v)
            except ValueError:
                return None
            if not -_INF < value < _INF:
                return None
        elif last == "i":
            d = v[:-1]
            if not (d.isdigit() or (d[:1] == "-" and d[1:].isdigit())):
                return None
            if len(d) > 20 or not (ascii_fs or d.isascii()):
                return None
            value = int(d)
            if not _INT64_MIN <= value <= _INT64_MAX:
                return None
        elif last == "u":
            d = v[:-1]
            if not d.isdigit() or len(d) > 20 or not (ascii_fs or d.isascii()):
                return None
            value = int(d)
            if value > _UINT64_MAX:
                return None
            value = Unsigned(value)
        else:
            b = _BOOLS.get(v)
            if b is None:
                return None
            value = b
        if k in mixed:
            return None  # a repeated key: the slow path says so
        mixed[k] = value
    return mixed


def _fast_key(key: str) -> tuple[str, dict[str, str]] | None:
    measurement, *pairs = key.split(",")
    if not measurement:
        return None
    tags: dict[str, str] = {}
    for pair in pairs:
        k, _, v = pair.partition("=")
        if not k or not v or "=" in v:
            return None
        tags[k] = v
    if len(tags) != len(pairs):
        return None  # duplicate tags
    return measurement, tags


def _slow_point(
    s: str,
) -> tuple[str, dict[str, str], dict[str, FieldValue], int | None] | str:
    """The point of one line (after leading whitespace), or why it is invalid."""
    n = len(s)
    long_line = n > _SHORT_LINE

    # Measurement (1.x scanMeasurement): any first character but a comma.
    if s[0] == ",":
        return "missing measurement"
    i = _scan(s, 1, _COMMA_SPACE)
    if i == n:
        return "missing fields"
    measurement = s[:i]

    # Tags (1.x scanTagsKey, scanTagsValue).
    raw_tags: dict[str, str] = {}
    duplicate = None
    if s[i] == ",":
        while True:
            i += 1
            if i >= n or s[i] in " ,=":
                return "missing tag key"
            k_end = _scan(s, i + 1, _NAME_END)
            k = s[i:k_end]
            if k_end == n or s[k_end] != "=":
                return f"missing tag value: tag {_show(_unescape_tag(k))}"
            j = k_end + 1
            if j >= n or s[j] in ", ":
                return f"missing tag value: tag {_show(_unescape_tag(k))}"
            # The first character of a value is not checked for '=' by 1.x.
            v_end = _scan(s, j + 1, _NAME_END)
            if v_end == n:
                return "missing fields"
            if s[v_end] == "=":
                return f"invalid tag format: tag {_show(_unescape_tag(k))}"
            if k in raw_tags and duplicate is None:
                duplicate = k
            raw_tags[k] = s[j:v_end]
            i = v_end
            if s[i] == " ":
                break
        if duplicate is not None:
            return f"duplicate tags: {_show(_unescape_tag(duplicate))}"
    key_bytes = 0
    if long_line:
        key_bytes = len(s[:i].encode())
        if key_bytes > _MAX_KEY:
            return f"max key length exceeded: {key_bytes} > {_MAX_KEY}"

    rest = _slow_fields(s, i, key_bytes)
    if isinstance(rest, str):
        return rest
    if "\\" in measurement:
        measurement = _unescape_measurement(measurement)
    if raw_tags and "\\" in s:
        tags = {_unescape_tag(k): _unescape_tag(v) for k, v in raw_tags.items()}
    else:
        tags = raw_tags
    return measurement, tags, *rest


def _slow_fields(s: str, i: int, key_bytes: int) -> tuple[dict[str, FieldValue], int | None] | str:
    """The fields and timestamp of a line from the space that ends its series key at i (whose
    size in bytes is key_bytes if the line is long), or why they are invalid."""
    n = len(s)
    long_line = n > _SHORT_LINE

    # Fields (1.x scanFields, scanNumber, scanBoolean, then the field iterator).
    while i < n and s[i] in " \t\x00":  # 1.x skipWhitespace
        i += 1
    if i == n:
        return "missing fields"
    fields: dict[str, FieldValue] = {}
    comma_in_key = False
    repeated = None
    while True:
        m = _NAME_END.search(s, i)  # _scan(s, i, _NAME_END), inlined for the common case
        k_end = n if m is None else m.start()
        if k_end < n and s[k_end - 1] == "\\":
            k_end = _scan(s, k_end + 1, _NAME_END)
        if k_end == n or s[k_end] != "=":
            if k_end < n and s[k_end] == ",":
                # 1.x counts this comma, keeps scanning (a later bad value is reported first)
                # and ends with "invalid field format".
                comma_in_key = True
                i = k_end + 1
                continue
            return f"invalid field format: {_show(_unescape_field_key(s[i:k_end]))} has no value"
        if k_end == i:
            return "missing field key"
        raw_key = s[i:k_end]
        if "\\\\" in raw_key and _AMBIGUOUS_ESCAPE.search(raw_key):
            return f"invalid field format: field key {_show(raw_key)}"
        if long_line:
            size = key_bytes + 4 + len(raw_key.encode())
            if size > _MAX_KEY:
                return f"max key length exceeded: {size} > {_MAX_KEY}"
        name = _unescape_field_key(raw_key) if "\\" in raw_key else raw_key
        j = k_end + 1
        if j == n or s[j] in ", ":
            return f"missing field value: field {_show(name)}"
        first = s[j]
        value: FieldValue
        if first == '"':
            m = _STRING.match(s, j)
            if m is None:
                return f"unbalanced quotes: field {_show(name)}"
            e = m.end()
            if e < n and s[e] not in ", ":
                # Deviation: 1.x accepts this and keeps a mangled string.
                return f"invalid field format: text after the closing quote of field {_show(name)}"
            value = m.group(1)
            if "\\" in value:
                value = _STRING_ESCAPE.sub(r"\1", value)
        else:
            m = _COMMA_SPACE.search(s, j)  # an unquoted value ends at a comma or a space
            e = n if m is None else m.start()
            token = s[j:e]
            if first in _NUMBER_START:
                # The common cases inline, the others (and every error) through _number().
                last = token[-1]
                if last in _FLOAT_END and _FLOAT.fullmatch(token):
                    value = float(token)
                    if not -_INF < value < _INF:
                        return f"value out of range: field {_show(name)}"
                elif last == "i" and len(token) < 20 and _INT.fullmatch(token, 0, len(token) - 1):
                    value = int(token[:-1])  # up to 18 digits and a sign: always an int64
                else:
                    try:
                        value = _number(token)
                    except _Invalid as exc:
                        return f"{exc}: field {_show(name)}"
            else:
                b = _BOOLS.get(token)
                if b is None:
                    return f"invalid boolean: field {_show(name)}"
                value = b
        if repeated is None and name in fields:
            repeated = name
        fields[name] = value
        if e == n or s[e] == " ":
            i = e
            break
        i = e + 1
    if comma_in_key:
        return "invalid field format: a field key contains an unescaped comma"
    if repeated is not None:  # Deviation (see the module docstring)
        return f"duplicate fields: {_show(repeated)}"

    # Timestamp (1.x scanTime, then parsePoint).
    while i < n and s[i] in " \t\x00":
        i += 1
    ts = None
    if i < n:
        m = _SPACE_NEWLINE.search(s, i)
        e = n if m is None else m.start()
        token = s[i:e]
        if token:  # empty only before a newline: 1.x then ignores the rest
            if not _TIMESTAMP.fullmatch(token) or token == "-":
                return "invalid timestamp"
            if len(token.lstrip("-").lstrip("0")) > 19:
                return "invalid timestamp: out of range"
            ts = int(token)
            if not _INT64_MIN <= ts <= _INT64_MAX:
                return "invalid timestamp: out of range"
            if s[e:].strip(" "):
                return "unexpected text after the timestamp"
    return fields, ts


def _scan(s: str, pos: int, separators: re.Pattern[str]) -> int:
    """The index of the first separator at or after pos (> 0) that does not follow a backslash,
    or len(s) (1.x scanTo: only the previous byte counts, so "\\\\," still escapes the comma)."""
    search = separators.search
    while (m := search(s, pos)) is not None:
        k = m.start()
        if s[k - 1] != "\\":
            return k
        pos = k + 1
    return len(s)


def _number(token: str) -> float | int:
    """A value starting like a number: float, 'i' integer or 'u' unsigned (1.x scanNumber)."""
    last = token[-1]
    if last in {"i", "u"}:
        digits = token[:-1]
        if not (_INT if last == "i" else _UINT).fullmatch(digits):
            raise _Invalid("invalid number")
        # Leading zeros are allowed (Go's ParseInt); count the rest before calling int().
        if len(digits.lstrip("-").lstrip("0")) > 20:
            raise _Invalid("value out of range")
        value = int(digits)
        if last == "i":
            if not _INT64_MIN <= value <= _INT64_MAX:
                raise _Invalid("value out of range")
            return value
        if value > _UINT64_MAX:
            raise _Invalid("value out of range")
        return Unsigned(value)
    if not _FLOAT.fullmatch(token):
        raise _Invalid("invalid number")
    x = float(token)
    if not -_INF < x < _INF:
        raise _Invalid("value out of range")  # 1.x: "invalid float"
    return x


def _unescape_measurement(s: str) -> str:
    # Sequential replaces equal 1.x's single left-to-right pass: none can create another match.
    return s.replace("\\,", ",").replace("\\ ", " ").replace("\\=", "=").replace('\\"', '"')


def _unescape_tag(s: str) -> str:
    if "\\" not in s:
        return s
    return s.replace("\\,", ",").replace("\\ ", " ").replace("\\=", "=")


def _unescape_field_key(s: str) -> str:
    return s.replace("\\,", ",").replace("\\ ", " ").replace("\\=", "=").replace('\\"', '"')


def _show(name: str) -> str:
    """A name for an error message: quoted, and cut if long."""
    if len(name) > 40:
        name = name[:37] + "..."
    return repr(name)
