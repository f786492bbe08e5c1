"""MemorySpec and Thresholds: validation (each bad field raises ValueError naming it),
good values accepted, and the worker limit ``MemorySpec.limit`` works out."""

from __future__ import annotations

import math
import re
from dataclasses import replace
from typing import Any

import pytest

from lessor.specs.memory import LEVELS, MACHINE, MemorySpec, Thresholds

INF, NAN = math.inf, math.nan
MB = 1_000_000


def names(message: str, *fields: str) -> bool:
    """``message`` names every one of ``fields`` as a word."""
    return all(re.search(rf"\b{f}\b", message) for f in fields)


# -- Thresholds ----------------------------------------------------------------------------


def test_threshold_defaults_follow_dask() -> None:
    t = Thresholds()
    assert t.levels() == [("warn", 0.6), ("cleanup", 0.7), ("pause", 0.8), ("restart", 0.95)]
    assert t.hysteresis == 0.05
    assert [name for name, _ in t.levels()] == list(LEVELS[1:])
    assert MACHINE.levels() == [
        ("warn", 0.85), ("cleanup", 0.88), ("pause", 0.92), ("restart", 0.96),
    ]  # fmt: skip
    assert MACHINE.hysteresis == 0.03


@pytest.mark.parametrize("level", ["warn", "cleanup", "pause", "restart"])
@pytest.mark.parametrize("value", [0, 0.0, -0.1, 1.5, 1.0000001, NAN, INF, True, False, "0.5"])
def test_a_threshold_must_be_a_fraction_in_0_1(level: str, value: Any) -> None:
    # keep the others out of the way, so only this field can be wrong
    others = {n: None for n in ("warn", "cleanup", "pause", "restart") if n != level}
    with pytest.raises(ValueError, match=rf"^{level} must be a fraction in \(0, 1\]") as exc:
        Thresholds(**others, **{level: value}, hysteresis=0.0)
    assert repr(value) in str(exc.value)


@pytest.mark.parametrize(
    ("kw", "field", "below"),
    [
        ({"pause": 0.65}, "pause", "cleanup"),  # pause below cleanup
        ({"pause": 0.7}, "pause", "cleanup"),  # equal is not above
        ({"cleanup": 0.55}, "cleanup", "warn"),
        ({"warn": 0.75}, "cleanup", "warn"),  # warn above cleanup: cleanup is then too low
        ({"restart": 0.8}, "restart", "pause"),
        ({"restart": 0.5}, "restart", "pause"),
        ({"cleanup": None, "pause": 0.55}, "pause", "warn"),  # a None level is skipped
        ({"pause": None, "restart": 0.7}, "restart", "cleanup"),
    ],
)
def test_thresholds_must_rise(kw: dict[str, Any], field: str, below: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field} must be above {below}") as exc:
        Thresholds(**kw)
    assert names(str(exc.value), field, below)


@pytest.mark.parametrize(
    ("kw", "value"),
    [
        ({"hysteresis": 0.6}, 0.6),  # equal to the lowest threshold (warn)
        ({"hysteresis": 0.7}, 0.7),
        ({"warn": None, "hysteresis": 0.7}, 0.7),  # then cleanup is the lowest
        ({"hysteresis": -0.01}, -0.01),
        ({"hysteresis": NAN}, NAN),
        ({"hysteresis": INF}, INF),
        ({"hysteresis": True}, True),
        ({"hysteresis": None}, None),
        ({"warn": None, "cleanup": None, "pause": None, "restart": None, "hysteresis": 1.0}, 1.0),
    ],
)
def test_hysteresis_must_be_below_the_lowest_threshold(kw: dict[str, Any], value: Any) -> None:
    with pytest.raises(ValueError, match=r"^hysteresis must be >= 0 and below") as exc:
        Thresholds(**kw)
    assert str(exc.value).endswith(f"got {value!r}")


def test_good_thresholds_are_accepted() -> None:
    assert Thresholds(0.1, 0.2, 0.3, 1.0, 0.0).levels()[-1] == ("restart", 1.0)
    assert Thresholds(hysteresis=0.59).hysteresis == 0.59  # just below warn
    assert Thresholds(warn=None, hysteresis=0.69).hysteresis == 0.69  # cleanup is the lowest
    nothing = Thresholds(None, None, None, None, hysteresis=0.99)  # lowest is then 1.0
    assert [v for _, v in nothing.levels()] == [None] * 4
    only_restart = Thresholds(warn=None, cleanup=None, pause=None, restart=0.1, hysteresis=0.0)
    assert only_restart.levels()[3] == ("restart", 0.1)  # nothing to be out of order with
    assert Thresholds(pause=1, restart=None).pause == 1  # an int fraction


# -- MemorySpec ----------------------------------------------------------------------------

