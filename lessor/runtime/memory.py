"""The runtime's memory manager: what it watches and how its decisions reach pools,
workers and worker groups (the :class:`~lessor.actors.memory.MemorySources` it runs on).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

from lessor.actors.executor import FactoryLane, process_factory_threads
from lessor.actors.memory import MemoryActor, MemoryLineage
from lessor.core.memory_decisions import RUNTIME
from lessor.errors import LessorError
from lessor.handles.actor_route import ActorRoute
from lessor.handles.local import LocalRoute
from lessor.handles.memory import MemoryManager, run_cleanups
from lessor.holder import ANONYMOUS, Holder
from lessor.protocol.messages import Admission, Cleanup
from lessor.resources import detect
from lessor.specs import ChildSpec, Restart
from lessor.specs.memory import MemorySpec
from lessor.supervisor.child import ChildRef
from lessor.supervisor.events import EventLog
from lessor.supervisor.workers import RecycleWorker

if TYPE_CHECKING:
    from lessor.handles.pool import PoolHandle
    from lessor.transport.node import Node

__all__ = ["MemoryTarget", "RuntimeMemory"]

log = logging.getLogger("lessor.memory")

#: How long an Admission waits for a pool that is restarting (seconds).
ADMISSION_WAIT = 2.0


class MemoryTarget(ActorRoute):
    """The memory actor in this process: what the handle asks and the node delivers to."""

    kind = "memory manager"


class RuntimeMemory:
    """The runtime's side of the memory manager: its sources, and the handle.

    ``pools``, ``caches``, ``node`` and ``groups`` are read when a decision is carried
    out, so pools, workers and groups added after the memory manager are covered.
    """

    def __init__(
        self,
        spec: MemorySpec,
        pools: Callable[[], Mapping[str, PoolHandle]],
        caches: Callable[[], list[Any]],
        node: Callable[[], Node | None],
        groups: Callable[[], list[ChildRef]],
    ) -> None:
        self.spec = spec
        self._pools = pools
        self._caches = caches
        self._node = node
        self._groups = groups
        self._cpus = detect().cpus
        self._lane: FactoryLane | None = None
        self._lock = threading.Lock()
        self.handle: MemoryManager | None = None
        self.target: MemoryTarget | None = None

    def start(
        self,
        add_child: Callable[[ChildSpec], ChildRef],
        events: EventLog,
        restart: Restart,
        shutdown: float,
    ) -> tuple[MemoryManager, MemoryTarget]:
        self._lane = process_factory_threads().lane(1, "memory cleanup")
        kwargs: dict[str, Any] = {"sources": self, "lineage": MemoryLineage(), "events": events}
        try:
            child = add_child(ChildSpec("memory", MemoryActor, (self.spec,), kwargs, restart,
                                        shutdown))  # fmt: skip
        except BaseException:
            self.close()
            raise
        self.target = MemoryTarget(child, "memory")
        self.handle = MemoryManager(self.target)
        return self.handle, self.target

    def close(self) -> None:
        """Stop the cleanup lane (the tree has stopped: no decision comes any more)."""
        lane, self._lane = self._lane, None
        if lane is not None:
            lane.shutdown(5.0)

    # -- MemorySources -----------------------------------------------------------------

    def cpus(self) -> int:
        return self._cpus

    def watched(self) -> dict[str, tuple[int, str]]:
        watched: dict[str, tuple[int, str]] = {RUNTIME: (os.getpid(), "")}
        node = self._node()
        if node is not None:
            for worker_id, pid in node.workers().items():
                watched[worker_id] = (pid, str(Holder.worker(worker_id, pid)))
        return watched

    def admission(self, key: str, holder: str, paused: bool, why: str) -> None:
        """Every pool of the runtime hears it; so do the worker (or, for everyone, all
        workers and the runtime's own lease caches), which stop reusing parked leases."""
        message = Admission(holder, paused, why)
        for name, handle in list(self._pools().items()):
            try:
                route = cast(LocalRoute, handle.route)
                route.current_ref(ADMISSION_WAIT)  # through a restart under way
                route.deliver(message, None, ANONYMOUS)
            except LessorError as exc:
                log.warning("memory: pool %r did not get %s: %s", name, message, exc)
        node = self._node()
        if not key:
            for cache in self._caches():
                cache.notice(message)
            if node is not None:
                node.broadcast(message)
        elif node is not None:
            node.push(key, message)

    def cleanup(self, key: str, why: str) -> None:
        if key == RUNTIME:
            lane = self._lane
            if lane is not None:
                with contextlib.suppress(RuntimeError):  # shut down: nobody to clean up for
                    lane.submit(run_cleanups, why)
            return
        node = self._node()
        if node is not None:
            node.push(key, Cleanup(why))

    def recycle(self, key: str, why: str) -> None:
        for group in self._groups():
            if key.startswith(group.path + "."):
                with contextlib.suppress(Exception):  # the group is gone: nothing to recycle
                    group.current(0.0).tell(RecycleWorker(key, why, self.spec.recycle_grace))
                return
        log.warning("memory: %s should be recycled (%s), but no worker group runs it", key, why)
