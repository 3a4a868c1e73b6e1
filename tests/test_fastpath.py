"""The whole-batch fast paths (monapi.fastpath) against the exact path, in-process.

Whatever the body, the fast path either declines (the exact path then answers) or stores exactly
what the exact path stores: the same points, in the same order, with the same identity tags and
timestamps, the field values being the same floats (-0.0 kept apart from 0.0) once InfluxDB has
read the forwarded text. The JSON fast path writes the same bytes but for the order of the
fields in a line.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from monapi import fastpath
from monapi.errors import ApiError
from monapi.fields import FieldSpec
from monapi.ingest import Validator, decode_points
from monapi.lpparse import _FLOAT, parse
from monapi.tsdb.base import EncodedLines, LazyPoints, Point, WriteBatch
from monapi.tsdb.influxdb import _check_value
from monapi.tsdb.lineprotocol import default_identity, encode, encode_mixed
from monapi.tsdb.sqlite import SQLiteStore

from .conftest import bearer, register_server

NOW = time.time_ns()
BASE = NOW - 3600 * 10**9  # an hour ago, in ns
SERVER_ID, HOSTNAME = 7, "web-7"
IDENT = default_identity(WriteBatch(SERVER_ID, HOSTNAME, []))
MAX_POINTS = 50


def spec(meas: str, name: str, ftype: str, lo: float | None, hi: float | None) -> FieldSpec:
    return FieldSpec(meas, name, ftype, lo, hi, True, "")


SPECS: dict[str, dict[str, FieldSpec]] = {
    "bench": {
        "f0": spec("bench", "f0", "float", 0.0, 100.0),
        "f1": spec("bench", "f1", "float", 0.0, 100.0),
        "f2.x": spec("bench", "f2.x", "float", 0.0, 100.0),
    },
    # different bounds per field: checked through msgspec.convert
    "cpu": {
        "u": spec("cpu", "u", "float", -5.0, 5.0),
        "v": spec("cpu", "v", "float", None, None),
        "w": spec("cpu", "w", "float", 0.0, None),
        "n": spec("cpu", "n", "int", 0.0, None),  # not a float: the exact path's
        "time": spec("cpu", "time", "float", None, None),  # InfluxDB refuses it
        "off": FieldSpec("cpu", "off", "float", None, None, False, ""),  # disabled
    },
}


def field_ok(name: str) -> bool:
    return _check_value(name, 0.0) is None


CFG = fastpath.config(SPECS, field_ok)


def validator(replace_identity: bool) -> Validator:
    return Validator(SPECS, "reject", 86400.0, 600.0, now_ns=NOW, replace_identity=replace_identity)


def exact_store(points: Sequence[Point]) -> bytes | None:
    """What InfluxDBStore sends for the points, or None if it refuses one."""
    body, refused, _ = encode([WriteBatch(SERVER_ID, HOSTNAME, points)], check=_check_value)
    return None if refused else body


def read_lines(data: bytes) -> list[tuple[str, list[tuple[str, str]], int]]:
    """Lines as InfluxDB reads them (plain lines: no escapes): series key, fields with the float
    each value text means (repr keeps -0.0 apart), timestamp. Repeated fields are kept."""
    out = []
    for line in data.decode().splitlines():
        key, fs, ts = line.split(" ")
        fields = []
        for item in fs.split(","):
            name, _, value = item.partition("=")
            assert _FLOAT.fullmatch(value), value  # InfluxDB's float syntax
            fields.append((name, repr(float(value))))
        out.append((key, sorted(fields), int(ts)))
    return out


# Line protocol ---------------------------------------------------------------------------------
def exact_lp(body: bytes, unit: int, default_ts: int) -> bytes | None:
    """The exact /write path: what it stores when it accepts every line, else None."""
    lines, bad = parse(body)
    if bad or not lines:
        return None
    for p in lines:
        p.timestamp = default_ts if p.timestamp is None else p.timestamp * unit
    res = validator(True).validate(lines)
    if res.error_count or res.dropped or len(res.points) != len(lines):
        return None
    return exact_store(res.points)


def fast_lp(body: bytes, unit: int, default_ts: int) -> tuple[bytes, int] | None:
    return fastpath.line_protocol(body, unit, default_ts, CFG, validator(True), IDENT, MAX_POINTS)


def check_lp(body: bytes, unit: int = 1) -> bool:
    """The fast path declines or agrees with the exact path; True when it took the body."""
    default_ts = NOW - NOW % unit
    fast = fast_lp(body, unit, default_ts)
    if fast is None:
        return False
    data, count = fast
    exact = exact_lp(body, unit, default_ts)
    assert exact is not None, body
    got = read_lines(data + b"\n")
    assert len(got) == count
    assert got == read_lines(exact), body
    return True


EDGE_VALUES = st.sampled_from(
    [
        "-0", "0", "-0.0", "0.0", "100", "100.0", "100.00000000000001", "1e2", "1E2", "1e+2",
        "1e-400", "-1e-400", "1e308", "1e309", "1.7976931348623157e308", "-5", "5.0000",
        "12345678901234567890123", "0.1000000000000000055511151231257827", "5i", "5u", "t",
        "true", "NaN", "nan", "inf", "-inf", "Inf", ".5", "1.", "+1", "01", "1_0", '"s"',
        "0x10", "", "-", "1e", "1..2",
    ]
)  # fmt: skip
VALUE_TEXTS = st.one_of(
    st.floats(0, 100).map(repr),
    st.floats(0, 100).map(repr),
    st.integers(0, 100).map(str),
    st.floats(-1e308, 1e308).map(repr),
    EDGE_VALUES,
)
NAMES = {"bench": ["f0", "f1", "f2.x"], "cpu": ["u", "v", "w"]}
ODD_NAMES = ["n", "time", "off", "x", "", "f0", "u"]
TAG_KEYS = st.sampled_from(["cpu", "cpu", "a", "host", "server_id", "measurement", "__x", ""])
TAG_VALUES = st.sampled_from(
    ["cpu-total", "cpu-total", HOSTNAME, str(SERVER_ID), "web-1", "é", "ü€", "a=b", "", "x\x01"]
)


GOOD_TAGS = st.tuples(
    st.sampled_from(["cpu", "a", "host", "server_id"]),
    st.sampled_from(["cpu-total", HOSTNAME, str(SERVER_ID), "web-1", "é", "ü€"]),
)
GOOD_TS = st.integers(BASE, NOW)


@st.composite
def lp_lines(draw: st.DrawFn, clean: bool | None = None) -> str:
    """A line; a clean one (most) has only valid parts but its values and timestamp."""
    if clean is None:
        clean = draw(st.integers(0, 9)) < 7
    meas = draw(
        st.sampled_from(["bench", "cpu"] if clean else ["bench", "cpu", "other", "a b", "#c", ""])
    )
    tags = draw(st.lists(GOOD_TAGS if clean else st.tuples(TAG_KEYS, TAG_VALUES), max_size=3))
    if draw(st.booleans()):
        tags = sorted(tags)
    names = NAMES.get(meas, NAMES["bench"])
    name = st.sampled_from(names) if clean else st.sampled_from(names * 4 + ODD_NAMES)
    fields = draw(st.lists(st.tuples(name, VALUE_TEXTS), min_size=int(clean), max_size=4))
    if clean:
        ts = draw(st.one_of(GOOD_TS, GOOD_TS, st.none()))
    else:
        ts = draw(
            st.one_of(
                st.none(),
                st.integers(BASE // 10**9 - 10, NOW // 10**9 + 10).map(lambda s: s * 10**9),
                st.integers(BASE, NOW + 60 * 10**9),
                st.sampled_from([0, -5, 2**63, 10**19, 2**63 - 1]),
            )
        )
    key = meas + "".join(f",{k}={v}" for k, v in tags)
    line = key + " " + ",".join(f"{k}={v}" for k, v in fields)
    if ts is not None:
        line += f" {ts}"
    return line


@st.composite
def lp_bodies(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(lp_lines(), min_size=1, max_size=6))
    text = "\n".join(lines)
    if draw(st.booleans()):
        text += draw(st.sampled_from(["\n", "\n\n", "\r\n", " ", "\n# c\n"]))
    return text.encode()


def plain_line(meas: str, fields: dict[str, float], ts: int | None, tags: str = "") -> str:
    key = f"{meas}{tags}"
    line = key + " " + ",".join(f"{k}={v!r}" for k, v in fields.items())
    return line if ts is None else f"{line} {ts}"


IDENT_TAGS = f",host={HOSTNAME},server_id={SERVER_ID}"


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lp_bodies(), st.sampled_from([1, 1, 1_000_000, 1_000_000_000]))
@example(f"bench{IDENT_TAGS} f0=1,f0=2 {BASE}".encode(), 1)  # a repeated field
@example(f"bench{IDENT_TAGS} f0=-0,f1=100 {BASE}".encode(), 1)  # -0, a bound
@example(f"cpu{IDENT_TAGS} u=-5,v=1e308,w=-0 {BASE}".encode(), 1)
@example(f"cpu{IDENT_TAGS} v=-1e-400 {BASE}".encode(), 1)
@example(f"cpu,a=é{IDENT_TAGS} v=1E5\ncpu,host=x v=2 {BASE}".encode(), 1)
@example(f"bench,cpu=a f0=1 {BASE // 10**9}\nbench,cpu=b f1=2 {BASE // 10**9}".encode(), 10**9)
def test_the_line_protocol_fast_path_declines_or_stores_what_the_exact_path_stores(
    body: bytes, unit: int
) -> None:
    check_lp(body, unit)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["bench", "cpu"]),
            st.sampled_from(["", ",cpu=a", ",a=1,cpu=é", IDENT_TAGS, ",host=other,cpu=a"]),
            st.integers(0, 4),
            st.one_of(st.none(), st.integers(0, 10**6)),
        ),
        min_size=1,
        max_size=8,
    ),
    st.sampled_from([1, 1000]),
    st.randoms(use_true_random=False),
)
def test_plain_line_protocol_takes_the_fast_path(
    rows: list[tuple[str, str, int, int | None]], unit: int, rnd: Any
) -> None:
    """Valid bodies of the bulk kind (float fields in bounds, any tags): taken, and stored as
    the exact path stores them."""
    names = NAMES
    with_ts = rows[0][3] is not None
    lines = []
    for meas, tags, k, ts in rows:
        fields = {
            n: round(rnd.uniform(-5, 5) if n == "u" else rnd.uniform(0, 99), 3)
            for n in rnd.sample(names[meas], 1 + k % 3)
        }
        stamp = (BASE // unit + ts if ts is not None else BASE // unit) if with_ts else None
        lines.append(plain_line(meas, fields, stamp, tags))
    body = "\n".join(lines).encode()
    assert check_lp(body, unit), body


def test_the_bulk_body_is_forwarded_unchanged() -> None:
    body = "".join(
        plain_line("bench", {"f0": 1.5, "f1": float(j % 100)}, BASE + j, IDENT_TAGS) + "\n"
        for j in range(40)
    ).encode()
    data, count = fast_lp(body, 1, NOW) or (b"", 0)
    assert (data, count) == (body[:-1], 40)
    assert check_lp(body)


def test_the_key_identity_replaces_the_line_identity() -> None:
    body = f"bench,cpu=a,host=evil,server_id=1 f0=1.5 {BASE}\nbench,cpu=a f0=2 {BASE + 1}"
    data, _ = fast_lp(body.encode(), 1, NOW) or (b"", 0)
    assert data.decode().splitlines() == [
        f"bench,cpu=a{IDENT_TAGS} f0=1.5 {BASE}",
        f"bench,cpu=a{IDENT_TAGS} f0=2 {BASE + 1}",
    ]


@pytest.mark.parametrize(
    "body",
    [
        f"bench{IDENT_TAGS} f0=1,f0=2 {BASE}",  # repeated field
        f"bench{IDENT_TAGS} f0=101 {BASE}",  # above the maximum
        f"cpu{IDENT_TAGS} u=5.5 {BASE}",  # above its own maximum (another field's is higher)
        f"cpu{IDENT_TAGS} n=5 {BASE}",  # an int field
        f"cpu{IDENT_TAGS} time=5 {BASE}",  # InfluxDB refuses the name
        f"cpu{IDENT_TAGS} off=5 {BASE}",  # disabled
        f"bench{IDENT_TAGS} f0=5i {BASE}",
        f'bench{IDENT_TAGS} f0=1,s="x" {BASE}',
        f"bench,measurement=x f0=1 {BASE}",  # reserved tag
        f"bench{IDENT_TAGS} f0=1 {NOW + 3600 * 10**9}",  # in the future
        f"bench{IDENT_TAGS} f0=1 {BASE}\nbench{IDENT_TAGS} f0=1",  # timestamps on some lines
        f"bench{IDENT_TAGS} f0=1 {BASE}\n\nbench f0=2 {BASE}",  # a blank line
        f"bench{IDENT_TAGS}  f0=1 {BASE}",  # two spaces
        f"bench{IDENT_TAGS} f0=1 {BASE}\r\n",
        f"bench{IDENT_TAGS} f0=1 \x0b{BASE}",  # other whitespace
        f"bench{IDENT_TAGS} f0=1\x0c {BASE}",
        f"bench{IDENT_TAGS} f0=1 0{BASE}",  # 20 digits
        "\n".join(f"bench f0=1 {BASE + i}" for i in range(MAX_POINTS + 1)),
    ],
)
def test_what_the_line_protocol_fast_path_leaves_to_the_exact_path(body: str) -> None:
    assert fast_lp(body.encode(), 1, NOW) is None


# JSON ------------------------------------------------------------------------------------------
def exact_json(body: bytes) -> bytes | None:
    try:
        points = decode_points(body, MAX_POINTS)
    except ApiError:
        return None
    res = validator(False).validate(points)
    if res.error_count or res.dropped or len(res.points) != len(points):
        return None
    return exact_store(res.points)


def canonical(data: bytes) -> list[tuple[str, list[tuple[str, str]], list[tuple[str, str]], int]]:
    """Points of line protocol with escapes (JSON tags), -0.0 kept apart, fields in any order."""
    points, errors = parse(data)
    assert not errors
    return [
        (
            p.measurement,
            sorted(p.tags.items()),
            sorted((k, repr(v)) for k, v in p.fields.items()),
            p.timestamp or 0,
        )
        for p in points
    ]


def check_json(body: bytes) -> bool:
    fast = fastpath.json_batch(body, CFG, validator(False), IDENT, MAX_POINTS)
    if fast is None:
        return False
    exact = exact_json(body)
    assert exact is not None, body
    # The same lines but for the order of the fields (the exact path keeps the body's).
    assert canonical(fast[0]) == canonical(exact), body
    assert fast[1] == exact.count(b"\n")
    return True


JSON_VALUES = st.one_of(
    st.floats(0, 100).map(repr),
    st.floats(0, 100).map(repr),
    st.integers(0, 100).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(
        [
            "-0",
            "0",
            "-0.0",
            "100",
            "1e2",
            "1E2",
            "1e400",
            "-1e-400",
            "1e308",
            "true",
            "null",
            '"1"',
            "[1]",
            "{}",
            "1" + "0" * 400,
            "12345678901234567890123",
        ]
    ),
)
JSON_TS = st.one_of(
    st.integers(BASE, NOW).map(str),
    st.integers(BASE // 10**9, NOW // 10**9).map(str),
    st.integers(BASE // 10**6, NOW // 10**6).map(str),
    st.sampled_from(['"2020-01-01T00:00:00Z"', "1.5e9", "true", "null", "-1", str(2**64)]),
)


def obj(pairs: list[tuple[str, str]]) -> str:
    """A JSON object from (key, JSON text) pairs; keys may repeat."""
    return "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in pairs) + "}"


@st.composite
def json_points(draw: st.DrawFn) -> str:
    """A point as JSON text; a clean one (most) has only valid parts but its values."""
    clean = draw(st.integers(0, 9)) < 7
    pairs: list[tuple[str, str]] = []
    meas = draw(st.sampled_from(["bench", "cpu"] if clean else ["bench", "system", "", None, 5]))
    if meas is not None:
        pairs.append(("measurement", json.dumps(meas)))
    names = NAMES.get(str(meas), NAMES["bench"])
    name = st.sampled_from(names) if clean else st.sampled_from(names * 4 + ODD_NAMES)
    fields = draw(st.lists(st.tuples(name, JSON_VALUES), min_size=int(clean), max_size=4))
    pairs.append(("fields", obj(fields)))
    if draw(st.booleans()):
        pairs.append(("timestamp", draw(st.integers(BASE, NOW).map(str) if clean else JSON_TS)))
    if draw(st.booleans()):
        tag = (
            GOOD_TAGS.filter(lambda t: t[0] in ("cpu", "a"))
            if clean
            else st.tuples(TAG_KEYS, TAG_VALUES)
        )
        tags = draw(st.lists(tag.map(lambda t: (t[0], json.dumps(t[1]))), max_size=3))
        pairs.append(("tags", obj(tags)))
    if draw(st.integers(0, 20)) == 0:
        pairs.append(("extra", "1"))
    if draw(st.integers(0, 20)) == 0 and meas is not None:
        pairs.append(("measurement", json.dumps(draw(st.sampled_from(["bench", "cpu"])))))
    draw(st.randoms(use_true_random=False)).shuffle(pairs)
    return obj(pairs)


@st.composite
def json_bodies(draw: st.DrawFn) -> bytes:
    points = draw(st.lists(json_points(), max_size=5))
    kind = draw(st.integers(0, 10))
    if kind == 0 and points:
        return points[0].encode()  # one point, not a batch
    extra = ',"fields":{}' if kind == 1 else ""
    return ('{"points":[' + ",".join(points) + "]" + extra + "}").encode()


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_bodies())
@example(b'{"points":[{"measurement":"bench","fields":{"f0":1,"f0":2}}]}')
@example(b'{"points":[{"measurement":"bench","fields":{"f0":-0,"f1":-0.0}}]}')
@example(b'{"points":[{"measurement":"cpu","fields":{"v":1e308,"u":-5,"w":100000}}]}')
@example(b'{"points":[{"fields":{"f0":1},"measurement":"bench","measurement":"bench"}]}')
@example(
    b'{"points":[{"measurement":"bench","tags":{"a":"1"},"fields":{"f0":1}},'
    b'{"measurement":"cpu","tags":{"a":"1"},"fields":{"v":12345678901234567890123}}]}'
)
def test_the_json_fast_path_declines_or_sends_what_the_exact_path_sends(body: bytes) -> None:
    check_json(body)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["bench", "cpu"]),
            st.sampled_from([{}, {"cpu": "a"}, {"a": "1", "cpu": "é"}, {"cpu": "a b,c=d"}]),
            st.one_of(st.none(), st.integers(BASE, NOW)),
            st.integers(0, 7),
        ),
        min_size=1,
        max_size=8,
    ),
    st.randoms(use_true_random=False),
)
def test_plain_json_takes_the_fast_path(
    rows: list[tuple[str, dict[str, str], int | None, int]], rnd: Any
) -> None:
    names = NAMES
    points = []
    for meas, tags, ts, k in rows:
        fields = {
            n: round(rnd.uniform(-5, 5) if n == "u" else rnd.uniform(0, 99), 3)
            for n in rnd.sample(names[meas], 1 + k % 3)
        }
        point: dict[str, Any] = {"measurement": meas, "fields": fields, "tags": tags}
        if ts is not None:
            point["timestamp"] = ts
        points.append(point)
    assert check_json(json.dumps({"points": points}).encode())


@pytest.mark.parametrize(
    "points",
    [
        [{"fields": {"f0": 1.0}}],  # no measurement: "system"
        [{"measurement": "bench", "fields": {}}],
        [{"measurement": "bench", "fields": {"f0": 1.0}, "tags": {"host": "x"}}],
        [{"measurement": "bench", "fields": {"f0": 1.0}, "timestamp": 1.5e9}],
        [{"measurement": "bench", "fields": {"f0": 101.0}}],
        [{"measurement": "bench", "fields": {"f0": True}}],
        [{"measurement": "cpu", "fields": {"u": 6.0}}],
        [{"measurement": "cpu", "fields": {"n": 6}}],
        [{"measurement": "bench", "fields": {"f0": 1.0}, "tags": {"cpu": "a\\"}}],
        [],
    ],
)
def test_what_the_json_fast_path_leaves_to_the_exact_path(points: list[Any]) -> None:
    body = json.dumps({"points": points}).encode()
    assert fastpath.json_batch(body, CFG, validator(False), IDENT, MAX_POINTS) is None


def test_the_generated_types_are_kept_per_field_configuration() -> None:
    assert fastpath.config(SPECS, field_ok) is fastpath.config(SPECS, field_ok)
    other = {**SPECS}
    assert fastpath.config(other, field_ok) is not fastpath.config(SPECS, field_ok)


# The store interface ----------------------------------------------------------------------------
def test_lazy_points_are_built_once_and_only_when_read() -> None:
    calls = []

    def build() -> list[Point]:
        calls.append(1)
        return [Point("bench", (), 1, {"f0": 1.0}), Point("bench", (), 2, {"f0": 2.0})]

    points = LazyPoints(2, build)
    assert len(points) == 2 and not points.built and not calls
    assert [p.ts for p in points] == [1, 2] and points[1].ts == 2
    assert calls == [1] and points.built
    with pytest.raises(RuntimeError, match="gave 1 points"):
        list(LazyPoints(2, lambda: [Point("bench", (), 1, {"f0": 1.0})]))


def test_encode_sends_pre_encoded_batches_as_they_are_and_the_others_from_points() -> None:
    never = LazyPoints(2, lambda: pytest.fail("points read"))
    batches = [
        WriteBatch(5, "e", [Point("m", (), 1, {"time": 1.0}), Point("m", (), 2, {"f": 2.0})]),
        WriteBatch(1, "a", never, EncodedLines(b"m,host=a,server_id=1 f=1 5\nm f=2 6", 2)),
        WriteBatch(9, "z", LazyPoints(0, list), EncodedLines(b"", 0)),
        WriteBatch(2, "b", [Point("m", (), 7, {"f": 3.0})]),
    ]
    body, refused, sent, ready = encode_mixed(batches, check=_check_value)
    assert body == (
        b"m,host=a,server_id=1 f=1 5\nm f=2 6\n"
        b"m,host=e,server_id=5 f=2.0 2\nm,host=b,server_id=2 f=3.0 7\n"
    )
    assert [(r.batch, r.index, r.field) for r in refused] == [(0, 0, "time")]
    assert (sent, ready) == ([(0, 1), (3, 0)], [1])
    # encode (VictoriaMetrics) reads the points of every batch.
    lazy = LazyPoints(1, lambda: [Point("m", (), 5, {"f": 1.0})])
    body, _, _ = encode([WriteBatch(1, "a", lazy, EncodedLines(b"x", 1))])
    assert body == b"m,host=a,server_id=1 f=1.0 5\n"


def test_lines_read_back_keep_the_sign_of_zero() -> None:
    assert re.fullmatch(r"-0\.0", read_lines(b"m f=-0 1\n")[0][1][0][1])


def test_an_integer_beyond_the_float_range_is_refused_not_a_server_error(
    client: FlaskClient, admin_token: str
) -> None:
    key = register_server(client, admin_token)["api_key"]
    body = b'{"points":[{"fields":{"load1":1' + b"0" * 400 + b"}}]}"
    resp = client.post(
        "/api/v1/data", data=body, headers={**bearer(key), "Content-Type": "application/json"}
    )
    assert resp.status_code == 422, resp.get_json()
    assert resp.get_json()["details"][0]["reason"] == "integer out of the float range"


@pytest.mark.parametrize("hostname", ["web 7", "a,b=c", "é", ""])
def test_a_host_name_that_needs_escaping_is_written_as_the_exact_path_writes_it(
    hostname: str,
) -> None:
    ident = default_identity(WriteBatch(SERVER_ID, hostname, []))
    lines = [f"bench,cpu=a f0=1 {BASE}", f"bench,cpu=a,host=x f1=2 {BASE + 1}"]
    fast = fastpath.line_protocol(
        "\n".join(lines).encode(), 1, NOW, CFG, validator(True), ident, MAX_POINTS
    )
    parsed, _ = parse("\n".join(lines).encode())
    points = validator(True).validate(parsed).points
    exact = encode([WriteBatch(SERVER_ID, hostname, points)], check=_check_value)[0]
    assert fast is not None
    assert parse(fast[0])[0] == parse(exact)[0]
    json_fast = fastpath.json_batch(
        b'{"points":[{"measurement":"bench","fields":{"f0":1.0},"timestamp":%d}]}' % BASE,
        CFG,
        validator(False),
        ident,
        MAX_POINTS,
    )
    assert (
        json_fast is not None
        and json_fast[0] + b"\n"
        == encode([WriteBatch(SERVER_ID, hostname, [Point("bench", (), BASE, {"f0": 1.0})])])[0]
    )


def test_a_store_that_does_not_take_encoded_lines_reads_the_points(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "ts.sqlite3", retention_s=3600, prune_interval_s=3600)
    try:
        assert getattr(store, "encoded_field_ok", None) is None  # never offered encoded lines
        pts = [Point("m", (), 10 * 10**9, {"f": 1.5}), Point("m", (), 20 * 10**9, {"f": 2.5})]
        lazy = LazyPoints(2, lambda: pts)
        assert store.write([WriteBatch(1, "h", lazy, EncodedLines(b"ignored", 2))]) == []
        (series,) = store.query(1, [("m", "f")], 0, 30 * 10**9, 10**9, "last")
        assert series.points == [(10 * 10**9, 1.5), (20 * 10**9, 2.5)]
    finally:
        store.close()
