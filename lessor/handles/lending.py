"""LendingRoute: a pool seen through a holder that lends its leases on to threads.

The pool sees one holder (a worker process, or an in-process lease cache) where
the borrowers are this process's threads and actors. So that ``release()`` raises
as it does against the pool itself, a :class:`~lessor.handles.ownership.LeaseLedger`
records every lease lent here and judges each release before anything is sent: a
Release stays one-way, and a refused one sends nothing and changes nothing.

With ``cache=True`` this is lock caching with recall, as distributed lock managers
and HikariCP's ConcurrentBag do it: a released lease is parked here and the next
``acquire`` reuses it without asking the pool, which still counts it as leased.
When someone else waits and nothing is free, the pool pushes GiveBack: parked
leases go back at once, leases out at that moment go back when released, and for
a short window every release is real. Which releases park is
:class:`~lessor.core.cache.LeaseCache`'s call.

Subclasses say how to reach the pool (``ask``, ``tell``), may set ``_poll`` (read
notices that arrived), and pass the pool's notices to ``on_notice``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from lessor.actors.scheduler import Timer
from lessor.core.cache import LeaseCache
from lessor.errors import LessorError
from lessor.handles.ops import LeaseOps
from lessor.handles.ownership import LeaseLedger
from lessor.holder import current_holder
from lessor.protocol.messages import (
    Acquire,
    Admission,
    Drain,
    GiveBack,
    Lease,
    LeaseExpired,
    Message,
    Release,
)

__all__ = ["LendingRoute", "plainly_valid"]

_INF = float("inf")


_INT64 = 1 << 63


class LendingRoute(LeaseOps):
    """Leases of pool ``name`` lent to this process's holders, optionally cached.

    ``holder`` names who borrows through this route: by default the calling thread.
    ``hold_for`` (seconds, default None: no limit) bounds how long a cached lease
    stays here after the pool granted it; then it goes back on release, so the
    pool's own rules (lifetime, idle checks) reach cached resources that late at most.
    ``reset`` (default None) runs on the releasing thread before a lease is parked;
    if it raises, the lease goes back to the pool as broken.
    """

    def __init__(
        self,
        name: str,
        ledger: LeaseLedger[LendingRoute],
        *,
        cache: bool = False,
        holder: Callable[[], str] = current_holder,
        hold_for: float | None = None,
        reset: Callable[[Any], None] | None = None,
    ) -> None:
        self.name = name
        self.cache = cache
        self._holder = holder
        self._ledger = ledger
        self._leases = LeaseCache(time.monotonic, hold_for)
        self._reset = reset
        #: A release parks (or not) in the same turn of the lock as the ledger's record.
        self._parks_at_once = cache and reset is None
        self._lock = ledger.lock
        #: Reads notices (GiveBack, LeaseExpired) that arrived, before a release is judged.
        self._poll: Callable[[], None] | None = None
        #: The pool's runtime is shutting down: nothing parks (set by a Drain notice).
        self.draining = False
        #: The memory manager paused this process's admission: nothing parks, so that
        #: every Acquire goes to the pool, which holds it (an Admission notice).
        self.paused = False
        self._pauses: set[bool] = set()  # for everyone (True), for this process (False)
        #: Wakes an in-process cache to send back what stays parked past ``hold_for``.
        self.sweeper: Timer | None = None

    # -- the lease API -----------------------------------------------------------------

    def acquire(
        self, timeout: float | None = None, priority: int = 0, ttl: float | None = None
    ) -> Lease:
        if not self.cache:
            lease = super().acquire(timeout, priority, ttl)
            self._ledger.granted(lease, self, self._holder())
            return lease
        if not plainly_valid(timeout, priority, ttl):  # then the checks of a sent Acquire
            Acquire(self.name, timeout, priority, ttl)
        holder, leases, ledger = self._holder(), self._leases, self._ledger
        reused = None
        try:
            with self._lock:  # (the ledger's: one lock for the cache and the record)
                reused = leases.take() if ttl is None else None
                if reused is not None:
                    ledger.lent_locked(reused, self, holder)
                    return reused
                leases.asking += 1
        except BaseException:  # interrupted (Ctrl-C) mid-reuse: the lease is parked again
            if reused is not None:
                self._unlend(reused)
            raise
        try:
            lease = super().acquire(timeout, priority, ttl)
        except BaseException:
            with self._lock:
                leases.asking -= 1
            raise
        with self._lock:
            leases.asking -= 1
            leases.lent(lease)
            ledger.granted_locked(lease, self, holder)
        return lease

    def _unlend(self, lease: Lease) -> None:
        with self._lock:
            self._ledger.unlent_locked(lease)
            parked = self._leases.give_back(lease, False, self.draining or self.paused)
        if not parked:
            self.tell(Release(lease.id))

    def release(self, lease: Lease, broken: bool = False) -> None:
        """Give ``lease`` back; a LeaseError if the caller may not, and then nothing happens."""
        poll = self._poll
        if poll is not None:
            poll()  # a GiveBack or LeaseExpired waiting to be read decides this one
        holder = self._holder()
        with self._lock:
            lender = self._ledger.returned_locked(lease, self.name, holder)
            parks = lender is self and self._parks_at_once  # (the common case: one lock)
            parked = parks and self._leases.give_back(lease, broken, self.draining or self.paused)
        if parked:
            self._arm_sweep()
        elif parks:
            self.tell(Release(lease.id, broken))
        else:
            lender._give_back(lease, broken)  # this route, or a sibling that lent it

    def _give_back(self, lease: Lease, broken: bool) -> None:
        """Park a lease this route lent and the ledger let go, or send it to the pool."""
        if self.cache:
            if self._reset is not None and not broken:
                try:
                    self._reset(lease.resource)
                except Exception:  # the factory says it cannot be reused
                    broken = True
                except BaseException:  # interrupted mid-reset: the resource is in doubt
                    with self._lock:
                        self._leases.forget(lease.id)
                    self.tell(Release(lease.id, True))
                    raise
            with self._lock:
                parked = self._leases.give_back(lease, broken, self.draining or self.paused)
            if parked:
                self._arm_sweep()
                return
        self.tell(Release(lease.id, broken))

    def _arm_sweep(self) -> None:
        """A lease was parked: make sure the sweep will come (an in-process cache)."""
        sweeper = self.sweeper
        if sweeper is not None and sweeper.due == _INF:  # (else it is armed)
            sweeper.schedule(time.monotonic() + (self._leases.hold_for or 0.0))

    def give_back_for_dead_thread(self, lease_id: str) -> None:
        """The thread that borrowed this lease ended without releasing it."""
        if self.cache:
            with self._lock:
                self._leases.forget(lease_id)  # never parked: its user vanished mid-use
        self.tell(Release(lease_id))

    def renew(self, lease: Lease, ttl: float) -> Lease:
        self._ledger.check(lease, self.name, self._holder())
        if not self.cache:
            return super().renew(lease, ttl)
        with self._lock:
            self._leases.borrow(lease)  # a borrow that ended must not move another's expiry
        renewed = super().renew(lease, ttl)
        with self._lock:
            return self._leases.renewed(renewed)

    def flush(self) -> None:
        """Give every parked lease back to the pool."""
        with self._lock:
            parked = self._leases.empty()
        self._give(parked)

    @property
    def parked(self) -> int:
        return self._leases.parked

    def _give(self, leases: list[Lease]) -> None:
        with contextlib.suppress(LessorError):  # gone: its runtime takes them back itself
            for lease in leases:
                self.tell(Release(lease.id))

    def on_notice(self, message: Message) -> None:
        """The pool wants leases back (GiveBack), took one back (LeaseExpired), or drains."""
        if isinstance(message, GiveBack) and message.pool == self.name:
            with self._lock:
                parked = self._leases.recall()
            self._give(parked)
        elif isinstance(message, Drain):
            self.draining = True
            self.flush()
        elif isinstance(message, Admission):
            with self._lock:
                pauses, everyone = self._pauses, message.holder == ""
                (pauses.add if message.paused else pauses.discard)(everyone)
                self.paused = bool(pauses)
            if self.paused:
                self.flush()
        elif isinstance(message, LeaseExpired) and message.pool == self.name:
            with self._lock:
                self._leases.forget(message.lease_id)


def plainly_valid(timeout: float | None, priority: int, ttl: float | None) -> bool:
    """Arguments an Acquire surely accepts, told apart cheaply (a reuse costs a few µs).

    Only a subset: anything else is checked by building the Acquire, whose rules
    are the only ones (a false "no" here costs a microsecond, never a wrong answer).
    """
    return (
        ttl is None
        and type(priority) is int
        and -_INT64 <= priority < _INT64
        and (
            timeout is None  # (0 is a try: a parked lease serves it as well as any)
            or (type(timeout) is float and 0 <= timeout < _INF)
            or (type(timeout) is int and 0 <= timeout < _INT64)  # (an int must fit msgpack)
        )
    )
