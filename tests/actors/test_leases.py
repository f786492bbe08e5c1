"""Lease reclamation and graceful shutdown through a Runtime, with real threads and actors.

Tests that take ``where`` run through every handle (tests/support/where.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from lessor import (
    AcquireTimeout,
    ActorRestarted,
    ChildSpec,
    DoubleRelease,
    ExpiredLease,
    Factory,
    LeaseExpired,
    PoolHandle,
    PoolSpec,
    Release,
    Runtime,
    TokenFactory,
    bind_actor,
)
from lessor.actors.pool import PoolActor, PoolLineage
from lessor.handles.local import LocalRoute
from tests.support.actors import Borrower, crashable
from tests.support.clock import FakeClock, renewal_outlives_its_first_expiry
from tests.support.helpers import refuses_acquires, wait_until
from tests.support.where import Where

RECLAIM_BOUND = 0.5  # seconds from a holder's death to its lease being back (measured: ~1 ms)


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    rt = Runtime(max_restarts=10, handle_signals=False)
    yield rt
    rt.shutdown(timeout=5)


class Counted(Factory[int]):
    def __init__(self) -> None:
        self.made = 0
        self.destroyed: list[int] = []

    def create(self) -> int:
        self.made += 1
        return self.made

    def destroy(self, resource: int) -> None:
        self.destroyed.append(resource)


def test_a_thread_that_dies_holding_a_lease_loses_it_at_once(runtime: Runtime) -> None:
    pool = runtime.add_pool(PoolSpec("p", TokenFactory(), max_size=1))
    leases: list[Any] = []
    holder = threading.Thread(target=lambda: leases.append(pool.acquire(timeout=5)))
    holder.start()
    holder.join()
    died = time.monotonic()
    assert wait_until(lambda: pool.stats().leased == 0, timeout=RECLAIM_BOUND)
    assert time.monotonic() - died < RECLAIM_BOUND
    stats = pool.stats()
    assert (stats.reclaimed, stats.idle) == (1, 1)  # a token is safe to reuse
    again = pool.acquire(timeout=1)
    assert again.resource == leases[0].resource
    pool.release(again)
    assert any(e.kind == "lease_reclaimed" and "holder died" in e.detail for e in runtime.events())


@pytest.mark.parametrize("how", ["stop", "crash"])
def test_an_actor_that_stops_or_crashes_holding_a_lease_loses_it(
    runtime: Runtime, how: str
) -> None:
    factory = Counted()
    pool = runtime.add_pool(PoolSpec("p", factory, max_size=1))
    borrower = Borrower.start(pool, [], threading.Event())
    try:
        lease = borrower.ask(("borrow", None), timeout=5)
        assert lease.holder.startswith("thread:")
        if how == "stop":
            borrower.stop()
        else:
            borrower.tell("crash")
        assert wait_until(lambda: pool.stats().leased == 0, timeout=RECLAIM_BOUND)
        assert wait_until(lambda: factory.destroyed == [lease.resource])  # not reusable
    finally:
        if borrower.is_alive():
            borrower.stop()


def test_expired_lease_is_reclaimed_promptly_and_the_actor_holder_told(runtime: Runtime) -> None:
    pool = runtime.add_pool(PoolSpec("p", TokenFactory(), max_size=1))
    notices: list[LeaseExpired] = []
    told = threading.Event()

    class BoundBorrower(Borrower):
        def on_start(self) -> None:
            bind_actor(self.actor_ref)

    borrower = BoundBorrower.start(pool, notices, told)
    try:
        lease = borrower.ask(("borrow", 0.1), timeout=5)
        assert lease.holder.startswith("actor:")
        assert told.wait(5)
        late = time.monotonic() - lease.expires_at
        assert late < 0.1, f"reclaimed {late * 1000:.0f} ms after expiry"
        assert notices == [LeaseExpired(lease.id, "p")]
        assert pool.stats().expired == 1
        with pytest.raises(ExpiredLease):
            pool.actor_ref.ask(Release(lease.id))
    finally:
        borrower.stop()


def test_lease_block_that_outlives_its_ttl_raises_expired_on_exit(
    runtime: Runtime, where: Where
) -> None:
    pool = runtime.add_pool(PoolSpec("p", TokenFactory(), max_size=1))
    handle = where(pool)
    with pytest.raises(ExpiredLease), handle.lease(timeout=1, ttl=0.05):
        assert wait_until(lambda: pool.stats().expired == 1)
    assert pool.stats().idle == 1


def test_renew_extends_a_supervised_lease(runtime: Runtime, where: Where) -> None:
    clock = FakeClock()
    spec = PoolSpec("p", TokenFactory(), max_size=2)
    child = runtime.add_child(
        ChildSpec("p", PoolActor, (spec,), {"lineage": PoolLineage(), "clock": clock})
    )
    pool = PoolHandle(LocalRoute(child, spec))
    assert renewal_outlives_its_first_expiry(where(pool), clock) == (1, 1)
    assert (pool.stats().leased, pool.stats().expired) == (0, 1)


def test_a_restarted_pool_is_invisible_to_handles_and_old_leases_are_harmless(
    runtime: Runtime,
) -> None:
    factory = Counted()
    pool = crashable(runtime, PoolSpec("p", factory, max_size=2))
    old = pool.acquire(timeout=1)
    first = pool.actor_ref
    waiting = threading.Thread(target=lambda: results.append(_try(pool.acquire, 30)))
    results: list[Any] = []
    held = pool.acquire(timeout=1)
    waiting.start()
    assert wait_until(lambda: pool.stats().waiting == 1)
    first.tell("crash")
    waiting.join(5)
    assert isinstance(results[0], ActorRestarted)  # the pending Acquire was not lost silently
    assert wait_until(lambda: pool.actor_ref is not first)
    # Both old leases are orphans: they still count against max_size=2.
    with pytest.raises(AcquireTimeout):
        pool.acquire(timeout=0.1)
    assert pool.ask(Release(old.id)) is None  # accepted; its resource is destroyed
    assert wait_until(lambda: old.resource in factory.destroyed)
    with pytest.raises(DoubleRelease):  # and again: it says so, as a worker's handle does
        pool.ask(Release(old.id))
    fresh = pool.acquire(timeout=1)
    assert fresh.resource not in (old.resource, held.resource)
    pool.release(fresh)
    pool.release(held)
    assert wait_until(lambda: held.resource in factory.destroyed)
    stats = pool.stats()
    assert (stats.leased, stats.idle, stats.size) == (0, 1, 1)


def _try(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as exc:
        return exc


def test_shutdown_drains_then_reclaims_what_is_still_out() -> None:
    rt = Runtime(handle_signals=False)
    pool = rt.add_pool(PoolSpec("p", TokenFactory(), max_size=3))
    polite = pool.acquire(timeout=1)
    stubborn = pool.acquire(timeout=1)
    reports: list[Any] = []
    stopper = threading.Thread(target=lambda: reports.append(rt.shutdown(timeout=2)))
    stopper.start()
    assert wait_until(lambda: refuses_acquires(pool))
    pool.release(polite)  # released during the drain: not in the report
    stopper.join(10)
    (report,) = reports
    assert [lease.id for lease in report.reclaimed] == [stubborn.id]
    assert report.killed == ()
    assert 2 <= report.duration_s < 5
    assert not report.clean
    assert rt.shutdown() is report


def test_shutdown_returns_early_once_everything_is_released() -> None:
    rt = Runtime(handle_signals=False)
    pool = rt.add_pool(PoolSpec("p", TokenFactory(), max_size=1))
    lease = pool.acquire(timeout=1)
    stopper = threading.Thread(target=lambda: reports.append(rt.shutdown(timeout=30)))
    reports: list[Any] = []
    stopper.start()
    assert wait_until(lambda: refuses_acquires(pool))
    pool.release(lease)
    stopper.join(10)
    assert not stopper.is_alive()
    assert reports[0].clean
    assert reports[0].duration_s < 10
