"""PoolCore against a model of its owner, driven by a hypothesis state machine.

The machine plays the owner: it carries out every decision (fresh resources for
``Create``, chosen outcomes for ``Check``/``Reset``), moves a fake clock, and keeps
its own books of what the pool should look like. After every step the pool's
``stats()`` must agree with those books, and every decision must be one the
owner could have expected.

Ordering rule checked here. A waiter is *assigned* a resource when the pool decides
which waiter a resource goes to: at its ``Grant`` when there is no check, at the
``Check`` decision when there is one (``checked`` then grants that same waiter, or
puts it back in the queue in its old place when the check fails). Every assignment
must go to the best queued waiter: highest priority, then earliest enqueued. A
waiter whose resource is in a check is not queued, so others may be served before
it. The clock moves either with a ``tick``, which first times out every waiter whose
deadline has passed, or (the owner's timer running late) without one but never up to
a waiter's deadline; so every queued waiter is within its deadline whenever an
assignment is made, and "the best queued waiter" is exactly the rule.

Recall, drain and refused grants are checked against the model's own books too.
``AskBack`` goes out only while the pool is starved (nothing idle, no room, more
queued than being made), names exactly the worker holders with a lease out, comes
at once when starvation begins and then no sooner than ``RECALL_INTERVAL`` after the
previous one, and is due again (``next_deadline``) only while some worker was asked.
``Drained`` answers each drain ticket exactly once, when no lease is out (or at
``close``). A refused grant goes straight back to idle, with no reset.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Any, ClassVar

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
    Drained,
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
    LessorError,
    PoolClosed,
    PoolExhausted,
    StaleLease,
    UnknownLease,
)
from lessor.factory import TokenFactory
from lessor.holder import ANONYMOUS, Holder
from lessor.protocol.messages import Lease, PoolStats
from lessor.specs import PoolSpec

HOLDERS = (
    Holder.thread(7, 11, 1),
    Holder.actor("urn:uuid:bob"),
    Holder.worker("w1", 101),
    Holder.worker("w2", 102),
    ANONYMOUS,
)
BY_TEXT = {str(h): h for h in HOLDERS}  # a Lease carries its holder as plain text
EPOCH = "e2"
PAST_EPOCH = "e1"
OUTCOME = st.sampled_from([True, True, True, False])  # of a create, check or reset


@dataclass
class Waiter:
    ticket: int
    holder: Holder
    priority: int
    seq: int
    deadline: float
    ttl: float | None

    @property
    def rank(self) -> tuple[int, int]:
        return (-self.priority, self.seq)


class PoolModel(RuleBasedStateMachine):
    """The owner of one PoolCore, with its own books."""

    HAS_CHECK: ClassVar[bool] = False
    REUSABLE: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.core: PoolCore | None = None
        self.now = 0.0
        self.ticked_at = 0.0  # when tick() last ran; the clock may be ahead of it
        self.armed = float("inf")  # the owner's timer, armed as PoolActor arms it
        self.closed = False
        self.close_after: int | None = None
        self.steps = 0
        self._tickets = itertools.count()
        self._seqs = itertools.count()
        self._names = itertools.count()
        # owner's side of slow work
        self.pending_creates = 0
        self.pending_checks: dict[int, Any] = {}  # slot -> resource
        self.check_for: dict[int, int] = {}  # slot -> ticket the check was made for
        self.pending_resets: dict[int, Any] = {}
        # waiters
        self.queued: dict[int, Waiter] = {}  # in the queue
        self.in_check: dict[int, Waiter] = {}  # ticket -> waiter whose resource is checked
        self.all_waiters: dict[int, Waiter] = {}
        self.answered: set[int] = set()
        self.cancelled: set[int] = set()
        # leases and resources
        self.held: dict[str, Lease] = {}
        self.ended: dict[str, str] = {}  # lease id -> "released" | "reclaimed"
        self.alive: set[str] = set()
        self.created_at: dict[str, float] = {}
        self.idle_since: dict[str, float] = {}  # idle resource -> when it became idle
        # counters seen in decisions
        self.grants = 0
        self.timeouts = 0
        self.rejected = 0
        self.reclaims: list[Reclaimed] = []
        self.reclaiming: str | None = None  # holder being reclaimed, during reclaim_holder
        self.failing_since: float | None = None  # last create outcome was a failure, when
        self.last_error: BaseException | None = None
        # recall: the last AskBack of this starved spell, and when the next one is due
        self.asked_at: float | None = None
        self.recall_due: float | None = None
        # drain
        self._drain_tickets = itertools.count()
        self.pending_drains: set[str] = set()
        self.drained: set[str] = set()

    # -- setup -------------------------------------------------------------------------

    @initialize(
        data=st.data(),
        max_size=st.sampled_from([1, 1, 2, 3]),
        has_reset=st.booleans(),
        max_waiting=st.sampled_from([0, 0, 1, 3]),
        lease_ttl=st.sampled_from([None, None, 3.0]),
        strategy=st.sampled_from(["lifo", "fifo"]),
        max_idle=st.sampled_from([None, 2.0, 6.0]),
        max_lifetime=st.sampled_from([None, None, 4.0, 15.0]),
        lifetime_jitter=st.sampled_from([0.0, 0.25]),  # 0: the model knows retire times
        close_after=st.sampled_from([None, None, 10, 25]),
    )
    def setup(
        self,
        data: st.DataObject,
        max_size: int,
        has_reset: bool,
        max_waiting: int,
        lease_ttl: float | None,
        strategy: str,
        max_idle: float | None,
        max_lifetime: float | None,
        lifetime_jitter: float,
        close_after: int | None,
    ) -> None:
        min_size = data.draw(st.integers(0, max_size), label="min_size")
        spec = PoolSpec(
            "p",
            TokenFactory(),
            min_size=min_size,
            max_size=max_size,
            acquire_timeout=20.0,
            max_idle=max_idle,
            max_lifetime=max_lifetime,
            lifetime_jitter=lifetime_jitter,
            lease_ttl=lease_ttl,
            max_waiting=max_waiting,
            strategy=strategy,  # type: ignore[arg-type]
            create_backoff=0.5,
            create_backoff_max=2.0,
        )
        self.has_reset = has_reset
        self.close_after = close_after
        self.core = PoolCore(
            spec,
            epoch=EPOCH,
            has_check=self.HAS_CHECK,
            has_reset=has_reset,
            reusable=self.REUSABLE,
            rng=random.Random(data.draw(st.integers(0, 2**16), label="seed")),
            past_epochs=frozenset({PAST_EPOCH}),
        )
        out = self.core.start(self.now)
        assert out == [Create()] * min_size
        self.apply(out)

    @property
    def spec(self) -> PoolSpec:
        assert self.core is not None
        return self.core.spec

    @property
    def pool(self) -> PoolCore:
        assert self.core is not None
        return self.core

    # -- the owner carrying out decisions ------------------------------------------------

    def best_queued(self) -> Waiter | None:
        return min(self.queued.values(), key=lambda w: w.rank, default=None)

    def active(self, ticket: int) -> bool:
        return ticket not in self.answered and ticket not in self.cancelled

    def busy_resources(self) -> set[Any]:
        return {*self.pending_checks.values(), *self.pending_resets.values()}

    def held_resources(self) -> set[Any]:
        return {lease.resource for lease in self.held.values()}

    def assert_free(self, resource: Any, what: str) -> None:
        assert resource in self.alive, f"{what} of {resource!r}, which is not alive"
        assert resource not in self.held_resources(), f"{what} of leased {resource!r}"
        assert resource not in self.busy_resources(), f"{what} of {resource!r} in check/reset"

    def apply(self, out: list[Decision], checked: tuple[int, Any] | None = None) -> None:
        """Carry out decisions in order. ``checked=(ticket, resource)``: the one Grant
        that ``checked`` may (and must) make."""
        assert isinstance(out, list)
        expected_grant = checked
        expired: set[str] = set()
        asks = [d for d in out if isinstance(d, AskBack)]
        for d in out:
            if isinstance(d, Create):
                self.on_create()
            elif isinstance(d, Grant):
                self.on_grant(d, expected_grant)
                expected_grant = None
            elif isinstance(d, Fail):
                self.on_fail(d)
            elif isinstance(d, Destroy):
                self.assert_free(d.resource, "Destroy")
                self.check_destroy_reason(d)
                self.alive.remove(d.resource)
            elif isinstance(d, Check):
                self.on_check(d)
            elif isinstance(d, Reset):
                assert self.has_reset, "Reset from a pool without a reset"
                self.assert_free(d.resource, "Reset")
                assert d.slot not in self.pending_checks and d.slot not in self.pending_resets
                self.pending_resets[d.slot] = d.resource
            elif isinstance(d, Expired):
                lease = d.lease
                assert self.held.get(lease.id) == lease, f"Expired for unheld {lease}"
                assert lease.expires_at is not None and lease.expires_at <= self.now
                expired.add(lease.id)
            elif isinstance(d, Reclaimed):
                assert (d.why == "expired") == (d.lease.id in expired), d
                expired.discard(d.lease.id)
                self.on_reclaimed(d)
            elif isinstance(d, Drained):
                self.on_drained(d)
            elif isinstance(d, AskBack):
                pass  # checked below, against the books after the whole call
            else:  # pragma: no cover
                raise AssertionError(f"unknown decision {d!r}")
        assert expected_grant is None, f"checked() did not grant {expected_grant}"
        assert not expired, f"Expired but not Reclaimed: {expired}"
        if self.REUSABLE and self.has_reset and not self.closed:  # reset like a release
            for d in out:
                if isinstance(d, Reclaimed):
                    assert d.lease.resource in self.pending_resets.values(), f"{d} not reset"
        idle = self.idle_resources()
        for resource in idle - self.idle_since.keys():
            self.idle_since[resource] = self.now
        for resource in self.idle_since.keys() - idle:
            del self.idle_since[resource]
        self.check_recall(asks)
        if self.pending_drains:
            assert self.held, f"no lease out but {self.pending_drains} not answered Drained"

    def starved(self) -> bool:
        """The model's own: nothing idle, no room to make more, more queued than coming."""
        exhausted = (
            not self.idle_resources()
            and len(self.alive) + self.pending_creates >= self.spec.max_size
        )
        return exhausted and len(self.queued) > self.pending_creates

    def givers(self) -> set[Holder]:
        """Holders that can give a lease back: worker processes with a lease out."""
        holders = {BY_TEXT[lease.holder] for lease in self.held.values()}
        return {h for h in holders if h.kind == "worker"}

    def check_recall(self, asks: list[AskBack]) -> None:
        """After a call: an AskBack iff starved, a worker holds a lease, and one is due."""
        assert len(asks) <= 1, f"several AskBack in one call: {asks}"
        if not self.starved():
            assert not asks, f"{asks} but the pool is not starved"
            self.asked_at = self.recall_due = None
            return
        due = self.asked_at is None or self.now >= self.asked_at + RECALL_INTERVAL
        givers = self.givers()
        if asks:
            (ask,) = asks
            assert due, f"asked again at {self.now:g}, the last AskBack at {self.asked_at:g}"
            assert all(isinstance(h, Holder) and h.kind == "worker" for h in ask.holders), ask
            assert len(set(ask.holders)) == len(ask.holders), f"{ask} names a holder twice"
            assert set(ask.holders) == givers, f"{ask} but the workers holding are {givers}"
            self.asked_at, self.recall_due = self.now, self.now + RECALL_INTERVAL
        elif due:
            assert not givers, f"starved, {givers} hold leases, an AskBack is due: none came"
            self.recall_due = None  # nobody to ask: no wake-up for it

    def on_drained(self, d: Drained) -> None:
        ticket = d.ticket
        assert isinstance(ticket, str)
        assert ticket not in self.drained, f"{ticket} answered Drained twice"
        assert ticket in self.pending_drains, f"Drained for {ticket}, which never asked"
        assert self.closed or not self.held, f"Drained {ticket} with {len(self.held)} out"
        self.pending_drains.discard(ticket)
        self.drained.add(ticket)

    def on_create(self) -> None:
        assert not self.closed, "Create from a closed pool"
        if self.failing_since is not None:  # backing off: one probe, not before it is due
            assert self.pending_creates == 0, "a second Create while the factory fails"
            earliest = 0.5 * min(self.spec.create_backoff, self.spec.create_backoff_max)
            assert self.now >= self.failing_since + earliest, "Create before the backoff"
        self.pending_creates += 1

    def on_check(self, d: Check) -> None:
        """The resource goes to the best queued waiter, which leaves the queue."""
        assert self.HAS_CHECK, "Check from a pool without a check"
        self.assert_free(d.resource, "Check")
        assert d.slot not in self.pending_checks and d.slot not in self.pending_resets
        waiter = self.best_queued()
        assert waiter is not None, "Check with no queued waiter"
        del self.queued[waiter.ticket]
        self.in_check[waiter.ticket] = waiter
        self.pending_checks[d.slot] = d.resource
        self.check_for[d.slot] = waiter.ticket

    def on_reclaimed(self, d: Reclaimed) -> None:
        lease = d.lease
        assert self.held.get(lease.id) == lease, f"Reclaimed unheld {lease}"
        del self.held[lease.id]
        self.ended[lease.id] = "reclaimed"
        self.reclaims.append(d)

    def idle_resources(self) -> set[Any]:
        return self.alive - self.held_resources() - self.busy_resources()

    def check_destroy_reason(self, d: Destroy) -> None:
        spec, resource = self.spec, d.resource
        if d.reason == "idle":  # only above min_size, only after max_idle
            assert spec.max_idle is not None
            assert len(self.alive) > spec.min_size, "idle eviction below min_size"
            assert self.idle_since[resource] + spec.max_idle <= self.now, "evicted too early"
        elif d.reason == "lifetime":
            assert spec.max_lifetime is not None
            shortest = spec.max_lifetime * (1.0 - spec.lifetime_jitter)
            assert self.now >= self.created_at[resource] + shortest - 1e-9, "retired too early"
        elif d.reason == "closed":
            assert self.closed
        else:
            assert d.reason in (
                "broken",
                "check failed",
                "reset failed",
                "expired",
                "holder died",
                "pool stopped",
            ), d

    def on_grant(self, d: Grant, expected: tuple[int, Any] | None) -> None:
        ticket, lease = d.ticket, d.lease
        assert isinstance(ticket, int)
        assert ticket not in self.answered, f"ticket {ticket} answered twice"
        assert ticket not in self.cancelled, f"cancelled ticket {ticket} granted"
        if self.HAS_CHECK:
            assert expected is not None, f"Grant {ticket} not from a passed check"
            assert (ticket, lease.resource) == expected, f"Grant {d} but expected {expected}"
            waiter = self.in_check.pop(ticket)
        else:
            best = self.best_queued()
            assert best is not None and best.ticket == ticket, (
                f"Grant to {ticket} but the best queued waiter is {best}"
            )
            waiter = self.queued.pop(ticket)
        self.assert_free(lease.resource, "Grant")
        lifetime = self.spec.max_lifetime
        if lifetime is not None:
            born = self.created_at[lease.resource]
            assert born + lifetime > self.now, "granted a resource past its max_lifetime"
        assert lease.holder == waiter.holder
        assert lease.pool == "p" and lease.granted_at == self.now
        assert lease.id.startswith(f"p/{EPOCH}/")
        assert lease.id not in self.held and lease.id not in self.ended
        ttl = waiter.ttl if waiter.ttl is not None else self.spec.lease_ttl
        assert lease.expires_at == (None if ttl is None else self.now + ttl)
        self.held[lease.id] = lease
        self.answered.add(ticket)
        self.grants += 1

    def on_fail(self, d: Fail) -> None:
        ticket = d.ticket
        assert isinstance(ticket, int)
        assert ticket not in self.answered, f"ticket {ticket} answered twice"
        assert ticket not in self.cancelled, f"cancelled ticket {ticket} failed"
        waiter = self.all_waiters[ticket]
        if isinstance(d.error, AcquireTimeout):
            assert not self.closed
            assert self.now >= waiter.deadline, f"{ticket} timed out before its deadline"
            assert d.error.__cause__ is self.last_error
            self.timeouts += 1
        elif isinstance(d.error, PoolClosed):
            assert self.closed, f"{ticket} failed with {d.error!r} but the pool is open"
        else:  # its holder is gone: reclaim_holder drops what it was waiting for
            assert isinstance(d.error, LessorError)
            assert self.reclaiming == waiter.holder, f"{ticket} failed with {d.error!r}"
        self.queued.pop(ticket, None)
        self.in_check.pop(ticket, None)
        self.answered.add(ticket)

    # -- requests ----------------------------------------------------------------------

    @rule(
        holder=st.sampled_from(HOLDERS),
        # a burst of one to three Acquires, so that queues with ties and with several
        # priorities build up quickly; priority 0 is the most common
        priorities=st.lists(st.sampled_from([0, 0, 1, 2]), min_size=1, max_size=3),
        timeout=st.sampled_from([None, 2.0, 10.0, 30.0]),
        ttl=st.sampled_from([None, None, 1.0, 5.0]),
    )
    def acquire(
        self, holder: Holder, priorities: list[int], timeout: float | None, ttl: float | None
    ) -> None:
        for priority in priorities:
            self.acquire_one(holder, priority, timeout, ttl)

    def acquire_one(
        self, holder: Holder, priority: int, timeout: float | None, ttl: float | None
    ) -> None:
        ticket = next(self._tickets)
        before = self.pool.stats()
        limit = self.spec.max_waiting
        # max_waiting counts queued waiters only, not those whose resource is in a check
        full = bool(limit) and len(self.queued) >= limit
        try:
            out = self.pool.acquire(self.now, ticket, holder, timeout, priority, ttl)
        except PoolClosed:
            assert self.closed
            assert self.pool.stats() == before
            return
        except PoolExhausted:
            assert full, f"PoolExhausted with {len(self.queued)} queued, max_waiting {limit}"
            self.rejected += 1
            assert self.pool.stats() == _with(before, rejected=before.rejected + 1)
            return
        assert not self.closed
        waiter = Waiter(
            ticket,
            holder,
            priority,
            next(self._seqs),
            self.now + (self.spec.acquire_timeout if timeout is None else timeout),
            ttl,
        )
        self.all_waiters[ticket] = waiter
        self.queued[ticket] = waiter
        assert not full, f"admitted with {len(self.queued) - 1} queued, max_waiting {limit}"
        self.apply(out)

    def held_lease(self, data: st.DataObject) -> Lease:
        return data.draw(st.sampled_from(sorted(self.held.values(), key=lambda lz: lz.id)))

    @precondition(lambda self: self.held)
    @rule(data=st.data(), broken=st.booleans())
    def release(self, data: st.DataObject, broken: bool) -> None:
        lease = self.held_lease(data)
        out = self.pool.release(self.now, lease.id, lease.holder, broken)
        del self.held[lease.id]
        self.ended[lease.id] = "released"
        if broken:
            assert Destroy(lease.resource, "broken") in out
        elif self.has_reset and not self.closed:
            assert out[0] == Reset(out[0].slot, lease.resource)  # type: ignore[union-attr]
        self.apply(out)

    @rule(
        data=st.data(),
        kind=st.sampled_from(
            ["bad release", "renew", "cancel", "reclaim holder", "drain", "reclaim all"]
        ),
    )
    def disturb(self, data: st.DataObject, kind: str) -> None:
        """The less common requests, folded into one rule so that together they take
        about one step in eight and do not starve the pool of waiters and leases."""
        if kind == "renew" and self.held:
            self.renew(data, data.draw(st.sampled_from([0.5, 3.0]), label="ttl"))
        elif kind == "cancel" and self.all_waiters:
            self.cancel(data, data.draw(st.booleans(), label="late"))
        elif kind == "reclaim holder" and self.held:
            self.reclaim_holder(data)
        elif kind == "drain":
            self.await_drained(data)
        elif kind == "reclaim all" and self.held:
            self.reclaim_all()
        else:
            kinds = ["double", "reclaimed", "foreign", "unknown", "stale"]
            self.bad_release(data, data.draw(st.sampled_from(kinds), label="bad"))

    def renew(self, data: st.DataObject, ttl: float) -> None:
        lease = self.held_lease(data)
        renewed = self.pool.renew(self.now, lease.id, lease.holder, ttl)
        assert renewed.expires_at == self.now + ttl
        assert (renewed.id, renewed.resource, renewed.holder) == (
            lease.id,
            lease.resource,
            lease.holder,
        )
        self.held[lease.id] = renewed

    def release_refused(self, error: type[LessorError], lease_id: str, holder: str) -> None:
        before = self.pool.stats()
        leases = sorted(self.pool.leases(), key=lambda lz: lz.id)
        deadline = self.pool.next_deadline()
        with pytest.raises(error):
            self.pool.release(self.now, lease_id, holder)
        with pytest.raises(error):
            self.pool.renew(self.now, lease_id, holder, 1.0)
        assert self.pool.stats() == before
        assert sorted(self.pool.leases(), key=lambda lz: lz.id) == leases
        assert self.pool.next_deadline() == deadline

    def bad_release(self, data: st.DataObject, kind: str) -> None:
        """Release (and renew) a lease the caller may not use: refused, nothing changes."""
        holder = data.draw(st.sampled_from(HOLDERS), label="holder")
        ended = {
            v: sorted(k for k, w in self.ended.items() if w == v) for v in ("released", "reclaimed")
        }
        if kind == "double" and ended["released"]:
            lease_id = data.draw(st.sampled_from(ended["released"]), label="lease_id")
            self.release_refused(DoubleRelease, lease_id, holder)
        elif kind == "reclaimed" and ended["reclaimed"]:
            lease_id = data.draw(st.sampled_from(ended["reclaimed"]), label="lease_id")
            self.release_refused(ExpiredLease, lease_id, holder)
        elif kind == "foreign" and self.held:
            lease = self.held_lease(data)
            other = data.draw(st.sampled_from([h for h in HOLDERS if h != lease.holder]))
            self.release_refused(ForeignLease, lease.id, other)
        elif kind == "stale":
            n = data.draw(st.integers(1, 5), label="n")
            self.release_refused(StaleLease, f"p/{PAST_EPOCH}/{n}", holder)
        else:
            lease_id = data.draw(
                st.sampled_from(
                    [f"p/{EPOCH}/100000", "p/other/1", "q/e2/1", "garbage", "", f"p/{EPOCH}/x"]
                ),
                label="lease_id",
            )
            self.release_refused(UnknownLease, lease_id, holder)

    def cancel(self, data: st.DataObject, late: bool) -> None:
        """The caller gave up: a waiting ticket, or (late) one already answered."""
        pending = sorted(t for t in self.all_waiters if self.active(t))
        answered = sorted(t for t in self.all_waiters if not self.active(t))
        choices = (answered or pending) if late else (pending or answered)
        ticket = data.draw(st.sampled_from(choices), label="ticket")
        before = self.pool.stats()
        out = self.pool.cancel(self.now, ticket)
        assert all(isinstance(d, AskBack) for d in out), out  # still starved: ask again
        if self.active(ticket):
            self.cancelled.add(ticket)
            self.queued.pop(ticket, None)
            self.in_check.pop(ticket, None)
            assert self.pool.stats().waiting == before.waiting - 1
        else:
            assert self.pool.stats() == before
        self.apply(out)

    def reclaim_holder(self, data: st.DataObject) -> None:
        """A holder with leases died: its leases come back, its waiters are dropped."""
        holder = data.draw(st.sampled_from(sorted({lz.holder for lz in self.held.values()})))
        mine = [lz for lz in self.held.values() if lz.holder == holder]
        assert sorted(self.pool.leases_of(BY_TEXT[holder])) == sorted(lz.id for lz in mine)
        out = self.pool.reclaim_holder(self.now, BY_TEXT[holder], "holder died")
        reclaimed = [d for d in out if isinstance(d, Reclaimed)]
        assert sorted(reclaimed, key=lambda r: r.lease.id) == sorted(
            (Reclaimed(lz, "holder died") for lz in mine), key=lambda r: r.lease.id
        )
        destroyed = {
            d.resource for d in out if isinstance(d, Destroy) and d.reason == "holder died"
        }
        if not self.REUSABLE:
            assert destroyed == {lz.resource for lz in mine}
        else:
            assert destroyed == set()
        self.reclaiming = holder
        try:
            self.apply(out)
        finally:
            self.reclaiming = None
        assert self.pool.leases_of(BY_TEXT[holder]) == []
        left = [t for t in [*self.queued, *self.in_check] if self.all_waiters[t].holder == holder]
        assert left == [], f"{holder} is gone but still waits for {left}"

    @precondition(lambda self: self.held or self.ended)
    @rule(data=st.data())
    def refuse(self, data: st.DataObject) -> None:
        """A grant whose caller was gone (its reply refused it) comes back: to idle, no
        reset. One already back (released, reclaimed) or a wrong holder: nothing."""
        sometimes = st.sampled_from([False, False, True])
        late = not self.held or (bool(self.ended) and data.draw(sometimes, label="late"))
        if late:
            before, deadline = self.pool.stats(), self.pool.next_deadline()
            lease_id = data.draw(st.sampled_from(sorted(self.ended)), label="lease_id")
            holder = data.draw(st.sampled_from(HOLDERS), label="holder")
            assert self.pool.refused(self.now, lease_id, holder) == []
            assert self.pool.stats() == before and self.pool.next_deadline() == deadline
            return
        lease = self.held_lease(data)
        if data.draw(sometimes, label="wrong holder"):
            other = data.draw(st.sampled_from([h for h in HOLDERS if h != lease.holder]))
            before = self.pool.stats()
            assert self.pool.refused(self.now, lease.id, other) == []
            assert self.pool.stats() == before
            return
        out = self.pool.refused(self.now, lease.id, lease.holder)
        del self.held[lease.id]
        self.ended[lease.id] = "released"
        assert not any(isinstance(d, (Reset, Reclaimed, Expired)) for d in out), out
        gone = [d for d in out if isinstance(d, Destroy) and d.resource == lease.resource]
        assert all(d.reason in ("lifetime", "closed") for d in gone), gone
        self.apply(out)
        if not gone:  # idle, or straight on to the next waiter (granted or in its check)
            assert lease.resource not in self.pending_resets.values(), f"{lease} was reset"
            assert (
                lease.resource in self.idle_resources()
                or lease.resource in self.held_resources()
                or lease.resource in self.pending_checks.values()
            ), f"refused {lease} neither idle nor handed on: {out}"

    def await_drained(self, data: st.DataObject) -> None:
        """Drain: answered at once if no lease is out, else once the last one ends."""
        ticket = f"d{next(self._drain_tickets)}"
        out = self.pool.await_drained(self.now, ticket)
        if self.closed or not self.held:
            assert out == [Drained(ticket)], out
            self.drained.add(ticket)
        else:
            assert out == [], out
            self.pending_drains.add(ticket)

    def reclaim_all(self) -> None:
        """The shutdown deadline passed: every lease is taken back."""
        taken, out = self.pool.reclaim_all(self.now, "pool stopped")
        assert sorted(taken, key=lambda lz: lz.id) == sorted(
            self.held.values(), key=lambda lz: lz.id
        )
        assert [d.lease for d in out if isinstance(d, Reclaimed)] == taken
        self.apply(out)

    # -- slow work coming back ---------------------------------------------------------

    @precondition(lambda self: self.pending_creates)
    @rule(ok=OUTCOME)
    def finish_create(self, ok: bool) -> None:
        self.pending_creates -= 1
        if ok:
            resource = f"r{next(self._names)}"
            self.alive.add(resource)
            self.created_at[resource] = self.now
            self.failing_since = None
            self.last_error = None
            self.apply(self.pool.created(self.now, resource))
        else:
            error = RuntimeError(f"factory down #{next(self._names)}")
            self.failing_since = self.now
            self.last_error = error
            out = self.pool.create_failed(self.now, error)
            assert not any(isinstance(d, (Fail, Create)) for d in out)
            self.apply(out)

    @precondition(lambda self: self.pending_checks)
    @rule(data=st.data(), ok=OUTCOME)
    def finish_check(self, data: st.DataObject, ok: bool) -> None:
        slot = data.draw(st.sampled_from(sorted(self.pending_checks)))
        resource = self.pending_checks.pop(slot)
        ticket = self.check_for.pop(slot)
        waiter = self.all_waiters[ticket]
        still_waiting = self.active(ticket)
        if still_waiting:
            assert self.in_check[ticket] is waiter
        out = self.pool.checked(self.now, slot, ok)
        # a resource whose lifetime ended during its check is retired, not granted
        retired = Destroy(resource, "lifetime") in out
        if ok and self.spec.max_lifetime is not None:
            age = self.now - self.created_at[resource]
            shortest = self.spec.max_lifetime * (1.0 - self.spec.lifetime_jitter)
            assert not retired or age >= shortest - 1e-9, "retired too early"
            assert retired or age < self.spec.max_lifetime, "past max_lifetime, not retired"
        expected = None
        if ok and not retired:
            if still_waiting:
                expected = (ticket, resource)
        else:
            assert retired or Destroy(resource, "check failed") in out
            if still_waiting:  # back in the queue, in its old place
                del self.in_check[ticket]
                self.queued[ticket] = waiter
        self.apply(out, checked=expected)

    @precondition(lambda self: self.pending_resets)
    @rule(data=st.data(), ok=OUTCOME)
    def finish_reset(self, data: st.DataObject, ok: bool) -> None:
        slot = data.draw(st.sampled_from(sorted(self.pending_resets)))
        resource = self.pending_resets.pop(slot)
        out = self.pool.reset_done(self.now, slot, ok)
        if not ok:
            assert Destroy(resource, "reset failed") in out
        self.apply(out)

    # -- time --------------------------------------------------------------------------

    def tick_at(self, now: float) -> None:
        assert now >= self.now
        self.now = self.ticked_at = now
        self.apply(self.pool.tick(now))
        self.pool.take_alarm()  # after a tick the owner takes the full look instead
        nd = self.pool.next_deadline()
        self.armed = float("inf") if nd is None else nd
        # everything due by now was done
        for ticket in [*self.queued, *self.in_check]:
            assert self.all_waiters[ticket].deadline > now, f"{ticket} outlived its deadline"
        for lease in self.held.values():
            assert lease.expires_at is None or lease.expires_at > now, f"{lease} not reclaimed"
        max_idle = self.spec.max_idle
        if max_idle is not None and len(self.idle_since) > self.spec.min_size:
            oldest = min(self.idle_since.values())
            assert oldest + max_idle > now, "idle resource above min_size outlived max_idle"
        nd = self.pool.next_deadline()
        assert nd is None or nd > now, f"next_deadline {nd} <= now {now} right after tick"

    @rule(
        data=st.data(),
        dt=st.sampled_from([0.0, 0.1, 0.5, 1.0, 3.0, "next deadline"]),
        settle=st.booleans(),
        late=st.sampled_from([False, False, True]),
    )
    def advance(self, data: st.DataObject, dt: float | str, settle: bool, late: bool) -> None:
        """Move the clock and tick: by ``dt``, or to exactly ``next_deadline()``. With
        ``settle``, the owner first finishes some of the slow work in flight (so the
        pool makes progress even in runs where the finish_* rules are rarely drawn).
        With ``late``, the clock moves but the owner's timer has not fired yet: no tick,
        so leases, idle and lifetime deadlines may pass unnoticed until the next one; the
        clock then stays short of every waiter's deadline (see the ordering rule)."""
        if settle:
            for _ in range(4):
                if self.pending_creates:
                    self.finish_create(data.draw(OUTCOME, label="create ok"))
                elif self.pending_checks:
                    self.finish_check(data, data.draw(OUTCOME, label="check ok"))
                elif self.pending_resets:
                    self.finish_reset(data, data.draw(OUTCOME, label="reset ok"))
        if late:
            target = self.now + (dt if isinstance(dt, float) else 1.0)
            waiting = [self.all_waiters[t].deadline for t in [*self.queued, *self.in_check]]
            if waiting and target >= min(waiting):
                target = self.now + (min(waiting) - self.now) / 2
            self.now = target
        elif dt == "next deadline":
            nd = self.pool.next_deadline()
            self.tick_at(self.now if nd is None else max(self.now, nd))
        else:
            assert isinstance(dt, float)
            self.tick_at(self.now + dt)

    # -- closing -----------------------------------------------------------------------

    @precondition(
        lambda self: (
            not self.closed and self.close_after is not None and self.steps >= self.close_after
        )
    )
    @rule()
    def close(self) -> None:
        pending = {t for t in [*self.queued, *self.in_check] if self.active(t)}
        drains = set(self.pending_drains)
        self.closed = True
        out = self.pool.close(self.now)
        assert {d.ticket for d in out if isinstance(d, Fail)} == pending
        assert {d.ticket for d in out if isinstance(d, Drained)} == drains
        self.apply(out)
        self.queued.clear()
        assert self.pool.stats().idle == 0

    # -- invariants --------------------------------------------------------------------

    @invariant()
    def the_owners_timer_is_never_armed_too_late(self) -> None:
        """What PoolActor relies on: arming with ``take_alarm`` after each call (O(1))
        wakes it no later than ``next_deadline`` (the full look) would."""
        if self.core is None:
            return
        alarm = self.pool.take_alarm()
        if alarm is not None:
            self.armed = min(self.armed, alarm)
        nd = self.pool.next_deadline()
        assert nd is None or self.armed <= nd, f"armed for {self.armed}, next deadline {nd}"

    @invariant()
    def books_agree(self) -> None:
        if self.core is None:
            return
        self.steps += 1  # one call per step: the clock for close_after
        s = self.pool.stats()
        max_size = self.spec.max_size
        assert s.idle + s.checking + s.leased == s.size
        assert s.size + s.creating <= max_size
        assert s.creating == self.pending_creates
        assert s.size == len(self.alive)
        assert s.leased == len(self.held)
        assert s.checking == len(self.pending_checks) + len(self.pending_resets)
        held = self.held_resources()
        assert len(held) == len(self.held), "a resource is leased twice"
        assert not held & self.busy_resources()
        assert s.idle == len(self.alive - held - self.busy_resources())
        assert {lz.id: lz for lz in self.pool.leases()} == self.held
        assert self.idle_since.keys() == self.idle_resources()
        if self.spec.max_lifetime is not None and self.ticked_at == self.now:
            for resource in self.idle_since:
                assert self.created_at[resource] + self.spec.max_lifetime > self.now, (
                    f"{resource} is idle past its max_lifetime"
                )
        active_in_check = sum(1 for t in self.in_check if self.active(t))
        assert s.waiting == len(self.queued) + active_in_check
        # counters
        assert s.acquired == self.grants
        assert s.released + s.reclaimed + s.leased == s.acquired
        assert s.reclaimed == len(self.reclaims)
        assert s.expired == sum(1 for r in self.reclaims if r.why == "expired")
        assert s.created - s.destroyed == s.size
        assert s.timeouts == self.timeouts
        assert s.rejected == self.rejected

    @invariant()
    def no_stall(self) -> None:
        """Queued waiters never sit next to an idle resource, and the pool asks for
        resources when it has room and demand, unless it is backing off."""
        if self.core is None or self.closed:
            return
        s = self.pool.stats()
        if self.queued:
            assert s.idle == 0, "a waiter is queued while a resource is idle"
        room = self.spec.max_size - s.size - s.creating
        short = max(
            len(self.queued) - s.creating - len(self.pending_resets),
            self.spec.min_size - s.size - s.creating,
        )
        if room > 0 and short > 0:
            assert self.failing_since is not None, "demand and room but no Create"
            if s.creating == 0:  # backing off: a retry must be scheduled
                nd = self.pool.next_deadline()
                assert nd is not None
                assert nd <= self.failing_since + self.spec.create_backoff_max

    @invariant()
    def deadlines_cover_work(self) -> None:
        if self.core is None or self.closed:
            return
        nd = self.pool.next_deadline()
        due = [self.all_waiters[t].deadline for t in [*self.queued, *self.in_check]]
        due += [lz.expires_at for lz in self.held.values() if lz.expires_at is not None]
        if self.recall_due is not None:  # some worker was asked: ask again then
            due.append(self.recall_due)
        if due:
            assert nd is not None and nd <= min(due)
        if (
            not due
            and self.spec.max_idle is None
            and self.spec.max_lifetime is None
            and self.failing_since is None
        ):
            assert nd is None


