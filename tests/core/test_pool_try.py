"""Try-acquire (``timeout=0``) in the pool core: a lease now, or PoolExhausted saying why.

A try never waits behind other holders. It is granted an idle resource, or one on
its way that no admitted waiter ahead needs (being reset, being made), or one made
for it; it waits only for that, bounded by ``acquire_timeout``. It is refused at
once when only a release could serve it, or when its holder is paused. The
property test builds random pools and checks both halves against what happens
when nobody releases anything.
"""

from __future__ import annotations

import copy
import random

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lessor.core.pool import Check, Create, Decision, Fail, Grant, PoolCore, Reset
from lessor.errors import AcquireTimeout, BreakerOpen, PoolClosed, PoolExhausted, ShuttingDown
from lessor.factory import TokenFactory
from lessor.holder import Holder
from lessor.protocol.messages import PRIORITY_MIN, Lease
from lessor.specs import PoolSpec
from tests.support.pool_core import Pool, of

A, B, W = (Holder.thread(1, n, 1) for n in (1, 2, 3))


def test_an_idle_resource_is_granted() -> None:
    p = Pool(max_size=1)
    p.core.release(1.0, p.lease(0.0, "first", A).id, A)
    (grant,) = of(p.core.acquire(2.0, "try", B, timeout=0), Grant)
    assert grant.ticket == "try" and grant.lease.holder == B


def test_room_to_make_one_waits_for_that_creation_only() -> None:
    p = Pool(max_size=2, acquire_timeout=7.0)
    out = p.core.acquire(0.0, "try", A, timeout=0)
    assert out == [Create()]  # queued, for the resource being made for it
    assert p.core.next_deadline() == 7.0  # bounded by the pool's acquire_timeout
    (grant,) = of(p.core.created(0.5, "r"), Grant)
    assert grant.ticket == "try"


def test_a_full_pool_refuses_at_once_saying_why() -> None:
    p = Pool(max_size=2)
    p.lease(0.0, "a", A)
    p.lease(0.0, "b", A)
    with pytest.raises(PoolExhausted, match=r"nothing free now \(timeout=0\): size 2/2, 2 leased"):
        p.core.acquire(1.0, "try", B, timeout=0)
    stats = p.core.stats()
    assert (stats.waiting, stats.rejected, stats.timeouts) == (0, 1, 0)  # nothing queued
    assert p.core.next_deadline() is None


def test_it_never_queues_behind_a_waiter() -> None:
    p = Pool(max_size=1)
    held = p.lease(0.0, "a", A)
    assert p.core.acquire(0.0, "waiter", B, timeout=5.0) == []
    with pytest.raises(PoolExhausted, match="1 waiting"):
        p.core.acquire(0.1, "try", W, timeout=0, priority=99)  # priority jumps no queue
    (grant,) = of(p.core.release(1.0, held.id, A), Grant)
    assert grant.ticket == "waiter"


def test_room_beyond_what_waiters_need_is_enough() -> None:
    p = Pool(max_size=3)
    p.lease(0.0, "a", A)
    p.core.acquire(0.0, "waiter", B, timeout=5.0)  # a creation is on its way for it
    out = p.core.acquire(0.0, "try", W, timeout=0)  # one more can be made
    assert of(out, Create) == [Create()]


def test_a_resource_being_reset_serves_it() -> None:
    """A released resource in its reset is no other holder's: the try waits for it."""
    p = Pool(max_size=1, has_reset=True)
    held = p.lease(0.0, "a", A)
    (reset,) = of(p.core.release(1.0, held.id, A), Reset)
    assert of(p.core.acquire(1.0, "try", B, timeout=0), Grant) == []
    (grant,) = of(p.core.reset_done(1.1, reset.slot, True), Grant)
    assert grant.ticket == "try"


