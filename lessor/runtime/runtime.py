"""Runtime: the root of one process's supervision tree, and its graceful shutdown.

``shutdown(timeout)`` drains before it stops: new Acquires get ``ShuttingDown``,
the caller's own leases come back at once, other holders get until the deadline to
release, whatever is still out at the deadline is reclaimed and listed in the
report, then children stop in reverse start order, each within its own shutdown time.

No lock is held across the drain: a second caller waits for the first and gets the
same report, and a signal that lands during a shutdown hurries it (SIGKILL the
workers, reclaim everything, stop the tree) instead of waiting on it.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from types import TracebackType
from typing import cast

from lessor.errors import LessorError, NoSuchPool, RuntimeStopped, SupervisorGaveUp
from lessor.handles.batcher import Batcher
from lessor.handles.breaker import Breaker
from lessor.handles.cached import CachedRoute
from lessor.handles.memory import MemoryManager
from lessor.handles.pool import PoolHandle
from lessor.holder import current_holder
from lessor.protocol.messages import Lease
from lessor.runtime.batchers import Batchers
from lessor.runtime.breakers import Breakers
from lessor.runtime.memory import RuntimeMemory
from lessor.runtime.observe import Observing
from lessor.runtime.outcome import GroupOutcome
from lessor.runtime.process_pools import RuntimePools, StatsBoard
from lessor.runtime.shutdown import ShutdownReport, drain, live, make_report, reclaim_holder
from lessor.runtime.shutdown import ask as _ask
from lessor.runtime.signals import SignalHooks
from lessor.runtime.workers import WorkerProcesses
from lessor.specs import (
    Backoff,
    BatchSpec,
    BreakerSpec,
    ChildSpec,
    PoolSpec,
    Restart,
    Strategy,
    SupervisorSpec,
)
from lessor.specs.checks import number, require
from lessor.specs.memory import MemorySpec
from lessor.supervisor.child import ChildRef
from lessor.supervisor.events import EventLog
from lessor.supervisor.supervisor import AddChild, start_supervised
from lessor.supervisor.supervisor import Supervisor as _Supervisor
from lessor.transport.node import Node

__all__ = ["Runtime", "ShutdownReport"]

log = logging.getLogger("lessor.runtime")


class Runtime(WorkerProcesses, RuntimePools, Observing):
    """The supervision tree of this process. Use as a context manager or call ``shutdown``.

    Built in the main thread (and with ``handle_signals``), SIGTERM, SIGINT and
    interpreter exit shut it down gracefully; a second signal during that shutdown
    stops everything at once.

    Options (keyword-only): ``strategy`` (default "one_for_one"), ``max_restarts``
    (default 3) within ``max_seconds`` (default 5.0 s) and ``backoff`` (default None:
    restart at once) are the root supervisor's, for its pools, breakers, batchers and
    memory manager; worker groups have budgets of their own (docs/supervision.md).
    ``shutdown_timeout`` (default 10.0 s) is how long ``shutdown()`` lets holders
    release before it reclaims; ``handle_signals`` (default True) installs the SIGTERM
    and SIGINT handlers; ``events`` (default 1000) is how many events are kept.
    ``control`` (default False; or env ``LESSOR_CONTROL=1``) lets ``lessor top`` and
    ``lessor status`` attach (docs/operations.md); ``metrics_port`` (default None: no
    endpoint) serves Prometheus metrics on 127.0.0.1 (:meth:`serve_metrics`).
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
        control: bool = False,
        metrics_port: int | None = None,
    ) -> None:
        require(number(shutdown_timeout) and shutdown_timeout >= 0, "shutdown_timeout",
                "must be a number of seconds >= 0", shutdown_timeout)  # fmt: skip
        self.shutdown_timeout = shutdown_timeout
        self.event_log = EventLog(events)
        self._spec = SupervisorSpec("root", (), strategy, max_restarts, max_seconds, backoff)
        self._pools: dict[str, PoolHandle] = {}
        self._caches: dict[str, PoolHandle] = {}  # pool -> its cached handle, if made
        self._own: dict[str, PoolHandle] = {}  # process-scoped pool -> this process's own
        self._board = StatsBoard()  # what workers say of their own pools
        self._breakers = Breakers()
        self._batchers = Batchers()
        self._memory: RuntimeMemory | None = None
        self._node: Node | None = None
        self._outcomes: dict[ChildRef, GroupOutcome] = {}
        self._process_specs: dict[str, PoolSpec] = {}
        self._jobs = itertools.count(1)
        # Guards the fields above, never held across a wait; re-entrant for signal handlers.
        self._lock = threading.RLock()
        self._report: ShutdownReport | None = None
        self._closer: int | None = None  # the thread running the shutdown
        self._closed = threading.Event()  # the report is made
        self._hurry = threading.Event()  # skip the drain: stop at once
        self._from_caller: list[Lease] = []
        self._failure: BaseException | None = None
        self._root_gone = False
        self._failed = threading.Event()
        self._root = start_supervised(
            _Supervisor, (self._spec, self.event_log, "root"), {}, self._root_exited, False, "root"
        )
        self._signals = SignalHooks(self.shutdown, self._closing, self._hurry, handle_signals)
        self._started, self._metrics, self._control = time.monotonic(), None, None
        self._open_views(control or os.environ.get("LESSOR_CONTROL") == "1", metrics_port)

    # -- building the tree -------------------------------------------------------------

    def add_pool(
        self,
        spec: PoolSpec,
        *,
        restart: Restart = "permanent",
        shutdown: float = 5.0,
        fair_share: bool = True,
        wait: bool = False,
        wait_timeout: float = 30.0,
    ) -> PoolHandle:
        """Start a supervised pool; the handle follows it across restarts.

        ``restart`` (default "permanent") and ``shutdown`` (default 5.0 s to stop) are
        its child spec's. ``wait=True`` (default False) returns only once the pool
        holds ``spec.min_size`` resources, as psycopg_pool's ``open(wait=True)``: past
        ``wait_timeout`` (default 30.0 s) it raises AcquireTimeout, its cause the
        factory's last error (a dead DSN is reported here, not at the first Acquire);
        the pool stays in the tree and keeps trying. For ``scope="process"`` it waits on
        this process's own pool, so ``min_size`` connections are opened here too.

        A ``spec.breaker`` must name a breaker added before (NoSuchBreaker).
        With ``spec.scope == "process"`` this starts the global quota of
        ``spec.max_total`` (``quota(name)``), and every process that uses the pool runs
        its own pool of the real resources under it: each worker, and this one (the
        returned handle, as ``pool(name)``; started on first use). ``fair_share``
        (default True) makes processes above their share of the quota give connections
        back to one that waits with less (see :mod:`lessor.core.pool.fairshare`).
        """
        self._check()
        handle = self._add_pool(spec, restart, shutdown, fair_share)
        if wait:
            handle.wait(wait_timeout)
        return handle

    def add_breaker(
        self, spec: BreakerSpec, *, restart: Restart = "permanent", shutdown: float = 5.0
    ) -> Breaker:
        """Start a supervised circuit breaker shared by this process and its workers.

        Add breakers before spawning workers: their specs travel with the workers.
        """
        self._check()
        handle, target = self._breakers.add(spec, self.add_child, self.event_log, restart, shutdown)
        with self._lock:
            if self._node is not None:
                self._node.register(f"breaker:{spec.name}", target)
        return handle

    def breaker(self, name: str) -> Breaker:
        """Breaker ``name`` (NoSuchBreaker if none)."""
        return self._breakers.get(name)

    def add_batcher(
        self, spec: BatchSpec, *, restart: Restart = "permanent", shutdown: float = 5.0
    ) -> Batcher:
        """Start a supervised batch processor fed by this process and its workers.

        Add batchers before spawning workers: what their handles need travels with them.
        """
        self._check()
        handle, target = self._batchers.add(spec, self.add_child, self.event_log, restart, shutdown)
        with self._lock:
            if self._node is not None:
                self._node.register(f"batcher:{spec.name}", target)
        return handle

    def batcher(self, name: str) -> Batcher:
        """Batcher ``name`` (NoSuchBatcher if none)."""
        return self._batchers.get(name)

    def add_memory(
        self, spec: MemorySpec | None = None, *, restart: Restart = "permanent",
        shutdown: float = 5.0,
    ) -> MemoryManager:  # fmt: skip
        """Start the memory manager (one per runtime; ``MemorySpec()`` by default).

        It samples this process and every worker, spawned before or after it, and acts
        on pools and worker groups as they are when it acts (see docs/memory.md).
        """
        self._check()
        memory = RuntimeMemory(
            spec or MemorySpec(), self._all_pools,
            lambda: [c.route for c in list(self._caches.values())], lambda: self._node,
            lambda: list(self._outcomes),
        )  # fmt: skip
        with self._lock:
            if self._memory is not None:
                raise ValueError("this runtime has a memory manager already")
            self._memory = memory
        try:
            handle, target = memory.start(self.add_child, self.event_log, restart, shutdown)
        except BaseException:
            with self._lock:
                self._memory = None
            raise
        with self._lock:
            if self._node is not None:
                self._node.register("memory", target)
        return handle

    def memory(self) -> MemoryManager:
        """The memory manager (LessorError if ``add_memory`` was not called)."""
        memory = self._memory
        if memory is None or memory.handle is None:
            raise LessorError("this runtime has no memory manager: call add_memory() first")
        return memory.handle

    def add_child(self, spec: ChildSpec) -> ChildRef:
        """Start any supervised child: a pykka actor class or a nested SupervisorSpec."""
        self._check()
        child: ChildRef = _ask(self._root, AddChild(spec), 30)
        return child

    def pool(self, name: str, *, cache: bool = False) -> PoolHandle:
        """Pool ``name`` (process-scoped: this process's own pool of it, real resources
        under the quota); ``cache=True`` (default False): the runtime's one cached handle
        of it, a pair in a few µs (see :mod:`lessor.handles.cached`)."""
        handle = self._own.get(name) or self._pools.get(name)
        if handle is None:
            raise NoSuchPool(f"no pool named {name!r} in this runtime")
        return self._cached(name, handle) if cache else handle

    # -- failure -----------------------------------------------------------------------

    @property
    def failure(self) -> BaseException | None:
        """Why the root supervisor gave up, if it did."""
        return self._failure

    def wait_failed(self, timeout: float | None = None) -> bool:
        return self._failed.wait(timeout)

    def _root_exited(self, reason: BaseException | None) -> None:
        if reason is None:  # stopped by us, or by someone else (ActorRegistry.stop_all)
            self._root_gone = self._closer is None
            return
        self._failure = reason
        self._failed.set()
        if self._closer is None:  # stop what is left, from another thread: this one ends
            threading.Thread(target=self.shutdown, args=(0.0,), name="lessor-root-failed").start()

    def _check(self) -> None:
        if self._failure is not None:
            raise SupervisorGaveUp(f"the runtime stopped: {self._failure}") from self._failure
        if self._closer is not None:
            raise RuntimeStopped("the runtime was shut down")
        if self._root_gone:
            raise RuntimeStopped("the runtime's root supervisor stopped")

    # -- shutdown ----------------------------------------------------------------------

    def shutdown(self, timeout: float | None = None) -> ShutdownReport:
        """Drain, reclaim at the deadline, stop children in reverse order. Idempotent.

        1. Pools refuse new Acquires (ShuttingDown); the caller's own leases are
           taken back (listed in the report); workers are told to Drain.
        2. Until the deadline, holders release and workers exit.
        3. At the deadline, leases still out are reclaimed (listed in the report) and
           workers still running get SIGTERM, then SIGKILL (listed as killed).
        4. The tree stops in reverse start order, each child within its shutdown time.

        A call from another thread meanwhile waits for this one and returns its report.
        A signal meanwhile skips what is left of the drain and of the grace periods.
        """
        me = threading.get_ident()
        with self._lock:
            report, closer = self._report, self._closer
            if report is None and closer is None:
                self._closer = me
        if report is not None:
            return report
        if closer is None:
            report = self._close(timeout)
            self._signals.deliver_pending()  # a signal that hurried this shutdown
            return report
        if closer == me:  # re-entered on the thread that is shutting down
            self._hurry.set()
            raise RuntimeStopped("a shutdown is under way on this thread; it is hurried now")
        handles = list(self._all_pools().values())
        taken = reclaim_holder(live(handles), current_holder())  # or they would wait for us
        with self._lock:
            self._from_caller += taken
        self._closed.wait()
        assert self._report is not None
        return self._report

    def _closing(self) -> int | None:
        """The thread running the shutdown, while one is under way."""
        return self._closer if self._report is None else None

    def _close(self, timeout: float | None) -> ShutdownReport:
        if self._report is not None:  # a signal handler ran one while we were deciding
            return self._report
        began = time.monotonic()
        deadline = began + (self.shutdown_timeout if timeout is None else timeout)
        reclaimed: list[Lease] = []
        from_caller: list[Lease] = []
        killed: list[str] = []
        unflushed: dict[str, int] = {}
        own: tuple[list[Lease], list[Lease]] = ([], [])  # own pools': from caller, at deadline
        interrupted: KeyboardInterrupt | None = None
        try:
            log.info("shutting down: draining for up to %.3gs", deadline - began)
            with self._lock:
                handles, outcomes = list(self._pools.values()), dict(self._outcomes)
            for outcome in outcomes.values():  # whoever waits on workers: this is the end
                outcome.fail(RuntimeStopped("the runtime shut down before the workers finished"))
            groups = list(outcomes)
            caller = current_holder()
            caches = [cast(CachedRoute, c.route) for c in self._caches.values()]
            for cache in caches:  # nothing parks now; the caller's leases come back
                cache.drain(caller)
            own[0].extend(self._drain_own(caller))  # own pools of process-scoped pools
            self._breakers.close()  # their last outcomes, while the breakers still run
            self._batchers.drain()  # from now on every item runs at once

            def settle() -> None:  # the workers are gone: what they handed in runs
                self._batchers.wait_idle(deadline, self._hurry)
                unflushed.update(self._batchers.fail_outstanding())
                own[1].extend(self._settle_own())  # tokens back before the quotas reclaim

            try:
                reclaimed, from_caller, killed = drain(
                    self._root, live(handles), live(groups), deadline, self._hurry, caller, settle
                )
            except KeyboardInterrupt as exc:
                # A Ctrl-C this runtime does not handle itself (handle_signals=False, or
                # not the main thread) broke into the drain: finish it at once, then let
                # the interrupt go on. The steps are idempotent.
                interrupted = exc
                self._hurry.set()
                log.warning("interrupted during shutdown: stopping at once")
                reclaimed, from_caller, killed = drain(
                    self._root, live(handles), live(groups), deadline, self._hurry, caller, settle
                )
            for name, count in self._batchers.close().items():  # the tree has stopped
                unflushed[name] = unflushed.get(name, 0) + count
            for cache in caches:
                cache.close()
            if self._memory is not None:
                self._memory.close()
            self._stop_serving()
            if self._node is not None:
                self._node.close()
            self._signals.restore()
        finally:
            with self._lock:
                from_caller += self._from_caller + own[0]  # (+ callers that came meanwhile)
                report = make_report(
                    began, reclaimed + own[1], killed, self._failure, from_caller, unflushed
                )
                self._report = report
            self._closed.set()
        if interrupted is not None:
            raise interrupted
        return report

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
