"""PoolCore, the pure pool state machine, driven by hand with a fake clock.

The test plays the owner: it carries out ``Create``/``Check``/``Reset`` decisions by
feeding their outcome back (``created``, ``create_failed``, ``checked``,
``reset_done``) and passes ``now`` explicitly, so every timing is exact.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from lessor.core.pool import (
    AskBack,
    Check,
    Create,
    Decision,
    Destroy,
    Expired,
    Fail,
    Grant,
    PoolCore,
    Reclaimed,
    Reset,
)
from lessor.errors import (
    AcquireTimeout,
    DoubleRelease,
    ExpiredLease,
    ForeignLease,
    PoolClosed,
    PoolExhausted,
    ShuttingDown,
    StaleLease,
    UnknownLease,
)
from lessor.factory import TokenFactory
from lessor.protocol.messages import Lease
from lessor.specs import PoolSpec

# -- helpers ---------------------------------------------------------------------------


def make_spec(**overrides: Any) -> PoolSpec:
    """A spec with no idle/lifetime eviction unless a test asks for it."""
    kw: dict[str, Any] = {
        "name": "p",
        "factory": TokenFactory(),
        "max_size": 2,
        "max_idle": None,
        "max_lifetime": None,
        "lifetime_jitter": 0.0,
        "acquire_timeout": 30.0,
    }
    kw.update(overrides)
    return PoolSpec(**kw)


def make_core(
    *,
    epoch: str = "e1",
    has_check: bool = False,
    has_reset: bool = False,
    reusable: bool = False,
    past_epochs: frozenset[str] = frozenset(),
    **spec: Any,
) -> PoolCore:
    return PoolCore(
        make_spec(**spec),
        epoch=epoch,
        has_check=has_check,
        has_reset=has_reset,
        reusable=reusable,
        rng=random.Random(1234),
        past_epochs=past_epochs,
    )


def of(decisions: list[Decision], kind: type) -> list[Any]:
    return [d for d in decisions if isinstance(d, kind)]


def creates(decisions: list[Decision]) -> int:
    return len(of(decisions, Create))


def grant_of(decisions: list[Decision], ticket: object) -> Lease:
    found = [d.lease for d in of(decisions, Grant) if d.ticket == ticket]
    assert len(found) == 1, f"expected one Grant for {ticket!r} in {decisions}"
    return found[0]


class Owner:
    """The owner's side: creates come back as fresh resources r0, r1, ..."""

    def __init__(self, core: PoolCore) -> None:
        self.core = core
        self.pending = 0
        self._names = (f"r{i}" for i in itertools.count())

    def see(self, decisions: list[Decision]) -> list[Decision]:
        self.pending += creates(decisions)
        return decisions

    def create_one(self, now: float) -> tuple[Any, list[Decision]]:
        assert self.pending > 0, "no Create outstanding"
        self.pending -= 1
        resource = next(self._names)
        return resource, self.see(self.core.created(now, resource))

    def fail_one(self, now: float, exc: BaseException) -> list[Decision]:
        assert self.pending > 0, "no Create outstanding"
        self.pending -= 1
        return self.see(self.core.create_failed(now, exc))

    def create_all(self, now: float) -> list[Decision]:
        out: list[Decision] = []
        while self.pending:
            out += self.create_one(now)[1]
        return out

    def acquire(self, now: float, ticket: object, holder: str = "h", **kw: Any) -> list[Decision]:
        return self.see(self.core.acquire(now, ticket, holder, **kw))

    def lease(self, now: float, ticket: object, holder: str = "h", **kw: Any) -> Lease:
        """Acquire and, if it takes a Create, carry it out; the ticket must be granted."""
        out = self.acquire(now, ticket, holder, **kw)
        if not of(out, Grant):
            out += self.create_all(now)
        return grant_of(out, ticket)

    def release(self, now: float, lease: Lease, **kw: Any) -> list[Decision]:
        return self.see(self.core.release(now, lease.id, lease.holder, **kw))

    def tick(self, now: float) -> list[Decision]:
        return self.see(self.core.tick(now))


# -- granting and queueing -------------------------------------------------------------


def test_grants_up_to_max_size_then_queues_and_release_serves_waiter() -> None:
    core = make_core(max_size=2)
    owner = Owner(core)

    out = owner.acquire(0.0, "t1")
    assert out == [Create()]
    res, out = owner.create_one(0.0)
    l1 = grant_of(out, "t1")
    assert l1.resource == res and l1.holder == "h" and l1.expires_at is None

    l2 = owner.lease(0.0, "t2", holder="h2")
    assert l2.resource != l1.resource

    out = owner.acquire(1.0, "t3", holder="h3")
    assert out == [], "pool is full: no Grant and no Create beyond max_size"
    stats = core.stats()
    assert (stats.size, stats.leased, stats.waiting, stats.creating) == (2, 2, 1, 0)

    out = owner.release(2.0, l1)
    l3 = grant_of(out, "t3")
    assert l3.resource == l1.resource and l3.holder == "h3" and l3.granted_at == 2.0
    assert creates(out) == 0
    stats = core.stats()
    assert (stats.waiting, stats.leased, stats.acquired, stats.released) == (0, 2, 3, 1)
    assert stats.wait_ms_p99 == pytest.approx(1000.0)


def test_idle_resource_is_granted_at_once() -> None:
    core = make_core(max_size=1)
    owner = Owner(core)
    lease = owner.lease(0.0, "t1")
    owner.release(1.0, lease)
    assert core.stats().idle == 1
    out = owner.acquire(2.0, "t2")
    assert grant_of(out, "t2").resource == lease.resource
    assert creates(out) == 0


