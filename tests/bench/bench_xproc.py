"""Benchmark: Acquire+Release from worker processes, against raw IPC and other semaphores.

Run by hand from the repository root: ``python tests/bench/bench_xproc.py [--json]``.
All figures come from the same run. Targets: ``ratio_to_pipe <= 1.5`` and
``speedup_vs_manager >= 3``. ``kernel_sem_us`` is the floor for a bare counter, but
a kernel semaphore slot is lost for good when its holder dies; lessor's is not.

``pair_us`` is what ``client.pool(name)`` gives a worker: leases cached in the worker
and recalled when someone else waits. ``pair_uncached_us`` is ``cache=False``, where
every Acquire is a round trip. ``recall_ms`` is the price of caching: how long an
Acquire in the runtime waits for a lease parked in an idle worker.
``sigkill_reclaim_ms``: from SIGKILL of a worker holding a pool's only lease to the
grant of an Acquire waiting for it in the runtime (target < 10 ms).
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

import msgpack
from common import cli  # run as a script: this folder is on sys.path

import lessor
from lessor import PoolSpec, Runtime, TokenFactory

WORKER_COUNTS = (1, 2, 4, 8)


def lessor_pairs(job: list[Any]) -> list[float]:
    """In a worker: warm up, then time ``n`` pairs; returns [µs per pair, start, end].

    ``job`` is [pool, n] for the default handle or [pool, n, False] for an uncached one.
    """
    pool_name, n, *cache = job
    slots = lessor.connect().pool(pool_name, cache=bool(cache[0]) if cache else True)
    acquire, release = slots.acquire, slots.release
    for _ in range(200):
        release(acquire(timeout=30))
    began = time.monotonic()
    for _ in range(n):
        release(acquire(timeout=30))
    ended = time.monotonic()
    return [(ended - began) / n * 1e6, began, ended]


def acquire_waits(job: list[Any]) -> list[float]:
    """In a worker: ``n`` pairs, each Acquire timed (µs): what contention costs a caller."""
    pool_name, n, cache = job
    slots = lessor.connect().pool(pool_name, cache=cache)
    acquire, release, clock = slots.acquire, slots.release, time.perf_counter
    waits = []
    for _ in range(n):
        began = clock()
        lease = acquire(timeout=30)
        waits.append((clock() - began) * 1e6)
        release(lease)
    return waits


def contended_waits(runtime: Runtime, workers: int, n: int) -> dict[str, float]:
    """p50/p99/max Acquire wait with ``workers`` workers on 3 slots, cached and uncached."""
    out = {}
    for label, cache in (("cached", True), ("uncached", False)):
        runs = runtime.map(acquire_waits, [["slots", n, cache]] * workers, workers=workers)
        waits = sorted(w for run in runs for w in run)
        out[f"{label}_p50_us"] = round(waits[len(waits) // 2], 1)
        out[f"{label}_p99_us"] = round(waits[int(len(waits) * 0.99)], 1)
        out[f"{label}_max_ms"] = round(waits[-1] / 1e3, 2)
    return out


def park_and_idle(job: list[Any]) -> None:
    """In a worker: park one lease, then sit idle (no requests) until told to stop."""
    pool_name, flag = job
    slots = lessor.connect().pool(pool_name)
    slots.release(slots.acquire(timeout=30))
    while not os.path.exists(flag):
        time.sleep(0.01)


def recall_ms(runtime: Runtime, rounds: int) -> float:
    """Median wait of an in-runtime Acquire for the one lease, parked in an idle worker."""
    pool = runtime.add_pool(PoolSpec("recall", TokenFactory(), max_size=1))
    waits = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(rounds):
            flag = os.path.join(tmp, str(i))
            done = threading.Thread(
                target=runtime.map, args=(park_and_idle, [["recall", flag]]), daemon=True
            )
            done.start()
            while pool.stats().leased == 0:
                time.sleep(0.005)
            time.sleep(0.05)  # the worker is idle now: its background reader is listening
            began = time.perf_counter()
            pool.release(pool.acquire(timeout=30))
            waits.append((time.perf_counter() - began) * 1e3)
            open(flag, "w").close()
            done.join()
    return statistics.median(waits)


def hold_until_killed(job: list[Any]) -> None:
    """In a worker: hold the pool's one lease (uncached), say so, then wait to be killed."""
    pool_name, flag = job
    slots = lessor.connect().pool(pool_name, cache=False)
    slots.acquire(timeout=30)
    with open(flag + ".tmp", "w") as out:
        out.write(str(os.getpid()))
    os.rename(flag + ".tmp", flag)
    time.sleep(60)


def sigkill_reclaim_ms(runtime: Runtime, rounds: int) -> float:
    """Median time from SIGKILL of a worker holding the one lease to a waiter's grant."""
    pool = runtime.add_pool(PoolSpec("held", TokenFactory(), max_size=1))
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(rounds):
            flag = os.path.join(tmp, str(i))
            job = threading.Thread(
                target=lambda f=flag: runtime.map(
                    hold_until_killed, [["held", f]], workers=1, max_restarts=0,
                    return_exceptions=True,
                ),
                daemon=True,
            )  # fmt: skip
            job.start()
            while not os.path.exists(flag):
                time.sleep(0.005)
            with open(flag) as f:
                pid = int(f.read())
            granted: list[float] = []
            waiter = threading.Thread(
                target=lambda out=granted: out.append(_acquire_then_release(pool)), daemon=True
            )
            waiter.start()
            while pool.stats().waiting == 0:
                time.sleep(0.001)
            killed = time.perf_counter()
            os.kill(pid, 9)
            waiter.join(30)
            times.append((granted[0] - killed) * 1e3)
            job.join(30)
    return statistics.median(times)


