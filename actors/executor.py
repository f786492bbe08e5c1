"""Threads for factory calls, shared by a runtime's pools, that never hold the exit.

``concurrent.futures`` joins its worker threads when the interpreter exits, daemon or
not, so one ``create()`` stuck on a dead network kept a process alive long after its
runtime had shut down. These threads are daemons nobody joins at exit.

A runtime has one :class:`FactoryThreads`; each pool submits through its own
:class:`FactoryLane`, which runs at most ``limit`` of its calls at once (psycopg_pool's
``num_workers``). The thread count grows with the lanes' limits, so a pool whose
creates hang can hold only its own share. A pool that stops waits for its lane for
a bounded time and then abandons what is still running (a result that comes back
to a stopped pool is destroyed there).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from lessor.actors.per_process import PerProcess

__all__ = ["FactoryLane", "FactoryThreads", "process_factory_threads"]

log = logging.getLogger("lessor.pool")

_Job = tuple[Callable[..., object], tuple[Any, ...]]


class FactoryThreads:
    """Daemon threads, started as work arrives and reused while idle, up to a cap.

    The cap is the sum of the open lanes' limits; when the last lane closes, idle
    threads end (a stopped runtime leaves none behind).
    """

    def __init__(self, name: str = "lessor-factory") -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()  # None: re-check
        self._lock = threading.Lock()
        self._cap = 0
        self._alive = 0  # threads in _work
        self._waiting = 0  # of those, blocked waiting for a job
        self._queued = 0  # jobs put and not yet taken
        self._started = 0

    def lane(self, limit: int, name: str) -> FactoryLane:
        """A submission lane running at most ``limit`` calls at once; raises the cap by that."""
        with self._lock:
            self._cap += limit
        return FactoryLane(self, limit, name)

    def _release_cap(self, limit: int) -> None:
        with self._lock:
            self._cap -= limit
            pokes = self._waiting if not self._cap else 0
        for _ in range(pokes):
            self._jobs.put(None)  # idle threads wake, see no lane left, and end

    def _run(self, fn: Callable[..., object], args: tuple[Any, ...]) -> None:
        with self._lock:
            self._jobs.put((fn, args))
            self._queued += 1
            if self._queued <= self._waiting or self._alive >= max(self._cap, 1):
                return
            self._alive += 1
            self._started += 1
            number = self._started
        threading.Thread(target=self._work, name=f"{self._name}-{number}", daemon=True).start()

    def _work(self) -> None:
        lock, jobs = self._lock, self._jobs
        while True:
            with lock:
                if not self._cap and not self._queued:
                    self._alive -= 1
                    return
                self._waiting += 1
            job = jobs.get()
            with lock:
                self._waiting -= 1
                if job is not None:
                    self._queued -= 1
            if job is None:
                continue
            try:
                job[0](*job[1])
            except BaseException:  # the jobs catch their own errors; this is a bug
                log.exception("a factory call failed")
            del job


class FactoryLane:
    """One pool's way onto the shared threads: at most ``limit`` of its calls run at once."""

    def __init__(self, threads: FactoryThreads, limit: int, name: str) -> None:
        if limit < 1:
            raise ValueError(f"a factory lane needs a limit >= 1, got {limit!r}")
        self._threads = threads
        self._limit = limit
        self._name = name
        self._pending: deque[_Job] = deque()
        self._running = 0
        self._cond = threading.Condition(threading.Lock())
        self._closed = False

    def submit(self, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn(*args)`` on a shared thread; RuntimeError once shut down."""
        with self._cond:
            if self._closed:
                raise RuntimeError(f"{self._name}: factory lane is shut down")
            if self._running >= self._limit:
                self._pending.append((fn, args))
                return
            self._running += 1
        self._threads._run(self._call, (fn, args))

    def _call(self, fn: Callable[..., object], args: tuple[Any, ...]) -> None:
        job: _Job | None = (fn, args)
        while job is not None:
            try:
                job[0](*job[1])
            except Exception:  # the jobs catch their own errors; this is a bug
                log.exception("%s: a factory call failed", self._name)
            with self._cond:
                job = self._pending.popleft() if self._pending else None
                if job is None:
                    self._running -= 1
                    self._cond.notify_all()

    def shutdown(self, timeout: float) -> bool:
        """Let queued calls finish, up to ``timeout`` s; whether all of them did."""
        deadline = time.monotonic() + timeout
        with self._cond:
            if not self._closed:
                self._closed = True
                self._threads._release_cap(self._limit)
            while self._running or self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.warning(
                        "%s: %d factory calls still running after %.3gs, abandoned",
                        self._name,
                        self._running,
                        timeout,
                    )
                    return False
                self._cond.wait(remaining)
        return True


_per_process: PerProcess[FactoryThreads] = PerProcess(lambda: FactoryThreads("lessor-factory"))


def process_factory_threads() -> FactoryThreads:
    """The factory threads every pool of this process shares."""
    return _per_process.get()
