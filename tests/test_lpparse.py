"""The line-protocol parser (monapi.lpparse): InfluxDB 1.x rules, one example per rule, then
properties: real serializers round-trip through it, it never raises, and its fast path agrees
with its character-level one."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from influxdb.line_protocol import make_line
from influxdb_client import Point

from monapi import lpparse
from monapi.lpparse import LineError, ParsedLine, Unsigned, parse
from monapi.tsdb.lineprotocol import escape_tag, format_value

INT64_MIN, INT64_MAX, UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1


def one(line: str) -> ParsedLine:
    points, errors = parse(line.encode())
    assert errors == []
    assert len(points) == 1
    return points[0]


def reason(line: str) -> str:
    points, errors = parse(line.encode())
    assert points == []
    assert len(errors) == 1
    return errors[0].reason


def typed(fields: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Fields with their exact types (1 == 1.0 == True otherwise), -0.0 kept apart from 0.0."""
    return [(k, type(v).__name__, repr(v)) for k, v in fields.items()]


def canonical(result: tuple[list[ParsedLine], list[LineError]]) -> object:
    points, errors = result
    return (
        [(p.measurement, p.tags, typed(p.fields), p.timestamp, p.lineno) for p in points],
        errors,
    )


# --- the basics ---------------------------------------------------------------------------------


def test_a_typical_point() -> None:
    p = one("cpu,host=a,cpu=cpu0 usage_user=1.5,usage_system=2.25 1700000000000000000")
    assert p == ParsedLine(
        "cpu",
        {"host": "a", "cpu": "cpu0"},
        {"usage_user": 1.5, "usage_system": 2.25},
        17 * 10**17,
        1,
    )


def test_every_value_type() -> None:
    p = one('m f=1.5,i=-7i,u=7u,b=true,s="text" 5')
    assert typed(p.fields) == [
        ("f", "float", "1.5"),
        ("i", "int", "-7"),
        ("u", "Unsigned", "Unsigned(7)"),
        ("b", "bool", "True"),
        ("s", "str", "'text'"),
    ]


def test_unsigned_is_an_int() -> None:
    u = one("m u=18446744073709551615u").fields["u"]
    assert isinstance(u, Unsigned)
    assert isinstance(u, int)
    assert u == UINT64_MAX
    assert repr(u) == "Unsigned(18446744073709551615)"


def test_points_of_one_series_share_their_tags_dict() -> None:
    # A documented contract: callers validate the tags once per series (by identity).
    points, _ = parse(b'm,t=a v=1 1\nm,t=a v=2 2\nm,t=a s="x" 3\nm,t=b v=1\n')
    assert points[0].tags is points[1].tags is points[2].tags
    assert points[3].tags == {"t": "b"}


def test_no_tags_and_no_timestamp() -> None:
    p = one("m v=1")
    assert (p.measurement, p.tags, p.fields, p.timestamp) == ("m", {}, {"v": 1.0}, None)


@pytest.mark.parametrize("ts", [0, -1, -1700000000, INT64_MIN, INT64_MAX, 17 * 10**17])
def test_timestamps_are_returned_as_written(ts: int) -> None:
    assert one(f"m v=1 {ts}").timestamp == ts


def test_leading_zeros_in_a_timestamp() -> None:
    assert one("m v=1 000000000000000000000042").timestamp == 42


# --- lines --------------------------------------------------------------------------------------


def test_comments_blank_lines_and_whitespace_are_skipped() -> None:
    body = b"# a comment\n\n   \n\t# indented comment\n  m v=1\n\t\x00m2 v=2\n#m3 v=3\n"
    points, errors = parse(body)
    assert errors == []
    assert [(p.measurement, p.lineno) for p in points] == [("m", 5), ("m2", 6)]


def test_crlf_line_endings() -> None:
    points, errors = parse(b"m v=1 1\r\nm v=2\r\n\r\nm v=3i 3\r\n")
    assert errors == []
    assert [(p.fields["v"], p.timestamp, p.lineno) for p in points] == [
        (1.0, 1, 1),
        (2.0, None, 2),
        (3, 3, 4),
    ]


def test_a_body_without_a_final_newline() -> None:
    points, _ = parse(b"m v=1\nm v=2")
    assert [p.lineno for p in points] == [1, 2]


def test_empty_bodies() -> None:
    assert parse(b"") == ([], [])
    assert parse(b"\n\n\r\n") == ([], [])


def test_a_string_may_span_lines_and_line_numbers_follow() -> None:
    body = b'm s="one\ntwo, three=3\n" 1\nm v=2\n'
    points, errors = parse(body)
    assert errors == []
    assert [(p.fields, p.lineno) for p in points] == [
        ({"s": "one\ntwo, three=3\n"}, 1),
        ({"v": 2.0}, 4),
    ]


