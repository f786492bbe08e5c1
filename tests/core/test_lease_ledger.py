"""LeaseLedger on its own: which error a release gets, in the pool core's order."""

from __future__ import annotations

import pytest

from lessor.errors import (
    DoubleRelease,
    ExpiredLease,
    ForeignLease,
    LeaseError,
    StaleLease,
    UnknownLease,
)
from lessor.handles.ownership import RECENT_ENDED, LeaseLedger
from lessor.protocol.messages import Lease

ME = "worker:w:1"
A, B = "thread:1:1:1", "thread:1:2:2"


def lease(n: int, epoch: str = "e1", at: float = 1.0, pool: str = "p") -> Lease:
    return Lease(f"{pool}/{epoch}/{n}", pool, n, ME, at, None)


def refused(ledger: LeaseLedger[str], lent: Lease, pool: str = "p", by: str = A) -> type:
    with pytest.raises(LeaseError) as caught:
        ledger.returned(lent, pool, by)
    return caught.type


def test_each_bad_release_gets_its_own_error_and_changes_nothing() -> None:
    ledger: LeaseLedger[str] = LeaseLedger(ME)
    one, two = lease(1), lease(2)
    ledger.granted(one, "handle", A)
    ledger.granted(two, "handle", A)
    assert refused(ledger, one, by=B) is ForeignLease
    assert refused(ledger, one, pool="q") is UnknownLease  # another pool never granted it
    assert refused(ledger, lease(3)) is UnknownLease
    assert refused(ledger, Lease("p/e1/9", "p", 9, "worker:x:2", 1.0, None)) is ForeignLease
    assert ledger.held == 2
    assert ledger.returned(one, "p", A) == "handle"
    assert refused(ledger, one) is DoubleRelease
    ledger.reclaimed(two.id, "expired")
    assert refused(ledger, two) is ExpiredLease
    assert ledger.held == 0


def test_a_lease_lent_again_is_a_new_borrow() -> None:
    ledger: LeaseLedger[str] = LeaseLedger(ME)
    first = lease(1)
    ledger.granted(first, "cache", A)
    ledger.returned(first, "p", A)  # parked by its handle
    again = Lease(first.id, "p", 1, ME, 2.0, None)
    ledger.lent(again, "cache", B)
    assert refused(ledger, first) is DoubleRelease  # A's borrow ended: not B's to free
    ledger.returned(again, "p", B)


def test_an_expiry_noticed_before_its_grant_was_recorded_still_counts() -> None:
    ledger: LeaseLedger[str] = LeaseLedger(ME)
    one = lease(1)
    ledger.reclaimed(one.id, "expired")
    ledger.granted(one, "handle", A)
    assert refused(ledger, one) is ExpiredLease


def test_a_dead_holders_leases_are_handed_back_once() -> None:
    ledger: LeaseLedger[str] = LeaseLedger(ME)
    ledger.granted(lease(1), "h1", A)
    ledger.granted(lease(2), "h2", B)
    assert ledger.holder_gone(A) == [("p/e1/1", "h1")]
    assert ledger.holder_gone(A) == []
    assert refused(ledger, lease(1)) is ExpiredLease
    assert ledger.held == 1


@pytest.mark.parametrize("order", ["old first", "new first"])
def test_an_epoch_is_stale_once_a_later_one_granted_whatever_order_grants_are_recorded(
    order: str,
) -> None:
    ledger: LeaseLedger[str] = LeaseLedger(ME)
    old, new = lease(1, "e1", at=1.0), lease(1, "e2", at=2.0)
    for granted in [old, new] if order == "old first" else [new, old]:
        ledger.granted(granted, "handle", A)
    ledger.returned(old, "p", A)  # held: an orphan the new incarnation takes back
    assert refused(ledger, old) is StaleLease  # (the core's order: stale before double)
    assert refused(ledger, lease(7, "e1")) is StaleLease
    assert refused(ledger, lease(7, "e2")) is UnknownLease
    assert refused(ledger, lease(7, "e3")) is UnknownLease  # never seen: not known stale


def test_ended_leases_are_remembered_within_a_bound() -> None:
    ledger: LeaseLedger[str] = LeaseLedger(ME)
    ended = 2 * RECENT_ENDED + 10
    for n in range(ended):
        ledger.granted(lease(n), "handle", A)
        ledger.returned(lease(n), "p", A)
    assert refused(ledger, lease(0)) is UnknownLease  # forgotten, as the core forgets
    for n in (ended - RECENT_ENDED, ended - 1):  # the last RECENT_ENDED: all remembered
        assert refused(ledger, lease(n)) is DoubleRelease
    assert len(ledger._ended) + len(ledger._older) <= 2 * RECENT_ENDED