def test_a_pool_that_checks_on_borrow_checks_the_idle_one_first() -> None:
    p = Pool(max_size=1, has_check=True)
    out = p.core.acquire(0.0, "a", A)
    out += p.core.created(0.0, "r0")
    (check,) = of(out, Check)
    held = of(p.core.checked(0.0, check.slot, True), Grant)[0].lease
    p.core.release(1.0, held.id, A)
    (check,) = of(p.core.acquire(2.0, "try", B, timeout=0), Check)
    (grant,) = of(p.core.checked(2.1, check.slot, True), Grant)
    assert grant.ticket == "try"


def test_a_failing_factory_times_it_out_with_the_cause() -> None:
    p = Pool(max_size=1, acquire_timeout=1.0)
    core = p.core
    assert core.acquire(0.0, "try", A, timeout=0) == [Create()]
    error = ConnectionRefusedError("no")
    core.create_failed(0.1, error)
    (fail,) = of(core.tick(1.0), Fail)
    assert isinstance(fail.error, AcquireTimeout) and fail.error.__cause__ is error


def test_a_paused_holder_is_refused_naming_the_memory_manager() -> None:
    p = Pool(max_size=2)
    p.core.release(1.0, p.lease(0.0, "a", A).id, A)  # one idle
    p.core.admission(1.0, B, True, "rss 95% of its limit")
    with pytest.raises(PoolExhausted, match="paused by the memory manager: rss 95%"):
        p.core.acquire(2.0, "try", B, timeout=0)
    assert of(p.core.acquire(2.0, "other", A, timeout=0), Grant)  # others are served


def test_closed_draining_and_gated_pools_refuse_it_as_any_acquire() -> None:
    p = Pool(max_size=1)
    p.core.gate(0.0, "db", "open", 5.0)
    with pytest.raises(BreakerOpen):
        p.core.acquire(0.0, "t1", A, timeout=0)
    p.core.gate(0.0, "db", "closed", None)
    p.core.stop_admitting()
    with pytest.raises(ShuttingDown):
        p.core.acquire(0.0, "t2", A, timeout=0)
    p.core.close(0.0)
    with pytest.raises(PoolClosed):
        p.core.acquire(0.0, "t3", A, timeout=0)


# -- the rule over random pools --------------------------------------------------------


class Owner:
    """Carries out a core's decisions, but only as far as asked: creations and resets
    may be left under way, to build a pool with work in flight."""

    def __init__(self, core: PoolCore) -> None:
        self.core = core
        self.creates = 0
        self.resets: list[int] = []
        self.checks: list[int] = []
        self.grants: dict[object, Lease] = {}
        self.n = 0

    def see(self, out: list[Decision]) -> None:
        for d in out:
            if isinstance(d, Create):
                self.creates += 1
            elif isinstance(d, Reset):
                self.resets.append(d.slot)
            elif isinstance(d, Check):
                self.checks.append(d.slot)
            elif isinstance(d, Grant):
                self.grants[d.ticket] = d.lease

    def finish_one(self, now: float) -> bool:
        """Carry out one piece of pending work (all succeed); False if there is none."""
        core = self.core
        if self.creates:
            self.creates -= 1
            self.n += 1
            self.see(core.created(now, f"r{self.n}"))
        elif self.resets:
            self.see(core.reset_done(now, self.resets.pop(0), True))
        elif self.checks:
            self.see(core.checked(now, self.checks.pop(0), True))
        else:
            return False
        return True

    def finish_all(self, now: float) -> None:
        while self.finish_one(now):
            pass


STEP = st.tuples(st.sampled_from(["acquire", "release", "finish", "pause"]), st.integers(0, 9))


