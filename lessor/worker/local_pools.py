"""Two tiers for resources that cannot cross processes: one global limit over many pools.

In the supervising process a quota pool of ``max_total`` plain tokens; in each
worker a pool of real resources (connections) whose factory is wrapped by
:class:`QuotaFactory`: making a resource first takes a quota lease, destroying it
gives the lease back. So 8 workers share "at most 20 connections", a dead worker's
quota comes back with its other leases, a worker told that someone waits for quota
(GiveBack) closes the idle connections it keeps, and one told it holds more than its
fair share (Shed) closes connections as they are released. The runtime's own process
runs the same kind of pool (:mod:`lessor.runtime.process_pools`). Each worker tells
the runtime how its pool is doing (:class:`StatsReporter`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from lessor.actors.scheduler import process_scheduler
from lessor.errors import LessorError
from lessor.factory import Factory, TokenFactory
from lessor.handles.actor_route import ActorRoute
from lessor.handles.ops import LeaseOps
from lessor.holder import ANONYMOUS
from lessor.protocol.messages import GetStats, Lease, PoolStats
from lessor.protocol.quota_messages import LocalPoolStats
from lessor.specs import PoolSpec

__all__ = [
    "REPORT_INTERVAL",
    "QuotaFactory",
    "StatsReporter",
    "local_spec",
    "quota_holder",
    "quota_spec",
]

#: Worker-side idle connections give their quota back after this long by default.
LOCAL_MAX_IDLE = 10.0
#: Seconds between looks at a worker's own pool; its stats go to the runtime if changed.
REPORT_INTERVAL = 0.2


def quota_holder(name: str) -> str:
    """Who holds a worker's quota leases of pool ``name``: its local pool, not a thread.

    A resource's quota lease is taken on the factory thread that makes the resource
    and given back on whichever one destroys it, and lives as long as the resource.
    """
    return f"local-pool:{name}"


def quota_spec(spec: PoolSpec) -> PoolSpec:
    """The runtime's side of a process-scoped pool: ``max_total`` tokens, nothing else.

    A token lives as long as its connection, so it never expires (the local pools
    apply ``lease_ttl`` to their own leases).
    """
    total = spec.max_total or spec.max_size
    return PoolSpec(
        spec.name,
        TokenFactory(),
        max_size=total,
        acquire_timeout=spec.acquire_timeout,
        max_idle=None,
        max_lifetime=None,
        max_waiting=spec.max_waiting,
    )


def local_spec(spec: PoolSpec, quota: LeaseOps) -> PoolSpec:
    """A process's side: the user's pool, its factory wrapped to hold quota per resource.

    A create that waits for a token holds one of the pool's factory slots meanwhile, so
    with ``factory_concurrency`` at most ``max_size`` the destroys that give tokens back
    (and the resets) could queue behind creates waiting for those very tokens: every
    process would stall until the creates time out. One slot more than ``max_size``
    always leaves one free for them.
    """
    max_idle = spec.max_idle if spec.max_idle is not None else LOCAL_MAX_IDLE
    return replace(
        spec,
        factory=QuotaFactory(spec.factory, quota, spec.acquire_timeout),
        max_idle=min(max_idle, LOCAL_MAX_IDLE),
        factory_concurrency=max(spec.factory_concurrency, spec.max_size + 1),
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
        self.portable = wrapped.portable  # (a Ray node agent lends its tokens to tasks)
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


class StatsReporter:
    """Tells the runtime how this process's own pool is doing (``LocalPoolStats``), at
    once, then every ``interval`` seconds (default :data:`REPORT_INTERVAL`) in which it
    changed. Runs on the scheduler's thread and never waits: the pool answers after its
    turn, on whichever thread ran it, and that thread sends. Stops with the pool.
    """

    def __init__(
        self,
        pool: ActorRoute,
        send: Callable[[LocalPoolStats], None],
        interval: float = REPORT_INTERVAL,
    ) -> None:
        self._pool = pool
        self._send = send
        self._interval = interval
        self._last: LocalPoolStats | None = None
        self._timer = process_scheduler().timer(self._look)
        self._timer.schedule(time.monotonic())

    def _look(self) -> None:
        try:
            self._pool.deliver(GetStats(), self, ANONYMOUS)
        except LessorError:  # the pool stopped (the worker is closing)
            self.stop()

    def set(self, value: Any = None) -> bool:
        """The pool's answer (a Reply): send it if it changed, look again later."""
        if isinstance(value, PoolStats):
            report = LocalPoolStats.of(value)
            if report != self._last:
                try:
                    self._send(report)
                except LessorError:  # the runtime is gone: nobody to tell
                    self.stop()
                    return True
                self._last = report
        self._timer.schedule(time.monotonic() + self._interval)
        return True

    def set_exception(self, exc_info: Any = None) -> bool:
        self.stop()  # the pool refused (it stopped)
        return True

    def stop(self) -> None:
        self._timer.cancel()
