"""Pool admission: PoolCore.admission pauses (or resumes) new grants to one holder.

A paused holder's Acquires are queued, not refused, and time out as usual with an
AcquireTimeout that says admission is paused and why; other holders are served
ahead of it, in priority order; leases already out stay valid; resuming serves the
queued ones. Paused waiters neither make the pool create resources nor make it ask
holders for leases back; ``reclaim_holder`` forgets a holder's pause; holder ""
pauses everyone.

The first part drives the core by hand with exact times (as tests/core/
test_pool_core.py does); the second is a hypothesis state machine, with mutant
cores it must catch (as tests/core/test_batch_core.py has for its own machine).
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from lessor.core.pool import (
    RECALL_INTERVAL,
    AskBack,
    Check,
    Create,
    Decision,
    Destroy,
    Fail,
    Grant,
    PoolCore,
    Reclaimed,
)
from lessor.core.pool.waitqueue import DONE, QUEUED, Waiter, WaitQueue
from lessor.errors import AcquireTimeout, LessorError
from lessor.factory import TokenFactory
from lessor.holder import Holder
from lessor.protocol.messages import Lease
from lessor.specs import PoolSpec
from tests.support.mutants import assert_catches, assert_passes
from tests.support.pool_core import Pool as CorePool
from tests.support.pool_core import of

A = Holder.thread(1, 2, 3)
B = Holder.actor("urn:uuid:b")
W = Holder.worker("w1", 11)
W2 = Holder.worker("w2", 12)
EVERYONE = ""
PAUSED_TEXT = "admission is paused by the memory manager"


# -- the owner's side, by hand -----------------------------------------------------------------


class Pool(CorePool):
    """The core's test pool, with resources made idle at will and its bounds checked."""

    def warm(self, n: int, now: float = 0.0) -> list[Lease]:
        """``n`` resources made and idle again (leased by a throwaway holder, released)."""
        filler = Holder.thread(9, 9, 9)
        leases = [self.lease(now, f"warm{i}", filler) for i in range(n)]
        for lease in leases:
            assert not of(self.core.release(now, lease.id, filler), Grant)
        assert self.core.idle == n
        return leases

    def check_bounds(self) -> None:
        s, core = self.core.stats(), self.core
        assert s.idle + s.checking + s.leased == s.size
        assert s.size + s.creating + core.orphans <= core.spec.max_size
        assert s.leased <= core.spec.max_size


def granted(out: list[Decision]) -> list[object]:
    """The tickets granted, in the order of the decisions."""
    return [d.ticket for d in of(out, Grant)]


# -- the pause itself --------------------------------------------------------------------------


def test_admission_records_the_pause_and_why_and_resume_forgets_it() -> None:
    core = Pool(max_size=2).core
    assert core.paused == {} and core.admits(A) and core.admits(B)
    assert core.admission(0.0, A, True, "rss 91%") == []
    assert core.paused == {A: "rss 91%"}
    assert not core.admits(A) and core.admits(B)
    core.admission(0.0, A, True, "")  # paused again, without a why: "paused"
    assert core.paused == {A: "paused"}
    core.paused[A] = "edited"  # a copy: the core's own is not touched
    assert core.paused == {A: "paused"}
    core.admission(0.0, A, False)
    assert core.paused == {} and core.admits(A)
    assert core.admission(0.0, B, False) == []  # resuming one never paused: nothing
    assert core.paused == {}


def test_holder_everyone_pauses_every_holder_and_resuming_one_does_not_lift_it() -> None:
    core = Pool(max_size=2).core
    core.admission(0.0, EVERYONE, True, "machine at 93%")
    assert not any(core.admits(h) for h in (A, B, W, Holder.worker("w9", 99)))
    core.admission(0.0, A, False)  # "" still pauses A
    assert not core.admits(A)
    core.admission(0.0, A, True, "own")
    core.admission(0.0, EVERYONE, False)
    assert not core.admits(A) and core.admits(B)  # A's own pause stays


def test_the_fast_path_does_not_grant_a_paused_holder_an_idle_resource() -> None:
    pool = Pool(max_size=2)
    core = pool.core
    pool.warm(1)
    core.admission(0.0, A, True, "rss")
    out = core.acquire(1.0, "a", A, timeout=5.0)
    assert out == []  # queued, not refused, no grant, no creation
    s = core.stats()
    assert (s.waiting, s.idle, s.leased, s.creating) == (1, 1, 0, 0)
    # Another holder still takes the idle resource at once, past the paused waiter.
    out = core.acquire(1.0, "b", B, timeout=5.0)
    assert granted(out) == ["b"]
    assert core.stats().waiting == 1
    pool.check_bounds()


