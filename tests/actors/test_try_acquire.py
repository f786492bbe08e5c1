"""Try-acquire through every handle: ``acquire(timeout=0)``, ``lease(timeout=0)`` and
``Acquire(pool, timeout=0)`` give a lease now, or PoolExhausted saying why.

A try never queues behind other holders: it is refused at once when only a release
could serve it, or its holder is paused; it waits only for a resource on its way to
it (one being made), bounded by the pool's ``acquire_timeout``. Each test runs
in-process (plain and cached) and from a worker's client (uncached and cached)
through the ``where`` fixture (tests/support/where.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from lessor import (
    Acquire,
    AcquireTimeout,
    CallableFactory,
    Factory,
    PoolExhausted,
    PoolHandle,
    PoolSpec,
    TokenFactory,
    start_pool,
)
from lessor.protocol.messages import Admission, Release
from tests.support.helpers import in_thread, wait_until
from tests.support.where import Where

#: A refusal "at once" comes well inside this, where a wait would take the pool's 30 s.
AT_ONCE = 5.0


@pytest.fixture
def pools() -> Iterator[list[PoolHandle]]:
    made: list[PoolHandle] = []
    yield made
    for handle in made:
        handle.stop(timeout=5)


def start(pools: list[PoolHandle], factory: Factory[Any] | None = None, **kw: Any) -> PoolHandle:
    spec = PoolSpec("p", factory or TokenFactory(), **{"acquire_timeout": 30.0, **kw})
    handle = start_pool(spec)
    pools.append(handle)
    return handle


def refused_at_once(call: Any, match: str) -> PoolExhausted:
    began = time.monotonic()
    with pytest.raises(PoolExhausted, match=match) as info:
        call()
    assert time.monotonic() - began < AT_ONCE
    return info.value


def test_a_free_pool_grants_it_in_every_form(pools: list[PoolHandle], where: Where) -> None:
    pool = start(pools, max_size=2)
    handle = where(pool)
    asked = handle.ask(Acquire("p", timeout=0))  # the message API: straight to the pool
    handle.tell(Release(asked.id))  # (and not through a handle's ledger)
    lease = handle.acquire(timeout=0)
    with handle.lease(timeout=0) as resource:
        assert resource != lease.resource
    handle.release(lease)
    assert wait_until(lambda: pool.stats().leased == (2 if where.cached else 0))  # parked


def test_a_busy_pool_refuses_it_at_once_in_every_form(
    pools: list[PoolHandle], where: Where
) -> None:
    pool = start(pools, max_size=1)
    handle = where(pool)
    held = handle.acquire(timeout=5)
    error = refused_at_once(lambda: handle.acquire(timeout=0), r"nothing free now \(timeout=0\)")
    assert "size 1/1, 1 leased" in str(error)

    def block() -> None:
        with handle.lease(timeout=0):
            pytest.fail("granted a lease the pool did not have")

    refused_at_once(block, "nothing free now")
    refused_at_once(lambda: handle.ask(Acquire("p", timeout=0)), "nothing free now")
    stats = pool.stats()
    assert (stats.waiting, stats.rejected, stats.timeouts) == (0, 3, 0)
    handle.release(held)
    with handle.lease(timeout=0) as resource:  # free again: granted
        assert resource == held.resource


def test_it_never_queues_behind_a_waiter(pools: list[PoolHandle], where: Where) -> None:
    pool = start(pools, max_size=1)
    handle = where(pool)
    held = pool.acquire(timeout=5)
    waiter, got = in_thread(lambda: pool.acquire(timeout=10))
    assert wait_until(lambda: pool.stats().waiting == 1)
    refused_at_once(lambda: handle.acquire(timeout=0, priority=99), "1 waiting")
    pool.release(held)
    waiter.join(10)
    (lease,) = got
    assert lease.resource == held.resource  # the waiter was served, not the try
    assert wait_until(lambda: pool.stats().leased == 0)  # (its thread ended: reclaimed)


def test_it_waits_for_the_resource_being_made_for_it(pools: list[PoolHandle], where: Where) -> None:
    made = threading.Event()

    def create() -> int:
        assert made.wait(10)
        return 7

    def borrow() -> int:
        with handle.lease(timeout=0) as resource:
            return int(resource)

    pool = start(pools, CallableFactory(create, portable=True), max_size=1)
    handle = where(pool)
    thread, got = in_thread(borrow)
    assert wait_until(lambda: pool.stats().creating == 1)
    assert got == []  # not refused: the pool has room, and makes one for it
    made.set()
    thread.join(10)
    assert got == [7]


def test_a_failing_factory_times_it_out_with_the_cause(
    pools: list[PoolHandle], where: Where
) -> None:
    def create() -> int:
        raise ConnectionRefusedError("db down")

    pool = start(pools, CallableFactory(create, portable=True), max_size=1,
                 acquire_timeout=0.3, create_backoff=0.05)  # fmt: skip
    handle = where(pool)
    with pytest.raises(AcquireTimeout, match="ConnectionRefusedError: db down") as info:
        handle.acquire(timeout=0)
    if not where.in_worker:  # across processes the error travels as its name and text
        assert isinstance(info.value.__cause__, ConnectionRefusedError)


def test_a_paused_holder_is_refused_saying_so(pools: list[PoolHandle], where: Where) -> None:
    pool = start(pools, max_size=2)
    handle = where(pool)
    pool.ask(Admission("", True, "machine memory at 93%"))
    refused_at_once(lambda: handle.acquire(timeout=0),
                    "paused by the memory manager: machine memory at 93%")  # fmt: skip
    pool.ask(Admission("", False))
    handle.release(handle.acquire(timeout=0))


@pytest.mark.parametrize("bad", [-1.0, -0.001, float("nan"), float("inf")])
def test_negative_and_nan_timeouts_stay_value_errors(
    pools: list[PoolHandle], where: Where, bad: float
) -> None:
    pool = start(pools, max_size=1)
    handle = where(pool)
    with pytest.raises(ValueError, match="timeout"):
        handle.acquire(timeout=bad)
    with pytest.raises(ValueError, match="timeout"), handle.lease(timeout=bad):
        pass
    handle.release(handle.acquire(timeout=0))  # and 0 is fine
