"""Benchmark: what the memory manager costs, and how fast it gets leases back.

Run by hand from the repository root: ``python tests/bench/bench_memory.py [--json]
[--pairs SECONDS] [--repeat R]``. All figures come from the same run on the same machine.
Target: ``sample_cpu_pct < 1`` (8 workers at a 250 ms interval).

``sample_cpu_pct``: the CPU time (user + system, all threads) of the runtime's process
over ``--pairs`` seconds with 8 idle workers and a memory manager sampling every
250 ms, minus the same for a runtime with the same 8 idle workers and no memory
manager, as a percentage of one core. The two take turns, ``--repeat`` times each;
the median of the differences. ``sample_us``: the memory manager's own figure, the mean
time one sampling round spends reading psutil (machine + 9 processes), and
``round_us``: that cost plus deciding, from the same CPU figure (CPU per round).

``reaction_ms``: from a worker crossing ``restart`` to its leases being back. The
worker holds a lease, then allocates in 8 MB steps, reading its own RSS after each;
the step that crosses ``restart`` takes ``time.monotonic()`` (CLOCK_MONOTONIC is
system-wide). The runtime's process polls the pool every millisecond until nothing is
leased. ``reaction_ms``: a worker that releases and returns when told to drain;
``reaction_unresponsive_ms``: a worker that ignores it (busy), so it is SIGTERMed after
``recycle_grace`` (0.5 s here). The interval is 250 ms, so up to 250 ms of either is
waiting for the next sample; ``reaction_ms_interval_100ms`` samples every 100 ms, as
Dask's nanny does.

``dask_comparison``: only when ``distributed`` is installed (else it says so). The same
growing task on a one-worker ``LocalCluster`` with the same ``memory_limit``, whose
nanny terminates the worker at 0.95 of it: ``dask_acts_ms`` is from the task crossing
0.95 to the worker process being gone, and what each system loses is stated.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from lessor import MemorySpec, PoolSpec, Runtime, TokenFactory, connect

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).parents[2]))
from tests.bench.common import cli

WORKERS = 8
INTERVAL = 0.25
LIMIT = 400 * 10**6  # the reaction worker's max_memory (bytes)
STEP = 8 * 2**20


def idle_worker() -> None:
    """Connect, then wait to be drained (the runtime's shutdown)."""
    connect().draining.wait()


def growing_worker(crossed: Any, ready: Any, responsive: bool, restart_bytes: int) -> None:
    """Hold a lease, grow past ``restart_bytes`` of RSS, report when, then wait for Drain."""
    client = connect()
    lease = client.pool("slots", cache=False).acquire()
    ready.set()
    me = psutil.Process()
    hog: list[bytes] = []
    while me.memory_info().rss < restart_bytes:
        hog.append(b"x" * STEP)
    crossed.put(time.monotonic())
    if not responsive:
        while True:  # busy, deaf to Drain: SIGTERM ends it
            hog.append(b"")
            hog.pop()
    client.draining.wait(60)
    client.pool("slots", cache=False).release(lease)


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _idle_runtime(with_memory: bool, seconds: float) -> tuple[float, float]:
    """CPU seconds of this process over ``seconds``; the mean sampling round (µs)."""
    me = psutil.Process()
    with Runtime(handle_signals=False) as runtime:
        memory = runtime.add_memory(MemorySpec(interval=INTERVAL)) if with_memory else None
        group = runtime.spawn_workers(idle_worker, WORKERS)
        deadline = time.monotonic() + 60
        while runtime.node.stats.connections < WORKERS and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(1.0)  # the workers' start-up is not the sampling's cost
        began, cpu = time.monotonic(), _cpu(me)
        time.sleep(seconds)
        used = _cpu(me) - cpu
        elapsed = time.monotonic() - began
        sample_us = memory.stats().sample_us_mean if memory is not None else 0.0
        runtime.stop_workers(group)
    return used / elapsed, sample_us


def sampling_cost(seconds: float, repeat: int) -> dict[str, Any]:
    diffs, sample_us, base = [], [], []
    for _ in range(repeat):
        without, _ = _idle_runtime(False, seconds)
        with_memory, mean_us = _idle_runtime(True, seconds)
        diffs.append((with_memory - without) * 100)
        base.append(without * 100)
        sample_us.append(mean_us)
    pct = statistics.median(diffs)
    return {
        "sample_cpu_pct": round(pct, 3),
        "sample_cpu_pct_each": [round(d, 3) for d in diffs],
        "baseline_cpu_pct": round(statistics.median(base), 3),
        "sample_us": round(statistics.median(sample_us), 1),
        "round_us": round(pct / 100 * INTERVAL * 1e6, 1),
    }


def _reaction(responsive: bool, interval: float = INTERVAL) -> float:
    ctx = multiprocessing.get_context("spawn")
    crossed, ready = ctx.Queue(), ctx.Event()
    spec = MemorySpec(max_memory=LIMIT, interval=interval, recycle_grace=0.5, machine=None)
    restart_bytes = int(LIMIT * (spec.thresholds.restart or 1.0))
    with Runtime(handle_signals=False) as runtime:
        pool = runtime.add_pool(PoolSpec("slots", TokenFactory(range(1)), max_size=1))
        runtime.add_memory(spec)
        group = runtime.spawn_workers(
            growing_worker, 1, (crossed, ready, responsive, restart_bytes), restart="temporary"
        )
        try:
            if not ready.wait(60):
                raise RuntimeError("the worker never took its lease")
            at = crossed.get(timeout=60)
            while pool.stats().leased and time.monotonic() < at + 30:
                time.sleep(0.001)
            back = time.monotonic()
        finally:
            runtime.stop_workers(group, timeout=1.0)
            with contextlib.suppress(Exception):
                crossed.close()
    return (back - at) * 1000


def reaction(repeat: int) -> dict[str, Any]:
    drained = [_reaction(True) for _ in range(repeat)]
    deaf = [_reaction(False) for _ in range(max(1, repeat // 2))]
    like_dask = [_reaction(True, interval=0.1) for _ in range(repeat)]
    return {
        "reaction_ms_interval_100ms": round(statistics.median(like_dask), 1),
        "reaction_ms": round(statistics.median(drained), 1),
        "reaction_ms_each": [round(v, 1) for v in drained],
        "reaction_unresponsive_ms": round(statistics.median(deaf), 1),
        "reaction_unresponsive_ms_each": [round(v, 1) for v in deaf],
    }


def dask_grow(path: str, restart_bytes: int) -> int:
    """A Dask task: grow past ``restart_bytes`` as growing_worker does, note when, hold."""
    me = psutil.Process()
    hog: list[bytes] = []
    while me.memory_info().rss < restart_bytes:
        hog.append(b"x" * STEP)
    Path(path).write_text(repr(time.monotonic()))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # holds its memory until something acts
        time.sleep(0.001)
    return len(hog)


def dask_comparison() -> dict[str, Any]:
    """The same growing worker under a Dask nanny with the same limit: ``terminate``
    0.95 is lessor's ``restart``; Dask samples every 100 ms (its default), lessor 250."""
    try:
        import dask
        import distributed
    except ImportError:
        return {"skipped": "distributed is not installed (pip install distributed)"}
    import logging
    import tempfile

    restart_bytes = int(LIMIT * 0.95)
    kills = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(3):
            path = os.path.join(tmp, f"crossed-{round_}")
            with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
                    distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                             memory_limit=LIMIT, dashboard_address=None,
                                             silence_logs=logging.CRITICAL) as cluster, \
                    distributed.Client(cluster) as client:  # fmt: skip
                (pid,) = client.run(os.getpid).values()
                future = client.submit(dask_grow, path, restart_bytes, pure=False)
                while psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie":
                    time.sleep(0.001)
                killed = time.monotonic()
                error = type(future.exception(timeout=60)).__name__
                kills.append((killed - float(Path(path).read_text())) * 1000)
    return {
        "dask_version": distributed.__version__,
        "dask_acts_ms": round(statistics.median(kills), 1),
        "dask_acts_ms_each": [round(v, 1) for v in kills],
        "dask_action": "the nanny kills the worker process (SIGTERM, then SIGKILL)",
        "dask_loses": f"the task in flight ({error} with allowed-failures=0; with the default "
        "3 it runs again and is killed again) and every result held in the worker",
        "lessor_action": "drain: the item in flight finishes, leases go back, then a new process",
        "lessor_loses": "nothing a drained worker finishes; a worker deaf to the drain is "
        "SIGTERMed after recycle_grace and its map item runs on another worker",
    }


def run(seconds: int, repeat: int) -> dict[str, Any]:
    load = os.getloadavg()[0]
    cost = sampling_cost(float(seconds), repeat)
    react = reaction(repeat)
    return {
        **cost,
        **react,
        "dask_comparison": dask_comparison(),
        "note": f"{WORKERS} idle workers, interval {INTERVAL}s; CPU of the runtime's process "
        "with the memory manager minus without, median of alternating runs; reaction: from "
        "the worker's RSS crossing restart to its lease back in the pool",
        "targets": {"sample_cpu_pct": "< 1"},
        "cpus": os.cpu_count(),
        "loadavg_1m_at_start": round(load, 2),
    }


if __name__ == "__main__":
    cli(__doc__, run, pairs=10, repeat=3)
