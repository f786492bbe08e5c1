"""PoolHandle: how a thread or actor in the pool's process talks to a PoolActor.

It sends the same messages a worker process would (``ask(Acquire(...))``,
``tell(Release(...))``) with the caller's identity in the envelope, and adds the
``lease()`` context manager. Release is a tell: a pair costs one round trip.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pykka
from pykka import ThreadingFuture

from lessor.actors.base import CallEnvelope
from lessor.actors.pool import CancelAcquire
from lessor.errors import AcquireTimeout, PoolClosed
from lessor.holder import current_holder
from lessor.messages import Acquire, GetStats, Lease, Message, PoolStats, Release, Renew
from lessor.specs import PoolSpec

__all__ = ["PoolHandle"]

#: How long past an Acquire's own timeout the caller waits for the pool to answer it.
ACQUIRE_GRACE = 5.0
#: How long any other request may take before the pool is deemed unresponsive.
REQUEST_TIMEOUT = 30.0


class PoolHandle:
    """A reference to a running pool; cheap to copy, safe to share between threads."""

    def __init__(
        self, ref: pykka.ActorRef[Any], spec: PoolSpec, holder: Callable[[], str] = current_holder
    ) -> None:
        self._ref = ref
        self.spec = spec
        self.name = spec.name
        self._holder = holder

    @property
    def actor_ref(self) -> pykka.ActorRef[Any]:
        return self._ref

    def ask(self, message: Message, timeout: float | None = None) -> Any:
        """Send a request and wait for its answer; errors come back raised."""
        if not self._ref.is_alive():
            raise PoolClosed(f"pool {self.name!r} is not running")
        future: ThreadingFuture[Any] = ThreadingFuture()
        holder = self._holder()
        self._ref.actor_inbox.put(CallEnvelope(message, future, holder))  # type: ignore[arg-type]
        if timeout is None:
            if isinstance(message, Acquire):
                timeout = (message.timeout or self.spec.acquire_timeout) + ACQUIRE_GRACE
            else:
                timeout = REQUEST_TIMEOUT
        try:
            return future.get(timeout=timeout)
        except pykka.Timeout:
            if isinstance(message, Acquire):
                self._ref.tell(CancelAcquire(future, holder))
                raise AcquireTimeout(f"pool {self.name!r} did not answer in {timeout:g}s") from None
            raise PoolClosed(f"pool {self.name!r} did not answer in {timeout:g}s") from None
        except pykka.ActorDeadError as exc:
            raise PoolClosed(f"pool {self.name!r} stopped") from exc

    def tell(self, message: Message) -> None:
        """Send without waiting (Release); a refusal is logged by the pool."""
        if not self._ref.is_alive():
            raise PoolClosed(f"pool {self.name!r} is not running")
        self._ref.actor_inbox.put(CallEnvelope(message, None, self._holder()))  # type: ignore[arg-type]

    def acquire(
        self, timeout: float | None = None, priority: int = 0, ttl: float | None = None
    ) -> Lease:
        lease: Lease = self.ask(Acquire(self.name, timeout, priority, ttl))
        return lease

    def release(self, lease: Lease, broken: bool = False) -> None:
        self.tell(Release(lease.id, broken))

    def renew(self, lease: Lease, ttl: float) -> Lease:
        renewed: Lease = self.ask(Renew(lease.id, ttl))
        return renewed

    def stats(self) -> PoolStats:
        stats: PoolStats = self.ask(GetStats())
        return stats

    @contextmanager
    def lease(
        self, timeout: float | None = None, priority: int = 0, ttl: float | None = None
    ) -> Iterator[Any]:
        """Borrow a resource for a block; an error the factory deems fatal breaks it."""
        lease = self.acquire(timeout, priority, ttl)
        try:
            yield lease.resource
        except BaseException as exc:
            self.release(lease, broken=self.spec.factory.is_fatal(exc))
            raise
        self.release(lease)

    def stop(self, timeout: float | None = None) -> None:
        """Stop the pool actor: waiters get PoolClosed, idle resources are destroyed."""
        self._ref.stop(block=True, timeout=timeout)


def start_pool(spec: PoolSpec) -> PoolHandle:
    """Start an unsupervised PoolActor (the Runtime supervises the ones it starts)."""
    from lessor.actors.pool import PoolActor

    return PoolHandle(PoolActor.start(spec), spec)
