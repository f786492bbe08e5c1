"""PoolActor behaviour through the in-process handle, with real threads."""

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
from lessor.actors.pool import PoolActor
from lessor.core.pool import PoolCore
from lessor.handles.local import LocalRoute
from lessor.holder import Holder
from tests.conftest import in_thread, wait_until
from tests.overlap import Markers, assert_exclusive, hammer_with_checks

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


def test_acquire_times_out_at_its_deadline(start: StartPool) -> None:
    pool = start(max_size=1)
    held = pool.acquire(timeout=1)
    began = time.monotonic()
    with pytest.raises(AcquireTimeout):
        pool.acquire(timeout=0.05)
    assert time.monotonic() - began >= 0.05
    stats = pool.stats()
    assert (stats.timeouts, stats.waiting, stats.leased) == (1, 0, 1)
    pool.release(held)


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


def test_factory_recovers_and_the_waiter_is_served(start: StartPool) -> None:
    failures = [ConnectionRefusedError("1"), ConnectionRefusedError("2")]

    def create() -> str:
        if failures:
            raise failures.pop()
        return "conn"

    pool = start(CallableFactory(create), max_size=1, create_backoff=0.01)
    lease = pool.acquire(timeout=5)
    assert lease.resource == "conn"
    assert pool.stats().factory_errors == 2
    pool.release(lease)


class Recording(Factory[int]):
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


def test_resource_failing_check_is_replaced_not_failed(start: StartPool) -> None:
    factory = Checked(good=lambda r: r != 1)
    pool = start(factory, max_size=1)
    lease = pool.acquire(timeout=1)
    pool.release(lease)
    factory.good = lambda r: r != lease.resource  # the idle one goes bad
    second = pool.acquire(timeout=5)
    assert second.resource not in (lease.resource,)
    assert wait_until(lambda: lease.resource in factory.destroyed)
    assert pool.stats().check_failures >= 1
    pool.release(second)


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


def test_max_waiting_refuses_at_once(start: StartPool) -> None:
    pool = start(max_size=1, max_waiting=1)
    held = pool.acquire(timeout=1)
    waiting = pool.actor_ref.ask(Acquire("p", 5.0), block=False)
    assert wait_until(lambda: pool.stats().waiting == 1)
    with pytest.raises(PoolExhausted):
        pool.acquire(timeout=5)
    assert pool.stats().rejected == 1
    pool.release(held)
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


def test_idle_resources_above_min_size_are_evicted(start: StartPool) -> None:
    factory = Recording()
    pool = start(factory, min_size=1, max_size=3, max_idle=0.05)
    assert wait_until(lambda: pool.stats().size == 1)  # pre-warmed
    leases = [pool.acquire(timeout=1) for _ in range(3)]
    for lease in leases:
        pool.release(lease)
    assert wait_until(lambda: pool.stats().size == 1)
    assert wait_until(lambda: len(factory.destroyed) == 2)  # destroys run after the turn


def test_expired_lease_is_reclaimed_and_destroyed(start: StartPool) -> None:
    factory = Recording()
    pool = start(factory, max_size=1, lease_ttl=0.05)
    lease = pool.acquire(timeout=1)
    assert lease.expires_at is not None
    assert wait_until(lambda: pool.stats().expired == 1)
    assert wait_until(lambda: factory.destroyed == [lease.resource])
    fresh = pool.acquire(timeout=1, ttl=10)
    assert fresh.resource != lease.resource
    pool.release(fresh)


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


def test_renew_keeps_a_lease_alive() -> None:
    clock = FakeClock()
    pool = fake_clock_pool(clock, max_size=2)
    try:
        assert renewal_outlives_its_first_expiry(pool, clock) == (1, 1)
        stats = pool.stats()
        assert (stats.expired, stats.released, stats.leased, stats.idle) == (1, 1, 0, 2)
    finally:
        pool.stop(timeout=5)


def test_the_renew_check_fails_when_a_renewal_does_not_stick(
    monkeypatch: pytest.MonkeyPatch,
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
        assert renewal_outlives_its_first_expiry(pool, clock) == (2, 0)
    finally:
        pool.stop(timeout=5)


def test_sixteen_threads_never_share_a_resource(start: StartPool, tmp_path: Path) -> None:
    pool = start(max_size=3)
    outcome = hammer_with_checks(pool, Markers(tmp_path), threads=16, pairs=150)
    assert outcome.errors == []
    assert outcome.markers == [] and outcome.intervals.overlaps() == 0
    assert outcome.intervals.count == 16 * 150
    assert set(outcome.intervals.holds) == {0, 1, 2}
    assert_exclusive(outcome.intervals.holds, limit=3)
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