def _acquire_then_release(pool: Any) -> float:
    lease = pool.acquire(timeout=30)
    at = time.perf_counter()
    pool.release(lease)
    return at


def _echo(conn: Connection) -> None:
    while True:
        data = conn.recv_bytes()
        if not data:
            return
        conn.send_bytes(msgpack.packb(msgpack.unpackb(data)))


def pipe_round_trip_us(n: int) -> float:
    ctx = multiprocessing.get_context("spawn")
    here, there = ctx.Pipe()
    child = ctx.Process(target=_echo, args=(there,))
    child.start()
    message = msgpack.packb([1, "slots", 30.0, 0, None])
    try:
        for _ in range(500):
            here.send_bytes(message)
            msgpack.unpackb(here.recv_bytes())
        began = time.perf_counter()
        for _ in range(n):
            here.send_bytes(message)
            msgpack.unpackb(here.recv_bytes())
        return (time.perf_counter() - began) / n * 1e6
    finally:
        here.send_bytes(b"")
        child.join()


def _manager_pairs(sem: Any, n: int, report: Connection) -> None:
    for _ in range(200):
        sem.acquire()
        sem.release()
    began = time.perf_counter()
    for _ in range(n):
        sem.acquire()
        sem.release()
    report.send_bytes(msgpack.packb((time.perf_counter() - began) / n * 1e6))


def manager_semaphore_us(n: int) -> float:
    """A pair on a Manager semaphore, timed in a process of its own as lessor's are."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        here, there = ctx.Pipe()
        sem = manager.BoundedSemaphore(3)  # held here: dropping the proxy frees the semaphore
        child = ctx.Process(target=_manager_pairs, args=(sem, n, there))
        child.start()
        result: float = msgpack.unpackb(here.recv_bytes())
        child.join()
        return result


def kernel_semaphore_us(n: int) -> float:
    sem = multiprocessing.get_context("spawn").BoundedSemaphore(3)
    began = time.perf_counter()
    for _ in range(n):
        sem.acquire()
        sem.release()
    return (time.perf_counter() - began) / n * 1e6


def run(n: int, repeat: int) -> dict[str, Any]:
    with Runtime(handle_signals=False) as runtime:
        runtime.add_pool(PoolSpec("slots", TokenFactory(), min_size=3, max_size=3))
        pair, uncached, pipe = [], [], []
        for _ in range(repeat):  # interleaved, so all see the same machine noise
            pair.append(runtime.map(lessor_pairs, [["slots", n]], workers=1)[0][0])
            uncached.append(runtime.map(lessor_pairs, [["slots", n, False]], workers=1)[0][0])
            pipe.append(pipe_round_trip_us(n))
        throughput, throughput_uncached = {}, {}
        for workers in WORKER_COUNTS:
            each = max(500, n // workers)
            runs = runtime.map(lessor_pairs, [["slots", each]] * workers, workers=workers)
            span = max(r[2] for r in runs) - min(r[1] for r in runs)
            throughput[str(workers)] = round(workers * each / span)
            runs = runtime.map(lessor_pairs, [["slots", each, False]] * workers, workers=workers)
            span = max(r[2] for r in runs) - min(r[1] for r in runs)
            throughput_uncached[str(workers)] = round(workers * each / span)
        recall = recall_ms(runtime, repeat * 2)
        reclaim = sigkill_reclaim_ms(runtime, max(3, repeat))
        waits = contended_waits(runtime, 8, max(500, n // 4))
    pair_us, pipe_us = statistics.median(pair), statistics.median(pipe)
    uncached_us = statistics.median(uncached)
    manager_us = manager_semaphore_us(max(1000, n // 2))
    kernel_us = kernel_semaphore_us(n * 10)
    return {
        "pair_us": round(pair_us, 2),
        "pairs_per_s": throughput,
        "pipe_rt_us": round(pipe_us, 1),
        "manager_sem_us": round(manager_us, 1),
        "kernel_sem_us": round(kernel_us, 3),
        "ratio_to_pipe": round(pair_us / pipe_us, 3),
        "speedup_vs_manager": round(manager_us / pair_us, 1),
        "pair_uncached_us": round(uncached_us, 1),
        "pairs_per_s_uncached": throughput_uncached,
        "ratio_to_pipe_uncached": round(uncached_us / pipe_us, 2),
        "speedup_vs_manager_uncached": round(manager_us / uncached_us, 2),
        "recall_ms": round(recall, 2),
        "sigkill_reclaim_ms": round(reclaim, 2),
        "acquire_wait_8_workers": waits,
        "note": "pair: client.pool(name), leases parked in the worker and reused until the "
        "pool recalls them; uncached: client.pool(name, cache=False), every Acquire a round "
        "trip; recall_ms: an Acquire in the runtime waiting for the lease an idle worker parked; "
        "acquire_wait_8_workers: what each Acquire waited, 8 workers sharing 3 slots",
        "targets": {"ratio_to_pipe": "<= 1.5", "speedup_vs_manager": ">= 3"},
        "kernel_sem_note": "fast, but a slot held by a process that dies is lost for good",
        "cpus": os.cpu_count(),
        "pool_max_size": 3,
    }


if __name__ == "__main__":
    cli(__doc__, run, pairs=5000, repeat=5)
