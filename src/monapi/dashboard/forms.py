"""What the dashboard's forms share: their errors, number inputs, and the schema's complaints
placed next to the inputs they are about."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError


class FormErrors(Exception):
    """Problems with a submitted form: input name (or ``form``) -> message."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__(errors)
        self.errors = errors


def number(form: Any, name: str, errors: dict[str, str]) -> float | None:
    """A number input: None when empty; a message in ``errors`` when it is not a finite
    number."""
    text = form.get(name, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        errors[name] = f"{name} must be a number"
        return None
    if not math.isfinite(value):
        errors[name] = f"{name} must be a finite number"
        return None
    return value


def pydantic_errors(exc: ValidationError, input_of: Mapping[str, str]) -> dict[str, str]:
    """The schema's first complaint about each input: the model key of each error goes to its
    input through ``input_of``; a key it does not name (or a check of the whole) to ``form``."""
    out: dict[str, str] = {}
    for err in exc.errors(include_url=False, include_context=False, include_input=False):
        where = input_of.get(str(err["loc"][0]), "form") if err["loc"] else "form"
        out.setdefault(where, err["msg"].removeprefix("Value error, "))
    return out
