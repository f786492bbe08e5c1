"""The lease API every pool handle offers, in-process or from a worker process.

A handle only has to say how to ``ask`` and how to ``tell``; the conveniences
(``acquire``, ``release``, ``renew``, ``stats`` and the ``lease()`` block) are the
same everywhere, so worker code reads exactly like in-process code.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lessor.errors import ExpiredLease
from lessor.factory import Factory
from lessor.protocol.messages import Acquire, GetStats, Lease, Message, PoolStats, Release, Renew

__all__ = ["ACQUIRE_GRACE", "DEFAULT_ACQUIRE_TIMEOUT", "REQUEST_TIMEOUT", "LeaseOps"]

#: How long past an Acquire's own timeout (or its pool's) the caller waits for the answer.
ACQUIRE_GRACE = 5.0
#: How long any other request may take before the pool is deemed unresponsive.
REQUEST_TIMEOUT = 30.0
#: A pool's ``acquire_timeout`` when nothing better is known (PoolSpec's default).
DEFAULT_ACQUIRE_TIMEOUT = 30.0


class LeaseOps:
    """Mixin: subclasses set ``name`` and implement ``ask`` and ``tell``."""

    name: str
    #: The pool's factory, when the pool is in this process: its ``is_fatal`` and
    #: ``finish`` end ``lease()`` blocks. None for a pool in the runtime (a worker's
    #: route to one): its resources are plain tokens, with no hooks to run here.
    factory: Factory[Any] | None = None

    def ask(self, message: Message, timeout: float | None = None) -> Any:
        raise NotImplementedError

    def tell(self, message: Message) -> None:
        raise NotImplementedError

    def is_fatal(self, exc: BaseException) -> bool:
        """Whether an error raised in a ``lease()`` block means the resource is broken."""
        return self.factory is not None and self.factory.is_fatal(exc)

    def finish(self, resource: Any) -> None:
        """End a ``lease()`` block that went well (PostgreSQL: commit), before the release."""
        if self.factory is not None:
            self.factory.finish(resource)

    def acquire(
        self, timeout: float | None = None, priority: int = 0, ttl: float | None = None
    ) -> Lease:
        if timeout is None and ttl is None and type(priority) is int and priority == 0:
            message = _plain_acquire(self.name)  # the common case: built once per pool
        else:
            message = Acquire(self.name, timeout, priority, ttl)
        lease: Lease = self.ask(message)
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
        """Borrow a resource for a block; an error deemed fatal releases it as broken.
        ``timeout`` is ``acquire``'s (0: now or PoolExhausted).

        A block that ends well is finished by the factory before the release (a
        PostgreSQL connection commits, as psycopg_pool's ``connection()`` does).
        Raises ExpiredLease on exit if the lease outlived its ttl (it was reclaimed).
        """
        lease = self.acquire(timeout, priority, ttl)
        try:
            yield lease.resource
            if not _expired(lease):  # (an expired lease's resource is not ours to commit)
                self.finish(lease.resource)
        except BaseException as exc:
            if not _expired(lease):
                self.release(lease, broken=self.is_fatal(exc))
            raise
        if _expired(lease):  # the pool reclaimed it at expires_at: nothing to give back
            raise ExpiredLease(f"lease {lease.id} expired before the block ended")
        self.release(lease)


def _expired(lease: Lease) -> bool:
    return lease.expires_at is not None and time.monotonic() >= lease.expires_at


_plain_acquires: dict[str, Acquire] = {}


def _plain_acquire(pool: str) -> Acquire:
    """``Acquire(pool)`` with every default; messages are immutable, so one is shared."""
    message = _plain_acquires.get(pool)
    if message is None:
        message = _plain_acquires[pool] = Acquire(pool)
    return message