def test_an_unclosed_string_swallows_the_rest_of_the_body() -> None:
    # As in 1.x: the quote is still open at the end, so the block runs to the end of the body.
    points, errors = parse(b'm v=1\nm s="open\nm v=2\n')
    assert [p.lineno for p in points] == [1]
    assert errors == [LineError(2, 'm s="open\nm v=2', "unbalanced quotes: field 's'")]


def test_a_backslash_before_a_newline_joins_the_lines() -> None:
    # 1.x scanLine skips the byte after a backslash, newline included.
    points, errors = parse(b"m,t=a\\\nb v=1\nm v=2\n")
    assert errors == []
    assert [(p.tags, p.lineno) for p in points] == [({"t": "a\\\nb"}, 1), ({}, 3)]


def test_quotes_outside_field_values_do_not_open_strings() -> None:
    # A quote in a measurement, tag or field key is an ordinary character.
    points, errors = parse(b'm"x,t"=v"1 k"ey=1\nm v=2\n')
    assert errors == []
    assert [(p.measurement, p.tags, p.fields) for p in points] == [
        ('m"x', {'t"': 'v"1'}, {'k"ey': 1.0}),
        ("m", {}, {"v": 2.0}),
    ]


def test_a_comment_line_follows_the_same_quote_rule() -> None:
    # 1.x splits lines before it looks for '#': a comment with an open string runs on.
    points, errors = parse(b'# x="open\nm v=1"\nm v=2\n')
    assert errors == []
    assert [p.lineno for p in points] == [3]


@pytest.mark.parametrize(
    "line",
    ["m  v=1   5", "m,t=a   v=1 5  ", "m \tv=1 \t5", "m \t\x00v=1", "m v=1 ", "m v=1 5 "],
)
def test_sections_may_be_separated_by_more_whitespace(line: str) -> None:
    # 1.x skipWhitespace (spaces, tabs, NULs) before the field set and the timestamp.
    p = one(line)
    assert (p.measurement, p.fields) == ("m", {"v": 1.0})


def test_a_tab_does_not_end_a_measurement() -> None:
    assert reason("m\tv=1") == "missing fields"
    assert one("m\tx v=1").measurement == "m\tx"


# --- names and escapes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "measurement"),
    [
        (r"a\,b v=1", "a,b"),
        (r"a\ b v=1", "a b"),
        (r"a\=b v=1", "a=b"),  # 1.x Point.Name() unescapes '=' and '"' too
        (r"a\"b v=1", 'a"b'),
        (r"a=b v=1", "a=b"),
        (r'a"b v=1', 'a"b'),
        (r"a\b v=1", r"a\b"),  # other backslashes are kept
        (r"a\\b v=1", r"a\\b"),  # a double backslash is not an escape in 1.x
        (r"a\\,b v=1", r"a\,b"),  # the comma follows a backslash: escaped
        (r"\,a v=1", ",a"),
        (r"\ a v=1", " a"),
        ("ü😀 v=1", "ü😀"),
        ("m#1 v=1", "m#1"),
    ],
)
def test_measurement_escapes(line: str, measurement: str) -> None:
    assert one(line).measurement == measurement


@pytest.mark.parametrize(
    ("line", "tags"),
    [
        (r"m,a\,b=c\,d v=1", {"a,b": "c,d"}),
        (r"m,a\ b=c\ d v=1", {"a b": "c d"}),
        (r"m,a\=b=c\=d v=1", {"a=b": "c=d"}),
        (r"m,a\"b=c\"d v=1", {'a\\"b': 'c\\"d'}),  # '"' is not a tag escape
        (r"m,a\\b=c\\d v=1", {"a\\\\b": "c\\\\d"}),
        (r"m,a\xb=c\y v=1", {"a\\xb": "c\\y"}),
        (r"m,t=a\\,u v=1", {"t": "a\\,u"}),  # the comma follows a backslash
        ("m,t==a v=1", {"t": "=a"}),  # 1.x does not check a value's first character for '='
        ("m,t=ü😀,ü=x v=1", {"t": "ü😀", "ü": "x"}),
        ("m,b=2,a=1 v=1", {"b": "2", "a": "1"}),
    ],
)
def test_tag_escapes(line: str, tags: dict[str, str]) -> None:
    assert one(line).tags == tags


