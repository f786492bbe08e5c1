"""Worker targets for the memory manager's end-to-end tests (module-level, so spawned
workers can import them by name).

Memory is really allocated and touched: ``b"x" * n`` writes every byte, so the pages
count in the worker's RSS at once. A ``bytes`` object that large is its own mmap, so
dropping it gives the pages back to the OS and the RSS falls again.

The workers tell the test what happened on a spawn-context ``multiprocessing.Queue``
(``out``) as ``(what, ...)`` tuples, and wait for the test on spawn-context Events:
never a sleep as synchronisation. The sleeps below pace a leak or stand for an item's
work; nothing waits on them.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psutil

import lessor
from lessor import Lease, PoolHandle

#: The longest a worker waits for the test (the tests' own bounds are far shorter).
WAIT = 60.0
#: Seconds between looks at a condition a worker polls for.
POLL = 0.02

#: What ``leak_and_keep`` never lets go of in this process: blobs and leases.
_leaked: list[bytes] = []
_kept: list[Lease] = []


def rss() -> int:
    """This process's resident set size (bytes), as the memory manager reads it."""
    return int(psutil.Process().memory_info().rss)


def grow_to(fraction: float, max_memory: int) -> bytes:
    """Allocate (and touch) what takes this process to ``fraction`` of ``max_memory``."""
    need = int(fraction * max_memory) - rss()
    return b"x" * max(need, 0)


def _until(stop: Any, client: lessor.Client) -> None:
    """Wait until the test sets ``stop`` (None: never) or the runtime drains this worker."""
    deadline = time.monotonic() + WAIT
    while not client.draining.is_set() and time.monotonic() < deadline:
        if stop is not None and stop.wait(POLL):
            return
        if stop is None:
            client.draining.wait(POLL)


def _wait_for(predicate: Any, timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL)
    return True


# -- 1. a map whose items leak and keep leases -------------------------------------------


def leak_and_keep(item: list[Any]) -> list[int]:
    """``[i, pool, leak_bytes, work_s]`` -> ``[i, i*i, pid, resource]``.

    Takes a lease from ``pool`` and never gives it back, leaks ``leak_bytes`` into a
    module-level list, then "works" for ``work_s`` seconds.
    """
    i, pool, leak_bytes, work_s = item
    lease = lessor.connect().pool(pool).acquire()  # the pool's own acquire_timeout
    _kept.append(lease)
    _leaked.append(b"x" * leak_bytes)
    time.sleep(work_s)
    return [i, i * i, os.getpid(), lease.resource]


# -- 2. a slow leak, and a flat control ----------------------------------------------------


def slow_leak(step: int, steps: int, every_s: float, go: Any, stop: Any, out: Any) -> None:
    """Once ``go`` is set, grow ``step`` bytes every ``every_s`` seconds, ``steps`` times;
    then stay flat until ``stop``."""
    client = lessor.connect()
    out.put(("ready", client.worker_id, os.getpid(), rss()))
    if not go.wait(WAIT):
        return
    grown: list[bytes] = []
    for _ in range(steps):
        grown.append(b"x" * step)
        time.sleep(every_s)
    out.put(("grown", client.worker_id, os.getpid(), rss()))
    _until(stop, client)


def flat(size: int, stop: Any, out: Any) -> None:
    """Allocate ``size`` bytes once, say so, and stay flat until ``stop``."""
    client = lessor.connect()
    blob = b"x" * size
    out.put(("ready", client.worker_id, os.getpid(), rss()))
    _until(stop, client)
    del blob


# -- 3. cleanup handlers run where they were registered ----------------------------------


def cleanup_reporter(fraction: float, max_memory: int, out: Any, stop: Any) -> None:
    """Register a cleanup handler that reports where it ran and what it dropped of this
    process's cache; then grow the cache to ``fraction`` of ``max_memory`` and wait for
    ``stop``.

    The memory manager may see the RSS cross cleanup while the blob is still being
    written: the handler can run before the blob is in the cache (it drops nothing
    then, and says so), and the next run, ``cleanup_interval`` later, drops it.
    """
    client = lessor.connect()
    cache: list[bytes] = []

    def drop_cache() -> None:
        out.put(("cleanup", os.getpid(), threading.current_thread().name, len(cache)))
        cache.clear()

    lessor.register_cleanup("worker-cache", drop_cache)
    blob = grow_to(fraction, max_memory)
    grown = rss()  # (before the handler can drop it)
    cache.append(blob)
    del blob
    out.put(("grown", client.worker_id, os.getpid(), grown))
    _until(stop, client)


