"""Property tests: whatever JSON arrives at /api/v1/data, the answer is a documented status; and
whatever bytes reach the decoders (JSON, gzip, timestamps, the fast paths), they answer what they
document and never raise anything else."""

from __future__ import annotations

import gzip
import json
import time
import tracemalloc
from datetime import datetime
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from monapi import fastpath
from monapi.errors import ApiError
from monapi.fields import DEFAULT_FIELDS, FieldSpec
from monapi.ingest import Validator, decode_points, parse_timestamp, read_body
from monapi.lpparse import parse
from monapi.tsdb.base import WriteBatch
from monapi.tsdb.influxdb import _check_value as influx_check_value
from monapi.tsdb.lineprotocol import default_identity

from .conftest import push, register_server

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
field_values = st.one_of(
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(),
    st.none(),
    st.lists(st.integers(), max_size=2),
)
points = st.fixed_dictionaries(
    {
        "fields": st.dictionaries(
            st.sampled_from(["load1", "uptime", "x", ""]), field_values, max_size=3
        )
    },
    optional={
        "measurement": st.sampled_from(["system", "cpu", "bad name", ""]) | st.text(max_size=5),
        "timestamp": st.one_of(
            st.integers(), st.floats(allow_nan=False), st.text(max_size=30), st.none()
        ),
        "tags": st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=3),
    },
)
bodies = points | st.fixed_dictionaries({"points": st.lists(points, max_size=5)}) | json_values
ANSWERS = {200, 204, 400, 413, 415, 422}
SLOW = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SLOW
@given(body=bodies)
def test_any_json_body_gets_a_documented_answer(
    app: Flask, client: FlaskClient, admin_token: str, body: Any
) -> None:
    key = app.config.setdefault("key", None) or register_server(client, admin_token)["api_key"]
    app.config["key"] = key
    try:
        json.dumps(body, allow_nan=False)
    except (ValueError, OverflowError):
        return
    resp = push(client, key, body)
    assert resp.status_code in ANSWERS, (body, resp.get_json())
    if resp.status_code >= 400:
        assert {"error", "code", "status", "request_id"} <= set(resp.get_json())


@SLOW
@given(raw=st.binary(max_size=200))
def test_any_bytes_get_a_documented_answer(
    app: Flask, client: FlaskClient, admin_token: str, raw: bytes
) -> None:
    key = app.config.setdefault("key", None) or register_server(client, admin_token)["api_key"]
    app.config["key"] = key
    resp = client.post(
        "/api/v1/data",
        data=raw,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    assert resp.status_code in ANSWERS


@given(value=st.one_of(st.integers(), st.floats(), st.text(), st.booleans(), st.none()))
def test_parse_timestamp_returns_an_int_or_raises_value_error(value: Any) -> None:
    try:
        assert isinstance(parse_timestamp(value, 0), int)
    except ValueError:
        pass
    except OverflowError:
        raise AssertionError(f"overflow escaped for {value!r}") from None


# --- the decoders, called directly --------------------------------------------------------------
# Whatever the bytes, each decoder answers what it documents and nothing else: a value, None
# (the fast paths: "take the exact path"), or its error type (ApiError with a 4xx; ValueError
# for parse_timestamp; LineError entries for lpparse). Seeds are fixed by derandomize=True.

SPECS: dict[str, dict[str, FieldSpec]] = {}
for _m, _n, _t, _u, _lo, _hi, _d in [
    *DEFAULT_FIELDS,
    ("app", "version", "string", "", None, None, ""),
    ("app", "healthy", "bool", "", None, None, ""),
    ("app", "count", "int", "", 0, 10, ""),
]:
    SPECS.setdefault(_m, {})[_n] = FieldSpec(_m, _n, _t, _lo, _hi, True, _u)
NOW = time.time_ns()
IDENT = default_identity(WriteBatch(1, "web-01", []))
CFG = fastpath.config(SPECS, lambda name: influx_check_value(name, 0.0) is None)
MAX_POINTS = 20
DIRECT = settings(max_examples=400, deadline=None, derandomize=True)


def validator(unknown: str = "reject", replace_identity: bool = False) -> Validator:
    return Validator(SPECS, unknown, 86400.0, 600.0, now_ns=NOW, replace_identity=replace_identity)


class Obj(tuple[tuple[str, Any], ...]):
    """A JSON object as written: its (key, value) pairs, a key possibly twice."""


def dump(value: Any) -> str:
    if isinstance(value, Obj):
        return "{" + ",".join(f"{json.dumps(k)}:{dump(v)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ",".join(map(dump, value)) + "]"
    return json.dumps(value)


def repeats_a_key(value: Any) -> bool:
    if isinstance(value, Obj):
        keys = [k for k, _ in value]
        return len(set(keys)) < len(keys) or any(repeats_a_key(v) for _, v in value)
    if isinstance(value, list):
        return any(map(repeats_a_key, value))
    return False


HOSTILE_TEXT = st.one_of(
    st.sampled_from(["", "\x00", "a\x00b", "\ud800", "é", "😀", ":", "a:b", "\\", '"', "\n"]),
    st.sampled_from(["system", "cpu", "usage_percent", "load1", "2024-01-01T00:00:00Z"]),
    st.text(max_size=12),
)
KEYS = st.sampled_from(
    ["points", "fields", "measurement", "timestamp", "tags", "usage_percent", "load1", "mount"]
)
NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -0.0, 1e308, 2**63, -(2**63) - 1, 2**64, NOW, NOW * 1000]),
)