@pytest.mark.parametrize(
    ("line", "key"),
    [
        (r"m a\,b=1", "a,b"),
        (r"m a\ b=1", "a b"),
        (r"m a\=b=1", "a=b"),
        (r"m a\"b=1", 'a"b'),
        (r'm a"b=1', 'a"b'),
        (r"m a\xb=1", r"a\xb"),
        (r"m \ =1", " "),
        (r"m \,=1", ","),
        ("m #=1", "#"),
    ],
)
def test_field_key_escapes(line: str, key: str) -> None:
    assert list(one(line).fields) == [key]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (r'"a\"b"', 'a"b'),
        (r'"a\\b"', "a\\b"),
        (r'"a\\\"b"', 'a\\"b'),
        (r'"a\nb"', "a\\nb"),  # other backslashes stay
        (r'"a\b"', "a\\b"),
        (r'"trailing\\"', "trailing\\"),
        ('""', ""),
        ('" , = "', " , = "),
        ('"ü😀"', "ü😀"),
        ('"a\nb"', "a\nb"),
        ('"=1,b=2"', "=1,b=2"),
    ],
)
def test_string_values(value: str, text: str) -> None:
    assert one(f"m s={value},n=1i 7").fields == {"s": text, "n": 1}


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("m a=1,b=2,a=3i", "a"),  # mixed types: the fast path's loop
        ("m a=1,b=2,a=3", "a"),  # floats: the fast path's JSON decoding
        ("m a=1i,a=2i 5", "a"),
        ('m s="x",n=1,s="y"', "s"),  # strings: the slow path
        (r"m a\ b=1,a\ b=2", "a b"),  # escapes: the slow path, keys compared unescaped
        ("m b=2,a=1,b=2,a=1", "b"),  # the first key seen twice, even with the same value
    ],
)
def test_a_repeated_field_key_is_an_error(line: str, key: str) -> None:
    # Deviation: 1.x keeps the last value, silently dropping the other one the client sent.
    assert reason(line) == f"duplicate fields: {key!r}"
    assert reason(line.replace("m ", "m,t=a ", 1)) == f"duplicate fields: {key!r}"


# --- values -------------------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["t", "T", "true", "True", "TRUE"])
def test_true_spellings(spelling: str) -> None:
    assert one(f"m b={spelling}").fields["b"] is True


@pytest.mark.parametrize("spelling", ["f", "F", "false", "False", "FALSE"])
def test_false_spellings(spelling: str) -> None:
    assert one(f"m b={spelling}").fields["b"] is False


@pytest.mark.parametrize("spelling", ["tRUE", "TRue", "fAlse", "yes", "truee", "tru", "on", "1b"])
def test_other_booleans_are_invalid(spelling: str) -> None:
    assert reason(f"m b={spelling}").startswith(("invalid boolean", "invalid number"))


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0i", 0),
        ("-0i", 0),
        ("007i", 7),
        ("9223372036854775807i", INT64_MAX),
        ("-9223372036854775808i", INT64_MIN),
        ("0u", 0),
        ("18446744073709551615u", UINT64_MAX),
        ("000000000000000000000000018446744073709551615u", UINT64_MAX),
    ],
)
def test_integers(text: str, value: int) -> None:
    got = one(f"m v={text},w=1i").fields["v"]
    assert got == value
    assert type(got) is (Unsigned if text.endswith("u") else int)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("9223372036854775808i", "value out of range"),
        ("-9223372036854775809i", "value out of range"),
        ("18446744073709551616u", "value out of range"),
        ("99999999999999999999999999i", "value out of range"),
        ("-1u", "invalid number"),
        ("1.5i", "invalid number"),
        ("1e3i", "invalid number"),
        ("1ii", "invalid number"),
        ("1iu", "invalid number"),
        ("9i10", "invalid number"),
        ("i", "invalid boolean"),
        ("-i", "invalid number"),
        ("+1i", "invalid boolean"),
        ("1_000i", "invalid number"),
    ],
)
def test_invalid_integers(text: str, why: str) -> None:
    assert reason(f"m v={text}") == f"{why}: field 'v'"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", 1.0),
        ("-1.5", -1.5),
        (".5", 0.5),
        ("-.5", -0.5),
        ("1.", 1.0),
        ("007.5", 7.5),
        ("1e10", 1e10),
        ("1E10", 1e10),
        ("1.5E-3", 1.5e-3),
        ("-1e+3", -1000.0),
        ("1.e5", 1e5),
        ("1e-400", 0.0),  # underflow is not an error (Go's ParseFloat agrees)
        ("1.7976931348623157e308", 1.7976931348623157e308),
        ("0.1234567890123456789012345678901234567890", 0.12345678901234568),
    ],
)
def test_floats(text: str, value: float) -> None:
    got = one(f"m v={text}").fields["v"]
    assert type(got) is float
    assert got == value


