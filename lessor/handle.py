"""PoolHandle: how a thread or actor in the pool's process talks to a PoolActor.

It sends the same messages a worker process would (``ask(Acquire(...))``,
``tell(Release(...))``) with the caller's identity in the envelope, and adds the
``lease()`` context manager. Release is a tell: a pair costs one round trip.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pykka
from pykka import ThreadingFuture

from lessor.actors.base import CallEnvelope
from lessor.actors.pool import CancelAcquire
from lessor.errors import AcquireTimeout, ActorRestarted, ActorStopped, ExpiredLease, PoolClosed
from lessor.holder import current_holder
from lessor.messages import Acquire, GetStats, Lease, Message, PoolStats, Release, Renew
from lessor.specs import PoolSpec
from lessor.supervisor.child import ChildRef, ChildState

__all__ = ["PoolHandle"]

#: How long past an Acquire's own timeout the caller waits for the pool to answer it.
ACQUIRE_GRACE = 5.0
#: How long any other request may take before the pool is deemed unresponsive.
REQUEST_TIMEOUT = 30.0


class PoolHandle:
    """A reference to a running pool; cheap to copy, safe to share between threads."""

    def __init__(
        self,
        target: pykka.ActorRef[Any] | ChildRef,
        spec: PoolSpec,
        holder: Callable[[], str] = current_holder,
    ) -> None:
        self._target = target
        self.spec = spec
        self.name = spec.name
        self._holder = holder

    @property
    def actor_ref(self) -> pykka.ActorRef[Any]:
        """The current incarnation's ref (it changes when a supervised pool restarts)."""
        if isinstance(self._target, ChildRef):
            return self._current(REQUEST_TIMEOUT)
        return self._target

    def _current(self, wait: float) -> pykka.ActorRef[Any]:
        target = self._target
        if not isinstance(target, ChildRef):
            if not target.is_alive():
                raise PoolClosed(f"pool {self.name!r} is not running")
            return target
        ref = target.ref  # fast path: running, no lock
        if target.state == ChildState.RUNNING and ref is not None and ref.is_alive():
            return ref
        try:
            return target.current(wait)  # waits through a restart
        except ActorRestarted:
            raise
        except ActorStopped as exc:
            raise PoolClosed(f"pool {self.name!r} is stopped") from exc

    def ask(self, message: Message, timeout: float | None = None) -> Any:
        """Send a request and wait for its answer; errors come back raised."""
        if timeout is None:
            if isinstance(message, Acquire):
                timeout = (message.timeout or self.spec.acquire_timeout) + ACQUIRE_GRACE
            else:
                timeout = REQUEST_TIMEOUT
        ref = self._current(timeout)
        future: ThreadingFuture[Any] = ThreadingFuture()
        holder = self._holder()
        ref.actor_inbox.put(CallEnvelope(message, future, holder))  # type: ignore[arg-type]
        try:
            return future.get(timeout=timeout)
        except pykka.Timeout:
            if isinstance(message, Acquire):
                ref.tell(CancelAcquire(future, holder))
                raise AcquireTimeout(f"pool {self.name!r} did not answer in {timeout:g}s") from None
            raise PoolClosed(f"pool {self.name!r} did not answer in {timeout:g}s") from None
        except pykka.ActorDeadError as exc:
            raise PoolClosed(f"pool {self.name!r} stopped") from exc

    def tell(self, message: Message) -> None:
        """Send without waiting (Release); a refusal is logged by the pool."""
        ref = self._current(REQUEST_TIMEOUT)
        ref.actor_inbox.put(CallEnvelope(message, None, self._holder()))  # type: ignore[arg-type]

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
            if not _expired(lease):
                self.release(lease, broken=self.spec.factory.is_fatal(exc))
            raise
        if _expired(lease):  # the pool reclaimed it (at expires_at): nothing to give back
            raise ExpiredLease(f"lease {lease.id} expired before the block ended")
        self.release(lease)

    def stop(self, timeout: float | None = None) -> None:
        """Stop an unsupervised pool: waiters get PoolClosed, resources are destroyed.

        A supervised pool is stopped by its Runtime's shutdown instead.
        """
        if isinstance(self._target, ChildRef):
            raise TypeError("a supervised pool stops with its Runtime (runtime.shutdown())")
        self._target.stop(block=True, timeout=timeout)


def _expired(lease: Lease) -> bool:
    return lease.expires_at is not None and time.monotonic() >= lease.expires_at


def start_pool(spec: PoolSpec) -> PoolHandle:
    """Start an unsupervised PoolActor (the Runtime supervises the ones it starts)."""
    from lessor.actors.pool import PoolActor

    return PoolHandle(PoolActor.start(spec), spec)
