"""The pool as a pure state machine: bookkeeping and decisions, no threads, no I/O.

Every call takes ``now`` and returns a list of decisions (``Grant``, ``Fail``,
``Create``, ``Destroy``, ``Check``, ``Reset``, ``Expired``) that the owner carries
out, feeding the outcome of slow work back in (``created``, ``create_failed``,
``checked``, ``reset_done``). Requests the pool refuses outright raise instead.

Every resource is in exactly one state: idle, busy (being checked before a borrow
or reset after a release, off the owner's thread) or leased; ``creating`` counts
resources on their way in. ``size = idle + busy + leased`` and
``size + creating <= max_size`` always hold.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from lessor.core.decisions import (
    Check,
    Create,
    Decision,
    Destroy,
    Expired,
    Fail,
    Grant,
    Reclaimed,
    Reset,
)
from lessor.core.samples import Samples
from lessor.errors import (
    AcquireTimeout,
    DoubleRelease,
    ExpiredLease,
    ForeignLease,
    LessorError,
    PoolClosed,
    PoolExhausted,
    ShuttingDown,
    StaleLease,
    UnknownLease,
)
from lessor.protocol.messages import Lease, PoolStats
from lessor.specs import PoolSpec

__all__ = [
    "Check",
    "Create",
    "Decision",
    "Destroy",
    "Expired",
    "Fail",
    "Grant",
    "PoolCore",
    "Reclaimed",
    "Reset",
]


_CREATE = Create()

_QUEUED, _SERVING, _DONE = 0, 1, 2


@dataclass(eq=False, slots=True)
class _Slot:
    id: int
    resource: Any
    retire_at: float
    last_used: float
    lease: Lease | None = None


@dataclass(eq=False, slots=True)
class _Waiter:
    ticket: object
    holder: str
    priority: int
    seq: int
    enqueued_at: float
    deadline: float
    timeout: float
    ttl: float | None
    state: int = _QUEUED


@dataclass(slots=True)
class _Counters:
    acquired: int = 0
    released: int = 0
    timeouts: int = 0
    created: int = 0
    destroyed: int = 0
    broken: int = 0
    factory_errors: int = 0
    check_failures: int = 0
    expired: int = 0
    reclaimed: int = 0
    rejected: int = 0
    wait_ms: Samples = field(default_factory=Samples)
    hold_ms: Samples = field(default_factory=Samples)


_INF = float("inf")
_RECENT_IDS = 4096  # remembered ended leases, to tell a double release from an unknown id


class PoolCore:
    """Bookkeeping for one pool incarnation.

    ``epoch`` makes its lease ids unique across restarts; ``past_epochs`` are the
    earlier incarnations' epochs, whose leases are reported as stale, not unknown.
    ``orphans`` are leases a crashed incarnation left with live holders: they are
    not this pool's to hand out again, but they count against ``max_size`` until
    their holder releases them or dies, and then their resource is destroyed.
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
    ) -> None:
        self.spec = spec
        self.epoch = epoch
        self._past_epochs = past_epochs
        self._prefix = f"{spec.name}/{epoch}/"
        self._has_check = has_check
        self._has_reset = has_reset
        self._reusable = reusable
        self._rng = rng or random.Random()
        self._lifo = spec.strategy == "lifo"
        self._ids = itertools.count(1)
        self._lease_ids = itertools.count(1)
        self._seq = itertools.count()

        self._slots: dict[int, _Slot] = {}
        self._idle: deque[_Slot] = deque()
        self._busy: dict[int, _Slot] = {}
        self._serving: dict[int, _Waiter] = {}
        self._leased: dict[str, _Slot] = {}
        self._by_holder: dict[str, set[str]] = {}
        self._creating = 0

        self._waiters: dict[object, _Waiter] = {}
        self._queue: list[tuple[int, int, _Waiter]] = []
        self._deadlines: list[tuple[float, int, _Waiter]] = []
        self._expiries: list[tuple[float, str]] = []
        self._retire: list[tuple[float, int]] = []
        self._ended: OrderedDict[str, str] = OrderedDict()
        self._orphans: dict[str, Lease] = {lease.id: lease for lease in orphans}

        self._failures = 0
        self._retry_at = 0.0
        self._last_error: BaseException | None = None
        self._closed = False
        self._admitting = True
        self.counters = _Counters()

    # -- views -------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def size(self) -> int:
        return len(self._slots)

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def busy(self) -> int:
        return len(self._busy)

    @property
    def leased(self) -> int:
        return len(self._leased)

    @property
    def creating(self) -> int:
        return self._creating

    @property
    def waiting(self) -> int:
        serving = sum(1 for w in self._serving.values() if w.state == _SERVING)
        return len(self._waiters) + serving

    def leases(self) -> list[Lease]:
        return [slot.lease for slot in self._leased.values() if slot.lease is not None]

    @property
    def orphans(self) -> int:
        return len(self._orphans)

    def handover(self) -> list[Lease]:
        """Leases still out (this incarnation's and inherited ones), for the next incarnation."""
        return [*self.leases(), *self._orphans.values()]

    def holders(self) -> list[str]:
        """Everyone who holds a lease of this pool now, orphans of a past incarnation too."""
        return list(dict.fromkeys([*self._by_holder, *(o.holder for o in self._orphans.values())]))

    @property
    def exhausted(self) -> bool:
        """Nothing idle and no room to make more: a new Acquire has to wait for a release."""
        used = len(self._slots) + self._creating + len(self._orphans)
        return not self._idle and used >= self.spec.max_size

    @property
    def starved(self) -> bool:
        """Acquires wait and only a release can serve them: time to ask holders to give back.

        Waiters that resources being made right now will serve do not count.
        """
        return self.exhausted and len(self._waiters) > self._creating

    def leases_of(self, holder: str) -> list[str]:
        return list(self._by_holder.get(holder, ()))

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
        holder: str,
        timeout: float | None = None,
        priority: int = 0,
        ttl: float | None = None,
    ) -> list[Decision]:
        """Queue a request for a lease; answered by a Grant or Fail for ``ticket``."""
        if self._closed:
            raise PoolClosed(f"pool {self.spec.name!r} is closed")
        if not self._admitting:
            raise ShuttingDown(f"pool {self.spec.name!r} is shutting down")
        if ticket in self._waiters:
            raise ValueError(f"ticket {ticket!r} is already waiting")
        if timeout is None:
            timeout = self.spec.acquire_timeout
        out: list[Decision] = []
        if not self._waiters and not self._has_check:
            slot = self._take_idle(now, out)
            if slot is not None:
                self._grant(now, ticket, holder, ttl, now, slot, out)
                return out
        limit = self.spec.max_waiting
        if limit and len(self._waiters) >= limit:  # queued ones; not those already in a Check
            self.counters.rejected += 1
            raise PoolExhausted(
                f"pool {self.spec.name!r} already has {limit} waiting (max_waiting)"
            )
        seq = next(self._seq)
        waiter = _Waiter(ticket, holder, priority, seq, now, now + timeout, timeout, ttl)
        self._waiters[ticket] = waiter
        heapq.heappush(self._queue, (-priority, seq, waiter))
        heapq.heappush(self._deadlines, (waiter.deadline, seq, waiter))
        self._dispatch(now, out)
        return out

    def cancel(self, now: float, ticket: object) -> list[Decision]:
        """The caller gave up waiting (its own timeout fired first): drop its request."""
        waiter = self._waiters.pop(ticket, None)
        if waiter is None:
            for w in self._serving.values():
                if w.ticket == ticket:
                    w.state = _DONE
            return []
        waiter.state = _DONE
        return []

    def release(
        self, now: float, lease_id: str, holder: str, broken: bool = False
    ) -> list[Decision]:
        """Take a lease back. A bad id or holder raises a LeaseError and changes nothing."""
        slot = self._leased.get(lease_id)
        if slot is None or slot.lease is None:
            if lease_id in self._orphans:
                return self._release_orphan(now, lease_id, holder)
            raise self._lease_error(lease_id)
        lease = slot.lease
        if lease.holder != holder:
            raise ForeignLease(f"lease {lease_id} is held by another holder, not {holder}")
        self._unlease(slot, lease, "released")
        c = self.counters
        c.released += 1
        c.hold_ms.add((now - lease.granted_at) * 1000.0)
        out: list[Decision] = []
        if broken:
            c.broken += 1
            self._destroy(slot, "broken", out)
        elif self._has_reset and not self._closed:
            self._busy[slot.id] = slot
            out.append(Reset(slot.id, slot.resource))
        else:
            self._to_idle(now, slot, out)
        self._dispatch(now, out)
        return out

    def _release_orphan(self, now: float, lease_id: str, holder: str) -> list[Decision]:
        orphan = self._orphans[lease_id]
        if orphan.holder != holder:
            raise ForeignLease(f"lease {lease_id} is held by another holder, not {holder}")
        del self._orphans[lease_id]
        out: list[Decision] = [Destroy(orphan.resource, "released after a restart")]
        self._dispatch(now, out)
        return out

    def renew(self, now: float, lease_id: str, holder: str, ttl: float) -> Lease:
        """Move a lease's expiry to ``now + ttl``."""
        slot = self._leased.get(lease_id)
        if slot is None or slot.lease is None:
            raise self._lease_error(lease_id)
        if slot.lease.holder != holder:
            raise ForeignLease(f"lease {lease_id} is held by another holder, not {holder}")
        lease = replace(slot.lease, expires_at=now + ttl)
        slot.lease = lease
        heapq.heappush(self._expiries, (now + ttl, lease_id))
        return lease

    # -- outcomes of slow work -----------------------------------------------------------

    def created(self, now: float, resource: Any) -> list[Decision]:
        self._creating -= 1
        self._failures = 0
        self._last_error = None
        self.counters.created += 1
        out: list[Decision] = []
        lifetime = self.spec.max_lifetime
        retire_at = _INF
        if lifetime is not None:
            retire_at = now + lifetime * (1.0 - self.spec.lifetime_jitter * self._rng.random())
        slot = _Slot(next(self._ids), resource, retire_at, now)
        self._slots[slot.id] = slot
        if retire_at != _INF:
            heapq.heappush(self._retire, (retire_at, slot.id))
        self._to_idle(now, slot, out)
        self._dispatch(now, out)
        return out

    def create_failed(self, now: float, error: BaseException) -> list[Decision]:
        """Back off (exponential, jittered); waiters stay queued until their deadline."""
        self._creating -= 1
        self._failures += 1
        self._last_error = error
        self.counters.factory_errors += 1
        spec = self.spec
        delay = min(spec.create_backoff_max, spec.create_backoff * 2 ** (self._failures - 1))
        self._retry_at = now + delay * (0.5 + 0.5 * self._rng.random())
        out: list[Decision] = []
        self._dispatch(now, out)
        return out

    def checked(self, now: float, slot_id: int, ok: bool) -> list[Decision]:
        slot = self._busy.pop(slot_id)
        waiter = self._serving.pop(slot_id, None)
        out: list[Decision] = []
        if not ok:
            self.counters.check_failures += 1
            self._destroy(slot, "check failed", out)
            if waiter is not None and waiter.state == _SERVING:
                self._requeue(waiter)
        elif slot.retire_at <= now:  # its lifetime ended during the check
            self._destroy(slot, "lifetime", out)
            if waiter is not None and waiter.state == _SERVING:
                self._requeue(waiter)
        elif waiter is not None and waiter.state == _SERVING:
            waiter.state = _DONE
            self._grant(
                now, waiter.ticket, waiter.holder, waiter.ttl, waiter.enqueued_at, slot, out
            )
        else:
            self._to_idle(now, slot, out)
        self._dispatch(now, out)
        return out

    def reset_done(self, now: float, slot_id: int, ok: bool) -> list[Decision]:
        slot = self._busy.pop(slot_id)
        out: list[Decision] = []
        if ok:
            self._to_idle(now, slot, out)
        else:
            self._destroy(slot, "reset failed", out)
        self._dispatch(now, out)
        return out

    # -- time --------------------------------------------------------------------------

    def tick(self, now: float) -> list[Decision]:
        """Time out waiters, reclaim expired leases, evict idle and retired resources."""
        out: list[Decision] = []
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            waiter = heapq.heappop(deadlines)[2]
            if waiter.state != _DONE:
                self._waiters.pop(waiter.ticket, None)
                waiter.state = _DONE
                self.counters.timeouts += 1
                out.append(Fail(waiter.ticket, self._timeout_error(waiter)))
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            at, lease_id = heapq.heappop(expiries)
            slot = self._leased.get(lease_id)
            if slot is not None and slot.lease is not None and slot.lease.expires_at == at:
                out.append(Expired(slot.lease))
                self.counters.expired += 1
                self._reclaim(now, slot, "expired", out)
        max_idle = self.spec.max_idle
        if max_idle is not None:
            idle = self._idle
            while len(idle) > self.spec.min_size and idle[0].last_used + max_idle <= now:
                self._destroy(idle.popleft(), "idle", out)
        retire = self._retire
        while retire and retire[0][0] <= now:
            slot_or_none = self._slots.get(heapq.heappop(retire)[1])
            if slot_or_none is not None and slot_or_none in self._idle:
                self._idle.remove(slot_or_none)
                self._destroy(slot_or_none, "lifetime", out)
            # a leased or busy resource is retired when it comes back
        self._dispatch(now, out)
        return out

    def next_deadline(self) -> float | None:
        """When ``tick`` next has work, or None if only a request can create work."""
        best = _INF
        deadlines = self._deadlines
        while deadlines and deadlines[0][2].state == _DONE:
            heapq.heappop(deadlines)
        if deadlines:
            best = deadlines[0][0]
        expiries = self._expiries
        while expiries:
            at, lease_id = expiries[0]
            slot = self._leased.get(lease_id)
            if slot is not None and slot.lease is not None and slot.lease.expires_at == at:
                best = min(best, at)
                break
            heapq.heappop(expiries)
        if self.spec.max_idle is not None and len(self._idle) > self.spec.min_size:
            best = min(best, self._idle[0].last_used + self.spec.max_idle)
        if self._retire:
            best = min(best, self._retire[0][0])
        if self._failures and not self._creating and not self._closed and self._demand() > 0:
            best = min(best, self._retry_at)
        return None if best == _INF else best

    # -- ownership ---------------------------------------------------------------------

    def reclaim_holder(self, now: float, holder: str, why: str = "holder died") -> list[Decision]:
        """Take back every lease of a holder that is gone, and drop what it was waiting for."""
        out: list[Decision] = []
        gone = LessorError(f"holder {holder} is gone")
        for waiter in [*self._waiters.values(), *self._serving.values()]:
            if waiter.holder == holder and waiter.state != _DONE:
                self._waiters.pop(waiter.ticket, None)
                waiter.state = _DONE
                out.append(Fail(waiter.ticket, gone))
        for lease_id in list(self._by_holder.get(holder, ())):
            self._reclaim(now, self._leased[lease_id], why, out)
        for orphan in [o for o in self._orphans.values() if o.holder == holder]:
            del self._orphans[orphan.id]
            out += [Reclaimed(orphan, why), Destroy(orphan.resource, why)]
        self._dispatch(now, out)
        return out

    def reclaim_all(self, now: float, why: str) -> tuple[list[Lease], list[Decision]]:
        """Take back every lease (shutdown deadline); returns what was reclaimed."""
        out: list[Decision] = []
        taken = self.leases()
        for lease in taken:
            self._reclaim(now, self._leased[lease.id], why, out)
        orphans = list(self._orphans.values())
        self._orphans.clear()
        for orphan in orphans:
            out += [Reclaimed(orphan, why), Destroy(orphan.resource, why)]
        self._dispatch(now, out)
        return [*taken, *orphans], out

    def evict_idle(self, now: float) -> list[Decision]:
        """Destroy idle resources above ``min_size`` now (someone elsewhere needs quota)."""
        out: list[Decision] = []
        while len(self._idle) > self.spec.min_size:
            self._destroy(self._idle.popleft(), "idle", out)
        return out

    def stop_admitting(self) -> None:
        """New Acquires get ShuttingDown; releases and queued waiters carry on."""
        self._admitting = False

    def fail_waiters(self, error: LessorError) -> list[Decision]:
        """Answer every queued Acquire with ``error`` (shutdown, close, crash)."""
        out: list[Decision] = []
        for waiter in [*self._waiters.values(), *self._serving.values()]:
            if waiter.state != _DONE:
                waiter.state = _DONE
                out.append(Fail(waiter.ticket, error))
        self._waiters.clear()
        return out

    def close(self, now: float, error: LessorError | None = None) -> list[Decision]:
        """Fail every waiter, destroy idle resources; leased ones are destroyed on return."""
        self._closed = True
        out = self.fail_waiters(error or PoolClosed(f"pool {self.spec.name!r} closed"))
        while self._idle:
            self._destroy(self._idle.pop(), "closed", out)
        return out

    def stats(self) -> PoolStats:
        c = self.counters
        w50, w95, w99 = c.wait_ms.percentiles(0.5, 0.95, 0.99)
        h50, h95, h99 = c.hold_ms.percentiles(0.5, 0.95, 0.99)
        return PoolStats(
            pool=self.spec.name, size=self.size, idle=self.idle, leased=self.leased,
            checking=self.busy, creating=self._creating, waiting=self.waiting,
            acquired=c.acquired, released=c.released, timeouts=c.timeouts, created=c.created,
            destroyed=c.destroyed, broken=c.broken, factory_errors=c.factory_errors,
            check_failures=c.check_failures, expired=c.expired, reclaimed=c.reclaimed,
            rejected=c.rejected, wait_ms_p50=w50, wait_ms_p95=w95, wait_ms_p99=w99,
            hold_ms_p50=h50, hold_ms_p95=h95, hold_ms_p99=h99,
        )  # fmt: skip

    # -- internals ---------------------------------------------------------------------

    def _dispatch(self, now: float, out: list[Decision]) -> None:
        """Match queued waiters with idle resources, then plan creations for the rest."""
        waiters, queue = self._waiters, self._queue
        if not waiters and len(self._slots) + self._creating >= self.spec.min_size:
            return  # the common case on Release: nobody waits, nothing to make
        while waiters and self._idle:
            entry = heapq.heappop(queue)
            waiter = entry[2]
            if waiter.state != _QUEUED:
                continue
            slot = self._take_idle(now, out)
            if slot is None:
                heapq.heappush(queue, entry)
                break
            if self._has_check:
                del waiters[waiter.ticket]
                waiter.state = _SERVING
                self._busy[slot.id] = slot
                self._serving[slot.id] = waiter
                out.append(Check(slot.id, slot.resource))
            else:
                self._grant(
                    now, waiter.ticket, waiter.holder, waiter.ttl, waiter.enqueued_at, slot, out
                )
        self._plan_creates(now, out)

    def _demand(self) -> int:
        resetting = len(self._busy) - len(self._serving)
        for_waiters = len(self._waiters) - self._creating - resetting
        for_min = self.spec.min_size - len(self._slots) - self._creating
        return max(for_waiters, for_min)

    def _plan_creates(self, now: float, out: list[Decision]) -> None:
        if self._closed:
            return
        room = self.spec.max_size - len(self._slots) - self._creating - len(self._orphans)
        if room <= 0:
            return
        want = self._demand()
        if want <= 0:
            return
        if self._failures:  # one probe at a time while the factory is failing
            if self._creating or now < self._retry_at:
                return
            want = 1
        n = min(want, room)
        self._creating += n
        out.extend([_CREATE] * n)

    def _take_idle(self, now: float, out: list[Decision]) -> _Slot | None:
        idle = self._idle
        while idle:
            slot = idle.pop() if self._lifo else idle.popleft()
            if slot.retire_at > now:
                return slot
            self._destroy(slot, "lifetime", out)
        return None

    def _to_idle(self, now: float, slot: _Slot, out: list[Decision]) -> None:
        if self._closed:
            self._destroy(slot, "closed", out)
        elif slot.retire_at <= now:
            self._destroy(slot, "lifetime", out)
        else:
            slot.last_used = now
            self._idle.append(slot)

    def _grant(
        self,
        now: float,
        ticket: object,
        holder: str,
        ttl: float | None,
        enqueued_at: float,
        slot: _Slot,
        out: list[Decision],
    ) -> None:
        waiter = self._waiters.pop(ticket, None)
        if waiter is not None:
            waiter.state = _DONE
        if ttl is None:
            ttl = self.spec.lease_ttl
        lease_id = f"{self._prefix}{next(self._lease_ids)}"
        expires_at = None if ttl is None else now + ttl
        contended = bool(self._waiters)  # others still wait after this grant
        lease = Lease(lease_id, self.spec.name, slot.resource, holder, now, expires_at, contended)
        slot.lease = lease
        self._leased[lease_id] = slot
        held = self._by_holder.get(holder)
        if held is None:
            self._by_holder[holder] = {lease_id}
        else:
            held.add(lease_id)
        if expires_at is not None:
            heapq.heappush(self._expiries, (expires_at, lease_id))
        self.counters.acquired += 1
        self.counters.wait_ms.add((now - enqueued_at) * 1000.0)
        out.append(Grant(ticket, lease))

    def _unlease(self, slot: _Slot, lease: Lease, why: str) -> None:
        del self._leased[lease.id]
        slot.lease = None
        held = self._by_holder[lease.holder]
        held.discard(lease.id)
        if not held:
            del self._by_holder[lease.holder]
        ended = self._ended
        ended[lease.id] = why
        if len(ended) > _RECENT_IDS:
            ended.popitem(last=False)

    def _reclaim(self, now: float, slot: _Slot, why: str, out: list[Decision]) -> None:
        lease = slot.lease
        assert lease is not None
        self._unlease(slot, lease, why)
        out.append(Reclaimed(lease, why))
        self.counters.reclaimed += 1
        self.counters.hold_ms.add((now - lease.granted_at) * 1000.0)
        if self._reusable and self._has_reset and not self._closed:
            self._busy[slot.id] = slot  # reset like any returned resource
            out.append(Reset(slot.id, slot.resource))
        elif self._reusable:
            self._to_idle(now, slot, out)
        else:  # the holder may still be touching it
            self._destroy(slot, why, out)

    def _destroy(self, slot: _Slot, reason: str, out: list[Decision]) -> None:
        del self._slots[slot.id]
        self.counters.destroyed += 1
        out.append(Destroy(slot.resource, reason))

    def _requeue(self, waiter: _Waiter) -> None:
        waiter.state = _QUEUED
        self._waiters[waiter.ticket] = waiter
        heapq.heappush(self._queue, (-waiter.priority, waiter.seq, waiter))

    def _lease_error(self, lease_id: str) -> LessorError:
        why = self._ended.get(lease_id)
        if why == "released":
            return DoubleRelease(f"lease {lease_id} was already released")
        if why is not None:
            return ExpiredLease(f"lease {lease_id} was reclaimed ({why})")
        name = lease_id.rpartition("/")[0]
        pool, _, epoch = name.rpartition("/")
        if pool == self.spec.name and epoch in self._past_epochs:
            return StaleLease(f"lease {lease_id} is from an earlier incarnation of {pool!r}")
        return UnknownLease(f"pool {self.spec.name!r} never granted lease {lease_id!r}")

    def _timeout_error(self, waiter: _Waiter) -> AcquireTimeout:
        text = (
            f"no resource from pool {self.spec.name!r} within {waiter.timeout:g}s "
            f"(size {len(self._slots)}/{self.spec.max_size}, {self.leased} leased)"
        )
        cause = self._last_error
        if cause is not None:  # name it: "password authentication failed" beats a bare timeout
            text += f"; the factory is failing: {type(cause).__name__}: {cause}".rstrip()
        err = AcquireTimeout(text)
        err.__cause__ = cause
        return err
