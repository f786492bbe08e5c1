"""One call, one behaviour, through every handle: bad arguments and bad releases are
refused the same way, in-process and from a worker's cached and uncached handles.

A cached worker handle reuses a parked lease without building an Acquire, so it once
let ``priority="high"`` or ``timeout=inf`` through where the other handles refused it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from lessor import (
    Acquire,
    DoubleRelease,
    ForeignLease,
    PoolHandle,
    PoolSpec,
    TokenFactory,
    UnknownLease,
    start_pool,
)
from lessor.handles.lending import plainly_valid
from tests.support.helpers import wait_until
from tests.support.where import Where

BAD: list[tuple[dict[str, Any], type[Exception]]] = [
    ({"priority": "high"}, TypeError),
    ({"priority": 1.5}, TypeError),
    ({"priority": None}, TypeError),
    ({"priority": True}, TypeError),
    ({"priority": 2**63}, ValueError),
    ({"timeout": float("inf")}, ValueError),
    ({"timeout": float("nan")}, ValueError),
    ({"timeout": True}, TypeError),
    ({"timeout": "5"}, TypeError),
    ({"timeout": -1.0}, ValueError),
    ({"ttl": 0}, ValueError),
]


@pytest.fixture
def pool() -> Iterator[PoolHandle]:
    handle = start_pool(PoolSpec("p", TokenFactory(), max_size=2))
    yield handle
    handle.stop(timeout=5)


@pytest.mark.parametrize(("kwargs", "error"), BAD, ids=[repr(k) for k, _ in BAD])
def test_a_bad_acquire_is_refused_alike_by_every_handle(
    pool: PoolHandle, where: Where, kwargs: dict[str, Any], error: type[Exception]
) -> None:
    handle = where(pool)
    handle.release(handle.acquire(timeout=5))  # a cached handle now has a parked lease
    with pytest.raises(error):
        handle.acquire(**kwargs)
    lease = handle.acquire(timeout=5)  # the pool lives on, and serves the next caller
    handle.release(lease)
    assert pool.stats().acquired >= 1


@example(timeout=2**64, priority=0, ttl=None)  # an int past msgpack's, once found at random
@given(
    timeout=st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=2),
    priority=st.none() | st.booleans() | st.integers() | st.floats(),
    ttl=st.none() | st.floats(),
)
def test_the_cached_handles_quick_check_only_passes_what_an_acquire_accepts(
    timeout: Any, priority: Any, ttl: Any
) -> None:
    """The cached handle skips building the Acquire when its quick check says yes."""
    if plainly_valid(timeout, priority, ttl):
        Acquire("p", timeout, priority, ttl)  # must not raise


def test_a_bad_release_raises_alike_through_every_handle(pool: PoolHandle, where: Where) -> None:
    """Release is synchronous in-process and judged by the worker's ledger: same errors."""
    handle = where(pool)
    lease = handle.acquire(timeout=5)
    handle.release(lease)
    with pytest.raises(DoubleRelease):
        handle.release(lease)

    held = handle.acquire(timeout=5)
    other: list[BaseException] = []
    thread = threading.Thread(target=lambda: other.append(_raised(handle.release, held)))
    thread.start()
    thread.join(5)
    assert len(other) == 1 and isinstance(other[0], ForeignLease), other

    made_up = replace(held, id="p/00000000/999")
    with pytest.raises(UnknownLease):
        handle.release(made_up)

    handle.release(held)  # every refusal changed nothing: the holder still gives it back
    parked = 1 if getattr(handle, "cache", False) else 0  # a cached handle keeps it parked
    assert wait_until(lambda: pool.stats().leased == parked)  # a worker's Release is one way


def _raised(fn: Any, *args: Any) -> BaseException | None:
    try:
        fn(*args)
    except BaseException as exc:
        return exc
    return None


def test_every_handle_is_the_one_class(pool: PoolHandle, where: Where) -> None:
    """Code typed against PoolHandle runs unchanged in-process and in a worker."""
    handle = where(pool)
    assert type(handle) is PoolHandle and type(pool) is PoolHandle
    assert handle.name == pool.name == "p"
