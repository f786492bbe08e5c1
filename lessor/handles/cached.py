"""CachedRoute: an in-process pool borrowed through a lease cache (``cache=True``).

The uncached in-process route runs every Acquire and Release as a turn of the
pool's actor: exact per-thread bookkeeping in the pool, about 20 µs a pair. This
route is the worker's cache brought home: the pool sees one holder, this cache
(``cache:<pid>:<n>``), and the cache lends its leases to threads, judging each
release with a :class:`~lessor.handles.ownership.LeaseLedger`. A released lease is
parked and lent again without a turn, which makes a pair cost about what
psycopg_pool's getconn+putconn does. What stays the same: the errors a release
raises, a dead thread's leases coming back, LeaseExpired, and recall (the pool
asks for parked leases back when someone waits and nothing is free).

What the cache changes, and how far:

- the pool counts parked leases as leased, and ``lease.holder`` names the cache;
- a lease goes back to the pool once the pool granted it ``hold_for`` ago (default
  :data:`CACHE_HOLD`; at most ``check_idle_after`` for a factory that checks after
  idling), on its next release or on a timer if it is parked, so the pool's
  lifetime, idle and check rules reach a cached resource that late at most;
- the factory's ``reset`` runs on the releasing thread before a lease is parked,
  as the pool would run it; if it raises, the lease goes back as broken.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from typing import Any

import pykka

from lessor import holder as holders
from lessor.actors.scheduler import process_scheduler
from lessor.errors import LessorError
from lessor.factory import overrides
from lessor.handles.lending import LendingRoute
from lessor.handles.local import LocalRoute
from lessor.handles.ownership import LeaseLedger
from lessor.holder import Holder
from lessor.protocol.messages import LeaseExpired, Message
from lessor.specs import PoolSpec
from lessor.supervisor.child import ChildRef

__all__ = ["CACHE_HOLD", "CachedRoute"]

#: Seconds a cached lease stays in the cache after the pool granted it, by default.
CACHE_HOLD = 1.0

_serials = itertools.count(1)


class CachedRoute(LendingRoute):
    """A pool in this process, borrowed through this process's cache of its leases.

    ``hold_for`` is in seconds (default :data:`CACHE_HOLD`). Close it (``close()``,
    or the Runtime does at shutdown) to give every lease it holds back to the pool.
    """

    def __init__(
        self,
        target: pykka.ActorRef[Any] | ChildRef,
        spec: PoolSpec,
        hold_for: float = CACHE_HOLD,
    ) -> None:
        if not hold_for > 0:
            raise ValueError(f"hold_for must be > 0 seconds, got {hold_for!r}")
        factory = spec.factory
        check_after = getattr(factory, "check_idle_after", None)
        if factory.checks_on_borrow() and isinstance(check_after, (int, float)):
            hold_for = min(hold_for, float(check_after))
        me = Holder.cache(f"{os.getpid()}:{next(_serials)}")
        super().__init__(
            spec.name,
            LeaseLedger(me),
            cache=True,
            hold_for=hold_for,
            reset=factory.reset if overrides(factory, "reset") else None,
        )
        self.holder_id = me
        self.spec = spec
        self.factory = spec.factory
        #: The pool itself, asked as this cache.
        self.pool = LocalRoute(target, spec, holder=lambda: me)
        self.closed = False
        self.sweeper = self._timer = process_scheduler().timer(self._sweep)  # (typed here)
        holders.bind_receiver(me, _Notices(self))
        holders.subscribe(self._thread_gone)

    # -- reaching the pool -------------------------------------------------------------

    def ask(self, message: Message, timeout: float | None = None) -> Any:
        return self.pool.ask(message, timeout)

    def tell(self, message: Message) -> None:
        self.pool.tell(message)

    @property
    def actor_ref(self) -> pykka.ActorRef[Any]:
        return self.pool.actor_ref

    # -- what the pool and the holders report ------------------------------------------

    def notice(self, message: Message) -> None:
        """A notice the pool sent this cache's holder (after its turn)."""
        if isinstance(message, LeaseExpired):  # the pool took it back: no thread holds it
            self._ledger.reclaimed(message.lease_id, "expired")
        self.on_notice(message)

    def _thread_gone(self, holder: Holder) -> None:
        """A thread ended holding leases lent here: they go back to the pool for it."""
        for lease_id, lender in self._ledger.holder_gone(holder):
            with contextlib.suppress(LessorError):
                lender.give_back_for_dead_thread(lease_id)

    def _sweep(self) -> None:
        """Parked leases past ``hold_for`` go back to the pool (on the scheduler's thread)."""
        with self._lock:
            due = self._leases.overdue()
            when = self._leases.next_overdue()
        self._give(due)
        if when is not None:
            self._timer.schedule(when)

    # -- ending ------------------------------------------------------------------------

    def drain(self, caller: Holder) -> None:
        """The runtime shuts down: park nothing more, give back what is parked and what
        ``caller`` (the thread shutting down) holds."""
        self.draining = True
        self.flush()
        self._thread_gone(caller)

    def close(self) -> None:
        """Give back every lease this cache holds (parked or lent) and stop following."""
        if self.closed:
            return
        self.closed = self.draining = True
        self._timer.cancel()
        holders.unsubscribe(self._thread_gone)
        self.flush()
        holders.report_gone(self.holder_id)  # the pool takes back what threads still hold

    def stop(self, timeout: float | None = None) -> None:
        """Stop an unsupervised pool (``start_pool(spec, cache=True)``) and this cache."""
        self.close()
        self.pool.stop(timeout)


class _Notices:
    """What the pool's notices for the cache's holder are told to (``tell``)."""

    __slots__ = ("route",)

    def __init__(self, route: CachedRoute) -> None:
        self.route = route

    def tell(self, message: Message) -> None:
        self.route.notice(message)
