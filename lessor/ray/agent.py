"""The node agent: an ordinary lessor Runtime on one Ray node, for the tasks on it.

One per node: a detached Ray actor ``lessor-node-<node id>`` with ``num_cpus=0``,
pinned to its node (``NodeAffinitySchedulingStrategy(soft=False)``) and restarted by
Ray when its process dies. Tasks and actors on the node reach its pools through its
Unix socket (``lessor.connect()`` asks it for the address and a key of their own,
:meth:`NodeAgent.env`), so a pair costs what it costs a lessor worker, and a task
that dies is noticed by its socket closing, as a worker's is.

Each cluster-wide pool runs here as a worker's own pool of a process-scoped pool
does (:func:`~lessor.worker.local_pools.local_spec`): every resource this node opens
holds one token of the pool's :class:`~lessor.ray.global_pool.GlobalPool`, taken
through :class:`RayQuota`; idle resources give theirs back after ``max_idle`` (at
most 10 s) or when the global pool recalls them (:meth:`NodeAgent.quota_wanted`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from typing import Any, cast

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayError

from lessor import holder as holders
from lessor.errors import LessorError
from lessor.handles.local import LocalRoute
from lessor.handles.ops import LeaseOps
from lessor.holder import Holder
from lessor.protocol.codec import decode
from lessor.protocol.messages import Drain, ErrorReply, Lease, PoolStats
from lessor.protocol.quota_messages import Shed
from lessor.ray.global_breaker import BreakerRelay
from lessor.ray.global_pool import TAKES
from lessor.ray.names import NAMESPACE, agent_holder, agent_name, breaker_actor, pool_actor
from lessor.runtime.runtime import Runtime
from lessor.specs import BreakerSpec, PoolSpec
from lessor.transport.handshake import error_from_reply
from lessor.worker.local_pools import local_spec

__all__ = ["GIVE_RETRY_FOR", "NodeAgent", "RayQuota"]

log = logging.getLogger("lessor.ray")

#: Seconds a token's give-back is retried while its global pool is unreachable.
GIVE_RETRY_FOR = 30.0
#: Seconds added to an Acquire's own timeout before a ``take`` call is given up.
TAKE_GRACE = 10.0


def _result(ref: Any, timeout: float) -> Any:
    """A call's answer, waited for on this (factory) thread: not ``ray.get``, which
    Ray flags in an async actor though this thread is not its event loop's."""
    return ref.future().result(timeout)


class RayQuota(LeaseOps):
    """This agent's tokens of one global pool: what ``QuotaFactory`` takes per resource.

    It remembers the ids it holds, so that a restarted global pool can ask for them
    (:meth:`held`), and which incarnation of the pool it last told: a grant that comes
    back from an older incarnation after a newer one asked was never reported to the
    newer one, which may have lent that token again, so it is dropped, not used.
    """

    def __init__(self, pool: str, handle: Any, agent: str, pid: int) -> None:
        self.name = pool
        self.handle = handle
        self.agent = agent
        self.pid = pid
        self.holder = agent_holder(agent, pid)
        self._held: dict[str, None] = {}
        self._incarnation: str | None = None
        self._lock = threading.Lock()

    def acquire(
        self, timeout: float | None = None, priority: int = 0, ttl: float | None = None
    ) -> Lease:
        wait = 30.0 if timeout is None else timeout
        deadline = time.monotonic() + wait
        while True:
            try:
                take = self.handle.take.options(concurrency_group=TAKES)
                call = take.remote(self.agent, self.pid, wait)
                answer = _result(call, wait + TAKE_GRACE)
            except (ActorDiedError, ActorUnavailableError, TimeoutError, RayError) as exc:
                raise LessorError(f"global pool {self.name!r} unreachable: {exc}") from None
            if answer[0] != "lease":
                raise error_from_reply(ErrorReply(answer[1], answer[2]))
            lease_id, incarnation = answer[1], answer[2]
            with self._lock:
                if self._incarnation in (None, incarnation):
                    self._incarnation = incarnation
                    self._held[lease_id] = None
                    return Lease(lease_id, self.name, None, str(self.holder), time.monotonic(),
                                 None)  # fmt: skip
            wait = deadline - time.monotonic()  # a dead incarnation's grant: ask again
            if wait <= 0:
                raise error_from_reply(ErrorReply("AcquireTimeout", "global pool restarted"))

    def release(self, lease: Lease, broken: bool = False) -> None:
        """Give a token back, retrying while the pool is unreachable (``give`` is
        idempotent). Forgotten first: a pool that restarts meanwhile is not told of it."""
        with self._lock:
            if self._held.pop(lease.id, "gone") == "gone":
                return
        deadline = time.monotonic() + GIVE_RETRY_FOR
        while True:
            try:
                _result(self.handle.give.remote(self.agent, self.pid, lease.id), 10.0)
                return
            except ActorDiedError:
                return  # its next incarnation never hears of this token
            except (ActorUnavailableError, TimeoutError, RayError):
                if time.monotonic() > deadline:
                    log.warning("lessor: could not give %s back to its global pool", lease.id)
                    return
                time.sleep(0.2)

    def held(self, incarnation: str) -> list[str]:
        """The tokens held now, told to pool incarnation ``incarnation`` (which grants
        nothing before every agent has answered this)."""
        with self._lock:
            self._incarnation = incarnation
            return list(self._held)