def test_the_fast_path_of_a_pool_with_a_check_does_not_check_for_a_paused_holder() -> None:
    pool = Pool(max_size=1, min_size=1, has_check=True)
    core = pool.core
    assert core.idle == 1
    core.admission(0.0, A, True, "rss")
    assert core.acquire(1.0, "a", A, timeout=5.0) == []
    assert (core.idle, core.checking, core.waiting) == (1, 0, 1)
    out = core.acquire(1.0, "b", B, timeout=5.0)
    (check,) = of(out, Check)
    assert not of(out, Grant)
    assert granted(core.checked(1.0, check.slot, True)) == ["b"]


def test_pausing_everyone_grants_nobody_then_resuming_serves_them_all() -> None:
    pool = Pool(max_size=3)
    core = pool.core
    pool.warm(2)
    core.admission(0.0, EVERYONE, True, "machine at 93%")
    for ticket, holder in (("a", A), ("b", B), ("w", W)):
        assert core.acquire(1.0, ticket, holder, timeout=5.0) == []
    s = core.stats()
    assert (s.waiting, s.idle, s.leased, s.creating) == (3, 2, 0, 0)
    out = pool.run(core.admission(2.0, EVERYONE, False), 2.0)
    assert granted(out) == ["a", "b", "w"]  # two idle, one made for the third
    assert len(of(out, Create)) == 1
    s = core.stats()
    assert (s.waiting, s.idle, s.leased, s.size) == (0, 0, 3, 3)
    pool.check_bounds()


def test_a_paused_holder_already_waiting_is_passed_over_by_a_release() -> None:
    pool = Pool(max_size=1)
    core = pool.core
    held = pool.lease(0.0, "held", B)
    assert core.acquire(1.0, "a", A, timeout=10.0) == []  # waits, not yet paused
    assert core.admission(2.0, A, True, "rss") == []
    out = core.release(3.0, held.id, B)
    assert not of(out, Grant)
    assert (core.idle, core.waiting) == (1, 1)
    out = core.admission(4.0, A, False)
    assert granted(out) == ["a"]
    assert of(out, Grant)[0].lease.resource == held.resource


# -- served ahead of it, in priority order -----------------------------------------------------


def test_other_holders_are_served_ahead_of_a_paused_one_in_priority_order() -> None:
    pool = Pool(max_size=1)
    core = pool.core
    held = pool.lease(0.0, "held", W)
    core.admission(0.0, A, True, "rss")
    core.acquire(1.0, "a-high", A, timeout=20.0, priority=9)  # best, but paused
    core.acquire(1.1, "b-low", B, timeout=20.0, priority=0)
    core.acquire(1.2, "b-mid", B, timeout=20.0, priority=5)
    core.acquire(1.3, "w-mid", W2, timeout=20.0, priority=5)
    order = []
    lease = held
    holder_of = {"b-low": B, "b-mid": B, "w-mid": W2}
    for t in (2.0, 3.0, 4.0):
        out = core.release(t, lease.id, Holder.parse(lease.holder))
        (grant,) = of(out, Grant)
        order.append(grant.ticket)
        lease = grant.lease
        assert lease.holder == str(holder_of[grant.ticket])
    assert order == ["b-mid", "w-mid", "b-low"]  # priority, then first come
    out = core.release(5.0, lease.id, B)
    assert not of(out, Grant)  # only the paused one is left: the resource stays idle
    assert (core.idle, core.waiting) == (1, 1)


def test_resume_serves_the_paused_waiters_in_priority_then_arrival_order() -> None:
    pool = Pool(max_size=3)
    core = pool.core
    pool.warm(2)
    core.admission(0.0, A, True, "rss")
    for ticket, priority in (("p0", 0), ("p5", 5), ("p2", 2), ("p5-later", 5)):
        assert core.acquire(1.0, ticket, A, timeout=20.0, priority=priority) == []
    out = pool.run(core.admission(2.0, A, False), 2.0)
    assert granted(out) == ["p5", "p5-later", "p2"]  # two idle, one made: p0 waits
    assert core.waiting == 1
    pool.check_bounds()