def test_minus_zero_keeps_its_sign() -> None:
    for line in ("m v=-0", "m v=-0,w=1", "m v=-0.0,w=1i", "m v=-0e0"):
        assert math.copysign(1.0, one(line).fields["v"]) == -1.0


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("+1.5", "invalid boolean"),  # not a number's first character in 1.x: read as a boolean
        ("Inf", "invalid boolean"),
        ("inf", "invalid boolean"),
        ("-Inf", "invalid number"),
        ("NaN", "invalid number"),
        ("nan", "invalid number"),
        ("n", "invalid number"),
        ("1e400", "value out of range"),
        ("-1e400", "value out of range"),
        ("1" * 400, "value out of range"),
        ("1.2.3", "invalid number"),
        ("1e", "invalid number"),
        ("1e+", "invalid number"),
        ("e5", "invalid boolean"),
        (".", "invalid number"),
        ("-", "invalid number"),
        ("-.", "invalid number"),
        ("1_0", "invalid number"),
        ("1-2", "invalid number"),
        ("0x10", "invalid number"),
        ("\u0661", "invalid boolean"),  # ARABIC-INDIC DIGIT ONE: float() takes it
        ("1\u0661", "invalid number"),
        ("1\x0b", "invalid number"),
        ("abc", "invalid boolean"),
        ("1}", "invalid number"),
    ],
)
def test_invalid_floats(text: str, why: str) -> None:
    assert reason(f"m v={text}") == f"{why}: field 'v'"


# --- errors -------------------------------------------------------------------------------------


ERRORS = [
    ("m", "missing fields"),
    ("m,t=a", "missing fields"),
    ("m ", "missing fields"),
    ("m,t=a  ", "missing fields"),
    (",t=a v=1", "missing measurement"),
    ("m, v=1", "missing tag key"),
    ("m,=a v=1", "missing tag key"),
    ("m,t=a, v=1", "missing tag key"),
    ("m,t v=1", "missing tag value: tag 't'"),
    ("m,t= v=1", "missing tag value: tag 't'"),
    ("m,t=,u=b v=1", "missing tag value: tag 't'"),
    ("m,t", "missing tag value: tag 't'"),
    (r"m,t\\=a v=1", r"missing tag value: tag 't\\=a'"),  # the '=' follows a backslash
    ("m,t=a=b v=1", "invalid tag format: tag 't'"),
    ("m,t=a,t=b v=1", "duplicate tags: 't'"),
    ("m,t=a,u=1,t=a v=1", "duplicate tags: 't'"),
    ("m =1", "missing field key"),
    ("m v=1,=2", "missing field key"),
    ("m v=", "missing field value: field 'v'"),
    ("m v=,w=1", "missing field value: field 'v'"),
    ("m v= 1", "missing field value: field 'v'"),
    ("m v", "invalid field format: 'v' has no value"),
    ("m v=1,w", "invalid field format: 'w' has no value"),
    ("m v=1, 5", "invalid field format: '' has no value"),
    ("m v=1,", "invalid field format: '' has no value"),
    ("m a,b=1", "invalid field format: a field key contains an unescaped comma"),
    ("m a,b=x", "invalid boolean: field 'b'"),  # 1.x reports the value first, as here
    ('m s="abc', "unbalanced quotes: field 's'"),
    ('m s="abc\\"', "unbalanced quotes: field 's'"),
    ('m s="a"b', "invalid field format: text after the closing quote of field 's'"),
    (r"m a\\=1", r"invalid field format: 'a\\=1' has no value"),
    (r"m a\\,b=1", r"invalid field format: field key 'a\\\\,b'"),
    ("m v=1 12a", "invalid timestamp"),
    ("m v=1 1.5", "invalid timestamp"),
    ("m v=1 -", "invalid timestamp"),
    ("m v=1 +5", "invalid timestamp"),
    ("m v=1 1-2", "invalid timestamp"),
    ("m v=1 9223372036854775808", "invalid timestamp: out of range"),
    ("m v=1 -9223372036854775809", "invalid timestamp: out of range"),
    ("m v=1 1" + "0" * 30, "invalid timestamp: out of range"),
    ("m v=1 12 13", "unexpected text after the timestamp"),
    ("m v=1 12\t", "invalid timestamp"),
    ("m v=1 12 \t", "unexpected text after the timestamp"),
]


@pytest.mark.parametrize(("line", "why"), ERRORS)
def test_error_reasons(line: str, why: str) -> None:
    assert reason(line) == why


