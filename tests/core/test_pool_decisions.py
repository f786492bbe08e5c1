"""The decisions PoolCore took over from its actor: recall, drain, refused grants.

Plus the ledger's reading of bad lease ids, which no longer takes ids apart.
Driven by hand with exact times, like tests/core/test_pool_core.py.
"""

from __future__ import annotations

import random

import pytest

from lessor.core.pool import (
    RECALL_INTERVAL,
    AskBack,
    Create,
    Destroy,
    Drained,
    Expired,
    Fail,
    Grant,
    PoolCore,
    Reclaimed,
    Reset,
)
from lessor.errors import (
    DoubleRelease,
    ExpiredLease,
    ShuttingDown,
    StaleLease,
    UnknownLease,
)
from lessor.factory import TokenFactory
from lessor.holder import ANONYMOUS, Holder
from lessor.protocol.messages import Lease
from lessor.specs import PoolSpec
from tests.support.pool_core import Pool, of

THREAD = Holder.thread(1, 2, 3)
ACTOR = Holder.actor("urn:uuid:a")
WORKER = Holder.worker("w1", 11)
WORKER2 = Holder.worker("w2", 12)


# -- recall ---------------------------------------------------------------------------------


def test_a_starved_pool_asks_its_worker_holders_at_once_then_every_interval() -> None:
    pool = Pool(max_size=2)
    core = pool.core
    mine = pool.lease(0.0, "a", WORKER)
    pool.lease(0.0, "b", THREAD)
    out = core.acquire(1.0, "c", ACTOR, timeout=10.0)
    assert out == [AskBack((WORKER,))]  # the thread and the actor are not asked
    assert core.starved
    assert core.next_deadline() == 1.0 + RECALL_INTERVAL
    assert of(core.tick(1.0 + RECALL_INTERVAL / 2), AskBack) == []  # not yet
    assert core.acquire(1.01, "d", THREAD, timeout=10.0) == []  # asked a moment ago
    again = 1.0 + RECALL_INTERVAL
    assert core.tick(again) == [AskBack((WORKER,))]
    assert core.next_deadline() == again + RECALL_INTERVAL
    # The worker gives its lease back: "c" is served, "d" still waits, so still starved.
    out = core.release(again + 0.01, mine.id, WORKER)
    assert [d.ticket for d in of(out, Grant)] == ["c"]
    assert of(out, AskBack) == []
    # At the wake-up already planned nobody can give back: no AskBack, no new wake-up.
    assert core.starved and core.next_deadline() == again + RECALL_INTERVAL
    assert core.tick(again + RECALL_INTERVAL) == []
    assert core.next_deadline() == 11.01  # only "d"'s own deadline


def test_asking_stops_when_the_pool_is_no_longer_starved() -> None:
    pool = Pool(max_size=1)
    core = pool.core
    lease = pool.lease(0.0, "a", WORKER)
    assert core.acquire(1.0, "b", THREAD, timeout=10.0) == [AskBack((WORKER,))]
    assert core.cancel(1.02, "b") == []  # the caller gave up: nothing waits
    assert not core.starved
    assert core.next_deadline() is None  # no recall wake-up left behind
    assert core.tick(5.0) == []
    # A new starved spell asks at once, however soon after the last ask.
    assert core.acquire(5.0, "c", THREAD, timeout=10.0) == [AskBack((WORKER,))]
    out = core.release(5.01, lease.id, WORKER)
    assert of(out, Grant) and not of(out, AskBack)
    assert core.next_deadline() is None


def test_only_worker_holders_are_asked_even_an_untyped_one_is_not() -> None:
    pool = Pool(max_size=3)
    core = pool.core
    pool.lease(0.0, "a", THREAD)
    pool.lease(0.0, "b", ANONYMOUS)
    core.acquire(0.0, "c", "worker:plain:1", timeout=10.0)  # type: ignore[arg-type]
    pool.run([Create()], 0.0)
    assert core.acquire(1.0, "d", ACTOR, timeout=10.0) == []  # nobody can give back
    assert core.starved and core.next_deadline() == 11.0  # no recall wake-up


def test_every_worker_holder_is_named_once() -> None:
    pool = Pool(max_size=3)
    core = pool.core
    pool.lease(0.0, "a", WORKER)
    pool.lease(0.0, "b", WORKER2)
    pool.lease(0.0, "c", WORKER)
    (ask,) = core.acquire(1.0, "d", THREAD)
    assert isinstance(ask, AskBack) and sorted(ask.holders) == sorted([WORKER, WORKER2])