def test_resuming_one_holder_serves_only_its_waiters() -> None:
    pool = Pool(max_size=2)
    core = pool.core
    pool.warm(2)
    core.admission(0.0, A, True, "rss")
    core.admission(0.0, B, True, "leak")
    core.acquire(1.0, "a", A, timeout=20.0, priority=9)
    core.acquire(1.0, "b", B, timeout=20.0)
    assert granted(core.admission(2.0, B, False)) == ["b"]
    assert core.waiting == 1 and core.paused == {A: "rss"}


# -- the wait queue ----------------------------------------------------------------------------


def _queue(*waiters: tuple[str, Holder, int]) -> WaitQueue:
    q = WaitQueue()
    for i, (ticket, holder, priority) in enumerate(waiters):
        q.add(float(i), ticket, holder, priority, 100.0, None)
    return q


def _pop(q: WaitQueue, admits: Any = None) -> str | None:
    waiter: Waiter | None = q.pop_best(admits)
    return None if waiter is None else str(waiter.ticket)


def test_pop_best_passes_over_refused_waiters_who_keep_their_place_and_order() -> None:
    q = _queue(("a9", A, 9), ("b1", B, 1), ("a5", A, 5), ("b1-later", B, 1), ("a1", A, 1))
    not_a = lambda h: h != A  # noqa: E731
    assert _pop(q, not_a) == "b1"
    assert set(q.queued) == {"a9", "a5", "b1-later", "a1"}
    assert _pop(q, not_a) == "b1-later"
    assert _pop(q, not_a) is None  # only A's waiters are left
    assert set(q.queued) == {"a9", "a5", "a1"}  # passed over: still queued
    assert q.waiting == 3
    q.add(9.0, "b9", B, 9, 100.0, None)  # arrives after the others, ties with a9
    assert [_pop(q) for _ in range(4)] == ["a9", "b9", "a5", "a1"]
    assert _pop(q) is None and q.queued == {}


def test_pop_best_skips_cancelled_waiters_and_admits_none_takes_anyone() -> None:
    q = _queue(("a", A, 3), ("b", B, 2), ("c", B, 1))
    q.cancel("b")
    assert _pop(q, lambda h: h == B) == "c"
    assert _pop(q, lambda h: False) is None
    assert _pop(q) == "a"
    assert _pop(q) is None


def test_passed_over_waiters_still_time_out_at_their_deadline() -> None:
    q = _queue(("a", A, 3), ("b", B, 2))
    assert _pop(q, lambda h: h == B) == "b"
    assert [w.ticket for w in q.expire(100.0)] == ["a"]
    assert q.queued == {} and _pop(q) is None


# -- timing out --------------------------------------------------------------------------------


def test_a_paused_waiter_times_out_saying_admission_is_paused_and_why() -> None:
    pool = Pool(max_size=2)
    core = pool.core
    pool.warm(1)
    core.admission(0.0, A, True, "rss 91% of 2 GiB")
    core.acquire(1.0, "a", A, timeout=2.0)
    assert core.next_deadline() == 3.0
    assert core.tick(2.9) == []
    out = core.tick(3.0)
    (fail,) = of(out, Fail)
    assert fail.ticket == "a"
    assert isinstance(fail.error, AcquireTimeout)
    text = str(fail.error)
    assert f"{PAUSED_TEXT}: rss 91% of 2 GiB" in text
    assert "within 2s" in text
    s = core.stats()
    assert (s.timeouts, s.waiting, s.idle) == (1, 0, 1)


def test_the_timeout_text_names_the_everyone_pause_or_says_paused() -> None:
    pool = Pool(max_size=1)
    core = pool.core
    held = pool.lease(0.0, "held", B)
    core.admission(0.0, EVERYONE, True, "machine at 93%")
    core.acquire(1.0, "a", A, timeout=1.0)
    (fail,) = of(core.tick(2.0), Fail)
    assert f"{PAUSED_TEXT}: machine at 93%" in str(fail.error)
    core.admission(2.0, EVERYONE, False)
    core.admission(2.0, A, True)  # no why
    core.acquire(2.0, "a2", A, timeout=1.0)
    (fail,) = of(core.tick(3.0), Fail)
    assert f"{PAUSED_TEXT}: paused" in str(fail.error)
    core.release(3.0, held.id, B)