def test_a_grant_says_whether_others_were_waiting() -> None:
    """``contended`` tells a caching worker to give the lease back, not park it."""
    core = make_core(max_size=2, min_size=2)
    owner = Owner(core)
    owner.see(core.start(0.0))
    owner.create_all(0.0)
    free = grant_of(owner.acquire(1.0, "t1"), "t1")
    assert not free.contended  # idle and nobody waiting
    other = grant_of(owner.acquire(1.0, "t2", holder="h2"), "t2")
    assert not other.contended
    assert owner.acquire(2.0, "t3", holder="h3") == []
    assert owner.acquire(2.0, "t4", holder="h4") == []
    first = grant_of(owner.release(3.0, free), "t3")
    assert first.contended  # t4 still waits
    second = grant_of(owner.release(3.0, other), "t4")
    assert not second.contended  # it had queued, but nobody waits after it
    owner.release(4.0, first)
    owner.release(4.0, second)
    assert not grant_of(owner.acquire(5.0, "t5"), "t5").contended


def test_starved_only_when_a_waiter_needs_a_release() -> None:
    """Pools ask workers for parked leases only when no creation will serve the waiter."""
    core = make_core(max_size=2)
    owner = Owner(core)
    held = owner.lease(0.0, "t1")
    assert owner.acquire(1.0, "t2") == [Create()]
    assert core.exhausted and not core.starved  # t2 waits for the resource being made
    _, out = owner.create_one(1.0)
    other = grant_of(out, "t2")
    assert owner.acquire(2.0, "t3") == []
    assert core.starved  # full, and only a release can serve t3
    grant_of(owner.release(3.0, held), "t3")
    assert not core.starved
    owner.release(4.0, other)


def test_orphans_count_as_used_and_their_holders_are_asked_back() -> None:
    """A lease a crashed incarnation left (maybe parked in a worker) can be recalled."""
    orphan = Lease("old/1", "p", "r-old", "worker:w:1", 0.0, None)
    core = PoolCore(make_spec(max_size=2), epoch="e2", has_check=False, has_reset=False,
                    reusable=False, rng=random.Random(1), orphans=[orphan])  # fmt: skip
    owner = Owner(core)
    mine = owner.lease(0.0, "t1", holder="h1")
    # No room: the orphan uses it. Its holder, a worker, is asked for it; h1 is not.
    (ask,) = owner.acquire(1.0, "t2", holder="h2")
    assert ask == AskBack(("worker:w:1",))
    assert [(h.kind, h.id) for h in ask.holders] == [("worker", "w:1")]
    assert core.exhausted and core.starved
    assert set(core.holders()) == {"h1", "worker:w:1"}
    out = core.release(2.0, orphan.id, orphan.holder)
    assert of(out, Destroy) and creates(out) == 1  # the orphan's resource goes; t2's comes
    owner.see(out)
    assert not core.starved
    owner.release(3.0, mine)


def test_waiters_served_by_priority_then_fifo() -> None:
    core = make_core(max_size=1)
    owner = Owner(core)
    held = owner.lease(0.0, "first")
    order = [("a", 0), ("b", 1), ("c", 1), ("d", 0), ("e", 2), ("f", 1)]
    for i, (ticket, prio) in enumerate(order):
        assert owner.acquire(float(i), ticket, priority=prio) == []
    served = []
    now = 10.0
    while len(served) < len(order):
        out = owner.release(now, held)
        (grant,) = of(out, Grant)
        served.append(grant.ticket)
        held = grant.lease
        now += 1.0
    assert served == ["e", "b", "c", "f", "a", "d"]


# -- timeouts and factory failures -----------------------------------------------------


def test_waiter_times_out_exactly_at_its_deadline() -> None:
    core = make_core(max_size=1)
    owner = Owner(core)
    owner.lease(0.0, "holder")
    owner.acquire(1.0, "w", timeout=5.0)
    assert core.next_deadline() == 6.0
    assert owner.tick(5.999) == []
    out = owner.tick(6.0)
    (fail,) = of(out, Fail)
    assert fail.ticket == "w"
    assert isinstance(fail.error, AcquireTimeout)
    assert fail.error.__cause__ is None  # nothing failed: the pool was just busy
    stats = core.stats()
    assert (stats.timeouts, stats.waiting) == (1, 0)
    assert core.next_deadline() is None
    assert owner.tick(100.0) == []  # answered once only


def test_default_timeout_comes_from_spec() -> None:
    core = make_core(max_size=1, acquire_timeout=7.0)
    owner = Owner(core)
    owner.lease(0.0, "holder")
    owner.acquire(1.0, "w")
    assert core.next_deadline() == 8.0


def test_timeout_cause_is_last_factory_error() -> None:
    core = make_core(max_size=1, create_backoff=0.5, create_backoff_max=1.0)
    owner = Owner(core)
    owner.acquire(0.0, "w", timeout=10.0)
    first = RuntimeError("first")
    assert owner.fail_one(0.0, first) == []
    retry_at = core.next_deadline()
    assert retry_at is not None and 0.0 < retry_at <= 0.5
    assert creates(owner.tick(retry_at)) == 1
    last = ConnectionError("last")
    owner.fail_one(retry_at, last)
    # keep the factory failing up to the deadline
    out = []
    now = retry_at
    while not of(out, Fail):
        now = core.next_deadline()
        assert now is not None
        out = owner.tick(now)
        if creates(out):
            last = ConnectionError(f"at {now}")
            owner.fail_one(now, last)
    (fail,) = of(out, Fail)
    assert now == 10.0
    assert isinstance(fail.error, AcquireTimeout)
    assert fail.error.__cause__ is last
    assert core.stats().factory_errors >= 2


