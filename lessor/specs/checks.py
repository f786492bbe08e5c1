"""The field checks every spec runs where it is made: each bad field raises
``ValueError`` naming it."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["count", "error_filter", "nonempty", "number", "percent", "positive", "require"]


def require(ok: bool, name: str, why: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"{name} {why}, got {value!r}")


def number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def nonempty(name: str, value: Any) -> None:
    require(isinstance(value, str) and bool(value), name, "must be a non-empty str", value)


def positive(name: str, value: Any, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    require(
        number(value) and value > 0, name, "must be > 0" + (" or None" if optional else ""), value
    )


def error_filter(name: str, value: Any) -> None:
    ok = (callable(value) and not isinstance(value, type)) or (
        isinstance(value, tuple)
        and all(isinstance(t, type) and issubclass(t, BaseException) for t in value)
    )
    require(ok, name, "must be a tuple of exception types or a predicate", value)


def percent(name: str, value: Any) -> None:
    require(number(value) and 0 < value <= 100, name, "must be a percentage in (0, 100]", value)


def count(name: str, value: Any) -> None:
    require(
        isinstance(value, int) and not isinstance(value, bool) and value >= 1,
        name, "must be an int >= 1", value,
    )  # fmt: skip