def test_every_error_comes_with_its_line_number() -> None:
    # One body: each bad line after a good one (an unclosed quote would swallow what follows).
    cases = [(line, why) for line, why in ERRORS if not why.startswith("unbalanced")]
    body = "".join(f"ok v={n}\n{line}\n" for n, (line, _) in enumerate(cases))
    points, errors = parse(body.encode())
    assert [p.lineno for p in points] == list(range(1, 2 * len(cases), 2))
    assert errors == [
        LineError(2 * n + 2, line[:197] + "..." if len(line) > 200 else line, why)
        for n, (line, why) in enumerate(cases)
    ]


def test_errors_carry_their_line_numbers_and_good_lines_are_kept() -> None:
    body = b"m v=1\nbad\n# comment\nm v=2 x\n\nm v=3\nm,t v=1\r\n"
    points, errors = parse(body)
    assert [p.lineno for p in points] == [1, 6]
    assert errors == [
        LineError(2, "bad", "missing fields"),
        LineError(4, "m v=2 x", "invalid timestamp"),
        LineError(7, "m,t v=1", "missing tag value: tag 't'"),
    ]


def test_an_error_shows_the_line_as_sent_cut_to_200_characters() -> None:
    line = "  m v=" + "x" * 300
    _, errors = parse(line.encode())
    assert errors[0].line == line[:197] + "..."
    assert len(errors[0].line) == 200
    _, errors = parse(b"  m v=x\n")
    assert errors[0].line == "  m v=x"


def test_long_names_in_reasons_are_cut() -> None:
    why = reason("m " + "k" * 100 + "=x")
    assert why == "invalid boolean: field '" + "k" * 37 + "...'"


def test_the_series_key_is_limited_to_65535_bytes() -> None:
    key = "m,t=" + "a" * (65530 - 4)
    # measurement and tags, plus 4, plus the field key
    assert one(key + " v=1").tags["t"] == "a" * 65526
    assert reason(key + " vv=1") == "max key length exceeded: 65536 > 65535"
    # measurement and tags alone
    assert reason(key + "aaaaaa v=1") == "max key length exceeded: 65536 > 65535"
    # bytes, not characters
    assert reason("m,t=" + "é" * 32766 + " v=1") == "max key length exceeded: 65536 > 65535"


def test_invalid_utf8_fails_only_its_point() -> None:
    body = b'm v=1\nm,t=\xff v=2\n# \xfe comment\nm s="a\xc3" 3\nm v=4\n'
    points, errors = parse(body)
    assert [p.lineno for p in points] == [1, 5]
    assert errors == [
        LineError(2, "m,t=\ufffd v=2", "invalid UTF-8"),
        LineError(4, 'm s="a\ufffd" 3', "invalid UTF-8"),
    ]


def refuse(*args: object) -> str:
    raise AssertionError(args)


def test_the_fast_path_takes_the_bulk_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lpparse, "_slow_point", refuse)
    monkeypatch.setattr(lpparse, "_slow_fields", refuse)
    body = (
        b"cpu,host=a,cpu=cpu0 usage_user=1.5,usage_system=2.25,nice=0 1700000000000000000\n"
        b"mem,host=a used=1i,free=2i,total=3i 1700000000000000000\n"
        b"mem,host=a used=1i,used_percent=33.3,ok=true 1700000000000000000\n"
        b"net,host=a up=T,bytes=5u,x=.5,y=-0\n"
    )
    points, errors = parse(body)
    assert errors == []
    assert len(points) == 4


def test_a_string_field_needs_the_slow_path_only_after_the_series_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lpparse, "_slow_point", refuse)
    body = b'system,host=a uptime_format=" 3 days,  4:25",n=1i 1700000000000000000\n'
    points, errors = parse(body)
    assert errors == []
    assert points[0].tags == {"host": "a"}
    assert points[0].fields == {"uptime_format": " 3 days,  4:25", "n": 1}


# --- properties ---------------------------------------------------------------------------------

# Awkward characters, often. Not '\n', '\r', '\t': influxdb-client writes them in names as the
# two characters '\n' etc., which 1.x keeps as they are. Not NUL: 1.x skips it (as whitespace)
# before a measurement and before the first field key. No surrogates: not encodable as UTF-8.
AWKWARD = st.sampled_from([" ", ",", "=", '"', "\\", "#", "'", "i", "u", "0", "-", ".", "é", "😀"])
NAME_CHAR = st.one_of(
    AWKWARD, st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\t\x00")
)
NAME = st.text(NAME_CHAR, min_size=1, max_size=12)