def test_timeout_has_no_cause_once_the_factory_recovered() -> None:
    core = make_core(max_size=1, create_backoff=0.1)
    owner = Owner(core)
    owner.acquire(0.0, "a", timeout=10.0)
    owner.fail_one(0.0, RuntimeError("blip"))
    nd = core.next_deadline()
    assert nd is not None and creates(owner.tick(nd)) == 1
    _, out = owner.create_one(nd)
    grant_of(out, "a")
    owner.acquire(nd, "b", timeout=1.0)  # the pool is full now: b just waits
    (fail,) = of(owner.tick(nd + 1.0), Fail)
    assert isinstance(fail.error, AcquireTimeout)
    assert fail.error.__cause__ is None


def test_create_failures_back_off_and_probe_once() -> None:
    core = make_core(max_size=4, create_backoff=1.0, create_backoff_max=8.0)
    owner = Owner(core)
    for t in ("a", "b", "c"):
        owner.acquire(0.0, t, timeout=100.0)
    assert owner.pending == 3
    for _ in range(3):
        owner.fail_one(0.0, RuntimeError("down"))
    retry_at = core.next_deadline()
    assert retry_at is not None and 0.0 < retry_at < 100.0
    # nothing before the backoff runs out, whatever happens meanwhile
    assert owner.tick(retry_at - 1e-6) == []
    assert creates(owner.acquire(retry_at - 1e-6, "d", timeout=100.0)) == 0
    # one probe, not one per waiter
    out = owner.tick(retry_at)
    assert creates(out) == 1
    assert core.stats().creating == 1
    assert core.next_deadline() == 100.0  # a probe is out: only the waiters' deadlines
    assert creates(owner.tick(retry_at + 5.0)) == 0
    # a failed probe backs off further
    owner.fail_one(retry_at + 5.0, RuntimeError("still down"))
    second = core.next_deadline()
    assert second is not None and second > retry_at + 5.0
    assert creates(owner.tick(second)) == 1
    # success ends the backoff: the probe serves the first waiter, the rest get Creates
    res, out = owner.create_one(second)
    assert grant_of(out, "a").resource == res
    assert creates(out) == 3
    assert core.stats().creating == 3
    assert not of(out, Fail)


def test_waiter_is_not_failed_by_factory_errors_and_granted_after_recovery() -> None:
    core = make_core(max_size=1, create_backoff=0.1, create_backoff_max=0.4)
    owner = Owner(core)
    owner.acquire(0.0, "w", timeout=5.0)
    now = 0.0
    for _ in range(6):
        out = owner.fail_one(now, OSError("refused"))
        assert not of(out, Fail)
        nd = core.next_deadline()
        assert nd is not None and nd < 5.0
        now = nd
        out = owner.tick(now)
        assert not of(out, Fail)
        assert creates(out) == 1
    assert now < 5.0
    res, out = owner.create_one(now)
    lease = grant_of(out, "w")
    assert lease.resource == res
    stats = core.stats()
    assert (stats.timeouts, stats.factory_errors, stats.acquired) == (0, 6, 1)


# -- release errors ------------------------------------------------------------------


def test_release_errors_change_nothing() -> None:
    core = make_core(max_size=3, past_epochs=frozenset({"e0"}))
    owner = Owner(core)
    a = owner.lease(0.0, 1, holder="alice")
    b = owner.lease(0.0, 2, holder="bob")
    owner.release(1.0, a)
    owner.acquire(1.5, 3, holder="carol")  # gets a's resource back
    other = make_core(epoch="e0")
    stale = Owner(other).lease(0.0, "x", holder="bob")

    def assert_raises_unchanged(exc: type[Exception], lease_id: str, holder: str) -> None:
        before = core.stats()
        leases = core.leases()
        with pytest.raises(exc):
            core.release(2.0, lease_id, holder)
        assert core.stats() == before
        assert core.leases() == leases

    assert_raises_unchanged(DoubleRelease, a.id, "alice")
    assert_raises_unchanged(UnknownLease, "p/e1/999", "alice")
    assert_raises_unchanged(UnknownLease, "nonsense", "alice")
    assert_raises_unchanged(UnknownLease, "q/e0/1", "bob")  # another pool's id
    assert_raises_unchanged(ForeignLease, b.id, "alice")
    assert_raises_unchanged(StaleLease, stale.id, "bob")  # same name, earlier epoch
    assert stale.id == "p/e0/1"
    # the foreign attempt did not release it: bob still can
    assert core.leases_of("bob") == [b.id]
    with pytest.raises(ForeignLease):
        core.renew(2.0, b.id, "alice", 10.0)
    with pytest.raises(DoubleRelease):
        core.renew(2.0, a.id, "alice", 10.0)
    owner.release(3.0, b)


def test_lease_from_another_epoch_is_stale() -> None:
    old = make_core(epoch="boot1")
    lease = Owner(old).lease(0.0, "t", holder="h")
    assert lease.id.startswith("p/boot1/")
    new = make_core(epoch="boot2", past_epochs=frozenset({"boot1"}))
    Owner(new).lease(0.0, "t", holder="h")  # same counter value in the new epoch
    before = new.stats()
    with pytest.raises(StaleLease):
        new.release(1.0, lease.id, "h")
    with pytest.raises(StaleLease):
        new.renew(1.0, lease.id, "h", 5.0)
    assert new.stats() == before


# -- broken, check, reset ------------------------------------------------------------


def test_broken_release_destroys_and_resource_is_never_granted_again() -> None:
    core = make_core(max_size=1)
    owner = Owner(core)
    lease = owner.lease(0.0, "t1")
    out = owner.release(1.0, lease, broken=True)
    assert of(out, Destroy) == [Destroy(lease.resource, "broken")]
    stats = core.stats()
    assert (stats.size, stats.broken, stats.destroyed, stats.released) == (0, 1, 1, 1)
    for i in range(5):
        again = owner.lease(2.0 + i, ("t", i))
        assert again.resource != lease.resource
        owner.release(2.5 + i, again)


