"""Where a test borrows from: one pool, reached in-process or from a worker's handle.

The ``where`` fixture (tests/conftest.py) runs a test once per place in :data:`WHERE`;
``where(pool)`` gives the handle that reaches ``pool`` from that place, so the same
behaviour test checks every handle. The worker's handles are those of a real
:class:`~lessor.worker.client.Client` over a real node socket; the client lives in
the test process, so a test can still look at the pool itself.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from lessor import PoolHandle
from lessor.handles.cached import CachedRoute
from lessor.transport.node import ENV_ADDRESS, ENV_AUTHKEY, Node
from lessor.worker.client import Client

#: The places, also the ids of the ``where`` fixture's cases.
WHERE = ["in-process", "in-process cached", "worker uncached", "worker cached"]


class Where:
    """One place in :data:`WHERE`; call it with an in-process pool for the handle."""

    def __init__(self, kind: str) -> None:
        assert kind in WHERE, kind
        self.kind = kind
        self._closers: list[Callable[[], None]] = []

    @property
    def cached(self) -> bool:
        """Whether the handle parks released leases (the pool counts them as leased)."""
        return self.kind in ("in-process cached", "worker cached")

    @property
    def in_worker(self) -> bool:
        return self.kind.startswith("worker")

    def __call__(self, pool: PoolHandle) -> PoolHandle:
        """The handle that reaches ``pool`` (an in-process pool's handle) from here."""
        if self.kind == "in-process":
            return pool
        if self.kind == "in-process cached":
            cached = CachedRoute(pool.route.target, pool.spec)  # type: ignore[attr-defined]
            self._closers.append(cached.close)
            return PoolHandle(cached)
        node = Node()
        self._closers.append(node.close)
        node.register(pool.name, pool)
        env = node.env("w")
        client = Client(env[ENV_ADDRESS], bytes.fromhex(env[ENV_AUTHKEY]), "w")
        client.on_lost = lambda: None  # this is the test process: never SIGTERM it
        self._closers.append(client.close)
        return client.pool(pool.name, cache=self.kind == "worker cached")

    def not_for(self, *kinds: str, why: str) -> None:
        """Skip this case if it is one of ``kinds``, which cannot show the behaviour (``why``)."""
        __tracebackhide__ = True  # the skip is reported at the test's line
        assert set(kinds) <= set(WHERE), kinds
        if self.kind in kinds:
            pytest.skip(f"not through the {self.kind} handle: {why}")

    def close(self) -> None:
        """Close what the handles made, the latest first (a client before its node)."""
        failed: list[Exception] = []
        while self._closers:
            try:
                self._closers.pop()()
            except Exception as exc:  # close the rest all the same
                failed.append(exc)
        if failed:
            raise failed[0]

    def __repr__(self) -> str:
        return f"Where({self.kind!r})"
