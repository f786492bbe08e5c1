"""BatchSpec: validation (each bad field raises ValueError naming it), the settings it
hands the core, and the limits it hands a worker's handle."""

from __future__ import annotations

import dataclasses
import math
import pickle
from typing import Any

import pytest

from lessor.core.batch_decisions import BatchEvent, BatchSettings
from lessor.specs import BatchSpec
from lessor.specs.batch import BatchLimits

INF, NAN = math.inf, math.nan

COUNTS = ("max_batch_size", "max_pending", "max_in_flight", "max_attempts", "frame_items")
DURATIONS = ("max_wait", "submit_timeout", "retry_backoff", "retry_backoff_max", "send_interval")
HOOKS = ("on_batch_start", "on_batch_complete", "on_item_error")


def process(items: list[Any]) -> list[Any]:
    """A module-level processor (it pickles by reference)."""
    return [("ok", x) for x in items]


def spec(**kw: Any) -> BatchSpec:
    return BatchSpec(**{"name": "b", "processor": process, **kw})


# -- defaults and what the spec hands on --------------------------------------------------


def test_defaults() -> None:
    s = BatchSpec("x", process)
    assert (s.max_batch_size, s.max_wait, s.max_pending, s.max_in_flight) == (100, 0.05, 10_000, 1)
    assert (s.submit_timeout, s.max_attempts, s.retry_backoff, s.retry_backoff_max) == (
        30.0,
        3,
        0.1,
        5.0,
    )
    assert s.bisect is True
    assert (s.send_interval, s.frame_items) == (0.002, 512)
    assert s.on_batch_start is None and s.on_batch_complete is None and s.on_item_error is None


def test_default_settings_are_the_cores_defaults() -> None:
    """BatchSettings repeats the spec's defaults: the two must not drift apart."""
    assert BatchSpec("x", process).settings == BatchSettings()
    spec_fields = {f.name: f for f in dataclasses.fields(BatchSpec)}
    for f in dataclasses.fields(BatchSettings):
        assert f.name in spec_fields, f"BatchSettings.{f.name} is not a BatchSpec field"
        assert spec_fields[f.name].default == f.default, f.name


NON_DEFAULT: dict[str, Any] = {
    "max_batch_size": 7,
    "max_wait": 0.25,
    "max_pending": 33,
    "max_in_flight": 4,
    "max_attempts": 6,
    "retry_backoff": 0.5,
    "retry_backoff_max": 9.0,
    "bisect": False,
}


def test_settings_carry_every_field() -> None:
    assert set(NON_DEFAULT) == {f.name for f in dataclasses.fields(BatchSettings)}
    defaults = BatchSettings()
    for name, value in NON_DEFAULT.items():
        assert getattr(defaults, name) != value, name  # so a mix-up shows
    settings = spec(**NON_DEFAULT).settings
    assert settings == BatchSettings(**NON_DEFAULT)
    for name, value in NON_DEFAULT.items():
        assert getattr(settings, name) == value, name


@pytest.mark.parametrize(("field", "value"), list(NON_DEFAULT.items()))
def test_settings_carry_each_field_alone(field: str, value: Any) -> None:
    settings = spec(**{field: value}).settings
    assert getattr(settings, field) == value
    others = {f.name for f in dataclasses.fields(BatchSettings)} - {field}
    for name in others:
        assert getattr(settings, name) == getattr(BatchSettings(), name), name


def test_limits() -> None:
    s = spec(name="sink", max_pending=12, submit_timeout=2.5, send_interval=0.01, frame_items=64)
    limits = s.limits
    assert limits == BatchLimits("sink", 12, 2.5, 0.01, 64)
    assert (
        limits.name,
        limits.max_pending,
        limits.submit_timeout,
        limits.send_interval,
        limits.frame_items,
    ) == ("sink", 12, 2.5, 0.01, 64)
    assert pickle.loads(pickle.dumps(limits)) == limits  # it is sent to workers
    assert BatchSpec("x", process).limits == BatchLimits("x", 10_000, 30.0, 0.002, 512)