def test_check_failure_replaces_resource_for_the_same_waiter() -> None:
    core = make_core(max_size=2, has_check=True)
    owner = Owner(core)
    out = owner.acquire(0.0, "w")
    assert out == [Create()]
    res, out = owner.create_one(0.0)
    (check,) = of(out, Check)
    assert check.resource == res and not of(out, Grant)
    assert core.stats().checking == 1

    out = owner.see(core.checked(0.5, check.slot, False))
    assert of(out, Destroy) == [Destroy(res, "check failed")]
    assert creates(out) == 1  # a replacement, not a Fail
    assert not of(out, Fail)
    res2, out = owner.create_one(0.6)
    (check2,) = of(out, Check)
    assert check2.resource == res2
    out = owner.see(core.checked(0.7, check2.slot, True))
    lease = grant_of(out, "w")
    assert lease.resource == res2 and lease.granted_at == 0.7
    stats = core.stats()
    assert (stats.check_failures, stats.acquired, stats.checking, stats.leased) == (1, 1, 0, 1)


def test_check_failure_keeps_waiters_place_in_line() -> None:
    core = make_core(max_size=1, has_check=True)
    owner = Owner(core)
    owner.acquire(0.0, "first")
    _, out = owner.create_one(0.0)
    (check,) = of(out, Check)  # for "first"
    owner.acquire(1.0, "second")
    out = owner.see(core.checked(2.0, check.slot, False))
    assert creates(out) == 1
    _, out = owner.create_one(3.0)
    (check,) = of(out, Check)
    out = core.checked(3.0, check.slot, True)
    assert [g.ticket for g in of(out, Grant)] == ["first"]


def test_waiter_in_check_may_be_bypassed() -> None:
    """A waiter whose resource is being checked is not queued: a later waiter can be
    granted first, and the earlier one is still served when its check passes."""
    core = make_core(max_size=2, has_check=True)
    owner = Owner(core)
    owner.acquire(0.0, "early", priority=2)
    _, out = owner.create_one(0.0)
    (check_early,) = of(out, Check)
    owner.acquire(1.0, "late", priority=0)
    _, out = owner.create_one(1.0)
    (check_late,) = of(out, Check)
    assert grant_of(core.checked(2.0, check_late.slot, True), "late")
    assert grant_of(core.checked(3.0, check_early.slot, True), "early")


@pytest.mark.parametrize(("strategy", "expected"), [("lifo", "r2"), ("fifo", "r0")])
def test_strategy_picks_most_or_least_recently_used(strategy: str, expected: str) -> None:
    core = make_core(max_size=3, strategy=strategy)
    owner = Owner(core)
    leases = [owner.lease(0.0, i) for i in range(3)]
    assert [lz.resource for lz in leases] == ["r0", "r1", "r2"]
    for i, lease in enumerate(leases):
        owner.release(1.0 + i, lease)
    assert grant_of(owner.acquire(5.0, "next"), "next").resource == expected


def test_check_runs_before_every_borrow_even_of_idle() -> None:
    core = make_core(max_size=1, has_check=True)
    owner = Owner(core)
    owner.acquire(0.0, "w1")
    _, out = owner.create_one(0.0)
    (check,) = of(out, Check)
    lease = grant_of(owner.see(core.checked(0.0, check.slot, True)), "w1")
    owner.release(1.0, lease)
    out = owner.acquire(2.0, "w2")
    assert not of(out, Grant)
    (check,) = of(out, Check)
    assert check.resource == lease.resource
    assert grant_of(core.checked(2.1, check.slot, True), "w2").resource == lease.resource


def test_cancelled_waiter_in_check_releases_resource_to_idle() -> None:
    core = make_core(max_size=1, has_check=True)
    owner = Owner(core)
    owner.acquire(0.0, "w")
    _, out = owner.create_one(0.0)
    (check,) = of(out, Check)
    assert core.cancel(0.5, "w") == []
    assert core.stats().waiting == 0
    out = core.checked(1.0, check.slot, True)
    assert not of(out, Grant)
    assert core.stats().idle == 1


def test_reset_on_release_then_idle() -> None:
    core = make_core(max_size=2, has_reset=True)
    owner = Owner(core)
    lease = owner.lease(0.0, "t1")
    out = owner.release(1.0, lease)
    (reset,) = of(out, Reset)
    assert reset.resource == lease.resource
    stats = core.stats()
    assert (stats.idle, stats.checking, stats.leased, stats.size) == (0, 1, 0, 1)
    # a waiter arriving meanwhile waits for the reset instead of creating another
    out = owner.acquire(1.5, "t2")
    assert out == []
    out = owner.see(core.reset_done(2.0, reset.slot, True))
    assert grant_of(out, "t2").resource == lease.resource


def test_failed_reset_destroys() -> None:
    core = make_core(max_size=2, has_reset=True)
    owner = Owner(core)
    lease = owner.lease(0.0, "t1")
    (reset,) = of(owner.release(1.0, lease), Reset)
    out = owner.see(core.reset_done(2.0, reset.slot, False))
    assert out == [Destroy(lease.resource, "reset failed")]
    stats = core.stats()
    assert (stats.size, stats.idle, stats.checking, stats.destroyed) == (0, 0, 0, 1)


def test_broken_release_skips_reset() -> None:
    core = make_core(max_size=2, has_reset=True)
    owner = Owner(core)
    lease = owner.lease(0.0, "t1")
    out = owner.release(1.0, lease, broken=True)
    assert out == [Destroy(lease.resource, "broken")]


# -- lease ttl -----------------------------------------------------------------------


