"""Threads for factory calls that can never hold the interpreter's exit.

``concurrent.futures`` joins its worker threads when the interpreter exits, daemon or
not, so one ``create()`` stuck on a dead network kept a process alive long after its
runtime had shut down. These threads are daemons nobody joins at exit; a pool that
stops waits for them for a bounded time and then abandons what is still running
(its result is destroyed when it comes back to a stopped pool).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["FactoryThreads"]

log = logging.getLogger("lessor.pool")

_Job = tuple[Callable[..., object], tuple[Any, ...]]


class FactoryThreads:
    """Up to ``size`` daemon threads, started as work arrives, reused while idle."""

    def __init__(self, size: int, name: str) -> None:
        self._size = size
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn(*args)`` on a thread; RuntimeError once shut down."""
        with self._lock:
            if self._closed:
                raise RuntimeError("factory threads are shut down")
            self._jobs.put((fn, args))
            if self._idle.acquire(blocking=False):  # an idle thread will take it
                return
            if len(self._threads) < self._size:
                thread = threading.Thread(
                    target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()

    def shutdown(self, timeout: float) -> bool:
        """Let queued work finish, up to ``timeout`` s in all; whether every thread ended."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._jobs.put(None)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            log.warning("factory calls still running after %.3gs, abandoned: %s", timeout, stuck)
        return not stuck

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, args = job
            try:
                fn(*args)
            except BaseException:  # the jobs catch their own errors; this is a bug
                log.exception("a factory call failed")
            del job, fn, args
            self._idle.release()
