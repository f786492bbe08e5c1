"""The parts of one pool and how they move together; :class:`PoolCore` drives them.

``PoolState`` owns the parts (wait queue, resources, ledger, backoff, recall) and
the moves every call ends with: serve waiters, plan creations, grant, reclaim, ask
for leases back, answer drain waiters. It makes no decision of its own; the calls
an owner makes are :class:`lessor.core.pool.core.PoolCore`'s.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence

from lessor.core.breaker import refusal
from lessor.core.decisions import Create, Decision, Drained, Grant, Reclaimed
from lessor.core.pool.backoff import Backoff
from lessor.core.pool.fairshare import FairShare
from lessor.core.pool.ledger import Ledger, Loan
from lessor.core.pool.readiness import Readiness, not_ready
from lessor.core.pool.recall import Recall
from lessor.core.pool.slots import Slot, Slots
from lessor.core.pool.stats import Counters, count_reclaim, snapshot
from lessor.core.pool.waitqueue import Waiter, WaitQueue
from lessor.errors import AcquireTimeout, PoolClosed, ShuttingDown
from lessor.holder import Holder
from lessor.protocol.messages import Lease, PoolStats
from lessor.specs import PoolSpec

__all__ = ["PoolState"]

_CREATE = Create()


class PoolState:
    """Bookkeeping for one pool incarnation.

    ``epoch`` makes its lease ids unique across restarts; ``past_epochs`` are the
    earlier incarnations' epochs, whose leases are reported as stale, not unknown.
    ``orphans`` are leases a crashed incarnation left with live holders (see
    :mod:`lessor.core.pool.ledger`); ``paused``, the holders whose admission it had
    paused (see :meth:`PoolCore.admission`).
    """

    def __init__(
        self,
        spec: PoolSpec,
        *,
        epoch: str,
        has_check: bool = False,
        has_reset: bool = False,
        reusable: bool = False,
        rng: random.Random | None = None,
        past_epochs: frozenset[str] = frozenset(),
        orphans: Sequence[Lease] = (),
        paused: Mapping[str, str] | None = None,
        fair_share: bool = False,
    ) -> None:
        self.spec = spec
        self.epoch = epoch
        self._has_check = has_check
        self._has_reset = has_reset
        self._reusable = reusable
        rng = rng or random.Random()
        self.counters = Counters()
        self._slots = Slots(spec, rng, self.counters)
        self._queue = WaitQueue()
        self._ledger = Ledger(spec.name, epoch, past_epochs, orphans)
        self._backoff = Backoff(spec.create_backoff, spec.create_backoff_max, rng)
        self._recall = Recall()
        self._ready = Readiness()  # wait(): callers waiting for min_size resources
        self._drain_tickets: list[object] = []
        self._admitting = True
        #: (breaker, state, until) while the pool's breaker is open: no Acquire, no create
        self._gate: tuple[str, str, float | None] | None = None
        #: Holders granted nothing new for now (the memory manager's Admission), with
        #: why; the key "" pauses everyone. ``_pausing``: any pause at all (the hot path).
        self._paused: dict[str, str] = dict(paused or {})
        self._pausing = bool(self._paused)
        #: A global quota's fair shares (``fair_share``; see :mod:`.fairshare`), else None.
        self._fair = FairShare(spec.max_size) if fair_share else None
        self._shed_to = 0  # ``shed``: destroy on release until counters.destroyed reaches it

    # -- views -------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._slots.closed

    @property
    def size(self) -> int:
        return len(self._slots)

    @property
    def idle(self) -> int:
        return len(self._slots.idle)

    @property
    def checking(self) -> int:
        """Resources in a check (before a borrow) or a reset (after a return)."""
        return len(self._slots.checking)

    @property
    def leased(self) -> int:
        return len(self._ledger)

    @property
    def creating(self) -> int:
        return self._slots.creating

    @property
    def waiting(self) -> int:
        return self._queue.waiting

    @property
    def orphans(self) -> int:
        return self._ledger.orphans

    def leases(self) -> list[Lease]:
        return [loan.lease for loan in self._ledger.loans()]

    def handover(self) -> list[Lease]:
        """Leases still out (this incarnation's and inherited ones), for the next incarnation."""
        return [*self.leases(), *self._ledger.orphan_leases()]

    def holders(self) -> list[Holder]:
        """Everyone who holds a lease of this pool now, orphans of a past incarnation too."""
        return self._ledger.holders()

    def leases_of(self, holder: Holder) -> list[str]:
        return self._ledger.leases_of(holder)

    @property
    def exhausted(self) -> bool:
        """Nothing idle and no room to make more: a new Acquire has to wait for a release."""
        slots = self._slots
        used = len(slots) + slots.creating + self._ledger.orphans
        return not slots.idle and used >= self.spec.max_size

    @property
    def starved(self) -> bool:
        """Acquires wait and only a release can serve them: time to ask holders to give back.

        Waiters that resources being made right now will serve do not count, nor do
        waiters whose admission is paused.
        """
        return self.exhausted and self._admitted_waiting() > self._slots.creating

    @property
    def paused(self) -> dict[str, str]:
        """Holders whose admission is paused, with why ("" is everyone)."""
        return dict(self._paused)

    def admits(self, holder: str) -> bool:
        """Whether ``holder`` may be granted a new lease now."""
        return not self._pausing or ("" not in self._paused and holder not in self._paused)

    def _admitted_waiting(self) -> int:
        queued = self._queue.queued
        if not self._pausing:
            return len(queued)
        if "" in self._paused:
            return 0
        return sum(1 for w in queued.values() if w.holder not in self._paused)

    def stats(self) -> PoolStats:
        return snapshot(
            self.spec.name,
            self.counters,
            size=self.size,
            idle=self.idle,
            leased=self.leased,
            checking=self.checking,
            creating=self.creating,
            waiting=self.waiting,
            holders=self._ledger.held(),
        )

    # -- internals ---------------------------------------------------------------------

    def _settle(self, now: float, out: list[Decision]) -> None:
        """After every change: serve waiters, ask for leases back, answer drain and
        readiness waiters."""
        queued, slots = self._queue.queued, self._slots
        if queued or len(slots) + slots.creating < self.spec.min_size:
            self._dispatch(now, out)
        # (the common Release skips all of it: nobody waits, nothing to make or ask)
        if queued or self._recall.asked_at is not None:
            self._update_recall(now, out)
        if self._drain_tickets and self._drained:
            out += [Drained(ticket) for ticket in self._drain_tickets]
            self._drain_tickets.clear()
        if self._ready.waiters and len(slots) >= self.spec.min_size:
            self._ready.fill(len(slots), out)

    @property
    def _drained(self) -> bool:
        """No lease out, not even an orphan."""
        return not len(self._ledger) and not self._ledger.orphans

    def _update_recall(self, now: float, out: list[Decision]) -> None:
        if self._queue.queued and not self._slots.closed and self.starved:
            self._recall.update(now, self._ledger.holders, out)
            if self._fair is not None:
                self._fair.update(now, self._ledger, self._queue.queued.values(), self.admits, out)
        else:
            self._recall.stop()

    def _dispatch(self, now: float, out: list[Decision]) -> None:
        """Match queued waiters with idle resources, then plan creations for the rest."""
        queue, slots = self._queue, self._slots
        admits: Callable[[str], bool] | None = self.admits if self._pausing else None
        fair = self._fair
        while queue.queued and slots.idle:
            if fair is not None:  # the fewest tokens first, not the oldest Acquire
                admits = fair.first(now, self._ledger, queue.queued.values(), self.admits)
            waiter = queue.pop_best(admits)
            if waiter is None:  # everyone queued is paused
                break
            slot = slots.take_idle(now, out)
            if slot is None:
                queue.requeue(waiter)
                break
            if self._has_check:
                queue.serve(slot.id, waiter)
                slots.check(slot, out)
            else:
                self._grant_waiter(now, waiter, slot, out)
        self._plan_creates(now, out)

    def _demand(self) -> int:
        slots = self._slots
        resetting = len(slots.checking) - self._queue.serving
        for_waiters = self._admitted_waiting() - slots.creating - resetting
        for_min = self.spec.min_size - len(slots) - slots.creating
        return max(for_waiters, for_min)

    def _plan_creates(self, now: float, out: list[Decision]) -> None:
        if self._slots.closed or self._gate is not None:
            return
        slots = self._slots
        room = self.spec.max_size - len(slots) - slots.creating - self._ledger.orphans
        if room <= 0:
            return
        want = self._demand()
        if want <= 0:
            return
        n = min(self._backoff.allowed(now, slots.creating, want), room)
        if n > 0:
            slots.creating += n
            out.extend([_CREATE] * n)

    def _grant(
        self,
        now: float,
        ticket: object,
        holder: Holder,
        ttl: float | None,
        enqueued_at: float,
        slot: Slot,
        out: list[Decision],
    ) -> None:
        if ttl is None:
            ttl = self.spec.lease_ttl
        expires_at = None if ttl is None else now + ttl
        contended = bool(self._queue.queued)  # others still wait after this grant
        lease = self._ledger.lend(now, slot.resource, holder, expires_at, contended, slot.id)
        self.counters.acquired += 1
        self.counters.wait_ms.add((now - enqueued_at) * 1000.0)
        out.append(Grant(ticket, lease))

    def _grant_waiter(self, now: float, waiter: Waiter, slot: Slot, out: list[Decision]) -> None:
        self._grant(now, waiter.ticket, waiter.holder, waiter.ttl, waiter.enqueued_at, slot, out)

    def _reclaim(self, now: float, loan: Loan, why: str, out: list[Decision]) -> None:
        slots, lease = self._slots, loan.lease
        slot = slots.all[loan.slot]
        self._ledger.end(loan, why)
        out.append(Reclaimed(lease, why))
        self.counters.reclaimed += 1
        count_reclaim(self.counters, why)
        self.counters.hold_ms.add((now - lease.granted_at) * 1000.0)
        if self._shed_to > self.counters.destroyed:  # its quota is wanted elsewhere, as on release
            slots.destroy(slot, "shed", out)
        elif self._reusable and self._has_reset and not self._slots.closed:
            slots.reset(slot, out)  # like any returned resource
        elif self._reusable:
            slots.to_idle(now, slot, out)
        else:  # the holder may still be touching it
            slots.destroy(slot, why, out)

    def _refuse_if_shut(self, now: float) -> None:
        """Raise what any request gets from a closed, draining or breaker-gated pool."""
        if self._slots.closed:
            raise PoolClosed(f"pool {self.spec.name!r} is closed")
        if not self._admitting:
            raise ShuttingDown(f"pool {self.spec.name!r} is shutting down")
        if self._gate is not None:
            raise refusal(*self._gate, now)

    def _not_ready(self, timeout: float) -> AcquireTimeout:
        """A readiness wait of ``timeout`` s ran out (see :mod:`.readiness`)."""
        spec = self.spec
        return not_ready(spec.name, self.size, spec.min_size, timeout, self._backoff.last_error)

    def _timeout_error(self, waiter: Waiter) -> AcquireTimeout:
        text = (
            f"no resource from pool {self.spec.name!r} within {waiter.timeout:g}s "
            f"(size {len(self._slots)}/{self.spec.max_size}, {self.leased} leased)"
        )
        if not self.admits(waiter.holder):  # say why it got nothing: not a slow pool
            why = self._paused.get(waiter.holder) or self._paused.get("") or "paused"
            text += f"; admission is paused by the memory manager: {why}"
        cause = self._backoff.last_error
        if cause is not None:  # name it: "password authentication failed" beats a bare timeout
            text += f"; the factory is failing: {type(cause).__name__}: {cause}".rstrip()
        err = AcquireTimeout(text)
        err.__cause__ = cause
        return err
