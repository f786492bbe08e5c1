"""Client: a worker process's view of its runtime; ``lessor.connect()`` returns it.

One per process, shared by all its threads and pykka actors. It hands out pool
handles with the in-process lease API (``client.pool(name)``, leases cached here, or
``cache=False``), runs this process's half of process-scoped pools, and follows the
runtime's pushes (Drain, LeaseExpired, GiveBack). Its :class:`LeaseLedger`
knows which thread holds which lease, so a bad release raises here as it would
in-process, and a thread that ends holding leases gives them back.

Requests and replies travel on a :class:`RuntimeConnection`. If the runtime goes
away, pending requests fail and the worker is asked to exit (SIGTERM to itself).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

from lessor import holder as holders
from lessor.actors.pool_messages import EvictIdle
from lessor.errors import (
    AcquireTimeout,
    LessorError,
    NoSuchBatcher,
    NoSuchBreaker,
    NoSuchPool,
    ProtocolError,
)
from lessor.handles import ops as leases
from lessor.handles.batcher import Batcher
from lessor.handles.breaker import Breaker
from lessor.handles.lending import LendingRoute
from lessor.handles.memory import MemoryManager, run_cleanups
from lessor.handles.ownership import LeaseLedger
from lessor.handles.pool import PoolHandle
from lessor.holder import Holder
from lessor.protocol.messages import (
    Acquire,
    Admission,
    Cleanup,
    Describe,
    Drain,
    GiveBack,
    Lease,
    LeaseExpired,
    Message,
    PoolInfo,
    Release,
)
from lessor.protocol.quota_messages import Shed
from lessor.specs import BreakerSpec, PoolSpec
from lessor.specs.batch import BatchLimits
from lessor.transport.connection import RuntimeConnection, open_connection
from lessor.transport.node import ENV_ADDRESS, ENV_AUTHKEY, ENV_WORKER
from lessor.worker.remote import RemoteActorRoute, RemoteRoute

if TYPE_CHECKING:
    from lessor.handles.local import LocalRoute

#: open_connection lives in lessor.transport.connection; importers long found it here.
__all__ = ["Client", "connect", "open_connection"]

log = logging.getLogger("lessor.worker.client")


class Client:
    """A worker's connection to its runtime. Thread-safe."""

    def __init__(self, address: str, authkey: bytes, worker_id: str) -> None:
        self.worker_id = worker_id
        self.draining = threading.Event()
        self.drain_deadline_s: float | None = None
        #: Called when the runtime is gone (by default: SIGTERM to this process).
        self.on_lost: Callable[[], None] = _terminate_self
        #: Process-scoped pools of the runtime: this process runs its own of each.
        self.local_specs: dict[str, PoolSpec] = {}
        #: The runtime's breakers (as they were when this worker was spawned).
        self.breaker_specs: dict[str, BreakerSpec] = {}
        self._breakers: dict[str, Breaker] = {}
        #: The runtime's batchers (as they were when this worker was spawned).
        self.batcher_limits: dict[str, BatchLimits] = {}
        self._batchers: dict[str, Batcher] = {}
        self._breakers_lock = threading.Lock()
        self.ledger: LeaseLedger[LendingRoute] = LeaseLedger(Holder.worker(worker_id, os.getpid()))
        self._handlers: list[Callable[[Message], None]] = []
        self._lock = threading.Lock()
        self._cached: dict[str, PoolHandle] = {}
        self._local: dict[str, PoolHandle] = {}
        self._acquire_timeouts: dict[str, float] = {}  # pool -> its acquire_timeout
        self._paused: set[bool] = set()  # paused for everyone (True) and/or for this worker
        self._describe_lock = threading.Lock()
        self._conn = RuntimeConnection(
            address, authkey, worker_id, self._push, self._lost, self._unclaimed
        )
        #: Read the pushes that have arrived, unless another thread is reading (one poll).
        self.read_pushes: Callable[[], None] = self._conn.read_pushes
        holders.subscribe(self._thread_gone)
        self._conn.start()

    @property
    def closed(self) -> bool:
        """Closed here, or the runtime hung up (``connect()`` then makes a new client)."""
        return self._conn.closing or self._conn.lost

    @property
    def frames_sent(self) -> int:
        """Frames this process has sent its runtime (a refused release sends none)."""
        return self._conn.frames_sent

    # -- requests ----------------------------------------------------------------------

    def ask(self, target: str, message: Message, timeout: float | None = None) -> Any:
        if timeout is None:
            timeout = leases.REQUEST_TIMEOUT
        late = AcquireTimeout if isinstance(message, Acquire) else LessorError
        return self._conn.ask(target, message, timeout, late)

    def tell(self, target: str, message: Message) -> None:
        self._conn.tell(target, message)

    def ask_later(
        self, target: str, message: Message, on_answer: Callable[[Any, BaseException | None], None]
    ) -> None:
        """Send a request nobody waits for (see RuntimeConnection.ask_later)."""
        self._conn.ask_later(target, message, on_answer)

    def acquire_timeout(self, pool: str) -> float:
        """The pool's own ``acquire_timeout``: asked once per pool (Describe), then known.

        NoSuchPool if the runtime has no pool of that name now (the node's answer for
        an unknown name; a target that is no pool, as a map job, refuses Describe).
        Nothing is remembered for a name not found: a pool added later is found then.
        """
        known = self._acquire_timeouts.get(pool)
        if known is not None:
            return known
        with self._describe_lock:
            known = self._acquire_timeouts.get(pool)
            if known is None:
                try:
                    info = self.ask(pool, Describe(pool))
                except ProtocolError:
                    info = None
                if not isinstance(info, PoolInfo):
                    raise NoSuchPool(f"no pool named {pool!r} in this runtime")
                known = self._acquire_timeouts[pool] = info.acquire_timeout
        return known

    # -- pools -------------------------------------------------------------------------

    def pool(self, name: str, *, cache: bool = True) -> PoolHandle:
        """A pool of the runtime, with the same lease API as in-process.

        By default released leases are parked in this process and reused without a
        round trip until the pool asks for them back (see
        :class:`~lessor.worker.remote.RemoteRoute`); the process shares one such
        handle per pool. ``cache=False`` gives a handle whose
        every Acquire and Release goes to the pool.

        For a process-scoped pool this is the worker's own pool (live connections),
        each resource holding a lease on the runtime's global quota.

        Raises NoSuchPool at once for a name the runtime has no pool of (asked once
        per name, so a pool added after this worker spawned is found).
        """
        if name in self.local_specs:
            return self._local_pool(name)
        self.acquire_timeout(name)  # the runtime's answer for the name (Describe), then known
        if not cache:
            return PoolHandle(RemoteRoute(self, name))
        with self._lock:
            pool = self._cached.get(name)
            if pool is None:
                pool = self._cached[name] = PoolHandle(RemoteRoute(self, name, cache=True))
        return pool

    def breaker(self, name: str) -> Breaker:
        """The runtime's circuit breaker ``name``: its state is pushed here, and a call in
        the closed state costs no round trip (see :class:`~lessor.handles.breaker.Breaker`).

        Raises NoSuchBreaker for a breaker the runtime did not have when this worker
        was spawned.
        """
        with self._breakers_lock:  # not the client's lock: this asks the runtime
            handle = self._breakers.get(name)
            if handle is not None:
                return handle
            spec = self.breaker_specs.get(name)
            if spec is None:
                raise NoSuchBreaker(
                    f"no breaker named {name!r} (a worker knows the breakers its runtime "
                    "had when it was spawned)"
                )
            route = RemoteActorRoute(self, f"breaker:{name}")
            handle = Breaker(spec, route, in_process=False, read_pushes=self.read_pushes)
            self.on_push(handle.pushed)  # before it asks for the state: no change is missed
            handle.subscribe()
            self._breakers[name] = handle
        return handle

    def batcher(self, name: str) -> Batcher:
        """The runtime's batcher ``name``: items go in frames of many, and each Future
        gets its item's outcome (see :class:`~lessor.handles.batcher.Batcher`).

        Raises NoSuchBatcher for a batcher the runtime did not have when this worker
        was spawned.
        """
        with self._breakers_lock:
            handle = self._batchers.get(name)
            if handle is None:
                limits = self.batcher_limits.get(name)
                if limits is None:
                    raise NoSuchBatcher(
                        f"no batcher named {name!r} (a worker knows the batchers its runtime "
                        "had when it was spawned)"
                    )
                route = RemoteActorRoute(self, f"batcher:{name}")
                handle = self._batchers[name] = Batcher(limits, route, in_process=False)
        return handle

    def memory(self) -> MemoryManager:
        """The runtime's memory manager (its stats). Cleanup handlers are registered in
        this process with ``lessor.register_cleanup``."""
        return MemoryManager(RemoteActorRoute(self, "memory"))

    def _local_pool(self, name: str) -> PoolHandle:
        from lessor.handles.local import LocalRoute, start_pool
        from lessor.worker.local_pools import StatsReporter, local_spec, quota_holder

        with self._lock:
            handle = self._local.get(name)
            if handle is None:
                owner = quota_holder(name)  # any factory thread may give a resource's quota back
                quota = RemoteRoute(self, name, holder=lambda: owner)
                spec = self.local_specs[name]
                breaker = self.breaker(spec.breaker) if spec.breaker else None
                handle = self._local[name] = start_pool(
                    local_spec(spec, quota), gate=breaker.gate if breaker else None
                )
                if breaker is not None:
                    breaker.guard_pool(cast(LocalRoute, handle.route))
                if len(self._local) == 1:
                    self.on_push(self._quota_wanted)
                if self._paused:  # made while this worker is paused: paused too
                    handle.actor_ref.tell(Admission("", True, "paused by the memory manager"))
                StatsReporter(cast(LocalRoute, handle.route), lambda s: self.tell(name, s))
        return handle

    def _quota_wanted(self, message: Message) -> None:
        """The quota of one of this process's own pools wants tokens back: its idle
        connections (GiveBack), or connections above this process's fair share (Shed)."""
        local = self._local.get(getattr(message, "pool", ""))
        if local is not None and isinstance(message, GiveBack | Shed):
            with contextlib.suppress(Exception):
                route = cast("LocalRoute", local.route)  # (its actor's own message, not a Call)
                route.deliver_internal(EvictIdle() if isinstance(message, GiveBack) else message)

    def _thread_gone(self, holder: str) -> None:
        """A thread of this process ended holding leases: they go back to their pools.

        In-process pools reclaim a dead thread's leases on their own; across processes
        the runtime only sees the worker, so the worker gives them back for it.
        """
        for lease_id, lender in self.ledger.holder_gone(holder):
            with contextlib.suppress(LessorError):
                lender.give_back_for_dead_thread(lease_id)

    # -- what the connection reports ---------------------------------------------------

    def on_push(self, handler: Callable[[Message], None]) -> None:
        """Call ``handler(message)`` for every push (Drain, LeaseExpired), on a reading thread."""
        self._handlers.append(handler)

    def _push(self, message: Message) -> None:
        if isinstance(message, LeaseExpired):  # the pool took it back: no thread holds it
            self.ledger.reclaimed(message.lease_id, "expired")
        elif isinstance(message, Drain):
            self.drain_deadline_s = message.deadline_s
            self.draining.set()
        elif isinstance(message, Cleanup):  # user code: never on the socket's reader
            threading.Thread(target=run_cleanups, args=(message.why,), name="lessor-cleanup",
                             daemon=True).start()  # fmt: skip
        elif isinstance(message, Admission):
            self._admission(message)
        for handler in list(self._handlers):
            try:
                handler(message)
            except Exception:
                log.exception("client: push handler failed")

    def _admission(self, message: Admission) -> None:
        """This worker (or everyone) is paused or resumed: so are its own pools. Its
        cached handles see the notice too, and stop parking leases."""
        with self._lock:
            (self._paused.add if message.paused else self._paused.discard)(message.holder == "")
            paused, local = bool(self._paused), list(self._local.values())
        for pool in local:
            with contextlib.suppress(Exception):
                pool.actor_ref.tell(Admission("", paused, message.why))

    def _unclaimed(self, target: str, request: Message, reply: Message | None) -> None:
        """A grant for an Acquire whose caller has gone: back to the pool it came from."""
        if isinstance(request, Acquire) and isinstance(reply, Lease):
            with contextlib.suppress(LessorError):
                self.tell(target, Release(reply.id))

    def _lost(self) -> None:
        if self.on_lost is _terminate_self:
            log.warning("client: connection to the runtime lost; this worker exits")
        self.on_lost()

    def close(self) -> None:
        holders.unsubscribe(self._thread_gone)
        for batcher in list(self._batchers.values()):
            batcher.close()  # its last frames; what is still out fails when the link goes
        for breaker in list(self._breakers.values()):
            with contextlib.suppress(LessorError):
                breaker.close()  # its last outcomes
        for local in list(self._local.values()):
            with contextlib.suppress(Exception):
                local.stop(timeout=10)  # closes its resources, giving their quota back
        for pool in list(self._cached.values()):
            with contextlib.suppress(LessorError):
                pool.flush()  # give parked leases back rather than have them reclaimed
        self._conn.close()


