"""A pool clock that moves only when told, and the renewal check run against it.

Shared by the pool actor's tests and the supervised pool's (tests/actors/).
"""

from __future__ import annotations

from typing import Any

from lessor import PoolHandle, PoolSpec, Release, TokenFactory
from lessor.actors.pool import PoolActor
from lessor.handles.local import LocalRoute
from tests.support.helpers import wait_until


class FakeClock:
    """A pool's clock that moves only when told (the timer thread polls it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fake_clock_pool(clock: FakeClock, **fields: Any) -> PoolHandle:
    spec = PoolSpec(**{"name": "p", "factory": TokenFactory(), **fields})
    return PoolHandle(LocalRoute(PoolActor.start(spec, clock=clock), spec))


def renewal_outlives_its_first_expiry(pool: PoolHandle, clock: FakeClock) -> tuple[int, int]:
    """Renew one of two leases due at the same instant; once the other expires, count.

    On the pool's frozen clock both fall due at once, so the tick that reclaims the
    witness also reclaims a renewal that did not stick. Returns (expired, leased).
    """
    ttl = 0.05  # the timer wakes every ttl (real seconds) to read the clock again
    lease = pool.acquire(timeout=60, ttl=ttl)
    witness = pool.acquire(timeout=60, ttl=ttl)
    assert lease.expires_at == witness.expires_at
    renewed = pool.renew(lease, 30)
    assert renewed.id == lease.id and renewed.expires_at == clock.now + 30
    clock.now += 1.0  # past the first expiry, long before the renewed one
    assert wait_until(lambda: pool.stats().expired >= 1, timeout=10)  # the witness
    stats = pool.stats()
    if stats.leased:
        pool.ask(Release(renewed.id))  # asked: an ExpiredLease would be raised here
    return stats.expired, stats.leased
