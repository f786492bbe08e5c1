"""``handle.wait()`` through every handle: psycopg_pool's ``ConnectionPool.wait()``.

It blocks until the pool holds ``min_size`` resources (idle or leased), or raises
AcquireTimeout at its timeout, the factory's last error as ``__cause__`` (a worker
asking the runtime's pool gets the error's name and text: exceptions do not cross
processes). The pool keeps trying either way. Real threads, real worker client.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from lessor import (
    AcquireTimeout,
    CallableFactory,
    Factory,
    PoolClosed,
    PoolHandle,
    PoolSpec,
    TokenFactory,
    start_pool,
)
from lessor.protocol.pool_messages import Ready, Wait
from tests.support.helpers import in_thread, wait_until
from tests.support.where import Where


@pytest.fixture
def pools() -> Iterator[list[PoolHandle]]:
    made: list[PoolHandle] = []
    yield made
    for handle in made:
        if handle.actor_ref.is_alive():
            handle.stop(timeout=5)


def start(pools: list[PoolHandle], factory: Factory[Any] | None = None, **kw: Any) -> PoolHandle:
    handle = start_pool(PoolSpec("p", factory or TokenFactory(), **kw))
    pools.append(handle)
    return handle


def test_it_returns_once_min_size_resources_are_made(pools: list[PoolHandle], where: Where) -> None:
    made = threading.Event()
    count = iter(range(100))

    def create() -> int:
        assert made.wait(10)
        return next(count)

    pool = start(pools, CallableFactory(create, portable=True), min_size=2, max_size=3)
    handle = where(pool)
    thread, out = in_thread(lambda: handle.wait(timeout=10))
    assert wait_until(lambda: pool.stats().creating == 2)
    assert out == []  # still waiting for them
    made.set()
    thread.join(10)
    assert out == [None]
    assert pool.stats().size == 2
    handle.wait(timeout=1)  # ready: at once, again


def test_leased_resources_count(pools: list[PoolHandle], where: Where) -> None:
    pool = start(pools, min_size=1, max_size=1)
    handle = where(pool)
    with handle.lease(timeout=5):
        handle.wait(timeout=1)
    handle.wait(timeout=1)


def test_a_dead_factory_raises_at_the_timeout_with_its_error(
    pools: list[PoolHandle], where: Where
) -> None:
    def create() -> int:
        raise ConnectionRefusedError("db down")

    pool = start(pools, CallableFactory(create, portable=True), min_size=1, max_size=1,
                 create_backoff=0.02, create_backoff_max=0.1)  # fmt: skip
    handle = where(pool)
    began = time.monotonic()
    with pytest.raises(AcquireTimeout, match="ConnectionRefusedError: db down") as info:
        handle.wait(timeout=0.5)
    took = time.monotonic() - began
    assert 0.5 <= took < 5.0, took
    assert "holds 0 of its min_size 1 resources after 0.5s" in str(info.value)
    if not where.in_worker:
        assert isinstance(info.value.__cause__, ConnectionRefusedError)
    assert pool.stats().factory_errors >= 2  # it kept trying until the timeout...
    errors = pool.stats().factory_errors
    assert wait_until(lambda: pool.stats().factory_errors > errors)  # ...and after it


def test_a_pool_that_recovers_within_the_timeout_is_ready(
    pools: list[PoolHandle], where: Where
) -> None:
    failures = [ConnectionRefusedError("1"), ConnectionRefusedError("2")]

    def create() -> str:
        if failures:
            raise failures.pop()
        return "conn"

    pool = start(pools, CallableFactory(create, portable=True), min_size=1, max_size=1,
                 create_backoff=0.01, create_backoff_max=0.05)  # fmt: skip
    handle = where(pool)
    handle.wait(timeout=5)
    assert pool.stats().factory_errors == 2 and pool.stats().size == 1


def test_the_message_api_answers_ready(pools: list[PoolHandle], where: Where) -> None:
    pool = start(pools, min_size=2, max_size=2)
    handle = where(pool)
    assert handle.ask(Wait("p", 5.0)) == Ready("p", 2)


def test_a_stopped_pool_refuses(pools: list[PoolHandle]) -> None:
    pool = start(pools, min_size=1, max_size=1)
    pool.stop(timeout=5)
    with pytest.raises(PoolClosed):
        pool.wait(timeout=1)


def test_a_pool_stopped_while_waited_on_answers(pools: list[PoolHandle]) -> None:
    never = threading.Event()

    def create() -> int:
        never.wait(10)
        raise ConnectionRefusedError("gave up")

    pool = start(pools, CallableFactory(create), min_size=1, max_size=1)
    thread, out = in_thread(lambda: pool.wait(timeout=30))
    assert wait_until(lambda: pool.stats().creating == 1)
    stopper, _ = in_thread(lambda: pool.stop(timeout=5))
    assert wait_until(lambda: bool(out), timeout=5)  # answered when it closed, not at 30 s
    assert isinstance(out[0], PoolClosed), out
    never.set()
    stopper.join(10)
    thread.join(5)
