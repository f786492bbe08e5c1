"""The cluster-wide side of a pool on Ray: one detached actor keeps ``max_total`` tokens.

Node agents take tokens from it one per resource they open, the way a worker's own
pool takes quota from a ``scope="process"`` pool's runtime
(:mod:`lessor.worker.local_pools`): the same quota pool runs here, with the same
fair share and recall, and its GiveBack and Shed are forwarded to the agent that
must give back. A task's Acquire never comes here: its agent lends from the
resources it already has, so this actor sees one call per resource opened or closed.

Holders are agents, ``worker:ray-node-<node id>:<pid>``. An agent's tokens come
back when Ray says its process is gone:

* a pending ``hold()`` call on its handle fails with ``ActorDiedError``; or with
  ``ActorUnavailableError`` (restarting, or unreachable), after which the agent is
  asked its pid: a new pid means the old process is dead, no answer means *suspect*,
  which reclaims nothing unless ``suspect_timeout`` is set;
* or its node is no longer alive in ``ray.nodes()`` (read every ``NODE_POLL`` s).

**Restarts.** Ray restarts this actor by running ``__init__`` again, which loses
every count. So before it grants anything, a new incarnation asks every agent
(``lessor-node-*``) which tokens it holds, and starts its pool with those as orphans
of the earlier epochs (:class:`~lessor.actors.pool_messages.PoolLineage`): they
count against ``max_total`` until released, and no token is granted twice. An
agent that cannot answer is waited for until it answers or Ray declares it dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayError

from lessor import holder as holders
from lessor.actors.pool import PoolActor, PoolLineage
from lessor.actors.pool_messages import ReclaimHolder
from lessor.actors.reply import OneShot
from lessor.errors import LessorError
from lessor.handles.local import LocalRoute
from lessor.holder import Holder
from lessor.protocol.messages import Acquire, GetStats, GiveBack, Lease, Message, PoolStats, Release
from lessor.protocol.quota_messages import Shed
from lessor.ray.names import AGENT_PREFIX, NAMESPACE, actor_names, agent_holder, parse_agent
from lessor.ray.watch import SUSPECT_RETRY, until_gone
from lessor.specs import PoolSpec
from lessor.worker.local_pools import quota_spec

__all__ = ["MAX_TAKES", "NODE_POLL", "TAKES", "AsyncReply", "GlobalPool", "Taken"]

log = logging.getLogger("lessor.ray")

#: Seconds between reads of ``ray.nodes()`` for nodes Ray has declared dead.
NODE_POLL = 0.5
#: The concurrency group of ``take`` calls, which wait, and how many may wait at once:
#: a ``give`` must never queue behind them (Ray's default is 1000 calls for everything).
TAKES = "takes"
MAX_TAKES = 100_000

#: ``take``'s answer: ``("lease", lease id, incarnation)`` or ``("error", class name, text)``.
Taken = tuple[str, ...]


def adopted(pool: str, held: list[tuple[Holder, list[str]]], now: float) -> PoolLineage:
    """The lineage a restarted global pool starts from: every token an agent reported
    (its holder, its lease ids) as an orphan, and their epochs as earlier ones, so their
    releases are recognised and they count against ``max_total`` until then."""
    lineage = PoolLineage()
    for holder, lease_ids in held:
        for lease_id in lease_ids:
            lineage.orphans.append(Lease(lease_id, pool, None, str(holder), now, None))
            epoch = lease_id.split("/")[-2]
            if epoch not in lineage.epochs:
                lineage.epochs.append(epoch)
    return lineage


class AsyncReply(OneShot):
    """A pool's answer to one remote call, also resolved on the actor's event loop.

    A :class:`OneShot`: ``set`` and ``cancel`` race for one claim, so a grant that
    lands after the caller gave up is handed back (``LocalRoute.cancel``), never lost.
    """

    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        self.future: asyncio.Future[Any] = loop.create_future()

    def _stored_now(self) -> None:
        super()._stored_now()
        self.loop.call_soon_threadsafe(_resolve, self.future, self._value, self._error)


def _resolve(future: asyncio.Future[Any], value: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(value)


class _AgentReceiver:
    """Where the quota pool's pushes to an agent go: a Ray call, made after the turn."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def tell(self, message: Message, wait: float = 0.0) -> None:
        if isinstance(message, GiveBack):
            self.handle.quota_wanted.remote(message.pool, 0)
        elif isinstance(message, Shed):
            self.handle.quota_wanted.remote(message.pool, message.count)


