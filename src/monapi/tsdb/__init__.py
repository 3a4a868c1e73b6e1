"""Time-series backends, chosen by ``MONAPI_TSDB``."""

from __future__ import annotations

from . import sqlite as _sqlite  # noqa: F401  (registers "sqlite")
from .base import (
    AGGREGATIONS,
    LatestValue,
    Point,
    Series,
    TimeSeriesStore,
    Value,
    WriteBatch,
    create_store,
    register,
)

__all__ = [
    "AGGREGATIONS",
    "LatestValue",
    "Point",
    "Series",
    "TimeSeriesStore",
    "Value",
    "WriteBatch",
    "create_store",
    "register",
]
