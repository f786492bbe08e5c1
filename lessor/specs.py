"""Specs: small frozen dataclasses that say what to run, validated when made.

Defaults live here and nowhere else; each bad field raises ``ValueError`` naming it.
Pool defaults follow psycopg_pool (``acquire_timeout=30``, ``max_idle=600``,
``max_lifetime=3600`` minus up to 10% jitter) with poolboy's LIFO reuse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from lessor.factory import Factory

__all__ = ["PoolSpec"]


def _require(ok: bool, name: str, why: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"{name} {why}, got {value!r}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


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
    #: Threads that run the factory (create, destroy, check, reset) off the actor thread.
    workers: int = 2

    def __post_init__(self) -> None:
        _require(
            isinstance(self.name, str) and bool(self.name),
            "name",
            "must be a non-empty str",
            self.name,
        )
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
        _require(
            isinstance(self.workers, int) and self.workers >= 1,
            "workers",
            "must be >= 1",
            self.workers,
        )