@dataclass
class _Agent:
    name: str
    node_id: str
    pid: int
    handle: Any
    suspect_since: float | None = None
    watch: asyncio.Task[None] | None = field(default=None, repr=False)


class GlobalPool:
    """One cluster-wide pool's tokens. Started by :func:`lessor.ray.start` as a detached,
    async, restartable Ray actor named ``lessor-pool-<name>``; agents call it.

    ``suspect_timeout`` (default None: never, seconds otherwise): how long an agent
    may be unreachable, alive or not, before its tokens are reclaimed anyway. Without
    it an unreachable agent's tokens wait for Ray to declare it dead.
    """

    def __init__(self, spec: PoolSpec, suspect_timeout: float | None = None) -> None:
        self.spec = quota_spec(spec)
        self.suspect_timeout = suspect_timeout
        self.started = time.time()
        #: Tells this incarnation's grants from a dead one's (see RayQuota.held).
        self.incarnation = secrets.token_hex(8)
        self._agents: dict[Holder, _Agent] = {}
        self._route: LocalRoute | None = None
        self._ref: Any = None
        self._ready: asyncio.Task[LocalRoute] | None = None
        self._nodes: asyncio.Task[None] | None = None
        self.recovered: list[str] = []  # the lease ids adopted at start
        self.gone: list[tuple[str, str]] = []  # (agent holder, why) whose tokens came back

    # -- what agents call --------------------------------------------------------------

    async def take(self, agent: str, pid: int, timeout: float) -> Taken:
        """One token for agent process ``agent``/``pid``, within ``timeout`` seconds."""
        route = await self._started()
        holder = agent_holder(agent, pid)
        if holder not in self._agents:  # (its handle looked up off the event loop)
            self._know(agent, pid, await asyncio.to_thread(ray.get_actor, agent, NAMESPACE))
        loop = asyncio.get_running_loop()
        reply = AsyncReply(loop)
        try:
            route.deliver(Acquire(self.spec.name, timeout), reply, holder)
            lease = await asyncio.wait_for(asyncio.shield(reply.future), timeout + 5.0)
        except LessorError as exc:
            return ("error", type(exc).__name__, str(exc))
        except TimeoutError:
            route.cancel(reply, holder)
            return ("error", "AcquireTimeout", f"pool {self.spec.name!r} did not answer")
        except asyncio.CancelledError:  # the call was cancelled: lose nothing
            route.cancel(reply, holder)
            raise
        assert isinstance(lease, Lease)
        return ("lease", lease.id, self.incarnation)

    async def give(self, agent: str, pid: int, lease_id: str) -> bool:
        """Give token ``lease_id`` back. Idempotent: False if it was not out (any more)."""
        route = await self._started()
        holder = agent_holder(agent, pid)
        reply = AsyncReply(asyncio.get_running_loop())
        try:
            route.deliver(Release(lease_id), reply, holder)
            await asyncio.wait_for(asyncio.shield(reply.future), 10.0)
        except (LessorError, TimeoutError):
            return False
        return True

    async def stats(self) -> PoolStats:
        route = await self._started()
        reply = AsyncReply(asyncio.get_running_loop())
        route.deliver(GetStats(), reply, holders.ANONYMOUS)
        stats = await asyncio.wait_for(reply.future, 10.0)
        assert isinstance(stats, PoolStats)
        return stats

    async def info(self) -> dict[str, Any]:
        """This incarnation: its pid and node, when it started, what it adopted, who it watches."""
        await self._started()
        return {
            "pid": os.getpid(),
            "node": ray.get_runtime_context().get_node_id(),
            "incarnation": self.incarnation,
            "started": self.started,
            "recovered": list(self.recovered),
            "agents": {str(h): a.suspect_since is not None for h, a in self._agents.items()},
            "gone": list(self.gone),
        }

    async def stop(self) -> None:
        """Stop the pool (before the actor is killed): its threads end."""
        for agent in self._agents.values():
            if agent.watch is not None:
                agent.watch.cancel()
        if self._nodes is not None:
            self._nodes.cancel()
        if self._route is not None:
            await asyncio.to_thread(self._route.stop, 5.0)

    # -- start: rebuild the table from the agents -------------------------------------

    async def _started(self) -> LocalRoute:
        if self._ready is None:
            self._ready = asyncio.create_task(self._recover())
        return await asyncio.shield(self._ready)

    async def _recover(self) -> LocalRoute:
        names = await asyncio.to_thread(actor_names, AGENT_PREFIX)
        held = await asyncio.gather(*(self._held_by(name) for name in names))
        lineage = adopted(self.spec.name, [
            (self._know(name, answer[0], answer[2]), answer[1])
            for name, answer in zip(names, held, strict=True)
            if answer is not None
        ], time.monotonic())  # fmt: skip
        self.recovered = [lease.id for lease in lineage.orphans]
        self._ref = PoolActor.start(self.spec, lineage=lineage, fair_share=True)
        self._route = LocalRoute(self._ref, self.spec)
        self._nodes = asyncio.create_task(self._watch_nodes())
        if self.recovered:
            log.warning("lessor: pool %r restarted; %d tokens held by %d agents adopted",
                        self.spec.name, len(self.recovered), len(self._agents))  # fmt: skip
        return self._route

    async def _held_by(self, name: str) -> tuple[int, list[str], Any] | None:
        """What agent ``name`` holds of this pool; None once Ray says it is dead (or
        it stayed unreachable past ``suspect_timeout``, when that is set)."""
        since = time.monotonic()
        while True:
            limit = self.suspect_timeout
            if limit is not None and time.monotonic() - since >= limit:
                self.gone.append((name, "agent unreachable at restart"))
                return None
            try:
                handle = await asyncio.to_thread(ray.get_actor, name, NAMESPACE)
                pid, lease_ids = await handle.held.remote(self.spec.name, self.incarnation)
                return int(pid), list(lease_ids), handle
            except ActorDiedError:
                return None
            except ValueError:  # no such actor (any more)
                return None
            except (ActorUnavailableError, RayError):
                await asyncio.sleep(SUSPECT_RETRY)  # unreachable: it may hold tokens

    # -- agents: who they are, and when they are gone ----------------------------------

    def _know(self, name: str, pid: int, handle: Any) -> Holder:
        holder = agent_holder(name, pid)
        if holder not in self._agents:
            agent = self._agents[holder] = _Agent(name, parse_agent(name), pid, handle)
            holders.bind_receiver(holder, _AgentReceiver(handle))
            agent.watch = asyncio.create_task(self._watch(holder, agent))
        return holder

    async def _watch(self, holder: Holder, agent: _Agent) -> None:
        """Wait on the agent's process until Ray says it is gone (or it stays suspect
        past ``suspect_timeout``), then reclaim what it holds."""

        def suspect(now: bool) -> None:
            agent.suspect_since = time.monotonic() if now else None

        with contextlib.suppress(asyncio.CancelledError):
            why = await until_gone(agent.handle, agent.pid, self.suspect_timeout, suspect)
            await self._gone(holder, why)

    async def _gone(self, holder: Holder, why: str) -> None:
        agent = self._agents.pop(holder, None)
        if agent is None or self._route is None:
            return
        log.warning("lessor: pool %r reclaims the tokens of %s: %s", self.spec.name, holder, why)
        self.gone.append((str(holder), why))
        with contextlib.suppress(Exception):  # (a stopped pool has nothing to reclaim)
            await asyncio.to_thread(self._ref.ask, ReclaimHolder(holder, why), True, 5.0)
        holders.report_gone(holder)  # drops its receiver; nothing is left to reclaim

    async def _watch_nodes(self) -> None:
        while True:
            await asyncio.sleep(NODE_POLL)
            try:
                nodes = await asyncio.to_thread(ray.nodes)
            except RayError:
                continue
            dead = {node["NodeID"] for node in nodes if not node.get("Alive", False)}
            for holder, agent in list(self._agents.items()):
                if agent.node_id in dead:
                    if agent.watch is not None:
                        agent.watch.cancel()
                    await self._gone(holder, "node died")
