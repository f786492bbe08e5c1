"""PoolCore: the pool as a pure state machine, no threads, no I/O, no clock.

Every call takes ``now`` and returns decisions (see :mod:`lessor.core.decisions`)
that the owner carries out in order, feeding the outcome of slow work back in
(``created``, ``create_failed``, ``checked``, ``reset_done``). Requests the pool
refuses outright raise instead.

Every resource is in one state: idle, checking (a check before a borrow or a
reset after a return, off the owner's thread) or leased; ``creating`` counts
resources on their way in. ``size = idle + checking + leased`` and
``size + creating + orphans <= max_size`` always hold. The parts and the moves
every call ends with are in :mod:`.state`.

Decisions the owner does not make itself:

* **Recall**: ``AskBack`` while the pool is starved (see :mod:`.recall`).
* **Drain**: ``await_drained`` is answered with ``Drained`` at once if no lease (and
  no orphan) is out, else by whichever call ends the last one, or by ``close``.
* **Cancel versus grant**: a caller that gives up cancels its reply object first,
  and the reply's single claim settles the race. If the cancel won, ``cancel``
  drops the queued request and any grant made for it is refused by the reply; a
  grant that won the claim but was never taken comes back through ``refused``,
  like a release that cannot fail.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from lessor.core.breaker import refusal
from lessor.core.decisions import AskBack, Decision, Destroy, Drained, Expired, Fail, Reclaimed
from lessor.core.pool.ledger import foreign
from lessor.core.pool.recall import gives_back
from lessor.core.pool.state import PoolState
from lessor.core.pool.trying import refuse_unless_free
from lessor.errors import LessorError, PoolClosed, PoolExhausted
from lessor.holder import Holder
from lessor.protocol.messages import Lease

__all__ = ["PoolCore"]

_INF = float("inf")


class PoolCore(PoolState):
    """Bookkeeping for one pool incarnation: the calls its owner makes.

    Construction (epochs, orphans, factory capabilities) is :class:`PoolState`'s.
    """

    # -- requests ----------------------------------------------------------------------

    def start(self, now: float) -> list[Decision]:
        """Pre-warm to ``min_size``."""
        out: list[Decision] = []
        self._plan_creates(now, out)
        return out

    def acquire(
        self,
        now: float,
        ticket: object,
        holder: Holder,
        timeout: float | None = None,
        priority: int = 0,
        ttl: float | None = None,
    ) -> list[Decision]:
        """Queue a request for a lease; answered by a Grant or Fail for ``ticket``.
        ``timeout=0`` is a try: never waits for a release (see :mod:`.trying`)."""
        self._refuse_if_shut(now)
        queue = self._queue
        if ticket in queue.queued:
            raise ValueError(f"ticket {ticket!r} is already waiting")
        out: list[Decision] = []
        # The common case, served at once: nobody (admitted) waits ahead of it.
        if not self._has_check and (
            not queue.queued
            if not self._pausing
            else self.admits(holder) and not self._admitted_waiting()
        ):
            slot = self._slots.take_idle(now, out)
            if slot is not None:
                self._grant(now, ticket, holder, ttl, now, slot, out)
                return out
        if timeout == 0:  # a try that the fast path could not serve
            refuse_unless_free(self, holder)
            timeout = None  # it waits only for what is on its way to it
        limit = self.spec.max_waiting
        # Queued ones, not those already in a Check; paused ones wait apart.
        if limit and self._admitted_waiting() >= limit:
            self.counters.rejected += 1
            raise PoolExhausted(
                f"pool {self.spec.name!r} already has {limit} waiting (max_waiting)"
            )
        if timeout is None:
            timeout = self.spec.acquire_timeout
        queue.add(now, ticket, holder, priority, timeout, ttl)
        self._settle(now, out)
        return out

    def wait(self, now: float, ticket: object, timeout: float) -> list[Decision]:
        """Answer ``ticket`` with Filled once the pool holds ``min_size`` resources, or
        fail it at ``now + timeout`` (see :mod:`.readiness`)."""
        self._refuse_if_shut(now)  # nothing would fill it
        self._ready.add(now, ticket, timeout)
        out: list[Decision] = []
        self._settle(now, out)  # answers it at once if the pool holds them already
        return out

    def cancel(self, now: float, ticket: object) -> list[Decision]:
        """The caller gave up waiting (its reply was cancelled first): drop its request."""
        self._queue.cancel(ticket)
        self._ready.waiters.pop(ticket, None)  # or a wait(): not kept till its deadline
        out: list[Decision] = []
        self._update_recall(now, out)  # maybe no longer starved
        return out

    def release(
        self, now: float, lease_id: str, holder: Holder, broken: bool = False
    ) -> list[Decision]:
        """Take a lease back. A bad id or holder raises a LeaseError and changes nothing."""
        loan = self._ledger.get(lease_id)
        if loan is None:
            return self._release_orphan(now, lease_id, holder)
        if loan.holder != holder:
            raise foreign(lease_id, holder)
        slots = self._slots
        slot = slots.all[loan.slot]
        self._ledger.end(loan, "released")
        c = self.counters
        c.released += 1
        c.hold_ms.add((now - loan.lease.granted_at) * 1000.0)
        if self._fair is not None:
            self._fair.released(holder)
        out: list[Decision] = []
        if broken:
            c.broken += 1
            slots.destroy(slot, "broken", out)
        elif self._shed_to > c.destroyed:  # its quota is wanted elsewhere (see ``shed``)
            slots.destroy(slot, "shed", out)
        elif self._has_reset and not self._slots.closed:
            slots.reset(slot, out)
        else:
            slots.to_idle(now, slot, out)
        self._settle(now, out)
        return out

    def _release_orphan(self, now: float, lease_id: str, holder: Holder) -> list[Decision]:
        orphan = self._ledger.take_orphan(lease_id, holder)
        if orphan is None:
            raise self._ledger.error(lease_id)
        out: list[Decision] = [Destroy(orphan.resource, "released after a restart")]
        self._settle(now, out)
        return out

    def refused(self, now: float, lease_id: str, holder: str) -> list[Decision]:
        """A grant its caller never took (its reply refused it): back to idle, never raises.

        ``holder`` is the lease's own. If the lease was reclaimed meanwhile (its holder
        died, it expired, the pool stopped), there is nothing left to do. The resource
        never reached anyone, so it is not reset.
        """
        loan = self._ledger.get(lease_id)
        if loan is None or loan.holder != holder:
            return []
        self._ledger.end(loan, "released")
        self.counters.released += 1
        out: list[Decision] = []
        self._slots.to_idle(now, self._slots.all[loan.slot], out)
        self._settle(now, out)
        return out

    def renew(self, now: float, lease_id: str, holder: Holder, ttl: float) -> Lease:
        """Move a lease's expiry to ``now + ttl``."""
        loan = self._ledger.held_by(lease_id, holder)
        lease = replace(loan.lease, expires_at=now + ttl)
        self._ledger.renew(loan, lease)
        return lease

    # -- outcomes of slow work -----------------------------------------------------------

    def created(self, now: float, resource: Any) -> list[Decision]:
        self._backoff.succeeded()
        slot = self._slots.add(now, resource)
        out: list[Decision] = []
        self._slots.to_idle(now, slot, out)
        self._settle(now, out)
        return out

    def create_failed(self, now: float, error: BaseException) -> list[Decision]:
        """Back off (see :mod:`lessor.core.pool.backoff`); waiters stay queued."""
        self._slots.creating -= 1
        self._backoff.failed(now, error)
        self.counters.factory_errors += 1
        out: list[Decision] = []
        self._settle(now, out)
        return out

    def checked(self, now: float, slot_id: int, ok: bool) -> list[Decision]:
        slots = self._slots
        slot = slots.checking.pop(slot_id)
        waiter = self._queue.served(slot_id)  # None if it gave up or timed out meanwhile
        out: list[Decision] = []
        if not ok or slot.retire_at <= now:  # failed, or its lifetime ended during the check
            if not ok:
                self.counters.check_failures += 1
            slots.destroy(slot, "lifetime" if ok else "check failed", out)
            if waiter is not None:
                self._queue.requeue(waiter)
        elif waiter is not None and not self.admits(waiter.holder):  # paused meanwhile
            self._queue.requeue(waiter)
            slots.to_idle(now, slot, out)
        elif waiter is not None:
            self._grant_waiter(now, waiter, slot, out)
        else:
            slots.to_idle(now, slot, out)
        self._settle(now, out)
        return out

    def reset_done(self, now: float, slot_id: int, ok: bool) -> list[Decision]:
        slots = self._slots
        slot = slots.checking.pop(slot_id)
        out: list[Decision] = []
        if ok:
            slots.to_idle(now, slot, out)
        else:
            slots.destroy(slot, "reset failed", out)
        self._settle(now, out)
        return out

    # -- time --------------------------------------------------------------------------

    def tick(self, now: float) -> list[Decision]:
        """Time out waiters, reclaim expired leases, evict idle and retired resources,
        and ask for leases back again if the pool is still starved."""
        out: list[Decision] = []
        for waiter in self._queue.expire(now):
            self.counters.timeouts += 1
            out.append(Fail(waiter.ticket, self._timeout_error(waiter)))
        self._ready.expire(now, self._not_ready, out)  # waits for min_size that ran out
        for loan in self._ledger.expired(now):
            out.append(Expired(loan.lease))
            self.counters.expired += 1
            self._reclaim(now, loan, "expired", out)
        self._slots.evict(now, out)
        self._settle(now, out)
        return out

    def take_alarm(self) -> float | None:
        """The earliest deadline added since the last call, or None: O(1), for every turn.

        A deadline only appears when something is queued, lent, made, idled or fails,
        and ``tick`` needs running no earlier than the earliest of them; the owner
        arms its timer with this and, after a tick, with ``next_deadline``. A wake-up
        for a deadline that went away meanwhile (a waiter served) only ticks early.
        """
        q, ledger, slots, backoff, recall, ready = (
            self._queue,
            self._ledger,
            self._slots,
            self._backoff,
            self._recall,
            self._ready,
        )
        alarm = min(q.alarm, ledger.alarm, slots.alarm, backoff.alarm, recall.alarm, ready.alarm)
        if alarm == _INF:
            return None
        q.alarm = ledger.alarm = slots.alarm = backoff.alarm = recall.alarm = ready.alarm = _INF
        return alarm

    def next_deadline(self) -> float | None:
        """When ``tick`` next has work, or None if only a request can create work."""
        due = [
            self._queue.next_deadline(),
            self._ledger.next_expiry(),
            self._slots.next_eviction(),
            self._recall.due,
            self._ready.next_deadline(),
        ]
        if not self._slots.closed and self._demand() > 0:
            due.append(self._backoff.next_probe(self._slots.creating))
        return min((t for t in due if t is not None), default=None)

    # -- ownership and shutdown --------------------------------------------------------

    def reclaim_holder(
        self, now: float, holder: Holder, why: str = "holder died"
    ) -> list[Decision]:
        """Take back every lease of a holder that is gone, and drop what it was waiting for."""
        gone = LessorError(f"holder {holder} is gone")
        if self._paused.pop(holder, None) is not None:
            self._pausing = bool(self._paused)
        if self._fair is not None:
            self._fair.gone(holder)
        out: list[Decision] = [Fail(w.ticket, gone) for w in self._queue.take_holder(holder)]
        for loan in self._ledger.loans_of(holder):
            self._reclaim(now, loan, why, out)
        for orphan in self._ledger.take_orphans(why, holder):
            out += [Reclaimed(orphan, why), Destroy(orphan.resource, why)]
        self._settle(now, out)
        return out

    def reclaim_all(self, now: float, why: str) -> tuple[list[Lease], list[Decision]]:
        """Take back every lease (shutdown deadline); returns what was reclaimed."""
        out: list[Decision] = []
        loans = self._ledger.loans()
        for loan in loans:
            self._reclaim(now, loan, why, out)
        orphans = self._ledger.take_orphans(why)
        for orphan in orphans:
            out += [Reclaimed(orphan, why), Destroy(orphan.resource, why)]
        self._settle(now, out)
        return [*(loan.lease for loan in loans), *orphans], out

    def evict_idle(self, now: float) -> list[Decision]:
        """Destroy idle resources above ``min_size`` now (someone elsewhere needs quota);
        with none idle, ask the holders that park leases (caches) for them: the quota
        asks again while starved, and finds them idle by then."""
        out: list[Decision] = []
        self._slots.evict_above_min(out)
        return out or self._ask_parked(out)

    def shed(self, now: float, count: int) -> list[Decision]:
        """Close ``count`` more resources (idle ones now, leased ones when released; any
        destroyed meanwhile counts): a quota wants their tokens elsewhere (:mod:`.fairshare`)."""
        slots, c = self._slots, self.counters
        self._shed_to = max(self._shed_to, c.destroyed) + count
        out: list[Decision] = []
        while slots.idle and self._shed_to > c.destroyed:
            slots.destroy(slots.idle.popleft(), "shed", out)
        if self._shed_to > c.destroyed:  # the rest as released: parked ones, now
            out = self._ask_parked(out)
        self._settle(now, out)
        return out

    def _ask_parked(self, out: list[Decision]) -> list[Decision]:
        givers = tuple(h for h in self._ledger.holders() if gives_back(h))
        return [*out, AskBack(givers)] if givers else out

    def gate(self, now: float, breaker: str, state: str, until: float | None) -> list[Decision]:
        """The pool's breaker changed. Open or forced open: Acquires fail fast with
        BreakerOpen (queued ones too) and no resource is created; else as usual."""
        if state in ("open", "forced_open"):
            self._gate = (breaker, state, until)
            return self.fail_waiters(refusal(breaker, state, until, now))
        self._gate = None
        out: list[Decision] = []
        self._plan_creates(now, out)
        return out

    def admission(self, now: float, holder: str, paused: bool, why: str = "") -> list[Decision]:
        """Pause or resume new grants to ``holder`` ("" is everyone: the machine's memory).

        A paused holder's Acquires queue as usual and time out as usual (saying
        why); leases it holds stay valid, and releases work. Resuming serves them.
        """
        if paused:
            self._paused[holder] = why or "paused"
        else:
            self._paused.pop(holder, None)
        self._pausing = bool(self._paused)
        out: list[Decision] = []
        self._settle(now, out)
        if paused:
            self._update_recall(now, out)  # its waiters no longer count as starving
        return out

    def stop_admitting(self) -> None:
        """New Acquires get ShuttingDown; releases and queued waiters carry on."""
        self._admitting = False

    def fail_waiters(self, error: LessorError) -> list[Decision]:
        """Answer every queued Acquire and wait() with ``error`` (shutdown, close, crash)."""
        self._recall.stop()  # nobody waits any more
        return [Fail(w.ticket, error) for w in self._queue.take_all()] + self._ready.fail_all(error)

    def begin_drain(self, now: float, error: LessorError) -> list[Decision]:
        """Shutdown, step 1: refuse new Acquires and fail the queued ones with ``error``."""
        self.stop_admitting()
        return self.fail_waiters(error)

    def await_drained(self, now: float, ticket: object) -> list[Decision]:
        """Answer ``ticket`` with ``Drained`` once no lease (and no orphan) is out."""
        if self._slots.closed or self._drained:
            return [Drained(ticket)]
        self._drain_tickets.append(ticket)
        return []

    def close(self, now: float, error: LessorError | None = None) -> list[Decision]:
        """Fail every waiter, destroy idle resources; leased ones are destroyed on return.

        Drain waiters are answered: a closed pool has nothing left to drain into.
        """
        out = self.fail_waiters(error or PoolClosed(f"pool {self.spec.name!r} closed"))
        self._slots.close(out)
        out += [Drained(ticket) for ticket in self._drain_tickets]
        self._drain_tickets.clear()
        return out
