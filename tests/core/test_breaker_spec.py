"""BreakerSpec: validation (each bad field raises ValueError naming it), the settings
it hands the core, and how ``failed`` classifies an exception."""

from __future__ import annotations

import math
import pickle
from dataclasses import fields
from typing import Any

import pytest

from lessor.core.breaker import BreakerSettings
from lessor.specs import BreakerSpec

INF, NAN = math.inf, math.nan


def spec(**kw: Any) -> BreakerSpec:
    return BreakerSpec(**{"name": "b", **kw})


def is_timeout(exc: BaseException) -> bool:
    """A module-level predicate: it pickles (by reference)."""
    return isinstance(exc, TimeoutError)


def is_not_found(exc: BaseException) -> bool:
    return isinstance(exc, LookupError) and "not found" in str(exc)


class Boom(Exception):
    pass


class SubBoom(Boom):
    pass


# -- validation ----------------------------------------------------------------------------


def test_defaults_follow_resilience4j() -> None:
    s = spec()
    assert (s.window_type, s.window_size, s.minimum_calls) == ("count", 100, 100)
    assert (s.failure_rate_threshold, s.slow_call_rate_threshold) == (50.0, 100.0)
    assert (s.slow_call_duration, s.open_duration, s.half_open_calls) == (60.0, 60.0, 10)
    assert s.open_duration_max is None and s.max_wait_in_half_open is None
    assert s.record_errors == (Exception,) and s.ignore_errors == ()


BAD: list[tuple[str, Any]] = [
    ("name", ""),
    ("name", None),
    ("name", 3),
    # thresholds: a percentage in (0, 100]
    *[
        (field, value)
        for field in ("failure_rate_threshold", "slow_call_rate_threshold")
        for value in (0, 0.0, -1, 100.0001, 101, NAN, INF, True, False, "50", None)
    ],
    # durations that must be positive and finite
    *[
        (field, value)
        for field in ("slow_call_duration", "open_duration", "report_interval")
        for value in (0, 0.0, -1, -0.5, INF, -INF, NAN, True, "1", None)
    ],
    # optional durations
    *[("max_wait_in_half_open", value) for value in (0, 0.0, -1, -INF, NAN, True, "1")],
    ("open_duration_max", 0.0),
    ("open_duration_max", -1.0),
    ("open_duration_max", NAN),
    ("open_duration_max", "120"),
    ("open_jitter", -0.1),
    ("open_jitter", 10.5),
    ("open_jitter", NAN),
    ("open_jitter", INF),
    ("open_jitter", None),
    # ints >= 1
    *[
        (field, value)
        for field in ("window_size", "minimum_calls", "half_open_calls")
        for value in (0, -1, 1.0, 2.5, True, "3", None)
    ],
    ("window_type", "sliding"),
    ("window_type", "COUNT"),
    ("window_type", None),
    # error filters: a tuple of exception types or a predicate
    *[
        (field, value)
        for field in ("record_errors", "ignore_errors")
        for value in (
            (int,),
            "x",
            ValueError,  # a class is callable, but not a predicate
            [ValueError],
            (ValueError, "x"),
            (ValueError(),),
            None,
            1,
        )
    ],
]


@pytest.mark.parametrize(("field", "value"), BAD, ids=[f"{f}={v!r}" for f, v in BAD])
def test_a_bad_field_raises_naming_it(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field) as caught:
        spec(**{field: value})
    assert str(caught.value).startswith(field), caught.value


@pytest.mark.parametrize("value", [0.5, 1.0, 60.0, 60.5])
def test_open_duration_max_below_open_duration(value: float) -> None:
    with pytest.raises(ValueError, match="open_duration_max"):
        spec(open_duration=61.0, open_duration_max=value)


def test_open_duration_max_equal_to_open_duration_is_fine() -> None:
    assert spec(open_duration=5.0, open_duration_max=5.0).open_duration_max == 5.0


GOOD: list[tuple[str, Any]] = [
    ("failure_rate_threshold", 100),
    ("failure_rate_threshold", 0.001),
    ("slow_call_rate_threshold", 100.0),
    ("slow_call_rate_threshold", 1),
    ("slow_call_duration", 0.001),
    ("open_duration", 1),
    ("report_interval", 1e-6),
    ("max_wait_in_half_open", None),
    ("max_wait_in_half_open", 0.5),
    ("open_duration_max", None),
    ("open_duration_max", 3600),
    ("open_jitter", 0),
    ("open_jitter", 10),
    ("window_size", 1),
    ("minimum_calls", 1),
    ("minimum_calls", 10_000),  # above window_size: allowed (a full window is enough)
    ("half_open_calls", 1),
    ("window_type", "time"),
    ("record_errors", ()),
    ("record_errors", (OSError, Boom)),
    ("record_errors", (BaseException,)),
    ("record_errors", is_timeout),
    ("record_errors", lambda exc: True),  # valid here; only pickling needs module level
    ("ignore_errors", (KeyError,)),
    ("ignore_errors", is_not_found),
]


