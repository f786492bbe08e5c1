"""RemoteRoute: how a PoolHandle in a worker process reaches a pool of its runtime."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lessor.core.cache import LeaseCache
from lessor.errors import ActorStopped
from lessor.handles import ops as leases
from lessor.handles.ops import LeaseOps
from lessor.holder import current_holder
from lessor.protocol.messages import (
    Acquire,
    Drain,
    GiveBack,
    Lease,
    LeaseExpired,
    Message,
    Release,
)

if TYPE_CHECKING:
    from lessor.worker.client import Client

__all__ = ["RemoteRoute"]

_INF = float("inf")


class RemoteRoute(LeaseOps):
    """A pool in the runtime, seen from a worker, with this process's lease cache.

    A release is judged by the client's :class:`~lessor.worker.ownership.LeaseLedger`
    before anything is sent, so it raises DoubleRelease, ForeignLease, UnknownLease,
    ExpiredLease or StaleLease as in-process, and the Release itself stays one-way.

    With ``cache=True`` (the default of ``client.pool``) this is lock caching with
    recall, as distributed lock managers and HikariCP's ConcurrentBag do it: a
    released lease is parked in this process and the next ``acquire`` here reuses it
    without a round trip. The pool still counts it as leased by this worker. When
    someone else waits and nothing is free, the pool pushes GiveBack: parked
    leases go back at once, leases out at that moment go back when released, and for
    a short window every release is real. Which releases park is
    :class:`~lessor.core.cache.LeaseCache`'s call.

    ``holder`` names who holds what this handle lends: by default the calling thread.
    """

    def __init__(
        self,
        client: Client,
        name: str,
        cache: bool = False,
        holder: Callable[[], str] = current_holder,
    ) -> None:
        self.client = client
        self.name = name
        self.cache = cache
        self._holder = holder
        self._ledger = client.ledger
        self._leases = LeaseCache(time.monotonic)
        self._lock = threading.Lock()
        if cache:
            client.on_push(self._on_push)

    def ask(self, message: Message, timeout: float | None = None) -> Any:
        if timeout is None and isinstance(message, Acquire):
            wait = message.timeout
            if wait is None:  # the pool's own acquire_timeout, as in-process
                wait = self.client.acquire_timeout(self.name)
            timeout = wait + leases.ACQUIRE_GRACE
        return self.client.ask(self.name, message, timeout)

    def tell(self, message: Message) -> None:
        self.client.tell(self.name, message)

    def acquire(
        self, timeout: float | None = None, priority: int = 0, ttl: float | None = None
    ) -> Lease:
        if not self.cache:
            lease = super().acquire(timeout, priority, ttl)
            self._ledger.granted(lease, self, self._holder())
            return lease
        if not _plainly_valid(timeout, priority, ttl):
            Acquire(self.name, timeout, priority, ttl)  # the same checks as a sent Acquire
        leases = self._leases
        with self._lock:
            reused = leases.take() if ttl is None else None
            if reused is None:
                leases.asking += 1
        if reused is not None:
            self._ledger.lent(reused, self, self._holder())
            return reused
        try:
            lease = super().acquire(timeout, priority, ttl)
        except BaseException:
            with self._lock:
                leases.asking -= 1
            raise
        with self._lock:
            leases.asking -= 1
            leases.lent(lease)
        self._ledger.granted(lease, self, self._holder())
        return lease

    def release(self, lease: Lease, broken: bool = False) -> None:
        """Give ``lease`` back; a LeaseError if the caller may not, and then nothing happens."""
        if self.cache:  # a GiveBack or LeaseExpired waiting to be read decides this one
            self.client.read_pushes()  # (uncached, the poll would cost ~5% of the pair)
        lender = self._ledger.returned(lease, self.name, self._holder())
        lender._give_back(lease, broken)  # the handle that lent it: this one, or a sibling

    def _give_back(self, lease: Lease, broken: bool) -> None:
        """Park a lease this handle lent and the ledger let go, or send it to the pool."""
        if self.cache:
            with self._lock:
                parked = self._leases.give_back(lease, broken, self.client.draining.is_set())
            if parked:
                return
        self.tell(Release(lease.id, broken))

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
        with contextlib.suppress(ActorStopped):  # gone: the runtime takes them back itself
            for lease in leases:
                self.tell(Release(lease.id))

    def _on_push(self, message: Message) -> None:
        if isinstance(message, GiveBack) and message.pool == self.name:
            with self._lock:
                parked = self._leases.recall()
            self._give(parked)
        elif isinstance(message, Drain):
            self.flush()
        elif isinstance(message, LeaseExpired) and message.pool == self.name:
            with self._lock:
                self._leases.forget(message.lease_id)


_INT64 = 1 << 63


def _plainly_valid(timeout: float | None, priority: int, ttl: float | None) -> bool:
    """Arguments an Acquire surely accepts, told apart cheaply (a reuse costs ~5 us).

    Only a subset: anything else is checked by building the Acquire, whose rules
    are the only ones (a false "no" here costs a microsecond, never a wrong answer).
    """
    return (
        ttl is None
        and type(priority) is int
        and -_INT64 <= priority < _INT64
        and (timeout is None or (type(timeout) in (int, float) and 0 < timeout < _INF))
    )
