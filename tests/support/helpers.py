"""Small helpers shared by tests of every layer: polling, threads, process groups."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psutil


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


S = TypeVar("S")


@contextlib.contextmanager
def serving(server: S) -> Iterator[S]:
    """Run a socketserver-style ``server`` (one with a ``release`` event that lets held
    requests go) on a thread; on exit, release them, stop it and join the thread."""
    thread = threading.Thread(target=server.serve_forever, name="test-http")  # type: ignore[attr-defined]
    thread.start()
    try:
        yield server
    finally:
        server.release.set()  # type: ignore[attr-defined]
        server.shutdown()  # type: ignore[attr-defined]
        server.server_close()  # type: ignore[attr-defined]
        thread.join(5)