@pytest.mark.parametrize("reusable", [False, True])
def test_expired_lease_is_reclaimed(reusable: bool) -> None:
    core = make_core(max_size=1, reusable=reusable)
    owner = Owner(core)
    lease = owner.lease(0.0, "t", ttl=5.0)
    assert lease.expires_at == 5.0
    assert core.next_deadline() == 5.0
    assert owner.tick(4.9) == []
    out = owner.tick(5.0)
    assert out[:2] == [Expired(lease), Reclaimed(lease, "expired")]
    if reusable:
        assert out[2:] == []
        assert core.stats().idle == 1
    else:
        assert out[2:] == [Destroy(lease.resource, "expired")]
        assert core.stats().size == 0
    stats = core.stats()
    assert (stats.expired, stats.reclaimed, stats.released, stats.leased) == (1, 1, 0, 0)
    before = core.stats()
    with pytest.raises(ExpiredLease):
        core.release(6.0, lease.id, lease.holder)
    with pytest.raises(ExpiredLease):
        core.renew(6.0, lease.id, lease.holder, 5.0)
    assert core.stats() == before


def test_expired_reusable_resource_goes_to_waiter() -> None:
    core = make_core(max_size=1, reusable=True)
    owner = Owner(core)
    lease = owner.lease(0.0, "t", ttl=5.0)
    owner.acquire(1.0, "w", timeout=100.0)
    out = owner.tick(5.0)
    assert out[0] == Expired(lease)
    assert grant_of(out, "w").resource == lease.resource


def test_reclaimed_reusable_resource_is_reset_before_reuse() -> None:
    """Was a bug: a reclaimed reusable resource skipped the reset and went straight
    to the next holder."""
    core = make_core(max_size=1, reusable=True, has_reset=True)
    owner = Owner(core)
    lease = owner.lease(0.0, "t", ttl=1.0)
    owner.acquire(0.5, "next", holder="other")
    out = owner.tick(1.0)
    resets = of(out, Reset)
    assert [r.resource for r in resets] == [lease.resource], "reclaimed without Reset"
    assert not of(out, Grant), "granted before its reset"
    assert creates(out) == 0  # the reset will supply the waiter
    out = core.reset_done(1.5, resets[0].slot, True)
    assert grant_of(out, "next").resource == lease.resource


@pytest.mark.parametrize("how", ["reclaim_holder", "reclaim_all"])
def test_reclaimed_reusable_resource_is_reset_on_every_reclaim(how: str) -> None:
    core = make_core(max_size=2, reusable=True, has_reset=True)
    owner = Owner(core)
    lease = owner.lease(0.0, "t", holder="dead")
    if how == "reclaim_holder":
        out = core.reclaim_holder(1.0, "dead")
    else:
        out = core.reclaim_all(1.0, "shutdown")[1]
    assert [r.resource for r in of(out, Reset)] == [lease.resource]
    assert core.stats().checking == 1


def test_spec_lease_ttl_is_default_and_acquire_ttl_overrides() -> None:
    core = make_core(max_size=2, lease_ttl=10.0)
    owner = Owner(core)
    assert owner.lease(1.0, "a").expires_at == 11.0
    assert owner.lease(1.0, "b", ttl=2.0).expires_at == 3.0


def test_renew_pushes_expiry_out() -> None:
    core = make_core(max_size=1)
    owner = Owner(core)
    lease = owner.lease(0.0, "t", ttl=5.0)
    renewed = core.renew(3.0, lease.id, lease.holder, 5.0)
    assert renewed.expires_at == 8.0
    assert renewed.id == lease.id and renewed.resource == lease.resource
    assert core.next_deadline() == 8.0
    assert owner.tick(5.0) == []
    assert core.leases() == [renewed]
    out = owner.tick(8.0)
    assert out[0] == Expired(renewed)
    with pytest.raises(ExpiredLease):
        core.release(9.0, lease.id, lease.holder)


def test_renewed_lease_is_not_reclaimed_at_its_old_expiry() -> None:
    core = make_core(max_size=2)
    owner = Owner(core)
    short = owner.lease(0.0, "short", ttl=2.0)
    renewed = owner.lease(0.0, "long", ttl=5.0)
    renewed = core.renew(1.0, renewed.id, renewed.holder, 9.0)  # now expires at 10
    assert core.next_deadline() == 2.0
    out = owner.tick(6.0)  # past both the short lease and the renewed one's old expiry
    assert [e.lease for e in of(out, Expired)] == [short]
    assert core.leases() == [renewed]
    assert core.next_deadline() == 10.0


def test_renew_can_shorten_and_release_before_expiry_is_clean() -> None:
    core = make_core(max_size=1)
    owner = Owner(core)
    lease = owner.lease(0.0, "t", ttl=50.0)
    core.renew(1.0, lease.id, lease.holder, 1.0)
    assert core.next_deadline() == 2.0
    owner.release(1.5, lease)
    assert core.next_deadline() is None
    assert owner.tick(60.0) == []
    assert core.stats().expired == 0


# -- sizing: max_idle, min_size, max_lifetime ------------------------------------------


def test_max_idle_evicts_only_above_min_size() -> None:
    core = make_core(min_size=1, max_size=3, max_idle=10.0)
    owner = Owner(core)
    assert creates(owner.see(core.start(0.0))) == 1
    owner.create_all(0.0)
    leases = [owner.lease(0.0, t) for t in ("a", "b", "c")]
    for i, lease in enumerate(leases):
        owner.release(float(i), lease)  # idle since 0, 1, 2
    assert core.stats().idle == 3
    assert core.next_deadline() == 10.0
    assert owner.tick(9.9) == []
    out = owner.tick(10.0)
    assert out == [Destroy(leases[0].resource, "idle")]
    out = owner.tick(100.0)
    assert out == [Destroy(leases[1].resource, "idle")]
    assert core.stats().idle == 1 == core.stats().size
    assert core.next_deadline() is None
    assert owner.tick(1000.0) == []