# -- 4. a paused worker's Acquires wait; another worker's do not -------------------------


def paused_acquirer(pool: str, fraction: float, max_memory: int, out: Any, free: Any) -> None:
    """Park a lease in the cached handle, grow past pause, wait until this worker hears
    it is paused, then acquire through the cached and an uncached handle at once (one
    thread each). When ``free`` is set, drop the memory; report each grant as it comes."""
    client = lessor.connect()
    cached, uncached = client.pool(pool), client.pool(pool, cache=False)
    cached.release(cached.acquire(timeout=WAIT))  # parked here: reusable without a round trip
    out.put(("parked", cached.parked))
    blob = grow_to(fraction, max_memory)
    out.put(("grown", client.worker_id, os.getpid(), rss()))
    # The pools are told before this worker is (RuntimeMemory.admission), so once the
    # cached handle has heard (the uncached one does not listen), an Acquire meets the
    # pause rather than racing with it.
    heard = _wait_for(lambda: cached.paused)
    out.put(("heard", heard, cached.parked))

    def borrow(kind: str, handle: PoolHandle) -> None:
        """(A lease is its thread's: this thread gives it back before it ends.)"""
        try:
            lease = handle.acquire(timeout=WAIT)
        except Exception as exc:
            out.put(("failed", kind, f"{type(exc).__name__}: {exc}", time.monotonic()))
            return
        out.put(("granted", kind, lease.resource, time.monotonic()))
        handle.release(lease)

    threads = [
        threading.Thread(target=borrow, args=("cached", cached), name="borrow-cached"),
        threading.Thread(target=borrow, args=("uncached", uncached), name="borrow-uncached"),
    ]
    for thread in threads:
        thread.start()
    free.wait(WAIT)
    del blob
    out.put(("freed", rss(), time.monotonic()))
    for thread in threads:
        thread.join(WAIT)
    cached.flush()
    out.put(("done",))


def prompt_borrower(pool: str, go: Any, out: Any, stop: Any) -> None:
    """When ``go`` is set, acquire and release through a cached and an uncached handle."""
    client = lessor.connect()
    out.put(("ready", client.worker_id, os.getpid(), rss()))
    if not go.wait(WAIT):
        return
    got = []
    for handle in (client.pool(pool), client.pool(pool, cache=False)):
        lease = handle.acquire(timeout=5)
        got.append(lease.resource)
        handle.release(lease)
    client.pool(pool).flush()
    out.put(("borrowed", got, time.monotonic()))
    _until(stop, client)


# -- 5. a paused worker that dies holding leases -----------------------------------------


def hold_and_bloat(pool: str, n: int, fraction: float, max_memory: int, out: Any) -> None:
    """Take ``n`` leases, grow to ``fraction`` of ``max_memory`` and wait to be killed."""
    client = lessor.connect()
    handle = client.pool(pool, cache=False)
    leases = [handle.acquire(timeout=WAIT) for _ in range(n)]
    blob = grow_to(fraction, max_memory)
    out.put(("ready", client.worker_id, os.getpid(), rss(), [lease.id for lease in leases]))
    _until(None, client)  # (the test SIGKILLs it)
    del blob


# -- 7. the memory manager's stats, from a worker ----------------------------------------


def ask_stats(size: int, out: Any, stop: Any) -> None:
    """Allocate ``size`` bytes, then ask the runtime's memory manager for its stats until
    they list this worker with that much memory; report what they said; wait for ``stop``."""
    client = lessor.connect()
    blob = b"x" * size
    manager = client.memory()
    found: dict[str, Any] = {}
    stats: Any = None

    def listed() -> bool:
        nonlocal stats
        stats = manager.stats(timeout=5)
        mine = [p for p in stats.processes if p["key"] == client.worker_id]
        if mine and mine[0]["rss"] >= size:
            found.update(mine[0])
            return True
        return False

    ok = _wait_for(listed, timeout=20)
    out.put(
        (
            "stats",
            ok,
            type(stats).__module__,
            type(stats).__qualname__,
            isinstance(stats, lessor.MemoryStats),
            sorted(stats.as_dict()) if stats is not None else [],
            client.worker_id,
            os.getpid(),
            found,
            [p["key"] for p in stats.processes] if stats is not None else [],
        )
    )
    _until(stop, client)
    del blob
