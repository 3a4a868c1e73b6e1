"""Property tests: whatever JSON arrives at /api/v1/data, the answer is a documented status."""

from __future__ import annotations

import json
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monapi.ingest import parse_timestamp

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
