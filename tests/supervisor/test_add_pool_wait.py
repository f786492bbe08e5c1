"""``add_pool(..., wait=True)``: psycopg_pool's ``open(wait=True)``, at the runtime.

A pool whose factory cannot make its ``min_size`` resources is reported by the call
that adds it, with the factory's error, not 30 s later by the first Acquire.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from lessor import AcquireTimeout, CallableFactory, PoolSpec, Runtime, TokenFactory


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    with Runtime(handle_signals=False) as runtime:
        yield runtime


def test_it_returns_with_min_size_resources_made(runtime: Runtime) -> None:
    pool = runtime.add_pool(PoolSpec("slots", TokenFactory(), min_size=3), wait=True)
    stats = pool.stats()
    assert (stats.size, stats.idle) == (3, 3)


def test_without_wait_it_returns_before_they_are_made(runtime: Runtime) -> None:
    made: list[int] = []

    def slow() -> int:
        time.sleep(0.2)  # the factory's work, not synchronisation
        made.append(1)
        return len(made)

    pool = runtime.add_pool(PoolSpec("slow", CallableFactory(slow, portable=True), min_size=1))
    assert pool.stats().size == 0
    pool.wait(timeout=5)
    assert pool.stats().size == 1


def test_a_dead_factory_is_reported_by_add_pool_with_its_error(runtime: Runtime) -> None:
    def create() -> int:
        raise ConnectionRefusedError("db down")

    spec = PoolSpec("db", CallableFactory(create), min_size=1, create_backoff=0.02,
                    create_backoff_max=0.1)  # fmt: skip
    began = time.monotonic()
    with pytest.raises(AcquireTimeout, match="db down") as info:
        runtime.add_pool(spec, wait=True, wait_timeout=0.5)
    assert 0.5 <= time.monotonic() - began < 5.0
    assert isinstance(info.value.__cause__, ConnectionRefusedError)
    assert runtime.pool("db").stats().factory_errors >= 2  # it stays, and keeps trying
