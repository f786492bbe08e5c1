"""Pools and the supervision tree: what to run, and how to restart it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from lessor.factory import Factory, capacity_of
from lessor.specs.checks import nonempty, number, positive, require

__all__ = ["Backoff", "ChildSpec", "PoolSpec", "Restart", "Strategy", "SupervisorSpec"]


@dataclass(frozen=True)
class PoolSpec:
    """A pool of resources made by ``factory``, at most ``max_size`` of them at once.

    Options (times in seconds; None where allowed means "never"/"no limit"):

    - ``name``: the pool's name, also its child id in the tree (``root/<name>``).
    - ``factory``: a :class:`~lessor.factory.Factory` (``TokenFactory``,
      ``PostgresFactory``, ``HttpSessionFactory`` or your own).
    - ``min_size`` (default 0): resources made at start and kept through idle eviction.
    - ``max_size`` (default 10): resources that may exist at once, leased or idle.
    - ``acquire_timeout`` (default 30.0 s): how long an Acquire that gives no timeout
      waits; past it, AcquireTimeout (its cause: the last factory error, if any).
    - ``max_idle`` (default 600.0 s; None keeps them): idle resources above
      ``min_size`` are destroyed after this long.
    - ``max_lifetime`` (default 3600.0 s; None keeps them): resources are retired after
      this long, never while leased.
    - ``lifetime_jitter`` (default 0.1, a fraction in [0, 1)): up to this fraction is
      taken off each lifetime, so resources made together do not all retire together.
    - ``lease_ttl`` (default None: leases never expire): a lease not released or
      renewed within this many seconds is reclaimed (its holder gets LeaseExpired).
    - ``max_waiting`` (default 0: no limit): Acquires queued beyond this many are
      refused at once with PoolExhausted (psycopg_pool's ``max_waiting``).
    - ``strategy`` (default "lifo"): hand out the most recently used idle resource
      ("lifo": the rest stay idle and can be evicted) or the least ("fifo").
    - ``create_backoff`` (default 0.1 s) and ``create_backoff_max`` (default 10.0 s):
      first and largest delay between failed creations (doubling, with jitter).
    - ``factory_concurrency`` (default 2): factory calls (create, destroy, check,
      reset) run at once for this pool, on the runtime's shared factory threads
      (psycopg_pool's ``num_workers``).
    - ``scope`` (default "runtime"): "runtime" is one pool in the supervising process,
      whose resources cross to workers; "process" gives each process its own pool of
      resources that cannot cross (live connections), under a global quota.
    - ``max_total`` (default None: ``max_size``): for ``scope="process"``, the cap on
      resources across all processes.
    - ``breaker`` (default None): the name of a breaker, added first, that this pool
      obeys: while it is open, Acquires fail fast with BreakerOpen.
    """

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
        nonempty("name", self.name)
        require(
            isinstance(self.factory, Factory), "factory", "must be a lessor Factory", self.factory
        )
        for name in ("min_size", "max_size", "max_waiting"):
            value = getattr(self, name)
            require(
                isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                name,
                "must be an int >= 0",
                value,
            )
        require(self.max_size >= 1, "max_size", "must be >= 1", self.max_size)
        require(
            self.min_size <= self.max_size,
            "min_size",
            f"must be <= max_size ({self.max_size})",
            self.min_size,
        )
        positive("acquire_timeout", self.acquire_timeout)
        positive("max_idle", self.max_idle, optional=True)
        positive("max_lifetime", self.max_lifetime, optional=True)
        positive("lease_ttl", self.lease_ttl, optional=True)
        positive("create_backoff", self.create_backoff)
        positive("create_backoff_max", self.create_backoff_max)
        require(
            number(self.lifetime_jitter) and 0 <= self.lifetime_jitter < 1,
            "lifetime_jitter",
            "must be in [0, 1)",
            self.lifetime_jitter,
        )
        require(
            self.strategy in ("lifo", "fifo"), "strategy", "must be 'lifo' or 'fifo'", self.strategy
        )
        require(self.scope in ("runtime", "process"), "scope", "must be 'runtime' or 'process'",
                 self.scope)  # fmt: skip
        require(
            self.max_total is None
            or (isinstance(self.max_total, int) and not isinstance(self.max_total, bool)
                and self.max_total >= 1),
            "max_total", "must be an int >= 1 or None", self.max_total,
        )  # fmt: skip
        require(self.breaker is None or (isinstance(self.breaker, str) and bool(self.breaker)),
                 "breaker", "must be a breaker's name or None", self.breaker)  # fmt: skip
        require(
            isinstance(self.factory_concurrency, int)
            and not isinstance(self.factory_concurrency, bool)
            and self.factory_concurrency >= 1,
            "factory_concurrency",
            "must be an int >= 1",
            self.factory_concurrency,
        )
        _refuse_what_cannot_work(self)


def _refuse_what_cannot_work(spec: PoolSpec) -> None:
    """Settings each valid alone that together could never work: refused where the spec is
    made, not found at the first Acquire that starves."""
    cap = capacity_of(spec.factory)
    require(cap is None or (isinstance(cap, int) and not isinstance(cap, bool) and cap >= 0),
            "factory", "capacity must be an int >= 0 or None", cap)  # fmt: skip
    require(cap is None or spec.max_size <= cap, "max_size",
            f"must be <= the factory's capacity ({type(spec.factory).__name__}.capacity = "
            f"{cap}: it can make no more)", spec.max_size)  # fmt: skip
    require(spec.create_backoff_max >= spec.create_backoff, "create_backoff_max",
            f"must be >= create_backoff ({spec.create_backoff})",
            spec.create_backoff_max)  # fmt: skip
    if spec.scope == "runtime":
        require(spec.max_total is None, "max_total",
                "only caps scope='process' pools (a 'runtime' pool's cap is max_size)",
                spec.max_total)  # fmt: skip
    elif spec.max_total is not None:
        require(spec.min_size <= spec.max_total, "min_size",
                f"must be <= max_total ({spec.max_total}): each process's pool keeps min_size "
                "under the global quota", spec.min_size)  # fmt: skip


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
        positive("min", self.min)
        require(number(self.max) and self.max >= self.min, "max", "must be >= min", self.max)
        require(number(self.jitter) and self.jitter >= 0, "jitter", "must be >= 0", self.jitter)


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
        nonempty("id", self.id)
        require(
            isinstance(self.start, (type, SupervisorSpec)),
            "start",
            "must be an actor class or a SupervisorSpec",
            self.start,
        )
        require(
            self.restart in ("permanent", "transient", "temporary"),
            "restart",
            "must be permanent, transient or temporary",
            self.restart,
        )
        if self.shutdown != "brutal_kill":
            positive("shutdown", self.shutdown)


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
        nonempty("id", self.id)
        require(
            self.strategy in ("one_for_one", "one_for_all", "rest_for_one"),
            "strategy",
            "must be one_for_one, one_for_all or rest_for_one",
            self.strategy,
        )
        require(
            isinstance(self.max_restarts, int)
            and not isinstance(self.max_restarts, bool)
            and self.max_restarts >= 0,
            "max_restarts",
            "must be an int >= 0",
            self.max_restarts,
        )
        positive("max_seconds", self.max_seconds)
        ids = [child.id for child in self.children]
        require(len(ids) == len(set(ids)), "children", "must have unique ids", ids)