def test_min_size_prewarm_from_start() -> None:
    core = make_core(min_size=2, max_size=4)
    owner = Owner(core)
    out = owner.see(core.start(0.0))
    assert out == [Create(), Create()]
    assert core.stats().creating == 2
    owner.create_all(0.0)
    stats = core.stats()
    assert (stats.size, stats.idle, stats.creating) == (2, 2, 0)
    assert core.start(1.0) == []  # already warm


def test_min_size_is_restored_after_destroy() -> None:
    core = make_core(min_size=1, max_size=2)
    owner = Owner(core)
    owner.see(core.start(0.0))
    owner.create_all(0.0)
    lease = owner.lease(1.0, "t")
    out = owner.release(2.0, lease, broken=True)
    assert creates(out) == 1


def test_max_lifetime_retires_idle_resource() -> None:
    core = make_core(max_size=1, max_lifetime=100.0)
    owner = Owner(core)
    lease = owner.lease(0.0, "t")
    owner.release(1.0, lease)
    assert core.next_deadline() == 100.0
    assert owner.tick(99.0) == []
    assert owner.tick(100.0) == [Destroy(lease.resource, "lifetime")]
    assert core.stats().size == 0


def test_retired_idle_resource_is_not_granted_before_the_tick() -> None:
    """The owner's timer may fire late: an acquire after max_lifetime but before the
    tick must not get the retired resource."""
    core = make_core(max_size=1, max_lifetime=100.0)
    owner = Owner(core)
    lease = owner.lease(0.0, "t")
    owner.release(1.0, lease)
    out = owner.acquire(150.0, "late")
    assert Destroy(lease.resource, "lifetime") in out
    assert not of(out, Grant) and creates(out) == 1
    fresh, out = owner.create_one(150.0)
    assert grant_of(out, "late").resource == fresh != lease.resource


def test_lease_can_be_released_after_expiry_until_the_tick() -> None:
    core = make_core(max_size=1)
    owner = Owner(core)
    lease = owner.lease(0.0, "t", ttl=1.0)
    assert owner.release(5.0, lease) == []  # expired, but not reclaimed yet
    assert owner.tick(5.0) == []
    stats = core.stats()
    assert (stats.released, stats.expired, stats.idle) == (1, 0, 1)


def test_max_lifetime_never_retires_leased_but_does_on_release() -> None:
    core = make_core(max_size=1, max_lifetime=100.0)
    owner = Owner(core)
    lease = owner.lease(0.0, "t")
    assert owner.tick(100.0) == []
    assert owner.tick(500.0) == []
    assert core.leases() == [lease]
    out = owner.release(600.0, lease)
    assert out == [Destroy(lease.resource, "lifetime")]
    assert core.stats().size == 0
    # the next borrower gets a fresh resource
    again = owner.lease(601.0, "t2")
    assert again.resource != lease.resource


def test_resource_retired_during_its_check_is_not_granted() -> None:
    """Was a bug: checked() granted a resource whose lifetime ended during the check."""
    core = make_core(max_size=1, max_lifetime=10.0, has_check=True)
    owner = Owner(core)
    owner.acquire(0.0, "a")
    res, out = owner.create_one(0.0)
    (check,) = of(out, Check)
    owner.release(1.0, grant_of(core.checked(0.0, check.slot, True), "a"))
    (check,) = of(owner.acquire(9.0, "b"), Check)  # 1s of lifetime left
    assert owner.tick(10.0) == []  # lifetime over, but it is busy
    out = owner.see(core.checked(10.5, check.slot, True))
    granted = [g.lease.resource for g in of(out, Grant)]
    assert res not in granted, "a resource past max_lifetime was granted"
    assert Destroy(res, "lifetime") in out
    assert creates(out) == 1 and not of(out, Fail)  # the waiter gets a fresh one
    fresh, out = owner.create_one(11.0)
    (check,) = of(out, Check)
    assert grant_of(core.checked(11.0, check.slot, True), "b").resource == fresh


def test_lifetime_jitter_shortens_lifetime_within_bounds() -> None:
    core = make_core(max_size=5, max_lifetime=100.0, lifetime_jitter=0.5)
    owner = Owner(core)
    leases = [owner.lease(0.0, i) for i in range(5)]
    for lease in leases:
        owner.release(0.0, lease)
    nd = core.next_deadline()
    assert nd is not None and 50.0 <= nd <= 100.0
    assert owner.tick(49.9) == []
    out = owner.tick(100.0)
    assert sorted(d.resource for d in of(out, Destroy)) == sorted(lz.resource for lz in leases)


# -- admission ---------------------------------------------------------------------------


def test_max_waiting_rejects_and_counts() -> None:
    core = make_core(max_size=1, max_waiting=2)
    owner = Owner(core)
    held = owner.lease(0.0, "held")
    owner.acquire(0.0, "w1")
    owner.acquire(0.0, "w2")
    before = core.stats()
    with pytest.raises(PoolExhausted):
        owner.acquire(0.0, "w3")
    after = core.stats()
    assert after.rejected == 1
    assert after == type(before)(**{**before.as_dict(), "rejected": 1})
    assert after.waiting == 2
    # once the queue drains, acquires are admitted again
    out = owner.release(1.0, held)
    assert of(out, Grant)[0].ticket == "w1"
    owner.acquire(1.0, "w4")
    assert core.stats().waiting == 2