def test_waiters_a_creation_will_serve_do_not_count_as_starved() -> None:
    pool = Pool(max_size=2)
    core = pool.core
    pool.lease(0.0, "a", WORKER)
    assert core.acquire(1.0, "b", THREAD) == [Create()]  # room: make one, ask nobody
    assert not core.starved


# -- drain ----------------------------------------------------------------------------------


def test_drained_at_once_when_nothing_is_out() -> None:
    pool = Pool(max_size=1)
    assert pool.core.await_drained(0.0, "t") == [Drained("t")]


@pytest.mark.parametrize("how", ["release", "expiry", "reclaim_holder", "reclaim_all"])
def test_drained_comes_with_the_last_lease_back(how: str) -> None:
    pool = Pool(max_size=2, lease_ttl=5.0)
    core = pool.core
    first = pool.lease(0.0, "a", THREAD)
    last = pool.lease(1.0, "b", WORKER)
    out = core.begin_drain(1.5, ShuttingDown("bye"))
    assert out == []
    with pytest.raises(ShuttingDown):
        core.acquire(1.5, "c", THREAD)
    assert core.await_drained(2.0, "t1") == []
    assert core.await_drained(2.0, "t2") == []
    assert of(core.release(3.0, first.id, THREAD), Drained) == []  # one still out
    if how == "release":
        out = core.release(4.0, last.id, WORKER)
    elif how == "expiry":
        out = core.tick(6.0)
        assert of(out, Expired)
    elif how == "reclaim_holder":
        out = core.reclaim_holder(4.0, WORKER)
    else:
        out = core.reclaim_all(4.0, "pool stopped")[1]
    assert of(out, Drained) == [Drained("t1"), Drained("t2")]
    assert out[-2:] == [Drained("t1"), Drained("t2")]  # after the decisions that end it
    assert of(core.tick(100.0), Drained) == []  # exactly once


def test_begin_drain_fails_every_waiter() -> None:
    pool = Pool(max_size=1, has_check=True)
    core = pool.core
    pool.run(core.acquire(0.0, "queued", THREAD), 0.0)  # its resource goes to a Check
    core.acquire(0.0, "behind", THREAD)
    error = ShuttingDown("bye")
    out = core.begin_drain(1.0, error)
    assert out == [Fail("behind", error), Fail("queued", error)]
    assert core.waiting == 0


def test_an_orphan_out_holds_the_drain_until_it_comes_back() -> None:
    orphan = Lease("p/e1/9", "p", "r-old", "worker:w1:11", 0.0, None)
    pool = Pool(max_size=2, orphans=(orphan,))
    core = pool.core
    assert core.await_drained(0.0, "t") == []
    out = core.release(1.0, orphan.id, WORKER)
    assert out == [Destroy("r-old", "released after a restart"), Drained("t")]


def test_close_answers_pending_drains() -> None:
    pool = Pool(max_size=1)
    core = pool.core
    lease = pool.lease(0.0, "a", THREAD)
    assert core.await_drained(0.0, "t") == []
    out = core.close(1.0)
    assert out == [Drained("t")]
    assert core.await_drained(1.0, "late") == [Drained("late")]  # closed: nothing to wait for
    assert core.release(2.0, lease.id, THREAD) == [Destroy("r0", "closed")]


# -- refused grants ---------------------------------------------------------------------------


@pytest.mark.parametrize("has_reset", [False, True])
def test_a_refused_grant_goes_back_to_idle_without_a_reset(has_reset: bool) -> None:
    pool = Pool(max_size=1, has_reset=has_reset)
    core = pool.core
    lease = pool.lease(0.0, "a", WORKER)
    assert core.refused(0.5, lease.id, lease.holder) == []
    stats = core.stats()
    assert (stats.idle, stats.leased, stats.checking, stats.released) == (1, 0, 0, 1)
    assert core.refused(0.6, lease.id, lease.holder) == []  # twice: nothing, no error
    with pytest.raises(DoubleRelease):
        core.release(0.7, lease.id, WORKER)
    again = pool.lease(1.0, "b", THREAD)
    assert again.resource == lease.resource


def test_a_refused_grant_goes_on_to_the_next_waiter() -> None:
    pool = Pool(max_size=1)
    core = pool.core
    lease = pool.lease(0.0, "a", THREAD)
    assert core.acquire(0.1, "b", ACTOR) == []
    out = core.refused(0.2, lease.id, lease.holder)
    assert [(d.ticket, d.lease.resource) for d in of(out, Grant)] == [("b", lease.resource)]


