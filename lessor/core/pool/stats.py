"""What a pool counts, and the snapshot it reports (``PoolStats``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lessor.core.samples import Samples
from lessor.protocol.messages import PoolStats

__all__ = ["Counters", "count_reclaim", "snapshot"]


@dataclass(slots=True)
class Counters:
    """Totals since the pool started, and recent wait and hold times."""

    acquired: int = 0
    released: int = 0
    timeouts: int = 0
    created: int = 0
    destroyed: int = 0
    broken: int = 0
    factory_errors: int = 0
    check_failures: int = 0
    expired: int = 0
    reclaimed: int = 0
    rejected: int = 0
    #: ``reclaimed`` by why ("expired", "holder died", "shutdown deadline", ...).
    reclaimed_by: dict[str, int] = field(default_factory=dict)
    wait_ms: Samples = field(default_factory=Samples)
    hold_ms: Samples = field(default_factory=Samples)


def count_reclaim(c: Counters, why: str, n: int = 1) -> None:
    c.reclaimed_by[why] = c.reclaimed_by.get(why, 0) + n


def snapshot(
    pool: str,
    c: Counters,
    *,
    size: int,
    idle: int,
    leased: int,
    checking: int,
    creating: int,
    waiting: int,
    holders: dict[str, int],
) -> PoolStats:
    """Gauges (resources in each state now, Acquires waiting) and counters, frozen."""
    w50, w95, w99 = c.wait_ms.percentiles(0.5, 0.95, 0.99)
    h50, h95, h99 = c.hold_ms.percentiles(0.5, 0.95, 0.99)
    return PoolStats(
        pool=pool, size=size, idle=idle, leased=leased, checking=checking,
        creating=creating, waiting=waiting,
        acquired=c.acquired, released=c.released, timeouts=c.timeouts, created=c.created,
        destroyed=c.destroyed, broken=c.broken, factory_errors=c.factory_errors,
        check_failures=c.check_failures, expired=c.expired, reclaimed=c.reclaimed,
        rejected=c.rejected, wait_ms_p50=w50, wait_ms_p95=w95, wait_ms_p99=w99,
        hold_ms_p50=h50, hold_ms_p95=h95, hold_ms_p99=h99,
        holders=holders, reclaimed_by=dict(c.reclaimed_by),
        wait_ms_buckets=list(c.wait_ms.buckets), wait_ms_sum=c.wait_ms.total,
        hold_ms_buckets=list(c.hold_ms.buckets), hold_ms_sum=c.hold_ms.total,
    )  # fmt: skip
