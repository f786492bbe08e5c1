"""The in-process lease cache (``cache=True``): fast reuse, and everything a pool promises.

Each test runs a real PoolActor and real threads; the cache is the one
``runtime.pool(name, cache=True)`` and ``start_pool(spec, cache=True)`` give.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from lessor import (
    DoubleRelease,
    ExpiredLease,
    ForeignLease,
    LeaseError,
    PoolHandle,
    PoolSpec,
    Runtime,
    RuntimeStopped,
    TokenFactory,
    start_pool,
)
from lessor.core.cache import LeaseCache
from lessor.handles.cached import CachedRoute
from lessor.protocol.messages import Lease
from tests.support.helpers import wait_until
from tests.support.overlap import IntervalLog, assert_exclusive, hammer_with_checks, overlapping

HOLD = 0.3  # seconds: long enough that a test's pairs all fall inside it


def cached_pool(size: int = 2, hold_for: float = HOLD, **spec: Any) -> PoolHandle:
    plain = start_pool(PoolSpec("c", spec.pop("factory", TokenFactory()), max_size=size, **spec))
    return PoolHandle(CachedRoute(plain.route.target, plain.spec, hold_for=hold_for))  # type: ignore[attr-defined]


@pytest.fixture
def pool() -> Iterator[PoolHandle]:
    handle = cached_pool()
    yield handle
    handle.stop(timeout=5)


def test_a_released_lease_is_lent_again_without_asking_the_pool(pool: PoolHandle) -> None:
    first = pool.acquire(timeout=5)
    pool.release(first)
    borrows = []
    for _ in range(50):
        lease = pool.acquire(timeout=5)
        borrows.append(lease)
        pool.release(lease)
    stats = pool.stats()
    assert stats.acquired == 1 and stats.leased == 1  # one grant, parked in the cache
    assert {b.id for b in borrows} == {first.id}
    assert len({b.granted_at for b in borrows}) == 50  # each borrow told apart
    assert first.holder == pool.route.holder_id  # the pool sees the cache, not the thread
    with pytest.raises(DoubleRelease):
        pool.release(borrows[0])  # an old borrow of a lease that is parked again


def test_a_stale_borrow_cannot_release_the_lease_another_thread_has_now(
    pool: PoolHandle,
) -> None:
    old = pool.acquire(timeout=5)
    pool.release(old)
    taken: list[Lease] = []
    ready, done = threading.Event(), threading.Event()

    def other() -> None:
        taken.append(pool.acquire(timeout=5))
        ready.set()
        done.wait(5)
        pool.release(taken[0])

    thread = threading.Thread(target=other)
    thread.start()
    assert ready.wait(5)
    assert taken[0].id == old.id  # the parked lease, lent to the other thread
    with pytest.raises((DoubleRelease, ForeignLease)):
        pool.release(old)
    with pytest.raises(ForeignLease):
        pool.release(taken[0])  # not this thread's borrow
    done.set()
    thread.join(5)
    assert pool.route.parked == 1  # type: ignore[attr-defined]


def test_a_parked_lease_goes_back_to_the_pool_after_hold_for(pool: PoolHandle) -> None:
    pool.release(pool.acquire(timeout=5))
    assert pool.stats().leased == 1
    assert wait_until(lambda: pool.stats().leased == 0, timeout=5)  # the sweep returned it
    assert pool.route.parked == 0  # type: ignore[attr-defined]


def test_a_lease_held_past_hold_for_goes_back_on_release(pool: PoolHandle) -> None:
    lease = pool.acquire(timeout=5)
    time.sleep(HOLD * 1.2)  # the holder keeps it past hold_for: what the test is about
    pool.release(lease)
    assert pool.route.parked == 0  # type: ignore[attr-defined]
    assert wait_until(lambda: pool.stats().leased == 0)


def test_someone_waiting_gets_the_parked_lease_back(pool: PoolHandle) -> None:
    """Recall: the pool asks the cache (a holder that gives back) for what it parked."""
    plain = PoolHandle(pool.route.pool)  # type: ignore[attr-defined]
    for lease in [pool.acquire(timeout=5), pool.acquire(timeout=5)]:
        pool.release(lease)  # both parked: the pool has nothing idle, no room to grow
    assert pool.stats().leased == 2
    began = time.monotonic()
    got = plain.acquire(timeout=2)
    assert time.monotonic() - began < 1.0  # recalled, not waited out
    plain.release(got)


def test_a_thread_that_dies_holding_a_cached_lease_gives_it_back(pool: PoolHandle) -> None:
    pool.release(pool.acquire(timeout=5))  # parked
    took = threading.Event()

    def leaky() -> None:
        pool.acquire(timeout=5)
        took.set()  # and end without releasing

    thread = threading.Thread(target=leaky)
    thread.start()
    thread.join(5)
    assert took.is_set()
    assert wait_until(lambda: pool.stats().released >= 1)  # sent back to the pool for it
    assert pool.route.parked == 0  # type: ignore[attr-defined]


def test_an_expired_lease_raises_on_release_and_is_not_parked(pool: PoolHandle) -> None:
    lease = pool.acquire(timeout=5, ttl=0.05)
    assert wait_until(lambda: pool.stats().expired == 1)
    assert wait_until(lambda: _refusal(pool, lease) is ExpiredLease)
    assert pool.route.parked == 0  # type: ignore[attr-defined]


def _refusal(pool: PoolHandle, lease: Lease) -> type | None:
    try:
        pool.release(lease)
    except Exception as exc:
        return type(exc)
    return None


class CountingReset(TokenFactory):
    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.resets: list[int] = []
        self.fail = fail

    def reset(self, resource: Any) -> None:
        self.resets.append(threading.get_ident())
        if self.fail:
            raise RuntimeError("cannot reuse")


def test_the_factorys_reset_runs_on_the_releasing_thread_before_parking() -> None:
    factory = CountingReset()
    pool = cached_pool(factory=factory)
    try:
        for _ in range(3):
            pool.release(pool.acquire(timeout=5))
        assert factory.resets == [threading.get_ident()] * 3
        assert pool.route.parked == 1  # type: ignore[attr-defined]
    finally:
        pool.stop(timeout=5)


def test_a_failed_reset_sends_the_lease_back_broken() -> None:
    factory = CountingReset(fail=True)
    pool = cached_pool(factory=factory)
    try:
        pool.release(pool.acquire(timeout=5))
        assert pool.route.parked == 0  # type: ignore[attr-defined]
        assert wait_until(lambda: pool.stats().broken == 1 and pool.stats().destroyed == 1)
    finally:
        pool.stop(timeout=5)


class InterruptedReset(TokenFactory):
    def reset(self, resource: Any) -> None:
        raise KeyboardInterrupt  # Ctrl-C while the reset (say a ROLLBACK) runs


def test_a_reset_interrupted_by_ctrl_c_sends_the_lease_back_broken() -> None:
    pool = cached_pool(factory=InterruptedReset())
    try:
        lease = pool.acquire(timeout=5)
        with pytest.raises(KeyboardInterrupt):
            pool.release(lease)
        assert pool.route.parked == 0  # type: ignore[attr-defined]
        assert wait_until(lambda: pool.stats().broken == 1 and pool.stats().leased == 0)
    finally:
        pool.stop(timeout=5)


def test_threads_sharing_a_cached_pool_never_share_a_resource() -> None:
    # As many threads as resources: nobody waits on the pool, so releases park and
    # most borrows are of parked leases, lent from thread to thread.
    pool = cached_pool(size=4)
    try:
        outcome = hammer_with_checks(pool, None, threads=4, pairs=300)
        assert not outcome.errors, outcome.errors[:3]
        assert_exclusive(outcome.intervals.holds, limit=4)
        assert pool.stats().acquired < 4 * 300 // 2  # the cache did lend most of them
    finally:
        pool.stop(timeout=5)


class LendsTwice(LeaseCache):
    """Broken on purpose: the oldest parked lease is lent and stays parked, so every
    borrower gets it (two borrowers at once).

    Not the newest: a thread re-borrows the lease it just parked (the bag is LIFO),
    so a copy left on top would rarely reach another thread, and the checker's test
    would miss the mutant in most runs.
    """

    def take(self) -> Lease | None:
        if self._bag:
            self._bag.append(self._bag[0])  # take() pops this copy; the original stays
        return super().take()


def test_the_checks_catch_a_cache_that_lends_one_lease_twice() -> None:
    """The mutant of the test above: its check must fail. It found overlaps in 15 of
    15 runs when measured; the loop only guards against a freak schedule."""
    found = 0
    for _ in range(3):
        found = len(overlapping(_borrow_through_a_mutant().holds))
        if found:
            break
    assert found, "a cache that lends one lease twice went unnoticed"


def _borrow_through_a_mutant(threads: int = 4, pairs: int = 300) -> IntervalLog:
    pool = cached_pool(size=4)
    pool.route._leases = LendsTwice(time.monotonic, HOLD)  # type: ignore[attr-defined]
    intervals = IntervalLog()

    def borrow() -> None:
        for _ in range(pairs):
            lease = pool.acquire(timeout=5)
            with intervals.holding(lease.resource):
                pass
            with contextlib.suppress(LeaseError):  # the ledger sees the mess too; go on
                pool.release(lease)

    workers = [threading.Thread(target=borrow) for _ in range(threads)]
    try:
        for t in workers:
            t.start()
        for t in workers:
            t.join(30)
    finally:
        pool.stop(timeout=5)
    return intervals


def test_the_runtimes_cached_handle_is_shared_and_shut_down_with_it() -> None:
    runtime = Runtime(handle_signals=False)
    try:
        runtime.add_pool(PoolSpec("slots", TokenFactory(), max_size=2))
        cached = runtime.pool("slots", cache=True)
        assert runtime.pool("slots", cache=True) is cached
        cached.release(cached.acquire(timeout=5))  # parked
        held = cached.acquire(timeout=5)  # held by this thread at shutdown
        assert held.resource is not None
    finally:
        report = runtime.shutdown(timeout=5)
    assert report.duration_s < 3  # neither the parked lease nor ours was waited for
    assert not report.reclaimed  # both were given back, none taken at the deadline
    with pytest.raises(RuntimeStopped):
        runtime.pool("slots", cache=True)