def test_a_refused_grant_reclaimed_meanwhile_is_left_alone() -> None:
    pool = Pool(max_size=1, lease_ttl=1.0, has_reset=True, reusable=True)
    core = pool.core
    lease = pool.lease(0.0, "a", WORKER)
    out = core.tick(1.0)
    assert of(out, Reclaimed) and of(out, Reset)
    before = core.stats()
    assert core.refused(1.5, lease.id, lease.holder) == []
    assert core.refused(1.5, "p/e2/999", WORKER) == []  # never granted: still no error
    assert core.stats() == before


def test_a_refused_grant_of_another_holder_is_not_taken() -> None:
    pool = Pool(max_size=1)
    core = pool.core
    lease = pool.lease(0.0, "a", WORKER)
    assert core.refused(0.5, lease.id, THREAD) == []
    assert core.leased == 1


# -- leases and the ledger --------------------------------------------------------------------


def test_a_lease_carries_its_holder_as_plain_text() -> None:
    pool = Pool(max_size=1)
    lease = pool.lease(0.0, "a", WORKER)
    assert type(lease.holder) is str and lease.holder == WORKER
    assert pool.core.holders() == [WORKER] and pool.core.holders()[0].kind == "worker"
    assert pool.core.leases_of(WORKER) == [lease.id]


@pytest.mark.parametrize(
    ("pool_name", "lease_id", "error"),
    [
        ("p", "p/e1/3", StaleLease),  # an earlier incarnation's
        ("p", "p/e1/not-a-number", StaleLease),
        ("p", "q/e1/3", UnknownLease),  # another pool, same epoch name
        ("p", "pp/e1/3", UnknownLease),
        ("p", "x/p/e1/3", UnknownLease),
        ("p", "p/e11/3", UnknownLease),  # a prefix of the epoch is not the epoch
        ("p", "p/e2/77", UnknownLease),  # this incarnation never granted it
        ("p", "", UnknownLease),
        ("a/b", "a/b/e1/3", StaleLease),  # a pool name with a slash in it
        ("a/b", "a/e1/3", UnknownLease),
    ],
)
def test_bad_lease_ids_are_told_apart_without_taking_them_apart(
    pool_name: str, lease_id: str, error: type[Exception]
) -> None:
    pool = Pool(pool_name, max_size=1)
    with pytest.raises(error):
        pool.core.release(0.0, lease_id, THREAD)


def test_ended_leases_are_double_or_reclaimed() -> None:
    pool = Pool(max_size=2)
    core = pool.core
    released = pool.lease(0.0, "a", THREAD)
    reclaimed = pool.lease(0.0, "b", ACTOR)
    core.release(1.0, released.id, THREAD)
    core.reclaim_holder(1.0, ACTOR)
    with pytest.raises(DoubleRelease):
        core.release(2.0, released.id, THREAD)
    with pytest.raises(ExpiredLease):
        core.release(2.0, reclaimed.id, ACTOR)


def test_an_orphan_given_back_twice_is_a_double_release() -> None:
    released = Lease("p/e1/1", "p", "r-a", "worker:w1:11", 0.0, None)
    reclaimed = Lease("p/e1/2", "p", "r-b", "thread:1:2:3", 0.0, None)
    pool = Pool(max_size=3, orphans=(released, reclaimed))
    core = pool.core
    core.release(1.0, released.id, WORKER)
    core.reclaim_holder(1.0, THREAD)
    with pytest.raises(DoubleRelease):
        core.release(2.0, released.id, WORKER)
    with pytest.raises(ExpiredLease):
        core.release(2.0, reclaimed.id, THREAD)


def test_a_probe_wanted_by_a_new_waiter_is_in_the_alarm_after_a_tick_forgot_it() -> None:
    """The owner arms with take_alarm after each call. A failing factory's next probe
    is not a deadline while nobody wants a resource; once a waiter does, the alarm
    must say so, or the probe would wait for that waiter's own timeout."""
    spec = PoolSpec("p", TokenFactory(), max_size=1, create_backoff=1.0)
    core = PoolCore(spec, epoch="e", rng=random.Random(1))
    holder = Holder.thread(1, 1, 1)
    core.acquire(0.0, "first", holder, timeout=10)  # -> Create
    core.create_failed(0.0, RuntimeError("db down"))
    core.cancel(0.1, "first")  # nobody wants one now: the probe is not a deadline
    core.tick(0.2)
    core.take_alarm()
    assert core.next_deadline() is None
    core.acquire(0.3, "second", holder, timeout=10)  # wants one; the probe is not due yet
    alarm, deadline = core.take_alarm(), core.next_deadline()
    assert deadline is not None and deadline < 10.3  # the probe, not the waiter's timeout
    assert alarm is not None and alarm <= deadline