@pytest.mark.parametrize(("field", "value"), GOOD, ids=[f"{f}={v!r}" for f, v in GOOD])
def test_a_good_field_is_kept(field: str, value: Any) -> None:
    assert getattr(spec(**{field: value}), field) == value


@pytest.mark.parametrize("field", ["open_duration_max", "max_wait_in_half_open"])
def test_optional_durations_must_be_finite(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        spec(**{field: INF})


def test_spec_is_frozen() -> None:
    s = spec()
    with pytest.raises(AttributeError):
        s.open_duration = 1.0  # type: ignore[misc]


# -- what the core gets --------------------------------------------------------------------


def test_settings_carry_every_core_number() -> None:
    s = spec(
        window_type="time",
        window_size=30,
        minimum_calls=7,
        failure_rate_threshold=40.0,
        slow_call_rate_threshold=80.0,
        open_duration=2.0,
        open_duration_max=16.0,
        open_jitter=0.3,
        half_open_calls=3,
        max_wait_in_half_open=9.0,
    )
    assert s.settings == BreakerSettings(
        window_type="time",
        window_size=30,
        minimum_calls=7,
        failure_rate_threshold=40.0,
        slow_call_rate_threshold=80.0,
        open_duration=2.0,
        open_duration_max=16.0,
        open_jitter=0.3,
        half_open_calls=3,
        max_wait_in_half_open=9.0,
    )
    names = {f.name for f in fields(BreakerSettings)}
    assert names <= {f.name for f in fields(BreakerSpec)}


def test_default_settings_match_the_cores_defaults() -> None:
    assert spec().settings == BreakerSettings()


# -- classifying exceptions ----------------------------------------------------------------


def test_any_exception_is_a_failure_by_default() -> None:
    s = spec()
    assert s.failed(ValueError()) is True
    assert s.failed(Boom()) is True
    assert s.failed(TimeoutError()) is True


@pytest.mark.parametrize(
    "exc", [KeyboardInterrupt(), SystemExit(1), GeneratorExit(), BaseException()]
)
def test_non_exceptions_are_ignored(exc: BaseException) -> None:
    assert spec().failed(exc) is None
    # even when a filter names them
    assert spec(record_errors=(BaseException,)).failed(exc) is None
    assert spec(record_errors=lambda e: True).failed(exc) is None


def test_record_errors_types_match_subclasses() -> None:
    s = spec(record_errors=(Boom, OSError))
    assert s.failed(Boom()) is True
    assert s.failed(SubBoom()) is True
    assert s.failed(ConnectionResetError()) is True  # an OSError
    assert s.failed(ValueError()) is False  # not recorded: a success, as in Resilience4j
    assert s.failed(RuntimeError()) is False


def test_empty_record_errors_counts_every_exception_as_success() -> None:
    s = spec(record_errors=())
    assert s.failed(Boom()) is False
    assert s.failed(KeyboardInterrupt()) is None


def test_record_errors_predicate() -> None:
    s = spec(record_errors=is_timeout)
    assert s.failed(TimeoutError()) is True
    assert s.failed(ValueError()) is False


def test_a_truthy_predicate_result_is_a_bool() -> None:
    s = spec(record_errors=lambda exc: "yes" if isinstance(exc, Boom) else "")
    assert s.failed(Boom()) is True
    assert s.failed(ValueError()) is False


def test_ignore_errors_wins_over_record_errors() -> None:
    s = spec(record_errors=(Boom,), ignore_errors=(SubBoom,))
    assert s.failed(SubBoom()) is None
    assert s.failed(Boom()) is True
    assert s.failed(ValueError()) is False


def test_ignore_errors_predicate() -> None:
    s = spec(ignore_errors=is_not_found)
    assert s.failed(KeyError("not found")) is None
    assert s.failed(KeyError("other")) is True
    assert s.failed(Boom("not found")) is True  # not a LookupError


def test_an_ignored_type_that_is_also_recorded_is_ignored() -> None:
    s = spec(record_errors=(Boom,), ignore_errors=(Boom,))
    assert s.failed(Boom()) is None


# -- pickling ------------------------------------------------------------------------------


def test_spec_pickles_with_module_level_predicates() -> None:
    s = spec(
        window_type="time",
        window_size=20,
        record_errors=is_timeout,
        ignore_errors=is_not_found,
    )
    back = pickle.loads(pickle.dumps(s))
    assert back == s
    assert back.record_errors is is_timeout and back.ignore_errors is is_not_found
    assert back.failed(TimeoutError()) is True
    assert back.failed(KeyError("not found")) is None
    assert back.settings == s.settings


def test_spec_pickles_with_exception_types() -> None:
    s = spec(record_errors=(Boom, OSError), ignore_errors=(SubBoom,))
    back = pickle.loads(pickle.dumps(s))
    assert back == s
    assert back.failed(SubBoom()) is None and back.failed(Boom()) is True


def test_a_lambda_predicate_does_not_pickle() -> None:
    """What the docstring warns about: a lambda cannot reach worker processes."""
    s = spec(record_errors=lambda exc: True)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        pickle.dumps(s)
