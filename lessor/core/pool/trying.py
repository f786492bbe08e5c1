"""Try-acquire (``timeout=0``): a lease now, or ``PoolExhausted`` saying why.

A try never waits behind other holders: it is granted an idle resource, or one on
its way that no admitted waiter ahead of it needs (being reset after a release, or
being made), or the pool makes one for it when it has room under ``max_size``. It
then waits only for that (a check on borrow, a reset, a creation), bounded by the
pool's ``acquire_timeout``, since a creation can be slow or fail (AcquireTimeout,
its cause the factory's error). It is refused at once when only another holder's
release could serve it (nothing idle, ``max_size`` reached, as many admitted
waiters ahead as resources on their way), or when the memory manager has paused
its holder's admission. Closed, draining and breaker-gated pools refuse it as they
refuse any Acquire.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lessor.errors import PoolExhausted
from lessor.holder import Holder

if TYPE_CHECKING:
    from lessor.core.pool.state import PoolState

__all__ = ["refuse_unless_free"]


def refuse_unless_free(pool: PoolState, holder: Holder) -> None:
    """Raise PoolExhausted (counted as rejected) unless a try by ``holder`` is served
    without waiting for a release; the fast path (an idle resource, nobody ahead) ran."""
    name, spec = pool.spec.name, pool.spec
    if not pool.admits(holder):
        paused = pool.paused
        why = paused.get(holder) or paused.get("") or "paused"
        pool.counters.rejected += 1
        raise PoolExhausted(
            f"pool {name!r} grants {holder} nothing now (timeout=0): its admission is "
            f"paused by the memory manager: {why}"
        )
    slots = pool._slots
    ahead = pool._admitted_waiting()
    # in a reset after a release, or in a check for a waiter that gave up or is paused
    coming_back = len(slots.checking) - pool._queue.claimed(pool.admits)
    on_the_way = len(slots.idle) + coming_back + slots.creating
    room = spec.max_size - len(slots) - slots.creating - pool._ledger.orphans
    if on_the_way + max(room, 0) > ahead:
        return
    pool.counters.rejected += 1
    raise PoolExhausted(
        f"pool {name!r} has nothing free now (timeout=0): size {len(slots)}/{spec.max_size}, "
        f"{pool.leased} leased, {ahead} waiting"
    )