def _terminate_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


_client: Client | None = None
_client_lock = threading.Lock()


def _on_ray_lost(client: Client) -> Callable[[], None]:
    """What a Ray task's process does when its node agent is gone: reconnect on the
    next ``connect()``; but a process holding leases exits (Ray fails and may retry its
    task), since the agent's tokens come back to the cluster and may be lent elsewhere
    while this process still uses what it was lent."""

    def lost() -> None:
        if client.ledger.held:
            log.warning("client: node agent lost while this process held %d leases; exiting",
                        client.ledger.held)  # fmt: skip
            _terminate_self()
        else:
            log.info("client: node agent lost; the next connect() makes another connection")

    return lost


def connect() -> Client:
    """This worker's client, made from the environment its runtime set (once per process)."""
    global _client  # noqa: PLW0603 - one connection per process, by design
    with _client_lock:
        if _client is None or _client.closed:
            env: Mapping[str, str] = os.environ
            breakers: dict[str, BreakerSpec] = {}
            on_ray = ENV_ADDRESS not in env and "ray" in sys.modules
            if on_ray:  # a Ray task or actor: ask its node's agent (again after a restart)
                from lessor.ray.cluster import worker_env

                env, breakers = worker_env()
            try:
                address, key = env[ENV_ADDRESS], env[ENV_AUTHKEY]
            except KeyError:
                raise LessorError(
                    "lessor.connect() works in worker processes started by a Runtime, "
                    "and in Ray tasks once lessor.ray.start() ran"
                ) from None
            _client = Client(address, bytes.fromhex(key), env.get(ENV_WORKER, "?"))
            if on_ray:  # the process is Ray's: a lost agent means reconnect, not exit
                _client.on_lost = _on_ray_lost(_client)
                _client.breaker_specs.update(breakers)
        return _client
