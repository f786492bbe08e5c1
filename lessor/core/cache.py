"""LeaseCache: which of one pool's leases a worker holds, and whether a release parks.

Pure bookkeeping with an injected clock and no locks (the caller serialises calls),
so the rule that matters most, never handing one lease to two borrowers, is checked
by a stateful property test rather than by hoping threads interleave badly.
"""

from __future__ import annotations

from collections.abc import Callable

from lessor.errors import DoubleRelease
from lessor.protocol.codec import unchecked
from lessor.protocol.messages import Lease

__all__ = ["RETURN_WINDOW", "LeaseCache"]

_lease = unchecked(Lease)  # a borrow of a parked lease: its fields passed the checks

#: After the pool asks for parked leases back, releases go to it for this long.
RETURN_WINDOW = 0.1


class LeaseCache:
    """Leases a worker holds for one pool: *out* (in use) or *parked* (free to reuse).

    A parked lease is still leased as far as the pool knows. A release parks unless
    the lease must go back (see :meth:`give_back`); the pool recalls parked leases
    with :meth:`recall`.
    """

    def __init__(self, clock: Callable[[], float], hold_for: float | None = None) -> None:
        self._clock = clock
        #: How long (s) a lease may stay here after the pool granted it; None: until recalled.
        self.hold_for = hold_for
        self._bag: list[Lease] = []
        self._out: dict[str, Lease] = {}  # handed out and not released
        self._since: dict[str, float] = {}  # lease id -> when the pool granted it
        self._wanted: set[str] = set()  # out when the pool asked for leases back
        self._return_until = 0.0
        #: Borrowers of this process waiting on the pool: while any does, nothing parks.
        self.asking = 0

    @property
    def parked(self) -> int:
        return len(self._bag)

    def take(self) -> Lease | None:
        """A parked lease as a new borrow, or None.

        A borrow is told apart from earlier ones of the same lease by its
        ``granted_at``: the reuse time, strictly later than any before it.
        """
        if not self._bag:
            return None
        parked = self._bag.pop()  # most recently used first
        now = self._clock()
        if now <= parked.granted_at:
            now = parked.granted_at + 1e-6
        lease = _lease(parked.id, parked.pool, parked.resource, parked.holder, now, None, False)
        self._out[lease.id] = lease
        return lease

    def lent(self, lease: Lease) -> None:
        """The pool granted ``lease`` to this process."""
        self._out[lease.id] = lease
        if self.hold_for is not None:
            self._since[lease.id] = lease.granted_at

    def give_back(self, lease: Lease, broken: bool, draining: bool) -> bool:
        """Release ``lease``: True if it was parked, False if it must go to the pool.

        It goes to the pool when broken, wanted back, expiring (a parked lease would
        give its next user less than the pool's ttl), granted while others waited,
        while a borrower here waits on the pool, while draining, inside the return
        window, or when the pool granted it ``hold_for`` or more ago. A lease this
        cache does not know also goes (the pool judges it); a stale borrow of one it
        does know raises DoubleRelease.
        """
        lease_id = lease.id
        current = self._out.get(lease_id)
        if (current is None or current.granted_at != lease.granted_at) and self.borrow(
            lease
        ) is None:  # (raises for a borrow that ended)
            return False
        assert current is not None
        del self._out[lease_id]
        wanted = self._wanted and lease_id in self._wanted
        if wanted:
            self._wanted.discard(lease_id)
        now = self._clock()
        if (
            broken
            or wanted
            or draining
            or self.asking
            or current.contended  # as renewed: its expiry decides, not an older copy's
            or current.expires_at is not None
            or now < self._return_until
            or (self.hold_for is not None and now - self._since[lease_id] >= self.hold_for)
        ):
            self._since.pop(lease_id, None)
            return False
        self._bag.append(current)
        return True

    def overdue(self) -> list[Lease]:
        """Parked leases the pool granted ``hold_for`` or more ago: they go back to it."""
        hold_for = self.hold_for
        if hold_for is None or not self._bag:
            return []
        since, now = self._since, self._clock()
        due = [p for p in self._bag if now - since[p.id] >= hold_for]
        if due:
            self._bag = [p for p in self._bag if now - since[p.id] < hold_for]
            for p in due:
                del since[p.id]
        return due

    def next_overdue(self) -> float | None:
        """When the oldest parked lease becomes overdue (monotonic s), if any is parked."""
        if self.hold_for is None or not self._bag:
            return None
        return min(self._since[p.id] for p in self._bag) + self.hold_for

    def borrow(self, lease: Lease) -> Lease | None:
        """The live borrow ``lease`` names (as last renewed), or None if not from here.

        Raises DoubleRelease for a borrow that ended: its lease is parked, or lent
        again (a later ``granted_at``).
        """
        current = self._out.get(lease.id)
        if current is not None and current.granted_at == lease.granted_at:
            return current
        if current is not None or any(p.id == lease.id for p in self._bag):
            raise DoubleRelease(f"lease {lease.id} was already released")
        return None

    def renewed(self, lease: Lease) -> Lease:
        """The pool renewed a lease lent here: the borrow, with its new expiry.

        The pool's copy carries the pool's grant time; the borrower's stays its own.
        """
        current = self._out.get(lease.id)
        if current is None:
            return lease
        borrow = Lease(current.id, current.pool, current.resource, current.holder,
                       current.granted_at, lease.expires_at, current.contended)  # fmt: skip
        self._out[lease.id] = borrow
        return borrow

    def recall(self) -> list[Lease]:
        """The pool wants leases back: parked ones go now, out ones when released."""
        self._return_until = self._clock() + RETURN_WINDOW
        self._wanted.update(self._out)
        return self.empty()

    def empty(self) -> list[Lease]:
        """Every parked lease, to give back to the pool."""
        parked, self._bag = self._bag, []
        for p in parked:
            self._since.pop(p.id, None)
        return parked

    def forget(self, lease_id: str) -> None:
        """The pool took this lease back on its own (it expired), or it goes back unparked."""
        self._out.pop(lease_id, None)
        self._since.pop(lease_id, None)
        self._wanted.discard(lease_id)
