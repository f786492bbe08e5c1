"""The runtime's worker processes: spawning supervised groups, ``map``, and the node.

A part of :class:`~lessor.runtime.runtime.Runtime`, kept apart because it is a
subject of its own: the socket workers connect to, and the groups that run them.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

from lessor.errors import LessorError
from lessor.handles.local import LocalRoute
from lessor.handles.pool import PoolHandle
from lessor.runtime.batchers import Batchers
from lessor.runtime.breakers import Breakers
from lessor.runtime.mapjob import MapJob, map_worker, run_map
from lessor.runtime.memory import RuntimeMemory
from lessor.runtime.outcome import GroupOutcome
from lessor.runtime.shutdown import ask as _ask
from lessor.specs import Backoff, ChildSpec, PoolSpec, Restart
from lessor.supervisor.child import ChildRef
from lessor.supervisor.events import EventLog
from lessor.supervisor.supervisor import RemoveChild
from lessor.supervisor.workers import StopWorkers, WorkerGroup, WorkerSpec
from lessor.transport.node import Node
from lessor.worker.bootstrap import check_spawnable

__all__ = ["WorkerProcesses"]


class WorkerProcesses:
    """Runtime's methods for worker processes (it provides the fields below)."""

    event_log: EventLog
    _lock: threading.RLock
    _node: Node | None
    _pools: dict[str, PoolHandle]
    _breakers: Breakers
    _batchers: Batchers
    _memory: RuntimeMemory | None
    _outcomes: dict[ChildRef, GroupOutcome]
    _process_specs: dict[str, PoolSpec]
    _jobs: itertools.count[int]
    _hurry: threading.Event
    _root: Any

    if TYPE_CHECKING:

        def _check(self) -> None: ...

        def add_child(self, spec: ChildSpec) -> ChildRef: ...

    # -- worker processes --------------------------------------------------------------

    @property
    def node(self) -> Node:
        """The socket workers connect to; made on first use."""
        with self._lock:
            if self._node is None:
                self._check()  # a node made after shutdown would never be closed
                self._node = Node()
                for name, handle in self._pools.items():
                    self._node.register(name, cast(LocalRoute, handle.route))
                for name, target in self._breakers.targets.items():
                    self._node.register(f"breaker:{name}", target)
                for name, batcher in self._batchers.targets.items():
                    self._node.register(f"batcher:{name}", batcher)
                if self._memory is not None and self._memory.target is not None:
                    self._node.register("memory", self._memory.target)
            return self._node

    def spawn_workers(
        self,
        target: Callable[..., Any],
        n: int,
        args: tuple[Any, ...] = (),
        restart: Restart = "transient",
        *,
        name: str | None = None,
        max_restarts: int = 10,
        max_seconds: float = 10.0,
        backoff: Backoff | None = None,
    ) -> ChildRef:
        """Start ``n`` supervised worker processes running ``target(*args)``.

        ``target`` must be importable by name (a module-level function) and ``args``
        must pickle: both are checked here (TypeError). In it, ``lessor.connect()``
        gives the worker its client (``client.pool("name")``).

        ``restart`` is transient by default because workers are usually batch jobs: a
        worker that returns has done its work and is not run again (under permanent it
        would be, for ever); one that fails is restarted, after a ``backoff`` delay if
        one is given (default None: at once; see WorkerSpec). Past ``max_restarts``
        (default 10) within ``max_seconds`` (default 10 s) the group stops and is over
        for good (a temporary child of the root: neither restarted nor escalated);
        ``join`` raises WorkersFailed.
        """
        self._check()
        check_spawnable(target, args)
        name = name or f"workers-{next(self._jobs)}"
        with self._lock:
            pools = dict(self._process_specs)
        spec = WorkerSpec(name, target, n, args, restart, max_restarts, max_seconds, backoff,
                          pools=pools, breakers=self._breakers.for_workers(),
                          batchers=self._batchers.for_workers())  # fmt: skip
        outcome = GroupOutcome()
        start = (spec, self.node, self.event_log, f"root/{name}")
        kwargs = {"outcome": outcome, "hurry": self._hurry}
        group = self.add_child(ChildSpec(name, WorkerGroup, start, kwargs, "temporary"))
        with self._lock:
            self._outcomes[group] = outcome
        return group

    def join(self, workers: ChildRef, timeout: float | None = None) -> bool:
        """Wait until every process of a worker group has exited for good.

        True when they have; False at the timeout (permanent workers never do).
        Raises WorkersFailed if the group gave up or was stopped first, and
        RuntimeStopped once the runtime is shutting down.
        """
        with self._lock:
            outcome = self._outcomes.get(workers)
        if outcome is None:
            raise ValueError(f"{workers.path} is not a worker group of this runtime")
        return outcome.join(timeout)

    def map(
        self,
        fn: Callable[[Any], Any],
        items: Iterable[Any],
        workers: int = 2,
        *,
        timeout: float | None = None,
        return_exceptions: bool = False,
        max_restarts: int = 10,
    ) -> list[Any]:
        """``[fn(item) for item in items]``, computed by ``workers`` worker processes.

        Results come back in order. An item that raised is a TaskFailed: raised (the
        first in order) or, with ``return_exceptions``, put in its place. If the
        workers give up (past ``max_restarts`` restarts in 10 s) this raises
        WorkersFailed; items their workers left undone when they exited are TaskFailed.
        """
        self._check()
        check_spawnable(fn, (), "map function")
        job = MapJob(f"map-{next(self._jobs)}", items)

        def spawn(n: int) -> tuple[ChildRef, GroupOutcome]:
            group = self.spawn_workers(
                map_worker, n, (job.name, fn), name=job.name, max_restarts=max_restarts
            )
            with self._lock:
                return group, self._outcomes[group]

        def stop(group: ChildRef) -> None:
            self.stop_workers(group)
            with self._lock:
                self._outcomes.pop(group, None)

        return run_map(job, self.node, spawn, stop, workers, timeout, return_exceptions)

    def stop_workers(self, workers: ChildRef, timeout: float = 5.0) -> list[str]:
        """Drain a worker group, give it ``timeout`` seconds, kill what is left, remove it.

        Answered with the ids of the workers that had to be killed.
        """
        killed: list[str] = []
        with contextlib.suppress(LessorError):
            killed = _ask(workers.current(0.0), StopWorkers(timeout), timeout + 30, workers.path)
        with contextlib.suppress(LessorError):
            _ask(self._root, RemoveChild(workers.id), 60)
        return killed
