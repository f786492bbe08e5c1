"""A circuit breaker's spec (Resilience4j's settings) and its error filters."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Literal

from lessor.core.breaker import BreakerSettings
from lessor.specs.checks import count, error_filter, nonempty, number, percent, positive, require

__all__ = ["BreakerSpec", "ErrorFilter"]

#: Which errors a breaker counts: exception types (subclasses match) or a predicate.
ErrorFilter = tuple[type[BaseException], ...] | Callable[[BaseException], bool]


@dataclass(frozen=True)
class BreakerSpec:
    """A circuit breaker shared by every process of a runtime (Resilience4j's settings).

    Calls are judged over a sliding window: the last ``window_size`` calls
    (``window_type="count"``) or seconds (``"time"``, in steps of 1/20 of it). Once the
    window holds ``minimum_calls`` calls, a failure rate or a slow-call rate at or
    above its threshold opens the breaker for ``open_duration``; then up to
    ``half_open_calls`` probe calls decide, by the same thresholds, whether it closes
    or opens again.

    Errors: an exception matching ``record_errors`` (default: any ``Exception``)
    counts as a failure, unless it matches ``ignore_errors``, which counts as
    neither failure nor success; any other exception counts as a success, as in
    Resilience4j. ``KeyboardInterrupt`` and other non-``Exception`` errors are
    always ignored. Either filter is a tuple of exception types or a predicate
    ``fn(exc) -> bool``; to reach worker processes it must pickle (a module-level
    function, not a lambda).
    """

    name: str
    #: "count": the window is the last ``window_size`` calls; "time": the last
    #: ``window_size`` seconds.
    window_type: Literal["count", "time"] = "count"
    #: Calls (count window) or seconds (time window).
    window_size: int = 100
    #: Calls the window must hold before a rate can open the breaker.
    minimum_calls: int = 100
    #: Failure rate (%) at or above which the breaker opens.
    failure_rate_threshold: float = 50.0
    #: A call that takes at least this long is slow (seconds).
    slow_call_duration: float = 60.0
    #: Slow-call rate (%) at or above which the breaker opens.
    slow_call_rate_threshold: float = 100.0
    #: How long the breaker stays open before it lets probes through (seconds).
    open_duration: float = 60.0
    #: None: every open lasts ``open_duration``. Else each open after a failed
    #: half-open doubles it, up to this many seconds, until the breaker closes.
    open_duration_max: float | None = None
    #: Each open is stretched by a random fraction up to this (0.2: up to 20% longer),
    #: so that breakers tripped together do not probe together.
    open_jitter: float = 0.0
    #: Probe calls allowed in half-open, across every process.
    half_open_calls: int = 10
    #: None: half-open waits for its probes for ever. Else it opens again after this
    #: many seconds without a verdict (seconds).
    max_wait_in_half_open: float | None = None
    record_errors: ErrorFilter = (Exception,)
    ignore_errors: ErrorFilter = ()
    #: A handle sends its outcomes at least this often while it has some (seconds).
    #: Every process sees a trip within about this long of the call that caused it.
    report_interval: float = 0.002

    def __post_init__(self) -> None:
        nonempty("name", self.name)
        require(self.window_type in ("count", "time"), "window_type",
                 "must be 'count' or 'time'", self.window_type)  # fmt: skip
        count("window_size", self.window_size)
        count("minimum_calls", self.minimum_calls)
        count("half_open_calls", self.half_open_calls)
        percent("failure_rate_threshold", self.failure_rate_threshold)
        percent("slow_call_rate_threshold", self.slow_call_rate_threshold)
        for name in ("slow_call_duration", "open_duration", "report_interval"):
            positive(name, getattr(self, name))
            require(math.isfinite(getattr(self, name)), name, "must be finite",
                     getattr(self, name))  # fmt: skip
        positive("max_wait_in_half_open", self.max_wait_in_half_open, optional=True)
        if self.max_wait_in_half_open is not None:
            require(math.isfinite(self.max_wait_in_half_open), "max_wait_in_half_open",
                     "must be finite or None", self.max_wait_in_half_open)  # fmt: skip
        if self.open_duration_max is not None:
            require(number(self.open_duration_max) and math.isfinite(self.open_duration_max)
                     and self.open_duration_max >= self.open_duration,
                     "open_duration_max", "must be finite, >= open_duration, or None",
                     self.open_duration_max)  # fmt: skip
        require(number(self.open_jitter) and 0 <= self.open_jitter <= 10, "open_jitter",
                 "must be in [0, 10]", self.open_jitter)  # fmt: skip
        error_filter("record_errors", self.record_errors)
        error_filter("ignore_errors", self.ignore_errors)

    @property
    def settings(self) -> BreakerSettings:
        """What the core decides by."""
        names = [f.name for f in fields(BreakerSettings)]
        return BreakerSettings(**{name: getattr(self, name) for name in names})

    def failed(self, exc: BaseException) -> bool | None:
        """True: ``exc`` is a failure; False: a success; None: ignored."""
        if not isinstance(exc, Exception) or _matches(self.ignore_errors, exc):
            return None
        return _matches(self.record_errors, exc)


def _matches(errors: ErrorFilter, exc: BaseException) -> bool:
    if isinstance(errors, tuple):
        return isinstance(exc, errors)
    return bool(errors(exc))