def no_backslash_before(chars: str) -> Any:
    """Names line protocol can carry through this serializer: no backslash at the end (it would
    escape the separator after it) nor before a character 1.x unescapes there but the
    serializer does not escape."""

    def ok(name: str) -> bool:
        return not name.endswith("\\") and not any("\\" + c in name for c in chars)

    return ok


# measurement: 1.x unescapes '\=' and '\"' (the client escapes neither); a leading '#' would
# make the line a comment (the client warns about it).
MEASUREMENT = NAME.filter(no_backslash_before('="')).filter(lambda s: not s.startswith("#"))
# tags: the client escapes every character 1.x unescapes there; it drops empty tags.
TAG = NAME.filter(no_backslash_before(""))
# field keys: 1.x unescapes '\"' too, and rejects a separator after an escaped backslash.
FIELD_KEY = NAME.filter(no_backslash_before(', ="'))
STRING = st.text(st.one_of(AWKWARD, st.just("\n"), st.characters(blacklist_categories=("Cs",))))
FLOAT = st.floats(allow_nan=False, allow_infinity=False)  # NaN and Inf cannot be written


@st.composite
def points(draw: st.DrawFn) -> tuple[str, dict[str, str], dict[str, Any], dict[str, str], Any]:
    fields: dict[str, Any] = {}
    types: dict[str, str] = {}
    for key in draw(st.lists(FIELD_KEY, min_size=1, max_size=6, unique=True)):
        kind = draw(st.sampled_from(["float", "int", "uint", "bool", "str"]))
        if kind == "float":
            fields[key] = draw(FLOAT)
        elif kind == "int":
            fields[key] = draw(st.integers(INT64_MIN, INT64_MAX))
        elif kind == "uint":
            fields[key] = Unsigned(draw(st.integers(0, UINT64_MAX)))
            types[key] = "uint"
        elif kind == "bool":
            fields[key] = draw(st.booleans())
        else:
            fields[key] = draw(STRING)
    tags = draw(st.dictionaries(TAG, TAG, max_size=4))
    ts = draw(st.none() | st.integers(INT64_MIN, INT64_MAX))
    return draw(MEASUREMENT), tags, fields, types, ts


def check_round_trip(
    lines: list[str], expected: list[tuple[str, dict[str, str], Any, Any]]
) -> None:
    body = "\n".join(lines) + "\n"
    got_points, errors = parse(body.encode())
    assert errors == []
    linenos = []
    n = 1
    for line in lines:
        linenos.append(n)
        n += line.count("\n") + 1
    # The serializers sort fields: compare them as sets.
    assert [
        (p.measurement, p.tags, sorted(typed(p.fields)), p.timestamp, p.lineno) for p in got_points
    ] == [
        (m, t, sorted(typed(f)), ts, no)
        for (m, t, f, ts), no in zip(expected, linenos, strict=True)
    ]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(points(), min_size=1, max_size=4))
@example([("m", {"t": "v"}, {"f": -0.0, "s": 'a"b\\'}, {}, -1)])
def test_influxdb_client_round_trip(batch: list[Any]) -> None:
    lines, expected = [], []
    for measurement, tags, fields, types, ts in batch:
        if any("\n" in v for v in fields.values() if isinstance(v, str)):
            # 1.x scanLine reads backslashes in pairs where its other scanners look at the one
            # previous byte: a name with a backslash before a separator can then make it count
            # the quotes of a multi-line string wrongly. Keep the two apart.
            assume(not any("\\" in s for s in (measurement, *tags, *tags.values())))
        point = Point.from_dict(
            {"measurement": measurement, "tags": tags, "fields": fields, "time": ts},
            field_types=types,
        )
        lines.append(point.to_line_protocol())
        expected.append((measurement, tags, fields, ts))
    check_round_trip(lines, expected)


# influxdb-python 5.3 escapes backslashes in names as '\\' and newlines in strings as '\n', which
# 1.x does not unescape: names without backslashes and strings without newlines only.
PLAIN_NAME = st.text(
    st.one_of(AWKWARD, NAME_CHAR).filter(lambda c: c != "\\"), min_size=1, max_size=12
)


@settings(max_examples=200, deadline=None)
@given(
    measurement=PLAIN_NAME.filter(lambda s: not s.startswith("#")),
    tags=st.dictionaries(PLAIN_NAME, PLAIN_NAME, max_size=4),
    fields=st.dictionaries(
        PLAIN_NAME,
        FLOAT
        | st.integers(INT64_MIN, INT64_MAX)
        | st.booleans()
        | st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n")),
        min_size=1,
        max_size=6,
    ),
    ts=st.none() | st.integers(INT64_MIN, INT64_MAX),
)
def test_influxdb_python_round_trip(
    measurement: str, tags: dict[str, str], fields: dict[str, Any], ts: int | None
) -> None:
    line = make_line(measurement, tags=tags, fields=fields, time=ts)
    check_round_trip([line], [(measurement, tags, fields, ts)])


