"""Runtime: the root of one process's supervision tree, and its graceful shutdown.

``shutdown(timeout)`` drains before it stops: new Acquires get ``ShuttingDown``,
holders get until the deadline to release, whatever is still out at the deadline
is reclaimed and listed in the report, then children stop in reverse start order,
each within its own shutdown time.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any

import pykka
from pykka import ThreadingFuture

from lessor.actors.pool import AwaitDrained, BeginDrain, PoolActor, PoolLineage, ReclaimAll
from lessor.errors import LessorError, SupervisorGaveUp
from lessor.handle import PoolHandle
from lessor.mapjob import MapJob, map_worker
from lessor.messages import Lease
from lessor.node import Node
from lessor.quota import quota_spec
from lessor.specs import Backoff, ChildSpec, PoolSpec, Restart, Strategy, SupervisorSpec
from lessor.supervisor.child import ChildRef
from lessor.supervisor.events import Event, EventLog
from lessor.supervisor.supervisor import (
    AddChild,
    GetTree,
    RemoveChild,
    StopChildren,
    start_supervised,
)
from lessor.supervisor.supervisor import Supervisor as _Supervisor
from lessor.supervisor.workers import AwaitDone, StopWorkers, WorkerGroup, WorkerSpec

__all__ = ["Runtime", "ShutdownReport"]

log = logging.getLogger("lessor.runtime")


def _ask(ref: pykka.ActorRef[Any], message: Any, timeout: float) -> Any:
    return ref.ask(message, timeout=timeout)


@dataclass(frozen=True)
class ShutdownReport:
    """What a shutdown did. ``reclaimed``: leases still out at the deadline; ``killed``:
    children that did not stop within their shutdown time."""

    reclaimed: tuple[Lease, ...]
    killed: tuple[str, ...]
    duration_s: float
    failure: str | None = None

    @property
    def clean(self) -> bool:
        return not self.reclaimed and not self.killed and self.failure is None


class Runtime:
    """The supervision tree of this process. Use as a context manager or call ``shutdown``.

    Built in the main thread (and with ``handle_signals``), SIGTERM, SIGINT and
    interpreter exit shut it down gracefully.
    """

    def __init__(
        self,
        *,
        strategy: Strategy = "one_for_one",
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        backoff: Backoff | None = None,
        shutdown_timeout: float = 10.0,
        handle_signals: bool = True,
        events: int = 1000,
    ) -> None:
        self.shutdown_timeout = shutdown_timeout
        self.event_log = EventLog(events)
        self._spec = SupervisorSpec("root", (), strategy, max_restarts, max_seconds, backoff)
        self._pools: dict[str, PoolHandle] = {}
        self._node: Node | None = None
        self._groups: dict[str, ChildRef] = {}
        self._process_specs: dict[str, PoolSpec] = {}
        self._jobs = itertools.count(1)
        self._lock = threading.Lock()
        self._report: ShutdownReport | None = None
        self._failure: BaseException | None = None
        self._failed = threading.Event()
        self._root = start_supervised(
            _Supervisor, (self._spec, self.event_log, "root"), {}, self._root_exited, False
        )
        self._signals: dict[int, Any] = {}
        if handle_signals and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._signals[signum] = signal.signal(signum, self._on_signal)
            atexit.register(self._at_exit)

    # -- building the tree -------------------------------------------------------------

    def add_pool(
        self,
        spec: PoolSpec,
        *,
        restart: Restart = "permanent",
        shutdown: float = 5.0,
    ) -> PoolHandle:
        """Start a supervised pool; the handle follows it across restarts.

        With ``spec.scope == "process"`` this starts the global quota of
        ``spec.max_total`` (the returned handle leases quota tokens); each worker
        spawned afterwards runs its own pool of the real resources under it.
        """
        if spec.scope == "process":
            # Workers run the real pools; here lives the global quota they draw on.
            with self._lock:
                self._process_specs[spec.name] = spec
            spec = quota_spec(spec)
        kwargs = {"lineage": PoolLineage(), "events": self.event_log}
        child = self.add_child(ChildSpec(spec.name, PoolActor, (spec,), kwargs, restart, shutdown))
        handle = PoolHandle(child, spec)
        with self._lock:
            self._pools[spec.name] = handle
            if self._node is not None:
                self._node.register(spec.name, handle)
        return handle

    def add_child(self, spec: ChildSpec) -> ChildRef:
        """Start any supervised child: a pykka actor class or a nested SupervisorSpec."""
        self._check()
        child: ChildRef = _ask(self._root, AddChild(spec), 30)
        return child

    def pool(self, name: str) -> PoolHandle:
        return self._pools[name]

    # -- worker processes --------------------------------------------------------------

    @property
    def node(self) -> Node:
        """The socket workers connect to; made on first use."""
        with self._lock:
            if self._node is None:
                self._node = Node()
                for name, handle in self._pools.items():
                    self._node.register(name, handle)
            return self._node

    def spawn_workers(
        self,
        target: Callable[..., Any],
        n: int,
        args: tuple[Any, ...] = (),
        restart: Restart = "permanent",
        *,
        name: str | None = None,
        max_restarts: int = 10,
        max_seconds: float = 10.0,
    ) -> ChildRef:
        """Start ``n`` supervised worker processes running ``target(*args)``.

        ``target`` must be a module-level function; in it, ``lessor.connect()`` gives
        the worker its client (``client.pool("name")`` has the in-process lease API).
        """
        name = name or f"workers-{next(self._jobs)}"
        with self._lock:
            pools = dict(self._process_specs)
        spec = WorkerSpec(name, target, n, args, restart, max_restarts, max_seconds, pools=pools)
        group = self.add_child(
            ChildSpec(name, WorkerGroup, (spec, self.node, self.event_log, f"root/{name}"))
        )
        with self._lock:
            self._groups[name] = group
        return group

    def join(self, workers: ChildRef, timeout: float | None = None) -> bool:
        """Wait until every process of a worker group has exited for good.

        True when they have; False at the timeout. Permanent workers never do.
        """
        done: ThreadingFuture[Any] = ThreadingFuture()
        try:
            workers.current(5.0).tell(AwaitDone(done))
            done.get(timeout=timeout)
        except (pykka.Timeout, LessorError):
            return False
        return True

    def map(
        self,
        fn: Callable[[Any], Any],
        items: Iterable[Any],
        workers: int = 2,
        *,
        timeout: float | None = None,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """``[fn(item) for item in items]``, computed by ``workers`` worker processes.

        Results come back in order. An item that raised is a TaskFailed: raised (the
        first in order) or, with ``return_exceptions``, put in its place.
        """
        job = MapJob(f"map-{next(self._jobs)}", items)
        node = self.node
        node.register(job.name, job)
        try:
            if job.items:
                group = self.spawn_workers(
                    map_worker, min(workers, len(job.items)), (job.name, fn), "transient",
                    name=job.name,
                )  # fmt: skip
                try:
                    if not job.wait(timeout):
                        raise TimeoutError(f"{job.name} did not finish in {timeout}s")
                finally:
                    with contextlib.suppress(LessorError, pykka.Timeout, pykka.ActorDeadError):
                        _ask(group.current(0.0), StopWorkers(5.0), 30)  # most have exited
                    with contextlib.suppress(LessorError, pykka.Timeout):
                        _ask(self._root, RemoveChild(job.name), 60)
                    with self._lock:
                        self._groups.pop(job.name, None)
        finally:
            node.unregister(job.name)
            job.close()
        results = list(job.results)
        for index, error in sorted(job.failed.items()):
            if not return_exceptions:
                raise error
            results[index] = error
        return results

    def tree(self) -> dict[str, Any]:
        """The live tree: id, kind, state, restarts, uptime and children of every node."""
        self._check()
        tree: dict[str, Any] = _ask(self._root, GetTree(), 30)
        return tree

    def events(self) -> list[Event]:
        return self.event_log.snapshot()

    # -- failure -----------------------------------------------------------------------

    @property
    def failure(self) -> BaseException | None:
        """Why the root supervisor gave up, if it did."""
        return self._failure

    def wait_failed(self, timeout: float | None = None) -> bool:
        return self._failed.wait(timeout)

    def _root_exited(self, reason: BaseException | None) -> None:
        if reason is None or self._report is not None:
            return
        self._failure = reason
        self._failed.set()
        # Stop what is left from another thread: the root's own thread is ending.
        threading.Thread(target=self.shutdown, args=(0.0,), name="lessor-root-failed").start()

    def _check(self) -> None:
        if self._failure is not None:
            raise SupervisorGaveUp(f"the runtime stopped: {self._failure}") from self._failure
        if self._report is not None:
            raise LessorError("the runtime was shut down")

    # -- shutdown ----------------------------------------------------------------------

    def shutdown(self, timeout: float | None = None) -> ShutdownReport:
        """Drain, reclaim at the deadline, stop children in reverse order. Idempotent.

        1. Pools refuse new Acquires (ShuttingDown); workers are told to Drain.
        2. Until the deadline, holders release and workers exit.
        3. At the deadline, leases still out are reclaimed (listed in the report) and
           workers still running get SIGTERM, then SIGKILL (listed as killed).
        4. The tree stops in reverse start order, each child within its shutdown time.
        """
        with self._lock:
            if self._report is not None:
                return self._report
            began = time.monotonic()
            deadline = began + (self.shutdown_timeout if timeout is None else timeout)
            pools = [ref for ref in (self._live(h) for h in self._pools.values()) if ref]
            groups = [ref for ref in (self._live(g) for g in self._groups.values()) if ref]
            for pool in pools:
                pool.tell(BeginDrain())
            waits: list[Any] = [
                group.ask(StopWorkers(deadline - began, kill=False), block=False)
                for group in groups
            ]
            for pool in pools:
                drained: ThreadingFuture[Any] = ThreadingFuture()
                pool.tell(AwaitDrained(drained))
                waits.append(drained)
            for wait in waits:  # step 2: everyone has until the deadline
                with contextlib.suppress(pykka.Timeout, pykka.ActorDeadError):
                    wait.get(timeout=max(0.0, deadline - time.monotonic()))
            reclaimed: list[Lease] = []
            for pool in pools:
                with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                    reclaimed += _ask(pool, ReclaimAll("shutdown deadline"), 5)
            killed: list[str] = []
            for group in groups:
                with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                    killed += _ask(group, StopWorkers(0.0), 30)
            with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                killed += _ask(self._root, StopChildren(), max(60.0, timeout or 0))
            with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                self._root.stop(block=True, timeout=5)
            if self._node is not None:
                self._node.close()
            self._restore_signals()
            failure = self._failure
            self._report = ShutdownReport(
                tuple(reclaimed),
                tuple(killed),
                round(time.monotonic() - began, 3),
                None if failure is None else f"{type(failure).__name__}: {failure}",
            )
            log.info(
                "shutdown in %.3fs: %d leases reclaimed, killed %s",
                self._report.duration_s,
                len(reclaimed),
                list(killed),
            )
            return self._report

    @staticmethod
    def _live(node: PoolHandle | ChildRef) -> pykka.ActorRef[Any] | None:
        try:
            return node.current_ref(0.0) if isinstance(node, PoolHandle) else node.current(0.0)
        except LessorError:
            return None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        previous = self._signals.get(signum)
        self.shutdown()
        if callable(previous):
            previous(signum, frame)
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt
        else:
            raise SystemExit(128 + signum)

    def _restore_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, previous in self._signals.items():
            with contextlib.suppress(ValueError, TypeError):
                if signal.getsignal(signum) == self._on_signal:
                    signal.signal(signum, previous)
        self._signals.clear()
        atexit.unregister(self._at_exit)

    def _at_exit(self) -> None:
        self.shutdown()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()
        if exc is None and self._failure is not None:
            raise SupervisorGaveUp(f"the runtime stopped: {self._failure}") from self._failure
