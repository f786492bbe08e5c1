"""Process-scoped pools' messages (tags 35-39); import them from :mod:`lessor.protocol.messages`.

A ``scope="process"`` pool is a global quota in the runtime and one pool of real
resources in each process that uses it. ``Shed`` goes from the quota to a process
holding more than its fair share while another waits with less (see
:mod:`lessor.core.pool.fairshare`); ``LocalPoolStats`` goes the other way, so that
the runtime can show every process's own pool (``Runtime.process_pool_stats``).
Tags 37-39 are kept for this family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lessor.protocol.codec import _FIELDS, Message, message

if TYPE_CHECKING:
    from lessor.protocol.messages import PoolStats

__all__ = ["LocalPoolStats", "Shed"]


@message(35)
@dataclass(frozen=True, slots=True)
class Shed(Message):
    """Pushed by the quota of process-scoped pool ``pool``: close ``count`` more of your
    connections, idle ones now and the others as they are released, so that their quota
    goes to a process that waits with less than its fair share.

    Counts add up; any connection closed for any reason counts toward them.
    """

    pool: str
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.count < 2**31:
            raise ValueError(f"Shed.count must be >= 1, got {self.count!r}")


@message(36)
@dataclass(frozen=True, slots=True)
class LocalPoolStats(Message):
    """One process's own pool of process-scoped pool ``pool``: what ``PoolStats`` says of
    it, cut to what comparing processes needs. Gauges now, counters since the pool
    started, wait times (ms) over its recent Acquires.

    A worker tells its runtime this every ``REPORT_INTERVAL`` (0.2 s) in which it changed.
    """

    pool: str
    size: int
    idle: int
    leased: int
    waiting: int
    creating: int
    acquired: int
    timeouts: int
    created: int
    destroyed: int
    wait_ms_p50: float
    wait_ms_p95: float
    wait_ms_p99: float

    def __post_init__(self) -> None:
        for name in _FIELDS[LocalPoolStats][1:10]:
            if getattr(self, name) < 0:
                raise ValueError(f"LocalPoolStats.{name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def of(cls, stats: PoolStats) -> LocalPoolStats:
        """The part of a ``PoolStats`` snapshot that is reported."""
        return cls(
            stats.pool, stats.size, stats.idle, stats.leased, stats.waiting, stats.creating,
            stats.acquired, stats.timeouts, stats.created, stats.destroyed,
            stats.wait_ms_p50, stats.wait_ms_p95, stats.wait_ms_p99,
        )  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _FIELDS[LocalPoolStats]}