@settings(max_examples=200, deadline=None)
@given(
    measurement=MEASUREMENT,
    tags=st.dictionaries(TAG, TAG, max_size=4),
    fields=st.dictionaries(
        FIELD_KEY,
        FLOAT | st.integers(INT64_MIN, INT64_MAX) | st.booleans() | STRING,
        min_size=1,
        max_size=6,
    ),
    ts=st.integers(INT64_MIN, INT64_MAX),
)
def test_monapi_encoder_round_trip(
    measurement: str, tags: dict[str, str], fields: dict[str, Any], ts: int
) -> None:
    if any("\n" in v for v in fields.values() if isinstance(v, str)):
        assume(not any("\\" in s for s in (measurement, *tags, *tags.values())))
    line = (
        escape_tag(measurement)
        + "".join(f",{escape_tag(k)}={escape_tag(v)}" for k, v in tags.items())
        + " "
        + ",".join(f"{escape_tag(k)}={format_value(v)}" for k, v in fields.items())
        + f" {ts}"
    )
    check_round_trip([line], [(measurement, tags, fields, ts)])


def assert_sane(body: bytes) -> None:
    points, errors = parse(body)
    for p in points:
        assert p.measurement
        assert p.fields
        assert p.lineno >= 1
    for e in errors:
        assert not e.reason.startswith("internal error"), e
        assert len(e.line) <= 200


LP_CHAR = st.sampled_from(list('m=, "\\\n\r\t\x00#-.0123456789eEiutTfFnN+_'))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
def test_never_raises_on_bytes(body: bytes) -> None:
    assert_sane(body)


@settings(max_examples=500, deadline=None)
@given(st.text(st.one_of(LP_CHAR, st.characters()), max_size=300))
def test_never_raises_on_text(text: str) -> None:
    assert_sane(text.encode("utf-8", "surrogatepass"))


# Lines mostly valid, so that the fast path takes many of them, with every character it must not
# misread (JSON syntax and whitespace, what float() and int() accept beyond line protocol,
# non-ASCII digits). Some have string fields or backslashes: the slow path reads those, the fast
# one at most their series key.
FAST_CHAR = st.sampled_from(
    [*"mab=, #\t\r\x00\x0b:[]{}-+._0123456789eEiutTfFnNlrs", "é", "\u0661", "😀"]
)


NAME_COMMON = st.text(st.sampled_from("abcxyz_.:-é0123456789"), min_size=1, max_size=6)
NAME_ODD = st.one_of(
    st.sampled_from(["a:", ":", "", "#", "-0", "1i", "a\\ b", "a\\,", "\\", 'a"b', "a\\=b"]),
    st.text(FAST_CHAR, max_size=5),
)
VALUE_COMMON = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: f"{f:.0f}"),
    st.integers(INT64_MIN, INT64_MAX).map(lambda i: f"{i}i"),
    st.integers(0, UINT64_MAX).map(lambda i: f"{i}u"),
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(["t", "T", "true", "True", "TRUE", "f", "false", "F", "False", "FALSE"]),
    st.sampled_from(["-0", "0", "-0.0", ".5", "1.", "01", "1e5", "1E+5", "-0i", "007i"]),
)
VALUE_ODD = st.one_of(
    st.floats().map(repr),
    st.integers(-(2**65), 2**65).map(lambda i: f"{i}i"),
    st.integers(-5, 2**65).map(lambda i: f"{i}u"),
    st.sampled_from(["null", "[1]", "{}", "1,", "+1", "-", "1.5i", "truei", "1_0", "1e400"]),
    st.text(FAST_CHAR, max_size=6),
    st.text(st.one_of(FAST_CHAR, st.sampled_from(['"', "\\", "\n"])), max_size=8).map(
        lambda t: f'"{t}"'
    ),
)


