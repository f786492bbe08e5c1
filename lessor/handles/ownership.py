"""LeaseLedger: which holder (thread, actor) of this process holds which lease.

A pool sees one holder for a whole worker process, or for an in-process lease
cache, where the borrowers are threads. So that ``release()`` raises there exactly
as it does against the pool itself, that holder keeps this ledger of every lease
granted to it and judges a release itself, before anything is sent: a Release stays
a one-way message, and a refused one sends nothing and changes nothing.

A release of ``lease`` through a handle of ``pool`` by ``holder`` is judged in the
pool core's order:

1. Held here, for this pool: the same borrow (``granted_at``; a cached lease lent
   again is a new borrow) by the same holder is accepted; an ended borrow raises
   DoubleRelease, another holder's ForeignLease.
2. Granted to another process (``lease.holder`` names another holder): ForeignLease.
3. From an incarnation of ``pool`` older than one this process was granted leases
   by: StaleLease. A pool's incarnations are told apart by the epoch in lease ids
   and ordered by their grants' ``granted_at`` (one monotonic clock per machine), so
   the worker only knows an epoch is stale once it has seen a newer one.
4. Ended here recently: DoubleRelease if it was released, ExpiredLease if it was
   taken back (the pool pushed LeaseExpired, or its thread died holding it).
5. Anything else: UnknownLease.

One case the ledger cannot see: a lease the runtime took back without telling the
worker (a shutdown's reclaim, a pool stopped). Its release is sent, and the pool
refuses it and logs why. Like the core, the ledger forgets an ended lease after
``RECENT_ENDED`` or more endings; releasing it after that raises UnknownLease.
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

from lessor.errors import (
    DoubleRelease,
    ExpiredLease,
    ForeignLease,
    LeaseError,
    StaleLease,
    UnknownLease,
)
from lessor.protocol.messages import Lease

__all__ = ["RECENT_ENDED", "RECENT_EPOCHS", "LeaseLedger"]

#: Ended leases remembered (at least this many, at most twice), to tell a double
#: release from an unknown id, as the pool core does.
RECENT_ENDED = 4096
#: Incarnations remembered per pool.
RECENT_EPOCHS = 16

_RELEASED = "released"

L = TypeVar("L")


def _epoch(lease_id: str) -> tuple[str, str]:
    """(pool, epoch) of a lease id ``pool/epoch/n``, as the pool core makes them."""
    pool, _, epoch = lease_id.rpartition("/")[0].rpartition("/")
    return pool, epoch


class LeaseLedger(Generic[L]):
    """Every lease granted to this process: its holder, and the handle that lent it.

    ``L`` is the lending handle, handed back with each accepted release (it knows
    how to give the lease back). Thread-safe; each call is one short critical section.
    The ``*_locked`` calls are for a caller that holds :attr:`lock` already: a
    lending route keeps its cache under the same lock, so a pair takes it once a call.
    """

    def __init__(self, process_holder: str) -> None:
        #: The holder the runtime's pools name this process by (in its leases).
        self.process_holder = process_holder
        self.lock = threading.Lock()
        self._held: dict[str, tuple[L, str, str, float]] = {}  # id -> lender, pool, holder, at
        # id -> why it ended; two generations, so the last RECENT_ENDED are always there.
        self._ended: dict[str, str] = {}
        self._older: dict[str, str] = {}
        self._epochs: dict[str, dict[str, float]] = {}  # pool -> epoch -> its first grant
        self._newest: dict[str, str] = {}  # pool -> "pool/epoch/" of its newest epoch

    @property
    def held(self) -> int:
        return len(self._held)

    def granted(self, lease: Lease, lender: L, holder: str) -> None:
        """The pool granted ``lease`` to ``holder``, through ``lender``."""
        with self.lock:
            self.granted_locked(lease, lender, holder)

    def granted_locked(self, lease: Lease, lender: L, holder: str) -> None:
        newest = self._newest.get(lease.pool)
        if newest is None or not lease.id.startswith(newest):  # (cheaper than a parse)
            self._saw_epoch(lease)
        if self._why(lease.id) is None:  # else its LeaseExpired came before this record
            self._held[lease.id] = (lender, lease.pool, holder, lease.granted_at)

    def lent(self, lease: Lease, lender: L, holder: str) -> None:
        """``lender`` lends ``holder`` a lease this process had parked (a new borrow).

        Its record of the last borrow's end stays: a held lease is judged as held.
        """
        with self.lock:
            self.lent_locked(lease, lender, holder)

    def lent_locked(self, lease: Lease, lender: L, holder: str) -> None:
        self._held[lease.id] = (lender, lease.pool, holder, lease.granted_at)

    def unlent_locked(self, lease: Lease) -> None:
        """Undo :meth:`lent_locked` (the borrower never got the lease: Ctrl-C)."""
        self._held.pop(lease.id, None)

    def check(self, lease: Lease, pool: str, holder: str) -> L:
        """The lender of ``holder``'s live borrow ``lease``; raises a LeaseError otherwise."""
        with self.lock:
            held = self._held.get(lease.id)
            if held is None or held[1] != pool or held[2] != holder or held[3] != lease.granted_at:
                raise self._refusal(lease, pool, holder)
            return held[0]

    def returned(self, lease: Lease, pool: str, holder: str) -> L:
        """``holder`` releases ``lease``: its lender, or a LeaseError (and nothing changes)."""
        with self.lock:
            return self.returned_locked(lease, pool, holder)

    def returned_locked(self, lease: Lease, pool: str, holder: str) -> L:
        held = self._held.get(lease.id)  # (check and _end inlined: every release pays this)
        if held is None or held[1] != pool or held[2] != holder or held[3] != lease.granted_at:
            raise self._refusal(lease, pool, holder)
        del self._held[lease.id]
        ended = self._ended
        ended[lease.id] = _RELEASED
        if len(ended) >= RECENT_ENDED:
            self._older, self._ended = ended, {}
        return held[0]

    def reclaimed(self, lease_id: str, why: str) -> None:
        """The pool took ``lease_id`` back on its own (it expired)."""
        with self.lock:
            held = self._held.pop(lease_id, None)
            if held is not None or self._why(lease_id) is None:  # (not if released first)
                self._end(lease_id, why)

    def holder_gone(self, holder: str) -> list[tuple[str, L]]:
        """``holder`` ended: its leases, with their lenders, to give back for it."""
        with self.lock:
            gone = [(i, h) for i, h in self._held.items() if h[2] == holder]
            for lease_id, _ in gone:
                del self._held[lease_id]
                self._end(lease_id, "holder died")
        return [(lease_id, held[0]) for lease_id, held in gone]

    # -- internals ---------------------------------------------------------------------

    def _end(self, lease_id: str, why: str) -> None:
        ended = self._ended
        ended[lease_id] = why
        if len(ended) >= RECENT_ENDED:
            self._older, self._ended = ended, {}

    def _why(self, lease_id: str) -> str | None:
        """Why ``lease_id`` ended, if it did recently (the newer generation knows best)."""
        why = self._ended.get(lease_id)
        return self._older.get(lease_id) if why is None else why

    def _saw_epoch(self, lease: Lease) -> None:
        pool, epoch = _epoch(lease.id)
        if pool != lease.pool:
            return
        seen = self._epochs.setdefault(pool, {})
        if epoch not in seen:
            seen[epoch] = lease.granted_at
            if len(seen) > RECENT_EPOCHS:
                del seen[min(seen, key=seen.__getitem__)]
            self._newest[pool] = f"{pool}/{max(seen, key=seen.__getitem__)}/"

    def _refusal(self, lease: Lease, pool: str, holder: str) -> LeaseError:
        """Why ``holder`` may not release ``lease`` through ``pool``."""
        held = self._held.get(lease.id)
        if held is not None and held[1] == pool:
            if held[3] != lease.granted_at:  # a borrow that ended; the lease is lent again
                return DoubleRelease(f"lease {lease.id} was already released")
            return ForeignLease(f"lease {lease.id} is held by another holder, not {holder}")
        if lease.holder != self.process_holder:
            return ForeignLease(f"lease {lease.id} was granted to {lease.holder}, not this process")
        lease_pool, epoch = _epoch(lease.id)
        seen = self._epochs.get(pool, {})
        if lease_pool == pool and epoch in seen and epoch != max(seen, key=seen.__getitem__):
            return StaleLease(f"lease {lease.id} is from an earlier incarnation of {pool!r}")
        why = self._why(lease.id) if lease_pool == pool else None
        if why == _RELEASED:
            return DoubleRelease(f"lease {lease.id} was already released")
        if why is not None:
            return ExpiredLease(f"lease {lease.id} was reclaimed ({why})")
        return UnknownLease(f"pool {pool!r} never granted lease {lease.id!r} to this process")