BAD: list[tuple[str, Any]] = [
    *[("max_memory", v) for v in (0, -1, 1.5, 1e9, True, False, "1000", NAN)],
    *[("memory_fraction", v) for v in (0, 0.0, -0.1, 1.5, NAN, INF, True, "0.5")],
    *[("thresholds", v) for v in (None, {"warn": 0.6}, (0.6, 0.7, 0.8, 0.95), MemorySpec)],
    *[("machine", v) for v in (0.9, {"pause": 0.9}, "machine", MACHINE.levels())],
    *[("interval", v) for v in (0, 0.0, -1.0, NAN, None, True)],
    *[("leak_mb_per_min", v) for v in (0, 0.0, -5.0, NAN, True, "60")],
    *[("leak_window", v) for v in (0, -1.0, INF, NAN, None, 0.99)],  # 0.99 < 8 x 0.25
    *[("cleanup_interval", v) for v in (0, -1.0, INF, NAN, None, False)],
    *[("recycle_grace", v) for v in (0, -0.5, INF, NAN, None)],
    *[("uss_interval", v) for v in (0, -1.0, NAN, True)],
    *[("max_pause", v) for v in (0, -1.0, NAN, True, "10")],
]


@pytest.mark.parametrize(("field", "value"), BAD, ids=[f"{f}={v!r}" for f, v in BAD])
def test_a_bad_field_raises_value_error_naming_it(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"^{field} ") as exc:
        MemorySpec(**{field: value})
    assert str(exc.value).endswith(f"got {value!r}")


@pytest.mark.parametrize(
    ("interval", "leak_window", "ok"),
    [
        (1.0, 7.99, False),
        (1.0, 8.0, True),  # exactly 8 intervals
        (0.25, 1.9, False),
        (0.25, 2.0, True),
        (10.0, 79.0, False),
        (10.0, 80.0, True),
    ],
)
def test_leak_window_must_span_eight_intervals(
    interval: float, leak_window: float, ok: bool
) -> None:
    if ok:
        spec = MemorySpec(interval=interval, leak_window=leak_window)
        assert (spec.interval, spec.leak_window) == (interval, leak_window)
    else:
        with pytest.raises(ValueError, match=r"^leak_window must span at least 8 intervals"):
            MemorySpec(interval=interval, leak_window=leak_window)


def test_an_infinite_interval_is_named_when_leak_window_is_infinite_too() -> None:
    with pytest.raises(ValueError, match=r"^interval must be finite, got inf$"):
        MemorySpec(interval=INF, leak_window=INF)


def test_an_infinite_interval_is_named() -> None:
    with pytest.raises(ValueError, match=r"^interval "):
        MemorySpec(interval=INF)


def test_the_first_bad_field_is_the_one_named() -> None:
    with pytest.raises(ValueError, match=r"^max_memory"):
        MemorySpec(max_memory=0, interval=-1.0)


def test_default_spec() -> None:
    spec = MemorySpec()
    assert spec.max_memory is None and spec.memory_fraction is None
    assert spec.thresholds == Thresholds() and spec.machine == MACHINE
    assert (spec.interval, spec.leak_mb_per_min, spec.leak_window) == (0.25, 60.0, 60.0)
    assert (spec.cleanup_interval, spec.recycle_grace, spec.uss_interval) == (10.0, 10.0, 5.0)


def test_good_values_are_accepted() -> None:
    spec = MemorySpec(
        max_memory=512 * MB,
        memory_fraction=1.0,
        thresholds=Thresholds(warn=None, cleanup=None, pause=0.9, restart=None),
        machine=None,
        interval=0.01,
        leak_mb_per_min=None,
        leak_window=0.08,
        cleanup_interval=0.5,
        recycle_grace=0.001,
        uss_interval=None,
    )
    assert spec.max_memory == 512 * MB and spec.machine is None
    assert spec.leak_mb_per_min is None and spec.uss_interval is None
    assert MemorySpec(max_memory=1).max_memory == 1
    assert MemorySpec(memory_fraction=0.001).memory_fraction == 0.001
    assert MemorySpec(leak_mb_per_min=0.5, uss_interval=100).uss_interval == 100
    assert replace(spec, interval=1.0, leak_window=8.0).leak_window == 8.0


def test_a_spec_is_frozen() -> None:
    spec = MemorySpec()
    with pytest.raises(AttributeError):
        spec.max_memory = 5  # type: ignore[misc]
    with pytest.raises(AttributeError):
        Thresholds().warn = 0.1  # type: ignore[misc]


# -- limit ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_memory", "memory_fraction", "machine", "limit"),
    [
        (None, None, 16_000 * MB, None),  # neither: no limit of its own
        (500 * MB, None, 16_000 * MB, 500 * MB),
        (500 * MB, None, 100 * MB, 500 * MB),  # max_memory alone ignores the machine
        (None, 0.25, 16_000 * MB, 4_000 * MB),
        (None, 0.25, 1001, 250),  # rounded down to whole bytes
        (None, 1.0, 3 * MB, 3 * MB),
        (500 * MB, 0.25, 16_000 * MB, 500 * MB),  # the lower of the two
        (500 * MB, 0.25, 1_000 * MB, 250 * MB),
        (500 * MB, 0.5, 1_000 * MB, 500 * MB),  # equal
    ],
)
def test_limit_is_the_lowest_of_max_memory_and_memory_fraction(
    max_memory: int | None, memory_fraction: float | None, machine: int, limit: int | None
) -> None:
    spec = MemorySpec(max_memory=max_memory, memory_fraction=memory_fraction)
    got = spec.limit(machine)
    assert got == limit
    assert got is None or isinstance(got, int)