def test_an_unpaused_waiter_times_out_without_the_admission_text() -> None:
    pool = Pool(max_size=1)
    core = pool.core
    pool.lease(0.0, "held", B)
    core.admission(0.0, W, True, "someone else")
    core.acquire(1.0, "a", A, timeout=1.0)
    (fail,) = of(core.tick(2.0), Fail)
    assert isinstance(fail.error, AcquireTimeout)
    assert "admission" not in str(fail.error)


def test_a_waiter_resumed_before_its_deadline_is_served_not_timed_out() -> None:
    pool = Pool(max_size=1)
    core = pool.core
    pool.warm(1)
    core.admission(0.0, A, True, "rss")
    core.acquire(1.0, "a", A, timeout=2.0)
    assert granted(core.admission(2.5, A, False)) == ["a"]
    assert core.tick(10.0) == []
    assert core.stats().timeouts == 0


# -- leases already out ------------------------------------------------------------------------


def test_leases_already_granted_stay_valid_and_release_and_renew_work() -> None:
    pool = Pool(max_size=2)
    core = pool.core
    first = pool.lease(0.0, "first", A)
    second = pool.lease(0.0, "second", A)
    core.admission(1.0, A, True, "rss")
    assert {lz.id for lz in core.leases()} == {first.id, second.id}
    renewed = core.renew(1.0, first.id, A, 30.0)
    assert renewed.expires_at == 31.0
    out = core.release(2.0, first.id, A)
    assert not of(out, Grant) and not of(out, Destroy)
    out = core.release(2.0, second.id, A, broken=True)
    assert of(out, Destroy)
    s = core.stats()
    assert (s.leased, s.idle, s.released, s.broken) == (0, 1, 2, 1)


# -- demand and recall -------------------------------------------------------------------------


def test_a_paused_waiter_makes_no_demand_on_an_empty_pool() -> None:
    pool = Pool(max_size=2, min_size=0)
    core = pool.core
    assert core.size == 0
    core.admission(0.0, A, True, "rss")
    out = core.acquire(1.0, "a", A, timeout=5.0)
    assert out == []  # no Create for it
    assert core.creating == 0 and core.next_deadline() == 6.0
    assert core.tick(2.0) == []  # and none later
    # Resuming it makes one.
    out = core.admission(3.0, A, False)
    assert out == [Create()]
    out = core.created(3.0, "r")
    assert granted(out) == ["a"]


def test_only_the_admitted_waiters_count_as_demand() -> None:
    pool = Pool(max_size=3)
    core = pool.core
    core.admission(0.0, A, True, "rss")
    assert core.acquire(1.0, "a1", A, timeout=5.0) == []
    assert core.acquire(1.0, "a2", A, timeout=5.0) == []
    assert core.acquire(1.0, "b", B, timeout=5.0) == [Create()]
    assert core.creating == 1
    out = core.created(1.0, "r0")
    assert granted(out) == ["b"] and not of(out, Create)
    pool.check_bounds()


def test_pausing_a_waiting_holder_stops_creations_for_it_that_were_not_started() -> None:
    pool = Pool(max_size=3)
    core = pool.core
    core.admission(0.0, EVERYONE, True, "machine")
    for ticket in ("a", "b", "c"):
        core.acquire(1.0, ticket, A, timeout=5.0)
    assert core.creating == 0
    out = core.admission(2.0, EVERYONE, False)
    assert out == [Create()] * 3
    core.admission(2.0, A, True, "rss")
    out = core.created(2.1, "r0")
    assert not of(out, Grant) and not of(out, Create)  # made, idle: A may not have it
    assert (core.idle, core.creating, core.waiting) == (1, 2, 3)
    pool.check_bounds()


def test_paused_waiters_do_not_make_the_pool_ask_for_leases_back() -> None:
    pool = Pool(max_size=1)
    core = pool.core
    lease = pool.lease(0.0, "w", W)  # a worker holds the only resource
    core.admission(0.0, A, True, "rss")
    out = core.acquire(1.0, "a", A, timeout=10.0)
    assert out == [] and not core.starved
    assert core.tick(1.0 + 2 * RECALL_INTERVAL) == []
    # An admitted waiter does starve the pool: the worker is asked at once.
    assert core.acquire(2.0, "b", B, timeout=10.0) == [AskBack((W,))]
    assert core.starved
    core.cancel(2.01, "b")
    assert not core.starved
    # Resuming A: its waiter now starves the pool, and the worker is asked again.
    assert core.admission(3.0, A, False) == [AskBack((W,))]
    out = core.release(3.1, lease.id, W)
    assert granted(out) == ["a"] and not of(out, AskBack)


