"""PoolHandle: the one class callers borrow through, in-process and in a worker alike.

What differs is the route to the pool, chosen where the handle is made:

- :class:`~lessor.handles.local.LocalRoute` (``runtime.pool(name)``, ``start_pool``):
  the pool's actor is in this process; a request usually runs on the caller's own
  thread, and the pool's turn judges a release;
- :class:`~lessor.worker.remote.RemoteRoute` (``lessor.connect().pool(name)``): the
  pool is in the runtime; requests are frames, the worker's ledger judges a release
  with no round trip, and released leases may be parked in the worker.

Code written against PoolHandle runs unchanged in either place.
"""

from __future__ import annotations

from typing import Any

from lessor.handles.ops import ACQUIRE_GRACE, LeaseOps
from lessor.protocol.messages import Lease, Message
from lessor.protocol.pool_messages import Wait

__all__ = ["PoolHandle"]


class PoolHandle(LeaseOps):
    """A pool: ``acquire``/``release``/``renew``/``stats``/``wait``, the ``lease()`` block,
    and the message API (``ask``/``tell``). Cheap to copy, safe to share between threads."""

    def __init__(self, route: LeaseOps) -> None:
        self.route = route
        self.name = route.name
        # The hot calls go straight to the route's own methods: a call less per use.
        # (the methods below stay, for the signatures and for subclass-free reading)
        for hot in ("acquire", "release", "finish"):
            object.__setattr__(self, hot, getattr(route, hot))

    def ask(self, message: Message, timeout: float | None = None) -> Any:
        return self.route.ask(message, timeout)

    def tell(self, message: Message) -> None:
        self.route.tell(message)

    def acquire(
        self, timeout: float | None = None, priority: int = 0, ttl: float | None = None
    ) -> Lease:
        """A lease, waiting up to ``timeout`` seconds (default None: the pool's
        ``acquire_timeout``) at ``priority`` (default 0; higher first); ``ttl`` seconds
        (default None: the pool's ``lease_ttl``) bounds how long it may be held.

        ``timeout=0`` is a try: a lease now, or PoolExhausted at once saying why; it
        never waits behind other holders, only for a resource being made or reset for
        it (then up to the pool's ``acquire_timeout``). See :mod:`lessor.core.pool.trying`.
        """
        return self.route.acquire(timeout, priority, ttl)

    def release(self, lease: Lease, broken: bool = False) -> None:
        """Give a lease back; a double, foreign, unknown, stale or expired one raises."""
        self.route.release(lease, broken)

    def renew(self, lease: Lease, ttl: float) -> Lease:
        return self.route.renew(lease, ttl)

    def wait(self, timeout: float = 30.0) -> None:
        """Block until the pool holds its ``min_size`` resources (idle or leased), as
        psycopg_pool's ``ConnectionPool.wait()``; at once with ``min_size=0``.

        Past ``timeout`` seconds (default 30.0) raises AcquireTimeout, its ``__cause__``
        the factory's last error (a worker asking the runtime's pool gets its text
        only): a dead database is reported at start. The pool keeps trying either way.
        """
        self.route.ask(Wait(self.name, timeout), timeout + ACQUIRE_GRACE)

    def is_fatal(self, exc: BaseException) -> bool:
        return self.route.is_fatal(exc)

    def finish(self, resource: Any) -> None:
        self.route.finish(resource)

    def __getattr__(self, name: str) -> Any:
        """What only one route has: ``spec``, ``stop``, ``actor_ref`` in-process;
        ``flush``, ``parked``, ``cache`` in a worker."""
        if name.startswith("_") or name == "route":
            raise AttributeError(name)
        return getattr(self.route, name)

    def __repr__(self) -> str:
        return f"PoolHandle({self.name!r} via {type(self.route).__name__})"