def _with(stats: PoolStats, **changes: Any) -> PoolStats:
    return PoolStats(**{**stats.as_dict(), **changes})


# -- variants ------------------------------------------------------------------------------

FAST = settings(
    max_examples=100,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
SOAK = settings(
    max_examples=600,
    stateful_step_count=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class PlainPool(PoolModel):
    HAS_CHECK, REUSABLE = False, False


class ReusablePool(PoolModel):
    HAS_CHECK, REUSABLE = False, True


class CheckedPool(PoolModel):
    HAS_CHECK, REUSABLE = True, False


class CheckedReusablePool(PoolModel):
    HAS_CHECK, REUSABLE = True, True


VARIANTS = [PlainPool, ReusablePool, CheckedPool, CheckedReusablePool]
IDS = ["plain", "reusable", "check", "check+reusable"]


@pytest.mark.parametrize("machine", VARIANTS, ids=IDS)
def test_pool_core_state_machine(machine: type[PoolModel]) -> None:
    run_state_machine_as_test(machine, settings=FAST)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("machine", VARIANTS, ids=IDS)
def test_pool_core_state_machine_soak(
    machine: type[PoolModel], request: pytest.FixtureRequest
) -> None:
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("soak test: run with -m slow")
    run_state_machine_as_test(machine, settings=SOAK)