def pairs_of(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Obj]:
    return st.lists(st.tuples(KEYS | HOSTILE_TEXT, values), max_size=4).map(Obj)


JSON_MODEL = st.recursive(
    st.none() | st.booleans() | NUMBERS | HOSTILE_TEXT,
    lambda inner: st.lists(inner, max_size=3) | pairs_of(inner),
    max_leaves=12,
)


FLOAT_FIELDS = {
    meas: [name for name, spec in by_name.items() if spec.type == "float"]
    for meas, by_name in SPECS.items()
}
CLEAN_TAGS = st.sampled_from([("mount", "/"), ("device", "sda"), ("a", "1"), ("url", "a:b")])


@st.composite
def plausible(draw: st.DrawFn) -> Obj:
    """A body much like an agent's (often valid: the fast path takes it), with something odd
    in it now and then: a key twice, an explicit default, a value of another type."""
    points = []
    for _ in range(draw(st.integers(1, 4))):
        odd = draw(st.integers(0, 5)) == 0
        meas = draw(st.sampled_from(["cpu", "mem", "system", "disk", "app"] if odd else ["cpu"]))
        names = [*SPECS[meas], "x"] if odd else FLOAT_FIELDS[meas]
        values = st.floats(0, 100) | st.integers(0, 10) | st.booleans() | HOSTILE_TEXT
        fields = draw(
            st.lists(
                st.tuples(st.sampled_from(names), values if odd else st.floats(0, 100)),
                min_size=1,
                max_size=4,
                unique_by=None if odd else (lambda t: t[0]),
            )
        )
        pairs: list[tuple[str, Any]] = [("measurement", meas), ("fields", Obj(fields))]
        if draw(st.booleans()):
            ts = NUMBERS | HOSTILE_TEXT | st.none() if odd else st.just(NOW) | st.none()
            pairs.append(("timestamp", draw(ts)))
        if draw(st.booleans()):
            clean_tags = st.lists(CLEAN_TAGS, max_size=3, unique_by=lambda t: t[0]).map(Obj)
            pairs.append(("tags", draw(pairs_of(HOSTILE_TEXT) if odd else clean_tags)))
        if draw(st.integers(0, 5)) == 0:
            pairs.append(draw(st.tuples(KEYS, JSON_MODEL) | st.sampled_from(pairs)))
        points.append(Obj(draw(st.permutations(pairs))))
    return Obj([("points", points)])


