"""Line protocol as monapi writes it for InfluxDB and VictoriaMetrics: every value comes back
as itself when the text is parsed, on the fast (all-float) path and the general one."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from monapi.fields import FIELD_NAME_RE
from monapi.tsdb.base import Point, WriteBatch
from monapi.tsdb.lineprotocol import encode, escape_tag, format_value

names = st.from_regex(FIELD_NAME_RE, fullmatch=True)
finite = st.floats(allow_nan=False, allow_infinity=False)
values = st.one_of(finite, st.integers(-(2**63), 2**63 - 1), st.booleans(), st.text(max_size=20))


def _parse(text: str) -> float | int | bool | str:
    if text in ("true", "false"):
        return text == "true"
    if text.startswith('"'):
        return text[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    if text.endswith("i"):
        return int(text[:-1])
    return float(text)


def _fields_of(line: str) -> dict[str, object]:
    # Only for values without commas, spaces or '=' inside strings (see the strategies).
    _, fields, _ = line.split(" ")
    return {k: _parse(v) for k, v in (part.split("=", 1) for part in fields.split(","))}


@given(st.dictionaries(names, finite, min_size=1, max_size=12))
def test_float_fields_round_trip_through_the_fast_path(fields: dict[str, float]) -> None:
    body, refused, sent = encode([WriteBatch(3, "web-01", [Point("cpu", (), 10**18, fields)])])
    assert refused == [] and sent == [(0, 0)]
    line = body.decode().rstrip("\n")
    got = _fields_of(line)
    assert got == fields
    assert all(math.copysign(1, got[k]) == math.copysign(1, v) for k, v in fields.items())
    # no integer suffix, no quotes: floats stay floats for the engine
    assert not any(v.endswith(("i", '"')) for v in line.split(" ")[1].split(","))


@given(
    st.dictionaries(
        names,
        st.one_of(finite, st.integers(-(2**63), 2**63 - 1), st.booleans()),
        min_size=1,
        max_size=12,
    )
)
def test_mixed_fields_round_trip(fields: dict[str, float | int | bool]) -> None:
    body, _, _ = encode([WriteBatch(3, "web-01", [Point("cpu", (), 10**18, fields)])])
    got = _fields_of(body.decode().rstrip("\n"))
    assert got == fields and [type(v) for v in got.values()] == [type(v) for v in fields.values()]


def test_identity_tags_are_merged_sorted_and_values_escaped() -> None:
    p = Point("disk", (("mount", "/srv/my data,x=1"),), 5, {"used": 1.5})
    body, _, _ = encode([WriteBatch(7, "web-01", [p])])
    assert body == b"disk,host=web-01,mount=/srv/my\\ data\\,x\\=1,server_id=7 used=1.5 5\n"
    assert escape_tag("a b,c=d") == "a\\ b\\,c\\=d"


def test_a_tag_value_ending_in_a_backslash_is_refused_not_mangled() -> None:
    p = Point("disk", (("mount", "C:\\"),), 5, {"used": 1.5})
    ok = Point("disk", (("mount", "/"),), 5, {"used": 2.5})
    body, refused, sent = encode([WriteBatch(7, "web-01", [p, ok])])
    assert [(r.index, "backslash" in r.reason) for r in refused] == [(0, True)]
    assert sent == [(0, 1)] and body.count(b"\n") == 1


def test_strings_are_quoted_and_escaped() -> None:
    assert format_value('say "hi" \\ bye') == '"say \\"hi\\" \\\\ bye"'