class NodeAgent:
    """The lessor runtime of one Ray node (see the module's doc). Started by
    :func:`lessor.ray.start`; tasks reach it through ``lessor.connect()``.

    ``pools``: the cluster-wide pools; on this node each opens at most ``max_size``
    resources, and the whole cluster at most ``max_total`` (default ``max_size``).
    """

    def __init__(
        self, node_id: str, pools: list[PoolSpec], breakers: list[BreakerSpec] | None = None
    ) -> None:
        self.node_id = node_id
        self.name = agent_name(node_id)
        self.pid = os.getpid()
        self.quotas: dict[str, RayQuota] = {}
        self.runtime = Runtime(handle_signals=False)
        for spec in pools:
            handle = ray.get_actor(pool_actor(spec.name), namespace=NAMESPACE)
            quota = self.quotas[spec.name] = RayQuota(spec.name, handle, self.name, self.pid)
            self.runtime.add_pool(local_spec(spec, quota))
        self.breaker_specs = {spec.name: spec for spec in breakers or ()}
        self._relays = [
            BreakerRelay(
                name, ray.get_actor(breaker_actor(name), namespace=NAMESPACE), node_id, self.name
            )
            for name in self.breaker_specs
        ]
        for relay in self._relays:
            self.runtime.node.register(f"breaker:{relay.name}", relay)
        if self._relays:
            holders.subscribe(self._holder_gone)
        self._forever = asyncio.Event()

    def _holder_gone(self, holder: Holder) -> None:
        for relay in self._relays:  # (a task's probe permits come back)
            relay.holder_gone(holder)

    # -- for tasks on this node --------------------------------------------------------

    def breakers(self) -> dict[str, BreakerSpec]:
        """The cluster's breakers, for ``lessor.connect().breaker(name)`` in a task."""
        return self.breaker_specs

    def push(self, worker_id: str, frame: bytes) -> None:
        """A global breaker's push (a state change) for task process ``worker_id``."""
        self.runtime.node.push(worker_id, decode(frame))

    def env(self, pid: int) -> dict[str, str]:
        """What process ``pid`` of this node needs to connect: the socket and its own key."""
        worker_id = f"ray-{pid}"
        env = self.runtime.node.env(worker_id)
        self.runtime.node.bind_pid(worker_id, pid)
        return env

    # -- for the global pools ----------------------------------------------------------

    def held(self, pool: str, incarnation: str) -> tuple[int, list[str]]:
        quota = self.quotas.get(pool)
        return self.pid, [] if quota is None else quota.held(incarnation)

    async def hold(self, pid: int) -> None:
        """Answers only if this is not process ``pid``: a pending call on it is how a
        global pool learns that the process died."""
        if pid == self.pid:
            await self._forever.wait()

    def whoami(self) -> int:
        """This agent's pid (a new one after Ray restarted it)."""
        return self.pid

    def quota_wanted(self, pool: str, count: int) -> None:
        """The global pool wants tokens back: idle resources now (``count`` 0, a
        GiveBack), or ``count`` resources as they are released (a Shed)."""
        from lessor.actors.pool_messages import EvictIdle

        route = cast(LocalRoute, self.runtime.pool(pool).route)
        route.deliver_internal(Shed(pool, count) if count else EvictIdle())

    # -- for the driver ----------------------------------------------------------------

    async def stats(self, pool: str) -> PoolStats:
        return await asyncio.to_thread(self.runtime.pool(pool).stats)

    async def status(self) -> dict[str, Any]:
        """The agent's ``runtime.status()`` (asked off the event loop: it may take seconds)."""
        status = await asyncio.to_thread(self.runtime.status)
        return status.as_dict()

    async def shutdown(self, timeout: float = 10.0) -> None:
        """Drain and stop the runtime: tasks get ShuttingDown, tokens go back."""
        # Task processes outlive their tasks, with released leases parked in their
        # caches: a Drain has them give those back now, not at the drain's deadline.
        self.runtime.node.broadcast(Drain(timeout))
        await asyncio.to_thread(self.runtime.shutdown, timeout)
