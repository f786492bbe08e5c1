"""Specs: small frozen dataclasses that say what to run, validated when made.

Defaults live here and nowhere else; each bad field raises ``ValueError`` naming it.
Pool defaults follow psycopg_pool (``acquire_timeout=30``, ``max_idle=600``,
``max_lifetime=3600`` minus up to 10% jitter) with poolboy's LIFO reuse.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from lessor.core.breaker import BreakerSettings
from lessor.factory import Factory

__all__ = [
    "Backoff",
    "BreakerSpec",
    "ChildSpec",
    "ErrorFilter",
    "PoolSpec",
    "Restart",
    "Strategy",
    "SupervisorSpec",
]


def _require(ok: bool, name: str, why: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"{name} {why}, got {value!r}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _nonempty(name: str, value: Any) -> None:
    _require(isinstance(value, str) and bool(value), name, "must be a non-empty str", value)


def _positive(name: str, value: Any, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    _require(
        _number(value) and value > 0, name, "must be > 0" + (" or None" if optional else ""), value
    )


@dataclass(frozen=True)
class PoolSpec:
    """A pool of resources made by ``factory``, at most ``max_size`` of them at once."""

    name: str
    factory: Factory[Any] = field(repr=False)
    min_size: int = 0
    max_size: int = 10
    #: Default wait for an Acquire that gives no timeout (seconds).
    acquire_timeout: float = 30.0
    #: Idle resources above ``min_size`` are destroyed after this long; None keeps them.
    max_idle: float | None = 600.0
    #: Resources are retired after this long (never while leased); None keeps them.
    max_lifetime: float | None = 3600.0
    #: Up to this fraction is taken off each resource's lifetime so they do not retire at once.
    lifetime_jitter: float = 0.1
    #: Default lease lifetime; None means a lease never expires by itself.
    lease_ttl: float | None = None
    #: Queued Acquires beyond this are refused with PoolExhausted; 0 means no limit.
    max_waiting: int = 0
    #: Which idle resource to hand out next: most recently used (lifo) or least (fifo).
    strategy: Literal["lifo", "fifo"] = "lifo"
    #: First and largest delay between failed creations (exponential backoff with jitter).
    create_backoff: float = 0.1
    create_backoff_max: float = 10.0
    #: Factory calls (create, destroy, check, reset) this pool runs at once, on the
    #: runtime's shared factory threads (psycopg_pool's ``num_workers``).
    factory_concurrency: int = 2
    #: "runtime": one pool in the supervising process. "process": each worker process
    #: runs its own pool of resources that cannot cross (live connections), every one
    #: of them holding a lease on a quota of ``max_total`` kept by the runtime.
    scope: Literal["runtime", "process"] = "runtime"
    #: The global cap across processes for ``scope="process"``; defaults to max_size.
    max_total: int | None = None
    #: The name of a breaker (``runtime.add_breaker``, added first) this pool obeys:
    #: while it is open, Acquires fail fast with BreakerOpen and no resource is made.
    #: None (default): no breaker.
    breaker: str | None = None

    def __post_init__(self) -> None:
        _nonempty("name", self.name)
        _require(
            isinstance(self.factory, Factory), "factory", "must be a lessor Factory", self.factory
        )
        for name in ("min_size", "max_size", "max_waiting"):
            value = getattr(self, name)
            _require(
                isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                name,
                "must be an int >= 0",
                value,
            )
        _require(self.max_size >= 1, "max_size", "must be >= 1", self.max_size)
        _require(
            self.min_size <= self.max_size,
            "min_size",
            f"must be <= max_size ({self.max_size})",
            self.min_size,
        )
        _positive("acquire_timeout", self.acquire_timeout)
        _positive("max_idle", self.max_idle, optional=True)
        _positive("max_lifetime", self.max_lifetime, optional=True)
        _positive("lease_ttl", self.lease_ttl, optional=True)
        _positive("create_backoff", self.create_backoff)
        _positive("create_backoff_max", self.create_backoff_max)
        _require(
            _number(self.lifetime_jitter) and 0 <= self.lifetime_jitter < 1,
            "lifetime_jitter",
            "must be in [0, 1)",
            self.lifetime_jitter,
        )
        _require(
            self.strategy in ("lifo", "fifo"), "strategy", "must be 'lifo' or 'fifo'", self.strategy
        )
        _require(self.scope in ("runtime", "process"), "scope", "must be 'runtime' or 'process'",
                 self.scope)  # fmt: skip
        _require(
            self.max_total is None
            or (isinstance(self.max_total, int) and not isinstance(self.max_total, bool)
                and self.max_total >= 1),
            "max_total", "must be an int >= 1 or None", self.max_total,
        )  # fmt: skip
        _require(self.breaker is None or (isinstance(self.breaker, str) and bool(self.breaker)),
                 "breaker", "must be a breaker's name or None", self.breaker)  # fmt: skip
        _require(
            isinstance(self.factory_concurrency, int)
            and not isinstance(self.factory_concurrency, bool)
            and self.factory_concurrency >= 1,
            "factory_concurrency",
            "must be an int >= 1",
            self.factory_concurrency,
        )


Restart = Literal["permanent", "transient", "temporary"]
Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]


@dataclass(frozen=True)
class Backoff:
    """Delay before a restart: ``min * 2**n`` capped at ``max``, times up to ``1 + jitter``.

    ``n`` counts restarts still inside the intensity window, so a crash loop against
    a dead dependency slows down and a calm child restarts at once again.
    """

    #: First delay (seconds).
    min: float = 0.1
    #: Largest delay (seconds).
    max: float = 10.0
    #: Each delay is stretched by a random fraction up to this (0.2: up to 20% longer).
    jitter: float = 0.2

    def __post_init__(self) -> None:
        _positive("min", self.min)
        _require(_number(self.max) and self.max >= self.min, "max", "must be >= min", self.max)
        _require(_number(self.jitter) and self.jitter >= 0, "jitter", "must be >= 0", self.jitter)


@dataclass(frozen=True)
class ChildSpec:
    """One child of a supervisor (OTP child spec).

    ``start`` is a pykka actor class (started with ``args``/``kwargs``) or a nested
    :class:`SupervisorSpec`. ``shutdown`` is how long the child gets to stop, in
    seconds, or ``"brutal_kill"`` to not wait at all.
    """

    id: str
    start: Any
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    restart: Restart = "permanent"
    shutdown: float | Literal["brutal_kill"] = 5.0

    def __post_init__(self) -> None:
        _nonempty("id", self.id)
        _require(
            isinstance(self.start, (type, SupervisorSpec)),
            "start",
            "must be an actor class or a SupervisorSpec",
            self.start,
        )
        _require(
            self.restart in ("permanent", "transient", "temporary"),
            "restart",
            "must be permanent, transient or temporary",
            self.restart,
        )
        if self.shutdown != "brutal_kill":
            _positive("shutdown", self.shutdown)


@dataclass(frozen=True)
class SupervisorSpec:
    """A supervisor: its children, started in order and stopped in reverse order.

    More than ``max_restarts`` restarts within ``max_seconds`` and the supervisor
    stops its children and fails, escalating to its parent (OTP intensity/period).
    """

    id: str
    children: tuple[ChildSpec, ...] = ()
    strategy: Strategy = "one_for_one"
    max_restarts: int = 3
    max_seconds: float = 5.0
    backoff: Backoff | None = None

    def __post_init__(self) -> None:
        _nonempty("id", self.id)
        _require(
            self.strategy in ("one_for_one", "one_for_all", "rest_for_one"),
            "strategy",
            "must be one_for_one, one_for_all or rest_for_one",
            self.strategy,
        )
        _require(
            isinstance(self.max_restarts, int) and self.max_restarts >= 0,
            "max_restarts",
            "must be an int >= 0",
            self.max_restarts,
        )
        _positive("max_seconds", self.max_seconds)
        ids = [child.id for child in self.children]
        _require(len(ids) == len(set(ids)), "children", "must have unique ids", ids)


#: Which errors a breaker counts: exception types (subclasses match) or a predicate.
ErrorFilter = tuple[type[BaseException], ...] | Callable[[BaseException], bool]


def _error_filter(name: str, value: Any) -> None:
    ok = (callable(value) and not isinstance(value, type)) or (
        isinstance(value, tuple)
        and all(isinstance(t, type) and issubclass(t, BaseException) for t in value)
    )
    _require(ok, name, "must be a tuple of exception types or a predicate", value)


def _percent(name: str, value: Any) -> None:
    _require(_number(value) and 0 < value <= 100, name, "must be a percentage in (0, 100]", value)


def _count(name: str, value: Any) -> None:
    _require(
        isinstance(value, int) and not isinstance(value, bool) and value >= 1,
        name, "must be an int >= 1", value,
    )  # fmt: skip


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
        _nonempty("name", self.name)
        _require(self.window_type in ("count", "time"), "window_type",
                 "must be 'count' or 'time'", self.window_type)  # fmt: skip
        _count("window_size", self.window_size)
        _count("minimum_calls", self.minimum_calls)
        _count("half_open_calls", self.half_open_calls)
        _percent("failure_rate_threshold", self.failure_rate_threshold)
        _percent("slow_call_rate_threshold", self.slow_call_rate_threshold)
        for name in ("slow_call_duration", "open_duration", "report_interval"):
            _positive(name, getattr(self, name))
            _require(math.isfinite(getattr(self, name)), name, "must be finite",
                     getattr(self, name))  # fmt: skip
        _positive("max_wait_in_half_open", self.max_wait_in_half_open, optional=True)
        if self.max_wait_in_half_open is not None:
            _require(math.isfinite(self.max_wait_in_half_open), "max_wait_in_half_open",
                     "must be finite or None", self.max_wait_in_half_open)  # fmt: skip
        if self.open_duration_max is not None:
            _require(_number(self.open_duration_max) and math.isfinite(self.open_duration_max)
                     and self.open_duration_max >= self.open_duration,
                     "open_duration_max", "must be finite, >= open_duration, or None",
                     self.open_duration_max)  # fmt: skip
        _require(_number(self.open_jitter) and 0 <= self.open_jitter <= 10, "open_jitter",
                 "must be in [0, 10]", self.open_jitter)  # fmt: skip
        _error_filter("record_errors", self.record_errors)
        _error_filter("ignore_errors", self.ignore_errors)

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