def test_pausing_the_only_starving_waiter_stops_the_recall() -> None:
    pool = Pool(max_size=1)
    core = pool.core
    pool.lease(0.0, "w", W)
    assert core.acquire(1.0, "a", A, timeout=10.0) == [AskBack((W,))]
    assert core.next_deadline() == 1.0 + RECALL_INTERVAL
    assert core.admission(1.01, A, True, "rss") == []
    assert not core.starved
    assert core.next_deadline() == 11.0  # only the waiter's own deadline
    assert of(core.tick(1.0 + 3 * RECALL_INTERVAL), AskBack) == []


# -- holders that are gone ---------------------------------------------------------------------


def test_reclaim_holder_forgets_the_pause_and_fails_its_waiters() -> None:
    pool = Pool(max_size=2)
    core = pool.core
    lease = pool.lease(0.0, "held", A)
    core.admission(0.0, A, True, "rss")
    core.admission(0.0, B, True, "leak")
    core.acquire(1.0, "a", A, timeout=10.0)
    out = core.reclaim_holder(2.0, A)
    (fail,) = of(out, Fail)
    assert fail.ticket == "a" and isinstance(fail.error, LessorError)
    assert [d.lease.id for d in of(out, Reclaimed)] == [lease.id]
    assert core.paused == {B: "leak"}  # only A's pause is forgotten
    pool.warm(1, 3.0)
    assert granted(core.acquire(3.0, "a-again", A, timeout=1.0)) == ["a-again"]


def test_reclaiming_the_last_paused_holder_leaves_no_pause_behind() -> None:
    pool = Pool(max_size=1)
    core = pool.core
    core.admission(0.0, A, True, "rss")
    core.reclaim_holder(1.0, A)
    assert core.paused == {}
    assert all(core.admits(h) for h in (A, B, W))
    assert core.admission(1.0, A, False) == []


# -- bounds ------------------------------------------------------------------------------------


def test_size_creating_and_orphans_stay_within_max_size_through_pauses() -> None:
    orphan = Lease("p/e1/7", "p", "old", str(W), 0.0, None, False)  # a past incarnation's
    pool = Pool(max_size=2, orphans=(orphan,))
    core = pool.core
    assert core.orphans == 1
    core.admission(0.0, A, True, "rss")
    for i in range(3):
        assert core.acquire(0.0, f"a{i}", A, timeout=10.0) == []
        pool.check_bounds()
    assert core.acquire(0.0, "b", B, timeout=10.0) == [Create()]  # room for one only
    pool.check_bounds()
    # No room left for A's waiters: starved, the orphan's worker is asked to give back.
    assert core.admission(0.5, A, False) == [AskBack((W,))]
    assert (core.size, core.creating, core.orphans) == (0, 1, 1)
    out = core.release(0.6, orphan.id, W)  # the orphan goes: room for one more
    assert out == [Destroy("old", "released after a restart"), Create()]
    pool.check_bounds()
    out = core.created(1.0, "x") + core.created(1.0, "y")
    assert granted(out) == ["a0", "a1"]  # first come among equals, now A is admitted
    pool.check_bounds()
    assert (core.leased, core.waiting, core.orphans) == (2, 2, 0)


# -- bugs these found, fixed since ----------------------------------------------------


def test_paused_waiters_do_not_make_an_admitted_holder_exhaust_max_waiting() -> None:
    pool = Pool(max_size=1, min_size=1, max_waiting=1)
    core = pool.core
    assert core.idle == 1
    core.admission(0.0, A, True, "rss")
    core.acquire(1.0, "a", A, timeout=10.0)  # queued: paused
    out = core.acquire(1.0, "b", B, timeout=10.0)  # the idle resource is B's to take
    assert granted(out) == ["b"]


def test_a_holder_paused_during_its_check_is_not_granted() -> None:
    pool = Pool(max_size=1, min_size=1, has_check=True)
    core = pool.core
    (check,) = of(core.acquire(1.0, "a", A, timeout=10.0), Check)
    core.admission(1.5, A, True, "rss")
    out = core.checked(2.0, check.slot, True)
    assert not of(out, Grant), f"granted {A}, paused since 1.5: {out}"


