"""Two tiers for resources that cannot cross processes: one global limit over many pools.

In the supervising process a quota pool of ``max_total`` plain tokens; in each
worker a pool of real resources (connections) whose factory is wrapped by
:class:`QuotaFactory`: making a resource first takes a quota lease, destroying it
gives the lease back. So 8 workers share "at most 20 connections", a dead worker's
quota comes back with its other leases, and a worker told that someone waits for
quota (GiveBack) closes the idle connections it keeps.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

from lessor.factory import Factory, TokenFactory
from lessor.handles.ops import LeaseOps
from lessor.protocol.messages import Lease
from lessor.specs import PoolSpec

__all__ = ["QuotaFactory", "local_spec", "quota_holder", "quota_spec"]

#: Worker-side idle connections give their quota back after this long by default.
LOCAL_MAX_IDLE = 10.0


def quota_holder(name: str) -> str:
    """Who holds a worker's quota leases of pool ``name``: its local pool, not a thread.

    A resource's quota lease is taken on the factory thread that makes the resource
    and given back on whichever one destroys it, and lives as long as the resource.
    """
    return f"local-pool:{name}"


def quota_spec(spec: PoolSpec) -> PoolSpec:
    """The runtime's side of a process-scoped pool: ``max_total`` tokens, nothing else."""
    total = spec.max_total or spec.max_size
    return PoolSpec(
        spec.name,
        TokenFactory(),
        max_size=total,
        acquire_timeout=spec.acquire_timeout,
        max_idle=None,
        max_lifetime=None,
        max_waiting=spec.max_waiting,
        lease_ttl=spec.lease_ttl,
    )


def local_spec(spec: PoolSpec, quota: LeaseOps) -> PoolSpec:
    """A worker's side: the user's pool, its factory wrapped to hold quota per resource."""
    max_idle = spec.max_idle if spec.max_idle is not None else LOCAL_MAX_IDLE
    return replace(
        spec,
        factory=QuotaFactory(spec.factory, quota, spec.acquire_timeout),
        max_idle=min(max_idle, LOCAL_MAX_IDLE),
        scope="runtime",
        max_total=None,
    )


class QuotaFactory(Factory[Any]):
    """Wraps a factory so every resource it makes holds one lease on the global quota."""

    def __init__(self, wrapped: Factory[Any], quota: LeaseOps, timeout: float) -> None:
        self.wrapped = wrapped
        self.quota = quota
        self.timeout = timeout
        self.reusable = wrapped.reusable
        self._leases: dict[int, Lease] = {}
        self._lock = threading.Lock()

    def create(self) -> Any:
        lease = self.quota.acquire(timeout=self.timeout)  # may wait for another worker
        try:
            resource = self.wrapped.create()
        except BaseException:
            self.quota.release(lease)
            raise
        with self._lock:
            self._leases[id(resource)] = lease
        return resource

    def destroy(self, resource: Any) -> None:
        try:
            self.wrapped.destroy(resource)
        finally:
            with self._lock:
                lease = self._leases.pop(id(resource), None)
            if lease is not None:
                self.quota.release(lease)

    def check(self, resource: Any) -> bool:
        return self.wrapped.check(resource)

    def reset(self, resource: Any) -> None:
        self.wrapped.reset(resource)

    def is_fatal(self, exc: BaseException) -> bool:
        return self.wrapped.is_fatal(exc)

    def finish(self, resource: Any) -> None:
        self.wrapped.finish(resource)