@st.composite
def json_bodies(draw: st.DrawFn) -> tuple[bytes, bool | None]:
    """A body, and whether it repeats a key in an object (None: bytes spliced in, unknown)."""
    model = draw(st.one_of(plausible(), plausible(), plausible(), JSON_MODEL))
    body = dump(model).encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 4)) == 0:  # splice in something no encoder writes
        junk = draw(
            st.sampled_from([b"\xff", b"\xc3", b"\x00", b"[" * 5000, b"{" * 5000, b'"\\u'])
            | st.binary(max_size=8)
        )
        at = draw(st.integers(0, len(body)))
        return body[:at] + junk + body[at:], None
    return body, repeats_a_key(model)


@DIRECT
@given(json_bodies())
@example((b"[" * 100_000, None))
@example((b'{"fields": ' + b"[" * 100_000 + b"}", None))
@example((b'{"fields": {"load1": 1, "lo\xffad": 2}}', None))
@example((b'{"fields": {"load1": 1}, "fields": {"load5": 2}}', True))
@example((b'{"points": [{"fields": {"load1": 1}, "timestamp": "2024-01-01T00:00:00Z"}]}', False))
def test_the_json_decoder_returns_points_or_a_4xx(body_and_repeats: Any) -> None:
    body, repeats = body_and_repeats
    try:
        points = decode_points(body, MAX_POINTS)
    except ApiError as exc:
        assert exc.status in (400, 413, 422), exc.message
        assert exc.message
        return
    assert not repeats, "a key given twice was read as its last value"
    assert 1 <= len(points) <= MAX_POINTS
    for unknown in ("reject", "discover", "drop"):
        res = validator(unknown).validate(points)
        assert all(0 <= e["index"] < len(points) and e["reason"] for e in res.errors)
        if unknown != "drop":  # a point is stored whole or refused (drop: or all dropped)
            assert len(res.points) + res.rejected == len(points)


@DIRECT
@given(json_bodies())
@example(
    (b'{"points":[{"measurement":"cpu","fields":{"usage_percent":1,"usage_percent":2}}]}', True)
)
@example(
    (
        b'{"points":[{"measurement":"cpu","fields":{"usage_percent":1},"tags":{"a":"1","a":"2"}}]}',
        True,
    )
)
@example(
    (b'{"points":[{"measurement":"cpu","fields":{"usage_percent":1},"tags":{"a:b":"c:d"}}]}', False)
)
@example(
    (
        b'{"points":[{"measurement":"cpu","fields":{"usage_percent":1},"tags":'
        + b"[" * 100_000
        + b"}]}",
        None,
    )
)
@example((b'{"points":[{"measurement":"cpu\xff","fields":{"usage_percent":1}}]}', None))
def test_the_json_fast_path_declines_or_agrees_with_the_exact_path(body_and_repeats: Any) -> None:
    body, _ = body_and_repeats
    got = fastpath.json_batch(body, CFG, validator(), IDENT, MAX_POINTS)
    if got is None:
        return
    lines, count = got
    # Taken: the exact path stores the same number of points and refuses nothing.
    res = validator().validate(decode_points(body, MAX_POINTS))
    assert (res.error_count, res.dropped, len(res.points)) == (0, 0, count)
    assert lines.count(b"\n") + 1 == count


LP_TOKEN = st.sampled_from(
    ["cpu", "usage_percent", "load1", "system", "=", ",", " ", "\n", "1.5", "2i", "3u", "t", '"',
     "\\", "\x00", "\t", "\r", "#", "NaN", "Inf", "1e999", "-0", str(NOW), "9" * 25]
)  # fmt: skip