# == the state machine =========================================================================

HOLDERS = (W, A, W2, B)
BY_TEXT = {str(h): h for h in HOLDERS}
WHYS = ("rss high", "leak", "")


@dataclass
class Waiting:
    ticket: int
    holder: Holder
    priority: int
    seq: int
    deadline: float

    @property
    def rank(self) -> tuple[int, int]:
        return (-self.priority, self.seq)


class AdmissionMachine(RuleBasedStateMachine):
    """The owner of one PoolCore (no check, creations that succeed) with its own books.

    Checked on every decision: no Grant to a holder paused when it is made, and every
    Grant to the best admitted waiter; a Create only for admitted waiters; AskBack only
    while an admitted waiter waits; a timeout says admission is paused iff it is. After
    every step: no admitted waiter next to an idle resource, creations under way for
    the admitted waiters there is room for, and the pool within max_size.
    """

    CORE: type[PoolCore] = PoolCore

    def __init__(self) -> None:
        super().__init__()
        self.core: PoolCore | None = None
        self.now = 0.0
        self.holders: tuple[Holder, ...] = ()
        self.paused: dict[str, str] = {}
        self.queued: dict[int, Waiting] = {}
        self.held: dict[str, Lease] = {}
        self.pending_creates = 0
        self._tickets = itertools.count()
        self._seqs = itertools.count()
        self._names = itertools.count()

    @initialize(n_holders=st.integers(2, 4), max_size=st.integers(1, 3), seed=st.integers(0, 99))
    def setup(self, n_holders: int, max_size: int, seed: int) -> None:
        self.holders = HOLDERS[:n_holders]
        spec = PoolSpec(
            "p",
            TokenFactory(),
            max_size=max_size,
            max_idle=None,
            max_lifetime=None,
            acquire_timeout=5.0,
        )
        self.core = self.CORE(spec, epoch="e1", rng=random.Random(seed))
        assert self.core.start(self.now) == []

    @property
    def pool(self) -> PoolCore:
        assert self.core is not None
        return self.core

    # -- the model ---------------------------------------------------------------------

    def admitted(self, holder: str) -> bool:
        return EVERYONE not in self.paused and holder not in self.paused

    def admitted_waiting(self) -> list[Waiting]:
        return [w for w in self.queued.values() if self.admitted(w.holder)]

    def apply(self, out: list[Decision]) -> list[Fail]:
        fails: list[Fail] = []
        for d in out:
            if isinstance(d, Grant):
                self.on_grant(d)
            elif isinstance(d, Create):
                self.pending_creates += 1
                admitted = len(self.admitted_waiting())
                assert self.pending_creates <= admitted, (
                    f"Create for paused waiters: {self.pending_creates} being made, "
                    f"{admitted} admitted waiting (paused {self.paused})"
                )
            elif isinstance(d, Fail):
                ticket = d.ticket
                assert isinstance(ticket, int) and ticket in self.queued, f"Fail for {ticket!r}"
                fails.append(d)
                del self.queued[ticket]
            elif isinstance(d, AskBack):
                assert self.admitted_waiting(), (
                    f"AskBack {d.holders} while only paused holders wait (paused {self.paused})"
                )
            elif isinstance(d, Reclaimed):
                assert self.held.pop(d.lease.id) == d.lease
            elif isinstance(d, Destroy):
                pass
            else:  # pragma: no cover
                raise AssertionError(f"unexpected decision {d!r}")
        return fails

    def on_grant(self, d: Grant) -> None:
        ticket = d.ticket
        assert isinstance(ticket, int) and ticket in self.queued, f"Grant for {ticket!r}"
        waiter = self.queued[ticket]
        holder = BY_TEXT[d.lease.holder]
        assert holder == waiter.holder
        assert self.admitted(holder), (
            f"Grant to paused holder {holder} (paused {self.paused}) at {self.now}"
        )
        best = min(self.admitted_waiting(), key=lambda w: w.rank)
        assert best is waiter, f"granted {ticket}, not the best admitted waiter {best.ticket}"
        del self.queued[ticket]
        assert d.lease.id not in self.held
        self.held[d.lease.id] = d.lease

    # -- rules -------------------------------------------------------------------------

    @rule(
        data=st.data(),
        priority=st.sampled_from([0, 0, 1, 5]),
        timeout=st.sampled_from([1.0, 3.0, 10.0]),
    )
    def acquire(self, data: st.DataObject, priority: int, timeout: float) -> None:
        holder = data.draw(st.sampled_from(self.holders), label="holder")
        ticket = next(self._tickets)
        self.queued[ticket] = Waiting(
            ticket, holder, priority, next(self._seqs), self.now + timeout
        )
        out = self.pool.acquire(self.now, ticket, holder, timeout, priority)
        assert not self.apply(out)

    @precondition(lambda self: self.held)
    @rule(data=st.data(), broken=st.sampled_from([False, False, True]))
    def release(self, data: st.DataObject, broken: bool) -> None:
        lease = data.draw(st.sampled_from(sorted(self.held.values(), key=lambda lz: lz.id)))
        del self.held[lease.id]
        assert not self.apply(self.pool.release(self.now, lease.id, BY_TEXT[lease.holder], broken))

    @rule(data=st.data(), why=st.sampled_from(WHYS))
    def pause(self, data: st.DataObject, why: str) -> None:
        holder = data.draw(st.sampled_from([*self.holders, EVERYONE]), label="paused")
        self.paused[holder] = why or "paused"
        assert not self.apply(self.pool.admission(self.now, holder, True, why))

    @precondition(lambda self: self.paused)
    @rule(data=st.data())
    def resume(self, data: st.DataObject) -> None:
        holder = data.draw(st.sampled_from(sorted(self.paused)), label="resumed")
        del self.paused[holder]
        assert not self.apply(self.pool.admission(self.now, holder, False))

    @precondition(lambda self: self.pending_creates)
    @rule()
    def finish_create(self) -> None:
        self.pending_creates -= 1
        assert not self.apply(self.pool.created(self.now, f"r{next(self._names)}"))

    @precondition(lambda self: self.queued)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        ticket = data.draw(st.sampled_from(sorted(self.queued)), label="cancelled")
        del self.queued[ticket]
        assert not self.apply(self.pool.cancel(self.now, ticket))

    @rule(data=st.data())
    def holder_gone(self, data: st.DataObject) -> None:
        holder = data.draw(st.sampled_from(self.holders), label="gone")
        waiting = {t for t, w in self.queued.items() if w.holder == holder}
        self.paused.pop(holder, None)
        fails = self.apply(self.pool.reclaim_holder(self.now, holder))
        assert {f.ticket for f in fails} == waiting
        assert not any(lz.holder == holder for lz in self.held.values())

    @rule(dt=st.sampled_from([0.0, 0.5, 1.0, 2.0, 6.0]), settle=st.booleans())
    def tick(self, dt: float, settle: bool) -> None:
        """Move the clock and tick; with ``settle``, finish the creations first."""
        while settle and self.pending_creates:
            self.finish_create()
        self.now += dt
        due = {t for t, w in self.queued.items() if w.deadline <= self.now}
        paused_then = {t: not self.admitted(self.queued[t].holder) for t in due}
        fails = self.apply(self.pool.tick(self.now))
        assert {f.ticket for f in fails} == due, "the waiters past their deadline time out"
        for fail in fails:
            assert isinstance(fail.error, AcquireTimeout), fail
            says = PAUSED_TEXT in str(fail.error)
            assert says == paused_then[fail.ticket], (
                f"timeout text {'says' if says else 'does not say'} admission is paused: "
                f"{fail.error}"
            )

    # -- invariants --------------------------------------------------------------------

    @invariant()
    def books_agree(self) -> None:
        if self.core is None:
            return
        s, max_size = self.pool.stats(), self.pool.spec.max_size
        assert s.idle + s.checking + s.leased == s.size
        assert s.size + s.creating + self.pool.orphans <= max_size, "over max_size"
        assert s.leased <= max_size
        assert s.leased == len(self.held)
        assert s.waiting == len(self.queued)
        assert s.creating == self.pending_creates
        assert self.pool.paused == self.paused

    @invariant()
    def no_admitted_waiter_starves_next_to_an_idle_resource(self) -> None:
        if self.core is None:
            return
        admitted = self.admitted_waiting()
        if admitted:
            assert self.pool.idle == 0, (
                f"{[w.ticket for w in admitted]} of admitted holders wait next to "
                f"{self.pool.idle} idle resource(s) (paused {self.paused})"
            )

    @invariant()
    def admitted_waiters_have_creations_under_way(self) -> None:
        if self.core is None:
            return
        s = self.pool.stats()
        wanted = min(len(self.admitted_waiting()), self.pool.spec.max_size - s.size)
        assert s.creating >= wanted, (
            f"waiting for creations that were never planned: {s.creating} being made, "
            f"{wanted} wanted"
        )