def test_the_spec_is_frozen_and_its_repr_leaves_out_callables() -> None:
    s = spec()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.max_wait = 1.0  # type: ignore[misc]
    text = repr(s)
    assert "name='b'" in text and "max_batch_size=100" in text
    assert "processor" not in text and "on_batch_start" not in text and "on_item_error" not in text


def test_a_spec_with_a_module_level_processor_pickles() -> None:
    s = spec(max_batch_size=5)
    back = pickle.loads(pickle.dumps(s))
    assert back == s and back.processor is process


# -- validation ----------------------------------------------------------------------------

BAD_COUNTS: tuple[Any, ...] = (0, -1, True, False, 1.0, 2.5, "3", None, INF, NAN)
BAD_DURATIONS: tuple[Any, ...] = (0, 0.0, -1, -0.5, NAN, INF, -INF, True, False, "1", None)
BAD_HOOKS: tuple[Any, ...] = (3, "print", [], True)

BAD: list[tuple[str, Any]] = [
    ("name", ""),
    ("name", None),
    ("name", 3),
    ("name", b"b"),
    ("processor", None),
    ("processor", 3),
    ("processor", "process"),
    # ints >= 1
    *[(name, value) for name in COUNTS for value in BAD_COUNTS],
    # positive, finite durations
    *[(name, value) for name in DURATIONS for value in BAD_DURATIONS],
    ("bisect", 1),
    ("bisect", 0),
    ("bisect", "yes"),
    ("bisect", None),
    *[(name, value) for name in HOOKS for value in BAD_HOOKS],
]


@pytest.mark.parametrize(("field", "value"), BAD, ids=[f"{f}={v!r}" for f, v in BAD])
def test_a_bad_field_raises_naming_it(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field) as caught:
        spec(**{field: value})
    assert str(caught.value).startswith(f"{field} "), caught.value


@pytest.mark.parametrize(("backoff", "most"), [(1.0, 0.5), (0.2, 0.1), (5.5, 5.0), (2, 1)])
def test_retry_backoff_max_below_retry_backoff(backoff: float, most: float) -> None:
    with pytest.raises(ValueError) as caught:
        spec(retry_backoff=backoff, retry_backoff_max=most)
    assert str(caught.value).startswith("retry_backoff_max "), caught.value
    assert ">= retry_backoff" in str(caught.value)


def test_a_retry_backoff_above_the_default_max_needs_a_max() -> None:
    with pytest.raises(ValueError, match=r"^retry_backoff_max "):
        spec(retry_backoff=6.0)
    assert spec(retry_backoff=6.0, retry_backoff_max=6.0).settings.retry_backoff == 6.0


def on_item_error(item: Any, error: BaseException) -> None:
    pass


def on_event(event: BatchEvent) -> None:
    pass


GOOD: list[tuple[str, Any]] = [
    ("name", "n"),
    ("processor", lambda items: items),
    ("processor", process),
    *[(name, value) for name in COUNTS for value in (1, 2, 10**9)],
    *[
        (name, value)
        for name in ("max_wait", "submit_timeout", "send_interval")
        for value in (1e-9, 1, 0.5, 3600)
    ],
    ("retry_backoff", 1e-6),
    ("retry_backoff", 5),  # an int, equal to the default max
    ("retry_backoff_max", 0.1),  # equal to the default retry_backoff
    ("retry_backoff_max", 1e6),
    ("bisect", False),
    ("bisect", True),
    ("on_batch_start", on_event),
    ("on_batch_complete", on_event),
    ("on_item_error", on_item_error),
    *[(name, None) for name in HOOKS],
]


@pytest.mark.parametrize(("field", "value"), GOOD, ids=[f"{f}={v!r}" for f, v in GOOD])
def test_a_good_field_is_kept(field: str, value: Any) -> None:
    s = spec(**{field: value})
    assert getattr(s, field) is value or getattr(s, field) == value