@settings(max_examples=400, deadline=None)
@example(  # a check under way for a waiter paused meanwhile: its resource comes back
    max_size=3, min_size=0, has_reset=False, has_check=True, priority=0,
    steps=[("acquire", 0), ("acquire", 0), ("acquire", 2), ("finish", 0), ("pause", 2)],
)  # fmt: skip
@given(
    max_size=st.integers(1, 4),
    min_size=st.integers(0, 2),
    has_reset=st.booleans(),
    has_check=st.booleans(),
    steps=st.lists(STEP, max_size=14),
    priority=st.integers(-5, 5),
)
def test_a_try_is_refused_exactly_when_only_a_release_could_serve_it(
    max_size: int,
    min_size: int,
    has_reset: bool,
    has_check: bool,
    steps: list[tuple[str, int]],
    priority: int,
) -> None:
    spec = PoolSpec("p", TokenFactory(), max_size=max_size, min_size=min(min_size, max_size),
                    max_idle=None, max_lifetime=None, acquire_timeout=100.0)  # fmt: skip
    core = PoolCore(spec, epoch="e", has_reset=has_reset, has_check=has_check,
                    rng=random.Random(5))  # fmt: skip
    owner = Owner(core)
    owner.see(core.start(0.0))
    holders = [Holder.thread(2, n, 1) for n in range(3)]
    for i, (step, k) in enumerate(steps):
        if step == "acquire":
            owner.see(core.acquire(0.0, f"t{i}", holders[k % 3], timeout=50.0, priority=k - 5))
        elif step == "release" and owner.grants:
            ticket = sorted(owner.grants, key=str)[k % len(owner.grants)]
            lease = owner.grants.pop(ticket)
            owner.see(core.release(0.0, lease.id, lease.holder, broken=k % 4 == 0))
        elif step == "finish":
            owner.finish_one(0.0)
        elif step == "pause":  # a holder's admission, or everyone's ("")
            who = [*holders, ""][k % 4]
            owner.see(core.admission(0.0, who, k % 2 == 0, "test"))
    trier = Holder.thread(9, 9, 9)
    # the same pool (sharing its frozen spec), where the try waits last in line instead
    model = copy.deepcopy(owner, memo={id(spec): spec})
    try:
        owner.see(core.acquire(0.0, "try", trier, timeout=0, priority=priority))
    except PoolExhausted:
        refused = True
    else:
        refused = False
    model.see(model.core.acquire(0.0, "try", trier, timeout=50.0, priority=PRIORITY_MIN))
    model.finish_all(0.0)  # no release: only what is idle, resetting or made serves anyone
    assert refused == ("try" not in model.grants), (
        "refused, yet it would be served without a release"
        if refused
        else "accepted, yet only a release could serve it last in line"
    )
    if not refused:  # and where it did queue, it is served as soon as the work is done
        owner.finish_all(0.0)
        assert "try" in owner.grants
        assert core.stats().waiting == model.core.stats().waiting


# -- the property notices a broken rule ------------------------------------------------


def _forgets_waiters_ahead(pool: PoolCore, holder: Holder) -> None:
    """Mutant: anything idle, on its way or makeable serves it, whoever waits first."""
    slots = pool._slots
    resetting = len(slots.checking) - pool._queue.serving
    room = pool.spec.max_size - len(slots) - slots.creating - pool._ledger.orphans
    if not pool.admits(holder) or len(slots.idle) + resetting + slots.creating + room <= 0:
        raise PoolExhausted("mutant")


def _forgets_resets(pool: PoolCore, holder: Holder) -> None:
    """Mutant: a resource being reset after its release is taken for another's."""
    slots = pool._slots
    room = pool.spec.max_size - len(slots) - slots.creating - pool._ledger.orphans
    on_the_way = len(slots.idle) + slots.creating + max(room, 0)
    if not pool.admits(holder) or on_the_way <= pool._admitted_waiting():
        raise PoolExhausted("mutant")


def _queues_anyway(pool: PoolCore, holder: Holder) -> None:
    """Mutant: a try is an Acquire like any other (it waits for a release)."""


@pytest.mark.parametrize(
    ("mutant", "pattern"),
    [
        (_forgets_waiters_ahead, "accepted, yet only a release"),
        (_forgets_resets, "refused, yet it would be served"),
        (_queues_anyway, "accepted, yet only a release"),
    ],
)
def test_the_property_catches_a_broken_rule(
    monkeypatch: pytest.MonkeyPatch, mutant: object, pattern: str
) -> None:
    from lessor.core.pool import core as core_module

    monkeypatch.setattr(core_module, "refuse_unless_free", mutant)
    with pytest.raises(AssertionError, match=pattern):
        test_a_try_is_refused_exactly_when_only_a_release_could_serve_it()
