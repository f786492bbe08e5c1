"""A Ctrl-C in the middle of a cached borrow loses no lease (the in-process cache).

The window is a few bytecodes wide, so the interrupt is made to land there: the
ledger's record of the new borrow raises KeyboardInterrupt once. The same route
code serves a worker's cache (RemoteRoute), so this covers both.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from lessor import PoolHandle, PoolSpec, TokenFactory, start_pool
from lessor.handles.cached import CachedRoute


@pytest.fixture
def pool() -> Iterator[PoolHandle]:
    handle = start_pool(PoolSpec("c", TokenFactory(), max_size=1), cache=True)
    yield handle
    handle.stop(timeout=5)


def test_ctrl_c_while_a_parked_lease_is_lent_parks_it_again(
    pool: PoolHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    route = pool.route
    assert isinstance(route, CachedRoute)
    first = pool.acquire(timeout=5)
    pool.release(first)
    assert route.parked == 1
    ledger = route._ledger
    record = ledger.lent_locked

    def interrupted(*args: Any) -> None:
        monkeypatch.setattr(ledger, "lent_locked", record)  # once
        record(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(ledger, "lent_locked", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pool.acquire(timeout=5)
    assert route.parked == 1  # back in the cache, not stranded with no borrower
    assert ledger.held == 0  # and nobody is recorded as holding it
    again = pool.acquire(timeout=1)  # the pool's only slot: it would time out if lost
    assert again.id == first.id and again.granted_at > first.granted_at
    pool.release(again)
    assert pool.stats().acquired == 1  # still the one grant
