"""The runtime's side of its pools, and of process-scoped ones (``scope="process"``) above all.

A process-scoped pool has two tiers: a quota of ``max_total`` tokens, the pool
workers reach under the spec's name (:func:`~lessor.worker.local_pools.quota_spec`),
and in each process that uses it a pool of real resources whose factory holds one
token per resource (:class:`~lessor.worker.local_pools.QuotaFactory`). The runtime's
own process is one of those processes: ``runtime.pool(name)`` is its own pool of real
connections (:class:`OwnPool`), a supervised child ``local:<name>`` started on first
use, which holds its tokens as ``cache:<pid>:local:<name>:<n>``: a holder told GiveBack
and Shed, as a worker is. ``runtime.quota(name)`` is the quota itself, which shares
its tokens fairly (:mod:`lessor.core.pool.fairshare`).

Workers tell the runtime how their own pools are doing (:mod:`.process_stats`);
``runtime.process_pool_stats(name)`` puts that together with the quota's stats and this
process's own pool's.

At shutdown the own pool stops admitting with every other pool; as soon as none of
its resources is lent (or at the deadline, taking back the rest) it is stopped, which
closes its connections and gives their tokens back, so the quota drains instead of
having them reclaimed.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import pykka

from lessor import holder as holders
from lessor.actors.pool import PoolActor, PoolLineage
from lessor.actors.pool_messages import AwaitDrained, BeginDrain, EvictIdle, ReclaimAll
from lessor.core.memory_decisions import RUNTIME
from lessor.core.pool.stats import Counters, snapshot
from lessor.errors import LessorError, NoSuchPool
from lessor.handles.breaker import Breaker
from lessor.handles.cached import CachedRoute
from lessor.handles.local import LocalRoute
from lessor.handles.ops import LeaseOps
from lessor.handles.pool import PoolHandle
from lessor.holder import Holder
from lessor.protocol.messages import GetStats, GiveBack, Lease, Message
from lessor.protocol.quota_messages import LocalPoolStats, Shed
from lessor.runtime.process_stats import ProcessPoolStats, QuotaRoute, StatsBoard
from lessor.runtime.shutdown import ask, reclaim_holder
from lessor.specs import ChildSpec, PoolSpec, Restart
from lessor.supervisor.child import ChildRef
from lessor.supervisor.supervisor import RemoveChild
from lessor.worker.local_pools import local_spec, quota_spec

if TYPE_CHECKING:
    from lessor.runtime.breakers import Breakers
    from lessor.supervisor.events import EventLog

__all__ = ["OwnPool", "ProcessPoolStats", "RuntimePools", "StatsBoard"]

_serials = itertools.count(1)


class OwnPool(LeaseOps):
    """The runtime's own pool of process-scoped pool ``spec.name``: real resources, each
    holding a quota token; started on first use (``start``), as a worker's is.

    ``spec`` is the pool it runs (the factory wrapped by ``QuotaFactory``). A stats
    request before the first use answers an empty pool instead of starting one.
    """

    def __init__(
        self,
        spec: PoolSpec,
        quota: LocalRoute,
        start: Callable[[OwnPool], LocalRoute],
    ) -> None:
        self.name = spec.name
        self.id = f"local:{spec.name}"  # its child's id under the root
        #: Holds this process's tokens of the quota (told GiveBack and Shed); one of its
        #: own, as two runtimes of a process may each have a pool of that name.
        me = f"{os.getpid()}:local:{spec.name}:{next(_serials)}"
        self.holder = holder = Holder.cache(me)
        self.spec = local_spec(spec, LocalRoute(quota.target, quota.spec, lambda: holder))
        self.factory = self.spec.factory
        self._start = start
        self._lock = threading.Lock()
        self.started: LocalRoute | None = None
        #: The runtime's cached handle of it, if made (``runtime.pool(name, cache=True)``).
        self.caches: list[CachedRoute] = []
        holders.bind_receiver(holder, _Notices(self))

    def route(self) -> LocalRoute:
        """The running pool, started now if it was not."""
        route = self.started
        if route is None:
            with self._lock:
                if self.started is None:
                    self.started = self._start(self)
                route = self.started
        return route

    def tell(self, message: Message) -> None:
        self.route().tell(message)

    def ask(self, message: Message, timeout: float | None = None) -> Any:
        if self.started is None and isinstance(message, GetStats):
            return snapshot(self.name, Counters(), size=0, idle=0, leased=0, checking=0,
                            creating=0, waiting=0, holders={})  # fmt: skip
        return self.route().ask(message, timeout)

    def acquire(
        self, timeout: float | None = None, priority: int = 0, ttl: float | None = None
    ) -> Lease:
        return self.route().acquire(timeout, priority, ttl)

    def release(self, lease: Lease, broken: bool = False) -> None:
        self.route().release(lease, broken)

    def renew(self, lease: Lease, ttl: float) -> Lease:
        return self.route().renew(lease, ttl)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.route(), name)


class _Notices:
    """What the quota tells the holder of this process's tokens (after its turn)."""

    __slots__ = ("own",)

    def __init__(self, own: OwnPool) -> None:
        self.own = own

    def tell(self, message: Message) -> None:
        """GiveBack: close the idle connections; Shed: close connections above this
        process's fair share. What the runtime's cache parks goes back first (GiveBack)
        or right after the Shed is noted (so that releasing it closes it)."""
        route = self.own.started
        if route is None or not isinstance(message, GiveBack | Shed):
            return
        if isinstance(message, Shed):
            route.deliver_internal(message)
        for cache in self.own.caches:
            cache.flush()
        if isinstance(message, GiveBack):
            route.deliver_internal(EvictIdle())


