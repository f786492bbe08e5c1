"""The runtime's worker processes: spawning supervised groups, ``map``/``imap``, the node.

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
from lessor.runtime.imap import Either, MapIterator, MapRun, collect
from lessor.runtime.mapjob import MapJob, map_worker
from lessor.runtime.memory import RuntimeMemory
from lessor.runtime.outcome import GroupOutcome
from lessor.runtime.shutdown import ask as _ask
from lessor.specs import Backoff, ChildSpec, PoolSpec, Restart
from lessor.supervisor.child import ChildRef
from lessor.supervisor.events import EventLog
from lessor.supervisor.supervisor import RemoveChild
from lessor.supervisor.worker_messages import Hurry
from lessor.supervisor.workers import StopWorkers, WorkerGroup, WorkerSpec
from lessor.transport.node import Node
from lessor.worker.bootstrap import check_spawnable

__all__ = ["WorkerProcesses", "check_map_options"]


class WorkerProcesses:
    """Runtime's methods for worker processes (it provides the fields below)."""

    event_log: EventLog
    shutdown_timeout: float
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
        """Start ``n`` supervised worker processes running ``target(*args)``; the group.

        Workers are spawned, not forked: ``target`` must be importable by name (a
        module-level function) and ``args`` must pickle; both are checked here
        (TypeError). In a worker, ``lessor.connect()`` gives its client and
        ``lessor.worker_index()`` its slot, 0 .. n-1 (kept by a restarted worker).

        - ``restart`` (default ``"transient"``): workers are usually batch jobs, so one
          that returns is done and one that fails is restarted (``"permanent"`` would
          rerun a finished job for ever; ``"temporary"`` never restarts).
        - ``name`` (default ``workers-N``, N counting up per runtime): the group's id;
          its path is ``root/<name>`` and its workers are ``root/<name>.<slot>.<life>``.
        - ``max_restarts`` (default 10) restarts within ``max_seconds`` (default 10.0
          s): one more and the group stops for good (a temporary child of the root,
          neither restarted nor escalated) and ``join`` raises WorkersFailed.
        - ``backoff`` (default None: restart at once): a delay before each restart.
        """
        group, _ = self._spawn_group(target, n, args, restart, name, max_restarts, max_seconds,
                                     backoff)  # fmt: skip
        return group

    def _spawn_group(
        self,
        target: Callable[..., Any],
        n: int,
        args: tuple[Any, ...],
        restart: Restart = "transient",
        name: str | None = None,
        max_restarts: int = 10,
        max_seconds: float = 10.0,
        backoff: Backoff | None = None,
        hurry: Hurry | None = None,
    ) -> tuple[ChildRef, GroupOutcome]:
        """spawn_workers, and the group's outcome; ``hurry`` cuts its waits short too."""
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
        either = self._hurry if hurry is None else Either(self._hurry, hurry)
        kwargs = {"outcome": outcome, "hurry": either}
        group = self.add_child(ChildSpec(name, WorkerGroup, start, kwargs, "temporary"))
        with self._lock:
            self._outcomes[group] = outcome
        return group, outcome

    def join(self, workers: ChildRef, timeout: float | None = None) -> bool:
        """Wait until every process of a worker group has exited for good.

        ``timeout`` in seconds (default None: as long as it takes). True when they
        have; False at the timeout (permanent workers never exit for good). Raises
        WorkersFailed if the group gave up or was stopped first, and RuntimeStopped
        once the runtime is shutting down; ValueError for a group not of this runtime.
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
        chunksize: int | None = None,
        timeout: float | None = None,
        return_exceptions: bool = False,
        max_restarts: int = 10,
        progress: Callable[[int, int], object] | None = None,
    ) -> list[Any]:
        """``[fn(item) for item in items]``, computed by worker processes, in order.

        - ``workers`` (default 2): processes to start (never more than there are items).
        - ``chunksize`` (items; default None: ``ceil(len(items) / (4 * workers))``, as
          ``multiprocessing.Pool.map`` does): how many consecutive items a worker gets
          per round trip. A chunk also stays under 256 KiB of items, whatever it says.
        - ``timeout`` (seconds for the whole map; default None: no limit): MapTimeout
          after it, the workers stopped.
        - ``return_exceptions`` (default False): a failed item is a TaskFailed (with
          the worker's exception type, message and traceback); by default the first
          in order is raised once all are done, else it is put in the item's place.
        - ``max_restarts`` (default 10) worker restarts within 10 s, past which the
          group gives up and this raises WorkersFailed; items its workers left undone
          when they exited are TaskFailed.
        - ``progress`` (default None): ``progress(done, total)`` after each item
          finishes (failed ones count), in the calling thread.

        Items are taken from ``items`` at once and must be msgpack-safe values, as
        must results; ``fn`` must be a module-level function (ProtocolError, TypeError
        here otherwise). An item whose worker dies is run again once, on its own.
        Ctrl-C while it waits stops the workers (draining for the runtime's
        ``shutdown_timeout``) and raises MapInterrupted (a KeyboardInterrupt) with the
        results of the items that finished.
        """
        if chunksize is None:  # Pool.map's: about four chunks per worker
            check_map_options(workers, 1, timeout)
            items = list(items)
            chunksize = max(1, -(-len(items) // (4 * workers)))
        run = self._map_run(fn, items, workers, chunksize, timeout, max_restarts)
        return collect(run, progress, return_exceptions, self.shutdown_timeout)

    def imap(
        self,
        fn: Callable[[Any], Any],
        items: Iterable[Any],
        workers: int = 2,
        *,
        chunksize: int = 1,
        timeout: float | None = None,
        return_exceptions: bool = False,
        max_restarts: int = 10,
    ) -> MapIterator:
        """``map``'s results one at a time, in item order, as soon as each is ready.

        The workers start now, not at the first ``next()``. Options are ``map``'s,
        except that ``chunksize`` defaults to 1 (as in ``Pool.imap``) and ``timeout``
        (seconds from this call) is raised as MapTimeout by the ``next()`` that passes
        it. A failed item raises its TaskFailed when reached, which finishes the
        iterator (``return_exceptions=True``: it is yielded in its place). Breaking
        out of the loop, ``close()``, a ``with`` block's end, an exception or Ctrl-C
        in ``next()`` stop the workers (see MapIterator).
        """
        return self._iterate(fn, items, workers, chunksize, timeout, return_exceptions,
                             max_restarts, ordered=True)  # fmt: skip

    def imap_unordered(
        self,
        fn: Callable[[Any], Any],
        items: Iterable[Any],
        workers: int = 2,
        *,
        chunksize: int = 1,
        timeout: float | None = None,
        return_exceptions: bool = False,
        max_restarts: int = 10,
    ) -> MapIterator:
        """``imap``, but results come as items finish, in no particular order (pair
        each with its item by returning it: ``fn`` can return ``[item, result]``)."""
        return self._iterate(fn, items, workers, chunksize, timeout, return_exceptions,
                             max_restarts, ordered=False)  # fmt: skip

    def _iterate(
        self,
        fn: Callable[[Any], Any],
        items: Iterable[Any],
        workers: int,
        chunksize: int,
        timeout: float | None,
        return_exceptions: bool,
        max_restarts: int,
        ordered: bool,
    ) -> MapIterator:
        run = self._map_run(fn, items, workers, chunksize, timeout, max_restarts)
        try:
            run.start(watch=True)
        except BaseException:
            run.stop()
            raise
        return MapIterator(run, ordered, return_exceptions)

    def _map_run(
        self,
        fn: Callable[[Any], Any],
        items: Iterable[Any],
        workers: int,
        chunksize: int,
        timeout: float | None,
        max_restarts: int,
    ) -> MapRun:
        """A map job, checked and ready to start (nothing spawned yet)."""
        self._check()
        check_map_options(workers, chunksize, timeout)
        check_spawnable(fn, (), "map function")
        node = self.node
        job = MapJob(f"map-{next(self._jobs)}", items, chunksize)

        def spawn(n: int, hurry: Hurry) -> tuple[ChildRef, GroupOutcome]:
            return self._spawn_group(map_worker, n, (job.name, fn), name=job.name,
                                     max_restarts=max_restarts, hurry=hurry)  # fmt: skip

        return MapRun(job, node, spawn, self._stop_group, workers, timeout)

    def _stop_group(self, group: ChildRef, grace: float) -> None:
        """``stop_workers`` for a map's group, which also forgets its outcome. Idempotent."""
        self.stop_workers(group, grace)
        with self._lock:
            self._outcomes.pop(group, None)

    def stop_workers(self, workers: ChildRef, timeout: float = 5.0) -> list[str]:
        """Drain a worker group, give it ``timeout`` seconds (default 5.0), kill what is
        left (SIGTERM, then SIGKILL after 1 s), remove it.

        Answered with the ids of the workers that had to be killed.
        """
        killed: list[str] = []
        with contextlib.suppress(LessorError):
            killed = _ask(workers.current(0.0), StopWorkers(timeout), timeout + 30, workers.path)
        with contextlib.suppress(LessorError):
            _ask(self._root, RemoveChild(workers.id), 60)
        return killed


def check_map_options(workers: int, chunksize: int, timeout: float | None) -> None:
    """ValueError (TypeError for a wrong type) for options no map could run with."""
    for name, value in (("workers", workers), ("chunksize", chunksize)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"map {name} must be an int, got {value!r}")
        if value < 1:
            raise ValueError(f"map {name} must be >= 1, got {value}")
    if timeout is not None and not 0 < timeout < float("inf"):
        raise ValueError(f"map timeout must be a number of seconds > 0 or None, got {timeout}")