def test_max_waiting_does_not_refuse_when_idle_resource_available_with_check() -> None:
    """Was a bug: a waiter whose resource was in its Check counted toward max_waiting,
    so an Acquire was refused while an idle resource was available."""
    core = make_core(min_size=2, max_size=2, max_waiting=1, has_check=True)
    owner = Owner(core)
    owner.see(core.start(0.0))
    owner.create_all(0.0)
    assert len(of(owner.acquire(0.0, "a"), Check)) == 1
    assert core.stats().idle == 1
    out = owner.acquire(0.0, "b")  # used to raise PoolExhausted
    assert len(of(out, Check)) == 1
    assert owner.acquire(0.0, "c") == []  # queued: the one place in the queue
    with pytest.raises(PoolExhausted):
        owner.acquire(0.0, "d")
    stats = core.stats()
    assert (stats.rejected, stats.waiting, stats.checking) == (1, 3, 2)


def test_max_waiting_is_not_applied_to_immediate_grants() -> None:
    core = make_core(min_size=2, max_size=2, max_waiting=1)
    owner = Owner(core)
    owner.see(core.start(0.0))
    owner.create_all(0.0)
    grant_of(owner.acquire(0.0, "a"), "a")
    grant_of(owner.acquire(0.0, "b"), "b")


def test_duplicate_waiting_ticket_is_refused() -> None:
    core = make_core(max_size=1)
    owner = Owner(core)
    owner.lease(0.0, "held")
    owner.acquire(0.0, "w")
    with pytest.raises(ValueError, match="already waiting"):
        owner.acquire(0.0, "w")


def test_cancel_drops_a_queued_waiter() -> None:
    core = make_core(max_size=1)
    owner = Owner(core)
    held = owner.lease(0.0, "held")
    owner.acquire(0.0, "a", timeout=5.0)
    owner.acquire(0.0, "b", timeout=10.0)
    assert core.cancel(1.0, "a") == []
    assert core.stats().waiting == 1
    assert core.next_deadline() == 10.0
    out = owner.release(2.0, held)
    assert [g.ticket for g in of(out, Grant)] == ["b"]
    assert owner.tick(20.0) == []  # the cancelled waiter does not time out later
    assert core.stats().timeouts == 0


# -- ownership and shutdown ------------------------------------------------------------


@pytest.mark.parametrize("reusable", [False, True])
def test_reclaim_holder_takes_back_only_its_leases(reusable: bool) -> None:
    core = make_core(max_size=3, reusable=reusable)
    owner = Owner(core)
    a1 = owner.lease(0.0, 1, holder="a")
    a2 = owner.lease(0.0, 2, holder="a")
    b1 = owner.lease(0.0, 3, holder="b")
    out = owner.see(core.reclaim_holder(1.0, "a"))
    destroyed = {d.resource for d in of(out, Destroy)}
    if reusable:
        assert destroyed == set()
        assert core.stats().idle == 2
    else:
        assert destroyed == {a1.resource, a2.resource}
        assert core.stats().size == 1
    assert not of(out, Expired)  # Expired is for ttl only
    assert sorted(of(out, Reclaimed), key=lambda r: r.lease.id) == [
        Reclaimed(a1, "holder died"),
        Reclaimed(a2, "holder died"),
    ]
    assert core.leases_of("a") == []
    assert core.leases() == [b1]
    stats = core.stats()
    assert (stats.reclaimed, stats.released, stats.leased) == (2, 0, 1)
    with pytest.raises(ExpiredLease):
        core.release(2.0, a1.id, "a")
    assert owner.see(core.reclaim_holder(2.0, "nobody")) == []


def test_reclaim_holder_serves_waiters_with_reusable_resources() -> None:
    core = make_core(max_size=1, reusable=True)
    owner = Owner(core)
    lease = owner.lease(0.0, 1, holder="dead")
    owner.acquire(0.5, 2, holder="alive")
    out = owner.see(core.reclaim_holder(1.0, "dead"))
    assert grant_of(out, 2).resource == lease.resource


@pytest.mark.parametrize("reusable", [False, True])
def test_reclaim_holder_drops_its_waiters(reusable: bool) -> None:
    """A dead holder's queued Acquire must not get the resource taken back from it
    (found by the state machine: it used to be granted straight back to the dead
    holder, which then still held a lease after reclaim_holder)."""
    core = make_core(max_size=1, reusable=reusable)
    owner = Owner(core)
    lease = owner.lease(0.0, 1, holder="dead")
    owner.acquire(0.5, 2, holder="dead")
    owner.acquire(0.6, 3, holder="alive")
    out = owner.see(core.reclaim_holder(1.0, "dead"))
    fails = of(out, Fail)
    assert [f.ticket for f in fails] == [2]
    assert not isinstance(fails[0].error, AcquireTimeout)
    assert core.leases_of("dead") == []
    if reusable:
        assert grant_of(out, 3).resource == lease.resource
    else:
        assert not of(out, Grant) and creates(out) == 1
        grant_of(owner.create_all(1.0), 3)
    assert core.leases_of("alive") != []
    assert core.stats().waiting == 0


def test_reclaim_all_returns_every_lease() -> None:
    core = make_core(max_size=3)
    owner = Owner(core)
    leases = [owner.lease(0.0, i, holder=f"h{i}") for i in range(3)]
    taken, out = core.reclaim_all(1.0, "shutdown")
    assert sorted(lz.id for lz in taken) == sorted(lz.id for lz in leases)
    assert sorted(d.resource for d in of(out, Destroy)) == sorted(lz.resource for lz in leases)
    assert {d.reason for d in of(out, Destroy)} == {"shutdown"}
    assert sorted(r.lease.id for r in of(out, Reclaimed)) == sorted(lz.id for lz in leases)
    assert {r.why for r in of(out, Reclaimed)} == {"shutdown"}
    stats = core.stats()
    assert (stats.leased, stats.reclaimed, stats.size) == (0, 3, 0)
    assert core.leases() == []