FAST = settings(
    max_examples=80,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_admission_state_machine() -> None:
    run_state_machine_as_test(AdmissionMachine, settings=FAST)


# -- the machine catches broken cores ----------------------------------------------------------


class IgnoresThePauseOnTheFastPath(PoolCore):
    """Grants an idle resource at once to any holder, paused or not."""

    def acquire(
        self,
        now: float,
        ticket: object,
        holder: Holder,
        timeout: float | None = None,
        priority: int = 0,
        ttl: float | None = None,
    ) -> list[Decision]:
        if self._queue.queued or not self._slots.idle:
            return super().acquire(now, ticket, holder, timeout, priority, ttl)
        pausing, self._pausing = self._pausing, False
        try:
            return super().acquire(now, ticket, holder, timeout, priority, ttl)
        finally:
            self._pausing = pausing


class DoesNotSettleOnResume(PoolCore):
    """Lifts a pause without serving the waiters it held back."""

    def admission(self, now: float, holder: str, paused: bool, why: str = "") -> list[Decision]:
        if paused:
            return super().admission(now, holder, paused, why)
        self._paused.pop(holder, None)
        self._pausing = bool(self._paused)
        return []


class DispatchesToPausedHolders(PoolCore):
    """Hands an idle resource to the best queued waiter, paused or not (demand is right)."""

    def _dispatch(self, now: float, out: list[Decision]) -> None:
        queue, slots = self._queue, self._slots
        while queue.queued and slots.idle:
            waiter = queue.pop_best()
            slot = slots.take_idle(now, out)
            if waiter is None or slot is None:
                break
            self._grant_waiter(now, waiter, slot, out)
        self._plan_creates(now, out)


class PausedWaitersAreDemand(PoolCore):
    """Counts every queued waiter as demand (creations, recall), paused ones too."""

    def _admitted_waiting(self) -> int:
        return len(self._queue.queued)


class _LosesPassedOver(WaitQueue):
    def pop_best(self, admits: Any = None) -> Waiter | None:
        order = self._order
        while order:
            waiter = heapq.heappop(order)[2]
            if waiter.state != QUEUED:
                continue
            if admits is not None and not admits(waiter.holder):
                continue  # passed over, and dropped from the order: never served again
            del self.queued[waiter.ticket]
            waiter.state = DONE
            return waiter
        return None


class ForgetsWhereWaitersPassedOverStood(PoolCore):
    """Its wait queue drops the waiters it passes over from the serving order."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._queue = _LosesPassedOver()


class TimeoutSaysNothingOfThePause(PoolCore):
    """A paused waiter times out like any other: no word of admission."""

    def _timeout_error(self, waiter: Waiter) -> AcquireTimeout:
        paused, pausing = self._paused, self._pausing
        self._paused, self._pausing = {}, False
        try:
            return super()._timeout_error(waiter)
        finally:
            self._paused, self._pausing = paused, pausing


MUTANTS: dict[type[PoolCore], str] = {  # the mutant: what the machine says (a regex)
    IgnoresThePauseOnTheFastPath: "Grant to paused holder",
    DoesNotSettleOnResume: "wait next to|never planned",
    DispatchesToPausedHolders: "Grant to paused holder",
    PausedWaitersAreDemand: "Create for paused waiters|AskBack .* only paused",
    ForgetsWhereWaitersPassedOverStood: "wait next to|never planned|Grant for",
    TimeoutSaysNothingOfThePause: "does not say admission is paused",
}


@pytest.mark.parametrize("mutant", list(MUTANTS), ids=[m.__name__ for m in MUTANTS])
def test_the_state_machine_catches_a_mutant(mutant: type[PoolCore]) -> None:
    print(mutant.__name__, "->", assert_catches(AdmissionMachine, mutant, MUTANTS[mutant]))


def test_the_state_machine_passes_the_real_core_with_the_mutant_settings() -> None:
    """The mutant runs above fail because of the mutants, not the settings."""
    assert_passes(AdmissionMachine, max_examples=100)