@st.composite
def fast_lines(draw: st.DrawFn) -> str:
    def mostly(common: st.SearchStrategy[str], odd: st.SearchStrategy[str]) -> str:
        return draw(odd if draw(st.integers(0, 9)) == 0 else common)

    if draw(st.integers(0, 9)) == 0:
        return draw(st.text(FAST_CHAR, max_size=40))
    key = mostly(NAME_COMMON, NAME_ODD)
    for _ in range(draw(st.integers(0, 3))):
        key += f",{mostly(NAME_COMMON, NAME_ODD)}={mostly(NAME_COMMON, NAME_ODD)}"
    fields = ",".join(
        f"{mostly(NAME_COMMON, NAME_ODD)}={mostly(VALUE_COMMON, VALUE_ODD)}"
        for _ in range(draw(st.integers(1, 6)))
    )
    ts = mostly(
        st.one_of(st.just(""), st.integers(0, INT64_MAX).map(lambda t: f" {t}")),
        st.integers(-(2**64), 2**64).map(lambda t: f" {t}") | st.sampled_from([" ", "  1"]),
    )
    return f"{key} {fields}{ts}"


@settings(max_examples=1000, deadline=None)
@given(st.lists(fast_lines(), min_size=1, max_size=8))
@example(["m a=-0,b=1i", "m a=1,:b=2", "m a=1,b=2i,c=3", "m a=1.5i,b=2", "m a=truei,b=1i,c=1.5"])
@example(["m =1", "m a=1,=2", "m a=1i,b=9223372036854775808i", "m a=\t1", "m \x00a=1"])
@example(["m x,:1", "m a=1,x,:2=3", "m a={},b=1", "m a:b=1,:=2", "m a=1}", "m a=[1]", "m a=1 5"])
def test_fast_path_agrees_with_the_slow_path(lines: list[str]) -> None:
    body = "\n".join(lines).encode()
    fast = lpparse._parse(body, fast=True)
    slow = lpparse._parse(body, fast=False)
    assert canonical(fast) == canonical(slow)


def assert_sane_both(body: bytes) -> None:
    """Both paths parse the body without raising, and to the same points and errors."""
    fast, slow = lpparse._parse(body, fast=True), lpparse._parse(body, fast=False)
    assert canonical(fast) == canonical(slow)
    assert_sane(body)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_the_slow_path_never_raises_on_bytes(body: bytes) -> None:
    assert_sane_both(body)


HOSTILE_VALUES = [
    *(b"1.5", b"-0", b"1e308", b"1e309", b"NaN", b"Inf", b"-Inf", b"t", b'"\x00"'),
    *(b"9223372036854775807i", b"9223372036854775808i", b"18446744073709551616u"),
    b'"' + b"s" * 70_000 + b'"',
]


@st.composite
def hostile_lines(draw: st.DrawFn) -> bytes:
    """Lines with what a hostile client sends: names past the key limit, thousands of tags,
    NULs, bytes that are not UTF-8, numbers past every range, a field twice."""
    meas = draw(
        st.sampled_from([b"m", b"m" * 70_000, b"m\x00x", b"\x00m", b"m\xff", b"m\xed\xa0\x80"])
    )
    n_tags = draw(st.sampled_from([0, 1, 2, 3000]))
    value = draw(st.sampled_from([b"v", b"v" * 300, b"\x00", b"a\x00b", b"\xc3", b"=v"]))
    tags = b"".join(b",t%d=%s" % (i, value) for i in range(n_tags))
    key = draw(st.sampled_from([b"f", b"f" * 70_000, b"f\x00", b"\xff"]))
    fields = draw(st.lists(st.sampled_from(HOSTILE_VALUES), min_size=1, max_size=3))
    names = [key + b"%d" % (i % draw(st.sampled_from([1, 3]))) for i in range(len(fields))]
    field_set = b",".join(k + b"=" + v for k, v in zip(names, fields, strict=True))
    ts = draw(st.sampled_from([b"", b" 0", b" -9223372036854775808", b" " + b"9" * 30]))
    return meas + tags + b" " + field_set + ts


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.lists(hostile_lines(), min_size=1, max_size=3))
def test_hostile_lines_are_points_or_reasons_on_both_paths(lines: list[bytes]) -> None:
    body = b"ok v=1\n" + b"\n".join(lines) + b"\nok v=2\n"
    assert_sane_both(body)
    points, errors = parse(body)
    # The good lines around them are kept, each bad line is one error with its line number.
    assert [p.lineno for p in points][:1] == [1] and points[-1].lineno == len(lines) + 2
    assert sorted({e.lineno for e in errors}) == [e.lineno for e in errors]
    assert len(points) + len(errors) == len(lines) + 2


def test_a_long_series_key_and_many_tags_are_reasons_not_crashes() -> None:
    assert reason("m" * 70_000 + " v=1") == "max key length exceeded: 70000 > 65535"
    many = "m" + "".join(f",t{i}=v" for i in range(3000))
    assert len(one(many + " v=1").tags) == 3000  # the parser keeps them; the validator refuses
    assert reason("m f" + "f" * 70_000 + "=1").startswith("max key length exceeded")
