"""MemoryManager, the memory manager's handle, and this process's cleanup handlers.

Cleanup handlers belong to a process: the caches worth dropping live there. Register
them where they live, in the runtime or in a worker, with :func:`register_cleanup`;
when that process reaches the ``cleanup`` level (or the machine does), the memory
manager runs them there, the runtime's on one of its factory threads and a worker's
on a thread of its own (never on the thread that reads the runtime's socket).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from lessor.protocol.messages import GetStats, MemoryStats, Message
from lessor.resources import Resources, detect

__all__ = [
    "MemoryManager",
    "register_cleanup",
    "registered_cleanups",
    "run_cleanups",
    "unregister_cleanup",
]

log = logging.getLogger("lessor.memory")

_handlers: dict[str, Callable[[], object]] = {}
_handlers_lock = threading.Lock()
_running = threading.Lock()  # one run at a time in a process: a second request is dropped


def register_cleanup(name: str, fn: Callable[[], object]) -> None:
    """Run ``fn()`` in this process when its memory reaches the cleanup level.

    A handler of the same name is replaced. Handlers run one after another in the
    order registered; an exception is logged and the next handler still runs.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_cleanup: name must be a non-empty str, got {name!r}")
    if not callable(fn):
        raise TypeError(f"register_cleanup: fn must be callable, got {fn!r}")
    with _handlers_lock:
        _handlers.pop(name, None)
        _handlers[name] = fn


def unregister_cleanup(name: str) -> bool:
    """Forget handler ``name``; False if there was none."""
    with _handlers_lock:
        return _handlers.pop(name, None) is not None


def registered_cleanups() -> list[str]:
    """The names of this process's handlers, in the order they run."""
    with _handlers_lock:
        return list(_handlers)


def run_cleanups(why: str = "") -> dict[str, str] | None:
    """Run every handler of this process once: {name: "" or the error it raised}.

    None if a run was already under way here (the request is dropped, not queued:
    that run is already freeing what it can).
    """
    if not _running.acquire(blocking=False):
        return None
    try:
        with _handlers_lock:
            handlers = list(_handlers.items())
        if handlers:
            log.warning("memory: running %d cleanup handler(s): %s", len(handlers), why)
        outcome: dict[str, str] = {}
        for name, fn in handlers:
            try:
                fn()
                outcome[name] = ""
            except Exception as exc:
                log.exception("memory: cleanup handler %r failed", name)
                outcome[name] = f"{type(exc).__name__}: {exc}"
        return outcome
    finally:
        _running.release()


class _Route(Protocol):
    def ask(self, message: Message, timeout: float | None = None) -> Any: ...


class MemoryManager:
    """The runtime's memory manager, from the runtime or a worker (``client.memory()``)."""

    def __init__(self, route: _Route) -> None:
        self._route = route

    def stats(self, timeout: float | None = None) -> MemoryStats:
        """Memory per process and its peak, slopes, levels, admission and recent events."""
        stats: MemoryStats = self._route.ask(GetStats(), timeout)
        return stats

    @staticmethod
    def resources() -> Resources:
        """What this machine (or container) has now: CPUs, memory, cgroup limits."""
        return detect()

    register_cleanup = staticmethod(register_cleanup)
    unregister_cleanup = staticmethod(unregister_cleanup)
