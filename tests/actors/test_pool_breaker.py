"""A pool behind a breaker (``PoolSpec.breaker``): open stops it, closed lets it go on."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator

import pytest

from lessor import (
    BreakerOpen,
    BreakerSpec,
    CallableFactory,
    NoSuchBreaker,
    PoolSpec,
    Runtime,
)
from lessor.core.pool import PoolCore
from lessor.holder import Holder
from tests.support.helpers import in_thread, wait_until


class CountingFactory(CallableFactory[int]):
    """Counts creates; fails them while ``failing`` is set (a dependency that is down)."""

    def __init__(self) -> None:
        self.creates = 0
        self.failing = threading.Event()
        self._numbers = itertools.count()
        super().__init__(self._make)

    def _make(self) -> int:
        self.creates += 1
        if self.failing.is_set():
            raise ConnectionError("down")
        return next(self._numbers)


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    with Runtime(handle_signals=False) as rt:
        yield rt


def test_an_open_breaker_fails_acquires_at_once_and_queued_ones_too(runtime: Runtime) -> None:
    breaker = runtime.add_breaker(BreakerSpec("db", open_duration=30))
    pool = runtime.add_pool(PoolSpec("pg", CountingFactory(), max_size=1, breaker="db"))
    held = pool.acquire(timeout=5)
    waiter, result = in_thread(lambda: pool.acquire(timeout=20))
    assert wait_until(lambda: pool.stats().waiting == 1)

    breaker.force_open()
    waiter.join(5)
    assert not waiter.is_alive()
    assert isinstance(result[0], BreakerOpen), result  # the queued one, at once
    with pytest.raises(BreakerOpen) as refused:
        pool.acquire(timeout=20)  # a new one: no wait for a connect that would fail
    assert refused.value.breaker == "db"

    pool.release(held)
    breaker.reset()
    again = pool.acquire(timeout=5)
    assert again.resource == held.resource
    pool.release(again)


def test_an_open_breaker_stops_the_pool_retrying_its_factory(runtime: Runtime) -> None:
    factory = CountingFactory()
    factory.failing.set()
    breaker = runtime.add_breaker(BreakerSpec("db", open_duration=30))
    pool = runtime.add_pool(
        PoolSpec("pg", factory, max_size=1, create_backoff=0.01, create_backoff_max=0.01,
                 breaker="db")
    )  # fmt: skip
    waiter, result = in_thread(lambda: pool.acquire(timeout=20))
    assert wait_until(lambda: factory.creates >= 3)  # a waiter: it keeps retrying

    breaker.force_open()
    waiter.join(5)
    assert isinstance(result[0], BreakerOpen), result
    assert wait_until(lambda: pool.stats().creating == 0)
    stopped_at = factory.creates
    # it retried every 10 ms; give it 30 of those (a wait that must come to nothing)
    assert not wait_until(lambda: factory.creates > stopped_at, timeout=0.3)

    factory.failing.clear()
    breaker.reset()
    lease = pool.acquire(timeout=5)  # closed: it makes one again
    assert factory.creates > stopped_at
    pool.release(lease)


def test_a_restarted_pool_is_as_open_as_its_breaker(runtime: Runtime) -> None:
    breaker = runtime.add_breaker(BreakerSpec("db", open_duration=30))
    pool = runtime.add_pool(PoolSpec("pg", CountingFactory(), max_size=1, breaker="db"))
    breaker.force_open()
    old = pool.actor_ref
    old.stop()  # not a clean stop for a supervised child: it restarts
    assert wait_until(lambda: pool.target.ref is not None and pool.target.ref is not old)
    with pytest.raises(BreakerOpen):
        pool.acquire(timeout=5)


def test_a_pool_names_a_breaker_that_exists(runtime: Runtime) -> None:
    with pytest.raises(NoSuchBreaker):
        runtime.add_pool(PoolSpec("pg", CountingFactory(), breaker="nope"))
    with pytest.raises(ValueError, match="breaker"):
        PoolSpec("pg", CountingFactory(), breaker="")


def test_the_core_gate_plans_no_creates_and_refuses_while_open() -> None:
    spec = PoolSpec("pg", CountingFactory(), min_size=2, max_size=2)
    core = PoolCore(spec, epoch="e", has_check=False, has_reset=False, reusable=False)
    core.gate(0.0, "db", "open", 10.0)
    assert core.start(0.0) == []  # no pre-warm while open
    with pytest.raises(BreakerOpen) as refused:
        core.acquire(1.0, object(), Holder.thread(1, 1, 1))
    assert refused.value.remaining == pytest.approx(9.0)
    assert len(core.gate(2.0, "db", "closed", None)) == 2  # closed: both creates planned