@st.composite
def lp_bodies(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=300))
    text = "".join(draw(st.lists(LP_TOKEN | st.text(max_size=3), max_size=40)))
    body = text.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 3)) == 0:
        at = draw(st.integers(0, len(body)))
        body = body[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"])) + body[at:]
    return body


@DIRECT
@given(lp_bodies(), st.sampled_from([1, 1000, 10**9, 3_600_000_000_000]))
@example(b"cpu usage_percent=1,usage_percent=2 %d" % NOW, 1)
@example(b"cpu usage_percent=1\xff %d" % NOW, 1)
@example(b"cpu,a=\x00 usage_percent=1 %d" % NOW, 1)
@example(b"cpu usage_percent=1 %d" % (2**63 - 1), 3_600_000_000_000)
def test_the_line_protocol_fast_path_declines_or_agrees_with_the_exact_path(
    body: bytes, unit: int
) -> None:
    default_ts = NOW - NOW % unit
    got = fastpath.line_protocol(
        body, unit, default_ts, CFG, validator(replace_identity=True), IDENT, MAX_POINTS
    )
    lines, bad = parse(body)  # never raises either
    assert all(e.lineno >= 1 and e.reason for e in bad)
    if got is None:
        return
    data, count = got
    assert not bad
    for p in lines:
        p.timestamp = default_ts if p.timestamp is None else p.timestamp * unit
    res = validator(replace_identity=True).validate(lines)
    assert (res.error_count, res.dropped, len(res.points)) == (0, 0, count)
    assert data.count(b"\n") + 1 == count


@DIRECT
@given(
    st.one_of(
        st.binary(max_size=64),
        st.binary(max_size=2000).map(gzip.compress),
        st.integers(1, 3000).map(lambda n: gzip.compress(b"x" * n)),
        st.binary(max_size=200).map(lambda b: gzip.compress(b)[: len(b) // 2 + 10]),  # truncated
        st.just(gzip.compress(b"x" * 1000) + b"junk"),
        st.just(gzip.compress(b"x" * 1000) + gzip.compress(b"y")),  # two members
        st.just(gzip.compress(b"x" * 1000) + b"\0" * 8),  # zero padding, as gzip allows
    ),
    st.sampled_from([None, "", "gzip", "GZIP ", "identity", "deflate", "br", "gzip, gzip"]),
)
def test_read_body_returns_at_most_the_limit_or_a_4xx(raw: bytes, encoding: str | None) -> None:
    limit = 1024
    try:
        out = read_body(raw, encoding, limit)
    except ApiError as exc:
        assert exc.status in (400, 413, 415), exc.message
        assert exc.message
        return
    if (encoding or "").strip().lower() == "gzip":
        assert len(out) <= limit
        assert out == gzip.decompress(raw)  # all of it: a second member or junk is a 400
    else:
        assert out == raw


def test_a_gzip_bomb_is_refused_without_inflating_it() -> None:
    bomb = gzip.compress(b"\0" * (200 * 2**20), compresslevel=9)  # 200 MiB into ~200 kB
    assert len(bomb) < 2**20
    tracemalloc.start()
    try:
        with pytest.raises(ApiError) as info:
            read_body(bomb, "gzip", 2**20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.status == 413
    assert peak < 8 * 2**20, f"{peak} bytes allocated to refuse it"


RFC3339_TEXT = st.builds(
    lambda dt, sep, frac: dt.isoformat(sep=sep, timespec=frac),
    st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.timezones()
    ),
    st.sampled_from(["T", "t", " "]),
    st.sampled_from(["seconds", "milliseconds", "microseconds"]),
)


@DIRECT
@given(
    st.one_of(
        RFC3339_TEXT,
        RFC3339_TEXT.map(lambda t: t.replace("+00:00", "Z")),
        RFC3339_TEXT.flatmap(
            lambda t: st.integers(0, len(t)).map(lambda i: t[:i] + "\x00" + t[i:])
        ),
        st.integers(-(2**80), 2**80),
        st.floats(),
        st.text(max_size=40),
        st.sampled_from(["2024-W01-1T00:00Z", "20240101T000000Z", "2024-01-01T00Z"]),
    )
)
@example("2024-01-01T00:00:00\x00Z")
@example("0001-01-01T00:00:00+23:59")
@example("9999-12-31T23:59:59-23:59")
def test_parse_timestamp_reads_rfc3339_and_numbers_only(value: Any) -> None:
    try:
        ns = parse_timestamp(value, NOW)
    except ValueError as exc:
        assert str(exc).startswith("timestamp")
        return
    assert isinstance(ns, int)
    if isinstance(value, str):  # what was read is RFC 3339, and read right
        assert "\x00" not in value
        expected = datetime.fromisoformat(value.upper().replace(" ", "T"))
        assert ns == int(expected.timestamp()) * 10**9 + expected.microsecond * 1000
