"""The lease ledger: which leases are out, to whom, until when, and what ended.

Lease ids are ``<pool>/<epoch>/<n>``: unique across a pool's restarts because
each incarnation has an epoch of its own. A release of an id that is not out is
classified without taking the id apart: ids this ledger ended are remembered (a
bounded window), and an id that starts with the prefix of an earlier incarnation
(``<pool>/<past epoch>/``, known exactly) is stale. Anything else was never granted.

Orphans are leases a crashed incarnation left with live holders: not this pool's
to hand out again, but they count against ``max_size`` until their holder lets go
or dies, and their resource is then destroyed.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from lessor.errors import (
    DoubleRelease,
    ExpiredLease,
    ForeignLease,
    LessorError,
    StaleLease,
    UnknownLease,
)
from lessor.holder import Holder
from lessor.protocol.messages import Lease

__all__ = ["RECENT_IDS", "Ledger", "Loan", "foreign"]

#: Ended lease ids remembered, to tell a double release from an unknown id.
RECENT_IDS = 4096


def foreign(lease_id: str, holder: str) -> ForeignLease:
    return ForeignLease(f"lease {lease_id} is held by another holder, not {holder}")


@dataclass(eq=False, slots=True)
class Loan:
    """One lease out: the lease as its holder knows it, the holder, the slot it came from."""

    lease: Lease
    holder: Holder
    slot: int


class Ledger:
    """Leases out of one pool incarnation (and the orphans it adopted), by id and holder."""

    def __init__(
        self, pool: str, epoch: str, past_epochs: Iterable[str], orphans: Sequence[Lease]
    ) -> None:
        self.pool = pool
        #: The earliest deadline added since the owner last looked (PoolCore.take_alarm).
        self.alarm = float("inf")
        self.prefix = f"{pool}/{epoch}/"
        self._past_prefixes = tuple(f"{pool}/{e}/" for e in past_epochs)
        self._numbers = itertools.count(1)
        self._out: dict[str, Loan] = {}
        self._by_holder: dict[Holder, set[str]] = {}
        self._expiries: list[tuple[float, str]] = []  # stale entries dropped lazily
        self._ended: OrderedDict[str, str] = OrderedDict()  # lease id -> why it ended
        # A handed-over lease carries its holder as text: typed once, here.
        self._orphans: dict[str, tuple[Lease, Holder]] = {
            lease.id: (lease, Holder.parse(lease.holder)) for lease in orphans
        }

    # -- leases out --------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._out)

    def lend(
        self,
        now: float,
        resource: Any,
        holder: Holder,
        expires_at: float | None,
        contended: bool,
        slot: int,
    ) -> Lease:
        """Issue the next lease id for ``resource`` of ``slot`` to ``holder``."""
        # Lease.holder is plain text, as it crosses the wire; the loan keeps the Holder.
        lease = Lease(f"{self.prefix}{next(self._numbers)}", self.pool, resource, str(holder),
                      now, expires_at, contended)  # fmt: skip
        self._out[lease.id] = Loan(lease, holder, slot)
        held = self._by_holder.get(holder)
        if held is None:
            self._by_holder[holder] = {lease.id}
        else:
            held.add(lease.id)
        if expires_at is not None:
            heapq.heappush(self._expiries, (expires_at, lease.id))
            self.alarm = min(self.alarm, expires_at)
        return lease

    def get(self, lease_id: str) -> Loan | None:
        return self._out.get(lease_id)

    def held_by(self, lease_id: str, holder: str) -> Loan:
        """The loan ``lease_id`` if ``holder`` holds it; else the LeaseError to raise."""
        loan = self._out.get(lease_id)
        if loan is None:
            raise self.error(lease_id)
        if loan.holder != holder:
            raise foreign(lease_id, holder)
        return loan

    def end(self, loan: Loan, why: str) -> None:
        """The lease is back (``why == "released"``) or was taken back (any other reason)."""
        lease_id = loan.lease.id
        del self._out[lease_id]
        held = self._by_holder[loan.holder]
        held.discard(lease_id)
        if not held:
            del self._by_holder[loan.holder]
        self._remember(lease_id, why)

    def _remember(self, lease_id: str, why: str) -> None:
        ended = self._ended
        ended[lease_id] = why
        if len(ended) > RECENT_IDS:
            ended.popitem(last=False)

    def renew(self, loan: Loan, lease: Lease) -> None:
        """``lease`` (same id, new expiry) replaces the loan's lease."""
        loan.lease = lease
        if lease.expires_at is not None:
            heapq.heappush(self._expiries, (lease.expires_at, lease.id))
            self.alarm = min(self.alarm, lease.expires_at)

    def expired(self, now: float) -> list[Loan]:
        """Loans whose lease expires at ``now`` or earlier (still out: the caller ends them)."""
        due: dict[str, Loan] = {}  # a lease renewed to the same time has two entries
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            at, lease_id = heapq.heappop(expiries)
            loan = self._out.get(lease_id)
            if loan is not None and loan.lease.expires_at == at:  # not renewed since
                due[lease_id] = loan
        return list(due.values())

    def next_expiry(self) -> float | None:
        expiries = self._expiries
        while expiries:
            at, lease_id = expiries[0]
            loan = self._out.get(lease_id)
            if loan is not None and loan.lease.expires_at == at:
                return at
            heapq.heappop(expiries)
        return None

    def loans(self) -> list[Loan]:
        return list(self._out.values())

    def leases_of(self, holder: Holder) -> list[str]:
        return list(self._by_holder.get(holder, ()))

    def loans_of(self, holder: Holder) -> list[Loan]:
        return [self._out[lease_id] for lease_id in self._by_holder.get(holder, ())]

    def held(self) -> dict[str, int]:
        """How many leases each holder has now (orphans not included)."""
        return {str(holder): len(ids) for holder, ids in self._by_holder.items()}

    def holders(self) -> list[Holder]:
        """Everyone who holds a lease, orphans included, each once."""
        return list(dict.fromkeys([*self._by_holder, *(h for _, h in self._orphans.values())]))

    # -- orphans -----------------------------------------------------------------------

    @property
    def orphans(self) -> int:
        return len(self._orphans)

    def orphan_leases(self) -> list[Lease]:
        return [lease for lease, _ in self._orphans.values()]

    def take_orphan(self, lease_id: str, holder: str) -> Lease | None:
        """Take back orphan ``lease_id`` from ``holder``; None if it is no orphan."""
        entry = self._orphans.get(lease_id)
        if entry is None:
            return None
        if entry[1] != holder:
            raise foreign(lease_id, holder)
        del self._orphans[lease_id]
        self._remember(lease_id, "released")
        return entry[0]

    def take_orphans(self, why: str, holder: str | None = None) -> list[Lease]:
        """Take back every orphan (of ``holder``, if given)."""
        taken = [e for e in self._orphans.values() if holder is None or e[1] == holder]
        for lease, _ in taken:
            del self._orphans[lease.id]
            self._remember(lease.id, why)
        return [lease for lease, _ in taken]

    # -- classifying a bad id ----------------------------------------------------------

    def error(self, lease_id: str) -> LessorError:
        """Why ``lease_id`` is not out: released, reclaimed, stale or never granted."""
        why = self._ended.get(lease_id)
        if why == "released":
            return DoubleRelease(f"lease {lease_id} was already released")
        if why is not None:
            return ExpiredLease(f"lease {lease_id} was reclaimed ({why})")
        if self._past_prefixes and lease_id.startswith(self._past_prefixes):
            return StaleLease(f"lease {lease_id} is from an earlier incarnation of {self.pool!r}")
        return UnknownLease(f"pool {self.pool!r} never granted lease {lease_id!r}")
