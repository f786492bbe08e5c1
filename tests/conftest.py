"""Shared fixtures: every test must leave no thread or child process behind."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

LEAK_GRACE = 5.0  # seconds a stopping thread or process may take to finish


def wait_until(predicate: object, timeout: float = 5.0, interval: float = 0.002) -> bool:
    """Poll a condition with a deadline (for outcomes no event announces)."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run fn in a thread; its result or exception lands in the returned list."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def group_members(pgid: int) -> list[int]:
    """Live processes of the group (zombies are dead, just not reaped yet)."""
    found = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return found


def _ours(process: psutil.Process) -> bool:
    """A live child that a test started (multiprocessing's resource tracker is the
    interpreter's own helper: started once, it lives until the test run ends)."""
    try:
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return "multiprocessing.resource_tracker" not in " ".join(process.cmdline())
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    me = psutil.Process()

    def leftovers() -> tuple[list[threading.Thread], list[psutil.Process]]:
        threads = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        children = [p for p in me.children(recursive=True) if _ours(p)]
        return threads, children

    wait_until(lambda: leftovers() == ([], []), timeout=LEAK_GRACE)
    threads, children = leftovers()
    for child in children:
        child.kill()
    assert not threads, f"test left threads running: {[t.name for t in threads]}"
    assert not children, f"test left child processes: {[c.pid for c in children]}"


def refuses_acquires(pool: Any, timeout: float = 1.0) -> bool:
    """Whether the pool answers ShuttingDown; a lease granted before it does goes back."""
    from lessor import Lease, ShuttingDown

    try:
        got = pool.acquire(timeout=timeout)
    except ShuttingDown:
        return True
    except Exception:
        return False
    if isinstance(got, Lease):
        pool.release(got)
    return False