class _StopWhenDrained:
    """A drain waiter (a Reply): once nothing of the own pool is lent, stop it."""

    def __init__(self, root: pykka.ActorRef[Any], child_id: str) -> None:
        self._root = root
        self._child_id = child_id

    def set(self, value: Any = None) -> bool:
        with contextlib.suppress(pykka.ActorDeadError):  # (the root stops it: it closes
            self._root.tell(RemoveChild(self._child_id))  # its connections, tokens go back)
        return True

    def set_exception(self, exc_info: Any = None) -> bool:
        return self.set()


class RuntimePools:
    """Runtime's methods for starting pools (it provides the fields below)."""

    event_log: EventLog
    _lock: threading.RLock
    _pools: dict[str, PoolHandle]
    _process_specs: dict[str, PoolSpec]
    _own: dict[str, PoolHandle]
    _caches: dict[str, PoolHandle]
    _board: StatsBoard
    _breakers: Breakers
    _node: Any
    _root: Any

    if TYPE_CHECKING:

        def _check(self) -> None: ...

        def add_child(self, spec: ChildSpec) -> ChildRef: ...

    # -- starting pools ----------------------------------------------------------------

    def _add_pool(
        self, spec: PoolSpec, restart: Restart, shutdown: float, fair_share: bool
    ) -> PoolHandle:
        """``add_pool``: a pool, or a process-scoped pool's quota (workers reach either
        by its name) and the runtime's own pool of it (returned, as ``pool(name)`` is)."""
        lineage = PoolLineage()
        if spec.scope != "process":
            route = self._supervise(spec.name, spec, lineage, restart, shutdown, LocalRoute)
            return self._register(spec, route, None)

        def quota(child: ChildRef, quota: PoolSpec) -> LocalRoute:
            return QuotaRoute(child, quota, self._board)

        def start(own: OwnPool) -> LocalRoute:
            own_lineage = PoolLineage()
            if "" in lineage.paused:  # the machine's memory pause holds here too
                own_lineage.paused[""] = lineage.paused[""]
            return self._supervise(own.id, own.spec, own_lineage, restart, shutdown, LocalRoute)

        # (the quota has no breaker: the processes' own pools obey the spec's)
        route = self._supervise(spec.name, quota_spec(spec), lineage, restart, shutdown, quota,
                                fair_share=fair_share)  # fmt: skip
        return self._register(spec, route, PoolHandle(OwnPool(spec, route, start)))

    def _register(self, spec: PoolSpec, route: LocalRoute, own: PoolHandle | None) -> PoolHandle:
        """Workers reach ``route`` by the pool's name; the runtime's handle is returned."""
        handle = PoolHandle(route)
        with self._lock:
            self._pools[spec.name] = handle
            if own is not None:
                self._process_specs[spec.name] = spec
                self._own[spec.name] = own
            if self._node is not None:
                self._node.register(spec.name, route)
        return handle if own is None else own

    def _supervise(
        self,
        id: str,
        spec: PoolSpec,
        lineage: PoolLineage,
        restart: Restart,
        shutdown: float,
        make: Callable[[ChildRef, PoolSpec], LocalRoute],
        **kwargs: Any,
    ) -> LocalRoute:
        """Start ``spec``'s pool as child ``id`` of the root, behind its breaker if any."""
        self._check()
        breaker: Breaker | None = self._breakers.get(spec.breaker) if spec.breaker else None
        kwargs.update(lineage=lineage, events=self.event_log)
        if breaker is not None:
            kwargs["gate"] = breaker.gate
        child = self.add_child(ChildSpec(id, PoolActor, (spec,), kwargs, restart, shutdown))
        route = make(child, spec)
        if breaker is not None:
            breaker.guard_pool(route)
        return route

    # -- process-scoped pools ----------------------------------------------------------

    def quota(self, name: str) -> PoolHandle:
        """The global quota of process-scoped pool ``name``: ``max_total`` tokens, one per
        connection open in any process (``stats().leased``). A lease of it is a bare
        token, no connection. NoSuchPool if ``name`` is no process-scoped pool."""
        with self._lock:
            if name not in self._own:
                raise NoSuchPool(f"no process-scoped pool named {name!r} in this runtime")
            return self._pools[name]

    def process_pool_stats(self, name: str) -> ProcessPoolStats:
        """The quota of process-scoped pool ``name`` and every process's own pool of it
        (see :class:`ProcessPoolStats`). NoSuchPool if ``name`` is no process-scoped pool."""
        quota = self.quota(name).stats()
        per_process = self._board.of(name)
        own = cast(OwnPool, self._own[name].route).started
        if own is not None:
            with contextlib.suppress(LessorError):  # (stopped: the runtime shuts down)
                per_process[RUNTIME] = LocalPoolStats.of(own.stats())
        return ProcessPoolStats(name, quota, per_process)

    def _cached(self, name: str, handle: PoolHandle) -> PoolHandle:
        """The runtime's one cached handle of pool ``name`` (``handle``'s). A process-scoped
        pool's own is started now, and its cache gives back what it parks whenever the
        quota wants tokens back (else it would keep them up to its ``hold_for``)."""
        self._check()  # after shutdown: RuntimeStopped, as for any call
        cached = self._caches.get(name)
        if cached is not None:
            return cached
        own = handle.route if isinstance(handle.route, OwnPool) else None
        route = own.route() if own is not None else cast(LocalRoute, handle.route)
        with self._lock:
            self._check()  # a cache made after shutdown would never be closed
            cached = self._caches.get(name)
            if cached is None:
                cache = CachedRoute(route.target, route.spec)
                cached = self._caches[name] = PoolHandle(cache)
                if own is not None:
                    own.caches.append(cache)
        return cached

    def _all_pools(self) -> dict[str, PoolHandle]:
        """Every pool actor of this process: pools, quotas and the own pools started."""
        with self._lock:
            pools, own = dict(self._pools), [cast(OwnPool, h.route) for h in self._own.values()]
        for pool in own:
            if pool.started is not None:
                pools[pool.id] = PoolHandle(pool.started)
        return pools

    # -- shutdown ----------------------------------------------------------------------

    def _own_started(self) -> list[tuple[OwnPool, pykka.ActorRef[Any]]]:
        with self._lock:
            own = [cast(OwnPool, h.route) for h in self._own.values()]
        running = []
        for pool in own:
            with contextlib.suppress(LessorError):
                if pool.started is not None:
                    running.append((pool, pool.started.current_ref(0.0)))
        return running

    def _drain_own(self, caller: Holder) -> list[Lease]:
        """Shutdown, step 1, for the own pools: refuse Acquires, take back ``caller``'s
        leases, and stop each pool once nothing of it is lent (see the module's doc)."""
        taken: list[Lease] = []
        for pool, ref in self._own_started():
            with contextlib.suppress(pykka.ActorDeadError):
                ref.tell(BeginDrain())
                taken += reclaim_holder([ref], caller)
                ref.tell(AwaitDrained(_StopWhenDrained(self._root, pool.id)))
        return taken

    def _settle_own(self) -> list[Lease]:
        """The deadline passed, or nothing is lent: take back what is, stop the own pools
        (their tokens go back) before the quotas are reclaimed. Idempotent."""
        reclaimed: list[Lease] = []
        for pool, ref in self._own_started():
            with contextlib.suppress(LessorError):
                reclaimed += ask(ref, ReclaimAll("shutdown deadline"), 5, "a pool")
            with contextlib.suppress(LessorError):
                ask(self._root, RemoveChild(pool.id), 60)
        with self._lock:
            own = [cast(OwnPool, h.route) for h in self._own.values()]
        for pool in own:
            holders.report_gone(pool.holder)  # a token still out goes back to its quota
        self._board.close()
        return reclaimed
