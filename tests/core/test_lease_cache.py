"""LeaseCache, the worker-side bookkeeping of cached leases, against a model of the pool.

The property that matters: a lease is never lent to two borrowers at once, and every
lease the pool granted is, at any moment, with exactly one borrower, parked, or back.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from lessor.core.cache import RETURN_WINDOW, LeaseCache
from lessor.errors import DoubleRelease
from lessor.protocol.messages import Lease


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class CachedLeases(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.cache = LeaseCache(self.clock)
        self.ids = itertools.count()
        self.at_pool: set[str] = set()  # granted by the pool, not yet given back to it
        self.held: list[Lease] = []  # with borrowers now
        self.stale: list[Lease] = []  # borrows that ended
        self.pool_copy: dict[str, Lease] = {}  # each lease as the pool knows it

    def _back_to_pool(self, lease: Lease) -> None:
        assert lease.id in self.at_pool, f"{lease.id} given back twice"
        self.at_pool.remove(lease.id)

    @rule(ttl=st.booleans(), contended=st.booleans())
    def acquire(self, ttl: bool, contended: bool) -> None:
        lease = None if ttl else self.cache.take()
        if lease is None:
            lease = Lease(f"p/{next(self.ids)}", "p", "r", "worker:w:1", self.clock.now,
                          self.clock.now + 10 if ttl else None, contended)  # fmt: skip
            self.at_pool.add(lease.id)
            self.pool_copy[lease.id] = lease
            self.cache.lent(lease)
        self.held.append(lease)

    @precondition(lambda self: self.held)
    @rule(data=st.data(), broken=st.booleans(), draining=st.booleans())
    def release(self, data: st.DataObject, broken: bool, draining: bool) -> None:
        lease = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        parked = self.cache.give_back(lease, broken, draining)
        if parked:
            assert not (broken or draining or lease.contended or lease.expires_at)
            assert not self.cache.asking
        else:
            self._back_to_pool(lease)
        self.stale.append(lease)

    @precondition(lambda self: self.stale)
    @rule(data=st.data())
    def release_a_stale_borrow(self, data: st.DataObject) -> None:
        lease = data.draw(st.sampled_from(self.stale))
        in_use = any(h.id == lease.id for h in self.held)
        parked = any(p.id == lease.id for p in self.cache._bag)
        if in_use or parked:
            with pytest.raises(DoubleRelease):
                self.cache.give_back(lease, False, False)
        else:  # back at the pool already: the pool refuses it there
            assert not self.cache.give_back(lease, False, False)
            assert lease.id not in self.at_pool

    @precondition(lambda self: self.held)
    @rule(data=st.data(), keep_old=st.booleans())
    def renew(self, data: st.DataObject, keep_old: bool) -> None:
        """The pool moves a held lease's expiry; the borrower may keep its older copy."""
        index = data.draw(st.integers(0, len(self.held) - 1))
        lease = self.held[index]
        assert self.cache.borrow(lease) is not None
        renewed = replace(self.pool_copy[lease.id], expires_at=self.clock.now + 5)
        self.pool_copy[lease.id] = renewed
        borrow = self.cache.renewed(renewed)
        assert (borrow.id, borrow.granted_at) == (lease.id, lease.granted_at)
        assert borrow.expires_at == renewed.expires_at
        if not keep_old:
            self.held[index] = borrow

    @precondition(lambda self: self.stale)
    @rule(data=st.data())
    def renew_a_stale_borrow(self, data: st.DataObject) -> None:
        lease = data.draw(st.sampled_from(self.stale))
        in_use = any(h.id == lease.id for h in self.held)
        parked = any(p.id == lease.id for p in self.cache._bag)
        if in_use or parked:  # it would move the expiry of a lease another borrow has
            with pytest.raises(DoubleRelease):
                self.cache.borrow(lease)
        else:
            assert self.cache.borrow(lease) is None  # the pool answers it

    @invariant()
    def a_renewed_lease_never_parks(self) -> None:
        renewed = {i for i, lease in self.pool_copy.items() if lease.expires_at is not None}
        assert renewed.isdisjoint(p.id for p in self.cache._bag)

    @rule()
    def recall(self) -> None:
        for lease in self.cache.recall():
            self._back_to_pool(lease)
        assert self.cache.parked == 0

    @rule()
    def drain(self) -> None:
        for lease in self.cache.empty():
            self._back_to_pool(lease)

    @rule(seconds=st.sampled_from([0.01, RETURN_WINDOW, 1.0]))
    def wait(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule()
    def a_thread_asks(self) -> None:
        self.cache.asking += 1

    @precondition(lambda self: self.cache.asking)
    @rule()
    def its_answer_comes(self) -> None:
        self.cache.asking -= 1

    @invariant()
    def one_borrower_per_lease(self) -> None:
        ids = [lease.id for lease in self.held]
        assert len(ids) == len(set(ids)), "a lease lent to two borrowers"

    @invariant()
    def every_granted_lease_is_held_or_parked(self) -> None:
        parked = [lease.id for lease in self.cache._bag]
        held = {lease.id for lease in self.held}
        assert len(parked) == len(set(parked))
        assert held.isdisjoint(parked)
        assert held | set(parked) == self.at_pool

    @invariant()
    def parked_leases_never_expire(self) -> None:
        assert all(p.expires_at is None and not p.contended for p in self.cache._bag)


TestCachedLeases = CachedLeases.TestCase
TestCachedLeases.settings = settings(max_examples=400, stateful_step_count=30, deadline=None)


def lent_one() -> tuple[Clock, LeaseCache, Lease]:
    """A cache at time 0 that has lent one lease without an expiry."""
    clock = Clock()
    cache = LeaseCache(clock)
    lease = Lease("p/1", "p", "r", "w", 0.0, None)
    cache.lent(lease)
    return clock, cache, lease


def test_a_recalled_lease_that_was_out_goes_back_when_released() -> None:
    clock, cache, lease = lent_one()
    assert cache.recall() == []
    clock.now = 10 * RETURN_WINDOW  # long after the window: still wanted
    assert not cache.give_back(lease, broken=False, draining=False)


def test_a_reuse_is_a_new_borrow() -> None:
    clock, cache, first = lent_one()
    assert cache.give_back(first, broken=False, draining=False)
    clock.now = 1.0
    again = cache.take()
    assert again is not None and again.id == first.id and again.granted_at == 1.0
    with pytest.raises(DoubleRelease):
        cache.give_back(first, broken=False, draining=False)
    assert cache.give_back(again, broken=False, draining=False)


def test_nothing_parks_while_a_borrower_here_waits_on_the_pool() -> None:
    _, cache, lease = lent_one()
    cache.asking += 1  # another thread's Acquire is on its way to the pool
    assert not cache.give_back(lease, broken=False, draining=False)


def test_a_renewed_lease_never_parks_even_if_released_by_its_older_copy() -> None:
    """Parked past an expiry the pool knows of, a lease would be reclaimed under a user."""
    clock, cache, lease = lent_one()
    clock.now = 2.0
    pool_copy = replace(lease, granted_at=-1.0, expires_at=7.0)  # the pool's own copy
    borrow = cache.renewed(pool_copy)
    assert (borrow.granted_at, borrow.expires_at) == (0.0, 7.0)  # the borrower's, renewed
    assert not cache.give_back(lease, broken=False, draining=False)  # the old copy: goes back
    assert cache.parked == 0


def test_renewing_a_borrow_that_ended_is_refused() -> None:
    clock, cache, first = lent_one()
    assert cache.give_back(first, broken=False, draining=False)
    with pytest.raises(DoubleRelease):
        cache.borrow(first)  # parked: renewing it would move nobody's expiry
    clock.now = 1.0
    again = cache.take()
    assert again is not None and cache.borrow(again) == again
    with pytest.raises(DoubleRelease):
        cache.borrow(first)  # lent again: it would move the new borrower's expiry
