"""PoolActor behaviour through the in-process handle, with real threads.

Tests that take ``where`` run through every handle (tests/support/where.py): the
in-process one, the in-process cache, and a worker's uncached and cached handles.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from lessor import (
    Acquire,
    AcquireTimeout,
    CallableFactory,
    DoubleRelease,
    Factory,
    ForeignLease,
    Lease,
    NoSuchPool,
    PoolClosed,
    PoolExhausted,
    PoolHandle,
    PoolSpec,
    Release,
    TokenFactory,
    UnknownLease,
    start_pool,
)
from lessor.core.pool import PoolCore
from lessor.holder import Holder
from tests.support.clock import FakeClock, fake_clock_pool, renewal_outlives_its_first_expiry
from tests.support.helpers import in_thread, wait_until
from tests.support.overlap import Markers, assert_exclusive, hammer_with_checks
from tests.support.where import Where

StartPool = Callable[..., PoolHandle]


@pytest.fixture
def start() -> Iterator[StartPool]:
    handles: list[PoolHandle] = []

    def _start(factory: Factory[Any] | None = None, **fields: Any) -> PoolHandle:
        fields.setdefault("name", "p")
        handle = start_pool(PoolSpec(factory=factory or TokenFactory(), **fields))
        handles.append(handle)
        return handle

    yield _start
    for handle in handles:
        if handle.actor_ref.is_alive():
            handle.stop(timeout=5)


def test_acquire_release_and_lease_context(start: StartPool) -> None:
    pool = start(max_size=2)
    lease = pool.acquire(timeout=1)
    assert isinstance(lease, Lease)
    assert lease.pool == "p"
    assert lease.holder.startswith("thread:")
    with pool.lease(timeout=1) as resource:
        assert resource != lease.resource
        assert pool.stats().leased == 2
    pool.release(lease)
    stats = pool.stats()
    assert (stats.leased, stats.idle, stats.size, stats.acquired, stats.released) == (0, 2, 2, 2, 2)


def test_plain_pykka_ask_is_answered_when_a_resource_frees(start: StartPool) -> None:
    pool = start(max_size=1)
    held = pool.acquire(timeout=1)
    future = pool.actor_ref.ask(Acquire("p", 5.0), block=False)
    assert wait_until(lambda: pool.stats().waiting == 1)
    pool.release(held)
    lease = future.get(timeout=5)
    assert lease.resource == held.resource
    assert lease.holder == "anonymous"
    pool.actor_ref.ask(Release(lease.id))
    assert pool.stats().idle == 1


def test_waiters_are_served_by_priority_then_fifo(start: StartPool) -> None:
    pool = start(max_size=1)
    held = pool.acquire(timeout=1)
    futures = []
    for priority in (0, 1, 0, 2):  # enqueued in this order
        futures.append(pool.actor_ref.ask(Acquire("p", 5.0, priority), block=False))
        assert wait_until(lambda: pool.stats().waiting == len(futures))
    served: list[int] = []
    pool.release(held)
    while len(served) < len(futures):

        def granted() -> list[int]:
            return [i for i, f in enumerate(futures) if i not in served and _ready(f)]

        assert wait_until(lambda: bool(granted()))
        assert len(granted()) == 1  # one resource: one grant at a time
        served.append(granted()[0])
        pool.actor_ref.ask(Release(futures[served[-1]].get().id))
    assert served == [3, 1, 0, 2]


def _ready(future: Any) -> bool:
    try:
        future.get(timeout=0)
    except Exception:
        return False
    return True


def test_acquire_times_out_at_its_deadline(start: StartPool, where: Where) -> None:
    pool = start(max_size=1)
    handle = where(pool)
    held = handle.acquire(timeout=1)
    began = time.monotonic()
    with pytest.raises(AcquireTimeout):
        handle.acquire(timeout=0.05)
    assert time.monotonic() - began >= 0.05
    stats = pool.stats()
    assert (stats.timeouts, stats.waiting, stats.leased) == (1, 0, 1)
    handle.release(held)


def test_slow_factory_never_blocks_releases(start: StartPool) -> None:
    gate = threading.Event()
    tokens = iter(range(100))

    def create() -> int:
        gate.wait(10)
        return next(tokens)

    pool = start(CallableFactory(create), max_size=2)
    gate.set()
    first = pool.acquire(timeout=1)
    gate.clear()
    waiting = pool.actor_ref.ask(Acquire("p", 5.0), block=False)  # needs a create: blocks
    assert wait_until(lambda: pool.stats().creating == 1)
    pool.release(first)  # the actor is free while the factory is stuck
    granted = waiting.get(timeout=5)
    assert granted.resource == first.resource
    assert pool.stats().creating == 1
    gate.set()
    assert wait_until(lambda: pool.stats().size == 2)
    pool.actor_ref.ask(Release(granted.id))


def test_factory_errors_time_out_waiters_with_the_cause(start: StartPool) -> None:
    def create() -> int:
        raise ConnectionRefusedError("db down")

    pool = start(CallableFactory(create), max_size=2, create_backoff=0.01)
    with pytest.raises(AcquireTimeout) as info:
        pool.acquire(timeout=0.2)
    assert isinstance(info.value.__cause__, ConnectionRefusedError)
    stats = pool.stats()
    assert stats.factory_errors >= 2  # retried with backoff while the waiter waited
    assert stats.factory_errors < 40  # ...and did not spin
    assert stats.size == 0


def test_factory_recovers_and_the_waiter_is_served(start: StartPool, where: Where) -> None:
    failures = [ConnectionRefusedError("1"), ConnectionRefusedError("2")]

    def create() -> str:
        if failures:
            raise failures.pop()
        return "conn"

    pool = start(CallableFactory(create, portable=True), max_size=1, create_backoff=0.01)
    handle = where(pool)
    lease = handle.acquire(timeout=5)
    assert lease.resource == "conn"
    assert pool.stats().factory_errors == 2
    handle.release(lease)


class Recording(Factory[int]):
    portable = True  # plain ints: a worker's handle may borrow them (see ``where``)

    def __init__(self, good: Callable[[int], bool] = lambda r: True) -> None:
        self.n = 0
        self.destroyed: list[int] = []
        self.good = good

    def create(self) -> int:
        self.n += 1
        return self.n

    def destroy(self, resource: int) -> None:
        self.destroyed.append(resource)

    def is_fatal(self, exc: BaseException) -> bool:
        return isinstance(exc, ConnectionError)


class Checked(Recording):
    def check(self, resource: int) -> bool:
        return self.good(resource)


def test_fatal_error_in_lease_block_breaks_the_resource(start: StartPool) -> None:
    factory = Recording()
    pool = start(factory, max_size=1)
    with pytest.raises(ConnectionError), pool.lease(timeout=1) as resource:
        raise ConnectionError("socket died")
    assert wait_until(lambda: factory.destroyed == [resource])
    with pytest.raises(KeyError), pool.lease(timeout=1) as again:  # not fatal: kept
        assert again != resource
        raise KeyError("app bug")
    stats = pool.stats()
    assert (stats.broken, stats.destroyed, stats.idle) == (1, 1, 1)


def test_resource_failing_check_is_replaced_not_failed(start: StartPool, where: Where) -> None:
    where.not_for(
        "in-process cached",
        "worker cached",
        why="a cached handle lends a parked lease again without asking the pool, so the "
        "pool's borrow check reaches it only once it goes back (lessor/handles/cached.py)",
    )
    factory = Checked(good=lambda r: r != 1)
    pool = start(factory, max_size=1)
    handle = where(pool)
    lease = handle.acquire(timeout=1)
    handle.release(lease)
    factory.good = lambda r: r != lease.resource  # the idle one goes bad
    second = handle.acquire(timeout=5)
    assert second.resource not in (lease.resource,)
    assert wait_until(lambda: lease.resource in factory.destroyed)
    assert pool.stats().check_failures >= 1
    handle.release(second)


def test_bad_releases_each_get_their_own_error(start: StartPool) -> None:
    pool = start(max_size=2)
    lease = pool.acquire(timeout=1)
    _, out = in_thread(lambda: pool.ask(Release(lease.id)))
    wait_until(lambda: bool(out))
    assert isinstance(out[0], ForeignLease)
    pool.ask(Release(lease.id))
    with pytest.raises(DoubleRelease):
        pool.ask(Release(lease.id))
    with pytest.raises(UnknownLease):
        pool.ask(Release("p/nope/1"))
    with pytest.raises(NoSuchPool):
        pool.ask(Acquire("other", 1.0))
    stats = pool.stats()
    assert (stats.released, stats.idle, stats.leased) == (1, 1, 0)


def test_told_bad_release_is_logged_and_the_pool_lives_on(
    start: StartPool, caplog: pytest.LogCaptureFixture
) -> None:
    pool = start(max_size=1)
    pool.tell(Release("p/x/9"))
    pool.actor_ref.tell(Acquire("p", 1.0))  # an Acquire must be asked
    assert pool.stats().size == 0
    assert "never granted" in caplog.text
    assert "must be asked" in caplog.text
    assert pool.actor_ref.is_alive()


def test_max_waiting_refuses_at_once(start: StartPool, where: Where) -> None:
    pool = start(max_size=1, max_waiting=1)
    handle = where(pool)
    held = handle.acquire(timeout=1)
    waiting = pool.actor_ref.ask(Acquire("p", 5.0), block=False)
    assert wait_until(lambda: pool.stats().waiting == 1)
    with pytest.raises(PoolExhausted):
        handle.acquire(timeout=5)
    assert pool.stats().rejected == 1
    handle.release(held)
    pool.actor_ref.ask(Release(waiting.get(timeout=5).id))


def test_stop_fails_waiters_and_later_requests(start: StartPool) -> None:
    factory = Recording()
    pool = start(factory, max_size=1)
    held = pool.acquire(timeout=1)
    thread, out = in_thread(lambda: pool.acquire(timeout=30))
    assert wait_until(lambda: pool.stats().waiting == 1)
    pool.stop(timeout=5)
    thread.join(5)
    assert isinstance(out[0], PoolClosed)
    with pytest.raises(PoolClosed):
        pool.acquire(timeout=1)
    with pytest.raises(PoolClosed):
        pool.release(held)


def test_idle_resources_above_min_size_are_evicted(start: StartPool, where: Where) -> None:
    where.not_for(
        "worker cached",
        why="a worker's cache keeps parked leases until the pool recalls them for a waiter "
        "or drains (no hold_for), so they never come back to be idle",
    )
    factory = Recording()
    pool = start(factory, min_size=1, max_size=3, max_idle=0.05)
    handle = where(pool)
    assert wait_until(lambda: pool.stats().size == 1)  # pre-warmed
    leases = [handle.acquire(timeout=1) for _ in range(3)]
    for lease in leases:
        handle.release(lease)  # a cached handle parks them: back to the pool after hold_for
    assert wait_until(lambda: pool.stats().size == 1)
    assert wait_until(lambda: len(factory.destroyed) == 2)  # destroys run after the turn


def test_expired_lease_is_reclaimed_and_destroyed(start: StartPool, where: Where) -> None:
    factory = Recording()
    pool = start(factory, max_size=1, lease_ttl=0.05)
    handle = where(pool)
    lease = handle.acquire(timeout=1)
    assert lease.expires_at is not None
    assert wait_until(lambda: pool.stats().expired == 1)
    assert wait_until(lambda: factory.destroyed == [lease.resource])
    fresh = handle.acquire(timeout=1, ttl=10)
    assert fresh.resource != lease.resource
    handle.release(fresh)


def test_renew_keeps_a_lease_alive(where: Where) -> None:
    clock = FakeClock()
    pool = fake_clock_pool(clock, max_size=2)
    try:
        assert renewal_outlives_its_first_expiry(where(pool), clock) == (1, 1)
        stats = pool.stats()
        assert (stats.expired, stats.released, stats.leased, stats.idle) == (1, 1, 0, 2)
    finally:
        where.close()  # its handles first, while the pool still runs
        pool.stop(timeout=5)


def test_the_renew_check_fails_when_a_renewal_does_not_stick(
    monkeypatch: pytest.MonkeyPatch, where: Where
) -> None:
    """Mutant: the pool answers Renew with the later expiry but keeps the old one."""

    def renew_but_forget(
        self: PoolCore, now: float, lease_id: str, holder: Holder, ttl: float
    ) -> Lease:
        loan = self._ledger.held_by(lease_id, holder)
        return replace(loan.lease, expires_at=now + ttl)

    monkeypatch.setattr(PoolCore, "renew", renew_but_forget)
    clock = FakeClock()
    pool = fake_clock_pool(clock, max_size=2)
    try:
        assert renewal_outlives_its_first_expiry(where(pool), clock) == (2, 0)
    finally:
        where.close()  # its handles first, while the pool still runs
        pool.stop(timeout=5)


def test_sixteen_threads_never_share_a_resource(
    start: StartPool, where: Where, tmp_path: Path
) -> None:
    where.not_for(
        "in-process cached",
        "worker cached",
        why="a cached handle lends parked leases again without the pool (which counts them "
        "as leased), so its books differ; tests/actors/test_inprocess_cache.py hammers one",
    )
    pool = start(max_size=3)
    outcome = hammer_with_checks(where(pool), Markers(tmp_path), threads=16, pairs=150)
    assert outcome.errors == []
    assert outcome.markers == [] and outcome.intervals.overlaps() == 0
    assert outcome.intervals.count == 16 * 150
    assert set(outcome.intervals.holds) == {0, 1, 2}
    assert_exclusive(outcome.intervals.holds, limit=3)
    # A worker's Release is one frame, one way: the last may land after release() returns.
    assert wait_until(lambda: pool.stats().released == 16 * 150)
    stats = pool.stats()
    assert (stats.idle, stats.size, stats.leased, stats.reclaimed) == (3, 3, 0, 0)
    assert stats.acquired == stats.released == 16 * 150


class ResetRecording(Factory[int]):
    """Counts resets and the threads they run on; ``refuse`` makes reset fail."""

    def __init__(self, refuse: bool = False) -> None:
        self.n = 0
        self.resets: list[tuple[int, str]] = []
        self.refuse = refuse

    def create(self) -> int:
        self.n += 1
        return self.n

    def reset(self, resource: int) -> None:
        self.resets.append((resource, threading.current_thread().name))
        if self.refuse:
            raise RuntimeError("not reusable")


def test_an_in_process_release_resets_on_the_releasing_thread(start: StartPool) -> None:
    """As psycopg_pool's putconn: no factory-thread trip between release and next borrow."""
    factory = ResetRecording()
    pool = start(factory, max_size=1)
    first = pool.acquire(timeout=1)
    pool.release(first)
    assert factory.resets == [(first.resource, threading.current_thread().name)]
    again = pool.acquire(timeout=1)  # the reset finished before release returned
    assert again.resource == first.resource
    pool.release(again)
    assert pool.stats().idle == 1


def test_a_refused_reset_on_the_releasing_thread_replaces_the_resource(
    start: StartPool,
) -> None:
    factory = ResetRecording(refuse=True)
    pool = start(factory, max_size=1)
    first = pool.acquire(timeout=1)
    pool.release(first)
    second = pool.acquire(timeout=1)
    assert second.resource != first.resource
    pool.release(second)
    stats = pool.stats()
    assert (stats.destroyed, stats.leased, stats.size) == (2, 0, 0)