def test_stop_admitting_refuses_new_but_serves_queued() -> None:
    core = make_core(max_size=1)
    owner = Owner(core)
    held = owner.lease(0.0, "held")
    owner.acquire(0.0, "queued")
    core.stop_admitting()
    with pytest.raises(ShuttingDown):
        owner.acquire(1.0, "late")
    assert core.stats().rejected == 0
    out = owner.release(2.0, held)
    assert grant_of(out, "queued").resource == held.resource


def test_close_fails_waiters_and_destroys_everything() -> None:
    core = make_core(max_size=3, has_check=True)
    owner = Owner(core)
    owner.acquire(0.0, "a")
    _, out = owner.create_one(0.0)
    (check,) = of(out, Check)
    lease = grant_of(core.checked(0.0, check.slot, True), "a")
    owner.acquire(0.0, "b")
    _, out = owner.create_one(0.0)
    (check_b,) = of(out, Check)  # b's resource is in its check when the pool closes
    owner.acquire(0.0, "c")  # its Create is still out
    assert owner.pending == 1

    out = core.close(1.0)
    fails = {f.ticket: f.error for f in of(out, Fail)}
    assert set(fails) == {"b", "c"}
    assert all(
        isinstance(e, PoolClosed) and not isinstance(e, ShuttingDown) for e in fails.values()
    )
    assert core.closed
    assert core.stats().waiting == 0
    with pytest.raises(PoolClosed):
        owner.acquire(2.0, "d")

    # everything that comes back is destroyed: the checked one, the late create, the lease
    out = core.checked(2.0, check_b.slot, True)
    assert not of(out, Grant) and [d.reason for d in of(out, Destroy)] == ["closed"]
    res, out = owner.create_one(2.0)
    assert out == [Destroy(res, "closed")]
    out = owner.release(3.0, lease)
    assert out == [Destroy(lease.resource, "closed")]
    stats = core.stats()
    assert (stats.size, stats.idle, stats.leased, stats.checking) == (0, 0, 0, 0)
    assert owner.tick(100.0) == []  # no late timeouts


def test_close_destroys_idle_and_skips_reset() -> None:
    core = make_core(max_size=2, has_reset=True)
    owner = Owner(core)
    a = owner.lease(0.0, "a")
    b = owner.lease(0.0, "b")
    (reset,) = of(owner.release(0.5, a), Reset)
    assert core.reset_done(0.6, reset.slot, True) == []
    out = core.close(1.0)
    assert out == [Destroy(a.resource, "closed")]
    assert owner.release(2.0, b) == [Destroy(b.resource, "closed")]


def test_next_deadline_after_close_does_not_stay_in_the_past() -> None:
    """Was a bug: after close(), next_deadline() kept reporting a create retry time in
    the past (a closed pool never creates), so an owner ticking at it would spin."""
    core = make_core(min_size=1, max_size=1)
    owner = Owner(core)
    owner.see(core.start(0.0))
    owner.fail_one(0.0, RuntimeError("down"))
    core.close(0.01)
    assert owner.tick(5.0) == []
    nd = core.next_deadline()
    assert nd is None or nd > 5.0, f"next_deadline {nd} is before now after tick(5.0)"


# -- next_deadline -----------------------------------------------------------------------


def test_next_deadline_is_none_for_idle_pool() -> None:
    core = make_core(max_size=2)
    owner = Owner(core)
    assert core.next_deadline() is None
    lease = owner.lease(0.0, "t")
    assert core.next_deadline() is None  # a lease without ttl never expires
    owner.release(1.0, lease)
    assert core.stats().idle == 1
    assert core.next_deadline() is None


def test_next_deadline_is_earliest_waiter_or_expiry() -> None:
    core = make_core(max_size=2)
    owner = Owner(core)
    l1 = owner.lease(0.0, "l1", ttl=20.0)
    owner.lease(0.0, "l2", ttl=15.0)
    assert core.next_deadline() == 15.0
    owner.acquire(1.0, "w1", timeout=30.0)
    assert core.next_deadline() == 15.0
    owner.acquire(2.0, "w2", timeout=8.0)
    assert core.next_deadline() == 10.0
    core.cancel(3.0, "w2")
    assert core.next_deadline() == 15.0
    core.renew(4.0, "p/e1/2", "h", 40.0)  # l2 now expires at 44
    assert core.next_deadline() == 20.0
    out = owner.release(5.0, l1)
    assert grant_of(out, "w1").expires_at is None
    assert core.next_deadline() == 44.0
    out = owner.tick(44.0)
    assert len(of(out, Expired)) == 1
    assert core.next_deadline() is None


# -- PoolSpec validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"min_size": -1}, "min_size"),
        ({"max_size": -1}, "max_size"),
        ({"max_size": 0}, "max_size"),
        ({"max_waiting": -1}, "max_waiting"),
        ({"min_size": 3, "max_size": 2}, "min_size"),
        ({"acquire_timeout": 0}, "acquire_timeout"),
        ({"acquire_timeout": -1.5}, "acquire_timeout"),
        ({"max_idle": 0}, "max_idle"),
        ({"max_lifetime": -1}, "max_lifetime"),
        ({"lease_ttl": 0}, "lease_ttl"),
        ({"lifetime_jitter": 1.0}, "lifetime_jitter"),
        ({"create_backoff": 0}, "create_backoff"),
        ({"strategy": "random"}, "strategy"),
        ({"min_size": True}, "min_size"),
    ],
)
def test_pool_spec_rejects_bad_values_naming_the_field(kw: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field}\b"):
        make_spec(**kw)


def test_pool_spec_defaults_are_valid() -> None:
    spec = PoolSpec("p", TokenFactory())
    assert (spec.min_size, spec.max_size, spec.acquire_timeout) == (0, 10, 30.0)
    assert PoolSpec("p", TokenFactory(), min_size=3, max_size=3).min_size == 3
